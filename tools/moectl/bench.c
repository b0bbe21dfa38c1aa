/* SPDX-License-Identifier: MIT */
/*
 * moectl bench io|quant|decode|prefetch: the benchmarks of moe-bench
 * (tools/bench), run from moectl with its output options.
 */
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "moectl.h"

/*
 * The benchmarks parse their own --json; moectl took it off the line
 * (main.c), so it goes back in after the benchmark's name.
 */
static int run_bench(int (*fn)(int, char **), int argc, char **argv)
{
	char **v;
	int n = 0, ret;

	if (!json_output)
		return fn(argc, argv);
	v = calloc((size_t)argc + 2, sizeof(*v));
	if (!v)
		return fail("out of memory");
	v[n++] = argv[0];
	v[n++] = "--json";
	for (int i = 1; i < argc; i++)
		v[n++] = argv[i];
	v[n] = NULL;
	ret = fn(n, v);
	free(v);
	return ret;
}

static int do_io(int argc, char **argv)
{
	return run_bench(bench_io, argc, argv);
}

static int do_quant(int argc, char **argv)
{
	return run_bench(bench_quant, argc, argv);
}

static int do_decode(int argc, char **argv)
{
	return run_bench(bench_decode, argc, argv);
}

static int do_prefetch(int argc, char **argv)
{
	return run_bench(bench_prefetch, argc, argv);
}

static int do_bench_help(int argc, char **argv);

static const struct cmd bench_cmds[] = {
	{ "io", do_io, "io [--size B] [--qd N] FILE engine vs pread vs mmap, cold cache" },
	{ "quant", do_quant, "quant [--mib N] [--threads N] matvec GB/s per type vs plain read" },
	{ "decode", do_decode, "decode [--threads N] MODEL  tokens/s vs the memory bound" },
	{ "prefetch", do_prefetch,
	  "prefetch TRACE...           cache policies vs Belady (simulated)" },
	{ "help", do_bench_help, "help                        this text" },
	{ 0 },
};

static int do_bench_help(int argc, char **argv)
{
	(void)argv;
	if (argc > 1)
		return usage_error("bench help: no arguments expected");
	cmd_help(bench_cmds, "moectl bench", stdout);
	return 0;
}

int do_bench(int argc, char **argv)
{
	return cmd_select(bench_cmds, argc - 1, argv + 1, "moectl bench");
}
