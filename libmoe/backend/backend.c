/* SPDX-License-Identifier: MIT */
/* The backend registry: every kind the library was built with, in "auto" order. */
#include <errno.h>
#include <string.h>

#include "backend/backend.h"
#include "util/util.h"

/* "auto" takes the first kind that can run here: a GPU before the CPU. */
static const struct moe_backend_desc *const kinds[] = {
	&moe_backend_cuda_desc,
	&moe_backend_cpu_desc,
};

const char *moe_backend_names(void)
{
	return "cpu, cuda";
}

int moe_backend_find(const char *name, const struct moe_backend_desc **out)
{
	*out = NULL;
	if (!name || !*name || !strcmp(name, "auto")) {
		for (size_t i = 0; i < MOE_ARRAY_SIZE(kinds); i++)
			if (kinds[i]->probe() == 0) {
				*out = kinds[i];
				return 0;
			}
		return moe_err(ENODEV, "no backend can run here (built: %s)", moe_backend_names());
	}
	for (size_t i = 0; i < MOE_ARRAY_SIZE(kinds); i++) {
		int ret;

		if (strcmp(kinds[i]->name, name))
			continue;
		ret = kinds[i]->probe();
		if (ret < 0)
			return ret;
		*out = kinds[i];
		return 0;
	}
	return moe_err(ENOENT, "unknown backend '%s' (%s, auto)", name, moe_backend_names());
}

int moe_backend_create(const struct moe_backend_desc *d, const struct moe_backend_params *p,
		       struct moe_backend **out)
{
	return d->create(p, out);
}

void moe_backend_destroy(struct moe_backend *be)
{
	if (be)
		be->ops->destroy(be);
}

int moe_route_args_check(const struct moe_route_args *a)
{
	if (!a->k || a->k > a->n_expert || a->stride < a->k)
		return moe_err(EINVAL, "route: top-%u of %u experts (stride %u)", a->k, a->n_expert,
			       a->stride);
	if (a->n_group > 1 && (a->n_group > MOE_ROUTE_MAX_GROUPS || a->n_expert % a->n_group ||
			       !a->topk_group || a->topk_group > a->n_group ||
			       a->k > a->topk_group * (a->n_expert / a->n_group)))
		return moe_err(EINVAL, "route: %u experts in %u groups (at most %u), %u kept, "
			       "cannot give %u choices", a->n_expert, a->n_group,
			       MOE_ROUTE_MAX_GROUPS, a->topk_group, a->k);
	return 0;
}
