/* SPDX-License-Identifier: MIT */
/* Helpers for the Check suites: paths, temp dirs, running the tools, skips. */
#ifndef MOE_TESTUTIL_H
#define MOE_TESTUTIL_H

#include <check.h>
#include <stddef.h>
#include <stdint.h>

/* Absolute path of a built tool (from MOE_BIN, else build/bin). Static buffer per call site. */
const char *tu_bin(const char *tool);
/* Path of a file under ../shared (MOE_SHARED), or NULL when it is not there. */
const char *tu_shared(const char *rel);
/* Path of a file in the source tree (MOE_SRC). */
const char *tu_src(const char *rel);
/* A fresh directory on a disk-backed filesystem (under MOE_BUILD/tmp); caller frees. */
char *tu_tmpdir(void);
/*
 * A fresh directory, mode 0755, that every user can reach, for tests that
 * drop privileges: under MOE_BUILD/tmp when each directory above it lets
 * others through (a checkout in /root does not), else under /var/tmp (disk,
 * unlike /tmp on some systems).  NULL when neither is reachable; caller frees.
 */
char *tu_tmpdir_public(void);
/* Remove a directory tree made by tu_tmpdir. */
void tu_rmtree(const char *dir);
/* Run a shell command; stdout (and stderr when @err_too) captured into *out
 * (NUL-terminated, caller frees; may pass NULL).  Returns the exit status, or -1. */
int tu_run(const char *cmd, int err_too, char **out);
/*
 * Run @argv (argv[0] a path, no shell) with stdin, stdout and stderr from
 * these paths (NULL: /dev/null); stdout and stderr may name the same file.
 * Sanitizer reports exit with status 86 instead of 1, so that they cannot
 * pass for an ordinary failure.  Returns the exit status, 128 + the signal
 * that ended it, TU_HUNG when it was still running after @timeout_s seconds
 * (it is killed), or -1 when it could not be started.
 */
#define TU_HUNG (-2)
int tu_spawn(char *const argv[], const char *in, const char *out, const char *err,
	     unsigned timeout_s);
/* Read a whole file; caller frees.  NULL on failure. */
void *tu_read_file(const char *path, size_t *len);
int tu_write_file(const char *path, const void *data, size_t len);
/* Whitespace-separated integers of a text file into out[max]; returns the count. */
int tu_read_ints(const char *path, int32_t *out, int max);
/* ../shared/reference/llamacpp-logits/MODEL-f32.EXT, asserted to be @want bytes; caller frees. */
void *tu_read_llamacpp(const char *model, const char *ext, size_t want);

/*
 * A test that cannot run here says why and is counted as skipped, not
 * passed: call from the suite constructor instead of adding the test.
 */
void tu_skip(const char *test, const char *why);

/* Deterministic pseudo-random numbers for tests. */
uint64_t tu_rand(uint64_t *state);
double tu_randn(uint64_t *state);

#endif
