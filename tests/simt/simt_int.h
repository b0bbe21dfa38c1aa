/* SPDX-License-Identifier: MIT */
/*
 * Internals of the emulation runtime shared by simt_rt.cc (launches, fibers,
 * barriers, warp operations) and simt_mem.cc (shared memory, the race
 * checker, the access hooks, atomics).  Not seen by kernels.
 */
#ifndef SIMT_INT_H
#define SIMT_INT_H

#include <atomic>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <pthread.h>
#include <ucontext.h>

#include "simt_api.h"

struct uint3;
struct dim3;

namespace simt {

struct site;

enum { F_RUN, F_BAR, F_WARP, F_EXIT };

/* One CUDA thread. */
struct fiber {
	void *sp;                /* saved stack pointer of the built-in switch */
	ucontext_t *uc;          /* its context when switching with ucontext */
	char *stack;             /* lowest usable byte; the guard is just below */
	void *fake_stack;        /* AddressSanitizer's fake stack while switched out */
	unsigned id;             /* linear index in the block */
	unsigned tx, ty, tz;
	int state;
	const char *file;        /* where it waits */
	int line;
	int wkind;
	unsigned wmask;
	uint64_t wres;           /* result of its last warp operation */
};

/* A warp operation some lanes have reached and others not yet. */
struct warp_group {
	int kind;
	unsigned mask, arrived;
	int width;
	unsigned bytes;
	const char *file;
	int line;
	uint64_t val[32];
	int arg[32];
};

#define SIMT_MAX_GROUPS 16

struct warp_state {
	unsigned lanes;          /* lanes that exist */
	unsigned exited;
	unsigned ngroups;
	uint32_t last_sync;      /* checker epoch of the warp's last collective */
	warp_group groups[SIMT_MAX_GROUPS];
};

/* Race-checker state of one shared-memory byte. */
struct shadow {
	uint32_t w_ep;           /* epoch of the last write; below the block's: not allocated */
	uint32_t r_ep;           /* epoch of the last read */
	uint16_t writer;         /* thread of the last write, or SH_ATOMIC */
	uint16_t reader;         /* thread of the reads since the last sync, or SH_MULTI* */
};

#define SH_ATOMIC 0xfffeu
#define SH_MULTI 0xffffu           /* readers in several warps */
#define SH_MULTI_WARP 0x8000u      /* | warp: several readers, all in one warp */

struct shared_alloc {
	const site *s;
	unsigned off, size;
};

#define SIMT_MAX_ALLOCS 64
#define SIMT_STATIC_LIMIT 49152u   /* static __shared__ per block, as every sm_80+ GPU */
#define SIMT_REDZONE 32u
#define SIMT_DYN_OFF (56u << 10)   /* static declarations and their redzones fit below */
#define SIMT_TAIL (4u << 10)

struct config {
	unsigned threads;
	int check;
	uint64_t seed;
	size_t stack_bytes;
	int ucontext;
	unsigned shared_optin;
};

struct launch {
	const simt_kernel *k;
	void **params;
	unsigned gx, gy, gz, bx, by, bz;
	unsigned shared;
	uint64_t nblocks;
	uint64_t perm_a, perm_c;   /* check mode: block i runs as (a * i + c) mod n */
	config cfg;
	uint64_t serial;
	std::atomic<uint64_t> next;
	std::atomic<bool> failed;
	pthread_mutex_t lock;
	int err;
	char msg[1024];
};

/* What one OS thread needs to run blocks; pooled across launches. */
struct worker {
	/* memory, kept across launches */
	char *stacks;
	size_t stacks_len, stack_stride, stack_bytes;
	unsigned nstacks;
	fiber *fibers;
	char *arena;
	size_t arena_len;
	shadow *sh;
	char *altstack;
	size_t altstack_len;
	bool stacks_dirty;
	worker *next;

	/* the block running */
	launch *L;
	unsigned bx, by, bz;       /* blockIdx */
	unsigned nthreads, nwarps;
	fiber *cur;                /* running fiber, NULL on the scheduler */
	void *sched_sp;
	ucontext_t sched_uc;
	void *sched_fake;
	const void *sched_lo;
	size_t sched_size;
	unsigned *runq;
	unsigned rq_head, rq_len, rq_cap;
	unsigned bar_count, bar_first;
	const char *bar_file;
	int bar_line;
	const char *last_bar_file; /* the barrier that opened the current interval */
	int last_bar_line;
	unsigned nexited, first_exited;
	warp_state warps[32];
	shared_alloc allocs[SIMT_MAX_ALLOCS];
	unsigned nallocs, static_used, static_top;
	unsigned dyn_size;
	const site *dyn_site;
	uint32_t epoch, blk_epoch, last_bar;
	uint64_t rng;
	int err;
	char msg[1024];
};

extern thread_local worker *t_worker;
/* Shared-memory window the hooks check: set while a checked block runs. */
extern thread_local uintptr_t t_sh_lo;
extern thread_local size_t t_sh_len;

/* Fail the running block: records the message and leaves the fiber for good. */
[[noreturn]] void fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "kernel 'k' block (x,y,z)" of the running block into @buf. */
void block_prefix(const worker *w, char *buf, size_t len);
/* "(x,y,z)" of thread @id of the running block. */
const char *tid_str(const worker *w, unsigned id, char *buf, size_t len);
/* "file:line", without the directories. */
const char *site_str(const char *file, int line, char *buf, size_t len);
worker *running_worker(const char *what);

/* simt_mem.cc */
void shared_block_start(worker *w);
void shared_sync_epoch(worker *w);
void device_check(uintptr_t a, size_t n, int write, void *pc);

} /* namespace simt */

#endif
