/* SPDX-License-Identifier: MIT */
/*
 * The CUDA backend's internal interface: the state behind a struct
 * moe_backend of kind "cuda", shared by the host side (cuda.c) and the
 * matrix operations (cuda_mm.c).  Not part of libmoe's API.
 */
#ifndef MOE_BACKEND_CUDA_INT_H
#define MOE_BACKEND_CUDA_INT_H

#include "backend/backend.h"
#include "backend/cuda_api.h"

struct moe_cuda_fn;
struct moe_cuda_alloc;
struct moe_cuda_gds;

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

	/* ---- host side (cuda.c) */
	struct moe_cuda_fn *fns;        /* kernel handles looked up so far */
	struct moe_cuda_alloc *allocs;  /* live device allocations (hash by address) */
	uint32_t n_allocs, cap_allocs;
	uint64_t budget, used, peak;
	bool retained;                  /* the primary context is ours to release */
	bool lost;                      /* a sticky error: the context is gone ... */
	CUresult lost_err;              /* ... with this error */
	moe_dptr ws_core;               /* cuda.c's part of the workspace */
	uint64_t ws_core_bytes;
	struct moe_cuda_gds *gds;       /* GPUDirect Storage, once direct_open succeeded */
};

/* The backend's state behind a struct moe_backend of kind "cuda". */
static inline struct moe_cuda *moe_cuda_of(struct moe_backend *be)
{
	return be->priv;
}

/*
 * Launch kernel @name (an extern "C" __global__ of cuda/ *.cu) on the compute stream.
 * The function handle is looked up once and cached.  0, or -errno with moe_err() naming
 * the kernel, the call and the driver's error string.
 */
int moe_cuda_launch(struct moe_cuda *c, const char *name, unsigned gx, unsigned gy, unsigned gz,
		    unsigned bx, unsigned by, unsigned bz, unsigned shared_bytes, void **params);

/*
 * The context current on this thread, or the sticky error that lost it
 * earlier (every entry point starts here).
 */
int moe_cuda_enter(struct moe_cuda *c);

/*
 * -errno with moe_err() for a failed driver call @call (its name), with the
 * driver's error string; notes a sticky error so later calls fail at once.
 * 0 for CUDA_SUCCESS.
 */
int moe_cuda_check(struct moe_cuda *c, CUresult r, const char *call);

/*
 * The CUDA backend over the driver table @api (copied; the tests pass the
 * fake driver's).  moe_backend_cuda_desc's create loads libcuda and calls this.
 */
int moe_backend_cuda_create_api(const struct moe_cuda_api *api,
				const struct moe_backend_params *p, struct moe_backend **out);

/* ---- implemented in libmoe/backend/cuda_mm.c (same contracts as backend.h) */
uint64_t moe_cuda_mm_workspace_bytes(const struct moe_be_shape *s);
int moe_cuda_get_rows(struct moe_backend *be, const struct moe_be_mat *w, moe_dptr ids,
		      uint32_t n, moe_dptr dst);
int moe_cuda_matmul(struct moe_backend *be, const struct moe_be_mat *w, uint32_t n_w,
		    moe_dptr x, uint32_t n_tok, const moe_dptr *y);
int moe_cuda_matmul_heads(struct moe_backend *be, const struct moe_heads_args *a);
int moe_cuda_ffn(struct moe_backend *be, const struct moe_ffn_args *a);

/* ---- implemented in libmoe/backend/cuda_gds.c: the direct_* ops (GPUDirect Storage) */
int moe_cuda_direct_open(struct moe_backend *be, int fd, moe_dptr p, uint64_t bytes);
int moe_cuda_direct_read(struct moe_backend *be, moe_dptr dst, uint64_t off, uint64_t bytes);
void moe_cuda_direct_close(struct moe_backend *be);

#endif
