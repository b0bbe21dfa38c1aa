/* SPDX-License-Identifier: MIT */
/*
 * The matrix kernels of cuda/mm.cu launched directly on the emulation, on
 * host memory: both product kernels for every weight type on awkward shapes
 * (rows not a multiple of a block's rows, one block of columns and many,
 * 1..17 tokens), against a float64 evaluation of the exactly dequantized
 * weights and against the CPU backend; the gather, scale, bias and scatter
 * paths the FFN uses; get_rows; the GLU.  The device multiplies f32
 * activations, so its tolerance is float rounding only, much tighter than
 * the op suite's bound for activations rounded to q8_0/q8_K.
 */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../cuda/mm_args.h"
#include "backend/backend.h"
#include "backend/cuda_api.h"
#include "backend/cuda_int.h"
#include "backend/cuda_mm_bench.h"
#include "fake_cuda.h"
#include "moe/moe.h"
#include "quant/quant.h"
#include "simt_api.h"
#include "testutil.h"
#include "util/util.h"

static uint64_t rs = 0x6d6d0001;

static const uint32_t types[] = {
	MOE_TYPE_F32, MOE_TYPE_F16, MOE_TYPE_BF16, MOE_TYPE_Q4_0, MOE_TYPE_Q4_1, MOE_TYPE_Q5_0,
	MOE_TYPE_Q5_1, MOE_TYPE_Q8_0, MOE_TYPE_Q4_K, MOE_TYPE_Q5_K, MOE_TYPE_Q6_K,
	MOE_TYPE_MXFP4,
};

/* The kernels' type ids are the GGML ids. */
#define SAME_ID(a, b) ((int)(a) == (int)(b))
_Static_assert(SAME_ID(MOE_MM_F32, MOE_TYPE_F32) && SAME_ID(MOE_MM_F16, MOE_TYPE_F16) &&
	       SAME_ID(MOE_MM_BF16, MOE_TYPE_BF16) && SAME_ID(MOE_MM_Q4_0, MOE_TYPE_Q4_0) &&
	       SAME_ID(MOE_MM_Q4_1, MOE_TYPE_Q4_1) && SAME_ID(MOE_MM_Q5_0, MOE_TYPE_Q5_0) &&
	       SAME_ID(MOE_MM_Q5_1, MOE_TYPE_Q5_1) && SAME_ID(MOE_MM_Q8_0, MOE_TYPE_Q8_0) &&
	       SAME_ID(MOE_MM_Q4_K, MOE_TYPE_Q4_K) && SAME_ID(MOE_MM_Q5_K, MOE_TYPE_Q5_K) &&
	       SAME_ID(MOE_MM_Q6_K, MOE_TYPE_Q6_K) && SAME_ID(MOE_MM_MXFP4, MOE_TYPE_MXFP4),
	       "type ids");
_Static_assert(sizeof(struct moe_mm_prob) == 104, "moe_mm_prob layout");

static const struct simt_kernel *kern(const char *name)
{
	const struct simt_kernel *k = simt_kernel_find(name);

	ck_assert_msg(k != NULL, "%s", simt_errmsg());
	return k;
}

static void launch(const char *name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
		   void **params)
{
	int st = simt_launch(kern(name), gx, gy, gz, bx, 1, 1, 0, params);

	ck_assert_msg(st == SIMT_OK, "%s: %s: %s", name, simt_status_name(st), simt_errmsg());
}

static float *randf(size_t n, double scale)
{
	float *x = malloc(sizeof(float) * (n ? n : 1));

	for (size_t i = 0; i < n; i++)
		x[i] = (float)(tu_randn(&rs) * scale);
	return x;
}

/* A random matrix: its bytes and its exact values. */
struct mat {
	uint32_t type;
	int64_t rows, cols, rb;
	uint8_t *q;
	double *w;
};

static void make_mat(struct mat *m, uint32_t type, int64_t rows, int64_t cols)
{
	float *f = randf((size_t)(rows * cols), 0.5), *row = malloc(sizeof(float) * cols);

	m->type = type;
	m->rows = rows;
	m->cols = cols;
	m->rb = moe_type_row_bytes(type, (uint64_t)cols);
	ck_assert_int_gt(m->rb, 0);
	m->q = malloc((size_t)(m->rb * rows));
	m->w = malloc(sizeof(double) * rows * cols);
	for (int64_t r = 0; r < rows; r++) {
		ck_assert_int_eq(moe_quantize(type, f + r * cols, m->q + r * m->rb, cols), m->rb);
		ck_assert_int_eq(moe_dequantize(type, m->q + r * m->rb, row, cols), 0);
		for (int64_t c = 0; c < cols; c++)
			m->w[r * cols + c] = row[c];
	}
	free(f);
	free(row);
}

static void free_mat(struct mat *m)
{
	free(m->q);
	free(m->w);
}

static uint64_t addr(const void *p)
{
	return (uint64_t)(uintptr_t)p;
}

static struct moe_mm_prob prob(const struct mat *m, const float *x, uint32_t x_stride, float *y,
			       uint32_t y_stride, uint32_t n_tok)
{
	return (struct moe_mm_prob){
		.w = addr(m->q), .row_bytes = (uint64_t)m->rb, .x = addr(x), .y = addr(y),
		.type = m->type, .rows = (uint32_t)m->rows, .cols = (uint32_t)m->cols,
		.n_tok = n_tok, .x_stride = x_stride, .y_stride = y_stride, .x_div = 1,
	};
}

enum path { MATVEC, TILED, Q8, N_PATHS };
static const char *const path_name[] = { "matvec", "tiled", "q8_1 matvec" };

/*
 * Run the products of @p (one launch) on one of the paths: the f32 matvec,
 * the tiled kernel, or q8_1 activations and the __dp4a matvec.
 */
static void run_probs(struct moe_mm_prob *p, uint32_t n, enum path path)
{
	uint32_t max_rows = 0, max_tok = 0, max_units = 0;
	void *params[] = { &p };

	for (uint32_t i = 0; i < n; i++) {
		max_rows = MOE_MAX(max_rows, p[i].rows);
		max_tok = MOE_MAX(max_tok, p[i].n_tok);
		max_units = MOE_MAX(max_units, p[i].cols / 32);
	}
	if (path == TILED) {
		launch("moe_mm_tiled", (max_rows + 31) / 32, (max_tok + 31) / 32, n, 256, params);
	} else if (path == MATVEC) {
		launch("moe_mm_matvec", (max_rows + 3) / 4, 1, n, 128, params);
	} else {
		/* 40-byte blocks: the q8_1 rows of every product's tokens */
		uint8_t *qa = malloc((size_t)40 * n * max_tok * max_units);
		void *qp[] = { &p, &qa, &max_tok, &max_units };

		memset(qa, 0xff, (size_t)40 * n * max_tok * max_units);
		launch("moe_mm_quant_q8_1", (max_units + 3) / 4, max_tok, n, 128, qp);
		launch("moe_mm_matvec_q8", (max_rows + 3) / 4, 1, n, 128, qp);
		free(qa);
	}
}

/*
 * dot(row r, x * s) in double; *mag = sum of |w x s|, *tol the float-rounding
 * bound of the device's sum.
 */
static double ref_dot(const struct mat *m, int64_t r, const float *x, double s, double *tol,
		      double *mag_out)
{
	double sum = 0, mag = 0;

	for (int64_t c = 0; c < m->cols; c++) {
		sum += m->w[r * m->cols + c] * x[c] * s;
		mag += fabs(m->w[r * m->cols + c] * x[c] * s);
	}
	*tol = 1e-5 * mag + 1e-6;
	if (mag_out)
		*mag_out = mag;
	return sum;
}

/*
 * How far the CPU backend may be from the exact product: it rounds each
 * block of x (32 or 256 values) to 8 bits, half a step of amax/127 per value
 * at most (tests/unit/test_ops.c's bound).
 */
static double cpu_bound(const struct mat *m, int64_t r, const float *x)
{
	const struct moe_type_traits *t = moe_type_traits(m->type);
	int64_t blk = moe_type_block_elems(t->vec_dot_type);
	double b = 0;

	if (t->vec_dot_type == MOE_TYPE_F32)
		return 0;
	for (int64_t c0 = 0; c0 < m->cols; c0 += blk) {
		double amax = 0;

		for (int64_t c = c0; c < c0 + blk; c++)
			amax = fmax(amax, fabs(x[c]));
		for (int64_t c = c0; c < c0 + blk; c++)
			b += fabs(m->w[r * m->cols + c]) * amax / 254.0;
	}
	return 1.25 * b;
}

/* The CPU backend's product of the same matrix and input (rounded activations). */
static void cpu_matmul(const struct mat *m, const float *x, uint32_t n_tok, float *y)
{
	struct moe_backend_params bp = { 0 };
	struct moe_be_shape sh = { .max_tok = n_tok, .max_ent = n_tok, .n_embd = (uint32_t)m->cols,
				   .max_cols = (uint32_t)m->cols, .max_ff = 1, .max_head = 1,
				   .max_head_dim = 1, .max_ffn = 1, .max_heads_io = 1 };
	struct moe_backend *be;
	struct moe_be_mat w = { .type = m->type, .rows = m->rows, .cols = m->cols };
	moe_dptr xd, yd, ws;
	uint64_t wsb;

	ck_assert_int_eq(moe_backend_create(&moe_backend_cpu_desc, &bp, &be), 0);
	wsb = be->desc->workspace_bytes(&sh);
	ck_assert_int_eq(be->ops->alloc(be, wsb, &ws), 0);
	ck_assert_int_eq(be->ops->set_workspace(be, ws, wsb), 0);
	ck_assert_int_eq(be->ops->alloc(be, (uint64_t)(m->rb * m->rows), &w.p), 0);
	ck_assert_int_eq(be->ops->alloc(be, sizeof(float) * n_tok * m->cols, &xd), 0);
	ck_assert_int_eq(be->ops->alloc(be, sizeof(float) * n_tok * m->rows, &yd), 0);
	ck_assert_int_eq(be->ops->upload(be, 0, w.p, m->q, (uint64_t)(m->rb * m->rows)), 0);
	ck_assert_int_eq(be->ops->upload(be, 0, xd, x, sizeof(float) * n_tok * m->cols), 0);
	ck_assert_msg(be->ops->matmul(be, &w, 1, xd, n_tok, &yd) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(be->ops->download(be, 0, y, yd, sizeof(float) * n_tok * m->rows), 0);
	be->ops->free(be, yd);
	be->ops->free(be, xd);
	be->ops->free(be, w.p);
	be->ops->free(be, ws);
	moe_backend_destroy(be);
}

/*
 * y = W x for every type, both kernels, shapes around the kernels' tiles;
 * the CPU backend's result must agree within its activation rounding.
 */
static void product_case(uint32_t type, int64_t rows, int64_t cols, uint32_t n_tok,
			 enum path path)
{
	struct mat m;
	float *x = randf((size_t)n_tok * cols, 1.0), *y = malloc(sizeof(float) * n_tok * rows);
	float *yc = malloc(sizeof(float) * n_tok * rows);
	struct moe_mm_prob p;

	make_mat(&m, type, rows, cols);
	for (size_t i = 0; i < (size_t)n_tok * rows; i++)
		y[i] = NAN;
	p = prob(&m, x, (uint32_t)cols, y, (uint32_t)rows, n_tok);
	run_probs(&p, 1, path);
	cpu_matmul(&m, x, n_tok, yc);
	for (uint32_t t = 0; t < n_tok; t++)
		for (int64_t r = 0; r < rows; r++) {
			double tol, want = ref_dot(&m, r, x + t * cols, 1.0, &tol, NULL);
			float got = y[t * rows + r], cpu = yc[t * rows + r];
			double ctol = cpu_bound(&m, r, x + t * cols) + 2 * tol;

			/* rounded activations: the CPU's bound (q8_1 blocks are never coarser) */
			if (path == Q8)
				tol += cpu_bound(&m, r, x + t * cols);
			ck_assert_msg(fabs(got - want) <= tol, "%s %s %lldx%lld tok %u/%u row %lld: "
				      "%.8g vs %.8g (tol %g)", path_name[path],
				      moe_type_name(type), (long long)rows, (long long)cols, t, n_tok,
				      (long long)r, got, want, tol);
			if (path == Q8)
				ctol += cpu_bound(&m, r, x + t * cols);
			ck_assert_msg(fabs(got - cpu) <= ctol, "%s %s: device %.8g, cpu backend %.8g",
				      path_name[path], moe_type_name(type), got, cpu);
		}
	free_mat(&m);
	free(x);
	free(y);
	free(yc);
}

START_TEST(cuda_mm_products)
{
	static const int64_t rows[] = { 1, 7, 33 };
	static const uint32_t toks[] = { 1, 2, 3, 5, 17 };
	uint32_t type = types[_i], blk = moe_type_block_elems(type);
	/* one block, and several steps of the tiled kernel's 128 columns plus a part */
	int64_t cols[2] = { blk == 1 ? 45 : blk, blk == 1 ? 300 : (blk == 256 ? 3 * blk : 5 * blk) };

	for (int path = 0; path < N_PATHS; path++)
		for (size_t r = 0; r < MOE_ARRAY_SIZE(rows); r++)
			for (size_t c = 0; c < 2; c++)
				for (size_t t = 0; t < MOE_ARRAY_SIZE(toks); t++) {
					/* the tiled kernel's row tile: once past it is enough */
					if (rows[r] == 33 && toks[t] < 5 && c)
						continue;
					/* the q8_1 path: decode of quantized types */
					if (path == Q8 && (blk == 1 || toks[t] > 4))
						continue;
					product_case(type, rows[r], cols[c], toks[t], path);
				}
}
END_TEST

/*
 * Several products of different types in one launch (blockIdx.z), with
 * gathered, scaled input rows, strided and scattered outputs, biases and an
 * output scale: what matmul_heads and the FFN ask of the kernels.
 */
START_TEST(cuda_mm_gather_scatter)
{
	enum { NP = 3, T = 6, X_ROWS = 4, XS = 600, YS = 50 };
	static const uint32_t ptypes[NP] = { MOE_TYPE_Q4_K, MOE_TYPE_F16, MOE_TYPE_MXFP4 };
	static const int64_t prow[NP] = { 9, 40, 3 }, pcol[NP] = { 512, 45, 64 };
	int32_t xi[T] = { 7, 0, 3, 6, 1, 5 }, yi[T] = { 4, 9, 0, 2, 7, 5 };
	float *x = randf(X_ROWS * XS, 1.0), *xs = randf(8, 1.0), *bias = randf(64, 1.0);
	float osc = 0.75f, *y[NP];
	struct moe_mm_prob p[NP];
	struct mat m[NP];

	for (int path = 0; path < 2; path++) {
		for (int i = 0; i < NP; i++) {
			make_mat(&m[i], ptypes[i], prow[i], pcol[i]);
			y[i] = malloc(sizeof(float) * 10 * YS);
			for (int k = 0; k < 10 * YS; k++)
				y[i][k] = 555.0f;
			p[i] = prob(&m[i], x + 7 * i, XS, y[i], YS, T);
			/* input row xi[t] / 2 of x scaled by xs[xi[t]]; output row yi[t] */
			p[i].x_idx = addr(xi);
			p[i].x_div = 2;
			p[i].x_scale = i != 1 ? addr(xs) : 0;
			p[i].y_idx = addr(yi);
			p[i].bias = i != 2 ? addr(bias) : 0;
			p[i].oscale = i != 0 ? addr(&osc) : 0;
		}
		run_probs(p, NP, path);
		for (int i = 0; i < NP; i++) {
			for (int row = 0; row < 10; row++)
				for (int r = 0; r < YS; r++) {
					int t = -1;
					double want = 555.0, tol = 0;

					for (int k = 0; k < T; k++)
						if (yi[k] == row)
							t = k;
					if (t >= 0 && r < prow[i]) {
						const float *xr = x + 7 * i + (xi[t] / 2) * XS;
						double s = i != 1 ? xs[xi[t]] : 1.0;

						want = ref_dot(&m[i], r, xr, s, &tol, NULL);
						want += i != 2 ? bias[r] : 0;
						want *= i != 0 ? osc : 1.0;
						tol += 1e-6 * fabs(want);
					}
					ck_assert_msg(fabs(y[i][row * YS + r] - want) <= tol,
						      "%s prod %d out row %d [%d]: %.8g vs %.8g",
						      path_name[path], i, row, r,
						      y[i][row * YS + r], want);
				}
			free_mat(&m[i]);
			free(y[i]);
		}
	}
	free(x);
	free(xs);
	free(bias);
}
END_TEST

START_TEST(cuda_mm_get_rows)
{
	int32_t ids[] = { 5, 0, 6, 5, 2, 7, -1 };
	uint32_t n = MOE_ARRAY_SIZE(ids), type = types[_i], blk = moe_type_block_elems(type);
	int64_t cols = blk == 1 ? 37 : 3 * blk;
	uint32_t units = (uint32_t)(blk == 1 ? cols : cols / 32), type_arg = type;
	uint32_t rows = 7, cols_arg = (uint32_t)cols;
	float *dst = malloc(sizeof(float) * n * cols);
	float *dp = dst;
	int32_t *ip = ids;
	struct mat m;
	uint64_t w, rb;
	void *params[] = { &w, &type_arg, &rows, &cols_arg, &rb, &ip, &dp };

	make_mat(&m, type, rows, cols);
	w = addr(m.q);
	rb = (uint64_t)m.rb;
	launch("moe_mm_get_rows", (units + 127) / 128, n, 1, 128, params);
	for (uint32_t i = 0; i < n; i++)
		for (int64_t c = 0; c < cols; c++) {
			float got = dst[i * cols + c];

			/* ids outside the matrix (7, -1) give NaN rows */
			if (ids[i] < 0 || ids[i] >= (int32_t)rows)
				ck_assert_msg(isnan(got), "%s: row %d [%lld] %g", moe_type_name(type),
					      ids[i], (long long)c, got);
			else
				ck_assert_msg(got == (float)m.w[ids[i] * cols + c], "%s: row %d [%lld] "
					      "%.9g vs %.9g", moe_type_name(type), ids[i], (long long)c,
					      got, m.w[ids[i] * cols + c]);
		}
	free_mat(&m);
	free(dst);
}
END_TEST

static double glu_ref(int act, double x, double y)
{
	if (act == MOE_GLU_GELU)
		return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))) * y;
	if (act == MOE_GLU_SWIGLU_OAI) {
		x = fmin(x, 7.0);
		y = fmax(-7.0, fmin(y, 7.0));
		return x / (1 + exp(-1.702 * x)) * (y + 1);
	}
	return x / (1 + exp(-x)) * y;
}

/* The FFN's GLU over two FFNs' entries, one with biases, rows of their own widths. */
START_TEST(cuda_mm_glu)
{
	enum { GS = 2 * 40 + 3, HS = 41, E = 7 };
	float *gu = randf(E * GS, 4.0), *gb = randf(40, 1.0), *ub = randf(40, 1.0);
	float *h = malloc(sizeof(float) * E * HS);
	struct moe_mm_glu_desc g[2] = {
		{ .e0 = 0, .m = 3, .nff = 40, .gate_b = addr(gb), .up_b = addr(ub) },
		{ .e0 = 3, .m = 4, .nff = 17 },
	};
	uint32_t gs = GS, hs = HS;

	for (uint32_t act = MOE_GLU_SILU; act <= MOE_GLU_SWIGLU_OAI; act++) {
		const float *gp = gu;
		const struct moe_mm_glu_desc *gdp = g;
		uint32_t act_arg = act;
		void *params[] = { &gp, &h, &gs, &hs, &act_arg, &gdp };

		for (int i = 0; i < E * HS; i++)
			h[i] = 99.0f;
		launch("moe_mm_glu", (4 * 40 + 255) / 256, 2, 1, 256, params);
		for (int e = 0; e < E; e++)
			for (int i = 0; i < HS; i++) {
				const struct moe_mm_glu_desc *d = &g[e >= 3];
				double want = 99.0;

				if ((uint32_t)i < d->nff)
					want = glu_ref((int)act, gu[e * GS + i] + (d->gate_b ? gb[i] : 0),
						       gu[e * GS + d->nff + i] + (d->up_b ? ub[i] : 0));
				ck_assert_msg(fabs(h[e * HS + i] - want) <= 1e-5 * fmax(1, fabs(want)),
					      "act %u entry %d [%d]: %.8g vs %.8g", act, e, i,
					      h[e * HS + i], want);
			}
	}
	free(gu);
	free(gb);
	free(ub);
	free(h);
}
END_TEST

/*
 * moe-bench gpu-matvec's measurement over the fake driver: it drives the
 * Driver API from context to timing, its matvec runs on the emulation and
 * must agree with the CPU's product, and everything it allocated is freed.
 */
START_TEST(cuda_mm_bench_fake)
{
	static const uint32_t bt[] = { MOE_TYPE_Q4_K, MOE_TYPE_Q8_0, MOE_TYPE_MXFP4 };
	struct moe_cuda_mm_bench_cfg cfg = { .rows = 70, .cols = 512, .reps = 2 };
	struct moe_cuda_mm_bench_res res[3];
	struct simt_fake_config fc = { .quiet = 1 };
	struct simt_fake_stats st;
	struct moe_cuda_api api;
	char dev[64] = "";
	size_t fb;
	int ret;

	simt_fake_cuda_reset(&fc);
	simt_fake_cuda_api(&api);
	ret = moe_cuda_mm_bench(&api, &cfg, bt, 3, res, dev, sizeof(dev));
	if (!moe_cuda_fatbin(&fb)) {
		/* built without nvcc: the benchmark says so instead of running */
		ck_assert_int_eq(ret, -ENOENT);
		ck_assert_ptr_nonnull(strstr(moe_errmsg(), "nvcc"));
		return;
	}
	ck_assert_msg(ret == 0, "%s", moe_errmsg());
	ck_assert_str_eq(dev, "SIMT emulated GPU");
	for (int i = 0; i < 3; i++) {
		ck_assert_uint_eq(res[i].type, bt[i]);
		ck_assert_uint_eq(res[i].bytes, (uint64_t)moe_type_row_bytes(bt[i], 512) * 70);
		/* the CPU's activations are rounded to 8 bits; the device's are not */
		ck_assert_msg(res[i].rel_err < 0.02, "%s: rel err %g", moe_type_name(bt[i]),
			      res[i].rel_err);
	}
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.allocs, 0);
	ck_assert_uint_eq(st.d2d_bytes, 2 * (res[0].bytes + res[1].bytes + res[2].bytes));

	/* a failed allocation is reported, naming the call, and leaks nothing */
	simt_fake_cuda_reset(&fc);
	simt_fake_cuda_api(&api);
	ck_assert_int_eq(simt_fake_cuda_fail("cuMemAlloc", 3, CUDA_ERROR_OUT_OF_MEMORY), 0);
	ck_assert_int_lt(moe_cuda_mm_bench(&api, &cfg, bt, 1, res, dev, sizeof(dev)), 0);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "cuMemAlloc"));
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.allocs, 0);
	simt_fake_cuda_reset(NULL);
}
END_TEST

/* Without a driver, moe-bench gpu-matvec says so and exits 0. */
START_TEST(cuda_mm_bench_no_driver)
{
	char cmd[512], *out = NULL;
	int st;

	snprintf(cmd, sizeof(cmd), "%s gpu-matvec", tu_bin("moe-bench"));
	st = tu_run(cmd, 1, &out);
	ck_assert_msg(st == 0, "exit %d: %s", st, out);
	ck_assert_msg(strstr(out, "no CUDA driver") != NULL, "%s", out);
	free(out);
}
END_TEST

/* ------------------------------------------------------------ the ops over the fake driver */

/*
 * libmoe/backend/cuda_mm.c's four ops on the CUDA backend over the fake
 * driver, whose launches run the kernels on the emulation: argument checks,
 * the descriptors it uploads, the path it picks, the workspace it carves.
 * The op suite's "cuda-sim" row runs the same ops against its own reference;
 * these add routed experts on both sides of the decode/prefill split (the
 * q8_1 and the tiled path) and the errors the ops return.
 */
static struct moe_backend *cbe;

static moe_dptr dalloc(size_t bytes)
{
	moe_dptr d;

	ck_assert_msg(cbe->ops->alloc(cbe, bytes ? bytes : 1, &d) == 0, "%s", moe_errmsg());
	return d;
}

static moe_dptr dup_(const void *host, size_t bytes)
{
	moe_dptr d = dalloc(bytes);

	ck_assert_int_eq(cbe->ops->upload(cbe, MOE_BE_COMPUTE, d, host, bytes), 0);
	return d;
}

static void dget(void *host, moe_dptr d, size_t bytes)
{
	ck_assert_int_eq(cbe->ops->download(cbe, MOE_BE_COMPUTE, host, d, bytes), 0);
	ck_assert_int_eq(cbe->ops->sync(cbe), 0);
}

/* A CUDA backend over the fake driver, with a workspace for @sh (NULL: none). */
static void cu_open(const struct moe_be_shape *sh)
{
	struct simt_fake_config fc = { .quiet = 1 };
	struct moe_backend_params bp = { 0 };
	struct moe_cuda_api api;

	simt_fake_cuda_reset(&fc);
	simt_fake_cuda_api(&api);
	ck_assert_msg(moe_backend_cuda_create_api(&api, &bp, &cbe) == 0, "%s", moe_errmsg());
	if (sh) {
		uint64_t ws = cbe->desc->workspace_bytes(sh);

		ck_assert_int_eq(cbe->ops->set_workspace(cbe, dalloc(ws), ws), 0);
	}
}

static void cu_close(void)
{
	ck_assert_int_eq(cbe->ops->sync(cbe), 0);
	moe_backend_destroy(cbe);
	cbe = NULL;
	simt_fake_cuda_reset(NULL);
}

static const struct moe_be_shape cu_shape = {
	.max_tok = 20, .max_ent = 12, .n_embd = 512, .max_cols = 512, .max_ff = 256,
	.max_head = 4, .max_head_dim = 64, .max_ffn = 3, .max_heads_io = 128,
};

static struct moe_be_mat dmat(const struct mat *m)
{
	return (struct moe_be_mat){ .p = dup_(m->q, (size_t)(m->rb * m->rows)), .type = m->type,
				    .rows = m->rows, .cols = m->cols };
}

/* One FFN's matrices: host values and device copies. */
struct cffn {
	struct mat m[3];
	uint32_t n_mats;
	float *gb, *ub, *db, scale;
	struct moe_be_ffn d;
};

static void make_cffn(struct cffn *f, uint32_t type, int64_t E, int64_t F, bool fused, bool bias,
		      bool scaled)
{
	memset(f, 0, sizeof(*f));
	f->n_mats = fused ? 2 : 3;
	make_mat(&f->m[0], type, fused ? 2 * F : F, E);
	if (!fused)
		make_mat(&f->m[1], type, F, E);
	make_mat(&f->m[f->n_mats - 1], MOE_TYPE_Q8_0, E, F);
	f->d.n_mats = f->n_mats;
	for (uint32_t k = 0; k < f->n_mats; k++)
		f->d.mats[k] = dmat(&f->m[k]);
	if (bias) {
		f->gb = randf((size_t)F, 0.5);
		f->ub = randf((size_t)F, 0.5);
		f->db = randf((size_t)E, 0.5);
		f->d.gate_b = dup_(f->gb, sizeof(float) * F);
		f->d.up_b = dup_(f->ub, sizeof(float) * F);
		f->d.down_b = dup_(f->db, sizeof(float) * E);
	}
	f->scale = 1.0f;
	if (scaled) {
		f->scale = 0.75f;
		f->d.out_scale = dup_(&f->scale, sizeof(float));
	}
}

static void free_cffn(struct cffn *f)
{
	for (uint32_t k = 0; k < f->n_mats; k++)
		free_mat(&f->m[k]);
	free(f->gb);
	free(f->ub);
	free(f->db);
}

/* out = scale * (down(act(gate x + gb) * (up x + ub)) + db) in double */
static void cffn_ref(const struct cffn *f, int act, const float *x, int64_t E, int64_t F,
		     double *out)
{
	const struct mat *G = &f->m[0], *U = f->n_mats == 2 ? &f->m[0] : &f->m[1];
	const struct mat *D = &f->m[f->n_mats - 1];
	int64_t uoff = f->n_mats == 2 ? F : 0;
	double *h = malloc(sizeof(double) * F);

	for (int64_t i = 0; i < F; i++) {
		double g = 0, u = 0;

		for (int64_t c = 0; c < E; c++) {
			g += G->w[i * E + c] * x[c];
			u += U->w[(uoff + i) * E + c] * x[c];
		}
		h[i] = glu_ref(act, g + (f->gb ? f->gb[i] : 0), u + (f->ub ? f->ub[i] : 0));
	}
	for (int64_t r = 0; r < E; r++) {
		double sum = 0;

		for (int64_t i = 0; i < F; i++)
			sum += D->w[r * F + i] * h[i];
		out[r] = (sum + (f->db ? f->db[r] : 0)) * f->scale;
	}
	free(h);
}

/*
 * Routed experts as the engine runs them: two of three FFNs in one call
 * over their entries of a (token, choice) list, out of order; input rows
 * entry / stride, scaled per entry in one variant; output rows the entries.
 * One entry per expert is decode (the q8_1 path), four is prefill (tiled).
 */
START_TEST(cuda_mm_op_ffn)
{
	enum { T = 6, K = 2, NF = 3, E = 256 };
	static const uint32_t ftypes[] = { MOE_TYPE_Q4_K, MOE_TYPE_F32, MOE_TYPE_MXFP4 };
	uint32_t type = ftypes[_i / 3];
	int variant = _i % 3;
	int64_t FF = moe_type_block_elems(type) == 256 ? 256 : 96;
	int act = variant == 1 ? MOE_GLU_SWIGLU_OAI : variant == 2 ? MOE_GLU_GELU : MOE_GLU_SILU;

	cu_open(&cu_shape);
	for (int prefill = 0; prefill < 2; prefill++) {
		int32_t ents[T * K] = { 1, 4, 6, 9, 11, 0, 3, 5, 2, 7, 8, 10 };
		uint32_t off[NF] = { 0, 5, 8 }, cnt[NF] = { 5, 3, 4 };
		uint32_t order[2] = { 2, 0 };
		float *x = randf(T * E, 1.0), *ins = randf(T * K, 0.5);
		float *got = malloc(sizeof(float) * T * K * E);
		double want[E];
		struct cffn f[NF];
		struct moe_be_ffn d[2];
		moe_dptr out;
		struct moe_ffn_args a;

		if (!prefill)
			cnt[0] = cnt[1] = cnt[2] = 1;
		for (uint32_t i = 0; i < T * K * E; i++)
			got[i] = 12345.0f;
		out = dup_(got, sizeof(float) * T * K * E);
		for (int i = 0; i < NF; i++) {
			make_cffn(&f[i], type, E, FF, i == 1 || (i == 2 && variant == 2),
				  variant == 1, i == 2);
			f[i].d.m = cnt[i];
			f[i].d.ent_off = off[i];
		}
		for (int i = 0; i < 2; i++)
			d[i] = f[order[i]].d;
		a = (struct moe_ffn_args){
			.ffn = d, .n_ffn = 2, .stride = K, .act = (enum moe_glu)act, .n_embd = E,
			.x = dup_(x, sizeof(float) * T * E), .ents = dup_(ents, sizeof(ents)),
			.in_scale = variant == 2 ? dup_(ins, sizeof(float) * T * K) : 0, .out = out,
		};
		ck_assert_msg(moe_cuda_ffn(cbe, &a) == 0, "%s", moe_errmsg());
		dget(got, out, sizeof(float) * T * K * E);
		for (int oi = 0; oi < 2; oi++) {
			uint32_t fi = order[oi];

			for (uint32_t j = 0; j < cnt[fi]; j++) {
				int32_t ent = ents[off[fi] + j];
				double err = 0, mag = 0;
				float xs[E];

				for (int c = 0; c < E; c++)
					xs[c] = x[(ent / K) * E + c] * (variant == 2 ? ins[ent] : 1.0f);
				cffn_ref(&f[fi], act, xs, E, FF, want);
				for (int c = 0; c < E; c++) {
					err += (got[ent * E + c] - want[c]) * (got[ent * E + c] - want[c]);
					mag += want[c] * want[c];
				}
				/* down is q8_0: its input may be rounded, as the op suite allows */
				ck_assert_msg(sqrt(err) <= 0.03 * sqrt(mag) + 1e-6, "%s variant %d %s: "
					      "entry %d off by %g of %g", moe_type_name(type), variant,
					      prefill ? "prefill" : "decode", ent, sqrt(err), sqrt(mag));
			}
		}
		/* the entries of the FFN that did not run are untouched */
		for (uint32_t j = 0; j < cnt[1]; j++)
			ck_assert_float_eq(got[(size_t)ents[off[1] + j] * E], 12345.0f);
		for (int i = 0; i < NF; i++)
			free_cffn(&f[i]);
		free(x);
		free(ins);
		free(got);
	}
	cu_close();
}
END_TEST

/* get_rows through the op, and what the ops refuse before queueing anything. */
START_TEST(cuda_mm_op_errors)
{
	int32_t ids[3] = { 2, 0, 2 };
	float got[3 * 64];
	struct mat m;
	struct moe_be_mat w, bad;
	moe_dptr y, x;
	float xh[64] = { 0 };
	struct moe_be_shape tiny = { .max_tok = 1, .max_ent = 1, .n_embd = 32, .max_cols = 32,
				     .max_ff = 32, .max_head = 1, .max_ffn = 1, .max_heads_io = 32 };
	struct moe_be_ffn F = { 0 };
	struct moe_ffn_args a;

	cu_open(&cu_shape);
	make_mat(&m, MOE_TYPE_Q5_1, 3, 64);
	w = dmat(&m);
	y = dalloc(sizeof(got));
	ck_assert_int_eq(moe_cuda_get_rows(cbe, &w, dup_(ids, sizeof(ids)), 3, y), 0);
	dget(got, y, sizeof(got));
	for (int i = 0; i < 3; i++)
		for (int c = 0; c < 64; c++)
			ck_assert(got[i * 64 + c] == (float)m.w[ids[i] * 64 + c]);

	bad = w;
	bad.type = MOE_TYPE_Q2_K;
	ck_assert_int_eq(moe_cuda_matmul(cbe, &bad, 1, y, 1, &y), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "no kernels for weight type q2_K"));
	bad = w;
	bad.cols = 48;
	ck_assert_int_eq(moe_cuda_get_rows(cbe, &bad, y, 1, y), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "multiple of 32"));
	ck_assert_int_eq(moe_cuda_matmul(cbe, &w, 9, y, 1, &y), -EINVAL);

	F.n_mats = 3;
	F.mats[0] = F.mats[1] = F.mats[2] = w;
	F.m = 1;
	a = (struct moe_ffn_args){ .ffn = &F, .n_ffn = 1, .stride = 1, .n_embd = 64, .x = y,
				   .out = y };
	ck_assert_int_eq(moe_cuda_ffn(cbe, &a), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "do not fit n_embd 64"));
	F.n_mats = 0;
	ck_assert_int_eq(moe_cuda_ffn(cbe, &a), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "0 matrices (2 or 3)"));
	F.n_mats = 3;
	a.n_ffn = 2;
	ck_assert_int_eq(moe_cuda_ffn(cbe, &a), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "need an entry list"));

	/* a workspace sized for smaller shapes: the op says what it needs */
	{
		uint64_t ws = cbe->desc->workspace_bytes(&tiny);

		ck_assert_int_eq(cbe->ops->set_workspace(cbe, dalloc(ws), ws), 0);
	}
	{
		struct mat big, dm;
		struct moe_be_mat bw;
		struct moe_be_ffn G = { .n_mats = 3, .m = 64 };

		make_mat(&big, MOE_TYPE_Q8_0, 256, 64);
		bw = dmat(&big);
		G.mats[0] = G.mats[1] = bw;
		make_mat(&dm, MOE_TYPE_Q8_0, 64, 256);
		G.mats[2] = dmat(&dm);
		a = (struct moe_ffn_args){ .ffn = &G, .n_ffn = 1, .stride = 1, .n_embd = 64,
					   .x = dalloc(4 * 64 * 64), .out = dalloc(4 * 64 * 64) };
		ck_assert_int_eq(moe_cuda_ffn(cbe, &a), -ENOSPC);
		ck_assert_ptr_nonnull(strstr(moe_errmsg(), "workspace_bytes"));
		free_mat(&big);
		free_mat(&dm);
	}
	free_mat(&m);
	cu_close();

	/* no workspace at all */
	cu_open(NULL);
	make_mat(&m, MOE_TYPE_Q8_0, 3, 64);
	w = dmat(&m);
	x = dup_(xh, sizeof(xh));
	y = dalloc(sizeof(float) * 3);
	ck_assert_int_eq(moe_cuda_matmul(cbe, &w, 1, x, 1, &y), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "set_workspace"));
	free_mat(&m);
	cu_close();
}
END_TEST

Suite *suite_cuda_mm(void)
{
	Suite *s = suite_create("cuda_mm");
	TCase *tc = tcase_create("kernels");
	int n = (int)MOE_ARRAY_SIZE(types);
	size_t fb;

	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, cuda_mm_products, 0, n);
	tcase_add_test(tc, cuda_mm_gather_scatter);
	tcase_add_loop_test(tc, cuda_mm_get_rows, 0, n);
	tcase_add_test(tc, cuda_mm_glu);
	tcase_add_test(tc, cuda_mm_bench_fake);
	if (moe_cuda_fatbin(&fb)) {
		tcase_add_loop_test(tc, cuda_mm_op_ffn, 0, 9);
		tcase_add_test(tc, cuda_mm_op_errors);
	} else {
		/* the backend loads the embedded fatbin; the kernel tests above run regardless */
		tu_skip("cuda_mm_op_ffn, cuda_mm_op_errors",
			"libmoe was built without nvcc: the CUDA backend has no fatbin to load");
	}
	{
		void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);

		if (h) {
			dlclose(h);
			tu_skip("cuda_mm_bench_no_driver", "a CUDA driver is installed here");
		} else {
			tcase_add_test(tc, cuda_mm_bench_no_driver);
		}
	}
	suite_add_tcase(s, tc);
	return s;
}
