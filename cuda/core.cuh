/* SPDX-License-Identifier: MIT */
/*
 * Device helpers of the non-matrix kernels (elementwise.cu, norm.cu,
 * attention.cu, route.cu).  nvcc compiles every .cu file of cuda/ as one
 * translation unit, so the helpers carry the kc_ prefix.
 */
#ifndef MOE_CUDA_CORE_CUH
#define MOE_CUDA_CORE_CUH

#include "common.cuh"

#define KC_FULL_MASK 0xffffffffu

/* Every thread of the grid over @n elements, one at a time (the grid may be smaller). */
#define KC_FOR_EACH(i, n)                                                              \
	for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
	     i += (long long)gridDim.x * blockDim.x)

/* The maximum of @v over the block (blockDim.x a multiple of 32, at most 1024); @red: 32 floats. */
static inline __device__ float kc_block_max(float v, float *red)
{
	unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warp = blockDim.x / 32;
	float r;

	for (int off = 16; off > 0; off /= 2)
		v = fmaxf(v, __shfl_xor_sync(KC_FULL_MASK, v, off));
	if (!lane)
		red[warp] = v;
	__syncthreads();
	r = red[0];
	for (unsigned w = 1; w < n_warp; w++)
		r = fmaxf(r, red[w]);
	/* red is free again once every thread has read it */
	__syncthreads();
	return r;
}

/* Element @i of a KV cache row of F32 (0), F16 (1) or Q8_0 (8: a scale and 32 codes a block). */
static inline __device__ float kc_kv_elem(const unsigned char *row, unsigned type, unsigned i)
{
	if (type == 0)
		return reinterpret_cast<const float *>(row)[i];
	if (type == 1)
		return __half2float(
			__ushort_as_half(reinterpret_cast<const unsigned short *>(row)[i]));
	{
		const unsigned char *b = row + (size_t)(i / 32) * 34;
		unsigned short h = *reinterpret_cast<const unsigned short *>(b);
		float d = __half2float(__ushort_as_half(h));

		return d * (float)(signed char)b[2 + i % 32];
	}
}

#endif
