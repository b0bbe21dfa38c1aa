/* SPDX-License-Identifier: MIT */
/*
 * The decode path over 8-bit activations: each product's input rows are
 * rounded to q8_1 blocks (32 values, a scale, and the scaled sum), and the
 * matvec multiplies them with the weights' integer codes four at a time
 * with __dp4a, as GPUs do fastest.  A unit of 32 weights is
 * w_l = A * q_l + B (A per 16 values for q6_K), so
 *   dot = d_x * (A0 * sum_{l<16} q_l qx_l + A1 * sum_{l>=16} q_l qx_l) + B * s_x
 * with s_x = d_x * sum qx_l: one formula for every quantized type.
 * Rounding x costs at most half a step (amax / 254) per value, the bound
 * the op conformance suite allows for the CPU backend's q8_0/q8_K.
 */
#include "common.cuh"
#include "mm_args.h"
#include "mm_io.cuh"
#include "quant.cuh"

#define MOE_MM_Q8_WARPS 4

/* One q8_1 block of activations: 40 bytes, 4-byte aligned. */
struct mmq8_block {
	float d, s;             /* scale, and d * sum of the codes */
	int qs[8];              /* 32 int8 codes, four per int, element 4k + b in byte b of qs[k] */
};

static __device__ __forceinline__ int mmq8_pack(int a, int b, int c, int d)
{
	return (int)((unsigned)(a & 0xff) | (unsigned)(b & 0xff) << 8 | (unsigned)(c & 0xff) << 16 |
		     (unsigned)(d & 0xff) << 24);
}

/* Bits j0..j0+3 of @bits as bit 4 of four bytes. */
static __device__ __forceinline__ int mmq8_bit4(uint32_t bits, int j0)
{
	return (int)(((bits >> j0) & 1) << 4 | ((bits >> (j0 + 1)) & 1) << 12 |
		     ((bits >> (j0 + 2)) & 1) << 20 | ((bits >> (j0 + 3)) & 1) << 28);
}

/* Unit u of a row as integer codes and the affine map back to weights. */
template <int T> static __device__ __forceinline__ void mmq8_unit(const uint8_t *row, int64_t u,
								 int *qi, float *A0, float *A1,
								 float *B)
{
	if constexpr (T == MOE_MM_Q4_0 || T == MOE_MM_Q4_1 || T == MOE_MM_Q5_0 ||
		      T == MOE_MM_Q5_1) {
		constexpr bool has_min = T == MOE_MM_Q4_1 || T == MOE_MM_Q5_1;
		constexpr bool five = T == MOE_MM_Q5_0 || T == MOE_MM_Q5_1;
		const uint8_t *b = row + u * moe_q_type<T>::bytes;
		const uint8_t *q = b + (has_min ? 4 : 2) + (five ? 4 : 0);
		float d = moe_q_f16(b);
		uint32_t qh = five ? moe_q_u32(b + (has_min ? 4 : 2)) : 0;

MOE_UNROLL
		for (int k = 0; k < 4; k++) {
			uint32_t v = moe_q_u32(q + 4 * k);

			qi[k] = (int)(v & 0x0f0f0f0fu);
			qi[4 + k] = (int)((v >> 4) & 0x0f0f0f0fu);
			if constexpr (five) {
				qi[k] |= mmq8_bit4(qh, 4 * k);
				qi[4 + k] |= mmq8_bit4(qh, 16 + 4 * k);
			}
		}
		*A0 = *A1 = d;
		if constexpr (has_min)
			*B = moe_q_f16(b + 2);
		else
			*B = -(five ? 16.0f : 8.0f) * d;
	} else if constexpr (T == MOE_MM_Q8_0) {
		const uint8_t *b = row + u * 34;

MOE_UNROLL
		for (int k = 0; k < 8; k++)
			qi[k] = (int)moe_q_u32(b + 2 + 4 * k);
		*A0 = *A1 = moe_q_f16(b);
		*B = 0.0f;
	} else if constexpr (T == MOE_MM_MXFP4) {
		const uint8_t *b = row + u * 17 + 1;

MOE_UNROLL
		for (int k = 0; k < 4; k++) {
			qi[k] = mmq8_pack(moe_q_e2m1x2(b[4 * k] & 15), moe_q_e2m1x2(b[4 * k + 1] & 15),
					  moe_q_e2m1x2(b[4 * k + 2] & 15),
					  moe_q_e2m1x2(b[4 * k + 3] & 15));
			qi[4 + k] = mmq8_pack(moe_q_e2m1x2(b[4 * k] >> 4), moe_q_e2m1x2(b[4 * k + 1] >> 4),
					      moe_q_e2m1x2(b[4 * k + 2] >> 4),
					      moe_q_e2m1x2(b[4 * k + 3] >> 4));
		}
		*A0 = *A1 = moe_q_e8m0_half(b[-1]);
		*B = 0.0f;
	} else if constexpr (T == MOE_MM_Q4_K || T == MOE_MM_Q5_K) {
		constexpr bool five = T == MOE_MM_Q5_K;
		const uint8_t *b = row + (u >> 3) * moe_q_type<T>::bytes;
		int j = (int)(u & 7), shift = 4 * (j & 1), sc, mn;
		const uint8_t *qh = b + 16, *q = b + (five ? 48 : 16) + 32 * (j >> 1);

		moe_q_k_scale_min(j, b + 4, &sc, &mn);
MOE_UNROLL
		for (int k = 0; k < 8; k++) {
			qi[k] = (int)((moe_q_u32_fast(q + 4 * k) >> shift) & 0x0f0f0f0fu);
			if constexpr (five)
				qi[k] |= (int)((((uint32_t)qh[4 * k] >> j) & 1) << 4 |
					       (((uint32_t)qh[4 * k + 1] >> j) & 1) << 12 |
					       (((uint32_t)qh[4 * k + 2] >> j) & 1) << 20 |
					       (((uint32_t)qh[4 * k + 3] >> j) & 1) << 28);
		}
		*A0 = *A1 = moe_q_f16(b) * (float)sc;
		*B = -(moe_q_f16(b + 2) * (float)mn);
	} else if constexpr (T == MOE_MM_Q6_K) {
		const uint8_t *b = row + (u >> 3) * 210;
		int j = (int)(u & 7), h = j >> 2, k = j & 3;
		const uint8_t *ql = b + 64 * h + 32 * (k & 1), *qh = b + 128 + 32 * h;
		const int8_t *sc = reinterpret_cast<const int8_t *>(b + 192) + 8 * h + 2 * k;
		int lshift = 4 * (k >> 1), hshift = 2 * k;
		float d = moe_q_f16(b + 208);

MOE_UNROLL
		for (int i = 0; i < 8; i++) {
			int x[4];

MOE_UNROLL
			for (int e = 0; e < 4; e++) {
				int l = 4 * i + e;

				x[e] = (((ql[l] >> lshift) & 15) | ((qh[l] >> hshift) & 3) << 4) - 32;
			}
			qi[i] = mmq8_pack(x[0], x[1], x[2], x[3]);
		}
		*A0 = d * (float)sc[0];
		*A1 = d * (float)sc[1];
		*B = 0.0f;
	}
}

/* Block index of the q8_1 row of token t of product z. */
static __device__ __forceinline__ uint64_t mmq8_row(uint32_t z, uint32_t t, uint32_t max_tok,
						    uint32_t max_units)
{
	return ((uint64_t)z * max_tok + t) * max_units;
}

/*
 * Round the input rows of every product to q8_1: a warp per 32 values.
 * grid (ceil(max units / 4), max tokens, products), block 128.
 */
extern "C" __global__ void __launch_bounds__(32 * MOE_MM_Q8_WARPS)
moe_mm_quant_q8_1(const moe_mm_prob *probs, uint8_t *qa, uint32_t max_tok, uint32_t max_units)
{
	const moe_mm_prob p = probs[blockIdx.z];
	uint32_t u = blockIdx.x * MOE_MM_Q8_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
	uint32_t t = blockIdx.y;
	float s, x, amax, d;
	int q, sum;

	if (t >= p.n_tok || u >= p.cols / 32)
		return;
	x = mmio_xrow(p, t, &s)[u * 32 + lane] * s;
	amax = fabsf(x);
MOE_UNROLL
	for (int o = 16; o > 0; o >>= 1)
		amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
	d = amax / 127.0f;
	q = amax > 0.0f ? (int)rintf(x / d) : 0;
	sum = q;
MOE_UNROLL
	for (int o = 16; o > 0; o >>= 1)
		sum += __shfl_xor_sync(0xffffffffu, sum, o);
	/* lane 4k packs lanes 4k..4k+3 */
	int b1 = __shfl_down_sync(0xffffffffu, q, 1), b2 = __shfl_down_sync(0xffffffffu, q, 2);
	int b3 = __shfl_down_sync(0xffffffffu, q, 3);
	mmq8_block *blk = reinterpret_cast<mmq8_block *>(qa) +
			  mmq8_row(blockIdx.z, t, max_tok, max_units) + u;

	if (lane % 4 == 0)
		blk->qs[lane / 4] = mmq8_pack(q, b1, b2, b3);
	if (lane == 0) {
		blk->d = d;
		blk->s = d * (float)sum;
	}
}
MOE_KERNEL(moe_mm_quant_q8_1);

struct mmq8_matvec_body {
	const moe_mm_prob &p;
	const uint8_t *qa;
	uint32_t z, r, lane, max_tok, max_units;

	template <int T> __device__ void run()
	{
		if constexpr (moe_q_type<T>::unit == 32) {
			const uint8_t *row = reinterpret_cast<const uint8_t *>(p.w) + r * p.row_bytes;
			const int64_t n_units = p.cols / 32;
			const mmq8_block *xb[4];
			float acc[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
			uint32_t nt = p.n_tok;

MOE_UNROLL
			for (uint32_t t = 0; t < 4; t++)
				xb[t] = reinterpret_cast<const mmq8_block *>(qa) +
					mmq8_row(z, min(t, nt - 1), max_tok, max_units);
			for (int64_t u = lane; u < n_units; u += 32) {
				int qi[8];
				float A0, A1, B;

				mmq8_unit<T>(row, u, qi, &A0, &A1, &B);
MOE_UNROLL
				for (int t = 0; t < 4; t++) {
					const mmq8_block &a = xb[t][u];
					int s0 = 0, s1 = 0;

MOE_UNROLL
					for (int k = 0; k < 4; k++) {
						s0 = __dp4a(qi[k], a.qs[k], s0);
						s1 = __dp4a(qi[4 + k], a.qs[4 + k], s1);
					}
					acc[t] += a.d * (A0 * (float)s0 + A1 * (float)s1) + B * a.s;
				}
			}
MOE_UNROLL
			for (int t = 0; t < 4; t++) {
MOE_UNROLL
				for (int o = 16; o > 0; o >>= 1)
					acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
			}
			if (lane == 0)
				for (uint32_t t = 0; t < nt; t++)
					mmio_store(p, t, r, acc[t]);
		}
	}
};

/*
 * Decode over q8_1 activations (at most 4 tokens per product, quantized
 * types only): a warp per row as moe_mm_matvec.
 * grid (ceil(rows / 4), 1, products), block 128.
 */
extern "C" __global__ void __launch_bounds__(32 * MOE_MM_Q8_WARPS)
moe_mm_matvec_q8(const moe_mm_prob *probs, const uint8_t *qa, uint32_t max_tok,
		 uint32_t max_units)
{
	const moe_mm_prob p = probs[blockIdx.z];
	uint32_t r = blockIdx.x * MOE_MM_Q8_WARPS + threadIdx.x / 32;
	mmq8_matvec_body body = { p, qa, blockIdx.z, r, threadIdx.x % 32, max_tok, max_units };

	if (r >= p.rows || !p.n_tok || p.n_tok > 4)
		return;
	moe_q_dispatch(p.type, body);
}
MOE_KERNEL(moe_mm_matvec_q8);
