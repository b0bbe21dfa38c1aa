// SPDX-License-Identifier: MIT
/*
 * llama-dump: run llama.cpp on one model and write what the engine tests
 * compare against: the logits of every prompt position, the router logits
 * and chosen experts of every MoE layer, and a greedy continuation.  Built
 * and run by make-reference.sh against a llama.cpp build; never part of
 * `make check`, which reads only the files this writes.
 *
 * usage: llama-dump MODEL TOKENS_FILE N_PROMPT N_GREEDY OUT_PREFIX
 *   OUT_PREFIX.logits.f32  float32 [N_PROMPT][n_vocab]
 *   OUT_PREFIX.router.f32  float32 [n_layer][N_PROMPT][n_expert] (0 on dense layers)
 *   OUT_PREFIX.topk.i32    int32 [n_layer][N_PROMPT][k] (-1 on dense layers)
 *   OUT_PREFIX.greedy.txt  N_GREEDY token ids
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

#define MAX_LAYERS 64

struct capture {
	int recording, n_prompt, n_layer;
	int n_expert, k;
	float *router;          /* [n_layer][n_prompt][n_expert] */
	int32_t *topk;          /* [n_layer][n_prompt][k] */
	int seen[MAX_LAYERS];
};

static int layer_of(const char *name, const char *prefix)
{
	size_t n = strlen(prefix);
	char *end;
	long il;

	if (strncmp(name, prefix, n) || name[n] != '-')
		return -1;
	il = strtol(name + n + 1, &end, 10);
	return *end || il < 0 || il >= MAX_LAYERS ? -1 : (int)il;
}

/* Rows of a (possibly strided) 2-D tensor into a packed host array. */
static void get_rows(const struct ggml_tensor *t, void *dst)
{
	size_t row = (size_t)t->ne[0] * ggml_element_size(t);

	for (int64_t r = 0; r < t->ne[1]; r++)
		ggml_backend_tensor_get(t, (char *)dst + r * row, (size_t)r * t->nb[1], row);
}

static bool on_tensor(struct ggml_tensor *t, bool ask, void *arg)
{
	struct capture *c = arg;
	int il_l = layer_of(t->name, "ffn_moe_logits"), il_k = layer_of(t->name, "ffn_moe_topk");
	size_t n = (size_t)c->n_layer * c->n_prompt;

	if (ask)
		return c->recording && (il_l >= 0 || il_k >= 0);
	if (!c->recording || (il_l < 0 && il_k < 0) || t->ne[1] != c->n_prompt ||
	    il_l >= c->n_layer || il_k >= c->n_layer)
		return true;
	if (il_l >= 0) {
		if (!c->router) {
			c->n_expert = (int)t->ne[0];
			c->router = calloc(n * c->n_expert, sizeof(float));
			if (!c->router)
				return false;
		}
		get_rows(t, c->router + (size_t)il_l * c->n_prompt * c->n_expert);
		c->seen[il_l] |= 1;
		return true;
	}
	if (!c->topk) {
		c->k = (int)t->ne[0];
		c->topk = malloc(n * c->k * sizeof(int32_t));
		if (!c->topk)
			return false;
		/* dense layers choose nothing */
		for (size_t i = 0; i < n * c->k; i++)
			c->topk[i] = -1;
	}
	get_rows(t, c->topk + (size_t)il_k * c->n_prompt * c->k);
	c->seen[il_k] |= 2;
	return true;
}

static int write_file(const char *prefix, const char *suffix, const void *p, size_t bytes)
{
	char path[1024];
	FILE *f;

	snprintf(path, sizeof(path), "%s.%s", prefix, suffix);
	f = fopen(path, "wb");
	if (!f || fwrite(p, 1, bytes, f) != bytes || fclose(f)) {
		fprintf(stderr, "llama-dump: cannot write %s\n", path);
		return -1;
	}
	return 0;
}

static int argmax(const float *l, int n)
{
	int best = 0;

	for (int i = 1; i < n; i++)
		if (l[i] > l[best])
			best = i;
	return best;
}

/* the loader draws progress dots otherwise */
static bool no_progress(float progress, void *arg)
{
	(void)progress;
	(void)arg;
	return true;
}

static void quiet(enum ggml_log_level level, const char *text, void *arg)
{
	(void)arg;
	if (level >= GGML_LOG_LEVEL_ERROR)
		fputs(text, stderr);
}

static struct llama_context *make_ctx(struct llama_model *model, int n_prompt,
				      ggml_backend_sched_eval_callback cb, struct capture *c)
{
	struct llama_context_params cp = llama_context_default_params();

	cp.n_ctx = 256;
	cp.n_batch = cp.n_ubatch = (uint32_t)n_prompt;
	cp.n_seq_max = 1;
	cp.n_threads = cp.n_threads_batch = 2;
	cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
	cp.type_k = cp.type_v = GGML_TYPE_F32;
	cp.cb_eval = cb;
	cp.cb_eval_user_data = c;
	cp.no_perf = true;
	return llama_init_from_model(model, cp);
}

static int decode_prompt(struct llama_context *ctx, const int32_t *tok, int n)
{
	struct llama_batch b = llama_batch_init(n, 0, 1);
	int ret;

	for (int i = 0; i < n; i++) {
		b.token[i] = tok[i];
		b.pos[i] = i;
		b.n_seq_id[i] = 1;
		b.seq_id[i][0] = 0;
		b.logits[i] = 1;
	}
	b.n_tokens = n;
	ret = llama_decode(ctx, b);
	llama_batch_free(b);
	return ret;
}

int main(int argc, char **argv)
{
	struct llama_model_params mp = llama_model_default_params();
	struct capture c = { 0 };
	struct llama_model *model;
	struct llama_context *ctx;
	int32_t tok[4096], *greedy;
	int n_prompt, n_greedy, n_vocab, n = 0;
	float *logits;
	FILE *tf;
	char path[1024];

	if (argc != 6) {
		fprintf(stderr, "usage: llama-dump MODEL TOKENS N_PROMPT N_GREEDY OUT_PREFIX\n");
		return 2;
	}
	n_prompt = atoi(argv[3]);
	n_greedy = atoi(argv[4]);
	tf = fopen(argv[2], "r");
	while (tf && n < 4096 && fscanf(tf, "%d", &tok[n]) == 1)
		n++;
	if (tf)
		fclose(tf);
	if (n < n_prompt || n_prompt <= 0 || n_greedy < 0) {
		fprintf(stderr, "llama-dump: %s holds %d tokens, %d needed\n", argv[2], n, n_prompt);
		return 1;
	}
	llama_log_set(quiet, NULL);
	llama_backend_init();
	mp.n_gpu_layers = 0;
	mp.progress_callback = no_progress;
	model = llama_model_load_from_file(argv[1], mp);
	if (!model) {
		fprintf(stderr, "llama-dump: llama.cpp cannot load %s\n", argv[1]);
		return 1;
	}
	n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
	c.n_prompt = n_prompt;
	c.n_layer = llama_model_n_layer(model);
	if (c.n_layer > MAX_LAYERS)
		return 1;

	ctx = make_ctx(model, n_prompt, on_tensor, &c);
	c.recording = 1;
	if (!ctx || decode_prompt(ctx, tok, n_prompt)) {
		fprintf(stderr, "llama-dump: the prompt did not decode\n");
		return 1;
	}
	c.recording = 0;
	logits = malloc(sizeof(float) * (size_t)n_prompt * n_vocab);
	greedy = malloc(sizeof(int32_t) * (n_greedy + 1));
	for (int t = 0; t < n_prompt; t++)
		memcpy(logits + (size_t)t * n_vocab, llama_get_logits_ith(ctx, t),
		       sizeof(float) * n_vocab);
	if (n_greedy)
		greedy[0] = argmax(logits + (size_t)(n_prompt - 1) * n_vocab, n_vocab);
	for (int g = 1; g < n_greedy; g++) {
		struct llama_batch b = llama_batch_init(1, 0, 1);

		b.token[0] = greedy[g - 1];
		b.pos[0] = n_prompt + g - 1;
		b.n_seq_id[0] = 1;
		b.seq_id[0][0] = 0;
		b.logits[0] = 1;
		b.n_tokens = 1;
		if (llama_decode(ctx, b)) {
			fprintf(stderr, "llama-dump: greedy step %d did not decode\n", g);
			return 1;
		}
		llama_batch_free(b);
		greedy[g] = argmax(llama_get_logits_ith(ctx, -1), n_vocab);
	}
	if (write_file(argv[5], "logits.f32", logits, sizeof(float) * (size_t)n_prompt * n_vocab))
		return 1;
	if (c.k && (write_file(argv[5], "router.f32", c.router, sizeof(float) * (size_t)c.n_layer *
			       n_prompt * c.n_expert) ||
		    write_file(argv[5], "topk.i32", c.topk, sizeof(int32_t) * (size_t)c.n_layer *
			       n_prompt * c.k)))
		return 1;
	snprintf(path, sizeof(path), "%s.greedy.txt", argv[5]);
	tf = fopen(path, "w");
	for (int g = 0; tf && g < n_greedy; g++)
		fprintf(tf, "%d%c", greedy[g], g + 1 < n_greedy ? ' ' : '\n');
	if (!tf || fclose(tf))
		return 1;
	printf("%s: %d positions of %d logits, %d layers, %d experts (top-%d), %d greedy\n",
	       argv[1], n_prompt, n_vocab, c.n_layer, c.n_expert, c.k, n_greedy);
	llama_free(ctx);
	llama_model_free(model);
	free(logits);
	free(greedy);
	free(c.router);
	free(c.topk);
	return 0;
}
