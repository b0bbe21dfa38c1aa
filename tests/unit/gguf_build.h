/* SPDX-License-Identifier: MIT */
/*
 * A byte-level GGUF image builder for tests: it writes exactly what it is
 * told, including malformed fields, so the reader's checks can be hit one at
 * a time.
 */
#ifndef MOE_GGUF_BUILD_H
#define MOE_GGUF_BUILD_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct gb {
	uint8_t *p;
	size_t len, cap;
};

static inline void gb_raw(struct gb *b, const void *d, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 256;
		b->p = realloc(b->p, b->cap);
	}
	memcpy(b->p + b->len, d, n);
	b->len += n;
}

static inline void gb_u32(struct gb *b, uint32_t v)
{
	gb_raw(b, &v, 4);
}

static inline void gb_u64(struct gb *b, uint64_t v)
{
	gb_raw(b, &v, 8);
}

static inline void gb_str(struct gb *b, const char *s)
{
	gb_u64(b, strlen(s));
	gb_raw(b, s, strlen(s));
}

static inline void gb_header(struct gb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
	gb_raw(b, "GGUF", 4);
	gb_u32(b, version);
	gb_u64(b, n_tensors);
	gb_u64(b, n_kv);
}

static inline void gb_kv_u32(struct gb *b, const char *key, uint32_t v)
{
	gb_str(b, key);
	gb_u32(b, 4);
	gb_u32(b, v);
}

static inline void gb_kv_f32(struct gb *b, const char *key, float v)
{
	gb_str(b, key);
	gb_u32(b, 6);
	gb_raw(b, &v, 4);
}

static inline void gb_kv_str(struct gb *b, const char *key, const char *v)
{
	gb_str(b, key);
	gb_u32(b, 8);
	gb_str(b, v);
}

static inline void gb_tensor(struct gb *b, const char *name, uint32_t n_dims, const uint64_t *ne,
			     uint32_t type, uint64_t off)
{
	gb_str(b, name);
	gb_u32(b, n_dims);
	for (uint32_t i = 0; i < n_dims; i++)
		gb_u64(b, ne[i]);
	gb_u32(b, type);
	gb_u64(b, off);
}

static inline void gb_pad(struct gb *b, size_t align)
{
	static const uint8_t z[64];

	while (b->len % align) {
		size_t k = align - b->len % align;

		gb_raw(b, z, k < sizeof(z) ? k : sizeof(z));
	}
}

static inline void gb_zeros(struct gb *b, size_t n)
{
	static const uint8_t z[256];

	while (n) {
		size_t k = n < sizeof(z) ? n : sizeof(z);

		gb_raw(b, z, k);
		n -= k;
	}
}

#endif
