/* SPDX-License-Identifier: MIT */
/*
 * The moe.ko client: finds the driver's node, registers models, lists them,
 * and serves the I/O engine as backend MOE_IO_KMOD.
 *
 * The engine hands out destination buffers from its own staging pool, which
 * the driver cannot write (it reads into its buffer objects only, and an
 * O_DIRECT read cannot target a BO mapping either: it is VM_PFNMAP).  So the
 * backend reads into a bounce BO and copies; a staging pool carved from BOs
 * would remove the copy.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <xf86drm.h>

#include "io/kmod.h"
#include "util/util.h"

_Static_assert(MOE_KMOD_NAME_MAX + 1 == DRM_MOE_NAME_LEN, "name length differs from the uAPI");
_Static_assert(MOE_KMOD_LAT_BUCKETS == DRM_MOE_LAT_BUCKETS, "histogram differs from the uAPI");

#define KMOD_HINT "run `modprobe moe` as root (Documentation/driver.rst), or use the " \
	"userspace I/O path (backend auto) without the driver"

static int kioctl(const struct moe_kmod *k, unsigned long req, void *arg)
{
	return drmIoctl(k->fd, req, arg) ? -errno : 0;
}

/* The node whose device is the platform device "moe", found through sysfs. */
static int find_node(char *path, size_t len)
{
	static const struct { const char *cls, *prefix, *dev; } kinds[] = {
		{ "/sys/class/accel", "accel", "/dev/accel" },
		{ "/sys/class/drm", "renderD", "/dev/dri" },
	};

	for (size_t i = 0; i < MOE_ARRAY_SIZE(kinds); i++) {
		DIR *d = opendir(kinds[i].cls);
		struct dirent *de;

		if (!d)
			continue;
		while ((de = readdir(d))) {
			char link[PATH_MAX], target[PATH_MAX];
			const char *base;
			ssize_t n;

			if (strncmp(de->d_name, kinds[i].prefix, strlen(kinds[i].prefix)))
				continue;
			snprintf(link, sizeof(link), "%s/%s/device", kinds[i].cls, de->d_name);
			n = readlink(link, target, sizeof(target) - 1);
			if (n <= 0)
				continue;
			target[n] = 0;
			base = strrchr(target, '/');
			if (strcmp(base ? base + 1 : target, "moe"))
				continue;
			snprintf(path, len, "%s/%s", kinds[i].dev, de->d_name);
			closedir(d);
			return 0;
		}
		closedir(d);
	}
	return -ENODEV;
}

static int get_param(struct moe_kmod *k, uint32_t param, uint64_t *out)
{
	struct drm_moe_get_param p = { .param = param };
	int ret = kioctl(k, DRM_IOCTL_MOE_GET_PARAM, &p);

	*out = p.value;
	return ret;
}

int moe_kmod_open(struct moe_kmod **out)
{
	struct moe_kmod *k;
	drmVersionPtr v;
	char node[PATH_MAX];
	uint64_t version;
	int ret;

	if (!out)
		return moe_err(EINVAL, "moe_kmod_open: out is required");
	*out = NULL;
	if (access("/sys/module/moe", F_OK))
		return moe_err(ENODEV, "moe.ko is not loaded: " KMOD_HINT);
	if (find_node(node, sizeof(node)))
		return moe_err(ENODEV, "moe.ko is loaded but has no device node in /dev/dri or "
			       "/dev/accel: is devtmpfs or udev running?");
	k = calloc(1, sizeof(*k));
	if (!k)
		return moe_err(ENOMEM, "no memory for the driver client");
	k->fd = open(node, O_RDWR | O_CLOEXEC);
	if (k->fd < 0) {
		ret = -errno;
		free(k);
		if (ret == -EACCES || ret == -EPERM)
			return moe_err(-ret, "%s: no access: join group moe (the udev rule "
				       "kmod/60-moe.rules gives the node to root:moe, mode 0660)", node);
		return moe_err(-ret, "%s: %s", node, strerror(-ret));
	}
	v = drmGetVersion(k->fd);
	if (!v || strcmp(v->name, "moe")) {
		drmFreeVersion(v);
		close(k->fd);
		free(k);
		return moe_err(ENODEV, "%s is not the moe driver's node", node);
	}
	drmFreeVersion(v);
	ret = get_param(k, DRM_MOE_PARAM_VERSION, &version);
	if (!ret && version >> 16 != DRM_MOE_VERSION_MAJOR)
		ret = moe_err(EPROTO, "moe.ko speaks uAPI %llu.%llu, this libmoe %d.x: install "
			      "matching versions", (unsigned long long)(version >> 16),
			      (unsigned long long)(version & 0xffff), DRM_MOE_VERSION_MAJOR);
	if (!ret)
		ret = get_param(k, DRM_MOE_PARAM_ALIGN, &k->align);
	if (!ret)
		ret = get_param(k, DRM_MOE_PARAM_MAX_BATCH, &k->max_batch);
	if (!ret)
		ret = get_param(k, DRM_MOE_PARAM_MAX_EXTENTS, &k->max_extents);
	if (!ret)
		ret = get_param(k, DRM_MOE_PARAM_MAX_BO_SIZE, &k->max_bo);
	if (!ret && (!k->align || k->align & (k->align - 1)))
		ret = moe_err(EPROTO, "moe.ko reports alignment %llu", (unsigned long long)k->align);
	if (ret) {
		close(k->fd);
		free(k);
		return ret == -EPROTO ? ret : moe_err(-ret, "%s: GET_PARAM: %s", node,
						      strerror(-ret));
	}
	*out = k;
	return 0;
}

void moe_kmod_close(struct moe_kmod *k)
{
	if (!k)
		return;
	close(k->fd);
	free(k);
}

int moe_kmod_bo_create(struct moe_kmod *k, uint64_t size, struct moe_kmod_bo *bo)
{
	struct drm_moe_bo_create c = { .size = size };
	struct drm_moe_bo_mmap m = { 0 };
	void *p;
	int ret;

	memset(bo, 0, sizeof(*bo));
	ret = kioctl(k, DRM_IOCTL_MOE_BO_CREATE, &c);
	if (ret)
		return moe_err(-ret, "moe.ko: creating a %llu-byte buffer: %s",
			       (unsigned long long)size, strerror(-ret));
	m.handle = c.handle;
	ret = kioctl(k, DRM_IOCTL_MOE_BO_MMAP, &m);
	p = ret ? MAP_FAILED : mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, k->fd,
				    (off_t)m.offset);
	if (p == MAP_FAILED) {
		ret = ret ? ret : -errno;
		drmCloseBufferHandle(k->fd, c.handle);
		return moe_err(-ret, "moe.ko: mapping a buffer: %s", strerror(-ret));
	}
	bo->handle = c.handle;
	bo->size = size;
	bo->map = p;
	return 0;
}

void moe_kmod_bo_destroy(struct moe_kmod *k, struct moe_kmod_bo *bo)
{
	if (bo->map)
		munmap(bo->map, bo->size);
	if (bo->handle)
		drmCloseBufferHandle(k->fd, bo->handle);
	memset(bo, 0, sizeof(*bo));
}

int moe_kmod_info(struct moe_kmod *k, uint32_t id, struct drm_moe_model_info *info,
		  struct drm_moe_extent *ext, uint32_t cap)
{
	memset(info, 0, sizeof(*info));
	info->model_id = id;
	info->extents_ptr = (uintptr_t)ext;
	info->n_extents = ext ? cap : 0;
	return kioctl(k, DRM_IOCTL_MOE_MODEL_INFO, info);
}

int moe_kmod_fetch(struct moe_kmod *k, const struct drm_moe_fetch_req *reqs, uint32_t n,
		   int64_t *results, uint64_t *ticket)
{
	struct drm_moe_fetch f = {
		.reqs_ptr = (uintptr_t)reqs, .results_ptr = (uintptr_t)results, .count = n,
	};
	int ret = kioctl(k, DRM_IOCTL_MOE_FETCH, &f);

	*ticket = f.ticket;
	return ret;
}

int moe_kmod_wait(struct moe_kmod *k, uint64_t ticket, double timeout_s, uint32_t *failed)
{
	struct drm_moe_wait w = { .ticket = ticket };
	struct timespec ts;
	int ret;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	w.timeout_ns = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec +
		       (int64_t)(timeout_s * 1e9);
	/* The deadline is absolute, so a restart after a signal does not extend it. */
	do {
		ret = kioctl(k, DRM_IOCTL_MOE_WAIT, &w);
	} while (ret == -EINTR || ret == -ERESTART);
	if (failed)
		*failed = w.failed;
	return ret;
}

static void info_to_public(const struct drm_moe_model_info *in, struct moe_kmod_model_info *out)
{
	memset(out, 0, sizeof(*out));
	out->id = in->model_id;
	out->n_extents = in->n_extents;
	memcpy(out->name, in->name, sizeof(out->name));
	out->name[MOE_KMOD_NAME_MAX] = 0;
	out->file_size = in->file_size;
	out->bytes = in->bytes;
	out->requests = in->requests;
	out->errors = in->errors;
	out->inflight = in->inflight;
	memcpy(out->lat_hist, in->lat_hist, sizeof(out->lat_hist));
}

static int check_name(const char *name)
{
	if (!name || !*name || strlen(name) > MOE_KMOD_NAME_MAX)
		return moe_err(EINVAL, "model name '%s': 1 to %d bytes", name ? name : "(null)",
			       MOE_KMOD_NAME_MAX);
	return 0;
}

static int find_raw(struct moe_kmod *k, const char *name, struct drm_moe_model_info *info)
{
	int ret = check_name(name);

	if (ret)
		return ret;
	memset(info, 0, sizeof(*info));
	info->flags = DRM_MOE_INFO_BY_NAME;
	snprintf(info->name, sizeof(info->name), "%s", name);
	ret = kioctl(k, DRM_IOCTL_MOE_MODEL_INFO, info);
	if (ret == -ENOENT)
		return moe_err(ENOENT, "no model named '%s' is registered with moe.ko "
			       "(`moectl status` lists them)", name);
	if (ret)
		return moe_err(-ret, "moe.ko: MODEL_INFO '%s': %s", name, strerror(-ret));
	return 0;
}

int moe_kmod_find(struct moe_kmod *k, const char *name, struct moe_kmod_model_info *out)
{
	struct drm_moe_model_info info;
	int ret;

	if (!k || !out)
		return moe_err(EINVAL, "moe_kmod_find: k and out are required");
	ret = find_raw(k, name, &info);
	if (!ret)
		info_to_public(&info, out);
	return ret;
}

int moe_kmod_next(struct moe_kmod *k, uint32_t after, struct moe_kmod_model_info *out)
{
	struct drm_moe_model_info info = { .model_id = after, .flags = DRM_MOE_INFO_NEXT };
	int ret;

	if (!k || !out)
		return moe_err(EINVAL, "moe_kmod_next: k and out are required");
	ret = kioctl(k, DRM_IOCTL_MOE_MODEL_INFO, &info);
	if (ret == -ENOENT)
		return -ENOENT;
	if (ret)
		return moe_err(-ret, "moe.ko: MODEL_INFO: %s", strerror(-ret));
	info_to_public(&info, out);
	return 0;
}

int moe_kmod_expert_extents(const struct moe_kmod *k, const struct moe_model *model,
			    uint64_t file_size, struct drm_moe_extent **out, uint32_t *n_out)
{
	struct moe_hparams hp;
	struct drm_moe_extent *ext = NULL;
	uint64_t limit = MOE_ALIGN_UP(file_size, k->align);
	size_t n = 0, cap = 0;
	int ret;

	ret = moe_model_hparams(model, &hp);
	if (ret)
		return ret;
	for (uint32_t l = 0; l < hp.n_layer; l++) {
		struct moe_layer_info li;

		ret = moe_model_layer(model, l, &li);
		if (ret)
			goto err;
		if (!li.is_moe)
			continue;
		for (uint32_t e = 0; e < hp.n_expert; e++) {
			struct moe_expert ex;

			ret = moe_model_expert(model, l, e, &ex);
			if (ret)
				goto err;
			for (uint32_t m = 0; m < ex.n_mats; m++) {
				uint64_t start = ex.mats[m].offset / k->align * k->align;
				uint64_t end = MOE_ALIGN_UP(ex.mats[m].offset + ex.mats[m].bytes,
							    k->align);

				if (n == cap) {
					size_t ncap = cap ? cap * 2 : 1024;
					void *p = realloc(ext, ncap * sizeof(*ext));

					if (!p) {
						ret = moe_err(ENOMEM, "no memory for the extent table");
						goto err;
					}
					ext = p;
					cap = ncap;
				}
				ext[n].offset = start;
				ext[n].length = MOE_MIN(end, limit) - start;
				n++;
			}
		}
	}
	if (!n) {
		ret = moe_err(EINVAL, "%s has no routed experts to register", moe_model_path(model));
		goto err;
	}
	if (n > k->max_extents) {
		ret = moe_err(E2BIG, "%s has %zu expert matrices; moe.ko takes at most %llu per "
			      "model (module parameter max_extents)", moe_model_path(model), n,
			      (unsigned long long)k->max_extents);
		goto err;
	}
	*out = ext;
	*n_out = (uint32_t)n;
	return 0;
err:
	free(ext);
	return ret;
}

int moe_kmod_register(struct moe_kmod *k, const char *name, const struct moe_model *model,
		      uint32_t *id)
{
	struct drm_moe_model_register r = { 0 };
	struct moe_model_summary sum;
	struct drm_moe_extent *ext = NULL;
	const char *path;
	uint32_t n = 0;
	int fd, ret;

	if (!k || !model)
		return moe_err(EINVAL, "moe_kmod_register: k and model are required");
	ret = check_name(name);
	if (ret)
		return ret;
	ret = moe_model_summary(model, &sum);
	if (ret)
		return ret;
	ret = moe_kmod_expert_extents(k, model, sum.file_bytes, &ext, &n);
	if (ret)
		return ret;
	path = moe_model_path(model);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = moe_err(errno, "%s: %s", path, strerror(errno));
		goto out_free;
	}
	r.fd = fd;
	snprintf(r.name, sizeof(r.name), "%s", name);
	r.extents_ptr = (uintptr_t)ext;
	r.n_extents = n;
	ret = kioctl(k, DRM_IOCTL_MOE_MODEL_REGISTER, &r);
	close(fd);
	switch (ret) {
	case 0:
		if (id)
			*id = r.model_id;
		break;
	case -EPERM:
		ret = moe_err(EPERM, "registering '%s' needs CAP_SYS_ADMIN: run as root", name);
		break;
	case -EEXIST:
		ret = moe_err(EEXIST, "a model named '%s' is already registered: "
			      "`moectl unload %s` first or pick another name", name, name);
		break;
	case -EOPNOTSUPP:
		ret = moe_err(EOPNOTSUPP, "%s: its filesystem cannot do direct I/O on it (tmpfs, "
			      "encrypted, verity or DAX): copy it to ext4/xfs on the NVMe drive", path);
		break;
	default:
		ret = moe_err(-ret, "moe.ko refused '%s' (%u extents): %s", path, n, strerror(-ret));
	}
out_free:
	free(ext);
	return ret;
}

int moe_kmod_unregister(struct moe_kmod *k, const char *name)
{
	struct drm_moe_model_unregister u = { 0 };
	struct drm_moe_model_info info;
	int ret;

	if (!k)
		return moe_err(EINVAL, "moe_kmod_unregister: k is required");
	ret = find_raw(k, name, &info);
	if (ret)
		return ret;
	u.model_id = info.model_id;
	ret = kioctl(k, DRM_IOCTL_MOE_MODEL_UNREGISTER, &u);
	if (ret == -EPERM)
		return moe_err(EPERM, "unregistering '%s' needs CAP_SYS_ADMIN: run as root", name);
	if (ret)
		return moe_err(-ret, "moe.ko: unregister '%s': %s", name, strerror(-ret));
	return 0;
}

int moe_kmod_warm(struct moe_kmod *k, const char *name, uint64_t *bytes_out, double *seconds)
{
	struct drm_moe_model_info info;
	struct drm_moe_extent *ext = NULL;
	struct drm_moe_fetch_req *reqs = NULL;
	int64_t *res = NULL;
	struct moe_kmod_bo bo = { 0 };
	uint64_t bo_size = 64ull << 20, bytes = 0;
	double t0 = moe_now();
	uint32_t i = 0;
	int ret;

	if (!k)
		return moe_err(EINVAL, "moe_kmod_warm: k is required");
	ret = find_raw(k, name, &info);
	if (ret)
		return ret;
	ext = calloc(info.n_extents, sizeof(*ext));
	reqs = calloc(k->max_batch, sizeof(*reqs));
	res = calloc(k->max_batch, sizeof(*res));
	if (!ext || !reqs || !res) {
		ret = moe_err(ENOMEM, "no memory to warm '%s'", name);
		goto out;
	}
	ret = moe_kmod_info(k, info.model_id, &info, ext, info.n_extents);
	if (ret) {
		ret = moe_err(-ret, "moe.ko: MODEL_INFO '%s': %s", name, strerror(-ret));
		goto out;
	}
	for (uint32_t j = 0; j < info.n_extents; j++)
		bo_size = MOE_MAX(bo_size, ext[j].length);
	ret = moe_kmod_bo_create(k, bo_size, &bo);
	if (ret)
		goto out;
	while (i < info.n_extents) {
		uint64_t used = 0, ticket;
		uint32_t n = 0, failed;

		while (i < info.n_extents && n < k->max_batch && used + ext[i].length <= bo_size) {
			reqs[n] = (struct drm_moe_fetch_req){
				.model_id = info.model_id, .extent = i, .handle = bo.handle,
				.bo_offset = used,
			};
			used += ext[i].length;
			n++;
			i++;
		}
		ret = moe_kmod_fetch(k, reqs, n, res, &ticket);
		if (!ret)
			ret = moe_kmod_wait(k, ticket, 600, &failed);
		if (ret) {
			ret = moe_err(-ret, "moe.ko: reading '%s': %s", name, strerror(-ret));
			goto out;
		}
		for (uint32_t j = 0; j < n; j++) {
			if (res[j] < 0) {
				ret = moe_err((int)-res[j], "moe.ko: '%s' extent %u: %s", name,
					      reqs[j].extent, strerror((int)-res[j]));
				goto out;
			}
			bytes += (uint64_t)res[j];
		}
	}
	if (bytes_out)
		*bytes_out = bytes;
	if (seconds)
		*seconds = moe_now() - t0;
out:
	moe_kmod_bo_destroy(k, &bo);
	free(res);
	free(reqs);
	free(ext);
	return ret;
}

/* ------------------------------------------------------ engine backend */

const struct moe_kmod_client moe_kmod_client_driver = {
	.open = moe_kmod_open,
	.close = moe_kmod_close,
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
