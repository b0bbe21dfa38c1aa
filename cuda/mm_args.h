/* SPDX-License-Identifier: MIT */
/*
 * What the host side of the matrix ops (libmoe/backend/cuda_mm.c, C) hands
 * the kernels of cuda/mm.cu (CUDA C++): plain structs of fixed-width fields,
 * 8-byte aligned, so that both compilers lay them out alike.  Device
 * addresses are uint64_t (CUdeviceptr).
 */
#ifndef MOE_CUDA_MM_ARGS_H
#define MOE_CUDA_MM_ARGS_H

#include <stdint.h>

/* The GGML type ids the kernels know (include/moe/moe.h's MOE_TYPE_*). */
enum {
	MOE_MM_F32 = 0,
	MOE_MM_F16 = 1,
	MOE_MM_Q4_0 = 2,
	MOE_MM_Q4_1 = 3,
	MOE_MM_Q5_0 = 6,
	MOE_MM_Q5_1 = 7,
	MOE_MM_Q8_0 = 8,
	MOE_MM_Q4_K = 12,
	MOE_MM_Q5_K = 13,
	MOE_MM_Q6_K = 14,
	MOE_MM_BF16 = 30,
	MOE_MM_MXFP4 = 39,
};

/*
 * One product y = W x over n_tok tokens.  Token t reads the f32 row
 *   x + (x_idx ? x_idx[t] / x_div : t) * x_stride   (floats),
 * multiplied by x_scale[x_idx[t]] when x_scale is set, and writes output r to
 *   y + (y_idx ? y_idx[t] : t) * y_stride + r,
 * as (dot + (bias ? bias[r] : 0)) * (oscale ? oscale[0] : 1).  The index
 * arrays are int32 entries (the FFN's gathered rows).
 */
struct moe_mm_prob {
	uint64_t w;             /* row 0 of the matrix */
	uint64_t row_bytes;
	uint64_t x, x_idx, x_scale;
	uint64_t y, y_idx;
	uint64_t bias, oscale;
	uint32_t type, rows, cols, n_tok;
	uint32_t x_stride, y_stride, x_div, pad;
};

/*
 * The GLU of one FFN over its m entries (rows e0.. of the gate/up and hidden
 * buffers): h[e][i] = act(gu[e][i] + gate_b[i], gu[e][nff + i] + up_b[i]).
 */
struct moe_mm_glu_desc {
	uint64_t gate_b, up_b;
	uint32_t e0, m, nff, pad;
};

#endif
