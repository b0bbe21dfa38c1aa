/* SPDX-License-Identifier: MIT */
/*
 * The CUDA backend's matrix operations for F32 weights (the kernels of
 * cuda/mm_f32_tmp.cu): get_rows, matmul, matmul_heads and the FFN.  Other
 * weight types are refused with -ENOSYS naming the type.
 */
#include <errno.h>

#include "backend/cuda_int.h"
#include "moe/moe.h"
#include "util/util.h"

#define MM_WARPS 8

static int mm_f32_only(const char *op, const struct moe_be_mat *w)
{
	if (w->type == MOE_TYPE_F32 && w->rows >= 0 && w->rows <= UINT32_MAX && w->cols > 0 &&
	    w->cols <= UINT32_MAX)
		return 0;
	if (w->type != MOE_TYPE_F32)
		return moe_err(ENOSYS, "%s: this build's CUDA matrix kernels take F32 weights only, "
			       "not %s (run the model on --backend cpu, or convert it to f32)", op,
			       moe_type_name(w->type) ? moe_type_name(w->type) : "?");
	return moe_err(EINVAL, "%s: a matrix of %lld x %lld", op, (long long)w->rows,
		       (long long)w->cols);
}

uint64_t moe_cuda_mm_workspace_bytes(const struct moe_be_shape *s)
{
	uint64_t rows = MOE_MAX(s->max_tok, s->max_ent);

	/* the FFN's hidden rows */
	return MOE_MAX(rows, 1) * MOE_MAX(s->max_ff, 1) * sizeof(float);
}

int moe_cuda_get_rows(struct moe_backend *be, const struct moe_be_mat *w, moe_dptr ids,
		      uint32_t n, moe_dptr dst)
{
	struct moe_cuda *c = moe_cuda_of(be);
	long long rows = w->rows, cols = w->cols;
	void *p[] = { (void *)&w->p, &rows, &cols, &ids, &n, &dst };
	uint64_t blocks = ((uint64_t)n * w->cols + 255) / 256;
	int ret = mm_f32_only("get_rows", w);

	if (ret < 0 || !n)
		return ret;
	return moe_cuda_launch(c, "moe_mm_f32_get_rows", (unsigned)MOE_MIN(blocks, 65535), 1, 1,
			       256, 1, 1, 0, p);
}

static int matvec(struct moe_cuda *c, moe_dptr w, uint32_t rows, uint32_t cols, moe_dptr x,
		  moe_dptr y, uint64_t x_tok, uint64_t x_head, uint64_t y_tok, uint64_t y_head,
		  uint32_t n_tok, uint32_t n_head)
{
	void *p[] = { &w, &rows, &cols, &x, &y, &x_tok, &x_head, &y_tok, &y_head };

	if (!rows || !n_tok || !n_head)
		return 0;
	if (n_tok > 65535 || n_head > 65535)
		return moe_err(EINVAL, "matmul: %u tokens, %u heads (65535 at most)", n_tok, n_head);
	return moe_cuda_launch(c, "moe_mm_f32_matvec", (rows + MM_WARPS - 1) / MM_WARPS, n_tok,
			       n_head, 32 * MM_WARPS, 1, 1, 0, p);
}

int moe_cuda_matmul(struct moe_backend *be, const struct moe_be_mat *w, uint32_t n_w,
		    moe_dptr x, uint32_t n_tok, const moe_dptr *y)
{
	struct moe_cuda *c = moe_cuda_of(be);

	for (uint32_t i = 0; i < n_w; i++) {
		int ret = mm_f32_only("matmul", &w[i]);

		if (ret == 0 && w[i].cols != w[0].cols)
			ret = moe_err(EINVAL, "matmul: matrices of %lld and %lld columns share an "
				      "input", (long long)w[0].cols, (long long)w[i].cols);
		if (ret == 0)
			ret = matvec(c, w[i].p, (uint32_t)w[i].rows, (uint32_t)w[i].cols, x, y[i],
				     (uint64_t)w[i].cols, 0, (uint64_t)w[i].rows, 0, n_tok, 1);
		if (ret < 0)
			return ret;
	}
	return 0;
}

int moe_cuda_matmul_heads(struct moe_backend *be, const struct moe_heads_args *a)
{
	int ret = mm_f32_only("matmul_heads", &a->w);

	if (ret < 0)
		return ret;
	return matvec(moe_cuda_of(be), a->w.p, (uint32_t)a->w.rows, (uint32_t)a->w.cols, a->x, a->y,
		      a->x_tok, a->x_head, a->y_tok, a->y_head, a->n_tok, a->n_head);
}

/* cuda/mm_f32_tmp.cu's struct mm_f32_ffn */
struct mm_f32_ffn {
	uint64_t gate, up, down, gate_b, up_b, down_b, out_scale;
	uint64_t x, ents, in_scale, out, hid;
	uint32_t n_embd, n_ff, m, ent_off, stride, act;
};

int moe_cuda_ffn(struct moe_backend *be, const struct moe_ffn_args *a)
{
	struct moe_cuda *c = moe_cuda_of(be);

	if (!a->ents && a->n_ffn > 1)
		return moe_err(EINVAL, "ffn: several FFNs need an entry list");
	for (uint32_t i = 0; i < a->n_ffn; i++) {
		const struct moe_be_ffn *f = &a->ffn[i];
		const struct moe_be_mat *dn = &f->mats[f->n_mats - 1];
		uint32_t nff = (uint32_t)(f->n_mats == 2 ? f->mats[0].rows / 2 : f->mats[0].rows);
		struct mm_f32_ffn k = {
			.gate = f->mats[0].p, .down = dn->p, .gate_b = f->gate_b, .up_b = f->up_b,
			.down_b = f->down_b, .out_scale = f->out_scale, .x = a->x, .ents = a->ents,
			.in_scale = a->in_scale, .out = a->out, .hid = c->ws_mm, .n_embd = a->n_embd,
			.n_ff = nff, .m = f->m, .ent_off = f->ent_off, .stride = a->stride,
			.act = a->act,
		};
		void *p[] = { &k };
		int ret = 0;

		if (f->n_mats < 2 || f->n_mats > 3)
			return moe_err(EINVAL, "ffn: %u matrices (2 or 3)", f->n_mats);
		for (uint32_t j = 0; j < f->n_mats && !ret; j++)
			ret = mm_f32_only("ffn", &f->mats[j]);
		if (ret < 0)
			return ret;
		if (f->mats[0].cols != a->n_embd || dn->rows != a->n_embd || dn->cols != nff ||
		    (f->n_mats == 3 && (f->mats[1].rows != nff || f->mats[1].cols != a->n_embd)) ||
		    (f->n_mats == 2 && f->mats[0].rows % 2))
			return moe_err(EINVAL, "ffn: matrix shapes do not fit n_embd %u and width %u",
				       a->n_embd, nff);
		if (!f->m)
			continue;
		if ((uint64_t)f->m * nff * sizeof(float) > c->ws_mm_bytes || f->m > 65535)
			return moe_err(ENOSPC, "ffn: %u rows of %u need more workspace than the %llu "
				       "bytes planned", f->m, nff, (unsigned long long)c->ws_mm_bytes);
		k.up = f->n_mats == 3 ? f->mats[1].p : f->mats[0].p + (uint64_t)nff * a->n_embd * 4;
		/* the hidden rows are reused by the next FFN only after this one's down */
		ret = moe_cuda_launch(c, "moe_mm_f32_ffn_gate_up", (nff + MM_WARPS - 1) / MM_WARPS,
				      f->m, 1, 32 * MM_WARPS, 1, 1, 0, p);
		if (!ret)
			ret = moe_cuda_launch(c, "moe_mm_f32_ffn_down",
					      (a->n_embd + MM_WARPS - 1) / MM_WARPS, f->m, 1,
					      32 * MM_WARPS, 1, 1, 0, p);
		if (ret < 0)
			return ret;
	}
	return 0;
}
