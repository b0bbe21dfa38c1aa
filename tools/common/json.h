/* SPDX-License-Identifier: MIT */
/*
 * The JSON every tool prints: values are built as jansson json_t trees and
 * written by one function, compact ({"a": 1, "b": 2} on one line, what scripts
 * grep) or indented with --pretty.  Building never fails silently: a value that
 * could not be made (out of memory) marks the document, and tj_print() then
 * reports it instead of printing a document with holes.
 */
#ifndef MOE_TOOL_JSON_H
#define MOE_TOOL_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* Set by --pretty: indent nested values two spaces per level. */
extern bool tj_pretty;

/*
 * Strings.  NULL gives JSON null.  Bytes that are not UTF-8 (a token piece
 * holding half a character, a path in another encoding) become U+FFFD, so the
 * output stays valid JSON.
 */
json_t *tj_str(const char *s);
json_t *tj_strn(const char *s, size_t len);
/* Integers; above INT64_MAX (jansson's range) as a real. */
json_t *tj_u64(uint64_t v);
json_t *tj_i64(int64_t v);
/* A real; NaN and infinities (no JSON spelling) become null. */
json_t *tj_real(double v);
json_t *tj_bool(bool v);

/* Add @val to object @obj under @key / to array @arr, taking the reference. */
void tj_set(json_t *obj, const char *key, json_t *val);
void tj_push(json_t *arr, json_t *val);

/*
 * Write @v and a newline to standard output, drop the reference, and flush.
 * Returns 0, or 1 after "TOOL: ..." on stderr when the document was incomplete
 * (out of memory) or could not be written.
 */
int tj_print(json_t *v);
/* The same into @f, without the flush; for files a tool writes. */
int tj_fprint(FILE *f, json_t *v);

#endif
