/* SPDX-License-Identifier: MIT */
/*
 * Included first by every .cu file.  The same source compiles twice: by nvcc
 * into the fatbin, and as C++ with tests/simt/simt.h into the unit tests,
 * where a CPU emulation runs it (Documentation/cuda.rst).  Shared memory and
 * kernel registration go through these macros so that both builds agree:
 *
 *   MOE_SHARED(float, tile, 256);   a __shared__ array of 256 floats
 *   MOE_DYN_SHARED(float, buf);     float *buf: the launch's dynamic shared memory
 *   MOE_KERNEL(name);               after each extern "C" __global__ kernel
 *
 * A two-dimensional array is an array of rows: typedef float row[33];
 * MOE_SHARED(row, tile, 32);
 */
#ifndef MOE_CUDA_COMMON_CUH
#define MOE_CUDA_COMMON_CUH

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define MOE_SHARED(type, name, count) __shared__ type name[count]
/* One untyped extern array: nvcc rejects the same extern __shared__ name with two types. */
#define MOE_DYN_SHARED(type, name)                                       \
	extern __shared__ __align__(16) unsigned char moe_dyn_shared_[]; \
	type *const name = reinterpret_cast<type *>(moe_dyn_shared_)
#define MOE_KERNEL(name)

#elif defined(__SIMT__)
#define MOE_SHARED(type, name, count) SIMT_SHARED(type, name, count)
#define MOE_DYN_SHARED(type, name) SIMT_DYN_SHARED(type, name)
#define MOE_KERNEL(name) SIMT_KERNEL(name)

#else
#error "compile .cu files with nvcc, or as C++ with -include tests/simt/simt.h"
#endif

#endif
