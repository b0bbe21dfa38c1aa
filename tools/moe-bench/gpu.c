/* SPDX-License-Identifier: MIT */
/*
 * moe-bench gpu-matvec: the CUDA decode kernel's GB/s of quantized weights
 * (q4_K, q8_0, mxfp4 by default) against device-to-device copy bandwidth
 * measured in the same run; moe-bench gpu-h2d: host-to-device GB/s of the
 * expert pipeline's uploads against plain copies from pinned memory.  Where
 * there is no CUDA driver each says so and exits 0: there is nothing to
 * measure, which is not a failure.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda_api.h"
#include "backend/cuda_h2d_bench.h"
#include "backend/cuda_mm_bench.h"
#include "bench.h"
#include "moe/moe.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: moe-bench gpu-matvec [--json] [--rows N] [--cols N] [--reps N] "
		"[--type NAME]\n"
		"  --rows N     matrix rows (default 32768)\n"
		"  --cols N     matrix columns, a multiple of 256 (default 8192)\n"
		"  --reps N     timed launches and copies (default 20)\n"
		"  --type NAME  only this type (repeatable; default q4_K q8_0 mxfp4)\n");
}

int bench_gpu_matvec(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "rows", required_argument, NULL, 'r' },
		{ "cols", required_argument, NULL, 'c' },
		{ "reps", required_argument, NULL, 'n' },
		{ "type", required_argument, NULL, 'y' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct moe_cuda_mm_bench_cfg cfg = { .rows = 32768, .cols = 8192, .reps = 20 };
	uint32_t types[8] = { MOE_TYPE_Q4_K, MOE_TYPE_Q8_0, MOE_TYPE_MXFP4 }, n_types = 0;
	struct moe_cuda_mm_bench_res res[8];
	struct moe_cuda_api api;
	const char *lib;
	char dev[128] = "";
	int json = 0, c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = 1;
			break;
		case 'r':
			if (tool_parse_u32("--rows", optarg, 1, 1u << 24, &cfg.rows))
				return EXIT_USAGE;
			break;
		case 'c':
			if (tool_parse_u32("--cols", optarg, 256, 1u << 20, &cfg.cols))
				return EXIT_USAGE;
			break;
		case 'n':
			if (tool_parse_u32("--reps", optarg, 1, 10000, &cfg.reps))
				return EXIT_USAGE;
			break;
		case 'y': {
			int t = moe_type_from_name(optarg);

			if (t < 0 || n_types == 8) {
				fprintf(stderr, "moe-bench gpu-matvec: unknown type '%s'; use one of "
					"f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_K q5_K q6_K mxfp4\n",
					optarg);
				return EXIT_USAGE;
			}
			types[n_types++] = (uint32_t)t;
			break;
		}
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind < argc || cfg.cols % 256) {
		if (cfg.cols % 256)
			fprintf(stderr, "moe-bench gpu-matvec: --cols %u is not a multiple of 256\n",
				cfg.cols);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!n_types)
		n_types = 3;
	lib = getenv("MOE_CUDA_LIBRARY");
	if (moe_cuda_api_load(&api, lib && *lib ? lib : NULL) < 0) {
		printf("gpu-matvec: skipped: no CUDA driver (%s)\n", moe_errmsg());
		return 0;
	}
	if (moe_cuda_mm_bench(&api, &cfg, types, n_types, res, dev, sizeof(dev)) < 0) {
		fprintf(stderr, "moe-bench gpu-matvec: %s\n", moe_errmsg());
		moe_cuda_api_unload(&api);
		return 1;
	}
	moe_cuda_api_unload(&api);
	if (json)
		printf("{\"device\": \"%s\", \"rows\": %u, \"cols\": %u, \"results\": [", dev,
		       cfg.rows, cfg.cols);
	else
		printf("gpu-matvec on %s: %u x %u, %u launches\n"
		       "%-6s %8s %9s %12s %10s %10s %7s %9s\n", dev, cfg.rows, cfg.cols, cfg.reps,
		       "type", "MiB", "us", "matvec GB/s", "f32 GB/s", "copy GB/s", "ratio",
		       "rel err");
	for (uint32_t i = 0; i < n_types; i++) {
		const struct moe_cuda_mm_bench_res *r = &res[i];
		double ratio = r->copy_gbps > 0 ? r->matvec_gbps / r->copy_gbps : 0;

		if (json)
			printf("%s{\"type\": \"%s\", \"bytes\": %llu, \"us\": %.2f, "
			       "\"matvec_gbps\": %.2f, \"f32_gbps\": %.2f, \"copy_gbps\": %.2f, "
			       "\"ratio\": %.3f, \"rel_err\": %.2e}", i ? ", " : "",
			       moe_type_name(r->type), (unsigned long long)r->bytes, r->ms * 1e3,
			       r->matvec_gbps, r->f32_gbps, r->copy_gbps, ratio, r->rel_err);
		else
			printf("%-6s %8.1f %9.2f %12.1f %10.1f %10.1f %7.3f %9.2e\n",
			       moe_type_name(r->type), (double)r->bytes / (1 << 20), r->ms * 1e3,
			       r->matvec_gbps, r->f32_gbps, r->copy_gbps, ratio, r->rel_err);
	}
	if (json)
		printf("]}\n");
	return 0;
}

static void usage_h2d(FILE *f)
{
	fprintf(f, "usage: moe-bench gpu-h2d [--json] [--mib N] [--experts N] [--slots N] "
		"[--staging N] [--rounds N]\n"
		"  --mib N      one expert's MiB, three matrices (default 72, a Scout q4_K expert)\n"
		"  --experts N  experts uploaded per round (default 48)\n"
		"  --slots N    device slots they rotate through (default 8)\n"
		"  --staging N  pinned staging buffers (default 4)\n"
		"  --rounds N   rounds of both, the best of each kept (default 3)\n");
}

int bench_gpu_h2d(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "mib", required_argument, NULL, 'm' },
		{ "experts", required_argument, NULL, 'e' },
		{ "slots", required_argument, NULL, 's' },
		{ "staging", required_argument, NULL, 'g' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct moe_cuda_h2d_bench_cfg cfg = { .n_experts = 48, .n_slots = 8, .n_staging = 4,
					      .rounds = 3 };
	struct moe_cuda_h2d_bench_res res;
	struct moe_cuda_api api;
	uint32_t mib = 72;
	const char *lib;
	char dev[128] = "";
	int json = 0, c, ret = 0;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'j': json = 1; break;
		case 'm': ret = tool_parse_u32("--mib", optarg, 1, 4096, &mib); break;
		case 'e': ret = tool_parse_u32("--experts", optarg, 1, 100000, &cfg.n_experts); break;
		case 's': ret = tool_parse_u32("--slots", optarg, 1, 64, &cfg.n_slots); break;
		case 'g': ret = tool_parse_u32("--staging", optarg, 1, 64, &cfg.n_staging); break;
		case 'r': ret = tool_parse_u32("--rounds", optarg, 1, 100, &cfg.rounds); break;
		case 'h':
			usage_h2d(stdout);
			return 0;
		default:
			usage_h2d(stderr);
			return EXIT_USAGE;
		}
		if (ret)
			return ret;
	}
	if (optind < argc) {
		usage_h2d(stderr);
		return EXIT_USAGE;
	}
	cfg.expert_bytes = (uint64_t)mib << 20;
	lib = getenv("MOE_CUDA_LIBRARY");
	if (moe_cuda_api_load(&api, lib && *lib ? lib : NULL) < 0) {
		printf("gpu-h2d: skipped: no CUDA driver (%s)\n", moe_errmsg());
		return 0;
	}
	ret = moe_cuda_h2d_bench(&api, &cfg, &res, dev, sizeof(dev));
	moe_cuda_api_unload(&api);
	if (ret < 0) {
		fprintf(stderr, "moe-bench gpu-h2d: %s\n", moe_errmsg());
		return 1;
	}
	if (!res.data_ok) {
		fprintf(stderr, "moe-bench gpu-h2d: the last slot does not hold the bytes uploaded "
			"into it: the copies or their ordering are broken\n");
		return 1;
	}
	if (json)
		printf("{\"device\": \"%s\", \"bytes\": %llu, \"pipeline_gbps\": %.2f, "
		       "\"plain_gbps\": %.2f, \"ratio\": %.3f}\n", dev,
		       (unsigned long long)res.bytes, res.pipeline_gbps, res.plain_gbps, res.ratio);
	else
		printf("gpu-h2d on %s: %u experts of %u MiB, %u slots, %u staging buffers\n"
		       "pipeline %.2f GB/s, plain pinned copies %.2f GB/s, ratio %.3f\n", dev,
		       cfg.n_experts, mib, cfg.n_slots, cfg.n_staging, res.pipeline_gbps,
		       res.plain_gbps, res.ratio);
	return 0;
}
