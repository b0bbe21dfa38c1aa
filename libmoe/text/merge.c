/* SPDX-License-Identifier: MIT */
/*
 * The two merge algorithms.  Both keep the symbols of one piece of text in a
 * linked list and the candidate pairs in a binary heap; a popped pair whose
 * symbols changed since it was pushed is stale and dropped.  That makes a
 * piece of n symbols O(n log n), which matters for Gemma 4 and SentencePiece
 * where a piece is a whole line or a whole text.
 *
 *   BPE (gpt2, gemma4): lowest merge rank first, leftmost on ties.
 *   SPM (llama):        highest score of the joined text first, leftmost on
 *                       ties; only pairs whose joined text is a token merge.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "text/tokenizer.h"
#include "text/unicode.h"
#include "util/util.h"

struct sym {
	int32_t id;         /* token of the text so far, -1 when none */
	uint32_t start, end;
	int32_t prev, next; /* -1 at the ends */
};

struct cand {
	float key;          /* BPE: rank; SPM: -score (smaller pops first) */
	int32_t left, right;
	int32_t lid, rid;   /* BPE: the ids when pushed; SPM: -1 */
	uint32_t len;       /* joined byte length when pushed */
	int32_t result;
};

struct heap {
	struct cand *v;
	size_t n, cap;
};

static bool cand_less(const struct cand *a, const struct cand *b)
{
	if (a->key != b->key)
		return a->key < b->key;
	return a->left < b->left;
}

static int heap_push(struct heap *h, const struct cand *c)
{
	size_t i;

	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 64;
		struct cand *v = realloc(h->v, cap * sizeof(*v));

		if (!v)
			return moe_err(ENOMEM, "tokenizer: out of memory for %zu merge candidates",
				       cap);
		h->v = v;
		h->cap = cap;
	}
	i = h->n++;
	while (i > 0) {
		size_t p = (i - 1) / 2;

		if (!cand_less(c, &h->v[p]))
			break;
		h->v[i] = h->v[p];
		i = p;
	}
	h->v[i] = *c;
	return 0;
}

static void heap_pop(struct heap *h, struct cand *out)
{
	struct cand last;
	size_t i = 0;

	*out = h->v[0];
	last = h->v[--h->n];
	for (;;) {
		size_t l = 2 * i + 1, m = i;

		if (l >= h->n)
			break;
		m = l;
		if (l + 1 < h->n && cand_less(&h->v[l + 1], &h->v[l]))
			m = l + 1;
		if (!cand_less(&h->v[m], &last))
			break;
		h->v[i] = h->v[m];
		i = m;
	}
	if (h->n)
		h->v[i] = last;
}

/* Emit the bytes of [start, end) of @text as byte tokens (unknown if missing). */
static void emit_bytes(const struct moe_tokenizer *t, const char *text, uint32_t start,
		       uint32_t end, struct tok_out *o)
{
	for (uint32_t i = start; i < end; i++) {
		int32_t id = t->byte_tok[(uint8_t)text[i]];

		if (id < 0)
			id = t->unk;
		if (id >= 0)
			tok_emit(o, id);
	}
}

/* ------------------------------------------------------------ BPE */

static int bpe_try(const struct moe_tokenizer *t, struct heap *h, const struct sym *s,
		   int32_t left)
{
	const struct tok_merge *m;
	struct cand c;
	int32_t right;

	if (left < 0)
		return 0;
	right = s[left].next;
	if (right < 0 || s[left].id < 0 || s[right].id < 0)
		return 0;
	m = tok_find_merge(t, s[left].id, s[right].id);
	if (!m)
		return 0;
	c.key = (float)m->rank;
	c.left = left;
	c.right = right;
	c.lid = s[left].id;
	c.rid = s[right].id;
	c.len = 0;
	c.result = m->result;
	return heap_push(h, &c);
}

/*
 * Merge one pre-token whose symbols are already in @s (ids set) and emit
 * the result; symbols without a token fall back to bytes of @text.
 */
static int bpe_run(const struct moe_tokenizer *t, const char *text, struct sym *s, int32_t n,
		   struct heap *h, struct tok_out *o)
{
	struct cand c;
	int ret;

	h->n = 0;
	for (int32_t i = 0; i + 1 < n; i++) {
		ret = bpe_try(t, h, s, i);
		if (ret)
			return ret;
	}
	while (h->n) {
		struct sym *l, *r;

		heap_pop(h, &c);
		l = &s[c.left];
		r = &s[c.right];
		if (l->id != c.lid || r->id != c.rid || l->next != c.right || l->end == l->start ||
		    r->end == r->start)
			continue;
		l->id = c.result;
		l->end = r->end;
		l->next = r->next;
		if (r->next >= 0)
			s[r->next].prev = c.left;
		r->start = r->end;
		r->id = -1;
		ret = bpe_try(t, h, s, l->prev);
		if (!ret)
			ret = bpe_try(t, h, s, c.left);
		if (ret)
			return ret;
	}
	for (int32_t i = 0; i >= 0 && n; i = s[i].next) {
		if (s[i].id >= 0)
			tok_emit(o, s[i].id);
		else
			emit_bytes(t, text, s[i].start, s[i].end, o);
	}
	return 0;
}

static void link_syms(struct sym *s, int32_t n)
{
	for (int32_t i = 0; i < n; i++) {
		s[i].prev = i - 1;
		s[i].next = i + 1 < n ? i + 1 : -1;
	}
}

/* "\n", "\n\n"...: Gemma 4 keeps a run of newlines that is a token whole. */
static bool all_newlines(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] != '\n')
			return false;
	return true;
}

int tok_bpe(const struct moe_tokenizer *t, const char *text, size_t len, struct tok_out *o)
{
	static const char space_mark[] = "\xe2\x96\x81";
	struct tok_spans sp = { 0 };
	struct heap h = { 0 };
	struct sym *s = NULL;
	char *esc = NULL, *word = NULL;
	size_t esc_len = 0;
	int ret;

	if (t->kind == TOK_GEMMA4) {
		/* Spaces become U+2581 before anything else. */
		esc = malloc(len * 3 + 1);
		if (!esc)
			return moe_err(ENOMEM, "tokenizer: out of memory for %zu bytes", len);
		for (size_t i = 0; i < len; i++) {
			if (text[i] == ' ') {
				memcpy(esc + esc_len, space_mark, 3);
				esc_len += 3;
			} else {
				esc[esc_len++] = text[i];
			}
		}
		text = esc;
		len = esc_len;
	}
	ret = tok_pretokenize(t->pre, text, len, &sp);
	if (ret)
		goto out;
	s = malloc((len + 1) * sizeof(*s));
	if (t->ignore_merges)
		word = malloc(len * 2 + 1);
	if (!s || (t->ignore_merges && !word)) {
		ret = moe_err(ENOMEM, "tokenizer: out of memory for %zu bytes", len);
		goto out;
	}
	for (size_t w = 0; w < sp.n; w++) {
		uint32_t a = sp.v[2 * w], b = sp.v[2 * w + 1];
		const char *p = text + a;
		int32_t n = 0;

		if (t->kind == TOK_GEMMA4) {
			if (all_newlines(p, b - a)) {
				int32_t id = tok_find(t, p, b - a);

				if (id >= 0) {
					tok_emit(o, id);
					continue;
				}
			}
			for (uint32_t i = a; i < b;) {
				int cl = moe_utf8_len((uint8_t)text[i]);

				if (!cl || i + (uint32_t)cl > b)
					cl = 1;
				s[n].start = i;
				s[n].end = i + (uint32_t)cl;
				s[n].id = tok_find(t, text + i, (size_t)cl);
				n++;
				i += (uint32_t)cl;
			}
		} else {
			for (uint32_t i = a; i < b; i++) {
				if (t->byte_tok[(uint8_t)text[i]] < 0) {
					ret = moe_err(EILSEQ,
						      "the vocabulary has no token for byte 0x%02x, which the text holds: this model cannot take that text",
						      (uint8_t)text[i]);
					goto out;
				}
			}
			if (t->ignore_merges) {
				size_t wl = 0;
				int32_t id;

				for (uint32_t i = a; i < b; i++) {
					const struct tok_entry *e =
						&t->tok[t->byte_tok[(uint8_t)text[i]]];

					memcpy(word + wl, t->blob + e->off, e->len);
					wl += e->len;
				}
				id = tok_find(t, word, wl);
				if (id >= 0) {
					tok_emit(o, id);
					continue;
				}
			}
			for (uint32_t i = a; i < b; i++) {
				s[n].start = i;
				s[n].end = i + 1;
				s[n].id = t->byte_tok[(uint8_t)text[i]];
				n++;
			}
		}
		link_syms(s, n);
		ret = bpe_run(t, text, s, n, &h, o);
		if (ret)
			goto out;
	}
out:
	free(sp.v);
	free(h.v);
	free(s);
	free(esc);
	free(word);
	return ret;
}

/* ------------------------------------------------------------ SPM */

static int spm_try(const struct moe_tokenizer *t, struct heap *h, const char *text,
		   const struct sym *s, int32_t left)
{
	struct cand c;
	int32_t right, id;

	if (left < 0)
		return 0;
	right = s[left].next;
	if (right < 0)
		return 0;
	id = tok_find(t, text + s[left].start, s[right].end - s[left].start);
	if (id < 0)
		return 0;
	c.key = -t->tok[id].score;
	c.left = left;
	c.right = right;
	c.lid = -1;
	c.rid = -1;
	c.len = s[right].end - s[left].start;
	c.result = id;
	return heap_push(h, &c);
}

static bool is_mark(const char *text, const struct sym *s)
{
	return s->end - s->start == 3 && !memcmp(text + s->start, "\xe2\x96\x81", 3);
}

/* Merge symbols [a, b) of @esc and emit them. */
static int spm_segment(const struct moe_tokenizer *t, const char *esc, struct sym *s, int32_t a,
		       int32_t b, struct heap *h, struct tok_out *o)
{
	struct cand c;
	int ret;

	for (int32_t i = a; i < b; i++) {
		s[i].prev = i > a ? i - 1 : -1;
		s[i].next = i + 1 < b ? i + 1 : -1;
	}
	h->n = 0;
	for (int32_t i = a; i + 1 < b; i++) {
		ret = spm_try(t, h, esc, s, i);
		if (ret)
			return ret;
	}
	while (h->n) {
		struct sym *l, *r;

		heap_pop(h, &c);
		l = &s[c.left];
		r = &s[c.right];
		if (l->end == l->start || r->end == r->start || l->next != c.right ||
		    r->end - l->start != c.len)
			continue;
		l->end = r->end;
		l->id = c.result;
		l->next = r->next;
		if (r->next >= 0)
			s[r->next].prev = c.left;
		r->start = r->end;
		ret = spm_try(t, h, esc, s, l->prev);
		if (!ret)
			ret = spm_try(t, h, esc, s, c.left);
		if (ret)
			return ret;
	}
	for (int32_t i = a; i >= 0; i = s[i].next) {
		/* Only pairs that are tokens merge: a symbol without a token is one character. */
		int32_t id = s[i].id >= 0 ? s[i].id : tok_find(t, esc + s[i].start,
								 s[i].end - s[i].start);

		if (id >= 0)
			tok_emit(o, id);
		else
			emit_bytes(t, esc, s[i].start, s[i].end, o);
	}
	return 0;
}

int tok_spm(const struct moe_tokenizer *t, const char *text, size_t len, bool prefix_space,
	    struct tok_out *o)
{
	static const char space_mark[] = "\xe2\x96\x81";
	struct heap h = { 0 };
	struct sym *s = NULL;
	char *esc;
	size_t el = 0;
	int32_t n = 0;
	int ret = 0;

	esc = malloc(len * 3 + 4);
	if (!esc)
		return moe_err(ENOMEM, "tokenizer: out of memory for %zu bytes", len);
	if (prefix_space) {
		memcpy(esc, space_mark, 3);
		el = 3;
	}
	for (size_t i = 0; i < len; i++) {
		if (text[i] == ' ') {
			memcpy(esc + el, space_mark, 3);
			el += 3;
		} else {
			esc[el++] = text[i];
		}
	}
	if (el > UINT32_MAX - 1) {
		ret = moe_err(EFBIG, "tokenizer: text of %zu bytes is over the 4 GiB limit", len);
		goto out;
	}
	s = malloc((el + 1) * sizeof(*s));
	if (!s) {
		ret = moe_err(ENOMEM, "tokenizer: out of memory for %zu bytes", len);
		goto out;
	}
	for (size_t i = 0; i < el;) {
		int cl = moe_utf8_len((uint8_t)esc[i]);

		if (!cl || i + (size_t)cl > el)
			cl = 1;
		s[n].start = (uint32_t)i;
		s[n].end = (uint32_t)(i + (size_t)cl);
		s[n].id = -1;
		n++;
		i += (size_t)cl;
	}
	/*
	 * When no token has U+2581 after another character, no merge crosses
	 * the start of a word, so each word merges on its own: the same result,
	 * with a heap that stays small.
	 */
	for (int32_t a = 0, b; a < n; a = b) {
		b = a + 1;
		if (t->spm_word_split)
			while (b < n && !(is_mark(esc, &s[b]) && !is_mark(esc, &s[b - 1])))
				b++;
		else
			b = n;
		ret = spm_segment(t, esc, s, a, b, &h, o);
		if (ret)
			goto out;
	}
out:
	free(h.v);
	free(s);
	free(esc);
	return ret;
}
