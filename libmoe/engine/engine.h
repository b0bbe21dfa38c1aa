/* SPDX-License-Identifier: MIT */
/* The inference context's insides, shared by ctx.c, forward.c and moe_ffn.c. */
#ifndef MOE_ENGINE_H
#define MOE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "cache/cache.h"
#include "model.h"
#include "moe/moe.h"

/* A resident matrix in device memory; p is NULL when the file lacks it. */
struct eng_mat {
	const void *p;
	uint32_t type;
	int64_t rows, cols;
};

/* How the FFN half of a layer is wired, beyond the generic MoE recipe. */
enum eng_ffn_style {
	ENG_FFN_STD,        /* norm -> experts (+ shared expert) or dense */
	ENG_FFN_LLAMA4,     /* router weight scales the expert input; shared expert added */
	ENG_FFN_GEMMA4,     /* dense GeGLU beside the experts, extra norms, scaled router input */
};

/* What the forward pass needs per architecture that the arch table does not say. */
struct eng_arch {
	enum eng_ffn_style ffn;
	const char *pre_ffn_norm;   /* the norm before the FFN */
	float attn_scale;           /* 0: 1/sqrt(head_dim) */
	bool embd_scale;            /* h = embedding * sqrt(n_embd) */
	bool post_attn_norm;        /* norm the attention output before the residual */
	float softcap_default;      /* final logit softcapping when the key is absent */
};

struct eng_layer {
	uint32_t n_head, n_head_kv, head_dim, n_rot;
	uint32_t n_expert_used;
	bool is_moe, sliding, rope;
	struct moe_rope rot;
	struct eng_mat wq, wk, wv, wo, ffn_gate, ffn_up, ffn_down;
	struct eng_mat gate_inp, gate_shexp, up_shexp, down_shexp;
	const float *attn_norm, *bq, *bk, *bv, *bo, *q_norm, *k_norm, *sinks;
	const float *post_attn_norm, *ffn_norm, *post_ffw_norm;
	const float *gate_inp_b, *gate_inp_scale, *exp_probs_b, *gate_inp_shexp;
	const float *gate_exps_b, *up_exps_b, *down_exps_b, *down_exps_scale;
	const float *pre_ffw_norm_2, *post_ffw_norm_1, *post_ffw_norm_2;
	const float *layer_out_scale;
	float *k_cache, *v_cache;   /* [n_ctx][n_head_kv * head_dim] */
};

/* Called with the router's selection logits and choices of every token of a layer. */
typedef void (*moe_route_hook)(void *arg, uint32_t layer, const int32_t *pos, uint32_t n_tok,
			       const float *logits, uint32_t n_expert, const int32_t *sel,
			       uint32_t k);

struct moe_ctx {
	struct moe_model *model;
	const struct eng_arch *ea;
	struct moe_hparams hp;
	struct moe_ctx_params par;
	struct moe_threadpool *pool;
	struct moe_backend *be;
	struct moe_io *io;
	struct moe_expert_cache *cache;
	uint32_t n_ctx, n_batch, n_past;
	uint32_t max_used;          /* largest experts-per-token of any layer */
	uint32_t chunk;
	float softcap;

	/* resident tensors, indexed like the model's tensor table */
	void **res;
	uint64_t *res_bytes;
	uint32_t n_tensors;
	void **extra;               /* F32 copies of non-F32 vectors */
	uint64_t *extra_bytes;
	uint32_t n_extra;

	struct eng_mat tok_embd, output;
	const float *output_norm;
	const float *rope_freqs;
	struct eng_layer *layers;

	/* scratch (device memory) */
	void *scratch;
	uint64_t scratch_bytes;
	float *h, *x, *x2, *q, *k, *v, *att, *o, *ffn_out, *moe_out;
	float *rlog, *rw, *gath, *gu, *up, *act, *dn, *ybuf;
	int32_t *sel, *pos;
	int32_t *tok_list;          /* (token, choice) entries grouped by expert (host) */
	int32_t *exp_off, *exp_fill;
	uint8_t *exp_state;
	float *route_tmp;           /* 2 x n_expert (host) */
	uint32_t exp_left;          /* experts of the current layer not computed yet */
	uint32_t *exp_slot;
	uint32_t max_hd_q, max_kv_dim, max_ff;

	/* logits of the last eval (host) */
	float *logits;
	uint32_t n_logits;
	uint64_t kv_bytes, resident_bytes;
	uint64_t io_pool_bytes;     /* pinned staging of the I/O engine, outside the budget */

	struct moe_ctx_stats st;
	struct moe_io_stats io_base;
	char desc[512];

	moe_route_hook route_hook;
	void *route_arg;
};

/* One forward step of n <= n_batch tokens; writes logits of the tokens asked for. */
int moe_forward(struct moe_ctx *ctx, const int32_t *tokens, uint32_t n, uint32_t pos,
		bool all_logits, float *logits);
/*
 * Routed experts of layer il: begin routes ctx->rlog, pins the cached experts
 * and starts reading the missing ones; the caller may compute other work
 * (shared expert, dense MLP) meanwhile; finish runs every expert over its
 * tokens of x as it becomes ready and writes the weighted sums to out.
 */
int moe_ffn_begin(struct moe_ctx *ctx, uint32_t il, uint32_t n_tok);
int moe_ffn_finish(struct moe_ctx *ctx, uint32_t il, const float *x, uint32_t n_tok,
		   float *out);
/* Give up on a begun layer (the work in between failed): unpin its experts. */
int moe_ffn_finish_abort(struct moe_ctx *ctx, int ret);
/* Route n_tok tokens: logits in, chosen experts and weights out. */
void moe_route(const struct moe_ctx *ctx, const struct eng_layer *L, float *logits,
	       uint32_t n_tok, int32_t *sel, float *w);
/* For tests: see every routing decision. */
void moe_ctx_set_route_hook(struct moe_ctx *ctx, moe_route_hook hook, void *arg);

#endif
