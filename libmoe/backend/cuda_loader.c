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

struct entry {
	size_t offset;
	const char *symbol;
	const char *fallback;
};

static const struct entry entries[] = {
#define MOE_CUDA_ENTRY(name, symbol, fallback, params, args) \
	{ offsetof(struct moe_cuda_api, name), symbol, fallback },
	MOE_CUDA_ENTRIES(MOE_CUDA_ENTRY)
#undef MOE_CUDA_ENTRY
};

int moe_cuda_api_load(struct moe_cuda_api *api, const char *path)
{
	const char *lib = path ? path : "libcuda.so.1";
	void *h, *fn;
	size_t i;

	memset(api, 0, sizeof(*api));
	h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (!h)
		return moe_err(ENOENT, "no CUDA driver found: %s", dlerror());
	for (i = 0; i < MOE_ARRAY_SIZE(entries); i++) {
		fn = dlsym(h, entries[i].symbol);
		if (!fn && entries[i].fallback)
			fn = dlsym(h, entries[i].fallback);
		if (!fn) {
			dlclose(h);
			memset(api, 0, sizeof(*api));
			return moe_err(ENOSYS, "CUDA driver %s has no %s: the driver is "
				       "older than the CUDA 12 API libmoe uses (update the NVIDIA "
				       "driver)", lib, entries[i].symbol);
		}
		/* POSIX guarantees object and function pointers convert for dlsym */
		memcpy((char *)api + entries[i].offset, &fn, sizeof(fn));
	}
	api->lib = h;
	return 0;
}

void moe_cuda_api_unload(struct moe_cuda_api *api)
{
	if (api->lib)
		dlclose(api->lib);
	memset(api, 0, sizeof(*api));
}
