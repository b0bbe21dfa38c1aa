/* SPDX-License-Identifier: MIT */
/*
 * The bash completion as bash runs it (completion/moectl sourced, the
 * completion function called with COMP_WORDS as the shell would set them):
 * commands, subcommands, every command's flags, model files for every tool;
 * and the man pages `make man` cuts for each moectl command (moectl-CMD.1),
 * whose options must be those of `moectl CMD --help`.
 */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static struct {
	char dir[PATH_MAX];
} fx;

static void setup(void)
{
	char *dir = tu_tmpdir(), cmd[2 * PATH_MAX];

	ck_assert_ptr_nonnull(dir);
	snprintf(fx.dir, sizeof(fx.dir), "%s", dir);
	free(dir);
	/* what a model directory holds: models, a subdirectory, files that are not models */
	snprintf(cmd, sizeof(cmd), "cd %s && touch a.gguf b.gguf notes.txt && mkdir sub && "
		 "touch sub/c.gguf", fx.dir);
	ck_assert_int_eq(tu_run(cmd, 0, NULL), 0);
}

static void teardown(void)
{
	tu_rmtree(fx.dir);
}

/*
 * The words bash would offer after @words (the line up to the cursor, the
 * last word the one being completed, possibly ""), space-separated and
 * sorted; caller frees.
 */
static char *complete(const char *fn, const char *words)
{
	char script[PATH_MAX + 16], cmd[3 * PATH_MAX], *out = NULL;
	FILE *f;
	int st;

	snprintf(script, sizeof(script), "%s/complete.sh", fx.dir);
	f = fopen(script, "w");
	ck_assert_ptr_nonnull(f);
	/* a line ending in a space completes an empty word: the caller writes it as '' */
	fprintf(f, "PATH=%s:$PATH\n. %s\nCOMP_WORDS=(%s)\nCOMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n"
		"%s 2>/dev/null\nprintf '%%s\\n' \"${COMPREPLY[@]}\" | sort | tr '\\n' ' '\n",
		getenv("MOE_BIN") ? getenv("MOE_BIN") : "build/bin", tu_src("completion/moectl"),
		words, fn);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "cd %s && bash %s", fx.dir, script);
	st = tu_run(cmd, 1, &out);
	ck_assert_msg(st == 0, "completing `%s`: bash exited %d: %s", words, st, out);
	return out;
}

static void offers(const char *fn, const char *words, const char *want)
{
	char *out = complete(fn, words), pat[128], buf[256], spaced[4096], *save = NULL;

	snprintf(spaced, sizeof(spaced), " %s", out);
	snprintf(buf, sizeof(buf), "%s", want);
	for (char *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
		snprintf(pat, sizeof(pat), " %s ", w);
		ck_assert_msg(strstr(spaced, pat), "`%s<TAB>` does not offer %s: [%s]", words, w,
			      out);
	}
	free(out);
}

static void lacks(const char *fn, const char *words, const char *not)
{
	char *out = complete(fn, words), spaced[4096], pat[128];

	snprintf(spaced, sizeof(spaced), " %s", out);
	snprintf(pat, sizeof(pat), " %s ", not);
	ck_assert_msg(!strstr(spaced, pat), "`%s<TAB>` offers %s: [%s]", words, not, out);
	free(out);
}

START_TEST(moectl_words)
{
	offers("_moectl", "moectl st", "status stats");
	offers("_moectl", "moectl to", "topo tokenize");
	offers("_moectl", "moectl ''", "info plan topo status stats trace bench version help");
	offers("_moectl", "moectl status --", "--watch --interval --count --json --pretty --help");
	offers("_moectl", "moectl topo -", "--model --json");
	offers("_moectl", "moectl trace ''", "simulate help");
	offers("_moectl", "moectl bench ''", "io quant decode prefetch");
	offers("_moectl", "moectl plan m.gguf --v", "--vram");
	/* model files, and directories to descend into; not other files */
	offers("_moectl", "moectl info ''", "a.gguf b.gguf sub/");
	lacks("_moectl", "moectl info ''", "notes.txt");
	offers("_moectl", "moectl topo --model ''", "a.gguf b.gguf");
	offers("_moectl", "moectl info sub/", "sub/c.gguf");
	/* a value is not completed as a flag or a file */
	lacks("_moectl", "moectl status --watch --interval ''", "a.gguf");
}
END_TEST

/* The other tools: flags read from their --help, model files, moe-bench's benchmarks. */
START_TEST(other_tools)
{
	offers("_moe_tool", "moe-run --mo", "--model");
	offers("_moe_tool", "moe-run --ch", "--chat");
	offers("_moe_tool", "moe-run -m ''", "a.gguf b.gguf sub/");
	lacks("_moe_tool", "moe-run -m ''", "notes.txt");
	offers("_moe_tool", "moe-mkmodel --ar", "--arch");
	offers("_moe_tool", "moe-bench ''", "io quant decode prefetch");
	offers("_moe_tool", "moe-server --po", "--port");
	offers("_moe_tool", "moe-server -m ''", "a.gguf");
}
END_TEST

/* Every --flag of @help is in @page (roff escapes every '-' as "\-"). */
static int flags_in_page(const char *help, const char *page, const char *what)
{
	int n = 0;

	for (const char *p = help; (p = strstr(p, "--")); p += 2) {
		char flag[64], roff[160];
		size_t len = 2, o = 0;

		while (len < 40 && ((p[len] >= 'a' && p[len] <= 'z') ||
				    (p[len] >= '0' && p[len] <= '9') || p[len] == '-'))
			len++;
		if (len < 3 || p[2] < 'a' || p[2] > 'z' || !strncmp(p, "--help", 6))
			continue;
		memcpy(flag, p, len);
		flag[len] = 0;
		for (size_t i = 0; i < len; i++) {
			if (flag[i] == '-')
				roff[o++] = '\\';
			roff[o++] = flag[i];
		}
		roff[o] = 0;
		ck_assert_msg(strstr(page, roff), "%s lacks %s", what, flag);
		n++;
	}
	return n;
}

START_TEST(command_man_pages)
{
	char cmd[3 * PATH_MAX], *list = NULL, *save = NULL;
	char *rst = tu_read_file(tu_src("Documentation/tools/moectl.rst"), NULL);
	int pages = 0, flags = 0;

	if (tu_run("command -v rst2man >/dev/null", 0, NULL) != 0) {
		tu_skip("completion/command_man_pages", "rst2man is not installed "
			"(python3-docutils; `make man` installs it as root)");
		free(rst);
		return;
	}
	snprintf(cmd, sizeof(cmd), "sh %s --commands %s", tu_src("scripts/man.sh"),
		 tu_src("Documentation/tools/moectl.rst"));
	ck_assert_int_eq(tu_run(cmd, 0, &list), 0);
	for (char *c = strtok_r(list, "\n", &save); c; c = strtok_r(NULL, "\n", &save)) {
		char page[PATH_MAX + 64], name[128], *text, *help = NULL;

		snprintf(page, sizeof(page), "%s/moectl-%s.1", fx.dir, c);
		snprintf(cmd, sizeof(cmd), "cd %s && sh scripts/man.sh "
			 "Documentation/tools/moectl.rst %s %s 2>&1", tu_src("."), page, c);
		ck_assert_msg(tu_run(cmd, 0, &text) == 0, "moectl-%s.1: %s", c, text);
		free(text);
		snprintf(name, sizeof(name), "moectl-%s(1)", c);
		ck_assert_msg(rst && strstr(strstr(rst, "SEE ALSO") ? strstr(rst, "SEE ALSO") : "",
					    name), "moectl.rst's SEE ALSO lacks %s", name);
		text = tu_read_file(page, NULL);
		ck_assert_ptr_nonnull(text);
		snprintf(name, sizeof(name), ".TH \"MOECTL-");
		ck_assert_msg(strstr(text, name), "moectl-%s.1 has no .TH line", c);
		snprintf(name, sizeof(name), "moectl-%s \\- ", c);
		ck_assert_msg(strstr(text, name), "moectl-%s.1: no NAME line", c);
		ck_assert_msg(strstr(text, "SEE ALSO") && strstr(text, "moectl(1)"),
			      "moectl-%s.1 has no SEE ALSO", c);
		if (strcmp(c, "trace") && strcmp(c, "bench")) {
			snprintf(cmd, sizeof(cmd), "%s %s --help 2>&1", tu_bin("moectl"), c);
			ck_assert_int_eq(tu_run(cmd, 0, &help), 0);
			snprintf(name, sizeof(name), "moectl-%s.1", c);
			flags += flags_in_page(help, text, name);
			free(help);
		}
		free(text);
		pages++;
	}
	free(list);
	free(rst);
	/* every command but help has a page; their options appear in it */
	ck_assert_int_ge(pages, 12);
	ck_assert_int_ge(flags, 30);
	/* a command moectl.rst does not describe is refused */
	snprintf(cmd, sizeof(cmd), "cd %s && sh scripts/man.sh Documentation/tools/moectl.rst "
		 "%s/x.1 nosuch 2>&1", tu_src("."), fx.dir);
	ck_assert_int_eq(tu_run(cmd, 0, NULL), 1);
}
END_TEST

Suite *suite_completion(void)
{
	Suite *s = suite_create("completion");
	TCase *tc = tcase_create("completion");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, moectl_words);
	tcase_add_test(tc, other_tools);
	tcase_add_test(tc, command_man_pages);
	suite_add_tcase(s, tc);
	return s;
}
