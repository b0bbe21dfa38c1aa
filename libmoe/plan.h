/* SPDX-License-Identifier: MIT */
/*
 * The memory plan's layout: where every piece of device memory goes inside
 * the one allocation a context makes.  moe_plan() reports the totals;
 * moe_ctx_create() uses the offsets, so the two cannot disagree.
 */
#ifndef MOE_PLAN_H
#define MOE_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "moe/moe.h"

/* Scratch buffers of one forward step, in layout order. */
enum plan_buf {
	PB_TOK, PB_POS, PB_SEQ, PB_TSCALE,    /* inputs (uploaded per step) */
	PB_H, PB_X, PB_X2, PB_O, PB_FFN_OUT, PB_MOE_OUT,
	PB_Q, PB_ATT, PB_K, PB_V,
	PB_LAT,                               /* MLA: q_a output, then the latent queries */
	/* Gemma 4 per-layer embeddings: raw rows, f32 rows, projection, gate, slice, ids */
	PB_PLE_RAW, PB_PLE, PB_PLE2, PB_PLE_G, PB_PLE_X, PB_PLE_IDS,
	PB_RLOG, PB_SHG, PB_SEL, PB_RW, PB_ENTS, PB_YBUF,
	PB_LOGITS,
	PB_ROWS,                              /* the rows whose logits are kept */
	/* speculative gating: the next layers' routers on this layer's router input */
	PB_SPEC_LOG, PB_SPEC_SEL, PB_SPEC_W,
	PB_COUNT,
};

struct plan_tensor {
	uint64_t off;               /* in the arena; UINT64_MAX: not resident (an expert) */
	uint64_t bytes;             /* in device memory */
	bool vec;                   /* read as a vector: kept or converted to f32 */
	bool convert;               /* stored as f16/bf16, converted at load */
};

struct plan_layer {
	uint64_t kv_off;            /* K, then V at kv_off + kv_half */
	uint64_t kv_half;
	uint32_t n_cells;           /* per sequence */
	uint32_t kv_dim;
	int32_t cls;                /* expert size class, -1 on dense layers not streamed */
	int32_t pool;               /* slot pool (the class, or the layer's own), -1 if dense */
	bool latent;                /* K rows only: an MLA latent cache */
	/* a dense FFN streamed as cache entry (layer, 0): its gate, up and down extents */
	bool dense_stream;
	struct moe_expert dense;
};

struct plan_layout {
	struct moe_plan plan;
	const struct moe_backend_desc *desc;
	struct plan_tensor *t;      /* per model tensor */
	uint32_t n_tensors;
	struct plan_layer *layers;
	uint64_t buf_off[PB_COUNT];
	uint64_t buf_bytes[PB_COUNT];
	uint64_t scratch_off;
	uint64_t ws_off;
	uint64_t class_off[MOE_PLAN_MAX_CLASSES];
	/* slot pools: one per class, or one per routed layer (MOE_CTX_LAYER_POOLS) */
	uint32_t n_pools;
	uint32_t *pool_slots;
	uint32_t *pool_cls;
	uint32_t spec_depth;        /* layers ahead speculative gating routes (0: none) */
	uint64_t conv_max;          /* the largest stored vector that is converted */
	uint64_t stg_each;          /* pinned staging per expert in flight */
	uint64_t resident_chunk;    /* pinned staging for the resident reads */
	struct moe_be_shape shape;
	uint32_t max_used;          /* most experts per token of any layer (>= 1) */
	uint32_t f_nq, f_nkv;       /* widest q and k/v rows */
	uint32_t f_lat;             /* widest MLA q_a / latent query row */
	int32_t ple_tensor;         /* the per-layer embedding table, -1: none */
	uint64_t ple_stg_each;      /* pinned staging to read one row */
	uint32_t n_vocab;
	bool dense_ahead;           /* streamed dense FFNs have a slot to read the next one into */
};

int moe_plan_layout(const struct moe_model *m, const struct moe_ctx_params *p,
		    struct plan_layout *out);
void moe_plan_layout_free(struct plan_layout *l);

/* Bytes of a slot holding @ex: each matrix aligned to @align. */
uint64_t moe_expert_slot_bytes(const struct moe_expert *ex, uint32_t align);
/* Offset of matrix @m inside such a slot. */
uint64_t moe_expert_mat_offset(const struct moe_expert *ex, uint32_t m, uint32_t align);
/* Is tensor @name (without "blk.N.") a matrix the forward pass multiplies by? */
bool moe_plan_is_matrix(const char *name);
/*
 * The dense FFN of layer @il (a layer without routed experts) as the three
 * extents gate, up, down; false when the layer has none to stream.
 */
bool moe_plan_dense_ffn(const struct moe_model *m, uint32_t il, struct moe_expert *out);

#define MOE_DEFAULT_CTX 4096
/* per-layer embedding rows cached by token (Gemma 4 E2B: ~9 KiB each as q8_0) */
#define MOE_PLE_CACHE_ROWS 4096
#define MOE_DEFAULT_BATCH 64

#endif
