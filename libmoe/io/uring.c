/* SPDX-License-Identifier: MIT */
/*
 * The io_uring backend: the file registered as fixed file 0, the staging
 * pool registered as fixed buffers, submission under the engine lock (the
 * only producer of the SQ), and one reaper thread that owns the CQ and ends
 * pieces as their completions arrive.
 */
#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "io/io.h"
#include "util/util.h"

/* user_data of the ring's own requests; pieces use their address. */
#define TAG_STOP MOE_IO_TAG_STOP
#define TAG_CANCEL 2ull

struct uring_be {
	struct io_uring ring;
	pthread_t reaper;
	bool fixed_file;
};

void moe_io_reap(struct moe_io *io, struct io_uring *ring, const char *what,
		 void (*done)(struct moe_io *io, uint64_t tag, int64_t res))
{
	bool stop = false;

	moe_topo_bind_thread(io->node);
	while (!stop) {
		struct io_uring_cqe *cqe;
		int ret = io_uring_wait_cqe(ring, &cqe);

		if (ret == -EINTR || ret == -EAGAIN)
			continue;
		if (ret < 0) {
			moe_log(MOE_LOG_ERROR, "%s: %s wait: %s", io->path, what, strerror(-ret));
			continue;
		}
		do {
			uint64_t tag = cqe->user_data;
			int64_t res = cqe->res;

			io_uring_cqe_seen(ring, cqe);
			if (tag == MOE_IO_TAG_STOP)
				stop = true;
			else if (tag)
				done(io, tag, res);
		} while (io_uring_peek_cqe(ring, &cqe) == 0);
	}
}

static void uring_cqe(struct moe_io *io, uint64_t tag, int64_t res)
{
	if (tag != TAG_CANCEL)
		moe_io_piece_done(io, (struct moe_io_piece *)(uintptr_t)tag, res);
}

static void *reaper_main(void *arg)
{
	struct moe_io *io = arg;

	moe_io_reap(io, &((struct uring_be *)io->be)->ring, "io_uring", uring_cqe);
	return NULL;
}

static int uring_init(struct moe_io *io)
{
	struct uring_be *be;
	unsigned entries = 1;
	int ret;

	if (moe_io_faults & MOE_IO_FAULT_URING_EPERM)
		return moe_err(EPERM, "io_uring_setup refused (fault injected)");
	be = calloc(1, sizeof(*be));
	if (!be)
		return moe_err(ENOMEM, "no memory for the ring");
	/* Room for a full queue plus the cancel and stop requests. */
	while (entries < io->opts.queue_depth + 2)
		entries <<= 1;
	ret = io_uring_queue_init(entries, &be->ring, 0);
	if (ret < 0) {
		free(be);
		return moe_err(-ret, "io_uring_setup: %s", strerror(-ret));
	}
	ret = io_uring_register_files(&be->ring, &io->fd, 1);
	if (ret == 0)
		be->fixed_file = true;
	else
		moe_log_once(MOE_LOG_INFO, "io-uring-files",
			     "io_uring: registering the file failed (%s): plain descriptor",
			     strerror(-ret));
	io->be = be;
	ret = pthread_create(&be->reaper, NULL, reaper_main, io);
	if (ret) {
		io_uring_queue_exit(&be->ring);
		free(be);
		io->be = NULL;
		return moe_err(ret, "io_uring: cannot start the completion thread: %s",
			       strerror(ret));
	}
	return 0;
}

static int uring_issue(struct moe_io *io, struct moe_io_piece **pieces, unsigned n)
{
	struct uring_be *be = io->be;
	int fd = be->fixed_file ? 0 : io->fd;
	unsigned i;
	int ret;

	for (i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&be->ring);
		struct moe_io_piece *p = pieces[i];

		if (!sqe)
			break;
		if (p->buf_index >= 0)
			io_uring_prep_read_fixed(sqe, fd, p->buf, (unsigned)p->len, p->pos,
						 p->buf_index);
		else
			io_uring_prep_read(sqe, fd, p->buf, (unsigned)p->len, p->pos);
		if (be->fixed_file)
			sqe->flags |= IOSQE_FIXED_FILE;
		io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)p);
	}
	if (!i)
		return -EBUSY;
	/* Prepared SQEs belong to the ring now: keep submitting until the kernel has them. */
	do {
		ret = io_uring_submit(&be->ring);
	} while (ret == -EINTR || ret == -EAGAIN);
	if (ret < 0)
		moe_log(MOE_LOG_ERROR, "%s: io_uring_submit: %s", io->path, strerror(-ret));
	return (int)i;
}

static void uring_cancel(struct moe_io *io)
{
	struct uring_be *be = io->be;
	struct io_uring_sqe *sqe = io_uring_get_sqe(&be->ring);

	if (!sqe)
		return;
	io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
	io_uring_sqe_set_data64(sqe, TAG_CANCEL);
	io_uring_submit(&be->ring);
}

static void uring_fini(struct moe_io *io)
{
	struct uring_be *be = io->be;
	struct io_uring_sqe *sqe;

	if (!be)
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
	free(be);
	io->be = NULL;
}

static int uring_register_buffers(struct moe_io *io, void *const *bases, const uint64_t *lens,
				  unsigned n)
{
	struct uring_be *be = io->be;
	struct iovec iov[64];
	int ret;

	if (n > MOE_ARRAY_SIZE(iov))
		return -E2BIG;
	for (unsigned i = 0; i < n; i++)
		iov[i] = (struct iovec){ .iov_base = bases[i], .iov_len = lens[i] };
	ret = io_uring_register_buffers(&be->ring, iov, n);
	return ret < 0 ? moe_err(-ret, "io_uring_register_buffers: %s", strerror(-ret)) : 0;
}

const struct moe_io_ops moe_io_uring_ops = {
	.name = "io_uring",
	.init = uring_init,
	.fini = uring_fini,
	.issue = uring_issue,
	.cancel = uring_cancel,
	.register_buffers = uring_register_buffers,
};
