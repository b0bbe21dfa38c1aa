/* SPDX-License-Identifier: MIT */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "tool.h"

bool tj_pretty;

/* Set when a value or an insertion failed; the document is then not printed. */
static bool tj_failed;

static json_t *made(json_t *v)
{
	if (!v)
		tj_failed = true;
	return v;
}

/* Length of the well-formed UTF-8 sequence at @s (at most @len bytes), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t len)
{
	size_t n;
	uint32_t cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (n > len)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	/* overlong forms, UTF-16 surrogates and code points past U+10FFFF */
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

json_t *tj_strn(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i, bad = 0;
	char *fixed, *p;
	json_t *v;

	if (!s)
		return made(json_null());
	for (i = 0; i < len;) {
		size_t n = u[i] ? utf8_seq(u + i, len - i) : 0;

		/* jansson takes NUL in a counted string, but a tool's text never means one */
		bad += !n;
		i += n ? n : 1;
	}
	if (!bad)
		return made(json_stringn(s, len));
	fixed = malloc(len + 2 * bad + 1);
	if (!fixed)
		return made(NULL);
	for (i = 0, p = fixed; i < len;) {
		size_t n = u[i] ? utf8_seq(u + i, len - i) : 0;

		if (n) {
			memcpy(p, s + i, n);
			p += n;
			i += n;
		} else {
			memcpy(p, "\xef\xbf\xbd", 3);
			p += 3;
			i++;
		}
	}
	v = json_stringn(fixed, p - fixed);
	free(fixed);
	return made(v);
}

json_t *tj_str(const char *s)
{
	return tj_strn(s, s ? strlen(s) : 0);
}

json_t *tj_u64(uint64_t v)
{
	if (v > (uint64_t)INT64_MAX)
		return made(json_real((double)v));
	return made(json_integer((json_int_t)v));
}

json_t *tj_i64(int64_t v)
{
	return made(json_integer((json_int_t)v));
}

json_t *tj_real(double v)
{
	return made(isfinite(v) ? json_real(v) : json_null());
}

json_t *tj_bool(bool v)
{
	return made(json_boolean(v));
}

void tj_set(json_t *obj, const char *key, json_t *val)
{
	/* json_object_set_new drops @val's reference even when it fails */
	if (!obj || !val || json_object_set_new(obj, key, val))
		tj_failed = true;
}

void tj_push(json_t *arr, json_t *val)
{
	if (!arr || !val || json_array_append_new(arr, val))
		tj_failed = true;
}

/* Six significant digits, as the tools printed with %g before: figures, not bit patterns. */
#define TJ_FLAGS (JSON_REAL_PRECISION(6) | JSON_ENCODE_ANY)

int tj_fprint(FILE *f, json_t *v)
{
	int ret = 0;

	if (!v || tj_failed) {
		fprintf(stderr, "%s: out of memory building the JSON output\n", tool_name);
		ret = 1;
	} else if (json_dumpf(v, f, TJ_FLAGS | (tj_pretty ? JSON_INDENT(2) : 0)) ||
		   fputc('\n', f) == EOF) {
		fprintf(stderr, "%s: could not write the JSON output\n", tool_name);
		ret = 1;
	}
	json_decref(v);
	return ret;
}

int tj_print(json_t *v)
{
	int ret = tj_fprint(stdout, v);

	if (!ret && tool_flush_stdout())
		ret = 1;
	return ret;
}
