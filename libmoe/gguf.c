/* SPDX-License-Identifier: MIT */
/*
 * GGUF v2/v3 reader.  The header is read through a small buffered cursor
 * (pread on a file, or a memory image) so that a multi-gigabyte model costs
 * only its header in memory.  Every error names the field and byte offset.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "quant/quant.h"
#include "util/util.h"

/* ------------------------------------------------------------ arena */

struct gguf_arena {
	struct gguf_arena *next;
	size_t used, cap;
	char mem[];
};

static void *arena_alloc(struct gguf_arena **a, size_t n)
{
	struct gguf_arena *c = *a;
	void *p;

	n = MOE_ALIGN_UP(n, 16);
	if (!c || c->cap - c->used < n) {
		size_t cap = MOE_MAX(n, (size_t)1 << 20);

		c = malloc(sizeof(*c) + cap);
		if (!c)
			return NULL;
		c->used = 0;
		c->cap = cap;
		c->next = *a;
		*a = c;
	}
	p = c->mem + c->used;
	c->used += n;
	return p;
}

static void arena_free(struct gguf_arena *a)
{
	while (a) {
		struct gguf_arena *n = a->next;

		free(a);
		a = n;
	}
}

/* ------------------------------------------------------------ cursor */

#define CUR_BUF (1u << 20)

struct cursor {
	const char *name;
	int fd;                 /* -1: memory image */
	const uint8_t *mem;
	uint64_t mem_len;       /* memory image: bytes at mem (the start of a larger file) */
	uint64_t size;          /* file size */
	uint64_t pos;
	uint8_t *buf;           /* file: window [buf_off, buf_off + buf_len) */
	uint64_t buf_off;
	uint64_t buf_len;
};

static int cur_read(struct cursor *c, void *dst, uint64_t n, const char *what)
{
	uint8_t *d = dst;

	if (n > c->size || c->pos > c->size - n)
		return moe_err(EINVAL, "%s: truncated file: %s at offset 0x%llx needs %llu bytes, "
			       "the file ends at 0x%llx", c->name, what,
			       (unsigned long long)c->pos, (unsigned long long)n,
			       (unsigned long long)c->size);
	if (c->fd < 0) {
		if (c->pos + n > c->mem_len)
			return moe_err(EINVAL, "%s: %s at offset 0x%llx lies past the %llu bytes of "
				       "header given (re-register the model: its header extent is "
				       "too short)", c->name, what, (unsigned long long)c->pos,
				       (unsigned long long)c->mem_len);
		memcpy(d, c->mem + c->pos, n);
		c->pos += n;
		return 0;
	}
	while (n) {
		if (c->pos < c->buf_off || c->pos >= c->buf_off + c->buf_len) {
			ssize_t r;

			c->buf_off = c->pos;
			do {
				r = pread(c->fd, c->buf, CUR_BUF, (off_t)c->buf_off);
			} while (r < 0 && errno == EINTR);
			if (r < 0)
				return moe_err(errno, "%s: read error at offset 0x%llx: %s", c->name,
					       (unsigned long long)c->pos, strerror(errno));
			if (r == 0)
				return moe_err(EIO, "%s: the file shrank while reading %s at 0x%llx",
					       c->name, what, (unsigned long long)c->pos);
			c->buf_len = (uint64_t)r;
		}
		uint64_t in = c->buf_off + c->buf_len - c->pos;
		uint64_t k = MOE_MIN(in, n);

		memcpy(d, c->buf + (c->pos - c->buf_off), k);
		d += k;
		c->pos += k;
		n -= k;
	}
	return 0;
}

static int rd_u32(struct cursor *c, uint32_t *v, const char *what)
{
	uint8_t b[4];
	int ret = cur_read(c, b, 4, what);

	if (!ret)
		*v = b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
	return ret;
}

static int rd_u64(struct cursor *c, uint64_t *v, const char *what)
{
	uint8_t b[8];
	int ret = cur_read(c, b, 8, what);

	if (!ret) {
		*v = 0;
		for (int i = 7; i >= 0; i--)
			*v = *v << 8 | b[i];
	}
	return ret;
}

static uint64_t remaining(const struct cursor *c)
{
	return c->size - c->pos;
}

/* A string: u64 length + bytes, copied into the arena with a NUL. */
static int rd_str(struct cursor *c, struct gguf_arena **a, uint64_t max, struct gguf_str *out,
		  const char *what)
{
	uint64_t at = c->pos, len;
	char *s;
	int ret;

	ret = rd_u64(c, &len, what);
	if (ret)
		return ret;
	if (len > remaining(c))
		return moe_err(EINVAL, "%s: %s at 0x%llx: string length %llu runs past the end of "
			       "the file (0x%llx)", c->name, what, (unsigned long long)at,
			       (unsigned long long)len, (unsigned long long)c->size);
	if (len > max)
		return moe_err(EINVAL, "%s: %s at 0x%llx: string length %llu exceeds the limit %llu",
			       c->name, what, (unsigned long long)at, (unsigned long long)len,
			       (unsigned long long)max);
	s = arena_alloc(a, len + 1);
	if (!s)
		return moe_err(ENOMEM, "%s: out of memory reading %s", c->name, what);
	ret = cur_read(c, s, len, what);
	if (ret)
		return ret;
	s[len] = 0;
	out->s = s;
	out->len = len;
	return 0;
}

/* ------------------------------------------------------------ values */

uint32_t gguf_scalar_size(uint32_t type)
{
	switch (type) {
	case MOE_META_U8:
	case MOE_META_I8:
	case MOE_META_BOOL:
		return 1;
	case MOE_META_U16:
	case MOE_META_I16:
		return 2;
	case MOE_META_U32:
	case MOE_META_I32:
	case MOE_META_F32:
		return 4;
	case MOE_META_U64:
	case MOE_META_I64:
	case MOE_META_F64:
		return 8;
	default:
		return 0;
	}
}

static uint64_t load_le(const uint8_t *p, uint32_t n)
{
	uint64_t v = 0;

	for (int i = (int)n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Widen a little-endian scalar into the kv's value union. */
static void widen(struct gguf_kv *kv, uint32_t type, const uint8_t *p)
{
	uint64_t raw = load_le(p, gguf_scalar_size(type));
	union { uint32_t u; float f; } f32;
	union { uint64_t u; double f; } f64;

	switch (type) {
	case MOE_META_I8:
		kv->v.i64 = (int8_t)raw;
		break;
	case MOE_META_I16:
		kv->v.i64 = (int16_t)raw;
		break;
	case MOE_META_I32:
		kv->v.i64 = (int32_t)raw;
		break;
	case MOE_META_I64:
		kv->v.i64 = (int64_t)raw;
		break;
	case MOE_META_F32:
		f32.u = (uint32_t)raw;
		kv->v.f64 = f32.f;
		break;
	case MOE_META_F64:
		f64.u = raw;
		kv->v.f64 = f64.f;
		break;
	case MOE_META_BOOL:
		kv->v.u64 = raw != 0;
		break;
	default:
		kv->v.u64 = raw;
		break;
	}
}

bool gguf_arr_i64(const struct gguf_kv *kv, uint64_t i, int64_t *out)
{
	struct gguf_kv tmp;
	uint32_t sz;

	if (kv->type != MOE_META_ARRAY || i >= kv->count)
		return false;
	sz = gguf_scalar_size(kv->elem_type);
	if (!sz || kv->elem_type == MOE_META_F32 || kv->elem_type == MOE_META_F64)
		return false;
	widen(&tmp, kv->elem_type, (const uint8_t *)kv->data + i * sz);
	if (kv->elem_type == MOE_META_U64 && tmp.v.u64 > INT64_MAX)
		return false;
	*out = tmp.v.i64;
	return true;
}

bool gguf_arr_f64(const struct gguf_kv *kv, uint64_t i, double *out)
{
	struct gguf_kv tmp;
	uint32_t sz;

	if (kv->type != MOE_META_ARRAY || i >= kv->count)
		return false;
	sz = gguf_scalar_size(kv->elem_type);
	if (!sz)
		return false;
	widen(&tmp, kv->elem_type, (const uint8_t *)kv->data + i * sz);
	switch (kv->elem_type) {
	case MOE_META_F32:
	case MOE_META_F64:
		*out = tmp.v.f64;
		break;
	case MOE_META_I8:
	case MOE_META_I16:
	case MOE_META_I32:
	case MOE_META_I64:
		*out = (double)tmp.v.i64;
		break;
	default:
		*out = (double)tmp.v.u64;
		break;
	}
	return true;
}

static const char *type_word(uint32_t t)
{
	static const char *const names[] = { "u8", "i8", "u16", "i16", "u32", "i32", "f32",
					     "bool", "string", "array", "u64", "i64", "f64" };

	return t < MOE_ARRAY_SIZE(names) ? names[t] : "unknown";
}

static int read_kv(struct cursor *c, struct gguf_arena **a, struct gguf_kv *kv)
{
	struct gguf_str key;
	uint8_t b[8];
	uint64_t at = c->pos;
	int ret;

	kv->file_off = at;
	ret = rd_str(c, a, GGUF_MAX_KEY, &key, "metadata key");
	if (ret)
		return ret;
	if (!key.len)
		return moe_err(EINVAL, "%s: metadata key at 0x%llx is empty", c->name,
			       (unsigned long long)at);
	kv->key = key.s;
	ret = rd_u32(c, &kv->type, "metadata value type");
	if (ret)
		return moe_err_prefix(ret, "key '%s'", kv->key);
	if (kv->type == MOE_META_STRING) {
		struct gguf_str s;

		ret = rd_str(c, a, UINT64_MAX, &s, "string value");
		if (ret)
			return ret;
		kv->v.str = s.s;
		kv->count = s.len;
		return 0;
	}
	if (kv->type == MOE_META_ARRAY) {
		uint64_t n, bytes;
		uint32_t esz;

		ret = rd_u32(c, &kv->elem_type, "array element type");
		if (!ret)
			ret = rd_u64(c, &n, "array length");
		if (ret)
			return ret;
		if (kv->elem_type == MOE_META_ARRAY)
			return moe_err(EINVAL, "%s: key '%s' at 0x%llx: arrays of arrays are not "
				       "supported", c->name, kv->key, (unsigned long long)at);
		kv->count = n;
		if (kv->elem_type == MOE_META_STRING) {
			struct gguf_str *strs;

			/* each string needs at least its 8-byte length */
			if (n > remaining(c) / 8)
				return moe_err(EINVAL, "%s: key '%s' at 0x%llx: array of %llu strings "
					       "cannot fit in the %llu bytes left in the file",
					       c->name, kv->key, (unsigned long long)at,
					       (unsigned long long)n,
					       (unsigned long long)remaining(c));
			strs = arena_alloc(a, (size_t)MOE_MAX(n, 1) * sizeof(*strs));
			if (!strs)
				return moe_err(ENOMEM, "%s: out of memory for key '%s'", c->name,
					       kv->key);
			for (uint64_t i = 0; i < n; i++) {
				ret = rd_str(c, a, UINT64_MAX, &strs[i], "array string");
				if (ret)
					return moe_err_prefix(ret, "key '%s' element %llu", kv->key,
							      (unsigned long long)i);
			}
			kv->data = strs;
			return 0;
		}
		esz = gguf_scalar_size(kv->elem_type);
		if (!esz)
			return moe_err(EINVAL, "%s: key '%s' at 0x%llx: unknown array element type "
				       "%u", c->name, kv->key, (unsigned long long)at,
				       kv->elem_type);
		if (!moe_mul_u64(n, esz, &bytes) || bytes > remaining(c))
			return moe_err(EINVAL, "%s: key '%s' at 0x%llx: array of %llu %s runs past "
				       "the end of the file (0x%llx)", c->name, kv->key,
				       (unsigned long long)at, (unsigned long long)n,
				       type_word(kv->elem_type), (unsigned long long)c->size);
		kv->data = arena_alloc(a, MOE_MAX(bytes, 1));
		if (!kv->data)
			return moe_err(ENOMEM, "%s: out of memory for key '%s'", c->name, kv->key);
		return cur_read(c, (void *)kv->data, bytes, "array data");
	}
	if (!gguf_scalar_size(kv->type))
		return moe_err(EINVAL, "%s: key '%s' at 0x%llx: unknown value type %u", c->name,
			       kv->key, (unsigned long long)at, kv->type);
	ret = cur_read(c, b, gguf_scalar_size(kv->type), "metadata value");
	if (ret)
		return ret;
	widen(kv, kv->type, b);
	return 0;
}

/* ------------------------------------------------------------ lookup */

/* Open-addressing hash set over names, for duplicate detection and lookup. */
static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ull;

	while (*s)
		h = (h ^ (uint8_t)*s++) * 1099511628211ull;
	return h;
}

static int check_unique(const char *what, const char *const *names,
			uint64_t n, const char *file)
{
	uint64_t cap = 16, i;
	uint32_t *slots;
	int ret = 0;

	while (cap < n * 2)
		cap <<= 1;
	slots = calloc(cap, sizeof(*slots));
	if (!slots)
		return moe_err(ENOMEM, "%s: out of memory", file);
	for (i = 0; i < n && !ret; i++) {
		uint64_t h = hash_str(names[i]) & (cap - 1);

		while (slots[h]) {
			if (!strcmp(names[slots[h] - 1], names[i])) {
				ret = moe_err(EINVAL, "%s: duplicate %s '%s'", file, what, names[i]);
				break;
			}
			h = (h + 1) & (cap - 1);
		}
		slots[h] = (uint32_t)i + 1;
	}
	free(slots);
	return ret;
}

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key)
{
	for (uint64_t i = 0; i < f->n_kv; i++)
		if (!strcmp(f->kv[i].key, key))
			return &f->kv[i];
	return NULL;
}

int64_t gguf_find_tensor(const struct gguf_file *f, const char *name)
{
	for (uint64_t i = 0; i < f->n_tensors; i++)
		if (!strcmp(f->tensors[i].name, name))
			return (int64_t)i;
	return -1;
}

/* ------------------------------------------------------------ parse */

static int read_tensor_info(struct cursor *c, struct gguf_arena **a, struct gguf_tensor *t)
{
	struct gguf_str name;
	uint64_t at = c->pos, rel;
	int ret;

	t->info_off = at;
	ret = rd_str(c, a, UINT64_MAX, &name, "tensor name");
	if (ret)
		return ret;
	t->name = name.s;
	if (name.len >= GGUF_MAX_NAME)
		return moe_err(EINVAL, "%s: tensor info at 0x%llx: name of %llu bytes is longer than "
			       "%d", c->name, (unsigned long long)at, (unsigned long long)name.len,
			       GGUF_MAX_NAME - 1);
	if (!name.len || strlen(name.s) != name.len)
		return moe_err(EINVAL, "%s: tensor info at 0x%llx: empty name or a NUL inside it",
			       c->name, (unsigned long long)at);
	ret = rd_u32(c, &t->n_dims, "tensor n_dims");
	if (ret)
		return ret;
	if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
		return moe_err(EINVAL, "%s: tensor '%s': n_dims %u is out of range 1..%d", c->name,
			       t->name, t->n_dims, GGUF_MAX_DIMS);
	for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
		t->ne[d] = 1;
		if (d < t->n_dims) {
			ret = rd_u64(c, &t->ne[d], "tensor dims");
			if (ret)
				return ret;
			if (t->ne[d] == 0 || t->ne[d] > (1ull << 40))
				return moe_err(EINVAL, "%s: tensor '%s': dimension %u is %llu", c->name,
					       t->name, d, (unsigned long long)t->ne[d]);
		}
	}
	ret = rd_u32(c, &t->type, "tensor type");
	if (!ret)
		ret = rd_u64(c, &rel, "tensor offset");
	if (ret)
		return ret;
	t->offset = rel; /* relative until the data section is known */
	return 0;
}

static int validate_tensor(const struct cursor *c, struct gguf_file *f, struct gguf_tensor *t)
{
	const struct moe_type_traits *tt = moe_type_traits(t->type);
	uint64_t rows, row_bytes, end;

	if (!tt)
		return moe_err(EINVAL, "%s: tensor '%s': unknown type id %u", c->name, t->name,
			       t->type);
	if (t->ne[0] % tt->block)
		return moe_err(EINVAL, "%s: tensor '%s': row length %llu is not a multiple of the "
			       "%s block size %u", c->name, t->name, (unsigned long long)t->ne[0],
			       tt->name, tt->block);
	if (t->offset % f->alignment)
		return moe_err(EINVAL, "%s: tensor '%s': offset 0x%llx is not a multiple of the "
			       "alignment %u", c->name, t->name, (unsigned long long)t->offset,
			       f->alignment);
	row_bytes = t->ne[0] / tt->block * tt->bytes;
	if (!moe_mul_u64(t->ne[1], t->ne[2], &rows) || !moe_mul_u64(rows, t->ne[3], &rows) ||
	    !moe_mul_u64(rows, row_bytes, &t->bytes))
		return moe_err(EINVAL, "%s: tensor '%s': size overflows", c->name, t->name);
	if (!moe_add_u64(t->offset, f->data_offset, &t->offset) ||
	    !moe_add_u64(t->offset, t->bytes, &end) || end > f->file_size)
		return moe_err(EINVAL, "%s: tensor '%s': data at 0x%llx (%llu bytes) ends past the "
			       "file size 0x%llx", c->name, t->name, (unsigned long long)t->offset,
			       (unsigned long long)t->bytes, (unsigned long long)f->file_size);
	return 0;
}

static int cmp_tensor_off(const void *a, const void *b)
{
	const struct gguf_tensor *x = *(const struct gguf_tensor *const *)a;
	const struct gguf_tensor *y = *(const struct gguf_tensor *const *)b;

	return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int check_overlap(const struct cursor *c, struct gguf_file *f)
{
	const struct gguf_tensor **v;
	int ret = 0;

	if (f->n_tensors < 2)
		return 0;
	v = malloc(f->n_tensors * sizeof(*v));
	if (!v)
		return moe_err(ENOMEM, "%s: out of memory", c->name);
	for (uint64_t i = 0; i < f->n_tensors; i++)
		v[i] = &f->tensors[i];
	qsort(v, f->n_tensors, sizeof(*v), cmp_tensor_off);
	for (uint64_t i = 1; i < f->n_tensors; i++) {
		if (v[i - 1]->offset + v[i - 1]->bytes > v[i]->offset) {
			ret = moe_err(EINVAL, "%s: tensors '%s' (0x%llx+%llu) and '%s' (0x%llx) "
				      "overlap", c->name, v[i - 1]->name,
				      (unsigned long long)v[i - 1]->offset,
				      (unsigned long long)v[i - 1]->bytes, v[i]->name,
				      (unsigned long long)v[i]->offset);
			break;
		}
	}
	free(v);
	return ret;
}

static int parse(struct cursor *c, struct gguf_file **out)
{
	struct gguf_file *f;
	uint32_t magic;
	const struct gguf_kv *al;
	const char **names = NULL;
	int ret;

	f = calloc(1, sizeof(*f));
	if (!f)
		return moe_err(ENOMEM, "%s: out of memory", c->name);
	f->file_size = c->size;
	f->alignment = GGUF_DEFAULT_ALIGNMENT;

	ret = rd_u32(c, &magic, "magic");
	if (ret)
		goto err;
	if (magic != GGUF_MAGIC) {
		ret = moe_err(EINVAL, "%s: not a GGUF file (magic 0x%08x, expected \"GGUF\")",
			      c->name, magic);
		goto err;
	}
	ret = rd_u32(c, &f->version, "version");
	if (ret)
		goto err;
	if (f->version == 0x02000000u || f->version == 0x03000000u) {
		ret = moe_err(EINVAL, "%s: big-endian GGUF files are not supported; convert it to "
			      "little-endian (gguf-py's gguf-convert-endian)", c->name);
		goto err;
	}
	if (f->version != 2 && f->version != 3) {
		ret = moe_err(EINVAL, "%s: GGUF version %u is not supported (only 2 and 3)%s",
			      c->name, f->version,
			      f->version == 1 ? "; re-convert the model with a current tool" : "");
		goto err;
	}
	ret = rd_u64(c, &f->n_tensors, "tensor count");
	if (!ret)
		ret = rd_u64(c, &f->n_kv, "metadata count");
	if (ret)
		goto err;
	/* minimal encodings: a kv is >= 13 bytes, a tensor info >= 33 bytes */
	if (f->n_kv > remaining(c) / 13) {
		ret = moe_err(EINVAL, "%s: metadata count %llu cannot fit in the file (%llu bytes)",
			      c->name, (unsigned long long)f->n_kv, (unsigned long long)c->size);
		goto err;
	}
	if (f->n_tensors > GGUF_MAX_TENSORS || f->n_tensors > remaining(c) / 33) {
		ret = moe_err(EINVAL, "%s: tensor count %llu is impossible for a file of %llu bytes",
			      c->name, (unsigned long long)f->n_tensors,
			      (unsigned long long)c->size);
		goto err;
	}
	f->kv = calloc(MOE_MAX(f->n_kv, 1), sizeof(*f->kv));
	f->tensors = calloc(MOE_MAX(f->n_tensors, 1), sizeof(*f->tensors));
	names = calloc(MOE_MAX(MOE_MAX(f->n_kv, f->n_tensors), 1), sizeof(*names));
	if (!f->kv || !f->tensors || !names) {
		ret = moe_err(ENOMEM, "%s: out of memory", c->name);
		goto err;
	}
	for (uint64_t i = 0; i < f->n_kv; i++) {
		ret = read_kv(c, &f->arena, &f->kv[i]);
		if (ret)
			goto err;
		names[i] = f->kv[i].key;
	}
	ret = check_unique("metadata key", names, f->n_kv, c->name);
	if (ret)
		goto err;

	al = gguf_find_kv(f, "general.alignment");
	if (al) {
		if (al->type != MOE_META_U32 && al->type != MOE_META_U64 &&
		    al->type != MOE_META_I32) {
			ret = moe_err(EINVAL, "%s: general.alignment has type %s, expected u32",
				      c->name, type_word(al->type));
			goto err;
		}
		if (al->v.u64 == 0 || (al->v.u64 & (al->v.u64 - 1)) || al->v.u64 > (1u << 30)) {
			ret = moe_err(EINVAL, "%s: general.alignment %lld is not a power of two "
				      "(1..2^30)", c->name, (long long)al->v.i64);
			goto err;
		}
		f->alignment = (uint32_t)al->v.u64;
	}

	for (uint64_t i = 0; i < f->n_tensors; i++) {
		ret = read_tensor_info(c, &f->arena, &f->tensors[i]);
		if (ret)
			goto err;
		names[i] = f->tensors[i].name;
	}
	ret = check_unique("tensor name", names, f->n_tensors, c->name);
	if (ret)
		goto err;
	f->data_offset = MOE_ALIGN_UP(c->pos, (uint64_t)f->alignment);
	for (uint64_t i = 0; i < f->n_tensors; i++) {
		ret = validate_tensor(c, f, &f->tensors[i]);
		if (ret)
			goto err;
	}
	ret = check_overlap(c, f);
	if (ret)
		goto err;
	free(names);
	*out = f;
	return 0;
err:
	free(names);
	gguf_free(f);
	return ret;
}

int gguf_parse_mem(const void *data, size_t size, const char *name, struct gguf_file **out)
{
	struct cursor c = { .name = name ? name : "<memory>", .fd = -1, .mem = data,
			    .mem_len = size, .size = size };

	return parse(&c, out);
}

int gguf_parse_image(const void *data, size_t len, uint64_t file_size, const char *name,
		     struct gguf_file **out)
{
	struct cursor c = { .name = name ? name : "<memory>", .fd = -1, .mem = data,
			    .mem_len = MOE_MIN((uint64_t)len, file_size), .size = file_size };

	return parse(&c, out);
}

int gguf_parse_fd(int fd, const char *name, struct gguf_file **out)
{
	struct cursor c = { .name = name, .fd = fd };
	struct stat st;
	int ret;

	if (fstat(fd, &st))
		return moe_err(errno, "%s: %s", name, strerror(errno));
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		return moe_err(EINVAL, "%s: not a regular file", name);
	c.size = (uint64_t)st.st_size;
	c.buf = malloc(CUR_BUF);
	if (!c.buf)
		return moe_err(ENOMEM, "%s: out of memory", name);
	ret = parse(&c, out);
	free(c.buf);
	return ret;
}

void gguf_free(struct gguf_file *f)
{
	if (!f)
		return;
	arena_free(f->arena);
	free(f->kv);
	free(f->tensors);
	free(f);
}
