/* SPDX-License-Identifier: MIT */
/*
 * Gemma 4's per-layer embeddings (E2B/E4B).  The table per_layer_token_embd
 * holds one row per token of n_embd_per_layer x n_layer values, a large
 * share of those models' bytes of which a step needs only its tokens' rows.
 * It stays in the file: each step reads the rows of the tokens it has not
 * seen recently through the I/O engine (one extent per token, all of a
 * step's reads in flight together), keeps them in a host cache keyed by
 * token (least recently used rows are replaced), stages the step's rows in
 * scratch and widens them to f32 with the backend's get_rows.
 *
 * The rest follows GEMMA4.md §4: per step, ple = (RMSNorm(reshape(
 * per_layer_model_proj h / sqrt(n_embd)))·per_layer_proj_norm + row ·
 * sqrt(n_embd_per_layer)) / sqrt(2); per layer, after the FFN residual,
 * h += RMSNorm(proj (gelu(inp_gate h) ⊙ ple[il]))·post_norm.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "util/util.h"

#define OPS(ctx) ((ctx)->be->ops)
#define TRY(expr) do { if (!ret) ret = (expr); } while (0)

struct ple_read {
	struct moe_ple *p;
	uint32_t row;               /* cache row the read fills */
};

int moe_ple_init(struct moe_ctx *ctx)
{
	const struct plan_layout *lay = &ctx->lay;
	struct moe_ple *p = &ctx->ple;
	struct moe_backend *be = ctx->be;
	uint64_t vocab = ctx->hp.n_vocab;
	void *stg;
	int ret;

	if (lay->ple_tensor < 0)
		return 0;
	p->ti = ctx->model->tinfo[lay->ple_tensor];
	p->row_bytes = lay->plan.ple_row_bytes;
	p->n_rows = lay->plan.ple_cache_rows;
	p->stg_each = lay->ple_stg_each;
	p->n_pl = ctx->hp.n_embd_per_layer;
	/* the cache, the step's rows, and the row ids get_rows reads */
	ret = be->ops->host_alloc(be, MOE_ALIGN_UP((uint64_t)(p->n_rows + ctx->n_batch) *
						   p->row_bytes, 64) + 4ull * ctx->n_batch,
				  (void **)&p->rows);
	if (ret < 0)
		return moe_err_prefix(ret, "host memory for %u per-layer embedding rows", p->n_rows);
	p->batch = p->rows + (uint64_t)p->n_rows * p->row_bytes;
	p->ids = (int32_t *)(p->rows + MOE_ALIGN_UP((uint64_t)(p->n_rows + ctx->n_batch) *
						    p->row_bytes, 64));
	if (moe_io_alloc(ctx->io, ctx->n_batch * p->stg_each, &stg) == 0)
		p->stg = stg;
	p->slot_of = malloc(sizeof(int32_t) * vocab);
	p->tok_of = malloc(sizeof(int32_t) * p->n_rows);
	p->used = calloc(p->n_rows, sizeof(uint64_t));
	p->reads = calloc(ctx->n_batch, sizeof(*p->reads));
	if (!p->stg || !p->slot_of || !p->tok_of || !p->used || !p->reads)
		return moe_err(ENOMEM, "out of memory for the per-layer embedding cache");
	for (uint64_t i = 0; i < vocab; i++)
		p->slot_of[i] = -1;
	for (uint32_t i = 0; i < p->n_rows; i++)
		p->tok_of[i] = -1;
	return 0;
}

void moe_ple_free(struct moe_ctx *ctx)
{
	struct moe_ple *p = &ctx->ple;

	if (p->rows && ctx->be)
		ctx->be->ops->host_free(ctx->be, p->rows);
	if (p->stg)
		moe_io_free(ctx->io, p->stg);
	free(p->slot_of);
	free(p->tok_of);
	free(p->used);
	free(p->reads);
	memset(p, 0, sizeof(*p));
}

static void row_read(void *arg, int64_t res, void *interior)
{
	struct ple_read *r = arg;
	struct moe_ple *p = r->p;

	if (res < 0)
		__atomic_store_n(&p->err, (int)res, __ATOMIC_RELAXED);
	else
		memcpy(p->rows + (uint64_t)r->row * p->row_bytes, interior, p->row_bytes);
	__atomic_sub_fetch(&p->pending, 1, __ATOMIC_RELEASE);
}

/* The least recently used row no token of this step holds (stamps below @now). */
static uint32_t victim(const struct moe_ple *p, uint64_t now)
{
	uint32_t best = 0;

	for (uint32_t i = 1; i < p->n_rows; i++)
		if (p->used[i] < p->used[best])
			best = i;
	return p->used[best] < now ? best : UINT32_MAX;
}

/* Rows of the step's tokens into the host cache, the missing ones read together. */
static int fetch_rows(struct moe_ctx *ctx, const int32_t *tok, uint32_t n)
{
	struct moe_ple *p = &ctx->ple;
	uint64_t now = ++p->clock;
	uint32_t n_read = 0;
	int ret = 0;

	p->err = 0;
	for (uint32_t t = 0; t < n && !ret; t++) {
		int32_t slot = p->slot_of[tok[t]];
		uint32_t v;

		if (slot >= 0) {
			p->hits += p->used[slot] != now;
			p->used[slot] = now;
			continue;
		}
		v = victim(p, now);
		if (v == UINT32_MAX)
			return moe_err(ENOSPC, "per-layer embedding cache of %u rows is smaller than "
				       "a step's tokens", p->n_rows);
		if (p->tok_of[v] >= 0)
			p->slot_of[p->tok_of[v]] = -1;
		p->tok_of[v] = tok[t];
		p->slot_of[tok[t]] = (int32_t)v;
		p->used[v] = now;
		p->reads[n_read] = (struct ple_read){ .p = p, .row = v };
		__atomic_add_fetch(&p->pending, 1, __ATOMIC_RELAXED);
		ret = moe_io_read(ctx->io, p->ti.offset + (uint64_t)tok[t] * p->row_bytes,
				  p->row_bytes, p->stg + (uint64_t)n_read * p->stg_each, p->stg_each,
				  row_read, &p->reads[n_read]);
		if (ret < 0) {
			__atomic_sub_fetch(&p->pending, 1, __ATOMIC_RELAXED);
			break;
		}
		n_read++;
		p->misses++;
		p->bytes += p->row_bytes;
	}
	if (n_read) {
		int r = moe_io_submit(ctx->io);

		ret = ret ? ret : r;
	}
	/* other reads (experts in flight) may complete here too: wait for ours */
	while (__atomic_load_n(&p->pending, __ATOMIC_ACQUIRE)) {
		int r = moe_io_wait(ctx->io, 1);

		if (r < 0) {
			ret = ret ? ret : r;
			break;
		}
	}
	if (!ret && p->err)
		ret = moe_err(-p->err, "reading per-layer embedding rows of '%s': %s", p->ti.name,
			      strerror(-p->err));
	if (ret < 0) {
		/* rows whose read failed must not be taken for cached */
		for (uint32_t i = 0; i < n_read; i++) {
			uint32_t v = p->reads[i].row;

			p->slot_of[p->tok_of[v]] = -1;
			p->tok_of[v] = -1;
			p->used[v] = 0;
		}
	}
	return ret;
}

int moe_ple_step(struct moe_ctx *ctx, const int32_t *tok, uint32_t n)
{
	struct moe_ple *p = &ctx->ple;
	struct moe_backend *be = ctx->be;
	moe_dptr *b = ctx->buf;
	uint32_t all = p->n_pl * ctx->hp.n_layer, E = ctx->hp.n_embd;
	struct moe_be_mat raw = { .p = b[PB_PLE_RAW], .type = p->ti.type, .rows = n, .cols = all };
	int ret;

	if (!p->rows)
		return 0;
	ret = fetch_rows(ctx, tok, n);
	if (ret < 0)
		return ret;
	for (uint32_t t = 0; t < n; t++)
		memcpy(p->batch + (uint64_t)t * p->row_bytes,
		       p->rows + (uint64_t)p->slot_of[tok[t]] * p->row_bytes, p->row_bytes);
	for (uint32_t t = 0; t < n; t++)
		p->ids[t] = (int32_t)t;
	TRY(OPS(ctx)->upload(be, MOE_BE_COMPUTE, b[PB_PLE_RAW], p->batch,
			     (uint64_t)n * p->row_bytes));
	TRY(OPS(ctx)->upload(be, MOE_BE_COMPUTE, b[PB_PLE_IDS], p->ids,
			     sizeof(int32_t) * n));
	TRY(OPS(ctx)->get_rows(be, &raw, b[PB_PLE_IDS], n, b[PB_PLE]));
	TRY(OPS(ctx)->scale(be, b[PB_PLE], sqrtf((float)p->n_pl), (int64_t)n * all));
	/* the projection of the (scaled) embedding, normed per layer slice */
	TRY(OPS(ctx)->matmul(be, &ctx->ple_proj, 1, b[PB_H], n, &b[PB_PLE2]));
	TRY(OPS(ctx)->scale(be, b[PB_PLE2], 1.0f / sqrtf((float)E), (int64_t)n * all));
	TRY(OPS(ctx)->rms_norm(be, b[PB_PLE2], b[PB_PLE2], (int64_t)n * ctx->hp.n_layer, p->n_pl,
			       ctx->ple_proj_norm, ctx->hp.rms_eps));
	TRY(OPS(ctx)->add(be, b[PB_PLE], b[PB_PLE2], (int64_t)n * all));
	TRY(OPS(ctx)->scale(be, b[PB_PLE], (float)M_SQRT1_2, (int64_t)n * all));
	/* the host buffers are reused by the next step: the uploads must have happened */
	TRY(OPS(ctx)->sync(be));
	return ret;
}

int moe_ple_layer(struct moe_ctx *ctx, uint32_t il, uint32_t n)
{
	const struct eng_layer *L = &ctx->layers[il];
	struct moe_backend *be = ctx->be;
	moe_dptr *b = ctx->buf;
	uint32_t pl = ctx->ple.n_pl, all = pl * ctx->hp.n_layer, E = ctx->hp.n_embd;
	int ret = 0;

	if (!ctx->ple.rows)
		return 0;
	TRY(OPS(ctx)->matmul(be, &L->ple_gate, 1, b[PB_H], n, &b[PB_PLE_G]));
	TRY(OPS(ctx)->copy_rows(be, b[PB_PLE_X], pl, b[PB_PLE] + sizeof(float) * il * pl, all, pl,
				n));
	TRY(OPS(ctx)->glu(be, MOE_GLU_GELU, b[PB_PLE_G], b[PB_PLE_X], pl, n, pl, b[PB_PLE_G]));
	TRY(OPS(ctx)->matmul(be, &L->ple_out, 1, b[PB_PLE_G], n, &b[PB_O]));
	TRY(OPS(ctx)->rms_norm(be, b[PB_O], b[PB_O], n, E, L->ple_post_norm, ctx->hp.rms_eps));
	TRY(OPS(ctx)->add(be, b[PB_H], b[PB_O], (int64_t)n * E));
	return ret;
}
