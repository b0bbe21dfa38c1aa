/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target for the GGUF reader and model open.  `make fuzz` builds it
 * with -fsanitize=fuzzer; `make check` replays tests/fuzz/corpus/gguf/ through
 * the same function.
 */
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gguf.h"
#include "moe/moe.h"

int fuzz_gguf(const uint8_t *data, size_t size);

/* Touch everything a caller may read after a successful open. */
static void walk_model(const struct moe_model *m)
{
	struct moe_hparams hp;
	struct moe_model_summary s;
	struct moe_meta meta;
	int n = moe_meta_count(m);

	for (int i = 0; i < n; i++) {
		const char *str;
		int64_t v;
		double d;

		if (moe_meta_at(m, i, &meta))
			continue;
		for (uint64_t k = 0; meta.type == MOE_META_ARRAY && k < meta.count && k < 64; k++) {
			moe_meta_array_str(&meta, k, &str, NULL);
			moe_meta_array_i64(&meta, k, &v);
			moe_meta_array_f64(&meta, k, &d);
		}
	}
	if (moe_model_hparams(m, &hp))
		return;
	moe_model_summary(m, &s);
	for (uint32_t l = 0; l < hp.n_layer; l++) {
		struct moe_layer_info li;
		struct moe_expert e;

		moe_model_layer(m, l, &li);
		for (uint32_t x = 0; x < hp.n_expert && x < 4; x++)
			moe_model_expert(m, l, x, &e);
	}
}

int fuzz_gguf(const uint8_t *data, size_t size)
{
	struct gguf_file *f = NULL;
	struct moe_model *m = NULL;
	char path[64];
	int fd;

	if (gguf_parse_mem(data, size, "fuzz", &f) == 0) {
		for (uint64_t i = 0; i < f->n_kv; i++)
			gguf_find_kv(f, f->kv[i].key);
		gguf_free(f);
	}
	/*
	 * As moe.ko serves a header: the bytes are the start of a larger file
	 * (half of them, of a file twice as long), so reads past them must fail.
	 */
	if (gguf_parse_image(data, size / 2, (uint64_t)size * 2, "fuzz-image", &f) == 0)
		gguf_free(f);
	/* The same bytes through the file path: fd reader, architecture checks, expert map. */
	fd = memfd_create("fuzz.gguf", MFD_CLOEXEC);
	if (fd < 0)
		return 0;
	if (write(fd, data, size) == (ssize_t)size) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		if (moe_model_open(path, &m) == 0) {
			walk_model(m);
			moe_model_destroy(m);
		}
		if (moe_model_open_flags(path, MOE_OPEN_METADATA_ONLY, &m) == 0) {
			walk_model(m);
			moe_model_destroy(m);
		}
	}
	close(fd);
	return 0;
}

#ifdef MOE_FUZZ_MAIN
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	return fuzz_gguf(data, size);
}
#endif
