/* SPDX-License-Identifier: MIT */
/*
 * The trace simulator: a trace replayed through the cache's bookkeeping
 * (cache/book.c), its policies and predictors, in the order the live engine
 * uses them for one token at a time: for each routed layer, the routing is
 * announced, the predictions made for it are scored, its cached experts are
 * used (hits), then its missing ones (misses, evicting through the policy,
 * demoting to tier 1), the statistics learn it, and the predictor's
 * expectations for the next layers become hints and prefetches.
 *
 * Time, when asked for (read_gbps and layer_us), is one I/O channel of that
 * bandwidth: a layer's demand reads go first and delay queued prefetches; a
 * prefetch is in time when its read ends before its layer starts, and a
 * prefetch whose read has not started when its layer routes without it is
 * cancelled.  Without time every prefetch is in time.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/book.h"
#include "cache/policy.h"
#include "cache/predict.h"
#include "cache/routestats.h"
#include "cache/trace.h"
#include "util/util.h"

#define HOT_AFTER 32                 /* demand uses that make an expert hot without statistics */

const char *moe_sim_policy_names(void)
{
	return moe_cache_policy_names();
}

struct pending {
	uint32_t slot;
	struct moe_key k;
	double start, end;
};

struct sim {
	const struct moe_trace *t;
	const struct moe_sim_params *p;
	struct moe_book *book, *host;
	struct moe_pred *pred;
	struct moe_pred_cfg cfg;
	struct moe_routestats *rs;
	struct moe_future *fut;
	int32_t *pool_of;
	uint32_t *pool_slots;
	uint32_t n_pools;
	uint64_t t0;
	/* time, in microseconds */
	bool timed;
	double now, io_free, read_us;
	double *ready;               /* per slot: when its data is there */
	struct pending *pend;
	uint32_t n_pend, cap_pend;
	/* counters the book does not keep */
	uint64_t late, host_hits, reads, cancelled;
	double stall_us;
	/* scratch */
	float *prob;
	uint32_t *ids;
	int32_t *spec;
};

static void observe(void *arg, uint32_t layer, uint32_t e, uint64_t clock, bool hit)
{
	struct sim *s = arg;

	s->p->on_use(s->p->arg, clock, layer, e, hit);
}

static int make_pools(struct sim *s)
{
	const struct moe_trace *t = s->t;
	uint32_t L = t->n_layer, E = t->n_expert, n_routed = 0, kmax = 0;
	bool per_layer = s->p->flags & MOE_SIM_LAYER_POOLS;

	for (uint32_t l = 0; l < L; l++) {
		n_routed += t->k[l] > 0;
		kmax = MOE_MAX(kmax, t->k[l]);
	}
	s->pool_of = malloc(sizeof(*s->pool_of) * L * E);
	s->pool_slots = calloc(per_layer ? L : 1, sizeof(*s->pool_slots));
	if (!s->pool_of || !s->pool_slots)
		return moe_err(ENOMEM, "out of memory");
	if (!per_layer) {
		if (s->p->n_slots < kmax)
			return moe_err(EINVAL, "%u slots cannot hold one layer's %u experts: give at "
				       "least --slots %u", s->p->n_slots, kmax, kmax);
		s->n_pools = 1;
		s->pool_slots[0] = s->p->n_slots;
		for (uint32_t l = 0; l < L; l++)
			for (uint32_t e = 0; e < E; e++)
				s->pool_of[l * E + e] = t->k[l] ? 0 : -1;
		return 0;
	}
	for (uint32_t l = 0, i = 0; l < L; l++) {
		uint32_t share = s->p->n_slots / n_routed + (i < s->p->n_slots % n_routed);

		for (uint32_t e = 0; e < E; e++)
			s->pool_of[l * E + e] = t->k[l] ? (int32_t)s->n_pools : -1;
		if (!t->k[l])
			continue;
		if (share < t->k[l])
			return moe_err(EINVAL, "per-layer pools of %u slots cannot hold layer %u's %u "
				       "experts: give at least --slots %u", share, l, t->k[l],
				       t->k[l] * n_routed);
		s->pool_slots[s->n_pools++] = share;
		i++;
	}
	return 0;
}

static int build_future(struct sim *s, uint64_t t1)
{
	const struct moe_trace *t = s->t;
	int ret = moe_future_create(t->n_layer, t->n_expert, &s->fut);

	for (uint64_t tok = s->t0; !ret && tok < t1; tok++)
		for (uint32_t l = 0; !ret && l < t->n_layer; l++) {
			const int16_t *ids = moe_trace_ids(t, tok, l);

			for (uint32_t j = 0; !ret && j < t->k[l]; j++)
				ret = moe_future_add(s->fut, tok - s->t0, l, (uint32_t)ids[j]);
		}
	return ret ? ret : moe_future_seal(s->fut);
}

/* Hot experts of saved statistics held from the start, then the cache warmed as live does. */
static int warm(struct sim *s)
{
	uint32_t nk = s->t->n_layer * s->t->n_expert, *keys, n;
	struct moe_book_use u;

	if (!s->p->stats)
		return 0;
	keys = malloc(sizeof(*keys) * nk);
	if (!keys)
		return moe_err(ENOMEM, "out of memory");
	n = moe_routestats_rank(s->rs, keys, nk);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t l = keys[i] / s->t->n_expert, e = keys[i] % s->t->n_expert;

		/* only into free slots: warming never evicts */
		if (!moe_book_free_slots(s->book, l, e) ||
		    moe_book_use(s->book, l, e, 0, false, &u) < 0)
			continue;
		moe_book_unpin(s->book, u.slot);
		if (i < s->p->pin_hot)
			moe_book_hold(s->book, u.slot);
	}
	moe_book_reset_stats(s->book);
	free(keys);
	return 0;
}

static int setup(struct sim *s)
{
	const struct moe_trace *t = s->t;
	const struct moe_sim_params *p = s->p;
	const struct moe_cache_policy_ops *pol;
	const char *opts;
	uint32_t se = p->seq_end ? p->seq_end : t->n_seq;
	bool *routed;
	int ret;

	pol = moe_cache_policy_find(p->policy ? p->policy : "lru", &opts);
	if (!pol)
		return moe_err(EINVAL, "unknown policy '%s' (%s)", p->policy,
			       moe_cache_policy_names());
	ret = moe_pred_parse(p->prefetch, &s->cfg);
	if (ret < 0)
		return ret;
	if ((s->cfg.sources & MOE_PRED_SPEC) && t->depth < s->cfg.depth)
		return moe_err(EINVAL, "prefetcher %s needs speculative predictions %u layers ahead; "
			       "the trace has %s (record one with moe-run --trace-out FILE "
			       "--trace-predictions --prefetch spec:depth=%u)", s->cfg.name,
			       s->cfg.depth, t->depth ? "fewer" : "none", s->cfg.depth);
	if (p->flags & ~MOE_SIM_FLAGS_ALL)
		return moe_err(EINVAL, "moe_sim_run: unknown flags 0x%x", p->flags);
	if (p->seq_begin >= se || se > t->n_seq)
		return moe_err(EINVAL, "sequences %u..%u: the trace has %u", p->seq_begin, se,
			       t->n_seq);
	if (p->stats && (p->stats->n_layer != t->n_layer || p->stats->n_expert != t->n_expert))
		return moe_err(EINVAL, "statistics of %u layers x %u experts for a trace of %u x %u",
			       p->stats->n_layer, p->stats->n_expert, t->n_layer, t->n_expert);
	s->t0 = t->seq_first[p->seq_begin];
	ret = make_pools(s);
	if (ret < 0)
		return ret;
	if (pol->offline) {
		ret = build_future(s, t->seq_first[se]);
		if (ret < 0)
			return ret;
	}
	if (p->stats) {
		ret = moe_routestats_clone(p->stats, &s->rs);
	} else {
		routed = malloc(sizeof(*routed) * t->n_layer);
		if (!routed)
			return moe_err(ENOMEM, "out of memory");
		for (uint32_t l = 0; l < t->n_layer; l++)
			routed[l] = t->k[l] > 0;
		ret = moe_routestats_create(t->n_layer, t->n_expert, routed, &s->rs);
		free(routed);
	}
	if (ret < 0)
		return ret;
	ret = moe_book_create(&(struct moe_book_params){
		.n_layer = t->n_layer, .n_expert = t->n_expert, .pool_of = s->pool_of,
		.n_pools = s->n_pools, .pool_slots = s->pool_slots, .policy = pol,
		.policy_opts = opts, .k = t->k, .stats = p->stats, .future = s->fut,
		.hot_max = p->pin_hot, .hot_after = p->stats ? 0 : HOT_AFTER }, &s->book);
	if (ret < 0)
		return ret;
	if (p->n_host_slots) {
		uint32_t one = p->n_host_slots;
		int32_t *hp = malloc(sizeof(*hp) * t->n_layer * t->n_expert);

		if (!hp)
			return moe_err(ENOMEM, "out of memory");
		for (uint32_t i = 0; i < t->n_layer * t->n_expert; i++)
			hp[i] = t->k[i / t->n_expert] ? 0 : -1;
		ret = moe_book_create(&(struct moe_book_params){
			.n_layer = t->n_layer, .n_expert = t->n_expert, .pool_of = hp,
			.n_pools = 1, .pool_slots = &one, .policy = pol->offline ? NULL : pol,
			.policy_opts = pol->offline ? NULL : opts, .k = t->k, .stats = p->stats },
			&s->host);
		free(hp);
		if (ret < 0)
			return ret;
	}
	if (s->cfg.sources) {
		ret = moe_pred_create(&s->cfg, t->n_layer, t->n_expert, t->k, s->rs, &s->pred);
		if (ret < 0)
			return ret;
	}
	if (p->on_use)
		moe_book_set_observer(s->book, observe, s);
	s->timed = p->read_gbps > 0 && p->layer_us > 0;
	s->read_us = s->timed ? (double)(p->expert_bytes ? p->expert_bytes : 1) /
				(p->read_gbps * 1e3) : 0;
	s->ready = calloc(moe_book_n_slots(s->book), sizeof(*s->ready));
	s->prob = calloc((size_t)MOE_MAX(s->cfg.depth, 1u) * t->n_expert, sizeof(*s->prob));
	s->ids = calloc(t->n_expert + t->K, sizeof(*s->ids));
	s->spec = calloc((size_t)MOE_MAX(s->cfg.depth, 1u) * t->K, sizeof(*s->spec));
	if (!s->ready || !s->prob || !s->ids || !s->spec)
		return moe_err(ENOMEM, "out of memory");
	return warm(s);
}

static void teardown(struct sim *s)
{
	moe_book_destroy(s->book);
	moe_book_destroy(s->host);
	moe_pred_destroy(s->pred);
	moe_routestats_destroy(s->rs);
	moe_future_free(s->fut);
	free(s->pool_of);
	free(s->pool_slots);
	free(s->ready);
	free(s->pend);
	free(s->prob);
	free(s->ids);
	free(s->spec);
}

/* The device slot of @u was given up by @old: keep it in tier 1. */
static void demote(struct sim *s, const struct moe_book_use *u, uint64_t clock)
{
	struct moe_book_use h;

	if (!s->host || !u->evicted || moe_book_lookup(s->host, u->old.layer, u->old.e) >= 0)
		return;
	if (moe_book_use(s->host, u->old.layer, u->old.e, clock, false, &h) == 0)
		moe_book_unpin(s->host, h.slot);
}

/* Where the data of a key brought into the device comes from: tier 1 (true) or the file. */
static bool from_host(struct sim *s, uint32_t l, uint32_t e, uint64_t clock)
{
	struct moe_book_use h;

	if (!s->host || moe_book_lookup(s->host, l, e) < 0)
		return false;
	moe_book_use(s->host, l, e, clock, false, &h);
	moe_book_unpin(s->host, h.slot);
	return true;
}

/* Queued prefetch reads: drop what ended, and give a read's time back when it is cancelled. */
static void pend_reap(struct sim *s)
{
	uint32_t j = 0;

	for (uint32_t i = 0; i < s->n_pend; i++)
		if (s->pend[i].end > s->now)
			s->pend[j++] = s->pend[i];
	s->n_pend = j;
}

static void pend_remove(struct sim *s, uint32_t i)
{
	double d = s->pend[i].end - s->pend[i].start;

	for (uint32_t j = i + 1; j < s->n_pend; j++) {
		s->pend[j].start -= d;
		s->pend[j].end -= d;
		s->ready[s->pend[j].slot] = s->pend[j].end;
		s->pend[j - 1] = s->pend[j];
	}
	s->n_pend--;
	s->io_free -= d;
}

/* Layer @l routes without some experts whose prefetch has not started: withdraw them. */
static void cancel_wrong(struct sim *s, uint32_t l, const uint32_t *ids, uint32_t n)
{
	for (uint32_t i = 0; i < s->n_pend;) {
		struct pending *pd = &s->pend[i];
		bool chosen = false;

		for (uint32_t j = 0; j < n; j++)
			chosen |= pd->k.layer == l && pd->k.e == ids[j];
		if (pd->k.layer == l && !chosen && pd->start > s->now &&
		    moe_book_unused_prefetch(s->book, pd->slot) && !moe_book_pins(s->book, pd->slot)) {
			moe_book_cancel(s->book, pd->slot);
			s->cancelled++;
			pend_remove(s, i);
			continue;
		}
		i++;
	}
}

/* The layer's demand reads go first: queued prefetches wait @d longer. */
static void delay_prefetches(struct sim *s, double d)
{
	for (uint32_t i = 0; i < s->n_pend; i++) {
		struct pending *pd = &s->pend[i];

		if (pd->start >= s->now)
			pd->start += d;
		pd->end += d;
		s->ready[pd->slot] = pd->end;
	}
	s->io_free = MOE_MAX(s->io_free, s->now) + d;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static bool sim_cached(void *arg, uint32_t layer, uint32_t e)
{
	struct sim *s = arg;

	return moe_book_lookup(s->book, layer, e) >= 0;
}

static int prefetch(struct sim *s, uint64_t tok, uint32_t l, const int32_t *chosen,
		    uint64_t clock)
{
	const struct moe_trace *t = s->t;
	uint32_t D = s->cfg.depth, E = t->n_expert, n, budget;
	struct moe_pred_cand *c;
	int ret = 0;

	for (uint32_t d = 0; d < D; d++) {
		int32_t m = moe_pred_target(s->pred, l, d);

		for (uint32_t j = 0; j < t->K; j++)
			s->spec[d * t->K + j] = -1;
		if (m >= 0 && t->pred)
			for (uint32_t j = 0; j < t->K; j++)
				s->spec[d * t->K + j] = moe_trace_pred(t, tok, (uint32_t)m, d)[j];
	}
	moe_pred_predict(s->pred, l, chosen, 1, t->K, t->pred ? s->spec : NULL, s->prob);
	c = malloc(sizeof(*c) * D * E);
	if (!c)
		return moe_err(ENOMEM, "out of memory");
	for (uint32_t d = 0; d < D; d++) {
		int32_t m = moe_pred_target(s->pred, l, d);

		/* a nearer layer's prediction, made later, replaces this one */
		for (uint32_t e = 0; m >= 0 && e < E; e++)
			moe_book_hint(s->book, (uint32_t)m, e, s->prob[d * E + e], clock);
	}
	n = moe_pred_candidates(s->pred, l, s->prob, sim_cached, s, c);
	budget = moe_pred_budget(s->pred, l);
	for (uint32_t i = 0; i < n && budget; i++) {
		struct moe_book_use u;

		/* a key predicted at two depths is fetched once */
		ret = moe_book_prefetch(s->book, c[i].layer, c[i].e, clock, &u);
		if (ret)
			continue;
		budget--;
		demote(s, &u, clock);
		s->ready[u.slot] = s->now;
		if (!from_host(s, c[i].layer, c[i].e, clock)) {
			s->reads++;
			if (s->timed) {
				struct pending *pd;

				if (s->n_pend == s->cap_pend) {
					uint32_t cap = s->cap_pend ? s->cap_pend * 2 : 64;
					struct pending *np = realloc(s->pend, sizeof(*np) * cap);

					if (!np) {
						free(c);
						return moe_err(ENOMEM, "out of memory");
					}
					s->pend = np;
					s->cap_pend = cap;
				}
				pd = &s->pend[s->n_pend++];
				pd->slot = u.slot;
				pd->k = (struct moe_key){ c[i].layer, c[i].e };
				pd->start = MOE_MAX(s->io_free, s->now);
				pd->end = pd->start + s->read_us;
				s->io_free = pd->end;
				s->ready[u.slot] = pd->end;
			}
		}
	}
	free(c);
	return 0;
}

static int step(struct sim *s, uint64_t tok, uint32_t l, int32_t *prev, uint32_t *k_prev)
{
	const struct moe_trace *t = s->t;
	const int16_t *src = moe_trace_ids(t, tok, l);
	uint64_t clock = tok - s->t0;
	uint32_t k = t->k[l], n = 0, *ids = s->ids;
	int32_t chosen[MOE_TRACE_MAX_K];
	double wait_until = s->now;
	uint32_t n_read = 0;
	int ret = 0;

	for (uint32_t j = 0; j < k; j++)
		chosen[j] = src[j];
	for (uint32_t j = 0; j < k; j++)
		ids[n++] = (uint32_t)src[j];
	qsort(ids, n, sizeof(*ids), cmp_u32);
	for (uint32_t j = 1, w = 1; j <= n; j++)
		if (j == n) {
			n = w;
		} else if (ids[j] != ids[w - 1]) {
			ids[w++] = ids[j];
		}
	moe_book_layer(s->book, l, clock, ids, n);
	if (s->pred)
		moe_pred_learn(s->pred, l, chosen, k);
	if (s->timed) {
		pend_reap(s);
		cancel_wrong(s, l, ids, n);
	}
	/* the hits first, as the live engine pins what is cached before any miss may evict it */
	for (int pass = 0; pass < 2; pass++)
		for (uint32_t j = 0; j < n; j++) {
			bool cached = moe_book_lookup(s->book, l, ids[j]) >= 0;
			struct moe_book_use u;

			if (cached != !pass)
				continue;
			ret = moe_book_use(s->book, l, ids[j], clock, true, &u);
			if (ret < 0)
				return moe_err_prefix(ret, "token %llu layer %u",
						      (unsigned long long)tok, l);
			if (u.hit) {
				if (u.prefetched && s->ready[u.slot] > s->now) {
					s->late++;
					wait_until = MOE_MAX(wait_until, s->ready[u.slot]);
				}
				continue;
			}
			demote(s, &u, clock);
			if (from_host(s, l, ids[j], clock)) {
				s->host_hits++;
			} else {
				s->reads++;
				n_read++;
			}
			s->ready[u.slot] = s->now;
		}
	if (s->timed) {
		double d = n_read * s->read_us, stall;

		delay_prefetches(s, d);
		/* the channel is serial: the late prefetches and the demand reads end together */
		wait_until += d;
		stall = wait_until - s->now;
		s->stall_us += stall;
		s->now = wait_until;
	}
	moe_routestats_add(s->rs, l, *k_prev ? prev : NULL, *k_prev, chosen, k);
	memcpy(prev, chosen, sizeof(*chosen) * k);
	*k_prev = k;
	if (s->pred)
		ret = prefetch(s, tok, l, chosen, clock);
	for (uint32_t j = 0; j < n; j++)
		moe_book_unpin(s->book, (uint32_t)moe_book_lookup(s->book, l, ids[j]));
	if (s->timed)
		s->now += s->p->layer_us;
	return ret;
}

void moe_sim_params_init(struct moe_sim_params *p)
{
	if (!p)
		return;
	memset(p, 0, sizeof(*p));
	p->policy = "lru";
	p->prefetch = "none";
}

int moe_sim_run(const struct moe_trace *t, const struct moe_sim_params *p,
		struct moe_sim_result *out)
{
	struct sim s = { .t = t, .p = p };
	struct moe_book_stats bs;
	uint64_t t1, bytes;
	int32_t prev[MOE_TRACE_MAX_K];
	int ret;

	if (!t || !p || !out)
		return moe_err(EINVAL, "moe_sim_run: NULL argument");
	memset(out, 0, sizeof(*out));
	ret = setup(&s);
	if (ret < 0)
		goto out;
	t1 = t->seq_first[p->seq_end ? p->seq_end : t->n_seq];
	for (uint64_t tok = s.t0; tok < t1 && !ret; tok++) {
		uint32_t k_prev = 0;

		for (uint32_t l = 0; l < t->n_layer && !ret; l++)
			if (t->k[l])
				ret = step(&s, tok, l, prev, &k_prev);
		moe_routestats_token(s.rs);
	}
	if (ret < 0)
		goto out;
	moe_book_get_stats(s.book, &bs);
	bytes = p->expert_bytes ? p->expert_bytes : 1;
	out->tokens = t1 - s.t0;
	out->hits = bs.hits - s.late;
	out->misses = bs.misses + s.late;
	out->uses = bs.hits + bs.misses;
	out->evictions = bs.evictions;
	out->host_hits = s.host_hits;
	out->prefetches = bs.prefetches;
	out->prefetch_used = bs.prefetch_used - s.late;
	out->prefetch_late = s.late;
	out->prefetch_cancelled = s.cancelled;
	out->hit_rate = out->uses ? (double)out->hits / out->uses : 1;
	out->miss_bytes_per_token = (double)out->misses * bytes / out->tokens;
	out->fetched_bytes_per_token = (double)(bs.misses + bs.prefetches - s.cancelled) * bytes /
				       out->tokens;
	out->read_bytes_per_token = (double)s.reads * bytes / out->tokens;
	if (bs.prefetches > s.cancelled)
		out->prefetch_precision = (double)out->prefetch_used / (bs.prefetches - s.cancelled);
	if (out->prefetch_used + out->misses)
		out->prefetch_recall = (double)out->prefetch_used /
				       (out->prefetch_used + out->misses);
	if (s.timed && s.now > 0)
		out->tokens_per_s = out->tokens / (s.now * 1e-6);
	out->stall_s = s.stall_us * 1e-6;
out:
	teardown(&s);
	return ret;
}
