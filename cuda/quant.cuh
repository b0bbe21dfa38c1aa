/* SPDX-License-Identifier: MIT */
/*
 * Device-side decoding of every weight type the kernels support, the same
 * formulas as libmoe/quant/ref.c (FORMATS.md section 2).  A row of a
 * quantized type is read in units of 32 elements: one block of q4_0 .. q8_0
 * and mxfp4, one sub-block (a scale) of a 256-element K-quant super-block.
 * Float types are read one element at a time.  Blocks are packed (17, 18,
 * 34 ... bytes) and only the tensor is aligned, so multi-byte fields are
 * assembled from bytes.
 *
 * Everything here is a template on the type id (cuda/mm_args.h), so a
 * kernel picks the type once per block and the inner loops carry no switch.
 */
#ifndef MOE_CUDA_QUANT_CUH
#define MOE_CUDA_QUANT_CUH

#include "common.cuh"
#include "mm_args.h"

/* Full unrolling of a short loop: nvcc and clang spell it one way, g++ another. */
#if defined(__CUDACC__) || defined(__clang__)
#define MOE_UNROLL _Pragma("unroll")
#define MOE_UNROLL_N8 _Pragma("unroll 8")
#else
#define MOE_UNROLL _Pragma("GCC unroll 32")
#define MOE_UNROLL_N8 _Pragma("GCC unroll 8")
#endif

/* Elements per unit (32 for quantized types, 1 for floats) and bytes per block. */
template <int T> struct moe_q_type;
template <> struct moe_q_type<MOE_MM_F32> { enum { unit = 1, qk = 1, bytes = 4 }; };
template <> struct moe_q_type<MOE_MM_F16> { enum { unit = 1, qk = 1, bytes = 2 }; };
template <> struct moe_q_type<MOE_MM_BF16> { enum { unit = 1, qk = 1, bytes = 2 }; };
template <> struct moe_q_type<MOE_MM_Q4_0> { enum { unit = 32, qk = 32, bytes = 18 }; };
template <> struct moe_q_type<MOE_MM_Q4_1> { enum { unit = 32, qk = 32, bytes = 20 }; };
template <> struct moe_q_type<MOE_MM_Q5_0> { enum { unit = 32, qk = 32, bytes = 22 }; };
template <> struct moe_q_type<MOE_MM_Q5_1> { enum { unit = 32, qk = 32, bytes = 24 }; };
template <> struct moe_q_type<MOE_MM_Q8_0> { enum { unit = 32, qk = 32, bytes = 34 }; };
template <> struct moe_q_type<MOE_MM_MXFP4> { enum { unit = 32, qk = 32, bytes = 17 }; };
template <> struct moe_q_type<MOE_MM_Q4_K> { enum { unit = 32, qk = 256, bytes = 144 }; };
template <> struct moe_q_type<MOE_MM_Q5_K> { enum { unit = 32, qk = 256, bytes = 176 }; };
template <> struct moe_q_type<MOE_MM_Q6_K> { enum { unit = 32, qk = 256, bytes = 210 }; };

static __device__ __forceinline__ float moe_q_f16(const uint8_t *p)
{
	return __half2float(__ushort_as_half((unsigned short)(p[0] | p[1] << 8)));
}

static __device__ __forceinline__ float moe_q_bf16(const uint8_t *p)
{
	return __uint_as_float((unsigned)(p[0] | p[1] << 8) << 16);
}

static __device__ __forceinline__ uint32_t moe_q_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/*
 * Four bytes at @p as one load where @p is 4-byte aligned (the quants of
 * q4_K and q5_K: their blocks are multiples of 16 bytes in an aligned
 * tensor), else byte by byte.
 */
static __device__ __forceinline__ uint32_t moe_q_u32_fast(const uint8_t *p)
{
	if (!((uintptr_t)p & 3))
		return *reinterpret_cast<const uint32_t *>(p);
	return moe_q_u32(p);
}

/* MXFP4's E8M0 scale halved (the element codes below are doubled): 2^(e-128). */
static __device__ __forceinline__ float moe_q_e8m0_half(uint8_t e)
{
	return __uint_as_float(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

/* E2M1 code to its value doubled: 0 1 2 3 4 6 8 12, bit 3 the sign. */
static __device__ __forceinline__ int moe_q_e2m1x2(unsigned c)
{
	int m = (int)(c & 7), v = m < 2 ? m : (2 + (m & 1)) << ((m >> 1) - 1);

	return c & 8 ? -v : v;
}

/* Q4_K/Q5_K: the 6-bit scale and min of sub-block j (0..7) from the 12 scale bytes. */
static __device__ __forceinline__ void moe_q_k_scale_min(int j, const uint8_t *q, int *sc, int *m)
{
	if (j < 4) {
		*sc = q[j] & 63;
		*m = q[j + 4] & 63;
	} else {
		*sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
		*m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
	}
}

/* Element i of a row of a float type. */
template <int T> static __device__ __forceinline__ float moe_q_elem(const uint8_t *row, int64_t i)
{
	if constexpr (T == MOE_MM_F32)
		return reinterpret_cast<const float *>(row)[i];
	if constexpr (T == MOE_MM_F16)
		return moe_q_f16(row + 2 * i);
	return moe_q_bf16(row + 2 * i);
}

/* The 32 values of unit u of a row of a quantized type. */
template <int T> static __device__ __forceinline__ void moe_q_unit(const uint8_t *row, int64_t u,
								 float *v)
{
	if constexpr (T == MOE_MM_Q4_0 || T == MOE_MM_Q4_1 || T == MOE_MM_Q5_0 || T == MOE_MM_Q5_1) {
		constexpr bool has_min = T == MOE_MM_Q4_1 || T == MOE_MM_Q5_1;
		constexpr bool five = T == MOE_MM_Q5_0 || T == MOE_MM_Q5_1;
		const uint8_t *b = row + u * moe_q_type<T>::bytes;
		float d = moe_q_f16(b), m = has_min ? moe_q_f16(b + 2) : 0.0f;
		const uint8_t *q = b + (has_min ? 4 : 2);
		uint32_t qh = 0;

		if constexpr (five) {
			qh = moe_q_u32(q);
			q += 4;
		}
MOE_UNROLL
		for (int j = 0; j < 16; j++) {
			int lo = q[j] & 15, hi = q[j] >> 4;

			if constexpr (five) {
				lo |= (int)((qh >> j) & 1) << 4;
				hi |= (int)((qh >> (j + 16)) & 1) << 4;
			}
			if constexpr (has_min) {
				v[j] = (float)lo * d + m;
				v[j + 16] = (float)hi * d + m;
			} else {
				constexpr int off = five ? 16 : 8;

				v[j] = (float)(lo - off) * d;
				v[j + 16] = (float)(hi - off) * d;
			}
		}
	} else if constexpr (T == MOE_MM_Q8_0) {
		const uint8_t *b = row + u * 34;
		float d = moe_q_f16(b);
		const int8_t *q = reinterpret_cast<const int8_t *>(b + 2);

MOE_UNROLL
		for (int j = 0; j < 32; j++)
			v[j] = (float)q[j] * d;
	} else if constexpr (T == MOE_MM_MXFP4) {
		const uint8_t *b = row + u * 17;
		float s = moe_q_e8m0_half(b[0]);

MOE_UNROLL
		for (int j = 0; j < 16; j++) {
			v[j] = (float)moe_q_e2m1x2(b[1 + j] & 15) * s;
			v[j + 16] = (float)moe_q_e2m1x2(b[1 + j] >> 4) * s;
		}
	} else if constexpr (T == MOE_MM_Q4_K || T == MOE_MM_Q5_K) {
		constexpr bool five = T == MOE_MM_Q5_K;
		const uint8_t *b = row + (u >> 3) * moe_q_type<T>::bytes;
		int j = (int)(u & 7), shift = 4 * (j & 1), sc, mn;
		const uint8_t *qh = b + 16, *q = b + (five ? 48 : 16) + 32 * (j >> 1);

		moe_q_k_scale_min(j, b + 4, &sc, &mn);
		float d = moe_q_f16(b) * (float)sc, o = moe_q_f16(b + 2) * (float)mn;

MOE_UNROLL
		for (int l = 0; l < 32; l++) {
			int x = (q[l] >> shift) & 15;

			if constexpr (five)
				x |= ((qh[l] >> j) & 1) << 4;
			v[l] = d * (float)x - o;
		}
	} else if constexpr (T == MOE_MM_Q6_K) {
		const uint8_t *b = row + (u >> 3) * 210;
		int j = (int)(u & 7), h = j >> 2, k = j & 3;
		const uint8_t *ql = b + 64 * h + 32 * (k & 1), *qh = b + 128 + 32 * h;
		const int8_t *sc = reinterpret_cast<const int8_t *>(b + 192) + 8 * h + 2 * k;
		float d = moe_q_f16(b + 208), d0 = d * (float)sc[0], d1 = d * (float)sc[1];
		int lshift = 4 * (k >> 1), hshift = 2 * k;

MOE_UNROLL
		for (int l = 0; l < 32; l++) {
			int x = (((ql[l] >> lshift) & 15) | ((qh[l] >> hshift) & 3) << 4) - 32;

			v[l] = (l < 16 ? d0 : d1) * (float)x;
		}
	}
}

/* Whether the kernels support type @t, and then whether it is a float type. */
static __device__ __forceinline__ bool moe_q_is_float(uint32_t t)
{
	return t == MOE_MM_F32 || t == MOE_MM_F16 || t == MOE_MM_BF16;
}

/*
 * Calls f.template run<T>() for the type id @t (one of the twelve); the
 * kernels below instantiate their bodies once per type through it.
 */
template <typename F> static __device__ __forceinline__ void moe_q_dispatch(uint32_t t, F &f)
{
	switch (t) {
	case MOE_MM_F32: f.template run<MOE_MM_F32>(); break;
	case MOE_MM_F16: f.template run<MOE_MM_F16>(); break;
	case MOE_MM_BF16: f.template run<MOE_MM_BF16>(); break;
	case MOE_MM_Q4_0: f.template run<MOE_MM_Q4_0>(); break;
	case MOE_MM_Q4_1: f.template run<MOE_MM_Q4_1>(); break;
	case MOE_MM_Q5_0: f.template run<MOE_MM_Q5_0>(); break;
	case MOE_MM_Q5_1: f.template run<MOE_MM_Q5_1>(); break;
	case MOE_MM_Q8_0: f.template run<MOE_MM_Q8_0>(); break;
	case MOE_MM_Q4_K: f.template run<MOE_MM_Q4_K>(); break;
	case MOE_MM_Q5_K: f.template run<MOE_MM_Q5_K>(); break;
	case MOE_MM_Q6_K: f.template run<MOE_MM_Q6_K>(); break;
	case MOE_MM_MXFP4: f.template run<MOE_MM_MXFP4>(); break;
	default: break;
	}
}

#endif
