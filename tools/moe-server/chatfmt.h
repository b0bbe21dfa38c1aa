/* SPDX-License-Identifier: MIT */
/*
 * Tool calls and thinking in the chat formats that define them: a
 * conversation with tools, tool results and the assistant's earlier calls
 * rendered as each family's reference template does, and the model's reply
 * split back into reasoning, content and tool calls.  No model needed: the
 * unit tests and the fuzz target run it alone.  Conversations without any of
 * this go through libmoe's moe_chat_render().
 */
#ifndef MOE_SERVER_CHATFMT_H
#define MOE_SERVER_CHATFMT_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "api.h"

enum cf_format { CF_NONE, CF_CHATML, CF_LLAMA3, CF_LLAMA4, CF_HARMONY, CF_MISTRAL, CF_GEMMA4 };

/* From moe_chat_format()'s name; CF_NONE for a format without tool calls. */
enum cf_format cf_format_from_name(const char *name);
const char *cf_format_name(enum cf_format f);

struct cf_render_opts {
	const char *bos, *eos;  /* the tokens' text where the format writes them */
	const char *date;       /* harmony's "Current date", NULL: today */
};

/*
 * Render @req's messages (with its tools, tool_choice and thinking switch)
 * in @f, ending where the assistant's reply starts: *out malloc'ed, its
 * length returned; -EINVAL with @err (a 400) for what the format cannot
 * hold.  *prefix (malloc'ed, may be "") is what the prompt already wrote of
 * the reply (a forced tool call's start): it goes before the generated text
 * for cf_parse().
 */
int cf_render(enum cf_format f, const struct cf_render_opts *o, const struct api_request *req,
	      char **out, char **prefix, struct api_error *err);

/*
 * For tool_choice "required" or a named function, the GBNF (*gbnf,
 * malloc'ed) of the rest of the reply after cf_render's prefix: one call
 * (of that function, or of any in 'tools'), its arguments valid against the
 * function's parameters schema, up to the call's end.  *gbnf NULL when the
 * request forces no call.  -EINVAL with @err (a 400 naming the parameters
 * schema) for a schema outside the subset the grammar converter takes.
 */
int cf_call_grammar(enum cf_format f, const struct api_request *req, char **gbnf,
		    struct api_error *err);

/* The same for a call of function @name, whatever tool_choice says. */
int cf_call_grammar_of(enum cf_format f, const struct api_request *req, const char *name,
		       char **gbnf, struct api_error *err);
/*
 * Where a forced call leaves the name to the model and the format follows
 * the name with markers that are control tokens in the family's vocabulary
 * (harmony's "<|channel|>commentary json<|message|>"), those markers'
 * text: a caller that samples the name alone, then feeds these markers
 * itself and samples the arguments with cf_call_grammar_of(), lets the
 * model see its own tokens.  NULL where there is nothing of the kind.
 */
const char *cf_call_marker(enum cf_format f, const struct api_request *req);

/* Stop strings the format needs beyond the end-of-generation tokens, or NULL. */
const char *cf_stop(enum cf_format f, const struct api_request *req);

struct cf_call {
	char *name;
	char *arguments;        /* JSON text of an object */
};

struct cf_reply {
	char *reasoning, *content;
	size_t reasoning_len, content_len;
	struct cf_call *calls;
	size_t n_calls;
};

/*
 * Split @len bytes of the reply @text.  With @final false the text may
 * continue: what could yet turn out otherwise (the start of a marker, a tool
 * call not closed) is held back, so every partial parse's reasoning and
 * content are prefixes of the final one's and its calls are final.  @tools
 * says whether tool calls are looked for.  Returns 0 or -ENOMEM.
 */
int cf_parse(enum cf_format f, bool tools, const char *text, size_t len, bool final,
	     struct cf_reply *r);
void cf_reply_free(struct cf_reply *r);

/* Whether @req needs cf_render (tools, tool messages, a thinking switch). */
bool cf_needed(const struct api_request *req);

#endif
