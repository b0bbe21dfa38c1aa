/* SPDX-License-Identifier: MIT */
/*
 * The I/O engine: opening with fallbacks, requests split into pieces,
 * bounded queue depth, completion delivery and safe close.  The backends
 * (uring.c, pread.c) only move pieces; see io.h for the flow.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "io/io.h"
#include "io/kmod.h"
#include "util/util.h"

#define DEFAULT_QD 32
#define MAX_QD 4096
#define DEFAULT_MAX_REQUEST (1ull << 20)
#define DEFAULT_STAGING (64ull << 20)
#define MAX_WORKERS 16

unsigned moe_io_faults;
uint64_t moe_io_fault_eio_pos = UINT64_MAX;
unsigned moe_io_fault_delay_us;

struct moe_io_req {
	struct moe_io *io;
	uint64_t offset, len;
	uint64_t start;          /* aligned start: dst holds the file from here */
	uint8_t *dst;
	moe_io_cb cb;
	void *arg;
	int64_t res;             /* first error, else 0 */
	uint64_t err_pos;
	uint32_t left;           /* pieces not yet ended */
	bool inline_cb;          /* call cb on the thread that ends the last piece */
	bool engine_async;       /* inline_cb for MOE_IO_CB_ENGINE_THREAD (not a sync read) */
	bool low;                /* MOE_IO_READ_LOW, until promoted */
	bool started;            /* a piece went to the backend: no longer cancellable */
	bool cancelled;          /* by moe_io_cancel_low: not an I/O error */
	uint64_t seen_gen;       /* moe_io_cancel_low: found in the backend's queue */
	uint64_t taken_gen;      /* moe_io_cancel_low: pieces taken back from it */
	struct moe_io_req *next;
	struct moe_io_piece pieces[];
};

void moe_io_params_init(struct moe_io_params *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->numa_node = -1;
}

uint32_t moe_io_block(const struct moe_io *io)
{
	return io->block;
}

uint64_t moe_io_span(const struct moe_io *io, uint64_t offset, uint64_t len)
{
	uint64_t start = offset / io->block * io->block;
	uint64_t end;

	if (!moe_add_u64(offset, len, &end) || end > UINT64_MAX - io->block)
		return 0;
	return MOE_ALIGN_UP(end, io->block) - start;
}

/* ------------------------------------------------------------ completion */

/* The request is complete: account it and queue or hand back its delivery. */
static void req_complete_locked(struct moe_io *io, struct moe_io_req *r,
				struct moe_io_req **inline_list)
{
	if (r->res < 0) {
		io->stats.errors += !r->cancelled;
		/* A cancellation is what the closer asked for, not a fault worth a warning. */
		moe_log(r->res == -ECANCELED ? MOE_LOG_DEBUG : MOE_LOG_WARN,
			"%s: read of extent [0x%llx, +0x%llx) failed at 0x%llx: %s", io->path,
			(unsigned long long)r->offset, (unsigned long long)r->len,
			(unsigned long long)r->err_pos, strerror((int)-r->res));
	} else {
		io->stats.bytes += r->len;
	}
	io->stats.requests++;
	if (r->inline_cb) {
		r->next = *inline_list;
		*inline_list = r;
		return;
	}
	r->next = NULL;
	if (io->done_tail)
		io->done_tail->next = r;
	else
		io->done_head = r;
	io->done_tail = r;
	pthread_cond_broadcast(&io->cond);
}

/* Run one request's callback (no lock held) and free the request. */
static void req_deliver(struct moe_io *io, struct moe_io_req *r)
{
	int64_t res = r->res < 0 ? r->res : (int64_t)r->len;
	void *interior = r->dst ? r->dst + (r->offset - r->start) : NULL;
	bool counted = r->engine_async;

	if (res < 0)
		moe_err((int)-res, "%s: extent [0x%llx, +0x%llx): %s%s", io->path,
			(unsigned long long)r->offset, (unsigned long long)r->len,
			strerror((int)-res),
			res == -ENODATA ? " (the file ended early: was it truncated?)" : "");
	if (r->cb)
		r->cb(r->arg, res, interior);
	free(r);
	pthread_mutex_lock(&io->lock);
	io->live--;
	if (counted) {
		io->engine_live--;
		io->engine_done++;
	}
	pthread_cond_broadcast(&io->cond);
	pthread_mutex_unlock(&io->lock);
}

static void deliver_list(struct moe_io *io, struct moe_io_req *r)
{
	while (r) {
		struct moe_io_req *next = r->next;

		req_deliver(io, r);
		r = next;
	}
}

/* Put @p back at the head of its pending list (a retry, or a piece the backend did not take). */
static void requeue_front_locked(struct moe_io *io, struct moe_io_piece *p)
{
	struct moe_io_piece **head = p->low ? &io->lpend_head : &io->pend_head;
	struct moe_io_piece **tail = p->low ? &io->lpend_tail : &io->pend_tail;

	p->next = *head;
	*head = p;
	if (!*tail)
		*tail = p;
}

static void append_locked(struct moe_io *io, struct moe_io_piece *first, struct moe_io_piece *last)
{
	struct moe_io_piece **head = first->low ? &io->lpend_head : &io->pend_head;
	struct moe_io_piece **tail = first->low ? &io->lpend_tail : &io->pend_tail;

	if (*tail)
		(*tail)->next = first;
	else
		*head = first;
	*tail = last;
}

/*
 * One piece ended with @res.  Retries the rest of a short read, fails a read
 * that hit the end of the file, and completes the request with its last
 * piece.  Lock held; the caller fixes the in-flight count.
 */
static void piece_end_locked(struct moe_io *io, struct moe_io_piece *p, int64_t res,
			     struct moe_io_req **inline_list)
{
	struct moe_io_req *r = p->req;

	if (res >= 0 && (uint64_t)res < p->need) {
		/* Direct reads stop short only at the end of the file. */
		if (res == 0 || (io->direct && res % io->block)) {
			res = -ENODATA;
		} else if (io->closing) {
			res = -ECANCELED;
		} else {
			p->pos += res;
			p->buf += res;
			p->len -= res;
			p->need -= res;
			p->low = r->low;
			requeue_front_locked(io, p);
			return;
		}
	}
	if (res < 0 && r->res >= 0) {
		r->res = res;
		r->err_pos = p->pos;
	}
	if (--r->left == 0)
		req_complete_locked(io, r, inline_list);
}

static void inflight_sub_locked(struct moe_io *io, uint32_t n)
{
	io->inflight -= n;
	if (!io->inflight)
		io->stats.busy_s += moe_now() - io->busy_since;
	pthread_cond_broadcast(&io->cond);
}

/*
 * Low-priority pieces in flight at once: a quarter of the depth stays free
 * for demand (the pread backend's depth is its worker count).
 */
static uint32_t low_max(const struct moe_io *io)
{
	uint32_t d = io->opts.queue_depth;

	if (io->ops == &moe_io_pread_ops)
		d = MOE_MIN(d, io->opts.n_workers);
	return MOE_MAX(d - d / 4, 1u);
}

static struct moe_io_piece *pop_locked(struct moe_io_piece **head, struct moe_io_piece **tail)
{
	struct moe_io_piece *p = *head;

	*head = p->next;
	if (!*head)
		*tail = NULL;
	p->next = NULL;
	return p;
}

/*
 * Hand pending pieces to the backend while the queue depth allows: demand
 * pieces first, low-priority ones only when no demand piece waits.
 */
static void dispatch_locked(struct moe_io *io, struct moe_io_req **inline_list)
{
	uint32_t qd = io->opts.queue_depth;

	while (io->inflight < qd && !io->closing) {
		unsigned n = 0, n_low = 0, taken;
		int ret;

		while (io->pend_head && io->inflight + n < qd)
			io->batch[n++] = pop_locked(&io->pend_head, &io->pend_tail);
		while (!io->pend_head && io->lpend_head && io->inflight + n < qd &&
		       io->low_inflight + n_low < low_max(io)) {
			io->batch[n++] = pop_locked(&io->lpend_head, &io->lpend_tail);
			n_low++;
		}
		if (!n)
			break;
		ret = io->ops->issue(io, io->batch, n);
		if (ret <= 0) {
			/* Nothing was taken: fail them rather than risk waiting forever. */
			for (unsigned i = 0; i < n; i++)
				piece_end_locked(io, io->batch[i], ret < 0 ? ret : -EIO, inline_list);
			break;
		}
		taken = (unsigned)ret;
		if (!io->inflight)
			io->busy_since = moe_now();
		io->inflight += taken;
		for (unsigned i = 0; i < taken; i++) {
			io->batch[i]->req->started = true;
			io->low_inflight += io->batch[i]->low;
		}
		/* A backend that took part of the batch gets the rest first, next time. */
		for (unsigned i = n; i-- > taken;)
			requeue_front_locked(io, io->batch[i]);
		if (taken < n)
			break;
	}
}

void moe_io_piece_done(struct moe_io *io, struct moe_io_piece *p, int64_t res)
{
	struct moe_io_req *inline_list = NULL;

	pthread_mutex_lock(&io->lock);
	if (moe_io_fault_eio_pos - p->pos < p->len)
		res = -EIO;
	if (p->low)
		io->low_inflight--;
	piece_end_locked(io, p, res, &inline_list);
	inflight_sub_locked(io, 1);
	dispatch_locked(io, &inline_list);
	pthread_mutex_unlock(&io->lock);
	deliver_list(io, inline_list);
}

/* ------------------------------------------------------------ requests */

enum delivery { DELIVER_POLL, DELIVER_ENGINE, DELIVER_SYNC };

static int queue_read(struct moe_io *io, uint64_t offset, uint64_t len, void *dst,
		      uint64_t dst_cap, uint32_t flags, moe_io_cb cb, void *arg, enum delivery how)
{
	bool inline_cb = how != DELIVER_POLL;

	uint64_t end, span, start, mr;
	struct moe_io_req *r;
	uint32_t n;

	if (!io)
		return moe_err(EINVAL, "moe_io_read: no engine");
	if (flags & ~MOE_IO_READ_FLAGS_ALL)
		return moe_err(EINVAL, "%s: unknown read flags 0x%x", io->path,
			       flags & ~MOE_IO_READ_FLAGS_ALL);
	if (!moe_add_u64(offset, len, &end) || end > io->file_size)
		return moe_err(EINVAL, "%s: extent [0x%llx, +0x%llx) ends past the end of the file "
			       "(0x%llx bytes)", io->path, (unsigned long long)offset,
			       (unsigned long long)len, (unsigned long long)io->file_size);
	span = len ? moe_io_span(io, offset, len) : 0;
	if (len && !dst)
		return moe_err(EINVAL, "%s: extent [0x%llx, +0x%llx): no destination buffer",
			       io->path, (unsigned long long)offset, (unsigned long long)len);
	if (dst_cap < span)
		return moe_err(EINVAL, "%s: extent [0x%llx, +0x%llx) needs a %llu-byte buffer "
			       "(moe_io_span), got %llu", io->path, (unsigned long long)offset,
			       (unsigned long long)len, (unsigned long long)span,
			       (unsigned long long)dst_cap);
	if ((uintptr_t)dst % io->block)
		return moe_err(EINVAL, "%s: destination %p is not aligned to the %u-byte block; "
			       "allocate it with moe_io_alloc()", io->path, dst, io->block);

	mr = io->opts.max_request;
	n = (uint32_t)((span + mr - 1) / mr);
	r = calloc(1, sizeof(*r) + (size_t)n * sizeof(r->pieces[0]));
	if (!r)
		return moe_err(ENOMEM, "%s: no memory for a read request", io->path);
	start = offset / io->block * io->block;
	*r = (struct moe_io_req){ .io = io, .offset = offset, .len = len, .start = start,
				  .dst = dst, .cb = cb, .arg = arg, .left = n,
				  .inline_cb = inline_cb, .engine_async = how == DELIVER_ENGINE,
				  .low = flags & MOE_IO_READ_LOW };
	for (uint32_t i = 0; i < n; i++) {
		struct moe_io_piece *p = &r->pieces[i];

		p->req = r;
		p->low = r->low;
		p->pos = start + (uint64_t)i * mr;
		p->len = MOE_MIN(mr, span - (uint64_t)i * mr);
		p->need = MOE_MIN(p->len, end - p->pos);
		p->buf = (uint8_t *)dst + (p->pos - start);
		p->next = i + 1 < n ? &r->pieces[i + 1] : NULL;
	}

	pthread_mutex_lock(&io->lock);
	if (io->closing) {
		pthread_mutex_unlock(&io->lock);
		free(r);
		return moe_err(ESHUTDOWN, "%s: the engine is closing", io->path);
	}
	for (uint32_t i = 0; i < n; i++)
		r->pieces[i].buf_index = moe_io_pool_index(io, r->pieces[i].buf, r->pieces[i].len);
	io->live++;
	if (!inline_cb)
		io->undelivered++;
	if (how == DELIVER_ENGINE)
		io->engine_live++;
	if (!n) {
		struct moe_io_req *inline_list = NULL;

		req_complete_locked(io, r, &inline_list);
		pthread_mutex_unlock(&io->lock);
		deliver_list(io, inline_list);
		return 0;
	}
	append_locked(io, &r->pieces[0], &r->pieces[n - 1]);
	pthread_mutex_unlock(&io->lock);
	return 0;
}

int moe_io_read_flags(struct moe_io *io, uint64_t offset, uint64_t len, void *dst,
		      uint64_t dst_cap, uint32_t flags, moe_io_cb cb, void *arg)
{
	return queue_read(io, offset, len, dst, dst_cap, flags, cb, arg,
			  io && (io->opts.flags & MOE_IO_CB_ENGINE_THREAD) ? DELIVER_ENGINE :
			  DELIVER_POLL);
}

int moe_io_read(struct moe_io *io, uint64_t offset, uint64_t len, void *dst, uint64_t dst_cap,
		moe_io_cb cb, void *arg)
{
	return moe_io_read_flags(io, offset, len, dst, dst_cap, 0, cb, arg);
}

/* Is @r one of the reads (cb, args[0..n)) asks for?  args NULL: any read of cb (NULL: any). */
static bool req_matches(const struct moe_io_req *r, moe_io_cb cb, void *const *args, uint32_t n)
{
	if (cb && r->cb != cb)
		return false;
	if (!args)
		return true;
	for (uint32_t i = 0; i < n; i++)
		if (r->arg == args[i])
			return true;
	return false;
}

/* Matching low-priority reads that have not started (all their pieces wait in the queue). */
static uint32_t unstarted_low_locked(struct moe_io *io, moe_io_cb cb, void *const *args,
				     uint32_t n)
{
	uint32_t found = 0;

	for (struct moe_io_piece *p = io->lpend_head; p; p = p->next)
		if (p == &p->req->pieces[0] && !p->req->started && req_matches(p->req, cb, args, n))
			found++;
	return found;
}

struct cancel_ctx {
	moe_io_cb cb;
	void *const *args;
	uint32_t n;
	uint64_t gen;
	uint32_t found;
};

static bool cancel_want(const struct moe_io_piece *p, void *arg)
{
	const struct cancel_ctx *c = arg;

	return p->req->low && req_matches(p->req, c->cb, c->args, c->n);
}

static void cancel_seen(struct moe_io_piece *p, void *arg)
{
	struct cancel_ctx *c = arg;

	if (p->req->seen_gen != c->gen) {
		p->req->seen_gen = c->gen;
		c->found++;
	}
}

static void cancel_taken(struct moe_io_piece *p, void *arg)
{
	struct cancel_ctx *c = arg;
	struct moe_io_req *r = p->req;

	/* Its piece ends with -ECANCELED later: the request is withdrawn, not failed. */
	r->cancelled = true;
	if (r->taken_gen != c->gen) {
		r->taken_gen = c->gen;
		c->found++;
	}
}

int moe_io_cancel_low(struct moe_io *io, moe_io_cb cb, void *const *args, uint32_t n)
{
	struct moe_io_req *inline_list = NULL;
	struct cancel_ctx c = { .cb = cb, .args = args, .n = n };
	struct moe_io_piece **pp;
	uint32_t found;

	if (!io)
		return moe_err(EINVAL, "moe_io_cancel_low: no engine");
	pthread_mutex_lock(&io->lock);
	c.gen = ++io->cancel_gen;
	/*
	 * With a list, all of them or none: a caller's reads belong together.
	 * A read counts when it waits here unstarted or its pieces wait in the
	 * backend's own queue of prefetches (moe.ko's).
	 */
	if (args) {
		uint32_t have = unstarted_low_locked(io, cb, args, n);

		if (have < n && io->ops->cancel_low) {
			io->ops->cancel_low(io, false, cancel_want, cancel_seen, &c);
			have += c.found;
		}
		if (have < n) {
			pthread_mutex_unlock(&io->lock);
			return 0;
		}
	}
	c.found = 0;
	c.gen = ++io->cancel_gen;
	if (io->ops->cancel_low)
		io->ops->cancel_low(io, true, cancel_want, cancel_taken, &c);
	found = c.found;
	pp = &io->lpend_head;
	io->lpend_tail = NULL;
	while (*pp) {
		struct moe_io_piece *p = *pp;
		struct moe_io_req *r = p->req;

		/* Unstarted reads, and the rest of those the backend gave back. */
		if ((!r->started || r->taken_gen == c.gen) && req_matches(r, cb, args, n)) {
			*pp = p->next;
			found += !r->started && p == &r->pieces[0];
			r->cancelled = true;
			if (r->res >= 0) {
				r->res = -ECANCELED;
				r->err_pos = p->pos;
			}
			if (--r->left == 0)
				req_complete_locked(io, r, &inline_list);
			continue;
		}
		io->lpend_tail = p;
		pp = &p->next;
	}
	pthread_mutex_unlock(&io->lock);
	deliver_list(io, inline_list);
	return (int)found;
}

int moe_io_promote(struct moe_io *io, moe_io_cb cb, void *const *args, uint32_t n)
{
	struct moe_io_piece **pp, *first = NULL, *last = NULL;
	int found = 0;

	if (!io)
		return moe_err(EINVAL, "moe_io_promote: no engine");
	pthread_mutex_lock(&io->lock);
	for (struct moe_io_piece *p = io->lpend_head; p; p = p->next)
		if (req_matches(p->req, cb, args, n) && p->req->low) {
			p->req->low = false;
			found++;
		}
	/* their queued pieces join the demand queue, in order */
	pp = &io->lpend_head;
	io->lpend_tail = NULL;
	while (*pp) {
		struct moe_io_piece *p = *pp;

		if (!p->req->low) {
			*pp = p->next;
			p->low = false;
			p->next = NULL;
			if (last)
				last->next = p;
			else
				first = p;
			last = p;
			continue;
		}
		io->lpend_tail = p;
		pp = &p->next;
	}
	if (first)
		append_locked(io, first, last);
	pthread_mutex_unlock(&io->lock);
	return found;
}

int moe_io_submit(struct moe_io *io)
{
	struct moe_io_req *inline_list = NULL;

	pthread_mutex_lock(&io->lock);
	dispatch_locked(io, &inline_list);
	pthread_mutex_unlock(&io->lock);
	deliver_list(io, inline_list);
	return 0;
}

/* Take the delivery queue; lock held. */
static struct moe_io_req *take_done_locked(struct moe_io *io, int *count)
{
	struct moe_io_req *r = io->done_head;

	*count = 0;
	for (struct moe_io_req *q = r; q; q = q->next)
		(*count)++;
	io->done_head = io->done_tail = NULL;
	io->undelivered -= *count;
	return r;
}

int moe_io_wait(struct moe_io *io, uint32_t min_completions)
{
	struct moe_io_req *inline_list = NULL;
	uint64_t engine_start;
	uint32_t total = 0, seen;

	pthread_mutex_lock(&io->lock);
	engine_start = io->engine_done;
	dispatch_locked(io, &inline_list);
	for (;;) {
		int n;
		struct moe_io_req *list = take_done_locked(io, &n);

		if (list || inline_list) {
			pthread_mutex_unlock(&io->lock);
			deliver_list(io, inline_list);
			inline_list = NULL;
			deliver_list(io, list);
			total += (uint32_t)n;
			pthread_mutex_lock(&io->lock);
			continue;
		}
		/* Callbacks that engine threads ran meanwhile count as completions too. */
		seen = total + (uint32_t)(io->engine_done - engine_start);
		if (seen >= min_completions || (!io->undelivered && !io->engine_live))
			break;
		pthread_cond_wait(&io->cond, &io->lock);
	}
	pthread_mutex_unlock(&io->lock);
	return (int)MOE_MIN(seen, (uint32_t)INT32_MAX);
}

int moe_io_poll(struct moe_io *io)
{
	return moe_io_wait(io, 0);
}

struct sync_wait {
	struct moe_io *io;
	int64_t res;
	void *interior;
	bool done;
};

static void sync_cb(void *arg, int64_t res, void *interior)
{
	struct sync_wait *s = arg;

	pthread_mutex_lock(&s->io->lock);
	s->res = res;
	s->interior = interior;
	s->done = true;
	pthread_cond_broadcast(&s->io->cond);
	pthread_mutex_unlock(&s->io->lock);
}

int moe_io_read_sync(struct moe_io *io, uint64_t offset, uint64_t len, void *dst,
		     uint64_t dst_cap, void **interior)
{
	struct sync_wait s = { .io = io };
	struct moe_io_req *inline_list = NULL;
	int ret;

	/* Delivered by whichever thread ends the read, so other waiters never see it. */
	ret = queue_read(io, offset, len, dst, dst_cap, 0, sync_cb, &s, DELIVER_SYNC);
	if (ret < 0)
		return ret;
	pthread_mutex_lock(&io->lock);
	dispatch_locked(io, &inline_list);
	pthread_mutex_unlock(&io->lock);
	deliver_list(io, inline_list);
	pthread_mutex_lock(&io->lock);
	while (!s.done)
		pthread_cond_wait(&io->cond, &io->lock);
	pthread_mutex_unlock(&io->lock);
	if (s.res < 0)
		return moe_err((int)-s.res, "%s: extent [0x%llx, +0x%llx): %s", io->path,
			       (unsigned long long)offset, (unsigned long long)len,
			       strerror((int)-s.res));
	if (interior)
		*interior = s.interior;
	return 0;
}

void moe_io_get_stats(const struct moe_io *io, struct moe_io_stats *out)
{
	struct moe_io *w = (struct moe_io *)io;

	pthread_mutex_lock(&w->lock);
	*out = io->stats;
	if (io->inflight)
		out->busy_s += moe_now() - io->busy_since;
	pthread_mutex_unlock(&w->lock);
}

/* ------------------------------------------------------------ staging */

int moe_io_alloc(struct moe_io *io, uint64_t bytes, void **out)
{
	void *p;

	if (!out)
		return moe_err(EINVAL, "moe_io_alloc: no place to store the pointer");
	*out = NULL;
	if (!io)
		return moe_err(EINVAL, "moe_io_alloc: no I/O engine");
	if (!bytes || bytes > (1ull << 48))
		return moe_err(EINVAL, "%s: moe_io_alloc of %llu bytes: ask for 1 byte to 256 TiB",
			       io->path, (unsigned long long)bytes);
	pthread_mutex_lock(&io->lock);
	p = moe_io_pool_alloc(io, bytes);
	pthread_mutex_unlock(&io->lock);
	if (!p)
		return moe_err(ENOMEM, "%s: out of memory for %llu bytes of I/O buffers", io->path,
			       (unsigned long long)bytes);
	*out = p;
	return 0;
}

void moe_io_free(struct moe_io *io, void *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&io->lock);
	if (moe_io_pool_free(io, p) < 0)
		moe_log(MOE_LOG_ERROR, "%s: moe_io_free(%p): not from moe_io_alloc", io->path, p);
	pthread_mutex_unlock(&io->lock);
}

/* ------------------------------------------------------------ open/close */

static void describe_locked(struct moe_io *io)
{
	char pool[128], node[24] = "node ?";

	if (io->node >= 0)
		snprintf(node, sizeof(node), "node %d", io->node);
	snprintf(io->desc, sizeof(io->desc), "%s%s, %s%s, qd %u, max %llu KiB, block %u, %s, %s",
		 io->ops->name, io->backend_note, io->direct ? "O_DIRECT" : "buffered",
		 io->direct_note, io->opts.queue_depth,
		 (unsigned long long)(io->opts.max_request >> 10), io->block, node,
		 moe_io_pool_describe(io, pool, sizeof(pool)));
}

const char *moe_io_describe(const struct moe_io *io)
{
	struct moe_io *w = (struct moe_io *)io;

	pthread_mutex_lock(&w->lock);
	describe_locked(w);
	pthread_mutex_unlock(&w->lock);
	return io->desc;
}

/* Logical block size of the device under @fd: what O_DIRECT offsets and lengths align to. */
static uint32_t detect_block(int fd, const char *path, const struct stat *st)
{
	struct statx sx;
	uint32_t b = 0;

	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 &&
	    (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align)
		b = MOE_MAX(sx.stx_dio_offset_align, sx.stx_dio_mem_align);
	if (!b && S_ISBLK(st->st_mode)) {
		int ssz;

		if (ioctl(fd, BLKSSZGET, &ssz) == 0 && ssz > 0)
			b = (uint32_t)ssz;
	}
	if (!b) {
		char name[64], sys[128];
		FILE *f;
		unsigned v;

		if (moe_topo_dev_disk(st->st_dev, name, sizeof(name)) == 0) {
			snprintf(sys, sizeof(sys), "/sys/block/%s/queue/logical_block_size", name);
			f = fopen(sys, "r");
			if (f) {
				if (fscanf(f, "%u", &v) == 1 && v)
					b = v;
				fclose(f);
			}
		}
	}
	if (!b || (b & (b - 1)) || b > 65536) {
		moe_log(MOE_LOG_DEBUG, "%s: no block size from the device, using 4096", path);
		b = 4096;
	}
	return b;
}

/* Whether O_DIRECT cannot bypass anything here: the page cache is the storage. */
static bool memory_backed(int fd)
{
	struct statfs sf;

	return fstatfs(fd, &sf) == 0 &&
	       (sf.f_type == TMPFS_MAGIC || sf.f_type == RAMFS_MAGIC);
}

static int open_direct(struct moe_io *io, int *fd_out)
{
	int fd;

	if (moe_io_faults & MOE_IO_FAULT_DIRECT_EINVAL)
		return -EINVAL;
	fd = moe_open_input(io->path, O_DIRECT, "a model file");
	if (fd < 0)
		return fd;
	/* Some filesystems accept the flag and refuse the reads: try one block. */
	if (io->file_size) {
		void *b;
		ssize_t r;

		if (posix_memalign(&b, io->block, io->block)) {
			close(fd);
			return -ENOMEM;
		}
		r = pread(fd, b, io->block, 0);
		free(b);
		if (r < 0) {
			int e = errno;

			close(fd);
			return -e;
		}
	}
	*fd_out = fd;
	return 0;
}

static int setup_file(struct moe_io *io)
{
	struct stat st;
	bool want, mem;
	int fd, ret;

	fd = moe_open_input(io->path, 0, "a file to read");
	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0) {
		ret = moe_err(errno, "%s: stat: %s", io->path, strerror(errno));
		goto out_close;
	}
	if (S_ISREG(st.st_mode)) {
		io->file_size = (uint64_t)st.st_size;
	} else if (S_ISBLK(st.st_mode)) {
		if (ioctl(fd, BLKGETSIZE64, &io->file_size) < 0) {
			ret = moe_err(errno, "%s: block device size: %s", io->path, strerror(errno));
			goto out_close;
		}
	} else {
		ret = moe_err(EINVAL, "%s: not a regular file or block device", io->path);
		goto out_close;
	}
	io->block = detect_block(fd, io->path, &st);
	mem = memory_backed(fd);
	want = io->opts.direct == MOE_IO_DIRECT_ON ||
	       (io->opts.direct == MOE_IO_DIRECT_AUTO && !mem);
	if (io->opts.direct == MOE_IO_DIRECT_AUTO && mem) {
		snprintf(io->direct_note, sizeof(io->direct_note),
			 " (tmpfs: its pages are the storage)");
		moe_log_once(MOE_LOG_INFO, "io-direct-tmpfs",
			     "%s is on tmpfs/ramfs: reading it buffered, O_DIRECT would bypass nothing",
			     io->path);
	}
	if (want) {
		int dfd = -1;

		ret = open_direct(io, &dfd);
		if (ret == 0) {
			close(fd);
			fd = dfd;
			io->direct = true;
		} else if (io->opts.direct == MOE_IO_DIRECT_ON || ret != -EINVAL) {
			ret = moe_err(-ret, "%s: O_DIRECT refused: %s; open with direct=auto or off "
				      "to read through the page cache", io->path, strerror(-ret));
			goto out_close;
		} else {
			snprintf(io->direct_note, sizeof(io->direct_note),
				 " (O_DIRECT refused: %s)", strerror(-ret));
			moe_log_once(MOE_LOG_WARN, "io-direct-refused",
				     "%s: the filesystem refuses O_DIRECT (%s): reading through the "
				     "page cache instead", io->path, strerror(-ret));
		}
	}
	io->fd = fd;
	return 0;

out_close:
	close(fd);
	return ret;
}

static bool by_name(const char *path)
{
	return !strncmp(path, MOE_KMOD_PREFIX, strlen(MOE_KMOD_PREFIX));
}

static int setup_backend(struct moe_io *io)
{
	int ret;

	if (io->fd < 0) {
		/* "moe:NAME": the driver is the only way to the file. */
		if (io->opts.backend != MOE_IO_AUTO && io->opts.backend != MOE_IO_KMOD)
			return moe_err(EINVAL, "%s is read through moe.ko: use the I/O backend "
				       "auto or kmod, not %s", io->path,
				       io->opts.backend == MOE_IO_URING ? "uring" : "pread");
		io->ops = &moe_io_kmod_ops;
		ret = io->ops->init(io);
		return ret < 0 ? moe_err_prefix(ret, "%s: backend moe.ko", io->path) : 0;
	}
	switch (io->opts.backend) {
	case MOE_IO_AUTO:
	case MOE_IO_URING:
		io->ops = &moe_io_uring_ops;
		ret = io->ops->init(io);
		if (ret == 0)
			return 0;
		if (io->opts.backend == MOE_IO_URING)
			return moe_err_prefix(ret, "%s: io_uring forced", io->path);
		snprintf(io->backend_note, sizeof(io->backend_note), " (io_uring refused: %s)",
			 strerror(-ret));
		moe_log_once(MOE_LOG_WARN, "io-uring-refused",
			     "io_uring is refused here (%s; seccomp or kernel.io_uring_disabled?): "
			     "using pread worker threads", strerror(-ret));
		/* fall through */
	case MOE_IO_PREAD:
		io->ops = &moe_io_pread_ops;
		return io->ops->init(io);
	case MOE_IO_KMOD:
		/* Only on request: the driver serves registered models, found by file identity. */
		io->ops = &moe_io_kmod_ops;
		ret = io->ops->init(io);
		return ret < 0 ? moe_err_prefix(ret, "%s: backend moe.ko", io->path) : 0;
	}
	return moe_err(EINVAL, "%s: unknown I/O backend %d", io->path, (int)io->opts.backend);
}

static int check_opts(struct moe_io_params *o, const char *path)
{
	if ((unsigned)o->backend > MOE_IO_KMOD || (unsigned)o->direct > MOE_IO_DIRECT_OFF)
		return moe_err(EINVAL, "%s: unknown backend %d or direct mode %d", path,
			       (int)o->backend, (int)o->direct);
	if (o->flags & ~MOE_IO_FLAGS_ALL)
		return moe_err(EINVAL, "%s: unknown I/O flags 0x%x", path,
			       o->flags & ~MOE_IO_FLAGS_ALL);
	if (o->queue_depth > MAX_QD)
		return moe_err(EINVAL, "%s: queue depth %u is over the limit %u", path,
			       o->queue_depth, MAX_QD);
	if (o->max_request > MOE_IO_REG_CHUNK)
		return moe_err(EINVAL, "%s: max request %llu is over the 1 GiB a read can carry",
			       path, (unsigned long long)o->max_request);
	if (o->numa_node < -1)
		return moe_err(EINVAL, "%s: NUMA node %d: use -1 for automatic", path,
			       o->numa_node);
	if (!o->queue_depth)
		o->queue_depth = DEFAULT_QD;
	if (!o->max_request)
		o->max_request = DEFAULT_MAX_REQUEST;
	if (!o->staging_bytes)
		o->staging_bytes = DEFAULT_STAGING;
	if (!o->n_workers)
		o->n_workers = MOE_MIN(o->queue_depth, MAX_WORKERS);
	return 0;
}

int moe_io_open(const char *path, const struct moe_io_params *opts, struct moe_io **out)
{
	struct moe_io *io;
	int ret;

	if (!path || !out)
		return moe_err(EINVAL, "moe_io_open: path and out are required");
	*out = NULL;
	io = calloc(1, sizeof(*io));
	if (!io)
		return moe_err(ENOMEM, "%s: no memory for the I/O engine", path);
	io->fd = -1;
	if (opts)
		io->opts = *opts;
	else
		moe_io_params_init(&io->opts);
	io->path = strdup(path);
	if (!io->path) {
		free(io);
		return moe_err(ENOMEM, "%s: no memory", path);
	}
	ret = check_opts(&io->opts, path);
	if (ret < 0)
		goto err_free;
	io->batch = calloc(io->opts.queue_depth, sizeof(*io->batch));
	if (!io->batch) {
		ret = moe_err(ENOMEM, "%s: no memory for the queue", path);
		goto err_free;
	}
	pthread_mutex_init(&io->lock, NULL);
	pthread_cond_init(&io->cond, NULL);

	if (by_name(path)) {
		/* No file here: moe.ko reads it directly; its size comes with the model. */
		io->block = 4096;
		io->direct = true;
	} else {
		ret = setup_file(io);
		if (ret < 0)
			goto err_sync;
	}
	/* Splits stay block-aligned so every piece is a valid direct read. */
	io->opts.max_request = MOE_MAX(io->opts.max_request / io->block * io->block, io->block);
	if (io->opts.numa_node >= 0) {
		ret = moe_topo_check_node(io->opts.numa_node);
		if (ret < 0) {
			moe_err_prefix(ret, "%s", path);
			goto err_fd;
		}
		io->node = io->opts.numa_node;
	} else {
		/* Near the disk the experts come from, else near the GPU they go to. */
		io->node = io->fd >= 0 ? moe_topo_path_node(path) : -1;
		if (io->node < 0)
			io->node = moe_topo_gpu_node();
		if (io->node < 0)
			io->node = -1;
	}
	ret = setup_backend(io);
	if (ret < 0)
		goto err_fd;
	describe_locked(io);
	moe_log(MOE_LOG_INFO, "%s: %s", path, io->desc);
	*out = io;
	return 0;

err_fd:
	if (io->fd >= 0)
		close(io->fd);
err_sync:
	pthread_cond_destroy(&io->cond);
	pthread_mutex_destroy(&io->lock);
err_free:
	free(io->batch);
	free(io->path);
	free(io);
	return ret;
}

void moe_io_destroy(struct moe_io *io)
{
	struct moe_io_req *inline_list = NULL, *list;
	int n;

	if (!io)
		return;
	pthread_mutex_lock(&io->lock);
	io->closing = true;
	while (io->pend_head)
		piece_end_locked(io, pop_locked(&io->pend_head, &io->pend_tail), -ECANCELED,
				 &inline_list);
	while (io->lpend_head)
		piece_end_locked(io, pop_locked(&io->lpend_head, &io->lpend_tail), -ECANCELED,
				 &inline_list);
	if (io->inflight && io->ops->cancel)
		io->ops->cancel(io);
	while (io->inflight)
		pthread_cond_wait(&io->cond, &io->lock);
	list = take_done_locked(io, &n);
	pthread_mutex_unlock(&io->lock);
	deliver_list(io, inline_list);
	deliver_list(io, list);

	/* Callbacks running on engine threads must return before their engine goes. */
	pthread_mutex_lock(&io->lock);
	while (io->live)
		pthread_cond_wait(&io->cond, &io->lock);
	pthread_mutex_unlock(&io->lock);

	io->ops->fini(io);
	moe_io_pool_destroy(io);
	if (io->fd >= 0)
		close(io->fd);
	pthread_cond_destroy(&io->cond);
	pthread_mutex_destroy(&io->lock);
	free(io->batch);
	free(io->path);
	free(io);
}
