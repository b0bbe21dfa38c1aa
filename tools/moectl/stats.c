/* SPDX-License-Identifier: MIT */
/*
 * moectl stats: the routing statistics saved for a model (or those of a
 * trace): per layer, how popular each expert is, how even the router is
 * (entropy), its top experts and how strongly a layer's choice predicts
 * the next layer's.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "moectl.h"

#define TOP 4

struct layer_row {
	uint32_t layer;
	uint64_t tokens;
	double entropy, max_entropy;     /* bits */
	uint32_t top[TOP];
	double top_share[TOP];
	int next;                        /* the next routed layer, -1 */
	double transition;               /* mean P(the likeliest successor is chosen) */
	double chance;                   /* the same for a router without memory */
};

static void layer_row(const struct moe_routestats *rs, uint32_t l, uint32_t n_expert,
		      struct layer_row *r)
{
	uint64_t total = 0, weight = 0;
	double acc = 0;

	memset(r, 0, sizeof(*r));
	r->layer = l;
	r->tokens = moe_routestats_layer_tokens(rs, l);
	r->next = moe_routestats_next_layer(rs, l);
	r->max_entropy = log2((double)n_expert);
	for (uint32_t e = 0; e < n_expert; e++)
		total += moe_routestats_count(rs, l, e);
	for (uint32_t e = 0; e < n_expert && total; e++) {
		double p = (double)moe_routestats_count(rs, l, e) / total;

		if (p > 0)
			r->entropy -= p * log2(p);
	}
	for (uint32_t i = 0; i < TOP; i++) {
		uint64_t best = 0;
		int32_t at = -1;

		/* the i-th most used: below the one before it, ties to the lower id */
		for (uint32_t e = 0; e < n_expert; e++) {
			uint64_t c = moe_routestats_count(rs, l, e);
			bool taken = false;

			for (uint32_t j = 0; j < i; j++)
				taken |= r->top[j] == e;
			if (!taken && (at < 0 || c > best)) {
				best = c;
				at = (int32_t)e;
			}
		}
		r->top[i] = (uint32_t)at;
		r->top_share[i] = r->tokens ? (double)best / r->tokens : 0;
	}
	if (r->next < 0)
		return;
	for (uint32_t e = 0; e < n_expert; e++) {
		uint64_t c = moe_routestats_count(rs, l, e), best = 0, out = 0;

		for (uint32_t f = 0; f < n_expert; f++) {
			uint64_t t = moe_routestats_transition(rs, l, e, f);

			best = t > best ? t : best;
			out += t;
		}
		if (!c || !out)
			continue;
		acc += (double)best;
		weight += c;
	}
	r->transition = weight ? acc / weight : 0;
	{
		uint64_t nt = moe_routestats_layer_tokens(rs, (uint32_t)r->next), used = 0;

		for (uint32_t f = 0; f < n_expert; f++)
			used += moe_routestats_count(rs, (uint32_t)r->next, f);
		r->chance = nt ? (double)used / nt / n_expert : 0;
	}
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: moectl stats [--state-dir DIR] [--json|--csv] MODEL\n"
		"       moectl stats [--json|--csv] --file STATS | --trace TRACE\n"
		"Routing statistics: per layer the tokens seen, the entropy of expert popularity\n"
		"(bits; log2(experts) is a uniform router), the top experts with the share of\n"
		"tokens choosing each, and the transition strength to the next routed layer: how\n"
		"often the likeliest successor of a chosen expert is chosen (chance: k/experts).\n"
		"MODEL's statistics are those moe-run saved in the state directory\n"
		"(--state-dir, else $MOE_STATE_DIR, $XDG_STATE_HOME/moe or ~/.local/state/moe).\n");
}

static int load(const char *model_path, const char *dir, const char *file, const char *trace,
		struct moe_routestats **rs, char *what, size_t len)
{
	char def[4096], path[4096];
	struct moe_model *m;
	int ret;

	if (trace) {
		struct moe_trace *t;

		ret = moe_trace_open(trace, &t);
		if (ret < 0)
			return fail("%s", moe_errmsg());
		ret = moe_routestats_from_trace(t, 0, 0, rs);
		moe_trace_destroy(t);
		snprintf(what, len, "%s", trace);
		return ret < 0 ? fail("%s", moe_errmsg()) : 0;
	}
	if (file) {
		ret = moe_routestats_load(file, NULL, rs);
		snprintf(what, len, "%s", file);
		return ret < 0 ? fail("%s", moe_errmsg()) : 0;
	}
	if (!dir) {
		if (moe_state_dir(def, sizeof(def)) < 0)
			return fail("%s; or give --state-dir DIR", moe_errmsg());
		dir = def;
	}
	ret = moe_model_open(model_path, &m);
	if (ret < 0)
		return fail("%s", moe_errmsg());
	ret = moe_routestats_path(m, dir, path, sizeof(path));
	if (ret == 0)
		ret = moe_routestats_load(path, m, rs);
	moe_model_destroy(m);
	if (ret == -ENOENT)
		return fail("no routing statistics for %s in %s: run the model with moe-run "
			    "(--state-dir %s) first", model_path, dir, dir);
	if (ret < 0)
		return fail("%s", moe_errmsg());
	snprintf(what, len, "%s", path);
	return 0;
}

int do_stats(int argc, char **argv)
{
	enum { O_DIR = 256, O_FILE, O_TRACE, O_CSV };
	static const struct option opts[] = {
		{ "state-dir", required_argument, NULL, O_DIR },
		{ "file", required_argument, NULL, O_FILE },
		{ "trace", required_argument, NULL, O_TRACE },
		{ "csv", no_argument, NULL, O_CSV },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *dir = NULL, *file = NULL, *trace = NULL;
	bool json = json_output, csv = false;
	json_t *doc = NULL, *layers = NULL;
	struct moe_routestats_info info;
	struct moe_routestats *rs = NULL;
	char what[4096];
	int c, ret;

	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case O_DIR:
			dir = optarg;
			break;
		case O_FILE:
			file = optarg;
			break;
		case O_TRACE:
			trace = optarg;
			break;
		case O_CSV:
			csv = true;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if ((file || trace) ? optind != argc || (file && trace) : optind + 1 != argc)
		return usage_error("stats: give MODEL, --file STATS or --trace TRACE; see "
				   "`moectl stats --help`");
	if (json && csv)
		return usage_error("stats: --json or --csv, not both");
	ret = load(optind < argc ? argv[optind] : NULL, dir, file, trace, &rs, what, sizeof(what));
	if (ret)
		return ret;
	moe_routestats_info(rs, &info);
	if (json) {
		doc = json_object();
		layers = json_array();
		tj_set(doc, "source", tj_str(what));
		tj_set(doc, "tokens", tj_u64(info.tokens));
		tj_set(doc, "n_layer", tj_u64(info.n_layer));
		tj_set(doc, "n_expert", tj_u64(info.n_expert));
		tj_set(doc, "layers", json_incref(layers));
	} else if (csv) {
		printf("layer,tokens,entropy_bits,top1,top1_share,top2,top2_share,top3,top3_share,"
		       "top4,top4_share,next_layer,transition,chance\n");
	} else {
		printf("%s: %llu tokens, %u layers x %u experts\n"
		       "layer   tokens  entropy/max  top experts (share of tokens)        "
		       "transition (chance)\n", what, (unsigned long long)info.tokens, info.n_layer,
		       info.n_expert);
	}
	for (uint32_t l = 0; l < info.n_layer; l++) {
		struct layer_row r;

		if (!moe_routestats_layer_tokens(rs, l))
			continue;
		layer_row(rs, l, info.n_expert, &r);
		if (json) {
			json_t *o = json_object(), *top = json_array();

			tj_set(o, "layer", tj_u64(l));
			tj_set(o, "tokens", tj_u64(r.tokens));
			tj_set(o, "entropy", tj_real(r.entropy));
			tj_set(o, "max_entropy", tj_real(r.max_entropy));
			for (int i = 0; i < TOP; i++) {
				json_t *e = json_object();

				tj_set(e, "expert", tj_u64(r.top[i]));
				tj_set(e, "share", tj_real(r.top_share[i]));
				tj_push(top, e);
			}
			tj_set(o, "top", top);
			tj_set(o, "next_layer", tj_i64(r.next));
			tj_set(o, "transition", tj_real(r.transition));
			tj_set(o, "chance", tj_real(r.chance));
			tj_push(layers, o);
		} else if (csv) {
			printf("%u,%llu,%.4f", l, (unsigned long long)r.tokens, r.entropy);
			for (int i = 0; i < TOP; i++)
				printf(",%u,%.4f", r.top[i], r.top_share[i]);
			printf(",%d,%.4f,%.4f\n", r.next, r.transition, r.chance);
		} else {
			char top[128];
			int o = 0;

			for (int i = 0; i < TOP; i++)
				o += snprintf(top + o, sizeof(top) - (size_t)o, "%s%u:%.2f", i ? " " : "",
					      r.top[i], r.top_share[i]);
			printf("%5u %8llu  %5.2f/%-5.2f  %-36s ", l, (unsigned long long)r.tokens,
			       r.entropy, r.max_entropy, top);
			if (r.next >= 0)
				printf("%.3f (%.3f) -> %d\n", r.transition, r.chance, r.next);
			else
				printf("-\n");
		}
	}
	moe_routestats_destroy(rs);
	json_decref(layers);
	return json ? tj_print(doc) : 0;
}
