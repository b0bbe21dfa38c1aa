// SPDX-License-Identifier: GPL-2.0
/*
 * The model registry: a privileged opener hands over an open model file and
 * the extents that may be read from it.  Fetches can read those extents and
 * nothing else, so the file itself may stay unreadable to inference users.
 */
#include <linux/capability.h>
#include <linux/file.h>
#include <linux/fscrypt.h>
#include <linux/fsverity.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/stat.h>
#include <linux/uaccess.h>

#include "moe_drv.h"

static void moe_model_release(struct kref *ref)
{
	struct moe_model *model = container_of(ref, struct moe_model, ref);

	fput(model->file);
	kvfree(model->extents);
	kfree_rcu(model, rcu);
}

/* Only from process context: the last put releases the file. */
void moe_model_put(struct moe_model *model)
{
	kref_put(&model->ref, moe_model_release);
}

/*
 * The FETCH path's lookup: no device-wide lock.  A model being unregistered
 * may still be found; its last reference may be going, which
 * kref_get_unless_zero refuses, and RCU keeps the memory until then.
 */
struct moe_model *moe_model_lookup(struct moe_device *mdev, u32 id)
{
	struct moe_model *model;

	rcu_read_lock();
	model = xa_load(&mdev->models, id);
	if (model && !kref_get_unless_zero(&model->ref))
		model = NULL;
	rcu_read_unlock();
	return model;
}

static struct moe_model *moe_model_find_name(struct moe_device *mdev, const char *name)
{
	struct moe_model *model;
	unsigned long id;

	lockdep_assert_held(&mdev->models_lock);
	xa_for_each(&mdev->models, id, model)
		if (!strcmp(model->name, name))
			return model;
	return NULL;
}

/*
 * Filesystems that cannot do direct I/O on this inode (ext4 with inline data,
 * encryption, verity or data=journal) silently fall back to the page cache;
 * refuse the cases visible from here.
 */
static int moe_check_file(struct file *file)
{
	struct inode *inode = file_inode(file);

	if (!S_ISREG(inode->i_mode))
		return -EINVAL;
	if (!(file->f_mode & FMODE_READ) || !(file->f_mode & FMODE_CAN_READ))
		return -EBADF;
	/* The open set FMODE_CAN_ODIRECT when the filesystem takes IOCB_DIRECT for it. */
	if (!file->f_op->read_iter || !file->f_mapping || !file->f_mapping->a_ops ||
	    !MOE_FILE_CAN_ODIRECT(file))
		return -EOPNOTSUPP;
	if (IS_ENCRYPTED(inode) || IS_VERITY(inode) || IS_DAX(inode))
		return -EOPNOTSUPP;
	return 0;
}

static int moe_check_extents(const struct drm_moe_extent *ext, u32 n, loff_t size)
{
	u64 limit = round_up((u64)size, MOE_ALIGN);
	u64 end;
	u32 i;

	for (i = 0; i < n; i++) {
		if (!ext[i].length)
			return -EINVAL;
		if (!IS_ALIGNED(ext[i].offset, MOE_ALIGN) || !IS_ALIGNED(ext[i].length, MOE_ALIGN))
			return -EINVAL;
		if (check_add_overflow(ext[i].offset, ext[i].length, &end) || end > limit)
			return -EINVAL;
		if (ext[i].length > moe_max_bo_bytes)
			return -EINVAL;
	}
	return 0;
}

int moe_model_register_ioctl(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct moe_device *mdev = to_moe_device(dev);
	struct drm_moe_model_register *args = data;
	struct moe_model *model;
	struct kstat stat;
	size_t name_len;
	int ret, i;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (args->flags || args->pad || args->n_meta > args->n_extents)
		return -EINVAL;
	name_len = strnlen(args->name, DRM_MOE_NAME_LEN);
	if (!name_len || name_len == DRM_MOE_NAME_LEN)
		return -EINVAL;
	if (!args->n_extents)
		return -EINVAL;
	if (args->n_extents > moe_max_extents)
		return -E2BIG;

	model = kzalloc(sizeof(*model), GFP_KERNEL);
	if (!model)
		return -ENOMEM;
	kref_init(&model->ref);
	memcpy(model->name, args->name, name_len);
	atomic64_set(&model->bytes, 0);
	atomic64_set(&model->requests, 0);
	atomic64_set(&model->errors, 0);
	atomic64_set(&model->inflight, 0);
	for (i = 0; i < DRM_MOE_LAT_BUCKETS; i++)
		atomic64_set(&model->lat_hist[i], 0);

	model->file = fget(args->fd);
	if (!model->file) {
		ret = -EBADF;
		goto err_free_model;
	}
	ret = moe_check_file(model->file);
	if (ret)
		goto err_put_file;
	ret = vfs_getattr(&model->file->f_path, &stat, STATX_INO, AT_STATX_SYNC_AS_STAT);
	if (ret)
		goto err_put_file;
	model->file_size = i_size_read(file_inode(model->file));
	model->dev_major = MAJOR(stat.dev);
	model->dev_minor = MINOR(stat.dev);
	model->ino = stat.ino;

	model->n_extents = args->n_extents;
	model->extents = kvmalloc_array(args->n_extents, sizeof(*model->extents), GFP_KERNEL);
	if (!model->extents) {
		ret = -ENOMEM;
		goto err_put_file;
	}
	if (copy_from_user(model->extents, u64_to_user_ptr(args->extents_ptr),
			   array_size(args->n_extents, sizeof(*model->extents)))) {
		ret = -EFAULT;
		goto err_free_extents;
	}
	ret = moe_check_extents(model->extents, model->n_extents, model->file_size);
	if (!ret && args->n_meta && model->extents[0].offset)
		ret = -EINVAL;
	if (ret)
		goto err_free_extents;
	model->n_meta = args->n_meta;

	mutex_lock(&mdev->models_lock);
	if (moe_model_find_name(mdev, model->name)) {
		ret = -EEXIST;
		goto err_unlock;
	}
	if (mdev->n_models >= moe_max_models) {
		ret = -ENOSPC;
		goto err_unlock;
	}
	/* Cyclic ids: a stale id from an unregistered model does not name a new one. */
	ret = xa_alloc_cyclic(&mdev->models, &model->id, model, XA_LIMIT(1, INT_MAX),
			      &mdev->next_id, GFP_KERNEL);
	if (ret < 0)
		goto err_unlock;
	mdev->n_models++;
	mutex_unlock(&mdev->models_lock);

	args->model_id = model->id;
	args->file_size = model->file_size;
	moe_dbg(mdev, MOE_DBG_MODEL, "registered model %u '%s': %u extents (%u metadata), %lld bytes\n",
		model->id, model->name, model->n_extents, model->n_meta, model->file_size);
	return 0;

err_unlock:
	mutex_unlock(&mdev->models_lock);
err_free_extents:
	kvfree(model->extents);
err_put_file:
	fput(model->file);
err_free_model:
	kfree(model);
	return ret;
}

int moe_model_unregister_ioctl(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct moe_device *mdev = to_moe_device(dev);
	struct drm_moe_model_unregister *args = data;
	struct moe_model *model;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (args->flags)
		return -EINVAL;

	mutex_lock(&mdev->models_lock);
	model = args->model_id ? xa_erase(&mdev->models, args->model_id) : NULL;
	if (model)
		mdev->n_models--;
	mutex_unlock(&mdev->models_lock);
	if (!model)
		return -ENOENT;
	moe_dbg(mdev, MOE_DBG_MODEL, "unregistered model %u '%s'\n", model->id, model->name);
	/* Queued batches that would read it end now; those reading finish. */
	moe_fetch_cancel_model(mdev, model);
	/* Requests in flight hold their own references. */
	moe_model_put(model);
	return 0;
}

static struct moe_model *moe_model_info_lookup(struct moe_device *mdev,
					       struct drm_moe_model_info *args)
{
	struct moe_model *model = NULL;
	unsigned long id;

	mutex_lock(&mdev->models_lock);
	if (args->flags & DRM_MOE_INFO_BY_NAME) {
		model = moe_model_find_name(mdev, args->name);
	} else if (args->flags & DRM_MOE_INFO_NEXT) {
		id = args->model_id;
		model = xa_find_after(&mdev->models, &id, U32_MAX, XA_PRESENT);
	} else {
		model = xa_load(&mdev->models, args->model_id);
	}
	if (model)
		kref_get(&model->ref);
	mutex_unlock(&mdev->models_lock);
	return model;
}

int moe_model_info_ioctl(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct moe_device *mdev = to_moe_device(dev);
	struct drm_moe_model_info *args = data;
	struct moe_model *model;
	int ret = 0;
	u32 n;
	int i;

	if ((args->flags & ~DRM_MOE_INFO_FLAGS) || args->pad || args->pad2 ||
	    hweight32(args->flags & DRM_MOE_INFO_FLAGS) > 1)
		return -EINVAL;
	if ((args->flags & DRM_MOE_INFO_BY_NAME) &&
	    strnlen(args->name, DRM_MOE_NAME_LEN) == DRM_MOE_NAME_LEN)
		return -EINVAL;

	model = moe_model_info_lookup(mdev, args);
	if (!model)
		return -ENOENT;

	n = min(args->n_extents, model->n_extents);
	if (n && args->extents_ptr &&
	    copy_to_user(u64_to_user_ptr(args->extents_ptr), model->extents,
			 array_size(n, sizeof(*model->extents)))) {
		ret = -EFAULT;
		goto out_put;
	}
	args->model_id = model->id;
	memcpy(args->name, model->name, sizeof(args->name));
	args->n_extents = model->n_extents;
	args->file_size = model->file_size;
	args->bytes = atomic64_read(&model->bytes);
	args->requests = atomic64_read(&model->requests);
	args->errors = atomic64_read(&model->errors);
	args->inflight = atomic64_read(&model->inflight);
	args->file_dev_major = model->dev_major;
	args->file_dev_minor = model->dev_minor;
	args->file_ino = model->ino;
	args->n_meta = model->n_meta;
	for (i = 0; i < DRM_MOE_LAT_BUCKETS; i++)
		args->lat_hist[i] = atomic64_read(&model->lat_hist[i]);
out_put:
	moe_model_put(model);
	return ret;
}

void moe_models_release_all(struct moe_device *mdev)
{
	struct moe_model *model;
	unsigned long id;

	mutex_lock(&mdev->models_lock);
	xa_for_each(&mdev->models, id, model) {
		xa_erase(&mdev->models, id);
		moe_model_put(model);
	}
	mdev->n_models = 0;
	mutex_unlock(&mdev->models_lock);
}
