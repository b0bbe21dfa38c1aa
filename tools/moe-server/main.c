// SPDX-License-Identifier: MIT
/*
 * moe-server: the OpenAI HTTP API over one model, the requests that run at
 * once decoded together (Documentation/server.rst).  Options, the model and
 * the context, then the HTTP front; SIGTERM or SIGINT stops taking requests,
 * lets those admitted finish, and exits.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine_opts.h"
#include "server.h"
#include "tool.h"


static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " -m MODEL [OPTIONS]\n"
		"Serve a MoE model over the OpenAI HTTP API, the running requests decoded together.\n\n"
		"  -m, --model FILE       GGUF model\n"
		"      --host ADDR        address to listen on (127.0.0.1; 0.0.0.0 for every one)\n"
		"      --port N           TCP port (8080; 0 picks a free one, printed on stderr)\n"
		"      --api-key KEY      require 'Authorization: Bearer KEY' (default: none)\n"
		"      --alias NAME       the model id in /v1/models and responses (the file name)\n"
		"      --parallel N       requests decoded together, each its own sequence (4)\n"
		"      --queue N          requests waiting beyond those; more get 503 (16)\n"
		"      --ctx N            positions per request, prompt and reply (2048)\n"
		"      --max-tokens N     the most tokens a request may generate (1024)\n"
		"      --max-messages N   the most chat messages a request may hold (256)\n"
		"      --max-body SIZE    the largest request body (1M)\n"
		"      --timeout S        seconds a request may take, queue included (600)\n"
		"  -h, --help             this text\n"
		"Engine:\n");
	engine_opts_usage(f);
}

static int bad(const char *fmt, const char *arg)
{
	fprintf(stderr, PROG ": ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	return EXIT_USAGE;
}

static int parse_size(const char *opt, const char *s, uint64_t *out)
{
	if (moe_parse_size(s, out) < 0) {
		fprintf(stderr, PROG ": %s %s\n", opt, moe_errmsg());
		return EXIT_USAGE;
	}
	return 0;
}

static int parse_args(int argc, char **argv, struct server_opts *o)
{
	enum { O_HOST = 256, O_PORT, O_KEY, O_ALIAS, O_PAR, O_QUEUE, O_CTX, O_MAXTOK, O_MAXMSG,
	       O_BODY, O_TIMEOUT };
	static const struct option own[] = {
		{ "model", required_argument, 0, 'm' },
		{ "host", required_argument, 0, O_HOST },
		{ "port", required_argument, 0, O_PORT },
		{ "api-key", required_argument, 0, O_KEY },
		{ "alias", required_argument, 0, O_ALIAS },
		{ "parallel", required_argument, 0, O_PAR },
		{ "queue", required_argument, 0, O_QUEUE },
		{ "ctx", required_argument, 0, O_CTX },
		{ "max-tokens", required_argument, 0, O_MAXTOK },
		{ "max-messages", required_argument, 0, O_MAXMSG },
		{ "max-body", required_argument, 0, O_BODY },
		{ "timeout", required_argument, 0, O_TIMEOUT },
		{ "help", no_argument, 0, 'h' },
		{ 0 },
	};
	const struct option *lo = engine_opts_join(own);
	uint32_t port;
	int c, ret = 0;

	while (!ret && (c = getopt_long(argc, argv, "m:h", lo, NULL)) != -1) {
		switch (c) {
		case 'm': o->model = optarg; break;
		case O_HOST: o->host = optarg; break;
		case O_PORT:
			ret = tool_parse_u32("--port", optarg, 0, 65535, &port);
			o->port = (uint16_t)port;
			break;
		case O_KEY:
			o->api_key = optarg;
			if (!*optarg)
				ret = bad("--api-key '%s': the key must not be empty", optarg);
			break;
		case O_ALIAS: o->alias = optarg; break;
		case O_PAR: ret = tool_parse_u32("--parallel", optarg, 1, 256, &o->parallel); break;
		case O_QUEUE: ret = tool_parse_u32("--queue", optarg, 0, 65536, &o->queue); break;
		case O_CTX: ret = tool_parse_u32("--ctx", optarg, 16, 1u << 20, &o->n_ctx); break;
		case O_MAXTOK:
			ret = tool_parse_u32("--max-tokens", optarg, 1, 1u << 20, &o->max_tokens);
			break;
		case O_MAXMSG:
			ret = tool_parse_u32("--max-messages", optarg, 1, 1u << 16, &o->max_messages);
			break;
		case O_BODY:
			ret = parse_size("--max-body", optarg, &o->max_body);
			if (!ret && o->max_body > (1ull << 30))
				ret = bad("--max-body %s: at most 1G", optarg);
			break;
		case O_TIMEOUT:
			ret = tool_parse_u32("--timeout", optarg, 1, 86400, &o->timeout_s);
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case '?':
			return EXIT_USAGE;
		default:
			ret = engine_opts_parse(&o->eng, c, optarg);
			break;
		}
	}
	if (ret)
		return ret;
	if (engine_opts_check(&o->eng))
		return EXIT_USAGE;
	if (optind < argc)
		return bad("unexpected argument '%s'", argv[optind]);
	if (!o->model)
		return bad("%s", "no model: give -m MODEL");
	if (o->max_tokens >= o->n_ctx)
		o->max_tokens = o->n_ctx - 1;
	return 0;
}

static int serve(struct server *s)
{
	struct moe_ctx_params cp;
	sigset_t set;
	const char *base;
	int sig, ret;

	ret = moe_model_open(s->o.model, &s->model);
	if (ret < 0) {
		fprintf(stderr, PROG ": %s\n", moe_errmsg());
		return 1;
	}
	ret = moe_tokenizer_load(s->model, &s->tok);
	if (ret < 0 && ret != -ENOENT) {
		fprintf(stderr, PROG ": tokenizer: %s\n", moe_errmsg());
		return 1;
	}
	if (ret < 0) {
		s->tok = NULL;
		fprintf(stderr, PROG ": %s has no vocabulary: prompts must be token ids and "
			"replies are token ids\n", s->o.model);
	}
	if (s->tok) {
		/* the text of BOS and EOS, for the formats that write them (chatfmt.c) */
		int id = moe_tokenizer_bos(s->tok), n;

		if (id >= 0 && (n = moe_token_to_piece(s->tok, id, s->bos, sizeof(s->bos) - 1)) > 0) {
			s->bos[n] = 0;
			s->cf.bos = s->bos;
		}
		id = moe_tokenizer_eos(s->tok);
		if (id >= 0 && (n = moe_token_to_piece(s->tok, id, s->eos, sizeof(s->eos) - 1)) > 0) {
			s->eos[n] = 0;
			s->cf.eos = s->eos;
		}
	}
	s->test_reply = getenv("MOE_SERVER_TEST_REPLY");
	if (s->test_reply)
		fprintf(stderr, PROG ": MOE_SERVER_TEST_REPLY is set: every reply is its text, "
			"not the model's\n");
	base = strrchr(s->o.model, '/');
	snprintf(s->model_id, sizeof(s->model_id), "%s",
		 s->o.alias ? s->o.alias : base ? base + 1 : s->o.model);
	moe_ctx_params_init(&cp);
	engine_opts_apply(&s->o.eng, &cp);
	cp.n_ctx = s->o.n_ctx;
	cp.n_seq = s->o.parallel;
	ret = moe_ctx_create(s->model, &cp, &s->ctx);
	if (ret < 0) {
		fprintf(stderr, PROG ": %s%s\n", s->o.eng.vram_zero ? "--vram 0: " : "",
			moe_errmsg());
		return 1;
	}
	s->n_ctx = moe_ctx_n_ctx(s->ctx);
	/* what the budget holds (expert slots, KV), as moe-run --stats says it */
	fprintf(stderr, PROG ": %s\n", moe_ctx_describe(s->ctx));

	/* the signals are taken by sigwait here, not by whichever thread they hit */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (sched_start(s)) {
		fprintf(stderr, PROG ": cannot start the engine thread\n");
		return 1;
	}
	if (http_run(s)) {
		sched_stop(s);
		return 1;
	}
	sigwait(&set, &sig);
	fprintf(stderr, PROG ": %s: finishing the requests admitted, taking no more\n",
		strsignal(sig));
	pthread_mutex_lock(&s->lock);
	s->draining = true;
	while (s->queued || s->running) {
		pthread_mutex_unlock(&s->lock);
		usleep(20000);
		pthread_mutex_lock(&s->lock);
	}
	/* the last responses go out before the connections close (bounded: 10 s) */
	for (int i = 0; i < 500 && s->live_requests; i++) {
		pthread_mutex_unlock(&s->lock);
		usleep(20000);
		pthread_mutex_lock(&s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	http_stop();
	sched_stop(s);
	fprintf(stderr, PROG ": stopped\n");
	return 0;
}

int main(int argc, char **argv)
{
	static struct server s = {
		.o = { .host = "127.0.0.1", .port = 8080, .parallel = 4, .queue = 16, .n_ctx = 2048,
		       .max_tokens = 1024, .max_messages = 256, .max_body = 1 << 20,
		       .timeout_s = 600 },
		.lock = PTHREAD_MUTEX_INITIALIZER,
		.wake = PTHREAD_COND_INITIALIZER,
	};
	int ret;

	tool_init(PROG);
	engine_opts_init(&s.o.eng);
	ret = parse_args(argc, argv, &s.o);
	if (ret) {
		fprintf(stderr, "try `" PROG " --help`\n");
		return ret;
	}
	ret = serve(&s);
	moe_ctx_destroy(s.ctx);
	moe_tokenizer_destroy(s.tok);
	moe_model_destroy(s.model);
	return ret;
}
