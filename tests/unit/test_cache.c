// SPDX-License-Identifier: MIT
/*
 * The expert cache's decisions: each policy on small hand-made traces with
 * known results, Belady's policy against an exhaustive search, the
 * bookkeeping's hot experts and prefetch rules, predictors learning
 * transitions, the simulator's time model, the trace reader, and the
 * simulator and the live cache making the same hit/miss sequence on the
 * same trace (the live engine driven by the trace through the routing hook).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/book.h"
#include "cache/routestats.h"
#include "cache/trace.h"
#include "engine/engine.h"
#include "util/util.h"
#include "moe/moe.h"
#include "testutil.h"

/* ------------------------------------------------------------ helpers */

/* A trace file from text; *path gets its name in @dir. */
static struct moe_trace *trace_text(const char *dir, const char *name, const char *text)
{
	char path[512];
	struct moe_trace *t = NULL;
	int ret;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	ck_assert_int_eq(tu_write_file(path, text, strlen(text)), 0);
	ret = moe_trace_open(path, &t);
	ck_assert_msg(ret == 0, "%s: %s", name, moe_errmsg());
	return t;
}

/* One layer, k = 1: token i uses ids[i]. */
static struct moe_trace *seq_trace(const char *dir, const int *ids, int n, int n_expert)
{
	char *text = malloc(64 + 32 * (size_t)n), *p = text;

	p += sprintf(p, "# moe-trace 1 layers=1 experts=%d depth=0\nS 0 hand\n", n_expert);
	for (int i = 0; i < n; i++)
		p += sprintf(p, "0 %d %d\n", i, ids[i]);
	{
		struct moe_trace *t = trace_text(dir, "seq.trace", text);

		free(text);
		return t;
	}
}

static struct moe_sim_result sim(const struct moe_trace *t, uint32_t slots, const char *policy,
				 const char *prefetch, uint32_t flags)
{
	struct moe_sim_params p = { .n_slots = slots, .policy = policy, .prefetch = prefetch,
				    .flags = flags };
	struct moe_sim_result r;
	int ret = moe_sim_run(t, &p, &r);

	ck_assert_msg(ret == 0, "%s/%s: %s", policy, prefetch ? prefetch : "none", moe_errmsg());
	return r;
}

/* ------------------------------------------------------------ policies */

START_TEST(policies_hand_traces)
{
	char *dir = tu_tmpdir();
	static const int a[] = { 0, 1, 2, 0, 3, 0, 4, 1 };
	static const int b[] = { 0, 0, 0, 1, 2, 3, 0 };
	struct moe_trace *t;

	/* worked by hand: LRU evicts 1, 2, 3 in turn; Belady evicts 2, then 0 or 3 */
	t = seq_trace(dir, a, 8, 5);
	ck_assert_uint_eq(sim(t, 3, "lru", NULL, 0).misses, 6);
	ck_assert_uint_eq(sim(t, 3, "belady", NULL, 0).misses, 5);
	ck_assert_uint_eq(sim(t, 3, "lfu:decay=1", NULL, 0).misses, 6);
	ck_assert_uint_eq(sim(t, 3, "lru", NULL, 0).hits, 2);
	moe_trace_destroy(t);
	/* a frequent expert: LFU keeps it where LRU lets it go; a fast decay forgets it */
	t = seq_trace(dir, b, 7, 4);
	ck_assert_uint_eq(sim(t, 2, "lru", NULL, 0).misses, 5);
	ck_assert_uint_eq(sim(t, 2, "lfu:decay=1", NULL, 0).misses, 4);
	ck_assert_uint_eq(sim(t, 2, "lfu:decay=0.1", NULL, 0).misses, 5);
	ck_assert_uint_eq(sim(t, 2, "belady", NULL, 0).misses, 4);
	moe_trace_destroy(t);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * Expert 0 every third token, every other token a new expert: LRU with two
 * slots loses 0 each time, LFU and the statistics policy keep it.
 */
START_TEST(policy_stats_keeps_the_reused)
{
	char *dir = tu_tmpdir();
	int ids[90];
	struct moe_trace *t;
	struct moe_sim_result r;

	for (int i = 0; i < 90; i++)
		ids[i] = i % 3 ? 1 + i : 0;
	t = seq_trace(dir, ids, 90, 91);
	ck_assert_uint_eq(sim(t, 2, "lru", NULL, 0).misses, 90);
	/* LFU gives 0 up once, at token 2, before its count has grown */
	ck_assert_uint_eq(sim(t, 2, "lfu", NULL, 0).misses, 62);
	ck_assert_uint_eq(sim(t, 2, "belady", NULL, 0).misses, 61);
	r = sim(t, 2, "stats", NULL, 0);
	ck_assert_msg(r.misses <= 63, "stats: %llu misses", (unsigned long long)r.misses);
	moe_trace_destroy(t);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * Both layers alternate two experts: a global pool of 3 slots loses to the
 * 4-key cycle under LRU, per-layer pools of 2 + 1 keep layer 0's pair.
 * A routing's experts are needed together: with k = 2 and 2 slots, nothing
 * else may stay.
 */
START_TEST(pools_and_groups)
{
	char *dir = tu_tmpdir(), text[4096], *p = text;
	struct moe_trace *t;
	struct moe_sim_result r;
	struct moe_sim_params ip;

	p += sprintf(p, "# moe-trace 1 layers=2 experts=4\nS 0 pools\n");
	for (int i = 0; i < 20; i++)
		p += sprintf(p, "0 %d %d %d\n", i, i % 2 + 1, i % 2 + 1);
	t = trace_text(dir, "pools.trace", text);
	ck_assert_uint_eq(sim(t, 3, "lru", NULL, 0).misses, 40);
	/* an odd slot goes to the first layer */
	ck_assert_uint_eq(sim(t, 3, "lru", NULL, MOE_SIM_LAYER_POOLS).misses, 22);
	ck_assert_uint_eq(sim(t, 4, "lru", NULL, MOE_SIM_LAYER_POOLS).misses, 4);
	ck_assert_uint_eq(sim(t, 4, "lru", NULL, 0).misses, 4);
	ck_assert_int_eq(moe_sim_run(t, &(struct moe_sim_params){ .n_slots = 1, .flags =
		MOE_SIM_LAYER_POOLS }, &r), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "per-layer pools"));
	/* the initializer's defaults are lru without prefetch over every sequence */
	moe_sim_params_init(&ip);
	ck_assert_str_eq(ip.policy, "lru");
	ck_assert_str_eq(ip.prefetch, "none");
	ip.n_slots = 3;
	ck_assert_int_eq(moe_sim_run(t, &ip, &r), 0);
	ck_assert_uint_eq(r.misses, 40);
	ck_assert_uint_eq(r.prefetches, 0);
	moe_trace_destroy(t);

	p = text;
	p += sprintf(p, "# moe-trace 1 layers=1 experts=6\nS 0 groups\n");
	for (int i = 0; i < 12; i++)
		p += sprintf(p, "0 %d %d,%d\n", i, i % 3, (i + 1) % 3 + 3);
	t = trace_text(dir, "groups.trace", text);
	ck_assert_int_eq(moe_sim_run(t, &(struct moe_sim_params){ .n_slots = 1 }, &r), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "at least --slots 2"));
	/* two slots: both are always the current routing's; nothing may stay */
	ck_assert_uint_eq(sim(t, 2, "belady", NULL, 0).misses, 24);
	ck_assert_uint_eq(sim(t, 2, "stats", NULL, 0).misses, 24);
	moe_trace_destroy(t);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ Belady */

#define BF_KEYS 8

struct bf {
	int steps;
	uint8_t grp[64];             /* key mask used by each step */
	uint8_t order[64][4];        /* its keys in ascending order */
	int n[64];
	int slots;
	int16_t memo[64][256];
};

static int popcount(unsigned x)
{
	return __builtin_popcount(x);
}

/* The fewest misses from step @s with cache contents @mask: every victim choice tried. */
static int bf_solve(struct bf *b, int s, unsigned mask);

static int bf_miss(struct bf *b, int s, unsigned mask, unsigned pinned, int j)
{
	int best = 1 << 20;
	unsigned key;

	while (j < b->n[s] && (mask >> b->order[s][j] & 1))
		j++;
	if (j == b->n[s])
		return bf_solve(b, s + 1, mask);
	key = b->order[s][j];
	if (popcount(mask) < b->slots)
		return 1 + bf_miss(b, s, mask | 1u << key, pinned | 1u << key, j + 1);
	for (unsigned v = 0; v < BF_KEYS; v++) {
		int r;

		if (!(mask >> v & 1) || (pinned >> v & 1))
			continue;
		r = 1 + bf_miss(b, s, (mask & ~(1u << v)) | 1u << key, pinned | 1u << key, j + 1);
		best = MOE_MIN(best, r);
	}
	return best;
}

static int bf_solve(struct bf *b, int s, unsigned mask)
{
	if (s == b->steps)
		return 0;
	if (b->memo[s][mask] >= 0)
		return b->memo[s][mask];
	/* the routing's cached experts are pinned first; its misses cannot evict them */
	b->memo[s][mask] = (int16_t)bf_miss(b, s, mask, mask & b->grp[s], 0);
	return b->memo[s][mask];
}

START_TEST(belady_is_optimal)
{
	char *dir = tu_tmpdir(), text[4096];
	uint64_t seed = 7;

	for (int round = 0; round < 300; round++) {
		int T = 3 + (int)(tu_rand(&seed) % 6), k = 1 + (int)(tu_rand(&seed) % 2);
		bool layer1 = tu_rand(&seed) % 2;
		struct bf b = { .slots = k + (int)(tu_rand(&seed) % 4) };
		struct moe_trace *t;
		char *p = text;
		int want;

		memset(b.memo, 0xff, sizeof(b.memo));
		/* two layers of four experts (keys layer * 4 + e), or one layer of eight */
		p += sprintf(p, "# moe-trace 1 layers=%d experts=%d\nS 0 bf\n", layer1 ? 2 : 1,
			     layer1 ? 4 : 8);
		for (int tok = 0; tok < T; tok++) {
			p += sprintf(p, "0 %d", tok);
			for (int l = 0; l < (layer1 ? 2 : 1); l++) {
				int ne = layer1 ? 4 : 8, ids[2];

				ids[0] = (int)(tu_rand(&seed) % ne);
				do
					ids[1] = (int)(tu_rand(&seed) % ne);
				while (k == 2 && ids[1] == ids[0]);
				p += sprintf(p, " %d", ids[0]);
				if (k == 2)
					p += sprintf(p, ",%d", ids[1]);
				b.n[b.steps] = k;
				for (int j = 0; j < k; j++)
					b.grp[b.steps] |= (uint8_t)(1u << (l * ne + ids[j]));
				for (int j = 0, m = 0; j < BF_KEYS; j++)
					if (b.grp[b.steps] >> j & 1)
						b.order[b.steps][m++] = (uint8_t)j;
				b.steps++;
			}
			p += sprintf(p, "\n");
		}
		want = bf_solve(&b, 0, 0);
		t = trace_text(dir, "bf.trace", text);
		ck_assert_msg((int)sim(t, (uint32_t)b.slots, "belady", NULL, 0).misses == want,
			      "round %d: belady %llu misses, the optimum %d\n%s", round,
			      (unsigned long long)sim(t, (uint32_t)b.slots, "belady", NULL, 0).misses,
			      want, text);
		/* and no policy does better than the optimum */
		ck_assert_int_ge((int)sim(t, (uint32_t)b.slots, "stats", NULL, 0).misses, want);
		ck_assert_int_ge((int)sim(t, (uint32_t)b.slots, "lru", NULL, 0).misses, want);
		moe_trace_destroy(t);
	}
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ the book */

START_TEST(book_hot_and_prefetch)
{
	int32_t pool_of[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
	uint32_t slots = 4, k = 2;
	struct moe_book *b;
	struct moe_book_use u;
	struct moe_book_stats st;

	ck_assert_int_eq(moe_book_create(&(struct moe_book_params){
		.n_layer = 1, .n_expert = 8, .pool_of = pool_of, .n_pools = 1, .pool_slots = &slots,
		.k = &k, .hot_max = 3, .hot_after = 2 }, &b), 0);
	/* expert 0 used twice becomes hot and is never a victim again */
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(moe_book_use(b, 0, 0, (uint64_t)i, true, &u), 0);
		moe_book_unpin(b, u.slot);
	}
	moe_book_get_stats(b, &st);
	ck_assert_uint_eq(st.hot, 1);
	/* a pool keeps k + 1 slots that turn over: with 4 slots and k 2, one hot expert only */
	for (int i = 0; i < 2; i++) {
		ck_assert_int_eq(moe_book_use(b, 0, 1, (uint64_t)i, true, &u), 0);
		moe_book_unpin(b, u.slot);
	}
	moe_book_get_stats(b, &st);
	ck_assert_uint_eq(st.hot, 1);
	for (uint32_t e = 2; e < 8; e++) {
		ck_assert_int_eq(moe_book_use(b, 0, e, 10 + e, true, &u), 0);
		ck_assert(!u.evicted || u.old.e != 0);
		moe_book_unpin(b, u.slot);
	}
	ck_assert_int_ge(moe_book_lookup(b, 0, 0), 0);
	/* prefetches: counted apart from demand uses, used or evicted unused */
	ck_assert_int_eq(moe_book_prefetch(b, 0, 7, 20, &u), 1);
	ck_assert_int_eq(moe_book_prefetch(b, 0, 3, 20, &u), 0);
	ck_assert(moe_book_unused_prefetch(b, u.slot));
	ck_assert_int_eq(moe_book_use(b, 0, 3, 21, true, &u), 0);
	ck_assert(u.hit && u.prefetched);
	moe_book_unpin(b, u.slot);
	ck_assert_int_eq(moe_book_prefetch(b, 0, 4, 22, &u), 0);
	moe_book_cancel(b, u.slot);
	ck_assert_int_lt(moe_book_lookup(b, 0, 4), 0);
	moe_book_get_stats(b, &st);
	ck_assert_uint_eq(st.prefetches, 2);
	ck_assert_uint_eq(st.prefetch_used, 1);
	ck_assert_uint_eq(st.prefetch_cancelled, 1);
	ck_assert_uint_eq(st.prefetch_unused, 0);
	moe_book_destroy(b);
}
END_TEST

/* ------------------------------------------------------------ prediction */

/*
 * Layer 1's expert follows from layer 0's (e -> e + 1 mod 4): the
 * transition predictor learns it, prefetches nearly only what is used, and
 * removes the misses of layer 1 that the policy alone cannot avoid.
 */
START_TEST(prefetch_learns_transitions)
{
	char *dir = tu_tmpdir(), *text = malloc(1 << 16), *p = text;
	uint64_t seed = 3;
	struct moe_trace *t;
	struct moe_sim_result none, tr;

	p += sprintf(p, "# moe-trace 1 layers=2 experts=4\nS 0 chain\n");
	for (int i = 0; i < 400; i++) {
		int e = (int)(tu_rand(&seed) % 4);

		p += sprintf(p, "0 %d %d %d\n", i, e, (e + 1) % 4);
	}
	t = trace_text(dir, "chain.trace", text);
	none = sim(t, 4, "lru", NULL, 0);
	tr = sim(t, 4, "lru", "trans:min=0.5", 0);
	/* layer 0 stays random: only layer 1's misses can go */
	ck_assert_msg(tr.misses * 10 < none.misses * 6, "trans %llu misses, none %llu",
		      (unsigned long long)tr.misses, (unsigned long long)none.misses);
	ck_assert_msg(tr.prefetch_precision > 0.9 && tr.prefetch_recall > 0.4,
		      "precision %.3f recall %.3f", tr.prefetch_precision, tr.prefetch_recall);
	ck_assert_uint_eq(none.prefetches, 0);
	/* popularity alone knows nothing here: every expert is as likely */
	ck_assert_uint_lt(sim(t, 4, "lru", "pop:min=0.5", 0).prefetches, 20);
	/* a prefetcher that needs recorded predictions refuses a trace without them */
	{
		struct moe_sim_result r;

		ck_assert_int_eq(moe_sim_run(t, &(struct moe_sim_params){ .n_slots = 4,
			.prefetch = "spec" }, &r), -EINVAL);
		ck_assert_ptr_nonnull(strstr(moe_errmsg(), "--trace-predictions"));
		ck_assert_int_eq(moe_sim_run(t, &(struct moe_sim_params){ .n_slots = 4,
			.prefetch = "mix:depth=9" }, &r), -EINVAL);
		ck_assert_int_eq(moe_sim_run(t, &(struct moe_sim_params){ .n_slots = 4,
			.prefetch = "guess" }, &r), -EINVAL);
		ck_assert_ptr_nonnull(strstr(moe_errmsg(), "unknown prefetcher"));
		ck_assert_int_eq(moe_sim_run(t, &(struct moe_sim_params){ .n_slots = 4,
			.policy = "lfu:speed=2" }, &r), -EINVAL);
	}
	moe_trace_destroy(t);

	/* recorded speculative predictions, right three times in four */
	p = text;
	p += sprintf(p, "# moe-trace 1 layers=2 experts=8 depth=1\nS 0 spec\n");
	for (int i = 0; i < 400; i++) {
		int e = (int)(tu_rand(&seed) % 8), f = (int)(tu_rand(&seed) % 8);
		int g = i % 4 ? f : (f + 1) % 8;

		p += sprintf(p, "0 %d %d/- %d/%d\n", i, e, f, g);
	}
	t = trace_text(dir, "spec.trace", text);
	none = sim(t, 3, "lru", NULL, 0);
	tr = sim(t, 3, "lru", "spec:min=0.5", 0);
	ck_assert_uint_lt(tr.misses, none.misses);
	ck_assert_msg(tr.prefetch_precision > 0.6 && tr.prefetch_precision < 0.9,
		      "precision %.3f", tr.prefetch_precision);
	moe_trace_destroy(t);
	free(text);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ time */

START_TEST(sim_time_model)
{
	char *dir = tu_tmpdir(), *text = malloc(1 << 16), *p = text;
	uint64_t seed = 5;
	struct moe_trace *t;
	struct moe_sim_params sp = { .n_slots = 4, .policy = "lru", .prefetch = "trans:min=0.3",
				     .expert_bytes = 1000000, .layer_us = 100 };
	struct moe_sim_result fast, slow, none;

	p += sprintf(p, "# moe-trace 1 layers=2 experts=4\nS 0 chain\n");
	for (int i = 0; i < 300; i++) {
		int e = (int)(tu_rand(&seed) % 4);

		p += sprintf(p, "0 %d %d %d\n", i, e, (e + 1 + (i % 7 == 0)) % 4);
	}
	t = trace_text(dir, "time.trace", text);
	/* 1 MB per expert at 100 GB/s: 10 us a read, well within a layer's 100 us */
	sp.read_gbps = 100;
	ck_assert_int_eq(moe_sim_run(t, &sp, &fast), 0);
	ck_assert_uint_eq(fast.prefetch_late, 0);
	ck_assert(fast.tokens_per_s > 0);
	/* at 1 GB/s a read takes 1 ms: prefetches cannot arrive in time */
	sp.read_gbps = 1;
	ck_assert_int_eq(moe_sim_run(t, &sp, &slow), 0);
	ck_assert_uint_gt(slow.prefetch_late + slow.prefetch_cancelled, 0);
	ck_assert(slow.tokens_per_s < fast.tokens_per_s);
	ck_assert(slow.stall_s > fast.stall_s);
	/* late prefetches count as misses: never fewer than the prefetcher's in-time run */
	ck_assert_uint_ge(slow.misses, fast.misses);
	sp.prefetch = NULL;
	sp.read_gbps = 100;
	ck_assert_int_eq(moe_sim_run(t, &sp, &none), 0);
	ck_assert(none.stall_s > fast.stall_s);
	/* byte figures follow the expert size */
	ck_assert(fast.miss_bytes_per_token == (double)fast.misses * 1e6 / fast.tokens);
	/* tier 1 turns reads into uploads */
	sp.n_host_slots = 8;
	ck_assert_int_eq(moe_sim_run(t, &sp, &none), 0);
	ck_assert_uint_gt(none.host_hits, 0);
	ck_assert(none.read_bytes_per_token < none.fetched_bytes_per_token);
	moe_trace_destroy(t);
	free(text);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ traces */

START_TEST(trace_reader)
{
	char *dir = tu_tmpdir(), path[512];
	static const struct {
		const char *text, *msg;
	} bad[] = {
		{ "0 0 1,2 3,4\n0 1 1,2\n", ":2: 1 layer fields, expected 2" },
		{ "0 0 1,x\n", ":1: expected expert ids" },
		{ "S 0 a\n1 0 1\n", ":2: token of sequence 1 inside sequence 0" },
		{ "# layers=1 experts=4\n0 0 5\n", "expert 5 in a trace of 4 experts" },
		{ "0 0 1,2\n0 1 3\n", ":2: layer 0 has 1 experts, other tokens 2" },
		{ "# nothing\n", "no tokens" },
		{ "0 0 -1\n", "unexpected" },
	};
	struct moe_trace *t;
	struct moe_trace_info ti;
	int32_t ids[8];

	for (size_t i = 0; i < MOE_ARRAY_SIZE(bad); i++) {
		snprintf(path, sizeof(path), "%s/bad%zu.trace", dir, i);
		ck_assert_int_eq(tu_write_file(path, bad[i].text, strlen(bad[i].text)), 0);
		ck_assert_int_eq(moe_trace_open(path, &t), -EINVAL);
		ck_assert_msg(strstr(moe_errmsg(), bad[i].msg), "%s: '%s', expected '%s'",
			      bad[i].text, moe_errmsg(), bad[i].msg);
	}
	ck_assert_int_lt(moe_trace_open("/nonexistent/x.trace", &t), 0);
	t = trace_text(dir, "ok.trace", "# moe-trace 1 layers=3 experts=8 depth=1\n"
		       "S 0 first tokens=2\n0 5 1,2/- - 3,4/5,6\n0 6 7,0/1,2 - 3,4/-\n"
		       "S 1 second\n1 0 1,2/- - 3,4/-\n");
	moe_trace_info(t, &ti);
	ck_assert_uint_eq(ti.n_layer, 3);
	ck_assert_uint_eq(ti.n_routed, 2);
	ck_assert_uint_eq(ti.n_seq, 2);
	ck_assert_uint_eq(ti.n_tok, 3);
	ck_assert_uint_eq(ti.depth, 1);
	ck_assert_int_eq(moe_trace_get(t, 1, 0, ids, 8), 2);
	ck_assert_int_eq(ids[0], 7);
	ck_assert_int_eq(moe_trace_get(t, 1, 1, ids, 8), 0);
	ck_assert_int_eq(moe_trace_prediction(t, 0, 2, 1, ids, 8), 2);
	ck_assert_int_eq(ids[1], 6);
	ck_assert_int_eq(moe_trace_prediction(t, 1, 2, 1, ids, 8), 0);
	ck_assert_str_eq(t->seq_name[0], "first");
	moe_trace_destroy(t);
	{
		const char *g = tu_shared("traces/gpt-oss-20b/gptoss20b_decode_routes.txt");

		if (g) {
			struct moe_routestats *rs;
			uint64_t sum = 0;

			ck_assert_int_eq(moe_trace_open(g, &t), 0);
			moe_trace_info(t, &ti);
			ck_assert_uint_eq(ti.n_layer, 24);
			ck_assert_uint_eq(ti.n_expert, 32);
			ck_assert_uint_eq(ti.max_k, 4);
			ck_assert_uint_eq(ti.n_seq, 37);
			ck_assert_uint_eq(ti.n_tok, 12041);
			ck_assert_int_eq(moe_routestats_from_trace(t, 0, 0, &rs), 0);
			for (uint32_t e = 0; e < 32; e++)
				sum += moe_routestats_count(rs, 5, e);
			ck_assert_uint_eq(sum, 4 * 12041);
			ck_assert_int_eq(moe_routestats_next_layer(rs, 5), 6);
			ck_assert_int_eq(moe_routestats_next_layer(rs, 23), -ENOENT);
			moe_routestats_destroy(rs);
			moe_trace_destroy(t);
		}
	}
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ live = simulated */

struct use_rec {
	uint32_t layer, e;
	uint64_t tok;
	bool hit;
};

struct uses {
	struct use_rec *r;
	uint32_t n, cap;
};

static void push(struct uses *u, uint64_t tok, uint32_t layer, uint32_t e, bool hit)
{
	if (u->n == u->cap) {
		u->cap = u->cap ? u->cap * 2 : 1024;
		u->r = realloc(u->r, sizeof(*u->r) * u->cap);
	}
	u->r[u->n++] = (struct use_rec){ layer, e, tok, hit };
}

static void on_sim_use(void *arg, uint64_t tok, uint32_t layer, uint32_t e, bool hit)
{
	push(arg, tok, layer, e, hit);
}

static void on_live_use(void *arg, uint32_t layer, uint32_t e, uint64_t clock, bool hit)
{
	push(arg, clock, layer, e, hit);
}

struct replay {
	const struct moe_trace *t;
};

/* The routing hook: every token chooses what the trace says. */
static void replay_route(void *arg, uint32_t layer, const int32_t *pos, uint32_t n_tok,
			 const float *logits, uint32_t n_expert, int32_t *sel, uint32_t K)
{
	struct replay *rp = arg;

	(void)logits;
	(void)n_expert;
	for (uint32_t t = 0; t < n_tok; t++) {
		const int16_t *ids = moe_trace_ids(rp->t, (uint64_t)pos[t], layer);

		for (uint32_t j = 0; j < rp->t->k[layer]; j++)
			sel[t * K + j] = ids[j];
	}
}

static uint64_t need_bytes(struct moe_model *m, uint32_t flags)
{
	struct moe_ctx_params p;
	struct moe_ctx *ctx = NULL;
	unsigned long long need = 0;
	const char *at;

	moe_ctx_params_init(&p);
	p.n_ctx = 128;
	p.n_batch = 1;
	p.flags = flags;
	p.vram_bytes = 1;
	ck_assert_int_eq(moe_ctx_create(m, &p, &ctx), -ENOMEM);
	at = strstr(moe_errmsg(), "needs at least");
	ck_assert_ptr_nonnull(at);
	at = strchr(at, '(');
	ck_assert(at && sscanf(at, "(%llu bytes)", &need) == 1);
	return need;
}

/* A context with exactly @slots expert slots. */
static struct moe_ctx *ctx_with_slots(struct moe_model *m, uint32_t slots, const char *policy,
				      uint32_t flags, uint32_t min_slots)
{
	struct moe_ctx_params p;
	struct moe_ctx *ctx = NULL;
	struct moe_plan plan;
	uint64_t need = need_bytes(m, flags);
	int ret;

	moe_ctx_params_init(&p);
	p.n_threads = 1;
	p.n_ctx = 128;
	p.n_batch = 1;
	p.flags = flags;
	p.policy = policy;
	p.vram_bytes = need;
	ck_assert_int_eq(moe_plan(m, &p, &plan), 0);
	ck_assert_uint_eq(plan.n_slots, min_slots);
	p.vram_bytes = need + (uint64_t)(slots - min_slots) * plan.classes[0].slot_bytes;
	ret = moe_ctx_create(m, &p, &ctx);
	ck_assert_msg(ret == 0, "%s", moe_errmsg());
	ck_assert_uint_eq(moe_ctx_plan(ctx)->n_slots, slots);
	return ctx;
}

START_TEST(live_matches_simulator)
{
	static const struct {
		const char *policy;
		uint32_t slots, flags;
		const char *sim;        /* the simulator's policy, if not the same */
	} runs[] = {
		{ "lru", 7, 0, NULL }, { "lfu", 7, 0, NULL }, { "stats", 7, 0, NULL },
		{ "lru", 12, MOE_CTX_LAYER_POOLS, NULL }, { "stats:decay=0.8", 10, 0, NULL },
		/* the engine's default is the statistics policy */
		{ NULL, 7, 0, "stats" },
	};
	char *dir = tu_tmpdir(), path[512], cmd[1024], *text = malloc(1 << 16), *p = text, *out;
	uint64_t seed = 11;
	struct moe_model *m;
	struct moe_trace *t;
	int cur[4] = { 0, 1, 2, 3 };
	int32_t tok = 5;

	snprintf(path, sizeof(path), "%s/q.gguf", dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --type f32 -o %s -q --layers 4 --vocab 64 "
		 "--embd 64 --experts 8 --experts-used 2 --expert-ff 64", tu_bin("moe-mkmodel"), path);
	ck_assert_msg(tu_run(cmd, 1, &out) == 0, "%s", out);
	free(out);
	/* routes with locality: each layer mostly keeps its experts, sometimes moves one */
	p += sprintf(p, "# moe-trace 1 layers=4 experts=8\nS 0 replay\n");
	for (int i = 0; i < 60; i++) {
		p += sprintf(p, "0 %d", i);
		for (int l = 0; l < 4; l++) {
			int a = cur[l], b;

			if (tu_rand(&seed) % 3 == 0)
				a = cur[l] = (int)(tu_rand(&seed) % 8);
			b = (a + 1 + (int)(tu_rand(&seed) % 7)) % 8;
			p += sprintf(p, " %d,%d", a, b);
		}
		p += sprintf(p, "\n");
	}
	t = trace_text(dir, "replay.trace", text);
	ck_assert_int_eq(moe_model_open(path, &m), 0);
	for (size_t i = 0; i < MOE_ARRAY_SIZE(runs); i++) {
		struct uses live = { 0 }, simu = { 0 };
		struct replay rp = { t };
		struct moe_sim_params sp = {
			.n_slots = runs[i].slots, .on_use = on_sim_use,
			.policy = runs[i].sim ? runs[i].sim : runs[i].policy,
			.arg = &simu,
			.flags = runs[i].flags & MOE_CTX_LAYER_POOLS ? MOE_SIM_LAYER_POOLS : 0,
		};
		struct moe_sim_result r;
		struct moe_ctx *ctx = ctx_with_slots(m, runs[i].slots, runs[i].policy,
						     runs[i].flags,
						     runs[i].flags & MOE_CTX_LAYER_POOLS ? 8 : 2);

		moe_ctx_set_route_hook(ctx, replay_route, &rp);
		moe_book_set_observer(moe_cache_book(ctx->cache), on_live_use, &live);
		for (uint32_t pos = 0; pos < 60; pos++)
			ck_assert_msg(moe_ctx_eval(ctx, &tok, 1, pos, 0) == 0, "%s", moe_errmsg());
		ck_assert_int_eq(moe_sim_run(t, &sp, &r), 0);
		ck_assert_uint_eq(live.n, 60 * 4 * 2);
		ck_assert_uint_eq(simu.n, live.n);
		for (uint32_t j = 0; j < live.n; j++)
			ck_assert_msg(live.r[j].tok == simu.r[j].tok && live.r[j].layer ==
				      simu.r[j].layer && live.r[j].e == simu.r[j].e &&
				      live.r[j].hit == simu.r[j].hit,
				      "%s: use %u: live token %llu layer %u expert %u %s, simulated "
				      "token %llu layer %u expert %u %s", sp.policy, j,
				      (unsigned long long)live.r[j].tok, live.r[j].layer, live.r[j].e,
				      live.r[j].hit ? "hit" : "miss",
				      (unsigned long long)simu.r[j].tok, simu.r[j].layer,
				      simu.r[j].e, simu.r[j].hit ? "hit" : "miss");
		ck_assert_uint_gt(r.misses, 0);
		ck_assert_uint_gt(r.hits, 0);
		free(live.r);
		free(simu.r);
		moe_ctx_destroy(ctx);
	}
	moe_model_destroy(m);
	moe_trace_destroy(t);
	free(text);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

Suite *suite_cache(void)
{
	Suite *s = suite_create("cache");
	TCase *tc = tcase_create("cache");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, policies_hand_traces);
	tcase_add_test(tc, policy_stats_keeps_the_reused);
	tcase_add_test(tc, pools_and_groups);
	tcase_add_test(tc, belady_is_optimal);
	tcase_add_test(tc, book_hot_and_prefetch);
	tcase_add_test(tc, prefetch_learns_transitions);
	tcase_add_test(tc, sim_time_model);
	tcase_add_test(tc, trace_reader);
	tcase_add_test(tc, live_matches_simulator);
	suite_add_tcase(s, tc);
	return s;
}
