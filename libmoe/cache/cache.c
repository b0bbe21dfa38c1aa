/* SPDX-License-Identifier: MIT */
/*
 * Data movement of the expert cache: reads into staging, uploads into
 * slots, demotions to the host tier, and the events that order them
 * against the compute queue (see cache.h).  One fetch = one staging buffer
 * holding the block-aligned supersets of the expert's matrices.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/book.h"
#include "cache/cache.h"
#include "io/io.h"
#include "model.h"
#include "plan.h"
#include "util/util.h"

/* compute events remembered for slot reuse; an older one may be re-recorded later, which
 * only makes a refill wait longer than needed, never too little */
#define USE_RING 64

enum slot_state { SLOT_EMPTY, SLOT_READING, SLOT_QUEUED };

struct slot {
	enum slot_state state;
	int err;                     /* a failed fetch, until the last pin goes */
	moe_dptr mem;
	uint64_t bytes;
	struct moe_be_event *up_ev;  /* after the uploads of the current expert */
	int32_t use;                 /* USE_RING index of the last compute use, or -1 */
};

struct part {
	struct moe_expert_cache *c;
	uint32_t stg;
	uint32_t mat;
};

struct staging {
	void *buf;
	bool registered;             /* with the backend */
	bool prefetch;               /* low-priority reads nobody waits for yet */
	bool reading;                /* reads in flight into buf */
	bool uploading;              /* uploads from buf queued: free once ev completes */
	uint32_t slot;
	uint32_t pending;
	int err;
	struct moe_be_event *ev;
	struct part parts[MOE_EXPERT_MAX_MATS];
	void *args[MOE_EXPERT_MAX_MATS];         /* &parts[m], for cancelling them together */
};

struct moe_expert_cache {
	const struct moe_model *model;
	struct moe_backend *be;
	struct moe_io *io;
	uint32_t align;
	uint32_t n_layer, n_expert;
	struct moe_expert *experts;  /* [layer][e]; n_mats 0 on dense layers */
	struct moe_book *book;
	struct slot *slots;
	uint32_t n_slots;
	uint64_t slot_bytes_total;
	struct staging *stg;
	uint32_t n_stg;
	uint32_t stg_reserve;        /* staging a prefetch must leave to the misses */
	uint64_t stg_bytes;
	struct moe_be_event *use_ev[USE_RING];
	uint32_t use_next;
	/* tier 1 */
	struct moe_book *hbook;
	uint8_t *host_mem;
	uint64_t host_bytes;
	uint64_t *host_off;          /* per host slot */
	bool direct;                 /* misses read by the backend's direct_read (GDS) */
	struct moe_cache_stats st;
};

static int32_t *pool_map(const struct moe_expert_cache *c, const struct plan_layout *l,
			 bool by_class)
{
	int32_t *pool_of = malloc(sizeof(*pool_of) * c->n_layer * c->n_expert);

	if (!pool_of)
		return NULL;
	for (uint32_t il = 0; il < c->n_layer; il++)
		for (uint32_t e = 0; e < c->n_expert; e++)
			pool_of[il * c->n_expert + e] = l->layers[il].dense_stream && e ? -1 :
							by_class ? l->layers[il].cls :
							l->layers[il].pool;
	return pool_of;
}

static int make_host_tier(struct moe_expert_cache *c, const struct plan_layout *l,
			  const struct moe_cache_params *cp, const int32_t *pool_of)
{
	const struct moe_plan *p = &l->plan;
	uint32_t counts[MOE_PLAN_MAX_CLASSES], n = 0;
	uint64_t off = 0;
	int ret;

	for (uint32_t i = 0; i < p->n_classes; i++) {
		counts[i] = p->classes[i].n_host_slots;
		n += counts[i];
	}
	if (!n)
		return 0;
	ret = moe_book_create(&(struct moe_book_params){
		.n_layer = c->n_layer, .n_expert = c->n_expert, .pool_of = pool_of,
		.n_pools = p->n_classes, .pool_slots = counts, .policy = cp->policy,
		.policy_opts = cp->policy_opts, .k = cp->k, .dense = cp->dense, .stats = cp->stats }, &c->hbook);
	if (ret < 0)
		return ret;
	c->host_off = malloc(sizeof(*c->host_off) * n);
	if (!c->host_off)
		return moe_err(ENOMEM, "out of memory");
	c->host_bytes = p->host_cache_bytes;
	/* pinned memory the backend copies to and from: its own, not the I/O engine's */
	ret = c->be->ops->host_alloc(c->be, c->host_bytes, (void **)&c->host_mem);
	if (ret < 0)
		return moe_err_prefix(ret, "expert cache: %llu bytes of host cache",
				      (unsigned long long)c->host_bytes);
	for (uint32_t i = 0, s = 0; i < p->n_classes; i++)
		for (uint32_t j = 0; j < counts[i]; j++, s++) {
			c->host_off[s] = off;
			off += p->classes[i].slot_bytes;
		}
	c->st.n_host_slots = n;
	c->st.host_bytes = c->host_bytes;
	return 0;
}

/*
 * GPUDirect Storage where @mode allows and the backend can: the device
 * range of every slot registered with the backend's direct path.
 */
static int open_direct(struct moe_expert_cache *c, uint32_t mode)
{
	const char *be = c->be->ops->name;
	moe_dptr lo = UINT64_MAX, hi = 0;
	int ret;

	if (mode == MOE_GDS_OFF)
		return 0;
	if (mode != MOE_GDS_AUTO && mode != MOE_GDS_ON)
		return moe_err(EINVAL, "GPUDirect Storage mode %u (expected auto, on or off)", mode);
	if (!c->be->ops->direct_open) {
		if (mode == MOE_GDS_AUTO)
			return 0;
		return moe_err(EOPNOTSUPP, "GPUDirect Storage was required (gds on), but the %s "
			       "backend has no direct path into device memory (use the cuda "
			       "backend, or gds auto)", be);
	}
	for (uint32_t s = 0; s < c->n_slots; s++) {
		lo = MOE_MIN(lo, c->slots[s].mem);
		hi = MOE_MAX(hi, c->slots[s].mem + c->slots[s].bytes);
	}
	ret = c->be->ops->direct_open(c->be, c->io->fd, lo, hi - lo);
	if (ret < 0) {
		if (mode == MOE_GDS_ON)
			return moe_err_prefix(ret, "GPUDirect Storage was required (gds on), but "
					      "cannot be used (gds auto would stage through host "
					      "memory instead)");
		moe_log(MOE_LOG_INFO, "GPUDirect Storage not used, experts go through pinned "
			"staging: %s", moe_errmsg());
		return 0;
	}
	c->direct = true;
	return 0;
}

int moe_cache_create(const struct moe_cache_params *p, struct moe_expert_cache **out)
{
	const struct plan_layout *l = p->layout;
	uint64_t next[MOE_PLAN_MAX_CLASSES] = { 0 };
	struct moe_expert_cache *c;
	int32_t *pool_of = NULL, *cls_of = NULL;
	int ret;

	*out = NULL;
	if (!l->plan.n_slots || !l->plan.n_staging)
		return moe_err(EINVAL, "expert cache: needs at least one slot and one staging buffer");
	c = calloc(1, sizeof(*c));
	if (!c)
		return moe_err(ENOMEM, "out of memory creating the expert cache");
	c->model = p->model;
	c->be = p->be;
	c->io = p->io;
	c->align = l->desc->align;
	c->n_layer = p->model->hp.n_layer;
	/* a streamed dense FFN is entry 0 of its layer, also in a model without experts */
	c->n_expert = MOE_MAX(p->model->hp.n_expert, 1u);
	c->n_slots = l->plan.n_slots;
	c->n_stg = l->plan.n_staging;
	for (uint32_t il = 0; il < c->n_layer; il++)
		c->stg_reserve = MOE_MAX(c->stg_reserve, p->k ? p->k[il] : 1);
	c->stg_reserve = MOE_MIN(c->stg_reserve, c->n_stg);
	c->stg_bytes = l->stg_each;
	c->experts = calloc((size_t)c->n_layer * c->n_expert, sizeof(*c->experts));
	c->slots = calloc(c->n_slots, sizeof(*c->slots));
	c->stg = calloc(c->n_stg, sizeof(*c->stg));
	pool_of = pool_map(c, l, false);
	cls_of = pool_map(c, l, true);
	if (!c->experts || !c->slots || !c->stg || !pool_of || !cls_of) {
		ret = moe_err(ENOMEM, "out of memory creating the expert cache");
		goto fail;
	}
	for (uint32_t il = 0; il < c->n_layer; il++) {
		if (l->layers[il].dense_stream)
			c->experts[il * c->n_expert] = l->layers[il].dense;
		if (!p->model->layers[il].info.is_moe)
			continue;
		for (uint32_t e = 0; e < c->n_expert; e++) {
			ret = moe_model_expert(p->model, il, e, &c->experts[il * c->n_expert + e]);
			if (ret < 0)
				goto fail;
		}
	}
	ret = moe_book_create(&(struct moe_book_params){
		.n_layer = c->n_layer, .n_expert = c->n_expert, .pool_of = pool_of,
		.n_pools = l->n_pools, .pool_slots = l->pool_slots, .policy = p->policy,
		.policy_opts = p->policy_opts, .k = p->k, .dense = p->dense, .stats = p->stats,
		.hot_max = p->hot_max, .hot_after = p->hot_after }, &c->book);
	if (ret < 0)
		goto fail;
	/* a pool's slots are consecutive inside its size class's region */
	for (uint32_t i = 0, s = 0; i < l->n_pools; i++) {
		uint32_t cls = l->pool_cls[i];
		const struct moe_plan_class *pc = &l->plan.classes[cls];

		for (uint32_t j = 0; j < l->pool_slots[i]; j++, s++) {
			struct slot *sl = &c->slots[s];

			sl->mem = p->arena + l->class_off[cls] + next[cls]++ * pc->slot_bytes;
			sl->bytes = pc->slot_bytes;
			sl->use = -1;
			ret = c->be->ops->event_create(c->be, &sl->up_ev);
			if (ret < 0)
				goto fail;
			c->slot_bytes_total += pc->slot_bytes;
		}
	}
	for (uint32_t i = 0; i < USE_RING; i++) {
		ret = c->be->ops->event_create(c->be, &c->use_ev[i]);
		if (ret < 0)
			goto fail;
	}
	for (uint32_t i = 0; i < c->n_stg; i++) {
		ret = c->be->ops->event_create(c->be, &c->stg[i].ev);
		if (ret < 0)
			goto fail;
		ret = moe_io_alloc(c->io, c->stg_bytes, &c->stg[i].buf);
		if (ret < 0) {
			ret = moe_err(ENOMEM, "expert cache: cannot allocate %llu bytes of staging",
				      (unsigned long long)c->stg_bytes);
			goto fail;
		}
		/* reads land here and uploads start here: the backend pins it for fast copies */
		ret = c->be->ops->host_register(c->be, c->stg[i].buf, c->stg_bytes);
		if (ret < 0) {
			moe_err_prefix(ret, "registering staging with the %s backend", c->be->ops->name);
			goto fail;
		}
		c->stg[i].registered = true;
	}
	ret = make_host_tier(c, l, p, cls_of);
	if (ret < 0)
		goto fail;
	ret = open_direct(c, p->gds);
	if (ret < 0)
		goto fail;
	free(pool_of);
	free(cls_of);
	c->st.n_slots = c->n_slots;
	c->st.slot_bytes = c->slot_bytes_total;
	c->st.staging_bytes = c->stg_bytes * c->n_stg;
	*out = c;
	return 0;
fail:
	free(pool_of);
	free(cls_of);
	moe_cache_destroy(c);
	return ret;
}

void moe_cache_destroy(struct moe_expert_cache *c)
{
	if (!c)
		return;
	if (c->direct)
		c->be->ops->direct_close(c->be);
	/* reads in flight target our staging, uploads read it: let both finish first */
	if (c->stg)
		for (uint32_t i = 0; i < c->n_stg; i++)
			while (c->stg[i].reading && c->stg[i].pending)
				if (moe_io_wait(c->io, 1) < 0)
					break;
	c->be->ops->sync(c->be);
	for (uint32_t i = 0; c->stg && i < c->n_stg; i++) {
		if (c->stg[i].registered)
			c->be->ops->host_unregister(c->be, c->stg[i].buf);
		if (c->stg[i].buf)
			moe_io_free(c->io, c->stg[i].buf);
		if (c->stg[i].ev)
			c->be->ops->event_destroy(c->be, c->stg[i].ev);
	}
	for (uint32_t s = 0; c->slots && s < c->n_slots; s++)
		if (c->slots[s].up_ev)
			c->be->ops->event_destroy(c->be, c->slots[s].up_ev);
	for (uint32_t i = 0; i < USE_RING; i++)
		if (c->use_ev[i])
			c->be->ops->event_destroy(c->be, c->use_ev[i]);
	if (c->host_mem)
		c->be->ops->host_free(c->be, c->host_mem);
	moe_book_destroy(c->book);
	moe_book_destroy(c->hbook);
	free(c->host_off);
	free(c->stg);
	free(c->slots);
	free(c->experts);
	free(c);
}

static const struct moe_expert *expert_of(const struct moe_expert_cache *c, uint32_t slot)
{
	struct moe_key k;

	if (!moe_book_key(c->book, slot, &k))
		return NULL;
	return &c->experts[(uint64_t)k.layer * c->n_expert + k.e];
}

/* Nobody holds a failed slot any more: it is empty again. */
static void drop_if_failed(struct moe_expert_cache *c, uint32_t s)
{
	struct slot *sl = &c->slots[s];

	if (sl->err && !moe_book_pins(c->book, s)) {
		moe_book_drop(c->book, s);
		sl->state = SLOT_EMPTY;
		sl->err = 0;
	}
}

static void fetch_done(void *arg, int64_t res, void *interior)
{
	struct part *pt = arg;
	struct moe_expert_cache *c = pt->c;
	struct staging *sg = &c->stg[pt->stg];
	struct slot *sl = &c->slots[sg->slot];
	const struct moe_expert *ex = expert_of(c, sg->slot);
	const struct moe_extent *m = &ex->mats[pt->mat];

	if (res < 0) {
		sg->err = (int)res;
	} else if ((uint64_t)res != m->bytes) {
		sg->err = -EIO;
	} else if (!sg->err) {
		int ret = c->be->ops->upload(c->be, MOE_BE_COPY,
					     sl->mem + moe_expert_mat_offset(ex, pt->mat, c->align),
					     interior, m->bytes);

		if (ret < 0)
			sg->err = ret;
		c->st.bytes_read += m->bytes;
	}
	if (--sg->pending)
		return;
	sg->reading = false;
	if (sg->prefetch && sg->err) {
		/* withdrawn (or failed) before anyone waited for it: forget it quietly */
		if (sg->err != -ECANCELED)
			moe_log(MOE_LOG_WARN, "prefetch of slot %u failed: %s", sg->slot,
				strerror(-sg->err));
		sg->uploading = c->be->ops->event_record(c->be, MOE_BE_COPY, sg->ev) == 0;
		moe_book_unpin(c->book, sg->slot);
		sl->state = SLOT_EMPTY;
		if (!moe_book_pins(c->book, sg->slot)) {
			moe_book_cancel(c->book, sg->slot);
			if (sg->err == -ECANCELED)
				c->st.prefetch_cancelled++;
			c->st.prefetch_bytes -= sl->bytes;
		} else {
			sl->err = sg->err;
		}
		return;
	}
	if (!sg->err) {
		sg->err = c->be->ops->event_record(c->be, MOE_BE_COPY, sl->up_ev);
		if (!sg->err)
			sg->err = c->be->ops->event_record(c->be, MOE_BE_COPY, sg->ev);
	}
	if (sg->err) {
		moe_log(MOE_LOG_ERROR, "expert of slot %u: read failed: %s", sg->slot,
			strerror(-sg->err));
		sl->err = sg->err;
		sl->state = SLOT_EMPTY;
		/* the uploads already queued still read the buffer */
		sg->uploading = c->be->ops->event_record(c->be, MOE_BE_COPY, sg->ev) == 0;
	} else {
		sl->state = SLOT_QUEUED;
		sg->uploading = true;
	}
	/* the read's own pin */
	moe_book_unpin(c->book, sg->slot);
	drop_if_failed(c, sg->slot);
}

static int start_fetch(struct moe_expert_cache *c, uint32_t s, uint32_t stg_idx, bool low)
{
	struct staging *sg = &c->stg[stg_idx];
	const struct moe_expert *ex = expert_of(c, s);
	uint64_t blk = moe_io_block(c->io), off = 0;
	int ret;

	sg->reading = true;
	sg->prefetch = low;
	sg->uploading = false;
	sg->slot = s;
	sg->err = 0;
	sg->pending = ex->n_mats;
	c->slots[s].state = SLOT_READING;
	moe_book_pin(c->book, s);
	for (uint32_t m = 0; m < ex->n_mats; m++) {
		uint64_t span = MOE_ALIGN_UP(moe_io_span(c->io, ex->mats[m].offset,
							 ex->mats[m].bytes), blk);

		sg->parts[m] = (struct part){ c, stg_idx, m };
		sg->args[m] = &sg->parts[m];
		ret = moe_io_read_flags(c->io, ex->mats[m].offset, ex->mats[m].bytes,
					(char *)sg->buf + off, span, low ? MOE_IO_READ_LOW : 0,
					fetch_done, &sg->parts[m]);
		if (ret < 0) {
			/* the reads already queued complete normally and see the error */
			sg->err = ret;
			sg->pending -= ex->n_mats - m;
			if (!sg->pending) {
				sg->reading = false;
				moe_book_unpin(c->book, s);
			}
			return ret;
		}
		off += span;
	}
	return 0;
}

/*
 * GPUDirect Storage: the matrices of the expert now in slot @s read from the
 * file straight into the slot, before this returns.  The reads bypass the
 * queues, so the host first waits for what they still do with the slot:
 * the copy queue's uploads into it and downloads out of it (one event after
 * everything queued there so far) and the compute work that last read it.
 */
static int direct_fetch(struct moe_expert_cache *c, uint32_t s)
{
	struct slot *sl = &c->slots[s];
	const struct moe_expert *ex = expert_of(c, s);
	struct moe_backend *be = c->be;
	double t0 = moe_now();
	uint64_t bytes = 0;
	int ret;

	ret = be->ops->event_record(be, MOE_BE_COPY, sl->up_ev);
	ret = ret ? ret : be->ops->event_sync(be, sl->up_ev);
	if (!ret && sl->use >= 0)
		ret = be->ops->event_sync(be, c->use_ev[sl->use]);
	for (uint32_t m = 0; !ret && m < ex->n_mats; m++) {
		ret = be->ops->direct_read(be, sl->mem + moe_expert_mat_offset(ex, m, c->align),
					   ex->mats[m].offset, ex->mats[m].bytes);
		if (!ret)
			bytes += ex->mats[m].bytes;
	}
	c->st.bytes_read += bytes;
	c->st.direct_bytes += bytes;
	c->st.direct_s += moe_now() - t0;
	/* the forward pass waited for the read */
	c->st.stall_s += moe_now() - t0;
	if (ret < 0)
		return ret;
	c->slots[s].state = SLOT_QUEUED;
	return 0;
}

static bool staging_free(struct moe_expert_cache *c, struct staging *sg)
{
	if (sg->reading)
		return false;
	if (sg->uploading) {
		if (c->be->ops->event_query(c->be, sg->ev) == 0)
			return false;
		sg->uploading = false;
	}
	return true;
}

/* A staging buffer whose reads and uploads are all done, or -1; @spare more must stay free. */
static int free_staging(struct moe_expert_cache *c, uint32_t spare)
{
	int first = -1;
	uint32_t n = 0;

	for (uint32_t i = 0; i < c->n_stg; i++) {
		if (!staging_free(c, &c->stg[i]))
			continue;
		if (first < 0)
			first = (int)i;
		if (n++ >= spare)
			return first;
	}
	return -1;
}

/* The staging buffer reading into slot @s, or NULL. */
static struct staging *reader_of(struct moe_expert_cache *c, uint32_t s)
{
	for (uint32_t i = 0; i < c->n_stg; i++)
		if (c->stg[i].reading && c->stg[i].slot == s)
			return &c->stg[i];
	return NULL;
}

/* Before new data lands in @s, the copy queue waits for the compute work that read it. */
static int wait_unused(struct moe_expert_cache *c, struct slot *sl)
{
	if (sl->use < 0)
		return 0;
	return c->be->ops->queue_wait(c->be, MOE_BE_COPY, c->use_ev[sl->use]);
}

/* Keep the expert leaving device slot @s in the host tier (when there is one). */
static int demote(struct moe_expert_cache *c, struct moe_key old, uint32_t s, uint64_t clock)
{
	struct moe_book_use u;
	int ret;

	if (!c->hbook || moe_book_lookup(c->hbook, old.layer, old.e) >= 0)
		return 0;
	ret = moe_book_use(c->hbook, old.layer, old.e, clock, false, &u);
	if (ret < 0)
		return ret == -EAGAIN ? 0 : ret;
	moe_book_unpin(c->hbook, u.slot);
	/* the copy queue keeps order: this runs before any refill of the slot */
	return c->be->ops->download(c->be, MOE_BE_COPY, c->host_mem + c->host_off[u.slot],
				    c->slots[s].mem, c->slots[s].bytes);
}

int moe_cache_acquire(struct moe_expert_cache *c, uint32_t layer, uint32_t e, uint64_t clock,
		      uint32_t *slot)
{
	uint64_t key = (uint64_t)layer * c->n_expert + e;
	int32_t s, hs = -1, stg = -1;
	struct moe_book_use u;
	struct slot *sl;
	int ret;

	if (layer >= c->n_layer || e >= c->n_expert || !c->experts[key].n_mats)
		return moe_err(EINVAL, "layer %u has no routed expert %u", layer, e);
	s = moe_book_lookup(c->book, layer, e);
	if (s >= 0) {
		sl = &c->slots[s];
		if (sl->err)
			return moe_err(-sl->err, "expert %u of layer %u could not be read: %s", e,
				       layer, strerror(-sl->err));
		ret = moe_book_use(c->book, layer, e, clock, true, &u);
		if (ret < 0)
			return ret;
		*slot = u.slot;
		if (sl->state == SLOT_READING) {
			struct staging *sg = reader_of(c, u.slot);

			/* a prefetch the forward pass now waits for */
			if (sg && sg->prefetch) {
				sg->prefetch = false;
				moe_io_promote(c->io, fetch_done, sg->args, moe_cache_expert(c, layer,
											  e)->n_mats);
			}
		}
		return sl->state == SLOT_QUEUED;
	}
	if (c->hbook)
		hs = moe_book_lookup(c->hbook, layer, e);
	if (hs < 0 && !c->direct) {
		stg = free_staging(c, 0);
		if (stg < 0)
			return -EAGAIN;
	}
	if (!moe_book_can_take(c->book, layer, e))
		return -EAGAIN;
	if (hs >= 0) {
		/* pinned, so that demoting the device victim cannot take this host slot */
		ret = moe_book_use(c->hbook, layer, e, clock, false, &u);
		if (ret < 0)
			return ret;
	}
	ret = moe_book_use(c->book, layer, e, clock, true, &u);
	if (ret < 0) {
		if (hs >= 0)
			moe_book_unpin(c->hbook, (uint32_t)hs);
		return ret;
	}
	sl = &c->slots[u.slot];
	*slot = u.slot;
	if (u.evicted) {
		if (u.old_unused)
			c->st.prefetch_unused_bytes += sl->bytes;
		ret = demote(c, u.old, u.slot, clock);
		if (ret < 0)
			goto fail;
	}
	ret = wait_unused(c, sl);
	if (ret < 0)
		goto fail;
	if (hs >= 0) {
		ret = c->be->ops->upload(c->be, MOE_BE_COPY, sl->mem, c->host_mem + c->host_off[hs],
					 sl->bytes);
		ret = ret ? ret : c->be->ops->event_record(c->be, MOE_BE_COPY, sl->up_ev);
		/* later host-tier writes queue behind this upload on the copy queue */
		moe_book_unpin(c->hbook, (uint32_t)hs);
		hs = -1;
		if (ret < 0)
			goto fail;
		sl->state = SLOT_QUEUED;
		c->st.host_hits++;
		return 1;
	}
	if (c->direct) {
		ret = direct_fetch(c, *slot);
		if (ret < 0)
			goto fail;
		return 1;
	}
	ret = start_fetch(c, *slot, (uint32_t)stg, false);
	if (ret < 0)
		goto fail;
	return 0;
fail:
	if (hs >= 0)
		moe_book_unpin(c->hbook, (uint32_t)hs);
	if (stg >= 0 && c->stg[stg].reading) {
		/* reads queued before the failure own the slot until they end */
		sl->err = ret;
		moe_book_unpin(c->book, *slot);
	} else {
		moe_book_drop(c->book, *slot);
		sl->state = SLOT_EMPTY;
		sl->err = 0;
	}
	return moe_err_prefix(ret, "fetching expert %u of layer %u", e, layer);
}

void moe_cache_layer(struct moe_expert_cache *c, uint32_t layer, uint64_t clock,
		     const uint32_t *ids, uint32_t n)
{
	moe_book_layer(c->book, layer, clock, ids, n);
	if (c->hbook)
		moe_book_layer(c->hbook, layer, clock, ids, n);
}

void moe_cache_hint(struct moe_expert_cache *c, uint32_t layer, uint32_t e, float p,
		    uint64_t clock)
{
	moe_book_hint(c->book, layer, e, p, clock);
}

int moe_cache_prefetch(struct moe_expert_cache *c, uint32_t layer, uint32_t e, uint64_t clock)
{
	uint64_t key = (uint64_t)layer * c->n_expert + e;
	int32_t hs = -1, stg = -1;
	struct moe_book_use u;
	struct slot *sl;
	int ret;

	if (layer >= c->n_layer || e >= c->n_expert || !c->experts[key].n_mats)
		return moe_err(EINVAL, "layer %u has no routed expert %u", layer, e);
	if (moe_book_lookup(c->book, layer, e) >= 0)
		return 0;
	if (c->hbook)
		hs = moe_book_lookup(c->hbook, layer, e);
	if (hs < 0 && !c->direct) {
		stg = free_staging(c, c->stg_reserve);
		if (stg < 0)
			return -EAGAIN;
	}
	ret = moe_book_prefetch(c->book, layer, e, clock, &u);
	if (ret)
		return ret == -EAGAIN || ret == 1 ? 0 : ret;
	sl = &c->slots[u.slot];
	if (u.evicted) {
		if (u.old_unused)
			c->st.prefetch_unused_bytes += sl->bytes;
		ret = demote(c, u.old, u.slot, clock);
		if (ret < 0)
			goto fail;
	}
	ret = wait_unused(c, sl);
	if (ret < 0)
		goto fail;
	c->st.prefetch_bytes += sl->bytes;
	if (hs >= 0) {
		ret = c->be->ops->upload(c->be, MOE_BE_COPY, sl->mem, c->host_mem + c->host_off[hs],
					 sl->bytes);
		ret = ret ? ret : c->be->ops->event_record(c->be, MOE_BE_COPY, sl->up_ev);
		if (ret < 0)
			goto fail;
		moe_book_use(c->hbook, layer, e, clock, false, &u);
		moe_book_unpin(c->hbook, u.slot);
		sl->state = SLOT_QUEUED;
		return 1;
	}
	if (c->direct) {
		ret = direct_fetch(c, u.slot);
		if (ret < 0)
			goto fail;
		return 1;
	}
	ret = start_fetch(c, u.slot, (uint32_t)stg, true);
	if (ret < 0) {
		/* reads queued before the failure end with it and drop the slot then */
		if (c->stg[stg].reading)
			return 0;
		goto fail;
	}
	return 1;
fail:
	moe_book_cancel(c->book, u.slot);
	sl->state = SLOT_EMPTY;
	sl->err = 0;
	moe_log(MOE_LOG_WARN, "prefetch of expert %u of layer %u failed: %s", e, layer,
		moe_errmsg());
	return 0;
}

void moe_cache_cancel_stale(struct moe_expert_cache *c, uint32_t layer, const uint8_t *chosen)
{
	bool any = false;

	for (uint32_t i = 0; i < c->n_stg; i++) {
		struct staging *sg = &c->stg[i];
		struct moe_key k;

		if (!sg->reading || !sg->prefetch || !moe_book_key(c->book, sg->slot, &k) ||
		    k.layer != layer || chosen[k.e])
			continue;
		any |= moe_io_cancel_low(c->io, fetch_done, sg->args,
					 moe_cache_expert(c, k.layer, k.e)->n_mats) > 0;
	}
	/* the cancelled reads' callbacks empty their slots now, before the layer looks */
	if (any)
		moe_io_poll(c->io);
}

uint32_t moe_cache_free_slots(const struct moe_expert_cache *c, uint32_t layer, uint32_t e)
{
	return moe_book_free_slots(c->book, layer, e);
}

bool moe_cache_hold(struct moe_expert_cache *c, uint32_t slot)
{
	return moe_book_hold(c->book, slot);
}

struct moe_book *moe_cache_book(struct moe_expert_cache *c)
{
	return c->book;
}

int moe_cache_ready(const struct moe_expert_cache *c, uint32_t slot)
{
	const struct slot *s = &c->slots[slot];

	if (s->err)
		return s->err;
	if (s->state == SLOT_QUEUED)
		return 1;
	return s->state == SLOT_READING ? 0 : -EIO;
}

struct moe_be_event *moe_cache_slot_event(struct moe_expert_cache *c, uint32_t slot)
{
	struct slot *s = &c->slots[slot];

	return c->be->ops->event_query(c->be, s->up_ev) == 1 ? NULL : s->up_ev;
}

void moe_cache_release(struct moe_expert_cache *c, uint32_t slot)
{
	moe_book_unpin(c->book, slot);
	drop_if_failed(c, slot);
}

int moe_cache_used(struct moe_expert_cache *c, const uint32_t *slots, uint32_t n)
{
	uint32_t i = c->use_next++ % USE_RING;
	int ret = n ? c->be->ops->event_record(c->be, MOE_BE_COMPUTE, c->use_ev[i]) : 0;

	for (uint32_t j = 0; j < n; j++) {
		c->slots[slots[j]].use = (int32_t)i;
		moe_cache_release(c, slots[j]);
	}
	return ret;
}

bool moe_cache_contains(const struct moe_expert_cache *c, uint32_t layer, uint32_t e)
{
	int32_t s = moe_book_lookup(c->book, layer, e);

	return s >= 0 && !c->slots[s].err;
}

int moe_cache_poll(struct moe_expert_cache *c)
{
	int ret = moe_io_submit(c->io);

	if (ret < 0)
		return ret;
	return moe_io_poll(c->io);
}

bool moe_cache_busy(struct moe_expert_cache *c)
{
	for (uint32_t i = 0; i < c->n_stg; i++)
		if (!staging_free(c, &c->stg[i]))
			return true;
	return false;
}

int moe_cache_wait(struct moe_expert_cache *c)
{
	double t0 = moe_now();
	bool reading = false;
	int ret;

	for (uint32_t i = 0; i < c->n_stg; i++)
		reading |= c->stg[i].reading;
	if (reading) {
		ret = moe_io_submit(c->io);
		if (ret >= 0)
			ret = moe_io_wait(c->io, 1);
	} else {
		/* every staging buffer waits for its uploads: wait for one */
		ret = 0;
		for (uint32_t i = 0; i < c->n_stg; i++)
			if (c->stg[i].uploading) {
				ret = c->be->ops->event_sync(c->be, c->stg[i].ev);
				c->stg[i].uploading = ret < 0;
				break;
			}
	}
	c->st.stall_s += moe_now() - t0;
	return ret;
}

double moe_cache_stall(const struct moe_expert_cache *c)
{
	return c->st.stall_s;
}

moe_dptr moe_cache_mat(const struct moe_expert_cache *c, uint32_t slot, uint32_t mat)
{
	return c->slots[slot].mem + moe_expert_mat_offset(expert_of(c, slot), mat, c->align);
}

const struct moe_expert *moe_cache_expert(const struct moe_expert_cache *c, uint32_t layer,
					  uint32_t e)
{
	return &c->experts[(uint64_t)layer * c->n_expert + e];
}

const char *moe_cache_io_path(const struct moe_expert_cache *c)
{
	return !c ? "" : c->direct ? "gds" : "staging";
}

void moe_cache_get_stats(const struct moe_expert_cache *c, struct moe_cache_stats *out)
{
	struct moe_book_stats bs;

	moe_book_get_stats(c->book, &bs);
	*out = c->st;
	out->hits = bs.hits;
	out->misses = bs.misses;
	out->evictions = bs.evictions;
	out->prefetches = bs.prefetches;
	out->prefetch_used = bs.prefetch_used;
}

void moe_cache_reset_stats(struct moe_expert_cache *c)
{
	moe_book_reset_stats(c->book);
	c->st.host_hits = c->st.bytes_read = 0;
	c->st.stall_s = c->st.direct_s = 0;
	c->st.direct_bytes = 0;
	c->st.prefetch_cancelled = c->st.prefetch_bytes = c->st.prefetch_unused_bytes = 0;
}

void moe_cache_layer_stats(const struct moe_expert_cache *c, uint32_t layer, uint64_t *hits,
			   uint64_t *misses, uint64_t *prefetch_used)
{
	moe_book_layer_stats(c->book, layer, hits, misses, prefetch_used);
}
