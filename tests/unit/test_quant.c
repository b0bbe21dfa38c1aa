/* SPDX-License-Identifier: MIT */
/*
 * Quant kernels against the spec (FORMATS.md section 2):
 *  - known-answer blocks built by hand, exact expected floats;
 *  - dequantization of random blocks vs a float64 evaluation of the spec
 *    formulas (written here from byte offsets, independent of the library's
 *    block structs): exact;
 *  - dot products, scalar and SIMD, vs float64 of the dequantized operands:
 *    |dot - ref| <= DOT_TOL * sum|a_i| * max|w_i|;
 *  - scalar and SIMD agree within the same bound;
 *  - quantize->dequantize relative RMS error on N(0,1) data below the per-type
 *    bounds in the table below;
 *  - matmul vs float64 with f32 activations, within the activation rounding.
 */
#include <errno.h>
#include <fenv.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quant/kernels.h"
#include "quant/quant.h"
#include "testutil.h"
#include "util/threadpool.h"

#define DOT_TOL 1e-5
#define ALIGN64(x) (((x) + 63) / 64 * 64)

struct qtype {
	uint32_t type;
	/* bound on sqrt(sum (x - deq(q(x)))^2 / sum x^2) for x ~ N(0,1) */
	double rmse;
};

/* Measured (N(0,1), 64 Ki elements) and rounded up by about 15%. */
static const struct qtype qtypes[] = {
	{ MOE_TYPE_F32, 0 },
	{ MOE_TYPE_F16, 0.0004 },
	{ MOE_TYPE_BF16, 0.0032 },
	{ MOE_TYPE_Q8_0, 0.0055 },
	{ MOE_TYPE_Q4_0, 0.12 },
	{ MOE_TYPE_Q4_1, 0.10 },
	{ MOE_TYPE_Q5_0, 0.06 },
	{ MOE_TYPE_Q5_1, 0.05 },
	{ MOE_TYPE_Q4_K, 0.09 },
	{ MOE_TYPE_Q5_K, 0.045 },
	{ MOE_TYPE_Q6_K, 0.025 },
	{ MOE_TYPE_Q8_K, 0.008 },
	{ MOE_TYPE_MXFP4, 0.16 },
};

/* ------------------------------------------------------------ spec in float64 */

static double half_to_double(const uint8_t *p)
{
	unsigned h = p[0] | (unsigned)p[1] << 8;
	int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
	double v;

	if (e == 31)
		v = m ? NAN : INFINITY;
	else if (e == 0)
		v = ldexp(m, -24);
	else
		v = ldexp(1024 + m, e - 25);
	return sign ? -v : v;
}

static uint32_t u32le(const uint8_t *p)
{
	return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void k_sm(const uint8_t *q, int j, int *sc, int *m)
{
	if (j < 4) {
		*sc = q[j] & 63;
		*m = q[j + 4] & 63;
	} else {
		*sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
		*m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
	}
}

/* Element j of the block at b, from the spec's byte offsets. */
static double spec_value(uint32_t type, const uint8_t *b, int j)
{
	static const double e2m1[8] = { 0, 0.5, 1, 1.5, 2, 3, 4, 6 };
	int nib = j < 16 ? 0 : 4, jj = j & 15, q, sc, m;

	switch (type) {
	case MOE_TYPE_F32: {
		float f;

		memcpy(&f, b, 4);
		return f;
	}
	case MOE_TYPE_F16:
		return half_to_double(b);
	case MOE_TYPE_BF16: {
		uint32_t u = (uint32_t)(b[0] | b[1] << 8) << 16;
		float f;

		memcpy(&f, &u, 4);
		return f;
	}
	case MOE_TYPE_Q4_0:
		return (((b[2 + jj] >> nib) & 15) - 8) * half_to_double(b);
	case MOE_TYPE_Q4_1:
		return ((b[4 + jj] >> nib) & 15) * half_to_double(b) + half_to_double(b + 2);
	case MOE_TYPE_Q5_0:
		q = ((b[6 + jj] >> nib) & 15) | ((u32le(b + 2) >> j) & 1) << 4;
		return (q - 16) * half_to_double(b);
	case MOE_TYPE_Q5_1:
		q = ((b[8 + jj] >> nib) & 15) | ((u32le(b + 4) >> j) & 1) << 4;
		return q * half_to_double(b) + half_to_double(b + 2);
	case MOE_TYPE_Q8_0:
		return (int8_t)b[2 + j] * half_to_double(b);
	case MOE_TYPE_MXFP4:
		q = (b[1 + jj] >> nib) & 15;
		return (q & 8 ? -1 : 1) * e2m1[q & 7] * ldexp(1, b[0] - 127);
	case MOE_TYPE_Q4_K:
	case MOE_TYPE_Q5_K: {
		int g = j / 64, l = j % 64, sub = 2 * g + (l >= 32);
		const uint8_t *qs = b + (type == MOE_TYPE_Q4_K ? 16 : 48);

		q = (qs[32 * g + l % 32] >> (l >= 32 ? 4 : 0)) & 15;
		if (type == MOE_TYPE_Q5_K)
			q |= ((b[16 + l % 32] >> sub) & 1) << 4;
		k_sm(b + 4, sub, &sc, &m);
		return half_to_double(b) * sc * q - half_to_double(b + 2) * m;
	}
	case MOE_TYPE_Q6_K: {
		int n = j / 128, r = j % 128, l = r % 32, k = r / 32;
		const uint8_t *ql = b + 64 * n, *qh = b + 128 + 32 * n;

		q = (ql[l + (k & 1) * 32] >> (k >= 2 ? 4 : 0)) & 15;
		q |= ((qh[l] >> (2 * k)) & 3) << 4;
		sc = (int8_t)b[192 + 8 * n + l / 16 + 2 * k];
		return half_to_double(b + 208) * sc * (q - 32);
	}
	case MOE_TYPE_Q8_K: {
		float d;

		memcpy(&d, b, 4);
		return (double)d * (int8_t)b[4 + j];
	}
	}
	ck_abort_msg("no spec for type %u", type);
	return 0;
}

static void spec_row(uint32_t type, const uint8_t *src, int64_t n, double *dst)
{
	uint32_t blk = moe_type_block_elems(type), bytes = moe_type_block_bytes(type);

	for (int64_t i = 0; i < n; i++)
		dst[i] = spec_value(type, src + (i / blk) * bytes, (int)(i % blk));
}

/* ------------------------------------------------------------ random blocks */

/* A normal half in [2^-7, 2^4), random sign: keeps every product exact in double. */
static void sane_half(uint8_t *p, uint64_t *st)
{
	uint64_t r = tu_rand(st);
	unsigned h = (unsigned)(r & 1) << 15 | (unsigned)(8 + (r >> 1) % 11) << 10 |
		     (unsigned)((r >> 8) & 1023);

	p[0] = (uint8_t)h;
	p[1] = (uint8_t)(h >> 8);
}

/*
 * Random bits everywhere except the scale fields, which stay finite and sane;
 * @wide lets MXFP4 use every exponent that keeps values finite.
 */
static void random_row(uint32_t type, uint8_t *dst, int64_t n, bool wide, uint64_t *st)
{
	uint32_t blk = moe_type_block_elems(type), bytes = moe_type_block_bytes(type);
	int64_t nb = n / blk;

	for (int64_t i = 0; i < nb * bytes; i++)
		dst[i] = (uint8_t)tu_rand(st);
	for (int64_t i = 0; i < nb; i++) {
		uint8_t *b = dst + i * bytes;

		switch (type) {
		case MOE_TYPE_F32: {
			float f = (float)tu_randn(st);

			memcpy(b, &f, 4);
			break;
		}
		case MOE_TYPE_F16:
			while (((b[1] >> 2) & 31) == 31)
				b[1] = (uint8_t)tu_rand(st);
			break;
		case MOE_TYPE_BF16: {
			/* exponents 2^-15 .. 2^16: products and sums stay finite */
			unsigned e = 112 + (unsigned)(tu_rand(st) % 32);

			b[1] = (uint8_t)((b[1] & 0x80) | e >> 1);
			b[0] = (uint8_t)((b[0] & 0x7f) | (e & 1) << 7);
			break;
		}
		case MOE_TYPE_Q4_0:
		case MOE_TYPE_Q5_0:
		case MOE_TYPE_Q8_0:
			sane_half(b, st);
			break;
		case MOE_TYPE_Q4_1:
		case MOE_TYPE_Q5_1:
		case MOE_TYPE_Q4_K:
		case MOE_TYPE_Q5_K:
			sane_half(b, st);
			sane_half(b + 2, st);
			break;
		case MOE_TYPE_Q6_K:
			sane_half(b + 208, st);
			break;
		case MOE_TYPE_Q8_K: {
			float d = (float)tu_randn(st);

			memcpy(b, &d, 4);
			break;
		}
		case MOE_TYPE_MXFP4:
			b[0] = (uint8_t)(wide ? tu_rand(st) % 251 : 100 + tu_rand(st) % 56);
			break;
		}
	}
}

static bool same_float(float a, float b)
{
	return (isnan(a) && isnan(b)) || a == b;
}

/*
 * The SIMD instruction set under test: tests registered once per ISA the CPU
 * has (suite_quant) compare its kernels with the scalar reference, switching
 * between the two with use_scalar().
 */
static enum moe_cpu_isa test_isa = MOE_ISA_AVX2;

static void use_isa(int isa)
{
	test_isa = (enum moe_cpu_isa)isa;
	ck_assert_msg(moe_quant_force_isa(test_isa) == 0, "cannot select %s",
		      moe_quant_isa_name(test_isa));
	ck_assert_str_eq(moe_quant_simd_name(), moe_quant_isa_name(test_isa));
}

static void use_scalar(bool scalar)
{
	ck_assert_int_eq(moe_quant_force_isa(scalar ? MOE_ISA_SCALAR : test_isa), 0);
}

/* ------------------------------------------------------------ known answers */

static void put_half(uint8_t *p, uint16_t h)
{
	p[0] = (uint8_t)h;
	p[1] = (uint8_t)(h >> 8);
}

static void expect_row(uint32_t type, const void *blk, const float *want, int n)
{
	float got[256];

	for (int pass = 0; pass < 2; pass++) {
		use_scalar(pass == 0);
		ck_assert_int_eq(moe_dequantize(type, blk, got, n), 0);
		for (int j = 0; j < n; j++)
			ck_assert_msg(same_float(got[j], want[j]), "%s [%d]: got %.9g want %.9g (%s)",
				      moe_type_name(type), j, got[j], want[j],
				      moe_quant_simd_name());
	}
	use_scalar(false);
}

START_TEST(kat_float)
{
	uint8_t b[16];
	float want[8], f32[2] = { 1.5f, -0.0f };

	use_isa(_i);
	/* f16: 1, -2, smallest subnormal, largest subnormal, inf, 1/3, 65504, -0 */
	const uint16_t h[8] = { 0x3c00, 0xc000, 0x0001, 0x03ff, 0x7c00, 0x3555, 0x7bff, 0x8000 };
	const float hv[8] = { 1, -2, 5.9604644775390625e-08f, 6.0975551605224609375e-05f,
			      INFINITY, 0.333251953125f, 65504, -0.0f };
	for (int i = 0; i < 8; i++)
		put_half(b + 2 * i, h[i]);
	expect_row(MOE_TYPE_F16, b, hv, 8);
	put_half(b, 0x7e00);
	ck_assert_int_eq(moe_dequantize(MOE_TYPE_F16, b, want, 1), 0);
	ck_assert(isnan(want[0]));

	/* bf16: 1, -3, 2^-133 (subnormal) */
	put_half(b, 0x3f80);
	put_half(b + 2, 0xc040);
	put_half(b + 4, 0x0001);
	want[0] = 1;
	want[1] = -3;
	want[2] = 9.18354961579912115600575419705e-41f;
	expect_row(MOE_TYPE_BF16, b, want, 3);
	expect_row(MOE_TYPE_F32, f32, f32, 2);
}
END_TEST

START_TEST(kat_float_encode)
{
	/* value -> f16 bits, round to nearest even, overflow to inf */
	static const struct { float f; uint16_t h; } f16[] = {
		{ 1.0f, 0x3c00 }, { 0.1f, 0x2e66 }, { 65504.0f, 0x7bff }, { 65519.0f, 0x7bff },
		{ 65520.0f, 0x7c00 }, { 1e9f, 0x7c00 }, { -INFINITY, 0xfc00 },
		{ 5.9604644775390625e-08f, 0x0001 }, { 2.9802322387695312e-08f, 0x0000 },
		{ 8.940696716308594e-08f, 0x0002 }, { 6.103515625e-05f, 0x0400 },
		{ 1.00048828125f, 0x3c00 }, { 1.00146484375f, 0x3c02 }, { -0.0f, 0x8000 },
	};
	static const struct { float f; uint16_t h; } bf[] = {
		{ 1.0f, 0x3f80 }, { 1.00390625f, 0x3f80 }, { 1.01171875f, 0x3f82 },
		{ -3.0f, 0xc040 }, { INFINITY, 0x7f80 },
	};
	uint16_t out;

	for (size_t i = 0; i < sizeof(f16) / sizeof(f16[0]); i++) {
		ck_assert_int_eq(moe_quantize(MOE_TYPE_F16, &f16[i].f, &out, 1), 2);
		ck_assert_msg(out == f16[i].h, "f16(%.9g) = %#x, want %#x", f16[i].f, out, f16[i].h);
	}
	for (size_t i = 0; i < sizeof(bf) / sizeof(bf[0]); i++) {
		ck_assert_int_eq(moe_quantize(MOE_TYPE_BF16, &bf[i].f, &out, 1), 2);
		ck_assert_msg(out == bf[i].h, "bf16(%.9g) = %#x, want %#x", bf[i].f, out, bf[i].h);
	}
	float nan = NAN;

	ck_assert_int_eq(moe_quantize(MOE_TYPE_F16, &nan, &out, 1), 2);
	ck_assert((out & 0x7c00) == 0x7c00 && (out & 0x3ff));
	ck_assert_int_eq(moe_quantize(MOE_TYPE_BF16, &nan, &out, 1), 2);
	ck_assert((out & 0x7f80) == 0x7f80 && (out & 0x7f));
}
END_TEST

/* Every finite half survives half -> float -> half. */
START_TEST(f16_roundtrip_all)
{
	for (uint32_t h = 0; h < 65536; h++) {
		uint8_t b[2] = { (uint8_t)h, (uint8_t)(h >> 8) };
		float f;
		uint16_t back;

		if (((h >> 10) & 31) == 31 && (h & 1023))
			continue;
		ck_assert_int_eq(moe_dequantize(MOE_TYPE_F16, b, &f, 1), 0);
		ck_assert(f == half_to_double(b) || (f == 0 && half_to_double(b) == 0));
		moe_quantize(MOE_TYPE_F16, &f, &back, 1);
		ck_assert_msg(back == h, "%#x -> %.9g -> %#x", h, f, back);
	}
}
END_TEST

START_TEST(kat_legacy)
{
	uint8_t b[34];
	float want[32];

	use_isa(_i);
	/* Q4_0, d = 0.5: element 0 = (15-8)/2, element 16 = (0-8)/2, element 17 = (9-8)/2 */
	memset(b, 0x88, sizeof(b));
	put_half(b, 0x3800);
	b[2] = 0x0f;
	b[3] = 0x98;
	for (int j = 0; j < 32; j++)
		want[j] = 0;
	want[0] = 3.5f;
	want[16] = -4;
	want[17] = 0.5f;
	expect_row(MOE_TYPE_Q4_0, b, want, 32);

	/* Q4_1, d = 1, m = -1: element 0 = 15-1, element 16 = 2-1, others -1 */
	memset(b, 0, sizeof(b));
	put_half(b, 0x3c00);
	put_half(b + 2, 0xbc00);
	b[4] = 0x2f;
	for (int j = 0; j < 32; j++)
		want[j] = -1;
	want[0] = 14;
	want[16] = 1;
	expect_row(MOE_TYPE_Q4_1, b, want, 32);

	/* Q5_0, d = 2, qh bits 0 and 17: e0 = (31-16)*2, e16 = (3-16)*2, e17 = (16-16)*2 */
	memset(b, 0, sizeof(b));
	put_half(b, 0x4000);
	b[2] = 0x01;
	b[4] = 0x02;
	b[6] = 0x3f;
	for (int j = 0; j < 32; j++)
		want[j] = -32;
	want[0] = 30;
	want[16] = -26;
	want[17] = 0;
	expect_row(MOE_TYPE_Q5_0, b, want, 32);

	/* Q5_1, d = 0.5, m = 1, qh bit 31: e31 = (10|16)*0.5+1, others 1 */
	memset(b, 0, sizeof(b));
	put_half(b, 0x3800);
	put_half(b + 2, 0x3c00);
	b[7] = 0x80;
	b[8 + 15] = 0xa0;
	for (int j = 0; j < 32; j++)
		want[j] = 1;
	want[31] = 14;
	expect_row(MOE_TYPE_Q5_1, b, want, 32);

	/* Q8_0, d = 0.25 */
	memset(b, 0, sizeof(b));
	put_half(b, 0x3400);
	b[2] = 0x80;
	b[7] = 127;
	b[33] = 0xff;
	for (int j = 0; j < 32; j++)
		want[j] = 0;
	want[0] = -32;
	want[5] = 31.75f;
	want[31] = -0.25f;
	expect_row(MOE_TYPE_Q8_0, b, want, 32);
}
END_TEST

START_TEST(kat_mxfp4)
{
	uint8_t b[3 * 17] = { 0 };
	float want[96] = { 0 };

	use_isa(_i);
	/* e = 128: value = E2M1 * 2; code 7 = 6 -> 12, code 15 = -6 -> -12, code 9 = -0.5 -> -1 */
	b[0] = 128;
	b[1] = 0xf7;
	b[2] = 0x09;
	want[0] = 12;
	want[16] = -12;
	want[1] = -1;
	/* e = 0: code 1 = 0.5 * 2^-127 = 2^-128 (a subnormal float) */
	b[17] = 0;
	b[18] = 0x31;
	want[32] = 2.938735877055718769921841343055614194546663891930218803771879265696043148636817932128906250e-39f;
	want[48] = 1.5f * 2.938735877055718769921841343055614194546663891930218803771879265696043148636817932128906250e-39f * 2;
	/* e = 254: code 2 = 1 * 2^127; code 7 would be 6 * 2^127, past FLT_MAX: inf */
	b[34] = 254;
	b[35] = 0x72;
	want[64] = 1.7014118346046923173168730371588e+38f;
	want[80] = INFINITY;
	expect_row(MOE_TYPE_MXFP4, b, want, 96);
}
END_TEST

START_TEST(kat_q4_k_q5_k)
{
	uint8_t b4[144] = { 0 }, b5[176] = { 0 };
	float want[256];

	use_isa(_i);
	/* d = 1, dmin = 0.5; sub-block 0: sc 1 m 2; 1: sc 3 m 4; 5: sc 33 m 20; others 0 */
	uint8_t sc[12] = { 0 };

	sc[0] = 1;
	sc[4] = 2;
	sc[1] = 3 | 0x80;       /* sc1 = 3, top bits of sc5 = 2 */
	sc[5] = 4 | 0x40;       /* m1 = 4, top bits of m5 = 1 */
	sc[9] = 0x41;           /* low bits: sc5 = 1, m5 = 4 */
	put_half(b4, 0x3c00);
	put_half(b4 + 2, 0x3800);
	memcpy(b4 + 4, sc, 12);
	b4[16 + 0] = 0x75;      /* element 0 = 5 (sub 0), element 32 = 7 (sub 1) */
	b4[16 + 64 + 3] = 0xf0; /* element 163 = 15 (sub 5) */
	for (int j = 0; j < 256; j++)
		want[j] = j < 32 ? -1 : j < 64 ? -2 : (j >= 160 && j < 192) ? -10 : 0;
	want[0] = 1 * 5 - 0.5f * 2;
	want[32] = 3 * 7 - 0.5f * 4;
	want[163] = 33 * 15 - 0.5f * 20;
	expect_row(MOE_TYPE_Q4_K, b4, want, 256);

	/* Q5_K: same, plus 5th bits for elements 0 (bit 0), 33 (bit 1), 163 (bit 5) */
	memcpy(b5, b4, 16);
	memcpy(b5 + 48, b4 + 16, 128);
	b5[16 + 0] = 0x01;
	b5[16 + 1] = 0x02;
	b5[16 + 3] = 0x20;
	want[0] = 1 * 21 - 0.5f * 2;
	want[33] = 3 * 16 - 0.5f * 4;
	want[163] = 33 * 31 - 0.5f * 20;
	expect_row(MOE_TYPE_Q5_K, b5, want, 256);
}
END_TEST

START_TEST(kat_q6_k_q8_k)
{
	uint8_t b[292] = { 0 };
	float want[256];

	use_isa(_i);
	/* d = 0.5; scales[0] = 2, scales[2] = -3, scales[12] = 4 */
	put_half(b + 208, 0x3800);
	b[192 + 0] = 2;
	b[192 + 2] = (uint8_t)-3;
	b[192 + 12] = 4;
	b[0] = 0x0f;            /* element 0: low 4 bits 15 */
	b[128] = 0x03;          /* element 0: high 2 bits 3 -> q = 63 */
	b[65] = 0x50;           /* half 1, l = 1, third quarter: element 193, low bits 5 */
	b[128 + 33] = 0x20;     /* its high bits 2 -> q = 37 */
	for (int j = 0; j < 256; j++)
		want[j] = j < 16 ? -32 : (j >= 32 && j < 48) ? 48 : (j >= 192 && j < 208) ? -64 : 0;
	want[0] = 0.5f * 2 * 31;
	want[193] = 0.5f * 4 * 5;
	expect_row(MOE_TYPE_Q6_K, b, want, 256);

	/* Q8_K: float d = 0.5 @0, qs @4 */
	float d = 0.5f;

	memset(b, 0, sizeof(b));
	memcpy(b, &d, 4);
	b[4 + 3] = (uint8_t)-7;
	b[4 + 255] = 127;
	for (int j = 0; j < 256; j++)
		want[j] = 0;
	want[3] = -3.5f;
	want[255] = 63.5f;
	expect_row(MOE_TYPE_Q8_K, b, want, 256);
}
END_TEST

/* ------------------------------------------------------------ random vs spec */

START_TEST(dequant_vs_spec)
{
	const int64_t n = 4096;
	uint8_t *buf = malloc((size_t)n * 4);
	float *got = malloc((size_t)n * sizeof(float));
	double *ref = malloc((size_t)n * sizeof(double));
	uint64_t st = 1;

	use_isa(_i);
	for (size_t t = 0; t < sizeof(qtypes) / sizeof(qtypes[0]); t++) {
		uint32_t type = qtypes[t].type;

		for (int rep = 0; rep < 8; rep++) {
			random_row(type, buf, n, true, &st);
			spec_row(type, buf, n, ref);
			for (int pass = 0; pass < 2; pass++) {
				use_scalar(pass == 0);
				ck_assert_int_eq(moe_dequantize(type, buf, got, n), 0);
				for (int64_t i = 0; i < n; i++)
					ck_assert_msg(same_float(got[i], (float)ref[i]),
						      "%s [%lld]: got %.9g spec %.17g (%s)",
						      moe_type_name(type), (long long)i, got[i],
						      ref[i], moe_quant_simd_name());
			}
		}
	}
	use_scalar(false);
	free(buf);
	free(got);
	free(ref);
}
END_TEST

struct dot_case {
	double ref, tol;
	float scalar, simd;
};

/* Random weight row, activations from quantizing N(0,1); dot by both paths. */
static struct dot_case run_dot(uint32_t type, int64_t n, uint64_t *st)
{
	const struct moe_type_traits *ts = moe_type_traits_scalar(type);
	uint32_t at = ts->vec_dot_type;
	uint8_t *w = malloc((size_t)n * 4), *a = aligned_alloc(64, ALIGN64((size_t)n * 4));
	float *x = malloc((size_t)n * sizeof(float));
	double *dw = malloc((size_t)n * sizeof(double)), *da = malloc((size_t)n * sizeof(double));
	double sa = 0, wmax = 0;
	struct dot_case c = { 0 };

	random_row(type, w, n, false, st);
	for (int64_t i = 0; i < n; i++)
		x[i] = (float)tu_randn(st);
	moe_type_traits_scalar(at)->from_float(x, a, n);
	spec_row(type, w, n, dw);
	spec_row(at, a, n, da);
	for (int64_t i = 0; i < n; i++) {
		c.ref += dw[i] * da[i];
		sa += fabs(da[i]);
		wmax = fmax(wmax, fabs(dw[i]));
	}
	c.tol = DOT_TOL * sa * wmax + 1e-30;
	ts->vec_dot(n, &c.scalar, w, a);
	use_scalar(false);
	moe_type_traits(type)->vec_dot(n, &c.simd, w, a);
	free(w);
	free(a);
	free(x);
	free(dw);
	free(da);
	return c;
}

START_TEST(dot_vs_f64)
{
	/* 1..7 blocks of 32 reach every tail of the kernels that take 2 or 4 blocks at a time */
	static const int64_t lens[] = { 32, 64, 96, 160, 224, 256, 512, 4096, 14336 };
	uint64_t st = 7;

	use_isa(_i);
	for (size_t t = 0; t < sizeof(qtypes) / sizeof(qtypes[0]); t++) {
		uint32_t type = qtypes[t].type;

		for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
			if (lens[k] % moe_type_block_elems(type))
				continue;
			for (int rep = 0; rep < 4; rep++) {
				struct dot_case c = run_dot(type, lens[k], &st);

				ck_assert_msg(fabs(c.scalar - c.ref) <= c.tol,
					      "%s n=%lld scalar %.9g ref %.9g tol %.3g",
					      moe_type_name(type), (long long)lens[k], c.scalar,
					      c.ref, c.tol);
				ck_assert_msg(fabs(c.simd - c.ref) <= c.tol,
					      "%s n=%lld %s %.9g ref %.9g tol %.3g",
					      moe_type_name(type), (long long)lens[k],
					      moe_quant_simd_name(), c.simd, c.ref, c.tol);
				ck_assert_msg(fabs(c.simd - c.scalar) <= c.tol,
					      "%s scalar and simd disagree", moe_type_name(type));
			}
		}
	}
}
END_TEST

/* The 4-token kernels agree with the single-token one for each token. */
START_TEST(dot_x4_matches_single)
{
	const int64_t n = 4096;
	uint64_t st = 17;
	int tested = 0;

	use_isa(_i);
	for (size_t k = 0; k < sizeof(qtypes) / sizeof(qtypes[0]); k++) {
		uint32_t type = qtypes[k].type;
		const struct moe_type_traits *t = moe_type_traits(type);
		const struct moe_type_traits *at = moe_type_traits_scalar(t->vec_dot_type);
		size_t arb = (size_t)moe_type_row_bytes(t->vec_dot_type, n);
		uint8_t *w = malloc((size_t)n * 4), *a = aligned_alloc(64, ALIGN64(4 * arb));
		float *x = malloc((size_t)n * sizeof(float)), out[8];
		double *dw = malloc((size_t)n * sizeof(double)), *da = malloc((size_t)n * sizeof(double));

		if (!t->vec_dot_x4)
			goto next;
		tested++;
		random_row(type, w, n, false, &st);
		spec_row(type, w, n, dw);
		for (int tk = 0; tk < 4; tk++) {
			for (int64_t i = 0; i < n; i++)
				x[i] = (float)tu_randn(&st);
			at->from_float(x, a + tk * arb, n);
		}
		t->vec_dot_x4(n, out, 2, w, a, arb);
		for (int tk = 0; tk < 4; tk++) {
			double sa = 0, wmax = 0;
			float one;

			spec_row(t->vec_dot_type, a + tk * arb, n, da);
			for (int64_t i = 0; i < n; i++) {
				sa += fabs(da[i]);
				wmax = fmax(wmax, fabs(dw[i]));
			}
			t->vec_dot(n, &one, w, a + tk * arb);
			ck_assert_msg(fabs(out[2 * tk] - one) <= DOT_TOL * sa * wmax,
				      "%s token %d: x4 %.9g single %.9g", moe_type_name(type), tk,
				      out[2 * tk], one);
			/* these sum in the single-token kernel's order: the same bits */
			if (type == MOE_TYPE_Q8_0 || type == MOE_TYPE_MXFP4 || type == MOE_TYPE_Q6_K)
				ck_assert_msg(out[2 * tk] == one, "%s token %d: x4 %.9g single %.9g",
					      moe_type_name(type), tk, out[2 * tk], one);
		}
next:
		free(w);
		free(a);
		free(x);
		free(dw);
		free(da);
	}
	if (strcmp(moe_quant_simd_name(), "scalar"))
		ck_assert_int_ge(tested, 5);
}
END_TEST

/*
 * The four-row kernels (decode) give each row vec_dot's result bit for bit,
 * whatever the length (every tail of the 2-block loops) and the row stride.
 */
START_TEST(dot_r4_matches_single)
{
	static const int64_t lens[] = { 32, 64, 96, 160, 256, 512, 768, 1024, 4128 };
	uint64_t st = 29;
	int tested = 0;

	use_isa(_i);
	for (size_t k = 0; k < sizeof(qtypes) / sizeof(qtypes[0]); k++) {
		uint32_t type = qtypes[k].type;
		const struct moe_type_traits *t = moe_type_traits(type);

		if (!t->vec_dot_r4)
			continue;
		tested++;
		for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
			int64_t n = lens[l];
			uint32_t at = t->vec_dot_type;
			size_t rb = (size_t)moe_type_row_bytes(type, n), ws = rb + 2 * (l % 3);
			uint8_t *w, *a;
			float *x, out[4];

			if (n % moe_type_block_elems(type) || n % moe_type_block_elems(at))
				continue;
			w = malloc(4 * ws);
			a = aligned_alloc(64, ALIGN64((size_t)moe_type_row_bytes(at, n)));
			x = malloc((size_t)n * sizeof(float));
			for (int r = 0; r < 4; r++)
				random_row(type, w + r * ws, n, true, &st);
			for (int64_t i = 0; i < n; i++)
				x[i] = (float)tu_randn(&st);
			moe_mm_quantize(&(struct moe_mm){ .t = t, .at = moe_type_traits(at),
							  .cols = n }, x, a);
			t->vec_dot_r4(n, out, w, ws, a);
			for (int r = 0; r < 4; r++) {
				float one;

				t->vec_dot(n, &one, w + r * ws, a);
				ck_assert_msg(same_float(out[r], one), "%s n=%lld row %d: r4 %.9g "
					      "single %.9g", moe_type_name(type), (long long)n, r,
					      out[r], one);
			}
			free(w);
			free(a);
			free(x);
		}
	}
	/* AVX-512 has them for q8_0, with VNNI for mxfp4, q4_K and q6_K as well */
	if (_i >= MOE_ISA_AVX512)
		ck_assert_int_ge(tested, _i == MOE_ISA_AVX512VNNI ? 4 : 1);
}
END_TEST

/*
 * The AVX-512 kernels do the integer work 512 bits wide but add the floats
 * in the AVX2 kernels' order, so a model computes the same numbers on both
 * kinds of machine: every dot product is the AVX2 one bit for bit.
 */
START_TEST(dot_same_as_avx2)
{
	static const int64_t lens[] = { 1, 7, 8, 31, 32, 33, 64, 96, 160, 224, 256, 512, 768, 4096,
					4128 };
	uint64_t st = 23;

	use_isa(_i);
	for (size_t t = 0; t < sizeof(qtypes) / sizeof(qtypes[0]); t++) {
		uint32_t type = qtypes[t].type;
		uint32_t at = moe_type_traits_scalar(type)->vec_dot_type;

		for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
			int64_t n = lens[k];
			uint8_t *w = malloc((size_t)n * 4 + 64);
			uint8_t *a = aligned_alloc(64, ALIGN64((size_t)n * 4 + 64));
			float *x = malloc((size_t)n * sizeof(float)), wide, narrow;

			if (n % moe_type_block_elems(type) || n % moe_type_block_elems(at))
				goto next;
			random_row(type, w, n, true, &st);
			for (int64_t i = 0; i < n; i++)
				x[i] = (float)tu_randn(&st);
			moe_mm_quantize(&(struct moe_mm){ .t = moe_type_traits_scalar(type),
							  .at = moe_type_traits_scalar(at),
							  .cols = n }, x, a);
			moe_type_traits(type)->vec_dot(n, &wide, w, a);
			ck_assert_int_eq(moe_quant_force_isa(MOE_ISA_AVX2), 0);
			moe_type_traits(type)->vec_dot(n, &narrow, w, a);
			use_isa(_i);
			ck_assert_msg(same_float(wide, narrow), "%s n=%lld: %s %.9g avx2 %.9g",
				      moe_type_name(type), (long long)n, moe_quant_isa_name(_i),
				      wide, narrow);
next:
			free(w);
			free(a);
			free(x);
		}
	}
}
END_TEST

/* Odd lengths reach the float kernels' tails. */
START_TEST(dot_float_tails)
{
	uint64_t st = 11;

	use_isa(_i);
	for (int64_t n = 1; n < 80; n++) {
		struct dot_case c = run_dot(n % 3 == 0 ? MOE_TYPE_F32 : n % 3 == 1 ? MOE_TYPE_F16 :
					    MOE_TYPE_BF16, n, &st);

		ck_assert_msg(fabs(c.simd - c.ref) <= c.tol, "n=%lld", (long long)n);
		ck_assert_msg(fabs(c.scalar - c.ref) <= c.tol, "n=%lld", (long long)n);
	}
}
END_TEST

/* ------------------------------------------------------------ quantization */

static double roundtrip_rmse(uint32_t type, const float *x, int64_t n, void *q, float *y)
{
	double num = 0, den = 0;
	int64_t bytes = moe_quantize(type, x, q, n);

	ck_assert_int_eq(bytes, moe_type_row_bytes(type, (uint64_t)n));
	ck_assert_int_eq(moe_dequantize(type, q, y, n), 0);
	for (int64_t i = 0; i < n; i++) {
		num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
		den += (double)x[i] * x[i];
	}
	return sqrt(num / den);
}

START_TEST(quantize_error_bounds)
{
	const int64_t n = 65536;
	float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
	void *q = malloc(n * 4);
	double e[MOE_TYPE_COUNT] = { 0 };
	uint64_t st = 3;

	for (int64_t i = 0; i < n; i++)
		x[i] = (float)tu_randn(&st);
	for (size_t t = 0; t < sizeof(qtypes) / sizeof(qtypes[0]); t++) {
		uint32_t type = qtypes[t].type;

		e[type] = roundtrip_rmse(type, x, n, q, y);
		printf("quant: %-6s relative rms error on N(0,1): %.5f (bound %.4f)\n",
		       moe_type_name(type), e[type], qtypes[t].rmse);
		ck_assert_msg(e[type] <= qtypes[t].rmse, "%s: rms error %.5f above %.4f",
			      moe_type_name(type), e[type], qtypes[t].rmse);
	}
	/* the searched scales beat plain min/max scaling at a similar bit rate */
	ck_assert(e[MOE_TYPE_Q4_K] < e[MOE_TYPE_Q4_1]);
	ck_assert(e[MOE_TYPE_Q5_K] < e[MOE_TYPE_Q5_1]);
	ck_assert(e[MOE_TYPE_MXFP4] < e[MOE_TYPE_Q4_0] * 1.5);
	free(x);
	free(y);
	free(q);
}
END_TEST

/*
 * The vectorized K-quant fit gives the bytes of the one-candidate-at-a-time
 * reference, on data of every kind: N(0,1) at magnitudes from 1e-6 to 1e4,
 * all positive, all negative, constant, sparse, and values on a grid of
 * quarters (rounding ties); with AVX2 where the CPU has it and without.
 */
START_TEST(quantize_k_fit_matches_reference)
{
	enum { BLOCKS = 768 };
	const int64_t n = (int64_t)BLOCKS * 256;
	float *x = malloc(sizeof(float) * n);
	uint8_t *a = malloc(n), *b = malloc(n);
	uint64_t st = 17;

	for (int64_t blk = 0; blk < BLOCKS; blk++)
		for (int sub = 0; sub < 8; sub++) {
			float *v = x + blk * 256 + sub * 32;
			int kind = (int)((blk * 8 + sub) % 7);
			double mag = pow(10.0, -6.0 + 10.0 * (double)(tu_rand(&st) >> 11) / 9007199254740992.0);

			for (int i = 0; i < 32; i++) {
				double g = tu_randn(&st);

				v[i] = kind == 0 ? (float)(g * mag) :
				       kind == 1 ? (float)(fabs(g) * mag + mag) :
				       kind == 2 ? (float)(-fabs(g) * mag) :
				       kind == 3 ? (float)mag :
				       kind == 4 ? (i % 9 ? 0.0f : (float)(g * mag)) :
				       kind == 5 ? (float)floor(g * 8) * 0.25f :
				       (float)(g * mag + 3 * mag);
			}
		}
	for (int avx2 = 1; avx2 >= 0; avx2--) {
		moe_kfit_avx2 = avx2 ? -1 : 0;
		/* each sub-block's fit, to the bit, before the scales are rounded to 6 bits */
		for (int64_t i = 0; i < n; i += 32)
			for (int nmax = 15; nmax <= 31; nmax += 16) {
				float s0, o0, s1, o1;

				moe_k_fit_affine(x + i, 32, nmax, &s0, &o0, false);
				moe_k_fit_affine(x + i, 32, nmax, &s1, &o1, true);
				ck_assert_msg(!memcmp(&s0, &s1, sizeof(s0)) && !memcmp(&o0, &o1, sizeof(o0)),
					      "sub-block %lld, nmax %d (avx2 %d): fit %a - %a, reference "
					      "%a - %a", (long long)(i / 32), nmax, avx2, s0, o0, s1, o1);
			}
		ck_assert_uint_eq(moe_q4_k_from_float(x, a, n), moe_q4_k_from_float_ref(x, b, n));
		ck_assert_msg(!memcmp(a, b, moe_type_row_bytes(MOE_TYPE_Q4_K, (uint64_t)n)),
			      "q4_K (avx2 %d) differs from the reference", avx2);
		ck_assert_uint_eq(moe_q5_k_from_float(x, a, n), moe_q5_k_from_float_ref(x, b, n));
		ck_assert_msg(!memcmp(a, b, moe_type_row_bytes(MOE_TYPE_Q5_K, (uint64_t)n)),
			      "q5_K (avx2 %d) differs from the reference", avx2);
	}
	moe_kfit_avx2 = -1;
	free(x);
	free(a);
	free(b);
}
END_TEST

/* Degenerate inputs: zeros, constants, one spike; nothing is NaN, zeros stay zeros. */
START_TEST(quantize_degenerate)
{
	float x[256], y[256];
	uint8_t q[1024];

	for (size_t t = 0; t < sizeof(qtypes) / sizeof(qtypes[0]); t++) {
		uint32_t type = qtypes[t].type;

		for (int kind = 0; kind < 4; kind++) {
			for (int i = 0; i < 256; i++)
				x[i] = kind == 0 ? 0 : kind == 1 ? 3.0f : kind == 2 ? -1e-3f :
				       (i == 77 ? 1000.0f : 0);
			ck_assert_int_gt(moe_quantize(type, x, q, 256), 0);
			ck_assert_int_eq(moe_dequantize(type, q, y, 256), 0);
			for (int i = 0; i < 256; i++) {
				ck_assert_msg(isfinite(y[i]), "%s kind %d [%d]", moe_type_name(type),
					      kind, i);
				if (x[i] == 0)
					ck_assert_msg(fabsf(y[i]) <= 1e-6f * 1000,
						      "%s kind %d [%d] = %g", moe_type_name(type),
						      kind, i, y[i]);
				else
					ck_assert_msg(fabsf(y[i] - x[i]) <= 0.2f * fabsf(x[i]),
						      "%s kind %d [%d] = %g", moe_type_name(type),
						      kind, i, y[i]);
			}
		}
	}
}
END_TEST

START_TEST(simd_quantize_matches_scalar)
{
	const int64_t n = 4096;
	float *x = malloc(n * sizeof(float));
	uint8_t *a = malloc(n * 4), *b = malloc(n * 4);
	uint64_t st = 5;

	use_isa(_i);
	for (int64_t i = 0; i < n; i++)
		x[i] = (float)(tu_randn(&st) * (i % 64 == 0 ? 100 : 1));
	for (size_t t = 0; t < sizeof(qtypes) / sizeof(qtypes[0]); t++) {
		uint32_t type = qtypes[t].type;
		size_t bytes = (size_t)moe_type_row_bytes(type, n);

		moe_type_traits_scalar(type)->from_float(x, a, n);
		moe_type_traits(type)->from_float(x, b, n);
		ck_assert_msg(!memcmp(a, b, bytes), "%s: SIMD quantization differs",
			      moe_type_name(type));
	}
	free(x);
	free(a);
	free(b);
}
END_TEST

/*
 * Activations are rounded the way llama.cpp's x86 CPU backend rounds them,
 * so products on the same file match it: q8_0 scales by 127/amax and rounds
 * to nearest even (d = amax/127 as f16); q8_K scales by -127 over the element
 * of largest magnitude, sign included, rounds to nearest even, d = 1/scale.
 * Written here from those rules; ties (x * scale = k + 0.5) are built in.
 */
/* f16 bits of @f through the library's own f16 quantizer (checked above against known bits). */
static uint16_t f16_bits(float f)
{
	uint16_t h;

	ck_assert_int_eq(moe_quantize(MOE_TYPE_F16, &f, &h, 1), 2);
	return h;
}

static void check_act_q8_0(const uint8_t *q, const float *x, int64_t n)
{
	for (int64_t b = 0; b < n / 32; b++) {
		const uint8_t *blk = q + b * 34;
		float amax = 0, id;

		for (int j = 0; j < 32; j++)
			amax = fmaxf(amax, fabsf(x[b * 32 + j]));
		id = amax ? 127.0f / amax : 0;
		ck_assert_uint_eq(blk[0] | blk[1] << 8, f16_bits(amax / 127));
		for (int j = 0; j < 32; j++)
			ck_assert_msg((int8_t)blk[2 + j] == (int8_t)nearbyintf(x[b * 32 + j] * id),
				      "q8_0 block %lld [%d]: %d for %.9g", (long long)b, j,
				      (int8_t)blk[2 + j], x[b * 32 + j] * id);
	}
}

static void check_act_q8_k(const uint8_t *q, const float *x, int64_t n)
{
	for (int64_t b = 0; b < n / 256; b++) {
		const uint8_t *blk = q + b * 292;
		float amax = 0, max = 0, iscale, d;

		for (int j = 0; j < 256; j++)
			if (fabsf(x[b * 256 + j]) > amax) {
				amax = fabsf(x[b * 256 + j]);
				max = x[b * 256 + j];
			}
		iscale = max ? -127.0f / max : 0;
		memcpy(&d, blk, 4);
		ck_assert_float_eq(d, max ? 1 / iscale : 0);
		for (int j = 0; j < 256; j++)
			ck_assert_msg((int8_t)blk[4 + j] == (int8_t)nearbyintf(x[b * 256 + j] * iscale),
				      "q8_K block %lld [%d]", (long long)b, j);
	}
}

START_TEST(activation_rounding)
{
	const int64_t n = 2048;
	float *x = malloc(n * sizeof(float));
	uint8_t *a = malloc(n * 2), *b = malloc(n * 2);
	const struct moe_type_traits *q8, *q8s = moe_type_traits_scalar(MOE_TYPE_Q8_0);
	uint64_t st = 77;

	use_isa(_i);
	q8 = moe_type_traits(MOE_TYPE_Q8_0);
	ck_assert_int_eq(fegetround(), FE_TONEAREST);
	for (int64_t i = 0; i < n; i++)
		x[i] = (float)tu_randn(&st);
	/* ties: with amax 127, x * 127/amax = x; halves must go to even */
	for (int j = 0; j < 32; j++)
		x[j] = j == 0 ? 127.0f : (float)(j - 16) + 0.5f;
	/*
	 * 127/amax and 1/(amax/127) differ by an ulp here, and x * scale is within
	 * that ulp of a half: only the first rule gives llama.cpp's value
	 */
	x[32] = 0x1.002p+0f;
	x[33] = 0x1.2268d2p-5f;
	for (int j = 34; j < 64; j++)
		x[j] = 0.25f;
	/* q8_K: the largest element negative, and a later positive one of equal magnitude */
	x[256] = -3.0f;
	x[300] = 3.0f;
	for (int j = 512; j < 768; j++)
		x[j] = (float)((j % 9) - 4) * 0.125f;
	for (int j = 768; j < 1024; j++)
		x[j] = 0;
	ck_assert_ptr_nonnull(q8->act_from_float);
	q8s->act_from_float(x, a, n);
	q8->act_from_float(x, b, n);
	ck_assert_msg(!memcmp(a, b, (size_t)n / 32 * 34), "q8_0 activations: SIMD differs");
	check_act_q8_0(a, x, n);
	moe_type_traits_scalar(MOE_TYPE_Q8_K)->from_float(x, a, n);
	moe_type_traits(MOE_TYPE_Q8_K)->from_float(x, b, n);
	ck_assert_msg(!memcmp(a, b, (size_t)n / 256 * 292), "q8_K activations: SIMD differs");
	check_act_q8_k(a, x, n);
	/* q8_0 weights keep llama-quantize's rule: 1/d, rounded half away from zero */
	{
		float w[32];

		for (int j = 0; j < 32; j++)
			w[j] = j == 0 ? 127.0f : (float)(j - 16) + 0.5f;
		q8s->from_float(w, a, 32);
		for (int j = 1; j < 32; j++)
			ck_assert_int_eq((int8_t)a[2 + j], (int8_t)roundf(w[j]));
	}
	free(x);
	free(a);
	free(b);
}
END_TEST

/* ------------------------------------------------------------ matmul */

static void check_matmul(uint32_t type, struct moe_threadpool *pool, uint64_t *st)
{
	const int64_t rows = 301, cols = 512, n_tok = 5;   /* several row chunks per thread */
	const struct moe_type_traits *t = moe_type_traits(type);
	size_t rb = (size_t)moe_type_row_bytes(type, cols);
	uint8_t *w = malloc(rows * rb);
	float *wf = malloc(rows * cols * sizeof(float)), *x = malloc(n_tok * cols * sizeof(float));
	float *y = malloc(rows * n_tok * sizeof(float)), *y1 = malloc(rows * n_tok * sizeof(float));

	for (int64_t i = 0; i < rows * cols; i++)
		wf[i] = (float)tu_randn(st);
	for (int64_t i = 0; i < n_tok * cols; i++)
		x[i] = (float)tu_randn(st);
	moe_quantize(type, wf, w, rows * cols);
	moe_dequantize(type, w, wf, rows * cols);
	ck_assert_int_eq(moe_matmul(pool, type, w, rows, cols, x, n_tok, y), 0);
	ck_assert_int_eq(moe_matmul(NULL, type, w, rows, cols, x, n_tok, y1), 0);
	ck_assert_msg(!memcmp(y, y1, rows * n_tok * sizeof(float)),
		      "%s: pool and single-thread results differ", moe_type_name(type));
	for (int64_t tk = 0; tk < n_tok; tk++) {
		for (int64_t r = 0; r < rows; r++) {
			const float *xr = x + tk * cols, *wr = wf + r * cols;
			double ref = 0, tol = 0, mag = 0;
			uint32_t ab = moe_type_block_elems(t->vec_dot_type);

			for (int64_t c = 0; c < cols; c += ab) {
				double amax = 0, sw = 0;

				for (int64_t k = c; k < c + ab; k++) {
					ref += (double)wr[k] * xr[k];
					mag += fabs((double)wr[k] * xr[k]);
					amax = fmax(amax, fabs(xr[k]));
					sw += fabs(wr[k]);
				}
				/* |x - q*d| <= d/2 plus the f16 rounding of d: below 0.6*d */
				if (t->vec_dot_type != MOE_TYPE_F32)
					tol += 0.6 * amax / 127 * sw;
			}
			tol += DOT_TOL * mag;
			ck_assert_msg(fabs(y[tk * rows + r] - ref) <= tol,
				      "%s t=%lld r=%lld: %.9g vs %.9g tol %.3g", moe_type_name(type),
				      (long long)tk, (long long)r, y[tk * rows + r], ref, tol);
		}
	}
	free(w);
	free(wf);
	free(x);
	free(y);
	free(y1);
}

START_TEST(matmul_vs_f64)
{
	struct moe_threadpool *pool;
	uint64_t st = 9;

	use_isa(_i);
	ck_assert_int_eq(moe_threadpool_create(3, &pool), 0);
	for (int pass = 0; pass < 2; pass++) {
		use_scalar(pass == 1);
		for (size_t t = 0; t < sizeof(qtypes) / sizeof(qtypes[0]); t++)
			check_matmul(qtypes[t].type, pool, &st);
	}
	use_scalar(false);
	moe_threadpool_destroy(pool);
}
END_TEST

START_TEST(dequant_row)
{
	const int64_t cols = 512;
	float x[3 * 512], y[512];
	uint8_t q[3 * 512];
	uint64_t st = 13;

	for (int i = 0; i < 3 * cols; i++)
		x[i] = (float)tu_randn(&st);
	moe_quantize(MOE_TYPE_Q4_K, x, q, 3 * cols);
	moe_dequantize(MOE_TYPE_Q4_K, q, x, 3 * cols);
	ck_assert_int_eq(moe_dequant_row(MOE_TYPE_Q4_K, q, cols, 2, y), 0);
	ck_assert(!memcmp(y, x + 2 * cols, sizeof(y)));
	ck_assert_int_eq(moe_dequant_row(MOE_TYPE_Q4_K, q, cols, -1, y), -EINVAL);
}
END_TEST

START_TEST(bad_input)
{
	float x[64] = { 0 }, y[64];
	uint8_t q[256];

	ck_assert_int_eq(moe_quantize(MOE_TYPE_Q4_0, x, q, 33), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "multiple"));
	ck_assert_int_eq(moe_dequantize(MOE_TYPE_Q4_K, q, y, 64), -EINVAL);
	ck_assert_int_eq(moe_quantize(4, x, q, 32), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "unknown type"));
	ck_assert_int_eq(moe_quantize(MOE_TYPE_IQ2_XXS, x, q, 256), -EOPNOTSUPP);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "iq2_xxs"));
	ck_assert_int_eq(moe_matmul(NULL, MOE_TYPE_Q4_K, q, 1, 64, x, 1, y), -EINVAL);
	ck_assert_int_eq(moe_matmul(NULL, MOE_TYPE_Q8_0, q, -1, 32, x, 1, y), -EINVAL);
	ck_assert_int_eq(moe_matmul(NULL, MOE_TYPE_Q8_0, q, 0, 32, x, 1, y), 0);
	ck_assert_int_eq(moe_dequantize(MOE_TYPE_Q8_0, NULL, y, 32), -EINVAL);
	x[40] = NAN;
	ck_assert_int_eq(moe_quantize(MOE_TYPE_Q4_0, x, q, 64), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "element 40"));
	x[40] = INFINITY;
	ck_assert_int_eq(moe_quantize(MOE_TYPE_MXFP4, x, q, 64), -EINVAL);
	ck_assert_int_eq(moe_quantize(MOE_TYPE_F16, x, q, 64), 128);
}
END_TEST

/* ------------------------------------------------------------ thread pool */

struct count_job {
	_Atomic int calls[8];
	_Atomic int bad_nth;
	int nth;
};

static void count_fn(void *arg, int ith, int nth)
{
	struct count_job *j = arg;

	if (nth != j->nth || ith < 0 || ith >= nth)
		atomic_fetch_add(&j->bad_nth, 1);
	else
		atomic_fetch_add(&j->calls[ith], 1);
}

static void nested_fn(void *arg, int ith, int nth)
{
	struct moe_threadpool **tp = arg;
	struct count_job inner = { .nth = 1 };

	(void)nth;
	if (ith == 0) {
		moe_threadpool_run(*tp, count_fn, &inner);
		ck_assert_int_eq(atomic_load(&inner.calls[0]), 1);
		ck_assert_int_eq(atomic_load(&inner.bad_nth), 0);
	}
}

START_TEST(threadpool_runs)
{
	for (int n = 1; n <= 4; n++) {
		struct moe_threadpool *tp;
		struct count_job j = { .nth = n };
		const int runs = 3000;

		ck_assert_int_eq(moe_threadpool_create(n, &tp), 0);
		ck_assert_int_eq(moe_threadpool_size(tp), n);
		for (int r = 0; r < runs; r++)
			moe_threadpool_run(tp, count_fn, &j);
		for (int i = 0; i < n; i++)
			ck_assert_int_eq(atomic_load(&j.calls[i]), runs);
		ck_assert_int_eq(atomic_load(&j.bad_nth), 0);
		moe_threadpool_run(tp, nested_fn, &tp);
		moe_threadpool_destroy(tp);
	}
}
END_TEST

/* Workers that went to sleep (past the spin) still wake for the next run. */
START_TEST(threadpool_sleep_wake)
{
	struct moe_threadpool *tp;
	struct count_job j = { .nth = 3 };
	struct timespec ts = { 0, 20 * 1000 * 1000 };

	ck_assert_int_eq(moe_threadpool_create(3, &tp), 0);
	for (int r = 0; r < 5; r++) {
		nanosleep(&ts, NULL);
		moe_threadpool_run(tp, count_fn, &j);
	}
	for (int i = 0; i < 3; i++)
		ck_assert_int_eq(atomic_load(&j.calls[i]), 5);
	moe_threadpool_destroy(tp);
	ck_assert_int_eq(moe_threadpool_create(0, &tp), 0);
	ck_assert_int_ge(moe_threadpool_size(tp), 1);
	moe_threadpool_destroy(tp);
	ck_assert_int_eq(moe_threadpool_size(NULL), 1);
	ck_assert_int_eq(moe_threadpool_create(100000, &tp), -EINVAL);
}
END_TEST

/* One run of @fn per SIMD instruction set this CPU has, _i being the ISA. */
#define add_per_isa(tc, fn)                                                          \
	do {                                                                         \
		for (int isa_ = MOE_ISA_AVX2; isa_ < MOE_ISA_COUNT; isa_++)          \
			if (moe_quant_isa_available((enum moe_cpu_isa)isa_))         \
				tcase_add_loop_test(tc, fn, isa_, isa_ + 1);         \
	} while (0)

Suite *suite_quant(void)
{
	Suite *s = suite_create("quant");
	TCase *kat = tcase_create("known_answers");
	TCase *rnd = tcase_create("random");
	TCase *mm = tcase_create("matmul");
	TCase *tp = tcase_create("threadpool");

	static const char *const lacks[MOE_ISA_COUNT] = {
		[MOE_ISA_AVX2] = "this CPU (or OS) lacks AVX2+FMA+F16C",
		[MOE_ISA_AVX512] = "this CPU (or OS) lacks AVX-512 F/BW/VL/DQ",
		[MOE_ISA_AVX512VNNI] = "this CPU (or OS) lacks AVX-512 VNNI",
	};

	/* the SIMD comparisons once per instruction set the CPU has, whatever MOE_CPU_ISA says */
	for (int isa = MOE_ISA_AVX2; isa < MOE_ISA_COUNT; isa++) {
		char name[64];

		if (moe_quant_isa_available((enum moe_cpu_isa)isa))
			continue;
		snprintf(name, sizeof(name), "quant %s kernels", moe_quant_isa_name(isa));
		tu_skip(name, lacks[isa]);
	}
	add_per_isa(kat, kat_float);
	tcase_add_test(kat, kat_float_encode);
	tcase_add_test(kat, f16_roundtrip_all);
	add_per_isa(kat, kat_legacy);
	add_per_isa(kat, kat_mxfp4);
	add_per_isa(kat, kat_q4_k_q5_k);
	add_per_isa(kat, kat_q6_k_q8_k);
	add_per_isa(rnd, dequant_vs_spec);
	add_per_isa(rnd, dot_vs_f64);
	add_per_isa(rnd, dot_float_tails);
	for (int isa = MOE_ISA_AVX512; isa < MOE_ISA_COUNT; isa++)
		if (moe_quant_isa_available((enum moe_cpu_isa)isa))
			tcase_add_loop_test(rnd, dot_same_as_avx2, isa, isa + 1);
	add_per_isa(rnd, dot_x4_matches_single);
	add_per_isa(rnd, dot_r4_matches_single);
	tcase_add_test(rnd, quantize_error_bounds);
	tcase_add_test(rnd, quantize_degenerate);
	tcase_add_test(rnd, quantize_k_fit_matches_reference);
	add_per_isa(rnd, simd_quantize_matches_scalar);
	add_per_isa(rnd, activation_rounding);
	add_per_isa(mm, matmul_vs_f64);
	tcase_add_test(mm, dequant_row);
	tcase_add_test(mm, bad_input);
	tcase_add_test(tp, threadpool_runs);
	tcase_add_test(tp, threadpool_sleep_wake);
	tcase_set_timeout(rnd, 120);
	tcase_set_timeout(mm, 60);
	tcase_set_timeout(tp, 60);
	suite_add_tcase(s, kat);
	suite_add_tcase(s, rnd);
	suite_add_tcase(s, mm);
	suite_add_tcase(s, tp);
	return s;
}
