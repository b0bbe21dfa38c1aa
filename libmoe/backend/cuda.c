/* SPDX-License-Identifier: MIT */
/*
 * The CUDA backend's host side: the Driver API loaded at run time
 * (cuda_loader.c), one primary context, a compute and a copy stream (both
 * non-blocking, so neither waits for the legacy default stream), device
 * memory from cuMemAlloc counted against the budget, events, and the
 * operations that are not matrix work as launches of the kernels of
 * cuda/ *.cu (the matrix ones are in cuda_mm.c).  Every driver call is
 * checked; a sticky error (a kernel fault, a lost device) marks the
 * context lost and every later call fails with that error instead of
 * queueing work on a dead context.  See Documentation/cuda.rst.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda_int.h"
#include "moe/moe.h"
#include "util/util.h"

/* device allocations and workspace parts are aligned to this (cuMemAlloc gives 256 or more) */
#define CUDA_ALIGN 256
/* threads of the element-wise kernels' blocks */
#define EW_THREADS 256
/* grid.x limit of the element-wise kernels: each thread strides over the rest */
#define EW_MAX_BLOCKS 65535u
/* attention: threads per (token, head) block; keys per chunk; widest value row */
#define ATTN_THREADS 128
#define ATTN_MAX_DIM 1024
/* split-KV attention: most blocks one (token, head) is split over */
#define ATTN_MAX_SPLIT 32
/* keys per split below which splitting the cache is not worth a second launch */
#define ATTN_SPLIT_KEYS 256
/* the tiled prefill kernel's shared memory: what every launch may take */
#define ATTN_TILE_SHARED (48u << 10)
/* cuda.c's part of the workspace: the split-KV attention's partial rows */
#define CORE_WS_BYTES (4ull << 20)
/* routing runs one thread per token over at most this many experts (cuda/route.cu) */
#define ROUTE_MAX_EXPERTS 1024
#define ROUTE_THREADS 64

struct moe_be_event {
	CUevent ev;
};

/* a kernel handle, looked up once by name */
struct moe_cuda_fn {
	struct moe_cuda_fn *next;
	CUfunction f;
	char name[];
};

struct moe_cuda_alloc {
	CUdeviceptr p;
	uint64_t charged;
};

static bool sticky(CUresult r)
{
	switch (r) {
	case CUDA_ERROR_ILLEGAL_ADDRESS:
	case CUDA_ERROR_LAUNCH_FAILED:
	case CUDA_ERROR_ECC_UNCORRECTABLE:
	case CUDA_ERROR_HARDWARE_STACK_ERROR:
	case CUDA_ERROR_ILLEGAL_INSTRUCTION:
	case CUDA_ERROR_MISALIGNED_ADDRESS:
	case CUDA_ERROR_INVALID_ADDRESS_SPACE:
	case CUDA_ERROR_INVALID_PC:
	case CUDA_ERROR_ASSERT:
	case CUDA_ERROR_UNKNOWN:
	case CUDA_ERROR_LAUNCH_TIMEOUT:
	case CUDA_ERROR_CONTEXT_IS_DESTROYED:
		return true;
	default:
		return false;
	}
}

static const char *err_str(const struct moe_cuda_api *api, CUresult r)
{
	const char *s = NULL;

	if (!api->cuGetErrorString || api->cuGetErrorString(r, &s) != CUDA_SUCCESS || !s)
		s = "unknown error";
	return s;
}

static int errno_of(CUresult r)
{
	switch (r) {
	case CUDA_ERROR_OUT_OF_MEMORY:
		return ENOMEM;
	case CUDA_ERROR_NO_DEVICE:
	case CUDA_ERROR_INVALID_DEVICE:
	case CUDA_ERROR_NO_BINARY_FOR_GPU:
	case CUDA_ERROR_STUB_LIBRARY:
	case CUDA_ERROR_DEVICE_UNAVAILABLE:
	case CUDA_ERROR_SYSTEM_DRIVER_MISMATCH:
	case CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE:
		return ENODEV;
	case CUDA_ERROR_INVALID_VALUE:
		return EINVAL;
	case CUDA_ERROR_NOT_FOUND:
		return ENOENT;
	default:
		return EIO;
	}
}

int moe_cuda_check(struct moe_cuda *c, CUresult r, const char *call)
{
	if (r == CUDA_SUCCESS)
		return 0;
	if (sticky(r) && !c->lost) {
		c->lost = true;
		c->lost_err = r;
	}
	return moe_err(errno_of(r), "cuda: %s failed: %s (%d)%s", call, err_str(&c->api, r),
		       (int)r, sticky(r) ? "; the GPU context is lost, restart the program" : "");
}

/*
 * Every entry point starts here: the context current on this thread, or
 * the sticky error that lost it earlier.
 */
static int enter(struct moe_cuda *c)
{
	if (c->lost)
		return moe_err(EIO, "cuda: the GPU context was lost earlier (%s, %d): no more work "
			       "can run on it, restart the program", err_str(&c->api, c->lost_err),
			       (int)c->lost_err);
	return moe_cuda_check(c, c->api.cuCtxSetCurrent(c->ctx), "cuCtxSetCurrent");
}

int moe_cuda_enter(struct moe_cuda *c)
{
	return enter(c);
}

static int queue_ok(int q)
{
	if (q < 0 || q >= MOE_BE_QUEUES)
		return moe_err(EINVAL, "cuda: queue %d does not exist (0 compute, 1 copy)", q);
	return 0;
}

/* ------------------------------------------------------------ kernels */

static CUfunction fn_find(struct moe_cuda *c, const char *name, int *ret)
{
	struct moe_cuda_fn *f;
	CUfunction h;
	size_t len;

	for (f = c->fns; f; f = f->next)
		if (!strcmp(f->name, name))
			return f->f;
	*ret = moe_cuda_check(c, c->api.cuModuleGetFunction(&h, c->mod, name),
			      "cuModuleGetFunction");
	if (*ret < 0) {
		*ret = moe_err_prefix(*ret, "kernel %s", name);
		return NULL;
	}
	len = strlen(name) + 1;
	f = malloc(sizeof(*f) + len);
	if (!f) {
		*ret = moe_err(ENOMEM, "out of memory");
		return NULL;
	}
	memcpy(f->name, name, len);
	f->f = h;
	f->next = c->fns;
	c->fns = f;
	return h;
}

int moe_cuda_launch(struct moe_cuda *c, const char *name, unsigned gx, unsigned gy, unsigned gz,
		    unsigned bx, unsigned by, unsigned bz, unsigned shared_bytes, void **params)
{
	CUfunction f;
	int ret = 0;

	if (c->lost)
		return enter(c);
	f = fn_find(c, name, &ret);
	if (!f)
		return ret;
	ret = moe_cuda_check(c, c->api.cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared_bytes,
						      c->stream[MOE_BE_COMPUTE], params, NULL),
			     "cuLaunchKernel");
	return ret < 0 ? moe_err_prefix(ret, "kernel %s (grid %ux%ux%u, block %ux%ux%u)", name,
					gx, gy, gz, bx, by, bz) : 0;
}

/* One thread per element over @n, at most EW_MAX_BLOCKS blocks (the kernels stride). */
static int launch_ew(struct moe_cuda *c, const char *name, int64_t n, void **params)
{
	uint64_t blocks = ((uint64_t)n + EW_THREADS - 1) / EW_THREADS;

	if (n <= 0)
		return 0;
	return moe_cuda_launch(c, name, (unsigned)MOE_MIN(blocks, EW_MAX_BLOCKS), 1, 1,
			       EW_THREADS, 1, 1, 0, params);
}

/* ------------------------------------------------------------ memory */

static struct moe_cuda_alloc *alloc_find(struct moe_cuda *c, CUdeviceptr p)
{
	/* the most recent allocations are the likeliest to go first */
	for (uint32_t i = c->n_allocs; i-- > 0;)
		if (c->allocs[i].p == p)
			return &c->allocs[i];
	return NULL;
}

static int cuda_alloc(struct moe_backend *be, uint64_t bytes, moe_dptr *out)
{
	struct moe_cuda *c = moe_cuda_of(be);
	uint64_t sz = MOE_ALIGN_UP(bytes ? bytes : 1, CUDA_ALIGN);
	CUdeviceptr p;
	int ret;

	*out = 0;
	if (sz > c->budget || c->used > c->budget - sz)
		return moe_err(ENOMEM, "device budget: %llu bytes wanted, %llu of %llu in use",
			       (unsigned long long)sz, (unsigned long long)c->used,
			       (unsigned long long)c->budget);
	ret = enter(c);
	if (ret < 0)
		return ret;
	if (c->n_allocs == c->cap_allocs) {
		uint32_t cap = c->cap_allocs ? 2 * c->cap_allocs : 64;
		struct moe_cuda_alloc *a = realloc(c->allocs, sizeof(*a) * cap);

		if (!a)
			return moe_err(ENOMEM, "out of memory");
		c->allocs = a;
		c->cap_allocs = cap;
	}
	ret = moe_cuda_check(c, c->api.cuMemAlloc(&p, sz), "cuMemAlloc");
	if (ret < 0)
		return moe_err_prefix(ret, "%llu bytes of device memory (%llu in use by this "
				      "backend; lower --vram, or free the GPU)",
				      (unsigned long long)sz, (unsigned long long)c->used);
	c->allocs[c->n_allocs++] = (struct moe_cuda_alloc){ p, sz };
	c->used += sz;
	c->peak = MOE_MAX(c->peak, c->used);
	*out = p;
	return 0;
}

static void cuda_free(struct moe_backend *be, moe_dptr d)
{
	struct moe_cuda *c = moe_cuda_of(be);
	struct moe_cuda_alloc *a;

	if (!d)
		return;
	a = alloc_find(c, d);
	if (!a) {
		moe_log(MOE_LOG_ERROR, "cuda: free of %#llx, which this backend did not allocate",
			(unsigned long long)d);
		return;
	}
	c->used -= a->charged;
	*a = c->allocs[--c->n_allocs];
	/* a lost context gives its memory back when it is released */
	if (enter(c) == 0)
		moe_cuda_check(c, c->api.cuMemFree(d), "cuMemFree");
}

static void cuda_mem_info(struct moe_backend *be, struct moe_be_mem *out)
{
	struct moe_cuda *c = moe_cuda_of(be);
	size_t fr = 0, total = 0;

	*out = (struct moe_be_mem){ .budget = c->budget, .used = c->used, .peak = c->peak };
	if (enter(c) == 0 &&
	    moe_cuda_check(c, c->api.cuMemGetInfo(&fr, &total), "cuMemGetInfo") == 0) {
		out->device_total = total;
		out->device_free = fr;
	}
}

static int cuda_host_register(struct moe_backend *be, void *p, uint64_t bytes)
{
	struct moe_cuda *c = moe_cuda_of(be);
	int ret = enter(c);

	if (ret < 0)
		return ret;
	ret = moe_cuda_check(c, c->api.cuMemHostRegister(p, bytes, CU_MEMHOSTREGISTER_PORTABLE),
			     "cuMemHostRegister");
	return ret < 0 ? moe_err_prefix(ret, "pinning %llu bytes of host memory (raise the "
					"locked-memory limit, ulimit -l)",
					(unsigned long long)bytes) : 0;
}

static void cuda_host_unregister(struct moe_backend *be, void *p)
{
	struct moe_cuda *c = moe_cuda_of(be);

	if (p && enter(c) == 0)
		moe_cuda_check(c, c->api.cuMemHostUnregister(p), "cuMemHostUnregister");
}

static int cuda_host_alloc(struct moe_backend *be, uint64_t bytes, void **out)
{
	struct moe_cuda *c = moe_cuda_of(be);
	int ret = enter(c);

	*out = NULL;
	if (ret < 0)
		return ret;
	ret = moe_cuda_check(c, c->api.cuMemAllocHost(out, bytes ? bytes : 1), "cuMemAllocHost");
	return ret < 0 ? moe_err_prefix(ret, "%llu bytes of pinned host memory",
					(unsigned long long)bytes) : 0;
}

static void cuda_host_free(struct moe_backend *be, void *p)
{
	struct moe_cuda *c = moe_cuda_of(be);

	if (p && enter(c) == 0)
		moe_cuda_check(c, c->api.cuMemFreeHost(p), "cuMemFreeHost");
}

/*
 * cuda.c's own part of the workspace comes first, a fixed size (the
 * attention splits fewer ways when it holds fewer partial rows), then
 * cuda_mm.c's.
 */
static uint64_t cuda_workspace_bytes(const struct moe_be_shape *s)
{
	return CORE_WS_BYTES + MOE_ALIGN_UP(moe_cuda_mm_workspace_bytes(s), CUDA_ALIGN);
}

static int cuda_set_workspace(struct moe_backend *be, moe_dptr p, uint64_t bytes)
{
	struct moe_cuda *c = moe_cuda_of(be);
	uint64_t core = MOE_MIN(bytes, CORE_WS_BYTES);

	c->ws = p;
	c->ws_bytes = bytes;
	c->ws_core = p;
	c->ws_core_bytes = core;
	c->ws_mm = p + core;
	c->ws_mm_bytes = bytes - core;
	return 0;
}

/* ------------------------------------------------------------ copies, events */

static int cuda_upload(struct moe_backend *be, int queue, moe_dptr dst, const void *src,
		       uint64_t bytes)
{
	struct moe_cuda *c = moe_cuda_of(be);
	int ret = queue_ok(queue);

	ret = ret ? ret : enter(c);
	if (ret < 0 || !bytes)
		return ret;
	return moe_cuda_check(c, c->api.cuMemcpyHtoDAsync(dst, src, bytes, c->stream[queue]),
			      "cuMemcpyHtoDAsync");
}

static int cuda_download(struct moe_backend *be, int queue, void *dst, moe_dptr src,
			 uint64_t bytes)
{
	struct moe_cuda *c = moe_cuda_of(be);
	int ret = queue_ok(queue);

	ret = ret ? ret : enter(c);
	if (ret < 0 || !bytes)
		return ret;
	return moe_cuda_check(c, c->api.cuMemcpyDtoHAsync(dst, src, bytes, c->stream[queue]),
			      "cuMemcpyDtoHAsync");
}

static int cuda_copy(struct moe_backend *be, int queue, moe_dptr dst, moe_dptr src,
		     uint64_t bytes)
{
	struct moe_cuda *c = moe_cuda_of(be);
	int ret = queue_ok(queue);

	ret = ret ? ret : enter(c);
	if (ret < 0 || !bytes)
		return ret;
	return moe_cuda_check(c, c->api.cuMemcpyDtoDAsync(dst, src, bytes, c->stream[queue]),
			      "cuMemcpyDtoDAsync");
}

static int cuda_event_create(struct moe_backend *be, struct moe_be_event **out)
{
	struct moe_cuda *c = moe_cuda_of(be);
	struct moe_be_event *ev;
	int ret = enter(c);

	*out = NULL;
	if (ret < 0)
		return ret;
	ev = calloc(1, sizeof(*ev));
	if (!ev)
		return moe_err(ENOMEM, "out of memory");
	ret = moe_cuda_check(c, c->api.cuEventCreate(&ev->ev, CU_EVENT_DISABLE_TIMING),
			     "cuEventCreate");
	if (ret < 0) {
		free(ev);
		return ret;
	}
	*out = ev;
	return 0;
}

static void cuda_event_destroy(struct moe_backend *be, struct moe_be_event *ev)
{
	struct moe_cuda *c = moe_cuda_of(be);

	if (!ev)
		return;
	if (enter(c) == 0)
		moe_cuda_check(c, c->api.cuEventDestroy(ev->ev), "cuEventDestroy");
	free(ev);
}

static int cuda_event_record(struct moe_backend *be, int queue, struct moe_be_event *ev)
{
	struct moe_cuda *c = moe_cuda_of(be);
	int ret = queue_ok(queue);

	ret = ret ? ret : enter(c);
	if (ret < 0)
		return ret;
	return moe_cuda_check(c, c->api.cuEventRecord(ev->ev, c->stream[queue]), "cuEventRecord");
}

static int cuda_event_query(struct moe_backend *be, struct moe_be_event *ev)
{
	struct moe_cuda *c = moe_cuda_of(be);
	int ret = enter(c);
	CUresult r;

	if (ret < 0)
		return ret;
	r = c->api.cuEventQuery(ev->ev);
	if (r == CUDA_SUCCESS)
		return 1;
	if (r == CUDA_ERROR_NOT_READY)
		return 0;
	return moe_cuda_check(c, r, "cuEventQuery");
}

static int cuda_event_sync(struct moe_backend *be, struct moe_be_event *ev)
{
	struct moe_cuda *c = moe_cuda_of(be);
	int ret = enter(c);

	if (ret < 0)
		return ret;
	return moe_cuda_check(c, c->api.cuEventSynchronize(ev->ev), "cuEventSynchronize");
}

static int cuda_queue_wait(struct moe_backend *be, int queue, struct moe_be_event *ev)
{
	struct moe_cuda *c = moe_cuda_of(be);
	int ret = queue_ok(queue);

	ret = ret ? ret : enter(c);
	if (ret < 0)
		return ret;
	return moe_cuda_check(c, c->api.cuStreamWaitEvent(c->stream[queue], ev->ev,
							  CU_EVENT_WAIT_DEFAULT),
			      "cuStreamWaitEvent");
}

static int cuda_sync(struct moe_backend *be)
{
	struct moe_cuda *c = moe_cuda_of(be);
	int ret = enter(c);

	for (int q = 0; q < MOE_BE_QUEUES && !ret; q++)
		ret = moe_cuda_check(c, c->api.cuStreamSynchronize(c->stream[q]),
				     "cuStreamSynchronize");
	return ret;
}

/* ------------------------------------------------------------ simple operations */

static int cuda_to_f32(struct moe_backend *be, uint32_t type, moe_dptr src, int64_t n,
		       moe_dptr dst)
{
	struct moe_cuda *c = moe_cuda_of(be);
	long long nn = n;
	void *p[] = { &src, &dst, &nn };
	int ret = enter(c);

	if (ret < 0 || n <= 0)
		return ret;
	switch (type) {
	case MOE_TYPE_F32:
		return moe_cuda_check(c, c->api.cuMemcpyDtoDAsync(dst, src, (size_t)n * 4,
								  c->stream[MOE_BE_COMPUTE]),
				      "cuMemcpyDtoDAsync");
	case MOE_TYPE_F16:
		return launch_ew(c, "moe_k_f16_to_f32", n, p);
	case MOE_TYPE_BF16:
		return launch_ew(c, "moe_k_bf16_to_f32", n, p);
	default:
		return moe_err(EINVAL, "to_f32: type %s is not a float vector type "
			       "(f32, f16, bf16)",
			       moe_type_name(type) ? moe_type_name(type) : "?");
	}
}

static int cuda_rms_norm(struct moe_backend *be, moe_dptr x, moe_dptr y, int64_t n_vec,
			 int64_t n, moe_dptr w, float eps)
{
	struct moe_cuda *c = moe_cuda_of(be);
	long long nn = n;
	long long nv = n_vec;
	void *p[] = { &x, &y, &nv, &nn, &w, &eps };
	int ret = enter(c);

	if (ret < 0 || n_vec <= 0 || n <= 0)
		return ret;
	if (n_vec > UINT32_MAX)
		return moe_err(EINVAL, "rms_norm: %lld vectors", (long long)n_vec);
	return moe_cuda_launch(c, "moe_k_rms_norm", (unsigned)MOE_MIN(n_vec, EW_MAX_BLOCKS),
			       (unsigned)((n_vec + EW_MAX_BLOCKS - 1) / EW_MAX_BLOCKS), 1,
			       EW_THREADS, 1, 1, 0, p);
}

/* The kernel's copy of struct moe_rope: plain scalars (cuda/rope.cu). */
struct rope_k {
	int mode;
	unsigned n_rot;
	float base, freq_scale;
	unsigned long long freq_factors;
	float ext_factor, attn_factor, corr_lo, corr_hi;
};

static int cuda_rope(struct moe_backend *be, moe_dptr x, uint32_t n_tok, uint32_t n_head,
		     uint32_t head_dim, moe_dptr pos, const struct moe_rope *r)
{
	struct moe_cuda *c = moe_cuda_of(be);
	struct rope_k k = { r->mode, r->n_rot, r->base, r->freq_scale, r->freq_factors,
			    r->ext_factor, r->attn_factor, r->corr_lo, r->corr_hi };
	unsigned half = r->n_rot / 2;
	void *p[] = { &x, &n_head, &head_dim, &pos, &k };
	int ret;

	if (r->n_rot > head_dim || r->n_rot / 2 > MOE_ROPE_MAX_PAIRS)
		return moe_err(EINVAL, "rope: %u rotated dims of %u", r->n_rot, head_dim);
	ret = enter(c);
	if (ret < 0 || r->mode == MOE_ROTATE_NONE || !half || !n_tok || !n_head)
		return ret;
	if (n_head > 65535)
		return moe_err(EINVAL, "rope: %u heads", n_head);
	/* one block per (token, head); the angles are per token, shared by its heads */
	return moe_cuda_launch(c, "moe_k_rope", n_tok, n_head, 1, MOE_MIN(half, 256u), 1, 1, 0, p);
}

static int cuda_kv_store(struct moe_backend *be, const struct moe_kv *kv, moe_dptr k, moe_dptr v,
			 moe_dptr pos, moe_dptr seq, uint32_t n_tok)
{
	struct moe_cuda *c = moe_cuda_of(be);
	uint64_t row = moe_kv_row_bytes(kv->type, kv->kv_dim);
	unsigned type = kv->type, n_cells = kv->n_cells, kv_dim = kv->kv_dim;
	moe_dptr kc = kv->k, vc = kv->v;
	void *p[] = { &kc, &vc, &type, &n_cells, &kv_dim, &k, &v, &pos, &seq };
	int ret;

	if (!row)
		return moe_err(EINVAL, "kv_store: KV type %s of %u values is not supported",
			       moe_type_name(kv->type) ? moe_type_name(kv->type) : "?", kv->kv_dim);
	if (!kv->v != !v)
		return moe_err(EINVAL, "kv_store: values given for a cache without V rows, or none "
			       "for one with them");
	ret = enter(c);
	if (ret < 0 || !n_tok)
		return ret;
	return moe_cuda_launch(c, "moe_k_kv_store", n_tok, kv->v ? 2 : 1, 1, EW_THREADS, 1, 1, 0,
			       p);
}

/* ------------------------------------------------------------ attention */

/* The kernel's arguments (cuda/attention.cu's struct moe_k_attn_args). */
struct attn_k {
	unsigned long long q, out, pos, seq, sinks, k, v, part;
	unsigned kv_type, n_cells, kv_dim, row_bytes;
	unsigned n_tok, n_head, n_head_kv, head_dim, head_dim_v;
	unsigned mask, window, n_split;
	float scale, softcap;
	unsigned bq, bk;
};

/*
 * The tile of moe_k_attention_tiled for @hd-wide keys and @hdv-wide values:
 * the largest of (queries, keys) whose shared memory fits the 48 KiB a
 * launch gets without opting in; false when none does (the per-row kernel
 * runs instead).
 */
static bool attn_tile(unsigned hd, unsigned hdv, unsigned *bq, unsigned *bk, unsigned *bytes)
{
	static const unsigned tiles[][2] = { { 16, 32 }, { 16, 16 }, { 8, 16 }, { 4, 16 },
					     { 4, 8 } };

	for (size_t i = 0; i < MOE_ARRAY_SIZE(tiles); i++) {
		uint64_t q = tiles[i][0], k = tiles[i][1];
		uint64_t n = q * hd + k * (hd | 1) + k * hdv + q * k + q * hdv + 6 * q;

		if (n * sizeof(float) <= ATTN_TILE_SHARED) {
			*bq = (unsigned)q;
			*bk = (unsigned)k;
			*bytes = (unsigned)(n * sizeof(float));
			return true;
		}
	}
	return false;
}

static int cuda_attention(struct moe_backend *be, const struct moe_attn_args *a)
{
	struct moe_cuda *c = moe_cuda_of(be);
	uint32_t hdv = a->head_dim_v ? a->head_dim_v : a->head_dim;
	uint64_t row = moe_kv_row_bytes(a->kv.type, a->kv.kv_dim), rows, cells;
	struct attn_k k = {
		.q = a->q, .out = a->out, .pos = a->pos, .seq = a->seq, .sinks = a->sinks,
		.k = a->kv.k, .v = a->kv.v, .kv_type = a->kv.type, .n_cells = a->kv.n_cells,
		.kv_dim = a->kv.kv_dim, .row_bytes = (unsigned)row, .n_tok = a->n_tok,
		.n_head = a->n_head, .n_head_kv = a->n_head_kv, .head_dim = a->head_dim,
		.head_dim_v = hdv, .mask = a->mask, .window = a->window, .n_split = 1,
		.scale = a->scale, .softcap = a->softcap,
	};
	void *p[] = { &k };
	unsigned shared;
	int ret;

	if (!row || !a->n_head_kv || a->n_head % a->n_head_kv ||
	    a->n_head_kv * a->head_dim != a->kv.kv_dim ||
	    (a->kv.type == MOE_TYPE_Q8_0 && (a->head_dim % 32 || hdv % 32)) ||
	    (a->kv.v && hdv != a->head_dim) || (!a->kv.v && hdv > a->head_dim))
		return moe_err(EINVAL, "attention: %u heads (%u KV) of %u (values %u%s) over a %s "
			       "cache of %u", a->n_head, a->n_head_kv, a->head_dim, hdv,
			       a->kv.v ? "" : ", read from the keys",
			       moe_type_name(a->kv.type) ? moe_type_name(a->kv.type) : "?",
			       a->kv.kv_dim);
	if (a->head_dim > ATTN_MAX_DIM || a->n_head > 65535 || !a->kv.n_cells)
		return moe_err(EINVAL, "attention: head dim %u (the CUDA kernel takes up to "
			       "%u), %u heads, %u cells", a->head_dim, ATTN_MAX_DIM, a->n_head,
			       a->kv.n_cells);
	ret = enter(c);
	if (ret < 0 || !a->n_tok)
		return ret;
	/* a prompt: blocks of queries share each tile of keys and values */
	if (a->n_tok > 1 && attn_tile(a->head_dim, hdv, &k.bq, &k.bk, &shared))
		return moe_cuda_launch(c, "moe_k_attention_tiled", a->n_head,
				       (a->n_tok + k.bq - 1) / k.bq, 1, ATTN_THREADS, 1, 1, shared,
				       p);
	/*
	 * Few (token, head) pairs over a long cache, as in decode: split the
	 * keys over several blocks, each writing a partial softmax (max, sum,
	 * weighted values) that a second kernel combines.  The positions are
	 * in device memory, so the split is sized by the cache, not the span.
	 */
	cells = a->kv.n_cells;
	rows = (uint64_t)a->n_tok * a->n_head;
	if (cells >= 2 * ATTN_SPLIT_KEYS && rows < 4ull * MOE_MAX(c->sm_count, 1)) {
		uint64_t cap = c->ws_core_bytes / ((hdv + 2) * sizeof(float)) / rows;
		uint64_t want = MOE_MIN(cells / ATTN_SPLIT_KEYS, ATTN_MAX_SPLIT);

		if (MOE_MIN(cap, want) >= 2) {
			k.n_split = (unsigned)MOE_MIN(cap, want);
			k.part = c->ws_core;
		}
	}
	shared = (a->head_dim + ATTN_THREADS) * sizeof(float);
	ret = moe_cuda_launch(c, "moe_k_attention", a->n_head, a->n_tok, k.n_split, ATTN_THREADS,
			      1, 1, shared, p);
	if (ret < 0 || k.n_split == 1)
		return ret;
	return moe_cuda_launch(c, "moe_k_attention_combine", a->n_head, a->n_tok, 1, ATTN_THREADS,
			       1, 1, 0, p);
}

/* ------------------------------------------------------------ element-wise */

static int cuda_copy_rows(struct moe_backend *be, moe_dptr dst, uint32_t dst_stride, moe_dptr src,
			  uint32_t src_stride, uint32_t n, uint32_t n_rows)
{
	struct moe_cuda *c = moe_cuda_of(be);
	void *p[] = { &dst, &dst_stride, &src, &src_stride, &n, &n_rows };
	int ret = enter(c);

	if (ret < 0 || !n || !n_rows)
		return ret;
	return launch_ew(c, "moe_k_copy_rows", (int64_t)n * n_rows, p);
}

static int cuda_glu(struct moe_backend *be, enum moe_glu act, moe_dptr gate, moe_dptr up,
		    int64_t stride, int64_t n_tok, int64_t n, moe_dptr out)
{
	struct moe_cuda *c = moe_cuda_of(be);
	int a = act;
	long long st = stride, nt = n_tok, nn = n;
	void *p[] = { &a, &gate, &up, &st, &nt, &nn, &out };
	int ret = enter(c);

	if (act != MOE_GLU_SILU && act != MOE_GLU_GELU && act != MOE_GLU_SWIGLU_OAI)
		return moe_err(EINVAL, "glu: unknown activation %d", act);
	if (ret < 0 || n_tok <= 0 || n <= 0)
		return ret;
	return launch_ew(c, "moe_k_glu", n_tok * n, p);
}

static int cuda_route(struct moe_backend *be, const struct moe_route_args *a)
{
	struct moe_cuda *c = moe_cuda_of(be);
	unsigned norm = a->norm;
	void *p[] = { (void *)&a->logits, (void *)&a->sel, (void *)&a->weights, (void *)&a->bias,
		      (void *)&a->n_tok, (void *)&a->n_expert, (void *)&a->k, (void *)&a->stride,
		      (void *)&a->gating, (void *)&a->n_group, (void *)&a->topk_group, &norm,
		      (void *)&a->scale };
	int ret;

	ret = moe_route_args_check(a);
	if (ret < 0)
		return ret;
	if (a->n_expert > ROUTE_MAX_EXPERTS)
		return moe_err(EINVAL, "route: %u experts; the CUDA backend routes at most %u",
			       a->n_expert, ROUTE_MAX_EXPERTS);
	ret = enter(c);
	if (ret < 0 || !a->n_tok)
		return ret;
	return moe_cuda_launch(c, "moe_k_route", (a->n_tok + ROUTE_THREADS - 1) / ROUTE_THREADS, 1,
			       1, ROUTE_THREADS, 1, 1, 0, p);
}

static int cuda_combine(struct moe_backend *be, moe_dptr ys, moe_dptr w, uint32_t n_tok,
			uint32_t k, uint32_t stride, int64_t n, moe_dptr out)
{
	struct moe_cuda *c = moe_cuda_of(be);
	long long nn = n;
	void *p[] = { &ys, &w, &n_tok, &k, &stride, &nn, &out };
	int ret = enter(c);

	/* k 0 leaves out as it was, as on the CPU */
	if (ret < 0 || !n_tok || !k || n <= 0)
		return ret;
	return launch_ew(c, "moe_k_combine", (int64_t)n_tok * n, p);
}

static int cuda_add(struct moe_backend *be, moe_dptr y, moe_dptr x, int64_t n)
{
	struct moe_cuda *c = moe_cuda_of(be);
	long long nn = n;
	void *p[] = { &y, &x, &nn };
	int ret = enter(c);

	return ret < 0 ? ret : launch_ew(c, "moe_k_add", n, p);
}

static int cuda_add_bias(struct moe_backend *be, moe_dptr y, moe_dptr b, int64_t n_tok, int64_t n)
{
	struct moe_cuda *c = moe_cuda_of(be);
	long long nt = n_tok, nn = n;
	void *p[] = { &y, &b, &nt, &nn };
	int ret = enter(c);

	return ret < 0 || n <= 0 ? ret : launch_ew(c, "moe_k_add_bias", n_tok * n, p);
}

static int cuda_scale(struct moe_backend *be, moe_dptr x, float s, int64_t n)
{
	struct moe_cuda *c = moe_cuda_of(be);
	long long nn = n;
	void *p[] = { &x, &s, &nn };
	int ret = enter(c);

	return ret < 0 ? ret : launch_ew(c, "moe_k_scale", n, p);
}

static int cuda_scale_rows(struct moe_backend *be, moe_dptr x, moe_dptr s, int64_t n_tok,
			   int64_t n, bool sigmoid)
{
	struct moe_cuda *c = moe_cuda_of(be);
	long long nt = n_tok, nn = n;
	int sg = sigmoid;
	void *p[] = { &x, &s, &nt, &nn, &sg };
	int ret = enter(c);

	return ret < 0 || n <= 0 ? ret : launch_ew(c, "moe_k_scale_rows", n_tok * n, p);
}

static int cuda_mul(struct moe_backend *be, moe_dptr x, moe_dptr w, int64_t n_vec, int64_t n)
{
	struct moe_cuda *c = moe_cuda_of(be);
	long long nv = n_vec, nn = n;
	void *p[] = { &x, &w, &nv, &nn };
	int ret = enter(c);

	return ret < 0 || n <= 0 ? ret : launch_ew(c, "moe_k_mul", n_vec * n, p);
}

static int cuda_softcap(struct moe_backend *be, moe_dptr x, float cap, int64_t n)
{
	struct moe_cuda *c = moe_cuda_of(be);
	long long nn = n;
	void *p[] = { &x, &cap, &nn };
	int ret = enter(c);

	return ret < 0 ? ret : launch_ew(c, "moe_k_softcap", n, p);
}

/* ------------------------------------------------------------ the table */

static void cuda_destroy(struct moe_backend *be)
{
	struct moe_cuda *c = moe_cuda_of(be);

	/* the registered device range goes before the memory under it */
	moe_cuda_direct_close(be);
	if (c->ctx && c->api.cuCtxSetCurrent(c->ctx) == CUDA_SUCCESS) {
		/* nothing queued may outlive the memory it uses */
		if (!c->lost)
			for (int q = 0; q < MOE_BE_QUEUES; q++)
				if (c->stream[q])
					c->api.cuStreamSynchronize(c->stream[q]);
		for (uint32_t i = 0; i < c->n_allocs; i++)
			c->api.cuMemFree(c->allocs[i].p);
		for (int q = 0; q < MOE_BE_QUEUES; q++)
			if (c->stream[q])
				c->api.cuStreamDestroy(c->stream[q]);
		if (c->mod)
			c->api.cuModuleUnload(c->mod);
	}
	if (c->retained)
		c->api.cuDevicePrimaryCtxRelease(c->dev);
	while (c->fns) {
		struct moe_cuda_fn *f = c->fns;

		c->fns = f->next;
		free(f);
	}
	free(c->allocs);
	moe_cuda_api_unload(&c->api);
	free(c);
	free(be);
}

static const struct moe_backend_ops cuda_ops = {
	.name = "cuda",
	.destroy = cuda_destroy,
	.alloc = cuda_alloc,
	.free = cuda_free,
	.mem_info = cuda_mem_info,
	.host_register = cuda_host_register,
	.host_unregister = cuda_host_unregister,
	.host_alloc = cuda_host_alloc,
	.host_free = cuda_host_free,
	.set_workspace = cuda_set_workspace,
	.direct_open = moe_cuda_direct_open,
	.direct_read = moe_cuda_direct_read,
	.direct_close = moe_cuda_direct_close,
	.upload = cuda_upload,
	.download = cuda_download,
	.copy = cuda_copy,
	.event_create = cuda_event_create,
	.event_destroy = cuda_event_destroy,
	.event_record = cuda_event_record,
	.event_query = cuda_event_query,
	.event_sync = cuda_event_sync,
	.queue_wait = cuda_queue_wait,
	.sync = cuda_sync,
	.get_rows = moe_cuda_get_rows,
	.to_f32 = cuda_to_f32,
	.matmul = moe_cuda_matmul,
	.rms_norm = cuda_rms_norm,
	.rope = cuda_rope,
	.kv_store = cuda_kv_store,
	.attention = cuda_attention,
	.matmul_heads = moe_cuda_matmul_heads,
	.copy_rows = cuda_copy_rows,
	.glu = cuda_glu,
	.ffn = moe_cuda_ffn,
	.route = cuda_route,
	.combine = cuda_combine,
	.add = cuda_add,
	.add_bias = cuda_add_bias,
	.scale = cuda_scale,
	.scale_rows = cuda_scale_rows,
	.mul = cuda_mul,
	.softcap = cuda_softcap,
};

/* The driver library: MOE_CUDA_LIBRARY names another than libcuda.so.1 (a test's fake). */
static int load_api(struct moe_cuda_api *api)
{
	const char *path = getenv("MOE_CUDA_LIBRARY");

	return moe_cuda_api_load(api, path && *path ? path : NULL);
}

static int cuda_probe(void)
{
	struct moe_cuda_api api;
	int n = 0, ret = load_api(&api);
	CUresult r;

	if (ret < 0)
		return ret;
	r = api.cuInit(0);
	if (r == CUDA_SUCCESS)
		r = api.cuDeviceGetCount(&n);
	if (r != CUDA_SUCCESS || n <= 0)
		ret = moe_err(ENODEV, "no CUDA device: %s",
			      r != CUDA_SUCCESS ? err_str(&api, r) : "the driver sees no GPU");
	moe_cuda_api_unload(&api);
	return ret;
}

int moe_cuda_devices(struct moe_cuda_device *out, uint32_t max)
{
	struct moe_cuda_api api;
	int n = 0, ret = load_api(&api);
	CUresult r;

	if (!out && max)
		return moe_err(EINVAL, "moe_cuda_devices: NULL argument");
	if (ret < 0)
		return ret;
	r = api.cuInit(0);
	if (r == CUDA_SUCCESS)
		r = api.cuDeviceGetCount(&n);
	if (r != CUDA_SUCCESS || n <= 0) {
		ret = moe_err(ENODEV, "no CUDA device: %s",
			      r != CUDA_SUCCESS ? err_str(&api, r) : "the driver sees no GPU");
		moe_cuda_api_unload(&api);
		return ret;
	}
	for (int i = 0; i < n && (uint32_t)i < max; i++) {
		struct moe_cuda_device *d = &out[i];
		size_t mem = 0;
		CUdevice dev;

		memset(d, 0, sizeof(*d));
		api.cuDriverGetVersion(&d->driver_version);
		if (api.cuDeviceGet(&dev, i) != CUDA_SUCCESS)
			continue;
		/* a field the driver does not give stays empty or 0: the others still help */
		if (api.cuDeviceGetName(d->name, (int)sizeof(d->name), dev) != CUDA_SUCCESS)
			d->name[0] = 0;
		d->name[sizeof(d->name) - 1] = 0;
		if (api.cuDeviceGetPCIBusId(d->pci, (int)sizeof(d->pci), dev) != CUDA_SUCCESS)
			d->pci[0] = 0;
		d->pci[sizeof(d->pci) - 1] = 0;
		for (char *c = d->pci; *c; c++)
			if (*c >= 'A' && *c <= 'F')
				*c = (char)(*c - 'A' + 'a');
		if (api.cuDeviceTotalMem(&mem, dev) == CUDA_SUCCESS)
			d->total_mem = mem;
		api.cuDeviceGetAttribute(&d->cc_major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
					 dev);
		api.cuDeviceGetAttribute(&d->cc_minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
					 dev);
		api.cuDeviceGetAttribute(&d->sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev);
	}
	moe_cuda_api_unload(&api);
	return n;
}

int moe_backend_cuda_create_api(const struct moe_cuda_api *api,
				const struct moe_backend_params *p, struct moe_backend **out)
{
	struct moe_backend *be = calloc(1, sizeof(*be));
	struct moe_cuda *c = calloc(1, sizeof(*c));
	const void *image;
	size_t image_size;
	int n = 0, ret = 0;

	*out = NULL;
	if (!be || !c) {
		free(be);
		free(c);
		return moe_err(ENOMEM, "out of memory creating the CUDA backend");
	}
	be->ops = &cuda_ops;
	be->desc = &moe_backend_cuda_desc;
	be->priv = c;
	c->api = *api;
	c->budget = p->budget ? p->budget : UINT64_MAX;
	ret = moe_cuda_check(c, c->api.cuInit(0), "cuInit");
	if (!ret) {
		ret = moe_cuda_check(c, c->api.cuDeviceGetCount(&n), "cuDeviceGetCount");
		if (!ret && p->device >= n)
			ret = moe_err(ENODEV, "cuda: device %d asked for, the driver sees %d",
				      p->device, n);
	}
	if (!ret)
		ret = moe_cuda_check(c, c->api.cuDeviceGet(&c->dev, p->device), "cuDeviceGet");
	if (!ret) {
		ret = moe_cuda_check(c, c->api.cuDevicePrimaryCtxRetain(&c->ctx, c->dev),
				     "cuDevicePrimaryCtxRetain");
		c->retained = !ret;
	}
	if (!ret)
		ret = moe_cuda_check(c, c->api.cuCtxSetCurrent(c->ctx), "cuCtxSetCurrent");
	if (!ret)
		ret = moe_cuda_check(c, c->api.cuDeviceGetAttribute(&c->cc_major,
				     CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, c->dev),
				     "cuDeviceGetAttribute");
	if (!ret)
		ret = moe_cuda_check(c, c->api.cuDeviceGetAttribute(&c->cc_minor,
				     CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, c->dev),
				     "cuDeviceGetAttribute");
	if (!ret)
		ret = moe_cuda_check(c, c->api.cuDeviceGetAttribute(&c->sm_count,
				     CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, c->dev),
				     "cuDeviceGetAttribute");
	if (!ret && c->cc_major < 8)
		ret = moe_err(ENODEV, "cuda: the GPU has compute capability %d.%d; the kernels "
			      "need 8.0 or newer (Ampere)", c->cc_major, c->cc_minor);
	for (int q = 0; q < MOE_BE_QUEUES && !ret; q++)
		ret = moe_cuda_check(c, c->api.cuStreamCreate(&c->stream[q],
							       CU_STREAM_NON_BLOCKING),
				     "cuStreamCreate");
	if (!ret) {
		image = moe_cuda_fatbin(&image_size);
		ret = image ? moe_cuda_check(c, c->api.cuModuleLoadData(&c->mod, image),
					     "cuModuleLoadData") : -ENOENT;
	}
	if (ret < 0) {
		ret = moe_err_prefix(ret, "creating the CUDA backend");
		c->api.lib = NULL;      /* the caller's table: not ours to close */
		cuda_destroy(be);
		return ret;
	}
	*out = be;
	return 0;
}

static int cuda_create(const struct moe_backend_params *p, struct moe_backend **out)
{
	struct moe_cuda_api api;
	int ret = load_api(&api);

	*out = NULL;
	if (ret < 0)
		return ret;
	ret = moe_backend_cuda_create_api(&api, p, out);
	if (ret < 0) {
		moe_cuda_api_unload(&api);
		return ret;
	}
	/* the backend closes the library it was given when it goes */
	moe_cuda_of(*out)->api.lib = api.lib;
	return 0;
}

const struct moe_backend_desc moe_backend_cuda_desc = {
	.name = "cuda",
	.align = CUDA_ALIGN,
	.workspace_bytes = cuda_workspace_bytes,
	.probe = cuda_probe,
	.create = cuda_create,
};
