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

/* Bytes of one element of a fixed-size metadata type; 0 for STRING, ARRAY or unknown. */
uint32_t moe_gguf_meta_elem_bytes(uint32_t type);

#endif
