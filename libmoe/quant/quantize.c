/* SPDX-License-Identifier: MIT */
/*
 * Quantization from f32.  The legacy 32-element types use the usual
 * max-abs / min-max scaling; the K-quants and MXFP4 search the scale (and
 * min) that minimises the squared error of each sub-block, then quantize the
 * sub-block scales themselves.
 */
#include <math.h>

#include "quant/blocks.h"
#include "quant/kernels.h"

/* Round to nearest (even) without a float->int conversion, for |x| < 2^22. NaN gives junk, not UB. */
static inline int iround(float x)
{
	float v = x + 12582912.0f;   /* 1.5 * 2^23 */
	uint32_t u = f32_bits(v);

	return (int)(u & 0x007fffff) - 0x00400000;
}

static inline int clampi(int v, int lo, int hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

/* Clamp before rounding so that iround's range holds for any finite input. */
static inline int qround(float x, int lo, int hi)
{
	if (!(x > (float)lo))
		return lo;
	if (x > (float)hi)
		return hi;
	return clampi(iround(x), lo, hi);
}

size_t moe_f32_from_float(const float *src, void *dst, int64_t n)
{
	memcpy(dst, src, (size_t)n * sizeof(float));
	return (size_t)n * sizeof(float);
}

size_t moe_f16_from_float(const float *src, void *dst, int64_t n)
{
	uint8_t *d = dst;

	for (int64_t i = 0; i < n; i++) {
		uint16_t h = moe_f32_to_f16(src[i]);

		memcpy(d + 2 * i, &h, 2);
	}
	return (size_t)n * 2;
}

size_t moe_bf16_from_float(const float *src, void *dst, int64_t n)
{
	uint8_t *d = dst;

	for (int64_t i = 0; i < n; i++) {
		uint16_t h = moe_f32_to_bf16(src[i]);

		memcpy(d + 2 * i, &h, 2);
	}
	return (size_t)n * 2;
}

/* The element of largest magnitude, with its sign. */
static float signed_absmax(const float *x, int n)
{
	float amax = 0, max = 0;

	for (int j = 0; j < n; j++) {
		if (fabsf(x[j]) > amax) {
			amax = fabsf(x[j]);
			max = x[j];
		}
	}
	return max;
}

size_t moe_q4_0_from_float(const float *src, void *dst, int64_t n)
{
	struct block_q4_0 *b = dst;

	for (int64_t i = 0; i < n / QK; i++, b++, src += QK) {
		/* the largest magnitude maps to -8, the one code without a mirror */
		float d = signed_absmax(src, QK) / -8, id = d ? 1 / d : 0;

		b->d = moe_f32_to_f16(d);
		for (int j = 0; j < QK / 2; j++) {
			int lo = qround(src[j] * id + 8, 0, 15);
			int hi = qround(src[j + 16] * id + 8, 0, 15);

			b->qs[j] = (uint8_t)(lo | hi << 4);
		}
	}
	return (size_t)(n / QK) * sizeof(*b);
}

static void minmax(const float *x, int n, float *mn, float *mx)
{
	*mn = x[0];
	*mx = x[0];
	for (int j = 1; j < n; j++) {
		*mn = fminf(*mn, x[j]);
		*mx = fmaxf(*mx, x[j]);
	}
}

size_t moe_q4_1_from_float(const float *src, void *dst, int64_t n)
{
	struct block_q4_1 *b = dst;

	for (int64_t i = 0; i < n / QK; i++, b++, src += QK) {
		float mn, mx;

		minmax(src, QK, &mn, &mx);
		float d = (mx - mn) / 15, id = d ? 1 / d : 0;

		b->d = moe_f32_to_f16(d);
		b->m = moe_f32_to_f16(mn);
		for (int j = 0; j < QK / 2; j++) {
			int lo = qround((src[j] - mn) * id, 0, 15);
			int hi = qround((src[j + 16] - mn) * id, 0, 15);

			b->qs[j] = (uint8_t)(lo | hi << 4);
		}
	}
	return (size_t)(n / QK) * sizeof(*b);
}

static void put_q5(const int *q, uint8_t *qs, uint8_t *qh)
{
	uint32_t h = 0;

	for (int j = 0; j < QK / 2; j++) {
		qs[j] = (uint8_t)((q[j] & 15) | (q[j + 16] & 15) << 4);
		h |= (uint32_t)(q[j] >> 4) << j | (uint32_t)(q[j + 16] >> 4) << (j + 16);
	}
	for (int k = 0; k < 4; k++)
		qh[k] = (uint8_t)(h >> (8 * k));
}

size_t moe_q5_0_from_float(const float *src, void *dst, int64_t n)
{
	struct block_q5_0 *b = dst;

	for (int64_t i = 0; i < n / QK; i++, b++, src += QK) {
		float d = signed_absmax(src, QK) / -16, id = d ? 1 / d : 0;
		int q[QK];

		b->d = moe_f32_to_f16(d);
		for (int j = 0; j < QK; j++)
			q[j] = qround(src[j] * id + 16, 0, 31);
		put_q5(q, b->qs, b->qh);
	}
	return (size_t)(n / QK) * sizeof(*b);
}

size_t moe_q5_1_from_float(const float *src, void *dst, int64_t n)
{
	struct block_q5_1 *b = dst;

	for (int64_t i = 0; i < n / QK; i++, b++, src += QK) {
		float mn, mx;
		int q[QK];

		minmax(src, QK, &mn, &mx);
		float d = (mx - mn) / 31, id = d ? 1 / d : 0;

		b->d = moe_f32_to_f16(d);
		b->m = moe_f32_to_f16(mn);
		for (int j = 0; j < QK; j++)
			q[j] = qround((src[j] - mn) * id, 0, 31);
		put_q5(q, b->qs, b->qh);
	}
	return (size_t)(n / QK) * sizeof(*b);
}

/* Weights as llama-quantize writes them: amax/127, multiplied by its inverse, rounded away. */
size_t moe_q8_0_from_float(const float *src, void *dst, int64_t n)
{
	struct block_q8_0 *b = dst;

	for (int64_t i = 0; i < n / QK; i++, b++, src += QK) {
		float amax = fabsf(signed_absmax(src, QK));
		float d = amax / 127, id = d ? 1 / d : 0;

		b->d = moe_f32_to_f16(d);
		for (int j = 0; j < QK; j++)
			b->qs[j] = (int8_t)clampi((int)roundf(src[j] * id), -127, 127);
	}
	return (size_t)(n / QK) * sizeof(*b);
}

size_t moe_q8_0_act_from_float(const float *src, void *dst, int64_t n)
{
	struct block_q8_0 *b = dst;

	for (int64_t i = 0; i < n / QK; i++, b++, src += QK) {
		float amax = fabsf(signed_absmax(src, QK));
		float id = amax ? 127.0f / amax : 0;

		b->d = moe_f32_to_f16(amax / 127);
		for (int j = 0; j < QK; j++)
			b->qs[j] = (int8_t)qround(src[j] * id, -127, 127);
	}
	return (size_t)(n / QK) * sizeof(*b);
}

/*
 * Activations, as llama.cpp rounds them: the scale is -127 over the element
 * of largest magnitude (its sign included), so the values are symmetric in
 * [-127, 127] and SIMD sign tricks never meet -128; d is its inverse.
 */
size_t moe_q8_k_from_float(const float *src, void *dst, int64_t n)
{
	struct block_q8_k *b = dst;

	for (int64_t i = 0; i < n / QK_K; i++, b++, src += QK_K) {
		float max = signed_absmax(src, QK_K), iscale = max ? -127.0f / max : 0;

		b->d = max ? 1 / iscale : 0;
		for (int j = 0; j < QK_K; j++)
			b->qs[j] = (int8_t)qround(src[j] * iscale, -127, 127);
		for (int g = 0; g < QK_K / 16; g++) {
			int s = 0;

			for (int l = 0; l < 16; l++)
				s += b->qs[16 * g + l];
			b->bsums[g] = (int16_t)s;
		}
	}
	return (size_t)(n / QK_K) * sizeof(*b);
}

/* ------------------------------------------------------------ MXFP4 */

/* Nearest E2M1 code for v in units of the halved scale (grid 0,1,2,3,4,6,8,12). */
static uint8_t e2m1_code(float v)
{
	static const float mid[7] = { 0.5f, 1.5f, 2.5f, 3.5f, 5, 7, 10 };
	float a = fabsf(v);
	uint8_t c = 0;

	while (c < 7 && a >= mid[c])
		c++;
	return c && v < 0 ? (uint8_t)(c | 8) : c;
}

static float mxfp4_block_err(const float *x, uint8_t e, uint8_t *codes)
{
	float s = moe_e8m0_half(e), is = 1 / s, err = 0;

	for (int j = 0; j < QK; j++) {
		uint8_t c = e2m1_code(x[j] * is);
		float r = (float)moe_mxfp4_k[c] * s - x[j];

		if (codes)
			codes[j] = c;
		err += r * r;
	}
	return err;
}

/*
 * The smallest exponent that does not clip, and the two below it (clipping
 * the largest element for a finer grid often wins); keep the least error.
 */
size_t moe_mxfp4_from_float(const float *src, void *dst, int64_t n)
{
	struct block_mxfp4 *b = dst;

	for (int64_t i = 0; i < n / QK; i++, b++, src += QK) {
		float amax = fabsf(signed_absmax(src, QK));
		uint8_t codes[QK];
		int e0 = 0, best_e;

		if (amax > 0 && isfinite(amax)) {
			int ex;
			float m = frexpf(amax / 12, &ex);

			e0 = 128 + (m == 0.5f ? ex - 1 : ex);
			e0 = clampi(e0, 0, 254);
		}
		best_e = e0;
		float best = mxfp4_block_err(src, (uint8_t)e0, NULL);

		for (int e = e0 - 1; e >= e0 - 2 && e >= 0; e--) {
			float err = mxfp4_block_err(src, (uint8_t)e, NULL);

			if (err < best) {
				best = err;
				best_e = e;
			}
		}
		b->e = (uint8_t)best_e;
		mxfp4_block_err(src, b->e, codes);
		for (int j = 0; j < QK / 2; j++)
			b->qs[j] = (uint8_t)(codes[j] | codes[j + 16] << 4);
	}
	return (size_t)(n / QK) * sizeof(*b);
}

/* ------------------------------------------------------------ K-quants */

/*
 * Fit x ~ scale*q - offset with q in [0, nmax] and offset >= 0 (the format's
 * mins are subtracted): try 51 grid spacings around (max-min)/nmax, for each
 * solve the least-squares scale and offset for the resulting q, keep the
 * fit with the least squared error.  One candidate at a time: the reference
 * that fit_affine (below) must equal bit for bit.
 */
static void fit_affine_ref(const float *x, int n, int nmax, float *scale, float *offset)
{
	float mn, mx, best = INFINITY, sx = 0;

	minmax(x, n, &mn, &mx);
	if (mn > 0)
		mn = 0;
	*scale = 0;
	*offset = -mn;
	if (!(mx > mn))
		return;
	for (int j = 0; j < n; j++)
		sx += x[j];
	for (int is = -10; is <= 40; is++) {
		float iscale = ((float)nmax + 0.1f * (float)is) / (mx - mn);
		float sl = 0, sl2 = 0, sxl = 0, a, b, err = 0;
		int q[QK_K / 8];

		for (int j = 0; j < n; j++) {
			q[j] = qround(iscale * (x[j] - mn), 0, nmax);
			sl += (float)q[j];
			sl2 += (float)(q[j] * q[j]);
			sxl += x[j] * (float)q[j];
		}
		float det = (float)n * sl2 - sl * sl;

		a = 0;
		b = 1;
		if (det > 0) {
			a = ((float)n * sxl - sl * sx) / det;
			b = (sl2 * sx - sl * sxl) / det;
		}
		/* all codes equal (constant input) or a positive offset: no offset */
		if (b > 0) {
			b = 0;
			a = sl2 > 0 ? sxl / sl2 : 0;
		}
		if (a < 0)
			continue;
		for (int j = 0; j < n; j++) {
			float r = a * (float)q[j] + b - x[j];

			err += r * r;
		}
		if (err < best) {
			best = err;
			*scale = a;
			*offset = -b;
		}
	}
}


/*
 * fit_affine_ref's 51 candidates eight at a time, lane k of a group being
 * one grid spacing: each lane performs the scalar loop's float operations in
 * the same order (no reassociation, no fused multiply-add), so its sums, fit
 * and error are the scalar ones to the bit, and the fits are compared in the
 * scalar loop's order.  GCC/clang vector extensions, so one source serves
 * SSE2 and AVX2 (chosen at run time) and other targets.
 */
typedef float fit_v8f __attribute__((vector_size(32)));
typedef int32_t fit_v8i __attribute__((vector_size(32)));

#define FIT_IS_LO (-10)
#define FIT_IS_HI 40

/* Lanewise m ? a : b, m all ones or all zeros (a macro: returning a vector changes the ABI). */
#define fit_sel(m, a, b) ((fit_v8f)(((fit_v8i)(a) & (m)) | ((fit_v8i)(b) & ~(m))))

static inline __attribute__((always_inline)) void
fit_affine_body(const float *x, int n, int nmax, float *scale, float *offset)
{
	const fit_v8f zero = { 0 }, one = zero + 1, hi = zero + (float)nmax;
	const fit_v8f magic = zero + 12582912.0f, lane = { 0, 1, 2, 3, 4, 5, 6, 7 };
	float mn, mx, best = INFINITY, sx = 0;
	fit_v8f q[QK_K / 8];

	minmax(x, n, &mn, &mx);
	if (mn > 0)
		mn = 0;
	*scale = 0;
	*offset = -mn;
	if (!(mx > mn))
		return;
	for (int j = 0; j < n; j++)
		sx += x[j];
	for (int is0 = FIT_IS_LO; is0 <= FIT_IS_HI; is0 += 8) {
		fit_v8f iscale, sl = zero, sl2 = zero, sxl = zero, err = zero, av, bv, det;
		fit_v8i pos, skip;

		iscale = ((float)nmax + 0.1f * ((float)is0 + lane)) / (mx - mn);
		for (int j = 0; j < n; j++) {
			fit_v8f v = iscale * (x[j] - mn);
			fit_v8i above = v > zero, over = v > hi;

			/* qround: 0 unless above 0 (NaN too), nmax past it, else round to even */
			v = fit_sel(above, v, zero);
			v = fit_sel(over, hi, v);
			q[j] = __builtin_convertvector(((fit_v8i)(v + magic) & 0x007fffff) - 0x00400000,
						       fit_v8f);
			sl += q[j];
			sl2 += q[j] * q[j];
			sxl += x[j] * q[j];
		}
		/* the scalar branches as selects; a lane's unused quotients are discarded */
		det = (float)n * sl2 - sl * sl;
		pos = det > zero;
		av = fit_sel(pos, ((float)n * sxl - sl * sx) / det, zero);
		bv = fit_sel(pos, (sl2 * sx - sl * sxl) / det, one);
		pos = bv > zero;
		av = fit_sel(pos, fit_sel(sl2 > zero, sxl / sl2, zero), av);
		bv = fit_sel(pos, zero, bv);
		skip = (av < zero) | ((float)is0 + lane > (float)FIT_IS_HI);
		for (int j = 0; j < n; j++) {
			fit_v8f r = av * q[j] + bv - x[j];

			err += r * r;
		}
		for (int k = 0; k < 8; k++)
			if (!skip[k] && err[k] < best) {
				best = err[k];
				*scale = av[k];
				*offset = -bv[k];
			}
	}
}

#if defined(__x86_64__) && !defined(__AVX2__)
__attribute__((target("avx2"))) static void fit_affine_avx2(const float *x, int n, int nmax,
							   float *scale, float *offset)
{
	fit_affine_body(x, n, nmax, scale, offset);
}
#endif

static void fit_affine_base(const float *x, int n, int nmax, float *scale, float *offset)
{
	fit_affine_body(x, n, nmax, scale, offset);
}

int moe_kfit_avx2 = -1;

static void fit_affine(const float *x, int n, int nmax, float *scale, float *offset)
{
#if defined(__x86_64__) && !defined(__AVX2__)
	int avx2 = __atomic_load_n(&moe_kfit_avx2, __ATOMIC_RELAXED);

	if (avx2 < 0) {
		avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
		__atomic_store_n(&moe_kfit_avx2, avx2, __ATOMIC_RELAXED);
	}
	if (avx2) {
		fit_affine_avx2(x, n, nmax, scale, offset);
		return;
	}
#endif
	fit_affine_base(x, n, nmax, scale, offset);
}

/* Quantize 8 sub-block (scale, offset) pairs to 6 bits under fp16 super-scales. */
static void k_scales(const float *scale, const float *offset, uint16_t *d16, uint16_t *dmin16,
		     uint8_t *packed, uint8_t *sc, uint8_t *m)
{
	float ms = 0, mo = 0;

	for (int j = 0; j < 8; j++) {
		ms = fmaxf(ms, scale[j]);
		mo = fmaxf(mo, offset[j]);
	}
	*d16 = moe_f32_to_f16(ms / 63);
	*dmin16 = moe_f32_to_f16(mo / 63);
	float d = moe_f16_to_f32(*d16), dmin = moe_f16_to_f32(*dmin16);

	for (int j = 0; j < 8; j++) {
		sc[j] = (uint8_t)(d > 0 ? qround(scale[j] / d, 0, 63) : 0);
		m[j] = (uint8_t)(dmin > 0 ? qround(offset[j] / dmin, 0, 63) : 0);
	}
	memset(packed, 0, K_SCALE_BYTES);
	for (int j = 0; j < 8; j++) {
		if (j < 4) {
			packed[j] |= sc[j];
			packed[j + 4] |= m[j];
		} else {
			packed[j + 4] = (uint8_t)((sc[j] & 15) | (m[j] & 15) << 4);
			packed[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
			packed[j] |= (uint8_t)((m[j] >> 4) << 6);
		}
	}
}

/* Sub-block codes in [0, nmax] for 256 elements under the stored scales. */
static void k_codes(const float *x, uint16_t d16, uint16_t dmin16, const uint8_t *sc,
		    const uint8_t *m, int nmax, uint8_t *q)
{
	float d = moe_f16_to_f32(d16), dmin = moe_f16_to_f32(dmin16);

	for (int j = 0; j < 8; j++) {
		float de = d * sc[j], me = dmin * m[j];

		for (int l = 0; l < 32; l++)
			q[32 * j + l] = (uint8_t)(de > 0 ? qround((x[32 * j + l] + me) / de, 0, nmax) : 0);
	}
}

void moe_k_fit_affine(const float *x, int n, int nmax, float *scale, float *offset, bool ref)
{
	(ref ? fit_affine_ref : fit_affine)(x, n, nmax, scale, offset);
}

typedef void fit_fn(const float *x, int n, int nmax, float *scale, float *offset);

static size_t q4_k_from_float(const float *src, void *dst, int64_t n, fit_fn *fit)
{
	struct block_q4_k *b = dst;

	for (int64_t i = 0; i < n / QK_K; i++, b++, src += QK_K) {
		float scale[8], offset[8];
		uint8_t sc[8], m[8], q[QK_K];
		uint16_t d16, dmin16;

		for (int j = 0; j < 8; j++)
			fit(src + 32 * j, 32, 15, &scale[j], &offset[j]);
		k_scales(scale, offset, &d16, &dmin16, b->scales, sc, m);
		b->d = d16;
		b->dmin = dmin16;
		k_codes(src, d16, dmin16, sc, m, 15, q);
		for (int g = 0; g < 4; g++)
			for (int l = 0; l < 32; l++)
				b->qs[32 * g + l] = (uint8_t)(q[64 * g + l] | q[64 * g + 32 + l] << 4);
	}
	return (size_t)(n / QK_K) * sizeof(*b);
}

size_t moe_q4_k_from_float(const float *src, void *dst, int64_t n)
{
	return q4_k_from_float(src, dst, n, fit_affine);
}

size_t moe_q4_k_from_float_ref(const float *src, void *dst, int64_t n)
{
	return q4_k_from_float(src, dst, n, fit_affine_ref);
}

static size_t q5_k_from_float(const float *src, void *dst, int64_t n, fit_fn *fit)
{
	struct block_q5_k *b = dst;

	for (int64_t i = 0; i < n / QK_K; i++, b++, src += QK_K) {
		float scale[8], offset[8];
		uint8_t sc[8], m[8], q[QK_K];
		uint16_t d16, dmin16;

		for (int j = 0; j < 8; j++)
			fit(src + 32 * j, 32, 31, &scale[j], &offset[j]);
		k_scales(scale, offset, &d16, &dmin16, b->scales, sc, m);
		b->d = d16;
		b->dmin = dmin16;
		k_codes(src, d16, dmin16, sc, m, 31, q);
		memset(b->qh, 0, sizeof(b->qh));
		for (int g = 0; g < 4; g++) {
			for (int l = 0; l < 32; l++) {
				uint8_t lo = q[64 * g + l], hi = q[64 * g + 32 + l];

				b->qs[32 * g + l] = (uint8_t)((lo & 15) | (hi & 15) << 4);
				b->qh[l] |= (uint8_t)((lo >> 4) << (2 * g) | (hi >> 4) << (2 * g + 1));
			}
		}
	}
	return (size_t)(n / QK_K) * sizeof(*b);
}

size_t moe_q5_k_from_float(const float *src, void *dst, int64_t n)
{
	return q5_k_from_float(src, dst, n, fit_affine);
}

size_t moe_q5_k_from_float_ref(const float *src, void *dst, int64_t n)
{
	return q5_k_from_float(src, dst, n, fit_affine_ref);
}

/*
 * Q6_K sub-blocks of 16 are symmetric, q in [-32, 31]: try spacings that put
 * the largest element at -(32 +- 0.9), least-squares the scale for each.
 */
static float fit_symmetric6(const float *x)
{
	float max = signed_absmax(x, 16), best = INFINITY, scale = 0;

	if (max == 0)
		return 0;
	for (int is = -9; is <= 9; is++) {
		float iscale = -(32 + 0.1f * (float)is) / max, sxl = 0, sl2 = 0, a, err = 0;
		int q[16];

		for (int j = 0; j < 16; j++) {
			q[j] = qround(iscale * x[j], -32, 31);
			sxl += x[j] * (float)q[j];
			sl2 += (float)(q[j] * q[j]);
		}
		if (sl2 <= 0)
			continue;
		a = sxl / sl2;
		for (int j = 0; j < 16; j++) {
			float r = a * (float)q[j] - x[j];

			err += r * r;
		}
		if (err < best) {
			best = err;
			scale = a;
		}
	}
	return scale;
}

size_t moe_q6_k_from_float(const float *src, void *dst, int64_t n)
{
	struct block_q6_k *b = dst;

	for (int64_t i = 0; i < n / QK_K; i++, b++, src += QK_K) {
		float scale[16];
		uint8_t q[QK_K];

		for (int j = 0; j < 16; j++)
			scale[j] = fit_symmetric6(src + 16 * j);
		/* the largest scale maps to -128, as for Q4_0's values */
		float smax = signed_absmax(scale, 16);
		uint16_t d16 = moe_f32_to_f16(smax / -128);
		float d = moe_f16_to_f32(d16), id = d ? 1 / d : 0;

		b->d = d16;
		for (int j = 0; j < 16; j++) {
			b->scales[j] = (int8_t)qround(scale[j] * id, -128, 127);
			float de = d * (float)b->scales[j];

			for (int l = 0; l < 16; l++)
				q[16 * j + l] = (uint8_t)(de != 0 ?
					qround(src[16 * j + l] / de, -32, 31) + 32 : 32);
		}
		for (int h = 0; h < 2; h++) {
			const uint8_t *L = q + 128 * h;

			for (int l = 0; l < 32; l++) {
				b->ql[64 * h + l] = (uint8_t)((L[l] & 15) | (L[l + 64] & 15) << 4);
				b->ql[64 * h + l + 32] = (uint8_t)((L[l + 32] & 15) | (L[l + 96] & 15) << 4);
				b->qh[32 * h + l] = (uint8_t)((L[l] >> 4) | (L[l + 32] >> 4) << 2 |
							      (L[l + 64] >> 4) << 4 | (L[l + 96] >> 4) << 6);
			}
		}
	}
	return (size_t)(n / QK_K) * sizeof(*b);
}
