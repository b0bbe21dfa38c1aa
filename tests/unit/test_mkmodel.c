/* SPDX-License-Identifier: MIT */
/*
 * The GGUF writer and moe-mkmodel.  Files are checked twice: by a small
 * parser here that reads the bytes as the GGUF spec lays them out (so the
 * writer is not only checked against our own reader), and by moe_model_open.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gguf_write.h"
#include "testutil.h"
#include "util/util.h"

/* ------------------------------------------------------ a minimal parser */

struct pkv {
	char key[128];
	uint32_t type;
	uint32_t elem_type;
	uint64_t n;             /* arrays: elements */
	uint64_t u;             /* integer and bool scalars */
	double f;               /* f32/f64 scalars */
	const uint8_t *at;      /* the value's bytes (string: after the length) */
	uint64_t len;           /* string bytes */
};

struct ptensor {
	char name[MOE_GGUF_NAME_MAX];
	uint32_t n_dims, type;
	uint64_t ne[4];
	uint64_t offset;        /* relative to the data section */
};

struct pfile {
	uint8_t *p;
	size_t len, pos;
	uint32_t version;
	uint64_t n_kv, n_t;
	struct pkv *kv;
	struct ptensor *t;
	uint64_t data;
	uint32_t alignment;
};

static int rd(struct pfile *f, void *dst, size_t n)
{
	if (f->len - f->pos < n)
		return -1;
	memcpy(dst, f->p + f->pos, n);
	f->pos += n;
	return 0;
}

static uint64_t rd64(struct pfile *f, int *bad)
{
	uint64_t v = 0;

	*bad |= rd(f, &v, 8);
	return v;
}

static uint32_t rd32(struct pfile *f, int *bad)
{
	uint32_t v = 0;

	*bad |= rd(f, &v, 4);
	return v;
}

static const uint8_t *rdstr(struct pfile *f, uint64_t *len, int *bad)
{
	const uint8_t *s;

	*len = rd64(f, bad);
	if (*bad || *len > f->len - f->pos) {
		*bad = 1;
		return NULL;
	}
	s = f->p + f->pos;
	f->pos += *len;
	return s;
}

static void skip_value(struct pfile *f, uint32_t type, int *bad)
{
	uint64_t len;

	if (type == MOE_META_STRING) {
		rdstr(f, &len, bad);
	} else if (moe_gguf_meta_elem_bytes(type)) {
		len = moe_gguf_meta_elem_bytes(type);
		if (f->len - f->pos < len)
			*bad = 1;
		else
			f->pos += len;
	} else {
		*bad = 1;
	}
}

static void pfile_free(struct pfile *f)
{
	free(f->p);
	free(f->kv);
	free(f->t);
	memset(f, 0, sizeof(*f));
}

static int pfile_load(struct pfile *f, const char *path)
{
	uint32_t magic;
	int bad = 0;

	memset(f, 0, sizeof(*f));
	f->p = tu_read_file(path, &f->len);
	if (!f->p)
		return -1;
	magic = rd32(f, &bad);
	f->version = rd32(f, &bad);
	f->n_t = rd64(f, &bad);
	f->n_kv = rd64(f, &bad);
	if (bad || magic != MOE_GGUF_WRITE_MAGIC || f->n_kv > 100000 || f->n_t > 100000)
		return -1;
	f->kv = calloc(f->n_kv + 1, sizeof(*f->kv));
	f->t = calloc(f->n_t + 1, sizeof(*f->t));
	f->alignment = MOE_GGUF_DEFAULT_ALIGNMENT;
	for (uint64_t i = 0; !bad && i < f->n_kv; i++) {
		struct pkv *kv = &f->kv[i];
		uint64_t klen;
		const uint8_t *k = rdstr(f, &klen, &bad);

		if (bad || klen >= sizeof(kv->key))
			return -1;
		memcpy(kv->key, k, klen);
		kv->type = rd32(f, &bad);
		kv->at = f->p + f->pos;
		if (kv->type == MOE_META_ARRAY) {
			kv->elem_type = rd32(f, &bad);
			kv->n = rd64(f, &bad);
			kv->at = f->p + f->pos;
			for (uint64_t j = 0; !bad && j < kv->n; j++)
				skip_value(f, kv->elem_type, &bad);
		} else if (kv->type == MOE_META_STRING) {
			kv->at = rdstr(f, &kv->len, &bad);
		} else {
			float f32;
			double f64;

			skip_value(f, kv->type, &bad);
			if (bad)
				break;
			if (kv->type == MOE_META_F32) {
				memcpy(&f32, kv->at, 4);
				kv->f = f32;
			} else if (kv->type == MOE_META_F64) {
				memcpy(&f64, kv->at, 8);
				kv->f = f64;
			} else {
				memcpy(&kv->u, kv->at, moe_gguf_meta_elem_bytes(kv->type));
			}
		}
		if (!strcmp(kv->key, "general.alignment"))
			f->alignment = (uint32_t)kv->u;
	}
	for (uint64_t i = 0; !bad && i < f->n_t; i++) {
		struct ptensor *t = &f->t[i];
		uint64_t nlen;
		const uint8_t *name = rdstr(f, &nlen, &bad);

		if (bad || nlen >= sizeof(t->name))
			return -1;
		memcpy(t->name, name, nlen);
		t->n_dims = rd32(f, &bad);
		if (t->n_dims < 1 || t->n_dims > 4)
			return -1;
		for (uint32_t d = 0; d < 4; d++)
			t->ne[d] = d < t->n_dims ? rd64(f, &bad) : 1;
		t->type = rd32(f, &bad);
		t->offset = rd64(f, &bad);
	}
	if (bad || !f->alignment)
		return -1;
	f->data = (f->pos + f->alignment - 1) / f->alignment * f->alignment;
	return 0;
}

static const struct pkv *pkv(const struct pfile *f, const char *key)
{
	for (uint64_t i = 0; i < f->n_kv; i++)
		if (!strcmp(f->kv[i].key, key))
			return &f->kv[i];
	return NULL;
}

static const struct ptensor *ptensor(const struct pfile *f, const char *name)
{
	for (uint64_t i = 0; i < f->n_t; i++)
		if (!strcmp(f->t[i].name, name))
			return &f->t[i];
	return NULL;
}

static uint64_t tensor_bytes(const struct ptensor *t)
{
	int64_t rb = moe_type_row_bytes(t->type, t->ne[0]);

	ck_assert_int_gt(rb, 0);
	return (uint64_t)rb * t->ne[1] * t->ne[2] * t->ne[3];
}

/* Every tensor inside the file, aligned, in order, with zero padding between them. */
static void check_layout(const struct pfile *f)
{
	uint64_t end = f->data;

	for (uint64_t i = 0; i < f->n_t; i++) {
		const struct ptensor *t = &f->t[i];
		uint64_t at = f->data + t->offset, bytes = tensor_bytes(t);

		ck_assert_msg(t->offset % f->alignment == 0, "%s at %llu, alignment %u", t->name,
			      (unsigned long long)t->offset, f->alignment);
		uint64_t nonzero = 0;

		ck_assert_uint_ge(at, end);
		/* one assertion per tensor: Check records every assertion it evaluates */
		for (uint64_t b = end; b < at; b++)
			nonzero += f->p[b] != 0;
		ck_assert_msg(nonzero == 0, "padding before %s is not zero", t->name);
		ck_assert_uint_le(at + bytes, f->len);
		end = at + bytes;
	}
	ck_assert_uint_eq(f->len, (end + f->alignment - 1) / f->alignment * f->alignment);
}

/* ------------------------------------------------------------ the writer */

struct fill_ctx {
	uint32_t calls;
	uint64_t next_row;
	int fail_at;
};

static int fill_rows(void *ctx, uint64_t row, uint64_t n_rows, void *dst)
{
	struct fill_ctx *c = ctx;
	float *f = dst;

	if (c->fail_at >= 0 && c->calls == (uint32_t)c->fail_at)
		return moe_err(EIO, "injected failure");
	ck_assert_uint_eq(row, c->next_row);
	for (uint64_t r = 0; r < n_rows; r++)
		for (uint32_t j = 0; j < 1024; j++)
			f[r * 1024 + j] = (float)((row + r) * 1024 + j);
	c->next_row = row + n_rows;
	c->calls++;
	return 0;
}

START_TEST(writer_roundtrip)
{
	static const int32_t arr[] = { 3, -1, 4, 1, -5 };
	static const char *const strs[] = { "a", "", "ünï" };
	struct moe_gguf_writer *w;
	struct fill_ctx fc = { .fail_at = -1 };
	uint64_t ne_small[2] = { 3, 2 }, ne_big[3] = { 1024, 1536, 2 };
	uint64_t data_off, file_bytes;
	float small[6] = { 1, 2, 3, 4, 5, 6 };
	char *dir = tu_tmpdir(), path[512];
	struct pfile f;
	const struct pkv *kv;
	const struct ptensor *t;
	const float *big;

	ck_assert_ptr_nonnull(dir);
	snprintf(path, sizeof(path), "%s/w.gguf", dir);
	ck_assert_int_eq(moe_gguf_writer_create(64, &w), 0);
	ck_assert_int_eq(moe_gguf_set_str(w, "general.architecture", "test"), 0);
	ck_assert_int_eq(moe_gguf_set_u32(w, "t.u32", 0xdeadbeef), 0);
	ck_assert_int_eq(moe_gguf_set_i32(w, "t.i32", -7), 0);
	ck_assert_int_eq(moe_gguf_set_u64(w, "t.u64", 1ull << 40), 0);
	ck_assert_int_eq(moe_gguf_set_f32(w, "t.f32", 0.25f), 0);
	ck_assert_int_eq(moe_gguf_set_bool(w, "t.bool", true), 0);
	ck_assert_int_eq(moe_gguf_set_arr(w, "t.arr", MOE_META_I32, arr, 5), 0);
	ck_assert_int_eq(moe_gguf_set_arr_str(w, "t.strs", strs, 3), 0);
	ck_assert_int_eq(moe_gguf_add_tensor(w, "small", MOE_TYPE_F32, 2, ne_small, small), 0);
	/* 12 MiB through the fill path: several chunks, rows delivered in order */
	ck_assert_int_eq(moe_gguf_add_tensor_fill(w, "big", MOE_TYPE_F32, 3, ne_big, fill_rows,
						  &fc), 0);
	small[0] = 99;  /* the writer copied the data when it was added */
	ck_assert_int_eq(moe_gguf_layout(w, &data_off, &file_bytes), 0);
	ck_assert_int_eq(moe_gguf_write(w, path), 0);
	moe_gguf_writer_destroy(w);
	ck_assert_uint_gt(fc.calls, 1);
	ck_assert_uint_eq(fc.next_row, 1536 * 2);

	ck_assert_int_eq(pfile_load(&f, path), 0);
	ck_assert_uint_eq(f.version, 3);
	ck_assert_uint_eq(f.n_kv, 9);   /* 8 set + general.alignment */
	ck_assert_uint_eq(f.n_t, 2);
	ck_assert_uint_eq(f.alignment, 64);
	ck_assert_uint_eq(f.data, data_off);
	ck_assert_uint_eq(f.len, file_bytes);
	ck_assert_str_eq(f.kv[0].key, "general.architecture");
	ck_assert_uint_eq(f.kv[0].len, 4);
	ck_assert_int_eq(memcmp(f.kv[0].at, "test", 4), 0);
	ck_assert_uint_eq(pkv(&f, "t.u32")->u, 0xdeadbeef);
	ck_assert_uint_eq(pkv(&f, "t.u32")->type, MOE_META_U32);
	ck_assert_int_eq((int32_t)pkv(&f, "t.i32")->u, -7);
	ck_assert_uint_eq(pkv(&f, "t.u64")->u, 1ull << 40);
	ck_assert_double_eq(pkv(&f, "t.f32")->f, 0.25);
	ck_assert_uint_eq(pkv(&f, "t.bool")->u, 1);
	kv = pkv(&f, "t.arr");
	ck_assert_uint_eq(kv->elem_type, MOE_META_I32);
	ck_assert_uint_eq(kv->n, 5);
	ck_assert_int_eq(memcmp(kv->at, arr, sizeof(arr)), 0);
	kv = pkv(&f, "t.strs");
	ck_assert_uint_eq(kv->elem_type, MOE_META_STRING);
	ck_assert_uint_eq(kv->n, 3);
	ck_assert_uint_eq(pkv(&f, "general.alignment")->type, MOE_META_U32);
	check_layout(&f);
	t = ptensor(&f, "small");
	ck_assert_uint_eq(t->n_dims, 2);
	ck_assert_uint_eq(t->ne[0], 3);
	ck_assert_uint_eq(t->ne[1], 2);
	ck_assert_float_eq(((const float *)(f.p + f.data + t->offset))[0], 1.0f);
	ck_assert_float_eq(((const float *)(f.p + f.data + t->offset))[5], 6.0f);
	t = ptensor(&f, "big");
	ck_assert_uint_eq(t->ne[2], 2);
	big = (const float *)(f.p + f.data + t->offset);
	for (uint64_t i = 0; i < 1024ull * 1536 * 2; i += 4099)
		ck_assert_float_eq(big[i], (float)i);
	pfile_free(&f);

	/* the default alignment writes no general.alignment */
	ck_assert_int_eq(moe_gguf_writer_create(32, &w), 0);
	ck_assert_int_eq(moe_gguf_add_tensor(w, "small", MOE_TYPE_F32, 2, ne_small, small), 0);
	ck_assert_int_eq(moe_gguf_write(w, path), 0);
	moe_gguf_writer_destroy(w);
	ck_assert_int_eq(pfile_load(&f, path), 0);
	ck_assert_uint_eq(f.n_kv, 0);
	ck_assert_uint_eq(f.alignment, 32);
	check_layout(&f);
	pfile_free(&f);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(writer_refuses)
{
	struct moe_gguf_writer *w;
	uint64_t ne[4] = { 256, 2, 1, 1 }, zero[2] = { 0, 4 }, odd[2] = { 100, 2 };
	float data[512] = { 0 };
	char name[80];

	ck_assert_int_eq(moe_gguf_writer_create(48, &w), -EINVAL);
	ck_assert_ptr_null(w);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "power of two"));
	ck_assert_int_eq(moe_gguf_writer_create(0, &w), -EINVAL);
	ck_assert_int_eq(moe_gguf_writer_create(4096, &w), 0);

	ck_assert_int_eq(moe_gguf_set_u32(w, "k", 1), 0);
	ck_assert_int_eq(moe_gguf_set_str(w, "k", "again"), -EEXIST);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "'k'"));
	ck_assert_int_eq(moe_gguf_set_u32(w, "general.alignment", 64), -EINVAL);
	ck_assert_int_eq(moe_gguf_set_u32(w, "", 1), -EINVAL);
	ck_assert_int_eq(moe_gguf_set_arr(w, "a", MOE_META_STRING, data, 1), -EINVAL);
	ck_assert_int_eq(moe_gguf_set_arr(w, "a", MOE_META_ARRAY, data, 1), -EINVAL);
	ck_assert_int_eq(moe_gguf_set_arr(w, "a", 99, data, 1), -EINVAL);
	ck_assert_int_eq(moe_gguf_set_str(w, "s", NULL), -EINVAL);

	/* 63 bytes is the longest name */
	memset(name, 'x', sizeof(name));
	name[63] = 0;
	ck_assert_int_eq(moe_gguf_add_tensor(w, name, MOE_TYPE_F32, 2, ne, data), 0);
	name[63] = 'x';
	name[64] = 0;
	ck_assert_int_eq(moe_gguf_add_tensor(w, name, MOE_TYPE_F32, 2, ne, data), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "64 bytes"));
	ck_assert_int_eq(moe_gguf_add_tensor(w, "t", MOE_TYPE_F32, 2, ne, data), 0);
	ck_assert_int_eq(moe_gguf_add_tensor(w, "t", MOE_TYPE_F32, 2, ne, data), -EEXIST);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "'t'"));
	ck_assert_int_eq(moe_gguf_add_tensor(w, "", MOE_TYPE_F32, 2, ne, data), -EINVAL);
	ck_assert_int_eq(moe_gguf_add_tensor(w, "d0", MOE_TYPE_F32, 0, ne, data), -EINVAL);
	ck_assert_int_eq(moe_gguf_add_tensor(w, "d5", MOE_TYPE_F32, 5, ne, data), -EINVAL);
	ck_assert_int_eq(moe_gguf_add_tensor(w, "z", MOE_TYPE_F32, 2, zero, data), -EINVAL);
	ck_assert_int_eq(moe_gguf_add_tensor(w, "ty", 4, 2, ne, data), -EINVAL);
	ck_assert_int_eq(moe_gguf_add_tensor(w, "ty", MOE_TYPE_COUNT, 2, ne, data), -EINVAL);
	ck_assert_int_eq(moe_gguf_add_tensor(w, "q", MOE_TYPE_Q4_K, 2, odd, data), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "not a multiple"));
	ck_assert_int_eq(moe_gguf_add_tensor(w, "q", MOE_TYPE_Q4_K, 2, ne, data), 0);
	ck_assert_int_eq(moe_gguf_add_tensor(w, "nul", MOE_TYPE_F32, 2, ne, NULL), -EINVAL);
	ck_assert_int_eq(moe_gguf_add_tensor_fill(w, "nf", MOE_TYPE_F32, 2, ne, NULL, NULL),
			 -EINVAL);
	ck_assert_int_eq(moe_gguf_write(w, ""), -EINVAL);
	moe_gguf_writer_destroy(w);
	moe_gguf_writer_destroy(NULL);
}
END_TEST

/* A failing fill leaves neither the file nor a temporary behind. */
START_TEST(writer_fill_failure)
{
	struct moe_gguf_writer *w;
	struct fill_ctx fc = { .fail_at = 1 };
	uint64_t ne[2] = { 1024, 4096 };
	char *dir = tu_tmpdir(), path[512];
	char *out = NULL, cmd[600];
	struct stat st;

	snprintf(path, sizeof(path), "%s/f.gguf", dir);
	ck_assert_int_eq(moe_gguf_writer_create(32, &w), 0);
	ck_assert_int_eq(moe_gguf_add_tensor_fill(w, "big", MOE_TYPE_F32, 2, ne, fill_rows, &fc),
			 0);
	ck_assert_int_eq(moe_gguf_write(w, path), -EIO);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "tensor 'big'"));
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "injected"));
	moe_gguf_writer_destroy(w);
	ck_assert_int_ne(stat(path, &st), 0);
	snprintf(cmd, sizeof(cmd), "ls -A '%s' | wc -l", dir);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	ck_assert_int_eq(atoi(out), 0);
	free(out);
	/* a directory that does not exist: a clear error, no crash */
	snprintf(path, sizeof(path), "%s/no/such/dir/f.gguf", dir);
	ck_assert_int_eq(moe_gguf_writer_create(32, &w), 0);
	ck_assert_int_eq(moe_gguf_write(w, path), -ENOENT);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "cannot create"));
	moe_gguf_writer_destroy(w);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ------------------------------------------------------------ moe-mkmodel */

static const char *const arches[] = { "qwen3moe", "llama4", "mixtral", "gpt-oss", "gemma4",
				      "deepseek2", "glm4moe" };
/* deepseek2's groups must fit SMALL's 4 experts */
static const char *const arch_args[MOE_ARRAY_SIZE(arches)] = {
	[5] = "--expert-groups 2 --expert-groups-used 2",
};
#define SMALL "--layers 3 --embd 64 --heads 2 --kv-heads 1 --head-dim 32 --vocab 128 " \
	      "--experts 4 --expert-ff 32 -q"

static int mkmodel(const char *path, const char *args, char **out)
{
	char cmd[2048];

	snprintf(cmd, sizeof(cmd), "%s -o '%s' %s", tu_bin("moe-mkmodel"), path, args);
	return tu_run(cmd, 1, out);
}

static uint64_t meta_u(const struct pfile *f, const char *arch, const char *suffix)
{
	char key[128];
	const struct pkv *kv;

	snprintf(key, sizeof(key), "%s.%s", arch, suffix);
	kv = pkv(f, key);
	ck_assert_msg(kv != NULL, "missing key %s", key);
	return kv->u;
}

/*
 * Tensors llama.cpp loads for each architecture with SMALL's 3 layers (gemma4:
 * layers 0-1 sliding-window, layer 2 full attention without attn_v; llama4
 * with --interleave 2: layer 1 MoE, layers 0 and 2 dense), and names that
 * must and must not be there.
 */
static const struct {
	uint64_t tensors, tensors_interleaved;
	const char *has, *lacks;
} layout[] = {
	/* globals 3; per layer attn 5 + q/k norm 2 + ffn_norm + router + 3 experts */
	{ 3 + 3 * 12, 0, "blk.2.attn_k_norm.weight", "blk.0.ffn_gate_up_exps.weight" },
	/* globals 3 + rope_freqs; per MoE layer attn 5 + ffn_norm + router + 3 experts +
	 * 3 shared; per dense layer 5 + 1 + 3 */
	{ 4 + 3 * 13, 4 + 13 + 2 * 9, "blk.0.ffn_up_shexp.weight", "blk.0.attn_q_norm.weight" },
	/* per layer attn 5 + ffn_norm + router + 3 experts */
	{ 3 + 3 * 10, 0, "blk.1.ffn_down_exps.weight", "blk.0.ffn_gate_exps.bias" },
	/* per layer attn 5 + 4 biases + sinks + post-attention norm + router, its bias,
	 * 3 experts and their 3 biases */
	{ 3 + 3 * 19, 0, "blk.2.attn_sinks.weight", "blk.0.ffn_norm.weight" },
	/* token_embd, rope_freqs, output_norm (tied); attn 5 + 3 norms (4 on SWA layers with
	 * attn_v), dense MLP 3 + 5 norms, router + scale, 2 expert tensors + scale,
	 * layer_output_scale */
	{ 3 + 2 * 22 + 21, 0, "blk.1.attn_v.weight", "blk.2.attn_v.weight" },
	/* MLA attention 9 (norm, q_a, its norm, q_b, kv_a_mqa, its norm, k_b, v_b, output) +
	 * ffn_norm; leading dense layer 3; MoE layers router, selection bias, 3 experts,
	 * 3 shared */
	{ 3 + 13 + 2 * 18, 0, "blk.1.attn_k_b.weight", "blk.0.ffn_gate_inp.weight" },
	/* attn 5 + q/k norms + q/k/v biases + post_attention_norm; dense 3; MoE 8 */
	{ 3 + 14 + 2 * 19, 0, "blk.0.attn_q.bias", "blk.0.ffn_norm.weight" },
};

/* `moectl info --json` reports what the file holds, by the test's own parser. */
static void check_info_json(const char *path, const struct pfile *f, const char *arch,
			    uint32_t layers, uint32_t n_moe, uint32_t experts, uint32_t used,
			    uint32_t align, uint64_t each)
{
	char cmd[2048], want[256], *out = NULL;
	const struct { const char *key; unsigned long long v; } keys[] = {
		{ "n_layers", layers }, { "n_moe_layers", n_moe }, { "n_experts", experts },
		{ "n_experts_used", used }, { "tensor_count", f->n_t }, { "file_bytes", f->len },
		{ "alignment", align }, { "expert_bytes_each", each },
		{ "expert_bytes_total", each * experts * n_moe },
		{ "routed_bytes_per_token", each * used * n_moe },
	};

	snprintf(cmd, sizeof(cmd), "%s info --json '%s'", tu_bin("moectl"), path);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	snprintf(want, sizeof(want), "\"arch\": \"%s\"", arch);
	ck_assert_msg(strstr(out, want), "%s lacks %s", out, want);
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		snprintf(want, sizeof(want), "\"%s\": %llu,", keys[i].key, keys[i].v);
		ck_assert_msg(strstr(out, want), "%s: %s lacks %s", path, out, want);
	}
	free(out);
}

static void check_model(const char *path, const char *arch, uint32_t align, uint32_t layers,
			uint32_t experts, uint32_t used, uint32_t ff_exp)
{
	bool gemma = !strcmp(arch, "gemma4");
	const char *gguf_arch = !strcmp(arch, "mixtral") ? "llama" : arch;
	struct moe_model *m;
	struct moe_hparams hp;
	struct moe_model_summary sum;
	struct pfile f;
	uint32_t n_moe = 0;
	uint64_t each_l = 0, each = 0;

	ck_assert_int_eq(pfile_load(&f, path), 0);
	ck_assert_uint_eq(f.alignment, align);
	check_layout(&f);
	ck_assert_int_eq(memcmp(pkv(&f, "general.architecture")->at, gguf_arch,
				strlen(gguf_arch)), 0);
	ck_assert_uint_eq(meta_u(&f, gguf_arch, "block_count"), layers);
	ck_assert_uint_eq(meta_u(&f, gguf_arch, "expert_count"), experts);
	ck_assert_uint_eq(meta_u(&f, gguf_arch, "expert_used_count"), used);

	ck_assert_msg(moe_model_open(path, &m) == 0, "%s: %s", path, moe_errmsg());
	ck_assert_int_eq(moe_model_hparams(m, &hp), 0);
	ck_assert_int_eq(moe_model_summary(m, &sum), 0);
	ck_assert_str_eq(hp.arch, gguf_arch);
	ck_assert_uint_eq(hp.n_layer, layers);
	ck_assert_uint_eq(hp.n_expert, experts);
	ck_assert_uint_eq(hp.n_expert_used, used);
	ck_assert_uint_eq(hp.n_ff_exp, ff_exp);
	ck_assert_int_eq(moe_model_tensor_count(m), (int)f.n_t);
	ck_assert_uint_eq(sum.alignment, align);
	ck_assert_uint_eq(sum.file_bytes, f.len);
	for (uint32_t l = 0; l < layers; l++) {
		static const char *const mats[2][3] = {
			{ "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps" },
			{ "ffn_gate_up_exps", "ffn_down_exps", NULL },
		};
		struct moe_expert ex;
		char name[64];

		snprintf(name, sizeof(name), "blk.%u.ffn_gate_inp.weight", l);
		if (!ptensor(&f, name)) {
			ck_assert_int_eq(moe_model_expert(m, l, 0, &ex), -EINVAL);
			continue;
		}
		n_moe++;
		each_l = 0;
		for (uint32_t e = 0; e < experts; e++) {
			ck_assert_int_eq(moe_model_expert(m, l, e, &ex), 0);
			ck_assert_uint_eq(ex.n_mats, gemma ? 2 : 3);
			for (uint32_t k = 0; k < ex.n_mats; k++) {
				const struct ptensor *t;
				uint64_t rb;

				snprintf(name, sizeof(name), "blk.%u.%s.weight", l, mats[gemma][k]);
				t = ptensor(&f, name);
				ck_assert_msg(t != NULL, "missing %s", name);
				ck_assert_uint_eq(t->n_dims, 3);
				ck_assert_uint_eq(t->ne[2], experts);
				rb = (uint64_t)moe_type_row_bytes(t->type, t->ne[0]);
				ck_assert_uint_eq(ex.mats[k].rows, t->ne[1]);
				ck_assert_uint_eq(ex.mats[k].cols, t->ne[0]);
				ck_assert_uint_eq(ex.mats[k].bytes, t->ne[1] * rb);
				ck_assert_uint_eq(ex.mats[k].offset,
						  f.data + t->offset + e * t->ne[1] * rb);
				if (e == 0) {
					ck_assert_uint_eq(ex.mats[k].offset % align, 0);
					each_l += t->ne[1] * rb;
				}
			}
			ck_assert_int_eq(moe_model_expert(m, l, experts, &ex), -EINVAL);
		}
		if (each_l > each)
			each = each_l;
	}
	ck_assert_uint_eq(hp.n_moe_layer, n_moe);
	check_info_json(path, &f, gguf_arch, layers, n_moe, experts, used, align, each);
	moe_model_destroy(m);
	pfile_free(&f);
}

START_TEST(mkmodel_arches)
{
	static const uint32_t aligns[] = { 32, 4096, 65536 };
	char *dir = tu_tmpdir(), path[512], args[512], *out = NULL;
	const char *arch = arches[_i];
	/* mixtral and gpt-oss have no dense FFN; --ff is refused there */
	const char *ff = _i == 2 || _i == 3 ? "" : "--ff 96";

	struct pfile f;

	for (size_t a = 0; a < sizeof(aligns) / sizeof(aligns[0]); a++) {
		snprintf(path, sizeof(path), "%s/%s-%u.gguf", dir, arch, aligns[a]);
		snprintf(args, sizeof(args), "--arch %s --align %u %s %s " SMALL, arch, aligns[a], ff,
			 arch_args[_i] ? arch_args[_i] : "");
		ck_assert_msg(mkmodel(path, args, &out) == 0, "%s: %s", args, out);
		free(out);
		check_model(path, arch, aligns[a], 3, 4, !strcmp(arch, "llama4") ? 1 :
			    !strcmp(arch, "deepseek2") ? 3 : 2, 32);
		ck_assert_int_eq(pfile_load(&f, path), 0);
		ck_assert_uint_eq(f.n_t, layout[_i].tensors);
		ck_assert_msg(ptensor(&f, layout[_i].has), "%s lacks %s", arch, layout[_i].has);
		ck_assert_msg(!ptensor(&f, layout[_i].lacks), "%s has %s", arch, layout[_i].lacks);
		/* the default tokenizer is "none": no token arrays */
		ck_assert_int_eq(memcmp(pkv(&f, "tokenizer.ggml.model")->at, "none", 4), 0);
		ck_assert_ptr_null(pkv(&f, "tokenizer.ggml.tokens"));
		pfile_free(&f);
	}
	/* f16 and bf16 experts, f16 other tensors; llama4 with a dense layer between MoE ones */
	snprintf(path, sizeof(path), "%s/%s-f16.gguf", dir, arch);
	snprintf(args, sizeof(args), "--arch %s --type %s --type-other f16 --experts-used 3 %s %s "
		 "%s " SMALL, arch, _i % 2 ? "bf16" : "f16",
		 !strcmp(arch, "llama4") ? "--interleave 2" : "", ff,
		 arch_args[_i] ? arch_args[_i] : "");
	ck_assert_msg(mkmodel(path, args, &out) == 0, "%s: %s", args, out);
	free(out);
	check_model(path, arch, 32, 3, 4, 3, 32);
	if (layout[_i].tensors_interleaved) {
		ck_assert_int_eq(pfile_load(&f, path), 0);
		ck_assert_uint_eq(f.n_t, layout[_i].tensors_interleaved);
		ck_assert_ptr_nonnull(ptensor(&f, "blk.0.ffn_gate.weight"));
		ck_assert_ptr_nonnull(ptensor(&f, "blk.1.ffn_gate_exps.weight"));
		ck_assert_ptr_null(ptensor(&f, "blk.2.ffn_gate_inp.weight"));
		pfile_free(&f);
	}
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * Quantized files: per-tensor types as llama-quantize picks them (routers,
 * norms and 1-D tensors stay f32) and the fallback for rows that do not fill
 * a block.
 */
START_TEST(mkmodel_quantized)
{
	static const struct {
		const char *args;
		uint32_t expert_type, other_type;
	} cases[] = {
		{ "--arch qwen3moe --type q4_K --type-other q8_0", MOE_TYPE_Q4_K, MOE_TYPE_Q8_0 },
		{ "--arch gpt-oss --type mxfp4 --type-other q8_0", MOE_TYPE_MXFP4, MOE_TYPE_Q8_0 },
		{ "--arch gemma4 --head-dim 128 --type q4_0 --type-other q6_K", MOE_TYPE_Q4_0,
		  MOE_TYPE_Q6_K },
		/* 96-wide rows and 64-wide expert rows are no multiple of 256: q8_0 instead */
		{ "--arch mixtral --embd 96 --expert-ff 64 --type q4_K --type-other q6_K",
		  MOE_TYPE_Q4_K, MOE_TYPE_Q6_K },
	};
	char *dir = tu_tmpdir(), path[512], args[512], *out = NULL;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct pfile f;

		snprintf(path, sizeof(path), "%s/q%zu.gguf", dir, i);
		snprintf(args, sizeof(args), "--layers 2 --experts 4 --vocab 256 %s", cases[i].args);
		ck_assert_msg(mkmodel(path, args, &out) == 0, "%s: %s", args, out);
		if (i == 3)
			ck_assert_msg(strstr(out, "not a multiple of the q4_K block") &&
				      strstr(out, "written as q8_0"), "no fallback note: %s", out);
		free(out);
		ck_assert_int_eq(pfile_load(&f, path), 0);
		check_layout(&f);
		ck_assert_uint_eq(pkv(&f, "general.quantization_version")->u, 2);
		if (i == 0)     /* LLAMA_FTYPE_MOSTLY_Q4_K_M */
			ck_assert_uint_eq(pkv(&f, "general.file_type")->u, 15);
		if (i == 1)     /* LLAMA_FTYPE_MOSTLY_MXFP4_MOE */
			ck_assert_uint_eq(pkv(&f, "general.file_type")->u, 38);
		for (uint64_t k = 0; k < f.n_t; k++) {
			const struct ptensor *t = &f.t[k];
			bool router = strstr(t->name, "ffn_gate_inp") != NULL;
			bool expert = strstr(t->name, "_exps.weight") != NULL;
			uint32_t want = t->n_dims == 1 || router || strstr(t->name, ".bias") ?
						MOE_TYPE_F32 :
					expert ? cases[i].expert_type : cases[i].other_type;

			if (t->ne[0] % moe_type_block_elems(want))
				want = t->ne[0] % 32 ? MOE_TYPE_F16 : MOE_TYPE_Q8_0;

			ck_assert_msg(t->type == want, "%s: %s is %s, not %s", args, t->name,
				      moe_type_name(t->type), moe_type_name(want));
		}
		pfile_free(&f);
		check_model(path, strstr(args, "gpt-oss") ? "gpt-oss" : strstr(args, "gemma4") ?
			    "gemma4" : strstr(args, "mixtral") ? "mixtral" : "qwen3moe", 32, 2, 4,
			    2, strstr(args, "mixtral") ? 64 : 256);
	}
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(mkmodel_deterministic)
{
	char *dir = tu_tmpdir(), p[3][512], *out = NULL;
	size_t len[3];
	void *data[3];

	for (int i = 0; i < 3; i++) {
		snprintf(p[i], sizeof(p[i]), "%s/d%d.gguf", dir, i);
		ck_assert_int_eq(mkmodel(p[i], i == 2 ? "--arch gemma4 --layers 2 --seed 2 --vocab-bpe "
						      "--vocab 300"
						      : "--arch gemma4 --layers 2 --vocab-bpe --vocab 300",
					 &out), 0);
		/* the summary line names the file, its size and the tensor count */
		ck_assert_ptr_nonnull(strstr(out, p[i]));
		ck_assert_ptr_nonnull(strstr(out, "tensors"));
		free(out);
		data[i] = tu_read_file(p[i], &len[i]);
		ck_assert_ptr_nonnull(data[i]);
	}
	ck_assert_uint_eq(len[0], len[1]);
	ck_assert_int_eq(memcmp(data[0], data[1], len[0]), 0);
	ck_assert_uint_eq(len[0], len[2]);
	ck_assert_int_ne(memcmp(data[0], data[2], len[0]), 0);
	for (int i = 0; i < 3; i++)
		free(data[i]);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(mkmodel_bpe_vocab)
{
	char *dir = tu_tmpdir(), path[512], *out = NULL;
	const struct pkv *tokens, *merges;
	struct pfile f;
	const uint8_t *s;
	uint64_t len;
	int bad = 0;

	snprintf(path, sizeof(path), "%s/v.gguf", dir);
	ck_assert_int_eq(mkmodel(path, "--arch qwen3moe --vocab-bpe " SMALL " --vocab 400", &out),
			 0);
	free(out);
	ck_assert_int_eq(pfile_load(&f, path), 0);
	ck_assert_int_eq(memcmp(pkv(&f, "tokenizer.ggml.model")->at, "gpt2", 4), 0);
	ck_assert_int_eq(memcmp(pkv(&f, "tokenizer.ggml.pre")->at, "llama-bpe", 9), 0);
	tokens = pkv(&f, "tokenizer.ggml.tokens");
	merges = pkv(&f, "tokenizer.ggml.merges");
	ck_assert_uint_eq(tokens->n, 400);
	ck_assert_uint_ge(merges->n, 400 - 258);
	ck_assert_uint_eq(pkv(&f, "tokenizer.ggml.bos_token_id")->u, 398);
	ck_assert_uint_eq(pkv(&f, "tokenizer.ggml.eos_token_id")->u, 399);
	/* GPT-2 byte form: byte 0 is U+0100, 'A' is itself, space is U+0120 */
	f.pos = (size_t)(tokens->at - f.p);
	s = rdstr(&f, &len, &bad);
	ck_assert_uint_eq(len, 2);
	ck_assert_int_eq(memcmp(s, "\xc4\x80", 2), 0);
	for (int i = 1; i < 'A'; i++)
		rdstr(&f, &len, &bad);
	s = rdstr(&f, &len, &bad);
	ck_assert_int_eq(len == 1 && s[0] == 'A', 1);
	/* the first merge joins two tokens into one that is in the vocabulary */
	f.pos = (size_t)(merges->at - f.p);
	s = rdstr(&f, &len, &bad);
	ck_assert_int_eq(bad, 0);
	ck_assert_ptr_nonnull(memchr(s, ' ', len));
	pfile_free(&f);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* Top-1 expert of each token embedding (RMS-normalised) under the router of @layer. */
static void route_tokens(const struct pfile *f, uint32_t layer, uint32_t *choice, uint32_t *count)
{
	const struct ptensor *emb = ptensor(f, "token_embd.weight"), *r;
	char name[64];
	const float *E, *R;
	uint32_t n;

	snprintf(name, sizeof(name), "blk.%u.ffn_gate_inp.weight", layer);
	r = ptensor(f, name);
	ck_assert_ptr_nonnull(r);
	ck_assert_uint_eq(emb->type, MOE_TYPE_F32);
	ck_assert_uint_eq(r->type, MOE_TYPE_F32);
	n = (uint32_t)emb->ne[0];
	E = (const float *)(f->p + f->data + emb->offset);
	R = (const float *)(f->p + f->data + r->offset);
	for (uint32_t e = 0; e < r->ne[1]; e++)
		count[e] = 0;
	for (uint64_t t = 0; t < emb->ne[1]; t++) {
		const float *x = E + t * n;
		double ss = 0, best = -INFINITY;
		uint32_t arg = 0;

		for (uint32_t j = 0; j < n; j++)
			ss += (double)x[j] * x[j];
		for (uint32_t e = 0; e < r->ne[1]; e++) {
			double d = 0;

			for (uint32_t j = 0; j < n; j++)
				d += (double)R[e * n + j] * x[j];
			d /= sqrt(ss / n);
			if (d > best) {
				best = d;
				arg = e;
			}
		}
		choice[t] = arg;
		count[arg]++;
	}
}

static void routing_stats(const char *args, uint32_t *max_count, double *agree)
{
	char *dir = tu_tmpdir(), path[512], *out = NULL;
	uint32_t c0[1024], c1[1024], count[8], same = 0;
	struct pfile f;

	snprintf(path, sizeof(path), "%s/r.gguf", dir);
	ck_assert_int_eq(mkmodel(path, args, &out), 0);
	free(out);
	ck_assert_int_eq(pfile_load(&f, path), 0);
	route_tokens(&f, 0, c0, count);
	*max_count = 0;
	for (int e = 0; e < 8; e++)
		*max_count = count[e] > *max_count ? count[e] : *max_count;
	route_tokens(&f, 1, c1, count);
	for (int t = 0; t < 1024; t++)
		same += c0[t] == c1[t];
	*agree = same / 1024.0;
	pfile_free(&f);
	tu_rmtree(dir);
	free(dir);
}

/* --router-skew makes some experts popular; --layer-correlation relates adjacent routers. */
START_TEST(mkmodel_router_structure)
{
	const char *base = "--arch qwen3moe --layers 2 --embd 128 --vocab 1024 --experts 8 "
			   "--expert-ff 32 -q";
	char args[512];
	uint32_t max_uniform, max_skewed, dummy;
	double agree_none, agree_high, a;

	snprintf(args, sizeof(args), "%s --router-skew 0 --layer-correlation 0", base);
	routing_stats(args, &max_uniform, &agree_none);
	snprintf(args, sizeof(args), "%s --router-skew 2 --layer-correlation 0", base);
	routing_stats(args, &max_skewed, &a);
	snprintf(args, sizeof(args), "%s --router-skew 0 --layer-correlation 0.9", base);
	routing_stats(args, &dummy, &agree_high);
	/* uniform routing puts 128 of 1024 tokens on each expert */
	ck_assert_msg(max_uniform < 200, "unskewed router: busiest expert has %u of 1024",
		      max_uniform);
	ck_assert_msg(max_skewed > 300, "skewed router: busiest expert has only %u of 1024",
		      max_skewed);
	ck_assert_msg(agree_none < 0.3, "independent layers agree on %.2f", agree_none);
	ck_assert_msg(agree_high > 0.5, "correlated layers agree on only %.2f", agree_high);
}
END_TEST

/*
 * A GLM-4.5 file with a NextN block after its trunk: block_count counts it,
 * the model has the trunk's layers, and the block's tensors are neither
 * resident nor experts (the plan does not place them).
 */
START_TEST(mkmodel_nextn)
{
	char *dir = tu_tmpdir(), path[512], *out = NULL;
	struct moe_model *m;
	struct moe_hparams hp;
	struct moe_model_summary sum;
	struct moe_tensor_info ti;
	struct pfile f;
	uint64_t unused = 0, resident = 0;

	snprintf(path, sizeof(path), "%s/glm.gguf", dir);
	ck_assert_int_eq(mkmodel(path, "--arch glm4moe --nextn 1 " SMALL, &out), 0);
	free(out);
	ck_assert_int_eq(pfile_load(&f, path), 0);
	ck_assert_uint_eq(meta_u(&f, "glm4moe", "block_count"), 4);
	ck_assert_uint_eq(meta_u(&f, "glm4moe", "nextn_predict_layers"), 1);
	ck_assert_ptr_nonnull(ptensor(&f, "blk.3.nextn.eh_proj.weight"));
	ck_assert_ptr_nonnull(ptensor(&f, "blk.3.ffn_gate_exps.weight"));
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(moe_model_hparams(m, &hp), 0);
	ck_assert_int_eq(moe_model_summary(m, &sum), 0);
	ck_assert_uint_eq(hp.n_layer, 3);
	ck_assert_uint_eq(hp.n_nextn, 1);
	ck_assert_uint_eq(hp.n_moe_layer, 2);
	for (int i = 0; i < moe_model_tensor_count(m); i++) {
		ck_assert_int_eq(moe_model_tensor(m, i, &ti), 0);
		ck_assert_int_eq(ti.role == MOE_ROLE_UNUSED, ti.layer == 3);
		if (ti.role == MOE_ROLE_UNUSED)
			unused += ti.bytes;
		else if (ti.role == MOE_ROLE_OTHER)
			resident += ti.bytes;
	}
	ck_assert_uint_gt(unused, 0);
	ck_assert_uint_eq(sum.resident_bytes, resident);
	ck_assert_uint_eq(sum.resident_bytes + sum.expert_bytes_total + unused, sum.tensor_bytes);
	moe_model_destroy(m);
	pfile_free(&f);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* Bad options exit 2 and say what is wrong. */
START_TEST(mkmodel_bad_options)
{
	static const struct {
		const char *args;
		const char *says;
	} cases[] = {
		{ "", "--arch is required" },
		{ "--arch qwen3moe", "-o FILE is required" },
		{ "--arch deepseek3 -o x", "unknown" },
		{ "--arch qwen3moe -o x --experts 0", "only gemma4" },
		{ "--arch gemma4 -o x --nextn 1", "does not apply" },
		{ "--arch qwen3moe -o x --kv-lora 16", "deepseek2" },
		{ "--arch deepseek2 -o x --experts 10", "groups must divide" },
		{ "--arch deepseek2 -o x --rope-dim 64", "below --head-dim" },
		{ "--arch glm4moe -o x --leading-dense 4", "no MoE layer" },
		{ "--arch gemma4 -o x --kv-shared 4", "no layer" },
		{ "--arch qwen3moe -o x --experts 8 --experts-used 9", "exceeds" },
		{ "--arch qwen3moe -o x --align 48", "power of two" },
		{ "--arch qwen3moe -o x --type iq2_xxs", "not supported by this build" },
		{ "--arch qwen3moe -o x --type-other q8_K", "activation type" },
		{ "--arch qwen3moe -o x --type q9_9", "unknown type" },
		{ "--arch qwen3moe -o x --layers 0", "between" },
		{ "--arch qwen3moe -o x --layers 3x", "whole number" },
		{ "--arch qwen3moe -o x --interleave 2", "llama4" },
		{ "--arch mixtral -o x --ff 100", "does not apply" },
		{ "--arch mixtral -o x --shared-expert-ff 64", "no shared expert" },
		{ "--arch llama4 -o x --shared-expert-ff 64", "expert width" },
		{ "--arch llama4 -o x --layers 2 --interleave 3", "no MoE layer" },
		{ "--arch qwen3moe -o x --layer-correlation 2", "between" },
		{ "--arch qwen3moe -o x --heads 3 --kv-heads 2", "multiple" },
		{ "--arch qwen3moe -o x --vocab-bpe --vocab 100", "259" },
		{ "--arch qwen3moe -o x --vocab-bpe --vocab 100000", "or less" },
		{ "--arch qwen3moe -o x extra", "unexpected argument" },
		{ "--arch qwen3moe -o x --no-such-option", "--help" },
	};
	char *dir = tu_tmpdir(), cmd[1024], *out = NULL;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(cmd, sizeof(cmd), "cd '%s' && %s %s", dir, tu_bin("moe-mkmodel"),
			 cases[i].args);
		ck_assert_msg(tu_run(cmd, 1, &out) == 2, "`%s` did not exit 2: %s", cases[i].args,
			      out);
		ck_assert_msg(strstr(out, cases[i].says), "`%s` says '%s', not '%s'", cases[i].args,
			      out, cases[i].says);
		free(out);
	}
	/* nothing was written for any of them */
	snprintf(cmd, sizeof(cmd), "ls -A '%s' | wc -l", dir);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	ck_assert_int_eq(atoi(out), 0);
	free(out);
	/* a failure that is not a usage error exits 1 */
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe -o '%s/no/such/dir/m.gguf'",
		 tu_bin("moe-mkmodel"), dir);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "cannot create"));
	free(out);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

Suite *suite_mkmodel(void)
{
	Suite *s = suite_create("mkmodel");
	TCase *tw = tcase_create("writer");
	TCase *tm = tcase_create("mkmodel");

	tcase_add_test(tw, writer_roundtrip);
	tcase_add_test(tw, writer_refuses);
	tcase_add_test(tw, writer_fill_failure);
	suite_add_tcase(s, tw);
	tcase_set_timeout(tm, 120);
	tcase_add_loop_test(tm, mkmodel_arches, 0, sizeof(arches) / sizeof(arches[0]));
	tcase_add_test(tm, mkmodel_quantized);
	tcase_add_test(tm, mkmodel_deterministic);
	tcase_add_test(tm, mkmodel_bpe_vocab);
	tcase_add_test(tm, mkmodel_router_structure);
	tcase_add_test(tm, mkmodel_bad_options);
	tcase_add_test(tm, mkmodel_nextn);
	suite_add_tcase(s, tm);
	return s;
}
