/* SPDX-License-Identifier: MIT */
/* Matrix products over quantized weights, and the public quantize/dequantize calls. */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "quant/quant.h"
#include "util/threadpool.h"
#include "util/util.h"


static int kernel_traits(uint32_t type, const char *what, const struct moe_type_traits **out)
{
	const struct moe_type_traits *t = moe_type_traits(type);

	*out = t;
	if (!t)
		return moe_err(EINVAL, "%s: unknown type id %u", what, type);
	if (!t->to_float || !t->vec_dot)
		return moe_err(EOPNOTSUPP, "%s: type %s has no CPU kernels; supported: f32 f16 "
			       "bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q4_K q5_K q6_K q8_K mxfp4", what,
			       t->name);
	return 0;
}

static int check_len(const struct moe_type_traits *t, int64_t n, const char *what)
{
	if (n < 0 || n % t->block)
		return moe_err(EINVAL, "%s: %lld elements is not a multiple of the %s block of %u",
			       what, (long long)n, t->name, t->block);
	return 0;
}

int moe_dequantize(uint32_t type, const void *src, float *dst, int64_t n)
{
	const struct moe_type_traits *t;
	int ret;

	ret = kernel_traits(type, "dequantize", &t);
	if (ret)
		return ret;
	ret = check_len(t, n, "dequantize");
	if (ret)
		return ret;
	if (n && (!src || !dst))
		return moe_err(EINVAL, "dequantize: NULL buffer");
	t->to_float(src, dst, n);
	return 0;
}

int64_t moe_quantize(uint32_t type, const float *src, void *dst, int64_t n)
{
	const struct moe_type_traits *t;
	int ret;

	ret = kernel_traits(type, "quantize", &t);
	if (ret)
		return ret;
	ret = check_len(t, n, "quantize");
	if (ret)
		return ret;
	if (n && (!src || !dst))
		return moe_err(EINVAL, "quantize: NULL buffer");
	/* block scales cannot carry inf/nan: one would silently zero or poison its block */
	if (t->quantized)
		for (int64_t i = 0; i < n; i++)
			if (!isfinite(src[i]))
				return moe_err(EINVAL, "quantize to %s: element %lld is %g; only finite "
					       "values can be quantized (keep such tensors in f32/f16)",
					       t->name, (long long)i, (double)src[i]);
	return n ? (int64_t)t->from_float(src, dst, n) : 0;
}

int moe_dequant_row(uint32_t type, const void *w, int64_t cols, int64_t row, float *dst)
{
	const struct moe_type_traits *t;
	int ret;

	ret = kernel_traits(type, "dequantize row", &t);
	if (ret)
		return ret;
	ret = check_len(t, cols, "dequantize row");
	if (ret)
		return ret;
	if (row < 0)
		return moe_err(EINVAL, "dequantize row: negative row %lld", (long long)row);
	t->to_float((const uint8_t *)w + row * (cols / t->block * t->bytes), dst, cols);
	return 0;
}

int moe_mm_init(struct moe_mm *mm, uint32_t wtype, const void *w, int64_t rows, int64_t cols)
{
	const struct moe_type_traits *t;
	int ret;

	memset(mm, 0, sizeof(*mm));
	ret = kernel_traits(wtype, "matmul", &t);
	if (ret)
		return ret;
	if (rows < 0 || cols <= 0)
		return moe_err(EINVAL, "matmul: bad shape rows=%lld cols=%lld", (long long)rows,
			       (long long)cols);
	ret = check_len(t, cols, "matmul");
	if (ret)
		return ret;
	mm->at = moe_type_traits(t->vec_dot_type);
	ret = check_len(mm->at, cols, "matmul activations");
	if (ret)
		return ret;
	mm->t = t;
	mm->w = w;
	mm->w_row_bytes = (size_t)(cols / t->block) * t->bytes;
	mm->rows = rows;
	mm->cols = cols;
	mm->act_row_bytes = (size_t)(cols / mm->at->block) * mm->at->bytes;
	mm->y_stride = rows;
	return 0;
}

void moe_mm_quantize(const struct moe_mm *mm, const float *x, void *dst)
{
	if (mm->t->vec_dot_type == MOE_TYPE_F32)
		memcpy(dst, x, sizeof(float) * mm->cols);
	else if (mm->at->act_from_float)
		mm->at->act_from_float(x, dst, mm->cols);
	else
		mm->at->from_float(x, dst, mm->cols);
}

/*
 * Rows [r0, r1) of one activation row, four rows at a time where the type
 * has a kernel for it.  Four rows read at once are four interleaved streams:
 * from memory (@stream: a decode product) that pays only for short rows,
 * whose single-row calls cost most in overhead (measured: up to 1024
 * columns 1.1-1.3x, at 2048-4096 columns below the one sequential stream of
 * the single-row kernel); rows just read for other tokens (a token after
 * the first of a row tile) are in cache, where four at once pay at every
 * length.
 */
#define R4_STREAM_COLS 1024
/* rows fetched ahead of a four-row group, in rows */
#define R4_AHEAD 8

static void rows_one_token(const struct moe_mm *j, const uint8_t *a, float *y, int64_t r0,
			   int64_t r1, bool stream)
{
	void (*dot)(int64_t, float *, const void *, const void *) = j->t->vec_dot;
	void (*r4)(int64_t, float *, const void *, size_t, const void *) = j->t->vec_dot_r4;
	int64_t r = r0;

	if (r4 && (!stream || j->cols <= R4_STREAM_COLS)) {
		/*
		 * Four rows are four short streams (a row of a decode matrix is a
		 * few hundred bytes), too short for the hardware prefetcher to
		 * follow: fetch the rows two groups ahead while this one is summed.
		 */
		const uint8_t *pf = j->w + (size_t)MOE_MIN(r + 4, r1) * j->w_row_bytes;

		for (; r + 4 <= r1; r += 4) {
			const uint8_t *to = j->w + (size_t)MOE_MIN(r + 4 + R4_AHEAD, r1) * j->w_row_bytes;

			for (; pf < to; pf += 64)
				__builtin_prefetch(pf);
			r4(j->cols, &y[r], j->w + (size_t)r * j->w_row_bytes, j->w_row_bytes, a);
		}
	}
	for (; r < r1; r++)
		dot(j->cols, &y[r], j->w + (size_t)r * j->w_row_bytes, a);
}

void moe_mm_rows(const struct moe_mm *j, int64_t r0, int64_t r1)
{
	void (*x4)(int64_t, float *, size_t, const void *, const void *, size_t) =
		j->t->vec_dot_x4;

	if (j->n_tok == 1) {
		rows_one_token(j, j->act, j->y, r0, r1, true);
		return;
	}
	for (int64_t rb = r0; rb < r1; rb += MOE_MM_ROW_TILE) {
		int64_t re = MOE_MIN(rb + MOE_MM_ROW_TILE, r1), t = 0;

		if (x4)
			for (; t + 4 <= j->n_tok; t += 4)
				for (int64_t r = rb; r < re; r++)
					x4(j->cols, &j->y[t * j->y_stride + r], (size_t)j->y_stride,
					   j->w + (size_t)r * j->w_row_bytes,
					   j->act + (size_t)t * j->act_row_bytes, j->act_row_bytes);
		for (; t < j->n_tok; t++)
			rows_one_token(j, j->act + (size_t)t * j->act_row_bytes,
				       j->y + t * j->y_stride, rb, re, t == 0);
	}
}

struct matmul_job {
	struct moe_mm mm;
	const float *x;
	uint8_t *act;              /* quantized activations, or x itself */
	_Atomic int64_t next;      /* first row not yet taken */
	int64_t chunk;             /* rows taken at a time */
};

static void quantize_act(void *arg, int ith, int nth)
{
	struct matmul_job *j = arg;
	int64_t t0 = j->mm.n_tok * ith / nth, t1 = j->mm.n_tok * (ith + 1) / nth;

	for (int64_t t = t0; t < t1; t++)
		moe_mm_quantize(&j->mm, j->x + t * j->mm.cols, j->act + (size_t)t * j->mm.act_row_bytes);
}

/*
 * Threads take chunks of rows from a shared counter rather than a fixed
 * share each, so a thread that is preempted or slower (SMT sibling busy,
 * remote NUMA memory) does not hold up the whole product.
 */
static void matmul_rows(void *arg, int ith, int nth)
{
	struct matmul_job *j = arg;
	int64_t r0;

	(void)ith;
	if (nth == 1) {
		moe_mm_rows(&j->mm, 0, j->mm.rows);
		return;
	}
	while ((r0 = atomic_fetch_add_explicit(&j->next, j->chunk, memory_order_relaxed)) <
	       j->mm.rows)
		moe_mm_rows(&j->mm, r0, MOE_MIN(r0 + j->chunk, j->mm.rows));
}

int moe_matmul(struct moe_threadpool *pool, uint32_t wtype, const void *w, int64_t rows,
	       int64_t cols, const float *x, int64_t n_tok, float *y)
{
	struct matmul_job j;
	int ret;

	ret = moe_mm_init(&j.mm, wtype, w, rows, cols);
	if (ret)
		return ret;
	if (n_tok < 0)
		return moe_err(EINVAL, "matmul: bad token count %lld", (long long)n_tok);
	if (!rows || !n_tok)
		return 0;
	if (!w || !x || !y)
		return moe_err(EINVAL, "matmul: NULL buffer");
	j.mm.n_tok = n_tok;
	j.mm.y = y;
	j.x = x;
	if (j.mm.t->vec_dot_type == MOE_TYPE_F32) {
		j.act = (uint8_t *)x;
	} else {
		/* Q8_K's float scale wants 4-byte alignment; 64 keeps rows on cache lines */
		size_t bytes = MOE_ALIGN_UP((size_t)n_tok * j.mm.act_row_bytes, 64);

		j.act = aligned_alloc(64, bytes);
		if (!j.act)
			return moe_err(ENOMEM, "matmul: no memory for %zu bytes of activations",
				       bytes);
		if (n_tok > 1)
			moe_threadpool_run(pool, quantize_act, &j);
		else
			quantize_act(&j, 0, 1);
	}
	j.mm.act = j.act;
	/* about 16 chunks per thread, each at least 16 KiB of weights and tile-aligned */
	j.chunk = rows / ((int64_t)moe_threadpool_size(pool) * 16);
	j.chunk = MOE_MAX(j.chunk, (int64_t)(16384 / j.mm.w_row_bytes) + 1);
	j.chunk = MOE_ALIGN_UP(j.chunk, MOE_MM_ROW_TILE);
	atomic_init(&j.next, 0);
	moe_threadpool_run(pool, matmul_rows, &j);
	if (j.act != (const uint8_t *)x)
		free(j.act);
	return 0;
}
