/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <string.h>

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
	ck_assert_int_eq(moe_type_block_elems(4), -EINVAL);
	ck_assert_int_eq(moe_type_block_bytes(MOE_TYPE_COUNT), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "unknown tensor type id 40"));
	ck_assert_int_eq(moe_type_row_bytes(MOE_TYPE_Q4_K, 512), 288);
	ck_assert_int_eq(moe_type_row_bytes(MOE_TYPE_Q4_K, 100), -EINVAL);
	ck_assert_int_eq(moe_type_row_bytes(MOE_TYPE_F16, 7), 14);
	ck_assert_int_eq(moe_type_row_bytes(99, 32), -EINVAL);
}
END_TEST

START_TEST(parse_size)
{
	uint64_t v = 0;

	ck_assert_int_eq(moe_parse_size("1500000000", &v), 0);
	ck_assert_uint_eq(v, 1500000000);
	ck_assert_int_eq(moe_parse_size("512K", &v), 0);
	ck_assert_uint_eq(v, 512 * 1024);
	ck_assert_int_eq(moe_parse_size("20MiB", &v), 0);
	ck_assert_uint_eq(v, 20ull << 20);
	ck_assert_int_eq(moe_parse_size("1.5G", &v), 0);
	ck_assert_uint_eq(v, 3ull << 29);
	ck_assert_int_eq(moe_parse_size("2TB", &v), 0);
	ck_assert_uint_eq(v, 2ull << 40);
	ck_assert_int_eq(moe_parse_size("64B", &v), 0);
	ck_assert_uint_eq(v, 64);
	v = 7;
	ck_assert_int_eq(moe_parse_size("", &v), -EINVAL);
	ck_assert_int_eq(moe_parse_size("-1G", &v), -EINVAL);
	ck_assert_int_eq(moe_parse_size("0", &v), -EINVAL);
	ck_assert_int_eq(moe_parse_size("12X", &v), -EINVAL);
	ck_assert_int_eq(moe_parse_size("1iB", &v), -EINVAL);
	ck_assert_int_eq(moe_parse_size("99999999T", &v), -EINVAL);
	ck_assert_int_eq(moe_parse_size("nan", &v), -EINVAL);
	ck_assert_uint_eq(v, 7);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "'nan' is not a size"));
}
END_TEST

Suite *suite_types(void)
{
	Suite *s = suite_create("types");
	TCase *tc = tcase_create("table");

	tcase_add_test(tc, type_table);
	tcase_add_test(tc, parse_size);
	suite_add_tcase(s, tc);
	return s;
}
