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

static void plan_json(json_t *o, const struct info_plan *ip)
{
	const struct moe_plan *p = &ip->p;
	json_t *pj;

	tj_set(o, "n_dense_ffn", tj_u64(p->n_dense_ffn));
	if (!ip->vram)
		return;
	pj = json_object();
	tj_set(pj, "vram_budget", tj_u64(p->vram_budget));
	tj_set(pj, "device_bytes", tj_u64(p->device_bytes));
	tj_set(pj, "n_slots", tj_u64(p->n_slots));
	tj_set(pj, "n_dense_streamed", tj_u64(p->n_dense_streamed));
	tj_set(pj, "dense_streamed_bytes", tj_u64(p->dense_streamed_bytes));
	tj_set(pj, "ple_cache_rows", tj_u64(p->ple_cache_rows));
	tj_set(pj, "ple_cache_bytes", tj_u64(p->ple_cache_bytes));
	tj_set(pj, "why", tj_str(p->why));
	tj_set(o, "plan", pj);
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

static int print_json(const struct moe_model *m, const struct moe_hparams *hp,
		      const struct moe_model_summary *s, const struct info_plan *ip)
{
	json_t *o = json_object(), *types = json_object();

	tj_set(o, "file", tj_str(moe_model_path(m)));
	tj_set(o, "arch", tj_str(hp->arch));
	tj_set(o, "n_layers", tj_u64(hp->n_layer));
	tj_set(o, "n_moe_layers", tj_u64(hp->n_moe_layer));
	tj_set(o, "n_experts", tj_u64(hp->n_expert));
	tj_set(o, "n_experts_used", tj_u64(hp->n_expert_used));
	tj_set(o, "n_experts_shared", tj_u64(hp->n_expert_shared));
	tj_set(o, "n_embd", tj_u64(hp->n_embd));
	tj_set(o, "n_head", tj_u64(hp->n_head));
	tj_set(o, "n_head_kv", tj_u64(hp->n_head_kv));
	tj_set(o, "head_dim", tj_u64(hp->head_dim_k));
	tj_set(o, "n_ff", tj_u64(hp->n_ff));
	tj_set(o, "n_ff_exp", tj_u64(hp->n_ff_exp));
	tj_set(o, "n_ff_shexp", tj_u64(hp->n_ff_shexp));
	tj_set(o, "n_vocab", tj_u64(hp->n_vocab));
	tj_set(o, "n_ctx_train", tj_u64(hp->n_ctx_train));
	tj_set(o, "gating", tj_u64(hp->gating));
	tj_set(o, "rope_base", tj_real(hp->rope_base));
	tj_set(o, "rms_eps", tj_real(hp->rms_eps));
	tj_set(o, "tied_output", tj_bool(hp->tied_output));
	tj_set(o, "q_lora_rank", tj_u64(hp->q_lora_rank));
	tj_set(o, "kv_lora_rank", tj_u64(hp->kv_lora_rank));
	tj_set(o, "head_dim_k_mla", tj_u64(hp->head_dim_k_mla));
	tj_set(o, "head_dim_v_mla", tj_u64(hp->head_dim_v_mla));
	tj_set(o, "n_group", tj_u64(hp->n_group));
	tj_set(o, "topk_group", tj_u64(hp->topk_group));
	tj_set(o, "n_embd_per_layer", tj_u64(hp->n_embd_per_layer));
	tj_set(o, "n_kv_shared", tj_u64(hp->n_kv_shared));
	tj_set(o, "n_nextn", tj_u64(hp->n_nextn));
	tj_set(o, "unused_bytes", tj_u64(s->unused_bytes));
	tj_set(o, "streamed_rows_bytes", tj_u64(s->streamed_rows_bytes));
	tj_set(o, "tensor_count", tj_i64(moe_model_tensor_count(m)));
	tj_set(o, "file_bytes", tj_u64(s->file_bytes));
	tj_set(o, "tensor_bytes", tj_u64(s->tensor_bytes));
	tj_set(o, "resident_bytes", tj_u64(s->resident_bytes));
	tj_set(o, "expert_bytes_total", tj_u64(s->expert_bytes_total));
	tj_set(o, "expert_bytes_each", tj_u64(s->expert_bytes_each));
	tj_set(o, "expert_bytes_per_layer",
	       tj_u64(hp->n_moe_layer ? s->expert_bytes_total / hp->n_moe_layer : 0));
	tj_set(o, "routed_bytes_per_token", tj_u64(s->routed_bytes_per_token));
	tj_set(o, "alignment", tj_u64(s->alignment));
	tj_set(o, "extent_alignment", tj_u64(s->extent_alignment));
	tj_set(o, "direct_in_place", tj_bool(s->extent_alignment >= DIRECT_ALIGN));
	tj_set(o, "device_bytes_all",
	       tj_u64(s->tensor_bytes - s->unused_bytes - s->streamed_rows_bytes));
	for (uint32_t t = 0; t < MOE_TYPE_COUNT; t++)
		if (s->type_tensors[t])
			tj_set(types, moe_type_name(t), tj_u64(s->type_bytes[t]));
	tj_set(o, "bytes_by_type", types);
	if (ip->ok)
		plan_json(o, ip);
	return tj_print(o);
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

		moe_ctx_params_init(&par);
		par.vram_bytes = ip.vram;
		/* a model without a forward pass has no plan; a budget too small is an error */
		ret = moe_plan(m, &par, &ip.p);
		ip.ok = ret == 0;
		if (ret && ip.vram) {
			ret = fail("%s", moe_errmsg());
			moe_model_destroy(m);
			return ret;
		}
	}
	ret = 0;
	if (json_output)
		ret = print_json(m, &hp, &s, &ip);
	else
		print_text(m, &hp, &s, &ip);
	moe_model_destroy(m);
	return ret;
}
