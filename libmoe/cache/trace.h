/* SPDX-License-Identifier: MIT */
/*
 * Routing traces: per token and routed layer, the experts chosen (and,
 * optionally, the speculative predictions made for that layer from earlier
 * layers).  The reader takes the format of the gpt-oss-20b traces in
 * ../shared/traces and this project's own, which is the same with a header:
 *
 *   # moe-trace 1 layers=L experts=E depth=D
 *   S <seq> <name> [tokens=<n>]
 *   <seq> <pos> F0 F1 ... F(L-1)
 *
 * where Fl is "-" for a layer that does not route, else the chosen ids
 * "e1,e2,..." in router order, followed, with depth D, by D groups
 * "/p1,p2,..." (or "/-"): the predictions for layer l made 1..D routed
 * layers before it.  Lines starting with '#' are comments; a comment's
 * "layers=", "experts=" and "depth=" words are read wherever they are.
 */
#ifndef MOE_CACHE_TRACE_H
#define MOE_CACHE_TRACE_H

#include <stdint.h>
#include <stdio.h>

#include "moe/moe.h"

#define MOE_TRACE_MAX_K 64
#define MOE_TRACE_MAX_DEPTH 8

struct moe_trace {
	uint32_t n_layer, n_expert, K, depth;
	uint32_t *k;                 /* per layer: experts per token, 0 where it does not route */
	uint32_t n_seq;
	uint64_t *seq_first;         /* n_seq + 1 token offsets */
	char **seq_name;
	uint64_t n_tok;
	int32_t *pos;                /* per token */
	int16_t *ids;                /* [n_tok][n_layer][K], -1 padding */
	int16_t *pred;               /* [n_tok][n_layer][depth][K], -1: none; NULL without */
};

static inline const int16_t *moe_trace_ids(const struct moe_trace *t, uint64_t tok, uint32_t l)
{
	return t->ids + (tok * t->n_layer + l) * t->K;
}

static inline const int16_t *moe_trace_pred(const struct moe_trace *t, uint64_t tok, uint32_t l,
					    uint32_t d)
{
	return t->pred + ((tok * t->n_layer + l) * t->depth + d) * t->K;
}

/* Writing a trace as the forward pass runs (moe_ctx_trace_start). */
struct moe_trace_writer {
	FILE *f;
	char *path, *name;
	uint32_t n_layer, depth;
	uint32_t seq;                /* the trace's sequence in progress */
	bool in_seq;
	uint32_t ctx_seq;            /* ... is this sequence of the context */
	int32_t last_pos;            /* ... up to this position */
};

/* @name: what S lines name each sequence after (the model). */
int moe_trace_writer_open(const char *path, const char *name, uint32_t n_layer,
			  uint32_t n_expert, uint32_t depth, struct moe_trace_writer **out);
/*
 * One token of the context's sequence @ctx_seq at @pos: ids[l * stride ..]
 * holds k[l] ids of layer l; pred (or NULL) holds, at [(l * depth + d) *
 * stride], the ids predicted d + 1 routed layers before, -1 where none was
 * made.  A token that does not continue the sequence of the one before it
 * (another sequence of a batch, or a rewind) starts a new trace sequence.
 */
int moe_trace_writer_token(struct moe_trace_writer *w, uint32_t ctx_seq, int32_t pos,
			   const uint32_t *k, const int32_t *ids, const int32_t *pred,
			   uint32_t stride);
int moe_trace_writer_close(struct moe_trace_writer *w);

#endif
