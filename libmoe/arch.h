/* SPDX-License-Identifier: MIT */
/*
 * The architecture table: one descriptor per supported `general.architecture`,
 * so that the reader, the planner and the forward pass ask the table instead
 * of testing architecture names.
 */
#ifndef MOE_ARCH_H
#define MOE_ARCH_H

#include <stdbool.h>
#include <stdint.h>

enum moe_arch_id {
	MOE_ARCH_LLAMA,         /* Llama / Mixtral-style experts */
	MOE_ARCH_QWEN3MOE,
	MOE_ARCH_LLAMA4,
	MOE_ARCH_GPTOSS,
	MOE_ARCH_GEMMA4,
	MOE_ARCH_DEEPSEEK2,     /* DeepSeek-V2/V3/R1, Kimi K2 */
	MOE_ARCH_GLM4MOE,       /* GLM-4.5/4.6 */
	MOE_ARCH_COUNT,
};

/* Which layers route to experts. */
enum moe_layer_rule {
	MOE_LAYERS_ALL,         /* every layer at or after leading_dense_block_count */
	MOE_LAYERS_INTERLEAVE,  /* (il + 1) % interleave_moe_layer_step == 0 */
	MOE_LAYERS_BY_TENSOR,   /* layers that have ffn_gate_inp.weight */
};

enum moe_rope_style { MOE_ROPE_NORMAL, MOE_ROPE_NEOX };

enum moe_expert_act { MOE_ACT_SILU, MOE_ACT_GELU, MOE_ACT_SWIGLU_OAI };

/* Attention features. */
enum {
	MOE_ATTN_QK_NORM = 1u << 0,        /* weighted per-head RMSNorm of q and k */
	MOE_ATTN_QK_NORM_PLAIN = 1u << 1,  /* llama4: weightless, on RoPE layers */
	MOE_ATTN_BIAS = 1u << 2,           /* q/k/v/o biases */
	MOE_ATTN_SINKS = 1u << 3,          /* per-head sink logits */
	MOE_ATTN_SWA_EVEN = 1u << 4,       /* even layers sliding window (gpt-oss) */
	MOE_ATTN_SWA_PATTERN = 1u << 5,    /* per-layer pattern array (gemma4) */
	MOE_ATTN_CHUNKED = 1u << 6,        /* llama4 chunked attention on RoPE layers */
	MOE_ATTN_NOPE_EVERY4 = 1u << 7,    /* llama4: (il + 1) % 4 == 0 has no RoPE */
	MOE_ATTN_V_NORM = 1u << 8,         /* gemma4: weightless V norm */
	MOE_ATTN_MLA = 1u << 9,            /* deepseek2: multi-head latent attention */
};

enum { ARCH_OPT = 0, ARCH_REQ = 1 };

/* How the FFN half of a layer is wired, beyond the generic MoE recipe. */
enum moe_ffn_style {
	MOE_FFN_STD,        /* norm -> experts (+ shared expert) or dense */
	MOE_FFN_LLAMA4,     /* router weight scales the expert input; shared expert added */
	MOE_FFN_GEMMA4,     /* dense GeGLU beside the experts, extra norms, scaled router input */
};

/* What moe-mkmodel writes for the architecture unless told otherwise. */
struct moe_arch_gen {
	const char *name;                  /* its --arch (Mixtral's files say "llama") */
	uint32_t experts_used;
	float rope_base;
	float rms_eps;
	bool tied;                         /* output tied to token_embd */
};

/* A tensor name; per-layer names omit the "blk.N." prefix. */
struct arch_tensor {
	const char *name;
	uint8_t need;
};

struct moe_arch {
	const char *name;                  /* general.architecture */
	enum moe_arch_id id;
	enum moe_layer_rule moe_layers;
	enum moe_rope_style rope;
	enum moe_expert_act act;
	uint32_t gating;                   /* enum moe_gating, when the file has no key */
	bool weights_norm;                 /* when the file has no key */
	bool ffn_exp_from_ff;              /* Mixtral: expert width is feed_forward_length */
	uint32_t attn;                     /* MOE_ATTN_* */
	enum moe_ffn_style ffn;
	float attn_scale;                  /* 0: 1/sqrt(head_dim) */
	bool embd_scale;                   /* h = embedding * sqrt(n_embd) */
	bool post_attn_norm;               /* norm the attention output before the residual */
	float softcap_default;             /* final logit softcapping when the key is absent */
	bool rope_factors_full_only;       /* rope_freqs apply to full-attention layers only */
	/*
	 * deepseek2: YaRN's magnitude correction leaves the rotation (cos/sin
	 * unscaled) and enters the attention scale as mscale^2, with mscale =
	 * 1 + rope.scaling.yarn_log_multiplier * ln(factor).
	 */
	bool yarn_mscale_in_scale;
	/* blocks past the trunk that the forward pass skips: "{arch}.nextn_predict_layers" */
	bool nextn;
	const struct arch_tensor *globals;
	const struct arch_tensor *layer;   /* every layer */
	const struct arch_tensor *dense;   /* layers without routed experts */
	const struct arch_tensor *moe;     /* layers with routed experts */
	const char *const *required_keys;  /* without the "{arch}." prefix */
	struct moe_arch_gen gen;
};

const struct moe_arch *moe_arch_find(const char *name);
/* Entry @i of the table, NULL past its end. */
const struct moe_arch *moe_arch_at(unsigned i);
/* "llama, qwen3moe, ..." for messages. */
const char *moe_arch_list(void);

#endif
