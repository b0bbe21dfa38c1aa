/* SPDX-License-Identifier: MIT */
/*
 * moe-mkmodel: write a random-weight Mixture-of-Experts model in GGUF, laid
 * out as llama.cpp expects for the architecture, so that every path of the
 * engine can be tested without downloading a real model.
 *
 * Same options, same bytes: every tensor draws from its own random stream,
 * seeded from --seed and the tensor's name, and the weights are generated
 * with integer arithmetic and basic IEEE float operations (libm only computes
 * a few constants: router popularity, RoPE frequency factors).
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

#include "moe/moe.h"
#include "tool.h"

#define PROG "moe-mkmodel"
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* ------------------------------------------------------------ architectures */

enum arch_id { ARCH_QWEN3MOE, ARCH_LLAMA4, ARCH_MIXTRAL, ARCH_GPTOSS, ARCH_GEMMA4 };

struct arch_desc {
	const char *name;       /* --arch */
	const char *gguf;       /* general.architecture */
	uint32_t experts_used;
	float rope_base;
	float rms_eps;
	bool dense_ffn;         /* has layers or branches with a dense FFN of width --ff */
	bool swa;               /* takes --sliding-window */
	bool shared_expert;
	bool tied;              /* output tied to token_embd by default */
};

static const struct arch_desc arch_table[] = {
	[ARCH_QWEN3MOE] = { .name = "qwen3moe", .gguf = "qwen3moe", .experts_used = 2,
			    .rope_base = 1000000.0f, .rms_eps = 1e-6f },
	[ARCH_LLAMA4] = { .name = "llama4", .gguf = "llama4", .experts_used = 1,
			  .rope_base = 500000.0f, .rms_eps = 1e-5f, .dense_ffn = true,
			  .shared_expert = true },
	[ARCH_MIXTRAL] = { .name = "mixtral", .gguf = "llama", .experts_used = 2,
			   .rope_base = 1000000.0f, .rms_eps = 1e-5f },
	[ARCH_GPTOSS] = { .name = "gpt-oss", .gguf = "gpt-oss", .experts_used = 2,
			  .rope_base = 150000.0f, .rms_eps = 1e-5f, .swa = true },
	[ARCH_GEMMA4] = { .name = "gemma4", .gguf = "gemma4", .experts_used = 2,
			  .rope_base = 1000000.0f, .rms_eps = 1e-6f, .dense_ffn = true, .swa = true,
			  .tied = true },
};

/* ------------------------------------------------------------------ options */

struct opts {
	enum arch_id arch;
	const struct arch_desc *ad;
	const char *out;
	uint32_t layers, embd, heads, kv_heads, head_dim, vocab;
	uint32_t experts, experts_used, expert_ff, shared_ff, ff, ctx;
	uint32_t type, type_other, align, interleave, sliding_window;
	uint32_t type_down;             /* ffn_down_exps of every third MoE layer, 0: --type */
	uint32_t head_dim_swa, swa_pattern;
	float rope_base, rope_base_swa, partial_rotary, yarn_factor, rope_freqs_factor;
	double router_skew, layer_corr;
	uint64_t seed;
	bool vocab_bpe, tied, quiet;
};

enum opt_id {
	O_ARCH = 256, O_LAYERS, O_EMBD, O_HEADS, O_KV_HEADS, O_HEAD_DIM, O_VOCAB, O_EXPERTS,
	O_EXPERTS_USED, O_EXPERT_FF, O_SHARED_FF, O_FF, O_CTX, O_TYPE, O_TYPE_OTHER, O_TYPE_DOWN, O_ALIGN,
	O_SEED, O_VOCAB_BPE, O_ROUTER_SKEW, O_LAYER_CORR, O_INTERLEAVE, O_SLIDING_WINDOW,
	O_ROPE_BASE, O_ROPE_BASE_SWA, O_HEAD_DIM_SWA, O_SWA_PATTERN, O_PARTIAL_ROTARY,
	O_YARN_FACTOR, O_ROPE_FREQS_FACTOR, O_TIED, O_UNTIED, O_COUNT
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
	{ "quiet", no_argument, NULL, 'q' },
	{ "help", no_argument, NULL, 'h' },
	{ 0 },
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " --arch ARCH -o FILE [OPTIONS]\n"
		"Write a random-weight MoE model in GGUF that llama.cpp loads for ARCH.\n\n"
		"  --arch A               qwen3moe | llama4 | mixtral | gpt-oss | gemma4\n"
		"  -o, --output FILE      the model file to write\n"
		"  --layers N             blocks (4)\n"
		"  --embd N               embedding width (256)\n"
		"  --heads N              query heads (4)\n"
		"  --kv-heads N           key/value heads (2)\n"
		"  --head-dim N           head dimension (64; gemma4: full-attention layers)\n"
		"  --vocab N              vocabulary size (512)\n"
		"  --experts N            routed experts per MoE layer (8)\n"
		"  --experts-used N       experts chosen per token (2; llama4 1)\n"
		"  --expert-ff N          expert FFN width (256)\n"
		"  --shared-expert-ff N   shared expert width, 0 = none (llama4: = --expert-ff)\n"
		"  --ff N                 dense FFN width (512; llama4 dense layers, gemma4)\n"
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
		"  --partial-rotary F     gemma4: rotated fraction of full-layer heads (0.25)\n"
		"  --yarn-factor F        gpt-oss: YaRN factor, 0 = no scaling (32)\n"
		"  --rope-freqs-factor F  llama4: Llama-3 RoPE scaling in rope_freqs, 0 = none (16)\n"
		"  --tied, --untied       output tied to token_embd or not (gemma4 tied)\n"
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

/*
 * f16 and bf16 are converted here; other types go through moe_quantize, which
 * answers a zero-length request with 0 exactly when it has a kernel.  q8_K
 * is the K-quants' activation type, which llama.cpp cannot use for weights.
 */
static bool type_supported(uint32_t type)
{
	if (type == MOE_TYPE_F32 || type == MOE_TYPE_F16 || type == MOE_TYPE_BF16)
		return true;
	return type != MOE_TYPE_Q8_K && moe_quantize(type, NULL, NULL, 0) == 0;
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
	if (!type_supported((uint32_t)t))
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
	[O_ROPE_FREQS_FACTOR] = "rope-freqs-factor",
};

/* Options that only some architectures take; giving one to another is a usage error. */
static int check_arch_options(const struct opts *o, const bool *given)
{
	static const struct {
		int opt;
		uint32_t archs;   /* bit per enum arch_id */
		const char *why;
	} only[] = {
		{ O_INTERLEAVE, 1u << ARCH_LLAMA4, "only llama4 interleaves dense and MoE layers" },
		{ O_SLIDING_WINDOW, 1u << ARCH_GPTOSS | 1u << ARCH_GEMMA4,
		  "only gpt-oss and gemma4 have sliding-window layers" },
		{ O_ROPE_BASE_SWA, 1u << ARCH_GEMMA4, "a gemma4 option" },
		{ O_HEAD_DIM_SWA, 1u << ARCH_GEMMA4, "a gemma4 option" },
		{ O_SWA_PATTERN, 1u << ARCH_GEMMA4, "a gemma4 option" },
		{ O_PARTIAL_ROTARY, 1u << ARCH_GEMMA4, "a gemma4 option" },
		{ O_YARN_FACTOR, 1u << ARCH_GPTOSS, "a gpt-oss option" },
		{ O_ROPE_FREQS_FACTOR, 1u << ARCH_LLAMA4, "a llama4 option" },
		{ O_FF, 1u << ARCH_QWEN3MOE | 1u << ARCH_LLAMA4 | 1u << ARCH_GEMMA4,
		  "every layer is MoE and the expert width is --expert-ff" },
	};

	for (size_t i = 0; i < ARRAY_LEN(only); i++)
		if (given[only[i].opt] && !(only[i].archs & (1u << o->arch)))
			return usage_error("--%s does not apply to --arch %s: %s",
					   opt_names[only[i].opt], o->ad->name, only[i].why);
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
	if (o->experts_used > o->experts)
		return usage_error("--experts-used %u exceeds --experts %u", o->experts_used,
				   o->experts);
	if (o->ad->shared_expert) {
		if (!given[O_SHARED_FF])
			o->shared_ff = o->expert_ff;
		if (o->shared_ff != o->expert_ff)
			return usage_error("--shared-expert-ff %u: llama4's shared expert has the "
					   "expert width; give %u or leave it out", o->shared_ff,
					   o->expert_ff);
	} else if (o->shared_ff) {
		return usage_error("--shared-expert-ff %u: llama.cpp's %s has no shared expert; "
				   "use 0", o->shared_ff, o->ad->name);
	}
	if (o->interleave > o->layers)
		return usage_error("--interleave %u exceeds --layers %u: the model would have no "
				   "MoE layer", o->interleave, o->layers);
	if (o->arch == ARCH_GEMMA4) {
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
		.layer_corr = 0.5, .seed = 1,
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
			have_arch = false;
			for (size_t i = 0; i < ARRAY_LEN(arch_table); i++) {
				if (!strcmp(optarg, arch_table[i].name)) {
					o->arch = (enum arch_id)i;
					have_arch = true;
				}
			}
			if (!have_arch)
				return usage_error("--arch '%s': unknown (qwen3moe, llama4, mixtral, "
						   "gpt-oss, gemma4)", optarg);
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
			ret = parse_u32(name, optarg, 1, 4096, &o->experts);
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
		return usage_error("--arch is required (qwen3moe, llama4, mixtral, gpt-oss, gemma4)");
	if (!o->out)
		return usage_error("-o FILE is required");
	o->ad = &arch_table[o->arch];
	if (!given[O_EXPERTS_USED])
		o->experts_used = MIN(o->ad->experts_used, o->experts);
	if (!given[O_ROPE_BASE])
		o->rope_base = o->ad->rope_base;
	if (!given[O_TIED])
		o->tied = o->ad->tied;
	return check_opts(o, given);
}

/* ------------------------------------------------------------------ random */

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The seed of one named stream: FNV-1a of the name, mixed with the model seed and a salt. */
static uint64_t stream_seed(uint64_t seed, const char *name, uint64_t salt)
{
	uint64_t h = 0xcbf29ce484222325ull, s;

	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 0x100000001b3ull;
	s = seed ^ h ^ (salt * 0xd6e8feb86659fd93ull);
	splitmix(&s);
	return s;
}

/*
 * Close to N(0, 1): the sum of four 16-bit uniforms (Irwin-Hall), centred
 * and scaled.  Tails stop at +-3.46, which weights do not miss, and unlike
 * Box-Muller it needs no libm call whose last bit could differ between
 * machines.
 */
static float gauss(uint64_t *s)
{
	uint64_t r = splitmix(s);
	uint32_t sum = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) +
		       (uint32_t)((r >> 32) & 0xffff) + (uint32_t)(r >> 48);

	return ((float)sum - 131070.0f) * (1.7320508f / 65536.0f);
}

/* ------------------------------------------------------------- conversion */

static uint16_t f32_to_f16(float f)
{
	uint32_t x, sign, mant, half, rem, halfway;
	int e;

	memcpy(&x, &f, sizeof(x));
	sign = (x >> 16) & 0x8000;
	mant = x & 0x7fffff;
	if (((x >> 23) & 0xff) == 0xff)
		return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
	e = (int)((x >> 23) & 0xff) - 127 + 15;
	if (e >= 31)
		return (uint16_t)(sign | 0x7c00);
	if (e <= 0) {
		/* subnormal half: round mant * 2^(e - 14 - 23 + 24) to an integer */
		uint32_t shift = (uint32_t)(14 - e);

		if (shift > 24)
			return (uint16_t)sign;
		mant |= 0x800000;
		half = mant >> shift;
		rem = mant & ((1u << shift) - 1);
		halfway = 1u << (shift - 1);
		if (rem > halfway || (rem == halfway && (half & 1)))
			half++;
		return (uint16_t)(sign | half);
	}
	half = ((uint32_t)e << 10) | (mant >> 13);
	rem = mant & 0x1fff;
	/* a carry out of the mantissa correctly bumps the exponent (up to inf) */
	if (rem > 0x1000 || (rem == 0x1000 && (half & 1)))
		half++;
	return (uint16_t)(sign | half);
}

static uint16_t f32_to_bf16(float f)
{
	uint32_t x;

	memcpy(&x, &f, sizeof(x));
	if ((x & 0x7fffffff) > 0x7f800000)
		return (uint16_t)((x >> 16) | 0x40);
	return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

static int convert(uint32_t type, const float *src, void *dst, uint64_t n)
{
	uint16_t *h = dst;
	int64_t ret;

	switch (type) {
	case MOE_TYPE_F16:
		for (uint64_t i = 0; i < n; i++)
			h[i] = f32_to_f16(src[i]);
		break;
	case MOE_TYPE_BF16:
		for (uint64_t i = 0; i < n; i++)
			h[i] = f32_to_bf16(src[i]);
		break;
	case MOE_TYPE_F32:
		memcpy(dst, src, n * sizeof(float));
		break;
	default:
		ret = moe_quantize(type, src, dst, (int64_t)n);
		if (ret < 0)
			return (int)ret;
		break;
	}
	return 0;
}

/* Quantizing dominates the run time of quantized models: rows are split over the CPUs. */
struct convert_job {
	uint32_t type;
	const float *src;
	uint8_t *dst;
	uint64_t rows, ne0, row_bytes;
	int err;
};

static void convert_part(void *arg, int ith, int nth)
{
	struct convert_job *j = arg;
	uint64_t r0 = j->rows * (uint64_t)ith / (uint64_t)nth;
	uint64_t r1 = j->rows * (uint64_t)(ith + 1) / (uint64_t)nth;
	int ret;

	if (r0 == r1)
		return;
	/* whole rows, so every quant block lies inside one row */
	ret = convert(j->type, j->src + r0 * j->ne0, j->dst + r0 * j->row_bytes,
		      (r1 - r0) * j->ne0);
	if (ret)
		__atomic_store_n(&j->err, ret, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ model */

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

static bool is_moe_layer(const struct opts *o, uint32_t l)
{
	return o->arch != ARCH_LLAMA4 || (l + 1) % o->interleave == 0;
}

/* gemma4: every swa_pattern-th layer is full attention, and so is the last one. */
static bool is_swa_layer(const struct opts *o, uint32_t l)
{
	if (o->arch == ARCH_GPTOSS)
		return l % 2 == 0;
	if (o->arch != ARCH_GEMMA4)
		return false;
	return (l + 1) % o->swa_pattern != 0 && l != o->layers - 1;
}

static uint32_t layer_head_dim(const struct opts *o, uint32_t l)
{
	return o->arch == ARCH_GEMMA4 && is_swa_layer(o, l) ? o->head_dim_swa : o->head_dim;
}

static uint32_t pick_type(struct model *m, enum tclass tc, uint32_t n_dims, uint64_t ne0,
			  const char *name)
{
	uint32_t want = tc == TC_EXPERT ? m->o->type : m->o->type_other;
	uint32_t got, layer;
	int used = 0;

	if (tc == TC_EXPERT && m->o->type_down &&
	    sscanf(name, "blk.%u.ffn_down_exps.weigh%n", &layer, &used) == 1 && used && layer % 3 == 0)
		want = m->o->type_down;

	if (tc == TC_F32 || n_dims < 2)
		return MOE_TYPE_F32;
	if (ne0 % moe_type_block_elems(want) == 0)
		return want;
	got = type_supported(MOE_TYPE_Q8_0) && ne0 % moe_type_block_elems(MOE_TYPE_Q8_0) == 0 ?
		      MOE_TYPE_Q8_0 : MOE_TYPE_F16;
	/* at most two asked types and two fallbacks each: the table cannot overflow */
	for (size_t i = 0; i < ARRAY_LEN(m->fallback); i++) {
		struct fallback *fb = &m->fallback[i];

		if (!fb->count) {
			fb->from = want;
			fb->to = got;
			snprintf(fb->example, sizeof(fb->example), "%s", name);
		}
		if (fb->from == want && fb->to == got) {
			fb->count++;
			break;
		}
	}
	return got;
}

static int add(struct model *m, enum tclass tc, enum gen_kind kind, float scale,
	       const float *table, uint32_t n_dims, uint64_t ne0, uint64_t ne1, uint64_t ne2,
	       const char *fmt, ...) __attribute__((format(printf, 10, 11)));
static int add(struct model *m, enum tclass tc, enum gen_kind kind, float scale,
	       const float *table, uint32_t n_dims, uint64_t ne0, uint64_t ne1, uint64_t ne2,
	       const char *fmt, ...)
{
	struct gtensor *t;
	va_list ap;
	int n;

	if (m->n_t == m->cap_t) {
		size_t cap = m->cap_t ? m->cap_t * 2 : 256;
		struct gtensor *p = realloc(m->t, cap * sizeof(*p));

		if (!p) {
			fprintf(stderr, PROG ": out of memory\n");
			return -ENOMEM;
		}
		m->t = p;
		m->cap_t = cap;
	}
	t = &m->t[m->n_t];
	memset(t, 0, sizeof(*t));
	va_start(ap, fmt);
	n = vsnprintf(t->name, sizeof(t->name), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(t->name)) {
		fprintf(stderr, PROG ": tensor name too long\n");
		return -EINVAL;
	}
	t->n_dims = n_dims;
	t->ne[0] = ne0;
	t->ne[1] = ne1;
	t->ne[2] = ne2;
	t->kind = kind;
	t->scale = scale;
	t->table = table;
	t->seed = stream_seed(m->o->seed, t->name, 0);
	t->m = m;
	t->type = pick_type(m, tc, n_dims, ne0, t->name);
	m->n_t++;
	return 0;
}

/* Weights of a projection read by a norm-preserving input: unit-variance outputs. */
static float w_in(uint64_t fan_in)
{
	return 1.0f / sqrtf((float)fan_in);
}

/*
 * Projections that write into the residual stream are scaled down by
 * sqrt(2 * layers) so the stream's variance stays bounded (as GPT-2's
 * initialisation does) and the embedding's direction survives to the
 * last layer, where the routers still see it.
 */
static float w_out(const struct model *m, uint64_t fan_in)
{
	return w_in(fan_in) / sqrtf(2.0f * (float)m->o->layers);
}

#define ONES(m, n, ...) add(m, TC_F32, GEN_CONST, 1.0f, NULL, 1, n, 1, 1, __VA_ARGS__)
#define BIAS(m, d, n0, n1, ...) \
	add(m, TC_F32, GEN_NORMAL, 0.02f, NULL, d, n0, n1, 1, __VA_ARGS__)

static int add_attention(struct model *m, uint32_t l)
{
	const struct opts *o = m->o;
	uint32_t hd = layer_head_dim(o, l);
	uint64_t n = o->embd, q = (uint64_t)o->heads * hd, kv = (uint64_t)o->kv_heads * hd;
	float post = o->arch == ARCH_GEMMA4 ? w_out(m, 1) : 1.0f;
	int ret = 0;

	ret = ret ?: ONES(m, n, "blk.%u.attn_norm.weight", l);
	ret = ret ?: add(m, TC_OTHER, GEN_NORMAL, w_in(n), NULL, 2, n, q, 1,
			 "blk.%u.attn_q.weight", l);
	ret = ret ?: add(m, TC_OTHER, GEN_NORMAL, w_in(n), NULL, 2, n, kv, 1,
			 "blk.%u.attn_k.weight", l);
	/* gemma4's full-attention layers use K as V, as the real checkpoints do */
	if (!(o->arch == ARCH_GEMMA4 && !is_swa_layer(o, l)))
		ret = ret ?: add(m, TC_OTHER, GEN_NORMAL, w_in(n), NULL, 2, n, kv, 1,
				 "blk.%u.attn_v.weight", l);
	ret = ret ?: add(m, TC_OTHER, GEN_NORMAL, w_out(m, q), NULL, 2, q, n, 1,
			 "blk.%u.attn_output.weight", l);
	if (o->arch == ARCH_QWEN3MOE || o->arch == ARCH_GEMMA4) {
		ret = ret ?: ONES(m, hd, "blk.%u.attn_q_norm.weight", l);
		ret = ret ?: ONES(m, hd, "blk.%u.attn_k_norm.weight", l);
	}
	if (o->arch == ARCH_GPTOSS) {
		ret = ret ?: BIAS(m, 1, q, 1, "blk.%u.attn_q.bias", l);
		ret = ret ?: BIAS(m, 1, kv, 1, "blk.%u.attn_k.bias", l);
		ret = ret ?: BIAS(m, 1, kv, 1, "blk.%u.attn_v.bias", l);
		ret = ret ?: BIAS(m, 1, n, 1, "blk.%u.attn_output.bias", l);
		ret = ret ?: add(m, TC_F32, GEN_NORMAL, 0.1f, NULL, 1, o->heads, 1, 1,
				 "blk.%u.attn_sinks.weight", l);
	}
	if (o->arch == ARCH_GPTOSS || o->arch == ARCH_GEMMA4)
		ret = ret ?: add(m, TC_F32, GEN_CONST, post, NULL, 1, n, 1, 1,
				 "blk.%u.post_attention_norm.weight", l);
	return ret;
}

static int add_dense_ffn(struct model *m, uint32_t l, uint64_t ff, const char *suffix)
{
	uint64_t n = m->o->embd;
	int ret = 0;

	ret = ret ?: add(m, TC_OTHER, GEN_NORMAL, w_in(n), NULL, 2, n, ff, 1,
			 "blk.%u.ffn_gate%s.weight", l, suffix);
	ret = ret ?: add(m, TC_OTHER, GEN_NORMAL, w_in(n), NULL, 2, n, ff, 1,
			 "blk.%u.ffn_up%s.weight", l, suffix);
	ret = ret ?: add(m, TC_OTHER, GEN_NORMAL, w_out(m, ff), NULL, 2, ff, n, 1,
			 "blk.%u.ffn_down%s.weight", l, suffix);
	return ret;
}

static int add_experts(struct model *m, uint32_t l)
{
	const struct opts *o = m->o;
	uint64_t n = o->embd, f = o->expert_ff, e = o->experts;
	/* gemma4's router reads RMSNorm(h) / sqrt(n_embd); undo that factor in the weights */
	float rscale = o->arch == ARCH_GEMMA4 ? sqrtf((float)n) : 1.0f;
	int ret = 0;

	ret = ret ?: add(m, TC_F32, GEN_TABLE, rscale, m->routers[l], 2, n, e, 1,
			 "blk.%u.ffn_gate_inp.weight", l);
	if (o->arch == ARCH_GPTOSS)
		ret = ret ?: BIAS(m, 1, e, 1, "blk.%u.ffn_gate_inp.bias", l);
	if (o->arch == ARCH_GEMMA4) {
		ret = ret ?: ONES(m, n, "blk.%u.ffn_gate_inp.scale", l);
		ret = ret ?: add(m, TC_EXPERT, GEN_NORMAL, w_in(n), NULL, 3, n, 2 * f, e,
				 "blk.%u.ffn_gate_up_exps.weight", l);
	} else {
		ret = ret ?: add(m, TC_EXPERT, GEN_NORMAL, w_in(n), NULL, 3, n, f, e,
				 "blk.%u.ffn_gate_exps.weight", l);
		ret = ret ?: add(m, TC_EXPERT, GEN_NORMAL, w_in(n), NULL, 3, n, f, e,
				 "blk.%u.ffn_up_exps.weight", l);
	}
	ret = ret ?: add(m, TC_EXPERT, GEN_NORMAL, w_out(m, f), NULL, 3, f, n, e,
			 "blk.%u.ffn_down_exps.weight", l);
	if (o->arch == ARCH_GPTOSS) {
		ret = ret ?: BIAS(m, 2, f, e, "blk.%u.ffn_gate_exps.bias", l);
		ret = ret ?: BIAS(m, 2, f, e, "blk.%u.ffn_up_exps.bias", l);
		ret = ret ?: BIAS(m, 2, n, e, "blk.%u.ffn_down_exps.bias", l);
	}
	if (o->arch == ARCH_GEMMA4)
		ret = ret ?: ONES(m, e, "blk.%u.ffn_down_exps.scale", l);
	return ret;
}

static int add_layer(struct model *m, uint32_t l)
{
	const struct opts *o = m->o;
	uint64_t n = o->embd;
	int ret = add_attention(m, l);

	switch (o->arch) {
	case ARCH_QWEN3MOE:
	case ARCH_MIXTRAL:
		ret = ret ?: ONES(m, n, "blk.%u.ffn_norm.weight", l);
		ret = ret ?: add_experts(m, l);
		break;
	case ARCH_LLAMA4:
		ret = ret ?: ONES(m, n, "blk.%u.ffn_norm.weight", l);
		if (is_moe_layer(o, l)) {
			ret = ret ?: add_experts(m, l);
			ret = ret ?: add_dense_ffn(m, l, o->shared_ff, "_shexp");
		} else {
			ret = ret ?: add_dense_ffn(m, l, o->ff, "");
		}
		break;
	case ARCH_GPTOSS:
		ret = ret ?: add_experts(m, l);
		break;
	case ARCH_GEMMA4:
		ret = ret ?: ONES(m, n, "blk.%u.ffn_norm.weight", l);
		ret = ret ?: add_dense_ffn(m, l, o->ff, "");
		ret = ret ?: add(m, TC_F32, GEN_CONST, w_out(m, 1), NULL, 1, n, 1, 1,
				 "blk.%u.post_ffw_norm.weight", l);
		ret = ret ?: ONES(m, n, "blk.%u.pre_ffw_norm_2.weight", l);
		ret = ret ?: ONES(m, n, "blk.%u.post_ffw_norm_1.weight", l);
		ret = ret ?: ONES(m, n, "blk.%u.post_ffw_norm_2.weight", l);
		ret = ret ?: add_experts(m, l);
		ret = ret ?: ONES(m, 1, "blk.%u.layer_output_scale.weight", l);
		break;
	}
	return ret;
}

static int add_tensors(struct model *m)
{
	const struct opts *o = m->o;
	uint64_t n = o->embd;
	/* token rows feed RMSNorm, except where they are scaled by sqrt(n) or are the output */
	float escale = o->arch == ARCH_GEMMA4 || o->tied ? w_in(n) : 1.0f;
	int ret = add(m, TC_OTHER, GEN_EMBD, escale, NULL, 2, n, o->vocab, 1, "token_embd.weight");

	if (m->rope_freqs)
		ret = ret ?: add(m, TC_F32, GEN_TABLE, 1.0f, m->rope_freqs, 1, o->head_dim / 2, 1, 1,
				 "rope_freqs.weight");
	for (uint32_t l = 0; !ret && l < o->layers; l++)
		ret = add_layer(m, l);
	ret = ret ?: ONES(m, n, "output_norm.weight");
	if (!o->tied)
		ret = ret ?: add(m, TC_OTHER, GEN_NORMAL, w_in(n), NULL, 2, n, o->vocab, 1,
				 "output.weight");
	return ret;
}

/*
 * Routers.  Each MoE layer gets fresh Gaussian rows plus, with --router-skew,
 * a Zipf-like popularity: expert e of popularity rank r gets a logit bias of
 * about -s*ln(1 + r) for any hidden state, carried by the component along
 * the mean direction every token embedding shares.  With
 * --layer-correlation c, layer l's router is c * (layer l-1's) +
 * sqrt(1 - c^2) * (fresh), which keeps the logit variance of a fresh router
 * while adjacent layers pick related experts for the same hidden state.
 */
static int fresh_router(struct model *m, uint32_t l, float *r)
{
	const struct opts *o = m->o;
	uint32_t n = o->embd, e = o->experts;
	uint64_t s = stream_seed(o->seed, "router", l + 1);
	float std = w_in(n);
	uint32_t *rank;
	double mean = 0;

	for (uint64_t i = 0; i < (uint64_t)n * e; i++)
		r[i] = gauss(&s) * std;
	if (o->router_skew <= 0)
		return 0;
	/*
	 * The noise must not see the mean direction, or it would add a random
	 * per-expert bias of its own; and it reads only the token-specific part
	 * of x, of RMS sqrt(1 - kappa^2), so it is scaled up to keep logits of
	 * unit variance.
	 */
	for (uint32_t i = 0; i < e; i++) {
		float *row = r + (uint64_t)i * n;
		double d = 0;

		for (uint32_t j = 0; j < n; j++)
			d += (double)row[j] * m->mu[j];
		for (uint32_t j = 0; j < n; j++)
			row[j] = (float)((row[j] - d / n * m->mu[j]) /
					 sqrt(1.0 - (double)m->kappa * m->kappa));
	}
	rank = malloc(e * sizeof(*rank));
	if (!rank)
		return -ENOMEM;
	for (uint32_t i = 0; i < e; i++)
		rank[i] = i;
	for (uint32_t i = e - 1; i > 0; i--) {
		uint32_t j = (uint32_t)(splitmix(&s) % (i + 1)), t = rank[i];

		rank[i] = rank[j];
		rank[j] = t;
	}
	for (uint32_t i = 0; i < e; i++)
		mean += log(1.0 + rank[i]);
	mean /= e;
	for (uint32_t i = 0; i < e; i++) {
		/* x . mu ~= kappa * n for x = RMSNorm(h), so this shifts the logit by `shift` */
		double shift = -o->router_skew * (log(1.0 + rank[i]) - mean);
		float a = (float)(shift / (m->kappa * n));

		for (uint32_t j = 0; j < n; j++)
			r[(uint64_t)i * n + j] += a * m->mu[j];
	}
	free(rank);
	return 0;
}

/*
 * Llama 3 style RoPE scaling, which real Llama 4 files carry as rope_freqs:
 * with an original context of 8192, wavelengths under 8192/4 keep their
 * frequency, those over 8192 are divided by the factor, and the band between
 * blends the two.
 */
static float *llama3_rope_freqs(const struct opts *o)
{
	const double orig = 8192, low = 1, high = 4, factor = o->rope_freqs_factor;
	uint32_t half = o->head_dim / 2;
	float *f = malloc(half * sizeof(float));

	for (uint32_t i = 0; f && i < half; i++) {
		double wavelen = 2 * M_PI * pow(o->rope_base, 2.0 * i / o->head_dim);
		double smooth = (orig / wavelen - low) / (high - low);

		if (wavelen < orig / high)
			f[i] = 1.0f;
		else if (wavelen > orig / low)
			f[i] = (float)factor;
		else
			f[i] = (float)(1.0 / ((1 - smooth) / factor + smooth));
	}
	return f;
}

static int make_structure(struct model *m)
{
	const struct opts *o = m->o;
	uint32_t n = o->embd;
	uint64_t s = stream_seed(o->seed, "mean-direction", 0);
	float c = (float)o->layer_corr, c2 = sqrtf(1.0f - c * c);
	const float *prev = NULL;
	double ss = 0;

	m->kappa = o->router_skew > 0 ? 0.5f : 0.0f;
	m->mu = malloc(n * sizeof(float));
	m->routers = calloc(o->layers, sizeof(*m->routers));
	if (!m->mu || !m->routers)
		return -ENOMEM;
	for (uint32_t j = 0; j < n; j++) {
		m->mu[j] = gauss(&s);
		ss += (double)m->mu[j] * m->mu[j];
	}
	for (uint32_t j = 0; j < n; j++)
		m->mu[j] = (float)(m->mu[j] / sqrt(ss / n));
	for (uint32_t l = 0; l < o->layers; l++) {
		float *r;
		int ret;

		if (!is_moe_layer(o, l))
			continue;
		r = malloc((size_t)n * o->experts * sizeof(float));
		if (!r)
			return -ENOMEM;
		m->routers[l] = r;
		ret = fresh_router(m, l, r);
		if (ret)
			return ret;
		if (prev)
			for (uint64_t i = 0; i < (uint64_t)n * o->experts; i++)
				r[i] = c * prev[i] + c2 * r[i];
		prev = r;
		m->n_moe++;
	}
	if (o->arch == ARCH_GEMMA4) {
		/* "proportional" partial RoPE: the first pairs rotate, the rest are frozen */
		uint32_t half = o->head_dim / 2, rot = (uint32_t)(o->partial_rotary * half);

		m->rope_freqs = malloc(half * sizeof(float));
		if (!m->rope_freqs)
			return -ENOMEM;
		for (uint32_t i = 0; i < half; i++)
			m->rope_freqs[i] = i < rot ? 1.0f : 1e30f;
	}
	if (o->arch == ARCH_LLAMA4 && o->rope_freqs_factor > 0) {
		m->rope_freqs = llama3_rope_freqs(o);
		if (!m->rope_freqs)
			return -ENOMEM;
	}
	return 0;
}

static void model_free(struct model *m)
{
	if (m->routers)
		for (uint32_t l = 0; l < m->o->layers; l++)
			free(m->routers[l]);
	free(m->routers);
	free(m->mu);
	free(m->rope_freqs);
	free(m->scratch);
	free(m->t);
	moe_threadpool_destroy(m->pool);
}

static void show_progress(struct model *m, uint64_t bytes)
{
	int pct;

	m->bytes_done += bytes;
	if (!m->progress || !m->bytes_total)
		return;
	pct = (int)(m->bytes_done * 100 / m->bytes_total);
	if (pct != m->last_pct) {
		m->last_pct = pct;
		fprintf(stderr, "\r" PROG ": writing %s: %3d%%", m->o->out, pct);
	}
}

static int fill(void *ctx, uint64_t row, uint64_t n_rows, void *dst)
{
	struct gtensor *t = ctx;
	struct model *m = t->m;
	uint64_t ne0 = t->ne[0], n = n_rows * ne0;
	float *f, a;
	int ret;

	if (n > m->scratch_cap) {
		f = realloc(m->scratch, n * sizeof(float));
		if (!f) {
			fprintf(stderr, PROG ": out of memory generating %s\n", t->name);
			return -ENOMEM;
		}
		m->scratch = f;
		m->scratch_cap = n;
	}
	f = m->scratch;
	if (row == 0)
		t->state = t->seed;
	switch (t->kind) {
	case GEN_NORMAL:
		for (uint64_t i = 0; i < n; i++)
			f[i] = gauss(&t->state) * t->scale;
		break;
	case GEN_CONST:
		for (uint64_t i = 0; i < n; i++)
			f[i] = t->scale;
		break;
	case GEN_TABLE:
		for (uint64_t i = 0; i < n; i++)
			f[i] = t->table[row * ne0 + i] * t->scale;
		break;
	case GEN_EMBD:
		a = sqrtf(1.0f - m->kappa * m->kappa);
		for (uint64_t i = 0; i < n; i++)
			f[i] = (a * gauss(&t->state) + m->kappa * m->mu[i % ne0]) * t->scale;
		break;
	}
	if (m->pool && moe_type_block_elems(t->type) > 1) {
		struct convert_job j = {
			.type = t->type, .src = f, .dst = dst, .rows = n_rows, .ne0 = ne0,
			.row_bytes = (uint64_t)moe_type_row_bytes(t->type, ne0),
		};

		moe_threadpool_run(m->pool, convert_part, &j);
		ret = j.err;
	} else {
		ret = convert(t->type, f, dst, n);
	}
	if (ret)
		return ret;
	show_progress(m, n * moe_type_block_bytes(t->type) / moe_type_block_elems(t->type));
	return 0;
}

/* -------------------------------------------------------------- tokenizer */

/*
 * The --vocab-bpe vocabulary is learned at run time from this text with
 * byte-level BPE, so that every merge yields a token of the vocabulary and
 * the merges are ones a real tokenizer could have.
 */
static const char bpe_corpus[] =
	"The model streams the weights of its experts from the disk into the memory of the "
	"device when the router asks for them, and it keeps the most popular experts there "
	"so that the next token finds them without waiting. A mixture of experts activates "
	"only a few experts for every token, but every expert must be reachable at any time. "
	"The weights that every token needs, such as attention, norms, routers, embeddings "
	"and the output, stay resident; the experts are cached, evicted and fetched again. "
	"Reading from the drive with direct input and output avoids the page cache, so the "
	"budgets that the operator gives are honest and the cache is the only copy in memory. "
	"While one layer computes, the prefetcher predicts which experts the next layers will "
	"want, from the router of the next layer applied to the current hidden state, from "
	"transition statistics between adjacent layers and from the popularity of each expert. "
	"Quantized tensors are read in blocks: a block holds scales and packed integers, and "
	"the kernels turn them back into numbers while they multiply matrices with vectors. "
	"Tests generate small models with random weights at test time, write them in the same "
	"container format that real models use, and compare what the engine computes with a "
	"naive reference in double precision. The tokenizer splits text into words, numbers "
	"and punctuation, then merges the most frequent pairs of symbols into longer tokens "
	"until the vocabulary is full. Hello world, this is a test: 1234 + 5678 = 6912, "
	"isn't it? Yes, it is! We're testing the tokenizer's handling of contractions, "
	"digits, symbols (like #, $, %, & and @) and new lines.\n"
	"Every engineer on the project reads the design, writes the code, tests it and "
	"measures how fast it runs on the machines that the project has, then writes down "
	"what they found so that the others can reproduce the numbers and improve them.";

struct bpe {
	char **tok;             /* token strings, GPT-2 byte-to-unicode form */
	uint32_t n_tok, cap_tok;
	char **merges;
	uint32_t n_merges, cap_merges;
};

/* GPT-2's byte-to-unicode map: printable bytes map to themselves, others to U+0100 and up. */
static uint32_t byte_cp(uint8_t b)
{
	uint32_t k = 0;

	if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)
		return b;
	for (uint32_t c = 0; c < b; c++)
		if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || c >= 174))
			k++;
	return 256 + k;
}

static size_t utf8_put(char *p, uint32_t cp)
{
	if (cp < 0x80) {
		p[0] = (char)cp;
		return 1;
	}
	p[0] = (char)(0xc0 | (cp >> 6));
	p[1] = (char)(0x80 | (cp & 0x3f));
	return 2;
}

static int bpe_push(char ***arr, uint32_t *n, uint32_t *cap, char *s)
{
	if (!s)
		return -ENOMEM;
	if (*n == *cap) {
		uint32_t c = *cap ? *cap * 2 : 512;
		char **p = realloc(*arr, c * sizeof(*p));

		if (!p) {
			free(s);
			return -ENOMEM;
		}
		*arr = p;
		*cap = c;
	}
	(*arr)[(*n)++] = s;
	return 0;
}

static void bpe_free(struct bpe *b)
{
	for (uint32_t i = 0; i < b->n_tok; i++)
		free(b->tok[i]);
	for (uint32_t i = 0; i < b->n_merges; i++)
		free(b->merges[i]);
	free(b->tok);
	free(b->merges);
}

static int32_t bpe_find(const struct bpe *b, const char *s)
{
	for (uint32_t i = 0; i < b->n_tok; i++)
		if (!strcmp(b->tok[i], s))
			return (int32_t)i;
	return -1;
}

static char char_class(char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
		return 'L';
	if (c >= '0' && c <= '9')
		return 'D';
	if (c == ' ' || c == '\n' || !c)
		return c;
	return 'P';
}

/*
 * Learn merges until the vocabulary has @n_normal tokens: the most frequent
 * adjacent pair inside a chunk is merged, ties go to the pair seen first.
 */
static int bpe_build(struct bpe *b, uint32_t n_normal)
{
	size_t len = sizeof(bpe_corpus) - 1;
	uint32_t *sym = malloc(len * sizeof(*sym));
	uint8_t *word_end = calloc(len, 1);
	size_t n = len;
	int ret = 0;

	if (!sym || !word_end) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t c = 0; c < 256; c++) {
		char s[4] = { 0 };

		utf8_put(s, byte_cp((uint8_t)c));
		ret = bpe_push(&b->tok, &b->n_tok, &b->cap_tok, strdup(s));
		if (ret)
			goto out;
	}
	for (size_t i = 0; i < len; i++) {
		char a = char_class(bpe_corpus[i]), c = char_class(bpe_corpus[i + 1]);

		sym[i] = (uint8_t)bpe_corpus[i];
		/*
		 * A pair never spans two pre-tokenizer chunks.  Chunks follow the
		 * LLAMA3 split roughly: runs of letters, of digits, of punctuation,
		 * and a space joins the letters or punctuation that follow it.
		 */
		if (i + 1 == len)
			word_end[i] = 1;
		else if (a == ' ')
			word_end[i] = c != 'L' && c != 'P';
		else
			word_end[i] = a != c || a == '\n';
	}
	while (b->n_tok < n_normal) {
		uint32_t best_a = 0, best_b = 0, best = 0;
		size_t w = 0;
		char *s;
		int32_t id;

		/* pair counts, found by a linear scan per candidate: the corpus is small */
		for (size_t i = 0; i + 1 < n; i++) {
			uint32_t c = 0;

			if (word_end[i])
				continue;
			for (size_t j = 0; j + 1 < n; j++)
				if (!word_end[j] && sym[j] == sym[i] && sym[j + 1] == sym[i + 1])
					c++;
			if (c > best) {
				best = c;
				best_a = sym[i];
				best_b = sym[i + 1];
			}
		}
		if (!best) {
			ret = -ERANGE;
			goto out;
		}
		if (asprintf(&s, "%s%s", b->tok[best_a], b->tok[best_b]) < 0) {
			ret = -ENOMEM;
			goto out;
		}
		id = bpe_find(b, s);
		if (id < 0) {
			id = (int32_t)b->n_tok;
			ret = bpe_push(&b->tok, &b->n_tok, &b->cap_tok, s);
		} else {
			free(s);
		}
		if (!ret) {
			char *mg;

			if (asprintf(&mg, "%s %s", b->tok[best_a], b->tok[best_b]) < 0)
				mg = NULL;
			ret = bpe_push(&b->merges, &b->n_merges, &b->cap_merges, mg);
		}
		if (ret)
			goto out;
		for (size_t i = 0; i < n; i++) {
			if (i + 1 < n && !word_end[i] && sym[i] == best_a && sym[i + 1] == best_b) {
				sym[w] = (uint32_t)id;
				word_end[w++] = word_end[i + 1];
				i++;
			} else {
				sym[w] = sym[i];
				word_end[w++] = word_end[i];
			}
		}
		n = w;
	}
out:
	free(sym);
	free(word_end);
	return ret;
}

static int add_tokenizer(struct moe_gguf_writer *w, const struct opts *o)
{
	struct bpe b = { 0 };
	int32_t *types = NULL;
	int ret;

	if (!o->vocab_bpe)
		return moe_gguf_set_str(w, "tokenizer.ggml.model", "none");
	ret = bpe_build(&b, o->vocab - 2);
	if (ret == -ERANGE) {
		fprintf(stderr, PROG ": --vocab %u: the built-in BPE text yields only %u tokens; "
			"use --vocab %u or less\n", o->vocab, b.n_tok + 2, b.n_tok + 2);
		goto out;
	}
	ret = ret ?: bpe_push(&b.tok, &b.n_tok, &b.cap_tok, strdup("<|bos|>"));
	ret = ret ?: bpe_push(&b.tok, &b.n_tok, &b.cap_tok, strdup("<|eos|>"));
	if (ret)
		goto out;
	types = malloc(b.n_tok * sizeof(*types));
	if (!types) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < b.n_tok; i++)
		types[i] = i + 2 < b.n_tok ? 1 : 3;   /* normal, control */
	ret = ret ?: moe_gguf_set_str(w, "tokenizer.ggml.model", "gpt2");
	ret = ret ?: moe_gguf_set_str(w, "tokenizer.ggml.pre", "llama-bpe");
	ret = ret ?: moe_gguf_set_arr_str(w, "tokenizer.ggml.tokens",
					  (const char *const *)b.tok, b.n_tok);
	ret = ret ?: moe_gguf_set_arr(w, "tokenizer.ggml.token_type", MOE_META_I32, types,
				      b.n_tok);
	ret = ret ?: moe_gguf_set_arr_str(w, "tokenizer.ggml.merges",
					  (const char *const *)b.merges, b.n_merges);
	ret = ret ?: moe_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", b.n_tok - 2);
	ret = ret ?: moe_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", b.n_tok - 1);
	ret = ret ?: moe_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", true);
	ret = ret ?: moe_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", false);
out:
	free(types);
	bpe_free(&b);
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

static int add_metadata(struct moe_gguf_writer *w, const struct opts *o)
{
	const char *a = o->ad->gguf;
	char name[96], key[128];
	int ret = 0;

#define KEY(suffix) (snprintf(key, sizeof(key), "%s." suffix, a), key)
	snprintf(name, sizeof(name), PROG " %s seed %" PRIu64, o->ad->name, o->seed);
	ret = ret ?: moe_gguf_set_str(w, "general.architecture", a);
	ret = ret ?: moe_gguf_set_str(w, "general.name", name);
	if (file_type_plus1[o->type])
		ret = ret ?: moe_gguf_set_u32(w, "general.file_type", file_type_plus1[o->type] - 1u);
	if (moe_type_block_elems(o->type) > 1 || moe_type_block_elems(o->type_other) > 1)
		ret = ret ?: moe_gguf_set_u32(w, "general.quantization_version", 2);
	ret = ret ?: moe_gguf_set_u32(w, KEY("block_count"), o->layers);
	ret = ret ?: moe_gguf_set_u32(w, KEY("context_length"), o->ctx);
	ret = ret ?: moe_gguf_set_u32(w, KEY("embedding_length"), o->embd);
	ret = ret ?: moe_gguf_set_u32(w, KEY("vocab_size"), o->vocab);
	/* Mixtral and gpt-oss files give the expert width here; the others a dense width */
	ret = ret ?: moe_gguf_set_u32(w, KEY("feed_forward_length"),
				      o->arch == ARCH_MIXTRAL || o->arch == ARCH_GPTOSS ?
					      o->expert_ff : o->ff);
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.head_count"), o->heads);
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.head_count_kv"), o->kv_heads);
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.key_length"), o->head_dim);
	ret = ret ?: moe_gguf_set_u32(w, KEY("attention.value_length"), o->head_dim);
	ret = ret ?: moe_gguf_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), o->ad->rms_eps);
	ret = ret ?: moe_gguf_set_f32(w, KEY("rope.freq_base"), o->rope_base);
	ret = ret ?: moe_gguf_set_u32(w, KEY("rope.dimension_count"), o->head_dim);
	ret = ret ?: moe_gguf_set_u32(w, KEY("expert_count"), o->experts);
	ret = ret ?: moe_gguf_set_u32(w, KEY("expert_used_count"), o->experts_used);
	if (o->arch != ARCH_MIXTRAL)
		ret = ret ?: moe_gguf_set_u32(w, KEY("expert_feed_forward_length"), o->expert_ff);
	if (o->arch == ARCH_LLAMA4)
		ret = ret ?: moe_gguf_set_u32(w, KEY("interleave_moe_layer_step"), o->interleave);
	if (o->ad->swa)
		ret = ret ?: moe_gguf_set_u32(w, KEY("attention.sliding_window"), o->sliding_window);
	if (o->arch == ARCH_GPTOSS && o->yarn_factor > 0) {
		ret = ret ?: moe_gguf_set_str(w, KEY("rope.scaling.type"), "yarn");
		ret = ret ?: moe_gguf_set_f32(w, KEY("rope.scaling.factor"), o->yarn_factor);
		ret = ret ?: moe_gguf_set_u32(w, KEY("rope.scaling.original_context_length"),
					      MAX(1, (uint32_t)(o->ctx / o->yarn_factor)));
	}
	if (o->arch == ARCH_GEMMA4) {
		uint8_t *pattern = malloc(o->layers);

		if (!pattern)
			return -ENOMEM;
		for (uint32_t l = 0; l < o->layers; l++)
			pattern[l] = is_swa_layer(o, l);
		ret = ret ?: moe_gguf_set_arr(w, KEY("attention.sliding_window_pattern"),
					      MOE_META_BOOL, pattern, o->layers);
		free(pattern);
		ret = ret ?: moe_gguf_set_u32(w, KEY("attention.key_length_swa"), o->head_dim_swa);
		ret = ret ?: moe_gguf_set_u32(w, KEY("attention.value_length_swa"), o->head_dim_swa);
		ret = ret ?: moe_gguf_set_u32(w, KEY("rope.dimension_count_swa"), o->head_dim_swa);
		ret = ret ?: moe_gguf_set_f32(w, KEY("rope.freq_base_swa"), o->rope_base_swa);
		ret = ret ?: moe_gguf_set_u32(w, KEY("embedding_length_per_layer_input"), 0);
		ret = ret ?: moe_gguf_set_f32(w, KEY("final_logit_softcapping"), 30.0f);
	}
#undef KEY
	return ret ?: add_tokenizer(w, o);
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
		n += is_moe_layer(o, l);
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
	ret = make_structure(&m);
	if (ret) {
		fprintf(stderr, PROG ": out of memory for the routers\n");
		goto out;
	}
	ret = add_tensors(&m);
	if (ret)
		goto out;
	ret = moe_gguf_writer_create(&w, o.align);
	ret = ret ?: add_metadata(w, &o);
	for (size_t i = 0; !ret && i < m.n_t; i++) {
		struct gtensor *t = &m.t[i];

		ret = moe_gguf_add_tensor_fill(w, t->name, t->type, t->n_dims, t->ne, fill, t);
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
		       "(top-%u), experts %s, other %s\n", o.out, o.ad->name, bytes, m.n_t,
		       o.layers, m.n_moe, o.experts, o.experts_used, moe_type_name(o.type),
		       moe_type_name(o.type_other));
out:
	moe_gguf_writer_free(w);
	model_free(&m);
	/* a --vocab the built-in BPE text cannot fill is a usage error */
	return ret == -ERANGE ? EXIT_USAGE : ret ? 1 : 0;
}
