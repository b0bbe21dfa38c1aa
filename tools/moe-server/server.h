/* SPDX-License-Identifier: MIT */
/*
 * moe-server's parts: the options (main.c), the HTTP front (http.c), the
 * engine thread that decodes every running request in one batch (sched.c)
 * and the counters /metrics shows (metrics.c).
 */
#ifndef MOE_SERVER_H
#define MOE_SERVER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "api.h"
#include "chatfmt.h"
#include "engine_opts.h"
#include "moe/moe.h"

#define PROG "moe-server"

struct server_opts {
	const char *model, *host, *api_key, *alias;
	uint16_t port;
	uint32_t parallel, queue, n_ctx, max_tokens, max_messages, timeout_s;
	uint64_t max_body;
	struct engine_opts eng;
};

enum job_state { JOB_QUEUED, JOB_PREFILL, JOB_DECODE, JOB_DONE };

/* One request from admission to its last byte; shared by its HTTP thread and the engine. */
struct job {
	struct job *next;       /* queue link */
	enum job_state state;
	bool cancelled;         /* the client went away: free the sequence */
	int refs;               /* the HTTP side and the engine */
	int seq;                /* sequence slot while running */
	int32_t *prompt;
	uint32_t n_prompt, n_fed;
	uint32_t max_tokens;
	struct moe_sampler *sampler;
	int32_t last;           /* the token to feed next */
	uint32_t n_gen;
	struct moe_detok_state ds;
	char *stop[API_MAX_STOP + 1];   /* the request's and the format's (cf_stop) */
	uint32_t n_stop, stop_max;
	enum cf_format fmt;     /* chat: the format its reply is parsed in (CF_NONE: as is) */
	bool tools;             /* chat: tool calls are looked for in the reply */
	char *prefix;           /* the reply's start the prompt wrote (a forced call), or NULL */
	/*
	 * A forced call in two stages (cf_call_marker): the name sampled with
	 * a grammar of the names, then the format's markers fed as the
	 * vocabulary's own tokens, then the arguments sampled with the chosen
	 * function's grammar.  stage: -1 none, 0 the name, 1 the arguments.
	 */
	int stage;
	uint32_t n_tools;
	char **tool_names;
	struct moe_grammar **args_grammar;      /* [n_tools] */
	const char *marker_text;                /* the markers (cf_call_marker's text) */
	int32_t *marker;                        /* their tokens */
	uint32_t n_marker;
	const int32_t *feed;    /* tokens to feed after @last in the next step (the markers) */
	uint32_t n_feed;
	struct moe_sample_params sp;            /* for the arguments' sampler */
	size_t test_off;        /* bytes of the test reply given out */
	char *text;             /* generated text, cut at a stop sequence */
	size_t len, cap;
	size_t safe;            /* bytes of text that no stop sequence can take back */
	const char *finish;     /* "stop", "length", NULL while running */
	char error[256];        /* a failure of the engine, "" when none */
	double deadline;        /* monotonic seconds */
	pthread_cond_t cond;    /* signalled on every change */
};

struct server;

struct metrics {
	uint64_t requests[6];   /* by status class: 2xx, 400, 401, 404/405, 413, 503, see below */
	uint64_t rejected_busy; /* 503 for a full queue */
	uint64_t prompt_tokens, completion_tokens, cancelled;
	uint64_t batches, batch_tokens;
	uint64_t prefill_shared_batches; /* steps that held the prompt tokens of several requests */
	uint32_t prefill_seqs_max;      /* the most requests' prompt tokens in one step */
	struct moe_ctx_stats ctx;
	double started;
};

struct server {
	struct server_opts o;
	struct moe_model *model;
	struct moe_tokenizer *tok;
	struct moe_ctx *ctx;
	uint32_t n_ctx;
	char model_id[256];
	struct cf_render_opts cf;       /* the format's BOS/EOS text */
	char bos[64], eos[64];
	const char *test_reply; /* MOE_SERVER_TEST_REPLY: the tests' stand-in for a reply */
	pthread_mutex_t lock;
	pthread_cond_t wake;    /* the engine: work arrived or stop */
	struct job *queue, **queue_tail;
	uint32_t queued, running;
	uint32_t live_requests; /* requests the HTTP side holds, answered or not */
	struct job **slots;     /* [parallel] */
	bool stopping, draining;
	pthread_t engine;
	uint64_t next_id;
	struct metrics m;
};

double now_s(void);

int sched_start(struct server *s);
/* Stop the engine once every admitted request is done (SIGTERM's drain). */
void sched_stop(struct server *s);
/*
 * Admit a request: 0 and a job (queued), or -EBUSY (queue full: 503),
 * -EINVAL with @err (prompt too long for the context, bad token ids).
 */
int sched_submit(struct server *s, const struct api_request *req, struct job **out,
		 struct api_error *err);
/*
 * A chat request's prompt text (*text) and the reply's start it writes
 * (*prefix, see cf_render), both malloc'ed; its length, or -EINVAL with @err.
 */
int sched_render(struct server *s, const struct api_request *req, char **text, char **prefix,
		 struct api_error *err);
/* The HTTP side is done with @j (cancels it if it still runs). */
void sched_release(struct server *s, struct job *j);

/* The Prometheus text of /metrics, malloc'ed. */
char *metrics_text(struct server *s);

int http_run(struct server *s);
void http_stop(void);

#endif
