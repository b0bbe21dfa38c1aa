/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util/threadpool.h"
#include "util/util.h"

/*
 * About 50-100 us of pause instructions: long enough to cover the gap between
 * two matmuls of a forward pass, short enough not to steal a core from the
 * I/O threads when the pool is idle.
 */
#define SPIN_ITERS 4096
#define MAX_THREADS 1024

struct worker {
	struct moe_threadpool *tp;
	int ith;
};

struct moe_threadpool {
	int n;
	pthread_t *threads;
	struct worker *workers;
	pthread_mutex_t run_lock;

	void (*fn)(void *arg, int ith, int nth);
	void *arg;
	/* the run's generation << 32 | the next slice not yet taken */
	_Atomic uint64_t claim;

	/* futex words */
	_Atomic uint32_t gen;       /* bumped once per run */
	_Atomic uint32_t done;      /* slices the workers finished this run */
	_Atomic uint32_t sleepers;  /* workers asleep on gen */
	_Atomic uint32_t waiting;   /* the caller is asleep on done */
	_Atomic bool stop;
};

/*
 * The next slice of run @g, or -1 once every slice is taken or the run is
 * over: whoever asks first runs it, so a worker the scheduler has not let in
 * yet does not hold the run up (the caller takes its slice instead).
 */
static int take_slice(struct moe_threadpool *tp, uint32_t g)
{
	uint64_t c = atomic_load_explicit(&tp->claim, memory_order_acquire);

	do {
		if ((uint32_t)(c >> 32) != g || (uint32_t)c >= (uint32_t)tp->n)
			return -1;
	} while (!atomic_compare_exchange_weak_explicit(&tp->claim, &c, c + 1,
							memory_order_acq_rel,
							memory_order_acquire));
	return (int)(uint32_t)c;
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t val)
{
	syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *addr, int n)
{
	syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

static uint32_t wait_for_run(struct moe_threadpool *tp, uint32_t seen)
{
	uint32_t g;

	for (int i = 0; i < SPIN_ITERS; i++) {
		g = atomic_load_explicit(&tp->gen, memory_order_acquire);
		if (g != seen)
			return g;
		cpu_relax();
	}
	for (;;) {
		/* seq_cst pairs with moe_threadpool_run: it sees us or we see its gen */
		atomic_fetch_add(&tp->sleepers, 1);
		g = atomic_load(&tp->gen);
		if (g == seen)
			futex_wait(&tp->gen, seen);
		atomic_fetch_sub(&tp->sleepers, 1);
		g = atomic_load_explicit(&tp->gen, memory_order_acquire);
		if (g != seen)
			return g;
	}
}

static void *worker_main(void *p)
{
	struct worker *w = p;
	struct moe_threadpool *tp = w->tp;
	uint32_t seen = 0;

	for (;;) {
		int s;

		seen = wait_for_run(tp, seen);
		if (atomic_load_explicit(&tp->stop, memory_order_acquire))
			break;
		while ((s = take_slice(tp, seen)) >= 0) {
			tp->fn(tp->arg, s, tp->n);
			atomic_fetch_add(&tp->done, 1);
			if (atomic_load(&tp->waiting))
				futex_wake(&tp->done, 1);
		}
	}
	return NULL;
}

static int online_cpus(void)
{
	cpu_set_t set;

	if (!sched_getaffinity(0, sizeof(set), &set) && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 ? (int)n : 1;
}

static void wake_workers(struct moe_threadpool *tp)
{
	if (atomic_load(&tp->sleepers))
		futex_wake(&tp->gen, tp->n);
}

static void stop_workers(struct moe_threadpool *tp, int started)
{
	atomic_store_explicit(&tp->stop, true, memory_order_release);
	atomic_fetch_add(&tp->gen, 1);
	futex_wake(&tp->gen, tp->n);
	for (int i = 0; i < started; i++)
		pthread_join(tp->threads[i], NULL);
}

int moe_threadpool_create(int n_threads, struct moe_threadpool **out)
{
	struct moe_threadpool *tp;
	int ret;

	*out = NULL;
	if (n_threads <= 0)
		n_threads = online_cpus();
	if (n_threads > MAX_THREADS)
		return moe_err(EINVAL, "thread pool: %d threads requested, at most %d supported",
			       n_threads, MAX_THREADS);
	tp = calloc(1, sizeof(*tp));
	if (!tp)
		return moe_err(ENOMEM, "thread pool: out of memory");
	tp->n = n_threads;
	pthread_mutex_init(&tp->run_lock, NULL);
	tp->threads = calloc((size_t)n_threads, sizeof(*tp->threads));
	tp->workers = calloc((size_t)n_threads, sizeof(*tp->workers));
	if (!tp->threads || !tp->workers) {
		ret = moe_err(ENOMEM, "thread pool: out of memory");
		goto err_free;
	}
	for (int i = 1; i < n_threads; i++) {
		tp->workers[i].tp = tp;
		tp->workers[i].ith = i;
		ret = pthread_create(&tp->threads[i - 1], NULL, worker_main, &tp->workers[i]);
		if (ret) {
			stop_workers(tp, i - 1);
			ret = moe_err(ret, "thread pool: cannot start thread %d of %d", i, n_threads);
			goto err_free;
		}
	}
	*out = tp;
	return 0;

err_free:
	pthread_mutex_destroy(&tp->run_lock);
	free(tp->workers);
	free(tp->threads);
	free(tp);
	return ret;
}

void moe_threadpool_destroy(struct moe_threadpool *tp)
{
	if (!tp)
		return;
	stop_workers(tp, tp->n - 1);
	pthread_mutex_destroy(&tp->run_lock);
	free(tp->workers);
	free(tp->threads);
	free(tp);
}

int moe_threadpool_size(const struct moe_threadpool *tp)
{
	return tp ? tp->n : 1;
}

void moe_threadpool_run(struct moe_threadpool *tp, void (*fn)(void *arg, int ith, int nth),
			void *arg)
{
	uint32_t g, d, mine = 1;
	int s;

	/*
	 * One run at a time; a nested or concurrent run executes on its
	 * caller alone instead of deadlocking on the busy workers.
	 */
	if (!tp || tp->n == 1 || pthread_mutex_trylock(&tp->run_lock)) {
		fn(arg, 0, 1);
		return;
	}
	tp->fn = fn;
	tp->arg = arg;
	g = atomic_load_explicit(&tp->gen, memory_order_relaxed) + 1;
	atomic_store_explicit(&tp->done, 0, memory_order_relaxed);
	/* slice 0 is the caller's */
	atomic_store_explicit(&tp->claim, (uint64_t)g << 32 | 1, memory_order_release);
	atomic_store(&tp->gen, g);
	wake_workers(tp);

	fn(arg, 0, tp->n);
	while ((s = take_slice(tp, g)) >= 0) {
		fn(arg, s, tp->n);
		mine++;
	}
	/* the slices workers took are running: wait for them */
	for (int i = 0; i < SPIN_ITERS; i++) {
		if (atomic_load_explicit(&tp->done, memory_order_acquire) + mine == (uint32_t)tp->n)
			goto done;
		cpu_relax();
	}
	for (;;) {
		atomic_store(&tp->waiting, 1);
		d = atomic_load(&tp->done);
		if (d + mine != (uint32_t)tp->n)
			futex_wait(&tp->done, d);
		atomic_store(&tp->waiting, 0);
		if (atomic_load_explicit(&tp->done, memory_order_acquire) + mine == (uint32_t)tp->n)
			break;
	}
done:
	pthread_mutex_unlock(&tp->run_lock);
}
