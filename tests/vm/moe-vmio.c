// SPDX-License-Identifier: MIT
/*
 * moe-vmio: the I/O engine through moe.ko (backend MOE_IO_KMOD) against the
 * pread backend, inside the test VM, on a model registered with `moectl load`.
 * Every expert matrix and one resident tensor must read the same bytes both
 * ways; prints the time of each.  "ok"/"not ok" lines as moe-vmtest.
 *
 * usage: moe-vmio MODEL
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe/moe.h"

/* libmoe's fault injection (io/io.h): the moe.ko backend without its ring. */
extern unsigned moe_io_faults;
#define MOE_IO_FAULT_KMOD_NO_URING (1u << 2)

static char desc[512];

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

struct span {
	uint64_t off, len;
};

struct job {
	uint8_t *out;
	uint64_t len;
	void *dst;
	int64_t res;
};

static void job_done(void *arg, int64_t res, void *interior)
{
	struct job *j = arg;

	j->res = res;
	if (res >= 0)
		memcpy(j->out, interior, j->len);
}

/* Read every span with @backend into one buffer, back to back, all queued at once. */
static int read_all(const char *path, enum moe_io_backend backend, const struct span *sp,
		    size_t n, uint8_t *out, double *secs, uint64_t *copied)
{
	struct moe_io_stats st;
	struct job *jobs = calloc(n, sizeof(*jobs));
	struct moe_io_params o;
	struct moe_io *io;
	uint64_t at = 0;
	size_t done = 0;
	double t0;
	int ret;

	if (!jobs)
		return -ENOMEM;
	moe_io_params_init(&o);
	o.backend = backend;
	ret = moe_io_open(path, &o, &io);
	if (ret) {
		free(jobs);
		return ret;
	}
	for (size_t i = 0; i < n && !ret; i++) {
		uint64_t cap = moe_io_span(io, sp[i].off, sp[i].len);

		jobs[i] = (struct job){ .out = out + at, .len = sp[i].len, .res = -EINPROGRESS };
		if (moe_io_alloc(io, cap, &jobs[i].dst) < 0)
			ret = -ENOMEM;
		at += sp[i].len;
	}
	t0 = now();
	at = 0;
	for (size_t i = 0; i < n && !ret; i++) {
		ret = moe_io_read(io, sp[i].off, sp[i].len, jobs[i].dst,
				  moe_io_span(io, sp[i].off, sp[i].len), job_done, &jobs[i]);
		if (ret)
			jobs[i].res = ret;
	}
	if (!ret)
		ret = moe_io_submit(io);
	while (!ret && done < n) {
		int r = moe_io_wait(io, 1);

		if (r < 0)
			ret = r;
		else
			done += (size_t)r;
	}
	*secs = now() - t0;
	for (size_t i = 0; i < n && !ret; i++)
		if (jobs[i].res < 0)
			ret = (int)jobs[i].res;
	for (size_t i = 0; i < n; i++)
		if (jobs[i].dst)
			moe_io_free(io, jobs[i].dst);
	moe_io_get_stats(io, &st);
	*copied = st.bytes_copied;
	snprintf(desc, sizeof(desc), "%s", moe_io_describe(io));
	moe_io_destroy(io);
	free(jobs);
	return ret;
}

int main(int argc, char **argv)
{
	struct moe_tensor_info ti;
	struct moe_hparams hp;
	struct moe_model *m;
	struct span *sp = NULL;
	size_t n = 0, cap = 0;
	uint64_t total = 0, copied = 0;
	uint8_t *a, *b;
	double ta, tb, tu, tw;
	int ret;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 2) {
		fprintf(stderr, "usage: moe-vmio MODEL\n");
		return 2;
	}
	if (moe_model_open(argv[1], &m) || moe_model_hparams(m, &hp)) {
		printf("not ok engine-kmod-equals-pread: %s\n", moe_errmsg());
		return 1;
	}
	for (uint32_t l = 0; l < hp.n_layer; l++) {
		for (uint32_t e = 0; e < hp.n_expert; e++) {
			struct moe_expert ex;

			if (moe_model_expert(m, l, e, &ex))
				continue;
			for (uint32_t k = 0; k < ex.n_mats; k++) {
				if (n == cap) {
					cap = cap ? cap * 2 : 64;
					sp = realloc(sp, cap * sizeof(*sp));
				}
				sp[n++] = (struct span){ ex.mats[k].offset, ex.mats[k].bytes };
				total += ex.mats[k].bytes;
			}
		}
	}
	/* A resident tensor: not registered, so the backend reads it itself. */
	if (!moe_model_tensor(m, 0, &ti) && ti.role == MOE_ROLE_OTHER) {
		if (n == cap)
			sp = realloc(sp, ++cap * sizeof(*sp));
		sp[n++] = (struct span){ ti.offset, ti.bytes };
		total += ti.bytes;
	}
	moe_model_destroy(m);
	a = calloc(1, total);
	b = calloc(1, total);
	if (!a || !b || !sp) {
		printf("not ok engine-kmod-equals-pread: out of memory\n");
		return 1;
	}
	ret = read_all(argv[1], MOE_IO_PREAD, sp, n, a, &ta, &copied);
	if (ret) {
		printf("not ok engine-kmod-equals-pread: pread backend: %s\n", moe_errmsg());
		return 1;
	}
	ret = read_all(argv[1], MOE_IO_URING, sp, n, b, &tu, &copied);
	if (ret) {
		printf("not ok engine-kmod-equals-pread: io_uring backend: %s\n", moe_errmsg());
		return 1;
	}
	if (memcmp(a, b, total)) {
		printf("not ok engine-kmod-equals-pread: io_uring and pread bytes differ\n");
		return 1;
	}
	memset(b, 0, total);
	ret = read_all(argv[1], MOE_IO_KMOD, sp, n, b, &tb, &copied);
	if (ret) {
		printf("not ok engine-kmod-equals-pread: kmod backend: %s\n", moe_errmsg());
		return 1;
	}
	if (memcmp(a, b, total)) {
		printf("not ok engine-kmod-equals-pread: the bytes differ\n");
		return 1;
	}
	printf("# engine: %zu extents, %.1f MiB, all queued: pread backend %.3f GB/s, io_uring "
	       "backend %.3f GB/s, moe.ko backend %.3f GB/s (moe.ko/io_uring %.2f)\n", n,
	       total / 1048576.0, total / ta / 1e9, total / tu / 1e9, total / tb / 1e9, tu / tb);
	printf("ok engine-kmod-equals-pread\n");
	/* Every read landed in the engine's staging pool, registered with the driver. */
	if (copied) {
		printf("not ok engine-kmod-zero-copy: %llu of %llu bytes were copied from a bounce "
		       "buffer\n", (unsigned long long)copied, (unsigned long long)total);
		return 1;
	}
	printf("ok engine-kmod-zero-copy\n");
	/* The batches completed as CQEs of the engine's ring, not through WAIT. */
	if (!strstr(desc, "io_uring completions")) {
		printf("not ok engine-kmod-uring-completions: the engine says: %s\n", desc);
		return 1;
	}
	printf("ok engine-kmod-uring-completions\n");
	/* Where the kernel has no io_uring commands: WAIT, the same bytes. */
	moe_io_faults |= MOE_IO_FAULT_KMOD_NO_URING;
	memset(b, 0, total);
	ret = read_all(argv[1], MOE_IO_KMOD, sp, n, b, &tw, &copied);
	moe_io_faults &= ~MOE_IO_FAULT_KMOD_NO_URING;
	if (ret) {
		printf("not ok engine-kmod-wait-fallback: %s\n", moe_errmsg());
		return 1;
	}
	if (memcmp(a, b, total) || copied || !strstr(desc, "completions by WAIT")) {
		printf("not ok engine-kmod-wait-fallback: bytes %s, %llu copied, engine: %s\n",
		       memcmp(a, b, total) ? "differ" : "equal", (unsigned long long)copied, desc);
		return 1;
	}
	printf("# engine: moe.ko backend completing through WAIT %.3f GB/s\n", total / tw / 1e9);
	printf("ok engine-kmod-wait-fallback\n");
	return 0;
}
