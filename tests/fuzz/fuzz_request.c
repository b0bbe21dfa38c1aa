/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for moe-server's request parser (tools/moe-server/api.c):
 * any bytes as the body of either endpoint.  `make fuzz` builds it with
 * -fsanitize=fuzzer; `make check` replays tests/fuzz/corpus/request/.
 *
 * Byte 0 picks the endpoint (even: chat, odd: completions); the rest is the
 * body.  An accepted request must hold what the parser promises (messages
 * with a role and content, stop sequences within the bound) and an error
 * must carry a status and a message.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

int fuzz_request(const uint8_t *data, size_t size);

int fuzz_request(const uint8_t *data, size_t size)
{
	struct api_limits lim = { .max_tokens = 1000, .max_messages = 64 };
	struct api_request r;
	struct api_error e;
	enum api_kind kind;
	char *body;

	if (!size)
		return 0;
	kind = data[0] & 1 ? API_COMPLETION : API_CHAT;
	if (api_parse_request(kind, (const char *)data + 1, size - 1, &lim, &r, &e)) {
		if (e.status < 400 || e.status > 599 || !e.message[0])
			abort();
		body = api_error_body(&e);
		if (!body)
			abort();
		free(body);
		return 0;
	}
	if (r.n_stop > API_MAX_STOP || r.max_tokens > lim.max_tokens)
		abort();
	if (kind == API_CHAT && !r.n_msgs)
		abort();
	for (uint32_t i = 0; i < r.n_msgs; i++)
		if (!r.msgs[i].role || !r.msgs[i].content)
			abort();
	if (kind == API_COMPLETION && !r.prompt && !r.n_prompt_ids)
		abort();
	api_request_free(&r);
	return 0;
}

#ifdef MOE_FUZZ_MAIN
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_request(data, size);
}
#endif
