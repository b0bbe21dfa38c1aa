/* SPDX-License-Identifier: MIT */
/*
 * What every tool shares: its name in messages, the exit statuses, strict
 * parsing of numeric options, and a standard output whose write errors are
 * reported instead of lost.
 */
#ifndef MOE_TOOL_H
#define MOE_TOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Exit statuses: 0 success, 1 failure, 2 usage. */
#define EXIT_USAGE 2

/* The name messages start with, as given to tool_init(). */
extern const char *tool_name;

/*
 * Call first in main(): sets tool_name and arranges that standard output is
 * flushed and closed at exit, turning a write error into "NAME: write error
 * on standard output: REASON" and exit status 1.
 */
void tool_init(const char *name);

/*
 * Flush standard output now.  On a write error, says so once (as above) and
 * returns -errno; a tool that stops at the first error calls this where it
 * would otherwise keep producing output nobody receives.
 */
int tool_flush_stdout(void);

/*
 * Numeric options, strictly: decimal digits only (no sign, no spaces, no
 * "0x"), within [min, max].  On a bad value they print "NAME: OPT 'VALUE':
 * ..." naming the accepted range and return EXIT_USAGE; else 0.
 */
int tool_parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out);
int tool_parse_u32(const char *opt, const char *s, uint32_t min, uint32_t max, uint32_t *out);
/* A finite number in [min, max] (strtod syntax). */
int tool_parse_double(const char *opt, const char *s, double min, double max, double *out);

/* CPUs this process may run on (its affinity mask), at least 1. */
int tool_cpus(void);

/*
 * A thread count: 0 means every CPU (left to the library); more than
 * TOOL_THREADS_PER_CPU per CPU is capped there, with a note on stderr,
 * because compute threads beyond the CPUs only add switching.
 */
#define TOOL_THREADS_PER_CPU 4
int tool_parse_threads(const char *opt, const char *s, int *out);

/*
 * The whole of a regular file of at most @max bytes, NUL-terminated, into
 * *out (free() it) and its length into *len.  Anything else (missing,
 * unreadable, a directory, a FIFO or device, too large) prints
 * "NAME: OPT PATH: reason" and returns -errno.
 */
int tool_read_file(const char *opt, const char *path, size_t max, char **out, size_t *len);

#endif
