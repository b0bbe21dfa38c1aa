/* SPDX-License-Identifier: MIT */
/*
 * moectl plan: the memory plan moe_plan() makes for a budget (what
 * moe_ctx_create() will lay out) and the decode speed it predicts from the
 * bytes a token routes, the share of them that miss the expert slots and the
 * read bandwidth.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "moe/moe.h"
#include "moectl.h"

/*
 * The share of the read bandwidth the low end of the range assumes: expert
 * reads queue behind each other at layer boundaries, where a layer waits for
 * its experts before the next layer's reads can be issued.
 */
#define LOW_BW_SHARE 0.75

struct plan_opts {
	const char *model, *backend, *state_dir;
	uint64_t vram, host_cache;
	uint32_t n_ctx;
	double read_gbps, target_tps, gpu_hour_cost;
	bool no_stats, measure;
	char measured[400];         /* with --measure: the engine that read */
};

/* Bytes of experts --measure reads: enough for a steady rate, a few seconds on one drive. */
#define MEASURE_BYTES (1ull << 30)

/* What one budget predicts. */
struct prediction {
	double hit_uniform;         /* device hit rate if every expert were equally likely */
	double hit_stats;           /* ... with the saved popularity, the hottest kept; <0: none */
	double tps_low, tps_high;   /* tokens/s bounded by reads; INFINITY: reads never bound */
};

static void plan_usage(FILE *f)
{
	fprintf(f,
		"usage: moectl plan MODEL --vram SIZE [--host-cache SIZE] [--ctx N] [--backend B]\n"
		"                   [--read-gbps X | --measure] [--target-tps N]\n"
		"                   [--gpu-hour-cost X]\n"
		"                   [--state-dir DIR | --no-stats]\n"
		"The memory plan a run with this budget uses, and the decode tokens/s it predicts\n"
		"from the routed bytes per token, the miss rate and the read bandwidth.\n");
}

/*
 * Hit rate of @slots_per_layer slots that hold each layer's most used
 * experts, by the saved counts: the share of routings they take.  What a
 * frequency-keeping cache reaches once warm; -1 without counts.
 */
static double stats_hit_rate(const struct moe_routestats *rs, double slots_per_layer)
{
	struct moe_routestats_info info;
	uint64_t all = 0;
	double hit = 0;
	uint64_t *c;

	if (!rs || moe_routestats_info(rs, &info) || !info.n_expert)
		return -1;
	c = malloc(sizeof(*c) * info.n_expert);
	if (!c)
		return -1;
	for (uint32_t l = 0; l < info.n_layer; l++) {
		uint64_t sum = 0;
		double kept = 0, s = slots_per_layer;

		for (uint32_t e = 0; e < info.n_expert; e++)
			sum += c[e] = moe_routestats_count(rs, l, e);
		if (!sum)
			continue;
		/* the s largest counts, the last one in part when s is fractional */
		for (uint32_t k = 0; k < info.n_expert && s > 0; k++, s -= 1) {
			uint32_t best = 0;

			for (uint32_t e = 1; e < info.n_expert; e++)
				if (c[e] > c[best])
					best = e;
			kept += (double)c[best] * (s < 1 ? s : 1);
			c[best] = 0;
		}
		hit += kept;
		all += sum;
	}
	free(c);
	return all ? hit / (double)all : -1;
}

static void predict(const struct moe_plan *p, const struct moe_hparams *hp,
		    const struct moe_model_summary *s, const struct moe_routestats *rs,
		    double gbps, struct prediction *out)
{
	double per_layer = hp->n_moe_layer ? (double)p->n_slots / hp->n_moe_layer : 0;
	double best_hit;

	out->hit_uniform = p->all_experts || !hp->n_expert ? 1 :
			   fmin(1, per_layer / hp->n_expert);
	out->hit_stats = p->all_experts ? 1 : stats_hit_rate(rs, per_layer);
	best_hit = out->hit_stats >= 0 ? fmax(out->hit_stats, out->hit_uniform) :
		   out->hit_uniform;
	out->tps_low = out->tps_high = INFINITY;
	if (gbps <= 0)
		return;
	if (out->hit_uniform < 1)
		out->tps_low = LOW_BW_SHARE * gbps * 1e9 /
			       ((1 - out->hit_uniform) * (double)s->routed_bytes_per_token);
	if (best_hit < 1)
		out->tps_high = gbps * 1e9 / ((1 - best_hit) * (double)s->routed_bytes_per_token);
}

static int make_plan(struct moe_model *m, const struct plan_opts *o, uint64_t vram,
		     struct moe_plan *out)
{
	struct moe_ctx_params cp;

	moe_ctx_params_init(&cp);
	cp.vram_bytes = vram;
	cp.host_cache_bytes = o->host_cache;
	cp.n_ctx = o->n_ctx;
	cp.backend = o->backend;
	return moe_plan(m, &cp, out);
}

/*
 * The smallest budget (to the byte) whose low end reaches @target tokens/s, by
 * bisection over moe_plan(); 0 with *all set when even every expert in
 * device memory leaves reads the bound (they never are then), or no budget.
 */
static uint64_t budget_for(struct moe_model *m, const struct plan_opts *o,
			   const struct moe_hparams *hp, const struct moe_model_summary *s,
			   const struct moe_routestats *rs, double target)
{
	struct moe_plan p;
	struct prediction pr;
	uint64_t lo = 1, hi;

	if (make_plan(m, o, 0, &p))
		return 0;
	hi = p.device_bytes;
	/* about 40 plans for a model of hundreds of GB: each is arithmetic, no I/O */
	while (hi - lo > 1) {
		uint64_t mid = lo + (hi - lo) / 2;

		if (make_plan(m, o, mid, &p) == 0) {
			predict(&p, hp, s, rs, o->read_gbps, &pr);
			if (pr.tps_low >= target) {
				hi = mid;
				continue;
			}
		}
		lo = mid;
	}
	return hi;
}

static json_t *tps_json(double v)
{
	return isinf(v) ? json_null() : tj_real(v);
}

static void print_tps(const char *what, double v)
{
	if (isinf(v))
		printf("%s not bounded by reads (every routed expert has a slot)\n", what);
	else
		printf("%s %.2f tokens/s\n", what, v);
}

static int report(const struct plan_opts *o, const struct moe_plan *p,
		  const struct moe_hparams *hp, const struct moe_model_summary *s,
		  const struct prediction *pr, const char *stats_src, uint64_t target_budget)
{
	char b[6][32];

	if (json_output) {
		json_t *doc = json_object(), *cls = json_array(), *pj = json_object();

		tj_set(doc, "model", tj_str(o->model));
		tj_set(doc, "backend", tj_str(p->backend));
		tj_set(doc, "vram_budget", tj_u64(p->vram_budget));
		tj_set(doc, "device_bytes", tj_u64(p->device_bytes));
		tj_set(doc, "resident_bytes", tj_u64(p->resident_bytes));
		tj_set(doc, "kv_bytes", tj_u64(p->kv_bytes));
		tj_set(doc, "scratch_bytes", tj_u64(p->scratch_bytes));
		tj_set(doc, "workspace_bytes", tj_u64(p->workspace_bytes));
		tj_set(doc, "slot_bytes", tj_u64(p->slot_bytes));
		tj_set(doc, "staging_bytes", tj_u64(p->staging_bytes));
		tj_set(doc, "host_cache_bytes", tj_u64(p->host_cache_bytes));
		tj_set(doc, "n_ctx", tj_u64(p->n_ctx));
		tj_set(doc, "n_experts", tj_u64(p->n_experts));
		tj_set(doc, "n_slots", tj_u64(p->n_slots));
		tj_set(doc, "n_host_slots", tj_u64(p->n_host_slots));
		tj_set(doc, "all_experts", tj_bool(p->all_experts));
		for (uint32_t i = 0; i < p->n_classes && i < MOE_PLAN_MAX_CLASSES; i++) {
			json_t *c = json_object();

			tj_set(c, "slot_bytes", tj_u64(p->classes[i].slot_bytes));
			tj_set(c, "n_experts", tj_u64(p->classes[i].n_experts));
			tj_set(c, "n_slots", tj_u64(p->classes[i].n_slots));
			tj_set(c, "n_host_slots", tj_u64(p->classes[i].n_host_slots));
			tj_push(cls, c);
		}
		tj_set(doc, "classes", cls);
		tj_set(doc, "why", tj_str(p->why));
		tj_set(doc, "routed_bytes_per_token", tj_u64(s->routed_bytes_per_token));
		tj_set(pj, "hit_rate_uniform", tj_real(pr->hit_uniform));
		tj_set(pj, "hit_rate_stats", pr->hit_stats >= 0 ? tj_real(pr->hit_stats) :
			       json_null());
		tj_set(pj, "stats", tj_str(stats_src));
		if (o->read_gbps > 0) {
			tj_set(pj, "read_gbps", tj_real(o->read_gbps));
			tj_set(pj, "read_gbps_measured", o->measure ? tj_str(o->measured) :
				       json_null());
			tj_set(pj, "tps_low", tps_json(pr->tps_low));
			tj_set(pj, "tps_high", tps_json(pr->tps_high));
			if (o->gpu_hour_cost > 0) {
				tj_set(pj, "cost_per_mtok_high",
				       tj_real(isinf(pr->tps_low) ? 0 :
					       o->gpu_hour_cost / (pr->tps_low * 3600) * 1e6));
				tj_set(pj, "cost_per_mtok_low",
				       tj_real(isinf(pr->tps_high) ? 0 :
					       o->gpu_hour_cost / (pr->tps_high * 3600) * 1e6));
			}
			if (o->target_tps > 0) {
				tj_set(pj, "target_tps", tj_real(o->target_tps));
				tj_set(pj, "target_vram_bytes", tj_u64(target_budget));
			}
		}
		tj_set(doc, "prediction", pj);
		return tj_print(doc);
	}
	printf("plan for %s on %s, budget %s (n_ctx %u)\n", o->model, p->backend,
	       p->vram_budget ? human_bytes(p->vram_budget, b[0], sizeof(b[0])) : "unlimited",
	       p->n_ctx);
	printf("device memory:    %s = resident %s + KV %s + scratch %s + workspace %s + "
	       "slots %s\n", human_bytes(p->device_bytes, b[0], sizeof(b[0])),
	       human_bytes(p->resident_bytes, b[1], sizeof(b[1])),
	       human_bytes(p->kv_bytes, b[2], sizeof(b[2])),
	       human_bytes(p->scratch_bytes, b[3], sizeof(b[3])),
	       human_bytes(p->workspace_bytes, b[4], sizeof(b[4])),
	       human_bytes(p->slot_bytes, b[5], sizeof(b[5])));
	printf("host memory:      staging %s, host cache %s (outside the budget)\n",
	       human_bytes(p->staging_bytes, b[0], sizeof(b[0])),
	       human_bytes(p->host_cache_bytes, b[1], sizeof(b[1])));
	printf("expert slots:     %u device, %u host, for %u routed experts%s\n", p->n_slots,
	       p->n_host_slots, p->n_experts, p->all_experts ? " (all of them: no reads)" : "");
	for (uint32_t i = 0; i < p->n_classes && i < MOE_PLAN_MAX_CLASSES; i++)
		printf("  class %u:        %s per slot, %u slots (+%u host) for %u experts\n", i,
		       human_bytes(p->classes[i].slot_bytes, b[0], sizeof(b[0])),
		       p->classes[i].n_slots, p->classes[i].n_host_slots,
		       p->classes[i].n_experts);
	printf("why:              %s\n", p->why);
	printf("routed per token: %s\n",
	       human_bytes(s->routed_bytes_per_token, b[0], sizeof(b[0])));
	printf("hit rate:         %.3f if routing were uniform (the low end)", pr->hit_uniform);
	if (pr->hit_stats >= 0)
		printf("; %.3f with the most used experts kept, by %s (the high end)\n",
		       pr->hit_stats, stats_src);
	else
		printf("; no routing statistics (%s): uniform routing assumed at both ends\n",
		       stats_src);
	if (o->read_gbps <= 0) {
		printf("tokens/s:         give --read-gbps X (the drive's GB/s) or --measure for a "
		       "prediction\n");
		return 0;
	}
	if (o->measure)
		printf("measured:         %.3f GB/s reading up to %llu MiB of its experts, cold, "
		       "through %s\n", o->read_gbps, MEASURE_BYTES >> 20, o->measured);
	printf("assumed:          reads reach %.0f%% of %.2f GB/s at the low end, all of it at "
	       "the high end; compute is not counted\n", LOW_BW_SHARE * 100, o->read_gbps);
	print_tps("decode, low:     ", pr->tps_low);
	print_tps("decode, high:    ", pr->tps_high);
	if (o->gpu_hour_cost > 0 && !isinf(pr->tps_low))
		printf("cost:             %.4f to %.4f per million tokens at %.2f per GPU hour\n",
		       isinf(pr->tps_high) ? 0 : o->gpu_hour_cost / (pr->tps_high * 3600) * 1e6,
		       o->gpu_hour_cost / (pr->tps_low * 3600) * 1e6, o->gpu_hour_cost);
	if (o->target_tps > 0)
		printf("for %.1f tokens/s: a budget of %s (the low end reaches it)\n",
		       o->target_tps,
		       human_bytes(target_budget, b[0], sizeof(b[0])));
	(void)hp;
	return 0;
}

int do_plan(int argc, char **argv)
{
	enum { O_VRAM = 256, O_HOST, O_CTX, O_BACKEND, O_GBPS, O_TARGET, O_COST, O_STATE,
	       O_NO_STATS, O_MEASURE };
	static const struct option opts[] = {
		{ "vram", required_argument, NULL, O_VRAM },
		{ "host-cache", required_argument, NULL, O_HOST },
		{ "ctx", required_argument, NULL, O_CTX },
		{ "backend", required_argument, NULL, O_BACKEND },
		{ "read-gbps", required_argument, NULL, O_GBPS },
		{ "target-tps", required_argument, NULL, O_TARGET },
		{ "gpu-hour-cost", required_argument, NULL, O_COST },
		{ "state-dir", required_argument, NULL, O_STATE },
		{ "no-stats", no_argument, NULL, O_NO_STATS },
		{ "measure", no_argument, NULL, O_MEASURE },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct plan_opts o = { .backend = "cpu" };
	struct moe_routestats *rs = NULL;
	struct moe_model_summary s;
	struct moe_hparams hp;
	struct prediction pr;
	struct moe_model *m;
	struct moe_plan p;
	char dir[4096], path[4200], src[4300] = "none saved";
	uint64_t target_budget = 0;
	bool have_vram = false;
	int c, ret;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		ret = 0;
		switch (c) {
		case O_VRAM:
			if (moe_parse_size(optarg, &o.vram) < 0)
				return usage_error("plan: --vram %s", moe_errmsg());
			have_vram = true;
			break;
		case O_HOST:
			if (moe_parse_size(optarg, &o.host_cache) < 0)
				return usage_error("plan: --host-cache %s", moe_errmsg());
			break;
		case O_CTX:
			ret = tool_parse_u32("--ctx", optarg, 1, 1u << 24, &o.n_ctx);
			break;
		case O_BACKEND:
			o.backend = optarg;
			break;
		case O_GBPS:
			ret = tool_parse_double("--read-gbps", optarg, 0.001, 1e4, &o.read_gbps);
			break;
		case O_TARGET:
			ret = tool_parse_double("--target-tps", optarg, 0.001, 1e7, &o.target_tps);
			break;
		case O_COST:
			ret = tool_parse_double("--gpu-hour-cost", optarg, 0, 1e6,
						&o.gpu_hour_cost);
			break;
		case O_STATE:
			o.state_dir = optarg;
			break;
		case O_NO_STATS:
			o.no_stats = true;
			break;
		case O_MEASURE:
			o.measure = true;
			break;
		case 'h':
			plan_usage(stdout);
			return 0;
		default:
			plan_usage(stderr);
			return EXIT_USAGE;
		}
		if (ret)
			return ret;
	}
	if (optind + 1 != argc)
		return usage_error("plan: give one MODEL file; see `moectl plan --help`");
	if (!have_vram)
		return usage_error("plan: --vram SIZE is required (e.g. --vram 24G)");
	if (o.measure && o.read_gbps > 0)
		return usage_error("plan: --read-gbps X or --measure, not both");
	if (o.target_tps > 0 && o.read_gbps <= 0 && !o.measure)
		return usage_error("plan: --target-tps needs --read-gbps X or --measure to predict "
				   "from");
	if (o.state_dir && o.no_stats)
		return usage_error("plan: --state-dir or --no-stats, not both");
	o.model = argv[optind];
	if (moe_model_open(o.model, &m))
		return fail("%s", moe_errmsg());
	moe_model_hparams(m, &hp);
	moe_model_summary(m, &s);
	ret = make_plan(m, &o, o.vram, &p);
	if (ret) {
		fail("%s", moe_errmsg());
		moe_model_destroy(m);
		return 1;
	}
	if (!o.no_stats && (o.state_dir || moe_state_dir(dir, sizeof(dir)) == 0) &&
	    moe_routestats_path(m, o.state_dir ? o.state_dir : dir, path, sizeof(path)) == 0) {
		ret = moe_routestats_load(path, m, &rs);
		if (ret == 0)
			snprintf(src, sizeof(src), "%s", path);
		else if (ret != -ENOENT)
			snprintf(src, sizeof(src), "%s", moe_errmsg());
	} else if (o.no_stats) {
		snprintf(src, sizeof(src), "--no-stats");
	}
	if (o.measure) {
		o.read_gbps = bench_engine_gbps(o.model, MEASURE_BYTES, o.measured,
						sizeof(o.measured));
		if (o.read_gbps <= 0) {
			fail("--measure: %s", o.measured);
			moe_routestats_destroy(rs);
			moe_model_destroy(m);
			return 1;
		}
	}
	predict(&p, &hp, &s, rs, o.read_gbps, &pr);
	if (o.target_tps > 0)
		target_budget = budget_for(m, &o, &hp, &s, rs, o.target_tps);
	ret = report(&o, &p, &hp, &s, &pr, src, target_budget);
	moe_routestats_destroy(rs);
	moe_model_destroy(m);
	return ret;
}
