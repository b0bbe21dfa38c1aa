/* SPDX-License-Identifier: MIT */
/*
 * Creating an inference context: make the plan, create the backend and the
 * one allocation of device memory the plan lays out, open the I/O engine,
 * read the resident tensors, load the routing statistics saved for the
 * model, create the expert cache over the plan's slots and warm it: with
 * every expert when all fit, else with the most used ones of the saved
 * statistics.  Also eval, logits, stats, and recording traces.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/policy.h"
#include "engine/engine.h"
#include "engine/publish.h"
#include "quant/quant.h"
#include "util/threadpool.h"
#include "util/util.h"

void moe_ctx_params_init(struct moe_ctx_params *p)
{
	memset(p, 0, sizeof(*p));
	moe_io_params_init(&p->io);
}

/* demand uses after which an expert is held for good (pin_hot without saved statistics) */
#define HOT_AFTER 32

/*
 * The eviction policy when none is named: the statistics policy, which keeps
 * the experts routing says come back soonest.  It fetches fewer experts than
 * LRU on every trace and budget measured (Documentation/performance.rst),
 * and more so for batches, whose layer working sets LRU cycles through.
 */
#define DEFAULT_POLICY "stats"

const char *moe_backend_list(void)
{
	return moe_backend_names();
}

const char *moe_policy_names(void)
{
	return "lru, lfu, stats";
}

const char *moe_prefetch_names(void)
{
	return moe_pred_names();
}

static int warm_all(struct moe_ctx *ctx)
{
	uint32_t ne = ctx->hp.n_expert, n = 0;
	uint32_t *slots = malloc(sizeof(*slots) * ctx->hp.n_layer * MOE_MAX(ne, 1u));
	int ret = 0;

	if (!slots)
		return moe_err(ENOMEM, "out of memory");
	for (uint32_t il = 0; il < ctx->hp.n_layer && !ret; il++) {
		/* a streamed dense FFN is entry 0 of its layer */
		uint32_t n_ent = ctx->layers[il].dense_stream ? 1 : ctx->layers[il].is_moe ? ne : 0;

		for (uint32_t e = 0; e < n_ent && !ret; e++) {
			while ((ret = moe_cache_acquire(ctx->cache, il, e, 0, &slots[n])) == -EAGAIN) {
				ret = moe_cache_wait(ctx->cache);
				if (ret < 0)
					break;
			}
			if (ret >= 0) {
				n++;
				ret = 0;
			}
		}
	}
	for (uint32_t i = 0; i < n; i++) {
		int r;

		while (!(r = moe_cache_ready(ctx->cache, slots[i])))
			if ((r = moe_cache_wait(ctx->cache)) < 0)
				break;
		if (r < 0 && !ret)
			ret = r;
		moe_cache_release(ctx->cache, slots[i]);
	}
	if (!ret)
		ret = ctx->be->ops->sync(ctx->be);
	free(slots);
	return ret;
}

/*
 * The most used experts of the saved statistics into the free slots (and
 * the first pin_hot of them held for good), read before the first token.
 */
static int warm_popular(struct moe_ctx *ctx)
{
	uint32_t ne = ctx->hp.n_expert, nk = ctx->hp.n_layer * ne, n = 0, n_keys, held = 0;
	uint32_t *keys = malloc(sizeof(*keys) * nk), *slots = malloc(sizeof(*slots) * nk);
	int ret = 0;

	if (!keys || !slots) {
		free(keys);
		free(slots);
		return moe_err(ENOMEM, "out of memory");
	}
	n_keys = moe_routestats_rank(ctx->rs, keys, nk);
	for (uint32_t i = 0; i < n_keys && !ret; i++) {
		uint32_t l = keys[i] / ne, e = keys[i] % ne;

		if (!ctx->layers[l].is_moe || !moe_cache_free_slots(ctx->cache, l, e))
			continue;
		while ((ret = moe_cache_acquire(ctx->cache, l, e, 0, &slots[n])) == -EAGAIN) {
			ret = moe_cache_wait(ctx->cache);
			if (ret < 0)
				break;
		}
		if (ret < 0)
			break;
		ret = 0;
		if (held < ctx->par.pin_hot && moe_cache_hold(ctx->cache, slots[n]))
			held++;
		n++;
	}
	for (uint32_t i = 0; i < n; i++) {
		int r;

		while (!(r = moe_cache_ready(ctx->cache, slots[i])))
			if ((r = moe_cache_wait(ctx->cache)) < 0)
				break;
		if (r < 0 && !ret)
			ret = r;
		moe_cache_release(ctx->cache, slots[i]);
	}
	if (!ret)
		ret = ctx->be->ops->sync(ctx->be);
	free(keys);
	free(slots);
	return ret;
}

/*
 * Routing statistics: recorded always, loaded from and saved to the state
 * directory when there is one.  A file that cannot be trusted is ignored
 * with a warning: the run starts without it and replaces it when it ends.
 */
static int routing_stats(struct moe_ctx *ctx, bool *loaded)
{
	uint32_t L = ctx->hp.n_layer;
	bool *routed = malloc(sizeof(*routed) * L);
	char path[4096];
	int ret;

	*loaded = false;
	if (!routed)
		return moe_err(ENOMEM, "out of memory");
	for (uint32_t l = 0; l < L; l++)
		routed[l] = ctx->layers[l].is_moe;
	ret = moe_routestats_create(L, ctx->hp.n_expert, routed, &ctx->rs);
	free(routed);
	if (ret < 0 || !ctx->par.state_dir)
		return ret;
	ret = moe_routestats_path(ctx->model, ctx->par.state_dir, path, sizeof(path));
	if (ret < 0)
		return ret;
	ctx->stats_path = strdup(path);
	if (!ctx->stats_path)
		return moe_err(ENOMEM, "out of memory");
	moe_model_identity(ctx->model, &ctx->rs->model_bytes, &ctx->rs->model_hash);
	{
		struct moe_routestats *rs;

		ret = moe_routestats_load(path, ctx->model, &rs);
		if (ret == 0) {
			moe_routestats_destroy(ctx->rs);
			ctx->rs = rs;
			*loaded = rs->tokens > 0;
			moe_log(MOE_LOG_INFO, "%s: routing statistics of %llu tokens", path,
				(unsigned long long)rs->tokens);
		} else if (ret != -ENOENT) {
			moe_log(MOE_LOG_WARN, "ignoring the saved routing statistics: %s (they are "
				"replaced when this run ends)", moe_errmsg());
		}
	}
	return 0;
}

/* Pinned host memory for the inputs of a step and the routing downloads. */
static int host_buffers(struct moe_ctx *ctx)
{
	uint64_t B = ctx->n_batch, K = ctx->max_used, ne = MOE_MAX(ctx->hp.n_expert, 1u);
	uint64_t bytes = B * 20 + 2 * B * K * 4 + B * ne * 4 + B * K * ctx->spec_depth * 4;
	uint8_t *p;
	int ret = ctx->be->ops->host_alloc(ctx->be, bytes, &ctx->hbuf);

	if (ret < 0)
		return ret;
	p = ctx->hbuf;
	ctx->h_tok = (int32_t *)p;
	ctx->h_pos = ctx->h_tok + B;
	ctx->h_seq = ctx->h_pos + B;
	ctx->h_rows = ctx->h_seq + B;
	ctx->h_tscale = (float *)(ctx->h_rows + B);
	ctx->h_sel = (int32_t *)(ctx->h_tscale + B);
	ctx->h_ents = ctx->h_sel + B * K;
	ctx->h_rlog = (float *)(ctx->h_ents + B * K);
	ctx->h_spec = (int32_t *)(ctx->h_rlog + B * ne);
	return 0;
}

static void describe(struct moe_ctx *ctx)
{
	const struct moe_plan *p = &ctx->lay.plan;
	char a[32], b[32], c[32], d[32], e[32], f[32];

	moe_fmt_bytes(a, sizeof(a), p->vram_budget);
	moe_fmt_bytes(b, sizeof(b), p->resident_bytes);
	moe_fmt_bytes(c, sizeof(c), p->kv_bytes);
	moe_fmt_bytes(d, sizeof(d), p->scratch_bytes + p->workspace_bytes);
	moe_fmt_bytes(e, sizeof(e), p->n_slots ? p->slot_bytes / p->n_slots : 0);
	moe_fmt_bytes(f, sizeof(f), p->staging_bytes);
	snprintf(ctx->desc, sizeof(ctx->desc), "%s backend, %d threads, budget %s: resident %s, "
		 "KV %s (%u positions, %s), scratch %s, %u expert slots x %s for %u experts; "
		 "staging %s and %u host-cache slots outside the budget; io: %s",
		 ctx->be->ops->name, moe_threadpool_size(ctx->pool),
		 p->vram_budget ? a : "unlimited", b, c, ctx->n_ctx, moe_type_name(p->kv_type), d,
		 p->n_slots, e, p->n_experts, f, p->n_host_slots, moe_io_describe(ctx->io));
}

/*
 * Whether the page cache holds nearly all of @path (9 pages in 10): mincore()
 * over a mapping that is never touched, so nothing is read to find out.
 */
static bool file_cached(const char *path)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint64_t n, in = 0;
	unsigned char *vec;
	struct stat st;
	void *map;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return false;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 || pg <= 0) {
		close(fd);
		return false;
	}
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return false;
	n = ((uint64_t)st.st_size + (uint64_t)pg - 1) / (uint64_t)pg;
	vec = malloc(n);
	if (vec && !mincore(map, (size_t)st.st_size, vec))
		for (uint64_t i = 0; i < n; i++)
			in += vec[i] & 1;
	free(vec);
	munmap(map, (size_t)st.st_size);
	return in * 10 >= n * 9;
}

static int setup(struct moe_ctx *ctx)
{
	const struct moe_ctx_params *par = &ctx->par;
	const struct moe_plan *p = &ctx->lay.plan;
	struct moe_backend_params bp = { .budget = par->vram_bytes, .pool = ctx->pool };
	const char *guard = getenv("MOE_BACKEND_GUARD");
	struct moe_io_params io = par->io;
	bool loaded = false;
	int ret;

	ctx->spec_depth = ctx->lay.spec_depth;
	if (guard && *guard && strcmp(guard, "0"))
		bp.flags |= MOE_BE_F_GUARD;
	ret = moe_backend_create(ctx->lay.desc, &bp, &ctx->be);
	if (ret < 0)
		return ret;
	ctx->be->ops->mem_info(ctx->be, &ctx->mem_before);
	/*
	 * On the CPU backend the resident tensors live in memory the model's
	 * contexts share (engine/share.c): the context's own allocation leaves
	 * them out.  The guarded test mode keeps everything in its arena.
	 */
	if (!strcmp(ctx->be->ops->name, "cpu") && !(bp.flags & MOE_BE_F_GUARD)) {
		uint64_t end;

		ctx->share_skip = moe_share_prefix(&ctx->lay, ctx->hp.n_layer, &end);
	}
	ret = ctx->be->ops->alloc(ctx->be, p->device_bytes - ctx->share_skip, &ctx->arena_mem);
	if (ret < 0)
		return moe_err_prefix(ret, "device memory of the plan (%llu bytes)",
				      (unsigned long long)(p->device_bytes - ctx->share_skip));
	ctx->arena = ctx->arena_mem - ctx->share_skip;
	for (int i = 0; i < PB_COUNT; i++)
		ctx->buf[i] = ctx->arena + ctx->lay.buf_off[i];
	ret = ctx->be->ops->set_workspace(ctx->be, ctx->arena + ctx->lay.ws_off,
					  p->workspace_bytes);
	ret = ret ? ret : host_buffers(ctx);
	ret = ret ? ret : ctx->be->ops->event_create(ctx->be, &ctx->ev_sel);
	ret = ret ? ret : ctx->be->ops->event_create(ctx->be, &ctx->ev_spec);
	if (ret < 0)
		return ret;
	ctx->res = calloc(ctx->lay.n_tensors ? ctx->lay.n_tensors : 1, sizeof(*ctx->res));
	ctx->layers = calloc(ctx->hp.n_layer, sizeof(*ctx->layers));
	ctx->exp_off = calloc(ctx->hp.n_expert + 1, sizeof(int32_t));
	ctx->exp_fill = calloc(ctx->hp.n_expert + 1, sizeof(int32_t));
	ctx->exp_state = calloc(ctx->hp.n_expert + 1, 1);
	ctx->exp_slot = calloc(ctx->hp.n_expert + 1, sizeof(uint32_t));
	ctx->ffn_list = calloc(ctx->hp.n_expert + 1, sizeof(*ctx->ffn_list));
	ctx->used_slots = calloc(ctx->hp.n_expert + 1, sizeof(uint32_t));
	ctx->n_logits = ctx->n_batch;
	/* pinned: the logits' download is DMA straight into them, not staged by the driver */
	ret = ctx->be->ops->host_alloc(ctx->be, sizeof(float) * ctx->n_logits * ctx->hp.n_vocab,
				       (void **)&ctx->logits);
	if (ret < 0)
		return moe_err_prefix(ret, "memory for %u x %u logits", ctx->n_logits,
				      ctx->hp.n_vocab);
	ctx->k_layer = calloc(ctx->hp.n_layer, sizeof(*ctx->k_layer));
	ctx->k_cache = calloc(ctx->hp.n_layer, sizeof(*ctx->k_cache));
	ctx->dense_streamed = calloc(ctx->hp.n_layer, 1);
	ctx->layer_stall = calloc(ctx->hp.n_layer, sizeof(*ctx->layer_stall));
	ctx->h_prev = calloc((size_t)ctx->n_batch * ctx->max_used, sizeof(*ctx->h_prev));
	ctx->ids_union = calloc(ctx->hp.n_expert + 1, sizeof(*ctx->ids_union));
	ctx->chosen = calloc(ctx->hp.n_expert + 1, 1);
	if (!ctx->res || !ctx->layers || !ctx->exp_off || !ctx->exp_fill || !ctx->exp_state ||
	    !ctx->exp_slot || !ctx->ffn_list || !ctx->used_slots || !ctx->logits ||
	    !ctx->k_layer || !ctx->k_cache || !ctx->dense_streamed || !ctx->layer_stall ||
	    !ctx->h_prev || !ctx->ids_union || !ctx->chosen)
		return moe_err(ENOMEM, "out of memory");
	/* the staging pool is pinned memory outside the budget: the plan sized it */
	if (!io.staging_bytes)
		io.staging_bytes = p->staging_bytes;
	/*
	 * Every expert fits the CPU backend's memory: the whole file is read
	 * once and never again.  When the page cache holds it already, O_DIRECT
	 * would fetch it from the drive a second time; copy it from the cache.
	 */
	if (!strcmp(ctx->be->ops->name, "cpu") && p->all_experts &&
	    io.direct == MOE_IO_DIRECT_AUTO && file_cached(moe_model_path(ctx->model))) {
		io.direct = MOE_IO_DIRECT_OFF;
		moe_log(MOE_LOG_INFO, "%s is in the page cache and every expert fits: reading it "
			"buffered", moe_model_path(ctx->model));
	}
	ret = moe_io_open(moe_model_path(ctx->model), &io, &ctx->io);
	ret = ret ? ret : moe_engine_load(ctx);
	ret = ret ? ret : moe_engine_bind(ctx);
	ret = ret ? ret : moe_ple_init(ctx);
	if (ret < 0)
		return ret;
	for (uint32_t il = 0; il < ctx->hp.n_layer; il++) {
		ctx->k_layer[il] = ctx->layers[il].is_moe ? ctx->layers[il].n_expert_used : 0;
		ctx->k_cache[il] = ctx->layers[il].dense_stream ? 1 : ctx->k_layer[il];
		ctx->dense_streamed[il] = ctx->layers[il].dense_stream;
	}
	if (p->n_experts || p->n_dense_streamed) {
		struct moe_cache_params cp = {
			.model = ctx->model, .be = ctx->be, .io = ctx->io, .layout = &ctx->lay,
			.arena = ctx->arena, .k = ctx->k_cache, .dense = ctx->dense_streamed,
			.hot_max = par->pin_hot, .gds = par->gds,
		};

		ret = p->n_experts ? routing_stats(ctx, &loaded) : 0;
		if (ret < 0)
			return ret;
		{
			const char *pol = par->policy ? par->policy : DEFAULT_POLICY;

			cp.policy = moe_cache_policy_find(pol, &cp.policy_opts);
			if (!cp.policy || cp.policy->offline)
				return moe_err(EINVAL, "%s eviction policy '%s' (the live cache has %s)",
					       cp.policy ? "offline" : "unknown", pol,
					       moe_policy_names());
		}
		cp.stats = loaded ? ctx->rs : NULL;
		cp.hot_after = loaded ? 0 : HOT_AFTER;
		ret = moe_pred_parse(par->prefetch, &ctx->pf);
		if (ret < 0)
			return ret;
		if (ctx->pf.sources && p->n_experts) {
			ret = moe_pred_create(&ctx->pf, ctx->hp.n_layer, ctx->hp.n_expert, ctx->k_layer,
					      ctx->rs, &ctx->pred);
			ctx->pf_prob = calloc((size_t)ctx->pf.depth * ctx->hp.n_expert,
					      sizeof(*ctx->pf_prob));
			ctx->pf_cand = calloc((size_t)ctx->pf.depth * ctx->hp.n_expert,
					      sizeof(*ctx->pf_cand));
			if (!ret && (!ctx->pf_prob || !ctx->pf_cand))
				ret = moe_err(ENOMEM, "out of memory");
			if (ret < 0)
				return ret;
		}
		if (p->n_experts) {
			ctx->pf_req_max = ctx->hp.n_layer * ctx->hp.n_expert;
			ctx->pf_req = calloc(ctx->pf_req_max, sizeof(*ctx->pf_req));
			if (!ctx->pf_req)
				return moe_err(ENOMEM, "out of memory for the prefetch hook's list");
		}
		ret = moe_cache_create(&cp, &ctx->cache);
		if (ret < 0)
			return ret;
		if (!(par->flags & MOE_CTX_LAZY_EXPERTS)) {
			ret = p->all_experts ? warm_all(ctx) : loaded ? warm_popular(ctx) : 0;
			if (ret < 0)
				return moe_err_prefix(ret, "reading the experts");
		}
	}
	ctx->st.n_experts = p->n_experts;
	ctx->be->ops->mem_info(ctx->be, &ctx->mem_after);
	moe_ctx_reset_stats(ctx);
	describe(ctx);
	moe_log(MOE_LOG_INFO, "%s", ctx->desc);
	return 0;
}

int moe_ctx_create(struct moe_model *model, const struct moe_ctx_params *p,
		   struct moe_ctx **out)
{
	struct moe_ctx *ctx;
	int ret;

	if (!model || !out)
		return moe_err(EINVAL, "moe_ctx_create: NULL argument");
	*out = NULL;
	if (!model->arch) {
		const char *name = "?";

		moe_meta_get_str(model, "general.architecture", &name);
		return moe_err(EOPNOTSUPP,
			       "%s: architecture '%s' has no forward pass (supported: %s)",
			       moe_model_path(model), name, moe_arch_list());
	}
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return moe_err(ENOMEM, "out of memory");
	ctx->model = model;
	ctx->arch = model->arch;
	if (p)
		ctx->par = *p;
	else
		moe_ctx_params_init(&ctx->par);
	if (ctx->par.gds > MOE_GDS_OFF) {
		ret = moe_err(EINVAL, "moe_ctx_create: gds %u is none of MOE_GDS_AUTO, _ON, _OFF",
			      ctx->par.gds);
		free(ctx);
		return ret;
	}
	if (ctx->par.flags & ~MOE_CTX_FLAGS_ALL) {
		ret = moe_err(EINVAL, "moe_ctx_create: unknown flags 0x%x",
			      ctx->par.flags & ~MOE_CTX_FLAGS_ALL);
		free(ctx);
		return ret;
	}
	ret = moe_model_hparams(model, &ctx->hp);
	if (ret < 0) {
		free(ctx);
		return ret;
	}
	ret = moe_plan_layout(model, &ctx->par, &ctx->lay);
	if (ret < 0) {
		free(ctx);
		return ret;
	}
	ctx->n_ctx = ctx->lay.plan.n_ctx;
	ctx->n_batch = ctx->lay.plan.n_batch;
	ctx->n_seq = ctx->lay.plan.n_seq;
	ctx->seq_past = calloc(ctx->n_seq, sizeof(*ctx->seq_past));
	if (!ctx->seq_past) {
		moe_plan_layout_free(&ctx->lay);
		free(ctx);
		return moe_err(ENOMEM, "out of memory");
	}
	ctx->max_used = ctx->lay.max_used;
	ctx->softcap = ctx->arch->softcap_default;
	{
		char key[128];
		double v;

		snprintf(key, sizeof(key), "%s.final_logit_softcapping", ctx->hp.arch);
		if (moe_meta_get_f64(model, key, &v) == 0)
			ctx->softcap = (float)v;
	}
	ret = moe_threadpool_create(ctx->par.n_threads, &ctx->pool);
	ret = ret ? ret : setup(ctx);
	if (ret < 0) {
		moe_ctx_destroy(ctx);
		return ret;
	}
	moe_pub_open(ctx);
	*out = ctx;
	return 0;
}

void moe_ctx_destroy(struct moe_ctx *ctx)
{
	if (!ctx)
		return;
	moe_pub_close(ctx);
	moe_ctx_trace_stop(ctx);
	if (ctx->stats_path && ctx->rs && moe_ctx_save_routestats(ctx) < 0)
		moe_log(MOE_LOG_WARN, "routing statistics not saved: %s", moe_errmsg());
	moe_cache_destroy(ctx->cache);
	if (ctx->be) {
		struct moe_backend *be = ctx->be;

		be->ops->sync(be);
		if (ctx->ev_sel)
			be->ops->event_destroy(be, ctx->ev_sel);
		if (ctx->ev_spec)
			be->ops->event_destroy(be, ctx->ev_spec);
		if (ctx->hbuf)
			be->ops->host_free(be, ctx->hbuf);
		if (ctx->logits)
			be->ops->host_free(be, ctx->logits);
		moe_ple_free(ctx);
		be->ops->free(be, ctx->arena_mem);
		moe_backend_destroy(be);
	}
	moe_share_release(ctx);
	moe_io_destroy(ctx->io);
	moe_threadpool_destroy(ctx->pool);
	moe_plan_layout_free(&ctx->lay);
	free(ctx->res);
	free(ctx->layers);
	free(ctx->exp_off);
	free(ctx->exp_fill);
	free(ctx->exp_state);
	free(ctx->exp_slot);
	free(ctx->ffn_list);
	free(ctx->used_slots);
	free(ctx->seq_past);
	free(ctx->k_layer);
	free(ctx->k_cache);
	free(ctx->dense_streamed);
	free(ctx->layer_stall);
	free(ctx->h_prev);
	free(ctx->ids_union);
	free(ctx->chosen);
	free(ctx->pf_prob);
	free(ctx->pf_cand);
	free(ctx->pf_req);
	free(ctx->stats_path);
	moe_pred_destroy(ctx->pred);
	moe_routestats_destroy(ctx->rs);
	free(ctx);
}

/*
 * A rewind of sequence @seq to @pos re-reads positions the sliding-window
 * layers keep in a ring: they must still be there.
 */
static int check_rewind(const struct moe_ctx *ctx, uint32_t seq, uint32_t pos)
{
	uint32_t past = ctx->seq_past[seq];

	for (uint32_t il = 0; il < ctx->hp.n_layer && pos < past; il++) {
		const struct eng_layer *L = &ctx->layers[il];
		uint32_t cells = L->kv.n_cells, window;
		int64_t kept, lo;

		if (cells >= ctx->n_ctx)
			continue;
		window = L->sliding ? ctx->hp.sliding_window :
			 ctx->par.attn_chunk ? ctx->par.attn_chunk : 8192;
		/* the ring holds the last `cells` positions evaluated */
		kept = MOE_MAX(0, (int64_t)past - cells);
		lo = L->sliding ? MOE_MAX(0, (int64_t)pos - window + 1) :
		     (int64_t)pos / window * window;
		if (lo < pos && lo < kept)
			return moe_err(EINVAL, "cannot go back to position %u of sequence %u: layer "
				       "%u keeps only the last %u of the %u positions evaluated "
				       "(window %u); evaluate from position 0 again", pos, seq, il,
				       cells, past, window);
	}
	return 0;
}

/*
 * Check a batch and note, per sequence, where it starts and ends; *n_keep
 * is the number of kept rows.
 */
static int check_batch(struct moe_ctx *ctx, const struct moe_batch *b, uint32_t *start,
		       int32_t *next, uint32_t *n_keep)
{
	uint32_t n_vocab = ctx->hp.n_vocab;

	for (uint32_t s = 0; s < ctx->n_seq; s++)
		next[s] = -1;
	*n_keep = 0;
	for (uint32_t i = 0; i < b->n; i++) {
		int32_t t = b->tokens[i], p = b->pos[i], s = b->seq ? b->seq[i] : 0;

		if (s < 0 || (uint32_t)s >= ctx->n_seq)
			return moe_err(EINVAL, "batch token %u: sequence %d, the context has %u (0..%u)",
				       i, s, ctx->n_seq, ctx->n_seq - 1);
		if (t < 0 || (uint32_t)t >= n_vocab)
			return moe_err(EINVAL, "token id %d (at %u) is out of range: the vocabulary "
				       "has %u tokens (0..%u)", t, i, n_vocab, n_vocab - 1);
		if (p < 0 || (uint32_t)p >= ctx->n_ctx)
			return moe_err(ENOSPC, "context full: position %d does not fit %u cells; "
				       "raise --ctx", p, ctx->n_ctx);
		if (next[s] < 0) {
			if ((uint32_t)p > ctx->seq_past[s])
				return moe_err(EINVAL, "position %d of sequence %d leaves a gap after "
					       "the %u positions evaluated", p, s, ctx->seq_past[s]);
			start[s] = (uint32_t)p;
		} else if (p != next[s]) {
			return moe_err(EINVAL, "batch token %u: sequence %d goes from position %d to "
				       "%d; its tokens must come at consecutive positions", i, s,
				       next[s] - 1, p);
		}
		next[s] = p + 1;
		if (b->logits && b->logits[i])
			(*n_keep)++;
	}
	if (!b->logits)
		for (uint32_t s = 0; s < ctx->n_seq; s++)
			*n_keep += next[s] >= 0;
	for (uint32_t s = 0; s < ctx->n_seq; s++)
		if (next[s] >= 0) {
			int ret = check_rewind(ctx, s, start[s]);

			if (ret < 0)
				return ret;
		}
	return 0;
}

static int eval(struct moe_ctx *ctx, const struct moe_batch *b, bool all)
{
	uint32_t n_vocab = ctx->hp.n_vocab, n_keep = 0, kept = 0;
	uint32_t *start = NULL;
	int32_t *next = NULL, *rows = NULL;
	bool *last = NULL;
	double t0;
	int ret;

	if (!b->n || !b->tokens || !b->pos)
		return moe_err(EINVAL, "moe_ctx_eval: no tokens");
	start = malloc(sizeof(*start) * ctx->n_seq);
	next = malloc(sizeof(*next) * ctx->n_seq);
	rows = malloc(sizeof(*rows) * MOE_MIN(b->n, ctx->n_batch));
	last = calloc(b->n, sizeof(*last));
	if (!start || !next || !rows || !last) {
		ret = moe_err(ENOMEM, "out of memory");
		goto out;
	}
	ret = check_batch(ctx, b, start, next, &n_keep);
	if (ret < 0)
		goto out;
	if (all)
		n_keep = b->n;
	/* without a mask, the last token of each sequence keeps its logits */
	if (!b->logits && !all)
		for (uint32_t i = b->n; i-- > 0;) {
			uint32_t s = b->seq ? (uint32_t)b->seq[i] : 0;

			if (next[s] >= 0 && b->pos[i] == next[s] - 1) {
				last[i] = true;
				next[s] = -1;
			}
		}
	if (n_keep > ctx->n_logits) {
		float *l = NULL;

		/* the old rows need not survive: this eval writes every row it keeps */
		ret = ctx->be->ops->host_alloc(ctx->be, sizeof(float) * (size_t)n_keep * n_vocab,
					       (void **)&l);
		if (ret < 0) {
			moe_err_prefix(ret, "memory for %u x %u logits", n_keep, n_vocab);
			goto out;
		}
		ctx->be->ops->host_free(ctx->be, ctx->logits);
		ctx->logits = l;
		ctx->n_logits = n_keep;
	}
	/* a rewound sequence forgets what came after its first position here */
	for (uint32_t i = 0; i < b->n; i++) {
		uint32_t s = b->seq ? (uint32_t)b->seq[i] : 0;

		ctx->seq_past[s] = MOE_MIN(ctx->seq_past[s], (uint32_t)b->pos[i]);
	}
	t0 = moe_now();
	moe_pub_busy(ctx, true);
	for (uint32_t done = 0; done < b->n && !ret; done += ctx->n_batch) {
		uint32_t m = MOE_MIN(ctx->n_batch, b->n - done), n_rows = 0;

		for (uint32_t i = 0; i < m; i++)
			if (all || (b->logits ? b->logits[done + i] != 0 : last[done + i]))
				rows[n_rows++] = (int32_t)i;
		ret = moe_forward(ctx, b->tokens + done, b->pos + done, b->seq ? b->seq + done : NULL,
				  m, n_rows == m ? NULL : rows, n_rows,
				  ctx->logits + (size_t)kept * n_vocab);
		ctx->clock += m;
		kept += n_rows;
		if (!ret)
			for (uint32_t i = done; i < done + m; i++) {
				uint32_t s = b->seq ? (uint32_t)b->seq[i] : 0;

				ctx->seq_past[s] = (uint32_t)b->pos[i] + 1;
			}
		moe_pub_update(ctx, false);
	}
	ctx->n_past = ctx->seq_past[0];
	if (b->n == 1) {
		ctx->st.decode_tokens++;
		ctx->st.decode_s += moe_now() - t0;
	} else {
		ctx->st.prefill_tokens += b->n;
		ctx->st.prefill_s += moe_now() - t0;
	}
	moe_pub_busy(ctx, false);
out:
	free(start);
	free(next);
	free(rows);
	free(last);
	return ret;
}

int moe_ctx_eval_batch(struct moe_ctx *ctx, const struct moe_batch *b)
{
	if (!ctx || !b)
		return moe_err(EINVAL, "moe_ctx_eval_batch: NULL argument");
	return eval(ctx, b, false);
}

int moe_ctx_eval(struct moe_ctx *ctx, const int32_t *tokens, uint32_t n, uint32_t pos,
		 uint32_t flags)
{
	struct moe_batch b = { .tokens = tokens, .n = n };
	int32_t *posv;
	int ret;

	if (!n || !tokens)
		return moe_err(EINVAL, "moe_ctx_eval: no tokens");
	if (flags & ~MOE_EVAL_ALL_LOGITS)
		return moe_err(EINVAL, "moe_ctx_eval: unknown flags 0x%x",
			       flags & ~MOE_EVAL_ALL_LOGITS);
	if (pos > ctx->seq_past[0])
		return moe_err(EINVAL, "moe_ctx_eval: position %u leaves a gap after the %u "
			       "positions evaluated", pos, ctx->seq_past[0]);
	if ((uint64_t)pos + n > ctx->n_ctx)
		return moe_err(ENOSPC, "context full: positions %u..%u do not fit %u cells; "
			       "raise --ctx", pos, pos + n - 1, ctx->n_ctx);
	posv = malloc(sizeof(*posv) * n);
	if (!posv)
		return moe_err(ENOMEM, "out of memory");
	for (uint32_t i = 0; i < n; i++)
		posv[i] = (int32_t)(pos + i);
	b.pos = posv;
	ret = eval(ctx, &b, flags & MOE_EVAL_ALL_LOGITS);
	free(posv);
	return ret;
}

int moe_ctx_seq_pos(const struct moe_ctx *ctx, uint32_t seq)
{
	if (seq >= ctx->n_seq)
		return moe_err(EINVAL, "sequence %u: the context has %u (moe_ctx_params.n_seq)",
			       seq, ctx->n_seq);
	return (int)ctx->seq_past[seq];
}

const float *moe_ctx_logits(const struct moe_ctx *ctx, uint32_t i)
{
	if (i >= ctx->n_logits)
		return NULL;
	return ctx->logits + (size_t)i * ctx->hp.n_vocab;
}

uint32_t moe_ctx_n_vocab(const struct moe_ctx *ctx)
{
	return ctx->hp.n_vocab;
}

uint32_t moe_ctx_n_ctx(const struct moe_ctx *ctx)
{
	return ctx->n_ctx;
}

uint32_t moe_ctx_n_past(const struct moe_ctx *ctx)
{
	return ctx->n_past;
}

const struct moe_plan *moe_ctx_plan(const struct moe_ctx *ctx)
{
	return &ctx->lay.plan;
}

const char *moe_ctx_backend(const struct moe_ctx *ctx)
{
	return ctx->be->ops->name;
}

int moe_ctx_get_stats(const struct moe_ctx *ctx, struct moe_ctx_stats *out)
{
	const struct moe_plan *p = &ctx->lay.plan;
	struct moe_ctx_stats s = ctx->st;
	struct moe_io_stats io;
	struct moe_be_mem mem;

	if (ctx->cache) {
		struct moe_cache_stats cs;

		moe_cache_get_stats(ctx->cache, &cs);
		s.expert_hits = cs.hits;
		s.expert_misses = cs.misses;
		s.expert_evictions = cs.evictions;
		s.expert_host_hits = cs.host_hits;
		s.host_cache_bytes = cs.host_bytes;
		s.stall_s = cs.stall_s;
		s.prefetches = cs.prefetches;
		s.prefetch_used = cs.prefetch_used;
		s.prefetch_cancelled = cs.prefetch_cancelled;
		s.prefetch_bytes = cs.prefetch_bytes;
		s.prefetch_unused_bytes = cs.prefetch_unused_bytes;
		if (cs.prefetches > cs.prefetch_cancelled)
			s.prefetch_precision = (double)cs.prefetch_used /
					       (cs.prefetches - cs.prefetch_cancelled);
		if (cs.prefetch_used + cs.misses)
			s.prefetch_recall = (double)cs.prefetch_used / (cs.prefetch_used + cs.misses);
		s.n_slots = cs.n_slots;
		s.slot_bytes = cs.n_slots ? cs.slot_bytes / cs.n_slots : 0;
		/* the streamed dense FFNs' share of the cache counters is their own */
		for (uint32_t il = 0; il < ctx->hp.n_layer; il++) {
			uint64_t h, m, pu;

			if (!ctx->layers[il].dense_stream)
				continue;
			moe_cache_layer_stats(ctx->cache, il, &h, &m, &pu);
			s.dense_hits += h;
			s.dense_misses += m;
			s.dense_prefetch_used += pu;
		}
		s.expert_hits -= s.dense_hits;
		s.expert_misses -= s.dense_misses;
	}
	s.staging_bytes = p->staging_bytes;
	s.hit_rate = s.expert_hits + s.expert_misses ?
		     (double)s.expert_hits / (s.expert_hits + s.expert_misses) : 1.0;
	moe_io_get_stats(ctx->io, &io);
	s.bytes_read = io.bytes - ctx->io_base.bytes;
	s.read_s = io.busy_s - ctx->io_base.busy_s;
	s.bytes_copied = io.bytes_copied - ctx->io_base.bytes_copied;
	if (ctx->cache) {
		struct moe_cache_stats cs;

		/* reads straight into device memory do not pass the I/O engine */
		moe_cache_get_stats(ctx->cache, &cs);
		s.bytes_read += cs.direct_bytes;
		s.read_s += cs.direct_s;
	}
	s.read_gbps = s.read_s > 0 ? s.bytes_read / s.read_s / 1e9 : 0;
	s.prefill_tps = s.prefill_s > 0 ? s.prefill_tokens / s.prefill_s : 0;
	s.decode_tps = s.decode_s > 0 ? s.decode_tokens / s.decode_s : 0;
	ctx->be->ops->mem_info(ctx->be, &mem);
	s.vram_budget = ctx->par.vram_bytes;
	/* as the plan counts them: the shared resident tensors are in every budget */
	s.vram_used = mem.used + (ctx->share ? ctx->share_skip : 0);
	s.vram_peak = mem.peak + (ctx->share ? ctx->share_skip : 0);
	s.resident_bytes = p->resident_bytes;
	s.resident_shared = moe_share_bytes(ctx);
	s.kv_bytes = p->kv_bytes;
	s.scratch_bytes = p->scratch_bytes + p->workspace_bytes;
	s.host_bytes = sizeof(float) * (uint64_t)ctx->n_logits * ctx->hp.n_vocab;
	snprintf(s.backend, sizeof(s.backend), "%s", ctx->be->ops->name);
	s.device_total = ctx->mem_before.device_total;
	s.device_free_before = ctx->mem_before.device_free;
	s.device_free_after = ctx->mem_after.device_free;
	snprintf(s.expert_io, sizeof(s.expert_io), "%s", moe_cache_io_path(ctx->cache));
	*out = s;
	return 0;
}

void moe_ctx_reset_stats(struct moe_ctx *ctx)
{
	struct moe_ctx_stats keep = ctx->st;

	memset(&ctx->st, 0, sizeof(ctx->st));
	ctx->st.n_slots = keep.n_slots;
	ctx->st.staging_bytes = keep.staging_bytes;
	ctx->st.n_experts = keep.n_experts;
	if (ctx->cache) {
		struct moe_cache_stats cs;

		moe_cache_reset_stats(ctx->cache);
		moe_cache_get_stats(ctx->cache, &cs);
		memset(ctx->layer_stall, 0, sizeof(*ctx->layer_stall) * ctx->hp.n_layer);
		ctx->st.n_slots = cs.n_slots;
		ctx->st.staging_bytes = cs.staging_bytes;
	}
	moe_io_get_stats(ctx->io, &ctx->io_base);
}

const char *moe_ctx_describe(const struct moe_ctx *ctx)
{
	return ctx->desc;
}

void moe_ctx_set_route_hook(struct moe_ctx *ctx, moe_route_hook hook, void *arg)
{
	ctx->route_hook = hook;
	ctx->route_arg = arg;
}

void moe_ctx_set_prefetch_hook(struct moe_ctx *ctx, moe_prefetch_hook hook, void *arg)
{
	ctx->pf_hook = hook;
	ctx->pf_arg = arg;
}

int moe_ctx_layer_stats(const struct moe_ctx *ctx, uint32_t layer,
			struct moe_ctx_layer_stats *out)
{
	if (!ctx || !out || layer >= ctx->hp.n_layer)
		return moe_err(EINVAL, "moe_ctx_layer_stats: no layer %u", layer);
	memset(out, 0, sizeof(*out));
	if (ctx->cache)
		moe_cache_layer_stats(ctx->cache, layer, &out->hits, &out->misses,
				      &out->prefetch_used);
	out->stall_s = ctx->layer_stall[layer];
	return 0;
}

const struct moe_routestats *moe_ctx_routestats(const struct moe_ctx *ctx)
{
	return ctx ? ctx->rs : NULL;
}

int moe_ctx_save_routestats(struct moe_ctx *ctx)
{
	int ret;

	if (!ctx || !ctx->rs)
		return moe_err(EINVAL, "moe_ctx_save_routestats: no routing statistics");
	if (!ctx->stats_path)
		return moe_err(ENOENT, "no state directory to save routing statistics in");
	ret = moe_mkdirs(ctx->par.state_dir);
	return ret < 0 ? ret : moe_routestats_save(ctx->rs, ctx->stats_path);
}

int moe_ctx_trace_start(struct moe_ctx *ctx, const char *path, uint32_t flags)
{
	uint64_t rows;
	int ret;

	if (!ctx || !path)
		return moe_err(EINVAL, "moe_ctx_trace_start: NULL argument");
	if (flags & ~MOE_TRACE_FLAGS_ALL)
		return moe_err(EINVAL, "moe_ctx_trace_start: unknown flags 0x%x",
			       flags & ~MOE_TRACE_FLAGS_ALL);
	if (!ctx->rs)
		return moe_err(EINVAL, "%s: a dense model routes nothing to trace",
			       moe_model_path(ctx->model));
	if ((flags & MOE_TRACE_PREDICTIONS) && !ctx->spec_depth)
		return moe_err(EINVAL, "recording predictions needs a prefetcher that makes "
			       "speculative ones: --prefetch spec or mix");
	moe_ctx_trace_stop(ctx);
	rows = (uint64_t)ctx->n_batch * ctx->hp.n_layer;
	ctx->trace_depth = flags & MOE_TRACE_PREDICTIONS ? ctx->spec_depth : 0;
	ctx->trace_ids = malloc(sizeof(int32_t) * rows * ctx->max_used);
	if (ctx->trace_depth)
		ctx->trace_pred = malloc(sizeof(int32_t) * rows * ctx->trace_depth * ctx->max_used);
	if (!ctx->trace_ids || (ctx->trace_depth && !ctx->trace_pred)) {
		moe_ctx_trace_stop(ctx);
		return moe_err(ENOMEM, "out of memory");
	}
	ret = moe_trace_writer_open(path, moe_model_path(ctx->model), ctx->hp.n_layer,
				    ctx->hp.n_expert, ctx->trace_depth, &ctx->trace);
	if (ret < 0)
		moe_ctx_trace_stop(ctx);
	return ret;
}

int moe_ctx_trace_stop(struct moe_ctx *ctx)
{
	int ret;

	if (!ctx)
		return 0;
	ret = moe_trace_writer_close(ctx->trace);
	ctx->trace = NULL;
	free(ctx->trace_ids);
	free(ctx->trace_pred);
	ctx->trace_ids = ctx->trace_pred = NULL;
	ctx->trace_depth = 0;
	return ret;
}
