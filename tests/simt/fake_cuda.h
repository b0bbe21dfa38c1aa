/* SPDX-License-Identifier: MIT */
/*
 * A fake CUDA driver behind struct moe_cuda_api, for testing host code
 * without a GPU: one device whose memory is host memory inside a set total,
 * streams that queue work and run it only when the host waits (so a missing
 * wait shows up as wrong data), events, modules resolved by kernel name from
 * the emulation's registry, kernels run by simt_launch(), and fault
 * injection.  Errors are the codes a real driver returns; a kernel fault or
 * a lost context is sticky, as on a GPU: every later call that needs the
 * context returns it, until the primary context is released to zero.
 * See Documentation/cuda.rst.
 */
#ifndef SIMT_FAKE_CUDA_H
#define SIMT_FAKE_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "backend/cuda_api.h"

#ifdef __cplusplus
extern "C" {
#endif

enum simt_fake_mode {
	SIMT_FAKE_LAZY = 0,     /* queued work runs when the host synchronizes or queries */
	SIMT_FAKE_RANDOM = 1,   /* also some of it at random driver calls (seeded) */
	SIMT_FAKE_EAGER = 2,    /* work runs as it is queued, like a synchronous device */
};

struct simt_fake_config {
	size_t total_mem;       /* device memory; 0: 256 MiB */
	size_t reserved_mem;    /* taken before the first cuMemAlloc; 0: none */
	size_t granularity;     /* each allocation is charged its size rounded up to this; 0: 512 */
	size_t pinned_limit;    /* host memory that may be pinned; 0: no limit */
	int no_device;          /* cuInit fails with CUDA_ERROR_NO_DEVICE */
	int cc_major, cc_minor; /* compute capability; 0: 9.0 */
	int sm_count;           /* 0: 132 */
	int driver_version;     /* cuDriverGetVersion; 0: 13000 */
	const char *name;       /* NULL: "SIMT emulated GPU" */
	const char *pci_bus_id; /* NULL: "0000:17:00.0" */
	int mode;               /* enum simt_fake_mode */
	uint64_t seed;          /* of SIMT_FAKE_RANDOM */
	int quiet;              /* do not print kernel faults to stderr */
};

/* Start over: frees every allocation and handle, clears faults; NULL: defaults. */
void simt_fake_cuda_reset(const struct simt_fake_config *cfg);
/* The fake's entry points (api->lib is NULL). */
void simt_fake_cuda_api(struct moe_cuda_api *api);

/*
 * The @nth call (1: the next) of @entry, a field name of struct moe_cuda_api
 * ("cuMemAlloc"), returns @result and does nothing.  A sticky result
 * (CUDA_ERROR_ILLEGAL_ADDRESS, _LAUNCH_FAILED, _ECC_UNCORRECTABLE,
 * _HARDWARE_STACK_ERROR, _ILLEGAL_INSTRUCTION, _MISALIGNED_ADDRESS,
 * _INVALID_ADDRESS_SPACE, _INVALID_PC, _ASSERT, _UNKNOWN) also loses the
 * context.  -1 for an unknown entry or nth 0.
 */
int simt_fake_cuda_fail(const char *entry, unsigned nth, CUresult result);
/*
 * The @nth kernel launched from now (1: the next) is accepted, then faults
 * on the device with the sticky @result when it runs: the call that waits
 * for it, and every later one, returns @result.
 */
int simt_fake_cuda_fail_kernel(unsigned nth, CUresult result);
/* The context is lost now: @result (sticky) from every call that needs it. */
void simt_fake_cuda_lose_context(CUresult result);

/* Why the last failing call on this thread failed, or the kernel fault. */
const char *simt_fake_cuda_errmsg(void);

struct simt_fake_stats {
	size_t mem_used;        /* charged to cuMemAlloc'd memory now */
	size_t mem_peak;
	unsigned allocs;        /* live device allocations */
	size_t pinned;          /* host bytes registered or from cuMemAllocHost */
	uint64_t launches;      /* kernels run */
	uint64_t h2d_bytes, d2h_bytes, d2d_bytes;
	uint64_t pageable_copies; /* async copies whose host side was not pinned */
	uint64_t ops_pending;   /* queued, not run yet */
};
void simt_fake_cuda_stats(struct simt_fake_stats *st);

#ifdef __cplusplus
}
#endif

#endif
