/* SPDX-License-Identifier: MIT */
/*
 * The backend interface: device memory, queues and events, copies between
 * host and device, and every operation of the forward pass.  The engine
 * holds device memory only as moe_dptr values (device addresses it never
 * dereferences) and learns only what it downloads: the experts each token
 * chose, and the logits.  A backend that runs work asynchronously (CUDA)
 * runs the operations of one queue in order; the CPU backend runs each
 * operation before returning, which is one valid schedule of the same
 * contract.
 *
 * Activations are F32 in device memory; weights keep their GGML type and go
 * through the backend's quant kernels; the KV cache is F32, F16 or Q8_0.
 * Every operation returns 0 or -errno (with moe_err()); an asynchronous
 * backend may report a failure of queued work at the next event query or
 * synchronisation instead.
 */
#ifndef MOE_BACKEND_H
#define MOE_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

struct moe_threadpool;
struct moe_backend;
struct moe_be_event;

/* A device address: arithmetic is fine, dereferencing on the host is not. 0 = none. */
typedef uint64_t moe_dptr;

/* Work runs in order within a queue; queues synchronise through events. */
enum moe_be_queue {
	MOE_BE_COMPUTE = 0,     /* the forward pass */
	MOE_BE_COPY = 1,        /* expert uploads and host-tier copies */
	MOE_BE_QUEUES = 2,
};

enum moe_rotate {
	MOE_ROTATE_NONE = 0,
	MOE_ROTATE_NORM = 1,   /* adjacent pairs (2i, 2i+1) */
	MOE_ROTATE_NEOX = 2,   /* halves (i, i + n_rot/2) */
};

/* group-limited routing takes at most this many groups (DeepSeek-V3 has 8) */
#define MOE_ROUTE_MAX_GROUPS 256

/* the forward pass refuses head dims past this (no model comes close) */
#define MOE_ROPE_MAX_PAIRS 1024

/* One rotation setup; angles are pos * base^(-2i/n_rot) / freq_factors[i]. */
struct moe_rope {
	enum moe_rotate mode;
	uint32_t n_rot;              /* rotated dims per head; the rest pass through */
	float base;
	float freq_scale;            /* 1 = none; YaRN/linear interpolation factor */
	moe_dptr freq_factors;       /* n_rot/2 divisors (f32, device), or 0 */
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

/* A weight matrix in device memory: rows of cols elements of a GGML type. */
struct moe_be_mat {
	moe_dptr p;
	uint32_t type;
	uint32_t pad;
	int64_t rows, cols;
};

/*
 * The KV cache of one layer: per sequence, n_cells cells of kv_dim values;
 * position p of sequence s lives in cell s * n_cells + p % n_cells, so a
 * layer that sees only a window keeps a ring of window + batch - 1 cells.
 * A latent cache (deepseek2's MLA) has no V rows (v = 0): attention reads
 * each value as the first head_dim_v entries of its key.
 */
struct moe_kv {
	moe_dptr k, v;
	uint32_t type;               /* MOE_TYPE_F32, F16 or Q8_0 */
	uint32_t n_cells;
	uint32_t kv_dim;             /* n_head_kv * head_dim */
	uint32_t pad;
};

/* Bytes of one cell row of @kv_dim values of KV type @type (0: unsupported). */
uint64_t moe_kv_row_bytes(uint32_t type, uint32_t kv_dim);

/*
 * Attention of n_tok queries.  Token t is at position pos[t] of sequence
 * seq[t] (seq 0 when seq is 0) and sees the positions 0..pos[t] of its
 * sequence that the mask leaves (those must be in the cache: the caller
 * stores the batch's K/V first).  q is [n_tok][n_head][head_dim], out
 * [n_tok][n_head][head_dim_v]; values are head_dim_v wide, read from the V
 * rows at kv_head * head_dim_v, or with kv.v = 0 from the key of their KV
 * head (its first head_dim_v entries).
 */
struct moe_attn_args {
	moe_dptr q;
	moe_dptr out;
	moe_dptr pos;                /* int32 [n_tok] */
	moe_dptr seq;                /* int32 [n_tok], or 0 */
	moe_dptr sinks;              /* f32 [n_head], or 0 */
	struct moe_kv kv;
	uint32_t n_tok;
	uint32_t n_head;
	uint32_t n_head_kv;
	uint32_t head_dim;
	uint32_t head_dim_v;         /* 0: head_dim */
	enum moe_attn_mask mask;
	uint32_t window;
	float scale;
	float softcap;               /* 0: none; else scores = softcap * tanh(scores / softcap) */
};

/*
 * How router logits become the chosen experts and their weights.  The
 * selection score of an expert is its probability (softmax or sigmoid of
 * the logit, or the logit itself for SOFTMAX_SELECTED) plus bias; with
 * n_group > 1 the experts form n_group equal groups of consecutive ids, a
 * group scores the sum of its two best selection scores, and only the
 * topk_group best groups (ties to the lower group) compete for the k.
 */
struct moe_route_args {
	moe_dptr logits;             /* f32 [n_tok][n_expert] */
	moe_dptr sel;                /* out: int32 [n_tok][stride] */
	moe_dptr weights;            /* out: f32 [n_tok][stride] */
	moe_dptr bias;               /* f32 [n_expert] added for selection only, or 0 */
	uint32_t n_tok;
	uint32_t n_expert;
	uint32_t k;                  /* experts per token */
	uint32_t stride;             /* row stride of sel/weights (>= k) */
	uint32_t gating;             /* enum moe_gating */
	uint32_t n_group;            /* group-limited routing: groups (0/1: none) */
	uint32_t topk_group;         /* groups kept */
	bool norm;                   /* divide the k weights by their sum */
	float scale;                 /* weights *= scale */
};

/*
 * One expert (or dense FFN) over m rows: out = down(act(gate x) * up x),
 * with optional per-matrix biases and an output scale.  Gate and up are one
 * fused [2 * n_ff] matrix when n_mats is 2.
 */
struct moe_be_ffn {
	struct moe_be_mat mats[3];   /* gate, up, down; or gate_up, down */
	uint32_t n_mats;
	uint32_t m;                  /* rows (entries) this FFN runs over */
	moe_dptr gate_b, up_b, down_b;  /* f32 biases or 0 */
	moe_dptr out_scale;          /* f32 scalar multiplying the output, or 0 */
	uint32_t ent_off;            /* first entry of this FFN in ents */
	uint32_t pad;
};

/*
 * Several FFNs of one layer over gathered rows, the unit both a GPU kernel
 * and the CPU thread pool want.  Entry i of FFN f is ents[f.ent_off + i]
 * when ents is set: input row ents[..] / stride of x (scaled by
 * in_scale[ents[..]] when given), output row ents[..] of out.  Without
 * ents, entry i is row i of x and of out.
 */
struct moe_ffn_args {
	const struct moe_be_ffn *ffn;  /* host array of n_ffn descriptors */
	uint32_t n_ffn;
	uint32_t stride;             /* entries per token (K) */
	enum moe_glu act;
	uint32_t n_embd;
	moe_dptr x;                  /* f32 [n_tok][n_embd] */
	moe_dptr ents;               /* int32 entries, or 0 */
	moe_dptr in_scale;           /* f32 per entry, or 0 */
	moe_dptr out;                /* f32 rows of n_embd */
};

/* Shapes a backend sizes its workspace for (moe_backend_desc.workspace_bytes). */
struct moe_be_shape {
	uint32_t max_tok;            /* tokens per forward step */
	uint32_t max_ent;            /* (token, expert) entries per layer */
	uint32_t n_embd;
	uint32_t max_cols;           /* longest matrix row */
	uint32_t max_ff;             /* widest FFN (gate rows) */
	uint32_t max_head;           /* query heads */
	uint32_t max_head_dim;
	uint32_t max_ffn;            /* FFNs per moe_ffn call */
	uint32_t max_heads_io;       /* widest input + output row of a matmul_heads */
};

/*
 * A product per head: for h < n_head and t < n_tok, the w->rows outputs at
 * y + (t * y_tok + h * y_head) floats are matrix h of w times the w->cols
 * inputs at x + (t * x_tok + h * x_head).  w holds the n_head matrices of
 * w->rows x w->cols back to back (a 3-D tensor; deepseek2's attn_k_b).
 */
struct moe_heads_args {
	struct moe_be_mat w;
	uint32_t n_head;
	uint32_t n_tok;
	moe_dptr x, y;
	uint32_t x_tok, x_head;      /* strides in floats */
	uint32_t y_tok, y_head;
};

struct moe_be_mem {
	uint64_t budget;             /* bytes this backend may hold (UINT64_MAX: unlimited) */
	uint64_t used;
	uint64_t peak;
	uint64_t device_total;       /* the device's memory (0: not a separate device) */
	uint64_t device_free;
};

struct moe_backend_ops {
	const char *name;
	void (*destroy)(struct moe_backend *be);

	/* ---- memory */
	int (*alloc)(struct moe_backend *be, uint64_t bytes, moe_dptr *out);
	void (*free)(struct moe_backend *be, moe_dptr p);
	void (*mem_info)(struct moe_backend *be, struct moe_be_mem *out);
	/*
	 * Host memory the backend copies from or to quickly (pinned): the I/O
	 * engine's staging pool and the host tier are registered once.
	 */
	int (*host_register)(struct moe_backend *be, void *p, uint64_t bytes);
	void (*host_unregister)(struct moe_backend *be, void *p);
	/* Pinned host memory of the backend's own (download targets, inputs). */
	int (*host_alloc)(struct moe_backend *be, uint64_t bytes, void **out);
	void (*host_free)(struct moe_backend *be, void *p);
	/* The workspace the operations use, sized by the descriptor's workspace_bytes. */
	int (*set_workspace)(struct moe_backend *be, moe_dptr p, uint64_t bytes);
	/*
	 * Reads from a file straight into device memory (GPUDirect Storage),
	 * all three NULL where the backend has none.  direct_open sets them up
	 * for file descriptor @fd with [p, p + bytes) as the range the reads
	 * land in, or fails with -errno naming why (the caller then stages).
	 * direct_read reads @bytes at file offset @off into @dst before it
	 * returns, outside every queue: the caller makes sure that no queued
	 * work still reads or writes @dst.  0, or -errno (a file that ends
	 * early is -EIO).  direct_close undoes direct_open (also a failed one).
	 */
	int (*direct_open)(struct moe_backend *be, int fd, moe_dptr p, uint64_t bytes);
	int (*direct_read)(struct moe_backend *be, moe_dptr dst, uint64_t off, uint64_t bytes);
	void (*direct_close)(struct moe_backend *be);

	/* ---- copies, events, queues */
	int (*upload)(struct moe_backend *be, int queue, moe_dptr dst, const void *src,
		      uint64_t bytes);
	int (*download)(struct moe_backend *be, int queue, void *dst, moe_dptr src,
			uint64_t bytes);
	int (*copy)(struct moe_backend *be, int queue, moe_dptr dst, moe_dptr src,
		    uint64_t bytes);
	int (*event_create)(struct moe_backend *be, struct moe_be_event **out);
	void (*event_destroy)(struct moe_backend *be, struct moe_be_event *ev);
	/* ev completes when the work queued on @queue so far has completed */
	int (*event_record)(struct moe_backend *be, int queue, struct moe_be_event *ev);
	/* 1 complete (or never recorded), 0 pending, -errno when the work failed */
	int (*event_query)(struct moe_backend *be, struct moe_be_event *ev);
	int (*event_sync)(struct moe_backend *be, struct moe_be_event *ev);
	/* later work on @queue waits for ev */
	int (*queue_wait)(struct moe_backend *be, int queue, struct moe_be_event *ev);
	int (*sync)(struct moe_backend *be);

	/* ---- operations (on the compute queue) */
	/* dst[i] = row ids[i] of W as F32, for n ids (int32, device) */
	int (*get_rows)(struct moe_backend *be, const struct moe_be_mat *w, moe_dptr ids,
			uint32_t n, moe_dptr dst);
	/* dst = n elements of an F32/F16/BF16 vector as F32 */
	int (*to_f32)(struct moe_backend *be, uint32_t type, moe_dptr src, int64_t n,
		      moe_dptr dst);
	/*
	 * y[i][t][r] = dot(row r of w[i], x[t]) for n_w matrices sharing one
	 * input of n_tok rows of w[0].cols (one quantization of x for all).
	 */
	int (*matmul)(struct moe_backend *be, const struct moe_be_mat *w, uint32_t n_w,
		      moe_dptr x, uint32_t n_tok, const moe_dptr *y);
	/* y[t] = x[t] / rms(x[t]) * w (w 0: no weight) over n_vec vectors of n */
	int (*rms_norm)(struct moe_backend *be, moe_dptr x, moe_dptr y, int64_t n_vec, int64_t n,
			moe_dptr w, float eps);
	/* rotate x [n_tok][n_head][head_dim] in place at positions pos (int32) */
	int (*rope)(struct moe_backend *be, moe_dptr x, uint32_t n_tok, uint32_t n_head,
		    uint32_t head_dim, moe_dptr pos, const struct moe_rope *r);
	/* store k, v [n_tok][kv_dim] at the cells of (seq[t], pos[t]); v 0 with kv->v 0 */
	int (*kv_store)(struct moe_backend *be, const struct moe_kv *kv, moe_dptr k, moe_dptr v,
			moe_dptr pos, moe_dptr seq, uint32_t n_tok);
	int (*attention)(struct moe_backend *be, const struct moe_attn_args *a);
	int (*matmul_heads)(struct moe_backend *be, const struct moe_heads_args *a);
	/* n_rows rows of n floats: dst[r * dst_stride + i] = src[r * src_stride + i] */
	int (*copy_rows)(struct moe_backend *be, moe_dptr dst, uint32_t dst_stride, moe_dptr src,
			 uint32_t src_stride, uint32_t n, uint32_t n_rows);
	/* out[t][i] = act(gate[t][i]) * up[t][i]; row t of gate/up at t * stride */
	int (*glu)(struct moe_backend *be, enum moe_glu act, moe_dptr gate, moe_dptr up,
		   int64_t stride, int64_t n_tok, int64_t n, moe_dptr out);
	int (*ffn)(struct moe_backend *be, const struct moe_ffn_args *a);
	int (*route)(struct moe_backend *be, const struct moe_route_args *a);
	/*
	 * out[t] = sum over j < k of w[t][j] * ys[t * stride + j] (w 0: weight 1),
	 * in order of j, rows of n.
	 */
	int (*combine)(struct moe_backend *be, moe_dptr ys, moe_dptr w, uint32_t n_tok,
		       uint32_t k, uint32_t stride, int64_t n, moe_dptr out);
	/* y[i] += x[i] */
	int (*add)(struct moe_backend *be, moe_dptr y, moe_dptr x, int64_t n);
	/* y[t][i] += b[i] over n_tok rows of n */
	int (*add_bias)(struct moe_backend *be, moe_dptr y, moe_dptr b, int64_t n_tok, int64_t n);
	/* x[i] *= s */
	int (*scale)(struct moe_backend *be, moe_dptr x, float s, int64_t n);
	/* x[t][i] *= f(s[t]) over n_tok rows of n; f = identity, or sigmoid when @sigmoid */
	int (*scale_rows)(struct moe_backend *be, moe_dptr x, moe_dptr s, int64_t n_tok,
			  int64_t n, bool sigmoid);
	/* x[i] *= w[i % n] over n_vec vectors of n */
	int (*mul)(struct moe_backend *be, moe_dptr x, moe_dptr w, int64_t n_vec, int64_t n);
	/* x = cap * tanh(x / cap) */
	int (*softcap)(struct moe_backend *be, moe_dptr x, float cap, int64_t n);
};

struct moe_backend {
	const struct moe_backend_ops *ops;
	const struct moe_backend_desc *desc;
	void *priv;
};

struct moe_backend_params {
	uint64_t budget;             /* device bytes; 0 = unlimited (the device's memory) */
	struct moe_threadpool *pool; /* CPU work (the CPU backend's kernels) */
	uint32_t flags;              /* MOE_BE_F_* */
	int device;                  /* device index where there are several */
};

enum {
	/*
	 * CPU backend: device memory comes from a separate mapping that is
	 * PROT_NONE outside backend calls, so host code touching it faults.
	 */
	MOE_BE_F_GUARD = 1u << 0,
};

/* A backend kind: what the planner needs to know before one exists, and its constructor. */
struct moe_backend_desc {
	const char *name;
	uint32_t align;              /* alignment of sub-allocations in device memory */
	/* bytes of workspace the operations need for these shapes */
	uint64_t (*workspace_bytes)(const struct moe_be_shape *s);
	/* 0 when the kind can run here, else -errno with the reason */
	int (*probe)(void);
	int (*create)(const struct moe_backend_params *p, struct moe_backend **out);
};

extern const struct moe_backend_desc moe_backend_cpu_desc;
/*
 * CUDA (backend/cuda.c): probes by loading libcuda.so.1 (or the library
 * the environment variable MOE_CUDA_LIBRARY names) and asking for a device.
 */
extern const struct moe_backend_desc moe_backend_cuda_desc;

/*
 * The backend kind called @name ("cpu", "cuda"; "auto" = the first that
 * probes successfully), or -ENOENT/-ENODEV with the reason.
 */
int moe_backend_find(const char *name, const struct moe_backend_desc **out);
/* "cpu, cuda" */
const char *moe_backend_names(void);

int moe_backend_create(const struct moe_backend_desc *d, const struct moe_backend_params *p,
		       struct moe_backend **out);
void moe_backend_destroy(struct moe_backend *be);

/* 0 when @a asks for a choice the routing can make, else -EINVAL with the reason (every backend). */
int moe_route_args_check(const struct moe_route_args *a);

/* Shared helpers of the kernels (also the reference the CUDA backend is checked against). */
float moe_gelu_tanh(float x);
/* YaRN correction dims for base/n_rot/original context, as pair indices */
void moe_rope_yarn_corr(uint32_t n_rot, uint32_t n_ctx_orig, float base, float beta_fast,
			float beta_slow, float *lo, float *hi);

#endif
