/* SPDX-License-Identifier: MIT */
/*
 * stream-experts: read every routed expert of a model into memory the
 * program owns, with the I/O engine (io_uring and O_DIRECT where the system
 * allows), then check each against a plain pread of the same bytes.
 *
 *   stream-experts MODEL.gguf
 *
 * The destination is the caller's: any buffer aligned to moe_io_block() with
 * moe_io_span() bytes of room.  Reads are queued with a completion callback,
 * started with moe_io_submit() and completed by moe_io_wait() on this thread.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <moe/moe.h>

struct slot {
	uint64_t offset, len;
	void *buf;              /* the program's own memory */
	void *data;             /* where the extent starts inside buf, set on completion */
	int64_t res;
};

static void done(void *arg, int64_t res, void *interior)
{
	struct slot *s = arg;

	s->res = res;
	s->data = interior;
}

/* The same bytes through the page cache, for comparison. */
static int check(int fd, const struct slot *s)
{
	char *want = malloc(s->len);
	int ok;

	if (!want)
		return -1;
	ok = pread(fd, want, s->len, (off_t)s->offset) == (ssize_t)s->len &&
	     memcmp(want, s->data, s->len) == 0;
	free(want);
	return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
	struct moe_model *model;
	struct moe_io_stats st;
	struct moe_hparams hp;
	struct slot *slots;
	uint32_t n = 0, bad = 0;
	struct moe_io *io;
	int fd, ret;

	if (argc != 2) {
		fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
		return 2;
	}
	if (moe_model_open(argv[1], &model) < 0 || moe_model_hparams(model, &hp) < 0) {
		fprintf(stderr, "stream-experts: %s\n", moe_errmsg());
		return 1;
	}
	ret = moe_io_open(argv[1], NULL, &io);
	if (ret < 0) {
		fprintf(stderr, "stream-experts: %s\n", moe_errmsg());
		moe_model_destroy(model);
		return 1;
	}
	printf("I/O: %s\n", moe_io_describe(io));
	slots = calloc((size_t)hp.n_layer * hp.n_expert * MOE_EXPERT_MAX_MATS + 1, sizeof(*slots));
	if (!slots)
		return 1;

	for (uint32_t l = 0; l < hp.n_layer; l++) {
		for (uint32_t e = 0; e < hp.n_expert; e++) {
			struct moe_expert ex;

			if (moe_model_expert(model, l, e, &ex) < 0)
				break;          /* a dense layer */
			for (uint32_t m = 0; m < ex.n_mats; m++) {
				struct slot *s = &slots[n];
				uint64_t cap = moe_io_span(io, ex.mats[m].offset, ex.mats[m].bytes);

				s->offset = ex.mats[m].offset;
				s->len = ex.mats[m].bytes;
				s->res = -1;
				if (posix_memalign(&s->buf, moe_io_block(io), cap))
					return 1;
				ret = moe_io_read(io, s->offset, s->len, s->buf, cap, done, s);
				if (ret < 0) {
					fprintf(stderr, "stream-experts: %s\n", moe_errmsg());
					return 1;
				}
				n++;
			}
		}
	}
	ret = moe_io_submit(io);
	while (ret >= 0 && moe_io_wait(io, 1) > 0)
		;
	moe_io_get_stats(io, &st);

	fd = open(argv[1], O_RDONLY);
	for (uint32_t i = 0; i < n; i++) {
		if (slots[i].res != (int64_t)slots[i].len || fd < 0 || check(fd, &slots[i]) < 0)
			bad++;
		free(slots[i].buf);
	}
	if (fd >= 0)
		close(fd);
	printf("read %u expert matrices, %" PRIu64 " bytes in %" PRIu64 " requests; "
	       "%u differ from pread\n", n, st.bytes, st.requests, bad);
	free(slots);
	moe_io_destroy(io);
	moe_model_destroy(model);
	return bad ? 1 : 0;
}
