/* SPDX-License-Identifier: MIT */
/*
 * The CPU backend: "device" memory is host memory counted against a budget,
 * a copy is a memcpy, and every operation runs to completion on the thread
 * pool before it returns, so every event is complete as soon as it is
 * recorded.  It is the reference the other backends are checked against:
 * every kernel keeps a fixed order of floating-point operations whatever
 * the thread count.
 *
 * With MOE_BE_F_GUARD, device memory lives in one mapping of its own that
 * is PROT_NONE except while a backend call runs, so host code that
 * dereferences a device address faults at once.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backend/backend.h"
#include "quant/quant.h"
#include "util/threadpool.h"
#include "util/util.h"

#define CPU_ALIGN 64
/* address space reserved for a guarded backend without a budget */
#define GUARD_RESERVE (64ull << 30)
#define GUARD_PAGE 4096ull
/* below this much work (multiply-adds) an operation stays on the calling thread */
#define SERIAL_WORK (1u << 18)

#define PTR(d) ((void *)(uintptr_t)(d))

struct moe_be_event {
	int err;
};

/* one allocation of the guarded arena, sorted by offset */
struct arena_blk {
	uint64_t off, len;
};

struct cpu {
	struct moe_threadpool *pool;
	uint64_t budget, used, peak;

	/* guard mode */
	bool guard;
	uint8_t *base;
	uint64_t reserve;
	uint64_t hiwater;           /* end of the highest allocation, page-aligned */
	struct arena_blk *blks;
	uint32_t n_blks, cap_blks;
	pthread_mutex_t guard_lock;
	uint32_t depth;

	/* workspace */
	uint8_t *ws;
	uint64_t ws_bytes;
	/* host-side job tables of the fused operations, grown on demand */
	void *items;
	size_t items_cap;
};

static struct cpu *cpu_of(struct moe_backend *be)
{
	return be->priv;
}

static void run(struct cpu *c, void (*fn)(void *, int, int), void *arg, uint64_t work)
{
	if (c->pool && work >= SERIAL_WORK)
		moe_threadpool_run(c->pool, fn, arg);
	else
		fn(arg, 0, 1);
}

/* ------------------------------------------------------------ guard */

static void guard_open(struct cpu *c)
{
	if (!c->guard)
		return;
	pthread_mutex_lock(&c->guard_lock);
	if (!c->depth++ && c->hiwater)
		mprotect(c->base, c->hiwater, PROT_READ | PROT_WRITE);
	pthread_mutex_unlock(&c->guard_lock);
}

static void guard_close(struct cpu *c)
{
	if (!c->guard)
		return;
	pthread_mutex_lock(&c->guard_lock);
	if (!--c->depth && c->hiwater)
		mprotect(c->base, c->hiwater, PROT_NONE);
	pthread_mutex_unlock(&c->guard_lock);
}

/* Every backend entry point that touches device memory runs between these. */
#define GUARDED(c, expr) ({ __typeof__(expr) r_; guard_open(c); r_ = (expr); guard_close(c); r_; })

static int arena_alloc(struct cpu *c, uint64_t sz, uint64_t *off)
{
	uint64_t at = 0;
	uint32_t i;

	/* first fit between the allocations, which stay sorted by offset */
	for (i = 0; i < c->n_blks; i++) {
		if (c->blks[i].off - at >= sz)
			break;
		at = MOE_ALIGN_UP(c->blks[i].off + c->blks[i].len, GUARD_PAGE);
	}
	if (at + sz > c->reserve)
		return moe_err(ENOMEM, "guarded device arena: %llu bytes do not fit the %llu "
			       "reserved", (unsigned long long)sz, (unsigned long long)c->reserve);
	if (c->n_blks == c->cap_blks) {
		uint32_t cap = c->cap_blks ? 2 * c->cap_blks : 64;
		struct arena_blk *b = realloc(c->blks, sizeof(*b) * cap);

		if (!b)
			return moe_err(ENOMEM, "out of memory");
		c->blks = b;
		c->cap_blks = cap;
	}
	memmove(&c->blks[i + 1], &c->blks[i], sizeof(*c->blks) * (c->n_blks - i));
	c->blks[i] = (struct arena_blk){ at, sz };
	c->n_blks++;
	*off = at;
	if (at + sz > c->hiwater) {
		uint64_t hw = MOE_ALIGN_UP(at + sz, GUARD_PAGE);

		/* newly used pages join the protection state of the rest */
		if (c->depth)
			mprotect(c->base + c->hiwater, hw - c->hiwater, PROT_READ | PROT_WRITE);
		c->hiwater = hw;
	}
	return 0;
}

static uint64_t arena_free(struct cpu *c, uint64_t off)
{
	for (uint32_t i = 0; i < c->n_blks; i++) {
		if (c->blks[i].off != off)
			continue;
		uint64_t len = c->blks[i].len;

		/* give the pages back so a long run does not keep its peak resident */
		if (len >= 16 * GUARD_PAGE)
			madvise(c->base + off, MOE_ALIGN_UP(len, GUARD_PAGE), MADV_DONTNEED);
		memmove(&c->blks[i], &c->blks[i + 1], sizeof(*c->blks) * (c->n_blks - i - 1));
		c->n_blks--;
		return len;
	}
	return 0;
}

/* ------------------------------------------------------------ memory */

/* Ordinary allocations keep their size in a header before the block. */
static int cpu_alloc(struct moe_backend *be, uint64_t bytes, moe_dptr *out)
{
	struct cpu *c = cpu_of(be);
	uint64_t sz = MOE_ALIGN_UP(bytes ? bytes : 1, CPU_ALIGN);
	uint8_t *p;

	*out = 0;
	if (c->used + sz > c->budget)
		return moe_err(ENOMEM, "device budget: %llu bytes wanted, %llu of %llu in use",
			       (unsigned long long)sz, (unsigned long long)c->used,
			       (unsigned long long)c->budget);
	if (c->guard) {
		uint64_t off = 0;
		int ret;

		pthread_mutex_lock(&c->guard_lock);
		ret = arena_alloc(c, sz, &off);
		pthread_mutex_unlock(&c->guard_lock);
		if (ret)
			return ret;
		p = c->base + off;
	} else {
		p = aligned_alloc(CPU_ALIGN, sz + CPU_ALIGN);
		if (!p)
			return moe_err(ENOMEM, "out of host memory allocating %llu bytes",
				       (unsigned long long)sz);
		*(uint64_t *)p = sz;
		p += CPU_ALIGN;
	}
	c->used += sz;
	c->peak = MOE_MAX(c->peak, c->used);
	*out = (moe_dptr)(uintptr_t)p;
	return 0;
}

static void cpu_free(struct moe_backend *be, moe_dptr d)
{
	struct cpu *c = cpu_of(be);
	uint8_t *p = PTR(d);

	if (!d)
		return;
	if (c->guard) {
		pthread_mutex_lock(&c->guard_lock);
		c->used -= arena_free(c, (uint64_t)(p - c->base));
		pthread_mutex_unlock(&c->guard_lock);
		return;
	}
	p -= CPU_ALIGN;
	c->used -= *(uint64_t *)p;
	free(p);
}

static void cpu_mem_info(struct moe_backend *be, struct moe_be_mem *out)
{
	struct cpu *c = cpu_of(be);

	*out = (struct moe_be_mem){ .budget = c->budget, .used = c->used, .peak = c->peak };
}

static int cpu_host_register(struct moe_backend *be, void *p, uint64_t bytes)
{
	(void)be;
	(void)p;
	(void)bytes;
	return 0;
}

static void cpu_host_unregister(struct moe_backend *be, void *p)
{
	(void)be;
	(void)p;
}

static int cpu_host_alloc(struct moe_backend *be, uint64_t bytes, void **out)
{
	(void)be;
	*out = aligned_alloc(CPU_ALIGN, MOE_ALIGN_UP(bytes ? bytes : 1, CPU_ALIGN));
	return *out ? 0 : moe_err(ENOMEM, "out of host memory allocating %llu bytes",
				  (unsigned long long)bytes);
}

static void cpu_host_free(struct moe_backend *be, void *p)
{
	(void)be;
	free(p);
}

static int cpu_set_workspace(struct moe_backend *be, moe_dptr p, uint64_t bytes)
{
	struct cpu *c = cpu_of(be);

	c->ws = PTR(p);
	c->ws_bytes = bytes;
	return 0;
}

/* Carve workspace pieces in order; -ENOSPC when the plan sized it too small. */
struct ws_cursor {
	uint8_t *p, *end;
};

static void *ws_take(struct ws_cursor *w, uint64_t bytes)
{
	uint8_t *p = w->p;

	bytes = MOE_ALIGN_UP(bytes, CPU_ALIGN);
	if (!p || (uint64_t)(w->end - p) < bytes)
		return NULL;
	w->p += bytes;
	return p;
}

static struct ws_cursor ws_begin(struct cpu *c)
{
	return (struct ws_cursor){ c->ws, c->ws + c->ws_bytes };
}

static int ws_short(const char *op, uint64_t have)
{
	return moe_err(ENOSPC, "cpu backend: %s needs more workspace than the %llu bytes planned",
		       op, (unsigned long long)have);
}

/* Host-side job table of at least @bytes, kept between calls. */
static void *items(struct cpu *c, size_t bytes)
{
	if (bytes > c->items_cap) {
		size_t cap = MOE_MAX(bytes, 2 * c->items_cap);
		void *p = realloc(c->items, cap);

		if (!p)
			return NULL;
		c->items = p;
		c->items_cap = cap;
	}
	return c->items;
}

/* ------------------------------------------------------------ copies and events */

static int cpu_upload(struct moe_backend *be, int queue, moe_dptr dst, const void *src,
		      uint64_t bytes)
{
	struct cpu *c = cpu_of(be);

	(void)queue;
	guard_open(c);
	memcpy(PTR(dst), src, bytes);
	guard_close(c);
	return 0;
}

static int cpu_download(struct moe_backend *be, int queue, void *dst, moe_dptr src,
			uint64_t bytes)
{
	struct cpu *c = cpu_of(be);

	(void)queue;
	guard_open(c);
	memcpy(dst, PTR(src), bytes);
	guard_close(c);
	return 0;
}

static int cpu_copy(struct moe_backend *be, int queue, moe_dptr dst, moe_dptr src,
		    uint64_t bytes)
{
	struct cpu *c = cpu_of(be);

	(void)queue;
	guard_open(c);
	memmove(PTR(dst), PTR(src), bytes);
	guard_close(c);
	return 0;
}

static int cpu_event_create(struct moe_backend *be, struct moe_be_event **out)
{
	(void)be;
	*out = calloc(1, sizeof(**out));
	return *out ? 0 : moe_err(ENOMEM, "out of memory");
}

static void cpu_event_destroy(struct moe_backend *be, struct moe_be_event *ev)
{
	(void)be;
	free(ev);
}

static int cpu_event_record(struct moe_backend *be, int queue, struct moe_be_event *ev)
{
	(void)be;
	(void)queue;
	ev->err = 0;
	return 0;
}

static int cpu_event_query(struct moe_backend *be, struct moe_be_event *ev)
{
	(void)be;
	return ev->err ? ev->err : 1;
}

static int cpu_event_sync(struct moe_backend *be, struct moe_be_event *ev)
{
	(void)be;
	return ev->err;
}

static int cpu_queue_wait(struct moe_backend *be, int queue, struct moe_be_event *ev)
{
	(void)be;
	(void)queue;
	(void)ev;
	return 0;
}

static int cpu_sync(struct moe_backend *be)
{
	(void)be;
	return 0;
}

/* ------------------------------------------------------------ simple operations */

static int get_rows(struct cpu *c, const struct moe_be_mat *w, moe_dptr ids, uint32_t n,
		    moe_dptr dst)
{
	const int32_t *id = PTR(ids);
	float *d = PTR(dst);

	(void)c;
	for (uint32_t i = 0; i < n; i++) {
		int ret;

		if (id[i] < 0 || id[i] >= w->rows)
			return moe_err(EINVAL, "get_rows: row %d of a %lld-row matrix", id[i],
				       (long long)w->rows);
		ret = moe_dequant_row(w->type, PTR(w->p), w->cols, id[i], d + (size_t)i * w->cols);
		if (ret < 0)
			return ret;
	}
	return 0;
}

static int cpu_get_rows(struct moe_backend *be, const struct moe_be_mat *w, moe_dptr ids,
			uint32_t n, moe_dptr dst)
{
	return GUARDED(cpu_of(be), get_rows(cpu_of(be), w, ids, n, dst));
}

static int cpu_to_f32(struct moe_backend *be, uint32_t type, moe_dptr src, int64_t n,
		      moe_dptr dst)
{
	return GUARDED(cpu_of(be), moe_dequantize(type, PTR(src), PTR(dst), n));
}

static void rms_norm(moe_dptr xd, moe_dptr yd, int64_t n_vec, int64_t n, moe_dptr wd, float eps)
{
	const float *w = PTR(wd);

	for (int64_t v = 0; v < n_vec; v++) {
		const float *xv = (const float *)PTR(xd) + v * n;
		float *yv = (float *)PTR(yd) + v * n;
		double ss = 0;
		float s;

		for (int64_t i = 0; i < n; i++)
			ss += (double)xv[i] * xv[i];
		s = 1.0f / sqrtf((float)(ss / n) + eps);
		if (w)
			for (int64_t i = 0; i < n; i++)
				yv[i] = xv[i] * s * w[i];
		else
			for (int64_t i = 0; i < n; i++)
				yv[i] = xv[i] * s;
	}
}

static int cpu_rms_norm(struct moe_backend *be, moe_dptr x, moe_dptr y, int64_t n_vec,
			int64_t n, moe_dptr w, float eps)
{
	struct cpu *c = cpu_of(be);

	guard_open(c);
	rms_norm(x, y, n_vec, n, w, eps);
	guard_close(c);
	return 0;
}

void moe_rope_yarn_corr(uint32_t n_rot, uint32_t n_ctx_orig, float base, float beta_fast,
			float beta_slow, float *lo, float *hi)
{
	double d = n_rot, lb = 2.0 * log(base);
	double a = floor(d * log(n_ctx_orig / (beta_fast * 2.0 * M_PI)) / lb);
	double b = ceil(d * log(n_ctx_orig / (beta_slow * 2.0 * M_PI)) / lb);

	*lo = (float)MOE_MAX(0.0, a);
	*hi = (float)MOE_MIN(d - 1, b);
}

static void rope_angles(const struct moe_rope *r, int32_t pos, float *cs, float *sn)
{
	uint32_t half = MOE_MIN(r->n_rot / 2, MOE_ROPE_MAX_PAIRS);
	const float *ff = PTR(r->freq_factors);
	float mscale = r->attn_factor;

	if (r->ext_factor != 0.0f)
		mscale *= 1.0f + 0.1f * logf(1.0f / r->freq_scale);
	for (uint32_t i = 0; i < half; i++) {
		double ext = pos * pow(r->base, -2.0 * i / r->n_rot);
		double theta;

		if (ff)
			ext /= ff[i];
		theta = ext * r->freq_scale;
		if (r->ext_factor != 0.0f) {
			double y = (i - r->corr_lo) / MOE_MAX(0.001, r->corr_hi - r->corr_lo);
			double mix = (1.0 - MOE_MIN(1.0, MOE_MAX(0.0, y))) * r->ext_factor;

			theta = theta * (1.0 - mix) + ext * mix;
		}
		cs[i] = (float)cos(theta) * mscale;
		sn[i] = (float)sin(theta) * mscale;
	}
}

static void rope(moe_dptr xd, uint32_t n_tok, uint32_t n_head, uint32_t head_dim,
		 moe_dptr posd, const struct moe_rope *r)
{
	uint32_t half = MOE_MIN(r->n_rot / 2, MOE_ROPE_MAX_PAIRS);
	float cs[MOE_ROPE_MAX_PAIRS], sn[MOE_ROPE_MAX_PAIRS];
	const int32_t *pos = PTR(posd);

	if (r->mode == MOE_ROTATE_NONE || !half)
		return;
	for (uint32_t t = 0; t < n_tok; t++) {
		rope_angles(r, pos[t], cs, sn);
		for (uint32_t h = 0; h < n_head; h++) {
			float *v = (float *)PTR(xd) + ((size_t)t * n_head + h) * head_dim;

			for (uint32_t i = 0; i < half; i++) {
				uint32_t a = r->mode == MOE_ROTATE_NEOX ? i : 2 * i;
				uint32_t b = r->mode == MOE_ROTATE_NEOX ? i + half : 2 * i + 1;
				float x0 = v[a], x1 = v[b];

				v[a] = x0 * cs[i] - x1 * sn[i];
				v[b] = x0 * sn[i] + x1 * cs[i];
			}
		}
	}
}

static int cpu_rope(struct moe_backend *be, moe_dptr x, uint32_t n_tok, uint32_t n_head,
		    uint32_t head_dim, moe_dptr pos, const struct moe_rope *r)
{
	struct cpu *c = cpu_of(be);

	if (r->n_rot > head_dim || r->n_rot / 2 > MOE_ROPE_MAX_PAIRS)
		return moe_err(EINVAL, "rope: %u rotated dims of %u", r->n_rot, head_dim);
	guard_open(c);
	rope(x, n_tok, n_head, head_dim, pos, r);
	guard_close(c);
	return 0;
}

uint64_t moe_kv_row_bytes(uint32_t type, uint32_t kv_dim)
{
	int64_t b;

	if (type != MOE_TYPE_F32 && type != MOE_TYPE_F16 && type != MOE_TYPE_Q8_0)
		return 0;
	b = moe_type_row_bytes(type, kv_dim);
	return b > 0 ? (uint64_t)b : 0;
}

static uint64_t kv_cell(const struct moe_kv *kv, const int32_t *seq, uint32_t t, int64_t p)
{
	return (uint64_t)(seq ? seq[t] : 0) * kv->n_cells + (uint64_t)p % kv->n_cells;
}

static int kv_store(const struct moe_kv *kv, moe_dptr kd, moe_dptr vd, moe_dptr posd,
		    moe_dptr seqd, uint32_t n_tok)
{
	uint64_t row = moe_kv_row_bytes(kv->type, kv->kv_dim);
	const int32_t *pos = PTR(posd), *seq = PTR(seqd);

	if (!row)
		return moe_err(EINVAL, "kv_store: KV type %s of %u values is not supported",
			       moe_type_name(kv->type) ? moe_type_name(kv->type) : "?", kv->kv_dim);
	if (!kv->v != !vd)
		return moe_err(EINVAL, "kv_store: values given for a cache without V rows, or none "
			       "for one with them");
	for (uint32_t t = 0; t < n_tok; t++) {
		uint64_t cell = kv_cell(kv, seq, t, pos[t]);
		const float *k = (const float *)PTR(kd) + (size_t)t * kv->kv_dim;
		const float *v = (const float *)PTR(vd) + (size_t)t * kv->kv_dim;
		uint8_t *kc = (uint8_t *)PTR(kv->k) + cell * row;
		uint8_t *vc = kv->v ? (uint8_t *)PTR(kv->v) + cell * row : NULL;

		if (kv->type == MOE_TYPE_F32) {
			memcpy(kc, k, row);
			if (vc)
				memcpy(vc, v, row);
		} else {
			moe_type_traits(kv->type)->from_float(k, kc, kv->kv_dim);
			if (vc)
				moe_type_traits(kv->type)->from_float(v, vc, kv->kv_dim);
		}
	}
	return 0;
}

static int cpu_kv_store(struct moe_backend *be, const struct moe_kv *kv, moe_dptr k, moe_dptr v,
			moe_dptr pos, moe_dptr seq, uint32_t n_tok)
{
	return GUARDED(cpu_of(be), kv_store(kv, k, v, pos, seq, n_tok));
}

/* ------------------------------------------------------------ attention */

struct attn_job {
	const struct moe_attn_args *a;
	uint64_t row;               /* bytes of one cache row */
	const struct moe_type_traits *kt;
	const struct moe_type_traits *f32;
};

/* The slice @off..@off+hd of a cache row as F32 (a pointer into it for F32). */
static const float *kv_slice(const struct attn_job *j, const uint8_t *row, uint32_t off,
			     uint32_t hd, float *tmp)
{
	if (j->a->kv.type == MOE_TYPE_F32)
		return (const float *)row + off;
	if (j->a->kv.type == MOE_TYPE_F16)
		j->kt->to_float(row + (size_t)off * 2, tmp, hd);
	else
		j->kt->to_float(row + (size_t)off / 32 * 34, tmp, hd);
	return tmp;
}

/* Four floats at a time in plain C vectors (whatever the ISA, the same sums). */
typedef float v4f __attribute__((vector_size(16)));

static inline v4f v4_load(const float *p)
{
	v4f v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static inline void v4_store(float *p, v4f v)
{
	memcpy(p, &v, sizeof(v));
}

/* o += e * v over n values */
static void add_scaled(float *o, float e, const float *v, uint32_t n)
{
	uint32_t i = 0;

	for (; i + 8 <= n; i += 8) {
		v4_store(o + i, v4_load(o + i) + v4_load(v + i) * e);
		v4_store(o + i + 4, v4_load(o + i + 4) + v4_load(v + i + 4) * e);
	}
	for (; i < n; i++)
		o[i] += v[i] * e;
}

/* Keys scored in blocks, so the running maximum moves once per block. */
#define ATTN_BLOCK 32

/*
 * One query head, with a running maximum (online softmax) so that no score
 * buffer is needed whatever the context length: a block of positions is
 * scored (the dispatched SIMD dot product), the maximum and the sum rescaled
 * once for the block, then its values added in.
 */
static void attn_one(const struct attn_job *j, uint32_t t, uint32_t h, float *ktmp, float *vtmp)
{
	const struct moe_attn_args *a = j->a;
	const int32_t *posv = PTR(a->pos), *seq = PTR(a->seq);
	const float *sinks = PTR(a->sinks);
	uint32_t hd = a->head_dim, kvh = h / (a->n_head / a->n_head_kv);
	uint32_t hdv = a->head_dim_v ? a->head_dim_v : hd;
	const float *q = (const float *)PTR(a->q) + ((size_t)t * a->n_head + h) * hd;
	float *o = (float *)PTR(a->out) + ((size_t)t * a->n_head + h) * hdv;
	int64_t p = posv[t], lo = 0;
	float mx = -INFINITY, sum = 0, sc[ATTN_BLOCK];

	if (a->mask == MOE_MASK_SLIDING && a->window)
		lo = MOE_MAX(0, p - (int64_t)a->window + 1);
	else if (a->mask == MOE_MASK_CHUNKED && a->window)
		lo = p / a->window * a->window;
	memset(o, 0, sizeof(float) * hdv);
	for (int64_t j0 = lo; j0 <= p; j0 += ATTN_BLOCK) {
		uint32_t nb = (uint32_t)MOE_MIN((int64_t)ATTN_BLOCK, p + 1 - j0);
		float bmx = -INFINITY;

		for (uint32_t b = 0; b < nb; b++) {
			uint64_t cell = kv_cell(&a->kv, seq, t, j0 + b);
			const uint8_t *krow = (const uint8_t *)PTR(a->kv.k) + cell * j->row;
			float d;

			if (a->kv.type == MOE_TYPE_F16)
				j->kt->vec_dot(hd, &d, krow + (size_t)kvh * hd * 2, q);
			else
				j->f32->vec_dot(hd, &d, kv_slice(j, krow, kvh * hd, hd, ktmp), q);
			d *= a->scale;
			if (a->softcap > 0)
				d = a->softcap * tanhf(d / a->softcap);
			sc[b] = d;
			bmx = MOE_MAX(bmx, d);
		}
		if (bmx > mx) {
			float r = expf(mx - bmx);

			for (uint32_t i = 0; i < hdv; i++)
				o[i] *= r;
			sum *= r;
			mx = bmx;
		}
		for (uint32_t b = 0; b < nb; b++) {
			uint64_t cell = kv_cell(&a->kv, seq, t, j0 + b);
			const float *v;
			float e = expf(sc[b] - mx);

			if (a->kv.v)
				v = kv_slice(j, (const uint8_t *)PTR(a->kv.v) + cell * j->row, kvh * hdv,
					     hdv, vtmp);
			else
				v = kv_slice(j, (const uint8_t *)PTR(a->kv.k) + cell * j->row, kvh * hd,
					     hdv, vtmp);
			sum += e;
			add_scaled(o, e, v, hdv);
		}
	}
	if (sinks) {
		float s = sinks[h];

		if (s > mx) {
			float r = expf(mx - s);

			for (uint32_t i = 0; i < hdv; i++)
				o[i] *= r;
			sum *= r;
			mx = s;
		}
		sum += expf(s - mx);
	}
	if (sum > 0) {
		float inv = 1.0f / sum;

		for (uint32_t i = 0; i < hdv; i++)
			o[i] *= inv;
	}
}

static void attn_worker(void *arg, int ith, int nth)
{
	const struct attn_job *j = arg;
	const struct moe_attn_args *a = j->a;
	uint32_t n = a->n_tok * a->n_head;
	float *tmp = NULL;

	if (a->kv.type != MOE_TYPE_F32) {
		/* the values are never wider than the keys they may be read from */
		tmp = malloc(sizeof(float) * 2 * MOE_MAX(a->head_dim, a->head_dim_v));
		if (!tmp)
			return;
	}
	for (uint32_t i = ith; i < n; i += nth)
		attn_one(j, i / a->n_head, i % a->n_head, tmp,
			 tmp ? tmp + MOE_MAX(a->head_dim, a->head_dim_v) : NULL);
	free(tmp);
}

static int attention(struct cpu *c, const struct moe_attn_args *a)
{
	struct attn_job job = { .a = a, .row = moe_kv_row_bytes(a->kv.type, a->kv.kv_dim),
				.kt = moe_type_traits(a->kv.type),
				.f32 = moe_type_traits(MOE_TYPE_F32) };
	const int32_t *pos = PTR(a->pos);
	uint32_t hdv = a->head_dim_v ? a->head_dim_v : a->head_dim;
	uint64_t work = 0;

	if (!job.row || !a->n_head_kv || a->n_head % a->n_head_kv ||
	    a->n_head_kv * a->head_dim != a->kv.kv_dim ||
	    (a->kv.type == MOE_TYPE_Q8_0 && (a->head_dim % 32 || hdv % 32)) ||
	    (a->kv.v && hdv != a->head_dim) || (!a->kv.v && hdv > a->head_dim))
		return moe_err(EINVAL, "attention: %u heads (%u KV) of %u (values %u%s) over a %s "
			       "cache of %u", a->n_head, a->n_head_kv, a->head_dim, hdv,
			       a->kv.v ? "" : ", read from the keys",
			       moe_type_name(a->kv.type) ? moe_type_name(a->kv.type) : "?",
			       a->kv.kv_dim);
	for (uint32_t t = 0; t < a->n_tok; t++) {
		int64_t span = pos[t] + 1;

		if (a->mask == MOE_MASK_SLIDING && a->window)
			span = MOE_MIN(span, (int64_t)a->window);
		else if (a->mask == MOE_MASK_CHUNKED && a->window)
			span = pos[t] % a->window + 1;
		if (pos[t] < 0 || span > a->kv.n_cells)
			return moe_err(EINVAL, "attention: position %d sees %lld positions, the "
				       "cache keeps %u", pos[t], (long long)span, a->kv.n_cells);
		work += (uint64_t)span * a->n_head * (a->head_dim + hdv);
	}
	/* a fork-join costs more than a short decode-time attention */
	run(c, attn_worker, &job, work);
	return 0;
}

static int cpu_attention(struct moe_backend *be, const struct moe_attn_args *a)
{
	return GUARDED(cpu_of(be), attention(cpu_of(be), a));
}

/* ------------------------------------------------------------ element-wise */

float moe_gelu_tanh(float x)
{
	const float c = 0.7978845608028654f;   /* sqrt(2/pi) */

	return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

static inline float glu1(enum moe_glu act, float x, float y)
{
	switch (act) {
	case MOE_GLU_GELU:
		return moe_gelu_tanh(x) * y;
	case MOE_GLU_SWIGLU_OAI:
		x = MOE_MIN(x, 7.0f);
		y = MOE_MAX(-7.0f, MOE_MIN(y, 7.0f));
		return x / (1.0f + expf(-1.702f * x)) * (y + 1.0f);
	default:
		return x / (1.0f + expf(-x)) * y;
	}
}

struct glu_job {
	enum moe_glu act;
	const float *gate, *up;
	int64_t stride, n_tok, n;
	float *out;
};

static void glu_worker(void *arg, int ith, int nth)
{
	struct glu_job *j = arg;

	for (int64_t t = ith; t < j->n_tok; t += nth) {
		const float *g = j->gate + t * j->stride, *u = j->up + t * j->stride;
		float *o = j->out + t * j->n;

		for (int64_t i = 0; i < j->n; i++)
			o[i] = glu1(j->act, g[i], u[i]);
	}
}

static int cpu_glu(struct moe_backend *be, enum moe_glu act, moe_dptr gate, moe_dptr up,
		   int64_t stride, int64_t n_tok, int64_t n, moe_dptr out)
{
	struct cpu *c = cpu_of(be);
	struct glu_job j = { act, PTR(gate), PTR(up), stride, n_tok, n, PTR(out) };

	guard_open(c);
	run(c, glu_worker, &j, (uint64_t)(n_tok * n) * 4);
	guard_close(c);
	return 0;
}

static int cpu_add(struct moe_backend *be, moe_dptr yd, moe_dptr xd, int64_t n)
{
	struct cpu *c = cpu_of(be);
	float *y = PTR(yd);
	const float *x = PTR(xd);

	guard_open(c);
	for (int64_t i = 0; i < n; i++)
		y[i] += x[i];
	guard_close(c);
	return 0;
}

static int cpu_add_bias(struct moe_backend *be, moe_dptr yd, moe_dptr bd, int64_t n_tok,
			int64_t n)
{
	struct cpu *c = cpu_of(be);
	float *y = PTR(yd);
	const float *b = PTR(bd);

	guard_open(c);
	for (int64_t t = 0; t < n_tok; t++)
		for (int64_t i = 0; i < n; i++)
			y[t * n + i] += b[i];
	guard_close(c);
	return 0;
}

static int cpu_scale(struct moe_backend *be, moe_dptr xd, float s, int64_t n)
{
	struct cpu *c = cpu_of(be);
	float *x = PTR(xd);

	guard_open(c);
	for (int64_t i = 0; i < n; i++)
		x[i] *= s;
	guard_close(c);
	return 0;
}

static int cpu_scale_rows(struct moe_backend *be, moe_dptr xd, moe_dptr sd, int64_t n_tok,
			  int64_t n, bool sigmoid)
{
	struct cpu *c = cpu_of(be);
	float *x = PTR(xd);
	const float *s = PTR(sd);

	guard_open(c);
	for (int64_t t = 0; t < n_tok; t++) {
		float f = sigmoid ? 1.0f / (1.0f + expf(-s[t])) : s[t];

		for (int64_t i = 0; i < n; i++)
			x[t * n + i] *= f;
	}
	guard_close(c);
	return 0;
}

static int cpu_mul(struct moe_backend *be, moe_dptr xd, moe_dptr wd, int64_t n_vec, int64_t n)
{
	struct cpu *c = cpu_of(be);
	float *x = PTR(xd);
	const float *w = PTR(wd);

	guard_open(c);
	for (int64_t v = 0; v < n_vec; v++)
		for (int64_t i = 0; i < n; i++)
			x[v * n + i] *= w[i];
	guard_close(c);
	return 0;
}

static int cpu_softcap(struct moe_backend *be, moe_dptr xd, float cap, int64_t n)
{
	struct cpu *c = cpu_of(be);
	float *x = PTR(xd);

	guard_open(c);
	for (int64_t i = 0; i < n; i++)
		x[i] = cap * tanhf(x[i] / cap);
	guard_close(c);
	return 0;
}

static int cpu_combine(struct moe_backend *be, moe_dptr ysd, moe_dptr wd, uint32_t n_tok,
		       uint32_t k, uint32_t stride, int64_t n, moe_dptr outd)
{
	struct cpu *c = cpu_of(be);
	const float *ys = PTR(ysd), *w = PTR(wd);
	float *out = PTR(outd);

	guard_open(c);
	for (uint32_t t = 0; t < n_tok; t++) {
		float *o = out + (size_t)t * n;

		for (uint32_t j = 0; j < k; j++) {
			const float *y = ys + ((size_t)t * stride + j) * n;
			float wt = w ? w[t * stride + j] : 1.0f;

			if (!j)
				for (int64_t i = 0; i < n; i++)
					o[i] = y[i] * wt;
			else
				for (int64_t i = 0; i < n; i++)
					o[i] += y[i] * wt;
		}
	}
	guard_close(c);
	return 0;
}

/* ------------------------------------------------------------ routing */

/* Top-k of score[] by value, ties to the lower index; k is small. */
static void top_k(const float *score, uint32_t n, uint32_t k, int32_t *sel)
{
	for (uint32_t j = 0; j < k; j++) {
		int32_t best = -1;

		for (uint32_t e = 0; e < n; e++) {
			bool taken = false;

			for (uint32_t i = 0; i < j; i++)
				taken |= sel[i] == (int32_t)e;
			if (!taken && (best < 0 || score[e] > score[best]))
				best = (int32_t)e;
		}
		sel[j] = best;
	}
}

/*
 * Group-limited routing: a group scores the sum of its two best selection
 * scores; the experts outside the topk_group best groups drop out.
 */
static void keep_groups(const struct moe_route_args *a, float *score)
{
	uint32_t gs = a->n_expert / a->n_group;
	float gscore[MOE_ROUTE_MAX_GROUPS] = { 0 };
	int32_t keep[MOE_ROUTE_MAX_GROUPS];

	for (uint32_t g = 0; g < a->n_group; g++) {
		const float *sg = score + (size_t)g * gs;
		float b0 = -INFINITY, b1 = -INFINITY;

		for (uint32_t e = 0; e < gs; e++) {
			if (sg[e] > b0) {
				b1 = b0;
				b0 = sg[e];
			} else if (sg[e] > b1) {
				b1 = sg[e];
			}
		}
		gscore[g] = gs > 1 ? b0 + b1 : b0;
	}
	top_k(gscore, a->n_group, a->topk_group, keep);
	for (uint32_t g = 0; g < a->n_group; g++) {
		bool kept = false;

		for (uint32_t i = 0; i < a->topk_group; i++)
			kept |= keep[i] == (int32_t)g;
		if (!kept)
			for (uint32_t e = 0; e < gs; e++)
				score[(size_t)g * gs + e] = -INFINITY;
	}
}

static int route(const struct moe_route_args *a, float *score, float *prob)
{
	const float *bias = PTR(a->bias);
	uint32_t ne = a->n_expert, k = a->k;

	for (uint32_t t = 0; t < a->n_tok; t++) {
		const float *lg = (const float *)PTR(a->logits) + (size_t)t * ne;
		int32_t *s = (int32_t *)PTR(a->sel) + (size_t)t * a->stride;
		float *wt = (float *)PTR(a->weights) + (size_t)t * a->stride;
		float mx = -INFINITY;
		double sum = 0;

		switch (a->gating) {
		case MOE_GATING_SIGMOID:
			for (uint32_t e = 0; e < ne; e++)
				prob[e] = 1.0f / (1.0f + expf(-lg[e]));
			break;
		case MOE_GATING_SOFTMAX_SELECTED:
			memcpy(prob, lg, sizeof(float) * ne);
			break;
		default:
			for (uint32_t e = 0; e < ne; e++)
				mx = MOE_MAX(mx, lg[e]);
			for (uint32_t e = 0; e < ne; e++) {
				prob[e] = expf(lg[e] - mx);
				sum += prob[e];
			}
			for (uint32_t e = 0; e < ne; e++)
				prob[e] = (float)(prob[e] / sum);
			break;
		}
		for (uint32_t e = 0; e < ne; e++)
			score[e] = prob[e] + (bias ? bias[e] : 0.0f);
		if (a->n_group > 1)
			keep_groups(a, score);
		top_k(score, ne, k, s);
		if (a->gating == MOE_GATING_SOFTMAX_SELECTED) {
			mx = -INFINITY;
			sum = 0;
			for (uint32_t j = 0; j < k; j++)
				mx = MOE_MAX(mx, lg[s[j]]);
			for (uint32_t j = 0; j < k; j++) {
				wt[j] = expf(lg[s[j]] - mx);
				sum += wt[j];
			}
			for (uint32_t j = 0; j < k; j++)
				wt[j] = (float)(wt[j] / sum);
		} else {
			for (uint32_t j = 0; j < k; j++)
				wt[j] = prob[s[j]];
		}
		if (a->norm && a->gating != MOE_GATING_SOFTMAX_SELECTED) {
			float tot = 0;

			for (uint32_t j = 0; j < k; j++)
				tot += wt[j];
			tot = MOE_MAX(tot, 6.103515625e-5f);
			for (uint32_t j = 0; j < k; j++)
				wt[j] /= tot;
		}
		if (a->scale != 1.0f)
			for (uint32_t j = 0; j < k; j++)
				wt[j] *= a->scale;
	}
	return 0;
}

static int cpu_route(struct moe_backend *be, const struct moe_route_args *a)
{
	struct cpu *c = cpu_of(be);
	float *tmp;
	int ret;

	ret = moe_route_args_check(a);
	if (ret < 0)
		return ret;
	tmp = items(c, sizeof(float) * 2 * a->n_expert);
	if (!tmp)
		return moe_err(ENOMEM, "out of memory");
	guard_open(c);
	ret = route(a, tmp, tmp + a->n_expert);
	guard_close(c);
	return ret;
}

/* ------------------------------------------------------------ matrix products */

/*
 * A fused product is a list of work items, each a block of rows of one
 * matrix for all of its tokens; threads take items from a shared counter,
 * so one fork-join covers every matrix of a layer phase.
 */
struct mm_item {
	uint32_t mm;                /* index into the job's products */
	int64_t r0, r1;
};

struct mm_job {
	struct moe_mm *mm;
	struct mm_item *it;
	uint32_t n_items;
	_Atomic uint32_t next;
};

static void mm_worker(void *arg, int ith, int nth)
{
	struct mm_job *j = arg;
	uint32_t i;

	(void)ith;
	(void)nth;
	while ((i = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->n_items)
		moe_mm_rows(&j->mm[j->it[i].mm], j->it[i].r0, j->it[i].r1);
}

/* Rows per item: about 8 items per thread over all products, at least 16 KiB of weights. */
static int64_t mm_chunk(const struct moe_mm *mm, uint64_t total_rows, int nth)
{
	int64_t ch = (int64_t)(total_rows / ((uint64_t)nth * 8));

	ch = MOE_MAX(ch, (int64_t)(16384 / mm->w_row_bytes) + 1);
	return MOE_ALIGN_UP(ch, MOE_MM_ROW_TILE);
}

/* Split products 0..n_mm-1 into items; @items must hold enough entries. */
static uint32_t mm_split(struct cpu *c, struct moe_mm *mm, uint32_t n_mm, struct mm_item *it)
{
	int nth = moe_threadpool_size(c->pool);
	uint64_t total = 0;
	uint32_t n = 0;

	for (uint32_t i = 0; i < n_mm; i++)
		total += (uint64_t)mm[i].rows * (mm[i].n_tok ? 1 : 0);
	for (uint32_t i = 0; i < n_mm; i++) {
		int64_t ch;

		if (!mm[i].n_tok)
			continue;
		ch = nth > 1 ? mm_chunk(&mm[i], total, nth) : mm[i].rows;
		for (int64_t r = 0; r < mm[i].rows; r += ch)
			it[n++] = (struct mm_item){ i, r, MOE_MIN(r + ch, mm[i].rows) };
	}
	return n;
}

static uint32_t mm_max_items(const struct moe_mm *mm, uint32_t n_mm)
{
	uint32_t n = 0;

	/* the chunk is at least one row tile */
	for (uint32_t i = 0; i < n_mm; i++)
		n += (uint32_t)((mm[i].rows + MOE_MM_ROW_TILE - 1) / MOE_MM_ROW_TILE);
	return n;
}

static void mm_run(struct cpu *c, struct moe_mm *mm, struct mm_item *it, uint32_t n_items)
{
	struct mm_job j = { .mm = mm, .it = it, .n_items = n_items };
	uint64_t work = 0;

	for (uint32_t i = 0; i < n_items; i++)
		work += (uint64_t)(it[i].r1 - it[i].r0) * mm[it[i].mm].cols * mm[it[i].mm].n_tok;
	atomic_init(&j.next, 0);
	run(c, mm_worker, &j, work);
}

/* Activation rows of x quantized once per activation type, for several products. */
struct act_set {
	uint32_t type[3];
	uint8_t *buf[3];
	uint32_t n;
};

static const uint8_t *act_for(struct act_set *s, const struct moe_mm *mm)
{
	for (uint32_t i = 0; i < s->n; i++)
		if (s->type[i] == mm->t->vec_dot_type)
			return s->buf[i];
	return NULL;
}

struct quant_job {
	const struct moe_mm *mm;
	const float *x;
	const int32_t *rows;        /* source row of each output row, or NULL */
	const float *scale;         /* per output row, or NULL */
	uint32_t stride;            /* rows[] / stride is the source row */
	uint8_t *dst;
	float *tmp;                 /* scaled rows, one per output row */
	uint32_t n;
};

static void quant_worker(void *arg, int ith, int nth)
{
	struct quant_job *j = arg;
	int64_t cols = j->mm->cols;

	for (uint32_t i = ith; i < j->n; i += nth) {
		uint32_t src = j->rows ? (uint32_t)j->rows[i] / j->stride : i;
		const float *x = j->x + (size_t)src * cols;

		if (j->scale) {
			float *t = j->tmp + (size_t)i * cols, s = j->scale[i];

			for (int64_t e = 0; e < cols; e++)
				t[e] = x[e] * s;
			x = t;
		}
		moe_mm_quantize(j->mm, x, j->dst + (size_t)i * j->mm->act_row_bytes);
	}
}

static void quantize_rows(struct cpu *c, struct quant_job *q)
{
	run(c, quant_worker, q, (uint64_t)q->n * q->mm->cols * 8);
}

static int matmul(struct cpu *c, const struct moe_be_mat *w, uint32_t n_w, moe_dptr x,
		  uint32_t n_tok, const moe_dptr *y)
{
	struct moe_mm mm[8];
	struct act_set acts = { 0 };
	struct ws_cursor ws = ws_begin(c);
	struct mm_item *it;
	int ret;

	if (!n_w || n_w > MOE_ARRAY_SIZE(mm))
		return moe_err(EINVAL, "matmul: %u matrices (1..%zu)", n_w, MOE_ARRAY_SIZE(mm));
	for (uint32_t i = 0; i < n_w; i++) {
		ret = moe_mm_init(&mm[i], w[i].type, PTR(w[i].p), w[i].rows, w[i].cols);
		if (ret)
			return ret;
		if (w[i].cols != w[0].cols)
			return moe_err(EINVAL, "matmul: fused matrices of %lld and %lld columns",
				       (long long)w[0].cols, (long long)w[i].cols);
		mm[i].n_tok = n_tok;
		mm[i].y = PTR(y[i]);
	}
	if (!n_tok)
		return 0;
	for (uint32_t i = 0; i < n_w; i++) {
		const uint8_t *a;

		if (mm[i].t->vec_dot_type == MOE_TYPE_F32) {
			mm[i].act = PTR(x);
			continue;
		}
		a = act_for(&acts, &mm[i]);
		if (!a) {
			struct quant_job q = { .mm = &mm[i], .x = PTR(x), .n = n_tok };

			q.dst = ws_take(&ws, (uint64_t)n_tok * mm[i].act_row_bytes);
			if (!q.dst)
				return ws_short("matmul", c->ws_bytes);
			quantize_rows(c, &q);
			acts.type[acts.n] = mm[i].t->vec_dot_type;
			acts.buf[acts.n++] = q.dst;
			a = q.dst;
		}
		mm[i].act = a;
	}
	it = items(c, sizeof(*it) * mm_max_items(mm, n_w));
	if (!it)
		return moe_err(ENOMEM, "out of memory");
	mm_run(c, mm, it, mm_split(c, mm, n_w, it));
	return 0;
}

static int cpu_matmul(struct moe_backend *be, const struct moe_be_mat *w, uint32_t n_w,
		      moe_dptr x, uint32_t n_tok, const moe_dptr *y)
{
	return GUARDED(cpu_of(be), matmul(cpu_of(be), w, n_w, x, n_tok, y));
}

/*
 * Per-head products: each head's inputs are gathered into workspace rows,
 * quantized once for all heads where the weight type wants it, multiplied
 * as one fused job of n_head products, and scattered to their strides.
 */
static int matmul_heads(struct cpu *c, const struct moe_heads_args *a)
{
	const struct moe_be_mat *w = &a->w;
	int64_t rb = moe_type_row_bytes(w->type, (uint64_t)w->cols);
	uint64_t n = (uint64_t)a->n_head * a->n_tok;
	struct ws_cursor ws = ws_begin(c);
	struct moe_mm *mm;
	struct mm_item *it;
	float *xin, *yout;
	uint8_t *qa = NULL;
	int ret = 0;

	if (rb <= 0 || !a->n_head)
		return moe_err(EINVAL, "matmul_heads: %u heads of %s %lld x %lld", a->n_head,
			       moe_type_name(w->type) ? moe_type_name(w->type) : "?",
			       (long long)w->rows, (long long)w->cols);
	if (!a->n_tok)
		return 0;
	xin = ws_take(&ws, n * (uint64_t)w->cols * sizeof(float));
	yout = ws_take(&ws, n * (uint64_t)w->rows * sizeof(float));
	mm = calloc(a->n_head, sizeof(*mm));
	if (!mm)
		return moe_err(ENOMEM, "out of memory");
	if (!xin || !yout) {
		ret = ws_short("matmul_heads", c->ws_bytes);
		goto out;
	}
	for (uint32_t h = 0; h < a->n_head && !ret; h++) {
		ret = moe_mm_init(&mm[h], w->type, (const uint8_t *)PTR(w->p) +
				  (uint64_t)h * w->rows * rb, w->rows, w->cols);
		mm[h].n_tok = a->n_tok;
		mm[h].y = yout + (uint64_t)h * a->n_tok * w->rows;
		for (uint32_t t = 0; t < a->n_tok; t++)
			memcpy(xin + ((uint64_t)h * a->n_tok + t) * w->cols,
			       (const float *)PTR(a->x) + (uint64_t)t * a->x_tok +
			       (uint64_t)h * a->x_head, sizeof(float) * w->cols);
	}
	if (ret)
		goto out;
	if (mm[0].t->vec_dot_type != MOE_TYPE_F32) {
		struct quant_job q = { .mm = &mm[0], .x = xin, .n = (uint32_t)n };

		qa = q.dst = ws_take(&ws, n * mm[0].act_row_bytes);
		if (!qa) {
			ret = ws_short("matmul_heads", c->ws_bytes);
			goto out;
		}
		quantize_rows(c, &q);
	}
	for (uint32_t h = 0; h < a->n_head; h++)
		mm[h].act = qa ? qa + (uint64_t)h * a->n_tok * mm[0].act_row_bytes :
			    (const void *)(xin + (uint64_t)h * a->n_tok * w->cols);
	it = items(c, sizeof(*it) * mm_max_items(mm, a->n_head));
	if (!it) {
		ret = moe_err(ENOMEM, "out of memory");
		goto out;
	}
	mm_run(c, mm, it, mm_split(c, mm, a->n_head, it));
	for (uint32_t h = 0; h < a->n_head; h++)
		for (uint32_t t = 0; t < a->n_tok; t++)
			memcpy((float *)PTR(a->y) + (uint64_t)t * a->y_tok + (uint64_t)h * a->y_head,
			       yout + ((uint64_t)h * a->n_tok + t) * w->rows,
			       sizeof(float) * w->rows);
out:
	free(mm);
	return ret;
}

static int cpu_matmul_heads(struct moe_backend *be, const struct moe_heads_args *a)
{
	return GUARDED(cpu_of(be), matmul_heads(cpu_of(be), a));
}

static int cpu_copy_rows(struct moe_backend *be, moe_dptr dst, uint32_t dst_stride, moe_dptr src,
			 uint32_t src_stride, uint32_t n, uint32_t n_rows)
{
	struct cpu *c = cpu_of(be);

	guard_open(c);
	for (uint32_t r = 0; r < n_rows; r++)
		memmove((float *)PTR(dst) + (uint64_t)r * dst_stride,
			(const float *)PTR(src) + (uint64_t)r * src_stride, sizeof(float) * n);
	guard_close(c);
	return 0;
}

/* ------------------------------------------------------------ FFNs */

struct glu_ent_job {
	const struct moe_ffn_args *a;
	const struct moe_be_ffn *ffn;
	struct moe_mm *down;        /* per FFN; its act holds the FFN's quantized rows */
	float *gu;                  /* per entry: gate, then up n_ff after it, 2 * max_ff apart */
	float *act;
	uint32_t max_ff;
	const uint32_t *ent_ffn;    /* FFN of each entry */
	const uint32_t *ffn_first;  /* first entry of each FFN */
	uint32_t n_ent;
};

static uint32_t ffn_width(const struct moe_be_ffn *f)
{
	return (uint32_t)(f->n_mats == 2 ? f->mats[0].rows / 2 : f->mats[0].rows);
}

/* bias, activation and quantization of each entry's hidden row, all FFNs in one job */
static void glu_ent_worker(void *arg, int ith, int nth)
{
	struct glu_ent_job *j = arg;

	for (uint32_t e = ith; e < j->n_ent; e += nth) {
		uint32_t fi = j->ent_ffn[e];
		const struct moe_be_ffn *f = &j->ffn[fi];
		uint32_t nff = ffn_width(f);
		float *g = j->gu + (size_t)e * 2 * j->max_ff, *u = g + nff;
		float *act = j->act + (size_t)e * j->max_ff;
		const float *gb = PTR(f->gate_b), *ub = PTR(f->up_b);

		if (gb)
			for (uint32_t i = 0; i < nff; i++)
				g[i] += gb[i];
		if (ub)
			for (uint32_t i = 0; i < nff; i++)
				u[i] += ub[i];
		for (uint32_t i = 0; i < nff; i++)
			act[i] = glu1(j->a->act, g[i], u[i]);
		moe_mm_quantize(&j->down[fi], act, (uint8_t *)j->down[fi].act +
				(size_t)(e - j->ffn_first[fi]) * j->down[fi].act_row_bytes);
	}
}

struct out_job {
	const struct moe_ffn_args *a;
	const struct moe_be_ffn *ffn;
	const uint32_t *ent_ffn;
	const int32_t *ents;
	const float *dn;
	uint32_t n_ent;
};

/* down bias and output scale, then each entry's row to its place */
static void out_worker(void *arg, int ith, int nth)
{
	struct out_job *j = arg;
	uint32_t E = j->a->n_embd;

	for (uint32_t e = ith; e < j->n_ent; e += nth) {
		const struct moe_be_ffn *f = &j->ffn[j->ent_ffn[e]];
		const float *d = j->dn + (size_t)e * E, *b = PTR(f->down_b), *s = PTR(f->out_scale);
		uint32_t row = j->ents ? (uint32_t)j->ents[e] : e;
		float *o = (float *)PTR(j->a->out) + (size_t)row * E;

		for (uint32_t i = 0; i < E; i++) {
			float v = d[i];

			if (b)
				v += b[i];
			if (s)
				v *= s[0];
			o[i] = v;
		}
	}
}

static int ffn_check(const struct moe_ffn_args *a, const struct moe_be_ffn *f)
{
	const struct moe_be_mat *dn;
	uint32_t nff;

	if (f->n_mats < 2 || f->n_mats > 3)
		return moe_err(EINVAL, "ffn: %u matrices (2 or 3)", f->n_mats);
	dn = &f->mats[f->n_mats - 1];
	nff = ffn_width(f);
	if (f->mats[0].cols != a->n_embd || dn->rows != a->n_embd || dn->cols != nff ||
	    (f->n_mats == 3 && (f->mats[1].rows != nff || f->mats[1].cols != a->n_embd)) ||
	    (f->n_mats == 2 && f->mats[0].rows % 2))
		return moe_err(EINVAL, "ffn: matrix shapes do not fit n_embd %u and width %u",
			       a->n_embd, nff);
	return 0;
}

/* Host tables of one ffn call: products, work items, the FFN of each entry. */
struct ffn_tables {
	struct moe_mm *mm;          /* gate/up products, 2 per FFN at most */
	struct moe_mm *down;        /* one per FFN */
	struct mm_item *it;
	uint32_t *ent_ffn;
	int32_t *ent_val;           /* the entry each FFN row stands for (ents present) */
	uint32_t *ffn_first;        /* first entry of each FFN */
};

static int ffn_tables(struct cpu *c, const struct moe_ffn_args *a, uint32_t n_ent,
		      struct ffn_tables *t)
{
	uint64_t n_items = 0;
	size_t bytes;
	uint8_t *p;

	/* items: every product is cut into blocks of at least one row tile */
	for (uint32_t f = 0; f < a->n_ffn; f++) {
		const struct moe_be_ffn *F = &a->ffn[f];

		for (uint32_t k = 0; k < F->n_mats; k++)
			n_items += (uint64_t)(F->mats[k].rows + MOE_MM_ROW_TILE - 1) /
				   MOE_MM_ROW_TILE;
	}
	bytes = sizeof(struct moe_mm) * 3 * a->n_ffn + sizeof(struct mm_item) * n_items +
		2 * sizeof(uint32_t) * n_ent + sizeof(uint32_t) * a->n_ffn;
	p = items(c, bytes);
	if (!p)
		return moe_err(ENOMEM, "out of memory");
	t->mm = (struct moe_mm *)p;
	t->down = t->mm + 2 * a->n_ffn;
	t->it = (struct mm_item *)(t->down + a->n_ffn);
	t->ent_ffn = (uint32_t *)(t->it + n_items);
	t->ent_val = (int32_t *)(t->ent_ffn + n_ent);
	t->ffn_first = (uint32_t *)(t->ent_val + n_ent);
	for (uint32_t f = 0, e = 0; f < a->n_ffn; f++) {
		t->ffn_first[f] = e;
		for (uint32_t i = 0; i < a->ffn[f].m; i++, e++) {
			t->ent_ffn[e] = f;
			t->ent_val[e] = a->ents ? ((const int32_t *)PTR(a->ents))[a->ffn[f].ent_off + i] :
				       (int32_t)e;
		}
	}
	return 0;
}

/*
 * Each input row quantized once per activation type and laid out per entry,
 * so every FFN reads its rows contiguously; with an input scale every entry
 * has a scaled row of its own.
 */
static int ffn_inputs(struct cpu *c, const struct moe_ffn_args *a, struct ws_cursor *ws,
		      const struct moe_mm *m0, const int32_t *ents, uint32_t n_ent, uint32_t max_tok,
		      float *tmp, uint8_t **out)
{
	uint64_t rb = m0->act_row_bytes;
	uint8_t *q = ws_take(ws, rb * n_ent);

	if (!q)
		return ws_short("ffn", c->ws_bytes);
	if (a->in_scale || !a->ents) {
		struct quant_job qj = { .mm = m0, .x = PTR(a->x), .stride = a->stride, .dst = q,
					.n = n_ent, .rows = a->ents ? ents : NULL };

		if (a->in_scale) {
			/* the scale is indexed by entry value, the row by entry position */
			float *sc = ws_take(ws, sizeof(float) * n_ent);

			qj.tmp = tmp;
			if (!sc)
				return ws_short("ffn", c->ws_bytes);
			for (uint32_t e = 0; e < n_ent; e++)
				sc[e] = ((const float *)PTR(a->in_scale))[ents[e]];
			qj.scale = sc;
		}
		quantize_rows(c, &qj);
	} else {
		struct quant_job qj = { .mm = m0, .x = PTR(a->x), .n = max_tok };

		qj.dst = ws_take(ws, rb * max_tok);
		if (!qj.dst)
			return ws_short("ffn", c->ws_bytes);
		quantize_rows(c, &qj);
		for (uint32_t e = 0; e < n_ent; e++)
			memcpy(q + rb * e, qj.dst + rb * ((uint32_t)ents[e] / a->stride), rb);
	}
	*out = q;
	return 0;
}

static int ffn(struct cpu *c, const struct moe_ffn_args *a)
{
	bool has_ents = a->ents != 0;
	struct ws_cursor ws = ws_begin(c);
	uint32_t n_ent = 0, max_ff = 0, max_tok = 0, n_mm = 0;
	struct act_set acts = { 0 };
	struct ffn_tables t = { 0 };
	float *gu, *act, *dn;
	uint64_t qrow = 0;
	uint8_t *qact;
	int ret;

	if (!has_ents && a->n_ffn > 1)
		return moe_err(EINVAL, "ffn: several FFNs need an entry list");
	for (uint32_t f = 0; f < a->n_ffn; f++) {
		ret = ffn_check(a, &a->ffn[f]);
		if (ret)
			return ret;
		n_ent += a->ffn[f].m;
		max_ff = MOE_MAX(max_ff, ffn_width(&a->ffn[f]));
	}
	if (!n_ent)
		return 0;
	ret = ffn_tables(c, a, n_ent, &t);
	if (ret)
		return ret;
	for (uint32_t e = 0; e < n_ent; e++)
		max_tok = MOE_MAX(max_tok, (has_ents ? (uint32_t)t.ent_val[e] / a->stride : e) + 1);
	for (uint32_t f = 0; f < a->n_ffn; f++) {
		const struct moe_be_ffn *F = &a->ffn[f];
		const struct moe_be_mat *d = &F->mats[F->n_mats - 1];

		for (uint32_t k = 0; k + 1 < F->n_mats; k++, n_mm++) {
			ret = moe_mm_init(&t.mm[n_mm], F->mats[k].type, PTR(F->mats[k].p),
					  F->mats[k].rows, F->mats[k].cols);
			if (ret)
				return ret;
			t.mm[n_mm].n_tok = F->m;
		}
		ret = moe_mm_init(&t.down[f], d->type, PTR(d->p), d->rows, d->cols);
		if (ret)
			return ret;
		t.down[f].n_tok = F->m;
		qrow = MOE_MAX(qrow, t.down[f].act_row_bytes);
	}
	gu = ws_take(&ws, sizeof(float) * n_ent * 2 * max_ff);
	act = ws_take(&ws, sizeof(float) * n_ent * max_ff);
	dn = ws_take(&ws, sizeof(float) * n_ent * a->n_embd);
	qact = ws_take(&ws, qrow * n_ent);
	if (!gu || !act || !dn || !qact)
		return ws_short("ffn", c->ws_bytes);
	for (uint32_t i = 0; i < n_mm; i++) {
		if (act_for(&acts, &t.mm[i]))
			continue;
		/* dn is free until the down products: scaled rows are built there */
		ret = ffn_inputs(c, a, &ws, &t.mm[i], t.ent_val, n_ent, max_tok, dn,
				 &acts.buf[acts.n]);
		if (ret)
			return ret;
		acts.type[acts.n++] = t.mm[i].t->vec_dot_type;
	}

	/* gate/up of entry e land in row e of gu: gate first, up n_ff after it */
	for (uint32_t f = 0, i = 0, off = 0; f < a->n_ffn; f++) {
		const struct moe_be_ffn *F = &a->ffn[f];
		uint32_t nff = ffn_width(F);

		for (uint32_t k = 0; k + 1 < F->n_mats; k++, i++) {
			t.mm[i].act = act_for(&acts, &t.mm[i]) + (size_t)off * t.mm[i].act_row_bytes;
			t.mm[i].y = gu + (size_t)off * 2 * max_ff + (k ? nff : 0);
			t.mm[i].y_stride = 2 * max_ff;
		}
		off += F->m;
	}
	mm_run(c, t.mm, t.it, mm_split(c, t.mm, n_mm, t.it));

	/*
	 * Biases and activation per entry, quantized for down in blocks per FFN:
	 * one fork-join for every entry of the layer (a prefill has hundreds).
	 */
	for (uint32_t f = 0, e = 0; f < a->n_ffn; f++) {
		t.down[f].act = qact + qrow * e;
		t.down[f].y = dn + (size_t)e * a->n_embd;
		t.down[f].y_stride = a->n_embd;
		e += a->ffn[f].m;
	}
	{
		struct glu_ent_job gj = {
			.a = a, .ffn = a->ffn, .down = t.down, .gu = gu, .act = act,
			.max_ff = max_ff, .ent_ffn = t.ent_ffn, .ffn_first = t.ffn_first,
			.n_ent = n_ent,
		};

		run(c, glu_ent_worker, &gj, (uint64_t)n_ent * max_ff * 16);
	}
	mm_run(c, t.down, t.it, mm_split(c, t.down, a->n_ffn, t.it));
	{
		struct out_job oj = { .a = a, .ffn = a->ffn, .ent_ffn = t.ent_ffn,
				      .ents = has_ents ? t.ent_val : NULL, .dn = dn, .n_ent = n_ent };

		run(c, out_worker, &oj, (uint64_t)n_ent * a->n_embd * 4);
	}
	return 0;
}

static int cpu_ffn(struct moe_backend *be, const struct moe_ffn_args *a)
{
	return GUARDED(cpu_of(be), ffn(cpu_of(be), a));
}

/* ------------------------------------------------------------ the table */

/* An activation row in its weight type's vec_dot type: f32 copies are the largest. */
static uint64_t act_row_max(uint32_t cols)
{
	return (uint64_t)cols * 4 + CPU_ALIGN;
}

static uint64_t cpu_workspace_bytes(const struct moe_be_shape *s)
{
	uint64_t a = CPU_ALIGN, mm, fn, hd, rows = MOE_MAX(s->max_tok, s->max_ent);

	/* matmul: one quantized copy of the input per quantized activation type (two) */
	mm = 2 * ((uint64_t)s->max_tok * act_row_max(s->max_cols) + a);
	/* ffn: gate/up rows, hidden rows, outputs, the hidden rows quantized for down */
	fn = (uint64_t)rows * 2 * s->max_ff * 4 + a;
	fn += (uint64_t)rows * s->max_ff * 4 + a;
	fn += (uint64_t)rows * s->n_embd * 4 + a;
	fn += (uint64_t)rows * act_row_max(s->max_ff) + a;
	/* and per input activation type (two): rows per entry, per token, the input scales */
	fn += 2 * ((uint64_t)rows * act_row_max(s->n_embd) + a);
	fn += 2 * ((uint64_t)s->max_tok * act_row_max(s->n_embd) + a);
	fn += 2 * ((uint64_t)rows * 4 + a);
	/* matmul_heads: gathered inputs and outputs, the inputs quantized */
	hd = (uint64_t)s->max_tok * s->max_head * (s->max_heads_io * 4 +
						    act_row_max(s->max_heads_io)) + 3 * a;
	return MOE_MAX(MOE_MAX(mm, fn), hd);
}

static void cpu_destroy(struct moe_backend *be)
{
	struct cpu *c = cpu_of(be);

	if (c->guard) {
		munmap(c->base, c->reserve);
		pthread_mutex_destroy(&c->guard_lock);
	}
	free(c->blks);
	free(c->items);
	free(c);
	free(be);
}

static const struct moe_backend_ops cpu_ops = {
	.name = "cpu",
	.destroy = cpu_destroy,
	.alloc = cpu_alloc,
	.free = cpu_free,
	.mem_info = cpu_mem_info,
	.host_register = cpu_host_register,
	.host_unregister = cpu_host_unregister,
	.host_alloc = cpu_host_alloc,
	.host_free = cpu_host_free,
	.set_workspace = cpu_set_workspace,
	.upload = cpu_upload,
	.download = cpu_download,
	.copy = cpu_copy,
	.event_create = cpu_event_create,
	.event_destroy = cpu_event_destroy,
	.event_record = cpu_event_record,
	.event_query = cpu_event_query,
	.event_sync = cpu_event_sync,
	.queue_wait = cpu_queue_wait,
	.sync = cpu_sync,
	.get_rows = cpu_get_rows,
	.to_f32 = cpu_to_f32,
	.matmul = cpu_matmul,
	.rms_norm = cpu_rms_norm,
	.rope = cpu_rope,
	.kv_store = cpu_kv_store,
	.attention = cpu_attention,
	.matmul_heads = cpu_matmul_heads,
	.copy_rows = cpu_copy_rows,
	.glu = cpu_glu,
	.ffn = cpu_ffn,
	.route = cpu_route,
	.combine = cpu_combine,
	.add = cpu_add,
	.add_bias = cpu_add_bias,
	.scale = cpu_scale,
	.scale_rows = cpu_scale_rows,
	.mul = cpu_mul,
	.softcap = cpu_softcap,
};

static int cpu_probe(void)
{
	return 0;
}

static int cpu_create(const struct moe_backend_params *p, struct moe_backend **out)
{
	struct moe_backend *be = calloc(1, sizeof(*be));
	struct cpu *c = calloc(1, sizeof(*c));

	*out = NULL;
	if (!be || !c) {
		free(be);
		free(c);
		return moe_err(ENOMEM, "out of memory creating the CPU backend");
	}
	be->ops = &cpu_ops;
	be->desc = &moe_backend_cpu_desc;
	be->priv = c;
	c->pool = p->pool;
	c->budget = p->budget ? p->budget : UINT64_MAX;
	if (p->flags & MOE_BE_F_GUARD) {
		c->guard = true;
		c->reserve = p->budget ? MOE_ALIGN_UP(p->budget, GUARD_PAGE) * 2 + (64ull << 20) :
			     GUARD_RESERVE;
		c->base = mmap(NULL, c->reserve, PROT_NONE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
		if (c->base == MAP_FAILED) {
			free(be);
			free(c);
			return moe_err(ENOMEM, "cannot reserve %llu bytes for the guarded arena",
				       (unsigned long long)GUARD_RESERVE);
		}
		pthread_mutex_init(&c->guard_lock, NULL);
	}
	*out = be;
	return 0;
}

const struct moe_backend_desc moe_backend_cpu_desc = {
	.name = "cpu",
	.align = CPU_ALIGN,
	.workspace_bytes = cpu_workspace_bytes,
	.probe = cpu_probe,
	.create = cpu_create,
};
