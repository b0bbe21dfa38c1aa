/* SPDX-License-Identifier: MIT */
/*
 * The tools as a careless or hostile user meets them: models without a
 * vocabulary, outputs that are links, devices, FIFOs and directories, a full
 * disk on stdout, FIFOs as models, flags out of range, and a table of hostile
 * argument vectors for every tool and subcommand.  Each run is a separate
 * process under a timeout; a signal, a sanitizer report, a hang or a silent
 * failure fails the test.  `make check SANITIZE=1` runs the same tests
 * against the ASan/UBSan builds of the tools.
 *
 * Device nodes are private copies made with mknod (char 1,3 and 1,7) when this
 * process could write to /dev: a tool that still replaced its output would
 * then replace the copy, not the machine's /dev/null.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"
#include "util/util.h"

/* Generous: the sanitizer builds start slowly on a loaded machine. */
#define RUN_TIMEOUT 60

static struct {
	char dir[PATH_MAX - 64];
	char model[PATH_MAX];   /* no vocabulary */
	char vmodel[PATH_MAX];  /* a byte-level BPE vocabulary */
	char subdir[PATH_MAX];
	char fifo[PATH_MAX];    /* nobody writes or reads it */
	char sock[PATH_MAX];
	char null[PATH_MAX];    /* "" when no safe device node could be had */
	char full[PATH_MAX];
	char missing[PATH_MAX];
	char err[PATH_MAX];     /* stderr of the last run */
	char out[PATH_MAX];     /* stdout of the last run */
} fx;

static const char *const mk_small[] = {
	"--arch", "qwen3moe", "--layers", "1", "--embd", "64", "--heads", "2", "--kv-heads", "1",
	"--head-dim", "32", "--experts", "4", "--expert-ff", "64", "-q",
};

/* A device node this test may write to without risking the machine's. */
static void safe_device(char *dst, const char *name, unsigned minor)
{
	snprintf(dst, PATH_MAX, "/dev/%s", name);
	if (access("/dev", W_OK) != 0)
		return;
	snprintf(dst, PATH_MAX, "%s/%s", fx.dir, name);
	if (mknod(dst, S_IFCHR | 0666, makedev(1, minor)) != 0)
		dst[0] = 0;
}

static int mkmodel(const char *path, bool vocab)
{
	char *argv[32];
	int n = 0;

	argv[n++] = (char *)tu_bin("moe-mkmodel");
	for (size_t i = 0; i < MOE_ARRAY_SIZE(mk_small); i++)
		argv[n++] = (char *)mk_small[i];
	if (vocab)
		argv[n++] = "--vocab-bpe";
	argv[n++] = "-o";
	argv[n++] = (char *)path;
	argv[n] = NULL;
	return tu_spawn(argv, NULL, NULL, NULL, RUN_TIMEOUT);
}

static void setup(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char *dir = tu_tmpdir();
	int s;

	ck_assert_ptr_nonnull(dir);
	snprintf(fx.dir, sizeof(fx.dir), "%s", dir);
	free(dir);
	snprintf(fx.model, PATH_MAX, "%s/novocab.gguf", fx.dir);
	snprintf(fx.vmodel, PATH_MAX, "%s/vocab.gguf", fx.dir);
	snprintf(fx.subdir, PATH_MAX, "%s/adir", fx.dir);
	snprintf(fx.fifo, PATH_MAX, "%s/fifo.gguf", fx.dir);
	snprintf(fx.sock, PATH_MAX, "%s/sock", fx.dir);
	snprintf(fx.missing, PATH_MAX, "%s/no-such-dir/x.gguf", fx.dir);
	snprintf(fx.err, PATH_MAX, "%s/stderr.txt", fx.dir);
	snprintf(fx.out, PATH_MAX, "%s/stdout.txt", fx.dir);
	ck_assert_int_eq(mkmodel(fx.model, false), 0);
	ck_assert_int_eq(mkmodel(fx.vmodel, true), 0);
	ck_assert_int_eq(mkdir(fx.subdir, 0755), 0);
	ck_assert_int_eq(mkfifo(fx.fifo, 0644), 0);
	s = socket(AF_UNIX, SOCK_STREAM, 0);
	ck_assert_int_ge(s, 0);
	if (strlen(fx.sock) < sizeof(sa.sun_path))
		memcpy(sa.sun_path, fx.sock, strlen(fx.sock) + 1);
	if (!sa.sun_path[0] || bind(s, (void *)&sa, sizeof(sa)) != 0)
		fx.sock[0] = 0;
	close(s);
	safe_device(fx.null, "null", 3);
	safe_device(fx.full, "full", 7);
}

static void teardown(void)
{
	tu_rmtree(fx.dir);
}

/* ------------------------------------------------------------ running */

struct res {
	int st;
	char *err;              /* stderr, NUL-terminated */
	char *out;
};

static void res_free(struct res *r)
{
	free(r->err);
	free(r->out);
}

/* The command line for messages, long arguments cut short. */
static const char *show(char *const argv[])
{
	static char buf[1024];
	size_t n = 0;

	buf[0] = 0;
	for (int i = 0; argv[i] && n < sizeof(buf) - 80; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s'%.60s%s'", i ? " " : "",
				      argv[i], strlen(argv[i]) > 60 ? "..." : "");
	return buf;
}

/* Run a tool; @out: where stdout goes (NULL: a file read back into r->out). */
static struct res run_v(char *const argv[], const char *in, const char *out)
{
	struct res r;

	r.st = tu_spawn(argv, in, out ? out : fx.out, fx.err, RUN_TIMEOUT);
	r.err = tu_read_file(fx.err, NULL);
	r.out = out ? NULL : tu_read_file(fx.out, NULL);
	ck_assert_msg(r.st != -1, "%s: could not be started", show(argv));
	ck_assert_msg(r.st != TU_HUNG, "%s: still running after %d s (a hang)", show(argv),
		      RUN_TIMEOUT);
	ck_assert_msg(r.st < 128, "%s: killed by signal %d; stderr: %s", show(argv), r.st - 128,
		      r.err ? r.err : "");
	ck_assert_msg(r.st != 86 && r.err && !strstr(r.err, "Sanitizer") &&
		      !strstr(r.err, "runtime error"), "%s: sanitizer report: %s", show(argv),
		      r.err ? r.err : "");
	return r;
}

#define MAX_ARGS 24

/* tool, arguments..., NULL */
static struct res run_tool(const char *in, const char *out, const char *tool, ...)
{
	char *argv[MAX_ARGS + 2];
	va_list ap;
	int n = 0;

	argv[n++] = (char *)tu_bin(tool);
	va_start(ap, tool);
	while (n <= MAX_ARGS && (argv[n] = va_arg(ap, char *)))
		n++;
	va_end(ap);
	argv[n] = NULL;
	return run_v(argv, in, out);
}

static void expect_fail(struct res *r, int st, const char *msg, const char *what)
{
	ck_assert_msg(r->st == st, "%s: exit status %d, expected %d; stderr: %s", what, r->st, st,
		      r->err);
	ck_assert_msg(strstr(r->err, msg), "%s: stderr lacks '%s': %s", what, msg, r->err);
}

static void expect_ok(struct res *r, const char *what)
{
	ck_assert_msg(r->st == 0, "%s: exit status %d; stderr: %s", what, r->st, r->err);
}

static bool same_node(const char *path, mode_t type, dev_t rdev)
{
	struct stat st;

	return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == type &&
	       (type != S_IFCHR || st.st_rdev == rdev);
}

/* ------------------------------------------------ dense FFNs past the budget */

/*
 * A dense gemma4 file under a budget that cannot hold its dense FFNs:
 * moectl info --vram says how many stream, and moe-run --stats counts
 * their uses and the reads made a layer ahead.
 */
START_TEST(dense_streamed_tools)
{
	char path[PATH_MAX + 16];
	unsigned streamed = 0, total = 0;
	unsigned long long hits = 0, ahead = 0, misses = 0;
	const char *at;
	struct res r;

	snprintf(path, sizeof(path), "%s/dense.gguf", fx.dir);
	r = run_tool(NULL, NULL, "moe-mkmodel", "--arch", "gemma4", "--experts", "0", "--layers",
		     "4", "--vocab", "256", "-q", "-o", path, NULL);
	expect_ok(&r, "moe-mkmodel --experts 0");
	res_free(&r);
	r = run_tool(NULL, NULL, "moectl", "info", path, NULL);
	expect_ok(&r, "moectl info");
	ck_assert_msg(strstr(r.out, "dense FFNs:       4 layers, resident"), "%s", r.out);
	res_free(&r);
	/* 2.3 MiB resident, 4.3 MiB KV at 4096 positions, 1.6 MiB scratch, two 1.5 MiB slots */
	r = run_tool(NULL, NULL, "moectl", "info", "--vram", "12M", path, NULL);
	expect_ok(&r, "moectl info --vram");
	at = strstr(r.out, "dense FFNs:");
	ck_assert_msg(at && sscanf(at, "dense FFNs: %u of %u streamed", &streamed, &total) == 2,
		      "%s", r.out);
	ck_assert_uint_eq(total, 4);
	ck_assert_uint_eq(streamed, 4);
	ck_assert_msg(strstr(r.out, "each read a layer ahead"), "%s", r.out);
	res_free(&r);
	r = run_tool(NULL, NULL, "moectl", "info", "--vram", "4M", path, NULL);
	expect_fail(&r, 1, "cannot hold this model", "moectl info --vram too small");
	res_free(&r);
	r = run_tool(NULL, NULL, "moe-run", "-m", path, "--tokens", "1,2,3", "-n", "4", "--ctx",
		     "16", "--vram", "7M", "--stats", NULL);
	expect_ok(&r, "moe-run --vram --stats");
	at = strstr(r.err, "dense FFNs streamed:");
	ck_assert_msg(at && sscanf(at, "dense FFNs streamed: %llu hits (%llu of them fetched a "
				   "layer ahead), %llu misses", &hits, &ahead, &misses) == 3,
		      "%s", r.err);
	/* the prompt step and two decode steps (the 4th token is sampled, never evaluated) */
	ck_assert_uint_eq(hits + misses, 3 * 4);
	/* only the very first use waits for its read */
	ck_assert_uint_eq(misses, 1);
	ck_assert_uint_eq(ahead, 3 * 4 - 1);
	res_free(&r);
}
END_TEST

/* ------------------------------------------------ models without a vocabulary */

START_TEST(no_vocabulary)
{
	struct res r;

	/* moectl closed the model twice when the tokenizer failed: a double free */
	r = run_tool(NULL, NULL, "moectl", "tokenize", fx.model, "hello", NULL);
	expect_fail(&r, 1, "has no tokenizer", "moectl tokenize");
	res_free(&r);
	r = run_tool(NULL, NULL, "moectl", "tokenize", fx.model, "-", NULL);
	expect_fail(&r, 1, "has no tokenizer", "moectl tokenize -");
	res_free(&r);
	r = run_tool(NULL, NULL, "moectl", "detokenize", fx.model, "1", "2", NULL);
	expect_fail(&r, 1, "has no tokenizer", "moectl detokenize");
	res_free(&r);
	r = run_tool(NULL, NULL, "moectl", "--json", "tokenize", fx.model, "hi", NULL);
	expect_fail(&r, 1, "has no tokenizer", "moectl --json tokenize");
	res_free(&r);
	r = run_tool(NULL, NULL, "moectl", "info", fx.model, NULL);
	expect_ok(&r, "moectl info");
	ck_assert_msg(strstr(r.out, "vocabulary:"), "%s", r.out);
	res_free(&r);

	r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "-p", "hello", NULL);
	expect_fail(&r, 1, "give the prompt as --tokens", "moe-run -p");
	res_free(&r);
	r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--chat", "-p", "hello", NULL);
	expect_fail(&r, 1, "--chat needs one", "moe-run --chat");
	res_free(&r);
	r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--tokens", "1,2", "-n", "3", NULL);
	expect_ok(&r, "moe-run --tokens");
	ck_assert_msg(strspn(r.out, "0123456789 \n") == strlen(r.out) && strlen(r.out) > 5,
		      "token ids expected: '%s'", r.out);
	res_free(&r);
	r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--tokens", "1,2", "-n", "3", "--json",
		     NULL);
	expect_ok(&r, "moe-run --json");
	ck_assert_msg(strstr(r.out, "{\"tokens\": [") && !strstr(r.out, "\"text\""), "%s", r.out);
	res_free(&r);
}
END_TEST

/* ------------------------------------------------------------- outputs */

/* Where a file's bytes are: size and first bytes, to tell old from new. */
static size_t file_size(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (size_t)st.st_size : 0;
}

/* The output option of each writer: "-o" of moe-mkmodel, "--logits-out" of moe-run. */
static struct res write_to(int writer, const char *path)
{
	if (writer == 0)
		return run_tool(NULL, NULL, "moe-mkmodel", "--arch", "qwen3moe", "--layers", "1",
				"--embd", "64", "--heads", "2", "--kv-heads", "1", "--head-dim",
				"32", "--experts", "4", "--expert-ff", "64", "-q", "-o", path,
				NULL);
	return run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--tokens", "1,2,3", "-n", "0",
			"--logits-out", path, NULL);
}

static size_t expected_bytes(int writer)
{
	/* the model written by mkmodel(); three rows of 512 f32 logits */
	return writer == 0 ? file_size(fx.model) : 3 * 512 * sizeof(float);
}

START_TEST(output_files)
{
	const int w = _i;
	const char *what = w == 0 ? "moe-mkmodel -o" : "moe-run --logits-out";
	char path[PATH_MAX], link[PATH_MAX], target[PATH_MAX];
	size_t want = expected_bytes(w);
	struct stat st;
	struct res r;
	int s, ready[2];
	pid_t pid;
	char c;

	/* a regular file is replaced whole; its permission bits stay */
	snprintf(path, sizeof(path), "%s/out-%d.bin", fx.dir, w);
	ck_assert_int_eq(tu_write_file(path, "old", 3), 0);
	ck_assert_int_eq(chmod(path, 0640), 0);
	r = write_to(w, path);
	expect_ok(&r, what);
	res_free(&r);
	ck_assert_uint_eq(file_size(path), want);
	ck_assert_int_eq(stat(path, &st), 0);
	ck_assert_uint_eq(st.st_mode & 0777, 0640);

	/* a run that fails after the output was opened leaves the old file */
	if (w == 1) {
		ck_assert_int_eq(tu_write_file(path, "old", 3), 0);
		r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--tokens", "1,99999", "-n",
			     "0", "--logits-out", path, NULL);
		expect_fail(&r, 1, "out of range", what);
		res_free(&r);
		ck_assert_uint_eq(file_size(path), 3);
	}

	/* a symlink: its target is written and the link stays a link */
	snprintf(target, sizeof(target), "%s/target-%d.bin", fx.dir, w);
	snprintf(link, sizeof(link), "%s/link-%d.bin", fx.dir, w);
	ck_assert_int_eq(symlink(target, link), 0);
	r = write_to(w, link);
	expect_ok(&r, "a link to a file not there yet");
	res_free(&r);
	ck_assert_uint_eq(file_size(target), want);
	r = write_to(w, link);
	expect_ok(&r, "a link to a file");
	res_free(&r);
	ck_assert_int_eq(lstat(link, &st), 0);
	ck_assert_msg(S_ISLNK(st.st_mode), "%s: the link was replaced", what);
	ck_assert_uint_eq(file_size(target), want);

	/* a directory, a socket, a FIFO with no reader: refused, left as they are */
	r = write_to(w, fx.subdir);
	expect_fail(&r, 1, "is a directory", what);
	res_free(&r);
	ck_assert(same_node(fx.subdir, S_IFDIR, 0));
	if (fx.sock[0]) {
		r = write_to(w, fx.sock);
		expect_fail(&r, 1, "is a socket", what);
		res_free(&r);
		ck_assert(same_node(fx.sock, S_IFSOCK, 0));
	}
	r = write_to(w, fx.fifo);
	expect_fail(&r, 1, "no process is reading", what);
	res_free(&r);
	ck_assert(same_node(fx.fifo, S_IFIFO, 0));

	/* a FIFO that a reader holds is written through */
	snprintf(path, sizeof(path), "%s/pipe-%d", fx.dir, w);
	ck_assert_int_eq(mkfifo(path, 0644), 0);
	ck_assert_int_eq(pipe(ready), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		/* open without waiting for the writer, say so, then read until it closes */
		int fd = open(path, O_RDONLY | O_NONBLOCK);
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		char buf[65536];
		size_t total = 0;

		if (fd < 0 || write(ready[1], "r", 1) != 1)
			_exit(2);
		while (poll(&pfd, 1, RUN_TIMEOUT * 1000) == 1) {
			ssize_t n = read(fd, buf, sizeof(buf));

			if (n == 0)
				break;
			if (n > 0)
				total += (size_t)n;
			else if (errno != EAGAIN)
				_exit(3);
		}
		_exit(total == want ? 0 : 1);
	}
	close(ready[1]);
	ck_assert_int_eq(read(ready[0], &c, 1), 1);
	close(ready[0]);
	r = write_to(w, path);
	expect_ok(&r, "a FIFO with a reader");
	res_free(&r);
	ck_assert_int_eq(waitpid(pid, &s, 0), pid);
	ck_assert_msg(WIFEXITED(s) && WEXITSTATUS(s) == 0, "%s: the reader did not get %zu bytes",
		      what, want);
	ck_assert(same_node(path, S_IFIFO, 0));

	/* character devices are written through, as cp does */
	if (fx.null[0]) {
		r = write_to(w, fx.null);
		expect_ok(&r, "a null device");
		res_free(&r);
		ck_assert_msg(same_node(fx.null, S_IFCHR, makedev(1, 3)), "%s replaced %s", what,
			      fx.null);
	}
	if (fx.full[0]) {
		r = write_to(w, fx.full);
		expect_fail(&r, 1, "No space left on device", what);
		ck_assert_msg(strstr(r.err, fx.full), "the message names the file: %s", r.err);
		res_free(&r);
		ck_assert_msg(same_node(fx.full, S_IFCHR, makedev(1, 7)), "%s replaced %s", what,
			      fx.full);
	}
	r = write_to(w, fx.missing);
	expect_fail(&r, 1, "No such file or directory", what);
	res_free(&r);
}
END_TEST

/* ------------------------------------------------------- stdout errors */

START_TEST(stdout_write_errors)
{
	static const char *const msg = "write error on standard output: No space left on device";
	struct res r;

	r = run_tool(NULL, fx.full, "moe-run", "-m", fx.model, "--tokens", "1,2", "-n", "4", NULL);
	expect_fail(&r, 1, msg, "moe-run > full");
	res_free(&r);
	r = run_tool(NULL, fx.full, "moe-run", "-m", fx.model, "--tokens", "1,2", "-n", "4",
		     "--json", NULL);
	expect_fail(&r, 1, msg, "moe-run --json > full");
	res_free(&r);
	r = run_tool(NULL, fx.full, "moe-run", "-m", fx.vmodel, "-p", "hello", "-n", "4", NULL);
	expect_fail(&r, 1, msg, "moe-run -p > full");
	res_free(&r);
	r = run_tool(NULL, fx.full, "moe-run", "-m", fx.vmodel, "--chat", "-p", "hello", "-n",
		     "4", NULL);
	expect_fail(&r, 1, msg, "moe-run --chat > full");
	res_free(&r);
	r = run_tool(NULL, fx.full, "moe-run", "--help", NULL);
	expect_fail(&r, 1, msg, "moe-run --help > full");
	res_free(&r);
	r = run_tool(NULL, fx.full, "moectl", "info", fx.model, NULL);
	expect_fail(&r, 1, msg, "moectl info > full");
	res_free(&r);
	r = run_tool(NULL, fx.full, "moectl", "--json", "info", fx.model, NULL);
	expect_fail(&r, 1, msg, "moectl --json info > full");
	res_free(&r);
	r = run_tool(NULL, fx.full, "moectl", "tokenize", fx.vmodel, "hello world", NULL);
	expect_fail(&r, 1, msg, "moectl tokenize > full");
	res_free(&r);
	r = run_tool(NULL, fx.full, "moectl", "detokenize", fx.vmodel, "300", "301", NULL);
	expect_fail(&r, 1, msg, "moectl detokenize > full");
	res_free(&r);
	r = run_tool(NULL, fx.full, "moectl", "topo", NULL);
	expect_fail(&r, 1, msg, "moectl topo > full");
	res_free(&r);
	r = run_tool(NULL, fx.full, "moe-mkmodel", "--arch", "qwen3moe", "--layers", "1", "--embd",
		     "64", "--heads", "2", "--kv-heads", "1", "--head-dim", "32", "--experts", "4",
		     "--expert-ff", "64", "-o", fx.null[0] ? fx.null : "/dev/null", NULL);
	expect_fail(&r, 1, msg, "moe-mkmodel > full");
	res_free(&r);
	r = run_tool(NULL, fx.full, "moe-bench", "help", NULL);
	expect_fail(&r, 1, msg, "moe-bench help > full");
	res_free(&r);

	/* output that reaches a null device is not an error */
	r = run_tool(NULL, fx.null, "moectl", "tokenize", fx.vmodel, "x", NULL);
	expect_ok(&r, "moectl tokenize > null");
	res_free(&r);
}
END_TEST

/* ---------------------------------------------------- FIFOs as models */

START_TEST(fifo_model_refused)
{
	static const char *const msg = "is a FIFO, not a model file";
	struct res r;

	r = run_tool(NULL, NULL, "moe-run", "-m", fx.fifo, "--tokens", "1", NULL);
	expect_fail(&r, 1, msg, "moe-run -m FIFO");
	res_free(&r);
	r = run_tool(NULL, NULL, "moectl", "info", fx.fifo, NULL);
	expect_fail(&r, 1, msg, "moectl info FIFO");
	res_free(&r);
	r = run_tool(NULL, NULL, "moectl", "tokenize", fx.fifo, "hi", NULL);
	expect_fail(&r, 1, msg, "moectl tokenize FIFO");
	res_free(&r);
	r = run_tool(NULL, NULL, "moectl", "detokenize", fx.fifo, "1", NULL);
	expect_fail(&r, 1, msg, "moectl detokenize FIFO");
	res_free(&r);
	r = run_tool(NULL, NULL, "moectl", "load", "x", fx.fifo, NULL);
	expect_fail(&r, 1, msg, "moectl load FIFO");
	res_free(&r);
	r = run_tool(NULL, NULL, "moe-bench", "decode", fx.fifo, NULL);
	expect_fail(&r, 1, msg, "moe-bench decode FIFO");
	res_free(&r);
	r = run_tool(NULL, NULL, "moe-bench", "io", fx.fifo, NULL);
	expect_fail(&r, 1, "not a readable regular file", "moe-bench io FIFO");
	res_free(&r);
}
END_TEST

/* ------------------------------------------------------------- flags */

START_TEST(flags_refused_or_capped)
{
	char want[128];
	struct res r;
	int cap = 0;
	cpu_set_t set;

	if (!sched_getaffinity(0, sizeof(set), &set))
		cap = 4 * CPU_COUNT(&set);
	ck_assert_int_gt(cap, 0);
	r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--tokens", "1", "-n", "1",
		     "--threads", "1000", "--stats", NULL);
	expect_ok(&r, "--threads 1000");
	snprintf(want, sizeof(want), "--threads 1000: using %d", cap);
	ck_assert_msg(strstr(r.err, want), "no '%s' in %s", want, r.err);
	snprintf(want, sizeof(want), "cpu backend, %d threads", cap);
	ck_assert_msg(strstr(r.err, want), "no '%s' in %s", want, r.err);
	res_free(&r);

	r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--tokens", "1", "--temp", "-1", NULL);
	expect_fail(&r, 2, "--temp -1: must be from 0", "--temp -1");
	res_free(&r);
	r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--tokens", "1", "--temp", "nan", NULL);
	expect_fail(&r, 2, "--temp 'nan': expected a number", "--temp nan");
	res_free(&r);
	r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--tokens", "1", "--vram", "0", NULL);
	expect_fail(&r, 1, "--vram 0: ", "--vram 0");
	ck_assert_msg(strstr(r.err, "cannot hold this model: it needs at least"), "%s", r.err);
	res_free(&r);
	r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--tokens", "1", "-n", "1",
		     "--host-cache", "0", NULL);
	expect_ok(&r, "--host-cache 0");
	res_free(&r);

	static const struct { const char *list, *why; } bad_lists[] = {
		{ "1,2,", "an empty id at offset 4" },
		{ "1, 2", "not a token id at offset 2" },
		{ "+5", "not a token id at offset 0" },
		{ "1,,2", "an empty id at offset 2" },
		{ "", "no token ids" },
		{ "1,2147483648", "an id out of range at offset 2" },
		{ "1 2", "not a token id at offset 1" },
		{ "5x", "not a token id at offset 1" },
	};
	for (size_t i = 0; i < MOE_ARRAY_SIZE(bad_lists); i++) {
		r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--tokens", bad_lists[i].list,
			     NULL);
		expect_fail(&r, 2, bad_lists[i].why, bad_lists[i].list);
		res_free(&r);
	}
	/* prompt + -n past the largest context: its size used to wrap around 2^32 */
	r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--tokens", "1", "-n", "16777216",
		     NULL);
	expect_fail(&r, 2, "a context holds at most 16777216", "-n 16777216");
	res_free(&r);
	r = run_tool(NULL, NULL, "moe-run", "-m", fx.model, "--tokens", "1", "-n", "4294967295",
		     NULL);
	expect_fail(&r, 2, "-n '4294967295': expected a whole number from 0 to 16777216", "-n");
	res_free(&r);
	r = run_tool(NULL, NULL, "moectl", "detokenize", fx.vmodel, "+5", NULL);
	expect_fail(&r, 2, "token id '+5'", "moectl detokenize +5");
	res_free(&r);
	r = run_tool(NULL, NULL, "moe-bench", "quant", "--threads", "-1", NULL);
	expect_fail(&r, 2, "--threads '-1'", "moe-bench quant --threads -1");
	res_free(&r);
}
END_TEST

/* ------------------------------------------------- hostile argument vectors */

/*
 * Placeholders: @M a model without a vocabulary, @V one with, @D a directory,
 * @F a FIFO nobody opens, @S a socket, @N a null device, @U a full device,
 * @X a path in a directory that does not exist, @O a fresh output path, @L a
 * 100000-byte argument, @B bytes that are not UTF-8, @H a number past 2^64,
 * @E a size past 2^64.
 */
struct hostile {
	int want;               /* exit status: 1 failure, 2 usage */
	const char *tool;
	const char *args[14];
};

#define MK "--arch", "qwen3moe"

static const struct hostile table[] = {
	/* moectl */
	{ 2, "moectl", { NULL } },
	{ 2, "moectl", { "--bogus" } },
	{ 2, "moectl", { "" } },
	{ 2, "moectl", { "@B" } },
	{ 2, "moectl", { "@L" } },
	{ 2, "moectl", { "--json" } },
	{ 2, "moectl", { "help", "extra" } },
	{ 2, "moectl", { "info" } },
	{ 2, "moectl", { "info", "--bogus", "@M" } },
	{ 2, "moectl", { "info", "@M", "@M" } },
	{ 1, "moectl", { "info", "@X" } },
	{ 2, "moectl", { "info", "--vram", "1Q", "@M" } },
	{ 2, "moectl", { "info", "--vram", "@E", "@M" } },
	{ 1, "moectl", { "info", "@D" } },
	{ 1, "moectl", { "info", "@F" } },
	{ 1, "moectl", { "info", "@S" } },
	{ 1, "moectl", { "info", "@N" } },
	{ 1, "moectl", { "info", "@U" } },
	{ 1, "moectl", { "info", "" } },
	{ 1, "moectl", { "info", "@L" } },
	{ 1, "moectl", { "info", "@B" } },
	{ 2, "moectl", { "pack" } },
	{ 2, "moectl", { "pack", "@M" } },
	{ 2, "moectl", { "pack", "@M", "" } },
	{ 2, "moectl", { "pack", "", "@O" } },
	{ 2, "moectl", { "pack", "@M", "@M" } },
	{ 2, "moectl", { "pack", "@M", "@D" } },
	{ 2, "moectl", { "pack", "@M", "@N" } },
	{ 2, "moectl", { "pack", "@M", "@F" } },
	{ 2, "moectl", { "pack", "@M", "@O", "--align", "3" } },
	{ 2, "moectl", { "pack", "@M", "@O", "--align", "@H" } },
	{ 1, "moectl", { "pack", "@X", "@O" } },
	{ 1, "moectl", { "pack", "@M", "@X" } },
	{ 2, "moectl", { "pack", "@D", "@O" } },
	{ 2, "moectl", { "pack", "@F", "@O" } },
	{ 1, "moectl", { "pack", "@L", "@O" } },
	{ 2, "moectl", { "plan", "--preset", "", "--vram", "1G" } },
	{ 2, "moectl", { "plan", "--preset", "@L", "--vram", "1G" } },
	{ 2, "moectl", { "plan", "--preset", "@B", "--vram", "1G" } },
	{ 2, "moectl", { "plan", "--preset", "gpt-oss-20b", "--type", "@B", "--vram", "1G" } },
	{ 2, "moectl", { "plan", "--preset", "gpt-oss-20b", "--vram", "@E" } },
	{ 2, "moectl", { "tokenize" } },
	{ 2, "moectl", { "tokenize", "@V" } },
	{ 2, "moectl", { "tokenize", "@V", "a", "b" } },
	{ 2, "moectl", { "tokenize", "--bogus", "@V", "hi" } },
	{ 1, "moectl", { "tokenize", "@M", "hello" } },
	{ 1, "moectl", { "tokenize", "@M", "@B" } },
	{ 1, "moectl", { "tokenize", "@X", "hello" } },
	{ 1, "moectl", { "tokenize", "@D", "hello" } },
	{ 1, "moectl", { "tokenize", "@F", "hello" } },
	{ 1, "moectl", { "tokenize", "@N", "hello" } },
	{ 1, "moectl", { "tokenize", "@L", "hello" } },
	{ 2, "moectl", { "detokenize" } },
	{ 2, "moectl", { "detokenize", "@V", "-1" } },
	{ 2, "moectl", { "detokenize", "@V", "@H" } },
	{ 2, "moectl", { "detokenize", "@V", "" } },
	{ 2, "moectl", { "detokenize", "@V", "1x" } },
	{ 2, "moectl", { "detokenize", "@V", "@B" } },
	{ 2, "moectl", { "detokenize", "@V", "@L" } },
	{ 2, "moectl", { "detokenize", "@V", "2147483648" } },
	{ 1, "moectl", { "detokenize", "@V", "2147483647" } },
	{ 1, "moectl", { "detokenize", "@M", "1", "2" } },
	{ 1, "moectl", { "detokenize", "@F", "1" } },
	{ 1, "moectl", { "detokenize", "@D", "1" } },
	{ 2, "moectl", { "topo", "a", "b" } },
	{ 2, "moectl", { "topo", "--bogus" } },
	{ 1, "moectl", { "topo", "@X" } },
	{ 1, "moectl", { "topo", "@L" } },
	{ 2, "moectl", { "load" } },
	{ 2, "moectl", { "load", "name" } },
	{ 2, "moectl", { "load", "--bogus", "name", "@M" } },
	{ 1, "moectl", { "load", "name", "@X" } },
	{ 1, "moectl", { "load", "name", "@F" } },
	{ 1, "moectl", { "load", "name", "@N" } },
	{ 1, "moectl", { "load", "name", "@D" } },
	{ 1, "moectl", { "load", "@L", "@X" } },
	{ 2, "moectl", { "unload" } },
	{ 2, "moectl", { "unload", "a", "b" } },
	{ 1, "moectl", { "unload", "@L" } },
	{ 2, "moectl", { "status", "extra" } },
	{ 2, "moectl", { "status", "--bogus" } },

	/* moe-run */
	{ 2, "moe-run", { NULL } },
	{ 2, "moe-run", { "-m" } },
	{ 2, "moe-run", { "--bogus" } },
	{ 2, "moe-run", { "-m", "@M" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "extra" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "-p", "x" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--ple-cache", "1Q" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--ple-cache", "0" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--ple-cache", "@E" } },
	{ 1, "moe-run", { "-m", "@X", "--tokens", "1" } },
	{ 1, "moe-run", { "-m", "@D", "--tokens", "1" } },
	{ 1, "moe-run", { "-m", "@F", "--tokens", "1" } },
	{ 1, "moe-run", { "-m", "@S", "--tokens", "1" } },
	{ 1, "moe-run", { "-m", "@N", "--tokens", "1" } },
	{ 1, "moe-run", { "-m", "@U", "--tokens", "1" } },
	{ 1, "moe-run", { "-m", "", "--tokens", "1" } },
	{ 1, "moe-run", { "-m", "@L", "--tokens", "1" } },
	{ 1, "moe-run", { "-m", "@B", "--tokens", "1" } },
	{ 1, "moe-run", { "-m", "@M", "-p", "hi" } },
	{ 1, "moe-run", { "-m", "@M", "--chat" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1,,2" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "-1" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "@H" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "@B" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "@L" } },
	{ 1, "moe-run", { "-m", "@M", "--tokens", "99999" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "-n", "-1" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "-n", "@H" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "-n", "4294967295" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "-n", "16777216" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "-n", "" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--ctx", "4294967295" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--batch", "-1" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--threads", "-1" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--threads", "@H" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--temp", "-1" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--temp", "nan" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--temp", "inf" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--temp", "" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--top-p", "2" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--min-p", "-0.5" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--repeat-penalty", "0" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--top-k", "-1" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--top-k", "4294967295" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--repeat-last-n", "@H" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--seed", "-1" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--seed", "@H" } },
	{ 1, "moe-run", { "-m", "@M", "--tokens", "1", "--vram", "0" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--vram", "-1G" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--vram", "@E" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--vram", "" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--vram", "@B" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--host-cache", "lots" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--io", "bogus" } },
	{ 1, "moe-run", { "-m", "@M", "--tokens", "1", "--backend", "bogus" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--backend", "" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--kv-type", "bogus" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--kv-type", "@B" } },
	{ 2, "moe-run", { "-m", "@M", "--tokens", "1", "--system", "x" } },
	{ 2, "moe-run", { "-m", "@M", "--chat", "--tokens", "1" } },
	{ 2, "moe-run", { "-m", "@M", "--chat", "-n", "0" } },
	/* moe-server: refused before it ever listens */
	{ 2, "moe-server", { NULL } },
	{ 2, "moe-server", { "--bogus" } },
	{ 2, "moe-server", { "-m", "@V", "extra" } },
	{ 2, "moe-server", { "-m", "@V", "--port", "65536" } },
	{ 2, "moe-server", { "-m", "@V", "--port", "-1" } },
	{ 2, "moe-server", { "-m", "@V", "--parallel", "0" } },
	{ 2, "moe-server", { "-m", "@V", "--api-key", "" } },
	{ 2, "moe-server", { "-m", "@V", "--max-body", "@E" } },
	{ 2, "moe-server", { "-m", "@V", "--ctx", "@H" } },
	{ 2, "moe-server", { "-m", "@V", "--timeout", "0" } },
	{ 1, "moe-server", { "-m", "@X" } },
	{ 1, "moe-server", { "-m", "@D" } },
	{ 1, "moe-server", { "-m", "@F" } },
	{ 1, "moe-server", { "-m", "@V", "--host", "not-an-address" } },
	{ 1, "moe-server", { "-m", "@V", "--vram", "1K" } },
	{ 1, "moe-run", { "-m", "@M", "--tokens", "1", "--logits-out", "@D" } },
	{ 1, "moe-run", { "-m", "@M", "--tokens", "1", "--logits-out", "@F" } },
	{ 1, "moe-run", { "-m", "@M", "--tokens", "1", "--logits-out", "@S" } },
	{ 1, "moe-run", { "-m", "@M", "--tokens", "1", "--logits-out", "@U" } },
	{ 1, "moe-run", { "-m", "@M", "--tokens", "1", "--logits-out", "@X" } },
	{ 1, "moe-run", { "-m", "@M", "--tokens", "1", "--logits-out", "" } },
	{ 1, "moe-run", { "-m", "@M", "--tokens", "1", "--logits-out", "@L" } },

	/* moe-mkmodel */
	{ 2, "moe-mkmodel", { NULL } },
	{ 2, "moe-mkmodel", { "--arch" } },
	{ 2, "moe-mkmodel", { "--bogus" } },
	{ 2, "moe-mkmodel", { "--preset", "", "-o", "@O" } },
	{ 2, "moe-mkmodel", { "--preset", "@L", "-o", "@O" } },
	{ 2, "moe-mkmodel", { "--preset", "@B", "--sparse", "-o", "@O" } },
	{ 2, "moe-mkmodel", { "--preset", "gpt-oss-20b", "--type", "@B", "-o", "@O" } },
	{ 1, "moe-mkmodel", { "--preset", "gpt-oss-20b", "--sparse", "-o", "@N" } },
	{ 1, "moe-mkmodel", { "--preset", "gpt-oss-20b", "--sparse", "-o", "@F" } },
	{ 1, "moe-mkmodel", { "--preset", "gpt-oss-20b", "--sparse", "-o", "@D" } },
	{ 1, "moe-mkmodel", { "--preset", "gpt-oss-20b", "--sparse", "-o", "@X" } },
	{ 2, "moe-mkmodel", { MK } },
	{ 2, "moe-mkmodel", { "--arch", "bogus", "-o", "@O" } },
	{ 2, "moe-mkmodel", { "--arch", "", "-o", "@O" } },
	{ 2, "moe-mkmodel", { "--arch", "@B", "-o", "@O" } },
	{ 2, "moe-mkmodel", { "--arch", "@L", "-o", "@O" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "extra" } },
	{ 1, "moe-mkmodel", { MK, "-o", "@D" } },
	{ 1, "moe-mkmodel", { MK, "-o", "@F" } },
	{ 1, "moe-mkmodel", { MK, "-o", "@S" } },
	{ 1, "moe-mkmodel", { MK, "-o", "@U" } },
	{ 1, "moe-mkmodel", { MK, "-o", "@X" } },
	{ 1, "moe-mkmodel", { MK, "-o", "" } },
	{ 1, "moe-mkmodel", { MK, "-o", "@L" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--layers", "0" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--layers", "-1" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--layers", "@H" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--layers", "" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--layers", "+5" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--layers", "0x10" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--embd", "4294967296" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--seed", "-1" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--router-skew", "nan" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--router-skew", "1e999" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--router-skew", "-1" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--type", "bogus" } },
	{ 2, "moe-mkmodel", { MK, "-o", "@O", "--type", "@B" } },
	{ 1, "moe-mkmodel", { MK, "-o", "@O", "--layers", "1024", "--experts", "4096", "--embd",
			      "65536" } },
	{ 1, "moe-mkmodel", { MK, "-o", "@O", "--layers", "1", "--experts", "64", "--embd",
			      "65536", "--expert-ff", "1048576" } },

	/* moe-bench */
	{ 2, "moe-bench", { NULL } },
	{ 2, "moe-bench", { "bogus" } },
	{ 2, "moe-bench", { "@B" } },
	{ 2, "moe-bench", { "" } },
	{ 2, "moe-bench", { "io" } },
	{ 2, "moe-bench", { "io", "--bogus", "@M" } },
	{ 2, "moe-bench", { "io", "@M", "@M" } },
	{ 1, "moe-bench", { "io", "@X" } },
	{ 1, "moe-bench", { "io", "@D" } },
	{ 1, "moe-bench", { "io", "@F" } },
	{ 1, "moe-bench", { "io", "@N" } },
	{ 1, "moe-bench", { "io", "@L" } },
	{ 2, "moe-bench", { "io", "--qd", "-1", "@M" } },
	{ 2, "moe-bench", { "io", "--qd", "@H", "@M" } },
	{ 2, "moe-bench", { "io", "--qd", "0", "@M" } },
	{ 2, "moe-bench", { "io", "--size", "0", "@M" } },
	{ 2, "moe-bench", { "io", "--size", "@E", "@M" } },
	{ 2, "moe-bench", { "io", "--total", "-5", "@M" } },
	{ 2, "moe-bench", { "io", "--backend", "bogus", "@M" } },
	{ 2, "moe-bench", { "io", "--direct", "@B", "@M" } },
	{ 2, "moe-bench", { "io", "--seed", "-1", "@M" } },
	{ 2, "moe-bench", { "quant", "extra" } },
	{ 2, "moe-bench", { "quant", "--bogus" } },
	{ 2, "moe-bench", { "quant", "--mib", "0" } },
	{ 2, "moe-bench", { "quant", "--mib", "-1" } },
	{ 2, "moe-bench", { "quant", "--mib", "@H" } },
	{ 2, "moe-bench", { "quant", "--threads", "-1" } },
	{ 2, "moe-bench", { "quant", "--reps", "0" } },
	{ 2, "moe-bench", { "quant", "--type", "bogus" } },
	{ 2, "moe-bench", { "decode" } },
	{ 2, "moe-bench", { "decode", "--bogus", "@M" } },
	{ 2, "moe-bench", { "decode", "--threads", "-1", "@M" } },
	{ 2, "moe-bench", { "decode", "--tokens", "0", "@M" } },
	{ 2, "moe-bench", { "decode", "--prompt", "@H", "@M" } },
	{ 1, "moe-bench", { "decode", "@X" } },
	{ 1, "moe-bench", { "decode", "@D" } },
	{ 1, "moe-bench", { "decode", "@F" } },
	{ 1, "moe-bench", { "decode", "@N" } },
};

static bool row_uses(const struct hostile *h, const char *ph)
{
	for (int i = 0; h->args[i]; i++)
		if (strstr(h->args[i], ph))
			return true;
	return false;
}

/* One placeholder's text; NULL for a literal argument. */
static const char *placeholder(const char *a, char *buf, size_t len, int row)
{
	static char *big;

	if (!strcmp(a, "@M"))
		return fx.model;
	if (!strcmp(a, "@V"))
		return fx.vmodel;
	if (!strcmp(a, "@D"))
		return fx.subdir;
	if (!strcmp(a, "@F"))
		return fx.fifo;
	if (!strcmp(a, "@S"))
		return fx.sock;
	if (!strcmp(a, "@N"))
		return fx.null;
	if (!strcmp(a, "@U"))
		return fx.full;
	if (!strcmp(a, "@X"))
		return fx.missing;
	if (!strcmp(a, "@B"))
		return "\xff\xfe\xc0\x80-\xed\xa0\x80";
	if (!strcmp(a, "@H"))
		return "99999999999999999999999999";
	if (!strcmp(a, "@E"))
		return "1e300G";
	if (!strcmp(a, "@O")) {
		snprintf(buf, len, "%s/hostile-%d.gguf", fx.dir, row);
		return buf;
	}
	if (!strcmp(a, "@L")) {
		if (!big) {
			big = malloc(100001);
			ck_assert_ptr_nonnull(big);
			memset(big, 'a', 100000);
			big[100000] = 0;
		}
		return big;
	}
	return NULL;
}

/* No run may replace or remove the fixture's links, devices, FIFO, socket or directory. */
static void fixture_intact(int row)
{
	ck_assert_msg(same_node(fx.fifo, S_IFIFO, 0), "row %d replaced the FIFO", row);
	ck_assert_msg(same_node(fx.subdir, S_IFDIR, 0), "row %d replaced the directory", row);
	ck_assert_msg(!fx.sock[0] || same_node(fx.sock, S_IFSOCK, 0), "row %d replaced the socket",
		      row);
	ck_assert_msg(!fx.null[0] || same_node(fx.null, S_IFCHR, makedev(1, 3)),
		      "row %d replaced %s", row, fx.null);
	ck_assert_msg(!fx.full[0] || same_node(fx.full, S_IFCHR, makedev(1, 7)),
		      "row %d replaced %s", row, fx.full);
}

START_TEST(hostile_argv)
{
	const struct hostile *h = &table[_i];
	char *argv[MAX_ARGS + 2], obuf[PATH_MAX];
	struct res r;
	int n = 0;

	argv[n++] = (char *)tu_bin(h->tool);
	for (int i = 0; h->args[i]; i++) {
		const char *p = placeholder(h->args[i], obuf, sizeof(obuf), _i);

		argv[n++] = (char *)(p ? p : h->args[i]);
	}
	argv[n] = NULL;
	r = run_v(argv, NULL, NULL);
	ck_assert_msg(r.st == h->want, "row %d: %s: exit status %d, expected %d; stderr: %s", _i,
		      show(argv), r.st, h->want, r.err);
	ck_assert_msg(r.err[strspn(r.err, " \n")], "row %d: %s: failed without a word on stderr",
		      _i, show(argv));
	fixture_intact(_i);
	res_free(&r);
}
END_TEST

Suite *suite_tools(void)
{
	Suite *s = suite_create("tools");
	TCase *tc = tcase_create("tools");
	bool devices = true;
	char *probe = tu_tmpdir(), node[PATH_MAX];
	int skipped = 0;

	/* what the fixture will be able to make, to skip (not pass) what needs it */
	if (probe && access("/dev", W_OK) == 0) {
		snprintf(node, sizeof(node), "%s/null", probe);
		devices = mknod(node, S_IFCHR | 0666, makedev(1, 3)) == 0;
	}
	if (probe) {
		tu_rmtree(probe);
		free(probe);
	}
	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, no_vocabulary);
	tcase_add_test(tc, dense_streamed_tools);
	tcase_add_loop_test(tc, output_files, 0, 2);
	tcase_add_test(tc, fifo_model_refused);
	tcase_add_test(tc, flags_refused_or_capped);
	if (devices) {
		tcase_add_test(tc, stdout_write_errors);
	} else {
		tu_skip("tools/stdout_write_errors", "no safe full device: /dev is writable here "
			"and mknod is refused");
	}
	for (int i = 0; i < (int)MOE_ARRAY_SIZE(table); i++) {
		if (!devices && (row_uses(&table[i], "@N") || row_uses(&table[i], "@U"))) {
			skipped++;
			continue;
		}
		tcase_add_loop_test(tc, hostile_argv, i, i + 1);
	}
	if (skipped)
		tu_skip("tools/hostile_argv (rows with device nodes)", "no safe device nodes: "
			"/dev is writable here and mknod is refused");
	suite_add_tcase(s, tc);
	return s;
}
