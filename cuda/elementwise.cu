/* SPDX-License-Identifier: MIT */
/*
 * Element-wise kernels of the CUDA backend: conversions to F32, the adds and
 * scales of the forward pass, GLU activations, the weighted combination of
 * expert outputs and strided row copies.  Each computes exactly what
 * backend/cpu.c does for one element, in the same order of operations.
 */
#include "core.cuh"

extern "C" __global__ void moe_k_f16_to_f32(const unsigned short *src, float *dst, long long n)
{
	KC_FOR_EACH(i, n)
		dst[i] = __half2float(__ushort_as_half(src[i]));
}
MOE_KERNEL(moe_k_f16_to_f32);

extern "C" __global__ void moe_k_bf16_to_f32(const unsigned short *src, float *dst, long long n)
{
	KC_FOR_EACH(i, n)
		dst[i] = __bfloat162float(__ushort_as_bfloat16(src[i]));
}
MOE_KERNEL(moe_k_bf16_to_f32);

extern "C" __global__ void moe_k_add(float *y, const float *x, long long n)
{
	KC_FOR_EACH(i, n)
		y[i] += x[i];
}
MOE_KERNEL(moe_k_add);

extern "C" __global__ void moe_k_add_bias(float *y, const float *b, long long n_tok, long long n)
{
	KC_FOR_EACH(i, n_tok * n)
		y[i] += b[i % n];
}
MOE_KERNEL(moe_k_add_bias);

extern "C" __global__ void moe_k_scale(float *x, float s, long long n)
{
	KC_FOR_EACH(i, n)
		x[i] *= s;
}
MOE_KERNEL(moe_k_scale);

extern "C" __global__ void moe_k_scale_rows(float *x, const float *s, long long n_tok, long long n,
					    int sigmoid)
{
	KC_FOR_EACH(i, n_tok * n) {
		float v = s[i / n];

		x[i] *= sigmoid ? 1.0f / (1.0f + expf(-v)) : v;
	}
}
MOE_KERNEL(moe_k_scale_rows);

extern "C" __global__ void moe_k_mul(float *x, const float *w, long long n_vec, long long n)
{
	KC_FOR_EACH(i, n_vec * n)
		x[i] *= w[i % n];
}
MOE_KERNEL(moe_k_mul);

extern "C" __global__ void moe_k_softcap(float *x, float cap, long long n)
{
	KC_FOR_EACH(i, n)
		x[i] = cap * tanhf(x[i] / cap);
}
MOE_KERNEL(moe_k_softcap);

/* enum moe_glu: 0 SILU, 1 GELU (tanh), 2 SWIGLU_OAI */
static __device__ float kc_glu(int act, float x, float y)
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

extern "C" __global__ void moe_k_glu(int act, const float *gate, const float *up, long long stride,
				     long long n_tok, long long n, float *out)
{
	KC_FOR_EACH(e, n_tok * n) {
		long long t = e / n, i = e % n;

		out[e] = kc_glu(act, gate[t * stride + i], up[t * stride + i]);
	}
}
MOE_KERNEL(moe_k_glu);

/* out[t][i] = sum over j < k of w[t][j] * ys[t * stride + j][i], in order of j */
extern "C" __global__ void moe_k_combine(const float *ys, const float *w, unsigned n_tok,
					 unsigned k, unsigned stride, long long n, float *out)
{
	KC_FOR_EACH(e, (long long)n_tok * n) {
		long long t = e / n, i = e % n;
		float o = 0;

		for (unsigned j = 0; j < k; j++) {
			float wt = w ? w[t * stride + j] : 1.0f;
			float y = ys[((size_t)t * stride + j) * n + i] * wt;

			o = j ? o + y : y;
		}
		out[e] = o;
	}
}
MOE_KERNEL(moe_k_combine);

extern "C" __global__ void moe_k_copy_rows(float *dst, unsigned dst_stride, const float *src,
					   unsigned src_stride, unsigned n, unsigned n_rows)
{
	KC_FOR_EACH(e, (long long)n * n_rows) {
		long long r = e / n, i = e % n;

		dst[r * dst_stride + i] = src[r * src_stride + i];
	}
}
MOE_KERNEL(moe_k_copy_rows);
