/* SPDX-License-Identifier: MIT */
/* moectl info: what a model is and what it costs to run it. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "moe/moe.h"
#include "moectl.h"

/* O_DIRECT needs offsets aligned to the device's logical block; 4096 covers every NVMe. */
#define DIRECT_ALIGN 4096

/*
 * The plan moe_plan() makes for @vram (0: no limit) with default
 * parameters: which dense FFNs stay resident, the per-layer embedding cache.
 */
struct info_plan {
	bool ok;
	uint64_t vram;
	struct moe_plan p;
};

static void print_plan_json(const struct info_plan *ip)
{
	const struct moe_plan *p = &ip->p;

	printf(", \"n_dense_ffn\": %u", p->n_dense_ffn);
	if (!ip->vram)
		return;
	printf(", \"plan\": {\"vram_budget\": %llu, \"device_bytes\": %llu, \"n_slots\": %u, "
	       "\"n_dense_streamed\": %u, \"dense_streamed_bytes\": %llu, "
	       "\"ple_cache_rows\": %u, \"ple_cache_bytes\": %llu, \"why\": ",
	       (unsigned long long)p->vram_budget, (unsigned long long)p->device_bytes,
	       p->n_slots, p->n_dense_streamed, (unsigned long long)p->dense_streamed_bytes,
	       p->ple_cache_rows, (unsigned long long)p->ple_cache_bytes);
	json_str(stdout, p->why);
	printf("}");
}

static void print_plan_text(const struct info_plan *ip)
{
	const struct moe_plan *p = &ip->p;
	char b1[32], b2[32];

	if (p->n_dense_ffn && !ip->vram)
		printf("dense FFNs:       %u layers, resident; past a budget (--vram) they stream "
		       "like experts, fetched a layer ahead\n", p->n_dense_ffn);
	if (!ip->vram)
		return;
	printf("plan:             %s device memory for a budget of %s\n",
	       human_bytes(p->device_bytes, b1, sizeof(b1)),
	       human_bytes(p->vram_budget, b2, sizeof(b2)));
	if (p->n_dense_ffn)
		printf("dense FFNs:       %u of %u streamed (%s as slots hold them), the rest "
		       "resident\n", p->n_dense_streamed, p->n_dense_ffn,
		       human_bytes(p->dense_streamed_bytes, b1, sizeof(b1)));
	if (p->ple_cache_rows)
		printf("per-layer cache:  %u token rows, %s of host memory\n", p->ple_cache_rows,
		       human_bytes(p->ple_cache_bytes, b1, sizeof(b1)));
	printf("why:              %s\n", p->why);
}

static void print_json(const struct moe_model *m, const struct moe_hparams *hp,
		       const struct moe_model_summary *s, const struct info_plan *ip)
{
	bool first = true;

	printf("{\"file\": ");
	json_str(stdout, moe_model_path(m));
	printf(", \"arch\": ");
	json_str(stdout, hp->arch);
	printf(", \"n_layers\": %u, \"n_moe_layers\": %u, \"n_experts\": %u, "
	       "\"n_experts_used\": %u, \"n_experts_shared\": %u, \"n_embd\": %u, \"n_head\": %u, "
	       "\"n_head_kv\": %u, \"head_dim\": %u, \"n_ff\": %u, \"n_ff_exp\": %u, "
	       "\"n_ff_shexp\": %u, \"n_vocab\": %u, \"n_ctx_train\": %u, \"gating\": %u, "
	       "\"rope_base\": %g, \"rms_eps\": %g, \"tied_output\": %s, ",
	       hp->n_layer, hp->n_moe_layer, hp->n_expert, hp->n_expert_used, hp->n_expert_shared,
	       hp->n_embd, hp->n_head, hp->n_head_kv, hp->head_dim_k, hp->n_ff, hp->n_ff_exp,
	       hp->n_ff_shexp, hp->n_vocab, hp->n_ctx_train, hp->gating, hp->rope_base,
	       hp->rms_eps, hp->tied_output ? "true" : "false");
	printf("\"q_lora_rank\": %u, \"kv_lora_rank\": %u, \"head_dim_k_mla\": %u, "
	       "\"head_dim_v_mla\": %u, \"n_group\": %u, \"topk_group\": %u, "
	       "\"n_embd_per_layer\": %u, \"n_kv_shared\": %u, \"n_nextn\": %u, "
	       "\"unused_bytes\": %llu, \"streamed_rows_bytes\": %llu, ",
	       hp->q_lora_rank, hp->kv_lora_rank, hp->head_dim_k_mla, hp->head_dim_v_mla,
	       hp->n_group, hp->topk_group, hp->n_embd_per_layer, hp->n_kv_shared, hp->n_nextn,
	       (unsigned long long)s->unused_bytes, (unsigned long long)s->streamed_rows_bytes);
	printf("\"tensor_count\": %d, \"file_bytes\": %llu, \"tensor_bytes\": %llu, "
	       "\"resident_bytes\": %llu, \"expert_bytes_total\": %llu, \"expert_bytes_each\": %llu, "
	       "\"expert_bytes_per_layer\": %llu, \"routed_bytes_per_token\": %llu, "
	       "\"alignment\": %u, \"extent_alignment\": %u, \"direct_in_place\": %s, "
	       "\"device_bytes_all\": %llu, \"bytes_by_type\": {",
	       moe_model_tensor_count(m), (unsigned long long)s->file_bytes,
	       (unsigned long long)s->tensor_bytes, (unsigned long long)s->resident_bytes,
	       (unsigned long long)s->expert_bytes_total, (unsigned long long)s->expert_bytes_each,
	       (unsigned long long)(hp->n_moe_layer ? s->expert_bytes_total / hp->n_moe_layer : 0),
	       (unsigned long long)s->routed_bytes_per_token, s->alignment, s->extent_alignment,
	       s->extent_alignment >= DIRECT_ALIGN ? "true" : "false",
	       (unsigned long long)(s->tensor_bytes - s->unused_bytes - s->streamed_rows_bytes));
	for (uint32_t t = 0; t < MOE_TYPE_COUNT; t++) {
		if (!s->type_tensors[t])
			continue;
		printf("%s\"%s\": %llu", first ? "" : ", ", moe_type_name(t),
		       (unsigned long long)s->type_bytes[t]);
		first = false;
	}
	printf("}");
	if (ip->ok)
		print_plan_json(ip);
	printf("}\n");
}

static void print_text(const struct moe_model *m, const struct moe_hparams *hp,
		       const struct moe_model_summary *s, const struct info_plan *ip)
{
	char b1[32], b2[32], b3[32];

	printf("file:             %s (%s)\n", moe_model_path(m),
	       human_bytes(s->file_bytes, b1, sizeof(b1)));
	printf("architecture:     %s\n", hp->arch);
	printf("layers:           %u (%u with routed experts)\n", hp->n_layer, hp->n_moe_layer);
	printf("embedding:        %u, heads %u (kv %u), head dim %u\n", hp->n_embd, hp->n_head,
	       hp->n_head_kv, hp->head_dim_k);
	if (hp->kv_lora_rank)
		printf("attention:        multi-head latent: q/k heads %u (%u rotated), v heads %u, "
		       "q_lora_rank %u, cached latent %u + %u per position\n", hp->head_dim_k_mla,
		       hp->n_rot, hp->head_dim_v_mla, hp->q_lora_rank, hp->kv_lora_rank, hp->n_rot);
	if (hp->n_kv_shared)
		printf("attention:        the last %u layers reuse earlier layers' KV cache\n",
		       hp->n_kv_shared);
	printf("experts:          %u per layer, %u used per token, %u shared\n", hp->n_expert,
	       hp->n_expert_used, hp->n_expert_shared);
	if (hp->n_group > 1)
		printf("routing:          within the best %u of %u expert groups\n", hp->topk_group,
		       hp->n_group);
	printf("ffn widths:       dense %u, expert %u, shared expert %u\n", hp->n_ff, hp->n_ff_exp,
	       hp->n_ff_shexp);
	printf("vocabulary:       %u%s; trained context %u\n", hp->n_vocab,
	       hp->tied_output ? " (output tied to embeddings)" : "", hp->n_ctx_train);
	printf("tensors:          %d, %s of data\n", moe_model_tensor_count(m),
	       human_bytes(s->tensor_bytes, b1, sizeof(b1)));
	printf("bytes per type:  ");
	for (uint32_t t = 0; t < MOE_TYPE_COUNT; t++)
		if (s->type_tensors[t])
			printf(" %s %s (%u tensors);", moe_type_name(t),
			       human_bytes(s->type_bytes[t], b1, sizeof(b1)), s->type_tensors[t]);
	printf("\n");
	printf("resident:         %s (attention, norms, routers, shared experts, embeddings)\n",
	       human_bytes(s->resident_bytes, b1, sizeof(b1)));
	printf("routed experts:   %s total, %s each, %s per MoE layer\n",
	       human_bytes(s->expert_bytes_total, b1, sizeof(b1)),
	       human_bytes(s->expert_bytes_each, b2, sizeof(b2)),
	       human_bytes(hp->n_moe_layer ? s->expert_bytes_total / hp->n_moe_layer : 0, b3,
			   sizeof(b3)));
	printf("routed per token: %s (experts used x expert size over the MoE layers)\n",
	       human_bytes(s->routed_bytes_per_token, b1, sizeof(b1)));
	printf("alignment:        general.alignment %u; expert extents aligned to %u bytes: %s\n",
	       s->alignment, s->extent_alignment,
	       s->extent_alignment >= DIRECT_ALIGN ?
		       "O_DIRECT reads them in place" :
		       "O_DIRECT reads the block-aligned superset of each extent");
	if (s->unused_bytes)
		printf("skipped:          %s in %u NextN/MTP block(s) the forward pass does not "
		       "run\n", human_bytes(s->unused_bytes, b1, sizeof(b1)), hp->n_nextn);
	if (s->streamed_rows_bytes)
		printf("per-layer embd:   %s table (%u per layer) stays in the file: rows are read "
		       "per token and cached on the host\n",
		       human_bytes(s->streamed_rows_bytes, b1, sizeof(b1)), hp->n_embd_per_layer);
	printf("whole model:      %s of device memory to hold every tensor (plus KV cache and "
	       "scratch)\n", human_bytes(s->tensor_bytes - s->unused_bytes -
					  s->streamed_rows_bytes, b1, sizeof(b1)));
	if (ip->ok)
		print_plan_text(ip);
}

int do_info(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "vram", required_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct moe_model *m;
	struct moe_hparams hp;
	struct moe_model_summary s;
	struct info_plan ip = { 0 };
	int c, ret;

	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json_output = true;
			break;
		case 'v':
			if (moe_parse_size(optarg, &ip.vram) < 0)
				return usage_error("info: --vram %s", moe_errmsg());
			break;
		case 'h':
			printf("usage: moectl info [--json] [--vram SIZE] FILE\n");
			return 0;
		default:
			return usage_error("info: usage: moectl info [--json] [--vram SIZE] FILE");
		}
	}
	if (optind != argc - 1)
		return usage_error("info: expected one model file; usage: moectl info [--json] "
				   "[--vram SIZE] FILE");
	ret = moe_model_open(argv[optind], &m);
	if (ret)
		return fail("%s", moe_errmsg());
	moe_model_hparams(m, &hp);
	moe_model_summary(m, &s);
	{
		struct moe_ctx_params par;

		moe_ctx_default_params(&par);
		par.vram_bytes = ip.vram;
		/* a model without a forward pass has no plan; a budget too small is an error */
		ret = moe_plan(m, &par, &ip.p);
		ip.ok = ret == 0;
		if (ret && ip.vram) {
			ret = fail("%s", moe_errmsg());
			moe_model_close(m);
			return ret;
		}
	}
	if (json_output)
		print_json(m, &hp, &s, &ip);
	else
		print_text(m, &hp, &s, &ip);
	moe_model_close(m);
	return 0;
}
