/* SPDX-License-Identifier: MIT */
/*
 * The inference context's insides, shared by ctx.c (create, eval, stats),
 * load.c (resident tensors, binding), forward.c (the layer loop) and
 * moe_ffn.c (routed experts).  Device memory appears only as moe_dptr: the
 * host reads back nothing but the chosen experts of each token and the
 * logits.
 */
#ifndef MOE_ENGINE_H
#define MOE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "cache/cache.h"
#include "cache/predict.h"
#include "cache/routestats.h"
#include "cache/trace.h"
#include "model.h"
#include "moe/moe.h"
#include "plan.h"

struct eng_layer {
	uint32_t n_head, n_head_kv, head_dim, n_rot;
	uint32_t n_expert_used;
	bool is_moe, sliding, rope, chunked, qk_norm_plain, attn_temp;
	bool mla;                    /* multi-head latent attention (deepseek2) */
	bool dense_stream;           /* ffn_gate/up/down are cache entry (layer, 0), not resident */
	float kq_scale;
	struct moe_rope rot;
	struct moe_kv kv;
	/* MLA: q through q_a/q_b (or wq), the latent + rotated key, per-head k_b/v_b */
	struct moe_be_mat wq_a, wq_b, wkv_a, wk_b, wv_b;
	moe_dptr q_a_norm, kv_a_norm;
	bool own_kv;                 /* false: reads an earlier layer's cache (Gemma 4) */
	/* Gemma 4 per-layer embeddings: inp_gate, proj, post_norm */
	struct moe_be_mat ple_gate, ple_out;
	moe_dptr ple_post_norm;
	struct moe_be_mat wq, wk, wv, wo, ffn_gate, ffn_up, ffn_down;
	struct moe_be_mat gate_inp, gate_shexp, up_shexp, down_shexp, gate_inp_shexp;
	/* f32 vectors in device memory, 0 when the file lacks them */
	moe_dptr attn_norm, bq, bk, bv, bo, q_norm, k_norm, sinks;
	moe_dptr post_attn_norm, ffn_norm, post_ffw_norm;
	moe_dptr gate_inp_b, gate_inp_scale, exp_probs_b;
	moe_dptr gate_exps_b, up_exps_b, down_exps_b, down_exps_scale;
	moe_dptr pre_ffw_norm_2, post_ffw_norm_1, post_ffw_norm_2;
	moe_dptr layer_out_scale;
	uint32_t n_ff_exp;           /* routed expert width (bias rows) */
};

struct ple_read;

/* Gemma 4's per-layer embedding rows, cached by token in pinned host memory (ple.c). */
struct moe_ple {
	struct moe_tensor_info ti;   /* per_layer_token_embd */
	uint64_t row_bytes, stg_each;
	uint32_t n_rows, n_pl;
	uint8_t *rows;               /* n_rows cached rows, then the step's rows (batch) */
	uint8_t *batch;
	int32_t *ids;                /* 0..n-1 for get_rows */
	uint8_t *stg;                /* I/O staging, one row per token of a step */
	int32_t *slot_of;            /* per token: its cache row or -1 */
	int32_t *tok_of;             /* per cache row: its token or -1 */
	uint64_t *used;              /* per cache row: the step that last used it */
	uint64_t clock;
	struct ple_read *reads;
	uint32_t pending;
	int err;
	uint64_t hits, misses, bytes;
};

/* State of one routed expert of the layer in progress. */
enum { EXP_IDLE, EXP_HELD, EXP_DONE };

struct moe_ctx {
	struct moe_model *model;
	const struct moe_arch *arch;
	struct moe_hparams hp;
	struct moe_ctx_params par;
	struct plan_layout lay;
	struct moe_threadpool *pool;
	struct moe_backend *be;
	struct moe_io *io;
	struct moe_expert_cache *cache;
	/*
	 * Resident tensors shared with the model's other contexts (NULL: in
	 * the arena); the context's own allocation, arena_mem, then starts at
	 * arena + share_skip.
	 */
	struct moe_resident_share *share;
	uint64_t share_skip;
	moe_dptr arena_mem;
	uint32_t n_ctx, n_batch, n_past;
	uint32_t n_seq;
	uint32_t *seq_past;          /* positions evaluated per sequence (n_past is seq 0's) */
	uint32_t max_used;           /* largest experts-per-token of any layer */
	float softcap;
	uint64_t clock;              /* tokens evaluated so far (the cache policies' clock) */
	enum moe_gen_end gen_end;    /* why the last moe_ctx_generate ended */

	moe_dptr arena;              /* the plan's device memory, one allocation */
	moe_dptr buf[PB_COUNT];      /* scratch of one forward step */
	moe_dptr *res;               /* per model tensor: resident data or 0 */
	moe_dptr rope_freqs;
	struct moe_be_mat tok_embd, output;
	moe_dptr output_norm;
	struct moe_ple ple;
	struct moe_be_mat ple_proj;  /* per_layer_model_proj */
	moe_dptr ple_proj_norm;
	struct eng_layer *layers;

	/* pinned host memory: inputs, the routing downloads */
	void *hbuf;
	int32_t *h_tok, *h_pos, *h_seq, *h_rows;
	float *h_tscale;
	int32_t *h_sel;              /* [n_batch][max_used] */
	int32_t *h_ents;             /* (token, choice) entries grouped by expert */
	float *h_rlog;               /* [n_batch][n_expert], for the routing hook */
	struct moe_be_event *ev_sel;
	bool io_registered;

	/* the layer in progress (host) */
	int32_t *exp_off, *exp_fill;
	uint8_t *exp_state;
	uint32_t *exp_slot;
	uint32_t exp_left;
	struct moe_be_ffn *ffn_list;
	uint32_t *used_slots;

	/* logits of the last eval (host) */
	float *logits;
	uint32_t n_logits;

	/* routing statistics, prediction and prefetch */
	uint32_t *k_layer;           /* experts per token of each layer, 0 on dense layers */
	uint32_t *k_cache;           /* entries each layer pins at once: k_layer, 1 if streamed */
	uint8_t *dense_streamed;     /* per layer: its dense FFN streams (the cache's key e = 0) */
	struct moe_routestats *rs;
	char *stats_path;            /* where rs is saved; NULL: not saved */
	struct moe_pred *pred;       /* NULL: no prefetching */
	struct moe_pred_cfg pf;
	uint32_t spec_depth;         /* layers ahead of speculative gating, 0: none */
	int32_t *h_spec;             /* pinned [spec_depth][n_batch][max_used] */
	struct moe_be_event *ev_spec;
	int32_t *h_prev;             /* [n_batch][max_used]: the previous routed layer's choices */
	uint32_t k_prev;             /* 0: none yet in this step */
	float *pf_prob;              /* [depth][n_expert] */
	struct moe_pred_cand *pf_cand;
	uint32_t *ids_union;         /* [n_expert] the experts a layer uses */
	uint8_t *chosen;             /* [n_expert] */
	double *layer_stall;         /* per layer */

	/* trace recording */
	struct moe_trace_writer *trace;
	uint32_t trace_depth;
	int32_t *trace_ids;          /* [n_batch][n_layer][max_used] */
	int32_t *trace_pred;         /* [n_batch][n_layer][trace_depth][max_used] */

	struct moe_ctx_stats st;
	struct moe_io_stats io_base;
	/* the device's free memory before the context's first allocation and after its load */
	struct moe_be_mem mem_before, mem_after;
	char desc[640];

	moe_route_hook route_hook;
	void *route_arg;
	moe_prefetch_hook pf_hook;
	void *pf_arg;
	struct moe_prefetch_req *pf_req;   /* [pf_req_max] what the prefetch hook asks */
	uint32_t pf_req_max;               /* n_layer * n_expert: each expert once */

	struct moe_pub *pub;         /* live counters for moectl status (publish.c), or NULL */
};

/*
 * share.c: the bytes at the start of the plan's device memory that only
 * resident tensors use (0: none to share), the end of those tensors in
 * *resident_end; take a reference to the share of a plan laid out alike,
 * made by @load (read) on first use or reused (not read), and drop it.
 */
uint64_t moe_share_prefix(const struct plan_layout *l, uint32_t n_layer, uint64_t *resident_end);
int moe_share_acquire(struct moe_ctx *ctx, uint64_t bytes,
		      int (*load)(struct moe_ctx *ctx, moe_dptr base, bool read));
void moe_share_release(struct moe_ctx *ctx);
uint64_t moe_share_bytes(const struct moe_ctx *ctx);

/* load.c: read the resident tensors into the arena and bind every layer. */
int moe_engine_load(struct moe_ctx *ctx);
int moe_engine_bind(struct moe_ctx *ctx);

/*
 * One forward step of n <= n_batch tokens at positions pos[] of sequences
 * seq[] (NULL: all sequence 0); the logits of rows[0..n_rows) (rows NULL:
 * every row, n_rows = n) into @logits (host, n_vocab floats per row).
 */
int moe_forward(struct moe_ctx *ctx, const int32_t *tokens, const int32_t *pos,
		const int32_t *seq, uint32_t n, const int32_t *rows, uint32_t n_rows,
		float *logits);
/*
 * Routed experts of layer il: begin routes the router logits in scratch
 * (x: the router's input, which speculative gating feeds to the next
 * layers' routers) and starts the download of the choices; the caller may
 * queue other work
 * (shared expert, dense MLP) meanwhile; finish waits for the choices, pins
 * the cached experts, reads the missing ones, runs every expert over its
 * tokens of x as it becomes usable and writes the weighted sums to out.
 */
int moe_ffn_begin(struct moe_ctx *ctx, uint32_t il, moe_dptr x, uint32_t n_tok);
int moe_ffn_finish(struct moe_ctx *ctx, uint32_t il, moe_dptr x, uint32_t n_tok, moe_dptr out);
/*
 * A streamed dense FFN of layer il over n_tok rows of x into out: pins its
 * slot (reading it if it is not cached), starts fetching the next streamed
 * one, and runs once its data is usable.
 */
int moe_dense_stream(struct moe_ctx *ctx, uint32_t il, enum moe_glu act, moe_dptr x,
		     uint32_t n_tok, moe_dptr out);
/* ple.c: Gemma 4 E2B/E4B per-layer embeddings (no-ops without them). */
int moe_ple_init(struct moe_ctx *ctx);
void moe_ple_free(struct moe_ctx *ctx);
int moe_ple_step(struct moe_ctx *ctx, const int32_t *tokens, uint32_t n);
int moe_ple_layer(struct moe_ctx *ctx, uint32_t il, uint32_t n);

#endif
