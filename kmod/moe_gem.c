// SPDX-License-Identifier: GPL-2.0
/*
 * Buffer objects: shmem GEM objects whose pages are allocated and pinned at
 * creation, so that a fetch never allocates memory or takes the pages lock
 * on the I/O path.  drm_gem_shmem_free() drops that pin with the last
 * reference.
 */
#include <linux/slab.h>

#include <drm/drm_gem_shmem_helper.h>

#include "moe_drv.h"

/* Every shmem object of this driver, imported ones included, is a moe_bo. */
struct drm_gem_object *moe_gem_create_object(struct drm_device *dev, size_t size)
{
	struct moe_bo *bo = kzalloc(sizeof(*bo), GFP_KERNEL);

	if (!bo)
		return ERR_PTR(-ENOMEM);
	return &bo->base.base;
}

int moe_bo_create_ioctl(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct drm_moe_bo_create *args = data;
	struct drm_gem_shmem_object *shmem;
	u64 size;
	int ret;

	if (args->flags)
		return -EINVAL;
	if (!args->size || args->size > moe_max_bo_bytes)
		return -EINVAL;
	size = PAGE_ALIGN(args->size);

	shmem = drm_gem_shmem_create(dev, size);
	if (IS_ERR(shmem))
		return PTR_ERR(shmem);
	ret = drm_gem_shmem_get_pages(shmem);
	if (ret)
		goto out_put;
	to_moe_bo(&shmem->base)->pinned = true;
	ret = drm_gem_handle_create(file, &shmem->base, &args->handle);
out_put:
	/* The handle now holds the reference (or nothing does on error). */
	drm_gem_object_put(&shmem->base);
	return ret;
}

int moe_bo_mmap_ioctl(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct drm_moe_bo_mmap *args = data;

	if (args->flags)
		return -EINVAL;
	/* The dumb-buffer ioctl that does this is refused on render nodes. */
	return drm_gem_dumb_map_offset(file, dev, args->handle, &args->offset);
}
