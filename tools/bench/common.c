/* SPDX-License-Identifier: MIT */
/* What several benchmarks share: the clock and the plain-read baseline. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "bench.h"
#include "moe/moe.h"

double bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#define READ_CHUNK (1 << 20)

/* Chunks from a shared counter, as moe_matmul hands out rows, so both see the same scheduling. */
struct read_job {
	const uint64_t *p;
	size_t words;
	_Atomic size_t next;
	_Atomic uint64_t sum;
};

static void read_sum(void *arg, int ith, int nth)
{
	struct read_job *j = arg;
	const size_t chunk = READ_CHUNK / 8;
	uint64_t a = 0, b = 0, c = 0, d = 0;
	size_t w0;

	(void)ith;
	(void)nth;
	while ((w0 = atomic_fetch_add_explicit(&j->next, chunk, memory_order_relaxed)) < j->words) {
		size_t w1 = w0 + chunk < j->words ? w0 + chunk : j->words, i = w0;

		for (; i + 4 <= w1; i += 4) {
			a += j->p[i];
			b += j->p[i + 1];
			c += j->p[i + 2];
			d += j->p[i + 3];
		}
		for (; i < w1; i++)
			a += j->p[i];
	}
	atomic_fetch_add_explicit(&j->sum, a + b + c + d, memory_order_relaxed);
}

/* GB/s of one pass of plain reads over @bytes. */
double bench_read_gbps(struct moe_threadpool *tp, const void *buf, size_t bytes)
{
	struct read_job j = { .p = buf, .words = bytes / 8 };
	double t = bench_now();

	moe_threadpool_run(tp, read_sum, &j);
	t = bench_now() - t;
	/* keep the sum observable so the loads are not optimised away */
	if (atomic_load(&j.sum) == 0x5eed)
		fputc(' ', stderr);
	return (double)bytes / t / 1e9;
}
