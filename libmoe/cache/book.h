/* SPDX-License-Identifier: MIT */
/*
 * The cache's bookkeeping, apart from any data movement: which (layer,
 * expert) sits in which slot, pins, free slots, the eviction policy, hot
 * experts held for good, prefetches and hit/miss accounting.  Slots form
 * pools (one per expert size class, or one per layer); a key only ever
 * lives in its own pool.  The live expert cache and the trace simulator both
 * run this code, so they make the same decisions on the same routings.
 *
 * Per routing of one layer: moe_book_layer() with the experts it uses, then
 * moe_book_use() for each (hits first, then misses, each in expert order, is
 * what both callers do), prefetches for the layers ahead with
 * moe_book_hint()/moe_book_prefetch(), and the pins dropped once the layer
 * has computed.
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
	const char *policy_opts;     /* the policy's "key=value,..." or NULL */
	const uint32_t *k;           /* experts per token of each layer (NULL: 1 each) */
	const uint8_t *dense;        /* layers whose one key is a streamed dense FFN, or NULL */
	const struct moe_routestats *stats;          /* for the policy, or NULL */
	const struct moe_future *future;             /* for offline policies */
	uint32_t hot_max;            /* slots that may hold hot experts for good */
	uint32_t hot_after;          /* demand uses that make an expert hot; 0: moe_book_hold only */
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

/* Layer @layer of token @clock routes now and uses ids[0..n) (a batch: their union). */
void moe_book_layer(struct moe_book *b, uint32_t layer, uint64_t clock, const uint32_t *ids,
		    uint32_t n);

struct moe_book_use {
	uint32_t slot;
	bool hit;
	bool prefetched;             /* a hit on a prefetch not used before */
	bool evicted;                /* the slot held @old, which is gone now */
	bool old_unused;             /* @old was a prefetch never used */
	struct moe_key old;
};

/*
 * Use (layer, e) at @clock and pin its slot.  A miss takes a free slot of
 * the key's pool, else the policy's victim among its unpinned slots.
 * -EAGAIN when every slot of the pool is pinned, -EINVAL for a key that is
 * not a routed expert.  With @count false the use is not counted as a hit or
 * miss (warm-up, the host tier's own bookkeeping).
 */
int moe_book_use(struct moe_book *b, uint32_t layer, uint32_t e, uint64_t clock, bool count,
		 struct moe_book_use *out);
/* Empty slots of the pool of (layer, e) (0 for a key that is not a routed expert). */
uint32_t moe_book_free_slots(const struct moe_book *b, uint32_t layer, uint32_t e);
/* Can a miss of (layer, e) get a slot now (a free or unpinned one)? */
bool moe_book_can_take(const struct moe_book *b, uint32_t layer, uint32_t e);
/* A predictor's probability that (layer, e) is used at its layer's next routing. */
void moe_book_hint(struct moe_book *b, uint32_t layer, uint32_t e, float p, uint64_t clock);
/*
 * Bring (layer, e) in ahead of its use, unpinned: 1 when it is cached
 * already, 0 with out->slot taken (a free slot, or a victim the policy
 * values below the key), -EAGAIN when nothing may be given up for it.
 */
int moe_book_prefetch(struct moe_book *b, uint32_t layer, uint32_t e, uint64_t clock,
		      struct moe_book_use *out);
/* Does @slot hold a prefetch that no layer has used yet? */
bool moe_book_unused_prefetch(const struct moe_book *b, uint32_t slot);
void moe_book_pin(struct moe_book *b, uint32_t slot);
void moe_book_unpin(struct moe_book *b, uint32_t slot);
uint32_t moe_book_pins(const struct moe_book *b, uint32_t slot);
/*
 * Hold @slot's expert for good (a hot expert); false when its pool must
 * keep its slots for a routing's experts.
 */
bool moe_book_hold(struct moe_book *b, uint32_t slot);
/* Empty @slot (a failed fetch): the key is no longer cached. */
void moe_book_drop(struct moe_book *b, uint32_t slot);
/* Empty @slot whose prefetch was cancelled before its data came. */
void moe_book_cancel(struct moe_book *b, uint32_t slot);

struct moe_book_stats {
	uint64_t hits, misses, evictions;
	uint64_t prefetches;         /* keys brought in by moe_book_prefetch */
	uint64_t prefetch_used;      /* ... then used by a routing */
	uint64_t prefetch_unused;    /* ... evicted or dropped before any use */
	uint64_t prefetch_cancelled; /* ... cancelled before their data came */
	uint32_t hot;                /* slots held for good */
};
void moe_book_get_stats(const struct moe_book *b, struct moe_book_stats *out);
/* Per layer: demand hits, misses, and the hits served by a prefetch. */
void moe_book_layer_stats(const struct moe_book *b, uint32_t layer, uint64_t *hits,
			  uint64_t *misses, uint64_t *prefetch_used);
void moe_book_reset_stats(struct moe_book *b);

/* Every counted use, for tests comparing the live cache with the simulator. */
typedef void (*moe_book_observer)(void *arg, uint32_t layer, uint32_t e, uint64_t clock,
				  bool hit);
void moe_book_set_observer(struct moe_book *b, moe_book_observer fn, void *arg);

#endif
