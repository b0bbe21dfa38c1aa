/* SPDX-License-Identifier: MIT */
/*
 * Least recently used: a use stamp per key from a counter bumped at every
 * use (the clock alone ties every key of one token); the victim is the
 * candidate with the oldest stamp.  A prefetched key counts as used when it
 * arrives.  A linear scan over the candidates is cheap next to reading an
 * expert of megabytes.
 */
#include <errno.h>
#include <stdlib.h>

#include "cache/policy.h"
#include "util/util.h"

struct lru {
	uint32_t n_expert;
	uint64_t seq;
	uint64_t stamp[];
};

static int lru_create(const struct moe_policy_params *p, void **out)
{
	struct moe_opt_iter it;
	const char *key;
	double v;
	struct lru *l;
	int ret;

	moe_opt_begin(&it, p->opts, "policy lru");
	if ((ret = moe_opt_next(&it, &key, &v)) != 0)
		return ret < 0 ? ret : moe_err(EINVAL, "policy lru has no option '%s'", key);
	l = calloc(1, sizeof(*l) + sizeof(uint64_t) * p->n_layer * p->n_expert);
	if (!l)
		return moe_err(ENOMEM, "out of memory");
	l->n_expert = p->n_expert;
	*out = l;
	return 0;
}

static void lru_destroy(void *state)
{
	free(state);
}

static void lru_hit(void *state, struct moe_key k, uint64_t clock)
{
	struct lru *l = state;

	(void)clock;
	l->stamp[(uint64_t)k.layer * l->n_expert + k.e] = ++l->seq;
}

static void lru_insert(void *state, struct moe_key k, uint64_t clock, bool prefetch)
{
	(void)prefetch;
	lru_hit(state, k, clock);
}

static void lru_evict(void *state, struct moe_key k)
{
	struct lru *l = state;

	l->stamp[(uint64_t)k.layer * l->n_expert + k.e] = 0;
}

static uint32_t lru_victim(void *state, const struct moe_key *cand, uint32_t n, uint64_t clock)
{
	struct lru *l = state;
	uint32_t best = 0;

	(void)clock;
	for (uint32_t i = 1; i < n; i++)
		if (l->stamp[(uint64_t)cand[i].layer * l->n_expert + cand[i].e] <
		    l->stamp[(uint64_t)cand[best].layer * l->n_expert + cand[best].e])
			best = i;
	return best;
}

const struct moe_cache_policy_ops moe_policy_lru = {
	.name = "lru",
	.help = "least recently used",
	.create = lru_create,
	.destroy = lru_destroy,
	.hit = lru_hit,
	.insert = lru_insert,
	.evict = lru_evict,
	.victim = lru_victim,
};
