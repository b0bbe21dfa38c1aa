/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for moe-server's chat formats (tools/moe-server/
 * chatfmt.c): the reply parser over any bytes, and the renderer over any
 * request the request parser accepts.  `make fuzz` builds it with
 * -fsanitize=fuzzer; `make check` replays tests/fuzz/corpus/toolcall/.
 *
 * Byte 0: the format (its value mod 7), bit 3 whether tools are on, bit 4
 * whether the rest is a request body to render (else a reply to parse; a
 * rendered request's forced-call grammar, if any, must compile).  A
 * parse must be repeatable, its calls named with object arguments, and a
 * partial parse of any prefix must give a prefix of the final reasoning and
 * content (what streaming sends is never taken back).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chatfmt.h"
#include "moe/moe.h"

int fuzz_toolcall(const uint8_t *data, size_t size);

static bool prefix_of(const char *s, size_t n, const char *p, size_t pn)
{
	return pn <= n && !memcmp(s, p, pn);
}

static void check_reply(enum cf_format f, bool tools, const char *text, size_t len)
{
	struct cf_reply r, p;

	if (cf_parse(f, tools, text, len, true, &r))
		return;
	for (size_t i = 0; i < r.n_calls; i++) {
		/* NUL escaped in a string is JSON all the same */
		json_t *a = json_loads(r.calls[i].arguments, JSON_ALLOW_NUL, NULL);

		if (!r.calls[i].name[0] || !json_is_object(a))
			abort();
		json_decref(a);
	}
	/* a few cut points: every one for short inputs */
	for (size_t cut = 0; cut <= len; cut += len < 64 ? 1 : len / 32 + 1) {
		if (cf_parse(f, tools, text, cut, false, &p))
			continue;
		if (!prefix_of(r.reasoning, r.reasoning_len, p.reasoning, p.reasoning_len) ||
		    !prefix_of(r.content, r.content_len, p.content, p.content_len) ||
		    p.n_calls > r.n_calls)
			abort();
		cf_reply_free(&p);
	}
	cf_reply_free(&r);
}

int fuzz_toolcall(const uint8_t *data, size_t size)
{
	struct api_limits lim = { .max_tokens = 1000, .max_messages = 64 };
	struct cf_render_opts o = { .date = "2026-01-01" };
	enum cf_format f;
	struct api_request req;
	struct api_error e;
	char *out, *prefix;
	int n;

	if (!size)
		return 0;
	f = (enum cf_format)(data[0] % 7);
	if (!(data[0] & 0x10)) {
		check_reply(f, data[0] & 0x08, (const char *)data + 1, size - 1);
		return 0;
	}
	if (api_parse_request(API_CHAT, (const char *)data + 1, size - 1, &lim, &req, &e))
		return 0;
	n = cf_render(f, &o, &req, &out, &prefix, &e);
	if (n >= 0) {
		char *gbnf;
		struct moe_grammar *g;

		if ((size_t)n != strlen(out) || !prefix)
			abort();
		free(out);
		free(prefix);
		/* a forced call's grammar, when there is one, compiles */
		if (!cf_call_grammar(f, &req, &gbnf, &e) && gbnf) {
			if (moe_grammar_create(gbnf, strlen(gbnf), &g))
				abort();
			moe_grammar_destroy(g);
			free(gbnf);
		} else if (!gbnf && e.status && (e.status < 400 || !e.message[0])) {
			abort();
		}
	} else if (e.status < 400 || !e.message[0]) {
		abort();
	}
	api_request_free(&req);
	return 0;
}

#ifdef MOE_FUZZ_MAIN
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_toolcall(data, size);
}
#endif
