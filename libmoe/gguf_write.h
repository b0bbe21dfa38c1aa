/* SPDX-License-Identifier: MIT */
/*
 * The GGUF writer (public API in include/moe/moe.h, section "gguf writer").
 * This header holds the container constants the writer shares with readers
 * and tests, so that the two sides cannot drift apart.
 */
#ifndef MOE_GGUF_WRITE_H
#define MOE_GGUF_WRITE_H

#include <stdint.h>

#include "moe/moe.h"

/* "GGUF" read as a little-endian u32. */
#define MOE_GGUF_WRITE_MAGIC 0x46554747u
#define MOE_GGUF_WRITE_VERSION 3u
#define MOE_GGUF_MAX_DIMS 4u
/* GGUF stores key lengths in a u64, but every reader caps them far lower. */
#define MOE_GGUF_KEY_MAX 65535u
/* Largest alignment the writer accepts: padding beyond this only wastes disk. */
#define MOE_GGUF_ALIGNMENT_MAX (1u << 30)

/*
 * A tensor whose data is never written: moe_gguf_write leaves a hole in the
 * file there (it reads back as zeros and takes no disk), for full-size test
 * models whose shape matters and whose weights do not.  The output must be
 * a regular file (-ESPIPE otherwise) on a filesystem with sparse files.
 * For the tools; not in the public API.
 */
int moe_gguf_add_tensor_hole(struct moe_gguf_writer *w, const char *name, uint32_t type,
			     uint32_t n_dims, const uint64_t *ne);

/* Bytes of one element of a fixed-size metadata type; 0 for STRING, ARRAY or unknown. */
uint32_t moe_gguf_meta_elem_bytes(uint32_t type);

#endif
