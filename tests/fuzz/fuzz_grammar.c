/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the GBNF compiler and matcher (libmoe/text/grammar.c).
 * `make fuzz` builds it with -fsanitize=fuzzer; `make check` replays
 * tests/fuzz/corpus/grammar/.
 *
 * The input is a grammar, then optionally a NUL byte and text: the grammar
 * is compiled (an error must say where), and the text fed to it whole and
 * byte by byte, which must agree, as must moe_grammar_allows with accept.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"

int fuzz_grammar(const uint8_t *data, size_t size);

int fuzz_grammar(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, 0, size);
	size_t glen = nul ? (size_t)(nul - data) : size;
	const char *text = nul ? (const char *)nul + 1 : "";
	size_t tlen = nul ? size - glen - 1 : 0;
	struct moe_grammar *g, *c;
	bool whole_ok, bytes_ok = true;
	int ret;

	ret = moe_grammar_create((const char *)data, glen, &g);
	if (ret) {
		if (g || (ret != -EINVAL && ret != -ENOMEM && ret != -E2BIG) || !moe_errmsg()[0])
			abort();
		return 0;
	}
	if (moe_grammar_clone(g, &c)) {
		moe_grammar_destroy(g);
		return 0;
	}
	whole_ok = moe_grammar_allows(g, text, tlen);
	ret = moe_grammar_accept(g, text, tlen);
	if ((ret == 0) != whole_ok && ret != -E2BIG)
		abort();
	for (size_t i = 0; i < tlen && bytes_ok; i++) {
		bool may = moe_grammar_allows(c, text + i, 1);
		int r = moe_grammar_accept(c, text + i, 1);

		if (r == -E2BIG)
			goto out;
		if (may != (r == 0))
			abort();
		bytes_ok = r == 0;
	}
	/* the same text accepted at once and a byte at a time ends in the same state */
	if (ret == 0 && (!bytes_ok || moe_grammar_is_complete(g) != moe_grammar_is_complete(c)))
		abort();
	if (ret == -EILSEQ && bytes_ok)
		abort();
out:
	moe_grammar_destroy(c);
	moe_grammar_destroy(g);
	return 0;
}

#ifdef MOE_FUZZ_MAIN
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_grammar(data, size);
}
#endif
