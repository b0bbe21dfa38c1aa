/* SPDX-License-Identifier: MIT */
/*
 * Least recently used: a use stamp per key from a counter bumped at every
 * use (the clock alone ties every key of one token); the victim is the
 * candidate with the oldest stamp.  A linear scan over the candidates is
 * cheap next to reading an expert of megabytes.
 */
#include <stdlib.h>

#include "cache/policy.h"

struct lru {
	uint32_t n_expert;
	uint64_t seq;
	uint64_t stamp[];
};

static void *lru_create(const struct moe_policy_params *p)
{
	struct lru *l = calloc(1, sizeof(*l) + sizeof(uint64_t) * p->n_layer * p->n_expert);

	if (l)
		l->n_expert = p->n_expert;
	return l;
}

static void lru_destroy(void *state)
{
	free(state);
}

static void lru_use(void *state, struct moe_key k, uint64_t clock)
{
	struct lru *l = state;

	(void)clock;
	l->stamp[(uint64_t)k.layer * l->n_expert + k.e] = ++l->seq;
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
	.create = lru_create,
	.destroy = lru_destroy,
	.hit = lru_use,
	.insert = lru_use,
	.evict = lru_evict,
	.victim = lru_victim,
};
