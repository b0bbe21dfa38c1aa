/* SPDX-License-Identifier: MIT */
/* The policy registry. */
#include <string.h>

#include "cache/policy.h"
#include "util/util.h"

static const struct moe_cache_policy_ops *const policies[] = {
	&moe_policy_lru,
};

const struct moe_cache_policy_ops *moe_cache_policy_find(const char *name)
{
	for (size_t i = 0; i < MOE_ARRAY_SIZE(policies); i++)
		if (!strcmp(policies[i]->name, name))
			return policies[i];
	return NULL;
}

const char *moe_cache_policy_names(void)
{
	return "lru";
}
