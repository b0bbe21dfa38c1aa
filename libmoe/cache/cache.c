/* SPDX-License-Identifier: MIT */
/*
 * Expert slots, misses fetched through the I/O engine.  One fetch = one
 * staging buffer holding the block-aligned supersets of the expert's
 * matrices; each read's completion uploads its interior into the slot, and
 * the slot is ready when every matrix has landed.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cache/cache.h"
#include "util/util.h"

#define MAT_ALIGN 64

enum slot_state { SLOT_EMPTY, SLOT_LOADING, SLOT_READY };

struct slot {
	int64_t key;            /* layer * n_expert + e, or -1 */
	enum slot_state state;
	uint32_t pins;
	int err;
	void *mem;
};

struct part {
	struct moe_expert_cache *c;
	uint32_t stg;
	uint32_t mat;
};

struct staging {
	void *buf;
	bool busy;
	uint32_t slot;
	uint32_t pending;
	int err;
	struct part parts[MOE_EXPERT_MAX_MATS];
};

struct moe_expert_cache {
	const struct moe_model *model;
	struct moe_backend *be;
	struct moe_io *io;
	const struct moe_cache_policy_ops *pol;
	void *pol_state;
	uint32_t n_layer, n_expert;
	struct moe_expert *experts;   /* [layer][e]; n_mats 0 on dense layers */
	int32_t *map;                 /* [layer][e] -> slot or -1 */
	struct slot *slots;
	bool *busy;
	uint32_t n_slots;
	uint64_t slot_bytes;
	void *slot_mem;
	struct staging *stg;
	uint32_t n_stg;
	uint64_t stg_bytes;
	/* tier 1: experts evicted from the device stay in pinned host memory */
	uint32_t n_host;
	void *host_mem;
	uint64_t host_bytes;
	int32_t *hmap;                /* [layer][e] -> host slot or -1 */
	int64_t *hkey;
	bool *hbusy;                  /* never set: host slots are not pinned */
	void *hpol_state;
	struct moe_cache_stats st;
};

static uint64_t mat_offset(const struct moe_expert *ex, uint32_t m)
{
	uint64_t off = 0;

	for (uint32_t i = 0; i < m; i++)
		off += MOE_ALIGN_UP(ex->mats[i].bytes, MAT_ALIGN);
	return off;
}

static int for_each_expert(const struct moe_model *model,
			   void (*fn)(void *arg, const struct moe_expert *ex), void *arg)
{
	struct moe_hparams hp;
	int ret = moe_model_hparams(model, &hp);

	if (ret < 0)
		return ret;
	for (uint32_t l = 0; l < hp.n_layer; l++) {
		struct moe_layer_info li;

		ret = moe_model_layer(model, l, &li);
		if (ret < 0)
			return ret;
		if (!li.is_moe)
			continue;
		for (uint32_t e = 0; e < hp.n_expert; e++) {
			struct moe_expert ex;

			ret = moe_model_expert(model, l, e, &ex);
			if (ret < 0)
				return ret;
			fn(arg, &ex);
		}
	}
	return 0;
}

static void max_slot(void *arg, const struct moe_expert *ex)
{
	uint64_t *m = arg, b = mat_offset(ex, ex->n_mats);

	*m = MOE_MAX(*m, b);
}

uint64_t moe_cache_slot_bytes(const struct moe_model *model)
{
	uint64_t m = 0;

	if (for_each_expert(model, max_slot, &m) < 0)
		return 0;
	return m;
}

struct stg_size {
	struct moe_io *io;
	uint64_t max;
};

static uint64_t expert_staging(struct moe_io *io, const struct moe_expert *ex)
{
	uint64_t b = 0, blk = moe_io_block(io);

	for (uint32_t m = 0; m < ex->n_mats; m++)
		b += MOE_ALIGN_UP(moe_io_span(io, ex->mats[m].offset, ex->mats[m].bytes), blk);
	return b;
}

static void max_staging(void *arg, const struct moe_expert *ex)
{
	struct stg_size *s = arg;

	s->max = MOE_MAX(s->max, expert_staging(s->io, ex));
}

uint64_t moe_cache_staging_bytes(const struct moe_model *model, struct moe_io *io)
{
	struct stg_size s = { io, 0 };

	if (for_each_expert(model, max_staging, &s) < 0)
		return 0;
	return s.max;
}

int moe_cache_create(const struct moe_cache_params *p, struct moe_expert_cache **out)
{
	struct moe_expert_cache *c;
	struct moe_hparams hp;
	uint64_t total;
	int ret;

	if (!p->n_slots || !p->n_staging)
		return moe_err(EINVAL, "expert cache: needs at least one slot and one staging buffer");
	ret = moe_model_hparams(p->model, &hp);
	if (ret < 0)
		return ret;
	c = calloc(1, sizeof(*c));
	if (!c)
		return moe_err(ENOMEM, "out of memory creating the expert cache");
	c->model = p->model;
	c->be = p->be;
	c->io = p->io;
	c->pol = p->policy ? p->policy : &moe_policy_lru;
	c->n_layer = hp.n_layer;
	c->n_expert = hp.n_expert;
	c->n_slots = p->n_slots;
	c->n_stg = p->n_staging;
	c->slot_bytes = moe_cache_slot_bytes(p->model);
	c->stg_bytes = moe_cache_staging_bytes(p->model, p->io);
	c->experts = calloc((size_t)c->n_layer * c->n_expert, sizeof(*c->experts));
	c->map = malloc(sizeof(*c->map) * c->n_layer * c->n_expert);
	c->slots = calloc(c->n_slots, sizeof(*c->slots));
	c->busy = calloc(c->n_slots, sizeof(*c->busy));
	c->stg = calloc(c->n_stg, sizeof(*c->stg));
	c->pol_state = c->pol->create(c->n_slots);
	if (!c->experts || !c->map || !c->slots || !c->busy || !c->stg || !c->pol_state) {
		ret = moe_err(ENOMEM, "out of memory creating the expert cache");
		goto fail;
	}
	if (!c->slot_bytes) {
		ret = moe_err(EINVAL, "expert cache: the model has no routed experts");
		goto fail;
	}
	for (uint32_t l = 0; l < c->n_layer; l++) {
		struct moe_layer_info li;

		ret = moe_model_layer(p->model, l, &li);
		if (ret < 0)
			goto fail;
		for (uint32_t e = 0; e < c->n_expert; e++) {
			c->map[l * c->n_expert + e] = -1;
			if (li.is_moe) {
				ret = moe_model_expert(p->model, l, e,
						       &c->experts[l * c->n_expert + e]);
				if (ret < 0)
					goto fail;
			}
		}
	}
	if (!moe_mul_u64(c->n_slots, c->slot_bytes, &total)) {
		ret = moe_err(EOVERFLOW, "expert cache: slot bytes overflow");
		goto fail;
	}
	ret = c->be->ops->alloc(c->be, total, &c->slot_mem);
	if (ret < 0) {
		moe_err_prefix(ret, "expert cache: %u slots of %llu bytes", c->n_slots,
			       (unsigned long long)c->slot_bytes);
		goto fail;
	}
	for (uint32_t s = 0; s < c->n_slots; s++) {
		c->slots[s].key = -1;
		c->slots[s].mem = (char *)c->slot_mem + (uint64_t)s * c->slot_bytes;
	}
	for (uint32_t i = 0; i < c->n_stg; i++) {
		c->stg[i].buf = moe_io_alloc(c->io, c->stg_bytes);
		if (!c->stg[i].buf) {
			ret = moe_err(ENOMEM, "expert cache: cannot allocate %llu bytes of staging",
				      (unsigned long long)c->stg_bytes);
			goto fail;
		}
	}
	c->n_host = (uint32_t)MOE_MIN(p->host_bytes / c->slot_bytes,
				      (uint64_t)c->n_layer * c->n_expert);
	if (c->n_host) {
		c->host_bytes = (uint64_t)c->n_host * c->slot_bytes;
		c->host_mem = moe_io_alloc(c->io, c->host_bytes);
		c->hmap = malloc(sizeof(*c->hmap) * c->n_layer * c->n_expert);
		c->hkey = malloc(sizeof(*c->hkey) * c->n_host);
		c->hbusy = calloc(c->n_host, sizeof(*c->hbusy));
		c->hpol_state = c->pol->create(c->n_host);
		if (!c->host_mem || !c->hmap || !c->hkey || !c->hbusy || !c->hpol_state) {
			ret = moe_err(ENOMEM, "expert cache: cannot allocate %llu bytes of host "
				      "cache", (unsigned long long)c->host_bytes);
			goto fail;
		}
		for (uint64_t i = 0; i < (uint64_t)c->n_layer * c->n_expert; i++)
			c->hmap[i] = -1;
		for (uint32_t i = 0; i < c->n_host; i++)
			c->hkey[i] = -1;
	}
	c->st.n_host_slots = c->n_host;
	c->st.n_slots = c->n_slots;
	c->st.slot_bytes = c->slot_bytes;
	c->st.staging_bytes = c->stg_bytes * c->n_stg;
	c->st.host_bytes = c->host_bytes;
	*out = c;
	return 0;
fail:
	moe_cache_destroy(c);
	return ret;
}

void moe_cache_destroy(struct moe_expert_cache *c)
{
	if (!c)
		return;
	/* reads in flight target our staging: let them finish first */
	if (c->stg)
		for (uint32_t i = 0; i < c->n_stg; i++)
			while (c->stg[i].busy && c->stg[i].pending)
				if (moe_io_wait(c->io, 1) < 0)
					break;
	if (c->stg)
		for (uint32_t i = 0; i < c->n_stg; i++)
			if (c->stg[i].buf)
				moe_io_free(c->io, c->stg[i].buf);
	if (c->slot_mem)
		c->be->ops->free(c->be, c->slot_mem, (uint64_t)c->n_slots * c->slot_bytes);
	if (c->pol_state)
		c->pol->destroy(c->pol_state);
	if (c->hpol_state)
		c->pol->destroy(c->hpol_state);
	if (c->host_mem)
		moe_io_free(c->io, c->host_mem);
	free(c->hmap);
	free(c->hkey);
	free(c->hbusy);
	free(c->stg);
	free(c->busy);
	free(c->slots);
	free(c->map);
	free(c->experts);
	free(c);
}

static void fetch_done(void *arg, int64_t res, void *interior)
{
	struct part *pt = arg;
	struct moe_expert_cache *c = pt->c;
	struct staging *sg = &c->stg[pt->stg];
	struct slot *sl = &c->slots[sg->slot];
	const struct moe_expert *ex = &c->experts[sl->key];
	const struct moe_extent *m = &ex->mats[pt->mat];

	if (res < 0) {
		sg->err = (int)res;
	} else if ((uint64_t)res != m->bytes) {
		sg->err = -EIO;
	} else {
		struct moe_be_event ev = { 0 };
		int ret = c->be->ops->upload(c->be, (char *)sl->mem + mat_offset(ex, pt->mat),
					     interior, m->bytes, &ev);

		if (!ret)
			ret = c->be->ops->sync(c->be, &ev);
		if (ret < 0)
			sg->err = ret;
		c->st.bytes_read += m->bytes;
	}
	if (--sg->pending)
		return;
	if (sg->err) {
		moe_log(MOE_LOG_ERROR, "expert %lld: read failed: %s",
			(long long)sl->key, strerror(-sg->err));
		sl->err = sg->err;
		sl->state = SLOT_EMPTY;
		c->map[sl->key] = -1;
		sl->key = -1;
		c->pol->forget(c->pol_state, sg->slot);
	} else {
		sl->state = SLOT_READY;
	}
	/* nobody holds it any more (a failed layer let go): the slot is free again */
	if (!sl->pins)
		c->busy[sg->slot] = false;
	sg->busy = false;
}

static int start_fetch(struct moe_expert_cache *c, uint32_t s, uint32_t stg_idx)
{
	struct staging *sg = &c->stg[stg_idx];
	const struct moe_expert *ex = &c->experts[c->slots[s].key];
	uint64_t blk = moe_io_block(c->io), off = 0;
	int ret;

	sg->busy = true;
	sg->slot = s;
	sg->err = 0;
	sg->pending = ex->n_mats;
	for (uint32_t m = 0; m < ex->n_mats; m++) {
		uint64_t span = MOE_ALIGN_UP(moe_io_span(c->io, ex->mats[m].offset,
							 ex->mats[m].bytes), blk);

		sg->parts[m] = (struct part){ c, stg_idx, m };
		ret = moe_io_read(c->io, ex->mats[m].offset, ex->mats[m].bytes,
				  (char *)sg->buf + off, span, fetch_done, &sg->parts[m]);
		if (ret < 0) {
			/* the reads already queued complete normally and see the error */
			sg->err = ret;
			sg->pending -= ex->n_mats - m;
			if (!sg->pending)
				sg->busy = false;
			return ret;
		}
		off += span;
	}
	return 0;
}

/* Keep the expert leaving device slot @s in the host tier (when there is one). */
static int demote(struct moe_expert_cache *c, uint32_t s)
{
	int64_t key = c->slots[s].key;
	int hs;

	if (!c->n_host || c->slots[s].state != SLOT_READY)
		return 0;
	if (c->hmap[key] >= 0) {
		c->pol->touch(c->hpol_state, (uint32_t)c->hmap[key]);
		return 0;
	}
	hs = c->pol->victim(c->hpol_state, c->hbusy, c->n_host);
	if (hs < 0)
		return 0;
	if (c->hkey[hs] >= 0)
		c->hmap[c->hkey[hs]] = -1;
	c->hkey[hs] = key;
	c->hmap[key] = hs;
	c->pol->touch(c->hpol_state, (uint32_t)hs);
	return c->be->ops->download(c->be, (char *)c->host_mem + (uint64_t)hs * c->slot_bytes,
				    c->slots[s].mem, c->slot_bytes);
}

int moe_cache_acquire(struct moe_expert_cache *c, uint32_t layer, uint32_t e, uint32_t *slot)
{
	int64_t key = (int64_t)layer * c->n_expert + e;
	int32_t s = c->map[key];
	uint32_t stg_idx;
	int victim, ret;

	if (!c->experts[key].n_mats)
		return moe_err(EINVAL, "layer %u has no routed expert %u", layer, e);
	if (s >= 0) {
		c->slots[s].pins++;
		c->busy[s] = true;
		c->pol->touch(c->pol_state, s);
		*slot = s;
		if (c->slots[s].state == SLOT_READY) {
			c->st.hits++;
			return 1;
		}
		return 0;
	}
	for (stg_idx = 0; stg_idx < c->n_stg; stg_idx++)
		if (!c->stg[stg_idx].busy)
			break;
	if (stg_idx == c->n_stg && !(c->n_host && c->hmap[key] >= 0))
		return -EAGAIN;
	victim = c->pol->victim(c->pol_state, c->busy, c->n_slots);
	if (victim < 0)
		return -EAGAIN;
	if (c->slots[victim].key >= 0) {
		ret = demote(c, (uint32_t)victim);
		if (ret < 0)
			return ret;
		c->map[c->slots[victim].key] = -1;
		c->st.evictions++;
	}
	c->st.misses++;
	c->slots[victim] = (struct slot){ .key = key, .state = SLOT_LOADING, .pins = 1,
					  .mem = c->slots[victim].mem };
	c->busy[victim] = true;
	c->map[key] = victim;
	c->pol->touch(c->pol_state, victim);
	*slot = victim;
	if (c->n_host && c->hmap[key] >= 0) {
		struct moe_be_event ev = { 0 };
		int32_t hs = c->hmap[key];

		ret = c->be->ops->upload(c->be, c->slots[victim].mem,
					 (char *)c->host_mem + (uint64_t)hs * c->slot_bytes,
					 c->slot_bytes, &ev);
		ret = ret ? ret : c->be->ops->sync(c->be, &ev);
		if (!ret) {
			c->pol->touch(c->hpol_state, (uint32_t)hs);
			c->slots[victim].state = SLOT_READY;
			c->st.host_hits++;
			return 1;
		}
	} else {
		ret = start_fetch(c, victim, stg_idx);
	}
	if (ret < 0) {
		c->slots[victim].state = SLOT_EMPTY;
		c->slots[victim].key = -1;
		c->map[key] = -1;
		c->pol->forget(c->pol_state, victim);
		c->slots[victim].pins = 0;
		c->busy[victim] = false;
		return moe_err_prefix(ret, "fetching expert %u of layer %u", e, layer);
	}
	return 0;
}

int moe_cache_ready(const struct moe_expert_cache *c, uint32_t slot)
{
	const struct slot *s = &c->slots[slot];

	if (s->state == SLOT_READY)
		return 1;
	if (s->state == SLOT_EMPTY)
		return s->err ? s->err : -EIO;
	return 0;
}

void moe_cache_release(struct moe_expert_cache *c, uint32_t slot)
{
	struct slot *s = &c->slots[slot];

	if (s->pins && !--s->pins && s->state != SLOT_LOADING) {
		c->busy[slot] = false;
		s->err = 0;
	}
}

bool moe_cache_contains(const struct moe_expert_cache *c, uint32_t layer, uint32_t e)
{
	int32_t s = c->map[(int64_t)layer * c->n_expert + e];

	return s >= 0 && c->slots[s].state == SLOT_READY;
}

int moe_cache_poll(struct moe_expert_cache *c)
{
	int ret = moe_io_submit(c->io);

	if (ret < 0)
		return ret;
	return moe_io_poll(c->io);
}

int moe_cache_wait(struct moe_expert_cache *c)
{
	double t0 = moe_now();
	int ret = moe_io_submit(c->io);

	if (ret >= 0)
		ret = moe_io_wait(c->io, 1);
	c->st.stall_s += moe_now() - t0;
	return ret;
}

const void *moe_cache_mat(const struct moe_expert_cache *c, uint32_t slot, uint32_t mat)
{
	const struct slot *s = &c->slots[slot];

	return (const char *)s->mem + mat_offset(&c->experts[s->key], mat);
}

const struct moe_expert *moe_cache_expert(const struct moe_expert_cache *c, uint32_t layer,
					  uint32_t e)
{
	return &c->experts[(int64_t)layer * c->n_expert + e];
}

void moe_cache_get_stats(const struct moe_expert_cache *c, struct moe_cache_stats *out)
{
	*out = c->st;
}

void moe_cache_reset_stats(struct moe_expert_cache *c)
{
	c->st.hits = c->st.misses = c->st.evictions = c->st.bytes_read = c->st.host_hits = 0;
	c->st.stall_s = 0;
}
