/* SPDX-License-Identifier: MIT */
/*
 * moectl as an operator meets it: the command tables (prefixes, help at each
 * level, exit statuses), --json and --pretty on every command (parsed back
 * with jansson), and `moectl version`.
 */
#include <check.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "moe/moe.h"
#include "testutil.h"

static struct {
	char dir[PATH_MAX];
	char model[PATH_MAX + 16];
	char args[3 * PATH_MAX];
} fx;

static void setup(void)
{
	char *dir = tu_tmpdir(), cmd[3 * PATH_MAX];

	ck_assert_ptr_nonnull(dir);
	snprintf(fx.dir, sizeof(fx.dir), "%s", dir);
	free(dir);
	snprintf(fx.model, sizeof(fx.model), "%s/m.gguf", fx.dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --layers 2 --embd 64 --heads 2 --kv-heads 1 "
		 "--head-dim 32 --experts 4 --expert-ff 64 --vocab-bpe -q -o %s",
		 tu_bin("moe-mkmodel"), fx.model);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
}

static void teardown(void)
{
	tu_rmtree(fx.dir);
}

/* Run `moectl ARGS` (a shell fragment); its exit status, stdout in *out. */
static int moectl(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int moectl(char **out, const char *fmt, ...)
{
	char cmd[4 * PATH_MAX];
	va_list ap;
	int n;

	n = snprintf(cmd, sizeof(cmd), "%s ", tu_bin("moectl"));
	va_start(ap, fmt);
	vsnprintf(cmd + n, sizeof(cmd) - (size_t)n, fmt, ap);
	va_end(ap);
	return tu_run(cmd, 0, out);
}

/* Exit status and stderr together, for usage errors. */
static int moectl_err(char **out, const char *args)
{
	char cmd[4 * PATH_MAX];

	snprintf(cmd, sizeof(cmd), "%s %s 2>&1 >/dev/null", tu_bin("moectl"), args);
	return tu_run(cmd, 0, out);
}

static json_t *parse(const char *text, const char *what)
{
	json_error_t e;
	json_t *v = json_loads(text ? text : "", 0, &e);

	ck_assert_msg(v, "%s: not JSON (%s at line %d): %s", what, e.text, e.line, text);
	return v;
}

START_TEST(prefixes_and_help)
{
	char *out = NULL;

	/* a unique prefix runs the command; the full name always wins */
	ck_assert_int_eq(moectl(&out, "inf %s", fx.model), 0);
	ck_assert_msg(strstr(out, "architecture:     qwen3moe"), "%s", out);
	free(out);
	ck_assert_int_eq(moectl(&out, "v"), 0);
	ck_assert_msg(strstr(out, "libmoe 1.0 (libmoe.so.1)"), "%s", out);
	free(out);
	/* ambiguous and unknown: usage (2), naming the candidates or the help */
	ck_assert_int_eq(moectl_err(&out, "t"), 2);
	ck_assert_msg(strstr(out, "'t' is ambiguous (tokenize, topo"), "%s", out);
	free(out);
	ck_assert_int_eq(moectl_err(&out, "frobnicate"), 2);
	ck_assert_msg(strstr(out, "unknown command 'frobnicate'; try `moectl help`"), "%s", out);
	free(out);
	ck_assert_int_eq(moectl_err(&out, "trace frob"), 2);
	ck_assert_msg(strstr(out, "trace: unknown command 'frob'; try `moectl trace help`"), "%s",
		      out);
	free(out);
	/* help at each level, on stdout with status 0; no command: the same on stderr, 2 */
	ck_assert_int_eq(moectl(&out, "help"), 0);
	ck_assert_msg(strstr(out, "  version ") && strstr(out, "  trace simulate"), "%s", out);
	free(out);
	ck_assert_int_eq(moectl(&out, "tr help"), 0);
	ck_assert_msg(strstr(out, "usage: moectl trace") && strstr(out, "  simulate TRACE"), "%s",
		      out);
	free(out);
	ck_assert_int_eq(moectl(&out, "trace --help"), 0);
	ck_assert_msg(strstr(out, "  simulate TRACE"), "%s", out);
	free(out);
	ck_assert_int_eq(moectl_err(&out, "trace"), 2);
	ck_assert_msg(strstr(out, "usage: moectl trace"), "%s", out);
	free(out);
	ck_assert_int_eq(moectl_err(&out, ""), 2);
	ck_assert_msg(strstr(out, "usage: moectl"), "%s", out);
	free(out);
	/* failure is 1, with the reason */
	ck_assert_int_eq(moectl_err(&out, "info /nonexistent.gguf"), 1);
	ck_assert_msg(strstr(out, "/nonexistent.gguf"), "%s", out);
	free(out);
}
END_TEST

/* --json and --pretty anywhere on the line give the same document, one line or indented. */
START_TEST(json_and_pretty)
{
	static const char *const forms[] = { "--json %s %s", "%s --json %s", "%s %s --json" };
	char args[3 * PATH_MAX], *line = NULL, *pretty = NULL;
	json_t *a, *b;

	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
		snprintf(args, sizeof(args), forms[i], "info", fx.model);
		ck_assert_int_eq(moectl(&line, "%s", args), 0);
		ck_assert_msg(strchr(line, '\n') == line + strlen(line) - 1, "one line: %s", line);
		ck_assert_msg(strstr(line, "\"arch\": \"qwen3moe\""), "%s", line);
		a = parse(line, args);
		ck_assert_int_eq(json_integer_value(json_object_get(a, "n_layers")), 2);
		json_decref(a);
		free(line);
	}
	ck_assert_int_eq(moectl(&line, "info --json %s", fx.model), 0);
	ck_assert_int_eq(moectl(&pretty, "info %s --pretty", fx.model), 0);
	ck_assert_msg(strstr(pretty, "{\n  \"file\": "), "indented: %s", pretty);
	a = parse(line, "info --json");
	b = parse(pretty, "info --pretty");
	ck_assert_msg(json_equal(a, b), "--json and --pretty differ:\n%s\n%s", line, pretty);
	json_decref(a);
	json_decref(b);
	free(line);
	free(pretty);

	/* every command with a document: tokenize, detokenize, topo, version */
	ck_assert_int_eq(moectl(&line, "tok --pretty %s 'hello world'", fx.model), 0);
	a = parse(line, "tokenize --pretty");
	ck_assert_int_eq(json_integer_value(json_object_get(a, "count")),
			 json_array_size(json_object_get(a, "ids")));
	ck_assert_int_eq(json_array_size(json_object_get(a, "ids")),
			 json_array_size(json_object_get(a, "pieces")));
	json_decref(a);
	free(line);
	ck_assert_int_eq(moectl(&line, "topo --pretty %s", fx.dir), 0);
	a = parse(line, "topo --pretty");
	ck_assert_ptr_nonnull(json_object_get(a, "numa_nodes"));
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(a, "path"), "path")),
			 fx.dir);
	json_decref(a);
	free(line);
	/* after "--" the words are the command's own: tokenize the text "--json" */
	ck_assert_int_eq(moectl(&line, "tokenize %s -- --json", fx.model), 0);
	ck_assert_msg(!strchr(line, '{') && strspn(line, "0123456789 \n") == strlen(line), "%s",
		      line);
	free(line);
}
END_TEST

START_TEST(version)
{
	struct moe_build_info b;
	char *out = NULL, uapi[32], line[64];
	json_t *v;

	moe_build_info(&b);
	ck_assert_str_eq(b.soname, "libmoe.so.1");
	ck_assert_int_eq(moectl(&out, "version --json"), 0);
	v = parse(out, "version --json");
	ck_assert_str_eq(json_string_value(json_object_get(v, "version")), "1.0");
	ck_assert_str_eq(json_string_value(json_object_get(v, "soname")), "libmoe.so.1");
	snprintf(uapi, sizeof(uapi), "%d.%d", b.kmod_uapi_major, b.kmod_uapi_minor);
	ck_assert_int_ge(b.kmod_uapi_major, 1);
	ck_assert_str_eq(json_string_value(json_object_get(v, "kmod_uapi")), uapi);
	/* the tool reports the library it is linked with: the same fatbin as this test's */
	ck_assert_int_eq(json_is_true(json_object_get(v, "cuda_kernels")), b.cuda_kernel_bytes > 0);
	ck_assert_uint_eq(json_integer_value(json_object_get(v, "cuda_kernel_bytes")),
			  b.cuda_kernel_bytes);
	json_decref(v);
	free(out);
	ck_assert_int_eq(moectl(&out, "version"), 0);
	snprintf(line, sizeof(line), "moe.ko uAPI: %s\n", uapi);
	ck_assert_msg(strstr(out, line) &&
		      strstr(out, b.cuda_kernel_bytes ? "CUDA kernels: built in" :
			     "CUDA kernels: none"), "%s", out);
	free(out);
	ck_assert_int_eq(moectl_err(&out, "version extra"), 2);
	free(out);
}
END_TEST

/* A JSON document from `moectl ARGS`, which must succeed. */
static json_t *moectl_json(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *moectl_json(const char *fmt, ...)
{
	char args[4 * PATH_MAX], *out = NULL;
	va_list ap;
	json_t *v;

	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	ck_assert_msg(moectl(&out, "%s", args) == 0, "moectl %s failed: %s", args, out);
	v = parse(out, args);
	free(out);
	return v;
}

static double num(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);

	ck_assert_msg(json_is_number(v), "no number \"%s\"", key);
	return json_number_value(v);
}

/* The plan's figures by hand: slots from the budget, hit rates, tokens/s, cost, the budget. */
START_TEST(plan_by_hand)
{
	json_t *info, *plan, *pr, *cls;
	double routed, hit, tps_hi, tps_lo;
	uint64_t fixed, slot, budget;
	char *out = NULL;

	info = moectl_json("info --json %s", fx.model);
	routed = num(info, "routed_bytes_per_token");
	/* 2 MoE layers x 4 experts, 2 used: 2 x 2 x one expert's bytes per token */
	ck_assert_double_eq(routed, 4 * num(info, "expert_bytes_each"));
	/* the whole model first: every expert has a slot, reads never bound */
	plan = moectl_json("plan --json %s --vram 1G --ctx 64 --read-gbps 2 --no-stats", fx.model);
	ck_assert(json_is_true(json_object_get(plan, "all_experts")));
	ck_assert_int_eq(num(plan, "n_slots"), 8);
	ck_assert(json_is_null(json_object_get(json_object_get(plan, "prediction"), "tps_low")));
	cls = json_array_get(json_object_get(plan, "classes"), 0);
	slot = (uint64_t)num(cls, "slot_bytes");
	fixed = (uint64_t)num(plan, "device_bytes") - 8 * slot;
	ck_assert_uint_eq((uint64_t)num(plan, "device_bytes"),
			  (uint64_t)(num(plan, "resident_bytes") + num(plan, "kv_bytes") +
				     num(plan, "scratch_bytes") + num(plan, "workspace_bytes") +
				     num(plan, "slot_bytes")));
	json_decref(plan);

	/* room for 4 slots: 2 a layer, half the experts; uniform routing hits half the time */
	budget = fixed + 4 * slot;
	plan = moectl_json("plan --json %s --vram %llu --ctx 64 --read-gbps 2 --target-tps 1000000 "
			   "--gpu-hour-cost 3 --no-stats", fx.model, (unsigned long long)budget);
	ck_assert_int_eq(num(plan, "n_slots"), 4);
	ck_assert_uint_eq((uint64_t)num(plan, "device_bytes"), budget);
	pr = json_object_get(plan, "prediction");
	hit = 0.5;
	ck_assert_double_eq_tol(num(pr, "hit_rate_uniform"), hit, 1e-9);
	ck_assert(json_is_null(json_object_get(pr, "hit_rate_stats")));
	tps_hi = 2e9 / ((1 - hit) * routed);
	tps_lo = 0.75 * tps_hi;
	ck_assert_double_eq_tol(num(pr, "tps_high"), tps_hi, tps_hi * 1e-5);
	ck_assert_double_eq_tol(num(pr, "tps_low"), tps_lo, tps_lo * 1e-5);
	ck_assert_double_eq_tol(num(pr, "cost_per_mtok_low"), 3 / (tps_hi * 3600) * 1e6,
				3 / (tps_hi * 3600));
	ck_assert_double_eq_tol(num(pr, "cost_per_mtok_high"), 3 / (tps_lo * 3600) * 1e6,
				3 / (tps_lo * 3600));
	/* a target no reads can meet needs every expert in a slot */
	ck_assert_uint_eq((uint64_t)num(pr, "target_vram_bytes"), fixed + 8 * slot);
	json_decref(plan);
	/* 1.5x the speed of two slots a layer needs the low end at 3 a layer: 6 slots */
	plan = moectl_json("plan --json %s --vram %llu --ctx 64 --read-gbps 2 --target-tps %.6f "
			   "--no-stats", fx.model, (unsigned long long)budget, tps_lo * 1.9);
	pr = json_object_get(plan, "prediction");
	ck_assert_uint_eq((uint64_t)num(pr, "target_vram_bytes"), fixed + 6 * slot);
	json_decref(plan);

	/* the text says where the figures come from */
	ck_assert_int_eq(moectl(&out, "plan %s --vram %llu --ctx 64 --read-gbps 2 --no-stats",
				fx.model, (unsigned long long)budget), 0);
	ck_assert_msg(strstr(out, "4 device, 0 host, for 8 routed experts") &&
		      strstr(out, "uniform routing assumed") && strstr(out, "75% of 2.00 GB/s"),
		      "%s", out);
	free(out);
	/* usage errors and a budget too small */
	ck_assert_int_eq(moectl_err(&out, "plan"), 2);
	free(out);
	ck_assert_int_eq(moectl_err(&out, "plan /x.gguf"), 2);
	ck_assert_msg(strstr(out, "--vram SIZE is required"), "%s", out);
	free(out);
	snprintf(fx.args, sizeof(fx.args), "plan %s --vram 1G --target-tps 5", fx.model);
	ck_assert_int_eq(moectl_err(&out, fx.args), 2);
	ck_assert_msg(strstr(out, "needs --read-gbps"), "%s", out);
	free(out);
	snprintf(fx.args, sizeof(fx.args), "plan %s --vram 4K", fx.model);
	ck_assert_int_eq(moectl_err(&out, fx.args), 1);
	ck_assert_msg(strstr(out, "cannot hold this model"), "%s", out);
	free(out);
	json_decref(info);
}
END_TEST

/*
 * The plan is what a run uses: moe-run with the same budget and context holds
 * as much device memory at its peak and as many slots; with the statistics
 * that run saved, the high end's hit rate is the share of routings that the
 * most used experts of each layer took, from `moectl stats`.
 */
START_TEST(plan_against_run)
{
	char cmd[4 * PATH_MAX], *out = NULL;
	json_t *plan, *run, *stats, *layers, *pr;
	double kept = 0, all = 0;
	int n_slots;
	size_t i;

	plan = moectl_json("plan --json %s --vram 1300K --ctx 64 --no-stats", fx.model);
	snprintf(cmd, sizeof(cmd), "%s -m %s --vram 1300K --ctx 64 --tokens 1,2,3,4,5,6 -n 20 "
		 "--json --stats --state-dir %s/state", tu_bin("moe-run"), fx.model, fx.dir);
	ck_assert_msg(tu_run(cmd, 0, &out) == 0, "%s: %s", cmd, out);
	run = parse(out, "moe-run");
	free(out);
	ck_assert_uint_eq((uint64_t)num(run, "vram_peak"), (uint64_t)num(plan, "device_bytes"));
	ck_assert_uint_eq((uint64_t)num(run, "vram_used"), (uint64_t)num(plan, "device_bytes"));
	ck_assert_int_eq(num(run, "n_slots"), num(plan, "n_slots"));
	ck_assert_uint_eq((uint64_t)num(run, "staging_bytes"),
			  (uint64_t)num(plan, "staging_bytes"));
	n_slots = (int)num(plan, "n_slots");
	/* fewer slots than experts, an even number: the same count for each layer */
	ck_assert_msg(n_slots > 0 && n_slots < 8 && n_slots % 2 == 0, "%d slots", n_slots);
	json_decref(plan);
	json_decref(run);

	plan = moectl_json("plan --json %s --vram 1300K --ctx 64 --read-gbps 1 "
			   "--state-dir %s/state", fx.model, fx.dir);
	stats = moectl_json("stats --json --state-dir %s/state %s", fx.dir, fx.model);
	layers = json_object_get(stats, "layers");
	/* the slots split over 2 layers: each layer's most used, 2 experts used per token */
	for (i = 0; i < json_array_size(layers); i++) {
		json_t *l = json_array_get(layers, i), *top = json_object_get(l, "top");

		for (int k = 0; k < n_slots / 2; k++)
			kept += num(l, "tokens") * num(json_array_get(top, (size_t)k), "share");
		all += num(l, "tokens") * 2;
	}
	pr = json_object_get(plan, "prediction");
	ck_assert_msg(strstr(json_string_value(json_object_get(pr, "stats")), "/state/routes-"),
		      "%s", json_string_value(json_object_get(pr, "stats")));
	ck_assert_double_eq_tol(num(pr, "hit_rate_stats"), kept / all, 1e-4);
	ck_assert(num(pr, "tps_high") >= num(pr, "tps_low"));
	json_decref(stats);
	json_decref(plan);
}
END_TEST

/* --measure reads the model's experts through the I/O engine and predicts from that rate. */
START_TEST(plan_measure)
{
	json_t *plan, *pr;
	char *out = NULL;

	plan = moectl_json("plan --json %s --vram 1300K --ctx 64 --measure --no-stats", fx.model);
	pr = json_object_get(plan, "prediction");
	ck_assert(num(pr, "read_gbps") > 0);
	ck_assert_msg(strstr(json_string_value(json_object_get(pr, "read_gbps_measured")),
			     "staging"), "the engine's description");
	ck_assert_double_eq_tol(num(pr, "tps_high"),
				num(pr, "read_gbps") * 1e9 / ((1 - num(pr, "hit_rate_uniform")) *
							      num(plan, "routed_bytes_per_token")),
				num(pr, "tps_high") * 1e-4);
	json_decref(plan);
	snprintf(fx.args, sizeof(fx.args), "plan %s --vram 1G --measure --read-gbps 1", fx.model);
	ck_assert_int_eq(moectl_err(&out, fx.args), 2);
	ck_assert_msg(strstr(out, "not both"), "%s", out);
	free(out);
}
END_TEST

/* moectl bench runs moe-bench's code: the same keys, --json put back for it, prefixes. */
START_TEST(bench_commands)
{
	json_t *v;
	char *out = NULL;

	v = moectl_json("bench io --no-drop-caches --total 256K %s --json", fx.model);
	ck_assert(num(v, "engine_gbps") > 0 && json_is_true(json_object_get(v, "from_model")));
	json_decref(v);
	v = moectl_json("--pretty be dec --threads 1 --tokens 2 --prompt 2 %s", fx.model);
	ck_assert(num(v, "bytes_per_token") > 0 && json_object_get(v, "vram50"));
	json_decref(v);
	v = moectl_json("bench quant --json --mib 1 --reps 1 --threads 1 --type q8_0");
	ck_assert_int_eq(json_array_size(json_object_get(v, "results")), 1);
	json_decref(v);
	ck_assert_int_eq(moectl(&out, "bench help"), 0);
	ck_assert_msg(strstr(out, "  io ") && strstr(out, "  quant ") && strstr(out, "  decode "),
		      "%s", out);
	free(out);
	ck_assert_int_eq(moectl_err(&out, "bench"), 2);
	free(out);
	ck_assert_int_eq(moectl_err(&out, "bench io"), 2);
	free(out);
}
END_TEST

/* Every --flag in @help appears in @doc (named @what); returns how many were checked. */
static int flags_in(const char *help, const char *doc, const char *what, const char *cmd)
{
	int n = 0;

	for (const char *p = help; (p = strstr(p, "--")); p += 2) {
		char flag[64];
		size_t len = 2;

		while (len < sizeof(flag) - 1 && ((p[len] >= 'a' && p[len] <= 'z') ||
						  (p[len] >= '0' && p[len] <= '9') || p[len] == '-'))
			len++;
		if (len < 3 || p[2] < 'a' || p[2] > 'z' || !strncmp(p, "--help", 6))
			continue;
		memcpy(flag, p, len);
		flag[len] = 0;
		ck_assert_msg(strstr(doc, flag), "%s: %s of `%s --help` is missing", what, flag,
			      cmd);
		n++;
	}
	return n;
}

/*
 * The command tables, each command's --help and the completion file and man
 * pages agree: every command and every flag of each is completed and documented.
 */
START_TEST(completion_and_man)
{
	static const char *const levels[][6] = {
		{ "trace", "simulate", NULL },
		{ "bench", "io", "quant", "decode", "prefetch", NULL },
	};
	char *comp = tu_read_file(tu_src("completion/moectl"), NULL);
	char *page = tu_read_file(tu_src("Documentation/tools/moectl.rst"), NULL);
	char *bench = tu_read_file(tu_src("Documentation/tools/moe-bench.rst"), NULL);
	char *help = NULL, *out = NULL, *line, cmd[256], *save = NULL, words[512];
	int n_cmds = 0, n_flags = 0;

	ck_assert(comp && page && bench);
	/* the completion's command list, with a space before and after every word */
	line = strstr(comp, "local commands=\"");
	ck_assert_ptr_nonnull(line);
	line += strlen("local commands=\"");
	snprintf(words, sizeof(words), " %.*s ", (int)strcspn(line, "\""), line);
	ck_assert_int_eq(moectl(&help, "help"), 0);
	line = strstr(help, "commands:\n");
	ck_assert_ptr_nonnull(line);
	for (line = strtok_r(line + 10, "\n", &save); line && !strncmp(line, "  ", 2);
	     line = strtok_r(NULL, "\n", &save)) {
		char name[32], pat[64];

		ck_assert_int_eq(sscanf(line, " %31s", name), 1);
		snprintf(pat, sizeof(pat), " %s ", name);
		ck_assert_msg(strstr(words, pat), "completion lacks the command %s", name);
		snprintf(pat, sizeof(pat), "moectl %s", name);
		ck_assert_msg(strstr(page, pat), "moectl.rst lacks `%s`", pat);
		n_cmds++;
		if (!strcmp(name, "help") || !strcmp(name, "trace") || !strcmp(name, "bench"))
			continue;
		snprintf(cmd, sizeof(cmd), "%s --help", name);
		ck_assert_int_eq(moectl(&out, "%s 2>&1", cmd), 0);
		n_flags += flags_in(out, comp, "completion/moectl", cmd);
		n_flags += flags_in(out, page, "moectl.rst", cmd);
		free(out);
	}
	for (size_t l = 0; l < sizeof(levels) / sizeof(levels[0]); l++) {
		for (int i = 1; levels[l][i]; i++) {
			snprintf(cmd, sizeof(cmd), "%s %s --help", levels[l][0], levels[l][i]);
			ck_assert_int_eq(moectl(&out, "%s 2>&1", cmd), 0);
			n_flags += flags_in(out, comp, "completion/moectl", cmd);
			n_flags += flags_in(out, l ? bench : page, l ? "moe-bench.rst" : "moectl.rst",
					    cmd);
			free(out);
			ck_assert_msg(strstr(comp, levels[l][i]), "completion lacks %s %s",
				      levels[l][0], levels[l][i]);
		}
	}
	ck_assert_int_ge(n_cmds, 13);
	ck_assert_int_ge(n_flags, 80);
	free(help);
	ck_assert_int_eq(tu_run("bash -n completion/moectl 2>&1", 0, &out), 0);
	free(out);

	/* the man page, as `make man` makes it */
	if (tu_run("command -v rst2man >/dev/null", 0, NULL) != 0) {
		tu_skip("moectl/completion_and_man: man page", "rst2man is not installed "
			"(python3-docutils; `make man` installs it)");
	} else {
		char page_out[PATH_MAX + 32];

		snprintf(page_out, sizeof(page_out), "%s/moectl.1", fx.dir);
		snprintf(fx.args, sizeof(fx.args), "cd %s && sh scripts/man.sh "
			 "Documentation/tools/moectl.rst %s 2>&1", tu_src("."), page_out);
		ck_assert_msg(tu_run(fx.args, 0, &out) == 0, "%s", out);
		free(out);
		out = tu_read_file(page_out, NULL);
		ck_assert_msg(out && strstr(out, ".TH \"MOECTL\" 1 ") &&
			      strstr(out, "moectl \\- operate moe models") &&
			      strstr(out, "\\-\\-gpu\\-hour\\-cost"), "%s: not the man page of "
			      "moectl.rst", page_out);
		free(out);
	}
	free(comp);
	free(page);
	free(bench);
}
END_TEST

Suite *suite_moectl(void)
{
	Suite *s = suite_create("moectl");
	TCase *tc = tcase_create("moectl");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, prefixes_and_help);
	tcase_add_test(tc, json_and_pretty);
	tcase_add_test(tc, version);
	tcase_add_test(tc, plan_by_hand);
	tcase_add_test(tc, plan_against_run);
	tcase_add_test(tc, plan_measure);
	tcase_add_test(tc, bench_commands);
	tcase_add_test(tc, completion_and_man);
	suite_add_tcase(s, tc);
	return s;
}
