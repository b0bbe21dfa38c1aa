/* SPDX-License-Identifier: MIT */
/*
 * The engine options every tool that runs a model takes (--vram, --policy,
 * --prefetch, --kv-type, --io, --threads, --backend, ...): one table of
 * getopt_long entries, one parser, one help text, so moe-run and moe-server
 * accept the same values and refuse bad ones with the same words.
 */
#ifndef MOE_TOOL_ENGINE_OPTS_H
#define MOE_TOOL_ENGINE_OPTS_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "moe/moe.h"

/* getopt_long values of the engine options: above any a tool gives its own. */
#define ENGINE_OPT_BASE 0x1000

struct engine_opts {
	uint64_t vram, host_cache, ple_cache;
	bool vram_zero;         /* --vram 0: the smallest budget, not "no limit" */
	bool no_state, layer_pools;
	const char *backend, *policy, *prefetch, *state_dir;
	uint32_t kv_type, pin_hot, n_batch;
	uint32_t gds;           /* enum moe_gds */
	int threads;
	struct moe_io_params io;
	char state_buf[4096];   /* the default state directory, when one was found */
};

void engine_opts_init(struct engine_opts *e);

/*
 * @own (a tool's options, ending in a zeroed entry) followed by the engine's,
 * in a static array for getopt_long.
 */
const struct option *engine_opts_join(const struct option *own);

/*
 * One option from getopt_long: 1 when @c is none of the engine's (the tool
 * handles it), 0 when taken, EXIT_USAGE after a message naming the bad value
 * and what is accepted.
 */
int engine_opts_parse(struct engine_opts *e, int c, const char *arg);

/*
 * --gds's value (auto, on, off) into @out as an enum moe_gds: 0, or
 * EXIT_USAGE after a message naming the bad value (moe-bench takes it too).
 */
int engine_parse_gds(const char *arg, uint32_t *out);

/* Checks across options, after the last one: 0 or EXIT_USAGE with a message. */
int engine_opts_check(const struct engine_opts *e);

/* The engine options' lines of --help, aligned with the tools' own. */
void engine_opts_usage(FILE *f);

/*
 * Into @cp (filled by moe_ctx_params_init first): budgets, threads,
 * backend, I/O, policy, prefetch, KV type, and the state directory
 * (--state-dir, else the default one unless --no-state).
 */
void engine_opts_apply(struct engine_opts *e, struct moe_ctx_params *cp);

#endif
