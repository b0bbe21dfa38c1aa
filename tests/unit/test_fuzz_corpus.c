/* SPDX-License-Identifier: MIT */
/*
 * Replays every saved fuzz input (tests/fuzz/corpus/NAME/) through its target
 * fuzz_NAME(): crashes found by `make fuzz` stay fixed.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

typedef int (*fuzz_fn)(const uint8_t *data, size_t size);

int fuzz_gguf(const uint8_t *data, size_t size);
int fuzz_tokenizer(const uint8_t *data, size_t size) __attribute__((weak));

static const struct { const char *name; fuzz_fn *fn; } targets[] = {
	{ "gguf", &(fuzz_fn){ fuzz_gguf } },
	{ "tokenizer", &(fuzz_fn){ fuzz_tokenizer } },
};

static fuzz_fn target_for(const char *name)
{
	for (unsigned i = 0; i < sizeof(targets) / sizeof(targets[0]); i++)
		if (!strcmp(targets[i].name, name))
			return *targets[i].fn;
	return NULL;
}

START_TEST(replay)
{
	char dir[4096];
	DIR *top, *d;
	struct dirent *e, *f;
	unsigned n = 0;

	snprintf(dir, sizeof(dir), "%s", tu_src("tests/fuzz/corpus"));
	top = opendir(dir);
	ck_assert_msg(top != NULL, "no corpus directory %s", dir);
	while ((e = readdir(top))) {
		fuzz_fn fn;
		char sub[4400];

		if (e->d_name[0] == '.')
			continue;
		fn = target_for(e->d_name);
		ck_assert_msg(fn != NULL, "corpus '%s' has no fuzz target fuzz_%s()", e->d_name,
			      e->d_name);
		snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
		d = opendir(sub);
		ck_assert_ptr_nonnull(d);
		while ((f = readdir(d))) {
			char path[4800];
			size_t len;
			void *data;

			if (f->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "%s/%s", sub, f->d_name);
			data = tu_read_file(path, &len);
			ck_assert_ptr_nonnull(data);
			fn(data, len);
			free(data);
			n++;
		}
		closedir(d);
	}
	closedir(top);
	ck_assert_uint_gt(n, 0);
}
END_TEST

Suite *suite_fuzz_corpus(void)
{
	Suite *s = suite_create("fuzz_corpus");
	TCase *tc = tcase_create("replay");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, replay);
	suite_add_tcase(s, tc);
	return s;
}
