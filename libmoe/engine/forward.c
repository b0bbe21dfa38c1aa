/* SPDX-License-Identifier: MIT */
/*
 * The layer loop: embeddings, attention with the KV cache, the FFN (dense,
 * routed experts, or both), the output head.  One call handles up to n_batch
 * tokens; every operation is a backend operation on device memory, and the
 * host sees only the experts each layer chose and the logits.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "engine/engine.h"
#include "util/util.h"

/* llama4 temperature tuning of NoPE layers */
#define LLAMA4_TEMP_FLOOR 8192.0
#define LLAMA4_TEMP_SCALE 0.1

#define OPS(ctx) ((ctx)->be->ops)
/* Chain backend calls: the first failure is kept and the rest are skipped. */
#define TRY(expr) do { if (!ret) ret = (expr); } while (0)

static int mm(struct moe_ctx *ctx, const struct moe_be_mat *w, moe_dptr x, uint32_t n,
	      moe_dptr y)
{
	return OPS(ctx)->matmul(ctx->be, w, 1, x, n, &y);
}

/* out = down(act(gate x) * up x) over n tokens: one FFN op over rows 0..n-1 */
static int dense_ffn(struct moe_ctx *ctx, const struct moe_be_mat *g, const struct moe_be_mat *u,
		     const struct moe_be_mat *d, enum moe_glu act, moe_dptr x, uint32_t n,
		     moe_dptr out)
{
	struct moe_be_ffn f = { .mats = { *g, *u, *d }, .n_mats = 3, .m = n };
	struct moe_ffn_args a = { .ffn = &f, .n_ffn = 1, .stride = 1, .act = act,
				  .n_embd = ctx->hp.n_embd, .x = x, .out = out };

	return OPS(ctx)->ffn(ctx->be, &a);
}

static int attention(struct moe_ctx *ctx, uint32_t il, uint32_t n)
{
	struct moe_backend *be = ctx->be;
	struct eng_layer *L = &ctx->layers[il];
	uint32_t hd = L->head_dim, nq = L->n_head * hd, nkv = L->n_head_kv * hd;
	moe_dptr *b = ctx->buf;
	float eps = ctx->hp.rms_eps;
	struct moe_attn_args args;
	int ret = 0;

	TRY(OPS(ctx)->rms_norm(be, b[PB_H], b[PB_X], n, ctx->hp.n_embd, L->attn_norm, eps));
	if (!L->own_kv) {
		/* Gemma 4's shared layers: queries only, over an earlier layer's cache */
		TRY(mm(ctx, &L->wq, b[PB_X], n, b[PB_Q]));
	} else if (L->wv.p) {
		struct moe_be_mat w[3] = { L->wq, L->wk, L->wv };
		moe_dptr y[3] = { b[PB_Q], b[PB_K], b[PB_V] };

		TRY(OPS(ctx)->matmul(be, w, 3, b[PB_X], n, y));
	} else {
		struct moe_be_mat w[2] = { L->wq, L->wk };
		moe_dptr y[2] = { b[PB_Q], b[PB_K] };

		TRY(OPS(ctx)->matmul(be, w, 2, b[PB_X], n, y));
		TRY(OPS(ctx)->copy(be, MOE_BE_COMPUTE, b[PB_V], b[PB_K],
				   sizeof(float) * (uint64_t)n * nkv));
	}
	if (L->bq) {
		TRY(OPS(ctx)->add_bias(be, b[PB_Q], L->bq, n, nq));
		TRY(OPS(ctx)->add_bias(be, b[PB_K], L->bk, n, nkv));
		TRY(OPS(ctx)->add_bias(be, b[PB_V], L->bv, n, nkv));
	}
	if (L->q_norm)
		TRY(OPS(ctx)->rms_norm(be, b[PB_Q], b[PB_Q], (int64_t)n * L->n_head, hd, L->q_norm,
				       eps));
	if (L->k_norm && L->own_kv)
		TRY(OPS(ctx)->rms_norm(be, b[PB_K], b[PB_K], (int64_t)n * L->n_head_kv, hd,
				       L->k_norm, eps));
	if ((ctx->arch->attn & MOE_ATTN_V_NORM) && L->own_kv)
		TRY(OPS(ctx)->rms_norm(be, b[PB_V], b[PB_V], (int64_t)n * L->n_head_kv, hd, 0, eps));
	if (L->rope) {
		TRY(OPS(ctx)->rope(be, b[PB_Q], n, L->n_head, hd, b[PB_POS], &L->rot));
		if (L->own_kv)
			TRY(OPS(ctx)->rope(be, b[PB_K], n, L->n_head_kv, hd, b[PB_POS], &L->rot));
		if (L->qk_norm_plain) {
			TRY(OPS(ctx)->rms_norm(be, b[PB_Q], b[PB_Q], (int64_t)n * L->n_head, hd, 0,
					       eps));
			TRY(OPS(ctx)->rms_norm(be, b[PB_K], b[PB_K], (int64_t)n * L->n_head_kv, hd, 0,
					       eps));
		}
	}
	if (L->attn_temp)
		TRY(OPS(ctx)->scale_rows(be, b[PB_Q], b[PB_TSCALE], n, nq, false));
	if (L->own_kv)
		TRY(OPS(ctx)->kv_store(be, &L->kv, b[PB_K], b[PB_V], b[PB_POS], b[PB_SEQ], n));
	args = (struct moe_attn_args){
		.q = b[PB_Q], .out = b[PB_ATT], .pos = b[PB_POS], .seq = b[PB_SEQ],
		.sinks = L->sinks, .kv = L->kv, .n_tok = n, .n_head = L->n_head,
		.n_head_kv = L->n_head_kv, .head_dim = hd, .mask = MOE_MASK_CAUSAL,
		.scale = L->kq_scale,
	};
	if (L->sliding) {
		args.mask = MOE_MASK_SLIDING;
		args.window = ctx->hp.sliding_window;
	} else if (L->chunked) {
		args.mask = MOE_MASK_CHUNKED;
		args.window = ctx->par.attn_chunk ? ctx->par.attn_chunk : 8192;
	}
	TRY(OPS(ctx)->attention(be, &args));
	TRY(mm(ctx, &L->wo, b[PB_ATT], n, b[PB_O]));
	if (L->bo)
		TRY(OPS(ctx)->add_bias(be, b[PB_O], L->bo, n, ctx->hp.n_embd));
	if (L->post_attn_norm && ctx->arch->post_attn_norm)
		TRY(OPS(ctx)->rms_norm(be, b[PB_O], b[PB_O], n, ctx->hp.n_embd, L->post_attn_norm,
				       eps));
	TRY(OPS(ctx)->add(be, b[PB_H], b[PB_O], (int64_t)n * ctx->hp.n_embd));
	return ret;
}

/*
 * Multi-head latent attention in its absorbed form: the cache keeps, per
 * position, the normed latent c (kv_lora_rank) and the rotated shared key
 * k_pe; each head's no-RoPE query is taken into latent space by its attn_k_b
 * (so q.k = q_abs.c + q_pe.k_pe), attention runs as MQA over the latent
 * cache with the values read from the keys' latent part, and attn_v_b takes
 * each head's latent output to its value space.
 */
static int attention_mla(struct moe_ctx *ctx, uint32_t il, uint32_t n)
{
	struct moe_backend *be = ctx->be;
	const struct moe_hparams *hp = &ctx->hp;
	struct eng_layer *L = &ctx->layers[il];
	uint32_t H = L->n_head, r = hp->kv_lora_rank, rot = hp->n_rot;
	uint32_t hk = hp->head_dim_k_mla, hv = hp->head_dim_v_mla, nope = hk - rot, lw = r + rot;
	moe_dptr *b = ctx->buf;
	float eps = hp->rms_eps;
	struct moe_rope pe = L->rot;
	struct moe_heads_args kb, vb;
	struct moe_attn_args args;
	int ret = 0;

	TRY(OPS(ctx)->rms_norm(be, b[PB_H], b[PB_X], n, hp->n_embd, L->attn_norm, eps));
	if (L->wq_a.p) {
		struct moe_be_mat w[2] = { L->wq_a, L->wkv_a };
		moe_dptr y[2] = { b[PB_LAT], b[PB_K] };

		TRY(OPS(ctx)->matmul(be, w, 2, b[PB_X], n, y));
		TRY(OPS(ctx)->rms_norm(be, b[PB_LAT], b[PB_LAT], n, hp->q_lora_rank, L->q_a_norm,
				       eps));
		TRY(mm(ctx, &L->wq_b, b[PB_LAT], n, b[PB_Q]));
	} else {
		struct moe_be_mat w[2] = { L->wq, L->wkv_a };
		moe_dptr y[2] = { b[PB_Q], b[PB_K] };

		TRY(OPS(ctx)->matmul(be, w, 2, b[PB_X], n, y));
	}
	/* the cache row [c | k_pe]: c normed, k_pe rotated, each through a packed copy */
	TRY(OPS(ctx)->copy_rows(be, b[PB_V], r, b[PB_K], lw, r, n));
	TRY(OPS(ctx)->rms_norm(be, b[PB_V], b[PB_V], n, r, L->kv_a_norm, eps));
	TRY(OPS(ctx)->copy_rows(be, b[PB_K], lw, b[PB_V], r, r, n));
	TRY(OPS(ctx)->copy_rows(be, b[PB_V], rot, b[PB_K] + sizeof(float) * r, lw, rot, n));
	TRY(OPS(ctx)->rope(be, b[PB_V], n, 1, rot, b[PB_POS], &pe));
	TRY(OPS(ctx)->copy_rows(be, b[PB_K] + sizeof(float) * r, lw, b[PB_V], rot, rot, n));
	TRY(OPS(ctx)->kv_store(be, &L->kv, b[PB_K], 0, b[PB_POS], b[PB_SEQ], n));
	/* the latent queries [q_nope . k_b | rotated q_pe] of every head */
	TRY(OPS(ctx)->copy_rows(be, b[PB_ATT], rot, b[PB_Q] + sizeof(float) * nope, hk, rot,
				n * H));
	TRY(OPS(ctx)->rope(be, b[PB_ATT], n, H, rot, b[PB_POS], &pe));
	kb = (struct moe_heads_args){ .w = L->wk_b, .n_head = H, .n_tok = n, .x = b[PB_Q],
				      .x_tok = H * hk, .x_head = hk, .y = b[PB_LAT],
				      .y_tok = H * lw, .y_head = lw };
	TRY(OPS(ctx)->matmul_heads(be, &kb));
	TRY(OPS(ctx)->copy_rows(be, b[PB_LAT] + sizeof(float) * r, lw, b[PB_ATT], rot, rot,
				n * H));
	args = (struct moe_attn_args){
		.q = b[PB_LAT], .out = b[PB_ATT], .pos = b[PB_POS], .seq = b[PB_SEQ],
		.kv = L->kv, .n_tok = n, .n_head = H, .n_head_kv = 1, .head_dim = lw,
		.head_dim_v = r, .mask = MOE_MASK_CAUSAL, .scale = L->kq_scale,
	};
	TRY(OPS(ctx)->attention(be, &args));
	vb = (struct moe_heads_args){ .w = L->wv_b, .n_head = H, .n_tok = n, .x = b[PB_ATT],
				      .x_tok = H * r, .x_head = r, .y = b[PB_Q],
				      .y_tok = H * hv, .y_head = hv };
	TRY(OPS(ctx)->matmul_heads(be, &vb));
	TRY(mm(ctx, &L->wo, b[PB_Q], n, b[PB_O]));
	TRY(OPS(ctx)->add(be, b[PB_H], b[PB_O], (int64_t)n * hp->n_embd));
	return ret;
}

/* Shared expert of the std/llama4 styles into out, scaled by its own gate when it has one. */
static int shared_expert(struct moe_ctx *ctx, const struct eng_layer *L, moe_dptr x, uint32_t n,
			 moe_dptr out)
{
	int ret = dense_ffn(ctx, &L->gate_shexp, &L->up_shexp, &L->down_shexp, MOE_GLU_SILU, x, n,
			    out);

	if (!L->gate_inp_shexp.p)
		return ret;
	TRY(mm(ctx, &L->gate_inp_shexp, x, n, ctx->buf[PB_SHG]));
	TRY(OPS(ctx)->scale_rows(ctx->be, out, ctx->buf[PB_SHG], n, ctx->hp.n_embd, true));
	return ret;
}

static int router_logits(struct moe_ctx *ctx, const struct eng_layer *L, moe_dptr x, uint32_t n)
{
	int ret = mm(ctx, &L->gate_inp, x, n, ctx->buf[PB_RLOG]);

	if (L->gate_inp_b)
		TRY(OPS(ctx)->add_bias(ctx->be, ctx->buf[PB_RLOG], L->gate_inp_b, n,
				       ctx->hp.n_expert));
	return ret;
}

static int ffn(struct moe_ctx *ctx, uint32_t il, uint32_t n)
{
	struct moe_backend *be = ctx->be;
	struct eng_layer *L = &ctx->layers[il];
	uint32_t n_embd = ctx->hp.n_embd;
	int64_t nn = (int64_t)n * n_embd;
	moe_dptr *b = ctx->buf;
	float eps = ctx->hp.rms_eps;
	enum moe_glu act = ctx->arch->act == MOE_ACT_GELU ? MOE_GLU_GELU : MOE_GLU_SILU;
	moe_dptr pre = ctx->arch->ffn == MOE_FFN_STD && !L->ffn_norm ? L->post_attn_norm :
		       L->ffn_norm;
	int ret = 0;

	TRY(OPS(ctx)->rms_norm(be, b[PB_H], b[PB_X], n, n_embd, pre, eps));
	if (!L->is_moe) {
		/* gemma4's dense layers take the same GeGLU MLP as its MoE layers */
		enum moe_glu dact = ctx->arch->ffn == MOE_FFN_GEMMA4 ? MOE_GLU_GELU : act;

		if (L->dense_stream)
			TRY(moe_dense_stream(ctx, il, dact, b[PB_X], n, b[PB_FFN_OUT]));
		else
			TRY(dense_ffn(ctx, &L->ffn_gate, &L->ffn_up, &L->ffn_down, dact, b[PB_X], n,
				      b[PB_FFN_OUT]));
	} else if (ctx->arch->ffn == MOE_FFN_GEMMA4) {
		/* the router reads the attention residual, not the FFN input */
		TRY(OPS(ctx)->rms_norm(be, b[PB_H], b[PB_X2], n, n_embd, L->gate_inp_scale, eps));
		TRY(OPS(ctx)->scale(be, b[PB_X2], 1.0f / sqrtf((float)n_embd), nn));
		TRY(router_logits(ctx, L, b[PB_X2], n));
		TRY(moe_ffn_begin(ctx, il, b[PB_X2], n));
		/* the dense MLP runs while the choices come back */
		TRY(dense_ffn(ctx, &L->ffn_gate, &L->ffn_up, &L->ffn_down, MOE_GLU_GELU, b[PB_X], n,
			      b[PB_FFN_OUT]));
		TRY(OPS(ctx)->rms_norm(be, b[PB_FFN_OUT], b[PB_FFN_OUT], n, n_embd,
				       L->post_ffw_norm_1, eps));
		/* the experts' input; o is free once the attention output is added */
		TRY(OPS(ctx)->rms_norm(be, b[PB_H], b[PB_O], n, n_embd, L->pre_ffw_norm_2, eps));
		TRY(moe_ffn_finish(ctx, il, b[PB_O], n, b[PB_MOE_OUT]));
		TRY(OPS(ctx)->rms_norm(be, b[PB_MOE_OUT], b[PB_MOE_OUT], n, n_embd,
				       L->post_ffw_norm_2, eps));
		TRY(OPS(ctx)->add(be, b[PB_FFN_OUT], b[PB_MOE_OUT], nn));
	} else {
		TRY(router_logits(ctx, L, b[PB_X], n));
		TRY(moe_ffn_begin(ctx, il, b[PB_X], n));
		/* the shared expert runs while the choices come back */
		if (L->up_shexp.p)
			TRY(shared_expert(ctx, L, b[PB_X], n, b[PB_MOE_OUT]));
		TRY(moe_ffn_finish(ctx, il, b[PB_X], n, b[PB_FFN_OUT]));
		if (L->up_shexp.p)
			TRY(OPS(ctx)->add(be, b[PB_FFN_OUT], b[PB_MOE_OUT], nn));
	}
	if (ctx->arch->ffn == MOE_FFN_GEMMA4)
		TRY(OPS(ctx)->rms_norm(be, b[PB_FFN_OUT], b[PB_FFN_OUT], n, n_embd, L->post_ffw_norm,
				       eps));
	TRY(OPS(ctx)->add(be, b[PB_H], b[PB_FFN_OUT], nn));
	TRY(moe_ple_layer(ctx, il, n));
	if (L->layer_out_scale)
		TRY(OPS(ctx)->scale_rows(be, b[PB_H], L->layer_out_scale, 1, nn, false));
	return ret;
}

/* Tokens, positions, sequences and per-token query scales to the device. */
static int upload_inputs(struct moe_ctx *ctx, const int32_t *tokens, const int32_t *pos,
			 const int32_t *seq, uint32_t n)
{
	struct moe_backend *be = ctx->be;
	uint64_t b4 = sizeof(int32_t) * n;
	int ret = 0;

	for (uint32_t t = 0; t < n; t++) {
		ctx->h_tok[t] = tokens[t];
		ctx->h_pos[t] = pos[t];
		ctx->h_seq[t] = seq ? seq[t] : 0;
		ctx->h_tscale[t] = (float)(log(floor((pos[t] + 1.0) / LLAMA4_TEMP_FLOOR) + 1.0) *
					   LLAMA4_TEMP_SCALE + 1.0);
	}
	TRY(OPS(ctx)->upload(be, MOE_BE_COMPUTE, ctx->buf[PB_TOK], ctx->h_tok, b4));
	TRY(OPS(ctx)->upload(be, MOE_BE_COMPUTE, ctx->buf[PB_POS], ctx->h_pos, b4));
	TRY(OPS(ctx)->upload(be, MOE_BE_COMPUTE, ctx->buf[PB_SEQ], ctx->h_seq, b4));
	TRY(OPS(ctx)->upload(be, MOE_BE_COMPUTE, ctx->buf[PB_TSCALE], ctx->h_tscale, b4));
	return ret;
}

int moe_forward(struct moe_ctx *ctx, const int32_t *tokens, const int32_t *pos,
		const int32_t *seq, uint32_t n, const int32_t *rows, uint32_t n_rows, float *logits)
{
	struct moe_backend *be = ctx->be;
	uint32_t n_embd = ctx->hp.n_embd, n_vocab = ctx->hp.n_vocab;
	moe_dptr *b = ctx->buf;
	int ret;

	ret = upload_inputs(ctx, tokens, pos, seq, n);
	TRY(OPS(ctx)->get_rows(be, &ctx->tok_embd, b[PB_TOK], n, b[PB_H]));
	if (ctx->arch->embd_scale)
		TRY(OPS(ctx)->scale(be, b[PB_H], sqrtf((float)n_embd), (int64_t)n * n_embd));
	TRY(moe_ple_step(ctx, tokens, n));
	if (ret < 0)
		return ret;
	ctx->k_prev = 0;
	if (ctx->trace && ctx->trace_depth)
		memset(ctx->trace_pred, 0xff, sizeof(int32_t) * (uint64_t)n * ctx->hp.n_layer *
		       ctx->trace_depth * ctx->max_used);
	for (uint32_t il = 0; il < ctx->hp.n_layer; il++) {
		ret = ctx->layers[il].mla ? attention_mla(ctx, il, n) : attention(ctx, il, n);
		TRY(ffn(ctx, il, n));
		if (ret < 0)
			return moe_err_prefix(ret, "layer %u", il);
	}
	for (uint32_t t = 0; ctx->rs && t < n; t++)
		moe_routestats_token(ctx->rs);
	for (uint32_t t = 0; ctx->trace && t < n && !ret; t++) {
		uint64_t row = (uint64_t)t * ctx->hp.n_layer;

		ret = moe_trace_writer_token(ctx->trace, seq ? (uint32_t)seq[t] : 0, pos[t],
					     ctx->k_layer,
					     ctx->trace_ids + row * ctx->max_used,
					     ctx->trace_depth ? ctx->trace_pred + row * ctx->trace_depth *
					     ctx->max_used : NULL, ctx->max_used);
	}
	if (ret < 0)
		return ret;
	if (!n_rows)
		return OPS(ctx)->sync(be);
	if (!rows) {
		/* every row */
		TRY(OPS(ctx)->rms_norm(be, b[PB_H], b[PB_X], n, n_embd, ctx->output_norm,
				       ctx->hp.rms_eps));
	} else {
		struct moe_be_mat h = { .p = b[PB_H], .type = MOE_TYPE_F32, .rows = n, .cols = n_embd };

		/* its own pinned buffer: the token upload from h_tok may still be queued */
		memcpy(ctx->h_rows, rows, sizeof(int32_t) * n_rows);
		TRY(OPS(ctx)->upload(be, MOE_BE_COMPUTE, b[PB_ROWS], ctx->h_rows,
				     sizeof(int32_t) * n_rows));
		TRY(OPS(ctx)->get_rows(be, &h, b[PB_ROWS], n_rows, b[PB_X]));
		TRY(OPS(ctx)->rms_norm(be, b[PB_X], b[PB_X], n_rows, n_embd, ctx->output_norm,
				       ctx->hp.rms_eps));
	}
	TRY(mm(ctx, &ctx->output, b[PB_X], n_rows, b[PB_LOGITS]));
	if (ctx->softcap > 0)
		TRY(OPS(ctx)->softcap(be, b[PB_LOGITS], ctx->softcap, (int64_t)n_rows * n_vocab));
	TRY(OPS(ctx)->download(be, MOE_BE_COMPUTE, logits, b[PB_LOGITS],
			       sizeof(float) * (uint64_t)n_rows * n_vocab));
	TRY(OPS(ctx)->sync(be));
	return ret;
}
