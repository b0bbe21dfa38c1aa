/* SPDX-License-Identifier: MIT */
#ifndef MOE_BENCH_H
#define MOE_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "json.h"
#include "tool.h"

struct moe_threadpool;

/* Monotonic seconds. */
double bench_now(void);
/* GB/s of one pass of plain reads (a sum) over @bytes on the pool's threads: the baseline. */
double bench_read_gbps(struct moe_threadpool *tp, const void *buf, size_t bytes);

/*
 * Read bandwidth of the I/O engine on @path's routed experts (up to @limit
 * bytes of them, in random order, the file's pages dropped first with
 * fadvise): GB/s, with the engine's description in @desc; -1 with the
 * reason in @desc.  A progress bar is drawn unless @quiet.
 */
double bench_engine_gbps(const char *path, uint64_t limit, char *desc, size_t dlen, bool quiet);

struct bench_cmd {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
};

/* Benchmarks: one file each; each parses its own options (including --json). */
int bench_io(int argc, char **argv);
int bench_quant(int argc, char **argv);
int bench_decode(int argc, char **argv);
int bench_prefetch(int argc, char **argv);
int bench_gpu_matvec(int argc, char **argv);
int bench_gpu_h2d(int argc, char **argv);

#endif
