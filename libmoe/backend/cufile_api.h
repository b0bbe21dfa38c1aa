/* SPDX-License-Identifier: MIT */
/*
 * The part of NVIDIA's cuFile API (GPUDirect Storage, libcufile.so.0) the
 * CUDA backend uses, declared here so that libmoe builds without the CUDA
 * toolkit, and a table of its entry points filled with dlopen/dlsym at run
 * time.  Types, names and values are those of cufile.h; the test fake
 * (tests/simt/libcufile_fake.c) exports the same entry points.
 */
#ifndef MOE_BACKEND_CUFILE_API_H
#define MOE_BACKEND_CUFILE_API_H

#include <stddef.h>
#include <sys/types.h>

#include "backend/cuda_api.h"

/* Status codes: 0, or 5000 plus a small number. */
#define CUFILEOP_BASE_ERR 5000
typedef enum CUfileOpError {
	CU_FILE_SUCCESS = 0,
	CU_FILE_DRIVER_NOT_INITIALIZED = 5001,
	CU_FILE_DRIVER_INVALID_PROPS = 5002,
	CU_FILE_DRIVER_UNSUPPORTED_LIMIT = 5003,
	CU_FILE_DRIVER_VERSION_MISMATCH = 5004,
	CU_FILE_DRIVER_VERSION_READ_ERROR = 5005,
	CU_FILE_DRIVER_CLOSING = 5006,
	CU_FILE_PLATFORM_NOT_SUPPORTED = 5007,
	CU_FILE_IO_NOT_SUPPORTED = 5008,
	CU_FILE_DEVICE_NOT_SUPPORTED = 5009,
	CU_FILE_NVFS_DRIVER_ERROR = 5010,
	CU_FILE_CUDA_DRIVER_ERROR = 5011,
	CU_FILE_CUDA_POINTER_INVALID = 5012,
	CU_FILE_CUDA_MEMORY_TYPE_INVALID = 5013,
	CU_FILE_CUDA_POINTER_RANGE_ERROR = 5014,
	CU_FILE_CUDA_CONTEXT_MISMATCH = 5015,
	CU_FILE_INVALID_MAPPING_SIZE = 5016,
	CU_FILE_INVALID_MAPPING_RANGE = 5017,
	CU_FILE_INVALID_FILE_TYPE = 5018,
	CU_FILE_INVALID_FILE_OPEN_FLAG = 5019,
	CU_FILE_DIO_NOT_SET = 5020,
	CU_FILE_INVALID_VALUE = 5022,
	CU_FILE_MEMORY_ALREADY_REGISTERED = 5023,
	CU_FILE_MEMORY_NOT_REGISTERED = 5024,
	CU_FILE_PERMISSION_DENIED = 5025,
	CU_FILE_DRIVER_ALREADY_OPEN = 5026,
	CU_FILE_HANDLE_NOT_REGISTERED = 5027,
	CU_FILE_HANDLE_ALREADY_REGISTERED = 5028,
	CU_FILE_DEVICE_NOT_FOUND = 5029,
	CU_FILE_INTERNAL_ERROR = 5030,
	CU_FILE_GETNEWFD_FAILED = 5031,
	CU_FILE_NVFS_SETUP_ERROR = 5033,
	CU_FILE_IO_DISABLED = 5034,
	CU_FILE_GPU_MEMORY_PINNING_FAILED = 5036,
	CU_FILE_NOMEM_ERROR = 5043,
	CU_FILE_IO_ERROR = 5044,
} CUfileOpError;

/* A status: the cuFile code, and the CUDA driver's result for CU_FILE_CUDA_DRIVER_ERROR. */
typedef struct CUfileError {
	CUfileOpError err;
	CUresult cu_err;
} CUfileError_t;

enum CUfileFileHandleType {
	CU_FILE_HANDLE_TYPE_OPAQUE_FD = 1,
	CU_FILE_HANDLE_TYPE_OPAQUE_WIN32 = 2,
	CU_FILE_HANDLE_TYPE_USERSPACE_FS = 3,
};

typedef struct CUfileDescr_t {
	enum CUfileFileHandleType type;
	union {
		int fd;
		void *handle;
	} handle;
	const void *fs_ops;            /* CUfileFSOps_t: NULL for a plain file */
} CUfileDescr_t;

typedef void *CUfileHandle_t;

/*
 * The entry points.  cuFileRead returns the bytes read, -1 with errno for a
 * file system error, or a negated CUfileOpError.  cuFileDriverClose is the
 * symbol cuFileDriverClose_v2 where the library has it.
 */
struct moe_cufile_api {
	void *lib;
	CUfileError_t (*cuFileDriverOpen)(void);
	CUfileError_t (*cuFileDriverClose)(void);
	CUfileError_t (*cuFileHandleRegister)(CUfileHandle_t *fh, CUfileDescr_t *descr);
	void (*cuFileHandleDeregister)(CUfileHandle_t fh);
	CUfileError_t (*cuFileBufRegister)(const void *base, size_t length, int flags);
	CUfileError_t (*cuFileBufDeregister)(const void *base);
	ssize_t (*cuFileRead)(CUfileHandle_t fh, void *base, size_t size, off_t file_offset,
			      off_t buf_offset);
};

/*
 * Fill @api from @path (NULL: libcufile.so.0): 0, -ENOENT with "GPUDirect
 * Storage library not found: <dlerror>", or -ENOSYS naming a missing entry point.
 */
int moe_cufile_api_load(struct moe_cufile_api *api, const char *path);
void moe_cufile_api_unload(struct moe_cufile_api *api);
/* "CU_FILE_IO_ERROR" for a status code, "unknown cuFile status" otherwise. */
const char *moe_cufile_status_name(int err);

#endif
