/* SPDX-License-Identifier: MIT */
/* moectl status: the models registered with moe.ko and their counters. */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "moectl.h"

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

static void print_json(const struct moe_kmod_model_info *m, bool first)
{
	printf("%s{\"id\": %u, \"name\": ", first ? "" : ", ", m->id);
	json_str(stdout, m->name);
	printf(", \"extents\": %u, \"file_bytes\": %llu, \"bytes\": %llu, \"requests\": %llu, "
	       "\"errors\": %llu, \"inflight\": %llu, \"latency_us_log2_hist\": [", m->n_extents,
	       (unsigned long long)m->file_size, (unsigned long long)m->bytes,
	       (unsigned long long)m->requests, (unsigned long long)m->errors,
	       (unsigned long long)m->inflight);
	for (int i = 0; i < MOE_KMOD_LAT_BUCKETS; i++)
		printf("%s%llu", i ? ", " : "", (unsigned long long)m->lat_hist[i]);
	printf("]}");
}

int do_status(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct moe_kmod_model_info m;
	struct moe_kmod *k;
	uint32_t id = 0;
	bool first = true;
	char b1[32], b2[32];
	int c, ret;

	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json_output = true;
			break;
		case 'h':
			printf("usage: moectl status [--json]\n"
			       "Models registered with moe.ko: extents, bytes, requests, errors, latency.\n");
			return 0;
		default:
			return EXIT_USAGE;
		}
	}
	if (optind != argc)
		return usage_error("status: no arguments expected");
	ret = moe_kmod_open(&k);
	if (ret < 0)
		return fail("%s", moe_errmsg());
	if (json_output)
		printf("{\"driver\": \"moe\", \"models\": [");
	else
		printf("%-4s %-24s %8s %12s %12s %10s %7s %8s %9s\n", "ID", "NAME", "EXTENTS",
		       "FILE", "READ", "REQUESTS", "ERRORS", "INFLIGHT", "P50(us)");
	while ((ret = moe_kmod_next(k, id, &m)) == 0) {
		id = m.id;
		if (json_output) {
			print_json(&m, first);
		} else {
			printf("%-4u %-24s %8u %12s %12s %10llu %7llu %8llu %9llu\n", m.id, m.name,
			       m.n_extents, human_bytes(m.file_size, b1, sizeof(b1)),
			       human_bytes(m.bytes, b2, sizeof(b2)), (unsigned long long)m.requests,
			       (unsigned long long)m.errors, (unsigned long long)m.inflight,
			       lat_p50_us(&m));
		}
		first = false;
	}
	if (json_output)
		printf("]}\n");
	else if (first)
		printf("(no models registered: `moectl load NAME MODEL` as root)\n");
	moe_kmod_close(k);
	if (ret != -ENOENT)
		return fail("%s", moe_errmsg());
	return 0;
}
