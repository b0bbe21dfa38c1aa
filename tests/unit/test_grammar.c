// SPDX-License-Identifier: MIT
/*
 * The grammar engine (libmoe/text/grammar.c) and the grammar sampler: strings
 * accepted and refused, byte-by-byte feeding equal to whole, UTF-8 classes,
 * repetition bounds, ambiguity, compile errors with their line:col, the
 * built-in JSON grammars, and sampling under a grammar over a vocabulary
 * built here (EOG only where the document is complete), with the cost per
 * token on 32k and 200k vocabularies printed; the JSON Schema converter, and
 * moe-run and moe-server constraining a generated model's random output to
 * a schema, checked by a validator of the subset here.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "engine/sampler.h"
#include "moe/moe.h"
#include "schema.h"
#include "text/grammar.h"
#include "text/tokenizer.h"
#include "text/unicode.h"
#include "testutil.h"

static struct moe_grammar *compile(const char *text)
{
	struct moe_grammar *g = NULL;

	ck_assert_msg(moe_grammar_create(text, strlen(text), &g) == 0, "%s: %s", text,
		      moe_errmsg());
	return g;
}

/* Whether @s is a whole document of @g, fed at once from the start. */
static bool whole(struct moe_grammar *g, const char *s, size_t len)
{
	ck_assert_int_eq(moe_grammar_reset(g), 0);
	return moe_grammar_accept(g, s, len) == 0 && moe_grammar_is_complete(g);
}

/* The same fed a byte at a time, checking moe_grammar_allows agrees with accept. */
static bool bytewise(struct moe_grammar *g, const char *s, size_t len)
{
	ck_assert_int_eq(moe_grammar_reset(g), 0);
	for (size_t i = 0; i < len; i++) {
		bool may = moe_grammar_allows(g, s + i, 1);
		int ret = moe_grammar_accept(g, s + i, 1);

		ck_assert_msg(may == (ret == 0), "allows %d but accept %d at byte %zu of '%s'", may,
			      ret, i, s);
		if (ret)
			return false;
	}
	return moe_grammar_is_complete(g);
}

static void expect(const char *grammar, const char *const *yes, const char *const *no)
{
	struct moe_grammar *g = compile(grammar);

	for (; yes && *yes; yes++) {
		ck_assert_msg(whole(g, *yes, strlen(*yes)), "'%s' should match %s", *yes, grammar);
		ck_assert_msg(bytewise(g, *yes, strlen(*yes)), "'%s' byte by byte: %s", *yes,
			      grammar);
	}
	for (; no && *no; no++) {
		ck_assert_msg(!whole(g, *no, strlen(*no)), "'%s' should not match %s", *no,
			      grammar);
		ck_assert_msg(!bytewise(g, *no, strlen(*no)), "'%s' byte by byte: %s", *no,
			      grammar);
	}
	moe_grammar_destroy(g);
}

#define L(...) (const char *const[]){ __VA_ARGS__, NULL }

START_TEST(grammar_accepts_and_refuses)
{
	expect("root ::= \"abc\"", L("abc"), L("", "ab", "abcd", "abd"));
	expect("root ::= \"a\" | \"b\" \"c\"  # two ways\n", L("a", "bc"), L("b", "ac", "abc"));
	expect("root ::= item (\",\" item)*\nitem ::= [a-z]+ | num\nnum ::= [0-9]+",
	       L("a", "ab,12,c", "0,0"), L("", ",", "a,", "a,,b", "A"));
	/* rules over several lines, a group continuing after a newline */
	expect("root ::=\n  \"(\" (\n    x\n  | \"y\" )\n  \")\"\nx ::= \"x\"", L("(x)", "(y)"),
	       L("()", "(xy)"));
	/* escapes in literals and classes */
	expect("root ::= \"\\\"\\n\\t\\\\\" [\\]\\-] \"\\x41\\u00e9\"", L("\"\n\t\\]A\xc3\xa9",
	       "\"\n\t\\-A\xc3\xa9"), L("\"\n\t\\aA\xc3\xa9"));
	/* negation, ranges, any character */
	expect("root ::= [^a-c0-9] . [x-z]", L("d!x", "D\xe2\x82\xacz"), L("a!x", "5!x", "dd"));
	/* nested recursion (not left): balanced brackets */
	expect("root ::= b\nb ::= \"(\" b \")\" b | \"\"", L("", "()", "(()())()"),
	       L("(", ")(", "(()"));
	/* the empty grammar matches only the empty document */
	expect("root ::= ", L(""), L("a"));
}
END_TEST

START_TEST(grammar_repetition_bounds)
{
	expect("root ::= \"a\"{2,4}", L("aa", "aaa", "aaaa"), L("", "a", "aaaaa"));
	expect("root ::= \"ab\"{3}", L("ababab"), L("abab", "abababab"));
	expect("root ::= [0-9]{2,} \"x\"", L("12x", "12345x"), L("1x", "x"));
	expect("root ::= \"a\"{0,2} \"b\"", L("b", "ab", "aab"), L("aaab"));
	expect("root ::= \"a\"? \"b\"+ \"c\"*", L("b", "abbb", "bcc"), L("a", "aab", "c"));
	expect("root ::= (\"x\" | \"yz\"){1,2}", L("x", "yz", "xyz", "yzyz"), L("", "xxx"));
	expect("root ::= \"q\"{0}", L(""), L("q"));
}
END_TEST

START_TEST(grammar_utf8_classes)
{
	struct moe_grammar *g = compile("root ::= [\xce\xb1-\xcf\x89]+ \" \" [^\xce\xb1-\xcf\x89]");
	const char *greek = "\xce\xb1\xce\xb2\xcf\x89 \xf0\x9f\x98\x80";  /* "αβω 😀" */

	ck_assert(whole(g, greek, strlen(greek)));
	ck_assert(bytewise(g, greek, strlen(greek)));
	ck_assert(!whole(g, "abc x", 5));
	/* the 4-byte emoji is one code point: one [^...] */
	ck_assert(!whole(g, "\xce\xb1 \xf0\x9f\x98\x80\xf0\x9f\x98\x80", 11));
	/* a character split over calls: the first byte alone is a viable prefix */
	moe_grammar_reset(g);
	ck_assert_int_eq(moe_grammar_accept(g, "\xce", 1), 0);
	ck_assert(!moe_grammar_is_complete(g));
	ck_assert_int_eq(moe_grammar_accept(g, "\xb1 ", 2), 0);
	/* U+00E9 (é) is below α: its lead byte cannot start a class member */
	moe_grammar_reset(g);
	ck_assert(!moe_grammar_allows(g, "\xc3", 1));
	ck_assert_int_eq(moe_grammar_accept(g, "\xc3", 1), -EILSEQ);
	/* invalid UTF-8: a stray continuation byte, an overlong form, a surrogate */
	ck_assert(!moe_grammar_allows(g, "\xb1", 1));
	ck_assert(!moe_grammar_allows(g, "\xce\xb1 \xe0\x80\x80", 6));
	ck_assert(!moe_grammar_allows(g, "\xce\xb1 \xed\xa0\x80", 6));
	/* a refused accept leaves the state as it was */
	ck_assert_int_eq(moe_grammar_accept(g, "\xce\xb1", 2), 0);
	ck_assert_int_eq(moe_grammar_accept(g, "x", 1), -EILSEQ);
	ck_assert_int_eq(moe_grammar_accept(g, " !", 2), 0);
	ck_assert(moe_grammar_is_complete(g));
	ck_assert(!moe_grammar_can_continue(g));
	moe_grammar_destroy(g);
}
END_TEST

/* Every split of a document into two pieces gives the same answer as whole. */
START_TEST(grammar_incremental_equals_whole)
{
	const char *json;
	struct moe_grammar *g;
	const char *docs[] = { "{\"a\": [1, 2.5e3, -0], \"b\": {\"c\": \"\\u00e9\\n\"}}",
			       "[true, false, null, \"x\xc3\xa9y\"]", "{\"a\" 1}", "[1,]",
			       "\"\\q\"", "-01" };

	ck_assert_int_eq(moe_grammar_builtin("json", &json), 0);
	g = compile(json);
	for (size_t d = 0; d < sizeof(docs) / sizeof(docs[0]); d++) {
		size_t len = strlen(docs[d]);
		bool want = whole(g, docs[d], len);

		ck_assert_int_eq(want, d < 2);
		ck_assert_int_eq(bytewise(g, docs[d], len), want);
		for (size_t cut = 0; cut <= len; cut++) {
			bool got;

			moe_grammar_reset(g);
			got = moe_grammar_accept(g, docs[d], cut) == 0 &&
			      moe_grammar_accept(g, docs[d] + cut, len - cut) == 0 &&
			      moe_grammar_is_complete(g);
			ck_assert_msg(got == want, "'%s' cut at %zu: %d", docs[d], cut, got);
		}
	}
	moe_grammar_destroy(g);
}
END_TEST

START_TEST(grammar_clone_and_reset)
{
	struct moe_grammar *g = compile("root ::= \"ab\" (\"c\" | \"d\")"), *c = NULL;

	ck_assert_int_eq(moe_grammar_accept(g, "ab", 2), 0);
	ck_assert_int_eq(moe_grammar_clone(g, &c), 0);
	ck_assert_int_eq(moe_grammar_accept(g, "c", 1), 0);
	ck_assert_int_eq(moe_grammar_accept(c, "d", 1), 0);
	ck_assert(moe_grammar_is_complete(g) && moe_grammar_is_complete(c));
	/* the clone lives on when the original is gone: the rules are shared by count */
	moe_grammar_destroy(g);
	ck_assert_int_eq(moe_grammar_reset(c), 0);
	ck_assert(!moe_grammar_is_complete(c));
	ck_assert_int_eq(moe_grammar_accept(c, "abd", 3), 0);
	ck_assert(moe_grammar_is_complete(c));
	moe_grammar_destroy(c);
}
END_TEST

START_TEST(grammar_ambiguity)
{
	/* many parses of one text are all kept */
	expect("root ::= x*\nx ::= \"a\" | \"aa\" | \"aaa\"", L("a", "aaaaaaa"), L("b"));
	expect("root ::= (\"a\" \"b\"? | \"ab\" \"c\")+", L("ab", "abc", "aabcab"), L("c"));
	/* a grammar whose parses double with each character runs into the bound, and says so */
	{
		struct moe_grammar *g = compile("root ::= s\ns ::= \"a\" s \"b\" | \"a\" s \"bb\" | "
						"\"\"");
		char a[64];
		int ret;

		memset(a, 'a', sizeof(a));
		ret = moe_grammar_accept(g, a, sizeof(a));
		ck_assert_int_eq(ret, -E2BIG);
		ck_assert_msg(strstr(moe_errmsg(), "ambiguous"), "%s", moe_errmsg());
		ck_assert(!moe_grammar_allows(g, a, sizeof(a)));
		/* the state is still the start */
		ck_assert_int_eq(moe_grammar_accept(g, "aabb", 4), 0);
		ck_assert(moe_grammar_is_complete(g));
		moe_grammar_destroy(g);
	}
}
END_TEST

START_TEST(grammar_errors_name_line_col)
{
	static const struct {
		const char *text, *msg;
	} cases[] = {
		{ "root ::= a\n", "grammar:1:10: rule 'a' is used but never defined" },
		{ "x ::= \"a\"\n", "no rule 'root'" },
		{ "root ::= \"a\"\nroot ::= \"b\"", "grammar:2:1: rule 'root' is defined twice "
		  "(first at 1:1)" },
		{ "root ::= \"abc", "grammar:1:10: the literal starting here has no closing" },
		{ "root ::= [a-", "character class" },
		{ "root ::= [z-a]", "grammar:1:11: range U+007A-U+0061 runs backwards" },
		{ "root ::= []", "grammar:1:10: empty character class" },
		{ "root ::= \"\\q\"", "grammar:1:11: unknown escape '\\q'" },
		{ "root ::= \"\\x4\"", "needs 2 hexadecimal digits" },
		{ "root ::= (\"a\"", "grammar:1:10: the group opened here has no closing ')'" },
		{ "root ::= \"a\")", "')' without a '('" },
		{ "root ::= * \"a\"", "grammar:1:10: '*' follows nothing" },
		{ "root ::= \"a\"{3,2}", "grammar:1:13: '{3,2}': the most is below the least" },
		{ "root ::= \"a\"{2", "expected '}'" },
		{ "root ::= \"a\"{5000}", "over the limit of 1000" },
		{ "root := \"a\"", "grammar:1:6: expected '::=' after rule name 'root'" },
		{ "root ::= e\ne ::= e \"+\" t | t\nt ::= \"1\"",
		  "grammar:2:1: rule 'e' is left-recursive (e -> e)" },
		{ "root ::= a\na ::= b? \"x\"\nb ::= a \"y\"",
		  "grammar:2:1: rule 'a' is left-recursive (a -> b -> a)" },
		{ "root ::= (\"a\"?)*", "grammar:1:16: the item repeated here can match the empty "
		  "string" },
		{ "root ::= \"\xff\"", "invalid UTF-8" },
		{ "root ::= \"a\"\n  @", "grammar:2:3: unexpected '@'" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct moe_grammar *g = (struct moe_grammar *)1;
		int ret = moe_grammar_create(cases[i].text, strlen(cases[i].text), &g);

		ck_assert_msg(ret == -EINVAL, "'%s' gave %d", cases[i].text, ret);
		ck_assert_ptr_null(g);
		ck_assert_msg(strstr(moe_errmsg(), cases[i].msg), "'%s': '%s' lacks '%s'",
			      cases[i].text, moe_errmsg(), cases[i].msg);
	}
	{
		const char *text;

		ck_assert_int_eq(moe_grammar_builtin("yaml", &text), -ENOENT);
	}
}
END_TEST

START_TEST(grammar_builtin_json)
{
	const char *text;

	ck_assert_int_eq(moe_grammar_builtin("json", &text), 0);
	expect(text, L("0", "-12.5E+3", "\"\"", "[]", "{}", "{\"k\": [1, {\"x\": null}]}",
		       "[\n  true,\n  false\n]", "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u12aF\""),
	       L("01", "1.", ".5", "[1,]", "{\"a\"}", "{a: 1}", "\"\t\"", "\"\\x\"", "tru",
		 "[] ", " 1", "1e123", "\"\\ud800\"", "\"\\uDFFF\""));
	ck_assert_int_eq(moe_grammar_builtin("json-object", &text), 0);
	expect(text, L("{}", "{\"a\": \"b\", \"c\": [1]}"), L("[]", "1", "\"s\""));
}
END_TEST

/* ------------------------------------------------------------ sampling */

/*
 * A byte-level BPE vocabulary: the 256 byte characters, then @extra (in the
 * GPT-2 alphabet: "\xc4\xa0" is a space), then an end-of-sequence control
 * token, whose id is returned through @eos.
 */
static struct moe_tokenizer *vocab(const char *const *extra, int n_extra, int32_t *eos)
{
	int n = 256 + n_extra + 1;
	const char **toks = malloc(sizeof(*toks) * (size_t)n);
	int32_t *types = malloc(sizeof(*types) * (size_t)n);
	char (*alpha)[4] = malloc(256 * 4);
	struct moe_tokenizer *t = NULL;
	unsigned next = 256;
	static const char *const merges[] = { "a b" };
	struct tok_spec sp = {
		.model = "gpt2", .bos = -1, .eot = -1, .eom = -1, .unk = -1, .add_bos = 0,
		.add_space_prefix = -1, .n_merges = 1, .merges = merges,
	};

	ck_assert(toks && types && alpha);
	for (unsigned b = 0; b < 256; b++) {
		bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;

		alpha[b][moe_utf8_encode(printable ? b : next++, alpha[b])] = 0;
		toks[b] = alpha[b];
	}
	for (int i = 0; i < n; i++)
		types[i] = TT_NORMAL;
	for (int i = 0; i < n_extra; i++)
		toks[256 + i] = extra[i];
	toks[n - 1] = "<|eos|>";
	types[n - 1] = TT_CONTROL;
	sp.n_vocab = (uint32_t)n;
	sp.tokens = toks;
	sp.types = types;
	sp.eos = n - 1;
	ck_assert_msg(tok_build(&sp, &t) == 0, "%s", moe_errmsg());
	*eos = n - 1;
	free(toks);
	free(types);
	free(alpha);
	return t;
}

static struct moe_sampler *gsampler(struct moe_tokenizer *t, const struct moe_grammar *g,
				    float temp, uint64_t seed)
{
	struct moe_sample_params sp;
	struct moe_sampler *s = NULL;

	moe_sample_params_init(&sp);
	sp.temp = temp;
	sp.seed = seed;
	sp.grammar = g;
	sp.tokenizer = t;
	ck_assert_msg(moe_sampler_new(&sp, (uint32_t)moe_tokenizer_vocab_size(t), &s) == 0, "%s",
		      moe_errmsg());
	return s;
}

/* Sample up to @max tokens from random logits; the text into @buf; returns the tokens drawn. */
static int generate(struct moe_sampler *s, struct moe_tokenizer *t, int32_t eos, float eos_bias,
		    uint64_t *rng, int max, char *buf, size_t cap, bool *ended)
{
	int n_vocab = moe_tokenizer_vocab_size(t), n = 0;
	float *logits = malloc(sizeof(*logits) * (size_t)n_vocab);
	size_t len = 0;

	ck_assert_ptr_nonnull(logits);
	*ended = false;
	while (n < max) {
		int32_t tok;
		int k;

		for (int i = 0; i < n_vocab; i++)
			logits[i] = (float)(tu_randn(rng) * 3);
		logits[eos] += eos_bias;
		tok = moe_sampler_sample(s, logits);
		buf[len] = 0;
		ck_assert_msg(tok >= 0, "%s after '%s'", moe_errmsg(), buf);
		n++;
		if (tok == eos) {
			ck_assert(moe_grammar_is_complete(moe_sampler_grammar(s)));
			*ended = true;
			break;
		}
		k = moe_token_to_piece(t, tok, buf + len, (int)(cap - len - 1));
		ck_assert_int_ge(k, 0);
		len += (size_t)k;
		if (!moe_grammar_can_continue(moe_sampler_grammar(s))) {
			*ended = true;
			break;
		}
	}
	buf[len] = 0;
	free(logits);
	return n;
}

static const char *const json_pieces[] = {
	"{", "}", "[", "]", "\"", ",", ":", "\xc4\xa0", "{\"", "\":", "\",", "\"}", "true",
	"null", "12", "-3", ".5", "e7", "name", "\xc4\xa0\"", "\xc4\xa0{", "ab\"", "\\n",
};

START_TEST(grammar_sampler_json_documents)
{
	struct moe_grammar *g;
	struct moe_tokenizer *t;
	const char *text;
	int32_t eos;
	char buf[8192];
	int complete = 0;

	t = vocab(json_pieces, sizeof(json_pieces) / sizeof(json_pieces[0]), &eos);
	ck_assert_int_eq(moe_grammar_builtin("json-object", &text), 0);
	g = compile(text);
	for (uint64_t seed = 1; seed <= 40; seed++) {
		float temp = seed % 4 == 0 ? 0.0f : 1.0f;
		struct moe_sampler *s = gsampler(t, g, temp, seed);
		uint64_t rng = seed * 7919;
		bool ended;
		json_error_t je;
		json_t *doc;

		/* EOG is favoured by far: it may still only come where the object is closed */
		generate(s, t, eos, 8, &rng, 2000, buf, sizeof(buf), &ended);
		moe_sampler_destroy(s);
		if (!ended)
			continue;
		complete++;
		doc = json_loads(buf, 0, &je);
		ck_assert_msg(doc && json_is_object(doc), "seed %llu: '%s' is not a JSON object: %s",
			      (unsigned long long)seed, buf, je.text);
		json_decref(doc);
	}
	ck_assert_msg(complete >= 30, "only %d of 40 documents ended within 2000 tokens", complete);
	moe_grammar_destroy(g);
	moe_tokenizer_destroy(t);
}
END_TEST

START_TEST(grammar_sampler_eog_and_reset)
{
	struct moe_grammar *g = compile("root ::= \"ab\" [0-9]?");
	struct moe_tokenizer *t;
	struct moe_sampler *s;
	int32_t eos;
	float *l;
	int n;

	t = vocab(NULL, 0, &eos);
	n = moe_tokenizer_vocab_size(t);
	l = calloc((size_t)n, sizeof(*l));
	ck_assert_ptr_nonnull(l);
	s = gsampler(t, g, 0, 1);
	/* greedy would take EOS, then '9'; the grammar wants "a" first */
	l[eos] = 10;
	l['9'] = 9;
	l['a'] = 1;
	l['b'] = 1;
	ck_assert_int_eq(moe_sampler_sample(s, l), 'a');
	ck_assert_int_eq(moe_sampler_sample(s, l), 'b');
	/* complete now: EOS is allowed and is the best */
	ck_assert_int_eq(moe_sampler_sample(s, l), eos);
	/* back to the start after a reset */
	moe_sampler_reset(s);
	ck_assert_int_eq(moe_sampler_sample(s, l), 'a');
	ck_assert_int_eq(moe_sampler_sample(s, l), 'b');
	l[eos] = -INFINITY;
	ck_assert_int_eq(moe_sampler_sample(s, l), '9');
	ck_assert(!moe_grammar_can_continue(moe_sampler_grammar(s)));
	/* complete, nothing can follow, and EOS is masked out by the caller: a clear error */
	ck_assert_int_eq(moe_sampler_sample(s, l), -EILSEQ);
	ck_assert_msg(strstr(moe_errmsg(), "complete"), "%s", moe_errmsg());
	moe_sampler_destroy(s);

	/* a sampler takes the grammar in the state it is given */
	ck_assert_int_eq(moe_grammar_accept(g, "a", 1), 0);
	s = gsampler(t, g, 0, 1);
	l[eos] = 0;
	ck_assert_int_eq(moe_sampler_sample(s, l), 'b');
	moe_sampler_destroy(s);
	/* with temperature, every draw still follows the grammar */
	moe_grammar_reset(g);
	for (uint64_t seed = 1; seed < 50; seed++) {
		uint64_t rng = seed;

		s = gsampler(t, g, 1.5f, seed);
		for (int i = 0; i < n; i++)
			l[i] = (float)tu_randn(&rng);
		ck_assert_int_eq(moe_sampler_sample(s, l), 'a');
		ck_assert_int_eq(moe_sampler_sample(s, l), 'b');
		moe_sampler_destroy(s);
	}
	/* a grammar without the tokenizer to check it with is refused */
	{
		struct moe_sample_params sp;

		moe_sample_params_init(&sp);
		sp.grammar = g;
		ck_assert_int_eq(moe_sampler_new(&sp, 10, &s), -EINVAL);
		ck_assert_msg(strstr(moe_errmsg(), "tokenizer"), "%s", moe_errmsg());
	}
	free(l);
	moe_grammar_destroy(g);
	moe_tokenizer_destroy(t);
}
END_TEST

/* SentencePiece drops the space before the first word: the grammar sees the text without it. */
START_TEST(grammar_sampler_first_space)
{
	const char *toks[] = { "<unk>", "<s>", "</s>", "\xe2\x96\x81{", "}", "{" };
	int32_t types[] = { TT_UNKNOWN, TT_CONTROL, TT_CONTROL, TT_NORMAL, TT_NORMAL, TT_NORMAL };
	struct tok_spec sp = {
		.model = "llama", .n_vocab = 6, .tokens = toks, .types = types, .bos = 1, .eos = 2,
		.eot = -1, .eom = -1, .unk = 0, .add_bos = -1, .add_space_prefix = 1,
	};
	struct moe_grammar *g = compile("root ::= \"{}\"");
	struct moe_tokenizer *t = NULL;
	struct moe_sampler *s;
	float l[6] = { 0, 0, 0, 5, 0, 1 };

	ck_assert_msg(tok_build(&sp, &t) == 0, "%s", moe_errmsg());
	s = gsampler(t, g, 0, 1);
	/* "▁{" shows as "{" when it comes first */
	ck_assert_int_eq(moe_sampler_sample(s, l), 3);
	l[4] = 2;
	ck_assert_int_eq(moe_sampler_sample(s, l), 4);
	moe_sampler_destroy(s);
	moe_grammar_destroy(g);
	moe_tokenizer_destroy(t);
}
END_TEST

/*
 * A vocabulary of @n tokens: every string of 1 to 3 characters over a
 * 64-character alphabet of JSON's characters, letters and digits, in order.
 */
static struct moe_tokenizer *big_vocab(int n, int32_t *eos)
{
	static const char alpha[] = "{}[]\":,.-+0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKL";
	char (*s)[16] = malloc((size_t)n * 16);
	const char **extra = malloc(sizeof(*extra) * (size_t)n);
	struct moe_tokenizer *t;
	int len = (int)strlen(alpha) + 1, k = 0;

	ck_assert(s && extra);
	for (int i = 0; k < n - 257; i++) {
		int v = i, at = 0;
		char tmp[16];

		/* bijective numbering: every string of 2 or 3 characters once */
		do {
			int d = v % len;

			v /= len;
			tmp[at++] = d == len - 1 ? ' ' : alpha[d];
		} while (v);
		if (at < 2)
			continue;
		for (int j = 0, o = 0; j <= at; j++) {
			if (j == at) {
				s[k][o] = 0;
			} else if (tmp[j] == ' ') {
				s[k][o++] = '\xc4';
				s[k][o++] = '\xa0';
			} else {
				s[k][o++] = tmp[j];
			}
		}
		extra[k] = s[k];
		k++;
	}
	t = vocab(extra, k, eos);
	free(s);
	free(extra);
	return t;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Sampling cost per token with and without the json-object grammar. */
static void cost(int n_vocab, int tokens)
{
	struct moe_tokenizer *t;
	struct moe_grammar *g;
	const char *text;
	int32_t eos;
	float *logits;
	double t_plain = 0, t_gram = 0;
	int drawn = 0, docs = 0;

	t = big_vocab(n_vocab, &eos);
	n_vocab = moe_tokenizer_vocab_size(t);
	ck_assert_int_eq(moe_grammar_builtin("json-object", &text), 0);
	g = compile(text);
	logits = malloc(sizeof(*logits) * (size_t)n_vocab);
	ck_assert_ptr_nonnull(logits);
	for (int pass = 0; pass < 2; pass++) {
		struct moe_sample_params sp;
		struct moe_sampler *plain, *gram;
		uint64_t rng = 42;

		moe_sample_params_init(&sp);
		sp.temp = pass ? 0.8f : 1.0f;
		sp.top_k = pass ? 40 : 0;
		sp.top_p = pass ? 0.95f : 1.0f;
		ck_assert_int_eq(moe_sampler_new(&sp, (uint32_t)n_vocab, &plain), 0);
		sp.grammar = g;
		sp.tokenizer = t;
		ck_assert_int_eq(moe_sampler_new(&sp, (uint32_t)n_vocab, &gram), 0);
		for (int i = 0; i < tokens; i++) {
			double a, b, c;
			int32_t tok;

			for (int v = 0; v < n_vocab; v++)
				logits[v] = (float)(tu_randn(&rng) * 3);
			a = now();
			ck_assert_int_ge(moe_sampler_sample(plain, logits), 0);
			b = now();
			tok = moe_sampler_sample(gram, logits);
			c = now();
			ck_assert_msg(tok >= 0, "%s", moe_errmsg());
			t_plain += b - a;
			t_gram += c - b;
			drawn++;
			if (tok == eos || !moe_grammar_can_continue(moe_sampler_grammar(gram))) {
				docs++;
				moe_sampler_reset(gram);
			}
		}
		moe_sampler_destroy(plain);
		moe_sampler_destroy(gram);
	}
	printf("grammar sampling, %d-token vocabulary, json-object, %d draws (%d documents "
	       "ended): %.3f ms/token unconstrained, %.3f ms/token with the grammar, overhead "
	       "%.3f ms/token\n", n_vocab, drawn, docs, t_plain * 1e3 / drawn,
	       t_gram * 1e3 / drawn, (t_gram - t_plain) * 1e3 / drawn);
	fflush(stdout);
	free(logits);
	moe_grammar_destroy(g);
	moe_tokenizer_destroy(t);
}

START_TEST(grammar_sampler_cost)
{
	cost(32768, 200);
	cost(200000, 60);
}
END_TEST

/* ------------------------------------------------------------ JSON Schema */

/* Code points of a UTF-8 string. */
static size_t n_chars(const char *s, size_t len)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++)
		n += ((unsigned char)s[i] & 0xc0) != 0x80;
	return n;
}

/* Whether @v is valid for @schema, for the subset the converter takes. */
static bool valid(const json_t *schema, const json_t *v, const json_t *root, char *why,
		  size_t len)
{
	const json_t *t, *e;
	const char *k;
	json_t *x;
	size_t i;
	bool ok = false;

	if (json_is_true(schema))
		return true;
	if ((t = json_object_get(schema, "$ref"))) {
		const char *ref = json_string_value(t);

		if (!strcmp(ref, "#"))
			return valid(root, v, root, why, len);
		return valid(json_object_get(json_object_get(root, "$defs"), ref + 8), v, root,
			     why, len);
	}
	if ((e = json_object_get(schema, "const"))) {
		if (!json_equal(e, v))
			snprintf(why, len, "not the const");
		return json_equal(e, v);
	}
	if ((e = json_object_get(schema, "enum"))) {
		json_array_foreach(e, i, x)
			if (json_equal(x, v))
				return true;
		snprintf(why, len, "not in the enum");
		return false;
	}
	if ((e = json_object_get(schema, "oneOf"))) {
		int n = json_is_true(json_object_get(schema, "nullable")) && json_is_null(v);

		/* exactly one */
		json_array_foreach(e, i, x)
			n += valid(x, v, root, why, len);
		if (n != 1)
			snprintf(why, len, "%d of the oneOf alternatives match", n);
		return n == 1;
	}
	if ((e = json_object_get(schema, "anyOf"))) {
		json_array_foreach(e, i, x)
			if (valid(x, v, root, why, len))
				return true;
		return json_is_true(json_object_get(schema, "nullable")) && json_is_null(v);
	}
	t = json_object_get(schema, "type");
	if (t) {
		json_t *one = json_is_string(t) ? json_pack("[O]", t) : json_incref((json_t *)t);

		json_array_foreach(one, i, x) {
			const char *ty = json_string_value(x);

			ok |= (!strcmp(ty, "object") && json_is_object(v)) ||
			      (!strcmp(ty, "array") && json_is_array(v)) ||
			      (!strcmp(ty, "string") && json_is_string(v)) ||
			      (!strcmp(ty, "number") && json_is_number(v)) ||
			      (!strcmp(ty, "integer") && json_is_integer(v)) ||
			      (!strcmp(ty, "boolean") && json_is_boolean(v)) ||
			      (!strcmp(ty, "null") && json_is_null(v));
		}
		json_decref(one);
		if (json_is_true(json_object_get(schema, "nullable")) && json_is_null(v))
			return true;
		if (!ok) {
			snprintf(why, len, "wrong type");
			return false;
		}
	}
	if (json_is_object(v)) {
		const json_t *props = json_object_get(schema, "properties");
		const json_t *add = json_object_get(schema, "additionalProperties");

		json_array_foreach(json_object_get(schema, "required"), i, x) {
			if (!json_object_get(v, json_string_value(x))) {
				snprintf(why, len, "'%s' is missing", json_string_value(x));
				return false;
			}
		}
		json_object_foreach((json_t *)v, k, x) {
			const json_t *ps = props ? json_object_get(props, k) : NULL;

			if (!ps && props && (!add || json_is_false(add))) {
				snprintf(why, len, "'%s' is not a property", k);
				return false;
			}
			if (!ps)
				ps = add && json_is_object(add) ? add : json_true();
			if (!valid(ps, x, root, why, len))
				return false;
		}
	}
	if (json_is_array(v)) {
		const json_t *items = json_object_get(schema, "items");
		json_int_t lo = json_integer_value(json_object_get(schema, "minItems"));
		const json_t *hi = json_object_get(schema, "maxItems");

		if ((json_int_t)json_array_size(v) < lo ||
		    (hi && (json_int_t)json_array_size(v) > json_integer_value(hi))) {
			snprintf(why, len, "%zu items", json_array_size(v));
			return false;
		}
		json_array_foreach(v, i, x)
			if (items && !valid(items, x, root, why, len))
				return false;
	}
	if (json_is_string(v)) {
		size_t n = n_chars(json_string_value(v), json_string_length(v));
		json_int_t lo = json_integer_value(json_object_get(schema, "minLength"));
		const json_t *hi = json_object_get(schema, "maxLength");

		if ((json_int_t)n < lo || (hi && (json_int_t)n > json_integer_value(hi))) {
			snprintf(why, len, "a string of %zu characters", n);
			return false;
		}
	}
	return true;
}

static const char *const schemas[] = {
	/* an object of every kind of property, some optional, a reference and a union */
	"{\"type\": \"object\", \"properties\": {"
	"  \"name\": {\"type\": \"string\", \"minLength\": 1, \"maxLength\": 6},"
	"  \"age\": {\"type\": \"integer\", \"description\": \"years\"},"
	"  \"tags\": {\"type\": \"array\", \"items\": {\"enum\": [\"a\", \"b\", 3, null]},"
	"            \"minItems\": 1, \"maxItems\": 3},"
	"  \"ok\": {\"type\": [\"boolean\", \"null\"]},"
	"  \"kind\": {\"const\": \"moe\"},"
	"  \"size\": {\"anyOf\": [{\"type\": \"number\"}, {\"$ref\": \"#/$defs/small\"}]}},"
	" \"required\": [\"name\", \"age\", \"kind\"], \"additionalProperties\": false,"
	" \"$defs\": {\"small\": {\"type\": \"string\", \"maxLength\": 2}}}",
	/* every property optional: commas must still come out right */
	"{\"properties\": {\"a\": {\"type\": \"integer\"}, \"b\": {\"type\": \"boolean\"},"
	" \"c\": {\"type\": \"null\"}}}",
	/* a recursive tree through $defs, bounded by maxItems */
	"{\"$ref\": \"#/$defs/node\", \"$defs\": {\"node\": {\"type\": \"object\","
	" \"properties\": {\"v\": {\"type\": \"integer\"}, \"kids\": {\"type\": \"array\","
	" \"items\": {\"$ref\": \"#/$defs/node\"}, \"maxItems\": 2}}, \"required\": [\"v\"]}}}",
	/* arrays of exact sizes, nullable, oneOf */
	"{\"type\": \"array\", \"items\": {\"oneOf\": [{\"type\": \"string\", \"maxLength\": 3},"
	" {\"type\": \"integer\", \"nullable\": true}]}, \"minItems\": 2, \"maxItems\": 2}",
	/* extra members of a given schema */
	"{\"type\": \"object\", \"properties\": {\"id\": {\"type\": \"integer\"}},"
	" \"required\": [\"id\"], \"additionalProperties\": {\"type\": \"boolean\"},"
	" \"maxProperties_is_not_here\": null}",
	/* oneOf told apart by a discriminator, by a member the other cannot hold, by values */
	"{\"type\": \"array\", \"minItems\": 3, \"maxItems\": 3, \"items\": {\"oneOf\": ["
	" {\"type\": \"object\", \"properties\": {\"kind\": {\"const\": \"circle\"},"
	"  \"r\": {\"type\": \"number\"}}, \"required\": [\"kind\", \"r\"]},"
	" {\"type\": \"object\", \"properties\": {\"kind\": {\"const\": \"square\"},"
	"  \"side\": {\"type\": \"number\"}}, \"required\": [\"kind\"]},"
	" {\"type\": \"object\", \"properties\": {\"note\": {\"type\": \"string\","
	"  \"maxLength\": 4}},"
	"  \"required\": [\"note\"]},"
	" {\"enum\": [1, 2, \"x\"]}, {\"const\": 3}, {\"type\": \"boolean\"}]}}",
};

START_TEST(schema_documents_validate)
{
	struct moe_tokenizer *t;
	int32_t eos;
	char buf[8192], err[512];

	t = vocab(json_pieces, sizeof(json_pieces) / sizeof(json_pieces[0]), &eos);
	for (size_t k = 0; k < sizeof(schemas) / sizeof(schemas[0]); k++) {
		json_t *schema = json_loads(schemas[k], 0, NULL);
		struct moe_grammar *g = NULL;
		int ended = 0;

		ck_assert_ptr_nonnull(schema);
		/* the last schema has an unknown keyword: refused by name */
		if (k == 4) {
			ck_assert_int_eq(schema_compile(schema, &g, err, sizeof(err)), -EINVAL);
			ck_assert_msg(strstr(err, "'maxProperties_is_not_here' is not supported"), "%s",
				      err);
			json_object_del(schema, "maxProperties_is_not_here");
		}
		ck_assert_msg(schema_compile(schema, &g, err, sizeof(err)) == 0, "schema %zu: %s", k,
			      err);
		for (uint64_t seed = 1; seed <= 12; seed++) {
			struct moe_sampler *s = gsampler(t, g, seed % 3 ? 1.0f : 0.0f, seed);
			uint64_t rng = seed * 31 + k;
			json_error_t je;
			bool done;
			json_t *doc;
			char why[128] = "";

			generate(s, t, eos, 4, &rng, 3000, buf, sizeof(buf), &done);
			moe_sampler_destroy(s);
			if (!done)
				continue;
			ended++;
			doc = json_loads(buf, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
			ck_assert_msg(doc, "schema %zu seed %llu: '%s' is not JSON: %s", k,
				      (unsigned long long)seed, buf, je.text);
			ck_assert_msg(valid(schema, doc, schema, why, sizeof(why)),
				      "schema %zu seed %llu: '%s' is not valid: %s", k,
				      (unsigned long long)seed, buf, why);
			json_decref(doc);
		}
		ck_assert_msg(ended >= 8, "schema %zu: only %d of 12 documents ended", k, ended);
		moe_grammar_destroy(g);
		json_decref(schema);
	}
	moe_tokenizer_destroy(t);
}
END_TEST

START_TEST(schema_refuses_by_keyword)
{
	static const struct {
		const char *schema, *msg;
	} cases[] = {
		{ "{\"type\": \"string\", \"pattern\": \"^a+$\"}", "at '/': keyword 'pattern' (a "
		  "regular expression) is not supported" },
		{ "{\"properties\": {\"d\": {\"type\": \"string\", \"format\": \"date\"}}}",
		  "at '/properties/d': keyword 'format' is not supported" },
		{ "{\"type\": \"integer\", \"minimum\": 0}", "keyword 'minimum' is not supported" },
		{ "{\"allOf\": [{}]}", "keyword 'allOf' is not supported" },
		{ "{\"type\": \"int\"}", "type 'int' is not a JSON Schema type" },
		{ "{\"type\": 3}", "'type' must be a string or an array" },
		{ "{\"properties\": {}, \"required\": [\"x\"]}", "required property 'x' is not in "
		  "'properties'" },
		{ "{\"type\": \"string\", \"minLength\": 3, \"maxLength\": 2}", "'maxLength' 2 is "
		  "below 'minLength' 3" },
		{ "{\"type\": \"string\", \"maxLength\": 5000}", "'maxLength' 5000 is over 1000" },
		{ "{\"type\": \"array\", \"minItems\": -1}", "'minItems' must be a non-negative" },
		{ "{\"items\": [{}, {}]}", "at '/items': 'items' as an array (tuples)" },
		{ "{\"$ref\": \"http://x/y.json\"}", "'$ref' 'http://x/y.json' is not supported" },
		{ "{\"$ref\": \"#/$defs/none\"}", "names no definition" },
		{ "{\"$ref\": \"#/$defs/a\", \"type\": \"object\"}", "'type' beside '$ref'" },
		{ "false", "the schema false matches nothing" },
		{ "[1]", "a schema must be an object or a boolean" },
		{ "{\"enum\": []}", "'enum' must be a non-empty array" },
		{ "{\"anyOf\": {}}", "'anyOf' must be a non-empty array" },
		{ "{\"properties\": {\"a~b/c\": {\"type\": \"string\", \"pattern\": \"x\"}}}",
		  "at '/properties/a~0b~1c'" },
		{ "{\"$ref\": \"#/$defs/a\", \"$defs\": {\"a\": {\"$ref\": \"#/$defs/a\"}}}",
		  "left-recursive" },
	};
	char err[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		json_t *schema = json_loads(cases[i].schema, JSON_DECODE_ANY, NULL);
		struct moe_grammar *g = NULL;

		ck_assert_ptr_nonnull(schema);
		err[0] = 0;
		ck_assert_msg(schema_compile(schema, &g, err, sizeof(err)) == -EINVAL,
			      "'%s' was accepted", cases[i].schema);
		ck_assert_ptr_null(g);
		ck_assert_msg(strstr(err, cases[i].msg), "'%s': '%s' lacks '%s'", cases[i].schema,
			      err, cases[i].msg);
		json_decref(schema);
	}
	ck_assert_int_eq(schema_compile_text("{", 1, &(struct moe_grammar *){ NULL }, err,
					     sizeof(err)), -EINVAL);
	ck_assert_msg(strstr(err, "not valid JSON"), "%s", err);
}
END_TEST

/* oneOf's "exactly one": alternatives the grammar cannot tell apart are refused where they are. */
START_TEST(schema_one_of)
{
	static const char *const ok[] = {
		"{\"oneOf\": [{\"type\": \"string\"}, {\"type\": \"integer\"}, {\"type\": \"null\"}]}",
		"{\"oneOf\": [{\"const\": 1}, {\"enum\": [2, 3]}, {\"type\": \"string\"}]}",
		"{\"oneOf\": [{\"type\": \"object\", \"properties\": {\"a\": {}}, \"required\": [\"a\"]},"
		" {\"type\": \"object\", \"properties\": {\"b\": {}}, \"required\": [\"b\"]}]}",
		"{\"oneOf\": [{\"$ref\": \"#/$defs/s\"}, {\"type\": \"array\"}], \"nullable\": true,"
		" \"$defs\": {\"s\": {\"type\": \"string\"}}}",
		"{\"oneOf\": [{\"anyOf\": [{\"type\": \"string\"}, {\"type\": \"null\"}]},"
		" {\"type\": \"number\"}]}",
	};
	static const struct { const char *schema, *msg; } bad[] = {
		{ "{\"oneOf\": [{\"type\": \"integer\"}, {\"type\": \"number\"}]}",
		  "at '/': 'oneOf' alternatives 0 and 1 may both match" },
		{ "{\"oneOf\": [{\"type\": \"string\"}, {\"type\": \"string\", \"maxLength\": 3}]}",
		  "alternatives 0 and 1" },
		{ "{\"properties\": {\"x\": {\"oneOf\": [{\"type\": \"boolean\"},"
		  " {\"type\": \"object\", \"properties\": {\"a\": {}}},"
		  " {\"type\": \"object\", \"properties\": {\"b\": {}}}]}}}",
		  "at '/properties/x': 'oneOf' alternatives 1 and 2" },
		{ "{\"oneOf\": [{\"enum\": [1, 2]}, {\"enum\": [2, 3]}]}", "alternatives 0 and 1" },
		{ "{\"oneOf\": [{\"type\": \"string\"}, {}]}", "alternatives 0 and 1" },
		/* without "type" an object's keywords leave every string valid too */
		{ "{\"oneOf\": [{\"properties\": {\"a\": {}}, \"required\": [\"a\"]},"
		  " {\"type\": \"string\"}]}", "alternatives 0 and 1" },
		{ "{\"oneOf\": [{\"type\": [\"string\", \"null\"]}], \"nullable\": true}",
		  "null would match twice" },
	};
	char err[512];

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		json_t *schema = json_loads(ok[i], 0, NULL);
		struct moe_grammar *g = NULL;

		ck_assert_ptr_nonnull(schema);
		ck_assert_msg(schema_compile(schema, &g, err, sizeof(err)) == 0, "'%s': %s", ok[i],
			      err);
		moe_grammar_destroy(g);
		json_decref(schema);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		json_t *schema = json_loads(bad[i].schema, 0, NULL);
		struct moe_grammar *g = NULL;

		ck_assert_ptr_nonnull(schema);
		ck_assert_msg(schema_compile(schema, &g, err, sizeof(err)) == -EINVAL,
			      "'%s' was accepted", bad[i].schema);
		ck_assert_msg(strstr(err, bad[i].msg), "'%s': '%s' lacks '%s'", bad[i].schema, err,
			      bad[i].msg);
		json_decref(schema);
	}
}
END_TEST

/* The converter's grammar text: embedded under a prefix, it names its rules so. */
START_TEST(schema_gbnf_prefix)
{
	json_t *schema = json_loads("{\"type\": \"object\", \"properties\": {\"a\": {\"type\": "
				    "\"string\"}}, \"required\": [\"a\"]}", 0, NULL);
	struct moe_grammar *g;
	char *gbnf, *full, err[256];
	size_t len;

	ck_assert_int_eq(schema_to_gbnf(schema, "args", &gbnf, err, sizeof(err)), 0);
	ck_assert_msg(strstr(gbnf, "args ::= ") && !strstr(gbnf, "root"), "%s", gbnf);
	len = strlen(gbnf) + 64;
	full = malloc(len);
	ck_assert_ptr_nonnull(full);
	snprintf(full, len, "root ::= \"call \" args\n%s", gbnf);
	free(gbnf);
	g = compile(full);
	ck_assert(whole(g, "call {\"a\": \"x\"}", 15));
	ck_assert(!whole(g, "call {}", 7));
	ck_assert_int_eq(schema_to_gbnf(schema, "bad name", &gbnf, err, sizeof(err)), -EINVAL);
	moe_grammar_destroy(g);
	free(full);
	json_decref(schema);
}
END_TEST

/* ------------------------------------------------------------ the tools */

static char *tdir, tmodel[4096];

static void tools_setup(void)
{
	char cmd[8400];

	tdir = tu_tmpdir();
	ck_assert_ptr_nonnull(tdir);
	snprintf(tmodel, sizeof(tmodel), "%s/m.gguf", tdir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --vocab-bpe -q -o %s", tu_bin("moe-mkmodel"),
		 tmodel);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
}

static void tools_teardown(void)
{
	tu_rmtree(tdir);
	free(tdir);
}

static const char *tfile(const char *name, const char *text)
{
	static char path[4][4200];
	static int k;
	char *p = path[k++ % 4];

	snprintf(p, sizeof(path[0]), "%s/%s", tdir, name);
	if (text)
		ck_assert_int_eq(tu_write_file(p, text, strlen(text)), 0);
	return p;
}

/* moe-run on the generated model; its exit status, stdout in *out. */
static int moe_run(const char *args, char **out)
{
	char cmd[9000];

	snprintf(cmd, sizeof(cmd), "%s -m %s -p 'give me JSON' --threads 1 %s 2>%s",
		 tu_bin("moe-run"), tmodel, args, tfile("run.err", NULL));
	return tu_run(cmd, 0, out);
}

START_TEST(moe_run_json_schema_validates)
{
	char path[4200];
	json_t *schema = json_loads(schemas[0], 0, NULL);
	int stopped = 0;

	snprintf(path, sizeof(path), "%s", tfile("s.json", schemas[0]));
	for (int seed = 1; seed <= 6; seed++) {
		char args[4400], *out, why[128] = "";
		json_t *v, *doc;
		int rc;

		snprintf(args, sizeof(args), "-n 400 --temp 1 --seed %d --json --json-schema %s",
			 seed, path);
		rc = moe_run(args, &out);
		v = json_loads(out, 0, NULL);
		if (!v) {
			char *err = tu_read_file(tfile("run.err", NULL), NULL);

			ck_abort_msg("seed %d: exit %d, not JSON: %s (stderr: %s)", seed, rc, out,
				     err);
		}
		if (!strcmp(json_string_value(json_object_get(v, "finish_reason")), "length")) {
			ck_assert_int_eq(rc, 1);
		} else {
			ck_assert_int_eq(rc, 0);
			stopped++;
			doc = json_loads(json_string_value(json_object_get(v, "text")),
					 JSON_ALLOW_NUL, NULL);
			ck_assert_msg(doc && valid(schema, doc, schema, why, sizeof(why)),
				      "seed %d: '%s' does not validate: %s", seed,
				      json_string_value(json_object_get(v, "text")), why);
			json_decref(doc);
		}
		json_decref(v);
		free(out);
	}
	ck_assert_msg(stopped >= 4, "only %d of 6 documents ended in 400 tokens", stopped);
	json_decref(schema);
}
END_TEST

START_TEST(moe_run_grammar_and_errors)
{
	char *out, *err;
	char args[4400];

	/* a grammar that ends: the output is exactly one of its documents */
	snprintf(args, sizeof(args), "-n 50 --temp 1 --seed 7 --grammar %s",
		 tfile("g.gbnf", "root ::= (\"yes\" | \"no\") \" \" [0-9]{2}\n"));
	ck_assert_int_eq(moe_run(args, &out), 0);
	ck_assert_msg(strlen(out) == 7 || strlen(out) == 6, "'%s'", out);
	ck_assert_msg(!strncmp(out, "yes ", 4) || !strncmp(out, "no ", 3), "'%s'", out);
	free(out);
	/* -n runs out mid-document: said, and the exit status says so too */
	snprintf(args, sizeof(args), "-n 2 --grammar %s",
		 tfile("long.gbnf", "root ::= \"ab\"{40}\n"));
	ck_assert_int_eq(moe_run(args, &out), 1);
	ck_assert_msg(!strncmp(out, "ab", 2), "'%s'", out);
	free(out);
	err = tu_read_file(tfile("run.err", NULL), NULL);
	ck_assert_msg(err && strstr(err, "ran out before the grammar's document was complete"),
		      "%s", err);
	free(err);
	/* bad grammars and schemas name the file and the place, before the model is read */
	snprintf(args, sizeof(args), "--grammar %s", tfile("bad.gbnf", "root ::= \"a\" b\n"));
	ck_assert_int_eq(moe_run(args, &out), 1);
	free(out);
	err = tu_read_file(tfile("run.err", NULL), NULL);
	ck_assert_msg(err && strstr(err, "bad.gbnf: grammar:1:14: rule 'b' is used but never "
				    "defined"), "%s", err);
	free(err);
	snprintf(args, sizeof(args), "--json-schema %s",
		 tfile("bad.json", "{\"type\": \"string\", \"pattern\": \"a\"}"));
	ck_assert_int_eq(moe_run(args, &out), 1);
	free(out);
	err = tu_read_file(tfile("run.err", NULL), NULL);
	ck_assert_msg(err && strstr(err, "bad.json: schema at '/': keyword 'pattern'"), "%s", err);
	free(err);
	/* a FIFO is refused, not waited on; a missing file is named */
	ck_assert_int_eq(mkfifo(tfile("fifo", NULL), 0600), 0);
	snprintf(args, sizeof(args), "--grammar %s", tfile("fifo", NULL));
	ck_assert_int_eq(moe_run(args, &out), 1);
	free(out);
	err = tu_read_file(tfile("run.err", NULL), NULL);
	ck_assert_msg(err && strstr(err, "is not a regular file"), "%s", err);
	free(err);
	snprintf(args, sizeof(args), "--json-schema %s/none.json", tdir);
	ck_assert_int_eq(moe_run(args, &out), 1);
	free(out);
	err = tu_read_file(tfile("run.err", NULL), NULL);
	ck_assert_msg(err && strstr(err, "none.json: No such file"), "%s", err);
	free(err);
	ck_assert_int_eq(moe_run("--json-object --grammar x", &out), 2);
	free(out);
}
END_TEST

struct gsrv {
	pid_t pid;
	int port;
};

static void gsrv_start(struct gsrv *s)
{
	const char *errf = tfile("srv.err", NULL);

	s->pid = fork();
	ck_assert_int_ge(s->pid, 0);
	if (!s->pid) {
		int fd = open(errf, O_WRONLY | O_CREAT | O_TRUNC, 0644);

		dup2(fd, 2);
		fd = open("/dev/null", O_RDWR);
		dup2(fd, 0);
		dup2(fd, 1);
		execl(tu_bin("moe-server"), "moe-server", "-m", tmodel, "--port", "0", "--threads",
		      "1", "--parallel", "2", (char *)NULL);
		_exit(127);
	}
	s->port = 0;
	for (int i = 0; i < 600 && !s->port; i++) {
		char *text = tu_read_file(errf, NULL), *p;

		if (text && (p = strstr(text, "listening on http://127.0.0.1:")))
			s->port = atoi(p + strlen("listening on http://127.0.0.1:"));
		free(text);
		if (!s->port)
			usleep(50000);
	}
	ck_assert_msg(s->port > 0, "moe-server did not start in 30 s (see %s)", errf);
}

static void gsrv_stop(struct gsrv *s)
{
	int st;

	kill(s->pid, SIGKILL);
	waitpid(s->pid, &st, 0);
}

/* POST @body to @path; the status, the body parsed into *out. */
static int post(const struct gsrv *s, const char *path, const char *body, json_t **out)
{
	char cmd[9000], *o = NULL, *nl;
	const char *bodyf = tfile("body.json", body);
	int code;

	snprintf(cmd, sizeof(cmd), "curl -sS --max-time 120 --data-binary @%s -H 'Content-Type: "
		 "application/json' -w '\\n%%{http_code}' http://127.0.0.1:%d%s", bodyf, s->port,
		 path);
	ck_assert_int_eq(tu_run(cmd, 0, &o), 0);
	nl = strrchr(o, '\n');
	ck_assert_ptr_nonnull(nl);
	code = atoi(nl + 1);
	*nl = 0;
	*out = json_loads(o, 0, NULL);
	ck_assert_msg(*out, "not JSON: %s", o);
	free(o);
	return code;
}

static const char *choice_text(json_t *v, bool chat, const char **finish)
{
	json_t *c = json_array_get(json_object_get(v, "choices"), 0);

	*finish = json_string_value(json_object_get(c, "finish_reason"));
	if (chat)
		return json_string_value(json_object_get(json_object_get(c, "message"), "content"));
	return json_string_value(json_object_get(c, "text"));
}

START_TEST(server_response_format)
{
	struct moe_grammar *obj;
	const char *gbnf, *finish, *text;
	struct gsrv s;
	char body[4096];
	json_t *v, *schema = json_loads(schemas[0], 0, NULL), *e;
	int stopped = 0, lengths = 0;

	ck_assert_int_eq(moe_grammar_builtin("json-object", &gbnf), 0);
	obj = compile(gbnf);
	gsrv_start(&s);
	/* json_object on both endpoints: a JSON object, or a prefix of one cut by max_tokens */
	for (int seed = 1; seed <= 6; seed++) {
		bool chat = seed % 2;

		snprintf(body, sizeof(body), "{%s, \"max_tokens\": 300, \"seed\": %d, "
			 "\"response_format\": {\"type\": \"json_object\"}}", chat ?
			 "\"messages\": [{\"role\": \"user\", \"content\": \"JSON please\"}]" :
			 "\"prompt\": \"JSON please\"", seed);
		ck_assert_int_eq(post(&s, chat ? "/v1/chat/completions" : "/v1/completions", body,
				      &v), 200);
		text = choice_text(v, chat, &finish);
		ck_assert_ptr_nonnull(text);
		ck_assert_int_eq(moe_grammar_reset(obj), 0);
		ck_assert_msg(moe_grammar_accept(obj, text, strlen(text)) == 0,
			      "seed %d: '%s' is not even the start of an object", seed, text);
		if (!strcmp(finish, "stop")) {
			json_t *doc = json_loads(text, JSON_ALLOW_NUL, NULL);

			ck_assert_msg(doc && json_is_object(doc), "seed %d: '%s'", seed, text);
			json_decref(doc);
			stopped++;
		} else {
			ck_assert_str_eq(finish, "length");
			ck_assert(!moe_grammar_is_complete(obj));
			lengths++;
		}
		json_decref(v);
	}
	ck_assert_msg(stopped >= 2, "%d of 6 objects ended", stopped);
	/* json_schema: what comes back validates */
	e = json_loads(schemas[0], 0, NULL);
	for (int seed = 1; seed <= 4; seed++) {
		json_t *rf = json_pack("{s:s,s:{s:s,s:O,s:b}}", "type", "json_schema", "json_schema",
				       "name", "person", "schema", e, "strict", 1);
		char *rfs = json_dumps(rf, JSON_COMPACT), why[128] = "";
		json_t *doc;

		snprintf(body, sizeof(body), "{\"messages\": [{\"role\": \"user\", \"content\": "
			 "\"who?\"}], \"max_tokens\": 400, \"seed\": %d, \"response_format\": %s}",
			 seed, rfs);
		free(rfs);
		json_decref(rf);
		ck_assert_int_eq(post(&s, "/v1/chat/completions", body, &v), 200);
		text = choice_text(v, true, &finish);
		if (!strcmp(finish, "stop")) {
			doc = json_loads(text, JSON_ALLOW_NUL, NULL);
			ck_assert_msg(doc && valid(schema, doc, schema, why, sizeof(why)),
				      "seed %d: '%s': %s", seed, text, why);
			json_decref(doc);
		} else {
			ck_assert_str_eq(finish, "length");
		}
		json_decref(v);
	}
	json_decref(e);
	/* max_tokens reached mid-document: finish_reason "length" */
	ck_assert_int_eq(post(&s, "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": 2, "
			      "\"response_format\": {\"type\": \"json_schema\", \"json_schema\": "
			      "{\"name\": \"a\", \"schema\": {\"type\": \"object\", \"properties\": "
			      "{\"aaaa\": {\"const\": \"bbbbbbbb\"}}, \"required\": [\"aaaa\"]}}}}",
			      &v), 200);
	choice_text(v, false, &finish);
	ck_assert_str_eq(finish, "length");
	json_decref(v);
	/* a bad schema, a bad format: 400 in the API's error shape, naming the field */
	ck_assert_int_eq(post(&s, "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", "
			      "\"content\": \"x\"}], \"response_format\": {\"type\": \"json_schema\","
			      " \"json_schema\": {\"name\": \"a\", \"schema\": {\"type\": \"string\","
			      " \"pattern\": \"x\"}}}}", &v), 400);
	e = json_object_get(v, "error");
	ck_assert_str_eq(json_string_value(json_object_get(e, "param")),
			 "response_format.json_schema.schema");
	ck_assert_msg(strstr(json_string_value(json_object_get(e, "message")), "'pattern'"), "%s",
		      json_string_value(json_object_get(e, "message")));
	ck_assert_str_eq(json_string_value(json_object_get(e, "type")), "invalid_request_error");
	json_decref(v);
	/* a oneOf whose alternatives overlap: 400 naming where */
	ck_assert_int_eq(post(&s, "/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", "
			      "\"content\": \"x\"}], \"response_format\": {\"type\": \"json_schema\","
			      " \"json_schema\": {\"name\": \"a\", \"schema\": {\"properties\": {\"n\":"
			      " {\"oneOf\": [{\"type\": \"integer\"}, {\"type\": \"number\"}]}}}}}}", &v),
			 400);
	e = json_object_get(v, "error");
	ck_assert_str_eq(json_string_value(json_object_get(e, "param")),
			 "response_format.json_schema.schema");
	ck_assert_msg(strstr(json_string_value(json_object_get(e, "message")), "at '/properties/n'"
			     ": 'oneOf' alternatives 0 and 1"), "%s",
		      json_string_value(json_object_get(e, "message")));
	json_decref(v);
	ck_assert_int_eq(post(&s, "/v1/completions", "{\"prompt\": \"x\", \"response_format\": "
			      "{\"type\": \"yaml\"}}", &v), 400);
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(v, "error"), "param")),
			 "response_format.type");
	json_decref(v);
	ck_assert_int_eq(post(&s, "/v1/completions", "{\"prompt\": \"x\", \"response_format\": "
			      "{\"type\": \"json_schema\", \"json_schema\": {\"schema\": {}}}}", &v),
			 400);
	ck_assert_str_eq(json_string_value(json_object_get(json_object_get(v, "error"), "param")),
			 "response_format.json_schema.name");
	json_decref(v);
	/* the server still answers after all that */
	ck_assert_int_eq(post(&s, "/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": 3, "
			      "\"response_format\": {\"type\": \"text\"}}", &v), 200);
	json_decref(v);
	gsrv_stop(&s);
	moe_grammar_destroy(obj);
	json_decref(schema);
	(void)lengths;
}
END_TEST

struct end_rec {
	int32_t last;
	int stop_after, n;
};

static int end_cb(void *arg, const float *logits, uint32_t n_rows, int32_t next)
{
	struct end_rec *r = arg;

	(void)logits;
	(void)n_rows;
	r->last = next;
	return ++r->n >= r->stop_after;
}

/* moe_ctx_gen_end: why moe_ctx_generate ended, and the finish_reason it reads as. */
START_TEST(generate_end_reasons)
{
	struct moe_model *m;
	struct moe_tokenizer *t;
	struct moe_ctx_params p;
	struct moe_ctx *ctx;
	struct moe_sample_params sp;
	struct moe_grammar *g;
	struct end_rec r = { .stop_after = 1000 };
	int32_t prompt[4];
	int n;

	ck_assert_msg(moe_model_open(tmodel, &m) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(moe_tokenizer_load(m, &t), 0);
	moe_ctx_params_init(&p);
	p.n_threads = 1;
	p.n_ctx = 128;
	ck_assert_msg(moe_ctx_create(m, &p, &ctx) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(moe_ctx_gen_end(ctx), MOE_GEN_END_NONE);
	ck_assert_ptr_null(moe_gen_end_reason(MOE_GEN_END_NONE));
	n = moe_tokenize(t, "The model", 9, MOE_TOK_ADD_BOS, prompt, 4);
	ck_assert_int_gt(n, 0);
	/* n_gen tokens: length */
	ck_assert_int_eq(moe_ctx_generate(ctx, prompt, (uint32_t)n, 5, NULL, 0, end_cb, &r), 5);
	ck_assert_int_eq(moe_ctx_gen_end(ctx), MOE_GEN_END_LENGTH);
	ck_assert_str_eq(moe_gen_end_reason(moe_ctx_gen_end(ctx)), "length");
	/* the callback stopped it: an end-of-generation token reads as such, else the callback */
	moe_sample_params_init(&sp);
	sp.tokenizer = t;
	r = (struct end_rec){ .stop_after = 2 };
	ck_assert_int_eq(moe_ctx_generate(ctx, prompt, (uint32_t)n, 5, &sp, 0, end_cb, &r), 2);
	ck_assert_int_eq(moe_ctx_gen_end(ctx), moe_tokenizer_is_eog(t, r.last) ?
			 MOE_GEN_END_EOG : MOE_GEN_END_CALLBACK);
	ck_assert_str_eq(moe_gen_end_reason(moe_ctx_gen_end(ctx)), "stop");
	/* a grammar whose document can only end: grammar, before n_gen runs out */
	g = compile("root ::= \"ab\"");
	sp.grammar = g;
	r = (struct end_rec){ .stop_after = 1000 };
	n = moe_ctx_generate(ctx, prompt, (uint32_t)n, 20, &sp, 0, end_cb, &r);
	ck_assert_int_ge(n, 1);
	ck_assert_int_le(n, 2);
	ck_assert_int_eq(moe_ctx_gen_end(ctx), MOE_GEN_END_GRAMMAR);
	ck_assert_str_eq(moe_gen_end_reason(MOE_GEN_END_GRAMMAR), "stop");
	/* a failure: error */
	ck_assert_int_lt(moe_ctx_generate(ctx, prompt, 0, 5, NULL, 0, NULL, NULL), 0);
	ck_assert_int_eq(moe_ctx_gen_end(ctx), MOE_GEN_END_ERROR);
	ck_assert_str_eq(moe_gen_end_reason(MOE_GEN_END_ERROR), "error");
	ck_assert_ptr_null(moe_gen_end_reason((enum moe_gen_end)99));
	moe_grammar_destroy(g);
	moe_ctx_destroy(ctx);
	moe_tokenizer_destroy(t);
	moe_model_destroy(m);
}
END_TEST

Suite *suite_grammar(void)
{
	Suite *s = suite_create("grammar");
	TCase *tc = tcase_create("engine");
	TCase *ts = tcase_create("sampler");
	TCase *tt = tcase_create("tools");

	tcase_add_test(tc, grammar_accepts_and_refuses);
	tcase_add_test(tc, grammar_repetition_bounds);
	tcase_add_test(tc, grammar_utf8_classes);
	tcase_add_test(tc, grammar_incremental_equals_whole);
	tcase_add_test(tc, grammar_clone_and_reset);
	tcase_add_test(tc, grammar_ambiguity);
	tcase_add_test(tc, grammar_errors_name_line_col);
	tcase_add_test(tc, grammar_builtin_json);
	suite_add_tcase(s, tc);
	tcase_set_timeout(ts, 300);
	tcase_add_test(ts, grammar_sampler_json_documents);
	tcase_add_test(ts, grammar_sampler_eog_and_reset);
	tcase_add_test(ts, grammar_sampler_first_space);
	tcase_add_test(ts, grammar_sampler_cost);
	tcase_add_test(ts, schema_documents_validate);
	tcase_add_test(ts, schema_refuses_by_keyword);
	tcase_add_test(ts, schema_one_of);
	tcase_add_test(ts, schema_gbnf_prefix);
	suite_add_tcase(s, ts);
	tcase_add_unchecked_fixture(tt, tools_setup, tools_teardown);
	tcase_set_timeout(tt, 600);
	tcase_add_test(tt, moe_run_json_schema_validates);
	tcase_add_test(tt, moe_run_grammar_and_errors);
	tcase_add_test(tt, server_response_format);
	tcase_add_test(tt, generate_end_reasons);
	suite_add_tcase(s, tt);
	return s;
}
