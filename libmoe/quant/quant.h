/* SPDX-License-Identifier: MIT */
/*
 * The type traits table: one entry per GGML type id, indexed by the id.
 * The quant module fills in the kernels; the GGUF reader and the planner
 * only need names and block sizes.
 */
#ifndef MOE_QUANT_H
#define MOE_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe/moe.h"

struct moe_type_traits {
	const char *name;
	uint32_t block;         /* elements per block; 0 = unknown/retired id */
	uint32_t bytes;         /* bytes per block */
	bool quantized;
};

/* NULL for an id outside the table or a retired id. */
const struct moe_type_traits *moe_type_traits(uint32_t type);

#endif
