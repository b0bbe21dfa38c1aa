/* SPDX-License-Identifier: MIT */
/*
 * Least recently used: a use stamp per slot; the victim is the free slot with
 * the oldest stamp (empty slots have stamp 0 and go first).  A linear scan is
 * cheap next to reading an expert of megabytes.
 */
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"

struct lru {
	uint64_t clock;
	uint64_t stamp[];
};

static void *lru_create(uint32_t n_slots)
{
	return calloc(1, sizeof(struct lru) + sizeof(uint64_t) * n_slots);
}

static void lru_destroy(void *state)
{
	free(state);
}

static void lru_touch(void *state, uint32_t slot)
{
	struct lru *l = state;

	l->stamp[slot] = ++l->clock;
}

static void lru_forget(void *state, uint32_t slot)
{
	((struct lru *)state)->stamp[slot] = 0;
}

static int lru_victim(void *state, const bool *busy, uint32_t n_slots)
{
	struct lru *l = state;
	int best = -1;

	for (uint32_t s = 0; s < n_slots; s++)
		if (!busy[s] && (best < 0 || l->stamp[s] < l->stamp[best]))
			best = (int)s;
	return best;
}

const struct moe_cache_policy_ops moe_policy_lru = {
	.name = "lru",
	.create = lru_create,
	.destroy = lru_destroy,
	.touch = lru_touch,
	.forget = lru_forget,
	.victim = lru_victim,
};

static const struct moe_cache_policy_ops *const policies[] = {
	&moe_policy_lru,
};

const struct moe_cache_policy_ops *moe_cache_policy_find(const char *name)
{
	for (size_t i = 0; i < sizeof(policies) / sizeof(policies[0]); i++)
		if (!strcmp(policies[i]->name, name))
			return policies[i];
	return NULL;
}
