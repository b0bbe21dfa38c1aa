/* SPDX-License-Identifier: MIT */
/*
 * The emulation runtime: kernel registry, launches, one fiber per CUDA
 * thread, __syncthreads and warp operations, and the detection of what would
 * be undefined behaviour on a GPU (barrier divergence, bad warp masks,
 * deadlock, stack overflow).  Blocks run on a few OS threads at a time; the
 * fibers of a block run one at a time on one of them and switch only inside
 * the calls below, so the only memory races are those the checker in
 * simt_mem.cc reports.
 */
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>
#include <unistd.h>

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
#include <sanitizer/common_interface_defs.h>
#define SIMT_DEFAULT_STACK (256u << 10)
#else
#define SIMT_DEFAULT_STACK (64u << 10)
#endif

/*
 * For the frames a fiber leaves behind when it exits, or a fault handler when
 * it leaves its stack: uninstrumented, they leave no poisoned redzones on a
 * stack that the next block reuses.
 */
#define SIMT_NO_ASAN __attribute__((no_sanitize_address))

/* Big enough that a frame skipping over it is unlikely; the .cu files are also
 * built with -fstack-clash-protection, which probes every page. */
#define SIMT_GUARD (64u << 10)

#if defined(__x86_64__)
#define SIMT_HAVE_SWITCH 1
/*
 * Save the callee-saved registers, MXCSR and the x87 control word on the
 * current stack, store the stack pointer in *from and resume the context
 * whose stack pointer is @to.
 */
__asm__(".text\n"
	".globl simt_ctx_switch\n"
	".hidden simt_ctx_switch\n"
	".type simt_ctx_switch,@function\n"
	"simt_ctx_switch:\n"
	"	pushq %rbp\n"
	"	pushq %rbx\n"
	"	pushq %r12\n"
	"	pushq %r13\n"
	"	pushq %r14\n"
	"	pushq %r15\n"
	"	subq $8, %rsp\n"
	"	stmxcsr (%rsp)\n"
	"	fnstcw 4(%rsp)\n"
	"	movq %rsp, (%rdi)\n"
	"	movq %rsi, %rsp\n"
	"	ldmxcsr (%rsp)\n"
	"	fldcw 4(%rsp)\n"
	"	addq $8, %rsp\n"
	"	popq %r15\n"
	"	popq %r14\n"
	"	popq %r13\n"
	"	popq %r12\n"
	"	popq %rbx\n"
	"	popq %rbp\n"
	"	ret\n"
	".size simt_ctx_switch, .-simt_ctx_switch\n");
extern "C" void simt_ctx_switch(void **from, void *to);
#endif

namespace simt {

thread_local worker *t_worker;

static thread_local char t_errmsg[1024];

static config g_cfg;
static pthread_once_t g_cfg_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static worker *g_pool;           /* idle workers */
static size_t g_pool_stack;      /* their stack size */
static std::atomic<uint64_t> g_serial;
static simt_kernel *g_kernels;

static void set_errmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_errmsg(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(t_errmsg, sizeof(t_errmsg), fmt, ap);
	va_end(ap);
}

static bool env_u64(const char *name, uint64_t *out)
{
	const char *s = getenv(name);
	char *end;
	unsigned long long v;

	if (!s || !*s)
		return false;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || *end) {
		fprintf(stderr, "simt: ignoring %s=%s: not a number\n", name, s);
		return false;
	}
	*out = v;
	return true;
}

static void cfg_init()
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	uint64_t v;

	g_cfg.threads = cpus < 1 ? 1 : cpus > 4 ? 4 : (unsigned)cpus;
	g_cfg.check = 1;
	g_cfg.seed = 1;
	g_cfg.stack_bytes = SIMT_DEFAULT_STACK;
#ifdef SIMT_HAVE_SWITCH
	g_cfg.ucontext = 0;
#else
	g_cfg.ucontext = 1;
#endif
	g_cfg.shared_optin = 232448;
	if (env_u64("SIMT_THREADS", &v) && v >= 1 && v <= 64)
		g_cfg.threads = (unsigned)v;
	if (env_u64("SIMT_CHECK", &v))
		g_cfg.check = v != 0;
	if (env_u64("SIMT_SEED", &v))
		g_cfg.seed = v;
	if (env_u64("SIMT_STACK", &v) && v >= (16u << 10) && v <= (64u << 20))
		g_cfg.stack_bytes = (size_t)v;
	if (env_u64("SIMT_UCONTEXT", &v))
		g_cfg.ucontext = v != 0;
}

static config cfg_snapshot()
{
	config c;

	pthread_once(&g_cfg_once, cfg_init);
	pthread_mutex_lock(&g_lock);
	c = g_cfg;
	pthread_mutex_unlock(&g_lock);
	return c;
}

/* ---- messages ---- */

const char *site_str(const char *file, int line, char *buf, size_t len)
{
	const char *base = file ? strrchr(file, '/') : NULL;

	snprintf(buf, len, "%s:%d", base ? base + 1 : file ? file : "?", line);
	return buf;
}

const char *tid_str(const worker *w, unsigned id, char *buf, size_t len)
{
	const launch *L = w->L;

	snprintf(buf, len, "(%u,%u,%u)", id % L->bx, id / L->bx % L->by, id / (L->bx * L->by));
	return buf;
}

void block_prefix(const worker *w, char *buf, size_t len)
{
	snprintf(buf, len, "kernel '%s' block (%u,%u,%u)", w->L->k->name, w->bx, w->by, w->bz);
}

static bool same_site(const char *f1, int l1, const char *f2, int l2)
{
	return l1 == l2 && (f1 == f2 || (f1 && f2 && !strcmp(f1, f2)));
}

/* ---- random order ---- */

static uint64_t mix(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rnd(worker *w)
{
	w->rng = mix(w->rng);
	return w->rng;
}

static void shuffle(worker *w, unsigned *a, unsigned n)
{
	for (unsigned i = n; i > 1; i--) {
		unsigned j = (unsigned)(rnd(w) % i), t = a[i - 1];

		a[i - 1] = a[j];
		a[j] = t;
	}
}

/* ---- fibers ---- */

SIMT_NO_ASAN static void switch_to(worker *w, fiber *from, fiber *to, bool exiting);

static void rq_push(worker *w, unsigned id)
{
	w->runq[(w->rq_head + w->rq_len++) % w->rq_cap] = id;
}

static int rq_pop(worker *w)
{
	unsigned id;

	if (!w->rq_len)
		return -1;
	id = w->runq[w->rq_head];
	w->rq_head = (w->rq_head + 1) % w->rq_cap;
	w->rq_len--;
	return (int)id;
}

/* The running fiber stops: run the next runnable one, or the scheduler. */
SIMT_NO_ASAN static void park(worker *w, bool exiting)
{
	fiber *cur = w->cur;
	int next = rq_pop(w);

	if (next == (int)cur->id)
		return;
	switch_to(w, cur, next < 0 ? NULL : &w->fibers[next], exiting);
}

[[noreturn]] SIMT_NO_ASAN static void leave(worker *w)
{
	switch_to(w, w->cur, NULL, true);
	abort();
}

void fail(int status, const char *fmt, ...)
{
	worker *w = t_worker;
	char pre[256];
	size_t n;
	va_list ap;

	block_prefix(w, pre, sizeof(pre));
	n = (size_t)snprintf(w->msg, sizeof(w->msg), "%s: ", pre);
	va_start(ap, fmt);
	vsnprintf(w->msg + n, sizeof(w->msg) - n, fmt, ap);
	va_end(ap);
	w->err = status;
	leave(w);
}

worker *running_worker(const char *what)
{
	worker *w = t_worker;

	if (!w || !w->cur) {
		fprintf(stderr, "simt: %s called outside a kernel launch\n", what);
		abort();
	}
	return w;
}

SIMT_NO_ASAN static void fiber_exit(worker *w);

extern "C" __attribute__((noreturn, noinline)) SIMT_NO_ASAN void simt_fiber_entry()
{
	worker *w = t_worker;

#ifdef SIMT_ASAN
	__sanitizer_finish_switch_fiber(NULL, NULL, NULL);
#endif
	w->L->k->invoke(w->L->k->fn, w->L->params);
	fiber_exit(w);
	abort();
}

SIMT_NO_ASAN static void ucontext_entry()
{
	simt_fiber_entry();
}

static void fiber_prepare(worker *w, fiber *f)
{
	char *top = f->stack + w->stack_bytes;

	if (w->L->cfg.ucontext) {
		if (!f->uc) {
			f->uc = (ucontext_t *)calloc(1, sizeof(*f->uc));
			if (!f->uc) {
				fprintf(stderr, "simt: out of memory for a ucontext\n");
				abort();
			}
		}
		getcontext(f->uc);
		f->uc->uc_stack.ss_sp = f->stack;
		f->uc->uc_stack.ss_size = w->stack_bytes;
		f->uc->uc_link = NULL;
		makecontext(f->uc, ucontext_entry, 0);
		return;
	}
#ifdef SIMT_HAVE_SWITCH
	uint64_t *sp = (uint64_t *)((uintptr_t)top & ~(uintptr_t)15);
	uint32_t csr;
	uint16_t cw;

	__asm__ volatile("stmxcsr %0" : "=m"(csr));
	__asm__ volatile("fnstcw %0" : "=m"(cw));
	*--sp = 0;                              /* simt_fiber_entry never returns */
	*--sp = (uint64_t)(uintptr_t)simt_fiber_entry;
	for (int i = 0; i < 6; i++)
		*--sp = 0;                      /* rbp rbx r12 r13 r14 r15 */
	*--sp = csr | (uint64_t)cw << 32;
	f->sp = sp;
#else
	(void)top;
	fprintf(stderr, "simt: no built-in context switch on this CPU: set SIMT_UCONTEXT=1\n");
	abort();
#endif
}

SIMT_NO_ASAN static void switch_to(worker *w, fiber *from, fiber *to, bool exiting)
{
#ifdef SIMT_ASAN
	void **fake = exiting ? NULL : from ? &from->fake_stack : &w->sched_fake;

	__sanitizer_start_switch_fiber(fake, to ? (const void *)to->stack : w->sched_lo,
				       to ? w->stack_bytes : w->sched_size);
#else
	(void)exiting;
#endif
	w->cur = to;
	if (w->L->cfg.ucontext) {
		swapcontext(from ? from->uc : &w->sched_uc, to ? to->uc : &w->sched_uc);
	} else {
#ifdef SIMT_HAVE_SWITCH
		simt_ctx_switch(from ? &from->sp : &w->sched_sp, to ? to->sp : w->sched_sp);
#endif
	}
#ifdef SIMT_ASAN
	__sanitizer_finish_switch_fiber(from ? from->fake_stack : w->sched_fake, NULL, NULL);
#endif
}

/* ---- faults on a fiber: stack overflow or a bad address ---- */

static struct sigaction g_old_segv, g_old_bus;
static pthread_once_t g_sig_once = PTHREAD_ONCE_INIT;

SIMT_NO_ASAN static void on_fault(int sig, siginfo_t *si, void *ctx)
{
	worker *w = t_worker;
	fiber *f = w ? w->cur : NULL;
	uintptr_t a = (uintptr_t)si->si_addr, lo;
	char pre[256], t[48];

	(void)ctx;
	if (!f) {
		/* not ours: let the previous handler (or the default action) have it */
		sigaction(sig, sig == SIGSEGV ? &g_old_segv : &g_old_bus, NULL);
		return;
	}
	block_prefix(w, pre, sizeof(pre));
	tid_str(w, f->id, t, sizeof(t));
	lo = (uintptr_t)f->stack;
	if (a < lo && a + SIMT_GUARD >= lo) {
		snprintf(w->msg, sizeof(w->msg), "%s: thread %s overflowed its %zu KiB stack "
			 "(deep recursion or large local arrays; SIMT_STACK raises the size)",
			 pre, t, w->stack_bytes >> 10);
		w->err = SIMT_ERR_STACK;
	} else {
		snprintf(w->msg, sizeof(w->msg), "%s: thread %s: illegal address 0x%lx (%s)", pre,
			 t, (unsigned long)a, sig == SIGSEGV ? "SIGSEGV" : "SIGBUS");
		w->err = SIMT_ERR_ILLEGAL_ADDRESS;
	}
	/* SA_NODEFER left the signal unblocked: resume the scheduler directly. */
	leave(w);
}

static void install_handlers()
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_fault;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, &g_old_segv);
	sigaction(SIGBUS, &sa, &g_old_bus);
}

/* ---- workers ---- */

static void worker_free(worker *w)
{
	if (w->stacks)
		munmap(w->stacks, w->stacks_len);
	for (unsigned i = 0; i < w->nstacks; i++)
		free(w->fibers[i].uc);
	free(w->fibers);
	free(w->runq);
	if (w->arena)
		munmap(w->arena, w->arena_len);
	if (w->sh)
		munmap(w->sh, w->arena_len * sizeof(shadow));
	if (w->altstack)
		munmap(w->altstack, w->altstack_len);
	free(w);
}

static void *map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static worker *worker_new(const config &c)
{
	worker *w = (worker *)calloc(1, sizeof(*w));

	if (!w)
		return NULL;
	w->stack_bytes = (c.stack_bytes + 4095) & ~(size_t)4095;
	w->stack_stride = w->stack_bytes + SIMT_GUARD;
	w->arena_len = SIMT_DYN_OFF + 262144 + SIMT_TAIL;
	w->arena = (char *)map(w->arena_len);
	w->sh = (shadow *)map(w->arena_len * sizeof(shadow));
	w->altstack_len = 64u << 10;
	w->altstack = (char *)map(w->altstack_len);
	if (!w->arena || !w->sh || !w->altstack) {
		worker_free(w);
		return NULL;
	}
	w->epoch = 4;
	return w;
}

/* Stacks and fibers for @n threads. */
static bool worker_reserve(worker *w, unsigned n)
{
	unsigned cap = (n + 127) & ~127u;
	size_t len = (size_t)cap * w->stack_stride;
	char *stacks;
	fiber *fibers;
	unsigned *runq;

	if (n <= w->nstacks)
		return true;
	stacks = (char *)map(len);
	fibers = (fiber *)calloc(cap, sizeof(*fibers));
	runq = (unsigned *)calloc(cap, sizeof(*runq));
	if (!stacks || !fibers || !runq)
		goto fail;
	for (unsigned i = 0; i < cap; i++) {
		if (mprotect(stacks + (size_t)i * w->stack_stride, SIMT_GUARD, PROT_NONE))
			goto fail;
		fibers[i].stack = stacks + (size_t)i * w->stack_stride + SIMT_GUARD;
	}
	if (w->stacks)
		munmap(w->stacks, w->stacks_len);
	for (unsigned i = 0; i < w->nstacks; i++)
		free(w->fibers[i].uc);
	free(w->fibers);
	free(w->runq);
	w->stacks = stacks;
	w->stacks_len = len;
	w->fibers = fibers;
	w->runq = runq;
	w->nstacks = cap;
	w->stacks_dirty = false;
	return true;
fail:
	if (stacks)
		munmap(stacks, len);
	free(fibers);
	free(runq);
	return false;
}

static worker *pool_get(const config &c)
{
	worker *w = NULL;

	pthread_mutex_lock(&g_lock);
	if (g_pool_stack != c.stack_bytes) {
		/* the stack size changed: the idle workers' stacks do not fit */
		while (g_pool) {
			worker *d = g_pool;

			g_pool = d->next;
			worker_free(d);
		}
		g_pool_stack = c.stack_bytes;
	}
	if (g_pool) {
		w = g_pool;
		g_pool = w->next;
	}
	pthread_mutex_unlock(&g_lock);
	return w ? w : worker_new(c);
}

static void pool_put(worker *w)
{
	pthread_mutex_lock(&g_lock);
	if (w->stack_bytes == ((g_pool_stack + 4095) & ~(size_t)4095)) {
		w->next = g_pool;
		g_pool = w;
		w = NULL;
	}
	pthread_mutex_unlock(&g_lock);
	if (w)
		worker_free(w);
}

/* ---- one block ---- */

static const char *wop_name(int kind)
{
	/* in enum warp_kind order */
	static const char *const names[] = {
		"__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
		"__shfl_xor_sync", "__ballot_sync", "__any_sync", "__all_sync",
	};

	return kind >= 0 && kind <= WOP_ALL ? names[kind] : "warp operation";
}

static void warp_divergence(worker *w, unsigned wi, const warp_group *a, const warp_group *b)
{
	char s1[128], s2[128], pre[256];

	block_prefix(w, pre, sizeof(pre));
	snprintf(w->msg, sizeof(w->msg), "%s: warp %u: lanes 0x%08x wait in %s at %s with mask "
		 "0x%08x and lanes 0x%08x in %s at %s with mask 0x%08x: the lanes a mask names "
		 "must all reach the same call", pre, wi, a->arrived, wop_name(a->kind),
		 site_str(a->file, a->line, s1, sizeof(s1)), a->mask, b->arrived,
		 wop_name(b->kind), site_str(b->file, b->line, s2, sizeof(s2)), b->mask);
	w->err = SIMT_ERR_WARP;
}

/* Two pending operations of one warp whose masks overlap wait for each other. */
static bool report_warp_divergence(worker *w)
{
	for (unsigned wi = 0; wi < w->nwarps; wi++) {
		const warp_state *ws = &w->warps[wi];

		for (unsigned i = 0; i < ws->ngroups; i++) {
			for (unsigned j = i + 1; j < ws->ngroups; j++) {
				if (ws->groups[i].mask & ws->groups[j].mask) {
					warp_divergence(w, wi, &ws->groups[i], &ws->groups[j]);
					return true;
				}
			}
		}
	}
	return false;
}

static void report_deadlock(worker *w)
{
	char pre[256], t[48], s[128];
	size_t n = 0, len = sizeof(w->msg);
	unsigned shown = 0;

	if (report_warp_divergence(w))
		return;
	block_prefix(w, pre, sizeof(pre));
	n += (size_t)snprintf(w->msg + n, len - n, "%s: deadlock: every live thread waits", pre);
	if (w->bar_count)
		n += (size_t)snprintf(w->msg + n, len - n, "; %u at __syncthreads at %s "
				      "(thread %s)", w->bar_count,
				      site_str(w->bar_file, w->bar_line, s, sizeof(s)),
				      tid_str(w, w->bar_first, t, sizeof(t)));
	for (unsigned wi = 0; wi < w->nwarps && shown < 4; wi++) {
		const warp_state *ws = &w->warps[wi];

		for (unsigned g = 0; g < ws->ngroups && shown < 4 && n < len; g++, shown++) {
			const warp_group *gr = &ws->groups[g];

			site_str(gr->file, gr->line, s, sizeof(s));
			n += (size_t)snprintf(w->msg + n, len - n, "; warp %u lanes 0x%08x in %s "
					      "at %s with mask 0x%08x, lanes 0x%08x never arrive",
					      wi, gr->arrived, wop_name(gr->kind), s, gr->mask,
					      gr->mask & ~gr->arrived);
		}
	}
	w->err = SIMT_ERR_DEADLOCK;
}

static void run_block(worker *w, launch *L, uint64_t b)
{
	unsigned n = L->bx * L->by * L->bz;

	w->L = L;
	w->bx = (unsigned)(b % L->gx);
	w->by = (unsigned)(b / L->gx % L->gy);
	w->bz = (unsigned)(b / ((uint64_t)L->gx * L->gy));
	w->nthreads = n;
	w->nwarps = (n + 31) / 32;
	w->err = 0;
	w->bar_count = 0;
	w->last_bar_file = NULL;
	w->nexited = 0;
	w->rq_head = w->rq_len = 0;
	w->rq_cap = w->nstacks;
	w->rng = mix(L->cfg.seed ^ mix(L->serial ^ mix(b)));
	for (unsigned i = 0; i < w->nwarps; i++) {
		unsigned lanes = n - i * 32 >= 32 ? 32 : n - i * 32;

		w->warps[i].lanes = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
		w->warps[i].exited = 0;
		w->warps[i].ngroups = 0;
	}
#ifdef SIMT_ASAN
	if (w->stacks_dirty) {
		/* frames of the fibers abandoned by a failed block are still poisoned */
		__asan_unpoison_memory_region(w->stacks, w->stacks_len);
		w->stacks_dirty = false;
	}
#endif
	shared_block_start(w);
	for (unsigned i = 0; i < n; i++) {
		fiber *f = &w->fibers[i];

		f->id = i;
		f->tx = i % L->bx;
		f->ty = i / L->bx % L->by;
		f->tz = i / (L->bx * L->by);
		f->state = F_RUN;
		f->fake_stack = NULL;
		fiber_prepare(w, f);
		w->runq[i] = i;
	}
	w->rq_len = n;
	if (L->cfg.check)
		shuffle(w, w->runq, n);
	switch_to(w, NULL, &w->fibers[rq_pop(w)], false);
	t_sh_len = 0;
	if (!w->err && w->nexited != n)
		report_deadlock(w);
	if (w->err)
		w->stacks_dirty = true;
}

static void *worker_main(void *arg)
{
	launch *L = (launch *)arg;
	worker *w = pool_get(L->cfg);
	stack_t ss, old;
	pthread_attr_t attr;
	void *lo = NULL;
	size_t size = 0;

	if (!w || !worker_reserve(w, L->bx * L->by * L->bz)) {
		pthread_mutex_lock(&L->lock);
		if (!L->err) {
			L->err = SIMT_ERR_INVALID;
			snprintf(L->msg, sizeof(L->msg), "kernel '%s': out of memory for the "
				 "stacks of %u threads", L->k->name, L->bx * L->by * L->bz);
		}
		L->failed = true;
		pthread_mutex_unlock(&L->lock);
		if (w)
			pool_put(w);
		return NULL;
	}
#ifdef SIMT_ASAN
	/* for the fiber-switch annotations (the main thread's comes from /proc: not cheap) */
	if (!pthread_getattr_np(pthread_self(), &attr)) {
		pthread_attr_getstack(&attr, &lo, &size);
		pthread_attr_destroy(&attr);
	}
#else
	(void)attr;
#endif
	w->sched_lo = lo;
	w->sched_size = size;
	ss.ss_sp = w->altstack;
	ss.ss_size = w->altstack_len;
	ss.ss_flags = 0;
	sigaltstack(&ss, &old);
	t_worker = w;
	while (!L->failed.load(std::memory_order_relaxed)) {
		uint64_t i = L->next.fetch_add(1), b;

		if (i >= L->nblocks)
			break;
		b = L->cfg.check ? (uint64_t)(((unsigned __int128)L->perm_a * i + L->perm_c) %
					      L->nblocks) : i;
		run_block(w, L, b);
		if (w->err) {
			pthread_mutex_lock(&L->lock);
			if (!L->err) {
				L->err = w->err;
				memcpy(L->msg, w->msg, sizeof(L->msg));
			}
			L->failed = true;
			pthread_mutex_unlock(&L->lock);
		}
	}
	t_worker = NULL;
	sigaltstack(&old, NULL);
	pool_put(w);
	return NULL;
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;

		a = b;
		b = t;
	}
	return a;
}

} /* namespace simt */

using namespace simt;

/* ---- built-ins ---- */

uint3 simt::thread_idx()
{
	const fiber *f = running_worker("threadIdx")->cur;

	return uint3{f->tx, f->ty, f->tz};
}

uint3 simt::block_idx()
{
	const worker *w = running_worker("blockIdx");

	return uint3{w->bx, w->by, w->bz};
}

dim3 simt::block_dim()
{
	const launch *L = running_worker("blockDim")->L;

	return dim3(L->bx, L->by, L->bz);
}

dim3 simt::grid_dim()
{
	const launch *L = running_worker("gridDim")->L;

	return dim3(L->gx, L->gy, L->gz);
}

/* ---- __syncthreads ---- */

void simt::syncthreads(const char *file, int line)
{
	worker *w = running_worker("__syncthreads");
	fiber *f = w->cur;
	char t1[48], t2[48], s1[128], s2[128];

	if (w->nexited)
		fail(SIMT_ERR_BARRIER, "thread %s reached __syncthreads at %s after thread %s "
		     "exited (every thread of the block must reach each __syncthreads)",
		     tid_str(w, f->id, t1, sizeof(t1)), site_str(file, line, s1, sizeof(s1)),
		     tid_str(w, w->first_exited, t2, sizeof(t2)));
	if (!w->bar_count) {
		w->bar_file = file;
		w->bar_line = line;
		w->bar_first = f->id;
	} else if (!same_site(file, line, w->bar_file, w->bar_line)) {
		fail(SIMT_ERR_BARRIER, "barrier divergence: thread %s reached __syncthreads at %s "
		     "while thread %s waits at the one at %s", tid_str(w, f->id, t1, sizeof(t1)),
		     site_str(file, line, s1, sizeof(s1)), tid_str(w, w->bar_first, t2, sizeof(t2)),
		     site_str(w->bar_file, w->bar_line, s2, sizeof(s2)));
	}
	if (++w->bar_count < w->nthreads) {
		f->state = F_BAR;
		park(w, false);
		return;
	}
	/*
	 * The last thread arrived: open the next interval.  It waits its turn
	 * with the others, so they run in index order (or shuffled).
	 */
	w->bar_count = 0;
	w->last_bar_file = file;
	w->last_bar_line = line;
	shared_sync_epoch(w);
	w->last_bar = w->epoch;
	/* the run queue is empty: every other thread waits here */
	for (unsigned i = 0; i < w->nthreads; i++) {
		w->fibers[i].state = F_RUN;
		w->runq[i] = i;
	}
	if (w->L->cfg.check)
		shuffle(w, w->runq, w->nthreads);
	w->rq_head = 0;
	w->rq_len = w->nthreads;
	park(w, false);
}

/* ---- warp operations ---- */


static void complete(worker *w, unsigned wi, warp_group *g)
{
	unsigned base = wi * 32, votes = 0;
	uint64_t poison = g->bytes >= 8 ? ~0ull : (1ull << (g->bytes * 8)) - 1;

	for (unsigned l = 0; l < 32; l++)
		if (g->mask >> l & 1)
			votes |= (unsigned)(g->val[l] & 1) << l;
	for (unsigned l = 0; l < 32; l++) {
		unsigned sec = l & ~(unsigned)(g->width - 1), top = sec + g->width - 1;
		long j = l;
		uint64_t r = 0;

		if (!(g->mask >> l & 1))
			continue;
		switch (g->kind) {
		case WOP_BALLOT:
			r = votes;
			break;
		case WOP_ANY:
			r = votes != 0;
			break;
		case WOP_ALL:
			r = votes == g->mask;
			break;
		case WOP_IDX:
			j = sec + ((unsigned)g->arg[l] & (g->width - 1));
			break;
		/* as PTX's shfl, only the low five bits of a delta count */
		case WOP_UP:
			j = (long)l - (long)((unsigned)g->arg[l] & 31);
			if (j < (long)sec)
				j = l;
			break;
		case WOP_DOWN:
			j = (long)l + (long)((unsigned)g->arg[l] & 31);
			if (j > (long)top)
				j = l;
			break;
		case WOP_XOR:
			j = l ^ ((unsigned)g->arg[l] & 31);
			if (j > (long)top)
				j = l;
			break;
		}
		if (g->kind >= WOP_IDX && g->kind <= WOP_XOR)
			/* a lane outside the mask has no defined value: poison it */
			r = g->mask >> j & 1 ? g->val[j] : poison;
		w->fibers[base + l].wres = r;
	}
}

uint64_t simt::warp_op(int kind, unsigned mask, uint64_t val, unsigned bytes, int arg, int width,
		       const char *file, int line)
{
	worker *w = running_worker(wop_name(kind));
	fiber *f = w->cur;
	unsigned lane = f->id % 32, wi = f->id / 32, bit = 1u << lane;
	warp_state *ws = &w->warps[wi];
	warp_group *g = NULL;
	char t[48], s1[128];

	site_str(file, line, s1, sizeof(s1));
	if (width < 1 || width > 32 || (width & (width - 1)))
		fail(SIMT_ERR_WARP, "thread %s: %s at %s with width %d: the width must be a power "
		     "of two from 1 to 32", tid_str(w, f->id, t, sizeof(t)), wop_name(kind), s1,
		     width);
	if (!(mask & bit))
		fail(SIMT_ERR_WARP, "thread %s (warp %u lane %u): %s at %s with mask 0x%08x, which "
		     "does not name the calling lane", tid_str(w, f->id, t, sizeof(t)), wi, lane,
		     wop_name(kind), s1, mask);
	if (mask & ~ws->lanes)
		fail(SIMT_ERR_WARP, "thread %s: %s at %s with mask 0x%08x names lanes 0x%08x that "
		     "do not exist (warp %u has %u threads: the block has %u)",
		     tid_str(w, f->id, t, sizeof(t)), wop_name(kind), s1, mask, mask & ~ws->lanes,
		     wi, __builtin_popcount(ws->lanes), w->nthreads);
	if (mask & ws->exited)
		fail(SIMT_ERR_WARP, "thread %s: %s at %s with mask 0x%08x names lanes 0x%08x that "
		     "have exited (lane %d first)", tid_str(w, f->id, t, sizeof(t)), wop_name(kind),
		     s1, mask, mask & ws->exited, __builtin_ctz(mask & ws->exited));
	/*
	 * Lanes of one warp may wait in several operations at once (divergent
	 * code, or lanes that reach the next call before the others arrive at
	 * theirs); lanes at the same call must agree on its mask and width.
	 * Lanes that never meet show up as a deadlock (report_deadlock).
	 */
	for (unsigned i = 0; i < ws->ngroups; i++) {
		warp_group *o = &ws->groups[i];

		if (!(o->mask & mask) || o->kind != kind ||
		    !same_site(o->file, o->line, file, line))
			continue;
		if (o->mask != mask || o->width != width || o->bytes != bytes)
			fail(SIMT_ERR_WARP, "warp %u: lane %u reached %s at %s with mask 0x%08x "
			     "width %d where lane %u waits with mask 0x%08x width %d (the lanes of "
			     "one call must pass the same mask and width)", wi, lane,
			     wop_name(kind), s1, mask, width, __builtin_ctz(o->arrived), o->mask,
			     o->width);
		g = o;
		break;
	}
	if (!g) {
		if (ws->ngroups == SIMT_MAX_GROUPS)
			fail(SIMT_ERR_WARP, "warp %u: more than %d warp operations pending at once",
			     wi, SIMT_MAX_GROUPS);
		g = &ws->groups[ws->ngroups++];
		g->kind = kind;
		g->mask = mask;
		g->arrived = 0;
		g->width = width;
		g->bytes = bytes;
		g->file = file;
		g->line = line;
	}
	g->val[lane] = val;
	g->arg[lane] = arg;
	g->arrived |= bit;
	if (g->arrived != mask) {
		f->state = F_WARP;
		f->file = file;
		f->line = line;
		f->wkind = kind;
		f->wmask = mask;
		park(w, false);
		return f->wres;
	}
	complete(w, wi, g);
	if (kind == WOP_SYNC) {
		/* of the warp operations only __syncwarp orders memory */
		shared_sync_epoch(w);
		ws->last_sync = w->epoch;
	}
	{
		unsigned ids[32], n = 0;

		for (unsigned l = 0; l < 32; l++)
			if ((mask >> l & 1) && l != lane) {
				w->fibers[wi * 32 + l].state = F_RUN;
				ids[n++] = wi * 32 + l;
			}
		if (w->L->cfg.check)
			shuffle(w, ids, n);
		for (unsigned i = 0; i < n; i++)
			rq_push(w, ids[i]);
	}
	*g = ws->groups[--ws->ngroups];
	return f->wres;
}

unsigned simt::activemask()
{
	worker *w = running_worker("__activemask");
	const warp_state *ws = &w->warps[w->cur->id / 32];

	return ws->lanes & ~ws->exited;
}

namespace simt {
SIMT_NO_ASAN static void fiber_exit(worker *w)
{
	fiber *f = w->cur;
	unsigned lane = f->id % 32, wi = f->id / 32;
	warp_state *ws = &w->warps[wi];
	char t1[48], t2[48], s[128];

	if (w->bar_count)
		fail(SIMT_ERR_BARRIER, "thread %s exited while %u threads wait at __syncthreads at "
		     "%s (thread %s among them): every thread of the block must reach it",
		     tid_str(w, f->id, t1, sizeof(t1)), w->bar_count,
		     site_str(w->bar_file, w->bar_line, s, sizeof(s)),
		     tid_str(w, w->bar_first, t2, sizeof(t2)));
	for (unsigned i = 0; i < ws->ngroups; i++) {
		warp_group *g = &ws->groups[i];

		if (g->mask >> lane & 1)
			fail(SIMT_ERR_WARP, "warp %u: lane %u exited while lanes 0x%08x wait for "
			     "it in %s at %s with mask 0x%08x", wi, lane, g->arrived,
			     wop_name(g->kind),
			     site_str(g->file, g->line, s, sizeof(s)), g->mask);
	}
	if (!w->nexited++)
		w->first_exited = f->id;
	ws->exited |= 1u << lane;
	f->state = F_EXIT;
	park(w, true);
	abort();
}
} /* namespace simt */

/* ---- registry ---- */

void simt::register_kernel(simt_kernel *k)
{
	k->next = g_kernels;
	g_kernels = k;
}

/* ---- C API ---- */

extern "C" {

const char *simt_status_name(int status)
{
	/* in enum simt_status order */
	static const char *const names[SIMT_STATUS_COUNT] = {
		"SIMT_OK", "SIMT_ERR_INVALID", "SIMT_ERR_BARRIER", "SIMT_ERR_WARP",
		"SIMT_ERR_DEADLOCK", "SIMT_ERR_STACK", "SIMT_ERR_RACE", "SIMT_ERR_UNINIT",
		"SIMT_ERR_SHARED_OOB", "SIMT_ERR_SHARED_LIMIT", "SIMT_ERR_ILLEGAL_ADDRESS",
	};

	return status >= 0 && status < SIMT_STATUS_COUNT ? names[status] : NULL;
}

const struct simt_kernel *simt_kernel_find(const char *name)
{
	for (const simt_kernel *k = g_kernels; k; k = k->next)
		if (name && !strcmp(k->name, name))
			return k;
	set_errmsg("no kernel named '%s' is registered (is MOE_KERNEL(%s) after its definition, "
		   "and its .cu file linked in?)", name ? name : "(null)", name ? name : "name");
	return NULL;
}

const char *simt_kernel_name(const struct simt_kernel *k)
{
	return k->name;
}

unsigned simt_kernel_param_count(const struct simt_kernel *k)
{
	return k->nparams;
}

size_t simt_kernel_param_size(const struct simt_kernel *k, unsigned i)
{
	return i < k->nparams ? k->param_sizes[i] : 0;
}

const char *simt_errmsg(void)
{
	return t_errmsg;
}

void simt_config_get(struct simt_config *cfg)
{
	config c = cfg_snapshot();

	cfg->threads = c.threads;
	cfg->check = c.check;
	cfg->seed = c.seed;
	cfg->stack_bytes = c.stack_bytes;
	cfg->ucontext = c.ucontext;
	cfg->shared_optin = c.shared_optin;
}

int simt_config_set(const struct simt_config *cfg)
{
	pthread_once(&g_cfg_once, cfg_init);
	if (cfg->threads < 1 || cfg->threads > 64) {
		set_errmsg("simt_config: threads %u: from 1 to 64", cfg->threads);
		return -EINVAL;
	}
	if (cfg->stack_bytes < (16u << 10) || cfg->stack_bytes > (64u << 20)) {
		set_errmsg("simt_config: stack_bytes %zu: from 16 KiB to 64 MiB", cfg->stack_bytes);
		return -EINVAL;
	}
	if (cfg->shared_optin < SIMT_STATIC_LIMIT || cfg->shared_optin > 262144) {
		set_errmsg("simt_config: shared_optin %u: from 48 KiB to 256 KiB",
			   cfg->shared_optin);
		return -EINVAL;
	}
#ifndef SIMT_HAVE_SWITCH
	if (!cfg->ucontext) {
		set_errmsg("simt_config: this CPU has no built-in context switch: set ucontext");
		return -EINVAL;
	}
#endif
	pthread_mutex_lock(&g_lock);
	g_cfg.threads = cfg->threads;
	g_cfg.check = cfg->check != 0;
	g_cfg.seed = cfg->seed;
	g_cfg.stack_bytes = cfg->stack_bytes;
	g_cfg.ucontext = cfg->ucontext != 0;
	g_cfg.shared_optin = cfg->shared_optin;
	g_serial = 0;
	pthread_mutex_unlock(&g_lock);
	return 0;
}

static int check_launch(const struct simt_kernel *k, unsigned gx, unsigned gy, unsigned gz,
			unsigned bx, unsigned by, unsigned bz, unsigned shared, void **params,
			const config &c)
{
	const char *name = k ? k->name : "(null)";
	uint64_t threads = (uint64_t)bx * by * bz;

	if (!k) {
		set_errmsg("simt_launch: no kernel (NULL handle)");
		return SIMT_ERR_INVALID;
	}
	if (!gx || !gy || !gz || !bx || !by || !bz) {
		set_errmsg("kernel '%s': grid (%u,%u,%u) block (%u,%u,%u): every dimension must be "
			   "at least 1", name, gx, gy, gz, bx, by, bz);
		return SIMT_ERR_INVALID;
	}
	if (gx > INT_MAX || gy > 65535 || gz > 65535) {
		set_errmsg("kernel '%s': grid (%u,%u,%u) over the limits (2^31-1, 65535, 65535)",
			   name, gx, gy, gz);
		return SIMT_ERR_INVALID;
	}
	if (bx > 1024 || by > 1024 || bz > 64 || threads > 1024) {
		set_errmsg("kernel '%s': block (%u,%u,%u) over the limits (1024, 1024, 64; 1024 "
			   "threads in all)", name, bx, by, bz);
		return SIMT_ERR_INVALID;
	}
	if (shared > c.shared_optin) {
		set_errmsg("kernel '%s': %u bytes of dynamic shared memory, more than the %u a "
			   "block may have", name, shared, c.shared_optin);
		return SIMT_ERR_INVALID;
	}
	if (k->nparams && !params) {
		set_errmsg("kernel '%s' takes %u parameters but params is NULL", name, k->nparams);
		return SIMT_ERR_INVALID;
	}
	for (unsigned i = 0; i < k->nparams; i++) {
		if (!params[i]) {
			set_errmsg("kernel '%s': params[%u] is NULL (each entry points at the "
				   "value of one parameter)", name, i);
			return SIMT_ERR_INVALID;
		}
	}
	return SIMT_OK;
}

int simt_launch_check(const struct simt_kernel *k, unsigned gx, unsigned gy, unsigned gz,
		      unsigned bx, unsigned by, unsigned bz, unsigned shared_bytes, void **params)
{
	return check_launch(k, gx, gy, gz, bx, by, bz, shared_bytes, params, cfg_snapshot());
}

int simt_launch(const struct simt_kernel *k, unsigned gx, unsigned gy, unsigned gz,
		unsigned bx, unsigned by, unsigned bz, unsigned shared_bytes, void **params)
{
	launch *L;
	config c = cfg_snapshot();
	pthread_t tids[64];
	unsigned nthreads, started = 0;
	int st;

	st = check_launch(k, gx, gy, gz, bx, by, bz, shared_bytes, params, c);
	if (st)
		return st;
	if (t_worker) {
		set_errmsg("kernel '%s': simt_launch called from inside a kernel", k->name);
		return SIMT_ERR_INVALID;
	}
	pthread_once(&g_sig_once, install_handlers);
	L = new launch();
	L->k = k;
	L->params = params;
	L->gx = gx;
	L->gy = gy;
	L->gz = gz;
	L->bx = bx;
	L->by = by;
	L->bz = bz;
	L->shared = shared_bytes;
	L->nblocks = (uint64_t)gx * gy * gz;
	L->cfg = c;
	L->serial = g_serial.fetch_add(1) + 1;
	L->next = 0;
	L->failed = false;
	L->err = 0;
	L->perm_a = 1;
	L->perm_c = 0;
	pthread_mutex_init(&L->lock, NULL);
	if (c.check && L->nblocks > 1) {
		uint64_t r = mix(c.seed ^ mix(L->serial));

		L->perm_c = r % L->nblocks;
		L->perm_a = mix(r) % L->nblocks;
		while (!L->perm_a || gcd(L->perm_a, L->nblocks) != 1)
			L->perm_a = (L->perm_a + 1) % L->nblocks;
	}
	nthreads = c.threads < L->nblocks ? c.threads : (unsigned)L->nblocks;
	for (unsigned i = 1; i < nthreads; i++) {
		if (pthread_create(&tids[started], NULL, worker_main, L))
			break;                  /* fewer threads run the blocks */
		started++;
	}
	worker_main(L);
	for (unsigned i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	st = L->err;
	if (st)
		memcpy(t_errmsg, L->msg, sizeof(t_errmsg));
	pthread_mutex_destroy(&L->lock);
	delete L;
	return st;
}

} /* extern "C" */
