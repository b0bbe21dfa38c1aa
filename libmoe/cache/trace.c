/* SPDX-License-Identifier: MIT */
/*
 * Routing traces: the reader (two passes over the text: sizes, then the
 * ids), the writer the forward pass feeds, and the statistics of a trace.
 * Formats in trace.h.  Every malformed line is refused with its number and
 * what was expected.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/routestats.h"
#include "cache/trace.h"
#include "util/util.h"

struct parse {
	const char *path;
	char *text;
	size_t len;
	/* header words, 0 when absent */
	uint32_t h_layers, h_experts, h_depth;
	bool own;                    /* "# moe-trace" header */
	/* pass 1 */
	uint32_t n_layer, K, depth, max_id, n_seq;
	uint64_t n_tok;
	uint32_t *k;
};

static int read_all(const char *path, char **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	size_t cap = 1 << 16, n = 0;
	char *buf;

	if (!f)
		return moe_err(errno, "%s: %s", path, strerror(errno));
	buf = malloc(cap);
	while (buf) {
		size_t r;

		if (cap - n < 4096) {
			char *b = realloc(buf, cap * 2);

			if (!b) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = b;
			cap *= 2;
		}
		r = fread(buf + n, 1, cap - n - 1, f);
		if (!r)
			break;
		n += r;
	}
	fclose(f);
	if (!buf)
		return moe_err(ENOMEM, "%s: out of memory reading the trace", path);
	buf[n] = 0;
	*out = buf;
	*len = n;
	return 0;
}

static void header_words(struct parse *ps, const char *line, const char *end)
{
	static const char *const keys[] = { "layers=", "experts=", "depth=" };
	uint32_t *dst[] = { &ps->h_layers, &ps->h_experts, &ps->h_depth };

	if (!strncmp(line, "# moe-trace ", 12))
		ps->own = true;
	for (size_t i = 0; i < MOE_ARRAY_SIZE(keys); i++) {
		const char *w = line;

		while ((w = strstr(w, keys[i])) && w < end) {
			/* a word of its own: "layers=" at the start or after a blank */
			if (w == line || w[-1] == ' ' || w[-1] == '\t') {
				*dst[i] = (uint32_t)strtoul(w + strlen(keys[i]), NULL, 10);
				break;
			}
			w++;
		}
	}
}

/* One field "e1,e2/p1,p2/-": ids into @ids (up to max), predictions into @pred[d]. */
static int field(const struct parse *ps, uint64_t lineno, const char *s, const char *end,
		 int32_t *ids, uint32_t *n_ids, int32_t (*pred)[MOE_TRACE_MAX_K],
		 uint32_t *n_pred, uint32_t *n_groups)
{
	uint32_t g = 0;

	*n_ids = 0;
	*n_groups = 0;
	while (s < end) {
		uint32_t *n = g ? &n_pred[g - 1] : n_ids;
		int32_t *dst = g ? pred[g - 1] : ids;

		if (g > MOE_TRACE_MAX_DEPTH)
			return moe_err(EINVAL, "%s:%llu: more than %d prediction groups", ps->path,
				       (unsigned long long)lineno, MOE_TRACE_MAX_DEPTH);
		*n = 0;
		if (*s == '-') {
			s++;
		} else {
			for (;;) {
				char *e;
				long v = strtol(s, &e, 10);

				if (e == s || v < 0 || v > 32767)
					return moe_err(EINVAL, "%s:%llu: expected expert ids (0..32767) "
						       "separated by ',' at '%.16s'", ps->path,
						       (unsigned long long)lineno, s);
				if (*n == MOE_TRACE_MAX_K)
					return moe_err(EINVAL, "%s:%llu: more than %d experts in a "
						       "layer", ps->path, (unsigned long long)lineno,
						       MOE_TRACE_MAX_K);
				dst[(*n)++] = (int32_t)v;
				s = e;
				if (*s != ',')
					break;
				s++;
			}
		}
		if (s < end && *s != '/')
			return moe_err(EINVAL, "%s:%llu: unexpected '%c' in a layer's experts",
				       ps->path, (unsigned long long)lineno, *s);
		if (s < end)
			s++;
		if (g)
			*n_groups = g;
		g++;
	}
	return 0;
}

/*
 * Walk every line; with @t NULL only measure (pass 1), else fill @t.
 */
static int walk(struct parse *ps, struct moe_trace *t)
{
	int32_t pred[MOE_TRACE_MAX_DEPTH][MOE_TRACE_MAX_K];
	uint32_t n_pred[MOE_TRACE_MAX_DEPTH];
	int32_t ids[MOE_TRACE_MAX_K];
	uint64_t lineno = 0, tok = 0;
	int64_t cur_seq = -1;
	uint32_t seq_i = 0;
	char *line = ps->text;

	while (line < ps->text + ps->len) {
		char *nl = strchr(line, '\n'), *end = nl ? nl : ps->text + ps->len, *p = line;
		uint32_t l = 0;
		long seq, pos;

		lineno++;
		if (end > line && end[-1] == '\r')
			end--;
		if (line == end)
			goto next;
		if (*line == '#') {
			if (!t)
				header_words(ps, line, end);
			goto next;
		}
		if (line[0] == 'S' && line[1] == ' ') {
			char *e;

			seq = strtol(line + 2, &e, 10);
			if (e == line + 2)
				return moe_err(EINVAL, "%s:%llu: expected 'S <seq> <name>'", ps->path,
					       (unsigned long long)lineno);
			cur_seq = seq;
			if (t) {
				const char *nm = e;
				size_t n;

				while (*nm == ' ')
					nm++;
				n = (size_t)(end - nm);
				if (strstr(nm, " tokens=") && strstr(nm, " tokens=") < end)
					n = (size_t)(strstr(nm, " tokens=") - nm);
				t->seq_first[seq_i] = tok;
				t->seq_name[seq_i] = strndup(nm, n);
				if (!t->seq_name[seq_i])
					return moe_err(ENOMEM, "out of memory");
			}
			seq_i++;
			goto next;
		}
		seq = strtol(p, &p, 10);
		pos = strtol(p, &p, 10);
		if (p == line || (*p != ' ' && *p != '\t' && p != end))
			return moe_err(EINVAL, "%s:%llu: expected '<seq> <pos> <layer fields>' or "
				       "'S <seq> <name>'", ps->path, (unsigned long long)lineno);
		if (cur_seq < 0) {
			/* a trace without S lines is one sequence */
			cur_seq = seq;
			if (t) {
				t->seq_first[seq_i] = tok;
				t->seq_name[seq_i] = strdup("");
			}
			seq_i++;
		}
		if (seq != cur_seq)
			return moe_err(EINVAL, "%s:%llu: token of sequence %ld inside sequence %lld",
				       ps->path, (unsigned long long)lineno, seq, (long long)cur_seq);
		while (p < end) {
			char *f;
			uint32_t n_ids, n_groups;
			int ret;

			while (p < end && (*p == ' ' || *p == '\t'))
				p++;
			if (p == end)
				break;
			f = p;
			while (p < end && *p != ' ' && *p != '\t')
				p++;
			ret = field(ps, lineno, f, p, ids, &n_ids, pred, n_pred, &n_groups);
			if (ret < 0)
				return ret;
			if (!t) {
				if (ps->n_tok == 0 && !ps->h_layers && l >= 4096)
					return moe_err(EINVAL, "%s:%llu: too many layers", ps->path,
						       (unsigned long long)lineno);
				if (ps->n_layer && l >= ps->n_layer)
					return moe_err(EINVAL, "%s:%llu: more than %u layer fields",
						       ps->path, (unsigned long long)lineno,
						       ps->n_layer);
				if (l < 4096) {
					ps->k[l] = MOE_MAX(ps->k[l], n_ids);
					ps->K = MOE_MAX(ps->K, n_ids);
					ps->depth = MOE_MAX(ps->depth, n_groups);
					for (uint32_t j = 0; j < n_ids; j++)
						ps->max_id = MOE_MAX(ps->max_id, (uint32_t)ids[j] + 1);
					for (uint32_t d = 0; d < n_groups; d++) {
						ps->K = MOE_MAX(ps->K, n_pred[d]);
						for (uint32_t j = 0; j < n_pred[d]; j++)
							ps->max_id = MOE_MAX(ps->max_id,
									     (uint32_t)pred[d][j] + 1);
					}
				}
			} else {
				int16_t *dst = t->ids + (tok * t->n_layer + l) * t->K;

				if (n_ids != t->k[l])
					return moe_err(EINVAL, "%s:%llu: layer %u has %u experts, "
						       "other tokens %u", ps->path,
						       (unsigned long long)lineno, l, n_ids, t->k[l]);
				for (uint32_t j = 0; j < n_ids; j++) {
					if ((uint32_t)ids[j] >= t->n_expert)
						return moe_err(EINVAL, "%s:%llu: expert %d of layer %u: "
							       "the trace has %u experts", ps->path,
							       (unsigned long long)lineno, ids[j], l,
							       t->n_expert);
					dst[j] = (int16_t)ids[j];
				}
				for (uint32_t d = 0; t->pred && d < n_groups; d++)
					for (uint32_t j = 0; j < n_pred[d] && j < t->K; j++) {
						if ((uint32_t)pred[d][j] >= t->n_expert)
							return moe_err(EINVAL, "%s:%llu: predicted expert "
								       "%d: the trace has %u experts",
								       ps->path,
								       (unsigned long long)lineno,
								       pred[d][j], t->n_expert);
						t->pred[((tok * t->n_layer + l) * t->depth + d) * t->K +
							j] = (int16_t)pred[d][j];
					}
			}
			l++;
		}
		if (!t) {
			if (!ps->n_layer)
				ps->n_layer = l;
			if (l != ps->n_layer)
				return moe_err(EINVAL, "%s:%llu: %u layer fields, expected %u", ps->path,
					       (unsigned long long)lineno, l, ps->n_layer);
			ps->n_tok++;
		} else {
			t->pos[tok] = (int32_t)pos;
			tok++;
		}
next:
		line = nl ? nl + 1 : ps->text + ps->len;
	}
	if (!t)
		ps->n_seq = seq_i;
	return 0;
}

int moe_trace_open(const char *path, struct moe_trace **out)
{
	struct parse ps = { .path = path };
	struct moe_trace *t = NULL;
	int ret;

	if (!path || !out)
		return moe_err(EINVAL, "moe_trace_open: NULL argument");
	*out = NULL;
	ret = read_all(path, &ps.text, &ps.len);
	if (ret < 0)
		return ret;
	ps.k = calloc(4096, sizeof(*ps.k));
	if (!ps.k) {
		ret = moe_err(ENOMEM, "out of memory");
		goto out;
	}
	/* the header words come first in both formats: read them before the counts */
	for (char *l = ps.text; l && *l == '#'; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		header_words(&ps, l, strchr(l, '\n') ? strchr(l, '\n') : l + strlen(l));
	ps.n_layer = ps.h_layers;
	ret = walk(&ps, NULL);
	if (ret < 0)
		goto out;
	if (!ps.n_tok) {
		ret = moe_err(EINVAL, "%s: no tokens: not a routing trace (see `moectl help`)", path);
		goto out;
	}
	if (ps.h_experts && ps.max_id > ps.h_experts) {
		ret = moe_err(EINVAL, "%s: expert %u in a trace of %u experts", path, ps.max_id - 1,
			      ps.h_experts);
		goto out;
	}
	t = calloc(1, sizeof(*t));
	if (!t) {
		ret = moe_err(ENOMEM, "out of memory");
		goto out;
	}
	t->n_layer = ps.n_layer;
	t->n_expert = ps.h_experts ? ps.h_experts : ps.max_id;
	t->K = MOE_MAX(ps.K, 1u);
	t->depth = ps.depth;
	t->n_seq = ps.n_seq;
	t->n_tok = ps.n_tok;
	t->k = malloc(sizeof(*t->k) * t->n_layer);
	t->seq_first = calloc(t->n_seq + 1, sizeof(*t->seq_first));
	t->seq_name = calloc(t->n_seq + 1, sizeof(*t->seq_name));
	t->pos = malloc(sizeof(*t->pos) * t->n_tok);
	t->ids = malloc(sizeof(*t->ids) * t->n_tok * t->n_layer * t->K);
	if (t->depth)
		t->pred = malloc(sizeof(*t->pred) * t->n_tok * t->n_layer * t->depth * t->K);
	if (!t->k || !t->seq_first || !t->seq_name || !t->pos || !t->ids ||
	    (t->depth && !t->pred)) {
		ret = moe_err(ENOMEM, "%s: out of memory for %llu tokens", path,
			      (unsigned long long)t->n_tok);
		goto out;
	}
	memcpy(t->k, ps.k, sizeof(*t->k) * t->n_layer);
	memset(t->ids, 0xff, sizeof(*t->ids) * t->n_tok * t->n_layer * t->K);
	if (t->pred)
		memset(t->pred, 0xff, sizeof(*t->pred) * t->n_tok * t->n_layer * t->depth * t->K);
	ret = walk(&ps, t);
	if (ret < 0)
		goto out;
	t->seq_first[t->n_seq] = t->n_tok;
	*out = t;
	t = NULL;
out:
	moe_trace_destroy(t);
	free(ps.k);
	free(ps.text);
	return ret;
}

void moe_trace_destroy(struct moe_trace *t)
{
	if (!t)
		return;
	for (uint32_t s = 0; t->seq_name && s < t->n_seq; s++)
		free(t->seq_name[s]);
	free(t->seq_name);
	free(t->seq_first);
	free(t->k);
	free(t->pos);
	free(t->ids);
	free(t->pred);
	free(t);
}

int moe_trace_info(const struct moe_trace *t, struct moe_trace_info *out)
{
	if (!t || !out)
		return moe_err(EINVAL, "moe_trace_info: NULL argument");
	memset(out, 0, sizeof(*out));
	out->n_layer = t->n_layer;
	out->n_expert = t->n_expert;
	out->max_k = t->K;
	out->depth = t->depth;
	out->n_seq = t->n_seq;
	out->n_tok = t->n_tok;
	for (uint32_t l = 0; l < t->n_layer; l++)
		out->n_routed += t->k[l] > 0;
	return 0;
}

int moe_trace_seq(const struct moe_trace *t, uint32_t s, uint64_t *first, uint64_t *n)
{
	if (!t || s >= t->n_seq)
		return moe_err(EINVAL, "moe_trace_seq: no sequence %u", s);
	if (first)
		*first = t->seq_first[s];
	if (n)
		*n = t->seq_first[s + 1] - t->seq_first[s];
	return 0;
}

int moe_trace_get(const struct moe_trace *t, uint64_t tok, uint32_t layer, int32_t *ids,
		  uint32_t max)
{
	const int16_t *src;
	uint32_t n;

	if (!t || tok >= t->n_tok || layer >= t->n_layer)
		return moe_err(EINVAL, "moe_trace_get: no token %llu layer %u",
			       (unsigned long long)tok, layer);
	src = moe_trace_ids(t, tok, layer);
	n = t->k[layer];
	for (uint32_t j = 0; j < n && j < max; j++)
		ids[j] = src[j];
	return (int)n;
}

int moe_trace_prediction(const struct moe_trace *t, uint64_t tok, uint32_t layer,
			 uint32_t depth, int32_t *ids, uint32_t max)
{
	const int16_t *src;
	uint32_t n = 0;

	if (!t || tok >= t->n_tok || layer >= t->n_layer || !depth || depth > t->depth)
		return moe_err(EINVAL, "moe_trace_prediction: no prediction at depth %u", depth);
	src = moe_trace_pred(t, tok, layer, depth - 1);
	while (n < t->K && src[n] >= 0) {
		if (n < max)
			ids[n] = src[n];
		n++;
	}
	return (int)n;
}

int moe_routestats_from_trace(const struct moe_trace *t, uint32_t seq_begin, uint32_t seq_end,
			      struct moe_routestats **out)
{
	struct moe_routestats *rs;
	bool *routed;
	int32_t prev[MOE_TRACE_MAX_K], cur[MOE_TRACE_MAX_K];
	int ret;

	if (!t || !out)
		return moe_err(EINVAL, "moe_routestats_from_trace: NULL argument");
	*out = NULL;
	if (!seq_end || seq_end > t->n_seq)
		seq_end = t->n_seq;
	routed = malloc(sizeof(*routed) * t->n_layer);
	if (!routed)
		return moe_err(ENOMEM, "out of memory");
	for (uint32_t l = 0; l < t->n_layer; l++)
		routed[l] = t->k[l] > 0;
	ret = moe_routestats_create(t->n_layer, t->n_expert, routed, &rs);
	free(routed);
	if (ret < 0)
		return ret;
	for (uint64_t tok = seq_begin < seq_end ? t->seq_first[seq_begin] : 0;
	     seq_begin < seq_end && tok < t->seq_first[seq_end]; tok++) {
		uint32_t kp = 0;

		for (uint32_t l = 0; l < t->n_layer; l++) {
			const int16_t *src = moe_trace_ids(t, tok, l);

			if (!t->k[l])
				continue;
			for (uint32_t j = 0; j < t->k[l]; j++)
				cur[j] = src[j];
			moe_routestats_add(rs, l, kp ? prev : NULL, kp, cur, t->k[l]);
			memcpy(prev, cur, sizeof(*cur) * t->k[l]);
			kp = t->k[l];
		}
		moe_routestats_token(rs);
	}
	*out = rs;
	return 0;
}

/* ------------------------------------------------------------ writer */

int moe_trace_writer_open(const char *path, const char *name, uint32_t n_layer,
			  uint32_t n_expert, uint32_t depth, struct moe_trace_writer **out)
{
	struct moe_trace_writer *w = calloc(1, sizeof(*w));

	*out = NULL;
	if (!w)
		return moe_err(ENOMEM, "out of memory");
	w->f = fopen(path, "w");
	w->path = strdup(path);
	w->name = strdup(name && *name ? name : "-");
	if (!w->f || !w->path || !w->name) {
		int e = errno ? errno : ENOMEM;

		if (w->f)
			fclose(w->f);
		free(w->path);
		free(w->name);
		free(w);
		return moe_err(e, "%s: cannot write the trace: %s", path, strerror(e));
	}
	/* a name is one word of the S line */
	for (char *c = w->name; *c; c++)
		if (*c == ' ' || *c == '\t')
			*c = '_';
	w->n_layer = n_layer;
	w->depth = depth;
	fprintf(w->f, "# moe-trace 1 layers=%u experts=%u depth=%u\n", n_layer, n_expert, depth);
	fprintf(w->f, "# one line per token: seq pos, then per layer the chosen experts "
		"(\"-\": not routed)%s\n", depth ? ", then /the predictions made 1..depth routed "
		"layers before" : "");
	*out = w;
	return 0;
}

int moe_trace_writer_token(struct moe_trace_writer *w, uint32_t ctx_seq, int32_t pos,
			   const uint32_t *k, const int32_t *ids, const int32_t *pred,
			   uint32_t stride)
{
	if (!w->in_seq || ctx_seq != w->ctx_seq || pos != w->last_pos + 1) {
		if (w->in_seq)
			w->seq++;
		w->in_seq = true;
		w->ctx_seq = ctx_seq;
		fprintf(w->f, "S %u %s#%u\n", w->seq, w->name, ctx_seq);
	}
	w->last_pos = pos;
	fprintf(w->f, "%u %d", w->seq, pos);
	for (uint32_t l = 0; l < w->n_layer; l++) {
		fputc(' ', w->f);
		if (!k[l]) {
			fputc('-', w->f);
			continue;
		}
		for (uint32_t j = 0; j < k[l]; j++)
			fprintf(w->f, "%s%d", j ? "," : "", ids[l * stride + j]);
		for (uint32_t d = 0; d < w->depth; d++) {
			const int32_t *p = pred ? pred + ((uint64_t)l * w->depth + d) * stride : NULL;

			fputc('/', w->f);
			if (!p || p[0] < 0) {
				fputc('-', w->f);
				continue;
			}
			for (uint32_t j = 0; j < k[l] && p[j] >= 0; j++)
				fprintf(w->f, "%s%d", j ? "," : "", p[j]);
		}
	}
	fputc('\n', w->f);
	return ferror(w->f) ? moe_err(EIO, "%s: writing the trace failed", w->path) : 0;
}

int moe_trace_writer_close(struct moe_trace_writer *w)
{
	int ret = 0;

	if (!w)
		return 0;
	if (ferror(w->f) | fclose(w->f))
		ret = moe_err(EIO, "%s: writing the trace failed", w->path);
	free(w->path);
	free(w->name);
	free(w);
	return ret;
}
