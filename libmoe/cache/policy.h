/* SPDX-License-Identifier: MIT */
/*
 * Eviction policies: which cached expert to give up when a slot is needed.
 * A policy sees experts as (layer, expert) keys and time as a clock (the
 * token index), never slots, so the live cache and the trace simulator run
 * the very same policy code.
 */
#ifndef MOE_CACHE_POLICY_H
#define MOE_CACHE_POLICY_H

#include <stdbool.h>
#include <stdint.h>

struct moe_key {
	uint32_t layer;
	uint32_t e;
};

struct moe_policy_params {
	uint32_t n_layer;
	uint32_t n_expert;
	uint32_t n_slots;            /* slots of the cache the policy serves */
};

struct moe_cache_policy_ops {
	const char *name;
	void *(*create)(const struct moe_policy_params *p);
	void (*destroy)(void *state);
	/* a cached key was used at @clock */
	void (*hit)(void *state, struct moe_key k, uint64_t clock);
	/* a key was brought in at @clock (its first use) */
	void (*insert)(void *state, struct moe_key k, uint64_t clock);
	/* a key left the cache */
	void (*evict)(void *state, struct moe_key k);
	/* the index in cand[0..n) (n >= 1) of the key to evict */
	uint32_t (*victim)(void *state, const struct moe_key *cand, uint32_t n, uint64_t clock);
};

extern const struct moe_cache_policy_ops moe_policy_lru;

/* The policy called @name, or NULL. */
const struct moe_cache_policy_ops *moe_cache_policy_find(const char *name);
/* "lru, ..." for messages. */
const char *moe_cache_policy_names(void);

#endif
