/* SPDX-License-Identifier: MIT */
/*
 * moe-bench decode: decode tokens/s of a model with everything resident, as
 * a ratio to the memory-bandwidth bound (weight bytes one token touches
 * divided by the read bandwidth measured in the same run with the same
 * threads), then with --vram set so that 50% and 25% of the expert bytes
 * fit, with the expert hit rate and the read rate of the file.  The resident
 * rate and the bandwidth are each the best of several runs, so that a busy
 * machine lowers both rather than only one of them.  The prompt before the
 * timed decode is evaluated twice, cold and warm; their rates are the prefill
 * tokens/s; --resident skips the budget runs.
 */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "engine_opts.h"
#include "progress.h"
#include "moe/moe.h"

#define READ_BYTES (512ull << 20)

/* Best of a few summing passes over a buffer far larger than the caches, GB/s. */
static double read_bandwidth(int threads)
{
	struct moe_threadpool *tp;
	uint64_t *buf = malloc(READ_BYTES);
	double best = 0;

	if (!buf || moe_threadpool_create(threads, &tp) < 0) {
		free(buf);
		return 0;
	}
	for (size_t i = 0; i < READ_BYTES / 8; i++)
		buf[i] = i;
	for (int r = 0; r < 5; r++) {
		double g = bench_read_gbps(tp, buf, READ_BYTES);

		if (g > best)
			best = g;
	}
	moe_threadpool_destroy(tp);
	free(buf);
	return best;
}

struct run_out {
	double tps, prefill_tps, cold_prefill_tps, hit_rate, read_gbps, stall_s;
	uint64_t bytes_read, vram_used, fixed;
	uint32_t n_slots, n_experts;
	char expert_io[16];
};

static int one_run(struct moe_model *m, uint64_t vram, int threads, uint32_t gds,
		   uint32_t n_prompt, uint32_t n_gen, struct run_out *o, bool quiet)
{
	struct progress bar;
	struct moe_ctx_params p;
	struct moe_ctx *ctx;
	struct moe_ctx_stats st;
	uint32_t vocab;
	int32_t *tok = malloc(sizeof(*tok) * n_prompt);
	int ret;

	if (!tok)
		return -ENOMEM;
	moe_ctx_params_init(&p);
	p.vram_bytes = vram;
	p.n_threads = threads;
	p.gds = gds;
	p.n_ctx = n_prompt + n_gen;
	ret = moe_ctx_create(m, &p, &ctx);
	if (ret < 0) {
		free(tok);
		return ret;
	}
	vocab = moe_ctx_n_vocab(ctx);
	for (uint32_t i = 0; i < n_prompt; i++)
		tok[i] = (int32_t)((i * 7919u + 13) % vocab);
	/*
	 * The prompt as one eval, twice: the first reads the experts it routes to
	 * from the file (cold_prefill_tps), the second, rewound to position 0,
	 * finds what the budget kept (prefill_tps, as llama-bench times its
	 * prompt after a warm-up run).  A one-token prompt is a decode step.
	 */
	ret = moe_ctx_eval(ctx, tok, n_prompt, 0, 0);
	if (!ret) {
		moe_ctx_get_stats(ctx, &st);
		o->cold_prefill_tps = n_prompt > 1 ? st.prefill_tps : st.decode_tps;
		moe_ctx_reset_stats(ctx);
		ret = moe_ctx_eval(ctx, tok, n_prompt, 0, 0);
	}
	if (!ret) {
		moe_ctx_get_stats(ctx, &st);
		o->prefill_tps = n_prompt > 1 ? st.prefill_tps : st.decode_tps;
	}
	/* time the decode only, from a warm prompt */
	moe_ctx_reset_stats(ctx);
	progress_start(&bar, "decode", n_gen, false, quiet);
	for (uint32_t i = 0; !ret && i < n_gen; i++) {
		const float *l = moe_ctx_logits(ctx, 0);
		int32_t best = 0;

		progress_update(&bar, i);
		for (uint32_t v = 1; v < vocab; v++)
			if (l[v] > l[best])
				best = (int32_t)v;
		ret = moe_ctx_eval(ctx, &best, 1, n_prompt + i, 0);
	}
	progress_end(&bar);
	if (!ret) {
		moe_ctx_get_stats(ctx, &st);
		o->tps = st.decode_tps;
		o->hit_rate = st.hit_rate;
		o->read_gbps = st.read_gbps;
		o->stall_s = st.stall_s;
		o->bytes_read = st.bytes_read;
		o->vram_used = st.vram_used;
		o->fixed = st.vram_used - (uint64_t)st.n_slots * st.slot_bytes;
		o->n_slots = st.n_slots;
		o->n_experts = st.n_experts;
		snprintf(o->expert_io, sizeof(o->expert_io), "%s", st.expert_io);
	}
	moe_ctx_destroy(ctx);
	free(tok);
	return ret;
}

int bench_decode(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "json", no_argument, 0, 'j' },
		{ "threads", required_argument, 0, 't' },
		{ "tokens", required_argument, 0, 'n' },
		{ "prompt", required_argument, 0, 'p' },
		{ "resident", no_argument, 0, 'r' },
		{ "gds", required_argument, 0, 'g' },
		{ "help", no_argument, 0, 'h' },
		{ 0 },
	};
	static const double fracs[] = { 0.5, 0.25 };
	struct moe_model *m;
	struct moe_model_summary sum;
	struct moe_tensor_info emb, out;
	struct run_out full = { 0 }, part[2];
	uint64_t touched;
	uint32_t n_gen = 32, n_prompt = 16, gds = MOE_GDS_AUTO;
	int threads = 0, c, ret = 0;
	bool json = false, resident_only = false;
	double bw, bound, best_prefill = 0, best_cold = 0;

	optind = 1;
	while ((c = getopt_long(argc, argv, "jt:n:p:rg:h", lo, NULL)) != -1) {
		switch (c) {
		case 'j': json = true; break;
		case 'r': resident_only = true; break;
		case 't': ret = tool_parse_threads("--threads", optarg, &threads); break;
		case 'n': ret = tool_parse_u32("--tokens", optarg, 1, 1u << 16, &n_gen); break;
		case 'p': ret = tool_parse_u32("--prompt", optarg, 1, 1u << 16, &n_prompt); break;
		case 'g': ret = engine_parse_gds(optarg, &gds); break;
		case 'h':
			printf("usage: moe-bench decode MODEL [--json] [--threads N] [--tokens N] "
			       "[--prompt N] [--resident] [--gds auto|on|off]\n");
			return 0;
		default:
			return EXIT_USAGE;
		}
		if (ret)
			return ret;
	}
	if (optind != argc - 1) {
		fprintf(stderr, "usage: moe-bench decode MODEL [--json] [--threads N] [--tokens N] "
			"[--prompt N] [--resident] [--gds auto|on|off]\n");
		return EXIT_USAGE;
	}
	ret = moe_model_open(argv[optind], &m);
	if (ret < 0 || moe_model_summary(m, &sum) < 0) {
		fprintf(stderr, "moe-bench decode: %s\n", moe_errmsg());
		return 1;
	}
	/* one token reads one embedding row, every other resident matrix, and its experts */
	touched = sum.resident_bytes + sum.routed_bytes_per_token;
	if (moe_model_find_tensor(m, "token_embd.weight", &emb) >= 0 &&
	    moe_model_find_tensor(m, "output.weight", &out) >= 0)
		touched -= emb.bytes;
	/* best of three, like the bandwidth: both are upper bounds of what the machine gives */
	for (int r = 0; !ret && r < 3; r++) {
		struct run_out o;

		ret = one_run(m, 0, threads, gds, n_prompt, n_gen, &o, json);
		if (!ret && (!r || o.tps > full.tps))
			full = o;
		if (!ret && o.prefill_tps > best_prefill)
			best_prefill = o.prefill_tps;
		if (!ret && o.cold_prefill_tps > best_cold)
			best_cold = o.cold_prefill_tps;
	}
	for (int i = 0; !ret && !resident_only && i < 2; i++) {
		uint64_t vram = full.fixed + (uint64_t)(fracs[i] * sum.expert_bytes_total);

		ret = one_run(m, vram, threads, gds, n_prompt, n_gen, &part[i], json);
	}
	if (ret < 0) {
		fprintf(stderr, "moe-bench decode: %s\n", moe_errmsg());
		moe_model_destroy(m);
		return 1;
	}
	bw = read_bandwidth(threads);
	bound = bw * 1e9 / touched;
	if (json) {
		json_t *o = json_object();

		tj_set(o, "model", tj_str(argv[optind]));
		tj_set(o, "bytes_per_token", tj_u64(touched));
		tj_set(o, "read_gbps", tj_real(bw));
		tj_set(o, "bound_tps", tj_real(bound));
		tj_set(o, "resident_tps", tj_real(full.tps));
		tj_set(o, "ratio", tj_real(full.tps / bound));
		tj_set(o, "prompt_tokens", tj_u64(n_prompt));
		tj_set(o, "prefill_tps", tj_real(best_prefill));
		tj_set(o, "cold_prefill_tps", tj_real(best_cold));
		for (int i = 0; !resident_only && i < 2; i++) {
			json_t *v = json_object();
			char key[16];

			tj_set(v, "vram_bytes", tj_u64(part[i].vram_used));
			tj_set(v, "slots", tj_u64(part[i].n_slots));
			tj_set(v, "experts", tj_u64(part[i].n_experts));
			tj_set(v, "tps", tj_real(part[i].tps));
			tj_set(v, "hit_rate", tj_real(part[i].hit_rate));
			tj_set(v, "file_gbps", tj_real(part[i].read_gbps));
			tj_set(v, "stall_s", tj_real(part[i].stall_s));
			tj_set(v, "expert_io", tj_str(part[i].expert_io));
			snprintf(key, sizeof(key), "vram%d", (int)(fracs[i] * 100));
			tj_set(o, key, v);
		}
		if (tj_print(o)) {
			moe_model_destroy(m);
			return 1;
		}
	} else {
		printf("model %s: %.1f MiB of weights per token\n", argv[optind],
		       touched / 1048576.0);
		printf("memory read %.2f GB/s -> bound %.2f tokens/s\n", bw, bound);
		printf("resident: %.2f tokens/s = %.2f of the bound\n", full.tps, full.tps / bound);
		printf("prefill of %u tokens: %.2f tokens/s, %.2f the first time (experts read)\n",
		       n_prompt, best_prefill, best_cold);
		for (int i = 0; !resident_only && i < 2; i++)
			printf("experts %2.0f%% in budget (%u of %u slots): %.2f tokens/s, hit rate "
			       "%.1f%%, file %.3f GB/s (%s), stalled %.2f s\n", fracs[i] * 100,
			       part[i].n_slots, part[i].n_experts, part[i].tps,
			       100 * part[i].hit_rate, part[i].read_gbps, part[i].expert_io,
			       part[i].stall_s);
	}
	moe_model_destroy(m);
	return 0;
}
