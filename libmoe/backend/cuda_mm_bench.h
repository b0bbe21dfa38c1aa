/* SPDX-License-Identifier: MIT */
/*
 * The quantized matvec benchmark of the CUDA kernels (moe-bench gpu-matvec):
 * GB/s of weights the decode kernel reads, against device-to-device copy
 * bandwidth measured in the same run on the same device.  It drives the
 * Driver API table itself (a context, the embedded fatbin, one stream), so
 * it runs on a real driver and on the tests' fake one alike.
 */
#ifndef MOE_CUDA_MM_BENCH_H
#define MOE_CUDA_MM_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "backend/cuda_api.h"

struct moe_cuda_mm_bench_cfg {
	uint32_t rows, cols;       /* the matrix of every type (cols a multiple of 256) */
	uint32_t reps;             /* timed launches and copies */
};

struct moe_cuda_mm_bench_res {
	uint32_t type;
	uint64_t bytes;            /* weight bytes one matvec reads */
	double ms;                 /* per decode matvec: q8_1 rounding of x and the __dp4a kernel */
	double matvec_gbps;        /* bytes / ms */
	double f32_ms, f32_gbps;   /* the f32-activation matvec */
	double copy_gbps;          /* cuMemcpyDtoD of bytes: (read + written) / time */
	double rel_err;            /* |y - CPU backend's y| / |y|: the kernel computed the product */
};

/*
 * Run the benchmark for @n types on device 0 of @api; results in res[i],
 * the device's name in @dev_name.  0, or -errno with moe_err() naming the
 * call that failed and the driver's error string.
 */
int moe_cuda_mm_bench(const struct moe_cuda_api *api, const struct moe_cuda_mm_bench_cfg *cfg,
		      const uint32_t *types, uint32_t n, struct moe_cuda_mm_bench_res *res,
		      char *dev_name, size_t dev_name_len);

#endif
