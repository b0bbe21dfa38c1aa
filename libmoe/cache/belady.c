/* SPDX-License-Identifier: MIT */
/*
 * Belady's optimal offline policy (MIN): evict the key whose next use lies
 * furthest in the future, or that is never used again.  With the experts of
 * one routing pinned together (the book never offers them as candidates),
 * this is still optimal for the number of fetches: serialising a routing's
 * k uses, MIN would never evict a key needed within the next k uses while
 * another candidate exists.  tests/unit/test_cache.c checks it against an
 * exhaustive search on small traces.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/policy.h"
#include "util/util.h"

struct use {
	uint64_t pos;
	uint32_t key;
};

struct moe_future {
	uint32_t n_layer, n_expert;
	struct use *uses;
	uint64_t n_uses, cap;
	uint64_t *off;               /* per key + 1: its positions in pos[off[k] .. off[k+1]) */
	uint64_t *pos;
	bool sealed;
};

int moe_future_create(uint32_t n_layer, uint32_t n_expert, struct moe_future **out)
{
	struct moe_future *f = calloc(1, sizeof(*f));

	*out = NULL;
	if (!f)
		return moe_err(ENOMEM, "out of memory");
	f->n_layer = n_layer;
	f->n_expert = n_expert;
	*out = f;
	return 0;
}

int moe_future_add(struct moe_future *f, uint64_t clock, uint32_t layer, uint32_t e)
{
	if (f->n_uses == f->cap) {
		uint64_t cap = f->cap ? f->cap * 2 : 4096;
		struct use *u = realloc(f->uses, sizeof(*u) * cap);

		if (!u)
			return moe_err(ENOMEM, "out of memory for the future of a trace");
		f->uses = u;
		f->cap = cap;
	}
	f->uses[f->n_uses++] = (struct use){ clock * f->n_layer + layer, layer * f->n_expert + e };
	return 0;
}

int moe_future_seal(struct moe_future *f)
{
	uint64_t n_keys = (uint64_t)f->n_layer * f->n_expert;
	uint64_t *fill;

	f->off = calloc(n_keys + 1, sizeof(*f->off));
	f->pos = malloc(sizeof(*f->pos) * (f->n_uses ? f->n_uses : 1));
	fill = malloc(sizeof(*fill) * (n_keys ? n_keys : 1));
	if (!f->off || !f->pos || !fill) {
		free(fill);
		return moe_err(ENOMEM, "out of memory for the future of a trace");
	}
	for (uint64_t i = 0; i < f->n_uses; i++)
		f->off[f->uses[i].key + 1]++;
	for (uint64_t k = 0; k < n_keys; k++)
		f->off[k + 1] += f->off[k];
	memcpy(fill, f->off, sizeof(*fill) * n_keys);
	/* uses come in order of position, so each key's list is sorted */
	for (uint64_t i = 0; i < f->n_uses; i++)
		f->pos[fill[f->uses[i].key]++] = f->uses[i].pos;
	free(fill);
	free(f->uses);
	f->uses = NULL;
	f->sealed = true;
	return 0;
}

void moe_future_free(struct moe_future *f)
{
	if (!f)
		return;
	free(f->uses);
	free(f->off);
	free(f->pos);
	free(f);
}

struct belady {
	const struct moe_future *f;
	uint64_t *cur;               /* per key: the first of its uses not yet passed */
	uint64_t now;                /* position of the routing in progress */
};

static int belady_create(const struct moe_policy_params *p, void **out)
{
	uint64_t n_keys = (uint64_t)p->n_layer * p->n_expert;
	struct belady *b;

	if (!p->future || !p->future->sealed)
		return moe_err(EINVAL, "policy belady needs the whole trace in advance: it runs in "
			       "the trace simulator only (moectl trace simulate)");
	if (p->opts && *p->opts)
		return moe_err(EINVAL, "policy belady has no options");
	if (p->future->n_layer != p->n_layer || p->future->n_expert != p->n_expert)
		return moe_err(EINVAL, "policy belady: the future is of another shape");
	b = calloc(1, sizeof(*b));
	if (!b)
		return moe_err(ENOMEM, "out of memory");
	b->f = p->future;
	b->cur = malloc(sizeof(*b->cur) * (n_keys ? n_keys : 1));
	if (!b->cur) {
		free(b);
		return moe_err(ENOMEM, "out of memory");
	}
	memcpy(b->cur, b->f->off, sizeof(*b->cur) * n_keys);
	*out = b;
	return 0;
}

static void belady_destroy(void *state)
{
	struct belady *b = state;

	free(b->cur);
	free(b);
}

static void belady_layer(void *state, uint32_t layer, uint64_t clock, const uint32_t *ids,
			 uint32_t n)
{
	struct belady *b = state;

	(void)ids;
	(void)n;
	b->now = clock * b->f->n_layer + layer;
}

/* Position of the next use of @k after the routing in progress; UINT64_MAX: never. */
static uint64_t next_pos(struct belady *b, struct moe_key k)
{
	uint32_t key = k.layer * b->f->n_expert + k.e;
	uint64_t *c = &b->cur[key], end = b->f->off[key + 1];

	while (*c < end && b->f->pos[*c] <= b->now)
		(*c)++;
	return *c < end ? b->f->pos[*c] : UINT64_MAX;
}

static void belady_use(void *state, struct moe_key k, uint64_t clock)
{
	(void)state;
	(void)k;
	(void)clock;
}

static void belady_insert(void *state, struct moe_key k, uint64_t clock, bool prefetch)
{
	(void)prefetch;
	belady_use(state, k, clock);
}

static void belady_evict(void *state, struct moe_key k)
{
	(void)state;
	(void)k;
}

static uint32_t belady_victim(void *state, const struct moe_key *cand, uint32_t n,
			      uint64_t clock)
{
	struct belady *b = state;
	uint64_t far = 0;
	uint32_t best = 0;

	(void)clock;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t p = next_pos(b, cand[i]);

		if (p > far || i == 0) {
			far = p;
			best = i;
		}
		if (p == UINT64_MAX)
			break;
	}
	return best;
}

static double belady_next_use(void *state, struct moe_key k, uint64_t clock)
{
	struct belady *b = state;
	uint64_t p = next_pos(b, k);

	(void)clock;
	return p == UINT64_MAX ? 1e30 : (double)(p - b->now);
}

const struct moe_cache_policy_ops moe_policy_belady = {
	.name = "belady",
	.help = "offline optimum: evicts the expert used again furthest in the future",
	.offline = true,
	.create = belady_create,
	.destroy = belady_destroy,
	.layer = belady_layer,
	.hit = belady_use,
	.insert = belady_insert,
	.evict = belady_evict,
	.victim = belady_victim,
	.next_use = belady_next_use,
};
