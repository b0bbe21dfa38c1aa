/* SPDX-License-Identifier: MIT */
/*
 * The I/O engine backend MOE_IO_KMOD: reads of a model registered with
 * moe.ko, through the driver client (kmod.c).
 *
 * The engine hands out destination buffers from its own staging pool, which
 * the driver cannot write (it reads into its buffer objects only, and an
 * O_DIRECT read cannot target a BO mapping either: it is VM_PFNMAP).  So the
 * backend reads into a bounce BO and copies; a staging pool carved from BOs
 * would remove the copy.
 */
#include <errno.h>
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
	.info = moe_kmod_info,
	.bo_create = moe_kmod_bo_create,
	.bo_destroy = moe_kmod_bo_destroy,
	.fetch = moe_kmod_fetch,
	.wait = moe_kmod_wait,
};

const struct moe_kmod_client *moe_kmod_io_client = &moe_kmod_client_driver;

/* How long a batch may take before its pieces fail (its buffer range stays reserved). */
#define KMOD_WAIT_S		60
/* How often batches whose wait failed are asked about again. */
#define KMOD_REPOLL_NS		20000000

struct kext {
	uint64_t off;
	uint64_t len;
	uint32_t idx;
};

/* One FETCH (ticket != 0) or a group of pieces for pread (ticket 0). */
struct kbatch {
	struct kbatch *next;
	uint64_t ticket;
	unsigned n;
	struct moe_io_piece **pieces;
	unsigned *slots;
	uint64_t *skip;          /* bytes between the widened start and the piece */
	int64_t *results;
};

struct kmod_be {
	const struct moe_kmod_client *c;
	struct moe_kmod *k;
	uint32_t model_id;
	struct kext *ext;
	uint32_t n_ext;
	struct moe_kmod_bo bo;
	uint64_t slot_bytes;
	unsigned *free_slots, n_free;
	struct drm_moe_fetch_req *reqs;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	struct kbatch *head, *tail;
	/*
	 * Batches whose wait failed: the driver may still write their slots,
	 * so the slots stay out of the free list until WAIT collects them.
	 */
	struct kbatch *stuck;
	unsigned n_stuck_slots;
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
	/* Widened neighbours overlap by a block: look at two candidates. */
	for (uint32_t i = lo; i > 0 && i + 2 > lo; i--) {
		const struct kext *e = &be->ext[i - 1];

		if (pos >= e->off && pos + len <= e->off + e->len)
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
	b->results = calloc(n, sizeof(*b->results));
	if (!b->pieces || !b->slots || !b->skip || !b->results) {
		free(b->pieces);
		free(b->slots);
		free(b->skip);
		free(b->results);
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
	free(b->results);
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

static void release_slots(struct kmod_be *be, struct kbatch *b)
{
	pthread_mutex_lock(&be->mu);
	for (unsigned i = 0; i < b->n; i++)
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
		be->n_stuck_slots -= b->n;
		pthread_mutex_unlock(&be->mu);
		moe_log(MOE_LOG_INFO, "moe.ko: late batch %llu finished: %u buffer slots free again",
			(unsigned long long)b->ticket, b->n);
		kbatch_free(b);
	}
}

static void finish_batch(struct moe_io *io, struct kmod_be *be, struct kbatch *b)
{
	int ret = 0;

	if (b->ticket) {
		ret = be->c->wait(be->k, b->ticket, KMOD_WAIT_S, NULL);
		if (ret)
			moe_log(MOE_LOG_ERROR, "moe.ko: batch %llu (%u reads) not collected: %s; its "
				"buffer slots stay reserved until the driver finishes it",
				(unsigned long long)b->ticket, b->n, strerror(-ret));
	}
	for (unsigned i = 0; i < b->n; i++) {
		struct moe_io_piece *p = b->pieces[i];
		int64_t res;

		if (!b->ticket) {
			ssize_t r;

			do {
				r = pread(io->fd, p->buf, p->len, (off_t)p->pos);
			} while (r < 0 && errno == EINTR);
			moe_io_piece_done(io, p, r < 0 ? -errno : r);
			continue;
		}
		res = ret ? ret : b->results[i];
		if (res >= 0) {
			uint64_t avail = (uint64_t)res > b->skip[i] ? (uint64_t)res - b->skip[i] : 0;

			res = (int64_t)MOE_MIN(avail, p->len);
			memcpy(p->buf, be->bo.map + b->slots[i] * be->slot_bytes + b->skip[i],
			       (size_t)res);
		}
		moe_io_piece_done(io, p, res);
	}
	if (!b->ticket) {
		kbatch_free(b);
		return;
	}
	if (!ret) {
		release_slots(be, b);
		kbatch_free(b);
		return;
	}
	/* The pieces have ended (with the error); the DMA into the slots may not have. */
	pthread_mutex_lock(&be->mu);
	be->n_stuck_slots += b->n;
	pthread_mutex_unlock(&be->mu);
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
	if (be->k)
		be->c->bo_destroy(be->k, &be->bo);
	if (be->k)
		be->c->close(be->k);
	free(be->ext);
	free(be->free_slots);
	free(be->reqs);
	free(be);
}

/* The registered model whose file is @fd's: same device and inode. */
static int find_model_for(struct kmod_be *be, int fd, const char *path)
{
	struct moe_kmod_model_info pub;
	struct drm_moe_model_info info;
	struct drm_moe_extent *ext;
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
	ext = calloc(info.n_extents, sizeof(*ext));
	be->ext = calloc(info.n_extents, sizeof(*be->ext));
	if (!ext || !be->ext) {
		free(ext);
		return moe_err(ENOMEM, "no memory for the extent table");
	}
	ret = be->c->info(be->k, id, &info, ext, info.n_extents);
	if (ret) {
		free(ext);
		return moe_err(-ret, "moe.ko: MODEL_INFO: %s", strerror(-ret));
	}
	for (uint32_t i = 0; i < info.n_extents; i++)
		be->ext[i] = (struct kext){ ext[i].offset, ext[i].length, i };
	free(ext);
	be->n_ext = info.n_extents;
	qsort(be->ext, be->n_ext, sizeof(*be->ext), kext_cmp);
	be->model_id = id;
	moe_log(MOE_LOG_INFO, "%s: moe.ko model '%s' (%u extents)", path, info.name, be->n_ext);
	return 0;
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
	ret = find_model_for(be, io->fd, io->path);
	if (ret)
		goto err;
	/* A piece widened to the driver's alignment on both sides. */
	be->slot_bytes = MOE_ALIGN_UP(io->opts.max_request, be->k->align) + 2 * be->k->align;
	ret = be->c->bo_create(be->k, be->slot_bytes * qd, &be->bo);
	if (ret)
		goto err;
	be->free_slots = calloc(qd, sizeof(*be->free_slots));
	be->reqs = calloc(qd, sizeof(*be->reqs));
	if (!be->free_slots || !be->reqs) {
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
	pthread_mutex_destroy(&be->mu);
	pthread_cond_destroy(&be->cond);
	kmod_be_free(be);
	io->be = NULL;
}

/* io->lock held: must not end pieces here. */
static int kmod_issue(struct moe_io *io, struct moe_io_piece **pieces, unsigned n)
{
	struct kmod_be *be = io->be;
	struct kbatch *kb = kbatch_new(n), *pb = kbatch_new(n);
	uint64_t align = be->k->align;
	int ret;

	if (!kb || !pb) {
		if (kb)
			kbatch_free(kb);
		if (pb)
			kbatch_free(pb);
		return moe_err(ENOMEM, "no memory for a moe.ko batch");
	}
	pthread_mutex_lock(&be->mu);
	for (unsigned i = 0; i < n; i++) {
		struct moe_io_piece *p = pieces[i];
		const struct kext *e = kext_find(be, p->pos, p->len);
		uint64_t start = p->pos / align * align;
		uint64_t end = MOE_ALIGN_UP(p->pos + p->len, align);

		/* Resident tensors are not registered: this process reads them itself. */
		if (!e || !be->n_free || kb->n >= be->k->max_batch ||
		    end - start > be->slot_bytes) {
			pb->pieces[pb->n++] = p;
			continue;
		}
		end = MOE_MIN(end, e->off + e->len);
		kb->pieces[kb->n] = p;
		kb->slots[kb->n] = be->free_slots[--be->n_free];
		kb->skip[kb->n] = p->pos - start;
		be->reqs[kb->n] = (struct drm_moe_fetch_req){
			.model_id = be->model_id, .extent = e->idx, .handle = be->bo.handle,
			.bo_offset = kb->slots[kb->n] * be->slot_bytes,
			.offset = start - e->off, .length = end - start,
		};
		kb->n++;
	}
	pthread_mutex_unlock(&be->mu);

	if (kb->n) {
		ret = be->c->fetch(be->k, be->reqs, kb->n, kb->results, &kb->ticket);
		if (ret) {
			moe_log_once(MOE_LOG_WARN, "kmod-fetch-refused",
				     "moe.ko refused a FETCH (%s): reading with pread instead",
				     strerror(-ret));
			pthread_mutex_lock(&be->mu);
			for (unsigned i = 0; i < kb->n; i++) {
				be->free_slots[be->n_free++] = kb->slots[i];
				pb->pieces[pb->n++] = kb->pieces[i];
			}
			pthread_mutex_unlock(&be->mu);
			kb->n = 0;
		}
	}
	if (kb->n)
		be_push(be, kb);
	else
		kbatch_free(kb);
	if (pb->n)
		be_push(be, pb);
	else
		kbatch_free(pb);
	return (int)n;
}

const struct moe_io_ops moe_io_kmod_ops = {
	.name = "moe.ko",
	.init = kmod_init,
	.fini = kmod_fini,
	.issue = kmod_issue,
};
