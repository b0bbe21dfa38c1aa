/* SPDX-License-Identifier: MIT */
/*
 * AVX-512 (F, BW, VL, DQ) dot products, included by kernels_avx512.c and,
 * with -mavx512vnni, by kernels_avx512vnni.c: with VNNI, VPDPBUSD/VPDPWSSD
 * sum byte and word products, and the mxfp4 and q4_K kernels join (without
 * VNNI they were no faster than AVX2's).  Integer products are exact, and
 * the floats are summed in the AVX2 kernels' lanes and order, so every
 * result here is the AVX2 kernel's bit for bit.  Only called after feature
 * detection (types.c).
 *
 * The includer defines AVX512_TABLE and AVX512_COUNT, the names of the
 * kernel table and its length.
 */
#include <immintrin.h>
#include <string.h>

#include "quant/blocks.h"
#include "quant/kernels.h"

static inline float hsum8(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

static inline float h2f(uint16_t h)
{
	return _cvtsh_ss(h);
}

static inline __m512i load64(const void *p)
{
	return _mm512_loadu_si512(p);
}

/* acc + the sums of adjacent pairs of i16 products p * s. */
static inline __m512i madd_acc(__m512i acc, __m512i p, __m512i s)
{
#ifdef __AVX512VNNI__
	return _mm512_dpwssd_epi32(acc, p, s);
#else
	return _mm512_add_epi32(acc, _mm512_madd_epi16(p, s));
#endif
}

/* ------------------------------------------------------------ float weights */

/*
 * Lanes 0..7 of acc0 and acc1 and lanes 8..15 of each are the four 8-lane
 * accumulators of the AVX2 kernel, filled in the same order and summed in
 * the same order, so the result is the AVX2 one bit for bit.
 */
static inline float float_sum(__m512 acc0, __m512 acc1)
{
	__m256 a0 = _mm512_castps512_ps256(acc0), a1 = _mm512_extractf32x8_ps(acc0, 1);
	__m256 a2 = _mm512_castps512_ps256(acc1), a3 = _mm512_extractf32x8_ps(acc1, 1);

	return hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

static void vec_dot_f32(int64_t n, float *out, const void *w, const void *a)
{
	const float *x = w, *y = a;
	__m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
	int64_t i = 0;
	float s;

	for (; i + 32 <= n; i += 32) {
		acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), acc0);
		acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16),
				       acc1);
	}
	for (; i + 8 <= n; i += 8)
		acc0 = _mm512_mask3_fmadd_ps(_mm512_castps256_ps512(_mm256_loadu_ps(x + i)),
					     _mm512_castps256_ps512(_mm256_loadu_ps(y + i)), acc0,
					     0x00ff);
	s = float_sum(acc0, acc1);
	for (; i < n; i++)
		s += x[i] * y[i];
	*out = s;
}

static inline __m512 load_f16x16(const uint8_t *p)
{
	return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static inline __m512 load_bf16x16(const uint8_t *p)
{
	__m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));

	return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

static inline __m512 load_f16x8(const uint8_t *p)
{
	return _mm512_castps256_ps512(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)));
}

static inline __m512 load_bf16x8(const uint8_t *p)
{
	__m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));

	return _mm512_castps256_ps512(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
}

#define FLOAT16_DOT(NAME, LOAD16, LOAD8, CVT)                                              \
	static void NAME(int64_t n, float *out, const void *w, const void *a)              \
	{                                                                                  \
		const uint8_t *x = w;                                                      \
		const float *y = a;                                                        \
		__m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();             \
		int64_t i = 0;                                                             \
		float s;                                                                   \
                                                                                           \
		for (; i + 32 <= n; i += 32) {                                             \
			acc0 = _mm512_fmadd_ps(LOAD16(x + 2 * i), _mm512_loadu_ps(y + i),  \
					       acc0);                                      \
			acc1 = _mm512_fmadd_ps(LOAD16(x + 2 * (i + 16)),                   \
					       _mm512_loadu_ps(y + i + 16), acc1);         \
		}                                                                          \
		for (; i + 8 <= n; i += 8)                                                 \
			acc0 = _mm512_mask3_fmadd_ps(                                      \
				LOAD8(x + 2 * i),                                          \
				_mm512_castps256_ps512(_mm256_loadu_ps(y + i)), acc0,      \
				0x00ff);                                                   \
		s = float_sum(acc0, acc1);                                                 \
		for (; i < n; i++) {                                                       \
			uint16_t h;                                                        \
                                                                                           \
			memcpy(&h, x + 2 * i, 2);                                          \
			s += CVT(h) * y[i];                                                \
		}                                                                          \
		*out = s;                                                                  \
	}

FLOAT16_DOT(vec_dot_f16, load_f16x16, load_f16x8, h2f)
FLOAT16_DOT(vec_dot_bf16, load_bf16x16, load_bf16x8, moe_bf16_to_f32)

#define Q4_0_SCALE(b) h2f((b).d)

/* ------------------------------------------------------------ K-quants */

/* The 8 scales and 8 mins of a Q4_K/Q5_K super-block as bytes 0..7 and 8..15. */
static inline __m128i k_scales_mins(const uint8_t *q)
{
	uint32_t u[4];

	memcpy(u, q, 12);
	u[3] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
	uint32_t mins_lo = u[1] & 0x3f3f3f3f;

	u[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
	u[2] = mins_lo;
	u[0] &= 0x3f3f3f3f;
	return _mm_loadu_si128((const __m128i *)u);
}

/* sum_j m_j * (bsums[2j] + bsums[2j+1]) as 4 i32 lanes. */
static inline __m128i k_mins_dot(__m128i scmin, const int16_t *bsums)
{
	__m256i b = _mm256_loadu_si256((const __m256i *)bsums);
	__m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));

	return _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_unpackhi_epi64(scmin, scmin)), pairs);
}

/*
 * The two halves of the 512-bit sums added: lane k then holds what lane k of
 * the AVX2 kernel's sums holds (integer sums, exact in any order), so the
 * float arithmetic after it is the AVX2 kernel's, bit for bit.
 */
static inline __m256i fold(__m512i v)
{
	return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

/* 32 i16 lanes: scale j in the low 16, scale k in the high 16. */
static inline __m512i scale_pair(__m512i sc16, int j, int k)
{
	__m512i idx = _mm512_inserti64x4(_mm512_set1_epi16((short)j), _mm256_set1_epi16((short)k),
					 1);

	return _mm512_permutexvar_epi16(idx, sc16);
}

/* Q5_K: Q4_K's layout plus bit 2g (low nibbles) and 2g+1 (high) of each qh byte. */
static inline __attribute__((always_inline)) __m512i q5_k_half(__m512i q, __m512i qh,
							       const int8_t *ay, __m512i sc16,
							       int g, __m512i sumi)
{
	const __m512i m4 = _mm512_set1_epi8(15), b5 = _mm512_set1_epi8(16);
	/* low 256 bits test the bits of group g, high 256 those of g+1 */
	const __m512i bl = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * g))),
					      _mm256_set1_epi8((char)(1 << (2 * g + 2))), 1);
	const __m512i bh = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * g + 1))),
					      _mm256_set1_epi8((char)(1 << (2 * g + 3))), 1);
	__m512i a0 = load64(ay + 64 * g), a1 = load64(ay + 64 * (g + 1));
	__m512i lo = _mm512_or_si512(_mm512_and_si512(q, m4),
				     _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(qh, bl), b5));
	__m512i hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(q, 4), m4),
				     _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(qh, bh), b5));
	__m512i plo = _mm512_maddubs_epi16(lo, _mm512_shuffle_i64x2(a0, a1, 0x44));
	__m512i phi = _mm512_maddubs_epi16(hi, _mm512_shuffle_i64x2(a0, a1, 0xee));

	sumi = madd_acc(sumi, plo, scale_pair(sc16, 2 * g, 2 * g + 2));
	return madd_acc(sumi, phi, scale_pair(sc16, 2 * g + 1, 2 * g + 3));
}

static void vec_dot_q5_k(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q5_k *x = w;
	const struct block_q8_k *y = a;
	__m256 acc = _mm256_setzero_ps();
	__m128 accm = _mm_setzero_ps();

	for (int64_t i = 0; i < n / QK_K; i++) {
		__m128i scmin = k_scales_mins(x[i].scales);
		__m512i sc16 = _mm512_zextsi128_si512(_mm_cvtepu8_epi16(scmin));
		/* the 32 qh bytes serve both halves of each 64-byte load */
		__m256i h = _mm256_loadu_si256((const __m256i *)x[i].qh);
		__m512i qh = _mm512_inserti64x4(_mm512_castsi256_si512(h), h, 1);
		__m512i sumi = q5_k_half(load64(x[i].qs), qh, y[i].qs, sc16, 0,
					 _mm512_setzero_si512());

		sumi = q5_k_half(load64(x[i].qs + 64), qh, y[i].qs, sc16, 2, sumi);
		acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d),
				      _mm256_cvtepi32_ps(fold(sumi)), acc);
		accm = _mm_fmadd_ps(_mm_set1_ps(h2f(x[i].dmin) * y[i].d),
				    _mm_cvtepi32_ps(k_mins_dot(scmin, y[i].bsums)), accm);
	}
	*out = hsum8(_mm256_sub_ps(acc, _mm256_insertf128_ps(_mm256_setzero_ps(), accm, 0)));
}

/* ------------------------------------------------------------ 32-element blocks */

/*
 * 256-bit vectors, the AVX2 kernels' lanes in their order, with two changes:
 * the block scales of 8 blocks are gathered and converted together (the
 * AVX2 kernels spend most of their time on scalar half-to-float work per
 * block), and VPDPBUSD sums the byte products where VNNI is compiled in.
 * The products of the scales are the same IEEE products, so the results are
 * the AVX2 ones bit for bit.  512-bit vectors were measured slower here: the
 * extra shuffles to pair blocks cost more than the width saved.
 */
static inline __m256i load32(const void *p)
{
	return _mm256_loadu_si256((const __m256i *)p);
}

/* Signed x times signed y (y never -128) summed in 8 i32 lanes, as AVX2's dot_i8. */
static inline __m256i dot_i8_y(__m256i x, __m256i y)
{
	__m256i ax = _mm256_sign_epi8(x, x), sy = _mm256_sign_epi8(y, x);

#ifdef __AVX512VNNI__
	return _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy);
#else
	return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
#endif
}

static inline __m256i nibbles32(const uint8_t *qs)
{
	__m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));

	x = _mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
	return _mm256_and_si256(x, _mm256_set1_epi8(15));
}

/*
 * The first 4 bytes of each of 8 blocks @stride bytes apart: a block's scale
 * and what follows it, all inside the block.
 */
static inline __m256i gather_u32x8(const void *p, int stride)
{
	const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
					       _mm256_set1_epi32(stride));

	return _mm256_i32gather_epi32((const int *)p, idx, 1);
}

static inline __m256 q8_0_scales8(const struct block_q8_0 *x)
{
	return _mm256_cvtph_ps(_mm256_cvtepi32_epi16(gather_u32x8(x, sizeof(*x))));
}

static inline __m256 q4_0_scales8(const struct block_q4_0 *x)
{
	return _mm256_cvtph_ps(_mm256_cvtepi32_epi16(gather_u32x8(x, sizeof(*x))));
}

static inline __m256 mxfp4_scales8(const struct block_mxfp4 *x)
{
	__m256i e = _mm256_and_si256(gather_u32x8(x, sizeof(*x)), _mm256_set1_epi32(0xff));
	/* e8m0_half[] computed: 2^(e-128) as (e-1) << 23, the two subnormals for e < 2 */
	__m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
	__m256i sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
	__m256i small = _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e);

	return _mm256_castsi256_ps(_mm256_blendv_epi8(normal, sub, small));
}

/* One block's sums scaled by lane @k of @s into @acc. */
#define BLOCK_STEP(acc, DECODE, xb, yb, s, k)                                              \
	acc = _mm256_fmadd_ps(_mm256_permutexvar_ps(_mm256_set1_epi32(k), s),              \
			      _mm256_cvtepi32_ps(dot_i8_y(DECODE((xb).qs), load32((yb).qs))),   \
			      acc)

#define BLOCK_DOT_Y(NAME, BLOCK, DECODE, SCALE, SCALES8)                                   \
	static void NAME(int64_t n, float *out, const void *w, const void *a)              \
	{                                                                                  \
		const struct BLOCK *x = w;                                                 \
		const struct block_q8_0 *y = a;                                            \
		__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();             \
		int64_t nb = n / QK, i = 0;                                                \
                                                                                           \
		for (; i + 8 <= nb; i += 8) {                                              \
			__m256 s = _mm256_mul_ps(SCALES8(x + i), q8_0_scales8(y + i));     \
                                                                                           \
			for (int k = 0; k < 8; k += 2) {                                   \
				BLOCK_STEP(acc0, DECODE, x[i + k], y[i + k], s, k);        \
				BLOCK_STEP(acc1, DECODE, x[i + k + 1], y[i + k + 1], s,    \
					   k + 1);                                         \
			}                                                                  \
		}                                                                          \
		for (; i + 2 <= nb; i += 2) {                                              \
			__m256i p0 = dot_i8_y(DECODE(x[i].qs), load32(y[i].qs));           \
			__m256i p1 = dot_i8_y(DECODE(x[i + 1].qs), load32(y[i + 1].qs));   \
                                                                                           \
			acc0 = _mm256_fmadd_ps(_mm256_set1_ps(SCALE(x[i]) * h2f(y[i].d)),  \
					       _mm256_cvtepi32_ps(p0), acc0);              \
			acc1 = _mm256_fmadd_ps(_mm256_set1_ps(SCALE(x[i + 1]) *            \
							      h2f(y[i + 1].d)),            \
					       _mm256_cvtepi32_ps(p1), acc1);              \
		}                                                                          \
		for (; i < nb; i++) {                                                      \
			__m256i p = dot_i8_y(DECODE(x[i].qs), load32(y[i].qs));            \
                                                                                           \
			acc0 = _mm256_fmadd_ps(_mm256_set1_ps(SCALE(x[i]) * h2f(y[i].d)),  \
					       _mm256_cvtepi32_ps(p), acc0);               \
		}                                                                          \
		*out = hsum8(_mm256_add_ps(acc0, acc1));                                   \
	}

#define Q8_0_Y(qs) load32(qs)
#define Q4_0_Y(qs) _mm256_sub_epi8(nibbles32(qs), _mm256_set1_epi8(8))
#define MXFP4_Y(qs) _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(                      \
		_mm_loadu_si128((const __m128i *)moe_mxfp4_k)), nibbles32(qs))
BLOCK_DOT_Y(vec_dot_q8_0, block_q8_0, Q8_0_Y, Q4_0_SCALE, q8_0_scales8)
BLOCK_DOT_Y(vec_dot_q4_0, block_q4_0, Q4_0_Y, Q4_0_SCALE, q4_0_scales8)
#ifdef __AVX512VNNI__
/* moe_e8m0_half() as a table: one load instead of a compare, two shifts and a select. */
#define E8(e) ((e) < 2 ? 0x00200000u << ((e) & 1) : (uint32_t)((e) - 1) << 23)
#define E8x4(e) E8(e), E8((e) + 1), E8((e) + 2), E8((e) + 3)
#define E8x16(e) E8x4(e), E8x4((e) + 4), E8x4((e) + 8), E8x4((e) + 12)
#define E8x64(e) E8x16(e), E8x16((e) + 16), E8x16((e) + 32), E8x16((e) + 48)
static const union {
	uint32_t u[256];
	float f[256];
} e8m0_half = { { E8x64(0), E8x64(64), E8x64(128), E8x64(192) } };

#define MXFP4_SCALE(b) e8m0_half.f[(b).e]

BLOCK_DOT_Y(vec_dot_mxfp4, block_mxfp4, MXFP4_Y, MXFP4_SCALE, mxfp4_scales8)
#endif

/*
 * Four weight rows against one activation row (decode): the activation block
 * is loaded and its scale converted once for the four rows, and the block
 * scales are broadcast straight from memory instead of gathered.  Each row
 * keeps the single-row kernel's two accumulators (even and odd blocks) and
 * the same scale products, so its result is vec_dot's bit for bit.
 */
static inline __m256 q8_0_scale_bcast(const struct block_q8_0 *x)
{
	return _mm256_cvtph_ps(_mm_set1_epi16((short)x->d));
}

#define BLOCK_R4_ROW(acc, BLOCK, DECODE, SCALEV, i, r)                                    \
	do {                                                                               \
		const struct BLOCK *x_ = (const struct BLOCK *)(wb + (r) * ws) + (i);      \
                                                                                           \
		acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(SCALEV(x_), dy_),                   \
					 _mm256_cvtepi32_ps(dot_i8_y(DECODE(x_->qs), qy_)), acc[r]); \
	} while (0)

#define BLOCK_R4_STEP(acc, BLOCK, DECODE, SCALEV, i)                                       \
	do {                                                                               \
		__m256i qy_ = load32(y[i].qs);                                             \
		__m256 dy_ = _mm256_cvtph_ps(_mm_set1_epi16((short)y[i].d));               \
                                                                                           \
		BLOCK_R4_ROW(acc, BLOCK, DECODE, SCALEV, i, 0);                            \
		BLOCK_R4_ROW(acc, BLOCK, DECODE, SCALEV, i, 1);                            \
		BLOCK_R4_ROW(acc, BLOCK, DECODE, SCALEV, i, 2);                            \
		BLOCK_R4_ROW(acc, BLOCK, DECODE, SCALEV, i, 3);                            \
	} while (0)

#define BLOCK_DOT_R4(NAME, BLOCK, DECODE, SCALEV)                                          \
	static void NAME(int64_t n, float *out, const void *w, size_t ws, const void *a)   \
	{                                                                                  \
		const uint8_t *wb = w;                                                     \
		const struct block_q8_0 *y = a;                                            \
		__m256 acc0[4], acc1[4];                                                   \
		int64_t nb = n / QK, i = 0;                                                \
                                                                                           \
		for (int r = 0; r < 4; r++)                                                \
			acc0[r] = acc1[r] = _mm256_setzero_ps();                           \
		for (; i + 2 <= nb; i += 2) {                                              \
			BLOCK_R4_STEP(acc0, BLOCK, DECODE, SCALEV, i);                     \
			BLOCK_R4_STEP(acc1, BLOCK, DECODE, SCALEV, i + 1);                 \
		}                                                                          \
		if (i < nb)                                                                \
			BLOCK_R4_STEP(acc0, BLOCK, DECODE, SCALEV, i);                     \
		for (int r = 0; r < 4; r++)                                                \
			out[r] = hsum8(_mm256_add_ps(acc0[r], acc1[r]));                   \
	}

BLOCK_DOT_R4(vec_dot_q8_0_r4, block_q8_0, Q8_0_Y, q8_0_scale_bcast)
#ifdef __AVX512VNNI__
#define MXFP4_SCALE_BCAST(x) _mm256_set1_ps(e8m0_half.f[(x)->e])
BLOCK_DOT_R4(vec_dot_mxfp4_r4, block_mxfp4, MXFP4_Y, MXFP4_SCALE_BCAST)
#endif

#ifdef __AVX512VNNI__
/* Q4_K as the AVX2 kernel, VPDPWSSD folding the scale products into the sums. */
static inline __m256i scale_bcast(__m256i sc16, int j)
{
	const __m256i idx = _mm256_set1_epi16((short)(2 * j | (2 * j + 1) << 8));

	return _mm256_shuffle_epi8(sc16, idx);
}

static inline __attribute__((always_inline)) __m256i q4_k_group(const uint8_t *qs,
								const int8_t *ay, __m256i sc16,
								int g, __m256i acc)
{
	const __m256i m4 = _mm256_set1_epi8(15);
	__m256i q = load32(qs + 32 * g);
	__m256i lo = _mm256_and_si256(q, m4);
	__m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
	__m256i p0 = _mm256_maddubs_epi16(lo, load32(ay + 64 * g));
	__m256i p1 = _mm256_maddubs_epi16(hi, load32(ay + 64 * g + 32));

	acc = _mm256_dpwssd_epi32(acc, p0, scale_bcast(sc16, 2 * g));
	return _mm256_dpwssd_epi32(acc, p1, scale_bcast(sc16, 2 * g + 1));
}

static void vec_dot_q4_k(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q4_k *x = w;
	const struct block_q8_k *y = a;
	__m256 acc = _mm256_setzero_ps();
	__m128 accm = _mm_setzero_ps();

	for (int64_t i = 0; i < n / QK_K; i++) {
		__m128i scmin = k_scales_mins(x[i].scales);
		__m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scmin));
		__m256i sumi = _mm256_setzero_si256();

		/* integer sums: any grouping gives the AVX2 kernel's lanes exactly */
		sumi = q4_k_group(x[i].qs, y[i].qs, sc16, 0, sumi);
		sumi = q4_k_group(x[i].qs, y[i].qs, sc16, 1, sumi);
		sumi = q4_k_group(x[i].qs, y[i].qs, sc16, 2, sumi);
		sumi = q4_k_group(x[i].qs, y[i].qs, sc16, 3, sumi);
		acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d),
				      _mm256_cvtepi32_ps(sumi), acc);
		accm = _mm_fmadd_ps(_mm_set1_ps(h2f(x[i].dmin) * y[i].d),
				    _mm_cvtepi32_ps(k_mins_dot(scmin, y[i].bsums)), accm);
	}
	*out = hsum8(_mm256_sub_ps(acc, _mm256_insertf128_ps(_mm256_setzero_ps(), accm, 0)));
}

/*
 * Q4_K, four rows against one activation row: the super-block's activations,
 * paired for 512-bit products (sub-blocks 2h and 2h+2 in one vector, as
 * q5_k_half), and its pairs of block sums are prepared once for the four
 * rows.  Integer sums folded to the AVX2 kernel's lanes, then its float
 * arithmetic: every row's result is vec_dot_q4_k's bit for bit.
 */
static inline __attribute__((always_inline)) void q4_k_r4_row(const struct block_q4_k *x,
								const __m512i *ay, __m128i pairs,
								float yd, __m256 *acc,
								__m128 *accm)
{
	const __m512i m4 = _mm512_set1_epi8(15);
	__m128i scmin = k_scales_mins(x->scales);
	__m512i sc16 = _mm512_zextsi128_si512(_mm_cvtepu8_epi16(scmin));
	__m128i mins = _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_unpackhi_epi64(scmin, scmin)), pairs);
	__m512i q0 = load64(x->qs), q1 = load64(x->qs + 64);
	__m512i sumi;

	/* q0: groups 0 (low 256 bits) and 1; its low nibbles are sub-blocks 0 and 2 */
	sumi = _mm512_dpwssd_epi32(_mm512_setzero_si512(),
				   _mm512_maddubs_epi16(_mm512_and_si512(q0, m4), ay[0]),
				   scale_pair(sc16, 0, 2));
	sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(_mm512_and_si512(
					   _mm512_srli_epi16(q0, 4), m4), ay[1]),
				   scale_pair(sc16, 1, 3));
	sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(_mm512_and_si512(q1, m4), ay[2]),
				   scale_pair(sc16, 4, 6));
	sumi = _mm512_dpwssd_epi32(sumi, _mm512_maddubs_epi16(_mm512_and_si512(
					   _mm512_srli_epi16(q1, 4), m4), ay[3]),
				   scale_pair(sc16, 5, 7));
	*acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x->d) * yd), _mm256_cvtepi32_ps(fold(sumi)),
			       *acc);
	*accm = _mm_fmadd_ps(_mm_set1_ps(h2f(x->dmin) * yd), _mm_cvtepi32_ps(mins), *accm);
}

static void vec_dot_q4_k_r4(int64_t n, float *out, const void *w, size_t ws, const void *a)
{
	const struct block_q4_k *x0 = w, *x1 = (const void *)((const uint8_t *)w + ws);
	const struct block_q4_k *x2 = (const void *)((const uint8_t *)w + 2 * ws);
	const struct block_q4_k *x3 = (const void *)((const uint8_t *)w + 3 * ws);
	const struct block_q8_k *y = a;
	__m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
	__m128 accm0 = _mm_setzero_ps(), accm1 = accm0, accm2 = accm0, accm3 = accm0;

	for (int64_t i = 0; i < n / QK_K; i++) {
		__m256i b = _mm256_loadu_si256((const __m256i *)y[i].bsums);
		__m128i pairs = _mm_hadd_epi16(_mm256_castsi256_si128(b),
					       _mm256_extracti128_si256(b, 1));
		__m512i a0 = load64(y[i].qs), a1 = load64(y[i].qs + 64);
		__m512i a2 = load64(y[i].qs + 128), a3 = load64(y[i].qs + 192);
		__m512i ay[4] = {
			_mm512_shuffle_i64x2(a0, a1, 0x44), _mm512_shuffle_i64x2(a0, a1, 0xee),
			_mm512_shuffle_i64x2(a2, a3, 0x44), _mm512_shuffle_i64x2(a2, a3, 0xee),
		};

		q4_k_r4_row(x0 + i, ay, pairs, y[i].d, &acc0, &accm0);
		q4_k_r4_row(x1 + i, ay, pairs, y[i].d, &acc1, &accm1);
		q4_k_r4_row(x2 + i, ay, pairs, y[i].d, &acc2, &accm2);
		q4_k_r4_row(x3 + i, ay, pairs, y[i].d, &acc3, &accm3);
	}
#define Q4K_R4_OUT(r)                                                                      \
	out[r] = hsum8(_mm256_sub_ps(acc##r, _mm256_insertf128_ps(_mm256_setzero_ps(), accm##r, 0)))
	Q4K_R4_OUT(0);
	Q4K_R4_OUT(1);
	Q4K_R4_OUT(2);
	Q4K_R4_OUT(3);
#undef Q4K_R4_OUT
}

/*
 * Q6_K, four rows against one activation row.  The two 128-element halves
 * of a super-block share 512-bit vectors (half 0 in the low 256 bits); a
 * 32-element part sums q * a with VPDPBUSD (q unsigned, 0..63), takes off
 * 32 * a over the same four elements (shared by the rows) and multiplies
 * by its scales: the AVX2 kernel's lanes exactly, once folded, then its
 * float arithmetic, so each row is vec_dot_q6_k's result bit for bit.
 */
static inline __attribute__((always_inline)) void q6_k_r4_row(const struct block_q6_k *x,
								const __m512i *ay, const __m512i *a32,
								float yd, __m256 *acc)
{
	const __m512i m4 = _mm512_set1_epi8(15), m2 = _mm512_set1_epi8(0x30);
	__m512i A = load64(x->ql), B = load64(x->ql + 64), hb = load64(x->qh);
	__m512i l0 = _mm512_shuffle_i64x2(A, B, 0x44), l1 = _mm512_shuffle_i64x2(A, B, 0xee);
	__m512i sc = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)x->scales));
	__m512i q[4], sumi = _mm512_setzero_si512();

	q[0] = _mm512_or_si512(_mm512_and_si512(l0, m4),
			       _mm512_and_si512(_mm512_slli_epi16(hb, 4), m2));
	q[1] = _mm512_or_si512(_mm512_and_si512(l1, m4),
			       _mm512_and_si512(_mm512_slli_epi16(hb, 2), m2));
	q[2] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l0, 4), m4),
			       _mm512_and_si512(hb, m2));
	q[3] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m4),
			       _mm512_and_si512(_mm512_srli_epi16(hb, 2), m2));
#define Q6K_R4_PART(g)                                                                     \
	do {                                                                               \
		/* 128-bit quarters: scales 2g, 2g+1 of half 0, then of half 1 */          \
		const __m512i idx_ = _mm512_setr_epi32(2 * (g), 2 * (g), 2 * (g), 2 * (g), \
			2 * (g) + 1, 2 * (g) + 1, 2 * (g) + 1, 2 * (g) + 1,               \
			8 + 2 * (g), 8 + 2 * (g), 8 + 2 * (g), 8 + 2 * (g),               \
			9 + 2 * (g), 9 + 2 * (g), 9 + 2 * (g), 9 + 2 * (g));              \
		__m512i d_ = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[g], ay[g]);     \
                                                                                           \
		sumi = _mm512_add_epi32(sumi, _mm512_mullo_epi32(_mm512_sub_epi32(d_, a32[g]), \
					_mm512_permutexvar_epi32(idx_, sc)));              \
	} while (0)
	Q6K_R4_PART(0);
	Q6K_R4_PART(1);
	Q6K_R4_PART(2);
	Q6K_R4_PART(3);
#undef Q6K_R4_PART
	*acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x->d) * yd), _mm256_cvtepi32_ps(fold(sumi)),
			       *acc);
}

static void vec_dot_q6_k_r4(int64_t n, float *out, const void *w, size_t ws, const void *a)
{
	const struct block_q6_k *x0 = w, *x1 = (const void *)((const uint8_t *)w + ws);
	const struct block_q6_k *x2 = (const void *)((const uint8_t *)w + 2 * ws);
	const struct block_q6_k *x3 = (const void *)((const uint8_t *)w + 3 * ws);
	const struct block_q8_k *y = a;
	const __m512i k32 = _mm512_set1_epi8(32);
	__m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;

	for (int64_t i = 0; i < n / QK_K; i++) {
		__m512i ay[4], a32[4];

		for (int g = 0; g < 4; g++) {
			ay[g] = _mm512_inserti64x4(_mm512_castsi256_si512(load32(y[i].qs + 32 * g)),
						   load32(y[i].qs + 128 + 32 * g), 1);
			a32[g] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), k32, ay[g]);
		}
		q6_k_r4_row(x0 + i, ay, a32, y[i].d, &acc0);
		q6_k_r4_row(x1 + i, ay, a32, y[i].d, &acc1);
		q6_k_r4_row(x2 + i, ay, a32, y[i].d, &acc2);
		q6_k_r4_row(x3 + i, ay, a32, y[i].d, &acc3);
	}
	out[0] = hsum8(acc0);
	out[1] = hsum8(acc1);
	out[2] = hsum8(acc2);
	out[3] = hsum8(acc3);
}
#endif

/* ------------------------------------------------------------ table */

const struct moe_simd_kernels AVX512_TABLE[] = {
	{ .type = MOE_TYPE_F32, .vec_dot = vec_dot_f32 },
	{ .type = MOE_TYPE_F16, .vec_dot = vec_dot_f16 },
	{ .type = MOE_TYPE_BF16, .vec_dot = vec_dot_bf16 },
	{ .type = MOE_TYPE_Q4_0, .vec_dot = vec_dot_q4_0 },
	{ .type = MOE_TYPE_Q8_0, .vec_dot = vec_dot_q8_0, .vec_dot_r4 = vec_dot_q8_0_r4 },
#ifdef __AVX512VNNI__
	/* without VNNI 0.94x of AVX2's, whose table lookup of the scale is cheap already */
	{ .type = MOE_TYPE_MXFP4, .vec_dot = vec_dot_mxfp4, .vec_dot_r4 = vec_dot_mxfp4_r4 },
	{ .type = MOE_TYPE_Q4_K, .vec_dot = vec_dot_q4_k, .vec_dot_r4 = vec_dot_q4_k_r4 },
	/* the single-row kernel stays AVX2's, whose bits these rows give */
	{ .type = MOE_TYPE_Q6_K, .vec_dot_r4 = vec_dot_q6_k_r4 },
#endif
	{ .type = MOE_TYPE_Q5_K, .vec_dot = vec_dot_q5_k },
};
const int AVX512_COUNT = (int)(sizeof(AVX512_TABLE) / sizeof(AVX512_TABLE[0]));
