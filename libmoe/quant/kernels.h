/* SPDX-License-Identifier: MIT */
/* The per-type kernels behind the traits table (internal to libmoe/quant). */
#ifndef MOE_QUANT_KERNELS_H
#define MOE_QUANT_KERNELS_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "moe/moe.h"

#define MOE_KERNELS(T)                                                              \
	void moe_##T##_to_float(const void *src, float *dst, int64_t n);            \
	size_t moe_##T##_from_float(const float *src, void *dst, int64_t n);        \
	void moe_vec_dot_##T(int64_t n, float *out, const void *w, const void *a);

MOE_KERNELS(f32)
MOE_KERNELS(f16)
MOE_KERNELS(bf16)
MOE_KERNELS(q4_0)
MOE_KERNELS(q4_1)
MOE_KERNELS(q5_0)
MOE_KERNELS(q5_1)
MOE_KERNELS(q8_0)
MOE_KERNELS(mxfp4)
MOE_KERNELS(q4_k)
MOE_KERNELS(q5_k)
MOE_KERNELS(q6_k)
MOE_KERNELS(q8_k)

#undef MOE_KERNELS

/* q8_0 activations: 127/amax and nearest-even, as the x86 kernels of llama.cpp round them. */
size_t moe_q8_0_act_from_float(const float *src, void *dst, int64_t n);
/*
 * The K-quants' affine fit one candidate at a time, as quantize.c first
 * did it: the reference the vectorized fit must equal to the bit (tests).
 */
size_t moe_q4_k_from_float_ref(const float *src, void *dst, int64_t n);
size_t moe_q5_k_from_float_ref(const float *src, void *dst, int64_t n);
/* One sub-block's fit of x ~ scale*q - offset, q in [0, nmax]: vectorized, or the reference. */
void moe_k_fit_affine(const float *x, int n, int nmax, float *scale, float *offset, bool ref);
/* The vectorized fit's AVX2 build: -1 not decided yet, 0 off (the tests force it), 1 on. */
extern int moe_kfit_avx2;

/*
 * SIMD kernels for one instruction set, applied over the table of the level
 * below it (scalar < AVX2 < AVX-512 < AVX-512 VNNI); a NULL entry keeps the
 * kernel of that level.
 */
struct moe_simd_kernels {
	uint32_t type;
	void (*vec_dot)(int64_t n, float *out, const void *w, const void *a);
	size_t (*from_float)(const float *src, void *dst, int64_t n);
	size_t (*act_from_float)(const float *src, void *dst, int64_t n);
	void (*to_float)(const void *src, float *dst, int64_t n);
	void (*vec_dot_x4)(int64_t n, float *out, size_t out_stride, const void *w,
			   const void *a, size_t a_stride);
	void (*vec_dot_r4)(int64_t n, float *out, const void *w, size_t w_stride,
			   const void *a);
};
extern const struct moe_simd_kernels moe_avx2_kernels[];          /* kernels_avx2.c */
extern const int moe_avx2_kernel_count;
extern const struct moe_simd_kernels moe_avx512_kernels[];        /* kernels_avx512.c */
extern const int moe_avx512_kernel_count;
extern const struct moe_simd_kernels moe_avx512vnni_kernels[];    /* kernels_avx512vnni.c */
extern const int moe_avx512vnni_kernel_count;

#endif
