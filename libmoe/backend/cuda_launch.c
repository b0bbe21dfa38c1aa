/* SPDX-License-Identifier: MIT */
/* moe_cuda_launch (backend/cuda_int.h): a kernel of the module by name, on the compute stream. */
#include <errno.h>

#include "backend/cuda_int.h"
#include "util/util.h"

static int launch_err(struct moe_cuda *c, CUresult r, const char *name, const char *call)
{
	const char *s = NULL;

	if (c->api.cuGetErrorString(r, &s) != CUDA_SUCCESS || !s)
		s = "unknown error";
	return moe_err(r == CUDA_ERROR_NOT_FOUND ? ENOENT : EIO, "kernel %s: %s failed: %s (%d)",
		       name, call, s, (int)r);
}

int moe_cuda_launch(struct moe_cuda *c, const char *name, unsigned gx, unsigned gy, unsigned gz,
		    unsigned bx, unsigned by, unsigned bz, unsigned shared_bytes, void **params)
{
	CUfunction fn;
	CUresult r = c->api.cuModuleGetFunction(&fn, c->mod, name);

	if (r != CUDA_SUCCESS)
		return launch_err(c, r, name, "cuModuleGetFunction");
	r = c->api.cuLaunchKernel(fn, gx, gy, gz, bx, by, bz, shared_bytes,
				  c->stream[MOE_BE_COMPUTE], params, NULL);
	return r == CUDA_SUCCESS ? 0 : launch_err(c, r, name, "cuLaunchKernel");
}
