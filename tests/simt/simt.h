/* SPDX-License-Identifier: MIT */
/*
 * The CPU emulation of CUDA, for .cu sources compiled as C++17 by g++ or
 * clang++ with `-include tests/simt/simt.h` (the Makefile does it).  Each CUDA
 * thread is a fiber; the threads of a block run one at a time and switch only
 * at __syncthreads, warp operations and exit.  Documentation/cuda.rst lists
 * what a kernel may use; anything else fails to compile here or under nvcc.
 *
 * The .cu objects are also compiled with the compiler's ThreadSanitizer
 * instrumentation, whose per-access calls (renamed to simt_hook_*, no TSan
 * runtime involved) let the runtime check every shared-memory access for
 * races and uninitialized reads and every device-memory access against the
 * live allocations.
 */
#ifndef SIMT_H
#define SIMT_H

#ifndef __cplusplus
#error "simt.h emulates CUDA C++: compile the .cu file as C++17"
#endif
#ifdef __CUDACC__
#error "simt.h is the CPU emulation of CUDA: nvcc compiles .cu files without it"
#endif

#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <stdio.h>
#include <type_traits>
#include <utility>

#include "simt_api.h"

#define __SIMT__ 1

struct uint3 {
	unsigned x, y, z;
};

struct dim3 {
	unsigned x, y, z;
	constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
	constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
	constexpr operator uint3() const { return uint3{x, y, z}; }
};

/* The built-in indices come from the runtime; const: fixed for a fiber's life. */
namespace simt {
uint3 thread_idx() __attribute__((const));
uint3 block_idx() __attribute__((const));
dim3 block_dim() __attribute__((const));
dim3 grid_dim() __attribute__((const));

enum warp_kind { WOP_SYNC, WOP_IDX, WOP_UP, WOP_DOWN, WOP_XOR, WOP_BALLOT, WOP_ANY, WOP_ALL };
void syncthreads(const char *file, int line);
/* One lane's part of a warp operation; @bytes of @val are exchanged. */
uint64_t warp_op(int kind, unsigned mask, uint64_t val, unsigned bytes, int arg, int width,
		 const char *file, int line);
unsigned activemask();
void threadfence();

struct site {
	const char *name;
	const char *file;
	int line;
	size_t elem;
};
void *shared_static(const site *s, size_t bytes, size_t align);
void *shared_dynamic(const site *s, size_t align);

int atomic_add(int *p, int v);
unsigned atomic_add(unsigned *p, unsigned v);
unsigned long long atomic_add(unsigned long long *p, unsigned long long v);
float atomic_add(float *p, float v);
double atomic_add(double *p, double v);
int atomic_sub(int *p, int v);
unsigned atomic_sub(unsigned *p, unsigned v);
int atomic_max(int *p, int v);
unsigned atomic_max(unsigned *p, unsigned v);
int atomic_min(int *p, int v);
unsigned atomic_min(unsigned *p, unsigned v);
int atomic_exch(int *p, int v);
unsigned atomic_exch(unsigned *p, unsigned v);
unsigned long long atomic_exch(unsigned long long *p, unsigned long long v);
float atomic_exch(float *p, float v);
int atomic_cas(int *p, int cmp, int v);
unsigned atomic_cas(unsigned *p, unsigned cmp, unsigned v);
unsigned long long atomic_cas(unsigned long long *p, unsigned long long cmp,
			      unsigned long long v);

/* Adds the record MOE_KERNEL(name) makes to the registry. */
void register_kernel(simt_kernel *k);

template <typename T> inline uint64_t to_bits(T v)
{
	uint64_t b = 0;

	__builtin_memcpy(&b, &v, sizeof(v));
	return b;
}

template <typename T> inline T from_bits(uint64_t b)
{
	T v;

	__builtin_memcpy(&v, &b, sizeof(v));
	return v;
}
} /* namespace simt */

#define threadIdx (::simt::thread_idx())
#define blockIdx (::simt::block_idx())
#define blockDim (::simt::block_dim())
#define gridDim (::simt::grid_dim())
constexpr int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
/* A plain __shared__ array would be one per CUDA thread here, silently: refuse it. */
#define __shared__                                                                        \
	static_assert(false, "plain __shared__ is not emulated: declare shared memory with " \
		      "MOE_SHARED(type, name, count) or MOE_DYN_SHARED(type, name) "           \
		      "(cuda/common.cuh)");

/*
 * Shared memory: every thread of a block that reaches a declaration gets the
 * same address; the bytes are poisoned (0xff: NaN as float, -1 as int) when
 * the first thread of the block reaches it.
 */
#define SIMT_SHARED(type, name, count)                                                    \
	static_assert((count) > 0, "shared array size must be a positive constant");     \
	static constexpr ::simt::site simt_site_##name = {#name, __FILE__, __LINE__,     \
							  sizeof(type)};                 \
	type(&name)[count] = *static_cast<type(*)[count]>(                                \
		::simt::shared_static(&simt_site_##name, sizeof(type[count]), alignof(type)))
#define SIMT_DYN_SHARED(type, name)                                                       \
	static constexpr ::simt::site simt_site_##name = {#name, __FILE__, __LINE__,     \
							  sizeof(type)};                 \
	type *const name = static_cast<type *>(                                           \
		::simt::shared_dynamic(&simt_site_##name, alignof(type)))

/* ---- kernel registry ---- */
struct simt_kernel {
	const char *name;
	const char *file;
	void (*fn)();
	void (*invoke)(void (*fn)(), void **params);
	unsigned nparams;
	const size_t *param_sizes;
	simt_kernel *next;
};

namespace simt {
template <typename... A> struct invoker {
	template <size_t... I>
	static void call_typed(void (*f)(A...), void **p, std::index_sequence<I...>)
	{
		f(*static_cast<A *>(p[I])...);
	}
	static void call(void (*fn)(), void **p)
	{
		call_typed(reinterpret_cast<void (*)(A...)>(fn), p,
			   std::index_sequence_for<A...>{});
	}
	static constexpr size_t sizes[sizeof...(A) + 1] = {sizeof(A)..., 0};
};

struct registrar {
	simt_kernel rec;
	template <typename... A>
	registrar(const char *name, const char *file, void (*fn)(A...))
		: rec{name, file, reinterpret_cast<void (*)()>(fn), &invoker<A...>::call,
		      sizeof...(A), invoker<A...>::sizes, nullptr}
	{
		static_assert((std::is_trivially_copyable<A>::value && ...),
			      "kernel parameters must be trivially copyable");
		register_kernel(&rec);
	}
};
} /* namespace simt */

#define SIMT_KERNEL(name) static ::simt::registrar simt_registrar_##name(#name, __FILE__, &name)

/* ---- synchronization ---- */
inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
	::simt::syncthreads(file, line);
}

inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(),
		       int line = __builtin_LINE())
{
	::simt::warp_op(::simt::WOP_SYNC, mask, 0, 0, 0, warpSize, file, line);
}

inline void __threadfence() { ::simt::threadfence(); }
inline void __threadfence_block() { ::simt::threadfence(); }
inline unsigned __activemask() { return ::simt::activemask(); }

/* ---- half and bfloat16 (round to nearest even, canonical NaN 0x7fff) ---- */
namespace simt {
inline uint32_t fbits(float f)
{
	uint32_t u;

	__builtin_memcpy(&u, &f, 4);
	return u;
}

inline float bitsf(uint32_t u)
{
	float f;

	__builtin_memcpy(&f, &u, 4);
	return f;
}

inline uint16_t f2h(float x)
{
	uint32_t f = fbits(x), sign = (f >> 16) & 0x8000, a = f & 0x7fffffff;
	uint32_t e = a >> 23, m, rem, r, s;

	if (a > 0x7f800000)
		return 0x7fff;
	if (a >= 0x47800000)                    /* >= 65536 (and inf) */
		return sign | 0x7c00;
	if (a < 0x33000000)                     /* < 2^-25: rounds to zero */
		return sign;
	if (a < 0x38800000) {                   /* half subnormal: m * 2^-24 */
		m = (a & 0x7fffff) | 0x800000;
		s = 126 - e;
		r = m >> s;
		rem = m & ((1u << s) - 1);
		if (rem > (1u << (s - 1)) || (rem == (1u << (s - 1)) && (r & 1)))
			r++;
		return sign | r;
	}
	r = ((e - 112) << 10) | ((a >> 13) & 0x3ff);
	rem = a & 0x1fff;
	if (rem > 0x1000 || (rem == 0x1000 && (r & 1)))
		r++;                            /* may carry into the exponent, up to inf */
	return sign | r;
}

inline float h2f(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;

	if (e == 0x1f)
		return bitsf(sign | 0x7f800000 | (m << 13));
	if (e)
		return bitsf(sign | ((e + 112) << 23) | (m << 13));
	if (!m)
		return bitsf(sign);
	e = 113;
	while (!(m & 0x400)) {
		m <<= 1;
		e--;
	}
	return bitsf(sign | (e << 23) | ((m & 0x3ff) << 13));
}

inline uint16_t f2bf(float x)
{
	uint32_t f = fbits(x);

	if ((f & 0x7fffffff) > 0x7f800000)
		return 0x7fff;
	return (uint16_t)((f + 0x7fff + ((f >> 16) & 1)) >> 16);
}

inline float bf2f(uint16_t b) { return bitsf((uint32_t)b << 16); }
} /* namespace simt */

struct alignas(2) __half {
	unsigned short __x;
	__half() = default;
	__half(float f) : __x(::simt::f2h(f)) {}
	operator float() const { return ::simt::h2f(__x); }
};

struct alignas(4) __half2 {
	__half x, y;
};

struct alignas(2) __nv_bfloat16 {
	unsigned short __x;
	__nv_bfloat16() = default;
	__nv_bfloat16(float f) : __x(::simt::f2bf(f)) {}
	operator float() const { return ::simt::bf2f(__x); }
};

struct alignas(4) __nv_bfloat162 {
	__nv_bfloat16 x, y;
};

typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

/* ---- vector types ---- */
struct alignas(8) float2 {
	float x, y;
};
struct alignas(16) float4 {
	float x, y, z, w;
};
struct alignas(8) int2 {
	int x, y;
};
struct alignas(16) int4 {
	int x, y, z, w;
};
struct alignas(8) uint2 {
	unsigned x, y;
};
struct alignas(16) uint4 {
	unsigned x, y, z, w;
};
struct alignas(4) char4 {
	signed char x, y, z, w;
};
struct alignas(4) uchar4 {
	unsigned char x, y, z, w;
};

inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w)
{
	return uint4{x, y, z, w};
}
inline char4 make_char4(signed char x, signed char y, signed char z, signed char w)
{
	return char4{x, y, z, w};
}
inline uchar4 make_uchar4(unsigned char x, unsigned char y, unsigned char z, unsigned char w)
{
	return uchar4{x, y, z, w};
}

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u)
{
	__half h;

	h.__x = u;
	return h;
}
inline __half2 __halves2half2(__half lo, __half hi) { return __half2{lo, hi}; }
inline __half2 make_half2(__half x, __half y) { return __half2{x, y}; }
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__half(lo), __half(hi)}; }
inline __half2 __float2half2_rn(float f) { return __half2{__half(f), __half(f)}; }
inline float2 __half22float2(__half2 h) { return float2{float(h.x), float(h.y)}; }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return float(h.x); }
inline float __high2float(__half2 h) { return float(h.y); }

inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u)
{
	__nv_bfloat16 b;

	b.__x = u;
	return b;
}
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi)
{
	return __nv_bfloat162{__nv_bfloat16(lo), __nv_bfloat16(hi)};
}
inline float2 __bfloat1622float2(__nv_bfloat162 b) { return float2{float(b.x), float(b.y)}; }
inline float __low2float(__nv_bfloat162 b) { return float(b.x); }
inline float __high2float(__nv_bfloat162 b) { return float(b.y); }

/* ---- warp shuffles and votes ---- */
namespace simt {
template <typename T> struct shfl_ok : std::false_type {};
#define SIMT_SHFL_OK(T) template <> struct shfl_ok<T> : std::true_type {}
SIMT_SHFL_OK(int);
SIMT_SHFL_OK(unsigned);
SIMT_SHFL_OK(long);
SIMT_SHFL_OK(unsigned long);
SIMT_SHFL_OK(long long);
SIMT_SHFL_OK(unsigned long long);
SIMT_SHFL_OK(float);
SIMT_SHFL_OK(double);
SIMT_SHFL_OK(__half);
SIMT_SHFL_OK(__half2);
SIMT_SHFL_OK(__nv_bfloat16);
SIMT_SHFL_OK(__nv_bfloat162);
#undef SIMT_SHFL_OK

template <typename T>
inline T shfl(int kind, unsigned mask, T var, int arg, int width, const char *file, int line)
{
	static_assert(shfl_ok<T>::value, "CUDA shuffles take int, unsigned, long, long long, "
		      "float, double, half, half2, bfloat16 or bfloat162");
	return from_bits<T>(warp_op(kind, mask, to_bits(var), sizeof(T), arg, width, file, line));
}
} /* namespace simt */

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,
		     const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
	return ::simt::shfl(::simt::WOP_IDX, mask, var, src_lane, width, file, line);
}

template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
			const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
	return ::simt::shfl(::simt::WOP_UP, mask, var, (int)delta, width, file, line);
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
			  const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
	return ::simt::shfl(::simt::WOP_DOWN, mask, var, (int)delta, width, file, line);
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,
			 const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
	return ::simt::shfl(::simt::WOP_XOR, mask, var, lane_mask, width, file, line);
}

inline unsigned __ballot_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
			      int line = __builtin_LINE())
{
	return (unsigned)::simt::warp_op(::simt::WOP_BALLOT, mask, pred != 0, 0, 0, warpSize,
					 file, line);
}

inline int __any_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
		      int line = __builtin_LINE())
{
	return (int)::simt::warp_op(::simt::WOP_ANY, mask, pred != 0, 0, 0, warpSize, file, line);
}

inline int __all_sync(unsigned mask, int pred, const char *file = __builtin_FILE(),
		      int line = __builtin_LINE())
{
	return (int)::simt::warp_op(::simt::WOP_ALL, mask, pred != 0, 0, 0, warpSize, file, line);
}

/* ---- atomics (device-wide, also across blocks running in parallel) ---- */
inline int atomicAdd(int *p, int v) { return ::simt::atomic_add(p, v); }
inline unsigned atomicAdd(unsigned *p, unsigned v) { return ::simt::atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v)
{
	return ::simt::atomic_add(p, v);
}
inline float atomicAdd(float *p, float v) { return ::simt::atomic_add(p, v); }
inline double atomicAdd(double *p, double v) { return ::simt::atomic_add(p, v); }
inline int atomicSub(int *p, int v) { return ::simt::atomic_sub(p, v); }
inline unsigned atomicSub(unsigned *p, unsigned v) { return ::simt::atomic_sub(p, v); }
inline int atomicMax(int *p, int v) { return ::simt::atomic_max(p, v); }
inline unsigned atomicMax(unsigned *p, unsigned v) { return ::simt::atomic_max(p, v); }
inline int atomicMin(int *p, int v) { return ::simt::atomic_min(p, v); }
inline unsigned atomicMin(unsigned *p, unsigned v) { return ::simt::atomic_min(p, v); }
inline int atomicExch(int *p, int v) { return ::simt::atomic_exch(p, v); }
inline unsigned atomicExch(unsigned *p, unsigned v) { return ::simt::atomic_exch(p, v); }
inline unsigned long long atomicExch(unsigned long long *p, unsigned long long v)
{
	return ::simt::atomic_exch(p, v);
}
inline float atomicExch(float *p, float v) { return ::simt::atomic_exch(p, v); }
inline int atomicCAS(int *p, int cmp, int v) { return ::simt::atomic_cas(p, cmp, v); }
inline unsigned atomicCAS(unsigned *p, unsigned cmp, unsigned v)
{
	return ::simt::atomic_cas(p, cmp, v);
}
inline unsigned long long atomicCAS(unsigned long long *p, unsigned long long cmp,
				    unsigned long long v)
{
	return ::simt::atomic_cas(p, cmp, v);
}

/* ---- integer and float intrinsics ---- */
inline int __dp4a(int a, int b, int c)
{
	uint32_t acc = (uint32_t)c;

	for (int i = 0; i < 32; i += 8)
		acc += (uint32_t)((int)(int8_t)(a >> i) * (int)(int8_t)(b >> i));
	return (int)acc;
}

inline unsigned __dp4a(unsigned a, unsigned b, unsigned c)
{
	for (int i = 0; i < 32; i += 8)
		c += ((a >> i) & 0xff) * ((b >> i) & 0xff);
	return c;
}

inline int __dp4a(char4 a, char4 b, int c)
{
	return __dp4a((int)(uint32_t)::simt::to_bits(a), (int)(uint32_t)::simt::to_bits(b), c);
}

inline unsigned __dp4a(uchar4 a, uchar4 b, unsigned c)
{
	return __dp4a((unsigned)::simt::to_bits(a), (unsigned)::simt::to_bits(b), c);
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x)
{
	x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
	x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
	x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
	return __builtin_bswap32(x);
}
inline int __float_as_int(float f) { return (int)::simt::fbits(f); }
inline unsigned __float_as_uint(float f) { return ::simt::fbits(f); }
inline float __int_as_float(int i) { return ::simt::bitsf((uint32_t)i); }
inline float __uint_as_float(unsigned u) { return ::simt::bitsf(u); }

template <typename T> inline T __ldg(const T *p) { return *p; }

/*
 * The fast-math intrinsics are approximations on the GPU (a few ulp for
 * __expf); here they are the exact functions, so comparisons against the GPU
 * need a tolerance.
 */
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }

inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

#endif
