// SPDX-License-Identifier: MIT
/*
 * moe.h as a C++ program sees it: built with -std=c++11 -Wall -Wextra
 * -pedantic -Werror by make (a warning fails the build), linked with the
 * static library and run by the platform suite.
 */
#include <moe/moe.h>

#include <cstdio>
#include <cstring>

int main()
{
	struct moe_ctx_params p;
	struct moe_sample_params sp;
	struct moe_io_params io;
	uint64_t n = 0;

	moe_ctx_params_init(&p);
	moe_sample_params_init(&sp);
	moe_io_params_init(&io);
	if (moe_parse_size("2M", &n) != 0 || n != 2u << 20)
		return 1;
	if (std::strcmp(moe_type_name(MOE_TYPE_Q8_0), "q8_0") != 0)
		return 1;
	if (moe_type_from_name("q4_K") != MOE_TYPE_Q4_K || io.numa_node != -1 || sp.top_p != 1.0f)
		return 1;
	std::printf("c++ ok: %s\n", moe_backend_list());
	return 0;
}
