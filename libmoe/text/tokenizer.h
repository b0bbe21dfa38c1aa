/* SPDX-License-Identifier: MIT */
/*
 * Tokenizers built from GGUF metadata: SentencePiece ("llama"), byte-level
 * BPE ("gpt2") and Gemma 4's SentencePiece-style BPE ("gemma4").
 *
 * A tokenizer is immutable once built, so one may serve many threads; every
 * call allocates its own scratch.
 */
#ifndef MOE_TEXT_TOKENIZER_H
#define MOE_TEXT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe/moe.h"

/* tokenizer.ggml.token_type values. */
enum tok_type {
	TT_NORMAL = 1,
	TT_UNKNOWN = 2,
	TT_CONTROL = 3,
	TT_USER = 4,
	TT_UNUSED = 5,
	TT_BYTE = 6,
};

enum tok_kind {
	TOK_SPM = 1,    /* "llama": score-driven merges, byte fallback */
	TOK_BPE = 2,    /* "gpt2": rank-driven merges over the GPT-2 byte alphabet */
	TOK_GEMMA4 = 3, /* "gemma4": rank-driven merges over code points, byte fallback */
};

/* Pre-tokenizer splits (tokenizer.ggml.pre). */
enum tok_pre {
	PRE_NONE = 0,
	PRE_GPT2,
	PRE_LLAMA3,
	PRE_QWEN2,
	PRE_GPT4O,
	PRE_GEMMA4,
	PRE_QWEN35,
	PRE_KIMI_K2,
	PRE_DEEPSEEK_LLM,
	PRE_DEEPSEEK_CODER,
	PRE_DEEPSEEK3,
};

enum chat_format {
	CHAT_NONE = 0,
	CHAT_CHATML,   /* Qwen3: <|im_start|>role ... <|im_end|> */
	CHAT_LLAMA3,   /* <|start_header_id|>role<|end_header_id|> ... <|eot_id|> */
	CHAT_LLAMA4,   /* <|header_start|>role<|header_end|> ... <|eot|> */
	CHAT_HARMONY,  /* gpt-oss: <|start|>role<|message|> ... <|end|> */
	CHAT_MISTRAL,  /* [INST] ... [/INST] */
	CHAT_GEMMA4,   /* <|turn>role ... <turn|> */
	CHAT_DEEPSEEK2, /* DeepSeek-V2, Coder-V2: User: ... Assistant: ... */
	CHAT_DEEPSEEK3, /* DeepSeek-V3/R1: <｜User｜> ... <｜Assistant｜> ... */
	CHAT_GLM4,     /* GLM-4.5 to 4.7: [gMASK]<sop><|user|>\n ... <|assistant|> */
	CHAT_KIMI_K2,  /* <|im_user|>user<|im_middle|> ... <|im_end|> */
};

struct tok_entry {
	uint32_t off;   /* into the blob */
	uint32_t len;
	float score;
	uint8_t type;
	uint8_t is_byte;  /* a <0xXX> token of SentencePiece or Gemma 4 */
	uint8_t byte;
};

struct tok_merge {
	int32_t left, right;
	int32_t rank;
	int32_t result;
};

struct moe_tokenizer {
	enum tok_kind kind;
	enum tok_pre pre;
	bool ignore_merges;     /* a whole pre-token that is a token skips merging */
	bool add_space_prefix;
	bool spm_word_split;    /* no token has U+2581 after another character */
	bool add_bos;
	uint32_t n_vocab;
	int32_t bos, eos, unk;

	struct tok_entry *tok;
	char *blob;

	int32_t *str_slots;     /* open addressing: token text -> id, -1 empty */
	uint32_t str_mask;
	struct tok_merge *merge_slots;
	uint32_t merge_mask;

	/* SPM/Gemma 4: id of <0xXX>; BPE: id of the byte's alphabet character. */
	int32_t byte_tok[256];

	int32_t *special;       /* control/user-defined/unknown ids, longest text first */
	int n_special;
	int32_t special_head[256]; /* first index in special[] per first byte, -1 none */
	int32_t *special_next;     /* next index with the same first byte, -1 end */

	int32_t *eog;
	int n_eog;

	enum chat_format chat;
	bool chat_inst_space;   /* Mixtral: "[INST] text [/INST]" */
	uint8_t chat_think;     /* enum chat_think: how the template shows reasoning */
	bool chat_system_nl;    /* Kimi: a newline follows the default system turn */
	bool chat_compact;      /* GLM-4.7: no newline after role markers, bare </think> */
	char chat_system[128];  /* Kimi: the system turn of a conversation without one */
	char arch[32];
	struct tok_pieces *pieces;  /* every token's bytes, for grammars (text/grammar.h) */
};

enum chat_think {
	THINK_NONE = 0,
	THINK_EMPTY,    /* DeepSeek-V3.1, Kimi K2 Thinking: "<think></think>" before answers */
	THINK_OPEN,     /* DeepSeek-R1: the reply starts inside "<think>\n" */
};

/* Everything a tokenizer is built from; GGUF metadata or a test's arrays. */
struct tok_spec {
	const char *model;      /* tokenizer.ggml.model */
	const char *pre;        /* tokenizer.ggml.pre, may be NULL */
	uint32_t n_vocab;
	const char *const *tokens;
	const uint32_t *token_lens;  /* NULL: strlen */
	const float *scores;         /* NULL: all zero */
	const int32_t *types;        /* NULL: all normal */
	uint32_t n_merges;
	const char *const *merges;
	const uint32_t *merge_lens;  /* NULL: strlen */
	int64_t bos, eos, eot, eom, unk;  /* -1: absent */
	int add_bos;                 /* -1: the model's default */
	int add_space_prefix;        /* -1: the model's default */
	const char *arch;            /* general.architecture, may be NULL */
	const char *chat_template;   /* may be NULL */
	size_t chat_template_len;
};

int tok_build(const struct tok_spec *spec, struct moe_tokenizer **out);

/* Whether the token's text starts with the space SentencePiece puts before a word. */
bool tok_starts_with_space(const struct moe_tokenizer *t, int32_t id);
/* Token text lookup: id or -1. */
int32_t tok_find(const struct moe_tokenizer *t, const char *s, size_t len);
/* Merge of two ids by rank (BPE): the entry or NULL. */
const struct tok_merge *tok_find_merge(const struct moe_tokenizer *t, int32_t l, int32_t r);

/* Output ids: counts past max so the caller learns the size needed. */
struct tok_out {
	int32_t *ids;
	int max;
	int n;
};

static inline void tok_emit(struct tok_out *o, int32_t id)
{
	if (o->ids && o->n < o->max)
		o->ids[o->n] = id;
	o->n++;
}

/* Byte offsets [start, end) of the pre-tokens of @text, appended to *spans. */
struct tok_spans {
	uint32_t *v;   /* pairs */
	size_t n, cap;
};
int tok_pretokenize(enum tok_pre pre, const char *text, size_t len, struct tok_spans *out);

/* Tokenize one fragment without special tokens (already valid UTF-8). */
int tok_spm(const struct moe_tokenizer *t, const char *text, size_t len, bool prefix_space,
	    struct tok_out *o);
int tok_bpe(const struct moe_tokenizer *t, const char *text, size_t len, struct tok_out *o);

/* Chat format from the template text and architecture. */
enum chat_format tok_chat_detect(const char *tmpl, size_t len, const char *arch);
/* The chat format and its variant of a tokenizer being built. */
void tok_chat_init(struct moe_tokenizer *t, const struct tok_spec *sp);

#endif
