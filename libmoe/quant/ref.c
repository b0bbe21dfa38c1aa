/* SPDX-License-Identifier: MIT */
/*
 * Scalar reference kernels: dequantization and dot products for every
 * supported type, written as the formulas of FORMATS.md section 2.  The SIMD
 * kernels must agree with these; tests compare both against float64.
 */
#include "quant/blocks.h"
#include "quant/kernels.h"

const int8_t moe_mxfp4_k[16] = { 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12 };

/* ------------------------------------------------------------ to_float */

void moe_f32_to_float(const void *src, float *dst, int64_t n)
{
	memcpy(dst, src, (size_t)n * sizeof(float));
}

void moe_f16_to_float(const void *src, float *dst, int64_t n)
{
	const uint8_t *s = src;

	for (int64_t i = 0; i < n; i++) {
		uint16_t h;

		memcpy(&h, s + 2 * i, 2);
		dst[i] = moe_f16_to_f32(h);
	}
}

void moe_bf16_to_float(const void *src, float *dst, int64_t n)
{
	const uint8_t *s = src;

	for (int64_t i = 0; i < n; i++) {
		uint16_t h;

		memcpy(&h, s + 2 * i, 2);
		dst[i] = moe_bf16_to_f32(h);
	}
}

void moe_q4_0_to_float(const void *src, float *dst, int64_t n)
{
	const struct block_q4_0 *b = src;

	for (int64_t i = 0; i < n / QK; i++, b++, dst += QK) {
		float d = moe_f16_to_f32(b->d);

		for (int j = 0; j < QK / 2; j++) {
			dst[j] = (float)((b->qs[j] & 15) - 8) * d;
			dst[j + 16] = (float)((b->qs[j] >> 4) - 8) * d;
		}
	}
}

void moe_q4_1_to_float(const void *src, float *dst, int64_t n)
{
	const struct block_q4_1 *b = src;

	for (int64_t i = 0; i < n / QK; i++, b++, dst += QK) {
		float d = moe_f16_to_f32(b->d), m = moe_f16_to_f32(b->m);

		for (int j = 0; j < QK / 2; j++) {
			dst[j] = (float)(b->qs[j] & 15) * d + m;
			dst[j + 16] = (float)(b->qs[j] >> 4) * d + m;
		}
	}
}

void moe_q5_0_to_float(const void *src, float *dst, int64_t n)
{
	const struct block_q5_0 *b = src;

	for (int64_t i = 0; i < n / QK; i++, b++, dst += QK) {
		float d = moe_f16_to_f32(b->d);
		uint32_t qh = moe_load_u32le(b->qh);

		for (int j = 0; j < QK / 2; j++) {
			int lo = (b->qs[j] & 15) | (int)((qh >> j) & 1) << 4;
			int hi = (b->qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;

			dst[j] = (float)(lo - 16) * d;
			dst[j + 16] = (float)(hi - 16) * d;
		}
	}
}

void moe_q5_1_to_float(const void *src, float *dst, int64_t n)
{
	const struct block_q5_1 *b = src;

	for (int64_t i = 0; i < n / QK; i++, b++, dst += QK) {
		float d = moe_f16_to_f32(b->d), m = moe_f16_to_f32(b->m);
		uint32_t qh = moe_load_u32le(b->qh);

		for (int j = 0; j < QK / 2; j++) {
			int lo = (b->qs[j] & 15) | (int)((qh >> j) & 1) << 4;
			int hi = (b->qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;

			dst[j] = (float)lo * d + m;
			dst[j + 16] = (float)hi * d + m;
		}
	}
}

void moe_q8_0_to_float(const void *src, float *dst, int64_t n)
{
	const struct block_q8_0 *b = src;

	for (int64_t i = 0; i < n / QK; i++, b++, dst += QK) {
		float d = moe_f16_to_f32(b->d);

		for (int j = 0; j < QK; j++)
			dst[j] = (float)b->qs[j] * d;
	}
}

void moe_mxfp4_to_float(const void *src, float *dst, int64_t n)
{
	const struct block_mxfp4 *b = src;

	for (int64_t i = 0; i < n / QK; i++, b++, dst += QK) {
		float s = moe_e8m0_half(b->e);

		for (int j = 0; j < QK / 2; j++) {
			dst[j] = (float)moe_mxfp4_k[b->qs[j] & 15] * s;
			dst[j + 16] = (float)moe_mxfp4_k[b->qs[j] >> 4] * s;
		}
	}
}

void moe_q4_k_to_float(const void *src, float *dst, int64_t n)
{
	const struct block_q4_k *b = src;

	for (int64_t i = 0; i < n / QK_K; i++, b++) {
		float d = moe_f16_to_f32(b->d), dmin = moe_f16_to_f32(b->dmin);

		for (int g = 0; g < 4; g++) {
			const uint8_t *q = b->qs + 32 * g;
			uint8_t sc0, m0, sc1, m1;

			moe_k_scale_min(2 * g, b->scales, &sc0, &m0);
			moe_k_scale_min(2 * g + 1, b->scales, &sc1, &m1);
			float d0 = d * sc0, o0 = dmin * m0, d1 = d * sc1, o1 = dmin * m1;

			for (int l = 0; l < 32; l++)
				*dst++ = d0 * (float)(q[l] & 15) - o0;
			for (int l = 0; l < 32; l++)
				*dst++ = d1 * (float)(q[l] >> 4) - o1;
		}
	}
}

void moe_q5_k_to_float(const void *src, float *dst, int64_t n)
{
	const struct block_q5_k *b = src;

	for (int64_t i = 0; i < n / QK_K; i++, b++) {
		float d = moe_f16_to_f32(b->d), dmin = moe_f16_to_f32(b->dmin);

		for (int g = 0; g < 4; g++) {
			const uint8_t *q = b->qs + 32 * g;
			uint8_t sc0, m0, sc1, m1;

			moe_k_scale_min(2 * g, b->scales, &sc0, &m0);
			moe_k_scale_min(2 * g + 1, b->scales, &sc1, &m1);
			float d0 = d * sc0, o0 = dmin * m0, d1 = d * sc1, o1 = dmin * m1;

			for (int l = 0; l < 32; l++) {
				int v = (q[l] & 15) | ((b->qh[l] >> (2 * g)) & 1) << 4;

				*dst++ = d0 * (float)v - o0;
			}
			for (int l = 0; l < 32; l++) {
				int v = (q[l] >> 4) | ((b->qh[l] >> (2 * g + 1)) & 1) << 4;

				*dst++ = d1 * (float)v - o1;
			}
		}
	}
}

void moe_q6_k_to_float(const void *src, float *dst, int64_t n)
{
	const struct block_q6_k *b = src;

	for (int64_t i = 0; i < n / QK_K; i++, b++, dst += QK_K) {
		float d = moe_f16_to_f32(b->d);

		for (int h = 0; h < 2; h++) {
			const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
			const int8_t *sc = b->scales + 8 * h;
			float *y = dst + 128 * h;

			for (int l = 0; l < 32; l++) {
				int is = l / 16;
				int q0 = ((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4) - 32;
				int q1 = ((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32;
				int q2 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
				int q3 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;

				y[l] = d * (float)sc[is] * (float)q0;
				y[l + 32] = d * (float)sc[is + 2] * (float)q1;
				y[l + 64] = d * (float)sc[is + 4] * (float)q2;
				y[l + 96] = d * (float)sc[is + 6] * (float)q3;
			}
		}
	}
}

void moe_q8_k_to_float(const void *src, float *dst, int64_t n)
{
	const struct block_q8_k *b = src;

	for (int64_t i = 0; i < n / QK_K; i++, b++, dst += QK_K)
		for (int j = 0; j < QK_K; j++)
			dst[j] = b->d * (float)b->qs[j];
}

/* ------------------------------------------------------------ dot products */

/* Float weights keep f32 activations; the reference sums in double. */
void moe_vec_dot_f32(int64_t n, float *out, const void *w, const void *a)
{
	const float *x = w, *y = a;
	double s = 0;

	for (int64_t i = 0; i < n; i++)
		s += (double)x[i] * y[i];
	*out = (float)s;
}

void moe_vec_dot_f16(int64_t n, float *out, const void *w, const void *a)
{
	const uint8_t *x = w;
	const float *y = a;
	double s = 0;

	for (int64_t i = 0; i < n; i++) {
		uint16_t h;

		memcpy(&h, x + 2 * i, 2);
		s += (double)moe_f16_to_f32(h) * y[i];
	}
	*out = (float)s;
}

void moe_vec_dot_bf16(int64_t n, float *out, const void *w, const void *a)
{
	const uint8_t *x = w;
	const float *y = a;
	double s = 0;

	for (int64_t i = 0; i < n; i++) {
		uint16_t h;

		memcpy(&h, x + 2 * i, 2);
		s += (double)moe_bf16_to_f32(h) * y[i];
	}
	*out = (float)s;
}

void moe_vec_dot_q4_0(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q4_0 *x = w;
	const struct block_q8_0 *y = a;
	float s = 0;

	for (int64_t i = 0; i < n / QK; i++) {
		int sum = 0;

		for (int j = 0; j < QK / 2; j++)
			sum += ((x[i].qs[j] & 15) - 8) * y[i].qs[j] +
			       ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
		s += moe_f16_to_f32(x[i].d) * moe_f16_to_f32(y[i].d) * (float)sum;
	}
	*out = s;
}

static int q8_0_sum(const struct block_q8_0 *y)
{
	int s = 0;

	for (int j = 0; j < QK; j++)
		s += y->qs[j];
	return s;
}

/* sum((q*d + m) * a*da) = d*da*sum(q*a) + m*da*sum(a) */
void moe_vec_dot_q4_1(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q4_1 *x = w;
	const struct block_q8_0 *y = a;
	float s = 0;

	for (int64_t i = 0; i < n / QK; i++) {
		int sum = 0;
		float dy = moe_f16_to_f32(y[i].d);

		for (int j = 0; j < QK / 2; j++)
			sum += (x[i].qs[j] & 15) * y[i].qs[j] + (x[i].qs[j] >> 4) * y[i].qs[j + 16];
		s += moe_f16_to_f32(x[i].d) * dy * (float)sum +
		     moe_f16_to_f32(x[i].m) * dy * (float)q8_0_sum(&y[i]);
	}
	*out = s;
}

void moe_vec_dot_q5_0(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q5_0 *x = w;
	const struct block_q8_0 *y = a;
	float s = 0;

	for (int64_t i = 0; i < n / QK; i++) {
		uint32_t qh = moe_load_u32le(x[i].qh);
		int sum = 0;

		for (int j = 0; j < QK / 2; j++) {
			int lo = (x[i].qs[j] & 15) | (int)((qh >> j) & 1) << 4;
			int hi = (x[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;

			sum += (lo - 16) * y[i].qs[j] + (hi - 16) * y[i].qs[j + 16];
		}
		s += moe_f16_to_f32(x[i].d) * moe_f16_to_f32(y[i].d) * (float)sum;
	}
	*out = s;
}

void moe_vec_dot_q5_1(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q5_1 *x = w;
	const struct block_q8_0 *y = a;
	float s = 0;

	for (int64_t i = 0; i < n / QK; i++) {
		uint32_t qh = moe_load_u32le(x[i].qh);
		float dy = moe_f16_to_f32(y[i].d);
		int sum = 0;

		for (int j = 0; j < QK / 2; j++) {
			int lo = (x[i].qs[j] & 15) | (int)((qh >> j) & 1) << 4;
			int hi = (x[i].qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;

			sum += lo * y[i].qs[j] + hi * y[i].qs[j + 16];
		}
		s += moe_f16_to_f32(x[i].d) * dy * (float)sum +
		     moe_f16_to_f32(x[i].m) * dy * (float)q8_0_sum(&y[i]);
	}
	*out = s;
}

void moe_vec_dot_q8_0(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q8_0 *x = w;
	const struct block_q8_0 *y = a;
	float s = 0;

	for (int64_t i = 0; i < n / QK; i++) {
		int sum = 0;

		for (int j = 0; j < QK; j++)
			sum += x[i].qs[j] * y[i].qs[j];
		s += moe_f16_to_f32(x[i].d) * moe_f16_to_f32(y[i].d) * (float)sum;
	}
	*out = s;
}

void moe_vec_dot_mxfp4(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_mxfp4 *x = w;
	const struct block_q8_0 *y = a;
	float s = 0;

	for (int64_t i = 0; i < n / QK; i++) {
		int sum = 0;

		for (int j = 0; j < QK / 2; j++)
			sum += moe_mxfp4_k[x[i].qs[j] & 15] * y[i].qs[j] +
			       moe_mxfp4_k[x[i].qs[j] >> 4] * y[i].qs[j + 16];
		s += moe_e8m0_half(x[i].e) * moe_f16_to_f32(y[i].d) * (float)sum;
	}
	*out = s;
}

/* d*dy*sum_j sc_j*sum(q*a) - dmin*dy*sum_j m_j*sum(a), with sum(a) from bsums */
void moe_vec_dot_q4_k(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q4_k *x = w;
	const struct block_q8_k *y = a;
	float s = 0;

	for (int64_t i = 0; i < n / QK_K; i++) {
		int sumi = 0, summ = 0;

		for (int j = 0; j < 8; j++) {
			const uint8_t *q = x[i].qs + 32 * (j / 2);
			const int8_t *ay = y[i].qs + 32 * j;
			int shift = 4 * (j & 1), isum = 0;
			uint8_t sc, m;

			moe_k_scale_min(j, x[i].scales, &sc, &m);
			for (int l = 0; l < 32; l++)
				isum += ((q[l] >> shift) & 15) * ay[l];
			sumi += sc * isum;
			summ += m * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
		}
		s += moe_f16_to_f32(x[i].d) * y[i].d * (float)sumi -
		     moe_f16_to_f32(x[i].dmin) * y[i].d * (float)summ;
	}
	*out = s;
}

void moe_vec_dot_q5_k(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q5_k *x = w;
	const struct block_q8_k *y = a;
	float s = 0;

	for (int64_t i = 0; i < n / QK_K; i++) {
		int sumi = 0, summ = 0;

		for (int j = 0; j < 8; j++) {
			const uint8_t *q = x[i].qs + 32 * (j / 2);
			const int8_t *ay = y[i].qs + 32 * j;
			int shift = 4 * (j & 1), isum = 0;
			uint8_t sc, m;

			moe_k_scale_min(j, x[i].scales, &sc, &m);
			for (int l = 0; l < 32; l++) {
				int v = ((q[l] >> shift) & 15) | ((x[i].qh[l] >> j) & 1) << 4;

				isum += v * ay[l];
			}
			sumi += sc * isum;
			summ += m * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
		}
		s += moe_f16_to_f32(x[i].d) * y[i].d * (float)sumi -
		     moe_f16_to_f32(x[i].dmin) * y[i].d * (float)summ;
	}
	*out = s;
}

void moe_vec_dot_q6_k(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q6_k *x = w;
	const struct block_q8_k *y = a;
	float s = 0;

	for (int64_t i = 0; i < n / QK_K; i++) {
		int sumi = 0;

		for (int h = 0; h < 2; h++) {
			const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
			const int8_t *sc = x[i].scales + 8 * h, *ay = y[i].qs + 128 * h;
			int part[8] = { 0 };

			for (int l = 0; l < 32; l++) {
				int is = l / 16;
				int q0 = ((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4) - 32;
				int q1 = ((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32;
				int q2 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
				int q3 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;

				part[is] += q0 * ay[l];
				part[is + 2] += q1 * ay[l + 32];
				part[is + 4] += q2 * ay[l + 64];
				part[is + 6] += q3 * ay[l + 96];
			}
			for (int k = 0; k < 8; k++)
				sumi += sc[k] * part[k];
		}
		s += moe_f16_to_f32(x[i].d) * y[i].d * (float)sumi;
	}
	*out = s;
}

void moe_vec_dot_q8_k(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q8_k *x = w;
	const struct block_q8_k *y = a;
	float s = 0;

	for (int64_t i = 0; i < n / QK_K; i++) {
		int sum = 0;

		for (int j = 0; j < QK_K; j++)
			sum += x[i].qs[j] * y[i].qs[j];
		s += x[i].d * y[i].d * (float)sum;
	}
	*out = s;
}
