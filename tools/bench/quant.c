/* SPDX-License-Identifier: MIT */
/*
 * moe-bench quant: matrix-vector products over a weight matrix much larger
 * than the caches, for every type with CPU kernels, on one thread and on all,
 * as GB/s of weight bytes and as a ratio to a plain read (a sum over the
 * same bytes with the same number of threads) measured in the same run.
 */
#include <errno.h>
#include <stdatomic.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"
#include "moe/moe.h"
#include "progress.h"

#define COLS 4096
#define FILL_ROWS 64
#define MAX(a, b) ((a) > (b) ? (a) : (b))

static const uint32_t bench_types[] = {
	MOE_TYPE_F32, MOE_TYPE_F16, MOE_TYPE_BF16, MOE_TYPE_Q8_0, MOE_TYPE_Q4_0, MOE_TYPE_Q4_1,
	MOE_TYPE_Q5_0, MOE_TYPE_Q5_1, MOE_TYPE_Q4_K, MOE_TYPE_Q5_K, MOE_TYPE_Q6_K, MOE_TYPE_MXFP4,
};

/* Fill @bytes with copies of FILL_ROWS quantized N(0,1)-ish rows. */
static int fill(uint32_t type, uint8_t *buf, size_t bytes, size_t row_bytes)
{
	float *x = malloc(sizeof(float) * COLS * FILL_ROWS);
	uint64_t s = 88172645463325252ull;
	size_t chunk = row_bytes * FILL_ROWS;
	int64_t ret;

	if (!x)
		return -ENOMEM;
	for (size_t i = 0; i < (size_t)COLS * FILL_ROWS; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		/* sum of two uniforms: bell-shaped enough for realistic scales */
		x[i] = (float)((double)(s & 0xffff) / 65536.0 + (double)((s >> 16) & 0xffff) / 65536.0 - 1.0);
	}
	ret = moe_quantize(type, x, buf, (int64_t)COLS * FILL_ROWS);
	free(x);
	if (ret < 0)
		return (int)ret;
	for (size_t off = chunk; off < bytes; off += chunk)
		memcpy(buf + off, buf, chunk < bytes - off ? chunk : bytes - off);
	return 0;
}

/* GB/s of one matrix-vector product over @rows rows of COLS. */
static double matvec_once(struct moe_threadpool *tp, uint32_t type, const void *w, int64_t rows,
			  size_t wbytes, const float *x, float *y, int *err)
{
	double t = bench_now();

	*err = moe_matmul(tp, type, w, rows, COLS, x, 1, y);
	t = bench_now() - t;
	return *err ? 0 : (double)wbytes / t / 1e9;
}

/*
 * Kernel throughput with the weights in cache (the first 512 KiB of rows), on
 * the calling thread, timed by its CPU time: what the kernel can do when
 * memory is not the limit, and robust to other load on a shared machine.
 */
static double incache_once(uint32_t type, const void *w, size_t row_bytes, const float *x,
			   float *y, int reps)
{
	int64_t rows = (int64_t)((512 << 10) / row_bytes) + 1;
	double best = 0;

	for (int r = 0; r < reps; r++) {
		struct timespec a, b;
		int n = 0;

		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
		do {
			moe_matmul(NULL, type, w, rows, COLS, x, 1, y);
			n++;
			clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
		} while ((double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9 < 0.05);
		double t = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;

		best = MAX(best, (double)rows * (double)row_bytes * n / t / 1e9);
	}
	return best;
}

static void cpu_model(char *out, size_t len)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[256];

	snprintf(out, len, "unknown");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *c = strchr(line, ':');

		if (!strncmp(line, "model name", 10) && c) {
			snprintf(out, len, "%s", c + 2);
			out[strcspn(out, "\n")] = 0;
			break;
		}
	}
	fclose(f);
}

static void usage(FILE *f)
{
	fprintf(f, "usage: moe-bench quant [--json] [--mib N] [--threads N] [--reps N] [--type NAME]\n"
		"  --mib N      weight bytes per matrix in MiB (default 256; keep it >> the caches)\n"
		"  --threads N  the \"all threads\" count (default: every CPU)\n"
		"  --reps N     best of N runs (default 5)\n"
		"  --type NAME  only this type (repeatable)\n");
}

int bench_quant(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "mib", required_argument, NULL, 'm' },
		{ "threads", required_argument, NULL, 't' },
		{ "reps", required_argument, NULL, 'r' },
		{ "type", required_argument, NULL, 'y' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	uint32_t types[sizeof(bench_types) / sizeof(bench_types[0])];
	size_t n_types = 0, bytes;
	int json = 0, mib = 256, threads = 0, reps = 5, c, ret = 1;
	json_t *doc = NULL, *results = NULL;
	uint32_t u;
	struct moe_threadpool *one = NULL, *all = NULL;
	double read1, readn, incache = 0;
	uint8_t *buf = NULL;
	float *x = NULL, *y = NULL;
	char cpu[128];

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = 1;
			break;
		case 'm':
			if (tool_parse_u32("--mib", optarg, 1, 65536, &u))
				return EXIT_USAGE;
			mib = (int)u;
			break;
		case 't':
			if (tool_parse_threads("--threads", optarg, &threads))
				return EXIT_USAGE;
			break;
		case 'r':
			if (tool_parse_u32("--reps", optarg, 1, 1000, &u))
				return EXIT_USAGE;
			reps = (int)u;
			break;
		case 'y': {
			int t = moe_type_from_name(optarg);

			if (t < 0 || n_types == sizeof(types) / sizeof(types[0])) {
				fprintf(stderr, "moe-bench quant: unknown type '%s'; use one of f32 f16 "
					"bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_K q5_K q6_K mxfp4\n", optarg);
				return 2;
			}
			types[n_types++] = (uint32_t)t;
			break;
		}
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc || mib < 1 || mib > 65536 || reps < 1 || threads < 0) {
		usage(stderr);
		return 2;
	}
	if (!n_types) {
		memcpy(types, bench_types, sizeof(bench_types));
		n_types = sizeof(bench_types) / sizeof(bench_types[0]);
	}
	bytes = (size_t)mib << 20;
	buf = aligned_alloc(4096, bytes);
	x = malloc(sizeof(float) * COLS);
	y = malloc(sizeof(float) * (bytes / (COLS / 8) + 1));
	if (!buf || !x || !y) {
		fprintf(stderr, "moe-bench quant: cannot allocate %d MiB; try a smaller --mib\n", mib);
		goto out;
	}
	for (int i = 0; i < COLS; i++)
		x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
	if (moe_threadpool_create(1, &one) || moe_threadpool_create(threads, &all)) {
		fprintf(stderr, "moe-bench quant: thread pool: %s\n", moe_errmsg());
		goto out;
	}
	threads = moe_threadpool_size(all);
	memset(buf, 1, bytes);
	read1 = bench_read_gbps(one, buf, bytes);
	readn = bench_read_gbps(all, buf, bytes);
	cpu_model(cpu, sizeof(cpu));
	if (json) {
		doc = json_object();
		results = json_array();
		tj_set(doc, "cpu", tj_str(cpu));
		tj_set(doc, "kernels", tj_str(moe_cpu_isa()));
		tj_set(doc, "mib", tj_i64(mib));
		tj_set(doc, "cols", tj_i64(COLS));
		tj_set(doc, "threads", tj_i64(threads));
		tj_set(doc, "results", json_incref(results));
	} else {
		printf("cpu: %s\nkernels: %s%s\nweights: %d MiB per type, rows of %d, best of %d\n",
		       cpu, moe_cpu_isa(), getenv("MOE_CPU_ISA") || getenv("MOE_NO_SIMD") ?
		       " (as the environment asks)" : "", mib, COLS, reps);
		printf("ratio = matvec GB/s / plain-read GB/s, each the best of %d runs taken in "
		       "turns on the same bytes\n", reps);
		printf("in-cache: 1 thread on 512 KiB of rows, by thread CPU time\n");
		printf("%-6s %8s %8s %8s %6s %8s\n", "type", "threads", "GB/s", "read", "ratio",
		       "in-cache");
	}
	for (size_t i = 0; i < n_types; i++) {
		uint32_t type = types[i];
		int64_t rb = moe_type_row_bytes(type, COLS), rows = (int64_t)bytes / rb;
		size_t wbytes = (size_t)(rows * rb);

		if (fill(type, buf, wbytes, (size_t)rb)) {
			fprintf(stderr, "moe-bench quant: %s: %s\n", moe_type_name(type), moe_errmsg());
			goto out;
		}
		for (int k = 0; k < 2 && (k == 0 || threads > 1); k++) {
			struct moe_threadpool *tp = k ? all : one;
			int nth = k ? threads : 1, err = 0;
			double gbps = 0, rd = 0;

			struct progress bar;

			progress_start(&bar, moe_type_name(type), (uint64_t)reps, false, json);
			/* alternate so that both see the same load on a shared machine */
			for (int r = 0; r < reps; r++) {
				progress_update(&bar, (uint64_t)r);
				rd = MAX(rd, bench_read_gbps(tp, buf, wbytes));
				gbps = MAX(gbps, matvec_once(tp, type, buf, rows, wbytes, x, y, &err));
				if (err) {
					fprintf(stderr, "moe-bench quant: %s: %s\n",
						moe_type_name(type), moe_errmsg());
					goto out;
				}
			}
			progress_end(&bar);
			if (k)
				readn = MAX(readn, rd);
			else
				read1 = MAX(read1, rd);
			if (!k)
				incache = incache_once(type, buf, (size_t)rb, x, y, reps);
			if (json) {
				json_t *o = json_object();

				tj_set(o, "type", tj_str(moe_type_name(type)));
				tj_set(o, "threads", tj_i64(nth));
				tj_set(o, "gbps", tj_real(gbps));
				tj_set(o, "read_gbps", tj_real(rd));
				tj_set(o, "ratio", tj_real(gbps / rd));
				tj_set(o, "incache_gbps", tj_real(incache));
				tj_push(results, o);
			} else {
				printf("%-6s %8d %8.2f %8.2f %6.2f %8.2f\n", moe_type_name(type), nth,
				       gbps, rd, gbps / rd, incache);
				fflush(stdout);
			}
		}
	}
	if (json) {
		tj_set(doc, "read_gbps", tj_real(readn));
		tj_set(doc, "read_gbps_1thread", tj_real(read1));
		ret = tj_print(doc);
		doc = NULL;
	} else {
		printf("plain read, best seen: %.2f GB/s on 1 thread, %.2f GB/s on %d threads\n",
		       read1, readn, threads);
		ret = 0;
	}
out:
	json_decref(results);
	json_decref(doc);
	moe_threadpool_destroy(one);
	moe_threadpool_destroy(all);
	free(buf);
	free(x);
	free(y);
	return ret;
}
