/* SPDX-License-Identifier: MIT */
/*
 * JSON Schema to GBNF, for structured output (moe-run --json-schema,
 * moe-server's response_format json_schema).  The subset converted is stated
 * in Documentation/structured-output.rst; any other keyword is refused by
 * name rather than ignored, so a schema never constrains less than it says.
 */
#ifndef MOE_TOOL_SCHEMA_H
#define MOE_TOOL_SCHEMA_H

#include <stddef.h>

#include <jansson.h>

/*
 * The GBNF of @schema into *out (malloc'ed, NUL-terminated).  Its rules are
 * named @prefix-... and the schema's own rule @prefix ("root" when @prefix is
 * NULL), so a caller can embed it in a grammar of its own.  Returns 0, or
 * -EINVAL with @err a sentence naming the keyword and where in the schema
 * (a JSON pointer), -ENOMEM.
 */
int schema_to_gbnf(const json_t *schema, const char *prefix, char **out, char *err,
		   size_t errlen);

/*
 * The same in a dialect: SCHEMA_GEMMA writes Gemma 4's tool-call argument
 * syntax ({key:value,...} with bare keys, strings in <|"|> that hold no '<',
 * null as None, no blanks) instead of JSON.
 */
#define SCHEMA_GEMMA 1u
int schema_to_gbnf_flags(const json_t *schema, const char *prefix, unsigned flags, char **out,
			 char *err, size_t errlen);

struct moe_grammar;

/* The schema's grammar compiled; @err says why not (the schema or the grammar). */
int schema_compile(const json_t *schema, struct moe_grammar **out, char *err, size_t errlen);
/* The same from @len bytes of JSON text (a file's contents). */
int schema_compile_text(const char *text, size_t len, struct moe_grammar **out, char *err,
			size_t errlen);

#endif
