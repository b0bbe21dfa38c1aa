/* SPDX-License-Identifier: MIT */
#include <stdlib.h>

#include "backend/cuda_int.h"
#include "fake_cuda.h"
#include "ops_backends.h"
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

/* The CUDA backend over the fake driver: its kernels run on the emulation. */
static int cuda_sim(uint64_t budget, struct moe_backend **out)
{
	struct simt_fake_config fc = { .quiet = 1 };
	struct moe_backend_params p = { .budget = budget };
	struct moe_cuda_api api;

	simt_fake_cuda_reset(&fc);
	simt_fake_cuda_api(&api);
	return moe_backend_cuda_create_api(&api, &p, out);
}

/* The backend loads the embedded fatbin (the fake takes any image): none without nvcc. */
static const char *cuda_sim_unavailable(void)
{
	size_t n;

	return moe_cuda_fatbin(&n) ? NULL : "libmoe was built without nvcc, so the CUDA backend "
	       "has no fatbin to load";
}

static void cuda_sim_destroy(struct moe_backend *be)
{
	moe_backend_destroy(be);
	simt_fake_cuda_reset(NULL);
}

const struct ops_backend ops_backends[] = {
	{ "cpu", NULL, cpu1, destroy },
	{ "cpu-2threads", NULL, cpu2, destroy },
	{ "cpu-guard", NULL, cpu_guard, destroy },
	{ "cuda-sim", cuda_sim_unavailable, cuda_sim, cuda_sim_destroy },
};
const size_t ops_backend_count = sizeof(ops_backends) / sizeof(ops_backends[0]);
