/* SPDX-License-Identifier: MIT */
/*
 * The type traits table: one entry per GGML type id, indexed by the id.
 * The quant module fills in the kernels; the GGUF reader and the planner
 * only need names and block sizes.
 */
#ifndef MOE_QUANT_H
#define MOE_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe/moe.h"

struct moe_type_traits {
	const char *name;
	uint32_t block;         /* elements per block; 0 = unknown/retired id */
	uint32_t bytes;         /* bytes per block */
	bool quantized;
	/* kernels; NULL where the type has none (integer and IQ types) */
	void (*to_float)(const void *src, float *dst, int64_t n);      /* dequantize n elems */
	size_t (*from_float)(const float *src, void *dst, int64_t n);   /* quantize; bytes */
	/*
	 * Activations, where this type is a vec_dot type: rounded as llama.cpp's
	 * x86 CPU backend rounds them, so products match it; NULL: from_float.
	 */
	size_t (*act_from_float)(const float *src, void *dst, int64_t n);
	uint32_t vec_dot_type;                                          /* activation type */
	/* *out = dot(w_row, act_row) over n elements; act_row is of vec_dot_type */
	void (*vec_dot)(int64_t n, float *out, const void *w_row, const void *act_row);
	/*
	 * Optional (NULL: call vec_dot 4 times): out[t*out_stride] = dot(w_row,
	 * act + t*act_stride bytes) for t < 4, decoding the weight row once.
	 */
	void (*vec_dot_x4)(int64_t n, float *out, size_t out_stride, const void *w_row,
			   const void *act, size_t act_stride);
	/*
	 * Optional (NULL: call vec_dot 4 times): out[r] = dot(w + r*w_stride
	 * bytes, act) for r < 4, one activation row read once for four weight
	 * rows; each result is vec_dot's bit for bit.
	 */
	void (*vec_dot_r4)(int64_t n, float *out, const void *w, size_t w_stride,
			   const void *act);
};

/*
 * The instruction sets the kernels come in, each level using the one below
 * for what it does not replace.  One is chosen once per process: the best the
 * CPU and OS support, or the one named by MOE_CPU_ISA (scalar, avx2, avx512,
 * avx512vnni) when the CPU has it; MOE_NO_SIMD=1 is MOE_CPU_ISA=scalar.
 */
enum moe_cpu_isa {
	MOE_ISA_SCALAR,
	MOE_ISA_AVX2,           /* AVX2 + FMA + F16C */
	MOE_ISA_AVX512,         /* and AVX-512 F, BW, VL, DQ */
	MOE_ISA_AVX512VNNI,     /* and AVX-512 VNNI */
	MOE_ISA_COUNT
};

/* NULL for an id outside the table or a retired id; else the chosen ISA's kernels. */
const struct moe_type_traits *moe_type_traits(uint32_t type);
/* The scalar reference kernels, whatever the CPU. */
const struct moe_type_traits *moe_type_traits_scalar(uint32_t type);
/* Whether this CPU (and OS) can run @isa's kernels. */
bool moe_quant_isa_available(enum moe_cpu_isa isa);
/* "scalar", "avx2", "avx512", "avx512vnni" (NULL out of range). */
const char *moe_quant_isa_name(enum moe_cpu_isa isa);
/*
 * For tests and benchmarks: every later moe_type_traits() returns @isa's
 * kernels; -EOPNOTSUPP (nothing changed) where the CPU lacks it.
 */
int moe_quant_force_isa(enum moe_cpu_isa isa);
/* For tests: scalar (true) or back to the ISA chosen at start-up (false). */
void moe_quant_force_scalar(bool scalar);
/* The name of the ISA in use, as moe_quant_isa_name(). */
const char *moe_quant_simd_name(void);

/* Rows done together for every token, so a row is read from memory once per call. */
#define MOE_MM_ROW_TILE 4

/*
 * One product y = W x whose activations are already in the weight type's
 * vec_dot type: the piece both moe_matmul and the CPU backend's fused
 * operations split over threads by row ranges.
 */
struct moe_mm {
	const struct moe_type_traits *t;    /* the weight type */
	const struct moe_type_traits *at;   /* its activation type */
	const uint8_t *w;
	size_t w_row_bytes;
	int64_t rows, cols, n_tok;
	const uint8_t *act;                 /* n_tok rows of act_row_bytes */
	size_t act_row_bytes;
	float *y;                           /* y[t * y_stride + r] */
	int64_t y_stride;
};

/* Check the type and shape, fill the weight side (y_stride = rows). */
int moe_mm_init(struct moe_mm *mm, uint32_t wtype, const void *w, int64_t rows, int64_t cols);
/* One row of cols floats into mm's activation type (a copy for float weights). */
void moe_mm_quantize(const struct moe_mm *mm, const float *x, void *dst);
/* Rows [r0, r1) for every token; the same sums in the same order whatever the split. */
void moe_mm_rows(const struct moe_mm *mm, int64_t r0, int64_t r1);

/*
 * Also used inside libmoe, declared in moe.h (section: quant):
 *   moe_matmul(pool, wtype, w, rows, cols, x, n_tok, y): y[t*rows + r] = dot(row r
 *     of W, token t of x); x is quantized to the type's vec_dot_type once per call;
 *     parallel over rows on pool (NULL: single thread).
 *   moe_dequant_row(type, w, cols, row, dst): one row to f32 (embedding lookups).
 *   moe_dequantize / moe_quantize: n elements, n a multiple of the block.
 *   moe_threadpool_* (util/threadpool.h).
 */

#endif
