/* SPDX-License-Identifier: MIT */
/*
 * A growing NUL-terminated string for the tools' text builders (chat
 * formats, grammars).  A failed allocation, or growth past @max when it is
 * not 0, sets @oom and makes every later add a no-op, so builders check once
 * at the end; free(b.s) in every case.
 */
#ifndef MOE_TOOLS_STRBUF_H
#define MOE_TOOLS_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

struct strbuf {
	char *s;
	size_t n, cap;
	size_t max;     /* the most bytes it may hold, 0: no limit */
	bool oom;
};

void strbuf_addn(struct strbuf *b, const char *s, size_t n);
void strbuf_add(struct strbuf *b, const char *s);
void strbuf_addf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
