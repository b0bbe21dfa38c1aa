/* SPDX-License-Identifier: MIT */
/*
 * The fatbin nvcc built from the .cu files of cuda/, embedded with .incbin
 * when the build found nvcc (the Makefile defines MOE_CUDA_FATBIN to its
 * path), else empty.
 */
#include <errno.h>

#include "backend/cuda_api.h"
#include "util/util.h"

#ifdef MOE_CUDA_FATBIN
/* 64-byte aligned: cuModuleLoadData wants an aligned fatbin header. */
__asm__(".section .rodata.moe_cuda_fatbin,\"a\",@progbits\n"
	".balign 64\n"
	".globl moe_cuda_fatbin_data\n"
	".hidden moe_cuda_fatbin_data\n"
	"moe_cuda_fatbin_data:\n"
	".incbin \"" MOE_CUDA_FATBIN "\"\n"
	"moe_cuda_fatbin_end:\n"
	".balign 8\n"
	".globl moe_cuda_fatbin_size\n"
	".hidden moe_cuda_fatbin_size\n"
	"moe_cuda_fatbin_size:\n"
	".quad moe_cuda_fatbin_end - moe_cuda_fatbin_data\n"
	".previous\n");
#else
const unsigned char moe_cuda_fatbin_data[1] __attribute__((visibility("hidden"))) = {0};
const size_t moe_cuda_fatbin_size __attribute__((visibility("hidden"))) = 0;
#endif

extern const unsigned char moe_cuda_fatbin_data[];
extern const size_t moe_cuda_fatbin_size;

const void *moe_cuda_fatbin(size_t *size)
{
	*size = moe_cuda_fatbin_size;
	if (!moe_cuda_fatbin_size) {
		moe_err(ENOENT, "built without CUDA kernels: nvcc was not found when libmoe was "
			"built (install the CUDA toolkit, or pass NVCC=/path/to/nvcc to make)");
		return NULL;
	}
	return moe_cuda_fatbin_data;
}
