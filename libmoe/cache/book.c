/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/book.h"
#include "util/util.h"

struct pool {
	uint32_t first, n;
	uint32_t *free;              /* stack of empty slots */
	uint32_t n_free;
};

struct moe_book {
	uint32_t n_layer, n_expert, n_slots, n_pools;
	int32_t *pool_of;            /* per key */
	int32_t *map;                /* per key: slot or -1 */
	struct moe_key *key;         /* per slot */
	bool *full;                  /* per slot */
	uint32_t *pins;              /* per slot */
	uint32_t *slot_pool;         /* per slot */
	struct pool *pools;
	struct moe_key *cand;        /* victim candidates, n_slots */
	const struct moe_cache_policy_ops *pol;
	void *pst;
	struct moe_book_stats st;
};

int moe_book_create(const struct moe_book_params *p, struct moe_book **out)
{
	uint64_t n_keys = (uint64_t)p->n_layer * p->n_expert, n_slots = 0;
	struct moe_book *b;

	*out = NULL;
	for (uint32_t i = 0; i < p->n_pools; i++)
		n_slots += p->pool_slots[i];
	if (!n_slots || n_slots > UINT32_MAX / 2)
		return moe_err(EINVAL, "expert cache: %llu slots", (unsigned long long)n_slots);
	b = calloc(1, sizeof(*b));
	if (!b)
		return moe_err(ENOMEM, "out of memory");
	b->n_layer = p->n_layer;
	b->n_expert = p->n_expert;
	b->n_slots = (uint32_t)n_slots;
	b->n_pools = p->n_pools;
	b->pool_of = malloc(sizeof(*b->pool_of) * n_keys);
	b->map = malloc(sizeof(*b->map) * n_keys);
	b->key = calloc(n_slots, sizeof(*b->key));
	b->full = calloc(n_slots, sizeof(*b->full));
	b->pins = calloc(n_slots, sizeof(*b->pins));
	b->slot_pool = calloc(n_slots, sizeof(*b->slot_pool));
	b->pools = calloc(p->n_pools, sizeof(*b->pools));
	b->cand = calloc(n_slots, sizeof(*b->cand));
	b->pol = p->policy ? p->policy : &moe_policy_lru;
	b->pst = b->pol->create(&(struct moe_policy_params){ p->n_layer, p->n_expert,
							      (uint32_t)n_slots });
	if (!b->pool_of || !b->map || !b->key || !b->full || !b->pins || !b->slot_pool ||
	    !b->pools || !b->cand || !b->pst) {
		moe_book_destroy(b);
		return moe_err(ENOMEM, "out of memory");
	}
	memcpy(b->pool_of, p->pool_of, sizeof(*b->pool_of) * n_keys);
	for (uint64_t k = 0; k < n_keys; k++)
		b->map[k] = -1;
	for (uint32_t i = 0, s = 0; i < p->n_pools; i++) {
		struct pool *pl = &b->pools[i];

		pl->first = s;
		pl->n = p->pool_slots[i];
		pl->free = malloc(sizeof(*pl->free) * (pl->n ? pl->n : 1));
		if (!pl->free) {
			moe_book_destroy(b);
			return moe_err(ENOMEM, "out of memory");
		}
		/* popped from the top: slot order first .. last */
		for (uint32_t j = 0; j < pl->n; j++)
			pl->free[j] = s + pl->n - 1 - j;
		pl->n_free = pl->n;
		for (uint32_t j = 0; j < pl->n; j++)
			b->slot_pool[s + j] = i;
		s += pl->n;
	}
	*out = b;
	return 0;
}

void moe_book_destroy(struct moe_book *b)
{
	if (!b)
		return;
	if (b->pst)
		b->pol->destroy(b->pst);
	for (uint32_t i = 0; b->pools && i < b->n_pools; i++)
		free(b->pools[i].free);
	free(b->pools);
	free(b->pool_of);
	free(b->map);
	free(b->key);
	free(b->full);
	free(b->pins);
	free(b->slot_pool);
	free(b->cand);
	free(b);
}

uint32_t moe_book_n_slots(const struct moe_book *b)
{
	return b->n_slots;
}

static uint64_t kidx(const struct moe_book *b, uint32_t layer, uint32_t e)
{
	return (uint64_t)layer * b->n_expert + e;
}

int32_t moe_book_lookup(const struct moe_book *b, uint32_t layer, uint32_t e)
{
	if (layer >= b->n_layer || e >= b->n_expert)
		return -1;
	return b->map[kidx(b, layer, e)];
}

int32_t moe_book_pool_of(const struct moe_book *b, uint32_t layer, uint32_t e)
{
	if (layer >= b->n_layer || e >= b->n_expert)
		return -1;
	return b->pool_of[kidx(b, layer, e)];
}

uint32_t moe_book_pool_first(const struct moe_book *b, uint32_t pool)
{
	return b->pools[pool].first;
}

bool moe_book_key(const struct moe_book *b, uint32_t slot, struct moe_key *out)
{
	if (slot >= b->n_slots || !b->full[slot])
		return false;
	*out = b->key[slot];
	return true;
}

/* The policy's victim among the unpinned full slots of pool @pl, or -1. */
static int32_t victim(struct moe_book *b, const struct pool *pl, uint64_t clock)
{
	uint32_t n = 0, pick;

	for (uint32_t s = pl->first; s < pl->first + pl->n; s++)
		if (b->full[s] && !b->pins[s])
			b->cand[n++] = b->key[s];
	if (!n)
		return -1;
	pick = b->pol->victim(b->pst, b->cand, n, clock);
	return b->map[kidx(b, b->cand[pick].layer, b->cand[pick].e)];
}

bool moe_book_can_take(const struct moe_book *b, uint32_t layer, uint32_t e)
{
	int32_t p = moe_book_pool_of(b, layer, e);
	const struct pool *pl;

	if (p < 0)
		return false;
	pl = &b->pools[p];
	if (pl->n_free)
		return true;
	for (uint32_t s = pl->first; s < pl->first + pl->n; s++)
		if (b->full[s] && !b->pins[s])
			return true;
	return false;
}

int moe_book_use(struct moe_book *b, uint32_t layer, uint32_t e, uint64_t clock, bool count,
		 struct moe_book_use *out)
{
	int32_t p = moe_book_pool_of(b, layer, e), s;
	struct moe_key k = { layer, e };
	struct pool *pl;

	memset(out, 0, sizeof(*out));
	if (p < 0)
		return moe_err(EINVAL, "layer %u has no routed expert %u", layer, e);
	s = b->map[kidx(b, layer, e)];
	if (s >= 0) {
		b->pins[s]++;
		b->pol->hit(b->pst, k, clock);
		if (count)
			b->st.hits++;
		out->slot = (uint32_t)s;
		out->hit = true;
		return 0;
	}
	pl = &b->pools[p];
	if (pl->n_free) {
		s = (int32_t)pl->free[--pl->n_free];
	} else {
		s = victim(b, pl, clock);
		if (s < 0)
			return -EAGAIN;
		out->evicted = true;
		out->old = b->key[s];
		b->map[kidx(b, out->old.layer, out->old.e)] = -1;
		b->pol->evict(b->pst, out->old);
		b->st.evictions++;
	}
	if (count)
		b->st.misses++;
	b->key[s] = k;
	b->full[s] = true;
	b->pins[s] = 1;
	b->map[kidx(b, layer, e)] = s;
	b->pol->insert(b->pst, k, clock);
	out->slot = (uint32_t)s;
	return 0;
}

void moe_book_pin(struct moe_book *b, uint32_t slot)
{
	b->pins[slot]++;
}

void moe_book_unpin(struct moe_book *b, uint32_t slot)
{
	if (b->pins[slot])
		b->pins[slot]--;
}

uint32_t moe_book_pins(const struct moe_book *b, uint32_t slot)
{
	return b->pins[slot];
}

void moe_book_drop(struct moe_book *b, uint32_t slot)
{
	struct pool *pl;

	if (slot >= b->n_slots || !b->full[slot])
		return;
	b->map[kidx(b, b->key[slot].layer, b->key[slot].e)] = -1;
	b->pol->evict(b->pst, b->key[slot]);
	b->full[slot] = false;
	b->pins[slot] = 0;
	pl = &b->pools[b->slot_pool[slot]];
	pl->free[pl->n_free++] = slot;
}

void moe_book_get_stats(const struct moe_book *b, struct moe_book_stats *out)
{
	*out = b->st;
}

void moe_book_reset_stats(struct moe_book *b)
{
	memset(&b->st, 0, sizeof(b->st));
}
