/* SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/util.h"

static int log_level = -1;
static pthread_mutex_t once_lock = PTHREAD_MUTEX_INITIALIZER;
static char once_keys[64][48];
static unsigned n_once;

static const char *const level_names[] = { "error", "warning", "info", "debug" };

static int current_level(void)
{
	int lvl = __atomic_load_n(&log_level, __ATOMIC_RELAXED);

	if (lvl < 0) {
		const char *env = getenv("MOE_LOG");

		lvl = MOE_LOG_WARN;
		if (env && *env >= '0' && *env <= '3')
			lvl = *env - '0';
		__atomic_store_n(&log_level, lvl, __ATOMIC_RELAXED);
	}
	return lvl;
}

void moe_set_log_level(uint32_t level)
{
	if (level <= MOE_LOG_DEBUG)
		__atomic_store_n(&log_level, (int)level, __ATOMIC_RELAXED);
}

static void vlog(enum moe_log_level level, const char *fmt, va_list ap)
{
	char line[1200];

	vsnprintf(line, sizeof(line), fmt, ap);
	fprintf(stderr, "moe: %s: %s\n", level_names[level], line);
}

void moe_log(enum moe_log_level level, const char *fmt, ...)
{
	va_list ap;

	if ((int)level > current_level())
		return;
	va_start(ap, fmt);
	vlog(level, fmt, ap);
	va_end(ap);
}

void moe_log_once(enum moe_log_level level, const char *key, const char *fmt, ...)
{
	va_list ap;
	unsigned i;

	pthread_mutex_lock(&once_lock);
	for (i = 0; i < n_once; i++) {
		if (!strncmp(once_keys[i], key, sizeof(once_keys[i]) - 1)) {
			pthread_mutex_unlock(&once_lock);
			return;
		}
	}
	if (n_once < MOE_ARRAY_SIZE(once_keys))
		snprintf(once_keys[n_once++], sizeof(once_keys[0]), "%s", key);
	pthread_mutex_unlock(&once_lock);

	if ((int)level > current_level())
		return;
	va_start(ap, fmt);
	vlog(level, fmt, ap);
	va_end(ap);
}

double moe_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}
