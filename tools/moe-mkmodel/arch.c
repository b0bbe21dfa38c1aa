/* SPDX-License-Identifier: MIT */
/*
 * What a file of each architecture carries, laid out as llama.cpp's
 * converters write it: the tensors of every block and the metadata keys.
 * The facts the engine also needs (attention style, norms, tensor lists)
 * come from libmoe's architecture table; this file decides only how a
 * random model of that architecture is shaped.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkmodel.h"

bool mk_is_moe_layer(const struct opts *o, uint32_t l)
{
	if (!o->experts || l >= o->layers)
		return false;
	if (is_arch(o, MOE_ARCH_LLAMA4))
		return (l + 1) % o->interleave == 0;
	return l >= o->leading_dense;
}

/* gemma4: every swa_pattern-th layer is full attention, and so is the last one. */
bool mk_is_swa_layer(const struct opts *o, uint32_t l)
{
	if (is_arch(o, MOE_ARCH_GPTOSS))
		return l % 2 == 0;
	if (!is_arch(o, MOE_ARCH_GEMMA4))
		return false;
	return (l + 1) % o->swa_pattern != 0 && l != o->layers - 1;
}

static uint32_t layer_head_dim(const struct opts *o, uint32_t l)
{
	return is_arch(o, MOE_ARCH_GEMMA4) && mk_is_swa_layer(o, l) ? o->head_dim_swa : o->head_dim;
}

/* gemma4 E2B/E4B: the last kv_shared layers read an earlier layer's cache */
static bool has_kv(const struct opts *o, uint32_t l)
{
	return !o->kv_shared || l + o->kv_shared < o->layers;
}

/*
 * deepseek2's attention in the absorbed MLA layout of current converters:
 * q through a low-rank pair (or attn_q with --q-lora 0), the latent and the
 * shared rotated key from attn_kv_a_mqa, per-head attn_k_b / attn_v_b.
 */
static int add_mla(struct model *m, uint32_t l)
{
	const struct opts *o = m->o;
	uint64_t n = o->embd, H = o->heads, hk = o->head_dim, r = o->kv_lora;
	uint64_t nope = hk - o->rope_dim, hv = o->v_head_dim;
	int ret = 0;

	if (o->q_lora) {
		ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(n), NULL, 2, n, o->q_lora, 1,
				    "blk.%u.attn_q_a.weight", l);
		ret = ret ?: ONES(m, o->q_lora, "blk.%u.attn_q_a_norm.weight", l);
		ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(o->q_lora), NULL, 2, o->q_lora,
				    H * hk, 1, "blk.%u.attn_q_b.weight", l);
	} else {
		ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(n), NULL, 2, n, H * hk, 1,
				    "blk.%u.attn_q.weight", l);
	}
	ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(n), NULL, 2, n, r + o->rope_dim, 1,
			    "blk.%u.attn_kv_a_mqa.weight", l);
	ret = ret ?: ONES(m, r, "blk.%u.attn_kv_a_norm.weight", l);
	ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(nope), NULL, 3, nope, r, H,
			    "blk.%u.attn_k_b.weight", l);
	ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(r), NULL, 3, r, hv, H,
			    "blk.%u.attn_v_b.weight", l);
	ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_out(m, H * hv), NULL, 2, H * hv, n, 1,
			    "blk.%u.attn_output.weight", l);
	return ret;
}

static int add_attention(struct model *m, uint32_t l)
{
	const struct opts *o = m->o;
	uint32_t hd = layer_head_dim(o, l), attn = o->a->attn;
	uint64_t n = o->embd, q = (uint64_t)o->heads * hd, kv = (uint64_t)o->kv_heads * hd;
	bool gemma4 = is_arch(o, MOE_ARCH_GEMMA4), kv_here = has_kv(o, l);
	int ret = 0;

	ret = ret ?: ONES(m, n, "blk.%u.attn_norm.weight", l);
	if (attn & MOE_ATTN_MLA)
		return ret ?: add_mla(m, l);
	ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(n), NULL, 2, n, q, 1,
			    "blk.%u.attn_q.weight", l);
	if (kv_here)
		ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(n), NULL, 2, n, kv, 1,
				    "blk.%u.attn_k.weight", l);
	/* gemma4's full-attention layers use K as V, as the real checkpoints do */
	if (kv_here && !(gemma4 && !mk_is_swa_layer(o, l)))
		ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(n), NULL, 2, n, kv, 1,
				    "blk.%u.attn_v.weight", l);
	ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_out(m, q), NULL, 2, q, n, 1,
			    "blk.%u.attn_output.weight", l);
	if (attn & MOE_ATTN_QK_NORM) {
		ret = ret ?: ONES(m, hd, "blk.%u.attn_q_norm.weight", l);
		if (kv_here)
			ret = ret ?: ONES(m, hd, "blk.%u.attn_k_norm.weight", l);
	}
	if (attn & MOE_ATTN_BIAS) {
		ret = ret ?: BIAS(m, 1, q, 1, "blk.%u.attn_q.bias", l);
		ret = ret ?: BIAS(m, 1, kv, 1, "blk.%u.attn_k.bias", l);
		ret = ret ?: BIAS(m, 1, kv, 1, "blk.%u.attn_v.bias", l);
		/* GLM-4.5 has no output bias */
		if (is_arch(o, MOE_ARCH_GPTOSS))
			ret = ret ?: BIAS(m, 1, n, 1, "blk.%u.attn_output.bias", l);
	}
	if (attn & MOE_ATTN_SINKS)
		ret = ret ?: mk_add(m, TC_F32, GEN_NORMAL, 0.1f, NULL, 1, o->heads, 1, 1,
				    "blk.%u.attn_sinks.weight", l);
	/* gemma4 norms the attention output; gpt-oss and GLM name their pre-FFN norm so */
	if (gemma4 || is_arch(o, MOE_ARCH_GPTOSS) || is_arch(o, MOE_ARCH_GLM4MOE))
		ret = ret ?: mk_add(m, TC_F32, GEN_CONST, gemma4 ? mk_w_out(m, 1) : 1.0f, NULL, 1,
				    n, 1, 1, "blk.%u.post_attention_norm.weight", l);
	return ret;
}

static int add_dense_ffn(struct model *m, uint32_t l, uint64_t ff, const char *suffix)
{
	uint64_t n = m->o->embd;
	int ret = 0;

	ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(n), NULL, 2, n, ff, 1,
			    "blk.%u.ffn_gate%s.weight", l, suffix);
	ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(n), NULL, 2, n, ff, 1,
			    "blk.%u.ffn_up%s.weight", l, suffix);
	ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_out(m, ff), NULL, 2, ff, n, 1,
			    "blk.%u.ffn_down%s.weight", l, suffix);
	return ret;
}

static int add_experts(struct model *m, uint32_t l)
{
	const struct opts *o = m->o;
	uint64_t n = o->embd, f = o->expert_ff, e = o->experts;
	bool gemma4 = is_arch(o, MOE_ARCH_GEMMA4);
	/* gemma4's router reads RMSNorm(h) / sqrt(n_embd); undo that factor in the weights */
	float rscale = gemma4 ? sqrtf((float)n) : 1.0f;
	const float *router = l < o->layers ? m->routers[l] : NULL;
	int ret = 0;

	/* a NextN block's router is not one the trunk's routers correlate with */
	if (router)
		ret = mk_add(m, TC_F32, GEN_TABLE, rscale, router, 2, n, e, 1,
			     "blk.%u.ffn_gate_inp.weight", l);
	else
		ret = mk_add(m, TC_F32, GEN_NORMAL, mk_w_in(n), NULL, 2, n, e, 1,
			     "blk.%u.ffn_gate_inp.weight", l);
	if (is_arch(o, MOE_ARCH_GPTOSS))
		ret = ret ?: BIAS(m, 1, e, 1, "blk.%u.ffn_gate_inp.bias", l);
	/* the selection bias of sigmoid routing: large enough to change choices */
	if (is_arch(o, MOE_ARCH_DEEPSEEK2) || is_arch(o, MOE_ARCH_GLM4MOE))
		ret = ret ?: mk_add(m, TC_F32, GEN_NORMAL, 0.05f, NULL, 1, e, 1, 1,
				    "blk.%u.exp_probs_b.bias", l);
	if (gemma4) {
		ret = ret ?: ONES(m, n, "blk.%u.ffn_gate_inp.scale", l);
		ret = ret ?: mk_add(m, TC_EXPERT, GEN_NORMAL, mk_w_in(n), NULL, 3, n, 2 * f, e,
				    "blk.%u.ffn_gate_up_exps.weight", l);
	} else {
		ret = ret ?: mk_add(m, TC_EXPERT, GEN_NORMAL, mk_w_in(n), NULL, 3, n, f, e,
				    "blk.%u.ffn_gate_exps.weight", l);
		ret = ret ?: mk_add(m, TC_EXPERT, GEN_NORMAL, mk_w_in(n), NULL, 3, n, f, e,
				    "blk.%u.ffn_up_exps.weight", l);
	}
	ret = ret ?: mk_add(m, TC_EXPERT, GEN_NORMAL, mk_w_out(m, f), NULL, 3, f, n, e,
			    "blk.%u.ffn_down_exps.weight", l);
	if (is_arch(o, MOE_ARCH_GPTOSS)) {
		ret = ret ?: BIAS(m, 2, f, e, "blk.%u.ffn_gate_exps.bias", l);
		ret = ret ?: BIAS(m, 2, f, e, "blk.%u.ffn_up_exps.bias", l);
		ret = ret ?: BIAS(m, 2, n, e, "blk.%u.ffn_down_exps.bias", l);
	}
	if (gemma4)
		ret = ret ?: ONES(m, e, "blk.%u.ffn_down_exps.scale", l);
	if (o->shared_ff && !gemma4)
		ret = ret ?: add_dense_ffn(m, l, o->shared_ff, "_shexp");
	return ret;
}

static int add_gemma4_ffn(struct model *m, uint32_t l)
{
	const struct opts *o = m->o;
	uint64_t n = o->embd;
	int ret = ONES(m, n, "blk.%u.ffn_norm.weight", l);

	ret = ret ?: add_dense_ffn(m, l, o->ff, "");
	ret = ret ?: mk_add(m, TC_F32, GEN_CONST, mk_w_out(m, 1), NULL, 1, n, 1, 1,
			    "blk.%u.post_ffw_norm.weight", l);
	if (mk_is_moe_layer(o, l)) {
		ret = ret ?: ONES(m, n, "blk.%u.pre_ffw_norm_2.weight", l);
		ret = ret ?: ONES(m, n, "blk.%u.post_ffw_norm_1.weight", l);
		ret = ret ?: ONES(m, n, "blk.%u.post_ffw_norm_2.weight", l);
		ret = ret ?: add_experts(m, l);
	}
	if (o->ple) {
		ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(n), NULL, 2, n, o->ple, 1,
				    "blk.%u.inp_gate.weight", l);
		ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(o->ple), NULL, 2, o->ple, n, 1,
				    "blk.%u.proj.weight", l);
		ret = ret ?: mk_add(m, TC_F32, GEN_CONST, mk_w_out(m, 1), NULL, 1, n, 1, 1,
				    "blk.%u.post_norm.weight", l);
	}
	return ret ?: ONES(m, 1, "blk.%u.layer_output_scale.weight", l);
}

/* GLM-4.5's NextN/MTP block after the trunk: its own projections, then a full block. */
static int add_nextn(struct model *m, uint32_t l)
{
	uint64_t n = m->o->embd;
	int ret = 0;

	ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(2 * n), NULL, 2, 2 * n, n, 1,
			    "blk.%u.nextn.eh_proj.weight", l);
	ret = ret ?: ONES(m, n, "blk.%u.nextn.enorm.weight", l);
	ret = ret ?: ONES(m, n, "blk.%u.nextn.hnorm.weight", l);
	ret = ret ?: ONES(m, n, "blk.%u.nextn.shared_head_norm.weight", l);
	return ret;
}

static int add_layer(struct model *m, uint32_t l)
{
	const struct opts *o = m->o;
	uint64_t n = o->embd;
	bool moe = mk_is_moe_layer(o, l) || l >= o->layers;
	int ret = add_attention(m, l);

	switch (o->a->id) {
	case MOE_ARCH_GPTOSS:
		ret = ret ?: add_experts(m, l);
		break;
	case MOE_ARCH_GEMMA4:
		ret = ret ?: add_gemma4_ffn(m, l);
		break;
	default:
		/* GLM-4.5 norms the FFN input with post_attention_norm, written above */
		if (!is_arch(o, MOE_ARCH_GLM4MOE))
			ret = ret ?: ONES(m, n, "blk.%u.ffn_norm.weight", l);
		ret = ret ?: (moe ? add_experts(m, l) : add_dense_ffn(m, l, o->ff, ""));
		break;
	}
	if (l >= o->layers)
		ret = ret ?: add_nextn(m, l);
	return ret;
}

int mk_add_tensors(struct model *m)
{
	const struct opts *o = m->o;
	uint64_t n = o->embd;
	/* token rows feed RMSNorm, except where they are scaled by sqrt(n) or are the output */
	float escale = is_arch(o, MOE_ARCH_GEMMA4) || o->tied ? mk_w_in(n) : 1.0f;
	int ret = mk_add(m, TC_OTHER, GEN_EMBD, escale, NULL, 2, n, o->vocab, 1,
			 "token_embd.weight");

	if (m->rope_freqs)
		ret = ret ?: mk_add(m, TC_F32, GEN_TABLE, 1.0f, m->rope_freqs, 1, o->head_dim / 2, 1,
				    1, "rope_freqs.weight");
	if (o->ple) {
		uint64_t all = (uint64_t)o->ple * o->layers;

		ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, 1.0f, NULL, 2, all, o->vocab, 1,
				    "per_layer_token_embd.weight");
		ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(n), NULL, 2, n, all, 1,
				    "per_layer_model_proj.weight");
		ret = ret ?: ONES(m, o->ple, "per_layer_proj_norm.weight");
	}
	for (uint32_t l = 0; !ret && l < o->layers + o->nextn; l++)
		ret = add_layer(m, l);
	ret = ret ?: ONES(m, n, "output_norm.weight");
	if (!o->tied)
		ret = ret ?: mk_add(m, TC_OTHER, GEN_NORMAL, mk_w_in(n), NULL, 2, n, o->vocab, 1,
				    "output.weight");
	return ret;
}

/* -------------------------------------------------------------- metadata */

/*
 * general.file_type (llama_ftype) of a file whose experts have a type, plus
 * one so that 0 means "no llama_ftype names this mix": a K-quant is named
 * after its _M variant, mxfp4 after MXFP4_MOE.
 */
static const uint8_t file_type_plus1[MOE_TYPE_COUNT] = {
	[MOE_TYPE_F32] = 0 + 1,    [MOE_TYPE_F16] = 1 + 1,   [MOE_TYPE_Q4_0] = 2 + 1,
	[MOE_TYPE_Q4_1] = 3 + 1,   [MOE_TYPE_Q8_0] = 7 + 1,  [MOE_TYPE_Q5_0] = 8 + 1,
	[MOE_TYPE_Q5_1] = 9 + 1,   [MOE_TYPE_Q2_K] = 10 + 1, [MOE_TYPE_Q3_K] = 12 + 1,
	[MOE_TYPE_Q4_K] = 15 + 1,  [MOE_TYPE_Q5_K] = 17 + 1, [MOE_TYPE_Q6_K] = 18 + 1,
	[MOE_TYPE_BF16] = 32 + 1,  [MOE_TYPE_MXFP4] = 38 + 1,
};

static int add_gemma4_keys(struct moe_gguf_writer *w, const struct opts *o)
{
	const char *a = o->a->name;
	char key[128];
	uint8_t *pattern = malloc(o->layers);
	int ret = 0;

	if (!pattern)
		return -ENOMEM;
#define KEY(suffix) (snprintf(key, sizeof(key), "%s." suffix, a), key)
	for (uint32_t l = 0; l < o->layers; l++)
		pattern[l] = mk_is_swa_layer(o, l);
	ret = ret ?: moe_gguf_set_arr(w, KEY("attention.sliding_window_pattern"), MOE_META_BOOL,
				      pattern, o->layers);
	free(pattern);
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.key_length_swa"), o->head_dim_swa);
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.value_length_swa"), o->head_dim_swa);
	ret = ret ?: moe_gguf_set_u32(w, KEY("rope.dimension_count_swa"), o->head_dim_swa);
	ret = ret ?: moe_gguf_set_f32(w, KEY("rope.freq_base_swa"), o->rope_base_swa);
	ret = ret ?: moe_gguf_set_u32(w, KEY("embedding_length_per_layer_input"), o->ple);
	if (o->kv_shared)
		ret = ret ?: moe_gguf_set_u32(w, KEY("attention.shared_kv_layers"), o->kv_shared);
	ret = ret ?: moe_gguf_set_f32(w, KEY("final_logit_softcapping"), 30.0f);
#undef KEY
	return ret;
}

/* deepseek2 and GLM-4.5: sigmoid routing with a selection bias, groups, leading dense layers */
static int add_sigmoid_moe_keys(struct moe_gguf_writer *w, const struct opts *o)
{
	const char *a = o->a->name;
	char key[128];
	int ret = 0;

#define KEY(suffix) (snprintf(key, sizeof(key), "%s." suffix, a), key)
	ret = ret ?: moe_gguf_set_u32(w, KEY("leading_dense_block_count"), o->leading_dense);
	ret = ret ?: moe_gguf_set_u32(w, KEY("expert_shared_count"), o->shared_ff ? 1 : 0);
	ret = ret ?: moe_gguf_set_u32(w, KEY("expert_group_count"), o->groups);
	ret = ret ?: moe_gguf_set_u32(w, KEY("expert_group_used_count"), o->groups_used);
	ret = ret ?: moe_gguf_set_u32(w, KEY("expert_gating_func"), MOE_GATING_SIGMOID);
	ret = ret ?: moe_gguf_set_f32(w, KEY("expert_weights_scale"), 2.5f);
	ret = ret ?: moe_gguf_set_bool(w, KEY("expert_weights_norm"), true);
	if (o->nextn)
		ret = ret ?: moe_gguf_set_u32(w, KEY("nextn_predict_layers"), o->nextn);
	if (!is_arch(o, MOE_ARCH_DEEPSEEK2))
		return ret;
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.kv_lora_rank"), o->kv_lora);
	if (o->q_lora)
		ret = ret ?: moe_gguf_set_u32(w, KEY("attention.q_lora_rank"), o->q_lora);
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.key_length_mla"), o->head_dim);
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.value_length_mla"), o->v_head_dim);
	if (o->yarn_factor > 0) {
		ret = ret ?: moe_gguf_set_str(w, KEY("rope.scaling.type"), "yarn");
		ret = ret ?: moe_gguf_set_f32(w, KEY("rope.scaling.factor"), o->yarn_factor);
		ret = ret ?: moe_gguf_set_u32(w, KEY("rope.scaling.original_context_length"),
					      MAX(1, (uint32_t)(o->ctx / o->yarn_factor)));
		/* 0.1 * mscale_all_dim, as converters store it (real V3/R1/K2: mscale_all_dim 1) */
		ret = ret ?: moe_gguf_set_f32(w, KEY("rope.scaling.yarn_log_multiplier"), 0.1f);
	}
#undef KEY
	return ret;
}

int mk_add_metadata(struct moe_gguf_writer *w, const struct opts *o)
{
	const char *a = o->a->name;
	bool mla = o->a->attn & MOE_ATTN_MLA;
	uint32_t n_rot = o->head_dim, kv_heads = o->kv_heads;
	uint32_t key_len = o->head_dim, val_len = o->head_dim;
	char name[96], key[128];
	int ret = 0;

#define KEY(suffix) (snprintf(key, sizeof(key), "%s." suffix, a), key)
	if (mla) {
		/* the MQA view of the latent cache: one KV head of latent + rotated key */
		n_rot = o->rope_dim;
		kv_heads = 1;
		key_len = o->kv_lora + o->rope_dim;
		val_len = o->kv_lora;
	} else if (is_arch(o, MOE_ARCH_GLM4MOE)) {
		n_rot = (uint32_t)(o->partial_rotary * o->head_dim) / 2 * 2;
	}
	snprintf(name, sizeof(name), PROG " %s seed %" PRIu64, o->a->gen.name, o->seed);
	ret = ret ?: moe_gguf_set_str(w, "general.architecture", a);
	ret = ret ?: moe_gguf_set_str(w, "general.name", name);
	if (file_type_plus1[o->type])
		ret = ret ?: moe_gguf_set_u32(w, "general.file_type", file_type_plus1[o->type] - 1u);
	if (moe_type_block_elems(o->type) > 1 || moe_type_block_elems(o->type_other) > 1)
		ret = ret ?: moe_gguf_set_u32(w, "general.quantization_version", 2);
	ret = ret ?: moe_gguf_set_u32(w, KEY("block_count"), o->layers + o->nextn);
	ret = ret ?: moe_gguf_set_u32(w, KEY("context_length"), o->ctx);
	ret = ret ?: moe_gguf_set_u32(w, KEY("embedding_length"), o->embd);
	ret = ret ?: moe_gguf_set_u32(w, KEY("vocab_size"), o->vocab);
	/* Mixtral and gpt-oss files give the expert width here; the others a dense width */
	ret = ret ?: moe_gguf_set_u32(w, KEY("feed_forward_length"),
				      is_arch(o, MOE_ARCH_LLAMA) || is_arch(o, MOE_ARCH_GPTOSS) ?
				      o->expert_ff : o->ff);
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.head_count"), o->heads);
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.head_count_kv"), kv_heads);
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.key_length"), key_len);
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.value_length"), val_len);
	ret = ret ?: moe_gguf_set_f32(w, KEY("attention.layer_norm_rms_epsilon"),
				      o->a->gen.rms_eps);
	ret = ret ?: moe_gguf_set_f32(w, KEY("rope.freq_base"), o->rope_base);
	ret = ret ?: moe_gguf_set_u32(w, KEY("rope.dimension_count"), n_rot);
	if (o->experts) {
		ret = ret ?: moe_gguf_set_u32(w, KEY("expert_count"), o->experts);
		ret = ret ?: moe_gguf_set_u32(w, KEY("expert_used_count"), o->experts_used);
		if (!is_arch(o, MOE_ARCH_LLAMA))
			ret = ret ?: moe_gguf_set_u32(w, KEY("expert_feed_forward_length"),
						      o->expert_ff);
	}
	if (is_arch(o, MOE_ARCH_LLAMA4))
		ret = ret ?: moe_gguf_set_u32(w, KEY("interleave_moe_layer_step"), o->interleave);
	if (is_arch(o, MOE_ARCH_GPTOSS) || is_arch(o, MOE_ARCH_GEMMA4))
		ret = ret ?: moe_gguf_set_u32(w, KEY("attention.sliding_window"), o->sliding_window);
	if (is_arch(o, MOE_ARCH_GPTOSS) && o->yarn_factor > 0) {
		ret = ret ?: moe_gguf_set_str(w, KEY("rope.scaling.type"), "yarn");
		ret = ret ?: moe_gguf_set_f32(w, KEY("rope.scaling.factor"), o->yarn_factor);
		ret = ret ?: moe_gguf_set_u32(w, KEY("rope.scaling.original_context_length"),
					      MAX(1, (uint32_t)(o->ctx / o->yarn_factor)));
	}
#undef KEY
	if (is_arch(o, MOE_ARCH_GEMMA4))
		ret = ret ?: add_gemma4_keys(w, o);
	if (is_arch(o, MOE_ARCH_DEEPSEEK2) || is_arch(o, MOE_ARCH_GLM4MOE))
		ret = ret ?: add_sigmoid_moe_keys(w, o);
	return ret ?: mk_add_tokenizer(w, o);
}
