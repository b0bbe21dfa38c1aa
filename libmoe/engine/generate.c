/* SPDX-License-Identifier: MIT */
/* Generation: prompt, then sample-and-feed-back through the sampler module. */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/publish.h"
#include "engine/sampler.h"
#include "util/util.h"

void moe_sample_params_init(struct moe_sample_params *p)
{
	memset(p, 0, sizeof(*p));
	p->top_p = 1.0f;
	p->repeat_penalty = 1.0f;
}

/* The public parameters as the sampler module takes them. */
static struct moe_sampler_params sampler_params(const struct moe_sample_params *sp)
{
	return (struct moe_sampler_params){
		.temp = sp->temp, .top_k = sp->top_k, .top_p = sp->top_p, .min_p = sp->min_p,
		.repeat_penalty = sp->repeat_penalty, .repeat_last_n = sp->repeat_last_n,
		.seed = sp->seed, .grammar = sp->grammar, .tok = sp->tokenizer,
	};
}

int moe_sampler_new(const struct moe_sample_params *p, uint32_t n_vocab,
		    struct moe_sampler **out)
{
	struct moe_sampler_params smp;

	if (!p || !out)
		return moe_err(EINVAL, "sampler: params and out must not be NULL");
	if (n_vocab > INT32_MAX)
		return moe_err(EINVAL, "sampler: vocabulary size %u is too large", n_vocab);
	smp = sampler_params(p);
	return moe_sampler_create(&smp, (int)n_vocab, out);
}

/* With a grammar: an end-of-generation token was drawn, or the document can only end. */
static bool grammar_ended(struct moe_sampler *s, const struct moe_sample_params *sp,
			  int32_t tok)
{
	struct moe_grammar *g = moe_sampler_grammar(s);

	if (!g)
		return false;
	return moe_tokenizer_is_eog(sp->tokenizer, tok) || !moe_grammar_can_continue(g);
}

enum moe_gen_end moe_ctx_gen_end(const struct moe_ctx *ctx)
{
	return ctx ? ctx->gen_end : MOE_GEN_END_NONE;
}

const char *moe_gen_end_reason(enum moe_gen_end e)
{
	switch (e) {
	case MOE_GEN_END_EOG:
	case MOE_GEN_END_GRAMMAR:
	case MOE_GEN_END_CALLBACK: return "stop";
	case MOE_GEN_END_LENGTH: return "length";
	case MOE_GEN_END_ERROR: return "error";
	default: return NULL;
	}
}

int moe_ctx_generate(struct moe_ctx *ctx, const int32_t *prompt, uint32_t n_prompt,
		     uint32_t n_gen, const struct moe_sample_params *sp, uint32_t flags,
		     moe_gen_cb cb, void *arg)
{
	return moe_ctx_generate_at(ctx, prompt, n_prompt, 0, n_gen, sp, flags, cb, arg);
}

int moe_ctx_generate_at(struct moe_ctx *ctx, const int32_t *prompt, uint32_t n_prompt,
			uint32_t pos, uint32_t n_gen, const struct moe_sample_params *sp,
			uint32_t flags, moe_gen_cb cb, void *arg)
{
	struct moe_sample_params def;
	struct moe_sampler_params smp;
	struct moe_sampler *s;
	uint32_t rows = flags & MOE_EVAL_ALL_LOGITS ? n_prompt : 1, done = 0;
	int32_t tok;
	int ret;

	if (!sp) {
		moe_sample_params_init(&def);
		sp = &def;
	}
	ctx->gen_end = n_prompt && !n_gen ? MOE_GEN_END_LENGTH : MOE_GEN_END_ERROR;
	if (!n_prompt)
		return moe_err(EINVAL, "generate: the prompt is empty (at least one token, e.g. "
			       "the BOS token)");
	if (!n_gen)
		return 0;
	if (pos > moe_ctx_n_past(ctx))
		return moe_err(EINVAL, "generate: position %u is past the %u positions evaluated",
			       pos, moe_ctx_n_past(ctx));
	if ((uint64_t)pos + n_prompt + n_gen - 1 > ctx->n_ctx)
		return moe_err(ENOSPC, "generate: %u kept + %u prompt + %u new tokens exceed the "
			       "context of %u; raise --ctx", pos, n_prompt, n_gen, ctx->n_ctx);
	smp = sampler_params(sp);
	ret = moe_sampler_create(&smp, (int)ctx->hp.n_vocab, &s);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < n_prompt; i++)
		moe_sampler_accept(s, prompt[i]);
	ret = moe_ctx_eval(ctx, prompt, n_prompt, pos, flags);
	while (!ret) {
		const float *last = moe_ctx_logits(ctx, rows - 1);

		tok = moe_sampler_sample(s, last);
		if (tok < 0) {
			ret = tok;
			break;
		}
		moe_sampler_accept(s, tok);
		done++;
		{
			bool stop_cb = cb && cb(arg, moe_ctx_logits(ctx, 0), rows, tok);
			bool gram = grammar_ended(s, sp, tok);

			if (stop_cb || done == n_gen || gram) {
				ctx->gen_end = sp->tokenizer && moe_tokenizer_is_eog(sp->tokenizer, tok) ?
					       MOE_GEN_END_EOG : gram ? MOE_GEN_END_GRAMMAR :
					       stop_cb ? MOE_GEN_END_CALLBACK : MOE_GEN_END_LENGTH;
				break;
			}
		}
		rows = 1;
		ret = moe_ctx_eval(ctx, &tok, 1, pos + n_prompt + done - 1, 0);
	}
	if (ret < 0)
		ctx->gen_end = MOE_GEN_END_ERROR;
	moe_sampler_destroy(s);
	/* the end of a request: what moectl status shows while the engine waits for the next */
	moe_pub_update(ctx, true);
	return ret < 0 ? ret : (int)done;
}
