/* SPDX-License-Identifier: MIT */
/*
 * The staging pool behind moe_io_alloc(): one mapping made at the first
 * allocation, placed on the engine's NUMA node, backed by 2 MiB pages when
 * the system has them, locked, and registered with the ring so reads into
 * it skip the per-I/O page pinning.  Allocations that do not fit get their
 * own mapping (locked if allowed, never registered).  All calls run with
 * io->lock held.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "io/io.h"
#include "util/util.h"

#define HUGE_2M (2ull << 20)
#define POOL_GRAIN 4096ull

static uint64_t grain(const struct moe_io *io)
{
	return MOE_MAX(POOL_GRAIN, io->block);
}

static void lock_or_log(void *p, uint64_t len, bool *locked)
{
	struct rlimit rl;

	*locked = mlock(p, len) == 0;
	if (*locked)
		return;
	getrlimit(RLIMIT_MEMLOCK, &rl);
	moe_log_once(MOE_LOG_WARN, "io-mlock",
		     "cannot lock %llu MiB of staging memory (%s; RLIMIT_MEMLOCK %llu KiB): using "
		     "unlocked memory; raise `ulimit -l` to pin it", (unsigned long long)(len >> 20),
		     strerror(errno), rl.rlim_cur == RLIM_INFINITY ? 0ull :
		     (unsigned long long)(rl.rlim_cur >> 10));
}

static void *map_region(struct moe_io *io, uint64_t size, bool *huge, bool *thp)
{
	uint8_t *p;

	*huge = *thp = false;
	if (size % HUGE_2M == 0) {
		p = mmap(NULL, size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (21 << MAP_HUGE_SHIFT), -1, 0);
		if (p != MAP_FAILED) {
			*huge = true;
			return p;
		}
		moe_log_once(MOE_LOG_INFO, "io-hugetlb",
			     "no 2 MiB hugetlb pages reserved (vm.nr_hugepages): staging uses "
			     "transparent huge pages where the kernel grants them");
	}
	/* Over-map so the region can start on a 2 MiB boundary, as THP needs. */
	p = mmap(NULL, size + HUGE_2M, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	{
		uint8_t *a = (uint8_t *)MOE_ALIGN_UP((uintptr_t)p, HUGE_2M);

		if (a > p)
			munmap(p, a - p);
		munmap(a + size, p + HUGE_2M - a);
		p = a;
	}
	*thp = madvise(p, size, MADV_HUGEPAGE) == 0;
	(void)io;
	return p;
}

static int pool_create(struct moe_io *io)
{
	struct moe_io_pool *pl = &io->pool;
	uint64_t size = MOE_ALIGN_UP(io->opts.staging_bytes, HUGE_2M);
	void *bases[64];
	uint64_t lens[64];
	unsigned n = 0;

	pl->base = map_region(io, size, &pl->huge, &pl->thp);
	if (!pl->base)
		return moe_err(ENOMEM, "%s: cannot map %llu MiB of staging memory", io->path,
			       (unsigned long long)(size >> 20));
	pl->size = size;
	moe_topo_bind_memory(pl->base, size, io->node);
	lock_or_log(pl->base, size, &pl->locked);
	if (!pl->locked)
		memset(pl->base, 0, size); /* fault in now, on the bound node */

	pl->free = malloc(16 * sizeof(*pl->free));
	if (!pl->free) {
		munmap(pl->base, size);
		pl->base = NULL;
		return moe_err(ENOMEM, "%s: no memory", io->path);
	}
	pl->cap_free = 16;
	pl->free[0] = (struct moe_io_span_rec){ 0, size };
	pl->n_free = 1;

	for (uint64_t off = 0; off < size && n < MOE_ARRAY_SIZE(bases); off += MOE_IO_REG_CHUNK) {
		bases[n] = pl->base + off;
		lens[n++] = MOE_MIN(MOE_IO_REG_CHUNK, size - off);
	}
	if (io->ops->register_buffers && n * MOE_IO_REG_CHUNK >= size) {
		int ret = io->ops->register_buffers(io, bases, lens, n);

		pl->registered = ret == 0;
		if (ret < 0)
			moe_log_once(MOE_LOG_WARN, "io-register",
				     "%s: registering staging buffers failed (%s): plain reads",
				     io->path, moe_errmsg());
	}
	return 0;
}

static int add_rec(struct moe_io_pool *pl, void *p, uint64_t len, bool pooled)
{
	if (pl->n_allocs == pl->cap_allocs) {
		unsigned cap = pl->cap_allocs ? pl->cap_allocs * 2 : 32;
		struct moe_io_alloc_rec *a = realloc(pl->allocs, cap * sizeof(*a));

		if (!a)
			return -ENOMEM;
		pl->allocs = a;
		pl->cap_allocs = cap;
	}
	pl->allocs[pl->n_allocs++] = (struct moe_io_alloc_rec){ p, len, pooled };
	return 0;
}

static void *pool_take(struct moe_io_pool *pl, uint64_t len)
{
	for (unsigned i = 0; i < pl->n_free; i++) {
		struct moe_io_span_rec *f = &pl->free[i];

		if (f->len < len)
			continue;
		void *p = pl->base + f->off;

		f->off += len;
		f->len -= len;
		if (!f->len) {
			memmove(f, f + 1, (pl->n_free - i - 1) * sizeof(*f));
			pl->n_free--;
		}
		return p;
	}
	return NULL;
}

/* Return [off, off+len) to the sorted free list, merging neighbours. */
static int pool_give(struct moe_io_pool *pl, uint64_t off, uint64_t len)
{
	unsigned i = 0;

	while (i < pl->n_free && pl->free[i].off < off)
		i++;
	if (i > 0 && pl->free[i - 1].off + pl->free[i - 1].len == off) {
		pl->free[i - 1].len += len;
		if (i < pl->n_free && off + len == pl->free[i].off) {
			pl->free[i - 1].len += pl->free[i].len;
			memmove(&pl->free[i], &pl->free[i + 1],
				(pl->n_free - i - 1) * sizeof(pl->free[0]));
			pl->n_free--;
		}
		return 0;
	}
	if (i < pl->n_free && off + len == pl->free[i].off) {
		pl->free[i].off = off;
		pl->free[i].len += len;
		return 0;
	}
	if (pl->n_free == pl->cap_free) {
		struct moe_io_span_rec *f = realloc(pl->free, 2 * pl->cap_free * sizeof(*f));

		if (!f)
			return -ENOMEM;
		pl->free = f;
		pl->cap_free *= 2;
	}
	memmove(&pl->free[i + 1], &pl->free[i], (pl->n_free - i) * sizeof(pl->free[0]));
	pl->free[i] = (struct moe_io_span_rec){ off, len };
	pl->n_free++;
	return 0;
}

void *moe_io_pool_alloc(struct moe_io *io, uint64_t bytes)
{
	struct moe_io_pool *pl = &io->pool;
	uint64_t len;
	void *p = NULL;
	bool huge, thp, locked;

	if (!bytes || bytes > (1ull << 48))
		return NULL;
	len = MOE_ALIGN_UP(bytes, grain(io));
	if (!pl->ready && !pl->failed) {
		if (pool_create(io) == 0)
			pl->ready = true;
		else
			pl->failed = true;
	}
	if (pl->ready)
		p = pool_take(pl, len);
	if (p) {
		if (add_rec(pl, p, len, true) < 0) {
			pool_give(pl, (uint64_t)((uint8_t *)p - pl->base), len);
			return NULL;
		}
		return p;
	}
	p = map_region(io, MOE_ALIGN_UP(len, HUGE_2M), &huge, &thp);
	if (!p)
		return NULL;
	len = MOE_ALIGN_UP(len, HUGE_2M);
	moe_topo_bind_memory(p, len, io->node);
	lock_or_log(p, len, &locked);
	if (add_rec(pl, p, len, false) < 0) {
		munmap(p, len);
		return NULL;
	}
	return p;
}

int moe_io_pool_free(struct moe_io *io, void *p)
{
	struct moe_io_pool *pl = &io->pool;

	for (unsigned i = 0; i < pl->n_allocs; i++) {
		struct moe_io_alloc_rec a = pl->allocs[i];

		if (a.p != p)
			continue;
		pl->allocs[i] = pl->allocs[--pl->n_allocs];
		if (!a.pooled) {
			munmap(a.p, a.len);
			return 0;
		}
		return pool_give(pl, (uint64_t)((uint8_t *)p - pl->base), a.len);
	}
	return -ENOENT;
}

int moe_io_pool_index(const struct moe_io *io, const void *p, uint64_t len)
{
	const struct moe_io_pool *pl = &io->pool;
	const uint8_t *b = p;
	uint64_t off;

	if (!pl->registered || b < pl->base || b >= pl->base + pl->size)
		return -1;
	off = (uint64_t)(b - pl->base);
	/* A piece crossing into the next registered chunk goes as a plain read. */
	if (off / MOE_IO_REG_CHUNK != (off + len - 1) / MOE_IO_REG_CHUNK ||
	    off + len > pl->size)
		return -1;
	return (int)(off / MOE_IO_REG_CHUNK);
}

void moe_io_pool_destroy(struct moe_io *io)
{
	struct moe_io_pool *pl = &io->pool;

	for (unsigned i = 0; i < pl->n_allocs; i++)
		if (!pl->allocs[i].pooled)
			munmap(pl->allocs[i].p, pl->allocs[i].len);
	if (pl->base)
		munmap(pl->base, pl->size);
	free(pl->free);
	free(pl->allocs);
	memset(pl, 0, sizeof(*pl));
}

const char *moe_io_pool_describe(const struct moe_io *io, char *buf, unsigned len)
{
	const struct moe_io_pool *pl = &io->pool;

	if (!pl->ready)
		snprintf(buf, len, "staging %llu MiB on first use",
			 (unsigned long long)(io->opts.staging_bytes >> 20));
	else
		snprintf(buf, len, "staging %llu MiB (%s, %s, %s)",
			 (unsigned long long)(pl->size >> 20),
			 pl->huge ? "2 MiB pages" : pl->thp ? "THP" : "4 KiB pages",
			 pl->locked ? "locked" : "unlocked",
			 pl->registered ? "registered" : "not registered");
	return buf;
}
