/* SPDX-License-Identifier: MIT */
/*
 * moe-server's tool calls and thinking per chat format (tools/moe-server/
 * chatfmt.c), no model needed: one conversation with a tool, a call and its
 * result rendered in each format and compared with what the reference
 * template (shared/reference/templates) gives; the thinking switches; the
 * forced start of a required call; and model-like replies parsed into
 * reasoning, content and calls, cut at every byte to check that partial
 * parses (streaming) never take back what they gave.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chatfmt.h"
#include "moe/moe.h"
#include "testutil.h"

static const char tools_json[] =
	"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
	"\"description\":\"Current weather\",\"parameters\":{\"type\":\"object\","
	"\"properties\":{\"city\":{\"type\":\"string\",\"description\":\"City name\"}},"
	"\"required\":[\"city\"]}}}]";

/* system, user, the assistant's call, the tool's result: the reply comes next */
static const char convo[] =
	"\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
	"{\"role\":\"user\",\"content\":\"Weather in Paris?\"},"
	"{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"abcDEF123\","
	"\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
	"\"arguments\":\"{\\\"city\\\": \\\"Paris\\\"}\"}}]},"
	"{\"role\":\"tool\",\"tool_call_id\":\"abcDEF123\",\"content\":\"{\\\"temp\\\": 21}\"}]";

static void parse_req(const char *body, struct api_request *r)
{
	struct api_limits lim = { .max_tokens = 100, .max_messages = 16 };
	struct api_error e;

	ck_assert_msg(api_parse_request(API_CHAT, body, strlen(body), &lim, r, &e) == 0,
		      "%s: %s", body, e.message);
}

/* Render @body in @f; the prompt, to free(). */
static char *render(enum cf_format f, const char *body, char **prefix)
{
	struct cf_render_opts o = { .date = "2026-01-01" };
	struct api_request r;
	struct api_error e;
	char *out, *pre;
	int n;

	parse_req(body, &r);
	n = cf_render(f, &o, &r, &out, &pre, &e);
	ck_assert_msg(n >= 0, "%s: %s", cf_format_name(f), e.message);
	ck_assert_int_eq((int)strlen(out), n);
	api_request_free(&r);
	if (prefix)
		*prefix = pre;
	else
		free(pre);
	return out;
}

static void golden(enum cf_format f, const char *want)
{
	char body[4096], *got;

	snprintf(body, sizeof(body), "{%s,%s}", convo, tools_json);
	got = render(f, body, NULL);
	ck_assert_msg(!strcmp(got, want), "%s:\n--- got\n%s\n--- want\n%s", cf_format_name(f), got,
		      want);
	free(got);
}

START_TEST(render_chatml)
{
	golden(CF_CHATML,
	       "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to "
	       "assist with the user query.\n\nYou are provided with function signatures within "
	       "<tools></tools> XML tags:\n<tools>\n{\"type\": \"function\", \"function\": "
	       "{\"name\": \"get_weather\", \"description\": \"Current weather\", \"parameters\": "
	       "{\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", "
	       "\"description\": \"City name\"}}, \"required\": [\"city\"]}}}\n</tools>\n\nFor each "
	       "function call, return a json object with function name and arguments within "
	       "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
	       "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
	       "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
	       "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
	       "{\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n"
	       "<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n"
	       "<|im_start|>assistant\n");
}
END_TEST

START_TEST(render_llama3)
{
	golden(CF_LLAMA3,
	       "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
	       "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief."
	       "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nGiven the following "
	       "functions, please respond with a JSON for a function call with its proper "
	       "arguments that best answers the given prompt.\n\nRespond in the format {\"name\": "
	       "function name, \"parameters\": dictionary of argument name and its value}.Do not "
	       "use variables.\n\n{\n    \"type\": \"function\",\n    \"function\": {\n"
	       "        \"name\": \"get_weather\",\n        \"description\": \"Current weather\",\n"
	       "        \"parameters\": {\n            \"type\": \"object\",\n"
	       "            \"properties\": {\n                \"city\": {\n"
	       "                    \"type\": \"string\",\n"
	       "                    \"description\": \"City name\"\n                }\n"
	       "            },\n            \"required\": [\n                \"city\"\n"
	       "            ]\n        }\n    }\n}\n\nWeather in Paris?<|eot_id|>"
	       "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", "
	       "\"parameters\": {\"city\": \"Paris\"}}<|eot_id|>"
	       "<|start_header_id|>ipython<|end_header_id|>\n\n\"{\\\"temp\\\": 21}\"<|eot_id|>"
	       "<|start_header_id|>assistant<|end_header_id|>\n\n");
}
END_TEST

START_TEST(render_mistral)
{
	/* Nemo's template gives the system message only to a user message that is last */
	golden(CF_MISTRAL,
	       "<s>[AVAILABLE_TOOLS][{\"type\": \"function\", \"function\": {\"name\": "
	       "\"get_weather\", \"description\": \"Current weather\", \"parameters\": {\"type\": "
	       "\"object\", \"properties\": {\"city\": {\"type\": \"string\", \"description\": "
	       "\"City name\"}}, \"required\": [\"city\"]}}}][/AVAILABLE_TOOLS][INST]Weather in "
	       "Paris?[/INST][TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": "
	       "\"Paris\"}, \"id\": \"abcDEF123\"}]</s>[TOOL_RESULTS]{\"content\": {\"temp\": 21}, "
	       "\"call_id\": \"abcDEF123\"}[/TOOL_RESULTS]");
}
END_TEST

START_TEST(render_harmony)
{
	golden(CF_HARMONY,
	       "<|start|>system<|message|>You are ChatGPT, a large language model trained by "
	       "OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: 2026-01-01\n\nReasoning: "
	       "medium\n\n# Valid channels: analysis, commentary, final. Channel must be included "
	       "for every message.\nCalls to these tools must go to the commentary channel: "
	       "'functions'.<|end|><|start|>developer<|message|># Instructions\n\nBe brief.\n\n"
	       "# Tools\n\n## functions\n\nnamespace functions {\n\n// Current weather\ntype "
	       "get_weather = (_: {\n// City name\ncity: string,\n}) => any;\n\n} // namespace "
	       "functions<|end|><|start|>user<|message|>Weather in Paris?<|end|><|start|>assistant "
	       "to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": "
	       "\"Paris\"}<|call|><|start|>functions.get_weather to=assistant<|channel|>commentary"
	       "<|message|>\"{\\\"temp\\\": 21}\"<|end|><|start|>assistant");
}
END_TEST

START_TEST(render_gemma4)
{
	/* the tool's result stays in the model's turn, which the reply continues */
	golden(CF_GEMMA4,
	       "<bos><|turn>system\nBe brief.<|tool>declaration:get_weather{description:<|\"|>"
	       "Current weather<|\"|>,parameters:{properties:{city:{description:<|\"|>City name"
	       "<|\"|>,type:<|\"|>STRING<|\"|>}},required:[<|\"|>city<|\"|>],type:<|\"|>OBJECT"
	       "<|\"|>}}<tool|><turn|>\n<|turn>user\nWeather in Paris?<turn|>\n<|turn>model\n"
	       "<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>}<tool_call|><|tool_response>"
	       "response:get_weather{value:<|\"|>{\"temp\": 21}<|\"|>}<tool_response|>");
}
END_TEST

static void ends_with(const char *s, const char *tail)
{
	size_t n = strlen(s), t = strlen(tail);

	ck_assert_msg(n >= t && !strcmp(s + n - t, tail), "'%s' does not end in '%s'", s, tail);
}

START_TEST(thinking_switches)
{
	const char *hi = "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]";
	char body[512], *p;

	/* Qwen3: enable_thinking false writes the empty think block after the prompt */
	snprintf(body, sizeof(body), "{%s,\"chat_template_kwargs\":{\"enable_thinking\":false}}",
		 hi);
	p = render(CF_CHATML, body, NULL);
	ck_assert_str_eq(p, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
			    "<think>\n\n</think>\n\n");
	free(p);
	snprintf(body, sizeof(body), "{%s,\"chat_template_kwargs\":{\"enable_thinking\":true}}",
		 hi);
	p = render(CF_CHATML, body, NULL);
	ck_assert_str_eq(p, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
	free(p);
	/* harmony: the reasoning effort, from either field */
	snprintf(body, sizeof(body), "{%s,\"reasoning_effort\":\"high\"}", hi);
	p = render(CF_HARMONY, body, NULL);
	ck_assert_ptr_nonnull(strstr(p, "\n\nReasoning: high\n\n"));
	ends_with(p, "<|start|>user<|message|>Hi<|end|><|start|>assistant");
	free(p);
	snprintf(body, sizeof(body), "{%s,\"chat_template_kwargs\":{\"reasoning_effort\":\"low\"}}",
		 hi);
	p = render(CF_HARMONY, body, NULL);
	ck_assert_ptr_nonnull(strstr(p, "\n\nReasoning: low\n\n"));
	free(p);
	/* Gemma 4: thinking on opens the system turn with <|think|>; off shows an empty thought */
	snprintf(body, sizeof(body), "{%s,\"chat_template_kwargs\":{\"enable_thinking\":true}}",
		 hi);
	p = render(CF_GEMMA4, body, NULL);
	ck_assert_str_eq(p, "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nHi<turn|>\n"
			    "<|turn>model\n");
	free(p);
	snprintf(body, sizeof(body), "{%s,\"chat_template_kwargs\":{\"enable_thinking\":false}}",
		 hi);
	p = render(CF_GEMMA4, body, NULL);
	ck_assert_str_eq(p, "<bos><|turn>user\nHi<turn|>\n<|turn>model\n<|channel>thought\n"
			    "<channel|>");
	free(p);
}
END_TEST

/* "required" and a named function: the prompt opens the call, the parser sees it too. */
START_TEST(forced_calls)
{
	const char *hi = "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]";
	static const struct { enum cf_format f; const char *named; } want[] = {
		{ CF_CHATML, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": " },
		{ CF_LLAMA3, "{\"name\": \"get_weather\", \"parameters\": " },
		{ CF_MISTRAL, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": " },
		{ CF_HARMONY, " to=functions.get_weather<|channel|>commentary json<|message|>" },
		{ CF_GEMMA4, "<|tool_call>call:get_weather" },
	};
	char body[1024], *p, *pre;

	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		snprintf(body, sizeof(body), "{%s,%s,\"tool_choice\":{\"type\":\"function\","
			 "\"function\":{\"name\":\"get_weather\"}}}", hi, tools_json);
		p = render(want[i].f, body, &pre);
		ck_assert_str_eq(pre, want[i].named);
		ends_with(p, want[i].named);
		free(p);
		free(pre);
		snprintf(body, sizeof(body), "{%s,%s,\"tool_choice\":\"none\"}", hi, tools_json);
		p = render(want[i].f, body, &pre);
		ck_assert_msg(!strstr(p, "get_weather"), "tool_choice none still shows the tools: %s",
			      p);
		ck_assert_str_eq(pre, "");
		free(p);
		free(pre);
	}
	/* "required" with one function is that function's call */
	snprintf(body, sizeof(body), "{%s,%s,\"tool_choice\":\"required\"}", hi, tools_json);
	p = render(CF_CHATML, body, &pre);
	ck_assert_str_eq(pre, want[0].named);
	free(p);
	free(pre);
	/* with two, the name is left to the model */
	snprintf(body, sizeof(body), "{%s,\"tools\":[{\"type\":\"function\",\"function\":"
		 "{\"name\":\"a\"}},{\"type\":\"function\",\"function\":{\"name\":\"b\"}}],"
		 "\"tool_choice\":\"required\"}", hi);
	p = render(CF_CHATML, body, &pre);
	ck_assert_str_eq(pre, "<tool_call>\n{\"name\": \"");
	free(p);
	free(pre);
}
END_TEST

START_TEST(render_errors)
{
	struct cf_render_opts o = { 0 };
	struct api_request r;
	struct api_error e;
	char body[2048], *out, *pre;

	/* Mistral's ids are 9 letters and digits */
	parse_req("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\","
		  "\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":"
		  "\"f\",\"arguments\":\"{}\"}}]}]}", &r);
	ck_assert_int_eq(cf_render(CF_MISTRAL, &o, &r, &out, &pre, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.message, "9 letters"));
	/* Llama 3 holds one call per message */
	api_request_free(&r);
	parse_req("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"assistant\","
		  "\"tool_calls\":[{\"id\":\"1\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}},"
		  "{\"id\":\"2\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}]}", &r);
	ck_assert_int_eq(cf_render(CF_LLAMA3, &o, &r, &out, &pre, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.message, "one per assistant message"));
	/* a harmony tool result needs the call before it */
	api_request_free(&r);
	parse_req("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"tool\","
		  "\"tool_call_id\":\"x\",\"content\":\"1\"}]}", &r);
	ck_assert_int_eq(cf_render(CF_HARMONY, &o, &r, &out, &pre, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.message, "without an assistant tool call"));
	/* a format with no tool calls says which have them */
	ck_assert_int_eq(cf_render(CF_NONE, &o, &r, &out, &pre, &e), -EINVAL);
	ck_assert_ptr_nonnull(strstr(e.message, "harmony"));
	api_request_free(&r);
	/* the request parser's side: shapes of tools, tool_choice and messages */
	{
		static const char *const bad[][2] = {
			{ "\"tools\":{}", "tools" },
			{ "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}]",
			  "tools[0].function" },
			{ "\"tools\":[{\"type\":\"code\",\"function\":{\"name\":\"a\"}}]", "tools[0]" },
			{ "\"tool_choice\":\"sometimes\"", "tool_choice" },
			{ "\"tool_choice\":\"required\"", "tool_choice" },
			{ "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\"}}],"
			  "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"b\"}}",
			  "tool_choice" },
			{ "\"reasoning_effort\":\"extreme\"", "reasoning_effort" },
			{ "\"chat_template_kwargs\":{\"enable_thinking\":1}",
			  "chat_template_kwargs.enable_thinking" },
			{ "\"chat_template_kwargs\":{\"frob\":1}", "chat_template_kwargs" },
		};
		struct api_limits lim = { .max_tokens = 100, .max_messages = 16 };

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":"
				 "\"a\"}],%s}", bad[i][0]);
			ck_assert_msg(api_parse_request(API_CHAT, body, strlen(body), &lim, &r,
							&e) == -EINVAL, "accepted %s", body);
			ck_assert_msg(!strcmp(e.param, bad[i][1]), "%s: param '%s', want '%s' (%s)",
				      body, e.param, bad[i][1], e.message);
		}
		snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"tool\",\"content\":\"a\"}]}");
		ck_assert_int_eq(api_parse_request(API_CHAT, body, strlen(body), &lim, &r, &e),
				 -EINVAL);
		ck_assert_str_eq(e.param, "messages[0].tool_call_id");
		snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":"
			 "[{\"id\":\"1\",\"function\":{\"name\":\"f\",\"arguments\":\"[1]\"}}]}]}");
		ck_assert_int_eq(api_parse_request(API_CHAT, body, strlen(body), &lim, &r, &e),
				 -EINVAL);
		ck_assert_ptr_nonnull(strstr(e.message, "JSON object"));
	}
}
END_TEST

struct reply_case {
	enum cf_format f;
	const char *text, *reasoning, *content;
	size_t n_calls;
	const char *name, *args;        /* the first call's */
};

static const struct reply_case replies[] = {
	{ CF_CHATML, "<think>\nThe user wants weather.\n</think>\n\n<tool_call>\n{\"name\": "
	  "\"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
	  "The user wants weather.", "", 1, "get_weather", "{\"city\":\"Paris\"}" },
	{ CF_CHATML, "Checking both.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
	  "{\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", "
	  "\"arguments\": {\"city\": \"Rome\"}}\n</tool_call>",
	  "", "Checking both.", 2, "get_weather", "{\"city\":\"Paris\"}" },
	{ CF_CHATML, "<think>\n\n</think>\n\nIt is sunny.", "", "It is sunny.", 0, NULL, NULL },
	{ CF_CHATML, "<tool_call>\nnot json\n</tool_call>", "", "<tool_call>\nnot json\n"
	  "</tool_call>", 0, NULL, NULL },
	{ CF_LLAMA3, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}", "", "",
	  1, "get_weather", "{\"city\":\"Paris\"}" },
	{ CF_LLAMA3, "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {}}", "", "", 1,
	  "get_weather", "{}" },
	{ CF_LLAMA4, "{\"temp\": 21} is what I read.", "", "{\"temp\": 21} is what I read.", 0,
	  NULL, NULL },
	{ CF_MISTRAL, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": "
	  "\"Paris\"}, \"id\": \"abcDEF123\"}]", "", "", 1, "get_weather", "{\"city\":\"Paris\"}" },
	{ CF_MISTRAL, "Let me look.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}", "",
	  "Let me look.", 1, "get_weather", "{\"city\":\"Paris\"}" },
	{ CF_HARMONY, "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant"
	  "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
	  "{\"city\": \"Paris\"}", "Need the weather.", "", 1, "get_weather",
	  "{\"city\":\"Paris\"}" },
	{ CF_HARMONY, " to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": "
	  "\"Rome\"}", "", "", 1, "get_weather", "{\"city\":\"Rome\"}" },
	{ CF_HARMONY, "<|channel|>analysis<|message|>Simple.<|end|><|start|>assistant<|channel|>"
	  "final<|message|>Hello there.", "Simple.", "Hello there.", 0, NULL, NULL },
	{ CF_GEMMA4, "<|channel>thought\nThe weather tool.<channel|><|tool_call>call:get_weather"
	  "{city:<|\"|>Paris<|\"|>,days:3,metric:true}<tool_call|>", "The weather tool.", "", 1,
	  "get_weather", "{\"city\":\"Paris\",\"days\":3,\"metric\":true}" },
	{ CF_GEMMA4, "It is 21 degrees.", "", "It is 21 degrees.", 0, NULL, NULL },
};

static bool starts(const char *s, size_t n, const char *p, size_t pn)
{
	return pn <= n && !memcmp(s, p, pn);
}

START_TEST(parse_replies)
{
	for (size_t i = 0; i < sizeof(replies) / sizeof(replies[0]); i++) {
		const struct reply_case *c = &replies[i];
		size_t len = strlen(c->text);
		struct cf_reply r;

		ck_assert_int_eq(cf_parse(c->f, true, c->text, len, true, &r), 0);
		ck_assert_msg(!strcmp(r.reasoning, c->reasoning) && !strcmp(r.content, c->content) &&
			      r.n_calls == c->n_calls, "%s case %zu: reasoning '%s' content '%s' "
			      "%zu calls", cf_format_name(c->f), i, r.reasoning, r.content,
			      r.n_calls);
		if (c->n_calls) {
			ck_assert_str_eq(r.calls[0].name, c->name);
			ck_assert_str_eq(r.calls[0].arguments, c->args);
		}
		/* streaming: each partial parse is a prefix of the final one */
		for (size_t cut = 0; cut <= len; cut++) {
			struct cf_reply p;

			ck_assert_int_eq(cf_parse(c->f, true, c->text, cut, false, &p), 0);
			ck_assert_msg(starts(r.reasoning, r.reasoning_len, p.reasoning,
					     p.reasoning_len) &&
				      starts(r.content, r.content_len, p.content, p.content_len) &&
				      p.n_calls <= r.n_calls, "%s case %zu cut at %zu: reasoning "
				      "'%s' content '%s' not a prefix of the final", cf_format_name(c->f),
				      i, cut, p.reasoning, p.content);
			for (size_t k = 0; k < p.n_calls; k++)
				ck_assert_str_eq(p.calls[k].arguments, r.calls[k].arguments);
			cf_reply_free(&p);
		}
		cf_reply_free(&r);
	}
}
END_TEST

/* Without tools, a call-looking reply is content; the reasoning is split all the same. */
START_TEST(parse_without_tools)
{
	struct cf_reply r;
	const char *t = "<think>\nhm\n</think>\n\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}"
			"\n</tool_call>";

	ck_assert_int_eq(cf_parse(CF_CHATML, false, t, strlen(t), true, &r), 0);
	ck_assert_str_eq(r.reasoning, "hm");
	ck_assert_int_eq(r.n_calls, 0);
	ck_assert_ptr_nonnull(strstr(r.content, "<tool_call>"));
	cf_reply_free(&r);
}
END_TEST

/* Whether @g takes all of @text and then can only end. */
static bool grammar_takes(const char *gbnf, const char *text)
{
	struct moe_grammar *g;
	bool ok;

	ck_assert_msg(moe_grammar_create(gbnf, strlen(gbnf), &g) == 0, "%s\n%s", moe_errmsg(),
		      gbnf);
	ok = moe_grammar_accept(g, text, strlen(text)) == 0 && moe_grammar_is_complete(g) &&
	     !moe_grammar_can_continue(g);
	moe_grammar_destroy(g);
	return ok;
}

/*
 * The grammar of a forced call in every format: a well-formed call of the
 * named (or of any) function is taken and parses back into that call;
 * arguments outside the parameters schema, another function, text instead
 * of a call, are refused.
 */
START_TEST(forced_call_grammar)
{
	static const char two_tools[] =
		"\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
		"\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},"
		"\"days\":{\"type\":\"integer\"}},\"required\":[\"city\"]}}},{\"type\":\"function\","
		"\"function\":{\"name\":\"now\"}}]";
	static const struct { enum cf_format f; const char *sep, *end; } fmt[] = {
		{ CF_CHATML, "\", \"arguments\": ", "}\n</tool_call>" },
		{ CF_LLAMA3, "\", \"parameters\": ", "}" },
		{ CF_LLAMA4, "\", \"parameters\": ", "}" },
		{ CF_MISTRAL, "\", \"arguments\": ", "}]" },
		{ CF_HARMONY, "<|channel|>commentary json<|message|>", "" },
		{ CF_GEMMA4, "", "<tool_call|>" },
	};
	const char *hi = "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]";
	char body[2048], text[1024], all[2048];

	for (size_t i = 0; i < sizeof(fmt) / sizeof(fmt[0]); i++) {
		bool gemma = fmt[i].f == CF_GEMMA4;
		const char *good = gemma ? "{city:<|\"|>Rome<|\"|>,days:3}" :
				   "{\"city\": \"Rome\", \"days\": 3}";
		const char *bad[] = {
			gemma ? "{town:<|\"|>Rome<|\"|>}" : "{\"town\": \"Rome\"}",
			gemma ? "{city:3}" : "{\"city\": 3}",
			gemma ? "{days:3}" : "{\"days\": 3}",
			gemma ? "{city:<|\"|>Rome<|\"|>,days:3.5}" : "{\"city\": \"Rome\", \"days\": 3.5}",
		};
		struct cf_render_opts o = { .date = "2026-01-01" };
		struct api_request r;
		struct api_error e;
		struct cf_reply rep;
		char *gbnf, *out, *pre;

		for (int named = 0; named < 2; named++) {
			snprintf(body, sizeof(body), "{%s,%s,\"tool_choice\":%s}", hi, two_tools,
				 named ? "{\"type\":\"function\",\"function\":{\"name\":"
					 "\"get_weather\"}}" : "\"required\"");
			parse_req(body, &r);
			ck_assert_int_ge(cf_render(fmt[i].f, &o, &r, &out, &pre, &e), 0);
			ck_assert_int_eq(cf_call_grammar(fmt[i].f, &r, &gbnf, &e), 0);
			ck_assert_ptr_nonnull(gbnf);
			/* only harmony, choosing among several, has control markers after the name */
			if (fmt[i].f == CF_HARMONY && !named)
				ck_assert_str_eq(cf_call_marker(fmt[i].f, &r), fmt[i].sep);
			else
				ck_assert_ptr_null(cf_call_marker(fmt[i].f, &r));
			snprintf(text, sizeof(text), "%s%s%s%s", named ? "" : "get_weather",
				 named ? "" : fmt[i].sep, good, fmt[i].end);
			ck_assert_msg(grammar_takes(gbnf, text), "%s %s: refused %s\n%s",
				      cf_format_name(fmt[i].f), named ? "named" : "required", text,
				      gbnf);
			snprintf(all, sizeof(all), "%s%s", pre, text);
			ck_assert_int_eq(cf_parse(fmt[i].f, true, all, strlen(all), true, &rep), 0);
			ck_assert_msg(rep.n_calls == 1, "%s: %s", cf_format_name(fmt[i].f), all);
			ck_assert_str_eq(rep.calls[0].name, "get_weather");
			ck_assert_str_eq(rep.calls[0].arguments, "{\"city\":\"Rome\",\"days\":3}");
			cf_reply_free(&rep);
			for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
				snprintf(text, sizeof(text), "%s%s%s%s", named ? "" : "get_weather",
					 named ? "" : fmt[i].sep, bad[b], fmt[i].end);
				ck_assert_msg(!grammar_takes(gbnf, text), "%s: took %s",
					      cf_format_name(fmt[i].f), text);
			}
			/* the arguments' grammar alone, for a call whose name is known */
			{
				char *of;

				ck_assert_int_eq(cf_call_grammar_of(fmt[i].f, &r, "get_weather", &of,
								    &e), 0);
				snprintf(text, sizeof(text), "%s%s", good, fmt[i].end);
				ck_assert_msg(grammar_takes(of, text), "%s: %s", cf_format_name(fmt[i].f),
					      text);
				free(of);
				ck_assert_int_eq(cf_call_grammar_of(fmt[i].f, &r, "nope", &of, &e),
						 -EINVAL);
			}
			/* the other function (any object: it has no parameters) only when not named */
			snprintf(text, sizeof(text), "now%s%s%s", fmt[i].sep, gemma ? "{}" : "{}",
				 fmt[i].end);
			ck_assert(grammar_takes(gbnf, text) == !named);
			ck_assert(!grammar_takes(gbnf, "I will not call anything."));
			free(gbnf);
			free(out);
			free(pre);
			api_request_free(&r);
		}
	}
	/* a parameters schema the converter cannot enforce is a 400 that names it */
	{
		struct api_request r;
		struct api_error e;
		char *gbnf;

		parse_req("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[{\"type\":"
			  "\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\","
			  "\"properties\":{\"x\":{\"type\":\"string\",\"pattern\":\"^a\"}}}}}],"
			  "\"tool_choice\":\"required\"}", &r);
		ck_assert_int_eq(cf_call_grammar(CF_CHATML, &r, &gbnf, &e), -EINVAL);
		ck_assert_int_eq(e.status, 400);
		ck_assert_str_eq(e.param, "tools[0].function.parameters");
		ck_assert_msg(strstr(e.message, "pattern") && strstr(e.message, "/properties/x"),
			      "%s", e.message);
		/* arguments are an object */
		api_request_free(&r);
		parse_req("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[{\"type\":"
			  "\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":"
			  "\"string\"}}}],\"tool_choice\":\"required\"}", &r);
		ck_assert_int_eq(cf_call_grammar(CF_CHATML, &r, &gbnf, &e), -EINVAL);
		ck_assert_str_eq(e.param, "tools[0].function.parameters");
		ck_assert_ptr_nonnull(strstr(e.message, "must describe an object"));
		api_request_free(&r);
		parse_req("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[{\"type\":"
			  "\"function\",\"function\":{\"name\":\"f\",\"parameters\":{}}}],"
			  "\"tool_choice\":\"required\"}", &r);
		ck_assert_int_eq(cf_call_grammar(CF_CHATML, &r, &gbnf, &e), 0);
		ck_assert(grammar_takes(gbnf, "{\"x\": [1]}}\n</tool_call>"));
		ck_assert(!grammar_takes(gbnf, "3}\n</tool_call>"));
		free(gbnf);
		/* "auto" forces nothing: no grammar */
		api_request_free(&r);
		parse_req("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[{\"type\":"
			  "\"function\",\"function\":{\"name\":\"f\"}}]}", &r);
		ck_assert_int_eq(cf_call_grammar(CF_CHATML, &r, &gbnf, &e), 0);
		ck_assert_ptr_null(gbnf);
		api_request_free(&r);
	}
}
END_TEST

Suite *suite_toolcall(void)
{
	Suite *s = suite_create("toolcall");
	TCase *tc = tcase_create("toolcall");

	tcase_add_test(tc, render_chatml);
	tcase_add_test(tc, render_llama3);
	tcase_add_test(tc, render_mistral);
	tcase_add_test(tc, render_harmony);
	tcase_add_test(tc, render_gemma4);
	tcase_add_test(tc, thinking_switches);
	tcase_add_test(tc, forced_calls);
	tcase_add_test(tc, forced_call_grammar);
	tcase_add_test(tc, render_errors);
	tcase_add_test(tc, parse_replies);
	tcase_add_test(tc, parse_without_tools);
	suite_add_tcase(s, tc);
	return s;
}
