/* SPDX-License-Identifier: MIT */
/*
 * Eviction policies: which cached expert to give up when a slot is needed.
 * A policy sees experts as (layer, expert) keys and time as a clock (the
 * token index) plus the layer being routed, never slots, so the live cache
 * and the trace simulator run the very same policy code.
 *
 * The bookkeeping (cache/book.c) calls, for each routing of one layer of one
 * token: layer(), then hit() or insert() for each expert the layer uses (its
 * uses), and victim() whenever a miss finds no free slot.  A prefetch brings
 * a key in with insert(.., prefetch = true), which is not a use.  A
 * predictor may tell a policy what it expects through hint().
 */
#ifndef MOE_CACHE_POLICY_H
#define MOE_CACHE_POLICY_H

#include <stdbool.h>
#include <stdint.h>

struct moe_key {
	uint32_t layer;
	uint32_t e;
};

struct moe_routestats;
struct moe_future;

struct moe_policy_params {
	uint32_t n_layer;
	uint32_t n_expert;
	uint32_t n_slots;            /* slots of the cache the policy serves */
	const uint32_t *k;           /* experts per token of each layer, 0 on dense layers */
	const uint8_t *dense;        /* per layer: a streamed dense FFN, key e = 0, used at every
				       routing of its layer; NULL: none */
	const struct moe_routestats *stats;  /* statistics to start from, or NULL */
	const struct moe_future *future;     /* every use to come: offline policies only */
	const char *opts;            /* "name=value,..." tunables, or NULL for the defaults */
};

struct moe_cache_policy_ops {
	const char *name;
	const char *help;            /* one line: what it keeps, its options */
	bool offline;                /* needs the future: the trace simulator only */
	/* 0 and *out, or -errno (moe_err) for bad options or no memory */
	int (*create)(const struct moe_policy_params *p, void **out);
	void (*destroy)(void *state);
	/*
	 * Layer @layer of token @clock is routed now and uses ids[0..n) (the
	 * union over the tokens of a batch); may be NULL.
	 */
	void (*layer)(void *state, uint32_t layer, uint64_t clock, const uint32_t *ids, uint32_t n);
	/* a cached key was used at @clock */
	void (*hit)(void *state, struct moe_key k, uint64_t clock);
	/* a key was brought in at @clock: its first use, or a prefetch (not a use) */
	void (*insert)(void *state, struct moe_key k, uint64_t clock, bool prefetch);
	/* a key left the cache */
	void (*evict)(void *state, struct moe_key k);
	/* the index in cand[0..n) (n >= 1) of the key to evict */
	uint32_t (*victim)(void *state, const struct moe_key *cand, uint32_t n, uint64_t clock);
	/* a predictor expects @k at its layer's next routing with probability @p; may be NULL */
	void (*hint)(void *state, struct moe_key k, float p, uint64_t clock);
	/*
	 * Expected layer routings until @k is used next (larger: worth less);
	 * may be NULL.  A prefetch evicts a victim only when it is worth less
	 * than the key it brings.
	 */
	double (*next_use)(void *state, struct moe_key k, uint64_t clock);
};

extern const struct moe_cache_policy_ops moe_policy_lru;
extern const struct moe_cache_policy_ops moe_policy_lfu;
extern const struct moe_cache_policy_ops moe_policy_stats;
extern const struct moe_cache_policy_ops moe_policy_belady;

/*
 * Every use to come, for Belady's offline policy: uses are added in order as
 * (clock, layer, expert); a use's position is clock * n_layer + layer.
 */
int moe_future_create(uint32_t n_layer, uint32_t n_expert, struct moe_future **out);
int moe_future_add(struct moe_future *f, uint64_t clock, uint32_t layer, uint32_t e);
/* After the last add: index the uses by key. */
int moe_future_seal(struct moe_future *f);
void moe_future_free(struct moe_future *f);

/*
 * The policy named by @spec ("lru", "lfu:decay=0.9": the part before ':'),
 * or NULL.  *opts (may be NULL) gets what follows the ':', or NULL.
 */
const struct moe_cache_policy_ops *moe_cache_policy_find(const char *spec, const char **opts);
/* "lru, lfu, stats, belady" for messages. */
const char *moe_cache_policy_names(void);
/* The policy at @i of the registry, or NULL past the end. */
const struct moe_cache_policy_ops *moe_cache_policy_at(uint32_t i);

/*
 * Option parsing for policies and predictors: walk "a=1,b=0.5".  Returns 1
 * with *key (NUL-terminated in @buf) and *val for each pair, 0 at the end,
 * -EINVAL (moe_err naming @what) for a malformed pair.
 */
struct moe_opt_iter {
	const char *p;
	const char *what;
	char buf[64];
};
void moe_opt_begin(struct moe_opt_iter *it, const char *opts, const char *what);
int moe_opt_next(struct moe_opt_iter *it, const char **key, double *val);

#endif
