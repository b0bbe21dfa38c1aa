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
	ck_assert_msg(strstr(out, "libmoe 0.1 (libmoe.so.0)"), "%s", out);
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
	char *out = NULL;
	json_t *v;

	moe_build_info(&b);
	ck_assert_str_eq(b.soname, "libmoe.so.0");
	ck_assert_int_eq(moectl(&out, "version --json"), 0);
	v = parse(out, "version --json");
	ck_assert_str_eq(json_string_value(json_object_get(v, "version")), "0.1");
	ck_assert_str_eq(json_string_value(json_object_get(v, "soname")), "libmoe.so.0");
	ck_assert_str_eq(json_string_value(json_object_get(v, "kmod_uapi")), "1.0");
	/* the tool reports the library it is linked with: the same fatbin as this test's */
	ck_assert_int_eq(json_is_true(json_object_get(v, "cuda_kernels")), b.cuda_kernel_bytes > 0);
	ck_assert_uint_eq(json_integer_value(json_object_get(v, "cuda_kernel_bytes")),
			  b.cuda_kernel_bytes);
	json_decref(v);
	free(out);
	ck_assert_int_eq(moectl(&out, "version"), 0);
	ck_assert_msg(strstr(out, "moe.ko uAPI: 1.0") &&
		      strstr(out, b.cuda_kernel_bytes ? "CUDA kernels: built in" :
			     "CUDA kernels: none"), "%s", out);
	free(out);
	ck_assert_int_eq(moectl_err(&out, "version extra"), 2);
	free(out);
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
	suite_add_tcase(s, tc);
	return s;
}
