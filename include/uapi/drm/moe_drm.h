/* SPDX-License-Identifier: (GPL-2.0 WITH Linux-syscall-note) OR MIT */
/*
 * moe_drm.h - uAPI of moe.ko, the driver that reads registered model extents
 * straight from NVMe into pinned host buffers.
 */
#ifndef _UAPI_MOE_DRM_H_
#define _UAPI_MOE_DRM_H_

#include "drm.h"

#if defined(__cplusplus)
extern "C" {
#endif

/**
 * DOC: moe uAPI
 *
 * The device is a DRM render node (a compute-accel node on kernels with
 * DRM_ACCEL) whose driver name is "moe".  Every ioctl below is allowed on the
 * render node; MODEL_REGISTER and MODEL_UNREGISTER also need CAP_SYS_ADMIN.
 *
 * Use flow: a privileged opener registers an open model file and a table of
 * block-aligned extents under a name (MODEL_REGISTER); any opener creates
 * buffer objects (BO_CREATE), maps them (BO_MMAP + mmap on the node), and
 * asks for "extent i of model m into BO h at offset o" in batches (FETCH).
 * A batch completes either through WAIT (ticket from FETCH, absolute
 * CLOCK_MONOTONIC timeout) or, submitted with IORING_OP_URING_CMD and cmd_op
 * DRM_MOE_URING_CMD_FETCH, as one io_uring CQE.
 *
 * Every struct has explicit padding; flags and pad must be zero (-EINVAL
 * otherwise).  Pointers travel as __u64.
 */

#define DRM_MOE_GET_PARAM		0x00
#define DRM_MOE_BO_CREATE		0x01
#define DRM_MOE_BO_MMAP			0x02
#define DRM_MOE_MODEL_REGISTER		0x03
#define DRM_MOE_MODEL_UNREGISTER	0x04
#define DRM_MOE_MODEL_INFO		0x05
#define DRM_MOE_FETCH			0x06
#define DRM_MOE_WAIT			0x07
#define DRM_MOE_CANCEL			0x08
#define DRM_MOE_BO_USERPTR		0x09

/*
 * uAPI version: major changes break, minor ones add.  2: cmd_op of the
 * io_uring FETCH is _IOWR-encoded (it was the bare number 0x6d01).  2.1:
 * MODEL_REGISTER and MODEL_INFO grew @n_meta (a model's metadata extents,
 * so that a client can open it by name); clients built against 2.0 pass the
 * shorter structs and keep working.  2.2: FETCH's DRM_MOE_FETCH_LOW and
 * the CANCEL ioctl (DRM_MOE_CAP_PRIORITY).  2.3: BO_USERPTR
 * (DRM_MOE_CAP_USERPTR), and io_uring batches tagged (FETCH's @ticket in)
 * for CANCEL with DRM_MOE_CANCEL_TAG.
 */
#define DRM_MOE_VERSION_MAJOR		2
#define DRM_MOE_VERSION_MINOR		3

/* Fixed-size names keep MODEL_REGISTER free of a second user copy. */
#define DRM_MOE_NAME_LEN		64
/* Latency histogram buckets: bucket i counts requests of [2^i, 2^(i+1)) us. */
#define DRM_MOE_LAT_BUCKETS		16

/**
 * enum drm_moe_param - what GET_PARAM reports
 * @DRM_MOE_PARAM_VERSION: (major << 16) | minor of this uAPI.
 * @DRM_MOE_PARAM_CAPS: mask of DRM_MOE_CAP_*.
 * @DRM_MOE_PARAM_ALIGN: alignment in bytes of extent offsets and lengths and
 *	of FETCH BO offsets.
 * @DRM_MOE_PARAM_MAX_EXTENTS: most extents one model may register.
 * @DRM_MOE_PARAM_MAX_BATCH: most requests one FETCH may carry.
 * @DRM_MOE_PARAM_MAX_BO_SIZE: largest BO_CREATE size in bytes.
 * @DRM_MOE_PARAM_MAX_MODELS: most models registered at once.
 */
enum drm_moe_param {
	DRM_MOE_PARAM_VERSION = 0,
	DRM_MOE_PARAM_CAPS = 1,
	DRM_MOE_PARAM_ALIGN = 2,
	DRM_MOE_PARAM_MAX_EXTENTS = 3,
	DRM_MOE_PARAM_MAX_BATCH = 4,
	DRM_MOE_PARAM_MAX_BO_SIZE = 5,
	DRM_MOE_PARAM_MAX_MODELS = 6,
};

/* FETCH batches complete through io_uring (IORING_OP_URING_CMD). */
#define DRM_MOE_CAP_URING_CMD		(1ULL << 0)
/* BOs export as dma-buf through PRIME. */
#define DRM_MOE_CAP_PRIME		(1ULL << 1)
/* Reads bypass the page cache (direct I/O). */
#define DRM_MOE_CAP_DIRECT		(1ULL << 2)
/* FETCH takes DRM_MOE_FETCH_LOW, and CANCEL exists (uAPI 2.2). */
#define DRM_MOE_CAP_PRIORITY		(1ULL << 3)
/* BO_USERPTR makes BOs over the caller's own memory (uAPI 2.3). */
#define DRM_MOE_CAP_USERPTR		(1ULL << 4)

/**
 * struct drm_moe_get_param - DRM_IOCTL_MOE_GET_PARAM
 * @param: in, one of enum drm_moe_param; -EINVAL for others.
 * @pad: must be zero.
 * @value: out, the value.
 */
struct drm_moe_get_param {
	__u32 param;
	__u32 pad;
	__u64 value;
};

/**
 * struct drm_moe_bo_create - DRM_IOCTL_MOE_BO_CREATE
 * @size: in, bytes; rounded up to the page size; 0 or above
 *	DRM_MOE_PARAM_MAX_BO_SIZE gives -EINVAL.  The pages are allocated and
 *	pinned here and stay pinned until the last reference goes.
 * @flags: must be zero.
 * @handle: out, the GEM handle.
 */
struct drm_moe_bo_create {
	__u64 size;
	__u32 flags;
	__u32 handle;
};

/**
 * struct drm_moe_bo_mmap - DRM_IOCTL_MOE_BO_MMAP
 * @handle: in, a GEM handle of this file; -ENOENT when unknown.
 * @flags: must be zero.
 * @offset: out, the offset to pass to mmap() on the same file.
 */
struct drm_moe_bo_mmap {
	__u32 handle;
	__u32 flags;
	__u64 offset;
};

/**
 * struct drm_moe_bo_userptr - DRM_IOCTL_MOE_BO_USERPTR (uAPI 2.3)
 * @addr: in, start of the caller's memory, page-aligned (-EINVAL).
 * @size: in, bytes, a multiple of the page size, 1 page to
 *	DRM_MOE_PARAM_MAX_BO_SIZE (-EINVAL otherwise).
 * @flags: must be zero.
 * @handle: out, the GEM handle.
 *
 * A BO whose pages are the caller's memory at [@addr, @addr + @size),
 * pinned here (long-term, for writing) and unpinned when the last reference
 * goes, so a FETCH into it lands in that memory with no copy.  The range
 * must be writable memory that can be pinned long-term (anonymous or
 * hugetlb memory, not a device or DAX mapping): -EFAULT otherwise.  The BO
 * keeps the pages it pinned, not the mapping: memory unmapped or remapped
 * after this call no longer receives its reads.  BO_MMAP refuses it
 * (-EINVAL: the memory is mapped already) and so does PRIME export
 * (-EOPNOTSUPP).
 */
struct drm_moe_bo_userptr {
	__u64 addr;
	__u64 size;
	__u32 flags;
	__u32 handle;
};

/**
 * struct drm_moe_extent - one byte range of a model file
 * @offset: byte offset in the file, a multiple of DRM_MOE_PARAM_ALIGN.
 * @length: bytes, non-zero, a multiple of DRM_MOE_PARAM_ALIGN.  The extent
 *	must end within the file rounded up to the alignment; the bytes past
 *	the end of the file read as zero.
 */
struct drm_moe_extent {
	__u64 offset;
	__u64 length;
};

/**
 * struct drm_moe_model_register - DRM_IOCTL_MOE_MODEL_REGISTER
 * @fd: in, an fd of the model file open for reading: -EBADF when it is not
 *	an open fd or not readable, -EINVAL when it is not a regular file,
 *	-EOPNOTSUPP when the filesystem cannot do direct I/O on it.  The
 *	driver keeps its own reference to the file until unregistered.
 * @flags: must be zero.
 * @name: in, NUL-terminated, 1..63 bytes; -EEXIST when taken.
 * @extents_ptr: in, user pointer to @n_extents struct drm_moe_extent.
 * @n_extents: in, 1..DRM_MOE_PARAM_MAX_EXTENTS (-E2BIG above).
 * @model_id: out, the model id (never 0).
 * @file_size: out, the size of the file at registration.
 * @n_meta: in (uAPI 2.1), how many of the first extents are the model's
 *	metadata: extent 0 starts at offset 0 and holds the file's header and
 *	tensor table, the others hold the tensors a client needs besides the
 *	routed experts.  With them a client can open the model by name and read
 *	everything through FETCH, never touching the file.  0 (and every 2.0
 *	client, whose shorter struct ends before this field): the extents are
 *	expert data only.  -EINVAL above @n_extents or when extent 0 does not
 *	start at offset 0.
 * @pad: must be zero.
 *
 * Needs CAP_SYS_ADMIN (-EPERM).  -ENOSPC at DRM_MOE_PARAM_MAX_MODELS.
 */
struct drm_moe_model_register {
	__s32 fd;
	__u32 flags;
	char name[DRM_MOE_NAME_LEN];
	__u64 extents_ptr;
	__u32 n_extents;
	__u32 model_id;
	__u64 file_size;
	__u32 n_meta;
	__u32 pad;
};

/**
 * struct drm_moe_model_unregister - DRM_IOCTL_MOE_MODEL_UNREGISTER
 * @model_id: in; -ENOENT when unknown.
 * @flags: must be zero.
 *
 * Needs CAP_SYS_ADMIN.  Requests in flight finish normally; queued
 * DRM_MOE_FETCH_LOW batches that read the model end with -ECANCELED; new
 * FETCHes naming the model get -ENOENT.  The file is released after the last
 * request completes.
 */
struct drm_moe_model_unregister {
	__u32 model_id;
	__u32 flags;
};

/* MODEL_INFO: look the model up by @name instead of @model_id. */
#define DRM_MOE_INFO_BY_NAME		(1U << 0)
/* MODEL_INFO: report the registered model with the smallest id > @model_id. */
#define DRM_MOE_INFO_NEXT		(1U << 1)
#define DRM_MOE_INFO_FLAGS		(DRM_MOE_INFO_BY_NAME | DRM_MOE_INFO_NEXT)

/**
 * struct drm_moe_model_info - DRM_IOCTL_MOE_MODEL_INFO
 * @model_id: in (unless BY_NAME) and out; -ENOENT when no model matches.
 * @flags: DRM_MOE_INFO_* (at most one of them); others give -EINVAL.
 * @name: in with BY_NAME, out otherwise.
 * @extents_ptr: in, user pointer for up to @n_extents extents, or 0.
 * @n_extents: in, room at @extents_ptr; out, extents of the model.
 * @pad: must be zero.
 * @file_size: out, the size of the file at registration.
 * @bytes: out, bytes read by completed requests.
 * @requests: out, completed requests.
 * @errors: out, requests that failed.
 * @inflight: out, requests submitted and not yet completed.
 * @file_dev_major: out, major of the file's device as stat(2) reports it.
 * @file_dev_minor: out, minor of the file's device as stat(2) reports it.
 * @file_ino: out, the file's inode number as stat(2) reports it; with the
 *	device it lets a client find the model registered for a file it opened.
 * @lat_hist: out, completed requests by latency (DRM_MOE_LAT_BUCKETS).
 * @n_meta: out (uAPI 2.1), the metadata extents MODEL_REGISTER declared
 *	(extents 0..@n_meta - 1); 0 when the model cannot be opened by name.
 * @pad2: must be zero.
 *
 * Any opener may ask; the counters are also in debugfs (dri/N/moe_models).
 */
struct drm_moe_model_info {
	__u32 model_id;
	__u32 flags;
	char name[DRM_MOE_NAME_LEN];
	__u64 extents_ptr;
	__u32 n_extents;
	__u32 pad;
	__u64 file_size;
	__u64 bytes;
	__u64 requests;
	__u64 errors;
	__u64 inflight;
	__u32 file_dev_major;
	__u32 file_dev_minor;
	__u64 file_ino;
	__u64 lat_hist[DRM_MOE_LAT_BUCKETS];
	__u32 n_meta;
	__u32 pad2;
};

/**
 * struct drm_moe_fetch_req - one request of a FETCH batch
 * @model_id: a registered model; -ENOENT when unknown.
 * @extent: index into the model's extent table; -EINVAL when out of range.
 * @handle: the destination BO of this file; -ENOENT when unknown, -EINVAL
 *	when it is imported from another driver.
 * @flags: must be zero.
 * @bo_offset: where in the BO the bytes land, a multiple of
 *	DRM_MOE_PARAM_ALIGN; -EINVAL when they do not fit.
 * @offset: first byte to read, relative to the start of the extent, a
 *	multiple of DRM_MOE_PARAM_ALIGN (0: from the start).
 * @length: bytes to read, a multiple of DRM_MOE_PARAM_ALIGN (0: to the end
 *	of the extent); -EINVAL when @offset + @length passes the extent's end.
 *
 * A request reads inside one registered extent and never outside it.
 */
struct drm_moe_fetch_req {
	__u32 model_id;
	__u32 extent;
	__u32 handle;
	__u32 flags;
	__u64 bo_offset;
	__u64 offset;
	__u64 length;
};

/*
 * FETCH flags.  LOW (uAPI 2.2): a prefetch.  The batch waits in the device's
 * low-priority queue while any batch without the flag (from any file) is
 * reading, and is issued when none is; until then CANCEL can take it back.
 * An io_uring LOW batch is also cancelled when its ring goes away, on
 * kernels with IORING_URING_CMD_CANCELABLE (6.7+).
 */
#define DRM_MOE_FETCH_LOW		(1U << 0)
#define DRM_MOE_FETCH_FLAGS		(DRM_MOE_FETCH_LOW)

/**
 * struct drm_moe_fetch - DRM_IOCTL_MOE_FETCH and DRM_MOE_URING_CMD_FETCH
 * @reqs_ptr: in, user pointer to @count struct drm_moe_fetch_req.
 * @results_ptr: in, user pointer to @count __s64 that receive, per request,
 *	the bytes read or a negative errno; written at completion (by WAIT or
 *	before the io_uring CQE is posted).  0: no per-request results.
 * @count: in, 1..DRM_MOE_PARAM_MAX_BATCH (-EINVAL for 0, -E2BIG above).
 * @flags: DRM_MOE_FETCH_* ; others give -EINVAL.
 * @ticket: ioctl: out, what to pass to WAIT and CANCEL.  io_uring (uAPI
 *	2.3): in, a tag of the caller's choosing that CANCEL with
 *	DRM_MOE_CANCEL_TAG names (0: none); drivers before 2.3 ignore it.
 *
 * Every request is validated before any is issued: a bad request fails the
 * whole submission with its errno and nothing is read.  Failures after
 * submission (I/O errors) come back per request.  The ioctl returns once
 * the reads are queued; -EBUSY when this file would hold more than 65536
 * requests (or DRM_MOE_PARAM_MAX_BATCH, if larger) not yet collected by WAIT.
 */
struct drm_moe_fetch {
	__u64 reqs_ptr;
	__u64 results_ptr;
	__u32 count;
	__u32 flags;
	__u64 ticket;
};

/**
 * struct drm_moe_wait - DRM_IOCTL_MOE_WAIT
 * @ticket: in, from FETCH on this file; -ENOENT when unknown or already
 *	waited for.
 * @timeout_ns: in, absolute CLOCK_MONOTONIC deadline; -ETIME when it passes
 *	first (the ticket stays valid), -ERESTARTSYS on a signal.
 * @flags: must be zero.
 * @failed: out, number of requests that failed.
 *
 * Blocks until every request of the batch has completed, then writes the
 * results and forgets the ticket.
 */
struct drm_moe_wait {
	__u64 ticket;
	__s64 timeout_ns;
	__u32 flags;
	__u32 failed;
};

/* CANCEL (uAPI 2.3): @ticket is the tag of io_uring batches of this file. */
#define DRM_MOE_CANCEL_TAG		(1U << 0)
#define DRM_MOE_CANCEL_FLAGS		(DRM_MOE_CANCEL_TAG)

/**
 * struct drm_moe_cancel - DRM_IOCTL_MOE_CANCEL (uAPI 2.2)
 * @ticket: in, a FETCH ticket of this file, or 0 for every queued batch of
 *	this file (io_uring ones included); -ENOENT for a ticket this file
 *	does not hold.  With DRM_MOE_CANCEL_TAG: the non-zero tag the
 *	io_uring FETCHes to take back carried in their @ticket (-EINVAL for
 *	0); no batch with the tag is not an error (@cancelled 0).
 * @flags: DRM_MOE_CANCEL_* (uAPI 2.3; before, must be zero).
 * @cancelled: out, batches taken back.
 *
 * Takes back LOW batches that have not been issued yet: every request of
 * such a batch ends with -ECANCELED (its BO range is left as it was), the
 * batch completes (WAIT returns; an io_uring batch posts its CQE with
 * -ECANCELED).  Batches already reading are not affected (@cancelled 0).
 * Never blocks.
 */
struct drm_moe_cancel {
	__u64 ticket;
	__u32 flags;
	__u32 cancelled;
};

/**
 * struct drm_moe_uring_cmd - the 16 bytes at io_uring_sqe.cmd
 * @fetch_ptr: user pointer to a struct drm_moe_fetch (its @ticket unused).
 * @pad: must be zero.
 *
 * With cmd_op DRM_MOE_URING_CMD_FETCH.  The CQE res is the number of bytes
 * read by the whole batch, saturated at INT_MAX (a batch of more than 2 GiB
 * - 1 reports INT_MAX: the 32-bit res cannot say more), or the first failed
 * request's negative errno when any failed; results_ptr gets the exact
 * per-request values before the CQE posts.  Requests in io_uring batches
 * count against the same per-file bound as FETCH batches not yet collected
 * by WAIT (-EBUSY).
 * Bad submissions complete with their errno; an unknown cmd_op with
 * -ENOTTY.
 *
 * cmd_op is encoded like an ioctl number (as NVMe's and ublk's are): the
 * type, the number, the direction and the size of the command bytes, so a
 * command meant for another driver, or built against another layout of
 * this struct, is refused instead of misread.
 */
struct drm_moe_uring_cmd {
	__u64 fetch_ptr;
	__u64 pad;
};

#define DRM_MOE_URING_CMD_FETCH		_IOWR('M', 0x01, struct drm_moe_uring_cmd)

#define DRM_IOCTL_MOE_GET_PARAM \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_MOE_GET_PARAM, struct drm_moe_get_param)
#define DRM_IOCTL_MOE_BO_CREATE \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_MOE_BO_CREATE, struct drm_moe_bo_create)
#define DRM_IOCTL_MOE_BO_MMAP \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_MOE_BO_MMAP, struct drm_moe_bo_mmap)
#define DRM_IOCTL_MOE_MODEL_REGISTER \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_MOE_MODEL_REGISTER, struct drm_moe_model_register)
#define DRM_IOCTL_MOE_MODEL_UNREGISTER \
	DRM_IOW(DRM_COMMAND_BASE + DRM_MOE_MODEL_UNREGISTER, struct drm_moe_model_unregister)
#define DRM_IOCTL_MOE_MODEL_INFO \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_MOE_MODEL_INFO, struct drm_moe_model_info)
#define DRM_IOCTL_MOE_FETCH \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_MOE_FETCH, struct drm_moe_fetch)
#define DRM_IOCTL_MOE_WAIT \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_MOE_WAIT, struct drm_moe_wait)
#define DRM_IOCTL_MOE_CANCEL \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_MOE_CANCEL, struct drm_moe_cancel)
#define DRM_IOCTL_MOE_BO_USERPTR \
	DRM_IOWR(DRM_COMMAND_BASE + DRM_MOE_BO_USERPTR, struct drm_moe_bo_userptr)

#if defined(__cplusplus)
}
#endif

#endif /* _UAPI_MOE_DRM_H_ */
