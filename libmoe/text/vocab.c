/* SPDX-License-Identifier: MIT */
/*
 * Vocabulary: building a tokenizer from token/score/type/merge arrays, the
 * lookups, special tokens in text, and turning ids back into bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/grammar.h"
#include "text/tokenizer.h"
#include "text/unicode.h"
#include "util/util.h"

/* The tables are masked to their low bits, so every input bit must reach them. */
static uint64_t mix64(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	return h ^ (h >> 33);
}

static uint64_t hash_bytes(const char *s, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < len; i++) {
		h ^= (uint8_t)s[i];
		h *= 0x100000001b3ull;
	}
	return mix64(h ^ len);
}

static uint64_t hash_pair(int32_t a, int32_t b)
{
	return mix64((uint64_t)(uint32_t)a << 32 | (uint32_t)b);
}

int32_t tok_find(const struct moe_tokenizer *t, const char *s, size_t len)
{
	uint32_t i = (uint32_t)hash_bytes(s, len) & t->str_mask;

	for (;; i = (i + 1) & t->str_mask) {
		int32_t id = t->str_slots[i];
		const struct tok_entry *e;

		if (id < 0)
			return -1;
		e = &t->tok[id];
		if (e->len == len && !memcmp(t->blob + e->off, s, len))
			return id;
	}
}

const struct tok_merge *tok_find_merge(const struct moe_tokenizer *t, int32_t l, int32_t r)
{
	uint32_t i;

	if (!t->merge_slots)
		return NULL;
	for (i = (uint32_t)hash_pair(l, r) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
		const struct tok_merge *m = &t->merge_slots[i];

		if (m->rank < 0)
			return NULL;
		if (m->left == l && m->right == r)
			return m;
	}
}

static uint32_t table_size(uint64_t n)
{
	uint32_t size = 16;

	while (size < n * 2)
		size *= 2;
	return size;
}

/*
 * The GPT-2 byte alphabet: printable bytes stand for themselves, the 68
 * others (0x00-0x20, 0x7f-0xa0, 0xad) for U+0100.. in byte order.
 */
static uint32_t gpt2_byte_cpt(uint8_t b)
{
	if (b <= 0x20)
		return 0x100 + b;
	if (b >= 0x7f && b <= 0xa0)
		return 0x121 + (b - 0x7f);
	if (b == 0xad)
		return 0x143;
	return b;
}

/* Inverse of the alphabet, -1 for a code point outside it. */
static int gpt2_cpt_byte(uint32_t cpt)
{
	if (cpt < 0x100)
		return cpt <= 0x20 || (cpt >= 0x7f && cpt <= 0xa0) || cpt == 0xad ? -1 : (int)cpt;
	if (cpt < 0x121)
		return (int)(cpt - 0x100);
	if (cpt < 0x143)
		return (int)(cpt - 0x121 + 0x7f);
	return cpt == 0x143 ? 0xad : -1;
}

/*
 * tokenizer.ggml.pre values.  Llama 3 and 4 and Kimi K2 are tiktoken
 * vocabularies: a pre-token that is a token is taken whole.  Llama 3 and 4
 * expect BOS first; for the others tokenizer.ggml.add_bos_token says.
 * GLM-4's regex is Llama 3's, but its vocabulary merges every pre-token.
 */
static const struct {
	const char *name;
	enum tok_pre pre;
	bool ignore_merges;
	bool add_bos;
} pre_table[] = {
	{ "default", PRE_GPT2, false, false },
	{ "gpt-2", PRE_GPT2, false, false },
	{ "gpt2", PRE_GPT2, false, false },
	{ "llama-bpe", PRE_LLAMA3, true, true },
	{ "llama3", PRE_LLAMA3, true, true },
	{ "llama-v3", PRE_LLAMA3, true, true },
	{ "smaug-bpe", PRE_LLAMA3, false, false },
	{ "glm4", PRE_LLAMA3, false, false },
	{ "chatglm-bpe", PRE_LLAMA3, false, false },
	{ "qwen2", PRE_QWEN2, false, false },
	{ "qwen3", PRE_QWEN2, false, false },
	{ "deepseek-r1-qwen", PRE_QWEN2, false, false },
	{ "qwen35", PRE_QWEN35, false, false },
	{ "llama4", PRE_GPT4O, true, true },
	{ "gpt-4o", PRE_GPT4O, false, false },
	{ "gpt4o", PRE_GPT4O, false, false },
	{ "kimi-k2", PRE_KIMI_K2, true, false },
	{ "deepseek-llm", PRE_DEEPSEEK_LLM, false, false },
	{ "deepseek-coder", PRE_DEEPSEEK_CODER, false, false },
	{ "deepseek-v3", PRE_DEEPSEEK3, false, false },
};

static int set_kind(struct moe_tokenizer *t, const struct tok_spec *sp)
{
	if (!strcmp(sp->model, "llama")) {
		t->kind = TOK_SPM;
		t->pre = PRE_NONE;
		t->add_space_prefix = true;
		t->add_bos = true;
		return 0;
	}
	if (!strcmp(sp->model, "gemma4")) {
		/* The split is implied by the model; llama.cpp ignores tokenizer.ggml.pre here. */
		t->kind = TOK_GEMMA4;
		t->pre = PRE_GEMMA4;
		t->add_bos = true;
		return 0;
	}
	if (!strcmp(sp->model, "gpt2")) {
		const char *pre = sp->pre ? sp->pre : "default";

		t->kind = TOK_BPE;
		for (size_t i = 0; i < MOE_ARRAY_SIZE(pre_table); i++) {
			if (!strcmp(pre_table[i].name, pre)) {
				t->pre = pre_table[i].pre;
				t->ignore_merges = pre_table[i].ignore_merges;
				t->add_bos = pre_table[i].add_bos;
				return 0;
			}
		}
		return moe_err(EOPNOTSUPP,
			       "tokenizer.ggml.pre '%s' is not supported: use one of llama-bpe, llama3, glm4, qwen2, qwen35, llama4, gpt-4o, kimi-k2, deepseek-llm, deepseek-coder, deepseek-v3, gpt-2 (or add its split to libmoe/text/pretok.c)",
			       pre);
	}
	if (!strcmp(sp->model, "none") || !strcmp(sp->model, "no_vocab"))
		return moe_err(ENOENT,
			       "the model has no tokenizer (tokenizer.ggml.model '%s'): give token ids instead of text",
			       sp->model);
	return moe_err(EOPNOTSUPP,
		       "tokenizer.ggml.model '%s' is not supported: expected llama, gpt2 or gemma4",
		       sp->model);
}

static size_t spec_token_len(const struct tok_spec *sp, uint32_t i)
{
	return sp->token_lens ? sp->token_lens[i] : strlen(sp->tokens[i]);
}

static int build_vocab(struct moe_tokenizer *t, const struct tok_spec *sp)
{
	uint64_t total = 0;
	uint32_t n = sp->n_vocab, off = 0;

	for (uint32_t i = 0; i < n; i++) {
		if (!sp->tokens[i])
			return moe_err(EINVAL, "tokenizer.ggml.tokens[%u] is missing", i);
		total += spec_token_len(sp, i);
	}
	if (total > UINT32_MAX - 1)
		return moe_err(EFBIG, "tokenizer.ggml.tokens holds %llu bytes, over the 4 GiB limit",
			       (unsigned long long)total);
	t->tok = calloc(n, sizeof(*t->tok));
	t->blob = malloc(total + 1);
	t->str_mask = table_size(n) - 1;
	t->str_slots = malloc(((size_t)t->str_mask + 1) * sizeof(*t->str_slots));
	if (!t->tok || !t->blob || !t->str_slots)
		return moe_err(ENOMEM, "tokenizer: out of memory for %u tokens", n);
	memset(t->str_slots, 0xff, ((size_t)t->str_mask + 1) * sizeof(*t->str_slots));
	for (uint32_t i = 0; i < n; i++) {
		size_t len = spec_token_len(sp, i);
		struct tok_entry *e = &t->tok[i];
		uint32_t h;

		e->off = off;
		e->len = (uint32_t)len;
		memcpy(t->blob + off, sp->tokens[i], len);
		off += (uint32_t)len;
		e->score = sp->scores ? sp->scores[i] : 0.0f;
		e->type = sp->types ? (uint8_t)sp->types[i] : TT_NORMAL;
		if (sp->types && (sp->types[i] < TT_NORMAL || sp->types[i] > TT_BYTE))
			return moe_err(EINVAL,
				       "tokenizer.ggml.token_type[%u] is %d: expected 1 (normal) to 6 (byte)",
				       i, sp->types[i]);
		/* The first of duplicate texts wins, so later ids stay reachable only by id. */
		h = (uint32_t)hash_bytes(sp->tokens[i], len) & t->str_mask;
		while (t->str_slots[h] >= 0) {
			const struct tok_entry *o = &t->tok[t->str_slots[h]];

			if (o->len == len && !memcmp(t->blob + o->off, sp->tokens[i], len))
				break;
			h = (h + 1) & t->str_mask;
		}
		if (t->str_slots[h] < 0)
			t->str_slots[h] = (int32_t)i;
	}
	t->n_vocab = n;
	return 0;
}

static int build_merges(struct moe_tokenizer *t, const struct tok_spec *sp)
{
	char *joined = NULL;
	size_t joined_cap = 0;
	uint32_t dropped = 0;
	int ret = 0;

	if (t->kind == TOK_SPM)
		return 0;
	if (!sp->n_merges)
		return moe_err(EINVAL,
			       "tokenizer.ggml.merges is missing or empty: a '%s' tokenizer needs its merges",
			       sp->model);
	t->merge_mask = table_size(sp->n_merges) - 1;
	t->merge_slots = malloc(((size_t)t->merge_mask + 1) * sizeof(*t->merge_slots));
	if (!t->merge_slots)
		return moe_err(ENOMEM, "tokenizer: out of memory for %u merges", sp->n_merges);
	for (uint32_t i = 0; i <= t->merge_mask; i++)
		t->merge_slots[i].rank = -1;
	for (uint32_t i = 0; i < sp->n_merges; i++) {
		const char *m = sp->merges[i];
		size_t len = m ? (sp->merge_lens ? sp->merge_lens[i] : strlen(m)) : 0;
		const char *sp_at = len > 1 ? memchr(m + 1, ' ', len - 1) : NULL;
		size_t ll = sp_at ? (size_t)(sp_at - m) : 0;
		int32_t l, r, res;
		struct tok_merge *slot;
		uint32_t h;

		if (!sp_at) {
			ret = moe_err(EINVAL,
				      "tokenizer.ggml.merges[%u] '%.*s' is not two tokens separated by a space",
				      i, (int)MOE_MIN(len, 64), m ? m : "");
			break;
		}
		l = tok_find(t, m, ll);
		r = tok_find(t, sp_at + 1, len - ll - 1);
		if (l < 0 || r < 0) {
			ret = moe_err(EINVAL,
				      "tokenizer.ggml.merges[%u] '%.*s' names a token that is not in tokenizer.ggml.tokens: the merges do not belong to this vocabulary",
				      i, (int)MOE_MIN(len, 64), m);
			break;
		}
		if (len > joined_cap) {
			char *p = realloc(joined, len * 2);

			if (!p) {
				ret = moe_err(ENOMEM, "tokenizer: out of memory");
				break;
			}
			joined = p;
			joined_cap = len * 2;
		}
		memcpy(joined, m, ll);
		memcpy(joined + ll, sp_at + 1, len - ll - 1);
		res = tok_find(t, joined, len - 1);
		h = (uint32_t)hash_pair(l, r) & t->merge_mask;
		while (t->merge_slots[h].rank >= 0 &&
		       (t->merge_slots[h].left != l || t->merge_slots[h].right != r))
			h = (h + 1) & t->merge_mask;
		slot = &t->merge_slots[h];
		if (res < 0 || slot->rank >= 0) {
			/* A repeat keeps its first rank; a merge into no token only makes bytes. */
			dropped++;
			continue;
		}
		slot->left = l;
		slot->right = r;
		slot->rank = (int32_t)i;
		slot->result = res;
	}
	free(joined);
	if (ret)
		return ret;
	if (dropped)
		moe_log(MOE_LOG_DEBUG, "tokenizer: %u merges ignored (repeated, or their result is not a token)",
			dropped);
	return 0;
}

/* Whether @s has a U+2581 right after something other than U+2581. */
static bool mark_inside(const char *s, size_t len)
{
	static const char mark[] = "\xe2\x96\x81";

	for (size_t i = 1; i + 3 <= len; i++)
		if (!memcmp(s + i, mark, 3) && (i < 3 || memcmp(s + i - 3, mark, 3)))
			return true;
	return false;
}

static int build_bytes(struct moe_tokenizer *t)
{
	unsigned n_missing = 0;

	for (unsigned b = 0; b < 256; b++) {
		char s[8];
		int len;

		if (t->kind == TOK_BPE) {
			/*
			 * A vocabulary may lack bytes that UTF-8 never holds (GPT-NeoX
			 * has none for 0xc0, 0xc1, 0xf5-0xff); tok_bpe fails if one is met.
			 */
			len = moe_utf8_encode(gpt2_byte_cpt((uint8_t)b), s);
			t->byte_tok[b] = tok_find(t, s, (size_t)len);
			if (t->byte_tok[b] < 0)
				n_missing++;
		} else {
			len = snprintf(s, sizeof(s), "<0x%02X>", b);
			t->byte_tok[b] = tok_find(t, s, (size_t)len);
			if (t->byte_tok[b] >= 0 && t->tok[t->byte_tok[b]].type == TT_BYTE) {
				t->tok[t->byte_tok[b]].is_byte = 1;
				t->tok[t->byte_tok[b]].byte = (uint8_t)b;
			}
		}
	}
	if (n_missing)
		moe_log(MOE_LOG_DEBUG, "tokenizer: no token for %u of the 256 bytes", n_missing);
	return 0;
}

static int cmp_special(const void *a, const void *b, void *arg)
{
	const struct moe_tokenizer *t = arg;
	uint32_t la = t->tok[*(const int32_t *)a].len, lb = t->tok[*(const int32_t *)b].len;

	if (la != lb)
		return la > lb ? -1 : 1;
	return *(const int32_t *)a - *(const int32_t *)b;
}

/* Names of end-of-generation tokens across the supported families. */
static const char *const eog_names[] = {
	"<|eot_id|>", "<|eom_id|>", "<|eot|>", "<|eom|>", "<|im_end|>", "<|end|>", "<|return|>",
	"<|call|>", "<turn|>", "<end_of_turn>", "<|endoftext|>", "</s>", "[EOT]", "[EOS]",
	"<\357\275\234end\342\226\201of\342\226\201sentence\357\275\234>", /* DeepSeek's */
};

static int build_specials(struct moe_tokenizer *t, const struct tok_spec *sp)
{
	int32_t extra[4] = { (int32_t)sp->eos, (int32_t)sp->eot, (int32_t)sp->eom, -1 };
	int n = 0;

	for (uint32_t i = 0; i < t->n_vocab; i++) {
		uint8_t ty = t->tok[i].type;

		if ((ty == TT_CONTROL || ty == TT_USER || ty == TT_UNKNOWN) && t->tok[i].len)
			n++;
	}
	t->special = malloc(((size_t)n + 1) * sizeof(*t->special));
	t->special_next = malloc(((size_t)n + 1) * sizeof(*t->special_next));
	t->eog = malloc((MOE_ARRAY_SIZE(eog_names) + 4) * sizeof(*t->eog));
	if (!t->special || !t->special_next || !t->eog)
		return moe_err(ENOMEM, "tokenizer: out of memory");
	n = 0;
	for (uint32_t i = 0; i < t->n_vocab; i++) {
		uint8_t ty = t->tok[i].type;

		if ((ty == TT_CONTROL || ty == TT_USER || ty == TT_UNKNOWN) && t->tok[i].len)
			t->special[n++] = (int32_t)i;
	}
	t->n_special = n;
	qsort_r(t->special, (size_t)n, sizeof(*t->special), cmp_special, t);
	for (int i = 0; i < 256; i++)
		t->special_head[i] = -1;
	/* Walk backwards so each byte's chain lists longer texts first. */
	for (int i = n - 1; i >= 0; i--) {
		uint8_t c = (uint8_t)t->blob[t->tok[t->special[i]].off];

		t->special_next[i] = t->special_head[c];
		t->special_head[c] = i;
	}

	t->n_eog = 0;
	for (int i = 0; i < 3; i++)
		if (extra[i] >= 0 && (uint32_t)extra[i] < t->n_vocab)
			t->eog[t->n_eog++] = extra[i];
	for (size_t i = 0; i < MOE_ARRAY_SIZE(eog_names); i++) {
		int32_t id = tok_find(t, eog_names[i], strlen(eog_names[i]));
		bool dup = false;

		if (id < 0 || t->tok[id].type == TT_NORMAL)
			continue;
		for (int j = 0; j < t->n_eog; j++)
			dup |= t->eog[j] == id;
		if (!dup)
			t->eog[t->n_eog++] = id;
	}
	return 0;
}

static int check_id(const struct moe_tokenizer *t, int64_t id, const char *key, int32_t *out)
{
	*out = -1;
	if (id < 0)
		return 0;
	if ((uint64_t)id >= t->n_vocab)
		return moe_err(EINVAL, "tokenizer.ggml.%s is %lld, outside the vocabulary of %u tokens",
			       key, (long long)id, t->n_vocab);
	*out = (int32_t)id;
	return 0;
}

int tok_build(const struct tok_spec *sp, struct moe_tokenizer **out)
{
	struct moe_tokenizer *t;
	int ret;

	*out = NULL;
	if (!sp->model)
		return moe_err(EINVAL, "tokenizer.ggml.model is missing: not a model with a tokenizer");
	if (!sp->n_vocab || !sp->tokens)
		return moe_err(EINVAL, "tokenizer.ggml.tokens is missing or empty");
	if (sp->n_vocab > INT32_MAX / 4)
		return moe_err(EFBIG, "tokenizer.ggml.tokens has %u entries, too many", sp->n_vocab);
	t = calloc(1, sizeof(*t));
	if (!t)
		return moe_err(ENOMEM, "tokenizer: out of memory");
	ret = set_kind(t, sp);
	if (!ret)
		ret = build_vocab(t, sp);
	if (!ret)
		ret = build_merges(t, sp);
	if (!ret)
		ret = build_bytes(t);
	if (!ret && t->kind == TOK_SPM) {
		t->spm_word_split = true;
		for (uint32_t i = 0; i < t->n_vocab && t->spm_word_split; i++)
			t->spm_word_split = !mark_inside(t->blob + t->tok[i].off, t->tok[i].len);
	}
	if (!ret)
		ret = check_id(t, sp->bos, "bos_token_id", &t->bos);
	if (!ret)
		ret = check_id(t, sp->eos, "eos_token_id", &t->eos);
	if (!ret)
		ret = check_id(t, sp->unk, "unknown_token_id", &t->unk);
	if (!ret && sp->eot >= 0 && (uint64_t)sp->eot >= t->n_vocab)
		ret = moe_err(EINVAL, "tokenizer.ggml.eot_token_id %lld is outside the vocabulary",
			      (long long)sp->eot);
	if (!ret && sp->eom >= 0 && (uint64_t)sp->eom >= t->n_vocab)
		ret = moe_err(EINVAL, "tokenizer.ggml.eom_token_id %lld is outside the vocabulary",
			      (long long)sp->eom);
	if (!ret)
		ret = build_specials(t, sp);
	if (ret) {
		moe_tokenizer_destroy(t);
		return ret;
	}
	if (t->unk < 0 && t->kind == TOK_SPM)
		t->unk = tok_find(t, "<unk>", 5);
	if (sp->add_bos >= 0)
		t->add_bos = sp->add_bos;
	if (t->bos < 0)
		t->add_bos = false;
	if (sp->add_space_prefix >= 0 && t->kind == TOK_SPM)
		t->add_space_prefix = sp->add_space_prefix;
	if (sp->arch)
		snprintf(t->arch, sizeof(t->arch), "%s", sp->arch);
	tok_chat_init(t, sp);
	ret = tok_pieces_build(t, &t->pieces);
	if (ret) {
		moe_tokenizer_destroy(t);
		return ret;
	}
	*out = t;
	return 0;
}

MOE_API void moe_tokenizer_destroy(struct moe_tokenizer *t)
{
	if (!t)
		return;
	free(t->tok);
	free(t->blob);
	free(t->str_slots);
	free(t->merge_slots);
	free(t->special);
	free(t->special_next);
	free(t->eog);
	tok_pieces_free(t->pieces);
	free(t);
}

/* ------------------------------------------------------------ tokenize */

/* The special token starting at text[i] (longest first), or -1. */
static int32_t special_at(const struct moe_tokenizer *t, const char *text, size_t len, size_t i,
			  bool parse_special)
{
	for (int32_t k = t->special_head[(uint8_t)text[i]]; k >= 0; k = t->special_next[k]) {
		const struct tok_entry *e = &t->tok[t->special[k]];

		/* User-defined tokens are text the model was trained to see whole. */
		if (!parse_special && e->type != TT_USER)
			continue;
		if (e->len <= len - i && !memcmp(text + i, t->blob + e->off, e->len))
			return t->special[k];
	}
	return -1;
}

/*
 * Text between special tokens.  Each fragment starts the text or follows a
 * special token, and SentencePiece puts its space before every one of them
 * (as llama.cpp does: "<s>hello" is <s> "▁hello").
 */
static int tokenize_fragment(const struct moe_tokenizer *t, const char *s, size_t len,
			     struct tok_out *o)
{
	if (t->kind == TOK_SPM)
		return tok_spm(t, s, len, t->add_space_prefix, o);
	if (!len)
		return 0;
	return tok_bpe(t, s, len, o);
}

MOE_API int moe_tokenize(const struct moe_tokenizer *t, const char *text, size_t len,
			 uint32_t flags, int32_t *ids, int max_ids)
{
	struct tok_out o = { ids, ids ? max_ids : 0, 0 };
	bool parse_special = flags & MOE_TOK_PARSE_SPECIAL;
	size_t start = 0, i = 0;
	long bad;
	int ret;

	if (!t || (!text && len) || max_ids < 0 || (flags & ~MOE_TOK_FLAGS_ALL))
		return moe_err(EINVAL, "moe_tokenize: bad arguments (tokenizer %p, text %p, flags 0x%x)",
			       (const void *)t, (const void *)text, flags);
	if (len > INT32_MAX / 2)
		return moe_err(EFBIG, "moe_tokenize: %zu bytes of text is over the 1 GiB limit", len);
	bad = moe_utf8_invalid_at(text, len);
	if (bad >= 0)
		return moe_err(EILSEQ,
			       "text is not valid UTF-8: byte 0x%02x at offset %ld; convert it to UTF-8 first (e.g. iconv -t UTF-8)",
			       (uint8_t)text[bad], bad);
	if ((flags & MOE_TOK_ADD_BOS) && t->bos >= 0)
		tok_emit(&o, t->bos);
	while (i < len) {
		int32_t id = t->n_special ? special_at(t, text, len, i, parse_special) : -1;

		if (id < 0) {
			i++;
			continue;
		}
		if (i > start) {
			ret = tokenize_fragment(t, text + start, i - start, &o);
			if (ret)
				return ret;
		}
		tok_emit(&o, id);
		i += t->tok[id].len;
		start = i;
	}
	if (len > start) {
		ret = tokenize_fragment(t, text + start, len - start, &o);
		if (ret)
			return ret;
	}
	if (ids && o.n > max_ids)
		return moe_err(ENOSPC, "moe_tokenize: the text needs %d token ids, the buffer holds %d",
			       o.n, max_ids);
	return o.n;
}

/* ------------------------------------------------------------ pieces */

static int put(char *buf, int len, int at, const char *s, size_t n)
{
	if (at >= 0 && (size_t)at + n <= (size_t)len && n)
		memcpy(buf + at, s, n);
	return at + (int)n;
}

/* Bytes of token @id into buf (as many as fit); returns the full length. */
static int piece(const struct moe_tokenizer *t, int32_t id, bool special, char *buf, int len)
{
	const struct tok_entry *e = &t->tok[id];
	const char *s = t->blob + e->off;
	int at = 0;

	switch (e->type) {
	case TT_CONTROL:
		return special ? put(buf, len, 0, s, e->len) : 0;
	case TT_UNUSED:
		return 0;
	case TT_USER:
		return put(buf, len, 0, s, e->len);
	case TT_UNKNOWN:
		if (t->kind == TOK_BPE)
			return special ? put(buf, len, 0, s, e->len) : 0;
		return put(buf, len, 0, "\xe2\x96\x85", 3);
	case TT_BYTE:
		if (e->is_byte) {
			char c = (char)e->byte;

			return put(buf, len, 0, &c, 1);
		}
		break;
	default:
		break;
	}
	if (t->kind == TOK_BPE) {
		for (uint32_t i = 0; i < e->len;) {
			uint32_t c;
			int n = moe_utf8_decode((const uint8_t *)s + i, e->len - i, &c);
			int b = n ? gpt2_cpt_byte(c) : -1;

			if (b >= 0) {
				char ch = (char)b;

				at = put(buf, len, at, &ch, 1);
			} else {
				/* Not of the alphabet (added tokens): pass the text through. */
				n = n ? n : 1;
				at = put(buf, len, at, s + i, (size_t)n);
			}
			i += (uint32_t)n;
		}
		return at;
	}
	for (uint32_t i = 0; i < e->len;) {
		if (e->len - i >= 3 && !memcmp(s + i, "\xe2\x96\x81", 3)) {
			at = put(buf, len, at, " ", 1);
			i += 3;
		} else {
			at = put(buf, len, at, s + i, 1);
			i++;
		}
	}
	return at;
}

MOE_API int moe_token_to_piece(const struct moe_tokenizer *t, int32_t id, char *buf, int len)
{
	int n;

	if (!t || len < 0 || (!buf && len))
		return moe_err(EINVAL, "moe_token_to_piece: bad arguments");
	if (id < 0 || (uint32_t)id >= t->n_vocab)
		return moe_err(EINVAL, "token id %d is outside the vocabulary of %u tokens", id,
			       t->n_vocab);
	n = piece(t, id, true, buf, len);
	if (n > len && buf)
		return moe_err(ENOSPC, "token %d needs %d bytes, the buffer holds %d", id, n, len);
	return n;
}

bool tok_starts_with_space(const struct moe_tokenizer *t, int32_t id)
{
	const struct tok_entry *e = &t->tok[id];

	if (e->type == TT_BYTE)
		return t->byte_tok[' '] == id;
	return e->type == TT_NORMAL && e->len >= 3 && !memcmp(t->blob + e->off, "\xe2\x96\x81", 3);
}

MOE_API int moe_detokenize(const struct moe_tokenizer *t, const int32_t *ids, int n_ids,
			   uint32_t flags, char *buf, int len)
{
	bool special = flags & MOE_DETOK_SPECIAL;
	int at = 0, first = 0;

	if (!t || n_ids < 0 || (!ids && n_ids) || len < 0 || (!buf && len) ||
	    (flags & ~MOE_DETOK_FLAGS_ALL))
		return moe_err(EINVAL, "moe_detokenize: bad arguments");
	if (n_ids && ids[0] == t->bos && t->bos >= 0)
		first = 1;
	for (int i = 0; i < n_ids; i++) {
		int n;

		if (ids[i] < 0 || (uint32_t)ids[i] >= t->n_vocab)
			return moe_err(EINVAL,
				       "token id %d (position %d) is outside the vocabulary of %u tokens",
				       ids[i], i, t->n_vocab);
		if (at > INT32_MAX / 2)
			return moe_err(EFBIG, "moe_detokenize: output over 1 GiB");
		if (i == first && t->add_space_prefix && tok_starts_with_space(t, ids[i])) {
			/* SentencePiece put a space before the text; take it off again. */
			char *p;

			n = piece(t, ids[i], special, NULL, 0);
			p = malloc((size_t)n);
			if (!p)
				return moe_err(ENOMEM, "moe_detokenize: out of memory");
			piece(t, ids[i], special, p, n);
			put(buf, len, at, p + 1, (size_t)n - 1);
			free(p);
			n--;
		} else {
			n = piece(t, ids[i], special, at < len ? buf + at : NULL,
				  at < len ? len - at : 0);
		}
		at += n;
	}
	if (buf && at > len)
		return moe_err(ENOSPC, "the text needs %d bytes, the buffer holds %d", at, len);
	return at;
}

MOE_API int moe_detok_stream(const struct moe_tokenizer *t, struct moe_detok_state *st,
			     int32_t id, char *buf, int len)
{
	char tmp[512], *p = tmp, *big = NULL;
	uint32_t was_started = st ? st->started : 0;
	int n, have, out = 0, keep;

	if (!t || !st || len < 0 || (!buf && len))
		return moe_err(EINVAL, "moe_detok_stream: bad arguments");
	if (st->n > sizeof(st->pending))
		return moe_err(EINVAL, "moe_detok_stream: state is corrupt (zero it before use)");
	if (id >= 0) {
		if ((uint32_t)id >= t->n_vocab)
			return moe_err(EINVAL, "token id %d is outside the vocabulary of %u tokens",
				       id, t->n_vocab);
		n = piece(t, id, st->flags & MOE_DETOK_SPECIAL, NULL, 0);
		if ((size_t)n + st->n > sizeof(tmp)) {
			big = malloc((size_t)n + st->n);
			if (!big)
				return moe_err(ENOMEM, "moe_detok_stream: out of memory");
			p = big;
		}
		memcpy(p, st->pending, st->n);
		piece(t, id, st->flags & MOE_DETOK_SPECIAL, p + st->n, n);
		/* As moe_detokenize: the first token after a leading BOS loses its space. */
		if ((st->started == 1 || (!st->started && id != t->bos)) && t->add_space_prefix &&
		    n > 0 && tok_starts_with_space(t, id)) {
			memmove(p + st->n, p + st->n + 1, (size_t)n - 1);
			n--;
		}
		st->started = !st->started && id == t->bos ? 1 : 2;
		have = (int)st->n + n;
	} else {
		memcpy(p, st->pending, st->n);
		have = (int)st->n;
	}
	/* Hold back the start of a UTF-8 sequence that the next token completes. */
	keep = 0;
	if (id >= 0) {
		for (int back = 1; back <= 3 && back <= have; back++) {
			uint8_t c = (uint8_t)p[have - back];

			if ((c & 0xc0) == 0x80)
				continue;
			if (moe_utf8_len(c) > back)
				keep = back;
			break;
		}
	}
	out = have - keep;
	if (out > len) {
		free(big);
		st->started = was_started;
		return moe_err(ENOSPC, "moe_detok_stream: %d bytes are ready, the buffer holds %d",
			       out, len);
	}
	if (out)
		memcpy(buf, p, (size_t)out);
	memcpy(st->pending, p + out, (size_t)keep);
	st->n = (uint32_t)keep;
	free(big);
	return out;
}

MOE_API int moe_tokenizer_vocab_size(const struct moe_tokenizer *t)
{
	return t ? (int)t->n_vocab : moe_err(EINVAL, "no tokenizer");
}

MOE_API int moe_tokenizer_bos(const struct moe_tokenizer *t)
{
	if (!t)
		return moe_err(EINVAL, "no tokenizer");
	return t->bos >= 0 ? t->bos : moe_err(ENOENT, "the vocabulary has no BOS token");
}

MOE_API int moe_tokenizer_eos(const struct moe_tokenizer *t)
{
	if (!t)
		return moe_err(EINVAL, "no tokenizer");
	return t->eos >= 0 ? t->eos : moe_err(ENOENT, "the vocabulary has no EOS token");
}

MOE_API bool moe_tokenizer_add_bos(const struct moe_tokenizer *t)
{
	return t && t->add_bos;
}

MOE_API bool moe_tokenizer_is_eog(const struct moe_tokenizer *t, int32_t id)
{
	if (!t)
		return false;
	for (int i = 0; i < t->n_eog; i++)
		if (t->eog[i] == id)
			return true;
	return false;
}

MOE_API int moe_tokenizer_find(const struct moe_tokenizer *t, const char *text)
{
	int32_t id;

	if (!t || !text)
		return moe_err(EINVAL, "moe_tokenizer_find: bad arguments");
	id = tok_find(t, text, strlen(text));
	return id >= 0 ? id : moe_err(ENOENT, "no token '%s' in the vocabulary", text);
}
