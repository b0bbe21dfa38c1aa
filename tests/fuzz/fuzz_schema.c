/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the JSON Schema to GBNF converter
 * (tools/common/schema.c): any bytes as a schema.  `make fuzz` builds it with
 * -fsanitize=fuzzer; `make check` replays tests/fuzz/corpus/schema/.
 *
 * A schema that is not JSON or is refused must come with a reason; one that
 * converts must give a grammar that compiles (the converter writes only
 * what the grammar compiler takes) unless its references loop without
 * content, which the compiler reports as left recursion.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "schema.h"

int fuzz_schema(const uint8_t *data, size_t size);

int fuzz_schema(const uint8_t *data, size_t size)
{
	struct moe_grammar *g = NULL;
	json_t *schema;
	char err[512], *gbnf;
	int ret;

	schema = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
	if (!schema)
		return 0;
	err[0] = 0;
	ret = schema_to_gbnf(schema, NULL, &gbnf, err, sizeof(err));
	if (ret) {
		if ((ret != -EINVAL && ret != -ENOMEM) || !err[0] || gbnf)
			abort();
		json_decref(schema);
		return 0;
	}
	ret = moe_grammar_create(gbnf, strlen(gbnf), &g);
	if (ret && (ret != -EINVAL || !strstr(moe_errmsg(), "left-recursive")))
		abort();
	moe_grammar_destroy(g);
	free(gbnf);
	json_decref(schema);
	return 0;
}

#ifdef MOE_FUZZ_MAIN
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_schema(data, size);
}
#endif
