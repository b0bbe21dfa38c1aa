/* SPDX-License-Identifier: MIT */
/* The GGUF reader and model open: valid files, and one test per malformed case. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "gguf_build.h"
#include "moe/moe.h"
#include "testutil.h"

/* A valid image: 2 keys, tensors "a" f32[8] and "b" f32[4,2]. */
static void valid_image(struct gb *b)
{
	const uint64_t ne_a[1] = { 8 }, ne_b[2] = { 4, 2 };

	memset(b, 0, sizeof(*b));
	gb_header(b, 3, 2, 2);
	gb_kv_str(b, "general.architecture", "test");
	gb_kv_u32(b, "general.alignment", 32);
	gb_tensor(b, "a", 1, ne_a, 0, 0);
	gb_tensor(b, "b", 2, ne_b, 0, 32);
	gb_pad(b, 32);
	gb_zeros(b, 64);
}

static int parse(struct gb *b)
{
	struct gguf_file *f = NULL;
	int ret = gguf_parse_mem(b->p, b->len, "t.gguf", &f);

	gguf_free(f);
	free(b->p);
	memset(b, 0, sizeof(*b));
	return ret;
}

#define ASSERT_ERR(b, err, substr)                                                    \
	do {                                                                          \
		int r_ = parse(b);                                                    \
		ck_assert_int_eq(r_, -(err));                                         \
		ck_assert_msg(strstr(moe_errmsg(), substr), "message '%s' lacks '%s'", \
			      moe_errmsg(), substr);                                  \
	} while (0)

START_TEST(valid)
{
	struct gb b;
	struct gguf_file *f;
	const struct gguf_kv *kv;

	valid_image(&b);
	ck_assert_int_eq(gguf_parse_mem(b.p, b.len, "t", &f), 0);
	ck_assert_uint_eq(f->version, 3);
	ck_assert_uint_eq(f->n_tensors, 2);
	ck_assert_uint_eq(f->n_kv, 2);
	ck_assert_uint_eq(f->data_offset % 32, 0);
	ck_assert_uint_eq(f->tensors[1].offset, f->data_offset + 32);
	ck_assert_uint_eq(f->tensors[1].bytes, 32);
	kv = gguf_find_kv(f, "general.architecture");
	ck_assert_ptr_nonnull(kv);
	ck_assert_str_eq(kv->v.str, "test");
	ck_assert_int_eq(gguf_find_tensor(f, "b"), 1);
	ck_assert_int_eq(gguf_find_tensor(f, "c"), -1);
	gguf_free(f);
	free(b.p);
}
END_TEST

/* Every prefix of a valid file is refused (its last tensor ends at EOF). */
START_TEST(truncation_everywhere)
{
	struct gb b;

	valid_image(&b);
	for (size_t n = 0; n < b.len; n++) {
		struct gguf_file *f = NULL;
		int ret = gguf_parse_mem(b.p, n, "t", &f);

		ck_assert_msg(ret == -EINVAL, "prefix %zu accepted (%d)", n, ret);
		ck_assert_ptr_null(f);
	}
	free(b.p);
}
END_TEST

START_TEST(bad_magic)
{
	struct gb b;

	valid_image(&b);
	memcpy(b.p, "GGML", 4);
	ASSERT_ERR(&b, EINVAL, "not a GGUF file");
}
END_TEST

START_TEST(version1)
{
	struct gb b;

	valid_image(&b);
	b.p[4] = 1;
	ASSERT_ERR(&b, EINVAL, "version 1 is not supported");
	valid_image(&b);
	b.p[4] = 0;
	b.p[7] = 3;
	ASSERT_ERR(&b, EINVAL, "big-endian");
}
END_TEST

START_TEST(version2)
{
	struct gb b;

	valid_image(&b);
	b.p[4] = 2;
	ck_assert_int_eq(parse(&b), 0);
}
END_TEST

START_TEST(huge_counts)
{
	struct gb b = { 0 };

	gb_header(&b, 3, 0, 1ull << 60);
	gb_zeros(&b, 64);
	ASSERT_ERR(&b, EINVAL, "metadata count");
	gb_header(&b, 3, 1ull << 40, 0);
	gb_zeros(&b, 64);
	ASSERT_ERR(&b, EINVAL, "tensor count");
	/* an array whose count times its element size overflows */
	gb_header(&b, 3, 0, 1);
	gb_str(&b, "k");
	gb_u32(&b, 9);
	gb_u32(&b, 10);
	gb_u64(&b, 1ull << 62);
	ASSERT_ERR(&b, EINVAL, "runs past the end");
	/* an array of strings that cannot fit */
	gb_header(&b, 3, 0, 1);
	gb_str(&b, "k");
	gb_u32(&b, 9);
	gb_u32(&b, 8);
	gb_u64(&b, 1000000);
	ASSERT_ERR(&b, EINVAL, "cannot fit");
}
END_TEST

START_TEST(string_past_eof)
{
	struct gb b = { 0 };

	gb_header(&b, 3, 0, 1);
	gb_u64(&b, 1ull << 50); /* key length */
	gb_zeros(&b, 32);
	ASSERT_ERR(&b, EINVAL, "string length");
	gb_header(&b, 3, 0, 1);
	gb_str(&b, "k");
	gb_u32(&b, 8);
	gb_u64(&b, 100); /* value length past EOF */
	gb_zeros(&b, 16);
	ASSERT_ERR(&b, EINVAL, "past the end of the file");
}
END_TEST

START_TEST(n_dims)
{
	struct gb b = { 0 };
	const uint64_t ne[5] = { 1, 1, 1, 1, 1 };

	gb_header(&b, 3, 1, 0);
	gb_tensor(&b, "t", 5, ne, 0, 0);
	gb_pad(&b, 32);
	gb_zeros(&b, 32);
	ASSERT_ERR(&b, EINVAL, "n_dims 5");
	gb_header(&b, 3, 1, 0);
	gb_tensor(&b, "t", 0, ne, 0, 0);
	gb_pad(&b, 32);
	gb_zeros(&b, 32);
	ASSERT_ERR(&b, EINVAL, "n_dims 0");
}
END_TEST

static void image_with_alignment(struct gb *b, uint32_t type, uint32_t value)
{
	memset(b, 0, sizeof(*b));
	gb_header(b, 3, 0, 1);
	gb_str(b, "general.alignment");
	gb_u32(b, type);
	gb_u32(b, value);
}

START_TEST(alignment)
{
	struct gb b;

	image_with_alignment(&b, 4, 0);
	ASSERT_ERR(&b, EINVAL, "not a power of two");
	image_with_alignment(&b, 4, 48);
	ASSERT_ERR(&b, EINVAL, "not a power of two");
	image_with_alignment(&b, 6, 0x42000000); /* f32 32.0 */
	ASSERT_ERR(&b, EINVAL, "expected u32");
	image_with_alignment(&b, 4, 4096);
	ck_assert_int_eq(parse(&b), 0);
}
END_TEST

START_TEST(data_past_eof)
{
	struct gb b = { 0 };
	const uint64_t ne[1] = { 8 };

	gb_header(&b, 3, 1, 0);
	gb_tensor(&b, "blk.3.ffn_up_exps.weight", 1, ne, 0, 1ull << 40);
	gb_pad(&b, 32);
	gb_zeros(&b, 32);
	ASSERT_ERR(&b, EINVAL, "'blk.3.ffn_up_exps.weight': data at 0x");
	gb_header(&b, 3, 1, 0);
	gb_tensor(&b, "t", 1, ne, 0, 0);
	gb_pad(&b, 32);
	gb_zeros(&b, 16); /* needs 32 */
	ASSERT_ERR(&b, EINVAL, "ends past the file size");
}
END_TEST

START_TEST(dims_overflow)
{
	struct gb b = { 0 };
	const uint64_t ne[4] = { 1ull << 40, 1ull << 40, 1ull << 40, 1ull << 40 };
	const uint64_t ne0[2] = { 4, 0 };

	gb_header(&b, 3, 1, 0);
	gb_tensor(&b, "t", 4, ne, 0, 0);
	gb_pad(&b, 32);
	gb_zeros(&b, 32);
	ASSERT_ERR(&b, EINVAL, "size overflows");
	gb_header(&b, 3, 1, 0);
	gb_tensor(&b, "t", 2, ne0, 0, 0);
	gb_pad(&b, 32);
	gb_zeros(&b, 32);
	ASSERT_ERR(&b, EINVAL, "dimension 1 is 0");
}
END_TEST

START_TEST(overlap)
{
	struct gb b = { 0 };
	const uint64_t ne[1] = { 16 };

	gb_header(&b, 3, 2, 0);
	gb_tensor(&b, "a", 1, ne, 0, 0);
	gb_tensor(&b, "b", 1, ne, 0, 32);
	gb_pad(&b, 32);
	gb_zeros(&b, 128);
	ASSERT_ERR(&b, EINVAL, "overlap");
}
END_TEST

START_TEST(duplicates)
{
	struct gb b = { 0 };
	const uint64_t ne[1] = { 8 };

	gb_header(&b, 3, 2, 0);
	gb_tensor(&b, "a", 1, ne, 0, 0);
	gb_tensor(&b, "a", 1, ne, 0, 32);
	gb_pad(&b, 32);
	gb_zeros(&b, 64);
	ASSERT_ERR(&b, EINVAL, "duplicate tensor name 'a'");
	gb_header(&b, 3, 0, 2);
	gb_kv_u32(&b, "x.y", 1);
	gb_kv_u32(&b, "x.y", 2);
	ASSERT_ERR(&b, EINVAL, "duplicate metadata key 'x.y'");
}
END_TEST

START_TEST(unknown_type)
{
	struct gb b = { 0 };
	const uint64_t ne[1] = { 32 };

	gb_header(&b, 3, 1, 0);
	gb_tensor(&b, "w", 1, ne, 4, 0); /* retired id */
	gb_pad(&b, 32);
	gb_zeros(&b, 256);
	ASSERT_ERR(&b, EINVAL, "tensor 'w': unknown type id 4");
	gb_header(&b, 3, 1, 0);
	gb_tensor(&b, "w", 1, ne, 999, 0);
	gb_pad(&b, 32);
	gb_zeros(&b, 256);
	ASSERT_ERR(&b, EINVAL, "unknown type id 999");
	gb_header(&b, 3, 0, 1);
	gb_str(&b, "k");
	gb_u32(&b, 13); /* no such value type */
	gb_u32(&b, 0);
	ASSERT_ERR(&b, EINVAL, "unknown value type 13");
}
END_TEST

START_TEST(row_not_block_multiple)
{
	struct gb b = { 0 };
	const uint64_t ne[1] = { 30 };

	gb_header(&b, 3, 1, 0);
	gb_tensor(&b, "q", 1, ne, 2, 0); /* q4_0 blocks of 32 */
	gb_pad(&b, 32);
	gb_zeros(&b, 64);
	ASSERT_ERR(&b, EINVAL, "not a multiple of the q4_0 block size 32");
}
END_TEST

START_TEST(misaligned_offset)
{
	struct gb b = { 0 };
	const uint64_t ne[1] = { 4 };

	gb_header(&b, 3, 1, 0);
	gb_tensor(&b, "t", 1, ne, 0, 4);
	gb_pad(&b, 32);
	gb_zeros(&b, 64);
	ASSERT_ERR(&b, EINVAL, "not a multiple of the alignment 32");
}
END_TEST

START_TEST(array_of_arrays)
{
	struct gb b = { 0 };

	gb_header(&b, 3, 0, 1);
	gb_str(&b, "k");
	gb_u32(&b, 9);
	gb_u32(&b, 9);
	gb_u64(&b, 1);
	gb_zeros(&b, 32);
	ASSERT_ERR(&b, EINVAL, "arrays of arrays");
}
END_TEST

START_TEST(long_name)
{
	struct gb b = { 0 };
	const uint64_t ne[1] = { 4 };
	char name[80];

	memset(name, 'x', 64);
	name[64] = 0;
	gb_header(&b, 3, 1, 0);
	gb_tensor(&b, name, 1, ne, 0, 0);
	gb_pad(&b, 32);
	gb_zeros(&b, 32);
	ASSERT_ERR(&b, EINVAL, "longer than 63");
}
END_TEST

START_TEST(arrays_typed)
{
	struct gb b = { 0 };
	struct gguf_file *f;
	const struct gguf_kv *kv;
	int64_t i;
	double d;
	float fv[3] = { 1.5f, -2.0f, 3.25f };

	gb_header(&b, 3, 0, 2);
	gb_str(&b, "ints");
	gb_u32(&b, 9);
	gb_u32(&b, 5); /* i32 */
	gb_u64(&b, 3);
	gb_u32(&b, (uint32_t)-7);
	gb_u32(&b, 0);
	gb_u32(&b, 9);
	gb_str(&b, "floats");
	gb_u32(&b, 9);
	gb_u32(&b, 6);
	gb_u64(&b, 3);
	gb_raw(&b, fv, sizeof(fv));
	ck_assert_int_eq(gguf_parse_mem(b.p, b.len, "t", &f), 0);
	kv = gguf_find_kv(f, "ints");
	ck_assert(gguf_arr_i64(kv, 0, &i));
	ck_assert_int_eq(i, -7);
	ck_assert(!gguf_arr_i64(kv, 3, &i));
	kv = gguf_find_kv(f, "floats");
	ck_assert(gguf_arr_f64(kv, 2, &d));
	ck_assert(d == 3.25);
	ck_assert(!gguf_arr_i64(kv, 0, &i));
	gguf_free(f);
	free(b.p);
}
END_TEST

/* ---------------------------------------------------------------- model level */

static char *write_tmp(struct gb *b, char **dir)
{
	char *path;

	*dir = tu_tmpdir();
	ck_assert_ptr_nonnull(*dir);
	ck_assert_int_ge(asprintf(&path, "%s/m.gguf", *dir), 0);
	ck_assert_int_eq(tu_write_file(path, b->p, b->len), 0);
	free(b->p);
	memset(b, 0, sizeof(*b));
	return path;
}

START_TEST(model_unsupported_arch)
{
	struct gb b = { 0 };
	struct moe_model *m = NULL;
	char *dir, *path;

	gb_header(&b, 3, 0, 1);
	gb_kv_str(&b, "general.architecture", "bert");
	path = write_tmp(&b, &dir);
	ck_assert_int_eq(moe_model_open(path, &m), -EOPNOTSUPP);
	ck_assert_ptr_null(m);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "architecture 'bert' is not supported"));
	/* metadata-only open accepts it (vocab-only files) */
	ck_assert_int_eq(moe_model_open_flags(path, MOE_OPEN_METADATA_ONLY, &m), 0);
	ck_assert_int_eq(moe_model_tensor_count(m), 0);
	moe_model_destroy(m);
	ck_assert_int_eq(moe_model_open_flags(path, 0x80, &m), -EINVAL);
	free(path);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(model_missing_tensor)
{
	struct gb b = { 0 };
	struct moe_model *m = NULL;
	const uint64_t ne[2] = { 8, 16 };
	char *dir, *path;

	gb_header(&b, 3, 1, 7);
	gb_kv_str(&b, "general.architecture", "qwen3moe");
	gb_kv_u32(&b, "qwen3moe.block_count", 1);
	gb_kv_u32(&b, "qwen3moe.embedding_length", 8);
	gb_kv_u32(&b, "qwen3moe.attention.head_count", 2);
	gb_kv_u32(&b, "qwen3moe.context_length", 64);
	gb_kv_u32(&b, "qwen3moe.expert_count", 4);
	gb_kv_u32(&b, "qwen3moe.expert_used_count", 2);
	gb_tensor(&b, "token_embd.weight", 2, ne, 0, 0);
	gb_pad(&b, 32);
	gb_zeros(&b, 8 * 16 * 4);
	path = write_tmp(&b, &dir);
	ck_assert_int_eq(moe_model_open(path, &m), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "missing required tensor 'output_norm.weight'"));
	free(path);
	tu_rmtree(dir);
	free(dir);

	memset(&b, 0, sizeof(b));
	gb_header(&b, 3, 0, 2);
	gb_kv_str(&b, "general.architecture", "qwen3moe");
	gb_kv_u32(&b, "qwen3moe.block_count", 1);
	path = write_tmp(&b, &dir);
	ck_assert_int_eq(moe_model_open(path, &m), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "missing required metadata key"));
	free(path);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(model_missing_file)
{
	struct moe_model *m = NULL;

	ck_assert_int_eq(moe_model_open("/nonexistent/x.gguf", &m), -ENOENT);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "/nonexistent/x.gguf: cannot open"));
	ck_assert_int_eq(moe_model_open("/", &m), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "/ is a directory, not a model file"));
	ck_assert_int_eq(moe_model_open("/dev/null", &m), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "is a character device"));
}
END_TEST

/* A FIFO is refused at once: a plain open() would wait for a writer for ever. */
START_TEST(model_fifo_refused)
{
	struct moe_model *m = NULL;
	char *dir = tu_tmpdir(), path[512];

	ck_assert_ptr_nonnull(dir);
	snprintf(path, sizeof(path), "%s/model.gguf", dir);
	ck_assert_int_eq(mkfifo(path, 0600), 0);
	alarm(20);
	ck_assert_int_eq(moe_model_open(path, &m), -EINVAL);
	ck_assert_int_eq(moe_model_open_flags(path, MOE_OPEN_METADATA_ONLY, &m), -EINVAL);
	alarm(0);
	ck_assert_msg(strstr(moe_errmsg(), "is a FIFO, not a model file"), "%s", moe_errmsg());
	ck_assert_ptr_null(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* The llama.cpp-written reference files: hparams and the expert map. */
START_TEST(model_reference_files)
{
	static const struct { const char *file, *arch; uint32_t used, shared, ff_exp; } cases[] = {
		{ "reference/llamacpp-logits/qwen3moe-f32.gguf", "qwen3moe", 2, 0, 32 },
		{ "reference/llamacpp-logits/llama4-f32.gguf", "llama4", 1, 1, 32 },
		{ "reference/llamacpp-logits/gptoss-f32.gguf", "gpt-oss", 2, 0, 32 },
	};

	for (unsigned i = 0; i < 3; i++) {
		const char *path = tu_shared(cases[i].file);
		struct moe_model *m;
		struct moe_hparams hp;
		struct moe_expert ex;
		struct moe_tensor_info ti;
		struct moe_layer_info li;
		struct moe_model_summary s;

		ck_assert_ptr_nonnull(path);
		ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
		moe_model_hparams(m, &hp);
		ck_assert_str_eq(hp.arch, cases[i].arch);
		ck_assert_uint_eq(hp.n_layer, 4);
		ck_assert_uint_eq(hp.n_moe_layer, 4);
		ck_assert_uint_eq(hp.n_embd, 256);
		ck_assert_uint_eq(hp.n_head, 4);
		ck_assert_uint_eq(hp.n_head_kv, 2);
		ck_assert_uint_eq(hp.head_dim_k, 64);
		ck_assert_uint_eq(hp.n_expert, 8);
		ck_assert_uint_eq(hp.n_expert_used, cases[i].used);
		ck_assert_uint_eq(hp.n_expert_shared, cases[i].shared);
		ck_assert_uint_eq(hp.n_ff_exp, cases[i].ff_exp);
		ck_assert_uint_eq(hp.n_vocab, 512);
		ck_assert_int_ge(moe_model_find_tensor(m, "blk.2.ffn_down_exps.weight", &ti), 0);
		ck_assert_uint_eq(ti.role, MOE_ROLE_EXPERT_DOWN);
		ck_assert_int_eq(ti.layer, 2);
		ck_assert_int_eq(moe_model_expert(m, 2, 5, &ex), 0);
		ck_assert_uint_eq(ex.n_mats, 3);
		ck_assert_uint_eq(ex.mats[2].offset, ti.offset + 5ull * 256 * 32 * 4);
		ck_assert_uint_eq(ex.mats[2].bytes, 256 * 32 * 4);
		ck_assert_uint_eq(ex.mats[2].rows, 256);
		ck_assert_uint_eq(ex.mats[2].cols, 32);
		ck_assert_uint_eq(ex.bytes, 3ull * 256 * 32 * 4);
		ck_assert_int_eq(moe_model_expert(m, 2, 8, &ex), -EINVAL);
		ck_assert_int_eq(moe_model_expert(m, 4, 0, &ex), -EINVAL);
		ck_assert_int_eq(moe_model_layer(m, 3, &li), 0);
		ck_assert(li.is_moe);
		if (i == 1)
			ck_assert(!li.rope); /* llama4 layer 3 is NoPE */
		if (i == 2) {
			ck_assert(li.sliding == false);
			moe_model_layer(m, 2, &li);
			ck_assert(li.sliding);
		}
		moe_model_summary(m, &s);
		ck_assert_uint_eq(s.expert_bytes_total, 4ull * 8 * ex.bytes);
		ck_assert_uint_eq(s.resident_bytes + s.expert_bytes_total, s.tensor_bytes);
		ck_assert_uint_eq(s.routed_bytes_per_token, 4ull * cases[i].used * ex.bytes);
		moe_model_destroy(m);
	}
}
END_TEST

START_TEST(moectl_info_cli)
{
	const char *path = tu_shared("reference/llamacpp-logits/qwen3moe-f32.gguf");
	char cmd[4096], *out;

	snprintf(cmd, sizeof(cmd), "%s info --json %s", tu_bin("moectl"), path);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	ck_assert_ptr_nonnull(strstr(out, "\"arch\": \"qwen3moe\""));
	ck_assert_ptr_nonnull(strstr(out, "\"n_experts\": 8"));
	ck_assert_ptr_nonnull(strstr(out, "\"expert_bytes_each\": 98304"));
	ck_assert_ptr_nonnull(strstr(out, "\"routed_bytes_per_token\": 786432"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s info", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
	snprintf(cmd, sizeof(cmd), "%s info --bogus x", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
	snprintf(cmd, sizeof(cmd), "%s info /nonexistent.gguf", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "cannot open"));
	ck_assert_ptr_null(strchr(out, '\n') == out + strlen(out) - 1 ? NULL : strchr(out, '\n'));
	free(out);
}
END_TEST

Suite *suite_gguf(void)
{
	Suite *s = suite_create("gguf");
	TCase *tc = tcase_create("reader");
	TCase *tm = tcase_create("model");

	tcase_add_test(tc, valid);
	tcase_add_test(tc, truncation_everywhere);
	tcase_add_test(tc, bad_magic);
	tcase_add_test(tc, version1);
	tcase_add_test(tc, version2);
	tcase_add_test(tc, huge_counts);
	tcase_add_test(tc, string_past_eof);
	tcase_add_test(tc, n_dims);
	tcase_add_test(tc, alignment);
	tcase_add_test(tc, data_past_eof);
	tcase_add_test(tc, dims_overflow);
	tcase_add_test(tc, overlap);
	tcase_add_test(tc, duplicates);
	tcase_add_test(tc, unknown_type);
	tcase_add_test(tc, row_not_block_multiple);
	tcase_add_test(tc, misaligned_offset);
	tcase_add_test(tc, array_of_arrays);
	tcase_add_test(tc, long_name);
	tcase_add_test(tc, arrays_typed);
	suite_add_tcase(s, tc);

	tcase_add_test(tm, model_unsupported_arch);
	tcase_add_test(tm, model_missing_tensor);
	tcase_add_test(tm, model_missing_file);
	tcase_add_test(tm, model_fifo_refused);
	if (tu_shared("reference/llamacpp-logits/qwen3moe-f32.gguf")) {
		tcase_add_test(tm, model_reference_files);
		tcase_add_test(tm, moectl_info_cli);
	} else {
		tu_skip("gguf/model_reference_files", "../shared/reference/llamacpp-logits absent");
		tu_skip("gguf/moectl_info_cli", "../shared/reference/llamacpp-logits absent");
	}
	suite_add_tcase(s, tm);
	return s;
}
