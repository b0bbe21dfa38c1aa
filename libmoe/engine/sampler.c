// SPDX-License-Identifier: MIT
/*
 * The token sampler (see sampler.h).
 *
 * Candidates are sorted once by penalised logit, so every truncation (top-k,
 * top-p, min-p) keeps a prefix of the sorted list.  The generator is
 * xoshiro256** seeded through splitmix64: the same seed gives the same
 * tokens on every platform, and nothing touches rand()'s global state.
 *
 * With a grammar, the token drawn is checked against it and, when refused,
 * taken out of the kept candidates and the draw repeated: most draws cost
 * one check of a few bytes.  After a few refusals every kept candidate is
 * checked; only when none fits is the whole vocabulary filtered (by first
 * byte, then by the grammar) and the chain run again over what fits.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"
#include "text/grammar.h"
#include "util/util.h"

/* Draws checked against the grammar before every kept candidate is. */
#define GRAMMAR_TRIES 8

struct cand {
	double logit;
	double p;
	int32_t id;
};

struct moe_sampler {
	struct moe_sampler_params p;
	int n_vocab;
	uint64_t rng[4];
	int32_t *hist;          /* ring of the last repeat_last_n accepted tokens */
	int hist_len, hist_pos;
	uint32_t *stamp;        /* per token: the sample call that last penalised it */
	uint32_t calls;
	struct cand *c;
	struct moe_grammar *g, *g0;     /* the document's state; as given */
	const struct tok_pieces *pc;
	uint32_t n_fed;                 /* tokens fed to the grammar */
};

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(uint64_t s[4])
{
	uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return out;
}

/* Uniform in [0, 1) with 53 random bits. */
static double next_unit(uint64_t s[4])
{
	return (double)(next_u64(s) >> 11) * 0x1.0p-53;
}

int moe_sampler_create(const struct moe_sampler_params *p, int n_vocab, struct moe_sampler **out)
{
	struct moe_sampler *s;
	uint64_t x;

	if (!p || !out)
		return moe_err(EINVAL, "sampler: params and out must not be NULL");
	*out = NULL;
	if (n_vocab <= 0)
		return moe_err(EINVAL, "sampler: vocabulary size %d must be positive", n_vocab);
	if (isnan(p->temp))
		return moe_err(EINVAL, "sampler: temperature is NaN");
	if (p->top_k < 0)
		return moe_err(EINVAL, "sampler: top_k %d is negative (0 turns it off)", p->top_k);
	if (!(p->top_p >= 0 && p->top_p <= 1))
		return moe_err(EINVAL, "sampler: top_p %g is outside [0, 1] (1 turns it off)",
			       p->top_p);
	if (!(p->min_p >= 0 && p->min_p <= 1))
		return moe_err(EINVAL, "sampler: min_p %g is outside [0, 1] (0 turns it off)",
			       p->min_p);
	if (!(p->repeat_penalty > 0) || isinf(p->repeat_penalty))
		return moe_err(EINVAL, "sampler: repeat_penalty %g must be a positive number "
			       "(1 turns it off)", p->repeat_penalty);
	if (p->repeat_last_n < 0)
		return moe_err(EINVAL, "sampler: repeat_last_n %d is negative (0 turns it off)",
			       p->repeat_last_n);
	if (p->grammar && !tok_pieces_of(p->tok))
		return moe_err(EINVAL, "sampler: a grammar needs the tokenizer whose token bytes it "
			       "checks (moe_sample_params.tokenizer)");

	s = calloc(1, sizeof(*s));
	if (!s)
		return moe_err(ENOMEM, "sampler: state");
	s->p = *p;
	s->n_vocab = n_vocab;
	s->c = malloc(sizeof(*s->c) * (size_t)n_vocab);
	s->stamp = calloc((size_t)n_vocab, sizeof(*s->stamp));
	if (p->repeat_last_n)
		s->hist = malloc(sizeof(*s->hist) * (size_t)p->repeat_last_n);
	if (p->grammar) {
		s->pc = tok_pieces_of(p->tok);
		if (moe_grammar_clone(p->grammar, &s->g) || moe_grammar_clone(p->grammar, &s->g0)) {
			moe_sampler_destroy(s);
			return moe_err(ENOMEM, "sampler: grammar state");
		}
	}
	if (!s->c || !s->stamp || (p->repeat_last_n && !s->hist)) {
		moe_sampler_destroy(s);
		return moe_err(ENOMEM, "sampler: buffers for a vocabulary of %d", n_vocab);
	}
	x = p->seed;
	for (int i = 0; i < 4; i++)
		s->rng[i] = splitmix64(&x);
	*out = s;
	return 0;
}

void moe_sampler_destroy(struct moe_sampler *s)
{
	if (!s)
		return;
	free(s->c);
	free(s->stamp);
	free(s->hist);
	moe_grammar_destroy(s->g);
	moe_grammar_destroy(s->g0);
	free(s);
}

void moe_sampler_accept(struct moe_sampler *s, int32_t token)
{
	if (!s || !s->p.repeat_last_n || token < 0 || token >= s->n_vocab)
		return;
	s->hist[s->hist_pos] = token;
	s->hist_pos = (s->hist_pos + 1) % s->p.repeat_last_n;
	if (s->hist_len < s->p.repeat_last_n)
		s->hist_len++;
}

void moe_sampler_reset(struct moe_sampler *s)
{
	if (!s)
		return;
	s->hist_len = 0;
	s->hist_pos = 0;
	if (s->g) {
		struct moe_grammar *g;

		/* keep the old state if the copy cannot be made */
		if (!moe_grammar_clone(s->g0, &g)) {
			moe_grammar_destroy(s->g);
			s->g = g;
		}
		s->n_fed = 0;
	}
}

MOE_API struct moe_grammar *moe_sampler_grammar(struct moe_sampler *s)
{
	return s ? s->g : NULL;
}

/* Higher logit first; equal logits keep the lower id first. */
static int cand_cmp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;

	if (x->logit != y->logit)
		return x->logit > y->logit ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* The bytes token @id adds to the document now (the first loses the space the detokenizer drops). */
static void token_bytes(const struct moe_sampler *s, int32_t id, const char **b, size_t *len)
{
	const struct tok_pieces *pc = s->pc;

	*b = pc->bytes + pc->off[id];
	*len = pc->off[id + 1] - pc->off[id];
	if (!s->n_fed && pc->space_first[id]) {
		(*b)++;
		(*len)--;
	}
}

/* Whether the grammar lets token @id come next. */
static bool allowed(struct moe_sampler *s, int32_t id)
{
	const struct tok_pieces *pc = s->pc;
	const char *b;
	size_t len;

	if ((uint32_t)id >= pc->n)
		return false;
	if (pc->eog[id])
		return moe_grammar_is_complete(s->g);
	if (pc->off[id + 1] == pc->off[id])
		return false;
	token_bytes(s, id, &b, &len);
	return moe_grammar_allows(s->g, b, len);
}

/* Candidate @id with its logit, unless it is not a number (or, filtering, the grammar refuses it). */
static void add_cand(struct moe_sampler *s, int *n, int32_t id, float logit)
{
	if (isnan(logit) || logit == -INFINITY)
		return;
	s->c[*n].logit = logit;
	s->c[*n].id = id;
	(*n)++;
}

/*
 * The candidates of @logits into s->c, penalised; with @filter only those
 * the grammar allows, looked up by first byte.  Returns their count.
 */
static int collect(struct moe_sampler *s, const float *logits, bool filter)
{
	int n = 0;
	uint32_t call;

	if (!filter) {
		for (int i = 0; i < s->n_vocab; i++)
			add_cand(s, &n, i, logits[i]);
	} else if (!s->n_fed) {
		/* the first token's bytes may lose their space: no first-byte index */
		for (int i = 0; i < s->n_vocab; i++)
			if (allowed(s, i))
				add_cand(s, &n, i, logits[i]);
	} else {
		const struct tok_pieces *pc = s->pc;
		const uint8_t *first = grammar_first_bytes(s->g);
		bool complete = moe_grammar_is_complete(s->g);

		for (int b = 0; b < 256; b++) {
			if (!first[b])
				continue;
			for (uint32_t k = pc->byte_start[b]; k < pc->byte_start[b + 1]; k++) {
				int32_t id = pc->by_byte[k];

				if (id < s->n_vocab && allowed(s, id))
					add_cand(s, &n, id, logits[id]);
			}
		}
		for (uint32_t i = 0; complete && i < pc->n && (int)i < s->n_vocab; i++)
			if (pc->eog[i])
				add_cand(s, &n, (int32_t)i, logits[i]);
	}
	if (!n)
		return 0;

	/* each distinct token of the window is penalised once, however often it occurs */
	if (s->hist_len && s->p.repeat_penalty != 1.0f) {
		call = ++s->calls;
		if (call == 0) {
			memset(s->stamp, 0, sizeof(*s->stamp) * (size_t)s->n_vocab);
			call = s->calls = 1;
		}
		for (int i = 0; i < s->hist_len; i++)
			s->stamp[s->hist[i]] = call;
		for (int i = 0; i < n; i++) {
			struct cand *c = &s->c[i];

			if (s->stamp[c->id] != call)
				continue;
			if (c->logit > 0)
				c->logit /= s->p.repeat_penalty;
			else
				c->logit *= s->p.repeat_penalty;
		}
	}
	return n;
}

/* Index of the highest logit (the lowest id among equals: candidates are in id order). */
static int argmax(const struct moe_sampler *s, int n)
{
	int best = 0;

	for (int i = 1; i < n; i++)
		if (s->c[i].logit > s->c[best].logit)
			best = i;
	return best;
}

/*
 * Sort, top-k, softmax at the temperature, top-p, min-p: the candidates kept
 * are s->c[0 .. return), each with its probability.
 */
static int truncate_cands(struct moe_sampler *s, int n)
{
	double sum = 0, acc;
	int keep;

	qsort(s->c, (size_t)n, sizeof(*s->c), cand_cmp);
	if (s->p.top_k > 0 && s->p.top_k < n)
		n = s->p.top_k;
	if (s->c[0].logit == INFINITY) {
		s->c[0].p = 1;
		return 1;
	}
	for (int i = 0; i < n; i++) {
		s->c[i].p = exp((s->c[i].logit - s->c[0].logit) / s->p.temp);
		sum += s->c[i].p;
	}
	for (int i = 0; i < n; i++)
		s->c[i].p /= sum;

	if (s->p.top_p < 1) {
		acc = 0;
		keep = n;
		for (int i = 0; i < n; i++) {
			acc += s->c[i].p;
			if (acc >= s->p.top_p) {
				keep = i + 1;
				break;
			}
		}
		n = keep;
	}
	if (s->p.min_p > 0) {
		double floor_p = s->p.min_p * s->c[0].p;

		for (keep = 1; keep < n && s->c[keep].p >= floor_p; keep++)
			;
		n = keep;
	}
	return n;
}

/* Draw an index of s->c[0 .. n) by probability; -1 when none is left. */
static int draw(struct moe_sampler *s, int n)
{
	double sum = 0, u, acc = 0;
	int last = -1;

	for (int i = 0; i < n; i++)
		sum += s->c[i].p;
	if (!(sum > 0))
		return -1;
	u = next_unit(s->rng) * sum;
	for (int i = 0; i < n; i++) {
		if (s->c[i].p <= 0)
			continue;
		acc += s->c[i].p;
		last = i;
		if (u < acc)
			return i;
	}
	/* rounding left u at the very top: the last kept candidate */
	return last;
}

static int32_t none_fits(struct moe_sampler *s)
{
	if (moe_grammar_is_complete(s->g) && !moe_grammar_can_continue(s->g))
		return moe_err(EILSEQ, "sampler: the grammar's document is complete and the "
			       "vocabulary has no end-of-generation token to end it; stop when "
			       "moe_grammar_can_continue() is false");
	return moe_err(EILSEQ, "sampler: no token of the vocabulary continues the grammar's "
		       "document here");
}

/* A draw the grammar allows: see the comment at the top. */
static int32_t sample_grammar(struct moe_sampler *s, const float *logits, int n)
{
	int kept, i;

	if (s->p.temp <= 0) {
		i = argmax(s, n);
		if (allowed(s, s->c[i].id))
			return s->c[i].id;
		qsort(s->c, (size_t)n, sizeof(*s->c), cand_cmp);
		for (i = 0; i < n; i++)
			if (allowed(s, s->c[i].id))
				return s->c[i].id;
		return none_fits(s);
	}
	kept = truncate_cands(s, n);
	for (int t = 0; t < GRAMMAR_TRIES; t++) {
		i = draw(s, kept);
		if (i < 0)
			break;
		if (allowed(s, s->c[i].id))
			return s->c[i].id;
		s->c[i].p = 0;
	}
	for (i = 0; i < kept; i++)
		if (s->c[i].p > 0 && !allowed(s, s->c[i].id))
			s->c[i].p = 0;
	i = draw(s, kept);
	if (i >= 0)
		return s->c[i].id;
	if (kept == n)
		return none_fits(s);
	n = collect(s, logits, true);
	if (!n)
		return none_fits(s);
	i = draw(s, truncate_cands(s, n));
	return i >= 0 ? s->c[i].id : none_fits(s);
}

/* Feed the token drawn to the grammar. */
static int feed(struct moe_sampler *s, int32_t id)
{
	const char *b;
	size_t len;
	int ret;

	if (s->pc->eog[id])
		return id;
	token_bytes(s, id, &b, &len);
	ret = moe_grammar_accept(s->g, b, len);
	if (ret < 0)
		return ret;
	s->n_fed++;
	return id;
}

int32_t moe_sampler_sample(struct moe_sampler *s, const float *logits)
{
	int n, i;
	int32_t tok;

	if (!s || !logits)
		return moe_err(EINVAL, "sampler: NULL sampler or logits");
	n = collect(s, logits, false);
	if (!n)
		return moe_err(EINVAL, "sampler: none of the %d logits is a number", s->n_vocab);
	if (s->g) {
		tok = sample_grammar(s, logits, n);
		return tok < 0 ? tok : feed(s, tok);
	}
	if (s->p.temp <= 0)
		return s->c[argmax(s, n)].id;
	i = draw(s, truncate_cands(s, n));
	return s->c[i].id;
}
