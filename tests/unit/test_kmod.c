/* SPDX-License-Identifier: MIT */
/*
 * The moe.ko client without the driver: the extent table it registers, the
 * errors that say what to do when moe.ko is not loaded, and the engine
 * backend against a stand-in driver whose batches can be made late.  The
 * driver itself is tested under QEMU (make vm-check).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "io/kmod.h"
#include "testutil.h"
#include "util/util.h"

#define MIB (1ull << 20)

static char *make_model(char **dir)
{
	static char path[4096];
	char cmd[8192];

	*dir = tu_tmpdir();
	snprintf(path, sizeof(path), "%s/m.gguf", *dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --layers 3 --experts 4 -o %s",
		 tu_bin("moe-mkmodel"), path);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	return path;
}

START_TEST(kmod_expert_extents)
{
	struct moe_kmod k = { .fd = -1, .align = 4096, .max_batch = 64, .max_extents = 1000 };
	struct moe_model_summary sum;
	struct drm_moe_extent *ext;
	struct moe_model *m;
	char *dir, *path = make_model(&dir);
	uint32_t n, i = 0;

	ck_assert_int_eq(moe_model_open(path, &m), 0);
	ck_assert_int_eq(moe_model_summary(m, &sum), 0);
	ck_assert_int_eq(moe_kmod_expert_extents(&k, m, sum.file_bytes, &ext, &n), 0);
	/* qwen3moe: gate, up, down per expert on every layer. */
	ck_assert_uint_eq(n, 3 * 4 * 3);
	for (uint32_t l = 0; l < 3; l++) {
		for (uint32_t e = 0; e < 4; e++) {
			struct moe_expert ex;

			ck_assert_int_eq(moe_model_expert(m, l, e, &ex), 0);
			for (uint32_t j = 0; j < ex.n_mats; j++, i++) {
				const struct moe_extent *x = &ex.mats[j];

				ck_assert_uint_eq(ext[i].offset % 4096, 0);
				ck_assert_uint_eq(ext[i].length % 4096, 0);
				ck_assert_uint_le(ext[i].offset, x->offset);
				ck_assert_uint_ge(ext[i].offset + ext[i].length, x->offset + x->bytes);
				ck_assert_uint_lt(x->offset - ext[i].offset, 4096);
				ck_assert_uint_le(ext[i].offset + ext[i].length,
						  (sum.file_bytes + 4095) / 4096 * 4096);
			}
		}
	}
	ck_assert_uint_eq(i, n);
	free(ext);

	k.max_extents = 10;
	ck_assert_int_eq(moe_kmod_expert_extents(&k, m, sum.file_bytes, &ext, &n), -E2BIG);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "max_extents"));
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(kmod_no_driver)
{
	struct moe_kmod_model_info info;
	struct moe_kmod *k = (void *)1;

	ck_assert_int_eq(moe_kmod_open(&k), -ENODEV);
	ck_assert_ptr_null(k);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "modprobe moe"));
	ck_assert_int_eq(moe_kmod_open(NULL), -EINVAL);
	ck_assert_int_eq(moe_kmod_find(NULL, "x", &info), -EINVAL);
	ck_assert_int_eq(moe_kmod_next(NULL, 0, &info), -EINVAL);
	ck_assert_int_eq(moe_kmod_register(NULL, "x", NULL, NULL), -EINVAL);
	ck_assert_int_eq(moe_kmod_unregister(NULL, "x"), -EINVAL);
	ck_assert_int_eq(moe_kmod_warm(NULL, "x", NULL, NULL), -EINVAL);
	moe_kmod_destroy(NULL);
}
END_TEST

START_TEST(kmod_moectl_no_driver)
{
	char cmd[4096], *out = NULL;

	snprintf(cmd, sizeof(cmd), "%s status", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "moe.ko is not loaded: run `modprobe moe`"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s unload", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
	snprintf(cmd, sizeof(cmd), "%s load onlyname", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
	/* A broken model is refused before the driver is even looked for. */
	snprintf(cmd, sizeof(cmd), "%s load x /nonexistent/model.gguf", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "/nonexistent/model.gguf"));
	free(out);
}
END_TEST

/*
 * A stand-in for moe.ko: one registered model (the test file, two extents
 * over its first 8 MiB), a BO in ordinary memory, and FETCH done at once
 * unless the batch is to be late.  A late batch's WAIT fails with -ETIME
 * and its "DMA" lands only when the test lets it; the stand-in counts every
 * request aimed at a BO range a late batch may still write.
 */
#define FK_BATCHES	256
#define FK_REQS		64

struct fk_batch {
	bool live;               /* not collected by WAIT */
	bool late;               /* DMA not done yet */
	bool low;                /* DRM_MOE_FETCH_LOW: CANCEL can take it back while late */
	uint64_t ticket;
	uint32_t n;
	int64_t *results;
	struct { uint64_t bo_off, len, pos; int64_t res; uint8_t *dst; uint32_t handle; } r[FK_REQS];
};

/* The stand-in's userptr BOs (handles from 100): the process memory FETCH lands in. */
#define FK_UBOS 16

static struct {
	pthread_mutex_t mu;
	int fd;
	struct stat st;
	struct drm_moe_extent ext2[2];  /* the two extents most tests register */
	const struct drm_moe_extent *ext;
	uint32_t n_ext, n_meta;
	struct moe_kmod k;
	uint8_t *bo;
	uint64_t bo_size;
	unsigned make_late;      /* the next this many batches are late */
	uint64_t next_ticket;
	struct fk_batch b[FK_BATCHES];
	unsigned overlaps;
	unsigned fetched;
	unsigned low_batches;    /* FETCHes with DRM_MOE_FETCH_LOW */
	unsigned late_wait_us;   /* how long a WAIT with a timeout takes on a late batch */
	unsigned cancels;
	unsigned ticket_cancels; /* batches CANCEL took back by ticket */
	unsigned etime;
	unsigned live_at_close;
	struct { uint32_t handle; uint8_t *base; uint64_t size; } ubo[FK_UBOS];
	uint32_t next_ubo;
	unsigned ubos_made;
	int ubo_fail;            /* what BO_USERPTR of memory outside the pool returns, 0: works */
	uint8_t *pool_lo, *pool_hi;   /* the first userptr BOs: the staging pool */
} fk = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void fk_dma(struct fk_batch *b)
{
	for (uint32_t i = 0; i < b->n; i++) {
		ssize_t r = pread(fk.fd, b->r[i].dst, b->r[i].len, (off_t)b->r[i].pos);

		b->r[i].res = r < 0 ? -errno : r;
		if (r >= 0 && (uint64_t)r < b->r[i].len)
			memset(b->r[i].dst + r, 0, b->r[i].len - (uint64_t)r);
	}
	b->late = false;
}

static unsigned fk_live(void)
{
	unsigned n = 0;

	pthread_mutex_lock(&fk.mu);
	for (unsigned i = 0; i < FK_BATCHES; i++)
		n += fk.b[i].live;
	pthread_mutex_unlock(&fk.mu);
	return n;
}

/* The late batches' DMA ends now; WAIT collects them from here on. */
static void fk_finish_late(void)
{
	pthread_mutex_lock(&fk.mu);
	for (unsigned i = 0; i < FK_BATCHES; i++)
		if (fk.b[i].live && fk.b[i].late)
			fk_dma(&fk.b[i]);
	pthread_mutex_unlock(&fk.mu);
}

static void fk_two_extents(void)
{
	fk.ext2[0] = (struct drm_moe_extent){ .offset = 0, .length = 4 * MIB };
	fk.ext2[1] = (struct drm_moe_extent){ .offset = 4 * MIB, .length = 4 * MIB };
	fk.ext = fk.ext2;
	fk.n_ext = 2;
	fk.n_meta = 0;
}

static void fk_reset(void)
{
	memset(fk.b, 0, sizeof(fk.b));
	fk.next_ticket = 0;
	fk.overlaps = fk.fetched = fk.etime = fk.live_at_close = 0;
	fk.low_batches = fk.cancels = fk.late_wait_us = fk.ticket_cancels = 0;
	fk.ubos_made = 0;
	fk.ubo_fail = 0;
	fk.pool_lo = fk.pool_hi = NULL;
}

static int fk_open(struct moe_kmod **out)
{
	fk.k = (struct moe_kmod){ .fd = -1, .align = 4096, .max_batch = FK_REQS,
				  .max_extents = 16, .max_bo = 1ull << 30 };
	*out = &fk.k;
	return 0;
}

static void fk_close(struct moe_kmod *k)
{
	ck_assert_ptr_eq(k, &fk.k);
	fk.live_at_close = fk_live();
}

static int fk_info(struct moe_kmod *k, uint32_t id, struct drm_moe_model_info *info,
		   struct drm_moe_extent *ext, uint32_t cap)
{
	(void)k;
	if (id != 7)
		return -ENOENT;
	memset(info, 0, sizeof(*info));
	info->model_id = 7;
	snprintf(info->name, sizeof(info->name), "fake");
	info->n_extents = fk.n_ext;
	info->n_meta = fk.n_meta;
	info->file_size = (uint64_t)fk.st.st_size;
	info->file_ino = fk.st.st_ino;
	info->file_dev_major = major(fk.st.st_dev);
	info->file_dev_minor = minor(fk.st.st_dev);
	for (uint32_t i = 0; ext && i < cap && i < fk.n_ext; i++)
		ext[i] = fk.ext[i];
	return 0;
}

static int fk_find(struct moe_kmod *k, const char *name, struct drm_moe_model_info *info)
{
	if (strcmp(name, "fake"))
		return moe_err(ENOENT, "no model named '%s' is registered with moe.ko", name);
	return fk_info(k, 7, info, NULL, 0);
}

static int fk_next(struct moe_kmod *k, uint32_t after, struct moe_kmod_model_info *out)
{
	(void)k;
	if (after >= 7)
		return -ENOENT;
	memset(out, 0, sizeof(*out));
	out->id = 7;
	return 0;
}

static int fk_bo_create(struct moe_kmod *k, uint64_t size, struct moe_kmod_bo *bo)
{
	void *p = NULL;

	(void)k;
	ck_assert_ptr_null(fk.bo);
	ck_assert_int_eq(posix_memalign(&p, 4096, size), 0);
	fk.bo = p;
	fk.bo_size = size;
	*bo = (struct moe_kmod_bo){ .handle = 1, .size = size, .map = p };
	return 0;
}

static int fk_bo_userptr(struct moe_kmod *k, void *addr, uint64_t size, struct moe_kmod_bo *bo)
{
	uint8_t *p = addr;

	(void)k;
	ck_assert_uint_eq((uintptr_t)addr % 4096, 0);
	ck_assert_uint_eq(size % 4096, 0);
	ck_assert_uint_gt(size, 0);
	if (fk.ubo_fail && fk.pool_lo && (p < fk.pool_lo || p >= fk.pool_hi))
		return fk.ubo_fail;
	pthread_mutex_lock(&fk.mu);
	for (unsigned i = 0; i < FK_UBOS; i++) {
		if (fk.ubo[i].handle)
			continue;
		fk.ubo[i].handle = 100 + fk.next_ubo++;
		fk.ubo[i].base = p;
		fk.ubo[i].size = size;
		fk.ubos_made++;
		*bo = (struct moe_kmod_bo){ .handle = fk.ubo[i].handle, .size = size, .map = p,
					    .user = true };
		pthread_mutex_unlock(&fk.mu);
		return 0;
	}
	pthread_mutex_unlock(&fk.mu);
	ck_abort_msg("more than %d userptr BOs at once", FK_UBOS);
	return -ENOSPC;
}

static unsigned fk_ubos_live(void)
{
	unsigned n = 0;

	for (unsigned i = 0; i < FK_UBOS; i++)
		n += fk.ubo[i].handle != 0;
	return n;
}

static void fk_bo_destroy(struct moe_kmod *k, struct moe_kmod_bo *bo)
{
	(void)k;
	if (bo->user) {
		pthread_mutex_lock(&fk.mu);
		for (unsigned i = 0; i < FK_UBOS; i++)
			if (fk.ubo[i].handle == bo->handle)
				fk.ubo[i].handle = 0;
		pthread_mutex_unlock(&fk.mu);
		memset(bo, 0, sizeof(*bo));
		return;
	}
	free(fk.bo);
	fk.bo = NULL;
	memset(bo, 0, sizeof(*bo));
}

static int fk_fetch(struct moe_kmod *k, const struct drm_moe_fetch_req *reqs, uint32_t n,
		    uint32_t flags, int64_t *results, uint64_t *ticket)
{
	struct fk_batch *b = NULL;

	(void)k;
	ck_assert_uint_eq(flags & ~DRM_MOE_FETCH_FLAGS, 0);
	fk.low_batches += !!(flags & DRM_MOE_FETCH_LOW);
	ck_assert_uint_gt(n, 0);
	ck_assert_uint_le(n, FK_REQS);
	pthread_mutex_lock(&fk.mu);
	for (unsigned i = 0; i < FK_BATCHES && !b; i++)
		if (!fk.b[i].live)
			b = &fk.b[i];
	ck_assert_ptr_nonnull(b);
	memset(b, 0, sizeof(*b));
	for (uint32_t i = 0; i < n; i++) {
		const struct drm_moe_fetch_req *r = &reqs[i];
		const struct drm_moe_extent *e;

		ck_assert_uint_eq(r->model_id, 7);
		ck_assert_uint_lt(r->extent, fk.n_ext);
		e = &fk.ext[r->extent];
		ck_assert_uint_eq(r->offset % 4096, 0);
		ck_assert_uint_eq(r->bo_offset % 4096, 0);
		ck_assert_uint_gt(r->length, 0);
		ck_assert_uint_le(r->offset + r->length, e->length);
		if (r->handle == 1) {
			ck_assert_uint_le(r->bo_offset + r->length, fk.bo_size);
			b->r[i].dst = fk.bo + r->bo_offset;
		} else {
			unsigned u = 0;

			while (u < FK_UBOS && fk.ubo[u].handle != r->handle)
				u++;
			ck_assert_msg(u < FK_UBOS, "FETCH into unknown handle %u", r->handle);
			ck_assert_uint_le(r->bo_offset + r->length, fk.ubo[u].size);
			b->r[i].dst = fk.ubo[u].base + r->bo_offset;
		}
		b->r[i].handle = r->handle;
		for (unsigned j = 0; j < FK_BATCHES && r->handle == 1; j++) {
			const struct fk_batch *o = &fk.b[j];

			for (uint32_t q = 0; o->live && o->late && q < o->n; q++)
				fk.overlaps += o->r[q].handle == 1 &&
					       r->bo_offset < o->r[q].bo_off + o->r[q].len &&
					       o->r[q].bo_off < r->bo_offset + r->length;
		}
		b->r[i].bo_off = r->bo_offset;
		b->r[i].len = r->length;
		b->r[i].pos = e->offset + r->offset;
	}
	b->live = true;
	b->low = flags & DRM_MOE_FETCH_LOW;
	b->n = n;
	b->results = results;
	b->ticket = *ticket = ++fk.next_ticket;
	fk.fetched += n;
	if (fk.make_late) {
		fk.make_late--;
		b->late = true;
	} else {
		fk_dma(b);
	}
	pthread_mutex_unlock(&fk.mu);
	return 0;
}

static int fk_wait(struct moe_kmod *k, uint64_t ticket, double timeout_s, uint32_t *failed)
{
	int ret = -ENOENT;

	(void)k;
	pthread_mutex_lock(&fk.mu);
	for (unsigned i = 0; i < FK_BATCHES; i++) {
		struct fk_batch *b = &fk.b[i];

		if (!b->live || b->ticket != ticket)
			continue;
		if (b->late) {
			/* As if the deadline passed with the device still busy. */
			if (timeout_s > 0 && fk.late_wait_us) {
				pthread_mutex_unlock(&fk.mu);
				usleep(fk.late_wait_us);
				pthread_mutex_lock(&fk.mu);
			}
			if (b->late) {
				fk.etime++;
				ret = -ETIME;
				break;
			}
		}
		/* The results land in the caller's array at WAIT, as with moe.ko. */
		for (uint32_t q = 0; q < b->n; q++)
			b->results[q] = b->r[q].res;
		if (failed)
			*failed = 0;
		b->live = false;
		ret = 0;
		break;
	}
	pthread_mutex_unlock(&fk.mu);
	return ret;
}

/* Ticket 0: counted only.  A ticket: its batch, while late and low, ends unread. */
static int fk_cancel(struct moe_kmod *k, uint64_t ticket, uint32_t *cancelled)
{
	int ret = ticket ? -ENOENT : 0;

	(void)k;
	if (cancelled)
		*cancelled = 0;
	if (!ticket) {
		fk.cancels++;
		return 0;
	}
	pthread_mutex_lock(&fk.mu);
	for (unsigned i = 0; i < FK_BATCHES; i++) {
		struct fk_batch *b = &fk.b[i];

		if (!b->live || b->ticket != ticket)
			continue;
		ret = 0;
		if (b->late && b->low) {
			for (uint32_t q = 0; q < b->n; q++)
				b->r[q].res = -ECANCELED;
			b->late = false;
			fk.ticket_cancels++;
			if (cancelled)
				*cancelled = 1;
		}
	}
	pthread_mutex_unlock(&fk.mu);
	return ret;
}

static const struct moe_kmod_client fk_client = {
	.open = fk_open, .close = fk_close, .next = fk_next, .find = fk_find, .info = fk_info,
	.bo_create = fk_bo_create, .bo_destroy = fk_bo_destroy, .fetch = fk_fetch,
	.wait = fk_wait, .cancel = fk_cancel,
};

/* The same driver with BO_USERPTR (uAPI 2.3): reads land in the engine's buffers. */
static const struct moe_kmod_client fk_client_zc = {
	.open = fk_open, .close = fk_close, .next = fk_next, .find = fk_find, .info = fk_info,
	.bo_create = fk_bo_create, .bo_userptr = fk_bo_userptr, .bo_destroy = fk_bo_destroy,
	.fetch = fk_fetch, .wait = fk_wait, .cancel = fk_cancel,
};

static uint8_t fk_byte(uint64_t i)
{
	return (uint8_t)(i * 2654435761u >> 13);
}

static void fk_check_read(struct moe_io *io, uint64_t off, uint64_t len, int want)
{
	uint64_t cap = moe_io_span(io, off, len);
	void *dst = NULL, *interior = NULL;
	int ret;

	ck_assert_int_eq(posix_memalign(&dst, 4096, cap), 0);
	ret = moe_io_read_sync(io, off, len, dst, cap, &interior);
	ck_assert_msg(ret == want, "read [%llu, +%llu): %d, want %d (%s)",
		      (unsigned long long)off, (unsigned long long)len, ret, want, moe_errmsg());
	if (!ret) {
		uint8_t *want = malloc(len);
		uint64_t i = 0;

		ck_assert_ptr_nonnull(want);
		for (uint64_t j = 0; j < len; j++)
			want[j] = fk_byte(off + j);
		while (i < len && ((uint8_t *)interior)[i] == want[i])
			i++;
		ck_assert_msg(i == len, "byte %llu of the file differs",
			      (unsigned long long)(off + i));
		free(want);
	}
	free(dst);
}

/*
 * A batch whose WAIT fails keeps its bounce-BO slots until the driver
 * finishes it: no later request is aimed at them meanwhile, the reads that
 * follow still succeed, and once the late DMA is done the batch is
 * collected (ticket and pending count settled) and the slots serve again.
 */
START_TEST(kmod_late_batch_keeps_slots)
{
	struct moe_io_params o;
	struct moe_io *io = NULL;
	char *dir = tu_tmpdir(), path[4096];
	uint64_t size = 9 * MIB, seed = 14;
	uint8_t *data = malloc(size);
	unsigned before;

	ck_assert_ptr_nonnull(data);
	for (uint64_t i = 0; i < size; i++)
		data[i] = fk_byte(i);
	snprintf(path, sizeof(path), "%s/model.bin", dir);
	ck_assert_int_eq(tu_write_file(path, data, size), 0);
	free(data);
	fk.fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fk.fd, 0);
	ck_assert_int_eq(fstat(fk.fd, &fk.st), 0);
	fk_two_extents();

	moe_kmod_io_client = &fk_client;
	moe_io_params_init(&o);
	o.backend = MOE_IO_KMOD;
	o.direct = MOE_IO_DIRECT_OFF;
	o.queue_depth = 4;
	o.max_request = 256 * 1024;
	ck_assert_msg(moe_io_open(path, &o, &io) == 0, "%s", moe_errmsg());

	fk_reset();
	fk.make_late = 1;
	fk_check_read(io, 8192, 300000, -ETIME);
	ck_assert_uint_ge(fk.etime, 1);
	ck_assert_uint_eq(fk_live(), 1);

	/* The late batch's slots are off limits; the rest of the queue still works. */
	for (int i = 0; i < 40; i++) {
		uint64_t off = tu_rand(&seed) % (size - 1), len = 1 + tu_rand(&seed) % MIB;

		fk_check_read(io, off, len < size - off ? len : size - off, 0);
	}
	ck_assert_uint_eq(fk.overlaps, 0);
	ck_assert_uint_eq(fk_live(), 1);

	fk_finish_late();
	for (int i = 0; i < 500 && fk_live(); i++)
		usleep(10000);
	ck_assert_uint_eq(fk_live(), 0);

	/* All four slots are free again: one read of four pieces goes through the driver. */
	before = fk.fetched;
	fk_check_read(io, 4 * MIB, MIB, 0);
	ck_assert_uint_eq(fk.fetched - before, 4);
	ck_assert_uint_eq(fk.overlaps, 0);
	moe_io_destroy(io);
	ck_assert_uint_eq(fk.live_at_close, 0);
	moe_kmod_io_client = &moe_kmod_client_driver;
	close(fk.fd);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* A late batch still running at close is left to the driver (closing the node collects it). */
START_TEST(kmod_late_batch_at_close)
{
	struct moe_io_params o;
	struct moe_io *io = NULL;
	char *dir = tu_tmpdir(), path[4096];
	uint64_t size = 8 * MIB;
	uint8_t *data = malloc(size);

	ck_assert_ptr_nonnull(data);
	for (uint64_t i = 0; i < size; i++)
		data[i] = fk_byte(i);
	snprintf(path, sizeof(path), "%s/model.bin", dir);
	ck_assert_int_eq(tu_write_file(path, data, size), 0);
	free(data);
	fk.fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fk.fd, 0);
	ck_assert_int_eq(fstat(fk.fd, &fk.st), 0);
	fk_two_extents();
	moe_kmod_io_client = &fk_client;
	moe_io_params_init(&o);
	o.backend = MOE_IO_KMOD;
	o.direct = MOE_IO_DIRECT_OFF;
	o.queue_depth = 2;
	o.max_request = 128 * 1024;
	ck_assert_msg(moe_io_open(path, &o, &io) == 0, "%s", moe_errmsg());
	fk_reset();
	fk.make_late = 1;
	fk_check_read(io, 0, 256 * 1024, -ETIME);
	/* No slot left for the driver: served by pread, correct all the same. */
	fk_check_read(io, 5 * MIB, 3 * MIB, 0);
	ck_assert_uint_eq(fk.overlaps, 0);
	moe_io_destroy(io);
	ck_assert_uint_eq(fk.live_at_close, 1);
	ck_assert_uint_eq(fk.fetched, 2);
	moe_kmod_io_client = &moe_kmod_client_driver;
	close(fk.fd);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

static bool is_expert(uint32_t role)
{
	return role >= MOE_ROLE_EXPERT_GATE && role <= MOE_ROLE_EXPERT_GATE_UP;
}

/*
 * The table MODEL_REGISTER gets: extent 0 is the header from offset 0, the
 * other metadata extents hold every tensor besides the experts (each in one
 * extent, none overlapping another), then the expert extents as before.
 */
START_TEST(kmod_model_extents)
{
	struct moe_kmod k = { .fd = -1, .align = 4096, .max_batch = 64, .max_extents = 1000,
			      .max_bo = 1ull << 30 };
	struct moe_model_summary sum;
	struct drm_moe_extent *ext, *exp;
	struct moe_model *m;
	char *dir, *path = make_model(&dir);
	uint32_t n, n_meta, n_exp;
	int nt;

	ck_assert_int_eq(moe_model_open(path, &m), 0);
	ck_assert_int_eq(moe_model_summary(m, &sum), 0);
	ck_assert_msg(moe_kmod_model_extents(&k, m, sum.file_bytes, &ext, &n, &n_meta) == 0, "%s",
		      moe_errmsg());
	ck_assert_int_eq(moe_kmod_expert_extents(&k, m, sum.file_bytes, &exp, &n_exp), 0);
	ck_assert_uint_ge(n_meta, 2);
	ck_assert_uint_eq(n, n_meta + n_exp);
	ck_assert(!memcmp(ext + n_meta, exp, n_exp * sizeof(*exp)));
	ck_assert_uint_eq(ext[0].offset, 0);
	for (uint32_t i = 0; i < n_meta; i++) {
		ck_assert_uint_eq(ext[i].offset % 4096, 0);
		ck_assert_uint_eq(ext[i].length % 4096, 0);
		ck_assert_uint_gt(ext[i].length, 0);
		for (uint32_t j = 0; j < i; j++)
			ck_assert(ext[i].offset >= ext[j].offset + ext[j].length ||
				  ext[j].offset >= ext[i].offset + ext[i].length);
	}
	nt = moe_model_tensor_count(m);
	for (int t = 0; t < nt; t++) {
		struct moe_tensor_info ti;
		unsigned in = 0;

		ck_assert_int_eq(moe_model_tensor(m, t, &ti), 0);
		if (is_expert(ti.role) || ti.role == MOE_ROLE_UNUSED || !ti.bytes)
			continue;
		for (uint32_t i = 0; i < n_meta; i++)
			in += ti.offset >= ext[i].offset &&
			      ti.offset + ti.bytes <= ext[i].offset + ext[i].length;
		ck_assert_msg(in == 1, "tensor %s lies in %u metadata extents", ti.name, in);
	}
	free(exp);
	free(ext);
	/* A limit that takes the experts but not the metadata too says so. */
	k.max_extents = n_exp;
	ck_assert_int_eq(moe_kmod_model_extents(&k, m, sum.file_bytes, &ext, &n, &n_meta), -E2BIG);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "metadata"));
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

static struct moe_ctx *byname_ctx(struct moe_model *m)
{
	struct moe_ctx_params p;
	struct moe_ctx *ctx = NULL;

	moe_ctx_params_init(&p);
	p.n_threads = 1;
	p.n_ctx = 64;
	p.state_dir = NULL;
	ck_assert_msg(moe_ctx_create(m, &p, &ctx) == 0, "moe_ctx_create: %s", moe_errmsg());
	return ctx;
}

/*
 * "moe:NAME" end to end against the stand-in driver: the model opens from
 * the header extent alone, an inference context reads every tensor through
 * the driver (the file's descriptor is the stand-in's, not libmoe's) and
 * its logits equal those of the same model opened by path.
 */
START_TEST(kmod_open_by_name)
{
	struct moe_kmod k = { .fd = -1, .align = 4096, .max_batch = 64, .max_extents = 1000,
			      .max_bo = 1ull << 30 };
	int32_t tok[6] = { 1, 7, 3, 11, 5, 2 };
	struct moe_model_summary sum;
	struct moe_hparams ha, hb;
	struct drm_moe_extent *ext;
	struct moe_model *a, *b;
	struct moe_ctx *ca, *cb;
	char *dir, *path = make_model(&dir);
	uint64_t ia, ib, sa, sb;
	uint32_t n, n_meta, vocab, before;

	ck_assert_int_eq(moe_model_open(path, &a), 0);
	ck_assert_int_eq(moe_model_summary(a, &sum), 0);
	ck_assert_int_eq(moe_kmod_model_extents(&k, a, sum.file_bytes, &ext, &n, &n_meta), 0);
	fk.fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fk.fd, 0);
	ck_assert_int_eq(fstat(fk.fd, &fk.st), 0);
	fk.ext = ext;
	fk.n_ext = n;
	fk.n_meta = n_meta;
	fk_reset();
	moe_kmod_io_client = &fk_client;

	ck_assert_msg(moe_model_open("moe:fake", &b) == 0, "%s", moe_errmsg());
	ck_assert_str_eq(moe_model_path(b), "moe:fake");
	ck_assert_int_eq(moe_model_hparams(a, &ha), 0);
	ck_assert_int_eq(moe_model_hparams(b, &hb), 0);
	ck_assert(!memcmp(&ha, &hb, sizeof(ha)));
	ck_assert_int_eq(moe_model_tensor_count(a), moe_model_tensor_count(b));
	for (int t = 0; t < moe_model_tensor_count(a); t++) {
		struct moe_tensor_info x, y;

		ck_assert_int_eq(moe_model_tensor(a, t, &x), 0);
		ck_assert_int_eq(moe_model_tensor(b, t, &y), 0);
		ck_assert_str_eq(x.name, y.name);
		ck_assert_uint_eq(x.offset, y.offset);
		ck_assert_uint_eq(x.bytes, y.bytes);
		ck_assert_uint_eq(x.role, y.role);
	}
	/* the same identity, so routing statistics saved for the file serve the name */
	ck_assert_int_eq(moe_model_identity(a, &sa, &ia), 0);
	ck_assert_msg(moe_model_identity(b, &sb, &ib) == 0, "%s", moe_errmsg());
	ck_assert_uint_eq(sa, sb);
	ck_assert_uint_eq(ia, ib);

	ca = byname_ctx(a);
	before = fk.fetched;
	cb = byname_ctx(b);
	/* every resident tensor and expert came through the driver */
	ck_assert_uint_gt(fk.fetched - before, n_meta);
	ck_assert_msg(moe_ctx_eval(ca, tok, 6, 0, MOE_EVAL_ALL_LOGITS) == 0, "%s", moe_errmsg());
	ck_assert_msg(moe_ctx_eval(cb, tok, 6, 0, MOE_EVAL_ALL_LOGITS) == 0, "%s", moe_errmsg());
	vocab = moe_ctx_n_vocab(ca);
	for (uint32_t i = 0; i < 6; i++)
		ck_assert_msg(!memcmp(moe_ctx_logits(ca, i), moe_ctx_logits(cb, i),
				      sizeof(float) * vocab), "position %u: logits differ", i);
	moe_ctx_destroy(cb);
	moe_ctx_destroy(ca);
	ck_assert_uint_eq(fk.overlaps, 0);
	moe_model_destroy(b);

	/* An unknown name, and a model registered without metadata, say what to do. */
	ck_assert_int_eq(moe_model_open("moe:other", &b), -ENOENT);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "no model named 'other'"));
	fk.n_meta = 0;
	ck_assert_int_eq(moe_model_open("moe:fake", &b), -EOPNOTSUPP);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "moectl load fake"));
	fk.n_meta = n_meta;
	moe_kmod_io_client = &moe_kmod_client_driver;
	close(fk.fd);
	free(ext);
	moe_model_destroy(a);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * An engine on "moe:NAME" reads nothing but registered extents: a read
 * outside them fails with -EACCES instead of falling back to the file, and
 * the userspace backends are refused by name.
 */
START_TEST(kmod_by_name_only_registered)
{
	struct moe_io_params o;
	struct moe_io *io = NULL;
	char *dir = tu_tmpdir(), path[4096];
	uint64_t size = 8 * MIB;
	uint8_t *data = malloc(size);

	ck_assert_ptr_nonnull(data);
	for (uint64_t i = 0; i < size; i++)
		data[i] = fk_byte(i);
	snprintf(path, sizeof(path), "%s/model.bin", dir);
	ck_assert_int_eq(tu_write_file(path, data, size), 0);
	free(data);
	fk.fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fk.fd, 0);
	ck_assert_int_eq(fstat(fk.fd, &fk.st), 0);
	fk.ext2[0] = (struct drm_moe_extent){ .offset = 0, .length = 64 * 1024 };
	fk.ext2[1] = (struct drm_moe_extent){ .offset = 4 * MIB, .length = 4 * MIB };
	fk.ext = fk.ext2;
	fk.n_ext = 2;
	fk.n_meta = 1;
	fk_reset();
	moe_kmod_io_client = &fk_client;
	moe_io_params_init(&o);
	o.backend = MOE_IO_PREAD;
	ck_assert_int_eq(moe_io_open("moe:fake", &o, &io), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "auto or kmod"));
	o.backend = MOE_IO_AUTO;
	o.queue_depth = 4;
	o.max_request = 256 * 1024;
	ck_assert_msg(moe_io_open("moe:fake", &o, &io) == 0, "%s", moe_errmsg());
	ck_assert_uint_eq(io->file_size, size);
	fk_check_read(io, 100, 5000, 0);
	fk_check_read(io, 5 * MIB + 17, MIB, 0);
	/* between the extents, and across the end of one */
	fk_check_read(io, 2 * MIB, 4096, -EACCES);
	fk_check_read(io, 60 * 1024, 8192, -EACCES);
	/* more pieces than slots: the rest wait for a slot, none fails */
	fk_check_read(io, 4 * MIB, 4 * MIB, 0);
	ck_assert_uint_eq(fk.overlaps, 0);
	moe_io_destroy(io);
	moe_kmod_io_client = &moe_kmod_client_driver;
	close(fk.fd);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

static void *finish_late_later(void *arg)
{
	(void)arg;
	usleep(300000);
	fk_finish_late();
	return NULL;
}

/* a read's done callback: its result into *arg */
static void store_res(void *arg, int64_t res, void *interior)
{
	(void)interior;
	*(int64_t *)arg = res;
}

/*
 * Zero-copy: the staging pool is registered as userptr BOs when it is made
 * and reads into it are fetched in place (no bounce BO, 0 bytes copied);
 * a buffer outside the pool gets a userptr BO for its FETCH alone, closed
 * right after; only memory the driver cannot pin is copied, and counted.
 * A late batch reading in place is never ended early: its read completes
 * once the driver is done, with the right bytes.
 */
START_TEST(kmod_zero_copy)
{
	struct moe_io_params o;
	struct moe_io_stats st;
	struct moe_io *io = NULL;
	char *dir = tu_tmpdir(), path[4096];
	uint64_t size = 9 * MIB, before, cap;
	uint8_t *data = malloc(size);
	void *dst, *interior;
	int64_t res = 1;
	pthread_t th;
	unsigned pool_bos;

	ck_assert_ptr_nonnull(data);
	for (uint64_t i = 0; i < size; i++)
		data[i] = fk_byte(i);
	snprintf(path, sizeof(path), "%s/model.bin", dir);
	ck_assert_int_eq(tu_write_file(path, data, size), 0);
	fk.fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fk.fd, 0);
	ck_assert_int_eq(fstat(fk.fd, &fk.st), 0);
	fk_two_extents();
	fk_reset();
	moe_kmod_io_client = &fk_client_zc;
	moe_io_params_init(&o);
	o.backend = MOE_IO_KMOD;
	o.direct = MOE_IO_DIRECT_OFF;
	o.queue_depth = 4;
	o.max_request = 256 * 1024;
	o.staging_bytes = 4 * MIB;
	ck_assert_msg(moe_io_open(path, &o, &io) == 0, "%s", moe_errmsg());
	ck_assert_uint_ge(moe_io_block(io), 4096);
	ck_assert_uint_eq(fk.ubos_made, 0);

	/* The pool: registered at its creation, read into in place. */
	cap = moe_io_span(io, 8192 + 100, MIB + 5000);
	ck_assert_int_eq(moe_io_alloc(io, cap, &dst), 0);
	pool_bos = fk_ubos_live();
	ck_assert_uint_ge(pool_bos, 1);
	fk.pool_lo = fk.ubo[0].base;
	fk.pool_hi = fk.ubo[0].base + fk.ubo[0].size;
	ck_assert((uint8_t *)dst >= fk.pool_lo && (uint8_t *)dst < fk.pool_hi);
	ck_assert_int_eq(moe_io_read_sync(io, 8192 + 100, MIB + 5000, dst, cap, &interior), 0);
	ck_assert_mem_eq(interior, data + 8192 + 100, MIB + 5000);
	ck_assert_uint_eq(fk.ubos_made, pool_bos);
	moe_io_get_stats(io, &st);
	ck_assert_uint_eq(st.bytes_copied, 0);
	ck_assert_uint_ge(fk.fetched, 5);

	/* Elsewhere: one userptr BO per piece, gone once FETCH has it. */
	fk_check_read(io, 3 * MIB + 4096, 700000, 0);
	ck_assert_uint_gt(fk.ubos_made, pool_bos);
	ck_assert_uint_eq(fk_ubos_live(), pool_bos);
	moe_io_get_stats(io, &st);
	ck_assert_uint_eq(st.bytes_copied, 0);

	/* Memory the driver cannot pin: the bounce BO, and every byte counted. */
	fk.ubo_fail = -EFAULT;
	before = fk.fetched;
	fk_check_read(io, 5 * MIB, 512 * 1024, 0);
	ck_assert_uint_gt(fk.fetched, before);
	moe_io_get_stats(io, &st);
	ck_assert_uint_eq(st.bytes_copied, 512 * 1024);
	fk.ubo_fail = 0;

	/* Late: the read waits for the driver instead of failing into live memory. */
	fk.make_late = 1;
	fk.late_wait_us = 50000;
	memset(dst, 0, cap);
	ck_assert_int_eq(moe_io_read(io, 2 * MIB, 200000, dst, cap, store_res, &res), 0);
	ck_assert_int_eq(pthread_create(&th, NULL, finish_late_later, NULL), 0);
	ck_assert_int_eq(moe_io_submit(io), 0);
	while (res == 1)
		ck_assert_int_ge(moe_io_wait(io, 1), 0);
	pthread_join(th, NULL);
	ck_assert_int_eq(res, 200000);
	ck_assert_uint_ge(fk.etime, 1);
	ck_assert_mem_eq(dst, data + 2 * MIB, 200000);
	moe_io_get_stats(io, &st);
	ck_assert_uint_eq(st.bytes_copied, 512 * 1024);

	moe_io_free(io, dst);
	moe_io_destroy(io);
	ck_assert_uint_eq(fk_ubos_live(), 0);
	ck_assert_uint_eq(fk.live_at_close, 0);
	moe_kmod_io_client = &moe_kmod_client_driver;
	free(data);
	close(fk.fd);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * moe_io_cancel_low() reaches prefetches the engine already handed to the
 * driver: one still queued there (late) is taken back by its ticket and
 * ends with -ECANCELED, counted as cancelled, not as an error; one the
 * driver already read is not; each prefetch is its own FETCH.
 */
START_TEST(kmod_cancel_low_reaches_driver)
{
	struct moe_io_params o;
	struct moe_io_stats st;
	struct moe_io *io = NULL;
	char *dir = tu_tmpdir(), path[4096];
	uint64_t size = 8 * MIB;
	uint8_t *data = malloc(size);
	int64_t r1 = 1, r2 = 1, r3 = 1;
	void *d1, *d2, *d3, *args[1];
	unsigned low0;

	ck_assert_ptr_nonnull(data);
	for (uint64_t i = 0; i < size; i++)
		data[i] = fk_byte(i);
	snprintf(path, sizeof(path), "%s/model.bin", dir);
	ck_assert_int_eq(tu_write_file(path, data, size), 0);
	free(data);
	fk.fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fk.fd, 0);
	ck_assert_int_eq(fstat(fk.fd, &fk.st), 0);
	fk_two_extents();
	fk_reset();
	moe_kmod_io_client = &fk_client;
	moe_io_params_init(&o);
	o.backend = MOE_IO_KMOD;
	o.direct = MOE_IO_DIRECT_OFF;
	o.queue_depth = 8;
	o.max_request = 256 * 1024;
	ck_assert_msg(moe_io_open(path, &o, &io) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(moe_io_alloc(io, MIB, &d1), 0);
	ck_assert_int_eq(moe_io_alloc(io, MIB, &d2), 0);
	ck_assert_int_eq(moe_io_alloc(io, MIB, &d3), 0);

	/* Read already: nothing to take back. */
	ck_assert_int_eq(moe_io_read_flags(io, 0, 512 * 1024, d1, MIB, MOE_IO_READ_LOW, store_res,
					   &r1), 0);
	ck_assert_int_eq(moe_io_submit(io), 0);
	while (r1 == 1)
		ck_assert_int_ge(moe_io_wait(io, 1), 0);
	ck_assert_int_eq(r1, 512 * 1024);
	args[0] = &r1;
	ck_assert_int_eq(moe_io_cancel_low(io, store_res, args, 1), 0);

	/* Two prefetches the driver holds queued (late): two FETCHes; one is taken back. */
	fk.make_late = 2;
	fk.late_wait_us = 200000;
	low0 = fk.low_batches;
	ck_assert_int_eq(moe_io_read_flags(io, MIB, 512 * 1024, d2, MIB, MOE_IO_READ_LOW,
					   store_res, &r2), 0);
	ck_assert_int_eq(moe_io_read_flags(io, 5 * MIB, 512 * 1024, d3, MIB, MOE_IO_READ_LOW,
					   store_res, &r3), 0);
	ck_assert_int_eq(moe_io_submit(io), 0);
	ck_assert_uint_eq(fk.low_batches - low0, 2);
	args[0] = &r2;
	ck_assert_int_eq(moe_io_cancel_low(io, store_res, args, 1), 1);
	ck_assert_uint_eq(fk.ticket_cancels, 1);
	while (r2 == 1)
		ck_assert_int_ge(moe_io_wait(io, 1), 0);
	ck_assert_int_eq(r2, -ECANCELED);
	/* the other one reads once the driver gets to it */
	fk_finish_late();
	while (r3 == 1)
		ck_assert_int_ge(moe_io_wait(io, 1), 0);
	ck_assert_int_eq(r3, 512 * 1024);
	ck_assert_uint_eq(((uint8_t *)d3)[0], fk_byte(5 * MIB));
	ck_assert_uint_eq(((uint8_t *)d3)[4097], fk_byte(5 * MIB + 4097));
	moe_io_get_stats(io, &st);
	ck_assert_uint_eq(st.errors, 0);
	moe_io_free(io, d1);
	moe_io_free(io, d2);
	moe_io_free(io, d3);
	moe_io_destroy(io);
	moe_kmod_io_client = &moe_kmod_client_driver;
	close(fk.fd);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * Prefetches (MOE_IO_READ_LOW) reach the driver as DRM_MOE_FETCH_LOW
 * batches, demand reads without the flag; an engine closing with pieces in
 * flight takes the driver's queued prefetches back (CANCEL).
 */
START_TEST(kmod_prefetch_low_priority)
{
	struct moe_io_params o;
	struct moe_io *io = NULL;
	char *dir = tu_tmpdir(), path[4096];
	uint64_t size = 8 * MIB;
	uint8_t *data = malloc(size);
	int64_t res = 1;
	void *dst;

	ck_assert_ptr_nonnull(data);
	for (uint64_t i = 0; i < size; i++)
		data[i] = fk_byte(i);
	snprintf(path, sizeof(path), "%s/model.bin", dir);
	ck_assert_int_eq(tu_write_file(path, data, size), 0);
	free(data);
	fk.fd = open(path, O_RDONLY | O_CLOEXEC);
	ck_assert_int_ge(fk.fd, 0);
	ck_assert_int_eq(fstat(fk.fd, &fk.st), 0);
	fk_two_extents();
	fk_reset();
	moe_kmod_io_client = &fk_client;
	moe_io_params_init(&o);
	o.backend = MOE_IO_KMOD;
	o.direct = MOE_IO_DIRECT_OFF;
	o.queue_depth = 4;
	o.max_request = 256 * 1024;
	ck_assert_msg(moe_io_open(path, &o, &io) == 0, "%s", moe_errmsg());
	fk_check_read(io, 4096, 300000, 0);
	ck_assert_uint_eq(fk.low_batches, 0);
	ck_assert_int_eq(moe_io_alloc(io, MIB, &dst), 0);
	ck_assert_int_eq(moe_io_read_flags(io, 2 * MIB, MIB, dst, MIB, MOE_IO_READ_LOW, store_res,
					   &res), 0);
	ck_assert_int_eq(moe_io_submit(io), 0);
	while (res == 1)
		ck_assert_int_ge(moe_io_wait(io, 1), 0);
	ck_assert_int_eq(res, (int64_t)MIB);
	ck_assert_uint_ge(fk.low_batches, 1);
	ck_assert_uint_eq(fk.cancels, 0);

	/* Closing with a prefetch still in the driver asks for it back. */
	fk.make_late = 1;
	fk.late_wait_us = 300000;
	res = 1;
	ck_assert_int_eq(moe_io_read_flags(io, 5 * MIB, MIB / 4, dst, MIB, MOE_IO_READ_LOW,
					   store_res, &res), 0);
	ck_assert_int_eq(moe_io_submit(io), 0);
	/* dst is still the late read's: the pool goes with the engine */
	moe_io_destroy(io);
	ck_assert_uint_eq(fk.cancels, 1);
	ck_assert_int_lt(res, 0);
	moe_kmod_io_client = &moe_kmod_client_driver;
	close(fk.fd);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

Suite *suite_kmod(void)
{
	Suite *s = suite_create("kmod");
	TCase *tc = tcase_create("client");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, kmod_expert_extents);
	tcase_add_test(tc, kmod_late_batch_keeps_slots);
	tcase_add_test(tc, kmod_late_batch_at_close);
	tcase_add_test(tc, kmod_model_extents);
	tcase_add_test(tc, kmod_open_by_name);
	tcase_add_test(tc, kmod_by_name_only_registered);
	tcase_add_test(tc, kmod_prefetch_low_priority);
	tcase_add_test(tc, kmod_zero_copy);
	tcase_add_test(tc, kmod_cancel_low_reaches_driver);
	if (access("/sys/module/moe", F_OK)) {
		tcase_add_test(tc, kmod_no_driver);
		tcase_add_test(tc, kmod_moectl_no_driver);
	} else {
		tu_skip("kmod_no_driver", "moe.ko is loaded on this machine");
		tu_skip("kmod_moectl_no_driver", "moe.ko is loaded on this machine");
	}
	suite_add_tcase(s, tc);
	return s;
}
