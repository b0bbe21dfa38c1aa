// SPDX-License-Identifier: MIT
/*
 * The HTTP front on libmicrohttpd: a thread per connection, which blocks on
 * its request's progress (never on another's) and watches its socket so a
 * client that hangs up frees its sequence at once.  Only the API's paths
 * are answered; nothing is ever read from the file system.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "server.h"

#if MHD_VERSION < 0x00097002
typedef int MHD_RESULT_T;
#else
typedef enum MHD_Result MHD_RESULT_T;
#endif

/* Seconds a connection may sit idle (sending its request slowly, or kept alive). */
#define IDLE_TIMEOUT_S ((unsigned int)60)

struct conn {
	struct server *s;
	char *body;
	size_t len;
	bool too_big;
	int fd;
	enum api_kind kind;
	struct job *job;
	char id[48];
	long long created;
	/* streaming */
	char *out;              /* the event being sent */
	size_t out_len, out_off;
	size_t sent;            /* bytes of the job's text sent */
	bool started, ended;
	/* a parsed chat reply (job->fmt): what of its parts was sent */
	size_t sent_reasoning, sent_content, sent_calls;
	char (*call_ids)[40];
	size_t n_call_ids;
};

/* Whether the client hung up (or the socket failed). */
static bool client_gone(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
	char c;

	if (fd < 0 || poll(&p, 1, 0) <= 0)
		return false;
	if (p.revents & (POLLHUP | POLLERR | POLLRDHUP))
		return true;
	/* readable with nothing to read: end of file */
	return recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static MHD_RESULT_T send_body(struct MHD_Connection *c, int status, const char *type, char *body)
{
	struct MHD_Response *r;
	MHD_RESULT_T ret;

	if (!body)
		return MHD_NO;
	r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", type);
	if (status == 503)
		MHD_add_response_header(r, "Retry-After", "1");
	if (status == 401)
		MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
	ret = MHD_queue_response(c, (unsigned int)status, r);
	MHD_destroy_response(r);
	return ret;
}

static void count(struct server *s, int status)
{
	int k = status < 300 ? 0 : status == 400 ? 1 : status == 401 ? 2 : status == 413 ? 4 :
		status == 503 ? 5 : 3;

	pthread_mutex_lock(&s->lock);
	s->m.requests[k]++;
	pthread_mutex_unlock(&s->lock);
}

static MHD_RESULT_T send_error(struct server *s, struct MHD_Connection *c,
			       const struct api_error *e)
{
	count(s, e->status);
	return send_body(c, e->status, "application/json", api_error_body(e));
}

static MHD_RESULT_T send_json(struct server *s, struct MHD_Connection *c, int status, json_t *o)
{
	char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;

	json_decref(o);
	count(s, status);
	return send_body(c, status, "application/json", body);
}

/* The API key compared in time that does not depend on where they differ. */
static bool key_ok(const char *want, const char *got)
{
	size_t lw = strlen(want), lg = got ? strlen(got) : 0;
	unsigned char d = lw != lg;

	for (size_t i = 0; i < lw; i++)
		d |= (unsigned char)want[i] ^ (unsigned char)(i < lg ? got[i] : 0);
	return d == 0;
}

static bool authorized(struct server *s, struct MHD_Connection *c)
{
	const char *h;

	if (!s->o.api_key)
		return true;
	h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
	/* --api-key is never empty, so "" never matches */
	return key_ok(s->o.api_key, h && !strncmp(h, "Bearer ", 7) ? h + 7 : "");
}

/* Strings of the job's text as JSON, bytes that are not UTF-8 as U+FFFD. */
static json_t *text_json(const char *p, size_t n)
{
	json_t *v = json_stringn(p, n);
	char *t;

	if (v)
		return v;
	t = malloc(n * 3 + 1);
	if (!t)
		return NULL;
	{
		size_t o = 0;

		for (size_t i = 0; i < n; i++) {
			unsigned char ch = (unsigned char)p[i];

			if (ch < 0x80) {
				t[o++] = (char)ch;
				continue;
			}
			/* keep whole valid sequences, replace the rest */
			size_t len = ch >= 0xf0 && ch <= 0xf4 ? 4 : ch >= 0xe0 ? 3 :
				     ch >= 0xc2 ? 2 : 0;
			json_t *one = len && i + len <= n ? json_stringn(p + i, len) : NULL;

			if (one) {
				json_decref(one);
				memcpy(t + o, p + i, len);
				o += len;
				i += len - 1;
			} else {
				memcpy(t + o, "\xef\xbf\xbd", 3);
				o += 3;
			}
		}
		v = json_stringn(t, o);
	}
	free(t);
	return v;
}

static json_t *usage_json(const struct job *j)
{
	return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)j->n_prompt,
			 "completion_tokens", (json_int_t)j->n_gen, "total_tokens",
			 (json_int_t)(j->n_prompt + j->n_gen));
}

/* A reply in a format with markers, parsed: the prompt's forced start, then the text. */
static int parse_reply(const struct job *j, size_t upto, bool final, struct cf_reply *r)
{
	size_t pl = j->prefix ? strlen(j->prefix) : 0;
	char *all = malloc(pl + upto + 1);
	int ret;

	if (!all)
		return -ENOMEM;
	memcpy(all, j->prefix ? j->prefix : "", pl);
	memcpy(all + pl, j->text ? j->text : "", upto);
	all[pl + upto] = 0;
	ret = cf_parse(j->fmt, j->tools, all, pl + upto, final, r);
	free(all);
	return ret;
}

/* The id of the reply's call @i, made once: "call_" and 24 letters, or 9 for Mistral's. */
static const char *call_id(struct conn *k, size_t i)
{
	static const char abc[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

	while (k->n_call_ids <= i) {
		char (*ids)[40] = realloc(k->call_ids, sizeof(*ids) * (k->n_call_ids + 1));
		char *id;
		uint64_t x;
		size_t n, o = 0;

		if (!ids)
			return "call";
		k->call_ids = ids;
		id = ids[k->n_call_ids];
		x = (uint64_t)now_s() * 1000003u ^ ((uint64_t)(uintptr_t)k << 7) ^
		    ((uint64_t)k->n_call_ids * 0x9e3779b97f4a7c15ull) ^ (uint64_t)random();
		n = k->job->fmt == CF_MISTRAL ? 9 : 24;
		if (k->job->fmt != CF_MISTRAL)
			o = (size_t)snprintf(id, 40, "call_");
		for (size_t c = 0; c < n; c++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			id[o++] = abc[x % (sizeof(abc) - 1)];
		}
		id[o] = 0;
		k->n_call_ids++;
	}
	return k->call_ids[i];
}

static json_t *calls_json(struct conn *k, const struct cf_reply *r, size_t from, bool indexed)
{
	json_t *a = json_array();

	for (size_t i = from; a && i < r->n_calls; i++) {
		json_t *c = json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", call_id(k, i), "type",
				      "function", "function", "name", r->calls[i].name, "arguments",
				      r->calls[i].arguments);

		if (c && indexed)
			json_object_set_new(c, "index", json_integer((json_int_t)i));
		if (!c || json_array_append_new(a, c)) {
			json_decref(a);
			return NULL;
		}
	}
	return a;
}

static const char *finish_reason(const struct job *j, const struct cf_reply *r)
{
	return r && r->n_calls && !strcmp(j->finish, "stop") ? "tool_calls" : j->finish;
}

static json_t *parsed_message(struct conn *k, const struct cf_reply *r)
{
	json_t *m = json_pack("{s:s,s:o}", "role", "assistant", "content",
			      r->content_len || !r->n_calls ?
			      text_json(r->content, r->content_len) : json_null());

	if (m && r->reasoning_len)
		json_object_set_new(m, "reasoning_content",
				    text_json(r->reasoning, r->reasoning_len));
	if (m && r->n_calls)
		json_object_set_new(m, "tool_calls", calls_json(k, r, 0, false));
	return m;
}

static json_t *completion_json(struct conn *k)
{
	struct job *j = k->job;
	json_t *choice;

	if (k->kind == API_CHAT && j->fmt != CF_NONE) {
		struct cf_reply r;

		if (parse_reply(j, j->len, true, &r))
			return NULL;
		choice = json_pack("{s:i,s:o,s:s}", "index", 0, "message", parsed_message(k, &r),
				   "finish_reason", finish_reason(j, &r));
		cf_reply_free(&r);
	} else if (k->kind == API_CHAT)
		choice = json_pack("{s:i,s:{s:s,s:o},s:s}", "index", 0, "message", "role",
				   "assistant", "content", text_json(j->text, j->len),
				   "finish_reason", j->finish);
	else
		choice = json_pack("{s:i,s:o,s:n,s:s}", "index", 0, "text",
				   text_json(j->text, j->len), "logprobs", "finish_reason",
				   j->finish);
	return json_pack("{s:s,s:s,s:I,s:s,s:[o],s:o}", "id", k->id, "object",
			 k->kind == API_CHAT ? "chat.completion" : "text_completion", "created",
			 (json_int_t)k->created, "model", k->s->model_id, "choices", choice,
			 "usage", usage_json(j));
}

/* One SSE event for the text from k->sent to @upto, with finish and usage at the end. */
static char *chunk_event(struct conn *k, size_t upto, bool last)
{
	struct job *j = k->job;
	json_t *text = text_json(j->text + k->sent, upto - k->sent), *choice, *o;
	json_t *fin = last ? json_string(j->finish) : json_null();
	char *s, *ev;

	if (k->kind == API_CHAT && j->fmt != CF_NONE) {
		/* deltas of the parsed reply: each part's new text, each call once complete */
		struct cf_reply r;
		json_t *delta;

		json_decref(text);
		if (parse_reply(j, upto, last, &r))
			return NULL;
		delta = json_object();
		if (delta && r.reasoning_len > k->sent_reasoning) {
			json_object_set_new(delta, "reasoning_content",
					    text_json(r.reasoning + k->sent_reasoning,
						      r.reasoning_len - k->sent_reasoning));
			k->sent_reasoning = r.reasoning_len;
		}
		if (delta && (r.content_len > k->sent_content || !k->started)) {
			json_object_set_new(delta, "content",
					    r.content_len > k->sent_content ?
					    text_json(r.content + k->sent_content,
						      r.content_len - k->sent_content) :
					    json_string(""));
			k->sent_content = r.content_len > k->sent_content ? r.content_len :
					  k->sent_content;
		}
		if (delta && r.n_calls > k->sent_calls) {
			json_object_set_new(delta, "tool_calls", calls_json(k, &r, k->sent_calls,
									    true));
			k->sent_calls = r.n_calls;
		}
		if (delta && !json_object_size(delta) && !last) {
			/* nothing settled yet (a marker or a call coming in): no event */
			json_decref(delta);
			json_decref(fin);
			cf_reply_free(&r);
			k->sent = upto;
			return strdup("");
		}
		if (delta && !k->started)
			json_object_set_new(delta, "role", json_string("assistant"));
		if (last) {
			json_decref(fin);
			fin = json_string(finish_reason(j, &r));
		}
		cf_reply_free(&r);
		choice = json_pack("{s:i,s:o,s:o}", "index", 0, "delta", delta, "finish_reason",
				   fin);
	} else if (k->kind == API_CHAT) {
		json_t *delta = json_pack("{s:o}", "content", text);

		if (!k->started)
			json_object_set_new(delta, "role", json_string("assistant"));
		choice = json_pack("{s:i,s:o,s:o}", "index", 0, "delta", delta, "finish_reason",
				   fin);
	} else {
		choice = json_pack("{s:i,s:o,s:n,s:o}", "index", 0, "text", text, "logprobs",
				   "finish_reason", fin);
	}
	o = json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", k->id, "object",
		      k->kind == API_CHAT ? "chat.completion.chunk" : "text_completion", "created",
		      (json_int_t)k->created, "model", k->s->model_id, "choices", choice);
	if (o && last)
		json_object_set_new(o, "usage", usage_json(j));
	s = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (!s)
		return NULL;
	ev = NULL;
	if (asprintf(&ev, "data: %s\n\n%s", s, last ? "data: [DONE]\n\n" : "") < 0)
		ev = NULL;
	free(s);
	k->sent = upto;
	k->started = true;
	return ev;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct conn *k = cls;
	struct server *s = k->s;
	struct job *j = k->job;
	size_t n;

	(void)pos;
	while (k->out_off == k->out_len) {
		free(k->out);
		k->out = NULL;
		k->out_len = k->out_off = 0;
		if (k->ended)
			return MHD_CONTENT_READER_END_OF_STREAM;
		pthread_mutex_lock(&s->lock);
		while (j->state != JOB_DONE && j->safe <= k->sent && k->started) {
			struct timespec ts;

			if (client_gone(k->fd)) {
				pthread_mutex_unlock(&s->lock);
				return MHD_CONTENT_READER_END_WITH_ERROR;
			}
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 50 * 1000000;
			if (ts.tv_nsec >= 1000000000) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&j->cond, &s->lock, &ts);
		}
		if (j->state == JOB_DONE && j->error[0]) {
			json_t *e = json_pack("{s:{s:s,s:s,s:n,s:n}}", "error", "message", j->error,
					      "type", "server_error", "param", "code");
			char *t = e ? json_dumps(e, JSON_COMPACT) : NULL;

			json_decref(e);
			if (t && asprintf(&k->out, "data: %s\n\ndata: [DONE]\n\n", t) < 0)
				k->out = NULL;
			free(t);
			k->ended = true;
		} else if (j->state == JOB_DONE) {
			k->out = chunk_event(k, j->len, true);
			k->ended = true;
		} else {
			k->out = chunk_event(k, j->safe > k->sent ? j->safe : k->sent, false);
		}
		pthread_mutex_unlock(&s->lock);
		if (!k->out)
			return MHD_CONTENT_READER_END_WITH_ERROR;
		k->out_len = strlen(k->out);
	}
	n = k->out_len - k->out_off;
	if (n > max)
		n = max;
	memcpy(buf, k->out + k->out_off, n);
	k->out_off += n;
	return (ssize_t)n;
}

/* A non-streaming request: wait for the job, watching the client. */
static MHD_RESULT_T wait_job(struct conn *k, struct MHD_Connection *c)
{
	struct server *s = k->s;
	struct job *j = k->job;
	struct api_error e = { 0 };
	json_t *o;

	pthread_mutex_lock(&s->lock);
	while (j->state != JOB_DONE) {
		struct timespec ts;

		if (client_gone(k->fd)) {
			pthread_mutex_unlock(&s->lock);
			return MHD_NO;   /* closes it; the completion callback cancels the job */
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&j->cond, &s->lock, &ts);
	}
	if (j->error[0]) {
		api_fail(&e, strstr(j->error, "queue") ? 503 : 500, "server_error", NULL, NULL, "%s",
			 j->error);
		pthread_mutex_unlock(&s->lock);
		return send_error(s, c, &e);
	}
	o = completion_json(k);
	pthread_mutex_unlock(&s->lock);
	return send_json(s, c, 200, o);
}

static MHD_RESULT_T api_post(struct conn *k, struct MHD_Connection *c)
{
	struct server *s = k->s;
	struct api_limits lim = { .max_tokens = s->o.max_tokens,
				  .max_messages = s->o.max_messages };
	struct api_request req;
	struct api_error e;
	struct MHD_Response *r;
	MHD_RESULT_T ret;

	if (k->too_big) {
		api_fail(&e, 413, "invalid_request_error", "request_too_large", NULL,
			 "the body is larger than this server takes (%llu bytes; see --max-body)",
			 (unsigned long long)s->o.max_body);
		return send_error(s, c, &e);
	}
	if (api_parse_request(k->kind, k->body ? k->body : "", k->len, &lim, &req, &e))
		return send_error(s, c, &e);
	if (sched_submit(s, &req, &k->job, &e)) {
		api_request_free(&req);
		return send_error(s, c, &e);
	}
	/*
	 * The idle timeout guards against clients that send slowly; while the
	 * reply is generated the connection is busy on our side, watched by
	 * wait_job and stream_read, and bounded by --timeout.
	 */
	MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned int)0);
	pthread_mutex_lock(&s->lock);
	snprintf(k->id, sizeof(k->id), "%s-%llu", k->kind == API_CHAT ? "chatcmpl" : "cmpl",
		 (unsigned long long)++s->next_id);
	pthread_mutex_unlock(&s->lock);
	k->created = (long long)time(NULL);
	if (!req.stream) {
		api_request_free(&req);
		return wait_job(k, c);
	}
	api_request_free(&req);
	r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, k, NULL);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", "text/event-stream");
	MHD_add_response_header(r, "Cache-Control", "no-cache");
	count(s, 200);
	ret = MHD_queue_response(c, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return ret;
}

/* llama-server's POST /apply-template: a chat request's prompt as the model would see it. */
static MHD_RESULT_T apply_template(struct conn *k, struct MHD_Connection *c)
{
	struct server *s = k->s;
	struct api_limits lim = { .max_tokens = s->o.max_tokens,
				  .max_messages = s->o.max_messages };
	struct api_request req;
	struct api_error e;
	char *text, *prefix;
	json_t *o;

	if (k->too_big) {
		api_fail(&e, 413, "invalid_request_error", "request_too_large", NULL,
			 "the body is larger than this server takes (%llu bytes; see --max-body)",
			 (unsigned long long)s->o.max_body);
		return send_error(s, c, &e);
	}
	if (api_parse_request(API_CHAT, k->body ? k->body : "", k->len, &lim, &req, &e))
		return send_error(s, c, &e);
	if (sched_render(s, &req, &text, &prefix, &e) < 0) {
		api_request_free(&req);
		return send_error(s, c, &e);
	}
	api_request_free(&req);
	o = json_pack("{s:o}", "prompt", text_json(text, strlen(text)));
	free(text);
	free(prefix);
	return send_json(s, c, 200, o);
}

static MHD_RESULT_T route(struct conn *k, struct MHD_Connection *c, const char *url,
			  const char *method)
{
	struct server *s = k->s;
	bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
	bool post = !strcmp(method, "POST");
	struct api_error e;

	if (!strcmp(url, "/health")) {
		bool draining;

		if (!get)
			goto method;
		pthread_mutex_lock(&s->lock);
		draining = s->draining;
		pthread_mutex_unlock(&s->lock);
		return send_json(s, c, draining ? 503 : 200,
				 json_pack("{s:s}", "status", draining ? "draining" : "ok"));
	}
	if (!authorized(s, c)) {
		api_fail(&e, 401, "authentication_error", "invalid_api_key", NULL,
			 "a missing or wrong API key: send 'Authorization: Bearer KEY' with the "
			 "key the server was started with (--api-key)");
		return send_error(s, c, &e);
	}
	if (!strcmp(url, "/v1/models")) {
		if (!get)
			goto method;
		return send_json(s, c, 200, json_pack("{s:s,s:[{s:s,s:s,s:I,s:s}]}", "object",
				 "list", "data", "id", s->model_id, "object", "model",
				 "created", (json_int_t)0, "owned_by", "moe"));
	}
	if (!strcmp(url, "/metrics")) {
		if (!get)
			goto method;
		count(s, 200);
		return send_body(c, 200, "text/plain; version=0.0.4", metrics_text(s));
	}
	if (!strcmp(url, "/apply-template")) {
		if (!post)
			goto method;
		return apply_template(k, c);
	}
	if (!strcmp(url, "/v1/completions") || !strcmp(url, "/v1/chat/completions")) {
		if (!post)
			goto method;
		k->kind = strcmp(url, "/v1/completions") ? API_CHAT : API_COMPLETION;
		return api_post(k, c);
	}
	api_fail(&e, 404, "invalid_request_error", "not_found", NULL,
		 "no such path '%.200s': this server answers /health, /metrics, /v1/models, "
		 "/v1/completions, /v1/chat/completions and /apply-template", url);
	return send_error(s, c, &e);
method:
	api_fail(&e, 405, "invalid_request_error", "method_not_allowed", NULL,
		 "%.16s is not allowed on %.200s (%s)", method, url,
		 post ? "use GET" : "use POST");
	return send_error(s, c, &e);
}

static MHD_RESULT_T on_request(void *cls, struct MHD_Connection *c, const char *url,
			       const char *method, const char *version, const char *data,
			       size_t *size, void **con_cls)
{
	struct server *s = cls;
	struct conn *k = *con_cls;

	(void)version;
	if (!k) {
		const union MHD_ConnectionInfo *ci;

		k = calloc(1, sizeof(*k));
		if (!k)
			return MHD_NO;
		k->s = s;
		pthread_mutex_lock(&s->lock);
		s->live_requests++;
		pthread_mutex_unlock(&s->lock);
		ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
		k->fd = ci ? ci->connect_fd : -1;
		*con_cls = k;
		return MHD_YES;
	}
	if (*size) {
		if (!k->too_big && k->len + *size <= s->o.max_body) {
			char *b = realloc(k->body, k->len + *size + 1);

			if (!b)
				return MHD_NO;
			memcpy(b + k->len, data, *size);
			k->body = b;
			k->len += *size;
		} else {
			k->too_big = true;
		}
		*size = 0;
		return MHD_YES;
	}
	return route(k, c, url, method);
}

static void on_done(void *cls, struct MHD_Connection *c, void **con_cls,
		    enum MHD_RequestTerminationCode why)
{
	struct conn *k = *con_cls;

	(void)why;
	if (!k)
		return;
	if (k->job) {
		sched_release((struct server *)cls, k->job);
		if (c)
			MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, IDLE_TIMEOUT_S);
	}
	pthread_mutex_lock(&k->s->lock);
	k->s->live_requests--;
	pthread_mutex_unlock(&k->s->lock);
	free(k->out);
	free(k->body);
	free(k->call_ids);
	free(k);
	*con_cls = NULL;
}

static struct MHD_Daemon *daemon_start(struct server *s)
{
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_port = htons(s->o.port) };
	struct sockaddr_in a4 = { .sin_family = AF_INET, .sin_port = htons(s->o.port) };
	unsigned int flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD;
	const struct sockaddr *sa = (const struct sockaddr *)&a4;

	if (inet_pton(AF_INET, s->o.host, &a4.sin_addr) != 1) {
		if (inet_pton(AF_INET6, s->o.host, &a6.sin6_addr) != 1) {
			fprintf(stderr, PROG ": --host '%s': not an IPv4 or IPv6 address\n",
				s->o.host);
			return NULL;
		}
		sa = (const struct sockaddr *)&a6;
		flags |= MHD_USE_IPv6;
	}
	return MHD_start_daemon(flags, s->o.port, NULL, NULL, on_request, s,
				MHD_OPTION_SOCK_ADDR, sa,
				MHD_OPTION_NOTIFY_COMPLETED, on_done, s,
				MHD_OPTION_CONNECTION_LIMIT,
				(unsigned int)(s->o.parallel + s->o.queue + 16),
				MHD_OPTION_CONNECTION_TIMEOUT, IDLE_TIMEOUT_S,
				MHD_OPTION_END);
}

struct MHD_Daemon *http_daemon;

int http_run(struct server *s)
{
	const union MHD_DaemonInfo *di;

	http_daemon = daemon_start(s);
	if (!http_daemon) {
		fprintf(stderr, PROG ": cannot listen on %s port %u: %s\n", s->o.host, s->o.port,
			strerror(errno ? errno : EADDRINUSE));
		return -1;
	}
	di = MHD_get_daemon_info(http_daemon, MHD_DAEMON_INFO_BIND_PORT);
	fprintf(stderr, PROG ": listening on http://%s%s%s:%u/ (model %s, %u parallel, queue %u)\n",
		strchr(s->o.host, ':') ? "[" : "", s->o.host, strchr(s->o.host, ':') ? "]" : "",
		di ? di->port : s->o.port, s->model_id, s->o.parallel, s->o.queue);
	return 0;
}

void http_stop(void)
{
	if (http_daemon)
		MHD_stop_daemon(http_daemon);
	http_daemon = NULL;
}

