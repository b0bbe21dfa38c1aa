/* SPDX-License-Identifier: MIT */
/*
 * The expert cache: slots in device memory, each holding one routed
 * expert's matrices, in pools by size class.  The bookkeeping (which expert
 * is where, pins, eviction) is cache/book.c; this is the data movement.
 *
 * A miss reads the expert's extents through the I/O engine into pinned
 * staging; each read's completion queues the upload of its matrix on the
 * backend's copy queue, and an event recorded after the last one marks the
 * slot's data.  A slot is usable as soon as its uploads are queued: the
 * compute queue waits on that event (moe_cache_slot_event), not the host.
 * Before a slot is refilled, the copy queue waits until the compute work
 * that last read it has run (moe_cache_used records that), and a staging
 * buffer is reused only once its uploads have completed.
 *
 * An optional host tier keeps experts evicted from the device in pinned
 * host memory, so a later miss on them is an upload instead of a read; it
 * runs the same policy interface over a book of its own.
 *
 * Prefetches (moe_cache_prefetch) take a slot only from what the policy
 * values below the predicted expert, read at low priority, and leave enough
 * staging free for the next layer's misses.  A prefetch still queued when
 * its layer routes without it is cancelled (moe_cache_cancel_stale); one the
 * forward pass comes to wait for is promoted to a demand read.
 * Callbacks of the I/O engine run on the thread that calls moe_cache_poll or
 * moe_cache_wait (the forward pass thread).
 *
 * With GPUDirect Storage (moe_cache_params.gds, a backend with direct_*
 * ops) a miss is instead read from the file straight into its slot before
 * moe_cache_acquire/moe_cache_prefetch return, after the host has waited
 * for the queued work that still uses the slot; such a slot is usable at
 * once and no staging buffer is involved.
 */
#ifndef MOE_CACHE_H
#define MOE_CACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "backend/backend.h"
#include "cache/policy.h"
#include "moe/moe.h"

struct moe_io;
struct moe_expert_cache;
struct plan_layout;

struct moe_cache_params {
	const struct moe_model *model;
	struct moe_backend *be;
	struct moe_io *io;
	const struct moe_cache_policy_ops *policy;   /* NULL: LRU */
	const char *policy_opts;
	const struct plan_layout *layout;            /* classes, slots, staging, pools */
	moe_dptr arena;                              /* the layout's offsets are into this */
	const uint32_t *k;                           /* experts per token of each layer */
	const uint8_t *dense;                        /* layers of streamed dense FFNs, or NULL */
	const struct moe_routestats *stats;          /* for the policy, or NULL */
	uint32_t hot_max, hot_after;                 /* hot experts (book.h) */
	uint32_t gds;                                /* enum moe_gds: reads straight into slots */
};

int moe_cache_create(const struct moe_cache_params *p, struct moe_expert_cache **out);
void moe_cache_destroy(struct moe_expert_cache *c);

/*
 * Pin expert (layer, e) at @clock (the token count, for the policy) and
 * start fetching it if it is not cached.  Returns 1 when it is usable (on
 * the device, or its upload queued), 0 when its read is in flight, -EAGAIN
 * when no slot or staging buffer is free right now (release some and retry),
 * another -errno on failure.  *slot receives the slot.
 */
int moe_cache_acquire(struct moe_expert_cache *c, uint32_t layer, uint32_t e, uint64_t clock,
		      uint32_t *slot);
/* Is the expert in @slot usable?  1 yes, 0 not yet, a failed fetch's -errno. */
int moe_cache_ready(const struct moe_expert_cache *c, uint32_t slot);
/* The event the compute queue must wait on before reading @slot, or NULL. */
struct moe_be_event *moe_cache_slot_event(struct moe_expert_cache *c, uint32_t slot);
/* Unpin a slot that was not read. */
void moe_cache_release(struct moe_expert_cache *c, uint32_t slot);
/* The compute work queued so far read these slots: remember that, then unpin them. */
int moe_cache_used(struct moe_expert_cache *c, const uint32_t *slots, uint32_t n);
/* Is (layer, e) in a slot (usable or on its way)?  No pin, no statistics. */
bool moe_cache_contains(const struct moe_expert_cache *c, uint32_t layer, uint32_t e);
/* Submit batched reads and reap completions without blocking. */
int moe_cache_poll(struct moe_expert_cache *c);
/*
 * Is a staging buffer still reading or uploading?  Then moe_cache_wait
 * makes progress (a buffer comes free) even when no slot is on its way.
 */
bool moe_cache_busy(struct moe_expert_cache *c);
/* Block until at least one fetch progresses; the wait counts as stall time. */
int moe_cache_wait(struct moe_expert_cache *c);
/* Seconds stalled in moe_cache_wait so far (since the last reset). */
double moe_cache_stall(const struct moe_expert_cache *c);

/* Layer @layer of token @clock routes now to ids[0..n) (the policy's view). */
void moe_cache_layer(struct moe_expert_cache *c, uint32_t layer, uint64_t clock,
		     const uint32_t *ids, uint32_t n);
/* A predictor's probability that (layer, e) is used at its next routing. */
void moe_cache_hint(struct moe_expert_cache *c, uint32_t layer, uint32_t e, float p,
		    uint64_t clock);
/*
 * Fetch (layer, e) ahead of its use at low priority: 1 when started (a read,
 * or an upload from the host tier), 0 when it is cached already or nothing
 * the policy values less may give way, -EAGAIN when no staging buffer is
 * spare.
 */
int moe_cache_prefetch(struct moe_expert_cache *c, uint32_t layer, uint32_t e, uint64_t clock);
/* Cancel the queued prefetches of @layer whose expert @chosen[e] says it does not use. */
void moe_cache_cancel_stale(struct moe_expert_cache *c, uint32_t layer, const uint8_t *chosen);
/* Empty slots of the pool (layer, e) would go into. */
uint32_t moe_cache_free_slots(const struct moe_expert_cache *c, uint32_t layer, uint32_t e);
/* Keep the expert in @slot (pinned by the caller) for good: a hot expert. */
bool moe_cache_hold(struct moe_expert_cache *c, uint32_t slot);
/* The bookkeeping, for tests that watch its decisions. */
struct moe_book *moe_cache_book(struct moe_expert_cache *c);

/* Matrix @mat of the expert in @slot, in device memory (moe_expert order). */
moe_dptr moe_cache_mat(const struct moe_expert_cache *c, uint32_t slot, uint32_t mat);
/* The file extents of expert (layer, e). */
const struct moe_expert *moe_cache_expert(const struct moe_expert_cache *c, uint32_t layer,
					  uint32_t e);

struct moe_cache_stats {
	uint64_t hits, misses, evictions;
	uint64_t host_hits;     /* misses served from the host tier, no file read */
	uint64_t prefetches, prefetch_used, prefetch_cancelled;
	uint64_t prefetch_bytes, prefetch_unused_bytes;
	uint64_t bytes_read;
	double stall_s;
	uint32_t n_slots;
	uint64_t slot_bytes;    /* all device slots */
	uint64_t staging_bytes;
	uint32_t n_host_slots;
	uint64_t host_bytes;
	uint64_t direct_bytes;  /* read straight into slots (GPUDirect Storage) ... */
	double direct_s;        /* ... in this many seconds */
};
/*
 * How misses reach the device: "staging" (read into pinned host memory,
 * then uploaded) or "gds" (GPUDirect Storage: read from the file into the
 * slot, synchronously, by the backend's direct_read); "" without a cache.
 */
const char *moe_cache_io_path(const struct moe_expert_cache *c);
void moe_cache_get_stats(const struct moe_expert_cache *c, struct moe_cache_stats *out);
void moe_cache_reset_stats(struct moe_expert_cache *c);
void moe_cache_layer_stats(const struct moe_expert_cache *c, uint32_t layer, uint64_t *hits,
			   uint64_t *misses, uint64_t *prefetch_used);

#endif
