/* SPDX-License-Identifier: MIT */
/*
 * GGML block layouts (FORMATS.md section 2), bit-exact with the files other
 * GGUF implementations write.  Weight blocks are packed: a tensor is only
 * 32-byte aligned and blocks of 17, 18 or 34 bytes follow each other, so no
 * field may assume natural alignment.
 */
#ifndef MOE_QUANT_BLOCKS_H
#define MOE_QUANT_BLOCKS_H

#include <assert.h>
#include <stdint.h>
#include <string.h>

#define QK 32       /* elements in a Q4_0/Q4_1/Q5_x/Q8_0/MXFP4 block */
#define QK_K 256    /* elements in a K-quant super-block */
#define K_SCALE_BYTES 12

#define MOE_PACKED __attribute__((packed))

struct MOE_PACKED block_q4_0 {
	uint16_t d;
	uint8_t qs[QK / 2];
};

struct MOE_PACKED block_q4_1 {
	uint16_t d;
	uint16_t m;
	uint8_t qs[QK / 2];
};

struct MOE_PACKED block_q5_0 {
	uint16_t d;
	uint8_t qh[4];          /* little-endian u32: bit j is the 5th bit of element j */
	uint8_t qs[QK / 2];
};

struct MOE_PACKED block_q5_1 {
	uint16_t d;
	uint16_t m;
	uint8_t qh[4];
	uint8_t qs[QK / 2];
};

struct MOE_PACKED block_q8_0 {
	uint16_t d;
	int8_t qs[QK];
};

struct MOE_PACKED block_mxfp4 {
	uint8_t e;              /* E8M0 scale */
	uint8_t qs[QK / 2];
};

struct MOE_PACKED block_q4_k {
	uint16_t d;
	uint16_t dmin;
	uint8_t scales[K_SCALE_BYTES];
	uint8_t qs[QK_K / 2];
};

struct MOE_PACKED block_q5_k {
	uint16_t d;
	uint16_t dmin;
	uint8_t scales[K_SCALE_BYTES];
	uint8_t qh[QK_K / 8];
	uint8_t qs[QK_K / 2];
};

struct MOE_PACKED block_q6_k {
	uint8_t ql[QK_K / 2];
	uint8_t qh[QK_K / 4];
	int8_t scales[QK_K / 16];
	uint16_t d;
};

/* Activations only; we allocate these, so natural alignment holds. */
struct block_q8_k {
	float d;
	int8_t qs[QK_K];
	int16_t bsums[QK_K / 16];   /* sums of groups of 16 qs */
};

static_assert(sizeof(struct block_q4_0) == 18, "q4_0 block");
static_assert(sizeof(struct block_q4_1) == 20, "q4_1 block");
static_assert(sizeof(struct block_q5_0) == 22, "q5_0 block");
static_assert(sizeof(struct block_q5_1) == 24, "q5_1 block");
static_assert(sizeof(struct block_q8_0) == 34, "q8_0 block");
static_assert(sizeof(struct block_mxfp4) == 17, "mxfp4 block");
static_assert(sizeof(struct block_q4_k) == 144, "q4_K block");
static_assert(sizeof(struct block_q5_k) == 176, "q5_K block");
static_assert(sizeof(struct block_q6_k) == 210, "q6_K block");
static_assert(sizeof(struct block_q8_k) == 292, "q8_K block");

/* E2M1 values doubled, indexed by the 4-bit code. */
extern const int8_t moe_mxfp4_k[16];

static inline uint32_t f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	return u;
}

static inline float bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, 4);
	return f;
}

/* IEEE half to float, exact for every input (subnormals, infinities, NaN payloads). */
static inline float moe_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16;
	uint32_t exp = (h >> 10) & 31, man = h & 0x3ff;

	if (exp == 31)
		return bits_f32(sign | 0x7f800000 | man << 13);
	if (exp)
		return bits_f32(sign | (exp + 112) << 23 | man << 13);
	if (!man)
		return bits_f32(sign);
	/* subnormal: man * 2^-24, exact in float */
	exp = 113;
	while (!(man & 0x400)) {
		man <<= 1;
		exp--;
	}
	return bits_f32(sign | exp << 23 | (man & 0x3ff) << 13);
}

/* Float to IEEE half, round to nearest even; overflow gives infinity, NaN stays NaN. */
static inline uint16_t moe_f32_to_f16(float f)
{
	uint32_t x = f32_bits(f);
	uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
	uint32_t a = x & 0x7fffffff;

	if (a > 0x7f800000)
		return sign | 0x7e00 | (uint16_t)((a >> 13) & 0x3ff);
	if (a >= 0x477ff000)    /* 65520 and up round to infinity */
		return sign | 0x7c00;
	if (a < 0x38800000) {   /* below 2^-14: a subnormal half, units of 2^-24 */
		float v = bits_f32(a) * 16777216.0f;
		volatile float magic = 8388608.0f;

		v = (v + magic) - magic;  /* rounds to an integer, nearest even */
		return sign | (uint16_t)v;
	}
	a -= 0x38000000;        /* rebias 127 -> 15 */
	a += 0xfff + ((a >> 13) & 1);
	return sign | (uint16_t)(a >> 13);
}

static inline float moe_bf16_to_f32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

static inline uint16_t moe_f32_to_bf16(float f)
{
	uint32_t x = f32_bits(f);

	if ((x & 0x7fffffff) > 0x7f800000)
		return (uint16_t)((x >> 16) | 0x40);
	return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* MXFP4's E8M0 scale halved, since moe_mxfp4_k holds doubled values: 2^(e-128). */
static inline float moe_e8m0_half(uint8_t e)
{
	return bits_f32(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

/* Q4_K/Q5_K: the 6-bit scale and min of sub-block j (0..7). */
static inline void moe_k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
	if (j < 4) {
		*sc = q[j] & 63;
		*m = q[j + 4] & 63;
	} else {
		*sc = (uint8_t)((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4));
		*m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
	}
}

static inline uint32_t moe_load_u32le(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#endif
