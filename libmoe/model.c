/* SPDX-License-Identifier: MIT */
/*
 * Model open: GGUF container + architecture descriptor -> hyperparameters,
 * per-layer facts, tensor roles and the expert map (file extents of every
 * routed expert), validated so that later stages can trust them.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "io/kmod.h"
#include "model.h"
#include "quant/quant.h"
#include "util/util.h"

const struct gguf_kv *moe_model_arch_kv(const struct moe_model *m, const char *suffix)
{
	char key[160];

	snprintf(key, sizeof(key), "%s.%s", m->hp.arch, suffix);
	return gguf_find_kv(m->gguf, key);
}

static bool kv_is_int(const struct gguf_kv *kv)
{
	return kv->type <= MOE_META_I32 || kv->type == MOE_META_U64 || kv->type == MOE_META_I64 ||
	       kv->type == MOE_META_BOOL;
}

static bool kv_signed(uint32_t t)
{
	return t == MOE_META_I8 || t == MOE_META_I16 || t == MOE_META_I32 || t == MOE_META_I64;
}

/*
 * An unsigned hyperparameter: a scalar, or a per-layer array of n_layer
 * entries (then @layer picks one).  Absent: *out = def, returns 0.
 */
static int hp_u32(const struct moe_model *m, const char *suffix, uint32_t layer, uint32_t def,
		  uint32_t *out)
{
	const struct gguf_kv *kv = moe_model_arch_kv(m, suffix);
	int64_t v;

	*out = def;
	if (!kv)
		return 0;
	if (kv->type == MOE_META_ARRAY) {
		if (kv->count != m->n_block)
			return moe_err(EINVAL, "%s: %s.%s has %llu entries, expected one per block "
				       "(%u)", m->path, m->hp.arch, suffix,
				       (unsigned long long)kv->count, m->n_block);
		if (!gguf_arr_i64(kv, layer, &v))
			return moe_err(EINVAL, "%s: %s.%s: expected an integer array", m->path,
				       m->hp.arch, suffix);
	} else if (kv_is_int(kv)) {
		v = kv_signed(kv->type) ? kv->v.i64 : (int64_t)MOE_MIN(kv->v.u64, (uint64_t)INT64_MAX);
	} else {
		return moe_err(EINVAL, "%s: %s.%s: expected an integer", m->path, m->hp.arch, suffix);
	}
	if (v < 0 || v > UINT32_MAX)
		return moe_err(EINVAL, "%s: %s.%s = %lld is out of range", m->path, m->hp.arch, suffix,
			       (long long)v);
	*out = (uint32_t)v;
	return 0;
}

static int hp_f32(const struct moe_model *m, const char *suffix, float def, float *out)
{
	const struct gguf_kv *kv = moe_model_arch_kv(m, suffix);

	*out = def;
	if (!kv)
		return 0;
	if (kv->type == MOE_META_F32 || kv->type == MOE_META_F64)
		*out = (float)kv->v.f64;
	else if (kv_is_int(kv))
		*out = kv_signed(kv->type) ? (float)kv->v.i64 : (float)kv->v.u64;
	else
		return moe_err(EINVAL, "%s: %s.%s: expected a number", m->path, m->hp.arch, suffix);
	if (!isfinite(*out))
		return moe_err(EINVAL, "%s: %s.%s is not finite", m->path, m->hp.arch, suffix);
	return 0;
}

static const struct gguf_tensor *find_t(const struct moe_model *m, int layer, const char *name)
{
	char full[GGUF_MAX_NAME + 16];
	int64_t i;

	if (layer >= 0)
		snprintf(full, sizeof(full), "blk.%d.%s", layer, name);
	else
		snprintf(full, sizeof(full), "%s", name);
	i = gguf_find_tensor(m->gguf, full);
	return i < 0 ? NULL : &m->gguf->tensors[i];
}

static int check_tensors(const struct moe_model *m, int layer, const struct arch_tensor *list)
{
	for (; list && list->name; list++) {
		if (list->need == ARCH_REQ && !find_t(m, layer, list->name)) {
			if (layer >= 0)
				return moe_err(EINVAL, "%s: missing required tensor 'blk.%d.%s' for "
					       "architecture %s", m->path, layer, list->name,
					       m->hp.arch);
			return moe_err(EINVAL, "%s: missing required tensor '%s' for architecture %s",
				       m->path, list->name, m->hp.arch);
		}
	}
	return 0;
}

static int expect_shape(const struct moe_model *m, const struct gguf_tensor *t, uint64_t n0,
			uint64_t n1, uint64_t n2)
{
	if (t->ne[0] != n0 || t->ne[1] != n1 || t->ne[2] != n2 || t->ne[3] != 1)
		return moe_err(EINVAL, "%s: tensor '%s' has shape [%llu, %llu, %llu, %llu], expected "
			       "[%llu, %llu, %llu]", m->path, t->name, (unsigned long long)t->ne[0],
			       (unsigned long long)t->ne[1], (unsigned long long)t->ne[2],
			       (unsigned long long)t->ne[3], (unsigned long long)n0,
			       (unsigned long long)n1, (unsigned long long)n2);
	return 0;
}

/* deepseek2's MLA dimensions, and the refusal of the layout it cannot run */
static int read_mla(struct moe_model *m)
{
	struct moe_hparams *hp = &m->hp;
	int ret;

	if (!moe_model_arch_kv(m, "attention.key_length_mla") ||
	    !moe_model_arch_kv(m, "attention.value_length_mla"))
		return moe_err(EOPNOTSUPP, "%s: %s.attention.key_length_mla/value_length_mla are "
			       "missing: the file has the older attn_kv_b layout of multi-head "
			       "latent attention, which is not supported; convert the model again "
			       "with a current llama.cpp convert_hf_to_gguf.py (it writes attn_k_b "
			       "and attn_v_b)", m->path, hp->arch);
	ret = hp_u32(m, "attention.q_lora_rank", 0, 0, &hp->q_lora_rank);
	ret = ret ? ret : hp_u32(m, "attention.kv_lora_rank", 0, 0, &hp->kv_lora_rank);
	ret = ret ? ret : hp_u32(m, "attention.key_length_mla", 0, 0, &hp->head_dim_k_mla);
	ret = ret ? ret : hp_u32(m, "attention.value_length_mla", 0, 0, &hp->head_dim_v_mla);
	if (ret)
		return ret;
	if (!hp->kv_lora_rank || hp->kv_lora_rank > 65536 || hp->n_rot % 2 ||
	    hp->head_dim_k_mla <= hp->n_rot || hp->head_dim_k_mla > 4096 ||
	    !hp->head_dim_v_mla || hp->head_dim_v_mla > 4096 || hp->q_lora_rank > 65536)
		return moe_err(EINVAL, "%s: MLA dimensions are invalid: kv_lora_rank %u, q/k head "
			       "%u with %u rotated, v head %u, q_lora_rank %u", m->path,
			       hp->kv_lora_rank, hp->head_dim_k_mla, hp->n_rot, hp->head_dim_v_mla,
			       hp->q_lora_rank);
	/* the MQA view of the latent cache: one KV head of latent + rotated key */
	hp->n_head_kv = 1;
	hp->head_dim_k = hp->kv_lora_rank + hp->n_rot;
	hp->head_dim_v = hp->kv_lora_rank;
	return 0;
}

static int read_hparams(struct moe_model *m)
{
	struct moe_hparams *hp = &m->hp;
	const struct moe_arch *a = m->arch;
	const struct gguf_tensor *emb, *t;
	const struct gguf_kv *kv;
	int ret = 0;

	for (const char *const *k = a->required_keys; *k; k++)
		if (!moe_model_arch_kv(m, *k))
			return moe_err(EINVAL, "%s: missing required metadata key '%s.%s'", m->path,
				       hp->arch, *k);
	ret |= hp_u32(m, "block_count", 0, 0, &m->n_block);
	if (!ret && a->nextn)
		ret = hp_u32(m, "nextn_predict_layers", 0, 0, &hp->n_nextn);
	if (ret)
		return ret;
	if (m->n_block == 0 || m->n_block > 4096)
		return moe_err(EINVAL, "%s: %s.block_count = %u is out of range 1..4096", m->path,
			       hp->arch, m->n_block);
	if (hp->n_nextn >= m->n_block)
		return moe_err(EINVAL, "%s: %s.nextn_predict_layers = %u leaves no trunk of the %u "
			       "blocks", m->path, hp->arch, hp->n_nextn, m->n_block);
	/* the NextN/MTP blocks follow the trunk; the forward pass skips them */
	hp->n_layer = m->n_block - hp->n_nextn;
	ret = hp_u32(m, "embedding_length", 0, 0, &hp->n_embd);
	ret = ret ? ret : hp_u32(m, "attention.head_count", 0, 0, &hp->n_head);
	ret = ret ? ret : hp_u32(m, "attention.head_count_kv", 0, hp->n_head, &hp->n_head_kv);
	if (ret)
		return ret;
	if (!hp->n_embd || hp->n_embd > (1u << 20))
		return moe_err(EINVAL, "%s: %s.embedding_length = %u is out of range", m->path,
			       hp->arch, hp->n_embd);
	if (a->id == MOE_ARCH_GEMMA4 && !hp->n_head)
		hp->n_head = 8;
	if (!hp->n_head || hp->n_head > 4096 || !hp->n_head_kv || hp->n_head % hp->n_head_kv)
		return moe_err(EINVAL, "%s: head counts %u/%u are invalid (head_count must be a "
			       "non-zero multiple of head_count_kv)", m->path, hp->n_head,
			       hp->n_head_kv);
	ret = hp_u32(m, "attention.key_length", 0, hp->n_embd / hp->n_head, &hp->head_dim_k);
	ret = ret ? ret : hp_u32(m, "attention.value_length", 0, hp->head_dim_k, &hp->head_dim_v);
	ret = ret ? ret : hp_u32(m, "rope.dimension_count", 0, hp->head_dim_k, &hp->n_rot);
	ret = ret ? ret : hp_u32(m, "feed_forward_length", 0, 0, &hp->n_ff);
	ret = ret ? ret : hp_u32(m, "expert_count", 0, 0, &hp->n_expert);
	ret = ret ? ret : hp_u32(m, "expert_used_count", 0, 0, &hp->n_expert_used);
	ret = ret ? ret : hp_u32(m, "expert_shared_count", 0, 0, &hp->n_expert_shared);
	ret = ret ? ret : hp_u32(m, "context_length", 0, 0, &hp->n_ctx_train);
	ret = ret ? ret : hp_u32(m, "expert_gating_func", 0, a->gating, &hp->gating);
	ret = ret ? ret : hp_u32(m, "interleave_moe_layer_step", 0, 1, &hp->interleave_moe_step);
	ret = ret ? ret : hp_u32(m, "leading_dense_block_count", 0, 0, &hp->leading_dense);
	ret = ret ? ret : hp_u32(m, "attention.sliding_window", 0, 0, &hp->sliding_window);
	ret = ret ? ret : hp_f32(m, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->rms_eps);
	ret = ret ? ret : hp_f32(m, "rope.freq_base", 10000.0f, &hp->rope_base);
	ret = ret ? ret : hp_f32(m, "expert_weights_scale", 0.0f, &hp->expert_weights_scale);
	ret = ret ? ret : hp_u32(m, "embedding_length_per_layer_input", 0, 0,
				 &hp->n_embd_per_layer);
	ret = ret ? ret : hp_u32(m, "attention.shared_kv_layers", 0, 0, &hp->n_kv_shared);
	ret = ret ? ret : hp_u32(m, "expert_group_count", 0, 0, &hp->n_group);
	ret = ret ? ret : hp_u32(m, "expert_group_used_count", 0, 0, &hp->topk_group);
	if (ret)
		return ret;
	if (hp->n_group > 1 && (hp->n_group > MOE_ROUTE_MAX_GROUPS || hp->n_expert % hp->n_group ||
				!hp->topk_group || hp->topk_group > hp->n_group ||
				hp->n_expert_used > hp->topk_group * (hp->n_expert / hp->n_group)))
		return moe_err(EINVAL, "%s: %u experts in %s.expert_group_count = %u groups keeping "
			       "%u (expert_group_used_count) cannot give %u experts per token", m->path,
			       hp->n_expert, hp->arch, hp->n_group, hp->topk_group,
			       hp->n_expert_used);
	if (hp->n_kv_shared >= hp->n_layer || hp->n_embd_per_layer > 65536)
		return moe_err(EINVAL, "%s: %s.attention.shared_kv_layers = %u of %u layers, or "
			       "embedding_length_per_layer_input = %u, is out of range", m->path,
			       hp->arch, hp->n_kv_shared, hp->n_layer, hp->n_embd_per_layer);
	if (a->attn & MOE_ATTN_MLA) {
		ret = read_mla(m);
		if (ret)
			return ret;
	}
	if (!hp->head_dim_k || hp->head_dim_k > 4096 || !hp->head_dim_v || hp->head_dim_v > 4096)
		return moe_err(EINVAL, "%s: head dims %u/%u are out of range", m->path,
			       hp->head_dim_k, hp->head_dim_v);
	if (hp->n_expert > 65536 || hp->n_expert_used > hp->n_expert)
		return moe_err(EINVAL, "%s: %u experts with %u used per token is invalid", m->path,
			       hp->n_expert, hp->n_expert_used);
	if (hp->n_expert && !hp->n_expert_used)
		return moe_err(EINVAL, "%s: %s.expert_used_count is 0 with %u experts", m->path,
			       hp->arch, hp->n_expert);
	if (hp->gating < MOE_GATING_SOFTMAX || hp->gating > MOE_GATING_SOFTMAX_SELECTED)
		return moe_err(EINVAL, "%s: %s.expert_gating_func = %u is unknown (1 softmax, "
			       "2 sigmoid, 3 softmax over the selected)", m->path, hp->arch,
			       hp->gating);
	if (!hp->interleave_moe_step)
		return moe_err(EINVAL, "%s: %s.interleave_moe_layer_step is 0", m->path, hp->arch);
	if (hp->rms_eps <= 0)
		hp->rms_eps = 1e-5f;
	if (hp->expert_weights_scale == 0.0f)
		hp->expert_weights_scale = 1.0f;
	kv = moe_model_arch_kv(m, "expert_weights_norm");
	hp->expert_weights_norm = kv ? kv->v.u64 != 0 : a->weights_norm;

	emb = find_t(m, -1, "token_embd.weight");
	if (!emb)
		return moe_err(EINVAL, "%s: missing required tensor 'token_embd.weight'", m->path);
	if (emb->ne[0] != hp->n_embd || emb->n_dims != 2)
		return moe_err(EINVAL, "%s: token_embd.weight has rows of %llu, expected n_embd %u",
			       m->path, (unsigned long long)emb->ne[0], hp->n_embd);
	hp->n_vocab = (uint32_t)emb->ne[1];
	t = find_t(m, -1, "output.weight");
	hp->tied_output = !t;
	if (t && (t->ne[0] != hp->n_embd || t->ne[1] != hp->n_vocab))
		return moe_err(EINVAL, "%s: output.weight has shape [%llu, %llu], expected [%u, %u]",
			       m->path, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
			       hp->n_embd, hp->n_vocab);
	return 0;
}

static bool layer_is_moe(const struct moe_model *m, uint32_t il)
{
	const struct moe_hparams *hp = &m->hp;

	if (!hp->n_expert)
		return false;
	switch (m->arch->moe_layers) {
	case MOE_LAYERS_INTERLEAVE:
		return (il + 1) % hp->interleave_moe_step == 0;
	case MOE_LAYERS_BY_TENSOR:
		return find_t(m, (int)il, "ffn_gate_inp.weight") != NULL;
	default:
		return il >= hp->leading_dense;
	}
}

static int set_role(struct moe_model *m, const struct gguf_tensor *t, uint32_t role)
{
	struct moe_tensor_info *ti = &m->tinfo[t - m->gguf->tensors];

	ti->role = role;
	return 0;
}

/* Build the expert extents of layer il from its 3-D expert tensors. */
static int map_experts(struct moe_model *m, uint32_t il, struct moe_layer *L)
{
	const struct moe_hparams *hp = &m->hp;
	const struct gguf_tensor *mats[3];
	const uint32_t roles[3] = { MOE_ROLE_EXPERT_GATE, MOE_ROLE_EXPERT_UP, MOE_ROLE_EXPERT_DOWN };
	uint32_t n_mats = 0, nff;
	const struct gguf_tensor *gu = find_t(m, (int)il, "ffn_gate_up_exps.weight");
	const struct gguf_tensor *down = find_t(m, (int)il, "ffn_down_exps.weight");
	uint32_t mat_roles[3];
	int ret;

	if (!down)
		return moe_err(EINVAL, "%s: missing required tensor 'blk.%u.ffn_down_exps.weight'",
			       m->path, il);
	nff = (uint32_t)down->ne[0];
	if (gu) {
		mats[n_mats] = gu;
		mat_roles[n_mats++] = MOE_ROLE_EXPERT_GATE_UP;
		ret = expect_shape(m, gu, hp->n_embd, 2ull * nff, hp->n_expert);
		if (ret)
			return ret;
	} else {
		const char *names[2] = { "ffn_gate_exps.weight", "ffn_up_exps.weight" };

		for (int i = 0; i < 2; i++) {
			const struct gguf_tensor *t = find_t(m, (int)il, names[i]);

			if (!t)
				return moe_err(EINVAL, "%s: missing required tensor 'blk.%u.%s' (or "
					       "the fused ffn_gate_up_exps.weight)", m->path, il,
					       names[i]);
			ret = expect_shape(m, t, hp->n_embd, nff, hp->n_expert);
			if (ret)
				return ret;
			mats[n_mats] = t;
			mat_roles[n_mats++] = roles[i];
		}
	}
	ret = expect_shape(m, down, nff, hp->n_embd, hp->n_expert);
	if (ret)
		return ret;
	mats[n_mats] = down;
	mat_roles[n_mats++] = MOE_ROLE_EXPERT_DOWN;
	if (!m->hp.n_ff_exp)
		m->hp.n_ff_exp = nff;

	L->experts = calloc(hp->n_expert, sizeof(*L->experts));
	if (!L->experts)
		return moe_err(ENOMEM, "%s: out of memory for the expert map", m->path);
	for (uint32_t e = 0; e < hp->n_expert; e++) {
		struct moe_expert *x = &L->experts[e];

		x->n_mats = n_mats;
		for (uint32_t k = 0; k < n_mats; k++) {
			const struct gguf_tensor *t = mats[k];
			uint64_t each = t->bytes / t->ne[2];

			x->mats[k] = (struct moe_extent){
				.offset = t->offset + e * each, .bytes = each, .type = t->type,
				.role = mat_roles[k], .rows = t->ne[1], .cols = t->ne[0],
			};
			x->bytes += each;
		}
		L->info.expert_bytes += x->bytes;
	}
	for (uint32_t k = 0; k < n_mats; k++)
		set_role(m, mats[k], mat_roles[k]);
	return 0;
}

/* The MLA tensors of layer il: present in the absorbed layout, shaped as the keys say. */
static int check_mla(const struct moe_model *m, uint32_t il)
{
	const struct moe_hparams *hp = &m->hp;
	const struct moe_layer *L = &m->layers[il];
	uint64_t H = L->n_head, r = hp->kv_lora_rank, nope = hp->head_dim_k_mla - hp->n_rot;
	const struct gguf_tensor *kb = find_t(m, (int)il, "attn_k_b.weight");
	const struct gguf_tensor *vb = find_t(m, (int)il, "attn_v_b.weight");
	const struct gguf_tensor *qa = find_t(m, (int)il, "attn_q_a.weight");
	const struct gguf_tensor *qb = find_t(m, (int)il, "attn_q_b.weight");
	const struct gguf_tensor *q = find_t(m, (int)il, "attn_q.weight");
	const struct gguf_tensor *t;
	int ret;

	if (!kb && find_t(m, (int)il, "attn_kv_b.weight"))
		return moe_err(EOPNOTSUPP, "%s: layer %u has attn_kv_b.weight, the older layout of "
			       "multi-head latent attention, which is not supported; convert the "
			       "model again with a current llama.cpp convert_hf_to_gguf.py (it "
			       "writes attn_k_b and attn_v_b)", m->path, il);
	if (!kb || !vb)
		return moe_err(EINVAL, "%s: layer %u lacks attn_k_b.weight/attn_v_b.weight of "
			       "multi-head latent attention", m->path, il);
	if (hp->q_lora_rank ? !qa || !qb || !find_t(m, (int)il, "attn_q_a_norm.weight") : !q)
		return moe_err(EINVAL, "%s: layer %u: q_lora_rank %u needs %s", m->path, il,
			       hp->q_lora_rank, hp->q_lora_rank ?
			       "attn_q_a, attn_q_a_norm and attn_q_b" : "attn_q");
	ret = expect_shape(m, kb, nope, r, H);
	ret = ret ? ret : expect_shape(m, vb, r, hp->head_dim_v_mla, H);
	if (!ret && hp->q_lora_rank) {
		ret = expect_shape(m, qa, hp->n_embd, hp->q_lora_rank, 1);
		ret = ret ? ret : expect_shape(m, qb, hp->q_lora_rank, H * hp->head_dim_k_mla, 1);
	} else if (!ret) {
		ret = expect_shape(m, q, hp->n_embd, H * hp->head_dim_k_mla, 1);
	}
	t = find_t(m, (int)il, "attn_kv_a_mqa.weight");
	ret = ret ? ret : expect_shape(m, t, hp->n_embd, r + hp->n_rot, 1);
	t = find_t(m, (int)il, "attn_output.weight");
	ret = ret ? ret : expect_shape(m, t, H * hp->head_dim_v_mla, hp->n_embd, 1);
	return ret;
}

/*
 * Gemma 4 E2B/E4B: the last shared_kv_layers layers have no K/V of their
 * own and read the cache of the last sliding (n_kv_start - 2) or full
 * (n_kv_start - 1) layer before them, which must be of their kind and
 * shape; the per-layer embedding tensors are there when the file has them.
 */
static int check_gemma4_layer(struct moe_model *m, uint32_t il)
{
	const struct moe_hparams *hp = &m->hp;
	struct moe_layer_info *li = &m->layers[il].info;
	uint32_t start = hp->n_layer - hp->n_kv_shared;
	static const char *const ple[] = { "inp_gate.weight", "proj.weight", "post_norm.weight" };
	bool has_k = find_t(m, (int)il, "attn_k.weight") != NULL;

	if (il >= start) {
		int32_t src = (int32_t)start - (li->sliding ? 2 : 1);
		const struct moe_layer_info *si = src >= 0 ? &m->layers[src].info : NULL;

		if (!si || si->sliding != li->sliding || si->head_dim != li->head_dim ||
		    si->n_head_kv != li->n_head_kv)
			return moe_err(EINVAL, "%s: layer %u shares the KV cache of layer %d, which "
				       "is not a %s layer of the same head shape (the last %u layers "
				       "share; the two before them must be sliding, then full)",
				       m->path, il, src, li->sliding ? "sliding-window" : "full",
				       hp->n_kv_shared);
		li->kv_layer = src;
		if (has_k)
			return moe_err(EINVAL, "%s: layer %u shares an earlier KV cache but has "
				       "attn_k.weight", m->path, il);
	} else if (!has_k || !find_t(m, (int)il, "attn_k_norm.weight")) {
		return moe_err(EINVAL, "%s: missing required tensor 'blk.%u.attn_k.weight' or "
			       "'blk.%u.attn_k_norm.weight' for architecture %s", m->path, il, il,
			       hp->arch);
	}
	for (size_t i = 0; hp->n_embd_per_layer && i < MOE_ARRAY_SIZE(ple); i++)
		if (!find_t(m, (int)il, ple[i]))
			return moe_err(EINVAL, "%s: missing required tensor 'blk.%u.%s' of the "
				       "per-layer embeddings", m->path, il, ple[i]);
	return 0;
}

/* Gemma 4's per-layer embedding table: streamed by rows, never resident. */
static int check_ple(struct moe_model *m)
{
	const struct moe_hparams *hp = &m->hp;
	static const char *const names[] = { "per_layer_token_embd.weight",
					      "per_layer_model_proj.weight",
					      "per_layer_proj_norm.weight" };
	const struct gguf_tensor *t[3];
	uint64_t all = (uint64_t)hp->n_embd_per_layer * hp->n_layer;
	int ret;

	for (int i = 0; i < 3; i++) {
		t[i] = find_t(m, -1, names[i]);
		if (!t[i])
			return moe_err(EINVAL, "%s: missing required tensor '%s' (%s."
				       "embedding_length_per_layer_input is %u)", m->path, names[i],
				       hp->arch, hp->n_embd_per_layer);
	}
	ret = expect_shape(m, t[0], all, hp->n_vocab, 1);
	ret = ret ? ret : expect_shape(m, t[1], hp->n_embd, all, 1);
	ret = ret ? ret : expect_shape(m, t[2], hp->n_embd_per_layer, 1, 1);
	if (ret)
		return ret;
	m->tinfo[t[0] - m->gguf->tensors].role = MOE_ROLE_STREAMED_ROWS;
	return 0;
}

static int read_layers(struct moe_model *m)
{
	struct moe_hparams *hp = &m->hp;
	const struct moe_arch *a = m->arch;
	const struct gguf_kv *pattern = NULL;
	uint32_t hd_swa = 0, rot_swa = 0;
	float base_swa = 10000.0f;
	int ret;

	m->layers = calloc(hp->n_layer, sizeof(*m->layers));
	if (!m->layers)
		return moe_err(ENOMEM, "%s: out of memory", m->path);
	if (a->attn & MOE_ATTN_SWA_PATTERN) {
		pattern = moe_model_arch_kv(m, "attention.sliding_window_pattern");
		if (!pattern || pattern->type != MOE_META_ARRAY)
			return moe_err(EINVAL, "%s: %s.attention.sliding_window_pattern must be an "
				       "array (one entry per layer)", m->path, hp->arch);
		ret = hp_u32(m, "attention.key_length_swa", 0, hp->head_dim_k, &hd_swa);
		ret = ret ? ret : hp_u32(m, "rope.dimension_count_swa", 0, hp->n_rot, &rot_swa);
		ret = ret ? ret : hp_f32(m, "rope.freq_base_swa", 10000.0f, &base_swa);
		if (ret)
			return ret;
	}
	ret = check_tensors(m, -1, a->globals);
	if (ret)
		return ret;
	for (uint32_t il = 0; il < hp->n_layer; il++) {
		struct moe_layer *L = &m->layers[il];
		struct moe_layer_info *li = &L->info;

		ret = hp_u32(m, "attention.head_count_kv", il, hp->n_head, &li->n_head_kv);
		ret = ret ? ret : hp_u32(m, "attention.head_count", il, hp->n_head, &L->n_head);
		ret = ret ? ret : hp_u32(m, "expert_used_count", il, hp->n_expert_used,
					 &li->n_expert_used);
		if (ret)
			return ret;
		if (!li->n_head_kv || !L->n_head || L->n_head % li->n_head_kv)
			return moe_err(EINVAL, "%s: layer %u: head counts %u/%u are invalid", m->path,
				       il, L->n_head, li->n_head_kv);
		li->is_moe = layer_is_moe(m, il);
		li->rope = !((a->attn & MOE_ATTN_NOPE_EVERY4) && (il + 1) % 4 == 0);
		li->head_dim = hp->head_dim_k;
		li->kv_layer = (int32_t)il;
		li->mla = a->attn & MOE_ATTN_MLA;
		if (li->mla)
			li->n_head_kv = 1;
		L->chunked = (a->attn & MOE_ATTN_CHUNKED) && li->rope;
		/* Llama 4 Maverick (128 experts) is the variant without the plain QK norm */
		L->qk_norm_plain = (a->attn & MOE_ATTN_QK_NORM_PLAIN) && li->rope &&
				   hp->n_expert != 128;
		L->attn_temp = (a->attn & MOE_ATTN_NOPE_EVERY4) && !li->rope;
		L->n_rot = hp->n_rot;
		L->rope_base = hp->rope_base;
		if (a->attn & MOE_ATTN_SWA_EVEN)
			li->sliding = hp->sliding_window && il % 2 == 0;
		if (pattern) {
			int64_t v = 0;

			if (il < pattern->count && !gguf_arr_i64(pattern, il, &v))
				return moe_err(EINVAL, "%s: sliding_window_pattern must hold bools or "
					       "integers", m->path);
			li->sliding = v != 0;
			if (li->sliding) {
				li->head_dim = hd_swa;
				L->n_rot = rot_swa;
				L->rope_base = base_swa;
			}
		}
		ret = check_tensors(m, (int)il, a->layer);
		ret = ret ? ret : check_tensors(m, (int)il, li->is_moe ? a->moe : a->dense);
		if (!ret && li->mla)
			ret = check_mla(m, il);
		if (!ret && (a->attn & MOE_ATTN_SWA_PATTERN))
			ret = check_gemma4_layer(m, il);
		if (ret)
			return ret;
		if (!li->is_moe || a->id == MOE_ARCH_GEMMA4) {
			const struct gguf_tensor *up = find_t(m, (int)il, "ffn_up.weight");

			li->n_ff = up ? (uint32_t)up->ne[1] : 0;
		}
		if (li->is_moe) {
			const struct gguf_tensor *sh = find_t(m, (int)il, "ffn_up_shexp.weight");

			ret = map_experts(m, il, L);
			if (ret)
				return ret;
			hp->n_moe_layer++;
			if (sh && !hp->n_ff_shexp)
				hp->n_ff_shexp = (uint32_t)sh->ne[1];
			if (sh && !hp->n_expert_shared)
				hp->n_expert_shared = 1;
		}
	}
	for (uint64_t i = 0; i < m->gguf->n_tensors; i++)
		if (m->tinfo[i].layer >= (int32_t)hp->n_layer)
			m->tinfo[i].role = MOE_ROLE_UNUSED;
	return hp->n_embd_per_layer ? check_ple(m) : 0;
}

static void tensor_layer(const char *name, int32_t *layer)
{
	unsigned n;
	int used = 0;

	*layer = -1;
	if (sscanf(name, "blk.%u.%n", &n, &used) == 1 && used > 0)
		*layer = (int32_t)n;
}

static void summarize(struct moe_model *m)
{
	struct moe_model_summary *s = &m->summary;
	uint64_t offs = 0;

	s->file_bytes = m->gguf->file_size;
	s->alignment = m->gguf->alignment;
	for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
		const struct moe_tensor_info *t = &m->tinfo[i];

		s->tensor_bytes += t->bytes;
		if (t->type < MOE_TYPE_COUNT) {
			s->type_bytes[t->type] += t->bytes;
			s->type_tensors[t->type]++;
		}
		if (t->role == MOE_ROLE_OTHER)
			s->resident_bytes += t->bytes;
		else if (t->role <= MOE_ROLE_EXPERT_GATE_UP)
			s->expert_bytes_total += t->bytes;
		else if (t->role == MOE_ROLE_UNUSED)
			s->unused_bytes += t->bytes;
		else
			s->streamed_rows_bytes += t->bytes;
	}
	for (uint32_t il = 0; m->arch && il < m->hp.n_layer; il++) {
		const struct moe_layer *L = &m->layers[il];
		uint64_t each = 0;

		if (!L->experts)
			continue;
		for (uint32_t e = 0; e < m->hp.n_expert; e++) {
			each = MOE_MAX(each, L->experts[e].bytes);
			for (uint32_t k = 0; k < L->experts[e].n_mats; k++)
				offs |= L->experts[e].mats[k].offset;
		}
		s->expert_bytes_each = MOE_MAX(s->expert_bytes_each, each);
		s->routed_bytes_per_token += (uint64_t)L->info.n_expert_used * each;
	}
	s->extent_alignment = offs ? (uint32_t)MOE_MIN(offs & -offs, (uint64_t)1 << 30) : 0;
}

int moe_model_open_flags(const char *path, uint32_t flags, struct moe_model **out)
{
	struct moe_model *m;
	const struct gguf_kv *arch;
	int ret;

	if (!path || !out)
		return moe_err(EINVAL, "moe_model_open: NULL argument");
	if (flags & ~MOE_OPEN_FLAGS_ALL)
		return moe_err(EINVAL, "moe_model_open: unknown flags 0x%x", flags & ~MOE_OPEN_FLAGS_ALL);
	*out = NULL;
	m = calloc(1, sizeof(*m));
	if (!m)
		return moe_err(ENOMEM, "out of memory");
	m->fd = -1;
	m->path = strdup(path);
	if (!m->path) {
		ret = moe_err(ENOMEM, "out of memory");
		goto err;
	}
	if (!strncmp(path, MOE_KMOD_PREFIX, strlen(MOE_KMOD_PREFIX))) {
		uint64_t fsize = 0;

		/* Registered with moe.ko: the header comes through the driver, not the file. */
		ret = moe_kmod_read_header(path + strlen(MOE_KMOD_PREFIX), &m->head, &m->head_len,
					   &fsize);
		ret = ret ? ret : gguf_parse_image(m->head, (size_t)m->head_len, fsize, path,
						   &m->gguf);
	} else {
		m->fd = moe_open_input(path, 0, "a model file");
		ret = m->fd < 0 ? m->fd : gguf_parse_fd(m->fd, path, &m->gguf);
	}
	if (ret)
		goto err;
	m->tinfo = calloc(MOE_MAX(m->gguf->n_tensors, 1), sizeof(*m->tinfo));
	if (!m->tinfo) {
		ret = moe_err(ENOMEM, "out of memory");
		goto err;
	}
	for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
		const struct gguf_tensor *t = &m->gguf->tensors[i];
		struct moe_tensor_info *ti = &m->tinfo[i];

		ti->name = t->name;
		ti->type = t->type;
		ti->n_dims = t->n_dims;
		memcpy(ti->ne, t->ne, sizeof(ti->ne));
		ti->offset = t->offset;
		ti->bytes = t->bytes;
		tensor_layer(t->name, &ti->layer);
	}

	arch = gguf_find_kv(m->gguf, "general.architecture");
	if (arch && arch->type == MOE_META_STRING)
		snprintf(m->hp.arch, sizeof(m->hp.arch), "%s", arch->v.str);
	if (flags & MOE_OPEN_METADATA_ONLY) {
		m->arch = moe_arch_find(m->hp.arch);
		summarize(m);
		*out = m;
		return 0;
	}
	if (!arch || arch->type != MOE_META_STRING) {
		ret = moe_err(EINVAL, "%s: general.architecture is missing or not a string", path);
		goto err;
	}
	m->arch = moe_arch_find(arch->v.str);
	if (!m->arch) {
		ret = moe_err(EOPNOTSUPP, "%s: architecture '%s' is not supported (supported: %s)",
			      path, arch->v.str, moe_arch_list());
		goto err;
	}
	ret = read_hparams(m);
	ret = ret ? ret : read_layers(m);
	if (ret)
		goto err;
	if (m->hp.n_expert && !m->hp.n_moe_layer) {
		ret = moe_err(EINVAL, "%s: %u experts declared but no layer has routed experts",
			      path, m->hp.n_expert);
		goto err;
	}
	summarize(m);
	*out = m;
	return 0;
err:
	moe_model_destroy(m);
	return ret;
}

int moe_model_open(const char *path, struct moe_model **out)
{
	return moe_model_open_flags(path, 0, out);
}

void moe_model_destroy(struct moe_model *m)
{
	if (!m)
		return;
	if (m->layers)
		for (uint32_t i = 0; i < m->hp.n_layer; i++)
			free(m->layers[i].experts);
	free(m->layers);
	free(m->tinfo);
	gguf_free(m->gguf);
	if (m->fd >= 0)
		close(m->fd);
	free(m->head);
	free(m->path);
	free(m);
}

const char *moe_model_path(const struct moe_model *m)
{
	return m ? m->path : NULL;
}

/* ------------------------------------------------------------ metadata */

static void kv_to_meta(const struct gguf_kv *kv, struct moe_meta *out)
{
	memset(out, 0, sizeof(*out));
	out->key = kv->key;
	out->type = kv->type;
	out->elem_type = kv->elem_type;
	out->count = kv->count;
	if (kv->type == MOE_META_ARRAY) {
		out->v.str = kv->data;
		out->reserved[0] = (uint64_t)(uintptr_t)kv;
	} else {
		out->v.u64 = kv->v.u64;
		if (kv->type == MOE_META_STRING)
			out->v.str = kv->v.str;
	}
}

int moe_meta_count(const struct moe_model *m)
{
	return m ? (int)MOE_MIN(m->gguf->n_kv, (uint64_t)INT32_MAX) : -EINVAL;
}

int moe_meta_at(const struct moe_model *m, int idx, struct moe_meta *out)
{
	if (!m || !out || idx < 0 || (uint64_t)idx >= m->gguf->n_kv)
		return moe_err(EINVAL, "moe_meta_at: index %d out of range", idx);
	kv_to_meta(&m->gguf->kv[idx], out);
	return 0;
}

int moe_meta_get(const struct moe_model *m, const char *key, struct moe_meta *out)
{
	const struct gguf_kv *kv;

	if (!m || !key || !out)
		return moe_err(EINVAL, "moe_meta_get: NULL argument");
	kv = gguf_find_kv(m->gguf, key);
	if (!kv)
		return -ENOENT;
	kv_to_meta(kv, out);
	return 0;
}

int moe_meta_get_u64(const struct moe_model *m, const char *key, uint64_t *out)
{
	struct moe_meta v = { 0 };
	int ret = moe_meta_get(m, key, &v);

	if (ret)
		return ret;
	if (v.type == MOE_META_STRING || v.type == MOE_META_ARRAY || v.type == MOE_META_F32 ||
	    v.type == MOE_META_F64 || (kv_signed(v.type) && v.v.i64 < 0))
		return moe_err(EINVAL, "metadata '%s' is not a non-negative integer", key);
	*out = v.v.u64;
	return 0;
}

int moe_meta_get_f64(const struct moe_model *m, const char *key, double *out)
{
	struct moe_meta v = { 0 };
	int ret = moe_meta_get(m, key, &v);

	if (ret)
		return ret;
	if (v.type == MOE_META_F32 || v.type == MOE_META_F64)
		*out = v.v.f64;
	else if (kv_signed(v.type))
		*out = (double)v.v.i64;
	else if (v.type != MOE_META_STRING && v.type != MOE_META_ARRAY)
		*out = (double)v.v.u64;
	else
		return moe_err(EINVAL, "metadata '%s' is not a number", key);
	return 0;
}

int moe_meta_get_str(const struct moe_model *m, const char *key, const char **out)
{
	struct moe_meta v = { 0 };
	int ret = moe_meta_get(m, key, &v);

	if (ret)
		return ret;
	if (v.type != MOE_META_STRING)
		return moe_err(EINVAL, "metadata '%s' is not a string", key);
	*out = v.v.str;
	return 0;
}

static const struct gguf_kv *meta_arr(const struct moe_meta *arr)
{
	if (!arr || arr->type != MOE_META_ARRAY)
		return NULL;
	return (const struct gguf_kv *)(uintptr_t)arr->reserved[0];
}

int moe_meta_array_i64(const struct moe_meta *arr, uint64_t i, int64_t *out)
{
	const struct gguf_kv *kv = meta_arr(arr);

	if (!kv || !out || !gguf_arr_i64(kv, i, out))
		return moe_err(EINVAL, "metadata array element %llu is not an integer in range",
			       (unsigned long long)i);
	return 0;
}

int moe_meta_array_f64(const struct moe_meta *arr, uint64_t i, double *out)
{
	const struct gguf_kv *kv = meta_arr(arr);

	if (!kv || !out || !gguf_arr_f64(kv, i, out))
		return moe_err(EINVAL, "metadata array element %llu is not a number in range",
			       (unsigned long long)i);
	return 0;
}

int moe_meta_array_str(const struct moe_meta *arr, uint64_t i, const char **s, uint64_t *len)
{
	const struct gguf_kv *kv = meta_arr(arr);
	const struct gguf_str *strs;

	if (!kv || kv->elem_type != MOE_META_STRING || i >= kv->count || !s)
		return moe_err(EINVAL, "metadata array element %llu is not a string in range",
			       (unsigned long long)i);
	strs = kv->data;
	*s = strs[i].s;
	if (len)
		*len = strs[i].len;
	return 0;
}

/* ------------------------------------------------------------ tensors */

int moe_model_tensor_count(const struct moe_model *m)
{
	return m ? (int)m->gguf->n_tensors : -EINVAL;
}

int moe_model_tensor(const struct moe_model *m, int idx, struct moe_tensor_info *out)
{
	if (!m || !out || idx < 0 || (uint64_t)idx >= m->gguf->n_tensors)
		return moe_err(EINVAL, "moe_model_tensor: index %d out of range", idx);
	*out = m->tinfo[idx];
	return 0;
}

int moe_model_find_tensor(const struct moe_model *m, const char *name,
			  struct moe_tensor_info *out)
{
	int64_t i;

	if (!m || !name)
		return moe_err(EINVAL, "moe_model_find_tensor: NULL argument");
	i = gguf_find_tensor(m->gguf, name);
	if (i < 0)
		return -ENOENT;
	if (out)
		*out = m->tinfo[i];
	return (int)i;
}

int moe_model_hparams(const struct moe_model *m, struct moe_hparams *out)
{
	if (!m || !out)
		return moe_err(EINVAL, "moe_model_hparams: NULL argument");
	*out = m->hp;
	return 0;
}

int moe_model_layer(const struct moe_model *m, uint32_t layer, struct moe_layer_info *out)
{
	if (!m || !out || !m->layers || layer >= m->hp.n_layer)
		return moe_err(EINVAL, "moe_model_layer: layer %u out of range", layer);
	*out = m->layers[layer].info;
	return 0;
}

int moe_model_expert(const struct moe_model *m, uint32_t layer, uint32_t expert,
		     struct moe_expert *out)
{
	if (!m || !out || !m->layers || layer >= m->hp.n_layer)
		return moe_err(EINVAL, "moe_model_expert: layer %u out of range", layer);
	if (!m->layers[layer].experts)
		return moe_err(EINVAL, "moe_model_expert: layer %u has no routed experts", layer);
	if (expert >= m->hp.n_expert)
		return moe_err(EINVAL, "moe_model_expert: expert %u out of range (%u experts)",
			       expert, m->hp.n_expert);
	*out = m->layers[layer].experts[expert];
	return 0;
}

int moe_model_summary(const struct moe_model *m, struct moe_model_summary *out)
{
	if (!m || !out)
		return moe_err(EINVAL, "moe_model_summary: NULL argument");
	*out = m->summary;
	return 0;
}
