/* SPDX-License-Identifier: MIT */
/*
 * moe-server end to end: a server on a free loopback port over a tiny
 * generated chat model, spoken to with curl.  Every endpoint and error case,
 * streaming parsed chunk by chunk, concurrent clients whose greedy replies
 * must equal the same prompts run alone (batched decode evaluates each
 * sequence's rows exactly as a lone sequence's: the tolerance is zero
 * differing tokens), a client that hangs up mid-stream, a bounded load
 * test against a small queue, the API key, and SIGTERM's drain.  Every wait
 * is bounded: curl runs with --max-time, the server is killed at teardown.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <jansson.h>

#include "api.h"
#include "testutil.h"

static char *dir;
static char model[4096];

struct srv {
	pid_t pid;
	int port;
	char err[4200];
};

static void setup(void)
{
	char cmd[8400];

	dir = tu_tmpdir();
	ck_assert_ptr_nonnull(dir);
	snprintf(model, sizeof(model), "%s/chat.gguf", dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --vocab-bpe -q -o %s", tu_bin("moe-mkmodel"),
		 model);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
}

static void teardown(void)
{
	tu_rmtree(dir);
	free(dir);
}

/* Start moe-server with @extra arguments (NULL-terminated) on port 0; wait for its port. */
static void srv_start(struct srv *s, const char *name, ...)
{
	char *argv[32];
	const char *a;
	va_list ap;
	int n = 0;

	snprintf(s->err, sizeof(s->err), "%s/%s.err", dir, name);
	argv[n++] = (char *)tu_bin("moe-server");
	argv[n++] = "-m";
	argv[n++] = model;
	argv[n++] = "--port";
	argv[n++] = "0";
	argv[n++] = "--threads";
	argv[n++] = "1";
	va_start(ap, name);
	while ((a = va_arg(ap, const char *)) && n < 30)
		argv[n++] = (char *)a;
	va_end(ap);
	argv[n] = NULL;
	s->pid = fork();
	ck_assert_int_ge(s->pid, 0);
	if (!s->pid) {
		int fd = open(s->err, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		dup2(fd, 2);
		fd = open("/dev/null", O_RDWR);
		dup2(fd, 0);
		dup2(fd, 1);
		execv(argv[0], argv);
		_exit(127);
	}
	s->port = 0;
	for (int i = 0; i < 600 && !s->port; i++) {
		char *text = tu_read_file(s->err, NULL), *p;

		if (text && (p = strstr(text, "listening on http://127.0.0.1:")))
			s->port = atoi(p + strlen("listening on http://127.0.0.1:"));
		free(text);
		if (!s->port)
			usleep(50000);
	}
	ck_assert_msg(s->port > 0, "moe-server did not start in 30 s (see %s)", s->err);
}

/* SIGTERM, then the exit status (bounded: killed after 30 s). */
static int srv_stop(struct srv *s)
{
	int st = 0;

	kill(s->pid, SIGTERM);
	for (int i = 0; i < 600; i++) {
		if (waitpid(s->pid, &st, WNOHANG) == s->pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		usleep(50000);
	}
	kill(s->pid, SIGKILL);
	waitpid(s->pid, &st, 0);
	ck_abort_msg("moe-server did not stop in 30 s after SIGTERM");
	return -1;
}

/* curl @path with @body (NULL: GET) and extra curl @opts; returns the HTTP status. */
static int req(const struct srv *s, const char *opts, const char *path, const char *body,
	       char **out)
{
	char cmd[8192], bodyf[4200], *o = NULL, *nl;
	int code = 0;

	snprintf(bodyf, sizeof(bodyf), "%s/body.%d.json", dir, (int)getpid());
	if (body)
		ck_assert_int_eq(tu_write_file(bodyf, body, strlen(body)), 0);
	snprintf(cmd, sizeof(cmd), "curl -sS --max-time 60 %s %s%s%s -w '\\n%%{http_code}' "
		 "http://127.0.0.1:%d%s", opts ? opts : "", body ? "--data-binary @" : "",
		 body ? bodyf : "", body ? " -H 'Content-Type: application/json'" : "", s->port,
		 path);
	ck_assert_int_eq(tu_run(cmd, 0, &o), 0);
	nl = strrchr(o, '\n');
	ck_assert_ptr_nonnull(nl);
	code = atoi(nl + 1);
	*nl = 0;
	if (out)
		*out = o;
	else
		free(o);
	return code;
}

static json_t *parse(const char *text)
{
	json_error_t je;
	json_t *v = json_loads(text, 0, &je);

	ck_assert_msg(v != NULL, "not JSON (%s): %s", je.text, text);
	return v;
}

/* An error response: status, the API's shape, and the param named. */
static void expect_error(const struct srv *s, const char *path, const char *body, int status,
			 const char *param, const char *words)
{
	char *out;
	int code = req(s, NULL, path, body, &out);
	json_t *v = parse(out), *e = json_object_get(v, "error");

	ck_assert_msg(code == status, "%s %s: status %d, want %d: %s", path, body ? body : "",
		      code, status, out);
	ck_assert_msg(json_is_object(e) && json_is_string(json_object_get(e, "message")) &&
		      json_is_string(json_object_get(e, "type")) && json_object_get(e, "param") &&
		      json_object_get(e, "code"), "not the error shape: %s", out);
	if (param)
		ck_assert_msg(json_is_string(json_object_get(e, "param")) &&
			      !strcmp(json_string_value(json_object_get(e, "param")), param),
			      "param is not %s: %s", param, out);
	if (words)
		ck_assert_msg(strstr(json_string_value(json_object_get(e, "message")), words),
			      "message lacks '%s': %s", words, out);
	json_decref(v);
	free(out);
}

/* The greedy reply text to a chat prompt. */
static char *chat_text(const struct srv *s, const char *user, int n, int *completion_tokens)
{
	char body[1024], *out, *t;
	json_t *v, *u;

	snprintf(body, sizeof(body), "{\"model\":\"x\",\"messages\":[{\"role\":\"user\","
		 "\"content\":\"%s\"}],\"max_tokens\":%d,\"temperature\":0}", user, n);
	ck_assert_int_eq(req(s, NULL, "/v1/chat/completions", body, &out), 200);
	v = parse(out);
	t = strdup(json_string_value(json_object_get(json_object_get(json_array_get(
		json_object_get(v, "choices"), 0), "message"), "content")));
	u = json_object_get(v, "usage");
	ck_assert_int_eq(json_integer_value(json_object_get(u, "total_tokens")),
			 json_integer_value(json_object_get(u, "prompt_tokens")) +
			 json_integer_value(json_object_get(u, "completion_tokens")));
	if (completion_tokens)
		*completion_tokens = (int)json_integer_value(json_object_get(u,
								"completion_tokens"));
	json_decref(v);
	free(out);
	return t;
}

START_TEST(endpoints_and_errors)
{
	struct srv s;
	char *out, big[9000];
	json_t *v;
	int n;

	srv_start(&s, "basic", "--max-body", "4K", "--max-messages", "3", "--max-tokens", "64",
		  "--ctx", "512", NULL);
	ck_assert_int_eq(req(&s, NULL, "/health", NULL, &out), 200);
	ck_assert_msg(strstr(out, "\"ok\""), "%s", out);
	free(out);
	ck_assert_int_eq(req(&s, NULL, "/v1/models", NULL, &out), 200);
	v = parse(out);
	ck_assert_str_eq(json_string_value(json_object_get(json_array_get(
		json_object_get(v, "data"), 0), "id")), "chat.gguf");
	json_decref(v);
	free(out);

	out = chat_text(&s, "hello", 8, &n);
	ck_assert_int_ge(n, 1);
	ck_assert_int_le(n, 8);
	free(out);
	ck_assert_int_eq(req(&s, NULL, "/v1/completions",
			     "{\"prompt\":\"once upon\",\"max_tokens\":6,\"temperature\":0.8,"
			     "\"top_p\":0.9,\"seed\":7,\"stop\":[\"zzzz\"]}", &out), 200);
	v = parse(out);
	ck_assert_str_eq(json_string_value(json_object_get(v, "object")), "text_completion");
	ck_assert(json_is_string(json_object_get(json_array_get(json_object_get(v, "choices"), 0),
						 "text")));
	json_decref(v);
	free(out);
	/* token ids as the prompt */
	ck_assert_int_eq(req(&s, NULL, "/v1/completions",
			     "{\"prompt\":[1,2,3],\"max_tokens\":2}", NULL), 200);

	expect_error(&s, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\","
		     "\"content\":\"hi\"}],\"frobnicate\":1}", 400, "frobnicate", "unknown field");
	expect_error(&s, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\","
		     "\"content\":\"hi\",\"extra\":2}]}", 400, "messages[0].extra", "unknown");
	expect_error(&s, "/v1/chat/completions", "{\"messages\": [", 400, NULL, "not valid JSON");
	expect_error(&s, "/v1/chat/completions", "[1,2]", 400, NULL, "JSON object");
	expect_error(&s, "/v1/chat/completions", "{\"messages\":\"hi\"}", 400, "messages",
		     "array");
	expect_error(&s, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\","
		     "\"content\":\"hi\"}],\"temperature\":\"hot\"}", 400, "temperature", "number");
	expect_error(&s, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\","
		     "\"content\":\"hi\"}],\"max_tokens\":65}", 400, "max_tokens", "outside");
	expect_error(&s, "/v1/chat/completions", "{\"messages\":[{\"role\":\"pirate\","
		     "\"content\":\"hi\"}]}", 400, "messages[0].role", "pirate");
	expect_error(&s, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":"
		     "\"a\"},{\"role\":\"user\",\"content\":\"b\"},{\"role\":\"user\",\"content\":"
		     "\"c\"},{\"role\":\"user\",\"content\":\"d\"}]}", 400, "messages", "more than");
	expect_error(&s, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\","
		     "\"content\":\"hi\"}],\"tools\":{}}", 400, "tools", "array");
	expect_error(&s, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\","
		     "\"content\":\"hi\"}],\"n\":2}", 400, "n", "one choice");
	expect_error(&s, "/v1/completions", "{\"max_tokens\":3}", 400, "prompt", "missing");
	expect_error(&s, "/v1/completions", "{\"prompt\":[99999999]}", 400, "prompt",
		     "vocabulary");
	expect_error(&s, "/v1/completions", "{\"prompt\":\"a\",\"max_tokens\":3,\"max_tokens\":4}",
		     400, NULL, "duplicate");
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = 0;
	memcpy(big, "{\"prompt\":\"", 11);
	big[sizeof(big) - 3] = '"';
	big[sizeof(big) - 2] = '}';
	expect_error(&s, "/v1/completions", big, 413, NULL, "larger");
	expect_error(&s, "/v1/nothing", NULL, 404, NULL, "no such path");
	expect_error(&s, "/../../etc/passwd", NULL, 404, NULL, "no such path");
	expect_error(&s, "/v1/completions", NULL, 405, NULL, "use POST");
	/* the server stays up and answers after all of that */
	ck_assert_int_eq(req(&s, NULL, "/health", NULL, NULL), 200);
	ck_assert_int_eq(req(&s, NULL, "/metrics", NULL, &out), 200);
	ck_assert_msg(strstr(out, "# TYPE moe_expert_hit_rate gauge") &&
		      strstr(out, "moe_requests_total{status=\"400\"}") &&
		      strstr(out, "moe_read_gigabytes_per_second") &&
		      strstr(out, "moe_prefetch_precision") && strstr(out, "moe_queue_depth"),
		      "%s", out);
	free(out);
	ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

START_TEST(api_key)
{
	struct srv s;

	srv_start(&s, "key", "--api-key", "sekrit", NULL);
	ck_assert_int_eq(req(&s, NULL, "/health", NULL, NULL), 200);
	expect_error(&s, "/v1/models", NULL, 401, NULL, "API key");
	ck_assert_int_eq(req(&s, "-H 'Authorization: Bearer sekrix'", "/v1/models", NULL, NULL),
			 401);
	ck_assert_int_eq(req(&s, "-H 'Authorization: Bearer sekri'", "/v1/models", NULL, NULL),
			 401);
	ck_assert_int_eq(req(&s, "-H 'Authorization: Bearer sekrit'", "/v1/models", NULL, NULL),
			 200);
	ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

/* Every "data: " event of an SSE body, the last one [DONE]; returns the text deltas joined. */
static char *sse_text(char *body, int *events, json_t **last)
{
	size_t len = 0;
	char *text = calloc(1, 1), *line, *save = NULL;
	bool done = false;

	*events = 0;
	*last = NULL;
	for (line = strtok_r(body, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		json_t *v, *c;
		const char *d;

		ck_assert_msg(!done, "an event after [DONE]: %s", line);
		ck_assert_msg(!strncmp(line, "data: ", 6), "not an SSE data line: %s", line);
		if (!strcmp(line + 6, "[DONE]")) {
			done = true;
			continue;
		}
		v = parse(line + 6);
		ck_assert_str_eq(json_string_value(json_object_get(v, "object")),
				 "chat.completion.chunk");
		c = json_array_get(json_object_get(v, "choices"), 0);
		/* a delta of a parsed reply may hold reasoning or calls only */
		d = json_string_value(json_object_get(json_object_get(c, "delta"), "content"));
		if (!d)
			d = "";
		text = realloc(text, len + strlen(d) + 1);
		memcpy(text + len, d, strlen(d) + 1);
		len += strlen(d);
		(*events)++;
		json_decref(*last);
		*last = v;
	}
	ck_assert_msg(done, "the stream did not end in data: [DONE]");
	return text;
}

START_TEST(streaming)
{
	struct srv s;
	char *out, *text, *alone;
	json_t *last;
	int events, n;

	srv_start(&s, "stream", NULL);
	alone = chat_text(&s, "tell me a story", 24, &n);
	ck_assert_int_eq(req(&s, "-N", "/v1/chat/completions", "{\"messages\":[{\"role\":"
			     "\"user\",\"content\":\"tell me a story\"}],\"max_tokens\":24,"
			     "\"temperature\":0,\"stream\":true}", &out), 200);
	text = sse_text(out, &events, &last);
	ck_assert_msg(events >= 2, "%d events", events);
	ck_assert_str_eq(text, alone);
	ck_assert(json_is_string(json_object_get(json_array_get(json_object_get(last, "choices"),
								 0), "finish_reason")));
	ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(last, "usage"),
							    "completion_tokens")), n);
	json_decref(last);
	free(text);
	free(out);
	free(alone);
	ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

START_TEST(concurrent_equals_alone)
{
	static const char *const prompts[] = { "hello", "the quick brown fox", "a", "why is the sky",
					       "one two three four five six" };
	enum { N = 5 };
	char *alone[N], cmd[16384], *out;
	struct srv s;
	size_t off = 0;

	srv_start(&s, "conc", "--parallel", "5", NULL);
	for (int i = 0; i < N; i++)
		alone[i] = chat_text(&s, prompts[i], 20, NULL);
	/* all at once: each curl writes its own file, the shell waits for all */
	for (int i = 0; i < N; i++) {
		char body[512], bodyf[4200];

		snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],"
			 "\"max_tokens\":20,\"temperature\":0}", prompts[i]);
		snprintf(bodyf, sizeof(bodyf), "%s/conc%d.json", dir, i);
		ck_assert_int_eq(tu_write_file(bodyf, body, strlen(body)), 0);
		off += (size_t)snprintf(cmd + off, sizeof(cmd) - off, "curl -sS --max-time 60 "
					"--data-binary @%s -o %s.out http://127.0.0.1:%d/v1/chat/"
					"completions & ", bodyf, bodyf, s.port);
	}
	snprintf(cmd + off, sizeof(cmd) - off, "wait");
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	for (int i = 0; i < N; i++) {
		char path[4200];
		json_t *v;

		snprintf(path, sizeof(path), "%s/conc%d.json.out", dir, i);
		out = tu_read_file(path, NULL);
		ck_assert_ptr_nonnull(out);
		v = parse(out);
		ck_assert_msg(!strcmp(json_string_value(json_object_get(json_object_get(
			json_array_get(json_object_get(v, "choices"), 0), "message"), "content")),
			alone[i]), "prompt %d batched: %s; alone: %s", i, out, alone[i]);
		json_decref(v);
		free(out);
		free(alone[i]);
	}
	ck_assert_int_eq(req(&s, NULL, "/metrics", NULL, &out), 200);
	/* the batch held several sequences: fewer steps than tokens */
	{
		const char *b = strstr(out, "\nmoe_batches_total "), *t =
			strstr(out, "\nmoe_batch_tokens_total ");

		ck_assert(b && t);
		ck_assert_msg(atof(t + 24) > atof(b + 19), "%s", out);
	}
	free(out);
	ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

static double metric(const struct srv *s, const char *name)
{
	char *out, key[128];
	const char *p;
	double v = -1;

	ck_assert_int_eq(req(s, NULL, "/metrics", NULL, &out), 200);
	snprintf(key, sizeof(key), "\n%s ", name);
	p = strstr(out, key);
	if (p)
		v = atof(p + strlen(key));
	free(out);
	return v;
}

/* The text of a completion reply in @path (a curl output file), malloc'ed. */
static char *file_completion(const char *path, const char *key)
{
	char *out = tu_read_file(path, NULL), *t;
	json_t *v, *c;

	ck_assert_msg(out != NULL, "no reply in %s", path);
	v = parse(out);
	c = json_array_get(json_object_get(v, "choices"), 0);
	ck_assert_msg(json_is_string(json_object_get(c, "finish_reason")), "%s", out);
	t = strdup(!strcmp(key, "text") ? json_string_value(json_object_get(c, "text")) :
		   json_string_value(json_object_get(json_object_get(c, "message"), "content")));
	json_decref(v);
	free(out);
	return t;
}

/* Post @n bodies at once (the first @lead_ms before the others); replies in BODY.out. */
static void post_together(const struct srv *s, const char *path, char *const *bodies, int n,
			  int lead_ms, char files[][4200])
{
	char cmd[16384];
	size_t off = 0;

	for (int i = 0; i < n; i++) {
		snprintf(files[i], 4200, "%s/together%d.json", dir, i);
		ck_assert_int_eq(tu_write_file(files[i], bodies[i], strlen(bodies[i])), 0);
		off += (size_t)snprintf(cmd + off, sizeof(cmd) - off, "curl -sS --max-time 120 "
					"--data-binary @%s -o %s.out http://127.0.0.1:%d%s & %s",
					files[i], files[i], s->port, path,
					!i && lead_ms ? "sleep 0.3; " : "");
		strcat(files[i], ".out");
	}
	snprintf(cmd + off, sizeof(cmd) - off, "wait");
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
}

/*
 * Prompts of requests admitted together prefill in the same batches: a long
 * prompt keeps the engine prefilling while four short ones arrive; the
 * steps then hold several requests' prompt tokens (the metrics count them),
 * and every reply equals the same request run alone.
 */
START_TEST(prefill_grouped)
{
	enum { N = 5 };
	static const char *const prompts[] = { "hello there", "the quick brown fox",
					       "why is the sky", "one two three four" };
	char *bodies[N], files[N][4200], *alone[N], *long_prompt;
	size_t off = 0, cap = 16384;
	struct srv s;

	long_prompt = malloc(cap);
	ck_assert_ptr_nonnull(long_prompt);
	off = (size_t)snprintf(long_prompt, cap, "{\"prompt\":[");
	for (int i = 0; i < 1900; i++)
		off += (size_t)snprintf(long_prompt + off, cap - off, "%s%d", i ? "," : "",
					(i * 7) % 500 + 1);
	snprintf(long_prompt + off, cap - off, "],\"max_tokens\":6,\"temperature\":0}");
	bodies[0] = long_prompt;
	for (int i = 1; i < N; i++) {
		bodies[i] = malloc(512);
		ck_assert_ptr_nonnull(bodies[i]);
		snprintf(bodies[i], 512, "{\"prompt\":\"%s\",\"max_tokens\":12,\"temperature\":0}",
			 prompts[i - 1]);
	}
	srv_start(&s, "prefill", "--parallel", "5", NULL);
	for (int i = 0; i < N; i++) {
		post_together(&s, "/v1/completions", &bodies[i], 1, 0, &files[i]);
		alone[i] = file_completion(files[i], "text");
	}
	ck_assert_int_eq(metric(&s, "moe_prefill_shared_batches_total"), 0);
	post_together(&s, "/v1/completions", bodies, N, 300, files);
	/*
	 * the short prompts shared the long one's steps instead of waiting for
	 * it: their replies (12 tokens) were done before its (6 tokens)
	 */
	{
		struct stat st;
		double end[N];
		int before = 0;

		for (int i = 0; i < N; i++) {
			ck_assert_int_eq(stat(files[i], &st), 0);
			end[i] = (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9;
			before += i && end[i] < end[0];
		}
		ck_assert_msg(before >= 3, "only %d of the 4 short requests ended before the long "
			      "prompt's", before);
	}
	for (int i = 0; i < N; i++) {
		char *t = file_completion(files[i], "text");

		ck_assert_msg(!strcmp(t, alone[i]), "request %d together: '%s'; alone: '%s'", i, t,
			      alone[i]);
		free(t);
		free(alone[i]);
		free(bodies[i]);
	}
	ck_assert_msg(metric(&s, "moe_prefill_shared_batches_total") >= 1 &&
		      metric(&s, "moe_prefill_sequences_max") >= 3,
		      "no step held the prompts of three requests (shared %g, most %g)",
		      metric(&s, "moe_prefill_shared_batches_total"),
		      metric(&s, "moe_prefill_sequences_max"));
	ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

/*
 * --parallel 8 under the smallest budget the model takes: two expert slots,
 * fewer than the distinct experts of almost any step (eight sequences each
 * choosing 2 of 16 experts routed uniformly, and prompts of several tokens).
 * A layer then runs its experts in waves through the slots: every request
 * succeeds and equals the same request alone.
 */
START_TEST(parallel_8_few_slots)
{
	enum { N = 8 };
	char cmd[8400], big[4000], vram[32], *out, *p, *bodies[N], files[N][4200], *alone[N];
	struct srv s;
	int slots;

	snprintf(big, sizeof(big), "%s/e16.gguf", dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --vocab-bpe --experts 16 --router-skew 0 "
		 "-q -o %s", tu_bin("moe-mkmodel"), big);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	/* the smallest budget, from the error of one too small */
	snprintf(cmd, sizeof(cmd), "%s -m %s --port 0 --threads 1 --ctx 256 --parallel 8 "
		 "--vram 1M", tu_bin("moe-server"), big);
	ck_assert_int_ne(tu_run(cmd, 1, &out), 0);
	p = strstr(out, "MiB (");
	ck_assert_msg(p, "%s", out);
	snprintf(vram, sizeof(vram), "%lld", atoll(p + 5));
	free(out);
	snprintf(model, sizeof(model), "%s", big);
	srv_start(&s, "few-slots", "--ctx", "256", "--parallel", "8", "--vram", vram, NULL);
	out = tu_read_file(s.err, NULL);
	p = out ? strstr(out, " expert slots x ") : NULL;
	ck_assert_msg(p, "%s", out);
	while (p > out && p[-1] >= '0' && p[-1] <= '9')
		p--;
	slots = atoi(p);
	free(out);
	ck_assert_msg(slots >= 1 && slots <= 2, "%d slots: the budget holds more than the test "
		      "means", slots);
	for (int i = 0; i < N; i++) {
		bodies[i] = malloc(512);
		ck_assert_ptr_nonnull(bodies[i]);
		snprintf(bodies[i], 512, "{\"prompt\":\"The model %d streams the weights of %d "
			 "experts\",\"max_tokens\":10,\"temperature\":0}", i, i * 3);
		post_together(&s, "/v1/completions", &bodies[i], 1, 0, &files[i]);
		alone[i] = file_completion(files[i], "text");
	}
	post_together(&s, "/v1/completions", bodies, N, 0, files);
	for (int i = 0; i < N; i++) {
		char *t = file_completion(files[i], "text");

		ck_assert_msg(!strcmp(t, alone[i]), "request %d of 8: '%s'; alone: '%s'", i, t,
			      alone[i]);
		free(t);
		free(alone[i]);
		free(bodies[i]);
	}
	ck_assert_msg(metric(&s, "moe_batch_tokens_total") > metric(&s, "moe_batches_total"),
		      "the eight requests never shared a step");
	ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

START_TEST(disconnect_mid_stream)
{
	char cmd[8192], bodyf[4200];
	const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"go on\"}],"
			   "\"max_tokens\":4000,\"temperature\":0,\"stream\":true}";
	struct srv s;
	int i;

	srv_start(&s, "disc", "--ctx", "4096", "--max-tokens", "4000", NULL);
	snprintf(bodyf, sizeof(bodyf), "%s/disc.json", dir);
	ck_assert_int_eq(tu_write_file(bodyf, body, strlen(body)), 0);
	/* head takes the first bytes and leaves: curl dies of SIGPIPE, the socket closes */
	snprintf(cmd, sizeof(cmd), "curl -sSN --max-time 60 --data-binary @%s "
		 "http://127.0.0.1:%d/v1/chat/completions | head -c 300 >/dev/null", bodyf, s.port);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	for (i = 0; i < 200 && metric(&s, "moe_cancelled_total") < 1; i++)
		usleep(50000);
	ck_assert_msg(metric(&s, "moe_cancelled_total") == 1, "the request was not cancelled");
	for (i = 0; i < 200 && metric(&s, "moe_sequences_running") != 0; i++)
		usleep(50000);
	ck_assert_msg(metric(&s, "moe_sequences_running") == 0, "the sequence was not freed");
	ck_assert_msg(metric(&s, "moe_completion_tokens_total") < 4000,
		      "the whole reply was generated for nobody");
	ck_assert_int_eq(req(&s, NULL, "/health", NULL, NULL), 200);
	ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

START_TEST(bounded_load)
{
	enum { N = 16 };
	char cmd[32768], bodyf[4200], *out;
	const char *body = "{\"prompt\":\"load\",\"max_tokens\":48,\"temperature\":0}";
	int ok = 0, busy = 0;
	struct srv s;
	size_t off = 0;

	srv_start(&s, "load", "--parallel", "2", "--queue", "2", NULL);
	snprintf(bodyf, sizeof(bodyf), "%s/load.json", dir);
	ck_assert_int_eq(tu_write_file(bodyf, body, strlen(body)), 0);
	for (int i = 0; i < N; i++)
		off += (size_t)snprintf(cmd + off, sizeof(cmd) - off, "curl -sS --max-time 60 -D "
					"%s/load%d.h -o %s/load%d.out --data-binary @%s "
					"http://127.0.0.1:%d/v1/completions & ", dir, i, dir, i,
					bodyf, s.port);
	snprintf(cmd + off, sizeof(cmd) - off, "wait");
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	for (int i = 0; i < N; i++) {
		char path[4300];
		char *h;
		json_t *v;

		snprintf(path, sizeof(path), "%s/load%d.h", dir, i);
		h = tu_read_file(path, NULL);
		ck_assert_ptr_nonnull(h);
		snprintf(path, sizeof(path), "%s/load%d.out", dir, i);
		out = tu_read_file(path, NULL);
		ck_assert_ptr_nonnull(out);
		v = parse(out);
		if (!strncmp(h, "HTTP/1.1 200", 12)) {
			ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(v,
					 "usage"), "completion_tokens")) > 0, 1);
			ok++;
		} else {
			ck_assert_msg(!strncmp(h, "HTTP/1.1 503", 12) && strstr(h, "Retry-After: "),
				      "neither 200 nor 503 with Retry-After: %s", h);
			ck_assert(json_is_object(json_object_get(v, "error")));
			busy++;
		}
		json_decref(v);
		free(out);
		free(h);
	}
	ck_assert_int_eq(ok + busy, N);
	/* at least the sequences and the queue were served; no more than that were let in at once */
	ck_assert_int_ge(ok, 4);
	ck_assert_int_eq(metric(&s, "moe_rejected_busy_total"), busy);
	ck_assert_int_eq(metric(&s, "moe_queue_depth"), 0);
	ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

START_TEST(sigterm_drains)
{
	char cmd[10000], bodyf[4200], outf[4200], *out;
	const char *body = "{\"prompt\":\"drain\",\"max_tokens\":400,\"temperature\":0}";
	struct srv s;
	json_t *v;
	int i;

	srv_start(&s, "drain", "--ctx", "512", NULL);
	snprintf(bodyf, sizeof(bodyf), "%s/drain.json", dir);
	snprintf(outf, sizeof(outf), "%s/drain.out", dir);
	ck_assert_int_eq(tu_write_file(bodyf, body, strlen(body)), 0);
	snprintf(cmd, sizeof(cmd), "curl -sS --max-time 60 -o %s --data-binary @%s "
		 "http://127.0.0.1:%d/v1/completions & sleep 0.3; kill -TERM %d; wait", outf, bodyf,
		 s.port, (int)s.pid);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	for (i = 0; i < 600 && waitpid(s.pid, NULL, WNOHANG) != s.pid; i++)
		usleep(50000);
	ck_assert_msg(i < 600, "moe-server did not exit after draining");
	out = tu_read_file(outf, NULL);
	ck_assert_ptr_nonnull(out);
	v = parse(out);
	ck_assert_msg(json_integer_value(json_object_get(json_object_get(v, "usage"),
							 "completion_tokens")) > 0, "%s", out);
	json_decref(v);
	free(out);
}
END_TEST

static const char weather_tools[] =
	"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
	"\"description\":\"Current weather\",\"parameters\":{\"type\":\"object\",\"properties\":"
	"{\"city\":{\"type\":\"string\"}},\"required\":[\"city\"]}}}]";

/* A streamed chat reply put back together: reasoning, content and the calls. */
struct streamed {
	char reasoning[1024], content[1024];
	char name[8][64], args[8][256], id[8][64];
	int n_calls, events;
	char finish[32];
};

static void sse_collect(char *body, struct streamed *st)
{
	char *line, *save = NULL;
	bool done = false;

	memset(st, 0, sizeof(*st));
	for (line = strtok_r(body, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		json_t *v, *c, *d, *calls, *tc;
		size_t i;

		ck_assert_msg(!done && !strncmp(line, "data: ", 6), "bad SSE line: %s", line);
		if (!strcmp(line + 6, "[DONE]")) {
			done = true;
			continue;
		}
		v = parse(line + 6);
		c = json_array_get(json_object_get(v, "choices"), 0);
		d = json_object_get(c, "delta");
		ck_assert_msg(json_object_size(d) || json_is_string(json_object_get(c,
			      "finish_reason")), "an empty delta before the end: %s", line);
		if (json_is_string(json_object_get(d, "reasoning_content")))
			strncat(st->reasoning, json_string_value(json_object_get(d,
				"reasoning_content")), sizeof(st->reasoning) - strlen(st->reasoning) - 1);
		if (json_is_string(json_object_get(d, "content")))
			strncat(st->content, json_string_value(json_object_get(d, "content")),
				sizeof(st->content) - strlen(st->content) - 1);
		calls = json_object_get(d, "tool_calls");
		json_array_foreach(calls, i, tc) {
			int idx = (int)json_integer_value(json_object_get(tc, "index"));
			json_t *fn = json_object_get(tc, "function");

			ck_assert_int_eq(idx, st->n_calls);
			ck_assert_int_lt(idx, 8);
			snprintf(st->name[idx], sizeof(st->name[idx]), "%s",
				 json_string_value(json_object_get(fn, "name")));
			snprintf(st->args[idx], sizeof(st->args[idx]), "%s",
				 json_string_value(json_object_get(fn, "arguments")));
			snprintf(st->id[idx], sizeof(st->id[idx]), "%s",
				 json_string_value(json_object_get(tc, "id")));
			st->n_calls++;
		}
		if (json_is_string(json_object_get(c, "finish_reason")))
			snprintf(st->finish, sizeof(st->finish), "%s",
				 json_string_value(json_object_get(c, "finish_reason")));
		st->events++;
		json_decref(v);
	}
	ck_assert_msg(done, "the stream did not end in data: [DONE]");
}

/* A server whose every reply is @reply (the test hook), not the random model's. */
static void srv_start_reply(struct srv *s, const char *name, const char *reply)
{
	setenv("MOE_SERVER_TEST_REPLY", reply, 1);
	srv_start(s, name, NULL);
	unsetenv("MOE_SERVER_TEST_REPLY");
}

/*
 * Tools end to end on the ChatML (Qwen3) model: the rendered prompt of a
 * conversation with tools, a call and its result (/apply-template, and a
 * real completion over it), then replies injected by the test hook parsed
 * into reasoning, content and calls, whole and streamed.
 */
START_TEST(tool_calls)
{
	char body[4096], *out, *p;
	struct streamed st;
	struct srv s;
	json_t *v, *m, *c;

	srv_start(&s, "tools", NULL);
	snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather?\"},"
		 "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":\"call_1\","
		 "\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":"
		 "\"{\\\"city\\\":\\\"Paris\\\"}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"call_1\","
		 "\"content\":\"21 C\"}],%s,\"max_tokens\":4,\"temperature\":0}", weather_tools);
	ck_assert_int_eq(req(&s, NULL, "/apply-template", body, &out), 200);
	v = parse(out);
	p = (char *)json_string_value(json_object_get(v, "prompt"));
	ck_assert_msg(p && strstr(p, "<tools>\n{\"type\": \"function\", \"function\": {\"name\": "
				   "\"get_weather\"") &&
		      strstr(p, "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", "
				"\"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n") &&
		      strstr(p, "<|im_start|>user\n<tool_response>\n21 C\n</tool_response>"
				"<|im_end|>\n<|im_start|>assistant\n"), "%s", out);
	json_decref(v);
	free(out);
	/* the model itself over that prompt: a well-formed answer, whatever its words */
	ck_assert_int_eq(req(&s, NULL, "/v1/chat/completions", body, &out), 200);
	v = parse(out);
	c = json_array_get(json_object_get(v, "choices"), 0);
	ck_assert_msg(json_is_string(json_object_get(c, "finish_reason")) &&
		      json_object_get(json_object_get(c, "message"), "content"), "%s", out);
	ck_assert_int_gt(json_integer_value(json_object_get(json_object_get(v, "usage"),
							    "prompt_tokens")), 100);
	json_decref(v);
	free(out);
	expect_error(&s, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":"
		     "\"a\"}],\"tool_choice\":\"required\"}", 400, "tool_choice", "no function");
	expect_error(&s, "/v1/chat/completions", "{\"messages\":[{\"role\":\"tool\",\"content\":"
		     "\"a\"}]}", 400, "messages[0].tool_call_id", "missing");
	ck_assert_int_eq(srv_stop(&s), 0);

	srv_start_reply(&s, "tools-reply", "<think>\nThe user asks the weather.\n</think>\n\n"
			"I will check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
			"{\"city\": \"Paris\"}}\n</tool_call>");
	snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather?\"}],"
		 "%s,\"max_tokens\":200}", weather_tools);
	ck_assert_int_eq(req(&s, NULL, "/v1/chat/completions", body, &out), 200);
	v = parse(out);
	c = json_array_get(json_object_get(v, "choices"), 0);
	m = json_object_get(c, "message");
	ck_assert_str_eq(json_string_value(json_object_get(c, "finish_reason")), "tool_calls");
	ck_assert_str_eq(json_string_value(json_object_get(m, "content")), "I will check.");
	ck_assert_str_eq(json_string_value(json_object_get(m, "reasoning_content")),
			 "The user asks the weather.");
	c = json_array_get(json_object_get(m, "tool_calls"), 0);
	ck_assert_int_eq(json_array_size(json_object_get(m, "tool_calls")), 1);
	ck_assert_str_eq(json_string_value(json_object_get(c, "type")), "function");
	ck_assert(!strncmp(json_string_value(json_object_get(c, "id")), "call_", 5));
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(c, "function"),
							   "name")), "get_weather");
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(c, "function"),
							   "arguments")), "{\"city\":\"Paris\"}");
	json_decref(v);
	free(out);
	/* streamed: the same parts in deltas, each call once with its index */
	snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather?\"}],"
		 "%s,\"max_tokens\":200,\"stream\":true}", weather_tools);
	ck_assert_int_eq(req(&s, "-N", "/v1/chat/completions", body, &out), 200);
	sse_collect(out, &st);
	free(out);
	ck_assert_str_eq(st.reasoning, "The user asks the weather.");
	ck_assert_str_eq(st.content, "I will check.");
	ck_assert_int_eq(st.n_calls, 1);
	ck_assert_str_eq(st.name[0], "get_weather");
	ck_assert_str_eq(st.args[0], "{\"city\":\"Paris\"}");
	ck_assert_str_eq(st.finish, "tool_calls");
	ck_assert_int_gt(st.events, 3);
	/* without tools the same words are content, the reasoning still apart */
	ck_assert_int_eq(req(&s, NULL, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\","
			     "\"content\":\"hi\"}],\"max_tokens\":200}", &out), 200);
	v = parse(out);
	c = json_array_get(json_object_get(v, "choices"), 0);
	m = json_object_get(c, "message");
	ck_assert_str_eq(json_string_value(json_object_get(c, "finish_reason")), "stop");
	ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(m, "content")),
				     "<tool_call>"));
	ck_assert_ptr_null(json_object_get(m, "tool_calls"));
	json_decref(v);
	free(out);
	ck_assert_int_eq(srv_stop(&s), 0);

	/* a named tool_choice: the prompt opened the call, the reply only finishes it */
	srv_start_reply(&s, "tools-named", "{\"city\": \"Rome\"}}\n</tool_call>");
	snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":\"Weather?\"}],"
		 "%s,\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}},"
		 "\"max_tokens\":200,\"stream\":true}", weather_tools);
	ck_assert_int_eq(req(&s, "-N", "/v1/chat/completions", body, &out), 200);
	sse_collect(out, &st);
	free(out);
	ck_assert_int_eq(st.n_calls, 1);
	ck_assert_str_eq(st.name[0], "get_weather");
	ck_assert_str_eq(st.args[0], "{\"city\":\"Rome\"}");
	ck_assert_str_eq(st.content, "");
	ck_assert_str_eq(st.finish, "tool_calls");
	ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

/* Code points of a UTF-8 string (what maxLength counts). */
static size_t utf8_chars(const json_t *s)
{
	size_t n = 0;

	for (const char *p = json_string_value(s); *p; p++)
		n += ((unsigned char)*p & 0xc0) != 0x80;
	return n;
}

/* Whether @args (JSON text) is an object valid for forced_tools' get_weather or search. */
static void check_forced_args(const char *name, const char *args)
{
	json_t *a = parse(args), *city = json_object_get(a, "city"), *q = json_object_get(a, "q");

	ck_assert_msg(json_is_object(a), "arguments not an object: %s", args);
	if (!strcmp(name, "get_weather")) {
		ck_assert_msg(json_is_string(city) && utf8_chars(city) <= 8 &&
			      json_is_integer(json_object_get(a, "days")) && json_object_size(a) == 2,
			      "get_weather's arguments break its schema: %s", args);
	} else {
		ck_assert_str_eq(name, "search");
		ck_assert_msg(json_is_string(q) && (!strcmp(json_string_value(q), "a") ||
			      !strcmp(json_string_value(q), "b")) && json_object_size(a) == 1,
			      "search's arguments break its schema: %s", args);
	}
	json_decref(a);
}

/*
 * tool_choice "required" and a named function enforced while sampling, on
 * the generated model of every chat format with tool calls: the random
 * weights would never write a call, so every reply that is one (of the named
 * function, with arguments valid for its schema, whole and streamed) shows
 * the grammar at work.  A schema the grammar cannot hold is a 400 naming it.
 */
START_TEST(forced_tool_calls)
{
	static const char forced_tools[] =
		"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
		"\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\","
		"\"maxLength\":8},\"days\":{\"type\":\"integer\"}},\"required\":[\"city\",\"days\"],"
		"\"additionalProperties\":false}}},{\"type\":\"function\",\"function\":{\"name\":"
		"\"search\",\"parameters\":{\"type\":\"object\",\"properties\":{\"q\":{\"enum\":"
		"[\"a\",\"b\"]}},\"required\":[\"q\"]}}}]";
	static const char *const arches[] = { "qwen3moe", "llama4", "mixtral", "gpt-oss",
					      "gemma4" };
	static const char *const choices[] = {
		"\"required\"",
		"{\"type\":\"function\",\"function\":{\"name\":\"search\"}}",
		"{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}",
	};
	char body[4096], cmd[8400], *out;
	struct streamed st;
	struct srv s;

	for (size_t a = 0; a < sizeof(arches) / sizeof(arches[0]); a++) {
		if (a) {
			snprintf(model, sizeof(model), "%s/%s.gguf", dir, arches[a]);
			snprintf(cmd, sizeof(cmd), "%s --arch %s --vocab-bpe -q -o %s",
				 tu_bin("moe-mkmodel"), arches[a], model);
			ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
		}
		srv_start(&s, arches[a], NULL);
		for (size_t c = 0; c < sizeof(choices) / sizeof(choices[0]); c++) {
			json_t *v, *ch, *calls, *fn;

			snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":"
				 "\"Weather?\"}],%s,\"tool_choice\":%s,\"max_tokens\":200,"
				 "\"temperature\":%s,\"seed\":%zu}", forced_tools, choices[c],
				 c ? "0" : "1", a);
			ck_assert_int_eq(req(&s, NULL, "/v1/chat/completions", body, &out), 200);
			v = parse(out);
			ch = json_array_get(json_object_get(v, "choices"), 0);
			calls = json_object_get(json_object_get(ch, "message"), "tool_calls");
			ck_assert_msg(json_array_size(calls) == 1, "%s %s: %s", arches[a],
				      choices[c], out);
			ck_assert_str_eq(json_string_value(json_object_get(ch, "finish_reason")),
					 "tool_calls");
			fn = json_object_get(json_array_get(calls, 0), "function");
			if (c)
				ck_assert_str_eq(json_string_value(json_object_get(fn, "name")),
						 c == 1 ? "search" : "get_weather");
			check_forced_args(json_string_value(json_object_get(fn, "name")),
					  json_string_value(json_object_get(fn, "arguments")));
			json_decref(v);
			free(out);
		}
		/* cut by max_tokens before the call is whole: length, and no call */
		snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":"
			 "\"Weather?\"}],%s,\"tool_choice\":%s,\"max_tokens\":2}", forced_tools,
			 choices[0]);
		ck_assert_int_eq(req(&s, NULL, "/v1/chat/completions", body, &out), 200);
		{
			json_t *v = parse(out), *ch = json_array_get(json_object_get(v, "choices"), 0);

			ck_assert_str_eq(json_string_value(json_object_get(ch, "finish_reason")),
					 "length");
			ck_assert_ptr_null(json_object_get(json_object_get(ch, "message"),
							   "tool_calls"));
			json_decref(v);
		}
		free(out);
		/* streamed: the call comes whole in one delta */
		snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":"
			 "\"Weather?\"}],%s,\"tool_choice\":%s,\"max_tokens\":200,\"temperature\":0,"
			 "\"stream\":true}", forced_tools, choices[2]);
		ck_assert_int_eq(req(&s, "-N", "/v1/chat/completions", body, &out), 200);
		sse_collect(out, &st);
		free(out);
		ck_assert_int_eq(st.n_calls, 1);
		ck_assert_str_eq(st.name[0], "get_weather");
		check_forced_args(st.name[0], st.args[0]);
		ck_assert_str_eq(st.finish, "tool_calls");
		/*
		 * harmony picks the name in a stage of its own (the markers after it are
		 * fed, not sampled): one name a prefix of another, sampled for a few seeds
		 */
		for (int seed = 1; !strcmp(arches[a], "gpt-oss") && seed <= 4; seed++) {
			json_t *v, *ch, *fn;
			const char *name;

			snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":"
				 "\"Weather?\"}],\"tools\":[{\"type\":\"function\",\"function\":"
				 "{\"name\":\"search\",\"parameters\":{\"type\":\"object\","
				 "\"properties\":{\"q\":{\"enum\":[\"a\",\"b\"]}},\"required\":[\"q\"]}}},"
				 "{\"type\":\"function\",\"function\":{\"name\":\"search_more\","
				 "\"parameters\":{\"type\":\"object\",\"properties\":{\"q\":{\"enum\":"
				 "[\"a\",\"b\"]}},\"required\":[\"q\"]}}}],\"tool_choice\":\"required\","
				 "\"max_tokens\":200,\"temperature\":1.5,\"seed\":%d}", seed);
			ck_assert_int_eq(req(&s, NULL, "/v1/chat/completions", body, &out), 200);
			v = parse(out);
			ch = json_array_get(json_object_get(v, "choices"), 0);
			fn = json_object_get(json_array_get(json_object_get(json_object_get(ch,
				"message"), "tool_calls"), 0), "function");
			name = json_string_value(json_object_get(fn, "name"));
			ck_assert_msg(name && (!strcmp(name, "search") || !strcmp(name, "search_more")),
				      "%s", out);
			check_forced_args("search", json_string_value(json_object_get(fn,
									      "arguments")));
			ck_assert_str_eq(json_string_value(json_object_get(ch, "finish_reason")),
					 "tool_calls");
			json_decref(v);
			free(out);
		}
		/* many functions (of no arguments) to choose from: a call of one of them */
		if (!strcmp(arches[a], "gpt-oss") || !a) {
			size_t o = (size_t)snprintf(body, sizeof(body), "{\"messages\":[{\"role\":"
						    "\"user\",\"content\":\"Hi\"}],\"tools\":[");
			json_t *v, *fn;

			for (int f = 0; f < 12; f++)
				o += (size_t)snprintf(body + o, sizeof(body) - o, "%s{\"type\":\"function\","
						      "\"function\":{\"name\":\"fn_%d\",\"parameters\":"
						      "{\"type\":\"object\",\"additionalProperties\":"
						      "false}}}",
						      f ? "," : "", f);
			snprintf(body + o, sizeof(body) - o, "],\"tool_choice\":\"required\","
				 "\"max_tokens\":100,\"temperature\":0}");
			ck_assert_int_eq(req(&s, NULL, "/v1/chat/completions", body, &out), 200);
			v = parse(out);
			fn = json_object_get(json_array_get(json_object_get(json_object_get(
				json_array_get(json_object_get(v, "choices"), 0), "message"),
				"tool_calls"), 0), "function");
			ck_assert_msg(!strncmp(json_string_value(json_object_get(fn, "name")) ?
					       json_string_value(json_object_get(fn, "name")) : "",
					       "fn_", 3), "%s", out);
			json_decref(v);
			free(out);
		}
		if (!a) {
			expect_error(&s, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\","
				     "\"content\":\"a\"}],\"tools\":[{\"type\":\"function\",\"function\":"
				     "{\"name\":\"f\",\"parameters\":{\"type\":\"object\",\"properties\":"
				     "{\"x\":{\"type\":\"string\",\"pattern\":\"^a\"}}}}}],"
				     "\"tool_choice\":\"required\"}", 400,
				     "tools[0].function.parameters", "pattern");
			snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":"
				 "\"a\"}],%s,\"tool_choice\":\"required\",\"response_format\":"
				 "{\"type\":\"json_object\"}}", forced_tools);
			expect_error(&s, "/v1/chat/completions", body, 400, "response_format",
				     "leave one out");
		}
		ck_assert_int_eq(srv_stop(&s), 0);
	}
}
END_TEST

/*
 * The engine options are moe-run's, parsed by the same code: the server
 * starts with each (and serves), and a bad value gets moe-run's words.
 */
START_TEST(engine_options)
{
	static const char *const good[][2] = {
		{ "--vram", "64M" }, { "--host-cache", "16M" }, { "--ple-cache", "1M" },
		{ "--policy", "lfu:decay=0.9" }, { "--prefetch", "mix:depth=2,min=0.6" },
		{ "--pin-hot", "2" }, { "--layer-pools", NULL }, { "--state-dir", "@" },
		{ "--no-state", NULL }, { "--backend", "cpu" }, { "--kv-type", "f16" },
		{ "--batch", "16" }, { "--io", "pread" }, { "--no-direct", NULL },
		{ "--gds", "off" },
	};
	static const char *const bad_values[][2] = {
		{ "--io", "mmap" }, { "--kv-type", "q4_K" }, { "--vram", "1Q" },
		{ "--host-cache", "-1" }, { "--ple-cache", "0" }, { "--threads", "-1" },
		{ "--backend", "" }, { "--pin-hot", "x" }, { "--batch", "1e3" },
		{ "--state-dir", "" }, { "--gds", "yes" },
	};
	char cmd[8192], state[4200], *a, *b, *p;

	snprintf(state, sizeof(state), "%s/state", dir);
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		const char *val = good[i][1] && !strcmp(good[i][1], "@") ? state : good[i][1];
		char name[32], *out;
		struct srv s;

		/* a log of its own: the last server's would still name its port */
		snprintf(name, sizeof(name), "engine%zu", i);
		srv_start(&s, name, good[i][0], val, NULL);
		ck_assert_msg(req(&s, NULL, "/v1/completions", "{\"prompt\":[1,2],"
				  "\"max_tokens\":2}", &out) == 200, "%s %s: %s", good[i][0],
			      val ? val : "", out);
		free(out);
		ck_assert_int_eq(srv_stop(&s), 0);
	}
	for (size_t i = 0; i < sizeof(bad_values) / sizeof(bad_values[0]); i++) {
		snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1 %s '%s'", tu_bin("moe-run"), model,
			 bad_values[i][0], bad_values[i][1]);
		ck_assert_int_eq(tu_run(cmd, 1, &a), 2);
		snprintf(cmd, sizeof(cmd), "%s -m %s %s '%s'", tu_bin("moe-server"), model,
			 bad_values[i][0], bad_values[i][1]);
		ck_assert_int_eq(tu_run(cmd, 1, &b), 2);
		/* the same message but for the program's name */
		ck_assert_msg(!strncmp(a, "moe-run: ", 9) && !strncmp(b, "moe-server: ", 12),
			      "%s | %s", a, b);
		p = strchr(a, '\n');
		ck_assert_ptr_nonnull(p);
		ck_assert_msg(!strncmp(a + 9, b + 12, (size_t)(p - a) - 8), "moe-run: %s "
			      "moe-server: %s", a, b);
		ck_assert_msg(strstr(a, bad_values[i][0]), "%s", a);
		free(a);
		free(b);
	}
	snprintf(cmd, sizeof(cmd), "%s --help", tu_bin("moe-server"));
	ck_assert_int_eq(tu_run(cmd, 0, &a), 0);
	snprintf(cmd, sizeof(cmd), "%s --help", tu_bin("moe-run"));
	ck_assert_int_eq(tu_run(cmd, 0, &b), 0);
	/* one help text for the engine, the same in both */
	ck_assert_ptr_nonnull(strstr(a, "Engine:\n"));
	ck_assert_str_eq(strstr(a, "Engine:\n"), strstr(b, "Engine:\n"));
	free(a);
	free(b);
}
END_TEST

/* ---------------------------------------------------------- optional tools */

/* The pinned client; its cache is outside the tree: $MOE_NPM_CACHE or ~/.cache/moe-npm. */
#define OPENAI_NPM "openai@6.49.0"
static char npm_dir[4096];

static bool suite_selected(void)
{
	const char *s = getenv("CK_RUN_SUITE");

	return !s || !strcmp(s, "server");
}

/* NULL when the OpenAI client is installed (in npm_dir), else why not. */
static const char *prepare_openai(void)
{
	static char why[4400];
	const char *cache = getenv("MOE_NPM_CACHE"), *home = getenv("HOME");
	char cmd[13000], pkg[4200];

	if (tu_run("command -v node && command -v npm", 0, NULL))
		return "node and npm are not both installed (Debian: apt-get install nodejs npm)";
	if (tu_run("node -e 'process.exit(+process.versions.node.split(\".\")[0] >= 18 ? 0 : 1)'",
		   0, NULL))
		return "node is older than 18, which the openai package needs";
	if (cache)
		snprintf(npm_dir, sizeof(npm_dir), "%s/" OPENAI_NPM, cache);
	else if (home)
		snprintf(npm_dir, sizeof(npm_dir), "%s/.cache/moe-npm/" OPENAI_NPM, home);
	else
		return "neither MOE_NPM_CACHE nor HOME names a cache directory for npm";
	snprintf(pkg, sizeof(pkg), "%s/node_modules/openai/package.json", npm_dir);
	if (!access(pkg, R_OK))
		return NULL;
	snprintf(cmd, sizeof(cmd), "mkdir -p '%s' && timeout 300 npm install --no-audit --no-fund "
		 "--no-save --prefix '%s' " OPENAI_NPM " >'%s/npm.log' 2>&1", npm_dir, npm_dir,
		 npm_dir);
	if (tu_run(cmd, 0, NULL) || access(pkg, R_OK)) {
		snprintf(why, sizeof(why), "npm could not install " OPENAI_NPM " (no registry "
			 "here?): see %.4000s/npm.log", npm_dir);
		return why;
	}
	return NULL;
}

/*
 * The official OpenAI client for JavaScript against the server: models, chat
 * (whole and streamed), completions, and its error classes for a wrong key
 * and an unknown field.
 */
START_TEST(openai_js_client)
{
	char cmd[9000], url[64], *out;
	struct srv s;
	int ret;

	srv_start(&s, "openai", "--api-key", "sk-moe-test", NULL);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", s.port);
	snprintf(cmd, sizeof(cmd), "NODE_PATH='%s/node_modules' timeout 120 node %s %s sk-moe-test",
		 npm_dir, tu_src("tests/server/openai-client.cjs"), url);
	ret = tu_run(cmd, 1, &out);
	ck_assert_msg(ret == 0 && !strncmp(out, "ok ", 3), "the OpenAI client: %s", out);
	free(out);
	ck_assert_int_eq(srv_stop(&s), 0);
}
END_TEST

/* NULL when haproxy runs here (installed from Debian if need be), else why not. */
static const char *prepare_haproxy(void)
{
	if (!tu_run("command -v haproxy", 0, NULL))
		return NULL;
	if (geteuid())
		return "haproxy is not installed and installing it needs root (apt-get install "
		       "haproxy)";
	if (tu_run("DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q haproxy "
		   ">/dev/null 2>&1 || (timeout 300 apt-get update -q >/dev/null 2>&1 && "
		   "DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -q haproxy "
		   ">/dev/null 2>&1)", 0, NULL) || tu_run("command -v haproxy", 0, NULL))
		return "apt-get could not install haproxy (no package archive here?)";
	return NULL;
}

static int free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

/* One completion through the balancer: the instance that answered ("a", "b"), or "" on failure. */
static void via(const struct srv *lb, char *who, size_t n)
{
	char cmd[256], *out = NULL;
	json_t *v = NULL;

	snprintf(cmd, sizeof(cmd), "curl -s --max-time 60 -H 'Content-Type: application/json' "
		 "-d '{\"prompt\":[1,2,3],\"max_tokens\":2}' http://127.0.0.1:%d/v1/completions",
		 lb->port);
	/* a balancer not listening yet, or an error page, is a failure, not a crash */
	if (tu_run(cmd, 0, &out) == 0)
		v = json_loads(out, 0, NULL);
	snprintf(who, n, "%s", json_string_value(json_object_get(v, "model")) ?
		 json_string_value(json_object_get(v, "model")) : "");
	json_decref(v);
	free(out);
}

/*
 * Past one GPU: two servers behind HAProxy with /health checks (the
 * configuration of Documentation/deploy.rst).  Requests spread over both;
 * one killed leaves the rotation, and no request fails but one in flight.
 */
START_TEST(haproxy_two_instances)
{
	char cfg[4200], conf[2048], who[32], *text;
	struct srv a, b, lb = { 0 };
	int n_a = 0, n_b = 0, failed = 0;
	pid_t slow;

	srv_start(&a, "lb-a", "--alias", "a", NULL);
	srv_start(&b, "lb-b", "--alias", "b", NULL);
	lb.port = free_port();
	snprintf(conf, sizeof(conf),
		 "global\n  maxconn 256\n"
		 "defaults\n  mode http\n  timeout connect 2s\n  timeout client 120s\n"
		 "  timeout server 120s\n  retries 2\n  option redispatch\n"
		 "  retry-on conn-failure empty-response\n"
		 "frontend moe\n  bind 127.0.0.1:%d\n  default_backend moe_servers\n"
		 "backend moe_servers\n  balance roundrobin\n  option httpchk GET /health\n"
		 "  http-check expect status 200\n  default-server inter 200ms fall 2 rise 2\n"
		 "  server a 127.0.0.1:%d check\n  server b 127.0.0.1:%d check\n",
		 lb.port, a.port, b.port);
	snprintf(cfg, sizeof(cfg), "%s/haproxy.cfg", dir);
	ck_assert_int_eq(tu_write_file(cfg, conf, strlen(conf)), 0);
	snprintf(lb.err, sizeof(lb.err), "%s/haproxy.err", dir);
	lb.pid = fork();
	ck_assert_int_ge(lb.pid, 0);
	if (!lb.pid) {
		int fd = open(lb.err, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		dup2(fd, 1);
		dup2(fd, 2);
		execlp("haproxy", "haproxy", "-db", "-f", cfg, (char *)NULL);
		_exit(127);
	}
	/* up once both checks passed: each instance answers in turn */
	for (int i = 0; i < 100 && !(n_a && n_b); i++) {
		usleep(100000);
		via(&lb, who, sizeof(who));
		n_a += !strcmp(who, "a");
		n_b += !strcmp(who, "b");
	}
	text = tu_read_file(lb.err, NULL);
	ck_assert_msg(n_a && n_b, "requests did not reach both instances: %d a, %d b (haproxy: "
		      "%.500s)", n_a, n_b, text ? text + (strlen(text) > 500 ?
		      strlen(text) - 500 : 0) : "");
	free(text);
	n_a = n_b = 0;
	for (int i = 0; i < 8; i++) {
		via(&lb, who, sizeof(who));
		n_a += !strcmp(who, "a");
		n_b += !strcmp(who, "b");
	}
	ck_assert_msg(n_a == 4 && n_b == 4, "round robin gave %d to a, %d to b", n_a, n_b);

	/* a long request in flight, then instance a dies */
	slow = fork();
	ck_assert_int_ge(slow, 0);
	if (!slow) {
		char c[256];

		snprintf(c, sizeof(c), "curl -s -o /dev/null --max-time 60 http://127.0.0.1:%d"
			 "/v1/completions -d '{\"prompt\":[1,2],\"max_tokens\":400}'", lb.port);
		_exit(tu_run(c, 0, NULL) ? 1 : 0);
	}
	usleep(300000);
	kill(a.pid, SIGKILL);
	waitpid(a.pid, NULL, 0);
	n_a = n_b = 0;
	for (int i = 0; i < 20; i++) {
		via(&lb, who, sizeof(who));
		failed += !*who;
		n_a += !strcmp(who, "a");
		n_b += !strcmp(who, "b");
		usleep(50000);
	}
	waitpid(slow, NULL, 0);
	ck_assert_msg(failed == 0 && n_a == 0 && n_b == 20, "after a was killed: %d failed, "
		      "%d from a, %d from b", failed, n_a, n_b);
	kill(lb.pid, SIGTERM);
	waitpid(lb.pid, NULL, 0);
	ck_assert_int_eq(srv_stop(&b), 0);
}
END_TEST

static int parse_str(enum api_kind k, const char *body, const struct api_limits *lim,
		     struct api_request *r, struct api_error *e)
{
	return api_parse_request(k, body, strlen(body), lim, r, e);
}

/* The request parser alone: fields, types, limits. */
START_TEST(parser)
{
	struct api_limits lim = { .max_tokens = 100, .max_messages = 4 };
	struct api_request r;
	struct api_error e;
	const char *ok = "{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":"
			 "[{\"type\":\"text\",\"text\":\"be \"},{\"type\":\"text\",\"text\":"
			 "\"brief\"}]},{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":9,"
			 "\"stop\":\"x\",\"seed\":-3,\"top_k\":5,\"stream\":true,\"user\":\"u\","
			 "\"presence_penalty\":0,\"stream_options\":{\"include_usage\":true}}";

	ck_assert_int_eq(api_parse_request(API_CHAT, ok, strlen(ok), &lim, &r, &e), 0);
	ck_assert_int_eq(r.n_msgs, 2);
	ck_assert_str_eq(r.msgs[0].role, "system");
	ck_assert_str_eq(r.msgs[0].content, "be brief");
	ck_assert_int_eq(r.max_tokens, 9);
	ck_assert_int_eq(r.n_stop, 1);
	ck_assert(r.stream && r.has_seed && r.sp.top_k == 5);
	ck_assert(r.sp.temp == 1.0f);
	api_request_free(&r);
	ck_assert_int_eq(parse_str(API_COMPLETION, "{\"prompt\":\"a\",\"messages\":[]}", &lim, &r,
				   &e), -EINVAL);
	ck_assert_str_eq(e.param, "messages");
	ck_assert_int_eq(parse_str(API_COMPLETION, "{\"prompt\":\"a\",\"stop\":[\"1\",\"2\",\"3\","
				   "\"4\",\"5\"]}", &lim, &r, &e), -EINVAL);
	ck_assert_str_eq(e.param, "stop");
	ck_assert_int_eq(parse_str(API_COMPLETION, "{\"prompt\":\"a\\u0000b\"}", &lim, &r, &e),
			 -EINVAL);
	ck_assert_int_eq(e.status, 400);
}
END_TEST

Suite *suite_server(void)
{
	Suite *s = suite_create("server");
	TCase *tc = tcase_create("server");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 300);
	tcase_add_test(tc, parser);
	tcase_add_test(tc, endpoints_and_errors);
	tcase_add_test(tc, api_key);
	tcase_add_test(tc, streaming);
	tcase_add_test(tc, concurrent_equals_alone);
	tcase_add_test(tc, prefill_grouped);
	tcase_add_test(tc, parallel_8_few_slots);
	tcase_add_test(tc, disconnect_mid_stream);
	tcase_add_test(tc, bounded_load);
	tcase_add_test(tc, sigterm_drains);
	tcase_add_test(tc, engine_options);
	tcase_add_test(tc, tool_calls);
	tcase_add_test(tc, forced_tool_calls);
	if (suite_selected()) {
		const char *why = prepare_openai();

		if (why)
			tu_skip("server openai_js_client", why);
		else
			tcase_add_test(tc, openai_js_client);
		why = prepare_haproxy();
		if (why)
			tu_skip("server haproxy_two_instances", why);
		else
			tcase_add_test(tc, haproxy_two_instances);
	}
	suite_add_tcase(s, tc);
	return s;
}
