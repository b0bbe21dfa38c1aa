/* SPDX-License-Identifier: MIT */
/*
 * Routed experts of one layer: route every token, group the tokens by
 * expert, and run each expert over its tokens as soon as it is in a slot.
 * Hits are pinned first so the misses of the same layer cannot evict them;
 * misses are fetched through the expert cache while the ready experts run.
 *
 * Each expert writes its output rows to a per-(token, choice) buffer and the
 * weighted sum runs afterwards in choice order, so the result does not depend
 * on the order in which experts arrived: a run that streams every expert is
 * bit-identical to one with every expert resident.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "engine/engine.h"
#include "util/util.h"

static const enum moe_glu glu_of[] = {
	[MOE_ACT_SILU] = MOE_GLU_SILU,
	[MOE_ACT_GELU] = MOE_GLU_GELU,
	[MOE_ACT_SWIGLU_OAI] = MOE_GLU_SWIGLU_OAI,
};

/* Top-k of score[] by value, ties to the lower index; k is small. */
static void top_k(const float *score, uint32_t n, uint32_t k, int32_t *sel)
{
	for (uint32_t j = 0; j < k; j++) {
		int32_t best = -1;

		for (uint32_t e = 0; e < n; e++) {
			bool taken = false;

			for (uint32_t i = 0; i < j; i++)
				taken |= sel[i] == (int32_t)e;
			if (!taken && (best < 0 || score[e] > score[best]))
				best = (int32_t)e;
		}
		sel[j] = best;
	}
}

void moe_route(const struct moe_ctx *ctx, const struct eng_layer *L, float *logits,
	       uint32_t n_tok, int32_t *sel, float *w)
{
	uint32_t ne = ctx->hp.n_expert, k = L->n_expert_used, K = ctx->max_used;
	float *score = ctx->route_tmp, *prob = ctx->route_tmp + ne;

	for (uint32_t t = 0; t < n_tok; t++) {
		const float *lg = logits + (size_t)t * ne;
		int32_t *s = sel + (size_t)t * K;
		float *wt = w + (size_t)t * K;
		float mx = -INFINITY;
		double sum = 0;

		switch (ctx->hp.gating) {
		case MOE_GATING_SIGMOID:
			for (uint32_t e = 0; e < ne; e++)
				prob[e] = 1.0f / (1.0f + expf(-lg[e]));
			break;
		case MOE_GATING_SOFTMAX_SELECTED:
			memcpy(prob, lg, sizeof(float) * ne);
			break;
		default:
			for (uint32_t e = 0; e < ne; e++)
				mx = MOE_MAX(mx, lg[e]);
			for (uint32_t e = 0; e < ne; e++) {
				prob[e] = expf(lg[e] - mx);
				sum += prob[e];
			}
			for (uint32_t e = 0; e < ne; e++)
				prob[e] = (float)(prob[e] / sum);
			break;
		}
		for (uint32_t e = 0; e < ne; e++)
			score[e] = prob[e] + (L->exp_probs_b ? L->exp_probs_b[e] : 0.0f);
		top_k(score, ne, k, s);
		if (ctx->hp.gating == MOE_GATING_SOFTMAX_SELECTED) {
			mx = -INFINITY;
			sum = 0;
			for (uint32_t j = 0; j < k; j++)
				mx = MOE_MAX(mx, lg[s[j]]);
			for (uint32_t j = 0; j < k; j++) {
				wt[j] = expf(lg[s[j]] - mx);
				sum += wt[j];
			}
			for (uint32_t j = 0; j < k; j++)
				wt[j] = (float)(wt[j] / sum);
		} else {
			for (uint32_t j = 0; j < k; j++)
				wt[j] = prob[s[j]];
		}
		if (ctx->hp.expert_weights_norm && ctx->hp.gating != MOE_GATING_SOFTMAX_SELECTED) {
			float tot = 0;

			for (uint32_t j = 0; j < k; j++)
				tot += wt[j];
			tot = MOE_MAX(tot, 6.103515625e-5f);
			for (uint32_t j = 0; j < k; j++)
				wt[j] /= tot;
		}
		if (ctx->hp.expert_weights_scale != 1.0f)
			for (uint32_t j = 0; j < k; j++)
				wt[j] *= ctx->hp.expert_weights_scale;
	}
}

/* Run expert e of layer il, whose matrices are in @slot, over its tokens. */
static int run_expert(struct moe_ctx *ctx, const struct eng_layer *L, uint32_t il, uint32_t e,
		      uint32_t slot, const float *x, const int32_t *ents, uint32_t m)
{
	struct moe_backend *be = ctx->be;
	const struct moe_expert *ex = moe_cache_expert(ctx->cache, il, e);
	const struct moe_extent *gm = &ex->mats[0], *dm = &ex->mats[ex->n_mats - 1];
	uint32_t K = ctx->max_used, n_embd = ctx->hp.n_embd;
	bool llama4 = ctx->ea->ffn == ENG_FFN_LLAMA4;
	int64_t nff = dm->cols, stride;
	const float *gate, *up;
	int ret;

	for (uint32_t i = 0; i < m; i++) {
		const float *src = x + (size_t)(ents[i] / K) * n_embd;
		float *dst = ctx->gath + (size_t)i * n_embd;

		memcpy(dst, src, sizeof(float) * n_embd);
		if (llama4)
			be->ops->scale(be, dst, ctx->rw[ents[i]], n_embd);
	}
	if (ex->n_mats == 2) {
		ret = be->ops->matmul(be, gm->type, moe_cache_mat(ctx->cache, slot, 0), gm->rows,
				      gm->cols, ctx->gath, m, ctx->gu);
		gate = ctx->gu;
		up = ctx->gu + nff;
		stride = 2 * nff;
	} else {
		const struct moe_extent *um = &ex->mats[1];

		ret = be->ops->matmul(be, gm->type, moe_cache_mat(ctx->cache, slot, 0), gm->rows,
				      gm->cols, ctx->gath, m, ctx->gu);
		if (!ret)
			ret = be->ops->matmul(be, um->type, moe_cache_mat(ctx->cache, slot, 1),
					      um->rows, um->cols, ctx->gath, m, ctx->up);
		if (!ret && L->gate_exps_b)
			be->ops->add_bias(be, ctx->gu, L->gate_exps_b + (size_t)e * nff, m, nff);
		if (!ret && L->up_exps_b)
			be->ops->add_bias(be, ctx->up, L->up_exps_b + (size_t)e * nff, m, nff);
		gate = ctx->gu;
		up = ctx->up;
		stride = nff;
	}
	if (ret < 0)
		return ret;
	be->ops->glu(be, glu_of[ctx->model->arch->act], gate, up, stride, m, nff, ctx->act);
	ret = be->ops->matmul(be, dm->type, moe_cache_mat(ctx->cache, slot, ex->n_mats - 1),
			      dm->rows, dm->cols, ctx->act, m, ctx->dn);
	if (ret < 0)
		return ret;
	if (L->down_exps_b)
		be->ops->add_bias(be, ctx->dn, L->down_exps_b + (size_t)e * n_embd, m, n_embd);
	if (L->down_exps_scale)
		be->ops->scale(be, ctx->dn, L->down_exps_scale[e], (int64_t)m * n_embd);
	for (uint32_t i = 0; i < m; i++)
		memcpy(ctx->ybuf + (size_t)ents[i] * n_embd, ctx->dn + (size_t)i * n_embd,
		       sizeof(float) * n_embd);
	return 0;
}

enum { EXP_IDLE, EXP_HELD, EXP_DONE };

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
		ret = moe_cache_acquire(ctx->cache, il, e, &ctx->exp_slot[e]);
		if (ret == -EAGAIN)
			break;
		if (ret < 0)
			return ret;
		ctx->exp_state[e] = EXP_HELD;
	}
	return moe_cache_poll(ctx->cache);
}

int moe_ffn_begin(struct moe_ctx *ctx, uint32_t il, uint32_t n_tok)
{
	const struct eng_layer *L = &ctx->layers[il];
	struct moe_expert_cache *c = ctx->cache;
	uint32_t ne = ctx->hp.n_expert, k = L->n_expert_used, K = ctx->max_used;
	int32_t *off = ctx->exp_off;
	int ret;

	moe_route(ctx, L, ctx->rlog, n_tok, ctx->sel, ctx->rw);
	if (ctx->route_hook)
		ctx->route_hook(ctx->route_arg, il, ctx->pos, n_tok, ctx->rlog, ne, ctx->sel, K);

	/* counting sort of the (token, choice) entries by expert, tokens ascending */
	memset(off, 0, sizeof(*off) * (ne + 1));
	for (uint32_t t = 0; t < n_tok; t++)
		for (uint32_t j = 0; j < k; j++)
			off[ctx->sel[t * K + j] + 1]++;
	for (uint32_t e = 0; e < ne; e++)
		off[e + 1] += off[e];
	memcpy(ctx->exp_fill, off, sizeof(*off) * ne);
	for (uint32_t t = 0; t < n_tok; t++)
		for (uint32_t j = 0; j < k; j++)
			ctx->tok_list[ctx->exp_fill[ctx->sel[t * K + j]]++] = (int32_t)(t * K + j);
	ctx->exp_left = 0;
	for (uint32_t e = 0; e < ne; e++) {
		ctx->exp_state[e] = off[e + 1] > off[e] ? EXP_IDLE : EXP_DONE;
		ctx->exp_left += off[e + 1] > off[e];
	}

	/* pin what is cached before any miss of this layer may evict it */
	for (uint32_t e = 0; e < ne; e++) {
		if (ctx->exp_state[e] != EXP_IDLE || !moe_cache_contains(c, il, e))
			continue;
		ret = moe_cache_acquire(c, il, e, &ctx->exp_slot[e]);
		if (ret < 0)
			goto fail;
		ctx->exp_state[e] = EXP_HELD;
	}
	ret = acquire_more(ctx, il);
	if (ret >= 0)
		return 0;
fail:
	release_all(ctx);
	return ret;
}

int moe_ffn_finish_abort(struct moe_ctx *ctx, int ret)
{
	release_all(ctx);
	return ret;
}

int moe_ffn_finish(struct moe_ctx *ctx, uint32_t il, const float *x, uint32_t n_tok,
		   float *out)
{
	const struct eng_layer *L = &ctx->layers[il];
	struct moe_expert_cache *c = ctx->cache;
	uint32_t ne = ctx->hp.n_expert, k = L->n_expert_used, K = ctx->max_used;
	uint32_t n_embd = ctx->hp.n_embd;
	int32_t *off = ctx->exp_off;
	int ret = 0;

	while (ctx->exp_left) {
		bool progress = false, in_flight = false;

		ret = acquire_more(ctx, il);
		if (ret < 0)
			goto fail;
		for (uint32_t e = 0; e < ne; e++) {
			if (ctx->exp_state[e] != EXP_HELD)
				continue;
			ret = moe_cache_ready(c, ctx->exp_slot[e]);
			if (ret < 0) {
				ret = moe_err(-ret, "layer %u: expert %u could not be read: %s", il,
					      e, strerror(-ret));
				goto fail;
			}
			if (!ret) {
				in_flight = true;
				continue;
			}
			ret = run_expert(ctx, L, il, e, ctx->exp_slot[e], x, ctx->tok_list + off[e],
					 (uint32_t)(off[e + 1] - off[e]));
			moe_cache_release(c, ctx->exp_slot[e]);
			ctx->exp_state[e] = EXP_DONE;
			if (ret < 0)
				goto fail;
			ctx->exp_left--;
			progress = true;
			/* reap what landed meanwhile, so the next acquire finds free staging */
			ret = moe_cache_poll(c);
			if (ret < 0)
				goto fail;
		}
		if (!ctx->exp_left || progress)
			continue;
		if (!in_flight) {
			ret = moe_err(ENOSPC, "layer %u: no expert slot can be freed (%u slots)", il,
				      ctx->st.n_slots);
			goto fail;
		}
		ret = moe_cache_wait(c);
		if (ret < 0)
			goto fail;
	}

	for (uint32_t t = 0; t < n_tok; t++) {
		float *o = out + (size_t)t * n_embd;

		for (uint32_t j = 0; j < k; j++) {
			const float *y = ctx->ybuf + ((size_t)t * K + j) * n_embd;
			float w = ctx->ea->ffn == ENG_FFN_LLAMA4 ? 1.0f : ctx->rw[t * K + j];

			if (!j)
				for (uint32_t i = 0; i < n_embd; i++)
					o[i] = y[i] * w;
			else
				for (uint32_t i = 0; i < n_embd; i++)
					o[i] += y[i] * w;
		}
	}
	return 0;
fail:
	release_all(ctx);
	return ret;
}
