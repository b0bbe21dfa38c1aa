/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "util/util.h"

int moe_parse_size(const char *s, uint64_t *out)
{
	char *end;
	double v, mul = 1;

	if (!s || !out)
		return moe_err(EINVAL, "moe_parse_size: NULL argument");
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || !(v > 0))
		goto bad;
	switch (*end) {
	case 'k': case 'K': mul = 1024.0; end++; break;
	case 'm': case 'M': mul = 1048576.0; end++; break;
	case 'g': case 'G': mul = 1073741824.0; end++; break;
	case 't': case 'T': mul = 1099511627776.0; end++; break;
	default: break;
	}
	if (mul > 1 && *end == 'i')
		end++;
	if (*end == 'B')
		end++;
	if (*end || v * mul >= 18446744073709551616.0)
		goto bad;
	*out = (uint64_t)(v * mul);
	return 0;
bad:
	return moe_err(EINVAL, "'%s' is not a size: write e.g. 20G, 512M or 1500000000", s);
}

void moe_fmt_bytes(char *buf, size_t len, uint64_t b)
{
	if (b >= (1ull << 30))
		snprintf(buf, len, "%.2f GiB", b / 1073741824.0);
	else if (b >= (1ull << 20))
		snprintf(buf, len, "%.1f MiB", b / 1048576.0);
	else
		snprintf(buf, len, "%.1f KiB", b / 1024.0);
}
