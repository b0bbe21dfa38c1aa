/* SPDX-License-Identifier: MIT */
/*
 * Resident tensors shared by the contexts of one model.  Contexts on the
 * CPU backend whose plans lay the resident tensors out alike (same tensors,
 * same offsets, same conversions: the plan depends on the model and on
 * what streams, not on the budget's expert slots) read them once into
 * memory the model keeps, reference-counted, and only read it afterwards.
 * Each such context allocates its plan's device memory without the
 * resident part (ctx->arena is the plan's base, offsets below
 * ctx->share_skip are not in its own allocation).
 *
 * model->share_lock guards the list and is held while the first context
 * reads the tensors, so a context created at the same time waits for them
 * instead of reading them twice.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"
#include "model.h"
#include "util/util.h"

struct moe_resident_share {
	struct moe_resident_share *next;
	uint32_t refs;
	uint64_t bytes;             /* the resident tensors' region [0, bytes) */
	uint64_t *sig;              /* per tensor: offset, bytes, converted */
	uint32_t n_tensors;
	void *mem;
};

#define SHARE_ALIGN 4096ull

/*
 * The part of the plan's device memory below every other region that holds
 * only resident tensors (a multiple of the backend's alignment, so that the
 * context's own allocation keeps every offset's alignment), or 0 when the
 * layout has no such part.
 */
uint64_t moe_share_prefix(const struct plan_layout *l, uint32_t n_layer, uint64_t *resident_end)
{
	uint64_t end = 0, low = UINT64_MAX;

	for (uint32_t i = 0; i < l->n_tensors; i++)
		if (l->t[i].off != UINT64_MAX)
			end = MOE_MAX(end, l->t[i].off + l->t[i].bytes);
	for (int i = 0; i < PB_COUNT; i++)
		if (l->buf_bytes[i])
			low = MOE_MIN(low, l->buf_off[i]);
	if (l->plan.scratch_bytes)
		low = MOE_MIN(low, l->scratch_off);
	if (l->plan.workspace_bytes)
		low = MOE_MIN(low, l->ws_off);
	for (uint32_t c = 0; c < l->plan.n_classes; c++)
		low = MOE_MIN(low, l->class_off[c]);
	for (uint32_t il = 0; l->layers && il < n_layer; il++)
		if (l->layers[il].kv_half)
			low = MOE_MIN(low, l->layers[il].kv_off);
	*resident_end = end;
	if (low == UINT64_MAX)
		low = l->plan.device_bytes;
	low = low / l->desc->align * l->desc->align;
	return end && low >= end ? low : 0;
}

static void sign(const struct plan_layout *l, uint64_t *sig)
{
	for (uint32_t i = 0; i < l->n_tensors; i++) {
		sig[3 * i] = l->t[i].off;
		sig[3 * i + 1] = l->t[i].off == UINT64_MAX ? 0 : l->t[i].bytes;
		sig[3 * i + 2] = l->t[i].off == UINT64_MAX ? 0 : l->t[i].convert;
	}
}

int moe_share_acquire(struct moe_ctx *ctx, uint64_t bytes,
		      int (*load)(struct moe_ctx *ctx, moe_dptr base, bool read))
{
	struct moe_model *m = ctx->model;
	const struct plan_layout *l = &ctx->lay;
	struct moe_resident_share *s;
	uint64_t *sig = malloc(sizeof(uint64_t) * 3 * (l->n_tensors ? l->n_tensors : 1));
	int ret;

	if (!sig)
		return moe_err(ENOMEM, "out of memory");
	sign(l, sig);
	pthread_mutex_lock(&m->share_lock);
	for (s = m->shares; s; s = s->next)
		if (s->bytes == bytes && s->n_tensors == l->n_tensors &&
		    !memcmp(s->sig, sig, sizeof(uint64_t) * 3 * l->n_tensors))
			break;
	if (s) {
		s->refs++;
		free(sig);
		pthread_mutex_unlock(&m->share_lock);
		ctx->share = s;
		return load(ctx, (moe_dptr)(uintptr_t)s->mem, false);
	}
	s = calloc(1, sizeof(*s));
	if (!s || posix_memalign(&s->mem, SHARE_ALIGN, bytes)) {
		if (s)
			s->mem = NULL;
		ret = moe_err(ENOMEM, "out of memory for %llu bytes of resident tensors",
			      (unsigned long long)bytes);
		goto fail;
	}
	s->bytes = bytes;
	s->sig = sig;
	s->n_tensors = l->n_tensors;
	s->refs = 1;
	ctx->share = s;
	ret = load(ctx, (moe_dptr)(uintptr_t)s->mem, true);
	if (ret < 0) {
		ctx->share = NULL;
		goto fail;
	}
	s->next = m->shares;
	m->shares = s;
	pthread_mutex_unlock(&m->share_lock);
	return 0;
fail:
	pthread_mutex_unlock(&m->share_lock);
	if (s)
		free(s->mem);
	free(s);
	free(sig);
	return ret;
}

void moe_share_release(struct moe_ctx *ctx)
{
	struct moe_model *m = ctx->model;
	struct moe_resident_share *s = ctx->share, **pp;

	if (!s)
		return;
	ctx->share = NULL;
	pthread_mutex_lock(&m->share_lock);
	if (--s->refs) {
		pthread_mutex_unlock(&m->share_lock);
		return;
	}
	for (pp = &m->shares; *pp && *pp != s; pp = &(*pp)->next)
		;
	if (*pp)
		*pp = s->next;
	pthread_mutex_unlock(&m->share_lock);
	free(s->mem);
	free(s->sig);
	free(s);
}

uint64_t moe_share_bytes(const struct moe_ctx *ctx)
{
	return ctx->share ? ctx->share->bytes : 0;
}
