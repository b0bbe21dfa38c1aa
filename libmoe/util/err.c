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
	char prefix[512], old[MOE_ERRMSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	memcpy(old, errmsg, sizeof(old));
	snprintf(errmsg, sizeof(errmsg), "%s: %s", prefix, old);
	return ret;
}
