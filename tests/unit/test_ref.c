// SPDX-License-Identifier: MIT
/*
 * The float64 reference forward pass against llama.cpp's own logits, router
 * logits, expert choices and greedy continuations for three tiny F32 models
 * (shared/reference/llamacpp-logits, see its README).  If these disagree,
 * the reference data is right.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "ref_forward.h"
#include "testutil.h"

#define DIR "reference/llamacpp-logits/"
#define N_PROMPT 64
#define N_GREEDY 32

static const char *const models[] = { "qwen3moe", "llama4", "gptoss" };

/* Whitespace-separated integers of a text file; returns the count. */
static int read_ints(const char *path, int32_t *out, int max)
{
	size_t len;
	char *txt = tu_read_file(path, &len), *p, *end;
	int n = 0;

	ck_assert_msg(txt != NULL, "cannot read %s", path);
	for (p = txt; n < max; p = end) {
		long v = strtol(p, &end, 10);

		if (end == p)
			break;
		out[n++] = (int32_t)v;
	}
	free(txt);
	return n;
}

static void *read_ref(const char *model, const char *ext, size_t want)
{
	char rel[128];
	const char *path;
	size_t len;
	void *d;

	snprintf(rel, sizeof(rel), DIR "%s-f32.%s", model, ext);
	path = tu_shared(rel);
	ck_assert_msg(path != NULL, "missing %s", rel);
	d = tu_read_file(path, &len);
	ck_assert_msg(d && len == want, "%s: %zu bytes, expected %zu", rel, len, want);
	return d;
}

static const char *model_path(const char *model)
{
	char rel[128];

	snprintf(rel, sizeof(rel), DIR "%s-f32.gguf", model);
	return tu_shared(rel);
}

static void prompt(int32_t *tok)
{
	ck_assert_int_eq(read_ints(tu_shared(DIR "tokens.txt"), tok, N_PROMPT), N_PROMPT);
}

START_TEST(ref_prompt_matches_llamacpp)
{
	const char *model = models[_i], *path = model_path(model);
	struct ref_info info;
	int32_t tok[N_PROMPT], *topk;
	double *logits, *router, worst_l = 0, worst_r = 0;
	float *want_l, *want_r;
	int32_t *want_k;
	int L, V, X, K;

	ck_assert_ptr_nonnull(path);
	ck_assert_msg(ref_model_info(path, &info) == 0, "%s: %s", model, moe_errmsg());
	L = info.n_layer;
	V = info.n_vocab;
	X = info.n_expert;
	K = info.n_expert_used;
	ck_assert_int_eq(L, 4);
	ck_assert_int_eq(V, 512);
	ck_assert_int_eq(X, 8);
	prompt(tok);
	want_l = read_ref(model, "logits.f32", sizeof(float) * N_PROMPT * V);
	want_r = read_ref(model, "router.f32", sizeof(float) * L * N_PROMPT * X);
	want_k = read_ref(model, "topk.i32", sizeof(int32_t) * L * N_PROMPT * K);
	logits = calloc((size_t)N_PROMPT * V, sizeof(double));
	router = calloc((size_t)L * N_PROMPT * X, sizeof(double));
	topk = calloc((size_t)L * N_PROMPT * K, sizeof(int32_t));
	ck_assert(logits && router && topk);

	ck_assert_msg(ref_forward(path, tok, N_PROMPT, NULL, logits, topk, router) == 0, "%s: %s",
		      model, moe_errmsg());
	for (int i = 0; i < N_PROMPT * V; i++)
		worst_l = fmax(worst_l, fabs(logits[i] - want_l[i]));
	for (int i = 0; i < L * N_PROMPT * X; i++)
		worst_r = fmax(worst_r, fabs(router[i] - want_r[i]));
	for (int i = 0; i < L * N_PROMPT * K; i++)
		ck_assert_msg(topk[i] == want_k[i], "%s: layer %d pos %d slot %d: expert %d, "
			      "llama.cpp chose %d", model, i / (N_PROMPT * K), i / K % N_PROMPT,
			      i % K, topk[i], want_k[i]);
	if (getenv("MOE_TEST_VERBOSE"))
		printf("ref %s: max |logit diff| %.3g, max |router diff| %.3g\n", model, worst_l,
		       worst_r);
	ck_assert_msg(worst_l < 1e-4, "%s: logits differ by %g", model, worst_l);
	ck_assert_msg(worst_r < 1e-4, "%s: router logits differ by %g", model, worst_r);
	free(want_l);
	free(want_r);
	free(want_k);
	free(logits);
	free(router);
	free(topk);
}
END_TEST

START_TEST(ref_greedy_matches_llamacpp)
{
	const char *model = models[_i], *path = model_path(model);
	char rel[128];
	int32_t tok[N_PROMPT + N_GREEDY], want[N_GREEDY];
	struct ref_info info;
	double *logits;

	ck_assert_ptr_nonnull(path);
	ck_assert_int_eq(ref_model_info(path, &info), 0);
	snprintf(rel, sizeof(rel), DIR "%s-f32.greedy.txt", model);
	ck_assert_int_eq(read_ints(tu_shared(rel), want, N_GREEDY), N_GREEDY);
	prompt(tok);
	logits = calloc((size_t)(N_PROMPT + N_GREEDY) * info.n_vocab, sizeof(double));
	ck_assert_ptr_nonnull(logits);
	for (int g = 0; g < N_GREEDY; g++) {
		int n = N_PROMPT + g, best = 0;
		const double *last = logits + (size_t)(n - 1) * info.n_vocab;

		ck_assert_msg(ref_forward(path, tok, n, NULL, logits, NULL, NULL) == 0, "%s: %s",
			      model, moe_errmsg());
		for (int v = 1; v < info.n_vocab; v++)
			if (last[v] > last[best])
				best = v;
		ck_assert_msg(best == want[g], "%s: greedy token %d is %d, llama.cpp gave %d",
			      model, g, best, want[g]);
		tok[n] = best;
	}
	free(logits);
}
END_TEST

/* The llama4 chunk is a parameter: a chunk of 16 must change the RoPE layers' attention. */
START_TEST(ref_llama4_chunk_option)
{
	const char *path = model_path("llama4");
	struct ref_opts o = { .llama4_chunk = 16 };
	int32_t tok[N_PROMPT];
	double *a, *b, diff16 = 0, diff_after = 0;

	ck_assert_ptr_nonnull(path);
	prompt(tok);
	a = calloc((size_t)N_PROMPT * 512, sizeof(double));
	b = calloc((size_t)N_PROMPT * 512, sizeof(double));
	ck_assert(a && b);
	ck_assert_int_eq(ref_forward(path, tok, N_PROMPT, NULL, a, NULL, NULL), 0);
	ck_assert_int_eq(ref_forward(path, tok, N_PROMPT, &o, b, NULL, NULL), 0);
	/* the first chunk sees the same keys either way; later chunks do not */
	for (int i = 0; i < 16 * 512; i++)
		diff16 = fmax(diff16, fabs(a[i] - b[i]));
	for (int i = 16 * 512; i < N_PROMPT * 512; i++)
		diff_after = fmax(diff_after, fabs(a[i] - b[i]));
	ck_assert_msg(diff16 == 0, "first chunk changed by %g", diff16);
	ck_assert_msg(diff_after > 1e-3, "chunking changed nothing (%g)", diff_after);
	free(a);
	free(b);
}
END_TEST

START_TEST(ref_bad_input)
{
	const char *path = model_path("qwen3moe");
	int32_t tok[2] = { 1, 512 };
	double logits[2 * 512];

	ck_assert_ptr_nonnull(path);
	ck_assert_int_lt(ref_forward("/nonexistent/model.gguf", tok, 1, NULL, logits, NULL, NULL),
			 0);
	ck_assert_str_ne(moe_errmsg(), "");
	ck_assert_int_eq(ref_forward(path, tok, 2, NULL, logits, NULL, NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "outside the vocabulary"));
	ck_assert_int_eq(ref_forward(path, tok, 0, NULL, logits, NULL, NULL), -EINVAL);
	ck_assert_int_eq(ref_forward(path, NULL, 1, NULL, logits, NULL, NULL), -EINVAL);
}
END_TEST

Suite *suite_ref(void)
{
	Suite *s = suite_create("ref");
	TCase *tc = tcase_create("llamacpp");
	int n = (int)(sizeof(models) / sizeof(models[0]));

	/* the greedy runs re-run the whole sequence 32 times per model */
	tcase_set_timeout(tc, 300);
	if (!tu_shared(DIR "README.md")) {
		tu_skip("ref_prompt_matches_llamacpp", "no " DIR " in the shared tree");
		tu_skip("ref_greedy_matches_llamacpp", "no " DIR " in the shared tree");
		tu_skip("ref_llama4_chunk_option", "no " DIR " in the shared tree");
		tu_skip("ref_bad_input", "no " DIR " in the shared tree");
	} else {
		tcase_add_loop_test(tc, ref_prompt_matches_llamacpp, 0, n);
		tcase_add_loop_test(tc, ref_greedy_matches_llamacpp, 0, n);
		tcase_add_test(tc, ref_llama4_chunk_option);
		tcase_add_test(tc, ref_bad_input);
	}
	suite_add_tcase(s, tc);
	return s;
}
