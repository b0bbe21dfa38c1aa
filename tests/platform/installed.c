/* SPDX-License-Identifier: MIT */
/*
 * Built by tests/platform/install.sh against an installed libmoe, with the
 * flags pkg-config gives and nothing else: opens the model named on the
 * command line, prints its architecture and layer count, and says which
 * libmoe it runs with (so the test can tell the installed one from the
 * build tree's).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>

#include <moe/moe.h>
#include <moe/uapi/moe_drm.h>

int main(int argc, char **argv)
{
	struct moe_model *model;
	struct moe_hparams hp;
	char line[4096];
	FILE *maps;
	int ret;

	if (argc != 2) {
		fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
		return 2;
	}
	ret = moe_model_open(argv[1], &model);
	if (ret < 0) {
		fprintf(stderr, "%s\n", moe_errmsg());
		return 1;
	}
	ret = moe_model_hparams(model, &hp);
	if (ret < 0) {
		fprintf(stderr, "%s\n", moe_errmsg());
		moe_model_destroy(model);
		return 1;
	}
	printf("arch %s layers %u q4_K %s\n", hp.arch, hp.n_layer,
	       moe_type_name(MOE_TYPE_Q4_K));
	moe_model_destroy(model);

	/* The shared library this process mapped, if it is linked to one. */
	maps = fopen("/proc/self/maps", "r");
	while (maps && fgets(line, sizeof(line), maps)) {
		char *p = strchr(line, '/');

		if (p && strstr(p, "/libmoe.so")) {
			printf("library %s", p);
			break;
		}
	}
	if (maps)
		fclose(maps);
	return 0;
}
