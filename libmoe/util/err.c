/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "util/util.h"

#define MOE_ERRMSG_MAX 1024

static __thread char errmsg[MOE_ERRMSG_MAX];

const char *moe_errmsg(void)
{
	return errmsg;
}

int moe_err(int errnum, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
	va_end(ap);
	moe_log(MOE_LOG_DEBUG, "error: %s", errmsg);
	return -(errnum > 0 ? errnum : EIO);
}

int moe_err_prefix(int ret, const char *fmt, ...)
{
	char old[MOE_ERRMSG_MAX];
	size_t n;
	va_list ap;

	memcpy(old, errmsg, sizeof(old));
	va_start(ap, fmt);
	vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
	va_end(ap);
	n = strlen(errmsg);
	if (n + 3 < sizeof(errmsg)) {
		memcpy(errmsg + n, ": ", 2);
		n += 2;
		old[sizeof(old) - 1 - n] = 0;
		memcpy(errmsg + n, old, strlen(old) + 1);
	}
	return ret;
}
