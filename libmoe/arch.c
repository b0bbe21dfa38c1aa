/* SPDX-License-Identifier: MIT */
#include <string.h>

#include "arch.h"
#include "moe/moe.h"
#include "util/util.h"

#define REQ(n) { n, ARCH_REQ }
#define OPT(n) { n, ARCH_OPT }

static const struct arch_tensor globals_std[] = {
	REQ("token_embd.weight"), REQ("output_norm.weight"), OPT("output.weight"),
	OPT("rope_freqs.weight"), { 0 },
};

static const struct arch_tensor attn_std[] = {
	REQ("attn_norm.weight"), REQ("attn_q.weight"), REQ("attn_k.weight"),
	REQ("attn_v.weight"), REQ("attn_output.weight"), REQ("ffn_norm.weight"), { 0 },
};

static const struct arch_tensor attn_qwen3[] = {
	REQ("attn_norm.weight"), REQ("attn_q.weight"), REQ("attn_k.weight"),
	REQ("attn_v.weight"), REQ("attn_output.weight"), REQ("attn_q_norm.weight"),
	REQ("attn_k_norm.weight"), REQ("ffn_norm.weight"), { 0 },
};

static const struct arch_tensor attn_gptoss[] = {
	REQ("attn_norm.weight"), REQ("attn_q.weight"), REQ("attn_k.weight"),
	REQ("attn_v.weight"), REQ("attn_output.weight"), REQ("attn_q.bias"),
	REQ("attn_k.bias"), REQ("attn_v.bias"), REQ("attn_output.bias"),
	REQ("attn_sinks.weight"), REQ("post_attention_norm.weight"), { 0 },
};

/* attn_k/attn_k_norm: not on layers that share an earlier KV cache (model.c checks) */
static const struct arch_tensor attn_gemma4[] = {
	REQ("attn_norm.weight"), REQ("attn_q.weight"), OPT("attn_k.weight"),
	OPT("attn_v.weight"), REQ("attn_output.weight"), REQ("attn_q_norm.weight"),
	OPT("attn_k_norm.weight"), REQ("post_attention_norm.weight"),
	OPT("layer_output_scale.weight"),
	/* per-layer embeddings (E2B/E4B), required when the file has them */
	OPT("inp_gate.weight"), OPT("proj.weight"), OPT("post_norm.weight"),
	/* gemma4 runs its dense MLP on every layer, MoE or not */
	REQ("ffn_norm.weight"), REQ("ffn_gate.weight"), REQ("ffn_up.weight"),
	REQ("ffn_down.weight"), REQ("post_ffw_norm.weight"), { 0 },
};

/*
 * MLA: q through a low-rank pair (attn_q_a/attn_q_b) or, in the lite
 * models, attn_q; the absorbed layout of current converters (attn_k_b,
 * attn_v_b), which model.c checks for by name.
 */
static const struct arch_tensor attn_mla[] = {
	REQ("attn_norm.weight"), OPT("attn_q_a.weight"), OPT("attn_q_a_norm.weight"),
	OPT("attn_q_b.weight"), OPT("attn_q.weight"), REQ("attn_kv_a_mqa.weight"),
	REQ("attn_kv_a_norm.weight"), OPT("attn_k_b.weight"), OPT("attn_v_b.weight"),
	REQ("attn_output.weight"), REQ("ffn_norm.weight"), { 0 },
};

/* GLM-4.5: q/k/v biases, per-head q/k norms, post_attention_norm is the pre-FFN norm */
static const struct arch_tensor attn_glm4moe[] = {
	REQ("attn_norm.weight"), REQ("attn_q.weight"), REQ("attn_k.weight"),
	REQ("attn_v.weight"), REQ("attn_output.weight"), REQ("attn_q.bias"),
	REQ("attn_k.bias"), REQ("attn_v.bias"), REQ("attn_q_norm.weight"),
	REQ("attn_k_norm.weight"), REQ("post_attention_norm.weight"), { 0 },
};

static const struct arch_tensor dense_std[] = {
	REQ("ffn_gate.weight"), REQ("ffn_up.weight"), REQ("ffn_down.weight"), { 0 },
};

static const struct arch_tensor none[] = { { 0 } };

static const struct arch_tensor moe_std[] = {
	REQ("ffn_gate_inp.weight"), REQ("ffn_gate_exps.weight"), REQ("ffn_up_exps.weight"),
	REQ("ffn_down_exps.weight"), OPT("ffn_gate_shexp.weight"), OPT("ffn_up_shexp.weight"),
	OPT("ffn_down_shexp.weight"), OPT("ffn_gate_inp_shexp.weight"), OPT("exp_probs_b.bias"),
	{ 0 },
};

static const struct arch_tensor moe_llama4[] = {
	REQ("ffn_gate_inp.weight"), REQ("ffn_gate_exps.weight"), REQ("ffn_up_exps.weight"),
	REQ("ffn_down_exps.weight"), REQ("ffn_gate_shexp.weight"), REQ("ffn_up_shexp.weight"),
	REQ("ffn_down_shexp.weight"), { 0 },
};

static const struct arch_tensor moe_gptoss[] = {
	REQ("ffn_gate_inp.weight"), REQ("ffn_gate_inp.bias"), REQ("ffn_gate_exps.weight"),
	REQ("ffn_up_exps.weight"), REQ("ffn_down_exps.weight"), REQ("ffn_gate_exps.bias"),
	REQ("ffn_up_exps.bias"), REQ("ffn_down_exps.bias"), { 0 },
};

/* gate/up may be fused (ffn_gate_up_exps); model.c checks that one form is present */
static const struct arch_tensor moe_gemma4[] = {
	REQ("ffn_gate_inp.weight"), REQ("ffn_gate_inp.scale"), REQ("pre_ffw_norm_2.weight"),
	REQ("post_ffw_norm_1.weight"), REQ("post_ffw_norm_2.weight"),
	OPT("ffn_gate_up_exps.weight"), OPT("ffn_gate_exps.weight"), OPT("ffn_up_exps.weight"),
	REQ("ffn_down_exps.weight"), OPT("ffn_down_exps.scale"), { 0 },
};

static const char *const keys_std[] = {
	"block_count", "embedding_length", "attention.head_count", "context_length", NULL,
};

static const char *const keys_moe[] = {
	"block_count", "embedding_length", "attention.head_count", "context_length",
	"expert_count", "expert_used_count", NULL,
};

static const char *const keys_deepseek2[] = {
	"block_count", "embedding_length", "attention.head_count", "context_length",
	"attention.kv_lora_rank", "rope.dimension_count", NULL,
};

static const char *const keys_gemma4[] = {
	"block_count", "embedding_length", "context_length", "attention.sliding_window",
	"attention.sliding_window_pattern", "attention.layer_norm_rms_epsilon",
	"attention.key_length_swa", "attention.value_length_swa", NULL,
};

static const struct moe_arch arches[MOE_ARCH_COUNT] = {
	[MOE_ARCH_LLAMA] = {
		.name = "llama", .id = MOE_ARCH_LLAMA, .moe_layers = MOE_LAYERS_ALL,
		.rope = MOE_ROPE_NORMAL, .act = MOE_ACT_SILU, .gating = MOE_GATING_SOFTMAX,
		.weights_norm = true, .ffn_exp_from_ff = true,
		.globals = globals_std, .layer = attn_std, .dense = dense_std, .moe = moe_std,
		.required_keys = keys_std,
		.gen = { "mixtral", 2, 1e6f, 1e-5f, false },
	},
	[MOE_ARCH_QWEN3MOE] = {
		.name = "qwen3moe", .id = MOE_ARCH_QWEN3MOE, .moe_layers = MOE_LAYERS_ALL,
		.rope = MOE_ROPE_NEOX, .act = MOE_ACT_SILU, .gating = MOE_GATING_SOFTMAX,
		.weights_norm = true, .attn = MOE_ATTN_QK_NORM,
		.globals = globals_std, .layer = attn_qwen3, .dense = dense_std, .moe = moe_std,
		.required_keys = keys_moe,
		.gen = { "qwen3moe", 2, 1e6f, 1e-6f, false },
	},
	[MOE_ARCH_LLAMA4] = {
		.name = "llama4", .id = MOE_ARCH_LLAMA4, .moe_layers = MOE_LAYERS_INTERLEAVE,
		.rope = MOE_ROPE_NORMAL, .act = MOE_ACT_SILU, .gating = MOE_GATING_SIGMOID,
		.attn = MOE_ATTN_QK_NORM_PLAIN | MOE_ATTN_CHUNKED | MOE_ATTN_NOPE_EVERY4,
		.ffn = MOE_FFN_LLAMA4,
		.globals = globals_std, .layer = attn_std, .dense = dense_std, .moe = moe_llama4,
		.required_keys = keys_moe,
		.gen = { "llama4", 1, 5e5f, 1e-5f, false },
	},
	[MOE_ARCH_GPTOSS] = {
		.name = "gpt-oss", .id = MOE_ARCH_GPTOSS, .moe_layers = MOE_LAYERS_ALL,
		.rope = MOE_ROPE_NEOX, .act = MOE_ACT_SWIGLU_OAI,
		.gating = MOE_GATING_SOFTMAX_SELECTED,
		.attn = MOE_ATTN_BIAS | MOE_ATTN_SINKS | MOE_ATTN_SWA_EVEN,
		.globals = globals_std, .layer = attn_gptoss, .dense = none, .moe = moe_gptoss,
		.required_keys = keys_moe,
		.gen = { "gpt-oss", 2, 150000.0f, 1e-5f, false },
	},
	[MOE_ARCH_GEMMA4] = {
		.name = "gemma4", .id = MOE_ARCH_GEMMA4, .moe_layers = MOE_LAYERS_BY_TENSOR,
		.rope = MOE_ROPE_NEOX, .act = MOE_ACT_GELU, .gating = MOE_GATING_SOFTMAX,
		.weights_norm = true,
		.attn = MOE_ATTN_QK_NORM | MOE_ATTN_SWA_PATTERN | MOE_ATTN_V_NORM,
		.ffn = MOE_FFN_GEMMA4, .attn_scale = 1.0f, .embd_scale = true,
		.post_attn_norm = true, .softcap_default = 30.0f,
		/* gemma4's proportional RoPE factors belong to the full-attention layers */
		.rope_factors_full_only = true,
		.globals = globals_std, .layer = attn_gemma4, .dense = none, .moe = moe_gemma4,
		.required_keys = keys_gemma4,
		.gen = { "gemma4", 2, 1e6f, 1e-6f, true },
	},
	[MOE_ARCH_DEEPSEEK2] = {
		/* V2 files have no expert_gating_func: softmax, as llama.cpp falls back to */
		.name = "deepseek2", .id = MOE_ARCH_DEEPSEEK2, .moe_layers = MOE_LAYERS_ALL,
		.rope = MOE_ROPE_NORMAL, .act = MOE_ACT_SILU, .gating = MOE_GATING_SOFTMAX,
		.attn = MOE_ATTN_MLA, .yarn_mscale_in_scale = true,
		.globals = globals_std, .layer = attn_mla, .dense = dense_std, .moe = moe_std,
		.required_keys = keys_deepseek2,
		.gen = { "deepseek2", 3, 10000.0f, 1e-6f, false },
	},
	[MOE_ARCH_GLM4MOE] = {
		.name = "glm4moe", .id = MOE_ARCH_GLM4MOE, .moe_layers = MOE_LAYERS_ALL,
		.rope = MOE_ROPE_NEOX, .act = MOE_ACT_SILU, .gating = MOE_GATING_SIGMOID,
		.weights_norm = true, .attn = MOE_ATTN_QK_NORM | MOE_ATTN_BIAS, .nextn = true,
		.globals = globals_std, .layer = attn_glm4moe, .dense = dense_std, .moe = moe_std,
		.required_keys = keys_moe,
		.gen = { "glm4moe", 2, 1e6f, 1e-5f, false },
	},
};

const struct moe_arch *moe_arch_find(const char *name)
{
	for (unsigned i = 0; i < MOE_ARCH_COUNT; i++)
		if (!strcmp(arches[i].name, name))
			return &arches[i];
	return NULL;
}

const struct moe_arch *moe_arch_at(unsigned i)
{
	return i < MOE_ARCH_COUNT ? &arches[i] : NULL;
}

const char *moe_arch_list(void)
{
	return "llama (incl. Mixtral), qwen3moe, llama4, gpt-oss, gemma4, deepseek2 (DeepSeek-V2/V3/R1, "
	       "Kimi K2), glm4moe";
}
