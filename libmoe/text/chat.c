/* SPDX-License-Identifier: MIT */
/*
 * Chat prompt formats.  Real models ship a Jinja template; rather than
 * interpret Jinja we recognise the family from the template's markers (or
 * the architecture when there is no template) and render the plain-text
 * subset every family shares: system, user and assistant turns, no tools.
 * The renderings follow the reference templates in shared/reference/templates
 * with their default variables.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "text/tokenizer.h"
#include "util/util.h"

static bool has(const char *tmpl, size_t len, const char *needle)
{
	return tmpl && memmem(tmpl, len, needle, strlen(needle));
}

/* DeepSeek's markers: fullwidth bars (U+FF5C) and U+2581 for spaces. */
#define DS_BAR "\xef\xbd\x9c"
#define DS_SPACE "\xe2\x96\x81"
#define DS_BOS "<" DS_BAR "begin" DS_SPACE "of" DS_SPACE "sentence" DS_BAR ">"
#define DS_EOS "<" DS_BAR "end" DS_SPACE "of" DS_SPACE "sentence" DS_BAR ">"
#define DS_USER "<" DS_BAR "User" DS_BAR ">"
#define DS_ASSISTANT "<" DS_BAR "Assistant" DS_BAR ">"

#define KIMI_SYSTEM "<|im_system|>system<|im_middle|>"

enum chat_format tok_chat_detect(const char *tmpl, size_t len, const char *arch)
{
	static const struct {
		const char *marker;
		enum chat_format fmt;
	} markers[] = {
		{ "<|turn>", CHAT_GEMMA4 },
		{ "<|start|>assistant", CHAT_HARMONY },
		{ "<|header_start|>", CHAT_LLAMA4 },
		{ "<|start_header_id|>", CHAT_LLAMA3 },
		{ "<|im_middle|>", CHAT_KIMI_K2 },
		{ "<|im_start|>", CHAT_CHATML },
		{ "[gMASK]<sop>", CHAT_GLM4 },
		{ DS_ASSISTANT, CHAT_DEEPSEEK3 },
		{ "'Assistant: ' + message['content'] + eos_token", CHAT_DEEPSEEK2 },
		{ "[INST]", CHAT_MISTRAL },
	};
	static const struct {
		const char *arch;
		enum chat_format fmt;
	} archs[] = {
		{ "gemma4", CHAT_GEMMA4 },   { "gpt-oss", CHAT_HARMONY }, { "llama4", CHAT_LLAMA4 },
		{ "qwen3moe", CHAT_CHATML }, { "qwen3", CHAT_CHATML },    { "qwen2moe", CHAT_CHATML },
		{ "qwen2", CHAT_CHATML },    { "glm4moe", CHAT_GLM4 },    { "glm4", CHAT_GLM4 },
		{ "deepseek2", CHAT_DEEPSEEK2 }, { "llama", CHAT_MISTRAL },
	};

	if (tmpl && !len)
		len = strlen(tmpl);
	for (size_t i = 0; i < MOE_ARRAY_SIZE(markers); i++)
		if (has(tmpl, len, markers[i].marker))
			return markers[i].fmt;
	for (size_t i = 0; arch && i < MOE_ARRAY_SIZE(archs); i++)
		if (!strcmp(arch, archs[i].arch))
			return archs[i].fmt;
	return CHAT_NONE;
}

/*
 * Kimi's templates write a default system turn when the conversation has
 * none; take its text from the template.  A newline after it survives when
 * the next tag is a plain "{% ...": lstrip_blocks takes the indent, the tag
 * does not strip to its left (K2-Instruct's "<|im_end|>\n  {% endif %}").
 */
static void kimi_system(struct moe_tokenizer *t, const char *tmpl, size_t len)
{
	static const char fallback[] = "You are Kimi, an AI assistant created by Moonshot AI.";
	const char *at = tmpl ? memmem(tmpl, len, KIMI_SYSTEM, strlen(KIMI_SYSTEM)) : NULL;
	const char *end = NULL, *p;
	size_t n;

	snprintf(t->chat_system, sizeof(t->chat_system), "%s", fallback);
	if (!at)
		return;
	at += strlen(KIMI_SYSTEM);
	end = memmem(at, len - (size_t)(at - tmpl), "<|im_end|>", 10);
	n = end ? (size_t)(end - at) : 0;
	if (!end || n >= sizeof(t->chat_system) || memchr(at, '{', n) || memchr(at, '}', n))
		return;
	memcpy(t->chat_system, at, n);
	t->chat_system[n] = 0;
	p = end + 10;
	if (p < tmpl + len && *p == '\n') {
		for (p++; p < tmpl + len && (*p == ' ' || *p == '\t'); p++)
			;
		t->chat_system_nl = tmpl + len - p >= 3 && !memcmp(p, "{%", 2) && p[2] != '-';
	}
}

void tok_chat_init(struct moe_tokenizer *t, const struct tok_spec *sp)
{
	const char *tmpl = sp->chat_template;
	size_t len = tmpl ? (sp->chat_template_len ? sp->chat_template_len : strlen(tmpl)) : 0;

	t->chat = tok_chat_detect(tmpl, len, sp->arch);
	/* Without a template the tokenizer tells apart the families of one architecture. */
	if (!tmpl && t->chat == CHAT_MISTRAL && t->pre == PRE_LLAMA3)
		t->chat = CHAT_LLAMA3;
	if (!tmpl && t->chat == CHAT_DEEPSEEK2 && t->pre == PRE_DEEPSEEK3)
		t->chat = CHAT_DEEPSEEK3;
	if (!tmpl && t->chat == CHAT_DEEPSEEK2 && t->pre == PRE_KIMI_K2)
		t->chat = CHAT_KIMI_K2;
	/* Mixtral's template spaces its markers, Mistral v3 (Nemo) does not. */
	t->chat_inst_space = t->chat == CHAT_MISTRAL &&
			     (!tmpl || has(tmpl, len, "'[INST] '") || has(tmpl, len, "\"[INST] \""));
	/* V3.1 and K2 Thinking show an empty think block; R1's reply opens one. */
	if (has(tmpl, len, "<think></think>"))
		t->chat_think = THINK_EMPTY;
	else if (t->chat == CHAT_DEEPSEEK3 && has(tmpl, len, "<think>\\n"))
		t->chat_think = THINK_OPEN;
	if (t->chat == CHAT_KIMI_K2)
		kimi_system(t, tmpl, len);
	t->chat_compact = t->chat == CHAT_GLM4 && has(tmpl, len, "<|user|>{{");
}

static const char *const format_names[] = {
	[CHAT_NONE] = "none",       [CHAT_CHATML] = "chatml",   [CHAT_LLAMA3] = "llama3",
	[CHAT_LLAMA4] = "llama4",   [CHAT_HARMONY] = "harmony", [CHAT_MISTRAL] = "mistral",
	[CHAT_GEMMA4] = "gemma4",   [CHAT_DEEPSEEK2] = "deepseek2",
	[CHAT_DEEPSEEK3] = "deepseek3", [CHAT_GLM4] = "glm4", [CHAT_KIMI_K2] = "kimi-k2",
};

MOE_API const char *moe_chat_format(const struct moe_tokenizer *t)
{
	return t ? format_names[t->chat] : "none";
}

struct sb {
	char *s;
	size_t n, cap;
	bool oom;
};

static void sb_addn(struct sb *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->n + n + 1 > b->cap) {
		size_t cap = MOE_MAX(b->cap * 2, b->n + n + 256);
		char *p = realloc(b->s, cap);

		if (!p) {
			b->oom = true;
			return;
		}
		b->s = p;
		b->cap = cap;
	}
	memcpy(b->s + b->n, s, n);
	b->n += n;
	b->s[b->n] = 0;
}

static void sb_add(struct sb *b, const char *s)
{
	sb_addn(b, s, strlen(s));
}

/* Jinja's |trim: whitespace off both ends. */
static void sb_add_trimmed(struct sb *b, const char *s)
{
	size_t n = strlen(s);

	while (n && strchr(" \t\r\n", s[n - 1]))
		n--;
	while (n && strchr(" \t\r\n", *s)) {
		s++;
		n--;
	}
	sb_addn(b, s, n);
}

static const char *tok_text(const struct moe_tokenizer *t, int32_t id, const char *fallback)
{
	static __thread char buf[64];
	const struct tok_entry *e;

	if (id < 0)
		return fallback;
	e = &t->tok[id];
	if (e->len >= sizeof(buf))
		return fallback;
	memcpy(buf, t->blob + e->off, e->len);
	buf[e->len] = 0;
	return buf;
}

static void render_chatml(struct sb *b, const struct moe_chat_msg *m, int n, bool gen)
{
	int last_user = -1;

	for (int i = 0; i < n; i++)
		if (!strcmp(m[i].role, "user"))
			last_user = i;
	for (int i = 0; i < n; i++) {
		sb_add(b, "<|im_start|>");
		sb_add(b, m[i].role);
		sb_add(b, "\n");
		/* Qwen3 shows the (empty) thinking of the final answer after the last question. */
		if (!strcmp(m[i].role, "assistant") && i > last_user && i == n - 1)
			sb_add(b, "<think>\n\n</think>\n\n");
		sb_add(b, m[i].content);
		sb_add(b, "<|im_end|>\n");
	}
	if (gen)
		sb_add(b, "<|im_start|>assistant\n");
}

static void render_llama(struct sb *b, const struct moe_tokenizer *t, const struct moe_chat_msg *m,
			 int n, bool gen, bool v4)
{
	const char *hs = v4 ? "<|header_start|>" : "<|start_header_id|>";
	const char *he = v4 ? "<|header_end|>\n\n" : "<|end_header_id|>\n\n";
	const char *eot = v4 ? "<|eot|>" : "<|eot_id|>";
	int first = 0;

	sb_add(b, tok_text(t, t->bos, "<|begin_of_text|>"));
	if (!v4) {
		/* Llama 3 always writes a system turn with its knowledge dates. */
		sb_add(b, "<|start_header_id|>system<|end_header_id|>\n\n");
		sb_add(b, "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n");
		if (n && !strcmp(m[0].role, "system")) {
			sb_add_trimmed(b, m[0].content);
			first = 1;
		}
		sb_add(b, "<|eot_id|>");
	}
	for (int i = first; i < n; i++) {
		sb_add(b, hs);
		sb_add(b, m[i].role);
		sb_add(b, he);
		/* Llama 3 trims every message, Llama 4 only the system message. */
		if (!v4 || !strcmp(m[i].role, "system"))
			sb_add_trimmed(b, m[i].content);
		else
			sb_add(b, m[i].content);
		sb_add(b, eot);
	}
	if (gen) {
		sb_add(b, hs);
		sb_add(b, "assistant");
		sb_add(b, he);
	}
}

static void render_harmony(struct sb *b, const struct moe_chat_msg *m, int n, bool gen)
{
	char date[32];
	time_t now = time(NULL);
	struct tm tm;
	int first = 0;

	gmtime_r(&now, &tm);
	strftime(date, sizeof(date), "%Y-%m-%d", &tm);
	sb_add(b, "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
		  "Knowledge cutoff: 2024-06\nCurrent date: ");
	sb_add(b, date);
	sb_add(b, "\n\nReasoning: medium\n\n"
		  "# Valid channels: analysis, commentary, final. "
		  "Channel must be included for every message.<|end|>");
	if (n && !strcmp(m[0].role, "system")) {
		sb_add(b, "<|start|>developer<|message|># Instructions\n\n");
		sb_add(b, m[0].content);
		sb_add(b, "\n\n<|end|>");
		first = 1;
	}
	for (int i = first; i < n; i++) {
		if (!strcmp(m[i].role, "assistant")) {
			/* A finished conversation's last assistant turn ends with <|return|>. */
			sb_add(b, "<|start|>assistant<|channel|>final<|message|>");
			sb_add(b, m[i].content);
			sb_add(b, i == n - 1 && !gen ? "<|return|>" : "<|end|>");
		} else {
			sb_add(b, "<|start|>");
			sb_add(b, m[i].role);
			sb_add(b, "<|message|>");
			sb_add(b, m[i].content);
			sb_add(b, "<|end|>");
		}
	}
	if (gen)
		sb_add(b, "<|start|>assistant");
}

static void render_mistral(struct sb *b, const struct moe_tokenizer *t,
			   const struct moe_chat_msg *m, int n, bool spaced)
{
	const char *sys = NULL;
	int first = 0, last_user = -1;

	if (n && !strcmp(m[0].role, "system")) {
		sys = m[0].content;
		first = 1;
	}
	for (int i = first; i < n; i++)
		if (!strcmp(m[i].role, "user"))
			last_user = i;
	sb_add(b, tok_text(t, t->bos, "<s>"));
	for (int i = first; i < n; i++) {
		if (!strcmp(m[i].role, "user")) {
			sb_add(b, spaced ? "[INST] " : "[INST]");
			/* The system message rides with the last user message. */
			if (sys && i == last_user) {
				sb_add(b, sys);
				sb_add(b, "\n\n");
			}
			sb_add(b, m[i].content);
			sb_add(b, spaced ? " [/INST]" : "[/INST]");
		} else {
			sb_add(b, m[i].content);
			sb_add(b, tok_text(t, t->eos, "</s>"));
		}
	}
}

static void render_gemma4(struct sb *b, const struct moe_tokenizer *t,
			  const struct moe_chat_msg *m, int n, bool gen)
{
	int first = 0;

	sb_add(b, tok_text(t, t->bos, "<bos>"));
	if (n && !strcmp(m[0].role, "system")) {
		sb_add(b, "<|turn>system\n");
		sb_add_trimmed(b, m[0].content);
		sb_add(b, "<turn|>\n");
		first = 1;
	}
	for (int i = first; i < n; i++) {
		bool model = !strcmp(m[i].role, "assistant");

		/* Consecutive assistant messages continue one model turn. */
		if (!(model && i > first && !strcmp(m[i - 1].role, "assistant"))) {
			sb_add(b, "<|turn>");
			sb_add(b, model ? "model" : m[i].role);
			sb_add(b, "\n");
		}
		if (model)
			sb_add(b, m[i].content);
		else
			sb_add_trimmed(b, m[i].content);
		sb_add(b, "<turn|>\n");
	}
	if (gen)
		sb_add(b, "<|turn>model\n<|channel>thought\n<channel|>");
}

/* DeepSeek-V2 and Coder-V2. */
static void render_deepseek2(struct sb *b, const struct moe_tokenizer *t,
			     const struct moe_chat_msg *m, int n, bool gen)
{
	sb_add(b, tok_text(t, t->bos, DS_BOS));
	for (int i = 0; i < n; i++) {
		if (!strcmp(m[i].role, "system")) {
			sb_add(b, m[i].content);
			sb_add(b, "\n\n");
		} else if (!strcmp(m[i].role, "user")) {
			sb_add(b, "User: ");
			sb_add(b, m[i].content);
			sb_add(b, "\n\n");
		} else {
			sb_add(b, "Assistant: ");
			sb_add(b, m[i].content);
			sb_add(b, tok_text(t, t->eos, DS_EOS));
		}
	}
	if (gen)
		sb_add(b, "Assistant:");
}

/* Text after the first (V3.1) or the last (R1) "</think>": answers shown without reasoning. */
static const char *after_think(const char *s, bool last)
{
	const char *p = strstr(s, "</think>");

	while (p && last && strstr(p + 8, "</think>"))
		p = strstr(p + 8, "</think>");
	return p ? p + 8 : s;
}

/* DeepSeek-V3 (and R1, V3.1): the system text right after BOS, then the turns. */
static void render_deepseek3(struct sb *b, const struct moe_tokenizer *t,
			     const struct moe_chat_msg *m, int n, bool gen)
{
	bool after_user = false;
	int first = 0;

	sb_add(b, tok_text(t, t->bos, DS_BOS));
	if (n && !strcmp(m[0].role, "system")) {
		sb_add(b, m[0].content);
		first = 1;
	}
	for (int i = first; i < n; i++) {
		if (!strcmp(m[i].role, "user")) {
			sb_add(b, DS_USER);
			sb_add(b, m[i].content);
			after_user = true;
			continue;
		}
		/* V3.1 opens the assistant turn only after a user turn. */
		if (after_user || t->chat_think != THINK_EMPTY)
			sb_add(b, DS_ASSISTANT);
		if (after_user && t->chat_think == THINK_EMPTY)
			sb_add(b, "<think></think>");
		if (t->chat_think == THINK_NONE)
			sb_add(b, m[i].content);
		else
			sb_add(b, after_think(m[i].content, t->chat_think == THINK_OPEN));
		sb_add(b, DS_EOS);
		after_user = false;
	}
	if (gen && (after_user || t->chat_think != THINK_EMPTY)) {
		sb_add(b, DS_ASSISTANT);
		if (t->chat_think == THINK_EMPTY)
			sb_add(b, "<think></think>");
		else if (t->chat_think == THINK_OPEN)
			sb_add(b, "<think>\n");
	}
}

static size_t trimmed_len(const char *s, const char **start)
{
	size_t n;

	while (*s && strchr(" \t\r\n", *s))
		s++;
	n = strlen(s);
	while (n && strchr(" \t\r\n", s[n - 1]))
		n--;
	*start = s;
	return n;
}

/*
 * GLM-4.5 and 4.6; GLM-4.7 is compact: no newline after the role markers, a
 * bare "</think>" for an answer without reasoning, and the reply opens a
 * think block.  An answer's reasoning ("<think>...</think>" at its start) is
 * shown only after the last user turn.
 */
static void render_glm4(struct sb *b, const struct moe_tokenizer *t,
			const struct moe_chat_msg *m, int n, bool gen)
{
	const char *nl = t->chat_compact ? "" : "\n";
	int last_user = -1;

	for (int i = 0; i < n; i++)
		if (!strcmp(m[i].role, "user"))
			last_user = i;
	sb_add(b, "[gMASK]<sop>");
	for (int i = 0; i < n; i++) {
		const char *c = m[i].content, *end = strstr(c, "</think>"), *r = NULL, *a;
		size_t rn = 0, an;

		if (strcmp(m[i].role, "assistant")) {
			sb_add(b, !strcmp(m[i].role, "user") ? "<|user|>" : "<|system|>");
			sb_add(b, nl);
			sb_add(b, c);
			continue;
		}
		sb_add(b, "<|assistant|>");
		if (end) {
			const char *open = NULL;

			/* the text after the last "<think>" before the first "</think>" */
			for (const char *p = c; (p = strstr(p, "<think>")) && p < end; p += 7)
				open = p + 7;
			r = open ? open : c;
			rn = (size_t)(end - r);
			while (end && strstr(end + 8, "</think>"))
				end = strstr(end + 8, "</think>");
			c = end + 8;
		}
		sb_add(b, nl);
		if (i > last_user && rn) {
			char *tmp = strndup(r, rn);
			const char *rs;
			size_t rl;

			if (!tmp) {
				b->oom = true;
				return;
			}
			rl = trimmed_len(tmp, &rs);
			sb_add(b, "<think>");
			sb_addn(b, rs, rl);
			sb_add(b, "</think>");
			free(tmp);
		} else {
			sb_add(b, t->chat_compact ? "</think>" : "<think></think>");
		}
		an = trimmed_len(c, &a);
		if (an) {
			sb_add(b, nl);
			sb_addn(b, a, an);
		}
	}
	if (gen)
		sb_add(b, t->chat_compact ? "<|assistant|><think>" : "<|assistant|>");
}

/* Kimi K2: role markers with the role's name, a default system turn. */
static void render_kimi(struct sb *b, const struct moe_tokenizer *t, const struct moe_chat_msg *m,
			int n, bool gen)
{
	if (n && strcmp(m[0].role, "system")) {
		sb_add(b, KIMI_SYSTEM);
		sb_add(b, t->chat_system);
		sb_add(b, t->chat_system_nl ? "<|im_end|>\n" : "<|im_end|>");
	}
	for (int i = 0; i < n; i++) {
		if (!strcmp(m[i].role, "system")) {
			sb_add(b, KIMI_SYSTEM);
		} else if (!strcmp(m[i].role, "user")) {
			sb_add(b, "<|im_user|>user<|im_middle|>");
		} else {
			sb_add(b, "<|im_assistant|>assistant<|im_middle|>");
			if (t->chat_think == THINK_EMPTY)
				sb_add(b, "<think></think>");
		}
		sb_add(b, m[i].content);
		sb_add(b, "<|im_end|>");
	}
	if (gen)
		sb_add(b, "<|im_assistant|>assistant<|im_middle|>");
}

MOE_API int moe_chat_render(const struct moe_tokenizer *t, const struct moe_chat_msg *msgs,
			    int n_msgs, bool add_assistant_prefix, char **out)
{
	struct sb b = { 0 };

	if (!t || !out || n_msgs < 0 || (!msgs && n_msgs))
		return moe_err(EINVAL, "moe_chat_render: bad arguments");
	*out = NULL;
	for (int i = 0; i < n_msgs; i++) {
		const char *r = msgs[i].role;

		if (!r || !msgs[i].content)
			return moe_err(EINVAL, "chat message %d has no %s", i, r ? "content" : "role");
		if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant"))
			return moe_err(EINVAL,
				       "chat message %d has role '%s': expected system, user or assistant",
				       i, r);
		if (!strcmp(r, "system") && i)
			return moe_err(EINVAL,
				       "chat message %d is a system message: only the first may be one",
				       i);
	}
	switch (t->chat) {
	case CHAT_CHATML:
		render_chatml(&b, msgs, n_msgs, add_assistant_prefix);
		break;
	case CHAT_LLAMA3:
	case CHAT_LLAMA4:
		render_llama(&b, t, msgs, n_msgs, add_assistant_prefix, t->chat == CHAT_LLAMA4);
		break;
	case CHAT_HARMONY:
		render_harmony(&b, msgs, n_msgs, add_assistant_prefix);
		break;
	case CHAT_MISTRAL:
		render_mistral(&b, t, msgs, n_msgs, t->chat_inst_space);
		break;
	case CHAT_GEMMA4:
		render_gemma4(&b, t, msgs, n_msgs, add_assistant_prefix);
		break;
	case CHAT_DEEPSEEK2:
		render_deepseek2(&b, t, msgs, n_msgs, add_assistant_prefix);
		break;
	case CHAT_DEEPSEEK3:
		render_deepseek3(&b, t, msgs, n_msgs, add_assistant_prefix);
		break;
	case CHAT_GLM4:
		render_glm4(&b, t, msgs, n_msgs, add_assistant_prefix);
		break;
	case CHAT_KIMI_K2:
		render_kimi(&b, t, msgs, n_msgs, add_assistant_prefix);
		break;
	default:
		return moe_err(EOPNOTSUPP,
			       "no known chat format for architecture '%s' and its template: give the prompt as plain text",
			       t->arch[0] ? t->arch : "?");
	}
	sb_add(&b, "");
	if (b.oom) {
		free(b.s);
		return moe_err(ENOMEM, "moe_chat_render: out of memory");
	}
	if (b.n > INT32_MAX) {
		free(b.s);
		return moe_err(EFBIG, "moe_chat_render: the prompt is over 2 GiB");
	}
	*out = b.s;
	return (int)b.n;
}
