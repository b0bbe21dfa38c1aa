/* SPDX-License-Identifier: MIT */
/*
 * Least frequently used, with decay: each key's count is multiplied by
 * `decay` per token and gains 1 per use; the victim has the lowest decayed
 * count (ties: the one used longest ago).  Counts are kept as logarithms
 * relative to token 0, ln(count) + t * ln(1/decay), so comparing two keys
 * needs no power of the decay: the common factor decay^now cancels.  A
 * prefetched key starts with the count of one use.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cache/policy.h"
#include "util/util.h"

#define LFU_DEFAULT_DECAY 0.9

struct lfu {
	uint32_t n_expert;
	double kappa;                /* ln(1/decay) per token */
	double *lv;                  /* per key: ln(count) + t_last * kappa; -inf when unknown */
	uint64_t *seq;               /* per key: last use, for ties */
	uint64_t n_seq;
};

static int lfu_create(const struct moe_policy_params *p, void **out)
{
	uint64_t n = (uint64_t)p->n_layer * p->n_expert;
	double decay = LFU_DEFAULT_DECAY, v;
	struct moe_opt_iter it;
	const char *key;
	struct lfu *l;
	int ret;

	moe_opt_begin(&it, p->opts, "policy lfu");
	while ((ret = moe_opt_next(&it, &key, &v)) > 0) {
		if (strcmp(key, "decay"))
			return moe_err(EINVAL, "policy lfu has no option '%s' (decay=D)", key);
		if (!(v > 0 && v <= 1))
			return moe_err(EINVAL, "policy lfu: decay %g is not in (0, 1]", v);
		decay = v;
	}
	if (ret < 0)
		return ret;
	l = calloc(1, sizeof(*l));
	if (!l)
		return moe_err(ENOMEM, "out of memory");
	l->n_expert = p->n_expert;
	l->kappa = -log(decay);
	l->lv = malloc(sizeof(*l->lv) * n);
	l->seq = calloc(n, sizeof(*l->seq));
	if (!l->lv || !l->seq) {
		free(l->lv);
		free(l->seq);
		free(l);
		return moe_err(ENOMEM, "out of memory");
	}
	for (uint64_t i = 0; i < n; i++)
		l->lv[i] = -INFINITY;
	*out = l;
	return 0;
}

static void lfu_destroy(void *state)
{
	struct lfu *l = state;

	free(l->lv);
	free(l->seq);
	free(l);
}

/* count(now) = exp(lv - now * kappa); one more use adds 1 */
static void lfu_hit(void *state, struct moe_key k, uint64_t clock)
{
	struct lfu *l = state;
	uint64_t i = (uint64_t)k.layer * l->n_expert + k.e;
	double now = (double)clock * l->kappa, c = exp(l->lv[i] - now);

	l->lv[i] = log(c + 1.0) + now;
	l->seq[i] = ++l->n_seq;
}

static void lfu_insert(void *state, struct moe_key k, uint64_t clock, bool prefetch)
{
	(void)prefetch;
	lfu_hit(state, k, clock);
}

/* The count survives eviction: a returning key keeps its history. */
static void lfu_evict(void *state, struct moe_key k)
{
	(void)state;
	(void)k;
}

static uint32_t lfu_victim(void *state, const struct moe_key *cand, uint32_t n, uint64_t clock)
{
	struct lfu *l = state;
	uint32_t best = 0;
	uint64_t bi = (uint64_t)cand[0].layer * l->n_expert + cand[0].e;

	(void)clock;
	for (uint32_t j = 1; j < n; j++) {
		uint64_t i = (uint64_t)cand[j].layer * l->n_expert + cand[j].e;

		if (l->lv[i] < l->lv[bi] || (l->lv[i] == l->lv[bi] && l->seq[i] < l->seq[bi])) {
			best = j;
			bi = i;
		}
	}
	return best;
}

const struct moe_cache_policy_ops moe_policy_lfu = {
	.name = "lfu",
	.help = "least frequently used, counts decaying per token (decay=0.9)",
	.create = lfu_create,
	.destroy = lfu_destroy,
	.hit = lfu_hit,
	.insert = lfu_insert,
	.evict = lfu_evict,
	.victim = lfu_victim,
};
