/* SPDX-License-Identifier: MIT */
/*
 * moe-mkmodel's parts: main.c (options), arch.c (which tensors and keys an
 * architecture's files carry), tensors.c (the random weights, routers and
 * their conversion), vocab.c (the optional BPE vocabulary).  Architectures
 * come from libmoe's table (arch.h), so a new one is added in one place.
 */
#ifndef MOE_MKMODEL_H
#define MOE_MKMODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "arch.h"
#include "moe/moe.h"
#include "tool.h"

#define PROG "moe-mkmodel"
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

struct opts {
	const struct moe_arch *a;
	const char *out;
	uint32_t layers, embd, heads, kv_heads, head_dim, vocab;
	uint32_t experts, experts_used, expert_ff, shared_ff, ff, ctx;
	uint32_t type, type_other, align, interleave, sliding_window;
	uint32_t type_down;             /* ffn_down_exps of every third MoE layer, 0: --type */
	uint32_t head_dim_swa, swa_pattern;
	/* deepseek2's MLA, group-limited routing; leading dense layers; GLM's NextN blocks */
	uint32_t q_lora, kv_lora, rope_dim, v_head_dim;
	uint32_t groups, groups_used, leading_dense, nextn;
	/* Gemma 4 E2B/E4B: per-layer embedding width, layers sharing an earlier KV cache */
	uint32_t ple, kv_shared;
	float rope_base, rope_base_swa, partial_rotary, yarn_factor, rope_freqs_factor;
	double router_skew, layer_corr;
	uint64_t seed;
	bool vocab_bpe, tied, quiet;
	bool sparse;                    /* tensor data left as holes (--sparse) */
};

struct preset;

/* What mk_write() wrote. */
struct mk_result {
	uint64_t bytes;                 /* the file's length */
	uint64_t data_offset;           /* where tensor data start: what a sparse file uses */
	size_t n_tensors;
	uint32_t n_moe;
};

static inline bool is_arch(const struct opts *o, enum moe_arch_id id)
{
	return o->a->id == id;
}

enum gen_kind {
	GEN_NORMAL,   /* Gaussian, std = scale */
	GEN_CONST,    /* every element = scale */
	GEN_TABLE,    /* precomputed rows times scale */
	GEN_EMBD,     /* Gaussian rows sharing the model's mean direction */
};

/* How llama-quantize treats a tensor: kept in F32, an expert, or any other matrix. */
enum tclass { TC_F32, TC_EXPERT, TC_OTHER };

struct model;

struct gtensor {
	char name[MOE_GGUF_NAME_MAX];
	uint32_t type;
	uint32_t n_dims;
	uint64_t ne[3];
	enum gen_kind kind;
	float scale;
	const float *table;
	uint64_t seed;
	uint64_t state;
	struct model *m;
};

struct model {
	const struct opts *o;
	struct gtensor *t;
	size_t n_t, cap_t;
	/* a direction every token embedding leans towards (entries of RMS 1) */
	float *mu;
	float kappa;
	float **routers;        /* per layer, [experts][embd]; NULL on dense layers */
	float *rope_freqs;
	float *scratch;
	size_t scratch_cap;
	uint32_t n_moe;
	/* tensors whose row length forced a different type than asked, per (asked, used) */
	struct fallback {
		uint32_t from, to, count;
		char example[MOE_GGUF_NAME_MAX];
	} fallback[4];
	/* progress on a terminal */
	struct moe_threadpool *pool;    /* only when something is quantized */
	bool progress;
	uint64_t bytes_done, bytes_total;
	int last_pct;
};

/* arch.c */
bool mk_is_moe_layer(const struct opts *o, uint32_t l);
bool mk_is_swa_layer(const struct opts *o, uint32_t l);
int mk_add_tensors(struct model *m);
int mk_add_metadata(struct moe_gguf_writer *w, const struct opts *o);

/* tensors.c */
bool mk_type_supported(uint32_t type);
int mk_add(struct model *m, enum tclass tc, enum gen_kind kind, float scale, const float *table,
	   uint32_t n_dims, uint64_t ne0, uint64_t ne1, uint64_t ne2, const char *fmt, ...)
	__attribute__((format(printf, 10, 11)));
/* Weights of a projection read by a norm-preserving input: unit-variance outputs. */
float mk_w_in(uint64_t fan_in);
/* Projections into the residual stream, scaled down by sqrt(2 * layers). */
float mk_w_out(const struct model *m, uint64_t fan_in);
int mk_make_structure(struct model *m);
void mk_model_free(struct model *m);
int mk_fill(void *ctx, uint64_t row, uint64_t n_rows, void *dst);

/* write.c: shared with moectl plan --preset */
void mk_opts_default(struct opts *o);
/* The shape of @p over the defaults; -ENOENT when its architecture is not built in. */
int mk_opts_preset(struct opts *o, const struct preset *p);
/*
 * Write the model @o describes to o->out.  Returns 0, 1 after a message on
 * stderr, or EXIT_USAGE for a usage error found late (a --vocab too small).
 */
int mk_write(const struct opts *o, struct mk_result *res);

/* vocab.c */
int mk_add_tokenizer(struct moe_gguf_writer *w, const struct opts *o);

#define ONES(m, n, ...) mk_add(m, TC_F32, GEN_CONST, 1.0f, NULL, 1, n, 1, 1, __VA_ARGS__)
#define BIAS(m, d, n0, n1, ...) \
	mk_add(m, TC_F32, GEN_NORMAL, 0.02f, NULL, d, n0, n1, 1, __VA_ARGS__)

#endif
