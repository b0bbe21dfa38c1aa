/* SPDX-License-Identifier: MIT */
/*
 * GPUDirect Storage for the CUDA backend: libcufile loaded at run time
 * (MOE_CUFILE_LIBRARY names another library than libcufile.so.0, as the
 * tests do with their fake), its driver opened, the model file's
 * descriptor and the device range of the expert slots registered, and
 * reads with cuFileRead straight into device memory.  cuFile's
 * compatibility mode (reads through its own host bounce buffers, where the
 * platform has no peer-to-peer path) is the same calls and counts as well.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda_int.h"
#include "backend/cufile_api.h"
#include "util/util.h"

struct moe_cuda_gds {
	struct moe_cufile_api api;
	bool driver_open;
	bool fh_registered;
	bool buf_registered;
	CUfileHandle_t fh;
	moe_dptr base;
	uint64_t bytes;
};

static const struct {
	int code;
	const char *name;
} status_names[] = {
#define S(x) { x, #x }
	S(CU_FILE_SUCCESS), S(CU_FILE_DRIVER_NOT_INITIALIZED), S(CU_FILE_DRIVER_INVALID_PROPS),
	S(CU_FILE_DRIVER_UNSUPPORTED_LIMIT), S(CU_FILE_DRIVER_VERSION_MISMATCH),
	S(CU_FILE_DRIVER_VERSION_READ_ERROR), S(CU_FILE_DRIVER_CLOSING),
	S(CU_FILE_PLATFORM_NOT_SUPPORTED), S(CU_FILE_IO_NOT_SUPPORTED),
	S(CU_FILE_DEVICE_NOT_SUPPORTED), S(CU_FILE_NVFS_DRIVER_ERROR),
	S(CU_FILE_CUDA_DRIVER_ERROR), S(CU_FILE_CUDA_POINTER_INVALID),
	S(CU_FILE_CUDA_MEMORY_TYPE_INVALID), S(CU_FILE_CUDA_POINTER_RANGE_ERROR),
	S(CU_FILE_CUDA_CONTEXT_MISMATCH), S(CU_FILE_INVALID_MAPPING_SIZE),
	S(CU_FILE_INVALID_MAPPING_RANGE), S(CU_FILE_INVALID_FILE_TYPE),
	S(CU_FILE_INVALID_FILE_OPEN_FLAG), S(CU_FILE_DIO_NOT_SET), S(CU_FILE_INVALID_VALUE),
	S(CU_FILE_MEMORY_ALREADY_REGISTERED), S(CU_FILE_MEMORY_NOT_REGISTERED),
	S(CU_FILE_PERMISSION_DENIED), S(CU_FILE_DRIVER_ALREADY_OPEN),
	S(CU_FILE_HANDLE_NOT_REGISTERED), S(CU_FILE_HANDLE_ALREADY_REGISTERED),
	S(CU_FILE_DEVICE_NOT_FOUND), S(CU_FILE_INTERNAL_ERROR), S(CU_FILE_GETNEWFD_FAILED),
	S(CU_FILE_NVFS_SETUP_ERROR), S(CU_FILE_IO_DISABLED), S(CU_FILE_GPU_MEMORY_PINNING_FAILED),
	S(CU_FILE_NOMEM_ERROR), S(CU_FILE_IO_ERROR),
#undef S
};

const char *moe_cufile_status_name(int err)
{
	for (size_t i = 0; i < MOE_ARRAY_SIZE(status_names); i++)
		if (status_names[i].code == err)
			return status_names[i].name;
	return "unknown cuFile status";
}

int moe_cufile_api_load(struct moe_cufile_api *api, const char *path)
{
	static const struct moe_dl_entry entries[] = {
		{ offsetof(struct moe_cufile_api, cuFileDriverOpen), "cuFileDriverOpen", NULL },
		{ offsetof(struct moe_cufile_api, cuFileDriverClose), "cuFileDriverClose_v2",
		  "cuFileDriverClose" },
		{ offsetof(struct moe_cufile_api, cuFileHandleRegister), "cuFileHandleRegister",
		  NULL },
		{ offsetof(struct moe_cufile_api, cuFileHandleDeregister), "cuFileHandleDeregister",
		  NULL },
		{ offsetof(struct moe_cufile_api, cuFileBufRegister), "cuFileBufRegister", NULL },
		{ offsetof(struct moe_cufile_api, cuFileBufDeregister), "cuFileBufDeregister", NULL },
		{ offsetof(struct moe_cufile_api, cuFileRead), "cuFileRead", NULL },
	};
	const char *lib = path ? path : "libcufile.so.0", *missing;
	void *h = moe_dl_table_load(lib, entries, MOE_ARRAY_SIZE(entries), api, sizeof(*api),
				    &missing);

	if (!h && !missing)
		return moe_err(ENOENT, "GPUDirect Storage library not found: %s", dlerror());
	if (!h)
		return moe_err(ENOSYS, "GPUDirect Storage library %s has no %s (install a "
			       "newer GPUDirect Storage)", lib, missing);
	api->lib = h;
	return 0;
}

void moe_cufile_api_unload(struct moe_cufile_api *api)
{
	if (api->lib)
		dlclose(api->lib);
	memset(api, 0, sizeof(*api));
}

static int errno_of(int err)
{
	switch (err) {
	case CU_FILE_NOMEM_ERROR:
	case CU_FILE_GPU_MEMORY_PINNING_FAILED:
		return ENOMEM;
	case CU_FILE_PERMISSION_DENIED:
		return EACCES;
	case CU_FILE_INVALID_VALUE:
	case CU_FILE_INVALID_FILE_OPEN_FLAG:
	case CU_FILE_DIO_NOT_SET:
	case CU_FILE_CUDA_POINTER_INVALID:
	case CU_FILE_CUDA_POINTER_RANGE_ERROR:
	case CU_FILE_MEMORY_NOT_REGISTERED:
		return EINVAL;
	case CU_FILE_PLATFORM_NOT_SUPPORTED:
	case CU_FILE_IO_NOT_SUPPORTED:
	case CU_FILE_DEVICE_NOT_SUPPORTED:
	case CU_FILE_INVALID_FILE_TYPE:
	case CU_FILE_IO_DISABLED:
		return EOPNOTSUPP;
	case CU_FILE_DEVICE_NOT_FOUND:
		return ENODEV;
	default:
		return EIO;
	}
}

/* 0, or -errno with the call and the status named. */
static int check(struct moe_cuda *c, CUfileError_t st, const char *call)
{
	const char *s = NULL;

	if (st.err == CU_FILE_SUCCESS)
		return 0;
	if (st.err == CU_FILE_CUDA_DRIVER_ERROR) {
		if (!c->api.cuGetErrorString || c->api.cuGetErrorString(st.cu_err, &s) != CUDA_SUCCESS ||
		    !s)
			s = "unknown CUDA error";
		return moe_err(EIO, "cuda: %s failed: CU_FILE_CUDA_DRIVER_ERROR (%d): %s (%d)", call,
			       (int)st.err, s, (int)st.cu_err);
	}
	return moe_err(errno_of(st.err), "cuda: %s failed: %s (%d)", call,
		       moe_cufile_status_name(st.err), (int)st.err);
}

void moe_cuda_direct_close(struct moe_backend *be)
{
	struct moe_cuda *c = moe_cuda_of(be);
	struct moe_cuda_gds *g = c->gds;

	if (!g)
		return;
	c->gds = NULL;
	if (c->ctx && !c->lost)
		c->api.cuCtxSetCurrent(c->ctx);
	if (g->buf_registered) {
		int ret = check(c, g->api.cuFileBufDeregister((void *)(uintptr_t)g->base),
				"cuFileBufDeregister");

		if (ret < 0)
			moe_log(MOE_LOG_WARN, "%s", moe_errmsg());
	}
	if (g->fh_registered)
		g->api.cuFileHandleDeregister(g->fh);
	if (g->driver_open) {
		int ret = check(c, g->api.cuFileDriverClose(), "cuFileDriverClose");

		if (ret < 0)
			moe_log(MOE_LOG_WARN, "%s", moe_errmsg());
	}
	moe_cufile_api_unload(&g->api);
	free(g);
}

int moe_cuda_direct_open(struct moe_backend *be, int fd, moe_dptr p, uint64_t bytes)
{
	struct moe_cuda *c = moe_cuda_of(be);
	const char *path = getenv("MOE_CUFILE_LIBRARY");
	struct moe_cuda_gds *g;
	CUfileDescr_t d;
	int ret;

	if (c->gds)
		return moe_err(EBUSY, "cuda: GPUDirect Storage is open already (one file per "
			       "backend)");
	if (fd < 0)
		return moe_err(EBADF, "cuda: GPUDirect Storage needs the model file's descriptor "
			       "(the I/O backend reads through the kernel module; use --io auto)");
	if (!p || !bytes)
		return moe_err(EINVAL, "cuda: GPUDirect Storage: no device range to read into");
	ret = moe_cuda_enter(c);
	if (ret < 0)
		return ret;
	g = calloc(1, sizeof(*g));
	if (!g)
		return moe_err(ENOMEM, "out of memory");
	c->gds = g;
	ret = moe_cufile_api_load(&g->api, path && *path ? path : NULL);
	if (ret < 0)
		goto fail;
	ret = check(c, g->api.cuFileDriverOpen(), "cuFileDriverOpen");
	if (ret < 0)
		goto fail;
	g->driver_open = true;
	memset(&d, 0, sizeof(d));
	d.type = CU_FILE_HANDLE_TYPE_OPAQUE_FD;
	d.handle.fd = fd;
	ret = check(c, g->api.cuFileHandleRegister(&g->fh, &d), "cuFileHandleRegister");
	if (ret < 0)
		goto fail;
	g->fh_registered = true;
	ret = check(c, g->api.cuFileBufRegister((void *)(uintptr_t)p, bytes, 0),
		    "cuFileBufRegister");
	if (ret < 0) {
		moe_err_prefix(ret, "registering %llu bytes of expert slots",
			       (unsigned long long)bytes);
		goto fail;
	}
	g->buf_registered = true;
	g->base = p;
	g->bytes = bytes;
	return 0;
fail:
	{
		/* closing must not replace the reason */
		char why[512];

		snprintf(why, sizeof(why), "%s", moe_errmsg());
		moe_cuda_direct_close(be);
		return moe_err(-ret, "%s", why);
	}
}

int moe_cuda_direct_read(struct moe_backend *be, moe_dptr dst, uint64_t off, uint64_t bytes)
{
	struct moe_cuda *c = moe_cuda_of(be);
	struct moe_cuda_gds *g = c->gds;
	uint64_t done = 0;
	int ret;

	if (!g)
		return moe_err(EINVAL, "cuda: GPUDirect Storage is not open");
	if (dst < g->base || bytes > g->bytes || dst - g->base > g->bytes - bytes)
		return moe_err(EINVAL, "cuda: GPUDirect Storage read of %llu bytes at device "
			       "address 0x%llx: outside the registered range", (unsigned long long)bytes,
			       (unsigned long long)dst);
	ret = moe_cuda_enter(c);
	if (ret < 0)
		return ret;
	while (done < bytes) {
		ssize_t r;

		errno = 0;
		r = g->api.cuFileRead(g->fh, (void *)(uintptr_t)g->base, (size_t)(bytes - done),
				      (off_t)(off + done), (off_t)(dst - g->base + done));

		if (r == -1)
			return moe_err(errno ? errno : EIO, "cuda: cuFileRead of %llu bytes at "
				       "file offset %llu failed: %s", (unsigned long long)(bytes - done),
				       (unsigned long long)(off + done), strerror(errno ? errno : EIO));
		if (r < 0)
			return moe_err(errno_of((int)-r), "cuda: cuFileRead of %llu bytes at file "
				       "offset %llu failed: %s (%d)", (unsigned long long)(bytes - done),
				       (unsigned long long)(off + done),
				       moe_cufile_status_name((int)-r), (int)-r);
		if (r == 0)
			return moe_err(EIO, "cuda: cuFileRead at file offset %llu returned 0 of %llu "
				       "bytes: the file ends early (truncated?)",
				       (unsigned long long)(off + done),
				       (unsigned long long)(bytes - done));
		if ((uint64_t)r > bytes - done)
			return moe_err(EIO, "cuda: cuFileRead returned %lld bytes, more than the "
				       "%llu asked for", (long long)r,
				       (unsigned long long)(bytes - done));
		done += (uint64_t)r;
	}
	return 0;
}
