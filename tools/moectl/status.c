/* SPDX-License-Identifier: MIT */
/*
 * moectl status [--watch [--interval S] [--count N]]: the models registered
 * with moe.ko and their counters, and every engine that publishes its live
 * counters (moe_engine_list).  --watch redraws like top on a terminal and
 * prints one snapshot per interval elsewhere.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "moe/moe.h"
#include "moectl.h"

#define MAX_ENGINES 256
#define MAX_MODELS 256
/* an engine not evaluating whose last write is older than this is idle: no tokens/s */
#define IDLE_AFTER_S 1.0

struct snapshot {
	int kmod_ret;                /* 0, or the failure of moe_kmod_open / _next */
	char kmod_err[512];
	struct moe_kmod_model_info *models;
	int n_models;
	struct moe_engine_info *engines;
	int n_engines;               /* may exceed MAX_ENGINES: only that many are kept */
	uint64_t now_ns;
};

/* Median of the latency histogram: bucket i holds [2^i, 2^(i+1)) us. */
static unsigned long long lat_p50_us(const struct moe_kmod_model_info *m)
{
	uint64_t seen = 0;

	if (!m->requests)
		return 0;
	for (int i = 0; i < MOE_KMOD_LAT_BUCKETS; i++) {
		seen += m->lat_hist[i];
		if (seen * 2 >= m->requests)
			return 1ull << i;
	}
	return 1ull << (MOE_KMOD_LAT_BUCKETS - 1);
}

static void take(struct snapshot *s)
{
	struct moe_kmod *k = NULL;
	struct timespec ts;
	uint32_t id = 0;
	int ret;

	s->n_models = 0;
	s->kmod_err[0] = 0;
	ret = moe_kmod_open(&k);
	while (!ret && s->n_models < MAX_MODELS) {
		ret = moe_kmod_next(k, id, &s->models[s->n_models]);
		if (!ret)
			id = s->models[s->n_models++].id;
	}
	/* -ENOENT from moe_kmod_next is the end of the list */
	if (ret == -ENOENT && k)
		ret = 0;
	if (ret < 0)
		snprintf(s->kmod_err, sizeof(s->kmod_err), "%s", moe_errmsg());
	if (k)
		moe_kmod_destroy(k);
	s->kmod_ret = ret;
	s->n_engines = moe_engine_list(s->engines, MAX_ENGINES);
	if (s->n_engines < 0)
		s->n_engines = 0;
	clock_gettime(CLOCK_REALTIME, &ts);
	s->now_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double age_s(const struct snapshot *s, const struct moe_engine_info *e)
{
	return s->now_ns > e->update_ns ? (double)(s->now_ns - e->update_ns) / 1e9 : 0;
}

static bool idle(const struct snapshot *s, const struct moe_engine_info *e)
{
	return !e->busy && age_s(s, e) > IDLE_AFTER_S;
}

static json_t *model_json(const struct moe_kmod_model_info *m)
{
	json_t *o = json_object(), *hist = json_array();

	tj_set(o, "id", tj_u64(m->id));
	tj_set(o, "name", tj_str(m->name));
	tj_set(o, "extents", tj_u64(m->n_extents));
	/* header and resident tensors: non-zero when it runs as moe:NAME */
	tj_set(o, "meta_extents", tj_u64(m->n_meta));
	tj_set(o, "file_bytes", tj_u64(m->file_size));
	tj_set(o, "bytes", tj_u64(m->bytes));
	tj_set(o, "requests", tj_u64(m->requests));
	tj_set(o, "errors", tj_u64(m->errors));
	tj_set(o, "inflight", tj_u64(m->inflight));
	for (int i = 0; i < MOE_KMOD_LAT_BUCKETS; i++)
		tj_push(hist, tj_u64(m->lat_hist[i]));
	tj_set(o, "latency_us_log2_hist", hist);
	return o;
}

static json_t *engine_json(const struct snapshot *s, const struct moe_engine_info *e)
{
	json_t *o = json_object();

	tj_set(o, "pid", tj_i64(e->pid));
	tj_set(o, "id", tj_u64(e->id));
	tj_set(o, "state", tj_str(e->busy ? "running" : idle(s, e) ? "idle" : "ready"));
	tj_set(o, "model", tj_str(e->model));
	tj_set(o, "backend", tj_str(e->backend));
	tj_set(o, "started", tj_u64(e->start_ns / 1000000000u));
	tj_set(o, "updated_s_ago", tj_real(age_s(s, e)));
	tj_set(o, "tokens", tj_u64(e->tokens));
	tj_set(o, "tokens_per_s", tj_real(idle(s, e) ? 0 : e->tokens_per_s));
	tj_set(o, "prefill_tokens", tj_u64(e->prefill_tokens));
	tj_set(o, "decode_tokens", tj_u64(e->decode_tokens));
	tj_set(o, "decode_tps", tj_real(e->decode_tps));
	tj_set(o, "hit_rate", tj_real(e->hit_rate));
	tj_set(o, "expert_hits", tj_u64(e->expert_hits));
	tj_set(o, "expert_misses", tj_u64(e->expert_misses));
	tj_set(o, "bytes_read", tj_u64(e->bytes_read));
	tj_set(o, "read_gbps", tj_real(e->read_gbps));
	tj_set(o, "bytes_copied", tj_u64(e->bytes_copied));
	tj_set(o, "prefetches", tj_u64(e->prefetches));
	tj_set(o, "prefetch_precision", e->prefetches ? tj_real(e->prefetch_precision) :
		json_null());
	tj_set(o, "stall_s", tj_real(e->stall_s));
	tj_set(o, "n_slots", tj_u64(e->n_slots));
	tj_set(o, "vram_budget", tj_u64(e->vram_budget));
	tj_set(o, "vram_used", tj_u64(e->vram_used));
	tj_set(o, "vram_peak", tj_u64(e->vram_peak));
	tj_set(o, "host_budget", tj_u64(e->host_budget));
	tj_set(o, "host_used", tj_u64(e->host_used));
	return o;
}

static int print_json(const struct snapshot *s)
{
	json_t *doc = json_object(), *models = json_array(), *engines = json_array();

	tj_set(doc, "driver", s->kmod_ret ? json_null() : tj_str("moe"));
	if (s->kmod_ret)
		tj_set(doc, "driver_error", tj_str(s->kmod_err));
	for (int i = 0; i < s->n_models; i++)
		tj_push(models, model_json(&s->models[i]));
	tj_set(doc, "models", models);
	for (int i = 0; i < s->n_engines && i < MAX_ENGINES; i++)
		tj_push(engines, engine_json(s, &s->engines[i]));
	tj_set(doc, "engines", engines);
	return tj_print(doc);
}

/* "1.2 GiB" without the spaces the table cannot spare */
static const char *short_bytes(uint64_t b, char *buf, unsigned len)
{
	human_bytes(b, buf, len);
	for (char *p = buf; *p; p++)
		if (*p == ' ')
			memmove(p, p + 1, strlen(p));
	return buf;
}

/* @err_line: the driver's failure as a line of the table (--watch), else left to stderr */
static void print_text(const struct snapshot *s, bool err_line)
{
	char b1[32], b2[32], b3[32], pf[16];

	if (s->kmod_ret) {
		if (err_line)
			printf("moe.ko: %s\n", s->kmod_err);
	} else {
		printf("%-4s %-24s %8s %12s %12s %10s %7s %8s %9s\n", "ID", "NAME", "EXTENTS",
		       "FILE", "READ", "REQUESTS", "ERRORS", "INFLIGHT", "P50(us)");
		for (int i = 0; i < s->n_models; i++) {
			const struct moe_kmod_model_info *m = &s->models[i];

			printf("%-4u %-24s %8u %12s %12s %10llu %7llu %8llu %9llu\n", m->id, m->name,
			       m->n_extents, human_bytes(m->file_size, b1, sizeof(b1)),
			       human_bytes(m->bytes, b2, sizeof(b2)),
			       (unsigned long long)m->requests, (unsigned long long)m->errors,
			       (unsigned long long)m->inflight, lat_p50_us(m));
		}
		if (!s->n_models)
			printf("(no models registered: `moectl load NAME MODEL` as root)\n");
	}
	if (!s->kmod_ret || err_line)
		printf("\n");
	if (!s->n_engines) {
		printf("(no engines running: moe-run, moe-server and other programs using libmoe "
		       "publish here unless MOE_NO_PUBLISH=1)\n");
		return;
	}
	printf("%-8s %-3s %-7s %-5s %10s %8s %6s %7s %6s %8s %-19s %-9s %s\n", "PID", "ID",
	       "STATE", "BACK", "TOKENS", "TOK/S", "HIT%", "READ/s", "PREF%", "STALL(s)",
	       "VRAM USED/BUDGET", "HOST", "MODEL");
	for (int i = 0; i < s->n_engines && i < MAX_ENGINES; i++) {
		const struct moe_engine_info *e = &s->engines[i];
		char vram[80], rd[16];

		if (e->prefetches)
			snprintf(pf, sizeof(pf), "%.1f", 100 * e->prefetch_precision);
		else
			snprintf(pf, sizeof(pf), "-");
		snprintf(vram, sizeof(vram), "%s/%s", short_bytes(e->vram_used, b1, sizeof(b1)),
			 e->vram_budget ? short_bytes(e->vram_budget, b2, sizeof(b2)) : "none");
		snprintf(rd, sizeof(rd), "%.2fG", e->read_gbps);
		printf("%-8d %-3u %-7s %-5s %10llu %8.1f %6.1f %7s %6s %8.2f %-19s %-9s %s\n",
		       e->pid, e->id, e->busy ? "running" : idle(s, e) ? "idle" : "ready",
		       e->backend, (unsigned long long)e->tokens,
		       idle(s, e) ? 0.0 : e->tokens_per_s, 100 * e->hit_rate, rd, pf, e->stall_s,
		       vram, short_bytes(e->host_used, b3, sizeof(b3)), e->model);
	}
	if (s->n_engines > MAX_ENGINES)
		printf("(%d more engines not shown)\n", s->n_engines - MAX_ENGINES);
}

/* ------------------------------------------------------------ --watch */

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/*
 * Wait @ms, returning early (true) on SIGINT/SIGTERM or a 'q' typed on the
 * terminal; @keys says whether standard input is a terminal we read keys from.
 */
static bool wait_or_quit(int ms, bool keys)
{
	struct timespec end, now;

	clock_gettime(CLOCK_MONOTONIC, &end);
	end.tv_sec += ms / 1000;
	end.tv_nsec += (long)(ms % 1000) * 1000000;
	if (end.tv_nsec >= 1000000000) {
		end.tv_sec++;
		end.tv_nsec -= 1000000000;
	}
	while (!stop) {
		struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
		long left;
		char c;

		clock_gettime(CLOCK_MONOTONIC, &now);
		left = (end.tv_sec - now.tv_sec) * 1000 + (end.tv_nsec - now.tv_nsec) / 1000000;
		if (left <= 0)
			return false;
		if (poll(&p, keys ? 1 : 0, (int)left) > 0 && (p.revents & POLLIN)) {
			if (read(STDIN_FILENO, &c, 1) == 1 && (c == 'q' || c == 'Q'))
				return true;
		}
	}
	return true;
}

static int watch(struct snapshot *s, double interval, uint32_t count)
{
	bool keys = isatty(STDIN_FILENO), screen = isatty(STDOUT_FILENO) && !json_output;
	struct sigaction sa = { .sa_handler = on_signal };
	struct termios saved, raw;
	int ret = 0;

	/* no SA_RESTART: poll() returns at once with EINTR */
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (keys && tcgetattr(STDIN_FILENO, &saved) == 0) {
		raw = saved;
		raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
		raw.c_cc[VMIN] = 0;
		raw.c_cc[VTIME] = 0;
		tcsetattr(STDIN_FILENO, TCSANOW, &raw);
	} else {
		keys = false;
	}
	for (uint32_t n = 0; !stop && (!count || n < count); n++) {
		if (n && wait_or_quit((int)(interval * 1000), keys))
			break;
		take(s);
		if (screen) {
			char when[16];
			time_t t = time(NULL);

			strftime(when, sizeof(when), "%H:%M:%S", localtime(&t));
			printf("\033[H\033[2J");
			printf("moectl status, every %.1fs, %s  (q or Ctrl-C quits)\n\n", interval,
			       when);
		} else if (n && !json_output) {
			printf("\n");
		}
		if (json_output) {
			ret = print_json(s);
		} else {
			print_text(s, true);
			ret = tool_flush_stdout() < 0;
		}
		if (ret)
			break;
	}
	if (keys)
		tcsetattr(STDIN_FILENO, TCSANOW, &saved);
	return ret;
}

int do_status(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "watch", no_argument, NULL, 'w' },
		{ "interval", required_argument, NULL, 'i' },
		{ "count", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct snapshot s = { 0 };
	bool watching = false, timing = false;
	double interval = 1.0;
	uint32_t count = 0;
	int c, ret;

	while ((c = getopt_long(argc, argv, "jwi:n:h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json_output = true;
			break;
		case 'w':
			watching = true;
			break;
		case 'i':
			if (tool_parse_double("--interval", optarg, 0.1, 3600, &interval))
				return EXIT_USAGE;
			timing = true;
			break;
		case 'n':
			if (tool_parse_u32("--count", optarg, 1, UINT32_MAX, &count))
				return EXIT_USAGE;
			timing = true;
			break;
		case 'h':
			printf("usage: moectl status [--json] [--watch [--interval S] [--count N]]\n"
			       "Models registered with moe.ko (extents, bytes, requests, errors, "
			       "latency)\nand the live counters of every running engine (tokens/s, "
			       "hit rate, GB/s read,\nprefetch precision, stalls, memory).  --watch "
			       "refreshes every S seconds\n(default 1) until q, Ctrl-C or N "
			       "snapshots.\n");
			return 0;
		default:
			return EXIT_USAGE;
		}
	}
	if (optind != argc)
		return usage_error("status: no arguments expected");
	if (timing && !watching)
		return usage_error("status: --interval and --count go with --watch");
	s.models = calloc(MAX_MODELS, sizeof(*s.models));
	s.engines = calloc(MAX_ENGINES, sizeof(*s.engines));
	if (!s.models || !s.engines) {
		free(s.models);
		free(s.engines);
		return fail("status: out of memory");
	}
	if (watching) {
		ret = watch(&s, interval, count);
	} else {
		take(&s);
		ret = json_output ? print_json(&s) : (print_text(&s, false), 0);
		/* the driver's absence is a failure, said after the engines are listed */
		if (!ret && s.kmod_ret)
			ret = fail("%s", s.kmod_err);
	}
	free(s.models);
	free(s.engines);
	return ret;
}
