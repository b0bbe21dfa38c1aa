/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the tokenizers.  `make fuzz` builds it with
 * -fsanitize=fuzzer; `make check` replays tests/fuzz/corpus/tokenizer/.
 *
 * Input: byte 0 picks a mode, byte 1 the flags, the rest is either text for
 * one of eleven small built-in vocabularies (SentencePiece, Gemma 4, and
 * byte-level BPE with each split: GPT-2, Llama 3, GPT-4o, Qwen 3.5, Kimi K2,
 * DeepSeek LLM, Coder and V3, GLM-4) or, in modes 5-7 and 14-15, a
 * vocabulary itself: tokens one per line, an empty line, then merges one
 * per line.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "text/tokenizer.h"
#include "text/unicode.h"

int fuzz_tokenizer(const uint8_t *data, size_t size);

static const char *const pieces[] = {
	"\xe2\x96\x81", "\xe2\x96\x81t", "\xe2\x96\x81th", "\xe2\x96\x81the", "he", "in", "er",
	"\xe2\x96\x81\xe2\x96\x81", "\n", "\n\n", "<|eot|>", "<s>", "[U]", "\xc3\xa9", "\xe4\xbd\xa0",
};

#define N_FIXED 11
static struct moe_tokenizer *fixed[N_FIXED];

/* 0: SentencePiece, 4: Gemma 4, the others byte-level BPE with the splits of pre[]. */
static bool is_bpe(int kind)
{
	return kind != 0 && kind != 4;
}

static struct moe_tokenizer *build_fixed(int kind)
{
	static const char *const bpe_merges[] = { "Ġ t", "h e", "Ġt he", "i n", "e r", "Ġ Ġ" };
	static const char *const bpe_extra[] = { "Ġt", "he", "Ġthe", "in", "er", "ĠĠ", "<|eot|>",
						 "[U]" };
	static const char *const g4_merges[] = {
		"\xe2\x96\x81 t", "t h", "\xe2\x96\x81t h", "\xe2\x96\x81th e", "h e", "i n",
		"e r", "\xe2\x96\x81 \xe2\x96\x81", "\n \n",
	};
	static const char *pre[N_FIXED] = {
		NULL, "gpt-2", "llama-bpe", "gpt-4o", NULL, "qwen35", "kimi-k2", "deepseek-llm",
		"deepseek-coder", "deepseek-v3", "glm4",
	};
	const char *toks[512];
	int32_t types[512];
	float scores[512];
	char text[512][8];
	struct tok_spec sp = {
		.bos = -1, .eos = -1, .eot = -1, .eom = -1, .unk = -1, .add_bos = -1,
		.add_space_prefix = -1, .arch = "llama",
	};
	struct moe_tokenizer *t = NULL;
	uint32_t n = 0;

	if (is_bpe(kind)) {
		unsigned next = 256;

		for (unsigned b = 0; b < 256; b++) {
			bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) ||
					 b >= 0xae;

			text[n][moe_utf8_encode(printable ? b : next++, text[n])] = 0;
			types[n] = TT_NORMAL;
			toks[n] = text[n];
			n++;
		}
		for (size_t i = 0; i < sizeof(bpe_extra) / sizeof(*bpe_extra); i++) {
			types[n] = strchr(bpe_extra[i], '<') ? TT_CONTROL :
				   strchr(bpe_extra[i], '[') ? TT_USER : TT_NORMAL;
			toks[n++] = bpe_extra[i];
		}
		sp.model = "gpt2";
		sp.pre = pre[kind];
		sp.merges = bpe_merges;
		sp.n_merges = sizeof(bpe_merges) / sizeof(*bpe_merges);
	} else {
		toks[n] = "<unk>";
		types[n++] = TT_UNKNOWN;
		for (unsigned b = 0; b < 256; b++) {
			snprintf(text[n], sizeof(text[n]), "<0x%02X>", b);
			types[n] = TT_BYTE;
			toks[n] = text[n];
			n++;
		}
		for (unsigned c = 'a'; c <= 'z'; c++) {
			text[n][0] = (char)c;
			text[n][1] = 0;
			types[n] = TT_NORMAL;
			toks[n] = text[n];
			n++;
		}
		for (size_t i = 0; i < sizeof(pieces) / sizeof(*pieces); i++) {
			types[n] = !strcmp(pieces[i], "<|eot|>") || !strcmp(pieces[i], "<s>") ?
				   TT_CONTROL : !strcmp(pieces[i], "[U]") ? TT_USER : TT_NORMAL;
			toks[n++] = pieces[i];
		}
		if (kind == 0) {
			sp.model = "llama";
		} else {
			sp.model = "gemma4";
			sp.merges = g4_merges;
			sp.n_merges = sizeof(g4_merges) / sizeof(*g4_merges);
		}
		sp.unk = 0;
	}
	for (uint32_t i = 0; i < n; i++)
		scores[i] = -(float)((i * 7919u) % 97u);
	sp.n_vocab = n;
	sp.tokens = toks;
	sp.types = types;
	sp.scores = scores;
	if (tok_build(&sp, &t)) {
		fprintf(stderr, "fuzz_tokenizer: built-in vocabulary %d: %s\n", kind, moe_errmsg());
		abort();
	}
	return t;
}

static void exercise(const struct moe_tokenizer *t, const char *text, size_t len, uint32_t flags,
		     bool lossless)
{
	struct moe_detok_state st = { .flags = MOE_DETOK_SPECIAL };
	struct moe_chat_msg msg[2] = { { "system", "s" }, { "user", NULL } };
	int n = moe_tokenize(t, text, len, flags, NULL, 0), dl, at = 0;
	int32_t *ids;
	char *back, *chat, *stream;

	if (n < 0)
		return;
	ids = malloc(((size_t)n + 1) * sizeof(*ids));
	if (!ids)
		return;
	if (moe_tokenize(t, text, len, flags, ids, n) != n)
		abort();
	dl = moe_detokenize(t, ids, n, MOE_DETOK_SPECIAL, NULL, 0);
	if (dl < 0)
		abort();
	back = malloc((size_t)dl + 1);
	stream = malloc((size_t)dl + 64);
	if (back && stream) {
		if (moe_detokenize(t, ids, n, MOE_DETOK_SPECIAL, back, dl) != dl)
			abort();
		if (lossless && ((size_t)dl != len || memcmp(back, text, len)))
			abort();
		for (int i = 0; i < n; i++) {
			int k = moe_detok_stream(t, &st, ids[i], stream + at, dl + 64 - at);

			if (k < 0)
				abort();
			at += k;
		}
		at += moe_detok_stream(t, &st, -1, stream + at, dl + 64 - at);
		if (at != dl || memcmp(stream, back, (size_t)dl))
			abort();
		back[dl] = 0;
		msg[1].content = back;
		if (moe_chat_render(t, msg, 2, true, &chat) >= 0)
			free(chat);
	}
	for (int i = 0; i < n; i++) {
		char piece[64];

		if (moe_token_to_piece(t, ids[i], piece, sizeof(piece)) < 0)
			abort();
	}
	free(stream);
	free(back);
	free(ids);
}

/* Tokens, an empty line, merges: builds must fail cleanly or tokenize safely. */
static void fuzz_vocab(const char *d, size_t size, uint8_t flags)
{
	static const char *const models[] = { "gpt2", "llama", "gemma4", "gpt2" };
	static const char *const pres[] = { "qwen2", NULL, NULL, "llama4" };
	/* Flags 0x10 and up pick one of the other splits for a byte-level vocabulary. */
	static const char *const more_pres[] = {
		"qwen35", "kimi-k2", "deepseek-llm", "deepseek-coder", "deepseek-v3", "glm4",
		"gpt-2", "llama-bpe",
	};
	const char **toks = calloc(size + 1, sizeof(*toks));
	const char **merges = calloc(size + 1, sizeof(*merges));
	uint32_t *tl = calloc(size + 1, sizeof(*tl)), *ml = calloc(size + 1, sizeof(*ml));
	int32_t *types = calloc(size + 1, sizeof(*types));
	struct tok_spec sp = {
		.bos = -1, .eos = -1, .eot = -1, .eom = -1, .unk = -1, .add_bos = -1,
		.add_space_prefix = -1,
	};
	struct moe_tokenizer *t = NULL;
	uint32_t nt = 0, nm = 0;
	bool in_merges = false;
	size_t i = 0;

	if (!toks || !merges || !tl || !ml || !types)
		goto out;
	while (i < size) {
		const char *nl = memchr(d + i, '\n', size - i);
		size_t len = nl ? (size_t)(nl - (d + i)) : size - i;

		if (!len && !in_merges) {
			in_merges = true;
		} else if (in_merges) {
			merges[nm] = d + i;
			ml[nm++] = (uint32_t)len;
		} else {
			toks[nt] = d + i;
			types[nt] = 1 + (int32_t)(nt * 5 % 7) % 6;
			tl[nt++] = (uint32_t)len;
		}
		i += len + 1;
	}
	sp.model = models[flags & 3];
	sp.pre = pres[flags & 3];
	if (sp.pre && flags >> 4)
		sp.pre = more_pres[((flags >> 4) - 1) % (sizeof(more_pres) / sizeof(*more_pres))];
	sp.n_vocab = nt;
	sp.tokens = toks;
	sp.token_lens = tl;
	sp.types = (flags & 4) ? types : NULL;
	sp.n_merges = nm;
	sp.merges = merges;
	sp.merge_lens = ml;
	sp.bos = nt ? (int64_t)(flags % nt) : -1;
	if (tok_build(&sp, &t) == 0) {
		static const char text[] = "the in er \xc3\xa9\n\n<s>";

		exercise(t, text, sizeof(text) - 1, MOE_TOK_PARSE_SPECIAL, false);
		moe_tokenizer_destroy(t);
	}
out:
	free(toks);
	free(merges);
	free(tl);
	free(ml);
	free(types);
}

int fuzz_tokenizer(const uint8_t *data, size_t size)
{
	uint8_t mode, flags;
	int kind;

	if (size < 2)
		return 0;
	mode = data[0] % 16;
	flags = data[1];
	data += 2;
	size -= 2;
	if ((mode >= 5 && mode <= 7) || mode >= 14) {
		fuzz_vocab((const char *)data, size, flags);
		return 0;
	}
	kind = mode < 5 ? mode : mode - 3;
	if (!fixed[kind])
		fixed[kind] = build_fixed(kind);
	/* Byte-level BPE gives back exactly the bytes it was given. */
	exercise(fixed[kind], (const char *)data, size, flags & MOE_TOK_FLAGS_ALL, is_bpe(kind));
	return 0;
}

#ifdef MOE_FUZZ_MAIN
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_tokenizer(data, size);
}
#endif
