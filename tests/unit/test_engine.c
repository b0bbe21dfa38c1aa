// SPDX-License-Identifier: MIT
/*
 * The forward pass and the expert cache: agreement with llama.cpp on the
 * shared tiny models, with the float64 reference on generated models of
 * every architecture, bit-identical logits whether experts stream through a
 * budget that evicts on every layer or stay resident, determinism, the
 * memory budget, CPU contexts of one model sharing its resident tensors, and
 * the errors a user can run into.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine.h"
#include "util/util.h"
#include "moe/moe.h"
#include "ref_forward.h"
#include "testutil.h"

#define DIR "reference/llamacpp-logits/"
#define N_PROMPT 64
#define N_GREEDY 32

static const char *const ll_models[] = { "qwen3moe", "llama4", "gptoss" };

/* ------------------------------------------------------------ helpers */

/* chunk: llama4's attention chunk, small in generated models so prompts cross it */
static struct moe_ctx *make_ctx(struct moe_model *m, uint64_t vram, uint32_t n_batch,
				uint32_t chunk)
{
	struct moe_ctx_params p;
	struct moe_ctx *ctx = NULL;
	int ret;

	moe_ctx_params_init(&p);
	p.n_threads = 2;
	p.n_ctx = 128;
	p.n_batch = n_batch;
	p.attn_chunk = chunk;
	p.vram_bytes = vram;
	ret = moe_ctx_create(m, &p, &ctx);
	ck_assert_msg(ret == 0, "moe_ctx_create(vram %llu): %s", (unsigned long long)vram,
		      moe_errmsg());
	return ctx;
}

/*
 * The smallest budget the context accepts, read from the error it gives for
 * a budget of one byte (which must say how much is needed).
 */
static uint64_t min_budget(struct moe_model *m, uint32_t n_batch)
{
	struct moe_ctx_params p;
	struct moe_ctx *ctx = NULL;
	const char *msg, *at;
	unsigned long long need = 0;

	moe_ctx_params_init(&p);
	p.n_threads = 2;
	p.n_ctx = 128;
	p.n_batch = n_batch;
	p.vram_bytes = 1;
	ck_assert_int_eq(moe_ctx_create(m, &p, &ctx), -ENOMEM);
	msg = moe_errmsg();
	at = strstr(msg, "needs at least");
	ck_assert_msg(at != NULL, "no size in: %s", msg);
	at = strchr(at, '(');
	ck_assert_msg(at && sscanf(at, "(%llu bytes)", &need) == 1, "no size in: %s", msg);
	return need;
}

/* A generated model in @dir; false (and a note) when this build cannot write the type. */
static bool mkmodel(const char *dir, const char *arch, const char *type, const char *extra,
		    char *path, size_t len)
{
	char cmd[1024], *out = NULL;
	int st;

	snprintf(path, len, "%s/%s-%s.gguf", dir, arch, type);
	/* "gemma4-dense": a gemma4 file without routers (Gemma 4 31B) */
	snprintf(cmd, sizeof(cmd), "%s --arch %s --type %s -o %s -q --layers 4 --vocab 256 "
		 "--expert-ff 256 %s", tu_bin("moe-mkmodel"),
		 strncmp(arch, "gemma4-", 7) ? arch : "gemma4", type, path, extra);
	st = tu_run(cmd, 1, &out);
	if (st != 0 && out && strstr(out, "not supported")) {
		free(out);
		return false;
	}
	ck_assert_msg(st == 0, "%s: %s", cmd, out ? out : "");
	free(out);
	return true;
}

/* Can this build's moe-mkmodel write @type?  (A tiny model, thrown away.) */
static bool can_make(const char *dir, const char *arch, const char *type)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd), "%s --arch %s --type %s -o %s/probe.gguf -q --layers 1 "
		 "--vocab 32 --experts 2 --experts-used 1 --expert-ff 256 >/dev/null 2>&1",
		 tu_bin("moe-mkmodel"), arch, type, dir);
	return tu_run(cmd, 0, NULL) == 0;
}

static const char *arch_extra(const char *arch)
{
	if (!strcmp(arch, "gpt-oss") || !strcmp(arch, "gemma4"))
		return "--sliding-window 8";
	if (!strcmp(arch, "gemma4-dense"))
		return "--sliding-window 8 --experts 0";
	/* per-layer embeddings streamed by row, the last two layers on earlier KV caches */
	if (!strcmp(arch, "gemma4-e2b"))
		return "--sliding-window 8 --per-layer-embd 32 --kv-shared 2 --layers 6 "
		       "--swa-pattern 2";
	/* a NextN block after the trunk, which the forward pass must skip */
	if (!strcmp(arch, "glm4moe"))
		return "--nextn 1";
	if (!strcmp(arch, "llama4"))
		return "--interleave 2";
	return "";
}

static void prompt(int32_t *tok, int n, int vocab)
{
	for (int i = 0; i < n; i++)
		tok[i] = (int32_t)((i * 37 + 11) % vocab);
}

/* ------------------------------------------------------------ llama.cpp */

struct route_rec {
	int32_t *topk;      /* [layer][pos][k] */
	float *logits;      /* [layer][pos][n_expert] */
	uint32_t k, n_expert, n_pos;
};

static void record_route(void *arg, uint32_t layer, const int32_t *pos, uint32_t n_tok,
			 const float *logits, uint32_t n_expert, int32_t *sel, uint32_t K)
{
	struct route_rec *r = arg;

	for (uint32_t t = 0; t < n_tok; t++) {
		if ((uint32_t)pos[t] >= r->n_pos)
			continue;
		for (uint32_t j = 0; j < r->k; j++)
			r->topk[((size_t)layer * r->n_pos + pos[t]) * r->k + j] = sel[t * K + j];
		memcpy(r->logits + ((size_t)layer * r->n_pos + pos[t]) * n_expert,
		       logits + (size_t)t * n_expert, sizeof(float) * n_expert);
	}
}

struct greedy_rec {
	int32_t *out;
	int n;
};

static int keep_token(void *arg, const float *logits, uint32_t n_rows, int32_t next)
{
	struct greedy_rec *g = arg;

	(void)logits;
	(void)n_rows;
	g->out[g->n++] = next;
	return 0;
}

/* The three llama.cpp models, resident (_i even) and streamed through a minimal budget. */
START_TEST(engine_matches_llamacpp)
{
	const char *name = ll_models[_i / 2];
	bool stream = _i % 2;
	char rel[128];
	const char *path;
	struct moe_model *m;
	struct moe_ctx *ctx;
	struct moe_hparams hp;
	struct route_rec rr;
	struct greedy_rec gr;
	int32_t tok[N_PROMPT], want_g[N_GREEDY], got_g[N_GREEDY];
	float *want_l, *want_r;
	int32_t *want_k;
	double worst = 0, worst_r = 0;

	snprintf(rel, sizeof(rel), DIR "%s-f32.gguf", name);
	path = tu_shared(rel);
	ck_assert_ptr_nonnull(path);
	ck_assert_int_eq(tu_read_ints(tu_shared(DIR "tokens.txt"), tok, N_PROMPT), N_PROMPT);
	snprintf(rel, sizeof(rel), DIR "%s-f32.greedy.txt", name);
	ck_assert_int_eq(tu_read_ints(tu_shared(rel), want_g, N_GREEDY), N_GREEDY);
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(moe_model_hparams(m, &hp), 0);
	ctx = make_ctx(m, stream ? min_budget(m, 0) : 0, 0, 0);
	rr = (struct route_rec){ .k = hp.n_expert_used, .n_expert = hp.n_expert,
				 .n_pos = N_PROMPT };
	rr.topk = calloc((size_t)hp.n_layer * N_PROMPT * rr.k, sizeof(int32_t));
	rr.logits = calloc((size_t)hp.n_layer * N_PROMPT * hp.n_expert, sizeof(float));
	want_l = tu_read_llamacpp(name, "logits.f32", sizeof(float) * N_PROMPT * hp.n_vocab);
	want_r = tu_read_llamacpp(name, "router.f32", sizeof(float) * hp.n_layer * N_PROMPT *
			     hp.n_expert);
	want_k = tu_read_llamacpp(name, "topk.i32", sizeof(int32_t) * hp.n_layer * N_PROMPT * rr.k);
	moe_ctx_set_route_hook(ctx, record_route, &rr);

	ck_assert_msg(moe_ctx_eval(ctx, tok, N_PROMPT, 0, MOE_EVAL_ALL_LOGITS) == 0, "%s",
		      moe_errmsg());
	for (int t = 0; t < N_PROMPT; t++) {
		const float *l = moe_ctx_logits(ctx, t);

		for (uint32_t i = 0; i < hp.n_vocab; i++)
			worst = fmax(worst, fabs(l[i] - want_l[(size_t)t * hp.n_vocab + i]));
	}
	for (size_t i = 0; i < (size_t)hp.n_layer * N_PROMPT * hp.n_expert; i++)
		worst_r = fmax(worst_r, fabs(rr.logits[i] - want_r[i]));
	for (size_t i = 0; i < (size_t)hp.n_layer * N_PROMPT * rr.k; i++)
		ck_assert_msg(rr.topk[i] == want_k[i], "%s: layer %zu pos %zu: expert %d, "
			      "llama.cpp chose %d", name, i / (N_PROMPT * rr.k), i / rr.k % N_PROMPT,
			      rr.topk[i], want_k[i]);
	ck_assert_msg(worst < 1e-4, "%s: logits differ from llama.cpp by %g", name, worst);
	ck_assert_msg(worst_r < 1e-4, "%s: router logits differ by %g", name, worst_r);

	moe_ctx_set_route_hook(ctx, NULL, NULL);
	gr = (struct greedy_rec){ got_g, 0 };
	ck_assert_int_eq(moe_ctx_generate(ctx, tok, N_PROMPT, N_GREEDY, NULL, 0, keep_token, &gr),
			 N_GREEDY);
	for (int g = 0; g < N_GREEDY; g++)
		ck_assert_msg(got_g[g] == want_g[g], "%s: greedy token %d is %d, llama.cpp %d",
			      name, g, got_g[g], want_g[g]);
	if (stream) {
		struct moe_ctx_stats st;

		moe_ctx_get_stats(ctx, &st);
		ck_assert_uint_gt(st.expert_evictions, 0);
		ck_assert_uint_le(st.vram_used, st.vram_budget);
	}
	free(rr.topk);
	free(rr.logits);
	free(want_l);
	free(want_r);
	free(want_k);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
}
END_TEST

/*
 * tests/llamacpp: the tiny models of models.txt, written again by
 * moe-mkmodel, against what llama.cpp computed for them (README.md there):
 * all-position logits within the model's tolerance, the router logits and
 * chosen experts of every MoE layer, the greedy continuation; and the f32
 * ones through the float64 reference too (with llama.cpp's fp16 GELU).
 */
#define TINY_PROMPT 16
#define TINY_GREEDY 8
#define TINY_MAX 16

struct tiny {
	char name[64];
	double tol;
	char args[768];
};

/* The models of models.txt; -1 when it cannot be read or a line is not NAME TOL ARGS. */
static int read_tiny(struct tiny *t, int max)
{
	size_t len;
	char *txt = tu_read_file(tu_src("tests/llamacpp/models.txt"), &len), *line, *save;
	int n = 0;

	if (!txt)
		return -1;
	for (line = strtok_r(txt, "\n", &save); line && n < max;
	     line = strtok_r(NULL, "\n", &save)) {
		int used = 0;

		if (*line == '#' || !*line)
			continue;
		if (sscanf(line, "%63s %lf %n", t[n].name, &t[n].tol, &used) != 2 || !used) {
			n = -1;
			break;
		}
		snprintf(t[n].args, sizeof(t[n].args), "%s", line + used);
		n++;
	}
	free(txt);
	return n;
}

/* data/NAME.ext, or NULL when llama.cpp wrote none (dense models have no router) */
static void *tiny_data(const char *name, const char *ext, size_t want)
{
	char rel[256];
	size_t len;
	void *p;

	snprintf(rel, sizeof(rel), "tests/llamacpp/data/%s.%s", name, ext);
	p = tu_read_file(tu_src(rel), &len);
	if (p)
		ck_assert_msg(len == want, "%s: %zu bytes, expected %zu", rel, len, want);
	return p;
}

START_TEST(engine_matches_llamacpp_tiny)
{
	struct tiny t[TINY_MAX];
	int n = read_tiny(t, TINY_MAX);
	const struct tiny *ty;
	char *dir = tu_tmpdir(), path[512], cmd[1536], *out = NULL, rel[256];
	int32_t tok[TINY_PROMPT], want_g[TINY_GREEDY], got_g[TINY_GREEDY];
	struct ref_opts ro = { .gelu_f16 = true };
	struct moe_model *m;
	struct moe_ctx *ctx;
	struct moe_hparams hp;
	struct route_rec rr = { 0 };
	struct greedy_rec gr;
	float *want_l, *want_r = NULL;
	int32_t *want_k = NULL;
	double worst = 0, worst_r = 0;

	ck_assert_msg(_i < n, "tests/llamacpp/models.txt lists %d models", n);
	ty = &t[_i];
	snprintf(path, sizeof(path), "%s/%s.gguf", dir, ty->name);
	snprintf(cmd, sizeof(cmd), "%s %s -q -o %s", tu_bin("moe-mkmodel"), ty->args, path);
	ck_assert_msg(tu_run(cmd, 1, &out) == 0, "%s: %s", cmd, out);
	free(out);
	ck_assert_int_eq(tu_read_ints(tu_src("tests/llamacpp/tokens.txt"), tok, TINY_PROMPT),
			 TINY_PROMPT);
	snprintf(rel, sizeof(rel), "tests/llamacpp/data/%s.greedy.txt", ty->name);
	ck_assert_int_eq(tu_read_ints(tu_src(rel), want_g, TINY_GREEDY), TINY_GREEDY);
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(moe_model_hparams(m, &hp), 0);
	want_l = tiny_data(ty->name, "logits.f32", sizeof(float) * TINY_PROMPT * hp.n_vocab);
	ck_assert_ptr_nonnull(want_l);
	ctx = make_ctx(m, 0, 0, 0);
	if (hp.n_expert) {
		rr = (struct route_rec){ .k = hp.n_expert_used, .n_expert = hp.n_expert,
					 .n_pos = TINY_PROMPT };
		rr.topk = calloc((size_t)hp.n_layer * TINY_PROMPT * rr.k, sizeof(int32_t));
		rr.logits = calloc((size_t)hp.n_layer * TINY_PROMPT * hp.n_expert, sizeof(float));
		want_r = tiny_data(ty->name, "router.f32",
				   sizeof(float) * hp.n_layer * TINY_PROMPT * hp.n_expert);
		want_k = tiny_data(ty->name, "topk.i32",
				   sizeof(int32_t) * hp.n_layer * TINY_PROMPT * rr.k);
		ck_assert(want_r && want_k);
		moe_ctx_set_route_hook(ctx, record_route, &rr);
	}
	ck_assert_msg(moe_ctx_eval(ctx, tok, TINY_PROMPT, 0, MOE_EVAL_ALL_LOGITS) == 0, "%s",
		      moe_errmsg());
	for (int p = 0; p < TINY_PROMPT; p++) {
		const float *l = moe_ctx_logits(ctx, p);

		for (uint32_t i = 0; i < hp.n_vocab; i++)
			worst = fmax(worst, fabs(l[i] - want_l[(size_t)p * hp.n_vocab + i]));
	}
	ck_assert_msg(worst < ty->tol, "%s: logits differ from llama.cpp by %g (tolerance %g)",
		      ty->name, worst, ty->tol);
	for (uint32_t il = 0; il < hp.n_layer && hp.n_expert; il++) {
		struct moe_layer_info li;

		ck_assert_int_eq(moe_model_layer(m, il, &li), 0);
		if (!li.is_moe)
			continue;
		for (size_t i = (size_t)il * TINY_PROMPT * rr.k; i < (il + 1ull) * TINY_PROMPT * rr.k;
		     i++)
			ck_assert_msg(rr.topk[i] == want_k[i], "%s: layer %u pos %zu: expert %d, "
				      "llama.cpp chose %d", ty->name, il, i / rr.k % TINY_PROMPT,
				      rr.topk[i], want_k[i]);
		for (size_t i = (size_t)il * TINY_PROMPT * hp.n_expert;
		     i < (il + 1ull) * TINY_PROMPT * hp.n_expert; i++)
			worst_r = fmax(worst_r, fabs(rr.logits[i] - want_r[i]));
	}
	ck_assert_msg(worst_r < ty->tol, "%s: router logits differ by %g", ty->name, worst_r);
	moe_ctx_set_route_hook(ctx, NULL, NULL);
	gr = (struct greedy_rec){ got_g, 0 };
	ck_assert_int_eq(moe_ctx_generate(ctx, tok, TINY_PROMPT, TINY_GREEDY, NULL, 0, keep_token,
					  &gr), TINY_GREEDY);
	for (int g = 0; g < TINY_GREEDY; g++)
		ck_assert_msg(got_g[g] == want_g[g], "%s: greedy token %d is %d, llama.cpp %d",
			      ty->name, g, got_g[g], want_g[g]);
	if (strstr(ty->name, "-f32")) {
		/* the reference, with llama.cpp's GELU: what is left is f32 rounding */
		double *rl = malloc(sizeof(double) * TINY_PROMPT * hp.n_vocab), wref = 0;

		ck_assert_msg(ref_forward(path, tok, TINY_PROMPT, &ro, rl, NULL, NULL) == 0, "%s",
			      moe_errmsg());
		for (size_t i = 0; i < (size_t)TINY_PROMPT * hp.n_vocab; i++)
			wref = fmax(wref, fabs(rl[i] - want_l[i]));
		ck_assert_msg(wref < 1e-3, "%s: the reference differs from llama.cpp by %g",
			      ty->name, wref);
		free(rl);
	}
	free(rr.topk);
	free(rr.logits);
	free(want_l);
	free(want_r);
	free(want_k);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * Gemma 4 E2B/E4B: the per-layer embedding table is never resident; each
 * token's row is read once, when the token first appears, and then served
 * from the host cache by token, also across evals.
 */
START_TEST(engine_ple_streamed)
{
	char *dir = tu_tmpdir(), path[512];
	struct moe_model *m;
	struct moe_ctx *ctx;
	struct moe_tensor_info ti;
	int32_t tok[12] = { 5, 9, 5, 5, 17, 9, 200, 5, 17, 17, 3, 9 };
	int idx;

	ck_assert(mkmodel(dir, "gemma4-e2b", "q8_0", arch_extra("gemma4-e2b"), path,
			  sizeof(path)));
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	idx = moe_model_find_tensor(m, "per_layer_token_embd.weight", &ti);
	ck_assert_int_ge(idx, 0);
	ck_assert_int_eq(ti.role, MOE_ROLE_STREAMED_ROWS);
	/* batches of 5: repeats within a step and across steps */
	ctx = make_ctx(m, 0, 5, 0);
	ck_assert_uint_eq(ctx->lay.t[idx].off, UINT64_MAX);
	ck_assert_msg(moe_ctx_eval(ctx, tok, 12, 0, 0) == 0, "%s", moe_errmsg());
	ck_assert_uint_eq(ctx->ple.misses, 5);          /* 5, 9, 17, 200, 3 */
	ck_assert_uint_eq(ctx->ple.bytes, 5 * ti.bytes / ti.ne[1]);
	ck_assert_uint_gt(ctx->ple.hits, 0);
	ck_assert_msg(moe_ctx_eval(ctx, tok, 12, 0, 0) == 0, "%s", moe_errmsg());
	ck_assert_uint_eq(ctx->ple.misses, 5);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * The per-layer embedding cache sized below the prompt's distinct tokens:
 * rows are evicted least recently used first and read again when their
 * token comes back, and the logits equal those of a cache that holds them
 * all.  The expected reads come from replaying that rule over the steps.
 */
static uint32_t ple_replay(const int32_t *tok, uint32_t n, uint32_t batch, uint32_t rows)
{
	int32_t held[16];
	uint64_t used[16] = { 0 }, now = 0;
	uint32_t reads = 0;

	ck_assert_uint_le(rows, 16);
	for (uint32_t i = 0; i < rows; i++)
		held[i] = -1;
	for (uint32_t s = 0; s < n; s += batch) {
		now++;
		for (uint32_t t = s; t < n && t < s + batch; t++) {
			uint32_t i, v = 0;

			for (i = 0; i < rows && held[i] != tok[t]; i++)
				;
			if (i < rows) {
				used[i] = now;
				continue;
			}
			for (i = 1; i < rows; i++)
				if (used[i] < used[v])
					v = i;
			ck_assert_uint_lt(used[v], now);
			held[v] = tok[t];
			used[v] = now;
			reads++;
		}
	}
	return reads;
}

START_TEST(engine_ple_evicting)
{
	char *dir = tu_tmpdir(), path[512];
	struct moe_model *m;
	struct moe_ctx *all, *few;
	struct moe_ctx_params p;
	struct moe_tensor_info ti;
	/* 10 distinct tokens, most of them coming back after others pushed them out */
	int32_t tok[30] = { 5, 9, 17, 200, 3, 41, 77, 5, 9, 8, 120, 17, 3, 41, 5, 250, 9, 77,
			    200, 8, 5, 3, 120, 41, 17, 9, 250, 5, 77, 8 };
	uint64_t row;
	uint32_t vocab, reads;

	ck_assert(mkmodel(dir, "gemma4-e2b", "q8_0", arch_extra("gemma4-e2b"), path,
			  sizeof(path)));
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	ck_assert_int_ge(moe_model_find_tensor(m, "per_layer_token_embd.weight", &ti), 0);
	row = ti.bytes / ti.ne[1];
	all = make_ctx(m, 0, 5, 0);
	moe_ctx_params_init(&p);
	p.n_threads = 2;
	p.n_ctx = 128;
	p.n_batch = 5;
	/* a step's 5 tokens fit, the prompt's 10 do not */
	p.ple_cache_bytes = 6 * row + row / 2;
	ck_assert_msg(moe_ctx_create(m, &p, &few) == 0, "%s", moe_errmsg());
	ck_assert_uint_eq(few->lay.plan.ple_cache_rows, 6);
	ck_assert_uint_eq(few->lay.plan.ple_cache_bytes, 6 * row);
	ck_assert_msg(moe_ctx_eval(all, tok, 30, 0, MOE_EVAL_ALL_LOGITS) == 0, "%s", moe_errmsg());
	ck_assert_msg(moe_ctx_eval(few, tok, 30, 0, MOE_EVAL_ALL_LOGITS) == 0, "%s", moe_errmsg());
	vocab = moe_ctx_n_vocab(all);
	for (uint32_t i = 0; i < 30; i++)
		ck_assert_msg(!memcmp(moe_ctx_logits(all, i), moe_ctx_logits(few, i),
				      sizeof(float) * vocab),
			      "position %u: logits differ with a 6-row per-layer embedding cache", i);
	ck_assert_uint_eq(all->ple.misses, 10);
	reads = ple_replay(tok, 30, 5, 6);
	ck_assert_uint_gt(reads, 10);
	ck_assert_uint_eq(few->ple.misses, reads);
	ck_assert_uint_eq(few->ple.bytes, reads * row);
	ck_assert_uint_eq(few->ple.hits + few->ple.misses, all->ple.hits + all->ple.misses);
	moe_ctx_destroy(few);
	moe_ctx_destroy(all);
	/* fewer rows than a step's tokens is refused by name, with the size that works */
	p.ple_cache_bytes = 4 * row;
	ck_assert_int_eq(moe_ctx_create(m, &p, &few), -EINVAL);
	ck_assert_msg(strstr(moe_errmsg(), "per-layer embedding cache") &&
		      strstr(moe_errmsg(), "fewer than a step's 5 tokens"), "%s", moe_errmsg());
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ reference */

static const char *const archs[] = { "qwen3moe", "llama4", "mixtral", "gpt-oss", "gemma4",
				     "deepseek2", "glm4moe", "gemma4-dense", "gemma4-e2b" };

/*
 * F32 weights, a 40-token prompt: longer than the llama4 chunk (16 here) and
 * the sliding window (8).  The engine accumulates in f32 and the reference
 * in f64; on these models (logits rms ~1-3) the two agree to ~2e-6, and the
 * tolerance 1e-4 leaves 50x margin while a wrong mask, rope or norm moves
 * logits by 1e-2 or more.
 */
START_TEST(engine_matches_reference)
{
	const char *arch = archs[_i];
	char *dir = tu_tmpdir(), path[512];
	struct ref_opts o = { .llama4_chunk = 16 };
	struct moe_model *m;
	struct moe_ctx *ctx;
	struct ref_info ri;
	int32_t tok[40];
	double *rl, worst = 0;

	ck_assert(mkmodel(dir, arch, "f32", arch_extra(arch), path, sizeof(path)));
	ck_assert_msg(ref_model_info(path, &ri) == 0, "%s", moe_errmsg());
	prompt(tok, 40, ri.n_vocab);
	rl = malloc(sizeof(double) * 40 * ri.n_vocab);
	ck_assert_msg(ref_forward(path, tok, 40, &o, rl, NULL, NULL) == 0, "%s", moe_errmsg());
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	/* batches of 7 split the prompt across windows and chunks */
	ctx = make_ctx(m, 0, 7, 16);
	ck_assert_msg(moe_ctx_eval(ctx, tok, 40, 0, MOE_EVAL_ALL_LOGITS) == 0, "%s", moe_errmsg());
	for (int t = 0; t < 40; t++) {
		const float *l = moe_ctx_logits(ctx, t);

		for (int i = 0; i < ri.n_vocab; i++)
			worst = fmax(worst, fabs(l[i] - rl[(size_t)t * ri.n_vocab + i]));
	}
	ck_assert_msg(worst < 1e-4, "%s: engine and reference differ by %g", arch, worst);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	free(rl);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ streaming */

struct combo {
	const char *arch, *type;
};

static const struct combo combos[] = {
	{ "qwen3moe", "f32" }, { "qwen3moe", "q4_K" }, { "qwen3moe", "q8_0" },
	{ "llama4", "f16" }, { "llama4", "q6_K" },
	{ "mixtral", "bf16" }, { "mixtral", "q5_K" },
	{ "gpt-oss", "f32" }, { "gpt-oss", "mxfp4" },
	{ "gemma4", "f32" }, { "gemma4", "q4_0" },
};

struct all_logits {
	float *buf;
	size_t n;
	uint32_t vocab;
};

static int keep_logits(void *arg, const float *logits, uint32_t n_rows, int32_t next)
{
	struct all_logits *a = arg;

	(void)next;
	memcpy(a->buf + a->n * a->vocab, logits, sizeof(float) * n_rows * a->vocab);
	a->n += n_rows;
	return 0;
}

static void run_gen(struct moe_ctx *ctx, const int32_t *tok, uint32_t n, struct all_logits *a)
{
	a->n = 0;
	ck_assert_msg(moe_ctx_generate(ctx, tok, n, 6, NULL, MOE_EVAL_ALL_LOGITS, keep_logits,
				       a) == 6, "%s", moe_errmsg());
}

/* A budget with one token's experts of slots: every layer evicts; logits must not change. */
START_TEST(engine_evicting_equals_resident)
{
	const struct combo *c = &combos[_i];
	char *dir = tu_tmpdir(), path[512];
	struct moe_model *m;
	struct moe_ctx *res, *str;
	struct moe_ctx_stats st;
	struct all_logits a, b;
	uint32_t vocab;
	int32_t tok[24];

	ck_assert(mkmodel(dir, c->arch, c->type, arch_extra(c->arch), path, sizeof(path)));
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	res = make_ctx(m, 0, 8, 16);
	str = make_ctx(m, min_budget(m, 8), 8, 16);
	vocab = moe_ctx_n_vocab(res);
	prompt(tok, 24, (int)vocab);
	a = (struct all_logits){ calloc((size_t)30 * vocab, sizeof(float)), 0, vocab };
	b = (struct all_logits){ calloc((size_t)30 * vocab, sizeof(float)), 0, vocab };
	run_gen(res, tok, 24, &a);
	run_gen(str, tok, 24, &b);
	ck_assert_uint_eq(a.n, b.n);
	ck_assert_msg(!memcmp(a.buf, b.buf, sizeof(float) * a.n * vocab),
		      "%s %s: streamed logits differ from resident ones", c->arch, c->type);
	moe_ctx_get_stats(str, &st);
	ck_assert_uint_gt(st.expert_evictions, 0);
	ck_assert_uint_gt(st.expert_misses, 0);
	ck_assert(st.hit_rate < 1.0);
	ck_assert_uint_le(st.vram_used, st.vram_budget);
	moe_ctx_get_stats(res, &st);
	ck_assert_uint_eq(st.expert_misses, 0);
	free(a.buf);
	free(b.buf);
	moe_ctx_destroy(res);
	moe_ctx_destroy(str);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * Dense FFNs past the budget: a dense model (Gemma 4 31B's layout) and one
 * with leading dense layers, at the smallest budget, stream every dense FFN
 * through the expert cache.  Logits equal the resident run's bit for bit,
 * the streamed FFNs are not resident, and each is read a layer ahead: after
 * the first, the layers find theirs fetched already.
 */
static const char *const dense_models[][2] = {
	{ "gemma4-dense", "--sliding-window 8 --experts 0" },
	{ "deepseek2", "--leading-dense 3 --ff 1024" },
};

START_TEST(engine_dense_streamed)
{
	char *dir = tu_tmpdir(), path[512], name[64];
	struct moe_model *m;
	struct moe_ctx *res, *one, *two, *pools;
	struct moe_ctx_params p;
	struct moe_ctx_stats st;
	struct all_logits a, b;
	uint32_t vocab, n_str;
	uint64_t slot;
	int32_t tok[24];
	int idx = -1;

	ck_assert(mkmodel(dir, dense_models[_i][0], "f32", dense_models[_i][1], path,
			  sizeof(path)));
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	res = make_ctx(m, 0, 8, 16);
	/* the smallest budget: every dense FFN streams through one slot */
	one = make_ctx(m, min_budget(m, 8), 8, 16);
	ck_assert_uint_eq(res->lay.plan.n_dense_streamed, 0);
	ck_assert_uint_ge(res->lay.plan.n_dense_ffn, 3);
	n_str = one->lay.plan.n_dense_streamed;
	ck_assert_uint_eq(n_str, one->lay.plan.n_dense_ffn);
	ck_assert(strstr(one->lay.plan.why, "dense FFNs") != NULL);
	slot = one->lay.plan.dense_streamed_bytes / n_str;
	/* one slot more: the next layer's FFN is read while this one computes */
	two = make_ctx(m, one->lay.plan.vram_budget + slot, 8, 16);
	ck_assert_uint_eq(two->lay.plan.n_dense_streamed, n_str);
	/* with a pool per layer, the streamed dense FFNs share one pool of two slots */
	moe_ctx_params_init(&p);
	p.n_threads = 2;
	p.n_ctx = 128;
	p.n_batch = 8;
	p.attn_chunk = 16;
	p.vram_bytes = two->lay.plan.vram_budget;
	p.flags |= MOE_CTX_LAYER_POOLS;
	ck_assert_msg(moe_ctx_create(m, &p, &pools) == 0, "%s", moe_errmsg());
	ck_assert_uint_eq(pools->lay.plan.n_dense_streamed, n_str);
	for (uint32_t il = 0; il < m->hp.n_layer && idx < 0; il++)
		if (one->layers[il].dense_stream) {
			snprintf(name, sizeof(name), "blk.%u.ffn_down.weight", il);
			idx = moe_model_find_tensor(m, name, NULL);
		}
	ck_assert_int_ge(idx, 0);
	ck_assert_uint_eq(one->lay.t[idx].off, UINT64_MAX);
	ck_assert_uint_ne(res->lay.t[idx].off, UINT64_MAX);
	vocab = moe_ctx_n_vocab(res);
	prompt(tok, 24, (int)vocab);
	a = (struct all_logits){ calloc((size_t)30 * vocab, sizeof(float)), 0, vocab };
	b = (struct all_logits){ calloc((size_t)30 * vocab, sizeof(float)), 0, vocab };
	run_gen(res, tok, 24, &a);
	for (int k = 0; k < 3; k++) {
		struct moe_ctx *str = k == 2 ? pools : k ? two : one;

		run_gen(str, tok, 24, &b);
		ck_assert_uint_eq(a.n, b.n);
		ck_assert_msg(!memcmp(a.buf, b.buf, sizeof(float) * a.n * vocab),
			      "%s: logits with streamed dense FFNs (%s) differ from resident ones",
			      dense_models[_i][0], k == 2 ? "layer pools" : k ? "2 slots" : "1 slot");
		moe_ctx_get_stats(str, &st);
		/* 3 prompt steps and 5 decode steps, each using every streamed FFN once */
		ck_assert_uint_eq(st.dense_hits + st.dense_misses, 8 * n_str);
		ck_assert_uint_ge(st.bytes_read, st.dense_misses * slot / 2);
		ck_assert_uint_le(st.vram_used, st.vram_budget);
		if (!k) {
			/* one slot: every use is a read, none can be ahead */
			ck_assert_uint_eq(st.dense_misses, 8 * n_str);
			continue;
		}
		/* all but the very first were fetched while the layer before computed */
		ck_assert_uint_eq(st.dense_misses, 1);
		ck_assert_uint_eq(st.dense_prefetch_used, 8 * n_str - 1);
	}
	moe_ctx_get_stats(res, &st);
	ck_assert_uint_eq(st.dense_hits + st.dense_misses, 0);
	free(a.buf);
	free(b.buf);
	moe_ctx_destroy(res);
	moe_ctx_destroy(one);
	moe_ctx_destroy(two);
	moe_ctx_destroy(pools);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ behaviour */

static char *shared_model(const char *name)
{
	char rel[128];

	snprintf(rel, sizeof(rel), DIR "%s-f32.gguf", name);
	return strdup(tu_shared(rel));
}

START_TEST(engine_deterministic)
{
	char *path = shared_model("qwen3moe");
	struct moe_model *m;
	struct moe_ctx *ctx;
	struct moe_sample_params sp;
	int32_t tok[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, g1[16], g2[16], s1[16], s2[16], s3[16];
	struct greedy_rec r;

	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	ctx = make_ctx(m, 0, 0, 0);
	r = (struct greedy_rec){ g1, 0 };
	ck_assert_int_eq(moe_ctx_generate(ctx, tok, 8, 16, NULL, 0, keep_token, &r), 16);
	r = (struct greedy_rec){ g2, 0 };
	ck_assert_int_eq(moe_ctx_generate(ctx, tok, 8, 16, NULL, 0, keep_token, &r), 16);
	ck_assert(!memcmp(g1, g2, sizeof(g1)));

	moe_sample_params_init(&sp);
	sp.temp = 1.5f;
	sp.top_k = 100;
	sp.seed = 42;
	r = (struct greedy_rec){ s1, 0 };
	ck_assert_int_eq(moe_ctx_generate(ctx, tok, 8, 16, &sp, 0, keep_token, &r), 16);
	r = (struct greedy_rec){ s2, 0 };
	ck_assert_int_eq(moe_ctx_generate(ctx, tok, 8, 16, &sp, 0, keep_token, &r), 16);
	ck_assert(!memcmp(s1, s2, sizeof(s1)));
	/* a sampled run is not the greedy one, and another seed draws another sequence */
	ck_assert(memcmp(s1, g1, sizeof(s1)));
	sp.seed = 43;
	r = (struct greedy_rec){ s3, 0 };
	ck_assert_int_eq(moe_ctx_generate(ctx, tok, 8, 16, &sp, 0, keep_token, &r), 16);
	ck_assert(memcmp(s1, s3, sizeof(s1)));
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	free(path);
}
END_TEST

/* Decoding one token at a time gives the logits of a batched prompt. */
START_TEST(engine_decode_equals_prefill)
{
	char *path = shared_model("gptoss");
	struct moe_model *m;
	struct moe_ctx *ctx;
	int32_t tok[20];
	float *batch;
	double worst = 0;
	uint32_t V;

	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	ctx = make_ctx(m, 0, 0, 0);
	V = moe_ctx_n_vocab(ctx);
	prompt(tok, 20, (int)V);
	batch = malloc(sizeof(float) * 20 * V);
	ck_assert_int_eq(moe_ctx_eval(ctx, tok, 20, 0, MOE_EVAL_ALL_LOGITS), 0);
	memcpy(batch, moe_ctx_logits(ctx, 0), sizeof(float) * 20 * V);
	for (uint32_t t = 0; t < 20; t++) {
		const float *l;

		ck_assert_int_eq(moe_ctx_eval(ctx, &tok[t], 1, t, 0), 0);
		l = moe_ctx_logits(ctx, 0);
		for (uint32_t i = 0; i < V; i++)
			worst = fmax(worst, fabs(l[i] - batch[t * V + i]));
	}
	ck_assert_msg(worst < 1e-4, "decode and prefill differ by %g", worst);
	ck_assert_uint_eq(moe_ctx_n_past(ctx), 20);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	free(batch);
	free(path);
}
END_TEST

START_TEST(engine_errors)
{
	char *path = shared_model("qwen3moe"), *dir = tu_tmpdir(), bad[512];
	struct moe_model *m, *mm;
	struct moe_ctx *ctx;
	struct moe_ctx_params p;
	struct moe_gguf_writer *w;
	int32_t tok[2] = { 5, 512 };
	uint64_t need;

	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	/* the budget error names the bytes needed, and one byte less than that fails */
	need = min_budget(m, 0);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "raise --vram"));
	moe_ctx_params_init(&p);
	p.n_ctx = 128;
	p.n_threads = 2;
	p.vram_bytes = need - 1;
	ck_assert_int_eq(moe_ctx_create(m, &p, &ctx), -ENOMEM);

	ctx = make_ctx(m, 0, 0, 0);
	ck_assert_int_eq(moe_ctx_eval(ctx, tok, 2, 0, 0), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "token id 512"));
	tok[1] = -1;
	ck_assert_int_eq(moe_ctx_eval(ctx, tok, 2, 0, 0), -EINVAL);
	tok[1] = 7;
	ck_assert_int_eq(moe_ctx_eval(ctx, tok, 2, 127, 0), -EINVAL);   /* a gap */
	ck_assert_int_eq(moe_ctx_eval(ctx, tok, 2, 0, 0), 0);
	ck_assert_int_eq(moe_ctx_eval(ctx, tok, 1, 2, 0), 0);
	ck_assert_int_eq(moe_ctx_eval(ctx, tok, 2, 0, 0x80), -EINVAL);
	{
		int32_t many[130] = { 0 };

		ck_assert_int_eq(moe_ctx_eval(ctx, many, 129, 0, 0), -ENOSPC);
		ck_assert_ptr_nonnull(strstr(moe_errmsg(), "--ctx"));
	}
	ck_assert_int_eq(moe_ctx_eval(ctx, tok, 0, 0, 0), -EINVAL);
	moe_ctx_destroy(ctx);

	/* an architecture without a forward pass */
	snprintf(bad, sizeof(bad), "%s/other.gguf", dir);
	ck_assert_int_eq(moe_gguf_writer_create(32, &w), 0);
	ck_assert_int_eq(moe_gguf_set_str(w, "general.architecture", "qwen2moe"), 0);
	ck_assert_int_eq(moe_gguf_write(w, bad), 0);
	moe_gguf_writer_destroy(w);
	ck_assert_int_eq(moe_model_open(bad, &mm), -EOPNOTSUPP);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "qwen2moe"));
	ck_assert_int_eq(moe_model_open_flags(bad, MOE_OPEN_METADATA_ONLY, &mm), 0);
	ck_assert_int_eq(moe_ctx_create(mm, NULL, &ctx), -EOPNOTSUPP);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "no forward pass"));
	moe_model_destroy(mm);

	/* deepseek2 of the older attn_kv_b layout (no *_length_mla keys) is refused by name */
	snprintf(bad, sizeof(bad), "%s/deepseek-kv_b.gguf", dir);
	ck_assert_int_eq(moe_gguf_writer_create(32, &w), 0);
	ck_assert_int_eq(moe_gguf_set_str(w, "general.architecture", "deepseek2"), 0);
	ck_assert_int_eq(moe_gguf_set_u32(w, "deepseek2.block_count", 2), 0);
	ck_assert_int_eq(moe_gguf_set_u32(w, "deepseek2.embedding_length", 64), 0);
	ck_assert_int_eq(moe_gguf_set_u32(w, "deepseek2.attention.head_count", 4), 0);
	ck_assert_int_eq(moe_gguf_set_u32(w, "deepseek2.context_length", 128), 0);
	ck_assert_int_eq(moe_gguf_set_u32(w, "deepseek2.attention.kv_lora_rank", 32), 0);
	ck_assert_int_eq(moe_gguf_set_u32(w, "deepseek2.rope.dimension_count", 16), 0);
	ck_assert_int_eq(moe_gguf_write(w, bad), 0);
	moe_gguf_writer_destroy(w);
	ck_assert_int_eq(moe_model_open(bad, &mm), -EOPNOTSUPP);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "attn_kv_b"));
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "convert"));
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
	free(path);
}
END_TEST

static uint64_t rss_bytes(void)
{
	unsigned long long size = 0, res = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (f) {
		if (fscanf(f, "%llu %llu", &size, &res) != 2)
			res = 0;
		fclose(f);
	}
	return res * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* A model four times the budget's expert room runs inside budget + stated overheads. */
START_TEST(engine_budget_honoured)
{
	char *dir = tu_tmpdir(), path[512];
	struct moe_model *m;
	struct moe_ctx *ctx;
	struct moe_ctx_stats st;
	struct moe_model_summary sum;
	int32_t tok[16];
	uint64_t before, after, vram, slack = 16ull << 20;

	ck_assert(mkmodel(dir, "qwen3moe", "f32", "--experts 32 --embd 512", path, sizeof(path)));
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(moe_model_summary(m, &sum), 0);
	vram = min_budget(m, 0) + sum.expert_bytes_total / 8;
	before = rss_bytes();
	ctx = make_ctx(m, vram, 0, 0);
	prompt(tok, 16, 256);
	ck_assert_int_eq(moe_ctx_generate(ctx, tok, 16, 8, NULL, 0, NULL, NULL), 8);
	after = rss_bytes();
	moe_ctx_get_stats(ctx, &st);
	ck_assert_uint_le(st.vram_used, vram);
	ck_assert_uint_lt(st.n_slots, st.n_experts);
	ck_assert_uint_gt(st.expert_evictions, 0);
	ck_assert_msg(after - before <= vram + st.staging_bytes + st.host_bytes + slack,
		      "RSS grew by %llu bytes; budget %llu + staging %llu + host %llu + %llu",
		      (unsigned long long)(after - before), (unsigned long long)vram,
		      (unsigned long long)st.staging_bytes, (unsigned long long)st.host_bytes,
		      (unsigned long long)slack);
	ck_assert_uint_lt(vram, sum.resident_bytes + sum.expert_bytes_total);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* The host tier: a second pass over the same prompt reads nothing from the file. */
START_TEST(engine_host_cache)
{
	char *path = shared_model("qwen3moe");
	struct moe_model *m;
	struct moe_ctx *res, *ctx;
	struct moe_ctx_params p;
	struct moe_ctx_stats st;
	struct all_logits a, b;
	int32_t tok[24];

	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	res = make_ctx(m, 0, 8, 0);
	moe_ctx_params_init(&p);
	p.n_threads = 2;
	p.n_ctx = 128;
	p.n_batch = 8;
	p.vram_bytes = min_budget(m, 8);
	p.host_cache_bytes = 64ull << 20;
	ck_assert_msg(moe_ctx_create(m, &p, &ctx) == 0, "%s", moe_errmsg());
	prompt(tok, 24, 512);
	a = (struct all_logits){ calloc((size_t)30 * 512, sizeof(float)), 0, 512 };
	b = (struct all_logits){ calloc((size_t)30 * 512, sizeof(float)), 0, 512 };
	run_gen(res, tok, 24, &a);
	run_gen(ctx, tok, 24, &b);
	moe_ctx_get_stats(ctx, &st);
	ck_assert_uint_gt(st.bytes_read, 0);
	ck_assert_uint_eq(st.host_cache_bytes, 32 * st.slot_bytes);
	moe_ctx_reset_stats(ctx);
	run_gen(ctx, tok, 24, &b);
	moe_ctx_get_stats(ctx, &st);
	ck_assert_uint_gt(st.expert_misses, 0);
	ck_assert_uint_eq(st.expert_host_hits, st.expert_misses);
	ck_assert_uint_eq(st.bytes_read, 0);
	ck_assert(!memcmp(a.buf, b.buf, sizeof(float) * a.n * 512));
	free(a.buf);
	free(b.buf);
	moe_ctx_destroy(res);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	free(path);
}
END_TEST

/*
 * No host code touches device memory: with the guarded CPU backend, device
 * memory is PROT_NONE outside backend calls, and every architecture runs,
 * resident and streamed through the host tier, to the same logits.
 */
START_TEST(engine_guarded)
{
	const char *arch = archs[_i];
	char *dir = tu_tmpdir(), path[512];
	struct moe_model *m;
	struct moe_ctx *ctx;
	struct moe_ctx_params p;
	struct all_logits plain[2], guarded[2];
	int32_t tok[12];

	ck_assert(mkmodel(dir, arch, "q8_0", arch_extra(arch), path, sizeof(path)));
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	prompt(tok, 12, 256);
	for (int guard = 0; guard < 2; guard++) {
		struct all_logits *out = guard ? guarded : plain;

		setenv("MOE_BACKEND_GUARD", guard ? "1" : "0", 1);
		for (int streamed = 0; streamed < 2; streamed++) {
			out[streamed] = (struct all_logits){ calloc(18 * 256, sizeof(float)), 0, 256 };
			moe_ctx_params_init(&p);
			p.n_threads = 2;
			p.n_ctx = 64;
			p.n_batch = 5;
			p.attn_chunk = 8;
			if (streamed) {
				p.vram_bytes = min_budget(m, 5);
				p.host_cache_bytes = 1ull << 20;
			}
			ck_assert_msg(moe_ctx_create(m, &p, &ctx) == 0, "%s", moe_errmsg());
			ck_assert_str_eq(moe_ctx_backend(ctx), "cpu");
			run_gen(ctx, tok, 12, &out[streamed]);
			moe_ctx_destroy(ctx);
		}
	}
	unsetenv("MOE_BACKEND_GUARD");
	for (int i = 0; i < 2; i++) {
		ck_assert_msg(!memcmp(plain[i].buf, guarded[i].buf, sizeof(float) * 17 * 256),
			      "%s: guarded run differs (%s)", arch, i ? "streamed" : "resident");
		ck_assert_msg(!memcmp(plain[0].buf, plain[i].buf, sizeof(float) * 17 * 256),
			      "%s: streamed differs from resident", arch);
	}
	for (int i = 0; i < 2; i++) {
		free(plain[i].buf);
		free(guarded[i].buf);
	}
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* F16 and Q8_0 KV caches stay close to F32 (their rounding is all that differs). */
START_TEST(engine_kv_types)
{
	char *dir = tu_tmpdir(), path[512];
	struct moe_model *m;
	struct moe_ctx_params p;
	struct moe_ctx *ctx;
	static const uint32_t types[] = { MOE_TYPE_F32, MOE_TYPE_F16, MOE_TYPE_Q8_0 };
	static const double bound[] = { 0, 0.01, 0.05 };
	float *ref = malloc(sizeof(float) * 30 * 256);
	int32_t tok[30];

	ck_assert(mkmodel(dir, "gpt-oss", "f32", "--sliding-window 8", path, sizeof(path)));
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	prompt(tok, 30, 256);
	for (size_t i = 0; i < MOE_ARRAY_SIZE(types); i++) {
		const struct moe_plan *pl;
		double worst = 0, mag = 0;

		moe_ctx_params_init(&p);
		p.n_threads = 2;
		p.n_ctx = 64;
		p.n_batch = 6;
		p.kv_type = types[i];
		ck_assert_msg(moe_ctx_create(m, &p, &ctx) == 0, "%s", moe_errmsg());
		pl = moe_ctx_plan(ctx);
		ck_assert_uint_eq(pl->kv_type, types[i]);
		ck_assert_ptr_nonnull(strstr(moe_ctx_describe(ctx), moe_type_name(types[i])));
		ck_assert_int_eq(moe_ctx_eval(ctx, tok, 30, 0, MOE_EVAL_ALL_LOGITS), 0);
		for (int t = 0; t < 30; t++)
			for (int v = 0; v < 256; v++) {
				float l = moe_ctx_logits(ctx, (uint32_t)t)[v];

				if (!i)
					ref[t * 256 + v] = l;
				worst = fmax(worst, fabs(l - ref[t * 256 + v]));
				mag = fmax(mag, fabs(ref[t * 256 + v]));
			}
		ck_assert_msg(worst <= bound[i] * mag, "KV %s: logits move by %g (largest %g)",
			      moe_type_name(types[i]), worst, mag);
		if (i)
			ck_assert_msg(worst > 0, "KV %s changed nothing: was it used?",
				      moe_type_name(types[i]));
		moe_ctx_destroy(ctx);
	}
	free(ref);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * Sliding-window layers keep a ring: going back a little re-evaluates to
 * the same logits, going back past what the ring still holds is refused.
 */
START_TEST(engine_ring_rewind)
{
	char *dir = tu_tmpdir(), path[512];
	struct moe_model *m;
	struct moe_ctx *ctx;
	int32_t tok[30];
	float first[256];

	ck_assert(mkmodel(dir, "gpt-oss", "f32", "--sliding-window 8", path, sizeof(path)));
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	ctx = make_ctx(m, 0, 4, 0);
	prompt(tok, 30, 256);
	ck_assert_int_eq(moe_ctx_eval(ctx, tok, 30, 0, MOE_EVAL_ALL_LOGITS), 0);
	memcpy(first, moe_ctx_logits(ctx, 28), sizeof(first));
	/* 8 + 4 - 1 = 11 cells hold positions 19..29; position 28 needs 21..27 */
	ck_assert_msg(moe_ctx_eval(ctx, tok + 28, 2, 28, MOE_EVAL_ALL_LOGITS) == 0, "%s",
		      moe_errmsg());
	ck_assert(!memcmp(first, moe_ctx_logits(ctx, 0), sizeof(first)));
	ck_assert_int_eq(moe_ctx_eval(ctx, tok + 10, 1, 10, 0), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "cannot go back to position 10"));
	/* from the start is always possible */
	ck_assert_int_eq(moe_ctx_eval(ctx, tok, 30, 0, MOE_EVAL_ALL_LOGITS), 0);
	ck_assert(!memcmp(first, moe_ctx_logits(ctx, 28), sizeof(first)));
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* A host tier of a few slots: hits and the demotions they cause compete for its slots. */
START_TEST(engine_host_cache_tiny)
{
	char *path = shared_model("qwen3moe");
	struct moe_model *m;
	struct moe_ctx *res, *ctx;
	struct moe_ctx_params p;
	struct moe_ctx_stats st;
	struct all_logits a, b;
	int32_t tok[24];

	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	res = make_ctx(m, 0, 8, 0);
	prompt(tok, 24, 512);
	a = (struct all_logits){ calloc((size_t)30 * 512, sizeof(float)), 0, 512 };
	b = (struct all_logits){ calloc((size_t)30 * 512, sizeof(float)), 0, 512 };
	run_gen(res, tok, 24, &a);
	for (uint32_t n_host = 1; n_host <= 8; n_host += n_host < 5 ? 4 : 3) {
		moe_ctx_params_init(&p);
		p.n_threads = 2;
		p.n_ctx = 128;
		p.n_batch = 8;
		p.vram_bytes = min_budget(m, 8);
		p.host_cache_bytes = n_host * moe_ctx_plan(res)->classes[0].slot_bytes;
		ck_assert_msg(moe_ctx_create(m, &p, &ctx) == 0, "%s", moe_errmsg());
		ck_assert_uint_eq(moe_ctx_plan(ctx)->n_host_slots, n_host);
		run_gen(ctx, tok, 24, &b);
		moe_ctx_get_stats(ctx, &st);
		if (n_host > 1)
			ck_assert_uint_gt(st.expert_host_hits, 0);
		ck_assert_msg(!memcmp(a.buf, b.buf, sizeof(float) * a.n * 512),
			      "%u host slots: logits differ", n_host);
		moe_ctx_destroy(ctx);
	}
	free(a.buf);
	free(b.buf);
	moe_ctx_destroy(res);
	moe_model_destroy(m);
	free(path);
}
END_TEST

/*
 * Three sequences evaluated together in batches (split past n_batch) give
 * the logits each gives alone, prompt and decode, and each keeps its own
 * KV cache: rewinding one leaves the others alone.
 */
START_TEST(engine_batch_sequences)
{
	const char *arch = _i ? "gpt-oss" : "qwen3moe";
	enum { S = 3, MAXP = 13, GEN = 4 };
	static const uint32_t len[S] = { 13, 5, 9 };
	char *dir = tu_tmpdir(), path[512];
	struct moe_model *m;
	struct moe_ctx_params p;
	struct moe_ctx *one, *all;
	int32_t tok[S][MAXP + GEN], bt[64], bp[64], bs[64];
	float *ref = malloc(sizeof(float) * S * (MAXP + GEN) * 256);
	uint8_t keep[64];
	uint32_t n = 0;
	double worst = 0;

	ck_assert(mkmodel(dir, arch, "q8_0", arch_extra(arch), path, sizeof(path)));
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	moe_ctx_params_init(&p);
	p.n_threads = 2;
	p.n_ctx = 32;
	p.n_batch = 8;
	for (int s = 0; s < S; s++)
		for (int i = 0; i < MAXP + GEN; i++)
			tok[s][i] = (int32_t)((s * 71 + i * 37 + 5) % 256);
	/* each sequence alone: its prompt, then GEN tokens one at a time */
	for (int s = 0; s < S; s++) {
		ck_assert_msg(moe_ctx_create(m, &p, &one) == 0, "%s", moe_errmsg());
		ck_assert_int_eq(moe_ctx_eval(one, tok[s], len[s], 0, MOE_EVAL_ALL_LOGITS), 0);
		memcpy(ref + (size_t)s * (MAXP + GEN) * 256, moe_ctx_logits(one, 0),
		       sizeof(float) * len[s] * 256);
		for (int g = 0; g < GEN; g++) {
			ck_assert_int_eq(moe_ctx_eval(one, &tok[s][len[s] + g], 1, len[s] + g, 0), 0);
			memcpy(ref + ((size_t)s * (MAXP + GEN) + len[s] + g) * 256,
			       moe_ctx_logits(one, 0), sizeof(float) * 256);
		}
		moe_ctx_destroy(one);
	}
	p.n_seq = S;
	ck_assert_msg(moe_ctx_create(m, &p, &all) == 0, "%s", moe_errmsg());
	/* the prompts interleaved, 27 tokens in batches of 8, every row kept */
	for (uint32_t i = 0; i < MAXP; i++)
		for (int s = 0; s < S; s++)
			if (i < len[s]) {
				bt[n] = tok[s][i];
				bp[n] = (int32_t)i;
				bs[n] = s;
				keep[n++] = 1;
			}
	{
		struct moe_batch b = { .tokens = bt, .pos = bp, .seq = bs, .logits = keep, .n = n };

		ck_assert_msg(moe_ctx_eval_batch(all, &b) == 0, "%s", moe_errmsg());
	}
	for (uint32_t i = 0; i < n; i++) {
		const float *l = moe_ctx_logits(all, i);
		const float *r = ref + ((size_t)bs[i] * (MAXP + GEN) + bp[i]) * 256;

		for (int v = 0; v < 256; v++)
			worst = fmax(worst, fabs(l[v] - r[v]));
	}
	for (int s = 0; s < S; s++)
		ck_assert_uint_eq(moe_ctx_seq_pos(all, s), len[s]);
	/* decode: one token of every sequence per step, the last token of each kept */
	for (int g = 0; g < GEN; g++) {
		struct moe_batch b = { .tokens = bt, .pos = bp, .seq = bs, .n = S };

		for (int s = 0; s < S; s++) {
			bt[s] = tok[s][len[s] + g];
			bp[s] = (int32_t)(len[s] + g);
			bs[s] = s;
		}
		ck_assert_msg(moe_ctx_eval_batch(all, &b) == 0, "%s", moe_errmsg());
		for (int s = 0; s < S; s++) {
			const float *l = moe_ctx_logits(all, (uint32_t)s);
			const float *r = ref + ((size_t)s * (MAXP + GEN) + len[s] + g) * 256;

			for (int v = 0; v < 256; v++)
				worst = fmax(worst, fabs(l[v] - r[v]));
		}
	}
	ck_assert_msg(worst < 1e-3, "%s: batched sequences differ from single ones by %g", arch,
		      worst);
	/* rewinding sequence 1 to position 3 leaves 0 and 2 where they were */
	{
		struct moe_batch b = { .tokens = &tok[1][3], .pos = (int32_t[]){ 3 },
				       .seq = (int32_t[]){ 1 }, .n = 1 };
		const float *r = ref + ((size_t)1 * (MAXP + GEN) + 3) * 256;

		ck_assert_int_eq(moe_ctx_eval_batch(all, &b), 0);
		ck_assert_uint_eq(moe_ctx_seq_pos(all, 1), 4);
		ck_assert_uint_eq(moe_ctx_seq_pos(all, 0), len[0] + GEN);
		ck_assert_int_eq(moe_ctx_seq_pos(all, 99), -EINVAL);
		for (int v = 0; v < 256; v++)
			ck_assert(fabs(moe_ctx_logits(all, 0)[v] - r[v]) < 1e-3);
	}
	/* errors name the token */
	{
		struct moe_batch b = { .tokens = bt, .pos = bp, .seq = bs, .n = 2 };

		bt[0] = bt[1] = 1;
		bp[0] = 0;
		bs[0] = 3;
		ck_assert_int_eq(moe_ctx_eval_batch(all, &b), -EINVAL);
		ck_assert_ptr_nonnull(strstr(moe_errmsg(), "sequence 3"));
		bs[0] = bs[1] = 2;
		bp[1] = 2;
		ck_assert_int_eq(moe_ctx_eval_batch(all, &b), -EINVAL);
		ck_assert_ptr_nonnull(strstr(moe_errmsg(), "consecutive"));
		bp[0] = 20;
		bp[1] = 21;
		ck_assert_int_eq(moe_ctx_eval_batch(all, &b), -EINVAL);
		ck_assert_ptr_nonnull(strstr(moe_errmsg(), "gap"));
		ck_assert_int_eq(moe_ctx_eval_batch(all, NULL), -EINVAL);
	}
	moe_ctx_destroy(all);
	free(ref);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* moe-bench decode runs its three configurations, reports the ratio to the bound and the
 * prefill rate; --resident runs only the first. */
START_TEST(engine_bench_decode)
{
	char cmd[1024], *out = NULL;
	int st;

	snprintf(cmd, sizeof(cmd), "%s decode --json --threads 1 --tokens 4 --prompt 4 %s",
		 tu_bin("moe-bench"), tu_shared(DIR "qwen3moe-f32.gguf"));
	st = tu_run(cmd, 0, &out);
	ck_assert_msg(st == 0, "%s -> %d: %s", cmd, st, out ? out : "");
	for (const char *const *k = (const char *const[]){ "\"bytes_per_token\":",
			"\"bound_tps\":", "\"resident_tps\":", "\"ratio\":", "\"vram50\":",
			"\"vram25\":", "\"hit_rate\":", "\"prefill_tps\":", NULL }; *k; k++)
		ck_assert_msg(strstr(out, *k) != NULL, "no %s in %s", *k, out);
	ck_assert_msg(strtod(strstr(out, "\"prefill_tps\":") + 14, NULL) > 0, "%s", out);
	free(out);
	out = NULL;
	/* --resident: the resident runs and the prefill rate, no budget runs */
	snprintf(cmd, sizeof(cmd), "%s decode --json --resident --threads 1 --tokens 2 --prompt 3 %s",
		 tu_bin("moe-bench"), tu_shared(DIR "qwen3moe-f32.gguf"));
	st = tu_run(cmd, 0, &out);
	ck_assert_msg(st == 0, "%s -> %d: %s", cmd, st, out ? out : "");
	ck_assert_msg(strstr(out, "\"resident_tps\":") && strstr(out, "\"prompt_tokens\": 3") &&
		      strstr(out, "\"cold_prefill_tps\":"), "%s", out);
	ck_assert_msg(!strstr(out, "\"vram50\":"), "budget runs with --resident: %s", out);
	free(out);
}
END_TEST

/* moe-run end to end: llama.cpp's greedy tokens, --json stats keys, --logits-out rows. */
START_TEST(engine_moe_run)
{
	char *dir = tu_tmpdir(), cmd[4096], lpath[512], *out = NULL, *p;
	int32_t tok[N_PROMPT], want[N_GREEDY];
	float *want_l, *got;
	size_t len;
	int st;

	ck_assert_int_eq(tu_read_ints(tu_shared(DIR "tokens.txt"), tok, N_PROMPT), N_PROMPT);
	ck_assert_int_eq(tu_read_ints(tu_shared(DIR "llama4-f32.greedy.txt"), want, 8), 8);
	snprintf(lpath, sizeof(lpath), "%s/logits.f32", dir);
	p = cmd + snprintf(cmd, sizeof(cmd), "%s -m %s --threads 2 -n 8 --json --stats "
			   "--backend cpu --vram 6M --logits-out %s --tokens ", tu_bin("moe-run"),
			   tu_shared(DIR "llama4-f32.gguf"), lpath);
	for (int i = 0; i < N_PROMPT; i++)
		p += sprintf(p, "%s%d", i ? "," : "", tok[i]);
	st = tu_run(cmd, 0, &out);
	ck_assert_msg(st == 0, "%s -> %d: %s", cmd, st, out ? out : "");
	p = strstr(out, "\"tokens\": [");
	ck_assert_ptr_nonnull(p);
	p += strlen("\"tokens\": [");
	for (int g = 0; g < 8; g++) {
		ck_assert_int_eq((int)strtol(p, &p, 10), want[g]);
		p++;
	}
	ck_assert_ptr_nonnull(strstr(out, "\"backend\": \"cpu\""));
	for (const char *const *k = (const char *const[]){ "prefill_tps", "decode_tps", "hit_rate",
			"bytes_read", "read_gbps", "stall_s", NULL }; *k; k++) {
		char key[64];

		snprintf(key, sizeof(key), "\"%s\":", *k);
		ck_assert_msg(strstr(out, key) != NULL, "no %s in %s", key, out);
	}
	/* 64 prompt rows, then one row per generated token fed back (7) */
	got = tu_read_file(lpath, &len);
	ck_assert_ptr_nonnull(got);
	ck_assert_uint_eq(len, sizeof(float) * 512 * (N_PROMPT + 7));
	want_l = tu_read_llamacpp("llama4", "logits.f32", sizeof(float) * N_PROMPT * 512);
	for (int i = 0; i < N_PROMPT * 512; i++)
		ck_assert_msg(fabsf(got[i] - want_l[i]) < 1e-4f, "logit %d: %g vs %g", i, got[i],
			      want_l[i]);
	free(out);
	free(got);
	free(want_l);

	/* errors: exit 1 with the reason, exit 2 for usage */
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1,9999", tu_bin("moe-run"),
		 tu_shared(DIR "llama4-f32.gguf"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "out of range"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1 --vram 1M", tu_bin("moe-run"),
		 tu_shared(DIR "llama4-f32.gguf"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "needs at least"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s -m %s -p hi", tu_bin("moe-run"),
		 tu_shared(DIR "llama4-f32.gguf"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "--tokens"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s --tokens 1 --vram lots", tu_bin("moe-run"));
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1 --backend tpu", tu_bin("moe-run"),
		 tu_shared(DIR "llama4-f32.gguf"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "unknown backend 'tpu'"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1 --kv-type q4_K", tu_bin("moe-run"),
		 tu_shared(DIR "llama4-f32.gguf"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 2);
	ck_assert_ptr_nonnull(strstr(out, "expected f32, f16 or q8_0"));
	free(out);
	/* a q8_0 KV cache runs and says so */
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1,2,3 -n 2 --stats --kv-type q8_0",
		 tu_bin("moe-run"), tu_shared(DIR "llama4-f32.gguf"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 0);
	ck_assert_ptr_nonnull(strstr(out, "q8_0)"));
	free(out);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* Logits of @ctx for a fixed prompt, into @out (n_vocab floats). */
static void eval_fixed(struct moe_ctx *ctx, float *out)
{
	static const int32_t tok[5] = { 5, 17, 3, 99, 42 };

	ck_assert_msg(moe_ctx_eval(ctx, tok, 5, 0, 0) == 0, "%s", moe_errmsg());
	memcpy(out, moe_ctx_logits(ctx, 0), sizeof(float) * moe_ctx_n_vocab(ctx));
}

/*
 * CPU contexts on one model handle share one copy of the resident tensors,
 * whatever their budgets, for as long as any of them lives; a context on
 * another handle of the same file, and one in the guarded test mode, hold
 * their own.  All compute the same logits.
 */
/*
 * Every expert fits the CPU backend: a file the page cache holds is copied
 * from it (buffered), one it does not is read past it (O_DIRECT, where the
 * filesystem takes it); the logits are the same either way.
 */
START_TEST(engine_cached_file_read_buffered)
{
	char *dir = tu_tmpdir(), path[512];
	struct moe_model *m;
	struct moe_ctx *ctx;
	float *l0;
	uint32_t nv;
	int32_t tok[4] = { 1, 2, 3, 4 };
	int fd;

	ck_assert(mkmodel(dir, "qwen3moe", "q8_0", "--experts 8", path, sizeof(path)));
	ck_assert_int_eq(moe_model_open(path, &m), 0);
	/* a file just written is in the page cache */
	ctx = make_ctx(m, 0, 0, 0);
	ck_assert_msg(strstr(moe_ctx_describe(ctx), "buffered"), "%s", moe_ctx_describe(ctx));
	nv = moe_ctx_n_vocab(ctx);
	l0 = malloc(sizeof(float) * nv);
	ck_assert_int_eq(moe_ctx_eval(ctx, tok, 4, 0, 0), 0);
	memcpy(l0, moe_ctx_logits(ctx, 0), sizeof(float) * nv);
	moe_ctx_destroy(ctx);
	/* out of the page cache: read past it where the filesystem allows that */
	fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(fdatasync(fd), 0);
	ck_assert_int_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
	close(fd);
	ctx = make_ctx(m, 0, 0, 0);
	if (!strstr(moe_ctx_describe(ctx), "tmpfs") && !strstr(moe_ctx_describe(ctx), "refused"))
		ck_assert_msg(strstr(moe_ctx_describe(ctx), "O_DIRECT"), "%s",
			      moe_ctx_describe(ctx));
	ck_assert_int_eq(moe_ctx_eval(ctx, tok, 4, 0, 0), 0);
	ck_assert_int_eq(memcmp(l0, moe_ctx_logits(ctx, 0), sizeof(float) * nv), 0);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	free(l0);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(engine_contexts_share_resident)
{
	char *dir = tu_tmpdir(), path[512];
	struct moe_model *m, *m2;
	struct moe_ctx *a, *b, *c, *g;
	struct moe_ctx_stats sa, sb, sc, sg;
	float *la, *lb, *lc, *lg;
	uint32_t nv;

	mkmodel(dir, "qwen3moe", "q8_0", "--experts 8", path, sizeof(path));
	ck_assert_int_eq(moe_model_open(path, &m), 0);
	ck_assert_int_eq(moe_model_open(path, &m2), 0);
	a = make_ctx(m, 0, 0, 0);
	b = make_ctx(m, min_budget(m, 0), 0, 0);
	c = make_ctx(m2, 0, 0, 0);
	nv = moe_ctx_n_vocab(a);
	la = malloc(sizeof(float) * nv);
	lb = malloc(sizeof(float) * nv);
	lc = malloc(sizeof(float) * nv);
	lg = malloc(sizeof(float) * nv);
	ck_assert(la && lb && lc && lg);
	eval_fixed(a, la);
	eval_fixed(b, lb);
	eval_fixed(c, lc);
	ck_assert_int_eq(moe_ctx_get_stats(a, &sa), 0);
	ck_assert_int_eq(moe_ctx_get_stats(b, &sb), 0);
	ck_assert_int_eq(moe_ctx_get_stats(c, &sc), 0);
	ck_assert_ptr_nonnull(a->share);
	ck_assert_ptr_eq(a->share, b->share);
	ck_assert_ptr_nonnull(c->share);
	ck_assert_ptr_ne(a->share, c->share);
	ck_assert_uint_gt(sa.resident_shared, 0);
	ck_assert_uint_le(sa.resident_shared, sa.resident_bytes);
	ck_assert_uint_eq(sb.resident_shared, sa.resident_shared);
	/* each budget still counts them, as the plan does */
	ck_assert_uint_eq(sa.vram_used, moe_ctx_plan(a)->device_bytes);
	ck_assert_uint_eq(sb.vram_used, moe_ctx_plan(b)->device_bytes);
	ck_assert_uint_eq(sc.vram_used, moe_ctx_plan(c)->device_bytes);
	ck_assert(!memcmp(la, lb, sizeof(float) * nv));
	ck_assert(!memcmp(la, lc, sizeof(float) * nv));

	/* the first context gone, the second still reads the shared copy */
	moe_ctx_destroy(a);
	eval_fixed(b, lb);
	ck_assert(!memcmp(la, lb, sizeof(float) * nv));

	setenv("MOE_BACKEND_GUARD", "1", 1);
	g = make_ctx(m, 0, 0, 0);
	unsetenv("MOE_BACKEND_GUARD");
	ck_assert_ptr_null(g->share);
	eval_fixed(g, lg);
	ck_assert_int_eq(moe_ctx_get_stats(g, &sg), 0);
	ck_assert_uint_eq(sg.resident_shared, 0);
	ck_assert(!memcmp(la, lg, sizeof(float) * nv));
	moe_ctx_destroy(g);
	moe_ctx_destroy(b);
	moe_ctx_destroy(c);
	ck_assert_ptr_null(m->shares);
	ck_assert_ptr_null(m2->shares);
	moe_model_destroy(m);
	moe_model_destroy(m2);
	free(la);
	free(lb);
	free(lc);
	free(lg);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

Suite *suite_engine(void)
{
	Suite *s = suite_create("engine");
	TCase *tc = tcase_create("forward");
	bool shared = tu_shared(DIR "tokens.txt") != NULL;
	char *dir;

	tcase_set_timeout(tc, 120);
	if (shared) {
		tcase_add_loop_test(tc, engine_matches_llamacpp, 0, 2 * MOE_ARRAY_SIZE(ll_models));
		tcase_add_test(tc, engine_deterministic);
		tcase_add_test(tc, engine_decode_equals_prefill);
		tcase_add_test(tc, engine_errors);
		tcase_add_test(tc, engine_moe_run);
		tcase_add_test(tc, engine_host_cache);
		tcase_add_test(tc, engine_host_cache_tiny);
		tcase_add_test(tc, engine_bench_decode);
	} else {
		tu_skip("engine_matches_llamacpp", "no " DIR " in the shared tree");
		tu_skip("engine_deterministic", "no " DIR " in the shared tree");
		tu_skip("engine_decode_equals_prefill", "no " DIR " in the shared tree");
		tu_skip("engine_errors", "no " DIR " in the shared tree");
		tu_skip("engine_moe_run", "no " DIR " in the shared tree");
		tu_skip("engine_host_cache", "no " DIR " in the shared tree");
		tu_skip("engine_host_cache_tiny", "no " DIR " in the shared tree");
		tu_skip("engine_bench_decode", "no " DIR " in the shared tree");
	}
	tcase_add_loop_test(tc, engine_matches_reference, 0, MOE_ARRAY_SIZE(archs));
	{
		struct tiny t[TINY_MAX];
		int n = read_tiny(t, TINY_MAX);

		/* an unreadable list fails the test instead of running nothing */
		tcase_add_loop_test(tc, engine_matches_llamacpp_tiny, 0, n > 0 ? n : 1);
	}
	/* quant types this build's moe-mkmodel cannot write yet are skipped, by name */
	dir = tu_tmpdir();
	for (size_t i = 0; i < MOE_ARRAY_SIZE(combos); i++) {
		char name[96];

		if (can_make(dir, combos[i].arch, combos[i].type)) {
			tcase_add_loop_test(tc, engine_evicting_equals_resident, (int)i, (int)i + 1);
		} else {
			snprintf(name, sizeof(name), "engine_evicting_equals_resident[%s %s]",
				 combos[i].arch, combos[i].type);
			tu_skip(name, "moe-mkmodel cannot write this type in this build");
		}
	}
	tu_rmtree(dir);
	free(dir);
	tcase_add_test(tc, engine_budget_honoured);
	tcase_add_test(tc, engine_ple_streamed);
	tcase_add_test(tc, engine_ple_evicting);
	tcase_add_loop_test(tc, engine_dense_streamed, 0, MOE_ARRAY_SIZE(dense_models));
	tcase_add_loop_test(tc, engine_guarded, 0, MOE_ARRAY_SIZE(archs));
	tcase_add_test(tc, engine_kv_types);
	tcase_add_test(tc, engine_ring_rewind);
	tcase_add_test(tc, engine_contexts_share_resident);
	tcase_add_test(tc, engine_cached_file_read_buffered);
	tcase_add_loop_test(tc, engine_batch_sequences, 0, 2);
	suite_add_tcase(s, tc);
	return s;
}
