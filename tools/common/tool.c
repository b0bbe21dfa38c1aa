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
#include <fcntl.h>
#include <sys/stat.h>
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

int tool_read_file(const char *opt, const char *path, size_t max, char **out, size_t *len)
{
	struct stat st;
	size_t got = 0;
	char *buf;
	int fd, err;

	*out = NULL;
	*len = 0;
	/* O_NONBLOCK: opening a FIFO must not wait for a writer */
	fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		err = errno;
		fprintf(stderr, "%s: %s %s: %s\n", tool_name, opt, path, strerror(err));
		return -err;
	}
	if (fstat(fd, &st)) {
		err = errno;
		fprintf(stderr, "%s: %s %s: %s\n", tool_name, opt, path, strerror(err));
		close(fd);
		return -err;
	}
	if (!S_ISREG(st.st_mode)) {
		fprintf(stderr, "%s: %s %s: %s\n", tool_name, opt, path,
			S_ISDIR(st.st_mode) ? "is a directory" : "is not a regular file (a FIFO "
			"or device cannot be read whole); give a file");
		close(fd);
		return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
	}
	if ((uint64_t)st.st_size > max) {
		fprintf(stderr, "%s: %s %s: %lld bytes is over the limit of %zu\n", tool_name, opt,
			path, (long long)st.st_size, max);
		close(fd);
		return -EFBIG;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		fprintf(stderr, "%s: %s %s: out of memory\n", tool_name, opt, path);
		return -ENOMEM;
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			err = n < 0 ? errno : EIO;
			fprintf(stderr, "%s: %s %s: %s\n", tool_name, opt, path,
				n < 0 ? strerror(err) : "the file shrank while being read");
			free(buf);
			close(fd);
			return -err;
		}
		got += (size_t)n;
	}
	close(fd);
	buf[got] = 0;
	*out = buf;
	*len = got;
	return 0;
}
