/* SPDX-License-Identifier: MIT */
#ifndef MOE_BENCH_H
#define MOE_BENCH_H

#include <stdbool.h>

struct bench_cmd {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
};

/* Benchmarks: one file each; each parses its own options (including --json). */
int bench_io(int argc, char **argv);
int bench_quant(int argc, char **argv);
int bench_decode(int argc, char **argv);

#endif
