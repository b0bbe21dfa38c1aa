/* SPDX-License-Identifier: MIT */
/*
 * The reference forward pass: a naive float64 implementation of the MoE
 * architectures libmoe runs (qwen3moe, llama/Mixtral, llama4, gpt-oss,
 * gemma4, deepseek2, glm4moe), written from the formulas in the shared
 * FORMATS.md, GEMMA4.md and DEEPSEEK2-GLM4MOE.md.
 * It is the oracle the engine is tested against, so it shares nothing with
 * the engine but the GGUF reader and the dequantizers, and it is slow on
 * purpose: every position of the sequence is recomputed on every call.
 */
#ifndef MOE_REF_FORWARD_H
#define MOE_REF_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

struct ref_opts {
	int llama4_chunk;       /* llama4 attention chunk; 0 = 8192 */
	/*
	 * llama4 NoPE layers scale q by log(floor((pos + 1) / floor) + 1) * 0.1 + 1;
	 * 0 = 8192.  Smaller values let short tests reach the scaling.
	 */
	int llama4_temp_floor;
	/*
	 * GELU as ggml's CPU backend computes it (GEMMA4.md §4): the input and
	 * the result rounded to fp16, 0 below -10, x above 10.  Off: the exact
	 * tanh form, which llama.cpp's CPU logits differ from by up to ~3e-3.
	 */
	bool gelu_f16;
};

/* What a caller needs to size the output arrays of ref_forward. */
struct ref_info {
	char arch[32];
	int n_layer;
	int n_embd;
	int n_vocab;            /* logits per position */
	int n_expert;           /* router entries per layer and position (0: dense model) */
	int n_expert_used;      /* top-k entries per layer and position (largest over layers) */
};

int ref_model_info(const char *path, struct ref_info *out);

/*
 * Run the whole token sequence from position 0 (no BOS is added) and write
 * the logits of every position, [n_tokens][n_vocab].  When not NULL, @topk
 * receives the chosen experts [n_layer][n_tokens][n_expert_used] ordered by
 * descending selection score (-1 on dense layers), and @router the router's
 * selection logits (bias included) [n_layer][n_tokens][n_expert] (0 on dense
 * layers).  @o may be NULL.  Returns 0 or -errno with moe_errmsg() set.
 */
int ref_forward(const char *path, const int32_t *tokens, int n_tokens, const struct ref_opts *o,
		double *logits, int32_t *topk, double *router);

#endif
