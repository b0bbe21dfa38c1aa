/* SPDX-License-Identifier: GPL-2.0 */
/*
 * moe.ko: reads registered model extents with direct I/O into pinned
 * shmem buffer objects; see Documentation/driver.rst.
 */
#ifndef MOE_DRV_H
#define MOE_DRV_H

#include <linux/bvec.h>
#include <linux/completion.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/kref.h>
#include <linux/mutex.h>
#include <linux/rcupdate.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include <drm/drm_device.h>
#include <drm/drm_file.h>
#include <drm/drm_gem_shmem_helper.h>
#include <drm/drm_print.h>

#include "compat.h"
#include "moe_drm.h"

#define MOE_ALIGN		PAGE_SIZE

extern unsigned int moe_debug;
extern unsigned int moe_max_extents;
extern unsigned int moe_max_batch;
extern unsigned int moe_max_models;
extern unsigned long moe_max_bo_bytes;

/* Bits of the debug module parameter. */
#define MOE_DBG_MODEL		BIT(0)	/* registration and removal */
#define MOE_DBG_FETCH		BIT(1)	/* FETCH batches */
#define MOE_DBG_URING		BIT(2)	/* io_uring commands */

#define moe_err(mdev, fmt, ...) drm_err(&(mdev)->drm, fmt, ##__VA_ARGS__)
/*
 * Debug messages go through drm_dbg (category DRIVER), so they also need
 * drm.debug's 0x02 bit or a dynamic-debug rule: the mask picks what this
 * driver says, DRM's own switches whether anything is printed.
 */
#define moe_dbg(mdev, cat, fmt, ...)					\
	do {								\
		if (READ_ONCE(moe_debug) & (cat))			\
			drm_dbg(&(mdev)->drm, fmt, ##__VA_ARGS__);	\
	} while (0)

struct moe_device {
	struct drm_device drm;
	/*
	 * Serializes changes to @models (names are unique) and @n_models.
	 * FETCH looks models up without it: under RCU, with
	 * kref_get_unless_zero (moe_model_lookup).
	 */
	struct mutex models_lock;
	struct xarray models;
	u32 next_id;
	unsigned int n_models;
	/* Batch completion (from hard IRQ) and non-blocking io_uring submission. */
	struct workqueue_struct *wq;
	/* Protects @low_queue, @demand_inflight and the batches' @queue links. */
	spinlock_t sched_lock;
	/* DRM_MOE_FETCH_LOW batches waiting for the demand batches to finish. */
	struct list_head low_queue;
	/* Demand batches issued and not yet done. */
	unsigned int demand_inflight;
};

static inline struct moe_device *to_moe_device(struct drm_device *drm)
{
	return container_of(drm, struct moe_device, drm);
}

struct moe_model {
	struct kref ref;
	u32 id;
	char name[DRM_MOE_NAME_LEN];
	struct file *file;
	loff_t file_size;
	/* What stat(2) says, so a client can match the file it opened. */
	u32 dev_major;
	u32 dev_minor;
	u64 ino;
	u32 n_extents;
	/* Extents 0..n_meta-1 are the header and non-expert tensors (uAPI 2.1). */
	u32 n_meta;
	struct drm_moe_extent *extents;
	/* Updated from the completion (hard IRQ), hence atomics. */
	atomic64_t bytes;
	atomic64_t requests;
	atomic64_t errors;
	atomic64_t inflight;
	atomic64_t lat_hist[DRM_MOE_LAT_BUCKETS];
	/* Freed after a grace period: a lookup may still hold the pointer. */
	struct rcu_head rcu;
};

struct moe_file {
	/* ticket -> struct moe_batch submitted through the FETCH ioctl. */
	struct xarray batches;
	/* Cyclic tickets: a stale ticket does not name a newer batch soon. */
	u32 next_ticket;
	/* Requests of batches not yet collected by WAIT or not yet completed through io_uring. */
	atomic_t n_pending;
};

/* Requests not yet collected by WAIT one file may hold before FETCH says -EBUSY. */
#define MOE_MAX_PENDING		65536

struct moe_batch;

struct moe_req {
	struct kiocb iocb;
	struct moe_batch *batch;
	struct moe_model *model;
	struct drm_gem_object *obj;
	/* A slice of the BO's table (not owned): nr_segs vectors, skip bytes into the first. */
	const struct bio_vec *bvec;
	u32 nr_pages;
	u32 nr_segs;
	u32 skip;
	u64 bo_offset;
	u64 length;
	loff_t pos;
	u64 start_ns;
	s64 result;
};

struct moe_batch {
	struct kref ref;
	struct moe_device *mdev;
	/* Set for batches that complete through io_uring. */
	struct io_uring_cmd *ucmd;
	/* Its file, whose pending count it is in (io_uring: the command pins the file). */
	struct moe_file *mfile;
	u64 results_ptr;
	u32 count;
	/* Its ticket (ioctl batches), for CANCEL. */
	u32 ticket;
	/* The caller's tag (io_uring batches), for CANCEL with DRM_MOE_CANCEL_TAG. */
	u64 tag;
	/* The file that submitted it, for CANCEL and close; only read while queued. */
	struct moe_file *owner;
	/* DRM_MOE_FETCH_LOW. */
	bool low;
	/* Counted in moe_device.demand_inflight. */
	bool demand;
	/* On moe_device.low_queue while queued, else empty. */
	struct list_head queue;
	atomic_t pending;
	struct work_struct submit_work;
	struct work_struct done_work;
	struct completion done;
	struct moe_req reqs[];
};

/*
 * A buffer object.  Only BOs made by BO_CREATE or BO_USERPTR have their
 * pages pinned for their whole life, so only those may be read into: an
 * imported or dumb shmem object can lose its pages under a read.  A
 * BO_USERPTR object uses only the GEM part of @base: its pages are the
 * caller's memory, pinned with pin_user_pages.
 */
struct moe_bo {
	struct drm_gem_shmem_object base;	/* first: drm_gem_shmem_free() kfree()s it */
	bool pinned;
	bool userptr;
	/* The pinned pages (shmem's own array, or the userptr pin's). */
	struct page **pages;
	/*
	 * The pinned pages as bio_vecs, physically contiguous runs merged,
	 * built once at BO_CREATE: a request reads into a slice of it, so a
	 * fetch allocates nothing proportional to its size.  seg_off[i] is
	 * where bvec[i] starts in the BO.
	 */
	struct bio_vec *bvec;
	u64 *seg_off;
	u32 nr_segs;
};

static inline struct moe_bo *to_moe_bo(struct drm_gem_object *obj)
{
	return container_of(obj, struct moe_bo, base.base);
}

/* moe_gem.c */
struct drm_gem_object *moe_gem_create_object(struct drm_device *dev, size_t size);
int moe_bo_create_ioctl(struct drm_device *dev, void *data, struct drm_file *file);
int moe_bo_mmap_ioctl(struct drm_device *dev, void *data, struct drm_file *file);
int moe_bo_userptr_ioctl(struct drm_device *dev, void *data, struct drm_file *file);

/* moe_model.c */
int moe_model_register_ioctl(struct drm_device *dev, void *data, struct drm_file *file);
int moe_model_unregister_ioctl(struct drm_device *dev, void *data, struct drm_file *file);
int moe_model_info_ioctl(struct drm_device *dev, void *data, struct drm_file *file);
struct moe_model *moe_model_lookup(struct moe_device *mdev, u32 id);
void moe_model_put(struct moe_model *model);
void moe_models_release_all(struct moe_device *mdev);

/* moe_fetch.c */
int moe_fetch_ioctl(struct drm_device *dev, void *data, struct drm_file *file);
int moe_wait_ioctl(struct drm_device *dev, void *data, struct drm_file *file);
int moe_cancel_ioctl(struct drm_device *dev, void *data, struct drm_file *file);
int moe_uring_cmd(struct io_uring_cmd *ucmd, unsigned int issue_flags);
void moe_file_release_batches(struct moe_device *mdev, struct moe_file *mfile);
void moe_fetch_cancel_model(struct moe_device *mdev, struct moe_model *model);

/* moe_debugfs.c: before drm_dev_register() from 6.3, else through drm_driver.debugfs_init */
#ifdef MOE_HAVE_DEBUGFS_ADD_FILES
void moe_debugfs_register(struct moe_device *mdev);
#else
void moe_debugfs_init(struct drm_minor *minor);
#endif

#endif
