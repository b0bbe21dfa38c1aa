/* SPDX-License-Identifier: MIT */
/*
 * moectl: operate moe models.  `moectl [--json] COMMAND ...`; each command
 * lives in its own file and is listed in the table below.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "moectl.h"

bool json_output;

static int do_help(int argc, char **argv);

static const struct cmd cmds[] = {
	{ "info", do_info, "info [--json] FILE         describe a GGUF model: sizes, experts, layout" },
	{ "tokenize", do_tokenize, "tokenize MODEL TEXT|-      token ids of text (--special, --bos)" },
	{ "detokenize", do_detokenize, "detokenize MODEL ID...     text of token ids (--special)" },
	{ "topo", do_topo, "topo [--json] [PATH]       NUMA nodes, disks, GPUs; where PATH lives" },
	{ "load", do_load, "load [--warm] NAME MODEL   register a model's experts with moe.ko (root)" },
	{ "unload", do_unload, "unload NAME                unregister a model from moe.ko (root)" },
	{ "status", do_status, "status [--json]            models registered with moe.ko, counters" },
	{ "stats", do_stats, "stats [--json|--csv] MODEL routing statistics saved for a model" },
	{ "trace", do_trace, "trace simulate TRACE ...   replay a routing trace against the policies" },
	{ "help", do_help, "help                       this text" },
	{ 0 },
};

static int do_help(int argc, char **argv)
{
	if (argc > 1)
		return usage_error("help: no arguments expected; `moectl COMMAND --help` describes "
				   "one command");
	(void)argv;
	fprintf(stderr, "usage: moectl [--json] COMMAND [ARGS]\n\ncommands:\n");
	for (const struct cmd *c = cmds; c->name; c++)
		fprintf(stderr, "  %s\n", c->help);
	fprintf(stderr, "\nCommands may be abbreviated to a unique prefix.\n");
	return 0;
}

int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "moectl: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	return EXIT_USAGE;
}

int fail(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "moectl: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	return 1;
}

const char *human_bytes(unsigned long long bytes, char *buf, unsigned len)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)bytes;
	unsigned u = 0;

	while (v >= 1024 && u < 4) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu B", bytes);
	else
		snprintf(buf, len, "%.2f %s", v, units[u]);
	return buf;
}

int cmd_select(const struct cmd *cmds_tbl, int argc, char **argv, const char *level)
{
	const struct cmd *found = NULL;
	size_t n;

	if (argc < 1)
		return usage_error("%s: missing command; try `moectl help`", level);
	n = strlen(argv[0]);
	for (const struct cmd *c = cmds_tbl; c->name; c++) {
		if (!strcmp(c->name, argv[0]))
			return c->fn(argc, argv);
		if (!strncmp(c->name, argv[0], n)) {
			if (found)
				return usage_error("'%s' is ambiguous (%s, %s, ...); try `moectl help`",
						   argv[0], found->name, c->name);
			found = c;
		}
	}
	if (!found)
		return usage_error("unknown command '%s'; try `moectl help`", argv[0]);
	return found->fn(argc, argv);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "pretty", no_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	tool_init("moectl");
	/* Global options come before the command; the command parses its own. */
	while ((c = getopt_long(argc, argv, "+jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json_output = true;
			break;
		case 'p':
			/* indented JSON; implies --json */
			json_output = tj_pretty = true;
			break;
		case 'h':
			do_help(0, NULL);
			return 0;
		default:
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		do_help(0, NULL);
		return EXIT_USAGE;
	}
	argv += optind;
	argc -= optind;
	optind = 0;
	return cmd_select(cmds, argc, argv, "moectl");
}
