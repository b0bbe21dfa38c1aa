// SPDX-License-Identifier: MIT
/*
 * moe-vmtest: tests of moe.ko, run as root inside the test VM (tests/vm/run.sh)
 * on a disk holding big.bin (96 MiB) and tail.bin (1 MiB + 1234 bytes).
 * Prints "ok NAME" or "not ok NAME: why" per test; exit status 1 if any failed.
 *
 * usage: moe-vmtest DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <grp.h>
#include <glob.h>

#include <liburing.h>
#include <xf86drm.h>
#include <xf86drmMode.h>

#include "moe_drm.h"

#define MIB (1024ULL * 1024)
#define N_EXT 48

static char why[512];
static int n_pass, n_fail;
static const char *dir;
static char big_path[PATH_MAX], tail_path[PATH_MAX];
static uint64_t max_extents, max_batch;

static int failf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int failf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	return -1;
}

#define EXPECT(cond, ...)                                                     \
	do {                                                                  \
		if (!(cond))                                                  \
			return failf(__VA_ARGS__);                            \
	} while (0)

/* 0 or -errno. */
static int ioc(int fd, unsigned long req, void *arg)
{
	return drmIoctl(fd, req, arg) ? -errno : 0;
}

#define EXPECT_ERR(call, err, what)                                           \
	do {                                                                  \
		int r_ = (call);                                              \
		if (r_ != -(err))                                             \
			return failf("%s: got %d (%s), expected -%s", what,   \
				     r_, strerror(-r_), #err);                \
	} while (0)

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The node is /dev/accel/accelN (DRM_ACCEL kernels): no primary node then. */
static bool moe_accel;

/* The render node (6.1) or, on kernels with DRM_ACCEL, the accel node whose driver is moe. */
static int open_moe(void)
{
	char path[64];

	for (int i = 0; i < 128; i++) {
		drmVersionPtr v;
		int fd;

		if (i < 64)
			snprintf(path, sizeof(path), "/dev/accel/accel%d", i);
		else
			snprintf(path, sizeof(path), "/dev/dri/renderD%d", 128 + i - 64);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue;
		v = drmGetVersion(fd);
		if (v && !strcmp(v->name, "moe")) {
			drmFreeVersion(v);
			moe_accel = i < 64;
			return fd;
		}
		drmFreeVersion(v);
		close(fd);
	}
	return -ENODEV;
}

static int bo_create(int fd, uint64_t size, uint32_t *handle)
{
	struct drm_moe_bo_create a = { .size = size };
	int r = ioc(fd, DRM_IOCTL_MOE_BO_CREATE, &a);

	*handle = a.handle;
	return r;
}

static void *bo_map(int fd, uint32_t handle, uint64_t size)
{
	struct drm_moe_bo_mmap a = { .handle = handle };
	void *p;

	if (ioc(fd, DRM_IOCTL_MOE_BO_MMAP, &a))
		return NULL;
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, a.offset);
	return p == MAP_FAILED ? NULL : p;
}

static int model_register(int fd, int file_fd, const char *name, const struct drm_moe_extent *ext,
			  uint32_t n, uint32_t *id)
{
	struct drm_moe_model_register a = {
		.fd = file_fd, .extents_ptr = (uintptr_t)ext, .n_extents = n,
	};
	int r;

	snprintf(a.name, sizeof(a.name), "%s", name);
	r = ioc(fd, DRM_IOCTL_MOE_MODEL_REGISTER, &a);
	if (id)
		*id = a.model_id;
	return r;
}

static int model_unregister(int fd, uint32_t id)
{
	struct drm_moe_model_unregister a = { .model_id = id };

	return ioc(fd, DRM_IOCTL_MOE_MODEL_UNREGISTER, &a);
}

static int fetch(int fd, const struct drm_moe_fetch_req *reqs, uint32_t n, int64_t *results,
		 uint64_t *ticket)
{
	struct drm_moe_fetch a = {
		.reqs_ptr = (uintptr_t)reqs, .results_ptr = (uintptr_t)results, .count = n,
	};
	int r = ioc(fd, DRM_IOCTL_MOE_FETCH, &a);

	*ticket = a.ticket;
	return r;
}

static int wait_ticket(int fd, uint64_t ticket, int64_t deadline, uint32_t *failed)
{
	struct drm_moe_wait a = { .ticket = ticket, .timeout_ns = deadline };
	int r = ioc(fd, DRM_IOCTL_MOE_WAIT, &a);

	if (failed)
		*failed = a.failed;
	return r;
}

/* Submit and wait up to 60 s; per-request results in @results. */
static int fetch_wait(int fd, const struct drm_moe_fetch_req *reqs, uint32_t n, int64_t *results)
{
	uint64_t ticket;
	int r = fetch(fd, reqs, n, results, &ticket);

	if (r)
		return r;
	return wait_ticket(fd, ticket, now_ns() + 60 * 1000000000LL, NULL);
}

static void drop_caches(void)
{
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY);

	sync();
	if (fd >= 0) {
		if (write(fd, "3\n", 2) != 2)
			perror("drop_caches");
		close(fd);
	}
}

/* The big model's extents: 2, 1.5 and 1 MiB every 2 MiB. */
static void big_extents(struct drm_moe_extent *ext)
{
	for (int i = 0; i < N_EXT; i++) {
		ext[i].offset = i * 2 * MIB;
		ext[i].length = 2 * MIB - (i % 3) * 512 * 1024;
	}
}

static int compare_pread(int file_fd, const struct drm_moe_extent *e, const uint8_t *dst,
			 const char *what)
{
	uint8_t *buf = malloc(e->length);
	ssize_t got;

	if (!buf)
		return failf("out of memory");
	got = pread(file_fd, buf, e->length, e->offset);
	if (got != (ssize_t)e->length) {
		free(buf);
		return failf("%s: pread %zd of %llu", what, got, (unsigned long long)e->length);
	}
	if (memcmp(buf, dst, e->length)) {
		size_t i = 0;

		while (buf[i] == dst[i])
			i++;
		free(buf);
		return failf("%s: byte %zu of extent at %llu differs from pread", what, i,
			     (unsigned long long)e->offset);
	}
	free(buf);
	return 0;
}

/* Pages of @path in the page cache. */
static long resident_pages(const char *path)
{
	struct stat st;
	unsigned char *vec;
	long n = 0;
	size_t pages;
	void *p;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st))
		return -1;
	p = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		return -1;
	pages = (st.st_size + 4095) / 4096;
	vec = malloc(pages);
	if (!vec || mincore(p, st.st_size, vec)) {
		free(vec);
		munmap(p, st.st_size);
		return -1;
	}
	for (size_t i = 0; i < pages; i++)
		n += vec[i] & 1;
	free(vec);
	munmap(p, st.st_size);
	return n;
}

/* ------------------------------------------------------------------ state */

static int moe_fd = -1;
static int big_fd = -1;
static uint32_t big_id;
static struct drm_moe_extent big_ext[N_EXT];
static uint32_t big_bo;
static uint8_t *big_map;

/* ------------------------------------------------------------------ tests */

static int t_get_param(void)
{
	struct drm_moe_get_param p = { .param = DRM_MOE_PARAM_VERSION };

	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_GET_PARAM, &p), "VERSION failed");
	EXPECT(p.value >> 16 == DRM_MOE_VERSION_MAJOR, "version 0x%llx",
	       (unsigned long long)p.value);
	p.param = DRM_MOE_PARAM_CAPS;
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_GET_PARAM, &p), "CAPS failed");
	EXPECT(p.value & DRM_MOE_CAP_URING_CMD, "no URING_CMD capability");
	p.param = DRM_MOE_PARAM_ALIGN;
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_GET_PARAM, &p) && p.value == 4096, "ALIGN %llu",
	       (unsigned long long)p.value);
	p.param = DRM_MOE_PARAM_MAX_EXTENTS;
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_GET_PARAM, &p) && p.value, "MAX_EXTENTS");
	max_extents = p.value;
	p.param = DRM_MOE_PARAM_MAX_BATCH;
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_GET_PARAM, &p) && p.value, "MAX_BATCH");
	max_batch = p.value;
	p.param = 999;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_GET_PARAM, &p), EINVAL, "unknown param");
	p.param = DRM_MOE_PARAM_ALIGN;
	p.pad = 1;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_GET_PARAM, &p), EINVAL, "non-zero pad");
	return 0;
}

static int t_bo(void)
{
	struct drm_moe_bo_create c = { .size = 0 };
	struct drm_moe_bo_mmap m = { .handle = 12345 };
	uint32_t h, h2;
	uint8_t *p, *q;
	int dmabuf;

	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_BO_CREATE, &c), EINVAL, "size 0");
	c.size = 4096;
	c.flags = 1;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_BO_CREATE, &c), EINVAL, "non-zero flags");
	c.flags = 0;
	c.size = 1ULL << 50;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_BO_CREATE, &c), EINVAL, "size above MAX_BO_SIZE");
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_BO_MMAP, &m), ENOENT, "mmap of an unknown handle");

	EXPECT(!bo_create(moe_fd, 3 * 4096 + 5, &h), "BO_CREATE failed");
	p = bo_map(moe_fd, h, 4 * 4096);
	EXPECT(p, "BO_MMAP/mmap failed: %s", strerror(errno));
	memset(p, 0x5a, 4 * 4096);

	/* PRIME: the dma-buf maps the same pages; re-import gives the same handle. */
	EXPECT(!drmPrimeHandleToFD(moe_fd, h, DRM_CLOEXEC | DRM_RDWR, &dmabuf),
	       "PRIME export failed: %s", strerror(errno));
	q = mmap(NULL, 4 * 4096, PROT_READ, MAP_SHARED, dmabuf, 0);
	EXPECT(q != MAP_FAILED, "dma-buf mmap failed: %s", strerror(errno));
	EXPECT(q[0] == 0x5a && q[4 * 4096 - 1] == 0x5a, "dma-buf does not show the BO's bytes");
	EXPECT(!drmPrimeFDToHandle(moe_fd, dmabuf, &h2), "PRIME import failed");
	EXPECT(h2 == h, "re-import gave handle %u, not %u", h2, h);
	munmap(q, 4 * 4096);
	munmap(p, 4 * 4096);
	close(dmabuf);
	drmCloseBufferHandle(moe_fd, h);

	/* Dumb buffers would not be pinned: the primary node must not make them. */
	for (int i = 0; i < 16; i++) {
		struct drm_mode_create_dumb d = { .width = 64, .height = 64, .bpp = 32 };
		char path[64];
		drmVersionPtr v;
		int fd;

		snprintf(path, sizeof(path), "/dev/dri/card%d", i);
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue;
		v = drmGetVersion(fd);
		if (v && !strcmp(v->name, "moe")) {
			int r = ioc(fd, DRM_IOCTL_MODE_CREATE_DUMB, &d);

			drmFreeVersion(v);
			close(fd);
			EXPECT(!moe_accel, "an accel device also has %s", path);
			EXPECT(r < 0, "the primary node created a dumb buffer");
			return 0;
		}
		drmFreeVersion(v);
		close(fd);
	}
	/* An accel device has its accel node only, and that offers no dumb buffers. */
	return moe_accel ? 0 : failf("no primary node of moe in /dev/dri");
}

static int t_register(void)
{
	struct drm_moe_get_param p = { .param = DRM_MOE_PARAM_ALIGN };
	struct drm_moe_model_register a = { 0 };

	big_extents(big_ext);
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_GET_PARAM, &p), "GET_PARAM");
	EXPECT(!model_register(moe_fd, big_fd, "big", big_ext, N_EXT, &big_id),
	       "MODEL_REGISTER failed: %s", strerror(errno));
	EXPECT(big_id != 0, "model id 0");
	EXPECT_ERR(model_register(moe_fd, big_fd, "big", big_ext, N_EXT, NULL), EEXIST,
		   "a second model named 'big'");
	a.fd = big_fd;
	a.extents_ptr = (uintptr_t)big_ext;
	a.n_extents = 1;
	strcpy(a.name, "big-2");
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_MODEL_REGISTER, &a), "register big-2");
	EXPECT(a.file_size == 96 * MIB, "file_size %llu", (unsigned long long)a.file_size);
	EXPECT(!model_unregister(moe_fd, a.model_id), "unregister big-2");
	EXPECT_ERR(model_unregister(moe_fd, a.model_id), ENOENT, "unregister twice");
	return 0;
}

/*
 * uAPI 2.1: MODEL_REGISTER's n_meta is checked and kept, MODEL_INFO reports
 * it, and a client built against 2.0 (the shorter structs, their ioctl
 * numbers) still registers and lists models.
 */
struct register_v20 {
	__s32 fd;
	__u32 flags;
	char name[DRM_MOE_NAME_LEN];
	__u64 extents_ptr;
	__u32 n_extents;
	__u32 model_id;
	__u64 file_size;
};

struct info_v20 {
	__u32 model_id;
	__u32 flags;
	char name[DRM_MOE_NAME_LEN];
	__u64 extents_ptr;
	__u32 n_extents;
	__u32 pad;
	__u64 file_size;
	__u64 bytes, requests, errors, inflight;
	__u32 file_dev_major, file_dev_minor;
	__u64 file_ino;
	__u64 lat_hist[DRM_MOE_LAT_BUCKETS];
};

static int t_meta(void)
{
	struct drm_moe_get_param p = { .param = DRM_MOE_PARAM_VERSION };
	struct drm_moe_extent ext[3] = {
		{ 0, 64 * 1024 }, { 4 * MIB, MIB }, { 8 * MIB, 2 * MIB },
	};
	struct drm_moe_model_register r = { .fd = big_fd, .extents_ptr = (uintptr_t)ext,
					    .n_extents = 3, .n_meta = 4 };
	struct drm_moe_model_info info = { 0 };
	struct register_v20 old = { .fd = big_fd, .extents_ptr = (uintptr_t)ext, .n_extents = 3 };
	struct info_v20 oinfo = { .flags = DRM_MOE_INFO_BY_NAME };
	unsigned long reg20 = DRM_IOWR(DRM_COMMAND_BASE + DRM_MOE_MODEL_REGISTER,
				       struct register_v20);
	unsigned long info20 = DRM_IOWR(DRM_COMMAND_BASE + DRM_MOE_MODEL_INFO, struct info_v20);

	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_GET_PARAM, &p), "GET_PARAM VERSION");
	EXPECT(p.value == (DRM_MOE_VERSION_MAJOR << 16 | DRM_MOE_VERSION_MINOR),
	       "version 0x%llx", (unsigned long long)p.value);
	strcpy(r.name, "meta");
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_MODEL_REGISTER, &r), EINVAL, "n_meta > n_extents");
	r.n_meta = 2;
	r.pad = 1;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_MODEL_REGISTER, &r), EINVAL, "non-zero pad");
	r.pad = 0;
	ext[0].offset = 4096;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_MODEL_REGISTER, &r), EINVAL,
		   "metadata whose extent 0 does not start at 0");
	ext[0].offset = 0;
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_MODEL_REGISTER, &r), "register with n_meta 2: %s",
	       strerror(errno));
	info.flags = DRM_MOE_INFO_BY_NAME;
	strcpy(info.name, "meta");
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info), "MODEL_INFO");
	EXPECT(info.n_meta == 2 && info.n_extents == 3, "info says n_meta %u of %u extents",
	       info.n_meta, info.n_extents);
	info.pad2 = 1;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info), EINVAL, "non-zero pad2");
	EXPECT(!model_unregister(moe_fd, r.model_id), "unregister 'meta'");

	/* 2.0's structs: no n_meta, so no metadata; everything else as before */
	strcpy(old.name, "meta-v20");
	EXPECT(!ioc(moe_fd, reg20, &old), "2.0-sized MODEL_REGISTER: %s", strerror(errno));
	EXPECT(old.model_id && old.file_size == 96 * MIB, "2.0 register: id %u size %llu",
	       old.model_id, (unsigned long long)old.file_size);
	strcpy(oinfo.name, "meta-v20");
	EXPECT(!ioc(moe_fd, info20, &oinfo), "2.0-sized MODEL_INFO: %s", strerror(errno));
	EXPECT(oinfo.model_id == old.model_id && oinfo.n_extents == 3, "2.0 info: id %u, %u extents",
	       oinfo.model_id, oinfo.n_extents);
	memset(&info, 0, sizeof(info));
	info.model_id = old.model_id;
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info), "MODEL_INFO of the 2.0 model");
	EXPECT(info.n_meta == 0, "a 2.0 registration has n_meta %u", info.n_meta);
	EXPECT(!model_unregister(moe_fd, old.model_id), "unregister 'meta-v20'");
	return 0;
}

static int t_fetch_wait(void)
{
	struct drm_moe_fetch_req reqs[N_EXT];
	int64_t res[N_EXT];
	long resident;
	char what[64];

	big_map = bo_map(moe_fd, big_bo, 96 * MIB);
	EXPECT(big_map, "mmap of the 96 MiB BO failed");
	memset(big_map, 0xee, 96 * MIB);
	for (int i = 0; i < N_EXT; i++)
		reqs[i] = (struct drm_moe_fetch_req){
			.model_id = big_id, .extent = i, .handle = big_bo, .bo_offset = i * 2 * MIB,
		};
	drop_caches();
	EXPECT(!fetch_wait(moe_fd, reqs, N_EXT, res), "FETCH+WAIT failed: %s", strerror(errno));
	for (int i = 0; i < N_EXT; i++)
		EXPECT(res[i] == (int64_t)big_ext[i].length, "request %d: result %lld", i,
		       (long long)res[i]);
	/* Direct I/O: nothing of the file entered the page cache. */
	resident = resident_pages(big_path);
	EXPECT(resident == 0, "%ld pages of big.bin are in the page cache after driver reads",
	       resident);
	for (int i = 0; i < N_EXT; i++) {
		snprintf(what, sizeof(what), "extent %d", i);
		if (compare_pread(big_fd, &big_ext[i], big_map + i * 2 * MIB, what))
			return -1;
	}
	return 0;
}

/* Parts of an extent: the engine splits reads and widens them to blocks. */
static int t_subrange(void)
{
	struct drm_moe_fetch_req reqs[3] = {
		{ .model_id = big_id, .extent = 0, .handle = big_bo, .bo_offset = 0,
		  .offset = 4096, .length = 8192 },
		{ .model_id = big_id, .extent = 2, .handle = big_bo, .bo_offset = 64 * 1024,
		  .offset = 512 * 1024 },
		{ .model_id = big_id, .extent = 4, .handle = big_bo, .bo_offset = 2 * MIB,
		  .length = 4096 },
	};
	struct drm_moe_extent want[3] = {
		{ big_ext[0].offset + 4096, 8192 },
		{ big_ext[2].offset + 512 * 1024, big_ext[2].length - 512 * 1024 },
		{ big_ext[4].offset, 4096 },
	};
	int64_t res[3];

	memset(big_map, 0, 4 * MIB);
	EXPECT(!fetch_wait(moe_fd, reqs, 3, res), "FETCH+WAIT: %s", strerror(errno));
	for (int i = 0; i < 3; i++) {
		EXPECT(res[i] == (int64_t)want[i].length, "request %d: %lld of %llu bytes", i,
		       (long long)res[i], (unsigned long long)want[i].length);
		if (compare_pread(big_fd, &want[i], big_map + reqs[i].bo_offset, "sub-range"))
			return -1;
	}
	return 0;
}

static int bo_userptr(int fd, void *addr, uint64_t size, uint32_t *handle)
{
	struct drm_moe_bo_userptr a = { .addr = (uintptr_t)addr, .size = size };
	int r = ioc(fd, DRM_IOCTL_MOE_BO_USERPTR, &a);

	*handle = a.handle;
	return r;
}

/*
 * BO_USERPTR (uAPI 2.3): a FETCH lands in the caller's own memory, pinned
 * at creation, with no copy and no page cache; the memory outlives its
 * munmap only in the BO; bad ranges are refused with their errnos.
 */
static int t_userptr(void)
{
	struct drm_moe_get_param gp = { .param = DRM_MOE_PARAM_CAPS };
	struct drm_moe_fetch_req reqs[4];
	struct drm_moe_bo_mmap mm = { 0 };
	uint64_t size = 8 * MIB;
	int64_t res[4];
	uint32_t h, h2;
	uint8_t *mem, *ro;
	int dmabuf = -1;
	char what[64];

	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_GET_PARAM, &gp) && (gp.value & DRM_MOE_CAP_USERPTR),
	       "CAPS 0x%llx lacks DRM_MOE_CAP_USERPTR", (unsigned long long)gp.value);
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	EXPECT(mem != MAP_FAILED, "mmap: %s", strerror(errno));
	memset(mem, 0xee, size);
	EXPECT(!bo_userptr(moe_fd, mem, size, &h), "BO_USERPTR: %s", strerror(errno));
	for (int i = 0; i < 4; i++)
		reqs[i] = (struct drm_moe_fetch_req){
			.model_id = big_id, .extent = i, .handle = h, .bo_offset = i * 2 * MIB,
		};
	drop_caches();
	EXPECT(!fetch_wait(moe_fd, reqs, 4, res), "FETCH+WAIT into a userptr BO: %s",
	       strerror(errno));
	for (int i = 0; i < 4; i++) {
		EXPECT(res[i] == (int64_t)big_ext[i].length, "request %d: result %lld", i,
		       (long long)res[i]);
		snprintf(what, sizeof(what), "userptr extent %d", i);
		if (compare_pread(big_fd, &big_ext[i], mem + i * 2 * MIB, what))
			return -1;
	}
	/* Past the BO's end, unaligned: refused like any BO. */
	reqs[0].bo_offset = size - 4096;
	EXPECT_ERR(fetch_wait(moe_fd, reqs, 1, res), EINVAL, "FETCH past the end");
	mm.handle = h;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_BO_MMAP, &mm), EINVAL, "BO_MMAP of a userptr BO");
	EXPECT(drmPrimeHandleToFD(moe_fd, h, DRM_CLOEXEC, &dmabuf) != 0,
	       "PRIME export of a userptr BO succeeded");
	/* Unmapped: the BO keeps its pinned pages and reads still land there, harmlessly. */
	munmap(mem, size);
	reqs[0].bo_offset = 0;
	EXPECT(!fetch_wait(moe_fd, reqs, 1, res) && res[0] == (int64_t)big_ext[0].length,
	       "FETCH into a userptr BO whose memory was unmapped: %s", strerror(errno));
	EXPECT(!drmCloseBufferHandle(moe_fd, h), "closing the userptr BO");

	/* Bad ranges. */
	EXPECT_ERR(bo_userptr(moe_fd, (void *)(uintptr_t)4096, 0, &h2), EINVAL, "size 0");
	mem = mmap(NULL, 2 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	EXPECT(mem != MAP_FAILED, "mmap: %s", strerror(errno));
	EXPECT_ERR(bo_userptr(moe_fd, mem + 100, 4096, &h2), EINVAL, "unaligned address");
	EXPECT_ERR(bo_userptr(moe_fd, mem, 4000, &h2), EINVAL, "unaligned size");
	{
		struct drm_moe_bo_userptr a = { .addr = (uintptr_t)mem, .size = 4096, .flags = 1 };

		EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_BO_USERPTR, &a), EINVAL, "flags != 0");
	}
	munmap(mem + MIB, MIB);
	EXPECT_ERR(bo_userptr(moe_fd, mem, 2 * MIB, &h2), EFAULT, "half-unmapped range");
	munmap(mem, MIB);
	ro = mmap(NULL, MIB, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	EXPECT(ro != MAP_FAILED, "mmap: %s", strerror(errno));
	EXPECT_ERR(bo_userptr(moe_fd, ro, MIB, &h2), EFAULT, "read-only memory");
	munmap(ro, MIB);
	/* A shmem BO's own mapping is device memory to the kernel (VM_PFNMAP): no pin. */
	EXPECT_ERR(bo_userptr(moe_fd, big_map, MIB, &h2), EFAULT, "a BO mapping");
	return 0;
}

static int t_eof_tail(void)
{
	struct drm_moe_extent ext[2] = { { 0, MIB }, { MIB, 4096 } };
	struct drm_moe_extent past = { MIB, 8192 };
	struct drm_moe_fetch_req reqs[2] = {
		{ .extent = 0, .bo_offset = 0 }, { .extent = 1, .bo_offset = MIB },
	};
	int64_t res[2];
	uint32_t id, h;
	uint8_t *p, buf[1234];
	int fd = open(tail_path, O_RDONLY);

	EXPECT(fd >= 0, "open tail.bin");
	EXPECT_ERR(model_register(moe_fd, fd, "tail-past", &past, 1, NULL), EINVAL,
		   "extent past the end of the file rounded up");
	EXPECT(!model_register(moe_fd, fd, "tail", ext, 2, &id), "register tail.bin: %s",
	       strerror(errno));
	EXPECT(!bo_create(moe_fd, MIB + 4096, &h), "BO_CREATE");
	p = bo_map(moe_fd, h, MIB + 4096);
	EXPECT(p, "mmap");
	memset(p, 0xaa, MIB + 4096);
	reqs[0].model_id = reqs[1].model_id = id;
	reqs[0].handle = reqs[1].handle = h;
	EXPECT(!fetch_wait(moe_fd, reqs, 2, res), "FETCH+WAIT: %s", strerror(errno));
	EXPECT(res[0] == (int64_t)MIB, "first extent: %lld", (long long)res[0]);
	EXPECT(res[1] == 1234, "the extent across EOF read %lld bytes, expected 1234",
	       (long long)res[1]);
	EXPECT(pread(fd, buf, sizeof(buf), MIB) == (ssize_t)sizeof(buf), "pread");
	EXPECT(!memcmp(buf, p + MIB, sizeof(buf)), "the bytes before EOF differ from pread");
	for (size_t i = MIB + 1234; i < MIB + 4096; i++)
		EXPECT(p[i] == 0, "byte %zu past EOF is 0x%02x, not zero", (size_t)(i - MIB), p[i]);
	munmap(p, MIB + 4096);
	drmCloseBufferHandle(moe_fd, h);
	EXPECT(!model_unregister(moe_fd, id), "unregister tail");
	close(fd);
	return 0;
}

/* Results are per request: a file truncated after registration reads short. */
static int t_per_request_results(void)
{
	struct drm_moe_extent ext[2] = { { 0, 4096 }, { 4096, 8192 } };
	struct drm_moe_fetch_req reqs[2] = {
		{ .extent = 0, .bo_offset = 0 }, { .extent = 1, .bo_offset = 4096 },
	};
	char path[PATH_MAX], buf[12288];
	int64_t res[2];
	uint32_t id, h;
	uint8_t *p;
	int fd;

	snprintf(path, sizeof(path), "%s/trunc.bin", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	EXPECT(fd >= 0, "create %s: %s", path, strerror(errno));
	memset(buf, 0x42, sizeof(buf));
	EXPECT(write(fd, buf, sizeof(buf)) == (ssize_t)sizeof(buf) && !fsync(fd), "write");
	EXPECT(!model_register(moe_fd, fd, "trunc", ext, 2, &id), "register: %s", strerror(errno));
	EXPECT(!ftruncate(fd, 4096 + 100) && !fsync(fd), "truncate");
	EXPECT(!bo_create(moe_fd, 12288, &h), "BO_CREATE");
	p = bo_map(moe_fd, h, 12288);
	EXPECT(p, "mmap");
	memset(p, 0xaa, 12288);
	reqs[0].model_id = reqs[1].model_id = id;
	reqs[0].handle = reqs[1].handle = h;
	EXPECT(!fetch_wait(moe_fd, reqs, 2, res), "FETCH+WAIT: %s", strerror(errno));
	EXPECT(res[0] == 4096 && res[1] == 100, "results %lld and %lld, expected 4096 and 100",
	       (long long)res[0], (long long)res[1]);
	EXPECT(p[0] == 0x42 && p[4096 + 99] == 0x42 && p[4096 + 100] == 0 && p[12287] == 0,
	       "the BO does not hold the file's bytes followed by zeroes");
	munmap(p, 12288);
	drmCloseBufferHandle(moe_fd, h);
	EXPECT(!model_unregister(moe_fd, id), "unregister");
	close(fd);
	unlink(path);
	return 0;
}

static int t_register_invalid(void)
{
	struct drm_moe_extent e = { 0, 4096 };
	struct drm_moe_model_register a = { 0 };
	char tmpf[] = "/tmp/moe-vmtest-XXXXXX";
	int dfd, pfd[2], nfd, wfd, tfd;
	struct drm_moe_extent *many;

	EXPECT_ERR(model_register(moe_fd, -1, "x", &e, 1, NULL), EBADF, "fd -1");
	EXPECT_ERR(model_register(moe_fd, 999, "x", &e, 1, NULL), EBADF, "a closed fd");
	dfd = open(dir, O_RDONLY | O_DIRECTORY);
	EXPECT_ERR(model_register(moe_fd, dfd, "x", &e, 1, NULL), EINVAL, "a directory");
	close(dfd);
	EXPECT(!pipe(pfd), "pipe");
	EXPECT_ERR(model_register(moe_fd, pfd[0], "x", &e, 1, NULL), EINVAL, "a pipe");
	close(pfd[0]);
	close(pfd[1]);
	nfd = open("/dev/null", O_RDONLY);
	EXPECT_ERR(model_register(moe_fd, nfd, "x", &e, 1, NULL), EINVAL, "/dev/null");
	close(nfd);
	tfd = mkstemp(tmpf);
	EXPECT(tfd >= 0 && !ftruncate(tfd, 8192), "tmpfs file");
	wfd = open(tmpf, O_WRONLY);
	EXPECT_ERR(model_register(moe_fd, wfd, "x", &e, 1, NULL), EBADF, "a write-only fd");
	close(wfd);
	close(tfd);
	/* The driver agrees with open(O_DIRECT): tmpfs takes it from 6.6 on. */
	tfd = open(tmpf, O_RDONLY | O_DIRECT);
	if (tfd < 0) {
		tfd = open(tmpf, O_RDONLY);
		EXPECT_ERR(model_register(moe_fd, tfd, "x", &e, 1, NULL), EOPNOTSUPP,
			   "a tmpfs file (no direct I/O)");
	} else {
		uint32_t id;

		EXPECT(!model_register(moe_fd, tfd, "tmpfs", &e, 1, &id),
		       "a tmpfs file that opens with O_DIRECT refused: %s", strerror(errno));
		EXPECT(!model_unregister(moe_fd, id), "unregister of the tmpfs model");
	}
	close(tfd);
	unlink(tmpf);

	e = (struct drm_moe_extent){ 100, 4096 };
	EXPECT_ERR(model_register(moe_fd, big_fd, "x", &e, 1, NULL), EINVAL, "unaligned offset");
	e = (struct drm_moe_extent){ 0, 4097 };
	EXPECT_ERR(model_register(moe_fd, big_fd, "x", &e, 1, NULL), EINVAL, "unaligned length");
	e = (struct drm_moe_extent){ 96 * MIB, 4096 };
	EXPECT_ERR(model_register(moe_fd, big_fd, "x", &e, 1, NULL), EINVAL, "past end of file");
	e = (struct drm_moe_extent){ UINT64_MAX - 4095, 8192 };
	EXPECT_ERR(model_register(moe_fd, big_fd, "x", &e, 1, NULL), EINVAL, "offset+length wraps");
	e = (struct drm_moe_extent){ 4096, 0 };
	EXPECT_ERR(model_register(moe_fd, big_fd, "x", &e, 1, NULL), EINVAL, "zero length");
	e = (struct drm_moe_extent){ 0, 4096 };
	EXPECT_ERR(model_register(moe_fd, big_fd, "x", &e, 0, NULL), EINVAL, "no extents");
	many = calloc(max_extents + 1, sizeof(*many));
	EXPECT(many, "calloc");
	for (uint64_t i = 0; i <= max_extents; i++)
		many[i] = e;
	EXPECT_ERR(model_register(moe_fd, big_fd, "x", many, max_extents + 1, NULL), E2BIG,
		   "an extent table above MAX_EXTENTS");
	free(many);
	EXPECT_ERR(model_register(moe_fd, big_fd, "", &e, 1, NULL), EINVAL, "an empty name");
	EXPECT_ERR(model_register(moe_fd, big_fd, "x", (void *)8, 1, NULL), EFAULT,
		   "a bad extents_ptr");

	a.fd = big_fd;
	a.extents_ptr = (uintptr_t)&e;
	a.n_extents = 1;
	memset(a.name, 'n', sizeof(a.name));
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_MODEL_REGISTER, &a), EINVAL, "an unterminated name");
	strcpy(a.name, "x");
	a.flags = 1;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_MODEL_REGISTER, &a), EINVAL, "non-zero flags");
	return 0;
}

static int t_fetch_invalid(void)
{
	struct drm_moe_fetch_req good = {
		.model_id = big_id, .extent = 1, .handle = big_bo, .bo_offset = 0,
	};
	struct drm_moe_fetch_req r[2];
	struct drm_moe_model_info info = { .model_id = big_id };
	struct drm_moe_fetch f = { 0 };
	struct drm_moe_wait w = { 0 };
	uint64_t ticket, requests;
	uint32_t small;
	int64_t res[2];

	EXPECT(!bo_create(moe_fd, 4096, &small), "BO_CREATE");
#define TRY(field, value, err, what)                                                   \
	do {                                                                           \
		r[0] = good;                                                           \
		r[0].field = value;                                                    \
		EXPECT_ERR(fetch(moe_fd, r, 1, res, &ticket), err, what);               \
	} while (0)
	TRY(model_id, 0xffffff, ENOENT, "an unknown model");
	TRY(extent, N_EXT, EINVAL, "an extent index out of range");
	TRY(handle, 9999, ENOENT, "an unknown BO");
	TRY(handle, small, EINVAL, "a BO too small for the extent");
	TRY(bo_offset, 100, EINVAL, "an unaligned BO offset");
	TRY(bo_offset, 95 * MIB, EINVAL, "a BO offset where the extent does not fit");
	TRY(bo_offset, UINT64_MAX - 4095, EINVAL, "a BO offset that wraps");
	TRY(flags, 1, EINVAL, "non-zero request flags");
	TRY(offset, 100, EINVAL, "an unaligned offset in the extent");
	TRY(offset, big_ext[1].length, EINVAL, "an offset at the end of the extent");
	TRY(length, 4097, EINVAL, "an unaligned length");
	TRY(length, big_ext[1].length + 4096, EINVAL, "a length past the end of the extent");
#undef TRY
	EXPECT_ERR(fetch(moe_fd, &good, 0, res, &ticket), EINVAL, "count 0");
	EXPECT_ERR(fetch(moe_fd, &good, max_batch + 1, res, &ticket), E2BIG, "count > MAX_BATCH");
	EXPECT_ERR(fetch(moe_fd, (void *)8, 1, res, &ticket), EFAULT, "a bad reqs_ptr");
	f.reqs_ptr = (uintptr_t)&good;
	f.count = 1;
	f.flags = 2;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_FETCH, &f), EINVAL, "an unknown fetch flag");

	/* A batch with one bad request reads nothing, not even the good ones. */
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info), "MODEL_INFO");
	requests = info.requests;
	memset(big_map, 0x11, 4096);
	r[0] = good;
	r[1] = good;
	r[1].extent = 1000;
	EXPECT_ERR(fetch(moe_fd, r, 2, res, &ticket), EINVAL, "a batch with a bad second request");
	usleep(100000);
	EXPECT(big_map[0] == 0x11, "a refused batch still wrote the BO");
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info) && info.requests == requests,
	       "a refused batch still counted requests");

	EXPECT_ERR(wait_ticket(moe_fd, 777777, now_ns(), NULL), ENOENT, "WAIT of an unknown ticket");
	w.ticket = 1;
	w.flags = 1;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_WAIT, &w), EINVAL, "WAIT with non-zero flags");
	EXPECT_ERR(model_unregister(moe_fd, 0xffffff), ENOENT, "UNREGISTER of an unknown model");
	{
		struct drm_moe_model_unregister u = { .model_id = big_id, .flags = 1 };

		EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_MODEL_UNREGISTER, &u), EINVAL,
			   "UNREGISTER with non-zero flags");
	}
	info = (struct drm_moe_model_info){ .model_id = 0xffffff };
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info), ENOENT, "INFO of an unknown id");
	info = (struct drm_moe_model_info){ .model_id = big_id, .flags = 1 << 7 };
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info), EINVAL, "INFO with unknown flags");
	info.flags = DRM_MOE_INFO_BY_NAME | DRM_MOE_INFO_NEXT;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info), EINVAL, "INFO with two modes");
	info.flags = 0;
	info.pad = 1;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info), EINVAL, "INFO with non-zero pad");
	drmCloseBufferHandle(moe_fd, small);
	return 0;
}

static int t_info(void)
{
	struct drm_moe_extent ext[N_EXT];
	struct drm_moe_model_info info = {
		.model_id = big_id, .extents_ptr = (uintptr_t)ext, .n_extents = N_EXT,
	};
	glob_t g;
	bool found = false;
	uint64_t hist = 0;

	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info), "MODEL_INFO by id");
	EXPECT(!strcmp(info.name, "big"), "name '%s'", info.name);
	EXPECT(info.n_extents == N_EXT && !memcmp(ext, big_ext, sizeof(ext)),
	       "the extents differ from those registered");
	EXPECT(info.requests >= N_EXT && info.bytes >= 72 * MIB, "counters: %llu requests, %llu bytes",
	       (unsigned long long)info.requests, (unsigned long long)info.bytes);
	for (int i = 0; i < DRM_MOE_LAT_BUCKETS; i++)
		hist += info.lat_hist[i];
	EXPECT(hist == info.requests, "latency histogram holds %llu of %llu requests",
	       (unsigned long long)hist, (unsigned long long)info.requests);
	EXPECT(info.inflight == 0, "%llu in flight when idle", (unsigned long long)info.inflight);
	{
		struct stat st;

		EXPECT(!fstat(big_fd, &st), "fstat");
		EXPECT(info.file_ino == st.st_ino && info.file_dev_major == major(st.st_dev) &&
		       info.file_dev_minor == minor(st.st_dev),
		       "file identity %u:%u/%llu, stat says %u:%u/%llu", info.file_dev_major,
		       info.file_dev_minor, (unsigned long long)info.file_ino, major(st.st_dev),
		       minor(st.st_dev), (unsigned long long)st.st_ino);
	}

	info = (struct drm_moe_model_info){ .flags = DRM_MOE_INFO_BY_NAME };
	strcpy(info.name, "big");
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info) && info.model_id == big_id,
	       "MODEL_INFO by name");
	info = (struct drm_moe_model_info){ .flags = DRM_MOE_INFO_NEXT };
	while (!ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info)) {
		found |= info.model_id == big_id;
		info.flags = DRM_MOE_INFO_NEXT;
	}
	EXPECT(found, "MODEL_INFO NEXT does not list the model");

	EXPECT(!glob(moe_accel ? "/sys/kernel/debug/accel/*/moe_models" :
		     "/sys/kernel/debug/dri/*/moe_models", 0, NULL, &g), "no debugfs moe_models");
	for (size_t i = 0; i < g.gl_pathc && !found; i++) {
		char buf[4096] = "";
		int fd = open(g.gl_pathv[i], O_RDONLY);

		if (fd >= 0 && read(fd, buf, sizeof(buf) - 1) > 0 && strstr(buf, " big extents=48 "))
			found = true;
		if (fd >= 0)
			close(fd);
	}
	globfree(&g);
	return found ? 0 : failf("debugfs moe_models does not list 'big'");
}

static int t_wait_timeout(void)
{
	struct drm_moe_fetch_req reqs[N_EXT];
	int64_t res[N_EXT];
	uint64_t ticket;
	uint32_t failed = 99;

	for (int i = 0; i < N_EXT; i++)
		reqs[i] = (struct drm_moe_fetch_req){
			.model_id = big_id, .extent = i, .handle = big_bo, .bo_offset = i * 2 * MIB,
		};
	drop_caches();
	EXPECT(!fetch(moe_fd, reqs, N_EXT, res, &ticket), "FETCH");
	EXPECT_ERR(wait_ticket(moe_fd, ticket, now_ns() - 1, NULL), ETIME,
		   "WAIT with a deadline in the past on 72 MiB in flight");
	EXPECT(!wait_ticket(moe_fd, ticket, now_ns() + 60000000000LL, &failed), "WAIT: %s",
	       strerror(errno));
	EXPECT(failed == 0, "%u requests failed", failed);
	EXPECT_ERR(wait_ticket(moe_fd, ticket, now_ns() + 1000000000LL, NULL), ENOENT,
		   "a second WAIT of the same ticket");
	return 0;
}

static int uring_fetch(struct io_uring *ring, struct drm_moe_fetch *f, unsigned sqe_flags,
		       uint32_t cmd_op, uint64_t pad, int *res)
{
	struct drm_moe_uring_cmd cmd = { .fetch_ptr = (uintptr_t)f, .pad = pad };
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	struct io_uring_cqe *cqe;
	int r;

	if (!sqe)
		return failf("no SQE");
	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = moe_fd;
	sqe->cmd_op = cmd_op;
	sqe->flags = sqe_flags;
	sqe->user_data = 0x1234;
	memcpy(sqe->cmd, &cmd, sizeof(cmd));
	r = io_uring_submit(ring);
	if (r != 1)
		return failf("io_uring_submit: %d", r);
	r = io_uring_wait_cqe(ring, &cqe);
	if (r)
		return failf("io_uring_wait_cqe: %d", r);
	if (cqe->user_data != 0x1234)
		return failf("CQE user_data 0x%llx", (unsigned long long)cqe->user_data);
	*res = cqe->res;
	io_uring_cqe_seen(ring, cqe);
	return 0;
}

static int t_uring(void)
{
	struct drm_moe_fetch_req reqs[8];
	struct drm_moe_fetch f = { .reqs_ptr = (uintptr_t)reqs, .count = 8 };
	struct io_uring ring;
	int64_t res[8];
	int64_t total = 0;
	int r, cres;
	char what[64];

	r = io_uring_queue_init(8, &ring, 0);
	EXPECT(!r, "io_uring_queue_init: %s", strerror(-r));
	f.results_ptr = (uintptr_t)res;
	for (unsigned flags = 0; flags <= IOSQE_ASYNC; flags += IOSQE_ASYNC) {
		memset(big_map, 0, 16 * MIB);
		total = 0;
		for (int i = 0; i < 8; i++) {
			reqs[i] = (struct drm_moe_fetch_req){
				.model_id = big_id, .extent = 10 + i, .handle = big_bo,
				.bo_offset = i * 2 * MIB,
			};
			total += big_ext[10 + i].length;
			res[i] = -1;
		}
		drop_caches();
		if (uring_fetch(&ring, &f, flags, DRM_MOE_URING_CMD_FETCH, 0, &cres))
			return -1;
		EXPECT(cres == total, "%s: CQE res %d, expected %lld", flags ? "async" : "inline",
		       cres, (long long)total);
		for (int i = 0; i < 8; i++) {
			EXPECT(res[i] == (int64_t)big_ext[10 + i].length, "request %d result %lld", i,
			       (long long)res[i]);
			snprintf(what, sizeof(what), "io_uring extent %d", 10 + i);
			if (compare_pread(big_fd, &big_ext[10 + i], big_map + i * 2 * MIB, what))
				return -1;
		}
	}
	f.flags = 2;
	if (uring_fetch(&ring, &f, 0, DRM_MOE_URING_CMD_FETCH, 0, &cres))
		return -1;
	EXPECT(cres == -EINVAL, "an unknown fetch flag: CQE res %d", cres);
	f.flags = 0;
	reqs[3].model_id = 0xffffff;
	if (uring_fetch(&ring, &f, 0, DRM_MOE_URING_CMD_FETCH, 0, &cres))
		return -1;
	EXPECT(cres == -ENOENT, "unknown model: CQE res %d", cres);
	/*
	 * cmd_op carries type, number, direction and size: each one wrong is
	 * refused, and so is the bare number of uAPI 1.
	 */
	{
		static const struct { uint32_t op; const char *what; } bad[] = {
			{ 0x77, "unknown cmd_op" },
			{ 0x6d01, "uAPI 1's bare cmd_op" },
			{ _IOWR('M', 0x02, struct drm_moe_uring_cmd), "another number" },
			{ _IOWR('N', 0x01, struct drm_moe_uring_cmd), "another type" },
			{ _IOR('M', 0x01, struct drm_moe_uring_cmd), "read-only direction" },
			{ _IOWR('M', 0x01, uint64_t), "8-byte size" },
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			if (uring_fetch(&ring, &f, 0, bad[i].op, 0, &cres))
				return -1;
			EXPECT(cres == -ENOTTY, "%s 0x%x: CQE res %d", bad[i].what, bad[i].op, cres);
		}
	}
	if (uring_fetch(&ring, &f, 0, DRM_MOE_URING_CMD_FETCH, 1, &cres))
		return -1;
	EXPECT(cres == -EINVAL, "non-zero pad: CQE res %d", cres);
	if (uring_fetch(&ring, &f, 0, DRM_MOE_URING_CMD_FETCH, 1ull << 63, &cres))
		return -1;
	EXPECT(cres == -EINVAL, "pad with only its top bit set: CQE res %d", cres);
	if (uring_fetch(&ring, (struct drm_moe_fetch *)8, 0, DRM_MOE_URING_CMD_FETCH, 0, &cres))
		return -1;
	EXPECT(cres == -EFAULT, "fetch_ptr to unmapped memory: CQE res %d", cres);
	/* The valid command still works after the refusals (nothing leaked a slot). */
	reqs[3].model_id = big_id;
	if (uring_fetch(&ring, &f, 0, DRM_MOE_URING_CMD_FETCH, 0, &cres))
		return -1;
	EXPECT(cres == total, "after the refusals: CQE res %d, expected %lld", cres,
	       (long long)total);
	io_uring_queue_exit(&ring);
	return 0;
}

/* Child side of t_unprivileged: 0 or a message on @out. */
static int unpriv_child(void)
{
	struct drm_moe_extent e = { 0, 4096 };
	struct drm_moe_fetch_req r = { .model_id = big_id, .extent = 5 };
	gid_t groups[1] = { 1000 };
	int64_t res;
	uint32_t h;
	uint8_t *p;
	int fd;

	EXPECT(!setgroups(1, groups) && !setresgid(65534, 65534, 65534) &&
	       !setresuid(65534, 65534, 65534), "dropping privileges failed");
	EXPECT(open(big_path, O_RDONLY) < 0 && errno == EACCES,
	       "the unprivileged process can open the model file itself");
	fd = open_moe();
	EXPECT(fd >= 0, "cannot open the render node as group 1000");
	EXPECT_ERR(model_register(fd, big_fd, "evil", &e, 1, NULL), EPERM,
		   "MODEL_REGISTER without CAP_SYS_ADMIN");
	EXPECT_ERR(model_unregister(fd, big_id), EPERM, "MODEL_UNREGISTER without CAP_SYS_ADMIN");
	EXPECT(!bo_create(fd, 2 * MIB, &h), "BO_CREATE");
	p = bo_map(fd, h, 2 * MIB);
	EXPECT(p, "mmap");
	r.handle = h;
	EXPECT(!fetch_wait(fd, &r, 1, &res), "FETCH of a registered extent: %s", strerror(errno));
	EXPECT(res == (int64_t)big_ext[5].length, "result %lld", (long long)res);
	/* big_fd was opened by root before the privilege drop. */
	if (compare_pread(big_fd, &big_ext[5], p, "unprivileged fetch"))
		return -1;
	r.extent = N_EXT;
	EXPECT_ERR(fetch(fd, &r, 1, &res, &(uint64_t){ 0 }), EINVAL,
		   "an extent that was not registered");
	r.extent = 0;
	r.model_id = 0xffffff;
	EXPECT_ERR(fetch(fd, &r, 1, &res, &(uint64_t){ 0 }), ENOENT, "an unregistered model");
	return 0;
}

static int t_unprivileged(void)
{
	int pfd[2], status;
	ssize_t n;
	pid_t pid;

	EXPECT(!pipe(pfd), "pipe");
	pid = fork();
	if (pid == 0) {
		close(pfd[0]);
		if (unpriv_child()) {
			if (write(pfd[1], why, strlen(why)) < 0)
				_exit(2);
			_exit(1);
		}
		_exit(0);
	}
	close(pfd[1]);
	n = read(pfd[0], why, sizeof(why) - 1);
	why[n > 0 ? n : 0] = 0;
	close(pfd[0]);
	waitpid(pid, &status, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		return n > 0 ? -1 : failf("the child died (status 0x%x)", status);
	return 0;
}

static int t_unregister_inflight(void)
{
	struct drm_moe_fetch_req reqs[N_EXT];
	struct drm_moe_model_info info = { 0 };
	int64_t res[N_EXT];
	uint64_t ticket;
	uint32_t id, failed = 99;
	char what[64];

	EXPECT(!model_register(moe_fd, big_fd, "doomed", big_ext, N_EXT, &id), "register");
	for (int i = 0; i < N_EXT; i++)
		reqs[i] = (struct drm_moe_fetch_req){
			.model_id = id, .extent = i, .handle = big_bo, .bo_offset = i * 2 * MIB,
		};
	memset(big_map, 0, 96 * MIB);
	drop_caches();
	EXPECT(!fetch(moe_fd, reqs, N_EXT, res, &ticket), "FETCH");
	EXPECT(!model_unregister(moe_fd, id), "UNREGISTER with requests in flight");
	info.model_id = id;
	EXPECT_ERR(ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info), ENOENT, "INFO after unregister");
	EXPECT_ERR(fetch(moe_fd, reqs, 1, res, &(uint64_t){ 0 }), ENOENT,
		   "FETCH from an unregistered model");
	EXPECT(!wait_ticket(moe_fd, ticket, now_ns() + 60000000000LL, &failed), "WAIT");
	EXPECT(failed == 0, "%u requests of the unregistered model failed", failed);
	for (int i = 0; i < N_EXT; i += 7) {
		snprintf(what, sizeof(what), "extent %d after unregister", i);
		if (compare_pread(big_fd, &big_ext[i], big_map + i * 2 * MIB, what))
			return -1;
	}
	return 0;
}

static long module_refcnt(void)
{
	char buf[32] = "";
	int fd = open("/sys/module/moe/refcnt", O_RDONLY);

	if (fd < 0)
		return -1;
	if (read(fd, buf, sizeof(buf) - 1) <= 0)
		buf[0] = 0;
	close(fd);
	return strtol(buf, NULL, 10);
}

/* Progress of busy_child, shared with the parent. */
struct busy_stats {
	int stage;
	int last_err;
	unsigned long fetches;
	unsigned long urings;
	unsigned long cqes;
};
static struct busy_stats *busy;

/* Keeps two batches in flight through each path until killed. */
static void busy_child(void)
{
	struct drm_moe_fetch_req reqs[N_EXT];
	struct drm_moe_fetch f = { .reqs_ptr = (uintptr_t)reqs, .count = N_EXT };
	struct drm_moe_uring_cmd cmd = { .fetch_ptr = (uintptr_t)&f };
	struct io_uring_cqe *cqe;
	struct io_uring ring;
	uint64_t tickets[2] = { 0, 0 };
	unsigned uring_inflight = 0, n = 0;
	uint32_t h;
	int fd = open_moe();

	busy->stage = 1;
	if (fd < 0 || bo_create(fd, 2 * MIB, &h) || io_uring_queue_init(8, &ring, 0))
		_exit(1);
	busy->stage = 2;
	/* Every request into the same 2 MiB: what lands there does not matter. */
	for (int i = 0; i < N_EXT; i++)
		reqs[i] = (struct drm_moe_fetch_req){
			.model_id = big_id, .extent = i, .handle = h, .bo_offset = 0,
		};
	for (;;) {
		while (!io_uring_peek_cqe(&ring, &cqe)) {
			if (cqe->res < 0)
				busy->last_err = cqe->res;
			io_uring_cqe_seen(&ring, cqe);
			uring_inflight--;
			busy->cqes++;
		}
		if (uring_inflight < 2) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);

			if (!sqe)
				_exit(1);
			memset(sqe, 0, sizeof(*sqe));
			sqe->opcode = IORING_OP_URING_CMD;
			sqe->fd = fd;
			sqe->cmd_op = DRM_MOE_URING_CMD_FETCH;
			memcpy(sqe->cmd, &cmd, sizeof(cmd));
			if (io_uring_submit(&ring) == 1) {
				uring_inflight++;
				busy->urings++;
			}
		}
		if (tickets[n % 2])
			wait_ticket(fd, tickets[n % 2], now_ns() + 60000000000LL, NULL);
		tickets[n % 2] = 0;
		busy->last_err = fetch(fd, reqs, N_EXT, NULL, &tickets[n % 2]) ?: busy->last_err;
		busy->fetches++;
		n++;
	}
}

static int t_killed_midfetch(void)
{
	struct drm_moe_model_info info = { .model_id = big_id };
	long before = module_refcnt(), after = -1;
	bool alive, info_ok;
	int status;
	pid_t pid;

	EXPECT(before > 0, "refcnt %ld with the node open", before);
	busy = mmap(NULL, sizeof(*busy), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	EXPECT(busy != MAP_FAILED, "mmap");
	drop_caches();
	pid = fork();
	if (pid == 0)
		busy_child();
	for (int i = 0; i < 200 && busy->stage < 2; i++)
		usleep(50000);
	usleep(500000);
	alive = waitpid(pid, &status, WNOHANG) == 0;
	info_ok = !ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info);
	if (alive) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
	}
	EXPECT(alive, "the busy child exited by itself (status 0x%x)", status);
	EXPECT(info_ok, "MODEL_INFO");
	EXPECT(info.inflight > 0, "nothing in flight after 0.5 s of the busy child (stage %d, "
	       "%lu fetches, %lu uring, %lu CQEs, last error %d, %llu requests done)", busy->stage,
	       busy->fetches, busy->urings, busy->cqes, busy->last_err,
	       (unsigned long long)info.requests);
	/* io_uring tears down asynchronously: give it a few seconds. */
	for (int i = 0; i < 200; i++) {
		after = module_refcnt();
		if (after == before)
			break;
		usleep(50000);
	}
	EXPECT(after == before, "module refcnt %ld after the kill, %ld before", after, before);
	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info) && info.inflight == 0,
	       "%llu requests still in flight", (unsigned long long)info.inflight);
	return 0;
}

#define KILL_READS 1000

/* Child of t_killed_thousands: 1000 reads of 4 KiB from the slow drive, never waited for. */
static void thousands_child(uint32_t id)
{
	static struct drm_moe_fetch_req reqs[250];
	uint64_t ticket;
	uint32_t h;
	int fd = open_moe();

	if (fd < 0 || bo_create(fd, KILL_READS * 4096, &h))
		_exit(1);
	/* Batches below the block layer's tag depth: FETCH itself never waits for a tag. */
	for (int b = 0; b < KILL_READS / 250; b++) {
		for (int i = 0; i < 250; i++) {
			int k = b * 250 + i;

			reqs[i] = (struct drm_moe_fetch_req){
				.model_id = id, .extent = k % 16, .handle = h,
				.offset = (uint64_t)(k / 16) * 4096, .length = 4096,
				.bo_offset = (uint64_t)k * 4096,
			};
		}
		if (fetch(fd, reqs, 250, NULL, &ticket))
			_exit(2);
	}
	busy->stage = 1;
	for (;;)
		pause();
}

/*
 * SIGKILL of a process with a thousand reads in flight on a slow drive
 * (400 IOPS, so about 2.5 s of I/O): it is reaped at once, its close does
 * not wait on the device; the reads still finish afterwards and then
 * release the model and the module.
 */
static int t_killed_thousands(void)
{
	struct drm_moe_extent ext[16];
	struct drm_moe_model_info info = { 0 };
	long before = module_refcnt(), after = -1;
	int64_t t0, reap_ns;
	int status = 0, sfd, ret = 0;
	uint32_t id;
	pid_t pid;

	sfd = open("/slow/slow.bin", O_RDONLY);
	EXPECT(sfd >= 0, "/slow/slow.bin: %s", strerror(errno));
	for (int i = 0; i < 16; i++)
		ext[i] = (struct drm_moe_extent){ .offset = i * MIB, .length = MIB };
	EXPECT(!model_register(moe_fd, sfd, "slow", ext, 16, &id), "register slow: %s",
	       strerror(errno));
	close(sfd);
	info.model_id = id;
	busy->stage = 0;
	drop_caches();
	pid = fork();
	if (pid == 0)
		thousands_child(id);
	for (int i = 0; i < 1000 && !busy->stage && waitpid(pid, &status, WNOHANG) == 0; i++)
		usleep(10000);
	if (!busy->stage) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		model_unregister(moe_fd, id);
		return failf("the child did not queue its reads (status 0x%x)", status);
	}
	t0 = now_ns();
	kill(pid, SIGKILL);
	if (waitpid(pid, &status, 0) != pid || !WIFSIGNALED(status))
		ret = failf("waitpid: status 0x%x", status);
	reap_ns = now_ns() - t0;
	if (!ret && ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info))
		ret = failf("MODEL_INFO: %s", strerror(errno));
	printf("# killed-thousands: reaped in %.1f ms with %llu of %d reads still in flight\n",
	       reap_ns / 1e6, (unsigned long long)info.inflight, KILL_READS);
	if (!ret && (info.inflight == 0 || reap_ns > 1000000000))
		ret = failf("the exit waited for the device: reaped after %.1f ms, %llu reads "
			    "left", reap_ns / 1e6, (unsigned long long)info.inflight);
	/* Unregistered with reads in flight: they keep the file until they end. */
	if (model_unregister(moe_fd, id) && !ret)
		ret = failf("unregister slow: %s", strerror(errno));
	for (int i = 0; i < 400; i++) {
		after = module_refcnt();
		if (after == before)
			break;
		usleep(50000);
	}
	if (!ret && after != before)
		ret = failf("module refcnt %ld 20 s after the kill, %ld before", after, before);
	return ret;
}

/*
 * One bound on pending requests per file for both paths: with 65536
 * requests uncollected by WAIT, FETCH and the io_uring command both say
 * -EBUSY; once WAIT collects them both work again.
 */
static int t_pending_bound(void)
{
	static struct drm_moe_fetch_req reqs[4096];
	struct drm_moe_fetch f = { .reqs_ptr = (uintptr_t)reqs, .count = 1 };
	uint64_t tickets[16], extra;
	struct io_uring ring;
	int cres, ret = 0, n = 0;

	for (int i = 0; i < 4096; i++)
		reqs[i] = (struct drm_moe_fetch_req){
			.model_id = big_id, .extent = i % N_EXT, .handle = big_bo,
			.offset = (uint64_t)(i / N_EXT % 256) * 4096, .length = 4096,
			.bo_offset = (uint64_t)(i % (96 * 256)) * 4096,
		};
	EXPECT(!io_uring_queue_init(8, &ring, 0), "io_uring_queue_init");
	for (; n < 16; n++)
		if (fetch(moe_fd, reqs, 4096, NULL, &tickets[n])) {
			ret = failf("FETCH %d of 16: %s", n, strerror(errno));
			break;
		}
	if (!ret && !fetch(moe_fd, reqs, 1, NULL, &extra))
		ret = failf("FETCH over 65536 pending requests accepted");
	else if (!ret && errno != EBUSY)
		ret = failf("FETCH over the bound: %s, expected EBUSY", strerror(errno));
	if (!ret)
		ret = uring_fetch(&ring, &f, 0, DRM_MOE_URING_CMD_FETCH, 0, &cres);
	if (!ret && cres != -EBUSY)
		ret = failf("io_uring FETCH over the bound: CQE res %d, expected -EBUSY", cres);
	for (int i = 0; i < n; i++)
		if (wait_ticket(moe_fd, tickets[i], now_ns() + 60000000000LL, NULL) && !ret)
			ret = failf("WAIT %d: %s", i, strerror(errno));
	if (!ret)
		ret = uring_fetch(&ring, &f, 0, DRM_MOE_URING_CMD_FETCH, 0, &cres);
	if (!ret && cres != 4096)
		ret = failf("io_uring FETCH after WAIT: CQE res %d, expected 4096", cres);
	io_uring_queue_exit(&ring);
	return ret;
}

/* "slow": 16 extents of 1 MiB over /slow/slow.bin (the 400-IOPS drive). */
static int register_slow(const char *name, uint32_t *id)
{
	struct drm_moe_extent ext[16];
	int sfd = open("/slow/slow.bin", O_RDONLY), r;

	if (sfd < 0)
		return -errno;
	for (int i = 0; i < 16; i++)
		ext[i] = (struct drm_moe_extent){ .offset = i * MIB, .length = MIB };
	r = model_register(moe_fd, sfd, name, ext, 16, id);
	close(sfd);
	return r;
}

/* @n reads of 4 KiB of model @id into BO @h from request @first on. */
static void slow_reqs(struct drm_moe_fetch_req *reqs, int n, int first, uint32_t id, uint32_t h)
{
	for (int i = 0; i < n; i++) {
		int k = first + i;

		reqs[i] = (struct drm_moe_fetch_req){
			.model_id = id, .extent = k % 16, .handle = h,
			.offset = (uint64_t)(k / 16 % 256) * 4096, .length = 4096,
			.bo_offset = (uint64_t)(k % 1024) * 4096,
		};
	}
}

static int fetch_flags(int fd, const struct drm_moe_fetch_req *reqs, uint32_t n, uint32_t flags,
		       int64_t *results, uint64_t *ticket)
{
	struct drm_moe_fetch f = { .reqs_ptr = (uintptr_t)reqs, .results_ptr = (uintptr_t)results,
				   .count = n, .flags = flags };
	int r = ioc(fd, DRM_IOCTL_MOE_FETCH, &f);

	*ticket = f.ticket;
	return r;
}

static int cancel(int fd, uint64_t ticket, uint32_t flags, uint32_t *n)
{
	struct drm_moe_cancel c = { .ticket = ticket, .flags = flags };
	int r = ioc(fd, DRM_IOCTL_MOE_CANCEL, &c);

	if (n)
		*n = c.cancelled;
	return r;
}

/*
 * Priority and cancel under load on the slow drive: low batches wait while
 * a demand batch reads, CANCEL takes one back by ticket and the rest
 * (io_uring's too) with ticket 0, their requests end with -ECANCELED, a
 * low batch left alone is read once the demand batch is done, and a low
 * batch with no demand reading goes at once.
 */
static int t_cancel_under_load(void)
{
	static struct drm_moe_fetch_req dreq[800], lreq[8];
	static int64_t dres[800], lres[3][8];
	struct drm_moe_get_param p = { .param = DRM_MOE_PARAM_CAPS };
	/* .ticket: the io_uring batch's tag for CANCEL with DRM_MOE_CANCEL_TAG (uAPI 2.3) */
	struct drm_moe_fetch uf = { .reqs_ptr = (uintptr_t)lreq, .results_ptr = (uintptr_t)lres[1],
				    .count = 8, .flags = DRM_MOE_FETCH_LOW, .ticket = 0xabc };
	struct drm_moe_uring_cmd cmd = { .fetch_ptr = (uintptr_t)&uf };
	struct io_uring ring;
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	uint64_t td, t1, t3;
	uint32_t id, h, failed = 0, n = 0;
	int ret = 0, r;

	EXPECT(!ioc(moe_fd, DRM_IOCTL_MOE_GET_PARAM, &p) && (p.value & DRM_MOE_CAP_PRIORITY),
	       "no DRM_MOE_CAP_PRIORITY in caps 0x%llx", (unsigned long long)p.value);
	EXPECT(!register_slow("slow-prio", &id), "register: %s", strerror(errno));
	EXPECT(!bo_create(moe_fd, 1024 * 4096, &h), "BO_CREATE");
	EXPECT(!io_uring_queue_init(8, &ring, 0), "io_uring_queue_init");
	drop_caches();
	/* nothing reading: a low batch goes at once */
	slow_reqs(lreq, 8, 3000, id, h);
	EXPECT(!fetch_flags(moe_fd, lreq, 8, DRM_MOE_FETCH_LOW, lres[0], &t1), "low FETCH");
	EXPECT(!wait_ticket(moe_fd, t1, now_ns() + 30000000000LL, &failed) && !failed,
	       "an idle low batch did not complete");
	EXPECT_ERR(fetch_flags(moe_fd, lreq, 8, 2, lres[0], &t1), EINVAL, "unknown FETCH flag");

	/* 800 reads at 400 IOPS: two seconds of demand */
	slow_reqs(dreq, 800, 0, id, h);
	EXPECT(!fetch_flags(moe_fd, dreq, 800, 0, dres, &td), "demand FETCH: %s", strerror(errno));
	slow_reqs(lreq, 8, 1000, id, h);
	EXPECT(!fetch_flags(moe_fd, lreq, 8, DRM_MOE_FETCH_LOW, lres[0], &t1), "low FETCH 1");
	sqe = io_uring_get_sqe(&ring);
	EXPECT(sqe, "no SQE");
	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = moe_fd;
	sqe->cmd_op = DRM_MOE_URING_CMD_FETCH;
	sqe->user_data = 77;
	memcpy(sqe->cmd, &cmd, sizeof(cmd));
	EXPECT(io_uring_submit(&ring) == 1, "io_uring_submit");
	EXPECT(!fetch_flags(moe_fd, lreq, 8, DRM_MOE_FETCH_LOW, lres[2], &t3), "low FETCH 3");
	EXPECT_ERR(wait_ticket(moe_fd, t1, now_ns(), NULL), ETIME,
		   "a low batch behind demand already done");

	EXPECT_ERR(cancel(moe_fd, 0xfffffff0u, 0, NULL), ENOENT, "CANCEL of an unknown ticket");
	EXPECT_ERR(cancel(moe_fd, t1, 2, NULL), EINVAL, "CANCEL with an unknown flag");
	EXPECT_ERR(cancel(moe_fd, 0, DRM_MOE_CANCEL_TAG, NULL), EINVAL, "CANCEL of tag 0");
	EXPECT(!cancel(moe_fd, 0xdef, DRM_MOE_CANCEL_TAG, &n) && n == 0,
	       "CANCEL of an unused tag took %u", n);
	EXPECT(!cancel(moe_fd, td, 0, &n) && n == 0, "CANCEL of a reading demand batch took %u", n);
	EXPECT(!cancel(moe_fd, t1, 0, &n) && n == 1, "CANCEL by ticket took %u batches", n);
	EXPECT(!wait_ticket(moe_fd, t1, now_ns() + 1000000000LL, &failed),
	       "WAIT of a cancelled batch: %s", strerror(errno));
	for (int i = 0; i < 8; i++)
		EXPECT(lres[0][i] == -ECANCELED, "cancelled request %d: %lld", i,
		       (long long)lres[0][i]);
	EXPECT(failed == 8, "failed %u", failed);

	/* by tag: the io_uring batch alone; then ticket 0 takes the rest (t3) */
	EXPECT(!cancel(moe_fd, 0xabc, DRM_MOE_CANCEL_TAG, &n) && n == 1,
	       "CANCEL by tag took %u batches, not 1", n);
	EXPECT(!cancel(moe_fd, 0, 0, &n) && n == 1, "CANCEL 0 took %u batches, not 1", n);
	r = io_uring_wait_cqe(&ring, &cqe);
	EXPECT(!r && cqe->user_data == 77 && cqe->res == -ECANCELED, "io_uring CQE res %d",
	       r ? r : cqe->res);
	io_uring_cqe_seen(&ring, cqe);
	EXPECT(lres[1][0] == -ECANCELED, "io_uring request 0: %lld", (long long)lres[1][0]);
	EXPECT(!wait_ticket(moe_fd, t3, now_ns() + 1000000000LL, &failed) && failed == 8,
	       "batch 3 cancelled by CANCEL 0: failed %u", failed);

	/* a low batch left alone is read after the demand batch */
	slow_reqs(lreq, 8, 2000, id, h);
	EXPECT(!fetch_flags(moe_fd, lreq, 8, DRM_MOE_FETCH_LOW, lres[2], &t3), "low FETCH 4");
	EXPECT(!wait_ticket(moe_fd, td, now_ns() + 60000000000LL, &failed) && !failed,
	       "demand batch: %s, %u failed", strerror(errno), failed);
	EXPECT(!wait_ticket(moe_fd, t3, now_ns() + 60000000000LL, &failed) && !failed,
	       "low batch after demand: %u failed", failed);
	for (int i = 0; i < 8; i++)
		if (lres[2][i] != 4096)
			ret = failf("low request %d read %lld", i, (long long)lres[2][i]);
	io_uring_queue_exit(&ring);
	drmCloseBufferHandle(moe_fd, h);
	if (model_unregister(moe_fd, id) && !ret)
		ret = failf("unregister: %s", strerror(errno));
	return ret;
}

/*
 * Unregister with batches queued: the low batch that would read the model
 * ends at once with -ECANCELED; the demand batch reading finishes.
 */
static int t_unregister_cancels_queued(void)
{
	static struct drm_moe_fetch_req dreq[800], lreq[8];
	static int64_t dres[800], lres[8];
	uint64_t td, tl;
	uint32_t a, b, h, failed = 0;

	EXPECT(!register_slow("slow-a", &a) && !register_slow("slow-b", &b), "register");
	EXPECT(!bo_create(moe_fd, 1024 * 4096, &h), "BO_CREATE");
	drop_caches();
	slow_reqs(dreq, 800, 0, a, h);
	EXPECT(!fetch_flags(moe_fd, dreq, 800, 0, dres, &td), "demand FETCH");
	slow_reqs(lreq, 8, 500, b, h);
	EXPECT(!fetch_flags(moe_fd, lreq, 8, DRM_MOE_FETCH_LOW, lres, &tl), "low FETCH");
	EXPECT(!model_unregister(moe_fd, b), "unregister slow-b");
	EXPECT(!wait_ticket(moe_fd, tl, now_ns() + 1000000000LL, &failed) && failed == 8,
	       "the queued batch of an unregistered model: %s, %u failed", strerror(errno), failed);
	EXPECT(lres[0] == -ECANCELED, "request 0: %lld", (long long)lres[0]);
	EXPECT(!wait_ticket(moe_fd, td, now_ns() + 60000000000LL, &failed) && !failed,
	       "the demand batch: %u failed", failed);
	drmCloseBufferHandle(moe_fd, h);
	EXPECT(!model_unregister(moe_fd, a), "unregister slow-a");
	return 0;
}

/*
 * Child of t_killed_queued: 250 demand reads, 2000 queued prefetch reads
 * and, with @uring, an io_uring prefetch batch of 8, never waited for.
 */
static void queued_child(uint32_t id, bool uring)
{
	static struct drm_moe_fetch_req reqs[250], ureqs[8];
	struct drm_moe_fetch uf = { .reqs_ptr = (uintptr_t)ureqs, .count = 8,
				    .flags = DRM_MOE_FETCH_LOW };
	struct drm_moe_uring_cmd cmd = { .fetch_ptr = (uintptr_t)&uf };
	struct io_uring_sqe *sqe;
	struct io_uring ring;
	uint64_t ticket;
	uint32_t h;
	int fd = open_moe();

	if (fd < 0 || bo_create(fd, 1024 * 4096, &h))
		_exit(1);
	slow_reqs(reqs, 250, 0, id, h);
	if (fetch_flags(fd, reqs, 250, 0, NULL, &ticket))
		_exit(2);
	for (int b = 0; b < 8; b++) {
		slow_reqs(reqs, 250, 250 * (b + 1), id, h);
		if (fetch_flags(fd, reqs, 250, DRM_MOE_FETCH_LOW, NULL, &ticket))
			_exit(3);
	}
	slow_reqs(ureqs, 8, 3000, id, h);
	if (!uring)
		goto queued;
	if (io_uring_queue_init(4, &ring, 0) || !(sqe = io_uring_get_sqe(&ring)))
		_exit(4);
	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = fd;
	sqe->cmd_op = DRM_MOE_URING_CMD_FETCH;
	memcpy(sqe->cmd, &cmd, sizeof(cmd));
	if (io_uring_submit(&ring) != 1)
		_exit(5);
queued:
	busy->stage = 1;
	for (;;)
		pause();
}

/*
 * kill -9 of a process with demand reads in flight and 2000 prefetch reads
 * queued: reaped at once, the queued ones are never read (the model counts
 * only the demand requests), and the module's references come back.  On
 * kernels with IORING_URING_CMD_CANCELABLE (6.7+) it also has an io_uring
 * prefetch batch queued, cancelled with its ring.  (Before 6.7 the ring's
 * teardown waits for the command, which holds the node's file, so the
 * close that would cancel the queued batches comes only after the demand
 * reads: that case is not tested there.)
 */
static int t_killed_queued(void)
{
	struct drm_moe_model_info info = { 0 };
	long before = module_refcnt(), after = -1;
	int status = 0, ret = 0, maj = 0, min = 0;
	bool uring = true;
	int64_t t0, reap_ns;
	struct utsname u;
	uint32_t id;
	pid_t pid;

	if (!uname(&u) && sscanf(u.release, "%d.%d", &maj, &min) == 2 &&
	    (maj < 6 || (maj == 6 && min < 7)))
		uring = false;

	EXPECT(busy, "no shared page (killed-mid-fetch maps it)");
	EXPECT(!register_slow("slow-kill", &id), "register: %s", strerror(errno));
	info.model_id = id;
	busy->stage = 0;
	drop_caches();
	pid = fork();
	if (pid == 0)
		queued_child(id, uring);
	for (int i = 0; i < 1000 && !busy->stage && waitpid(pid, &status, WNOHANG) == 0; i++)
		usleep(10000);
	t0 = now_ns();
	kill(pid, SIGKILL);
	if (waitpid(pid, &status, 0) != pid || !WIFSIGNALED(status) || !busy->stage)
		ret = failf("the child did not queue its reads (status 0x%x)", status);
	reap_ns = now_ns() - t0;
	if (!ret && reap_ns > 1000000000LL)
		ret = failf("the exit waited %.1f ms", reap_ns / 1e6);
	for (int i = 0; i < 400; i++) {
		after = module_refcnt();
		if (after == before)
			break;
		usleep(50000);
	}
	if (!ret && after != before)
		ret = failf("module refcnt %ld 20 s after the kill, %ld before", after, before);
	if (!ret && ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info))
		ret = failf("MODEL_INFO: %s", strerror(errno));
	printf("# killed-queued: reaped in %.1f ms; the model then counted %llu requests%s\n",
	       reap_ns / 1e6, (unsigned long long)info.requests,
	       uring ? "" : " (no io_uring batch: this kernel has no cancelable commands)");
	if (!ret && info.requests != 250)
		ret = failf("%llu requests read, not the 250 demand ones: queued prefetches of a "
			    "dead process were read%s", (unsigned long long)info.requests,
			    uring ? " (its io_uring one among them?)" : "");
	if (model_unregister(moe_fd, id) && !ret)
		ret = failf("unregister: %s", strerror(errno));
	return ret;
}

/*
 * The same kill with the io_uring prefetch batch queued on every kernel, for
 * the ring's teardown.  6.7+: the ring cancels it (CANCELABLE) and the file's
 * close the rest: only the 250 demand reads are read, the reap is quick.
 * Before 6.7 the teardown (in io_uring's own worker, after the reap) waits
 * for the command, which holds the node's file: once the demand reads end,
 * the queued batches (the 2000 and the 8) are issued and read, then the
 * command completes (its results not copied: the task is gone), the file
 * closes and the module's references come back; the kernel log stays clean.
 */
static int t_ring_teardown_queued(void)
{
	struct drm_moe_model_info info = { 0 };
	long before = module_refcnt(), after = -1;
	int status = 0, ret = 0, maj = 0, min = 0;
	bool cancelable = true;
	uint64_t want;
	int64_t t0, reap_ns = -1;
	struct utsname u;
	uint32_t id;
	pid_t pid;

	if (!uname(&u) && sscanf(u.release, "%d.%d", &maj, &min) == 2 &&
	    (maj < 6 || (maj == 6 && min < 7)))
		cancelable = false;
	want = cancelable ? 250 : 250 + 2000 + 8;
	EXPECT(busy, "no shared page (killed-mid-fetch maps it)");
	EXPECT(!register_slow("slow-ring", &id), "register: %s", strerror(errno));
	info.model_id = id;
	busy->stage = 0;
	drop_caches();
	pid = fork();
	if (pid == 0)
		queued_child(id, true);
	for (int i = 0; i < 1000 && !busy->stage && waitpid(pid, &status, WNOHANG) == 0; i++)
		usleep(10000);
	t0 = now_ns();
	kill(pid, SIGKILL);
	/* 2258 reads at 400 IOPS are under 6 s: a minute means the teardown hangs */
	for (int i = 0; i < 6000; i++) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid) {
			reap_ns = now_ns() - t0;
			break;
		}
		usleep(10000);
	}
	if (reap_ns < 0)
		return failf("the killed process was not reaped within 60 s: its ring's teardown "
			     "hangs");
	if (!WIFSIGNALED(status) || !busy->stage)
		ret = failf("the child did not queue its reads (status 0x%x)", status);
	for (int i = 0; i < 600; i++) {
		after = module_refcnt();
		if (after == before)
			break;
		usleep(50000);
	}
	if (!ret && after != before)
		ret = failf("module refcnt %ld 30 s after the reap, %ld before", after, before);
	if (!ret && ioc(moe_fd, DRM_IOCTL_MOE_MODEL_INFO, &info))
		ret = failf("MODEL_INFO: %s", strerror(errno));
	printf("# ring-teardown: reaped in %.1f ms; the model counted %llu requests (%s)\n",
	       reap_ns / 1e6, (unsigned long long)info.requests,
	       cancelable ? "cancelable commands" : "no cancelable commands before 6.7");
	if (!ret && info.requests != want)
		ret = failf("%llu requests read, expected %llu", (unsigned long long)info.requests,
			    (unsigned long long)want);
	if (!ret && cancelable && reap_ns > 1000000000LL)
		ret = failf("the exit waited %.1f ms", reap_ns / 1e6);
	if (model_unregister(moe_fd, id) && !ret)
		ret = failf("unregister: %s", strerror(errno));
	return ret;
}

static int t_rmmod_in_use(void)
{
	struct drm_moe_fetch_req reqs[N_EXT];
	int64_t res[N_EXT];
	uint64_t ticket;
	long r;

	for (int i = 0; i < N_EXT; i++)
		reqs[i] = (struct drm_moe_fetch_req){
			.model_id = big_id, .extent = i, .handle = big_bo, .bo_offset = i * 2 * MIB,
		};
	drop_caches();
	EXPECT(!fetch(moe_fd, reqs, N_EXT, res, &ticket), "FETCH");
	r = syscall(SYS_delete_module, "moe", O_NONBLOCK);
	EXPECT(r < 0 && (errno == EWOULDBLOCK || errno == EBUSY),
	       "delete_module(moe) with the node open and reads in flight: %ld (%s)", r,
	       strerror(errno));
	EXPECT(!wait_ticket(moe_fd, ticket, now_ns() + 60000000000LL, NULL), "WAIT after rmmod");
	EXPECT(access("/sys/module/moe", F_OK) == 0, "the module is gone");
	return 0;
}

static double gbps(uint64_t bytes, int64_t ns)
{
	return ns > 0 ? (double)bytes / (double)ns : 0;
}

/* The userspace path: O_DIRECT io_uring reads of the same extents. */
static int64_t user_read_ns(const struct drm_moe_extent *ext, int n, uint8_t *buf)
{
	struct io_uring ring;
	struct io_uring_cqe *cqe;
	int64_t t0;
	int fd = open(big_path, O_RDONLY | O_DIRECT);

	if (fd < 0 || io_uring_queue_init(128, &ring, 0))
		return -1;
	t0 = now_ns();
	for (int i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);

		io_uring_prep_read(sqe, fd, buf + i * MIB, ext[i].length, ext[i].offset);
	}
	io_uring_submit(&ring);
	for (int i = 0; i < n; i++) {
		if (io_uring_wait_cqe(&ring, &cqe) || cqe->res != (int)ext[i].length) {
			io_uring_queue_exit(&ring);
			close(fd);
			return -1;
		}
		io_uring_cqe_seen(&ring, cqe);
	}
	t0 = now_ns() - t0;
	io_uring_queue_exit(&ring);
	close(fd);
	return t0;
}

static int t_perf(void)
{
	struct drm_moe_extent ext[96];
	struct drm_moe_fetch_req reqs[96];
	int64_t res[96], best_k = INT64_MAX, best_u = INT64_MAX, best_s = INT64_MAX;
	uint8_t *buf, *small;
	uint32_t id;

	for (int i = 0; i < 96; i++) {
		ext[i] = (struct drm_moe_extent){ i * MIB, MIB };
		reqs[i] = (struct drm_moe_fetch_req){
			.extent = i, .handle = big_bo, .bo_offset = i * MIB,
		};
	}
	/* run alone (MOE_VMTEST_ONLY), the BO is not mapped yet */
	if (!big_map)
		big_map = bo_map(moe_fd, big_bo, 96 * MIB);
	EXPECT(big_map, "mmap of the 96 MiB BO failed");
	EXPECT(!model_register(moe_fd, big_fd, "perf", ext, 96, &id), "register");
	for (int i = 0; i < 96; i++)
		reqs[i].model_id = id;
	buf = aligned_alloc(4096, 96 * MIB);
	EXPECT(buf, "out of memory");
	memset(buf, 0, 96 * MIB);
	/* The same reads into 4 KiB pages, as BO pages are: what page size costs here. */
	small = mmap(NULL, 96 * MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	EXPECT(small != MAP_FAILED, "mmap");
	madvise(small, 96 * MIB, MADV_NOHUGEPAGE);
	memset(small, 0, 96 * MIB);
	for (int rep = 0; rep < 5; rep++) {
		int64_t t;

		memset(big_map, 0, 96 * MIB);
		drop_caches();
		t = now_ns();
		EXPECT(!fetch_wait(moe_fd, reqs, 96, res), "driver FETCH");
		t = now_ns() - t;
		best_k = t < best_k ? t : best_k;
		drop_caches();
		t = user_read_ns(ext, 96, buf);
		EXPECT(t > 0, "userspace O_DIRECT io_uring reads failed");
		best_u = t < best_u ? t : best_u;
		drop_caches();
		t = user_read_ns(ext, 96, small);
		EXPECT(t > 0, "userspace O_DIRECT io_uring reads into 4 KiB pages failed");
		best_s = t < best_s ? t : best_s;
	}
	munmap(small, 96 * MIB);
	EXPECT(!memcmp(buf, big_map, 96 * MIB), "driver and userspace bytes differ");
	printf("# perf: 96 x 1 MiB extents, best of 5, caches dropped: driver %.3f GB/s, "
	       "userspace O_DIRECT io_uring %.3f GB/s (into 4 KiB pages %.3f GB/s), "
	       "driver/userspace %.2f\n", gbps(96 * MIB, best_k), gbps(96 * MIB, best_u),
	       gbps(96 * MIB, best_s), (double)best_u / (double)best_k);
	free(buf);
	EXPECT(!model_unregister(moe_fd, id), "unregister perf");
	/*
	 * The floor: BO pages are 4 KiB, so userspace reading into 4 KiB pages is the
	 * like-for-like baseline; the two read alike under emulation.  A quarter of it
	 * leaves room for a noisy host and still catches a path that lost its batching.
	 */
	EXPECT(best_k <= 4 * best_s, "the driver read at %.3f GB/s, under a quarter of "
	       "userspace into 4 KiB pages (%.3f GB/s)", gbps(96 * MIB, best_k),
	       gbps(96 * MIB, best_s));
	return 0;
}

static int write_param(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	ssize_t n = fd < 0 ? -1 : write(fd, value, strlen(value));

	if (fd >= 0)
		close(fd);
	return n == (ssize_t)strlen(value) ? 0 : failf("%s: %s", path, strerror(errno));
}

/* Lines of the kernel log holding @needle. */
static int dmesg_count(const char *needle)
{
	FILE *f = popen("dmesg", "r");
	char line[1024];
	int n = 0;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		n += strstr(line, needle) != NULL;
	pclose(f);
	return n;
}

/*
 * The debug mask picks categories and prints through drm_dbg: with DRM's
 * debug output on, FETCH logs only when bit 1 (MOE_DBG_FETCH) is set, and
 * bit 0 alone (registrations) says nothing about batches.
 */
static int t_debug_mask(void)
{
	static const char *mask_path = "/sys/module/moe/parameters/debug";
	struct drm_moe_fetch_req req = {
		.model_id = big_id, .extent = 0, .handle = big_bo, .bo_offset = 0,
	};
	const char *needle = "fetch: 1 requests";
	int64_t res;
	int before, after, ret = 0;

	if (write_param("/sys/module/drm/parameters/debug", "0x2"))
		return -1;
	for (int pass = 0; pass < 3 && !ret; pass++) {
		static const char *masks[] = { "0", "1", "2" };

		if (write_param(mask_path, masks[pass])) {
			ret = -1;
			break;
		}
		before = dmesg_count(needle);
		if (fetch_wait(moe_fd, &req, 1, &res) || res != (int64_t)big_ext[0].length) {
			ret = failf("FETCH with debug %s: %s, result %lld", masks[pass],
				    strerror(errno), (long long)res);
			break;
		}
		after = dmesg_count(needle);
		if (after - before != (pass == 2))
			ret = failf("debug mask %s: %d new '%s' lines in dmesg", masks[pass],
				    after - before, needle);
	}
	write_param(mask_path, "0");
	write_param("/sys/module/drm/parameters/debug", "0");
	return ret;
}

/*
 * Kernel log lines that mean trouble (init.sh's final scan uses the same
 * list); @first gets the first such line past the first @skip of them.
 */
static int dmesg_bad(int skip, char *first, size_t len)
{
	static const char *const pats[] = {
		"BUG", "WARNING", "Oops", "general protection", "possible circular locking",
		"lockdep", "INFO: task", "Call Trace",
	};
	FILE *f = popen("dmesg", "r");
	char line[1024];
	int n = 0;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		for (size_t i = 0; i < sizeof(pats) / sizeof(pats[0]); i++) {
			if (!strstr(line, pats[i]))
				continue;
			if (n++ == skip && first && len) {
				size_t m = strnlen(line, len - 1);

				memcpy(first, line, m);
				first[m] = 0;
			}
			break;
		}
	}
	pclose(f);
	return n;
}

static void run(const char *name, int (*fn)(void))
{
	char bad[256] = "";
	int before = dmesg_bad(0, NULL, 0), after;

	why[0] = 0;
	if (fn()) {
		printf("not ok %s: %s\n", name, why);
		n_fail++;
	} else if ((after = dmesg_bad(before, bad, sizeof(bad))) != before) {
		bad[strcspn(bad, "\n")] = 0;
		printf("not ok %s: the kernel log gained %d bad lines, the first: %s\n", name,
		       after - before, bad);
		n_fail++;
	} else {
		printf("ok %s\n", name);
		n_pass++;
	}
	fflush(stdout);
}

/* In order; `moe-vmtest --list` prints the names, so run.sh knows what must report. */
static const struct { const char *name; int (*fn)(void); } tests[] = {
	{ "get-param", t_get_param },
	{ "bo-create-mmap-prime", t_bo },
	{ "register", t_register },
	{ "register-metadata-uapi-2.1", t_meta },
	{ "fetch-wait-equals-pread", t_fetch_wait },
	{ "fetch-sub-range", t_subrange },
	{ "bo-userptr", t_userptr },
	{ "fetch-eof-tail-zeroed", t_eof_tail },
	{ "fetch-per-request-results", t_per_request_results },
	{ "register-invalid-errnos", t_register_invalid },
	{ "fetch-invalid-errnos", t_fetch_invalid },
	{ "model-info-counters-debugfs", t_info },
	{ "wait-absolute-timeout", t_wait_timeout },
	{ "fetch-io-uring", t_uring },
	{ "debug-mask-drm-dbg", t_debug_mask },
	{ "unprivileged", t_unprivileged },
	{ "unregister-in-flight", t_unregister_inflight },
	{ "killed-mid-fetch", t_killed_midfetch },
	{ "killed-thousands-in-flight", t_killed_thousands },
	{ "pending-bound-both-paths", t_pending_bound },
	{ "cancel-low-under-load", t_cancel_under_load },
	{ "unregister-cancels-queued", t_unregister_cancels_queued },
	{ "killed-with-queued-prefetches", t_killed_queued },
	{ "ring-teardown-with-queued-prefetch", t_ring_teardown_queued },
	{ "rmmod-in-use", t_rmmod_in_use },
	{ "perf-driver-vs-userspace", t_perf },
};

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 2 && !strcmp(argv[1], "--list")) {
		for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
			printf("%s\n", tests[i].name);
		return 0;
	}
	/* moe-vmtest --as UID GID PROG ARGS: run PROG unprivileged, in group GID only. */
	if (argc >= 5 && !strcmp(argv[1], "--as")) {
		uid_t uid = (uid_t)atoi(argv[2]);
		gid_t gid = (gid_t)atoi(argv[3]);

		if (setgroups(1, &gid) || setresgid(gid, gid, gid) || setresuid(uid, uid, uid)) {
			perror("moe-vmtest --as");
			return 2;
		}
		execv(argv[4], argv + 4);
		perror(argv[4]);
		return 2;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: moe-vmtest DIR (holding big.bin and tail.bin)\n");
		return 2;
	}
	dir = argv[1];
	snprintf(big_path, sizeof(big_path), "%s/big.bin", dir);
	snprintf(tail_path, sizeof(tail_path), "%s/tail.bin", dir);
	moe_fd = open_moe();
	big_fd = open(big_path, O_RDONLY);
	if (moe_fd < 0 || big_fd < 0) {
		printf("not ok setup: %s\n", moe_fd < 0 ? "no DRM device named moe" :
		       "cannot open big.bin");
		return 1;
	}
	if (bo_create(moe_fd, 96 * MIB, &big_bo)) {
		printf("not ok setup: BO_CREATE of 96 MiB: %s\n", strerror(errno));
		return 1;
	}

	/* MOE_VMTEST_ONLY=NAME: that test alone (the benchmark runs perf-driver-vs-userspace) */
	for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++)
		if (!getenv("MOE_VMTEST_ONLY") || !strcmp(getenv("MOE_VMTEST_ONLY"), tests[i].name))
			run(tests[i].name, tests[i].fn);

	printf("# moe-vmtest: %d passed, %d failed\n", n_pass, n_fail);
	/* The model stays registered: module unload must release it. */
	close(moe_fd);
	close(big_fd);
	return n_fail ? 1 : 0;
}
