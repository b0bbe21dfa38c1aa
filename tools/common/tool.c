/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tool.h"

const char *tool_name = "moe";

static bool stdout_reported;

static void report_stdout(int err)
{
	if (stdout_reported)
		return;
	stdout_reported = true;
	if (err)
		fprintf(stderr, "%s: write error on standard output: %s\n", tool_name,
			strerror(err));
	else
		fprintf(stderr, "%s: write error on standard output\n", tool_name);
}

int tool_flush_stdout(void)
{
	int err;

	errno = 0;
	if (fflush(stdout) == 0 && !ferror(stdout))
		return 0;
	err = errno;
	report_stdout(err);
	return -(err ? err : EIO);
}

/*
 * At exit, as coreutils' close_stdout: an output that was lost turns a success
 * into a failure.  A standard output closed by the caller (>&-) with nothing
 * written to it is not an error.
 */
static void close_stdout(void)
{
	bool failed = ferror(stdout), pending = __fpending(stdout) > 0;

	errno = 0;
	if (fclose(stdout) != 0 && (failed || pending || errno != EBADF))
		failed = true;
	if (failed || stdout_reported) {
		report_stdout(errno);
		_exit(1);
	}
}

void tool_init(const char *name)
{
	tool_name = name;
	atexit(close_stdout);
}

int tool_parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	unsigned long long v;
	char *end;

	errno = 0;
	/* strtoull alone would take " 5", "+5", "-1" (as 2^64 - 1) and "0x10" */
	if (s[0] < '0' || s[0] > '9' || (s[0] == '0' && s[1] == 'x'))
		goto bad;
	v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		goto bad;
	*out = v;
	return 0;
bad:
	fprintf(stderr, "%s: %s '%s': expected a whole number from %" PRIu64 " to %" PRIu64 "\n",
		tool_name, opt, s, min, max);
	return EXIT_USAGE;
}

int tool_parse_u32(const char *opt, const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
	uint64_t v;
	int ret = tool_parse_u64(opt, s, min, max, &v);

	if (!ret)
		*out = (uint32_t)v;
	return ret;
}

int tool_parse_double(const char *opt, const char *s, double min, double max, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || isspace((unsigned char)s[0])) {
		fprintf(stderr, "%s: %s '%s': expected a number from %g to %g\n", tool_name, opt, s,
			min, max);
		return EXIT_USAGE;
	}
	if (v < min || v > max) {
		fprintf(stderr, "%s: %s %s: must be from %g to %g\n", tool_name, opt, s, min, max);
		return EXIT_USAGE;
	}
	*out = v;
	return 0;
}

int tool_cpus(void)
{
	cpu_set_t set;
	long n;

	if (!sched_getaffinity(0, sizeof(set), &set) && CPU_COUNT(&set) > 0)
		return CPU_COUNT(&set);
	n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (int)n : 1;
}

int tool_parse_threads(const char *opt, const char *s, int *out)
{
	int cpus = tool_cpus(), cap = cpus * TOOL_THREADS_PER_CPU;
	uint64_t v;
	int ret = tool_parse_u64(opt, s, 0, UINT32_MAX, &v);

	if (ret)
		return ret;
	if (v > (uint64_t)cap) {
		fprintf(stderr, "%s: %s %s: using %d, %d per CPU this process may run on (%d); "
			"more compute threads than that only add switching\n", tool_name, opt, s,
			cap, TOOL_THREADS_PER_CPU, cpus);
		v = (uint64_t)cap;
	}
	*out = (int)v;
	return 0;
}
