/* SPDX-License-Identifier: MIT */
/*
 * Resident tensors: read once through the I/O engine into pinned staging,
 * uploaded to their place in the plan's device memory (f16/bf16 vectors via
 * scratch, converted to f32 by the backend), then bound to the layers by
 * name, with every shape checked against the hyperparameters.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/engine.h"
#include "quant/quant.h"
#include "util/util.h"

#define READ_CHUNK (8ull << 20)

static int upload_tensor(struct moe_ctx *ctx, const struct moe_tensor_info *ti, moe_dptr dst,
			 void *stg, uint64_t cap)
{
	struct moe_backend *be = ctx->be;

	for (uint64_t done = 0; done < ti->bytes;) {
		uint64_t len = MOE_MIN(READ_CHUNK, ti->bytes - done);
		void *interior;
		int ret = moe_io_read_sync(ctx->io, ti->offset + done, len, stg, cap, &interior);

		if (ret < 0)
			return moe_err_prefix(ret, "reading tensor '%s'", ti->name);
		ret = be->ops->upload(be, MOE_BE_COPY, dst + done, interior, len);
		if (ret < 0)
			return ret;
		/* the staging buffer is reused for the next chunk */
		ret = be->ops->sync(be);
		if (ret < 0)
			return ret;
		done += len;
	}
	return 0;
}

int moe_engine_load(struct moe_ctx *ctx)
{
	struct moe_backend *be = ctx->be;
	uint64_t cap = ctx->lay.resident_chunk;
	void *stg;
	int ret = moe_io_alloc(ctx->io, cap, &stg);

	if (ret < 0)
		return moe_err(ENOMEM, "cannot allocate %llu bytes of staging",
			       (unsigned long long)cap);
	ret = be->ops->host_register(be, stg, cap);
	if (ret < 0) {
		moe_io_free(ctx->io, stg);
		return moe_err_prefix(ret, "registering staging with the %s backend", be->ops->name);
	}
	for (uint32_t i = 0; i < ctx->lay.n_tensors && !ret; i++) {
		const struct plan_tensor *pt = &ctx->lay.t[i];
		const struct moe_tensor_info *ti = &ctx->model->tinfo[i];
		moe_dptr home;

		if (pt->off == UINT64_MAX)
			continue;
		home = ctx->arena + pt->off;
		ctx->res[i] = home;
		if (!pt->convert) {
			ret = upload_tensor(ctx, ti, home, stg, cap);
			continue;
		}
		/* stored f16/bf16: land in scratch, convert into place */
		ret = upload_tensor(ctx, ti, ctx->arena + ctx->lay.scratch_off, stg, cap);
		if (!ret)
			ret = be->ops->to_f32(be, ti->type, ctx->arena + ctx->lay.scratch_off,
					      (int64_t)(pt->bytes / sizeof(float)), home);
		if (ret < 0)
			moe_err_prefix(ret, "converting '%s' to f32", ti->name);
	}
	if (!ret)
		ret = be->ops->sync(be);
	be->ops->host_unregister(be, stg);
	moe_io_free(ctx->io, stg);
	return ret;
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

static struct moe_be_mat mat(const struct moe_ctx *ctx, int layer, const char *name)
{
	int i = find(ctx, layer, name);
	const struct moe_tensor_info *ti;

	if (i < 0)
		return (struct moe_be_mat){ 0 };
	ti = &ctx->model->tinfo[i];
	/* a streamed dense FFN's matrices: their shapes, the data in a slot (moe_ffn.c) */
	if (!ctx->res[i] && !(layer >= 0 && ctx->lay.layers[layer].dense_stream &&
			      ti->role == MOE_ROLE_OTHER))
		return (struct moe_be_mat){ 0 };
	return (struct moe_be_mat){ .p = ctx->res[i], .type = ti->type,
				    .rows = (int64_t)(ti->bytes ? ti->ne[1] * ti->ne[2] : 0),
				    .cols = (int64_t)ti->ne[0] };
}

/* An f32 vector of @want elements (0: any), or 0 when absent. */
static int vec(const struct moe_ctx *ctx, int layer, const char *name, uint64_t want,
	       moe_dptr *out)
{
	int i = find(ctx, layer, name);
	const struct moe_tensor_info *ti;
	uint64_t n;

	*out = 0;
	if (i < 0)
		return 0;
	ti = &ctx->model->tinfo[i];
	n = ti->ne[0] * ti->ne[1] * ti->ne[2] * ti->ne[3];
	if (want && n != want)
		return moe_err(EINVAL, "%s: tensor '%s' has %llu elements, expected %llu",
			       moe_model_path(ctx->model), ti->name, (unsigned long long)n,
			       (unsigned long long)want);
	if (ti->type != MOE_TYPE_F32 && !ctx->lay.t[i].convert)
		return moe_err(EINVAL, "%s: tensor '%s' is %s; vectors must be f32, f16 or bf16",
			       moe_model_path(ctx->model), ti->name, moe_type_name(ti->type));
	*out = ctx->res[i];
	return 0;
}

static int rope_setup(struct moe_ctx *ctx)
{
	const struct moe_model *m = ctx->model;
	const char *arch = ctx->hp.arch, *type = NULL;
	char key[128];
	double factor = 1, orig = 0, bf = 32, bs = 1, attn_factor = 1, log_mul = 0, mscale = 1;
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
			snprintf(key, sizeof(key), "%s.rope.scaling.yarn_log_multiplier", arch);
			moe_meta_get_f64(m, key, &log_mul);
		} else if (strcmp(type, "linear")) {
			return moe_err(EOPNOTSUPP, "%s: rope scaling type '%s' is not supported "
				       "(none, linear, yarn)", moe_model_path(m), type);
		}
	}
	if (yarn && m->arch->yarn_mscale_in_scale) {
		/* cancel the rotation's own YaRN factor; the scores take mscale^2 instead */
		mscale = attn_factor * (1.0 + log_mul * log(factor));
		attn_factor = 1.0 / (1.0 + 0.1 * log(factor));
	}
	for (uint32_t il = 0; il < ctx->hp.n_layer; il++) {
		struct eng_layer *L = &ctx->layers[il];
		struct moe_rope *r = &L->rot;
		uint32_t hk = L->mla ? ctx->hp.head_dim_k_mla : L->head_dim;

		L->kq_scale = m->arch->attn_scale ? m->arch->attn_scale :
			      (float)(mscale * mscale / sqrt((double)hk));

		if (L->n_rot > L->head_dim || L->n_rot / 2 > MOE_ROPE_MAX_PAIRS || L->n_rot % 2)
			return moe_err(EINVAL, "%s: layer %u rotates %u of %u head dims",
				       moe_model_path(m), il, L->n_rot, L->head_dim);
		r->mode = m->arch->rope == MOE_ROPE_NEOX ? MOE_ROTATE_NEOX : MOE_ROTATE_NORM;
		r->n_rot = L->n_rot;
		r->base = m->layers[il].rope_base;
		r->freq_scale = (float)(1.0 / factor);
		r->attn_factor = (float)attn_factor;
		if (!(m->arch->rope_factors_full_only && L->sliding))
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
		     const struct moe_be_mat *g, const struct moe_be_mat *u,
		     const struct moe_be_mat *d)
{
	int64_t E = ctx->hp.n_embd;

	if (!g->rows && !u->rows && !d->rows)
		return 0;
	if (!g->rows || !u->rows || !d->rows || g->cols != E || u->cols != E || g->rows != u->rows ||
	    d->cols != g->rows || d->rows != E || g->rows > ctx->lay.shape.max_ff)
		return moe_err(EINVAL, "%s: layer %u: the %s gate/up/down tensors are incomplete "
			       "or their shapes do not match n_embd %lld", moe_model_path(ctx->model),
			       il, what, (long long)E);
	return 0;
}

struct vec_bind {
	const char *name;
	size_t field;               /* offset of the moe_dptr in struct eng_layer */
	int want;                   /* expected elements, see vec_len() */
};

enum { W_EMBD, W_Q, W_KV, W_HD, W_HEAD, W_NEXP, W_ANY, W_ONE, W_EMBD_NEXP, W_QLORA, W_KVLORA };

#define VB(n, f, w) { n, offsetof(struct eng_layer, f), w }
static const struct vec_bind vec_binds[] = {
	VB("attn_norm.weight", attn_norm, W_EMBD), VB("attn_q.bias", bq, W_Q),
	VB("attn_k.bias", bk, W_KV), VB("attn_v.bias", bv, W_KV),
	VB("attn_output.bias", bo, W_EMBD), VB("attn_q_norm.weight", q_norm, W_HD),
	VB("attn_k_norm.weight", k_norm, W_HD), VB("attn_sinks.weight", sinks, W_HEAD),
	VB("post_attention_norm.weight", post_attn_norm, W_EMBD),
	VB("ffn_norm.weight", ffn_norm, W_EMBD), VB("post_ffw_norm.weight", post_ffw_norm, W_EMBD),
	VB("ffn_gate_inp.bias", gate_inp_b, W_NEXP),
	VB("ffn_gate_inp.scale", gate_inp_scale, W_EMBD),
	VB("exp_probs_b.bias", exp_probs_b, W_NEXP), VB("ffn_gate_exps.bias", gate_exps_b, W_ANY),
	VB("ffn_up_exps.bias", up_exps_b, W_ANY),
	VB("ffn_down_exps.bias", down_exps_b, W_EMBD_NEXP),
	VB("ffn_down_exps.scale", down_exps_scale, W_NEXP),
	VB("pre_ffw_norm_2.weight", pre_ffw_norm_2, W_EMBD),
	VB("post_ffw_norm_1.weight", post_ffw_norm_1, W_EMBD),
	VB("post_ffw_norm_2.weight", post_ffw_norm_2, W_EMBD),
	VB("layer_output_scale.weight", layer_out_scale, W_ONE),
	VB("attn_q_a_norm.weight", q_a_norm, W_QLORA),
	VB("attn_kv_a_norm.weight", kv_a_norm, W_KVLORA),
};

static uint64_t vec_len(const struct moe_ctx *ctx, const struct eng_layer *L, int w)
{
	uint64_t E = ctx->hp.n_embd;

	switch (w) {
	case W_EMBD: return E;
	case W_Q: return (uint64_t)L->wq.rows;
	case W_KV: return (uint64_t)L->wk.rows;
	case W_HD: return L->head_dim;
	case W_HEAD: return L->n_head;
	case W_NEXP: return ctx->hp.n_expert;
	case W_ONE: return 1;
	case W_EMBD_NEXP: return E * ctx->hp.n_expert;
	case W_QLORA: return ctx->hp.q_lora_rank;
	case W_KVLORA: return ctx->hp.kv_lora_rank;
	default: return 0;
	}
}

static int bind_layer(struct moe_ctx *ctx, uint32_t il)
{
	struct eng_layer *L = &ctx->layers[il];
	const struct moe_layer *ml = &ctx->model->layers[il];
	const char *path = moe_model_path(ctx->model);
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
	L->chunked = ml->chunked;
	L->qk_norm_plain = ml->qk_norm_plain;
	L->attn_temp = ml->attn_temp;
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
	L->gate_inp_shexp = mat(ctx, il, "ffn_gate_inp_shexp.weight");
	if (L->gate_inp_shexp.p) {
		/* one row: the shared expert's gate logit per token */
		L->gate_inp_shexp.cols = L->gate_inp_shexp.cols * L->gate_inp_shexp.rows;
		L->gate_inp_shexp.rows = 1;
		if (L->gate_inp_shexp.cols != n_embd)
			return moe_err(EINVAL, "%s: layer %u: ffn_gate_inp_shexp is not %u long", path,
				       il, n_embd);
	}
	L->mla = ml->info.mla;
	L->own_kv = ml->info.kv_layer == (int32_t)il;
	if (!L->own_kv) {
		/* Gemma 4's shared layers: q only; model.c matched the source layer's shape */
		if (!L->wq.p || !L->wo.p || L->wk.p || L->wq.rows != (int64_t)L->n_head * hd ||
		    L->wo.cols != L->wq.rows || L->wq.cols != n_embd)
			return moe_err(EINVAL, "%s: layer %u: attention shapes do not match %u heads "
				       "x %u", path, il, L->n_head, hd);
	} else if (L->mla) {
		/* model.c checked every MLA shape against the hyperparameters */
		L->wq_a = mat(ctx, il, "attn_q_a.weight");
		L->wq_b = mat(ctx, il, "attn_q_b.weight");
		L->wkv_a = mat(ctx, il, "attn_kv_a_mqa.weight");
		L->wk_b = mat(ctx, il, "attn_k_b.weight");
		L->wv_b = mat(ctx, il, "attn_v_b.weight");
		/* one matrix per head */
		L->wk_b.rows = ctx->hp.kv_lora_rank;
		L->wv_b.rows = ctx->hp.head_dim_v_mla;
		if (!L->wkv_a.p || !L->wk_b.p || !L->wv_b.p || !L->wo.p ||
		    !(L->wq_a.p ? L->wq_b.p != 0 : L->wq.p != 0))
			return moe_err(EINVAL, "%s: layer %u lacks MLA tensors", path, il);
	} else if (!L->wq.p || !L->wk.p || !L->wo.p) {
		return moe_err(EINVAL, "%s: layer %u lacks attn_q/attn_k/attn_output", path, il);
	} else if (L->wq.rows != (int64_t)L->n_head * hd ||
		   L->wk.rows != (int64_t)L->n_head_kv * hd ||
		   (L->wv.p && L->wv.rows != L->wk.rows) || L->wo.cols != L->wq.rows) {
		return moe_err(EINVAL, "%s: layer %u: attention shapes do not match %u heads x %u "
			       "(%u KV heads)", path, il, L->n_head, hd, L->n_head_kv);
	}
	L->dense_stream = ctx->lay.layers[il].dense_stream;
	if (!L->is_moe && !L->ffn_up.rows)
		return moe_err(EINVAL, "%s: layer %u has neither experts nor a dense FFN", path, il);
	if ((!L->mla && L->own_kv && (L->wq.cols != n_embd || L->wk.cols != n_embd ||
				      (L->wv.p && L->wv.cols != n_embd))) ||
	    L->wo.rows != n_embd || (L->gate_inp.p && L->gate_inp.cols != n_embd))
		return moe_err(EINVAL, "%s: layer %u: attention or router rows are not %u long",
			       path, il, n_embd);
	ret = check_ffn(ctx, il, "ffn", &L->ffn_gate, &L->ffn_up, &L->ffn_down);
	ret = ret ? ret : check_ffn(ctx, il, "ffn_*_shexp", &L->gate_shexp, &L->up_shexp,
				    &L->down_shexp);
	for (size_t i = 0; !ret && i < MOE_ARRAY_SIZE(vec_binds); i++)
		ret = vec(ctx, (int)il, vec_binds[i].name, vec_len(ctx, L, vec_binds[i].want),
			  (moe_dptr *)((char *)L + vec_binds[i].field));
	if (ret < 0)
		return ret;
	if (ctx->hp.n_embd_per_layer) {
		L->ple_gate = mat(ctx, il, "inp_gate.weight");
		L->ple_out = mat(ctx, il, "proj.weight");
		ret = vec(ctx, (int)il, "post_norm.weight", n_embd, &L->ple_post_norm);
		if (ret < 0)
			return ret;
		if (!L->ple_gate.p || !L->ple_out.p || !L->ple_post_norm ||
		    L->ple_gate.cols != n_embd || L->ple_gate.rows != ctx->hp.n_embd_per_layer ||
		    L->ple_out.cols != ctx->hp.n_embd_per_layer || L->ple_out.rows != n_embd)
			return moe_err(EINVAL, "%s: layer %u: inp_gate/proj/post_norm of the "
				       "per-layer embeddings are missing or misshapen", path, il);
	}
	if (!L->attn_norm || (L->q_norm && L->own_kv && !L->k_norm) || (!!L->bq != !!L->bk) ||
	    (!!L->bq != !!L->bv) || (L->mla && (!L->kv_a_norm || (L->wq_a.p && !L->q_a_norm))))
		return moe_err(EINVAL, "%s: layer %u: attention norms/biases are incomplete", path,
			       il);
	if (!L->ffn_norm && !L->post_attn_norm)
		return moe_err(EINVAL, "%s: layer %u has no FFN norm", path, il);
	if (L->is_moe && (!L->gate_inp.p || L->gate_inp.rows != ctx->hp.n_expert))
		return moe_err(EINVAL, "%s: layer %u: router ffn_gate_inp is missing or not %u wide",
			       path, il, ctx->hp.n_expert);
	if (ctx->arch->ffn == MOE_FFN_GEMMA4 && (!L->post_attn_norm || !L->post_ffw_norm ||
	    (L->is_moe && (!L->gate_inp_scale || !L->pre_ffw_norm_2 || !L->post_ffw_norm_1 ||
			   !L->post_ffw_norm_2))))
		return moe_err(EINVAL, "%s: layer %u lacks gemma4 norms", path, il);
	if (L->is_moe) {
		struct moe_expert ex;

		ret = moe_model_expert(ctx->model, il, 0, &ex);
		if (ret < 0)
			return ret;
		L->n_ff_exp = (uint32_t)ex.mats[ex.n_mats - 1].cols;
		if ((L->gate_exps_b && ctx->model->tinfo[find(ctx, il, "ffn_gate_exps.bias")].ne[0] !=
		     L->n_ff_exp) ||
		    (L->up_exps_b && ctx->model->tinfo[find(ctx, il, "ffn_up_exps.bias")].ne[0] !=
		     L->n_ff_exp))
			return moe_err(EINVAL, "%s: layer %u: expert biases are not %u wide", path, il,
				       L->n_ff_exp);
	}
	/* shared layers: the plan gave them their source layer's cache */
	L->kv = (struct moe_kv){
		.k = ctx->arena + ctx->lay.layers[il].kv_off,
		.v = ctx->lay.layers[il].latent ? 0 :
		     ctx->arena + ctx->lay.layers[il].kv_off + ctx->lay.layers[il].kv_half,
		.type = ctx->lay.plan.kv_type, .n_cells = ctx->lay.layers[il].n_cells,
		.kv_dim = ctx->lay.layers[il].kv_dim,
	};
	return 0;
}

int moe_engine_bind(struct moe_ctx *ctx)
{
	const char *path = moe_model_path(ctx->model);
	int ret;

	if (ctx->hp.n_embd_per_layer) {
		uint64_t all = (uint64_t)ctx->hp.n_embd_per_layer * ctx->hp.n_layer;

		/* model.c checked the shapes; the table itself is streamed (ple.c) */
		ctx->ple_proj = mat(ctx, -1, "per_layer_model_proj.weight");
		ret = vec(ctx, -1, "per_layer_proj_norm.weight", ctx->hp.n_embd_per_layer,
			  &ctx->ple_proj_norm);
		if (ret < 0)
			return ret;
		if (!ctx->ple_proj.p || !ctx->ple_proj_norm || ctx->ple_proj.rows != (int64_t)all)
			return moe_err(EINVAL, "%s: per_layer_model_proj/per_layer_proj_norm are "
				       "missing or misshapen", path);
	}
	ctx->tok_embd = mat(ctx, -1, "token_embd.weight");
	ctx->output = mat(ctx, -1, "output.weight");
	if (!ctx->output.p)
		ctx->output = ctx->tok_embd;
	ret = vec(ctx, -1, "output_norm.weight", ctx->hp.n_embd, &ctx->output_norm);
	ret = ret ? ret : vec(ctx, -1, "rope_freqs.weight", 0, &ctx->rope_freqs);
	if (ret < 0)
		return ret;
	if (!ctx->output_norm || !ctx->tok_embd.p)
		return moe_err(EINVAL, "%s: token_embd/output_norm missing", path);
	if (ctx->tok_embd.cols != ctx->hp.n_embd || ctx->output.cols != ctx->hp.n_embd ||
	    ctx->output.rows != ctx->hp.n_vocab || ctx->tok_embd.rows != ctx->hp.n_vocab)
		return moe_err(EINVAL, "%s: token_embd/output are not %u x %u", path,
			       ctx->hp.n_vocab, ctx->hp.n_embd);
	for (uint32_t il = 0; il < ctx->hp.n_layer; il++) {
		ret = bind_layer(ctx, il);
		if (ret < 0)
			return ret;
	}
	return rope_setup(ctx);
}
