/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cache/policy.h"
#include "cache/predict.h"
#include "cache/routestats.h"
#include "util/util.h"

#define BINS 16
/* observations a calibration cell needs to outweigh its prior */
#define PRIOR_W 8.0
#define NB_SMOOTH 2.0                /* pseudo-uses pulling P(f | e) to f's popularity */

struct cell {
	double h, n;
};

struct moe_pred {
	struct moe_pred_cfg cfg;
	uint32_t L, E;
	uint32_t *k;
	int32_t *target;             /* [L][depth] */
	const struct moe_routestats *rs;
	struct cell *cal;            /* [depth][2][BINS] */
	uint8_t *feat;               /* [L][depth][E]: bin | spec << 7, for the next routing */
	bool *pending;               /* [L][depth] */
	double *q, *q2;              /* [E] scratch */
	float *pt;                   /* [E] scratch: one token's probabilities */
};

static const struct {
	const char *name;
	uint32_t sources;
} kinds[] = {
	{ "none", 0 },
	{ "pop", MOE_PRED_POP },
	{ "trans", MOE_PRED_TRANS },
	{ "spec", MOE_PRED_SPEC | MOE_PRED_POP },
	{ "mix", MOE_PRED_SPEC | MOE_PRED_TRANS },
};

const char *moe_pred_names(void)
{
	return "none, pop, trans, spec, mix";
}

int moe_pred_parse(const char *spec, struct moe_pred_cfg *out)
{
	const char *colon = spec ? strchr(spec, ':') : NULL, *key;
	size_t n = colon ? (size_t)(colon - spec) : (spec ? strlen(spec) : 0);
	struct moe_opt_iter it;
	double v;
	int ret;

	memset(out, 0, sizeof(*out));
	out->name = "none";
	if (!spec || !*spec)
		return 0;
	for (size_t i = 0; i < MOE_ARRAY_SIZE(kinds); i++)
		if (strlen(kinds[i].name) == n && !strncmp(kinds[i].name, spec, n)) {
			out->name = kinds[i].name;
			out->sources = kinds[i].sources;
			goto found;
		}
	return moe_err(EINVAL, "unknown prefetcher '%.*s' (%s)", (int)n, spec, moe_pred_names());
found:
	if (!out->sources) {
		if (colon)
			return moe_err(EINVAL, "prefetcher none has no options");
		return 0;
	}
	out->depth = 1;
	out->min_p = 0.5;
	moe_opt_begin(&it, colon ? colon + 1 : NULL, "prefetcher");
	while ((ret = moe_opt_next(&it, &key, &v)) > 0) {
		if (!strcmp(key, "depth") && v >= 1 && v <= MOE_PRED_MAX_DEPTH && v == (int)v)
			out->depth = (uint32_t)v;
		else if (!strcmp(key, "min") && v >= 0 && v <= 1)
			out->min_p = v;
		else if (!strcmp(key, "budget") && v >= 0 && v <= 65536)
			out->budget = v;
		else
			return moe_err(EINVAL, "prefetcher %s: bad option %s=%g (depth=1..%d, "
				       "min=0..1, budget=experts per layer)", out->name, key, v,
				       MOE_PRED_MAX_DEPTH);
	}
	return ret;
}

void moe_pred_destroy(struct moe_pred *p)
{
	if (!p)
		return;
	free(p->k);
	free(p->target);
	free(p->cal);
	free(p->feat);
	free(p->pending);
	free(p->q);
	free(p->q2);
	free(p->pt);
	free(p);
}

int moe_pred_create(const struct moe_pred_cfg *cfg, uint32_t n_layer, uint32_t n_expert,
		    const uint32_t *k, const struct moe_routestats *rs, struct moe_pred **out)
{
	struct moe_pred *p;
	uint32_t D = MOE_MAX(cfg->depth, 1u);

	*out = NULL;
	if (!cfg->sources)
		return moe_err(EINVAL, "no predictor for prefetcher none");
	if ((cfg->sources & (MOE_PRED_TRANS | MOE_PRED_POP)) && (!rs || rs->n_layer != n_layer ||
								  rs->n_expert != n_expert))
		return moe_err(EINVAL, "prefetcher %s needs routing statistics of the model's shape",
			       cfg->name);
	p = calloc(1, sizeof(*p));
	if (!p)
		return moe_err(ENOMEM, "out of memory");
	p->cfg = *cfg;
	p->cfg.depth = D;
	p->L = n_layer;
	p->E = n_expert;
	p->rs = rs;
	p->k = malloc(sizeof(*p->k) * n_layer);
	p->target = malloc(sizeof(*p->target) * n_layer * D);
	p->cal = calloc((size_t)D * 2 * BINS, sizeof(*p->cal));
	p->feat = calloc((size_t)n_layer * D * n_expert, 1);
	p->pending = calloc((size_t)n_layer * D, sizeof(*p->pending));
	p->q = calloc(n_expert, sizeof(*p->q));
	p->q2 = calloc(n_expert, sizeof(*p->q2));
	p->pt = calloc(n_expert, sizeof(*p->pt));
	if (!p->k || !p->target || !p->cal || !p->feat || !p->pending || !p->q || !p->q2 ||
	    !p->pt) {
		moe_pred_destroy(p);
		return moe_err(ENOMEM, "out of memory");
	}
	memcpy(p->k, k, sizeof(*p->k) * n_layer);
	for (uint32_t l = 0; l < n_layer; l++) {
		uint32_t m = l, d = 0;

		while (d < D) {
			do
				m++;
			while (m < n_layer && !p->k[m]);
			p->target[l * D + d++] = m < n_layer && p->k[l] ? (int32_t)m : -1;
		}
	}
	*out = p;
	return 0;
}

int32_t moe_pred_target(const struct moe_pred *p, uint32_t layer, uint32_t d)
{
	if (layer >= p->L || d >= p->cfg.depth)
		return -1;
	return p->target[layer * p->cfg.depth + d];
}

static uint8_t bin(double s)
{
	int b = (int)(s * BINS);

	return (uint8_t)MOE_MIN(MOE_MAX(b, 0), BINS - 1);
}

static double calibrated(const struct moe_pred *p, uint32_t d, uint8_t f, double raw)
{
	const struct cell *c = &p->cal[(d * 2 + (f >> 7)) * BINS + (f & 0x7f)];
	double prior = f >> 7 ? MOE_MAX(raw, 0.7) : raw;

	return (c->h + PRIOR_W * prior) / (c->n + PRIOR_W);
}

void moe_pred_learn(struct moe_pred *p, uint32_t layer, const int32_t *ids, uint32_t k)
{
	uint32_t D = p->cfg.depth;
	uint8_t used[65536 / 8];

	if (layer >= p->L)
		return;
	memset(used, 0, (p->E + 7) / 8);
	for (uint32_t j = 0; j < k; j++)
		if (ids[j] >= 0 && (uint32_t)ids[j] < p->E)
			used[ids[j] / 8] |= (uint8_t)(1u << (ids[j] % 8));
	for (uint32_t d = 0; d < D; d++) {
		const uint8_t *f = &p->feat[((uint64_t)layer * D + d) * p->E];

		if (!p->pending[layer * D + d])
			continue;
		p->pending[layer * D + d] = false;
		for (uint32_t e = 0; e < p->E; e++) {
			struct cell *c = &p->cal[(d * 2 + (f[e] >> 7)) * BINS + (f[e] & 0x7f)];

			c->h += (used[e / 8] >> (e % 8)) & 1;
			c->n += 1;
		}
	}
}

/* Raw statistical score of every expert of target d, for one token's ids at @layer: p->q. */
static void raw_scores(struct moe_pred *p, uint32_t layer, const int32_t *ids, uint32_t d)
{
	const struct moe_routestats *rs = p->rs;
	uint32_t E = p->E, src = layer;
	int32_t m = moe_pred_target(p, layer, d);

	memset(p->q, 0, sizeof(*p->q) * E);
	if (m < 0)
		return;
	if (!(p->cfg.sources & MOE_PRED_TRANS)) {
		uint64_t n = (p->cfg.sources & MOE_PRED_POP) ? rs->layer_tokens[m] : 0;

		for (uint32_t f = 0; n && f < E; f++)
			p->q[f] = (double)rs->count[(uint64_t)m * E + f] / n;
		return;
	}
	/*
	 * The next layer from the chosen set: naive Bayes, each chosen expert's
	 * evidence added in log-odds to the target's popularity.
	 */
	{
		int32_t dst = moe_pred_target(p, layer, 0);
		uint64_t nt = rs->layer_tokens[dst];

		for (uint32_t f = 0; f < E; f++) {
			double pf = (rs->count[(uint64_t)dst * E + f] + 0.5) / (nt + 1.0), lo;

			pf = MOE_MIN(MOE_MAX(pf, 1e-4), 1 - 1e-4);
			lo = log(pf / (1 - pf));
			for (uint32_t j = 0; j < p->k[layer]; j++) {
				uint64_t pk, c;
				double pe;

				if (ids[j] < 0 || (uint32_t)ids[j] >= E)
					continue;
				pk = (uint64_t)layer * E + ids[j];
				c = rs->count[pk];
				if (!c)
					continue;
				pe = (rs->trans[pk * E + f] + NB_SMOOTH * pf) / (c + NB_SMOOTH);
				pe = MOE_MIN(MOE_MAX(pe, 1e-4), 1 - 1e-4);
				lo += log(pe / (1 - pe)) - log(pf / (1 - pf));
			}
			p->q2[f] = 1 / (1 + exp(-lo));
		}
		src = (uint32_t)dst;
		if (!d) {
			memcpy(p->q, p->q2, sizeof(*p->q) * E);
			memset(p->q2, 0, sizeof(*p->q2) * E);
			return;
		}
	}
	/* deeper layers: the distribution pushed through the transitions one layer at a time */
	for (uint32_t step = 1; step <= d; step++) {
		int32_t dst = moe_pred_target(p, layer, step);
		double norm = p->k[src];

		memset(p->q, 0, sizeof(*p->q) * E);
		for (uint32_t e = 0; e < E; e++) {
			uint64_t pk = (uint64_t)src * E + e;
			uint64_t c = rs->count[pk];

			if (p->q2[e] <= 0 || !c)
				continue;
			for (uint32_t f = 0; f < E; f++)
				p->q[f] += p->q2[e] * rs->trans[pk * E + f] / (double)c;
		}
		for (uint32_t f = 0; f < E; f++)
			p->q[f] = norm > 0 ? MOE_MIN(p->q[f] / norm, 1.0) : 0;
		memcpy(p->q2, p->q, sizeof(*p->q) * E);
		src = (uint32_t)dst;
	}
	memset(p->q2, 0, sizeof(*p->q2) * E);
}

void moe_pred_predict(struct moe_pred *p, uint32_t layer, const int32_t *ids, uint32_t n_tok,
		      uint32_t stride, const int32_t *spec, float *prob)
{
	uint32_t D = p->cfg.depth, E = p->E;

	for (uint64_t i = 0; i < (uint64_t)D * E; i++)
		prob[i] = 0;
	if (layer >= p->L || !p->k[layer])
		return;
	for (uint32_t d = 0; d < D; d++) {
		int32_t m = moe_pred_target(p, layer, d);
		uint8_t *feat = m >= 0 ? &p->feat[((uint64_t)m * D + d) * E] : NULL;

		if (m < 0)
			continue;
		for (uint32_t t = 0; t < n_tok; t++) {
			const int32_t *sp = spec && (p->cfg.sources & MOE_PRED_SPEC) ?
					    spec + ((uint64_t)d * n_tok + t) * stride : NULL;

			raw_scores(p, layer, ids + (uint64_t)t * stride, d);
			for (uint32_t e = 0; e < E; e++)
				p->pt[e] = 0;
			for (uint32_t j = 0; sp && j < p->k[m] && sp[j] >= 0; j++)
				if ((uint32_t)sp[j] < E)
					p->pt[sp[j]] = 1;
			for (uint32_t e = 0; e < E; e++) {
				uint8_t f = (uint8_t)(bin(p->q[e]) | (p->pt[e] > 0 ? 0x80 : 0));
				double pr = calibrated(p, d, f, p->q[e]);
				float *o = &prob[(uint64_t)d * E + e];

				/* the chance that at least one token of the batch uses it */
				*o = 1.0f - (1.0f - *o) * (1.0f - (float)pr);
				if (n_tok == 1)
					feat[e] = f;
			}
		}
		p->pending[(uint64_t)m * D + d] = n_tok == 1;
	}
}

static int by_prob(const void *a, const void *b)
{
	const struct moe_pred_cand *x = a, *y = b;

	if (x->p != y->p)
		return x->p > y->p ? -1 : 1;
	if (x->d != y->d)
		return x->d < y->d ? -1 : 1;
	return x->e < y->e ? -1 : x->e > y->e;
}

uint32_t moe_pred_candidates(const struct moe_pred *p, uint32_t layer, const float *prob,
			     bool (*cached)(void *arg, uint32_t layer, uint32_t e), void *arg,
			     struct moe_pred_cand *out)
{
	uint32_t n = 0;

	for (uint32_t d = 0; d < p->cfg.depth; d++) {
		int32_t m = moe_pred_target(p, layer, d);

		for (uint32_t e = 0; m >= 0 && e < p->E; e++) {
			float pr = prob[d * p->E + e];

			if (pr >= p->cfg.min_p && !cached(arg, (uint32_t)m, e))
				out[n++] = (struct moe_pred_cand){ (uint32_t)m, e, d, pr };
		}
	}
	qsort(out, n, sizeof(*out), by_prob);
	return n;
}

uint32_t moe_pred_budget(const struct moe_pred *p, uint32_t layer)
{
	if (p->cfg.budget > 0)
		return (uint32_t)p->cfg.budget;
	return layer < p->L ? p->k[layer] : 0;
}
