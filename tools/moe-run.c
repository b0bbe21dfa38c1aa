/* SPDX-License-Identifier: MIT */
/*
 * moe-run: generate from a GGUF MoE model within a memory budget, streaming
 * routed experts from the file as the router asks for them.  Only the
 * public API (moe/moe.h).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe/moe.h"
#include "engine_opts.h"
#include "json.h"
#include "schema.h"
#include "tool.h"

#define PROG "moe-run"
/* The most positions a context holds (moe_ctx_create refuses more). */
#define MAX_CTX (1u << 24)
/* The largest --grammar or --json-schema file read. */
#define MAX_GRAMMAR_FILE (1u << 20)

struct opts {
	const char *model, *prompt, *tokens, *logits_out, *system, *trace_out;
	uint32_t n_gen, n_ctx;
	const char *grammar_file, *schema_file;
	bool stats, json, chat, trace_pred, json_object;
	struct moe_sample_params sp;
	struct engine_opts eng;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " -m MODEL (-p TEXT | --tokens ID,ID,...) [OPTIONS]\n"
		"       " PROG " -m MODEL --chat [--system TEXT] [-p TEXT] [OPTIONS]\n"
		"Generate from a MoE model, streaming experts within a memory budget.\n\n"
		"  -m, --model FILE       GGUF model\n"
		"  -p, --prompt TEXT      prompt text (needs the model's tokenizer)\n"
		"      --tokens LIST      prompt as token ids, comma-separated\n"
		"      --chat             chat in the model's prompt format: one turn per line of\n"
		"                         standard input, or the one turn -p gives; -n caps a reply\n"
		"      --system TEXT      system message for --chat\n"
		"  -n, --n-predict N      tokens to generate (32)\n"
		"      --ctx N            context positions (prompt + generated; default fits both)\n"
		"      --trace-out FILE   record every token's routing (moectl trace simulate)\n"
		"      --trace-predictions  with --trace-out: also the speculative predictions\n"
		"      --temp X           temperature; 0 = greedy (0)\n"
		"      --top-k N, --top-p X, --min-p X\n"
		"      --repeat-penalty X, --repeat-last-n N\n"
		"      --seed N           sampling seed (0)\n"
		"      --grammar FILE     output follows this GBNF grammar (Documentation/\n"
		"                         structured-output.rst); generation ends with it\n"
		"      --json-schema FILE output is JSON valid for this JSON Schema (the subset\n"
		"                         in Documentation/structured-output.rst)\n"
		"      --json-object      output is one JSON object\n"
		"      --logits-out FILE  logits of every evaluated position, f32 LE [pos][vocab]\n"
		"      --stats            prefill/decode tokens/s, expert hit rate, bytes read, GB/s,\n"
		"                         time stalled on I/O (per layer too), prefetch precision\n"
		"                         and recall, streamed dense FFN hits (stderr; in the JSON\n"
		"                         with --json)\n"
		"      --json             machine-readable output on stdout\n"
		"  -h, --help             this text\n"
		"Engine:\n");
	engine_opts_usage(f);
}

static int bad(const char *fmt, const char *arg)
{
	fprintf(stderr, PROG ": ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	return -EINVAL;
}

static int parse_u32(const char *s, const char *what, uint32_t max, uint32_t *out)
{
	return tool_parse_u32(what, s, 0, max, out) ? -EINVAL : 0;
}

static int parse_float(const char *s, const char *what, double min, double max, float *out)
{
	double v;

	if (tool_parse_double(what, s, min, max, &v))
		return -EINVAL;
	*out = (float)v;
	return 0;
}

/*
 * --tokens: decimal ids joined by single commas, "1,2,3".  No spaces, signs
 * or empty entries: a list a script built wrongly is refused, not guessed at.
 */
static int parse_tokens(const char *s, int32_t **out, uint32_t *n)
{
	uint32_t cap = 16, k = 0;
	int32_t *ids;
	const char *p = s;

	if (!*s)
		return bad("--tokens '%s': no token ids; write them as 1,2,3", s);
	ids = malloc(sizeof(*ids) * cap);
	if (!ids)
		return -ENOMEM;
	for (;;) {
		const char *start = p;
		uint64_t v = 0;

		while (*p >= '0' && *p <= '9' && v <= INT32_MAX)
			v = v * 10 + (uint64_t)(*p++ - '0');
		if (p == start || v > INT32_MAX || (*p && *p != ',')) {
			fprintf(stderr, PROG ": --tokens '%s': %s at offset %zu; write ids from 0 "
				"to %d joined by commas, as 1,2,3\n", s,
				v > INT32_MAX ? "an id out of range" :
				p == start && (!*p || *p == ',') ? "an empty id" : "not a token id",
				(size_t)((v > INT32_MAX ? start : p) - s), INT32_MAX);
			free(ids);
			return -EINVAL;
		}
		if (k == cap) {
			int32_t *t = realloc(ids, sizeof(*ids) * (cap *= 2));

			if (!t) {
				free(ids);
				return -ENOMEM;
			}
			ids = t;
		}
		ids[k++] = (int32_t)v;
		if (!*p)
			break;
		p++;
	}
	*out = ids;
	*n = k;
	return 0;
}


struct run {
	const struct opts *o;
	struct moe_sample_params sp;    /* o->sp with the grammar */
	struct moe_grammar *grammar;
	struct moe_tokenizer *tok;
	struct moe_detok_state ds;
	struct moe_outfile *logits;
	uint32_t n_vocab;
	int32_t *out;
	uint32_t n_out;
	char *text;
	size_t text_len, text_cap;
	struct moe_grammar *check;  /* the text shown so far, against the grammar */
	int err;                /* the first failure while generating, -errno */
	char errmsg[512];       /* its reason; "" once it was reported (stdout) */
};

/* Record the first failure of a callback; generation stops at it. */
static void run_failed(struct run *r, int err, const char *msg)
{
	if (r->err)
		return;
	r->err = err;
	snprintf(r->errmsg, sizeof(r->errmsg), "%s", msg);
}

/* The failure of a run on stderr, unless it was said already (a write error on stdout). */
static void report(const struct run *r, const char *what)
{
	if (r->err && !r->errmsg[0])
		return;
	fprintf(stderr, PROG ": %s%s%s\n", what ? what : "", what ? ": " : "",
		r->err ? r->errmsg : moe_errmsg());
}

/* Text as it comes: a failed write stops the run instead of generating for nobody. */
static void flush_stdout(struct run *r)
{
	if (tool_flush_stdout())
		run_failed(r, -EIO, "");
}

static void emit_text(struct run *r, const char *buf, int n)
{
	if (n <= 0)
		return;
	/* the sampler kept to the grammar: this only tells where the document stands */
	if (r->check)
		moe_grammar_accept(r->check, buf, (size_t)n);
	if (!r->o->json) {
		fwrite(buf, 1, (size_t)n, stdout);
		flush_stdout(r);
		return;
	}
	if (r->text_len + (size_t)n + 1 > r->text_cap) {
		size_t cap = (r->text_cap + (size_t)n + 64) * 2;
		char *t = realloc(r->text, cap);

		if (!t) {
			run_failed(r, -ENOMEM, strerror(ENOMEM));
			return;
		}
		r->text = t;
		r->text_cap = cap;
	}
	memcpy(r->text + r->text_len, buf, (size_t)n);
	r->text_len += (size_t)n;
}

static int write_logits(struct run *r, const float *logits, uint32_t n_rows)
{
	if (moe_outfile_write(r->logits, logits, sizeof(float) * r->n_vocab * n_rows) < 0)
		run_failed(r, -EIO, moe_errmsg());
	return r->err;
}

static int on_token(void *arg, const float *logits, uint32_t n_rows, int32_t next)
{
	struct run *r = arg;
	char buf[512];

	if (r->logits && write_logits(r, logits, n_rows))
		return 1;
	r->out[r->n_out++] = next;
	if (r->tok) {
		int n = moe_detok_stream(r->tok, &r->ds, next, buf, sizeof(buf));

		emit_text(r, buf, n);
		if (moe_tokenizer_is_eog(r->tok, next))
			return 1;
	} else if (!r->o->json) {
		printf("%s%d", r->n_out > 1 ? " " : "", next);
		flush_stdout(r);
	}
	return r->err != 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	enum { O_TOKENS = 256, O_CTX, O_TEMP, O_TOPK, O_TOPP, O_MINP, O_RPEN, O_RLAST, O_SEED,
	       O_LOGITS, O_STATS, O_JSON, O_CHAT, O_SYSTEM, O_TRACE, O_TRACE_PRED,
	       O_GRAMMAR, O_SCHEMA, O_JSON_OBJECT };
	static const struct option own[] = {
		{ "model", required_argument, 0, 'm' },
		{ "prompt", required_argument, 0, 'p' },
		{ "n-predict", required_argument, 0, 'n' },
		{ "tokens", required_argument, 0, O_TOKENS },
		{ "ctx", required_argument, 0, O_CTX },
		{ "temp", required_argument, 0, O_TEMP },
		{ "top-k", required_argument, 0, O_TOPK },
		{ "top-p", required_argument, 0, O_TOPP },
		{ "min-p", required_argument, 0, O_MINP },
		{ "repeat-penalty", required_argument, 0, O_RPEN },
		{ "repeat-last-n", required_argument, 0, O_RLAST },
		{ "seed", required_argument, 0, O_SEED },
		{ "logits-out", required_argument, 0, O_LOGITS },
		{ "stats", no_argument, 0, O_STATS },
		{ "json", no_argument, 0, O_JSON },
		{ "chat", no_argument, 0, O_CHAT },
		{ "system", required_argument, 0, O_SYSTEM },
		{ "trace-out", required_argument, 0, O_TRACE },
		{ "trace-predictions", no_argument, 0, O_TRACE_PRED },
		{ "grammar", required_argument, 0, O_GRAMMAR },
		{ "json-schema", required_argument, 0, O_SCHEMA },
		{ "json-object", no_argument, 0, O_JSON_OBJECT },
		{ "help", no_argument, 0, 'h' },
		{ 0 },
	};
	const struct option *lo = engine_opts_join(own);
	uint32_t u;
	int c, ret = 0;

	o->n_gen = 32;
	moe_sample_params_init(&o->sp);
	engine_opts_init(&o->eng);
	while (!ret && (c = getopt_long(argc, argv, "m:p:n:h", lo, NULL)) != -1) {
		switch (c) {
		case 'm': o->model = optarg; break;
		case 'p': o->prompt = optarg; break;
		case 'n': ret = parse_u32(optarg, "-n", MAX_CTX, &o->n_gen); break;
		case O_TOKENS: o->tokens = optarg; break;
		case O_CTX: ret = parse_u32(optarg, "--ctx", MAX_CTX, &o->n_ctx); break;
		case O_TEMP: ret = parse_float(optarg, "--temp", 0, 1e6, &o->sp.temp); break;
		case O_TOPK:
			ret = parse_u32(optarg, "--top-k", INT32_MAX, &u);
			o->sp.top_k = (int32_t)u;
			break;
		case O_TOPP: ret = parse_float(optarg, "--top-p", 0, 1, &o->sp.top_p); break;
		case O_MINP: ret = parse_float(optarg, "--min-p", 0, 1, &o->sp.min_p); break;
		case O_RPEN:
			ret = parse_float(optarg, "--repeat-penalty", 0, 1e6,
					  &o->sp.repeat_penalty);
			if (!ret && !(o->sp.repeat_penalty > 0))
				ret = bad("--repeat-penalty %s: must be above 0 (1 turns it off)",
					  optarg);
			break;
		case O_RLAST:
			ret = parse_u32(optarg, "--repeat-last-n", INT32_MAX, &u);
			o->sp.repeat_last_n = (int32_t)u;
			break;
		case O_SEED:
			ret = tool_parse_u64("--seed", optarg, 0, UINT64_MAX, &o->sp.seed);
			ret = ret ? -EINVAL : 0;
			break;
		case O_LOGITS: o->logits_out = optarg; break;
		case O_STATS: o->stats = true; break;
		case O_JSON: o->json = true; break;
		case O_CHAT: o->chat = true; break;
		case O_SYSTEM: o->system = optarg; break;
		case O_TRACE: o->trace_out = optarg; break;
		case O_TRACE_PRED: o->trace_pred = true; break;
		case O_GRAMMAR: o->grammar_file = optarg; break;
		case O_SCHEMA: o->schema_file = optarg; break;
		case O_JSON_OBJECT: o->json_object = true; break;
		case 'h':
			usage(stdout);
			exit(0);
		case '?':
			return -EINVAL;
		default:
			ret = engine_opts_parse(&o->eng, c, optarg) ? -EINVAL : 0;
			break;
		}
	}
	if (ret)
		return ret;
	if (optind < argc)
		return bad("unexpected argument '%s'", argv[optind]);
	if (!o->model)
		return bad("%s", "no model: give -m MODEL");
	if (o->trace_pred && !o->trace_out)
		return bad("%s", "--trace-predictions goes with --trace-out FILE");
	if (engine_opts_check(&o->eng))
		return -EINVAL;
	if (!!o->grammar_file + !!o->schema_file + o->json_object > 1)
		return bad("%s", "--grammar, --json-schema and --json-object each set the output's "
			   "grammar: give one");
	if (o->chat) {
		if (o->tokens || o->json || o->logits_out)
			return bad("%s", "--chat takes text: --tokens, --json and --logits-out do not "
				   "apply to it");
		if (!o->n_gen)
			return bad("%s", "--chat needs -n of at least 1 (the longest reply)");
		return 0;
	}
	if (o->system)
		return bad("%s", "--system goes with --chat");
	if (!o->prompt == !o->tokens)
		return bad("%s", "give exactly one of -p TEXT and --tokens ID,ID,...");
	return 0;
}

/* Per-layer stalls: into @doc's "layer_stall_s" when it is given, else a line on stderr. */
static void print_layers(const struct moe_ctx *ctx, json_t *doc)
{
	struct moe_ctx_layer_stats ls;
	json_t *arr = doc ? json_array() : NULL;

	if (!doc)
		fprintf(stderr, "stall per layer (s):");
	for (uint32_t l = 0; moe_ctx_layer_stats(ctx, l, &ls) == 0; l++) {
		if (doc)
			tj_push(arr, tj_real(ls.stall_s));
		else
			fprintf(stderr, " %.4f", ls.stall_s);
	}
	if (doc)
		tj_set(doc, "layer_stall_s", arr);
	else
		fprintf(stderr, "\n");
}

/* The run's figures: into @doc when it is given (--json), else on stderr. */
static void print_stats(const struct moe_ctx *ctx, const struct moe_ctx_stats *s, json_t *doc)
{
	char budget[32] = "unlimited";

	if (s->vram_budget)
		snprintf(budget, sizeof(budget), "%llu", (unsigned long long)s->vram_budget);
	if (doc) {
		tj_set(doc, "prefill_tps", tj_real(s->prefill_tps));
		tj_set(doc, "decode_tps", tj_real(s->decode_tps));
		tj_set(doc, "hit_rate", tj_real(s->hit_rate));
		tj_set(doc, "bytes_read", tj_u64(s->bytes_read));
		tj_set(doc, "read_gbps", tj_real(s->read_gbps));
		tj_set(doc, "bytes_copied", tj_u64(s->bytes_copied));
		tj_set(doc, "stall_s", tj_real(s->stall_s));
		tj_set(doc, "prefill_tokens", tj_u64(s->prefill_tokens));
		tj_set(doc, "decode_tokens", tj_u64(s->decode_tokens));
		tj_set(doc, "expert_hits", tj_u64(s->expert_hits));
		tj_set(doc, "expert_misses", tj_u64(s->expert_misses));
		tj_set(doc, "expert_host_hits", tj_u64(s->expert_host_hits));
		tj_set(doc, "n_slots", tj_u64(s->n_slots));
		tj_set(doc, "slot_bytes", tj_u64(s->slot_bytes));
		tj_set(doc, "n_experts", tj_u64(s->n_experts));
		tj_set(doc, "vram_budget", tj_u64(s->vram_budget));
		tj_set(doc, "vram_used", tj_u64(s->vram_used));
		tj_set(doc, "vram_peak", tj_u64(s->vram_peak));
		tj_set(doc, "staging_bytes", tj_u64(s->staging_bytes));
		tj_set(doc, "backend", tj_str(s->backend));
		tj_set(doc, "prefetches", tj_u64(s->prefetches));
		tj_set(doc, "prefetch_used", tj_u64(s->prefetch_used));
		tj_set(doc, "prefetch_cancelled", tj_u64(s->prefetch_cancelled));
		tj_set(doc, "prefetch_bytes", tj_u64(s->prefetch_bytes));
		tj_set(doc, "prefetch_unused_bytes", tj_u64(s->prefetch_unused_bytes));
		tj_set(doc, "prefetch_precision", tj_real(s->prefetch_precision));
		tj_set(doc, "prefetch_recall", tj_real(s->prefetch_recall));
		tj_set(doc, "dense_hits", tj_u64(s->dense_hits));
		tj_set(doc, "dense_misses", tj_u64(s->dense_misses));
		tj_set(doc, "dense_prefetch_used", tj_u64(s->dense_prefetch_used));
		tj_set(doc, "expert_io", tj_str(s->expert_io));
		if (s->device_total) {
			tj_set(doc, "device_total", tj_u64(s->device_total));
			tj_set(doc, "device_free_before", tj_u64(s->device_free_before));
			tj_set(doc, "device_free_after", tj_u64(s->device_free_after));
		}
		print_layers(ctx, doc);
		return;
	}
	fprintf(stderr,
		"prefill: %llu tokens, %.2f tokens/s\n"
		"decode: %llu tokens, %.2f tokens/s\n"
		"experts: hit rate %.1f%% (%llu hits, %llu misses, %llu of them from the host "
		"cache), %u slots for %u experts\n"
		"read: %llu bytes, %.3f GB/s, stalled on I/O %.3f s, %llu bytes copied\n"
		"memory: %llu bytes of %s device memory used (budget %s), %llu bytes of "
		"staging outside it\n",
		(unsigned long long)s->prefill_tokens, s->prefill_tps,
		(unsigned long long)s->decode_tokens, s->decode_tps, 100.0 * s->hit_rate,
		(unsigned long long)s->expert_hits, (unsigned long long)s->expert_misses,
		(unsigned long long)s->expert_host_hits, s->n_slots, s->n_experts,
		(unsigned long long)s->bytes_read, s->read_gbps,
		s->stall_s, (unsigned long long)s->bytes_copied, (unsigned long long)s->vram_used, s->backend, budget,
		(unsigned long long)s->staging_bytes);
	if (s->device_total)
		fprintf(stderr, "device: %llu bytes, %llu free before the run and %llu after its "
			"load (the driver's count); experts through %s\n",
			(unsigned long long)s->device_total,
			(unsigned long long)s->device_free_before,
			(unsigned long long)s->device_free_after,
			s->expert_io[0] ? s->expert_io : "no cache");
	if (s->prefetches)
		fprintf(stderr, "prefetch: %llu experts ahead (%llu bytes), %llu used, %llu "
			"cancelled, %llu bytes evicted unused; precision %.3f, recall %.3f\n",
			(unsigned long long)s->prefetches, (unsigned long long)s->prefetch_bytes,
			(unsigned long long)s->prefetch_used,
			(unsigned long long)s->prefetch_cancelled,
			(unsigned long long)s->prefetch_unused_bytes, s->prefetch_precision,
			s->prefetch_recall);
	if (s->dense_hits + s->dense_misses)
		fprintf(stderr, "dense FFNs streamed: %llu hits (%llu of them fetched a layer "
			"ahead), %llu misses\n", (unsigned long long)s->dense_hits,
			(unsigned long long)s->dense_prefetch_used,
			(unsigned long long)s->dense_misses);
	print_layers(ctx, NULL);
}

struct chat {
	struct moe_chat_msg *msgs;
	int n_msgs, cap;
	int32_t *hist;          /* the tokens in the KV cache, positions 0.. */
	uint32_t n_hist;
};

static int chat_push(struct chat *c, const char *role, char *content)
{
	if (c->n_msgs == c->cap) {
		int cap = c->cap ? c->cap * 2 : 8;
		struct moe_chat_msg *m = realloc(c->msgs, sizeof(*m) * (size_t)cap);

		if (!m) {
			free(content);
			return -ENOMEM;
		}
		c->msgs = m;
		c->cap = cap;
	}
	c->msgs[c->n_msgs++] = (struct moe_chat_msg){ .role = role, .content = content };
	return 0;
}

/* The reply's text: the generated tokens up to an end-of-turn token. */
static char *chat_reply_text(const struct run *r)
{
	uint32_t n = r->n_out;
	char *text;
	int len;

	if (n && moe_tokenizer_is_eog(r->tok, r->out[n - 1]))
		n--;
	len = moe_detokenize(r->tok, r->out, (int)n, 0, NULL, 0);
	if (len < 0 || !(text = malloc((size_t)len + 1)))
		return NULL;
	if (moe_detokenize(r->tok, r->out, (int)n, 0, text, len) != len) {
		free(text);
		return NULL;
	}
	text[len] = 0;
	return text;
}

/* One turn: render the conversation, evaluate what the KV cache lacks, reply. */
static int chat_turn(const struct opts *o, struct moe_ctx *ctx, struct run *r, struct chat *c,
		     int turn)
{
	char *prompt, *reply, buf[64];
	int32_t *toks;
	uint32_t keep = 0, n;
	int len, ret;

	len = moe_chat_render(r->tok, c->msgs, c->n_msgs, true, &prompt);
	if (len < 0)
		return len;
	ret = moe_tokenize(r->tok, prompt, (size_t)len, MOE_TOK_PARSE_SPECIAL, NULL, 0);
	if (ret <= 0 || !(toks = malloc(sizeof(*toks) * (size_t)ret))) {
		free(prompt);
		return ret < 0 ? ret : -ENOMEM;
	}
	ret = moe_tokenize(r->tok, prompt, (size_t)len, MOE_TOK_PARSE_SPECIAL, toks, ret);
	free(prompt);
	if (ret < 0) {
		free(toks);
		return ret;
	}
	n = (uint32_t)ret;
	if ((uint64_t)n + o->n_gen > moe_ctx_n_ctx(ctx)) {
		fprintf(stderr, PROG ": the conversation (%u tokens) and a reply of up to %u exceed "
			"the context of %u positions; start again with a larger --ctx\n", n,
			o->n_gen, moe_ctx_n_ctx(ctx));
		free(toks);
		return -ENOSPC;
	}
	/* Earlier turns stay in the KV cache: evaluate from the first token that differs. */
	while (keep < c->n_hist && keep < n && c->hist[keep] == toks[keep])
		keep++;
	if (keep == n)
		keep--;
	r->n_out = 0;
	memset(&r->ds, 0, sizeof(r->ds));
	if (r->check)
		moe_grammar_reset(r->check);
	ret = moe_ctx_generate_at(ctx, toks + keep, n - keep, keep, o->n_gen, &r->sp, 0, on_token,
				  r);
	emit_text(r, buf, moe_detok_stream(r->tok, &r->ds, -1, buf, sizeof(buf)));
	printf("\n");
	flush_stdout(r);
	if (ret >= 0 && r->check && !moe_grammar_is_complete(r->check))
		fprintf(stderr, PROG ": chat: turn %d: the reply reached -n %u tokens before the "
			"grammar's document was complete (it is cut short); raise -n\n", turn,
			o->n_gen);
	if (ret < 0 || r->err) {
		free(toks);
		return ret < 0 ? ret : r->err;
	}
	if (o->stats)
		fprintf(stderr, "chat: turn %d: %u of %u prompt tokens kept in the KV cache, %u "
			"generated\n", turn, keep, n, r->n_out);
	/* the last token sampled was not evaluated */
	free(c->hist);
	c->hist = realloc(toks, sizeof(*toks) * (n + r->n_out));
	if (!c->hist) {
		free(toks);
		c->n_hist = 0;
		return -ENOMEM;
	}
	memcpy(c->hist + n, r->out, sizeof(*r->out) * r->n_out);
	c->n_hist = n + r->n_out - 1;
	reply = chat_reply_text(r);
	if (!reply)
		return -ENOMEM;
	return chat_push(c, "assistant", reply);
}

static int chat(const struct opts *o, struct moe_ctx *ctx, struct run *r)
{
	struct chat c = { 0 };
	bool tty = isatty(STDIN_FILENO);
	char *line = NULL;
	size_t cap = 0;
	int ret = 0, turn = 0;

	if (o->system) {
		char *sys = strdup(o->system);

		ret = sys ? chat_push(&c, "system", sys) : -ENOMEM;
	}
	while (!ret) {
		char *user;

		if (o->prompt) {
			if (turn)
				break;
			user = strdup(o->prompt);
		} else {
			ssize_t n;

			if (tty) {
				fputs("> ", stderr);
				fflush(stderr);
			}
			n = getline(&line, &cap, stdin);
			if (n < 0)
				break;
			while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
				line[--n] = 0;
			if (!n)
				continue;
			user = strdup(line);
		}
		ret = user ? chat_push(&c, "user", user) : -ENOMEM;
		if (!ret)
			ret = chat_turn(o, ctx, r, &c, ++turn);
	}
	if (r->err)
		report(r, "chat");
	else if (ret < 0 && ret != -ENOSPC)
		fprintf(stderr, PROG ": chat: %s\n", ret == -ENOMEM ? strerror(ENOMEM) : moe_errmsg());
	for (int i = 0; i < c.n_msgs; i++)
		free((char *)c.msgs[i].content);
	free(c.msgs);
	free(c.hist);
	free(line);
	return ret;
}

/* The grammar of --grammar, --json-schema or --json-object into r->grammar. */
static int load_grammar(const struct opts *o, struct run *r)
{
	const char *opt = o->grammar_file ? "--grammar" : "--json-schema";
	const char *path = o->grammar_file ? o->grammar_file : o->schema_file;
	char err[512], *text;
	size_t len;
	int ret;

	if (o->json_object) {
		const char *gbnf;

		ret = moe_grammar_builtin("json-object", &gbnf);
		if (!ret)
			ret = moe_grammar_create(gbnf, strlen(gbnf), &r->grammar);
		if (ret)
			fprintf(stderr, PROG ": --json-object: %s\n", moe_errmsg());
		return ret;
	}
	ret = tool_read_file(opt, path, MAX_GRAMMAR_FILE, &text, &len);
	if (ret)
		return ret;
	if (o->grammar_file) {
		ret = moe_grammar_create(text, len, &r->grammar);
		if (ret)
			fprintf(stderr, PROG ": --grammar %s: %s\n", path, moe_errmsg());
	} else {
		ret = schema_compile_text(text, len, &r->grammar, err, sizeof(err));
		if (ret)
			fprintf(stderr, PROG ": --json-schema %s: %s\n", path, err);
	}
	free(text);
	return ret;
}

static int run(struct opts *o)
{
	struct moe_model *model = NULL;
	struct moe_ctx *ctx = NULL;
	struct moe_ctx_params cp;
	struct moe_ctx_stats st;
	struct run r = { .o = o };
	int32_t *prompt = NULL;
	uint32_t n_prompt = 0;
	uint64_t need;
	int ret;

	if (o->tokens && parse_tokens(o->tokens, &prompt, &n_prompt) < 0)
		return EXIT_USAGE;
	r.sp = o->sp;
	if ((o->grammar_file || o->schema_file || o->json_object) && load_grammar(o, &r)) {
		free(prompt);
		return 1;
	}
	/* Refused outputs are refused before the work that would fill them. */
	if (o->logits_out && moe_outfile_open(o->logits_out, &r.logits) < 0) {
		fprintf(stderr, PROG ": --logits-out: %s\n", moe_errmsg());
		free(prompt);
		return 1;
	}
	ret = moe_model_open(o->model, &model);
	if (ret < 0) {
		fprintf(stderr, PROG ": %s\n", moe_errmsg());
		goto fail;
	}
	ret = moe_tokenizer_load(model, &r.tok);
	if (ret < 0) {
		r.tok = NULL;
		if (ret != -ENOENT) {
			fprintf(stderr, PROG ": tokenizer: %s\n", moe_errmsg());
			goto fail;
		}
	}
	if (r.grammar) {
		if (!r.tok) {
			fprintf(stderr, PROG ": %s has no vocabulary: a grammar constrains text, so "
				"--grammar, --json-schema and --json-object need one\n", o->model);
			goto fail;
		}
		if (moe_grammar_clone(r.grammar, &r.check)) {
			fprintf(stderr, PROG ": %s\n", moe_errmsg());
			goto fail;
		}
		r.sp.grammar = r.grammar;
		r.sp.tokenizer = r.tok;
	}
	if (o->chat) {
		if (!r.tok) {
			fprintf(stderr, PROG ": %s has no vocabulary: --chat needs one\n", o->model);
			goto fail;
		}
	} else if (o->prompt) {
		uint32_t flags;
		int n;

		if (!r.tok) {
			fprintf(stderr, PROG ": %s has no vocabulary to tokenize -p with; give the "
				"prompt as --tokens ID,ID,...\n", o->model);
			goto fail;
		}
		flags = moe_tokenizer_add_bos(r.tok) ? MOE_TOK_ADD_BOS : 0;
		n = moe_tokenize(r.tok, o->prompt, strlen(o->prompt), flags, NULL, 0);
		if (n <= 0 || !(prompt = malloc(sizeof(*prompt) * (size_t)n)) ||
		    moe_tokenize(r.tok, o->prompt, strlen(o->prompt), flags, prompt, n) != n) {
			fprintf(stderr, PROG ": tokenizing the prompt: %s\n",
				n == 0 ? "it is empty" : moe_errmsg());
			goto fail;
		}
		n_prompt = (uint32_t)n;
	}
	need = (uint64_t)n_prompt + (o->n_gen ? o->n_gen : 1);
	if (!o->n_ctx && !o->chat && need > MAX_CTX) {
		fprintf(stderr, PROG ": the prompt (%u tokens) and -n %u need %llu positions; a "
			"context holds at most %u\n", n_prompt, o->n_gen, (unsigned long long)need,
			MAX_CTX);
		ret = EXIT_USAGE;
		goto out;
	}
	moe_ctx_params_init(&cp);
	engine_opts_apply(&o->eng, &cp);
	cp.n_ctx = o->n_ctx || o->chat ? o->n_ctx : (uint32_t)need;
	ret = moe_ctx_create(model, &cp, &ctx);
	if (ret < 0) {
		if (o->eng.vram_zero)
			fprintf(stderr, PROG ": --vram 0: %s\n", moe_errmsg());
		else
			fprintf(stderr, PROG ": %s\n", moe_errmsg());
		goto fail;
	}
	if (o->trace_out &&
	    moe_ctx_trace_start(ctx, o->trace_out, o->trace_pred ? MOE_TRACE_PREDICTIONS : 0) < 0) {
		fprintf(stderr, PROG ": --trace-out: %s\n", moe_errmsg());
		goto fail;
	}
	if (o->stats && !o->json)
		fprintf(stderr, "%s\n", moe_ctx_describe(ctx));
	r.n_vocab = moe_ctx_n_vocab(ctx);
	r.out = malloc(sizeof(*r.out) * ((size_t)o->n_gen + 1));
	if (!r.out) {
		fprintf(stderr, PROG ": out of memory\n");
		goto fail;
	}
	if (o->chat) {
		ret = chat(o, ctx, &r);
		if (o->stats) {
			moe_ctx_get_stats(ctx, &st);
			print_stats(ctx, &st, NULL);
		}
		if (ret < 0)
			goto fail;
		goto done;
	}
	if (o->n_gen) {
		ret = moe_ctx_generate(ctx, prompt, n_prompt, o->n_gen, &r.sp,
				       o->logits_out ? MOE_EVAL_ALL_LOGITS : 0, on_token, &r);
	} else {
		ret = moe_ctx_eval(ctx, prompt, n_prompt, 0, o->logits_out ? MOE_EVAL_ALL_LOGITS : 0);
		if (!ret && r.logits)
			write_logits(&r, moe_ctx_logits(ctx, 0), n_prompt);
	}
	if (ret < 0 || r.err) {
		report(&r, NULL);
		goto fail;
	}
	if (r.tok) {
		char buf[64];

		emit_text(&r, buf, moe_detok_stream(r.tok, &r.ds, -1, buf, sizeof(buf)));
	}
	ret = moe_outfile_close(r.logits, true);
	r.logits = NULL;
	if (ret < 0) {
		fprintf(stderr, PROG ": --logits-out: %s\n", moe_errmsg());
		goto fail;
	}
	if (o->trace_out && moe_ctx_trace_stop(ctx) < 0) {
		fprintf(stderr, PROG ": --trace-out: %s\n", moe_errmsg());
		goto fail;
	}
	moe_ctx_get_stats(ctx, &st);
	if (o->json) {
		json_t *doc = json_object(), *toks = json_array();

		for (uint32_t i = 0; i < r.n_out; i++)
			tj_push(toks, tj_i64(r.out[i]));
		tj_set(doc, "tokens", toks);
		if (r.tok)
			tj_set(doc, "text", tj_strn(r.text ? r.text : "", r.text ? r.text_len : 0));
		if (r.check)
			tj_set(doc, "finish_reason",
			       tj_str(moe_grammar_is_complete(r.check) ? "stop" : "length"));
		if (o->stats)
			print_stats(ctx, &st, doc);
		if (tj_print(doc))
			goto fail;
	} else {
		printf("\n");
	}
	/* the generated text ends before the stats on stderr start */
	if (tool_flush_stdout())
		goto fail;
	if (!o->json && o->stats)
		print_stats(ctx, &st, NULL);
	if (r.check && o->n_gen && !moe_grammar_is_complete(r.check)) {
		fprintf(stderr, PROG ": -n %u tokens ran out before the grammar's document was "
			"complete: the output is cut short; raise -n\n", o->n_gen);
		goto fail;
	}
done:
	ret = 0;
	goto out;
fail:
	ret = 1;
out:
	moe_outfile_close(r.logits, false);
	moe_grammar_destroy(r.check);
	moe_grammar_destroy(r.grammar);
	free(r.text);
	free(r.out);
	free(prompt);
	moe_ctx_destroy(ctx);
	moe_tokenizer_destroy(r.tok);
	moe_model_destroy(model);
	return ret;
}

int main(int argc, char **argv)
{
	struct opts o = { 0 };

	tool_init(PROG);
	if (parse_args(argc, argv, &o) < 0) {
		fprintf(stderr, "try `" PROG " --help`\n");
		return EXIT_USAGE;
	}
	return run(&o);
}
