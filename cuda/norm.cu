/* SPDX-License-Identifier: MIT */
/* RMSNorm and RoPE, as backend/cpu.c computes them. */
#include "core.cuh"

/* One block per vector (a 2-D grid past 65535 vectors); blockDim.x a power of two <= 1024. */
extern "C" __global__ void moe_k_rms_norm(const float *x, float *y, long long n_vec, long long n,
					  const float *w, float eps)
{
	MOE_SHARED(double, part, 1024);
	long long v = (long long)blockIdx.y * gridDim.x + blockIdx.x;
	const float *xv = x + v * n;
	float *yv = y + v * n;
	double ss = 0;
	float s;

	if (v >= n_vec)
		return;
	/* the CPU sums in double too: the scale agrees to the last bit or so */
	for (long long i = threadIdx.x; i < n; i += blockDim.x)
		ss += (double)xv[i] * xv[i];
	part[threadIdx.x] = ss;
	__syncthreads();
	for (unsigned h = blockDim.x / 2; h > 0; h /= 2) {
		if (threadIdx.x < h)
			part[threadIdx.x] += part[threadIdx.x + h];
		__syncthreads();
	}
	s = 1.0f / sqrtf((float)(part[0] / n) + eps);
	/* in place (x == y) is fine: each thread rewrites only what it read */
	for (long long i = threadIdx.x; i < n; i += blockDim.x)
		yv[i] = w ? xv[i] * s * w[i] : xv[i] * s;
}
MOE_KERNEL(moe_k_rms_norm);

/* The host's struct rope_k (backend/cuda.c): struct moe_rope, the factors by address. */
struct kc_rope {
	int mode;               /* 1 NORM (pairs 2i, 2i+1), 2 NEOX (i, i + n_rot/2) */
	unsigned n_rot;
	float base, freq_scale;
	unsigned long long freq_factors;
	float ext_factor, attn_factor, corr_lo, corr_hi;
};

/* One block per (token, head): blockIdx.x the token, blockIdx.y the head; threads over pairs. */
extern "C" __global__ void moe_k_rope(float *x, unsigned n_head, unsigned head_dim, const int *pos,
				      struct kc_rope r)
{
	unsigned half = min(r.n_rot / 2, 1024u);
	const float *ff = reinterpret_cast<const float *>(r.freq_factors);
	float *v = x + ((size_t)blockIdx.x * n_head + blockIdx.y) * head_dim;
	float mscale = r.attn_factor;
	int p = pos[blockIdx.x];

	if (r.ext_factor != 0.0f)
		mscale *= 1.0f + 0.1f * logf(1.0f / r.freq_scale);
	for (unsigned i = threadIdx.x; i < half; i += blockDim.x) {
		double ext = p * pow((double)r.base, -2.0 * i / r.n_rot), theta;
		unsigned a = r.mode == 2 ? i : 2 * i, b = r.mode == 2 ? i + half : 2 * i + 1;
		float cs, sn, x0 = v[a], x1 = v[b];

		if (ff)
			ext /= ff[i];
		theta = ext * r.freq_scale;
		if (r.ext_factor != 0.0f) {
			/* the same mixed float/double arithmetic as the CPU's ramp */
			double w = fmax(0.001, (double)(r.corr_hi - r.corr_lo));
			double y = ((float)i - r.corr_lo) / w;
			double mix = (1.0 - fmin(1.0, fmax(0.0, y))) * r.ext_factor;

			theta = theta * (1.0 - mix) + ext * mix;
		}
		cs = (float)cos(theta) * mscale;
		sn = (float)sin(theta) * mscale;
		v[a] = x0 * cs - x1 * sn;
		v[b] = x0 * sn + x1 * cs;
	}
}
MOE_KERNEL(moe_k_rope);
