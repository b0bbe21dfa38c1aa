/* SPDX-License-Identifier: MIT */
/*
 * GGUF container reader.  Everything taken from the file is untrusted: every
 * count, length, offset, dim and type is bounded by the file size and sane
 * limits before anything is allocated.  The parsed header lives in one arena
 * owned by struct gguf_file.
 */
#ifndef MOE_GGUF_H
#define MOE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as a little-endian u32 */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
#define GGUF_MAX_NAME 64       /* tensor names are shorter than this */
#define GGUF_MAX_KEY 65535
#define GGUF_MAX_TENSORS (1u << 20)

struct gguf_str {
	const char *s;         /* NUL-terminated copy */
	uint64_t len;
};

struct gguf_kv {
	const char *key;
	uint32_t type;         /* enum moe_meta_type */
	uint32_t elem_type;    /* arrays */
	uint64_t count;        /* arrays: elements; strings: bytes */
	union {
		uint64_t u64;
		int64_t i64;
		double f64;
		const char *str;
	} v;
	const void *data;      /* arrays: packed little-endian scalars, or struct gguf_str[] */
	uint64_t file_off;     /* where the entry starts, for messages */
};

struct gguf_tensor {
	const char *name;
	uint32_t type;
	uint32_t n_dims;
	uint64_t ne[GGUF_MAX_DIMS];  /* unused dims are 1 */
	uint64_t offset;       /* absolute file offset */
	uint64_t bytes;
	uint64_t info_off;     /* where the tensor info starts, for messages */
};

struct gguf_arena;

struct gguf_file {
	uint32_t version;
	uint32_t alignment;
	uint64_t n_kv;
	uint64_t n_tensors;
	struct gguf_kv *kv;
	struct gguf_tensor *tensors;
	uint64_t data_offset;
	uint64_t file_size;
	struct gguf_arena *arena;
};

/* Parse a GGUF header from an open file; @name is used in messages. */
int gguf_parse_fd(int fd, const char *name, struct gguf_file **out);
/* Parse a GGUF image held in memory (fuzzing, tests). */
int gguf_parse_mem(const void *data, size_t size, const char *name, struct gguf_file **out);
/*
 * The first @len bytes of a @file_size-byte file (its header and tensor
 * table, as moe.ko serves them): parsed and validated against the whole
 * file's size; a header running past @len is an error.
 */
int gguf_parse_image(const void *data, size_t len, uint64_t file_size, const char *name,
		     struct gguf_file **out);
void gguf_free(struct gguf_file *f);

const struct gguf_kv *gguf_find_kv(const struct gguf_file *f, const char *key);
/* Index of a tensor by name, or -1. */
int64_t gguf_find_tensor(const struct gguf_file *f, const char *name);

/* Size of one element of a scalar metadata type, 0 for string/array/unknown. */
uint32_t gguf_scalar_size(uint32_t type);
/* Element i of a scalar array, widened. */
bool gguf_arr_i64(const struct gguf_kv *kv, uint64_t i, int64_t *out);
bool gguf_arr_f64(const struct gguf_kv *kv, uint64_t i, double *out);

#endif
