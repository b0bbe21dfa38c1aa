/* SPDX-License-Identifier: MIT */
/*
 * The backend interface: device memory inside a budget, uploads from pinned
 * host staging, and the kernels the forward pass needs.  The forward pass
 * only talks to a backend through this table, so a CUDA backend can slot in
 * behind it.  Activations and the KV cache are F32; weights keep their GGML
 * type and go through the quant kernels (moe_matmul), whatever activation
 * type those pick.
 */
#ifndef MOE_BACKEND_H
#define MOE_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

struct moe_threadpool;
struct moe_backend;

enum moe_rotate {
	MOE_ROTATE_NONE = 0,
	MOE_ROTATE_NORM = 1,   /* adjacent pairs (2i, 2i+1) */
	MOE_ROTATE_NEOX = 2,   /* halves (i, i + n_rot/2) */
};

/* the forward pass refuses head dims past this (no model comes close) */
#define MOE_ROPE_MAX_PAIRS 1024

/* One rotation setup; angles are pos * base^(-2i/n_rot) / freq_factors[i]. */
struct moe_rope {
	enum moe_rotate mode;
	uint32_t n_rot;              /* rotated dims per head; the rest pass through */
	float base;
	float freq_scale;            /* 1 = none; YaRN/linear interpolation factor */
	const float *freq_factors;   /* n_rot/2 divisors, or NULL */
	/* YaRN: ext_factor 0 disables the ramp */
	float ext_factor;
	float attn_factor;
	float corr_lo, corr_hi;      /* correction dims (pair indices) */
};

enum moe_glu {
	MOE_GLU_SILU = 0,            /* silu(g) * u */
	MOE_GLU_GELU = 1,            /* gelu_tanh(g) * u */
	MOE_GLU_SWIGLU_OAI = 2,      /* gpt-oss: clamp, g * sigmoid(1.702 g) * (u + 1) */
};

enum moe_attn_mask {
	MOE_MASK_CAUSAL = 0,
	MOE_MASK_SLIDING = 1,        /* key visible when q_pos - k_pos < window */
	MOE_MASK_CHUNKED = 2,        /* key visible when k_pos >= q_pos / window * window */
};

/*
 * Attention of n_tok queries at positions pos[] over a KV cache whose cells
 * 0 .. n_kv-1 hold positions 0 .. n_kv-1.  q is [n_tok][n_head][head_dim],
 * out the same shape; k and v are [n_kv][n_head_kv][head_dim].
 */
struct moe_attn_args {
	const float *q;
	const float *k;
	const float *v;
	float *out;
	const int32_t *pos;
	const float *sinks;          /* [n_head] or NULL */
	uint32_t n_tok;
	uint32_t n_kv;
	uint32_t n_head;
	uint32_t n_head_kv;
	uint32_t head_dim;
	enum moe_attn_mask mask;
	uint32_t window;
	float scale;
};

/* Completion of an asynchronous upload. */
struct moe_be_event {
	volatile bool done;
};

struct moe_backend_ops {
	const char *name;
	void (*destroy)(struct moe_backend *be);

	/* device memory, counted against the budget given at creation */
	int (*alloc)(struct moe_backend *be, uint64_t bytes, void **out);
	void (*free)(struct moe_backend *be, void *p, uint64_t bytes);
	/* copy from pinned host memory to the device; ev (may be NULL) completes later */
	int (*upload)(struct moe_backend *be, void *dst, const void *src, uint64_t bytes,
		      struct moe_be_event *ev);
	int (*sync)(struct moe_backend *be, struct moe_be_event *ev);
	/* copy device memory back to host memory, synchronously (the host tier) */
	int (*download)(struct moe_backend *be, void *dst, const void *src, uint64_t bytes);

	/* y[t][r] = dot(row r of W, x[t]) for an expert or resident matrix of any type */
	int (*matmul)(struct moe_backend *be, uint32_t wtype, const void *w, int64_t rows,
		      int64_t cols, const float *x, int64_t n_tok, float *y);
	/* row `row` of W as F32 (embedding lookups) */
	int (*get_row)(struct moe_backend *be, uint32_t wtype, const void *w, int64_t cols,
		       int64_t row, float *dst);
	/* y[t] = x[t] / rms(x[t]) * w (w NULL: no weight) over n_vec vectors of n */
	void (*rms_norm)(struct moe_backend *be, const float *x, float *y, int64_t n_vec,
			 int64_t n, const float *w, float eps);
	/* rotate x [n_tok][n_head][head_dim] in place */
	void (*rope)(struct moe_backend *be, float *x, uint32_t n_tok, uint32_t n_head,
		     uint32_t head_dim, const int32_t *pos, const struct moe_rope *r);
	void (*attention)(struct moe_backend *be, const struct moe_attn_args *a);
	/* out[i] = act(gate[i]) * up[i], over n_tok rows: gate row t at gate + t*stride */
	void (*glu)(struct moe_backend *be, enum moe_glu act, const float *gate,
		    const float *up, int64_t stride, int64_t n_tok, int64_t n, float *out);
	/* y[i] += x[i] */
	void (*add)(struct moe_backend *be, float *y, const float *x, int64_t n);
	/* y[t][i] += b[i] over n_tok rows of n */
	void (*add_bias)(struct moe_backend *be, float *y, const float *b, int64_t n_tok,
			 int64_t n);
	void (*scale)(struct moe_backend *be, float *x, float s, int64_t n);
};

struct moe_backend {
	const struct moe_backend_ops *ops;
	struct moe_threadpool *pool;
	uint64_t budget;     /* bytes of device memory this backend may hold */
	uint64_t used;
	uint64_t peak;
	void *priv;
};

/* A CPU backend: "device" memory is host memory counted against @budget. */
int moe_backend_cpu_create(uint64_t budget, struct moe_threadpool *pool,
			   struct moe_backend **out);
void moe_backend_destroy(struct moe_backend *be);

/* Shared helpers of the kernels (also the reference the CUDA backend is checked against). */
float moe_gelu_tanh(float x);
/* YaRN correction dims for base/n_rot/original context, as pair indices */
void moe_rope_yarn_corr(uint32_t n_rot, uint32_t n_ctx_orig, float base, float beta_fast,
			float beta_slow, float *lo, float *hi);

#endif
