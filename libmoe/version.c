/* SPDX-License-Identifier: MIT */
/* What this build of libmoe is and what it carries. */
#include <stddef.h>

#include "moe/moe.h"
#include "backend/cuda_api.h"
#include "uapi/drm/moe_drm.h"

#ifndef MOE_SONAME
#error "the Makefile defines MOE_SONAME for this file"
#endif

MOE_API void moe_build_info(struct moe_build_info *out)
{
	size_t fatbin = 0;

	out->version_major = MOE_VERSION_MAJOR;
	out->version_minor = MOE_VERSION_MINOR;
	out->soname = MOE_SONAME;
	/* moe_cuda_fatbin() sets the error text when there is none; a query is not a failure */
	if (moe_cuda_fatbin(&fatbin) == NULL)
		fatbin = 0;
	out->cuda_kernel_bytes = fatbin;
	out->kmod_uapi_major = DRM_MOE_VERSION_MAJOR;
	out->kmod_uapi_minor = DRM_MOE_VERSION_MINOR;
}
