/* SPDX-License-Identifier: MIT */
/*
 * The --vocab-bpe vocabulary: byte-level BPE merges learned at run time
 * from a built-in text, written as a GPT-2 style tokenizer.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkmodel.h"


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

int mk_add_tokenizer(struct moe_gguf_writer *w, const struct opts *o)
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

