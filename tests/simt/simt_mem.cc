/* SPDX-License-Identifier: MIT */
/*
 * Shared memory of the emulated blocks, the checker behind the checking
 * mode, the per-access hooks the instrumented .cu objects call (the
 * ThreadSanitizer instrumentation's calls, renamed), and the atomics.
 *
 * Each worker has one arena: static declarations are placed from its start
 * with a redzone before each, dynamic shared memory at SIMT_DYN_OFF.  In the
 * checking mode every arena byte has a shadow record: the epoch and thread of
 * its last write and of its reads.  Epochs count synchronization events
 * (block start, each __syncthreads, each completed warp operation); two
 * accesses by different threads are ordered when a __syncthreads, or a
 * collective of their own warp, completed between them.  An unordered write
 * and access to one byte is a race; a byte whose write epoch is the block's
 * allocation mark was never written; one whose epoch predates the block was
 * never declared.
 */
#include <cstdio>
#include <cstring>
#include <dlfcn.h>

#include "simt.h"
#include "simt_int.h"

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#endif
#endif

#ifdef SIMT_ASAN
#include <sanitizer/asan_interface.h>
extern "C" void __asan_report_load_n(void *addr, size_t size);
extern "C" void __asan_report_store_n(void *addr, size_t size);
#endif

namespace simt {

thread_local uintptr_t t_sh_lo;
thread_local size_t t_sh_len;

static uintptr_t g_dev_lo;
static size_t g_dev_len;
static simt_addr_check_fn g_dev_check;
static void *g_dev_ctx;

enum { A_READ, A_WRITE, A_ATOMIC };

static const char *const access_name[] = {"reads", "writes", "atomically updates"};

static void mark(worker *w, unsigned off, unsigned size)
{
	for (unsigned i = 0; i < size; i++) {
		shadow *s = &w->sh[off + i];

		s->w_ep = w->blk_epoch - 1;
		s->r_ep = 0;
		s->writer = s->reader = 0;
	}
}

void shared_block_start(worker *w)
{
	const launch *L = w->L;

	w->nallocs = 0;
	w->static_used = 0;
	w->static_top = 0;
	w->dyn_size = L->shared;
	w->dyn_site = NULL;
	if (w->epoch > 0xf0000000u) {
		memset(w->sh, 0, w->arena_len * sizeof(shadow));
		w->epoch = 4;
	}
	w->epoch += 2;
	w->blk_epoch = w->last_bar = w->epoch;
	for (unsigned i = 0; i < w->nwarps; i++)
		w->warps[i].last_sync = w->epoch;
	memset(w->arena + SIMT_DYN_OFF, 0xff, w->dyn_size);
	if (L->cfg.check) {
		mark(w, SIMT_DYN_OFF, w->dyn_size);
		t_sh_lo = (uintptr_t)w->arena;
		t_sh_len = w->arena_len;
	} else {
		t_sh_len = 0;
	}
}

void shared_sync_epoch(worker *w)
{
	w->epoch++;
}

/* What lies at arena offset @off, for messages. */
static const char *describe(const worker *w, size_t off, char *buf, size_t len)
{
	char s[128];

	for (unsigned i = 0; i < w->nallocs; i++) {
		const shared_alloc *a = &w->allocs[i];

		if (off >= a->off && off < (size_t)a->off + a->size) {
			size_t rel = off - a->off, idx = rel / a->s->elem;

			site_str(a->s->file, a->s->line, s, sizeof(s));
			if (rel % a->s->elem)
				snprintf(buf, len, "'%s'[%zu] byte %zu (declared at %s)",
					 a->s->name, idx, rel % a->s->elem, s);
			else
				snprintf(buf, len, "'%s'[%zu] (declared at %s)", a->s->name, idx,
					 s);
			return buf;
		}
	}
	if (off >= SIMT_DYN_OFF && off < SIMT_DYN_OFF + w->dyn_size) {
		if (w->dyn_site)
			snprintf(buf, len, "dynamic shared memory byte %zu ('%s', declared at %s)",
				 off - SIMT_DYN_OFF, w->dyn_site->name,
				 site_str(w->dyn_site->file, w->dyn_site->line, s, sizeof(s)));
		else
			snprintf(buf, len, "dynamic shared memory byte %zu", off - SIMT_DYN_OFF);
		return buf;
	}
	if (off >= SIMT_DYN_OFF)
		snprintf(buf, len, "dynamic shared memory byte %zu, past the %u bytes of the "
			 "launch", off - SIMT_DYN_OFF, w->dyn_size);
	else
		snprintf(buf, len, "a shared address outside every declaration");
	return buf;
}

/* "unit-tests+0x1234": where in which binary, for addr2line. */
static const char *pc_str(void *pc, char *buf, size_t len)
{
	Dl_info di;

	if (pc && dladdr(pc, &di) && di.dli_fname) {
		const char *base = strrchr(di.dli_fname, '/');

		snprintf(buf, len, "%s+0x%lx", base ? base + 1 : di.dli_fname,
			 (unsigned long)((uintptr_t)pc - (uintptr_t)di.dli_fbase));
	} else {
		snprintf(buf, len, "%p", pc);
	}
	return buf;
}

static unsigned warp_of(unsigned tid)
{
	return tid / 32;
}

/* Is an access at epoch @ep by thread @other ordered before now for thread @tid? */
static bool ordered(const worker *w, uint32_t ep, unsigned other, unsigned tid)
{
	if (ep < w->last_bar)
		return true;
	if (other == SH_ATOMIC)
		return false;
	return warp_of(other) == warp_of(tid) && ep < w->warps[warp_of(tid)].last_sync;
}

static bool reads_ordered(const worker *w, const shadow *s, unsigned tid)
{
	if (s->r_ep < w->blk_epoch || s->r_ep < w->last_bar || s->reader == tid)
		return true;
	if (s->reader == SH_MULTI)
		return false;
	if (s->reader & SH_MULTI_WARP)
		return (s->reader & ~SH_MULTI_WARP) == warp_of(tid) &&
		       s->r_ep < w->warps[warp_of(tid)].last_sync;
	return ordered(w, s->r_ep, s->reader, tid);
}

static const char *who(const worker *w, unsigned id, char *buf, size_t len)
{
	char t[48];

	if (id == SH_ATOMIC)
		snprintf(buf, len, "an atomic operation");
	else if (id == SH_MULTI)
		snprintf(buf, len, "threads of several warps");
	else if (id & SH_MULTI_WARP)
		snprintf(buf, len, "threads of warp %u", id & ~SH_MULTI_WARP);
	else
		snprintf(buf, len, "thread %s", tid_str(w, id, t, sizeof(t)));
	return buf;
}

[[noreturn]] static void race(worker *w, size_t off, int kind, unsigned other, bool other_wrote,
			      void *pc)
{
	char t[48], o[64], d[256], s[128], p[128], since[160];

	if (w->last_bar_file)
		snprintf(since, sizeof(since), "since the __syncthreads at %s",
			 site_str(w->last_bar_file, w->last_bar_line, s, sizeof(s)));
	else
		snprintf(since, sizeof(since), "since the block started");
	fail(SIMT_ERR_RACE, "shared-memory race: thread %s %s %s after %s %s it in the same "
	     "barrier interval (%s; access at %s): a __syncthreads() must separate them",
	     tid_str(w, w->cur->id, t, sizeof(t)), access_name[kind],
	     describe(w, off, d, sizeof(d)), who(w, other, o, sizeof(o)),
	     other_wrote ? "wrote" : "read", since, pc_str(pc, p, sizeof(p)));
}

static void shared_access(worker *w, size_t off, size_t n, int kind, void *pc)
{
	unsigned tid = w->cur->id;
	char t[48], d[256], p[128];

	for (size_t i = 0; i < n; i++) {
		shadow *s = &w->sh[off + i];

		if (off + i >= w->arena_len || s->w_ep < w->blk_epoch - 1)
			fail(SIMT_ERR_SHARED_OOB, "thread %s %s %zu bytes at %s (access at %s)",
			     tid_str(w, tid, t, sizeof(t)), access_name[kind], n,
			     describe(w, off + i, d, sizeof(d)), pc_str(pc, p, sizeof(p)));
		if (kind != A_WRITE && s->w_ep == w->blk_epoch - 1)
			fail(SIMT_ERR_UNINIT, "thread %s %s %s, which no thread of the block has "
			     "written (access at %s)", tid_str(w, tid, t, sizeof(t)),
			     access_name[kind], describe(w, off + i, d, sizeof(d)),
			     pc_str(pc, p, sizeof(p)));
		if (s->w_ep >= w->blk_epoch && s->writer != tid &&
		    !(kind == A_ATOMIC && s->writer == SH_ATOMIC) &&
		    !ordered(w, s->w_ep, s->writer, tid))
			race(w, off + i, kind, s->writer, true, pc);
		if (kind != A_READ) {
			if (!reads_ordered(w, s, tid))
				race(w, off + i, kind, s->reader, false, pc);
			s->w_ep = w->epoch;
			s->writer = kind == A_ATOMIC ? SH_ATOMIC : tid;
			continue;
		}
		if (s->r_ep < w->blk_epoch || s->r_ep < w->last_bar)
			s->reader = tid;
		else if (s->reader != tid && s->reader != SH_MULTI)
			s->reader = (s->reader & SH_MULTI_WARP ? s->reader & ~SH_MULTI_WARP :
				     warp_of(s->reader)) == warp_of(tid) ?
				    SH_MULTI_WARP | warp_of(tid) : SH_MULTI;
		s->r_ep = w->epoch;
	}
}

static inline void shared_check(uintptr_t a, size_t n, int kind, void *pc)
{
	worker *w = t_worker;

	if (w && w->cur)
		shared_access(w, a - (uintptr_t)w->arena, n, kind, pc);
}

void device_check(uintptr_t a, size_t n, int write, void *pc)
{
	worker *w = t_worker;
	char why[256], t[48], p[128];

	if (!w || !w->cur || g_dev_check(g_dev_ctx, a, n, why, sizeof(why)) == 0)
		return;
	fail(SIMT_ERR_ILLEGAL_ADDRESS, "thread %s: illegal address: %s of %zu bytes at device "
	     "address 0x%lx: %s (access at %s)", tid_str(w, w->cur->id, t, sizeof(t)),
	     write ? "write" : "read", n, (unsigned long)a, why, pc_str(pc, p, sizeof(p)));
}

static inline void access(uintptr_t a, size_t n, int kind, void *pc)
{
	if (a - t_sh_lo < t_sh_len) {
		shared_check(a, n, kind, pc);
		return;
	}
	if (a - g_dev_lo < g_dev_len)
		device_check(a, n, kind != A_READ, pc);
#ifdef SIMT_ASAN
	if (n && __asan_region_is_poisoned((void *)a, n)) {
		if (kind == A_READ)
			__asan_report_load_n((void *)a, n);
		else
			__asan_report_store_n((void *)a, n);
	}
#endif
}

} /* namespace simt */

using namespace simt;

/* ---- shared memory declarations ---- */

void *simt::shared_static(const site *s, size_t bytes, size_t align)
{
	worker *w = running_worker("MOE_SHARED");
	char l[128];
	unsigned off;

	for (unsigned i = 0; i < w->nallocs; i++)
		if (w->allocs[i].s == s)
			return w->arena + w->allocs[i].off;
	site_str(s->file, s->line, l, sizeof(l));
	if (w->nallocs == SIMT_MAX_ALLOCS)
		fail(SIMT_ERR_SHARED_LIMIT, "more than %d shared declarations ('%s' at %s)",
		     SIMT_MAX_ALLOCS, s->name, l);
	if (w->static_used + bytes > SIMT_STATIC_LIMIT)
		fail(SIMT_ERR_SHARED_LIMIT, "static shared memory: '%s' (%zu bytes, at %s) takes "
		     "the block to %zu bytes, over the 48 KiB limit (use dynamic shared memory)",
		     s->name, bytes, l, w->static_used + bytes);
	if (w->static_used + bytes + w->dyn_size > w->L->cfg.shared_optin)
		fail(SIMT_ERR_SHARED_LIMIT, "shared memory: '%s' (%zu bytes, at %s) and the %u "
		     "bytes of dynamic shared memory take the block to %zu bytes, over the %u a "
		     "block may have", s->name, bytes, l, w->dyn_size,
		     w->static_used + bytes + w->dyn_size, w->L->cfg.shared_optin);
	if (align < 16)
		align = 16;
	off = (unsigned)((w->static_top + SIMT_REDZONE + align - 1) / align * align);
	if (off + bytes + SIMT_REDZONE > SIMT_DYN_OFF)
		fail(SIMT_ERR_SHARED_LIMIT, "shared declaration '%s' at %s: alignment %zu leaves "
		     "no room for it", s->name, l, align);
	memset(w->arena + off, 0xff, bytes);
	if (w->L->cfg.check)
		mark(w, off, (unsigned)bytes);
	w->allocs[w->nallocs++] = shared_alloc{s, off, (unsigned)bytes};
	w->static_top = off + (unsigned)bytes;
	w->static_used += (unsigned)bytes;
	return w->arena + off;
}

void *simt::shared_dynamic(const site *s, size_t align)
{
	worker *w = running_worker("MOE_DYN_SHARED");
	char l[128];

	if (align > 16)
		fail(SIMT_ERR_SHARED_LIMIT, "dynamic shared memory '%s' at %s: alignment %zu, but "
		     "only 16 is guaranteed", s->name, site_str(s->file, s->line, l, sizeof(l)),
		     align);
	if (!w->dyn_site)
		w->dyn_site = s;
	return w->arena + SIMT_DYN_OFF;
}

/* ---- hooks called by the instrumented .cu objects ---- */

#define SIMT_HOOKS(n)                                                              \
	extern "C" void simt_hook_load##n(uintptr_t a)                             \
	{                                                                          \
		access(a, n, A_READ, __builtin_return_address(0));                 \
	}                                                                          \
	extern "C" void simt_hook_store##n(uintptr_t a)                            \
	{                                                                          \
		access(a, n, A_WRITE, __builtin_return_address(0));                \
	}                                                                          \
	extern "C" void simt_hook_uload##n(uintptr_t a)                            \
	{                                                                          \
		access(a, n, A_READ, __builtin_return_address(0));                 \
	}                                                                          \
	extern "C" void simt_hook_ustore##n(uintptr_t a)                           \
	{                                                                          \
		access(a, n, A_WRITE, __builtin_return_address(0));                \
	}
SIMT_HOOKS(1)
SIMT_HOOKS(2)
SIMT_HOOKS(4)
SIMT_HOOKS(8)
SIMT_HOOKS(16)

extern "C" void simt_hook_loadN(uintptr_t a, size_t n)
{
	access(a, n, A_READ, __builtin_return_address(0));
}

extern "C" void simt_hook_storeN(uintptr_t a, size_t n)
{
	access(a, n, A_WRITE, __builtin_return_address(0));
}

extern "C" void *simt_hook_memcpy(void *dst, const void *src, size_t n)
{
	access((uintptr_t)src, n, A_READ, __builtin_return_address(0));
	access((uintptr_t)dst, n, A_WRITE, __builtin_return_address(0));
	return memcpy(dst, src, n);
}

extern "C" void *simt_hook_memmove(void *dst, const void *src, size_t n)
{
	access((uintptr_t)src, n, A_READ, __builtin_return_address(0));
	access((uintptr_t)dst, n, A_WRITE, __builtin_return_address(0));
	return memmove(dst, src, n);
}

extern "C" void *simt_hook_memset(void *dst, int c, size_t n)
{
	access((uintptr_t)dst, n, A_WRITE, __builtin_return_address(0));
	return memset(dst, c, n);
}

/* The instrumentation's own names for the same calls. */
extern "C" void *simt_hook_tsan_memcpy(void *dst, const void *src, size_t n)
{
	access((uintptr_t)src, n, A_READ, __builtin_return_address(0));
	access((uintptr_t)dst, n, A_WRITE, __builtin_return_address(0));
	return memcpy(dst, src, n);
}

extern "C" void *simt_hook_tsan_memmove(void *dst, const void *src, size_t n)
{
	access((uintptr_t)src, n, A_READ, __builtin_return_address(0));
	access((uintptr_t)dst, n, A_WRITE, __builtin_return_address(0));
	return memmove(dst, src, n);
}

extern "C" void *simt_hook_tsan_memset(void *dst, int c, size_t n)
{
	access((uintptr_t)dst, n, A_WRITE, __builtin_return_address(0));
	return memset(dst, c, n);
}

/* The instrumentation's module constructor: nothing to set up. */
extern "C" void simt_hook_init(void)
{
}

extern "C" void simt_device_region(uintptr_t base, size_t size, simt_addr_check_fn check,
				   void *ctx)
{
	g_dev_check = check;
	g_dev_ctx = ctx;
	g_dev_lo = base;
	g_dev_len = check ? size : 0;
}

/* ---- atomics ---- */

void simt::threadfence()
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
}

namespace {
template <typename T> void atomic_access(T *p, void *pc)
{
	access((uintptr_t)p, sizeof(T), A_ATOMIC, pc);
}

template <typename T, typename F> T rmw(T *p, F op, void *pc)
{
	T old, want;

	atomic_access(p, pc);
	__atomic_load(p, &old, __ATOMIC_RELAXED);
	do {
		want = op(old);
	} while (!__atomic_compare_exchange(p, &old, &want, true, __ATOMIC_SEQ_CST,
					    __ATOMIC_RELAXED));
	return old;
}
} /* namespace */

#define PC __builtin_return_address(0)

int simt::atomic_add(int *p, int v)
{
	atomic_access(p, PC);
	return (int)__atomic_fetch_add((unsigned *)p, (unsigned)v, __ATOMIC_SEQ_CST);
}

unsigned simt::atomic_add(unsigned *p, unsigned v)
{
	atomic_access(p, PC);
	return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

unsigned long long simt::atomic_add(unsigned long long *p, unsigned long long v)
{
	atomic_access(p, PC);
	return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

float simt::atomic_add(float *p, float v)
{
	return rmw(p, [v](float o) { return o + v; }, PC);
}

double simt::atomic_add(double *p, double v)
{
	return rmw(p, [v](double o) { return o + v; }, PC);
}

int simt::atomic_sub(int *p, int v)
{
	atomic_access(p, PC);
	return (int)__atomic_fetch_sub((unsigned *)p, (unsigned)v, __ATOMIC_SEQ_CST);
}

unsigned simt::atomic_sub(unsigned *p, unsigned v)
{
	atomic_access(p, PC);
	return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST);
}

int simt::atomic_max(int *p, int v)
{
	return rmw(p, [v](int o) { return o > v ? o : v; }, PC);
}

unsigned simt::atomic_max(unsigned *p, unsigned v)
{
	return rmw(p, [v](unsigned o) { return o > v ? o : v; }, PC);
}

int simt::atomic_min(int *p, int v)
{
	return rmw(p, [v](int o) { return o < v ? o : v; }, PC);
}

unsigned simt::atomic_min(unsigned *p, unsigned v)
{
	return rmw(p, [v](unsigned o) { return o < v ? o : v; }, PC);
}

int simt::atomic_exch(int *p, int v)
{
	atomic_access(p, PC);
	return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}

unsigned simt::atomic_exch(unsigned *p, unsigned v)
{
	atomic_access(p, PC);
	return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}

unsigned long long simt::atomic_exch(unsigned long long *p, unsigned long long v)
{
	atomic_access(p, PC);
	return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}

float simt::atomic_exch(float *p, float v)
{
	float old;

	atomic_access(p, PC);
	__atomic_exchange(p, &v, &old, __ATOMIC_SEQ_CST);
	return old;
}

int simt::atomic_cas(int *p, int cmp, int v)
{
	atomic_access(p, PC);
	__atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	return cmp;
}

unsigned simt::atomic_cas(unsigned *p, unsigned cmp, unsigned v)
{
	atomic_access(p, PC);
	__atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	return cmp;
}

unsigned long long simt::atomic_cas(unsigned long long *p, unsigned long long cmp,
				    unsigned long long v)
{
	atomic_access(p, PC);
	__atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
	return cmp;
}
