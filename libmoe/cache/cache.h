/* SPDX-License-Identifier: MIT */
/*
 * The expert cache: fixed-size slots in device memory, each holding one
 * routed expert's matrices.  A miss reads the expert's extents through the
 * I/O engine into pinned staging and uploads them into a slot; the caller
 * keeps computing the experts that are ready meanwhile.  An optional host
 * tier keeps experts evicted from the device in pinned host memory, so a
 * later miss on them is an upload instead of a read.  Which slot to evict
 * is a policy behind a small ops table (LRU here).
 *
 * Slots are pinned while a layer uses them, so an eviction never hits an
 * expert being computed or fetched.  Callbacks of the I/O engine run on the
 * thread that calls moe_cache_poll/moe_cache_wait (the forward pass thread).
 */
#ifndef MOE_CACHE_H
#define MOE_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "moe/moe.h"

struct moe_backend;
struct moe_io;
struct moe_expert_cache;

/* An eviction policy: one state per cache, told about every use of a slot. */
struct moe_cache_policy_ops {
	const char *name;
	void *(*create)(uint32_t n_slots);
	void (*destroy)(void *state);
	/* slot was used (hit) or filled (miss) */
	void (*touch)(void *state, uint32_t slot);
	/* slot became empty */
	void (*forget)(void *state, uint32_t slot);
	/* the slot to reuse among those with busy[slot] false, or -1 */
	int (*victim)(void *state, const bool *busy, uint32_t n_slots);
};

extern const struct moe_cache_policy_ops moe_policy_lru;
/* The policy called @name ("lru"), or NULL. */
const struct moe_cache_policy_ops *moe_cache_policy_find(const char *name);

struct moe_cache_params {
	const struct moe_model *model;
	struct moe_backend *be;
	struct moe_io *io;
	const struct moe_cache_policy_ops *policy;   /* NULL: LRU */
	uint32_t n_slots;
	uint32_t n_staging;     /* experts in flight at once (staging buffers) */
	uint64_t host_bytes;    /* tier 1 in pinned host memory; 0 = none */
};

/* Bytes of one slot: the largest expert, each matrix 64-byte aligned. */
uint64_t moe_cache_slot_bytes(const struct moe_model *model);
/* Bytes of pinned staging per expert in flight. */
uint64_t moe_cache_staging_bytes(const struct moe_model *model, struct moe_io *io);

int moe_cache_create(const struct moe_cache_params *p, struct moe_expert_cache **out);
void moe_cache_destroy(struct moe_expert_cache *c);

/*
 * Pin expert (layer, e) and start fetching it if it is not cached.
 * Returns 1 when it is ready, 0 when a fetch is in flight (or was already),
 * -EAGAIN when no slot or staging buffer is free right now (release some and
 * retry), another -errno on failure.  *slot receives the slot.
 */
int moe_cache_acquire(struct moe_expert_cache *c, uint32_t layer, uint32_t e, uint32_t *slot);
/* Is the expert in @slot ready?  A failed fetch reports its -errno here. */
int moe_cache_ready(const struct moe_expert_cache *c, uint32_t slot);
void moe_cache_release(struct moe_expert_cache *c, uint32_t slot);
/* Is (layer, e) cached (ready) right now?  No pin, no statistics. */
bool moe_cache_contains(const struct moe_expert_cache *c, uint32_t layer, uint32_t e);
/* Submit batched reads and reap completions without blocking. */
int moe_cache_poll(struct moe_expert_cache *c);
/* Block until at least one fetch completes; the wait counts as stall time. */
int moe_cache_wait(struct moe_expert_cache *c);

/* The matrices of the expert in a slot, in device memory (moe_expert order). */
const void *moe_cache_mat(const struct moe_expert_cache *c, uint32_t slot, uint32_t mat);
/* The file extents of expert (layer, e). */
const struct moe_expert *moe_cache_expert(const struct moe_expert_cache *c, uint32_t layer,
					  uint32_t e);

struct moe_cache_stats {
	uint64_t hits, misses, evictions;
	uint64_t host_hits;     /* misses served from the host tier, no file read */
	uint64_t bytes_read;
	double stall_s;
	uint32_t n_slots;
	uint64_t slot_bytes;
	uint64_t staging_bytes;
	uint32_t n_host_slots;
	uint64_t host_bytes;
};
void moe_cache_get_stats(const struct moe_expert_cache *c, struct moe_cache_stats *out);
void moe_cache_reset_stats(struct moe_expert_cache *c);

#endif
