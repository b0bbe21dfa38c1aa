/* SPDX-License-Identifier: MIT */
/* Code point properties (binary search over generated runs) and UTF-8. */
#include "text/unicode.h"

unsigned moe_ucd_flags_slow(uint32_t cpt)
{
	unsigned lo = 0, hi = moe_ucd_runs;

	if (cpt >= 0x110000)
		return 0;
	/* Find the last run starting at or before @cpt. */
	while (hi - lo > 1) {
		unsigned mid = lo + (hi - lo) / 2;

		if (moe_ucd_run_start[mid] <= cpt)
			lo = mid;
		else
			hi = mid;
	}
	return moe_ucd_run_flags[lo];
}

int moe_utf8_len(uint8_t c)
{
	if (c < 0x80)
		return 1;
	if (c < 0xc2)
		return 0;
	if (c < 0xe0)
		return 2;
	if (c < 0xf0)
		return 3;
	if (c < 0xf5)
		return 4;
	return 0;
}

int moe_utf8_decode(const uint8_t *s, size_t len, uint32_t *cpt)
{
	int n = len ? moe_utf8_len(s[0]) : 0;
	uint32_t c;

	if (!n || (size_t)n > len)
		return 0;
	if (n == 1) {
		*cpt = s[0];
		return 1;
	}
	c = s[0] & (0x7f >> n);
	for (int i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3f);
	}
	/* Overlong 3- and 4-byte forms, surrogates and values past the range. */
	if ((n == 3 && c < 0x800) || (n == 4 && c < 0x10000) || c > 0x10ffff ||
	    (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cpt = c;
	return n;
}

int moe_utf8_encode(uint32_t cpt, char *out)
{
	if (cpt < 0x80) {
		out[0] = (char)cpt;
		return 1;
	}
	if (cpt < 0x800) {
		out[0] = (char)(0xc0 | (cpt >> 6));
		out[1] = (char)(0x80 | (cpt & 0x3f));
		return 2;
	}
	if (cpt < 0x10000) {
		out[0] = (char)(0xe0 | (cpt >> 12));
		out[1] = (char)(0x80 | ((cpt >> 6) & 0x3f));
		out[2] = (char)(0x80 | (cpt & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | (cpt >> 18));
	out[1] = (char)(0x80 | ((cpt >> 12) & 0x3f));
	out[2] = (char)(0x80 | ((cpt >> 6) & 0x3f));
	out[3] = (char)(0x80 | (cpt & 0x3f));
	return 4;
}

long moe_utf8_invalid_at(const char *s, size_t len)
{
	const uint8_t *p = (const uint8_t *)s;
	size_t i = 0;

	while (i < len) {
		uint32_t c;
		int n;

		if (p[i] < 0x80) {
			i++;
			continue;
		}
		n = moe_utf8_decode(p + i, len - i, &c);
		if (!n)
			return (long)i;
		i += (size_t)n;
	}
	return -1;
}
