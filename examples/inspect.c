/* SPDX-License-Identifier: MIT */
/*
 * inspect: what a GGUF model holds, through libmoe's model reader alone.
 *
 *   inspect MODEL.gguf
 *
 * Prints the architecture, the sizes the planner works with, each MoE
 * layer's experts and the first metadata keys.  Built against the public
 * header only (Documentation/api.rst, "Examples").
 */
#include <inttypes.h>
#include <stdio.h>

#include <moe/moe.h>

static void print_meta(const struct moe_model *model, int max)
{
	int n = moe_meta_count(model);

	printf("metadata: %d keys\n", n);
	for (int i = 0; i < n && i < max; i++) {
		struct moe_meta m;

		if (moe_meta_at(model, i, &m) < 0)
			continue;
		if (m.type == MOE_META_STRING)
			printf("  %s = \"%.*s\"\n", m.key, (int)(m.count > 40 ? 40 : m.count),
			       m.v.str);
		else if (m.type == MOE_META_ARRAY)
			printf("  %s = array of %" PRIu64 "\n", m.key, m.count);
		else if (m.type == MOE_META_F32 || m.type == MOE_META_F64)
			printf("  %s = %g\n", m.key, m.v.f64);
		else
			printf("  %s = %" PRIu64 "\n", m.key, m.v.u64);
	}
}

int main(int argc, char **argv)
{
	struct moe_model_summary sum;
	struct moe_model *model;
	struct moe_hparams hp;
	int ret;

	if (argc != 2) {
		fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
		return 2;
	}
	ret = moe_model_open(argv[1], &model);
	if (ret < 0) {
		fprintf(stderr, "inspect: %s\n", moe_errmsg());
		return 1;
	}
	if (moe_model_hparams(model, &hp) < 0 || moe_model_summary(model, &sum) < 0) {
		fprintf(stderr, "inspect: %s\n", moe_errmsg());
		moe_model_destroy(model);
		return 1;
	}
	printf("model: %s, %s, %u layers (%u MoE), %u experts, %u used per token\n",
	       moe_model_path(model), hp.arch, hp.n_layer, hp.n_moe_layer, hp.n_expert,
	       hp.n_expert_used);
	printf("tensors: %d, %" PRIu64 " bytes; resident %" PRIu64 ", experts %" PRIu64
	       ", routed per token %" PRIu64 "\n", moe_model_tensor_count(model), sum.tensor_bytes,
	       sum.resident_bytes, sum.expert_bytes_total, sum.routed_bytes_per_token);

	for (uint32_t l = 0; l < hp.n_layer; l++) {
		struct moe_layer_info li;
		struct moe_expert ex;

		if (moe_model_layer(model, l, &li) < 0 || !li.is_moe)
			continue;
		if (moe_model_expert(model, l, 0, &ex) < 0)
			continue;
		printf("layer %u: %" PRIu64 " expert bytes, expert 0:", l, li.expert_bytes);
		for (uint32_t m = 0; m < ex.n_mats; m++)
			printf(" %s %" PRIu64 "x%" PRIu64 " at %" PRIu64, moe_type_name(ex.mats[m].type),
			       ex.mats[m].rows, ex.mats[m].cols, ex.mats[m].offset);
		printf("\n");
	}
	print_meta(model, 8);
	moe_model_destroy(model);
	return 0;
}
