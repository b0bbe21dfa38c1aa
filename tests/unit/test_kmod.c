/* SPDX-License-Identifier: MIT */
/*
 * The moe.ko client without the driver: the extent table it registers, and
 * the errors that say what to do when moe.ko is not loaded.  The driver
 * itself is tested under QEMU (make vm-check).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/kmod.h"
#include "testutil.h"

static char *make_model(char **dir)
{
	static char path[4096];
	char cmd[8192];

	*dir = tu_tmpdir();
	snprintf(path, sizeof(path), "%s/m.gguf", *dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --layers 3 --experts 4 -o %s",
		 tu_bin("moe-mkmodel"), path);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	return path;
}

START_TEST(kmod_expert_extents)
{
	struct moe_kmod k = { .fd = -1, .align = 4096, .max_batch = 64, .max_extents = 1000 };
	struct moe_model_summary sum;
	struct drm_moe_extent *ext;
	struct moe_model *m;
	char *dir, *path = make_model(&dir);
	uint32_t n, i = 0;

	ck_assert_int_eq(moe_model_open(path, &m), 0);
	ck_assert_int_eq(moe_model_summary(m, &sum), 0);
	ck_assert_int_eq(moe_kmod_expert_extents(&k, m, sum.file_bytes, &ext, &n), 0);
	/* qwen3moe: gate, up, down per expert on every layer. */
	ck_assert_uint_eq(n, 3 * 4 * 3);
	for (uint32_t l = 0; l < 3; l++) {
		for (uint32_t e = 0; e < 4; e++) {
			struct moe_expert ex;

			ck_assert_int_eq(moe_model_expert(m, l, e, &ex), 0);
			for (uint32_t j = 0; j < ex.n_mats; j++, i++) {
				const struct moe_extent *x = &ex.mats[j];

				ck_assert_uint_eq(ext[i].offset % 4096, 0);
				ck_assert_uint_eq(ext[i].length % 4096, 0);
				ck_assert_uint_le(ext[i].offset, x->offset);
				ck_assert_uint_ge(ext[i].offset + ext[i].length, x->offset + x->bytes);
				ck_assert_uint_lt(x->offset - ext[i].offset, 4096);
				ck_assert_uint_le(ext[i].offset + ext[i].length,
						  (sum.file_bytes + 4095) / 4096 * 4096);
			}
		}
	}
	ck_assert_uint_eq(i, n);
	free(ext);

	k.max_extents = 10;
	ck_assert_int_eq(moe_kmod_expert_extents(&k, m, sum.file_bytes, &ext, &n), -E2BIG);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "max_extents"));
	moe_model_close(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(kmod_no_driver)
{
	struct moe_kmod_model_info info;
	struct moe_kmod *k = (void *)1;

	ck_assert_int_eq(moe_kmod_open(&k), -ENODEV);
	ck_assert_ptr_null(k);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "modprobe moe"));
	ck_assert_int_eq(moe_kmod_open(NULL), -EINVAL);
	ck_assert_int_eq(moe_kmod_find(NULL, "x", &info), -EINVAL);
	ck_assert_int_eq(moe_kmod_next(NULL, 0, &info), -EINVAL);
	ck_assert_int_eq(moe_kmod_register(NULL, "x", NULL, NULL), -EINVAL);
	ck_assert_int_eq(moe_kmod_unregister(NULL, "x"), -EINVAL);
	ck_assert_int_eq(moe_kmod_warm(NULL, "x", NULL, NULL), -EINVAL);
	moe_kmod_close(NULL);
}
END_TEST

START_TEST(kmod_moectl_no_driver)
{
	char cmd[4096], *out = NULL;

	snprintf(cmd, sizeof(cmd), "%s status", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "moe.ko is not loaded: run `modprobe moe`"));
	free(out);
	snprintf(cmd, sizeof(cmd), "%s unload", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
	snprintf(cmd, sizeof(cmd), "%s load onlyname", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
	/* A broken model is refused before the driver is even looked for. */
	snprintf(cmd, sizeof(cmd), "%s load x /nonexistent/model.gguf", tu_bin("moectl"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_ptr_nonnull(strstr(out, "/nonexistent/model.gguf"));
	free(out);
}
END_TEST

Suite *suite_kmod(void)
{
	Suite *s = suite_create("kmod");
	TCase *tc = tcase_create("client");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, kmod_expert_extents);
	if (access("/sys/module/moe", F_OK)) {
		tcase_add_test(tc, kmod_no_driver);
		tcase_add_test(tc, kmod_moectl_no_driver);
	} else {
		tu_skip("kmod_no_driver", "moe.ko is loaded on this machine");
		tu_skip("kmod_moectl_no_driver", "moe.ko is loaded on this machine");
	}
	suite_add_tcase(s, tc);
	return s;
}
