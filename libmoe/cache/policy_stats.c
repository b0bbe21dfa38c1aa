/* SPDX-License-Identifier: MIT */
/*
 * The statistics policy: an estimate of Belady's choice.  Belady evicts the
 * key used again furthest in the future; this policy evicts the key whose
 * *expected* next use is furthest, from what routing statistics say:
 *
 * - recency: the tokens since the key's last use (its gap);
 * - popularity with decay: a count per key decaying by `decay` per token;
 * - transitions: P(f at the next routed layer | the experts layer l chose),
 *   from counts of layer l -> l+1 pairs, known as soon as layer l routes;
 * - hints from a predictor (speculative gating), which override the rest
 *   for a key's next routing.
 *
 * The probability that a key is used at a routing of its layer is learned
 * online, per layer, in cells indexed by (gap, popularity[, transition])
 * buckets; from the per-visit probabilities, a recurrence gives the
 * expected number of routings of the layer until the key is used,
 * V(g) = (1 - p(g)) (1 + V(g + 1)), refreshed every few tokens.  A key's
 * expected next use, in layer routings from now, is the distance to its
 * layer's next routing plus n_layer times that expectation.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cache/policy.h"
#include "cache/routestats.h"
#include "util/util.h"

#define G_BUCKETS 14                 /* gap buckets; the last one is "never used" */
#define G_NEVER (G_BUCKETS - 1)
#define R_BUCKETS 8
#define T_BUCKETS 7                  /* 0: no transition estimate */
#define GAP_MAX 256
#define REFRESH 16                   /* tokens between recomputations of V */
#define DEFAULT_DECAY 0.95
#define DEFAULT_SMOOTH 16.0
#define P_MIN 1e-4

static const uint32_t gap_lo[G_BUCKETS - 1] = { 1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 64, 128 };
/* upper bounds of the popularity buckets: decayed count x (1 - decay), a use rate per token */
static const double rate_hi[R_BUCKETS - 1] = { 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45 };
static const double rate_mid[R_BUCKETS] = { 0.01, 0.035, 0.075, 0.125, 0.175, 0.25, 0.375, 0.6 };
static const double trans_hi[T_BUCKETS - 2] = { 0.05, 0.1, 0.2, 0.35, 0.5 };

struct cell {
	float h, n;                  /* uses, routings observed */
};

struct sp {
	uint32_t L, E;
	uint32_t *k;
	uint8_t *dense;              /* per layer: a streamed dense FFN (always used), or NULL */
	int32_t *next_moe;           /* per layer: the next routed layer of a token, or -1 */
	double decay, smooth;
	/* per key */
	int64_t *last;               /* token of the last use, -1: never */
	float *rate;                 /* decayed use count as of rate_t */
	uint64_t *rate_t;
	uint8_t *rb;                 /* popularity bucket at the last routing of the layer */
	float *hint;                 /* a predictor's probability for the next routing */
	uint8_t *hinted;
	uint8_t *tb;                 /* transition bucket for the next routing, 0: none */
	/* learned */
	struct cell *p2;             /* [L][G][R] */
	struct cell *p3;             /* [L][G][R][T] */
	struct cell *g2;             /* [G][R], all layers: the prior of p2 */
	float *trans;                /* [L][E][E]: e at l, then f at next_moe[l] */
	float *tcnt;                 /* [L][E]: uses of e at l whose next layer was seen */
	double *V;                   /* [L][R][GAP_MAX + 2]; index GAP_MAX + 1: never used */
	/* the routing in progress, whose outcome is learned at the next one */
	bool have_step;
	uint32_t sl;
	uint64_t st;
	uint8_t *used, *fg, *fr, *ft;    /* [E] */
	uint64_t refreshed;
	/* the previous routing, for transitions */
	uint32_t *prev_ids, n_prev, prev_layer;
	uint64_t prev_tok;
	bool prev_valid;
};

static uint8_t gap_bucket(int64_t gap)
{
	uint8_t b = 0;

	if (gap < 0)
		return G_NEVER;
	while (b + 1 < G_NEVER && (uint64_t)gap >= gap_lo[b + 1])
		b++;
	return b;
}

static uint8_t rate_bucket(double x)
{
	uint8_t b = 0;

	while (b < R_BUCKETS - 1 && x > rate_hi[b])
		b++;
	return b;
}

static uint8_t trans_bucket(double q)
{
	uint8_t b = 0;

	while (b < T_BUCKETS - 2 && q > trans_hi[b])
		b++;
	return (uint8_t)(b + 1);
}

static uint64_t key(const struct sp *s, uint32_t l, uint32_t e)
{
	return (uint64_t)l * s->E + e;
}

static double p2_at(const struct sp *s, uint32_t l, uint8_t g, uint8_t r)
{
	const struct cell *gc = &s->g2[g * R_BUCKETS + r];
	const struct cell *c = &s->p2[((uint64_t)l * G_BUCKETS + g) * R_BUCKETS + r];
	double prior = (gc->h + s->smooth * rate_mid[r]) / (gc->n + s->smooth);

	return (c->h + s->smooth * prior) / (c->n + s->smooth);
}

static double p3_at(const struct sp *s, uint32_t l, uint8_t g, uint8_t r, uint8_t t)
{
	const struct cell *c = &s->p3[(((uint64_t)l * G_BUCKETS + g) * R_BUCKETS + r) *
				      T_BUCKETS + t];

	return (c->h + s->smooth * p2_at(s, l, g, r)) / (c->n + s->smooth);
}

static double *v_row(const struct sp *s, uint32_t l, uint8_t r)
{
	return &s->V[((uint64_t)l * R_BUCKETS + r) * (GAP_MAX + 2)];
}

static void refresh(struct sp *s)
{
	for (uint32_t l = 0; l < s->L; l++) {
		if (!s->k[l])
			continue;
		for (uint8_t r = 0; r < R_BUCKETS; r++) {
			double *V = v_row(s, l, r), p;

			p = MOE_MAX(p2_at(s, l, gap_bucket(GAP_MAX), r), P_MIN);
			V[GAP_MAX] = (1 - p) / p;
			for (uint32_t g = GAP_MAX - 1; g >= 1; g--)
				V[g] = (1 - p2_at(s, l, gap_bucket(g), r)) * (1 + V[g + 1]);
			p = MOE_MAX(p2_at(s, l, G_NEVER, r), P_MIN);
			V[GAP_MAX + 1] = (1 - p) / p;
		}
	}
}

static void sp_free(struct sp *s)
{
	free(s->k);
	free(s->dense);
	free(s->next_moe);
	free(s->last);
	free(s->rate);
	free(s->rate_t);
	free(s->rb);
	free(s->hint);
	free(s->hinted);
	free(s->tb);
	free(s->p2);
	free(s->p3);
	free(s->g2);
	free(s->trans);
	free(s->tcnt);
	free(s->V);
	free(s->used);
	free(s->fg);
	free(s->fr);
	free(s->ft);
	free(s->prev_ids);
	free(s);
}

static int parse_opts(struct sp *s, const char *opts)
{
	struct moe_opt_iter it;
	const char *k;
	double v;
	int ret;

	moe_opt_begin(&it, opts, "policy stats");
	while ((ret = moe_opt_next(&it, &k, &v)) > 0) {
		if (!strcmp(k, "decay") && v > 0 && v < 1)
			s->decay = v;
		else if (!strcmp(k, "smooth") && v > 0)
			s->smooth = v;
		else
			return moe_err(EINVAL, "policy stats: bad option %s=%g (decay in (0,1), "
				       "smooth > 0)", k, v);
	}
	return ret;
}

/* Start from saved statistics: popularity, and the transition counts. */
static void warm(struct sp *s, const struct moe_routestats *rs)
{
	if (rs->n_layer != s->L || rs->n_expert != s->E)
		return;
	for (uint32_t l = 0; l < s->L; l++) {
		uint64_t n = rs->layer_tokens[l];

		if (!s->k[l] || !n)
			continue;
		for (uint32_t e = 0; e < s->E; e++) {
			uint64_t i = key(s, l, e);
			double x = (double)rs->count[i] / n;

			s->rate[i] = (float)(x / (1 - s->decay));
			s->rb[i] = rate_bucket(x);
			s->tcnt[i] = (float)rs->count[i];
			for (uint32_t f = 0; f < s->E; f++)
				s->trans[i * s->E + f] = (float)rs->trans[i * s->E + f];
		}
	}
}

static int stats_create(const struct moe_policy_params *p, void **out)
{
	uint64_t nk = (uint64_t)p->n_layer * p->n_expert, L = p->n_layer, E = p->n_expert;
	struct sp *s = calloc(1, sizeof(*s));
	int ret;

	if (!s)
		return moe_err(ENOMEM, "out of memory");
	s->L = p->n_layer;
	s->E = p->n_expert;
	s->decay = DEFAULT_DECAY;
	s->smooth = DEFAULT_SMOOTH;
	ret = parse_opts(s, p->opts);
	if (ret < 0) {
		sp_free(s);
		return ret;
	}
	s->k = calloc(L, sizeof(*s->k));
	s->next_moe = malloc(sizeof(*s->next_moe) * L);
	s->last = malloc(sizeof(*s->last) * nk);
	s->rate = calloc(nk, sizeof(*s->rate));
	s->rate_t = calloc(nk, sizeof(*s->rate_t));
	s->rb = calloc(nk, 1);
	s->hint = calloc(nk, sizeof(*s->hint));
	s->hinted = calloc(nk, 1);
	s->tb = calloc(nk, 1);
	s->p2 = calloc(L * G_BUCKETS * R_BUCKETS, sizeof(*s->p2));
	s->p3 = calloc(L * G_BUCKETS * R_BUCKETS * T_BUCKETS, sizeof(*s->p3));
	s->g2 = calloc(G_BUCKETS * R_BUCKETS, sizeof(*s->g2));
	s->trans = calloc(nk * E, sizeof(*s->trans));
	s->tcnt = calloc(nk, sizeof(*s->tcnt));
	s->V = calloc(L * R_BUCKETS * (GAP_MAX + 2), sizeof(*s->V));
	s->used = calloc(E, 1);
	s->fg = calloc(E, 1);
	s->fr = calloc(E, 1);
	s->ft = calloc(E, 1);
	s->prev_ids = calloc(E, sizeof(*s->prev_ids));
	if (!s->k || !s->next_moe || !s->last || !s->rate || !s->rate_t || !s->rb || !s->hint ||
	    !s->hinted || !s->tb || !s->p2 || !s->p3 || !s->g2 || !s->trans || !s->tcnt || !s->V ||
	    !s->used || !s->fg || !s->fr || !s->ft || !s->prev_ids) {
		sp_free(s);
		return moe_err(ENOMEM, "out of memory for policy stats");
	}
	for (uint32_t l = 0; l < L; l++)
		s->k[l] = p->k ? p->k[l] : 1;
	if (p->dense) {
		s->dense = malloc(L);
		if (!s->dense) {
			sp_free(s);
			return moe_err(ENOMEM, "out of memory for policy stats");
		}
		memcpy(s->dense, p->dense, L);
	}
	for (uint32_t l = 0; l < L; l++) {
		s->next_moe[l] = -1;
		for (uint32_t m = l + 1; m < L; m++)
			if (s->k[m]) {
				s->next_moe[l] = (int32_t)m;
				break;
			}
	}
	for (uint64_t i = 0; i < nk; i++)
		s->last[i] = -1;
	if (p->stats)
		warm(s, p->stats);
	refresh(s);
	*out = s;
	return 0;
}

static void stats_destroy(void *state)
{
	sp_free(state);
}

/* The routing observed last is over: learn how its features predicted its uses. */
static void learn_step(struct sp *s)
{
	for (uint32_t e = 0; e < s->E; e++) {
		uint8_t g = s->fg[e], r = s->fr[e], t = s->ft[e];
		float u = s->used[e];
		struct cell *c = &s->p2[((uint64_t)s->sl * G_BUCKETS + g) * R_BUCKETS + r];

		c->h += u;
		c->n += 1;
		s->g2[g * R_BUCKETS + r].h += u;
		s->g2[g * R_BUCKETS + r].n += 1;
		if (t) {
			c = &s->p3[(((uint64_t)s->sl * G_BUCKETS + g) * R_BUCKETS + r) * T_BUCKETS + t];
			c->h += u;
			c->n += 1;
		}
	}
}

static void stats_layer(void *state, uint32_t l, uint64_t t, const uint32_t *ids, uint32_t n)
{
	struct sp *s = state;
	bool one_token = n <= s->k[l];
	int32_t nl = s->next_moe[l];

	if (l >= s->L)
		return;
	if (s->have_step)
		learn_step(s);
	/* pairs of a token's consecutive routed layers */
	if (one_token && s->prev_valid && s->prev_tok == t && s->next_moe[s->prev_layer] ==
	    (int32_t)l) {
		for (uint32_t i = 0; i < s->n_prev; i++) {
			uint64_t pk = key(s, s->prev_layer, s->prev_ids[i]);

			s->tcnt[pk] += 1;
			for (uint32_t j = 0; j < n; j++)
				if (ids[j] < s->E)
					s->trans[pk * s->E + ids[j]] += 1;
		}
	}
	memset(s->used, 0, s->E);
	for (uint32_t j = 0; j < n; j++)
		if (ids[j] < s->E)
			s->used[ids[j]] = 1;
	for (uint32_t e = 0; e < s->E; e++) {
		uint64_t i = key(s, l, e);
		double r = s->rate[i] * pow(s->decay, (double)(t - s->rate_t[i]));

		s->fg[e] = gap_bucket(s->last[i] < 0 ? -1 : (int64_t)(t - (uint64_t)s->last[i]));
		s->rb[i] = s->fr[e] = rate_bucket(r * (1 - s->decay));
		s->ft[e] = s->tb[i];
		s->tb[i] = 0;
		s->hinted[i] = 0;
		if (s->used[e]) {
			s->last[i] = (int64_t)t;
			s->rate[i] = (float)(r + 1);
			s->rate_t[i] = t;
		}
	}
	/* what this routing says about the next layer's */
	if (one_token && nl >= 0) {
		for (uint32_t f = 0; f < s->E; f++) {
			double q = 0;
			uint32_t m = 0;

			for (uint32_t j = 0; j < n; j++) {
				uint64_t pk;

				if (ids[j] >= s->E)
					continue;
				pk = key(s, l, ids[j]);
				if (s->tcnt[pk] > 0) {
					q += s->trans[pk * s->E + f] / s->tcnt[pk];
					m++;
				}
			}
			s->tb[key(s, (uint32_t)nl, f)] = m ? trans_bucket(q / m) : 0;
		}
	}
	s->prev_valid = one_token;
	s->prev_layer = l;
	s->prev_tok = t;
	s->n_prev = 0;
	for (uint32_t j = 0; j < n && one_token; j++)
		if (ids[j] < s->E)
			s->prev_ids[s->n_prev++] = ids[j];
	s->have_step = true;
	s->sl = l;
	s->st = t;
	if (t >= s->refreshed + REFRESH) {
		refresh(s);
		s->refreshed = t;
	}
}

/* Expected layer routings until @k is used, seen from the routing in progress. */
static double expect(struct sp *s, struct moe_key k)
{
	uint64_t i = key(s, k.layer, k.e), tv, d;
	int64_t gap;
	double p0, rest;
	const double *V;
	uint8_t gb;

	if (!s->have_step) {
		tv = s->st;
		d = k.layer + 1;
	} else if (k.layer > s->sl) {
		tv = s->st;
		d = k.layer - s->sl;
	} else {
		tv = s->st + 1;
		d = k.layer + s->L - s->sl;
	}
	/* a streamed dense FFN is used at its layer's next routing, for sure */
	if (s->dense && s->dense[k.layer])
		return (double)d;
	gap = s->last[i] < 0 ? -1 : (int64_t)(tv - (uint64_t)s->last[i]);
	gb = gap_bucket(gap);
	if (s->hinted[i])
		p0 = s->hint[i];
	else if (s->tb[i])
		p0 = p3_at(s, k.layer, gb, s->rb[i], s->tb[i]);
	else
		p0 = p2_at(s, k.layer, gb, s->rb[i]);
	V = v_row(s, k.layer, s->rb[i]);
	rest = gap < 0 ? V[GAP_MAX + 1] : V[MOE_MIN((uint64_t)gap + 1, (uint64_t)GAP_MAX)];
	return (double)d + (double)s->L * (1 - p0) * (1 + rest);
}

static void stats_hit(void *state, struct moe_key k, uint64_t clock)
{
	(void)state;
	(void)k;
	(void)clock;
}

static void stats_insert(void *state, struct moe_key k, uint64_t clock, bool prefetch)
{
	(void)prefetch;
	stats_hit(state, k, clock);
}

static void stats_evict(void *state, struct moe_key k)
{
	(void)state;
	(void)k;
}

static uint32_t stats_victim(void *state, const struct moe_key *cand, uint32_t n, uint64_t clock)
{
	struct sp *s = state;
	double far = -1;
	uint32_t best = 0;

	(void)clock;
	for (uint32_t j = 0; j < n; j++) {
		double x = expect(s, cand[j]);

		if (x > far) {
			far = x;
			best = j;
		}
	}
	return best;
}

static void stats_hint(void *state, struct moe_key k, float p, uint64_t clock)
{
	struct sp *s = state;
	uint64_t i = key(s, k.layer, k.e);

	(void)clock;
	s->hint[i] = p;
	s->hinted[i] = 1;
}

static double stats_next_use(void *state, struct moe_key k, uint64_t clock)
{
	(void)clock;
	return expect(state, k);
}

const struct moe_cache_policy_ops moe_policy_stats = {
	.name = "stats",
	.help = "expected next use from recency, decayed popularity and layer transitions "
		"(decay=0.95, smooth=16)",
	.create = stats_create,
	.destroy = stats_destroy,
	.layer = stats_layer,
	.hit = stats_hit,
	.insert = stats_insert,
	.evict = stats_evict,
	.victim = stats_victim,
	.hint = stats_hint,
	.next_use = stats_next_use,
};
