// SPDX-License-Identifier: GPL-2.0
/*
 * moe.ko: device registration, the ioctl table, per-file state and module
 * parameters.  A virtual platform device carries the DRM device, as vgem does,
 * since the driver drives no hardware of its own: it reads files.
 */
#include <linux/dma-mapping.h>
#include <linux/module.h>
#include <linux/platform_device.h>
#include <linux/slab.h>

#ifdef CONFIG_DRM_ACCEL
#include <drm/drm_accel.h>
#endif
#include <drm/drm_drv.h>
#include <drm/drm_gem.h>
#include <drm/drm_gem_shmem_helper.h>
#include <drm/drm_ioctl.h>
#include <drm/drm_managed.h>
#include <drm/drm_prime.h>

#include "moe_drv.h"

#define DRIVER_NAME	"moe"
#define DRIVER_DESC	"moe: stream model extents from NVMe into pinned buffers"
#define DRIVER_DATE	"20261128"

unsigned int moe_debug;
module_param_named(debug, moe_debug, uint, 0644);
MODULE_PARM_DESC(debug, "Debug mask through drm_dbg (also needs drm.debug=0x02): "
		 "1 registrations, 2 FETCH batches, 4 io_uring commands (default 0)");

unsigned int moe_max_extents = 1U << 18;
module_param_named(max_extents, moe_max_extents, uint, 0444);
MODULE_PARM_DESC(max_extents, "Most extents per registered model (default 262144)");

unsigned int moe_max_batch = 4096;
module_param_named(max_batch, moe_max_batch, uint, 0444);
MODULE_PARM_DESC(max_batch, "Most requests per FETCH (default 4096)");

unsigned int moe_max_models = 64;
module_param_named(max_models, moe_max_models, uint, 0444);
MODULE_PARM_DESC(max_models, "Most models registered at once (default 64)");

static unsigned int moe_max_bo_mb = 4096;
module_param_named(max_bo_mb, moe_max_bo_mb, uint, 0444);
MODULE_PARM_DESC(max_bo_mb, "Largest buffer object in MiB (default 4096)");
unsigned long moe_max_bo_bytes;

static struct platform_device *moe_pdev;
static struct moe_device *moe_dev;

static int moe_get_param_ioctl(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct drm_moe_get_param *args = data;

	if (args->pad)
		return -EINVAL;
	switch (args->param) {
	case DRM_MOE_PARAM_VERSION:
		args->value = (DRM_MOE_VERSION_MAJOR << 16) | DRM_MOE_VERSION_MINOR;
		break;
	case DRM_MOE_PARAM_CAPS:
		args->value = DRM_MOE_CAP_URING_CMD | DRM_MOE_CAP_PRIME | DRM_MOE_CAP_DIRECT |
			      DRM_MOE_CAP_PRIORITY | DRM_MOE_CAP_USERPTR;
		break;
	case DRM_MOE_PARAM_ALIGN:
		args->value = MOE_ALIGN;
		break;
	case DRM_MOE_PARAM_MAX_EXTENTS:
		args->value = moe_max_extents;
		break;
	case DRM_MOE_PARAM_MAX_BATCH:
		args->value = moe_max_batch;
		break;
	case DRM_MOE_PARAM_MAX_BO_SIZE:
		args->value = moe_max_bo_bytes;
		break;
	case DRM_MOE_PARAM_MAX_MODELS:
		args->value = moe_max_models;
		break;
	default:
		return -EINVAL;
	}
	return 0;
}

static int moe_open(struct drm_device *dev, struct drm_file *file)
{
	struct moe_file *mfile;

	mfile = kzalloc(sizeof(*mfile), GFP_KERNEL);
	if (!mfile)
		return -ENOMEM;
	xa_init_flags(&mfile->batches, XA_FLAGS_ALLOC1);
	atomic_set(&mfile->n_pending, 0);
	file->driver_priv = mfile;
	return 0;
}

static void moe_postclose(struct drm_device *dev, struct drm_file *file)
{
	struct moe_file *mfile = file->driver_priv;

	/* Reads still in flight hold what they need: closing does not wait for them. */
	moe_file_release_batches(to_moe_device(dev), mfile);
	xa_destroy(&mfile->batches);
	kfree(mfile);
}

static const struct drm_ioctl_desc moe_ioctls[] = {
	DRM_IOCTL_DEF_DRV(MOE_GET_PARAM, moe_get_param_ioctl, DRM_RENDER_ALLOW),
	DRM_IOCTL_DEF_DRV(MOE_BO_CREATE, moe_bo_create_ioctl, DRM_RENDER_ALLOW),
	DRM_IOCTL_DEF_DRV(MOE_BO_MMAP, moe_bo_mmap_ioctl, DRM_RENDER_ALLOW),
	DRM_IOCTL_DEF_DRV(MOE_MODEL_REGISTER, moe_model_register_ioctl, DRM_RENDER_ALLOW),
	DRM_IOCTL_DEF_DRV(MOE_MODEL_UNREGISTER, moe_model_unregister_ioctl, DRM_RENDER_ALLOW),
	DRM_IOCTL_DEF_DRV(MOE_MODEL_INFO, moe_model_info_ioctl, DRM_RENDER_ALLOW),
	DRM_IOCTL_DEF_DRV(MOE_FETCH, moe_fetch_ioctl, DRM_RENDER_ALLOW),
	DRM_IOCTL_DEF_DRV(MOE_WAIT, moe_wait_ioctl, DRM_RENDER_ALLOW),
	DRM_IOCTL_DEF_DRV(MOE_CANCEL, moe_cancel_ioctl, DRM_RENDER_ALLOW),
	DRM_IOCTL_DEF_DRV(MOE_BO_USERPTR, moe_bo_userptr_ioctl, DRM_RENDER_ALLOW),
};

/* Kernels with DRM_ACCEL (6.2+) get /dev/accel/accelN (tested on 6.12). */
static const struct file_operations moe_fops = {
	.owner = THIS_MODULE,
#ifdef CONFIG_DRM_ACCEL
	DRM_ACCEL_FOPS,
#else
	DRM_GEM_FOPS,
#endif
	.uring_cmd = moe_uring_cmd,
};

static const struct drm_driver moe_driver = {
#ifdef CONFIG_DRM_ACCEL
	.driver_features = DRIVER_GEM | DRIVER_COMPUTE_ACCEL,
#else
	.driver_features = DRIVER_GEM | DRIVER_RENDER,
#endif
	.open = moe_open,
	.postclose = moe_postclose,
	.ioctls = moe_ioctls,
	.num_ioctls = ARRAY_SIZE(moe_ioctls),
	.fops = &moe_fops,
#ifndef MOE_HAVE_DEBUGFS_ADD_FILES
	.debugfs_init = moe_debugfs_init,
#endif
	.gem_create_object = moe_gem_create_object,
	/* DRM_GEM_SHMEM_DRIVER_OPS without dumb buffers: their pages are not pinned. */
	MOE_DRIVER_PRIME_HOOKS
	.gem_prime_import_sg_table = drm_gem_shmem_prime_import_sg_table,
	.name = DRIVER_NAME,
	.desc = DRIVER_DESC,
	MOE_DRIVER_DATE(DRIVER_DATE)
	.major = DRM_MOE_VERSION_MAJOR,
	.minor = DRM_MOE_VERSION_MINOR,
};

static int __init moe_init(void)
{
	struct moe_device *mdev;
	int ret;

	if (!moe_max_extents || !moe_max_batch || !moe_max_models || !moe_max_bo_mb)
		return -EINVAL;
	moe_max_bo_bytes = (unsigned long)moe_max_bo_mb << 20;

	moe_pdev = platform_device_register_simple(DRIVER_NAME, -1, NULL, 0);
	if (IS_ERR(moe_pdev))
		return PTR_ERR(moe_pdev);

	if (!devres_open_group(&moe_pdev->dev, NULL, GFP_KERNEL)) {
		ret = -ENOMEM;
		goto err_unregister_pdev;
	}
	ret = dma_coerce_mask_and_coherent(&moe_pdev->dev, DMA_BIT_MASK(64));
	if (ret)
		goto err_release_devres;

	mdev = devm_drm_dev_alloc(&moe_pdev->dev, &moe_driver, struct moe_device, drm);
	if (IS_ERR(mdev)) {
		ret = PTR_ERR(mdev);
		goto err_release_devres;
	}
	/* Destroyed with the device, after the last file and the registry are gone. */
	ret = drmm_mutex_init(&mdev->drm, &mdev->models_lock);
	if (ret)
		goto err_release_devres;
	xa_init_flags(&mdev->models, XA_FLAGS_ALLOC1);
	spin_lock_init(&mdev->sched_lock);
	INIT_LIST_HEAD(&mdev->low_queue);
	mdev->wq = alloc_workqueue("moe", WQ_UNBOUND | WQ_HIGHPRI, 0);
	if (!mdev->wq) {
		ret = -ENOMEM;
		goto err_release_devres;
	}

#ifdef MOE_HAVE_DEBUGFS_ADD_FILES
	moe_debugfs_register(mdev);
#endif
	ret = drm_dev_register(&mdev->drm, 0);
	if (ret)
		goto err_destroy_wq;
	moe_dev = mdev;
	return 0;

err_destroy_wq:
	destroy_workqueue(mdev->wq);
err_release_devres:
	devres_release_group(&moe_pdev->dev, NULL);
err_unregister_pdev:
	platform_device_unregister(moe_pdev);
	return ret;
}

static void __exit moe_exit(void)
{
	struct moe_device *mdev = moe_dev;

	/*
	 * Open files and FETCH batches still reading hold module references,
	 * so no request is in flight here; destroy_workqueue() waits for the
	 * completion work that dropped the last of them.
	 */
	drm_dev_unregister(&mdev->drm);
	destroy_workqueue(mdev->wq);
	moe_models_release_all(mdev);
	xa_destroy(&mdev->models);
	devres_release_group(&moe_pdev->dev, NULL);
	platform_device_unregister(moe_pdev);
}

module_init(moe_init);
module_exit(moe_exit);

MODULE_AUTHOR("The moe authors");
MODULE_DESCRIPTION(DRIVER_DESC);
/* drm_gem_shmem_create and io_uring_cmd_done are GPL-only. */
MODULE_LICENSE("GPL");
