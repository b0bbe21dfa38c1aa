/* SPDX-License-Identifier: MIT */
/*
 * Grammars (GBNF) compiled to a pushdown matcher over code points, and the
 * vocabulary's token bytes the sampler checks against them.
 */
#ifndef MOE_TEXT_GRAMMAR_H
#define MOE_TEXT_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe/moe.h"

struct moe_tokenizer;

/*
 * The bytes each token adds to the text, built once per vocabulary (at
 * tokenizer load): control and unused tokens have none.  @space_first marks
 * the tokens whose leading space the detokenizer drops when they come first.
 * @by_byte lists the ids with a piece grouped by its first byte:
 * by_byte[byte_start[b] .. byte_start[b + 1]).
 */
struct tok_pieces {
	uint32_t n;
	uint32_t *off;          /* [n + 1] into bytes */
	char *bytes;
	uint8_t *space_first;   /* [n] */
	uint8_t *eog;           /* [n] */
	int32_t *by_byte;
	uint32_t byte_start[257];
	bool any_eog;
};

int tok_pieces_build(const struct moe_tokenizer *t, struct tok_pieces **out);
void tok_pieces_free(struct tok_pieces *p);
const struct tok_pieces *tok_pieces_of(const struct moe_tokenizer *t);

/*
 * The 256 first bytes that may come next: true for a byte that might start an
 * accepted continuation (a superset; false is certain).
 */
const uint8_t *grammar_first_bytes(struct moe_grammar *g);

#endif
