/* SPDX-License-Identifier: MIT */
/*
 * AVX2+FMA+F16C dot products.  Integer products are exact, so these differ
 * from the scalar reference only in the order floats are summed.  Built with
 * -mavx2 -mfma -mf16c and only called after CPU feature detection.
 */
#include <immintrin.h>
#include <math.h>

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

/* 16 packed bytes -> 32 nibbles in element order: low nibbles 0..15, high 16..31. */
static inline __m256i nibbles32(const uint8_t *qs)
{
	/* both lanes hold the 16 bytes; the upper lane is shifted to its high nibbles */
	__m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));

	x = _mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
	return _mm256_and_si256(x, _mm256_set1_epi8(15));
}

/* The 32 bits of a Q5 qh word as 32 bytes of 0x10 or 0. */
static inline __m256i fifth_bits32(const uint8_t *qh)
{
	const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
					       0x0101010101010101, 0);
	const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
	__m256i x = _mm256_shuffle_epi8(_mm256_set1_epi32((int)moe_load_u32le(qh)), shuf);

	x = _mm256_cmpeq_epi8(_mm256_and_si256(x, bit), bit);
	return _mm256_and_si256(x, _mm256_set1_epi8(16));
}

/* Signed x times signed y (y never -128) summed in 8 i32 lanes. */
static inline __m256i dot_i8(__m256i x, __m256i y)
{
	__m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));

	return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* Unsigned x (< 128) times signed y summed in 8 i32 lanes. */
static inline __m256i dot_u8(__m256i x, __m256i y)
{
	return _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
}

static inline __m256i load32(const void *p)
{
	return _mm256_loadu_si256((const __m256i *)p);
}

/* ------------------------------------------------------------ float weights */

static void vec_dot_f32(int64_t n, float *out, const void *w, const void *a)
{
	const float *x = w, *y = a;
	__m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
			  _mm256_setzero_ps() };
	int64_t i = 0;
	float s;

	for (; i + 32 <= n; i += 32)
		for (int k = 0; k < 4; k++)
			acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8 * k),
						 _mm256_loadu_ps(y + i + 8 * k), acc[k]);
	for (; i + 8 <= n; i += 8)
		acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc[0]);
	s = hsum8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
	for (; i < n; i++)
		s += x[i] * y[i];
	*out = s;
}

static inline __m256 load_f16x8(const uint8_t *p)
{
	return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline __m256 load_bf16x8(const uint8_t *p)
{
	__m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));

	return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

#define FLOAT16_DOT(NAME, LOAD, CVT)                                                       \
	static void NAME(int64_t n, float *out, const void *w, const void *a)              \
	{                                                                                  \
		const uint8_t *x = w;                                                      \
		const float *y = a;                                                        \
		__m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(),                \
				  _mm256_setzero_ps(), _mm256_setzero_ps() };              \
		int64_t i = 0;                                                             \
		float s;                                                                   \
                                                                                           \
		for (; i + 32 <= n; i += 32)                                               \
			for (int k = 0; k < 4; k++)                                        \
				acc[k] = _mm256_fmadd_ps(LOAD(x + 2 * (i + 8 * k)),        \
							 _mm256_loadu_ps(y + i + 8 * k),   \
							 acc[k]);                          \
		for (; i + 8 <= n; i += 8)                                                 \
			acc[0] = _mm256_fmadd_ps(LOAD(x + 2 * i), _mm256_loadu_ps(y + i),  \
						 acc[0]);                                  \
		s = hsum8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]),                     \
					_mm256_add_ps(acc[2], acc[3])));                   \
		for (; i < n; i++) {                                                       \
			uint16_t h;                                                        \
                                                                                           \
			memcpy(&h, x + 2 * i, 2);                                          \
			s += CVT(h) * y[i];                                                \
		}                                                                          \
		*out = s;                                                                  \
	}

FLOAT16_DOT(vec_dot_f16, load_f16x8, h2f)
FLOAT16_DOT(vec_dot_bf16, load_bf16x8, moe_bf16_to_f32)

/* ------------------------------------------------------------ 32-element blocks */

static void vec_dot_q8_0(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q8_0 *x = w, *y = a;
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	int64_t nb = n / QK, i = 0;

	for (; i + 2 <= nb; i += 2) {
		__m256i p0 = dot_i8(load32(x[i].qs), load32(y[i].qs));
		__m256i p1 = dot_i8(load32(x[i + 1].qs), load32(y[i + 1].qs));

		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)),
				       _mm256_cvtepi32_ps(p0), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i + 1].d) * h2f(y[i + 1].d)),
				       _mm256_cvtepi32_ps(p1), acc1);
	}
	for (; i < nb; i++) {
		__m256i p = dot_i8(load32(x[i].qs), load32(y[i].qs));

		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)),
				       _mm256_cvtepi32_ps(p), acc0);
	}
	*out = hsum8(_mm256_add_ps(acc0, acc1));
}

static void vec_dot_q4_0(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q4_0 *x = w;
	const struct block_q8_0 *y = a;
	const __m256i off = _mm256_set1_epi8(8);
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	int64_t nb = n / QK, i = 0;

	for (; i + 2 <= nb; i += 2) {
		__m256i q0 = _mm256_sub_epi8(nibbles32(x[i].qs), off);
		__m256i q1 = _mm256_sub_epi8(nibbles32(x[i + 1].qs), off);
		__m256i p0 = dot_i8(q0, load32(y[i].qs));
		__m256i p1 = dot_i8(q1, load32(y[i + 1].qs));

		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)),
				       _mm256_cvtepi32_ps(p0), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i + 1].d) * h2f(y[i + 1].d)),
				       _mm256_cvtepi32_ps(p1), acc1);
	}
	for (; i < nb; i++) {
		__m256i q = _mm256_sub_epi8(nibbles32(x[i].qs), off);
		__m256i p = dot_i8(q, load32(y[i].qs));

		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)),
				       _mm256_cvtepi32_ps(p), acc0);
	}
	*out = hsum8(_mm256_add_ps(acc0, acc1));
}

/* moe_e8m0_half() as a table: one load instead of a compare, two shifts and a select. */
#define E8(e) ((e) < 2 ? 0x00200000u << ((e) & 1) : (uint32_t)((e) - 1) << 23)
#define E8x4(e) E8(e), E8((e) + 1), E8((e) + 2), E8((e) + 3)
#define E8x16(e) E8x4(e), E8x4((e) + 4), E8x4((e) + 8), E8x4((e) + 12)
#define E8x64(e) E8x16(e), E8x16((e) + 16), E8x16((e) + 32), E8x16((e) + 48)
static const union {
	uint32_t u[256];
	float f[256];
} e8m0_half = { { E8x64(0), E8x64(64), E8x64(128), E8x64(192) } };

static void vec_dot_mxfp4(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_mxfp4 *x = w;
	const struct block_q8_0 *y = a;
	const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)moe_mxfp4_k));
	__m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
	int64_t nb = n / QK, i = 0;

	for (; i + 2 <= nb; i += 2) {
		__m256i q0 = _mm256_shuffle_epi8(lut, nibbles32(x[i].qs));
		__m256i q1 = _mm256_shuffle_epi8(lut, nibbles32(x[i + 1].qs));
		__m256i p0 = dot_i8(q0, load32(y[i].qs));
		__m256i p1 = dot_i8(q1, load32(y[i + 1].qs));

		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(e8m0_half.f[x[i].e] * h2f(y[i].d)),
				       _mm256_cvtepi32_ps(p0), acc0);
		acc1 = _mm256_fmadd_ps(_mm256_set1_ps(e8m0_half.f[x[i + 1].e] * h2f(y[i + 1].d)),
				       _mm256_cvtepi32_ps(p1), acc1);
	}
	for (; i < nb; i++) {
		__m256i q = _mm256_shuffle_epi8(lut, nibbles32(x[i].qs));
		__m256i p = dot_i8(q, load32(y[i].qs));

		acc0 = _mm256_fmadd_ps(_mm256_set1_ps(e8m0_half.f[x[i].e] * h2f(y[i].d)),
				       _mm256_cvtepi32_ps(p), acc0);
	}
	*out = hsum8(_mm256_add_ps(acc0, acc1));
}

static void vec_dot_q5_0(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q5_0 *x = w;
	const struct block_q8_0 *y = a;
	const __m256i off = _mm256_set1_epi8(16);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < n / QK; i++) {
		__m256i q = _mm256_or_si256(nibbles32(x[i].qs), fifth_bits32(x[i].qh));
		__m256i p = dot_i8(_mm256_sub_epi8(q, off), load32(y[i].qs));

		acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)),
				      _mm256_cvtepi32_ps(p), acc);
	}
	*out = hsum8(acc);
}

/* Affine blocks: d*dy*sum(q*a) + m*dy*sum(a), both sums kept in vectors. */
static void vec_dot_q4_1(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q4_1 *x = w;
	const struct block_q8_0 *y = a;
	const __m256i one = _mm256_set1_epi8(1);
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();

	for (int64_t i = 0; i < n / QK; i++) {
		__m256i qy = load32(y[i].qs);
		__m256i p = dot_u8(nibbles32(x[i].qs), qy);
		__m256i sy = dot_u8(one, qy);
		float dy = h2f(y[i].d);

		acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * dy), _mm256_cvtepi32_ps(p), acc);
		accm = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].m) * dy), _mm256_cvtepi32_ps(sy),
				       accm);
	}
	*out = hsum8(_mm256_add_ps(acc, accm));
}

static void vec_dot_q5_1(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q5_1 *x = w;
	const struct block_q8_0 *y = a;
	const __m256i one = _mm256_set1_epi8(1);
	__m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();

	for (int64_t i = 0; i < n / QK; i++) {
		__m256i qy = load32(y[i].qs);
		__m256i q = _mm256_or_si256(nibbles32(x[i].qs), fifth_bits32(x[i].qh));
		__m256i p = dot_u8(q, qy);
		__m256i sy = dot_u8(one, qy);
		float dy = h2f(y[i].d);

		acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * dy), _mm256_cvtepi32_ps(p), acc);
		accm = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].m) * dy), _mm256_cvtepi32_ps(sy),
				       accm);
	}
	*out = hsum8(_mm256_add_ps(acc, accm));
}

/* ------------------------------------------------------------ K-quants */

/*
 * The 8 scales and 8 mins of a Q4_K/Q5_K super-block as bytes 0..7 and 8..15
 * of one vector, rearranged with 32-bit masks instead of per-byte branches.
 */
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

/* Byte-shuffle masks that broadcast 16-bit scale j (of 8) across a 256-bit vector. */
static inline __m256i scale_bcast(__m256i sc16, int j)
{
	const __m256i idx = _mm256_set1_epi16((short)(2 * j | (2 * j + 1) << 8));

	return _mm256_shuffle_epi8(sc16, idx);
}

/* One 64-element group g of Q4_K: sub-blocks 2g (low nibbles) and 2g+1 (high). */
static inline __attribute__((always_inline)) __m256i q4_k_group(const uint8_t *qs,
								const int8_t *ay, __m256i sc16,
								int g)
{
	const __m256i m4 = _mm256_set1_epi8(15);
	__m256i q = load32(qs + 32 * g);
	__m256i lo = _mm256_and_si256(q, m4);
	__m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
	__m256i p0 = _mm256_maddubs_epi16(lo, load32(ay + 64 * g));
	__m256i p1 = _mm256_maddubs_epi16(hi, load32(ay + 64 * g + 32));

	p0 = _mm256_madd_epi16(p0, scale_bcast(sc16, 2 * g));
	p1 = _mm256_madd_epi16(p1, scale_bcast(sc16, 2 * g + 1));
	return _mm256_add_epi32(p0, p1);
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
		/* written out so that the shuffle masks are constants */
		__m256i s01 = _mm256_add_epi32(q4_k_group(x[i].qs, y[i].qs, sc16, 0),
					       q4_k_group(x[i].qs, y[i].qs, sc16, 1));
		__m256i s23 = _mm256_add_epi32(q4_k_group(x[i].qs, y[i].qs, sc16, 2),
					       q4_k_group(x[i].qs, y[i].qs, sc16, 3));
		__m256i sumi = _mm256_add_epi32(s01, s23);

		acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d),
				      _mm256_cvtepi32_ps(sumi), acc);
		accm = _mm_fmadd_ps(_mm_set1_ps(h2f(x[i].dmin) * y[i].d),
				    _mm_cvtepi32_ps(k_mins_dot(scmin, y[i].bsums)), accm);
	}
	*out = hsum8(_mm256_sub_ps(acc, _mm256_insertf128_ps(_mm256_setzero_ps(), accm, 0)));
}

/* Q5_K group g: Q4_K's plus the 5th bits 2g and 2g+1 of qh. */
static inline __attribute__((always_inline)) __m256i q5_k_group(const uint8_t *qs, __m256i qh,
								const int8_t *ay, __m256i sc16,
								int g)
{
	const __m256i m4 = _mm256_set1_epi8(15), b5 = _mm256_set1_epi8(16);
	const __m256i bl = _mm256_set1_epi8((char)(1 << (2 * g)));
	const __m256i bh = _mm256_set1_epi8((char)(1 << (2 * g + 1)));
	__m256i q = load32(qs + 32 * g);
	__m256i hl = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bl), bl), b5);
	__m256i hh = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bh), bh), b5);
	__m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), hl);
	__m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), hh);
	__m256i p0 = _mm256_maddubs_epi16(lo, load32(ay + 64 * g));
	__m256i p1 = _mm256_maddubs_epi16(hi, load32(ay + 64 * g + 32));

	p0 = _mm256_madd_epi16(p0, scale_bcast(sc16, 2 * g));
	p1 = _mm256_madd_epi16(p1, scale_bcast(sc16, 2 * g + 1));
	return _mm256_add_epi32(p0, p1);
}

static void vec_dot_q5_k(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q5_k *x = w;
	const struct block_q8_k *y = a;
	__m256 acc = _mm256_setzero_ps();
	__m128 accm = _mm_setzero_ps();

	for (int64_t i = 0; i < n / QK_K; i++) {
		__m128i scmin = k_scales_mins(x[i].scales);
		__m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scmin));
		__m256i qh = load32(x[i].qh);
		__m256i s01 = _mm256_add_epi32(q5_k_group(x[i].qs, qh, y[i].qs, sc16, 0),
					       q5_k_group(x[i].qs, qh, y[i].qs, sc16, 1));
		__m256i s23 = _mm256_add_epi32(q5_k_group(x[i].qs, qh, y[i].qs, sc16, 2),
					       q5_k_group(x[i].qs, qh, y[i].qs, sc16, 3));
		__m256i sumi = _mm256_add_epi32(s01, s23);

		acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d),
				      _mm256_cvtepi32_ps(sumi), acc);
		accm = _mm_fmadd_ps(_mm_set1_ps(h2f(x[i].dmin) * y[i].d),
				    _mm_cvtepi32_ps(k_mins_dot(scmin, y[i].bsums)), accm);
	}
	*out = hsum8(_mm256_sub_ps(acc, _mm256_insertf128_ps(_mm256_setzero_ps(), accm, 0)));
}

/* q in [-32, 31] times activations, 16-element halves scaled by lo and hi. */
static inline __m256i q6_part(__m256i q, const int8_t *ay, int lo, int hi)
{
	__m256i qs = _mm256_sub_epi8(q, _mm256_set1_epi8(32));
	__m256i ya = load32(ay);
	__m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(qs, qs), _mm256_sign_epi8(ya, qs));
	__m256i s = _mm256_set_m128i(_mm_set1_epi16((short)hi), _mm_set1_epi16((short)lo));

	return _mm256_madd_epi16(p, s);
}

static void vec_dot_q6_k(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q6_k *x = w;
	const struct block_q8_k *y = a;
	const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(0x30);
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < n / QK_K; i++) {
		__m256i sumi = _mm256_setzero_si256();

		for (int h = 0; h < 2; h++) {
			const int8_t *sc = x[i].scales + 8 * h, *ay = y[i].qs + 128 * h;
			__m256i l0 = load32(x[i].ql + 64 * h), l1 = load32(x[i].ql + 64 * h + 32);
			__m256i hb = load32(x[i].qh + 32 * h);
			__m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, m4),
						     _mm256_and_si256(_mm256_slli_epi16(hb, 4), m2));
			__m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, m4),
						     _mm256_and_si256(_mm256_slli_epi16(hb, 2), m2));
			__m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
						     _mm256_and_si256(hb, m2));
			__m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
						     _mm256_and_si256(_mm256_srli_epi16(hb, 2), m2));

			sumi = _mm256_add_epi32(sumi, q6_part(q0, ay, sc[0], sc[1]));
			sumi = _mm256_add_epi32(sumi, q6_part(q1, ay + 32, sc[2], sc[3]));
			sumi = _mm256_add_epi32(sumi, q6_part(q2, ay + 64, sc[4], sc[5]));
			sumi = _mm256_add_epi32(sumi, q6_part(q3, ay + 96, sc[6], sc[7]));
		}
		acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * y[i].d),
				      _mm256_cvtepi32_ps(sumi), acc);
	}
	*out = hsum8(acc);
}

static void vec_dot_q8_k(int64_t n, float *out, const void *w, const void *a)
{
	const struct block_q8_k *x = w, *y = a;
	__m256 acc = _mm256_setzero_ps();

	for (int64_t i = 0; i < n / QK_K; i++) {
		__m256i sumi = _mm256_setzero_si256();

		for (int k = 0; k < QK_K; k += 32)
			sumi = _mm256_add_epi32(sumi, dot_i8(load32(x[i].qs + k), load32(y[i].qs + k)));
		acc = _mm256_fmadd_ps(_mm256_set1_ps(x[i].d * y[i].d), _mm256_cvtepi32_ps(sumi), acc);
	}
	*out = hsum8(acc);
}

/* ------------------------------------------------------------ four tokens at once */

/*
 * Prefill and expert-grouped products dot one weight row with several
 * tokens: these decode each weight block once for 4 activation rows.  Per
 * token the arithmetic is that of the single-token kernels above.  Decoding
 * once gains most for q4_0, q4_K and q6_K (1.2x for q4_0 and q4_K in cache);
 * for q8_0 and mxfp4 the gain is the activation blocks staying in registers
 * and L1 across four rows' worth of tokens, small in cache.
 */
#define ACT(T, t) ((const T *)((const uint8_t *)a + (size_t)(t) * a_stride))

static inline void store4(float *out, size_t stride, const __m256 *acc)
{
	for (int t = 0; t < 4; t++)
		out[(size_t)t * stride] = hsum8(acc[t]);
}

/* Signed weights qx (|qx| precomputed) against 4 tokens' q8_0 blocks at index i. */
static inline void q8_0_x4_block(__m256i qx, __m256i ax, float dx, const void *a,
				 size_t a_stride, int64_t i, __m256 *acc)
{
	for (int t = 0; t < 4; t++) {
		const struct block_q8_0 *y = ACT(struct block_q8_0, t) + i;
		__m256i p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(load32(y->qs), qx));

		p = _mm256_madd_epi16(p, _mm256_set1_epi16(1));
		acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dx * h2f(y->d)), _mm256_cvtepi32_ps(p),
					 acc[t]);
	}
}

static void vec_dot_q4_0_x4(int64_t n, float *out, size_t out_stride, const void *w,
			    const void *a, size_t a_stride)
{
	const struct block_q4_0 *x = w;
	const __m256i off = _mm256_set1_epi8(8);
	__m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
			  _mm256_setzero_ps() };

	for (int64_t i = 0; i < n / QK; i++) {
		__m256i qx = _mm256_sub_epi8(nibbles32(x[i].qs), off);

		q8_0_x4_block(qx, _mm256_sign_epi8(qx, qx), h2f(x[i].d), a, a_stride, i, acc);
	}
	store4(out, out_stride, acc);
}

static void vec_dot_q4_k_x4(int64_t n, float *out, size_t out_stride, const void *w,
			    const void *a, size_t a_stride)
{
	const struct block_q4_k *x = w;
	const __m256i m4 = _mm256_set1_epi8(15);
	__m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
			  _mm256_setzero_ps() };
	__m128 accm[4] = { _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(),
			   _mm_setzero_ps() };

	for (int64_t i = 0; i < n / QK_K; i++) {
		__m128i scmin = k_scales_mins(x[i].scales);
		__m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(scmin));
		__m256i sumi[4] = { _mm256_setzero_si256(), _mm256_setzero_si256(),
				    _mm256_setzero_si256(), _mm256_setzero_si256() };
		float d = h2f(x[i].d), dmin = h2f(x[i].dmin);

#define Q4K_GROUP(g)                                                                         \
		do {                                                                         \
			__m256i q = load32(x[i].qs + 32 * (g));                              \
			__m256i lo = _mm256_and_si256(q, m4);                                \
			__m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);          \
			__m256i s0 = scale_bcast(sc16, 2 * (g)), s1 = scale_bcast(sc16, 2 * (g) + 1); \
			for (int t = 0; t < 4; t++) {                                        \
				const int8_t *ay = ACT(struct block_q8_k, t)[i].qs + 64 * (g); \
				__m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load32(ay)), s0); \
				__m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load32(ay + 32)), s1); \
				sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p0, p1)); \
			}                                                                    \
		} while (0)
		Q4K_GROUP(0);
		Q4K_GROUP(1);
		Q4K_GROUP(2);
		Q4K_GROUP(3);
#undef Q4K_GROUP
		for (int t = 0; t < 4; t++) {
			const struct block_q8_k *y = ACT(struct block_q8_k, t) + i;

			acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y->d), _mm256_cvtepi32_ps(sumi[t]),
						 acc[t]);
			accm[t] = _mm_fmadd_ps(_mm_set1_ps(dmin * y->d),
					       _mm_cvtepi32_ps(k_mins_dot(scmin, y->bsums)), accm[t]);
		}
	}
	for (int t = 0; t < 4; t++)
		acc[t] = _mm256_sub_ps(acc[t], _mm256_insertf128_ps(_mm256_setzero_ps(), accm[t], 0));
	store4(out, out_stride, acc);
}

/*
 * The same for block types whose single-token kernel sums even and odd
 * blocks apart (q8_0, mxfp4): two accumulators per token, in that order, so
 * every token's result is the single-token kernel's bit for bit and a
 * product does not depend on how many tokens an expert got.
 */
static inline void store4_pairs(float *out, size_t stride, const __m256 *acc0,
				const __m256 *acc1)
{
	for (int t = 0; t < 4; t++)
		out[(size_t)t * stride] = hsum8(_mm256_add_ps(acc0[t], acc1[t]));
}

static void vec_dot_q8_0_x4(int64_t n, float *out, size_t out_stride, const void *w,
			    const void *a, size_t a_stride)
{
	const struct block_q8_0 *x = w;
	__m256 acc0[4], acc1[4];
	int64_t nb = n / QK, i = 0;

	for (int t = 0; t < 4; t++)
		acc0[t] = acc1[t] = _mm256_setzero_ps();
	for (; i + 2 <= nb; i += 2) {
		__m256i q0 = load32(x[i].qs), q1 = load32(x[i + 1].qs);

		q8_0_x4_block(q0, _mm256_sign_epi8(q0, q0), h2f(x[i].d), a, a_stride, i, acc0);
		q8_0_x4_block(q1, _mm256_sign_epi8(q1, q1), h2f(x[i + 1].d), a, a_stride, i + 1,
			      acc1);
	}
	for (; i < nb; i++) {
		__m256i q = load32(x[i].qs);

		q8_0_x4_block(q, _mm256_sign_epi8(q, q), h2f(x[i].d), a, a_stride, i, acc0);
	}
	store4_pairs(out, out_stride, acc0, acc1);
}

static void vec_dot_mxfp4_x4(int64_t n, float *out, size_t out_stride, const void *w,
			     const void *a, size_t a_stride)
{
	const struct block_mxfp4 *x = w;
	const __m256i lut = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)moe_mxfp4_k));
	__m256 acc0[4], acc1[4];
	int64_t nb = n / QK, i = 0;

	for (int t = 0; t < 4; t++)
		acc0[t] = acc1[t] = _mm256_setzero_ps();
	for (; i + 2 <= nb; i += 2) {
		__m256i q0 = _mm256_shuffle_epi8(lut, nibbles32(x[i].qs));
		__m256i q1 = _mm256_shuffle_epi8(lut, nibbles32(x[i + 1].qs));

		q8_0_x4_block(q0, _mm256_sign_epi8(q0, q0), e8m0_half.f[x[i].e], a, a_stride, i,
			      acc0);
		q8_0_x4_block(q1, _mm256_sign_epi8(q1, q1), e8m0_half.f[x[i + 1].e], a, a_stride,
			      i + 1, acc1);
	}
	for (; i < nb; i++) {
		__m256i q = _mm256_shuffle_epi8(lut, nibbles32(x[i].qs));

		q8_0_x4_block(q, _mm256_sign_epi8(q, q), e8m0_half.f[x[i].e], a, a_stride, i, acc0);
	}
	store4_pairs(out, out_stride, acc0, acc1);
}

/* q6_K: each 32-element group unpacked once for 4 tokens; per token as vec_dot_q6_k. */
static void vec_dot_q6_k_x4(int64_t n, float *out, size_t out_stride, const void *w,
			    const void *a, size_t a_stride)
{
	const struct block_q6_k *x = w;
	const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(0x30);
	__m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
			  _mm256_setzero_ps() };

	for (int64_t i = 0; i < n / QK_K; i++) {
		__m256i sumi[4] = { _mm256_setzero_si256(), _mm256_setzero_si256(),
				    _mm256_setzero_si256(), _mm256_setzero_si256() };
		float d = h2f(x[i].d);

		for (int h = 0; h < 2; h++) {
			const int8_t *sc = x[i].scales + 8 * h;
			__m256i l0 = load32(x[i].ql + 64 * h), l1 = load32(x[i].ql + 64 * h + 32);
			__m256i hb = load32(x[i].qh + 32 * h), q[4];

			q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4),
					       _mm256_and_si256(_mm256_slli_epi16(hb, 4), m2));
			q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
					       _mm256_and_si256(_mm256_slli_epi16(hb, 2), m2));
			q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
					       _mm256_and_si256(hb, m2));
			q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
					       _mm256_and_si256(_mm256_srli_epi16(hb, 2), m2));
			for (int g = 0; g < 4; g++) {
				__m256i qs = _mm256_sub_epi8(q[g], _mm256_set1_epi8(32));
				__m256i aq = _mm256_sign_epi8(qs, qs);
				__m256i s = _mm256_set_m128i(_mm_set1_epi16((short)sc[2 * g + 1]),
							     _mm_set1_epi16((short)sc[2 * g]));

				for (int t = 0; t < 4; t++) {
					const int8_t *ay = ACT(struct block_q8_k, t)[i].qs + 128 * h + 32 * g;
					__m256i p = _mm256_maddubs_epi16(aq, _mm256_sign_epi8(load32(ay), qs));

					sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(p, s));
				}
			}
		}
		for (int t = 0; t < 4; t++)
			acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * ACT(struct block_q8_k, t)[i].d),
						 _mm256_cvtepi32_ps(sumi[t]), acc[t]);
	}
	store4(out, out_stride, acc);
}

#undef ACT

/* ------------------------------------------------------------ activations */

/* 32 floats times id, rounded to nearest even, as int8 in [-127, 127] and in order. */
static inline __m256i round_pack32(const float *src, __m256 vid)
{
	const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
	__m256i q[4];

	for (int k = 0; k < 4; k++)
		q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(src + 8 * k),
								      vid),
						  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
	__m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));

	p = _mm256_permutevar8x32_epi32(p, perm);
	return _mm256_max_epi8(p, _mm256_set1_epi8(-127));
}

static inline float absmax(const float *src, int n)
{
	const __m256 sign = _mm256_set1_ps(-0.0f);
	__m256 m = _mm256_setzero_ps();

	for (int k = 0; k < n; k += 8)
		m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(src + k)));
	__m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));

	m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
	m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
	return _mm_cvtss_f32(m4);
}

/* Same scale and rounding as the scalar moe_q8_0_act_from_float, so the bytes are identical. */
static size_t q8_0_act_from_float(const float *src, void *dst, int64_t n)
{
	struct block_q8_0 *b = dst;

	for (int64_t i = 0; i < n / QK; i++, b++, src += QK) {
		float amax = absmax(src, QK), id = amax ? 127.0f / amax : 0;

		b->d = moe_f32_to_f16(amax / 127);
		_mm256_storeu_si256((__m256i *)b->qs, round_pack32(src, _mm256_set1_ps(id)));
	}
	return (size_t)(n / QK) * sizeof(*b);
}

/* The element of largest magnitude, the first one when several tie (as the scalar scan). */
static float signed_max(const float *x, int n, float amax)
{
	for (int j = 0; j < n; j++)
		if (fabsf(x[j]) == amax)
			return x[j];
	return 0;
}

/* Same scale and rounding as the scalar moe_q8_k_from_float, so the bytes are identical. */
static size_t q8_k_from_float(const float *src, void *dst, int64_t n)
{
	struct block_q8_k *b = dst;
	const __m256i one8 = _mm256_set1_epi8(1);
	const __m256i one16 = _mm256_set1_epi16(1);

	for (int64_t i = 0; i < n / QK_K; i++, b++, src += QK_K) {
		float max = signed_max(src, QK_K, absmax(src, QK_K));
		float iscale = max ? -127.0f / max : 0;
		__m256 vid = _mm256_set1_ps(iscale);

		b->d = max ? 1 / iscale : 0;
		for (int k = 0; k < QK_K; k += 32) {
			__m256i p = round_pack32(src + k, vid);
			/* sums of 16: pairs, quads, then within each 128-bit half */
			__m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(one8, p), one16);

			s = _mm256_hadd_epi32(s, s);
			s = _mm256_hadd_epi32(s, s);
			_mm256_storeu_si256((__m256i *)(b->qs + k), p);
			b->bsums[k / 16] = (int16_t)_mm256_extract_epi32(s, 0);
			b->bsums[k / 16 + 1] = (int16_t)_mm256_extract_epi32(s, 4);
		}
	}
	return (size_t)(n / QK_K) * sizeof(*b);
}

const struct moe_simd_kernels moe_avx2_kernels[] = {
	{ .type = MOE_TYPE_F32, .vec_dot = vec_dot_f32 },
	{ .type = MOE_TYPE_F16, .vec_dot = vec_dot_f16 },
	{ .type = MOE_TYPE_BF16, .vec_dot = vec_dot_bf16 },
	{ .type = MOE_TYPE_Q4_0, .vec_dot = vec_dot_q4_0, .vec_dot_x4 = vec_dot_q4_0_x4 },
	{ .type = MOE_TYPE_Q4_1, .vec_dot = vec_dot_q4_1 },
	{ .type = MOE_TYPE_Q5_0, .vec_dot = vec_dot_q5_0 },
	{ .type = MOE_TYPE_Q5_1, .vec_dot = vec_dot_q5_1 },
	{ .type = MOE_TYPE_Q8_0, .vec_dot = vec_dot_q8_0, .vec_dot_x4 = vec_dot_q8_0_x4,
	  .act_from_float = q8_0_act_from_float },
	{ .type = MOE_TYPE_MXFP4, .vec_dot = vec_dot_mxfp4, .vec_dot_x4 = vec_dot_mxfp4_x4 },
	{ .type = MOE_TYPE_Q4_K, .vec_dot = vec_dot_q4_k, .vec_dot_x4 = vec_dot_q4_k_x4 },
	{ .type = MOE_TYPE_Q5_K, .vec_dot = vec_dot_q5_k },
	{ .type = MOE_TYPE_Q6_K, .vec_dot = vec_dot_q6_k, .vec_dot_x4 = vec_dot_q6_k_x4 },
	{ .type = MOE_TYPE_Q8_K, .vec_dot = vec_dot_q8_k, .from_float = q8_k_from_float },
};
const int moe_avx2_kernel_count = (int)(sizeof(moe_avx2_kernels) / sizeof(moe_avx2_kernels[0]));
