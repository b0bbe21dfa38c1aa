// SPDX-License-Identifier: MIT
/*
 * moe-vmio: the I/O engine through moe.ko (backend MOE_IO_KMOD) against the
 * pread backend, inside the test VM, on a model registered with `moectl load`.
 * Every expert matrix and one resident tensor must read the same bytes both
 * ways; prints the time of each.  "ok"/"not ok" lines as moe-vmtest.
 *
 * usage: moe-vmio MODEL
 *        moe-vmio --bench ROUNDS MODEL   (no tests: the io_uring and moe.ko
 *        backends read every expert matrix in turn, ROUNDS times, and say how fast)
 */
#include <errno.h>
#include <stdbool.h>
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

struct cjob {
	int64_t res;
	bool low;
};

static void cjob_done(void *arg, int64_t res, void *interior)
{
	(void)interior;
	((struct cjob *)arg)->res = res;
}

static void low_done(void *arg, int64_t res, void *interior)
{
	cjob_done(arg, res, interior);
}

/*
 * moe_io_cancel_low() under load: demand reads keep the driver busy, so the
 * prefetches queued behind them wait in its low-priority queue; cancelling
 * them takes them back from there (each ends with -ECANCELED, none counts
 * as an error), the demand reads and any prefetch not taken back read the
 * right bytes.  A few rounds: one must take something back from the driver.
 */
static int cancel_under_load(const char *path, const struct span *sp, size_t n,
			     const uint8_t *ref, const uint64_t *at, char *msg, size_t len)
{
	enum { N_DEMAND = 16, N_LOW = 8, ROUNDS = 5 };
	struct cjob jobs[N_DEMAND + N_LOW];
	void *dst[N_DEMAND + N_LOW] = { 0 };
	struct moe_io_params o;
	struct moe_io_stats st;
	struct moe_io *io;
	int ret, taken = 0;

	if (n < N_DEMAND + N_LOW)
		return snprintf(msg, len, "only %zu extents", n), -1;
	moe_io_params_init(&o);
	o.backend = MOE_IO_KMOD;
	o.queue_depth = 64;
	if (moe_io_open(path, &o, &io))
		return snprintf(msg, len, "open: %s", moe_errmsg()), -1;
	ret = 0;
	for (int i = 0; i < N_DEMAND + N_LOW && !ret; i++)
		ret = moe_io_alloc(io, moe_io_span(io, sp[i].off, sp[i].len), &dst[i]);
	for (int round = 0; round < ROUNDS && !ret; round++) {
		int cancelled, done = 0;

		for (int i = 0; i < N_DEMAND + N_LOW && !ret; i++) {
			jobs[i] = (struct cjob){ .res = 1, .low = i >= N_DEMAND };
			ret = moe_io_read_flags(io, sp[i].off, sp[i].len, dst[i],
						moe_io_span(io, sp[i].off, sp[i].len),
						jobs[i].low ? MOE_IO_READ_LOW : 0,
						jobs[i].low ? low_done : cjob_done, &jobs[i]);
			/* the demand reads go first, the prefetches queue behind them */
			if (!ret && (i == N_DEMAND - 1 || i == N_DEMAND + N_LOW - 1))
				ret = moe_io_submit(io);
		}
		if (ret)
			break;
		cancelled = moe_io_cancel_low(io, low_done, NULL, 0);
		if (cancelled < 0) {
			ret = cancelled;
			break;
		}
		while (done < N_DEMAND + N_LOW) {
			done = 0;
			for (int i = 0; i < N_DEMAND + N_LOW; i++)
				done += jobs[i].res != 1;
			if (done < N_DEMAND + N_LOW && moe_io_wait(io, 1) < 0)
				break;
		}
		for (int i = 0; i < N_DEMAND + N_LOW; i++) {
			void *in = (uint8_t *)dst[i] + (sp[i].off % moe_io_block(io));

			if (jobs[i].res == -ECANCELED && jobs[i].low)
				continue;
			if (jobs[i].res != (int64_t)sp[i].len || memcmp(in, ref + at[i], sp[i].len)) {
				snprintf(msg, len, "round %d: read %d (%s) ended with %lld", round, i,
					 jobs[i].low ? "prefetch" : "demand", (long long)jobs[i].res);
				ret = -1;
			}
		}
		taken += cancelled;
		printf("# cancel under load, round %d: %d of %d prefetches cancelled\n", round,
		       cancelled, N_LOW);
		if (taken)
			break;
	}
	moe_io_get_stats(io, &st);
	if (!ret && st.errors)
		snprintf(msg, len, "%llu errors counted", (unsigned long long)st.errors), ret = -1;
	if (!ret && !taken)
		snprintf(msg, len, "no prefetch was taken back in %d rounds", ROUNDS), ret = -1;
	for (int i = 0; i < N_DEMAND + N_LOW; i++)
		moe_io_free(io, dst[i]);
	moe_io_destroy(io);
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
	int rounds = 0;
	uint8_t *a, *b;
	double ta, tb, tu, tw;
	int ret;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4 && !strcmp(argv[1], "--bench")) {
		rounds = atoi(argv[2]);
		argv += 2;
		argc -= 2;
	}
	if (argc != 2 || rounds < 0) {
		fprintf(stderr, "usage: moe-vmio [--bench ROUNDS] MODEL\n");
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
	for (int r = 1; r <= rounds; r++) {
		/* interleaved, so that drift of the emulated drive hits both alike */
		ret = read_all(argv[1], MOE_IO_URING, sp, n, a, &tu, &copied);
		if (!ret)
			ret = read_all(argv[1], MOE_IO_KMOD, sp, n, b, &tb, &copied);
		if (ret) {
			printf("# bench-fetch: %s\n", moe_errmsg());
			return 1;
		}
		printf("# bench-fetch round %d: %zu extents, %.1f MiB, all queued: io_uring %.3f "
		       "GB/s, moe.ko %.3f GB/s (moe.ko/io_uring %.2f; %s)\n", r, n,
		       total / 1048576.0, total / tu / 1e9, total / tb / 1e9, tu / tb,
		       memcmp(a, b, total) ? "BYTES DIFFER" : "same bytes");
	}
	if (rounds)
		return 0;
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
	{
		uint64_t *at = calloc(n, sizeof(*at));
		char msg[256] = "";

		for (size_t i = 1; at && i < n; i++)
			at[i] = at[i - 1] + sp[i - 1].len;
		if (!at || cancel_under_load(argv[1], sp, n, a, at, msg, sizeof(msg))) {
			printf("not ok engine-kmod-cancel-low-under-load: %s\n",
			       msg[0] ? msg : moe_errmsg());
			return 1;
		}
		free(at);
	}
	printf("ok engine-kmod-cancel-low-under-load\n");
	return 0;
}
