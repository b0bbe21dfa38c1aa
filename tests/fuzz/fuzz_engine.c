/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the reader of engines' counter files (the files
 * `moectl status` reads from the runtime directory, which any local user
 * may have written).  `make fuzz` builds it with -fsanitize=fuzzer;
 * `make check` replays tests/fuzz/corpus/engine/.  What the parser accepts
 * must hold what its callers rely on.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/publish.h"
#include "moe/moe.h"

int fuzz_engine(const uint8_t *data, size_t size);

int fuzz_engine(const uint8_t *data, size_t size)
{
	struct moe_engine_info in;
	uint64_t start;

	if (moe_pub_parse(data, size, &in, &start) != 0)
		return 0;
	if (in.pid <= 0 || in.busy > 1 || !(in.hit_rate >= 0 && in.hit_rate <= 1) ||
	    !memchr(in.model, 0, sizeof(in.model)) || !memchr(in.backend, 0, sizeof(in.backend)))
		abort();
	return strlen(in.model) < sizeof(in.model) ? 0 : 1;
}

#ifdef MOE_FUZZ_MAIN
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_engine(data, size);
}
#endif
