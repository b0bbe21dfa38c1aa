/* SPDX-License-Identifier: MIT */
/*
 * What tests/vm/run.sh concludes from its logs (tests/vm/summary.sh), fed
 * logs made here, so that the verdict is tested without booting a VM: a test
 * that never reports fails, a "# ... not run" line is no pass, and make's
 * own jobserver note is not a compiler warning.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static char *dir;

static void setup(void)
{
	dir = tu_tmpdir();
	ck_assert_ptr_nonnull(dir);
}

static void teardown(void)
{
	tu_rmtree(dir);
	free(dir);
}

/* summary.sh results on a console log and an expected list; returns its status. */
static int results(const char *console, const char *expected, char **out)
{
	char con[512], exp[512], cmd[2048];

	snprintf(con, sizeof(con), "%s/console.txt", dir);
	snprintf(exp, sizeof(exp), "%s/expected", dir);
	ck_assert_int_eq(tu_write_file(con, console, strlen(console)), 0);
	ck_assert_int_eq(tu_write_file(exp, expected, strlen(expected)), 0);
	snprintf(cmd, sizeof(cmd), "sh %s results %s %s", tu_src("tests/vm/summary.sh"), con, exp);
	return tu_run(cmd, 1, out);
}

static void expect_line(const char *out, const char *line)
{
	ck_assert_msg(strstr(out, line), "no '%s' in:\n%s", line, out);
}

START_TEST(summary_all_passed)
{
	char *out;

	ck_assert_int_eq(results("noise\nok a\nok b\n# perf: 1.2 GB/s\nok c\n", "a\nb\nc\n", &out),
			 0);
	expect_line(out, "3 passed, 0 failed, 0 did not run (3 of 3 expected ran)");
	free(out);
}
END_TEST

START_TEST(summary_not_run_is_a_failure)
{
	char *out;

	/* "# ... not run" is neither a pass nor a result: the test did not run */
	ck_assert_int_eq(results("ok a\n# b not run: no input\nok c\n", "a\nb\nc\n", &out), 1);
	expect_line(out, "vm: b did not run");
	expect_line(out, "2 passed, 0 failed, 1 did not run (2 of 3 expected ran)");
	free(out);
	/* a guest that stopped half way: everything after it did not run */
	ck_assert_int_eq(results("ok a\n", "a\nb\nc\n", &out), 1);
	expect_line(out, "1 passed, 0 failed, 2 did not run (1 of 3 expected ran)");
	free(out);
	/* nothing ran at all */
	ck_assert_int_eq(results("", "a\n", &out), 1);
	expect_line(out, "0 passed, 0 failed, 1 did not run (0 of 1 expected ran)");
	free(out);
}
END_TEST

START_TEST(summary_failures)
{
	char *out;

	ck_assert_int_eq(results("ok a\nnot ok b: EINVAL expected\nok c\n", "a\nb\nc\n", &out),
			 1);
	expect_line(out, "2 passed, 1 failed, 0 did not run (3 of 3 expected ran)");
	free(out);
	/* a failure no list names (setup, the run's own verdicts) still fails the run */
	ck_assert_int_eq(results("not ok setup: no DRM device\nok a\n", "a\n", &out), 1);
	expect_line(out, "1 passed, 1 failed, 0 did not run (1 of 1 expected ran)");
	free(out);
	/* an "ok" after a "not ok" of the same test does not undo it */
	ck_assert_int_eq(results("not ok a: x\nok a\n", "a\n", &out), 1);
	expect_line(out, "0 passed, 1 failed");
	free(out);
}
END_TEST

START_TEST(summary_warnings)
{
	static const char *const make_notes =
		"make[2]: warning: jobserver unavailable: using -j1.  Add '+' to parent make "
		"rule.\n"
		"Skipping BTF generation for moe.ko due to unavailability of vmlinux\n"
		"  CC [M]  /build/kmod/moe_drv.o\n";
	char log[512], cmd[1024], *out;

	snprintf(log, sizeof(log), "%s/kmod.log", dir);
	snprintf(cmd, sizeof(cmd), "sh %s warnings %s", tu_src("tests/vm/summary.sh"), log);
	ck_assert_int_eq(tu_write_file(log, make_notes, strlen(make_notes)), 0);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_str_eq(out, "");
	free(out);
	for (const char *const *w = (const char *const[]){
		     "/build/kmod/moe_gem.c:41:7: warning: unused variable 'x'\n",
		     "WARNING: modpost: missing MODULE_LICENSE() in /build/kmod/moe.o\n",
		     "ld: warning: creating DT_TEXTREL in a PIE\n", NULL }; *w; w++) {
		char *both;

		ck_assert_int_ge(asprintf(&both, "%s%s", make_notes, *w), 0);
		ck_assert_int_eq(tu_write_file(log, both, strlen(both)), 0);
		free(both);
		ck_assert_int_eq(tu_run(cmd, 1, &out), 0);
		ck_assert_str_eq(out, *w);
		free(out);
	}
}
END_TEST

/* Each name tests/vm/init.tests expects is one the guest's scripts report. */
START_TEST(init_tests_listed)
{
	char *list = tu_read_file(tu_src("tests/vm/init.tests"), NULL), *save = NULL, *name;
	char *init = tu_read_file(tu_src("tests/vm/init.sh"), NULL);
	char *vmio = tu_read_file(tu_src("tests/vm/moe-vmio.c"), NULL);
	int n = 0;

	ck_assert(list && init && vmio);
	for (name = strtok_r(list, "\n", &save); name; name = strtok_r(NULL, "\n", &save)) {
		char a[128], b[128], c[128];

		if (name[0] == '#')
			continue;
		snprintf(a, sizeof(a), "check %s ", name);
		snprintf(b, sizeof(b), "check_fail %s ", name);
		snprintf(c, sizeof(c), "ok %s", name);
		ck_assert_msg(strstr(init, a) || strstr(init, b) || strstr(init, c) ||
			      strstr(vmio, c), "tests/vm/init.tests names '%s', which no script "
			      "reports", name);
		n++;
	}
	ck_assert_int_gt(n, 0);
	free(list);
	free(init);
	free(vmio);
}
END_TEST

Suite *suite_vm_scripts(void)
{
	Suite *s = suite_create("vm_scripts");
	TCase *tc = tcase_create("summary");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, summary_all_passed);
	tcase_add_test(tc, summary_not_run_is_a_failure);
	tcase_add_test(tc, summary_failures);
	tcase_add_test(tc, summary_warnings);
	tcase_add_test(tc, init_tests_listed);
	suite_add_tcase(s, tc);
	return s;
}
