/* SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static __thread char pathbuf[8][PATH_MAX];
static __thread unsigned pathidx;

static char *nextbuf(void)
{
	return pathbuf[pathidx++ % 8];
}

static const char *envdir(const char *var, const char *fallback)
{
	const char *v = getenv(var);

	return v && *v ? v : fallback;
}

const char *tu_bin(const char *tool)
{
	char *b = nextbuf();

	snprintf(b, PATH_MAX, "%s/%s", envdir("MOE_BIN", "build/bin"), tool);
	return b;
}

const char *tu_shared(const char *rel)
{
	char *b = nextbuf();

	snprintf(b, PATH_MAX, "%s/%s", envdir("MOE_SHARED", "../shared"), rel);
	return access(b, R_OK) == 0 ? b : NULL;
}

const char *tu_src(const char *rel)
{
	char *b = nextbuf();

	snprintf(b, PATH_MAX, "%s/%s", envdir("MOE_SRC", "."), rel);
	return b;
}

char *tu_tmpdir(void)
{
	char base[PATH_MAX], *dir;

	snprintf(base, sizeof(base), "%s/tmp", envdir("MOE_BUILD", "build"));
	mkdir(base, 0755);
	if (asprintf(&dir, "%s/t.XXXXXX", base) < 0)
		return NULL;
	if (!mkdtemp(dir)) {
		free(dir);
		return NULL;
	}
	return dir;
}

/* Whether every directory from / down to @dir lets other users through. */
static bool reachable(const char *dir)
{
	char *p = realpath(dir, NULL), *slash;
	struct stat st;
	bool ok = p != NULL;

	for (slash = p; ok && slash; slash = strchr(slash + 1, '/')) {
		char c = slash[1];

		slash[1] = 0;
		ok = stat(p, &st) == 0 && (st.st_mode & S_IXOTH);
		slash[1] = c;
	}
	ok = ok && stat(p, &st) == 0 && (st.st_mode & S_IXOTH);
	free(p);
	return ok;
}

char *tu_tmpdir_public(void)
{
	char *dir = tu_tmpdir();

	if (dir && chmod(dir, 0755) == 0 && reachable(dir))
		return dir;
	if (dir) {
		tu_rmtree(dir);
		free(dir);
	}
	dir = strdup("/var/tmp/moe-test.XXXXXX");
	if (dir && mkdtemp(dir) && chmod(dir, 0755) == 0 && reachable(dir))
		return dir;
	if (dir && dir[strlen(dir) - 1] != 'X')
		rmdir(dir);
	free(dir);
	return NULL;
}

void tu_rmtree(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[PATH_MAX];
	struct stat st;

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
			tu_rmtree(p);
		else
			unlink(p);
	}
	closedir(d);
	rmdir(dir);
}

int tu_run(const char *cmd, int err_too, char **out)
{
	char *full, *buf = NULL;
	size_t len = 0, cap = 0;
	FILE *f;
	int st;

	if (asprintf(&full, "%s%s", cmd, err_too ? " 2>&1" : "") < 0)
		return -1;
	f = popen(full, "r");
	free(full);
	if (!f)
		return -1;
	for (;;) {
		if (cap - len < 4096) {
			cap = cap ? cap * 2 : 8192;
			buf = realloc(buf, cap);
			if (!buf) {
				pclose(f);
				return -1;
			}
		}
		size_t n = fread(buf + len, 1, cap - len - 1, f);
		if (!n)
			break;
		len += n;
	}
	buf[len] = 0;
	st = pclose(f);
	if (out)
		*out = buf;
	else
		free(buf);
	if (st == -1 || !WIFEXITED(st))
		return -1;
	return WEXITSTATUS(st);
}

static void redirect(const char *path, int fd, int flags)
{
	int f = open(path ? path : "/dev/null", flags | O_NOCTTY, 0644);

	if (f < 0 || dup2(f, fd) < 0)
		_exit(125);
	if (f != fd)
		close(f);
}

static void sanitizer_env(const char *var, const char *opts)
{
	const char *old = getenv(var);
	char *v;

	if (asprintf(&v, "%s%s%s", old ? old : "", old ? ":" : "", opts) >= 0)
		setenv(var, v, 1);
}

int tu_spawn(char *const argv[], const char *in, const char *out, const char *err,
	     unsigned timeout_s)
{
	struct timespec tick = { 0, 5 * 1000 * 1000 };
	unsigned long waited_ms = 0;
	pid_t pid;
	int st;

	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		setpgid(0, 0);
		redirect(in, 0, O_RDONLY);
		redirect(out, 1, O_WRONLY | O_CREAT | O_TRUNC);
		if (err && out && !strcmp(err, out))
			dup2(1, 2);
		else
			redirect(err, 2, O_WRONLY | O_CREAT | O_TRUNC);
		sanitizer_env("ASAN_OPTIONS", "exitcode=86");
		sanitizer_env("UBSAN_OPTIONS", "exitcode=86:print_stacktrace=1");
		execv(argv[0], argv);
		_exit(127);
	}
	for (;;) {
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid)
			break;
		if (r < 0 && errno != EINTR)
			return -1;
		if (waited_ms >= timeout_s * 1000ul) {
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			return TU_HUNG;
		}
		nanosleep(&tick, NULL);
		waited_ms += 5;
	}
	if (WIFSIGNALED(st))
		return 128 + WTERMSIG(st);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void *tu_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(n + 1);
	if (buf && fread(buf, 1, n, f) != (size_t)n) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	if (buf) {
		buf[n] = 0;
		if (len)
			*len = n;
	}
	return buf;
}

int tu_write_file(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	int ok;

	if (!f)
		return -errno;
	ok = fwrite(data, 1, len, f) == len;
	return fclose(f) == 0 && ok ? 0 : -EIO;
}

int tu_read_ints(const char *path, int32_t *out, int max)
{
	size_t len;
	char *txt = tu_read_file(path, &len), *p, *end;
	int n = 0;

	ck_assert_msg(txt != NULL, "cannot read %s", path);
	for (p = txt; n < max; p = end) {
		long v = strtol(p, &end, 10);

		if (end == p)
			break;
		out[n++] = (int32_t)v;
	}
	free(txt);
	return n;
}

void *tu_read_llamacpp(const char *model, const char *ext, size_t want)
{
	char rel[128];
	const char *path;
	size_t len;
	void *d;

	snprintf(rel, sizeof(rel), "reference/llamacpp-logits/%s-f32.%s", model, ext);
	path = tu_shared(rel);
	ck_assert_msg(path != NULL, "missing %s", rel);
	d = tu_read_file(path, &len);
	ck_assert_msg(d && len == want, "%s: %zu bytes, expected %zu", rel, len, want);
	return d;
}

unsigned tu_skipped;

void tu_skip(const char *test, const char *why)
{
	tu_skipped++;
	printf("SKIP: %s: %s\n", test, why);
}

uint64_t tu_rand(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

double tu_randn(uint64_t *s)
{
	double u1 = ((tu_rand(s) >> 11) + 1.0) / 9007199254740993.0;
	double u2 = (tu_rand(s) >> 11) / 9007199254740992.0;

	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
