/* SPDX-License-Identifier: MIT */
/*
 * Tokenizers: conformance against the reference ids of real vocabularies
 * (shared/reference/vocab), a hand-made SentencePiece vocabulary, bad input,
 * streaming detokenization, chat formats and moectl tokenize/detokenize.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe/moe.h"
#include "testutil.h"
#include "text/tokenizer.h"
#include "text/unicode.h"
#include "util/util.h"

static const char *const vocabs[] = {
	"llama-bpe", "qwen2", "llama-spm", "gpt-2", "gemma-4",
};

static const char *vocab_path(const char *name, const char *ext)
{
	char rel[256];

	snprintf(rel, sizeof(rel), "reference/vocab/ggml-vocab-%s.gguf%s", name, ext);
	return tu_shared(rel);
}

static struct moe_tokenizer *load_vocab(const char *path, struct moe_model **m)
{
	struct moe_tokenizer *t = NULL;

	ck_assert_msg(moe_model_open_flags(path, MOE_OPEN_METADATA_ONLY, m) == 0, "%s: %s", path,
		      moe_errmsg());
	ck_assert_msg(moe_tokenizer_load(*m, &t) == 0, "%s: %s", path, moe_errmsg());
	return t;
}

static int32_t *tokenize_all(const struct moe_tokenizer *t, const char *s, size_t len,
			     uint32_t flags, int *n)
{
	int32_t *ids;
	int need = moe_tokenize(t, s, len, flags, NULL, 0);

	ck_assert_msg(need >= 0, "tokenize: %s", moe_errmsg());
	ids = malloc(((size_t)need + 1) * sizeof(*ids));
	ck_assert_ptr_nonnull(ids);
	*n = moe_tokenize(t, s, len, flags, ids, need);
	ck_assert_int_eq(*n, need);
	return ids;
}

static char *detok_all(const struct moe_tokenizer *t, const int32_t *ids, int n, uint32_t flags,
		       int *len)
{
	char *buf;
	int need = moe_detokenize(t, ids, n, flags, NULL, 0);

	ck_assert_msg(need >= 0, "detokenize: %s", moe_errmsg());
	buf = malloc((size_t)need + 1);
	ck_assert_ptr_nonnull(buf);
	*len = moe_detokenize(t, ids, n, flags, buf, need);
	ck_assert_int_eq(*len, need);
	buf[need] = 0;
	return buf;
}

static const char sep[] = "\n__ggml_vocab_test__\n";

/*
 * Every case of @inp through @t: the ids must be those of @out and, where
 * @model_out is given, of @model_out instead (ids under the model's own
 * regex where llama.cpp's split departs from it: @departures lists those
 * cases, and every other case must agree with @out too).  Decoding the ids
 * must give the text back.
 */
static void check_cases(const struct moe_tokenizer *t, const char *name, char *inp, char *out,
			char *model_out, const int *departures, int n_departures)
{
	char *text = inp, *line = out, *mline = model_out, *fails = NULL;
	size_t fails_len = 0;
	FILE *fl = open_memstream(&fails, &fails_len);
	int cases = 0, bad = 0, bad_rt = 0, n_dep = 0;

	ck_assert_ptr_nonnull(inp);
	ck_assert_ptr_nonnull(out);
	for (;;) {
		char *end = strstr(text, sep), *nl, *mnl = NULL;
		int32_t want[2048], want_l[2048];
		int n_want = 0, n_want_l = 0, n_got, dl;
		int32_t *got;
		char *back;
		bool departs, listed = false;

		if (!end)
			break;
		nl = strchr(line, '\n');
		ck_assert_msg(nl != NULL, "%s: fewer expected lines than texts", name);
		*nl = 0;
		for (char *p = line, *q; *p; p = q) {
			long v = strtol(p, &q, 10);

			if (q == p)
				break;
			ck_assert_int_lt(n_want_l, 2048);
			want_l[n_want_l++] = (int32_t)v;
		}
		if (mline) {
			mnl = strchr(mline, '\n');
			ck_assert_msg(mnl != NULL, "%s: fewer model-regex lines than texts", name);
			*mnl = 0;
			for (char *p = mline, *q; *p; p = q) {
				long v = strtol(p, &q, 10);

				if (q == p)
					break;
				ck_assert_int_lt(n_want, 2048);
				want[n_want++] = (int32_t)v;
			}
			departs = n_want != n_want_l ||
				  memcmp(want, want_l, (size_t)n_want * sizeof(*want));
			for (int k = 0; k < n_departures; k++)
				listed |= departures[k] == cases;
			ck_assert_msg(departs == listed,
				      "%s: case %d: llama.cpp %s the model's regex, against the list of known departures",
				      name, cases, departs ? "departs from" : "agrees with");
			n_dep += listed;
		} else {
			memcpy(want, want_l, (size_t)n_want_l * sizeof(*want));
			n_want = n_want_l;
		}
		got = tokenize_all(t, text, (size_t)(end - text), 0, &n_got);
		if (n_got != n_want || memcmp(got, want, (size_t)n_got * sizeof(*got))) {
			bad++;
			fprintf(fl, "\n  case %d '%.*s': got", cases, (int)MOE_MIN(end - text, 40),
				text);
			for (int i = 0; i < n_got && i < 24; i++)
				fprintf(fl, " %d", got[i]);
			fprintf(fl, " want");
			for (int i = 0; i < n_want && i < 24; i++)
				fprintf(fl, " %d", want[i]);
		}
		back = detok_all(t, want, n_want, 0, &dl);
		if ((size_t)dl != (size_t)(end - text) || memcmp(back, text, (size_t)dl)) {
			bad_rt++;
			fprintf(fl, "\n  case %d round trip: '%.*s' back as '%s'", cases,
				(int)MOE_MIN(end - text, 40), text, back);
		}
		free(back);
		free(got);
		cases++;
		text = end + strlen(sep);
		line = nl + 1;
		if (mline)
			mline = mnl + 1;
	}
	fclose(fl);
	ck_assert_msg(cases > 10, "%s: only %d cases", name, cases);
	ck_assert_msg(!bad && !bad_rt, "%s: %d of %d cases differ, %d do not round-trip:%s", name,
		      bad, cases, bad_rt, fails);
	ck_assert_int_eq(n_dep, n_departures);
	free(fails);
}

/* Every case of one reference file: ids must match, and decoding them gives the text back. */
START_TEST(conformance)
{
	const char *name = vocabs[_i];
	struct moe_model *m;
	struct moe_tokenizer *t = load_vocab(vocab_path(name, ""), &m);
	char *inp = tu_read_file(vocab_path(name, ".inp"), NULL);
	char *out = tu_read_file(vocab_path(name, ".out"), NULL);

	check_cases(t, name, inp, out, NULL, NULL, 0);
	free(inp);
	free(out);
	moe_tokenizer_destroy(t);
	moe_model_destroy(m);
}
END_TEST

/* ------------------------------------------------------------ derived vocabularies */

/* tests/data/vocab: see its README and scripts/derive-vocab.py. */
static char *data_file(const char *name, const char *ext)
{
	char rel[256];
	char *d;

	snprintf(rel, sizeof(rel), "tests/data/vocab/%s%s", name, ext);
	d = tu_read_file(tu_src(rel), NULL);
	ck_assert_msg(d != NULL, "cannot read %s", rel);
	return d;
}

/* Undo derive-vocab.py's escapes in place; returns the length. */
static size_t unescape(char *s)
{
	char *o = s;

	for (char *p = s; *p; p++) {
		if (*p != '\\') {
			*o++ = *p;
			continue;
		}
		switch (*++p) {
		case 's':
			*o++ = ' ';
			break;
		case 'n':
			*o++ = '\n';
			break;
		case 'r':
			*o++ = '\r';
			break;
		case 't':
			*o++ = '\t';
			break;
		case 'x': {
			char hex[3] = { p[1], p[2], 0 };

			*o++ = (char)strtol(hex, NULL, 16);
			p += 2;
			break;
		}
		default:
			*o++ = *p;
			break;
		}
	}
	*o = 0;
	return (size_t)(o - s);
}

struct fixture {
	char *data;
	const char **tokens;
	uint32_t *lens;
	int32_t *types;
	const char **merges;
	uint32_t *merge_lens;
	char (*gap)[16];
	struct tok_spec sp;
};

/*
 * Build the tokenizer a derived vocabulary describes, with @pre for its
 * tokenizer.ggml.pre when not NULL.  Ids absent from it get unused tokens
 * whose text no byte-level text can spell (raw control bytes), so every id
 * keeps its place and no merge or lookup can reach them.
 */
static struct moe_tokenizer *load_fixture(const char *name, const char *pre, struct fixture *fx)
{
	struct moe_tokenizer *t = NULL;
	uint32_t n_merges = 0;
	char *line, *save;

	memset(fx, 0, sizeof(*fx));
	fx->sp = (struct tok_spec){
		.bos = -1, .eos = -1, .eot = -1, .eom = -1, .unk = -1, .add_bos = -1,
		.add_space_prefix = -1,
	};
	fx->data = data_file(name, ".vocab");
	for (line = strtok_r(fx->data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *val = strchr(line, ' ');

		if (line[0] == '#' || !val)
			continue;
		*val++ = 0;
		if (!strcmp(line, "model")) {
			fx->sp.model = val;
		} else if (!strcmp(line, "pre")) {
			fx->sp.pre = val;
		} else if (!strcmp(line, "arch")) {
			fx->sp.arch = val;
		} else if (!strcmp(line, "n_vocab")) {
			fx->sp.n_vocab = (uint32_t)strtoul(val, NULL, 10);
			fx->tokens = calloc(fx->sp.n_vocab, sizeof(*fx->tokens));
			fx->lens = calloc(fx->sp.n_vocab, sizeof(*fx->lens));
			fx->types = calloc(fx->sp.n_vocab, sizeof(*fx->types));
			fx->gap = calloc(fx->sp.n_vocab, sizeof(*fx->gap));
			fx->merges = calloc(fx->sp.n_vocab * 2, sizeof(*fx->merges));
			fx->merge_lens = calloc(fx->sp.n_vocab * 2, sizeof(*fx->merge_lens));
			ck_assert(fx->tokens && fx->lens && fx->types && fx->gap && fx->merges &&
				  fx->merge_lens);
		} else if (!strcmp(line, "bos_token_id")) {
			fx->sp.bos = strtol(val, NULL, 10);
		} else if (!strcmp(line, "eos_token_id")) {
			fx->sp.eos = strtol(val, NULL, 10);
		} else if (!strcmp(line, "unknown_token_id")) {
			fx->sp.unk = strtol(val, NULL, 10);
		} else if (!strcmp(line, "add_bos_token")) {
			fx->sp.add_bos = (int)strtol(val, NULL, 10);
		} else if (!strcmp(line, "t")) {
			char *ty = strchr(val, ' '), *text = ty ? strchr(ty + 1, ' ') : NULL;
			unsigned long id = strtoul(val, NULL, 10);

			ck_assert_msg(text && id < fx->sp.n_vocab, "%s.vocab: bad token line", name);
			*text++ = 0;
			fx->types[id] = (int32_t)strtol(ty + 1, NULL, 10);
			fx->lens[id] = (uint32_t)unescape(text);
			fx->tokens[id] = text;
		} else if (!strcmp(line, "m")) {
			/* Unescaped, the line is the merge as the GGUF holds it. */
			ck_assert(fx->merges && n_merges < fx->sp.n_vocab * 2);
			fx->merge_lens[n_merges] = (uint32_t)unescape(val);
			fx->merges[n_merges++] = val;
		}
	}
	ck_assert_msg(fx->sp.model && fx->tokens, "%s.vocab has no model or n_vocab", name);
	for (uint32_t i = 0; i < fx->sp.n_vocab; i++) {
		if (fx->tokens[i])
			continue;
		snprintf(fx->gap[i], sizeof(fx->gap[i]), "\x01%u\x02", i);
		fx->tokens[i] = fx->gap[i];
		fx->lens[i] = (uint32_t)strlen(fx->gap[i]);
		fx->types[i] = TT_UNUSED;
	}
	fx->sp.tokens = fx->tokens;
	fx->sp.token_lens = fx->lens;
	fx->sp.types = fx->types;
	fx->sp.merges = fx->merges;
	fx->sp.merge_lens = fx->merge_lens;
	fx->sp.n_merges = n_merges;
	if (pre)
		fx->sp.pre = pre;
	ck_assert_msg(tok_build(&fx->sp, &t) == 0, "%s: %s", name, moe_errmsg());
	return t;
}

static void fixture_free(struct fixture *fx)
{
	free(fx->data);
	free(fx->tokens);
	free(fx->lens);
	free(fx->types);
	free(fx->gap);
	free(fx->merges);
	free(fx->merge_lens);
}

/*
 * The derived vocabularies and their cases (tests/data/vocab/README.md).
 * Kimi K2's regex splits words at case changes and keeps marks in words;
 * llama.cpp's hand-written Kimi split does neither (cases 58 and 59:
 * "XMLHttpRequest", "हिन्दी"), so there the model's regex is the reference.
 */
static const int kimi_departures[] = { 58, 59 };
static const struct {
	const char *name, *vocab, *pre, *inp, *model_out;
	const int *departures;
	int n_departures;
} fixtures[] = {
	{ "deepseek-llm", "deepseek-llm", NULL, "deepseek-llm", NULL, NULL, 0 },
	{ "deepseek-coder", "deepseek-coder", NULL, "deepseek-coder", NULL, NULL, 0 },
	{ "qwen35", "qwen35", NULL, "qwen35", NULL, NULL, 0 },
	{ "deepseek-v3", "deepseek-v3", NULL, "families", NULL, NULL, 0 },
	{ "glm4", "deepseek-v3", "glm4", "families", NULL, NULL, 0 },
	{ "kimi-k2", "deepseek-v3", "kimi-k2", "families", "kimi-k2.regex", kimi_departures,
	  MOE_ARRAY_SIZE(kimi_departures) },
	{ "gpt-neox", "gpt-neox", NULL, "deepseek-llm", NULL, NULL, 0 },
};

START_TEST(fixture_conformance)
{
	struct fixture fx;
	struct moe_tokenizer *t = load_fixture(fixtures[_i].vocab, fixtures[_i].pre, &fx);
	char *inp = data_file(fixtures[_i].inp, ".inp");
	char *out = data_file(fixtures[_i].name, ".out");
	char *model_out = fixtures[_i].model_out ? data_file(fixtures[_i].model_out, ".out") : NULL;

	check_cases(t, fixtures[_i].name, inp, out, model_out, fixtures[_i].departures,
		    fixtures[_i].n_departures);
	free(inp);
	free(out);
	free(model_out);
	moe_tokenizer_destroy(t);
	fixture_free(&fx);
}
END_TEST

/* llama.cpp's whole vocabularies, where scripts/fetch-llama-vocab.sh has cached them. */
static const char *const full_vocabs[] = { "deepseek-llm", "deepseek-coder", "qwen35" };

static const char *cache_vocab(const char *name, const char *ext)
{
	static __thread char path[4][1024];
	static __thread int k;
	const char *dir = getenv("MOE_LLAMA_CACHE"), *home = getenv("HOME");
	char *p = path[k++ & 3];

	if (dir)
		snprintf(p, sizeof(path[0]), "%s/vocab/ggml-vocab-%s.gguf%s", dir, name, ext);
	else
		snprintf(p, sizeof(path[0]), "%s/.cache/moe-llama.cpp/vocab/ggml-vocab-%s.gguf%s",
			 home ? home : "/nonexistent", name, ext);
	return access(p, R_OK) == 0 ? p : NULL;
}

START_TEST(full_conformance)
{
	const char *name = full_vocabs[_i];
	struct moe_model *m;
	struct moe_tokenizer *t = load_vocab(cache_vocab(name, ""), &m);
	char *inp = tu_read_file(cache_vocab(name, ".inp"), NULL);
	char *out = tu_read_file(cache_vocab(name, ".out"), NULL);

	check_cases(t, name, inp, out, NULL, NULL, 0);
	free(inp);
	free(out);
	moe_tokenizer_destroy(t);
	moe_model_destroy(m);
}
END_TEST

/* GPT-NeoX's vocabulary has no token for 0xc0, 0xc1, 0xf5-0xff: it loads, and UTF-8 needs none. */
START_TEST(full_gpt_neox)
{
	const char *text = "Hello w\xc3\xb6rld \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\xa6\x99";
	struct moe_model *m;
	struct moe_tokenizer *t = load_vocab(cache_vocab("gpt-neox", ""), &m);
	int n, len;
	int32_t *ids = tokenize_all(t, text, strlen(text), 0, &n);
	char *back = detok_all(t, ids, n, 0, &len);

	ck_assert_str_eq(back, text);
	ck_assert_int_lt(moe_tokenizer_find(t, "\xc3\x80"), 0);
	free(back);
	free(ids);
	moe_tokenizer_destroy(t);
	moe_model_destroy(m);
}
END_TEST

/*
 * Each split against the regexes themselves: tests/data/vocab/splits.out
 * holds, per split, the lengths (in code points) of the pieces that
 * scripts/ref-tokenize.py cuts each text of splits.inp into.
 */
START_TEST(splits_reference)
{
	static const struct {
		const char *name;
		enum tok_pre pre;
	} pres[] = {
		{ "gpt-2", PRE_GPT2 }, { "llama3", PRE_LLAMA3 }, { "qwen2", PRE_QWEN2 },
		{ "qwen35", PRE_QWEN35 }, { "gpt-4o", PRE_GPT4O }, { "kimi-k2", PRE_KIMI_K2 },
		{ "deepseek-llm", PRE_DEEPSEEK_LLM }, { "deepseek-coder", PRE_DEEPSEEK_CODER },
		{ "deepseek-v3", PRE_DEEPSEEK3 },
	};
	char *inp = data_file("splits", ".inp"), *out = data_file("splits", ".out");
	char *line = out;
	int checked = 0;

	for (size_t k = 0; k < MOE_ARRAY_SIZE(pres); k++) {
		char head[64], *text = inp, *end;
		int cases = 0, bad = 0;

		snprintf(head, sizeof(head), "## %s\n", pres[k].name);
		ck_assert_msg(!strncmp(line, head, strlen(head)), "splits.out: no section %s",
			      pres[k].name);
		line += strlen(head);
		while ((end = strstr(text, sep))) {
			struct tok_spans sp = { 0 };
			char *nl = strchr(line, '\n'), *p = line;
			size_t i = 0;
			bool same = true;

			ck_assert_ptr_nonnull(nl);
			ck_assert_int_eq(tok_pretokenize(pres[k].pre, text, (size_t)(end - text),
							 &sp), 0);
			for (char *q; p < nl; p = q) {
				long want = strtol(p, &q, 10);
				long got = 0;

				if (q == p)
					break;
				if (i < sp.n) {
					const char *a = text + sp.v[2 * i];

					for (const char *c = a; c < text + sp.v[2 * i + 1]; c++)
						got += ((uint8_t)*c & 0xc0) != 0x80;
				}
				same &= i < sp.n && got == want;
				i++;
			}
			same &= i == sp.n;
			if (!same && bad++ < 3)
				printf("split %s, case %d ('%.*s'): differs from the regex\n",
				       pres[k].name, cases, (int)(end - text), text);
			free(sp.v);
			cases++;
			line = nl + 1;
			text = end + strlen(sep);
		}
		ck_assert_msg(cases >= 100, "splits.inp: %d cases", cases);
		ck_assert_msg(!bad, "split %s: %d of %d texts differ from the regex", pres[k].name,
			      bad, cases);
		checked++;
	}
	ck_assert_int_eq(checked, (int)MOE_ARRAY_SIZE(pres));
	free(inp);
	free(out);
}
END_TEST

/* ------------------------------------------------------------ a small SentencePiece vocab */

static const char *const spm_tokens[] = {
	"<unk>", "<s>", "</s>", "\xe2\x96\x81", "\xe2\x96\x81h", "\xe2\x96\x81he",
	"\xe2\x96\x81hell", "\xe2\x96\x81hello", "l", "lo", "e", "h", "o", "ll", "\xe2\x96\x81w",
	"or", "ld", "\xe2\x96\x81world", "<|eot|>", "[X]", "\xe2\x96\x81wor",
};
static const float spm_scores[] = {
	0, 0, 0, -1, -5, -4, -3, -1, -8, -7, -8, -8, -8, -6, -5, -5, -5, -2, 0, 0, -3,
};
static const int32_t spm_types[] = {
	TT_UNKNOWN, TT_CONTROL, TT_CONTROL, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	TT_CONTROL, TT_USER, 1,
};

/* Writes a vocab-only "llama" GGUF; @n_scores lets a test make the arrays disagree. */
static char *write_spm(const char *dir, uint64_t n_scores, bool bad_type)
{
	struct moe_gguf_writer *w;
	char *path;
	const char *toks[MOE_ARRAY_SIZE(spm_tokens) + 256];
	float scores[MOE_ARRAY_SIZE(spm_tokens) + 256];
	int32_t types[MOE_ARRAY_SIZE(spm_tokens) + 256];
	char bytes[256][8];
	size_t n = MOE_ARRAY_SIZE(spm_tokens);

	for (size_t i = 0; i < n; i++) {
		toks[i] = spm_tokens[i];
		scores[i] = spm_scores[i];
		types[i] = spm_types[i];
	}
	for (int b = 0; b < 256; b++) {
		snprintf(bytes[b], sizeof(bytes[b]), "<0x%02X>", b);
		toks[n] = bytes[b];
		scores[n] = 0;
		types[n] = TT_BYTE;
		n++;
	}
	if (bad_type)
		types[5] = 9;
	ck_assert_int_eq(asprintf(&path, "%s/spm.gguf", dir) > 0, 1);
	ck_assert_int_eq(moe_gguf_writer_create(32, &w), 0);
	ck_assert_int_eq(moe_gguf_set_str(w, "general.architecture", "llama"), 0);
	ck_assert_int_eq(moe_gguf_set_str(w, "tokenizer.ggml.model", "llama"), 0);
	ck_assert_int_eq(moe_gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, n), 0);
	ck_assert_int_eq(moe_gguf_set_arr(w, "tokenizer.ggml.scores", MOE_META_F32, scores,
					  n_scores ? n_scores : n), 0);
	ck_assert_int_eq(moe_gguf_set_arr(w, "tokenizer.ggml.token_type", MOE_META_I32, types, n),
			 0);
	ck_assert_int_eq(moe_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1), 0);
	ck_assert_int_eq(moe_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2), 0);
	ck_assert_int_eq(moe_gguf_write(w, path), 0);
	moe_gguf_writer_destroy(w);
	return path;
}

static void expect_ids(const struct moe_tokenizer *t, const char *text, uint32_t flags,
		       const int32_t *want, int n_want)
{
	int n;
	int32_t *got = tokenize_all(t, text, strlen(text), flags, &n);
	char msg[512];
	int at = 0;

	for (int i = 0; i < n && at < 400; i++)
		at += snprintf(msg + at, sizeof(msg) - (size_t)at, " %d", got[i]);
	msg[at] = 0;
	ck_assert_msg(n == n_want && (!n || !memcmp(got, want, (size_t)n * sizeof(*got))),
		      "'%s': got%s", text, msg);
	free(got);
}

START_TEST(spm_small)
{
	char *dir = tu_tmpdir(), *path = write_spm(dir, 0, false), *back;
	struct moe_model *m;
	struct moe_tokenizer *t = load_vocab(path, &m);
	int len;

	/* "▁hello" outscores the pieces it is made of; "▁world" is reached through "▁wor". */
	expect_ids(t, "hello world", 0, (int32_t[]){ 7, 17 }, 2);
	expect_ids(t, "hello world", MOE_TOK_ADD_BOS, (int32_t[]){ 1, 7, 17 }, 3);
	/* No piece for 'z' or U+00E9: byte fallback. */
	expect_ids(t, "hez\xc3\xa9", 0,
		   (int32_t[]){ 5, 21 + 'z', 21 + 0xc3, 21 + 0xa9 }, 4);
	/* Control tokens only when asked; user-defined ones always. */
	expect_ids(t, "<s>", MOE_TOK_PARSE_SPECIAL, (int32_t[]){ 1 }, 1);
	expect_ids(t, "hello[X]hello", 0, (int32_t[]){ 7, 19, 7 }, 3);
	expect_ids(t, "", 0, NULL, 0);
	back = detok_all(t, (int32_t[]){ 1, 7, 17, 21 + 0xc3, 21 + 0xa9 }, 5, 0, &len);
	ck_assert_str_eq(back, "hello world\xc3\xa9");
	free(back);
	back = detok_all(t, (int32_t[]){ 1, 7, 18 }, 3, MOE_DETOK_SPECIAL, &len);
	ck_assert_str_eq(back, "<s>hello<|eot|>");
	free(back);
	ck_assert_int_eq(moe_tokenizer_vocab_size(t), 277);
	ck_assert_int_eq(moe_tokenizer_bos(t), 1);
	ck_assert_int_eq(moe_tokenizer_eos(t), 2);
	ck_assert(moe_tokenizer_add_bos(t));
	ck_assert(moe_tokenizer_is_eog(t, 2));
	ck_assert(moe_tokenizer_is_eog(t, 18));
	ck_assert(!moe_tokenizer_is_eog(t, 7));
	ck_assert_int_eq(moe_tokenizer_find(t, "[X]"), 19);
	ck_assert_int_eq(moe_tokenizer_find(t, "nope"), -ENOENT);
	moe_tokenizer_destroy(t);
	moe_model_destroy(m);
	free(path);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(bad_vocab)
{
	char *dir = tu_tmpdir(), *path = write_spm(dir, 7, false);
	struct moe_tokenizer *t = NULL;
	struct moe_model *m;

	ck_assert_int_eq(moe_model_open_flags(path, MOE_OPEN_METADATA_ONLY, &m), 0);
	ck_assert_int_eq(moe_tokenizer_load(m, &t), -EINVAL);
	ck_assert_ptr_null(t);
	ck_assert_msg(strstr(moe_errmsg(), "tokenizer.ggml.scores") &&
		      strstr(moe_errmsg(), "disagree"), "%s", moe_errmsg());
	moe_model_destroy(m);
	free(path);

	path = write_spm(dir, 0, true);
	ck_assert_int_eq(moe_model_open_flags(path, MOE_OPEN_METADATA_ONLY, &m), 0);
	ck_assert_int_eq(moe_tokenizer_load(m, &t), -EINVAL);
	ck_assert_msg(strstr(moe_errmsg(), "token_type[5]"), "%s", moe_errmsg());
	moe_model_destroy(m);
	free(path);

	/* Test models without a vocabulary, and tokenizers we do not know. */
	for (int k = 0; k < 3; k++) {
		static const char *const kinds[] = { "none", "bert", NULL };
		static const int want[] = { -ENOENT, -EOPNOTSUPP, -ENOENT };
		struct moe_gguf_writer *w;

		ck_assert_int_eq(asprintf(&path, "%s/none%d.gguf", dir, k) > 0, 1);
		ck_assert_int_eq(moe_gguf_writer_create(32, &w), 0);
		ck_assert_int_eq(moe_gguf_set_str(w, "general.architecture", "llama"), 0);
		if (kinds[k]) {
			ck_assert_int_eq(moe_gguf_set_str(w, "tokenizer.ggml.model", kinds[k]), 0);
			ck_assert_int_eq(moe_gguf_set_arr_str(w, "tokenizer.ggml.tokens",
							      (const char *[]){ "a" }, 1), 0);
		}
		ck_assert_int_eq(moe_gguf_write(w, path), 0);
		moe_gguf_writer_destroy(w);
		ck_assert_int_eq(moe_model_open_flags(path, MOE_OPEN_METADATA_ONLY, &m), 0);
		ck_assert_int_eq(moe_tokenizer_load(m, &t), want[k]);
		ck_assert_ptr_null(t);
		ck_assert_msg(strstr(moe_errmsg(), kinds[k] ? kinds[k] : "no tokenizer"), "%s",
			      moe_errmsg());
		moe_model_destroy(m);
		free(path);
	}
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* A byte-level BPE vocabulary: the 256 alphabet characters plus @extra. */
static int build_bpe(const char *pre, const char *const *extra, int n_extra,
		     const char *const *merges, int n_merges, struct moe_tokenizer **t)
{
	const char *toks[256 + 16];
	char alpha[256][4];
	struct tok_spec sp = {
		.model = "gpt2", .pre = pre, .bos = -1, .eos = -1, .eot = -1, .eom = -1,
		.unk = -1, .add_bos = -1, .add_space_prefix = -1,
	};
	unsigned next = 256;

	for (unsigned b = 0; b < 256; b++) {
		bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;

		alpha[b][moe_utf8_encode(printable ? b : next++, alpha[b])] = 0;
		toks[b] = alpha[b];
	}
	for (int i = 0; i < n_extra; i++)
		toks[256 + i] = extra[i];
	sp.n_vocab = 256 + (uint32_t)n_extra;
	sp.tokens = toks;
	sp.n_merges = (uint32_t)n_merges;
	sp.merges = merges;
	return tok_build(&sp, t);
}

START_TEST(bad_merges)
{
	struct moe_tokenizer *t = NULL;

	ck_assert_int_eq(build_bpe("llama-bpe", (const char *[]){ "he" }, 1,
				   (const char *[]){ "h e", "h zz" }, 2, &t), -EINVAL);
	ck_assert_ptr_null(t);
	ck_assert_msg(strstr(moe_errmsg(), "merges[1]") && strstr(moe_errmsg(), "not in"), "%s",
		      moe_errmsg());
	ck_assert_int_eq(build_bpe("llama-bpe", NULL, 0, (const char *[]){ "he" }, 1, &t),
			 -EINVAL);
	ck_assert_msg(strstr(moe_errmsg(), "two tokens"), "%s", moe_errmsg());
	ck_assert_int_eq(build_bpe("no-such-split", NULL, 0, (const char *[]){ "h e" }, 1, &t),
			 -EOPNOTSUPP);
	ck_assert_msg(strstr(moe_errmsg(), "no-such-split"), "%s", moe_errmsg());
	ck_assert_int_eq(build_bpe("gpt-2", NULL, 0, NULL, 0, &t), -EINVAL);
	ck_assert_msg(strstr(moe_errmsg(), "merges"), "%s", moe_errmsg());
}
END_TEST

/*
 * A byte-level vocabulary without the tokens for some bytes (GPT-NeoX's has
 * none for 0xc0, 0xc1, 0xf5-0xff) loads; text that holds such a byte fails.
 */
START_TEST(missing_bytes)
{
	static const char *const pres[] = { "gpt-2", "llama-bpe" };

	for (size_t k = 0; k < MOE_ARRAY_SIZE(pres); k++) {
		const char *toks[256];
		char alpha[256][4];
		struct tok_spec sp = {
			.model = "gpt2", .pre = pres[k], .bos = -1, .eos = -1, .eot = -1, .eom = -1,
			.unk = -1, .add_bos = -1, .add_space_prefix = -1,
			.merges = (const char *[]){ "h e" }, .n_merges = 1,
		};
		struct moe_tokenizer *t = NULL;
		unsigned next = 256, n = 0;
		int32_t ids[16];
		char *back;
		int len;

		for (unsigned b = 0; b < 256; b++) {
			bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
			unsigned cpt = printable ? b : next++;

			if (b == 0xc0 || b == 0xc1 || b == 0xe4 || b >= 0xf5)
				continue;
			alpha[b][moe_utf8_encode(cpt, alpha[b])] = 0;
			toks[n++] = alpha[b];
		}
		toks[n++] = "he";
		sp.tokens = toks;
		sp.n_vocab = n;
		ck_assert_msg(tok_build(&sp, &t) == 0, "%s", moe_errmsg());
		ck_assert_int_eq(moe_tokenize(t, "hello \xc3\xa9", 8, 0, ids, 16), 7);
		back = detok_all(t, ids, 7, 0, &len);
		ck_assert_str_eq(back, "hello \xc3\xa9");
		free(back);
		/* 0xe4 starts U+4F60 */
		ck_assert_int_eq(moe_tokenize(t, "ok \xe4\xbd\xa0", 6, 0, ids, 16), -EILSEQ);
		ck_assert_msg(strstr(moe_errmsg(), "no token for byte 0xe4"), "%s", moe_errmsg());
		moe_tokenizer_destroy(t);
	}
}
END_TEST

START_TEST(bad_text)
{
	struct moe_tokenizer *t = NULL;
	int32_t ids[8];

	ck_assert_int_eq(build_bpe("gpt-2", (const char *[]){ "he" }, 1,
				   (const char *[]){ "h e" }, 1, &t), 0);
	ck_assert_int_eq(moe_tokenize(t, "ab\xff", 3, 0, ids, 8), -EILSEQ);
	ck_assert_msg(strstr(moe_errmsg(), "offset 2"), "%s", moe_errmsg());
	ck_assert_int_eq(moe_tokenize(t, "\xc3", 1, 0, ids, 8), -EILSEQ);
	ck_assert_int_eq(moe_tokenize(t, "\xed\xa0\x80", 3, 0, ids, 8), -EILSEQ);
	ck_assert_int_eq(moe_tokenize(t, "\xc0\xaf", 2, 0, ids, 8), -EILSEQ);
	ck_assert_int_eq(moe_tokenize(t, "hello", 5, 0, ids, 2), -ENOSPC);
	ck_assert_msg(strstr(moe_errmsg(), "needs 4"), "%s", moe_errmsg());
	ck_assert_int_eq(moe_tokenize(t, "hello", 5, 0, NULL, 0), 4);
	ck_assert_int_eq(moe_tokenize(t, "hello", 5, 1u << 7, ids, 8), -EINVAL);
	ck_assert_int_eq(moe_detokenize(t, (int32_t[]){ 999 }, 1, 0, NULL, 0), -EINVAL);
	ck_assert_int_eq(moe_token_to_piece(t, -1, NULL, 0), -EINVAL);
	moe_tokenizer_destroy(t);
}
END_TEST

/* Each pre-tokenizer split on text that tells the regexes apart. */
START_TEST(pretok_splits)
{
	static const struct {
		enum tok_pre pre;
		const char *text;
		const char *want;  /* pieces joined by '|' */
	} cases[] = {
		{ PRE_GPT2, "Hello world's 12345 !!  x", "Hello| world|'s| 12345| !!| | x" },
		{ PRE_LLAMA3, "Hello WORLD'S 12345\n\n  x", "Hello| WORLD|'S| |123|45|\n\n| | x" },
		{ PRE_LLAMA3, "a  \tb", "a|  |\tb" },
		{ PRE_QWEN2, "x 123", "x| |1|2|3" },
		{ PRE_GPT4O, "HelloWorld don't ABCdef //\n", "Hello|World| don't| ABCdef| //\n" },
		{ PRE_GEMMA4, "a b\n\nc", "a b|\n\n|c" },
		/* GPT-2 has no \s*[\r\n]+ rule; GPT-4o's (?i:'s) takes U+017F LONG S. */
		{ PRE_GPT2, "x \nb", "x| |\n|b" },
		{ PRE_GPT4O, "e'\xc5\xbf", "e'\xc5\xbf" },
		{ PRE_LLAMA3, "e'\xc5\xbf", "e|'\xc5\xbf" },
		/* Qwen 3.5 keeps a combining mark in its word, Qwen 2 does not. */
		{ PRE_QWEN35, "cafe\xcc\x81 12", "cafe\xcc\x81| |1|2" },
		{ PRE_QWEN2, "cafe\xcc\x81 12", "cafe|\xcc\x81| |1|2" },
		/* Kimi K2 is GPT-4o with Han taken out of words, and no '/' after symbols. */
		{ PRE_KIMI_K2, "\xe4\xb8\xad\xe6\x96\x87Hello\xe4\xb8\x96\xe7\x95\x8c XMLHttp don't/x",
		  "\xe4\xb8\xad\xe6\x96\x87|Hello|\xe4\xb8\x96\xe7\x95\x8c| XMLHttp| don't|/x" },
		{ PRE_GPT4O, "\xe4\xb8\xad\xe6\x96\x87Hello\xe4\xb8\x96\xe7\x95\x8c XMLHttp don't/x",
		  "\xe4\xb8\xad\xe6\x96\x87Hello\xe4\xb8\x96\xe7\x95\x8c| XMLHttp| don't|/x" },
		/* DeepSeek's staged splits: what one stage leaves between matches is a piece too. */
		{ PRE_DEEPSEEK_LLM, "Hello, \xe4\xb8\x96\xe7\x95\x8c! 123  \n\tx  ",
		  "Hello|,| |\xe4\xb8\x96\xe7\x95\x8c|!| |123|  |\n|\tx|  " },
		{ PRE_DEEPSEEK_LLM, "ab\xe3\x80\x80\xe3\x80\x82" "cd 42",
		  "ab|\xe3\x80\x80\xe3\x80\x82|cd| |42" },
		{ PRE_DEEPSEEK_CODER, "Hello, \xe4\xb8\x96\xe7\x95\x8c! 123\nx_y",
		  "Hello|,| |\xe4\xb8\x96\xe7\x95\x8c|!| |1|2|3|\n|x|_|y" },
		{ PRE_DEEPSEEK3, "Hello, \xe4\xb8\x96\xe7\x95\x8c!12345 \"quoted\" \xe3\x81\x8b\xe3\x81\xaa\n\n x",
		  "Hello|,| |\xe4\xb8\x96\xe7\x95\x8c|!|123|45| \"|quoted|\"| |\xe3\x81\x8b\xe3\x81\xaa|\n\n| x" },
		{ PRE_DEEPSEEK3, "'t e\xcc\x81 $x", "'t| e\xcc\x81| $|x" },
	};

	for (size_t k = 0; k < MOE_ARRAY_SIZE(cases); k++) {
		struct tok_spans sp = { 0 };
		char got[512];
		size_t at = 0;

		ck_assert_int_eq(tok_pretokenize(cases[k].pre, cases[k].text,
						 strlen(cases[k].text), &sp), 0);
		for (size_t i = 0; i < sp.n; i++)
			at += (size_t)snprintf(got + at, sizeof(got) - at, "%s%.*s", i ? "|" : "",
					       (int)(sp.v[2 * i + 1] - sp.v[2 * i]),
					       cases[k].text + sp.v[2 * i]);
		ck_assert_msg(!strcmp(got, cases[k].want), "split %d of '%s': got '%s' want '%s'",
			      cases[k].pre, cases[k].text, got, cases[k].want);
		free(sp.v);
	}
}
END_TEST

START_TEST(unicode_props)
{
	ck_assert_uint_eq(moe_ucd_flags('A'), UCD_LU);
	ck_assert_uint_eq(moe_ucd_flags('a'), UCD_LL);
	ck_assert_uint_eq(moe_ucd_flags('7'), UCD_N);
	ck_assert_uint_eq(moe_ucd_flags(' '), UCD_WS);
	ck_assert_uint_eq(moe_ucd_flags('.'), UCD_P);
	ck_assert_uint_eq(moe_ucd_flags('$'), UCD_S);
	/* CJK, inside a First/Last range, and of the Han script */
	ck_assert_uint_eq(moe_ucd_flags(0x4e2d), UCD_LO | UCD_HAN);
	ck_assert_uint_eq(moe_ucd_flags(0x3005), UCD_LM | UCD_HAN);   /* 々 */
	ck_assert_uint_eq(moe_ucd_flags(0x2e80), UCD_S | UCD_HAN);    /* a CJK radical */
	ck_assert_uint_eq(moe_ucd_flags(0x3042), UCD_LO);             /* hiragana: not Han */
	ck_assert_uint_eq(moe_ucd_flags(0x3001), UCD_P);
	ck_assert_uint_eq(moe_ucd_flags(0x0301), UCD_M);      /* combining acute */
	ck_assert_uint_eq(moe_ucd_flags(0x00bd), UCD_N);      /* ½ is No */
	ck_assert_uint_eq(moe_ucd_flags(0x3000), UCD_WS);
	ck_assert_uint_eq(moe_ucd_flags(0x1f600), UCD_S);     /* emoji: So */
	ck_assert_uint_eq(moe_ucd_flags(0x200d), 0);          /* ZWJ: Cf */
	ck_assert_uint_eq(moe_ucd_flags(0x10ffff), 0);
	ck_assert_uint_eq(moe_ucd_flags(0x110000), 0);
	ck_assert_int_eq(moe_utf8_invalid_at("ok\xe2\x82", 4), 2);
	ck_assert_int_eq(moe_utf8_invalid_at("\xf4\x90\x80\x80", 4), 0);
	ck_assert_int_eq(moe_utf8_invalid_at("\xf0\x9f\xa6\x99", 4), -1);
}
END_TEST

/* Tokens that split a UTF-8 sequence come out whole, and only once complete. */
START_TEST(stream_detok)
{
	const char *path = vocab_path("gemma-4", "");
	const char *text = "a \xf0\x9f\xa6\x99 llama \xe4\xbd\xa0\xe5\xa5\xbd";
	struct moe_detok_state st = { 0 };
	struct moe_model *m;
	struct moe_tokenizer *t;
	char out[256], buf[64];
	int n, at = 0, held = 0;
	int32_t *ids;

	if (!path)
		path = vocab_path("llama-spm", "");
	ck_assert_ptr_nonnull(path);
	t = load_vocab(path, &m);
	ids = tokenize_all(t, text, strlen(text), 0, &n);
	for (int i = 0; i < n; i++) {
		int k = moe_detok_stream(t, &st, ids[i], buf, sizeof(buf));

		ck_assert_msg(k >= 0, "%s", moe_errmsg());
		ck_assert_msg(moe_utf8_invalid_at(buf, (size_t)k) < 0,
			      "token %d gave a partial UTF-8 sequence", i);
		held += k == 0;
		memcpy(out + at, buf, (size_t)k);
		at += k;
	}
	at += moe_detok_stream(t, &st, -1, out + at, (int)sizeof(out) - at);
	out[at] = 0;
	ck_assert_str_eq(out, text);
	ck_assert_msg(held >= 3, "the 4-byte emoji is 4 byte tokens, 3 of them held back");
	/* A lead byte that the next token does not continue is passed on, not held forever. */
	memset(&st, 0, sizeof(st));
	ck_assert_int_eq(moe_detok_stream(t, &st, moe_tokenizer_find(t, "<0xF0>"), buf, 64), 0);
	n = moe_detok_stream(t, &st, moe_tokenizer_find(t, "<0x41>"), buf, 64);
	ck_assert_int_eq(n, 2);
	ck_assert_int_eq(memcmp(buf, "\xf0" "A", 2), 0);
	/* A lone continuation byte is not held either; a flush returns what is pending. */
	ck_assert_int_eq(moe_detok_stream(t, &st, moe_tokenizer_find(t, "<0x80>"), buf, 64), 1);
	ck_assert_int_eq(moe_detok_stream(t, &st, moe_tokenizer_find(t, "<0xE4>"), buf, 64), 0);
	ck_assert_int_eq(moe_detok_stream(t, &st, -1, buf, 64), 1);
	ck_assert_int_eq((uint8_t)buf[0], 0xe4);
	ck_assert_int_eq(moe_detok_stream(t, &st, -1, buf, 64), 0);
	free(ids);
	moe_tokenizer_destroy(t);
	moe_model_destroy(m);
}
END_TEST

/* What each real vocabulary expects around the text. */
START_TEST(defaults)
{
	static const struct {
		const char *name, *chat;
		bool add_bos;
		int32_t bos, eos;
	} cases[] = {
		{ "llama-bpe", "llama3", true, 128000, 128001 },
		{ "qwen2", "chatml", false, 151643, 151643 },
		{ "llama-spm", "mistral", true, 1, 2 },
		{ "gpt-2", "none", false, 50256, 50256 },
		{ "gemma-4", "gemma4", true, 2, 1 },
	};

	for (size_t k = 0; k < MOE_ARRAY_SIZE(cases); k++) {
		const char *path = vocab_path(cases[k].name, "");
		struct moe_model *m;
		struct moe_tokenizer *t;

		if (!path)
			continue;
		t = load_vocab(path, &m);
		ck_assert_msg(moe_tokenizer_add_bos(t) == cases[k].add_bos, "%s", cases[k].name);
		ck_assert_int_eq(moe_tokenizer_bos(t), cases[k].bos);
		ck_assert_int_eq(moe_tokenizer_eos(t), cases[k].eos);
		ck_assert(moe_tokenizer_is_eog(t, cases[k].eos));
		ck_assert_msg(!strcmp(moe_chat_format(t), cases[k].chat), "%s: %s", cases[k].name,
			      moe_chat_format(t));
		moe_tokenizer_destroy(t);
		moe_model_destroy(m);
	}
}
END_TEST

START_TEST(special_tokens)
{
	const char *path = vocab_path("qwen2", "");
	const char *text = "<|im_start|>user\nhi<|im_end|>";
	struct moe_model *m;
	struct moe_tokenizer *t;
	int32_t *ids;
	char *back;
	int n, len;

	if (!path)
		path = vocab_path("llama-bpe", "");
	t = load_vocab(path, &m);
	ids = tokenize_all(t, text, strlen(text), MOE_TOK_PARSE_SPECIAL, &n);
	if (strstr(path, "qwen2")) {
		ck_assert_int_eq(ids[0], 151644);
		ck_assert_int_eq(ids[n - 1], 151645);
		ck_assert(moe_tokenizer_is_eog(t, 151645));
		ck_assert_str_eq(moe_chat_format(t), "chatml");
	}
	back = detok_all(t, ids, n, MOE_DETOK_SPECIAL, &len);
	ck_assert_str_eq(back, text);
	free(back);
	back = detok_all(t, ids, n, 0, &len);
	ck_assert_str_eq(back, "user\nhi");
	free(back);
	free(ids);
	/* Without --special the markers are plain text. */
	ids = tokenize_all(t, text, strlen(text), 0, &n);
	ck_assert_int_gt(n, 6);
	for (int i = 0; i < n; i++)
		ck_assert_int_lt(ids[i], 151643);
	free(ids);
	moe_tokenizer_destroy(t);
	moe_model_destroy(m);
}
END_TEST

/* 1 MB of mixed text through a real vocabulary: ids round-trip, time logged. */
START_TEST(megabyte)
{
	static const char *const parts[] = {
		"The quick brown fox jumps over the lazy dog. ", "Ünïcödé façade, naïve café; ",
		"\xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c ", "1234567 + 89 = ?\n",
		"    indented(code) { return x->y; }\n\n", "\xf0\x9f\x9a\x80 emoji \xf0\x9f\xa6\x99 ",
	};
	size_t cap = 1 << 20, len = 0;
	char *text = malloc(cap + 128), *back;
	uint64_t rng = 7;

	while (len < cap) {
		const char *p = parts[tu_rand(&rng) % MOE_ARRAY_SIZE(parts)];

		memcpy(text + len, p, strlen(p));
		len += strlen(p);
	}
	for (size_t v = 0; v < MOE_ARRAY_SIZE(vocabs); v++) {
		const char *path = vocab_path(vocabs[v], "");
		struct moe_model *m;
		struct moe_tokenizer *t;
		int32_t *ids;
		int n, bl;
		double t0, t1;

		if (!path)
			continue;
		t0 = moe_now();
		t = load_vocab(path, &m);
		t1 = moe_now();
		/* tokenize_all runs the tokenizer twice: to size the buffer, then to fill it. */
		ids = tokenize_all(t, text, len, 0, &n);
		printf("tokenizer: %-9s load %.3f s, %zu bytes -> %d tokens in %.3f s\n", vocabs[v],
		       t1 - t0, len, n, (moe_now() - t1) / 2);
		back = detok_all(t, ids, n, 0, &bl);
		ck_assert_msg((size_t)bl == len && !memcmp(back, text, len),
			      "%s: 1 MB does not round-trip", vocabs[v]);
		free(back);
		free(ids);
		moe_tokenizer_destroy(t);
		moe_model_destroy(m);
	}
	free(text);
}
END_TEST

/* ------------------------------------------------------------ chat */

#define DS_BAR "\xef\xbd\x9c"
#define DS_BOS "<" DS_BAR "begin\xe2\x96\x81of\xe2\x96\x81sentence" DS_BAR ">"
#define DS_EOS "<" DS_BAR "end\xe2\x96\x81of\xe2\x96\x81sentence" DS_BAR ">"
#define DS_USER "<" DS_BAR "User" DS_BAR ">"
#define DS_ASSISTANT "<" DS_BAR "Assistant" DS_BAR ">"

static struct moe_tokenizer *chat_tok(const char *tmpl, const char *arch)
{
	static const char *const toks[] = {
		"<unk>", "<s>", "</s>", "<|begin_of_text|>", "<bos>", "<eos>", DS_BOS, DS_EOS,
	};
	struct tok_spec sp = {
		.model = "llama", .n_vocab = MOE_ARRAY_SIZE(toks), .tokens = toks,
		.bos = 1, .eos = 2, .eot = -1, .eom = -1, .unk = 0, .add_bos = -1,
		.add_space_prefix = -1, .arch = arch, .chat_template = tmpl,
		.chat_template_len = tmpl ? strlen(tmpl) : 0,
	};
	struct moe_tokenizer *t;

	if (arch && !strcmp(arch, "llama4"))
		sp.bos = 3;
	if (arch && !strcmp(arch, "gemma4")) {
		sp.bos = 4;
		sp.eos = 5;
	}
	if (arch && !strcmp(arch, "deepseek2")) {
		sp.bos = 6;
		sp.eos = 7;
	}
	ck_assert_int_eq(tok_build(&sp, &t), 0);
	return t;
}

START_TEST(chat_formats)
{
	static const struct moe_chat_msg conv[] = {
		{ "system", "Be brief." }, { "user", "Hi" }, { "assistant", "Hello." },
		{ "user", "2+2?" },
	};
	static const struct {
		const char *tmpl, *arch, *fmt, *want;
	} cases[] = {
		{ "{{'<|im_start|>' + role}}", "qwen3moe", "chatml",
		  "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
		  "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
		  "<|im_start|>assistant\n" },
		{ NULL, "llama4", "llama4",
		  "<|begin_of_text|><|header_start|>system<|header_end|>\n\nBe brief.<|eot|>"
		  "<|header_start|>user<|header_end|>\n\nHi<|eot|>"
		  "<|header_start|>assistant<|header_end|>\n\nHello.<|eot|>"
		  "<|header_start|>user<|header_end|>\n\n2+2?<|eot|>"
		  "<|header_start|>assistant<|header_end|>\n\n" },
		{ "{{ '<|start_header_id|>' }}", "llama", "llama3",
		  "<s><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
		  "December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
		  "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
		  "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
		  "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
		  "<|start_header_id|>assistant<|end_header_id|>\n\n" },
		{ "{{ \"[INST]\" + message[\"content\"] + \"[/INST]\" }}", "llama", "mistral",
		  "<s>[INST]Hi[/INST]Hello.</s>[INST]Be brief.\n\n2+2?[/INST]" },
		{ "{{ '[INST] ' + message['content'] + ' [/INST]' }}", "llama", "mistral",
		  "<s>[INST] Hi [/INST]Hello.</s>[INST] Be brief.\n\n2+2? [/INST]" },
		{ NULL, "gemma4", "gemma4",
		  "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n"
		  "<|turn>model\nHello.<turn|>\n<|turn>user\n2+2?<turn|>\n"
		  "<|turn>model\n<|channel>thought\n<channel|>" },
	};

	for (size_t k = 0; k < MOE_ARRAY_SIZE(cases); k++) {
		struct moe_tokenizer *t = chat_tok(cases[k].tmpl, cases[k].arch);
		char *out;
		int n = moe_chat_render(t, conv, 4, true, &out);

		ck_assert_msg(n > 0, "%s: %s", cases[k].fmt, moe_errmsg());
		ck_assert_str_eq(moe_chat_format(t), cases[k].fmt);
		ck_assert_msg(!strcmp(out, cases[k].want), "%s:\n got '%s'\nwant '%s'",
			      cases[k].fmt, out, cases[k].want);
		ck_assert_int_eq(n, (int)strlen(out));
		free(out);
		moe_tokenizer_destroy(t);
	}
}
END_TEST

START_TEST(chat_harmony_and_errors)
{
	static const struct moe_chat_msg conv[] = {
		{ "system", "Be brief." }, { "user", "Hi" },
	};
	struct moe_tokenizer *t = chat_tok("<|start|>assistant<|channel|>", "gpt-oss");
	char *out;

	ck_assert_int_gt(moe_chat_render(t, conv, 2, true, &out), 0);
	ck_assert_str_eq(moe_chat_format(t), "harmony");
	ck_assert_msg(!strncmp(out, "<|start|>system<|message|>You are ChatGPT", 41), "%s", out);
	ck_assert_ptr_nonnull(strstr(out, "Reasoning: medium\n\n"));
	ck_assert_ptr_nonnull(strstr(out, "<|end|><|start|>developer<|message|># Instructions\n\n"
					  "Be brief.\n\n<|end|><|start|>user<|message|>Hi<|end|>"));
	ck_assert_str_eq(out + strlen(out) - strlen("<|end|><|start|>assistant"),
			 "<|end|><|start|>assistant");
	free(out);
	ck_assert_int_eq(moe_chat_render(t, (struct moe_chat_msg[]){ { "robot", "x" } }, 1, true,
					 &out), -EINVAL);
	ck_assert_msg(strstr(moe_errmsg(), "robot"), "%s", moe_errmsg());
	ck_assert_int_eq(moe_chat_render(t, (struct moe_chat_msg[]){ { "user", NULL } }, 1, true,
					 &out), -EINVAL);
	moe_tokenizer_destroy(t);
	t = chat_tok(NULL, "mystery");
	ck_assert_int_eq(moe_chat_render(t, conv, 2, true, &out), -EOPNOTSUPP);
	ck_assert_str_eq(moe_chat_format(t), "none");
	moe_tokenizer_destroy(t);
}
END_TEST

/*
 * DeepSeek, GLM-4.6 and 4.7 and Kimi K2 with their real templates
 * (tests/data/templates): the prompts are what Jinja renders from each
 * (trim_blocks and lstrip_blocks, as Hugging Face applies them) for three
 * conversations: with a system message, with reasoning in an earlier answer,
 * and one ending in an answer (no assistant prefix).
 */
START_TEST(chat_real_templates)
{
	static const struct moe_chat_msg convs[3][4] = {
		{ { "system", "Be brief." }, { "user", "Hi" }, { "assistant", "Hello." },
		  { "user", "2+2?" } },
		{ { "user", "Hi" }, { "assistant", "<think>greet</think>Hello." }, { "user", "2+2?" } },
		{ { "user", "Hi" }, { "assistant", "<think>\nplan\n</think>\n\nHello." } },
	};
	static const int n_msgs[3] = { 4, 3, 2 };
	static const struct {
		const char *file, *arch, *fmt;
		int conv;
		const char *want;
	} cases[] = {
		{ "deepseek-ai-DeepSeek-V2-Chat.jinja", "deepseek2", "deepseek2", 0,
		  DS_BOS "Be brief.\n\nUser: Hi\n\nAssistant: Hello." DS_EOS
		  "User: 2+2?\n\nAssistant:" },
		{ "deepseek-ai-DeepSeek-V2-Chat.jinja", "deepseek2", "deepseek2", 1,
		  DS_BOS "User: Hi\n\nAssistant: <think>greet</think>Hello." DS_EOS
		  "User: 2+2?\n\nAssistant:" },
		{ "deepseek-ai-DeepSeek-V2-Chat.jinja", "deepseek2", "deepseek2", 2,
		  DS_BOS "User: Hi\n\nAssistant: <think>\nplan\n</think>\n\nHello." DS_EOS },
		{ "deepseek-ai-DeepSeek-V3.jinja", "deepseek2", "deepseek3", 0,
		  DS_BOS "Be brief." DS_USER "Hi" DS_ASSISTANT "Hello." DS_EOS DS_USER "2+2?"
		  DS_ASSISTANT },
		{ "deepseek-ai-DeepSeek-V3.jinja", "deepseek2", "deepseek3", 1,
		  DS_BOS DS_USER "Hi" DS_ASSISTANT "<think>greet</think>Hello." DS_EOS DS_USER "2+2?"
		  DS_ASSISTANT },
		{ "deepseek-ai-DeepSeek-V3.jinja", "deepseek2", "deepseek3", 2,
		  DS_BOS DS_USER "Hi" DS_ASSISTANT "<think>\nplan\n</think>\n\nHello." DS_EOS },
		{ "deepseek-ai-DeepSeek-V3.1.jinja", "deepseek2", "deepseek3", 0,
		  DS_BOS "Be brief." DS_USER "Hi" DS_ASSISTANT "<think></think>Hello." DS_EOS DS_USER
		  "2+2?" DS_ASSISTANT "<think></think>" },
		{ "deepseek-ai-DeepSeek-V3.1.jinja", "deepseek2", "deepseek3", 1,
		  DS_BOS DS_USER "Hi" DS_ASSISTANT "<think></think>Hello." DS_EOS DS_USER "2+2?"
		  DS_ASSISTANT "<think></think>" },
		{ "deepseek-ai-DeepSeek-V3.1.jinja", "deepseek2", "deepseek3", 2,
		  DS_BOS DS_USER "Hi" DS_ASSISTANT "<think></think>\n\nHello." DS_EOS },
		{ "GLM-4.6.jinja", "glm4moe", "glm4", 0,
		  "[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>"
		  "\n<think></think>\nHello.<|user|>\n2+2?<|assistant|>" },
		{ "GLM-4.6.jinja", "glm4moe", "glm4", 1,
		  "[gMASK]<sop><|user|>\nHi<|assistant|>\n<think></think>"
		  "\nHello.<|user|>\n2+2?<|assistant|>" },
		{ "GLM-4.6.jinja", "glm4moe", "glm4", 2,
		  "[gMASK]<sop><|user|>\nHi<|assistant|>\n<think>plan</think>" "\nHello." },
		{ "GLM-4.7-Flash.jinja", "glm4moe", "glm4", 0,
		  "[gMASK]<sop><|system|>Be brief.<|user|>Hi<|assistant|>"
		  "</think>Hello.<|user|>2+2?<|assistant|><think>" },
		{ "GLM-4.7-Flash.jinja", "glm4moe", "glm4", 1,
		  "[gMASK]<sop><|user|>Hi<|assistant|></think>"
		  "Hello.<|user|>2+2?<|assistant|><think>" },
		{ "GLM-4.7-Flash.jinja", "glm4moe", "glm4", 2,
		  "[gMASK]<sop><|user|>Hi<|assistant|><think>plan</think>" "Hello." },
		{ "Kimi-K2-Instruct.jinja", "deepseek2", "kimi-k2", 0,
		  "<|im_system|>system<|im_middle|>Be brief.<|im_end|>"
		  "<|im_user|>user<|im_middle|>Hi<|im_end|><|im_assistant|>"
		  "assistant<|im_middle|>Hello.<|im_end|><|im_user|>"
		  "user<|im_middle|>2+2?<|im_end|><|im_assistant|>" "assistant<|im_middle|>" },
		{ "Kimi-K2-Instruct.jinja", "deepseek2", "kimi-k2", 1,
		  "<|im_system|>system<|im_middle|>"
		  "You are Kimi, an AI assistant created by Moonshot AI.<|i"
		  "m_end|>\n<|im_user|>user<|im_middle|>Hi<|im_end|>"
		  "<|im_assistant|>assistant<|im_middle|><think>"
		  "greet</think>Hello.<|im_end|><|im_user|>"
		  "user<|im_middle|>2+2?<|im_end|><|im_assistant|>" "assistant<|im_middle|>" },
		{ "Kimi-K2-Instruct.jinja", "deepseek2", "kimi-k2", 2,
		  "<|im_system|>system<|im_middle|>"
		  "You are Kimi, an AI assistant created by Moonshot AI.<|i"
		  "m_end|>\n<|im_user|>user<|im_middle|>Hi<|im_end|>"
		  "<|im_assistant|>assistant<|im_middle|><think>"
		  "\nplan\n</think>\n\nHello.<|im_end|>" },
		{ "Kimi-K2-Thinking.jinja", "deepseek2", "kimi-k2", 0,
		  "<|im_system|>system<|im_middle|>Be brief.<|im_end|>"
		  "<|im_user|>user<|im_middle|>Hi<|im_end|><|im_assistant|>"
		  "assistant<|im_middle|><think></think>Hello.<|im_end|>"
		  "<|im_user|>user<|im_middle|>2+2?<|im_end|>"
		  "<|im_assistant|>assistant<|im_middle|>" },
		{ "Kimi-K2-Thinking.jinja", "deepseek2", "kimi-k2", 1,
		  "<|im_system|>system<|im_middle|>"
		  "You are Kimi, an AI assistant created by Moonshot AI.<|i"
		  "m_end|><|im_user|>user<|im_middle|>Hi<|im_end|>"
		  "<|im_assistant|>assistant<|im_middle|><think></think>"
		  "<think>greet</think>Hello.<|im_end|><|im_user|>"
		  "user<|im_middle|>2+2?<|im_end|><|im_assistant|>" "assistant<|im_middle|>" },
		{ "Kimi-K2-Thinking.jinja", "deepseek2", "kimi-k2", 2,
		  "<|im_system|>system<|im_middle|>"
		  "You are Kimi, an AI assistant created by Moonshot AI.<|i"
		  "m_end|><|im_user|>user<|im_middle|>Hi<|im_end|>"
		  "<|im_assistant|>assistant<|im_middle|><think></think>"
		  "<think>\nplan\n</think>\n\nHello.<|im_end|>" },
		{ "moonshotai-Kimi-K2.jinja", "deepseek2", "kimi-k2", 0,
		  "<|im_system|>system<|im_middle|>Be brief.<|im_end|>"
		  "<|im_user|>user<|im_middle|>Hi<|im_end|><|im_assistant|>"
		  "assistant<|im_middle|>Hello.<|im_end|><|im_user|>"
		  "user<|im_middle|>2+2?<|im_end|><|im_assistant|>" "assistant<|im_middle|>" },
		{ "moonshotai-Kimi-K2.jinja", "deepseek2", "kimi-k2", 1,
		  "<|im_system|>system<|im_middle|>"
		  "You are a helpful assistant<|im_end|><|im_user|>"
		  "user<|im_middle|>Hi<|im_end|><|im_assistant|>"
		  "assistant<|im_middle|><think>greet</think>"
		  "Hello.<|im_end|><|im_user|>user<|im_middle|>"
		  "2+2?<|im_end|><|im_assistant|>assistant<|im_middle|>" },
		{ "moonshotai-Kimi-K2.jinja", "deepseek2", "kimi-k2", 2,
		  "<|im_system|>system<|im_middle|>"
		  "You are a helpful assistant<|im_end|><|im_user|>"
		  "user<|im_middle|>Hi<|im_end|><|im_assistant|>"
		  "assistant<|im_middle|><think>\nplan\n</think>" "\n\nHello.<|im_end|>" },
	};

	for (size_t k = 0; k < MOE_ARRAY_SIZE(cases); k++) {
		char rel[256], *tmpl, *out;
		struct moe_tokenizer *t;
		int n, c = cases[k].conv;

		snprintf(rel, sizeof(rel), "tests/data/templates/%s", cases[k].file);
		tmpl = tu_read_file(tu_src(rel), NULL);
		ck_assert_msg(tmpl != NULL, "cannot read %s", rel);
		t = chat_tok(tmpl, cases[k].arch);
		ck_assert_str_eq(moe_chat_format(t), cases[k].fmt);
		n = moe_chat_render(t, convs[c], n_msgs[c], c != 2, &out);
		ck_assert_msg(n > 0, "%s: %s", cases[k].file, moe_errmsg());
		ck_assert_msg(!strcmp(out, cases[k].want), "%s, conversation %d:\n got '%s'\nwant '%s'",
			      cases[k].file, c, out, cases[k].want);
		free(out);
		free(tmpl);
		moe_tokenizer_destroy(t);
	}
}
END_TEST

/* DeepSeek-R1's reply opens a think block; its answers are shown without their reasoning. */
START_TEST(chat_deepseek_r1)
{
	static const struct moe_chat_msg conv[] = {
		{ "user", "Hi" }, { "assistant", "<think>a</think>b</think>Hello." }, { "user", "2+2?" },
	};
	struct moe_tokenizer *t = chat_tok("{% set content = content.split('</think>')[-1] %}"
					   "{{'" DS_ASSISTANT "<think>\\n'}}", "deepseek2");
	char *out;

	ck_assert_int_gt(moe_chat_render(t, conv, 3, true, &out), 0);
	ck_assert_str_eq(moe_chat_format(t), "deepseek3");
	ck_assert_str_eq(out, DS_BOS DS_USER "Hi" DS_ASSISTANT "Hello." DS_EOS DS_USER "2+2?"
			 DS_ASSISTANT "<think>\n");
	free(out);
	moe_tokenizer_destroy(t);
}
END_TEST

/*
 * Without a template, the architecture and the tokenizer's split choose:
 * deepseek2 is DeepSeek-V2, V3 or Kimi K2 by tokenizer.ggml.pre.  The
 * prompt of the real DeepSeek-V3 vocabulary parses back into its markers.
 */
START_TEST(chat_by_arch)
{
	static const struct {
		const char *pre, *fmt;
	} cases[] = {
		{ "deepseek-v3", "deepseek3" }, { "kimi-k2", "kimi-k2" }, { "deepseek-llm", "deepseek2" },
	};
	static const struct moe_chat_msg conv[] = { { "user", "Hi" } };

	for (size_t k = 0; k < MOE_ARRAY_SIZE(cases); k++) {
		struct fixture fx;
		struct moe_tokenizer *t = load_fixture("deepseek-v3", cases[k].pre, &fx);
		int32_t *ids;
		char *out;
		int n, len = moe_chat_render(t, conv, 1, true, &out);

		ck_assert_int_gt(len, 0);
		ck_assert_str_eq(moe_chat_format(t), cases[k].fmt);
		ids = tokenize_all(t, out, (size_t)len, MOE_TOK_PARSE_SPECIAL, &n);
		if (!strcmp(cases[k].fmt, "deepseek3")) {
			ck_assert_str_eq(out, DS_BOS DS_USER "Hi" DS_ASSISTANT);
			/* "Hi" is one or two tokens: the cut vocabulary has only its texts' tokens */
			ck_assert_int_ge(n, 4);
			ck_assert_int_eq(ids[0], moe_tokenizer_bos(t));
			ck_assert_int_eq(ids[1], moe_tokenizer_find(t, DS_USER));
			ck_assert_int_eq(ids[n - 1], moe_tokenizer_find(t, DS_ASSISTANT));
		}
		ck_assert(moe_tokenizer_add_bos(t));
		ck_assert(moe_tokenizer_is_eog(t, moe_tokenizer_find(t, DS_EOS)));
		free(ids);
		free(out);
		moe_tokenizer_destroy(t);
		fixture_free(&fx);
	}
	{
		struct moe_tokenizer *t = chat_tok(NULL, "glm4moe");

		ck_assert_str_eq(moe_chat_format(t), "glm4");
		moe_tokenizer_destroy(t);
	}
}
END_TEST

/* The real templates' families are recognised. */
START_TEST(chat_detect_templates)
{
	static const struct {
		const char *file, *arch;
		enum chat_format want;
	} cases[] = {
		{ "Qwen-Qwen3-0.6B.jinja", "qwen3moe", CHAT_CHATML },
		{ "openai-gpt-oss-120b.jinja", "gpt-oss", CHAT_HARMONY },
		{ "google-gemma-4-31B-it.jinja", "gemma4", CHAT_GEMMA4 },
		{ "meta-llama-Llama-3.3-70B-Instruct.jinja", "llama", CHAT_LLAMA3 },
		{ "mistralai-Mistral-Nemo-Instruct-2407.jinja", "llama", CHAT_MISTRAL },
		{ "deepseek-ai-DeepSeek-V2-Chat.jinja", "deepseek2", CHAT_DEEPSEEK2 },
		{ "deepseek-ai-DeepSeek-V3.jinja", "deepseek2", CHAT_DEEPSEEK3 },
		{ "deepseek-ai-DeepSeek-V3.1.jinja", "deepseek2", CHAT_DEEPSEEK3 },
		{ "GLM-4.6.jinja", "glm4moe", CHAT_GLM4 },
		{ "GLM-4.7-Flash.jinja", "glm4moe", CHAT_GLM4 },
		{ "Kimi-K2-Instruct.jinja", "deepseek2", CHAT_KIMI_K2 },
		{ "Kimi-K2-Thinking.jinja", "deepseek2", CHAT_KIMI_K2 },
		{ "moonshotai-Kimi-K2.jinja", "deepseek2", CHAT_KIMI_K2 },
	};

	for (size_t k = 0; k < MOE_ARRAY_SIZE(cases); k++) {
		char rel[256];
		const char *path;
		size_t len;
		char *tmpl;

		/* Ours in tests/data/templates, the others in shared/reference/templates. */
		snprintf(rel, sizeof(rel), "tests/data/templates/%s", cases[k].file);
		path = access(tu_src(rel), R_OK) ? NULL : tu_src(rel);
		snprintf(rel, sizeof(rel), "reference/templates/%s", cases[k].file);
		if (!path)
			path = tu_shared(rel);
		if (!path)
			continue;
		tmpl = tu_read_file(path, &len);
		ck_assert_int_eq(tok_chat_detect(tmpl, len, cases[k].arch), cases[k].want);
		/* A model with its template stripped still gets its family's format. */
		ck_assert_int_eq(tok_chat_detect(NULL, 0, cases[k].arch) != CHAT_NONE, 1);
		free(tmpl);
	}
}
END_TEST

/* ------------------------------------------------------------ moectl */

START_TEST(moectl_roundtrip)
{
	const char *found = vocab_path("llama-bpe", "");
	char cmd[8192], path[1024], *out = NULL;

	/* tu_bin and tu_shared share a ring of buffers: keep our own copy. */
	snprintf(path, sizeof(path), "%s", found ? found : vocab_path("gpt-2", ""));
	snprintf(cmd, sizeof(cmd), "%s tokenize %s 'Hello world'", tu_bin("moectl"), path);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	if (strstr(path, "llama-bpe"))
		ck_assert_str_eq(out, "9906 1917\n");
	free(out);
	snprintf(cmd, sizeof(cmd), "%s tokenize --bos %s 'Hello world'", tu_bin("moectl"), path);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	if (strstr(path, "llama-bpe"))
		ck_assert_str_eq(out, "128000 9906 1917\n");
	free(out);
	snprintf(cmd, sizeof(cmd),
		 "printf 'caf\\303\\251 <|begin_of_text|>' | %s --json tokenize --special %s -",
		 tu_bin("moectl"), path);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	ck_assert_msg(strstr(out, "\"ids\": [") && strstr(out, "\"pieces\": ["), "%s", out);
	if (strstr(path, "llama-bpe"))
		ck_assert_msg(strstr(out, "128000]"), "%s", out);
	free(out);
	/* A byte-level piece holding half of a character is shown as U+FFFD. */
	snprintf(cmd, sizeof(cmd), "%s --json tokenize %s '\360\237\246\231'", tu_bin("moectl"),
		 path);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	if (strstr(path, "llama-bpe"))
		ck_assert_msg(strstr(out, "\xef\xbf\xbd"), "%s", out);
	ck_assert_msg(moe_utf8_invalid_at(out, strlen(out)) < 0, "JSON is not UTF-8: %s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s detokenize %s $(%s tokenize %s 'caf\303\251 ok')",
		 tu_bin("moectl"), path, tu_bin("moectl"), path);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	ck_assert_str_eq(out, "caf\303\251 ok");
	free(out);
	/* Options may follow the arguments; "--" protects a text that starts with '-'. */
	snprintf(cmd, sizeof(cmd), "%s detokenize %s $(%s tokenize --bos %s -- '-x') --special",
		 tu_bin("moectl"), path, tu_bin("moectl"), path);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	if (strstr(path, "llama-bpe"))
		ck_assert_str_eq(out, "<|begin_of_text|>-x");
	free(out);
	/* Failures: bad id (1), bad UTF-8 (1), usage (2), missing file (1). */
	snprintf(cmd, sizeof(cmd), "%s detokenize %s 99999999", tu_bin("moectl"), path);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_msg(strstr(out, "outside the vocabulary"), "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "printf 'a\\377' | %s tokenize %s -", tu_bin("moectl"), path);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_msg(strstr(out, "UTF-8"), "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s detokenize %s x12", tu_bin("moectl"), path);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 2);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s tokenize %s", tu_bin("moectl"), path);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 2);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s tokenize /nonexistent.gguf hi", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	free(out);
}
END_TEST

Suite *suite_tokenizer(void)
{
	Suite *s = suite_create("tokenizer");
	TCase *tc = tcase_create("tokenizer");
	bool any = false;

	tcase_set_timeout(tc, 240);
	for (size_t i = 0; i < MOE_ARRAY_SIZE(vocabs); i++) {
		char why[128];

		if (vocab_path(vocabs[i], "") && vocab_path(vocabs[i], ".inp") &&
		    vocab_path(vocabs[i], ".out")) {
			tcase_add_loop_test(tc, conformance, (int)i, (int)i + 1);
			any = true;
			continue;
		}
		snprintf(why, sizeof(why), "shared/reference/vocab has no ggml-vocab-%s.gguf",
			 vocabs[i]);
		tu_skip("tokenizer/conformance", why);
	}
	tcase_add_loop_test(tc, fixture_conformance, 0, (int)MOE_ARRAY_SIZE(fixtures));
	tcase_add_test(tc, splits_reference);
	for (size_t i = 0; i < MOE_ARRAY_SIZE(full_vocabs); i++) {
		if (cache_vocab(full_vocabs[i], "") && cache_vocab(full_vocabs[i], ".inp") &&
		    cache_vocab(full_vocabs[i], ".out")) {
			tcase_add_loop_test(tc, full_conformance, (int)i, (int)i + 1);
			continue;
		}
		tu_skip("tokenizer/full_conformance",
			"llama.cpp's whole vocabularies are not cached (run scripts/fetch-llama-vocab.sh); the derived ones ran");
		break;
	}
	if (cache_vocab("gpt-neox", ""))
		tcase_add_test(tc, full_gpt_neox);
	else
		tu_skip("tokenizer/full_gpt_neox",
			"llama.cpp's GPT-NeoX vocabulary is not cached (run scripts/fetch-llama-vocab.sh)");
	tcase_add_test(tc, spm_small);
	tcase_add_test(tc, bad_vocab);
	tcase_add_test(tc, bad_merges);
	tcase_add_test(tc, bad_text);
	tcase_add_test(tc, missing_bytes);
	tcase_add_test(tc, pretok_splits);
	tcase_add_test(tc, unicode_props);
	tcase_add_test(tc, chat_formats);
	tcase_add_test(tc, chat_harmony_and_errors);
	tcase_add_test(tc, chat_detect_templates);
	tcase_add_test(tc, chat_real_templates);
	tcase_add_test(tc, chat_deepseek_r1);
	tcase_add_test(tc, chat_by_arch);
	if (any) {
		tcase_add_test(tc, stream_detok);
		tcase_add_test(tc, special_tokens);
		tcase_add_test(tc, defaults);
		tcase_add_test(tc, megabyte);
		tcase_add_test(tc, moectl_roundtrip);
	} else {
		tu_skip("tokenizer/stream_detok, special_tokens, megabyte, moectl_roundtrip",
			"shared/reference/vocab is missing");
	}
	suite_add_tcase(s, tc);
	return s;
}
