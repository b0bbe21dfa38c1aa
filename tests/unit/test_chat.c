/* SPDX-License-Identifier: MIT */
/*
 * moe-run --chat end to end: one turn with -p, a conversation on standard
 * input whose later turns reuse the KV cache, and that reuse giving the same
 * reply as evaluating the whole conversation from scratch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "testutil.h"

static char *dir, model[512];

static void setup(void)
{
	char cmd[1024];

	dir = tu_tmpdir();
	ck_assert_ptr_nonnull(dir);
	snprintf(model, sizeof(model), "%s/chat.gguf", dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --vocab-bpe -q -o %s", tu_bin("moe-mkmodel"),
		 model);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
}

static void teardown(void)
{
	tu_rmtree(dir);
	free(dir);
}

START_TEST(chat_one_turn)
{
	char cmd[2048], *out;

	snprintf(cmd, sizeof(cmd), "%s -m %s --chat -p 'hello there' -n 8 2>/dev/null",
		 tu_bin("moe-run"), model);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	ck_assert_msg(strlen(out) > 1 && out[strlen(out) - 1] == '\n' && !strchr(out, '\n')[1],
		      "one reply line expected: '%s'", out);
	free(out);
	/* usage errors and a model without a vocabulary */
	snprintf(cmd, sizeof(cmd), "%s -m %s --chat --tokens 1,2", tu_bin("moe-run"), model);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
	snprintf(cmd, sizeof(cmd), "%s -m %s --system hi -p x", tu_bin("moe-run"), model);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe -q -o %s/novocab.gguf && %s -m "
		 "%s/novocab.gguf --chat -p hi", tu_bin("moe-mkmodel"), dir, tu_bin("moe-run"), dir);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_msg(strstr(out, "--chat needs one"), "%s", out);
	free(out);
}
END_TEST

/* Greedy reply to a conversation evaluated from position 0, through the API. */
static char *reply_from_scratch(const struct moe_chat_msg *msgs, int n_msgs, uint32_t n_gen)
{
	struct moe_model *m;
	struct moe_tokenizer *t;
	struct moe_ctx_params p;
	struct moe_ctx *ctx;
	int32_t toks[4096], out[64];
	char *text, *reply;
	int n, len;
	uint32_t k = 0;

	ck_assert_int_eq(moe_model_open(model, &m), 0);
	ck_assert_int_eq(moe_tokenizer_load(m, &t), 0);
	len = moe_chat_render(t, msgs, n_msgs, true, &text);
	ck_assert_int_gt(len, 0);
	n = moe_tokenize(t, text, (size_t)len, MOE_TOK_PARSE_SPECIAL, toks, 4096);
	free(text);
	ck_assert_int_gt(n, 0);
	moe_ctx_params_init(&p);
	p.n_ctx = 1024;
	ck_assert_int_eq(moe_ctx_create(m, &p, &ctx), 0);
	ck_assert_int_eq(moe_ctx_eval(ctx, toks, (uint32_t)n, 0, 0), 0);
	while (k < n_gen) {
		const float *l = moe_ctx_logits(ctx, 0);
		int32_t best = 0;

		for (uint32_t v = 1; v < moe_ctx_n_vocab(ctx); v++)
			if (l[v] > l[best])
				best = (int32_t)v;
		out[k++] = best;
		if (moe_tokenizer_is_eog(t, best) || k == n_gen)
			break;
		ck_assert_int_eq(moe_ctx_eval(ctx, &best, 1, (uint32_t)n + k - 1, 0), 0);
	}
	if (k && moe_tokenizer_is_eog(t, out[k - 1]))
		k--;
	len = moe_detokenize(t, out, (int)k, 0, NULL, 0);
	ck_assert_int_ge(len, 0);
	reply = calloc(1, (size_t)len + 1);
	ck_assert_int_eq(moe_detokenize(t, out, (int)k, 0, reply, len), len);
	moe_ctx_destroy(ctx);
	moe_tokenizer_destroy(t);
	moe_model_destroy(m);
	return reply;
}

START_TEST(chat_conversation_reuses_kv)
{
	char cmd[2048], *out, *err, *second, *scratch;
	unsigned keep1, n1, keep2, n2;
	const char *p;

	snprintf(cmd, sizeof(cmd), "printf 'hello there\\nand again\\n' | %s -m %s --chat --system "
		 "'be brief' -n 10 --ctx 1024 --stats 2>%s/err", tu_bin("moe-run"), model, dir);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	snprintf(cmd, sizeof(cmd), "%s/err", dir);
	err = tu_read_file(cmd, NULL);
	ck_assert_ptr_nonnull(err);
	p = strstr(err, "chat: turn 1: ");
	ck_assert_msg(p && sscanf(p, "chat: turn 1: %u of %u", &keep1, &n1) == 2, "%s", err);
	p = strstr(err, "chat: turn 2: ");
	ck_assert_msg(p && sscanf(p, "chat: turn 2: %u of %u", &keep2, &n2) == 2, "%s", err);
	ck_assert_uint_eq(keep1, 0);
	/* the whole first prompt stays in the cache; only the new turn is evaluated */
	ck_assert_uint_ge(keep2, n1);
	ck_assert_uint_lt(keep2, n2);
	free(err);

	/* two reply lines; the second equals a from-scratch evaluation of the conversation */
	second = strchr(out, '\n');
	ck_assert_ptr_nonnull(second);
	*second++ = 0;
	ck_assert_ptr_nonnull(strchr(second, '\n'));
	*strchr(second, '\n') = 0;
	{
		const struct moe_chat_msg msgs[] = {
			{ .role = "system", .content = "be brief" },
			{ .role = "user", .content = "hello there" },
			{ .role = "assistant", .content = out },
			{ .role = "user", .content = "and again" },
		};

		scratch = reply_from_scratch(msgs, 4, 10);
	}
	ck_assert_str_eq(second, scratch);
	free(scratch);
	free(out);
}
END_TEST

Suite *suite_chat(void)
{
	Suite *s = suite_create("chat");
	TCase *tc = tcase_create("moe-run");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, chat_one_turn);
	tcase_add_test(tc, chat_conversation_reuses_kv);
	suite_add_tcase(s, tc);
	return s;
}
