/* SPDX-License-Identifier: MIT */
/*
 * moectl tokenize [--json] [--special] [--bos] MODEL TEXT|-
 * moectl detokenize [--json] [--special] MODEL ID...
 *
 * Both open the model for metadata only, so vocab-only GGUF files work.  Options
 * may follow the arguments; a TEXT that starts with "-" goes after "--".
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe/moe.h"
#include "moectl.h"

static int open_tokenizer(const char *path, struct moe_model **m, struct moe_tokenizer **t)
{
	int ret = moe_model_open_flags(path, MOE_OPEN_METADATA_ONLY, m);

	if (ret)
		return fail("%s", moe_errmsg());
	ret = moe_tokenizer_load(*m, t);
	if (ret) {
		/* the caller closes *m on every path */
		*t = NULL;
		return fail("%s", moe_errmsg());
	}
	return 0;
}

static char *read_stdin(size_t *len)
{
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);

	while (buf) {
		size_t got;

		if (n == cap) {
			char *p = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);

			if (!p) {
				free(buf);
				return NULL;
			}
			buf = p;
			cap *= 2;
		}
		got = fread(buf + n, 1, cap - n, stdin);
		n += got;
		if (!got)
			break;
	}
	if (buf && ferror(stdin)) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}

static int tok_usage(const char *cmd)
{
	if (!strcmp(cmd, "tokenize"))
		return usage_error("usage: moectl tokenize [--json] [--special] [--bos] MODEL TEXT|-");
	return usage_error("usage: moectl detokenize [--json] [--special] MODEL ID...");
}

/* Options shared by both commands; returns -1 to go on, else an exit status. */
static int parse_opts(int argc, char **argv, bool *special, bool *bos)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "special", no_argument, NULL, 's' },
		{ "bos", no_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "jsbh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json_output = true;
			break;
		case 's':
			*special = true;
			break;
		case 'b':
			if (!bos)
				return tok_usage(argv[0]);
			*bos = true;
			break;
		case 'h':
			tok_usage(argv[0]);
			return 0;
		default:
			return tok_usage(argv[0]);
		}
	}
	return -1;
}

int do_tokenize(int argc, char **argv)
{
	bool special = false, bos = false;
	struct moe_tokenizer *t = NULL;
	struct moe_model *m = NULL;
	char *text, *owned = NULL;
	int32_t *ids = NULL;
	size_t len;
	int ret, n;

	ret = parse_opts(argc, argv, &special, &bos);
	if (ret >= 0)
		return ret;
	if (argc - optind != 2)
		return tok_usage("tokenize");
	text = argv[optind + 1];
	if (!strcmp(text, "-")) {
		errno = 0;
		owned = read_stdin(&len);
		if (!owned)
			return fail("reading the text from standard input: %s",
				    strerror(errno ? errno : ENOMEM));
		text = owned;
	} else {
		len = strlen(text);
	}
	ret = open_tokenizer(argv[optind], &m, &t);
	if (ret)
		goto out;
	n = moe_tokenize(t, text, len, (special ? MOE_TOK_PARSE_SPECIAL : 0) |
			 (bos ? MOE_TOK_ADD_BOS : 0), NULL, 0);
	if (n >= 0) {
		ids = malloc(((size_t)n + 1) * sizeof(*ids));
		n = ids ? moe_tokenize(t, text, len, (special ? MOE_TOK_PARSE_SPECIAL : 0) |
				       (bos ? MOE_TOK_ADD_BOS : 0), ids, n) : -ENOMEM;
	}
	if (n < 0) {
		ret = fail("%s", n == -ENOMEM ? "out of memory" : moe_errmsg());
		goto out;
	}
	if (json_output) {
		json_t *o = json_object(), *jids = json_array(), *pieces = json_array();

		tj_set(o, "count", tj_i64(n));
		for (int i = 0; i < n; i++)
			tj_push(jids, tj_i64(ids[i]));
		/*
		 * A piece that is not UTF-8 on its own (half of a character split
		 * across tokens) shows U+FFFD where the bytes were; the ids are exact.
		 */
		for (int i = 0; i < n; i++) {
			int pl = moe_token_to_piece(t, ids[i], NULL, 0);
			char *p = pl >= 0 ? malloc((size_t)pl + 1) : NULL;

			if (p && moe_token_to_piece(t, ids[i], p, pl) == pl)
				tj_push(pieces, tj_strn(p, (size_t)pl));
			else
				tj_push(pieces, tj_str(""));
			free(p);
		}
		tj_set(o, "ids", jids);
		tj_set(o, "pieces", pieces);
		if (tj_print(o)) {
			ret = 1;
			goto out;
		}
	} else {
		for (int i = 0; i < n; i++)
			printf("%s%d", i ? " " : "", ids[i]);
		printf("\n");
	}
	ret = 0;
out:
	free(ids);
	free(owned);
	moe_tokenizer_destroy(t);
	moe_model_destroy(m);
	return ret;
}

int do_detokenize(int argc, char **argv)
{
	bool special = false;
	struct moe_tokenizer *t = NULL;
	struct moe_model *m = NULL;
	int32_t *ids = NULL;
	char *buf = NULL;
	int ret, n, len;

	ret = parse_opts(argc, argv, &special, NULL);
	if (ret >= 0)
		return ret;
	if (argc - optind < 1)
		return tok_usage("detokenize");
	n = argc - optind - 1;
	ids = malloc(((size_t)n + 1) * sizeof(*ids));
	if (!ids)
		return fail("out of memory");
	for (int i = 0; i < n; i++) {
		uint32_t v;

		if (tool_parse_u32("token id", argv[optind + 1 + i], 0, INT32_MAX, &v)) {
			free(ids);
			return EXIT_USAGE;
		}
		ids[i] = (int32_t)v;
	}
	ret = open_tokenizer(argv[optind], &m, &t);
	if (ret)
		goto out;
	len = moe_detokenize(t, ids, n, special ? MOE_DETOK_SPECIAL : 0, NULL, 0);
	if (len >= 0) {
		buf = malloc((size_t)len + 1);
		len = buf ? moe_detokenize(t, ids, n, special ? MOE_DETOK_SPECIAL : 0, buf, len)
			  : -ENOMEM;
	}
	if (len < 0) {
		ret = fail("%s", len == -ENOMEM ? "out of memory" : moe_errmsg());
		goto out;
	}
	buf[len] = 0;
	if (json_output) {
		json_t *o = json_object();

		tj_set(o, "text", tj_strn(buf, (size_t)len));
		if (tj_print(o)) {
			ret = 1;
			goto out;
		}
	} else {
		fwrite(buf, 1, (size_t)len, stdout);
		if (isatty(STDOUT_FILENO))
			printf("\n");
	}
	ret = 0;
out:
	free(buf);
	free(ids);
	moe_tokenizer_destroy(t);
	moe_model_destroy(m);
	return ret;
}
