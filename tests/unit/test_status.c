/* SPDX-License-Identifier: MIT */
/*
 * Live engine counters and `moectl status`: a context publishes its file in
 * the runtime directory and removes it when freed; moe-run in the background
 * is seen by `moectl status --json` with counters that match its run; files
 * with a bad magic, truncated, of another version, of dead or reused pids,
 * FIFOs and directories are skipped (the dead ones removed) without a crash
 * or a hang; the parser survives random and mutated bytes; --watch prints
 * one snapshot per interval on a pipe and ends on --count and on SIGINT.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "engine/publish.h"
#include "moe/moe.h"
#include "testutil.h"

static struct {
	char dir[PATH_MAX];
	char run[PATH_MAX + 8];
	char model[PATH_MAX + 16];
} fx;

static void setup(void)
{
	char *dir = tu_tmpdir(), cmd[3 * PATH_MAX];

	ck_assert_ptr_nonnull(dir);
	snprintf(fx.dir, sizeof(fx.dir), "%s", dir);
	free(dir);
	snprintf(fx.run, sizeof(fx.run), "%s/run", fx.dir);
	snprintf(fx.model, sizeof(fx.model), "%s/m.gguf", fx.dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --layers 2 --embd 64 --heads 2 --kv-heads 1 "
		 "--head-dim 32 --experts 8 --expert-ff 64 --vocab-bpe -q -o %s",
		 tu_bin("moe-mkmodel"), fx.model);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	/* every engine of this suite, and every moectl it runs, use this directory */
	setenv("MOE_RUNTIME_DIR", fx.run, 1);
	unsetenv("MOE_NO_PUBLISH");
}

static void teardown(void)
{
	tu_rmtree(fx.dir);
	unsetenv("MOE_RUNTIME_DIR");
}

static int count_files(const char *dir)
{
	char cmd[PATH_MAX + 64], *out = NULL;
	int n = -1;

	snprintf(cmd, sizeof(cmd), "ls -A %s 2>/dev/null | wc -l", dir);
	if (tu_run(cmd, 0, &out) == 0)
		n = atoi(out);
	free(out);
	return n;
}

static struct moe_ctx *make_ctx(struct moe_model **m, uint32_t flags)
{
	struct moe_ctx_params p;
	struct moe_ctx *ctx = NULL;

	ck_assert_int_eq(moe_model_open(fx.model, m), 0);
	moe_ctx_params_init(&p);
	p.n_threads = 1;
	p.n_ctx = 64;
	p.flags = flags;
	ck_assert_msg(moe_ctx_create(*m, &p, &ctx) == 0, "%s", moe_errmsg());
	return ctx;
}

/* A context's file: there while it lives, with its pid, model and counters; gone after. */
START_TEST(publish_lifecycle)
{
	struct moe_engine_info e[4];
	struct moe_model *m;
	struct moe_ctx *ctx = make_ctx(&m, 0);
	int32_t toks[4] = { 1, 2, 3, 4 };
	char dir[PATH_MAX];

	ck_assert_int_eq(moe_runtime_dir(dir, sizeof(dir)), 0);
	ck_assert_str_eq(dir, fx.run);
	ck_assert_int_eq(moe_runtime_dir(dir, 4), -ENAMETOOLONG);
	ck_assert_int_eq(moe_engine_list(e, 4), 1);
	ck_assert_int_eq(e[0].pid, getpid());
	ck_assert_str_eq(e[0].model, fx.model);
	ck_assert_str_eq(e[0].backend, "cpu");
	ck_assert_uint_eq(e[0].tokens, 0);
	ck_assert_uint_eq(e[0].busy, 0);
	ck_assert_uint_gt(e[0].n_slots, 0);
	/* a generation's end writes at once, whatever the interval */
	ck_assert_int_eq(moe_ctx_generate(ctx, toks, 4, 3, NULL, 0, NULL, NULL), 3);
	ck_assert_int_eq(moe_engine_list(e, 4), 1);
	ck_assert_uint_eq(e[0].tokens, 4 + 2);
	ck_assert_uint_eq(e[0].decode_tokens, 2);
	ck_assert_uint_eq(e[0].prefill_tokens, 4);
	ck_assert(e[0].hit_rate >= 0 && e[0].hit_rate <= 1);
	ck_assert_uint_gt(e[0].expert_hits + e[0].expert_misses, 0);
	ck_assert_uint_ge(e[0].update_ns, e[0].start_ns);
	/* the count works without a buffer */
	ck_assert_int_eq(moe_engine_list(NULL, 0), 1);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	ck_assert_int_eq(moe_engine_list(e, 4), 0);
	ck_assert_int_eq(count_files(fx.run), 0);

	/* opted out by flag and by environment */
	ctx = make_ctx(&m, MOE_CTX_NO_PUBLISH);
	ck_assert_int_eq(moe_engine_list(e, 4), 0);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	setenv("MOE_NO_PUBLISH", "1", 1);
	ctx = make_ctx(&m, 0);
	ck_assert_int_eq(moe_engine_list(e, 4), 0);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	unsetenv("MOE_NO_PUBLISH");

	/* two contexts of one process: two files, ordered by id */
	{
		struct moe_model *m2;
		struct moe_ctx *a = make_ctx(&m, 0), *b = make_ctx(&m2, 0);

		ck_assert_int_eq(moe_engine_list(e, 4), 2);
		ck_assert_uint_lt(e[0].id, e[1].id);
		moe_ctx_destroy(a);
		moe_ctx_destroy(b);
		moe_model_destroy(m);
		moe_model_destroy(m2);
	}
	/* a model opened by a relative path is published by its absolute one */
	{
		char cwd[PATH_MAX], real[PATH_MAX];
		struct moe_ctx_params p;

		ck_assert_ptr_nonnull(getcwd(cwd, sizeof(cwd)));
		ck_assert_ptr_nonnull(realpath(fx.model, real));
		ck_assert_int_eq(chdir(fx.dir), 0);
		ck_assert_int_eq(moe_model_open("m.gguf", &m), 0);
		moe_ctx_params_init(&p);
		p.n_threads = 1;
		p.n_ctx = 64;
		ck_assert_int_eq(moe_ctx_create(m, &p, &ctx), 0);
		ck_assert_int_eq(chdir(cwd), 0);
		ck_assert_int_eq(moe_engine_list(e, 4), 1);
		ck_assert_str_eq(e[0].model, real);
		moe_ctx_destroy(ctx);
		moe_model_destroy(m);
	}
	/* a directory that cannot be made costs nothing but the file */
	setenv("MOE_RUNTIME_DIR", "/proc/no-such-dir/moe", 1);
	ctx = make_ctx(&m, 0);
	ck_assert_int_eq(moe_ctx_generate(ctx, toks, 2, 2, NULL, 0, NULL, NULL), 2);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	setenv("MOE_RUNTIME_DIR", fx.run, 1);
}
END_TEST

/* A valid file's bytes for @pid, with @start as the writer's start time. */
static void valid_file(struct moe_pub_file *f, int pid, uint64_t start)
{
	memset(f, 0, sizeof(*f));
	f->magic = MOE_PUB_MAGIC;
	f->version = MOE_PUB_VERSION;
	f->size = sizeof(*f);
	f->seq = 2;
	f->proc_start = start;
	f->info.pid = pid;
	f->info.tokens = 7;
	f->info.hit_rate = 0.5;
	snprintf(f->info.model, sizeof(f->info.model), "/m.gguf");
	snprintf(f->info.backend, sizeof(f->info.backend), "cpu");
}

static void put(const char *name, const void *data, size_t len)
{
	char path[2 * PATH_MAX];

	snprintf(path, sizeof(path), "%s/%s", fx.run, name);
	ck_assert_int_eq(tu_write_file(path, data, len), 0);
}

static bool exists(const char *name)
{
	char path[2 * PATH_MAX];

	snprintf(path, sizeof(path), "%s/%s", fx.run, name);
	return access(path, F_OK) == 0;
}

/* The pid of a process that has ended (and been reaped). */
static int dead_pid(void)
{
	pid_t p = fork();

	ck_assert_int_ge(p, 0);
	if (p == 0)
		_exit(0);
	waitpid(p, NULL, 0);
	return (int)p;
}

/* Every kind of file that is not a live engine's: skipped, and the dead ones' removed. */
START_TEST(bad_files)
{
	struct moe_engine_info e[8];
	struct moe_pub_file f;
	char name[64], path[2 * PATH_MAX], *out = NULL;
	int me = getpid(), dead = dead_pid();
	struct timespec t0, t1;

	mkdir(fx.run, 0700);
	/* the one good file, ours */
	valid_file(&f, me, 0);
	snprintf(name, sizeof(name), "engine-%d-100.stat", me);
	put(name, &f, sizeof(f));
	/* bad magic, truncated, another version, odd size field: ours, so kept but skipped */
	f.magic ^= 1;
	snprintf(name, sizeof(name), "engine-%d-101.stat", me);
	put(name, &f, sizeof(f));
	valid_file(&f, me, 0);
	snprintf(name, sizeof(name), "engine-%d-102.stat", me);
	put(name, &f, sizeof(f) / 2);
	f.version = 99;
	snprintf(name, sizeof(name), "engine-%d-103.stat", me);
	put(name, &f, sizeof(f));
	valid_file(&f, me, 0);
	f.info.hit_rate = 2.5;
	snprintf(name, sizeof(name), "engine-%d-104.stat", me);
	put(name, &f, sizeof(f));
	put("engine-0-0.stat", "", 0);
	put("unrelated.txt", "hello", 5);
	snprintf(path, sizeof(path), "%s/engine-%d-105.stat", fx.run, me);
	ck_assert_int_eq(mkfifo(path, 0600), 0);
	snprintf(path, sizeof(path), "%s/engine-%d-106.stat", fx.run, me);
	ck_assert_int_eq(mkdir(path, 0700), 0);
	/* valid layout, dead pid: removed */
	valid_file(&f, dead, 0);
	snprintf(name, sizeof(name), "engine-%d-0.stat", dead);
	put(name, &f, sizeof(f));
	/* garbage of a dead pid, and a half-made file of a dead pid: removed */
	snprintf(name, sizeof(name), "engine-%d-1.stat", dead);
	put(name, "garbage", 7);
	snprintf(name, sizeof(name), ".engine-%d-2.tmp", dead);
	put(name, &f, 16);
	/* our pid, but another process's start time: a reused pid, removed */
	valid_file(&f, me, 1);
	snprintf(name, sizeof(name), "engine-%d-107.stat", me);
	put(name, &f, sizeof(f));

	ck_assert_int_eq(moe_engine_list(e, 8), 1);
	ck_assert_uint_eq(e[0].id, 0);
	ck_assert_uint_eq(e[0].tokens, 7);
	snprintf(name, sizeof(name), "engine-%d-0.stat", dead);
	ck_assert_msg(!exists(name), "%s of a dead pid was not removed", name);
	snprintf(name, sizeof(name), "engine-%d-1.stat", dead);
	ck_assert(!exists(name));
	snprintf(name, sizeof(name), ".engine-%d-2.tmp", dead);
	ck_assert(!exists(name));
	snprintf(name, sizeof(name), "engine-%d-107.stat", me);
	ck_assert_msg(!exists(name), "the file of a reused pid was not removed");
	snprintf(name, sizeof(name), "engine-%d-101.stat", me);
	ck_assert(exists(name));

	/* one by one, each with its reason */
	snprintf(path, sizeof(path), "%s/engine-%d-101.stat", fx.run, me);
	ck_assert_int_eq(moe_engine_read(path, e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "magic"));
	snprintf(path, sizeof(path), "%s/engine-%d-102.stat", fx.run, me);
	ck_assert_int_eq(moe_engine_read(path, e), -EINVAL);
	snprintf(path, sizeof(path), "%s/engine-%d-103.stat", fx.run, me);
	ck_assert_int_eq(moe_engine_read(path, e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "version 99"));
	snprintf(path, sizeof(path), "%s/engine-%d-105.stat", fx.run, me);
	ck_assert_int_lt(moe_engine_read(path, e), 0);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "FIFO"));
	/* a writer that never finishes: -EAGAIN after a bounded wait */
	valid_file(&f, me, 0);
	f.seq = 3;
	put("busy", &f, sizeof(f));
	snprintf(path, sizeof(path), "%s/busy", fx.run);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	ck_assert_int_eq(moe_engine_read(path, e), -EAGAIN);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ck_assert_int_lt(t1.tv_sec - t0.tv_sec, 3);

	/* moectl sees the same one engine, and says nothing about the rest */
	snprintf(path, sizeof(path), "%s status --json 2>/dev/null", tu_bin("moectl"));
	tu_run(path, 0, &out);
	{
		json_error_t je;
		json_t *doc = json_loads(out, 0, &je), *eng;

		ck_assert_msg(doc, "not JSON: %s", out);
		eng = json_object_get(doc, "engines");
		ck_assert_int_eq(json_array_size(eng), 1);
		ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(eng, 0), "pid")),
				 me);
		json_decref(doc);
	}
	free(out);
	tu_rmtree(fx.run);
}
END_TEST

/* Random and mutated bytes through the parser: never a crash, and what passes is sane. */
START_TEST(parser_random_bytes)
{
	struct moe_pub_file f, good;
	struct moe_engine_info in;
	uint64_t rng = 0x5eed, start;
	unsigned ok = 0;

	valid_file(&good, 1, 0);
	ck_assert_int_eq(moe_pub_parse(&good, sizeof(good), &in, &start), 0);
	for (int i = 0; i < 200000; i++) {
		size_t len = sizeof(f);
		uint8_t *b = (uint8_t *)&f;
		int ret;

		if (i % 4 == 0) {
			for (size_t k = 0; k < sizeof(f); k++)
				b[k] = (uint8_t)tu_rand(&rng);
		} else {
			f = good;
			for (int k = 0, n = 1 + (int)(tu_rand(&rng) % 8); k < n; k++)
				b[tu_rand(&rng) % sizeof(f)] = (uint8_t)tu_rand(&rng);
		}
		if (i % 5 == 0)
			len = tu_rand(&rng) % (sizeof(f) + 1);
		ret = moe_pub_parse(&f, len, &in, NULL);
		ck_assert(ret == 0 || ret == -EINVAL || ret == -EAGAIN);
		if (ret)
			continue;
		ok++;
		ck_assert(in.pid > 0 && in.busy <= 1);
		ck_assert(in.hit_rate >= 0 && in.hit_rate <= 1);
		ck_assert(memchr(in.model, 0, sizeof(in.model)));
		ck_assert(memchr(in.backend, 0, sizeof(in.backend)));
	}
	/* mutations of the good file that only touch counters pass */
	ck_assert_uint_gt(ok, 1000);
}
END_TEST

/* The first engine in `moectl status --json` output with @pid, or NULL. */
static json_t *engine_of(json_t *doc, int pid)
{
	json_t *eng = json_object_get(doc, "engines"), *e;
	size_t i;

	json_array_foreach(eng, i, e)
		if (json_integer_value(json_object_get(e, "pid")) == pid)
			return e;
	return NULL;
}

static json_t *status_json(void)
{
	char cmd[PATH_MAX + 64], *out = NULL;
	json_error_t je;
	json_t *doc;
	int st;

	snprintf(cmd, sizeof(cmd), "%s status --json 2>/dev/null", tu_bin("moectl"));
	st = tu_run(cmd, 0, &out);
	/* 1: moe.ko is not loaded here; the engines are listed all the same */
	ck_assert_msg(st == 0 || st == 1, "moectl status: exit %d", st);
	doc = json_loads(out, 0, &je);
	ck_assert_msg(doc, "moectl status --json: not JSON: %s", out);
	free(out);
	return doc;
}

/* moe-run in the background (a chat reading its standard input), seen by moectl. */
START_TEST(status_sees_moe_run)
{
	char out_path[PATH_MAX + 16], err_path[PATH_MAX + 16], cmd[3 * PATH_MAX], *out = NULL;
	int in[2], st, n = 0;
	json_t *doc = NULL, *e = NULL;
	pid_t pid;

	snprintf(out_path, sizeof(out_path), "%s/run.out", fx.dir);
	snprintf(err_path, sizeof(err_path), "%s/run.err", fx.dir);
	ck_assert_int_eq(pipe(in), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int fd2 = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		dup2(in[0], 0);
		dup2(fd, 1);
		dup2(fd2, 2);
		close(in[1]);
		execl(tu_bin("moe-run"), "moe-run", "-m", fx.model, "--chat", "-n", "24", "--ctx",
		      "256", "--vram", "4M", "--threads", "1", "--no-state", (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	ck_assert_int_eq(write(in[1], "hello there\n", 12), 12);
	/*
	 * moe-run ends the reply with a newline after the generation, whose end
	 * the engine writes at once: from then on the counters are the reply's.
	 */
	for (n = 0; n < 600; n++) {
		out = tu_read_file(out_path, NULL);
		if (out && strchr(out, '\n'))
			break;
		free(out);
		out = NULL;
		ck_assert_msg(waitpid(pid, &st, WNOHANG) == 0, "moe-run ended: %s",
			      (char *)tu_read_file(err_path, NULL));
		nanosleep(&(struct timespec){ .tv_nsec = 100000000 }, NULL);
	}
	ck_assert_msg(out, "moe-run did not reply in 60 s: %s", (char *)tu_read_file(err_path,
										       NULL));
	free(out);
	doc = status_json();
	e = engine_of(doc, pid);
	ck_assert_msg(e, "moectl status does not show moe-run (pid %d)", pid);
	ck_assert_int_ge(json_integer_value(json_object_get(e, "decode_tokens")), 1);
	ck_assert_int_eq(json_integer_value(json_object_get(e, "tokens")),
			 json_integer_value(json_object_get(e, "prefill_tokens")) +
			 json_integer_value(json_object_get(e, "decode_tokens")));
	ck_assert_str_eq(json_string_value(json_object_get(e, "model")), fx.model);
	ck_assert_str_eq(json_string_value(json_object_get(e, "backend")), "cpu");
	ck_assert_int_eq(json_integer_value(json_object_get(e, "vram_budget")), 4 << 20);
	ck_assert_int_gt(json_integer_value(json_object_get(e, "vram_used")), 0);
	ck_assert_int_le(json_integer_value(json_object_get(e, "vram_used")), 4 << 20);
	ck_assert_int_gt(json_integer_value(json_object_get(e, "n_slots")), 0);
	{
		double hr = json_real_value(json_object_get(e, "hit_rate"));
		const char *state = json_string_value(json_object_get(e, "state"));

		ck_assert(hr >= 0 && hr <= 1);
		ck_assert_msg(state && (!strcmp(state, "idle") || !strcmp(state, "ready")),
			      "an engine waiting for input is %s", state);
		ck_assert(json_is_null(json_object_get(e, "prefetch_precision")));
	}
	json_decref(doc);

	/* the text table names it */
	snprintf(cmd, sizeof(cmd), "%s status 2>/dev/null", tu_bin("moectl"));
	tu_run(cmd, 0, &out);
	snprintf(cmd, sizeof(cmd), "%d ", pid);
	ck_assert_msg(strstr(out, cmd) && strstr(out, fx.model) && strstr(out, "TOK/S"), "%s",
		      out);
	free(out);

	/* --watch on a pipe: one snapshot per interval, --count of them */
	snprintf(cmd, sizeof(cmd), "%s status --watch --interval 0.1 --count 3 2>/dev/null | "
		 "grep -c '^PID '", tu_bin("moectl"));
	tu_run(cmd, 0, &out);
	ck_assert_int_eq(atoi(out), 3);
	free(out);
	snprintf(cmd, sizeof(cmd), "%s status --json --watch --interval 0.1 --count 2 "
		 "2>/dev/null", tu_bin("moectl"));
	tu_run(cmd, 0, &out);
	{
		char *nl = strchr(out, '\n');
		json_error_t je;
		json_t *a, *b;

		ck_assert_ptr_nonnull(nl);
		*nl = 0;
		a = json_loads(out, 0, &je);
		b = json_loads(nl + 1, 0, &je);
		ck_assert_msg(a && b, "--json --watch: not a JSON document per line");
		ck_assert_ptr_nonnull(engine_of(b, pid));
		json_decref(a);
		json_decref(b);
	}
	free(out);

	/* end of input: moe-run exits and its file goes with it */
	close(in[1]);
	ck_assert_int_eq(waitpid(pid, &st, 0), pid);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "moe-run: status 0x%x: %s", st,
		      (char *)tu_read_file(err_path, NULL));
	doc = status_json();
	ck_assert_ptr_null(engine_of(doc, pid));
	json_decref(doc);
	ck_assert_int_eq(count_files(fx.run), 0);

	/* killed: the file stays until a reader finds its process gone */
	ck_assert_int_eq(pipe(in), 0);
	pid = fork();
	if (pid == 0) {
		dup2(in[0], 0);
		close(in[1]);
		execl(tu_bin("moe-run"), "moe-run", "-m", fx.model, "--chat", "-n", "2", "--ctx",
		      "64", "--threads", "1", "--no-state", (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	for (n = 0; n < 600 && count_files(fx.run) < 1; n++)
		nanosleep(&(struct timespec){ .tv_nsec = 100000000 }, NULL);
	ck_assert_int_eq(count_files(fx.run), 1);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(in[1]);
	ck_assert_int_eq(count_files(fx.run), 1);
	doc = status_json();
	ck_assert_ptr_null(engine_of(doc, pid));
	json_decref(doc);
	ck_assert_int_eq(count_files(fx.run), 0);
}
END_TEST

/* --watch ends cleanly on SIGINT; its flags are checked. */
START_TEST(watch_flags_and_sigint)
{
	char out_path[PATH_MAX + 16], cmd[4 * PATH_MAX], *out = NULL;
	pid_t pid;
	int st, n;

	snprintf(out_path, sizeof(out_path), "%s/watch.out", fx.dir);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		dup2(fd, 1);
		execl(tu_bin("moectl"), "moectl", "status", "--watch", "--interval", "0.1",
		      (char *)NULL);
		_exit(127);
	}
	nanosleep(&(struct timespec){ .tv_nsec = 500000000 }, NULL);
	kill(pid, SIGINT);
	for (n = 0; n < 50 && waitpid(pid, &st, WNOHANG) != pid; n++)
		nanosleep(&(struct timespec){ .tv_nsec = 100000000 }, NULL);
	ck_assert_msg(n < 50, "moectl status --watch did not end on SIGINT");
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status 0x%x after SIGINT", st);
	out = tu_read_file(out_path, NULL);
	ck_assert_msg(out && strstr(out, "no engines running"), "%s", out);
	free(out);

	/* on a terminal (script(1) makes one): the screen is redrawn, and q ends it at once */
	if (tu_run("command -v script >/dev/null", 0, NULL) != 0) {
		tu_skip("status/watch_flags_and_sigint: q on a terminal", "script(1) is not "
			"installed (bsdutils) to give moectl a terminal");
	} else {
		struct timespec t0, t1;
		double took;

		snprintf(cmd, sizeof(cmd), "(sleep 1; printf q; sleep 8) | { timeout 20 script -qec "
			 "'%s status --watch --interval 0.2' /dev/null > %s 2>&1; echo $? > %s.rc; }",
			 tu_bin("moectl"), out_path, out_path);
		clock_gettime(CLOCK_MONOTONIC, &t0);
		/* the pipeline lasts as long as its writer; the rc file tells when moectl ended */
		tu_run(cmd, 0, NULL);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		took = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
		ck_assert_msg(took < 15, "the pipeline took %.1f s", took);
		out = tu_read_file(out_path, NULL);
		ck_assert_msg(out && strstr(out, "\033[2J") && strstr(out, "q or Ctrl-C quits"),
			      "not redrawn on a terminal: %s", out);
		free(out);
		snprintf(cmd, sizeof(cmd), "%s.rc", out_path);
		out = tu_read_file(cmd, NULL);
		ck_assert_msg(out && atoi(out) == 0, "moectl status --watch after q: status %s",
			      out);
		free(out);
	}

	static const char *const bad[] = {
		"status --interval 1", "status --count 2", "status --watch --interval 0",
		"status --watch --interval x", "status --watch --count 0", "status extra",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(cmd, sizeof(cmd), "%s %s 2>&1", tu_bin("moectl"), bad[i]);
		ck_assert_msg(tu_run(cmd, 0, NULL) == 2, "`moectl %s` is not a usage error",
			      bad[i]);
	}
}
END_TEST

Suite *suite_status(void)
{
	Suite *s = suite_create("status");
	TCase *tc = tcase_create("status");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, publish_lifecycle);
	tcase_add_test(tc, bad_files);
	tcase_add_test(tc, parser_random_bytes);
	tcase_add_test(tc, status_sees_moe_run);
	tcase_add_test(tc, watch_flags_and_sigint);
	suite_add_tcase(s, tc);
	return s;
}
