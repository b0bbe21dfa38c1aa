/* SPDX-License-Identifier: MIT */
/*
 * The matrix ops of the CUDA backend: products of weight matrices of every
 * supported type with f32 activations (matmul, matmul_heads and the FFN's
 * three products), get_rows, and the FFN's GLU.  A product is described by a
 * struct moe_mm_prob (cuda/mm_args.h) in device memory; blockIdx.z picks the
 * product, so one launch covers the n_w matrices of a matmul, the heads of
 * a matmul_heads or every expert of a layer.
 *
 * Two shapes of kernel:
 * - moe_mm_matvec, for decode (at most MOE_MM_MV_TOK tokens): a warp per
 *   output row, lanes striding over the row's 32-element units, partial sums
 *   reduced with shuffles.  Every weight byte is read once per launch.
 * - moe_mm_tiled, for prefill: a block computes 32 rows x 32 tokens,
 *   dequantizing a 32 x 128 tile of W and loading a 32 x 128 tile of x into
 *   shared memory per step, so each weight is decoded once per 32 tokens.
 * Activations stay f32 (weights are decoded to f32 and multiplied in f32),
 * which is more accurate than the CPU backend's q8_0/q8_K activations.
 */
#include "common.cuh"
#include "mm_args.h"
#include "mm_io.cuh"
#include "quant.cuh"

#define MOE_MM_MV_TOK 4         /* tokens per pass of the matvec kernel */
#define MOE_MM_MV_WARPS 4       /* rows (warps) per matvec block */
#define MOE_MM_TILE 32          /* rows and tokens of a tiled block */
#define MOE_MM_KC 128           /* columns per step of the tiled kernel */
#define MOE_MM_TILED_THREADS 256

/* ------------------------------------------------------------ matvec */

struct mm_matvec_body {
	const moe_mm_prob &p;
	uint32_t r, lane;

	template <int T> __device__ void run()
	{
		const uint8_t *row = reinterpret_cast<const uint8_t *>(p.w) + r * p.row_bytes;
		const int64_t n_units = p.cols / moe_q_type<T>::unit;

		for (uint32_t t0 = 0; t0 < p.n_tok; t0 += MOE_MM_MV_TOK) {
			uint32_t nt = min(p.n_tok - t0, (uint32_t)MOE_MM_MV_TOK);
			const float *x[MOE_MM_MV_TOK];
			float sc[MOE_MM_MV_TOK], acc[MOE_MM_MV_TOK];

MOE_UNROLL
			for (int t = 0; t < MOE_MM_MV_TOK; t++) {
				x[t] = mmio_xrow(p, t0 + min((uint32_t)t, nt - 1), &sc[t]);
				acc[t] = 0.0f;
			}
			for (int64_t u = lane; u < n_units; u += 32) {
				if constexpr (moe_q_type<T>::unit == 1) {
					float w = moe_q_elem<T>(row, u);

MOE_UNROLL
					for (int t = 0; t < MOE_MM_MV_TOK; t++)
						acc[t] += w * x[t][u];
				} else {
					float v[32];

					moe_q_unit<T>(row, u, v);
MOE_UNROLL
					for (int t = 0; t < MOE_MM_MV_TOK; t++) {
						const float *xu = x[t] + u * 32;
						float s = 0.0f;

MOE_UNROLL
						for (int l = 0; l < 32; l++)
							s += v[l] * xu[l];
						acc[t] += s;
					}
				}
			}
MOE_UNROLL
			for (int t = 0; t < MOE_MM_MV_TOK; t++) {
MOE_UNROLL
				for (int o = 16; o > 0; o >>= 1)
					acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
			}
			if (lane == 0)
				for (uint32_t t = 0; t < nt; t++)
					mmio_store(p, t0 + t, r, acc[t] * sc[t]);
		}
	}
};

/* grid (ceil(rows / MOE_MM_MV_WARPS), 1, products), block 32 * MOE_MM_MV_WARPS */
extern "C" __global__ void __launch_bounds__(32 * MOE_MM_MV_WARPS)
moe_mm_matvec(const moe_mm_prob *probs)
{
	const moe_mm_prob p = probs[blockIdx.z];
	uint32_t r = blockIdx.x * MOE_MM_MV_WARPS + threadIdx.x / 32;
	mm_matvec_body body = { p, r, threadIdx.x % 32 };

	/* a whole warp leaves together: the shuffles see full warps only */
	if (r >= p.rows || !p.n_tok)
		return;
	moe_q_dispatch(p.type, body);
}
MOE_KERNEL(moe_mm_matvec);

/* ------------------------------------------------------------ tiled */

typedef float mm_tile_row[MOE_MM_KC + 1];   /* +1: rows fall in different banks */

struct mm_tiled_body {
	const moe_mm_prob &p;
	uint32_t r0, t0;
	mm_tile_row *ws, *xs;

	template <int T> __device__ void run()
	{
		const uint32_t tid = threadIdx.x, rr = tid % MOE_MM_TILE, tg = tid / MOE_MM_TILE;
		const int64_t n_units = p.cols / moe_q_type<T>::unit;
		const uint8_t *w = reinterpret_cast<const uint8_t *>(p.w);
		float acc[4] = { 0.0f, 0.0f, 0.0f, 0.0f };

		for (int64_t c0 = 0; c0 < p.cols; c0 += MOE_MM_KC) {
			/* W tile: rows r0.., columns c0.., zero past the edges */
			if constexpr (moe_q_type<T>::unit == 1) {
				for (uint32_t i = tid; i < MOE_MM_TILE * MOE_MM_KC;
				     i += MOE_MM_TILED_THREADS) {
					uint32_t wr = i / MOE_MM_KC, wc = i % MOE_MM_KC;
					bool in = r0 + wr < p.rows && c0 + wc < p.cols;

					ws[wr][wc] = in ? moe_q_elem<T>(w + (r0 + wr) * p.row_bytes,
									c0 + wc) : 0.0f;
				}
			} else if (tid < MOE_MM_TILE * (MOE_MM_KC / 32)) {
				uint32_t wr = tid / (MOE_MM_KC / 32), wu = tid % (MOE_MM_KC / 32);
				int64_t u = c0 / 32 + wu;
				float v[32];

				if (r0 + wr < p.rows && u < n_units) {
					moe_q_unit<T>(w + (r0 + wr) * p.row_bytes, u, v);
				} else {
MOE_UNROLL
					for (int l = 0; l < 32; l++)
						v[l] = 0.0f;
				}
MOE_UNROLL
				for (int l = 0; l < 32; l++)
					ws[wr][wu * 32 + l] = v[l];
			}
			/* x tile: tokens t0.., the same columns */
			for (uint32_t i = tid; i < MOE_MM_TILE * MOE_MM_KC; i += MOE_MM_TILED_THREADS) {
				uint32_t xt = i / MOE_MM_KC, xc = i % MOE_MM_KC;
				float v = 0.0f;

				if (t0 + xt < p.n_tok && c0 + xc < p.cols) {
					float s;
					const float *x = mmio_xrow(p, t0 + xt, &s);

					v = x[c0 + xc] * s;
				}
				xs[xt][xc] = v;
			}
			__syncthreads();
MOE_UNROLL
			for (int k = 0; k < 4; k++) {
				const float *xr = xs[tg + 8 * k], *wr = ws[rr];
				float s = 0.0f;

MOE_UNROLL_N8
				for (int c = 0; c < MOE_MM_KC; c++)
					s += wr[c] * xr[c];
				acc[k] += s;
			}
			__syncthreads();
		}
		if (r0 + rr < p.rows)
MOE_UNROLL
			for (int k = 0; k < 4; k++)
				if (t0 + tg + 8 * k < p.n_tok)
					mmio_store(p, t0 + tg + 8 * k, r0 + rr, acc[k]);
	}
};

/* grid (ceil(rows / 32), ceil(n_tok / 32), products), block 256 */
extern "C" __global__ void __launch_bounds__(MOE_MM_TILED_THREADS)
moe_mm_tiled(const moe_mm_prob *probs)
{
	MOE_SHARED(mm_tile_row, ws, MOE_MM_TILE);
	MOE_SHARED(mm_tile_row, xs, MOE_MM_TILE);
	const moe_mm_prob p = probs[blockIdx.z];
	mm_tiled_body body = { p, blockIdx.x * MOE_MM_TILE, blockIdx.y * MOE_MM_TILE, ws, xs };

	/* the whole block leaves together: no thread waits at a barrier alone */
	if (body.r0 >= p.rows || body.t0 >= p.n_tok)
		return;
	moe_q_dispatch(p.type, body);
}
MOE_KERNEL(moe_mm_tiled);

/* ------------------------------------------------------------ get_rows */

struct mm_get_rows_body {
	const uint8_t *row;
	float *dst;
	int64_t cols, i;

	template <int T> __device__ void run()
	{
		if constexpr (moe_q_type<T>::unit == 1) {
			dst[i] = moe_q_elem<T>(row, i);
		} else {
			float v[32];

			moe_q_unit<T>(row, i, v);
MOE_UNROLL
			for (int l = 0; l < 32; l++)
				dst[i * 32 + l] = v[l];
		}
	}
};

/*
 * dst[k] = row ids[k] of w as f32; grid (ceil(units / 128), n), block 128,
 * one unit (32 elements, or 1 of a float type) per thread.  A row id outside
 * the matrix gives a row of NaN: the device cannot report it, and NaN
 * cannot pass for data.
 */
extern "C" __global__ void __launch_bounds__(128)
moe_mm_get_rows(uint64_t w, uint32_t type, uint32_t rows, uint32_t cols, uint64_t row_bytes,
		const int32_t *ids, float *dst)
{
	int32_t id = ids[blockIdx.y];
	float *d = dst + (uint64_t)blockIdx.y * cols;
	uint32_t unit = moe_q_is_float(type) ? 1 : 32;
	int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
	mm_get_rows_body body = { reinterpret_cast<const uint8_t *>(w) + (uint64_t)id * row_bytes,
				  d, cols, i };

	if (i >= cols / unit)
		return;
	if (id < 0 || (uint32_t)id >= rows) {
		for (uint32_t l = 0; l < unit; l++)
			d[i * unit + l] = __int_as_float(0x7fc00000);
		return;
	}
	moe_q_dispatch(type, body);
}
MOE_KERNEL(moe_mm_get_rows);

/* ------------------------------------------------------------ GLU */

/* As libmoe/backend/cpu.c's glu1, with the accurate expf and tanhf. */
static __device__ __forceinline__ float mm_glu1(uint32_t act, float x, float y)
{
	switch (act) {
	case 1: /* MOE_GLU_GELU */
		return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x))) *
		       y;
	case 2: /* MOE_GLU_SWIGLU_OAI */
		x = fminf(x, 7.0f);
		y = fmaxf(-7.0f, fminf(y, 7.0f));
		return x / (1.0f + expf(-1.702f * x)) * (y + 1.0f);
	default: /* MOE_GLU_SILU */
		return x / (1.0f + expf(-x)) * y;
	}
}

/*
 * h[e][i] = act(gu[e][i] + gate_b[i], gu[e][nff + i] + up_b[i]) for the
 * entries of FFN blockIdx.y; rows of gu are gu_stride floats, rows of h
 * h_stride.  grid (ceil(max m * nff / 256), FFNs), block 256.
 */
extern "C" __global__ void __launch_bounds__(256)
moe_mm_glu(const float *gu, float *h, uint32_t gu_stride, uint32_t h_stride, uint32_t act,
	   const moe_mm_glu_desc *glus)
{
	const moe_mm_glu_desc g = glus[blockIdx.y];
	uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
	const float *gb = reinterpret_cast<const float *>(g.gate_b);
	const float *ub = reinterpret_cast<const float *>(g.up_b);

	if (k >= (uint64_t)g.m * g.nff)
		return;
	uint32_t e = g.e0 + (uint32_t)(k / g.nff), i = (uint32_t)(k % g.nff);
	const float *row = gu + (uint64_t)e * gu_stride;
	float x = row[i] + (gb ? gb[i] : 0.0f), y = row[g.nff + i] + (ub ? ub[i] : 0.0f);

	h[(uint64_t)e * h_stride + i] = mm_glu1(act, x, y);
}
MOE_KERNEL(moe_mm_glu);
