/* SPDX-License-Identifier: MIT */
/* The opened model: the parsed GGUF, its architecture, hparams, layers and expert map. */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include "arch.h"
#include "gguf.h"
#include "moe/moe.h"

struct moe_layer {
	struct moe_layer_info info;
	uint32_t n_head;
	uint32_t n_rot;
	float rope_base;
	bool chunked;                 /* chunked attention (llama4 RoPE layers) */
	bool qk_norm_plain;           /* weightless q/k RMSNorm after RoPE */
	bool attn_temp;               /* position-dependent query scaling (llama4 NoPE layers) */
	struct moe_expert *experts;   /* n_expert entries on MoE layers, else NULL */
};

struct moe_model {
	char *path;
	int fd;                       /* -1 for "moe:NAME": no file, */
	void *head;                   /* ...its header extent, read through moe.ko */
	uint64_t head_len;
	struct gguf_file *gguf;
	const struct moe_arch *arch;  /* NULL when opened metadata-only with an unknown arch */
	struct moe_hparams hp;
	uint32_t n_block;             /* block_count: the trunk plus any NextN blocks */
	struct moe_layer *layers;
	struct moe_tensor_info *tinfo; /* public view of every tensor */
	struct moe_model_summary summary;
};

/* Metadata helpers used inside libmoe: "{arch}.suffix" lookups. */
const struct gguf_kv *moe_model_arch_kv(const struct moe_model *m, const char *suffix);

#endif
