/* SPDX-License-Identifier: MIT */
/*
 * moe-bench: benchmarks that print ratios against a baseline measured in the
 * same run.  `moe-bench NAME [--json] ...`.
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"
#include "tool.h"

static const struct bench_cmd cmds[] = {
	{ "io", bench_io, "io [--json] [--size B] [--qd N] FILE   engine vs pread vs mmap, cold cache" },
	{ "quant", bench_quant, "quant [--json] [--mib N] [--threads N]  matvec GB/s per type vs plain read" },
	{ "decode", bench_decode, "decode [--json] [--threads N] MODEL  tokens/s vs the memory bound; 50%/25% budgets" },
	{ "gpu-matvec", bench_gpu_matvec,
	  "gpu-matvec [--json] [--rows N] [--cols N]  CUDA matvec GB/s vs device copy bandwidth" },
	{ "gpu-h2d", bench_gpu_h2d,
	  "gpu-h2d [--json] [--mib N] [--experts N]  expert upload pipeline vs plain pinned copies" },
	{ "prefetch", bench_prefetch,
	  "prefetch [--json] TRACE...  cache policies and prefetchers vs Belady (simulated)" },
	{ 0 },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: moe-bench BENCHMARK [--json] [ARGS]\n\nbenchmarks:\n");
	for (const struct bench_cmd *c = cmds; c->name; c++)
		fprintf(f, "  %s\n", c->help);
}

int main(int argc, char **argv)
{
	tool_init("moe-bench");
	if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? EXIT_USAGE : 0;
	}
	for (const struct bench_cmd *c = cmds; c->name; c++)
		if (!strcmp(c->name, argv[1]))
			return c->fn(argc - 1, argv + 1);
	fprintf(stderr, "moe-bench: unknown benchmark '%s'; try `moe-bench help`\n", argv[1]);
	return EXIT_USAGE;
}
