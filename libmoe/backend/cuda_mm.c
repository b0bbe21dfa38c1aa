/* SPDX-License-Identifier: MIT */
/*
 * The CUDA backend's matrix ops: get_rows, matmul, matmul_heads and the
 * FFN, over the kernels of cuda/mm.cu.  Every product becomes a struct
 * moe_mm_prob; the descriptors of one call are copied into the matrix part
 * of the workspace (ws_mm) on the compute stream and one launch runs them
 * all (blockIdx.z picks the product).  The copy is queued behind the work
 * before it, so the next call may reuse the same bytes.
 *
 * Decode-sized calls (at most MM_MV_TOK tokens per product) run the matvec
 * kernel, larger ones the tiled kernel.  Shapes and types are checked here,
 * before anything is queued, with the CPU backend's messages.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../../cuda/mm_args.h"
#include "backend/cuda_int.h"
#include "moe/moe.h"
#include "util/util.h"

#define MM_ALIGN 256
#define MM_MAX_MATS 8            /* matrices of one matmul, as the CPU backend */
#define MM_MV_TOK 4              /* up to this many tokens: the matvec kernel */
#define MM_MV_ROWS 4             /* rows per matvec block (one per warp) */
#define MM_TILE 32               /* rows and tokens per tiled block */
#define MM_GRID_YZ 65535         /* gridDim.y and .z limit */
#define MM_Q8_BLOCK 40           /* a q8_1 block of cuda/mm_q8.cu: scale, sum, 32 codes */

_Static_assert(sizeof(struct moe_mm_prob) == 104, "moe_mm_prob is shared with cuda/mm.cu");
_Static_assert(sizeof(struct moe_mm_glu_desc) == 32, "moe_mm_glu_desc is shared with cuda/mm.cu");
_Static_assert((int)MOE_MM_Q4_K == (int)MOE_TYPE_Q4_K && (int)MOE_MM_MXFP4 == (int)MOE_TYPE_MXFP4 &&
	       (int)MOE_MM_BF16 == (int)MOE_TYPE_BF16, "the kernels use the GGML type ids");

static bool mm_type_ok(uint32_t t)
{
	switch (t) {
	case MOE_TYPE_F32: case MOE_TYPE_F16: case MOE_TYPE_BF16: case MOE_TYPE_Q4_0:
	case MOE_TYPE_Q4_1: case MOE_TYPE_Q5_0: case MOE_TYPE_Q5_1: case MOE_TYPE_Q8_0:
	case MOE_TYPE_Q4_K: case MOE_TYPE_Q5_K: case MOE_TYPE_Q6_K: case MOE_TYPE_MXFP4:
		return true;
	default:
		return false;
	}
}

/* A matrix the kernels can read: a supported type, whole blocks, 32-bit shapes. */
static int mm_check_mat(const char *op, const struct moe_be_mat *w)
{
	const char *name = moe_type_name(w->type);
	uint32_t blk;

	if (!mm_type_ok(w->type))
		return moe_err(EINVAL, "%s: the CUDA backend has no kernels for weight type %s (%u)",
			       op, name ? name : "?", w->type);
	blk = moe_type_block_elems(w->type);
	if (w->rows < 0 || w->rows > INT32_MAX || w->cols <= 0 || w->cols > INT32_MAX ||
	    w->cols % blk)
		return moe_err(EINVAL, "%s: a %s matrix of %lld x %lld (columns a positive multiple "
			       "of %u)", op, name, (long long)w->rows, (long long)w->cols, blk);
	return 0;
}

/*
 * What cuda.c's entry points do first: refuse a lost context, and make the
 * context current on the calling thread.
 */
static int mm_enter(struct moe_cuda *c, const char *op)
{
	if (c->lost)
		return moe_err(EIO, "%s: the GPU context was lost earlier (error %d): no more work "
			       "can run on it, restart the program", op, (int)c->lost_err);
	return moe_cuda_check(c, c->api.cuCtxSetCurrent(c->ctx), "cuCtxSetCurrent");
}

/* Room in ws_mm: offsets of consecutive aligned parts, or -ENOSPC naming the op. */
struct mm_ws {
	uint64_t used;
};

static uint64_t mm_take(struct mm_ws *ws, uint64_t bytes)
{
	uint64_t off = ws->used;

	ws->used = MOE_ALIGN_UP(off + bytes, MM_ALIGN);
	return off;
}

static int mm_ws_fits(struct moe_cuda *c, const char *op, const struct mm_ws *ws)
{
	if (!c->ws_mm)
		return moe_err(EINVAL, "%s: no workspace: call set_workspace first", op);
	if (c->ws_mm % 16)
		return moe_err(EINVAL, "%s: the matrix workspace at %#llx is not 16-byte aligned", op,
			       (unsigned long long)c->ws_mm);
	if (ws->used > c->ws_mm_bytes)
		return moe_err(ENOSPC, "%s: needs %llu bytes of workspace for the matrix ops, has "
			       "%llu (size it with workspace_bytes for these shapes)", op,
			       (unsigned long long)ws->used, (unsigned long long)c->ws_mm_bytes);
	return 0;
}

static int mm_upload(struct moe_cuda *c, const char *op, moe_dptr dst, const void *src,
		     uint64_t bytes)
{
	/* pageable source: the driver stages it before returning */
	int ret = moe_cuda_check(c, c->api.cuMemcpyHtoDAsync(dst, src, bytes,
							     c->stream[MOE_BE_COMPUTE]),
				 "cuMemcpyHtoDAsync");

	return ret < 0 ? moe_err_prefix(ret, "%s: the product descriptors", op) : 0;
}

static struct moe_mm_prob mm_prob(const struct moe_be_mat *w, moe_dptr x, uint32_t x_stride,
				  moe_dptr y, uint32_t y_stride, uint32_t n_tok)
{
	return (struct moe_mm_prob){
		.w = w->p, .row_bytes = (uint64_t)moe_type_row_bytes(w->type, (uint64_t)w->cols),
		.x = x, .y = y, .type = w->type, .rows = (uint32_t)w->rows,
		.cols = (uint32_t)w->cols, .n_tok = n_tok, .x_stride = x_stride,
		.y_stride = y_stride, .x_div = 1,
	};
}

/* Bytes of q8_1 activations for @n decode products of up to @units 32-element units. */
static uint64_t mm_q8_bytes(uint64_t n, uint64_t units)
{
	return MOE_ALIGN_UP(n * MM_MV_TOK * units * MM_Q8_BLOCK, MM_ALIGN);
}

/*
 * One launch over the @n products at @probs (device), sized by the largest.
 * Decode of quantized weights first rounds the inputs to q8_1 blocks at @qa
 * (@qa_room bytes of workspace) for the __dp4a matvec; float weights, or a
 * workspace without the room, take the f32 matvec.
 */
static int mm_run(struct moe_cuda *c, moe_dptr probs, const struct moe_mm_prob *p, uint32_t n,
		  moe_dptr qa, uint64_t qa_room)
{
	uint32_t rows = 0, tok = 0, units = 0;
	bool quant = true;
	void *params[] = { &probs };

	for (uint32_t i = 0; i < n; i++) {
		rows = MOE_MAX(rows, p[i].rows);
		tok = MOE_MAX(tok, p[i].n_tok);
		units = MOE_MAX(units, p[i].cols / 32);
		quant = quant && moe_type_block_elems(p[i].type) > 1;
	}
	if (!rows || !tok)
		return 0;
	if (tok <= MM_MV_TOK && quant && qa && mm_q8_bytes(n, units) <= qa_room) {
		uint32_t mt = MM_MV_TOK;
		void *qp[] = { &probs, &qa, &mt, &units };
		int ret = moe_cuda_launch(c, "moe_mm_quant_q8_1", (units + 3) / 4, tok, n, 128, 1, 1,
					  0, qp);

		return ret ? ret : moe_cuda_launch(c, "moe_mm_matvec_q8",
						   (rows + MM_MV_ROWS - 1) / MM_MV_ROWS, 1, n,
						   32 * MM_MV_ROWS, 1, 1, 0, qp);
	}
	if (tok <= MM_MV_TOK)
		return moe_cuda_launch(c, "moe_mm_matvec", (rows + MM_MV_ROWS - 1) / MM_MV_ROWS, 1,
				       n, 32 * MM_MV_ROWS, 1, 1, 0, params);
	if ((tok + MM_TILE - 1) / MM_TILE > MM_GRID_YZ)
		return moe_err(EINVAL, "matmul: %u tokens in one product (at most %u)", tok,
			       MM_GRID_YZ * MM_TILE);
	return moe_cuda_launch(c, "moe_mm_tiled", (rows + MM_TILE - 1) / MM_TILE,
			       (tok + MM_TILE - 1) / MM_TILE, n, 256, 1, 1, 0, params);
}

/* Upload @n descriptors to the start of ws_mm and run them; q8_1 rows after them. */
static int mm_probs(struct moe_cuda *c, const char *op, const struct moe_mm_prob *p, uint32_t n)
{
	struct mm_ws ws = { 0 };
	uint64_t qa;
	int ret;

	mm_take(&ws, sizeof(*p) * n);
	qa = ws.used;
	ret = mm_ws_fits(c, op, &ws);
	if (!ret)
		ret = mm_upload(c, op, c->ws_mm, p, sizeof(*p) * n);
	return ret ? ret : mm_run(c, c->ws_mm, p, n, c->ws_mm + qa, c->ws_mm_bytes - qa);
}

/* ------------------------------------------------------------ the ops */

int moe_cuda_get_rows(struct moe_backend *be, const struct moe_be_mat *w, moe_dptr ids,
		      uint32_t n, moe_dptr dst)
{
	struct moe_cuda *c = moe_cuda_of(be);
	uint32_t type = w->type, rows, cols, units;
	uint64_t row_bytes;
	int ret = mm_check_mat("get_rows", w);

	if (ret)
		return ret;
	if (!n)
		return 0;
	ret = mm_enter(c, "get_rows");
	if (ret)
		return ret;
	rows = (uint32_t)w->rows;
	cols = (uint32_t)w->cols;
	units = moe_type_block_elems(type) == 1 ? cols : cols / 32;
	row_bytes = (uint64_t)moe_type_row_bytes(type, cols);
	/* gridDim.y is the id: batches of at most 65535 */
	for (uint32_t i0 = 0; i0 < n && !ret; i0 += MM_GRID_YZ) {
		uint32_t k = MOE_MIN(n - i0, MM_GRID_YZ);
		moe_dptr wp = w->p, idp = ids + 4ull * i0, dp = dst + 4ull * i0 * cols;
		void *params[] = { &wp, &type, &rows, &cols, &row_bytes, &idp, &dp };

		ret = moe_cuda_launch(c, "moe_mm_get_rows", (units + 127) / 128, k, 1, 128, 1, 1, 0,
				      params);
	}
	return ret;
}

int moe_cuda_matmul(struct moe_backend *be, const struct moe_be_mat *w, uint32_t n_w,
		    moe_dptr x, uint32_t n_tok, const moe_dptr *y)
{
	struct moe_mm_prob p[MM_MAX_MATS];
	int ret;

	if (!n_w || n_w > MM_MAX_MATS)
		return moe_err(EINVAL, "matmul: %u matrices (1..%u)", n_w, MM_MAX_MATS);
	for (uint32_t i = 0; i < n_w; i++) {
		ret = mm_check_mat("matmul", &w[i]);
		if (ret)
			return ret;
		if (w[i].cols != w[0].cols)
			return moe_err(EINVAL, "matmul: fused matrices of %lld and %lld columns",
				       (long long)w[0].cols, (long long)w[i].cols);
		p[i] = mm_prob(&w[i], x, (uint32_t)w[0].cols, y[i], (uint32_t)w[i].rows, n_tok);
	}
	if (!n_tok)
		return 0;
	ret = mm_enter(moe_cuda_of(be), "matmul");
	return ret ? ret : mm_probs(moe_cuda_of(be), "matmul", p, n_w);
}

int moe_cuda_matmul_heads(struct moe_backend *be, const struct moe_heads_args *a)
{
	struct moe_cuda *c = moe_cuda_of(be);
	struct moe_mm_prob *p;
	uint64_t rb;
	int ret = mm_check_mat("matmul_heads", &a->w);

	if (ret)
		return ret;
	if (!a->n_head || a->n_head > MM_GRID_YZ)
		return moe_err(EINVAL, "matmul_heads: %u heads (1..%u)", a->n_head, MM_GRID_YZ);
	if (!a->n_tok)
		return 0;
	ret = mm_enter(c, "matmul_heads");
	if (ret)
		return ret;
	p = calloc(a->n_head, sizeof(*p));
	if (!p)
		return moe_err(ENOMEM, "out of memory");
	rb = (uint64_t)moe_type_row_bytes(a->w.type, (uint64_t)a->w.cols);
	for (uint32_t h = 0; h < a->n_head; h++) {
		p[h] = mm_prob(&a->w, a->x + 4ull * h * a->x_head, a->x_tok,
			       a->y + 4ull * h * a->y_head, a->y_tok, a->n_tok);
		p[h].w += (uint64_t)h * (uint64_t)a->w.rows * rb;
	}
	ret = mm_probs(c, "matmul_heads", p, a->n_head);
	free(p);
	return ret;
}

static uint32_t mm_ffn_width(const struct moe_be_ffn *f)
{
	return (uint32_t)(f->n_mats == 2 ? f->mats[0].rows / 2 : f->mats[0].rows);
}

static int mm_ffn_check(const struct moe_ffn_args *a, const struct moe_be_ffn *f)
{
	const struct moe_be_mat *dn;
	uint32_t nff;

	if (f->n_mats < 2 || f->n_mats > 3)
		return moe_err(EINVAL, "ffn: %u matrices (2 or 3)", f->n_mats);
	dn = &f->mats[f->n_mats - 1];
	for (uint32_t k = 0; k < f->n_mats; k++) {
		int ret = mm_check_mat("ffn", &f->mats[k]);

		if (ret)
			return ret;
	}
	nff = mm_ffn_width(f);
	if (f->mats[0].cols != a->n_embd || dn->rows != a->n_embd || dn->cols != nff ||
	    (f->n_mats == 3 && (f->mats[1].rows != nff || f->mats[1].cols != a->n_embd)) ||
	    (f->n_mats == 2 && f->mats[0].rows % 2))
		return moe_err(EINVAL, "ffn: matrix shapes do not fit n_embd %u and width %u",
			       a->n_embd, nff);
	return 0;
}

/*
 * Workspace of one ffn call: the descriptors, then per entry a row of gate
 * and up outputs (2 * max_ff floats) and a hidden row (max_ff floats).
 */
struct mm_ffn_layout {
	uint64_t probs, glus, gu, h;
	struct mm_ws ws;
};

static void mm_ffn_layout(struct mm_ffn_layout *l, uint32_t n_probs, uint32_t n_ffn,
			  uint64_t n_ent, uint64_t max_ff)
{
	l->ws.used = 0;
	l->probs = mm_take(&l->ws, sizeof(struct moe_mm_prob) * n_probs);
	l->glus = mm_take(&l->ws, sizeof(struct moe_mm_glu_desc) * n_ffn);
	l->gu = mm_take(&l->ws, 4 * n_ent * 2 * max_ff);
	l->h = mm_take(&l->ws, 4 * n_ent * max_ff);
}

/*
 * gate/up of every FFN in one launch (inputs gathered through ents and
 * scaled by in_scale), the GLU with the gate/up biases in another, down with
 * its bias and the output scale, scattered to the entries' rows, in a third.
 */
int moe_cuda_ffn(struct moe_backend *be, const struct moe_ffn_args *a)
{
	struct moe_cuda *c = moe_cuda_of(be);
	uint32_t n_ent = 0, max_ff = 0, max_m = 0, n_gu = 0;
	struct moe_mm_glu_desc *g;
	struct moe_mm_prob *p;
	struct mm_ffn_layout l;
	void *host;
	int ret;

	if (!a->ents && a->n_ffn > 1)
		return moe_err(EINVAL, "ffn: several FFNs need an entry list");
	if (a->n_ffn > MM_GRID_YZ)
		return moe_err(EINVAL, "ffn: %u FFNs in one call (at most %u)", a->n_ffn,
			       MM_GRID_YZ);
	for (uint32_t f = 0; f < a->n_ffn; f++) {
		ret = mm_ffn_check(a, &a->ffn[f]);
		if (ret)
			return ret;
		n_ent += a->ffn[f].m;
		n_gu += a->ffn[f].n_mats - 1;
		max_ff = MOE_MAX(max_ff, mm_ffn_width(&a->ffn[f]));
		max_m = MOE_MAX(max_m, a->ffn[f].m);
	}
	if (!n_ent)
		return 0;
	if (n_gu > MM_GRID_YZ)
		return moe_err(EINVAL, "ffn: %u gate/up matrices in one call (at most %u)", n_gu,
			       MM_GRID_YZ);
	mm_ffn_layout(&l, n_gu + a->n_ffn, a->n_ffn, n_ent, max_ff);
	ret = mm_ws_fits(c, "ffn", &l.ws);
	if (!ret)
		ret = mm_enter(c, "ffn");
	if (ret)
		return ret;
	host = calloc(1, l.gu);
	if (!host)
		return moe_err(ENOMEM, "out of memory");
	p = host;
	g = (struct moe_mm_glu_desc *)((uint8_t *)host + l.glus);
	for (uint32_t f = 0, e0 = 0, i = 0; f < a->n_ffn; f++) {
		const struct moe_be_ffn *F = &a->ffn[f];
		uint32_t nff = mm_ffn_width(F);
		moe_dptr idx = a->ents ? a->ents + 4ull * F->ent_off : 0;
		struct moe_mm_prob *d = &p[n_gu + f];

		for (uint32_t k = 0; k + 1 < F->n_mats; k++, i++) {
			/* gate then up in one row of gu; a fused gate_up matrix writes both */
			p[i] = mm_prob(&F->mats[k], a->x, a->n_embd,
				       c->ws_mm + l.gu + 4ull * ((uint64_t)e0 * 2 * max_ff + k * nff),
				       2 * max_ff, F->m);
			p[i].x_idx = idx;
			p[i].x_div = a->ents ? a->stride : 1;
			p[i].x_scale = a->in_scale;
		}
		g[f] = (struct moe_mm_glu_desc){ .gate_b = F->gate_b, .up_b = F->up_b, .e0 = e0,
						 .m = F->m, .nff = nff };
		*d = mm_prob(&F->mats[F->n_mats - 1], c->ws_mm + l.h + 4ull * e0 * max_ff, max_ff,
			     a->out, a->n_embd, F->m);
		d->y_idx = idx;
		d->bias = F->down_b;
		d->oscale = F->out_scale;
		e0 += F->m;
	}
	ret = mm_upload(c, "ffn", c->ws_mm, host, l.gu);
	if (!ret)
		ret = mm_run(c, c->ws_mm + l.probs, p, n_gu, c->ws_mm + l.ws.used,
			     c->ws_mm_bytes - l.ws.used);
	if (!ret) {
		const moe_dptr gu = c->ws_mm + l.gu, h = c->ws_mm + l.h, gd = c->ws_mm + l.glus;
		uint32_t gs = 2 * max_ff, hs = max_ff, act = (uint32_t)a->act;
		void *params[] = { (void *)&gu, (void *)&h, &gs, &hs, &act, (void *)&gd };

		ret = moe_cuda_launch(c, "moe_mm_glu",
				      (uint32_t)(((uint64_t)max_m * max_ff + 255) / 256), a->n_ffn,
				      1, 256, 1, 1, 0, params);
	}
	if (!ret)
		ret = mm_run(c, c->ws_mm + l.probs + sizeof(*p) * n_gu, p + n_gu, a->n_ffn,
			     c->ws_mm + l.ws.used, c->ws_mm_bytes - l.ws.used);
	free(host);
	return ret;
}

/*
 * The largest of the calls' needs: a matmul's or matmul_heads' descriptors,
 * or an ffn's descriptors, gate/up rows and hidden rows for every entry;
 * each followed by the q8_1 rows of a decode step.
 */
uint64_t moe_cuda_mm_workspace_bytes(const struct moe_be_shape *s)
{
	uint64_t rows = MOE_MAX(s->max_tok, s->max_ent), n = MOE_MAX(MM_MAX_MATS, s->max_head);
	uint64_t nffn = MOE_MAX(s->max_ffn, 1u), units;
	struct mm_ffn_layout l;

	units = MOE_MAX(MOE_MAX(s->max_cols, s->n_embd), MOE_MAX(s->max_ff, s->max_heads_io));
	units = (units + 31) / 32;
	mm_ffn_layout(&l, 3 * nffn, nffn, rows, s->max_ff);
	return MOE_MAX(l.ws.used + mm_q8_bytes(2 * nffn, units),
		       MOE_ALIGN_UP(sizeof(struct moe_mm_prob) * n, MM_ALIGN) + mm_q8_bytes(n, units));
}
