/* SPDX-License-Identifier: MIT */
/*
 * moe_plan(): every byte of a run, decided before anything is allocated.
 *
 * Device memory is one allocation laid out in this order: resident tensors
 * (vectors stored as f16/bf16 as their f32 copies), the KV cache of every
 * layer (a ring of window + batch - 1 cells on layers that only see a
 * window), the scratch of one forward step, the backend's workspace, then
 * the expert slots of every size class.  Slots get what the budget leaves,
 * split between size classes in proportion to their experts, at least one
 * token's experts each.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/predict.h"
#include "model.h"
#include "plan.h"
#include "quant/quant.h"
#include "util/util.h"

#define RESIDENT_CHUNK (8ull << 20)
/* experts in flight by default: about this much pinned staging, within the bounds below */
#define STAGING_TARGET (64ull << 20)
#define STAGING_MIN 4
#define STAGING_MAX 32
/* the largest logical block an O_DIRECT read is aligned to */
#define PLAN_BLOCK 4096ull
#define LLAMA4_CHUNK 8192

static const char *const matrices[] = {
	"token_embd.weight", "output.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
	"attn_output.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
	"ffn_gate_inp.weight", "ffn_gate_shexp.weight", "ffn_up_shexp.weight",
	"ffn_down_shexp.weight", "ffn_gate_inp_shexp.weight",
	/* deepseek2's MLA */
	"attn_q_a.weight", "attn_q_b.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight",
	"attn_v_b.weight",
	/* Gemma 4's per-layer embeddings */
	"per_layer_token_embd.weight", "per_layer_model_proj.weight", "inp_gate.weight",
	"proj.weight",
};

bool moe_plan_is_matrix(const char *name)
{
	unsigned n;
	int used = 0;

	if (sscanf(name, "blk.%u.%n", &n, &used) == 1 && used > 0)
		name += used;
	for (size_t i = 0; i < MOE_ARRAY_SIZE(matrices); i++)
		if (!strcmp(name, matrices[i]))
			return true;
	return false;
}

uint64_t moe_expert_mat_offset(const struct moe_expert *ex, uint32_t m, uint32_t align)
{
	uint64_t off = 0;

	for (uint32_t i = 0; i < m && i < ex->n_mats; i++)
		off += MOE_ALIGN_UP(ex->mats[i].bytes, align);
	return off;
}

uint64_t moe_expert_slot_bytes(const struct moe_expert *ex, uint32_t align)
{
	return moe_expert_mat_offset(ex, ex->n_mats, align);
}

static const char *const dense_names[] = { "ffn_gate.weight", "ffn_up.weight",
					   "ffn_down.weight" };

bool moe_plan_dense_ffn(const struct moe_model *m, uint32_t il, struct moe_expert *out)
{
	memset(out, 0, sizeof(*out));
	if (il >= m->hp.n_layer || m->layers[il].info.is_moe)
		return false;
	for (uint32_t i = 0; i < MOE_ARRAY_SIZE(dense_names); i++) {
		struct moe_tensor_info ti;
		char full[96];

		snprintf(full, sizeof(full), "blk.%u.%s", il, dense_names[i]);
		if (moe_model_find_tensor(m, full, &ti) < 0 || ti.role != MOE_ROLE_OTHER ||
		    !ti.bytes || ti.n_dims != 2)
			return false;
		out->mats[i] = (struct moe_extent){ .offset = ti.offset, .bytes = ti.bytes,
			.type = ti.type, .role = ti.role, .rows = ti.ne[1], .cols = ti.ne[0] };
		out->bytes += ti.bytes;
	}
	out->n_mats = MOE_ARRAY_SIZE(dense_names);
	return true;
}

/* Is tensor @ti a matrix of a dense FFN this layout streams? */
static bool dense_streamed(const struct plan_layout *l, const struct moe_tensor_info *ti)
{
	const char *name = ti->name;
	unsigned n;
	int used = 0;

	if (ti->layer < 0 || !l->layers[ti->layer].dense_stream)
		return false;
	if (sscanf(name, "blk.%u.%n", &n, &used) != 1 || used <= 0)
		return false;
	for (uint32_t i = 0; i < MOE_ARRAY_SIZE(dense_names); i++)
		if (!strcmp(name + used, dense_names[i]))
			return true;
	return false;
}

/* Pinned staging to read @ex as block-aligned supersets of its matrices. */
static uint64_t expert_staging(const struct moe_expert *ex)
{
	uint64_t b = 0;

	for (uint32_t m = 0; m < ex->n_mats; m++)
		b += MOE_ALIGN_UP(ex->mats[m].bytes, PLAN_BLOCK) + PLAN_BLOCK;
	return b;
}

static uint64_t take(uint64_t *cur, uint64_t bytes, uint32_t align)
{
	uint64_t off = *cur;

	*cur += MOE_ALIGN_UP(bytes ? bytes : 1, align);
	return off;
}

static int resident(const struct moe_model *m, struct plan_layout *l, uint64_t *cur)
{
	uint32_t align = l->desc->align;

	for (uint32_t i = 0; i < l->n_tensors; i++) {
		const struct moe_tensor_info *ti = &m->tinfo[i];
		struct plan_tensor *t = &l->t[i];
		uint64_t n = ti->ne[0] * ti->ne[1] * ti->ne[2] * ti->ne[3];

		t->off = UINT64_MAX;
		if (ti->role != MOE_ROLE_OTHER || dense_streamed(l, ti))
			continue;
		t->vec = !moe_plan_is_matrix(ti->name);
		t->convert = t->vec && (ti->type == MOE_TYPE_F16 || ti->type == MOE_TYPE_BF16);
		t->bytes = t->convert ? n * sizeof(float) : ti->bytes;
		t->off = take(cur, t->bytes, align);
		l->plan.resident_file_bytes += ti->bytes;
		if (t->convert)
			l->conv_max = MOE_MAX(l->conv_max, ti->bytes);
	}
	l->plan.resident_bytes = *cur;
	return 0;
}

/* Gemma 4's per-layer embedding table: read by rows, cached by token on the host. */
static int plan_ple(const struct moe_model *m, const struct moe_ctx_params *par,
		    struct plan_layout *l)
{
	struct moe_plan *p = &l->plan;

	l->ple_tensor = -1;
	for (uint32_t i = 0; i < l->n_tensors; i++) {
		const struct moe_tensor_info *ti = &m->tinfo[i];

		if (ti->role != MOE_ROLE_STREAMED_ROWS)
			continue;
		l->ple_tensor = (int32_t)i;
		uint64_t want = MOE_PLE_CACHE_ROWS;
		/* one step's distinct tokens must fit at once */
		uint32_t step = MOE_MIN(p->n_batch, (uint32_t)ti->ne[1]);

		p->ple_row_bytes = ti->bytes / ti->ne[1];
		if (par->ple_cache_bytes) {
			char a[24], b[24];

			want = par->ple_cache_bytes / p->ple_row_bytes;
			moe_fmt_bytes(a, sizeof(a), par->ple_cache_bytes);
			moe_fmt_bytes(b, sizeof(b), (uint64_t)step * p->ple_row_bytes);
			if (want < step)
				return moe_err(EINVAL, "%s: a per-layer embedding cache of %s holds %llu "
					       "rows of %llu bytes, fewer than a step's %u tokens: give "
					       "at least %s or a smaller batch", moe_model_path(m), a,
					       (unsigned long long)want,
					       (unsigned long long)p->ple_row_bytes, step, b);
		}
		p->ple_cache_rows = (uint32_t)MOE_MIN(want, ti->ne[1]);
		p->ple_cache_rows = MOE_MAX(p->ple_cache_rows, step);
		p->ple_cache_bytes = (uint64_t)p->ple_cache_rows * p->ple_row_bytes;
		l->ple_stg_each = MOE_ALIGN_UP(p->ple_row_bytes, PLAN_BLOCK) + 2 * PLAN_BLOCK;
	}
	return 0;
}

static int kv_cache(const struct moe_model *m, const struct moe_ctx_params *p,
		    struct plan_layout *l, uint64_t *cur)
{
	uint32_t chunk = p->attn_chunk ? p->attn_chunk : LLAMA4_CHUNK, n_seq = l->plan.n_seq;
	uint64_t start = *cur;

	for (uint32_t il = 0; il < m->hp.n_layer; il++) {
		const struct moe_layer *ml = &m->layers[il];
		struct plan_layer *L = &l->layers[il];
		uint32_t window = 0;
		uint64_t row;

		l->f_nq = MOE_MAX(l->f_nq, ml->info.head_dim * ml->n_head);
		l->shape.max_head = MOE_MAX(l->shape.max_head, ml->n_head);
		if (ml->info.kv_layer != (int32_t)il) {
			/* Gemma 4's shared layers read an earlier layer's cache (model.c checked it) */
			struct plan_layer own = *L;

			*L = l->layers[ml->info.kv_layer];
			L->dense_stream = own.dense_stream;
			L->dense = own.dense;
			continue;
		}
		L->kv_dim = ml->info.head_dim * ml->info.n_head_kv;
		row = moe_kv_row_bytes(l->plan.kv_type, L->kv_dim);
		if (!row)
			return moe_err(EINVAL, "KV type %s cannot hold layer %u's %u values per "
				       "position (f32, f16, or q8_0 for multiples of 32)",
				       moe_type_name(l->plan.kv_type) ? moe_type_name(l->plan.kv_type) :
				       "?", il, L->kv_dim);
		if (l->plan.kv_type == MOE_TYPE_Q8_0 && ml->info.head_dim % 32)
			return moe_err(EINVAL, "KV type q8_0 needs head dims that are multiples of 32;"
				       " layer %u has %u", il, ml->info.head_dim);
		if (ml->info.sliding && m->hp.sliding_window)
			window = m->hp.sliding_window;
		else if (ml->chunked)
			window = chunk;
		/* a window's keys plus the rest of a batch that is stored before attending */
		L->n_cells = window ? (uint32_t)MOE_MIN((uint64_t)l->plan.n_ctx,
							(uint64_t)window + l->plan.n_batch - 1) :
			     l->plan.n_ctx;
		L->latent = ml->info.mla;
		L->kv_half = MOE_ALIGN_UP((uint64_t)n_seq * L->n_cells * row, l->desc->align);
		L->kv_off = take(cur, (L->latent ? 1 : 2) * L->kv_half, l->desc->align);
		l->plan.kv_full_bytes += (L->latent ? 1 : 2) * (uint64_t)n_seq * l->plan.n_ctx *
					 L->kv_dim * 4;
		l->f_nkv = MOE_MAX(l->f_nkv, L->kv_dim);
		if (L->latent) {
			const struct moe_hparams *hp = &m->hp;
			uint32_t H = ml->n_head, r = hp->kv_lora_rank;

			/* q and its heads' outputs, the latent queries and attention */
			l->f_nq = MOE_MAX(l->f_nq, H * MOE_MAX(hp->head_dim_k_mla, hp->head_dim_v_mla));
			l->f_nq = MOE_MAX(l->f_nq, H * MOE_MAX(r, hp->n_rot));
			l->f_lat = MOE_MAX(l->f_lat, MOE_MAX(H * (r + hp->n_rot), hp->q_lora_rank));
			l->shape.max_heads_io = MOE_MAX(l->shape.max_heads_io,
				MOE_MAX(hp->head_dim_k_mla - hp->n_rot + r, r + hp->head_dim_v_mla));
		}
		l->shape.max_head_dim = MOE_MAX(l->shape.max_head_dim, ml->info.head_dim);
	}
	l->plan.kv_bytes = *cur - start;
	return 0;
}

/* FFN widths as the tensors say: dense, shared and routed experts. */
static uint32_t max_ff(const struct moe_model *m)
{
	static const char *const names[] = { "ffn_gate.weight", "ffn_up.weight",
					     "ffn_gate_shexp.weight", "ffn_up_shexp.weight" };
	uint64_t ff = 0;

	for (uint32_t il = 0; il < m->hp.n_layer; il++) {
		const struct moe_layer *ml = &m->layers[il];

		for (size_t i = 0; i < MOE_ARRAY_SIZE(names); i++) {
			char full[96];
			struct moe_tensor_info ti;

			snprintf(full, sizeof(full), "blk.%u.%s", il, names[i]);
			if (moe_model_find_tensor(m, full, &ti) >= 0)
				ff = MOE_MAX(ff, ti.ne[1]);
		}
		if (ml->info.is_moe && ml->experts) {
			const struct moe_expert *ex = &ml->experts[0];

			ff = MOE_MAX(ff, ex->mats[ex->n_mats - 1].cols);
		}
	}
	return (uint32_t)ff;
}

static void scratch(const struct moe_model *m, struct plan_layout *l, uint64_t *cur)
{
	uint64_t B = l->plan.n_batch, E = m->hp.n_embd, K = l->max_used;
	uint64_t ne = MOE_MAX(m->hp.n_expert, 1u), start;
	uint64_t f = sizeof(float);

	l->buf_bytes[PB_TOK] = l->buf_bytes[PB_POS] = l->buf_bytes[PB_SEQ] = B * 4;
	l->buf_bytes[PB_TSCALE] = B * f;
	for (int b = PB_H; b <= PB_MOE_OUT; b++)
		l->buf_bytes[b] = B * E * f;
	l->buf_bytes[PB_Q] = l->buf_bytes[PB_ATT] = B * l->f_nq * f;
	l->buf_bytes[PB_K] = l->buf_bytes[PB_V] = B * l->f_nkv * f;
	l->buf_bytes[PB_LAT] = B * l->f_lat * f;
	if (l->ple_tensor >= 0) {
		uint64_t pl = m->hp.n_embd_per_layer, all = pl * m->hp.n_layer;

		l->buf_bytes[PB_PLE_RAW] = B * l->plan.ple_row_bytes;
		l->buf_bytes[PB_PLE] = l->buf_bytes[PB_PLE2] = B * all * f;
		l->buf_bytes[PB_PLE_G] = l->buf_bytes[PB_PLE_X] = B * pl * f;
		l->buf_bytes[PB_PLE_IDS] = B * 4;
	}
	l->buf_bytes[PB_RLOG] = B * ne * f;
	l->buf_bytes[PB_SHG] = B * f;
	l->buf_bytes[PB_SEL] = l->buf_bytes[PB_RW] = l->buf_bytes[PB_ENTS] = B * K * 4;
	l->buf_bytes[PB_YBUF] = B * K * E * f;
	l->buf_bytes[PB_LOGITS] = B * l->n_vocab * f;
	l->buf_bytes[PB_ROWS] = B * 4;
	l->buf_bytes[PB_SPEC_LOG] = B * ne * l->spec_depth * f;
	l->buf_bytes[PB_SPEC_SEL] = l->buf_bytes[PB_SPEC_W] = B * K * l->spec_depth * 4;
	start = *cur;
	l->scratch_off = start;
	for (int b = 0; b < PB_COUNT; b++)
		l->buf_off[b] = take(cur, l->buf_bytes[b], l->desc->align);
	/* f16/bf16 vectors are uploaded into scratch and converted before it is used */
	if (*cur - start < l->conv_max)
		*cur = start + MOE_ALIGN_UP(l->conv_max, l->desc->align);
	l->plan.scratch_bytes = *cur - start;
}

struct cls {
	uint64_t bytes;
	uint32_t n, k, slots, host;
	uint32_t min;               /* fewest device slots: one routing of a layer, or of each */
	uint32_t dn, dmin;          /* streamed dense FFNs in the class, their pool's fewest slots */
};

static int classes(const struct moe_model *m, struct plan_layout *l, struct cls *c,
		   uint32_t *n_cls, bool layer_pools)
{
	*n_cls = 0;
	for (uint32_t il = 0; il < m->hp.n_layer; il++) {
		const struct moe_layer *ml = &m->layers[il];
		uint64_t sb = 0, st = 0;
		uint32_t i;

		bool dense = l->layers[il].dense_stream;
		/* a streamed dense FFN is one entry that every token uses */
		uint32_t n = dense ? 1 : m->hp.n_expert, k = dense ? 1 : ml->info.n_expert_used;

		l->layers[il].cls = -1;
		if (!dense && (!ml->info.is_moe || !ml->experts))
			continue;
		for (uint32_t e = 0; e < n; e++) {
			const struct moe_expert *ex = dense ? &l->layers[il].dense : &ml->experts[e];

			sb = MOE_MAX(sb, moe_expert_slot_bytes(ex, l->desc->align));
			st = MOE_MAX(st, expert_staging(ex));
		}
		l->stg_each = MOE_MAX(l->stg_each, st);
		for (i = 0; i < *n_cls && c[i].bytes != sb; i++)
			;
		if (i == *n_cls) {
			if (*n_cls == MOE_PLAN_MAX_CLASSES)
				return moe_err(EOPNOTSUPP, "%s: experts come in more than %u sizes",
					       moe_model_path(m), MOE_PLAN_MAX_CLASSES);
			c[i] = (struct cls){ .bytes = sb };
			(*n_cls)++;
		}
		c[i].n += n;
		c[i].k = MOE_MAX(c[i].k, k);
		/* with layer pools the streamed dense FFNs of a class share one pool */
		if (dense && !c[i].dn++)
			c[i].dmin = 1;
		c[i].min = !layer_pools ? c[i].k : dense ? c[i].min + (c[i].dn == 1) : c[i].min + k;
		l->layers[il].cls = (int32_t)i;
	}
	return 0;
}

static uint32_t first_dense(const struct plan_layout *l, uint32_t n_layer, int32_t pool)
{
	for (uint32_t il = 0; il < n_layer; il++)
		if (l->layers[il].dense_stream && l->layers[il].pool == pool)
			return il;
	return UINT32_MAX;
}

/*
 * Pools: the classes, or each class's slots dealt out to its layers (their
 * k first), the streamed dense FFNs of a class in one pool of their own.
 */
static int pools(const struct moe_model *m, struct plan_layout *l, const struct cls *c,
		 uint32_t n_cls, bool layer_pools)
{
	uint32_t n = n_cls;
	int32_t dense_pool[MOE_PLAN_MAX_CLASSES];

	for (uint32_t i = 0; i < n_cls; i++)
		dense_pool[i] = -1;
	if (layer_pools) {
		n = 0;
		for (uint32_t il = 0; il < m->hp.n_layer; il++)
			n += l->layers[il].cls >= 0 && !l->layers[il].dense_stream;
		for (uint32_t i = 0; i < n_cls; i++)
			n += c[i].dn > 0;
	}

	l->pool_slots = calloc(MOE_MAX(n, 1u), sizeof(*l->pool_slots));
	l->pool_cls = calloc(MOE_MAX(n, 1u), sizeof(*l->pool_cls));
	if (!l->pool_slots || !l->pool_cls)
		return moe_err(ENOMEM, "out of memory");
	for (uint32_t il = 0; il < m->hp.n_layer; il++)
		l->layers[il].pool = layer_pools || l->layers[il].cls < 0 ? -1 : l->layers[il].cls;
	if (!layer_pools) {
		for (uint32_t i = 0; i < n_cls; i++) {
			l->pool_slots[i] = c[i].slots;
			l->pool_cls[i] = i;
		}
		l->n_pools = n_cls;
		return 0;
	}
	for (uint32_t il = 0; il < m->hp.n_layer; il++) {
		int32_t cls = l->layers[il].cls;

		if (cls < 0)
			continue;
		if (l->layers[il].dense_stream && dense_pool[cls] >= 0) {
			l->layers[il].pool = dense_pool[cls];
			continue;
		}
		if (l->layers[il].dense_stream)
			dense_pool[cls] = (int32_t)l->n_pools;
		l->layers[il].pool = (int32_t)l->n_pools;
		l->pool_cls[l->n_pools] = (uint32_t)cls;
		l->pool_slots[l->n_pools++] = l->layers[il].dense_stream ? c[cls].dmin :
					      m->layers[il].info.n_expert_used;
	}
	for (uint32_t i = 0; i < n_cls; i++) {
		uint32_t left = c[i].slots - c[i].min;

		/* the rest one by one, round robin over the class's pools */
		while (left) {
			uint32_t before = left;

			for (uint32_t il = 0; il < m->hp.n_layer && left; il++) {
				int32_t p = l->layers[il].pool;
				bool dense = l->layers[il].dense_stream;
				uint32_t cap = dense ? c[i].dn : m->hp.n_expert;

				/* the shared dense pool takes its turn at its first layer */
				if (dense && il != first_dense(l, m->hp.n_layer, p))
					continue;
				if (p >= 0 && l->pool_cls[p] == i && l->pool_slots[p] < cap) {
					l->pool_slots[p]++;
					left--;
				}
			}
			if (left == before)
				break;
		}
	}
	return 0;
}

/*
 * Split @avail bytes into slots: the same share of every class's experts,
 * at least its k, at most all of them; leftovers go to the class whose
 * share is lowest.  Returns the bytes used.
 */
static uint64_t split(struct cls *c, uint32_t n, uint64_t avail, bool host)
{
	uint64_t total = 0, used = 0;

	for (uint32_t i = 0; i < n; i++)
		total += c[i].bytes * c[i].n;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t *s = host ? &c[i].host : &c[i].slots;
		uint64_t want = total ? (uint64_t)((double)c[i].n * avail / total) : 0;

		*s = (uint32_t)MOE_MIN(want, (uint64_t)c[i].n);
		if (!host)
			*s = MOE_MAX(*s, c[i].min);
		used += *s * c[i].bytes;
	}
	/* rounding up to k may overshoot: take back from the best-served classes */
	while (used > avail) {
		int best = -1;

		for (uint32_t i = 0; i < n; i++) {
			uint32_t s = host ? c[i].host : c[i].slots, lo = host ? 0 : c[i].min;

			if (s > lo && (best < 0 || (double)s / c[i].n >
				       (double)(host ? c[best].host : c[best].slots) / c[best].n))
				best = (int)i;
		}
		if (best < 0)
			break;
		*(host ? &c[best].host : &c[best].slots) -= 1;
		used -= c[best].bytes;
	}
	for (;;) {
		int best = -1;

		for (uint32_t i = 0; i < n; i++) {
			uint32_t s = host ? c[i].host : c[i].slots;

			if (s < c[i].n && used + c[i].bytes <= avail &&
			    (best < 0 || (double)s / c[i].n <
			     (double)(host ? c[best].host : c[best].slots) / c[best].n))
				best = (int)i;
		}
		if (best < 0)
			break;
		*(host ? &c[best].host : &c[best].slots) += 1;
		used += c[best].bytes;
	}
	return used;
}

static void why(struct plan_layout *l)
{
	struct moe_plan *p = &l->plan;
	char a[24], b[24], c[24], d[24], e[24];

	moe_fmt_bytes(a, sizeof(a), p->resident_bytes);
	moe_fmt_bytes(b, sizeof(b), p->kv_bytes);
	moe_fmt_bytes(c, sizeof(c), p->scratch_bytes + p->workspace_bytes);
	moe_fmt_bytes(d, sizeof(d), p->slot_bytes);
	moe_fmt_bytes(e, sizeof(e), p->vram_budget);
	if (p->n_dense_streamed)
		snprintf(p->why, sizeof(p->why), "the budget of %s cannot keep %u of the %u dense "
			 "FFNs resident: they stream%s with %u experts through %u slots (%s) after "
			 "resident %s, KV %s, scratch %s", e, p->n_dense_streamed, p->n_dense_ffn,
			 l->dense_ahead ? ", each read a layer ahead," : "", p->n_experts,
			 p->n_slots, d, a, b, c);
	else if (!p->n_experts)
		snprintf(p->why, sizeof(p->why), "a dense model: resident %s, KV %s, scratch %s", a,
			 b, c);
	else if (p->all_experts)
		snprintf(p->why, sizeof(p->why), "every one of the %u experts has a slot (%s): "
			 "nothing is read after start-up; resident %s, KV %s, scratch %s",
			 p->n_experts, d, a, b, c);
	else
		snprintf(p->why, sizeof(p->why), "the budget of %s leaves %u slots for %u experts "
			 "(%.1f%%, %s) after resident %s, KV %s and scratch %s: the rest stream "
			 "from the file", e, p->n_slots, p->n_experts,
			 100.0 * p->n_slots / p->n_experts, d, a, b, c);
}

static int too_small(const struct moe_model *m, struct plan_layout *l, uint64_t need)
{
	char a[32], b[32], c[32], d[32], e[32], f[32];
	uint64_t k_bytes = need - l->plan.resident_bytes - l->plan.kv_bytes -
			   l->plan.scratch_bytes - l->plan.workspace_bytes;

	moe_fmt_bytes(a, sizeof(a), l->plan.vram_budget);
	moe_fmt_bytes(b, sizeof(b), need);
	moe_fmt_bytes(c, sizeof(c), l->plan.resident_bytes);
	moe_fmt_bytes(d, sizeof(d), l->plan.kv_bytes);
	moe_fmt_bytes(e, sizeof(e), l->plan.scratch_bytes + l->plan.workspace_bytes);
	moe_fmt_bytes(f, sizeof(f), k_bytes);
	return moe_err(ENOMEM, "%s: a budget of %s cannot hold this model: it needs at least %s "
		       "(%llu bytes) = resident tensors %s + KV cache %s for %u positions + "
		       "scratch %s + one token's experts of each layer%s %s; raise --vram or lower "
		       "--ctx", moe_model_path(m), a, b, (unsigned long long)need, c, d, l->plan.n_ctx,
		       e, l->plan.n_dense_streamed ? " and a streamed dense FFN" : "", f);
}

/*
 * One layout with the last @n_stream dense FFNs streamed, through two slots
 * (@ahead: the next one is read while one computes) or at least one.
 */
static int layout_once(const struct moe_model *m, const struct moe_ctx_params *par,
		       struct plan_layout *l, uint32_t n_stream, bool ahead)
{
	struct moe_ctx_params def;
	struct moe_plan *p = &l->plan;
	struct cls c[MOE_PLAN_MAX_CLASSES];
	bool layer_pools;
	struct moe_pred_cfg pc;
	uint32_t n_cls = 0;
	uint64_t cur = 0, fixed;
	int ret;

	memset(l, 0, sizeof(*l));
	if (!par) {
		moe_ctx_params_init(&def);
		par = &def;
	}
	layer_pools = par->flags & MOE_CTX_LAYER_POOLS;
	ret = moe_pred_parse(par->prefetch, &pc);
	if (ret < 0)
		return ret;
	l->spec_depth = pc.sources & MOE_PRED_SPEC ? pc.depth : 0;
	if (!m->arch || !m->layers)
		return moe_err(EOPNOTSUPP, "%s: no forward pass for this model", moe_model_path(m));
	ret = moe_backend_find(par->backend, &l->desc);
	if (ret < 0)
		return ret;
	snprintf(p->backend, sizeof(p->backend), "%s", l->desc->name);
	p->vram_budget = par->vram_bytes;
	p->n_ctx = par->n_ctx ? par->n_ctx :
		   MOE_MIN(m->hp.n_ctx_train ? m->hp.n_ctx_train : MOE_DEFAULT_CTX,
			   MOE_DEFAULT_CTX);
	if (p->n_ctx > (1u << 24))
		return moe_err(EINVAL, "n_ctx %u is too large (at most %u)", p->n_ctx, 1u << 24);
	p->n_batch = MOE_MIN(par->n_batch ? par->n_batch : MOE_DEFAULT_BATCH, p->n_ctx);
	p->n_seq = par->n_seq ? par->n_seq : 1;
	if (p->n_seq > 4096)
		return moe_err(EINVAL, "%u sequences is too many (at most 4096)", p->n_seq);
	p->kv_type = par->kv_type;
	l->n_vocab = m->hp.n_vocab;
	l->n_tensors = (uint32_t)moe_model_tensor_count(m);
	l->t = calloc(l->n_tensors ? l->n_tensors : 1, sizeof(*l->t));
	l->layers = calloc(m->hp.n_layer, sizeof(*l->layers));
	if (!l->t || !l->layers) {
		moe_plan_layout_free(l);
		return moe_err(ENOMEM, "out of memory");
	}
	for (uint32_t il = 0; il < m->hp.n_layer; il++)
		if (m->layers[il].info.is_moe)
			l->max_used = MOE_MAX(l->max_used, m->layers[il].info.n_expert_used);
	for (uint32_t il = m->hp.n_layer; il-- > 0;) {
		struct plan_layer *L = &l->layers[il];

		if (!moe_plan_dense_ffn(m, il, &L->dense))
			continue;
		p->n_dense_ffn++;
		if (p->n_dense_streamed < n_stream) {
			L->dense_stream = true;
			p->n_dense_streamed++;
		}
	}
	l->max_used = MOE_MAX(l->max_used, 1);
	ret = plan_ple(m, par, l);
	ret = ret ? ret : resident(m, l, &cur);
	ret = ret ? ret : kv_cache(m, par, l, &cur);
	ret = ret ? ret : classes(m, l, c, &n_cls, layer_pools);
	if (ret < 0) {
		moe_plan_layout_free(l);
		return ret;
	}
	/* two slots for streamed dense FFNs: one in use, the next layer's being read */
	for (uint32_t i = 0; i < n_cls && ahead && p->n_dense_streamed >= 2; i++) {
		if (!c[i].dn)
			continue;
		if (layer_pools) {
			c[i].min += c[i].dn >= 2 && c[i].dmin < 2;
			c[i].dmin = MOE_MIN(c[i].dn, 2u);
		} else {
			c[i].min = MOE_MAX(c[i].min, 2u);
		}
	}
	scratch(m, l, &cur);
	l->shape = (struct moe_be_shape){
		.max_tok = p->n_batch, .max_ent = p->n_batch * l->max_used, .n_embd = m->hp.n_embd,
		.max_ff = max_ff(m), .max_head = l->shape.max_head,
		.max_head_dim = l->shape.max_head_dim, .max_ffn = MOE_MAX(m->hp.n_expert, 1u),
		.max_heads_io = l->shape.max_heads_io,
	};
	l->shape.max_cols = MOE_MAX(MOE_MAX(m->hp.n_embd, l->f_nq), l->shape.max_ff);
	l->shape.max_cols = MOE_MAX(l->shape.max_cols, l->f_lat);
	p->workspace_bytes = MOE_ALIGN_UP(l->desc->workspace_bytes(&l->shape), l->desc->align);
	l->ws_off = take(&cur, p->workspace_bytes, l->desc->align);
	fixed = cur;

	for (uint32_t i = 0; i < n_cls; i++) {
		p->n_experts += c[i].n;
		p->expert_bytes += c[i].n * c[i].bytes;
	}
	/* the streamed dense FFNs share the classes but are not routed experts */
	for (uint32_t il = 0; il < m->hp.n_layer; il++) {
		const struct plan_layer *L = &l->layers[il];

		if (!L->dense_stream)
			continue;
		p->n_experts--;
		p->expert_bytes -= c[L->cls].bytes;
		p->dense_streamed_bytes += c[L->cls].bytes;
	}
	if (par->vram_bytes) {
		uint64_t need = fixed;

		for (uint32_t i = 0; i < n_cls; i++)
			need += (uint64_t)c[i].min * c[i].bytes;
		if (par->vram_bytes < need) {
			ret = too_small(m, l, need);
			moe_plan_layout_free(l);
			return ret;
		}
		p->slot_bytes = split(c, n_cls, par->vram_bytes - fixed, false);
	} else {
		for (uint32_t i = 0; i < n_cls; i++)
			c[i].slots = c[i].n;
		p->slot_bytes = p->expert_bytes;
	}
	if (par->host_cache_bytes)
		p->host_cache_bytes = split(c, n_cls, par->host_cache_bytes, true);
	p->all_experts = true;
	p->n_classes = n_cls;
	for (uint32_t i = 0; i < n_cls; i++) {
		/* a host tier only serves experts the device cannot keep */
		if (c[i].slots >= c[i].n) {
			p->host_cache_bytes -= (uint64_t)c[i].host * c[i].bytes;
			c[i].host = 0;
		}
		p->classes[i] = (struct moe_plan_class){ .slot_bytes = c[i].bytes,
			.n_experts = c[i].n, .n_slots = c[i].slots, .n_host_slots = c[i].host,
			.max_used = c[i].k };
		l->class_off[i] = take(&cur, (uint64_t)c[i].slots * c[i].bytes, 1);
		p->n_slots += c[i].slots;
		p->n_host_slots += c[i].host;
		p->all_experts &= c[i].slots >= c[i].n;
	}
	p->device_bytes = cur;
	l->dense_ahead = p->n_dense_streamed >= 2 && !layer_pools;
	for (uint32_t il = 0; il < m->hp.n_layer; il++)
		if (l->layers[il].dense_stream && c[l->layers[il].cls].slots < 2)
			l->dense_ahead = false;
	ret = pools(m, l, c, n_cls, layer_pools);
	if (ret < 0) {
		moe_plan_layout_free(l);
		return ret;
	}
	if (n_cls) {
		uint64_t n = par->n_staging;
		/* prefetches of the layers ahead read while the next layer's misses need room */
		uint64_t ahead = pc.sources ? (uint64_t)l->max_used * pc.depth : 0;

		if (!n) {
			n = l->stg_each ? STAGING_TARGET / l->stg_each : STAGING_MIN;
			n = MOE_MAX(n, MOE_MAX((uint64_t)STAGING_MIN, l->max_used) + ahead);
			n = MOE_MIN(n, MOE_MAX((uint64_t)STAGING_MAX, l->max_used) + ahead);
		}
		p->n_staging = (uint32_t)n;
	}
	l->resident_chunk = RESIDENT_CHUNK + 2 * PLAN_BLOCK;
	p->staging_bytes = par->io.staging_bytes ? par->io.staging_bytes :
			   l->resident_chunk + (2 << 20) + p->n_staging * l->stg_each +
			   (uint64_t)p->n_batch * l->ple_stg_each;
	/* logits of a batch, pinned inputs and routing tables */
	p->host_bytes = (uint64_t)p->n_batch * l->n_vocab * sizeof(float) +
			(uint64_t)p->n_batch * (16 + 16 * l->max_used + 4 * l->max_used *
						l->spec_depth) +
			(uint64_t)p->n_batch * MOE_MAX(m->hp.n_expert, 1u) * sizeof(float) +
			(uint64_t)p->n_batch * p->ple_row_bytes + p->ple_cache_bytes;
	why(l);
	return 0;
}

/*
 * Dense FFNs stay resident while the budget holds them; past it, as few as
 * make the plan fit stream (the last layers first, so that consecutive
 * layers fetch each other's ahead).  A dense FFN is used by every token,
 * so resident ones are worth more than expert slots.  Two slots, which let
 * the next FFN's read overlap this layer's compute, come before keeping
 * one more resident; one slot (every FFN read while the pass waits) is the
 * last resort.
 */
int moe_plan_layout(const struct moe_model *m, const struct moe_ctx_params *par,
		    struct plan_layout *l)
{
	uint32_t n_dense;
	int ret = layout_once(m, par, l, 0, false);

	if (ret != -ENOMEM || !par || !par->vram_bytes || !m->layers)
		return ret;
	n_dense = 0;
	for (uint32_t il = 0; il < m->hp.n_layer; il++) {
		struct moe_expert ex;

		n_dense += moe_plan_dense_ffn(m, il, &ex);
	}
	if (n_dense)
		ret = layout_once(m, par, l, 1, false);
	for (uint32_t s = 2; s <= n_dense && ret == -ENOMEM; s++)
		ret = layout_once(m, par, l, s, true);
	for (uint32_t s = 2; s <= n_dense && ret == -ENOMEM; s++)
		ret = layout_once(m, par, l, s, false);
	return ret;
}

void moe_plan_layout_free(struct plan_layout *l)
{
	free(l->t);
	free(l->layers);
	free(l->pool_slots);
	free(l->pool_cls);
	l->t = NULL;
	l->layers = NULL;
	l->pool_slots = NULL;
	l->pool_cls = NULL;
}

int moe_plan(const struct moe_model *model, const struct moe_ctx_params *p, struct moe_plan *out)
{
	struct plan_layout l;
	int ret;

	if (!model || !out)
		return moe_err(EINVAL, "moe_plan: NULL argument");
	ret = moe_plan_layout(model, p, &l);
	if (ret < 0)
		return ret;
	*out = l.plan;
	moe_plan_layout_free(&l);
	return 0;
}
