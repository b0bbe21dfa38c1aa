/* SPDX-License-Identifier: MIT */
/*
 * The moe.ko client, internal side: the driver node, buffer objects, fetch
 * and wait (kmod.c), and the I/O engine backend moe_io_kmod_ops built on
 * them (kmod_io.c).  The public calls (moe_kmod_open, moe_kmod_register,
 * ...) are in moe/moe.h.
 */
#ifndef MOE_IO_KMOD_H
#define MOE_IO_KMOD_H

#include <stdbool.h>
#include <stdint.h>

#include "io/io.h"
#include "uapi/drm/moe_drm.h"

struct moe_kmod {
	int fd;
	uint32_t minor;          /* uAPI minor version: 1 and above take metadata extents */
	uint64_t align;          /* DRM_MOE_PARAM_ALIGN */
	uint64_t max_batch;
	uint64_t max_extents;
	uint64_t max_bo;
	uint64_t caps;           /* DRM_MOE_PARAM_CAPS */
};

/* A mapped buffer object, or (user) one over the process's own memory at @map. */
struct moe_kmod_bo {
	uint32_t handle;
	uint64_t size;
	uint8_t *map;
	bool user;
};

int moe_kmod_bo_create(struct moe_kmod *k, uint64_t size, struct moe_kmod_bo *bo);
/*
 * A BO over [@addr, @addr + @size) of this process (BO_USERPTR: both
 * page-aligned), pinned until destroyed, so that FETCHes land there with no
 * copy.  -EOPNOTSUPP before uAPI 2.3; -EFAULT for memory that cannot be
 * pinned.  Quiet: the caller says what it does instead.
 */
int moe_kmod_bo_userptr(struct moe_kmod *k, void *addr, uint64_t size, struct moe_kmod_bo *bo);
void moe_kmod_bo_destroy(struct moe_kmod *k, struct moe_kmod_bo *bo);
/* Model @id's info and up to @cap extents (may be NULL/0). */
int moe_kmod_info(struct moe_kmod *k, uint32_t id, struct drm_moe_model_info *info,
		  struct drm_moe_extent *ext, uint32_t cap);
/* Queue @n requests; per-request results land in @results at moe_kmod_wait(). */
int moe_kmod_fetch(struct moe_kmod *k, const struct drm_moe_fetch_req *reqs, uint32_t n,
		   int64_t *results, uint64_t *ticket);
/* The same with FETCH flags (DRM_MOE_FETCH_LOW; dropped by a driver before uAPI 2.2). */
int moe_kmod_fetch_flags(struct moe_kmod *k, const struct drm_moe_fetch_req *reqs, uint32_t n,
			 uint32_t flags, int64_t *results, uint64_t *ticket);
/*
 * Take back this node's low-priority batches not yet issued (@ticket 0: all
 * of them); they complete with -ECANCELED.  -EOPNOTSUPP before uAPI 2.2.
 */
int moe_kmod_cancel(struct moe_kmod *k, uint64_t ticket, uint32_t *cancelled);
/* The same for this node's io_uring batches tagged @tag (uAPI 2.3, else -EOPNOTSUPP). */
int moe_kmod_cancel_tag(struct moe_kmod *k, uint64_t tag, uint32_t *cancelled);
/* The node's descriptor for io_uring FETCH commands; -EOPNOTSUPP without DRM_MOE_CAP_URING_CMD. */
int moe_kmod_uring_fd(struct moe_kmod *k);
/* Wait until @ticket's batch completed; @timeout_s from now. */
int moe_kmod_wait(struct moe_kmod *k, uint64_t ticket, double timeout_s, uint32_t *failed);

/* MODEL_INFO by name into @info (no extents); -ENOENT, with moe_errmsg(), when unknown. */
int moe_kmod_find_raw(struct moe_kmod *k, const char *name, struct drm_moe_model_info *info);

/*
 * Every routed expert matrix, widened to k->align and clamped to the file
 * size rounded up; *out is malloc'ed.  -E2BIG above k->max_extents.
 */
int moe_kmod_expert_extents(const struct moe_kmod *k, const struct moe_model *model,
			    uint64_t file_size, struct drm_moe_extent **out, uint32_t *n_out);

/*
 * The extent table MODEL_REGISTER gets: first the metadata extents (the
 * header and tensor table from offset 0, then every tensor that is neither
 * a routed expert nor unused, widened to k->align, overlapping ones merged),
 * *n_meta of them, then the expert extents as moe_kmod_expert_extents().
 * With them the model opens by name ("moe:NAME") without its file.
 */
int moe_kmod_model_extents(const struct moe_kmod *k, const struct moe_model *model,
			   uint64_t file_size, struct drm_moe_extent **out, uint32_t *n_out,
			   uint32_t *n_meta);

/* The prefix of model paths that name a model registered with moe.ko. */
#define MOE_KMOD_PREFIX "moe:"

/*
 * The header extent (extent 0) of the model registered as @name, read
 * through the driver client moe_kmod_io_client: *data (malloc'ed, *len
 * bytes, the rest of the extent past the end of the file cut off) and the
 * file's size.  -ENOENT when no such model, -EOPNOTSUPP when it was
 * registered without metadata extents.
 */
int moe_kmod_read_header(const char *name, void **data, uint64_t *len, uint64_t *file_size);

/*
 * The driver calls the engine backend makes, as a table so that tests can
 * put a stand-in driver behind the backend (injected timeouts, late DMA).
 */
struct moe_kmod_client {
	int (*open)(struct moe_kmod **out);
	void (*close)(struct moe_kmod *k);
	int (*next)(struct moe_kmod *k, uint32_t after, struct moe_kmod_model_info *out);
	int (*find)(struct moe_kmod *k, const char *name, struct drm_moe_model_info *info);
	int (*info)(struct moe_kmod *k, uint32_t id, struct drm_moe_model_info *info,
		    struct drm_moe_extent *ext, uint32_t cap);
	int (*bo_create)(struct moe_kmod *k, uint64_t size, struct moe_kmod_bo *bo);
	/* NULL: a driver without BO_USERPTR (every read goes through a bounce BO). */
	int (*bo_userptr)(struct moe_kmod *k, void *addr, uint64_t size, struct moe_kmod_bo *bo);
	void (*bo_destroy)(struct moe_kmod *k, struct moe_kmod_bo *bo);
	int (*fetch)(struct moe_kmod *k, const struct drm_moe_fetch_req *reqs, uint32_t n,
		     uint32_t flags, int64_t *results, uint64_t *ticket);
	int (*cancel)(struct moe_kmod *k, uint64_t ticket, uint32_t *cancelled);
	/*
	 * The descriptor to submit DRM_MOE_URING_CMD_FETCH on, or -EOPNOTSUPP;
	 * NULL: batches complete through wait.
	 */
	int (*uring_fd)(struct moe_kmod *k);
	/* CANCEL with DRM_MOE_CANCEL_TAG; NULL: io_uring batches cannot be taken back. */
	int (*cancel_tag)(struct moe_kmod *k, uint64_t tag, uint32_t *cancelled);
	int (*wait)(struct moe_kmod *k, uint64_t ticket, double timeout_s, uint32_t *failed);
};

/* moe.ko itself. */
extern const struct moe_kmod_client moe_kmod_client_driver;
/* What the next backend init uses: &moe_kmod_client_driver unless a test set it. */
extern const struct moe_kmod_client *moe_kmod_io_client;

/*
 * The engine backend: reads of the registered model whose file is the
 * engine's (matched by device and inode) go through the driver straight
 * into the caller's buffer (the staging pool registered as userptr BOs, any
 * other buffer as a userptr BO per FETCH); only a driver before uAPI 2.3 or
 * memory it cannot pin takes a bounce BO and a copy (counted in
 * moe_io_stats.bytes_copied).  Batches complete as CQEs of the backend's
 * own io_uring, or through WAIT on a waiter thread where the command is
 * refused.  Reads outside the registered extents use pread on the engine's
 * own descriptor.  init fails with -ENODEV (no driver) or -ENOENT (file not
 * registered).
 *
 * An engine opened on "moe:NAME" has no descriptor (io->fd is -1): the model
 * is found by name, every read goes through the driver, and a read outside
 * the registered extents fails with -EACCES.
 *
 * Through WAIT, a batch the driver has not finished within KMOD_WAIT_S fails
 * its bounced pieces but keeps its slots of the bounce BO: the DMA may still
 * land there.  The backend asks about it again every 20 ms and frees the
 * slots once WAIT collects it (which also settles the ticket and the file's
 * pending count); meanwhile pieces that find no free slot are read with
 * pread.  A batch with pieces read in place is waited for until it ends.
 */
extern const struct moe_io_ops moe_io_kmod_ops;

#endif
