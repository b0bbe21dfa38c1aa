/* SPDX-License-Identifier: MIT */
/*
 * The part of the CUDA Driver API the CUDA backend uses, declared here so
 * that libmoe builds where CUDA is absent: the types and constants are
 * ABI-compatible with cuda.h (values and prototypes are checked against it
 * by the unit tests wherever cuda.h is installed), and the entry points are
 * a table of function pointers, filled from libcuda.so.1 at run time by
 * moe_cuda_api_load() or, in the tests, by the fake driver of tests/simt/.
 *
 * The lists are X-macros so that the table, the loader, the fake driver and
 * the ABI check come from one place.  MOE_CUDA_ENTRIES(X) calls
 * X(field, symbol, fallback, (parameters), (arguments)) per entry point:
 * field is the name cuda.h's callers write, symbol the versioned name libcuda
 * exports (what cuda.h #defines the field to), fallback an older name tried
 * when a driver lacks symbol (or NULL), arguments the parameter names, for
 * wrappers that forward a call.
 */
#ifndef MOE_CUDA_API_H
#define MOE_CUDA_API_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_CUDA_RESULTS(X)                               \
	X(CUDA_SUCCESS, 0)                                \
	X(CUDA_ERROR_INVALID_VALUE, 1)                    \
	X(CUDA_ERROR_OUT_OF_MEMORY, 2)                    \
	X(CUDA_ERROR_NOT_INITIALIZED, 3)                  \
	X(CUDA_ERROR_DEINITIALIZED, 4)                    \
	X(CUDA_ERROR_STUB_LIBRARY, 34)                    \
	X(CUDA_ERROR_DEVICE_UNAVAILABLE, 46)              \
	X(CUDA_ERROR_NO_DEVICE, 100)                      \
	X(CUDA_ERROR_INVALID_DEVICE, 101)                 \
	X(CUDA_ERROR_INVALID_IMAGE, 200)                  \
	X(CUDA_ERROR_INVALID_CONTEXT, 201)                \
	X(CUDA_ERROR_NO_BINARY_FOR_GPU, 209)              \
	X(CUDA_ERROR_ECC_UNCORRECTABLE, 214)              \
	X(CUDA_ERROR_INVALID_PTX, 218)                    \
	X(CUDA_ERROR_UNSUPPORTED_PTX_VERSION, 222)        \
	X(CUDA_ERROR_INVALID_SOURCE, 300)                 \
	X(CUDA_ERROR_FILE_NOT_FOUND, 301)                 \
	X(CUDA_ERROR_OPERATING_SYSTEM, 304)               \
	X(CUDA_ERROR_INVALID_HANDLE, 400)                 \
	X(CUDA_ERROR_ILLEGAL_STATE, 401)                  \
	X(CUDA_ERROR_NOT_FOUND, 500)                      \
	X(CUDA_ERROR_NOT_READY, 600)                      \
	X(CUDA_ERROR_ILLEGAL_ADDRESS, 700)                \
	X(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, 701)        \
	X(CUDA_ERROR_LAUNCH_TIMEOUT, 702)                 \
	X(CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE, 708)         \
	X(CUDA_ERROR_CONTEXT_IS_DESTROYED, 709)           \
	X(CUDA_ERROR_ASSERT, 710)                         \
	X(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, 712) \
	X(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, 713)     \
	X(CUDA_ERROR_HARDWARE_STACK_ERROR, 714)           \
	X(CUDA_ERROR_ILLEGAL_INSTRUCTION, 715)            \
	X(CUDA_ERROR_MISALIGNED_ADDRESS, 716)             \
	X(CUDA_ERROR_INVALID_ADDRESS_SPACE, 717)          \
	X(CUDA_ERROR_INVALID_PC, 718)                     \
	X(CUDA_ERROR_LAUNCH_FAILED, 719)                  \
	X(CUDA_ERROR_NOT_PERMITTED, 800)                  \
	X(CUDA_ERROR_NOT_SUPPORTED, 801)                  \
	X(CUDA_ERROR_SYSTEM_NOT_READY, 802)               \
	X(CUDA_ERROR_SYSTEM_DRIVER_MISMATCH, 803)         \
	X(CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE, 804) \
	X(CUDA_ERROR_UNKNOWN, 999)

#define MOE_CUDA_DEVICE_ATTRIBUTES(X)                         \
	X(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, 1)       \
	X(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, 2)             \
	X(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y, 3)             \
	X(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, 4)             \
	X(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, 5)              \
	X(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, 6)              \
	X(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z, 7)              \
	X(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, 8) \
	X(CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY, 9)       \
	X(CU_DEVICE_ATTRIBUTE_WARP_SIZE, 10)                  \
	X(CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, 12)    \
	X(CU_DEVICE_ATTRIBUTE_CLOCK_RATE, 13)                 \
	X(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 16)       \
	X(CU_DEVICE_ATTRIBUTE_INTEGRATED, 18)                 \
	X(CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY, 19)        \
	X(CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS, 31)         \
	X(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, 33)                 \
	X(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, 34)              \
	X(CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, 36)          \
	X(CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, 37)    \
	X(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, 38)              \
	X(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, 39) \
	X(CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT, 40)         \
	X(CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, 41)         \
	X(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, 50)              \
	X(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 75)   \
	X(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 76)   \
	X(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR, 81) \
	X(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, 97) \
	X(CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED, 99)    \
	X(CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED, 116)

#define MOE_CUDA_FUNCTION_ATTRIBUTES(X)                          \
	X(CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, 0)            \
	X(CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, 1)                \
	X(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 8)    \
	X(CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 9)

/* Flags (cuda.h declares some as enumerators, some as macros). */
#define MOE_CUDA_FLAGS(X)                     \
	X(CU_STREAM_DEFAULT, 0x0)             \
	X(CU_STREAM_NON_BLOCKING, 0x1)        \
	X(CU_EVENT_DEFAULT, 0x0)              \
	X(CU_EVENT_BLOCKING_SYNC, 0x1)        \
	X(CU_EVENT_DISABLE_TIMING, 0x2)       \
	X(CU_EVENT_WAIT_DEFAULT, 0x0)         \
	X(CU_MEMHOSTREGISTER_PORTABLE, 0x01)  \
	X(CU_MEMHOSTREGISTER_DEVICEMAP, 0x02) \
	X(CU_MEMHOSTREGISTER_IOMEMORY, 0x04)  \
	X(CU_MEMHOSTREGISTER_READ_ONLY, 0x08)

#define MOE_CUDA_ENTRIES(X)                                                                        \
	X(cuGetErrorName, "cuGetErrorName", NULL,                                                  \
	  (CUresult error, const char **str), (error, str))                                        \
	X(cuGetErrorString, "cuGetErrorString", NULL,                                              \
	  (CUresult error, const char **str), (error, str))                                        \
	X(cuInit, "cuInit", NULL,                                                                  \
	  (unsigned int flags), (flags))                                                           \
	X(cuDriverGetVersion, "cuDriverGetVersion", NULL,                                          \
	  (int *version), (version))                                                               \
	X(cuDeviceGetCount, "cuDeviceGetCount", NULL,                                              \
	  (int *count), (count))                                                                   \
	X(cuDeviceGet, "cuDeviceGet", NULL,                                                        \
	  (CUdevice *dev, int ordinal), (dev, ordinal))                                            \
	X(cuDeviceGetName, "cuDeviceGetName", NULL,                                                \
	  (char *name, int len, CUdevice dev), (name, len, dev))                                   \
	X(cuDeviceGetAttribute, "cuDeviceGetAttribute", NULL,                                      \
	  (int *value, CUdevice_attribute attrib, CUdevice dev), (value, attrib, dev))             \
	X(cuDeviceTotalMem, "cuDeviceTotalMem_v2", NULL,                                           \
	  (size_t *bytes, CUdevice dev), (bytes, dev))                                             \
	X(cuDeviceGetPCIBusId, "cuDeviceGetPCIBusId", NULL,                                        \
	  (char *bus_id, int len, CUdevice dev), (bus_id, len, dev))                               \
	X(cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", NULL,                              \
	  (CUcontext *ctx, CUdevice dev), (ctx, dev))                                              \
	X(cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", NULL,                         \
	  (CUdevice dev), (dev))                                                                   \
	X(cuCtxSetCurrent, "cuCtxSetCurrent", NULL,                                                \
	  (CUcontext ctx), (ctx))                                                                  \
	X(cuCtxSynchronize, "cuCtxSynchronize", NULL,                                              \
	  (void), ())                                                                              \
	X(cuMemAlloc, "cuMemAlloc_v2", NULL,                                                       \
	  (CUdeviceptr *dptr, size_t bytes), (dptr, bytes))                                        \
	X(cuMemFree, "cuMemFree_v2", NULL,                                                         \
	  (CUdeviceptr dptr), (dptr))                                                              \
	X(cuMemGetInfo, "cuMemGetInfo_v2", NULL,                                                   \
	  (size_t *free_bytes, size_t *total_bytes), (free_bytes, total_bytes))                    \
	X(cuMemHostRegister, "cuMemHostRegister_v2", NULL,                                         \
	  (void *p, size_t bytes, unsigned int flags), (p, bytes, flags))                          \
	X(cuMemHostUnregister, "cuMemHostUnregister", NULL,                                        \
	  (void *p), (p))                                                                          \
	X(cuMemAllocHost, "cuMemAllocHost_v2", NULL,                                               \
	  (void **pp, size_t bytes), (pp, bytes))                                                  \
	X(cuMemFreeHost, "cuMemFreeHost", NULL,                                                    \
	  (void *p), (p))                                                                          \
	X(cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2", NULL,                                         \
	  (CUdeviceptr dst, const void *src, size_t bytes, CUstream stream),                       \
	  (dst, src, bytes, stream))                                                               \
	X(cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2", NULL,                                         \
	  (void *dst, CUdeviceptr src, size_t bytes, CUstream stream),                             \
	  (dst, src, bytes, stream))                                                               \
	X(cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2", NULL,                                         \
	  (CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream),                       \
	  (dst, src, bytes, stream))                                                               \
	X(cuMemsetD8Async, "cuMemsetD8Async", NULL,                                                \
	  (CUdeviceptr dst, unsigned char value, size_t n, CUstream stream),                       \
	  (dst, value, n, stream))                                                                 \
	X(cuStreamCreate, "cuStreamCreate", NULL,                                                  \
	  (CUstream *stream, unsigned int flags), (stream, flags))                                 \
	X(cuStreamDestroy, "cuStreamDestroy_v2", NULL,                                             \
	  (CUstream stream), (stream))                                                             \
	X(cuStreamSynchronize, "cuStreamSynchronize", NULL,                                        \
	  (CUstream stream), (stream))                                                             \
	X(cuStreamQuery, "cuStreamQuery", NULL,                                                    \
	  (CUstream stream), (stream))                                                             \
	X(cuStreamWaitEvent, "cuStreamWaitEvent", NULL,                                            \
	  (CUstream stream, CUevent event, unsigned int flags), (stream, event, flags))            \
	X(cuEventCreate, "cuEventCreate", NULL,                                                    \
	  (CUevent *event, unsigned int flags), (event, flags))                                    \
	X(cuEventRecord, "cuEventRecord", NULL,                                                    \
	  (CUevent event, CUstream stream), (event, stream))                                       \
	X(cuEventQuery, "cuEventQuery", NULL,                                                      \
	  (CUevent event), (event))                                                                \
	X(cuEventSynchronize, "cuEventSynchronize", NULL,                                          \
	  (CUevent event), (event))                                                                \
	X(cuEventDestroy, "cuEventDestroy_v2", NULL,                                               \
	  (CUevent event), (event))                                                                \
	X(cuEventElapsedTime, "cuEventElapsedTime_v2", "cuEventElapsedTime",                       \
	  (float *ms, CUevent start, CUevent end), (ms, start, end))                               \
	X(cuModuleLoadData, "cuModuleLoadData", NULL,                                              \
	  (CUmodule *mod, const void *image), (mod, image))                                        \
	X(cuModuleGetFunction, "cuModuleGetFunction", NULL,                                        \
	  (CUfunction *fn, CUmodule mod, const char *name), (fn, mod, name))                       \
	X(cuModuleUnload, "cuModuleUnload", NULL,                                                  \
	  (CUmodule mod), (mod))                                                                   \
	X(cuFuncSetAttribute, "cuFuncSetAttribute", NULL,                                          \
	  (CUfunction fn, CUfunction_attribute attrib, int value), (fn, attrib, value))            \
	X(cuLaunchKernel, "cuLaunchKernel", NULL,                                                  \
	  (CUfunction fn, unsigned int grid_x, unsigned int grid_y, unsigned int grid_z,           \
	   unsigned int block_x, unsigned int block_y, unsigned int block_z,                       \
	   unsigned int shared_bytes, CUstream stream, void **params, void **extra),               \
	  (fn, grid_x, grid_y, grid_z, block_x, block_y, block_z, shared_bytes,                    \
	   stream, params, extra))

#ifndef MOE_CUDA_API_LISTS_ONLY

#define MOE_CUDA_ENUMERATOR(name, value) name = value,

typedef enum cudaError_enum { MOE_CUDA_RESULTS(MOE_CUDA_ENUMERATOR) } CUresult;
typedef enum CUdevice_attribute_enum {
	MOE_CUDA_DEVICE_ATTRIBUTES(MOE_CUDA_ENUMERATOR)
} CUdevice_attribute;
typedef enum CUfunction_attribute_enum {
	MOE_CUDA_FUNCTION_ATTRIBUTES(MOE_CUDA_ENUMERATOR)
} CUfunction_attribute;
enum { MOE_CUDA_FLAGS(MOE_CUDA_ENUMERATOR) };

#undef MOE_CUDA_ENUMERATOR

typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;

/* The legacy default stream, as cuda.h's CU_STREAM_LEGACY; 0 means it too. */
#define CU_STREAM_LEGACY ((CUstream)0x1)

struct moe_cuda_api {
#define MOE_CUDA_FIELD(name, symbol, fallback, params, args) CUresult (*name) params;
	MOE_CUDA_ENTRIES(MOE_CUDA_FIELD)
#undef MOE_CUDA_FIELD
	void *lib;                   /* the dlopen handle, or NULL */
};

/*
 * Fill @api from the CUDA driver library @path (NULL: "libcuda.so.1", found
 * the way dlopen searches).  0, or -ENOENT when the library does not load
 * ("no CUDA driver found: ...") and -ENOSYS when it lacks an entry point,
 * with moe_errmsg() set; @api is zeroed on failure.
 */
int moe_cuda_api_load(struct moe_cuda_api *api, const char *path);
/* A function table filled by dlsym: where each pointer goes, its symbol, an older name. */
struct moe_dl_entry {
	size_t offset;
	const char *symbol;
	const char *fallback;
};
/*
 * dlopen @lib and fill the @n entries of @table (zeroed first).  The handle,
 * or NULL with the table zeroed and *missing NULL when @lib does not load
 * (dlerror() says why), or the first symbol it lacks.
 */
void *moe_dl_table_load(const char *lib, const struct moe_dl_entry *e, size_t n, void *table,
			size_t table_size, const char **missing);
/* Close what moe_cuda_api_load() opened and zero the table. */
void moe_cuda_api_unload(struct moe_cuda_api *api);

/*
 * The kernels of cuda/ as one fatbin (sm_80, sm_90 and compute_90 PTX)
 * embedded at build time, for cuModuleLoadData; its size in *size.  NULL
 * with moe_errmsg() set when libmoe was built without nvcc.
 */
const void *moe_cuda_fatbin(size_t *size);

#endif /* MOE_CUDA_API_LISTS_ONLY */

#ifdef __cplusplus
}
#endif

#endif
