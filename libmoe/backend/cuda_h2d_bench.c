/* SPDX-License-Identifier: MIT */
/*
 * moe-bench gpu-h2d's measurement (backend/cuda_h2d_bench.h), on a CUDA
 * backend created over the given driver table, so that it times the
 * backend's own copy and event calls.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda_h2d_bench.h"
#include "backend/cuda_int.h"
#include "moe/moe.h"
#include "util/util.h"

#define H2D_MAX 64      /* slots and staging buffers at most */
#define H2D_CHECK 4096  /* bytes of the last slot compared with its source */

struct h2d {
	struct moe_backend *be;
	const struct moe_cuda_h2d_bench_cfg *cfg;
	moe_dptr slot[H2D_MAX];
	void *stg[H2D_MAX];
	bool pinned[H2D_MAX];
	struct moe_be_event *up_ev[H2D_MAX], *use_ev[H2D_MAX], *stg_ev[H2D_MAX];
	bool stg_busy[H2D_MAX], slot_used[H2D_MAX];
};

/* One round of the pipeline: seconds from the first upload to the last one landed. */
static int round_pipeline(struct h2d *h, double *s)
{
	const struct moe_backend_ops *o = h->be->ops;
	uint64_t third = h->cfg->expert_bytes / 3;
	double t0 = moe_now();
	int ret = 0;

	memset(h->stg_busy, 0, sizeof(h->stg_busy));
	memset(h->slot_used, 0, sizeof(h->slot_used));
	for (uint32_t k = 0; k < h->cfg->n_experts && !ret; k++) {
		uint32_t si = k % h->cfg->n_staging, sl = k % h->cfg->n_slots;

		/* a staging buffer is refilled once its uploads have completed */
		if (h->stg_busy[si] && o->event_query(h->be, h->stg_ev[si]) == 0)
			ret = o->event_sync(h->be, h->stg_ev[si]);
		/* a slot is refilled once the compute work that read it has run */
		if (!ret && h->slot_used[sl])
			ret = o->queue_wait(h->be, MOE_BE_COPY, h->use_ev[sl]);
		for (uint32_t m = 0; m < 3 && !ret; m++)
			ret = o->upload(h->be, MOE_BE_COPY, h->slot[sl] + m * third,
					(char *)h->stg[si] + m * third, third);
		ret = ret ? ret : o->event_record(h->be, MOE_BE_COPY, h->up_ev[sl]);
		ret = ret ? ret : o->event_record(h->be, MOE_BE_COPY, h->stg_ev[si]);
		ret = ret ? ret : o->queue_wait(h->be, MOE_BE_COMPUTE, h->up_ev[sl]);
		ret = ret ? ret : o->event_record(h->be, MOE_BE_COMPUTE, h->use_ev[sl]);
		h->stg_busy[si] = true;
		h->slot_used[sl] = true;
	}
	ret = ret ? ret : o->sync(h->be);
	*s = moe_now() - t0;
	return ret;
}

/* The same bytes as one stream of copies from one pinned buffer. */
static int round_plain(struct h2d *h, double *s)
{
	const struct moe_backend_ops *o = h->be->ops;
	double t0 = moe_now();
	int ret = 0;

	for (uint32_t k = 0; k < h->cfg->n_experts && !ret; k++)
		ret = o->upload(h->be, MOE_BE_COPY, h->slot[k % h->cfg->n_slots], h->stg[0],
				h->cfg->expert_bytes / 3 * 3);
	ret = ret ? ret : o->sync(h->be);
	*s = moe_now() - t0;
	return ret;
}

static void h2d_free(struct h2d *h)
{
	const struct moe_backend_ops *o = h->be->ops;

	o->sync(h->be);
	for (uint32_t i = 0; i < H2D_MAX; i++) {
		if (h->slot[i])
			o->free(h->be, h->slot[i]);
		if (h->pinned[i])
			o->host_unregister(h->be, h->stg[i]);
		free(h->stg[i]);
		if (h->up_ev[i])
			o->event_destroy(h->be, h->up_ev[i]);
		if (h->use_ev[i])
			o->event_destroy(h->be, h->use_ev[i]);
		if (h->stg_ev[i])
			o->event_destroy(h->be, h->stg_ev[i]);
	}
}

static int h2d_setup(struct h2d *h)
{
	const struct moe_cuda_h2d_bench_cfg *cfg = h->cfg;
	const struct moe_backend_ops *o = h->be->ops;
	uint64_t bytes = MOE_ALIGN_UP(cfg->expert_bytes, 4096);
	int ret = 0;

	for (uint32_t i = 0; i < cfg->n_slots && !ret; i++) {
		ret = o->alloc(h->be, cfg->expert_bytes, &h->slot[i]);
		ret = ret ? ret : o->event_create(h->be, &h->up_ev[i]);
		ret = ret ? ret : o->event_create(h->be, &h->use_ev[i]);
	}
	for (uint32_t i = 0; i < cfg->n_staging && !ret; i++) {
		h->stg[i] = aligned_alloc(4096, bytes);
		if (!h->stg[i])
			return moe_err(ENOMEM, "gpu-h2d: %llu bytes of staging",
				       (unsigned long long)bytes);
		/* distinct bytes per buffer: the data check tells them apart */
		memset(h->stg[i], (int)(i + 1), bytes);
		ret = o->host_register(h->be, h->stg[i], bytes);
		h->pinned[i] = !ret;
		ret = ret ? ret : o->event_create(h->be, &h->stg_ev[i]);
	}
	return ret;
}

int moe_cuda_h2d_bench(const struct moe_cuda_api *api, const struct moe_cuda_h2d_bench_cfg *cfg,
		       struct moe_cuda_h2d_bench_res *res, char *dev_name, size_t dev_name_len)
{
	struct moe_backend_params bp = { 0 };
	struct moe_cuda_api own = *api;
	struct h2d h = { .cfg = cfg };
	double best_pipe = 0, best_plain = 0;
	uint8_t got[H2D_CHECK];
	int ret;

	memset(res, 0, sizeof(*res));
	if (!cfg->n_slots || cfg->n_slots > H2D_MAX || !cfg->n_staging ||
	    cfg->n_staging > H2D_MAX || cfg->expert_bytes < 3 * H2D_CHECK || !cfg->n_experts ||
	    !cfg->rounds)
		return moe_err(EINVAL, "gpu-h2d: %u slots and %u staging buffers (1 to %u each) "
			       "of %llu bytes (at least %u), %u experts, %u rounds", cfg->n_slots,
			       cfg->n_staging, H2D_MAX, (unsigned long long)cfg->expert_bytes,
			       3 * H2D_CHECK, cfg->n_experts, cfg->rounds);
	/* the caller keeps the library: the backend must not close it */
	own.lib = NULL;
	ret = moe_backend_cuda_create_api(&own, &bp, &h.be);
	if (ret < 0)
		return ret;
	if (dev_name_len) {
		struct moe_cuda *c = moe_cuda_of(h.be);

		if (c->api.cuDeviceGetName(dev_name, (int)dev_name_len, c->dev) != CUDA_SUCCESS)
			snprintf(dev_name, dev_name_len, "?");
	}
	ret = h2d_setup(&h);
	/* interleaved rounds: the machine's drift shows in both alike */
	for (uint32_t r = 0; r < cfg->rounds && !ret; r++) {
		double a = 0, b = 0;

		ret = round_plain(&h, &a);
		ret = ret ? ret : round_pipeline(&h, &b);
		if (a > 0 && (best_plain == 0 || a < best_plain))
			best_plain = a;
		if (b > 0 && (best_pipe == 0 || b < best_pipe))
			best_pipe = b;
	}
	if (!ret) {
		uint32_t last = cfg->n_experts - 1;

		ret = h.be->ops->download(h.be, MOE_BE_COMPUTE, got, h.slot[last % cfg->n_slots],
					  sizeof(got));
		ret = ret ? ret : h.be->ops->sync(h.be);
		res->data_ok = !ret;
		for (size_t i = 0; !ret && i < sizeof(got); i++)
			if (got[i] != (uint8_t)(last % cfg->n_staging + 1))
				res->data_ok = 0;
	}
	res->bytes = cfg->expert_bytes / 3 * 3 * cfg->n_experts;
	if (best_pipe > 0)
		res->pipeline_gbps = res->bytes / best_pipe / 1e9;
	if (best_plain > 0)
		res->plain_gbps = res->bytes / best_plain / 1e9;
	if (res->plain_gbps > 0)
		res->ratio = res->pipeline_gbps / res->plain_gbps;
	h2d_free(&h);
	moe_backend_destroy(h.be);
	return ret;
}
