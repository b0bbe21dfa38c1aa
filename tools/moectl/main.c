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

/*
 * The help column starts with the command's synopsis; `moectl help` prints
 * them and the completion test reads the names from there.
 */
static const struct cmd cmds[] = {
	{ "info", do_info, "info FILE                  describe a GGUF model: sizes, experts, layout" },
	{ "plan", do_plan, "plan MODEL --vram SIZE ...  memory plan and predicted tokens/s for a budget" },
	{ "pack", do_pack, "pack IN OUT [--align N]    rewrite a GGUF with every tensor aligned (4096)" },
	{ "tokenize", do_tokenize, "tokenize MODEL TEXT|-      token ids of text (--special, --bos)" },
	{ "detokenize", do_detokenize, "detokenize MODEL ID...     text of token ids (--special)" },
	{ "topo", do_topo, "topo [-m MODEL]            NUMA nodes, GPUs, NVMe links; where to place I/O" },
	{ "load", do_load, "load [--warm] NAME MODEL   register a model's experts with moe.ko (root)" },
	{ "unload", do_unload, "unload NAME                unregister a model from moe.ko (root)" },
	{ "status", do_status, "status [--watch]           moe.ko's models and every live engine's counters" },
	{ "stats", do_stats, "stats [--csv] MODEL        routing statistics saved for a model" },
	{ "trace", do_trace, "trace simulate TRACE ...   replay a routing trace against the policies" },
	{ "bench", do_bench, "bench io|quant|decode|prefetch  the moe-bench benchmarks" },
	{ "version", do_version, "version                    library version, soname, build features" },
	{ "help", do_help, "help                       this text" },
	{ 0 },
};

void cmd_help(const struct cmd *tbl, const char *level, FILE *f)
{
	fprintf(f, "usage: %s [--json] [--pretty] COMMAND [ARGS]\n\ncommands:\n", level);
	for (const struct cmd *c = tbl; c->name; c++)
		fprintf(f, "  %s\n", c->help);
	fprintf(f, "\nCommands may be abbreviated to a unique prefix; `%s COMMAND --help` "
		"describes one.\n--json prints one JSON document on standard output, --pretty "
		"the same indented;\nboth go anywhere on the line.  Exit status: 0 success, 1 "
		"failure, 2 usage.\n", level);
}

static int do_help(int argc, char **argv)
{
	(void)argv;
	if (argc > 1)
		return usage_error("help: no arguments expected; `moectl COMMAND --help` describes "
				   "one command");
	cmd_help(cmds, "moectl", stdout);
	return 0;
}

int do_version(int argc, char **argv)
{
	struct moe_build_info b;

	if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("usage: moectl version [--json]\n"
		       "The library's version and soname, CUDA kernels built in, the moe.ko uAPI.\n");
		return 0;
	}
	if (argc > 1)
		return usage_error("version: no arguments expected");
	moe_build_info(&b);
	if (json_output) {
		json_t *o = json_object();

		tj_set(o, "version", json_sprintf("%d.%d", b.version_major, b.version_minor));
		tj_set(o, "soname", tj_str(b.soname));
		tj_set(o, "cuda_kernels", tj_bool(b.cuda_kernel_bytes > 0));
		tj_set(o, "cuda_kernel_bytes", tj_u64(b.cuda_kernel_bytes));
		tj_set(o, "kmod_uapi", json_sprintf("%d.%d", b.kmod_uapi_major, b.kmod_uapi_minor));
		return tj_print(o);
	}
	printf("libmoe %d.%d (%s)\n", b.version_major, b.version_minor, b.soname);
	if (b.cuda_kernel_bytes)
		printf("CUDA kernels: built in (%llu bytes of fatbin: sm_80, sm_90, PTX)\n",
		       (unsigned long long)b.cuda_kernel_bytes);
	else
		printf("CUDA kernels: none (built without nvcc; the CPU backend only)\n");
	printf("moe.ko uAPI: %d.%d\n", b.kmod_uapi_major, b.kmod_uapi_minor);
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

/*
 * --json and --pretty mean the same to every command wherever they stand, so
 * they are taken out here (before a "--", after which arguments are data) and
 * the command's own parser never sees them.
 */
static int take_output_flags(int argc, char **argv)
{
	int o = 1, i;

	for (i = 1; i < argc && strcmp(argv[i], "--"); i++) {
		if (!strcmp(argv[i], "--json")) {
			json_output = true;
		} else if (!strcmp(argv[i], "--pretty")) {
			json_output = tj_pretty = true;
		} else {
			argv[o++] = argv[i];
		}
	}
	for (; i < argc; i++)
		argv[o++] = argv[i];
	argv[o] = NULL;
	return o;
}

int cmd_select(const struct cmd *tbl, int argc, char **argv, const char *level)
{
	/* "trace: " in messages below the top level; usage_error() says "moectl: " */
	const char *sub = strchr(level, ' ') ? strchr(level, ' ') + 1 : NULL;
	const struct cmd *found = NULL;
	size_t n;

	if (argc < 1) {
		cmd_help(tbl, level, stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
		cmd_help(tbl, level, stdout);
		return 0;
	}
	n = strlen(argv[0]);
	for (const struct cmd *c = tbl; c->name && n; c++) {
		if (!strcmp(c->name, argv[0])) {
			found = c;
			break;
		}
		if (!strncmp(c->name, argv[0], n)) {
			if (found)
				return usage_error("%s%s'%s' is ambiguous (%s, %s, ...); try `%s help`",
						   sub ? sub : "", sub ? ": " : "", argv[0],
						   found->name, c->name, level);
			found = c;
		}
	}
	if (!found)
		return usage_error("%s%sunknown command '%s'; try `%s help`", sub ? sub : "",
				   sub ? ": " : "", argv[0], level);
	/* each command's getopt starts afresh, with argv[0] its name */
	optind = 0;
	argc = take_output_flags(argc, argv);
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
			json_output = tj_pretty = true;
			break;
		case 'h':
			cmd_help(cmds, "moectl", stdout);
			return 0;
		default:
			cmd_help(cmds, "moectl", stderr);
			return EXIT_USAGE;
		}
	}
	return cmd_select(cmds, argc - optind, argv + optind, "moectl");
}
