/* SPDX-License-Identifier: MIT */
/*
 * The input and output rows of a product (struct moe_mm_prob): gathered,
 * scaled inputs and scattered outputs with bias and scale, shared by the
 * product kernels of cuda/mm.cu and cuda/mm_q8.cu.
 */
#ifndef MOE_CUDA_MM_IO_CUH
#define MOE_CUDA_MM_IO_CUH

#include "common.cuh"
#include "mm_args.h"

/* The f32 input row of token t of product p, and its scale. */
static __device__ __forceinline__ const float *mmio_xrow(const moe_mm_prob &p, uint32_t t,
							 float *scale)
{
	const int32_t *idx = reinterpret_cast<const int32_t *>(p.x_idx);
	const float *xs = reinterpret_cast<const float *>(p.x_scale);
	uint32_t src = idx ? (uint32_t)idx[t] / p.x_div : t;

	*scale = xs ? xs[idx ? idx[t] : (int32_t)t] : 1.0f;
	return reinterpret_cast<const float *>(p.x) + (uint64_t)src * p.x_stride;
}

/* Output r of token t of product p, with its bias and output scale. */
static __device__ __forceinline__ void mmio_store(const moe_mm_prob &p, uint32_t t, uint32_t r,
						  float v)
{
	const int32_t *idx = reinterpret_cast<const int32_t *>(p.y_idx);
	const float *b = reinterpret_cast<const float *>(p.bias);
	const float *s = reinterpret_cast<const float *>(p.oscale);
	uint32_t row = idx ? (uint32_t)idx[t] : t;

	if (b)
		v += b[r];
	if (s)
		v *= s[0];
	reinterpret_cast<float *>(p.y)[(uint64_t)row * p.y_stride + r] = v;
}

#endif
