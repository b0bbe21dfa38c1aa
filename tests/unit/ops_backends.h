/* SPDX-License-Identifier: MIT */
/*
 * The backends the op conformance suite (test_ops.c) runs against.  A new
 * backend joins the suite by adding one entry to the table in
 * ops_backends.c; every op test then runs on it unchanged.
 */
#ifndef MOE_OPS_BACKENDS_H
#define MOE_OPS_BACKENDS_H

#include <stdbool.h>
#include <stddef.h>

#include "backend/backend.h"

struct ops_backend {
	const char *name;
	/* NULL when it can run here, else why not (the tests then skip with that reason) */
	const char *(*unavailable)(void);
	/* a backend with @budget bytes (0: unlimited) */
	int (*create)(uint64_t budget, struct moe_backend **out);
	void (*destroy)(struct moe_backend *be);
	/*
	 * NULL when the backend has matrix kernels for every weight type, else
	 * why not for @type (NULL for the types it has): the matrix tests then
	 * leave those types out, and the suite reports them as skipped.
	 */
	const char *(*lacks_type)(uint32_t type);
};

extern const struct ops_backend ops_backends[];
extern const size_t ops_backend_count;

#endif
