/* SPDX-License-Identifier: MIT */
/*
 * moe-mkmodel: write a random-weight Mixture-of-Experts model in GGUF, laid
 * out as llama.cpp expects for the architecture, so that every path of the
 * engine can be tested without downloading a real model.  This file reads
 * the options and writes the file; the other parts are named in mkmodel.h.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "mkmodel.h"

#define ARCH_NAMES "qwen3moe, llama4, mixtral, gpt-oss, gemma4, deepseek2, glm4moe"

/* ------------------------------------------------------------------ options */


enum opt_id {
	O_ARCH = 256, O_LAYERS, O_EMBD, O_HEADS, O_KV_HEADS, O_HEAD_DIM, O_VOCAB, O_EXPERTS,
	O_EXPERTS_USED, O_EXPERT_FF, O_SHARED_FF, O_FF, O_CTX, O_TYPE, O_TYPE_OTHER, O_TYPE_DOWN, O_ALIGN,
	O_SEED, O_VOCAB_BPE, O_ROUTER_SKEW, O_LAYER_CORR, O_INTERLEAVE, O_SLIDING_WINDOW,
	O_ROPE_BASE, O_ROPE_BASE_SWA, O_HEAD_DIM_SWA, O_SWA_PATTERN, O_PARTIAL_ROTARY,
	O_YARN_FACTOR, O_ROPE_FREQS_FACTOR, O_TIED, O_UNTIED, O_Q_LORA, O_KV_LORA, O_ROPE_DIM,
	O_V_HEAD_DIM, O_GROUPS, O_GROUPS_USED, O_LEADING_DENSE, O_NEXTN, O_PLE, O_KV_SHARED,
	O_COUNT
};

static const struct option long_opts[] = {
	{ "arch", required_argument, NULL, O_ARCH },
	{ "output", required_argument, NULL, 'o' },
	{ "layers", required_argument, NULL, O_LAYERS },
	{ "embd", required_argument, NULL, O_EMBD },
	{ "heads", required_argument, NULL, O_HEADS },
	{ "kv-heads", required_argument, NULL, O_KV_HEADS },
	{ "head-dim", required_argument, NULL, O_HEAD_DIM },
	{ "vocab", required_argument, NULL, O_VOCAB },
	{ "experts", required_argument, NULL, O_EXPERTS },
	{ "experts-used", required_argument, NULL, O_EXPERTS_USED },
	{ "expert-ff", required_argument, NULL, O_EXPERT_FF },
	{ "shared-expert-ff", required_argument, NULL, O_SHARED_FF },
	{ "ff", required_argument, NULL, O_FF },
	{ "ctx", required_argument, NULL, O_CTX },
	{ "type", required_argument, NULL, O_TYPE },
	{ "type-other", required_argument, NULL, O_TYPE_OTHER },
	{ "type-down", required_argument, NULL, O_TYPE_DOWN },
	{ "align", required_argument, NULL, O_ALIGN },
	{ "seed", required_argument, NULL, O_SEED },
	{ "vocab-bpe", no_argument, NULL, O_VOCAB_BPE },
	{ "router-skew", required_argument, NULL, O_ROUTER_SKEW },
	{ "layer-correlation", required_argument, NULL, O_LAYER_CORR },
	{ "interleave", required_argument, NULL, O_INTERLEAVE },
	{ "sliding-window", required_argument, NULL, O_SLIDING_WINDOW },
	{ "rope-base", required_argument, NULL, O_ROPE_BASE },
	{ "rope-base-swa", required_argument, NULL, O_ROPE_BASE_SWA },
	{ "head-dim-swa", required_argument, NULL, O_HEAD_DIM_SWA },
	{ "swa-pattern", required_argument, NULL, O_SWA_PATTERN },
	{ "partial-rotary", required_argument, NULL, O_PARTIAL_ROTARY },
	{ "yarn-factor", required_argument, NULL, O_YARN_FACTOR },
	{ "rope-freqs-factor", required_argument, NULL, O_ROPE_FREQS_FACTOR },
	{ "tied", no_argument, NULL, O_TIED },
	{ "untied", no_argument, NULL, O_UNTIED },
	{ "q-lora", required_argument, NULL, O_Q_LORA },
	{ "kv-lora", required_argument, NULL, O_KV_LORA },
	{ "rope-dim", required_argument, NULL, O_ROPE_DIM },
	{ "v-head-dim", required_argument, NULL, O_V_HEAD_DIM },
	{ "expert-groups", required_argument, NULL, O_GROUPS },
	{ "expert-groups-used", required_argument, NULL, O_GROUPS_USED },
	{ "leading-dense", required_argument, NULL, O_LEADING_DENSE },
	{ "nextn", required_argument, NULL, O_NEXTN },
	{ "per-layer-embd", required_argument, NULL, O_PLE },
	{ "kv-shared", required_argument, NULL, O_KV_SHARED },
	{ "quiet", no_argument, NULL, 'q' },
	{ "help", no_argument, NULL, 'h' },
	{ 0 },
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " --arch ARCH -o FILE [OPTIONS]\n"
		"Write a random-weight MoE model in GGUF that llama.cpp loads for ARCH.\n\n"
		"  --arch A               qwen3moe | llama4 | mixtral | gpt-oss | gemma4 |\n"
		"                         deepseek2 | glm4moe\n"
		"  -o, --output FILE      the model file to write\n"
		"  --layers N             blocks (4)\n"
		"  --embd N               embedding width (256)\n"
		"  --heads N              query heads (4)\n"
		"  --kv-heads N           key/value heads (2)\n"
		"  --head-dim N           head dimension (64; gemma4: full-attention layers;\n"
		"                         deepseek2: q/k heads, no-RoPE plus RoPE part)\n"
		"  --vocab N              vocabulary size (512)\n"
		"  --experts N            routed experts per MoE layer (8; gemma4: 0 = dense)\n"
		"  --experts-used N       experts chosen per token (2; llama4 1, deepseek2 3)\n"
		"  --expert-ff N          expert FFN width (256)\n"
		"  --shared-expert-ff N   shared expert width, 0 = none (llama4, deepseek2,\n"
		"                         glm4moe: = --expert-ff)\n"
		"  --ff N                 dense FFN width (512; llama4 dense layers, gemma4,\n"
		"                         the leading dense layers)\n"
		"  --ctx N                training context length (4096)\n"
		"  --type T               type of the routed expert tensors (f32)\n"
		"  --type-other T         type of the other 2-D tensors (f32)\n"
		"  --type-down T          ffn_down_exps of layers 0, 3, 6, ... in type T, as\n"
		"                         mixed quantizations do (experts then differ in size)\n"
		"  --align N              data alignment, a power of two (32)\n"
		"  --seed N               random seed (1)\n"
		"  --vocab-bpe            a small byte-level BPE vocabulary instead of none\n"
		"  --router-skew S        Zipf-like expert popularity, 0 = uniform (1.0)\n"
		"  --layer-correlation C  router similarity of adjacent MoE layers, 0..1 (0.5)\n"
		"  --interleave N         llama4: every N-th layer is MoE (1)\n"
		"  --sliding-window N     gpt-oss, gemma4: window of the SWA layers (128)\n"
		"  --rope-base F          RoPE base (per architecture)\n"
		"  --rope-base-swa F      gemma4: RoPE base of the SWA layers (10000)\n"
		"  --head-dim-swa N       gemma4: head dimension of SWA layers (head-dim / 2)\n"
		"  --swa-pattern N        gemma4: every N-th layer and the last are full (6)\n"
		"  --partial-rotary F     gemma4, glm4moe: rotated fraction of (full-layer) heads\n"
		"                         (gemma4 0.25, glm4moe 0.5)\n"
		"  --yarn-factor F        gpt-oss, deepseek2: YaRN factor, 0 = no scaling (32, 40)\n"
		"  --rope-freqs-factor F  llama4: Llama-3 RoPE scaling in rope_freqs, 0 = none (16)\n"
		"  --tied, --untied       output tied to token_embd or not (gemma4 tied)\n"
		"  --leading-dense N      deepseek2, glm4moe: first N layers dense (1)\n"
		"  --expert-groups N      deepseek2: expert groups of group-limited routing (4)\n"
		"  --expert-groups-used N deepseek2: groups kept per token (2)\n"
		"  --q-lora N             deepseek2: q_lora_rank, 0 = attn_q (the lite models) (64)\n"
		"  --kv-lora N            deepseek2: kv_lora_rank, the cached latent (32)\n"
		"  --rope-dim N           deepseek2: RoPE part of each q/k head (16)\n"
		"  --v-head-dim N         deepseek2: value head dimension (head-dim - rope-dim)\n"
		"  --nextn N              glm4moe: NextN/MTP blocks after the trunk (0)\n"
		"  --per-layer-embd N     gemma4: per-layer embedding width (E2B/E4B), 0 = none\n"
		"  --kv-shared N          gemma4: last N layers reuse an earlier layer's KV (0)\n"
		"  -q, --quiet            no summary line\n"
		"  -h, --help             this text\n");
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	return EXIT_USAGE;
}

static int parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (!*s || *s == '-' || *s == '+')
		return usage_error("--%s '%s': expected a whole number", opt, s);
	v = strtoull(s, &end, 10);
	if (errno || *end)
		return usage_error("--%s '%s': expected a whole number", opt, s);
	if (v < min || v > max)
		return usage_error("--%s %llu: must be between %" PRIu64 " and %" PRIu64, opt, v,
				   min, max);
	*out = v;
	return 0;
}

static int parse_u32(const char *opt, const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
	uint64_t v;
	int ret = parse_u64(opt, s, min, max, &v);

	if (!ret)
		*out = (uint32_t)v;
	return ret;
}

static int parse_float(const char *opt, const char *s, double min, double max, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || !*s || *end || !isfinite(v))
		return usage_error("--%s '%s': expected a number", opt, s);
	if (v < min || v > max)
		return usage_error("--%s %g: must be between %g and %g", opt, v, min, max);
	*out = v;
	return 0;
}

static int parse_type(const char *opt, const char *s, uint32_t *out)
{
	int t = moe_type_from_name(s);

	if (t < 0)
		return usage_error("--%s '%s': unknown type (f32, f16, bf16, q8_0, q4_K, ...)",
				   opt, s);
	if (t == MOE_TYPE_Q8_K)
		return usage_error("--%s: q8_K is an activation type; llama.cpp cannot use it for "
				   "weights (use q8_0)", opt);
	if (!mk_type_supported((uint32_t)t))
		return usage_error("--%s: type %s is not supported by this build (use f32, f16, "
				   "bf16, q8_0, q4_K, ...)", opt, moe_type_name((uint32_t)t));
	*out = (uint32_t)t;
	return 0;
}

static const char *const opt_names[O_COUNT] = {
	[O_FF] = "ff", [O_SHARED_FF] = "shared-expert-ff", [O_INTERLEAVE] = "interleave",
	[O_SLIDING_WINDOW] = "sliding-window", [O_ROPE_BASE_SWA] = "rope-base-swa",
	[O_HEAD_DIM_SWA] = "head-dim-swa", [O_SWA_PATTERN] = "swa-pattern",
	[O_PARTIAL_ROTARY] = "partial-rotary", [O_YARN_FACTOR] = "yarn-factor",
	[O_ROPE_FREQS_FACTOR] = "rope-freqs-factor", [O_Q_LORA] = "q-lora", [O_KV_LORA] = "kv-lora",
	[O_ROPE_DIM] = "rope-dim", [O_V_HEAD_DIM] = "v-head-dim", [O_GROUPS] = "expert-groups",
	[O_GROUPS_USED] = "expert-groups-used", [O_LEADING_DENSE] = "leading-dense",
	[O_NEXTN] = "nextn", [O_PLE] = "per-layer-embd", [O_KV_SHARED] = "kv-shared",
};

#define A(id) (1u << MOE_ARCH_##id)

/* Options that only some architectures take; giving one to another is a usage error. */
static int check_arch_options(const struct opts *o, const bool *given)
{
	static const struct {
		int opt;
		uint32_t archs;   /* bit per enum moe_arch_id */
		const char *why;
	} only[] = {
		{ O_INTERLEAVE, A(LLAMA4), "only llama4 interleaves dense and MoE layers" },
		{ O_SLIDING_WINDOW, A(GPTOSS) | A(GEMMA4),
		  "only gpt-oss and gemma4 have sliding-window layers" },
		{ O_ROPE_BASE_SWA, A(GEMMA4), "a gemma4 option" },
		{ O_HEAD_DIM_SWA, A(GEMMA4), "a gemma4 option" },
		{ O_SWA_PATTERN, A(GEMMA4), "a gemma4 option" },
		{ O_PARTIAL_ROTARY, A(GEMMA4) | A(GLM4MOE), "a gemma4 and glm4moe option" },
		{ O_YARN_FACTOR, A(GPTOSS) | A(DEEPSEEK2), "a gpt-oss and deepseek2 option" },
		{ O_ROPE_FREQS_FACTOR, A(LLAMA4), "a llama4 option" },
		{ O_FF, A(QWEN3MOE) | A(LLAMA4) | A(GEMMA4) | A(DEEPSEEK2) | A(GLM4MOE),
		  "every layer is MoE and the expert width is --expert-ff" },
		{ O_Q_LORA, A(DEEPSEEK2), "a deepseek2 (MLA) option" },
		{ O_KV_LORA, A(DEEPSEEK2), "a deepseek2 (MLA) option" },
		{ O_ROPE_DIM, A(DEEPSEEK2), "a deepseek2 (MLA) option" },
		{ O_V_HEAD_DIM, A(DEEPSEEK2), "a deepseek2 (MLA) option" },
		{ O_GROUPS, A(DEEPSEEK2), "only deepseek2 routes within expert groups" },
		{ O_GROUPS_USED, A(DEEPSEEK2), "only deepseek2 routes within expert groups" },
		{ O_LEADING_DENSE, A(DEEPSEEK2) | A(GLM4MOE),
		  "only deepseek2 and glm4moe files have leading dense layers" },
		{ O_NEXTN, A(GLM4MOE), "only GLM-4.5 files carry NextN blocks" },
		{ O_PLE, A(GEMMA4), "a gemma4 (E2B/E4B) option" },
		{ O_KV_SHARED, A(GEMMA4), "a gemma4 (E2B/E4B) option" },
	};

	for (size_t i = 0; i < ARRAY_LEN(only); i++)
		if (given[only[i].opt] && !(only[i].archs & (1u << o->a->id)))
			return usage_error("--%s does not apply to --arch %s: %s",
					   opt_names[only[i].opt], o->a->gen.name, only[i].why);
	return 0;
}

static int check_opts(struct opts *o, const bool *given)
{
	int ret = check_arch_options(o, given);

	if (ret)
		return ret;
	if (o->heads % o->kv_heads)
		return usage_error("--heads %u is not a multiple of --kv-heads %u", o->heads,
				   o->kv_heads);
	if (o->head_dim % 2)
		return usage_error("--head-dim %u must be even (RoPE rotates pairs)", o->head_dim);
	if (!o->experts && !is_arch(o, MOE_ARCH_GEMMA4))
		return usage_error("--experts 0: only gemma4 has dense files here (Gemma 4 31B, "
				   "E2B, E4B)");
	if (o->experts && o->experts_used > o->experts)
		return usage_error("--experts-used %u exceeds --experts %u", o->experts_used,
				   o->experts);
	if (is_arch(o, MOE_ARCH_LLAMA4)) {
		if (!given[O_SHARED_FF])
			o->shared_ff = o->expert_ff;
		if (o->shared_ff != o->expert_ff)
			return usage_error("--shared-expert-ff %u: llama4's shared expert has the "
					   "expert width; give %u or leave it out", o->shared_ff,
					   o->expert_ff);
	} else if (is_arch(o, MOE_ARCH_DEEPSEEK2) || is_arch(o, MOE_ARCH_GLM4MOE)) {
		if (!given[O_SHARED_FF])
			o->shared_ff = o->expert_ff;
	} else if (o->shared_ff) {
		return usage_error("--shared-expert-ff %u: llama.cpp's %s has no shared expert; "
				   "use 0", o->shared_ff, o->a->gen.name);
	}
	if (o->leading_dense >= o->layers && o->experts)
		return usage_error("--leading-dense %u leaves no MoE layer of %u", o->leading_dense,
				   o->layers);
	if (is_arch(o, MOE_ARCH_DEEPSEEK2)) {
		if (o->rope_dim % 2 || o->rope_dim >= o->head_dim)
			return usage_error("--rope-dim %u must be even and below --head-dim %u",
					   o->rope_dim, o->head_dim);
		if (!given[O_V_HEAD_DIM])
			o->v_head_dim = o->head_dim - o->rope_dim;
		if (o->groups > 1 && (o->experts % o->groups || !o->groups_used ||
				      o->groups_used > o->groups ||
				      o->experts_used > o->groups_used * (o->experts / o->groups)))
			return usage_error("--expert-groups %u / --expert-groups-used %u cannot give "
					   "%u of %u experts (groups must divide the experts)",
					   o->groups, o->groups_used, o->experts_used, o->experts);
	}
	if (is_arch(o, MOE_ARCH_GLM4MOE)) {
		if (!given[O_PARTIAL_ROTARY])
			o->partial_rotary = 0.5f;
		/* what the converter writes for GLM-4.5 (n_group 1, topk_group 1) */
		o->groups = o->groups_used = 1;
	}
	if (o->kv_shared >= o->layers)
		return usage_error("--kv-shared %u leaves no layer of %u with its own KV cache",
				   o->kv_shared, o->layers);
	/* shared layers read the last sliding (start - 2) and full (start - 1) layer's cache */
	if (o->kv_shared && (o->layers - o->kv_shared < 2 ||
			     !mk_is_swa_layer(o, o->layers - o->kv_shared - 2) ||
			     mk_is_swa_layer(o, o->layers - o->kv_shared - 1)))
		return usage_error("--kv-shared %u: the two layers before the shared ones must be "
				   "sliding-window, then full (%u layers, --swa-pattern %u)",
				   o->kv_shared, o->layers, o->swa_pattern);
	if (o->interleave > o->layers)
		return usage_error("--interleave %u exceeds --layers %u: the model would have no "
				   "MoE layer", o->interleave, o->layers);
	if (is_arch(o, MOE_ARCH_GEMMA4)) {
		if (!given[O_HEAD_DIM_SWA])
			o->head_dim_swa = MAX(2, o->head_dim / 2 / 2 * 2);
		if (o->head_dim_swa % 2)
			return usage_error("--head-dim-swa %u must be even", o->head_dim_swa);
		if (o->partial_rotary * o->head_dim / 2 < 1)
			return usage_error("--partial-rotary %g rotates no pair of a %u-wide head",
					   o->partial_rotary, o->head_dim);
	}
	if (o->vocab_bpe && o->vocab < 256 + 2 + 1)
		return usage_error("--vocab %u: --vocab-bpe needs at least 259 tokens (256 bytes, "
				   "one merge, <|bos|> and <|eos|>)", o->vocab);
	return 0;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
	bool given[O_COUNT] = { 0 };
	bool have_arch = false;
	double d;
	int c, ret = 0;

	*o = (struct opts){
		.layers = 4, .embd = 256, .heads = 4, .kv_heads = 2, .head_dim = 64, .vocab = 512,
		.experts = 8, .expert_ff = 256, .ff = 512, .ctx = 4096, .type = MOE_TYPE_F32,
		.type_other = MOE_TYPE_F32, .align = 32, .interleave = 1, .sliding_window = 128,
		.swa_pattern = 6, .rope_base_swa = 10000.0f, .partial_rotary = 0.25f,
		.yarn_factor = 32.0f, .rope_freqs_factor = 16.0f, .router_skew = 1.0,
		.layer_corr = 0.5, .seed = 1, .q_lora = 64, .kv_lora = 32, .rope_dim = 16,
		.groups = 4, .groups_used = 2,
	};
	while (!ret && (c = getopt_long(argc, argv, "o:qh", long_opts, NULL)) != -1) {
		const char *name = NULL;

		for (const struct option *lo = long_opts; lo->name; lo++)
			if (lo->val == c)
				name = lo->name;
		if (c >= O_ARCH && c < O_COUNT)
			given[c] = true;
		switch (c) {
		case O_ARCH:
			o->a = NULL;
			for (unsigned i = 0; moe_arch_at(i); i++)
				if (!strcmp(optarg, moe_arch_at(i)->gen.name))
					o->a = moe_arch_at(i);
			have_arch = o->a != NULL;
			if (!have_arch)
				return usage_error("--arch '%s': unknown (%s)", optarg, ARCH_NAMES);
			break;
		case 'o':
			o->out = optarg;
			break;
		case O_LAYERS:
			ret = parse_u32(name, optarg, 1, 1024, &o->layers);
			break;
		case O_EMBD:
			ret = parse_u32(name, optarg, 2, 65536, &o->embd);
			break;
		case O_HEADS:
			ret = parse_u32(name, optarg, 1, 1024, &o->heads);
			break;
		case O_KV_HEADS:
			ret = parse_u32(name, optarg, 1, 1024, &o->kv_heads);
			break;
		case O_HEAD_DIM:
			ret = parse_u32(name, optarg, 2, 4096, &o->head_dim);
			break;
		case O_VOCAB:
			ret = parse_u32(name, optarg, 2, 1u << 22, &o->vocab);
			break;
		case O_EXPERTS:
			ret = parse_u32(name, optarg, 0, 4096, &o->experts);
			break;
		case O_EXPERTS_USED:
			ret = parse_u32(name, optarg, 1, 4096, &o->experts_used);
			break;
		case O_EXPERT_FF:
			ret = parse_u32(name, optarg, 1, 1u << 20, &o->expert_ff);
			break;
		case O_SHARED_FF:
			ret = parse_u32(name, optarg, 0, 1u << 20, &o->shared_ff);
			break;
		case O_FF:
			ret = parse_u32(name, optarg, 1, 1u << 20, &o->ff);
			break;
		case O_CTX:
			ret = parse_u32(name, optarg, 1, 1u << 24, &o->ctx);
			break;
		case O_TYPE:
			ret = parse_type(name, optarg, &o->type);
			break;
		case O_TYPE_OTHER:
			ret = parse_type(name, optarg, &o->type_other);
			break;
		case O_TYPE_DOWN:
			ret = parse_type(name, optarg, &o->type_down);
			break;
		case O_ALIGN:
			ret = parse_u32(name, optarg, 1, 1u << 30, &o->align);
			if (!ret && (o->align & (o->align - 1)))
				ret = usage_error("--align %u is not a power of two (32, 4096, 65536, "
						  "...)", o->align);
			break;
		case O_SEED:
			ret = parse_u64(name, optarg, 0, UINT64_MAX, &o->seed);
			break;
		case O_VOCAB_BPE:
			o->vocab_bpe = true;
			break;
		case O_ROUTER_SKEW:
			ret = parse_float(name, optarg, 0, 10, &o->router_skew);
			break;
		case O_LAYER_CORR:
			ret = parse_float(name, optarg, 0, 1, &o->layer_corr);
			break;
		case O_INTERLEAVE:
			ret = parse_u32(name, optarg, 1, 1024, &o->interleave);
			break;
		case O_SLIDING_WINDOW:
			ret = parse_u32(name, optarg, 1, 1u << 24, &o->sliding_window);
			break;
		case O_ROPE_BASE:
			ret = parse_float(name, optarg, 1, 1e12, &d);
			o->rope_base = (float)d;
			break;
		case O_ROPE_BASE_SWA:
			ret = parse_float(name, optarg, 1, 1e12, &d);
			o->rope_base_swa = (float)d;
			break;
		case O_HEAD_DIM_SWA:
			ret = parse_u32(name, optarg, 2, 4096, &o->head_dim_swa);
			break;
		case O_SWA_PATTERN:
			ret = parse_u32(name, optarg, 1, 1024, &o->swa_pattern);
			break;
		case O_PARTIAL_ROTARY:
			ret = parse_float(name, optarg, 1e-6, 1, &d);
			o->partial_rotary = (float)d;
			break;
		case O_YARN_FACTOR:
			ret = parse_float(name, optarg, 0, 1024, &d);
			o->yarn_factor = (float)d;
			if (!ret && d > 0 && d < 1)
				ret = usage_error("--yarn-factor %g: a YaRN factor is at least 1 (or 0 "
						  "for none)", d);
			break;
		case O_ROPE_FREQS_FACTOR:
			ret = parse_float(name, optarg, 0, 1024, &d);
			o->rope_freqs_factor = (float)d;
			if (!ret && d > 0 && d < 1)
				ret = usage_error("--rope-freqs-factor %g: a scaling factor is at least "
						  "1 (or 0 for no rope_freqs)", d);
			break;
		case O_Q_LORA:
			ret = parse_u32(name, optarg, 0, 65536, &o->q_lora);
			break;
		case O_KV_LORA:
			ret = parse_u32(name, optarg, 1, 65536, &o->kv_lora);
			break;
		case O_ROPE_DIM:
			ret = parse_u32(name, optarg, 2, 4096, &o->rope_dim);
			break;
		case O_V_HEAD_DIM:
			ret = parse_u32(name, optarg, 1, 4096, &o->v_head_dim);
			break;
		case O_GROUPS:
			ret = parse_u32(name, optarg, 1, 256, &o->groups);
			break;
		case O_GROUPS_USED:
			ret = parse_u32(name, optarg, 1, 256, &o->groups_used);
			break;
		case O_LEADING_DENSE:
			ret = parse_u32(name, optarg, 0, 1024, &o->leading_dense);
			break;
		case O_NEXTN:
			ret = parse_u32(name, optarg, 0, 16, &o->nextn);
			break;
		case O_PLE:
			ret = parse_u32(name, optarg, 0, 65536, &o->ple);
			break;
		case O_KV_SHARED:
			ret = parse_u32(name, optarg, 0, 1024, &o->kv_shared);
			break;
		case O_TIED:
			o->tied = true;
			break;
		case O_UNTIED:
			o->tied = false;
			break;
		case 'q':
			o->quiet = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default: return usage_error("try `" PROG " --help`");
		}
		if (c == O_TIED || c == O_UNTIED)
			given[O_TIED] = true;
	}
	if (ret)
		return ret;
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (!have_arch)
		return usage_error("--arch is required (%s)", ARCH_NAMES);
	if (!o->out)
		return usage_error("-o FILE is required");
	if (!given[O_EXPERTS_USED])
		o->experts_used = MIN(o->a->gen.experts_used, o->experts);
	if (!given[O_ROPE_BASE])
		o->rope_base = o->a->gen.rope_base;
	if (!given[O_TIED])
		o->tied = o->a->gen.tied;
	if (!given[O_LEADING_DENSE] && (is_arch(o, MOE_ARCH_DEEPSEEK2) ||
					 is_arch(o, MOE_ARCH_GLM4MOE)))
		o->leading_dense = 1;
	if (!given[O_YARN_FACTOR] && is_arch(o, MOE_ARCH_DEEPSEEK2))
		o->yarn_factor = 40.0f;
	return check_opts(o, given);
}


/* ------------------------------------------------------------------- main */

/*
 * The routers are held in memory while the file is written: refuse sizes the
 * machine cannot hold instead of paging until the OOM killer ends it.
 */
static int check_memory(const struct opts *o)
{
	uint64_t n = 0, bytes, ram = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)getpagesize();

	for (uint32_t l = 0; l < o->layers; l++)
		n += mk_is_moe_layer(o, l);
	bytes = n * o->embd * o->experts * sizeof(float);
	if (bytes <= ram / 2)
		return 0;
	fprintf(stderr, PROG ": the routers of %" PRIu64 " MoE layers (%u x %u each) need %"
		PRIu64 " bytes of memory while the model is written, more than half of this "
		"machine's %" PRIu64 ": lower --layers, --embd or --experts\n", n, o->embd,
		o->experts, bytes, ram);
	return 1;
}

/* A file larger than the free space would fail at the end, after minutes of work. */
static int check_space(const char *out, uint64_t bytes)
{
	char *dir = strdup(out), *slash;
	struct statvfs sv;
	struct stat st;
	uint64_t avail;
	int ret = 0;

	/* devices and FIFOs are written through: their filesystem says nothing */
	if (!dir || (stat(out, &st) == 0 && !S_ISREG(st.st_mode))) {
		free(dir);
		return 0;
	}
	slash = strrchr(dir, '/');
	if (slash)
		slash[slash == dir] = 0;
	if (statvfs(slash ? dir : ".", &sv) == 0)
		avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	else
		avail = UINT64_MAX;
	if (bytes > avail) {
		fprintf(stderr, PROG ": %s: the model is %" PRIu64 " bytes and its filesystem has %"
			PRIu64 " free: free some space or make a smaller model\n", out, bytes,
			avail);
		ret = 1;
	}
	free(dir);
	return ret;
}

int main(int argc, char **argv)
{
	struct moe_gguf_writer *w = NULL;
	struct model m = { 0 };
	struct opts o;
	uint64_t bytes = 0;
	int ret;

	tool_init(PROG);
	ret = parse_opts(argc, argv, &o);
	if (ret)
		return ret;
	m.o = &o;
	m.last_pct = -1;
	if (check_memory(&o))
		return 1;
	ret = mk_make_structure(&m);
	if (ret) {
		fprintf(stderr, PROG ": out of memory for the routers\n");
		goto out;
	}
	ret = mk_add_tensors(&m);
	if (ret)
		goto out;
	ret = moe_gguf_writer_create(o.align, &w);
	ret = ret ?: mk_add_metadata(w, &o);
	for (size_t i = 0; !ret && i < m.n_t; i++) {
		struct gtensor *t = &m.t[i];

		ret = moe_gguf_add_tensor_fill(w, t->name, t->type, t->n_dims, t->ne, mk_fill, t);
	}
	ret = ret ?: moe_gguf_layout(w, NULL, &bytes);
	if (ret) {
		if (ret != -ERANGE)
			fprintf(stderr, PROG ": %s\n", *moe_errmsg() ? moe_errmsg() : strerror(-ret));
		goto out;
	}
	ret = check_space(o.out, bytes);
	if (ret)
		goto out;
	for (size_t i = 0; i < ARRAY_LEN(m.fallback) && m.fallback[i].count && !o.quiet; i++)
		fprintf(stderr, PROG ": note: %u tensor(s) (e.g. %s) have rows not a multiple of "
			"the %s block and are written as %s\n", m.fallback[i].count,
			m.fallback[i].example, moe_type_name(m.fallback[i].from),
			moe_type_name(m.fallback[i].to));
	if (moe_type_block_elems(o.type) > 1 || moe_type_block_elems(o.type_other) > 1) {
		ret = moe_threadpool_create(0, &m.pool);
		if (ret) {
			fprintf(stderr, PROG ": %s\n", moe_errmsg());
			goto out;
		}
	}
	m.progress = !o.quiet && isatty(STDERR_FILENO);
	m.bytes_total = bytes;
	ret = moe_gguf_write(w, o.out);
	if (m.progress)
		fprintf(stderr, "\r\033[K");
	if (ret) {
		fprintf(stderr, PROG ": %s\n", moe_errmsg());
		goto out;
	}
	if (!o.quiet)
		printf("%s: %s, %" PRIu64 " bytes, %zu tensors, %u layers (%u MoE), %u experts "
		       "(top-%u), experts %s, other %s\n", o.out, o.a->gen.name, bytes, m.n_t,
		       o.layers, m.n_moe, o.experts, o.experts_used, moe_type_name(o.type),
		       moe_type_name(o.type_other));
out:
	moe_gguf_writer_destroy(w);
	mk_model_free(&m);
	/* a --vocab the built-in BPE text cannot fill is a usage error */
	return ret == -ERANGE ? EXIT_USAGE : ret ? 1 : 0;
}
