/* SPDX-License-Identifier: MIT */
/*
 * moectl trace simulate: replay a routing trace against every eviction
 * policy and prefetcher, and against Belady's offline optimum, through the
 * cache's own bookkeeping (moe_sim_run).
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "moectl.h"

#define MAX_ITEMS 32

static const char *const all_policies[] = { "lru", "lfu", "stats" };
static const char *const all_prefetchers[] = { "none", "pop", "trans", "spec", "mix" };

struct sim_opts {
	const char *policies[MAX_ITEMS], *prefetchers[MAX_ITEMS];
	uint32_t n_policies, n_prefetchers;
	uint32_t slots[MAX_ITEMS];
	double slot_pct[MAX_ITEMS];      /* > 0: a share of every routed expert */
	uint32_t n_slots;
	uint64_t expert_bytes;
	double read_gbps, layer_us;
	uint32_t host_slots, pin_hot, flags;
	uint32_t seq_begin, seq_end, learn_begin, learn_end;
	bool learn;
};

static void sim_usage(FILE *f)
{
	fprintf(f,
		"usage: moectl trace simulate TRACE --slots N[,N...] [OPTIONS]\n"
		"Replay a routing trace against the cache's policies and prefetchers, and against\n"
		"Belady's optimal offline policy.\n\n"
		"  --slots N[,N...]      device expert slots, all layers together; N%% for a share\n"
		"                        of all routed experts (10%%,25%%,50%%)\n"
		"  --policy NAME|all     eviction policy, with options after ':' (lfu:decay=0.8);\n"
		"                        repeatable (lru)\n"
		"  --prefetch NAME|all   prefetcher, with options (mix:depth=2,min=0.6); repeatable\n"
		"                        (none)\n"
		"  --expert-bytes N      bytes of one expert (figures count experts without it)\n"
		"  --model FILE          take the expert bytes from a model\n"
		"  --read-gbps X         read bandwidth; with --layer-us, model time: tokens/s and\n"
		"  --layer-us T          which prefetches arrive in time (T: one routed layer's compute)\n"
		"  --host-slots N        a tier-1 host cache of N slots under the device slots\n"
		"  --layer-pools         one pool of slots per layer instead of one for all\n"
		"  --pin-hot N           N slots held by hot experts\n"
		"  --seqs A:B            replay sequences A..B-1 only (all)\n"
		"  --learn A:B           statistics of sequences A..B-1 known at the start, as if\n"
		"                        saved by an earlier run\n"
		"  --json                a list of {policy, prefetch, slots, hit_rate,\n"
		"                        miss_bytes_per_token, fetched_bytes_per_token,\n"
		"                        prefetch_precision, prefetch_recall, tokens_per_s, ...}\n");
}

static int parse_range(const char *s, const char *what, uint32_t *a, uint32_t *b)
{
	char *end;
	unsigned long x = strtoul(s, &end, 10), y;

	if (end == s || *end != ':')
		return usage_error("%s '%s': expected A:B (sequence numbers)", what, s);
	s = end + 1;
	y = strtoul(s, &end, 10);
	if (end == s || *end || y <= x || y > UINT32_MAX)
		return usage_error("%s: expected A:B with A < B", what);
	*a = (uint32_t)x;
	*b = (uint32_t)y;
	return 0;
}

static int parse_slots(const char *s, struct sim_opts *o)
{
	while (*s) {
		char *end;
		double v = strtod(s, &end);

		if (end == s || v <= 0 || o->n_slots == MAX_ITEMS)
			return usage_error("--slots '%s': expected counts or shares like 77 or 10%%", s);
		if (*end == '%') {
			o->slot_pct[o->n_slots] = v;
			end++;
		} else if (v != floor(v) || v > UINT32_MAX) {
			return usage_error("--slots: %g is not a whole number of slots", v);
		}
		o->slots[o->n_slots++] = (uint32_t)v;
		s = end;
		if (*s == ',')
			s++;
		else if (*s)
			return usage_error("--slots: unexpected '%s'", s);
	}
	return 0;
}

static int add_item(const char **list, uint32_t *n, const char *v, const char *const *all,
		    size_t n_all)
{
	if (!strcmp(v, "all")) {
		for (size_t i = 0; i < n_all && *n < MAX_ITEMS; i++)
			list[(*n)++] = all[i];
		return 0;
	}
	if (*n == MAX_ITEMS)
		return usage_error("at most %d policies and prefetchers", MAX_ITEMS);
	list[(*n)++] = v;
	return 0;
}

static int expert_bytes_of(const char *path, uint64_t *out)
{
	struct moe_model *m;
	struct moe_model_summary s;
	int ret = moe_model_open(path, &m);

	if (ret < 0)
		return fail("%s", moe_errmsg());
	ret = moe_model_summary(m, &s);
	moe_model_destroy(m);
	if (ret < 0)
		return fail("%s", moe_errmsg());
	*out = s.expert_bytes_each;
	return 0;
}

static void print_row(json_t *rows, const char *pol, const char *pf, uint32_t slots,
		      const struct moe_sim_result *r, const struct moe_sim_result *opt)
{
	double rm = opt && opt->miss_bytes_per_token > 0 ?
		    r->miss_bytes_per_token / opt->miss_bytes_per_token : 0;
	double rf = opt && opt->fetched_bytes_per_token > 0 ?
		    r->fetched_bytes_per_token / opt->fetched_bytes_per_token : 0;

	if (rows) {
		json_t *o = json_object();

		tj_set(o, "policy", tj_str(pol));
		tj_set(o, "prefetch", tj_str(pf));
		tj_set(o, "slots", tj_u64(slots));
		tj_set(o, "hit_rate", tj_real(r->hit_rate));
		tj_set(o, "miss_bytes_per_token", tj_real(r->miss_bytes_per_token));
		tj_set(o, "fetched_bytes_per_token", tj_real(r->fetched_bytes_per_token));
		tj_set(o, "prefetch_precision", tj_real(r->prefetch_precision));
		tj_set(o, "prefetch_recall", tj_real(r->prefetch_recall));
		tj_set(o, "tokens_per_s", tj_real(r->tokens_per_s));
		tj_set(o, "read_bytes_per_token", tj_real(r->read_bytes_per_token));
		tj_set(o, "miss_vs_belady", tj_real(rm));
		tj_set(o, "fetched_vs_belady", tj_real(rf));
		tj_set(o, "tokens", tj_u64(r->tokens));
		tj_set(o, "prefetches", tj_u64(r->prefetches));
		tj_set(o, "prefetch_late", tj_u64(r->prefetch_late));
		tj_set(o, "prefetch_cancelled", tj_u64(r->prefetch_cancelled));
		tj_set(o, "stall_s", tj_real(r->stall_s));
		tj_push(rows, o);
		return;
	}
	printf("%-28s %-28s %6u %6.3f %10.3f %10.3f %5.2f %5.2f %6.3f %6.3f", pol, pf, slots,
	       r->hit_rate, r->miss_bytes_per_token, r->fetched_bytes_per_token, rm, rf,
	       r->prefetch_precision, r->prefetch_recall);
	if (r->tokens_per_s > 0)
		printf(" %9.1f", r->tokens_per_s);
	printf("\n");
}

static int simulate(const char *path, struct sim_opts *o, bool json)
{
	struct moe_routestats *stats = NULL;
	struct moe_trace_info ti;
	struct moe_trace *t;
	json_t *rows = NULL;
	int ret;

	ret = moe_trace_open(path, &t);
	if (ret < 0)
		return fail("%s", moe_errmsg());
	moe_trace_info(t, &ti);
	if (o->learn && (ret = moe_routestats_from_trace(t, o->learn_begin, o->learn_end,
							  &stats)) < 0) {
		moe_trace_destroy(t);
		return fail("%s", moe_errmsg());
	}
	if (!json)
		printf("%s: %u sequences, %llu tokens, %u routed layers x %u experts, top-%u%s\n"
		       "%-28s %-28s %6s %6s %10s %10s %5s %5s %6s %6s%s\n", path, ti.n_seq,
		       (unsigned long long)ti.n_tok, ti.n_routed, ti.n_expert, ti.max_k,
		       ti.depth ? ", with speculative predictions" : "", "policy", "prefetch",
		       "slots", "hit", o->expert_bytes ? "miss B/tok" : "miss/tok",
		       o->expert_bytes ? "fetch B/tok" : "fetch/tok", "xmiss", "xfet", "prec",
		       "recall", o->read_gbps > 0 && o->layer_us > 0 ? "  tokens/s" : "");
	else
		rows = json_array();
	for (uint32_t si = 0; si < o->n_slots && !ret; si++) {
		uint32_t slots = o->slot_pct[si] > 0 ?
				 (uint32_t)lround(o->slot_pct[si] / 100.0 * ti.n_routed *
						  ti.n_expert) : o->slots[si];
		struct moe_sim_params p = {
			.n_slots = slots, .n_host_slots = o->host_slots,
			.expert_bytes = o->expert_bytes, .read_gbps = o->read_gbps,
			.layer_us = o->layer_us, .seq_begin = o->seq_begin, .seq_end = o->seq_end,
			.stats = stats, .pin_hot = o->pin_hot, .flags = o->flags,
		};
		struct moe_sim_result opt, r;

		p.policy = "belady";
		ret = moe_sim_run(t, &p, &opt);
		if (ret < 0)
			break;
		print_row(rows, "belady", "none", slots, &opt, &opt);
		for (uint32_t i = 0; i < o->n_policies && !ret; i++)
			for (uint32_t j = 0; j < o->n_prefetchers && !ret; j++) {
				p.policy = o->policies[i];
				p.prefetch = o->prefetchers[j];
				ret = moe_sim_run(t, &p, &r);
				/* "all" skips the prefetchers this trace has no data for */
				if (ret == -EINVAL && !ti.depth && strstr(moe_errmsg(), "speculative")) {
					ret = 0;
					continue;
				}
				if (!ret)
					print_row(rows, o->policies[i], o->prefetchers[j], slots, &r,
						  &opt);
			}
	}
	if (ret < 0)
		fprintf(stderr, "moectl: %s\n", moe_errmsg());
	moe_routestats_destroy(stats);
	moe_trace_destroy(t);
	if (ret < 0) {
		json_decref(rows);
		return 1;
	}
	return json ? tj_print(rows) : 0;
}

static int do_simulate(int argc, char **argv)
{
	enum { O_SLOTS = 256, O_POLICY, O_PREFETCH, O_BYTES, O_MODEL, O_GBPS, O_LAYER_US,
	       O_HOST, O_POOLS, O_HOT, O_SEQS, O_LEARN };
	static const struct option opts[] = {
		{ "slots", required_argument, NULL, O_SLOTS },
		{ "policy", required_argument, NULL, O_POLICY },
		{ "prefetch", required_argument, NULL, O_PREFETCH },
		{ "expert-bytes", required_argument, NULL, O_BYTES },
		{ "model", required_argument, NULL, O_MODEL },
		{ "read-gbps", required_argument, NULL, O_GBPS },
		{ "layer-us", required_argument, NULL, O_LAYER_US },
		{ "host-slots", required_argument, NULL, O_HOST },
		{ "layer-pools", no_argument, NULL, O_POOLS },
		{ "pin-hot", required_argument, NULL, O_HOT },
		{ "seqs", required_argument, NULL, O_SEQS },
		{ "learn", required_argument, NULL, O_LEARN },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct sim_opts o = { 0 };
	const char *model = NULL;
	bool json = json_output;
	char *end;
	int c, ret;

	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case O_SLOTS:
			if ((ret = parse_slots(optarg, &o)))
				return ret;
			break;
		case O_POLICY:
			if ((ret = add_item(o.policies, &o.n_policies, optarg, all_policies,
					    sizeof(all_policies) / sizeof(*all_policies))))
				return ret;
			break;
		case O_PREFETCH:
			if ((ret = add_item(o.prefetchers, &o.n_prefetchers, optarg,
					    all_prefetchers,
					    sizeof(all_prefetchers) / sizeof(*all_prefetchers))))
				return ret;
			break;
		case O_BYTES:
			if (moe_parse_size(optarg, &o.expert_bytes) < 0)
				return usage_error("--expert-bytes: %s", moe_errmsg());
			break;
		case O_MODEL:
			model = optarg;
			break;
		case O_GBPS:
		case O_LAYER_US: {
			double v = strtod(optarg, &end);

			if (end == optarg || *end || !(v > 0))
				return usage_error("%s: expected a positive number",
						   c == O_GBPS ? "--read-gbps" : "--layer-us");
			*(c == O_GBPS ? &o.read_gbps : &o.layer_us) = v;
			break;
		}
		case O_HOST:
		case O_HOT: {
			unsigned long v = strtoul(optarg, &end, 10);

			if (end == optarg || *end || v > UINT32_MAX)
				return usage_error("%s: expected a count",
						   c == O_HOST ? "--host-slots" : "--pin-hot");
			*(c == O_HOST ? &o.host_slots : &o.pin_hot) = (uint32_t)v;
			break;
		}
		case O_POOLS:
			o.flags |= MOE_SIM_LAYER_POOLS;
			break;
		case O_SEQS:
			if ((ret = parse_range(optarg, "--seqs", &o.seq_begin, &o.seq_end)))
				return ret;
			break;
		case O_LEARN:
			if ((ret = parse_range(optarg, "--learn", &o.learn_begin, &o.learn_end)))
				return ret;
			o.learn = true;
			break;
		case 'j':
			json = true;
			break;
		case 'h':
			sim_usage(stdout);
			return 0;
		default:
			sim_usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind + 1 != argc)
		return usage_error("trace simulate: give one TRACE file; see `moectl trace simulate "
				   "--help`");
	if (!o.n_slots)
		return usage_error("trace simulate: --slots N is required (e.g. --slots 10%%,25%%)");
	if ((o.read_gbps > 0) != (o.layer_us > 0))
		return usage_error("--read-gbps and --layer-us go together");
	if (model && o.expert_bytes)
		return usage_error("give --model or --expert-bytes, not both");
	if (model && (ret = expert_bytes_of(model, &o.expert_bytes)))
		return ret;
	if (!o.n_policies)
		o.policies[o.n_policies++] = "lru";
	if (!o.n_prefetchers)
		o.prefetchers[o.n_prefetchers++] = "none";
	return simulate(argv[optind], &o, json);
}

static int do_trace_help(int argc, char **argv);

static const struct cmd trace_cmds[] = {
	{ "simulate", do_simulate, "simulate TRACE --slots N   replay against every policy" },
	{ "help", do_trace_help, "help                       this text" },
	{ 0 },
};

static int do_trace_help(int argc, char **argv)
{
	(void)argv;
	if (argc > 1)
		return usage_error("trace help: no arguments expected");
	cmd_help(trace_cmds, "moectl trace", stdout);
	return 0;
}

int do_trace(int argc, char **argv)
{
	return cmd_select(trace_cmds, argc - 1, argv + 1, "moectl trace");
}
