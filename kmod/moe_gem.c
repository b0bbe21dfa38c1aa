// SPDX-License-Identifier: GPL-2.0
/*
 * Buffer objects: shmem GEM objects whose pages are allocated and pinned at
 * creation, so that a fetch never allocates memory or takes the pages lock
 * on the I/O path.  moe_gem_free() drops that pin with the last reference.
 * BO_USERPTR objects are plain GEM objects over the caller's own pages,
 * pinned long-term at creation and unpinned by moe_userptr_free().
 */
#include <linux/bvec.h>
#include <linux/dma-buf.h>
#include <linux/mm.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

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

	kvfree(bo->bvec);
	kvfree(bo->seg_off);
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

/*
 * The table every request of this BO reads into: one bio_vec per run of
 * physically contiguous pages (fewer segments per bio, fewer split
 * requests and PRP entries), made once while the pages are pinned.
 */
static int moe_bo_build_bvec(struct moe_bo *bo)
{
	size_t nr_pages = bo->base.base.size >> PAGE_SHIFT, i;
	u32 n = 0;

	bo->bvec = kvmalloc_array(nr_pages, sizeof(*bo->bvec), GFP_KERNEL_ACCOUNT);
	bo->seg_off = kvmalloc_array(nr_pages, sizeof(*bo->seg_off), GFP_KERNEL_ACCOUNT);
	if (!bo->bvec || !bo->seg_off)
		return -ENOMEM;
	for (i = 0; i < nr_pages; i++) {
		struct page *page = bo->pages[i];
		struct bio_vec *prev = n ? &bo->bvec[n - 1] : NULL;

		if (prev && page_to_pfn(page) ==
		    page_to_pfn(prev->bv_page) + (prev->bv_len >> PAGE_SHIFT) &&
		    prev->bv_len <= UINT_MAX - 2 * PAGE_SIZE) {
			prev->bv_len += PAGE_SIZE;
			continue;
		}
		bo->bvec[n].bv_page = page;
		bo->bvec[n].bv_len = PAGE_SIZE;
		bo->bvec[n].bv_offset = 0;
		bo->seg_off[n] = (u64)i << PAGE_SHIFT;
		n++;
	}
	bo->nr_segs = n;
	return 0;
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
	/* Stable while pinned. */
	to_moe_bo(&shmem->base)->pages = shmem->pages;
	ret = moe_bo_build_bvec(to_moe_bo(&shmem->base));
	if (ret)
		goto out_put;
	ret = drm_gem_handle_create(file, &shmem->base, &args->handle);
out_put:
	/* The handle now holds the reference (or nothing does on error). */
	drm_gem_object_put(&shmem->base);
	return ret;
}

int moe_bo_mmap_ioctl(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct drm_moe_bo_mmap *args = data;
	struct drm_gem_object *obj;
	bool userptr;

	if (args->flags)
		return -EINVAL;
	obj = drm_gem_object_lookup(file, args->handle);
	if (!obj)
		return -ENOENT;
	/* A userptr BO is the caller's memory, mapped already; it has no pages to fault in. */
	userptr = !obj->import_attach && to_moe_bo(obj)->userptr;
	drm_gem_object_put(obj);
	if (userptr)
		return -EINVAL;
	/* The dumb-buffer ioctl that does this is refused on render nodes. */
	return drm_gem_dumb_map_offset(file, dev, args->handle, &args->offset);
}

static void moe_userptr_free(struct drm_gem_object *obj)
{
	struct moe_bo *bo = to_moe_bo(obj);
	unsigned long nr_pages = obj->size >> PAGE_SHIFT;

	kvfree(bo->bvec);
	kvfree(bo->seg_off);
	if (bo->pages) {
		/* Reads landed in them behind the page tables' back: mark them dirty. */
		if (bo->pinned)
			unpin_user_pages_dirty_lock(bo->pages, nr_pages, true);
		kvfree(bo->pages);
	}
	drm_gem_object_release(obj);
	kfree(bo);
}

/* Sharing the caller's anonymous memory with another device is not this driver's to offer. */
static struct dma_buf *moe_userptr_export(struct drm_gem_object *obj, int flags)
{
	return ERR_PTR(-EOPNOTSUPP);
}

static const struct drm_gem_object_funcs moe_userptr_funcs = {
	.free = moe_userptr_free,
	.export = moe_userptr_export,
};

/* Pin all @nr_pages of the caller's memory at @addr, or none. */
static int moe_userptr_pin(struct moe_bo *bo, u64 addr, unsigned long nr_pages)
{
	unsigned long done = 0;

	while (done < nr_pages) {
		int n = pin_user_pages_fast(addr + (done << PAGE_SHIFT),
					    min_t(unsigned long, nr_pages - done, INT_MAX >> 1),
					    FOLL_WRITE | FOLL_LONGTERM, bo->pages + done);

		if (n <= 0) {
			if (done)
				unpin_user_pages(bo->pages, done);
			return n ? n : -EFAULT;
		}
		done += n;
	}
	return 0;
}

int moe_bo_userptr_ioctl(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct drm_moe_bo_userptr *args = data;
	unsigned long nr_pages;
	struct moe_bo *bo;
	int ret;

	if (args->flags)
		return -EINVAL;
	if (!args->size || args->size > moe_max_bo_bytes || !PAGE_ALIGNED(args->size) ||
	    !PAGE_ALIGNED(args->addr))
		return -EINVAL;
	if (!access_ok(u64_to_user_ptr(args->addr), args->size))
		return -EFAULT;
	nr_pages = args->size >> PAGE_SHIFT;

	bo = kzalloc(sizeof(*bo), GFP_KERNEL);
	if (!bo)
		return -ENOMEM;
	bo->base.base.funcs = &moe_userptr_funcs;
	drm_gem_private_object_init(dev, &bo->base.base, args->size);
	bo->userptr = true;
	/* From here on the object's free function undoes what was done. */
	bo->pages = kvmalloc_array(nr_pages, sizeof(*bo->pages), GFP_KERNEL_ACCOUNT);
	if (!bo->pages) {
		ret = -ENOMEM;
		goto out_put;
	}
	ret = moe_userptr_pin(bo, args->addr, nr_pages);
	if (ret)
		goto out_put;
	bo->pinned = true;
	ret = moe_bo_build_bvec(bo);
	if (ret)
		goto out_put;
	ret = drm_gem_handle_create(file, &bo->base.base, &args->handle);
out_put:
	drm_gem_object_put(&bo->base.base);
	return ret;
}
