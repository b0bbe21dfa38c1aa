/* SPDX-License-Identifier: MIT */
/*
 * The OpenAI request bodies moe-server accepts, checked field by field into a
 * plain request (no model needed: the fuzz target and the unit tests run it
 * alone), and the API's error shape.
 */
#ifndef MOE_SERVER_API_H
#define MOE_SERVER_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "moe/moe.h"

enum api_kind {
	API_COMPLETION,         /* POST /v1/completions */
	API_CHAT,               /* POST /v1/chat/completions */
};

struct api_limits {
	uint32_t max_tokens;    /* the most a request may ask for */
	uint32_t max_messages;
};

/* One tool call of an assistant message, as the API has it. */
struct api_call {
	char *id, *name;
	char *arguments;        /* JSON text of an object */
};

struct api_msg {
	const char *role;       /* "system", "user", "assistant" or "tool" (static) */
	char *content;
	char *reasoning;        /* assistant: reasoning_content, or NULL */
	char *tool_call_id;     /* tool: the call it answers */
	char *name;             /* tool: the function's name when the client gives it */
	struct api_call *calls; /* assistant: tool_calls */
	uint32_t n_calls;
};

enum api_tool_choice { API_TOOLS_AUTO, API_TOOLS_NONE, API_TOOLS_REQUIRED, API_TOOLS_NAMED };

#define API_MAX_STOP 4

struct api_request {
	enum api_kind kind;
	struct api_msg *msgs;   /* chat */
	uint32_t n_msgs;
	char *prompt;           /* completions given text */
	int32_t *prompt_ids;    /* completions given token ids */
	uint32_t n_prompt_ids;
	uint32_t max_tokens;    /* 0: as many as the context leaves (capped by the limit) */
	struct moe_sample_params sp;
	bool has_seed;
	char *stop[API_MAX_STOP];
	uint32_t n_stop;
	bool stream;
	json_t *tools;          /* chat: the "tools" array as given (checked), or NULL */
	enum api_tool_choice tool_choice;
	char *tool_name;        /* API_TOOLS_NAMED: the function */
	int thinking;           /* -1: the format's default, 0 off, 1 on (enable_thinking) */
	char *effort;           /* reasoning_effort: "low", "medium", "high", or NULL */
	struct moe_grammar *grammar;    /* response_format json_object / json_schema, or NULL */
};

struct api_error {
	int status;             /* HTTP status */
	const char *type;       /* "invalid_request_error", ... */
	const char *code;       /* NULL or a code string */
	char param[96];         /* "" or the field at fault */
	char message[512];
};

/*
 * Parse @len bytes of @body.  0 and a filled @req (free with
 * api_request_free), or -EINVAL with @err saying why (HTTP status, field).
 */
int api_parse_request(enum api_kind kind, const char *body, size_t len,
		      const struct api_limits *lim, struct api_request *req, struct api_error *err);
void api_request_free(struct api_request *req);
/* The "function" object of the tool named @name, or NULL. */
json_t *api_find_tool(const struct api_request *req, const char *name);

/* Fill @err; returns -EINVAL so callers can `return api_fail(...)`. */
int api_fail(struct api_error *err, int status, const char *type, const char *code,
	     const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* {"error":{"message","type","param","code"}} as a string to free(). */
char *api_error_body(const struct api_error *err);

#endif
