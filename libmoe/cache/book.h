/* SPDX-License-Identifier: MIT */
/*
 * The cache's bookkeeping, apart from any data movement: which (layer,
 * expert) sits in which slot, pins, free slots, the eviction policy, and
 * hit/miss accounting.  Slots form pools (one per expert size class); a key
 * only ever lives in its own pool.  The live expert cache and the trace
 * simulator both run this code.
 */
#ifndef MOE_CACHE_BOOK_H
#define MOE_CACHE_BOOK_H

#include <stdbool.h>
#include <stdint.h>

#include "cache/policy.h"

struct moe_book;

struct moe_book_params {
	uint32_t n_layer;
	uint32_t n_expert;
	/* [layer * n_expert + e] -> pool, or -1 where there is no routed expert */
	const int32_t *pool_of;
	uint32_t n_pools;
	const uint32_t *pool_slots;  /* slots per pool */
	const struct moe_cache_policy_ops *policy;   /* NULL: LRU */
};

int moe_book_create(const struct moe_book_params *p, struct moe_book **out);
void moe_book_destroy(struct moe_book *b);

uint32_t moe_book_n_slots(const struct moe_book *b);
/* The slot holding (layer, e), or -1. */
int32_t moe_book_lookup(const struct moe_book *b, uint32_t layer, uint32_t e);
/* The pool of (layer, e), or -1. */
int32_t moe_book_pool_of(const struct moe_book *b, uint32_t layer, uint32_t e);
/* First slot of pool @pool; its slots are consecutive. */
uint32_t moe_book_pool_first(const struct moe_book *b, uint32_t pool);
/* The key in @slot; false when the slot is empty. */
bool moe_book_key(const struct moe_book *b, uint32_t slot, struct moe_key *out);

struct moe_book_use {
	uint32_t slot;
	bool hit;
	bool evicted;                /* the slot held @old, which is gone now */
	struct moe_key old;
};

/*
 * Use (layer, e) at @clock and pin its slot.  A miss takes a free slot of
 * the key's pool, else the policy's victim among its unpinned slots.
 * -EAGAIN when every slot of the pool is pinned, -EINVAL for a key that is
 * not a routed expert.  With @count false the use is not counted as a hit or
 * miss (prefetches, warm-up).
 */
int moe_book_use(struct moe_book *b, uint32_t layer, uint32_t e, uint64_t clock, bool count,
		 struct moe_book_use *out);
/* Can a miss of (layer, e) get a slot now (a free or unpinned one)? */
bool moe_book_can_take(const struct moe_book *b, uint32_t layer, uint32_t e);
void moe_book_pin(struct moe_book *b, uint32_t slot);
void moe_book_unpin(struct moe_book *b, uint32_t slot);
uint32_t moe_book_pins(const struct moe_book *b, uint32_t slot);
/* Empty @slot (a failed fetch): the key is no longer cached. */
void moe_book_drop(struct moe_book *b, uint32_t slot);

struct moe_book_stats {
	uint64_t hits, misses, evictions;
};
void moe_book_get_stats(const struct moe_book *b, struct moe_book_stats *out);
void moe_book_reset_stats(struct moe_book *b);

#endif
