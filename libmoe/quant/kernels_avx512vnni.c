/* SPDX-License-Identifier: MIT */
/* The AVX-512 kernels with VPDPBUSD/VPDPWSSD; built with -mavx512vnni as well (Makefile). */
#define AVX512_TABLE moe_avx512vnni_kernels
#define AVX512_COUNT moe_avx512vnni_kernel_count
#include "quant/kernels_avx512.h"
