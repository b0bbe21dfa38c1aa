/* SPDX-License-Identifier: MIT */
/*
 * The CUDA backend's internal interface between its host side (cuda.c) and
 * its matrix ops (cuda_mm.c).
 */
#ifndef MOE_BACKEND_CUDA_INT_H
#define MOE_BACKEND_CUDA_INT_H

#include "backend/backend.h"
#include "backend/cuda_api.h"

struct moe_cuda {
	struct moe_cuda_api api;        /* driver entry points (libcuda, or the fake in tests) */
	CUdevice dev;
	CUcontext ctx;                  /* primary context, made current by every entry point */
	CUstream stream[MOE_BE_QUEUES]; /* MOE_BE_COMPUTE, MOE_BE_COPY */
	CUmodule mod;                   /* the embedded fatbin */
	int cc_major, cc_minor, sm_count;
	moe_dptr ws;                    /* the workspace set by set_workspace */
	uint64_t ws_bytes;
	moe_dptr ws_mm;                 /* the part of it that cuda_mm.c may use ... */
	uint64_t ws_mm_bytes;           /* ... sized by moe_cuda_mm_workspace_bytes() */
};

/* The backend's state behind a struct moe_backend of kind "cuda". */
static inline struct moe_cuda *moe_cuda_of(struct moe_backend *be)
{
	return be->priv;
}

/*
 * Launch kernel @name (an extern "C" __global__ of cuda/ *.cu) on the compute
 * stream.  0, or -errno with moe_err() naming the kernel, the call and the
 * driver's error string.
 */
int moe_cuda_launch(struct moe_cuda *c, const char *name, unsigned gx, unsigned gy, unsigned gz,
		    unsigned bx, unsigned by, unsigned bz, unsigned shared_bytes, void **params);

/* ---- cuda_mm.c (same contracts as backend.h) */
uint64_t moe_cuda_mm_workspace_bytes(const struct moe_be_shape *s);
int moe_cuda_get_rows(struct moe_backend *be, const struct moe_be_mat *w, moe_dptr ids,
		      uint32_t n, moe_dptr dst);
int moe_cuda_matmul(struct moe_backend *be, const struct moe_be_mat *w, uint32_t n_w,
		    moe_dptr x, uint32_t n_tok, const moe_dptr *y);
int moe_cuda_matmul_heads(struct moe_backend *be, const struct moe_heads_args *a);
int moe_cuda_ffn(struct moe_backend *be, const struct moe_ffn_args *a);

#endif
