/* SPDX-License-Identifier: MIT */
/* Internal helpers shared by every libmoe module. */
#ifndef MOE_UTIL_H
#define MOE_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe/moe.h"

#define MOE_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MOE_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MOE_MAX(a, b) ((a) > (b) ? (a) : (b))
#define MOE_ALIGN_UP(x, a) (((x) + (a) - 1) / (a) * (a))

/*
 * Record the reason for a failure on this thread and return -errnum, so that
 * error paths read `return moe_err(EINVAL, "tensor '%s': ...", name);`.
 */
int moe_err(int errnum, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix the current message with "prefix: " (keeps the errno). */
int moe_err_prefix(int ret, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

void moe_log(enum moe_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Log a message once per process per @key (e.g. a fallback being taken). */
void moe_log_once(enum moe_log_level level, const char *key, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Overflow-checked arithmetic: false on overflow. */
static inline bool moe_add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	return !__builtin_add_overflow(a, b, out);
}

static inline bool moe_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
	return !__builtin_mul_overflow(a, b, out);
}

/* "1.50 GiB", "12.0 MiB", "3.0 KiB" */
void moe_fmt_bytes(char *buf, size_t len, uint64_t b);

/* "a regular file", "a FIFO", "a character device", ... for an st_mode. */
const char *moe_file_kind(unsigned mode);
/*
 * Open @path for reading (open(2) @flags besides O_RDONLY, e.g. O_DIRECT)
 * without blocking, refusing what is not a regular file or a block device;
 * @what names what was expected ("a model file").  A descriptor or -errno.
 */
int moe_open_input(const char *path, int flags, const char *what);

/* Monotonic clock in seconds. */
double moe_now(void);

#endif
