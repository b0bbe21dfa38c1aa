/* SPDX-License-Identifier: MIT */
/*
 * Creating an inference context: plan the device budget (resident tensors,
 * KV cache, scratch, then as many expert slots as fit), read the resident
 * tensors once through the I/O engine, bind every layer's tensors, and warm
 * the expert cache when the whole model fits.  Also eval, logits and stats.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "quant/quant.h"
#include "util/threadpool.h"
#include "util/util.h"

#define RESIDENT_CHUNK (8ull << 20)
#define DEFAULT_CTX 4096
#define DEFAULT_BATCH 64
/* experts in flight by default: about this much pinned staging, within the bounds below */
#define STAGING_TARGET (64ull << 20)
#define STAGING_MIN 4
#define STAGING_MAX 32
#define LLAMA4_CHUNK 8192

static const struct eng_arch eng_arches[MOE_ARCH_COUNT] = {
	[MOE_ARCH_LLAMA] = { .ffn = ENG_FFN_STD },
	[MOE_ARCH_QWEN3MOE] = { .ffn = ENG_FFN_STD },
	[MOE_ARCH_LLAMA4] = { .ffn = ENG_FFN_LLAMA4 },
	[MOE_ARCH_GPTOSS] = { .ffn = ENG_FFN_STD },
	[MOE_ARCH_GEMMA4] = { .ffn = ENG_FFN_GEMMA4, .attn_scale = 1.0f, .embd_scale = true,
			      .post_attn_norm = true, .softcap_default = 30.0f },
};

void moe_ctx_default_params(struct moe_ctx_params *p)
{
	memset(p, 0, sizeof(*p));
	moe_io_opts_init(&p->io);
}

static int find(const struct moe_ctx *ctx, int layer, const char *name)
{
	char full[96];

	if (layer >= 0)
		snprintf(full, sizeof(full), "blk.%d.%s", layer, name);
	else
		snprintf(full, sizeof(full), "%s", name);
	return moe_model_find_tensor(ctx->model, full, NULL);
}

static struct eng_mat mat(const struct moe_ctx *ctx, int layer, const char *name)
{
	struct moe_tensor_info ti;
	int i = find(ctx, layer, name);

	if (i < 0 || moe_model_tensor(ctx->model, i, &ti) < 0 || !ctx->res[i])
		return (struct eng_mat){ 0 };
	return (struct eng_mat){ ctx->res[i], ti.type, (int64_t)(ti.bytes ? ti.ne[1] : 0),
				 (int64_t)ti.ne[0] };
}

/*
 * A vector (norm weight, bias, sinks, scale) as F32; other float types are
 * converted once into device memory of their own.  *out NULL when absent.
 */
static int vec(struct moe_ctx *ctx, int layer, const char *name, uint64_t want,
	       const float **out)
{
	struct moe_tensor_info ti;
	int i = find(ctx, layer, name), ret;
	uint64_t n;
	float *f;

	*out = NULL;
	if (i < 0)
		return 0;
	ret = moe_model_tensor(ctx->model, i, &ti);
	if (ret < 0)
		return ret;
	n = ti.ne[0] * ti.ne[1] * ti.ne[2] * ti.ne[3];
	if (want && n != want)
		return moe_err(EINVAL, "%s: tensor '%s' has %llu elements, expected %llu",
			       moe_model_path(ctx->model), ti.name, (unsigned long long)n,
			       (unsigned long long)want);
	if (ti.type == MOE_TYPE_F32) {
		*out = ctx->res[i];
		return 0;
	}
	if (ti.type != MOE_TYPE_F16 && ti.type != MOE_TYPE_BF16)
		return moe_err(EINVAL, "%s: tensor '%s' is %s; vectors must be f32, f16 or bf16",
			       moe_model_path(ctx->model), ti.name, moe_type_name(ti.type));
	ret = ctx->be->ops->alloc(ctx->be, n * sizeof(float), (void **)&f);
	if (ret < 0)
		return moe_err_prefix(ret, "converting '%s' to f32", ti.name);
	ctx->extra[ctx->n_extra] = f;
	ctx->extra_bytes[ctx->n_extra++] = n * sizeof(float);
	ret = ctx->be->ops->get_row(ctx->be, ti.type, ctx->res[i], (int64_t)n, 0, f);
	if (ret < 0)
		return ret;
	*out = f;
	return 0;
}

static int read_resident(struct moe_ctx *ctx)
{
	uint32_t blk = moe_io_block(ctx->io);
	uint64_t cap = RESIDENT_CHUNK + 2ull * blk;
	void *stg = moe_io_alloc(ctx->io, cap);
	int ret = 0;

	if (!stg)
		return moe_err(ENOMEM, "cannot allocate %llu bytes of staging",
			       (unsigned long long)cap);
	for (uint32_t i = 0; i < ctx->n_tensors && !ret; i++) {
		struct moe_tensor_info ti;

		ret = moe_model_tensor(ctx->model, i, &ti);
		if (ret < 0 || ti.role != MOE_ROLE_OTHER)
			continue;
		ret = ctx->be->ops->alloc(ctx->be, ti.bytes, &ctx->res[i]);
		if (ret < 0) {
			moe_err_prefix(ret, "resident tensor '%s'", ti.name);
			break;
		}
		ctx->res_bytes[i] = ti.bytes;
		for (uint64_t done = 0; done < ti.bytes && !ret;) {
			uint64_t len = MOE_MIN(RESIDENT_CHUNK, ti.bytes - done);
			void *interior;
			struct moe_be_event ev = { 0 };

			ret = moe_io_read_sync(ctx->io, ti.offset + done, len, stg, cap, &interior);
			if (ret < 0) {
				moe_err_prefix(ret, "reading tensor '%s'", ti.name);
				break;
			}
			ret = ctx->be->ops->upload(ctx->be, (char *)ctx->res[i] + done, interior, len,
						   &ev);
			ret = ret ? ret : ctx->be->ops->sync(ctx->be, &ev);
			done += len;
		}
	}
	moe_io_free(ctx->io, stg);
	return ret < 0 ? ret : 0;
}

static int rope_setup(struct moe_ctx *ctx)
{
	const struct moe_model *m = ctx->model;
	const char *arch = ctx->hp.arch, *type = NULL;
	char key[128];
	double factor = 1, orig = 0, bf = 32, bs = 1, attn_factor = 1;
	bool yarn = false;

	snprintf(key, sizeof(key), "%s.rope.scaling.type", arch);
	if (moe_meta_get_str(m, key, &type) == 0 && strcmp(type, "none")) {
		snprintf(key, sizeof(key), "%s.rope.scaling.factor", arch);
		moe_meta_get_f64(m, key, &factor);
		if (factor <= 0)
			factor = 1;
		if (!strcmp(type, "yarn")) {
			yarn = true;
			snprintf(key, sizeof(key), "%s.rope.scaling.original_context_length", arch);
			if (moe_meta_get_f64(m, key, &orig) < 0 || orig <= 0)
				orig = ctx->hp.n_ctx_train;
			snprintf(key, sizeof(key), "%s.rope.scaling.yarn_beta_fast", arch);
			moe_meta_get_f64(m, key, &bf);
			snprintf(key, sizeof(key), "%s.rope.scaling.yarn_beta_slow", arch);
			moe_meta_get_f64(m, key, &bs);
			snprintf(key, sizeof(key), "%s.rope.scaling.attn_factor", arch);
			moe_meta_get_f64(m, key, &attn_factor);
		} else if (strcmp(type, "linear")) {
			return moe_err(ENOTSUP, "%s: rope scaling type '%s' is not supported (none, "
				       "linear, yarn)", moe_model_path(m), type);
		}
	}
	for (uint32_t il = 0; il < ctx->hp.n_layer; il++) {
		struct eng_layer *L = &ctx->layers[il];
		struct moe_rope *r = &L->rot;

		if (L->n_rot > L->head_dim || L->n_rot / 2 > MOE_ROPE_MAX_PAIRS || L->n_rot % 2)
			return moe_err(EINVAL, "%s: layer %u rotates %u of %u head dims",
				       moe_model_path(m), il, L->n_rot, L->head_dim);
		r->mode = m->arch->rope == MOE_ROPE_NEOX ? MOE_ROTATE_NEOX : MOE_ROTATE_NORM;
		r->n_rot = L->n_rot;
		r->base = m->layers[il].rope_base;
		r->freq_scale = (float)(1.0 / factor);
		r->attn_factor = (float)attn_factor;
		/* gemma4's proportional RoPE factors belong to the full-attention layers */
		if (!(m->arch->id == MOE_ARCH_GEMMA4 && L->sliding))
			r->freq_factors = ctx->rope_freqs;
		if (yarn) {
			r->ext_factor = 1.0f;
			moe_rope_yarn_corr(L->n_rot, (uint32_t)orig, r->base, (float)bf, (float)bs,
					   &r->corr_lo, &r->corr_hi);
		}
	}
	return 0;
}

/* A gate/up/down triple is all there or all absent, with matching shapes. */
static int check_ffn(const struct moe_ctx *ctx, uint32_t il, const char *what,
		     const struct eng_mat *g, const struct eng_mat *u, const struct eng_mat *d)
{
	int64_t E = ctx->hp.n_embd;

	if (!g->p && !u->p && !d->p)
		return 0;
	if (!g->p || !u->p || !d->p || g->cols != E || u->cols != E || g->rows != u->rows ||
	    d->cols != g->rows || d->rows != E || g->rows > ctx->max_ff)
		return moe_err(EINVAL, "%s: layer %u: the %s gate/up/down tensors are incomplete "
			       "or their shapes do not match n_embd %lld", moe_model_path(ctx->model),
			       il, what, (long long)E);
	return 0;
}

static int bind_layer(struct moe_ctx *ctx, uint32_t il)
{
	struct eng_layer *L = &ctx->layers[il];
	const struct moe_layer *ml = &ctx->model->layers[il];
	uint32_t n_embd = ctx->hp.n_embd, hd = ml->info.head_dim;
	int ret = 0;

	L->n_head = ml->n_head;
	L->n_head_kv = ml->info.n_head_kv;
	L->head_dim = hd;
	L->n_rot = ml->n_rot;
	L->n_expert_used = ml->info.n_expert_used;
	L->is_moe = ml->info.is_moe;
	L->sliding = ml->info.sliding;
	L->rope = ml->info.rope;
	L->wq = mat(ctx, il, "attn_q.weight");
	L->wk = mat(ctx, il, "attn_k.weight");
	L->wv = mat(ctx, il, "attn_v.weight");
	L->wo = mat(ctx, il, "attn_output.weight");
	L->ffn_gate = mat(ctx, il, "ffn_gate.weight");
	L->ffn_up = mat(ctx, il, "ffn_up.weight");
	L->ffn_down = mat(ctx, il, "ffn_down.weight");
	L->gate_inp = mat(ctx, il, "ffn_gate_inp.weight");
	L->gate_shexp = mat(ctx, il, "ffn_gate_shexp.weight");
	L->up_shexp = mat(ctx, il, "ffn_up_shexp.weight");
	L->down_shexp = mat(ctx, il, "ffn_down_shexp.weight");
	if (!L->wq.p || !L->wk.p || !L->wo.p)
		return moe_err(EINVAL, "%s: layer %u lacks attn_q/attn_k/attn_output",
			       moe_model_path(ctx->model), il);
	if (L->wq.rows != (int64_t)L->n_head * hd || L->wk.rows != (int64_t)L->n_head_kv * hd ||
	    (L->wv.p && L->wv.rows != L->wk.rows) || L->wo.cols != L->wq.rows)
		return moe_err(EINVAL, "%s: layer %u: attention shapes do not match %u heads x %u "
			       "(%u KV heads)", moe_model_path(ctx->model), il, L->n_head, hd,
			       L->n_head_kv);
	if (!L->is_moe && !L->ffn_up.p)
		return moe_err(EINVAL, "%s: layer %u has neither experts nor a dense FFN",
			       moe_model_path(ctx->model), il);
	if (L->wq.cols != n_embd || L->wk.cols != n_embd || (L->wv.p && L->wv.cols != n_embd) ||
	    L->wo.rows != n_embd || (L->gate_inp.p && L->gate_inp.cols != n_embd))
		return moe_err(EINVAL, "%s: layer %u: attention or router rows are not %u long",
			       moe_model_path(ctx->model), il, n_embd);
	ret = check_ffn(ctx, il, "ffn", &L->ffn_gate, &L->ffn_up, &L->ffn_down);
	ret = ret ? ret : check_ffn(ctx, il, "ffn_*_shexp", &L->gate_shexp, &L->up_shexp,
				    &L->down_shexp);
	if (ret < 0)
		return ret;
	ret = ret ? ret : vec(ctx, il, "attn_norm.weight", n_embd, &L->attn_norm);
	ret = ret ? ret : vec(ctx, il, "attn_q.bias", L->wq.rows, &L->bq);
	ret = ret ? ret : vec(ctx, il, "attn_k.bias", L->wk.rows, &L->bk);
	ret = ret ? ret : vec(ctx, il, "attn_v.bias", L->wk.rows, &L->bv);
	ret = ret ? ret : vec(ctx, il, "attn_output.bias", n_embd, &L->bo);
	ret = ret ? ret : vec(ctx, il, "attn_q_norm.weight", hd, &L->q_norm);
	ret = ret ? ret : vec(ctx, il, "attn_k_norm.weight", hd, &L->k_norm);
	ret = ret ? ret : vec(ctx, il, "attn_sinks.weight", L->n_head, &L->sinks);
	ret = ret ? ret : vec(ctx, il, "post_attention_norm.weight", n_embd, &L->post_attn_norm);
	ret = ret ? ret : vec(ctx, il, "ffn_norm.weight", n_embd, &L->ffn_norm);
	ret = ret ? ret : vec(ctx, il, "post_ffw_norm.weight", n_embd, &L->post_ffw_norm);
	ret = ret ? ret : vec(ctx, il, "ffn_gate_inp.bias", ctx->hp.n_expert, &L->gate_inp_b);
	ret = ret ? ret : vec(ctx, il, "ffn_gate_inp.scale", n_embd, &L->gate_inp_scale);
	ret = ret ? ret : vec(ctx, il, "exp_probs_b.bias", ctx->hp.n_expert, &L->exp_probs_b);
	ret = ret ? ret : vec(ctx, il, "ffn_gate_inp_shexp.weight", n_embd, &L->gate_inp_shexp);
	ret = ret ? ret : vec(ctx, il, "ffn_gate_exps.bias", 0, &L->gate_exps_b);
	ret = ret ? ret : vec(ctx, il, "ffn_up_exps.bias", 0, &L->up_exps_b);
	ret = ret ? ret : vec(ctx, il, "ffn_down_exps.bias", (uint64_t)n_embd * ctx->hp.n_expert,
			      &L->down_exps_b);
	ret = ret ? ret : vec(ctx, il, "ffn_down_exps.scale", ctx->hp.n_expert,
			      &L->down_exps_scale);
	ret = ret ? ret : vec(ctx, il, "pre_ffw_norm_2.weight", n_embd, &L->pre_ffw_norm_2);
	ret = ret ? ret : vec(ctx, il, "post_ffw_norm_1.weight", n_embd, &L->post_ffw_norm_1);
	ret = ret ? ret : vec(ctx, il, "post_ffw_norm_2.weight", n_embd, &L->post_ffw_norm_2);
	ret = ret ? ret : vec(ctx, il, "layer_output_scale.weight", 1, &L->layer_out_scale);
	if (ret < 0)
		return ret;
	if (!L->attn_norm || (L->q_norm && !L->k_norm) || (!!L->bq != !!L->bk) ||
	    (!!L->bq != !!L->bv))
		return moe_err(EINVAL, "%s: layer %u: attention norms/biases are incomplete",
			       moe_model_path(ctx->model), il);
	if (!L->ffn_norm && !L->post_attn_norm)
		return moe_err(EINVAL, "%s: layer %u has no FFN norm", moe_model_path(ctx->model),
			       il);
	if (L->is_moe && (!L->gate_inp.p || L->gate_inp.rows != ctx->hp.n_expert))
		return moe_err(EINVAL, "%s: layer %u: router ffn_gate_inp is missing or not %u wide",
			       moe_model_path(ctx->model), il, ctx->hp.n_expert);
	if (ctx->ea->ffn == ENG_FFN_GEMMA4 && (!L->post_attn_norm || !L->post_ffw_norm ||
	    (L->is_moe && (!L->gate_inp_scale || !L->pre_ffw_norm_2 || !L->post_ffw_norm_1 ||
			   !L->post_ffw_norm_2))))
		return moe_err(EINVAL, "%s: layer %u lacks gemma4 norms",
			       moe_model_path(ctx->model), il);
	return 0;
}

struct plan {
	uint64_t resident, kv, scratch, slot, slots_total;
	uint64_t f_nq, f_nkv, f_ff;
	uint32_t n_experts;
};

static uint64_t scratch_floats(const struct moe_ctx *ctx, const struct plan *p)
{
	uint64_t B = ctx->n_batch, E = ctx->hp.n_embd, K = ctx->max_used;

	return B * (8 * E + 2 * p->f_nq + 2 * p->f_nkv + ctx->hp.n_expert + 2 * K + 3 * p->f_ff +
		    K * E + 1);
}

static void carve(struct moe_ctx *ctx, const struct plan *p)
{
	uint64_t B = ctx->n_batch, E = ctx->hp.n_embd, K = ctx->max_used;
	float *f = ctx->scratch;

#define TAKE(ptr, n) do { ptr = (void *)f; f += (n); } while (0)
	TAKE(ctx->h, B * E);
	TAKE(ctx->x, B * E);
	TAKE(ctx->x2, B * E);
	TAKE(ctx->o, B * E);
	TAKE(ctx->ffn_out, B * E);
	TAKE(ctx->moe_out, B * E);
	TAKE(ctx->gath, B * E);
	TAKE(ctx->dn, B * E);
	TAKE(ctx->q, B * p->f_nq);
	TAKE(ctx->att, B * p->f_nq);
	TAKE(ctx->k, B * p->f_nkv);
	TAKE(ctx->v, B * p->f_nkv);
	TAKE(ctx->rlog, B * ctx->hp.n_expert);
	TAKE(ctx->rw, B * K);
	TAKE(ctx->sel, B * K);
	TAKE(ctx->gu, B * p->f_ff);
	TAKE(ctx->up, B * p->f_ff);
	TAKE(ctx->act, B * p->f_ff);
	TAKE(ctx->ybuf, B * K * E);
	TAKE(ctx->pos, B);
#undef TAKE
}

static int make_plan(struct moe_ctx *ctx, struct plan *p)
{
	const struct moe_model *m = ctx->model;

	memset(p, 0, sizeof(*p));
	for (uint32_t i = 0; i < ctx->n_tensors; i++) {
		struct moe_tensor_info ti;

		if (moe_model_tensor(m, i, &ti) == 0 && ti.role == MOE_ROLE_OTHER)
			p->resident += MOE_ALIGN_UP(ti.bytes ? ti.bytes : 1, 64);
	}
	/* vectors stored as f16/bf16 get an f32 copy */
	p->resident += 64ull * ctx->n_tensors;
	for (uint32_t il = 0; il < ctx->hp.n_layer; il++) {
		const struct moe_layer *ml = &m->layers[il];
		uint64_t hd = ml->info.head_dim, nkv = hd * ml->info.n_head_kv;

		p->kv += MOE_ALIGN_UP(ctx->n_ctx * nkv * sizeof(float), 64) * 2;
		p->f_nq = MOE_MAX(p->f_nq, hd * ml->n_head);
		p->f_nkv = MOE_MAX(p->f_nkv, nkv);
		p->f_ff = MOE_MAX(p->f_ff, ml->info.n_ff);
		ctx->max_used = MOE_MAX(ctx->max_used, ml->info.is_moe ? ml->info.n_expert_used : 0);
		if (ml->info.is_moe) {
			struct moe_expert ex;

			if (moe_model_expert(m, il, 0, &ex) == 0)
				p->f_ff = MOE_MAX(p->f_ff, 2 * ex.mats[ex.n_mats - 1].cols);
			p->n_experts += ctx->hp.n_expert;
		}
	}
	/* dense and shared-expert widths as the tensors say (layers may differ) */
	for (uint32_t il = 0; il < ctx->hp.n_layer; il++) {
		static const char *const ffn_names[] = { "ffn_gate.weight", "ffn_up.weight",
							 "ffn_gate_shexp.weight",
							 "ffn_up_shexp.weight" };

		for (size_t i = 0; i < MOE_ARRAY_SIZE(ffn_names); i++) {
			struct moe_tensor_info ti;
			int idx = find(ctx, (int)il, ffn_names[i]);

			if (idx >= 0 && moe_model_tensor(m, idx, &ti) == 0)
				p->f_ff = MOE_MAX(p->f_ff, ti.ne[1]);
		}
	}
	ctx->max_ff = (uint32_t)p->f_ff;
	ctx->max_used = MOE_MAX(ctx->max_used, 1);
	p->scratch = MOE_ALIGN_UP(scratch_floats(ctx, p) * sizeof(float), 64);
	p->slot = p->n_experts ? moe_cache_slot_bytes(m) : 0;
	return 0;
}

/*
 * Small experts want many reads in flight to keep the device busy, large
 * ones are already long reads: aim at a fixed staging size, with room for at
 * least one token's experts of a layer.
 */
static uint32_t n_staging(const struct moe_ctx *ctx, const struct plan *p)
{
	uint64_t n;

	if (ctx->par.n_staging)
		return ctx->par.n_staging;
	n = p->slot ? STAGING_TARGET / p->slot : STAGING_MIN;
	n = MOE_MAX(n, MOE_MAX((uint64_t)STAGING_MIN, ctx->max_used));
	return (uint32_t)MOE_MIN(n, MOE_MAX((uint64_t)STAGING_MAX, ctx->max_used));
}

static int alloc_kv(struct moe_ctx *ctx)
{
	for (uint32_t il = 0; il < ctx->hp.n_layer; il++) {
		struct eng_layer *L = &ctx->layers[il];
		uint64_t b = (uint64_t)ctx->n_ctx * L->n_head_kv * L->head_dim * sizeof(float);
		int ret = ctx->be->ops->alloc(ctx->be, b, (void **)&L->k_cache);

		ret = ret ? ret : ctx->be->ops->alloc(ctx->be, b, (void **)&L->v_cache);
		if (ret < 0)
			return moe_err_prefix(ret, "KV cache of layer %u", il);
		ctx->kv_bytes += 2 * b;
	}
	return 0;
}

static int warm_all(struct moe_ctx *ctx)
{
	uint32_t ne = ctx->hp.n_expert, n = 0;
	uint32_t *slots = malloc(sizeof(*slots) * ctx->hp.n_layer * ne);
	int ret = 0;

	if (!slots)
		return moe_err(ENOMEM, "out of memory");
	for (uint32_t il = 0; il < ctx->hp.n_layer && !ret; il++) {
		if (!ctx->layers[il].is_moe)
			continue;
		for (uint32_t e = 0; e < ne && !ret; e++) {
			while ((ret = moe_cache_acquire(ctx->cache, il, e, &slots[n])) == -EAGAIN) {
				ret = moe_cache_wait(ctx->cache);
				if (ret < 0)
					break;
			}
			if (ret >= 0) {
				n++;
				ret = 0;
			}
		}
	}
	for (uint32_t i = 0; i < n; i++) {
		int r;

		while (!(r = moe_cache_ready(ctx->cache, slots[i])))
			if ((r = moe_cache_wait(ctx->cache)) < 0)
				break;
		if (r < 0 && !ret)
			ret = r;
		moe_cache_release(ctx->cache, slots[i]);
	}
	free(slots);
	return ret;
}

static void fmt_bytes(char *buf, size_t len, uint64_t b)
{
	if (b >= (1ull << 30))
		snprintf(buf, len, "%.2f GiB", b / 1073741824.0);
	else
		snprintf(buf, len, "%.1f MiB", b / 1048576.0);
}

static int setup(struct moe_ctx *ctx)
{
	const struct moe_ctx_params *par = &ctx->par;
	struct moe_model *m = ctx->model;
	uint64_t fixed, avail = 0, n_slots = 0;
	uint32_t n_host = 0;
	char a[32], b[32], c[32], d[32], e[32], f[32];
	struct plan p;
	int ret;

	ctx->n_tensors = (uint32_t)moe_model_tensor_count(m);
	ctx->res = calloc(ctx->n_tensors, sizeof(*ctx->res));
	ctx->res_bytes = calloc(ctx->n_tensors, sizeof(*ctx->res_bytes));
	ctx->extra = calloc(ctx->n_tensors, sizeof(*ctx->extra));
	ctx->extra_bytes = calloc(ctx->n_tensors, sizeof(*ctx->extra_bytes));
	ctx->layers = calloc(ctx->hp.n_layer, sizeof(*ctx->layers));
	if (!ctx->res || !ctx->res_bytes || !ctx->extra || !ctx->extra_bytes || !ctx->layers)
		return moe_err(ENOMEM, "out of memory");
	make_plan(ctx, &p);
	fixed = p.resident + p.kv + p.scratch;
	if (par->vram_bytes) {
		uint64_t need = fixed + (uint64_t)ctx->max_used * p.slot;

		if (par->vram_bytes < need) {
			fmt_bytes(a, sizeof(a), par->vram_bytes);
			fmt_bytes(b, sizeof(b), need);
			fmt_bytes(c, sizeof(c), p.resident);
			fmt_bytes(d, sizeof(d), p.kv);
			fmt_bytes(e, sizeof(e), p.scratch);
			fmt_bytes(f, sizeof(f), (uint64_t)ctx->max_used * p.slot);
			return moe_err(ENOMEM, "a budget of %s cannot hold this model: it needs at "
				       "least %s (%llu bytes) = resident tensors %s + KV cache %s "
				       "for %u positions + scratch %s + %u experts of one layer %s; "
				       "raise --vram or lower --ctx", a, b, (unsigned long long)need,
				       c, d, ctx->n_ctx, e, ctx->max_used, f);
		}
		avail = par->vram_bytes - fixed;
		n_slots = p.slot ? MOE_MIN(avail / p.slot, p.n_experts) : 0;
	} else {
		n_slots = p.n_experts;
	}
	ret = moe_backend_cpu_create(par->vram_bytes, ctx->pool, &ctx->be);
	if (ret < 0)
		return ret;
	ret = ctx->be->ops->alloc(ctx->be, p.scratch, &ctx->scratch);
	if (ret < 0)
		return moe_err_prefix(ret, "scratch");
	ctx->scratch_bytes = p.scratch;
	carve(ctx, &p);
	ctx->tok_list = malloc(sizeof(int32_t) * ctx->n_batch * ctx->max_used);
	ctx->exp_off = calloc(ctx->hp.n_expert + 1, sizeof(int32_t));
	ctx->exp_fill = calloc(ctx->hp.n_expert + 1, sizeof(int32_t));
	ctx->exp_state = calloc(ctx->hp.n_expert + 1, 1);
	ctx->exp_slot = calloc(ctx->hp.n_expert + 1, sizeof(uint32_t));
	ctx->route_tmp = calloc(2 * (size_t)ctx->hp.n_expert + 2, sizeof(float));
	ctx->n_logits = ctx->n_batch;
	ctx->logits = malloc(sizeof(float) * ctx->n_logits * ctx->hp.n_vocab);
	if (!ctx->tok_list || !ctx->exp_off || !ctx->exp_fill || !ctx->exp_state ||
	    !ctx->exp_slot || !ctx->route_tmp || !ctx->logits)
		return moe_err(ENOMEM, "out of memory");
	{
		struct moe_io_opts io = par->io;
		uint64_t n_stg = n_staging(ctx, &p);

		/*
		 * The staging pool is pinned memory outside the budget: size it to
		 * what the cache and the resident reads use, not the engine's default.
		 */
		if (!io.staging_bytes)
			io.staging_bytes = RESIDENT_CHUNK + (2 << 20) +
					   n_stg * (p.slot + MOE_EXPERT_MAX_MATS * (16 << 10));
		ret = moe_io_open(moe_model_path(m), &io, &ctx->io);
		ctx->io_pool_bytes = io.staging_bytes;
	}
	if (ret < 0)
		return ret;
	ret = read_resident(ctx);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < ctx->n_tensors; i++)
		ctx->resident_bytes += ctx->res_bytes[i];
	if (find(ctx, -1, "per_layer_token_embd.weight") >= 0 ||
	    find(ctx, 0, "inp_gate.weight") >= 0)
		return moe_err(ENOTSUP, "%s: per-layer embeddings (Gemma 4 E2B/E4B) are not "
			       "supported; the MoE variant (26B-A4B) is", moe_model_path(m));
	ctx->tok_embd = mat(ctx, -1, "token_embd.weight");
	ctx->output = mat(ctx, -1, "output.weight");
	if (!ctx->output.p)
		ctx->output = ctx->tok_embd;
	ret = vec(ctx, -1, "output_norm.weight", ctx->hp.n_embd, &ctx->output_norm);
	ret = ret ? ret : vec(ctx, -1, "rope_freqs.weight", 0, &ctx->rope_freqs);
	if (ret < 0)
		return ret;
	if (!ctx->output_norm || !ctx->tok_embd.p)
		return moe_err(EINVAL, "%s: token_embd/output_norm missing", moe_model_path(m));
	for (uint32_t il = 0; il < ctx->hp.n_layer; il++) {
		ret = bind_layer(ctx, il);
		if (ret < 0)
			return ret;
	}
	ret = rope_setup(ctx);
	ret = ret ? ret : alloc_kv(ctx);
	if (ret < 0)
		return ret;
	if (p.n_experts) {
		struct moe_cache_params cp = {
			.model = m, .be = ctx->be, .io = ctx->io, .n_slots = (uint32_t)n_slots,
			.n_staging = n_staging(ctx, &p),
			.host_bytes = par->host_cache_bytes,
		};

		if (par->policy) {
			cp.policy = moe_cache_policy_find(par->policy);
			if (!cp.policy)
				return moe_err(EINVAL, "unknown eviction policy '%s' (lru)",
					       par->policy);
		}
		/* the f32 copies of vectors may have used part of the slot space */
		if (par->vram_bytes && ctx->be->used + n_slots * p.slot > par->vram_bytes)
			cp.n_slots = (uint32_t)((par->vram_bytes - ctx->be->used) / p.slot);
		if (cp.n_slots < ctx->max_used)
			return moe_err(ENOMEM, "budget too small for %u expert slots", ctx->max_used);
		ret = moe_cache_create(&cp, &ctx->cache);
		if (ret < 0)
			return ret;
		if (cp.n_slots >= p.n_experts && !(par->flags & MOE_CTX_LAZY_EXPERTS)) {
			ret = warm_all(ctx);
			if (ret < 0)
				return moe_err_prefix(ret, "reading the experts");
		}
	}
	ctx->st.n_experts = p.n_experts;
	if (ctx->cache) {
		struct moe_cache_stats cs;

		moe_cache_get_stats(ctx->cache, &cs);
		n_host = cs.n_host_slots;
	}
	moe_ctx_reset_stats(ctx);
	fmt_bytes(a, sizeof(a), par->vram_bytes);
	fmt_bytes(b, sizeof(b), ctx->resident_bytes);
	fmt_bytes(c, sizeof(c), ctx->kv_bytes);
	fmt_bytes(d, sizeof(d), ctx->scratch_bytes);
	fmt_bytes(e, sizeof(e), p.slot);
	fmt_bytes(f, sizeof(f), ctx->io_pool_bytes);
	snprintf(ctx->desc, sizeof(ctx->desc), "%s backend, %d threads, budget %s: resident %s, "
		 "KV %s (%u positions), scratch %s, %u expert slots x %s for %u experts; staging "
		 "%s and %u host-cache slots outside the budget; io: %s", ctx->be->ops->name,
		 moe_threadpool_size(ctx->pool), par->vram_bytes ? a : "unlimited", b, c,
		 ctx->n_ctx, d, ctx->st.n_slots, e, p.n_experts, f, n_host,
		 moe_io_describe(ctx->io));
	moe_log(MOE_LOG_INFO, "%s", ctx->desc);
	return 0;
}

int moe_ctx_create(struct moe_model *model, const struct moe_ctx_params *p,
		   struct moe_ctx **out)
{
	struct moe_ctx *ctx;
	int ret;

	if (!model || !out)
		return moe_err(EINVAL, "moe_ctx_create: NULL argument");
	*out = NULL;
	if (!model->arch) {
		const char *name = "?";

		moe_meta_get_str(model, "general.architecture", &name);
		return moe_err(ENOTSUP, "%s: architecture '%s' has no forward pass (supported: %s)",
			       moe_model_path(model), name, moe_arch_list());
	}
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return moe_err(ENOMEM, "out of memory");
	ctx->model = model;
	if (p)
		ctx->par = *p;
	else
		moe_ctx_default_params(&ctx->par);
	if (ctx->par.flags & ~MOE_CTX_FLAGS_ALL) {
		ret = moe_err(EINVAL, "moe_ctx_create: unknown flags 0x%x",
			      ctx->par.flags & ~MOE_CTX_FLAGS_ALL);
		free(ctx);
		return ret;
	}
	ret = moe_model_hparams(model, &ctx->hp);
	if (ret < 0) {
		free(ctx);
		return ret;
	}
	ctx->ea = &eng_arches[model->arch->id];
	ctx->n_ctx = ctx->par.n_ctx ? ctx->par.n_ctx :
		     MOE_MIN(ctx->hp.n_ctx_train ? ctx->hp.n_ctx_train : DEFAULT_CTX, DEFAULT_CTX);
	ctx->n_batch = MOE_MIN(ctx->par.n_batch ? ctx->par.n_batch : DEFAULT_BATCH, ctx->n_ctx);
	ctx->chunk = ctx->par.attn_chunk ? ctx->par.attn_chunk : LLAMA4_CHUNK;
	ctx->softcap = ctx->ea->softcap_default;
	{
		char key[128];
		double v;

		snprintf(key, sizeof(key), "%s.final_logit_softcapping", ctx->hp.arch);
		if (moe_meta_get_f64(model, key, &v) == 0)
			ctx->softcap = (float)v;
	}
	if (ctx->n_ctx > (1u << 24)) {
		ret = moe_err(EINVAL, "n_ctx %u is too large (at most %u)", ctx->n_ctx, 1u << 24);
		free(ctx);
		return ret;
	}
	ret = moe_threadpool_create(ctx->par.n_threads, &ctx->pool);
	if (ret < 0) {
		free(ctx);
		return ret;
	}
	ret = setup(ctx);
	if (ret < 0) {
		moe_ctx_free(ctx);
		return ret;
	}
	*out = ctx;
	return 0;
}

void moe_ctx_free(struct moe_ctx *ctx)
{
	if (!ctx)
		return;
	moe_cache_destroy(ctx->cache);
	if (ctx->be) {
		struct moe_backend *be = ctx->be;

		for (uint32_t i = 0; ctx->res && i < ctx->n_tensors; i++)
			be->ops->free(be, ctx->res[i], ctx->res_bytes[i]);
		for (uint32_t i = 0; i < ctx->n_extra; i++)
			be->ops->free(be, ctx->extra[i], ctx->extra_bytes[i]);
		for (uint32_t il = 0; ctx->layers && il < ctx->hp.n_layer; il++) {
			struct eng_layer *L = &ctx->layers[il];
			uint64_t b = (uint64_t)ctx->n_ctx * L->n_head_kv * L->head_dim *
				     sizeof(float);

			be->ops->free(be, L->k_cache, b);
			be->ops->free(be, L->v_cache, b);
		}
		be->ops->free(be, ctx->scratch, ctx->scratch_bytes);
		moe_backend_destroy(be);
	}
	moe_io_close(ctx->io);
	moe_threadpool_destroy(ctx->pool);
	free(ctx->res);
	free(ctx->res_bytes);
	free(ctx->extra);
	free(ctx->extra_bytes);
	free(ctx->layers);
	free(ctx->tok_list);
	free(ctx->exp_off);
	free(ctx->exp_fill);
	free(ctx->exp_state);
	free(ctx->exp_slot);
	free(ctx->route_tmp);
	free(ctx->logits);
	free(ctx);
}

int moe_ctx_eval(struct moe_ctx *ctx, const int32_t *tokens, uint32_t n, uint32_t pos,
		 uint32_t flags)
{
	bool all = flags & MOE_EVAL_ALL_LOGITS;
	uint32_t n_vocab = ctx->hp.n_vocab;
	double t0;
	int ret = 0;

	if (!n || !tokens)
		return moe_err(EINVAL, "moe_ctx_eval: no tokens");
	if (flags & ~MOE_EVAL_ALL_LOGITS)
		return moe_err(EINVAL, "moe_ctx_eval: unknown flags 0x%x",
			       flags & ~MOE_EVAL_ALL_LOGITS);
	if (pos > ctx->n_past)
		return moe_err(EINVAL, "moe_ctx_eval: position %u leaves a gap after the %u "
			       "positions evaluated", pos, ctx->n_past);
	if ((uint64_t)pos + n > ctx->n_ctx)
		return moe_err(ENOSPC, "context full: positions %u..%u do not fit %u cells; "
			       "raise --ctx", pos, pos + n - 1, ctx->n_ctx);
	for (uint32_t i = 0; i < n; i++)
		if (tokens[i] < 0 || (uint32_t)tokens[i] >= n_vocab)
			return moe_err(EINVAL, "token id %d (at %u) is out of range: the vocabulary "
				       "has %u tokens (0..%u)", tokens[i], i, n_vocab, n_vocab - 1);
	if (all && n > ctx->n_logits) {
		float *l = realloc(ctx->logits, sizeof(float) * (size_t)n * n_vocab);

		if (!l)
			return moe_err(ENOMEM, "out of memory for %u x %u logits", n, n_vocab);
		ctx->logits = l;
		ctx->n_logits = n;
	}
	t0 = moe_now();
	ctx->n_past = pos;
	for (uint32_t done = 0; done < n && !ret; done += ctx->n_batch) {
		uint32_t m = MOE_MIN(ctx->n_batch, n - done);

		ret = moe_forward(ctx, tokens + done, m, pos + done, all,
				  ctx->logits + (all ? (size_t)done * n_vocab : 0));
		if (!ret)
			ctx->n_past = pos + done + m;
	}
	if (n == 1) {
		ctx->st.decode_tokens++;
		ctx->st.decode_s += moe_now() - t0;
	} else {
		ctx->st.prefill_tokens += n;
		ctx->st.prefill_s += moe_now() - t0;
	}
	return ret;
}

const float *moe_ctx_logits(const struct moe_ctx *ctx, uint32_t i)
{
	if (i >= ctx->n_logits)
		return NULL;
	return ctx->logits + (size_t)i * ctx->hp.n_vocab;
}

uint32_t moe_ctx_n_vocab(const struct moe_ctx *ctx)
{
	return ctx->hp.n_vocab;
}

uint32_t moe_ctx_n_ctx(const struct moe_ctx *ctx)
{
	return ctx->n_ctx;
}

uint32_t moe_ctx_n_past(const struct moe_ctx *ctx)
{
	return ctx->n_past;
}

int moe_ctx_get_stats(const struct moe_ctx *ctx, struct moe_ctx_stats *out)
{
	struct moe_ctx_stats s = ctx->st;
	struct moe_io_stats io;

	if (ctx->cache) {
		struct moe_cache_stats cs;

		moe_cache_get_stats(ctx->cache, &cs);
		s.expert_hits = cs.hits;
		s.expert_misses = cs.misses;
		s.expert_evictions = cs.evictions;
		s.expert_host_hits = cs.host_hits;
		s.host_cache_bytes = cs.host_bytes;
		s.stall_s = cs.stall_s;
		s.n_slots = cs.n_slots;
		s.slot_bytes = cs.slot_bytes;
	}
	s.staging_bytes = ctx->io_pool_bytes;
	s.hit_rate = s.expert_hits + s.expert_misses ?
		     (double)s.expert_hits / (s.expert_hits + s.expert_misses) : 1.0;
	moe_io_get_stats(ctx->io, &io);
	s.bytes_read = io.bytes - ctx->io_base.bytes;
	s.read_s = io.busy_s - ctx->io_base.busy_s;
	s.read_gbps = s.read_s > 0 ? s.bytes_read / s.read_s / 1e9 : 0;
	s.prefill_tps = s.prefill_s > 0 ? s.prefill_tokens / s.prefill_s : 0;
	s.decode_tps = s.decode_s > 0 ? s.decode_tokens / s.decode_s : 0;
	s.vram_budget = ctx->par.vram_bytes;
	s.vram_used = ctx->be->used;
	s.resident_bytes = ctx->resident_bytes;
	s.kv_bytes = ctx->kv_bytes;
	s.scratch_bytes = ctx->scratch_bytes;
	s.host_bytes = sizeof(float) * (uint64_t)ctx->n_logits * ctx->hp.n_vocab;
	*out = s;
	return 0;
}

void moe_ctx_reset_stats(struct moe_ctx *ctx)
{
	struct moe_ctx_stats keep = ctx->st;

	memset(&ctx->st, 0, sizeof(ctx->st));
	ctx->st.n_slots = keep.n_slots;
	ctx->st.staging_bytes = keep.staging_bytes;
	ctx->st.n_experts = keep.n_experts;
	if (ctx->cache) {
		struct moe_cache_stats cs;

		moe_cache_reset_stats(ctx->cache);
		moe_cache_get_stats(ctx->cache, &cs);
		ctx->st.n_slots = cs.n_slots;
		ctx->st.staging_bytes = cs.staging_bytes;
	}
	moe_io_get_stats(ctx->io, &ctx->io_base);
}

const char *moe_ctx_describe(const struct moe_ctx *ctx)
{
	return ctx->desc;
}

void moe_ctx_set_route_hook(struct moe_ctx *ctx, moe_route_hook hook, void *arg)
{
	ctx->route_hook = hook;
	ctx->route_arg = arg;
}
