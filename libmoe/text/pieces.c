// SPDX-License-Identifier: MIT
/*
 * Every token's bytes, laid out once per vocabulary, for the grammar sampler:
 * it checks a candidate's bytes against the grammar many times per generated
 * token, so they must not be rebuilt (or looked up through the tokenizer)
 * each time.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "text/grammar.h"
#include "text/tokenizer.h"
#include "util/util.h"

void tok_pieces_free(struct tok_pieces *p)
{
	if (!p)
		return;
	free(p->off);
	free(p->bytes);
	free(p->space_first);
	free(p->eog);
	free(p->by_byte);
	free(p);
}

/* Tokens that are text: control, unused and unknown tokens never are. */
static bool is_text(const struct moe_tokenizer *t, uint32_t id)
{
	uint8_t ty = t->tok[id].type;

	return ty != TT_CONTROL && ty != TT_UNUSED && ty != TT_UNKNOWN;
}

int tok_pieces_build(const struct moe_tokenizer *t, struct tok_pieces **out)
{
	struct tok_pieces *p = calloc(1, sizeof(*p));
	uint32_t n = t->n_vocab, fill[256];
	size_t total = 0;

	*out = NULL;
	if (!p)
		return moe_err(ENOMEM, "tokenizer: out of memory for token bytes");
	p->n = n;
	p->off = malloc(sizeof(*p->off) * ((size_t)n + 1));
	p->space_first = calloc(n, 1);
	p->eog = calloc(n, 1);
	if (!p->off || !p->space_first || !p->eog)
		goto nomem;
	for (uint32_t i = 0; i < n; i++) {
		int len = is_text(t, i) ? moe_token_to_piece(t, (int32_t)i, NULL, 0) : 0;

		total += len > 0 ? (size_t)len : 0;
	}
	if (total > UINT32_MAX)
		goto nomem;
	p->bytes = malloc(total ? total : 1);
	if (!p->bytes)
		goto nomem;
	total = 0;
	for (uint32_t i = 0; i < n; i++) {
		int len = 0;

		p->off[i] = (uint32_t)total;
		if (is_text(t, i)) {
			len = moe_token_to_piece(t, (int32_t)i, p->bytes + total, INT32_MAX);
			if (len < 0)
				len = 0;
		}
		total += (size_t)len;
		p->space_first[i] = t->add_space_prefix && len && tok_starts_with_space(t, (int32_t)i);
		p->byte_start[len ? (uint8_t)p->bytes[p->off[i]] + 1 : 0]++;
	}
	p->off[n] = (uint32_t)total;
	for (int i = 0; i < t->n_eog; i++) {
		if (t->eog[i] >= 0 && (uint32_t)t->eog[i] < n) {
			p->eog[t->eog[i]] = 1;
			p->any_eog = true;
		}
	}
	/* byte_start[b + 1] counted the pieces starting with b; [0] the empty ones */
	{
		uint32_t at = 0;

		for (int b = 0; b < 256; b++) {
			uint32_t c = p->byte_start[b + 1];

			p->byte_start[b] = at;
			fill[b] = at;
			at += c;
		}
		p->byte_start[256] = at;
		p->by_byte = malloc(sizeof(*p->by_byte) * (at ? at : 1));
		if (!p->by_byte)
			goto nomem;
	}
	for (uint32_t i = 0; i < n; i++)
		if (p->off[i + 1] > p->off[i])
			p->by_byte[fill[(uint8_t)p->bytes[p->off[i]]]++] = (int32_t)i;
	*out = p;
	return 0;
nomem:
	tok_pieces_free(p);
	return moe_err(ENOMEM, "tokenizer: out of memory for the bytes of %u tokens", n);
}

const struct tok_pieces *tok_pieces_of(const struct moe_tokenizer *t)
{
	return t ? t->pieces : NULL;
}
