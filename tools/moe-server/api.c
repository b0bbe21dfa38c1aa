// SPDX-License-Identifier: MIT
/*
 * Request bodies to requests.  Every field is looked up in a table of the
 * fields the endpoint knows: an unknown one is refused by name rather than
 * ignored, so a client that believes it set something learns it did not.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "schema.h"

int api_fail(struct api_error *err, int status, const char *type, const char *code,
	     const char *param, const char *fmt, ...)
{
	va_list ap;

	err->status = status;
	err->type = type;
	err->code = code;
	snprintf(err->param, sizeof(err->param), "%s", param ? param : "");
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return -EINVAL;
}

char *api_error_body(const struct api_error *err)
{
	json_t *o = json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", err->message, "type",
			      err->type ? err->type : "invalid_request_error", "param",
			      err->param[0] ? json_string(err->param) : json_null(), "code",
			      err->code ? json_string(err->code) : json_null());
	char *s;

	if (!o)
		return NULL;
	s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}

#define BAD(param, ...) api_fail(err, 400, "invalid_request_error", NULL, param, __VA_ARGS__)

static const char *type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	default: return "null";
	}
}

static int get_number(const char *key, const json_t *v, double min, double max, double *out,
		      struct api_error *err)
{
	if (!json_is_number(v))
		return BAD(key, "'%s' must be a number, not %s", key, type_name(v));
	*out = json_number_value(v);
	if (!(*out >= min && *out <= max))
		return BAD(key, "'%s' %g is outside [%g, %g]", key, *out, min, max);
	return 0;
}

static int get_int(const char *key, const json_t *v, json_int_t min, json_int_t max,
		   json_int_t *out, struct api_error *err)
{
	if (!json_is_integer(v))
		return BAD(key, "'%s' must be an integer, not %s", key, type_name(v));
	*out = json_integer_value(v);
	if (*out < min || *out > max)
		return BAD(key, "'%s' %lld is outside [%lld, %lld]", key, (long long)*out,
			   (long long)min, (long long)max);
	return 0;
}

static int dup_str(const char *key, const json_t *v, char **out, struct api_error *err)
{
	if (!json_is_string(v))
		return BAD(key, "'%s' must be a string, not %s", key, type_name(v));
	*out = strndup(json_string_value(v), json_string_length(v));
	if (!*out)
		return api_fail(err, 500, "server_error", NULL, key, "out of memory");
	return 0;
}

/* "content": a string, or an array of {"type":"text","text":...} parts joined. */
static int get_content(const char *where, const json_t *v, char **out, struct api_error *err)
{
	size_t i, len = 0;
	json_t *part;
	char *s;

	if (json_is_string(v))
		return dup_str(where, v, out, err);
	if (json_is_null(v)) {
		*out = strdup("");
		return *out ? 0 : api_fail(err, 500, "server_error", NULL, where, "out of memory");
	}
	if (!json_is_array(v))
		return BAD(where, "'%s' must be a string or an array of text parts, not %s", where,
			   type_name(v));
	json_array_foreach(v, i, part) {
		json_t *t = json_object_get(part, "text"), *ty = json_object_get(part, "type");

		if (!json_is_object(part) || !json_is_string(ty) ||
		    strcmp(json_string_value(ty), "text") || !json_is_string(t) ||
		    json_object_size(part) != 2)
			return BAD(where, "'%s' part %zu: only {\"type\": \"text\", \"text\": "
				   "STRING} parts are supported", where, i);
		len += json_string_length(t);
	}
	s = malloc(len + 1);
	if (!s)
		return api_fail(err, 500, "server_error", NULL, where, "out of memory");
	len = 0;
	json_array_foreach(v, i, part) {
		json_t *t = json_object_get(part, "text");

		memcpy(s + len, json_string_value(t), json_string_length(t));
		len += json_string_length(t);
	}
	s[len] = 0;
	*out = s;
	return 0;
}

/* A function name as the API allows it: 1 to 64 of [A-Za-z0-9_-]. */
static bool good_name(const char *n)
{
	size_t i;

	for (i = 0; n[i]; i++)
		if (!((n[i] >= 'a' && n[i] <= 'z') || (n[i] >= 'A' && n[i] <= 'Z') ||
		      (n[i] >= '0' && n[i] <= '9') || n[i] == '_' || n[i] == '-'))
			return false;
	return i >= 1 && i <= 64;
}

static int only_keys(const char *where, const json_t *o, const char *const *keys,
		     struct api_error *err)
{
	const char *key;
	json_t *f;

	json_object_foreach((json_t *)o, key, f) {
		size_t k;

		for (k = 0; keys[k] && strcmp(keys[k], key); k++)
			;
		if (!keys[k]) {
			char at[96];

			snprintf(at, sizeof(at), "%.60s.%.32s", where, key);
			return BAD(at, "unknown field '%s'", at);
		}
	}
	return 0;
}

/* An assistant message's "tool_calls": [{id, type: "function", function: {name, arguments}}]. */
static int get_calls(const char *where, const json_t *v, struct api_msg *msg,
		     struct api_error *err)
{
	static const char *const call_keys[] = { "id", "type", "function", "index", NULL };
	static const char *const fn_keys[] = { "name", "arguments", NULL };
	size_t i;
	json_t *c;

	if (!json_is_array(v))
		return BAD(where, "'%s' must be an array, not %s", where, type_name(v));
	if (json_array_size(v) > 64)
		return BAD(where, "'%s' holds more than 64 calls", where);
	msg->calls = calloc(json_array_size(v) + 1, sizeof(*msg->calls));
	if (!msg->calls)
		return api_fail(err, 500, "server_error", NULL, where, "out of memory");
	json_array_foreach(v, i, c) {
		struct api_call *call = &msg->calls[i];
		json_t *fn = json_object_get(c, "function"), *id = json_object_get(c, "id");
		json_t *ty = json_object_get(c, "type"), *name, *args, *parsed;
		char at[96];
		int ret;

		msg->n_calls = (uint32_t)i + 1;
		snprintf(at, sizeof(at), "%.48s[%zu]", where, i);
		if (!json_is_object(c) || !json_is_object(fn))
			return BAD(at, "'%s' must be {\"id\": ID, \"type\": \"function\", "
				   "\"function\": {\"name\": NAME, \"arguments\": JSON}}", at);
		ret = only_keys(at, c, call_keys, err);
		if (!ret) {
			snprintf(at, sizeof(at), "%.40s[%zu].function", where, i);
			ret = only_keys(at, fn, fn_keys, err);
		}
		if (ret)
			return ret;
		if (ty && !(json_is_string(ty) && !strcmp(json_string_value(ty), "function")))
			return BAD(at, "'%s'.type must be \"function\"", at);
		if (id && (ret = dup_str("id", id, &call->id, err)))
			return ret;
		name = json_object_get(fn, "name");
		if (!json_is_string(name) || !good_name(json_string_value(name)))
			return BAD(at, "'%s'.name must be a function name (1 to 64 letters, digits, "
				   "'_' or '-')", at);
		if ((ret = dup_str("name", name, &call->name, err)))
			return ret;
		args = json_object_get(fn, "arguments");
		/* the API sends a string of JSON; an object as such is taken too */
		parsed = json_is_string(args) ? json_loads(json_string_value(args), 0, NULL) :
			 json_incref(args);
		if (!json_is_object(parsed)) {
			json_decref(parsed);
			return BAD(at, "'%s'.arguments must be a JSON object (as a string)", at);
		}
		call->arguments = json_dumps(parsed, JSON_COMPACT);
		json_decref(parsed);
		if (!call->arguments)
			return api_fail(err, 500, "server_error", NULL, where, "out of memory");
	}
	return 0;
}

static int get_messages(const json_t *v, const struct api_limits *lim, struct api_request *req,
			struct api_error *err)
{
	static const char *const roles[] = { "system", "user", "assistant", "tool" };
	static const char *const keys[] = { "role", "content", "name", "tool_calls",
					    "tool_call_id", "reasoning_content", NULL };
	size_t i;
	json_t *m;

	if (!json_is_array(v))
		return BAD("messages", "'messages' must be an array, not %s", type_name(v));
	if (!json_array_size(v))
		return BAD("messages", "'messages' is empty: give at least one message");
	if (json_array_size(v) > lim->max_messages)
		return BAD("messages", "%zu messages are more than this server takes (%u)",
			   json_array_size(v), lim->max_messages);
	req->msgs = calloc(json_array_size(v), sizeof(*req->msgs));
	if (!req->msgs)
		return api_fail(err, 500, "server_error", NULL, "messages", "out of memory");
	req->n_msgs = (uint32_t)json_array_size(v);
	json_array_foreach(v, i, m) {
		struct api_msg *msg = &req->msgs[i];
		char where[64];
		const char *role;
		json_t *f, *calls;
		int ret;

		snprintf(where, sizeof(where), "messages[%zu]", i);
		if (!json_is_object(m))
			return BAD(where, "'%s' must be an object, not %s", where, type_name(m));
		ret = only_keys(where, m, keys, err);
		if (ret)
			return ret;
		f = json_object_get(m, "role");
		snprintf(where, sizeof(where), "messages[%zu].role", i);
		if (!json_is_string(f))
			return BAD(where, "'%s' must be a string: system, user, assistant or tool",
				   where);
		role = json_string_value(f);
		if (!strcmp(role, "developer"))
			role = "system";
		for (size_t r = 0; r < sizeof(roles) / sizeof(roles[0]); r++)
			if (!strcmp(role, roles[r]))
				msg->role = roles[r];
		if (!msg->role)
			return BAD(where, "'%s' '%.32s' is not one this server takes: system, "
				   "developer, user, assistant or tool", where, role);
		f = json_object_get(m, "name");
		snprintf(where, sizeof(where), "messages[%zu].name", i);
		if (f && !json_is_string(f))
			return BAD(where, "'%s' must be a string, not %s", where, type_name(f));
		if (f && !strcmp(msg->role, "tool") && (ret = dup_str(where, f, &msg->name, err)))
			return ret;
		calls = json_object_get(m, "tool_calls");
		snprintf(where, sizeof(where), "messages[%zu].tool_calls", i);
		if (calls && !json_is_null(calls)) {
			if (strcmp(msg->role, "assistant"))
				return BAD(where, "'%s': only assistant messages hold tool calls",
					   where);
			ret = get_calls(where, calls, msg, err);
			if (ret)
				return ret;
		}
		f = json_object_get(m, "tool_call_id");
		snprintf(where, sizeof(where), "messages[%zu].tool_call_id", i);
		if (!strcmp(msg->role, "tool")) {
			if (!f)
				return BAD(where, "'%s' is missing: a tool message names the call it "
					   "answers", where);
			if ((ret = dup_str(where, f, &msg->tool_call_id, err)))
				return ret;
		} else if (f) {
			return BAD(where, "'%s': only tool messages answer a call", where);
		}
		f = json_object_get(m, "reasoning_content");
		snprintf(where, sizeof(where), "messages[%zu].reasoning_content", i);
		if (f && !json_is_null(f)) {
			if (strcmp(msg->role, "assistant"))
				return BAD(where, "'%s': only assistant messages reason", where);
			if ((ret = dup_str(where, f, &msg->reasoning, err)))
				return ret;
		}
		snprintf(where, sizeof(where), "messages[%zu].content", i);
		f = json_object_get(m, "content");
		if (!f && !msg->n_calls)
			return BAD(where, "'%s' is missing", where);
		ret = get_content(where, f ? f : json_null(), &msg->content, err);
		if (ret)
			return ret;
	}
	return 0;
}

/* "tools": [{"type": "function", "function": {"name", "description", "parameters"}}]. */
static int get_tools(const json_t *v, struct api_request *req, struct api_error *err)
{
	static const char *const tool_keys[] = { "type", "function", NULL };
	static const char *const fn_keys[] = { "name", "description", "parameters", "strict",
					       NULL };
	size_t i;
	json_t *t;

	if (!json_is_array(v))
		return BAD("tools", "'tools' must be an array, not %s", type_name(v));
	if (json_array_size(v) > 128)
		return BAD("tools", "'tools' holds more than 128 functions");
	json_array_foreach(v, i, t) {
		json_t *fn = json_object_get(t, "function"), *ty = json_object_get(t, "type"), *f;
		char at[48];
		int ret;

		snprintf(at, sizeof(at), "tools[%zu]", i);
		if (!json_is_object(t) || !json_is_string(ty) ||
		    strcmp(json_string_value(ty), "function") || !json_is_object(fn))
			return BAD(at, "'%s' must be {\"type\": \"function\", \"function\": "
				   "{\"name\": NAME, ...}}", at);
		ret = only_keys(at, t, tool_keys, err);
		snprintf(at, sizeof(at), "tools[%zu].function", i);
		if (!ret)
			ret = only_keys(at, fn, fn_keys, err);
		if (ret)
			return ret;
		f = json_object_get(fn, "name");
		if (!json_is_string(f) || !good_name(json_string_value(f)))
			return BAD(at, "'%s'.name must be a function name (1 to 64 letters, digits, "
				   "'_' or '-')", at);
		for (size_t k = 0; k < i; k++)
			if (!strcmp(json_string_value(json_object_get(json_object_get(
				json_array_get(v, k), "function"), "name")), json_string_value(f)))
				return BAD(at, "'%s': a second function named '%s'", at,
					   json_string_value(f));
		f = json_object_get(fn, "description");
		if (f && !json_is_string(f))
			return BAD(at, "'%s'.description must be a string, not %s", at,
				   type_name(f));
		f = json_object_get(fn, "parameters");
		if (f && !json_is_object(f))
			return BAD(at, "'%s'.parameters must be a JSON schema object, not %s", at,
				   type_name(f));
		f = json_object_get(fn, "strict");
		if (f && !json_is_boolean(f))
			return BAD(at, "'%s'.strict must be a boolean", at);
	}
	req->tools = json_incref((json_t *)v);
	return 0;
}

/* "tool_choice": "none", "auto", "required" or {"type": "function", "function": {"name"}}. */
static int get_tool_choice(const json_t *v, struct api_request *req, struct api_error *err)
{
	json_t *fn = json_object_get(v, "function"), *name = json_object_get(fn, "name");

	if (json_is_string(v)) {
		const char *c = json_string_value(v);

		if (!strcmp(c, "auto"))
			req->tool_choice = API_TOOLS_AUTO;
		else if (!strcmp(c, "none"))
			req->tool_choice = API_TOOLS_NONE;
		else if (!strcmp(c, "required"))
			req->tool_choice = API_TOOLS_REQUIRED;
		else
			return BAD("tool_choice", "'tool_choice' '%.32s': expected none, auto, "
				   "required or {\"type\": \"function\", \"function\": {\"name\": "
				   "NAME}}", c);
		return 0;
	}
	if (!json_is_object(v) || json_object_size(v) != 2 || !json_is_object(fn) ||
	    json_object_size(fn) != 1 || !json_is_string(name) ||
	    !json_is_string(json_object_get(v, "type")) ||
	    strcmp(json_string_value(json_object_get(v, "type")), "function"))
		return BAD("tool_choice", "'tool_choice' must be none, auto, required or "
			   "{\"type\": \"function\", \"function\": {\"name\": NAME}}");
	req->tool_choice = API_TOOLS_NAMED;
	return dup_str("tool_choice", name, &req->tool_name, err);
}

static int get_effort(const char *key, const json_t *v, struct api_request *req,
		      struct api_error *err)
{
	const char *e = json_string_value(v);

	if (!e || (strcmp(e, "low") && strcmp(e, "medium") && strcmp(e, "high")))
		return BAD(key, "'%s' must be \"low\", \"medium\" or \"high\"", key);
	free(req->effort);
	req->effort = strdup(e);
	return req->effort ? 0 : api_fail(err, 500, "server_error", NULL, key, "out of memory");
}

/* llama-server's "chat_template_kwargs": the switches of the chat format. */
static int get_kwargs(const json_t *v, struct api_request *req, struct api_error *err)
{
	const char *key;
	json_t *f;

	if (!json_is_object(v))
		return BAD("chat_template_kwargs", "'chat_template_kwargs' must be an object, "
			   "not %s", type_name(v));
	json_object_foreach((json_t *)v, key, f) {
		int ret;

		if (!strcmp(key, "enable_thinking")) {
			if (!json_is_boolean(f))
				return BAD("chat_template_kwargs.enable_thinking",
					   "'enable_thinking' must be a boolean");
			req->thinking = json_is_true(f);
		} else if (!strcmp(key, "reasoning_effort")) {
			ret = get_effort("chat_template_kwargs.reasoning_effort", f, req, err);
			if (ret)
				return ret;
		} else {
			return BAD("chat_template_kwargs", "'chat_template_kwargs' '%.32s' is not "
				   "one this server knows: enable_thinking, reasoning_effort", key);
		}
	}
	return 0;
}

static int get_prompt(const json_t *v, struct api_request *req, struct api_error *err)
{
	size_t i, n;
	json_t *e;

	if (json_is_string(v))
		return dup_str("prompt", v, &req->prompt, err);
	if (!json_is_array(v) || !(n = json_array_size(v)))
		return BAD("prompt", "'prompt' must be a string, an array of one string or a "
			   "non-empty array of token ids, not %s", type_name(v));
	if (json_is_string(json_array_get(v, 0))) {
		if (n != 1)
			return BAD("prompt", "'prompt' holds %zu strings: this server completes one "
				   "prompt per request", n);
		return dup_str("prompt", json_array_get(v, 0), &req->prompt, err);
	}
	if (n > INT32_MAX)
		return BAD("prompt", "'prompt' holds too many token ids");
	req->prompt_ids = malloc(sizeof(*req->prompt_ids) * n);
	if (!req->prompt_ids)
		return api_fail(err, 500, "server_error", NULL, "prompt", "out of memory");
	json_array_foreach(v, i, e) {
		if (!json_is_integer(e) || json_integer_value(e) < 0 ||
		    json_integer_value(e) > INT32_MAX)
			return BAD("prompt", "'prompt'[%zu] must be a token id (an integer from 0)",
				   i);
		req->prompt_ids[i] = (int32_t)json_integer_value(e);
	}
	req->n_prompt_ids = (uint32_t)n;
	return 0;
}

static int get_stop(const json_t *v, struct api_request *req, struct api_error *err)
{
	size_t i;
	json_t *e;

	if (json_is_null(v))
		return 0;
	if (json_is_string(v))
		v = json_pack("[O]", v);
	else if (json_is_array(v))
		json_incref((json_t *)v);
	else
		return BAD("stop", "'stop' must be a string or an array of strings, not %s",
			   type_name(v));
	if (!v)
		return api_fail(err, 500, "server_error", NULL, "stop", "out of memory");
	if (json_array_size(v) > API_MAX_STOP) {
		json_decref((json_t *)v);
		return BAD("stop", "'stop' holds more than %d sequences", API_MAX_STOP);
	}
	json_array_foreach(v, i, e) {
		int ret;

		if (!json_is_string(e) || !json_string_length(e) || json_string_length(e) > 256) {
			json_decref((json_t *)v);
			return BAD("stop", "'stop'[%zu] must be a string of 1 to 256 bytes", i);
		}
		ret = dup_str("stop", e, &req->stop[req->n_stop], err);
		if (ret) {
			json_decref((json_t *)v);
			return ret;
		}
		req->n_stop++;
	}
	json_decref((json_t *)v);
	return 0;
}

/* {"name", "schema", "strict", "description"} of a json_schema response format. */
static int get_json_schema(const json_t *js, struct api_request *req, struct api_error *err)
{
	const char *key, *name;
	char msg[512];
	json_t *f, *schema;
	int ret;

	if (!json_is_object(js))
		return BAD("response_format.json_schema", "'response_format.json_schema' must be "
			   "an object with 'name' and 'schema'");
	json_object_foreach((json_t *)js, key, f) {
		if (strcmp(key, "name") && strcmp(key, "schema") && strcmp(key, "strict") &&
		    strcmp(key, "description"))
			return BAD("response_format.json_schema", "unknown field "
				   "'response_format.json_schema.%.64s'", key);
	}
	f = json_object_get(js, "name");
	name = json_string_value(f);
	if (!name || !*name || json_string_length(f) > 64 ||
	    strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
	    json_string_length(f))
		return BAD("response_format.json_schema.name", "'response_format.json_schema.name'"
			   " must be 1 to 64 letters, digits, '_' or '-'");
	f = json_object_get(js, "strict");
	if (f && !json_is_boolean(f) && !json_is_null(f))
		return BAD("response_format.json_schema.strict", "'response_format.json_schema."
			   "strict' must be a boolean, not %s", type_name(f));
	f = json_object_get(js, "description");
	if (f && !json_is_string(f))
		return BAD("response_format.json_schema.description", "'response_format."
			   "json_schema.description' must be a string, not %s", type_name(f));
	/* no schema: any JSON value */
	schema = json_object_get(js, "schema");
	if (!schema || json_is_null(schema))
		schema = json_true();
	else
		json_incref(schema);
	ret = schema_compile(schema, &req->grammar, msg, sizeof(msg));
	json_decref(schema);
	if (ret == -ENOMEM)
		return api_fail(err, 500, "server_error", NULL, "response_format", "out of memory");
	if (ret)
		return BAD("response_format.json_schema.schema", "'response_format.json_schema."
			   "schema': %s", msg);
	return 0;
}

/* "response_format": text, json_object or json_schema. */
static int get_response_format(const json_t *v, struct api_request *req, struct api_error *err)
{
	const char *type = json_string_value(json_object_get(v, "type")), *key, *gbnf;
	json_t *f;

	if (!json_is_object(v) || !type)
		return BAD("response_format", "'response_format' must be an object whose 'type' is "
			   "text, json_object or json_schema");
	json_object_foreach((json_t *)v, key, f) {
		if (strcmp(key, "type") && (strcmp(key, "json_schema") ||
					    strcmp(type, "json_schema")))
			return BAD("response_format", "unknown field 'response_format.%.64s' for "
				   "type '%.32s'", key, type);
	}
	if (!strcmp(type, "text"))
		return 0;
	if (!strcmp(type, "json_object")) {
		if (moe_grammar_builtin("json-object", &gbnf) ||
		    moe_grammar_create(gbnf, strlen(gbnf), &req->grammar))
			return api_fail(err, 500, "server_error", NULL, "response_format", "%s",
					moe_errmsg());
		return 0;
	}
	if (!strcmp(type, "json_schema"))
		return get_json_schema(json_object_get(v, "json_schema"), req, err);
	return BAD("response_format.type", "'response_format.type' '%.32s' is not one of text, "
		   "json_object, json_schema", type);
}

/* Fields accepted only at their neutral value: moe cannot honour any other. */
static int neutral(const char *key, const json_t *v, struct api_error *err)
{
	if (json_is_null(v) || json_is_false(v))
		return 0;
	if (!strcmp(key, "n") || !strcmp(key, "best_of")) {
		if (json_is_integer(v) && json_integer_value(v) == 1)
			return 0;
		return BAD(key, "'%s' must be 1: this server returns one choice per request", key);
	}
	if (!strcmp(key, "presence_penalty") || !strcmp(key, "frequency_penalty")) {
		if (json_is_number(v) && json_number_value(v) == 0)
			return 0;
		return BAD(key, "'%s' is not supported (only 0); use 'repeat_penalty'", key);
	}
	if (!strcmp(key, "echo"))
		return json_is_boolean(v) ? BAD(key, "'echo': true is not supported") :
		       BAD(key, "'echo' must be a boolean, not %s", type_name(v));
	if (!strcmp(key, "stream_options")) {
		json_t *u = json_object_get(v, "include_usage");

		/* usage comes with the last chunk either way */
		if (json_is_object(v) && json_object_size(v) == (u != NULL) &&
		    (!u || json_is_boolean(u)))
			return 0;
		return BAD(key, "'stream_options' takes only {\"include_usage\": BOOLEAN}");
	}
	return BAD(key, "'%s' is not supported", key);
}

enum field { F_MODEL, F_MESSAGES, F_PROMPT, F_MAX_TOKENS, F_TEMPERATURE, F_TOP_P, F_TOP_K,
	     F_MIN_P, F_REPEAT_PENALTY, F_SEED, F_STOP, F_STREAM, F_USER, F_RESPONSE_FORMAT,
	     F_NEUTRAL, F_TOOLS, F_TOOL_CHOICE, F_PARALLEL_CALLS, F_KWARGS, F_EFFORT };

static const struct { const char *name; enum field f; unsigned kinds; } fields[] = {
	{ "model", F_MODEL, 3 },
	{ "messages", F_MESSAGES, 1u << API_CHAT },
	{ "prompt", F_PROMPT, 1u << API_COMPLETION },
	{ "max_tokens", F_MAX_TOKENS, 3 },
	{ "max_completion_tokens", F_MAX_TOKENS, 1u << API_CHAT },
	{ "temperature", F_TEMPERATURE, 3 },
	{ "top_p", F_TOP_P, 3 },
	{ "top_k", F_TOP_K, 3 },
	{ "min_p", F_MIN_P, 3 },
	{ "repeat_penalty", F_REPEAT_PENALTY, 3 },
	{ "seed", F_SEED, 3 },
	{ "stop", F_STOP, 3 },
	{ "stream", F_STREAM, 3 },
	{ "user", F_USER, 3 },
	{ "tools", F_TOOLS, 1u << API_CHAT },
	{ "tool_choice", F_TOOL_CHOICE, 1u << API_CHAT },
	{ "parallel_tool_calls", F_PARALLEL_CALLS, 1u << API_CHAT },
	{ "chat_template_kwargs", F_KWARGS, 1u << API_CHAT },
	{ "reasoning_effort", F_EFFORT, 1u << API_CHAT },
	{ "n", F_NEUTRAL, 3 },
	{ "presence_penalty", F_NEUTRAL, 3 },
	{ "frequency_penalty", F_NEUTRAL, 3 },
	{ "logprobs", F_NEUTRAL, 3 },
	{ "stream_options", F_NEUTRAL, 3 },
	{ "response_format", F_RESPONSE_FORMAT, 3 },
	{ "echo", F_NEUTRAL, 1u << API_COMPLETION },
	{ "best_of", F_NEUTRAL, 1u << API_COMPLETION },
	{ "suffix", F_NEUTRAL, 1u << API_COMPLETION },
};

static int field(enum api_kind kind, const char *key, const json_t *v,
		 const struct api_limits *lim, struct api_request *req, struct api_error *err)
{
	json_int_t i;
	double d;
	int ret;

	for (size_t k = 0; k < sizeof(fields) / sizeof(fields[0]); k++) {
		if (strcmp(fields[k].name, key) || !(fields[k].kinds & (1u << kind)))
			continue;
		/* null means "the default" for every optional field, as the API has it */
		if (json_is_null(v) && fields[k].f != F_MESSAGES && fields[k].f != F_PROMPT)
			return 0;
		switch (fields[k].f) {
		case F_MODEL:
			return json_is_string(v) ? 0 :
			       BAD(key, "'model' must be a string, not %s", type_name(v));
		case F_USER:
			return json_is_string(v) ? 0 :
			       BAD(key, "'user' must be a string, not %s", type_name(v));
		case F_MESSAGES: return get_messages(v, lim, req, err);
		case F_PROMPT: return get_prompt(v, req, err);
		case F_MAX_TOKENS:
			ret = get_int(key, v, 1, lim->max_tokens, &i, err);
			req->max_tokens = (uint32_t)i;
			return ret;
		case F_TEMPERATURE:
			ret = get_number(key, v, 0, 2, &d, err);
			req->sp.temp = (float)d;
			return ret;
		case F_TOP_P:
			ret = get_number(key, v, 0, 1, &d, err);
			req->sp.top_p = (float)d;
			return ret;
		case F_MIN_P:
			ret = get_number(key, v, 0, 1, &d, err);
			req->sp.min_p = (float)d;
			return ret;
		case F_TOP_K:
			ret = get_int(key, v, 0, INT32_MAX, &i, err);
			req->sp.top_k = (int32_t)i;
			return ret;
		case F_REPEAT_PENALTY:
			ret = get_number(key, v, 0.01, 100, &d, err);
			req->sp.repeat_penalty = (float)d;
			req->sp.repeat_last_n = 64;
			return ret;
		case F_SEED:
			/* the API's seeds are signed 64-bit; any of them names a sequence */
			if (!json_is_integer(v))
				return BAD(key, "'seed' must be an integer, not %s", type_name(v));
			req->sp.seed = (uint64_t)json_integer_value(v);
			req->has_seed = true;
			return 0;
		case F_STOP: return get_stop(v, req, err);
		case F_STREAM:
			if (!json_is_boolean(v))
				return BAD(key, "'stream' must be a boolean, not %s", type_name(v));
			req->stream = json_is_true(v);
			return 0;
		case F_RESPONSE_FORMAT: return get_response_format(v, req, err);
		case F_NEUTRAL: return neutral(key, v, err);
		case F_TOOLS: return get_tools(v, req, err);
		case F_TOOL_CHOICE: return get_tool_choice(v, req, err);
		case F_PARALLEL_CALLS:
			/* how many calls a reply holds is the format's and the model's matter */
			return json_is_boolean(v) ? 0 :
			       BAD(key, "'%s' must be a boolean, not %s", key, type_name(v));
		case F_KWARGS: return get_kwargs(v, req, err);
		case F_EFFORT: return get_effort(key, v, req, err);
		}
	}
	return BAD(key, "unknown field '%.64s'", key);
}

int api_parse_request(enum api_kind kind, const char *body, size_t len,
		      const struct api_limits *lim, struct api_request *req, struct api_error *err)
{
	json_error_t je;
	const char *key;
	json_t *root, *v;
	int ret = 0;

	memset(req, 0, sizeof(*req));
	memset(err, 0, sizeof(*err));
	req->kind = kind;
	moe_sample_params_init(&req->sp);
	req->sp.temp = 1.0f;    /* the API's default */
	req->thinking = -1;
	root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return BAD(NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text,
			   je.line, je.column);
	if (!json_is_object(root)) {
		ret = BAD(NULL, "the body must be a JSON object, not %s", type_name(root));
		goto out;
	}
	json_object_foreach(root, key, v) {
		ret = field(kind, key, v, lim, req, err);
		if (ret)
			goto out;
	}
	if (kind == API_CHAT && !req->n_msgs)
		ret = BAD("messages", "'messages' is missing");
	else if ((req->tool_choice == API_TOOLS_REQUIRED || req->tool_choice == API_TOOLS_NAMED) &&
		 !json_array_size(req->tools))
		ret = BAD("tool_choice", "'tool_choice' asks for a tool call but 'tools' names no "
			  "function");
	else if (req->tool_choice == API_TOOLS_NAMED && !api_find_tool(req, req->tool_name))
		ret = BAD("tool_choice", "'tool_choice' names '%.64s', which is not in 'tools'",
			  req->tool_name);
	else if (kind == API_COMPLETION && !req->prompt && !req->n_prompt_ids)
		ret = BAD("prompt", "'prompt' is missing");
out:
	json_decref(root);
	if (ret)
		api_request_free(req);
	return ret;
}

json_t *api_find_tool(const struct api_request *req, const char *name)
{
	size_t i;
	json_t *t;

	json_array_foreach(req->tools, i, t) {
		json_t *fn = json_object_get(t, "function");

		if (!strcmp(json_string_value(json_object_get(fn, "name")), name))
			return fn;
	}
	return NULL;
}

void api_request_free(struct api_request *req)
{
	for (uint32_t i = 0; i < req->n_msgs; i++) {
		struct api_msg *m = &req->msgs[i];

		free(m->content);
		free(m->reasoning);
		free(m->tool_call_id);
		free(m->name);
		for (uint32_t k = 0; k < m->n_calls; k++) {
			free(m->calls[k].id);
			free(m->calls[k].name);
			free(m->calls[k].arguments);
		}
		free(m->calls);
	}
	free(req->msgs);
	free(req->prompt);
	free(req->prompt_ids);
	for (uint32_t i = 0; i < req->n_stop; i++)
		free(req->stop[i]);
	moe_grammar_destroy(req->grammar);
	json_decref(req->tools);
	free(req->tool_name);
	free(req->effort);
	memset(req, 0, sizeof(*req));
}
