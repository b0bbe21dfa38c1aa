// SPDX-License-Identifier: MIT
/*
 * The engine thread.  Every running request has a sequence of its own in
 * one context (a KV cache each); each step puts the next token of every
 * decoding request, and up to a batch of prompt tokens of those still
 * prefilling, into one moe_ctx_eval_batch, so every expert a layer fetches
 * serves all of them.  A request waits in a bounded queue for a free
 * sequence; one whose client went away is dropped at the next step.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server.h"
#include "strbuf.h"

#define MAX_FEED 64     /* tokens the server writes into a reply in one step */

double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void job_unref(struct job *j)
{
	if (--j->refs)
		return;
	moe_sampler_destroy(j->sampler);
	for (uint32_t i = 0; i < j->n_stop; i++)
		free(j->stop[i]);
	free(j->prompt);
	free(j->text);
	free(j->prefix);
	for (uint32_t i = 0; i < j->n_tools; i++) {
		free(j->tool_names[i]);
		moe_grammar_destroy(j->args_grammar[i]);
	}
	free(j->tool_names);
	free(j->args_grammar);
	free(j->marker);
	pthread_cond_destroy(&j->cond);
	free(j);
}

int sched_render(struct server *s, const struct api_request *req, char **text, char **prefix,
		 struct api_error *err)
{
	struct moe_chat_msg *msgs;
	int len;

	*text = *prefix = NULL;
	if (!s->tok)
		return api_fail(err, 400, "invalid_request_error", NULL, "messages",
				"the model has no vocabulary: give 'prompt' as token ids");
	if (cf_needed(req))
		return cf_render(cf_format_from_name(moe_chat_format(s->tok)), &s->cf, req, text,
				 prefix, err);
	msgs = calloc(req->n_msgs, sizeof(*msgs));
	if (!msgs)
		return api_fail(err, 500, "server_error", NULL, NULL, "out of memory");
	for (uint32_t i = 0; i < req->n_msgs; i++) {
		msgs[i].role = req->msgs[i].role;
		msgs[i].content = req->msgs[i].content;
	}
	len = moe_chat_render(s->tok, msgs, (int)req->n_msgs, true, text);
	free(msgs);
	if (len < 0)
		return api_fail(err, 400, "invalid_request_error", NULL, "messages",
				"the messages cannot be rendered: %s", moe_errmsg());
	return len;
}

/* Tokens of the request's prompt: the chat rendered in the model's format, or the text. */
static int tokenize_request(struct server *s, const struct api_request *req, struct job *j,
			    struct api_error *err)
{
	char *text = NULL;
	uint32_t flags = 0;
	int len, n;

	if (req->n_prompt_ids) {
		uint32_t nv = moe_ctx_n_vocab(s->ctx);

		for (uint32_t i = 0; i < req->n_prompt_ids; i++)
			if ((uint32_t)req->prompt_ids[i] >= nv)
				return api_fail(err, 400, "invalid_request_error", NULL, "prompt",
						"'prompt'[%u]: token id %d is outside the vocabulary "
						"of %u", i, req->prompt_ids[i], nv);
		j->prompt = malloc(sizeof(*j->prompt) * req->n_prompt_ids);
		if (!j->prompt)
			return api_fail(err, 500, "server_error", NULL, NULL, "out of memory");
		memcpy(j->prompt, req->prompt_ids, sizeof(*j->prompt) * req->n_prompt_ids);
		j->n_prompt = req->n_prompt_ids;
		return 0;
	}
	if (!s->tok)
		return api_fail(err, 400, "invalid_request_error", NULL,
				req->kind == API_CHAT ? "messages" : "prompt",
				"the model has no vocabulary: give 'prompt' as token ids");
	if (req->kind == API_CHAT) {
		len = sched_render(s, req, &text, &j->prefix, err);
		if (len < 0)
			return len;
		flags = MOE_TOK_PARSE_SPECIAL;
	} else {
		text = strdup(req->prompt);
		if (!text)
			return api_fail(err, 500, "server_error", NULL, NULL, "out of memory");
		len = (int)strlen(text);
		if (moe_tokenizer_add_bos(s->tok))
			flags = MOE_TOK_ADD_BOS;
	}
	n = moe_tokenize(s->tok, text, (size_t)len, flags, NULL, 0);
	if (n > 0 && (j->prompt = malloc(sizeof(*j->prompt) * (size_t)n)))
		n = moe_tokenize(s->tok, text, (size_t)len, flags, j->prompt, n);
	free(text);
	if (n <= 0)
		return api_fail(err, 400, "invalid_request_error", NULL,
				req->kind == API_CHAT ? "messages" : "prompt",
				"the prompt cannot be tokenized: %s",
				n == 0 ? "it is empty" : moe_errmsg());
	j->n_prompt = (uint32_t)n;
	return 0;
}

/*
 * A forced call whose name the model picks, in a format whose markers after
 * the name are control tokens: the name's grammar replaces *@g, each
 * function's arguments grammar is kept for when the name is known, and the
 * markers are tokenized as the vocabulary's special tokens.
 */
static int stage_call(struct server *s, struct job *j, const struct api_request *req,
		      struct moe_grammar **g, struct api_error *err)
{
	const char *marker = cf_call_marker(j->fmt, req);
	size_t n = json_array_size(req->tools), i;
	struct strbuf text = { 0 };
	struct moe_grammar *names;
	char *gbnf;
	json_t *t;
	int ret;

	ret = moe_tokenize(s->tok, marker, strlen(marker), MOE_TOK_PARSE_SPECIAL, NULL, 0);
	/* the batch has room for MAX_FEED of them; past that the grammar writes them as text */
	if (ret <= 0 || ret > MAX_FEED)
		return 0;
	j->marker = malloc(sizeof(*j->marker) * (size_t)ret);
	j->tool_names = calloc(n, sizeof(*j->tool_names));
	j->args_grammar = calloc(n, sizeof(*j->args_grammar));
	if (!j->marker || !j->tool_names || !j->args_grammar)
		return api_fail(err, 500, "server_error", NULL, NULL, "out of memory");
	j->n_marker = (uint32_t)moe_tokenize(s->tok, marker, strlen(marker),
					     MOE_TOK_PARSE_SPECIAL, j->marker, ret);
	j->marker_text = marker;
	j->n_tools = (uint32_t)n;
	strbuf_add(&text, "root ::= ");
	json_array_foreach(req->tools, i, t) {
		const char *name = json_string_value(json_object_get(json_object_get(t,
									   "function"), "name"));

		/* names are letters, digits, '_' and '-': literals as they are */
		strbuf_addf(&text, "%s\"%s\"", i ? " | " : "", name);
		j->tool_names[i] = strdup(name);
		ret = cf_call_grammar_of(j->fmt, req, name, &gbnf, err);
		if (ret) {
			free(text.s);
			return ret;
		}
		ret = moe_grammar_create(gbnf, strlen(gbnf), &j->args_grammar[i]);
		free(gbnf);
		if (ret || !j->tool_names[i]) {
			free(text.s);
			return api_fail(err, 500, "server_error", NULL, "tools", "the forced "
					"call's grammar: %s", ret ? moe_errmsg() : "out of memory");
		}
	}
	if (text.oom) {
		free(text.s);
		return api_fail(err, 500, "server_error", NULL, NULL, "out of memory");
	}
	ret = moe_grammar_create(text.s, text.n, &names);
	free(text.s);
	if (ret)
		return api_fail(err, 500, "server_error", NULL, "tools", "the names' grammar: %s",
				moe_errmsg());
	moe_grammar_destroy(*g);
	*g = names;
	j->stage = 0;
	return 0;
}

int sched_submit(struct server *s, const struct api_request *req, struct job **out,
		 struct api_error *err)
{
	struct job *j = calloc(1, sizeof(*j));
	struct moe_grammar *call_grammar = NULL;
	uint32_t room;
	int ret;

	*out = NULL;
	if (!j)
		return api_fail(err, 500, "server_error", NULL, NULL, "out of memory");
	pthread_cond_init(&j->cond, NULL);
	j->refs = 1;
	j->seq = -1;
	j->stage = -1;
	if (req->kind == API_CHAT && s->tok) {
		/* replies in a format with markers are split into reasoning, content and calls */
		j->fmt = cf_format_from_name(moe_chat_format(s->tok));
		j->tools = json_array_size(req->tools) && req->tool_choice != API_TOOLS_NONE;
		if (j->fmt != CF_NONE)
			j->ds.flags = MOE_DETOK_SPECIAL;
	}
	ret = tokenize_request(s, req, j, err);
	if (ret)
		goto fail;
	if (j->n_prompt >= s->n_ctx) {
		ret = api_fail(err, 400, "invalid_request_error", "context_length_exceeded",
			       req->kind == API_CHAT ? "messages" : "prompt",
			       "the prompt is %u tokens; this server's context holds %u positions "
			       "per request", j->n_prompt, s->n_ctx);
		goto fail;
	}
	room = s->n_ctx - j->n_prompt;
	if (req->max_tokens > room) {
		ret = api_fail(err, 400, "invalid_request_error", "context_length_exceeded",
			       "max_tokens", "the prompt (%u tokens) and max_tokens %u exceed the "
			       "context of %u positions per request", j->n_prompt, req->max_tokens,
			       s->n_ctx);
		goto fail;
	}
	j->max_tokens = req->max_tokens ? req->max_tokens :
			room < s->o.max_tokens ? room : s->o.max_tokens;
	if (j->tools) {
		char *gbnf;

		/* a forced call: its name and arguments' shape are the sampler's to enforce */
		ret = cf_call_grammar(j->fmt, req, &gbnf, err);
		if (ret)
			goto fail;
		if (gbnf && req->grammar) {
			free(gbnf);
			ret = api_fail(err, 400, "invalid_request_error", NULL, "response_format",
				       "'response_format' and a tool_choice that forces a call both "
				       "shape the reply: leave one out");
			goto fail;
		}
		if (gbnf) {
			ret = moe_grammar_create(gbnf, strlen(gbnf), &call_grammar);
			free(gbnf);
			if (ret) {
				ret = api_fail(err, 500, "server_error", NULL, "tools", "the forced "
					       "call's grammar: %s", moe_errmsg());
				goto fail;
			}
			if (cf_call_marker(j->fmt, req) && !s->test_reply) {
				ret = stage_call(s, j, req, &call_grammar, err);
				if (ret)
					goto fail;
			}
		}
	}
	{
		struct moe_sample_params sp = req->sp;

		if (!req->has_seed)
			sp.seed = (uint64_t)(now_s() * 1e9) ^ (uintptr_t)j;
		if (req->grammar && !s->tok) {
			ret = api_fail(err, 400, "invalid_request_error", NULL, "response_format",
				       "the model has no vocabulary to check a response format "
				       "against: leave 'response_format' out");
			goto fail;
		}
		/* the sampler takes its own copy of the grammar: the request's may go */
		sp.grammar = call_grammar ? call_grammar : req->grammar;
		sp.tokenizer = s->tok;
		j->sp = sp;
		j->sp.grammar = NULL;
		ret = moe_sampler_new(&sp, moe_ctx_n_vocab(s->ctx), &j->sampler);
		moe_grammar_destroy(call_grammar);
		call_grammar = NULL;
		if (ret < 0) {
			ret = api_fail(err, 400, "invalid_request_error", NULL, NULL, "%s",
				       moe_errmsg());
			goto fail;
		}
	}
	for (uint32_t i = 0; i < j->n_prompt; i++)
		moe_sampler_accept(j->sampler, j->prompt[i]);
	for (uint32_t i = 0; i < req->n_stop; i++) {
		size_t l = strlen(req->stop[i]);

		j->stop[i] = strdup(req->stop[i]);
		if (!j->stop[i]) {
			ret = api_fail(err, 500, "server_error", NULL, NULL, "out of memory");
			goto fail;
		}
		j->n_stop++;
		if (l > j->stop_max)
			j->stop_max = (uint32_t)l;
	}
	if (j->fmt != CF_NONE && cf_stop(j->fmt, req)) {
		const char *stop = cf_stop(j->fmt, req);

		j->stop[j->n_stop] = strdup(stop);
		if (!j->stop[j->n_stop]) {
			ret = api_fail(err, 500, "server_error", NULL, NULL, "out of memory");
			goto fail;
		}
		j->n_stop++;
		if (strlen(stop) > j->stop_max)
			j->stop_max = (uint32_t)strlen(stop);
	}
	j->deadline = now_s() + s->o.timeout_s;

	pthread_mutex_lock(&s->lock);
	if (s->draining || s->queued >= s->o.queue + (s->o.parallel - s->running)) {
		bool draining = s->draining;

		s->m.rejected_busy++;
		pthread_mutex_unlock(&s->lock);
		ret = api_fail(err, 503, "server_error", draining ? "shutting_down" : "server_busy",
			       NULL, draining ? "the server is shutting down" :
			       "every sequence is busy and the queue of %u is full; retry later",
			       s->o.queue);
		goto fail;
	}
	j->refs = 2;
	j->state = JOB_QUEUED;
	*s->queue_tail = j;
	s->queue_tail = &j->next;
	s->queued++;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->lock);
	*out = j;
	return 0;
fail:
	moe_grammar_destroy(call_grammar);
	j->refs = 1;
	job_unref(j);
	return ret ? ret : -EINVAL;
}

void sched_release(struct server *s, struct job *j)
{
	pthread_mutex_lock(&s->lock);
	if (j->state != JOB_DONE) {
		j->cancelled = true;
		s->m.cancelled++;
		pthread_cond_signal(&s->wake);
	}
	job_unref(j);
	pthread_mutex_unlock(&s->lock);
}

/* Under the lock: the request is over; its sequence is free for the next one. */
static void finish(struct server *s, struct job *j, const char *reason)
{
	char buf[64];
	int n;

	if (j->state == JOB_DONE)
		return;
	if (!j->finish && s->tok && j->state == JOB_DECODE) {
		n = moe_detok_stream(s->tok, &j->ds, -1, buf, sizeof(buf));
		if (n > 0 && j->len + (size_t)n < j->cap) {
			memcpy(j->text + j->len, buf, (size_t)n);
			j->len += (size_t)n;
		}
	}
	j->finish = reason;
	j->safe = j->len;
	if (j->seq >= 0) {
		s->slots[j->seq] = NULL;
		s->running--;
	}
	j->state = JOB_DONE;
	pthread_cond_broadcast(&j->cond);
	job_unref(j);
}

static int append(struct job *j, const char *p, size_t n)
{
	/* room for the detokenizer's final flush too */
	if (j->len + n + 64 > j->cap) {
		size_t cap = (j->cap + n + 64) * 2;
		char *t = realloc(j->text, cap);

		if (!t)
			return -ENOMEM;
		j->text = t;
		j->cap = cap;
	}
	memcpy(j->text + j->len, p, n);
	j->len += n;
	return 0;
}

/*
 * Under the lock: the name of a staged call is whole (@eog: the model ended
 * it with an end-of-generation token, which is not fed).  The markers follow
 * it as tokens of their own, and the arguments are sampled with the chosen
 * function's grammar.
 */
static void name_done(struct server *s, struct job *j, bool eog)
{
	const char *marker = j->marker_text;
	struct moe_sampler *next;
	uint32_t k;

	for (k = 0; k < j->n_tools; k++)
		if (strlen(j->tool_names[k]) == j->len && !memcmp(j->text, j->tool_names[k], j->len))
			break;
	if (k == j->n_tools) {
		snprintf(j->error, sizeof(j->error), "the sampled name is no function's");
		finish(s, j, "error");
		return;
	}
	if (j->n_prompt + j->n_gen + j->n_marker >= s->n_ctx ||
	    j->n_gen + j->n_marker > j->max_tokens) {
		finish(s, j, "length");
		return;
	}
	j->sp.grammar = j->args_grammar[k];
	if (moe_sampler_new(&j->sp, moe_ctx_n_vocab(s->ctx), &next) < 0) {
		snprintf(j->error, sizeof(j->error), "the arguments' sampler: %s", moe_errmsg());
		finish(s, j, "error");
		return;
	}
	for (uint32_t i = 0; i < j->n_prompt; i++)
		moe_sampler_accept(next, j->prompt[i]);
	moe_sampler_destroy(j->sampler);
	j->sampler = next;
	/* the end-of-generation token that closed the name is not the reply's: a marker is */
	if (eog) {
		j->last = j->marker[0];
		j->feed = j->marker + 1;
		j->n_feed = j->n_marker - 1;
	} else {
		j->feed = j->marker;
		j->n_feed = j->n_marker;
	}
	if (append(j, marker, strlen(marker))) {
		snprintf(j->error, sizeof(j->error), "out of memory");
		finish(s, j, "error");
		return;
	}
	j->stage = 1;
	j->safe = j->len;
	pthread_cond_broadcast(&j->cond);
}

/* Under the lock: one sampled token of @j. */
static void took(struct server *s, struct job *j, int32_t tok)
{
	char buf[512];
	size_t from;
	int n;

	j->n_gen++;
	s->m.completion_tokens++;
	moe_sampler_accept(j->sampler, tok);
	j->last = tok;
	if (s->tok && !s->test_reply && moe_tokenizer_is_eog(s->tok, tok)) {
		if (j->stage == 0) {
			/*
			 * the names' grammar took it: the name ends here (a longer one
			 * could have followed); the first marker takes its place
			 */
			name_done(s, j, true);
			return;
		}
		finish(s, j, "stop");
		return;
	}
	from = j->len;
	if (s->test_reply) {
		/* the test hook: the reply's text comes from MOE_SERVER_TEST_REPLY, a few bytes a token */
		size_t left = strlen(s->test_reply) - j->test_off;

		if (!left) {
			finish(s, j, "stop");
			return;
		}
		n = (int)(left < 3 ? left : 3);
		memcpy(buf, s->test_reply + j->test_off, (size_t)n);
		j->test_off += (size_t)n;
	} else if (s->tok) {
		n = moe_detok_stream(s->tok, &j->ds, tok, buf, sizeof(buf));
	} else {
		n = snprintf(buf, sizeof(buf), "%s%d", j->n_gen > 1 ? " " : "", tok);
	}
	if (n > 0 && append(j, buf, (size_t)n)) {
		snprintf(j->error, sizeof(j->error), "out of memory");
		finish(s, j, "error");
		return;
	}
	for (uint32_t i = 0; i < j->n_stop; i++) {
		size_t l = strlen(j->stop[i]), start = from >= l ? from - l + 1 : 0;
		char *hit;

		if (j->len < l)
			continue;
		j->text[j->len] = 0;
		hit = memmem(j->text + start, j->len - start, j->stop[i], l);
		if (hit) {
			j->len = (size_t)(hit - j->text);
			/* bytes the detokenizer holds back come after the stop: drop them */
			memset(&j->ds, 0, sizeof(j->ds));
			finish(s, j, "stop");
			return;
		}
	}
	/* a document of the response format that can only end here ends the reply */
	if (moe_sampler_grammar(j->sampler) &&
	    !moe_grammar_can_continue(moe_sampler_grammar(j->sampler))) {
		if (j->stage == 0)
			name_done(s, j, false);
		else
			finish(s, j, "stop");
		return;
	}
	/* the last stop_max - 1 bytes may yet start a stop sequence: not sent before they settle */
	j->safe = j->stop_max ? (j->len >= j->stop_max - 1 ? j->len - (j->stop_max - 1) : 0) :
		  j->len;
	if (j->n_gen >= j->max_tokens || j->n_prompt + j->n_gen >= s->n_ctx)
		finish(s, j, "length");
	else
		pthread_cond_broadcast(&j->cond);
}

/* Under the lock: queued requests into free sequences; cancelled and expired ones out. */
static void admit(struct server *s, double now)
{
	while (s->queue) {
		struct job *j = s->queue;
		int seq = -1;

		if (!j->cancelled && now < j->deadline) {
			for (uint32_t i = 0; i < s->o.parallel; i++)
				if (!s->slots[i]) {
					seq = (int)i;
					break;
				}
			if (seq < 0)
				return;
		}
		s->queue = j->next;
		if (!s->queue)
			s->queue_tail = &s->queue;
		s->queued--;
		if (seq < 0) {
			if (!j->cancelled)
				snprintf(j->error, sizeof(j->error), "the request waited in the queue "
					 "past the time limit of %u s", s->o.timeout_s);
			finish(s, j, j->cancelled ? "cancelled" : "error");
			continue;
		}
		j->seq = seq;
		j->state = JOB_PREFILL;
		s->slots[seq] = j;
		s->running++;
		s->m.prompt_tokens += j->n_prompt;
	}
}

struct batch {
	int32_t *tok, *pos, *seq;
	uint8_t *logits;
	struct job **row;       /* the job of each kept row, in batch order */
	uint32_t *take;         /* [parallel] prompt tokens of each sequence in this step */
	uint32_t n, n_rows, cap;
};

/*
 * Under the lock: how many prompt tokens each prefilling request puts into
 * this step's batch.  The @n_batch of room is shared out evenly, round by
 * round, so the prompts of requests admitted together are evaluated in the
 * same batches (each expert a layer fetches serves all of them) rather
 * than one prompt after another; what a short prompt leaves goes to the
 * others.
 */
static void share_prefill(struct server *s, struct batch *b, uint32_t n_batch)
{
	uint32_t left = n_batch, active = 0;

	for (uint32_t i = 0; i < s->o.parallel; i++) {
		struct job *j = s->slots[i];

		b->take[i] = 0;
		active += j && j->state == JOB_PREFILL && !j->cancelled && j->n_fed < j->n_prompt;
	}
	while (left && active) {
		uint32_t share = left / active ? left / active : 1;

		active = 0;
		for (uint32_t i = 0; i < s->o.parallel && left; i++) {
			struct job *j = s->slots[i];
			uint32_t want, give;

			if (!j || j->state != JOB_PREFILL || j->cancelled)
				continue;
			want = j->n_prompt - j->n_fed - b->take[i];
			give = want < share ? want : share;
			if (give > left)
				give = left;
			b->take[i] += give;
			left -= give;
			active += want > give;
		}
	}
}

static void *engine(void *arg)
{
	struct server *s = arg;
	uint32_t n_batch = moe_ctx_plan(s->ctx)->n_batch;
	struct batch b = { 0 };
	int ret;

	/* a decoding row each, with up to MAX_FEED marker tokens (stage_call), and the prompts' */
	b.cap = s->o.parallel * (1 + MAX_FEED) + n_batch;
	b.tok = malloc(sizeof(*b.tok) * b.cap);
	b.pos = malloc(sizeof(*b.pos) * b.cap);
	b.seq = malloc(sizeof(*b.seq) * b.cap);
	b.logits = malloc(b.cap);
	b.row = malloc(sizeof(*b.row) * b.cap);
	b.take = calloc(s->o.parallel, sizeof(*b.take));
	pthread_mutex_lock(&s->lock);
	if (!b.tok || !b.pos || !b.seq || !b.logits || !b.row || !b.take) {
		fprintf(stderr, PROG ": out of memory for the batch\n");
		s->stopping = true;
	}
	for (;;) {
		double now = now_s();
		uint32_t n_pre = 0;
		struct moe_batch mb = { 0 };

		admit(s, now);
		if (s->stopping && !s->running && !s->queued)
			break;
		if (!s->running) {
			pthread_cond_wait(&s->wake, &s->lock);
			continue;
		}
		b.n = b.n_rows = 0;
		share_prefill(s, &b, n_batch);
		/* decoding requests first: their next token never waits behind a prompt */
		for (int pass = 0; pass < 2; pass++) {
			for (uint32_t i = 0; i < s->o.parallel; i++) {
				struct job *j = s->slots[i];

				if (!j)
					continue;
				if (j->cancelled) {
					finish(s, j, "cancelled");
					continue;
				}
				if (now >= j->deadline) {
					finish(s, j, "length");
					continue;
				}
				if (pass == 0 && j->state == JOB_DECODE) {
					b.tok[b.n] = j->last;
					b.pos[b.n] = (int32_t)(j->n_prompt + j->n_gen - 1);
					b.seq[b.n] = j->seq;
					b.logits[b.n++] = !j->n_feed;
					/* tokens the server writes into the reply (a call's markers) */
					for (uint32_t f = 0; f < j->n_feed; f++) {
						b.tok[b.n] = j->feed[f];
						b.pos[b.n] = (int32_t)(j->n_prompt + j->n_gen + f);
						b.seq[b.n] = j->seq;
						b.logits[b.n++] = f + 1 == j->n_feed;
					}
					j->n_gen += j->n_feed;
					s->m.completion_tokens += j->n_feed;
					if (j->n_feed)
						j->last = j->feed[j->n_feed - 1];
					j->n_feed = 0;
					b.row[b.n_rows++] = j;
				} else if (pass == 1 && j->state == JOB_PREFILL && b.take[i]) {
					uint32_t k = b.take[i];

					n_pre++;
					for (uint32_t t = 0; t < k; t++) {
						b.tok[b.n] = j->prompt[j->n_fed];
						b.pos[b.n] = (int32_t)j->n_fed;
						b.seq[b.n] = j->seq;
						j->n_fed++;
						b.logits[b.n++] = j->n_fed == j->n_prompt;
					}
					if (j->n_fed == j->n_prompt)
						b.row[b.n_rows++] = j;
				}
			}
		}
		if (!b.n)
			continue;
		if (n_pre > 1)
			s->m.prefill_shared_batches++;
		if (n_pre > s->m.prefill_seqs_max)
			s->m.prefill_seqs_max = n_pre;
		mb.tokens = b.tok;
		mb.pos = b.pos;
		mb.seq = b.seq;
		mb.logits = b.logits;
		mb.n = b.n;
		/* the HTTP threads admit and cancel meanwhile; these jobs stay referenced */
		pthread_mutex_unlock(&s->lock);
		ret = moe_ctx_eval_batch(s->ctx, &mb);
		pthread_mutex_lock(&s->lock);
		s->m.batches++;
		s->m.batch_tokens += b.n;
		moe_ctx_get_stats(s->ctx, &s->m.ctx);
		for (uint32_t r = 0; r < b.n_rows; r++) {
			struct job *j = b.row[r];
			int32_t tok;

			if (j->state == JOB_DONE)
				continue;
			if (ret < 0) {
				snprintf(j->error, sizeof(j->error), "the forward pass failed: %s",
					 moe_errmsg());
				finish(s, j, "error");
				continue;
			}
			if (j->cancelled) {
				finish(s, j, "cancelled");
				continue;
			}
			tok = moe_sampler_sample(j->sampler, moe_ctx_logits(s->ctx, r));
			if (tok < 0) {
				snprintf(j->error, sizeof(j->error), "sampling failed: %s",
					 moe_errmsg());
				finish(s, j, "error");
				continue;
			}
			j->state = JOB_DECODE;
			took(s, j, tok);
		}
		if (ret < 0)
			for (uint32_t i = 0; i < s->o.parallel; i++)
				if (s->slots[i] && s->slots[i]->state == JOB_PREFILL) {
					snprintf(s->slots[i]->error, sizeof(s->slots[i]->error),
						 "the forward pass failed: %s", moe_errmsg());
					finish(s, s->slots[i], "error");
				}
	}
	pthread_mutex_unlock(&s->lock);
	free(b.tok);
	free(b.pos);
	free(b.seq);
	free(b.logits);
	free(b.row);
	free(b.take);
	return NULL;
}

int sched_start(struct server *s)
{
	s->slots = calloc(s->o.parallel, sizeof(*s->slots));
	if (!s->slots)
		return -ENOMEM;
	s->queue_tail = &s->queue;
	s->m.started = now_s();
	if (pthread_create(&s->engine, NULL, engine, s)) {
		free(s->slots);
		return -EAGAIN;
	}
	return 0;
}

void sched_stop(struct server *s)
{
	pthread_mutex_lock(&s->lock);
	s->stopping = true;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->engine, NULL);
	free(s->slots);
}
