/* SPDX-License-Identifier: MIT */
/*
 * libmoe as a platform team adopts it: the exported symbols agree with the
 * public headers and the version script (tests/platform/abi.sh, also fed a
 * script and a header that disagree, which it must name); the tools link
 * the shared library (readelf, ldd, a relocated copy); make install into
 * a temporary DESTDIR, a program built with pkg-config against the installed
 * tree, make uninstall leaving nothing (tests/platform/install.sh); moe.h
 * compiled as pedantic C++ (the program make builds from
 * tests/platform/cxx_header.cc) runs; the three programs of examples/ run
 * on a generated model and do what they say.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

	snprintf(cmd, sizeof(cmd), "sh %s %s/lib/libmoe.so.1 %s %s %s",
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

/*
 * The tools link the shared library: each but the two that need internals
 * (Documentation/api.rst) NEEDs libmoe.so.1 and finds it through the run
 * path $ORIGIN/../lib, so a copy of bin/ and lib/ elsewhere runs too; the
 * two static ones need no libmoe at all.
 */
START_TEST(tools_link_shared_library)
{
	static const char *const shared[] = { "moe-run", "moe-server" };
	static const char *const statics[] = { "moe-mkmodel", "moe-bench", "moectl" };
	char cmd[4 * PATH_MAX], *out;

	for (size_t i = 0; i < sizeof(shared) / sizeof(shared[0]); i++) {
		snprintf(cmd, sizeof(cmd), "readelf -d %s", tu_bin(shared[i]));
		ck_assert_int_eq(tu_run(cmd, 1, &out), 0);
		ck_assert_msg(strstr(out, "(NEEDED)") && strstr(out, "[libmoe.so.1]"),
			      "%s does not link libmoe.so.1:\n%s", shared[i], out);
		ck_assert_msg(strstr(out, "[$ORIGIN/../lib]"), "%s has no run path "
			      "$ORIGIN/../lib:\n%s", shared[i], out);
		free(out);
		/* what the dynamic linker resolves: this build's library */
		snprintf(cmd, sizeof(cmd), "ldd %s", tu_bin(shared[i]));
		ck_assert_int_eq(tu_run(cmd, 1, &out), 0);
		ck_assert_msg(strstr(out, "libmoe.so.1 => ") && strstr(out, "/lib/libmoe.so.1"),
			      "%s:\n%s", shared[i], out);
		free(out);
	}
	for (size_t i = 0; i < sizeof(statics) / sizeof(statics[0]); i++) {
		snprintf(cmd, sizeof(cmd), "readelf -d %s", tu_bin(statics[i]));
		ck_assert_int_eq(tu_run(cmd, 1, &out), 0);
		ck_assert_msg(!strstr(out, "libmoe"), "%s links libmoe dynamically:\n%s",
			      statics[i], out);
		free(out);
	}
	/* relocated: bin/moe-run beside lib/libmoe.so.1 */
	snprintf(cmd, sizeof(cmd), "mkdir -p %s/r/bin %s/r/lib && cp %s %s/r/bin/ && "
		 "cp -L %s/lib/libmoe.so.1 %s/r/lib/ && env -u LD_LIBRARY_PATH %s/r/bin/moe-run --help",
		 dir, dir, tu_bin("moe-run"), dir, build_dir(), dir, dir);
	ck_assert_msg(tu_run(cmd, 1, &out) == 0, "%s:\n%s", cmd, out);
	expect_line(out, "usage: moe-run");
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

/* An example program of $(BUILD)/examples on a generated model; its exit status. */
static int example(const char *args, char **out)
{
	char cmd[3 * PATH_MAX], model[PATH_MAX];

	snprintf(model, sizeof(model), "%s/m.gguf", dir);
	if (access(model, F_OK) != 0) {
		snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --layers 2 --embd 64 --heads 2 "
			 "--kv-heads 1 --head-dim 32 --experts 4 --expert-ff 64 --vocab-bpe -q "
			 "-o %s", tu_bin("moe-mkmodel"), model);
		ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	}
	/* NAME ARGS... runs as NAME MODEL ARGS... */
	{
		char name[64], rest[PATH_MAX];
		const char *sp = strchr(args, ' ');

		snprintf(name, sizeof(name), "%.*s", (int)(sp ? sp - args : (long)strlen(args)),
			 args);
		snprintf(rest, sizeof(rest), "%s", sp ? sp + 1 : "");
		snprintf(cmd, sizeof(cmd), "%s/examples/%s %s %s", build_dir(), name, model, rest);
	}
	return tu_run(cmd, 1, out);
}

START_TEST(example_inspect)
{
	char *out;

	ck_assert_int_eq(example("inspect", &out), 0);
	expect_line(out, "qwen3moe, 2 layers (2 MoE), 4 experts, 2 used per token");
	expect_line(out, "layer 1: ");
	expect_line(out, "general.architecture = \"qwen3moe\"");
	free(out);
}
END_TEST

START_TEST(example_stream_experts)
{
	char *out;

	/* 2 layers x 4 experts x gate, up, down */
	ck_assert_int_eq(example("stream-experts", &out), 0);
	expect_line(out, "read 24 expert matrices, 393216 bytes");
	expect_line(out, "0 differ from pread");
	free(out);
}
END_TEST

/* Per-layer "router picked a b c d; ran e f g h" lines into counts. */
static int routing(const char *out, uint32_t layer, unsigned picked[4], unsigned ran[4])
{
	char key[32];
	const char *p;

	snprintf(key, sizeof(key), "layer %u: router picked", layer);
	p = strstr(out, key);
	if (!p)
		return -1;
	return sscanf(p + strlen(key), " %u %u %u %u; ran %u %u %u %u", &picked[0], &picked[1],
		      &picked[2], &picked[3], &ran[0], &ran[1], &ran[2], &ran[3]) == 8 ? 0 : -1;
}

START_TEST(example_generate_observes_and_overrides)
{
	unsigned picked[4], ran[4], total;
	char *out;

	/* observing: what ran is what the router picked, two per token and layer */
	ck_assert_int_eq(example("generate 'hello world' 6", &out), 0);
	expect_line(out, "generated 6 tokens after a prompt of");
	for (uint32_t l = 0; l < 2; l++) {
		ck_assert_msg(routing(out, l, picked, ran) == 0, "no routing of layer %u:\n%s", l,
			      out);
		total = 0;
		for (int e = 0; e < 4; e++) {
			ck_assert_uint_eq(picked[e], ran[e]);
			total += picked[e];
		}
		ck_assert_uint_gt(total, 0);
		ck_assert_uint_eq(total % 2, 0);
	}
	free(out);

	/* overriding: every choice rewritten to expert 2 is the only one that ran */
	ck_assert_int_eq(example("generate 'hello world' 6 2", &out), 0);
	for (uint32_t l = 0; l < 2; l++) {
		ck_assert_msg(routing(out, l, picked, ran) == 0, "no routing of layer %u:\n%s", l,
			      out);
		ck_assert_msg(ran[0] == 0 && ran[1] == 0 && ran[3] == 0 && ran[2] > 0,
			      "layer %u ran experts other than 2:\n%s", l, out);
		ck_assert_uint_eq(ran[2], picked[0] + picked[1] + picked[2] + picked[3]);
	}
	free(out);

	/* an expert the layer does not have: the eval fails, naming it */
	ck_assert_int_eq(example("generate 'hello world' 6 9", &out), 1);
	expect_line(out, "the routing hook chose expert 9 for token 0 (the layer has experts 0..3)");
	free(out);
}
END_TEST

/*
 * The example's prefetch hook (the next layer uses this layer's experts)
 * over a budget of the smallest plan and two expert slots more: it asks,
 * the engine fetches what it asked ahead and the layers use some of them.
 */
START_TEST(example_generate_prefetch_hook)
{
	unsigned long long need = 0, asked, fetched, used, misses;
	unsigned slots;
	char args[128], *out;
	const char *at;

	ck_assert_int_eq(example("generate 'hello world' 12 - 1", &out), 1);
	at = strstr(out, "it needs at least");
	ck_assert_msg(at && (at = strchr(at, '(')) && sscanf(at, "(%llu bytes)", &need) == 1,
		      "%s", out);
	free(out);
	/* an f32 expert of the example model: gate, up and down of 64 x 64 */
	snprintf(args, sizeof(args), "generate 'hello world' 12 - %llu", need + 2 * 3 * 64 * 64 * 4);
	ck_assert_int_eq(example(args, &out), 0);
	at = strstr(out, "prefetch hook: ");
	ck_assert_msg(at && sscanf(at, "prefetch hook: asked %llu, fetched ahead %llu, used %llu; "
				   "demand misses %llu, %u slots", &asked, &fetched, &used, &misses,
				   &slots) == 5, "%s", out);
	ck_assert_uint_eq(slots, 4);
	ck_assert_uint_gt(asked, 0);
	ck_assert_msg(fetched > 0 && fetched <= asked && used > 0 && used <= fetched, "%s", out);
	free(out);
	ck_assert_int_eq(example("generate 'hello world' 12 - 1Q", &out), 2);
	expect_line(out, "generate: VRAM '1Q'");
	free(out);
}
END_TEST

/*
 * One errno for "not supported": -EOPNOTSUPP, the driver's (the same value
 * as ENOTSUP on Linux, but one spelling in code and documentation).
 */
START_TEST(one_not_supported_errno)
{
	char cmd[4 * PATH_MAX], *out;

	/* api.rst is where the convention names both */
	snprintf(cmd, sizeof(cmd), "grep -rnw --exclude=api.rst ENOTSUP %s %s %s %s",
		 tu_src("libmoe"), tu_src("include"), tu_src("tools"), tu_src("Documentation"));
	ck_assert_msg(tu_run(cmd, 1, &out) == 1, "ENOTSUP instead of EOPNOTSUPP:\n%s", out);
	free(out);
}
END_TEST

/*
 * Four contexts on one model, each on its own thread, under ThreadSanitizer
 * (tests/platform/threads.c, built with the library instrumented): a data
 * race exits 66, different logits 1.
 */
START_TEST(contexts_share_a_model_under_tsan)
{
	char cmd[3 * PATH_MAX], model[PATH_MAX], *out;
	int st;

	snprintf(model, sizeof(model), "%s/m.gguf", dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --layers 2 --embd 64 --heads 2 "
		 "--kv-heads 1 --head-dim 32 --experts 8 --expert-ff 64 -q -o %s",
		 tu_bin("moe-mkmodel"), model);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	snprintf(cmd, sizeof(cmd), "TSAN_OPTIONS='halt_on_error=1 exitcode=66' "
		 "%s/tests/threads-tsan %s 4", build_dir(), model);
	st = tu_run(cmd, 1, &out);
	ck_assert_msg(st == 0, "%s: status %d:\n%s", cmd, st, out);
	expect_line(out, "4 contexts on one model agree with one alone, sharing its resident weights");
	free(out);
}
END_TEST

Suite *suite_platform(void)
{
	Suite *s = suite_create("platform");
	TCase *tc = tcase_create("platform");
	char tsan[PATH_MAX];

	tcase_set_timeout(tc, 300);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, abi_symbols_agree);
	tcase_add_test(tc, abi_names_each_difference);
	tcase_add_test(tc, tools_link_shared_library);
	tcase_add_test(tc, install_use_uninstall);
	tcase_add_test(tc, cxx_header_program_runs);
	tcase_add_test(tc, one_not_supported_errno);
	snprintf(tsan, sizeof(tsan), "%s/tests/threads-tsan", build_dir());
	if (access(tsan, X_OK) == 0)
		tcase_add_test(tc, contexts_share_a_model_under_tsan);
	else
		tu_skip("platform/contexts_share_a_model_under_tsan",
			"no ThreadSanitizer build of tests/platform/threads.c (make check builds it "
			"unless TSAN=0)");
	tcase_add_test(tc, example_inspect);
	tcase_add_test(tc, example_stream_experts);
	tcase_add_test(tc, example_generate_observes_and_overrides);
	tcase_add_test(tc, example_generate_prefetch_hook);
	suite_add_tcase(s, tc);
	return s;
}
