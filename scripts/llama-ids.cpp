// SPDX-License-Identifier: MIT
// Token ids of test texts as llama.cpp's tokenizer gives them, in the format
// of its conformance files: one line per text, the ids separated by spaces,
// no BOS, special tokens not parsed.  Built and run by
// scripts/make-vocab-fixtures.sh against a llama.cpp build outside the tree.
//
// usage: llama-ids VOCAB.gguf TEXTS.inp > TEXTS.out
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "llama.h"

static void quiet(enum ggml_log_level, const char *, void *)
{
}

int main(int argc, char **argv)
{
	const std::string sep = "\n__ggml_vocab_test__\n";

	if (argc != 3) {
		fprintf(stderr, "usage: %s VOCAB.gguf TEXTS.inp\n", argv[0]);
		return 2;
	}
	llama_log_set(quiet, nullptr);
	llama_backend_init();
	llama_model_params mp = llama_model_default_params();
	mp.vocab_only = true;
	llama_model *model = llama_model_load_from_file(argv[1], mp);
	if (!model) {
		fprintf(stderr, "%s: llama.cpp cannot load it\n", argv[1]);
		return 1;
	}
	const llama_vocab *vocab = llama_model_get_vocab(model);
	std::ifstream in(argv[2], std::ios::binary);
	std::stringstream ss;
	ss << in.rdbuf();
	std::string all = ss.str();
	for (size_t at = 0;;) {
		size_t end = all.find(sep, at);

		if (end == std::string::npos)
			break;
		std::string text = all.substr(at, end - at);
		std::vector<llama_token> ids(text.size() + 16);
		int n = llama_tokenize(vocab, text.data(), (int32_t)text.size(), ids.data(),
				       (int32_t)ids.size(), false, false);
		if (n < 0) {
			fprintf(stderr, "%s: tokenizing a text failed\n", argv[2]);
			return 1;
		}
		for (int i = 0; i < n; i++)
			printf(i ? " %d" : "%d", ids[i]);
		printf("\n");
		at = end + sep.size();
	}
	llama_model_free(model);
	return 0;
}
