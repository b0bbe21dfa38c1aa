// SPDX-License-Identifier: GPL-2.0
/*
 * Buffer objects: shmem GEM objects whose pages are allocated and pinned at
 * creation, so that a fetch never allocates memory or takes the pages lock
 * on the I/O path.  moe_gem_free() drops that pin with the last reference.
 */
#include <linux/slab.h>

#include <drm/drm_gem_shmem_helper.h>

#include "moe_drv.h"

/*
 * The pin of BO_CREATE ends with the object.  6.12 counts pins apart from
 * page users and warns when an object is freed pinned, 6.1 does not; an
 * unpin before the shmem free is right on both.
 */
static void moe_gem_free(struct drm_gem_object *obj)
{
	struct moe_bo *bo = to_moe_bo(obj);

	if (bo->pinned)
		drm_gem_shmem_unpin(&bo->base);
	drm_gem_shmem_free(&bo->base);
}

/* drm_gem_shmem's own object functions but for free. */
static const struct drm_gem_object_funcs moe_gem_funcs = {
	.free = moe_gem_free,
	.print_info = drm_gem_shmem_object_print_info,
	.pin = drm_gem_shmem_object_pin,
	.unpin = drm_gem_shmem_object_unpin,
	.get_sg_table = drm_gem_shmem_object_get_sg_table,
	.vmap = drm_gem_shmem_object_vmap,
	.vunmap = drm_gem_shmem_object_vunmap,
	.mmap = drm_gem_shmem_object_mmap,
	.vm_ops = &drm_gem_shmem_vm_ops,
};

/* Every shmem object of this driver, imported ones included, is a moe_bo. */
struct drm_gem_object *moe_gem_create_object(struct drm_device *dev, size_t size)
{
	struct moe_bo *bo = kzalloc(sizeof(*bo), GFP_KERNEL);

	if (!bo)
		return ERR_PTR(-ENOMEM);
	bo->base.base.funcs = &moe_gem_funcs;
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
	/* 6.12 takes the reservation lock itself here; 6.1 the pages lock. */
	ret = drm_gem_shmem_pin(shmem);
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
