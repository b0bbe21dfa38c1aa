// SPDX-License-Identifier: MIT
/*
 * The float64 reference forward pass against llama.cpp's own logits, router
 * logits, expert choices and greedy continuations for three tiny F32 models
 * (shared/reference/llamacpp-logits, see its README).  If these disagree,
 * the reference data is right.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe/moe.h"
#include "ref_forward.h"
#include "testutil.h"

#define DIR "reference/llamacpp-logits/"
#define N_PROMPT 64
#define N_GREEDY 32

static const char *const models[] = { "qwen3moe", "llama4", "gptoss" };

static const char *model_path(const char *model)
{
	char rel[128];

	snprintf(rel, sizeof(rel), DIR "%s-f32.gguf", model);
	return tu_shared(rel);
}

static void prompt(int32_t *tok)
{
	ck_assert_int_eq(tu_read_ints(tu_shared(DIR "tokens.txt"), tok, N_PROMPT), N_PROMPT);
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
	want_l = tu_read_llamacpp(model, "logits.f32", sizeof(float) * N_PROMPT * V);
	want_r = tu_read_llamacpp(model, "router.f32", sizeof(float) * L * N_PROMPT * X);
	want_k = tu_read_llamacpp(model, "topk.i32", sizeof(int32_t) * L * N_PROMPT * K);
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
	ck_assert_int_eq(tu_read_ints(tu_shared(rel), want, N_GREEDY), N_GREEDY);
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

/*
 * Layer 3 of the llama4 model is NoPE: with a temperature floor of 16, q is
 * scaled from position 15 on (by 1 + 0.1 ln 2 at positions 15..30), and
 * only there.
 */
START_TEST(ref_llama4_temperature_tuning)
{
	const char *path = model_path("llama4");
	struct ref_opts o = { .llama4_temp_floor = 16 };
	int32_t tok[N_PROMPT];
	double *a, *b, before = 0, after = 0;

	ck_assert_ptr_nonnull(path);
	prompt(tok);
	a = calloc((size_t)N_PROMPT * 512, sizeof(double));
	b = calloc((size_t)N_PROMPT * 512, sizeof(double));
	ck_assert(a && b);
	ck_assert_int_eq(ref_forward(path, tok, N_PROMPT, NULL, a, NULL, NULL), 0);
	ck_assert_int_eq(ref_forward(path, tok, N_PROMPT, &o, b, NULL, NULL), 0);
	for (int i = 0; i < 15 * 512; i++)
		before = fmax(before, fabs(a[i] - b[i]));
	for (int i = 15 * 512; i < 16 * 512; i++)
		after = fmax(after, fabs(a[i] - b[i]));
	ck_assert_msg(before == 0, "positions below 15 changed by %g", before);
	ck_assert_msg(after > 1e-4, "position 15 unchanged (%g)", after);
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

/* ------------------------------------------------- models written here */

/*
 * Models the shared data does not cover (Mixtral-style llama, gemma4, and
 * quantized files) are written with libmoe's GGUF writer.  Their random
 * weights depend only on the tensor's name, so two variants of a model that
 * should compute the same thing hold the same numbers.
 */
struct mb {
	struct moe_gguf_writer *w;
	const char *arch;
};

static void mb_start(struct mb *b, const char *arch)
{
	b->arch = arch;
	ck_assert_int_eq(moe_gguf_writer_create(32, &b->w), 0);
	ck_assert_int_eq(moe_gguf_set_str(b->w, "general.architecture", arch), 0);
	ck_assert_int_eq(moe_gguf_set_str(b->w, "tokenizer.ggml.model", "none"), 0);
}

static void mb_u32(struct mb *b, const char *suffix, uint32_t v)
{
	char key[128];

	snprintf(key, sizeof(key), "%s.%s", b->arch, suffix);
	ck_assert_int_eq(moe_gguf_set_u32(b->w, key, v), 0);
}

static void mb_f32(struct mb *b, const char *suffix, float v)
{
	char key[128];

	snprintf(key, sizeof(key), "%s.%s", b->arch, suffix);
	ck_assert_int_eq(moe_gguf_set_f32(b->w, key, v), 0);
}

static void mb_arr(struct mb *b, const char *suffix, uint32_t type, const void *v, int n)
{
	char key[128];

	snprintf(key, sizeof(key), "%s.%s", b->arch, suffix);
	ck_assert_int_eq(moe_gguf_set_arr(b->w, key, type, v, (uint64_t)n), 0);
}

/* Random normal values scaled by 1/sqrt(ne0), seeded by @seed_name. */
static float *rnd(const char *seed_name, uint64_t ne0, uint64_t n)
{
	uint64_t st = 1469598103934665603ull;
	float *v = malloc(sizeof(float) * n);

	ck_assert_ptr_nonnull(v);
	for (const char *c = seed_name; *c; c++)
		st = (st ^ (uint8_t)*c) * 1099511628211ull;
	for (uint64_t i = 0; i < n; i++)
		v[i] = (float)(tu_randn(&st) / sqrt((double)ne0));
	return v;
}

static void mb_put(struct mb *b, const char *name, uint32_t n_dims, uint64_t ne0, uint64_t ne1,
		   uint64_t ne2, const float *data)
{
	uint64_t ne[4] = { ne0, ne1, ne2, 1 };

	ck_assert_msg(moe_gguf_add_tensor(b->w, name, MOE_TYPE_F32, n_dims, ne, data) == 0,
		      "%s: %s", name, moe_errmsg());
}

/* A random tensor named @name (seeded by @seed, NULL = the name itself). */
static void mb_rand(struct mb *b, const char *name, const char *seed, uint32_t n_dims,
		    uint64_t ne0, uint64_t ne1, uint64_t ne2)
{
	float *v = rnd(seed ? seed : name, ne0, ne0 * ne1 * ne2);

	mb_put(b, name, n_dims, ne0, ne1, ne2, v);
	free(v);
}

/* A norm weight: 1 + small noise, so that a weight applied twice or not at all shows. */
static void mb_norm(struct mb *b, const char *name, uint64_t n)
{
	float *v = rnd(name, 16, n);

	for (uint64_t i = 0; i < n; i++)
		v[i] += 1.0f;
	mb_put(b, name, 1, n, 1, 1, v);
	free(v);
}

static char *mb_finish(struct mb *b, const char *dir, const char *file)
{
	char *path = malloc(strlen(dir) + strlen(file) + 2);

	ck_assert_ptr_nonnull(path);
	sprintf(path, "%s/%s", dir, file);
	ck_assert_msg(moe_gguf_write(b->w, path) == 0, "%s: %s", path, moe_errmsg());
	moe_gguf_writer_destroy(b->w);
	return path;
}

static const char *blk(int il, const char *name)
{
	static char buf[4][96];
	static int next;
	char *o = buf[next++ % 4];

	snprintf(o, sizeof(buf[0]), "blk.%d.%s", il, name);
	return o;
}

enum gemma_variant { G_FUSED, G_SPLIT, G_EXPLICIT_V, G_ALL_SWA1 };

#define G_E 128
#define G_VOCAB 256
#define G_X 4
#define G_FF 64
#define G_FFX 16

/*
 * A two-layer gemma4 MoE model: layer 0 sliding (head dim 32, 2 KV heads),
 * layer 1 full (head dim 64, 1 KV head, V = K unless G_EXPLICIT_V), fused
 * gate_up experts unless G_SPLIT.  G_ALL_SWA1 makes both layers sliding
 * with a window of 1.
 */
static char *write_gemma4(const char *dir, const char *file, enum gemma_variant var)
{
	const int n_head = 4, hd_swa = 32, hd_full = 64;
	const uint32_t kv[2] = { 2, 1 };
	const uint8_t pattern[2] = { 1, var == G_ALL_SWA1 };
	float freqs[32];
	struct mb b;

	mb_start(&b, "gemma4");
	mb_u32(&b, "context_length", 512);
	mb_u32(&b, "embedding_length", G_E);
	mb_u32(&b, "block_count", 2);
	mb_u32(&b, "vocab_size", G_VOCAB);
	mb_u32(&b, "attention.head_count", n_head);
	mb_arr(&b, "attention.head_count_kv", MOE_META_U32, kv, 2);
	mb_u32(&b, "attention.key_length", hd_full);
	mb_u32(&b, "attention.value_length", hd_full);
	mb_u32(&b, "attention.key_length_swa", hd_swa);
	mb_u32(&b, "attention.value_length_swa", hd_swa);
	mb_u32(&b, "rope.dimension_count", hd_full);
	mb_u32(&b, "rope.dimension_count_swa", hd_swa);
	mb_f32(&b, "rope.freq_base", 1e6f);
	mb_f32(&b, "rope.freq_base_swa", 1e4f);
	mb_u32(&b, "attention.sliding_window", var == G_ALL_SWA1 ? 1 : 8);
	mb_arr(&b, "attention.sliding_window_pattern", MOE_META_BOOL, pattern, 2);
	mb_f32(&b, "attention.layer_norm_rms_epsilon", 1e-6f);
	mb_u32(&b, "embedding_length_per_layer_input", 0);
	mb_u32(&b, "feed_forward_length", G_FF);
	mb_u32(&b, "expert_count", G_X);
	mb_u32(&b, "expert_used_count", 2);
	mb_u32(&b, "expert_feed_forward_length", G_FFX);
	/* the big embedding values of gemma are scaled down here by sqrt(n_embd) */
	mb_rand(&b, "token_embd.weight", NULL, 2, G_E, G_VOCAB, 1);
	mb_norm(&b, "output_norm.weight", G_E);
	/* proportional RoPE: a quarter of the pairs rotate */
	for (int i = 0; i < 32; i++)
		freqs[i] = i < 8 ? 1.0f : 1e30f;
	mb_put(&b, "rope_freqs.weight", 1, 32, 1, 1, freqs);
	for (int il = 0; il < 2; il++) {
		int hd = pattern[il] ? hd_swa : hd_full;
		float los = 0.5f + 0.25f * il, dscale[G_X];

		mb_norm(&b, blk(il, "attn_norm.weight"), G_E);
		mb_rand(&b, blk(il, "attn_q.weight"), NULL, 2, G_E, hd * n_head, 1);
		mb_rand(&b, blk(il, "attn_k.weight"), NULL, 2, G_E, hd * kv[il], 1);
		if (il == 0)
			mb_rand(&b, blk(il, "attn_v.weight"), NULL, 2, G_E, hd * kv[il], 1);
		else if (var == G_EXPLICIT_V)
			mb_rand(&b, blk(il, "attn_v.weight"), blk(il, "attn_k.weight"), 2, G_E,
				hd * kv[il], 1);
		mb_rand(&b, blk(il, "attn_output.weight"), NULL, 2, hd * n_head, G_E, 1);
		mb_norm(&b, blk(il, "attn_q_norm.weight"), hd);
		mb_norm(&b, blk(il, "attn_k_norm.weight"), hd);
		mb_norm(&b, blk(il, "post_attention_norm.weight"), G_E);
		mb_put(&b, blk(il, "layer_output_scale.weight"), 1, 1, 1, 1, &los);
		mb_norm(&b, blk(il, "ffn_norm.weight"), G_E);
		mb_rand(&b, blk(il, "ffn_gate.weight"), NULL, 2, G_E, G_FF, 1);
		mb_rand(&b, blk(il, "ffn_up.weight"), NULL, 2, G_E, G_FF, 1);
		mb_rand(&b, blk(il, "ffn_down.weight"), NULL, 2, G_FF, G_E, 1);
		mb_norm(&b, blk(il, "post_ffw_norm.weight"), G_E);
		mb_rand(&b, blk(il, "ffn_gate_inp.weight"), NULL, 2, G_E, G_X, 1);
		mb_norm(&b, blk(il, "ffn_gate_inp.scale"), G_E);
		mb_norm(&b, blk(il, "pre_ffw_norm_2.weight"), G_E);
		mb_norm(&b, blk(il, "post_ffw_norm_1.weight"), G_E);
		mb_norm(&b, blk(il, "post_ffw_norm_2.weight"), G_E);
		if (var == G_SPLIT) {
			mb_rand(&b, blk(il, "ffn_gate_exps.weight"), NULL, 3, G_E, G_FFX, G_X);
			mb_rand(&b, blk(il, "ffn_up_exps.weight"), NULL, 3, G_E, G_FFX, G_X);
		} else {
			float *g = rnd(blk(il, "ffn_gate_exps.weight"), G_E, G_E * G_FFX * G_X);
			float *u = rnd(blk(il, "ffn_up_exps.weight"), G_E, G_E * G_FFX * G_X);
			float *gu = malloc(sizeof(float) * 2 * G_E * G_FFX * G_X);
			size_t ex = (size_t)G_E * G_FFX;

			ck_assert_ptr_nonnull(gu);
			/* per expert: the gate rows, then the up rows */
			for (int e = 0; e < G_X; e++) {
				memcpy(gu + 2 * ex * e, g + ex * e, ex * sizeof(float));
				memcpy(gu + 2 * ex * e + ex, u + ex * e, ex * sizeof(float));
			}
			mb_put(&b, blk(il, "ffn_gate_up_exps.weight"), 3, G_E, 2 * G_FFX, G_X, gu);
			free(g);
			free(u);
			free(gu);
		}
		mb_rand(&b, blk(il, "ffn_down_exps.weight"), NULL, 3, G_FFX, G_E, G_X);
		for (int e = 0; e < G_X; e++)
			dscale[e] = 0.5f + 0.3f * e;
		mb_put(&b, blk(il, "ffn_down_exps.scale"), 1, G_X, 1, 1, dscale);
	}
	return mb_finish(&b, dir, file);
}

static double max_diff(const double *a, const double *b, size_t n)
{
	double d = 0;

	for (size_t i = 0; i < n; i++)
		d = fmax(d, fabs(a[i] - b[i]));
	return d;
}

static void run(const char *path, const int32_t *tok, int n, double *logits, int32_t *topk)
{
	ck_assert_msg(ref_forward(path, tok, n, NULL, logits, topk, NULL) == 0, "%s: %s", path,
		      moe_errmsg());
}

#define G_N 24

START_TEST(ref_gemma4_layouts_agree)
{
	char *dir = tu_tmpdir();
	char *fused = write_gemma4(dir, "fused.gguf", G_FUSED);
	char *split = write_gemma4(dir, "split.gguf", G_SPLIT);
	char *vexp = write_gemma4(dir, "v.gguf", G_EXPLICIT_V);
	static double a[G_N * G_VOCAB], b[G_N * G_VOCAB];
	int32_t tok[G_N], topk[2 * G_N * 2];
	uint64_t st = 5;
	struct ref_info info;
	double mx = 0;

	for (int i = 0; i < G_N; i++)
		tok[i] = (int32_t)(tu_rand(&st) % G_VOCAB);
	ck_assert_msg(ref_model_info(fused, &info) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(info.n_vocab, G_VOCAB);
	ck_assert_int_eq(info.n_expert_used, 2);
	run(fused, tok, G_N, a, topk);
	for (int i = 0; i < G_N * G_VOCAB; i++) {
		ck_assert(isfinite(a[i]));
		mx = fmax(mx, fabs(a[i]));
	}
	/* final softcapping defaults to 30 when the key is absent */
	ck_assert_msg(mx < 30.0 && mx > 0.1, "max |logit| %g", mx);
	for (int i = 0; i < 2 * G_N; i++) {
		ck_assert(topk[2 * i] >= 0 && topk[2 * i] < G_X);
		ck_assert(topk[2 * i + 1] >= 0 && topk[2 * i + 1] < G_X);
		ck_assert_int_ne(topk[2 * i], topk[2 * i + 1]);
	}
	/* ggml's fp16 GELU table moves logits a little (GEMMA4.md: up to ~3e-3) */
	{
		struct ref_opts o = { .gelu_f16 = true };
		double d;

		ck_assert_int_eq(ref_forward(fused, tok, G_N, &o, b, NULL, NULL), 0);
		d = max_diff(a, b, G_N * G_VOCAB);
		ck_assert_msg(d > 1e-6 && d < 2e-2, "fp16 GELU vs exact: %g", d);
	}
	/* fused gate_up rows [gate; up] per expert == the separate tensors */
	run(split, tok, G_N, b, NULL);
	ck_assert_msg(max_diff(a, b, G_N * G_VOCAB) < 1e-12, "fused vs split: %g",
		      max_diff(a, b, G_N * G_VOCAB));
	/* a layer without attn_v uses the raw K projection as V */
	run(vexp, tok, G_N, b, NULL);
	ck_assert_msg(max_diff(a, b, G_N * G_VOCAB) < 1e-12, "K-as-V vs explicit V: %g",
		      max_diff(a, b, G_N * G_VOCAB));
	free(fused);
	free(split);
	free(vexp);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * With a window of 1 every position attends only to itself, where RoPE
 * cancels in q.k: a token's logits then do not depend on where it stands or
 * what precedes it.  Wider windows and full layers would break this.
 */
START_TEST(ref_gemma4_window_of_one)
{
	char *dir = tu_tmpdir();
	char *path = write_gemma4(dir, "swa1.gguf", G_ALL_SWA1);
	char *full = write_gemma4(dir, "fused.gguf", G_FUSED);
	const int32_t tok[6] = { 7, 100, 3, 7, 42, 7 };
	static double a[6 * G_VOCAB];

	run(path, tok, 6, a, NULL);
	ck_assert_msg(max_diff(a, a + 3 * G_VOCAB, G_VOCAB) < 1e-12, "window 1: pos 0 vs 3 %g",
		      max_diff(a, a + 3 * G_VOCAB, G_VOCAB));
	ck_assert_msg(max_diff(a, a + 5 * G_VOCAB, G_VOCAB) < 1e-12, "window 1: pos 0 vs 5 %g",
		      max_diff(a, a + 5 * G_VOCAB, G_VOCAB));
	run(full, tok, 6, a, NULL);
	ck_assert_msg(max_diff(a, a + 3 * G_VOCAB, G_VOCAB) > 1e-6, "the wide model ignores "
		      "context");
	free(path);
	free(full);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

#define L_E 128
#define L_VOCAB 200

/* A two-layer Mixtral-style model (arch llama): 4 experts, top-2, optionally tied output. */
static char *write_mixtral(const char *dir, const char *file, bool tied)
{
	struct mb b;

	mb_start(&b, "llama");
	mb_u32(&b, "context_length", 256);
	mb_u32(&b, "embedding_length", L_E);
	mb_u32(&b, "block_count", 2);
	mb_u32(&b, "vocab_size", L_VOCAB);
	mb_u32(&b, "attention.head_count", 4);
	mb_u32(&b, "attention.head_count_kv", 2);
	mb_u32(&b, "rope.dimension_count", 32);
	mb_f32(&b, "rope.freq_base", 1e4f);
	mb_f32(&b, "attention.layer_norm_rms_epsilon", 1e-5f);
	mb_u32(&b, "feed_forward_length", 24);
	mb_u32(&b, "expert_count", 4);
	mb_u32(&b, "expert_used_count", 2);
	mb_rand(&b, "token_embd.weight", NULL, 2, L_E, L_VOCAB, 1);
	if (!tied)
		mb_rand(&b, "output.weight", "token_embd.weight", 2, L_E, L_VOCAB, 1);
	mb_norm(&b, "output_norm.weight", L_E);
	for (int il = 0; il < 2; il++) {
		mb_norm(&b, blk(il, "attn_norm.weight"), L_E);
		mb_rand(&b, blk(il, "attn_q.weight"), NULL, 2, L_E, L_E, 1);
		mb_rand(&b, blk(il, "attn_k.weight"), NULL, 2, L_E, 64, 1);
		mb_rand(&b, blk(il, "attn_v.weight"), NULL, 2, L_E, 64, 1);
		mb_rand(&b, blk(il, "attn_output.weight"), NULL, 2, L_E, L_E, 1);
		mb_norm(&b, blk(il, "ffn_norm.weight"), L_E);
		mb_rand(&b, blk(il, "ffn_gate_inp.weight"), NULL, 2, L_E, 4, 1);
		mb_rand(&b, blk(il, "ffn_gate_exps.weight"), NULL, 3, L_E, 24, 4);
		mb_rand(&b, blk(il, "ffn_up_exps.weight"), NULL, 3, L_E, 24, 4);
		mb_rand(&b, blk(il, "ffn_down_exps.weight"), NULL, 3, 24, L_E, 4);
	}
	return mb_finish(&b, dir, file);
}

/*
 * Mixtral: a tied output equals an explicit copy of token_embd, and the
 * causal mask makes every prefix's logits independent of what follows.
 */
START_TEST(ref_mixtral_tied_and_causal)
{
	char *dir = tu_tmpdir();
	char *tied = write_mixtral(dir, "tied.gguf", true);
	char *untied = write_mixtral(dir, "untied.gguf", false);
	static double a[20 * L_VOCAB], b[20 * L_VOCAB];
	int32_t tok[20], topk[2 * 20 * 2];
	uint64_t st = 11;

	for (int i = 0; i < 20; i++)
		tok[i] = (int32_t)(tu_rand(&st) % L_VOCAB);
	run(tied, tok, 20, a, topk);
	run(untied, tok, 20, b, NULL);
	ck_assert_msg(max_diff(a, b, 20 * L_VOCAB) < 1e-12, "tied vs untied %g",
		      max_diff(a, b, 20 * L_VOCAB));
	for (int i = 0; i < 2 * 20; i++)
		ck_assert_int_ne(topk[2 * i], topk[2 * i + 1]);
	run(tied, tok, 13, b, NULL);
	ck_assert_msg(max_diff(a, b, 13 * L_VOCAB) < 1e-12, "prefix of 13 changed by %g",
		      max_diff(a, b, 13 * L_VOCAB));
	free(tied);
	free(untied);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * Quantized files: a copy of a shared model with its matrices in K-quants,
 * Q8_0, MXFP4, F16 and BF16 must give exactly the logits of an F32 copy holding the
 * dequantized values (both are the same numbers in double); and it must
 * stay near the F32 original.
 */
static char *write_copy(const char *src, const char *dir, const char *file, bool quantized)
{
	struct moe_model *m;
	struct moe_gguf_writer *w;
	int n, fd;
	char *path;

	ck_assert_msg(moe_model_open(src, &m) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(moe_gguf_writer_create(32, &w), 0);
	n = moe_meta_count(m);
	for (int i = 0; i < n; i++) {
		struct moe_meta mv;
		int ret = 0;

		ck_assert_int_eq(moe_meta_at(m, i, &mv), 0);
		if (!strcmp(mv.key, "general.alignment"))
			continue;
		switch (mv.type) {
		case MOE_META_U32:
			ret = moe_gguf_set_u32(w, mv.key, (uint32_t)mv.v.u64);
			break;
		case MOE_META_F32:
			ret = moe_gguf_set_f32(w, mv.key, (float)mv.v.f64);
			break;
		case MOE_META_STRING:
			ret = moe_gguf_set_str(w, mv.key, mv.v.str);
			break;
		default:
			ck_abort_msg("%s: key '%s' of type %u not copied", src, mv.key, mv.type);
		}
		ck_assert_int_eq(ret, 0);
	}
	fd = open(src, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	n = moe_model_tensor_count(m);
	for (int i = 0; i < n; i++) {
		struct moe_tensor_info ti;
		uint64_t cnt;
		uint32_t type = MOE_TYPE_F32;
		float *f;
		void *q;

		ck_assert_int_eq(moe_model_tensor(m, i, &ti), 0);
		ck_assert_int_eq(ti.type, MOE_TYPE_F32);
		cnt = ti.bytes / 4;
		f = malloc(ti.bytes);
		q = malloc(ti.bytes);
		ck_assert(f && q);
		ck_assert_int_eq(pread(fd, f, ti.bytes, (off_t)ti.offset), (ssize_t)ti.bytes);
		if (ti.n_dims >= 2 && ti.ne[0] % 256 == 0)
			type = strstr(ti.name, "attn") ? MOE_TYPE_Q6_K : MOE_TYPE_Q4_K;
		else if (ti.n_dims >= 2 && ti.ne[0] % 32 == 0)
			type = strstr(ti.name, "_exps") ? MOE_TYPE_MXFP4 : MOE_TYPE_Q8_0;
		if (!strcmp(ti.name, "token_embd.weight"))
			type = MOE_TYPE_Q8_0;
		/* the reference widens F16 and BF16 itself: held against moe_dequantize */
		if (!strcmp(ti.name, "output.weight"))
			type = MOE_TYPE_F16;
		if (strstr(ti.name, "attn_output.weight"))
			type = MOE_TYPE_BF16;
		if (type != MOE_TYPE_F32) {
			ck_assert_msg(moe_quantize(type, f, q, (int64_t)cnt) > 0, "%s",
				      moe_errmsg());
			if (!quantized)
				ck_assert_int_eq(moe_dequantize(type, q, f, (int64_t)cnt), 0);
		}
		ck_assert_msg(moe_gguf_add_tensor(w, ti.name, quantized ? type : MOE_TYPE_F32,
						  ti.n_dims, ti.ne,
						  quantized && type != MOE_TYPE_F32 ? q : f) == 0,
			      "%s: %s", ti.name, moe_errmsg());
		free(f);
		free(q);
	}
	close(fd);
	moe_model_destroy(m);
	path = malloc(strlen(dir) + strlen(file) + 2);
	ck_assert_ptr_nonnull(path);
	sprintf(path, "%s/%s", dir, file);
	ck_assert_msg(moe_gguf_write(w, path) == 0, "%s", moe_errmsg());
	moe_gguf_writer_destroy(w);
	return path;
}

START_TEST(ref_quantized_equals_dequantized)
{
	const char *model = models[_i], *src = model_path(model);
	char *dir = tu_tmpdir(), *q, *f;
	static double a[N_PROMPT * 512], b[N_PROMPT * 512], c[N_PROMPT * 512];
	int32_t tok[N_PROMPT];
	double d = 0, rms = 0;

	ck_assert_ptr_nonnull(src);
	prompt(tok);
	q = write_copy(src, dir, "q.gguf", true);
	f = write_copy(src, dir, "f.gguf", false);
	run(q, tok, N_PROMPT, a, NULL);
	run(f, tok, N_PROMPT, b, NULL);
	run(src, tok, N_PROMPT, c, NULL);
	ck_assert_msg(max_diff(a, b, N_PROMPT * 512) < 1e-12, "%s: quantized vs dequantized %g",
		      model, max_diff(a, b, N_PROMPT * 512));
	for (int i = 0; i < N_PROMPT * 512; i++) {
		d += (a[i] - c[i]) * (a[i] - c[i]);
		rms += c[i] * c[i];
	}
	d = sqrt(d / rms);
	if (getenv("MOE_TEST_VERBOSE"))
		printf("ref %s: quantized vs F32 original: relative rms %.3g\n", model, d);
	/*
	 * 4- to 8-bit weights (7-11% rms error each) move these random models'
	 * logits a lot (0.2-0.7), but uncorrelated logits would be ~1.4 apart
	 */
	ck_assert_msg(d > 1e-4 && d < 1.0, "%s: quantized vs original: relative rms %g", model,
		      d);
	free(q);
	free(f);
	tu_rmtree(dir);
	free(dir);
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
		tu_skip("ref_llama4_temperature_tuning", "no " DIR " in the shared tree");
		tu_skip("ref_quantized_equals_dequantized", "no " DIR " in the shared tree");
		tu_skip("ref_bad_input", "no " DIR " in the shared tree");
	} else {
		tcase_add_loop_test(tc, ref_prompt_matches_llamacpp, 0, n);
		tcase_add_loop_test(tc, ref_greedy_matches_llamacpp, 0, n);
		tcase_add_test(tc, ref_llama4_chunk_option);
		tcase_add_test(tc, ref_llama4_temperature_tuning);
		tcase_add_test(tc, ref_bad_input);
		tcase_add_loop_test(tc, ref_quantized_equals_dequantized, 0, n);
	}
	suite_add_tcase(s, tc);

	tc = tcase_create("written");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, ref_gemma4_layouts_agree);
	tcase_add_test(tc, ref_gemma4_window_of_one);
	tcase_add_test(tc, ref_mixtral_tied_and_causal);
	suite_add_tcase(s, tc);
	return s;
}
