// SPDX-License-Identifier: MIT
/*
 * Tool calls and thinking per chat format.  The renderings follow the
 * reference templates (shared/reference/templates: Qwen3, Llama 3.3,
 * Mistral Nemo, gpt-oss, Gemma 4) as HF's Jinja renders them; "tojson" is
 * jansson's dump with Python's separators (", ", ": ").  Llama 4 takes
 * Llama 3's layout with its own header tokens.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "chatfmt.h"
#include "schema.h"
#include "strbuf.h"

static const char *const names[] = {
	[CF_NONE] = "none", [CF_CHATML] = "chatml", [CF_LLAMA3] = "llama3",
	[CF_LLAMA4] = "llama4", [CF_HARMONY] = "harmony", [CF_MISTRAL] = "mistral",
	[CF_GEMMA4] = "gemma4",
};

enum cf_format cf_format_from_name(const char *name)
{
	for (size_t i = 1; name && i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(name, names[i]))
			return (enum cf_format)i;
	return CF_NONE;
}

const char *cf_format_name(enum cf_format f)
{
	return names[f];
}

bool cf_needed(const struct api_request *req)
{
	if ((req->tools && req->tool_choice != API_TOOLS_NONE) || req->thinking >= 0 ||
	    req->effort)
		return true;
	for (uint32_t i = 0; i < req->n_msgs; i++)
		if (req->msgs[i].n_calls || !strcmp(req->msgs[i].role, "tool") ||
		    req->msgs[i].reasoning)
			return true;
	return false;
}

/* ------------------------------------------------------------ text building */

static bool is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Jinja's |trim. */
static void add_trimmed(struct strbuf *b, const char *s)
{
	size_t n = strlen(s);

	while (n && is_ws(s[n - 1]))
		n--;
	while (n && is_ws(*s)) {
		s++;
		n--;
	}
	strbuf_addn(b, s, n);
}

/* tojson: Python's json.dumps separators, or indented by @indent. */
static void add_json(struct strbuf *b, const json_t *v, int indent)
{
	char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_REAL_PRECISION(15) |
			     (indent ? JSON_INDENT(indent) : 0));

	if (!t) {
		b->oom = true;
		return;
	}
	strbuf_add(b, t);
	free(t);
}

static void add_json_text(struct strbuf *b, const char *json)
{
	json_t *v = json_loads(json, JSON_DECODE_ANY, NULL);

	if (v)
		add_json(b, v, 0);
	else
		strbuf_add(b, json);
	json_decref(v);
}

static const char *str(const json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : "";
}

static void upper(struct strbuf *b, const char *s)
{
	for (; *s; s++) {
		char c = (char)toupper((unsigned char)*s);

		strbuf_addn(b, &c, 1);
	}
}

static int first_msg(const struct api_request *req)
{
	return req->n_msgs && !strcmp(req->msgs[0].role, "system");
}

static bool tools_on(const struct api_request *req)
{
	return json_array_size(req->tools) && req->tool_choice != API_TOOLS_NONE;
}

/* ------------------------------------------------------------ ChatML / Qwen3 */

static bool is_tool_response(const char *c)
{
	size_t n = strlen(c);

	return !strncmp(c, "<tool_response>", 15) && n >= 31 &&
	       !strcmp(c + n - 16, "</tool_response>");
}

static void render_chatml(struct strbuf *b, const struct api_request *req)
{
	const struct api_msg *m = req->msgs;
	int n = (int)req->n_msgs, last_query = n - 1;
	size_t i;
	json_t *t;

	if (tools_on(req)) {
		strbuf_add(b, "<|im_start|>system\n");
		if (first_msg(req)) {
			strbuf_add(b, m[0].content);
			strbuf_add(b, "\n\n");
		}
		strbuf_add(b, "# Tools\n\nYou may call one or more functions to assist with the user "
		       "query.\n\nYou are provided with function signatures within <tools></tools> "
		       "XML tags:\n<tools>");
		json_array_foreach(req->tools, i, t) {
			strbuf_add(b, "\n");
			add_json(b, t, 0);
		}
		strbuf_add(b, "\n</tools>\n\nFor each function call, return a json object with function "
		       "name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
		       "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
		       "</tool_call><|im_end|>\n");
	} else if (first_msg(req)) {
		strbuf_add(b, "<|im_start|>system\n");
		strbuf_add(b, m[0].content);
		strbuf_add(b, "<|im_end|>\n");
	}
	/* the last user message that is not a wrapped tool response */
	for (int k = n - 1; k >= 0; k--) {
		if (!strcmp(m[k].role, "user") && !is_tool_response(m[k].content)) {
			last_query = k;
			break;
		}
	}
	for (int k = 0; k < n; k++) {
		const char *role = m[k].role;

		if (!strcmp(role, "user") || (!strcmp(role, "system") && k)) {
			strbuf_add(b, "<|im_start|>");
			strbuf_add(b, role);
			strbuf_add(b, "\n");
			strbuf_add(b, m[k].content);
			strbuf_add(b, "<|im_end|>\n");
		} else if (!strcmp(role, "assistant")) {
			const char *content = m[k].content, *r = m[k].reasoning, *end;
			char *rbuf = NULL;

			if (!r && (end = strstr(content, "</think>"))) {
				const char *last = end, *open = NULL, *rs;
				size_t rn;

				while ((end = strstr(last + 8, "</think>")))
					last = end;
				/* split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
				end = strstr(content, "</think>");
				for (const char *p = content; (p = strstr(p, "<think>")) && p < end;
				     p += 7)
					open = p + 7;
				rs = open ? open : content;
				rn = (size_t)(end - rs);
				while (rn && rs[rn - 1] == '\n')
					rn--;
				while (rn && *rs == '\n') {
					rs++;
					rn--;
				}
				rbuf = strndup(rs, rn);
				if (!rbuf) {
					b->oom = true;
					return;
				}
				r = rbuf;
				content = last + 8;
				while (*content == '\n')
					content++;
			}
			strbuf_add(b, "<|im_start|>assistant\n");
			if (k > last_query && (k == n - 1 || (r && *r))) {
				const char *rs = r ? r : "";
				size_t rn = strlen(rs);

				while (rn && rs[rn - 1] == '\n')
					rn--;
				while (rn && *rs == '\n') {
					rs++;
					rn--;
				}
				strbuf_add(b, "<think>\n");
				strbuf_addn(b, rs, rn);
				strbuf_add(b, "\n</think>\n\n");
				while (*content == '\n')
					content++;
			}
			strbuf_add(b, content);
			for (uint32_t c = 0; c < m[k].n_calls; c++) {
				if (c || *content)
					strbuf_add(b, "\n");
				strbuf_add(b, "<tool_call>\n{\"name\": \"");
				strbuf_add(b, m[k].calls[c].name);
				strbuf_add(b, "\", \"arguments\": ");
				add_json_text(b, m[k].calls[c].arguments);
				strbuf_add(b, "}\n</tool_call>");
			}
			strbuf_add(b, "<|im_end|>\n");
			free(rbuf);
		} else if (!strcmp(role, "tool")) {
			if (!k || strcmp(m[k - 1].role, "tool"))
				strbuf_add(b, "<|im_start|>user");
			strbuf_add(b, "\n<tool_response>\n");
			strbuf_add(b, m[k].content);
			strbuf_add(b, "\n</tool_response>");
			if (k == n - 1 || strcmp(m[k + 1].role, "tool"))
				strbuf_add(b, "<|im_end|>\n");
		}
	}
	strbuf_add(b, "<|im_start|>assistant\n");
	if (req->thinking == 0)
		strbuf_add(b, "<think>\n\n</think>\n\n");
}

/* ------------------------------------------------------------ Llama 3 / 4 */

static int render_llama(struct strbuf *b, const struct cf_render_opts *o,
			const struct api_request *req, bool v4, struct api_error *err)
{
	const char *hs = v4 ? "<|header_start|>" : "<|start_header_id|>";
	const char *he = v4 ? "<|header_end|>\n\n" : "<|end_header_id|>\n\n";
	const char *eot = v4 ? "<|eot|>" : "<|eot_id|>";
	const struct api_msg *m = req->msgs;
	int k = first_msg(req), n = (int)req->n_msgs;
	bool tools = tools_on(req);
	size_t i;
	json_t *t;

	strbuf_add(b, o->bos ? o->bos : "<|begin_of_text|>");
	if (!v4 || tools || k) {
		strbuf_add(b, hs);
		strbuf_add(b, "system");
		strbuf_add(b, he);
		if (tools)
			strbuf_add(b, "Environment: ipython\n");
		if (!v4)
			strbuf_add(b, "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n");
		if (k)
			add_trimmed(b, m[0].content);
		strbuf_add(b, eot);
	}
	if (tools) {
		/* the tools ride with the first user message */
		if (k >= n || strcmp(m[k].role, "user"))
			return api_fail(err, 400, "invalid_request_error", NULL, "messages",
					"with tools, the %s format needs a user message first "
					"(after the system message): the tools go into it",
					v4 ? "Llama 4" : "Llama 3");
		strbuf_add(b, hs);
		strbuf_add(b, "user");
		strbuf_add(b, he);
		strbuf_add(b, "Given the following functions, please respond with a JSON for a function "
		       "call with its proper arguments that best answers the given prompt.\n\n"
		       "Respond in the format {\"name\": function name, \"parameters\": dictionary "
		       "of argument name and its value}.Do not use variables.\n\n");
		json_array_foreach(req->tools, i, t) {
			add_json(b, t, 4);
			strbuf_add(b, "\n\n");
		}
		add_trimmed(b, m[k].content);
		strbuf_add(b, eot);
		k++;
	}
	for (; k < n; k++) {
		if (m[k].n_calls) {
			if (m[k].n_calls != 1)
				return api_fail(err, 400, "invalid_request_error", NULL, "messages",
						"messages[%d] holds %u tool calls: the %s format "
						"holds one per assistant message", k, m[k].n_calls,
						v4 ? "Llama 4" : "Llama 3");
			strbuf_add(b, hs);
			strbuf_add(b, "assistant");
			strbuf_add(b, he);
			strbuf_add(b, "{\"name\": \"");
			strbuf_add(b, m[k].calls[0].name);
			strbuf_add(b, "\", \"parameters\": ");
			add_json_text(b, m[k].calls[0].arguments);
			strbuf_add(b, "}");
			strbuf_add(b, eot);
		} else if (!strcmp(m[k].role, "tool")) {
			/* "content is iterable" holds for a string too: it goes through tojson */
			json_t *c = json_string(m[k].content);

			strbuf_add(b, hs);
			strbuf_add(b, "ipython");
			strbuf_add(b, he);
			add_json(b, c, 0);
			json_decref(c);
			strbuf_add(b, eot);
		} else {
			strbuf_add(b, hs);
			strbuf_add(b, m[k].role);
			strbuf_add(b, he);
			add_trimmed(b, m[k].content);
			strbuf_add(b, eot);
		}
	}
	strbuf_add(b, hs);
	strbuf_add(b, "assistant");
	strbuf_add(b, he);
	return 0;
}

/* ------------------------------------------------------------ harmony (gpt-oss) */

static void ts_type(struct strbuf *b, const json_t *spec);

static const char *type_of(const json_t *spec)
{
	return json_string_value(json_object_get(spec, "type"));
}

static void ts_object(struct strbuf *b, const json_t *spec)
{
	const json_t *props = json_object_get(spec, "properties"), *req = json_object_get(spec,
											"required");
	const char *key;
	json_t *p;
	size_t left;

	if (!json_object_size(props)) {
		strbuf_add(b, "object");
		return;
	}
	strbuf_add(b, "{\n");
	left = json_object_size(props);
	json_object_foreach((json_t *)props, key, p) {
		bool required = false;
		size_t i;
		json_t *r;

		json_array_foreach(req, i, r)
			if (json_is_string(r) && !strcmp(json_string_value(r), key))
				required = true;
		strbuf_add(b, key);
		if (!required)
			strbuf_add(b, "?");
		/* the template's "{{ render_typescript_type(...) }}" keeps its indent */
		strbuf_add(b, ": \n                ");
		ts_type(b, p);
		if (--left)
			strbuf_add(b, ", ");
	}
	strbuf_add(b, "}");
}

/* gpt-oss's render_typescript_type, without oneOf (rendered "any"). */
static void ts_type(struct strbuf *b, const json_t *spec)
{
	const char *t = type_of(spec);
	const json_t *items = json_object_get(spec, "items"), *types = json_object_get(spec, "type");
	bool nullable = json_is_true(json_object_get(spec, "nullable"));

	if (t && !strcmp(t, "array")) {
		const char *it = type_of(items);

		if (!json_object_size(items)) {
			strbuf_add(b, "any[]");
		} else if (it && !strcmp(it, "string")) {
			strbuf_add(b, "string[]");
		} else if (it && (!strcmp(it, "number") || !strcmp(it, "integer"))) {
			strbuf_add(b, "number[]");
		} else if (it && !strcmp(it, "boolean")) {
			strbuf_add(b, "boolean[]");
		} else {
			struct strbuf in = { 0 };

			ts_type(&in, items);
			if (in.oom || !in.s || in.n > 50 || !strcmp(in.s, "object | object")) {
				strbuf_add(b, "any[]");
			} else {
				strbuf_add(b, in.s);
				strbuf_add(b, "[]");
			}
			free(in.s);
		}
		if (nullable)
			strbuf_add(b, " | null");
	} else if (json_is_array(types) && json_array_size(types)) {
		size_t i;
		json_t *e;

		json_array_foreach(types, i, e) {
			if (i)
				strbuf_add(b, " | ");
			strbuf_add(b, json_is_string(e) ? json_string_value(e) : "any");
		}
	} else if (json_object_get(spec, "oneOf")) {
		strbuf_add(b, "any");
	} else if (t && !strcmp(t, "string")) {
		const json_t *en = json_object_get(spec, "enum");

		if (json_array_size(en)) {
			size_t i;
			json_t *e;

			strbuf_add(b, "\"");
			json_array_foreach(en, i, e) {
				if (i)
					strbuf_add(b, "\" | \"");
				if (json_is_string(e))
					strbuf_add(b, json_string_value(e));
				else
					add_json(b, e, 0);
			}
			strbuf_add(b, "\"");
		} else {
			strbuf_add(b, "string");
			if (nullable)
				strbuf_add(b, " | null");
		}
	} else if (t && (!strcmp(t, "number") || !strcmp(t, "integer"))) {
		strbuf_add(b, "number");
	} else if (t && !strcmp(t, "boolean")) {
		strbuf_add(b, "boolean");
	} else if (t && !strcmp(t, "object")) {
		ts_object(b, spec);
	} else {
		strbuf_add(b, "any");
	}
}

static void harmony_tools(struct strbuf *b, const json_t *tools)
{
	size_t i;
	json_t *t;

	strbuf_add(b, "## functions\n\nnamespace functions {\n\n");
	json_array_foreach(tools, i, t) {
		const json_t *fn = json_object_get(t, "function");
		const json_t *params = json_object_get(fn, "parameters");
		const json_t *props = json_object_get(params, "properties");
		const json_t *req = json_object_get(params, "required");
		const char *key;
		json_t *p;

		strbuf_add(b, "// ");
		strbuf_add(b, str(fn, "description"));
		strbuf_add(b, "\ntype ");
		strbuf_add(b, str(fn, "name"));
		strbuf_add(b, " = ");
		if (!json_object_size(props)) {
			strbuf_add(b, "() => any;\n\n");
			continue;
		}
		strbuf_add(b, "(_: {\n");
		json_object_foreach((json_t *)props, key, p) {
			const json_t *def = json_object_get(p, "default");
			bool required = false;
			size_t r;
			json_t *e;

			if (*str(p, "description")) {
				strbuf_add(b, "// ");
				strbuf_add(b, str(p, "description"));
				strbuf_add(b, "\n");
			}
			strbuf_add(b, key);
			json_array_foreach(req, r, e)
				if (json_is_string(e) && !strcmp(json_string_value(e), key))
					required = true;
			if (!required)
				strbuf_add(b, "?");
			strbuf_add(b, ": ");
			ts_type(b, p);
			if (def) {
				strbuf_add(b, json_object_get(p, "oneOf") ? "// default: " : ", // default: ");
				if (json_object_get(p, "enum") && json_is_string(def))
					strbuf_add(b, json_string_value(def));
				else
					add_json(b, def, 0);
			}
			strbuf_add(b, ",\n");
		}
		strbuf_add(b, "}) => any;\n\n");
	}
	strbuf_add(b, "} // namespace functions");
}

static int render_harmony(struct strbuf *b, const struct cf_render_opts *o,
			  const struct api_request *req, struct api_error *err)
{
	const struct api_msg *m = req->msgs;
	int first = first_msg(req), n = (int)req->n_msgs;
	bool tools = tools_on(req);
	const char *last_call = NULL;
	char date[32];

	if (o->date) {
		snprintf(date, sizeof(date), "%s", o->date);
	} else {
		time_t now = time(NULL);
		struct tm tm;

		gmtime_r(&now, &tm);
		strftime(date, sizeof(date), "%Y-%m-%d", &tm);
	}
	strbuf_add(b, "<|start|>system<|message|>You are ChatGPT, a large language model trained by "
	       "OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: ");
	strbuf_add(b, date);
	strbuf_add(b, "\n\nReasoning: ");
	strbuf_add(b, req->effort ? req->effort : "medium");
	strbuf_add(b, "\n\n# Valid channels: analysis, commentary, final. Channel must be included for "
	       "every message.");
	if (tools)
		strbuf_add(b, "\nCalls to these tools must go to the commentary channel: 'functions'.");
	strbuf_add(b, "<|end|>");
	if ((first && *m[0].content) || tools) {
		strbuf_add(b, "<|start|>developer<|message|>");
		if (first && *m[0].content) {
			strbuf_add(b, "# Instructions\n\n");
			strbuf_add(b, m[0].content);
			strbuf_add(b, "\n\n");
		}
		if (tools) {
			strbuf_add(b, "# Tools\n\n");
			harmony_tools(b, req->tools);
		}
		strbuf_add(b, "<|end|>");
	}
	for (int k = first; k < n; k++) {
		if (!strcmp(m[k].role, "assistant") && m[k].n_calls) {
			bool future_final = false;
			const char *think = m[k].reasoning;

			for (int f = k + 1; f < n; f++)
				if (!strcmp(m[f].role, "assistant") && !m[f].n_calls)
					future_final = true;
			if (*m[k].content && think && *think)
				return api_fail(err, 400, "invalid_request_error", NULL, "messages",
						"messages[%d]: the harmony format takes the analysis "
						"of a tool call in 'content' or in "
						"'reasoning_content', not both", k);
			if (!future_final && (*m[k].content || (think && *think))) {
				strbuf_add(b, "<|start|>assistant<|channel|>analysis<|message|>");
				strbuf_add(b, *m[k].content ? m[k].content : think);
				strbuf_add(b, "<|end|>");
			}
			strbuf_add(b, "<|start|>assistant to=functions.");
			strbuf_add(b, m[k].calls[0].name);
			strbuf_add(b, "<|channel|>commentary json<|message|>");
			add_json_text(b, m[k].calls[0].arguments);
			strbuf_add(b, "<|call|>");
			last_call = m[k].calls[0].name;
		} else if (!strcmp(m[k].role, "assistant")) {
			strbuf_add(b, "<|start|>assistant<|channel|>final<|message|>");
			strbuf_add(b, m[k].content);
			strbuf_add(b, "<|end|>");
			last_call = NULL;
		} else if (!strcmp(m[k].role, "tool")) {
			json_t *c;

			if (!last_call)
				return api_fail(err, 400, "invalid_request_error", NULL, "messages",
						"messages[%d] is a tool result without an assistant "
						"tool call before it", k);
			strbuf_add(b, "<|start|>functions.");
			strbuf_add(b, last_call);
			strbuf_add(b, " to=assistant<|channel|>commentary<|message|>");
			c = json_string(m[k].content);
			add_json(b, c, 0);
			json_decref(c);
			strbuf_add(b, "<|end|>");
		} else if (!strcmp(m[k].role, "user")) {
			strbuf_add(b, "<|start|>user<|message|>");
			strbuf_add(b, m[k].content);
			strbuf_add(b, "<|end|>");
		}
	}
	strbuf_add(b, "<|start|>assistant");
	return 0;
}

/* ------------------------------------------------------------ Mistral */

static bool mistral_id(const char *id)
{
	size_t i;

	for (i = 0; id && isalnum((unsigned char)id[i]); i++)
		;
	return id && i == 9 && !id[i];
}

static int render_mistral(struct strbuf *b, const struct cf_render_opts *o,
			  const struct api_request *req, struct api_error *err)
{
	const struct api_msg *m = req->msgs;
	int first = first_msg(req), n = (int)req->n_msgs, last_user = -1;
	const char *eos = o->eos ? o->eos : "</s>";

	for (int k = first; k < n; k++)
		if (!strcmp(m[k].role, "user"))
			last_user = k;
	strbuf_add(b, o->bos ? o->bos : "<s>");
	for (int k = first; k < n; k++) {
		if (!strcmp(m[k].role, "user")) {
			if (tools_on(req) && k == last_user) {
				size_t i;
				json_t *t;

				strbuf_add(b, "[AVAILABLE_TOOLS][");
				json_array_foreach(req->tools, i, t) {
					const json_t *fn = json_object_get(t, "function");
					const char *key;
					json_t *v;
					size_t left = json_object_size(fn);

					if (json_object_get(fn, "return"))
						left--;
					strbuf_add(b, "{\"type\": \"function\", \"function\": {");
					json_object_foreach((json_t *)fn, key, v) {
						if (!strcmp(key, "return"))
							continue;
						strbuf_add(b, "\"");
						strbuf_add(b, key);
						strbuf_add(b, "\": ");
						/* the template writes strings unescaped */
						if (json_is_string(v)) {
							strbuf_add(b, "\"");
							strbuf_add(b, json_string_value(v));
							strbuf_add(b, "\"");
						} else {
							add_json(b, v, 0);
						}
						if (--left)
							strbuf_add(b, ", ");
					}
					strbuf_add(b, "}}");
					strbuf_add(b, i + 1 < json_array_size(req->tools) ? ", " : "]");
				}
				strbuf_add(b, "[/AVAILABLE_TOOLS]");
			}
			strbuf_add(b, "[INST]");
			if (first && k == n - 1) {
				strbuf_add(b, m[0].content);
				strbuf_add(b, "\n\n");
			}
			strbuf_add(b, m[k].content);
			strbuf_add(b, "[/INST]");
		} else if (m[k].n_calls) {
			strbuf_add(b, "[TOOL_CALLS][");
			for (uint32_t c = 0; c < m[k].n_calls; c++) {
				if (!mistral_id(m[k].calls[c].id))
					return api_fail(err, 400, "invalid_request_error", NULL,
							"messages", "messages[%d].tool_calls[%u].id: "
							"the Mistral format needs call ids of 9 letters "
							"and digits", k, c);
				strbuf_add(b, "{\"name\": \"");
				strbuf_add(b, m[k].calls[c].name);
				strbuf_add(b, "\", \"arguments\": ");
				add_json_text(b, m[k].calls[c].arguments);
				strbuf_add(b, ", \"id\": \"");
				strbuf_add(b, m[k].calls[c].id);
				strbuf_add(b, "\"}");
				strbuf_add(b, c + 1 < m[k].n_calls ? ", " : "]");
			}
			strbuf_add(b, eos);
		} else if (!strcmp(m[k].role, "assistant")) {
			strbuf_add(b, m[k].content);
			strbuf_add(b, eos);
		} else if (!strcmp(m[k].role, "tool")) {
			if (!mistral_id(m[k].tool_call_id))
				return api_fail(err, 400, "invalid_request_error", NULL, "messages",
						"messages[%d].tool_call_id: the Mistral format needs "
						"call ids of 9 letters and digits", k);
			strbuf_add(b, "[TOOL_RESULTS]{\"content\": ");
			strbuf_add(b, m[k].content);
			strbuf_add(b, ", \"call_id\": \"");
			strbuf_add(b, m[k].tool_call_id);
			strbuf_add(b, "\"}[/TOOL_RESULTS]");
		} else {
			return api_fail(err, 400, "invalid_request_error", NULL, "messages",
					"messages[%d]: the Mistral format takes one system message, "
					"first", k);
		}
	}
	return 0;
}

/* ------------------------------------------------------------ Gemma 4 */

#define GQ "<|\"|>"

static int key_cmp(const void *a, const void *b)
{
	return strcasecmp(*(const char *const *)a, *(const char *const *)b);
}

/* An object's keys as Jinja's |dictsort has them (case-insensitive); free() the array. */
static const char **sorted_keys(const json_t *o, size_t *n)
{
	const char **keys = calloc(json_object_size(o) + 1, sizeof(*keys));
	const char *key;
	json_t *v;

	*n = 0;
	if (!keys)
		return NULL;
	json_object_foreach((json_t *)o, key, v)
		keys[(*n)++] = key;
	qsort(keys, *n, sizeof(*keys), key_cmp);
	return keys;
}

/* A number as Python prints it: the shortest text that reads back the same. */
static void add_number(struct strbuf *b, const json_t *v)
{
	char buf[40];

	if (json_is_integer(v)) {
		snprintf(buf, sizeof(buf), "%lld", (long long)json_integer_value(v));
	} else {
		double d = json_real_value(v);

		for (int p = 1; p <= 17; p++) {
			snprintf(buf, sizeof(buf), "%.*g", p, d);
			if (strtod(buf, NULL) == d)
				break;
		}
		if (!strpbrk(buf, ".eEn"))
			strcat(buf, ".0");
	}
	strbuf_add(b, buf);
}

/* format_argument: strings in <|"|>, keys sorted, quoted with @escape_keys. */
static void gemma_arg(struct strbuf *b, const json_t *v, bool escape_keys)
{
	if (json_is_string(v)) {
		strbuf_add(b, GQ);
		strbuf_add(b, json_string_value(v));
		strbuf_add(b, GQ);
	} else if (json_is_boolean(v)) {
		strbuf_add(b, json_is_true(v) ? "true" : "false");
	} else if (json_is_object(v)) {
		size_t n;
		const char **keys = sorted_keys(v, &n);

		if (!keys) {
			b->oom = true;
			return;
		}
		strbuf_add(b, "{");
		for (size_t i = 0; i < n; i++) {
			if (i)
				strbuf_add(b, ",");
			if (escape_keys)
				strbuf_add(b, GQ);
			strbuf_add(b, keys[i]);
			if (escape_keys)
				strbuf_add(b, GQ);
			strbuf_add(b, ":");
			gemma_arg(b, json_object_get(v, keys[i]), escape_keys);
		}
		strbuf_add(b, "}");
		free(keys);
	} else if (json_is_array(v)) {
		size_t i;
		json_t *e;

		strbuf_add(b, "[");
		json_array_foreach(v, i, e) {
			if (i)
				strbuf_add(b, ",");
			gemma_arg(b, e, escape_keys);
		}
		strbuf_add(b, "]");
	} else if (json_is_number(v)) {
		add_number(b, v);
	} else {
		strbuf_add(b, "None");
	}
}

static void gemma_required(struct strbuf *b, const json_t *req)
{
	size_t i;
	json_t *e;

	strbuf_add(b, "required:[");
	json_array_foreach(req, i, e) {
		if (i)
			strbuf_add(b, ",");
		strbuf_add(b, GQ);
		strbuf_add(b, json_string_value(e) ? json_string_value(e) : "");
		strbuf_add(b, GQ);
	}
	strbuf_add(b, "]");
}

static void comma(struct strbuf *b, bool *add_comma)
{
	if (*add_comma)
		strbuf_add(b, ",");
	*add_comma = true;
}

static bool is_upper(const json_t *v, const char *want)
{
	const char *t = json_string_value(json_object_get(v, "type"));

	return t && !strcasecmp(t, want);
}

static void gemma_params(struct strbuf *b, const json_t *props, int depth);

static void gemma_items(struct strbuf *b, const json_t *items, int depth)
{
	size_t n;
	const char **keys = sorted_keys(items, &n);
	bool first = true;

	if (!keys) {
		b->oom = true;
		return;
	}
	strbuf_add(b, "items:{");
	for (size_t i = 0; i < n; i++) {
		const json_t *v = json_object_get(items, keys[i]);

		if (json_is_null(v))
			continue;
		if (!first)
			strbuf_add(b, ",");
		first = false;
		if (!strcmp(keys[i], "properties")) {
			strbuf_add(b, "properties:{");
			if (json_is_object(v))
				gemma_params(b, v, depth + 1);
			strbuf_add(b, "}");
		} else if (!strcmp(keys[i], "required")) {
			gemma_required(b, v);
		} else if (!strcmp(keys[i], "type") && json_is_string(v)) {
			strbuf_add(b, "type:" GQ);
			upper(b, json_string_value(v));
			strbuf_add(b, GQ);
		} else if (!strcmp(keys[i], "type") && json_is_array(v)) {
			size_t k;
			json_t *e;

			strbuf_add(b, "type:[");
			json_array_foreach(v, k, e) {
				if (k)
					strbuf_add(b, ",");
				strbuf_add(b, GQ);
				upper(b, json_string_value(e) ? json_string_value(e) : "");
				strbuf_add(b, GQ);
			}
			strbuf_add(b, "]");
		} else {
			strbuf_add(b, keys[i]);
			strbuf_add(b, ":");
			gemma_arg(b, v, true);
		}
	}
	strbuf_add(b, "}");
	free(keys);
}

/* format_parameters: each property (but those named like a schema keyword), sorted. */
static void gemma_params(struct strbuf *b, const json_t *props, int depth)
{
	static const char *const standard[] = { "description", "type", "properties",
						"required", "nullable" };
	const char **keys;
	bool first = true;
	size_t n;

	if (depth > 16)
		return;
	keys = sorted_keys(props, &n);
	if (!keys) {
		b->oom = true;
		return;
	}
	for (size_t i = 0; i < n; i++) {
		const json_t *v = json_object_get(props, keys[i]), *f;
		bool add_comma = false, skip = false;

		for (size_t s = 0; s < sizeof(standard) / sizeof(standard[0]); s++)
			skip |= !strcmp(keys[i], standard[s]);
		if (skip)
			continue;
		if (!first)
			strbuf_add(b, ",");
		first = false;
		strbuf_add(b, keys[i]);
		strbuf_add(b, ":{");
		if (*str(v, "description")) {
			strbuf_add(b, "description:" GQ);
			strbuf_add(b, str(v, "description"));
			strbuf_add(b, GQ);
			add_comma = true;
		}
		if (is_upper(v, "string")) {
			f = json_object_get(v, "enum");
			if (json_array_size(f)) {
				comma(b, &add_comma);
				strbuf_add(b, "enum:");
				gemma_arg(b, f, true);
			}
		} else if (is_upper(v, "array")) {
			f = json_object_get(v, "items");
			if (json_object_size(f)) {
				comma(b, &add_comma);
				gemma_items(b, f, depth);
			}
		}
		if (json_is_true(json_object_get(v, "nullable"))) {
			comma(b, &add_comma);
			strbuf_add(b, "nullable:true");
		}
		if (is_upper(v, "object")) {
			f = json_object_get(v, "properties");
			comma(b, &add_comma);
			strbuf_add(b, "properties:{");
			gemma_params(b, json_is_object(f) ? f : v, depth + 1);
			strbuf_add(b, "}");
			if (json_array_size(json_object_get(v, "required"))) {
				comma(b, &add_comma);
				gemma_required(b, json_object_get(v, "required"));
			}
		}
		comma(b, &add_comma);
		strbuf_add(b, "type:" GQ);
		upper(b, str(v, "type"));
		strbuf_add(b, GQ "}");
	}
	free(keys);
}

static void gemma_declaration(struct strbuf *b, const json_t *tool)
{
	const json_t *fn = json_object_get(tool, "function");
	const json_t *params = json_object_get(fn, "parameters");

	strbuf_add(b, "declaration:");
	strbuf_add(b, str(fn, "name"));
	strbuf_add(b, "{description:" GQ);
	strbuf_add(b, str(fn, "description"));
	strbuf_add(b, GQ);
	if (json_object_size(params)) {
		strbuf_add(b, ",parameters:{");
		if (json_object_size(json_object_get(params, "properties"))) {
			strbuf_add(b, "properties:{");
			gemma_params(b, json_object_get(params, "properties"), 0);
			strbuf_add(b, "},");
		}
		if (json_array_size(json_object_get(params, "required"))) {
			gemma_required(b, json_object_get(params, "required"));
			strbuf_add(b, ",");
		}
		if (*str(params, "type")) {
			strbuf_add(b, "type:" GQ);
			upper(b, str(params, "type"));
			strbuf_add(b, GQ "}");
		}
	}
	strbuf_add(b, "}");
}

/* strip_thinking: the text outside <|channel>...<channel|>, trimmed. */
static void gemma_strip_thinking(struct strbuf *b, const char *text)
{
	struct strbuf t = { 0 };
	const char *p = text;

	for (;;) {
		const char *end = strstr(p, "<channel|>");
		size_t n = end ? (size_t)(end - p) : strlen(p);
		const char *open = memmem(p, n, "<|channel>", 10);

		strbuf_addn(&t, p, open ? (size_t)(open - p) : n);
		if (!end)
			break;
		p = end + 10;
	}
	add_trimmed(b, t.s ? t.s : "");
	b->oom |= t.oom;
	free(t.s);
}

static void render_gemma4(struct strbuf *b, const struct cf_render_opts *o,
			  const struct api_request *req)
{
	enum { P_NONE, P_CALL, P_RESPONSE, P_OTHER } prev = P_NONE;
	const struct api_msg *m = req->msgs;
	int first = 0, n = (int)req->n_msgs, last_user = -1;
	bool tools = tools_on(req), think = req->thinking == 1;

	strbuf_add(b, o->bos ? o->bos : "<bos>");
	if (think || tools || first_msg(req)) {
		size_t i;
		json_t *t;

		strbuf_add(b, "<|turn>system\n");
		if (think) {
			strbuf_add(b, "<|think|>\n");
			prev = P_OTHER;
		}
		if (first_msg(req)) {
			add_trimmed(b, m[0].content);
			first = 1;
		}
		json_array_foreach(tools ? req->tools : NULL, i, t) {
			struct strbuf d = { 0 };

			gemma_declaration(&d, t);
			strbuf_add(b, "<|tool>");
			add_trimmed(b, d.s ? d.s : "");
			strbuf_add(b, "<tool|>");
			b->oom |= d.oom;
			free(d.s);
			prev = P_OTHER;
		}
		strbuf_add(b, "<turn|>\n");
	}
	for (int k = first; k < n; k++)
		if (!strcmp(m[k].role, "user"))
			last_user = k;
	for (int k = first; k < n; k++) {
		bool model = !strcmp(m[k].role, "assistant"), responded = false;
		const char *prev_role = NULL;

		if (!strcmp(m[k].role, "tool"))
			continue;
		prev = P_NONE;
		for (int j = k - 1; j >= first && !prev_role; j--)
			if (strcmp(m[j].role, "tool"))
				prev_role = m[j].role;
		if (!(model && prev_role && !strcmp(prev_role, "assistant"))) {
			strbuf_add(b, "<|turn>");
			strbuf_add(b, model ? "model" : m[k].role);
			strbuf_add(b, "\n");
		}
		if (m[k].reasoning && *m[k].reasoning && k > last_user && m[k].n_calls) {
			strbuf_add(b, "<|channel>thought\n");
			strbuf_add(b, m[k].reasoning);
			strbuf_add(b, "\n<channel|>");
		}
		for (uint32_t c = 0; c < m[k].n_calls; c++) {
			json_t *args = json_loads(m[k].calls[c].arguments, 0, NULL);
			size_t na = 0;
			const char **keys = args ? sorted_keys(args, &na) : NULL;

			strbuf_add(b, "<|tool_call>call:");
			strbuf_add(b, m[k].calls[c].name);
			strbuf_add(b, "{");
			for (size_t a = 0; keys && a < na; a++) {
				if (a)
					strbuf_add(b, ",");
				strbuf_add(b, keys[a]);
				strbuf_add(b, ":");
				gemma_arg(b, json_object_get(args, keys[a]), false);
			}
			strbuf_add(b, "}<tool_call|>");
			free(keys);
			json_decref(args);
			prev = P_CALL;
		}
		/* the tool results that follow the calls go into the same model turn */
		for (int f = k + 1; m[k].n_calls && f < n && !strcmp(m[f].role, "tool"); f++) {
			const char *name = m[f].name ? m[f].name : "unknown";
			json_t *c = json_string(m[f].content);

			for (uint32_t c2 = 0; c2 < m[k].n_calls; c2++)
				if (m[k].calls[c2].id && !strcmp(m[k].calls[c2].id,
								 m[f].tool_call_id))
					name = m[k].calls[c2].name;
			strbuf_add(b, "<|tool_response>response:");
			strbuf_add(b, name);
			strbuf_add(b, "{value:");
			gemma_arg(b, c, false);
			strbuf_add(b, "}<tool_response|>");
			json_decref(c);
			responded = true;
			prev = P_RESPONSE;
		}
		if (model)
			gemma_strip_thinking(b, m[k].content);
		else
			add_trimmed(b, m[k].content);
		if (prev == P_CALL && !responded)
			strbuf_add(b, "<|tool_response>");
		else if (!(responded && !*m[k].content))
			strbuf_add(b, "<turn|>\n");
	}
	if (prev != P_RESPONSE && prev != P_CALL) {
		strbuf_add(b, "<|turn>model\n");
		if (!think)
			strbuf_add(b, "<|channel>thought\n<channel|>");
	}
}

/* ------------------------------------------------------------ forced calls */

/*
 * "required" and a named tool_choice: the prompt opens the call itself, so
 * the model can only continue one.  A named function's call (or that of the
 * only function "required" can mean) is opened up to its arguments.
 */
/* The function a forced call must be: the named one, or under "required" the only one. */
static const char *forced_name(const struct api_request *req)
{
	if (req->tool_choice == API_TOOLS_NAMED)
		return req->tool_name;
	if (req->tool_choice == API_TOOLS_REQUIRED && json_array_size(req->tools) == 1)
		return json_string_value(json_object_get(json_object_get(json_array_get(req->tools, 0),
									 "function"), "name"));
	return NULL;
}

static void forced_prefix(enum cf_format f, const struct api_request *req, struct strbuf *p)
{
	const char *name = forced_name(req);

	if (req->tool_choice != API_TOOLS_REQUIRED && !name)
		return;
	switch (f) {
	case CF_CHATML:
		strbuf_add(p, "<tool_call>\n{\"name\": \"");
		if (name) {
			strbuf_add(p, name);
			strbuf_add(p, "\", \"arguments\": ");
		}
		break;
	case CF_LLAMA3:
	case CF_LLAMA4:
		strbuf_add(p, "{\"name\": \"");
		if (name) {
			strbuf_add(p, name);
			strbuf_add(p, "\", \"parameters\": ");
		}
		break;
	case CF_MISTRAL:
		strbuf_add(p, "[TOOL_CALLS][{\"name\": \"");
		if (name) {
			strbuf_add(p, name);
			strbuf_add(p, "\", \"arguments\": ");
		}
		break;
	case CF_HARMONY:
		strbuf_add(p, " to=functions.");
		if (name) {
			strbuf_add(p, name);
			strbuf_add(p, "<|channel|>commentary json<|message|>");
		}
		break;
	case CF_GEMMA4:
		strbuf_add(p, "<|tool_call>call:");
		if (name)
			strbuf_add(p, name);
		break;
	default:
		break;
	}
}

/*
 * What the grammar of a forced call writes after the prompt's prefix: the
 * function's name and what parts it from the arguments (for "required"),
 * then after the arguments the call's end.
 */
static void call_parts(enum cf_format f, const char **after_name, const char **end)
{
	switch (f) {
	case CF_CHATML:
		*after_name = "\", \"arguments\": ";
		*end = "}\n</tool_call>";
		break;
	case CF_LLAMA3:
	case CF_LLAMA4:
		*after_name = "\", \"parameters\": ";
		*end = "}";
		break;
	case CF_MISTRAL:
		*after_name = "\", \"arguments\": ";
		*end = "}]";
		break;
	case CF_HARMONY:
		*after_name = "<|channel|>commentary json<|message|>";
		*end = "";
		break;
	case CF_GEMMA4:
		*after_name = "";
		*end = "<tool_call|>";
		break;
	default:
		*after_name = *end = NULL;
		break;
	}
}

/* @s as the contents of a GBNF literal. */
static void gbnf_literal(struct strbuf *b, const char *s)
{
	strbuf_add(b, "\"");
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			strbuf_addf(b, "\\%c", *s);
		else if (*s == '\n')
			strbuf_add(b, "\\n");
		else
			strbuf_addn(b, s, 1);
	}
	strbuf_add(b, "\"");
}

/* The grammar of a call of @name (NULL: of any function in 'tools') after its prefix. */
static int call_grammar(enum cf_format f, const struct api_request *req, const char *name,
			char **gbnf, struct api_error *err)
{
	const char *after_name, *end;
	struct strbuf b = { 0 }, root = { 0 };
	size_t i;
	json_t *t;

	*gbnf = NULL;
	call_parts(f, &after_name, &end);
	if (!after_name)
		return api_fail(err, 400, "invalid_request_error", NULL, "tool_choice",
				"this model's chat format defines no tool calls");
	strbuf_add(&root, "root ::=");
	json_array_foreach(req->tools, i, t) {
		json_t *fn = json_object_get(t, "function"), *params = json_object_get(fn, "parameters");
		const char *fname = json_string_value(json_object_get(fn, "name"));
		char prefix[24], msg[512], *rules;
		json_t *any = NULL;
		int ret;

		if (name && strcmp(fname, name))
			continue;
		/* arguments are an object: a schema of any value means any object */
		if (!params || !json_object_size(params))
			params = any = json_pack("{s:s}", "type", "object");
		if (json_object_get(params, "type") &&
		    !(json_is_string(json_object_get(params, "type")) &&
		      !strcmp(json_string_value(json_object_get(params, "type")), "object"))) {
			char param[64];

			free(b.s);
			free(root.s);
			json_decref(any);
			snprintf(param, sizeof(param), "tools[%zu].function.parameters", i);
			return api_fail(err, 400, "invalid_request_error", NULL, param,
					"'%s' must describe an object (\"type\": \"object\"): a call's "
					"arguments are one", param);
		}
		snprintf(prefix, sizeof(prefix), "t%zu", i);
		ret = schema_to_gbnf_flags(params, prefix, f == CF_GEMMA4 ? SCHEMA_GEMMA : 0, &rules,
					   msg, sizeof(msg));
		json_decref(any);
		if (ret) {
			char param[64];

			free(b.s);
			free(root.s);
			snprintf(param, sizeof(param), "tools[%zu].function.parameters", i);
			if (ret == -ENOMEM)
				return api_fail(err, 500, "server_error", NULL, param, "out of memory");
			return api_fail(err, 400, "invalid_request_error", NULL, param,
					"'%s' cannot be enforced for tool_choice '%s': %s", param,
					name ? name : "required", msg);
		}
		strbuf_add(&b, rules);
		free(rules);
		strbuf_add(&root, root.n > 8 ? " | " : " ");
		if (!name) {
			gbnf_literal(&root, fname);
			strbuf_add(&root, " ");
			gbnf_literal(&root, after_name);
			strbuf_add(&root, " ");
		}
		strbuf_add(&root, prefix);
		strbuf_add(&root, " ");
		gbnf_literal(&root, end);
	}
	if (!root.oom && root.n <= 8) {
		free(b.s);
		free(root.s);
		return api_fail(err, 400, "invalid_request_error", NULL, "tool_choice",
				"'tool_choice' names '%.64s', which is not in 'tools'", name);
	}
	strbuf_add(&root, "\n");
	strbuf_add(&root, b.s ? b.s : "");
	free(b.s);
	if (root.oom) {
		free(root.s);
		return api_fail(err, 500, "server_error", NULL, "tools", "out of memory");
	}
	*gbnf = root.s;
	return 0;
}

int cf_call_grammar(enum cf_format f, const struct api_request *req, char **gbnf,
		    struct api_error *err)
{
	const char *name = forced_name(req);

	*gbnf = NULL;
	if (!tools_on(req) || (req->tool_choice != API_TOOLS_REQUIRED && !name))
		return 0;
	return call_grammar(f, req, name, gbnf, err);
}

int cf_call_grammar_of(enum cf_format f, const struct api_request *req, const char *name,
		       char **gbnf, struct api_error *err)
{
	return call_grammar(f, req, name, gbnf, err);
}

const char *cf_call_marker(enum cf_format f, const struct api_request *req)
{
	if (f != CF_HARMONY || !tools_on(req) || req->tool_choice != API_TOOLS_REQUIRED ||
	    forced_name(req))
		return NULL;
	return "<|channel|>commentary json<|message|>";
}

int cf_render(enum cf_format f, const struct cf_render_opts *o, const struct api_request *req,
	      char **out, char **prefix, struct api_error *err)
{
	struct strbuf b = { 0 }, p = { 0 };
	int ret = 0;

	*out = *prefix = NULL;
	for (uint32_t i = 1; i < req->n_msgs; i++)
		if (!strcmp(req->msgs[i].role, "system"))
			return api_fail(err, 400, "invalid_request_error", NULL, "messages",
					"messages[%u] is a system message: only the first may be "
					"one", i);
	switch (f) {
	case CF_CHATML: render_chatml(&b, req); break;
	case CF_LLAMA3:
	case CF_LLAMA4: ret = render_llama(&b, o, req, f == CF_LLAMA4, err); break;
	case CF_HARMONY: ret = render_harmony(&b, o, req, err); break;
	case CF_MISTRAL: ret = render_mistral(&b, o, req, err); break;
	case CF_GEMMA4: render_gemma4(&b, o, req); break;
	default:
		return api_fail(err, 400, "invalid_request_error", NULL,
				req->tools ? "tools" : "messages", "this model's chat format "
				"defines no tool calls nor thinking switch; the formats that do: "
				"chatml (Qwen), llama3, llama4, harmony (gpt-oss), mistral, gemma4");
	}
	if (!ret && tools_on(req)) {
		forced_prefix(f, req, &p);
		strbuf_add(&b, p.s ? p.s : "");
	}
	strbuf_add(&p, "");
	if (!ret && (b.oom || p.oom))
		ret = api_fail(err, 500, "server_error", NULL, NULL, "out of memory");
	if (ret) {
		free(b.s);
		free(p.s);
		return ret;
	}
	*out = b.s;
	*prefix = p.s;
	return (int)b.n;
}

const char *cf_stop(enum cf_format f, const struct api_request *req)
{
	/* after its calls Gemma 4 opens the tool response, which is not the end of a turn */
	if (f == CF_GEMMA4 && tools_on(req))
		return "<|tool_response>";
	return NULL;
}

/* ------------------------------------------------------------ parsing replies */

struct parse {
	struct cf_reply *r;
	struct strbuf reasoning, content;
	bool oom;
};

/* A function name as the API allows it (1 to 64 of [A-Za-z0-9_-]; '.' for namespaces). */
static bool call_name_ok(const char *n, size_t len)
{
	if (!len || len > 64)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!isalnum((unsigned char)n[i]) && n[i] != '_' && n[i] != '-' && n[i] != '.')
			return false;
	return true;
}

/* 0, -ENOMEM, or 1 when @name cannot be a function's (then it is no call). */
static int push_call(struct parse *ps, const char *name, size_t name_len, const json_t *args)
{
	struct cf_reply *r = ps->r;
	struct cf_call *c;

	if (!call_name_ok(name, name_len))
		return 1;
	c = realloc(r->calls, sizeof(*c) * (r->n_calls + 1));
	if (!c)
		return -ENOMEM;
	r->calls = c;
	c += r->n_calls;
	c->name = strndup(name, name_len);
	c->arguments = json_dumps(args, JSON_COMPACT);
	if (!c->name || !c->arguments) {
		free(c->name);
		free(c->arguments);
		return -ENOMEM;
	}
	r->n_calls++;
	return 0;
}

static bool json_call_args(struct parse *ps, const json_t *name, const json_t *args);

/* A JSON call {"name": N, "arguments"|"parameters": {...}}; false if @j is not one. */
static bool json_call(struct parse *ps, const json_t *j)
{
	const json_t *name = json_object_get(j, "name");
	const json_t *args = json_object_get(j, "arguments");

	if (!args)
		args = json_object_get(j, "parameters");
	if (json_is_string(args)) {
		json_t *p = json_loads(json_string_value(args), 0, NULL);
		bool ok = json_is_object(p) && json_call_args(ps, name, p);

		json_decref(p);
		return ok;
	}
	return json_call_args(ps, name, args);
}

static bool json_call_args(struct parse *ps, const json_t *name, const json_t *args)
{
	if (!json_is_string(name) || !json_string_length(name) || (args && !json_is_object(args)))
		return false;
	{
		json_t *empty = args ? NULL : json_object();
		int ret = args || empty ? push_call(ps, json_string_value(name),
						    json_string_length(name), args ? args : empty) :
			  -ENOMEM;

		json_decref(empty);
		ps->oom |= ret < 0;
		return ret == 0;
	}
}

/* Length of the longest tail of @s[0..n) that starts one of @marks. */
static size_t partial_tail(const char *s, size_t n, const char *const *marks)
{
	size_t best = 0;

	for (; *marks; marks++) {
		size_t ml = strlen(*marks);

		for (size_t k = ml - 1; k > best; k--)
			if (k <= n && !memcmp(s + n - k, *marks, k))
				best = k;
	}
	return best;
}

/*
 * What a partial parse holds back of content that tool calls may follow:
 * the start of a marker, and the blank before it (the calls' content ends
 * without it).
 */
static size_t hold_back(const char *s, size_t n, const char *const *marks)
{
	size_t k = partial_tail(s, n, marks);

	while (k < n && is_ws(s[n - k - 1]))
		k++;
	return k;
}

static const char *find(const char *s, const char *end, const char *needle)
{
	return memmem(s, (size_t)(end - s), needle, strlen(needle));
}

static void trim_span(const char **s, const char **e)
{
	while (*s < *e && is_ws(**s))
		(*s)++;
	while (*e > *s && is_ws((*e)[-1]))
		(*e)--;
}

/*
 * Text with <think>...</think> first (Qwen3), then content with
 * <tool_call>JSON</tool_call> blocks.
 */
static void parse_chatml(struct parse *ps, bool tools, const char *s, const char *end,
			 bool final)
{
	static const char *const marks[] = { "<think>", "<tool_call>", NULL };
	const char *p = s, *q;

	while (p < end && is_ws(*p))
		p++;
	if (end - p >= 7 && !memcmp(p, "<think>", 7)) {
		const char *close = find(p + 7, end, "</think>"), *rs = p + 7, *re;

		re = close ? close : end;
		if (!close && !final) {
			/* what may be the start of "</think>" waits */
			static const char *const cl[] = { "</think>", NULL };

			re -= partial_tail(rs, (size_t)(re - rs), cl);
		}
		while (rs < re && *rs == '\n')
			rs++;
		/* the newlines before "</think>" are not the reasoning's: held until known */
		while (re > rs && re[-1] == '\n')
			re--;
		strbuf_addn(&ps->reasoning, rs, (size_t)(re - rs));
		if (!close)
			return;
		p = close + 8;
		while (p < end && is_ws(*p))
			p++;
	} else if (!final && (size_t)(end - p) < 7 && !memcmp(p, "<think>", (size_t)(end - p))) {
		return;
	} else {
		p = s;
	}
	if (!tools) {
		strbuf_addn(&ps->content, p, (size_t)(end - p));
		return;
	}
	q = find(p, end, "<tool_call>");
	if (!q) {
		size_t hold = final ? 0 : hold_back(p, (size_t)(end - p), marks);

		strbuf_addn(&ps->content, p, (size_t)(end - p) - hold);
		return;
	}
	{
		const char *ce = q;

		while (ce > p && is_ws(ce[-1]))
			ce--;
		/* the content before the calls, without the blank that parts them */
		strbuf_addn(&ps->content, p, (size_t)(ce - p));
	}
	while (q) {
		const char *js = q + 11, *close = find(js, end, "</tool_call>"), *je;
		json_t *j;

		if (!close && !final)
			return;
		je = close ? close : end;
		trim_span(&js, &je);
		j = json_loadb(js, (size_t)(je - js), 0, NULL);
		if (!j || !json_call(ps, j)) {
			/* not a call after all: the rest is content */
			if (final)
				strbuf_addn(&ps->content, q, (size_t)(end - q));
			json_decref(j);
			return;
		}
		json_decref(j);
		if (!close)
			return;
		q = find(close + 12, end, "<tool_call>");
	}
}

/* Llama 3/4: the whole reply one JSON call, maybe after <|python_tag|>. */
static void parse_llama(struct parse *ps, bool tools, const char *s, const char *end, bool final)
{
	const char *p = s, *e = end;
	json_t *j;

	trim_span(&p, &e);
	if (tools) {
		static const char *const tags[] = { "<|python_tag|>", "<|python_start|>", NULL };
		bool tagged = false;

		for (int t = 0; tags[t]; t++) {
			size_t l = strlen(tags[t]);

			if ((size_t)(e - p) >= l && !memcmp(p, tags[t], l)) {
				p += l;
				tagged = true;
			} else if (!final && (size_t)(e - p) < l && !memcmp(p, tags[t], (size_t)(e - p))) {
				return;
			}
		}
		if (tagged || (p < e && *p == '{') || (!final && p == e)) {
			const char *je = e;

			if (!final)
				return;
			if (je - p >= 14 && !memcmp(je - 14, "<|python_end|>", 14))
				je -= 14;
			j = json_loadb(p, (size_t)(je - p), 0, NULL);
			if (j && json_call(ps, j)) {
				json_decref(j);
				return;
			}
			json_decref(j);
		}
	}
	strbuf_addn(&ps->content, s, (size_t)(end - s));
}

/* Mistral: content, then [TOOL_CALLS] and a JSON array of calls (or NAME[ARGS]{...}). */
static void parse_mistral(struct parse *ps, bool tools, const char *s, const char *end,
			  bool final)
{
	static const char *const marks[] = { "[TOOL_CALLS]", NULL };
	const char *q = tools ? find(s, end, "[TOOL_CALLS]") : NULL, *p, *ce;
	json_t *j;

	if (!q) {
		size_t hold = final || !tools ? 0 : hold_back(s, (size_t)(end - s), marks);

		strbuf_addn(&ps->content, s, (size_t)(end - s) - hold);
		return;
	}
	for (ce = q; ce > s && is_ws(ce[-1]); ce--)
		;
	strbuf_addn(&ps->content, s, (size_t)(ce - s));
	if (!final)
		return;
	p = q + 12;
	while (p < end && is_ws(*p))
		p++;
	if (p < end && *p == '[') {
		size_t i;
		json_t *c;

		j = json_loadb(p, (size_t)(end - p), JSON_DISABLE_EOF_CHECK, NULL);
		json_array_foreach(j, i, c)
			if (!json_call(ps, c))
				break;
		if (json_array_size(j) && ps->r->n_calls == json_array_size(j)) {
			json_decref(j);
			return;
		}
		json_decref(j);
	} else {
		const char *args = find(p, end, "[ARGS]");

		if (args) {
			j = json_loadb(args + 6, (size_t)(end - args - 6), JSON_DISABLE_EOF_CHECK,
				       NULL);
			if (json_is_object(j) && args > p &&
			    !push_call(ps, p, (size_t)(args - p), j)) {
				json_decref(j);
				return;
			}
			json_decref(j);
		}
	}
	/* not calls after all */
	for (size_t i = 0; i < ps->r->n_calls; i++) {
		free(ps->r->calls[i].name);
		free(ps->r->calls[i].arguments);
	}
	ps->r->n_calls = 0;
	strbuf_addn(&ps->content, ce, (size_t)(end - ce));
}

/*
 * harmony: messages "<|channel|>C[ to=R][ <|constrain|>T]<|message|>BODY"
 * parted by <|end|>/<|call|> and <|start|>assistant; analysis is the
 * reasoning, a message to functions.NAME a call, the rest the content.
 */
static void parse_harmony(struct parse *ps, bool tools, const char *s, const char *end,
			  bool final)
{
	static const char *const marks[] = { "<|end|>", "<|start|>", "<|call|>", "<|return|>",
					     "<|channel|>", NULL };
	const char *p = s;

	while (p < end) {
		const char *h = p, *msg = find(p, end, "<|message|>"), *body, *be, *stop;
		const char *ch, *to;
		char channel[32] = "";
		bool open;
		int ret;

		if (!msg) {
			/* a header still coming in; or, at the end, text outside any message */
			if (final && !find(p, end, "<|channel|>") && !find(p, end, " to=")) {
				strbuf_addn(&ps->content, p, (size_t)(end - p));
			}
			return;
		}
		ch = find(h, msg, "<|channel|>");
		if (ch) {
			size_t k = 0;

			for (ch += 11; ch < msg && k + 1 < sizeof(channel) && *ch != ' ' && *ch != '<';
			     ch++)
				channel[k++] = *ch;
			channel[k] = 0;
		}
		to = find(h, msg, "to=functions.");
		body = msg + 11;
		stop = NULL;
		for (const char *const *m = marks; *m && m - marks < 4; m++) {
			const char *x = find(body, end, *m);

			if (x && (!stop || x < stop))
				stop = x;
		}
		open = !stop;
		be = stop ? stop : end;
		if (open && !final && !(to && tools))
			be -= partial_tail(body, (size_t)(be - body), marks);
		if (to && tools) {
			const char *n = to + 13, *ne = n;
			json_t *j;

			while (ne < msg && *ne != ' ' && *ne != '<')
				ne++;
			if (open && !final)
				return;
			trim_span(&body, &be);
			j = json_loadb(body, (size_t)(be - body), 0, NULL);
			if (json_is_object(j) && ne > n &&
			    (ret = push_call(ps, n, (size_t)(ne - n), j)) <= 0) {
				ps->oom |= ret < 0;
			} else {
				strbuf_addn(&ps->content, body, (size_t)(be - body));
			}
			json_decref(j);
		} else if (!strcmp(channel, "analysis")) {
			strbuf_addn(&ps->reasoning, body, (size_t)(be - body));
		} else {
			strbuf_addn(&ps->content, body, (size_t)(be - body));
		}
		if (open)
			return;
		p = stop;
		/* past the message's end and the next one's "<|start|>assistant" */
		for (const char *const *m = marks; *m && m - marks < 4; m++)
			if (end - p >= (long)strlen(*m) && !memcmp(p, *m, strlen(*m))) {
				p += strlen(*m);
				break;
			}
		if (end - p >= 9 && !memcmp(p, "<|start|>", 9))
			p += 9;
		if (end - p >= 9 && !memcmp(p, "assistant", 9))
			p += 9;
	}
}

/* Gemma 4's argument syntax ({key:value,...}, strings in <|"|>) to JSON; NULL if it is not. */
static json_t *gemma_value(const char **pp, const char *end, int depth);

static json_t *gemma_object(const char **pp, const char *end, int depth)
{
	json_t *o = json_object();
	const char *p = *pp + 1;

	while (o && p < end && *p != '}') {
		const char *k = p, *ke;
		json_t *v;

		if (end - p >= 5 && !memcmp(p, GQ, 5)) {
			k = p + 5;
			ke = find(k, end, GQ);
			if (!ke)
				break;
			p = ke + 5;
		} else {
			while (p < end && *p != ':')
				p++;
			ke = p;
		}
		if (p >= end || *p != ':' || ke == k)
			break;
		p++;
		v = gemma_value(&p, end, depth + 1);
		if (!v)
			break;
		{
			char *key = strndup(k, (size_t)(ke - k));

			if (!key || json_object_set_new(o, key, v)) {
				free(key);
				break;
			}
			free(key);
		}
		if (p < end && *p == ',')
			p++;
	}
	if (!o || p >= end || *p != '}') {
		json_decref(o);
		return NULL;
	}
	*pp = p + 1;
	return o;
}

static json_t *gemma_value(const char **pp, const char *end, int depth)
{
	const char *p = *pp, *e;
	json_t *v;

	if (depth > 32 || p >= end)
		return NULL;
	if (*p == '{')
		return gemma_object(pp, end, depth);
	if (end - p >= 5 && !memcmp(p, GQ, 5)) {
		e = find(p + 5, end, GQ);
		if (!e)
			return NULL;
		v = json_stringn(p + 5, (size_t)(e - p - 5));
		*pp = e + 5;
		return v;
	}
	if (*p == '[') {
		json_t *a = json_array();

		p++;
		while (a && p < end && *p != ']') {
			json_t *x = gemma_value(&p, end, depth + 1);

			if (!x || json_array_append_new(a, x)) {
				json_decref(a);
				return NULL;
			}
			if (p < end && *p == ',')
				p++;
		}
		if (!a || p >= end) {
			json_decref(a);
			return NULL;
		}
		*pp = p + 1;
		return a;
	}
	for (e = p; e < end && *e != ',' && *e != '}' && *e != ']'; e++)
		;
	if (e - p == 4 && !memcmp(p, "true", 4))
		v = json_true();
	else if (e - p == 5 && !memcmp(p, "false", 5))
		v = json_false();
	else if ((e - p == 4 && !memcmp(p, "None", 4)) || (e - p == 4 && !memcmp(p, "null", 4)))
		v = json_null();
	else
		v = json_loadb(p, (size_t)(e - p), JSON_DECODE_ANY, NULL);
	if (!json_is_number(v) && !json_is_boolean(v) && !json_is_null(v)) {
		json_decref(v);
		return NULL;
	}
	*pp = e;
	return v;
}

/* Gemma 4: <|channel>thought ... <channel|> first, then text and <|tool_call>call:N{...}<tool_call|>. */
static void parse_gemma4(struct parse *ps, bool tools, const char *s, const char *end,
			 bool final)
{
	static const char *const marks[] = { "<|channel>", "<|tool_call>", "<|tool_response>",
					     NULL };
	const char *p = s, *q;

	if (end - p >= 10 && !memcmp(p, "<|channel>", 10)) {
		const char *close = find(p, end, "<channel|>"), *rs = p + 10, *re;
		static const char *const cl[] = { "<channel|>", NULL };

		if (end - rs >= 8 && !memcmp(rs, "thought\n", 8))
			rs += 8;
		else if (!close && !final && end - rs < 8)
			return;
		re = close ? close : end;
		if (!close && !final)
			re -= partial_tail(rs, (size_t)(re - rs), cl);
		while (re > rs && re[-1] == '\n')
			re--;
		if (re > rs)
			strbuf_addn(&ps->reasoning, rs, (size_t)(re - rs));
		if (!close)
			return;
		p = close + 10;
	} else if (!final && end - p < 10 && !memcmp(p, "<|channel>", (size_t)(end - p))) {
		return;
	}
	q = tools ? find(p, end, "<|tool_call>") : NULL;
	if (!q) {
		const char *e = end, *tr = find(p, end, "<|tool_response>");
		size_t hold;

		if (tr)
			e = tr;
		hold = final || tr ? 0 : tools ? hold_back(p, (size_t)(e - p), marks) :
		       partial_tail(p, (size_t)(e - p), marks);
		strbuf_addn(&ps->content, p, (size_t)(e - p) - hold);
		return;
	}
	strbuf_addn(&ps->content, p, (size_t)(q - p));
	while (q) {
		const char *n = q + 12, *close = find(n, end, "<tool_call|>"), *brace, *ce;
		json_t *args;

		if (!close && !final)
			return;
		ce = close ? close : end;
		if ((size_t)(ce - n) < 5 || memcmp(n, "call:", 5))
			break;
		n += 5;
		brace = memchr(n, '{', (size_t)(ce - n));
		if (!brace || brace == n)
			break;
		{
			const char *ap = brace;

			args = gemma_object(&ap, ce, 0);
			if (!args || ap != ce) {
				json_decref(args);
				break;
			}
		}
		{
			int ret = push_call(ps, n, (size_t)(brace - n), args);

			json_decref(args);
			ps->oom |= ret < 0;
			if (ret)
				break;
		}
		if (!close)
			return;
		q = find(close + 12, end, "<|tool_call>");
	}
	if (q && final)
		strbuf_addn(&ps->content, q, (size_t)(end - q));
}

int cf_parse(enum cf_format f, bool tools, const char *text, size_t len, bool final,
	     struct cf_reply *r)
{
	struct parse ps = { .r = r };
	const char *end = text + len;

	memset(r, 0, sizeof(*r));
	switch (f) {
	case CF_CHATML: parse_chatml(&ps, tools, text, end, final); break;
	case CF_LLAMA3:
	case CF_LLAMA4: parse_llama(&ps, tools, text, end, final); break;
	case CF_MISTRAL: parse_mistral(&ps, tools, text, end, final); break;
	case CF_HARMONY: parse_harmony(&ps, tools, text, end, final); break;
	case CF_GEMMA4: parse_gemma4(&ps, tools, text, end, final); break;
	default: strbuf_addn(&ps.content, text, len); break;
	}
	strbuf_addn(&ps.reasoning, "", 0);
	strbuf_addn(&ps.content, "", 0);
	r->reasoning = ps.reasoning.s;
	r->reasoning_len = ps.reasoning.n;
	r->content = ps.content.s;
	r->content_len = ps.content.n;
	if (ps.oom || ps.reasoning.oom || ps.content.oom) {
		cf_reply_free(r);
		return -ENOMEM;
	}
	return 0;
}

void cf_reply_free(struct cf_reply *r)
{
	free(r->reasoning);
	free(r->content);
	for (size_t i = 0; i < r->n_calls; i++) {
		free(r->calls[i].name);
		free(r->calls[i].arguments);
	}
	free(r->calls);
	memset(r, 0, sizeof(*r));
}
