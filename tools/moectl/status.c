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
	json_t *doc = NULL, *models = NULL;
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
	if (json_output) {
		doc = json_object();
		models = json_array();
		tj_set(doc, "driver", tj_str("moe"));
		tj_set(doc, "models", json_incref(models));
	} else {
		printf("%-4s %-24s %8s %12s %12s %10s %7s %8s %9s\n", "ID", "NAME", "EXTENTS",
		       "FILE", "READ", "REQUESTS", "ERRORS", "INFLIGHT", "P50(us)");
	}
	while ((ret = moe_kmod_next(k, id, &m)) == 0) {
		id = m.id;
		if (json_output) {
			tj_push(models, model_json(&m));
		} else {
			printf("%-4u %-24s %8u %12s %12s %10llu %7llu %8llu %9llu\n", m.id, m.name,
			       m.n_extents, human_bytes(m.file_size, b1, sizeof(b1)),
			       human_bytes(m.bytes, b2, sizeof(b2)), (unsigned long long)m.requests,
			       (unsigned long long)m.errors, (unsigned long long)m.inflight,
			       lat_p50_us(&m));
		}
		first = false;
	}
	moe_kmod_destroy(k);
	if (ret != -ENOENT) {
		json_decref(models);
		json_decref(doc);
		return fail("%s", moe_errmsg());
	}
	json_decref(models);
	if (json_output)
		return tj_print(doc);
	if (first)
		printf("(no models registered: `moectl load NAME MODEL` as root)\n");
	return 0;
}
