/* SPDX-License-Identifier: MIT */
/*
 * libmoe/backend/cuda_api.h against the real cuda.h, where the Makefile
 * found one (MOE_HAVE_CUDA_H): the constants and the entry points'
 * prototypes are checked at compile time, so a mismatch fails the build; the
 * exported names at run time, by test_simt.c.  Only the lists of cuda_api.h
 * are included here: its types would clash with cuda.h's.
 */
#include <stdio.h>
#include <string.h>

int moe_cuda_abi_check(char *msg, size_t len);

#ifdef MOE_HAVE_CUDA_H
#include <cuda.h>

#define MOE_CUDA_API_LISTS_ONLY
#include "backend/cuda_api.h"

#define CHECK_VALUE(name, value) \
	_Static_assert((long long)(name) == (value), #name " differs from cuda.h");
MOE_CUDA_RESULTS(CHECK_VALUE)
MOE_CUDA_DEVICE_ATTRIBUTES(CHECK_VALUE)
MOE_CUDA_FUNCTION_ATTRIBUTES(CHECK_VALUE)
MOE_CUDA_FLAGS(CHECK_VALUE)
#undef CHECK_VALUE

_Static_assert(sizeof(CUdeviceptr) == sizeof(unsigned long long), "CUdeviceptr");
_Static_assert(sizeof(CUdevice) == sizeof(int), "CUdevice");
_Static_assert(sizeof(CUresult) == sizeof(int), "CUresult");
_Static_assert(sizeof(CUdevice_attribute) == sizeof(int), "CUdevice_attribute");
_Static_assert(sizeof(CUfunction_attribute) == sizeof(int), "CUfunction_attribute");

/* cuda.h #defines each name to the versioned function it declares */
#define CHECK_PROTO(name, symbol, fallback, params, args)                                   \
	_Static_assert(__builtin_types_compatible_p(__typeof__(&name), CUresult(*) params), \
		       #name ": the prototype in cuda_api.h differs from cuda.h's");
MOE_CUDA_ENTRIES(CHECK_PROTO)
#undef CHECK_PROTO

#define STR_(x) #x
#define STR(x) STR_(x)

struct exported {
	const char *field, *ours, *theirs;
};

static const struct exported names[] = {
#define NAME(name, symbol, fallback, params, args) {#name, symbol, STR(name)},
	MOE_CUDA_ENTRIES(NAME)
#undef NAME
};

int moe_cuda_abi_check(char *msg, size_t len)
{
	size_t i;

	if ((unsigned long)(size_t)CU_STREAM_LEGACY != 1) {
		snprintf(msg, len, "cuda.h's CU_STREAM_LEGACY is not 0x1");
		return -1;
	}
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(names[i].ours, names[i].theirs)) {
			snprintf(msg, len, "%s: cuda_api.h loads %s, cuda.h (CUDA %d) calls %s",
				 names[i].field, names[i].ours, CUDA_VERSION, names[i].theirs);
			return -1;
		}
	}
	snprintf(msg, len, "%zu entry points match cuda.h of CUDA %d", i, CUDA_VERSION);
	return (int)i;
}
#else
int moe_cuda_abi_check(char *msg, size_t len)
{
	snprintf(msg, len, "no cuda.h to check libmoe/backend/cuda_api.h against (CUDA_INC=dir "
		 "names the CUDA toolkit's include directory)");
	return 0;
}
#endif
