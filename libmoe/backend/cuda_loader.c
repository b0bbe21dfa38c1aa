/* SPDX-License-Identifier: MIT */
/*
 * Fill the Driver API table from libcuda at run time, so that libmoe has no
 * link-time dependency on CUDA and runs (on the CPU) where there is none.
 */
#include <dlfcn.h>
#include <errno.h>
#include <string.h>

#include "backend/cuda_api.h"
#include "util/util.h"

static const struct moe_dl_entry entries[] = {
#define MOE_CUDA_ENTRY(name, symbol, fallback, params, args) \
	{ offsetof(struct moe_cuda_api, name), symbol, fallback },
	MOE_CUDA_ENTRIES(MOE_CUDA_ENTRY)
#undef MOE_CUDA_ENTRY
};

void *moe_dl_table_load(const char *lib, const struct moe_dl_entry *e, size_t n, void *table,
			size_t table_size, const char **missing)
{
	void *h, *fn;

	memset(table, 0, table_size);
	*missing = NULL;
	h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (!h)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		fn = dlsym(h, e[i].symbol);
		if (!fn && e[i].fallback)
			fn = dlsym(h, e[i].fallback);
		if (!fn) {
			dlclose(h);
			memset(table, 0, table_size);
			*missing = e[i].symbol;
			return NULL;
		}
		/* POSIX guarantees object and function pointers convert for dlsym */
		memcpy((char *)table + e[i].offset, &fn, sizeof(fn));
	}
	return h;
}

int moe_cuda_api_load(struct moe_cuda_api *api, const char *path)
{
	const char *lib = path ? path : "libcuda.so.1", *missing;
	void *h = moe_dl_table_load(lib, entries, MOE_ARRAY_SIZE(entries), api, sizeof(*api),
				    &missing);

	if (!h && !missing)
		return moe_err(ENOENT, "no CUDA driver found: %s", dlerror());
	if (!h)
		return moe_err(ENOSYS, "CUDA driver %s has no %s: the driver is older than the "
			       "CUDA 12 API libmoe uses (update the NVIDIA driver)", lib, missing);
	api->lib = h;
	return 0;
}

void moe_cuda_api_unload(struct moe_cuda_api *api)
{
	if (api->lib)
		dlclose(api->lib);
	memset(api, 0, sizeof(*api));
}
