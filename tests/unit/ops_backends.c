/* SPDX-License-Identifier: MIT */
#include <stdlib.h>

#include "ops_backends.h"
#include "quant/quant.h"
#include "util/threadpool.h"

static struct moe_threadpool *pool2;

static int cpu_with(uint64_t budget, struct moe_threadpool *pool, uint32_t flags,
		    struct moe_backend **out)
{
	struct moe_backend_params p = { .budget = budget, .pool = pool, .flags = flags };

	return moe_backend_create(&moe_backend_cpu_desc, &p, out);
}

static int cpu1(uint64_t budget, struct moe_backend **out)
{
	return cpu_with(budget, NULL, 0, out);
}

/* Two threads with a low threshold for going parallel: the split must not change results. */
static int cpu2(uint64_t budget, struct moe_backend **out)
{
	if (!pool2 && moe_threadpool_create(2, &pool2) < 0)
		return -1;
	return cpu_with(budget, pool2, 0, out);
}

static int cpu_guard(uint64_t budget, struct moe_backend **out)
{
	return cpu_with(budget, NULL, MOE_BE_F_GUARD, out);
}

static void destroy(struct moe_backend *be)
{
	moe_backend_destroy(be);
}

/*
 * The plain CPU backend on a lower instruction set than the best one, so the
 * AVX2 kernels (and AVX-512 without VNNI) are checked on an AVX-512 VNNI
 * machine too; plain "cpu" runs the best, or what MOE_CPU_ISA names.  The
 * kernel choice is process-wide; every test runs in its own process.
 */
static int cpu_on(enum moe_cpu_isa isa, uint64_t budget, struct moe_backend **out)
{
	int ret = moe_quant_force_isa(isa);

	return ret ? ret : cpu_with(budget, NULL, 0, out);
}

static int cpu_avx2(uint64_t budget, struct moe_backend **out)
{
	return cpu_on(MOE_ISA_AVX2, budget, out);
}

static int cpu_avx512(uint64_t budget, struct moe_backend **out)
{
	return cpu_on(MOE_ISA_AVX512, budget, out);
}

static int cpu_scalar(uint64_t budget, struct moe_backend **out)
{
	return cpu_on(MOE_ISA_SCALAR, budget, out);
}

static void destroy_isa(struct moe_backend *be)
{
	moe_backend_destroy(be);
	moe_quant_force_scalar(false);
}

static const char *no_avx512(void)
{
	return moe_quant_isa_available(MOE_ISA_AVX512) ? NULL :
	       "this CPU (or OS) lacks AVX-512 F/BW/VL/DQ";
}

static const char *no_avx2(void)
{
	return moe_quant_isa_available(MOE_ISA_AVX2) ? NULL :
	       "this CPU (or OS) lacks AVX2+FMA+F16C";
}

const struct ops_backend ops_backends[] = {
	{ "cpu", NULL, cpu1, destroy },
	{ "cpu-2threads", NULL, cpu2, destroy },
	{ "cpu-guard", NULL, cpu_guard, destroy },
	{ "cpu-avx512", no_avx512, cpu_avx512, destroy_isa },
	{ "cpu-avx2", no_avx2, cpu_avx2, destroy_isa },
	{ "cpu-scalar", NULL, cpu_scalar, destroy_isa },
};
const size_t ops_backend_count = sizeof(ops_backends) / sizeof(ops_backends[0]);
