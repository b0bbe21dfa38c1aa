/* SPDX-License-Identifier: MIT */
/*
 * Routed experts of one layer.  The backend routes every token; the host
 * downloads only the chosen expert ids, groups the (token, choice) entries
 * by expert, pins the experts that are cached before any miss of the layer
 * may evict them, starts reading the missing ones, and hands every expert
 * that is usable (on the device, or its upload queued) to one FFN operation,
 * again and again until all have run.
 *
 * Once every expert of the layer holds a slot, the layer's routing goes into
 * the statistics and the predictor's expectations for the next layers
 * become hints to the policy and low-priority prefetches (from the next
 * layers' routers applied to this layer's router input, which begin
 * queued right after the routing: speculative gating).  Prefetching only
 * moves data into slots: which experts run, and on what, does not change.
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

/* The next layers' routers on this layer's router input; their choices come back with ev_spec. */
static int speculate(struct moe_ctx *ctx, uint32_t il, moe_dptr x, uint32_t n_tok)
{
	struct moe_backend *be = ctx->be;
	uint32_t B = ctx->n_batch, K = ctx->max_used, ne = ctx->hp.n_expert;
	int ret = 0;

	for (uint32_t d = 0; d < ctx->spec_depth && !ret; d++) {
		int32_t m = moe_pred_target(ctx->pred, il, d);
		const struct eng_layer *M;
		moe_dptr logits = ctx->buf[PB_SPEC_LOG] + sizeof(float) * (uint64_t)d * B * ne;
		moe_dptr sel = ctx->buf[PB_SPEC_SEL] + sizeof(int32_t) * (uint64_t)d * B * K;

		if (m < 0)
			continue;
		M = &ctx->layers[m];
		ret = be->ops->matmul(be, &M->gate_inp, 1, x, n_tok, &logits);
		if (!ret && M->gate_inp_b)
			ret = be->ops->add_bias(be, logits, M->gate_inp_b, n_tok, ne);
		if (!ret)
			ret = be->ops->route(be, &(struct moe_route_args){
				.logits = logits, .sel = sel,
				.weights = ctx->buf[PB_SPEC_W] + sizeof(float) * (uint64_t)d * B * K,
				.bias = M->exp_probs_b, .n_tok = n_tok, .n_expert = ne,
				.k = M->n_expert_used, .stride = K, .gating = ctx->hp.gating,
				.norm = ctx->hp.expert_weights_norm,
				.scale = ctx->hp.expert_weights_scale });
		if (!ret)
			ret = be->ops->download(be, MOE_BE_COMPUTE,
						ctx->h_spec + (uint64_t)d * n_tok * K, sel,
						sizeof(int32_t) * (uint64_t)n_tok * K);
	}
	return ret ? ret : be->ops->event_record(be, MOE_BE_COMPUTE, ctx->ev_spec);
}

int moe_ffn_begin(struct moe_ctx *ctx, uint32_t il, moe_dptr x, uint32_t n_tok)
{
	const struct eng_layer *L = &ctx->layers[il];
	struct moe_backend *be = ctx->be;
	struct moe_route_args ra = {
		.logits = ctx->buf[PB_RLOG], .sel = ctx->buf[PB_SEL], .weights = ctx->buf[PB_RW],
		.bias = L->exp_probs_b, .n_tok = n_tok, .n_expert = ctx->hp.n_expert,
		.k = L->n_expert_used, .stride = ctx->max_used, .gating = ctx->hp.gating,
		.norm = ctx->hp.expert_weights_norm, .scale = ctx->hp.expert_weights_scale,
		.n_group = ctx->hp.n_group, .topk_group = ctx->hp.topk_group,
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
	if (!ret && ctx->spec_depth)
		ret = speculate(ctx, il, x, n_tok);
	return ret;
}

/*
 * The layer is routed: tell the policy which experts it uses (their union
 * over the batch), score the predictions made for it, and withdraw the
 * prefetches for it that are still queued and not needed.
 */
static void announce(struct moe_ctx *ctx, uint32_t il, uint32_t n_tok)
{
	const struct eng_layer *L = &ctx->layers[il];
	uint32_t ne = ctx->hp.n_expert, n = 0;

	for (uint32_t e = 0; e < ne; e++) {
		ctx->chosen[e] = ctx->exp_state[e] == EXP_IDLE;
		if (ctx->chosen[e])
			ctx->ids_union[n++] = e;
	}
	moe_cache_layer(ctx->cache, il, ctx->clock, ctx->ids_union, n);
	if (ctx->pred && n_tok == 1)
		moe_pred_learn(ctx->pred, il, ctx->h_sel, L->n_expert_used);
	if (ctx->pred || ctx->pf_hook)
		moe_cache_cancel_stale(ctx->cache, il, ctx->chosen);
}

/* The layer's choices go into the statistics (and the trace being recorded). */
static void record(struct moe_ctx *ctx, uint32_t il, uint32_t n_tok)
{
	uint32_t k = ctx->layers[il].n_expert_used, K = ctx->max_used;

	for (uint32_t t = 0; t < n_tok; t++) {
		moe_routestats_add(ctx->rs, il, ctx->k_prev ? ctx->h_prev + t * K : NULL, ctx->k_prev,
				   ctx->h_sel + t * K, k);
		memcpy(ctx->h_prev + t * K, ctx->h_sel + t * K, sizeof(int32_t) * k);
		if (ctx->trace)
			memcpy(ctx->trace_ids + ((uint64_t)t * ctx->hp.n_layer + il) * K,
			       ctx->h_sel + t * K, sizeof(int32_t) * k);
	}
	ctx->k_prev = k;
}

static bool ctx_cached(void *arg, uint32_t layer, uint32_t e)
{
	struct moe_ctx *ctx = arg;

	return moe_cache_contains(ctx->cache, layer, e);
}

/*
 * The prefetch hook's turn: it gets the predictor's picks (those the budget
 * allows) and returns the list that is fetched instead, in its order, until
 * staging runs out.
 */
static int prefetch_hooked(struct moe_ctx *ctx, uint32_t il, uint32_t n_tok, uint32_t n,
			   uint32_t budget)
{
	struct moe_prefetch_req *req = ctx->pf_req;
	uint32_t n_req = 0;
	int got;

	for (uint32_t i = 0; i < n && n_req < budget && n_req < ctx->pf_req_max; i++)
		req[n_req++] = (struct moe_prefetch_req){ .layer = ctx->pf_cand[i].layer,
							  .expert = ctx->pf_cand[i].e };
	got = ctx->pf_hook(ctx->pf_arg, il, ctx->h_pos, n_tok, ctx->h_sel, ctx->max_used, req,
			   n_req, ctx->pf_req_max);
	if (got < 0 || (uint32_t)got > ctx->pf_req_max)
		return moe_err(EINVAL, "layer %u: the prefetch hook returned %d (a count of 0..%u "
			       "requests)", il, got, ctx->pf_req_max);
	for (int i = 0; i < got; i++) {
		uint32_t l = req[i].layer, e = req[i].expert;
		int ret;

		if (l >= ctx->hp.n_layer || !ctx->k_layer[l] || e >= ctx->hp.n_expert)
			return moe_err(EINVAL, "layer %u: the prefetch hook asked for expert %u of "
				       "layer %u, which is not a routed expert (layers 0..%u, "
				       "experts 0..%u)", il, e, l, ctx->hp.n_layer - 1,
				       ctx->hp.n_expert - 1);
		ret = moe_cache_prefetch(ctx->cache, l, e, ctx->clock);
		if (ret == -EAGAIN)
			break;
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* Hints for the layers ahead, and prefetches of what is likely and not cached. */
static int prefetch(struct moe_ctx *ctx, uint32_t il, uint32_t n_tok)
{
	uint32_t D = ctx->pf.depth, ne = ctx->hp.n_expert, K = ctx->max_used, n, budget;
	const int32_t *spec = NULL;
	int ret;

	if (!ctx->pred)
		return prefetch_hooked(ctx, il, n_tok, 0, 0);
	if (ctx->spec_depth) {
		ret = ctx->be->ops->event_sync(ctx->be, ctx->ev_spec);
		if (ret < 0)
			return ret;
		spec = ctx->h_spec;
		for (uint32_t d = 0; ctx->trace && ctx->trace_depth && d < D; d++) {
			int32_t m = moe_pred_target(ctx->pred, il, d);

			for (uint32_t t = 0; m >= 0 && t < n_tok; t++)
				memcpy(ctx->trace_pred + (((uint64_t)t * ctx->hp.n_layer + m) * D + d) * K,
				       spec + ((uint64_t)d * n_tok + t) * K, sizeof(int32_t) * K);
		}
	}
	moe_pred_predict(ctx->pred, il, ctx->h_sel, n_tok, K, spec, ctx->pf_prob);
	for (uint32_t d = 0; d < D; d++) {
		int32_t m = moe_pred_target(ctx->pred, il, d);

		for (uint32_t e = 0; m >= 0 && e < ne; e++)
			moe_cache_hint(ctx->cache, (uint32_t)m, e, ctx->pf_prob[d * ne + e], ctx->clock);
	}
	n = moe_pred_candidates(ctx->pred, il, ctx->pf_prob, ctx_cached, ctx, ctx->pf_cand);
	budget = moe_pred_budget(ctx->pred, il);
	if (ctx->pf_hook)
		return prefetch_hooked(ctx, il, n_tok, n, budget);
	for (uint32_t i = 0; i < n && budget; i++) {
		ret = moe_cache_prefetch(ctx->cache, ctx->pf_cand[i].layer, ctx->pf_cand[i].e,
					 ctx->clock);
		if (ret == -EAGAIN)
			break;
		if (ret < 0)
			return ret;
		budget -= (uint32_t)ret;
	}
	return 0;
}

/* Every expert of the layer holds a slot: the layer's bookkeeping can look ahead now. */
static int look_ahead(struct moe_ctx *ctx, uint32_t il, uint32_t n_tok)
{
	record(ctx, il, n_tok);
	return ctx->pred || ctx->pf_hook ? prefetch(ctx, il, n_tok) : 0;
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

			if ((e < 0 || (uint32_t)e >= ne) && ctx->route_hook)
				return moe_err(EINVAL, "the routing hook chose expert %d "
					       "for token %u (the layer has experts 0..%u)", e, t,
					       ne - 1);
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
	bool looked = false;
	uint32_t stuck = 0;
	/* the layer's stall: waits, and reads straight into slots (GPUDirect Storage) */
	double t0 = moe_cache_stall(c);
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
	announce(ctx, il, n_tok);
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
		bool in_flight = false, idle = false;
		int ran;

		ret = acquire_more(ctx, il);
		if (ret < 0)
			goto fail;
		for (uint32_t e = 0; e < ne && !looked; e++)
			idle |= ctx->exp_state[e] == EXP_IDLE;
		if (!looked && !idle) {
			looked = true;
			ret = look_ahead(ctx, il, n_tok);
			if (ret >= 0)
				ret = moe_cache_poll(c);
			if (ret < 0)
				goto fail;
		}
		ran = run_ready(ctx, L, il, x);
		if (ran < 0) {
			ret = ran;
			goto fail;
		}
		if (ran)
			stuck = 0;
		if (!ctx->exp_left || ran)
			continue;
		for (uint32_t e = 0; e < ne; e++)
			in_flight |= ctx->exp_state[e] == EXP_HELD;
		/* every staging buffer may still be uploading an earlier expert: wait for one */
		if (!in_flight && !moe_cache_busy(c)) {
			/*
			 * A staging buffer may have come free after acquire_more
			 * found none: look again before calling the layer stuck.
			 */
			if (!stuck++)
				continue;
			ret = moe_err(ENOSPC, "layer %u: no expert slot can be freed (%u slots)", il,
				      ctx->st.n_slots);
			goto fail;
		}
		stuck = 0;
		ret = moe_cache_wait(c);
		if (ret < 0)
			goto fail;
	}
	if (!looked) {
		ret = look_ahead(ctx, il, n_tok);
		if (ret < 0)
			goto fail;
	}
	ctx->layer_stall[il] += moe_cache_stall(c) - t0;
	return be->ops->combine(be, ctx->buf[PB_YBUF],
				ctx->arch->ffn == MOE_FFN_LLAMA4 ? 0 : ctx->buf[PB_RW], n_tok,
				L->n_expert_used, ctx->max_used, ctx->hp.n_embd, out);
fail:
	release_all(ctx);
	ctx->layer_stall[il] += moe_cache_stall(c) - t0;
	return ret;
}

/*
 * The streamed dense FFN that comes after layer il: the next one of this
 * step, else the first one of the next step.  Every token uses it, so
 * fetching it ahead is never wasted; -1 when il's is the only one.
 */
static int32_t next_dense(const struct moe_ctx *ctx, uint32_t il)
{
	uint32_t L = ctx->hp.n_layer;

	for (uint32_t d = 1; d < L; d++) {
		uint32_t j = (il + d) % L;

		if (ctx->layers[j].dense_stream)
			return (int32_t)j;
	}
	return -1;
}

int moe_dense_stream(struct moe_ctx *ctx, uint32_t il, enum moe_glu act, moe_dptr x,
		     uint32_t n_tok, moe_dptr out)
{
	struct moe_expert_cache *c = ctx->cache;
	struct moe_backend *be = ctx->be;
	const struct moe_expert *ex = moe_cache_expert(c, il, 0);
	int32_t next = next_dense(ctx, il);
	struct moe_be_ffn f = { .n_mats = ex->n_mats, .m = n_tok };
	struct moe_ffn_args a = { .ffn = &f, .n_ffn = 1, .stride = 1, .act = act,
				  .n_embd = ctx->hp.n_embd, .x = x, .out = out };
	struct moe_be_event *ev;
	uint32_t slot;
	double t0 = moe_cache_stall(c);
	int ret;

	/* the policy's view: this layer routes now, to its one entry */
	moe_cache_layer(c, il, ctx->clock, &(uint32_t){ 0 }, 1);
	while ((ret = moe_cache_acquire(c, il, 0, ctx->clock, &slot)) == -EAGAIN) {
		ret = moe_cache_wait(c);
		if (ret < 0)
			goto out;
	}
	if (ret < 0)
		goto out;
	/* pinned now, so the read ahead cannot take this slot */
	if (next >= 0) {
		moe_cache_hint(c, (uint32_t)next, 0, 1.0f, ctx->clock);
		ret = moe_cache_prefetch(c, (uint32_t)next, 0, ctx->clock);
		if (ret == -EAGAIN)
			ret = 0;
	}
	ret = ret < 0 ? ret : moe_cache_poll(c);
	while (ret >= 0 && !(ret = moe_cache_ready(c, slot)))
		ret = moe_cache_wait(c);
	if (ret < 0) {
		moe_cache_release(c, slot);
		ret = moe_err(-ret, "layer %u: the dense FFN could not be read: %s", il,
			      strerror(-ret));
		goto out;
	}
	ev = moe_cache_slot_event(c, slot);
	ret = ev ? be->ops->queue_wait(be, MOE_BE_COMPUTE, ev) : 0;
	for (uint32_t m = 0; m < ex->n_mats; m++)
		f.mats[m] = (struct moe_be_mat){ .p = moe_cache_mat(c, slot, m),
						 .type = ex->mats[m].type,
						 .rows = (int64_t)ex->mats[m].rows,
						 .cols = (int64_t)ex->mats[m].cols };
	if (!ret)
		ret = be->ops->ffn(be, &a);
	/* released either way; the FFN's reads are behind this point */
	if (moe_cache_used(c, &slot, 1) < 0 && !ret)
		ret = -EIO;
out:
	ctx->layer_stall[il] += moe_cache_stall(c) - t0;
	return ret;
}
