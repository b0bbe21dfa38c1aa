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
int fuzz_request(const uint8_t *data, size_t size);
int fuzz_engine(const uint8_t *data, size_t size);
int fuzz_grammar(const uint8_t *data, size_t size);
int fuzz_schema(const uint8_t *data, size_t size);
int fuzz_toolcall(const uint8_t *data, size_t size);

static const struct { const char *name; fuzz_fn *fn; } targets[] = {
	{ "gguf", &(fuzz_fn){ fuzz_gguf } },
	{ "tokenizer", &(fuzz_fn){ fuzz_tokenizer } },
	{ "request", &(fuzz_fn){ fuzz_request } },
	{ "engine", &(fuzz_fn){ fuzz_engine } },
	{ "grammar", &(fuzz_fn){ fuzz_grammar } },
	{ "schema", &(fuzz_fn){ fuzz_schema } },
	{ "toolcall", &(fuzz_fn){ fuzz_toolcall } },
};

static fuzz_fn target_for(const char *name)
{
	for (unsigned i = 0; i < sizeof(targets) / sizeof(targets[0]); i++)
		if (!strcmp(targets[i].name, name))
			return *targets[i].fn;
	return NULL;
}

/*
 * Feed every file of @dir to @fn.  A target returns 0 for an input it ran (a
 * crash or an abort() is the failure libFuzzer looks for); anything else
 * means the input was rejected and is no use as a regression input, so it
 * counts in *bad, the first one named in @first.  Returns the files replayed.
 */
static unsigned replay_dir(const char *dir, fuzz_fn fn, unsigned *bad, char *first, size_t len)
{
	struct dirent *f;
	unsigned n = 0;
	DIR *d = opendir(dir);

	ck_assert_msg(d != NULL, "cannot open %s", dir);
	while ((f = readdir(d))) {
		char path[4800];
		size_t size;
		void *data;
		int ret;

		if (f->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, f->d_name);
		data = tu_read_file(path, &size);
		ck_assert_msg(data != NULL, "cannot read %s", path);
		ret = fn(data, size);
		free(data);
		if (ret != 0 && !(*bad)++)
			snprintf(first, len, "%s (returned %d)", path, ret);
		n++;
	}
	closedir(d);
	return n;
}

START_TEST(replay)
{
	char dir[4096], first[4900] = "";
	struct dirent *e;
	unsigned total = 0, bad = 0;
	DIR *top;

	snprintf(dir, sizeof(dir), "%s", tu_src("tests/fuzz/corpus"));
	top = opendir(dir);
	ck_assert_msg(top != NULL, "no corpus directory %s", dir);
	while ((e = readdir(top))) {
		char sub[4400];
		fuzz_fn fn;
		unsigned n;

		if (e->d_name[0] == '.')
			continue;
		fn = target_for(e->d_name);
		ck_assert_msg(fn != NULL, "corpus '%s' has no fuzz target fuzz_%s()", e->d_name,
			      e->d_name);
		snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name);
		n = replay_dir(sub, fn, &bad, first, sizeof(first));
		ck_assert_msg(n > 0, "corpus '%s' is empty", e->d_name);
		total += n;
	}
	closedir(top);
	ck_assert_uint_gt(total, 0);
	ck_assert_msg(bad == 0, "%u corpus input(s) not run to the end by their target, first %s",
		      bad, first);
}
END_TEST

/* The replay counts what a target refuses: a target that fails every input is seen. */
static int refuse_x(const uint8_t *data, size_t size)
{
	return size && data[0] == 'x' ? -1 : 0;
}

START_TEST(replay_sees_refusals)
{
	char *dir = tu_tmpdir(), path[4096], first[4900] = "";
	unsigned bad = 0;

	ck_assert_ptr_nonnull(dir);
	snprintf(path, sizeof(path), "%s/good", dir);
	ck_assert_int_eq(tu_write_file(path, "ok", 2), 0);
	snprintf(path, sizeof(path), "%s/bad", dir);
	ck_assert_int_eq(tu_write_file(path, "xx", 2), 0);
	ck_assert_uint_eq(replay_dir(dir, refuse_x, &bad, first, sizeof(first)), 2);
	ck_assert_uint_eq(bad, 1);
	ck_assert_msg(strstr(first, "/bad (returned -1)"), "%s", first);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

Suite *suite_fuzz_corpus(void)
{
	Suite *s = suite_create("fuzz_corpus");
	TCase *tc = tcase_create("replay");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, replay);
	tcase_add_test(tc, replay_sees_refusals);
	suite_add_tcase(s, tc);
	return s;
}
