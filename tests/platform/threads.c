/* SPDX-License-Identifier: MIT */
/*
 * threads MODEL N: N inference contexts on one model handle, each created,
 * run and freed on a thread of its own at the same time, must compute the
 * logits one context computes alone, bit for bit.  make builds it with
 * ThreadSanitizer (with the library), so that any unsynchronised write to
 * what the contexts share — the model, its resident weights as read, the
 * library's globals — is reported (and fails the run with status 66).
 * Experts are read lazily, so the contexts' I/O engines stream them
 * concurrently.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <moe/moe.h>

#define N_TOK 6
#define MAX_THREADS 8

static struct moe_model *model;
static const int32_t tokens[N_TOK] = { 1, 7, 42, 3, 99, 5 };
static uint32_t n_vocab;

struct job {
	pthread_t th;
	float *logits;      /* of the last token, n_vocab */
	int ret;
	char err[256];
};

static int run_one(float *out, char *err, size_t err_len)
{
	struct moe_ctx_params p;
	struct moe_ctx *ctx;
	const float *lg;
	int ret;

	moe_ctx_params_init(&p);
	p.n_threads = 1;
	p.n_ctx = 64;
	p.backend = "cpu";
	p.flags = MOE_CTX_LAZY_EXPERTS;
	ret = moe_ctx_create(model, &p, &ctx);
	if (ret < 0) {
		snprintf(err, err_len, "moe_ctx_create: %s", moe_errmsg());
		return ret;
	}
	ret = moe_ctx_eval(ctx, tokens, N_TOK, 0, 0);
	lg = ret < 0 ? NULL : moe_ctx_logits(ctx, 0);
	if (ret < 0 || !lg)
		snprintf(err, err_len, "moe_ctx_eval: %s", moe_errmsg());
	else
		memcpy(out, lg, sizeof(float) * n_vocab);
	moe_ctx_destroy(ctx);
	return ret < 0 ? ret : lg ? 0 : -1;
}

static void *worker(void *arg)
{
	struct job *j = arg;

	j->ret = run_one(j->logits, j->err, sizeof(j->err));
	return NULL;
}

int main(int argc, char **argv)
{
	struct job jobs[MAX_THREADS];
	struct moe_hparams hp;
	float *ref;
	int n, bad = 0;

	if (argc != 3 || (n = atoi(argv[2])) < 1 || n > MAX_THREADS) {
		fprintf(stderr, "usage: %s MODEL.gguf N (1..%d)\n", argv[0], MAX_THREADS);
		return 2;
	}
	if (moe_model_open(argv[1], &model) < 0 || moe_model_hparams(model, &hp) < 0) {
		fprintf(stderr, "threads: %s\n", moe_errmsg());
		return 1;
	}
	n_vocab = hp.n_vocab;
	ref = malloc(sizeof(float) * n_vocab);
	if (!ref)
		return 1;
	{
		char err[256];

		if (run_one(ref, err, sizeof(err)) < 0) {
			fprintf(stderr, "threads: alone: %s\n", err);
			return 1;
		}
	}
	for (int i = 0; i < n; i++) {
		jobs[i].logits = malloc(sizeof(float) * n_vocab);
		jobs[i].err[0] = 0;
		if (!jobs[i].logits || pthread_create(&jobs[i].th, NULL, worker, &jobs[i]))
			return 1;
	}
	for (int i = 0; i < n; i++) {
		pthread_join(jobs[i].th, NULL);
		if (jobs[i].ret < 0) {
			fprintf(stderr, "threads: context %d: %s\n", i, jobs[i].err);
			bad++;
		} else if (memcmp(jobs[i].logits, ref, sizeof(float) * n_vocab) != 0) {
			fprintf(stderr, "threads: context %d computed other logits than one alone\n",
				i);
			bad++;
		}
		free(jobs[i].logits);
	}
	free(ref);
	moe_model_destroy(model);
	if (bad)
		return 1;
	printf("threads: %d contexts on one model agree with one alone\n", n);
	return 0;
}
