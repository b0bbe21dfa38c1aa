/* SPDX-License-Identifier: MIT */
/*
 * A whole simulated CUDA driver in one library, for other processes than
 * the test binary: libcuda_fake.c's entry points bound, when the library
 * loads, to the fake driver (tests/simt/fake_cuda.cc) with the kernels of
 * cuda/ on the emulation linked in.  The Makefile builds it as
 * $(BUILD)/tests/libcuda_sim.so; MOE_CUDA_LIBRARY pointing at it runs
 * moe-run, moe-bench and tests/gpu/check.sh here without a GPU.
 * SIMT_FAKE_MIB sets the device's memory (default 256 MiB).
 */
#include <stdlib.h>

#include "fake_cuda.h"
#include "libcuda_fake.c"

__attribute__((constructor)) static void sim_driver_bind(void)
{
	struct simt_fake_config cfg = { 0 };
	const char *mib = getenv("SIMT_FAKE_MIB");
	struct moe_cuda_api api;

	if (mib && *mib)
		cfg.total_mem = (size_t)strtoull(mib, NULL, 10) << 20;
	simt_fake_cuda_reset(&cfg);
	simt_fake_cuda_api(&api);
	simt_libcuda_bind(&api);
}
