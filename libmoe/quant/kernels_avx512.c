/* SPDX-License-Identifier: MIT */
/* AVX-512 F/BW/VL/DQ kernels without VNNI; built with those flags (Makefile). */
#define AVX512_TABLE moe_avx512_kernels
#define AVX512_COUNT moe_avx512_kernel_count
#include "quant/kernels_avx512.h"
