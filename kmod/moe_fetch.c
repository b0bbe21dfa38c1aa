// SPDX-License-Identifier: GPL-2.0
/*
 * FETCH: direct reads of registered extents into BO pages, in batches.
 *
 * A batch is validated whole before any read is issued.  Each request is an
 * async kiocb with IOCB_DIRECT over a bio_vec array of the BO's pinned pages.
 * The completion can arrive in hard IRQ (NVMe) and even before read_iter
 * returns, so it only records the result and counts down; the last one
 * queues done_work, which drops references in process context and then
 * either completes the io_uring command or wakes WAIT.
 *
 * Priority: a DRM_MOE_FETCH_LOW batch submitted while any demand batch of
 * the device is reading waits in mdev->low_queue, unissued, and goes when
 * the last demand batch is done; until then CANCEL, the close of its file,
 * the unregistering of a model it reads, or (6.7+) the end of its io_uring
 * ring take it back, and its requests end with -ECANCELED without I/O.
 */
#include <linux/blkdev.h>
#include <linux/cred.h>
#include <linux/highmem.h>
#include <linux/log2.h>
#include <linux/module.h>
#include <linux/sched/task.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/uio.h>

#include <drm/drm_drv.h>
#include <drm/drm_gem.h>
#include <drm/drm_gem_shmem_helper.h>

#include "moe_drv.h"

static void moe_batch_free(struct kref *ref)
{
	struct moe_batch *batch = container_of(ref, struct moe_batch, ref);

	kvfree(batch);
}

static void moe_req_release(struct moe_req *req)
{
	req->bvec = NULL;
	if (req->obj)
		drm_gem_object_put(req->obj);
	req->obj = NULL;
	if (req->model)
		moe_model_put(req->model);
	req->model = NULL;
}

static void moe_req_account(struct moe_req *req, long ret)
{
	struct moe_model *model = req->model;
	u64 us = div_u64(ktime_get_ns() - req->start_ns, NSEC_PER_USEC);
	unsigned int bucket = us ? min_t(unsigned int, ilog2(us), DRM_MOE_LAT_BUCKETS - 1) : 0;

	req->result = ret;
	atomic64_inc(&model->requests);
	if (ret < 0)
		atomic64_inc(&model->errors);
	else
		atomic64_add(ret, &model->bytes);
	atomic64_inc(&model->lat_hist[bucket]);
	atomic64_dec(&model->inflight);
}

/* May run in hard IRQ: no sleeping, no freeing, no reference drops. */
static void moe_req_complete(struct kiocb *iocb, long ret)
{
	struct moe_req *req = container_of(iocb, struct moe_req, iocb);
	struct moe_batch *batch = req->batch;

	moe_req_account(req, ret);
	if (atomic_dec_and_test(&batch->pending))
		queue_work(batch->mdev->wq, &batch->done_work);
}

static void moe_req_zero_tail(struct moe_req *req)
{
	struct page **pages = to_moe_bo(req->obj)->pages;
	u64 from = req->result > 0 ? req->result : 0;
	u64 first = req->bo_offset >> PAGE_SHIFT;
	u32 i;

	/* A short read at the end of the file leaves the rest of the range zeroed. */
	for (i = from >> PAGE_SHIFT; i < req->nr_pages; i++) {
		u32 off = i == (from >> PAGE_SHIFT) ? offset_in_page(from) : 0;

		memzero_page(pages[first + i], off, PAGE_SIZE - off);
	}
}

static void moe_req_issue(struct moe_req *req)
{
	struct file *file = req->model->file;
	struct iov_iter iter;
	loff_t pos = req->pos;
	ssize_t ret;

	init_sync_kiocb(&req->iocb, file);
	req->iocb.ki_pos = pos;
	req->iocb.ki_flags |= IOCB_DIRECT;
	req->iocb.ki_complete = moe_req_complete;
	/* The BO's table from the vector holding bo_offset, then the skip into it. */
	iov_iter_bvec(&iter, ITER_DEST, req->bvec, req->nr_segs, req->skip + req->length);
	iov_iter_advance(&iter, req->skip);

	atomic64_inc(&req->model->inflight);
	req->start_ns = ktime_get_ns();
	ret = rw_verify_area(READ, file, &pos, req->length);
	if (!ret)
		ret = moe_read_iter(file, &req->iocb, &iter);
	/* After -EIOCBQUEUED the request may already be completed and gone. */
	if (ret != -EIOCBQUEUED)
		moe_req_complete(&req->iocb, ret);
}

static void moe_batch_issue(struct moe_batch *batch)
{
	const struct cred *old_cred;
	struct blk_plug plug;
	u32 i, count = batch->count;

	blk_start_plug(&plug);
	/*
	 * Once the last request is issued the batch may complete and be freed:
	 * @count is read up front and nothing touches @batch after the loop.
	 */
	for (i = 0; i < count; i++) {
		struct moe_req *req = &batch->reqs[i];

		/*
		 * Read with the registrant's credentials: the caller may have no
		 * right to the file, only to the extents registered from it.
		 */
		old_cred = override_creds(req->model->file->f_cred);
		moe_req_issue(req);
		revert_creds(old_cred);
	}
	blk_finish_plug(&plug);
}

static void moe_batch_submit_work(struct work_struct *work)
{
	struct moe_batch *batch = container_of(work, struct moe_batch, submit_work);

	moe_batch_issue(batch);
}

static s64 moe_batch_cqe_res(struct moe_batch *batch)
{
	s64 total = 0;
	u32 i;

	for (i = 0; i < batch->count; i++) {
		if (batch->reqs[i].result < 0)
			return batch->reqs[i].result;
		total += batch->reqs[i].result;
	}
	return min_t(s64, total, INT_MAX);
}

static int moe_batch_copy_results(struct moe_batch *batch)
{
	s64 __user *out = u64_to_user_ptr(batch->results_ptr);
	u32 i;

	if (!batch->results_ptr)
		return 0;
	for (i = 0; i < batch->count; i++)
		if (put_user(batch->reqs[i].result, &out[i]))
			return -EFAULT;
	return 0;
}

/* Task work of the submitting task: its memory is there for the results. */
static void moe_uring_done(struct io_uring_cmd *ucmd, unsigned int issue_flags)
{
	struct moe_batch *batch = *(struct moe_batch **)ucmd->pdu;
	s64 res = moe_batch_cqe_res(batch);

	/* The fallback runs this from a kworker when the task is exiting. */
	if (!(current->flags & (PF_KTHREAD | PF_EXITING)) && moe_batch_copy_results(batch))
		res = -EFAULT;
	atomic_sub(batch->count, &batch->mfile->n_pending);
	/* A cancel callback (IO_URING_F_CANCEL) finds no batch from here on. */
	spin_lock(&batch->mdev->sched_lock);
	*(struct moe_batch **)ucmd->pdu = NULL;
	spin_unlock(&batch->mdev->sched_lock);
	kref_put(&batch->ref, moe_batch_free);
	/* Last: the CQE may release the file and with it the module. */
	moe_uring_cmd_done(ucmd, res, issue_flags);
}

/* A demand batch is done: when it was the last, the queued low batches go. */
static void moe_sched_demand_done(struct moe_device *mdev)
{
	struct moe_batch *b, *n;
	LIST_HEAD(run);

	spin_lock(&mdev->sched_lock);
	if (!--mdev->demand_inflight)
		list_splice_init(&mdev->low_queue, &run);
	spin_unlock(&mdev->sched_lock);
	list_for_each_entry_safe(b, n, &run, queue) {
		list_del_init(&b->queue);
		/* From here on it may complete and be freed. */
		moe_batch_issue(b);
	}
}

static void moe_batch_done_work(struct work_struct *work)
{
	struct moe_batch *batch = container_of(work, struct moe_batch, done_work);
	struct moe_device *mdev = batch->mdev;
	bool demand = batch->demand;
	u32 i;

	for (i = 0; i < batch->count; i++) {
		struct moe_req *req = &batch->reqs[i];

		/* A cancelled request never read: its range stays as it was. */
		if (req->result < (s64)req->length && req->result != -ECANCELED)
			moe_req_zero_tail(req);
		moe_req_release(req);
	}
	if (demand)
		moe_sched_demand_done(mdev);
	if (batch->ucmd) {
		io_uring_cmd_complete_in_task(batch->ucmd, moe_uring_done);
		return;
	}
	complete_all(&batch->done);
	/*
	 * The I/O's own references, taken at FETCH: the batch may have outlived
	 * its file.  destroy_workqueue() at unload waits for this function, so
	 * the module may go once its reference is dropped here.
	 */
	kref_put(&batch->ref, moe_batch_free);
	module_put(THIS_MODULE);
}

/* The vector of @bo's table that holds byte @off. */
static u32 moe_bo_seg(const struct moe_bo *bo, u64 off)
{
	u32 lo = 0, hi = bo->nr_segs;

	while (hi - lo > 1) {
		u32 mid = lo + (hi - lo) / 2;

		if (bo->seg_off[mid] <= off)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

static int moe_req_prepare(struct moe_device *mdev, struct drm_file *file,
			   struct moe_req *req, const struct drm_moe_fetch_req *r,
			   const struct moe_req *prev)
{
	const struct drm_moe_extent *ext;
	struct moe_bo *bo;
	u64 end, length;
	u32 first, last;

	if (r->flags)
		return -EINVAL;
	if (prev && prev->model->id == r->model_id) {
		req->model = prev->model;
		kref_get(&req->model->ref);
	} else {
		req->model = moe_model_lookup(mdev, r->model_id);
		if (!req->model)
			return -ENOENT;
	}
	if (r->extent >= req->model->n_extents)
		return -EINVAL;
	ext = &req->model->extents[r->extent];
	if (!IS_ALIGNED(r->offset, MOE_ALIGN) || !IS_ALIGNED(r->length, MOE_ALIGN) ||
	    r->offset >= ext->length)
		return -EINVAL;
	length = r->length ? r->length : ext->length - r->offset;
	if (length > ext->length - r->offset)
		return -EINVAL;

	req->obj = drm_gem_object_lookup(file, r->handle);
	if (!req->obj)
		return -ENOENT;
	/* Only pages pinned until the last reference: see struct moe_bo. */
	if (req->obj->import_attach || !to_moe_bo(req->obj)->pinned)
		return -EINVAL;
	if (!IS_ALIGNED(r->bo_offset, MOE_ALIGN))
		return -EINVAL;
	if (check_add_overflow(r->bo_offset, length, &end) || end > req->obj->size)
		return -EINVAL;

	req->pos = ext->offset + r->offset;
	req->length = length;
	req->bo_offset = r->bo_offset;
	req->nr_pages = length >> PAGE_SHIFT;
	/* The vectors of the BO's table that hold [bo_offset, end): nothing to allocate. */
	bo = to_moe_bo(req->obj);
	first = moe_bo_seg(bo, r->bo_offset);
	last = moe_bo_seg(bo, end - 1);
	req->bvec = &bo->bvec[first];
	req->nr_segs = last - first + 1;
	req->skip = r->bo_offset - bo->seg_off[first];
	return 0;
}

static struct moe_batch *moe_batch_prepare(struct moe_device *mdev, struct drm_file *file,
					   const struct drm_moe_fetch *args)
{
	struct drm_moe_fetch_req *reqs;
	struct moe_batch *batch;
	int ret = 0;
	u32 i;

	if ((args->flags & ~DRM_MOE_FETCH_FLAGS) || !args->count)
		return ERR_PTR(-EINVAL);
	if (args->count > moe_max_batch)
		return ERR_PTR(-E2BIG);

	reqs = kvmalloc_array(args->count, sizeof(*reqs), GFP_KERNEL_ACCOUNT);
	if (!reqs)
		return ERR_PTR(-ENOMEM);
	if (copy_from_user(reqs, u64_to_user_ptr(args->reqs_ptr),
			   array_size(args->count, sizeof(*reqs)))) {
		ret = -EFAULT;
		goto out_free_reqs;
	}
	batch = kvzalloc(struct_size(batch, reqs, args->count), GFP_KERNEL_ACCOUNT);
	if (!batch) {
		ret = -ENOMEM;
		goto out_free_reqs;
	}
	kref_init(&batch->ref);
	batch->mdev = mdev;
	batch->count = args->count;
	batch->results_ptr = args->results_ptr;
	batch->low = args->flags & DRM_MOE_FETCH_LOW;
	INIT_LIST_HEAD(&batch->queue);
	atomic_set(&batch->pending, args->count);
	INIT_WORK(&batch->submit_work, moe_batch_submit_work);
	INIT_WORK(&batch->done_work, moe_batch_done_work);
	init_completion(&batch->done);

	for (i = 0; i < args->count; i++) {
		batch->reqs[i].batch = batch;
		ret = moe_req_prepare(mdev, file, &batch->reqs[i], &reqs[i],
				      i ? &batch->reqs[i - 1] : NULL);
		if (ret)
			break;
	}
	if (ret) {
		for (i = 0; i < args->count; i++)
			moe_req_release(&batch->reqs[i]);
		kvfree(batch);
	}
out_free_reqs:
	kvfree(reqs);
	return ret ? ERR_PTR(ret) : batch;
}

/*
 * Issue @batch, or queue it when it is low priority and demand batches are
 * reading.  @async: issue from the workqueue (a non-blocking io_uring issue
 * must not block on the block layer).  Once queued or issued the batch may
 * complete at any time: the caller must not touch it after this.
 */
static void moe_batch_start(struct moe_batch *batch, bool async)
{
	struct moe_device *mdev = batch->mdev;

	spin_lock(&mdev->sched_lock);
	if (batch->low && mdev->demand_inflight) {
		list_add_tail(&batch->queue, &mdev->low_queue);
		spin_unlock(&mdev->sched_lock);
		return;
	}
	if (!batch->low) {
		batch->demand = true;
		mdev->demand_inflight++;
	}
	spin_unlock(&mdev->sched_lock);
	if (async)
		queue_work(mdev->wq, &batch->submit_work);
	else
		moe_batch_issue(batch);
}

/* End a batch taken off the low queue (sched_lock not held): no read was issued. */
static void moe_batch_cancel_queued(struct moe_batch *batch)
{
	u32 i;

	for (i = 0; i < batch->count; i++)
		batch->reqs[i].result = -ECANCELED;
	atomic_set(&batch->pending, 0);
	queue_work(batch->mdev->wq, &batch->done_work);
}

/* Take queued batches for which @match says yes off the low queue and end them. */
static u32 moe_cancel_queued(struct moe_device *mdev,
			     bool (*match)(const struct moe_batch *, const void *), const void *arg)
{
	struct moe_batch *b, *n;
	LIST_HEAD(victims);
	u32 count = 0;

	spin_lock(&mdev->sched_lock);
	list_for_each_entry_safe(b, n, &mdev->low_queue, queue)
		if (match(b, arg))
			list_move_tail(&b->queue, &victims);
	spin_unlock(&mdev->sched_lock);
	list_for_each_entry_safe(b, n, &victims, queue) {
		list_del_init(&b->queue);
		moe_batch_cancel_queued(b);
		count++;
	}
	return count;
}

struct moe_cancel_match {
	const struct moe_file *owner;
	u32 ticket;
	/* Non-zero: io_uring batches with this tag, not a ticket. */
	u64 tag;
};

static bool moe_match_file(const struct moe_batch *b, const void *arg)
{
	const struct moe_cancel_match *m = arg;

	if (b->owner != m->owner)
		return false;
	if (m->tag)
		return b->ucmd && b->tag == m->tag;
	return !m->ticket || (!b->ucmd && b->ticket == m->ticket);
}

static bool moe_match_model(const struct moe_batch *b, const void *arg)
{
	u32 i;

	for (i = 0; i < b->count; i++)
		if (b->reqs[i].model == arg)
			return true;
	return false;
}

void moe_fetch_cancel_model(struct moe_device *mdev, struct moe_model *model)
{
	u32 n = moe_cancel_queued(mdev, moe_match_model, model);

	if (n)
		moe_dbg(mdev, MOE_DBG_MODEL, "model %u: %u queued batches cancelled\n", model->id, n);
}

int moe_cancel_ioctl(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct moe_device *mdev = to_moe_device(dev);
	struct moe_file *mfile = file->driver_priv;
	struct drm_moe_cancel *args = data;
	struct moe_cancel_match m = { .owner = mfile };

	if (args->flags & ~DRM_MOE_CANCEL_FLAGS)
		return -EINVAL;
	if (args->flags & DRM_MOE_CANCEL_TAG) {
		if (!args->ticket)
			return -EINVAL;
		m.tag = args->ticket;
	} else {
		if (args->ticket > U32_MAX)
			return -EINVAL;
		m.ticket = args->ticket;
		if (m.ticket && !xa_load(&mfile->batches, m.ticket))
			return -ENOENT;
	}
	args->cancelled = moe_cancel_queued(mdev, moe_match_file, &m);
	moe_dbg(mdev, MOE_DBG_FETCH, "cancel: ticket %u, tag %llu, %u batches\n", m.ticket,
		m.tag, args->cancelled);
	return 0;
}

/*
 * Batches wait in kernel memory until WAIT collects them or their CQE
 * posts: one bound per file covers both paths.  -EBUSY over it.
 */
static int moe_file_reserve(struct moe_file *mfile, u32 count)
{
	u32 limit = max_t(u32, MOE_MAX_PENDING, moe_max_batch);

	if (atomic_add_return(count, &mfile->n_pending) > limit) {
		atomic_sub(count, &mfile->n_pending);
		return -EBUSY;
	}
	return 0;
}

int moe_fetch_ioctl(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct moe_device *mdev = to_moe_device(dev);
	struct moe_file *mfile = file->driver_priv;
	struct drm_moe_fetch *args = data;
	struct moe_batch *batch;
	u32 ticket;
	int ret;

	if ((args->flags & ~DRM_MOE_FETCH_FLAGS) || !args->count)
		return -EINVAL;
	if (args->count > moe_max_batch)
		return -E2BIG;
	ret = moe_file_reserve(mfile, args->count);
	if (ret)
		return ret;
	batch = moe_batch_prepare(mdev, file, args);
	if (IS_ERR(batch)) {
		ret = PTR_ERR(batch);
		goto err_dec;
	}
	ret = xa_alloc_cyclic(&mfile->batches, &ticket, batch, xa_limit_32b,
			      &mfile->next_ticket, GFP_KERNEL);
	if (ret < 0) {
		u32 i;

		for (i = 0; i < batch->count; i++)
			moe_req_release(&batch->reqs[i]);
		kvfree(batch);
		goto err_dec;
	}
	args->ticket = ticket;
	batch->ticket = ticket;
	batch->owner = mfile;
	moe_dbg(mdev, MOE_DBG_FETCH, "fetch: %u requests, ticket %u%s\n", batch->count, ticket,
		batch->low ? ", low priority" : "");
	/*
	 * The reads keep the batch and the module alive by themselves, so a
	 * file closed (a process killed) with reads in flight need not wait
	 * for a device that may never answer: see moe_file_release_batches().
	 */
	kref_get(&batch->ref);
	__module_get(THIS_MODULE);
	moe_batch_start(batch, false);
	return 0;

err_dec:
	atomic_sub(args->count, &mfile->n_pending);
	return ret;
}

int moe_wait_ioctl(struct drm_device *dev, void *data, struct drm_file *file)
{
	struct moe_file *mfile = file->driver_priv;
	struct drm_moe_wait *args = data;
	struct moe_batch *batch;
	ktime_t deadline;
	long left;
	int ret = 0;
	u32 i;

	if (args->flags || args->ticket > U32_MAX)
		return -EINVAL;

	xa_lock(&mfile->batches);
	batch = xa_load(&mfile->batches, args->ticket);
	if (batch)
		kref_get(&batch->ref);
	xa_unlock(&mfile->batches);
	if (!batch)
		return -ENOENT;

	deadline = ns_to_ktime(args->timeout_ns);
	if (!completion_done(&batch->done)) {
		s64 rel = ktime_to_ns(ktime_sub(deadline, ktime_get()));

		if (rel <= 0) {
			ret = -ETIME;
			goto out_put;
		}
		left = wait_for_completion_interruptible_timeout(&batch->done,
								 nsecs_to_jiffies(rel) + 1);
		if (left < 0) {
			ret = left;
			goto out_put;
		}
		if (!left) {
			ret = -ETIME;
			goto out_put;
		}
	}

	/* Of two threads waiting for one ticket, one gets the results. */
	if (xa_cmpxchg(&mfile->batches, args->ticket, batch, NULL, GFP_KERNEL) != batch) {
		ret = -ENOENT;
		goto out_put;
	}
	args->failed = 0;
	for (i = 0; i < batch->count; i++)
		if (batch->reqs[i].result < 0)
			args->failed++;
	ret = moe_batch_copy_results(batch);
	atomic_sub(batch->count, &mfile->n_pending);
	/* The xarray's reference. */
	kref_put(&batch->ref, moe_batch_free);
out_put:
	kref_put(&batch->ref, moe_batch_free);
	return ret;
}

int moe_uring_cmd(struct io_uring_cmd *ucmd, unsigned int issue_flags)
{
	struct drm_file *file = ucmd->file->private_data;
	struct moe_device *mdev = to_moe_device(file->minor->dev);
	struct moe_file *mfile = file->driver_priv;
	const struct drm_moe_uring_cmd *cmd = MOE_URING_CMD_BYTES(ucmd);
	struct drm_moe_fetch args;
	struct moe_batch *batch;
	u64 fetch_ptr, pad;
	int idx, ret;

#ifdef MOE_HAVE_URING_CANCELABLE
	if (issue_flags & IO_URING_F_CANCEL) {
		struct moe_batch *b;
		bool queued = false;

		/* The ring is going away: a batch still queued ends, one reading finishes. */
		spin_lock(&mdev->sched_lock);
		b = *(struct moe_batch **)ucmd->pdu;
		if (b && !list_empty(&b->queue)) {
			list_del_init(&b->queue);
			queued = true;
		}
		spin_unlock(&mdev->sched_lock);
		if (queued)
			moe_batch_cancel_queued(b);
		return 0;
	}
#endif
	if (ucmd->cmd_op != DRM_MOE_URING_CMD_FETCH) {
		moe_dbg(mdev, MOE_DBG_URING, "uring_cmd: unknown cmd_op 0x%x\n", ucmd->cmd_op);
		return -ENOTTY;
	}
	/* After an -EAGAIN re-issue cmd points at a copy: read it every time. */
	fetch_ptr = READ_ONCE(cmd->fetch_ptr);
	pad = READ_ONCE(cmd->pad);
	if (pad)
		return -EINVAL;
	if (!drm_dev_enter(&mdev->drm, &idx))
		return -ENODEV;
	if (copy_from_user(&args, u64_to_user_ptr(fetch_ptr), sizeof(args))) {
		ret = -EFAULT;
		goto out_exit;
	}
	/* The bounds of the ioctl: moe_batch_prepare() checks flags and count first. */
	batch = moe_batch_prepare(mdev, file, &args);
	if (IS_ERR(batch)) {
		ret = PTR_ERR(batch);
		goto out_exit;
	}
	ret = moe_file_reserve(mfile, batch->count);
	if (ret) {
		u32 i;

		for (i = 0; i < batch->count; i++)
			moe_req_release(&batch->reqs[i]);
		kvfree(batch);
		goto out_exit;
	}
	batch->mfile = mfile;
	batch->owner = mfile;
	batch->ucmd = ucmd;
	batch->tag = args.ticket;
	*(struct moe_batch **)ucmd->pdu = batch;
	moe_dbg(mdev, MOE_DBG_URING, "uring_cmd fetch: %u requests%s%s\n", batch->count,
		batch->low ? ", low priority" : "",
		issue_flags & IO_URING_F_NONBLOCK ? ", issued from the workqueue" : "");
#ifdef MOE_HAVE_URING_CANCELABLE
	if (batch->low)
		io_uring_cmd_mark_cancelable(ucmd, issue_flags);
#endif
	/*
	 * A positive return is mishandled by 6.1's io_uring: always complete
	 * through io_uring_cmd_done().  Issuing may block (inode lock, request
	 * tags), which a non-blocking issue must not: hand it to the workqueue.
	 */
	moe_batch_start(batch, issue_flags & IO_URING_F_NONBLOCK);
	ret = -EIOCBQUEUED;
out_exit:
	drm_dev_exit(idx);
	return ret;
}

/*
 * The file is closing: forget its tickets without waiting.  A batch still
 * reading holds its BO pages, its models, itself and the module until its
 * last read completes, so nothing here waits on the device.
 */
void moe_file_release_batches(struct moe_device *mdev, struct moe_file *mfile)
{
	struct moe_cancel_match m = { .owner = mfile };
	struct moe_batch *batch;
	unsigned long ticket;

	/* Its queued batches would read for no one: they end now, unread. */
	moe_cancel_queued(mdev, moe_match_file, &m);
	xa_for_each(&mfile->batches, ticket, batch) {
		xa_erase(&mfile->batches, ticket);
		kref_put(&batch->ref, moe_batch_free);
	}
}
