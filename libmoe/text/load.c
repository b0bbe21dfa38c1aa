/* SPDX-License-Identifier: MIT */
/* moe_tokenizer_load: the tokenizer.ggml.* metadata of a model into tok_build. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "text/tokenizer.h"
#include "util/util.h"

static int get_array(const struct moe_model *m, const char *key, uint32_t want_type,
		     bool numeric, uint64_t want_count, struct moe_meta *out)
{
	int ret = moe_meta_get(m, key, out);

	if (ret)
		return ret;
	if (out->type != MOE_META_ARRAY)
		return moe_err(EINVAL, "%s: metadata '%s' is not an array", moe_model_path(m), key);
	if (numeric ? (out->elem_type == MOE_META_STRING || out->elem_type == MOE_META_ARRAY)
		    : out->elem_type != want_type)
		return moe_err(EINVAL, "%s: metadata '%s' has elements of type %u, expected %s",
			       moe_model_path(m), key, out->elem_type,
			       numeric ? "numbers" : "strings");
	if (want_count && out->count != want_count)
		return moe_err(EINVAL,
			       "%s: '%s' has %llu entries but tokenizer.ggml.tokens has %llu: the vocabulary arrays disagree, the file is damaged or was converted wrongly",
			       moe_model_path(m), key, (unsigned long long)out->count,
			       (unsigned long long)want_count);
	return 0;
}

static int64_t get_id(const struct moe_model *m, const char *key)
{
	uint64_t v;

	return moe_meta_get_u64(m, key, &v) || v > INT32_MAX ? -1 : (int64_t)v;
}

static int get_bool(const struct moe_model *m, const char *key)
{
	uint64_t v;

	return moe_meta_get_u64(m, key, &v) ? -1 : v != 0;
}

MOE_API int moe_tokenizer_load(const struct moe_model *m, struct moe_tokenizer **out)
{
	struct tok_spec sp = { 0 };
	struct moe_meta toks, scores, types, merges;
	const char **tok_s = NULL, **merge_s = NULL;
	uint32_t *tok_len = NULL, *merge_len = NULL;
	float *score_v = NULL;
	int32_t *type_v = NULL;
	const char *s;
	uint64_t n;
	int ret;

	if (!m || !out)
		return moe_err(EINVAL, "moe_tokenizer_load: NULL argument");
	*out = NULL;
	ret = moe_meta_get_str(m, "tokenizer.ggml.model", &sp.model);
	if (ret == -ENOENT)
		return moe_err(ENOENT,
			       "%s: no tokenizer.ggml.model: the file carries no tokenizer; use a model or vocab file that has one",
			       moe_model_path(m));
	if (ret)
		return ret;
	if (!strcmp(sp.model, "none") || !strcmp(sp.model, "no_vocab"))
		return moe_err(ENOENT,
			       "%s: the model has no tokenizer (tokenizer.ggml.model '%s'): give token ids instead of text",
			       moe_model_path(m), sp.model);
	if (moe_meta_get_str(m, "tokenizer.ggml.pre", &sp.pre))
		sp.pre = NULL;
	ret = get_array(m, "tokenizer.ggml.tokens", MOE_META_STRING, false, 0, &toks);
	if (ret == -ENOENT)
		return moe_err(EINVAL, "%s: tokenizer.ggml.tokens is missing", moe_model_path(m));
	if (ret)
		return ret;
	n = toks.count;
	if (!n || n > INT32_MAX / 4)
		return moe_err(EINVAL, "%s: tokenizer.ggml.tokens has %llu entries",
			       moe_model_path(m), (unsigned long long)n);
	sp.n_vocab = (uint32_t)n;
	tok_s = malloc(n * sizeof(*tok_s));
	tok_len = malloc(n * sizeof(*tok_len));
	if (!tok_s || !tok_len) {
		ret = moe_err(ENOMEM, "tokenizer: out of memory for %llu tokens",
			      (unsigned long long)n);
		goto out;
	}
	for (uint64_t i = 0; i < n; i++) {
		uint64_t len;

		ret = moe_meta_array_str(&toks, i, &tok_s[i], &len);
		if (ret)
			goto out;
		if (len > UINT32_MAX) {
			ret = moe_err(EINVAL, "%s: tokenizer.ggml.tokens[%llu] is %llu bytes long",
				      moe_model_path(m), (unsigned long long)i,
				      (unsigned long long)len);
			goto out;
		}
		tok_len[i] = (uint32_t)len;
	}
	sp.tokens = tok_s;
	sp.token_lens = tok_len;

	ret = get_array(m, "tokenizer.ggml.scores", 0, true, n, &scores);
	if (!ret) {
		score_v = malloc(n * sizeof(*score_v));
		if (!score_v) {
			ret = moe_err(ENOMEM, "tokenizer: out of memory");
			goto out;
		}
		for (uint64_t i = 0; i < n && !ret; i++) {
			double d;

			ret = moe_meta_array_f64(&scores, i, &d);
			score_v[i] = (float)d;
		}
		if (ret)
			goto out;
		sp.scores = score_v;
	} else if (ret != -ENOENT) {
		goto out;
	}
	ret = get_array(m, "tokenizer.ggml.token_type", 0, true, n, &types);
	if (!ret) {
		type_v = malloc(n * sizeof(*type_v));
		if (!type_v) {
			ret = moe_err(ENOMEM, "tokenizer: out of memory");
			goto out;
		}
		for (uint64_t i = 0; i < n && !ret; i++) {
			int64_t v;

			ret = moe_meta_array_i64(&types, i, &v);
			type_v[i] = v < INT32_MIN || v > INT32_MAX ? 0 : (int32_t)v;
		}
		if (ret)
			goto out;
		sp.types = type_v;
	} else if (ret != -ENOENT) {
		goto out;
	}
	ret = get_array(m, "tokenizer.ggml.merges", MOE_META_STRING, false, 0, &merges);
	if (!ret) {
		if (merges.count > INT32_MAX / 4) {
			ret = moe_err(EINVAL, "%s: tokenizer.ggml.merges has %llu entries",
				      moe_model_path(m), (unsigned long long)merges.count);
			goto out;
		}
		merge_s = malloc((merges.count + 1) * sizeof(*merge_s));
		merge_len = malloc((merges.count + 1) * sizeof(*merge_len));
		if (!merge_s || !merge_len) {
			ret = moe_err(ENOMEM, "tokenizer: out of memory");
			goto out;
		}
		for (uint64_t i = 0; i < merges.count; i++) {
			uint64_t len;

			ret = moe_meta_array_str(&merges, i, &merge_s[i], &len);
			if (ret)
				goto out;
			merge_len[i] = (uint32_t)MOE_MIN(len, UINT32_MAX);
		}
		sp.n_merges = (uint32_t)merges.count;
		sp.merges = merge_s;
		sp.merge_lens = merge_len;
	} else if (ret != -ENOENT) {
		goto out;
	}
	sp.bos = get_id(m, "tokenizer.ggml.bos_token_id");
	sp.eos = get_id(m, "tokenizer.ggml.eos_token_id");
	sp.eot = get_id(m, "tokenizer.ggml.eot_token_id");
	sp.eom = get_id(m, "tokenizer.ggml.eom_token_id");
	sp.unk = get_id(m, "tokenizer.ggml.unknown_token_id");
	sp.add_bos = get_bool(m, "tokenizer.ggml.add_bos_token");
	sp.add_space_prefix = get_bool(m, "tokenizer.ggml.add_space_prefix");
	if (moe_meta_get_str(m, "general.architecture", &sp.arch))
		sp.arch = NULL;
	if (!moe_meta_get_str(m, "tokenizer.chat_template", &s)) {
		sp.chat_template = s;
		sp.chat_template_len = strlen(s);
	}
	ret = tok_build(&sp, out);
	if (ret)
		ret = moe_err_prefix(ret, "%s", moe_model_path(m));
out:
	free(tok_s);
	free(tok_len);
	free(score_v);
	free(type_v);
	free(merge_s);
	free(merge_len);
	return ret;
}
