/* SPDX-License-Identifier: MIT */
/* The policy registry, and the "name:key=value,..." option syntax policies and predictors share. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/policy.h"
#include "util/util.h"

static const struct moe_cache_policy_ops *const policies[] = {
	&moe_policy_lru,
	&moe_policy_lfu,
	&moe_policy_stats,
	&moe_policy_belady,
};

const struct moe_cache_policy_ops *moe_cache_policy_find(const char *spec, const char **opts)
{
	const char *colon = spec ? strchr(spec, ':') : NULL;
	size_t n = colon ? (size_t)(colon - spec) : (spec ? strlen(spec) : 0);

	if (opts)
		*opts = colon ? colon + 1 : NULL;
	for (size_t i = 0; spec && i < MOE_ARRAY_SIZE(policies); i++)
		if (strlen(policies[i]->name) == n && !strncmp(policies[i]->name, spec, n))
			return policies[i];
	return NULL;
}

const char *moe_cache_policy_names(void)
{
	return "lru, lfu, stats, belady";
}

const struct moe_cache_policy_ops *moe_cache_policy_at(uint32_t i)
{
	return i < MOE_ARRAY_SIZE(policies) ? policies[i] : NULL;
}

void moe_opt_begin(struct moe_opt_iter *it, const char *opts, const char *what)
{
	it->p = opts && *opts ? opts : NULL;
	it->what = what;
}

int moe_opt_next(struct moe_opt_iter *it, const char **key, double *val)
{
	const char *end, *eq;
	char *num_end;
	size_t n;

	if (!it->p)
		return 0;
	end = strchr(it->p, ',');
	n = end ? (size_t)(end - it->p) : strlen(it->p);
	if (!n || n >= sizeof(it->buf))
		return moe_err(EINVAL, "%s: empty or overlong option in '%s'", it->what, it->p);
	memcpy(it->buf, it->p, n);
	it->buf[n] = 0;
	it->p = end ? end + 1 : NULL;
	eq = strchr(it->buf, '=');
	if (!eq || eq == it->buf)
		return moe_err(EINVAL, "%s: option '%s' is not name=value", it->what, it->buf);
	it->buf[eq - it->buf] = 0;
	*key = it->buf;
	*val = strtod(eq + 1, &num_end);
	if (num_end == eq + 1 || *num_end)
		return moe_err(EINVAL, "%s: option %s=%s: expected a number", it->what, it->buf,
			       eq + 1);
	return 1;
}
