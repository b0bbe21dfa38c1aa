/* SPDX-License-Identifier: MIT */
/*
 * libmoe as a platform team adopts it: the exported symbols agree with the
 * public headers and the version script (tests/platform/abi.sh, also fed a
 * script and a header that disagree, which it must name); make install into
 * a temporary DESTDIR, a program built with pkg-config against the installed
 * tree, make uninstall leaving nothing (tests/platform/install.sh); moe.h
 * compiled as pedantic C++ (the program make builds from
 * tests/platform/cxx_header.cc) runs.
 */
#include <limits.h>
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

static const char *build_dir(void)
{
	const char *b = getenv("MOE_BUILD");

	return b && *b ? b : "build";
}

static int abi(const char *map, const char *extra_header, char **out)
{
	char cmd[4 * PATH_MAX];

	snprintf(cmd, sizeof(cmd), "sh %s %s/lib/libmoe.so.0 %s %s %s",
		 tu_src("tests/platform/abi.sh"), build_dir(), map, tu_src("include/moe/moe.h"),
		 extra_header ? extra_header : "");
	return tu_run(cmd, 1, out);
}

static void expect_line(const char *out, const char *line)
{
	ck_assert_msg(strstr(out, line), "no '%s' in:\n%s", line, out);
}

START_TEST(abi_symbols_agree)
{
	char *out;
	int st = abi(tu_src("libmoe/libmoe.map"), NULL, &out);

	ck_assert_msg(st == 0, "tests/platform/abi.sh found differences:\n%s", out);
	expect_line(out, "symbols agree");
	free(out);
}
END_TEST

/*
 * A script missing moe_errmsg and listing moe_nothing, and a header
 * declaring moe_undeclared: each named, with its fix.
 */
START_TEST(abi_names_each_difference)
{
	char map[PATH_MAX], hdr[PATH_MAX], cmd[3 * PATH_MAX], *out;
	static const char extra[] = "MOE_API int moe_undeclared(void);\n";

	snprintf(map, sizeof(map), "%s/bad.map", dir);
	snprintf(hdr, sizeof(hdr), "%s/extra.h", dir);
	snprintf(cmd, sizeof(cmd), "sed -e '/^\t\tmoe_errmsg;$/d' "
		 "-e 's/^\t\tmoe_backend_list;$/&\\n\t\tmoe_nothing;/' %s > %s",
		 tu_src("libmoe/libmoe.map"), map);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	ck_assert_int_eq(tu_write_file(hdr, extra, strlen(extra)), 0);
	ck_assert_int_eq(abi(map, hdr, &out), 1);
	expect_line(out, "abi: moe_errmsg: declared MOE_API but not in");
	expect_line(out, "abi: moe_errmsg: exported by");
	expect_line(out, "abi: moe_nothing: in");
	expect_line(out, "abi: moe_nothing: in ");
	expect_line(out, "abi: moe_undeclared: declared MOE_API but not in");
	ck_assert_msg(!strstr(out, "moe_model_open:"), "a symbol that agrees is named:\n%s", out);
	free(out);
}
END_TEST

START_TEST(install_use_uninstall)
{
	char cmd[3 * PATH_MAX], *out;
	const char *cc = getenv("MOE_CC"), *mk = getenv("MOE_MAKE"), *san = getenv("MOE_SAN_LDFLAGS");
	int st;

	snprintf(cmd, sizeof(cmd), "CC='%s' MAKE='%s' SAN_LDFLAGS='%s' TMPDIR='%s' sh %s %s %s",
		 cc && *cc ? cc : "cc", mk && *mk ? mk : "make", san ? san : "", dir,
		 tu_src("tests/platform/install.sh"), tu_src("."), build_dir());
	st = tu_run(cmd, 1, &out);
	ck_assert_msg(st == 0, "tests/platform/install.sh failed (%d):\n%s", st, out);
	free(out);
}
END_TEST

START_TEST(cxx_header_program_runs)
{
	char cmd[PATH_MAX + 16], *out;
	int st;

	snprintf(cmd, sizeof(cmd), "%s/tests/cxx-header", build_dir());
	st = tu_run(cmd, 1, &out);
	ck_assert_msg(st == 0, "%s (built from tests/platform/cxx_header.cc) failed (%d):\n%s",
		      cmd, st, out);
	expect_line(out, "c++ ok: cpu");
	free(out);
}
END_TEST

Suite *suite_platform(void)
{
	Suite *s = suite_create("platform");
	TCase *tc = tcase_create("platform");

	tcase_set_timeout(tc, 300);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, abi_symbols_agree);
	tcase_add_test(tc, abi_names_each_difference);
	tcase_add_test(tc, install_use_uninstall);
	tcase_add_test(tc, cxx_header_program_runs);
	suite_add_tcase(s, tc);
	return s;
}
