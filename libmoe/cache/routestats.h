/* SPDX-License-Identifier: MIT */
/*
 * Routing statistics of one model: per (layer, expert) use counts, the
 * transitions from each routed layer to the next routed layer of the same
 * token, and co-activation within a layer.  Recorded while running, saved
 * in a state directory under the model file's identity and loaded at the
 * next start (the public calls are moe_routestats_* in moe/moe.h).
 *
 * File format, little-endian, version 1:
 *   "MOERSTAT" | u32 version | u32 n_layer | u32 n_expert | u32 reserved (0)
 *   | u64 model bytes | u64 model hash | u64 tokens
 *   | u64 layer_tokens[n_layer] | u64 count[n_layer][n_expert]
 *   | u32 trans[n_layer][n_expert][n_expert] | u32 coact[n_layer][n_expert][n_expert]
 *   | u64 FNV-1a of every byte before it
 * Transition and co-activation counts saturate: when one would pass 2^31,
 * every count of the file is halved, keeping the proportions.
 */
#ifndef MOE_CACHE_ROUTESTATS_H
#define MOE_CACHE_ROUTESTATS_H

#include <stdbool.h>
#include <stdint.h>

#include "moe/moe.h"

#define MOE_RSTATS_VERSION 1
#define MOE_RSTATS_MAGIC "MOERSTAT"

struct moe_routestats {
	uint32_t n_layer, n_expert;
	uint64_t model_bytes, model_hash;   /* 0, 0: not tied to a model file (a trace) */
	uint64_t tokens;                    /* tokens observed */
	int32_t *next;                      /* per layer: the next routed layer, -1 */
	uint64_t *layer_tokens;             /* [L] routings observed per layer */
	uint64_t *count;                    /* [L][E] */
	uint32_t *trans;                    /* [L][E][E]: e at l, then f at next[l] */
	uint32_t *coact;                    /* [L][E][E]: e and f chosen by one token */
};

/* Empty statistics; routed[l] says which layers route (NULL: all). */
int moe_routestats_create(uint32_t n_layer, uint32_t n_expert, const bool *routed,
			  struct moe_routestats **out);
/*
 * One token's routing of @layer: ids[0..k) (negative ids are skipped);
 * @prev: its ids at the previous routed layer, or NULL.
 */
void moe_routestats_add(struct moe_routestats *rs, uint32_t layer, const int32_t *prev,
			uint32_t k_prev, const int32_t *ids, uint32_t k);
/* Count one more token (after all its layers). */
void moe_routestats_token(struct moe_routestats *rs);
/* A copy of @src, to keep learning from without touching it. */
int moe_routestats_clone(const struct moe_routestats *src, struct moe_routestats **out);
/*
 * Keys (layer * n_expert + e) of routed layers that were used, most used first
 * (per routing of their layer); @keys holds n_layer * n_expert.  Returns at
 * most @max.
 */
uint32_t moe_routestats_rank(const struct moe_routestats *rs, uint32_t *keys, uint32_t max);
/* mkdir -p */
int moe_mkdirs(const char *dir);

#endif
