// SPDX-License-Identifier: GPL-2.0
/*
 * debugfs: moe_models, in the device's directory (dri/N on 6.1, accel/...
 * with DRM_ACCEL), lists every registered model with its counters.
 */
#include <linux/seq_file.h>

#include <drm/drm_debugfs.h>
#include <drm/drm_file.h>

#include "moe_drv.h"

static int moe_models_show(struct seq_file *m, struct moe_device *mdev)
{
	struct moe_model *model;
	unsigned long id;
	int i;

	mutex_lock(&mdev->models_lock);
	xa_for_each(&mdev->models, id, model) {
		seq_printf(m, "%u %s extents=%u file_size=%lld bytes=%lld requests=%lld "
			   "errors=%lld inflight=%lld lat_us_log2=", model->id, model->name,
			   model->n_extents, model->file_size,
			   (long long)atomic64_read(&model->bytes),
			   (long long)atomic64_read(&model->requests),
			   (long long)atomic64_read(&model->errors),
			   (long long)atomic64_read(&model->inflight));
		for (i = 0; i < DRM_MOE_LAT_BUCKETS; i++)
			seq_printf(m, "%s%lld", i ? "," : "",
				   (long long)atomic64_read(&model->lat_hist[i]));
		seq_putc(m, '\n');
	}
	mutex_unlock(&mdev->models_lock);
	return 0;
}

#ifdef MOE_HAVE_DEBUGFS_ADD_FILES
static int moe_debugfs_models(struct seq_file *m, void *unused)
{
	struct drm_debugfs_entry *entry = m->private;

	return moe_models_show(m, to_moe_device(entry->dev));
}

static const struct drm_debugfs_info moe_debugfs_list[] = {
	{ "moe_models", moe_debugfs_models, 0 },
};

void moe_debugfs_register(struct moe_device *mdev)
{
	drm_debugfs_add_files(&mdev->drm, moe_debugfs_list, ARRAY_SIZE(moe_debugfs_list));
}
#else
static int moe_debugfs_models(struct seq_file *m, void *unused)
{
	struct drm_info_node *node = m->private;

	return moe_models_show(m, to_moe_device(node->minor->dev));
}

static const struct drm_info_list moe_debugfs_list[] = {
	{ "moe_models", moe_debugfs_models, 0 },
};

void moe_debugfs_init(struct drm_minor *minor)
{
	drm_debugfs_create_files(moe_debugfs_list, ARRAY_SIZE(moe_debugfs_list),
				 minor->debugfs_root, minor);
}
#endif
