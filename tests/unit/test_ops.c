/* SPDX-License-Identifier: MIT */
/*
 * The op conformance suite: every operation of the backend table on random
 * inputs of awkward shapes (odd lengths, one token and many, every weight
 * type, every mask and KV type, sequences and rings), against a naive
 * float64 evaluation written here, for every backend in ops_backends.c.
 *
 * Quantized weights enter the reference dequantized (exactly); activations
 * enter it unrounded, so the tolerance of a product is the rounding a backend
 * may apply to its activations: at most half a quantization step per
 * element, |err| <= sum_i |w_i| * amax(block of x_i) / 254 (q8_0/q8_K).
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "ops_backends.h"
#include "quant/quant.h"
#include "testutil.h"
#include "util/util.h"

#define MAX_ALLOCS 8192

static struct moe_backend *be;
static moe_dptr allocs[MAX_ALLOCS];
static unsigned n_allocs;
static uint64_t rs;
static int cur;                 /* the row of ops_backends[] under test */

static moe_dptr dev(size_t bytes);

/* Large enough for every shape below, sized by the backend's own formula. */
static const struct moe_be_shape ws_shape = {
	.max_tok = 32, .max_ent = 64, .n_embd = 1024, .max_cols = 1024, .max_ff = 512,
	.max_head = 8, .max_head_dim = 64, .max_ffn = 8, .max_heads_io = 320,
};

static void open_backend(int i)
{
	const struct ops_backend *b = &ops_backends[i];
	uint64_t ws;

	ck_assert_msg(b->create(0, &be) == 0, "%s: %s", b->name, moe_errmsg());
	cur = i;
	n_allocs = 0;
	rs = 0x5eed0000u + (uint64_t)i;
	ws = be->desc->workspace_bytes(&ws_shape);
	ck_assert_int_eq(be->ops->set_workspace(be, dev(ws), ws), 0);
}

static void close_backend(int i)
{
	ck_assert_int_eq(be->ops->sync(be), 0);
	for (unsigned k = 0; k < n_allocs; k++)
		be->ops->free(be, allocs[k]);
	ops_backends[i].destroy(be);
	be = NULL;
}

static moe_dptr dev(size_t bytes)
{
	moe_dptr d;

	ck_assert_msg(be->ops->alloc(be, bytes, &d) == 0, "alloc %zu: %s", bytes, moe_errmsg());
	ck_assert_uint_lt(n_allocs, MAX_ALLOCS);
	allocs[n_allocs++] = d;
	return d;
}

static moe_dptr up(const void *host, size_t bytes)
{
	moe_dptr d = dev(bytes);

	ck_assert_int_eq(be->ops->upload(be, MOE_BE_COMPUTE, d, host, bytes), 0);
	return d;
}

/* Device memory back to the host, after the work queued so far. */
static void down(void *host, moe_dptr d, size_t bytes)
{
	ck_assert_int_eq(be->ops->download(be, MOE_BE_COMPUTE, host, d, bytes), 0);
	ck_assert_int_eq(be->ops->sync(be), 0);
}

static float *randf(size_t n, double scale)
{
	float *x = malloc(sizeof(float) * (n ? n : 1));

	for (size_t i = 0; i < n; i++)
		x[i] = (float)(tu_randn(&rs) * scale);
	return x;
}

static void check_close(const char *what, const float *got, const double *want, size_t n,
			double tol)
{
	for (size_t i = 0; i < n; i++)
		ck_assert_msg(fabs(got[i] - want[i]) <= tol * fmax(1.0, fabs(want[i])),
			      "%s: [%zu] %.9g vs %.9g (tol %g)", what, i, got[i], want[i], tol);
}

/* The backend under test has no matrix kernels for @type (the suite reports it skipped). */
static bool lacks(uint32_t type)
{
	const struct ops_backend *b = &ops_backends[cur];

	return b->lacks_type && b->lacks_type(type);
}

/* Weight types with CPU kernels, as the file formats store them. */
static const uint32_t wtypes[] = {
	MOE_TYPE_F32, MOE_TYPE_F16, MOE_TYPE_BF16, MOE_TYPE_Q4_0, MOE_TYPE_Q4_1, MOE_TYPE_Q5_0,
	MOE_TYPE_Q5_1, MOE_TYPE_Q8_0, MOE_TYPE_Q4_K, MOE_TYPE_Q5_K, MOE_TYPE_Q6_K,
	MOE_TYPE_MXFP4,
};

/* A random matrix of @type: its bytes and its exact values as doubles. */
struct wmat {
	uint32_t type;
	int64_t rows, cols;
	void *q;
	size_t bytes;
	double *w;
};

static void make_wmat(struct wmat *m, uint32_t type, int64_t rows, int64_t cols)
{
	float *f = randf((size_t)(rows * cols), 0.5), *row = malloc(sizeof(float) * cols);
	int64_t rb = moe_type_row_bytes(type, (uint64_t)cols);

	ck_assert_msg(rb > 0, "%s row of %lld", moe_type_name(type), (long long)cols);
	m->type = type;
	m->rows = rows;
	m->cols = cols;
	m->bytes = (size_t)(rb * rows);
	m->q = malloc(m->bytes ? m->bytes : 1);
	m->w = malloc(sizeof(double) * rows * cols);
	for (int64_t r = 0; r < rows; r++) {
		ck_assert_int_eq(moe_quantize(type, f + r * cols, (uint8_t *)m->q + r * rb, cols), rb);
		ck_assert_int_eq(moe_dequantize(type, (uint8_t *)m->q + r * rb, row, cols), 0);
		for (int64_t c = 0; c < cols; c++)
			m->w[r * cols + c] = row[c];
	}
	free(f);
	free(row);
}

static void free_wmat(struct wmat *m)
{
	free(m->q);
	free(m->w);
}

static struct moe_be_mat dev_mat(const struct wmat *m)
{
	return (struct moe_be_mat){ .p = up(m->q, m->bytes), .type = m->type, .rows = m->rows,
				    .cols = m->cols };
}

/* The activation block a backend may round x to for @wtype: 1 (none), 32 or 256. */
static int act_block(uint32_t wtype)
{
	const struct moe_type_traits *t = moe_type_traits(wtype);

	if (t->vec_dot_type == MOE_TYPE_F32)
		return 1;
	return (int)moe_type_block_elems(t->vec_dot_type);
}

/* y = W x in double, and the bound on a backend's error for it. */
static void ref_dot(const double *w, const float *x, int64_t cols, int blk, double *y,
		    double *tol)
{
	double s = 0, t = 0, mag = 0;

	for (int64_t c0 = 0; c0 < cols; c0 += blk) {
		double amax = 0;

		for (int64_t c = c0; c < c0 + blk && c < cols; c++)
			amax = fmax(amax, fabs(x[c]));
		for (int64_t c = c0; c < c0 + blk && c < cols; c++) {
			s += w[c] * x[c];
			mag += fabs(w[c] * x[c]);
			if (blk > 1)
				t += fabs(w[c]) * amax / 254.0;
		}
	}
	*y = s;
	/* the rounding of x, plus float accumulation */
	*tol = 1.25 * t + 2e-6 * mag + 1e-6;
}

/* ------------------------------------------------------------ memory, copies, events */

START_TEST(ops_memory)
{
	struct moe_be_event *ev;
	struct moe_be_mem mem;
	uint8_t a[1000], b[1000];
	moe_dptr d1, d2, big;
	uint64_t base;

	open_backend(_i);
	be->ops->mem_info(be, &mem);
	base = mem.used;
	for (size_t i = 0; i < sizeof(a); i++)
		a[i] = (uint8_t)(i * 7 + 3);
	d1 = up(a, sizeof(a));
	d2 = dev(sizeof(a));
	ck_assert_int_eq(be->ops->copy(be, MOE_BE_COMPUTE, d2 + 1, d1, sizeof(a) - 1), 0);
	down(b + 1, d2 + 1, sizeof(a) - 1);
	ck_assert_mem_eq(b + 1, a, sizeof(a) - 1);
	/* the copy queue, ordered by an event */
	ck_assert_int_eq(be->ops->event_create(be, &ev), 0);
	memset(b, 0, sizeof(b));
	ck_assert_int_eq(be->ops->upload(be, MOE_BE_COPY, d2, b, sizeof(b)), 0);
	ck_assert_int_eq(be->ops->event_record(be, MOE_BE_COPY, ev), 0);
	ck_assert_int_eq(be->ops->queue_wait(be, MOE_BE_COMPUTE, ev), 0);
	ck_assert_int_eq(be->ops->event_sync(be, ev), 0);
	ck_assert_int_eq(be->ops->event_query(be, ev), 1);
	memset(a, 0xff, sizeof(a));
	down(a, d2, sizeof(a));
	for (size_t i = 0; i < sizeof(a); i++)
		ck_assert_uint_eq(a[i], 0);
	be->ops->event_destroy(be, ev);
	be->ops->mem_info(be, &mem);
	ck_assert_uint_ge(mem.used, base + 2 * sizeof(a));
	ck_assert_uint_ge(mem.peak, mem.used);
	ck_assert_int_eq(be->ops->alloc(be, 1 << 20, &big), 0);
	be->ops->free(be, big);
	be->ops->mem_info(be, &mem);
	ck_assert_uint_ge(mem.peak, base + (1 << 20));
	close_backend(_i);
}
END_TEST

/* The budget is enforced by the backend itself, and freeing gives it back. */
START_TEST(ops_budget)
{
	const struct ops_backend *b = &ops_backends[_i];
	struct moe_be_mem mem;
	moe_dptr x, y;

	ck_assert_msg(b->create(1 << 20, &be) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(be->ops->alloc(be, 700 << 10, &x), 0);
	ck_assert_int_eq(be->ops->alloc(be, 400 << 10, &y), -ENOMEM);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "budget"));
	be->ops->free(be, x);
	be->ops->mem_info(be, &mem);
	ck_assert_uint_eq(mem.used, 0);
	ck_assert_uint_ge(mem.peak, 700 << 10);
	ck_assert_int_eq(be->ops->alloc(be, 1 << 20, &y), 0);
	be->ops->free(be, y);
	b->destroy(be);
	be = NULL;
}
END_TEST

/* ------------------------------------------------------------ embeddings, conversions */

START_TEST(ops_get_rows)
{
	int32_t ids[] = { 5, 0, 6, 5, 2 };
	uint32_t n = MOE_ARRAY_SIZE(ids);

	open_backend(_i);
	for (size_t ti = 0; ti < MOE_ARRAY_SIZE(wtypes); ti++) {
		uint32_t type = wtypes[ti], blk = moe_type_block_elems(type);
		int64_t cols = blk == 1 ? 37 : 2 * blk;
		struct wmat m;
		struct moe_be_mat w;
		moe_dptr out;
		float *got;
		double *want;

		if (lacks(type))
			continue;
		got = malloc(sizeof(float) * n * cols);
		want = malloc(sizeof(double) * n * cols);
		make_wmat(&m, type, 7, cols);
		w = dev_mat(&m);
		out = dev(sizeof(float) * n * cols);
		ck_assert_int_eq(be->ops->get_rows(be, &w, up(ids, sizeof(ids)), n, out), 0);
		down(got, out, sizeof(float) * n * cols);
		for (uint32_t i = 0; i < n; i++)
			for (int64_t c = 0; c < cols; c++)
				want[i * cols + c] = m.w[ids[i] * cols + c];
		check_close(moe_type_name(type), got, want, (size_t)(n * cols), 1e-6);
		free_wmat(&m);
		free(got);
		free(want);
	}
	close_backend(_i);
}
END_TEST

START_TEST(ops_to_f32)
{
	static const uint32_t types[] = { MOE_TYPE_F32, MOE_TYPE_F16, MOE_TYPE_BF16 };

	open_backend(_i);
	for (size_t ti = 0; ti < MOE_ARRAY_SIZE(types); ti++) {
		struct wmat m;
		float got[301];
		moe_dptr out = dev(sizeof(got));

		make_wmat(&m, types[ti], 1, 301);
		ck_assert_int_eq(be->ops->to_f32(be, types[ti], up(m.q, m.bytes), 301, out), 0);
		down(got, out, sizeof(got));
		check_close(moe_type_name(types[ti]), got, m.w, 301, 0);
		free_wmat(&m);
	}
	close_backend(_i);
}
END_TEST

/* ------------------------------------------------------------ matrix products */

static void matmul_case(uint32_t type, int64_t rows, int64_t cols, uint32_t n_tok)
{
	struct wmat m;
	struct moe_be_mat w;
	float *x = randf((size_t)(n_tok * cols), 1.0), *got = malloc(sizeof(float) * n_tok * rows);
	moe_dptr y = dev(sizeof(float) * n_tok * rows);
	int blk = act_block(type);

	make_wmat(&m, type, rows, cols);
	w = dev_mat(&m);
	ck_assert_msg(be->ops->matmul(be, &w, 1, up(x, sizeof(float) * n_tok * cols), n_tok,
				      &y) == 0, "%s", moe_errmsg());
	down(got, y, sizeof(float) * n_tok * rows);
	for (uint32_t t = 0; t < n_tok; t++)
		for (int64_t r = 0; r < rows; r++) {
			double want, tol;

			ref_dot(m.w + r * cols, x + t * cols, cols, blk, &want, &tol);
			ck_assert_msg(fabs(got[t * rows + r] - want) <= tol,
				      "%s %lldx%lld tok %u row %lld: %.8g vs %.8g (tol %g)",
				      moe_type_name(type), (long long)rows, (long long)cols, t,
				      (long long)r, got[t * rows + r], want, tol);
		}
	free_wmat(&m);
	free(x);
	free(got);
}

START_TEST(ops_matmul)
{
	static const uint32_t toks[] = { 1, 2, 5, 17 };
	static const int64_t rows[] = { 1, 7, 33 };

	open_backend(_i);
	for (size_t ti = 0; ti < MOE_ARRAY_SIZE(wtypes); ti++) {
		uint32_t blk = moe_type_block_elems(wtypes[ti]);

		if (lacks(wtypes[ti]))
			continue;
		for (size_t r = 0; r < MOE_ARRAY_SIZE(rows); r++)
			for (size_t t = 0; t < MOE_ARRAY_SIZE(toks); t++)
				matmul_case(wtypes[ti], rows[r], blk == 1 ? 45 : 2 * blk, toks[t]);
		/* a longer row: several activation blocks of each kind */
		matmul_case(wtypes[ti], 5, blk == 1 ? 1000 : 4 * blk, 3);
	}
	close_backend(_i);
}
END_TEST

/* Three matrices of different types sharing one input, as q/k/v do. */
START_TEST(ops_matmul_fused)
{
	static const uint32_t types[3] = { MOE_TYPE_Q4_K, MOE_TYPE_Q8_0, MOE_TYPE_F16 };
	static const int64_t rows[3] = { 12, 5, 9 };
	const int64_t cols = 512;
	const uint32_t n_tok = 6;
	struct wmat m[3];
	struct moe_be_mat w[3];
	moe_dptr y[3], xd;
	float *x = randf(n_tok * cols, 1.0);

	open_backend(_i);
	if (lacks(types[0]) || lacks(types[1]) || lacks(types[2])) {
		free(x);
		close_backend(_i);
		return;
	}
	xd = up(x, sizeof(float) * n_tok * cols);
	for (int i = 0; i < 3; i++) {
		make_wmat(&m[i], types[i], rows[i], cols);
		w[i] = dev_mat(&m[i]);
		y[i] = dev(sizeof(float) * n_tok * rows[i]);
	}
	ck_assert_msg(be->ops->matmul(be, w, 3, xd, n_tok, y) == 0, "%s", moe_errmsg());
	for (int i = 0; i < 3; i++) {
		float got[6 * 12];

		down(got, y[i], sizeof(float) * n_tok * rows[i]);
		for (uint32_t t = 0; t < n_tok; t++)
			for (int64_t r = 0; r < rows[i]; r++) {
				double want, tol;

				ref_dot(m[i].w + r * cols, x + t * cols, cols, act_block(types[i]),
					&want, &tol);
				ck_assert_msg(fabs(got[t * rows[i] + r] - want) <= tol,
					      "mat %d tok %u row %lld: %g vs %g", i, t, (long long)r,
					      got[t * rows[i] + r], want);
			}
		free_wmat(&m[i]);
	}
	free(x);
	close_backend(_i);
}
END_TEST

/*
 * Per-head products over strided inputs and outputs (MLA's absorbed
 * attn_k_b and attn_v_b): padding between heads and tokens stays untouched.
 */
START_TEST(ops_matmul_heads)
{
	static const uint32_t types[] = { MOE_TYPE_F32, MOE_TYPE_F16, MOE_TYPE_Q8_0, MOE_TYPE_Q4_K };
	const uint32_t H = 3, n_tok = 5, rows = 7;

	open_backend(_i);
	for (size_t ti = 0; ti < MOE_ARRAY_SIZE(types); ti++) {
		uint32_t cols = moe_type_block_elems(types[ti]) == 256 ? 256 : 64;
		uint32_t xh = cols + 3, xt = H * xh + 5, yh = rows + 2, yt = H * yh + 1;
		float *x, *got;
		moe_dptr yd;
		struct wmat m;
		struct moe_heads_args a;

		if (lacks(types[ti]))
			continue;
		x = randf((size_t)n_tok * xt, 1.0);
		got = malloc(sizeof(float) * n_tok * yt);

		for (uint32_t i = 0; i < n_tok * yt; i++)
			got[i] = 777.0f;
		yd = up(got, sizeof(float) * n_tok * yt);
		make_wmat(&m, types[ti], (int64_t)H * rows, cols);
		a = (struct moe_heads_args){ .w = dev_mat(&m), .n_head = H, .n_tok = n_tok,
					     .x = up(x, sizeof(float) * n_tok * xt), .y = yd,
					     .x_tok = xt, .x_head = xh, .y_tok = yt, .y_head = yh };
		a.w.rows = rows;
		ck_assert_msg(be->ops->matmul_heads(be, &a) == 0, "%s", moe_errmsg());
		down(got, yd, sizeof(float) * n_tok * yt);
		for (uint32_t t = 0; t < n_tok; t++)
			for (uint32_t i = 0; i < yt; i++) {
				uint32_t h = i / yh, r = i % yh;
				double want = 777.0, tol = 0;

				if (h < H && r < rows)
					ref_dot(m.w + ((size_t)h * rows + r) * cols, x + t * xt + h * xh,
						cols, act_block(types[ti]), &want, &tol);
				ck_assert_msg(fabs(got[t * yt + i] - want) <= tol, "%s tok %u head %u "
					      "row %u: %.8g vs %.8g", moe_type_name(types[ti]), t, h, r,
					      got[t * yt + i], want);
			}
		free_wmat(&m);
		free(x);
		free(got);
	}
	close_backend(_i);
}
END_TEST

START_TEST(ops_copy_rows)
{
	float src[6 * 10], dst[6 * 7], want[6 * 7];
	moe_dptr sd, dd;

	open_backend(_i);
	for (int i = 0; i < 60; i++)
		src[i] = (float)i;
	for (int i = 0; i < 42; i++)
		dst[i] = want[i] = -1.0f;
	for (int r = 0; r < 6; r++)
		for (int i = 0; i < 4; i++)
			want[r * 7 + 2 + i] = src[r * 10 + 5 + i];
	sd = up(src, sizeof(src));
	dd = up(dst, sizeof(dst));
	ck_assert_int_eq(be->ops->copy_rows(be, dd + 2 * sizeof(float), 7, sd + 5 * sizeof(float),
					    10, 4, 6), 0);
	down(dst, dd, sizeof(dst));
	for (int i = 0; i < 42; i++)
		ck_assert_msg(dst[i] == want[i], "[%d] %g vs %g", i, dst[i], want[i]);
	close_backend(_i);
}
END_TEST

/* ------------------------------------------------------------ norms, rope */

START_TEST(ops_rms_norm)
{
	static const int64_t ns[] = { 1, 7, 256, 1001 };

	open_backend(_i);
	for (size_t k = 0; k < MOE_ARRAY_SIZE(ns); k++)
		for (int weighted = 0; weighted < 2; weighted++)
			for (int inplace = 0; inplace < 2; inplace++) {
				int64_t n = ns[k], nv = 3;
				float *x = randf((size_t)(n * nv), 2.0), *w = randf((size_t)n, 1.0);
				float *got = malloc(sizeof(float) * n * nv);
				double *want = malloc(sizeof(double) * n * nv);
				moe_dptr xd = up(x, sizeof(float) * n * nv);
				moe_dptr yd = inplace ? xd : dev(sizeof(float) * n * nv);

				ck_assert_int_eq(be->ops->rms_norm(be, xd, yd, nv, n,
								   weighted ? up(w, sizeof(float) * n) :
								   0, 1e-5f), 0);
				down(got, yd, sizeof(float) * n * nv);
				for (int64_t v = 0; v < nv; v++) {
					double ss = 0;

					for (int64_t i = 0; i < n; i++)
						ss += (double)x[v * n + i] * x[v * n + i];
					for (int64_t i = 0; i < n; i++)
						want[v * n + i] = x[v * n + i] / sqrt(ss / n + 1e-5) *
								  (weighted ? w[i] : 1.0);
				}
				check_close("rms_norm", got, want, (size_t)(n * nv), 2e-6);
				free(x);
				free(w);
				free(got);
				free(want);
			}
	close_backend(_i);
}
END_TEST

/* RoPE of both pairings, partial rotation, frequency factors and YaRN, against the formula. */
START_TEST(ops_rope)
{
	enum { T = 4, H = 3, D = 24, R = 16 };
	int32_t pos[T] = { 0, 5, 1000, 77777 };
	float x[T * H * D], y[T * H * D], ff[R / 2];

	open_backend(_i);
	for (int i = 0; i < R / 2; i++)
		ff[i] = i % 2 ? 1.0f : 4.0f;
	for (size_t i = 0; i < MOE_ARRAY_SIZE(x); i++)
		x[i] = (float)tu_randn(&rs);
	for (int mode = MOE_ROTATE_NORM; mode <= MOE_ROTATE_NEOX; mode++)
		for (int yarn = 0; yarn < 2; yarn++)
			for (int factors = 0; factors < 2; factors++) {
				struct moe_rope r = {
					.mode = mode, .n_rot = R, .base = 10000.0f,
					.freq_scale = yarn ? 0.25f : 1.0f, .attn_factor = 1.0f,
					.freq_factors = factors ? up(ff, sizeof(ff)) : 0,
					.ext_factor = yarn ? 1.0f : 0.0f,
				};
				moe_dptr xd = up(x, sizeof(x));

				if (yarn)
					moe_rope_yarn_corr(R, 64, r.base, 32, 1, &r.corr_lo, &r.corr_hi);
				ck_assert_int_eq(be->ops->rope(be, xd, T, H, D, up(pos, sizeof(pos)), &r),
						 0);
				down(y, xd, sizeof(y));
				for (int t = 0; t < T; t++)
					for (int h = 0; h < H; h++) {
						const float *a = x + (t * H + h) * D, *b = y + (t * H + h) * D;

						for (int i = 0; i < R / 2; i++) {
							int i0 = mode == MOE_ROTATE_NEOX ? i : 2 * i;
							int i1 = mode == MOE_ROTATE_NEOX ? i + R / 2 : 2 * i + 1;
							double th = pos[t] * pow(10000.0, -2.0 * i / R) /
								    (factors ? ff[i] : 1.0);
							double m = 1, c0, s0;
							/* float angles at large positions: a loose bound */
							double tol = 1e-4 + 1e-7 * pos[t];

							if (yarn) {
								double ramp = (i - r.corr_lo) /
									      fmax(0.001, r.corr_hi - r.corr_lo);
								double mix = 1 - fmin(1, fmax(0, ramp));

								th = th * 0.25 * (1 - mix) + th * mix;
								m = 1 + 0.1 * log(4.0);
							}
							c0 = cos(th) * m;
							s0 = sin(th) * m;
							ck_assert_msg(fabs(b[i0] - (a[i0] * c0 - a[i1] * s0)) < tol,
								      "mode %d yarn %d t %d i %d", mode, yarn,
								      t, i);
							ck_assert(fabs(b[i1] - (a[i0] * s0 + a[i1] * c0)) < tol);
						}
						for (int i = R; i < D; i++)
							ck_assert_float_eq(b[i], a[i]);
					}
			}
	close_backend(_i);
}
END_TEST

/* ------------------------------------------------------------ KV cache and attention */

struct attn_case {
	uint32_t kv_type, head_dim, n_head, n_head_kv;
	enum moe_attn_mask mask;
	uint32_t window, n_cells, n_seq;
	bool sinks;
	float softcap;
	uint32_t latent_v;          /* values read from the keys' first latent_v (no V rows) */
};

static const struct attn_case attn_cases[] = {
	{ MOE_TYPE_F32, 16, 4, 2, MOE_MASK_CAUSAL, 0, 24, 1, false, 0 },
	{ MOE_TYPE_F32, 16, 4, 4, MOE_MASK_SLIDING, 3, 24, 1, false, 0 },
	{ MOE_TYPE_F32, 8, 6, 2, MOE_MASK_CHUNKED, 4, 24, 1, false, 0 },
	{ MOE_TYPE_F32, 16, 4, 1, MOE_MASK_CAUSAL, 0, 24, 2, true, 0 },
	{ MOE_TYPE_F32, 16, 2, 2, MOE_MASK_SLIDING, 2, 24, 1, true, 5.0f },
	{ MOE_TYPE_F16, 32, 4, 2, MOE_MASK_CAUSAL, 0, 24, 3, false, 0 },
	{ MOE_TYPE_Q8_0, 64, 2, 1, MOE_MASK_CAUSAL, 0, 24, 2, true, 0 },
	{ MOE_TYPE_Q8_0, 32, 4, 2, MOE_MASK_SLIDING, 5, 24, 1, false, 30.0f },
	/* rings: fewer cells than positions, a window that fits them */
	{ MOE_TYPE_F32, 16, 4, 2, MOE_MASK_SLIDING, 4, 7, 2, true, 0 },
	{ MOE_TYPE_F16, 32, 2, 2, MOE_MASK_CHUNKED, 5, 8, 1, false, 0 },
	/* latent caches (MLA): one KV head whose keys carry the values */
	{ MOE_TYPE_F32, 48, 4, 1, MOE_MASK_CAUSAL, 0, 24, 1, false, 0, 32 },
	{ MOE_TYPE_F16, 24, 3, 1, MOE_MASK_SLIDING, 5, 24, 2, false, 0, 16 },
	{ MOE_TYPE_Q8_0, 96, 2, 1, MOE_MASK_CAUSAL, 0, 24, 1, false, 0, 64 },
};

/* K/V as stored in the cache: rounded through the KV type. */
static void kv_round(uint32_t type, float *x, int64_t n)
{
	uint8_t *q;

	if (type == MOE_TYPE_F32)
		return;
	q = malloc((size_t)moe_type_row_bytes(type, (uint64_t)n));
	ck_assert_int_eq(moe_quantize(type, x, q, n), moe_type_row_bytes(type, (uint64_t)n));
	ck_assert_int_eq(moe_dequantize(type, q, x, n), 0);
	free(q);
}

/*
 * Positions 0..N-1 of each sequence are stored in steps of 3 tokens, and
 * every step's queries attend right after it, the way the forward pass
 * runs a prompt in batches.
 */
START_TEST(ops_attention)
{
	const int N = 12, STEP = 3;

	open_backend(_i);
	for (size_t ci = 0; ci < MOE_ARRAY_SIZE(attn_cases); ci++) {
		const struct attn_case *ac = &attn_cases[ci];
		uint32_t hd = ac->head_dim, kvd = ac->n_head_kv * hd, nq = ac->n_head * hd;
		uint32_t hv = ac->latent_v ? ac->latent_v : hd, no = ac->n_head * hv;
		uint32_t S = ac->n_seq, row = (uint32_t)moe_kv_row_bytes(ac->kv_type, kvd);
		float *K = randf((size_t)S * N * kvd, 1.0), *V = randf((size_t)S * N * kvd, 1.0);
		float *Q = randf((size_t)S * N * nq, 1.0), *sinks = randf(ac->n_head, 1.0);
		float *got = malloc(sizeof(float) * STEP * S * no);
		struct moe_kv kv = { .type = ac->kv_type, .n_cells = ac->n_cells, .kv_dim = kvd };
		moe_dptr sd = up(sinks, sizeof(float) * ac->n_head);

		ck_assert_uint_gt(row, 0);
		kv.k = dev((size_t)S * ac->n_cells * row);
		kv.v = ac->latent_v ? 0 : dev((size_t)S * ac->n_cells * row);
		for (int p0 = 0; p0 < N; p0 += STEP) {
			/* one batch: STEP positions of every sequence, sequences interleaved */
			uint32_t n = STEP * S;
			int32_t pos[64], seq[64];
			float kb[64 * 128], vb[64 * 128], qb[64 * 256];
			struct moe_attn_args a;
			moe_dptr posd, seqd, outd;

			for (uint32_t t = 0; t < n; t++) {
				uint32_t s = t % S;
				int p = p0 + (int)(t / S);

				pos[t] = p;
				seq[t] = (int32_t)s;
				memcpy(kb + t * kvd, K + ((size_t)s * N + p) * kvd, sizeof(float) * kvd);
				memcpy(vb + t * kvd, V + ((size_t)s * N + p) * kvd, sizeof(float) * kvd);
				memcpy(qb + t * nq, Q + ((size_t)s * N + p) * nq, sizeof(float) * nq);
			}
			posd = up(pos, sizeof(int32_t) * n);
			seqd = up(seq, sizeof(int32_t) * n);
			ck_assert_int_eq(be->ops->kv_store(be, &kv, up(kb, sizeof(float) * n * kvd),
							   ac->latent_v ? 0 :
							   up(vb, sizeof(float) * n * kvd), posd,
							   S > 1 ? seqd : 0, n), 0);
			outd = dev(sizeof(float) * n * no);
			a = (struct moe_attn_args){
				.q = up(qb, sizeof(float) * n * nq), .out = outd, .pos = posd,
				.seq = S > 1 ? seqd : 0, .sinks = ac->sinks ? sd : 0, .kv = kv,
				.n_tok = n, .n_head = ac->n_head, .n_head_kv = ac->n_head_kv,
				.head_dim = hd, .head_dim_v = ac->latent_v, .mask = ac->mask,
				.window = ac->window, .scale = 1.0f / sqrtf((float)hd),
				.softcap = ac->softcap,
			};
			ck_assert_msg(be->ops->attention(be, &a) == 0, "case %zu: %s", ci,
				      moe_errmsg());
			down(got, outd, sizeof(float) * n * no);
			for (uint32_t t = 0; t < n; t++) {
				uint32_t s = (uint32_t)seq[t];
				int p = pos[t];

				for (uint32_t h = 0; h < ac->n_head; h++) {
					uint32_t kh = h / (ac->n_head / ac->n_head_kv);
					double sc[64], mx = ac->sinks ? sinks[h] : -1e300, sum = 0;
					bool vis[64];

					for (int j = 0; j < N; j++) {
						float kr[256];

						vis[j] = j <= p;
						if (ac->mask == MOE_MASK_SLIDING)
							vis[j] = vis[j] && p - j < (int)ac->window;
						if (ac->mask == MOE_MASK_CHUNKED)
							vis[j] = vis[j] && j >= p / (int)ac->window *
									       (int)ac->window;
						memcpy(kr, K + ((size_t)s * N + j) * kvd, sizeof(float) * kvd);
						kv_round(ac->kv_type, kr, kvd);
						sc[j] = 0;
						for (uint32_t i = 0; i < hd; i++)
							sc[j] += (double)qb[(t * ac->n_head + h) * hd + i] *
								 kr[kh * hd + i];
						sc[j] /= sqrt((double)hd);
						if (ac->softcap > 0)
							sc[j] = ac->softcap * tanh(sc[j] / ac->softcap);
						if (vis[j] && sc[j] > mx)
							mx = sc[j];
					}
					for (int j = 0; j < N; j++)
						sum += vis[j] ? exp(sc[j] - mx) : 0;
					if (ac->sinks)
						sum += exp(sinks[h] - mx);
					for (uint32_t i = 0; i < hv; i++) {
						double o = 0;

						for (int j = 0; j < N; j++) {
							float vr[256];

							if (!vis[j])
								continue;
							/* a latent cache's values are its keys */
							memcpy(vr, (ac->latent_v ? K : V) +
							       ((size_t)s * N + j) * kvd, sizeof(float) * kvd);
							kv_round(ac->kv_type, vr, kvd);
							o += exp(sc[j] - mx) / sum * vr[kh * hd + i];
						}
						ck_assert_msg(fabs(o - got[(t * ac->n_head + h) * hv + i]) <
							      2e-5, "case %zu pos %d seq %u h %u i %u: %g vs "
							      "%g", ci, p, s, h, i, o,
							      got[(t * ac->n_head + h) * hv + i]);
					}
				}
			}
		}
		free(K);
		free(V);
		free(Q);
		free(sinks);
		free(got);
	}
	close_backend(_i);
}
END_TEST

/*
 * Prompts: shapes of real models (head dims 80, 112, 128, 256, a latent
 * cache 72/64), GQA, lengths that are no multiple of any tile, a second
 * batch continuing the first over a ring, two sequences in one batch.  A
 * backend may run these on another kernel than the short batches above
 * (the CUDA one tiles queries and keys): against float64.
 */
struct prompt_case {
	uint32_t kv_type, head_dim, n_head, n_head_kv;
	enum moe_attn_mask mask;
	uint32_t window;
	bool sinks;
	float softcap;
	uint32_t latent_v;
	uint32_t n_seq;
};

static const struct prompt_case prompt_cases[] = {
	{ MOE_TYPE_F32, 80, 6, 2, MOE_MASK_CAUSAL, 0, false, 0, 0, 1 },
	{ MOE_TYPE_F16, 112, 4, 1, MOE_MASK_SLIDING, 19, true, 0, 0, 1 },
	{ MOE_TYPE_Q8_0, 128, 4, 2, MOE_MASK_CHUNKED, 24, false, 0, 0, 1 },
	{ MOE_TYPE_F32, 256, 2, 1, MOE_MASK_SLIDING, 33, true, 30.0f, 0, 1 },
	{ MOE_TYPE_F32, 72, 3, 1, MOE_MASK_CAUSAL, 0, false, 0, 64, 1 },
	{ MOE_TYPE_F32, 64, 4, 2, MOE_MASK_CAUSAL, 0, true, 0, 0, 2 },
};

START_TEST(ops_attention_prompt)
{
	/* two batches per sequence: positions [0, 37), then [37, 66) */
	static const uint32_t cut[] = { 0, 37, 66 };
	const uint32_t N = cut[2];

	open_backend(_i);
	for (size_t ci = 0; ci < MOE_ARRAY_SIZE(prompt_cases); ci++) {
		const struct prompt_case *pc = &prompt_cases[ci];
		uint32_t hd = pc->head_dim, kvd = pc->n_head_kv * hd, nq = pc->n_head * hd;
		uint32_t hv = pc->latent_v ? pc->latent_v : hd, no = pc->n_head * hv, S = pc->n_seq;
		/* a windowed layer keeps a ring of window + batch - 1 cells */
		uint32_t cells = pc->window ? pc->window + (cut[2] - cut[1]) - 1 : N;
		uint64_t row = moe_kv_row_bytes(pc->kv_type, kvd);
		float *K = randf((size_t)S * N * kvd, 1.0), *V = randf((size_t)S * N * kvd, 1.0);
		float *Q = randf((size_t)S * N * nq, 1.0), *sinks = randf(pc->n_head, 1.0);
		float *Kr = malloc(sizeof(float) * S * N * kvd), *Vr = malloc(sizeof(float) * S * N * kvd);
		struct moe_kv kv = { .type = pc->kv_type, .n_cells = cells, .kv_dim = kvd };

		memcpy(Kr, K, sizeof(float) * S * N * kvd);
		memcpy(Vr, V, sizeof(float) * S * N * kvd);
		for (uint32_t r = 0; r < S * N; r++) {
			kv_round(pc->kv_type, Kr + (size_t)r * kvd, kvd);
			kv_round(pc->kv_type, Vr + (size_t)r * kvd, kvd);
		}
		kv.k = dev((size_t)S * cells * row);
		kv.v = pc->latent_v ? 0 : dev((size_t)S * cells * row);
		for (int b = 0; b < 2; b++) {
			uint32_t len = cut[b + 1] - cut[b], n = len * S;
			int32_t *pos = malloc(sizeof(int32_t) * n), *seq = malloc(sizeof(int32_t) * n);
			float *kb = malloc(sizeof(float) * n * kvd), *vb = malloc(sizeof(float) * n * kvd);
			float *qb = malloc(sizeof(float) * n * nq), *got = malloc(sizeof(float) * n * no);
			moe_dptr posd, seqd, outd;
			struct moe_attn_args a;

			/* the second sequence's tokens after the first's: tiles see both */
			for (uint32_t t = 0; t < n; t++) {
				uint32_t s = t / len, p = cut[b] + t % len;

				pos[t] = (int32_t)p;
				seq[t] = (int32_t)s;
				memcpy(kb + (size_t)t * kvd, K + ((size_t)s * N + p) * kvd,
				       sizeof(float) * kvd);
				memcpy(vb + (size_t)t * kvd, V + ((size_t)s * N + p) * kvd,
				       sizeof(float) * kvd);
				memcpy(qb + (size_t)t * nq, Q + ((size_t)s * N + p) * nq,
				       sizeof(float) * nq);
			}
			posd = up(pos, sizeof(int32_t) * n);
			seqd = up(seq, sizeof(int32_t) * n);
			ck_assert_int_eq(be->ops->kv_store(be, &kv, up(kb, sizeof(float) * n * kvd),
							   pc->latent_v ? 0 :
							   up(vb, sizeof(float) * n * kvd), posd,
							   S > 1 ? seqd : 0, n), 0);
			outd = dev(sizeof(float) * n * no);
			a = (struct moe_attn_args){
				.q = up(qb, sizeof(float) * n * nq), .out = outd, .pos = posd,
				.seq = S > 1 ? seqd : 0, .sinks = pc->sinks ? up(sinks, sizeof(float) *
									       pc->n_head) : 0,
				.kv = kv, .n_tok = n, .n_head = pc->n_head, .n_head_kv = pc->n_head_kv,
				.head_dim = hd, .head_dim_v = pc->latent_v, .mask = pc->mask,
				.window = pc->window, .scale = 1.0f / sqrtf((float)hd),
				.softcap = pc->softcap,
			};
			ck_assert_msg(be->ops->attention(be, &a) == 0, "case %zu: %s", ci,
				      moe_errmsg());
			down(got, outd, sizeof(float) * n * no);
			for (uint32_t t = 0; t < n; t++) {
				int p = pos[t];
				uint32_t s = (uint32_t)seq[t];
				int lo = pc->mask == MOE_MASK_SLIDING ? MOE_MAX(p - (int)pc->window + 1, 0) :
					 pc->mask == MOE_MASK_CHUNKED ? p / (int)pc->window *
					 (int)pc->window : 0;

				for (uint32_t h = 0; h < pc->n_head; h++) {
					uint32_t kh = h / (pc->n_head / pc->n_head_kv);
					const float *q = qb + ((size_t)t * pc->n_head + h) * hd;
					double sc[66], mx = pc->sinks ? sinks[h] : -1e300, sum = 0;

					for (int j = lo; j <= p; j++) {
						const float *k = Kr + ((size_t)s * N + j) * kvd + kh * hd;

						sc[j] = 0;
						for (uint32_t i = 0; i < hd; i++)
							sc[j] += (double)q[i] * k[i];
						sc[j] /= sqrt((double)hd);
						if (pc->softcap > 0)
							sc[j] = pc->softcap * tanh(sc[j] / pc->softcap);
						mx = fmax(mx, sc[j]);
					}
					for (int j = lo; j <= p; j++)
						sum += exp(sc[j] - mx);
					if (pc->sinks)
						sum += exp(sinks[h] - mx);
					for (uint32_t i = 0; i < hv; i++) {
						double o = 0;

						for (int j = lo; j <= p; j++)
							o += exp(sc[j] - mx) / sum *
							     (pc->latent_v ? Kr : Vr)[((size_t)s * N + j) *
										   kvd + kh * hd + i];
						ck_assert_msg(fabs(o - got[((size_t)t * pc->n_head + h) * hv +
									   i]) < 5e-5,
							      "case %zu pos %d seq %u h %u i %u: %g vs %g",
							      ci, p, s, h, i, o,
							      got[((size_t)t * pc->n_head + h) * hv + i]);
					}
				}
			}
			free(pos);
			free(seq);
			free(kb);
			free(vb);
			free(qb);
			free(got);
		}
		free(K);
		free(V);
		free(Kr);
		free(Vr);
		free(Q);
		free(sinks);
	}
	close_backend(_i);
}
END_TEST

/* ------------------------------------------------------------ activations, FFNs */

static double glu_ref(enum moe_glu act, double g, double u)
{
	switch (act) {
	case MOE_GLU_GELU:
		return 0.5 * g * (1 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g))) * u;
	case MOE_GLU_SWIGLU_OAI:
		g = fmin(g, 7.0);
		u = fmax(-7.0, fmin(u, 7.0));
		return g / (1 + exp(-1.702 * g)) * (u + 1);
	default:
		return g / (1 + exp(-g)) * u;
	}
}

START_TEST(ops_glu)
{
	const int64_t n = 37, stride = 40, nt = 3;

	open_backend(_i);
	for (int act = MOE_GLU_SILU; act <= MOE_GLU_SWIGLU_OAI; act++) {
		float *g = randf(nt * stride, 4.0), *u = randf(nt * stride, 4.0), got[3 * 37];
		double want[3 * 37];
		moe_dptr out = dev(sizeof(got));

		ck_assert_int_eq(be->ops->glu(be, act, up(g, sizeof(float) * nt * stride),
					      up(u, sizeof(float) * nt * stride), stride, nt, n, out),
				 0);
		down(got, out, sizeof(got));
		for (int64_t t = 0; t < nt; t++)
			for (int64_t i = 0; i < n; i++)
				want[t * n + i] = glu_ref(act, g[t * stride + i], u[t * stride + i]);
		check_close("glu", got, want, (size_t)(nt * n), 1e-5);
		free(g);
		free(u);
	}
	close_backend(_i);
}
END_TEST

/* One FFN's weights on the host (exact values) and on the device. */
struct ffn_w {
	struct wmat m[3];
	uint32_t n_mats;
	float *gb, *ub, *db, scale;
	struct moe_be_ffn d;
};

static void make_ffn(struct ffn_w *f, uint32_t type, uint32_t dtype, int64_t E, int64_t F,
		     bool fused, bool bias, bool scaled)
{
	memset(f, 0, sizeof(*f));
	f->n_mats = fused ? 2 : 3;
	if (fused) {
		make_wmat(&f->m[0], type, 2 * F, E);
	} else {
		make_wmat(&f->m[0], type, F, E);
		make_wmat(&f->m[1], type, F, E);
	}
	make_wmat(&f->m[f->n_mats - 1], dtype, E, F);
	f->d.n_mats = f->n_mats;
	for (uint32_t k = 0; k < f->n_mats; k++)
		f->d.mats[k] = dev_mat(&f->m[k]);
	if (bias) {
		f->gb = randf((size_t)F, 0.5);
		f->ub = randf((size_t)F, 0.5);
		f->db = randf((size_t)E, 0.5);
		f->d.gate_b = up(f->gb, sizeof(float) * F);
		f->d.up_b = up(f->ub, sizeof(float) * F);
		f->d.down_b = up(f->db, sizeof(float) * E);
	}
	f->scale = 1.0f;
	if (scaled) {
		f->scale = 0.75f;
		f->d.out_scale = up(&f->scale, sizeof(float));
	}
}

static void free_ffn(struct ffn_w *f)
{
	for (uint32_t k = 0; k < f->n_mats; k++)
		free_wmat(&f->m[k]);
	free(f->gb);
	free(f->ub);
	free(f->db);
}

/* out = scale * (down(act(gate x + gb) * (up x + ub)) + db), in double */
static void ffn_ref(const struct ffn_w *f, enum moe_glu act, const float *x, int64_t E,
		    int64_t F, double *out)
{
	const double *G = f->m[0].w, *U = f->n_mats == 2 ? f->m[0].w + F * E : f->m[1].w;
	const double *D = f->m[f->n_mats - 1].w;
	double *h = malloc(sizeof(double) * F);

	for (int64_t i = 0; i < F; i++) {
		double g = 0, u = 0;

		for (int64_t c = 0; c < E; c++) {
			g += G[i * E + c] * x[c];
			u += U[i * E + c] * x[c];
		}
		h[i] = glu_ref(act, g + (f->gb ? f->gb[i] : 0), u + (f->ub ? f->ub[i] : 0));
	}
	for (int64_t r = 0; r < E; r++) {
		double s = 0;

		for (int64_t i = 0; i < F; i++)
			s += D[r * F + i] * h[i];
		out[r] = (s + (f->db ? f->db[r] : 0)) * f->scale;
	}
	free(h);
}

/* Every row within @rel of the reference, relative to the row's norm. */
static void check_rows(const char *what, const float *got, const double *want, int64_t n_rows,
		       int64_t n, double rel)
{
	for (int64_t r = 0; r < n_rows; r++) {
		double err = 0, mag = 0;

		for (int64_t i = 0; i < n; i++) {
			err += (got[r * n + i] - want[r * n + i]) * (got[r * n + i] - want[r * n + i]);
			mag += want[r * n + i] * want[r * n + i];
		}
		ck_assert_msg(sqrt(err) <= rel * sqrt(mag) + 1e-6, "%s: row %lld off by %g of %g",
			      what, (long long)r, sqrt(err), sqrt(mag));
	}
}

static double type_rel(uint32_t type)
{
	return act_block(type) == 1 ? 2e-5 : 0.03;
}

/* A dense FFN over rows 0..n-1, separate and fused gate/up, with and without biases. */
START_TEST(ops_ffn_dense)
{
	static const uint32_t types[] = { MOE_TYPE_F32, MOE_TYPE_F16, MOE_TYPE_Q4_K, MOE_TYPE_Q8_0,
					  MOE_TYPE_MXFP4, MOE_TYPE_Q5_0 };
	const int64_t E = 256, F = 96;

	open_backend(_i);
	for (size_t ti = 0; ti < MOE_ARRAY_SIZE(types); ti++)
		for (int fused = 0; fused < 2 && !lacks(types[ti]); fused++)
			for (uint32_t n = 1; n <= 5; n += 4) {
				struct ffn_w f;
				float *x = randf((size_t)(n * E), 1.0), *got = malloc(sizeof(float) * n * E);
				double *want = malloc(sizeof(double) * n * E);
				int64_t FF = act_block(types[ti]) == 256 ? 256 : F;
				struct moe_ffn_args a;
				moe_dptr out = dev(sizeof(float) * n * E);

				make_ffn(&f, types[ti], types[ti], E, FF, fused, fused, false);
				f.d.m = n;
				a = (struct moe_ffn_args){ .ffn = &f.d, .n_ffn = 1, .stride = 1,
							   .act = MOE_GLU_SILU, .n_embd = (uint32_t)E,
							   .x = up(x, sizeof(float) * n * E), .out = out };
				ck_assert_msg(be->ops->ffn(be, &a) == 0, "%s", moe_errmsg());
				down(got, out, sizeof(float) * n * E);
				for (uint32_t t = 0; t < n; t++)
					ffn_ref(&f, MOE_GLU_SILU, x + t * E, E, FF, want + t * E);
				check_rows(moe_type_name(types[ti]), got, want, n, E,
					   type_rel(types[ti]));
				free_ffn(&f);
				free(x);
				free(got);
				free(want);
			}
	close_backend(_i);
}
END_TEST

/*
 * Routed experts as the engine runs them: several FFNs in one call, each
 * over its own entries of a (token, choice) list, given out of order and
 * not contiguously; input rows are entry / stride, optionally scaled per
 * entry, output rows are the entries.
 */
START_TEST(ops_ffn_experts)
{
	enum { T = 5, K = 2, NF = 3 };
	static const uint32_t types[] = { MOE_TYPE_Q4_K, MOE_TYPE_F32, MOE_TYPE_MXFP4 };
	const int64_t E = 256;

	open_backend(_i);
	for (size_t ti = 0; ti < MOE_ARRAY_SIZE(types); ti++)
		/* down is always q8_0 */
		for (int variant = 0; variant < 3 && !lacks(types[ti]) && !lacks(MOE_TYPE_Q8_0);
		     variant++) {
			/* entries grouped by expert, as the engine lays them out */
			int32_t ents[T * K] = { 1, 4, 6, 9, 0, 3, 5, 2, 7, 8 };
			uint32_t off[NF] = { 0, 4, 7 }, cnt[NF] = { 4, 3, 3 };
			/* run FFNs 2 and 0 only: entries 7..9 and 0..3 */
			uint32_t order[2] = { 2, 0 };
			float *x = randf(T * E, 1.0), *ins = randf(T * K, 0.5);
			float *got = malloc(sizeof(float) * T * K * E);
			double *want = malloc(sizeof(double) * E);
			struct ffn_w f[NF];
			struct moe_be_ffn d[2];
			int64_t FF = act_block(types[ti]) == 256 ? 256 : 64;
			enum moe_glu act = variant == 1 ? MOE_GLU_SWIGLU_OAI : MOE_GLU_GELU;
			bool in_scale = variant == 2;
			moe_dptr out = dev(sizeof(float) * T * K * E);
			struct moe_ffn_args a;

			for (uint32_t i = 0; i < T * K * E; i++)
				got[i] = 12345.0f;
			ck_assert_int_eq(be->ops->upload(be, MOE_BE_COMPUTE, out, got,
							 sizeof(float) * T * K * E), 0);
			for (int i = 0; i < NF; i++) {
				make_ffn(&f[i], types[ti], MOE_TYPE_Q8_0, E, FF, i == 1, variant == 1,
					 i == 2);
				f[i].d.m = cnt[i];
				f[i].d.ent_off = off[i];
			}
			for (int i = 0; i < 2; i++)
				d[i] = f[order[i]].d;
			a = (struct moe_ffn_args){
				.ffn = d, .n_ffn = 2, .stride = K, .act = act, .n_embd = (uint32_t)E,
				.x = up(x, sizeof(float) * T * E), .ents = up(ents, sizeof(ents)),
				.in_scale = in_scale ? up(ins, sizeof(float) * T * K) : 0, .out = out,
			};
			ck_assert_msg(be->ops->ffn(be, &a) == 0, "%s", moe_errmsg());
			down(got, out, sizeof(float) * T * K * E);
			for (int oi = 0; oi < 2; oi++) {
				uint32_t fi = order[oi];

				for (uint32_t j = 0; j < cnt[fi]; j++) {
					int32_t ent = ents[off[fi] + j];
					float xs[256];

					for (int64_t c = 0; c < E; c++)
						xs[c] = x[(ent / K) * E + c] * (in_scale ? ins[ent] : 1.0f);
					ffn_ref(&f[fi], act, xs, E, FF, want);
					/* down is q8_0: its input is rounded whatever the gate type */
					check_rows(moe_type_name(types[ti]), got + (size_t)ent * E, want, 1,
						   E, type_rel(MOE_TYPE_Q8_0));
				}
			}
			/* entries of the FFN that did not run are untouched */
			for (uint32_t j = 0; j < cnt[1]; j++)
				ck_assert_float_eq(got[(size_t)ents[off[1] + j] * E], 12345.0f);
			for (int i = 0; i < NF; i++)
				free_ffn(&f[i]);
			free(x);
			free(ins);
			free(got);
			free(want);
		}
	close_backend(_i);
}
END_TEST

/* ------------------------------------------------------------ routing */

struct route_case {
	uint32_t gating, n_expert, k, stride;
	bool bias, norm;
	float scale;
	uint32_t n_group, topk_group;
};

static const struct route_case route_cases[] = {
	{ MOE_GATING_SOFTMAX, 8, 2, 2, false, false, 1.0f, 0, 0 },
	{ MOE_GATING_SOFTMAX, 33, 4, 6, false, true, 1.0f, 0, 0 },
	{ MOE_GATING_SIGMOID, 16, 1, 1, false, false, 1.0f, 0, 0 },
	{ MOE_GATING_SIGMOID, 128, 8, 8, true, true, 2.5f, 0, 0 },
	{ MOE_GATING_SOFTMAX_SELECTED, 32, 4, 4, false, false, 1.0f, 0, 0 },
	{ MOE_GATING_SOFTMAX_SELECTED, 9, 3, 5, true, false, 1.0f, 0, 0 },
	/* group-limited: DeepSeek-V3's 8 groups keeping 4, a tiny 4 keeping 2, groups of 3 */
	{ MOE_GATING_SIGMOID, 64, 8, 8, true, true, 2.5f, 8, 4 },
	{ MOE_GATING_SIGMOID, 8, 3, 4, true, true, 2.5f, 4, 2 },
	{ MOE_GATING_SOFTMAX, 12, 2, 2, false, true, 1.0f, 4, 1 },
	/* one group: no restriction, as llama.cpp treats expert_group_count 1 */
	{ MOE_GATING_SIGMOID, 8, 2, 2, true, true, 2.5f, 1, 1 },
};

START_TEST(ops_route)
{
	const uint32_t T = 7;

	open_backend(_i);
	for (size_t ci = 0; ci < MOE_ARRAY_SIZE(route_cases); ci++) {
		const struct route_case *rc = &route_cases[ci];
		float *lg = randf(T * rc->n_expert, 2.0), *bias = randf(rc->n_expert, 0.3);
		int32_t sel[7 * 8];
		float w[7 * 8];
		moe_dptr seld = dev(sizeof(sel)), wd = dev(sizeof(w));
		struct moe_route_args a = {
			.logits = up(lg, sizeof(float) * T * rc->n_expert), .sel = seld, .weights = wd,
			.bias = rc->bias ? up(bias, sizeof(float) * rc->n_expert) : 0, .n_tok = T,
			.n_expert = rc->n_expert, .k = rc->k, .stride = rc->stride,
			.gating = rc->gating, .norm = rc->norm, .scale = rc->scale,
			.n_group = rc->n_group, .topk_group = rc->topk_group,
		};

		ck_assert_msg(be->ops->route(be, &a) == 0, "case %zu: %s", ci, moe_errmsg());
		down(sel, seld, sizeof(int32_t) * T * rc->stride);
		down(w, wd, sizeof(float) * T * rc->stride);
		for (uint32_t t = 0; t < T; t++) {
			const float *l = lg + t * rc->n_expert;
			double prob[128], score[128], mx = -1e300, sum = 0, ws[8], tot = 0;
			bool taken[128] = { false };

			for (uint32_t e = 0; e < rc->n_expert; e++)
				mx = fmax(mx, l[e]);
			for (uint32_t e = 0; e < rc->n_expert; e++) {
				if (rc->gating == MOE_GATING_SIGMOID)
					prob[e] = 1 / (1 + exp(-l[e]));
				else if (rc->gating == MOE_GATING_SOFTMAX_SELECTED)
					prob[e] = l[e];
				else
					prob[e] = exp(l[e] - mx);
				sum += prob[e];
			}
			for (uint32_t e = 0; e < rc->n_expert; e++) {
				if (rc->gating == MOE_GATING_SOFTMAX)
					prob[e] /= sum;
				score[e] = prob[e] + (rc->bias ? bias[e] : 0);
			}
			if (rc->n_group > 1) {
				uint32_t gs = rc->n_expert / rc->n_group;
				double gsc[16];
				bool kept[16] = { false };

				/* a group's score: its two best experts; the best groups stay */
				for (uint32_t g = 0; g < rc->n_group; g++) {
					double b0 = -1e300, b1 = -1e300;

					for (uint32_t e = g * gs; e < (g + 1) * gs; e++) {
						if (score[e] > b0) {
							b1 = b0;
							b0 = score[e];
						} else if (score[e] > b1) {
							b1 = score[e];
						}
					}
					gsc[g] = b0 + b1;
				}
				for (uint32_t i = 0; i < rc->topk_group; i++) {
					int bg = -1;

					for (uint32_t g = 0; g < rc->n_group; g++)
						if (!kept[g] && (bg < 0 || gsc[g] > gsc[bg]))
							bg = (int)g;
					kept[bg] = true;
				}
				for (uint32_t e = 0; e < rc->n_expert; e++)
					if (!kept[e / gs])
						score[e] = -1e300;
			}
			for (uint32_t j = 0; j < rc->k; j++) {
				int best = -1;

				for (uint32_t e = 0; e < rc->n_expert; e++)
					if (!taken[e] && (best < 0 || score[e] > score[best]))
						best = (int)e;
				taken[best] = true;
				ck_assert_msg(sel[t * rc->stride + j] == best, "case %zu tok %u choice %u: "
					      "%d vs %d", ci, t, j, sel[t * rc->stride + j], best);
				ws[j] = prob[best];
			}
			if (rc->gating == MOE_GATING_SOFTMAX_SELECTED) {
				double m2 = -1e300, s2 = 0;

				for (uint32_t j = 0; j < rc->k; j++)
					m2 = fmax(m2, ws[j]);
				for (uint32_t j = 0; j < rc->k; j++)
					s2 += exp(ws[j] - m2);
				for (uint32_t j = 0; j < rc->k; j++)
					ws[j] = exp(ws[j] - m2) / s2;
			} else if (rc->norm) {
				for (uint32_t j = 0; j < rc->k; j++)
					tot += ws[j];
				for (uint32_t j = 0; j < rc->k; j++)
					ws[j] /= tot;
			}
			for (uint32_t j = 0; j < rc->k; j++)
				ck_assert_msg(fabs(w[t * rc->stride + j] - ws[j] * rc->scale) < 2e-6,
					      "case %zu tok %u weight %u: %g vs %g", ci, t, j,
					      w[t * rc->stride + j], ws[j] * rc->scale);
		}
		free(lg);
		free(bias);
	}
	{
		/* groups that do not divide the experts, or keep too few for k */
		moe_dptr d = dev(64 * sizeof(float));
		struct moe_route_args bad = { .logits = d, .sel = d, .weights = d, .n_tok = 1,
					      .n_expert = 10, .k = 2, .stride = 2,
					      .gating = MOE_GATING_SIGMOID, .n_group = 4,
					      .topk_group = 2 };

		ck_assert_int_eq(be->ops->route(be, &bad), -EINVAL);
		bad.n_expert = 8;
		bad.k = 5;
		ck_assert_int_eq(be->ops->route(be, &bad), -EINVAL);
	}
	close_backend(_i);
}
END_TEST

START_TEST(ops_combine)
{
	enum { T = 3, K = 4, k = 3, N = 19 };
	float *ys = randf(T * K * N, 1.0), *w = randf(T * K, 1.0), got[T * N];
	double want[T * N];

	open_backend(_i);
	for (int weighted = 0; weighted < 2; weighted++) {
		moe_dptr out = dev(sizeof(got));

		ck_assert_int_eq(be->ops->combine(be, up(ys, sizeof(float) * T * K * N),
						  weighted ? up(w, sizeof(float) * T * K) : 0, T, k, K, N,
						  out), 0);
		down(got, out, sizeof(got));
		for (int t = 0; t < T; t++)
			for (int i = 0; i < N; i++) {
				want[t * N + i] = 0;
				for (int j = 0; j < k; j++)
					want[t * N + i] += ys[(t * K + j) * N + i] *
							   (weighted ? w[t * K + j] : 1.0);
			}
		check_close("combine", got, want, T * N, 1e-6);
	}
	free(ys);
	free(w);
	close_backend(_i);
}
END_TEST

/* ------------------------------------------------------------ element-wise */

START_TEST(ops_elementwise)
{
	enum { T = 3, N = 29 };
	float *x = randf(T * N, 2.0), *y = randf(T * N, 2.0), *b = randf(N, 1.0);
	float *s = randf(T, 1.5), got[T * N];
	double want[T * N];
	moe_dptr d;

	open_backend(_i);
	d = up(y, sizeof(got));
	ck_assert_int_eq(be->ops->add(be, d, up(x, sizeof(got)), T * N), 0);
	down(got, d, sizeof(got));
	for (int i = 0; i < T * N; i++)
		want[i] = (double)y[i] + x[i];
	check_close("add", got, want, T * N, 1e-7);

	d = up(y, sizeof(got));
	ck_assert_int_eq(be->ops->add_bias(be, d, up(b, sizeof(float) * N), T, N), 0);
	down(got, d, sizeof(got));
	for (int i = 0; i < T * N; i++)
		want[i] = (double)y[i] + b[i % N];
	check_close("add_bias", got, want, T * N, 1e-7);

	d = up(y, sizeof(got));
	ck_assert_int_eq(be->ops->scale(be, d, -0.375f, T * N), 0);
	down(got, d, sizeof(got));
	for (int i = 0; i < T * N; i++)
		want[i] = y[i] * -0.375;
	check_close("scale", got, want, T * N, 1e-7);

	for (int sig = 0; sig < 2; sig++) {
		d = up(y, sizeof(got));
		ck_assert_int_eq(be->ops->scale_rows(be, d, up(s, sizeof(float) * T), T, N, sig), 0);
		down(got, d, sizeof(got));
		for (int i = 0; i < T * N; i++)
			want[i] = y[i] * (sig ? 1 / (1 + exp(-s[i / N])) : s[i / N]);
		check_close("scale_rows", got, want, T * N, 1e-6);
	}

	d = up(y, sizeof(got));
	ck_assert_int_eq(be->ops->mul(be, d, up(b, sizeof(float) * N), T, N), 0);
	down(got, d, sizeof(got));
	for (int i = 0; i < T * N; i++)
		want[i] = (double)y[i] * b[i % N];
	check_close("mul", got, want, T * N, 1e-7);

	d = up(y, sizeof(got));
	ck_assert_int_eq(be->ops->softcap(be, d, 1.5f, T * N), 0);
	down(got, d, sizeof(got));
	for (int i = 0; i < T * N; i++)
		want[i] = 1.5 * tanh(y[i] / 1.5);
	check_close("softcap", got, want, T * N, 2e-6);
	free(x);
	free(y);
	free(b);
	free(s);
	close_backend(_i);
}
END_TEST

#define GUARD_FAULT_EXIT 77

static void on_fault(int sig)
{
	(void)sig;
	_exit(GUARD_FAULT_EXIT);
}

/* The guarded CPU backend: the host touching device memory faults at once. */
START_TEST(ops_guard_faults)
{
	struct moe_backend_params p = { .flags = MOE_BE_F_GUARD };
	struct sigaction sa = { .sa_handler = on_fault };
	volatile float *f;
	moe_dptr d;

	/* our own handler, so a sanitizer's does not turn the fault into a plain exit */
	sigaction(SIGSEGV, &sa, NULL);
	ck_assert_int_eq(moe_backend_create(&moe_backend_cpu_desc, &p, &be), 0);
	ck_assert_int_eq(be->ops->alloc(be, 4096, &d), 0);
	ck_assert_int_eq(be->ops->scale(be, d, 2.0f, 16), 0);
	f = (volatile float *)(uintptr_t)d;
	f[0] = 1.0f;   /* faults: the test expects the handler's exit */
	ck_abort_msg("writing guarded device memory from the host did not fault");
}
END_TEST

Suite *suite_ops(void)
{
	Suite *s = suite_create("ops");
	TCase *tc = tcase_create("backends");
	int n = (int)ops_backend_count;

	tcase_set_timeout(tc, 120);
	for (int i = 0; i < n; i++) {
		const char *why = ops_backends[i].unavailable ? ops_backends[i].unavailable() : NULL;

		if (why) {
			char name[64];

			snprintf(name, sizeof(name), "ops (%s backend)", ops_backends[i].name);
			tu_skip(name, why);
			continue;
		}
		if (ops_backends[i].lacks_type) {
			char name[64], types[256] = "";
			const char *reason = NULL;

			for (size_t t = 0; t < MOE_ARRAY_SIZE(wtypes); t++) {
				const char *r = ops_backends[i].lacks_type(wtypes[t]);

				if (!r)
					continue;
				reason = r;
				snprintf(types + strlen(types), sizeof(types) - strlen(types), "%s%s",
					 *types ? ", " : "", moe_type_name(wtypes[t]));
			}
			snprintf(name, sizeof(name), "ops (%s backend) matrix ops", ops_backends[i].name);
			if (reason) {
				char why[512];

				snprintf(why, sizeof(why), "%s: %s not tested", reason, types);
				tu_skip(name, why);
			}
		}
		tcase_add_loop_test(tc, ops_memory, i, i + 1);
		tcase_add_loop_test(tc, ops_budget, i, i + 1);
		tcase_add_loop_test(tc, ops_get_rows, i, i + 1);
		tcase_add_loop_test(tc, ops_to_f32, i, i + 1);
		tcase_add_loop_test(tc, ops_matmul, i, i + 1);
		tcase_add_loop_test(tc, ops_matmul_fused, i, i + 1);
		tcase_add_loop_test(tc, ops_matmul_heads, i, i + 1);
		tcase_add_loop_test(tc, ops_copy_rows, i, i + 1);
		tcase_add_loop_test(tc, ops_rms_norm, i, i + 1);
		tcase_add_loop_test(tc, ops_rope, i, i + 1);
		tcase_add_loop_test(tc, ops_attention, i, i + 1);
		tcase_add_loop_test(tc, ops_attention_prompt, i, i + 1);
		tcase_add_loop_test(tc, ops_glu, i, i + 1);
		tcase_add_loop_test(tc, ops_ffn_dense, i, i + 1);
		tcase_add_loop_test(tc, ops_ffn_experts, i, i + 1);
		tcase_add_loop_test(tc, ops_route, i, i + 1);
		tcase_add_loop_test(tc, ops_combine, i, i + 1);
		tcase_add_loop_test(tc, ops_elementwise, i, i + 1);
	}
	tcase_add_exit_test(tc, ops_guard_faults, GUARD_FAULT_EXIT);
	suite_add_tcase(s, tc);
	return s;
}
