/* SPDX-License-Identifier: MIT */
/*
 * Routed experts of one layer.  The backend routes every token; the host
 * downloads only the chosen expert ids, groups the (token, choice) entries
 * by expert, pins the experts that are cached before any miss of the layer
 * may evict them, starts reading the missing ones, and hands every expert
 * that is usable (on the device, or its upload queued) to one FFN operation,
 * again and again until all have run.
 *
 * Each expert writes its output rows to a per-(token, choice) buffer and the
 * weighted sum runs afterwards in choice order, so the result does not depend
 * on the order in which experts arrived: a run that streams every expert is
 * bit-identical to one with every expert resident.
 */
#include <errno.h>
#include <string.h>

#include "engine/engine.h"
#include "util/util.h"

static const enum moe_glu glu_of[] = {
	[MOE_ACT_SILU] = MOE_GLU_SILU,
	[MOE_ACT_GELU] = MOE_GLU_GELU,
	[MOE_ACT_SWIGLU_OAI] = MOE_GLU_SWIGLU_OAI,
};

int moe_ffn_begin(struct moe_ctx *ctx, uint32_t il, uint32_t n_tok)
{
	const struct eng_layer *L = &ctx->layers[il];
	struct moe_backend *be = ctx->be;
	struct moe_route_args ra = {
		.logits = ctx->buf[PB_RLOG], .sel = ctx->buf[PB_SEL], .weights = ctx->buf[PB_RW],
		.bias = L->exp_probs_b, .n_tok = n_tok, .n_expert = ctx->hp.n_expert,
		.k = L->n_expert_used, .stride = ctx->max_used, .gating = ctx->hp.gating,
		.norm = ctx->hp.expert_weights_norm, .scale = ctx->hp.expert_weights_scale,
	};
	int ret;

	if (ctx->route_hook) {
		ret = be->ops->download(be, MOE_BE_COMPUTE, ctx->h_rlog, ctx->buf[PB_RLOG],
					sizeof(float) * (uint64_t)n_tok * ctx->hp.n_expert);
		if (ret < 0)
			return ret;
	}
	ret = be->ops->route(be, &ra);
	if (!ret)
		ret = be->ops->download(be, MOE_BE_COMPUTE, ctx->h_sel, ctx->buf[PB_SEL],
					sizeof(int32_t) * (uint64_t)n_tok * ctx->max_used);
	if (!ret)
		ret = be->ops->event_record(be, MOE_BE_COMPUTE, ctx->ev_sel);
	return ret;
}

/* leave no pin behind: the next eval must find every slot usable */
static void release_all(struct moe_ctx *ctx)
{
	for (uint32_t e = 0; e < ctx->hp.n_expert; e++)
		if (ctx->exp_state[e] == EXP_HELD) {
			moe_cache_release(ctx->cache, ctx->exp_slot[e]);
			ctx->exp_state[e] = EXP_DONE;
		}
}

/* Start fetching the experts not held yet while slots and staging allow. */
static int acquire_more(struct moe_ctx *ctx, uint32_t il)
{
	for (uint32_t e = 0; e < ctx->hp.n_expert; e++) {
		int ret;

		if (ctx->exp_state[e] != EXP_IDLE)
			continue;
		ret = moe_cache_acquire(ctx->cache, il, e, ctx->clock, &ctx->exp_slot[e]);
		if (ret == -EAGAIN)
			break;
		if (ret < 0)
			return ret;
		ctx->exp_state[e] = EXP_HELD;
	}
	return moe_cache_poll(ctx->cache);
}

/* Group the (token, choice) entries by expert, tokens ascending; upload the list. */
static int group(struct moe_ctx *ctx, const struct eng_layer *L, uint32_t n_tok)
{
	uint32_t ne = ctx->hp.n_expert, k = L->n_expert_used, K = ctx->max_used;
	int32_t *off = ctx->exp_off;

	memset(off, 0, sizeof(*off) * (ne + 1));
	for (uint32_t t = 0; t < n_tok; t++)
		for (uint32_t j = 0; j < k; j++) {
			int32_t e = ctx->h_sel[t * K + j];

			if (e < 0 || (uint32_t)e >= ne)
				return moe_err(EIO, "the router chose expert %d of %u", e, ne);
			off[e + 1]++;
		}
	for (uint32_t e = 0; e < ne; e++)
		off[e + 1] += off[e];
	memcpy(ctx->exp_fill, off, sizeof(*off) * ne);
	for (uint32_t t = 0; t < n_tok; t++)
		for (uint32_t j = 0; j < k; j++)
			ctx->h_ents[ctx->exp_fill[ctx->h_sel[t * K + j]]++] = (int32_t)(t * K + j);
	ctx->exp_left = 0;
	for (uint32_t e = 0; e < ne; e++) {
		ctx->exp_state[e] = off[e + 1] > off[e] ? EXP_IDLE : EXP_DONE;
		ctx->exp_left += off[e + 1] > off[e];
	}
	return ctx->be->ops->upload(ctx->be, MOE_BE_COMPUTE, ctx->buf[PB_ENTS], ctx->h_ents,
				    sizeof(int32_t) * (uint64_t)n_tok * k);
}

/* The FFN descriptor of expert e, whose matrices are in its slot. */
static void describe(struct moe_ctx *ctx, const struct eng_layer *L, uint32_t il, uint32_t e,
		     struct moe_be_ffn *f)
{
	const struct moe_expert *ex = moe_cache_expert(ctx->cache, il, e);
	uint32_t slot = ctx->exp_slot[e], nff = L->n_ff_exp;

	memset(f, 0, sizeof(*f));
	f->n_mats = ex->n_mats;
	for (uint32_t m = 0; m < ex->n_mats; m++)
		f->mats[m] = (struct moe_be_mat){ .p = moe_cache_mat(ctx->cache, slot, m),
						  .type = ex->mats[m].type,
						  .rows = (int64_t)ex->mats[m].rows,
						  .cols = (int64_t)ex->mats[m].cols };
	f->m = (uint32_t)(ctx->exp_off[e + 1] - ctx->exp_off[e]);
	f->ent_off = (uint32_t)ctx->exp_off[e];
	if (L->gate_exps_b)
		f->gate_b = L->gate_exps_b + sizeof(float) * (uint64_t)e * nff;
	if (L->up_exps_b)
		f->up_b = L->up_exps_b + sizeof(float) * (uint64_t)e * nff;
	if (L->down_exps_b)
		f->down_b = L->down_exps_b + sizeof(float) * (uint64_t)e * ctx->hp.n_embd;
	if (L->down_exps_scale)
		f->out_scale = L->down_exps_scale + sizeof(float) * e;
}

/*
 * Run every held expert that is usable, in one FFN operation; the compute
 * queue waits for the uploads still in flight.  Returns how many ran.
 */
static int run_ready(struct moe_ctx *ctx, const struct eng_layer *L, uint32_t il, moe_dptr x)
{
	struct moe_backend *be = ctx->be;
	bool llama4 = ctx->arch->ffn == MOE_FFN_LLAMA4;
	uint32_t n = 0;
	int ret;

	for (uint32_t e = 0; e < ctx->hp.n_expert; e++) {
		struct moe_be_event *ev;

		if (ctx->exp_state[e] != EXP_HELD)
			continue;
		ret = moe_cache_ready(ctx->cache, ctx->exp_slot[e]);
		if (ret < 0)
			return moe_err(-ret, "layer %u: expert %u could not be read: %s", il, e,
				       strerror(-ret));
		if (!ret)
			continue;
		ev = moe_cache_slot_event(ctx->cache, ctx->exp_slot[e]);
		if (ev) {
			ret = be->ops->queue_wait(be, MOE_BE_COMPUTE, ev);
			if (ret < 0)
				return ret;
		}
		describe(ctx, L, il, e, &ctx->ffn_list[n]);
		ctx->used_slots[n++] = ctx->exp_slot[e];
		ctx->exp_state[e] = EXP_DONE;
	}
	if (!n)
		return 0;
	{
		struct moe_ffn_args a = {
			.ffn = ctx->ffn_list, .n_ffn = n, .stride = ctx->max_used,
			.act = glu_of[ctx->arch->act], .n_embd = ctx->hp.n_embd, .x = x,
			.ents = ctx->buf[PB_ENTS], .in_scale = llama4 ? ctx->buf[PB_RW] : 0,
			.out = ctx->buf[PB_YBUF],
		};

		ret = be->ops->ffn(be, &a);
	}
	/* the slots are released either way; the FFN's reads are behind this point */
	if (moe_cache_used(ctx->cache, ctx->used_slots, n) < 0 && !ret)
		ret = -EIO;
	if (ret < 0)
		return ret;
	ctx->exp_left -= n;
	return (int)n;
}

int moe_ffn_finish(struct moe_ctx *ctx, uint32_t il, moe_dptr x, uint32_t n_tok, moe_dptr out)
{
	const struct eng_layer *L = &ctx->layers[il];
	struct moe_expert_cache *c = ctx->cache;
	struct moe_backend *be = ctx->be;
	uint32_t ne = ctx->hp.n_expert;
	int ret;

	ret = be->ops->event_sync(be, ctx->ev_sel);
	if (ret < 0)
		return ret;
	if (ctx->route_hook)
		ctx->route_hook(ctx->route_arg, il, ctx->h_pos, n_tok, ctx->h_rlog, ne, ctx->h_sel,
				ctx->max_used);
	ret = group(ctx, L, n_tok);
	if (ret < 0)
		return ret;
	/* pin what is cached before any miss of this layer may evict it */
	for (uint32_t e = 0; e < ne; e++) {
		if (ctx->exp_state[e] != EXP_IDLE || !moe_cache_contains(c, il, e))
			continue;
		ret = moe_cache_acquire(c, il, e, ctx->clock, &ctx->exp_slot[e]);
		if (ret < 0)
			goto fail;
		ctx->exp_state[e] = EXP_HELD;
	}
	while (ctx->exp_left) {
		bool in_flight = false;
		int ran;

		ret = acquire_more(ctx, il);
		if (ret < 0)
			goto fail;
		ran = run_ready(ctx, L, il, x);
		if (ran < 0) {
			ret = ran;
			goto fail;
		}
		if (!ctx->exp_left || ran)
			continue;
		for (uint32_t e = 0; e < ne; e++)
			in_flight |= ctx->exp_state[e] == EXP_HELD;
		if (!in_flight) {
			ret = moe_err(ENOSPC, "layer %u: no expert slot can be freed (%u slots)", il,
				      ctx->st.n_slots);
			goto fail;
		}
		ret = moe_cache_wait(c);
		if (ret < 0)
			goto fail;
	}
	return be->ops->combine(be, ctx->buf[PB_YBUF],
				ctx->arch->ffn == MOE_FFN_LLAMA4 ? 0 : ctx->buf[PB_RW], n_tok,
				L->n_expert_used, ctx->max_used, ctx->hp.n_embd, out);
fail:
	release_all(ctx);
	return ret;
}
