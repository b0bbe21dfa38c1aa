/* SPDX-License-Identifier: MIT */
/*
 * The token sampler: repetition penalty, top-k, softmax with temperature,
 * top-p, min-p, then a draw from its own seeded generator, in that order.
 * One sampler per sequence; not thread-safe.
 */
#ifndef MOE_SAMPLER_H
#define MOE_SAMPLER_H

#include <stdint.h>

#include "moe/moe.h"

struct tok_pieces;

struct moe_sampler_params {
	float temp;             /* <= 0: greedy (argmax, ties to the lowest id) */
	int top_k;              /* 0: off */
	float top_p;            /* [0, 1]; 1: off; keeps the smallest prefix reaching p */
	float min_p;            /* [0, 1]; 0: off; keeps p >= min_p * p_max */
	float repeat_penalty;   /* > 0; 1: off; divides positive logits, multiplies negative */
	int repeat_last_n;      /* accepted tokens the penalty looks back on; 0: off */
	uint64_t seed;
	const struct moe_grammar *grammar;      /* NULL: unconstrained; cloned */
	const struct moe_tokenizer *tok;        /* the tokens' bytes, with a grammar */
};

struct moe_sampler;

/* -EINVAL (with moe_errmsg() naming the parameter) for parameters out of range. */
int moe_sampler_create(const struct moe_sampler_params *p, int n_vocab, struct moe_sampler **out);
/* moe_sampler_sample, moe_sampler_accept and moe_sampler_destroy: see moe/moe.h. */
/*
 * Forget the accepted tokens (a new sequence) and take the grammar back to
 * the state it was given in; the generator keeps its state.
 */
void moe_sampler_reset(struct moe_sampler *s);

#endif
