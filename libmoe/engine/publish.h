/* SPDX-License-Identifier: MIT */
/*
 * The file an engine publishes its counters in (publish.c): this struct,
 * little-endian as the machine writes it, nothing else.
 */
#ifndef MOE_PUBLISH_H
#define MOE_PUBLISH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe/moe.h"

/* "moe-eng\n" in the file's first eight bytes */
#define MOE_PUB_MAGIC 0x0a676e652d656f6dull
#define MOE_PUB_VERSION 1u

struct moe_pub_file {
	uint64_t magic;
	uint32_t version;
	uint32_t size;               /* sizeof(struct moe_pub_file) */
	uint64_t seq;                /* odd while the engine writes info */
	uint64_t proc_start;         /* the writer's start time (/proc/PID/stat field 22) */
	struct moe_engine_info info;
};

struct moe_ctx;

/* The engine's side: ctx.c and generate.c call these; all are no-ops when not publishing. */
void moe_pub_open(struct moe_ctx *ctx);
void moe_pub_close(struct moe_ctx *ctx);
/* Write the counters if PUB_INTERVAL has passed since the last write, or now with @force. */
void moe_pub_update(struct moe_ctx *ctx, bool force);
void moe_pub_busy(struct moe_ctx *ctx, bool busy);

/*
 * Check @len bytes of a file and copy its counters to @out and the writer's
 * start time to @start (may be NULL): 0, -EINVAL or -EAGAIN (a write in
 * progress).  The fuzz target and the tests call it on arbitrary bytes.
 */
int moe_pub_parse(const void *buf, size_t len, struct moe_engine_info *out, uint64_t *start);

#endif
