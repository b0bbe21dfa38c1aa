// SPDX-License-Identifier: MIT
/*
 * GBNF grammars: a parser that compiles the text into flat rules of
 * code-point sets and rule references, and an incremental matcher that keeps
 * every live parse as a stack of positions (a pushdown automaton run on all
 * alternatives at once).
 *
 * Compiled form: every rule is a run of elements, its alternatives separated
 * by G_ALT and closed by G_END.  Groups and repetitions become rules of their
 * own: x* is S ::= x S | (empty), x? is O ::= x | (empty), x{m,n} is m copies
 * of x and a chain of n - m optional ones.  A stack holds positions of
 * elements still to match, its top always a code-point set once normalised;
 * an empty stack is a finished parse.  Positions at the end of an
 * alternative are never pushed, so right recursion (what x* becomes) runs in
 * constant depth.  Left recursion would expand forever and is refused when
 * compiling, as is a repetition of something that can match nothing.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text/grammar.h"
#include "text/unicode.h"
#include "util/util.h"

enum {
	G_END,          /* end of a rule's last alternative */
	G_ALT,          /* end of an alternative, another follows */
	G_REF,          /* val: rule */
	G_SET,          /* val: code-point set */
	G_NSET,         /* val: set, negated */
	G_ANY,          /* any code point */
};

struct gelem {
	uint32_t type;
	uint32_t val;
};

struct range {
	uint32_t lo, hi;
};

#define MAX_RULES (1u << 16)
#define MAX_ELEMS (1u << 20)
#define MAX_REPEAT 1000
#define MAX_DEPTH 1024          /* positions on one stack */
#define MAX_STACKS 2048         /* live parses */
#define MAX_EXPAND 100000       /* expansion steps for one code point */
#define MAX_REC 4096            /* rules expanded inside one another without a character */
#define HASH_SIZE 4096          /* > MAX_STACKS: a free slot always exists */

struct hslot {
	uint32_t gen, off;
};

/* The compiled grammar, shared by a grammar and its clones. */
struct gcode {
	int refs;
	struct gelem *el;
	uint32_t n_el;
	uint32_t *rule_start;   /* first element of each rule */
	uint32_t n_rules;
	struct range *ranges;
	uint32_t *set_start;    /* [n_sets + 1] into ranges */
	uint32_t n_sets;
	uint32_t start;         /* a REF to root followed by G_END */
};

/* Live parses: stacks one after another, each as [depth, pos...]. */
struct gstacks {
	uint32_t *v;
	size_t len, cap;
	uint32_t n;
};

struct moe_grammar {
	struct gcode *code;
	struct gstacks cur;
	uint32_t cp, need;      /* a UTF-8 sequence begun: bits so far, bytes to come */
	uint32_t seq_len;       /* its total length */
	/* scratch for matching */
	struct gstacks a, b;
	uint32_t *work;
	struct hslot *hash;     /* the stacks of the step being built, by content */
	uint32_t gen;           /* slots of this step carry it */
	uint32_t steps, rec;
	bool overflow;
	uint8_t first[256];
	bool first_ok;
};

/* ------------------------------------------------------------ compiling */

struct prule {
	const char *name;       /* into the text; NULL for generated rules */
	uint32_t name_len;
	uint32_t parent;        /* the user rule a generated one belongs to */
	int line, col;          /* definition, or first reference while undefined */
	bool defined, used;
	struct gelem *el;
	uint32_t n, cap;
};

struct loc {
	uint32_t body;          /* the repeated element */
	uint32_t rule;          /* rule it is in (for messages) */
	int line, col;
};

struct parser {
	const char *s;
	size_t len, pos;
	int line, col;
	struct prule *rules;
	uint32_t n_rules, cap_rules;
	uint32_t cur_rule;      /* the user rule being parsed */
	struct range *ranges;
	uint32_t n_ranges, cap_ranges;
	uint32_t *set_start;
	uint32_t n_sets, cap_sets;
	struct loc *reps;
	uint32_t n_reps, cap_reps;
	uint32_t n_el;
	int depth;
	int err;
};

static int perr(struct parser *p, int line, int col, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int perr(struct parser *p, int line, int col, const char *fmt, ...)
{
	char msg[384];
	va_list ap;

	if (p->err)
		return p->err;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	p->err = moe_err(EINVAL, "grammar:%d:%d: %s", line, col, msg);
	return p->err;
}

#define PERR(p, ...) perr(p, (p)->line, (p)->col, __VA_ARGS__)

static int grow(void **v, uint32_t *cap, uint32_t need, size_t size)
{
	uint32_t c = *cap ? *cap : 16;
	void *n;

	if (need <= *cap)
		return 0;
	while (c < need)
		c *= 2;
	n = realloc(*v, (size_t)c * size);
	if (!n)
		return -ENOMEM;
	*v = n;
	*cap = c;
	return 0;
}

static int nomem(struct parser *p)
{
	if (!p->err)
		p->err = moe_err(ENOMEM, "grammar: out of memory");
	return p->err;
}

static bool at_end(const struct parser *p)
{
	return p->pos >= p->len;
}

static int peek(const struct parser *p)
{
	return at_end(p) ? -1 : (uint8_t)p->s[p->pos];
}

static void adv(struct parser *p, size_t n)
{
	while (n-- && p->pos < p->len) {
		if (p->s[p->pos] == '\n') {
			p->line++;
			p->col = 1;
		} else if (((uint8_t)p->s[p->pos] & 0xc0) != 0x80) {
			p->col++;
		}
		p->pos++;
	}
}

/* Spaces, tabs, newlines and # comments. */
static void skip_space(struct parser *p)
{
	while (!at_end(p)) {
		int c = peek(p);

		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			adv(p, 1);
		} else if (c == '#') {
			while (!at_end(p) && peek(p) != '\n')
				adv(p, 1);
		} else {
			break;
		}
	}
}

static bool word_char(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_';
}

static size_t word_len(const struct parser *p, size_t at)
{
	size_t n = 0;

	while (at + n < p->len && word_char((uint8_t)p->s[at + n]))
		n++;
	return n;
}

/* Whether a rule definition `name ::=` starts at the current position. */
static bool rule_starts(const struct parser *p)
{
	size_t n = word_len(p, p->pos), i = p->pos + n;

	if (!n)
		return false;
	while (i < p->len && (p->s[i] == ' ' || p->s[i] == '\t'))
		i++;
	return i + 3 <= p->len && !memcmp(p->s + i, "::=", 3);
}

static int new_rule(struct parser *p, const char *name, uint32_t len, uint32_t *out)
{
	struct prule *r;

	if (p->n_rules >= MAX_RULES)
		return PERR(p, "more than %u rules (groups and repetitions count as rules)",
			    MAX_RULES);
	if (grow((void **)&p->rules, &p->cap_rules, p->n_rules + 1, sizeof(*p->rules)))
		return nomem(p);
	r = &p->rules[p->n_rules];
	memset(r, 0, sizeof(*r));
	r->name = name;
	r->name_len = len;
	r->parent = name ? p->n_rules : p->cur_rule;
	r->line = p->line;
	r->col = p->col;
	*out = p->n_rules++;
	return 0;
}

static int find_rule(struct parser *p, const char *name, uint32_t len, uint32_t *out)
{
	for (uint32_t i = 0; i < p->n_rules; i++) {
		if (p->rules[i].name && p->rules[i].name_len == len &&
		    !memcmp(p->rules[i].name, name, len)) {
			*out = i;
			return 0;
		}
	}
	return new_rule(p, name, len, out);
}

static int emit(struct parser *p, uint32_t rule, uint32_t type, uint32_t val)
{
	struct prule *r = &p->rules[rule];

	if (p->n_el >= MAX_ELEMS)
		return PERR(p, "the grammar compiles to more than %u elements; use smaller "
			    "repetition counts", MAX_ELEMS);
	if (grow((void **)&r->el, &r->cap, r->n + 1, sizeof(*r->el)))
		return nomem(p);
	r->el[r->n++] = (struct gelem){ type, val };
	p->n_el++;
	return 0;
}

/* A new set of @n ranges; returns its index through @out. */
static int new_set(struct parser *p, const struct range *rg, uint32_t n, uint32_t *out)
{
	if (grow((void **)&p->ranges, &p->cap_ranges, p->n_ranges + n, sizeof(*p->ranges)) ||
	    grow((void **)&p->set_start, &p->cap_sets, p->n_sets + 2, sizeof(*p->set_start)))
		return nomem(p);
	if (!p->n_sets)
		p->set_start[0] = 0;
	memcpy(p->ranges + p->n_ranges, rg, sizeof(*rg) * n);
	p->n_ranges += n;
	*out = p->n_sets++;
	p->set_start[p->n_sets] = p->n_ranges;
	return 0;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* One code point of a literal or class, escapes decoded. */
static int parse_char(struct parser *p, uint32_t *cp)
{
	int line = p->line, col = p->col, c = peek(p), n;

	if (c < 0)
		return PERR(p, "the text ends inside a literal or character class");
	if (c == '\\') {
		int digits = 0;

		adv(p, 1);
		c = peek(p);
		switch (c) {
		case 'n': *cp = '\n'; break;
		case 'r': *cp = '\r'; break;
		case 't': *cp = '\t'; break;
		case '\\': case '"': case '\'': case '[': case ']': case '-': case '^':
			*cp = (uint32_t)c;
			break;
		case 'x': digits = 2; break;
		case 'u': digits = 4; break;
		case 'U': digits = 8; break;
		default:
			if (c < 0)
				return PERR(p, "the text ends after '\\'");
			return perr(p, line, col, "unknown escape '\\%c' (known: \\n \\r \\t \\\\ "
				    "\\\" \\[ \\] \\- \\^ \\xHH \\uHHHH \\UHHHHHHHH)",
				    c >= 0x20 && c < 0x7f ? c : '?');
		}
		adv(p, 1);
		if (digits) {
			uint32_t v = 0;

			for (int i = 0; i < digits; i++) {
				int h = hexval(peek(p));

				if (h < 0)
					return perr(p, line, col, "'\\%c' needs %d hexadecimal digits",
						    digits == 2 ? 'x' : digits == 4 ? 'u' : 'U', digits);
				v = v << 4 | (uint32_t)h;
				adv(p, 1);
			}
			if (v > 0x10ffff)
				return perr(p, line, col, "code point U+%X is past U+10FFFF", v);
			*cp = v;
		}
		return 0;
	}
	n = moe_utf8_decode((const uint8_t *)p->s + p->pos, p->len - p->pos, cp);
	if (!n)
		return PERR(p, "invalid UTF-8 (byte 0x%02x)", (unsigned)c);
	adv(p, (size_t)n);
	return 0;
}

static int parse_literal(struct parser *p, uint32_t rule)
{
	int line = p->line, col = p->col;

	adv(p, 1);
	for (;;) {
		struct range r;
		uint32_t set;

		if (at_end(p))
			return perr(p, line, col, "the literal starting here has no closing '\"'");
		if (peek(p) == '"')
			break;
		if (peek(p) == '\n')
			return perr(p, line, col, "the literal starting here runs into a new line "
				    "(write \\n for a newline)");
		if (parse_char(p, &r.lo) || new_set(p, (r.hi = r.lo, &r), 1, &set) ||
		    emit(p, rule, G_SET, set))
			return p->err;
	}
	adv(p, 1);
	return 0;
}

static int parse_class(struct parser *p, uint32_t rule)
{
	int line = p->line, col = p->col;
	struct range *rg = NULL;
	uint32_t n = 0, cap = 0, set;
	bool neg = false;

	adv(p, 1);
	if (peek(p) == '^') {
		neg = true;
		adv(p, 1);
	}
	while (peek(p) != ']') {
		struct range r;
		int rl = p->line, rc = p->col;

		if (at_end(p)) {
			free(rg);
			return perr(p, line, col, "the character class starting here has no closing "
				    "']'");
		}
		if (parse_char(p, &r.lo)) {
			free(rg);
			return p->err;
		}
		r.hi = r.lo;
		if (peek(p) == '-' && p->pos + 1 < p->len && p->s[p->pos + 1] != ']') {
			adv(p, 1);
			if (parse_char(p, &r.hi)) {
				free(rg);
				return p->err;
			}
			if (r.hi < r.lo) {
				free(rg);
				return perr(p, rl, rc, "range U+%04X-U+%04X runs backwards", r.lo, r.hi);
			}
		}
		if (grow((void **)&rg, &cap, n + 1, sizeof(*rg))) {
			free(rg);
			return nomem(p);
		}
		rg[n++] = r;
	}
	adv(p, 1);
	if (!n)
		return perr(p, line, col, "empty character class '[]' matches nothing");
	if (new_set(p, rg, n, &set)) {
		free(rg);
		return p->err;
	}
	free(rg);
	return emit(p, rule, neg ? G_NSET : G_SET, set);
}

static int parse_alternates(struct parser *p, uint32_t rule);

/* Move elements [from, n) of @rule into a rule of their own: returns it. */
static int split_rule(struct parser *p, uint32_t rule, uint32_t from, uint32_t *out)
{
	struct prule *r;
	uint32_t nr;
	int ret = new_rule(p, NULL, 0, &nr);

	if (ret)
		return ret;
	r = &p->rules[rule];
	for (uint32_t i = from; i < r->n; i++) {
		if (emit(p, nr, p->rules[rule].el[i].type, p->rules[rule].el[i].val))
			return p->err;
		r = &p->rules[rule];
	}
	p->n_el -= r->n - from;
	r->n = from;
	if (emit(p, nr, G_END, 0))
		return p->err;
	*out = nr;
	return 0;
}

/* The repeated item: elements [from, n) of @rule, with its bounds (max -1: none). */
static int repeat(struct parser *p, uint32_t rule, uint32_t from, long min, long max, int line,
		  int col)
{
	struct gelem body;
	uint32_t br = 0, nr = 0, prev = 0;

	if (p->rules[rule].n - from == 1) {
		body = p->rules[rule].el[from];
		p->rules[rule].n = from;
		p->n_el--;
	} else {
		if (split_rule(p, rule, from, &br))
			return p->err;
		body = (struct gelem){ G_REF, br };
	}
	for (long i = 0; i < min; i++)
		if (emit(p, rule, body.type, body.val))
			return p->err;
	if (max < 0) {
		/* S ::= body S | (empty) */
		if (new_rule(p, NULL, 0, &nr) || emit(p, nr, body.type, body.val) ||
		    emit(p, nr, G_REF, nr) || emit(p, nr, G_ALT, 0) || emit(p, nr, G_END, 0) ||
		    emit(p, rule, G_REF, nr))
			return p->err;
		if (grow((void **)&p->reps, &p->cap_reps, p->n_reps + 1, sizeof(*p->reps)))
			return nomem(p);
		p->reps[p->n_reps++] = (struct loc){ nr, p->cur_rule, line, col };
		return 0;
	}
	/* O_k ::= body O_k+1 | (empty), built from the last */
	for (long i = max - min; i > 0; i--) {
		if (new_rule(p, NULL, 0, &nr) || emit(p, nr, body.type, body.val) ||
		    (i < max - min && emit(p, nr, G_REF, prev)) || emit(p, nr, G_ALT, 0) ||
		    emit(p, nr, G_END, 0))
			return p->err;
		prev = nr;
	}
	if (max > min && emit(p, rule, G_REF, prev))
		return p->err;
	return 0;
}

static int parse_count(struct parser *p, long *out)
{
	long v = 0;

	if (peek(p) < '0' || peek(p) > '9')
		return PERR(p, "expected a number in '{m,n}'");
	while (peek(p) >= '0' && peek(p) <= '9') {
		v = v * 10 + (peek(p) - '0');
		if (v > MAX_REPEAT)
			return PERR(p, "repetition count over the limit of %d", MAX_REPEAT);
		adv(p, 1);
	}
	*out = v;
	return 0;
}

static int parse_postfix(struct parser *p, uint32_t rule, uint32_t from)
{
	int line = p->line, col = p->col, c = peek(p);
	long min, max;

	switch (c) {
	case '*': min = 0; max = -1; break;
	case '+': min = 1; max = -1; break;
	case '?': min = 0; max = 1; break;
	case '{':
		adv(p, 1);
		skip_space(p);
		if (parse_count(p, &min))
			return p->err;
		skip_space(p);
		max = min;
		if (peek(p) == ',') {
			adv(p, 1);
			skip_space(p);
			max = -1;
			if (peek(p) != '}' && parse_count(p, &max))
				return p->err;
			skip_space(p);
		}
		if (peek(p) != '}')
			return PERR(p, "expected '}' to close '{' at %d:%d", line, col);
		if (max >= 0 && max < min)
			return perr(p, line, col, "'{%ld,%ld}': the most is below the least", min,
				    max);
		break;
	default:
		return 0;
	}
	adv(p, 1);
	return repeat(p, rule, from, min, max, line, col);
}

/* One alternative: items until '|', ')', the end, or the next rule. */
static int parse_sequence(struct parser *p, uint32_t rule)
{
	for (;;) {
		uint32_t from = p->rules[rule].n, r;
		int c, line, col;

		skip_space(p);
		c = peek(p);
		line = p->line;
		col = p->col;
		if (c < 0 || c == '|' || c == ')')
			return 0;
		if (c == '"') {
			if (parse_literal(p, rule))
				return p->err;
		} else if (c == '[') {
			if (parse_class(p, rule))
				return p->err;
		} else if (c == '.') {
			adv(p, 1);
			if (emit(p, rule, G_ANY, 0))
				return p->err;
		} else if (c == '(') {
			adv(p, 1);
			if (++p->depth > 256)
				return PERR(p, "groups nested more than 256 deep");
			if (new_rule(p, NULL, 0, &r) || parse_alternates(p, r))
				return p->err;
			p->depth--;
			if (peek(p) != ')')
				return perr(p, line, col, "the group opened here has no closing ')'");
			adv(p, 1);
			if (emit(p, rule, G_REF, r))
				return p->err;
		} else if (word_char(c)) {
			size_t n = word_len(p, p->pos);

			if (p->depth == 0 && rule_starts(p))
				return 0;
			if (find_rule(p, p->s + p->pos, (uint32_t)n, &r))
				return p->err;
			if (!p->rules[r].defined && !p->rules[r].used) {
				p->rules[r].line = line;
				p->rules[r].col = col;
			}
			p->rules[r].used = true;
			adv(p, n);
			if (emit(p, rule, G_REF, r))
				return p->err;
		} else if (c == '*' || c == '+' || c == '?' || c == '{') {
			return PERR(p, "'%c' follows nothing it could repeat", c);
		} else if (c == ':' && p->pos + 3 <= p->len && !memcmp(p->s + p->pos, "::=", 3)) {
			return PERR(p, "'::=' without a rule name before it");
		} else {
			return PERR(p, "unexpected '%c' (expected a literal, [class], rule name, "
				    "'(', '|' or a new rule)", c >= 0x20 && c < 0x7f ? c : '?');
		}
		if (parse_postfix(p, rule, from))
			return p->err;
	}
}

static int parse_alternates(struct parser *p, uint32_t rule)
{
	for (;;) {
		if (parse_sequence(p, rule))
			return p->err;
		skip_space(p);
		if (peek(p) != '|')
			return emit(p, rule, G_END, 0);
		adv(p, 1);
		if (emit(p, rule, G_ALT, 0))
			return p->err;
	}
}

static int parse_rule(struct parser *p)
{
	int line = p->line, col = p->col;
	size_t n = word_len(p, p->pos);
	uint32_t r;

	if (!n)
		return PERR(p, "expected a rule name (letters, digits, '-', '_')");
	if (find_rule(p, p->s + p->pos, (uint32_t)n, &r))
		return p->err;
	if (p->rules[r].defined)
		return perr(p, line, col, "rule '%.*s' is defined twice (first at %d:%d)", (int)n,
			    p->s + p->pos, p->rules[r].line, p->rules[r].col);
	p->rules[r].defined = true;
	p->rules[r].line = line;
	p->rules[r].col = col;
	p->cur_rule = r;
	adv(p, n);
	skip_space(p);
	if (p->pos + 3 > p->len || memcmp(p->s + p->pos, "::=", 3))
		return PERR(p, "expected '::=' after rule name '%.*s'", (int)n,
			    p->rules[r].name);
	adv(p, 3);
	if (parse_alternates(p, r))
		return p->err;
	if (peek(p) == ')')
		return PERR(p, "')' without a '(' before it");
	return 0;
}

/* The name of a rule for messages: generated rules speak as their user rule. */
static void rule_name(const struct parser *p, uint32_t r, char *buf, size_t len)
{
	const struct prule *u = &p->rules[p->rules[r].parent];

	snprintf(buf, len, "%.*s", (int)(u->name_len > 64 ? 64 : u->name_len), u->name);
}

static bool el_nullable(const struct parser *p, const bool *null, const struct gelem *e)
{
	(void)p;
	return e->type == G_REF && null[e->val];
}

/* Rules that can match the empty string. */
static void nullable(const struct parser *p, bool *null)
{
	bool changed = true;

	memset(null, 0, sizeof(*null) * p->n_rules);
	while (changed) {
		changed = false;
		for (uint32_t r = 0; r < p->n_rules; r++) {
			const struct prule *pr = &p->rules[r];
			bool all = true;

			if (null[r])
				continue;
			for (uint32_t i = 0; i < pr->n; i++) {
				const struct gelem *e = &pr->el[i];

				if (e->type == G_ALT || e->type == G_END) {
					if (all) {
						null[r] = changed = true;
						break;
					}
					all = true;
				} else if (!el_nullable(p, null, e)) {
					all = false;
				}
			}
		}
	}
}

/* Depth-first over "may start with": a cycle is left recursion. */
static int left_dfs(struct parser *p, const bool *null, uint8_t *color, uint32_t *path,
		    uint32_t depth, uint32_t r)
{
	const struct prule *pr = &p->rules[r];
	bool open = true;

	color[r] = 1;
	path[depth] = r;
	for (uint32_t i = 0; i < pr->n; i++) {
		const struct gelem *e = &pr->el[i];

		if (e->type == G_ALT || e->type == G_END) {
			open = true;
			continue;
		}
		if (!open)
			continue;
		if (e->type == G_REF) {
			uint32_t t = e->val;

			if (color[t] == 1) {
				char cyc[256], name[72];
				size_t at = 0;
				uint32_t k = depth;

				while (path[k] != t)
					k--;
				for (uint32_t first = k; k <= depth && at < sizeof(cyc) - 80; k++) {
					/* a user rule's groups and repetitions speak as the rule */
					if (k > first && p->rules[path[k]].parent ==
							 p->rules[path[k - 1]].parent)
						continue;
					rule_name(p, path[k], name, sizeof(name));
					at += (size_t)snprintf(cyc + at, sizeof(cyc) - at, "%s -> ",
							       name);
				}
				rule_name(p, t, name, sizeof(name));
				snprintf(cyc + at, sizeof(cyc) - at, "%s", name);
				return perr(p, p->rules[p->rules[t].parent].line,
					    p->rules[p->rules[t].parent].col,
					    "rule '%s' is left-recursive (%s): it can reach itself "
					    "without matching a character; rewrite it with repetition, "
					    "e.g. list ::= item (\",\" item)*", name, cyc);
			}
			if (!color[t] && left_dfs(p, null, color, path, depth + 1, t))
				return p->err;
		}
		if (!el_nullable(p, null, e))
			open = false;
	}
	color[r] = 2;
	return 0;
}

static int check(struct parser *p, uint32_t *root)
{
	bool *null = NULL;
	uint8_t *color = NULL;
	uint32_t *path = NULL;
	bool have_root = false;

	for (uint32_t r = 0; r < p->n_rules; r++) {
		const struct prule *pr = &p->rules[r];

		if (pr->name && !pr->defined)
			return perr(p, pr->line, pr->col, "rule '%.*s' is used but never defined",
				    (int)(pr->name_len > 64 ? 64 : pr->name_len), pr->name);
		if (pr->name && pr->name_len == 4 && !memcmp(pr->name, "root", 4)) {
			*root = r;
			have_root = true;
		}
	}
	if (!have_root)
		return perr(p, p->line, p->col, "no rule 'root': the document must match "
			    "'root ::= ...'");
	null = malloc(sizeof(*null) * p->n_rules);
	color = calloc(p->n_rules, 1);
	path = malloc(sizeof(*path) * p->n_rules);
	if (!null || !color || !path) {
		free(null);
		free(color);
		free(path);
		return nomem(p);
	}
	nullable(p, null);
	for (uint32_t i = 0; i < p->n_reps; i++) {
		const struct gelem *e = &p->rules[p->reps[i].body].el[0];

		if (el_nullable(p, null, e)) {
			perr(p, p->reps[i].line, p->reps[i].col, "the item repeated here can match "
			     "the empty string, so the repetition would never end; make it match "
			     "at least one character");
			goto out;
		}
	}
	for (uint32_t r = 0; r < p->n_rules && !p->err; r++)
		if (!color[r])
			left_dfs(p, null, color, path, 0, r);
out:
	free(null);
	free(color);
	free(path);
	return p->err;
}

static void parser_free(struct parser *p)
{
	for (uint32_t r = 0; r < p->n_rules; r++)
		free(p->rules[r].el);
	free(p->rules);
	free(p->ranges);
	free(p->set_start);
	free(p->reps);
}

static void code_unref(struct gcode *c)
{
	if (!c || __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL))
		return;
	free(c->el);
	free(c->rule_start);
	free(c->ranges);
	free(c->set_start);
	free(c);
}

static int compile(const char *text, size_t len, struct gcode **out)
{
	struct parser p = { .s = text, .len = len, .line = 1, .col = 1 };
	struct gcode *c = NULL;
	uint32_t root = 0, at = 0;

	skip_space(&p);
	while (!at_end(&p) && !p.err) {
		parse_rule(&p);
		skip_space(&p);
	}
	if (!p.err)
		check(&p, &root);
	if (p.err)
		goto out;
	c = calloc(1, sizeof(*c));
	if (c) {
		c->refs = 1;
		c->n_el = p.n_el + 2;
		c->el = malloc(sizeof(*c->el) * c->n_el);
		c->rule_start = malloc(sizeof(*c->rule_start) * p.n_rules);
		c->ranges = malloc(sizeof(*c->ranges) * (p.n_ranges + 1));
		c->set_start = malloc(sizeof(*c->set_start) * (p.n_sets + 1));
	}
	if (!c || !c->el || !c->rule_start || !c->ranges || !c->set_start) {
		nomem(&p);
		code_unref(c);
		c = NULL;
		goto out;
	}
	for (uint32_t r = 0; r < p.n_rules; r++) {
		c->rule_start[r] = at;
		memcpy(c->el + at, p.rules[r].el, sizeof(*c->el) * p.rules[r].n);
		at += p.rules[r].n;
	}
	c->start = at;
	c->el[at++] = (struct gelem){ G_REF, root };
	c->el[at++] = (struct gelem){ G_END, 0 };
	c->n_rules = p.n_rules;
	if (p.n_ranges)
		memcpy(c->ranges, p.ranges, sizeof(*c->ranges) * p.n_ranges);
	if (p.n_sets)
		memcpy(c->set_start, p.set_start, sizeof(*c->set_start) * (p.n_sets + 1));
	else
		c->set_start[0] = 0;
	c->n_sets = p.n_sets;
out:
	parser_free(&p);
	*out = c;
	return p.err;
}

/* ------------------------------------------------------------ matching */

static bool set_has(const struct gcode *c, uint32_t set, uint32_t cp)
{
	for (uint32_t i = c->set_start[set]; i < c->set_start[set + 1]; i++)
		if (cp >= c->ranges[i].lo && cp <= c->ranges[i].hi)
			return true;
	return false;
}

/* Whether a code point in [lo, hi] matches @e. */
static bool el_meets(const struct gcode *c, const struct gelem *e, uint32_t lo, uint32_t hi)
{
	uint32_t s = e->val;

	if (e->type == G_ANY)
		return true;
	if (e->type == G_SET) {
		for (uint32_t i = c->set_start[s]; i < c->set_start[s + 1]; i++)
			if (c->ranges[i].lo <= hi && c->ranges[i].hi >= lo)
				return true;
		return false;
	}
	/* negated: some code point of [lo, hi] outside every range */
	for (uint32_t cp = lo;;) {
		bool moved = false;

		for (uint32_t i = c->set_start[s]; i < c->set_start[s + 1]; i++) {
			if (cp >= c->ranges[i].lo && cp <= c->ranges[i].hi) {
				if (c->ranges[i].hi >= hi)
					return false;
				cp = c->ranges[i].hi + 1;
				moved = true;
			}
		}
		if (!moved)
			return true;
	}
}

static bool el_match(const struct gcode *c, const struct gelem *e, uint32_t cp)
{
	switch (e->type) {
	case G_ANY: return true;
	case G_SET: return set_has(c, e->val, cp);
	case G_NSET: return !set_has(c, e->val, cp);
	default: return false;
	}
}

static uint32_t hash_stack(const uint32_t *s, uint32_t depth)
{
	uint32_t h = 2166136261u ^ depth;

	for (uint32_t i = 0; i < depth; i++)
		h = (h ^ s[i]) * 16777619u;
	return h;
}

static int stacks_reserve(struct gstacks *st, size_t more)
{
	size_t cap = st->cap ? st->cap : 256;
	uint32_t *v;

	if (st->len + more <= st->cap)
		return 0;
	while (cap < st->len + more)
		cap *= 2;
	v = realloc(st->v, sizeof(*v) * cap);
	if (!v)
		return -ENOMEM;
	st->v = v;
	st->cap = cap;
	return 0;
}

/* Add a normalised stack to @out unless it is there already. */
static void put_stack(struct moe_grammar *g, struct gstacks *out, const uint32_t *s,
		      uint32_t depth)
{
	uint32_t i = hash_stack(s, depth) & (HASH_SIZE - 1);

	for (; g->hash[i].gen == g->gen; i = (i + 1) & (HASH_SIZE - 1)) {
		const uint32_t *o = out->v + g->hash[i].off;

		if (o[0] == depth && !memcmp(o + 1, s, sizeof(*s) * depth))
			return;
	}
	if (out->n >= MAX_STACKS || stacks_reserve(out, depth + 1)) {
		g->overflow = true;
		return;
	}
	g->hash[i].gen = g->gen;
	g->hash[i].off = (uint32_t)out->len;
	out->v[out->len] = depth;
	memcpy(out->v + out->len + 1, s, sizeof(*s) * depth);
	out->len += depth + 1;
	out->n++;
}

/*
 * Expand the stack work[0..depth) until its top is a code-point set (or it is
 * empty), every alternative of each rule on top, into @out.  work[0..depth)
 * is as before on return.
 */
static void expand(struct moe_grammar *g, struct gstacks *out, uint32_t depth)
{
	const struct gcode *c = g->code;
	uint32_t *w = g->work, top, save, d, next, r;

	if (g->overflow)
		return;
	if (++g->steps > MAX_EXPAND || g->rec >= MAX_REC) {
		g->overflow = true;
		return;
	}
	if (!depth || c->el[w[depth - 1]].type != G_REF) {
		put_stack(g, out, w, depth);
		return;
	}
	top = w[depth - 1];
	save = top;
	r = c->el[top].val;
	d = depth - 1;
	next = top + 1;
	if (c->el[next].type != G_END && c->el[next].type != G_ALT)
		w[d++] = next;
	g->rec++;
	for (uint32_t a = c->rule_start[r];;) {
		uint32_t t = c->el[a].type;

		if (t == G_END || t == G_ALT) {
			expand(g, out, d);
		} else if (d >= MAX_DEPTH) {
			g->overflow = true;
		} else {
			w[d] = a;
			expand(g, out, d + 1);
		}
		/* to the next alternative */
		while (c->el[a].type != G_END && c->el[a].type != G_ALT)
			a++;
		if (c->el[a].type == G_END)
			break;
		a++;
	}
	g->rec--;
	w[depth - 1] = save;
}

static void begin_step(struct moe_grammar *g, struct gstacks *out)
{
	if (++g->gen == 0) {
		memset(g->hash, 0, sizeof(*g->hash) * HASH_SIZE);
		g->gen = 1;
	}
	out->len = 0;
	out->n = 0;
	g->steps = 0;
	g->rec = 0;
	g->overflow = false;
}

/* The stacks of @in after code point @cp, into @out. */
static int step(struct moe_grammar *g, const struct gstacks *in, struct gstacks *out,
		uint32_t cp)
{
	const struct gcode *c = g->code;
	size_t at = 0;

	begin_step(g, out);
	for (uint32_t k = 0; k < in->n; k++) {
		const uint32_t *s = in->v + at;
		uint32_t depth = s[0], top, d;

		at += depth + 1;
		if (!depth)
			continue;
		top = s[depth];
		if (!el_match(c, &c->el[top], cp))
			continue;
		memcpy(g->work, s + 1, sizeof(*s) * (depth - 1));
		d = depth - 1;
		if (c->el[top + 1].type != G_END && c->el[top + 1].type != G_ALT)
			g->work[d++] = top + 1;
		expand(g, out, d);
		if (g->overflow)
			break;
	}
	return g->overflow ? -E2BIG : 0;
}

static void swap(struct gstacks *a, struct gstacks *b)
{
	struct gstacks t = *a;

	*a = *b;
	*b = t;
}

static int utf8_seq_len(uint8_t b)
{
	if (b < 0x80)
		return 1;
	if (b >= 0xc2 && b <= 0xdf)
		return 2;
	if (b >= 0xe0 && b <= 0xef)
		return 3;
	if (b >= 0xf0 && b <= 0xf4)
		return 4;
	return 0;
}

/* Whether some code point that the pending sequence may still become matches a top. */
static bool partial_ok(const struct moe_grammar *g, const struct gstacks *st, uint32_t cp,
		       uint32_t need, uint32_t seq_len)
{
	static const uint32_t min_cp[5] = { 0, 0, 0x80, 0x800, 0x10000 };
	const struct gcode *c = g->code;
	uint32_t lo = cp << (6 * need), hi = lo | ((1u << (6 * need)) - 1);
	size_t at = 0;

	if (lo < min_cp[seq_len])
		lo = min_cp[seq_len];
	if (hi > 0x10ffff)
		hi = 0x10ffff;
	/* surrogates are not characters: a prefix that can only become one is refused */
	if (lo > hi || (lo >= 0xd800 && hi <= 0xdfff))
		return false;
	for (uint32_t k = 0; k < st->n; k++) {
		const uint32_t *s = st->v + at;

		at += s[0] + 1;
		if (s[0] && el_meets(c, &c->el[s[s[0]]], lo, hi))
			return true;
	}
	return false;
}

/*
 * Run @len bytes from the current state; the resulting stacks end in g->a
 * (or are g->cur when no code point completed: *moved false).
 */
static int run(struct moe_grammar *g, const uint8_t *b, size_t len, uint32_t *cp,
	       uint32_t *need, uint32_t *seq_len, bool *moved)
{
	const struct gstacks *in = &g->cur;
	int ret;

	*moved = false;
	for (size_t i = 0; i < len; i++) {
		uint32_t v;

		if (*need) {
			if ((b[i] & 0xc0) != 0x80)
				return -EILSEQ;
			*cp = *cp << 6 | (b[i] & 0x3f);
			if (--*need)
				continue;
			v = *cp;
			if ((*seq_len == 3 && v < 0x800) || (*seq_len == 4 && v < 0x10000) ||
			    v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
				return -EILSEQ;
		} else {
			int n = utf8_seq_len(b[i]);

			if (!n)
				return -EILSEQ;
			if (n > 1) {
				*seq_len = (uint32_t)n;
				*need = (uint32_t)n - 1;
				*cp = b[i] & (0x7f >> n);
				if (!partial_ok(g, in, *cp, *need, *seq_len))
					return -EILSEQ;
				continue;
			}
			v = b[i];
		}
		ret = step(g, in, &g->b, v);
		if (ret)
			return ret;
		if (!g->b.n)
			return -EILSEQ;
		swap(&g->a, &g->b);
		in = &g->a;
		*moved = true;
	}
	if (*need && !partial_ok(g, in, *cp, *need, *seq_len))
		return -EILSEQ;
	return 0;
}

static int init_state(struct moe_grammar *g)
{
	begin_step(g, &g->cur);
	g->work[0] = g->code->start;
	expand(g, &g->cur, 1);
	g->cp = g->need = g->seq_len = 0;
	g->first_ok = false;
	if (g->overflow)
		return moe_err(E2BIG, "grammar: the start of the grammar is too ambiguous (over "
			       "%u parses at once)", MAX_STACKS);
	return 0;
}

static int grammar_new(struct gcode *code, struct moe_grammar **out)
{
	struct moe_grammar *g = calloc(1, sizeof(*g));

	*out = NULL;
	if (!g)
		return moe_err(ENOMEM, "grammar: out of memory");
	g->code = code;
	g->work = malloc(sizeof(*g->work) * (MAX_DEPTH + 2));
	g->hash = calloc(HASH_SIZE, sizeof(*g->hash));
	if (!g->work || !g->hash) {
		moe_grammar_destroy(g);
		return moe_err(ENOMEM, "grammar: out of memory");
	}
	*out = g;
	return 0;
}

MOE_API int moe_grammar_create(const char *text, size_t len, struct moe_grammar **out)
{
	struct gcode *code;
	int ret;

	if (!out || (!text && len))
		return moe_err(EINVAL, "moe_grammar_create: text and out must not be NULL");
	*out = NULL;
	ret = compile(text ? text : "", len, &code);
	if (ret)
		return ret;
	ret = grammar_new(code, out);
	if (ret) {
		code_unref(code);
		return ret;
	}
	ret = init_state(*out);
	if (ret) {
		moe_grammar_destroy(*out);
		*out = NULL;
	}
	return ret;
}

MOE_API int moe_grammar_clone(const struct moe_grammar *g, struct moe_grammar **out)
{
	struct moe_grammar *n;
	int ret;

	if (!g || !out)
		return moe_err(EINVAL, "moe_grammar_clone: grammar and out must not be NULL");
	__atomic_add_fetch(&g->code->refs, 1, __ATOMIC_RELAXED);
	ret = grammar_new(g->code, &n);
	if (ret) {
		code_unref(g->code);
		*out = NULL;
		return ret;
	}
	if (stacks_reserve(&n->cur, g->cur.len ? g->cur.len : 1)) {
		moe_grammar_destroy(n);
		*out = NULL;
		return moe_err(ENOMEM, "grammar: out of memory");
	}
	memcpy(n->cur.v, g->cur.v, sizeof(*g->cur.v) * g->cur.len);
	n->cur.len = g->cur.len;
	n->cur.n = g->cur.n;
	n->cp = g->cp;
	n->need = g->need;
	n->seq_len = g->seq_len;
	*out = n;
	return 0;
}

MOE_API int moe_grammar_reset(struct moe_grammar *g)
{
	if (!g)
		return moe_err(EINVAL, "moe_grammar_reset: NULL grammar");
	return init_state(g);
}

MOE_API void moe_grammar_destroy(struct moe_grammar *g)
{
	if (!g)
		return;
	code_unref(g->code);
	free(g->cur.v);
	free(g->a.v);
	free(g->b.v);
	free(g->work);
	free(g->hash);
	free(g);
}

MOE_API int moe_grammar_accept(struct moe_grammar *g, const char *bytes, size_t len)
{
	uint32_t cp, need, seq_len;
	bool moved;
	int ret;

	if (!g || (!bytes && len))
		return moe_err(EINVAL, "moe_grammar_accept: NULL grammar or bytes");
	cp = g->cp;
	need = g->need;
	seq_len = g->seq_len;
	ret = run(g, (const uint8_t *)bytes, len, &cp, &need, &seq_len, &moved);
	if (ret == -E2BIG)
		return moe_err(E2BIG, "grammar: over %u parses alive at once, or one nested over "
			       "%u deep: the grammar is too ambiguous for this text", MAX_STACKS,
			       MAX_DEPTH);
	if (ret == -ENOMEM)
		return moe_err(ENOMEM, "grammar: out of memory");
	if (ret)
		return moe_err(EILSEQ, "grammar: the text does not continue the grammar");
	if (moved)
		swap(&g->cur, &g->a);
	g->cp = cp;
	g->need = need;
	g->seq_len = seq_len;
	g->first_ok = false;
	return 0;
}

MOE_API bool moe_grammar_allows(struct moe_grammar *g, const char *bytes, size_t len)
{
	uint32_t cp, need, seq_len;
	bool moved;

	if (!g || (!bytes && len))
		return false;
	if (len && !grammar_first_bytes(g)[(uint8_t)bytes[0]])
		return false;
	cp = g->cp;
	need = g->need;
	seq_len = g->seq_len;
	return run(g, (const uint8_t *)bytes, len, &cp, &need, &seq_len, &moved) == 0;
}

MOE_API bool moe_grammar_is_complete(const struct moe_grammar *g)
{
	size_t at = 0;

	if (!g || g->need)
		return false;
	for (uint32_t k = 0; k < g->cur.n; k++) {
		if (!g->cur.v[at])
			return true;
		at += g->cur.v[at] + 1;
	}
	return false;
}

MOE_API bool moe_grammar_can_continue(const struct moe_grammar *g)
{
	size_t at = 0;

	if (!g)
		return false;
	if (g->need)
		return true;
	for (uint32_t k = 0; k < g->cur.n; k++) {
		if (g->cur.v[at])
			return true;
		at += g->cur.v[at] + 1;
	}
	return false;
}

static void mark(uint8_t *f, uint32_t lo, uint32_t hi)
{
	for (uint32_t b = lo; b <= hi; b++)
		f[b] = 1;
}

/* The first bytes of the UTF-8 forms of code points lo..hi. */
static void mark_range(uint8_t *f, uint32_t lo, uint32_t hi)
{
	if (lo <= 0x7f)
		mark(f, lo, hi < 0x7f ? hi : 0x7f);
	if (hi >= 0x80 && lo <= 0x7ff)
		mark(f, 0xc0 | ((lo < 0x80 ? 0x80 : lo) >> 6), 0xc0 | ((hi > 0x7ff ? 0x7ff : hi) >> 6));
	if (hi >= 0x800 && lo <= 0xffff)
		mark(f, 0xe0 | ((lo < 0x800 ? 0x800 : lo) >> 12),
		     0xe0 | ((hi > 0xffff ? 0xffff : hi) >> 12));
	if (hi >= 0x10000)
		mark(f, 0xf0 | ((lo < 0x10000 ? 0x10000 : lo) >> 18),
		     0xf0 | ((hi > 0x10ffff ? 0x10ffff : hi) >> 18));
}

const uint8_t *grammar_first_bytes(struct moe_grammar *g)
{
	const struct gcode *c = g->code;
	size_t at = 0;

	if (g->first_ok)
		return g->first;
	memset(g->first, 0, sizeof(g->first));
	if (g->need) {
		mark(g->first, 0x80, 0xbf);
		g->first_ok = true;
		return g->first;
	}
	for (uint32_t k = 0; k < g->cur.n; k++) {
		const uint32_t *s = g->cur.v + at;
		const struct gelem *e;

		at += s[0] + 1;
		if (!s[0])
			continue;
		e = &c->el[s[s[0]]];
		if (e->type == G_SET) {
			for (uint32_t i = c->set_start[e->val]; i < c->set_start[e->val + 1]; i++)
				mark_range(g->first, c->ranges[i].lo, c->ranges[i].hi);
		} else {
			/* negated sets match nearly everything: no filter */
			mark_range(g->first, 0, 0x10ffff);
		}
	}
	g->first_ok = true;
	return g->first;
}

/*
 * JSON (RFC 8259) with limits that keep generation finite and the result
 * readable by every parser: at most one space, or a newline and 16 indenting
 * blanks, where whitespace may go; numbers of at most 16 integer, 16
 * fraction and 2 exponent digits (a double: parsers refuse 1e999); no \u
 * escape of a UTF-16 surrogate (a lone one is refused by most parsers, and
 * any character can be written as itself).
 */
#define JSON_RULES \
	"value  ::= object | array | string | number | \"true\" | \"false\" | \"null\"\n" \
	"object ::= \"{\" ws ( member ( \",\" ws member )* )? \"}\"\n" \
	"member ::= string ws \":\" ws value ws\n" \
	"array  ::= \"[\" ws ( value ws ( \",\" ws value ws )* )? \"]\"\n" \
	"string ::= \"\\\"\" char* \"\\\"\"\n" \
	"char   ::= [^\"\\\\\\x00-\\x1f] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" hex4 )\n" \
	"hex4   ::= [0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2}\n" \
	"number ::= \"-\"? ( \"0\" | [1-9] [0-9]{0,15} ) ( \".\" [0-9]{1,16} )?" \
	" ( [eE] [-+]? [0-9]{1,2} )?\n" \
	"ws     ::= ( \" \" | \"\\n\" [ \\t]{0,16} )?\n"

static const struct {
	const char *name;
	const char *text;
} builtins[] = {
	{ "json", "root   ::= value\n" JSON_RULES },
	{ "json-object", "root   ::= object\n" JSON_RULES },
};

MOE_API int moe_grammar_builtin(const char *name, const char **text)
{
	if (!name || !text)
		return moe_err(EINVAL, "moe_grammar_builtin: name and text must not be NULL");
	for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) {
		if (!strcmp(name, builtins[i].name)) {
			*text = builtins[i].text;
			return 0;
		}
	}
	return moe_err(ENOENT, "no built-in grammar '%s' (there are json and json-object)", name);
}
