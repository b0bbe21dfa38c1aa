/* SPDX-License-Identifier: MIT */
/*
 * A stand-in for libcuda.so.1 in the loader's test: every entry point under
 * the name libcuda exports, forwarding to the table bound with
 * simt_libcuda_bind() (the fake driver's).  The Makefile builds it as
 * $(BUILD)/tests/libcuda_fake.so.
 */
#include "backend/cuda_api.h"

static struct moe_cuda_api bound;

__attribute__((visibility("default"))) void simt_libcuda_bind(const struct moe_cuda_api *api)
{
	bound = *api;
}

#define SIMT_FORWARD(name, symbol, fallback, params, args)                      \
	__attribute__((visibility("default"))) CUresult fwd_##name params        \
		__asm__(symbol);                                                  \
	CUresult fwd_##name params                                                \
	{                                                                         \
		return bound.name args;                                           \
	}
MOE_CUDA_ENTRIES(SIMT_FORWARD)
#undef SIMT_FORWARD
