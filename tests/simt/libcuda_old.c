/* SPDX-License-Identifier: MIT */
/*
 * libcuda_fake.c as a driver older than CUDA 12.8: no cuEventElapsedTime_v2
 * (libcuda_old.map hides it), only the first cuEventElapsedTime.
 */
#include "libcuda_fake.c"

__attribute__((visibility("default"))) CUresult old_elapsed(float *ms, CUevent a, CUevent b)
	__asm__("cuEventElapsedTime");
CUresult old_elapsed(float *ms, CUevent a, CUevent b)
{
	return bound.cuEventElapsedTime(ms, a, b);
}
