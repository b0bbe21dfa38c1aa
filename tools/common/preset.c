/* SPDX-License-Identifier: MIT */
/*
 * The preset table.  Each row is read off the model's published config.json
 * (the text model's part of it), except Llama 4 Behemoth, which was
 * announced but never published: its row is fitted to the announced counts,
 * as Documentation/tools/presets.rst explains.
 */
#include <string.h>
#include <strings.h>

#include "moe/moe.h"
#include "preset.h"

static const struct preset presets[] = {
	{
		.name = "llama4-scout", .model = "Llama 4 Scout 17B-16E", .arch = "llama4",
		.layers = 48, .embd = 5120, .heads = 40, .kv_heads = 8, .head_dim = 128,
		.vocab = 202048, .experts = 16, .experts_used = 1, .expert_ff = 8192,
		.shared_ff = 8192, .ff = 16384, .interleave = 1, .ctx = 10485760,
		.rope_base = 500000, .total_b = 109, .active_b = 17, .active_counts_embd = true,
		.source = "huggingface.co/meta-llama/Llama-4-Scout-17B-16E config.json",
	},
	{
		.name = "llama4-maverick", .model = "Llama 4 Maverick 17B-128E", .arch = "llama4",
		.layers = 48, .embd = 5120, .heads = 40, .kv_heads = 8, .head_dim = 128,
		.vocab = 202048, .experts = 128, .experts_used = 1, .expert_ff = 8192,
		.shared_ff = 8192, .ff = 16384, .interleave = 2, .ctx = 1048576,
		.rope_base = 500000, .total_b = 400, .active_b = 17, .active_counts_embd = true,
		.source = "huggingface.co/meta-llama/Llama-4-Maverick-17B-128E config.json",
	},
	{
		.name = "llama4-behemoth", .model = "Llama 4 Behemoth (unreleased; fitted)",
		.arch = "llama4", .layers = 96, .embd = 16384, .heads = 128, .kv_heads = 8,
		.head_dim = 128, .vocab = 202048, .experts = 16, .experts_used = 1,
		.expert_ff = 24576, .shared_ff = 24576, .ff = 49152, .interleave = 1,
		.ctx = 1048576, .rope_base = 500000, .total_b = 2000, .active_b = 288,
		.active_counts_embd = true,
		.source = "ai.meta.com/blog/llama-4-multimodal-intelligence (counts); "
			  "width and heads from apxml.com/models/llama-4-behemoth; "
			  "layers and expert width fitted",
	},
	{
		.name = "qwen3-235b-a22b", .model = "Qwen3-235B-A22B", .arch = "qwen3moe",
		.layers = 94, .embd = 4096, .heads = 64, .kv_heads = 4, .head_dim = 128,
		.vocab = 151936, .experts = 128, .experts_used = 8, .expert_ff = 1536,
		.ff = 12288, .interleave = 1, .ctx = 40960, .rope_base = 1000000,
		.total_b = 235, .active_b = 22, .active_counts_embd = true,
		.source = "huggingface.co/Qwen/Qwen3-235B-A22B config.json",
	},
	{
		.name = "gpt-oss-120b", .model = "gpt-oss-120b", .arch = "gpt-oss",
		.layers = 36, .embd = 2880, .heads = 64, .kv_heads = 8, .head_dim = 64,
		.vocab = 201088, .experts = 128, .experts_used = 4, .expert_ff = 2880,
		.ff = 2880, .interleave = 1, .sliding_window = 128, .ctx = 131072,
		.rope_base = 150000, .total_b = 116.83, .active_b = 5.13,
		.source = "huggingface.co/openai/gpt-oss-120b config.json; counts from "
			  "the gpt-oss model card",
	},
	{
		.name = "gpt-oss-20b", .model = "gpt-oss-20b", .arch = "gpt-oss",
		.layers = 24, .embd = 2880, .heads = 64, .kv_heads = 8, .head_dim = 64,
		.vocab = 201088, .experts = 32, .experts_used = 4, .expert_ff = 2880,
		.ff = 2880, .interleave = 1, .sliding_window = 128, .ctx = 131072,
		.rope_base = 150000, .total_b = 20.91, .active_b = 3.61,
		.source = "huggingface.co/openai/gpt-oss-20b config.json; counts from "
			  "the gpt-oss model card",
	},
	{
		.name = "gemma4-26b-a4b", .model = "Gemma 4 26B-A4B", .arch = "gemma4",
		.layers = 30, .embd = 2816, .heads = 16, .kv_heads = 8, .head_dim = 512,
		.head_dim_swa = 256, .vocab = 262144, .experts = 128, .experts_used = 8,
		.expert_ff = 704, .ff = 2112, .interleave = 1, .sliding_window = 1024,
		.swa_pattern = 6, .ctx = 262144, .rope_base = 1000000, .tied = true,
		.total_b = 25.2, .active_b = 3.8, .active_counts_embd = true,
		.source = "huggingface.co/google/gemma-4-26B-A4B config.json (text_config)",
	},
	{
		.name = "deepseek-v3", .model = "DeepSeek-V3",
		.arch = "deepseek2", .layers = 61, .embd = 7168, .heads = 128, .kv_heads = 128,
		.head_dim = 192, .vocab = 129280, .experts = 256, .experts_used = 8,
		.expert_ff = 2048, .shared_ff = 2048, .ff = 18432, .interleave = 1,
		.leading_dense = 3, .q_lora = 1536, .kv_lora = 512, .rope_dim = 64,
		.v_head_dim = 128, .groups = 8, .groups_used = 4, .ctx = 163840,
		.rope_base = 10000, .total_b = 671, .active_b = 37, .active_counts_embd = true,
		.source = "huggingface.co/deepseek-ai/DeepSeek-V3 config.json",
	},
};

#define N_PRESETS (sizeof(presets) / sizeof(presets[0]))

const struct preset *preset_find(const char *name)
{
	for (unsigned i = 0; name && i < N_PRESETS; i++)
		if (!strcmp(presets[i].name, name))
			return &presets[i];
	return NULL;
}

const struct preset *preset_at(unsigned i)
{
	return i < N_PRESETS ? &presets[i] : NULL;
}

void preset_list(FILE *f)
{
	for (unsigned i = 0; i < N_PRESETS; i++)
		fprintf(f, "  %-16s %s: %gB parameters, %gB active\n", presets[i].name,
			presets[i].model, presets[i].total_b, presets[i].active_b);
}

/*
 * llama-quantize's mixes, reduced to what moe-mkmodel can vary per tensor:
 * the _M K-quants give ffn_down (and attn_v) more bits in some layers, which
 * --type-down models for the experts as every third layer; their q6_K
 * output.weight and attn_v are written at the base type.
 */
static const struct preset_recipe recipes[] = {
	{ "f32", MOE_TYPE_F32, 0, MOE_TYPE_F32, "every matrix f32" },
	{ "f16", MOE_TYPE_F16, 0, MOE_TYPE_F16, "every matrix f16" },
	{ "bf16", MOE_TYPE_BF16, 0, MOE_TYPE_BF16, "every matrix bf16" },
	{ "q8_0", MOE_TYPE_Q8_0, 0, MOE_TYPE_Q8_0, "every matrix q8_0" },
	{ "q6_K", MOE_TYPE_Q6_K, 0, MOE_TYPE_Q6_K, "every matrix q6_K" },
	{ "q5_K_M", MOE_TYPE_Q5_K, MOE_TYPE_Q6_K, MOE_TYPE_Q5_K,
	  "q5_K; ffn_down_exps of every third MoE layer q6_K" },
	{ "q4_K_M", MOE_TYPE_Q4_K, MOE_TYPE_Q6_K, MOE_TYPE_Q4_K,
	  "q4_K; ffn_down_exps of every third MoE layer q6_K" },
	{ "q4_0", MOE_TYPE_Q4_0, 0, MOE_TYPE_Q4_0, "every matrix q4_0" },
	{ "mxfp4", MOE_TYPE_MXFP4, 0, MOE_TYPE_Q8_0,
	  "routed experts mxfp4, the other matrices q8_0 (MXFP4_MOE)" },
};

int preset_recipe(const char *name, struct preset_recipe *out)
{
	for (unsigned i = 0; name && i < sizeof(recipes) / sizeof(recipes[0]); i++) {
		if (!strcasecmp(recipes[i].name, name)) {
			*out = recipes[i];
			return 0;
		}
	}
	return -1;
}

const char *preset_recipe_names(void)
{
	return "f32, f16, bf16, q8_0, q6_K, q5_K_M, q4_K_M, q4_0, mxfp4";
}
