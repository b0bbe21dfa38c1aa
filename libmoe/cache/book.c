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
	uint32_t hot;                /* slots held for good */
	uint32_t k;                  /* most experts one routing of its layers uses */
};

struct moe_book {
	uint32_t n_layer, n_expert, n_slots, n_pools;
	int32_t *pool_of;            /* per key */
	int32_t *map;                /* per key: slot or -1 */
	uint32_t *uses;              /* per key: demand uses, for hot experts */
	struct moe_key *key;         /* per slot */
	bool *full;                  /* per slot */
	bool *pf;                    /* per slot: a prefetch not used yet */
	bool *held;                  /* per slot: a hot expert */
	uint32_t *pins;              /* per slot */
	uint32_t *slot_pool;         /* per slot */
	struct pool *pools;
	struct moe_key *cand;        /* victim candidates, n_slots */
	const struct moe_cache_policy_ops *pol;
	void *pst;
	uint32_t hot_max, hot_after;
	struct moe_book_stats st;
	uint64_t *l_hits, *l_misses, *l_pf;  /* per layer */
	moe_book_observer obs;
	void *obs_arg;
};

int moe_book_create(const struct moe_book_params *p, struct moe_book **out)
{
	uint64_t n_keys = (uint64_t)p->n_layer * p->n_expert, n_slots = 0;
	struct moe_policy_params pp;
	struct moe_book *b;
	int ret;

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
	b->hot_max = p->hot_max;
	b->hot_after = p->hot_after;
	b->pool_of = malloc(sizeof(*b->pool_of) * n_keys);
	b->map = malloc(sizeof(*b->map) * n_keys);
	b->uses = calloc(n_keys, sizeof(*b->uses));
	b->key = calloc(n_slots, sizeof(*b->key));
	b->full = calloc(n_slots, sizeof(*b->full));
	b->pf = calloc(n_slots, sizeof(*b->pf));
	b->held = calloc(n_slots, sizeof(*b->held));
	b->pins = calloc(n_slots, sizeof(*b->pins));
	b->slot_pool = calloc(n_slots, sizeof(*b->slot_pool));
	b->pools = calloc(p->n_pools, sizeof(*b->pools));
	b->cand = calloc(n_slots, sizeof(*b->cand));
	b->l_hits = calloc(p->n_layer, sizeof(*b->l_hits));
	b->l_misses = calloc(p->n_layer, sizeof(*b->l_misses));
	b->l_pf = calloc(p->n_layer, sizeof(*b->l_pf));
	b->pol = p->policy ? p->policy : &moe_policy_lru;
	if (!b->pool_of || !b->map || !b->uses || !b->key || !b->full || !b->pf || !b->held ||
	    !b->pins || !b->slot_pool || !b->pools || !b->cand || !b->l_hits || !b->l_misses ||
	    !b->l_pf) {
		moe_book_destroy(b);
		return moe_err(ENOMEM, "out of memory");
	}
	pp = (struct moe_policy_params){ .n_layer = p->n_layer, .n_expert = p->n_expert,
		.n_slots = (uint32_t)n_slots, .k = p->k, .dense = p->dense, .stats = p->stats, .future = p->future,
		.opts = p->policy_opts };
	ret = b->pol->create(&pp, &b->pst);
	if (ret < 0) {
		b->pst = NULL;
		moe_book_destroy(b);
		return ret;
	}
	memcpy(b->pool_of, p->pool_of, sizeof(*b->pool_of) * n_keys);
	for (uint64_t k = 0; k < n_keys; k++) {
		int32_t pl = b->pool_of[k];
		uint32_t kl = p->k ? p->k[k / p->n_expert] : 1;

		b->map[k] = -1;
		if (pl >= 0 && (uint32_t)pl < p->n_pools)
			b->pools[pl].k = MOE_MAX(b->pools[pl].k, kl);
	}
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
	free(b->uses);
	free(b->key);
	free(b->full);
	free(b->pf);
	free(b->held);
	free(b->pins);
	free(b->slot_pool);
	free(b->cand);
	free(b->l_hits);
	free(b->l_misses);
	free(b->l_pf);
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

void moe_book_layer(struct moe_book *b, uint32_t layer, uint64_t clock, const uint32_t *ids,
		    uint32_t n)
{
	if (b->pol->layer)
		b->pol->layer(b->pst, layer, clock, ids, n);
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

uint32_t moe_book_free_slots(const struct moe_book *b, uint32_t layer, uint32_t e)
{
	int32_t p = moe_book_pool_of(b, layer, e);

	return p < 0 ? 0 : b->pools[p].n_free;
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

/* Empty slot @s of a key that is leaving; the caller refills or frees it. */
static void vacate(struct moe_book *b, uint32_t s, bool *was_unused)
{
	struct moe_key old = b->key[s];

	*was_unused = b->pf[s];
	if (b->pf[s])
		b->st.prefetch_unused++;
	b->pf[s] = false;
	b->map[kidx(b, old.layer, old.e)] = -1;
	b->pol->evict(b->pst, old);
}

/* Fill slot @s with @k; the policy learns it arrived. */
static void fill(struct moe_book *b, uint32_t s, struct moe_key k, uint64_t clock, bool prefetch)
{
	b->key[s] = k;
	b->full[s] = true;
	b->pf[s] = prefetch;
	b->map[kidx(b, k.layer, k.e)] = (int32_t)s;
	b->pol->insert(b->pst, k, clock, prefetch);
}

/* A slot for a new key of pool @p: a free one, else the policy's victim (-1: none). */
static int32_t take(struct moe_book *b, struct pool *pl, uint64_t clock, struct moe_book_use *out)
{
	int32_t s;

	if (pl->n_free)
		return (int32_t)pl->free[--pl->n_free];
	s = victim(b, pl, clock);
	if (s < 0)
		return -1;
	out->evicted = true;
	out->old = b->key[s];
	vacate(b, (uint32_t)s, &out->old_unused);
	b->st.evictions++;
	return s;
}

static void maybe_hot(struct moe_book *b, uint64_t key, uint32_t s)
{
	if (b->hot_after && ++b->uses[key] >= b->hot_after && !b->held[s])
		moe_book_hold(b, s);
}

int moe_book_use(struct moe_book *b, uint32_t layer, uint32_t e, uint64_t clock, bool count,
		 struct moe_book_use *out)
{
	int32_t p = moe_book_pool_of(b, layer, e), s;
	struct moe_key k = { layer, e };
	uint64_t key = kidx(b, layer, e);

	memset(out, 0, sizeof(*out));
	if (p < 0)
		return moe_err(EINVAL, "layer %u has no routed expert %u", layer, e);
	s = b->map[key];
	if (s >= 0) {
		b->pins[s]++;
		b->pol->hit(b->pst, k, clock);
		if (count) {
			b->st.hits++;
			b->l_hits[layer]++;
			if (b->pf[s]) {
				b->pf[s] = false;
				out->prefetched = true;
				b->st.prefetch_used++;
				b->l_pf[layer]++;
			}
			if (b->obs)
				b->obs(b->obs_arg, layer, e, clock, true);
			maybe_hot(b, key, (uint32_t)s);
		}
		out->slot = (uint32_t)s;
		out->hit = true;
		return 0;
	}
	s = take(b, &b->pools[p], clock, out);
	if (s < 0)
		return -EAGAIN;
	if (count) {
		b->st.misses++;
		b->l_misses[layer]++;
		if (b->obs)
			b->obs(b->obs_arg, layer, e, clock, false);
	}
	fill(b, (uint32_t)s, k, clock, false);
	b->pins[s] = 1;
	if (count)
		maybe_hot(b, key, (uint32_t)s);
	out->slot = (uint32_t)s;
	return 0;
}

void moe_book_hint(struct moe_book *b, uint32_t layer, uint32_t e, float p, uint64_t clock)
{
	if (b->pol->hint && layer < b->n_layer && e < b->n_expert)
		b->pol->hint(b->pst, (struct moe_key){ layer, e }, p, clock);
}

int moe_book_prefetch(struct moe_book *b, uint32_t layer, uint32_t e, uint64_t clock,
		      struct moe_book_use *out)
{
	int32_t p = moe_book_pool_of(b, layer, e), s;
	struct moe_key k = { layer, e };
	struct pool *pl;

	memset(out, 0, sizeof(*out));
	if (p < 0)
		return moe_err(EINVAL, "layer %u has no routed expert %u", layer, e);
	if (b->map[kidx(b, layer, e)] >= 0)
		return 1;
	pl = &b->pools[p];
	if (!pl->n_free) {
		s = victim(b, pl, clock);
		if (s < 0)
			return -EAGAIN;
		/* worth it only when the victim is expected to be needed later than the key */
		if (b->pol->next_use &&
		    b->pol->next_use(b->pst, b->key[s], clock) <= b->pol->next_use(b->pst, k, clock))
			return -EAGAIN;
	}
	s = take(b, pl, clock, out);
	fill(b, (uint32_t)s, k, clock, true);
	b->st.prefetches++;
	out->slot = (uint32_t)s;
	return 0;
}

bool moe_book_unused_prefetch(const struct moe_book *b, uint32_t slot)
{
	return slot < b->n_slots && b->full[slot] && b->pf[slot];
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

bool moe_book_hold(struct moe_book *b, uint32_t slot)
{
	struct pool *pl;

	if (slot >= b->n_slots || !b->full[slot])
		return false;
	if (b->held[slot])
		return true;
	pl = &b->pools[b->slot_pool[slot]];
	/* a pool keeps room for one routing's experts, plus one to turn over */
	if (b->st.hot >= b->hot_max || pl->hot + 1 + pl->k + 1 > pl->n)
		return false;
	b->held[slot] = true;
	b->pins[slot]++;
	pl->hot++;
	b->st.hot++;
	return true;
}

static void empty(struct moe_book *b, uint32_t slot)
{
	struct pool *pl = &b->pools[b->slot_pool[slot]];

	b->full[slot] = false;
	b->pins[slot] = 0;
	if (b->held[slot]) {
		b->held[slot] = false;
		pl->hot--;
		b->st.hot--;
	}
	pl->free[pl->n_free++] = slot;
}

void moe_book_drop(struct moe_book *b, uint32_t slot)
{
	bool unused;

	if (slot >= b->n_slots || !b->full[slot])
		return;
	vacate(b, slot, &unused);
	empty(b, slot);
}

void moe_book_cancel(struct moe_book *b, uint32_t slot)
{
	if (slot >= b->n_slots || !b->full[slot])
		return;
	if (b->pf[slot]) {
		b->pf[slot] = false;
		b->st.prefetch_cancelled++;
	}
	moe_book_drop(b, slot);
}

void moe_book_get_stats(const struct moe_book *b, struct moe_book_stats *out)
{
	*out = b->st;
}

void moe_book_layer_stats(const struct moe_book *b, uint32_t layer, uint64_t *hits,
			  uint64_t *misses, uint64_t *prefetch_used)
{
	bool ok = layer < b->n_layer;

	*hits = ok ? b->l_hits[layer] : 0;
	*misses = ok ? b->l_misses[layer] : 0;
	*prefetch_used = ok ? b->l_pf[layer] : 0;
}

void moe_book_reset_stats(struct moe_book *b)
{
	uint32_t hot = b->st.hot;

	memset(&b->st, 0, sizeof(b->st));
	b->st.hot = hot;
	memset(b->l_hits, 0, sizeof(*b->l_hits) * b->n_layer);
	memset(b->l_misses, 0, sizeof(*b->l_misses) * b->n_layer);
	memset(b->l_pf, 0, sizeof(*b->l_pf) * b->n_layer);
}

void moe_book_set_observer(struct moe_book *b, moe_book_observer fn, void *arg)
{
	b->obs = fn;
	b->obs_arg = arg;
}
