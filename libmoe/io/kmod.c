/* SPDX-License-Identifier: MIT */
/*
 * The moe.ko client: finds the driver's node, speaks its ioctls (buffer
 * objects, FETCH, WAIT), registers models and lists them.  The I/O engine
 * backend built on it is kmod_io.c.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <xf86drm.h>

#include "gguf.h"
#include "io/kmod.h"
#include "model.h"
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
	k->minor = (uint32_t)(version & 0xffff);
	if (!ret)
		ret = get_param(k, DRM_MOE_PARAM_ALIGN, &k->align);
	if (!ret)
		ret = get_param(k, DRM_MOE_PARAM_MAX_BATCH, &k->max_batch);
	if (!ret)
		ret = get_param(k, DRM_MOE_PARAM_MAX_EXTENTS, &k->max_extents);
	if (!ret)
		ret = get_param(k, DRM_MOE_PARAM_MAX_BO_SIZE, &k->max_bo);
	if (!ret)
		ret = get_param(k, DRM_MOE_PARAM_CAPS, &k->caps);
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

void moe_kmod_destroy(struct moe_kmod *k)
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

int moe_kmod_bo_userptr(struct moe_kmod *k, void *addr, uint64_t size, struct moe_kmod_bo *bo)
{
	struct drm_moe_bo_userptr u = { .addr = (uintptr_t)addr, .size = size };
	int ret;

	memset(bo, 0, sizeof(*bo));
	if (k->minor < 3)
		return -EOPNOTSUPP;
	ret = kioctl(k, DRM_IOCTL_MOE_BO_USERPTR, &u);
	if (ret)
		return ret;
	*bo = (struct moe_kmod_bo){ .handle = u.handle, .size = size, .map = addr, .user = true };
	return 0;
}

void moe_kmod_bo_destroy(struct moe_kmod *k, struct moe_kmod_bo *bo)
{
	/* A userptr BO's memory is its owner's to unmap. */
	if (bo->map && !bo->user)
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

int moe_kmod_fetch_flags(struct moe_kmod *k, const struct drm_moe_fetch_req *reqs, uint32_t n,
			 uint32_t flags, int64_t *results, uint64_t *ticket)
{
	struct drm_moe_fetch f = {
		.reqs_ptr = (uintptr_t)reqs, .results_ptr = (uintptr_t)results, .count = n,
		/* a driver before uAPI 2.2 has no priorities: everything is demand there */
		.flags = k->minor >= 2 ? flags : 0,
	};
	int ret = kioctl(k, DRM_IOCTL_MOE_FETCH, &f);

	*ticket = f.ticket;
	return ret;
}

int moe_kmod_fetch(struct moe_kmod *k, const struct drm_moe_fetch_req *reqs, uint32_t n,
		   int64_t *results, uint64_t *ticket)
{
	return moe_kmod_fetch_flags(k, reqs, n, 0, results, ticket);
}

int moe_kmod_cancel(struct moe_kmod *k, uint64_t ticket, uint32_t *cancelled)
{
	struct drm_moe_cancel c = { .ticket = ticket };
	int ret;

	if (k->minor < 2)
		return -EOPNOTSUPP;
	ret = kioctl(k, DRM_IOCTL_MOE_CANCEL, &c);
	if (!ret && cancelled)
		*cancelled = c.cancelled;
	return ret;
}

int moe_kmod_cancel_tag(struct moe_kmod *k, uint64_t tag, uint32_t *cancelled)
{
	struct drm_moe_cancel c = { .ticket = tag, .flags = DRM_MOE_CANCEL_TAG };
	int ret;

	if (k->minor < 3)
		return -EOPNOTSUPP;
	ret = kioctl(k, DRM_IOCTL_MOE_CANCEL, &c);
	if (!ret && cancelled)
		*cancelled = c.cancelled;
	return ret;
}

int moe_kmod_uring_fd(struct moe_kmod *k)
{
	return k->caps & DRM_MOE_CAP_URING_CMD ? k->fd : -EOPNOTSUPP;
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
	out->n_meta = in->n_meta;
	memcpy(out->lat_hist, in->lat_hist, sizeof(out->lat_hist));
}

static int check_name(const char *name)
{
	if (!name || !*name || strlen(name) > MOE_KMOD_NAME_MAX)
		return moe_err(EINVAL, "model name '%s': 1 to %d bytes", name ? name : "(null)",
			       MOE_KMOD_NAME_MAX);
	return 0;
}

int moe_kmod_find_raw(struct moe_kmod *k, const char *name, struct drm_moe_model_info *info)
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
	ret = moe_kmod_find_raw(k, name, &info);
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

static int ext_cmp(const void *a, const void *b)
{
	const struct drm_moe_extent *x = a, *y = b;

	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

int moe_kmod_model_extents(const struct moe_kmod *k, const struct moe_model *model,
			   uint64_t file_size, struct drm_moe_extent **out, uint32_t *n_out,
			   uint32_t *n_meta)
{
	uint64_t limit = MOE_ALIGN_UP(file_size, k->align);
	const struct gguf_file *g = model->gguf;
	struct drm_moe_extent *meta, *exp = NULL, *all;
	uint32_t n_exp = 0, nm = 0;
	int ret;

	meta = calloc(g->n_tensors + 1, sizeof(*meta));
	if (!meta)
		return moe_err(ENOMEM, "no memory for the extent table");
	/* Extent 0: the header and tensor table, up to where the tensor data begins. */
	meta[0] = (struct drm_moe_extent){ 0, MOE_MIN(MOE_ALIGN_UP(MOE_MAX(g->data_offset, 1),
							    k->align), limit) };
	nm = 1;
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct moe_tensor_info *t = &model->tinfo[i];
		uint64_t start = t->offset / k->align * k->align;

		if (!t->bytes || t->role == MOE_ROLE_UNUSED ||
		    (t->role >= MOE_ROLE_EXPERT_GATE && t->role <= MOE_ROLE_EXPERT_GATE_UP))
			continue;
		meta[nm].offset = start;
		meta[nm].length = MOE_MIN(MOE_ALIGN_UP(t->offset + t->bytes, k->align), limit) - start;
		nm++;
	}
	/* Widened tensors share blocks: merge overlaps so every tensor lies in one extent. */
	qsort(meta + 1, nm - 1, sizeof(*meta), ext_cmp);
	{
		uint32_t w = 0;

		for (uint32_t i = 1; i < nm; i++) {
			struct drm_moe_extent *c = &meta[w];

			if (meta[i].offset < c->offset + c->length) {
				c->length = MOE_MAX(c->offset + c->length,
						    meta[i].offset + meta[i].length) - c->offset;
				continue;
			}
			meta[++w] = meta[i];
		}
		nm = w + 1;
	}
	for (uint32_t i = 0; i < nm; i++)
		if (meta[i].length > k->max_bo) {
			ret = moe_err(E2BIG, "%s: the non-expert data at [0x%llx, +0x%llx) is one "
				      "extent larger than moe.ko's largest buffer (%llu MiB; module "
				      "parameter max_bo_mb)", moe_model_path(model),
				      (unsigned long long)meta[i].offset,
				      (unsigned long long)meta[i].length,
				      (unsigned long long)(k->max_bo >> 20));
			goto err;
		}
	ret = moe_kmod_expert_extents(k, model, file_size, &exp, &n_exp);
	if (ret)
		goto err;
	if ((uint64_t)nm + n_exp > k->max_extents) {
		ret = moe_err(E2BIG, "%s needs %u metadata and %u expert extents; moe.ko takes at "
			      "most %llu per model (module parameter max_extents)",
			      moe_model_path(model), nm, n_exp, (unsigned long long)k->max_extents);
		goto err;
	}
	all = realloc(meta, ((size_t)nm + n_exp) * sizeof(*all));
	if (!all) {
		ret = moe_err(ENOMEM, "no memory for the extent table");
		goto err;
	}
	memcpy(all + nm, exp, (size_t)n_exp * sizeof(*all));
	free(exp);
	*out = all;
	*n_out = nm + n_exp;
	*n_meta = nm;
	return 0;
err:
	free(exp);
	free(meta);
	return ret;
}

int moe_kmod_register(struct moe_kmod *k, const char *name, const struct moe_model *model,
		      uint32_t *id)
{
	struct drm_moe_model_register r = { 0 };
	struct moe_model_summary sum;
	struct drm_moe_extent *ext = NULL;
	const char *path;
	uint32_t n = 0, n_meta = 0;
	int fd, ret;

	if (!k || !model)
		return moe_err(EINVAL, "moe_kmod_register: k and model are required");
	ret = check_name(name);
	if (ret)
		return ret;
	ret = moe_model_summary(model, &sum);
	if (ret)
		return ret;
	if (k->minor >= 1) {
		ret = moe_kmod_model_extents(k, model, sum.file_bytes, &ext, &n, &n_meta);
	} else {
		moe_log(MOE_LOG_WARN, "moe.ko speaks uAPI 2.%u, before metadata extents: '%s' can "
			"be read through it with its file only, not opened as moe:%s", k->minor,
			name, name);
		ret = moe_kmod_expert_extents(k, model, sum.file_bytes, &ext, &n);
	}
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
	r.n_meta = n_meta;
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
	ret = moe_kmod_find_raw(k, name, &info);
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
	ret = moe_kmod_find_raw(k, name, &info);
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
