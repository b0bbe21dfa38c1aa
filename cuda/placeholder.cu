/* SPDX-License-Identifier: MIT */
/*
 * A placeholder until the backend's kernels land in cuda/: the fatbin build,
 * its embedding in libmoe and the load-by-name path of the emulation need
 * one kernel to carry.  Delete this file once cuda/ has a real kernel (and
 * point the placeholder test in tests/unit/test_simt.c at that kernel).
 */
#include "common.cuh"

extern "C" __global__ void moe_placeholder(unsigned *out)
{
	if (blockIdx.x == 0 && threadIdx.x == 0)
		out[0] = 0x6d6f65u;
}
MOE_KERNEL(moe_placeholder);
