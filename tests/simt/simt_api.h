/* SPDX-License-Identifier: MIT */
/*
 * The C interface of the CPU emulation of the CUDA execution model (see
 * Documentation/cuda.rst).  Kernels compiled from .cu sources with simt.h
 * register themselves by name; simt_launch() runs one on a grid shaped as
 * cuLaunchKernel's arguments and returns SIMT_OK or the kind of bug it found,
 * with the details in simt_errmsg().  Host-side test code in C uses only this
 * header.
 */
#ifndef SIMT_API_H
#define SIMT_API_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What a launch found.  Only SIMT_ERR_INVALID is reported before any block runs. */
enum simt_status {
	SIMT_OK = 0,
	SIMT_ERR_INVALID,         /* bad launch configuration, kernel or parameters */
	SIMT_ERR_BARRIER,         /* __syncthreads not reached by every thread at one call site */
	SIMT_ERR_WARP,            /* warp operation: bad mask or width, lanes at other calls */
	SIMT_ERR_DEADLOCK,        /* every live thread waits and no wait can complete */
	SIMT_ERR_STACK,           /* a CUDA thread overflowed its stack */
	SIMT_ERR_RACE,            /* two threads touch one shared byte in one barrier interval */
	SIMT_ERR_UNINIT,          /* read of shared memory no thread of the block wrote */
	SIMT_ERR_SHARED_OOB,      /* access to shared memory outside every declaration */
	SIMT_ERR_SHARED_LIMIT,    /* static shared over 48 KiB, or all shared over the block's */
	SIMT_ERR_ILLEGAL_ADDRESS, /* fault, or access to device memory outside every allocation */
	SIMT_STATUS_COUNT
};

/* Name of a status ("SIMT_ERR_RACE"), or NULL for an unknown value. */
const char *simt_status_name(int status);

/* A kernel registered by MOE_KERNEL(name) after its definition. */
struct simt_kernel;

/* The kernel named @name (its extern "C" name), or NULL with simt_errmsg() set. */
const struct simt_kernel *simt_kernel_find(const char *name);
const char *simt_kernel_name(const struct simt_kernel *k);
/* Number of parameters, and the size in bytes of parameter @i (0 past the last). */
unsigned simt_kernel_param_count(const struct simt_kernel *k);
size_t simt_kernel_param_size(const struct simt_kernel *k, unsigned i);

/*
 * Run @k on a grid of gx*gy*gz blocks of bx*by*bz threads with @shared_bytes
 * of dynamic shared memory; params[i] points at the value of parameter i, as
 * cuLaunchKernel's kernelParams.  Returns when every block has finished, or at
 * the first bug found (the other blocks may not have run).  Safe to call from
 * several threads at once.
 */
int simt_launch(const struct simt_kernel *k, unsigned gx, unsigned gy, unsigned gz,
		unsigned bx, unsigned by, unsigned bz, unsigned shared_bytes, void **params);

/*
 * Check a launch configuration without running it: SIMT_OK or
 * SIMT_ERR_INVALID with simt_errmsg() set.  simt_launch() runs the same checks.
 */
int simt_launch_check(const struct simt_kernel *k, unsigned gx, unsigned gy, unsigned gz,
		      unsigned bx, unsigned by, unsigned bz, unsigned shared_bytes,
		      void **params);

/* Why the last failing call on this thread failed. */
const char *simt_errmsg(void);

struct simt_config {
	unsigned threads;       /* OS threads running blocks; 1 runs them in the caller, in order */
	int check;              /* race, uninitialized and out-of-bounds shared-memory checks and
				 * a randomized order of blocks and of the threads in a block */
	uint64_t seed;          /* seed of that order; a launch's order follows from the seed
				 * and the launches since the last simt_config_set() */
	size_t stack_bytes;     /* stack of each CUDA thread, a guard page below it */
	int ucontext;           /* switch threads with ucontext instead of the built-in switch */
	unsigned shared_optin;  /* most shared memory (static + dynamic) one block may use */
};

/*
 * Defaults: threads = min(4, online CPUs), check = 1, seed = 1, stack_bytes =
 * 64 KiB (256 KiB under AddressSanitizer), ucontext = 0, shared_optin = 232448
 * (227 KiB, as sm_90).  The environment overrides them at the first call:
 * SIMT_THREADS, SIMT_CHECK, SIMT_SEED, SIMT_STACK (bytes), SIMT_UCONTEXT.
 */
void simt_config_get(struct simt_config *cfg);
/* Takes effect for the launches that start after it; -EINVAL on a bad value. */
int simt_config_set(const struct simt_config *cfg);

/*
 * Device memory for illegal-address checks: kernel accesses that land in
 * [base, base + size) must pass @check(ctx, addr, bytes, why, why_len),
 * which returns 0 when the bytes lie inside a live allocation, else -1 with
 * a reason in @why.  Accesses elsewhere are not checked (the emulated
 * kernels run on host memory).  The fake CUDA driver installs its heap here;
 * size 0 removes it.  Not to be changed while a launch runs.
 */
typedef int (*simt_addr_check_fn)(void *ctx, uintptr_t addr, size_t bytes, char *why,
				  size_t why_len);
void simt_device_region(uintptr_t base, size_t size, simt_addr_check_fn check, void *ctx);

#ifdef __cplusplus
}
#endif

#endif
