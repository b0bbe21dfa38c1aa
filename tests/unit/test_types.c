/* SPDX-License-Identifier: MIT */
#include <errno.h>

#include "quant/quant.h"
#include "testutil.h"

START_TEST(type_table)
{
	ck_assert_str_eq(moe_type_name(MOE_TYPE_Q4_K), "q4_K");
	ck_assert_uint_eq(moe_type_block_elems(MOE_TYPE_Q4_K), 256);
	ck_assert_uint_eq(moe_type_block_bytes(MOE_TYPE_Q4_K), 144);
	ck_assert_uint_eq(moe_type_block_bytes(MOE_TYPE_MXFP4), 17);
	ck_assert_uint_eq(moe_type_block_bytes(MOE_TYPE_Q6_K), 210);
	ck_assert_int_eq(moe_type_from_name("Q8_0"), MOE_TYPE_Q8_0);
	ck_assert_int_eq(moe_type_from_name("nope"), -EINVAL);
	/* retired ids are unknown */
	ck_assert_ptr_null(moe_type_name(4));
	ck_assert_ptr_null(moe_type_name(31));
	ck_assert_ptr_null(moe_type_name(MOE_TYPE_COUNT));
	ck_assert_int_eq(moe_type_row_bytes(MOE_TYPE_Q4_K, 512), 288);
	ck_assert_int_eq(moe_type_row_bytes(MOE_TYPE_Q4_K, 100), -EINVAL);
	ck_assert_int_eq(moe_type_row_bytes(MOE_TYPE_F16, 7), 14);
	ck_assert_int_eq(moe_type_row_bytes(99, 32), -EINVAL);
}
END_TEST

Suite *suite_types(void)
{
	Suite *s = suite_create("types");
	TCase *tc = tcase_create("table");

	tcase_add_test(tc, type_table);
	suite_add_tcase(s, tc);
	return s;
}
