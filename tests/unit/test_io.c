/* SPDX-License-Identifier: MIT */
/*
 * The I/O engine: random extents through every path compared with pread,
 * many reads in flight, several submitting threads, close with reads in
 * flight, and the faults (truncated file, unreadable file, bad descriptor,
 * O_DIRECT refused, io_uring refused).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/io.h"
#include "util/util.h"
#include "testutil.h"

/* The sanitizers turn mlock() into a no-op that succeeds. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MLOCK_INTERCEPTED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define MLOCK_INTERCEPTED 1
#endif
#endif
#ifndef MLOCK_INTERCEPTED
#define MLOCK_INTERCEPTED 0
#endif

#define FILE_BYTES (24u << 20)
#define MIB (1u << 20)

struct fixture {
	char *dir;
	char path[512];
	int ref_fd;      /* buffered descriptor: the pread reference */
};

static void make_file(struct fixture *fx, const char *dir, uint32_t bytes, uint64_t seed)
{
	uint64_t *buf = malloc(bytes);

	ck_assert_ptr_nonnull(buf);
	for (uint32_t i = 0; i < bytes / 8; i++)
		buf[i] = tu_rand(&seed);
	snprintf(fx->path, sizeof(fx->path), "%s/model.bin", dir);
	ck_assert_int_eq(tu_write_file(fx->path, buf, bytes), 0);
	free(buf);
	fx->ref_fd = open(fx->path, O_RDONLY);
	ck_assert_int_ge(fx->ref_fd, 0);
}

static void fx_setup(struct fixture *fx)
{
	fx->dir = tu_tmpdir();
	ck_assert_ptr_nonnull(fx->dir);
	make_file(fx, fx->dir, FILE_BYTES, 42);
}

/* The fixture for a test that drops to another user, who must reach the file. */
static void fx_setup_public(struct fixture *fx)
{
	fx->dir = tu_tmpdir_public();
	ck_assert_ptr_nonnull(fx->dir);
	make_file(fx, fx->dir, FILE_BYTES, 42);
}

static void fx_teardown(struct fixture *fx)
{
	close(fx->ref_fd);
	tu_rmtree(fx->dir);
	free(fx->dir);
}

static void ref_read(const struct fixture *fx, uint64_t off, uint64_t len, uint8_t *out)
{
	ck_assert_int_eq(pread(fx->ref_fd, out, len, (off_t)off), (ssize_t)len);
}

struct job {
	uint64_t off, len;
	uint8_t *dst;
	uint64_t cap;
	uint32_t block;
	bool pooled;
	int64_t res;
	void *interior;
	int calls;
	char msg[256];
};

static void job_cb(void *arg, int64_t res, void *interior)
{
	struct job *j = arg;

	j->res = res;
	j->interior = interior;
	if (res < 0)
		snprintf(j->msg, sizeof(j->msg), "%s", moe_errmsg());
	__atomic_add_fetch(&j->calls, 1, __ATOMIC_SEQ_CST);
}

/* Extents of every kind: tiny, unaligned, block-aligned, multi-MiB, at the end of the file. */
static void random_extent(uint64_t *seed, uint32_t block, uint64_t size, uint64_t *off,
			  uint64_t *len)
{
	switch (tu_rand(seed) % 6) {
	case 0:
		*len = 1 + tu_rand(seed) % 64;
		break;
	case 1:
		*len = 1 + tu_rand(seed) % 20000;
		break;
	case 2:
		*len = block * (1 + tu_rand(seed) % 64);
		break;
	case 3:
		*len = MIB + tu_rand(seed) % (4 * MIB);
		break;
	case 4:
		*len = 32 * (1 + tu_rand(seed) % 4096);
		break;
	default:
		*len = 1 + tu_rand(seed) % 3000;
		*off = size - *len;
		return;
	}
	*off = tu_rand(seed) % (size - *len + 1);
	if (tu_rand(seed) % 3 == 0)
		*off = *off / block * block;
	else if (tu_rand(seed) % 2)
		*off = *off / 32 * 32;
}

static void check_job(const struct fixture *fx, const struct job *j)
{
	uint8_t *want = malloc(j->len);

	ck_assert_int_eq(j->calls, 1);
	ck_assert_msg(j->res == (int64_t)j->len, "extent [%llu, +%llu): res %lld: %s",
		      (unsigned long long)j->off, (unsigned long long)j->len, (long long)j->res,
		      moe_errmsg());
	ck_assert_ptr_eq(j->interior, j->dst + (j->off - j->off / j->block * j->block));
	ref_read(fx, j->off, j->len, want);
	ck_assert_msg(!memcmp(j->interior, want, j->len), "extent [%llu, +%llu) differs",
		      (unsigned long long)j->off, (unsigned long long)j->len);
	free(want);
}

static struct moe_io *open_io(const char *path, enum moe_io_backend b, enum moe_io_direct d,
			      uint32_t qd, uint64_t max_request)
{
	struct moe_io_params o;
	struct moe_io *io = NULL;
	int ret;

	moe_io_params_init(&o);
	o.backend = b;
	o.direct = d;
	o.queue_depth = qd;
	o.max_request = max_request;
	o.staging_bytes = 16 * MIB;
	ret = moe_io_open(path, &o, &io);
	ck_assert_msg(ret == 0, "moe_io_open(%s): %d %s", path, ret, moe_errmsg());
	return io;
}

static void prep_job(struct moe_io *io, struct job *j, uint64_t off, uint64_t len, bool pooled)
{
	memset(j, 0, sizeof(*j));
	j->off = off;
	j->len = len;
	j->block = moe_io_block(io);
	j->cap = moe_io_span(io, off, len);
	j->pooled = pooled;
	if (pooled) {
		void *p;

		ck_assert_int_eq(moe_io_alloc(io, j->cap, &p), 0);
		j->dst = p;
	} else {
		void *p = NULL;

		ck_assert_int_eq(posix_memalign(&p, j->block, j->cap), 0);
		j->dst = p;
	}
	ck_assert_ptr_nonnull(j->dst);
	memset(j->dst, 0xa5, j->cap);
}

static void free_job(struct moe_io *io, struct job *j)
{
	if (j->pooled)
		moe_io_free(io, j->dst);
	else
		free(j->dst);
}

/* Random extents through one path, all queued at once, compared with pread. */
static void run_random(const struct fixture *fx, struct moe_io *io, unsigned n, uint64_t seed)
{
	struct job *jobs = calloc(n, sizeof(*jobs));
	struct moe_io_stats st;
	unsigned done = 0;
	uint64_t bytes = 0;

	for (unsigned i = 0; i < n; i++) {
		uint64_t off, len;

		random_extent(&seed, moe_io_block(io), FILE_BYTES, &off, &len);
		prep_job(io, &jobs[i], off, len, i % 2);
		ck_assert_int_eq(moe_io_read(io, off, len, jobs[i].dst, jobs[i].cap, job_cb,
					     &jobs[i]), 0);
		bytes += len;
	}
	ck_assert_int_eq(moe_io_submit(io), 0);
	while (done < n) {
		int k = moe_io_wait(io, 1);

		ck_assert_int_gt(k, 0);
		done += (unsigned)k;
	}
	ck_assert_int_eq(moe_io_poll(io), 0);
	for (unsigned i = 0; i < n; i++) {
		check_job(fx, &jobs[i]);
		free_job(io, &jobs[i]);
	}
	moe_io_get_stats(io, &st);
	ck_assert_uint_eq(st.requests, n);
	ck_assert_uint_eq(st.errors, 0);
	ck_assert_uint_eq(st.bytes, bytes);
	free(jobs);
}

START_TEST(every_path_matches_pread)
{
	static const struct {
		enum moe_io_backend b;
		enum moe_io_direct d;
		uint32_t qd;
		uint64_t max;
		const char *want;
	} paths[] = {
		{ MOE_IO_URING, MOE_IO_DIRECT_ON, 32, 0, "io_uring, O_DIRECT" },
		{ MOE_IO_URING, MOE_IO_DIRECT_OFF, 8, 64 << 10, "io_uring, buffered" },
		{ MOE_IO_PREAD, MOE_IO_DIRECT_ON, 16, 256 << 10, "pread workers, O_DIRECT" },
		{ MOE_IO_PREAD, MOE_IO_DIRECT_OFF, 4, 0, "pread workers, buffered" },
		{ MOE_IO_AUTO, MOE_IO_DIRECT_AUTO, 1, 3 * 4096 + 100, "io_uring, O_DIRECT" },
	};
	struct fixture fx;

	fx_setup(&fx);
	for (unsigned i = 0; i < MOE_ARRAY_SIZE(paths); i++) {
		struct moe_io *io = open_io(fx.path, paths[i].b, paths[i].d, paths[i].qd,
					    paths[i].max);

		ck_assert_msg(strstr(moe_io_describe(io), paths[i].want), "path %u: %s", i,
			      moe_io_describe(io));
		run_random(&fx, io, 120, 1000 + i);
		moe_io_destroy(io);
	}
	fx_teardown(&fx);
}
END_TEST

START_TEST(sync_span_and_bad_input)
{
	struct fixture fx;
	struct moe_io *io;
	struct moe_io_params o;
	uint8_t *dst, want[100];
	void *mem;
	void *interior = NULL;
	uint32_t b;
	char fifo[600];
	struct job j = { 0 };

	fx_setup(&fx);
	io = open_io(fx.path, MOE_IO_AUTO, MOE_IO_DIRECT_AUTO, 0, 0);
	b = moe_io_block(io);
	ck_assert_uint_ge(b, 512);
	ck_assert_uint_eq(b & (b - 1), 0);
	ck_assert_uint_eq(moe_io_span(io, 0, 1), b);
	ck_assert_uint_eq(moe_io_span(io, b - 1, 2), 2 * b);
	ck_assert_uint_eq(moe_io_span(io, b, b), b);
	ck_assert_uint_eq(moe_io_span(io, 3 * b + 5, b), 2 * b);

	mem = &fx;
	ck_assert_int_eq(moe_io_alloc(io, 0, &mem), -EINVAL);
	ck_assert_ptr_null(mem);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "0 bytes"));
	ck_assert_int_eq(moe_io_alloc(io, 1ull << 60, &mem), -EINVAL);
	ck_assert_int_eq(moe_io_alloc(io, 2 * b, NULL), -EINVAL);
	ck_assert_int_eq(moe_io_alloc(io, 2 * b, &mem), 0);
	dst = mem;
	ck_assert_ptr_nonnull(dst);
	ck_assert_uint_eq((uintptr_t)dst % b, 0);
	ck_assert_int_eq(moe_io_read_sync(io, b - 50, 100, dst, 2 * b, &interior), 0);
	ref_read(&fx, b - 50, 100, want);
	ck_assert_ptr_eq(interior, dst + b - 50);
	ck_assert_mem_eq(interior, want, 100);

	/* Too small, misaligned, past the end: refused up front with the fix named. */
	ck_assert_int_eq(moe_io_read_sync(io, b - 50, 100, dst, b, NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "moe_io_span"));
	ck_assert_int_eq(moe_io_read_sync(io, 0, 10, dst + 1, b, NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "moe_io_alloc"));
	ck_assert_int_eq(moe_io_read_sync(io, FILE_BYTES - 10, 11, dst, 2 * b, NULL), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "past the end"));
	ck_assert_int_eq(moe_io_read_sync(io, UINT64_MAX - 5, 10, dst, 2 * b, NULL), -EINVAL);

	/* An empty extent completes at once. */
	j.calls = 0;
	ck_assert_int_eq(moe_io_read(io, 7, 0, NULL, 0, job_cb, &j), 0);
	ck_assert_int_eq(moe_io_poll(io), 1);
	ck_assert_int_eq(j.calls, 1);
	ck_assert_int_eq(j.res, 0);
	moe_io_free(io, dst);
	moe_io_destroy(io);

	moe_io_params_init(&o);
	o.queue_depth = 100000;
	ck_assert_int_eq(moe_io_open(fx.path, &o, &io), -EINVAL);
	moe_io_params_init(&o);
	o.flags = 0x80;
	ck_assert_int_eq(moe_io_open(fx.path, &o, &io), -EINVAL);
	moe_io_params_init(&o);
	o.backend = 9;
	ck_assert_int_eq(moe_io_open(fx.path, &o, &io), -EINVAL);
	ck_assert_int_eq(moe_io_open(fx.dir, NULL, &io), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "is a directory"));
	/* A FIFO nobody writes to is refused at once: open() would wait for a writer. */
	snprintf(fifo, sizeof(fifo), "%s/fifo", fx.dir);
	ck_assert_int_eq(mkfifo(fifo, 0600), 0);
	alarm(20);
	ck_assert_int_eq(moe_io_open(fifo, NULL, &io), -EINVAL);
	alarm(0);
	ck_assert_msg(strstr(moe_errmsg(), "is a FIFO"), "%s", moe_errmsg());
	unlink(fifo);
	moe_io_params_init(&o);
	o.numa_node = 4095;
	ck_assert_int_eq(moe_io_open(fx.path, &o, &io), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "NUMA node 4095 does not exist"));
	moe_io_params_init(&o);
	o.numa_node = 0;
	ck_assert_int_eq(moe_io_open(fx.path, &o, &io), 0);
	ck_assert_ptr_nonnull(strstr(moe_io_describe(io), "node 0"));
	moe_io_destroy(io);
	moe_io_params_init(&o);
	o.backend = MOE_IO_KMOD;
	if (access("/sys/module/moe", F_OK) != 0) {
		/* No driver here: a clear refusal, never a crash or a silent fallback. */
		ck_assert_int_lt(moe_io_open(fx.path, &o, &io), 0);
		ck_assert_ptr_nonnull(strstr(moe_errmsg(), "moe.ko"));
	}
	ck_assert_int_eq(moe_io_open("/nonexistent/model.gguf", NULL, &io), -ENOENT);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "/nonexistent/model.gguf"));
	fx_teardown(&fx);
}
END_TEST

START_TEST(staging_pool)
{
	struct fixture fx;
	struct moe_io *io;
	void *p[64];
	uint8_t *big;
	void *mem;

	fx_setup(&fx);
	io = open_io(fx.path, MOE_IO_URING, MOE_IO_DIRECT_ON, 8, 0);
	for (unsigned i = 0; i < 64; i++) {
		ck_assert_int_eq(moe_io_alloc(io, 1000 + i * 3000, &p[i]), 0);
		ck_assert_ptr_nonnull(p[i]);
		ck_assert_uint_eq((uintptr_t)p[i] % moe_io_block(io), 0);
		memset(p[i], (int)i, 1000 + i * 3000);
	}
	ck_assert_ptr_nonnull(strstr(moe_io_describe(io), "staging 16 MiB ("));
	ck_assert_ptr_nonnull(strstr(moe_io_describe(io), "registered"));
	for (unsigned i = 0; i < 64; i++) {
		const uint8_t *q = p[i];

		ck_assert_uint_eq(q[0], i);
		ck_assert_uint_eq(q[999 + i * 3000], i);
	}
	for (unsigned i = 0; i < 64; i += 2)
		moe_io_free(io, p[i]);
	for (unsigned i = 1; i < 64; i += 2)
		moe_io_free(io, p[i]);
	/* Freed pieces merge back: the whole pool is one allocation again. */
	ck_assert_int_eq(moe_io_alloc(io, 16 * MIB, &mem), 0);
	big = mem;
	ck_assert_ptr_eq(big, io->pool.base);
	/* Past the pool: a separate mapping that still works as a destination. */
	ck_assert_int_eq(moe_io_alloc(io, 6 * MIB, &p[0]), 0);
	ck_assert_ptr_nonnull(p[0]);
	ck_assert_int_lt(moe_io_pool_index(io, p[0], MIB), 0);
	ck_assert_int_eq(moe_io_read_sync(io, 12345, 5 * MIB, p[0], 6 * MIB, NULL), 0);
	ck_assert_int_eq(moe_io_read_sync(io, 12345, 5 * MIB, big, 16 * MIB, NULL), 0);
	ck_assert_mem_eq((uint8_t *)p[0] + 12345 % moe_io_block(io),
			 big + 12345 % moe_io_block(io), 5 * MIB);
	moe_io_free(io, p[0]);
	moe_io_free(io, big);
	moe_io_destroy(io);
	fx_teardown(&fx);
}
END_TEST

/* Several threads submit and wait on one engine; callbacks may run on any of them. */
struct thread_arg {
	const struct fixture *fx;
	struct moe_io *io;
	uint64_t seed;
	bool sync;
	struct job jobs[40];
};

static void *submitter(void *arg)
{
	struct thread_arg *t = arg;

	for (unsigned i = 0; i < MOE_ARRAY_SIZE(t->jobs); i++) {
		struct job *j = &t->jobs[i];
		uint64_t off, len;

		random_extent(&t->seed, moe_io_block(t->io), FILE_BYTES, &off, &len);
		prep_job(t->io, j, off, len, i % 3 == 0);
		if (t->sync) {
			void *in = NULL;

			j->res = moe_io_read_sync(t->io, off, len, j->dst, j->cap, &in);
			j->res = j->res == 0 ? (int64_t)len : j->res;
			j->interior = in;
			j->calls = 1;
			continue;
		}
		ck_assert_int_eq(moe_io_read(t->io, off, len, j->dst, j->cap, job_cb, j), 0);
		if (i % 4 == 3) {
			moe_io_submit(t->io);
			moe_io_wait(t->io, 1);
		}
	}
	moe_io_submit(t->io);
	return NULL;
}

static void run_threads(enum moe_io_backend b, uint32_t flags)
{
	enum { NT = 4 };
	struct thread_arg *t = calloc(NT, sizeof(*t));
	struct moe_io_params o;
	struct fixture fx;
	struct moe_io *io;
	pthread_t th[NT];

	fx_setup(&fx);
	moe_io_params_init(&o);
	o.backend = b;
	o.queue_depth = 16;
	o.max_request = 512 << 10;
	o.staging_bytes = 32 * MIB;
	o.flags = flags;
	ck_assert_int_eq(moe_io_open(fx.path, &o, &io), 0);
	for (unsigned i = 0; i < NT; i++) {
		t[i] = (struct thread_arg){ .fx = &fx, .io = io, .seed = 77 + i, .sync = i == 3 };
		ck_assert_int_eq(pthread_create(&th[i], NULL, submitter, &t[i]), 0);
	}
	for (unsigned i = 0; i < NT; i++)
		pthread_join(th[i], NULL);
	/* Whatever the other threads' waits did not deliver arrives here. */
	while (moe_io_wait(io, 1) > 0)
		;
	for (unsigned i = 0; i < NT; i++)
		for (unsigned k = 0; k < MOE_ARRAY_SIZE(t[i].jobs); k++) {
			check_job(&fx, &t[i].jobs[k]);
			free_job(io, &t[i].jobs[k]);
		}
	moe_io_destroy(io);
	fx_teardown(&fx);
	free(t);
}

START_TEST(threads_uring)
{
	run_threads(MOE_IO_URING, 0);
}
END_TEST

START_TEST(threads_pread_engine_callbacks)
{
	run_threads(MOE_IO_PREAD, MOE_IO_CB_ENGINE_THREAD);
}
END_TEST

START_TEST(threads_uring_engine_callbacks)
{
	run_threads(MOE_IO_URING, MOE_IO_CB_ENGINE_THREAD);
}
END_TEST

/* With callbacks on engine threads, moe_io_wait still blocks until the reads completed. */
START_TEST(engine_thread_wait)
{
	static const enum moe_io_backend backends[] = { MOE_IO_URING, MOE_IO_PREAD };
	struct fixture fx;

	fx_setup(&fx);
	for (unsigned bi = 0; bi < 2; bi++) {
		struct moe_io_params o;
		struct moe_io *io;
		struct job j[20];
		int seen = 0, k;

		moe_io_params_init(&o);
		o.backend = backends[bi];
		o.queue_depth = 4;
		o.flags = MOE_IO_CB_ENGINE_THREAD;
		ck_assert_int_eq(moe_io_open(fx.path, &o, &io), 0);
		for (unsigned i = 0; i < 20; i++) {
			prep_job(io, &j[i], i * MIB + 3, 2 * MIB, true);
			ck_assert_int_eq(moe_io_read(io, j[i].off, j[i].len, j[i].dst, j[i].cap,
						     job_cb, &j[i]), 0);
		}
		while (seen < 20 && (k = moe_io_wait(io, 20 - seen)) > 0)
			seen += k;
		ck_assert_int_eq(seen, 20);
		for (unsigned i = 0; i < 20; i++) {
			check_job(&fx, &j[i]);
			free_job(io, &j[i]);
		}
		ck_assert_int_eq(moe_io_wait(io, 1), 0);
		moe_io_destroy(io);
	}
	fx_teardown(&fx);
}
END_TEST

/* Close with reads queued and in flight: every callback runs once, nothing hangs or leaks. */
static void run_close_inflight(enum moe_io_backend b, uint32_t flags)
{
	enum { N = 48 };
	struct job jobs[N];
	struct fixture fx;
	struct moe_io_params o;
	struct moe_io *io;
	unsigned ok = 0, cancelled = 0;
	uint64_t seed = 5;

	fx_setup(&fx);
	moe_io_params_init(&o);
	o.backend = b;
	o.queue_depth = 4;
	o.max_request = 256 << 10;
	o.flags = flags;
	ck_assert_int_eq(moe_io_open(fx.path, &o, &io), 0);
	for (unsigned i = 0; i < N; i++) {
		uint64_t len = MIB + tu_rand(&seed) % (2 * MIB);
		uint64_t off = tu_rand(&seed) % (FILE_BYTES - len);

		/* Not from the pool: the buffers must outlive the engine for the check. */
		prep_job(io, &jobs[i], off, len, false);
		ck_assert_int_eq(moe_io_read(io, off, len, jobs[i].dst, jobs[i].cap, job_cb,
					     &jobs[i]), 0);
		if (i == N / 2)
			moe_io_submit(io);
	}
	moe_io_destroy(io);
	for (unsigned i = 0; i < N; i++) {
		ck_assert_int_eq(jobs[i].calls, 1);
		if (jobs[i].res == -ECANCELED) {
			cancelled++;
		} else {
			check_job(&fx, &jobs[i]);
			ok++;
		}
		free(jobs[i].dst);
	}
	ck_assert_uint_eq(ok + cancelled, N);
	ck_assert_uint_gt(cancelled, 0);
	fx_teardown(&fx);
}

START_TEST(close_inflight_uring)
{
	run_close_inflight(MOE_IO_URING, 0);
}
END_TEST

START_TEST(close_inflight_pread)
{
	run_close_inflight(MOE_IO_PREAD, MOE_IO_CB_ENGINE_THREAD);
}
END_TEST

/* The file shrinks under an open engine: reads past the new end fail alone, the rest carry on. */
START_TEST(truncated_while_open)
{
	static const struct {
		enum moe_io_backend b;
		enum moe_io_direct d;
	} paths[] = {
		{ MOE_IO_URING, MOE_IO_DIRECT_ON }, { MOE_IO_URING, MOE_IO_DIRECT_OFF },
		{ MOE_IO_PREAD, MOE_IO_DIRECT_ON }, { MOE_IO_PREAD, MOE_IO_DIRECT_OFF },
	};
	const uint64_t cut = 3 * MIB + 100;
	const struct {
		uint64_t off, len;
		bool ok;
	} ext[] = {
		{ 0, MIB, true }, { 2 * MIB, 2 * MIB, false }, { 5 * MIB, 100, false },
		{ 3 * MIB, 100, true }, { 3 * MIB + 50, 100, false }, { 100, 3 * MIB, true },
	};
	struct job jobs[MOE_ARRAY_SIZE(ext)];
	struct fixture fx;

	for (unsigned pi = 0; pi < MOE_ARRAY_SIZE(paths); pi++) {
		struct moe_io *io;
		struct moe_io_stats st;

		fx.dir = tu_tmpdir();
		make_file(&fx, fx.dir, 8 * MIB, pi);
		io = open_io(fx.path, paths[pi].b, paths[pi].d, 4, 0);
		ck_assert_int_eq(truncate(fx.path, (off_t)cut), 0);
		for (unsigned i = 0; i < MOE_ARRAY_SIZE(ext); i++) {
			prep_job(io, &jobs[i], ext[i].off, ext[i].len, i % 2);
			ck_assert_int_eq(moe_io_read(io, ext[i].off, ext[i].len, jobs[i].dst,
						     jobs[i].cap, job_cb, &jobs[i]), 0);
		}
		while (moe_io_wait(io, MOE_ARRAY_SIZE(ext)) > 0)
			;
		for (unsigned i = 0; i < MOE_ARRAY_SIZE(ext); i++) {
			char name[64];

			if (ext[i].ok) {
				check_job(&fx, &jobs[i]);
			} else {
				ck_assert_int_eq(jobs[i].calls, 1);
				ck_assert_msg(jobs[i].res == -ENODATA, "path %u extent %u: %lld", pi,
					      i, (long long)jobs[i].res);
				snprintf(name, sizeof(name), "[0x%llx, +0x%llx)",
					 (unsigned long long)ext[i].off,
					 (unsigned long long)ext[i].len);
				ck_assert_msg(strstr(jobs[i].msg, name) &&
					      strstr(jobs[i].msg, "truncated"),
					      "message '%s' does not name %s", jobs[i].msg, name);
			}
			free_job(io, &jobs[i]);
		}
		moe_io_get_stats(io, &st);
		ck_assert_uint_eq(st.errors, 3);
		ck_assert_uint_eq(st.requests, MOE_ARRAY_SIZE(ext));
		moe_io_destroy(io);
		fx_teardown(&fx);
	}
}
END_TEST

/* A media error (EIO) fails the reads that cover it and no other, on both backends. */
START_TEST(media_error)
{
	static const enum moe_io_backend backends[] = { MOE_IO_URING, MOE_IO_PREAD };
	struct fixture fx;

	fx_setup(&fx);
	moe_io_fault_eio_pos = 4 * MIB + 500000;
	for (unsigned bi = 0; bi < 2; bi++) {
		struct moe_io *io = open_io(fx.path, backends[bi], MOE_IO_DIRECT_ON, 8, 0);
		struct job j[12];
		uint64_t seed = 11;
		unsigned hits = 0;

		for (unsigned i = 0; i < 12; i++) {
			uint64_t off = i * 2 * MIB + tu_rand(&seed) % 1000, len = MIB + 333;

			prep_job(io, &j[i], off, len, i % 2);
			ck_assert_int_eq(moe_io_read(io, off, len, j[i].dst, j[i].cap, job_cb,
						     &j[i]), 0);
		}
		ck_assert_int_eq(moe_io_wait(io, 12), 12);
		for (unsigned i = 0; i < 12; i++) {
			bool hit = moe_io_fault_eio_pos >= j[i].off / moe_io_block(io) *
				   moe_io_block(io) && moe_io_fault_eio_pos < j[i].off + j[i].len;

			if (hit) {
				hits++;
				ck_assert_int_eq(j[i].res, -EIO);
				ck_assert_ptr_nonnull(strstr(j[i].msg, "Input/output error"));
			} else {
				check_job(&fx, &j[i]);
			}
			free_job(io, &j[i]);
		}
		ck_assert_uint_eq(hits, 1);
		moe_io_destroy(io);
	}
	moe_io_fault_eio_pos = UINT64_MAX;
	fx_teardown(&fx);
}
END_TEST

/* A descriptor that cannot read (EBADF) fails each read with the extent named; no hang. */
START_TEST(bad_descriptor)
{
	struct fixture fx;
	struct moe_io *io;
	struct job j[3];
	int wfd;

	fx_setup(&fx);
	io = open_io(fx.path, MOE_IO_PREAD, MOE_IO_DIRECT_OFF, 4, 0);
	wfd = open(fx.path, O_WRONLY);
	ck_assert_int_ge(wfd, 0);
	ck_assert_int_eq(dup2(wfd, io->fd), io->fd);
	close(wfd);
	for (unsigned i = 0; i < 3; i++) {
		prep_job(io, &j[i], i * MIB + 7, 3 * MIB, true);
		ck_assert_int_eq(moe_io_read(io, j[i].off, j[i].len, j[i].dst, j[i].cap, job_cb,
					     &j[i]), 0);
	}
	ck_assert_int_eq(moe_io_wait(io, 3), 3);
	for (unsigned i = 0; i < 3; i++) {
		ck_assert_int_eq(j[i].calls, 1);
		ck_assert_int_eq(j[i].res, -EBADF);
		ck_assert_ptr_nonnull(strstr(j[i].msg, "extent [0x"));
		free_job(io, &j[i]);
	}
	moe_io_destroy(io);
	fx_teardown(&fx);
}
END_TEST

/* Run @fn in a child process (privilege drops and seccomp filters must not leak). */
static int in_child(void (*fn)(const struct fixture *), const struct fixture *fx)
{
	pid_t pid = fork();
	int st;

	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		fn(fx);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void unreadable_child(const struct fixture *fx)
{
	struct moe_io *io = NULL;
	int ret;

	if (setgid(65534) || setuid(65534))
		_exit(3);
	ret = moe_io_open(fx->path, NULL, &io);
	if (ret != -EACCES)
		_exit(4);
	if (!strstr(moe_errmsg(), fx->path) || !strstr(moe_errmsg(), "cannot open"))
		_exit(5);
}

START_TEST(unreadable_file)
{
	struct fixture fx;

	/* reachable, so that only the file's own mode refuses the other user */
	fx_setup_public(&fx);
	ck_assert_int_eq(chmod(fx.path, 0), 0);
	ck_assert_int_eq(in_child(unreadable_child, &fx), 0);
	fx_teardown(&fx);
}
END_TEST

static void memlock_child(const struct fixture *fx)
{
	struct rlimit rl = { 64 << 10, 64 << 10 };
	struct moe_io *io;
	void *p;

	/* Another user has no CAP_IPC_LOCK, so the small limit binds. */
	if (setrlimit(RLIMIT_MEMLOCK, &rl) || setgid(65534) || setuid(65534))
		_exit(3);
	io = open_io(fx->path, MOE_IO_URING, MOE_IO_DIRECT_ON, 8, 0);
	if (moe_io_alloc(io, 4 * MIB, &p) < 0 || !p)
		_exit(4);
	if (!strstr(moe_io_describe(io), MLOCK_INTERCEPTED ? "not registered" :
		    "unlocked, not registered"))
		_exit(5);
	moe_io_free(io, p);
	run_random(fx, io, 30, 12);
	moe_io_destroy(io);
}

/* Under a small RLIMIT_MEMLOCK the pool is neither locked nor registered, and still works. */
START_TEST(memlock_limited)
{
	struct fixture fx;

	fx_setup_public(&fx);
	ck_assert_int_eq(in_child(memlock_child, &fx), 0);
	fx_teardown(&fx);
}
END_TEST

/* tmpfs: AUTO reads buffered (its pages are the storage) and says so. */
START_TEST(tmpfs_buffered)
{
	struct fixture fx;
	struct moe_io *io;
	char tmpl[] = "/dev/shm/moe-io-XXXXXX";

	fx.dir = strdup(mkdtemp(tmpl));
	make_file(&fx, fx.dir, FILE_BYTES, 9);
	io = open_io(fx.path, MOE_IO_AUTO, MOE_IO_DIRECT_AUTO, 8, 0);
	ck_assert_msg(strstr(moe_io_describe(io), "buffered (tmpfs"), "%s",
		      moe_io_describe(io));
	run_random(&fx, io, 60, 3);
	moe_io_destroy(io);
	fx_teardown(&fx);
}
END_TEST

/* A filesystem that refuses O_DIRECT (EINVAL): AUTO falls back, ON fails with the fix. */
START_TEST(direct_refused)
{
	struct fixture fx;
	struct moe_io_params o;
	struct moe_io *io;

	fx_setup(&fx);
	moe_io_faults = MOE_IO_FAULT_DIRECT_EINVAL;
	io = open_io(fx.path, MOE_IO_AUTO, MOE_IO_DIRECT_AUTO, 8, 0);
	ck_assert_msg(strstr(moe_io_describe(io), "buffered (O_DIRECT refused: Invalid argument)"),
		      "%s", moe_io_describe(io));
	run_random(&fx, io, 40, 4);
	moe_io_destroy(io);
	moe_io_params_init(&o);
	o.direct = MOE_IO_DIRECT_ON;
	ck_assert_int_eq(moe_io_open(fx.path, &o, &io), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "direct=auto or off"));
	moe_io_faults = 0;
	fx_teardown(&fx);
}
END_TEST

static void deny_uring_child(const struct fixture *fx)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = MOE_ARRAY_SIZE(f), .filter = f };
	struct moe_io_params o;
	struct moe_io *io;

	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
							     &prog))
		_exit(3);
	io = open_io(fx->path, MOE_IO_AUTO, MOE_IO_DIRECT_AUTO, 8, 0);
	if (!strstr(moe_io_describe(io),
		    "pread workers (io_uring refused: Operation not permitted), O_DIRECT"))
		_exit(4);
	run_random(fx, io, 40, 8);
	moe_io_destroy(io);
	moe_io_params_init(&o);
	o.backend = MOE_IO_URING;
	if (moe_io_open(fx->path, &o, &io) != -EPERM || !strstr(moe_errmsg(), "io_uring"))
		_exit(5);
}

/* io_uring refused as under a container's seccomp profile: pread workers take over. */
START_TEST(uring_refused)
{
	struct fixture fx;

	fx_setup(&fx);
	ck_assert_int_eq(in_child(deny_uring_child, &fx), 0);
	fx_teardown(&fx);
}
END_TEST

START_TEST(topology)
{
	struct moe_topo_info ti;
	struct moe_topo_node nodes[8];
	struct moe_topo_device devs[32], d;
	struct fixture fx;
	int n, node;

	ck_assert_int_eq(moe_topo_info(&ti), 0);
	ck_assert_uint_ge(ti.n_pus, 1);
	ck_assert_uint_ge(ti.n_numa, 1);
	ck_assert_uint_eq(ti.hwloc_version[0] >= '1' && ti.hwloc_version[0] <= '9', 1);
	n = moe_topo_nodes(nodes, 8);
	ck_assert_int_eq(n, (int)ti.n_numa);
	ck_assert_uint_ge(nodes[0].n_pus, 1);
	ck_assert_uint_gt(strlen(nodes[0].cpus), 0);
	n = moe_topo_devices(devs, 32);
	ck_assert_int_ge(n, 0);
	for (int i = 0; i < n && i < 32; i++)
		ck_assert_msg(!strcmp(devs[i].kind, "nvme") || !strcmp(devs[i].kind, "block") ||
			      !strcmp(devs[i].kind, "gpu") || !strcmp(devs[i].kind, "coproc"),
			      "%s: kind %s", devs[i].name, devs[i].kind);

	fx_setup(&fx);
	ck_assert_int_eq(moe_topo_path(fx.path, &d), 0);
	ck_assert_uint_gt(strlen(d.name), 0);
	node = moe_topo_path_node(fx.path);
	ck_assert_msg(node >= 0 || node == -ENOENT, "%d", node);
	if (ti.n_numa == 1)
		ck_assert_int_eq(node, nodes[0].node);
	ck_assert_int_eq(moe_topo_path("/dev/shm", &d), -ENOENT);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "not on a block device"));
	fx_teardown(&fx);
}
END_TEST

/* moe-bench io and moectl topo: the JSON keys scripts read, and fallbacks reported. */
START_TEST(tools_bench_and_topo)
{
	struct fixture fx;
	char cmd[1024], *out = NULL;
	double e = 0, p = 0;
	const char *q;

	fx_setup(&fx);
	snprintf(cmd, sizeof(cmd), "%s io --json --no-drop-caches --size 1M --qd 8 %s",
		 tu_bin("moe-bench"), fx.path);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	for (unsigned i = 0; i < 4; i++) {
		static const char *const keys[] = { "\"engine_gbps\": ", "\"pread_gbps\": ",
						     "\"mmap_gbps\": ", "\"engine_vs_pread\": " };

		q = strstr(out, keys[i]);
		ck_assert_msg(q, "%s missing in %s", keys[i], out);
		if (i == 0)
			e = strtod(q + strlen(keys[i]), NULL);
		if (i == 1)
			p = strtod(q + strlen(keys[i]), NULL);
	}
	ck_assert_msg(e > 0 && p > 0, "%s", out);
	ck_assert_ptr_nonnull(strstr(out, "io_uring, O_DIRECT"));
	free(out);

	/* A forced path and its report in the text output. */
	snprintf(cmd, sizeof(cmd), "%s io --no-drop-caches --size 256K --backend pread "
		 "--direct off %s", tu_bin("moe-bench"), fx.path);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 0);
	ck_assert_msg(strstr(out, "engine: pread workers, buffered") &&
		      strstr(out, "engine/pread") && strstr(out, "topology: file on "), "%s", out);
	free(out);

	snprintf(cmd, sizeof(cmd), "%s io --size 100M %s", tu_bin("moe-bench"), fx.path);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "give a smaller --size"));
	free(out);

	snprintf(cmd, sizeof(cmd), "%s topo --json %s", tu_bin("moectl"), fx.path);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	ck_assert_msg(strstr(out, "\"numa_nodes\": [{\"node\": ") && strstr(out, "\"devices\": [") &&
		      strstr(out, "\"path\": {"), "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s topo", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	ck_assert_msg(strstr(out, "NUMA node") && strstr(out, "devices:"), "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s topo /nonexistent/x", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "/nonexistent/x"));
	free(out);
	fx_teardown(&fx);
}
END_TEST

/* ------------------------------------------------------------ priority */

struct order {
	pthread_mutex_t mu;
	int seq[64];          /* job index in completion order */
	int n;
};

struct ojob {
	struct job j;
	struct order *o;
	int idx;
};

static void ojob_cb(void *arg, int64_t res, void *interior)
{
	struct ojob *oj = arg;

	job_cb(&oj->j, res, interior);
	pthread_mutex_lock(&oj->o->mu);
	oj->o->seq[oj->o->n++] = oj->idx;
	pthread_mutex_unlock(&oj->o->mu);
}

static void oread(struct moe_io *io, struct ojob *oj, struct order *o, int idx, uint64_t off,
		  uint64_t len, uint32_t flags)
{
	prep_job(io, &oj->j, off, len, true);
	oj->o = o;
	oj->idx = idx;
	ck_assert_int_eq(moe_io_read_flags(io, off, len, oj->j.dst, oj->j.cap, flags, ojob_cb, oj),
			 0);
}

static void wait_all(struct moe_io *io, struct order *o, int n)
{
	while (o->n < n)
		ck_assert_int_ge(moe_io_wait(io, 1), 0);
}

/*
 * Queued demand reads start before every queued low-priority read: with one
 * read in flight at a time, all demand reads complete first, whatever the
 * order they were queued in; low-priority reads alone keep a quarter of the
 * queue depth free.
 */
static void run_priority(const struct fixture *fx, enum moe_io_backend b)
{
	struct moe_io *io = open_io(fx->path, b, MOE_IO_DIRECT_AUTO, 1, 0);
	struct order o = { .mu = PTHREAD_MUTEX_INITIALIZER };
	struct ojob jobs[24];

	for (int i = 0; i < 12; i++)
		oread(io, &jobs[i], &o, i, (uint64_t)i * 70000, 65536 + i, i % 3 ? MOE_IO_READ_LOW : 0);
	ck_assert_int_eq(moe_io_submit(io), 0);
	wait_all(io, &o, 12);
	for (int i = 0; i < 4; i++)
		ck_assert_msg(o.seq[i] % 3 == 0, "completion %d is low-priority read %d", i, o.seq[i]);
	for (int i = 0; i < 12; i++) {
		check_job(fx, &jobs[i].j);
		free_job(io, &jobs[i].j);
	}
	moe_io_destroy(io);

	io = open_io(fx->path, b, MOE_IO_DIRECT_AUTO, 8, 0);
	o.n = 0;
	for (int i = 0; i < 20; i++)
		oread(io, &jobs[i], &o, i, (uint64_t)i * 300000, 250000, MOE_IO_READ_LOW);
	ck_assert_int_eq(moe_io_submit(io), 0);
	pthread_mutex_lock(&io->lock);
	ck_assert_uint_le(io->low_inflight, 6);
	ck_assert_uint_le(io->inflight, 6);
	pthread_mutex_unlock(&io->lock);
	for (int i = 20; i < 22; i++)
		oread(io, &jobs[i], &o, i, (uint64_t)i * 300000, 1000, 0);
	ck_assert_int_eq(moe_io_submit(io), 0);
	wait_all(io, &o, 22);
	for (int i = 0; i < 22; i++) {
		check_job(fx, &jobs[i].j);
		free_job(io, &jobs[i].j);
	}
	moe_io_destroy(io);
}

START_TEST(priority_uring)
{
	struct fixture fx;

	fx_setup(&fx);
	run_priority(&fx, MOE_IO_URING);
	fx_teardown(&fx);
}
END_TEST

START_TEST(priority_pread)
{
	struct fixture fx;

	fx_setup(&fx);
	run_priority(&fx, MOE_IO_PREAD);
	fx_teardown(&fx);
}
END_TEST

/*
 * Cancelling and promoting queued low-priority reads, on a slow disk (the
 * pread backend sleeping before each read) with one read in flight, so what
 * has started and what still waits is known.
 */
START_TEST(cancel_and_promote)
{
	struct fixture fx;
	struct moe_io *io;
	struct order o = { .mu = PTHREAD_MUTEX_INITIALIZER };
	struct ojob j[8];
	struct moe_io_stats st;
	void *args[2];

	fx_setup(&fx);
	moe_io_fault_delay_us = 100000;
	io = open_io(fx.path, MOE_IO_PREAD, MOE_IO_DIRECT_AUTO, 1, 0);
	ck_assert_int_eq(moe_io_read_flags(io, 0, 10, NULL, 0, 0x10, job_cb, &j[0].j), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "unknown read flags"));
	/* 0 starts at once; 1..4 wait behind it */
	for (int i = 0; i < 5; i++)
		oread(io, &j[i], &o, i, (uint64_t)i * 40960, 4096, MOE_IO_READ_LOW);
	ck_assert_int_eq(moe_io_submit(io), 0);
	/* the started read makes a list fail as a whole; nothing is cancelled */
	args[0] = &j[0];
	args[1] = &j[1];
	ck_assert_int_eq(moe_io_cancel_low(io, ojob_cb, args, 2), 0);
	args[0] = &j[1];
	ck_assert_int_eq(moe_io_cancel_low(io, ojob_cb, args, 1), 1);
	ck_assert_int_ge(moe_io_poll(io), 1);
	ck_assert_int_eq(j[1].j.calls, 1);
	ck_assert_int_eq(j[1].j.res, -ECANCELED);
	/* 4 becomes a demand read and overtakes 2 and 3 */
	args[0] = &j[4];
	ck_assert_int_eq(moe_io_promote(io, ojob_cb, args, 1), 1);
	wait_all(io, &o, 3);
	ck_assert_int_eq(o.seq[0] + o.seq[1], 1);
	ck_assert_int_eq(o.seq[2], 4);
	/* every remaining low-priority read of the callback; 3 may have started by now */
	ck_assert_int_ge(moe_io_cancel_low(io, ojob_cb, NULL, 0), 0);
	wait_all(io, &o, 5);
	ck_assert_int_eq(j[0].j.res, 4096);
	ck_assert_int_eq(j[4].j.res, 4096);
	moe_io_get_stats(io, &st);
	ck_assert_uint_eq(st.errors, 0);
	for (int i = 0; i < 5; i++) {
		if (j[i].j.res >= 0)
			check_job(&fx, &j[i].j);
		free_job(io, &j[i].j);
	}
	/* a read split in pieces is not cancelled once its first piece runs */
	o.n = 0;
	moe_io_destroy(io);
	io = open_io(fx.path, MOE_IO_PREAD, MOE_IO_DIRECT_AUTO, 1, 64 * 1024);
	oread(io, &j[0], &o, 0, 0, 512 * 1024, MOE_IO_READ_LOW);
	ck_assert_int_eq(moe_io_submit(io), 0);
	ck_assert_int_eq(moe_io_cancel_low(io, NULL, NULL, 0), 0);
	wait_all(io, &o, 1);
	check_job(&fx, &j[0].j);
	free_job(io, &j[0].j);
	moe_io_fault_delay_us = 0;
	moe_io_destroy(io);
	fx_teardown(&fx);
}
END_TEST

Suite *suite_io(void)
{
	Suite *s = suite_create("io");
	TCase *tc = tcase_create("io");
	char *public_dir;

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, every_path_matches_pread);
	tcase_add_test(tc, sync_span_and_bad_input);
	tcase_add_test(tc, staging_pool);
	tcase_add_test(tc, threads_uring);
	tcase_add_test(tc, threads_pread_engine_callbacks);
	tcase_add_test(tc, threads_uring_engine_callbacks);
	tcase_add_test(tc, engine_thread_wait);
	tcase_add_test(tc, close_inflight_uring);
	tcase_add_test(tc, close_inflight_pread);
	tcase_add_test(tc, truncated_while_open);
	tcase_add_test(tc, media_error);
	tcase_add_test(tc, bad_descriptor);
	public_dir = geteuid() == 0 ? tu_tmpdir_public() : NULL;
	if (public_dir) {
		tu_rmtree(public_dir);
		free(public_dir);
		tcase_add_test(tc, unreadable_file);
		tcase_add_test(tc, memlock_limited);
	} else if (geteuid() == 0) {
		tu_skip("io/unreadable_file", "no directory another user can reach: neither the "
			"build tree nor /var/tmp");
		tu_skip("io/memlock_limited", "no directory another user can reach: neither the "
			"build tree nor /var/tmp");
	} else {
		tu_skip("io/unreadable_file", "needs root to drop to another user; as a plain "
			"user the file's own owner could read it");
		tu_skip("io/memlock_limited", "needs root to drop to a user without CAP_IPC_LOCK");
	}
	if (access("/dev/shm", W_OK) == 0)
		tcase_add_test(tc, tmpfs_buffered);
	else
		tu_skip("io/tmpfs_buffered", "no writable tmpfs at /dev/shm");
	tcase_add_test(tc, direct_refused);
	tcase_add_test(tc, uring_refused);
	tcase_add_test(tc, topology);
	tcase_add_test(tc, tools_bench_and_topo);
	tcase_add_test(tc, priority_uring);
	tcase_add_test(tc, priority_pread);
	tcase_add_test(tc, cancel_and_promote);
	suite_add_tcase(s, tc);
	return s;
}
