/* SPDX-License-Identifier: MIT */
/*
 * Predictors: after layer l routes, the probability that each expert of the
 * next routed layers l+1 .. l+depth will be used, from
 *   spec   the next layers' routers applied to layer l's router input
 *          (speculative gating: the forward pass computes them, the trace
 *          records them),
 *   trans  transition counts l -> l+1 (chained for deeper layers),
 *   pop    per-layer popularity.
 * Scores are calibrated online into probabilities: per depth, per "was it
 * speculated" and per bin of the statistical score, the fraction of such
 * predictions that came true.  The live engine and the trace simulator
 * share this code, as they share the cache's bookkeeping.
 */
#ifndef MOE_CACHE_PREDICT_H
#define MOE_CACHE_PREDICT_H

#include <stdbool.h>
#include <stdint.h>

struct moe_routestats;

enum moe_pred_source {
	MOE_PRED_SPEC = 1u << 0,
	MOE_PRED_TRANS = 1u << 1,
	MOE_PRED_POP = 1u << 2,
};

#define MOE_PRED_MAX_DEPTH 8

struct moe_pred_cfg {
	const char *name;
	uint32_t sources;            /* 0: no prefetching */
	uint32_t depth;              /* routed layers ahead */
	double min_p;                /* fetch only what is at least this likely */
	double budget;               /* experts fetched ahead per layer routing; 0: the layer's k */
};

/* "mix:depth=2,min=0.7,budget=4" -> cfg; NULL or "none": no prefetching. */
int moe_pred_parse(const char *spec, struct moe_pred_cfg *out);
/* "none, pop, trans, spec, mix" */
const char *moe_pred_names(void);

struct moe_pred;

/*
 * @k: experts per token of each layer (0: not routed); @rs: the statistics
 * the caller keeps up to date (moe_routestats_add), read for trans and pop.
 */
int moe_pred_create(const struct moe_pred_cfg *cfg, uint32_t n_layer, uint32_t n_expert,
		    const uint32_t *k, const struct moe_routestats *rs, struct moe_pred **out);
void moe_pred_destroy(struct moe_pred *p);
/* The routed layer d + 1 routings after @layer, or -1. */
int32_t moe_pred_target(const struct moe_pred *p, uint32_t layer, uint32_t d);
/* One token routed @layer to ids[0..k): the predictions made for it are scored. */
void moe_pred_learn(struct moe_pred *p, uint32_t layer, const int32_t *ids, uint32_t k);
/*
 * Layer @layer routed n_tok tokens to ids[t * stride ..]; spec, when given,
 * holds at [(d * n_tok + t) * stride] the speculative ids for target layer
 * d (-1 where none).  prob[d * n_expert + e]: the probability that a token
 * of the batch uses expert e at target layer d.
 */
void moe_pred_predict(struct moe_pred *p, uint32_t layer, const int32_t *ids, uint32_t n_tok,
		      uint32_t stride, const int32_t *spec, float *prob);

struct moe_pred_cand {
	uint32_t layer, e, d;
	float p;
};
/*
 * What to prefetch after moe_pred_predict: the experts at least min_p
 * likely that @cached (arg, layer, e) says are not cached, most likely
 * first (then nearer layers, then lower ids); @out holds depth * n_expert.
 */
uint32_t moe_pred_candidates(const struct moe_pred *p, uint32_t layer, const float *prob,
			     bool (*cached)(void *arg, uint32_t layer, uint32_t e), void *arg,
			     struct moe_pred_cand *out);
/* Experts fetched ahead per routing of @layer: the budget option, else the layer's k. */
uint32_t moe_pred_budget(const struct moe_pred *p, uint32_t layer);

#endif
