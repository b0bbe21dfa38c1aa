/* SPDX-License-Identifier: MIT */
/*
 * The pread backend, for where io_uring is refused (seccomp in containers,
 * kernel.io_uring_disabled): worker threads each doing one blocking pread
 * at a time, so the number of workers is the real queue depth.  Pieces the
 * engine handed over wait in one queue, demand pieces ahead of low-priority
 * ones.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/io.h"
#include "util/util.h"

struct pread_be {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	struct moe_io_piece *head, *tail;
	struct moe_io_piece *dtail;  /* the last demand piece in the queue, or NULL */
	bool stop;
	bool cancel;             /* close: end queued pieces without reading */
	unsigned n_threads;
	pthread_t threads[];
};

static void *worker_main(void *arg)
{
	struct moe_io *io = arg;
	struct pread_be *be = io->be;

	moe_topo_bind_thread(io->node);
	for (;;) {
		struct moe_io_piece *p;
		bool cancel;
		ssize_t r;

		pthread_mutex_lock(&be->mu);
		while (!be->head && !be->stop)
			pthread_cond_wait(&be->cond, &be->mu);
		if (!be->head) {
			pthread_mutex_unlock(&be->mu);
			return NULL;
		}
		p = be->head;
		be->head = p->next;
		if (!be->head)
			be->tail = NULL;
		if (be->dtail == p)
			be->dtail = NULL;
		cancel = be->cancel;
		pthread_mutex_unlock(&be->mu);

		if (cancel) {
			moe_io_piece_done(io, p, -ECANCELED);
			continue;
		}
		if (moe_io_fault_delay_us)
			usleep(moe_io_fault_delay_us);
		do {
			r = pread(io->fd, p->buf, p->len, (off_t)p->pos);
		} while (r < 0 && errno == EINTR);
		moe_io_piece_done(io, p, r < 0 ? -errno : r);
	}
}

static void stop_workers(struct pread_be *be, unsigned n)
{
	pthread_mutex_lock(&be->mu);
	be->stop = true;
	pthread_cond_broadcast(&be->cond);
	pthread_mutex_unlock(&be->mu);
	for (unsigned i = 0; i < n; i++)
		pthread_join(be->threads[i], NULL);
}

static int pread_init(struct moe_io *io)
{
	unsigned n = io->opts.n_workers;
	struct pread_be *be;
	int ret;

	be = calloc(1, sizeof(*be) + n * sizeof(be->threads[0]));
	if (!be)
		return moe_err(ENOMEM, "no memory for the pread workers");
	pthread_mutex_init(&be->mu, NULL);
	pthread_cond_init(&be->cond, NULL);
	io->be = be;
	for (unsigned i = 0; i < n; i++) {
		ret = pthread_create(&be->threads[i], NULL, worker_main, io);
		if (ret) {
			stop_workers(be, i);
			pthread_cond_destroy(&be->cond);
			pthread_mutex_destroy(&be->mu);
			free(be);
			io->be = NULL;
			return moe_err(ret, "cannot start pread worker %u: %s", i, strerror(ret));
		}
	}
	be->n_threads = n;
	return 0;
}

static int pread_issue(struct moe_io *io, struct moe_io_piece **pieces, unsigned n)
{
	struct pread_be *be = io->be;

	pthread_mutex_lock(&be->mu);
	for (unsigned i = 0; i < n; i++) {
		struct moe_io_piece *p = pieces[i];

		if (!p->low) {
			/* behind the demand pieces, ahead of every low-priority one */
			struct moe_io_piece **at = be->dtail ? &be->dtail->next : &be->head;

			p->next = *at;
			*at = p;
			if (!p->next)
				be->tail = p;
			be->dtail = p;
			continue;
		}
		p->next = NULL;
		if (be->tail)
			be->tail->next = p;
		else
			be->head = p;
		be->tail = p;
	}
	pthread_cond_broadcast(&be->cond);
	pthread_mutex_unlock(&be->mu);
	return (int)n;
}

static void pread_cancel(struct moe_io *io)
{
	struct pread_be *be = io->be;

	pthread_mutex_lock(&be->mu);
	be->cancel = true;
	pthread_mutex_unlock(&be->mu);
}

static void pread_fini(struct moe_io *io)
{
	struct pread_be *be = io->be;

	if (!be)
		return;
	stop_workers(be, be->n_threads);
	pthread_cond_destroy(&be->cond);
	pthread_mutex_destroy(&be->mu);
	free(be);
	io->be = NULL;
}

const struct moe_io_ops moe_io_pread_ops = {
	.name = "pread workers",
	.init = pread_init,
	.fini = pread_fini,
	.issue = pread_issue,
	.cancel = pread_cancel,
};
