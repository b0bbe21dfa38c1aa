/* SPDX-License-Identifier: MIT */
/*
 * The shapes of published Mixture-of-Experts models, for planning and for
 * full-size sparse test files (moectl plan --preset, moe-mkmodel --preset):
 * one table, read by both tools.  The values and their sources are listed in
 * Documentation/tools/presets.rst.
 */
#ifndef MOE_TOOL_PRESET_H
#define MOE_TOOL_PRESET_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct preset {
	const char *name;           /* what --preset takes */
	const char *model;          /* the published model it has the shape of */
	const char *arch;           /* general.architecture (moe-mkmodel --arch) */
	uint32_t layers, embd, heads, kv_heads, head_dim, vocab;
	uint32_t experts, experts_used, expert_ff, shared_ff, ff;
	uint32_t interleave;        /* llama4: every N-th layer MoE; else 1 */
	uint32_t leading_dense;     /* deepseek2: first N layers dense */
	uint32_t sliding_window, swa_pattern, head_dim_swa;
	uint32_t q_lora, kv_lora, rope_dim, v_head_dim, groups, groups_used;
	uint32_t ctx;               /* training context */
	float rope_base;
	bool tied;
	/* the published parameter counts, in billions */
	double total_b, active_b;
	/*
	 * Whether the published active count includes the input embedding table
	 * (Meta, Qwen, DeepSeek, Google do; OpenAI counts only the unembedding).
	 */
	bool active_counts_embd;
	const char *source;         /* where the hyperparameters come from */
};

/* The preset named @name (exact), or NULL. */
const struct preset *preset_find(const char *name);
/* Preset @i (0 ..), NULL past the last. */
const struct preset *preset_at(unsigned i);
/* "  NAME   MODEL (total/active)" lines, one per preset, into @f. */
void preset_list(FILE *f);

/*
 * A quantization name as llama-quantize spells it (f16, q8_0, q4_K_M, ...)
 * as the types moe-mkmodel writes: @expert for the routed experts, @down for
 * the ffn_down_exps of every third MoE layer (0: same as @expert), @other for
 * the other matrices.  -1 for an unknown name.
 */
struct preset_recipe {
	const char *name;
	uint32_t expert, down, other;
	const char *note;
};
int preset_recipe(const char *name, struct preset_recipe *out);
/* The recipe names, comma-separated, for messages. */
const char *preset_recipe_names(void);

#endif
