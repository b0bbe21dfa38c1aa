// SPDX-License-Identifier: MIT
/*
 * The token sampler (see sampler.h).
 *
 * Candidates are sorted once by penalised logit, so every truncation (top-k,
 * top-p, min-p) keeps a prefix of the sorted list.  The generator is
 * xoshiro256** seeded through splitmix64: the same seed gives the same
 * tokens on every platform, and nothing touches rand()'s global state.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/sampler.h"
#include "util/util.h"

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

	s = calloc(1, sizeof(*s));
	if (!s)
		return moe_err(ENOMEM, "sampler: state");
	s->p = *p;
	s->n_vocab = n_vocab;
	s->c = malloc(sizeof(*s->c) * (size_t)n_vocab);
	s->stamp = calloc((size_t)n_vocab, sizeof(*s->stamp));
	if (p->repeat_last_n)
		s->hist = malloc(sizeof(*s->hist) * (size_t)p->repeat_last_n);
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
}

/* Higher logit first; equal logits keep the lower id first. */
static int cand_cmp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;

	if (x->logit != y->logit)
		return x->logit > y->logit ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

int32_t moe_sampler_sample(struct moe_sampler *s, const float *logits)
{
	int n = 0, keep;
	double sum = 0, u, acc;
	uint32_t call;

	if (!s || !logits)
		return moe_err(EINVAL, "sampler: NULL sampler or logits");
	for (int i = 0; i < s->n_vocab; i++) {
		if (isnan(logits[i]) || logits[i] == -INFINITY)
			continue;
		s->c[n].logit = logits[i];
		s->c[n].id = i;
		n++;
	}
	if (!n)
		return moe_err(EINVAL, "sampler: none of the %d logits is a number", s->n_vocab);

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

	if (s->p.temp <= 0) {
		int best = 0;

		for (int i = 1; i < n; i++)
			if (s->c[i].logit > s->c[best].logit)
				best = i;
		return s->c[best].id;
	}

	qsort(s->c, (size_t)n, sizeof(*s->c), cand_cmp);
	if (s->p.top_k > 0 && s->p.top_k < n)
		n = s->p.top_k;
	if (s->c[0].logit == INFINITY)
		return s->c[0].id;
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

	sum = 0;
	for (int i = 0; i < n; i++)
		sum += s->c[i].p;
	u = next_unit(s->rng) * sum;
	acc = 0;
	for (int i = 0; i < n; i++) {
		acc += s->c[i].p;
		if (u < acc)
			return s->c[i].id;
	}
	/* rounding left u at the very top: the last kept candidate */
	return s->c[n - 1].id;
}
