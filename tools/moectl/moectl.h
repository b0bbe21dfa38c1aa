/* SPDX-License-Identifier: MIT */
#ifndef MOECTL_H
#define MOECTL_H

#include <stdbool.h>
#include <stdio.h>

#include "json.h"
#include "tool.h"

struct cmd {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *help;
};

/* Global options, parsed before the subcommand. */
extern bool json_output;

/* Run the subcommand named by argv[0] from @cmds (prefix match). */
int cmd_select(const struct cmd *cmds, int argc, char **argv, const char *level);
/* "usage: LEVEL COMMAND" and the table's synopses, into @f. */
void cmd_help(const struct cmd *cmds, const char *level, FILE *f);
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print a one-line failure "moectl: ..." to stderr and return 1. */
int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "1.50 GiB" style sizes into a static-per-call-site buffer. */
const char *human_bytes(unsigned long long bytes, char *buf, unsigned len);

/* Subcommands: one file each. */
int do_info(int argc, char **argv);
int do_topo(int argc, char **argv);
int do_tokenize(int argc, char **argv);
int do_detokenize(int argc, char **argv);
int do_load(int argc, char **argv);
int do_unload(int argc, char **argv);
int do_status(int argc, char **argv);
int do_stats(int argc, char **argv);
int do_trace(int argc, char **argv);
int do_version(int argc, char **argv);
int do_plan(int argc, char **argv);
int do_pack(int argc, char **argv);
int do_bench(int argc, char **argv);

#endif
