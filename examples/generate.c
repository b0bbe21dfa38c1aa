/* SPDX-License-Identifier: MIT */
/*
 * generate: text from a prompt with an inference engine, and a routing hook
 * that watches every routing decision and, when asked, overrides it.
 *
 *   generate MODEL.gguf PROMPT [N_TOKENS [FORCE_EXPERT]]
 *
 * The hook counts how often the router picked each expert of each layer.
 * With FORCE_EXPERT it rewrites every choice of every layer to that expert
 * (a stand-in for a scheduler of one's own), and the program then shows, from
 * the engine's own routing statistics, that only that expert ran.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <moe/moe.h>

struct watch {
	uint32_t n_layer, n_expert;
	uint64_t *picked;       /* [layer][expert]: the router's choices */
	int32_t force;          /* -1: observe only */
	const struct moe_model *model;
};

static void on_route(void *arg, uint32_t layer, const int32_t *pos, uint32_t n_tok,
		     const float *logits, uint32_t n_expert, int32_t *sel, uint32_t k)
{
	struct watch *w = arg;
	struct moe_layer_info li;
	uint32_t used = k;

	(void)pos;
	(void)logits;
	if (moe_model_layer(w->model, layer, &li) == 0)
		used = li.n_expert_used;
	for (uint32_t t = 0; t < n_tok; t++) {
		for (uint32_t j = 0; j < used; j++) {
			int32_t *e = &sel[t * k + j];

			if (*e >= 0 && (uint32_t)*e < n_expert)
				w->picked[layer * w->n_expert + (uint32_t)*e]++;
			if (w->force >= 0)
				*e = w->force;
		}
	}
}

struct printer {
	const struct moe_tokenizer *tok;
	struct moe_detok_state ds;
};

/* Each sampled token as text, as it comes; stop at the end of generation. */
static int on_token(void *arg, const float *logits, uint32_t n_rows, int32_t next)
{
	struct printer *p = arg;
	char buf[512];
	int len = moe_detok_stream(p->tok, &p->ds, next, buf, sizeof(buf));

	(void)logits;
	(void)n_rows;
	if (len > 0)
		fwrite(buf, 1, (size_t)len, stdout);
	return moe_tokenizer_is_eog(p->tok, next);
}

int main(int argc, char **argv)
{
	struct moe_tokenizer *tok;
	struct moe_ctx_params cp;
	struct moe_sample_params sp;
	struct printer pr = { 0 };
	struct moe_model *model;
	struct moe_hparams hp;
	struct watch w = { .force = -1 };
	struct moe_ctx *ctx;
	int32_t ids[256];
	char buf[512];
	int n, gen, len;

	if (argc < 3 || argc > 5) {
		fprintf(stderr, "usage: %s MODEL.gguf PROMPT [N_TOKENS [FORCE_EXPERT]]\n", argv[0]);
		return 2;
	}
	if (moe_model_open(argv[1], &model) < 0 || moe_model_hparams(model, &hp) < 0 ||
	    moe_tokenizer_load(model, &tok) < 0) {
		fprintf(stderr, "generate: %s\n", moe_errmsg());
		return 1;
	}
	w.model = model;
	w.n_layer = hp.n_layer;
	w.n_expert = hp.n_expert ? hp.n_expert : 1;
	w.picked = calloc((size_t)w.n_layer * w.n_expert, sizeof(*w.picked));
	if (argc == 5)
		w.force = atoi(argv[4]);
	if (!w.picked)
		return 1;

	moe_ctx_params_init(&cp);
	cp.n_ctx = 256;
	if (moe_ctx_create(model, &cp, &ctx) < 0) {
		fprintf(stderr, "generate: %s\n", moe_errmsg());
		return 1;
	}
	moe_ctx_set_route_hook(ctx, on_route, &w);

	n = moe_tokenize(tok, argv[2], strlen(argv[2]),
			 moe_tokenizer_add_bos(tok) ? MOE_TOK_ADD_BOS : 0, ids, 256);
	if (n <= 0) {
		fprintf(stderr, "generate: %s\n", n ? moe_errmsg() : "the prompt has no tokens");
		return 1;
	}
	moe_sample_params_init(&sp);
	pr.tok = tok;
	printf("%s", argv[2]);
	gen = moe_ctx_generate(ctx, ids, (uint32_t)n, argc > 3 ? (uint32_t)atoi(argv[3]) : 8, &sp,
			       0, on_token, &pr);
	if (gen < 0) {
		fprintf(stderr, "\ngenerate: %s\n", moe_errmsg());
		return 1;
	}
	len = moe_detok_stream(tok, &pr.ds, -1, buf, sizeof(buf));
	if (len > 0)
		fwrite(buf, 1, (size_t)len, stdout);
	printf("\ngenerated %d tokens after a prompt of %d\n", gen, n);

	for (uint32_t l = 0; l < w.n_layer; l++) {
		const struct moe_routestats *rs = moe_ctx_routestats(ctx);
		uint64_t any = 0;

		for (uint32_t e = 0; e < w.n_expert; e++)
			any += w.picked[l * w.n_expert + e];
		if (!any)
			continue;
		printf("layer %u: router picked", l);
		for (uint32_t e = 0; e < w.n_expert; e++)
			printf(" %" PRIu64, w.picked[l * w.n_expert + e]);
		printf("; ran");
		for (uint32_t e = 0; e < w.n_expert; e++)
			printf(" %" PRIu64, rs ? moe_routestats_count(rs, l, e) : 0);
		printf("\n");
	}
	moe_ctx_destroy(ctx);
	moe_tokenizer_destroy(tok);
	free(w.picked);
	moe_model_destroy(model);
	return 0;
}
