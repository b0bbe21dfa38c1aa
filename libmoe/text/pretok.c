/* SPDX-License-Identifier: MIT */
/*
 * Pre-tokenizer splits.  Each function below matches its regex (FORMATS.md
 * §5) by hand over decoded code points, trying the alternatives in the
 * regex's order at every position, as a backtracking engine would; a
 * general regex engine would cost a dependency and be slower.
 */
#include <errno.h>
#include <stdlib.h>

#include "text/tokenizer.h"
#include "text/unicode.h"
#include "util/util.h"

#define OUT_OF_RANGE 0xffffffffu

struct cps {
	uint32_t *c;    /* code points */
	uint32_t *off;  /* byte offset of each, plus one past the end */
	uint8_t *f;     /* flags */
	size_t n;
};

static inline uint32_t cp_at(const struct cps *s, size_t i)
{
	return i < s->n ? s->c[i] : OUT_OF_RANGE;
}

static inline unsigned fl_at(const struct cps *s, size_t i)
{
	return i < s->n ? s->f[i] : 0;
}

static inline bool is_l(const struct cps *s, size_t i)
{
	return fl_at(s, i) & UCD_L;
}

static inline bool is_n(const struct cps *s, size_t i)
{
	return fl_at(s, i) & UCD_N;
}

static inline bool is_ws(const struct cps *s, size_t i)
{
	return fl_at(s, i) & UCD_WS;
}

static inline bool is_crlf(uint32_t c)
{
	return c == '\r' || c == '\n';
}

/* [^\s\p{L}\p{N}] */
static inline bool is_other(const struct cps *s, size_t i)
{
	return i < s->n && !(s->f[i] & (UCD_WS | UCD_L | UCD_N));
}

static inline uint32_t ascii_lower(uint32_t c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

enum { CASE_EXACT, CASE_ASCII, CASE_FOLD };

/*
 * Length of a contraction ('s 't 're 've 'm 'll 'd) at @i, 0 if none.
 * LLAMA3 spells the cases out ([sS]); GPT-4o's (?i:...) folds Unicode case,
 * under which U+017F LONG S is an 's' too.
 */
static size_t contraction(const struct cps *s, size_t i, int mode)
{
	uint32_t c1, c2;

	if (cp_at(s, i) != '\'')
		return 0;
	c1 = cp_at(s, i + 1);
	c2 = cp_at(s, i + 2);
	if (mode != CASE_EXACT) {
		c1 = ascii_lower(c1);
		c2 = ascii_lower(c2);
	}
	if (mode == CASE_FOLD && c1 == 0x17f)
		c1 = 's';
	if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
		return 2;
	if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
		return 3;
	return 0;
}

/*
 * \s*[\r\n]+ (with @newlines) | \s+(?!\S) | \s+ at @pos; 0 if @pos is not
 * whitespace.
 */
static size_t whitespace_run(const struct cps *s, size_t pos, bool newlines)
{
	size_t n = 0, last_nl = 0;

	while (is_ws(s, pos + n)) {
		if (is_crlf(s->c[pos + n]))
			last_nl = n + 1;
		n++;
	}
	if (last_nl && newlines)
		return last_nl;
	if (n > 1 && pos + n < s->n)
		return n - 1;
	return n;
}

static size_t match_gpt2(const struct cps *s, size_t pos)
{
	size_t len, i;

	len = contraction(s, pos, CASE_EXACT);
	if (len)
		return len;
	i = pos + (cp_at(s, pos) == ' ');
	if (is_l(s, i)) {
		while (is_l(s, i))
			i++;
		return i - pos;
	}
	if (is_n(s, i)) {
		while (is_n(s, i))
			i++;
		return i - pos;
	}
	if (is_other(s, i)) {
		while (is_other(s, i))
			i++;
		return i - pos;
	}
	len = whitespace_run(s, pos, false);
	return len ? len : 1;
}

/* LLAMA3 and, with @max_digits 1, QWEN2. */
static size_t match_llama3(const struct cps *s, size_t pos, size_t max_digits)
{
	uint32_t c = s->c[pos];
	size_t len, i;

	len = contraction(s, pos, CASE_ASCII);
	if (len)
		return len;
	/* [^\r\n\p{L}\p{N}]?\p{L}+ */
	i = pos;
	if (!is_crlf(c) && !is_l(s, pos) && !is_n(s, pos) && is_l(s, pos + 1))
		i++;
	if (is_l(s, i)) {
		while (is_l(s, i))
			i++;
		return i - pos;
	}
	if (is_n(s, pos)) {
		for (i = pos; i < pos + max_digits && is_n(s, i); i++)
			;
		return i - pos;
	}
	/*  ?[^\s\p{L}\p{N}]+[\r\n]* */
	i = pos + (c == ' ');
	if (is_other(s, i)) {
		while (is_other(s, i))
			i++;
		while (i < s->n && is_crlf(s->c[i]))
			i++;
		return i - pos;
	}
	len = whitespace_run(s, pos, true);
	return len ? len : 1;
}

/* GPT-4o character classes: U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], W = [\p{Ll}\p{Lm}\p{Lo}\p{M}]. */
static inline bool is_u(const struct cps *s, size_t i)
{
	return fl_at(s, i) & (UCD_LU | UCD_LT | UCD_LM | UCD_LO | UCD_M);
}

static inline bool is_w(const struct cps *s, size_t i)
{
	return fl_at(s, i) & (UCD_LL | UCD_LM | UCD_LO | UCD_M);
}

/* U*W+ from @i: the end of the longest match (backtracking U*), or 0. */
static size_t gpt4o_alt1(const struct cps *s, size_t i)
{
	size_t u = i, k;

	while (is_u(s, u))
		u++;
	if (is_w(s, u)) {
		while (is_w(s, u))
			u++;
		return u;
	}
	for (k = u; k > i; k--)
		if (is_w(s, k - 1))
			return k;
	return 0;
}

/* U+W* from @i: the end, or 0. */
static size_t gpt4o_alt2(const struct cps *s, size_t i)
{
	size_t u = i;

	while (is_u(s, u))
		u++;
	if (u == i)
		return 0;
	while (is_w(s, u))
		u++;
	return u;
}

static size_t match_gpt4o(const struct cps *s, size_t pos)
{
	uint32_t c = s->c[pos];
	bool can_prefix = !is_crlf(c) && !is_l(s, pos) && !is_n(s, pos);
	size_t (*alts[2])(const struct cps *, size_t) = { gpt4o_alt1, gpt4o_alt2 };
	size_t i, len;

	for (int a = 0; a < 2; a++) {
		for (int p = can_prefix ? 1 : 0; p >= 0; p--) {
			size_t end = alts[a](s, pos + p);

			if (end)
				return end + contraction(s, end, CASE_FOLD) - pos;
		}
	}
	if (is_n(s, pos)) {
		for (i = pos; i < pos + 3 && is_n(s, i); i++)
			;
		return i - pos;
	}
	/*  ?[^\s\p{L}\p{N}]+[\r\n/]* */
	i = pos + (c == ' ');
	if (is_other(s, i)) {
		while (is_other(s, i))
			i++;
		while (i < s->n && (is_crlf(s->c[i]) || s->c[i] == '/'))
			i++;
		return i - pos;
	}
	len = whitespace_run(s, pos, true);
	return len ? len : 1;
}

static int spans_push(struct tok_spans *o, uint32_t start, uint32_t end)
{
	if (o->n == o->cap) {
		size_t cap = o->cap ? o->cap * 2 : 64;
		uint32_t *v = realloc(o->v, cap * 2 * sizeof(*v));

		if (!v)
			return moe_err(ENOMEM, "tokenizer: out of memory for %zu pre-tokens", cap);
		o->v = v;
		o->cap = cap;
	}
	o->v[2 * o->n] = start;
	o->v[2 * o->n + 1] = end;
	o->n++;
	return 0;
}

/* [^\n]+|[\n]+ */
static int split_newlines(const char *text, size_t len, struct tok_spans *out)
{
	size_t i = 0;

	while (i < len) {
		size_t j = i;
		bool nl = text[i] == '\n';

		while (j < len && (text[j] == '\n') == nl)
			j++;
		if (spans_push(out, (uint32_t)i, (uint32_t)j))
			return -ENOMEM;
		i = j;
	}
	return 0;
}

int tok_pretokenize(enum tok_pre pre, const char *text, size_t len, struct tok_spans *out)
{
	const uint8_t *p = (const uint8_t *)text;
	struct cps s = { 0 };
	size_t i, pos;
	int ret = 0;

	if (len > UINT32_MAX - 1)
		return moe_err(EFBIG, "tokenizer: text of %zu bytes is over the 4 GiB limit", len);
	if (pre == PRE_NONE)
		return len ? spans_push(out, 0, (uint32_t)len) : 0;
	if (pre == PRE_GEMMA4)
		return split_newlines(text, len, out);

	s.c = malloc(len * sizeof(*s.c) + 1);
	s.off = malloc((len + 1) * sizeof(*s.off));
	s.f = malloc(len + 1);
	if (!s.c || !s.off || !s.f) {
		ret = moe_err(ENOMEM, "tokenizer: out of memory for %zu bytes of text", len);
		goto out;
	}
	for (i = 0; i < len;) {
		uint32_t c;
		int n = moe_utf8_decode(p + i, len - i, &c);

		if (!n) {
			ret = moe_err(EILSEQ, "tokenizer: invalid UTF-8 at byte %zu", i);
			goto out;
		}
		s.c[s.n] = c;
		s.off[s.n] = (uint32_t)i;
		s.f[s.n] = (uint8_t)moe_ucd_flags(c);
		s.n++;
		i += (size_t)n;
	}
	s.off[s.n] = (uint32_t)len;

	for (pos = 0; pos < s.n;) {
		size_t n;

		switch (pre) {
		case PRE_GPT2:
			n = match_gpt2(&s, pos);
			break;
		case PRE_LLAMA3:
			n = match_llama3(&s, pos, 3);
			break;
		case PRE_QWEN2:
			n = match_llama3(&s, pos, 1);
			break;
		default:
			n = match_gpt4o(&s, pos);
			break;
		}
		ret = spans_push(out, s.off[pos], s.off[pos + n]);
		if (ret)
			goto out;
		pos += n;
	}
out:
	free(s.c);
	free(s.off);
	free(s.f);
	return ret;
}
