/* SPDX-License-Identifier: MIT */
/* moectl unload: drop a model from moe.ko; reads in flight still finish. */
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "moectl.h"

int do_unload(int argc, char **argv)
{
	struct moe_kmod *k;
	int ret;

	if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		printf("usage: moectl unload NAME\nUnregister the model NAME from moe.ko (root).\n");
		return 0;
	}
	if (argc != 2)
		return usage_error("unload: expected NAME; try `moectl status` for the names");
	ret = moe_kmod_open(&k);
	if (ret < 0)
		return fail("%s", moe_errmsg());
	ret = moe_kmod_unregister(k, argv[1]);
	moe_kmod_destroy(k);
	if (ret < 0)
		return fail("%s", moe_errmsg());
	if (json_output) {
		json_t *o = json_object();

		tj_set(o, "unregistered", tj_str(argv[1]));
		return tj_print(o);
	}
	printf("unregistered '%s'\n", argv[1]);
	return 0;
}
