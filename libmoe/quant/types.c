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
 * One table per instruction set, each the one below it with the kernels of
 * its own file swapped in, built once; `active` points at one of them.
 */
static struct moe_type_traits isa_traits[MOE_ISA_COUNT][MOE_TYPE_COUNT];
static bool isa_ok[MOE_ISA_COUNT];
static enum moe_cpu_isa chosen;
static _Atomic(const struct moe_type_traits *) active;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static const char *const isa_names[MOE_ISA_COUNT] = {
	[MOE_ISA_SCALAR] = "scalar",
	[MOE_ISA_AVX2] = "avx2",
	[MOE_ISA_AVX512] = "avx512",
	[MOE_ISA_AVX512VNNI] = "avx512vnni",
};

#ifndef bit_AVX512VNNI
#define bit_AVX512VNNI (1u << 11)
#endif

/*
 * What cpuid reports and the OS saves (XCR0: YMM for AVX2, opmask and the
 * ZMM upper halves and upper 16 registers for AVX-512); clang lacks "f16c"
 * in __builtin_cpu_supports, hence cpuid by hand.
 */
static void detect_isas(bool ok[MOE_ISA_COUNT])
{
	ok[MOE_ISA_SCALAR] = true;
#if defined(__x86_64__) || defined(__i386__)
	unsigned a, b, c, d, lo, hi, avx512 = bit_AVX512F | bit_AVX512BW | bit_AVX512VL |
					      bit_AVX512DQ;

	if (!__get_cpuid(1, &a, &b, &c, &d))
		return;
	if (!(c & bit_FMA) || !(c & bit_F16C) || !(c & bit_OSXSAVE) || !(c & bit_AVX))
		return;
	__asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	if ((lo & 0x06) != 0x06 || !__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return;
	ok[MOE_ISA_AVX2] = b & bit_AVX2;
	ok[MOE_ISA_AVX512] = ok[MOE_ISA_AVX2] && (b & avx512) == avx512 && (lo & 0xe6) == 0xe6;
	ok[MOE_ISA_AVX512VNNI] = ok[MOE_ISA_AVX512] && (c & bit_AVX512VNNI);
#endif
}

static void apply(struct moe_type_traits *tab, const struct moe_simd_kernels *k, int count)
{
	for (int i = 0; i < count; i++, k++) {
		struct moe_type_traits *t = &tab[k->type];

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
		if (k->vec_dot_r4)
			t->vec_dot_r4 = k->vec_dot_r4;
	}
}

/* The ISA MOE_CPU_ISA (or MOE_NO_SIMD) asks for, the best available without either. */
static enum moe_cpu_isa pick_isa(void)
{
	const char *env = getenv("MOE_CPU_ISA"), *no_simd = getenv("MOE_NO_SIMD");
	enum moe_cpu_isa best = MOE_ISA_SCALAR;

	for (int i = 0; i < MOE_ISA_COUNT; i++)
		if (isa_ok[i])
			best = (enum moe_cpu_isa)i;
	if (no_simd && *no_simd && strcmp(no_simd, "0")) {
		moe_log(MOE_LOG_INFO, "MOE_NO_SIMD is set: using the scalar quant kernels");
		return MOE_ISA_SCALAR;
	}
	if (!env || !*env)
		return best;
	for (int i = 0; i < MOE_ISA_COUNT; i++) {
		if (strcasecmp(env, isa_names[i]))
			continue;
		if (isa_ok[i]) {
			moe_log(MOE_LOG_INFO, "MOE_CPU_ISA=%s: using the %s quant kernels", env,
				isa_names[i]);
			return (enum moe_cpu_isa)i;
		}
		moe_log(MOE_LOG_WARN, "MOE_CPU_ISA=%s: this CPU lacks it; using %s", env,
			isa_names[best]);
		return best;
	}
	moe_log(MOE_LOG_WARN, "MOE_CPU_ISA=%s is not an instruction set; expected scalar, avx2, "
		"avx512 or avx512vnni; using %s", env, isa_names[best]);
	return best;
}

static void init_tables(void)
{
	detect_isas(isa_ok);
	memcpy(isa_traits[MOE_ISA_SCALAR], traits, sizeof(traits));
	memcpy(isa_traits[MOE_ISA_AVX2], traits, sizeof(traits));
	apply(isa_traits[MOE_ISA_AVX2], moe_avx2_kernels, moe_avx2_kernel_count);
	memcpy(isa_traits[MOE_ISA_AVX512], isa_traits[MOE_ISA_AVX2], sizeof(traits));
	apply(isa_traits[MOE_ISA_AVX512], moe_avx512_kernels, moe_avx512_kernel_count);
	memcpy(isa_traits[MOE_ISA_AVX512VNNI], isa_traits[MOE_ISA_AVX512], sizeof(traits));
	apply(isa_traits[MOE_ISA_AVX512VNNI], moe_avx512vnni_kernels,
	      moe_avx512vnni_kernel_count);
	chosen = pick_isa();
	atomic_store(&active, isa_traits[chosen]);
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

bool moe_quant_isa_available(enum moe_cpu_isa isa)
{
	pthread_once(&init_once, init_tables);
	return isa >= 0 && isa < MOE_ISA_COUNT && isa_ok[isa];
}

const char *moe_quant_isa_name(enum moe_cpu_isa isa)
{
	return isa >= 0 && isa < MOE_ISA_COUNT ? isa_names[isa] : NULL;
}

int moe_quant_force_isa(enum moe_cpu_isa isa)
{
	if (!moe_quant_isa_available(isa))
		return -EOPNOTSUPP;
	atomic_store(&active, isa_traits[isa]);
	return 0;
}

void moe_quant_force_scalar(bool scalar)
{
	pthread_once(&init_once, init_tables);
	atomic_store(&active, isa_traits[scalar ? MOE_ISA_SCALAR : chosen]);
}

const char *moe_quant_simd_name(void)
{
	const struct moe_type_traits *t;

	pthread_once(&init_once, init_tables);
	t = atomic_load(&active);
	for (int i = 0; i < MOE_ISA_COUNT; i++)
		if (t == isa_traits[i])
			return isa_names[i];
	return "scalar";
}

const char *moe_cpu_isa(void)
{
	return moe_quant_simd_name();
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

int moe_type_block_elems(uint32_t type)
{
	const struct moe_type_traits *t = moe_type_traits(type);

	if (!t)
		return moe_err(EINVAL, "unknown tensor type id %u", type);
	return (int)t->block;
}

int moe_type_block_bytes(uint32_t type)
{
	const struct moe_type_traits *t = moe_type_traits(type);

	if (!t)
		return moe_err(EINVAL, "unknown tensor type id %u", type);
	return (int)t->bytes;
}

int64_t moe_type_row_bytes(uint32_t type, uint64_t n)
{
	const struct moe_type_traits *t = moe_type_traits(type);

	if (!t || n % t->block || n / t->block > (uint64_t)INT64_MAX / t->bytes)
		return -EINVAL;
	return (int64_t)(n / t->block * t->bytes);
}
