/* SPDX-License-Identifier: MIT */
/*
 * The upload benchmark of the CUDA backend (moe-bench gpu-h2d): host to
 * device GB/s of the expert pipeline's protocol against back-to-back copies
 * from one pinned buffer measured in the same run.  The pipeline part runs
 * the backend's own operations the way the expert cache does (libmoe/cache):
 * per expert a staging buffer that is reused once its copy event has
 * completed, its matrices uploaded on the copy queue into a slot, an event
 * per slot, the compute queue waiting on that event, and a refill of a slot
 * waiting for the compute work that last read it.  No file is read: this
 * is the copy side alone, which the disk's side must not be held back by.
 */
#ifndef MOE_CUDA_H2D_BENCH_H
#define MOE_CUDA_H2D_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "backend/cuda_api.h"

struct moe_cuda_h2d_bench_cfg {
	uint64_t expert_bytes;      /* one expert: three matrices of a third each */
	uint32_t n_experts;         /* uploaded per round */
	uint32_t n_slots;           /* device slots they rotate through */
	uint32_t n_staging;         /* pinned staging buffers */
	uint32_t rounds;            /* each round times both; the best of each is kept */
};

struct moe_cuda_h2d_bench_res {
	uint64_t bytes;             /* uploaded per round */
	double pipeline_gbps;
	double plain_gbps;          /* cuMemcpyHtoDAsync back to back from one pinned buffer */
	double ratio;               /* pipeline / plain */
	int data_ok;                /* the last slot holds its staging buffer's bytes */
};

/*
 * Run it on device 0 of @api (not unloaded here); the device's name in
 * @dev_name.  0, or -errno with moe_err() naming what failed.
 */
int moe_cuda_h2d_bench(const struct moe_cuda_api *api, const struct moe_cuda_h2d_bench_cfg *cfg,
		       struct moe_cuda_h2d_bench_res *res, char *dev_name, size_t dev_name_len);

#endif
