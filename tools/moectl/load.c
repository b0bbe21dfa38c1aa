/* SPDX-License-Identifier: MIT */
/* moectl load: validate a model and register its expert extents with moe.ko. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "moectl.h"

int do_load(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "warm", no_argument, NULL, 'w' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct moe_kmod_model_info info;
	struct moe_model *m = NULL;
	struct moe_kmod *k = NULL;
	bool warm = false;
	uint64_t bytes = 0;
	double secs = 0;
	char b1[32];
	uint32_t id;
	int c, ret;

	while ((c = getopt_long(argc, argv, "wjh", opts, NULL)) != -1) {
		switch (c) {
		case 'w':
			warm = true;
			break;
		case 'j':
			json_output = true;
			break;
		case 'h':
			printf("usage: moectl load [--warm] [--json] NAME MODEL\n"
			       "Validate MODEL and register its routed experts with moe.ko as NAME\n"
			       "(root).  --warm reads every registered extent once through the driver.\n");
			return 0;
		default:
			return EXIT_USAGE;
		}
	}
	if (optind != argc - 2)
		return usage_error("load: expected NAME MODEL; try `moectl load --help`");

	/* Validate before touching the driver: a broken file never gets registered. */
	ret = moe_model_open(argv[optind + 1], &m);
	if (ret < 0)
		return fail("%s", moe_errmsg());
	ret = moe_kmod_open(&k);
	if (ret < 0) {
		moe_model_destroy(m);
		return fail("%s", moe_errmsg());
	}
	ret = moe_kmod_register(k, argv[optind], m, &id);
	moe_model_destroy(m);
	if (ret < 0)
		goto err;
	if (warm) {
		ret = moe_kmod_warm(k, argv[optind], &bytes, &secs);
		if (ret < 0)
			goto err;
	}
	ret = moe_kmod_find(k, argv[optind], &info);
	if (ret < 0)
		goto err;
	if (json_output) {
		json_t *o = json_object();

		tj_set(o, "name", tj_str(info.name));
		tj_set(o, "id", tj_u64(info.id));
		tj_set(o, "extents", tj_u64(info.n_extents));
		tj_set(o, "meta_extents", tj_u64(info.n_meta));
		tj_set(o, "file_bytes", tj_u64(info.file_size));
		if (warm) {
			tj_set(o, "warm_bytes", tj_u64(bytes));
			tj_set(o, "warm_seconds", tj_real(secs));
		}
		if (tj_print(o)) {
			moe_kmod_destroy(k);
			return 1;
		}
	} else {
		printf("registered '%s' as model %u: %u extents of %s (%u of them header and "
		       "resident tensors)\n", info.name, info.id, info.n_extents, argv[optind + 1],
		       info.n_meta);
		if (info.n_meta)
			printf("open it as moe:%s (moe-run -m moe:%s): no access to the file needed\n",
			       info.name, info.name);
		if (warm)
			printf("warmed: %s in %.2f s (%.2f GB/s)\n", human_bytes(bytes, b1, sizeof(b1)),
			       secs, secs > 0 ? (double)bytes / secs / 1e9 : 0.0);
	}
	moe_kmod_destroy(k);
	return 0;
err:
	fail("%s", moe_errmsg());
	moe_kmod_destroy(k);
	return 1;
}
