/* SPDX-License-Identifier: MIT */
/*
 * moe-bench prefetch: how close the cache's policies and prefetchers come
 * to Belady's optimum on routing traces.  For each trace and slot count,
 * every configuration of a grid runs on the first half of the sequences;
 * the one that comes closest to the targets (demand-miss bytes <= 1.15x
 * Belady's, fetched bytes <= 1.5x Belady's) is then run on the second half,
 * with the statistics of the first half known at its start (as if saved by
 * earlier runs: they warm the cache and the predictor), beside Belady and
 * LRU started from the same warm cache.  The figures are counts from the
 * simulator (moe_sim_run), not timings.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "moe/moe.h"

#define MISS_TARGET 1.15
#define FETCH_TARGET 1.5
#define PREC_TARGET 0.8
#define RECALL_TARGET 0.5

static const char *const policies[] = {
	"lru", "lfu:decay=0.9", "lfu:decay=0.98", "stats:decay=0.9", "stats:decay=0.95",
	"stats:decay=0.98",
};
static const char *const prefetchers[] = {
	"none", "trans:min=0.5", "trans:min=0.6", "trans:min=0.7", "trans:min=0.8",
};
/* these need the speculative predictions a trace may carry, this many layers ahead */
static const struct {
	const char *name;
	uint32_t depth;
} spec_prefetchers[] = {
	{ "spec:min=0.5", 1 }, { "spec:min=0.7", 1 }, { "mix:min=0.5", 1 }, { "mix:min=0.6", 1 },
	{ "mix:min=0.7", 1 }, { "mix:min=0.8", 1 }, { "mix:depth=2,min=0.7", 2 },
};

struct row {
	const char *policy, *prefetch;
	struct moe_sim_result r;
};

static int run(const struct moe_trace *t, uint32_t slots, uint32_t s0, uint32_t s1,
	       const struct moe_routestats *stats, uint64_t bytes, const char *pol,
	       const char *pf, struct moe_sim_result *out)
{
	struct moe_sim_params p = { .n_slots = slots, .policy = pol, .prefetch = pf,
				    .expert_bytes = bytes, .seq_begin = s0, .seq_end = s1,
				    .stats = stats };
	int ret = moe_sim_run(t, &p, out);

	if (ret < 0)
		fprintf(stderr, "moe-bench: %s/%s, %u slots: %s\n", pol, pf, slots, moe_errmsg());
	return ret;
}

/* How far from the targets: <= 1 meets both byte targets. */
static double distance(const struct moe_sim_result *r, const struct moe_sim_result *opt)
{
	double m = r->miss_bytes_per_token / (MISS_TARGET * opt->miss_bytes_per_token);
	double f = r->fetched_bytes_per_token / (FETCH_TARGET * opt->fetched_bytes_per_token);

	return m > f ? m : f;
}

static void print_row(json_t *rows, const char *trace, double pct, uint32_t slots,
		      const char *role, const struct row *w, const struct moe_sim_result *opt)
{
	const struct moe_sim_result *r = &w->r;
	double xm = r->miss_bytes_per_token / opt->miss_bytes_per_token;
	double xf = r->fetched_bytes_per_token / opt->fetched_bytes_per_token;

	if (rows) {
		json_t *o = json_object();

		tj_set(o, "trace", tj_str(trace));
		tj_set(o, "share", tj_real(pct));
		tj_set(o, "slots", tj_u64(slots));
		tj_set(o, "role", tj_str(role));
		tj_set(o, "policy", tj_str(w->policy));
		tj_set(o, "prefetch", tj_str(w->prefetch));
		tj_set(o, "hit_rate", tj_real(r->hit_rate));
		tj_set(o, "miss_bytes_per_token", tj_real(r->miss_bytes_per_token));
		tj_set(o, "fetched_bytes_per_token", tj_real(r->fetched_bytes_per_token));
		tj_set(o, "miss_vs_belady", tj_real(xm));
		tj_set(o, "fetched_vs_belady", tj_real(xf));
		tj_set(o, "prefetch_precision", tj_real(r->prefetch_precision));
		tj_set(o, "prefetch_recall", tj_real(r->prefetch_recall));
		tj_push(rows, o);
		return;
	}
	printf("  %3.0f%% %5u  %-7s %-18s %-22s %8.2f %8.2f  %5.2f %5.2f  %5.3f %5.3f\n", pct, slots,
	       role, w->policy, w->prefetch, r->miss_bytes_per_token, r->fetched_bytes_per_token,
	       xm, xf, r->prefetch_precision, r->prefetch_recall);
}

static int bench_trace(const char *path, const double *pct, uint32_t n_pct, uint64_t bytes,
		       json_t *out)
{
	struct moe_routestats *learned = NULL;
	struct moe_trace_info ti;
	struct moe_trace *t;
	const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	uint32_t half;
	int ret;

	ret = moe_trace_open(path, &t);
	if (ret < 0) {
		fprintf(stderr, "moe-bench: %s\n", moe_errmsg());
		return 1;
	}
	moe_trace_info(t, &ti);
	half = ti.n_seq / 2;
	if (half < 1) {
		fprintf(stderr, "moe-bench: %s: one sequence cannot be split into a half to tune on "
			"and a half to report on\n", path);
		moe_trace_destroy(t);
		return 1;
	}
	ret = moe_routestats_from_trace(t, 0, half, &learned);
	if (!out)
		printf("%s: %u sequences (%llu tokens), %u routed layers x %u experts, top-%u%s; "
		       "tuned on sequences 0..%u, reported on %u..%u\n"
		       "  share slots  role    policy             prefetch               "
		       "miss/tok fetch/tok  xmiss xfetch  prec  recall\n",
		       name, ti.n_seq, (unsigned long long)ti.n_tok, ti.n_routed, ti.n_expert,
		       ti.max_k, ti.depth ? ", speculative predictions" : "", half - 1, half,
		       ti.n_seq - 1);
	for (uint32_t i = 0; i < n_pct && !ret; i++) {
		uint32_t slots = (uint32_t)lround(pct[i] / 100.0 * ti.n_routed * ti.n_expert);
		struct moe_sim_result opt, r;
		struct row best = { 0 }, rows[3];
		double best_d = INFINITY;
		size_t n_pf = sizeof(prefetchers) / sizeof(*prefetchers);
		size_t n_sp = ti.depth ? sizeof(spec_prefetchers) / sizeof(*spec_prefetchers) : 0;

		ret = run(t, slots, 0, half, NULL, bytes, "belady", "none", &opt);
		for (size_t a = 0; a < sizeof(policies) / sizeof(*policies) && !ret; a++)
			for (size_t b = 0; b < n_pf + n_sp && !ret; b++) {
				const char *pf = b < n_pf ? prefetchers[b] : spec_prefetchers[b - n_pf].name;
				double d;

				if (b >= n_pf && spec_prefetchers[b - n_pf].depth > ti.depth)
					continue;
				ret = run(t, slots, 0, half, NULL, bytes, policies[a], pf, &r);
				d = ret ? INFINITY : distance(&r, &opt);
				if (d < best_d) {
					best_d = d;
					best.policy = policies[a];
					best.prefetch = pf;
				}
			}
		if (ret)
			break;
		/* the second half, knowing what the first taught */
		rows[0] = (struct row){ "belady", "none" };
		rows[1] = (struct row){ "lru", "none" };
		rows[2] = best;
		/* Belady too starts from the cache warmed with what the first half made popular */
		for (int j = 0; j < 3 && !ret; j++)
			ret = run(t, slots, half, ti.n_seq, learned, bytes, rows[j].policy,
				  rows[j].prefetch, &rows[j].r);
		if (ret)
			break;
		print_row(out, name, pct[i], slots, "optimum", &rows[0], &rows[0].r);
		print_row(out, name, pct[i], slots, "lru", &rows[1], &rows[0].r);
		print_row(out, name, pct[i], slots, "best", &rows[2], &rows[0].r);
		if (!out) {
			const struct moe_sim_result *b = &rows[2].r, *o = &rows[0].r;

			printf("  %27s targets: miss <= %.2fx %s, fetched <= %.1fx %s, precision >= "
			       "%.1f at recall >= %.1f %s\n", "", MISS_TARGET,
			       b->miss_bytes_per_token <= MISS_TARGET * o->miss_bytes_per_token ?
			       "met" : "missed", FETCH_TARGET,
			       b->fetched_bytes_per_token <= FETCH_TARGET *
			       o->fetched_bytes_per_token ? "met" : "missed", PREC_TARGET,
			       RECALL_TARGET, b->prefetch_precision >= PREC_TARGET &&
			       b->prefetch_recall >= RECALL_TARGET ? "met" : "missed");
		}
	}
	moe_routestats_destroy(learned);
	moe_trace_destroy(t);
	return ret < 0 ? 1 : 0;
}

int bench_prefetch(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "share", required_argument, NULL, 's' },
		{ "expert-bytes", required_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	double pct[8] = { 10, 25, 50 };
	uint32_t n_pct = 3;
	uint64_t bytes = 0;
	bool json = false;
	json_t *rows = NULL;
	int c, ret = 0;

	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 's': {
			char *s = optarg, *end;

			n_pct = 0;
			while (*s && n_pct < 8) {
				pct[n_pct] = strtod(s, &end);
				if (end == s || pct[n_pct] <= 0 || pct[n_pct] > 100) {
					fprintf(stderr, "moe-bench: --share '%s': percentages of all "
						"experts, e.g. 10,25,50\n", optarg);
					return 2;
				}
				n_pct++;
				s = *end == ',' ? end + 1 : end;
				if (*end && *end != ',') {
					fprintf(stderr, "moe-bench: --share: unexpected '%s'\n", end);
					return 2;
				}
			}
			break;
		}
		case 'b':
			if (moe_parse_size(optarg, &bytes) < 0) {
				fprintf(stderr, "moe-bench: --expert-bytes %s\n", moe_errmsg());
				return 2;
			}
			break;
		case 'h':
			printf("usage: moe-bench prefetch [--json] [--share P,P,...] [--expert-bytes N] "
			       "TRACE...\n");
			return 0;
		default:
			return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "moe-bench prefetch: give one or more TRACE files\n");
		return 2;
	}
	if (json)
		rows = json_array();
	for (int i = optind; i < argc && !ret; i++)
		ret = bench_trace(argv[i], pct, n_pct, bytes, rows);
	if (ret) {
		json_decref(rows);
		return ret;
	}
	return json ? tj_print(rows) : 0;
}
