// SPDX-License-Identifier: MIT
/*
 * Routing statistics and prefetch in the live engine: the statistics file
 * (round trip, version, truncation, corruption, another model's file) and
 * the engine saving, loading and warming from it; prefetching never
 * changing logits, streamed or resident; prefetch lowering stall time and
 * demand misses on a model with structured routers; traces recorded by the
 * engine; and the tools (moe-run --trace-out, moectl stats, moectl trace
 * simulate).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/routestats.h"
#include "cache/trace.h"
#include "engine/engine.h"
#include "io/io.h"
#include "util/util.h"
#include "moe/moe.h"
#include "testutil.h"

static void mkmodel(const char *dir, const char *name, const char *args, char *path, size_t len)
{
	char cmd[2048], *out = NULL;

	snprintf(path, len, "%s/%s", dir, name);
	snprintf(cmd, sizeof(cmd), "%s -o %s -q %s", tu_bin("moe-mkmodel"), path, args);
	ck_assert_msg(tu_run(cmd, 1, &out) == 0, "%s: %s", cmd, out ? out : "");
	free(out);
}

/* A small model whose routers prefer some experts and agree across layers. */
#define STRUCTURED "--arch qwen3moe --type q8_0 --layers 6 --vocab 128 --embd 128 " \
	"--experts 16 --experts-used 2 --expert-ff 256 --router-skew 1.5 --layer-correlation 0.9"

static uint64_t need_bytes(struct moe_model *m)
{
	struct moe_ctx_params p;
	struct moe_ctx *ctx = NULL;
	unsigned long long need = 0;
	const char *at;

	moe_ctx_params_init(&p);
	p.n_ctx = 64;
	p.vram_bytes = 1;
	ck_assert_int_eq(moe_ctx_create(m, &p, &ctx), -ENOMEM);
	at = strchr(strstr(moe_errmsg(), "needs at least"), '(');
	ck_assert(at && sscanf(at, "(%llu bytes)", &need) == 1);
	return need;
}

struct run_cfg {
	uint64_t vram;
	const char *prefetch, *policy, *state_dir;
	uint32_t flags;
	enum moe_io_backend io;
};

static struct moe_ctx *make(struct moe_model *m, const struct run_cfg *c)
{
	struct moe_ctx_params p;
	struct moe_ctx *ctx = NULL;
	int ret;

	moe_ctx_params_init(&p);
	p.n_threads = 2;
	p.n_ctx = 64;
	p.n_batch = 8;
	p.vram_bytes = c->vram;
	p.prefetch = c->prefetch;
	p.policy = c->policy;
	p.state_dir = c->state_dir;
	p.flags = c->flags;
	p.io.backend = c->io;
	ret = moe_ctx_create(m, &p, &ctx);
	ck_assert_msg(ret == 0, "moe_ctx_create: %s", moe_errmsg());
	return ctx;
}

struct logits {
	float *buf;
	size_t n;
	uint32_t vocab;
};

static int keep(void *arg, const float *l, uint32_t n_rows, int32_t next)
{
	struct logits *a = arg;

	(void)next;
	a->buf = realloc(a->buf, sizeof(float) * (a->n + n_rows) * a->vocab);
	memcpy(a->buf + a->n * a->vocab, l, sizeof(float) * n_rows * a->vocab);
	a->n += n_rows;
	return 0;
}

static void gen(struct moe_ctx *ctx, uint32_t n_prompt, uint32_t n_gen, struct logits *a)
{
	int32_t tok[32];

	for (uint32_t i = 0; i < n_prompt; i++)
		tok[i] = (int32_t)((i * 37 + 11) % moe_ctx_n_vocab(ctx));
	a->vocab = moe_ctx_n_vocab(ctx);
	ck_assert_msg(moe_ctx_generate(ctx, tok, n_prompt, n_gen, NULL, MOE_EVAL_ALL_LOGITS, keep,
				       a) == (int)n_gen, "%s", moe_errmsg());
}

/* ------------------------------------------------------------ statistics files */

START_TEST(stats_file)
{
	char *dir = tu_tmpdir(), a[512], b[512], state[512], path[4096], cmd[8400];
	struct moe_model *m, *m2;
	struct moe_routestats *rs, *rs2;
	struct moe_routestats_info info;
	struct moe_ctx *ctx;
	struct moe_ctx_stats st1, st2;
	struct logits l = { 0 };
	struct run_cfg cfg = { 0 };
	uint8_t *buf;
	size_t len;

	mkmodel(dir, "a.gguf", STRUCTURED, a, sizeof(a));
	mkmodel(dir, "b.gguf", STRUCTURED " --seed 9", b, sizeof(b));
	snprintf(state, sizeof(state), "%s/state/deeper", dir);
	ck_assert_int_eq(moe_model_open(a, &m), 0);
	ck_assert_int_eq(moe_model_open(b, &m2), 0);
	/* the identity does not depend on the path; another model has another */
	{
		uint64_t s1, h1, s2, h2;
		char c[512];
		struct moe_model *mc;

		snprintf(c, sizeof(c), "%s/copy.gguf", dir);
		snprintf(cmd, sizeof(cmd), "cp %s %s", a, c);
		ck_assert_int_eq(tu_run(cmd, 0, NULL), 0);
		ck_assert_int_eq(moe_model_open(c, &mc), 0);
		ck_assert_int_eq(moe_model_identity(m, &s1, &h1), 0);
		ck_assert_int_eq(moe_model_identity(mc, &s2, &h2), 0);
		ck_assert(s1 == s2 && h1 == h2);
		ck_assert_int_eq(moe_model_identity(m2, &s2, &h2), 0);
		ck_assert(h1 != h2);
		moe_model_destroy(mc);
	}
	/* a run saves what it routed; the next one loads it and starts warm */
	cfg.vram = need_bytes(m) + (1 << 20);
	cfg.state_dir = state;
	ctx = make(m, &cfg);
	ck_assert_ptr_nonnull(moe_ctx_routestats(ctx));
	gen(ctx, 12, 8, &l);
	moe_ctx_get_stats(ctx, &st1);
	moe_ctx_destroy(ctx);
	ck_assert_int_eq(moe_routestats_path(m, state, path, sizeof(path)), 0);
	ck_assert_int_eq(access(path, R_OK), 0);
	ck_assert_int_eq(moe_routestats_load(path, m, &rs), 0);
	moe_routestats_info(rs, &info);
	ck_assert_uint_eq(info.tokens, 12 + 7);
	ck_assert_uint_eq(info.n_layer, 6);
	ck_assert_uint_eq(moe_routestats_layer_tokens(rs, 3), 19);
	{
		uint64_t sum = 0, co = 0;

		for (uint32_t e = 0; e < 16; e++) {
			sum += moe_routestats_count(rs, 3, e);
			for (uint32_t f = 0; f < 16; f++)
				co += moe_routestats_coactivation(rs, 3, e, f);
		}
		ck_assert_uint_eq(sum, 2 * 19);
		ck_assert_uint_eq(co, 2 * 19);
	}
	ctx = make(m, &cfg);
	ck_assert_uint_eq(moe_ctx_routestats(ctx)->tokens, 19);
	free(l.buf);
	l = (struct logits){ 0 };
	gen(ctx, 12, 8, &l);
	moe_ctx_get_stats(ctx, &st2);
	ck_assert_msg(st2.expert_misses < st1.expert_misses, "warm start: %llu misses, cold %llu",
		      (unsigned long long)st2.expert_misses, (unsigned long long)st1.expert_misses);
	moe_ctx_destroy(ctx);

	/* round trip */
	snprintf(b, sizeof(b), "%s/copy.stats", dir);
	ck_assert_int_eq(moe_routestats_save(rs, b), 0);
	ck_assert_int_eq(moe_routestats_load(b, m, &rs2), 0);
	for (uint32_t l2 = 0; l2 < 6; l2++)
		for (uint32_t e = 0; e < 16; e++) {
			ck_assert_uint_eq(moe_routestats_count(rs, l2, e),
					  moe_routestats_count(rs2, l2, e));
			for (uint32_t f = 0; f < 16; f++)
				ck_assert_uint_eq(moe_routestats_transition(rs, l2, e, f),
						  moe_routestats_transition(rs2, l2, e, f));
		}
	moe_routestats_destroy(rs2);
	/* another model's file */
	ck_assert_int_eq(moe_routestats_load(b, m2, &rs2), -ESTALE);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "another model"));
	/* another version */
	buf = tu_read_file(b, &len);
	buf[8] = 7;
	ck_assert_int_eq(tu_write_file(b, buf, len), 0);
	ck_assert_int_eq(moe_routestats_load(b, m, &rs2), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "version 7"));
	buf[8] = 1;
	/* corruption */
	buf[len / 2] ^= 0x40;
	ck_assert_int_eq(tu_write_file(b, buf, len), 0);
	ck_assert_int_eq(moe_routestats_load(b, m, &rs2), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "checksum"));
	buf[len / 2] ^= 0x40;
	/* truncation */
	ck_assert_int_eq(tu_write_file(b, buf, len - 9), 0);
	ck_assert_int_eq(moe_routestats_load(b, m, &rs2), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "truncated"));
	ck_assert_int_eq(tu_write_file(b, "MOERSTAT", 8), 0);
	ck_assert_int_eq(moe_routestats_load(b, m, &rs2), -EINVAL);
	ck_assert_int_eq(tu_write_file(b, "hello, world", 12), 0);
	ck_assert_int_eq(moe_routestats_load(b, m, &rs2), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "not a routing statistics file"));
	ck_assert_int_eq(moe_routestats_load("/nonexistent/x.stats", m, &rs2), -ENOENT);

	/* the engine ignores a corrupt file, says so, and replaces it */
	buf[len / 3] ^= 0x1;
	ck_assert_int_eq(tu_write_file(path, buf, len), 0);
	ctx = make(m, &cfg);
	ck_assert_uint_eq(moe_ctx_routestats(ctx)->tokens, 0);
	free(l.buf);
	l = (struct logits){ 0 };
	gen(ctx, 4, 2, &l);
	moe_ctx_destroy(ctx);
	ck_assert_int_eq(moe_routestats_load(path, m, &rs2), 0);
	ck_assert_uint_eq(rs2->tokens, 5);
	moe_routestats_destroy(rs2);
	/* so does a file of another model put in its place */
	ck_assert_int_eq(moe_routestats_save(rs, path), 0);
	{
		char other[4096];

		ck_assert_int_eq(moe_routestats_path(m2, state, other, sizeof(other)), 0);
		snprintf(cmd, sizeof(cmd), "cp %s %s", path, other);
		ck_assert_int_eq(tu_run(cmd, 0, NULL), 0);
		ctx = make(m2, &cfg);
		ck_assert_uint_eq(moe_ctx_routestats(ctx)->tokens, 0);
		moe_ctx_destroy(ctx);
	}
	free(buf);
	free(l.buf);
	moe_routestats_destroy(rs);
	moe_model_destroy(m);
	moe_model_destroy(m2);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ logits */

/* Prefetching moves data, never results: the same logits with and without, streamed or not. */
START_TEST(prefetch_keeps_logits)
{
	static const char *const pf[] = { NULL, "mix:depth=2,min=0.3", "trans:min=0.2", "spec" };
	char *dir = tu_tmpdir(), path[512];
	struct moe_model *m;
	struct logits ref = { 0 };
	uint64_t need;

	mkmodel(dir, "s.gguf", STRUCTURED, path, sizeof(path));
	ck_assert_int_eq(moe_model_open(path, &m), 0);
	need = need_bytes(m);
	for (int streamed = 0; streamed < 2; streamed++)
		for (size_t i = 0; i < MOE_ARRAY_SIZE(pf); i++) {
			struct run_cfg c = { .vram = streamed ? need + (512 << 10) : 0,
					     .prefetch = pf[i], .policy = i % 2 ? "stats" : NULL };
			struct moe_ctx *ctx = make(m, &c);
			struct logits l = { 0 };
			struct moe_ctx_stats st;

			gen(ctx, 20, 8, &l);
			moe_ctx_get_stats(ctx, &st);
			if (!ref.buf) {
				ref = l;
			} else {
				ck_assert_uint_eq(l.n, ref.n);
				ck_assert_msg(!memcmp(l.buf, ref.buf, sizeof(float) * l.n * l.vocab),
					      "%s, prefetch %s: logits differ", streamed ? "streamed" :
					      "resident", pf[i] ? pf[i] : "none");
				free(l.buf);
			}
			if (streamed && pf[i])
				ck_assert_uint_gt(st.prefetches, 0);
			if (!streamed)
				ck_assert_uint_eq(st.prefetches, 0);
			moe_ctx_destroy(ctx);
		}
	free(ref.buf);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ stalls */

/*
 * On a slow disk (the pread backend waits 2 ms before each read), fetching
 * the next layer's experts while this one waits for its own lowers both the
 * demand misses and the time stalled.
 */
START_TEST(prefetch_lowers_stall)
{
	char *dir = tu_tmpdir(), path[512];
	struct moe_model *m;
	struct moe_ctx_stats st[2];
	struct moe_ctx_layer_stats ls;
	double layers = 0;

	mkmodel(dir, "s.gguf", STRUCTURED, path, sizeof(path));
	ck_assert_int_eq(moe_model_open(path, &m), 0);
	moe_io_fault_delay_us = 2000;
	for (int i = 0; i < 2; i++) {
		struct run_cfg c = { .vram = need_bytes(m) + (1 << 20), .io = MOE_IO_PREAD,
				     .prefetch = i ? "mix:depth=2,min=0.4" : NULL };
		struct moe_ctx *ctx = make(m, &c);
		struct logits l = { 0 };

		gen(ctx, 4, 24, &l);
		moe_ctx_get_stats(ctx, &st[i]);
		if (i)
			for (uint32_t k = 0; moe_ctx_layer_stats(ctx, k, &ls) == 0; k++)
				layers += ls.stall_s;
		ck_assert_int_eq(moe_ctx_layer_stats(ctx, 99, &ls), -EINVAL);
		free(l.buf);
		moe_ctx_destroy(ctx);
	}
	moe_io_fault_delay_us = 0;
	ck_assert_msg(st[1].expert_misses < st[0].expert_misses, "misses: %llu with prefetch, "
		      "%llu without", (unsigned long long)st[1].expert_misses,
		      (unsigned long long)st[0].expert_misses);
	/*
	 * Fewer demand misses is what prefetch promises here; how much less time
	 * the run stalls depends on the machine's load (a timing, so a benchmark's
	 * business: moe-bench prefetch), and is not asserted.
	 */
	ck_assert_uint_gt(st[1].prefetch_used, 0);
	ck_assert(st[1].prefetch_precision > 0 && st[1].prefetch_recall > 0);
	ck_assert(st[1].prefetch_bytes > 0);
	/* the per-layer stalls add up to the whole, less the warm-up outside any layer */
	ck_assert(layers <= st[1].stall_s + 1e-9);
	ck_assert(layers > 0);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ traces and tools */

struct seen {
	int32_t ids[64][6][2];
	uint32_t n;
};

static void see(void *arg, uint32_t layer, const int32_t *pos, uint32_t n_tok, const float *lg,
		uint32_t n_expert, int32_t *sel, uint32_t K)
{
	struct seen *s = arg;

	(void)lg;
	(void)n_expert;
	for (uint32_t t = 0; t < n_tok; t++)
		for (uint32_t j = 0; j < 2; j++)
			s->ids[pos[t]][layer][j] = sel[t * K + j];
	s->n = MOE_MAX(s->n, (uint32_t)pos[n_tok - 1] + 1);
}

START_TEST(trace_recorded)
{
	char *dir = tu_tmpdir(), path[512], tpath[512], spath[512], cmd[2048], *out;
	struct moe_model *m;
	struct moe_ctx *ctx;
	struct moe_trace *t;
	struct moe_trace_info ti;
	struct seen *s = calloc(1, sizeof(*s));
	struct logits l = { 0 };
	struct run_cfg c = { 0 };
	int32_t ids[8];

	mkmodel(dir, "s.gguf", STRUCTURED, path, sizeof(path));
	ck_assert_int_eq(moe_model_open(path, &m), 0);
	c.vram = need_bytes(m) + (1 << 20);
	c.prefetch = "mix:depth=2";
	ctx = make(m, &c);
	snprintf(tpath, sizeof(tpath), "%s/run.trace", dir);
	ck_assert_int_eq(moe_ctx_trace_start(ctx, tpath, 0x8), -EINVAL);
	ck_assert_int_eq(moe_ctx_trace_start(ctx, tpath, MOE_TRACE_PREDICTIONS), 0);
	moe_ctx_set_route_hook(ctx, see, s);
	gen(ctx, 10, 6, &l);
	ck_assert_int_eq(moe_ctx_trace_stop(ctx), 0);
	moe_ctx_destroy(ctx);
	ck_assert_int_eq(moe_trace_open(tpath, &t), 0);
	moe_trace_info(t, &ti);
	ck_assert_uint_eq(ti.n_tok, 15);
	ck_assert_uint_eq(ti.n_tok, s->n);
	ck_assert_uint_eq(ti.n_seq, 1);
	ck_assert_uint_eq(ti.depth, 2);
	ck_assert_uint_eq(ti.n_expert, 16);
	for (uint64_t tok = 0; tok < ti.n_tok; tok++)
		for (uint32_t layer = 0; layer < 6; layer++) {
			ck_assert_int_eq(moe_trace_get(t, tok, layer, ids, 8), 2);
			ck_assert_int_eq(ids[0], s->ids[tok][layer][0]);
			ck_assert_int_eq(ids[1], s->ids[tok][layer][1]);
			/* predictions from 1 and 2 layers before, none for the first layers */
			ck_assert_int_eq(moe_trace_prediction(t, tok, layer, 1, ids, 8),
					 layer >= 1 ? 2 : 0);
			ck_assert_int_eq(moe_trace_prediction(t, tok, layer, 2, ids, 8),
					 layer >= 2 ? 2 : 0);
		}
	moe_trace_destroy(t);
	/* without a prefetcher that speculates there is nothing to record */
	c.prefetch = "trans";
	ctx = make(m, &c);
	ck_assert_int_eq(moe_ctx_trace_start(ctx, tpath, MOE_TRACE_PREDICTIONS), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "spec or mix"));
	moe_ctx_destroy(ctx);

	/* moe-run records one too, and remembers what it routed */
	snprintf(spath, sizeof(spath), "%s/state", dir);
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1,2,3 -n 6 --vram %llu --prefetch mix "
		 "--policy stats --trace-out %s --trace-predictions --state-dir %s --stats --json",
		 tu_bin("moe-run"), path, (unsigned long long)c.vram, tpath, spath);
	ck_assert_msg(tu_run(cmd, 0, &out) == 0, "%s", out);
	for (const char *const *k = (const char *const[]){ "\"prefetch_precision\":",
			"\"prefetch_recall\":", "\"prefetch_unused_bytes\":", "\"layer_stall_s\": [",
			NULL }; *k; k++)
		ck_assert_msg(strstr(out, *k), "no %s in %s", *k, out);
	free(out);
	ck_assert_int_eq(moe_trace_open(tpath, &t), 0);
	moe_trace_info(t, &ti);
	ck_assert_uint_eq(ti.n_tok, 3 + 5);
	moe_trace_destroy(t);
	/* moectl stats reads what moe-run saved */
	snprintf(cmd, sizeof(cmd), "%s stats --state-dir %s --json %s", tu_bin("moectl"), spath,
		 path);
	ck_assert_msg(tu_run(cmd, 0, &out) == 0, "%s", out);
	ck_assert_msg(strstr(out, "\"tokens\": 8") && strstr(out, "\"entropy\":") &&
		      strstr(out, "\"transition\":") && strstr(out, "\"top\": [{\"expert\":"),
		      "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s stats --state-dir %s --csv %s", tu_bin("moectl"), spath, path);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	ck_assert_msg(!strncmp(out, "layer,tokens,entropy_bits,", 26) && strstr(out, "\n5,8,"),
		      "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s stats --trace %s", tu_bin("moectl"), tpath);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	ck_assert_msg(strstr(out, "8 tokens, 6 layers x 16 experts"), "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s stats --state-dir %.400s/none %s", tu_bin("moectl"), dir,
		 path);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_msg(strstr(out, "no routing statistics") && strstr(out, "moe-run"), "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s stats --json --csv %s", tu_bin("moectl"), path);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
	/* --trace-predictions needs --trace-out; both need a speculating prefetcher */
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1 --trace-predictions", tu_bin("moe-run"),
		 path);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1 -n 1 --no-state --trace-out %s "
		 "--trace-predictions", tu_bin("moe-run"), path, tpath);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "spec or mix"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1 -n 1 --no-state --prefetch guess",
		 tu_bin("moe-run"), path);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "unknown prefetcher 'guess'"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1 -n 1 --no-state --policy belady",
		 tu_bin("moe-run"), path);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "offline"));
	free(out);
	free(l.buf);
	free(s);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(tool_simulate)
{
	char *dir = tu_tmpdir(), tpath[512], mpath[512], cmd[2048], *out, *p;
	FILE *f;
	uint64_t seed = 1;
	int rows = 0;

	snprintf(tpath, sizeof(tpath), "%s/t.trace", dir);
	f = fopen(tpath, "w");
	fprintf(f, "# moe-trace 1 layers=3 experts=8 depth=1\n");
	for (int s = 0; s < 4; s++) {
		fprintf(f, "S %d seq%d\n", s, s);
		for (int i = 0; i < 40; i++) {
			int e = (int)(tu_rand(&seed) % 8);

			fprintf(f, "%d %d %d,%d/- %d,%d/%d,%d %d,%d/%d,%d\n", s, i, e, (e + 1) % 8,
				(e + 2) % 8, (e + 5) % 8, (e + 2) % 8, (e + 5) % 8, (e + 3) % 8,
				(e + 4) % 8, (e + 3) % 8, (e + 6) % 8);
		}
	}
	fclose(f);
	snprintf(cmd, sizeof(cmd), "%s trace simulate %s --slots 25%%,8 --policy all --prefetch all "
		 "--json --read-gbps 5 --layer-us 200 --expert-bytes 1M --seqs 2:4 --learn 0:2",
		 tu_bin("moectl"), tpath);
	ck_assert_msg(tu_run(cmd, 0, &out) == 0, "%s", out);
	for (const char *const *k = (const char *const[]){ "\"policy\": \"belady\"",
			"\"policy\": \"stats\"", "\"prefetch\": \"mix\"", "\"hit_rate\":",
			"\"miss_bytes_per_token\":", "\"fetched_bytes_per_token\":",
			"\"prefetch_precision\":", "\"prefetch_recall\":", "\"tokens_per_s\":",
			"\"slots\": 6", "\"slots\": 8", NULL }; *k; k++)
		ck_assert_msg(strstr(out, *k), "no %s in %s", *k, out);
	for (p = out; (p = strstr(p, "\"policy\":")); p++)
		rows++;
	/* per slot count: belady, then 3 policies x 5 prefetchers */
	ck_assert_int_eq(rows, 2 * (1 + 3 * 5));
	ck_assert(out[0] == '[');
	free(out);
	snprintf(cmd, sizeof(cmd), "%s trace simulate %s --slots 6 --policy lfu:decay=0.5 "
		 "--prefetch trans:min=0.5 --layer-pools", tu_bin("moectl"), tpath);
	ck_assert_msg(tu_run(cmd, 0, &out) == 0, "%s", out);
	ck_assert_msg(strstr(out, "belady") && strstr(out, "lfu:decay=0.5") &&
		      strstr(out, "trans:min=0.5") && strstr(out, "with speculative predictions"),
		      "%s", out);
	free(out);
	/* the byte size of an expert from a model */
	mkmodel(dir, "s.gguf", "--arch qwen3moe --type q8_0 --layers 3 --vocab 64 --embd 64 "
		"--experts 8 --experts-used 2 --expert-ff 64", mpath, sizeof(mpath));
	snprintf(cmd, sizeof(cmd), "%s trace simulate %s --slots 6 --model %s --json",
		 tu_bin("moectl"), tpath, mpath);
	ck_assert_msg(tu_run(cmd, 0, &out) == 0, "%s", out);
	ck_assert_msg(!strstr(out, "\"miss_bytes_per_token\": 0.0") && strstr(out, "lru"), "%s",
		      out);
	free(out);
	/* the benchmark: tuned on sequences 0..1, reported on 2..3 */
	snprintf(cmd, sizeof(cmd), "%s prefetch --share 25,50 --json %s", tu_bin("moe-bench"), tpath);
	ck_assert_msg(tu_run(cmd, 0, &out) == 0, "%s", out);
	for (const char *const *k = (const char *const[]){ "\"role\": \"optimum\"",
			"\"role\": \"lru\"", "\"role\": \"best\"", "\"share\": 50",
			"\"miss_vs_belady\": 1.0,", "\"fetched_vs_belady\":", NULL }; *k; k++)
		ck_assert_msg(strstr(out, *k), "no %s in %s", *k, out);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s prefetch --share 25 %s", tu_bin("moe-bench"), tpath);
	ck_assert_msg(tu_run(cmd, 0, &out) == 0, "%s", out);
	ck_assert_msg(strstr(out, "tuned on sequences 0..1, reported on 2..3") &&
		      strstr(out, "targets: miss <= 1.15x"), "%s", out);
	free(out);
	/* errors: usage 2, bad input 1 with the reason */
	snprintf(cmd, sizeof(cmd), "%s trace simulate %s", tu_bin("moectl"), tpath);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 2);
	ck_assert_ptr_nonnull(strstr(out, "--slots"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s trace simulate %s --slots 1", tu_bin("moectl"), tpath);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "at least --slots 2"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s trace simulate %s --slots 4 --read-gbps 3", tu_bin("moectl"),
		 tpath);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
	snprintf(cmd, sizeof(cmd), "%s trace simulate %s/missing --slots 4", tu_bin("moectl"), dir);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "missing"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s trace simulate %s --slots 4 --policy nope", tu_bin("moectl"),
		 tpath);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "unknown policy 'nope'"));
	free(out);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

Suite *suite_routing(void)
{
	Suite *s = suite_create("routing");
	TCase *tc = tcase_create("routing");

	tcase_set_timeout(tc, 240);
	tcase_add_test(tc, stats_file);
	tcase_add_test(tc, prefetch_keeps_logits);
	tcase_add_test(tc, prefetch_lowers_stall);
	tcase_add_test(tc, trace_recorded);
	tcase_add_test(tc, tool_simulate);
	suite_add_tcase(s, tc);
	return s;
}
