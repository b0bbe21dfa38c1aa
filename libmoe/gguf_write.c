/* SPDX-License-Identifier: MIT */
/*
 * GGUF v3 writer.  Metadata is serialised as it is set (so the header is
 * one buffer by the time the file is written); tensors are either copied
 * when added or produced by a fill callback while the file is written, in
 * chunks, so that models larger than memory can be written.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_write.h"
#include "quant/quant.h"
#include "util/util.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF writer stores host-order values and GGUF is little-endian"
#endif

/* Fill callbacks produce about this much per call. */
#define FILL_CHUNK_BYTES (4u << 20)
/* The output buffer in front of write(2). */
#define OUT_BUF_BYTES (1u << 20)

struct wtensor {
	char name[MOE_GGUF_NAME_MAX];
	uint32_t type;
	uint32_t n_dims;
	uint64_t ne[MOE_GGUF_MAX_DIMS];
	uint64_t rows;
	uint64_t row_bytes;
	uint64_t bytes;
	void *data;             /* owned copy, or NULL when @fill produces the data */
	moe_gguf_fill_fn fill;
	void *ctx;
};

struct moe_gguf_writer {
	uint32_t alignment;
	/* serialised key/value pairs */
	uint8_t *kv;
	size_t kv_len, kv_cap;
	uint64_t n_kv;
	char **keys;
	size_t keys_cap;
	struct wtensor *tensors;
	uint64_t n_tensors;
	size_t tensors_cap;
};

uint32_t moe_gguf_meta_elem_bytes(uint32_t type)
{
	static const uint8_t bytes[] = {
		[MOE_META_U8] = 1,  [MOE_META_I8] = 1,  [MOE_META_U16] = 2,
		[MOE_META_I16] = 2, [MOE_META_U32] = 4, [MOE_META_I32] = 4,
		[MOE_META_F32] = 4, [MOE_META_BOOL] = 1, [MOE_META_U64] = 8,
		[MOE_META_I64] = 8, [MOE_META_F64] = 8,
	};

	return type < MOE_ARRAY_SIZE(bytes) ? bytes[type] : 0;
}

int moe_gguf_writer_create(uint32_t alignment, struct moe_gguf_writer **out)
{
	struct moe_gguf_writer *w;

	if (!out)
		return moe_err(EINVAL, "gguf writer: no place to store the writer");
	*out = NULL;
	if (!alignment || (alignment & (alignment - 1)) || alignment > MOE_GGUF_ALIGNMENT_MAX)
		return moe_err(EINVAL,
			       "gguf writer: alignment %u is not a power of two between 1 and %u",
			       alignment, MOE_GGUF_ALIGNMENT_MAX);
	w = calloc(1, sizeof(*w));
	if (!w)
		return moe_err(ENOMEM, "gguf writer: out of memory");
	w->alignment = alignment;
	*out = w;
	return 0;
}

void moe_gguf_writer_destroy(struct moe_gguf_writer *w)
{
	if (!w)
		return;
	for (uint64_t i = 0; i < w->n_kv; i++)
		free(w->keys[i]);
	for (uint64_t i = 0; i < w->n_tensors; i++)
		free(w->tensors[i].data);
	free(w->keys);
	free(w->tensors);
	free(w->kv);
	free(w);
}

static int grow(void **buf, size_t *cap, size_t need, size_t elem)
{
	size_t ncap = *cap ? *cap : 16;
	void *p;

	if (need <= *cap)
		return 0;
	while (ncap < need) {
		if (ncap > SIZE_MAX / 2 / elem)
			return moe_err(ENOMEM, "gguf writer: out of memory");
		ncap *= 2;
	}
	p = realloc(*buf, ncap * elem);
	if (!p)
		return moe_err(ENOMEM, "gguf writer: out of memory");
	*buf = p;
	*cap = ncap;
	return 0;
}

static int kv_put(struct moe_gguf_writer *w, const void *src, size_t n)
{
	int ret = grow((void **)&w->kv, &w->kv_cap, w->kv_len + n, 1);

	if (ret)
		return ret;
	memcpy(w->kv + w->kv_len, src, n);
	w->kv_len += n;
	return 0;
}

static int kv_u32(struct moe_gguf_writer *w, uint32_t v)
{
	return kv_put(w, &v, sizeof(v));
}

static int kv_u64(struct moe_gguf_writer *w, uint64_t v)
{
	return kv_put(w, &v, sizeof(v));
}

static int kv_string(struct moe_gguf_writer *w, const char *s, size_t len)
{
	int ret = kv_u64(w, len);

	return ret ? ret : kv_put(w, s, len);
}

/*
 * Check the key and append "key, type"; on any later failure the caller
 * rolls kv_len back to *mark so a half-written pair never reaches the file.
 */
static int kv_begin(struct moe_gguf_writer *w, const char *key, uint32_t type, size_t *mark)
{
	size_t len;
	int ret;

	if (!w)
		return moe_err(EINVAL, "gguf writer: NULL writer");
	if (!key || !*key)
		return moe_err(EINVAL, "gguf writer: empty metadata key");
	len = strlen(key);
	if (len > MOE_GGUF_KEY_MAX)
		return moe_err(EINVAL, "gguf writer: metadata key of %zu bytes (at most %u)", len,
			       MOE_GGUF_KEY_MAX);
	if (!strcmp(key, "general.alignment"))
		return moe_err(EINVAL,
			       "gguf writer: general.alignment comes from the writer's alignment; "
			       "pass it to moe_gguf_writer_create instead");
	for (uint64_t i = 0; i < w->n_kv; i++)
		if (!strcmp(w->keys[i], key))
			return moe_err(EEXIST, "gguf writer: metadata key '%s' is set twice", key);
	*mark = w->kv_len;
	ret = kv_string(w, key, len);
	if (!ret)
		ret = kv_u32(w, type);
	if (ret)
		w->kv_len = *mark;
	return ret;
}

static int kv_end(struct moe_gguf_writer *w, const char *key, size_t mark, int ret)
{
	char *k;

	if (!ret)
		ret = grow((void **)&w->keys, &w->keys_cap, w->n_kv + 1, sizeof(*w->keys));
	if (!ret) {
		k = strdup(key);
		if (!k)
			ret = moe_err(ENOMEM, "gguf writer: out of memory");
		else
			w->keys[w->n_kv++] = k;
	}
	if (ret)
		w->kv_len = mark;
	return ret;
}

static int set_scalar(struct moe_gguf_writer *w, const char *key, uint32_t type, const void *v)
{
	size_t mark;
	int ret = kv_begin(w, key, type, &mark);

	if (ret)
		return ret;
	return kv_end(w, key, mark, kv_put(w, v, moe_gguf_meta_elem_bytes(type)));
}

int moe_gguf_set_u32(struct moe_gguf_writer *w, const char *key, uint32_t val)
{
	return set_scalar(w, key, MOE_META_U32, &val);
}

int moe_gguf_set_i32(struct moe_gguf_writer *w, const char *key, int32_t val)
{
	return set_scalar(w, key, MOE_META_I32, &val);
}

int moe_gguf_set_u64(struct moe_gguf_writer *w, const char *key, uint64_t val)
{
	return set_scalar(w, key, MOE_META_U64, &val);
}

int moe_gguf_set_f32(struct moe_gguf_writer *w, const char *key, float val)
{
	return set_scalar(w, key, MOE_META_F32, &val);
}

int moe_gguf_set_bool(struct moe_gguf_writer *w, const char *key, bool val)
{
	uint8_t b = val;

	return set_scalar(w, key, MOE_META_BOOL, &b);
}

int moe_gguf_set_str(struct moe_gguf_writer *w, const char *key, const char *val)
{
	size_t mark;
	int ret;

	if (!val)
		return moe_err(EINVAL, "gguf writer: key '%s': NULL string", key ? key : "");
	ret = kv_begin(w, key, MOE_META_STRING, &mark);
	if (ret)
		return ret;
	return kv_end(w, key, mark, kv_string(w, val, strlen(val)));
}

int moe_gguf_set_arr(struct moe_gguf_writer *w, const char *key, uint32_t elem_type,
		     const void *data, uint64_t n)
{
	uint32_t eb = moe_gguf_meta_elem_bytes(elem_type);
	uint64_t bytes;
	size_t mark;
	int ret;

	if (!eb)
		return moe_err(EINVAL,
			       "gguf writer: key '%s': array element type %u is not a fixed-size "
			       "scalar (use moe_gguf_set_arr_str for strings)",
			       key ? key : "", elem_type);
	if (!moe_mul_u64(n, eb, &bytes) || bytes > SIZE_MAX / 2)
		return moe_err(EINVAL, "gguf writer: key '%s': array of %llu elements is too large",
			       key ? key : "", (unsigned long long)n);
	if (n && !data)
		return moe_err(EINVAL, "gguf writer: key '%s': NULL array data", key ? key : "");
	ret = kv_begin(w, key, MOE_META_ARRAY, &mark);
	if (ret)
		return ret;
	ret = kv_u32(w, elem_type);
	if (!ret)
		ret = kv_u64(w, n);
	if (!ret && n)
		ret = kv_put(w, data, bytes);
	return kv_end(w, key, mark, ret);
}

int moe_gguf_set_arr_str(struct moe_gguf_writer *w, const char *key, const char *const *strs,
			 uint64_t n)
{
	size_t mark;
	int ret;

	if (n && !strs)
		return moe_err(EINVAL, "gguf writer: key '%s': NULL string array", key ? key : "");
	for (uint64_t i = 0; i < n; i++)
		if (!strs[i])
			return moe_err(EINVAL, "gguf writer: key '%s': string %llu is NULL",
				       key ? key : "", (unsigned long long)i);
	ret = kv_begin(w, key, MOE_META_ARRAY, &mark);
	if (ret)
		return ret;
	ret = kv_u32(w, MOE_META_STRING);
	if (!ret)
		ret = kv_u64(w, n);
	for (uint64_t i = 0; !ret && i < n; i++)
		ret = kv_string(w, strs[i], strlen(strs[i]));
	return kv_end(w, key, mark, ret);
}

static int check_tensor(struct moe_gguf_writer *w, const char *name, uint32_t type,
			uint32_t n_dims, const uint64_t *ne, struct wtensor *t)
{
	const struct moe_type_traits *tr;
	int64_t row_bytes;
	size_t len;

	if (!w)
		return moe_err(EINVAL, "gguf writer: NULL writer");
	if (!name || !*name)
		return moe_err(EINVAL, "gguf writer: empty tensor name");
	len = strlen(name);
	if (len >= MOE_GGUF_NAME_MAX)
		return moe_err(EINVAL, "gguf writer: tensor name '%.20s...' has %zu bytes; GGUF "
			       "readers need names shorter than %u", name, len, MOE_GGUF_NAME_MAX);
	for (uint64_t i = 0; i < w->n_tensors; i++)
		if (!strcmp(w->tensors[i].name, name))
			return moe_err(EEXIST, "gguf writer: tensor '%s' is added twice", name);
	tr = moe_type_traits(type);
	if (!tr)
		return moe_err(EINVAL, "gguf writer: tensor '%s': unknown type id %u", name, type);
	if (n_dims < 1 || n_dims > MOE_GGUF_MAX_DIMS || !ne)
		return moe_err(EINVAL, "gguf writer: tensor '%s': %u dimensions (1 to %u)", name,
			       n_dims, MOE_GGUF_MAX_DIMS);
	memset(t, 0, sizeof(*t));
	memcpy(t->name, name, len + 1);
	t->type = type;
	t->n_dims = n_dims;
	t->rows = 1;
	for (uint32_t d = 0; d < MOE_GGUF_MAX_DIMS; d++) {
		uint64_t n = d < n_dims ? ne[d] : 1;

		/* ggml keeps extents in int64_t; every product must fit there too. */
		if (!n || n > INT64_MAX)
			return moe_err(EINVAL, "gguf writer: tensor '%s': dimension %u is %llu", name,
				       d, (unsigned long long)n);
		t->ne[d] = n;
		if (d && (!moe_mul_u64(t->rows, n, &t->rows) || t->rows > INT64_MAX))
			return moe_err(EINVAL, "gguf writer: tensor '%s': too many rows", name);
	}
	row_bytes = moe_type_row_bytes(type, t->ne[0]);
	if (row_bytes < 0)
		return moe_err(EINVAL,
			       "gguf writer: tensor '%s': row length %llu is not a multiple of "
			       "the %s block of %u; pick a type whose block divides it",
			       name, (unsigned long long)t->ne[0], tr->name, tr->block);
	t->row_bytes = (uint64_t)row_bytes;
	if (!moe_mul_u64(t->rows, t->row_bytes, &t->bytes) || t->bytes > INT64_MAX)
		return moe_err(EINVAL, "gguf writer: tensor '%s' is too large", name);
	return 0;
}

static int push_tensor(struct moe_gguf_writer *w, const struct wtensor *t)
{
	int ret = grow((void **)&w->tensors, &w->tensors_cap, w->n_tensors + 1,
		       sizeof(*w->tensors));

	if (ret)
		return ret;
	w->tensors[w->n_tensors++] = *t;
	return 0;
}

int moe_gguf_add_tensor(struct moe_gguf_writer *w, const char *name, uint32_t type,
			uint32_t n_dims, const uint64_t *ne, const void *data)
{
	struct wtensor t;
	int ret = check_tensor(w, name, type, n_dims, ne, &t);

	if (ret)
		return ret;
	if (!data)
		return moe_err(EINVAL, "gguf writer: tensor '%s': NULL data", name);
	if (t.bytes > SIZE_MAX)
		return moe_err(ENOMEM, "gguf writer: tensor '%s' does not fit in memory", name);
	t.data = malloc(t.bytes);
	if (!t.data)
		return moe_err(ENOMEM, "gguf writer: tensor '%s': out of memory for %llu bytes",
			       name, (unsigned long long)t.bytes);
	memcpy(t.data, data, t.bytes);
	ret = push_tensor(w, &t);
	if (ret)
		free(t.data);
	return ret;
}

int moe_gguf_add_tensor_fill(struct moe_gguf_writer *w, const char *name, uint32_t type,
			     uint32_t n_dims, const uint64_t *ne, moe_gguf_fill_fn fill, void *ctx)
{
	struct wtensor t;
	int ret = check_tensor(w, name, type, n_dims, ne, &t);

	if (ret)
		return ret;
	if (!fill)
		return moe_err(EINVAL, "gguf writer: tensor '%s': NULL fill callback", name);
	t.fill = fill;
	t.ctx = ctx;
	return push_tensor(w, &t);
}

static bool alignment_kv(const struct moe_gguf_writer *w)
{
	return w->alignment != MOE_GGUF_DEFAULT_ALIGNMENT;
}

/* Bytes of the general.alignment pair when the writer adds it. */
static uint64_t alignment_kv_bytes(const struct moe_gguf_writer *w)
{
	return alignment_kv(w) ? 8 + strlen("general.alignment") + 4 + 4 : 0;
}

static uint64_t header_bytes(const struct moe_gguf_writer *w)
{
	uint64_t n = 4 + 4 + 8 + 8 + w->kv_len + alignment_kv_bytes(w);

	for (uint64_t i = 0; i < w->n_tensors; i++)
		n += 8 + strlen(w->tensors[i].name) + 4 + 8ull * w->tensors[i].n_dims + 4 + 8;
	return n;
}

int moe_gguf_layout(const struct moe_gguf_writer *w, uint64_t *data_offset, uint64_t *file_bytes)
{
	uint64_t start, pos = 0;

	if (!w)
		return moe_err(EINVAL, "gguf writer: NULL writer");
	start = MOE_ALIGN_UP(header_bytes(w), w->alignment);
	for (uint64_t i = 0; i < w->n_tensors; i++) {
		if (!moe_add_u64(pos, w->tensors[i].bytes, &pos) ||
		    pos > UINT64_MAX - w->alignment)
			return moe_err(EFBIG, "gguf writer: the data section overflows 64 bits");
		pos = MOE_ALIGN_UP(pos, w->alignment);
	}
	if (data_offset)
		*data_offset = start;
	if (file_bytes)
		*file_bytes = start + pos;
	return 0;
}

/* Buffered output to an output file; the first error sticks. */
struct out {
	struct moe_outfile *f;
	uint8_t *buf;
	size_t len;
	uint64_t pos;
	int err;
};

static int out_flush(struct out *o)
{
	if (!o->err && o->len)
		o->err = moe_outfile_write(o->f, o->buf, o->len);
	o->len = 0;
	return o->err;
}

static int out_put(struct out *o, const void *src, size_t n)
{
	const uint8_t *s = src;

	while (!o->err && n) {
		size_t k = MOE_MIN(n, OUT_BUF_BYTES - o->len);

		if (src)
			memcpy(o->buf + o->len, s, k);
		else
			memset(o->buf + o->len, 0, k);
		o->len += k;
		o->pos += k;
		if (src)
			s += k;
		n -= k;
		if (o->len == OUT_BUF_BYTES)
			out_flush(o);
	}
	return o->err;
}

static int out_u32(struct out *o, uint32_t v)
{
	return out_put(o, &v, sizeof(v));
}

static int out_u64(struct out *o, uint64_t v)
{
	return out_put(o, &v, sizeof(v));
}

static int out_pad(struct out *o, uint32_t alignment)
{
	return out_put(o, NULL, MOE_ALIGN_UP(o->pos, alignment) - o->pos);
}

static int write_header(struct moe_gguf_writer *w, struct out *o)
{
	uint64_t off = 0;

	out_u32(o, MOE_GGUF_WRITE_MAGIC);
	out_u32(o, MOE_GGUF_WRITE_VERSION);
	out_u64(o, w->n_tensors);
	out_u64(o, w->n_kv + alignment_kv(w));
	out_put(o, w->kv, w->kv_len);
	if (alignment_kv(w)) {
		out_u64(o, strlen("general.alignment"));
		out_put(o, "general.alignment", strlen("general.alignment"));
		out_u32(o, MOE_META_U32);
		out_u32(o, w->alignment);
	}
	for (uint64_t i = 0; i < w->n_tensors; i++) {
		const struct wtensor *t = &w->tensors[i];

		out_u64(o, strlen(t->name));
		out_put(o, t->name, strlen(t->name));
		out_u32(o, t->n_dims);
		for (uint32_t d = 0; d < t->n_dims; d++)
			out_u64(o, t->ne[d]);
		out_u32(o, t->type);
		out_u64(o, off);
		off = MOE_ALIGN_UP(off + t->bytes, w->alignment);
	}
	return out_pad(o, w->alignment);
}

static int write_fill(struct wtensor *t, struct out *o, uint8_t **chunk, size_t *chunk_cap)
{
	uint64_t per = MOE_MAX(1, FILL_CHUNK_BYTES / t->row_bytes);
	size_t need = (size_t)(MOE_MIN(per, t->rows) * t->row_bytes);

	if (need > *chunk_cap) {
		uint8_t *p = realloc(*chunk, need);

		if (!p)
			return moe_err(ENOMEM, "tensor '%s': out of memory for a %zu-byte chunk",
				       t->name, need);
		*chunk = p;
		*chunk_cap = need;
	}
	for (uint64_t r = 0; r < t->rows; r += per) {
		uint64_t n = MOE_MIN(per, t->rows - r);
		int ret = t->fill(t->ctx, r, n, *chunk);

		if (ret < 0)
			return moe_err_prefix(ret, "tensor '%s'", t->name);
		if (out_put(o, *chunk, (size_t)(n * t->row_bytes)))
			return o->err;
	}
	return 0;
}

static int write_all(struct moe_gguf_writer *w, struct out *o)
{
	uint8_t *chunk = NULL;
	size_t chunk_cap = 0;
	int ret = write_header(w, o);

	for (uint64_t i = 0; !ret && i < w->n_tensors; i++) {
		struct wtensor *t = &w->tensors[i];

		if (t->data)
			ret = out_put(o, t->data, t->bytes);
		else
			ret = write_fill(t, o, &chunk, &chunk_cap);
		if (!ret)
			ret = out_pad(o, w->alignment);
	}
	free(chunk);
	if (!ret)
		ret = out_flush(o);
	return ret;
}

int moe_gguf_write(struct moe_gguf_writer *w, const char *path)
{
	struct out o = { 0 };
	int ret;

	if (!w || !path || !*path)
		return moe_err(EINVAL, "gguf writer: no writer or no output path");
	if (w->n_tensors > INT64_MAX || w->n_kv >= INT64_MAX)
		return moe_err(EINVAL, "gguf writer: too many entries");
	ret = moe_gguf_layout(w, NULL, NULL);
	if (ret)
		return ret;
	o.buf = malloc(OUT_BUF_BYTES);
	if (!o.buf)
		return moe_err(ENOMEM, "gguf writer: out of memory");
	ret = moe_outfile_open(path, &o.f);
	if (!ret) {
		ret = write_all(w, &o);
		ret = moe_outfile_close(o.f, !ret) ?: ret;
	}
	free(o.buf);
	return ret;
}
