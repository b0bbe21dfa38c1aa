/* SPDX-License-Identifier: MIT */
/*
 * The I/O engine backend MOE_IO_KMOD: reads of a model registered with
 * moe.ko, through the driver client (kmod.c).
 *
 * Zero-copy: the engine's staging pool is registered with the driver as
 * userptr BOs (BO_USERPTR, uAPI 2.3) when it is created, so a piece whose
 * buffer lies in it is fetched straight into that memory.  A piece whose
 * buffer is elsewhere gets a userptr BO of its own for that one FETCH (the
 * driver keeps the pages pinned until the read ends).  Only where neither
 * works (a driver before 2.3, memory that cannot be pinned) does the piece
 * go through the bounce BO and get copied out; io->stats.bytes_copied
 * counts those bytes.
 */
#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "io/kmod.h"
#include "util/util.h"

const struct moe_kmod_client moe_kmod_client_driver = {
	.open = moe_kmod_open,
	.close = moe_kmod_destroy,
	.next = moe_kmod_next,
	.find = moe_kmod_find_raw,
	.info = moe_kmod_info,
	.bo_create = moe_kmod_bo_create,
	.bo_userptr = moe_kmod_bo_userptr,
	.bo_destroy = moe_kmod_bo_destroy,
	.fetch = moe_kmod_fetch_flags,
	.wait = moe_kmod_wait,
	.cancel = moe_kmod_cancel,
	.uring_fd = moe_kmod_uring_fd,
	.cancel_tag = moe_kmod_cancel_tag,
};

const struct moe_kmod_client *moe_kmod_io_client = &moe_kmod_client_driver;

/* How long a batch may take before its pieces fail (its buffer range stays reserved). */
#define KMOD_WAIT_S		60
/* How often batches whose wait failed are asked about again. */
#define KMOD_REPOLL_NS		20000000

/* A registered part of the staging pool: the userptr BO over it. */
struct kreg {
	uint8_t *base;
	uint64_t len;
	struct moe_kmod_bo bo;
};

/* kbatch.slots[i] of a piece fetched in place: it holds no bounce slot. */
#define NO_SLOT UINT32_MAX

struct kext {
	uint64_t off;
	uint64_t len;
	uint32_t idx;
};

/*
 * One FETCH (ticket != 0), or a group of pieces for pread (ticket 0, err 0),
 * or pieces that end with @err (ticket 0): an engine on "moe:NAME" has no
 * descriptor to pread with.
 */
struct kbatch {
	struct kbatch *next;
	uint64_t ticket;
	int err;
	unsigned n;
	unsigned n_slots;        /* of slots[], those that are bounce slots */
	struct moe_io_piece **pieces;
	unsigned *slots;         /* bounce slot, or NO_SLOT: read in place */
	uint64_t *skip;          /* bytes between the widened start and the piece */
	uint32_t *tmp;           /* a userptr BO made for this FETCH alone, or 0 */
	int64_t *results;
	/* The FETCH itself: the kernel may read it until the batch's CQE (io_uring). */
	struct drm_moe_fetch_req *reqs;
	struct drm_moe_fetch fetch;
	uint32_t flags;
	bool uring;              /* submitted on the ring: its tag is its address */
	/* On kmod_be.low_live from submission to completion (DRM_MOE_FETCH_LOW only). */
	struct kbatch *lnext, *lprev;
	bool listed;
};

/* user_data of the ring's stop request; batches use their address. */
#define TAG_STOP MOE_IO_TAG_STOP
/* results[i] not written by the driver (yet). */
#define RES_UNSET INT64_MIN

struct kmod_be {
	const struct moe_kmod_client *c;
	struct moe_kmod *k;
	uint32_t model_id;
	struct kext *ext;
	uint64_t *ext_maxend;    /* the furthest end of ext[0..i] */
	uint32_t n_ext;
	bool byname;             /* "moe:NAME": no descriptor, the driver reads everything */
	struct moe_kmod_bo bo;
	struct kreg *regs;       /* the staging pool's userptr BOs */
	unsigned n_regs;
	bool tmp_userptr;        /* per-FETCH userptr BOs work here */
	uint64_t slot_bytes;
	unsigned *free_slots, n_free;
	/*
	 * FETCH batches complete as CQEs of this ring (DRM_MOE_URING_CMD_FETCH),
	 * reaped by @reaper; without it (ring_ok false) through WAIT on the
	 * waiter thread, which also runs the pread groups either way.
	 */
	struct io_uring ring;
	bool ring_init;
	bool ring_ok;            /* read and cleared with atomics: the reaper may clear it */
	int ring_fd;
	pthread_t reaper;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	struct kbatch *head, *tail;
	/*
	 * Batches whose wait failed: the driver may still write their slots,
	 * so the slots stay out of the free list until WAIT collects them.
	 */
	struct kbatch *stuck;
	unsigned n_stuck_slots;
	/* Low-priority FETCHes submitted and not yet over: what cancel_low can take back. */
	struct kbatch *low_live;
	bool stop;
	pthread_t thread;
};

static int kext_cmp(const void *a, const void *b)
{
	const struct kext *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

/* The registered extent holding [pos, pos+len), or NULL. */
static const struct kext *kext_find(const struct kmod_be *be, uint64_t pos, uint64_t len)
{
	uint32_t lo = 0, hi = be->n_ext;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (be->ext[mid].off <= pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	/* Widened extents overlap their neighbours: walk back while one could still hold it. */
	for (uint32_t i = lo; i > 0 && be->ext_maxend[i - 1] >= pos + len; i--) {
		const struct kext *e = &be->ext[i - 1];

		if (pos + len <= e->off + e->len)
			return e;
	}
	return NULL;
}

static struct kbatch *kbatch_new(unsigned n)
{
	struct kbatch *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	b->pieces = calloc(n, sizeof(*b->pieces));
	b->slots = calloc(n, sizeof(*b->slots));
	b->skip = calloc(n, sizeof(*b->skip));
	b->tmp = calloc(n, sizeof(*b->tmp));
	b->results = calloc(n, sizeof(*b->results));
	b->reqs = calloc(n, sizeof(*b->reqs));
	if (!b->pieces || !b->slots || !b->skip || !b->tmp || !b->results || !b->reqs) {
		free(b->pieces);
		free(b->slots);
		free(b->skip);
		free(b->tmp);
		free(b->results);
		free(b->reqs);
		free(b);
		return NULL;
	}
	return b;
}

static void kbatch_free(struct kbatch *b)
{
	free(b->pieces);
	free(b->slots);
	free(b->skip);
	free(b->tmp);
	free(b->results);
	free(b->reqs);
	free(b);
}

static void be_push(struct kmod_be *be, struct kbatch *b)
{
	pthread_mutex_lock(&be->mu);
	if (be->tail)
		be->tail->next = b;
	else
		be->head = b;
	be->tail = b;
	pthread_cond_signal(&be->cond);
	pthread_mutex_unlock(&be->mu);
}

static void low_list(struct kmod_be *be, struct kbatch *b)
{
	if (!(b->flags & DRM_MOE_FETCH_LOW))
		return;
	pthread_mutex_lock(&be->mu);
	b->lprev = NULL;
	b->lnext = be->low_live;
	if (be->low_live)
		be->low_live->lprev = b;
	be->low_live = b;
	b->listed = true;
	pthread_mutex_unlock(&be->mu);
}

static void low_unlist(struct kmod_be *be, struct kbatch *b)
{
	pthread_mutex_lock(&be->mu);
	if (b->listed) {
		if (b->lprev)
			b->lprev->lnext = b->lnext;
		else
			be->low_live = b->lnext;
		if (b->lnext)
			b->lnext->lprev = b->lprev;
		b->listed = false;
	}
	pthread_mutex_unlock(&be->mu);
}

static void release_slots(struct kmod_be *be, struct kbatch *b)
{
	pthread_mutex_lock(&be->mu);
	for (unsigned i = 0; i < b->n; i++)
		if (b->slots[i] != NO_SLOT)
			be->free_slots[be->n_free++] = b->slots[i];
	pthread_mutex_unlock(&be->mu);
}

/*
 * Ask the driver again about the batches whose wait failed, without
 * blocking.  Only -ETIME (or an interrupted wait) means "still running":
 * anything else means the driver holds no more I/O for the ticket (0:
 * collected now, -ENOENT: gone), so its slots are free again.
 */
static void repoll_stuck(struct kmod_be *be)
{
	struct kbatch **pp = &be->stuck;

	while (*pp) {
		struct kbatch *b = *pp;
		int ret = be->c->wait(be->k, b->ticket, 0, NULL);

		if (ret == -ETIME || ret == -EINTR) {
			pp = &b->next;
			continue;
		}
		*pp = b->next;
		release_slots(be, b);
		pthread_mutex_lock(&be->mu);
		be->n_stuck_slots -= b->n_slots;
		pthread_mutex_unlock(&be->mu);
		moe_log(MOE_LOG_INFO, "moe.ko: late batch %llu finished: %u buffer slots free again",
			(unsigned long long)b->ticket, b->n_slots);
		kbatch_free(b);
	}
}

static void end_fetch(struct moe_io *io, struct kmod_be *be, struct kbatch *b, int ret);

static void finish_batch(struct moe_io *io, struct kmod_be *be, struct kbatch *b)
{
	int ret = 0;

	if (b->ticket) {
		ret = be->c->wait(be->k, b->ticket, KMOD_WAIT_S, NULL);
		/*
		 * Pieces read in place have their DMA aimed at the caller's own
		 * buffers, which must not be handed back while it may land: they
		 * end when the driver says the batch is done (the block layer
		 * ends every request, after its own timeouts if need be).
		 */
		while (ret == -ETIME && b->n_slots < b->n) {
			moe_log(MOE_LOG_WARN, "moe.ko: batch %llu (%u reads) still not done after "
				"%d s; waiting on, as its reads land in the caller's buffers",
				(unsigned long long)b->ticket, b->n, KMOD_WAIT_S);
			ret = be->c->wait(be->k, b->ticket, KMOD_WAIT_S, NULL);
		}
		if (ret)
			moe_log(MOE_LOG_ERROR, "moe.ko: batch %llu (%u reads) not collected: %s; its "
				"buffer slots stay reserved until the driver finishes it",
				(unsigned long long)b->ticket, b->n, strerror(-ret));
	}
	if (!b->ticket) {
		for (unsigned i = 0; i < b->n; i++) {
			struct moe_io_piece *p = b->pieces[i];
			ssize_t r;

			if (b->err) {
				moe_io_piece_done(io, p, b->err);
				continue;
			}
			do {
				r = pread(io->fd, p->buf, p->len, (off_t)p->pos);
			} while (r < 0 && errno == EINTR);
			moe_io_piece_done(io, p, r < 0 ? -errno : r);
		}
		kbatch_free(b);
		return;
	}
	low_unlist(be, b);
	end_fetch(io, be, b, ret);
}

/*
 * A FETCH batch is over (@ret 0: the driver's results are in b->results)
 * or its wait failed with @ret (the driver may still write its slots: they
 * stay reserved, and the batch joins the stuck list; waiter thread only).
 * Copies what came through the bounce BO and ends the pieces.
 */
static void end_fetch(struct moe_io *io, struct kmod_be *be, struct kbatch *b, int ret)
{
	uint64_t copied = 0;

	for (unsigned i = 0; i < b->n; i++) {
		struct moe_io_piece *p = b->pieces[i];
		int64_t res = ret ? ret : b->results[i];

		if (res >= 0) {
			uint64_t avail = (uint64_t)res > b->skip[i] ? (uint64_t)res - b->skip[i] : 0;

			res = (int64_t)MOE_MIN(avail, p->len);
			if (b->slots[i] != NO_SLOT) {
				memcpy(p->buf, be->bo.map + b->slots[i] * be->slot_bytes +
				       b->skip[i], (size_t)res);
				copied += (uint64_t)res;
			}
		}
		b->results[i] = res;
	}
	if (copied) {
		pthread_mutex_lock(&io->lock);
		io->stats.bytes_copied += copied;
		pthread_mutex_unlock(&io->lock);
	}
	/*
	 * The slots go back before the pieces end: ending one dispatches the
	 * next pieces at once, and they must find their slots free.  After a
	 * failed wait the DMA into them may not have ended: they stay reserved.
	 */
	if (!ret) {
		release_slots(be, b);
	} else {
		pthread_mutex_lock(&be->mu);
		be->n_stuck_slots += b->n_slots;
		pthread_mutex_unlock(&be->mu);
	}
	for (unsigned i = 0; i < b->n; i++)
		moe_io_piece_done(io, b->pieces[i], b->results[i]);
	if (!ret) {
		kbatch_free(b);
		return;
	}
	b->next = be->stuck;
	be->stuck = b;
}

static void *kmod_waiter(void *arg)
{
	struct moe_io *io = arg;
	struct kmod_be *be = io->be;

	for (;;) {
		struct kbatch *b;

		pthread_mutex_lock(&be->mu);
		while (!be->head && !be->stop) {
			struct timespec ts;

			if (!be->stuck) {
				pthread_cond_wait(&be->cond, &be->mu);
				continue;
			}
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += KMOD_REPOLL_NS;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			if (pthread_cond_timedwait(&be->cond, &be->mu, &ts) == ETIMEDOUT)
				break;
		}
		b = be->head;
		if (b) {
			be->head = b->next;
			if (!be->head)
				be->tail = NULL;
		}
		pthread_mutex_unlock(&be->mu);
		if (b)
			finish_batch(io, be, b);
		/* Only this thread touches the stuck list. */
		if (be->stuck)
			repoll_stuck(be);
		if (!b && be->stop)
			return NULL;
	}
}

static void kmod_submit(struct moe_io *io, struct kmod_be *be, struct kbatch *kb,
			struct kbatch *pb);
static void drop_tmp(struct kmod_be *be, struct kbatch *kb);

/*
 * The CQE of batch @b says @res: the bytes of the whole batch, or the first
 * failed request's errno.  The driver wrote the per-request results before
 * posting it, unless the submitting thread had gone (they stay RES_UNSET):
 * then the CQE tells them only when every request read all it asked for
 * or the batch failed whole.
 */
static void uring_done(struct moe_io *io, struct kmod_be *be, struct kbatch *b, int64_t res)
{
	uint64_t want = 0;
	bool unset = true;

	low_unlist(be, b);
	b->uring = false;
	for (unsigned i = 0; i < b->n; i++) {
		unset &= b->results[i] == RES_UNSET;
		want += b->reqs[i].length;
	}
	if (unset && (res == -EOPNOTSUPP || res == -EACCES || res == -EPERM || res == -ENOTTY)) {
		/* The kernel or a security module refuses the command: the ioctl it is. */
		struct kbatch *pb = kbatch_new(b->n);

		__atomic_store_n(&be->ring_ok, false, __ATOMIC_RELEASE);
		moe_log(MOE_LOG_WARN, "%s: moe.ko's io_uring command is refused here (%s): "
			"completing reads through WAIT instead", io->path, strerror((int)-res));
		if (pb) {
			kmod_submit(io, be, b, pb);
			if (pb->n)
				be_push(be, pb);
			else
				kbatch_free(pb);
			return;
		}
	}
	drop_tmp(be, b);
	for (unsigned i = 0; i < b->n; i++) {
		if (b->results[i] != RES_UNSET)
			continue;
		if (res < 0) {
			b->results[i] = res;
		} else if (res >= (int64_t)MOE_MIN(want, (uint64_t)INT32_MAX)) {
			b->results[i] = (int64_t)b->reqs[i].length;
		} else {
			moe_log_once(MOE_LOG_ERROR, "kmod-uring-results",
				     "moe.ko: a batch's per-request results never arrived (its "
				     "submitting thread ended) and it read short: failing it");
			b->results[i] = -EIO;
		}
	}
	end_fetch(io, be, b, 0);
}

/* Owns the ring's CQ: every CQE ends one FETCH batch. */
static void kmod_cqe(struct moe_io *io, uint64_t tag, int64_t res)
{
	uring_done(io, io->be, (struct kbatch *)(uintptr_t)tag, res);
}

static void *reaper_main(void *arg)
{
	struct moe_io *io = arg;

	moe_io_reap(io, &((struct kmod_be *)io->be)->ring, "moe.ko io_uring", kmod_cqe);
	return NULL;
}

/*
 * The ring, unless fault-injected off, the client has no node to submit
 * on, or io_uring is refused: then completions go through WAIT.  Notes the
 * path taken in the engine's description.
 */
static void ring_setup(struct moe_io *io, struct kmod_be *be)
{
	unsigned entries = 1;
	const char *why = NULL;
	int ret = 0;

	if (moe_io_faults & MOE_IO_FAULT_KMOD_NO_URING)
		why = "io_uring off (fault injected)";
	else if (!be->c->uring_fd || (be->ring_fd = be->c->uring_fd(be->k)) < 0)
		why = "the driver takes no io_uring commands";
	if (!why) {
		/* Two batches (demand, low) per issue, each of a piece or more, and the stop. */
		while (entries < 2 * io->opts.queue_depth + 2)
			entries <<= 1;
		ret = io_uring_queue_init(entries, &be->ring, 0);
		if (ret < 0)
			why = strerror(-ret);
	}
	if (!why) {
		be->ring_init = true;
		ret = -pthread_create(&be->reaper, NULL, reaper_main, io);
		if (ret) {
			io_uring_queue_exit(&be->ring);
			be->ring_init = false;
			why = "no completion thread";
		}
	}
	if (why) {
		snprintf(io->backend_note, sizeof(io->backend_note), " (completions by WAIT: %s)",
			 why);
		moe_log(MOE_LOG_INFO, "%s: moe.ko batches complete through WAIT (%s)", io->path, why);
		return;
	}
	__atomic_store_n(&be->ring_ok, true, __ATOMIC_RELEASE);
	snprintf(io->backend_note, sizeof(io->backend_note), " (io_uring completions)");
}

static void ring_stop(struct moe_io *io, struct kmod_be *be)
{
	struct io_uring_sqe *sqe;

	if (!be->ring_init)
		return;
	/* Nothing is in flight any more, so the SQ has room for the stop request. */
	pthread_mutex_lock(&io->lock);
	while (!(sqe = io_uring_get_sqe(&be->ring)))
		io_uring_submit(&be->ring);
	io_uring_prep_nop(sqe);
	io_uring_sqe_set_data64(sqe, TAG_STOP);
	while (io_uring_submit(&be->ring) == -EINTR)
		;
	pthread_mutex_unlock(&io->lock);
	pthread_join(be->reaper, NULL);
	io_uring_queue_exit(&be->ring);
	be->ring_init = false;
}

static void kmod_be_free(struct kmod_be *be)
{
	/*
	 * Batches still running keep their own references to the BO's pages in
	 * the driver, and closing the node collects them: the mapping and the
	 * handle may go first.
	 */
	while (be->stuck) {
		struct kbatch *b = be->stuck;

		be->stuck = b->next;
		kbatch_free(b);
	}
	for (unsigned i = 0; i < be->n_regs; i++)
		be->c->bo_destroy(be->k, &be->regs[i].bo);
	free(be->regs);
	if (be->k)
		be->c->bo_destroy(be->k, &be->bo);
	if (be->k)
		be->c->close(be->k);
	free(be->ext);
	free(be->ext_maxend);
	free(be->free_slots);
	free(be);
}

/* Model @id's extent table, sorted by offset, into be->ext. */
static int load_extents(struct kmod_be *be, uint32_t id, struct drm_moe_model_info *info,
			const char *path)
{
	struct drm_moe_extent *ext;
	uint32_t n = info->n_extents;
	int ret;

	ext = calloc(MOE_MAX(n, 1), sizeof(*ext));
	be->ext = calloc(MOE_MAX(n, 1), sizeof(*be->ext));
	be->ext_maxend = calloc(MOE_MAX(n, 1), sizeof(*be->ext_maxend));
	if (!ext || !be->ext || !be->ext_maxend) {
		free(ext);
		return moe_err(ENOMEM, "no memory for the extent table");
	}
	ret = be->c->info(be->k, id, info, ext, n);
	if (!ret && info->n_extents != n)
		ret = -EAGAIN;    /* re-registered meanwhile */
	if (ret) {
		free(ext);
		return moe_err(-ret, "moe.ko: MODEL_INFO: %s", strerror(-ret));
	}
	for (uint32_t i = 0; i < n; i++)
		be->ext[i] = (struct kext){ ext[i].offset, ext[i].length, i };
	free(ext);
	be->n_ext = n;
	qsort(be->ext, be->n_ext, sizeof(*be->ext), kext_cmp);
	for (uint32_t i = 0; i < n; i++)
		be->ext_maxend[i] = MOE_MAX(i ? be->ext_maxend[i - 1] : 0,
					    be->ext[i].off + be->ext[i].len);
	be->model_id = id;
	moe_log(MOE_LOG_INFO, "%s: moe.ko model '%s' (%u extents)", path, info->name, be->n_ext);
	return 0;
}

/* The registered model whose file is @fd's: same device and inode. */
static int find_model_for(struct kmod_be *be, int fd, const char *path)
{
	struct moe_kmod_model_info pub;
	struct drm_moe_model_info info;
	struct stat st;
	uint32_t id = 0;
	int ret;

	if (fstat(fd, &st))
		return moe_err(errno, "%s: %s", path, strerror(errno));
	for (;;) {
		ret = be->c->next(be->k, id, &pub);
		if (ret == -ENOENT)
			return moe_err(ENOENT, "%s is not registered with moe.ko: run `moectl load "
				       "NAME %s` as root first", path, path);
		if (ret)
			return ret;
		id = pub.id;
		ret = be->c->info(be->k, id, &info, NULL, 0);
		if (ret)
			continue;
		if (info.file_ino == st.st_ino && info.file_dev_major == major(st.st_dev) &&
		    info.file_dev_minor == minor(st.st_dev))
			break;
	}
	return load_extents(be, id, &info, path);
}

/* "moe:NAME": the model registered under NAME, with its metadata extents. */
static int find_model_named(struct moe_io *io, struct kmod_be *be)
{
	const char *name = io->path + strlen(MOE_KMOD_PREFIX);
	struct drm_moe_model_info info;
	int ret = be->c->find(be->k, name, &info);

	if (ret)
		return ret;
	if (!info.n_meta)
		return moe_err(EOPNOTSUPP, "%s: registered without its header and resident "
			       "tensors (by an older moectl or driver): reload it with `moectl "
			       "unload %s; moectl load %s FILE` as root", io->path, name, name);
	io->file_size = info.file_size;
	be->byname = true;
	return load_extents(be, info.model_id, &info, io->path);
}

static int kmod_init(struct moe_io *io)
{
	unsigned qd = io->opts.queue_depth;
	struct kmod_be *be;
	int ret;

	be = calloc(1, sizeof(*be));
	if (!be)
		return moe_err(ENOMEM, "no memory for the moe.ko backend");
	be->c = moe_kmod_io_client;
	ret = be->c->open(&be->k);
	if (ret)
		goto err;
	ret = io->fd < 0 ? find_model_named(io, be) : find_model_for(be, io->fd, io->path);
	if (ret)
		goto err;
	/*
	 * Every piece starts and ends on the driver's alignment, so that it
	 * can be fetched into the caller's buffer as it is, unwidened.
	 */
	if (io->block < be->k->align) {
		io->block = (uint32_t)be->k->align;
		io->opts.max_request = MOE_MAX(io->opts.max_request / io->block * io->block,
					       io->block);
	}
	be->tmp_userptr = be->c->bo_userptr != NULL;
	/* A piece widened to the driver's alignment on both sides. */
	be->slot_bytes = MOE_ALIGN_UP(io->opts.max_request, be->k->align) + 2 * be->k->align;
	ret = be->c->bo_create(be->k, be->slot_bytes * qd, &be->bo);
	if (ret)
		goto err;
	be->free_slots = calloc(qd, sizeof(*be->free_slots));
	if (!be->free_slots) {
		ret = moe_err(ENOMEM, "no memory for the moe.ko backend");
		goto err;
	}
	for (unsigned i = 0; i < qd; i++)
		be->free_slots[be->n_free++] = qd - 1 - i;
	pthread_mutex_init(&be->mu, NULL);
	pthread_cond_init(&be->cond, NULL);
	io->be = be;
	ret = -pthread_create(&be->thread, NULL, kmod_waiter, io);
	if (ret) {
		io->be = NULL;
		ret = moe_err(-ret, "cannot start the moe.ko completion thread");
		goto err;
	}
	ring_setup(io, be);
	return 0;
err:
	kmod_be_free(be);
	return ret;
}

static void kmod_fini(struct moe_io *io)
{
	struct kmod_be *be = io->be;

	pthread_mutex_lock(&be->mu);
	be->stop = true;
	pthread_cond_signal(&be->cond);
	pthread_mutex_unlock(&be->mu);
	pthread_join(be->thread, NULL);
	ring_stop(io, be);
	pthread_mutex_destroy(&be->mu);
	pthread_cond_destroy(&be->cond);
	kmod_be_free(be);
	io->be = NULL;
}

/* The registered part of the staging pool holding [p, p+len), or NULL. */
static const struct kreg *kreg_find(const struct kmod_be *be, const uint8_t *p, uint64_t len)
{
	for (unsigned i = 0; i < be->n_regs; i++) {
		const struct kreg *r = &be->regs[i];

		if (p >= r->base && p < r->base + r->len && len <= (uint64_t)(r->base + r->len - p))
			return r;
	}
	return NULL;
}

/*
 * Where piece @p can be fetched in place: the pool's BO over its buffer, or
 * a userptr BO made for it alone (*tmp: its handle, to close once FETCH has
 * it).  false: it goes through the bounce BO.  be->mu held.
 */
static bool place_direct(struct kmod_be *be, const struct moe_io_piece *p, uint32_t *handle,
			 uint64_t *bo_off, uint32_t *tmp)
{
	const struct kreg *r;
	struct moe_kmod_bo t;
	int ret;

	*tmp = 0;
	if ((uintptr_t)p->buf % be->k->align)
		return false;
	r = kreg_find(be, p->buf, p->len);
	if (r) {
		*handle = r->bo.handle;
		*bo_off = (uint64_t)(p->buf - r->base);
		return true;
	}
	if (!be->tmp_userptr)
		return false;
	ret = be->c->bo_userptr(be->k, p->buf, p->len, &t);
	if (ret == -EOPNOTSUPP || ret == -ENOTTY || ret == -EINVAL) {
		/* This driver has none: do not ask again. */
		be->tmp_userptr = false;
		return false;
	}
	if (ret) {
		moe_log_once(MOE_LOG_INFO, "kmod-userptr-piece",
			     "moe.ko cannot pin a read's destination buffer (%s): such reads are "
			     "copied from a bounce buffer", strerror(-ret));
		return false;
	}
	*handle = *tmp = t.handle;
	*bo_off = 0;
	return true;
}

/*
 * The staging pool's regions become userptr BOs (each at most the driver's
 * largest BO), so pieces read into the pool land there with no copy.
 * io->lock held.
 */
static int kmod_register_buffers(struct moe_io *io, void *const *bases, const uint64_t *lens,
				 unsigned n)
{
	struct kmod_be *be = io->be;
	uint64_t total = 0, most = be->k->max_bo / be->k->align * be->k->align;
	unsigned cap = 0;
	int ret = 0;

	if (!be->c->bo_userptr || !most)
		return moe_err(EOPNOTSUPP, "moe.ko has no BO_USERPTR (uAPI 2.3): reads are copied "
			       "from a bounce buffer; update the driver");
	for (unsigned i = 0; i < n; i++)
		cap += (unsigned)((lens[i] + most - 1) / most);
	be->regs = calloc(MOE_MAX(cap, 1u), sizeof(*be->regs));
	if (!be->regs)
		return moe_err(ENOMEM, "no memory for the staging registration");
	pthread_mutex_lock(&be->mu);
	for (unsigned i = 0; i < n && !ret; i++)
		for (uint64_t off = 0; off < lens[i] && !ret; off += most) {
			struct kreg *r = &be->regs[be->n_regs];

			r->base = (uint8_t *)bases[i] + off;
			r->len = MOE_MIN(most, lens[i] - off);
			ret = be->c->bo_userptr(be->k, r->base, r->len, &r->bo);
			if (!ret) {
				be->n_regs++;
				total += r->len;
			}
		}
	if (ret) {
		while (be->n_regs)
			be->c->bo_destroy(be->k, &be->regs[--be->n_regs].bo);
	}
	pthread_mutex_unlock(&be->mu);
	if (ret == -EOPNOTSUPP)
		return moe_err(EOPNOTSUPP, "moe.ko speaks uAPI 2.%u, before BO_USERPTR: reads are "
			       "copied from a bounce buffer; update the driver", be->k->minor);
	if (ret)
		return moe_err(-ret, "moe.ko: BO_USERPTR over the staging pool: %s; reads are "
			       "copied from a bounce buffer", strerror(-ret));
	moe_log(MOE_LOG_DEBUG, "%s: %llu MiB of staging registered with moe.ko as %u BOs",
		io->path, (unsigned long long)(total >> 20), be->n_regs);
	return 0;
}

/* Close the userptr BOs made for @kb's FETCH alone: the driver holds its own references. */
static void drop_tmp(struct kmod_be *be, struct kbatch *kb)
{
	for (unsigned i = 0; i < kb->n; i++)
		if (kb->tmp[i]) {
			struct moe_kmod_bo t = { .handle = kb->tmp[i], .user = true };

			be->c->bo_destroy(be->k, &t);
			kb->tmp[i] = 0;
		}
}

/*
 * @kb as one DRM_MOE_URING_CMD_FETCH on the backend's ring; its CQE ends it
 * (reaper_main).  false: no room in the ring, nothing submitted.  The
 * issuing thread runs the command's completion (the driver writes the
 * per-request results from it), so any thread of the process may submit.
 */
static bool uring_submit(struct kmod_be *be, struct kbatch *kb)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&be->ring);
	struct drm_moe_uring_cmd cmd = { .fetch_ptr = (uintptr_t)&kb->fetch };
	int ret;

	if (!sqe)
		return false;
	for (unsigned i = 0; i < kb->n; i++)
		kb->results[i] = RES_UNSET;
	kb->fetch = (struct drm_moe_fetch){
		.reqs_ptr = (uintptr_t)kb->reqs, .results_ptr = (uintptr_t)kb->results,
		.count = kb->n, .flags = be->k->minor >= 2 ? kb->flags : 0,
		/* the tag CANCEL names it by (uAPI 2.3) */
		.ticket = (uintptr_t)kb,
	};
	kb->uring = true;
	low_list(be, kb);
	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = be->ring_fd;
	sqe->cmd_op = DRM_MOE_URING_CMD_FETCH;
	memcpy(sqe->cmd, &cmd, sizeof(cmd));
	io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)kb);
	/* A prepared SQE belongs to the ring now: keep submitting until the kernel has it. */
	do {
		ret = io_uring_submit(&be->ring);
	} while (ret == -EINTR || ret == -EAGAIN);
	if (ret < 0)
		moe_log(MOE_LOG_ERROR, "moe.ko: io_uring_submit: %s", strerror(-ret));
	return true;
}

/*
 * FETCH @kb's requests with its flags, on the ring or through the ioctl,
 * or, when the driver refuses, hand its pieces to @pb: pread on a path,
 * their end with the errno on "moe:NAME".  Either io->lock is held (issue)
 * or the thread is the reaper (a batch the ring refused); be->mu not.
 */
static void kmod_submit(struct moe_io *io, struct kmod_be *be, struct kbatch *kb,
			struct kbatch *pb)
{
	int ret;

	if (!kb->n) {
		kbatch_free(kb);
		return;
	}
	if (__atomic_load_n(&be->ring_ok, __ATOMIC_ACQUIRE) && uring_submit(be, kb))
		return;
	ret = be->c->fetch(be->k, kb->reqs, kb->n, kb->flags, kb->results, &kb->ticket);
	drop_tmp(be, kb);
	if (!ret) {
		low_list(be, kb);
		be_push(be, kb);
		return;
	}
	if (be->byname)
		moe_err(-ret, "%s: moe.ko refused a FETCH: %s", io->path, strerror(-ret));
	else
		moe_log_once(MOE_LOG_WARN, "kmod-fetch-refused",
			     "moe.ko refused a FETCH (%s): reading with pread instead",
			     strerror(-ret));
	release_slots(be, kb);
	if (be->byname) {
		/* No pread to fall back on: the pieces end with the driver's errno. */
		kb->ticket = 0;
		kb->err = ret;
		be_push(be, kb);
		return;
	}
	for (unsigned i = 0; i < kb->n; i++)
		pb->pieces[pb->n++] = kb->pieces[i];
	kbatch_free(kb);
}

/*
 * io->lock held: must not end pieces here.  Demand pieces and prefetches
 * (p->low) go in separate FETCHes, the latter with DRM_MOE_FETCH_LOW, so
 * the driver reads them only when no demand batch is reading; the
 * prefetches in one FETCH per request (run of pieces of one read), so that
 * moe_io_cancel_low() can take a read back from the driver's queue whole.
 */
static int kmod_issue(struct moe_io *io, struct moe_io_piece **pieces, unsigned n)
{
	struct kmod_be *be = io->be;
	struct kbatch *kb = kbatch_new(n), *pb = kbatch_new(n);
	struct kbatch **lows = calloc(n, sizeof(*lows));
	unsigned *grp = calloc(n, sizeof(*grp));
	uint64_t align = be->k->align;
	unsigned accepted = n, n_lows = 0;
	bool oom = !kb || !pb || !lows || !grp;

	/* The runs of prefetch pieces of one request, each its own batch. */
	for (unsigned i = 0, j; i < n && !oom; i = j) {
		j = i + 1;
		if (!pieces[i]->low)
			continue;
		while (j < n && pieces[j]->low && pieces[j]->req == pieces[i]->req)
			j++;
		lows[n_lows] = kbatch_new(j - i);
		oom = !lows[n_lows];
		if (oom)
			break;
		lows[n_lows]->flags = DRM_MOE_FETCH_LOW;
		for (unsigned q = i; q < j; q++)
			grp[q] = n_lows;
		n_lows++;
	}
	if (oom) {
		for (unsigned j = 0; lows && j < n_lows; j++)
			kbatch_free(lows[j]);
		if (kb)
			kbatch_free(kb);
		if (pb)
			kbatch_free(pb);
		free(lows);
		free(grp);
		return moe_err(ENOMEM, "no memory for a moe.ko batch");
	}
	pthread_mutex_lock(&be->mu);
	for (unsigned i = 0; i < n; i++) {
		struct moe_io_piece *p = pieces[i];
		const struct kext *e = kext_find(be, p->pos, p->len);
		uint64_t start = p->pos / align * align;
		uint64_t end = MOE_ALIGN_UP(p->pos + p->len, align);
		struct kbatch *b = p->low ? lows[grp[i]] : kb;
		struct drm_moe_fetch_req *rq = &b->reqs[b->n];
		uint64_t bo_off;
		uint32_t handle;

		if (!e && be->byname) {
			/* Nothing else of the file is readable: the piece fails (finish_batch). */
			moe_err(EACCES, "%s: [0x%llx, +0x%llx) is not in a registered extent",
				io->path, (unsigned long long)p->pos, (unsigned long long)p->len);
			pb->pieces[pb->n++] = p;
			pb->err = -EACCES;
			continue;
		}
		/* Reads outside the registered extents: this process reads them itself. */
		if (!e) {
			pb->pieces[pb->n++] = p;
			continue;
		}
		if (b->n >= be->k->max_batch) {
			if (be->byname) {
				/* The rest waits in the engine: pread is no way out. */
				accepted = i;
				break;
			}
			pb->pieces[pb->n++] = p;
			continue;
		}
		*rq = (struct drm_moe_fetch_req){ .model_id = be->model_id, .extent = e->idx };
		if (start == p->pos && end == p->pos + p->len &&
		    place_direct(be, p, &handle, &bo_off, &b->tmp[b->n])) {
			b->slots[b->n] = NO_SLOT;
			b->skip[b->n] = 0;
			rq->handle = handle;
			rq->bo_offset = bo_off;
			rq->offset = p->pos - e->off;
			rq->length = p->len;
		} else if (be->n_free && end - start <= be->slot_bytes) {
			end = MOE_MIN(end, e->off + e->len);
			b->slots[b->n] = be->free_slots[--be->n_free];
			b->n_slots++;
			b->skip[b->n] = p->pos - start;
			rq->handle = be->bo.handle;
			rq->bo_offset = b->slots[b->n] * be->slot_bytes;
			rq->offset = start - e->off;
			rq->length = end - start;
		} else if (be->byname) {
			accepted = i;
			break;
		} else {
			pb->pieces[pb->n++] = p;
			continue;
		}
		b->pieces[b->n] = p;
		b->n++;
	}
	pthread_mutex_unlock(&be->mu);

	kmod_submit(io, be, kb, pb);
	for (unsigned j = 0; j < n_lows; j++)
		kmod_submit(io, be, lows[j], pb);
	free(lows);
	free(grp);
	if (pb->n)
		be_push(be, pb);
	else
		kbatch_free(pb);
	if (!accepted)
		return moe_err(EBUSY, "%s: every moe.ko buffer slot is held by reads the driver "
			       "has not finished", io->path);
	return (int)accepted;
}

/*
 * moe_io_cancel_low() reaching the driver: the low-priority FETCHes every
 * piece of which @want asks for go back through CANCEL (by ticket, or by
 * tag for those on the ring, uAPI 2.3) unless the driver has started them;
 * their pieces then end with -ECANCELED through the usual completion.
 * io->lock held.
 */
static void kmod_cancel_low(struct moe_io *io, bool take,
			    bool (*want)(const struct moe_io_piece *p, void *arg),
			    void (*found)(struct moe_io_piece *p, void *arg), void *arg)
{
	struct kmod_be *be = io->be;

	pthread_mutex_lock(&be->mu);
	for (struct kbatch *b = be->low_live; b; b = b->lnext) {
		uint32_t n = 0;
		bool all = true;
		int ret;

		if (b->uring ? !be->c->cancel_tag || be->k->minor < 3 : !b->ticket || !be->c->cancel)
			continue;
		for (unsigned i = 0; i < b->n && all; i++)
			all = want(b->pieces[i], arg);
		if (!all)
			continue;
		if (take) {
			ret = b->uring ? be->c->cancel_tag(be->k, (uintptr_t)b, &n) :
			      be->c->cancel(be->k, b->ticket, &n);
			/* -ENOENT: collected meanwhile; anything else: it reads */
			if (ret || !n)
				continue;
		}
		for (unsigned i = 0; i < b->n; i++)
			found(b->pieces[i], arg);
	}
	pthread_mutex_unlock(&be->mu);
}

/*
 * io->lock held (the engine is closing with pieces in flight): prefetches
 * the driver has not started yet end now with -ECANCELED instead of being
 * read for no one.
 */
static void kmod_cancel(struct moe_io *io)
{
	struct kmod_be *be = io->be;
	uint32_t n = 0;

	if (be->c->cancel && !be->c->cancel(be->k, 0, &n) && n)
		moe_log(MOE_LOG_DEBUG, "%s: %u queued moe.ko prefetch batches cancelled", io->path,
			n);
}

const struct moe_io_ops moe_io_kmod_ops = {
	.name = "moe.ko",
	.init = kmod_init,
	.fini = kmod_fini,
	.issue = kmod_issue,
	.cancel = kmod_cancel,
	.register_buffers = kmod_register_buffers,
	.cancel_low = kmod_cancel_low,
};

int moe_kmod_read_header(const char *name, void **data, uint64_t *len, uint64_t *file_size)
{
	const struct moe_kmod_client *c = moe_kmod_io_client;
	struct drm_moe_model_info info;
	struct drm_moe_extent ext;
	struct drm_moe_fetch_req req;
	struct moe_kmod_bo bo = { 0 };
	struct moe_kmod *k = NULL;
	uint64_t ticket;
	int64_t res = 0;
	uint32_t failed = 0;
	int ret;

	*data = NULL;
	ret = c->open(&k);
	if (ret)
		return ret;
	ret = c->find(k, name, &info);
	if (ret)
		goto out;
	if (!info.n_meta) {
		ret = moe_err(EOPNOTSUPP, "moe:%s was registered without its header and resident "
			      "tensors (by an older moectl or driver): reload it with `moectl unload "
			      "%s; moectl load %s FILE` as root", name, name, name);
		goto out;
	}
	ret = c->info(k, info.model_id, &info, &ext, 1);
	if (ret) {
		ret = moe_err(-ret, "moe.ko: MODEL_INFO of '%s': %s", name, strerror(-ret));
		goto out;
	}
	if (ext.offset || !ext.length || ext.length > k->max_bo) {
		ret = moe_err(EPROTO, "moe.ko: the header extent of '%s' is [0x%llx, +0x%llx)", name,
			      (unsigned long long)ext.offset, (unsigned long long)ext.length);
		goto out;
	}
	ret = c->bo_create(k, ext.length, &bo);
	if (ret)
		goto out;
	req = (struct drm_moe_fetch_req){ .model_id = info.model_id, .extent = 0,
					  .handle = bo.handle, .length = ext.length };
	ret = c->fetch(k, &req, 1, 0, &res, &ticket);
	if (!ret)
		ret = c->wait(k, ticket, KMOD_WAIT_S, &failed);
	if (!ret && res < 0)
		ret = (int)res;
	if (ret) {
		/* a read that did not finish keeps the BO's pages in the driver: safe to let go */
		ret = moe_err(-ret, "moe.ko: reading the header of '%s': %s", name, strerror(-ret));
		goto out;
	}
	*len = MOE_MIN((uint64_t)res, info.file_size);
	*file_size = info.file_size;
	*data = malloc(MOE_MAX(*len, 1));
	if (!*data) {
		ret = moe_err(ENOMEM, "no memory for the header of '%s'", name);
		goto out;
	}
	memcpy(*data, bo.map, (size_t)*len);
out:
	if (k) {
		c->bo_destroy(k, &bo);
		c->close(k);
	}
	return ret;
}
