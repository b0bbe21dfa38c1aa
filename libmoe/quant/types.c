/* SPDX-License-Identifier: MIT */
#include <errno.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "quant/kernels.h"
#include "quant/quant.h"
#include "util/util.h"

#define KERNELS(T, act) \
	.to_float = moe_##T##_to_float, .from_float = moe_##T##_from_float, \
	.vec_dot_type = (act), .vec_dot = moe_vec_dot_##T

/* Block sizes from ggml's block structs; ids are the on-disk GGML ids. */
static const struct moe_type_traits traits[MOE_TYPE_COUNT] = {
	[MOE_TYPE_F32] = { .name = "f32", .block = 1, .bytes = 4,
		KERNELS(f32, MOE_TYPE_F32) },
	[MOE_TYPE_F16] = { .name = "f16", .block = 1, .bytes = 2,
		KERNELS(f16, MOE_TYPE_F32) },
	[MOE_TYPE_Q4_0] = { .name = "q4_0", .block = 32, .bytes = 18, .quantized = true,
		KERNELS(q4_0, MOE_TYPE_Q8_0) },
	[MOE_TYPE_Q4_1] = { .name = "q4_1", .block = 32, .bytes = 20, .quantized = true,
		KERNELS(q4_1, MOE_TYPE_Q8_0) },
	[MOE_TYPE_Q5_0] = { .name = "q5_0", .block = 32, .bytes = 22, .quantized = true,
		KERNELS(q5_0, MOE_TYPE_Q8_0) },
	[MOE_TYPE_Q5_1] = { .name = "q5_1", .block = 32, .bytes = 24, .quantized = true,
		KERNELS(q5_1, MOE_TYPE_Q8_0) },
	[MOE_TYPE_Q8_0] = { .name = "q8_0", .block = 32, .bytes = 34, .quantized = true,
		KERNELS(q8_0, MOE_TYPE_Q8_0), .act_from_float = moe_q8_0_act_from_float },
	[MOE_TYPE_Q8_1] = { .name = "q8_1", .block = 32, .bytes = 36, .quantized = true },
	[MOE_TYPE_Q2_K] = { .name = "q2_K", .block = 256, .bytes = 84, .quantized = true },
	[MOE_TYPE_Q3_K] = { .name = "q3_K", .block = 256, .bytes = 110, .quantized = true },
	[MOE_TYPE_Q4_K] = { .name = "q4_K", .block = 256, .bytes = 144, .quantized = true,
		KERNELS(q4_k, MOE_TYPE_Q8_K) },
	[MOE_TYPE_Q5_K] = { .name = "q5_K", .block = 256, .bytes = 176, .quantized = true,
		KERNELS(q5_k, MOE_TYPE_Q8_K) },
	[MOE_TYPE_Q6_K] = { .name = "q6_K", .block = 256, .bytes = 210, .quantized = true,
		KERNELS(q6_k, MOE_TYPE_Q8_K) },
	[MOE_TYPE_Q8_K] = { .name = "q8_K", .block = 256, .bytes = 292, .quantized = true,
		KERNELS(q8_k, MOE_TYPE_Q8_K) },
	[MOE_TYPE_IQ2_XXS] = { .name = "iq2_xxs", .block = 256, .bytes = 66, .quantized = true },
	[MOE_TYPE_IQ2_XS] = { .name = "iq2_xs", .block = 256, .bytes = 74, .quantized = true },
	[MOE_TYPE_IQ3_XXS] = { .name = "iq3_xxs", .block = 256, .bytes = 98, .quantized = true },
	[MOE_TYPE_IQ1_S] = { .name = "iq1_s", .block = 256, .bytes = 50, .quantized = true },
	[MOE_TYPE_IQ4_NL] = { .name = "iq4_nl", .block = 32, .bytes = 18, .quantized = true },
	[MOE_TYPE_IQ3_S] = { .name = "iq3_s", .block = 256, .bytes = 110, .quantized = true },
	[MOE_TYPE_IQ2_S] = { .name = "iq2_s", .block = 256, .bytes = 82, .quantized = true },
	[MOE_TYPE_IQ4_XS] = { .name = "iq4_xs", .block = 256, .bytes = 136, .quantized = true },
	[MOE_TYPE_I8] = { .name = "i8", .block = 1, .bytes = 1 },
	[MOE_TYPE_I16] = { .name = "i16", .block = 1, .bytes = 2 },
	[MOE_TYPE_I32] = { .name = "i32", .block = 1, .bytes = 4 },
	[MOE_TYPE_I64] = { .name = "i64", .block = 1, .bytes = 8 },
	[MOE_TYPE_F64] = { .name = "f64", .block = 1, .bytes = 8 },
	[MOE_TYPE_IQ1_M] = { .name = "iq1_m", .block = 256, .bytes = 56, .quantized = true },
	[MOE_TYPE_BF16] = { .name = "bf16", .block = 1, .bytes = 2,
		KERNELS(bf16, MOE_TYPE_F32) },
	[MOE_TYPE_TQ1_0] = { .name = "tq1_0", .block = 256, .bytes = 54, .quantized = true },
	[MOE_TYPE_TQ2_0] = { .name = "tq2_0", .block = 256, .bytes = 66, .quantized = true },
	[MOE_TYPE_MXFP4] = { .name = "mxfp4", .block = 32, .bytes = 17, .quantized = true,
		KERNELS(mxfp4, MOE_TYPE_Q8_0) },
};

/*
 * The SIMD table is the scalar one with the kernels the CPU can run swapped
 * in, built once; `active` points at one of the two.
 */
static struct moe_type_traits simd_traits[MOE_TYPE_COUNT];
static const char *simd_name = "scalar";
static _Atomic(const struct moe_type_traits *) active;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* AVX2, FMA and F16C, and an OS that saves the YMM registers (clang lacks "f16c" in cpu_supports). */
static bool cpu_has_avx2(void)
{
#if defined(__x86_64__) || defined(__i386__)
	unsigned a, b, c, d, lo, hi;

	if (!__get_cpuid(1, &a, &b, &c, &d))
		return false;
	if (!(c & bit_FMA) || !(c & bit_F16C) || !(c & bit_OSXSAVE) || !(c & bit_AVX))
		return false;
	__asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	if ((lo & 6) != 6)
		return false;
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return false;
	return b & bit_AVX2;
#else
	return false;
#endif
}

static void init_tables(void)
{
	const char *env = getenv("MOE_NO_SIMD");
	bool no_simd = env && *env && strcmp(env, "0");

	memcpy(simd_traits, traits, sizeof(traits));
	if (cpu_has_avx2()) {
		simd_name = "avx2";
		for (int i = 0; i < moe_avx2_kernel_count; i++) {
			const struct moe_simd_kernels *k = &moe_avx2_kernels[i];
			struct moe_type_traits *t = &simd_traits[k->type];

			if (k->vec_dot)
				t->vec_dot = k->vec_dot;
			if (k->from_float)
				t->from_float = k->from_float;
			if (k->act_from_float)
				t->act_from_float = k->act_from_float;
			if (k->to_float)
				t->to_float = k->to_float;
			if (k->vec_dot_x4)
				t->vec_dot_x4 = k->vec_dot_x4;
		}
	}
	if (no_simd)
		moe_log(MOE_LOG_INFO, "MOE_NO_SIMD is set: using the scalar quant kernels");
	atomic_store(&active, no_simd ? traits : simd_traits);
}

const struct moe_type_traits *moe_type_traits(uint32_t type)
{
	if (type >= MOE_TYPE_COUNT || !traits[type].block)
		return NULL;
	pthread_once(&init_once, init_tables);
	return &atomic_load_explicit(&active, memory_order_acquire)[type];
}

const struct moe_type_traits *moe_type_traits_scalar(uint32_t type)
{
	if (type >= MOE_TYPE_COUNT || !traits[type].block)
		return NULL;
	return &traits[type];
}

void moe_quant_force_scalar(bool scalar)
{
	pthread_once(&init_once, init_tables);
	atomic_store(&active, scalar ? traits : simd_traits);
}

const char *moe_quant_simd_name(void)
{
	pthread_once(&init_once, init_tables);
	return atomic_load(&active) == traits ? "scalar" : simd_name;
}

const char *moe_type_name(uint32_t type)
{
	const struct moe_type_traits *t = moe_type_traits(type);

	return t ? t->name : NULL;
}

int moe_type_from_name(const char *name)
{
	for (uint32_t i = 0; i < MOE_TYPE_COUNT; i++)
		if (traits[i].block && !strcasecmp(traits[i].name, name))
			return (int)i;
	return -EINVAL;
}

uint32_t moe_type_block_elems(uint32_t type)
{
	const struct moe_type_traits *t = moe_type_traits(type);

	return t ? t->block : 0;
}

uint32_t moe_type_block_bytes(uint32_t type)
{
	const struct moe_type_traits *t = moe_type_traits(type);

	return t ? t->bytes : 0;
}

int64_t moe_type_row_bytes(uint32_t type, uint64_t n)
{
	const struct moe_type_traits *t = moe_type_traits(type);

	if (!t || n % t->block || n / t->block > (uint64_t)INT64_MAX / t->bytes)
		return -EINVAL;
	return (int64_t)(n / t->block * t->bytes);
}
