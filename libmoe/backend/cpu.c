/* SPDX-License-Identifier: MIT */
/*
 * The CPU backend: "device" memory is host memory counted against a budget,
 * an upload is a memcpy, and the kernels run on the thread pool.  It is the
 * reference the other backends are checked against, so every kernel keeps a
 * fixed order of floating-point operations whatever the thread count.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "quant/quant.h"
#include "util/threadpool.h"
#include "util/util.h"

#define CPU_ALIGN 64

static void run(struct moe_backend *be, void (*fn)(void *, int, int), void *arg)
{
	if (be->pool)
		moe_threadpool_run(be->pool, fn, arg);
	else
		fn(arg, 0, 1);
}

static int cpu_alloc(struct moe_backend *be, uint64_t bytes, void **out)
{
	uint64_t sz = MOE_ALIGN_UP(bytes ? bytes : 1, CPU_ALIGN);
	void *p;

	if (be->used + sz > be->budget)
		return moe_err(ENOMEM, "device budget: %llu bytes wanted, %llu of %llu in use",
			       (unsigned long long)sz, (unsigned long long)be->used,
			       (unsigned long long)be->budget);
	p = aligned_alloc(CPU_ALIGN, sz);
	if (!p)
		return moe_err(ENOMEM, "out of host memory allocating %llu bytes",
			       (unsigned long long)sz);
	be->used += sz;
	if (be->used > be->peak)
		be->peak = be->used;
	*out = p;
	return 0;
}

static void cpu_free(struct moe_backend *be, void *p, uint64_t bytes)
{
	if (!p)
		return;
	be->used -= MOE_ALIGN_UP(bytes ? bytes : 1, CPU_ALIGN);
	free(p);
}

static int cpu_upload(struct moe_backend *be, void *dst, const void *src, uint64_t bytes,
		      struct moe_be_event *ev)
{
	(void)be;
	memcpy(dst, src, bytes);
	if (ev)
		ev->done = true;
	return 0;
}

static int cpu_download(struct moe_backend *be, void *dst, const void *src, uint64_t bytes)
{
	(void)be;
	memcpy(dst, src, bytes);
	return 0;
}

static int cpu_sync(struct moe_backend *be, struct moe_be_event *ev)
{
	(void)be;
	(void)ev;
	return 0;
}

static int cpu_matmul(struct moe_backend *be, uint32_t wtype, const void *w, int64_t rows,
		      int64_t cols, const float *x, int64_t n_tok, float *y)
{
	return moe_matmul(be->pool, wtype, w, rows, cols, x, n_tok, y);
}

static int cpu_get_row(struct moe_backend *be, uint32_t wtype, const void *w, int64_t cols,
		       int64_t row, float *dst)
{
	(void)be;
	return moe_dequant_row(wtype, w, cols, row, dst);
}

static void cpu_rms_norm(struct moe_backend *be, const float *x, float *y, int64_t n_vec,
			 int64_t n, const float *w, float eps)
{
	(void)be;
	for (int64_t v = 0; v < n_vec; v++) {
		const float *xv = x + v * n;
		float *yv = y + v * n;
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
	float mscale = r->attn_factor;

	if (r->ext_factor != 0.0f)
		mscale *= 1.0f + 0.1f * logf(1.0f / r->freq_scale);
	for (uint32_t i = 0; i < half; i++) {
		double ext = pos * pow(r->base, -2.0 * i / r->n_rot);
		double theta;

		if (r->freq_factors)
			ext /= r->freq_factors[i];
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

static void cpu_rope(struct moe_backend *be, float *x, uint32_t n_tok, uint32_t n_head,
		     uint32_t head_dim, const int32_t *pos, const struct moe_rope *r)
{
	uint32_t half = MOE_MIN(r->n_rot / 2, MOE_ROPE_MAX_PAIRS);
	float cs[MOE_ROPE_MAX_PAIRS], sn[MOE_ROPE_MAX_PAIRS];

	(void)be;
	if (r->mode == MOE_ROTATE_NONE || !half)
		return;
	for (uint32_t t = 0; t < n_tok; t++) {
		rope_angles(r, pos[t], cs, sn);
		for (uint32_t h = 0; h < n_head; h++) {
			float *v = x + ((size_t)t * n_head + h) * head_dim;

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

struct attn_job {
	const struct moe_attn_args *a;
};

/*
 * One query head, with a running maximum (online softmax) so that no score
 * buffer is needed whatever the context length.
 */
static void attn_one(const struct moe_attn_args *a, uint32_t t, uint32_t h)
{
	uint32_t hd = a->head_dim, kvh = h / (a->n_head / a->n_head_kv);
	size_t kv_stride = (size_t)a->n_head_kv * hd;
	const float *q = a->q + ((size_t)t * a->n_head + h) * hd;
	float *o = a->out + ((size_t)t * a->n_head + h) * hd;
	int64_t p = a->pos[t], lo = 0, hi = MOE_MIN(p, (int64_t)a->n_kv - 1);
	float mx = -INFINITY, sum = 0;

	if (a->mask == MOE_MASK_SLIDING && a->window)
		lo = MOE_MAX(0, p - (int64_t)a->window + 1);
	else if (a->mask == MOE_MASK_CHUNKED && a->window)
		lo = p / a->window * a->window;
	memset(o, 0, sizeof(float) * hd);
	for (int64_t j = lo; j <= hi; j++) {
		const float *k = a->k + j * kv_stride + (size_t)kvh * hd;
		const float *v = a->v + j * kv_stride + (size_t)kvh * hd;
		float d = 0, e;

		for (uint32_t i = 0; i < hd; i++)
			d += q[i] * k[i];
		d *= a->scale;
		if (d > mx) {
			float r = expf(mx - d);

			for (uint32_t i = 0; i < hd; i++)
				o[i] *= r;
			sum *= r;
			mx = d;
		}
		e = expf(d - mx);
		sum += e;
		for (uint32_t i = 0; i < hd; i++)
			o[i] += e * v[i];
	}
	if (a->sinks) {
		float s = a->sinks[h];

		if (s > mx) {
			float r = expf(mx - s);

			for (uint32_t i = 0; i < hd; i++)
				o[i] *= r;
			sum *= r;
			mx = s;
		}
		sum += expf(s - mx);
	}
	if (sum > 0) {
		float inv = 1.0f / sum;

		for (uint32_t i = 0; i < hd; i++)
			o[i] *= inv;
	}
}

static void attn_worker(void *arg, int ith, int nth)
{
	const struct moe_attn_args *a = ((struct attn_job *)arg)->a;
	uint32_t n = a->n_tok * a->n_head;

	for (uint32_t i = ith; i < n; i += nth)
		attn_one(a, i / a->n_head, i % a->n_head);
}

static void cpu_attention(struct moe_backend *be, const struct moe_attn_args *a)
{
	struct attn_job job = { .a = a };

	/* a fork-join costs more than a short decode-time attention */
	if ((uint64_t)a->n_tok * a->n_head * a->n_kv * a->head_dim < (1u << 18))
		attn_worker(&job, 0, 1);
	else
		run(be, attn_worker, &job);
}

float moe_gelu_tanh(float x)
{
	const float c = 0.7978845608028654f;   /* sqrt(2/pi) */

	return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
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

		for (int64_t i = 0; i < j->n; i++) {
			float x = g[i], y = u[i];

			switch (j->act) {
			case MOE_GLU_SILU:
				o[i] = x / (1.0f + expf(-x)) * y;
				break;
			case MOE_GLU_GELU:
				o[i] = moe_gelu_tanh(x) * y;
				break;
			case MOE_GLU_SWIGLU_OAI:
				x = MOE_MIN(x, 7.0f);
				y = MOE_MAX(-7.0f, MOE_MIN(y, 7.0f));
				o[i] = x / (1.0f + expf(-1.702f * x)) * (y + 1.0f);
				break;
			}
		}
	}
}

static void cpu_glu(struct moe_backend *be, enum moe_glu act, const float *gate, const float *up,
		    int64_t stride, int64_t n_tok, int64_t n, float *out)
{
	struct glu_job j = { act, gate, up, stride, n_tok, n, out };

	if (n_tok * n < 65536)
		glu_worker(&j, 0, 1);
	else
		run(be, glu_worker, &j);
}

static void cpu_add(struct moe_backend *be, float *y, const float *x, int64_t n)
{
	(void)be;
	for (int64_t i = 0; i < n; i++)
		y[i] += x[i];
}

static void cpu_add_bias(struct moe_backend *be, float *y, const float *b, int64_t n_tok,
			 int64_t n)
{
	(void)be;
	for (int64_t t = 0; t < n_tok; t++)
		for (int64_t i = 0; i < n; i++)
			y[t * n + i] += b[i];
}

static void cpu_scale(struct moe_backend *be, float *x, float s, int64_t n)
{
	(void)be;
	for (int64_t i = 0; i < n; i++)
		x[i] *= s;
}

static void cpu_destroy(struct moe_backend *be)
{
	free(be);
}

static const struct moe_backend_ops cpu_ops = {
	.name = "cpu",
	.destroy = cpu_destroy,
	.alloc = cpu_alloc,
	.free = cpu_free,
	.upload = cpu_upload,
	.sync = cpu_sync,
	.download = cpu_download,
	.matmul = cpu_matmul,
	.get_row = cpu_get_row,
	.rms_norm = cpu_rms_norm,
	.rope = cpu_rope,
	.attention = cpu_attention,
	.glu = cpu_glu,
	.add = cpu_add,
	.add_bias = cpu_add_bias,
	.scale = cpu_scale,
};

int moe_backend_cpu_create(uint64_t budget, struct moe_threadpool *pool,
			   struct moe_backend **out)
{
	struct moe_backend *be = calloc(1, sizeof(*be));

	if (!be)
		return moe_err(ENOMEM, "out of memory creating the CPU backend");
	be->ops = &cpu_ops;
	be->pool = pool;
	be->budget = budget ? budget : UINT64_MAX;
	*out = be;
	return 0;
}

void moe_backend_destroy(struct moe_backend *be)
{
	if (be)
		be->ops->destroy(be);
}
