/* SPDX-License-Identifier: MIT */
/*
 * The layer loop: embeddings, attention with the KV cache, the FFN (dense,
 * routed experts, or both), the output head.  One call handles up to n_batch
 * tokens at consecutive positions; every op goes through the backend.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "engine/engine.h"
#include "util/util.h"

/* llama4 temperature tuning of NoPE layers */
#define LLAMA4_TEMP_FLOOR 8192.0
#define LLAMA4_TEMP_SCALE 0.1

static int mm(struct moe_ctx *ctx, const struct eng_mat *w, const float *x, uint32_t n,
	      float *y)
{
	return ctx->be->ops->matmul(ctx->be, w->type, w->p, w->rows, w->cols, x, n, y);
}

/* out = down(act(gate x) * up x) over n tokens */
static int dense_ffn(struct moe_ctx *ctx, const struct eng_mat *g, const struct eng_mat *u,
		     const struct eng_mat *d, enum moe_glu act, const float *x, uint32_t n,
		     float *out)
{
	struct moe_backend *be = ctx->be;
	int ret = mm(ctx, g, x, n, ctx->gu);

	ret = ret ? ret : mm(ctx, u, x, n, ctx->up);
	if (ret < 0)
		return ret;
	be->ops->glu(be, act, ctx->gu, ctx->up, g->rows, n, g->rows, ctx->act);
	return mm(ctx, d, ctx->act, n, out);
}

static int attention(struct moe_ctx *ctx, uint32_t il, uint32_t n)
{
	struct moe_backend *be = ctx->be;
	const struct moe_arch *a = ctx->model->arch;
	struct eng_layer *L = &ctx->layers[il];
	uint32_t hd = L->head_dim, nq = L->n_head * hd, nkv = L->n_head_kv * hd;
	float eps = ctx->hp.rms_eps;
	struct moe_attn_args args;
	int ret;

	be->ops->rms_norm(be, ctx->h, ctx->x, n, ctx->hp.n_embd, L->attn_norm, eps);
	ret = mm(ctx, &L->wq, ctx->x, n, ctx->q);
	ret = ret ? ret : mm(ctx, &L->wk, ctx->x, n, ctx->k);
	if (!ret && L->wv.p)
		ret = mm(ctx, &L->wv, ctx->x, n, ctx->v);
	if (ret < 0)
		return ret;
	if (!L->wv.p)
		memcpy(ctx->v, ctx->k, sizeof(float) * n * nkv);
	if (L->bq) {
		be->ops->add_bias(be, ctx->q, L->bq, n, nq);
		be->ops->add_bias(be, ctx->k, L->bk, n, nkv);
		be->ops->add_bias(be, ctx->v, L->bv, n, nkv);
	}
	if (L->q_norm) {
		be->ops->rms_norm(be, ctx->q, ctx->q, (int64_t)n * L->n_head, hd, L->q_norm, eps);
		be->ops->rms_norm(be, ctx->k, ctx->k, (int64_t)n * L->n_head_kv, hd, L->k_norm,
				  eps);
	}
	if (a->attn & MOE_ATTN_V_NORM)
		be->ops->rms_norm(be, ctx->v, ctx->v, (int64_t)n * L->n_head_kv, hd, NULL, eps);
	if (L->rope) {
		be->ops->rope(be, ctx->q, n, L->n_head, hd, ctx->pos, &L->rot);
		be->ops->rope(be, ctx->k, n, L->n_head_kv, hd, ctx->pos, &L->rot);
		if ((a->attn & MOE_ATTN_QK_NORM_PLAIN) && ctx->hp.n_expert != 128) {
			be->ops->rms_norm(be, ctx->q, ctx->q, (int64_t)n * L->n_head, hd, NULL, eps);
			be->ops->rms_norm(be, ctx->k, ctx->k, (int64_t)n * L->n_head_kv, hd, NULL,
					  eps);
		}
	} else if (a->attn & MOE_ATTN_NOPE_EVERY4) {
		for (uint32_t t = 0; t < n; t++) {
			double f = log(floor((ctx->pos[t] + 1.0) / LLAMA4_TEMP_FLOOR) + 1.0) *
				   LLAMA4_TEMP_SCALE + 1.0;

			be->ops->scale(be, ctx->q + (size_t)t * nq, (float)f, nq);
		}
	}
	for (uint32_t t = 0; t < n; t++) {
		memcpy(L->k_cache + (size_t)ctx->pos[t] * nkv, ctx->k + (size_t)t * nkv,
		       sizeof(float) * nkv);
		memcpy(L->v_cache + (size_t)ctx->pos[t] * nkv, ctx->v + (size_t)t * nkv,
		       sizeof(float) * nkv);
	}
	args = (struct moe_attn_args){
		.q = ctx->q, .k = L->k_cache, .v = L->v_cache, .out = ctx->att, .pos = ctx->pos,
		.sinks = L->sinks, .n_tok = n, .n_kv = (uint32_t)ctx->pos[n - 1] + 1,
		.n_head = L->n_head, .n_head_kv = L->n_head_kv, .head_dim = hd,
		.mask = MOE_MASK_CAUSAL,
		.scale = ctx->ea->attn_scale ? ctx->ea->attn_scale : 1.0f / sqrtf((float)hd),
	};
	if (L->sliding) {
		args.mask = MOE_MASK_SLIDING;
		args.window = ctx->hp.sliding_window;
	} else if ((a->attn & MOE_ATTN_CHUNKED) && L->rope) {
		args.mask = MOE_MASK_CHUNKED;
		args.window = ctx->chunk;
	}
	be->ops->attention(be, &args);
	ret = mm(ctx, &L->wo, ctx->att, n, ctx->o);
	if (ret < 0)
		return ret;
	if (L->bo)
		be->ops->add_bias(be, ctx->o, L->bo, n, ctx->hp.n_embd);
	if (L->post_attn_norm && ctx->ea->post_attn_norm)
		be->ops->rms_norm(be, ctx->o, ctx->o, n, ctx->hp.n_embd, L->post_attn_norm, eps);
	be->ops->add(be, ctx->h, ctx->o, (int64_t)n * ctx->hp.n_embd);
	return 0;
}

/* Shared expert of the std/llama4 styles into out (when the layer has one). */
static int shared_expert(struct moe_ctx *ctx, const struct eng_layer *L, const float *x,
			 uint32_t n, float *out)
{
	struct moe_backend *be = ctx->be;
	uint32_t n_embd = ctx->hp.n_embd;
	int ret;

	ret = dense_ffn(ctx, &L->gate_shexp, &L->up_shexp, &L->down_shexp, MOE_GLU_SILU, x, n,
			out);
	if (ret < 0 || !L->gate_inp_shexp)
		return ret;
	for (uint32_t t = 0; t < n; t++) {
		const float *xt = x + (size_t)t * n_embd;
		float d = 0;

		for (uint32_t i = 0; i < n_embd; i++)
			d += xt[i] * L->gate_inp_shexp[i];
		be->ops->scale(be, out + (size_t)t * n_embd, 1.0f / (1.0f + expf(-d)), n_embd);
	}
	return 0;
}

static int router_logits(struct moe_ctx *ctx, const struct eng_layer *L, const float *x,
			 uint32_t n)
{
	int ret = mm(ctx, &L->gate_inp, x, n, ctx->rlog);

	if (!ret && L->gate_inp_b)
		ctx->be->ops->add_bias(ctx->be, ctx->rlog, L->gate_inp_b, n, ctx->hp.n_expert);
	return ret;
}

static int ffn(struct moe_ctx *ctx, uint32_t il, uint32_t n)
{
	struct moe_backend *be = ctx->be;
	struct eng_layer *L = &ctx->layers[il];
	uint32_t n_embd = ctx->hp.n_embd;
	int64_t nn = (int64_t)n * n_embd;
	float eps = ctx->hp.rms_eps;
	enum moe_glu act = ctx->model->arch->act == MOE_ACT_GELU ? MOE_GLU_GELU : MOE_GLU_SILU;
	const float *pre = ctx->ea->ffn == ENG_FFN_STD && !L->ffn_norm ? L->post_attn_norm :
			   L->ffn_norm;
	int ret;

	be->ops->rms_norm(be, ctx->h, ctx->x, n, n_embd, pre, eps);
	if (!L->is_moe) {
		/* gemma4's dense layers take the same GeGLU MLP as its MoE layers */
		ret = dense_ffn(ctx, &L->ffn_gate, &L->ffn_up, &L->ffn_down,
				ctx->ea->ffn == ENG_FFN_GEMMA4 ? MOE_GLU_GELU : act, ctx->x, n,
				ctx->ffn_out);
		if (ret < 0)
			return ret;
	} else if (ctx->ea->ffn == ENG_FFN_GEMMA4) {
		float s = 1.0f / sqrtf((float)n_embd);

		/* the router reads the attention residual, not the FFN input */
		be->ops->rms_norm(be, ctx->h, ctx->x2, n, n_embd, NULL, eps);
		for (uint32_t t = 0; t < n; t++)
			for (uint32_t i = 0; i < n_embd; i++)
				ctx->x2[(size_t)t * n_embd + i] *= s * L->gate_inp_scale[i];
		ret = router_logits(ctx, L, ctx->x2, n);
		ret = ret ? ret : moe_ffn_begin(ctx, il, n);
		if (ret < 0)
			return ret;
		/* the dense MLP runs while the missing experts are read */
		ret = dense_ffn(ctx, &L->ffn_gate, &L->ffn_up, &L->ffn_down, MOE_GLU_GELU, ctx->x, n,
				ctx->ffn_out);
		if (ret < 0)
			return moe_ffn_finish_abort(ctx, ret);
		be->ops->rms_norm(be, ctx->ffn_out, ctx->ffn_out, n, n_embd, L->post_ffw_norm_1,
				  eps);
		/* the experts' input; ctx->o is free once the attention output is added */
		be->ops->rms_norm(be, ctx->h, ctx->o, n, n_embd, L->pre_ffw_norm_2, eps);
		ret = moe_ffn_finish(ctx, il, ctx->o, n, ctx->moe_out);
		if (ret < 0)
			return ret;
		be->ops->rms_norm(be, ctx->moe_out, ctx->moe_out, n, n_embd, L->post_ffw_norm_2,
				  eps);
		be->ops->add(be, ctx->ffn_out, ctx->moe_out, nn);
	} else {
		ret = router_logits(ctx, L, ctx->x, n);
		ret = ret ? ret : moe_ffn_begin(ctx, il, n);
		if (ret < 0)
			return ret;
		/* the shared expert runs while the missing experts are read */
		if (L->up_shexp.p) {
			ret = shared_expert(ctx, L, ctx->x, n, ctx->moe_out);
			if (ret < 0)
				return moe_ffn_finish_abort(ctx, ret);
		}
		ret = moe_ffn_finish(ctx, il, ctx->x, n, ctx->ffn_out);
		if (ret < 0)
			return ret;
		if (L->up_shexp.p)
			be->ops->add(be, ctx->ffn_out, ctx->moe_out, nn);
	}
	if (ctx->ea->ffn == ENG_FFN_GEMMA4)
		be->ops->rms_norm(be, ctx->ffn_out, ctx->ffn_out, n, n_embd, L->post_ffw_norm, eps);
	be->ops->add(be, ctx->h, ctx->ffn_out, nn);
	if (L->layer_out_scale)
		be->ops->scale(be, ctx->h, L->layer_out_scale[0], nn);
	return 0;
}

int moe_forward(struct moe_ctx *ctx, const int32_t *tokens, uint32_t n, uint32_t pos,
		bool all_logits, float *logits)
{
	struct moe_backend *be = ctx->be;
	uint32_t n_embd = ctx->hp.n_embd, n_vocab = ctx->hp.n_vocab;
	uint32_t first;
	int ret;

	for (uint32_t t = 0; t < n; t++) {
		ctx->pos[t] = (int32_t)(pos + t);
		ret = be->ops->get_row(be, ctx->tok_embd.type, ctx->tok_embd.p, n_embd, tokens[t],
				       ctx->h + (size_t)t * n_embd);
		if (ret < 0)
			return ret;
	}
	if (ctx->ea->embd_scale)
		be->ops->scale(be, ctx->h, sqrtf((float)n_embd), (int64_t)n * n_embd);
	for (uint32_t il = 0; il < ctx->hp.n_layer; il++) {
		ret = attention(ctx, il, n);
		ret = ret ? ret : ffn(ctx, il, n);
		if (ret < 0)
			return moe_err_prefix(ret, "layer %u", il);
	}
	first = all_logits ? 0 : n - 1;
	be->ops->rms_norm(be, ctx->h + (size_t)first * n_embd, ctx->x, n - first, n_embd,
			  ctx->output_norm, ctx->hp.rms_eps);
	ret = mm(ctx, &ctx->output, ctx->x, n - first, logits);
	if (ret < 0)
		return ret;
	if (ctx->softcap > 0)
		for (uint64_t i = 0; i < (uint64_t)(n - first) * n_vocab; i++)
			logits[i] = ctx->softcap * tanhf(logits[i] / ctx->softcap);
	return 0;
}
