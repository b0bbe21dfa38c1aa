// SPDX-License-Identifier: MIT
/*
 * JSON Schema to GBNF (see schema.h).  Each schema becomes a rule; objects
 * list their properties in the schema's order, required ones always and
 * optional ones maybe, through two rules per position: F_i (no property
 * written yet) and R_i (one was: the next needs a comma), so that commas come
 * out right however many optional properties are left out.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/moe.h"
#include "schema.h"
#include "strbuf.h"

#define MAX_DEPTH 64
#define MAX_COUNT 1000          /* the grammar's repetition limit */
#define MAX_OUT (4u << 20)

enum prim { P_WS, P_STRING, P_CHAR, P_NUMBER, P_INTEGER, P_BOOLEAN, P_NULL, P_VALUE, P_OBJECT,
	    P_MEMBER, P_ARRAY, P_KEY, P_COUNT };

static const char *const prim_name[P_COUNT] = {
	"ws", "string", "char", "number", "integer", "boolean", "null", "value", "object",
	"member", "array", "key",
};

struct ref {
	char *ref;
	unsigned id;
};

struct conv {
	const json_t *root;
	const char *prefix;
	struct strbuf out;
	unsigned next;
	unsigned prims;         /* 1 << enum prim used */
	struct ref *refs;
	size_t n_refs;
	char *err;
	size_t errlen;
	int ret;
	int depth;
	unsigned flags;         /* SCHEMA_GEMMA: Gemma 4's argument syntax */
};

#define GQ "<|\"|>"            /* Gemma 4's string quote */
#define GEMMA_KEY "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"

static int fail(struct conv *c, const char *path, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct conv *c, const char *path, const char *fmt, ...)
{
	char msg[384];
	va_list ap;

	if (c->ret)
		return c->ret;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(c->err, c->errlen, "schema at '%s': %s", *path ? path : "/", msg);
	c->ret = -EINVAL;
	return c->ret;
}

typedef char name_t[96];

/* Rule @id's name; rule 0 is the schema itself, named the prefix. */
static void rule_name(const struct conv *c, unsigned id, char *buf)
{
	if (id)
		snprintf(buf, sizeof(name_t), "%s-%u", c->prefix, id);
	else
		snprintf(buf, sizeof(name_t), "%s", c->prefix);
}

static const char *prim(struct conv *c, enum prim p, char *buf)
{
	static const unsigned deps[P_COUNT] = {
		[P_STRING] = 1u << P_CHAR,
		[P_VALUE] = 1u << P_OBJECT | 1u << P_ARRAY | 1u << P_STRING | 1u << P_NUMBER |
			    1u << P_BOOLEAN | 1u << P_NULL,
		[P_OBJECT] = 1u << P_MEMBER | 1u << P_WS,
		[P_MEMBER] = 1u << P_STRING | 1u << P_WS | 1u << P_VALUE | 1u << P_KEY,
		[P_ARRAY] = 1u << P_VALUE | 1u << P_WS,
	};

	c->prims |= 1u << p | deps[p];
	if (p == P_VALUE || p == P_OBJECT || p == P_MEMBER || p == P_ARRAY || p == P_STRING)
		c->prims |= deps[P_VALUE] | deps[P_OBJECT] | deps[P_MEMBER] | deps[P_ARRAY] |
			    deps[P_STRING];
	snprintf(buf, sizeof(name_t), "%s-%s", c->prefix, prim_name[p]);
	return buf;
}

/* @s as a GBNF literal's contents. */
static void add_literal(struct strbuf *b, const char *s, size_t len)
{
	strbuf_addf(b, "\"");
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch == '"' || ch == '\\')
			strbuf_addf(b, "\\%c", ch);
		else if (ch == '\n')
			strbuf_addf(b, "\\n");
		else if (ch < 0x20 || ch == 0x7f)
			strbuf_addf(b, "\\x%02x", ch);
		else
			strbuf_addf(b, "%c", ch);
	}
	strbuf_addf(b, "\"");
}

/* @v in Gemma 4's argument syntax: strings in <|"|>, keys bare, null as None. */
static void gemma_text(struct strbuf *b, const json_t *v)
{
	const char *k;
	json_t *e;
	size_t i;
	char *s;

	if (json_is_string(v)) {
		strbuf_addf(b, GQ);
		strbuf_addn(b, json_string_value(v), json_string_length(v));
		strbuf_addf(b, GQ);
	} else if (json_is_null(v)) {
		strbuf_addf(b, "None");
	} else if (json_is_object(v)) {
		i = 0;
		strbuf_addf(b, "{");
		json_object_foreach((json_t *)v, k, e) {
			strbuf_addf(b, "%s%s:", i++ ? "," : "", k);
			gemma_text(b, e);
		}
		strbuf_addf(b, "}");
	} else if (json_is_array(v)) {
		strbuf_addf(b, "[");
		json_array_foreach(v, i, e) {
			if (i)
				strbuf_addf(b, ",");
			gemma_text(b, e);
		}
		strbuf_addf(b, "]");
	} else if ((s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT))) {
		strbuf_addf(b, "%s", s);
		free(s);
	} else {
		b->oom = true;
	}
}

/* A JSON value as the literal of its compact form (or of its Gemma 4 form). */
static int add_json_literal(struct conv *c, struct strbuf *b, const json_t *v, const char *path)
{
	char *s;

	if (c->flags & SCHEMA_GEMMA) {
		struct strbuf t = { .max = MAX_OUT };

		gemma_text(&t, v);
		if (t.oom) {
			free(t.s);
			return c->ret = -ENOMEM;
		}
		add_literal(b, t.s, t.n);
		free(t.s);
		return 0;
	}
	s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);

	if (!s)
		return fail(c, path, "a value of 'enum' or 'const' cannot be written as JSON");
	add_literal(b, s, strlen(s));
	free(s);
	return 0;
}

static const char *const annotations[] = {
	"title", "description", "$schema", "$id", "$comment", "default", "examples",
	"deprecated", "readOnly", "writeOnly", "$defs", "definitions",
};

static const char *const keywords[] = {
	"type", "properties", "required", "additionalProperties", "items", "minItems",
	"maxItems", "minLength", "maxLength", "enum", "const", "anyOf", "oneOf", "$ref",
	"nullable",
};

static bool in(const char *k, const char *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strcmp(k, list[i]))
			return true;
	return false;
}

#define N(a) (sizeof(a) / sizeof((a)[0]))

static int check_keywords(struct conv *c, const json_t *s, const char *path)
{
	const char *k;
	json_t *v;

	json_object_foreach((json_t *)s, k, v) {
		if (in(k, annotations, N(annotations)) || in(k, keywords, N(keywords)))
			continue;
		if (!strcmp(k, "pattern") || !strcmp(k, "patternProperties"))
			return fail(c, path, "keyword '%s' (a regular expression) is not supported: "
				    "list the allowed values with 'enum', or drop it", k);
		return fail(c, path, "keyword '%.64s' is not supported (supported: type, "
			    "properties, required, additionalProperties, items, minItems, maxItems, "
			    "minLength, maxLength, enum, const, anyOf, oneOf, $ref, nullable)", k);
	}
	return 0;
}

static int gen(struct conv *c, const json_t *s, const char *path, char *name);
static int gen_named(struct conv *c, const json_t *s, const char *path, const char *name);

/* The child's path: @path + "/" + @a (+ "/" + @b), JSON-pointer escaped. */
static void child_path(char *buf, size_t len, const char *path, const char *a, const char *b)
{
	size_t at = (size_t)snprintf(buf, len, "%s", path);

	for (const char *part = a; part && at + 4 < len; part = part == a ? b : NULL) {
		buf[at++] = '/';
		for (const char *p = part; *p && at + 3 < len; p++) {
			if (*p == '~' || *p == '/') {
				buf[at++] = '~';
				buf[at++] = *p == '~' ? '0' : '1';
			} else {
				buf[at++] = *p;
			}
		}
		buf[at] = 0;
	}
}

static int get_count(struct conv *c, const json_t *s, const char *key, const char *path,
		     long *out)
{
	const json_t *v = json_object_get(s, key);

	if (!v)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return fail(c, path, "'%s' must be a non-negative integer", key);
	if (json_integer_value(v) > MAX_COUNT)
		return fail(c, path, "'%s' %lld is over %d, the most this converter writes out", key,
			    (long long)json_integer_value(v), MAX_COUNT);
	*out = (long)json_integer_value(v);
	return 0;
}

/* "{lo,hi}" of a repetition, hi < 0: none. */
static void add_bounds(struct strbuf *b, long lo, long hi)
{
	if (hi < 0)
		strbuf_addf(b, lo == 0 ? "*" : lo == 1 ? "+" : "{%ld,}", lo);
	else if (lo == hi)
		strbuf_addf(b, "{%ld}", lo);
	else
		strbuf_addf(b, "{%ld,%ld}", lo, hi);
}

static int gen_string(struct conv *c, const json_t *s, struct strbuf *b, const char *path)
{
	long lo = 0, hi = -1;
	name_t n;

	if (get_count(c, s, "minLength", path, &lo) || get_count(c, s, "maxLength", path, &hi))
		return c->ret;
	if (hi >= 0 && hi < lo)
		return fail(c, path, "'maxLength' %ld is below 'minLength' %ld", hi, lo);
	if (lo == 0 && hi < 0) {
		strbuf_addf(b, "%s", prim(c, P_STRING, n));
		return 0;
	}
	if (c->flags & SCHEMA_GEMMA) {
		strbuf_addf(b, "\"<|\\\"|>\" %s", prim(c, P_CHAR, n));
		add_bounds(b, lo, hi);
		strbuf_addf(b, " \"<|\\\"|>\"");
		return 0;
	}
	strbuf_addf(b, "\"\\\"\" %s", prim(c, P_CHAR, n));
	add_bounds(b, lo, hi);
	strbuf_addf(b, " \"\\\"\"");
	return 0;
}

static int gen_array(struct conv *c, const json_t *s, struct strbuf *b, const char *path)
{
	const json_t *items = json_object_get(s, "items");
	long lo = 0, hi = -1;
	char sub[512];
	name_t item, ws;

	if (get_count(c, s, "minItems", path, &lo) || get_count(c, s, "maxItems", path, &hi))
		return c->ret;
	if (hi >= 0 && hi < lo)
		return fail(c, path, "'maxItems' %ld is below 'minItems' %ld", hi, lo);
	if (items) {
		child_path(sub, sizeof(sub), path, "items", NULL);
		if (json_is_array(items))
			return fail(c, sub, "'items' as an array (tuples) is not supported");
		if (gen(c, items, sub, item))
			return c->ret;
	} else {
		prim(c, P_VALUE, item);
	}
	prim(c, P_WS, ws);
	if (hi == 0) {
		strbuf_addf(b, "\"[\" %s \"]\"", ws);
		return 0;
	}
	if (lo == 0) {
		strbuf_addf(b, "\"[\" %s ( %s %s ( \",\" %s %s %s )", ws, item, ws, ws, item, ws);
		add_bounds(b, 0, hi < 0 ? -1 : hi - 1);
		strbuf_addf(b, " )? \"]\"");
	} else {
		strbuf_addf(b, "\"[\" %s %s %s ( \",\" %s %s %s )", ws, item, ws, ws, item, ws);
		add_bounds(b, lo - 1, hi < 0 ? -1 : hi - 1);
		strbuf_addf(b, " \"]\"");
	}
	return 0;
}

static bool is_required(const json_t *req, const char *key)
{
	size_t i;
	json_t *v;

	json_array_foreach(req, i, v)
		if (!strcmp(json_string_value(v), key))
			return true;
	return false;
}

static int gen_object(struct conv *c, const json_t *s, struct strbuf *b, const char *path)
{
	const json_t *props = json_object_get(s, "properties"), *req = json_object_get(s, "required");
	const json_t *add = json_object_get(s, "additionalProperties");
	size_t n = props ? json_object_size(props) : 0, i;
	unsigned base;
	name_t ws, str, member, nm, nm2;
	char sub[512];
	const char *key;
	json_t *v;
	bool extra;

	if (props && !json_is_object(props))
		return fail(c, path, "'properties' must be an object");
	if (req && !json_is_array(req))
		return fail(c, path, "'required' must be an array of property names");
	json_array_foreach(req, i, v) {
		if (!json_is_string(v))
			return fail(c, path, "'required'[%zu] must be a string", i);
		if (!props || !json_object_get(props, json_string_value(v)))
			return fail(c, path, "required property '%.64s' is not in 'properties'",
				    json_string_value(v));
	}
	/* without properties any member may come; with them, only those unless told */
	extra = add ? !json_is_false(add) : !props;
	if (add && !json_is_boolean(add) && !json_is_object(add))
		return fail(c, path, "'additionalProperties' must be a boolean or a schema");
	prim(c, P_WS, ws);
	if (extra) {
		if (json_is_object(add) && json_object_size(add)) {
			name_t val;

			child_path(sub, sizeof(sub), path, "additionalProperties", NULL);
			if (gen(c, add, sub, val))
				return c->ret;
			rule_name(c, c->next++, member);
			strbuf_addf(&c->out, "%s ::= %s %s \":\" %s %s %s\n", member,
				    prim(c, c->flags & SCHEMA_GEMMA ? P_KEY : P_STRING, str), ws, ws,
				    val, ws);
		} else {
			prim(c, P_MEMBER, member);
		}
	}
	if (!n) {
		if (extra)
			strbuf_addf(b, "%s", prim(c, P_OBJECT, nm));
		else
			strbuf_addf(b, "\"{\" %s \"}\"", ws);
		return 0;
	}
	/* F_i is rule base + 2i, R_i base + 2i + 1, for i = 0 .. n */
	base = c->next;
	c->next += 2 * (unsigned)(n + 1);
	i = 0;
	json_object_foreach((json_t *)props, key, v) {
		struct strbuf kv = { .max = MAX_OUT };
		name_t val, f, r, f1, r1;
		bool need = req && is_required(req, key);
		json_t *ks;
		char *kj;

		child_path(sub, sizeof(sub), path, "properties", key);
		if (gen(c, v, sub, val))
			return c->ret;
		if (c->flags & SCHEMA_GEMMA) {
			if (!*key || strspn(key, GEMMA_KEY) != strlen(key))
				return fail(c, sub, "property name '%.64s' cannot be written in Gemma 4's "
					    "argument syntax (letters, digits and '_' only)", key);
			kj = strdup(key);
		} else {
			ks = json_string(key);
			kj = ks ? json_dumps(ks, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
			json_decref(ks);
		}
		if (!kj)
			return c->ret = -ENOMEM;
		add_literal(&kv, kj, strlen(kj));
		free(kj);
		strbuf_addf(&kv, " %s \":\" %s %s %s", ws, ws, val, ws);
		if (kv.oom) {
			free(kv.s);
			return c->ret = -ENOMEM;
		}
		rule_name(c, base + 2 * (unsigned)i, f);
		rule_name(c, base + 2 * (unsigned)i + 1, r);
		rule_name(c, base + 2 * (unsigned)i + 2, f1);
		rule_name(c, base + 2 * (unsigned)i + 3, r1);
		strbuf_addf(&c->out, "%s ::= %s %s%s%s\n", f, kv.s, r1, need ? "" : " | ", need ? "" : f1);
		strbuf_addf(&c->out, "%s ::= \",\" %s %s %s%s%s\n", r, ws, kv.s, r1, need ? "" : " | ",
		       need ? "" : r1);
		free(kv.s);
		i++;
	}
	rule_name(c, base + 2 * (unsigned)n, nm);
	rule_name(c, base + 2 * (unsigned)n + 1, nm2);
	if (extra) {
		strbuf_addf(&c->out, "%s ::= ( %s ( \",\" %s %s )* )?\n", nm, member, ws, member);
		strbuf_addf(&c->out, "%s ::= ( \",\" %s %s )*\n", nm2, ws, member);
	} else {
		strbuf_addf(&c->out, "%s ::= \"\"\n%s ::= \"\"\n", nm, nm2);
	}
	rule_name(c, base, nm);
	strbuf_addf(b, "\"{\" %s %s \"}\"", ws, nm);
	return 0;
}

/* The rule of "#/$defs/NAME" or "#/definitions/NAME" (or "#", the whole schema). */
static int gen_ref(struct conv *c, const json_t *s, const char *path, char *name)
{
	const char *ref = json_string_value(json_object_get(s, "$ref")), *rest;
	const json_t *target = NULL;
	char key[256], sub[512];
	const char *k;
	json_t *v;
	size_t at = 0;
	struct ref *r;

	if (!ref)
		return fail(c, path, "'$ref' must be a string");
	json_object_foreach((json_t *)s, k, v)
		if (strcmp(k, "$ref") && !in(k, annotations, N(annotations)))
			return fail(c, path, "'%.64s' beside '$ref' is not supported: put it in the "
				    "schema the reference names", k);
	for (size_t i = 0; i < c->n_refs; i++) {
		if (!strcmp(c->refs[i].ref, ref)) {
			rule_name(c, c->refs[i].id, name);
			return 0;
		}
	}
	if (!strcmp(ref, "#")) {
		target = c->root;
	} else {
		const char *defs = !strncmp(ref, "#/$defs/", 8) ? "$defs" :
				   !strncmp(ref, "#/definitions/", 14) ? "definitions" : NULL;

		if (!defs)
			return fail(c, path, "'$ref' '%.64s' is not supported: only references to "
				    "\"#/$defs/NAME\" or \"#/definitions/NAME\" in this schema", ref);
		rest = ref + (defs[0] == '$' ? 8 : 14);
		for (; *rest && at + 1 < sizeof(key); rest++) {
			if (*rest == '/')
				return fail(c, path, "'$ref' '%.64s': only a definition itself, not a "
					    "part of one, can be named", ref);
			if (*rest == '~' && (rest[1] == '0' || rest[1] == '1')) {
				key[at++] = rest[1] == '0' ? '~' : '/';
				rest++;
			} else {
				key[at++] = *rest;
			}
		}
		key[at] = 0;
		target = json_object_get(json_object_get(c->root, defs), key);
		if (!target)
			return fail(c, path, "'$ref' '%.64s' names no definition", ref);
	}
	r = realloc(c->refs, sizeof(*r) * (c->n_refs + 1));
	if (!r)
		return c->ret = -ENOMEM;
	c->refs = r;
	r[c->n_refs].ref = strdup(ref);
	if (!r[c->n_refs].ref)
		return c->ret = -ENOMEM;
	r[c->n_refs].id = c->next++;
	rule_name(c, r[c->n_refs].id, name);
	c->n_refs++;
	snprintf(sub, sizeof(sub), "%s", ref + 1);
	return gen_named(c, target, sub, name);
}

static int gen_type(struct conv *c, const json_t *s, const char *t, struct strbuf *b,
		    const char *path)
{
	name_t n;

	if (!strcmp(t, "object"))
		return gen_object(c, s, b, path);
	if (!strcmp(t, "array"))
		return gen_array(c, s, b, path);
	if (!strcmp(t, "string"))
		return gen_string(c, s, b, path);
	if (!strcmp(t, "number"))
		strbuf_addf(b, "%s", prim(c, P_NUMBER, n));
	else if (!strcmp(t, "integer"))
		strbuf_addf(b, "%s", prim(c, P_INTEGER, n));
	else if (!strcmp(t, "boolean"))
		strbuf_addf(b, "%s", prim(c, P_BOOLEAN, n));
	else if (!strcmp(t, "null"))
		strbuf_addf(b, "%s", prim(c, P_NULL, n));
	else
		return fail(c, path, "type '%.32s' is not a JSON Schema type (object, array, "
			    "string, number, integer, boolean, null)", t);
	return 0;
}

/* ------------------------------------------------------------ oneOf */

/* JSON types as bits; integer and number share one (every integer is a number). */
enum { T_OBJECT = 1, T_ARRAY = 2, T_STRING = 4, T_NUMBER = 8, T_BOOLEAN = 16, T_NULL = 32,
       T_ALL = 63 };

static unsigned value_type(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return T_OBJECT;
	case JSON_ARRAY: return T_ARRAY;
	case JSON_STRING: return T_STRING;
	case JSON_INTEGER:
	case JSON_REAL: return T_NUMBER;
	case JSON_TRUE:
	case JSON_FALSE: return T_BOOLEAN;
	default: return T_NULL;
	}
}

static unsigned type_bit(const char *t)
{
	static const char *const names[] = { "object", "array", "string", "number", "boolean",
					     "null" };

	if (!strcmp(t, "integer"))
		return T_NUMBER;
	for (unsigned i = 0; i < N(names); i++)
		if (!strcmp(t, names[i]))
			return 1u << i;
	return T_ALL;
}

/* The schema @s names through "$ref" (followed up to a depth), or @s itself. */
static const json_t *deref(const struct conv *c, const json_t *s)
{
	for (int hops = 0; hops < 16 && json_is_object(s) && json_object_get(s, "$ref"); hops++) {
		const char *ref = json_string_value(json_object_get(s, "$ref"));

		if (!ref)
			return s;
		if (!strcmp(ref, "#"))
			s = c->root;
		else if (!strncmp(ref, "#/$defs/", 8))
			s = json_object_get(json_object_get(c->root, "$defs"), ref + 8);
		else if (!strncmp(ref, "#/definitions/", 14))
			s = json_object_get(json_object_get(c->root, "definitions"), ref + 14);
		else
			return NULL;
	}
	return s;
}

/* The types of the values valid for @s (T_ALL when not known). */
static unsigned schema_types(const struct conv *c, const json_t *s, int depth)
{
	const json_t *t, *e;
	unsigned m = 0;
	size_t i;

	s = deref(c, s);
	if (!s || depth > 16 || !json_is_object(s))
		return T_ALL;
	if ((e = json_object_get(s, "const")))
		return value_type(e);
	if ((e = json_object_get(s, "enum"))) {
		json_array_foreach(e, i, t)
			m |= value_type(t);
		return m;
	}
	if ((e = json_object_get(s, "anyOf")) || (e = json_object_get(s, "oneOf"))) {
		json_array_foreach(e, i, t)
			m |= schema_types(c, t, depth + 1);
	} else if ((t = json_object_get(s, "type"))) {
		if (json_is_string(t))
			m = type_bit(json_string_value(t));
		json_array_foreach(t, i, e)
			m |= json_is_string(e) ? type_bit(json_string_value(e)) : T_ALL;
	} else {
		/*
		 * without 'type', keywords of one type (properties, items,
		 * maxLength) leave the values of every other type valid, though
		 * the grammar writes only that type
		 */
		return T_ALL;
	}
	if (json_is_true(json_object_get(s, "nullable")))
		m |= T_NULL;
	return m;
}

/* The values @s allows when it lists them (const or enum), else NULL. */
static const json_t *schema_values(const json_t *s, bool *one)
{
	const json_t *e;

	*one = false;
	if (!json_is_object(s))
		return NULL;
	if ((e = json_object_get(s, "const"))) {
		*one = true;
		return e;
	}
	e = json_object_get(s, "enum");
	return json_is_array(e) ? e : NULL;
}

static bool value_in(const json_t *v, const json_t *list, bool one)
{
	size_t i;
	json_t *x;

	if (one)
		return json_equal(v, list);
	json_array_foreach(list, i, x)
		if (json_equal(v, x))
			return true;
	return false;
}

/* Whether an object of @s may hold the member @key (false: @s's members exclude it). */
static bool may_hold(const json_t *s, const char *key)
{
	const json_t *props = json_object_get(s, "properties"), *add;

	if (props && json_object_get(props, key))
		return true;
	add = json_object_get(s, "additionalProperties");
	return add ? !json_is_false(add) : !props;
}

static bool disjoint(const struct conv *c, const json_t *a, const json_t *b, int depth);

/*
 * Objects of @a and @b told apart by a member: one that @a requires and @b
 * cannot hold, or one both require whose schemas are disjoint (a
 * discriminator such as "kind": {"const": "circle"}).
 */
static bool objects_disjoint(const struct conv *c, const json_t *a, const json_t *b, int depth)
{
	for (int turn = 0; turn < 2; turn++) {
		const json_t *x = turn ? b : a, *y = turn ? a : b;
		size_t i;
		json_t *k;

		json_array_foreach(json_object_get(x, "required"), i, k) {
			const char *key = json_string_value(k);
			const json_t *px, *py;

			if (!key)
				continue;
			if (!may_hold(y, key))
				return true;
			px = json_object_get(json_object_get(x, "properties"), key);
			py = json_object_get(json_object_get(y, "properties"), key);
			if (!turn && px && py && is_required(json_object_get(y, "required"), key) &&
			    disjoint(c, px, py, depth + 1))
				return true;
		}
	}
	return false;
}

/* Whether no value can be valid for both @a and @b, as far as types, values and members tell. */
static bool disjoint(const struct conv *c, const json_t *a, const json_t *b, int depth)
{
	unsigned ta, tb;
	const json_t *va, *vb;
	bool oa, ob;
	size_t i;
	json_t *x;

	a = deref(c, a);
	b = deref(c, b);
	if (!a || !b || depth > 16)
		return false;
	ta = schema_types(c, a, depth);
	tb = schema_types(c, b, depth);
	if (!(ta & tb))
		return true;
	va = schema_values(a, &oa);
	vb = schema_values(b, &ob);
	if (va && vb) {
		if (oa)
			return !value_in(va, vb, ob);
		json_array_foreach(va, i, x)
			if (value_in(x, vb, ob))
				return false;
		return true;
	}
	if (va || vb)
		return false;
	/* alternatives of their own: disjoint when each of them is */
	if (json_is_object(a) && (json_object_get(a, "anyOf") || json_object_get(a, "oneOf"))) {
		const json_t *alts = json_object_get(a, "anyOf") ? json_object_get(a, "anyOf") :
				     json_object_get(a, "oneOf");

		if (json_is_true(json_object_get(a, "nullable")) && (tb & T_NULL))
			return false;
		json_array_foreach(alts, i, x)
			if (!disjoint(c, x, b, depth + 1))
				return false;
		return true;
	}
	if (json_is_object(b) && (json_object_get(b, "anyOf") || json_object_get(b, "oneOf")))
		return disjoint(c, b, a, depth + 1);
	/* only objects can still be told apart, by their members */
	if ((ta & tb) == T_OBJECT && json_is_object(a) && json_is_object(b))
		return objects_disjoint(c, a, b, depth);
	return false;
}

/*
 * oneOf means exactly one: the grammar's alternation gives that only when no
 * value fits two alternatives.  Refuse the schema where that is not shown.
 */
static int check_one_of(struct conv *c, const json_t *s, const json_t *alts, const char *path)
{
	size_t n = json_array_size(alts);
	bool nullable = json_is_true(json_object_get(s, "nullable"));

	for (size_t i = 0; i < n; i++) {
		const json_t *a = json_array_get(alts, i);

		if (nullable && (schema_types(c, a, 0) & T_NULL))
			return fail(c, path, "'oneOf' with 'nullable': alternative %zu also takes "
				    "null, so null would match twice; drop 'nullable' or the null "
				    "alternative", i);
		for (size_t k = i + 1; k < n; k++)
			if (!disjoint(c, a, json_array_get(alts, k), 0))
				return fail(c, path, "'oneOf' alternatives %zu and %zu may both "
					    "match a value, and the grammar can enforce exactly one "
					    "only for alternatives told apart by 'type', by 'const' or "
					    "'enum' values, or (objects of 'type' object) by a required "
					    "property the other cannot hold or a required discriminator "
					    "of different values; make them disjoint so, or use 'anyOf'",
					    i, k);
	}
	return 0;
}

/* The body of @s's rule into @b. */
static int gen_body(struct conv *c, const json_t *s, struct strbuf *b, const char *path)
{
	const json_t *type, *alts, *e;
	char sub[512];
	name_t n;
	size_t i;

	if (json_is_true(s) || (json_is_object(s) && !json_object_size(s))) {
		strbuf_addf(b, "%s", prim(c, P_VALUE, n));
		return 0;
	}
	if (json_is_false(s))
		return fail(c, path, "the schema false matches nothing");
	if (!json_is_object(s))
		return fail(c, path, "a schema must be an object or a boolean");
	if (check_keywords(c, s, path))
		return c->ret;
	if ((e = json_object_get(s, "const"))) {
		return add_json_literal(c, b, e, path);
	}
	if ((e = json_object_get(s, "enum"))) {
		if (!json_is_array(e) || !json_array_size(e))
			return fail(c, path, "'enum' must be a non-empty array");
		json_array_foreach(e, i, type) {
			if (i)
				strbuf_addf(b, " | ");
			if (add_json_literal(c, b, type, path))
				return c->ret;
		}
		return 0;
	}
	alts = json_object_get(s, "anyOf");
	if (!alts)
		alts = json_object_get(s, "oneOf");
	if (alts) {
		const char *which = json_object_get(s, "anyOf") ? "anyOf" : "oneOf";

		if (json_object_get(s, "anyOf") && json_object_get(s, "oneOf"))
			return fail(c, path, "'anyOf' and 'oneOf' together are not supported");
		if (!json_is_array(alts) || !json_array_size(alts))
			return fail(c, path, "'%s' must be a non-empty array of schemas", which);
		if (which[0] == 'o' && check_one_of(c, s, alts, path))
			return c->ret;
		json_array_foreach(alts, i, e) {
			char idx[24];

			snprintf(idx, sizeof(idx), "%zu", i);
			child_path(sub, sizeof(sub), path, which, idx);
			if (gen(c, e, sub, n))
				return c->ret;
			strbuf_addf(b, "%s%s", i ? " | " : "", n);
		}
		if (json_is_true(json_object_get(s, "nullable")))
			strbuf_addf(b, " | %s", prim(c, P_NULL, n));
		return 0;
	}
	type = json_object_get(s, "type");
	if (type && json_is_string(type)) {
		if (gen_type(c, s, json_string_value(type), b, path))
			return c->ret;
	} else if (type && json_is_array(type) && json_array_size(type)) {
		json_array_foreach(type, i, e) {
			if (!json_is_string(e))
				return fail(c, path, "'type'[%zu] must be a string", i);
			if (i)
				strbuf_addf(b, " | ");
			if (gen_type(c, s, json_string_value(e), b, path))
				return c->ret;
		}
	} else if (type) {
		return fail(c, path, "'type' must be a string or an array of strings");
	} else if (json_object_get(s, "properties") || json_object_get(s, "required") ||
		   json_object_get(s, "additionalProperties")) {
		return gen_object(c, s, b, path);
	} else if (json_object_get(s, "items") || json_object_get(s, "minItems") ||
		   json_object_get(s, "maxItems")) {
		return gen_array(c, s, b, path);
	} else if (json_object_get(s, "minLength") || json_object_get(s, "maxLength")) {
		return gen_string(c, s, b, path);
	} else {
		strbuf_addf(b, "%s", prim(c, P_VALUE, n));
	}
	if (json_is_true(json_object_get(s, "nullable")))
		strbuf_addf(b, " | %s", prim(c, P_NULL, n));
	return 0;
}

static int gen_named(struct conv *c, const json_t *s, const char *path, const char *name)
{
	struct strbuf b = { .max = MAX_OUT };

	if (++c->depth > MAX_DEPTH) {
		c->depth--;
		return fail(c, path, "schemas nested deeper than %d", MAX_DEPTH);
	}
	if (json_is_object(s) && json_object_get(s, "$ref")) {
		name_t target;

		if (!gen_ref(c, s, path, target))
			strbuf_addf(&b, "%s", target);
	} else {
		gen_body(c, s, &b, path);
	}
	c->depth--;
	if (!c->ret && b.oom)
		c->ret = -ENOMEM;
	if (!c->ret)
		strbuf_addf(&c->out, "%s ::= %s\n", name, b.s ? b.s : "\"\"");
	free(b.s);
	return c->ret;
}

static int gen(struct conv *c, const json_t *s, const char *path, char *name)
{
	rule_name(c, c->next++, name);
	return gen_named(c, s, path, name);
}

static void add_prims(struct conv *c)
{
	name_t n[P_COUNT];

	for (int p = 0; p < P_COUNT; p++)
		snprintf(n[p], sizeof(n[p]), "%s-%s", c->prefix, prim_name[p]);
	if (c->flags & SCHEMA_GEMMA) {
		/* no blanks; strings in <|"|> (without '<' inside); null is None; keys bare */
		if (c->prims & 1u << P_WS)
			strbuf_addf(&c->out, "%s ::= \"\"\n", n[P_WS]);
		if (c->prims & 1u << P_STRING)
			strbuf_addf(&c->out, "%s ::= \"<|\\\"|>\" %s* \"<|\\\"|>\"\n", n[P_STRING],
				    n[P_CHAR]);
		if (c->prims & 1u << P_CHAR)
			strbuf_addf(&c->out, "%s ::= [^<]\n", n[P_CHAR]);
		if (c->prims & 1u << P_NULL)
			strbuf_addf(&c->out, "%s ::= \"None\"\n", n[P_NULL]);
		if (c->prims & 1u << P_KEY)
			strbuf_addf(&c->out, "%s ::= [A-Za-z0-9_]+\n", n[P_KEY]);
		if (c->prims & 1u << P_MEMBER)
			strbuf_addf(&c->out, "%s ::= %s \":\" %s\n", n[P_MEMBER], n[P_KEY],
				    n[P_VALUE]);
		c->prims &= ~(1u << P_WS | 1u << P_STRING | 1u << P_CHAR | 1u << P_NULL |
			      1u << P_KEY | 1u << P_MEMBER);
	}
	if (c->prims & 1u << P_WS)
		strbuf_addf(&c->out, "%s ::= ( \" \" | \"\\n\" [ \\t]{0,16} )?\n", n[P_WS]);
	if (c->prims & 1u << P_STRING)
		strbuf_addf(&c->out, "%s ::= \"\\\"\" %s* \"\\\"\"\n", n[P_STRING], n[P_CHAR]);
	if (c->prims & 1u << P_CHAR)
		strbuf_addf(&c->out, "%s ::= [^\"\\\\\\x00-\\x1f] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" "
		       "( [0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2} ) )\n",
		       n[P_CHAR]);
	if (c->prims & 1u << P_NUMBER)
		strbuf_addf(&c->out, "%s ::= \"-\"? ( \"0\" | [1-9] [0-9]{0,15} ) ( \".\" [0-9]{1,16} )? "
		       "( [eE] [-+]? [0-9]{1,2} )?\n", n[P_NUMBER]);
	if (c->prims & 1u << P_INTEGER)
		strbuf_addf(&c->out, "%s ::= \"-\"? ( \"0\" | [1-9] [0-9]{0,15} )\n", n[P_INTEGER]);
	if (c->prims & 1u << P_BOOLEAN)
		strbuf_addf(&c->out, "%s ::= \"true\" | \"false\"\n", n[P_BOOLEAN]);
	if (c->prims & 1u << P_NULL)
		strbuf_addf(&c->out, "%s ::= \"null\"\n", n[P_NULL]);
	if (c->prims & 1u << P_VALUE)
		strbuf_addf(&c->out, "%s ::= %s | %s | %s | %s | %s | %s\n", n[P_VALUE], n[P_OBJECT],
		       n[P_ARRAY], n[P_STRING], n[P_NUMBER], n[P_BOOLEAN], n[P_NULL]);
	if (c->prims & 1u << P_OBJECT)
		strbuf_addf(&c->out, "%s ::= \"{\" %s ( %s ( \",\" %s %s )* )? \"}\"\n", n[P_OBJECT],
		       n[P_WS], n[P_MEMBER], n[P_WS], n[P_MEMBER]);
	if (c->prims & 1u << P_MEMBER)
		strbuf_addf(&c->out, "%s ::= %s %s \":\" %s %s %s\n", n[P_MEMBER], n[P_STRING], n[P_WS],
		       n[P_WS], n[P_VALUE], n[P_WS]);
	if (c->prims & 1u << P_ARRAY)
		strbuf_addf(&c->out, "%s ::= \"[\" %s ( %s %s ( \",\" %s %s %s )* )? \"]\"\n",
		       n[P_ARRAY], n[P_WS], n[P_VALUE], n[P_WS], n[P_WS], n[P_VALUE], n[P_WS]);
}

int schema_to_gbnf(const json_t *schema, const char *prefix, char **out, char *err,
		   size_t errlen)
{
	return schema_to_gbnf_flags(schema, prefix, 0, out, err, errlen);
}

int schema_to_gbnf_flags(const json_t *schema, const char *prefix, unsigned flags, char **out,
			 char *err, size_t errlen)
{
	char dummy[8];
	struct conv c = {
		.root = schema, .prefix = prefix ? prefix : "root", .err = err ? err : dummy,
		.errlen = err ? errlen : sizeof(dummy), .out = { .max = MAX_OUT },
		.flags = flags,
	};
	size_t plen = strlen(c.prefix);

	*out = NULL;
	c.err[0] = 0;
	if (!plen || plen > 48 || strspn(c.prefix, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
					"0123456789-_") != plen) {
		snprintf(c.err, c.errlen, "rule prefix '%.48s' must be 1 to 48 letters, digits, "
			 "'-' or '_'", c.prefix);
		return -EINVAL;
	}
	if (!schema) {
		snprintf(c.err, c.errlen, "no schema");
		return -EINVAL;
	}
	/* "#" names the whole schema: the rule @prefix */
	c.refs = calloc(1, sizeof(*c.refs));
	if (c.refs && (c.refs[0].ref = strdup("#"))) {
		c.n_refs = 1;
		c.refs[0].id = 0;
	}
	if (!c.n_refs) {
		c.ret = -ENOMEM;
	} else {
		/* rule 0 is written under the prefix itself */
		c.next = 1;
		gen_named(&c, schema, "", c.prefix);
	}
	if (!c.ret)
		add_prims(&c);
	if (!c.ret && c.out.oom)
		c.ret = -ENOMEM;
	if (c.ret == -ENOMEM)
		snprintf(c.err, c.errlen, "out of memory (or a grammar over %u MiB)", MAX_OUT >> 20);
	for (size_t i = 0; i < c.n_refs; i++)
		free(c.refs[i].ref);
	free(c.refs);
	if (c.ret) {
		free(c.out.s);
		return c.ret;
	}
	*out = c.out.s;
	return 0;
}

int schema_compile(const json_t *schema, struct moe_grammar **out, char *err, size_t errlen)
{
	char *gbnf;
	int ret;

	*out = NULL;
	ret = schema_to_gbnf(schema, NULL, &gbnf, err, errlen);
	if (ret)
		return ret;
	ret = moe_grammar_create(gbnf, strlen(gbnf), out);
	if (ret)
		snprintf(err, errlen, "the schema's grammar: %s", moe_errmsg());
	free(gbnf);
	return ret;
}

int schema_compile_text(const char *text, size_t len, struct moe_grammar **out, char *err,
			size_t errlen)
{
	json_error_t je;
	json_t *schema;
	int ret;

	*out = NULL;
	schema = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
	if (!schema) {
		snprintf(err, errlen, "not valid JSON: %s (line %d, column %d)", je.text, je.line,
			 je.column);
		return -EINVAL;
	}
	ret = schema_compile(schema, out, err, errlen);
	json_decref(schema);
	return ret;
}
