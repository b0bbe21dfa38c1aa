/* SPDX-License-Identifier: MIT */
/*
 * Kernels that exercise every feature of the CUDA emulation (run by
 * tests/unit/test_simt.c through simt_launch and the fake driver), and
 * kernels with the bugs it must report.  The file is valid CUDA: make check
 * also compiles it with nvcc when nvcc is there, except where noted.
 */
#include "common.cuh"

static_assert(sizeof(float2) == 8 && alignof(float2) == 8, "float2");
static_assert(sizeof(float4) == 16 && alignof(float4) == 16, "float4");
static_assert(sizeof(int2) == 8 && alignof(int2) == 8, "int2");
static_assert(sizeof(int4) == 16 && alignof(int4) == 16, "int4");
static_assert(sizeof(uint4) == 16 && alignof(uint4) == 16, "uint4");
static_assert(sizeof(char4) == 4 && alignof(char4) == 4, "char4");
static_assert(sizeof(uchar4) == 4 && alignof(uchar4) == 4, "uchar4");
static_assert(sizeof(__half) == 2 && sizeof(__half2) == 4, "half");
static_assert(sizeof(__nv_bfloat16) == 2 && sizeof(__nv_bfloat162) == 4, "bfloat16");

static __device__ __forceinline__ unsigned lin_tid()
{
	return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

static __device__ __forceinline__ unsigned lin_bid()
{
	return blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
}

static __device__ __forceinline__ unsigned nthreads()
{
	return blockDim.x * blockDim.y * blockDim.z;
}

/* Mask of the lanes of the caller's warp that exist in the block. */
static __device__ __forceinline__ unsigned warp_lanes()
{
	unsigned n = nthreads() - lin_tid() / 32 * 32;

	return n >= 32 ? 0xffffffffu : (1u << n) - 1;
}

/* out[block] = sum of in[block * per .. + per): a shared-memory tree for any block shape. */
extern "C" __global__ void st_block_sum(const float *in, float *out, int per)
{
	MOE_SHARED(float, buf, 1024);
	unsigned t = lin_tid(), nt = nthreads(), p = 1;
	const float *x = in + (size_t)lin_bid() * per;
	float acc = 0;

	for (int i = (int)t; i < per; i += (int)nt)
		acc += x[i];
	buf[t] = acc;
	__syncthreads();
	while (p * 2 <= nt)
		p *= 2;
	if (t < nt - p)
		buf[t] += buf[t + p];
	__syncthreads();
	for (unsigned s = p / 2; s > 0; s >>= 1) {
		if (t < s)
			buf[t] += buf[t + s];
		__syncthreads();
	}
	if (t == 0)
		out[lin_bid()] = buf[0];
}
MOE_KERNEL(st_block_sum);

/* out[block] = sum of the block's in[]: shuffles within warps, then shared memory. */
extern "C" __global__ void st_warp_sum(const float *in, float *out)
{
	MOE_SHARED(float, sums, 32);
	unsigned t = lin_tid(), nt = nthreads(), lane = t % 32, mask = warp_lanes();
	unsigned nl = __popc(mask);
	float v = in[(size_t)lin_bid() * nt + t];

	for (unsigned off = 16; off > 0; off >>= 1) {
		/* lanes past the warp's last one return an undefined value: not used */
		float o = __shfl_down_sync(mask, v, off);

		if (lane + off < nl)
			v += o;
	}
	if (lane == 0)
		sums[t / 32] = v;
	__syncthreads();
	if (t == 0) {
		float s = 0;

		for (unsigned i = 0; i < (nt + 31) / 32; i++)
			s += sums[i];
		out[lin_bid()] = s;
	}
}
MOE_KERNEL(st_warp_sum);

/* out[i] = sum over in[i]'s warp, in every lane (butterfly); full warps only. */
extern "C" __global__ void st_warp_allsum(const float *in, float *out)
{
	size_t i = (size_t)lin_bid() * nthreads() + lin_tid();
	float v = in[i];

	for (int m = 1; m < 32; m <<= 1)
		v += __shfl_xor_sync(0xffffffffu, v, m);
	out[i] = v;
}
MOE_KERNEL(st_warp_allsum);

/*
 * out[i] = the shuffle @op (0 idx, 1 up, 2 down, 3 xor) of 1000 * block + thread
 * by arg[thread], among the lanes of @mask (the others write -2 and leave).
 */
extern "C" __global__ void st_shfl(const int *arg, int *out, int op, int width, unsigned mask)
{
	unsigned t = lin_tid();
	int v = (int)(1000 * lin_bid() + t), a = arg[t], r = 0;
	size_t i = (size_t)lin_bid() * nthreads() + t;

	if (!(mask >> (t % 32) & 1)) {
		out[i] = -2;
		return;
	}
	switch (op) {
	case 0:
		r = __shfl_sync(mask, v, a, width);
		break;
	case 1:
		r = __shfl_up_sync(mask, v, (unsigned)a, width);
		break;
	case 2:
		r = __shfl_down_sync(mask, v, (unsigned)a, width);
		break;
	case 3:
		r = __shfl_xor_sync(mask, v, a, width);
		break;
	}
	out[i] = r;
}
MOE_KERNEL(st_shfl);

/* Lane l receives lane l ^ 1's value in every type a shuffle takes. */
extern "C" __global__ void st_shfl_types(double *od, long long *ol, float *of, unsigned *ou,
					 unsigned short *oh, unsigned short *ob, unsigned *oh2)
{
	unsigned t = lin_tid();
	double d = t + 0.25;
	long long l = (long long)t << 40 | t;
	float f = t * 0.5f;
	unsigned u = 0xabc00000u | t;
	__half h = __float2half((float)t);
	__nv_bfloat16 b = __float2bfloat16((float)t);
	__half2 h2 = make_half2(__float2half((float)t), __float2half(-(float)t));

	od[t] = __shfl_xor_sync(0xffffffffu, d, 1);
	ol[t] = __shfl_xor_sync(0xffffffffu, l, 1);
	of[t] = __shfl_xor_sync(0xffffffffu, f, 1);
	ou[t] = __shfl_xor_sync(0xffffffffu, u, 1);
	oh[t] = __half_as_ushort(__shfl_xor_sync(0xffffffffu, h, 1));
	ob[t] = __bfloat16_as_ushort(__shfl_xor_sync(0xffffffffu, b, 1));
	h2 = __shfl_xor_sync(0xffffffffu, h2, 1);
	oh2[t] = (unsigned)__half_as_ushort(__low2half(h2)) |
		 (unsigned)__half_as_ushort(__high2half(h2)) << 16;
}
MOE_KERNEL(st_shfl_types);

/*
 * Votes over the lanes that exist (any block size), then votes of the even
 * and the odd lanes of a warp at once, in two divergent groups.
 */
extern "C" __global__ void st_vote(const int *pred, unsigned *out)
{
	unsigned t = lin_tid(), mask = warp_lanes(), half;
	size_t i = (size_t)lin_bid() * nthreads() + t;
	int p = pred[i];

	out[6 * i + 0] = __ballot_sync(mask, p);
	out[6 * i + 1] = (unsigned)__any_sync(mask, p);
	out[6 * i + 2] = (unsigned)__all_sync(mask, p);
	out[6 * i + 3] = __activemask();
	half = mask & (t % 2 ? 0xaaaaaaaau : 0x55555555u);
	if (t % 2)
		out[6 * i + 4] = __ballot_sync(half, p);
	else
		out[6 * i + 4] = __ballot_sync(half, !p);
	__syncwarp(mask);
	out[6 * i + 5] = __ballot_sync(mask, t % 3 == 0);
}
MOE_KERNEL(st_vote);

/* Every atomic from every thread of every block; see test_simt.c for the sums. */
struct st_counters {
	int add_i;
	unsigned add_u;
	unsigned long long add_ull;
	float add_f;
	double add_d;
	int max_i, min_i;
	unsigned max_u, min_u;
	int sub_i;
	unsigned sub_u;
	int exch_slot;
	int exch_sum;
	unsigned cas_sum;
	unsigned long long cas_ull;
	unsigned shared_total;
	float exch_f;
	unsigned exch_u;
	unsigned long long exch_ull;
};

extern "C" __global__ void st_atomics(st_counters *c)
{
	MOE_SHARED(unsigned, cnt, 1);
	unsigned t = lin_tid();
	int g = (int)(lin_bid() * nthreads() + t);
	unsigned old, seen;
	unsigned long long oldl, seenl;

	if (t == 0)
		cnt[0] = 0;
	__syncthreads();
	atomicAdd(&c->add_i, 1);
	atomicAdd(&c->add_u, 2u);
	atomicAdd(&c->add_ull, 1ull << 33);
	atomicAdd(&c->add_f, 0.5f);
	atomicAdd(&c->add_d, 0.25);
	atomicMax(&c->max_i, g - 100);
	atomicMin(&c->min_i, g - 100);
	atomicMax(&c->max_u, (unsigned)g);
	atomicMin(&c->min_u, (unsigned)g + 7);
	atomicSub(&c->sub_i, 3);
	atomicSub(&c->sub_u, 1u);
	atomicAdd(&c->exch_sum, atomicExch(&c->exch_slot, g + 1));
	atomicExch(&c->exch_f, 1.5f);
	atomicExch(&c->exch_u, 7u);
	atomicExch(&c->exch_ull, 1ull << 40);
	old = c->cas_sum;
	do {
		seen = old;
		old = atomicCAS(&c->cas_sum, seen, seen + 3);
	} while (old != seen);
	oldl = c->cas_ull;
	do {
		seenl = oldl;
		oldl = atomicCAS(&c->cas_ull, seenl, seenl + 5);
	} while (oldl != seenl);
	atomicAdd(&cnt[0], 1u);
	__threadfence_block();
	__syncthreads();
	if (t == 0) {
		__threadfence();
		atomicAdd(&c->shared_total, cnt[0]);
	}
}
MOE_KERNEL(st_atomics);

extern "C" __global__ void st_dp4a(const int *a, const int *b, const int *c, int *os,
				   unsigned *ou, int *oc, unsigned *ouc, int n)
{
	int i = (int)(lin_bid() * nthreads() + lin_tid());
	char4 ca, cb;
	uchar4 ua, ub;

	if (i >= n)
		return;
	os[i] = __dp4a(a[i], b[i], c[i]);
	ou[i] = __dp4a((unsigned)a[i], (unsigned)b[i], (unsigned)c[i]);
	ca = make_char4((signed char)a[i], (signed char)(a[i] >> 8), (signed char)(a[i] >> 16),
			(signed char)(a[i] >> 24));
	cb = make_char4((signed char)b[i], (signed char)(b[i] >> 8), (signed char)(b[i] >> 16),
			(signed char)(b[i] >> 24));
	oc[i] = __dp4a(ca, cb, c[i]);
	ua = make_uchar4((unsigned char)a[i], (unsigned char)(a[i] >> 8),
			 (unsigned char)(a[i] >> 16), (unsigned char)(a[i] >> 24));
	ub = make_uchar4((unsigned char)b[i], (unsigned char)(b[i] >> 8),
			 (unsigned char)(b[i] >> 16), (unsigned char)(b[i] >> 24));
	ouc[i] = __dp4a(ua, ub, (unsigned)c[i]);
}
MOE_KERNEL(st_dp4a);

/* Conversions to half and bfloat16 bits and back, and the pair types. */
extern "C" __global__ void st_half(const float *in, unsigned short *h, unsigned short *bf,
				   float *hf, float *bff, float *pairs, int n)
{
	int i = (int)(lin_bid() * nthreads() + lin_tid());
	__half2 h2;
	__nv_bfloat162 b2;
	float2 f2;

	if (i >= n)
		return;
	h[i] = __half_as_ushort(__float2half_rn(in[i]));
	bf[i] = __bfloat16_as_ushort(__float2bfloat16_rn(in[i]));
	hf[i] = __half2float(__ushort_as_half(h[i]));
	bff[i] = __bfloat162float(__ushort_as_bfloat16(bf[i]));
	h2 = __halves2half2(__float2half(in[i]), __float2half(-in[i]));
	f2 = __half22float2(h2);
	b2 = __floats2bfloat162_rn(in[i], 2.0f * in[i]);
	pairs[7 * i + 0] = f2.x;
	pairs[7 * i + 1] = f2.y;
	pairs[7 * i + 2] = __low2float(b2);
	pairs[7 * i + 3] = __high2float(b2);
	pairs[7 * i + 4] = __low2float(__float2half2_rn(in[i]));
	pairs[7 * i + 5] = __bfloat1622float2(b2).y;
	pairs[7 * i + 6] = __high2float(__floats2half2_rn(2.0f, in[i]));
}
MOE_KERNEL(st_half);

/* Each block reverses its slice through dynamic shared memory (nthreads floats). */
extern "C" __global__ void st_dyn_reverse(const float *in, float *out)
{
	MOE_DYN_SHARED(float, s);
	unsigned t = lin_tid(), nt = nthreads();
	size_t base = (size_t)lin_bid() * nt;

	s[t] = in[base + t];
	__syncthreads();
	out[base + t] = s[nt - 1 - t];
}
MOE_KERNEL(st_dyn_reverse);

/* Every built-in index of every thread, 8 values per thread at its global linear id. */
extern "C" __global__ void st_index(unsigned *out)
{
	size_t g = (size_t)lin_bid() * nthreads() + lin_tid();
	dim3 b = blockDim;

	out[8 * g + 0] = threadIdx.x;
	out[8 * g + 1] = threadIdx.y;
	out[8 * g + 2] = threadIdx.z;
	out[8 * g + 3] = blockIdx.x;
	out[8 * g + 4] = blockIdx.y;
	out[8 * g + 5] = blockIdx.z;
	out[8 * g + 6] = b.x * 10000 + b.y * 100 + b.z;
	out[8 * g + 7] = gridDim.x * 10000 + gridDim.y * 100 + gridDim.z + warpSize * 1000000;
}
MOE_KERNEL(st_index);

/* out[t] = the order in which thread t passed the barrier (a ticket from a shared atomic). */
extern "C" __global__ void st_order(unsigned *out)
{
	MOE_SHARED(unsigned, next, 1);
	unsigned t = lin_tid();

	if (t == 0)
		next[0] = 0;
	__syncthreads();
	out[(size_t)lin_bid() * nthreads() + t] = atomicAdd(&next[0], 1u);
}
MOE_KERNEL(st_order);

/* Scalar intrinsics by thread 0; every thread reverses a float4 and an int4. */
extern "C" __global__ void st_misc(const float *x, float *of, int *oi, const float4 *v4,
				   float4 *o4, const int4 *i4, int4 *oi4)
{
	unsigned t = lin_tid();
	float4 v = __ldg(&v4[t]);
	int4 w = i4[t];
	float2 f2 = make_float2(v.x, v.y);
	int2 n2 = make_int2(w.x, w.y);
	uint2 u2 = make_uint2((unsigned)w.z, (unsigned)w.w);
	uint4 u4 = make_uint4(1, 2, 3, 4);

	o4[t] = make_float4(v.w, v.z, f2.y, f2.x);
	oi4[t] = make_int4((int)u2.y, (int)u2.x, n2.y, n2.x + (int)(u4.w - u4.z - u4.x));
	if (t)
		return;
	of[0] = __expf(x[0]);
	of[1] = __logf(x[1]);
	of[2] = rsqrtf(x[2]);
	of[3] = __fdividef(x[3], x[4]);
	of[4] = fmaf(x[0], x[1], x[2]);
	of[5] = min(x[0], x[1]);
	of[6] = max(x[0], x[1]);
	of[7] = __int_as_float(__float_as_int(x[0]) ^ (int)0x80000000);
	of[8] = __saturatef(x[5]);
	of[9] = __uint_as_float(__float_as_uint(x[1]));
	of[10] = __sinf(x[0]) + __cosf(x[0]) * 2.0f;
	of[11] = __powf(x[1], x[0]);
	oi[0] = __popc(0xf0f01u);
	oi[1] = __clz(1);
	oi[2] = __clz(0);
	oi[3] = __ffs(0);
	oi[4] = __ffs(0x100);
	oi[5] = (int)__brev(1u);
	oi[6] = min(-3, 5);
	oi[7] = (int)max(3u, 9u);
	oi[8] = __popcll(0xffull << 40);
	oi[9] = __clzll(1ll << 40);
	oi[10] = __ffsll(1ll << 50);
	oi[11] = (int)min(7ull, 5ull) + (int)max(-4ll, -9ll) * 10 +
		 (int)(min((size_t)3, (size_t)8) + max(1ul, 9ul)) * 100;
}
MOE_KERNEL(st_misc);

/* ---- kernels with the bugs the emulation must report ---- */

extern "C" __global__ void st_bug_barrier_sites(int *out)
{
	if (threadIdx.x < 16)
		__syncthreads();
	else
		__syncthreads();
	out[threadIdx.x] = 1;
}
MOE_KERNEL(st_bug_barrier_sites);

extern "C" __global__ void st_bug_barrier_exit(int *out)
{
	if (threadIdx.x == 5)
		return;
	__syncthreads();
	out[threadIdx.x] = 1;
}
MOE_KERNEL(st_bug_barrier_exit);

/* A full mask in a block whose last warp is short. */
extern "C" __global__ void st_bug_warp_lanes(int *out)
{
	out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x, 0);
}
MOE_KERNEL(st_bug_warp_lanes);

extern "C" __global__ void st_bug_warp_sites(int *out)
{
	int v = (int)threadIdx.x;

	if (threadIdx.x % 2)
		v = __shfl_xor_sync(0xffffffffu, v, 1);
	else
		v = __shfl_xor_sync(0xffffffffu, v, 2);
	out[threadIdx.x] = v;
}
MOE_KERNEL(st_bug_warp_sites);

extern "C" __global__ void st_bug_warp_self(int *out)
{
	out[threadIdx.x] = (int)__ballot_sync(0xfffffffeu, 1);
}
MOE_KERNEL(st_bug_warp_self);

extern "C" __global__ void st_bug_warp_width(int *out, int width)
{
	out[threadIdx.x] = __shfl_down_sync(0xffffffffu, (int)threadIdx.x, 1, width);
}
MOE_KERNEL(st_bug_warp_width);

extern "C" __global__ void st_bug_warp_exit(int *out)
{
	if (threadIdx.x == 3)
		return;
	__syncwarp();
	out[threadIdx.x] = 1;
}
MOE_KERNEL(st_bug_warp_exit);

/* Half a warp in a shuffle that names the whole warp, the other half at a barrier. */
extern "C" __global__ void st_bug_deadlock(int *out)
{
	int v = (int)threadIdx.x;

	if (threadIdx.x < 16)
		v = __shfl_xor_sync(0xffffffffu, v, 1);
	else
		__syncthreads();
	out[threadIdx.x] = v;
}
MOE_KERNEL(st_bug_deadlock);

/* 448 KiB of locals: past any emulated stack, within the GPU's 512 KiB per thread. */
extern "C" __global__ void st_bug_stack(int *out, int n)
{
	volatile char big[448 << 10];

	for (int i = 0; i < n; i += 1024)
		big[sizeof(big) - 1 - i] = (char)i;
	out[threadIdx.x] = big[sizeof(big) - 1 - (n / 2 & ~1023)];
}
MOE_KERNEL(st_bug_stack);

/* Reads a neighbour's slot in the interval it writes it. */
extern "C" __global__ void st_bug_race_read(const float *in, float *out)
{
	MOE_SHARED(float, buf, 256);
	unsigned t = threadIdx.x, n = blockDim.x;

	buf[t] = 0;
	__syncthreads();
	buf[t] = in[t];
	out[t] = buf[(t + 1) % n];
}
MOE_KERNEL(st_bug_race_read);

extern "C" __global__ void st_bug_race_write(float *out)
{
	MOE_SHARED(float, slot, 1);

	slot[0] = (float)threadIdx.x;
	__syncthreads();
	out[threadIdx.x] = slot[0];
}
MOE_KERNEL(st_bug_race_write);

/* The tree reduction without the barrier inside its loop. */
extern "C" __global__ void st_bug_race_reduce(const float *in, float *out)
{
	MOE_SHARED(float, buf, 256);
	unsigned t = threadIdx.x;

	buf[t] = in[t];
	__syncthreads();
	for (unsigned s = blockDim.x / 2; s > 0; s >>= 1)
		if (t < s)
			buf[t] += buf[t + s];
	__syncthreads();
	if (t == 0)
		out[0] = buf[0];
}
MOE_KERNEL(st_bug_race_reduce);

extern "C" __global__ void st_bug_uninit(float *out)
{
	MOE_SHARED(float, buf, 64);
	unsigned t = threadIdx.x;

	if (t < 32)
		buf[t] = 1.0f;
	__syncthreads();
	if (t < 32)
		out[t] = buf[t + 32];
}
MOE_KERNEL(st_bug_uninit);

extern "C" __global__ void st_bug_shared_oob(float *out, int i)
{
	MOE_SHARED(float, buf, 64);

	buf[threadIdx.x] = 1.0f;
	__syncthreads();
	out[threadIdx.x] = buf[i];
}
MOE_KERNEL(st_bug_shared_oob);

/* Dynamic shared memory for blockDim.x floats, written one float further. */
extern "C" __global__ void st_bug_dyn_oob(float *out)
{
	MOE_DYN_SHARED(float, s);

	s[threadIdx.x + 1] = 1.0f;
	if (threadIdx.x == 0)
		s[0] = 0.0f;
	__syncthreads();
	out[threadIdx.x] = s[threadIdx.x];
}
MOE_KERNEL(st_bug_dyn_oob);

extern "C" __global__ void st_bug_illegal(int *p)
{
	p[threadIdx.x * 1024] = 1;
}
MOE_KERNEL(st_bug_illegal);

/* Writes out[0 .. n] where the caller allocated n ints. */
extern "C" __global__ void st_bug_global_oob(int *out, int n)
{
	unsigned i = blockIdx.x * blockDim.x + threadIdx.x;

	if (i <= (unsigned)n)
		out[i] = (int)i;
}
MOE_KERNEL(st_bug_global_oob);

#ifndef __CUDACC__
/* 52 000 bytes of static shared memory: ptxas refuses it too, so nvcc never sees it. */
extern "C" __global__ void st_bug_static_limit(float *out)
{
	MOE_SHARED(float, big, 13000);

	big[threadIdx.x] = 1.0f;
	__syncthreads();
	out[threadIdx.x] = big[threadIdx.x];
}
MOE_KERNEL(st_bug_static_limit);
#endif
