/* SPDX-License-Identifier: MIT */
/*
 * The streaming I/O engine, internal side.  The public calls (moe_io_open,
 * moe_io_read, ...) are declared in moe/moe.h; this header adds what a
 * backend and the topology helpers need.
 *
 * A caller's read becomes one request split into pieces of at most
 * max_request bytes.  Pieces wait in the engine's pending list until a
 * submit, then go to the backend while fewer than queue_depth are in
 * flight; demand pieces always go before low-priority ones (prefetches,
 * which also keep a quarter of the queue depth free for demand).  A backend
 * ends every piece it accepted exactly once with
 * moe_io_piece_done(), from any thread; the engine retries short reads,
 * turns an early end of file into -ENODATA, and completes the request when
 * its last piece ends.
 */
#ifndef MOE_IO_H
#define MOE_IO_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "moe/moe.h"

struct moe_io_req;

struct moe_io_piece {
	struct moe_io_req *req;
	uint64_t pos;            /* file offset, block-aligned unless buffered */
	uint64_t len;            /* bytes asked for */
	uint64_t need;           /* bytes that must arrive: the rest is past the extent */
	uint8_t *buf;
	int buf_index;           /* registered buffer holding buf, -1 for none */
	struct moe_io_piece *next;
	bool low;                /* prefetch (MOE_IO_READ_LOW): demand pieces go first */
};

/*
 * A backend: adding one (the moe.ko client) means one more table, chosen in
 * moe_io_open(); the engine itself does not change.
 */
struct moe_io_ops {
	const char *name;
	/* Set up io->be.  -EPERM/-ENOSYS mean "refused here": AUTO falls back. */
	int (*init)(struct moe_io *io);
	/* Tear down; called once every accepted piece has ended. */
	void (*fini)(struct moe_io *io);
	/*
	 * Start @n pieces; called with io->lock held, so it must not call
	 * moe_io_piece_done() itself.  Returns how many it accepted (the first
	 * ones) or -errno when it accepted none; the engine fails the rest.
	 */
	int (*issue)(struct moe_io *io, struct moe_io_piece **pieces, unsigned n);
	/* Best-effort cancellation of accepted pieces, io->lock held; may be NULL. */
	void (*cancel)(struct moe_io *io);
	/*
	 * Low-priority pieces the backend accepted and holds in a queue of its
	 * own, in groups that @want says yes to for every piece (io->lock
	 * held; may be NULL).  @take false: calls @found for each, nothing
	 * changes.  @take true: takes the groups back where it still can and
	 * calls @found for each piece taken; those still end, later, through
	 * moe_io_piece_done() with -ECANCELED.
	 */
	void (*cancel_low)(struct moe_io *io, bool take,
			   bool (*want)(const struct moe_io_piece *p, void *arg),
			   void (*found)(struct moe_io_piece *p, void *arg), void *arg);
	/* Register @n regions for fixed-buffer reads as indexes 0..n-1; may be NULL. */
	int (*register_buffers)(struct moe_io *io, void *const *bases, const uint64_t *lens,
				unsigned n);
};

extern const struct moe_io_ops moe_io_uring_ops;
extern const struct moe_io_ops moe_io_pread_ops;
extern const struct moe_io_ops moe_io_kmod_ops;    /* kmod_io.c */

/* The staging pool: one mapping cut into block-aligned allocations. */
struct moe_io_span_rec {
	uint64_t off;
	uint64_t len;
};

struct moe_io_alloc_rec {
	void *p;
	uint64_t len;
	bool pooled;
};

#define MOE_IO_REG_CHUNK (1ull << 30)   /* the kernel's limit on one registered buffer */

struct moe_io_pool {
	uint8_t *base;
	uint64_t size;
	bool ready;              /* created (lazily, at the first moe_io_alloc) */
	bool failed;             /* could not be created: allocations go standalone */
	bool huge;               /* hugetlb pages */
	bool thp;                /* transparent huge pages requested */
	bool locked;
	bool registered;
	struct moe_io_span_rec *free;
	unsigned n_free, cap_free;
	struct moe_io_alloc_rec *allocs;
	unsigned n_allocs, cap_allocs;
};

struct moe_io {
	int fd;
	char *path;
	uint32_t block;
	uint64_t file_size;
	bool direct;
	int node;                /* NUMA node for threads and memory, -1: no binding */
	struct moe_io_params opts;
	const struct moe_io_ops *ops;
	void *be;

	pthread_mutex_t lock;
	pthread_cond_t cond;     /* a request completed, or the in-flight count fell */
	struct moe_io_piece *pend_head, *pend_tail;
	struct moe_io_piece *lpend_head, *lpend_tail;  /* low priority */
	struct moe_io_piece **batch;  /* queue_depth slots for issue() */
	uint32_t inflight;
	uint32_t low_inflight;
	struct moe_io_req *done_head, *done_tail;
	uint64_t undelivered;    /* requests whose callback moe_io_poll/wait still owes */
	uint64_t engine_live;    /* MOE_IO_CB_ENGINE_THREAD requests not yet called back */
	uint64_t engine_done;    /* MOE_IO_CB_ENGINE_THREAD callbacks that have returned */
	uint64_t live;           /* requests not yet freed */
	bool closing;
	uint64_t cancel_gen;     /* moe_io_cancel_low's passes, to mark requests */
	double busy_since;
	struct moe_io_stats stats;
	struct moe_io_pool pool;
	char backend_note[128];
	char direct_note[128];
	char desc[320];
};

/* End a piece the backend accepted; @res is bytes read or -errno.  Any thread, lock not held. */
void moe_io_piece_done(struct moe_io *io, struct moe_io_piece *p, int64_t res);

/*
 * A reaper thread's loop over @ring (io/uring.c), bound to the engine's
 * node: each completion's user_data and result go to @done, until the one
 * whose user_data is MOE_IO_TAG_STOP; user_data 0 is skipped.  @what names
 * the ring in errors ("io_uring", "moe.ko io_uring").
 */
#define MOE_IO_TAG_STOP 1ull
struct io_uring;
void moe_io_reap(struct moe_io *io, struct io_uring *ring, const char *what,
		 void (*done)(struct moe_io *io, uint64_t tag, int64_t res));

/* Staging pool (staging.c); io->lock held by the caller. */
void *moe_io_pool_alloc(struct moe_io *io, uint64_t bytes);
int moe_io_pool_free(struct moe_io *io, void *p);
/* Registered buffer index holding [p, p+len), or -1. */
int moe_io_pool_index(const struct moe_io *io, const void *p, uint64_t len);
void moe_io_pool_destroy(struct moe_io *io);
const char *moe_io_pool_describe(const struct moe_io *io, char *buf, unsigned len);

/* Topology (topo.c).  Binding is best effort: failures are logged at debug level. */
void moe_topo_bind_thread(int node);
void moe_topo_bind_memory(void *p, uint64_t len, int node);
/* NUMA node of the first GPU whose node is known, or -ENOENT. */
int moe_topo_gpu_node(void);
/* 0 when @node is a NUMA node here (or the topology is unknown), else -EINVAL naming them. */
int moe_topo_check_node(int node);
/* Name of the whole disk holding device @dev ("vda" for vda1, the first slave of a dm). */
int moe_topo_dev_disk(dev_t dev, char *name, size_t len);

/*
 * Fault injection for tests: make the next opens behave as if the kernel
 * refused io_uring (EPERM) or O_DIRECT (EINVAL), or had no io_uring
 * commands for moe.ko.
 */
enum {
	MOE_IO_FAULT_URING_EPERM = 1u << 0,
	MOE_IO_FAULT_DIRECT_EINVAL = 1u << 1,
	/* The moe.ko backend completes its batches through WAIT, as without io_uring. */
	MOE_IO_FAULT_KMOD_NO_URING = 1u << 2,
};
extern unsigned moe_io_faults;
/* A piece that covers this file offset ends with -EIO after its read (UINT64_MAX: off). */
extern uint64_t moe_io_fault_eio_pos;
/* The pread backend sleeps this long before each read (0: off): a slow disk for tests. */
extern unsigned moe_io_fault_delay_us;

#endif
