/* SPDX-License-Identifier: MIT */
/*
 * F32 matrix kernels for libmoe/backend/cuda_mm.c: one warp per output
 * row, lanes striding over the columns.  Simple and exact enough to run the
 * forward pass of F32 models on the CUDA backend; the quantized types have
 * kernels of their own.
 */
#include "common.cuh"

#define MM_F32_WARPS 8

static __device__ float mm_f32_warp_sum(float v)
{
	for (int off = 16; off > 0; off /= 2)
		v += __shfl_xor_sync(0xffffffffu, v, off);
	return v;
}

/* dst[i] = row ids[i] of w (rows x cols); rows outside w come out as NaN */
extern "C" __global__ void moe_mm_f32_get_rows(const float *w, long long rows, long long cols,
					       const int *ids, unsigned n, float *dst)
{
	for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n * cols;
	     e += (long long)gridDim.x * blockDim.x) {
		long long i = e / cols, c = e % cols;
		int id = ids[i];

		dst[e] = id >= 0 && id < rows ? w[id * cols + c] : __int_as_float(0x7fc00000);
	}
}
MOE_KERNEL(moe_mm_f32_get_rows);

/*
 * y[t * y_tok + h * y_head + r] = row r of matrix h (at w + h * rows * cols)
 * times x[t * x_tok + h * x_head ...]: grid (rows / warps, n_tok, n_head).
 */
extern "C" __global__ void moe_mm_f32_matvec(const float *w, unsigned rows, unsigned cols,
					     const float *x, float *y, unsigned long long x_tok,
					     unsigned long long x_head, unsigned long long y_tok,
					     unsigned long long y_head)
{
	unsigned r = blockIdx.x * MM_F32_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
	unsigned t = blockIdx.y, h = blockIdx.z;
	const float *wr = w + ((size_t)h * rows + r) * cols;
	const float *xr = x + t * x_tok + h * x_head;
	float s = 0;

	if (r >= rows)
		return;
	for (unsigned c = lane; c < cols; c += 32)
		s += wr[c] * xr[c];
	s = mm_f32_warp_sum(s);
	if (!lane)
		y[t * y_tok + h * y_head + r] = s;
}
MOE_KERNEL(moe_mm_f32_matvec);

/* One FFN of a moe_ffn call (cuda_mm.c's struct mm_f32_ffn). */
struct mm_f32_ffn {
	unsigned long long gate, up, down, gate_b, up_b, down_b, out_scale;
	unsigned long long x, ents, in_scale, out, hid;
	unsigned n_embd, n_ff, m, ent_off, stride, act;
};

static __device__ float mm_f32_glu(unsigned act, float x, float y)
{
	if (act == 1) {
		const float c = 0.7978845608028654f;

		return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x))) * y;
	}
	if (act == 2) {
		x = fminf(x, 7.0f);
		y = fmaxf(-7.0f, fminf(y, 7.0f));
		return x / (1.0f + expf(-1.702f * x)) * (y + 1.0f);
	}
	return x / (1.0f + expf(-x)) * y;
}

/* hid[i][r] = act(gate row r . x_i + b) * (up row r . x_i + b): grid (n_ff / warps, m) */
extern "C" __global__ void moe_mm_f32_ffn_gate_up(struct mm_f32_ffn f)
{
	unsigned r = blockIdx.x * MM_F32_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
	unsigned i = blockIdx.y, E = f.n_embd;
	const int *ents = reinterpret_cast<const int *>(f.ents);
	int ent = ents ? ents[f.ent_off + i] : (int)i;
	const float *x = reinterpret_cast<const float *>(f.x) +
			 (size_t)(ents ? (unsigned)ent / f.stride : i) * E;
	const float *is = reinterpret_cast<const float *>(f.in_scale);
	const float *wg = reinterpret_cast<const float *>(f.gate) + (size_t)r * E;
	const float *wu = reinterpret_cast<const float *>(f.up) + (size_t)r * E;
	const float *gb = reinterpret_cast<const float *>(f.gate_b);
	const float *ub = reinterpret_cast<const float *>(f.up_b);
	float sc = is ? is[ent] : 1.0f, g = 0, u = 0;

	if (r >= f.n_ff)
		return;
	for (unsigned c = lane; c < E; c += 32) {
		float xc = is ? x[c] * sc : x[c];

		g += wg[c] * xc;
		u += wu[c] * xc;
	}
	g = mm_f32_warp_sum(g);
	u = mm_f32_warp_sum(u);
	if (!lane)
		reinterpret_cast<float *>(f.hid)[(size_t)i * f.n_ff + r] =
			mm_f32_glu(f.act, g + (gb ? gb[r] : 0.0f), u + (ub ? ub[r] : 0.0f));
}
MOE_KERNEL(moe_mm_f32_ffn_gate_up);

/* out[row of entry i][r] = (down row r . hid[i] + b) * scale: grid (n_embd / warps, m) */
extern "C" __global__ void moe_mm_f32_ffn_down(struct mm_f32_ffn f)
{
	unsigned r = blockIdx.x * MM_F32_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
	unsigned i = blockIdx.y;
	const int *ents = reinterpret_cast<const int *>(f.ents);
	unsigned row = ents ? (unsigned)ents[f.ent_off + i] : i;
	const float *h = reinterpret_cast<const float *>(f.hid) + (size_t)i * f.n_ff;
	const float *wd = reinterpret_cast<const float *>(f.down) + (size_t)r * f.n_ff;
	const float *db = reinterpret_cast<const float *>(f.down_b);
	const float *os = reinterpret_cast<const float *>(f.out_scale);
	float s = 0;

	if (r >= f.n_embd)
		return;
	for (unsigned c = lane; c < f.n_ff; c += 32)
		s += wd[c] * h[c];
	s = mm_f32_warp_sum(s);
	if (!lane) {
		if (db)
			s += db[r];
		if (os)
			s *= os[0];
		reinterpret_cast<float *>(f.out)[(size_t)row * f.n_embd + r] = s;
	}
}
MOE_KERNEL(moe_mm_f32_ffn_down);
