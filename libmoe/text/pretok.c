/* SPDX-License-Identifier: MIT */
/*
 * Pre-tokenizer splits.  Each function below matches its regex (FORMATS.md
 * §5, or the model's tokenizer.json) by hand over decoded code points,
 * trying the alternatives in the regex's order at every position, as a
 * backtracking engine would; a general regex engine would cost a dependency
 * and be slower.  DeepSeek's splits are sequences of such regexes.
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
	uint16_t *f;    /* flags */
	size_t n;       /* what a match may see: the text, or the end of the piece it splits */
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

/* [\p{L}\p{M}] */
static inline bool is_lm(const struct cps *s, size_t i)
{
	return fl_at(s, i) & (UCD_L | UCD_M);
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

/*
 * LLAMA3 and, with @max_digits 1, QWEN2; with @marks, Qwen 3.5's variant,
 * whose words and non-words take marks ([\p{L}\p{M}]+, [^\s\p{L}\p{M}\p{N}]).
 */
static size_t match_llama3(const struct cps *s, size_t pos, size_t max_digits, bool marks)
{
	unsigned word = marks ? UCD_L | UCD_M : UCD_L;
	uint32_t c = s->c[pos];
	size_t len, i;

	len = contraction(s, pos, CASE_ASCII);
	if (len)
		return len;
	/* [^\r\n\p{L}\p{N}]?\p{L}+ */
	i = pos;
	if (!is_crlf(c) && !is_l(s, pos) && !is_n(s, pos) && (fl_at(s, pos + 1) & word))
		i++;
	if (fl_at(s, i) & word) {
		while (fl_at(s, i) & word)
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
	if (i < s->n && !(s->f[i] & (UCD_WS | UCD_N | word))) {
		while (i < s->n && !(s->f[i] & (UCD_WS | UCD_N | word)))
			i++;
		while (i < s->n && is_crlf(s->c[i]))
			i++;
		return i - pos;
	}
	len = whitespace_run(s, pos, true);
	return len ? len : 1;
}

/*
 * GPT-4o character classes: U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], W = [\p{Ll}\p{Lm}\p{Lo}\p{M}],
 * less the code points with a flag of @excl (Kimi K2 takes Han out of both).
 */
static inline bool is_u(const struct cps *s, size_t i, unsigned excl)
{
	unsigned f = fl_at(s, i);

	return (f & (UCD_LU | UCD_LT | UCD_LM | UCD_LO | UCD_M)) && !(f & excl);
}

static inline bool is_w(const struct cps *s, size_t i, unsigned excl)
{
	unsigned f = fl_at(s, i);

	return (f & (UCD_LL | UCD_LM | UCD_LO | UCD_M)) && !(f & excl);
}

/* U*W+ from @i: the end of the longest match (backtracking U*), or 0. */
static size_t gpt4o_alt1(const struct cps *s, size_t i, unsigned excl)
{
	size_t u = i, k;

	while (is_u(s, u, excl))
		u++;
	if (is_w(s, u, excl)) {
		while (is_w(s, u, excl))
			u++;
		return u;
	}
	for (k = u; k > i; k--)
		if (is_w(s, k - 1, excl))
			return k;
	return 0;
}

/* U+W* from @i: the end, or 0. */
static size_t gpt4o_alt2(const struct cps *s, size_t i, unsigned excl)
{
	size_t u = i;

	while (is_u(s, u, excl))
		u++;
	if (u == i)
		return 0;
	while (is_w(s, u, excl))
		u++;
	return u;
}

/*
 * GPT-4o and, with @kimi, Kimi K2's regex: [\p{Han}]+ first, Han out of
 * the word classes, and no '/' after the non-words.
 */
static size_t match_gpt4o(const struct cps *s, size_t pos, bool kimi)
{
	size_t (*alts[2])(const struct cps *, size_t, unsigned) = { gpt4o_alt1, gpt4o_alt2 };
	unsigned excl = kimi ? UCD_HAN : 0;
	uint32_t c = s->c[pos];
	bool can_prefix = !is_crlf(c) && !is_l(s, pos) && !is_n(s, pos);
	size_t i, len;

	if (kimi && (s->f[pos] & UCD_HAN)) {
		for (i = pos; fl_at(s, i) & UCD_HAN; i++)
			;
		return i - pos;
	}
	for (int a = 0; a < 2; a++) {
		for (int p = can_prefix ? 1 : 0; p >= 0; p--) {
			size_t end = alts[a](s, pos + p, excl);

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
		while (i < s->n && (is_crlf(s->c[i]) || (!kimi && s->c[i] == '/')))
			i++;
		return i - pos;
	}
	len = whitespace_run(s, pos, true);
	return len ? len : 1;
}

/* ------------------------------------------------------------ DeepSeek */

/*
 * DeepSeek's tokenizers split in stages (a Sequence of Split pre-tokenizers
 * with "Isolated" behaviour): each regex splits every piece of the stage
 * before into its matches and the runs between them, which stay pieces too.
 * A stage's match returns its length at @pos, or 0 where it does not match.
 */
struct cp_range {
	uint32_t lo, hi;
};

static bool in_ranges(const struct cp_range *r, size_t n, uint32_t c)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (c < r[mid].lo)
			hi = mid;
		else if (c > r[mid].hi)
			lo = mid + 1;
		else
			return true;
	}
	return false;
}

/* DeepSeek LLM's letters: Latin, Greek, Cyrillic, Armenian, ... as its regex spells them. */
static const struct cp_range dsl_letters[] = {
	{ 0x0041, 0x005a }, { 0x0061, 0x007a }, { 0x00b5, 0x00b5 }, { 0x00c0, 0x00d6 },
	{ 0x00d8, 0x00f6 }, { 0x00f8, 0x01ba }, { 0x01bc, 0x01bf }, { 0x01c4, 0x0293 },
	{ 0x0295, 0x02af }, { 0x0370, 0x0373 }, { 0x0376, 0x0377 }, { 0x037b, 0x037d },
	{ 0x037f, 0x037f }, { 0x0386, 0x0386 }, { 0x0388, 0x038a }, { 0x038c, 0x038c },
	{ 0x038e, 0x03a1 }, { 0x03a3, 0x03f5 }, { 0x03f7, 0x0481 }, { 0x048a, 0x052f },
	{ 0x0531, 0x0556 }, { 0x10a0, 0x10c5 }, { 0x13a0, 0x13f5 }, { 0x13f8, 0x13fd },
	{ 0x1c90, 0x1cba }, { 0x1cbd, 0x1cbf }, { 0x1d00, 0x1d2b }, { 0x1d6b, 0x1d77 },
	{ 0x1d79, 0x1d9a }, { 0x1e00, 0x1f15 }, { 0x1f18, 0x1f1d }, { 0x1f20, 0x1f45 },
	{ 0x1f48, 0x1f4d }, { 0x1f50, 0x1f57 }, { 0x1f59, 0x1f59 }, { 0x1f5b, 0x1f5b },
	{ 0x1f5d, 0x1f5d }, { 0x1f5f, 0x1f7d }, { 0x1f80, 0x1fb4 }, { 0x1fb6, 0x1fbc },
	{ 0x1fbe, 0x1fbe }, { 0x1fc2, 0x1fc4 }, { 0x1fc6, 0x1fcc }, { 0x1fd0, 0x1fd3 },
	{ 0x1fd6, 0x1fdb }, { 0x1fe0, 0x1fec }, { 0x1ff2, 0x1ff4 }, { 0x1ff6, 0x1ffc },
	{ 0x2102, 0x2102 }, { 0x2107, 0x2107 }, { 0x210a, 0x2113 }, { 0x2115, 0x2115 },
	{ 0x2119, 0x211d }, { 0x2124, 0x2124 }, { 0x2126, 0x2126 }, { 0x2128, 0x2128 },
	{ 0x212a, 0x212d }, { 0x212f, 0x2134 }, { 0x2139, 0x2139 }, { 0x213c, 0x213f },
	{ 0x2145, 0x2149 }, { 0x214e, 0x214e }, { 0x2183, 0x2184 }, { 0x2c00, 0x2c7b },
	{ 0x2c7e, 0x2ce4 }, { 0x2ceb, 0x2cee }, { 0x2cf2, 0x2cf3 }, { 0xa640, 0xa66d },
	{ 0xa680, 0xa69b }, { 0xa722, 0xa76f }, { 0xa771, 0xa787 }, { 0xa78b, 0xa78e },
	{ 0xab70, 0xabbf }, { 0xfb00, 0xfb06 }, { 0xfb13, 0xfb17 }, { 0xff21, 0xff3a },
	{ 0xff41, 0xff5a }, { 0x10400, 0x1044f }, { 0x104b0, 0x104d3 }, { 0x104d8, 0x104fb },
	{ 0x10c80, 0x10cb2 }, { 0x10cc0, 0x10cf2 }, { 0x118a0, 0x118df }, { 0x1e900, 0x1e943 },
};

/* [!-/:-~！-／：-～‘-‟　-。] */
static const struct cp_range dsl_punct[] = {
	{ 0x0021, 0x002f }, { 0x003a, 0x007e }, { 0x2018, 0x201f }, { 0x3000, 0x3002 },
	{ 0xff01, 0xff0f }, { 0xff1a, 0xff5e },
};

/* [一-龥ࠀ-一가-퟿]: U+0800 to U+9FA5 and the Hangul syllables. */
static const struct cp_range ds_cjk[] = {
	{ 0x0800, 0x9fa5 }, { 0xac00, 0xd7ff },
};

/* [一-龥぀-ゟ゠-ヿ]: CJK ideographs, hiragana and katakana (DeepSeek-V3). */
static const struct cp_range ds3_cjk[] = {
	{ 0x3040, 0x30ff }, { 0x4e00, 0x9fa5 },
};

#define IN(tab, s, i) ((i) < (s)->n && in_ranges(tab, MOE_ARRAY_SIZE(tab), (s)->c[i]))

static size_t ds_crlf(const struct cps *s, size_t pos)
{
	return is_crlf(s->c[pos]);
}

/* \s?X+ for a class of flags @fl or, with @fl 0, of the ranges @tab. */
static size_t ds_ws_run(const struct cps *s, size_t pos, unsigned fl, const struct cp_range *tab,
			size_t n_tab)
{
#define IN_X(i) ((i) < s->n && (fl ? (s->f[i] & fl) != 0 : in_ranges(tab, n_tab, s->c[i])))
	size_t i = pos;

	if (is_ws(s, pos) && IN_X(pos + 1))
		i++;
	if (!IN_X(i))
		return 0;
	while (IN_X(i))
		i++;
	return i - pos;
#undef IN_X
}

static size_t dsl_letter_run(const struct cps *s, size_t pos)
{
	return ds_ws_run(s, pos, 0, dsl_letters, MOE_ARRAY_SIZE(dsl_letters));
}

static size_t dsl_punct_run(const struct cps *s, size_t pos)
{
	return ds_ws_run(s, pos, 0, dsl_punct, MOE_ARRAY_SIZE(dsl_punct));
}

static size_t dsc_letter_run(const struct cps *s, size_t pos)
{
	return ds_ws_run(s, pos, UCD_L, NULL, 0);
}

static size_t dsc_punct_run(const struct cps *s, size_t pos)
{
	return ds_ws_run(s, pos, UCD_P, NULL, 0);
}

static size_t ds_cjk_run(const struct cps *s, size_t pos)
{
	size_t i = pos;

	while (IN(ds_cjk, s, i))
		i++;
	return i - pos;
}

static size_t ds3_cjk_run(const struct cps *s, size_t pos)
{
	size_t i = pos;

	while (IN(ds3_cjk, s, i))
		i++;
	return i - pos;
}

/* \p{N}+ */
static size_t ds_number_run(const struct cps *s, size_t pos)
{
	size_t i = pos;

	while (is_n(s, i))
		i++;
	return i - pos;
}

static size_t ds_digit(const struct cps *s, size_t pos)
{
	return is_n(s, pos);
}

/* \p{N}{1,3} */
static size_t ds3_digits(const struct cps *s, size_t pos)
{
	size_t i = pos;

	while (i < pos + 3 && is_n(s, i))
		i++;
	return i - pos;
}

static inline bool is_ascii_alpha(uint32_t c)
{
	return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
}

/*
 * DeepSeek-V3's last stage:
 * [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+ | [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ |
 *  ?[\p{P}\p{S}]+[\r\n]* | \s*[\r\n]+ | \s+(?!\S) | \s+
 */
static size_t ds3_main(const struct cps *s, size_t pos)
{
	uint32_t c = s->c[pos];
	size_t i;

	if (c > ' ' && c < 0x7f && !is_ascii_alpha(c) && !(c >= '0' && c <= '9') &&
	    is_ascii_alpha(cp_at(s, pos + 1))) {
		for (i = pos + 1; is_ascii_alpha(cp_at(s, i)); i++)
			;
		return i - pos;
	}
	i = pos;
	if (!is_crlf(c) && !(s->f[pos] & (UCD_L | UCD_P | UCD_S)) && is_lm(s, pos + 1))
		i++;
	if (is_lm(s, i)) {
		while (is_lm(s, i))
			i++;
		return i - pos;
	}
	i = pos + (c == ' ');
	if (fl_at(s, i) & (UCD_P | UCD_S)) {
		while (fl_at(s, i) & (UCD_P | UCD_S))
			i++;
		while (i < s->n && is_crlf(s->c[i]))
			i++;
		return i - pos;
	}
	return whitespace_run(s, pos, true);
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

typedef size_t (*stage_fn)(const struct cps *s, size_t pos);

/* The stages of each staged split, in order; NULL is \s+$ (the whitespace ending a piece). */
static const stage_fn dsl_stages[] = {
	ds_crlf, dsl_letter_run, dsl_punct_run, NULL, ds_cjk_run, ds_number_run,
};
static const stage_fn dsc_stages[] = {
	ds_crlf, dsc_letter_run, dsc_punct_run, ds_cjk_run, ds_digit,
};
static const stage_fn ds3_stages[] = {
	ds3_digits, ds3_cjk_run, ds3_main,
};

/* Pieces as pairs of code point indices. */
struct cp_spans {
	size_t *v;
	size_t n, cap;
};

static int cp_push(struct cp_spans *o, size_t a, size_t b)
{
	if (o->n == o->cap) {
		size_t cap = o->cap ? o->cap * 2 : 64;
		size_t *v = realloc(o->v, cap * 2 * sizeof(*v));

		if (!v)
			return moe_err(ENOMEM, "tokenizer: out of memory for %zu pre-tokens", cap);
		o->v = v;
		o->cap = cap;
	}
	o->v[2 * o->n] = a;
	o->v[2 * o->n + 1] = b;
	o->n++;
	return 0;
}

/* One stage over the piece [a, b): its matches and the runs between them. */
static int split_stage(struct cps *s, stage_fn fn, size_t a, size_t b, struct cp_spans *out)
{
	size_t gap = a, pos = a, saved = s->n;
	int ret = 0;

	s->n = b;
	if (!fn) {
		/* Leftmost \s+$ is all of the trailing whitespace; a scan would be quadratic. */
		pos = b;
		while (pos > a && is_ws(s, pos - 1))
			pos--;
		if (pos > a)
			ret = cp_push(out, a, pos);
		gap = pos;
	} else {
		while (pos < b && !ret) {
			size_t len = fn(s, pos);

			if (!len) {
				pos++;
				continue;
			}
			if (gap < pos)
				ret = cp_push(out, gap, pos);
			if (!ret)
				ret = cp_push(out, pos, pos + len);
			pos += len;
			gap = pos;
		}
	}
	if (!ret && gap < b)
		ret = cp_push(out, gap, b);
	s->n = saved;
	return ret;
}

static int split_staged(struct cps *s, const stage_fn *stages, size_t n_stages,
			struct tok_spans *out)
{
	struct cp_spans a = { 0 }, b = { 0 }, t;
	int ret = cp_push(&a, 0, s->n);

	for (size_t k = 0; k < n_stages && !ret; k++) {
		b.n = 0;
		for (size_t i = 0; i < a.n && !ret; i++)
			ret = split_stage(s, stages[k], a.v[2 * i], a.v[2 * i + 1], &b);
		t = a;
		a = b;
		b = t;
	}
	for (size_t i = 0; i < a.n && !ret; i++)
		ret = spans_push(out, s->off[a.v[2 * i]], s->off[a.v[2 * i + 1]]);
	free(a.v);
	free(b.v);
	return ret;
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
	s.f = malloc((len + 1) * sizeof(*s.f));
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
		s.f[s.n] = (uint16_t)moe_ucd_flags(c);
		s.n++;
		i += (size_t)n;
	}
	s.off[s.n] = (uint32_t)len;

	switch (pre) {
	case PRE_DEEPSEEK_LLM:
		ret = split_staged(&s, dsl_stages, MOE_ARRAY_SIZE(dsl_stages), out);
		goto out;
	case PRE_DEEPSEEK_CODER:
		ret = split_staged(&s, dsc_stages, MOE_ARRAY_SIZE(dsc_stages), out);
		goto out;
	case PRE_DEEPSEEK3:
		ret = split_staged(&s, ds3_stages, MOE_ARRAY_SIZE(ds3_stages), out);
		goto out;
	default:
		break;
	}
	for (pos = 0; pos < s.n;) {
		size_t n;

		switch (pre) {
		case PRE_GPT2:
			n = match_gpt2(&s, pos);
			break;
		case PRE_LLAMA3:
			n = match_llama3(&s, pos, 3, false);
			break;
		case PRE_QWEN2:
			n = match_llama3(&s, pos, 1, false);
			break;
		case PRE_QWEN35:
			n = match_llama3(&s, pos, 1, true);
			break;
		case PRE_KIMI_K2:
			n = match_gpt4o(&s, pos, true);
			break;
		default:
			n = match_gpt4o(&s, pos, false);
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
