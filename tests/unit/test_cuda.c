/* SPDX-License-Identifier: MIT */
/*
 * The CUDA backend's host side against the fake driver (tests/simt): error
 * paths with injected faults, budget accounting, events and cross-queue
 * waits (the fake runs queued work only when the host waits, so a missing
 * wait reads stale data), pinned memory, the split-KV attention against the
 * CPU backend, and whole models through the engine on the CUDA backend
 * compared with the CPU backend, resident and streaming.
 */
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda_h2d_bench.h"
#include "backend/cuda_int.h"
#include "cufile_fake.h"
#include "fake_cuda.h"
#include "moe/moe.h"
#include "testutil.h"
#include "util/util.h"

static struct moe_backend *be;

static struct moe_backend *fake_backend(const struct simt_fake_config *cfg, uint64_t budget)
{
	struct moe_backend_params p = { .budget = budget };
	struct moe_cuda_api api;
	struct moe_backend *b = NULL;

	simt_fake_cuda_reset(cfg);
	simt_fake_cuda_api(&api);
	ck_assert_msg(moe_backend_cuda_create_api(&api, &p, &b) == 0, "%s", moe_errmsg());
	ck_assert_ptr_nonnull(b);
	return b;
}

static moe_dptr dalloc(uint64_t bytes)
{
	moe_dptr d = 0;

	ck_assert_msg(be->ops->alloc(be, bytes, &d) == 0, "%s", moe_errmsg());
	return d;
}

#define HAS(s) ck_assert_msg(strstr(moe_errmsg(), (s)) != NULL, "'%s' not in: %s", (s), \
			     moe_errmsg())

START_TEST(cuda_create_errors)
{
	struct simt_fake_config cfg = { .no_device = 1, .quiet = 1 };
	struct moe_backend_params p = { 0 };
	struct moe_cuda_api api;
	struct moe_backend *b = (struct moe_backend *)1;

	simt_fake_cuda_reset(&cfg);
	simt_fake_cuda_api(&api);
	ck_assert_int_eq(moe_backend_cuda_create_api(&api, &p, &b), -ENODEV);
	ck_assert_ptr_null(b);
	HAS("cuInit");
	HAS("creating the CUDA backend");
	/* an older GPU than the kernels are built for */
	cfg = (struct simt_fake_config){ .cc_major = 7, .cc_minor = 5, .quiet = 1 };
	simt_fake_cuda_reset(&cfg);
	simt_fake_cuda_api(&api);
	ck_assert_int_eq(moe_backend_cuda_create_api(&api, &p, &b), -ENODEV);
	HAS("compute capability 7.5");
	/* a failed stream creation releases what was taken */
	simt_fake_cuda_reset(NULL);
	simt_fake_cuda_api(&api);
	ck_assert_int_eq(simt_fake_cuda_fail("cuStreamCreate", 2, CUDA_ERROR_OUT_OF_MEMORY), 0);
	ck_assert_int_eq(moe_backend_cuda_create_api(&api, &p, &b), -ENOMEM);
	HAS("cuStreamCreate");
	/* a device index past the driver's */
	p.device = 3;
	ck_assert_int_eq(moe_backend_cuda_create_api(&api, &p, &b), -ENODEV);
	HAS("device 3");
}
END_TEST

/* Out of device memory, from the driver or the budget: -ENOMEM naming the call and sizes. */
START_TEST(cuda_oom)
{
	struct simt_fake_config cfg = { .total_mem = 8u << 20, .quiet = 1 };
	struct simt_fake_stats st;
	moe_dptr d;

	be = fake_backend(&cfg, 0);
	ck_assert_int_eq(be->ops->alloc(be, 16u << 20, &d), -ENOMEM);
	HAS("cuMemAlloc");
	HAS("memory exhausted");
	ck_assert_uint_eq(d, 0);
	ck_assert_int_eq(simt_fake_cuda_fail("cuMemAlloc", 1, CUDA_ERROR_OUT_OF_MEMORY), 0);
	ck_assert_int_eq(be->ops->alloc(be, 4096, &d), -ENOMEM);
	/* not sticky: the next allocation works */
	d = dalloc(4096);
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.allocs, 1);
	be->ops->free(be, d);
	moe_backend_destroy(be);
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.allocs, 0);
}
END_TEST

/* used/peak count exactly what was allocated; device_free is the driver's cuMemGetInfo. */
START_TEST(cuda_budget_exact)
{
	struct simt_fake_config cfg = { .total_mem = 64u << 20, .granularity = 512 };
	struct moe_be_mem m0, m1;
	struct simt_fake_stats st;
	moe_dptr a, b, c;

	be = fake_backend(&cfg, 1u << 20);
	be->ops->mem_info(be, &m0);
	ck_assert_uint_eq(m0.budget, 1u << 20);
	ck_assert_uint_eq(m0.used, 0);
	ck_assert_uint_eq(m0.device_total, 64u << 20);
	a = dalloc(1000);       /* 1024 charged by the backend (256-byte units), 1024 by the fake */
	b = dalloc(300 << 10);
	be->ops->mem_info(be, &m1);
	ck_assert_uint_eq(m1.used, 1024 + (300 << 10));
	ck_assert_uint_eq(m1.peak, m1.used);
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(m0.device_free - m1.device_free, st.mem_used);
	ck_assert_uint_eq(st.mem_used, 1024 + (300 << 10));
	/* the budget to the byte: what is left fits, one unit more does not */
	ck_assert_int_eq(be->ops->alloc(be, (1u << 20) - m1.used + 1, &c), -ENOMEM);
	HAS("budget");
	c = dalloc((1u << 20) - m1.used);
	be->ops->free(be, a);
	be->ops->free(be, b);
	be->ops->free(be, c);
	be->ops->mem_info(be, &m1);
	ck_assert_uint_eq(m1.used, 0);
	ck_assert_uint_eq(m1.peak, 1u << 20);
	ck_assert_uint_eq(m1.device_free, m0.device_free);
	moe_backend_destroy(be);
}
END_TEST

/* A launch the driver refuses fails that op only; a kernel fault loses the context for good. */
START_TEST(cuda_launch_faults)
{
	struct simt_fake_config cfg = { .quiet = 1 };
	float x[40], y[40];
	struct moe_be_mem mem;
	moe_dptr d, e;

	be = fake_backend(&cfg, 0);
	for (int i = 0; i < 40; i++)
		x[i] = (float)i;
	d = dalloc(sizeof(x));
	ck_assert_int_eq(be->ops->upload(be, MOE_BE_COMPUTE, d, x, sizeof(x)), 0);
	ck_assert_int_eq(simt_fake_cuda_fail("cuLaunchKernel", 1,
					     CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES), 0);
	ck_assert_int_eq(be->ops->scale(be, d, 2.0f, 40), -EIO);
	HAS("moe_k_scale");
	HAS("cuLaunchKernel");
	ck_assert_int_eq(be->ops->scale(be, d, 2.0f, 40), 0);
	ck_assert_int_eq(be->ops->download(be, MOE_BE_COMPUTE, y, d, sizeof(y)), 0);
	ck_assert_int_eq(be->ops->sync(be), 0);
	for (int i = 0; i < 40; i++)
		ck_assert_float_eq(y[i], 2.0f * i);
	/* accepted, then faults on the device: the wait reports it, later calls fail cleanly */
	ck_assert_int_eq(simt_fake_cuda_fail_kernel(1, CUDA_ERROR_ILLEGAL_ADDRESS), 0);
	ck_assert_int_eq(be->ops->add(be, d, d, 40), 0);
	ck_assert_int_eq(be->ops->sync(be), -EIO);
	HAS("illegal address");
	HAS("context is lost");
	ck_assert_int_eq(be->ops->alloc(be, 64, &e), -EIO);
	HAS("lost earlier");
	ck_assert_int_eq(be->ops->scale(be, d, 2.0f, 40), -EIO);
	ck_assert_int_eq(be->ops->upload(be, MOE_BE_COPY, d, x, sizeof(x)), -EIO);
	be->ops->mem_info(be, &mem);
	ck_assert_uint_eq(mem.used, 256);
	be->ops->free(be, d);
	moe_backend_destroy(be);
}
END_TEST

/*
 * The copy queue's upload is ordered before the compute queue's kernel only
 * by the event: with the wait the kernel reads the new data; without it the
 * fake runs the kernel first and it reads the old.
 */
START_TEST(cuda_cross_queue)
{
	float *h, got[64];
	struct moe_be_event *ev;
	moe_dptr d;

	be = fake_backend(NULL, 0);
	ck_assert_int_eq(be->ops->host_alloc(be, sizeof(float) * 64, (void **)&h), 0);
	d = dalloc(sizeof(float) * 64);
	for (int wait = 1; wait >= 0; wait--) {
		for (int i = 0; i < 64; i++)
			h[i] = 1.0f;
		ck_assert_int_eq(be->ops->upload(be, MOE_BE_COMPUTE, d, h, sizeof(float) * 64), 0);
		ck_assert_int_eq(be->ops->sync(be), 0);
		for (int i = 0; i < 64; i++)
			h[i] = 5.0f;
		ck_assert_int_eq(be->ops->event_create(be, &ev), 0);
		ck_assert_int_eq(be->ops->event_query(be, ev), 1);   /* never recorded */
		ck_assert_int_eq(be->ops->upload(be, MOE_BE_COPY, d, h, sizeof(float) * 64), 0);
		ck_assert_int_eq(be->ops->event_record(be, MOE_BE_COPY, ev), 0);
		if (wait)
			ck_assert_int_eq(be->ops->queue_wait(be, MOE_BE_COMPUTE, ev), 0);
		ck_assert_int_eq(be->ops->scale(be, d, 3.0f, 64), 0);
		ck_assert_int_eq(be->ops->download(be, MOE_BE_COMPUTE, got, d, sizeof(got)), 0);
		ck_assert_int_eq(be->ops->event_sync(be, ev), 0);
		ck_assert_int_eq(be->ops->event_query(be, ev), 1);
		ck_assert_int_eq(be->ops->sync(be), 0);
		for (int i = 0; i < 64; i++)
			ck_assert_float_eq(got[i], wait ? 15.0f : 3.0f);
		be->ops->event_destroy(be, ev);
	}
	/* a pending event answers 0 until its work has run */
	ck_assert_int_eq(be->ops->event_create(be, &ev), 0);
	ck_assert_int_eq(be->ops->scale(be, d, 1.0f, 64), 0);
	ck_assert_int_eq(be->ops->event_record(be, MOE_BE_COMPUTE, ev), 0);
	ck_assert_int_eq(be->ops->event_query(be, ev), 0);
	ck_assert_int_eq(be->ops->event_sync(be, ev), 0);
	ck_assert_int_eq(be->ops->event_query(be, ev), 1);
	be->ops->event_destroy(be, ev);
	ck_assert_int_eq(be->ops->upload(be, 2, d, h, 4), -EINVAL);
	be->ops->free(be, d);
	be->ops->host_free(be, h);
	moe_backend_destroy(be);
}
END_TEST

/* The staging pool registered once: its copies are pinned; a refusal says what to raise. */
START_TEST(cuda_host_register)
{
	struct simt_fake_config cfg = { .pinned_limit = 1u << 20, .quiet = 1 };
	struct simt_fake_stats st;
	size_t n = 256u << 10;
	uint8_t *pool = aligned_alloc(4096, n), *big = aligned_alloc(4096, 2u << 20);
	moe_dptr d;

	be = fake_backend(&cfg, 0);
	d = dalloc(n);
	ck_assert_int_eq(be->ops->host_register(be, pool, n), 0);
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.pinned, n);
	memset(pool, 7, n);
	ck_assert_int_eq(be->ops->upload(be, MOE_BE_COPY, d, pool, n), 0);
	ck_assert_int_eq(be->ops->sync(be), 0);
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.pageable_copies, 0);
	ck_assert_uint_eq(st.h2d_bytes, n);
	ck_assert_int_ne(be->ops->host_register(be, big, 2u << 20), 0);
	HAS("cuMemHostRegister");
	HAS("ulimit -l");
	be->ops->host_unregister(be, pool);
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.pinned, 0);
	be->ops->free(be, d);
	moe_backend_destroy(be);
	free(pool);
	free(big);
}
END_TEST

/* One attention problem of cuda_attention_split, on the host. */
struct attn_in {
	uint32_t type, C, H, hkv, D, hv;
	int variant;                /* 0 plain, 1 sinks and a window, 2 latent cache and sinks */
	const float *k, *q, *sinks;
	const int32_t *pos, *allpos;
};

static moe_dptr put(struct moe_backend *x, const void *h, size_t bytes)
{
	moe_dptr d = 0;

	ck_assert_int_eq(x->ops->alloc(x, bytes, &d), 0);
	if (h)
		ck_assert_int_eq(x->ops->upload(x, MOE_BE_COMPUTE, d, h, bytes), 0);
	return d;
}

/* The whole cache stored, two queries attended on @x: their outputs (malloc'd). */
static float *attn_on(struct moe_backend *x, const struct attn_in *in)
{
	uint32_t kvd = in->hkv * in->D;
	uint64_t row = moe_kv_row_bytes(in->type, kvd);
	size_t kn = (size_t)in->C * kvd, on = (size_t)2 * in->H * in->hv;
	struct moe_kv kv = { .type = in->type, .n_cells = in->C, .kv_dim = kvd };
	moe_dptr kd, pd, ad, od, sd, qd;
	struct moe_attn_args a;
	float *out = malloc(sizeof(float) * on);

	kv.k = put(x, NULL, row * in->C);
	kv.v = in->variant == 2 ? 0 : put(x, NULL, row * in->C);
	kd = put(x, in->k, sizeof(float) * kn);
	qd = put(x, in->q, sizeof(float) * 2 * in->H * in->D);
	pd = put(x, in->pos, sizeof(int32_t) * 2);
	ad = put(x, in->allpos, sizeof(int32_t) * in->C);
	od = put(x, NULL, sizeof(float) * on);
	sd = put(x, in->sinks, sizeof(float) * in->H);
	ck_assert_int_eq(x->ops->kv_store(x, &kv, kd, kv.v ? kd : 0, ad, 0, in->C), 0);
	a = (struct moe_attn_args){
		.q = qd, .out = od, .pos = pd, .sinks = in->variant ? sd : 0, .kv = kv,
		.n_tok = 2, .n_head = in->H, .n_head_kv = in->hkv, .head_dim = in->D,
		.head_dim_v = in->variant == 2 ? in->hv : 0,
		.mask = in->variant == 1 ? MOE_MASK_SLIDING : MOE_MASK_CAUSAL,
		.window = in->variant == 1 ? 333 : 0, .scale = 0.125f,
	};
	ck_assert_msg(x->ops->attention(x, &a) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(x->ops->download(x, MOE_BE_COMPUTE, out, od, sizeof(float) * on), 0);
	ck_assert_int_eq(x->ops->sync(x), 0);
	{
		moe_dptr all[] = { kv.k, kv.v, kd, qd, pd, ad, od, sd };

		for (size_t i = 0; i < MOE_ARRAY_SIZE(all); i++)
			x->ops->free(x, all[i]);
	}
	return out;
}

/*
 * Decode over a long cache takes the split-KV path (partial softmaxes and a
 * combine): against the CPU backend for each KV type, with sinks, a window
 * and a latent cache.
 */
START_TEST(cuda_attention_split)
{
	static const uint32_t types[] = { MOE_TYPE_F32, MOE_TYPE_F16, MOE_TYPE_Q8_0 };
	const uint32_t C = 700, H = 4, D = 64;
	struct moe_be_shape sh = { .max_tok = 4, .max_ent = 4, .n_embd = 64, .max_cols = 64,
				   .max_ff = 64, .max_head = H, .max_head_dim = D, .max_ffn = 1,
				   .max_heads_io = 64 };
	struct moe_backend_params cp = { 0 };
	struct moe_backend *cpu;
	int32_t pos[2] = { (int32_t)C - 1, 400 }, allpos[700];
	float *k = malloc(sizeof(float) * C * 2 * D), q[2 * 4 * 64], sinks[4];
	uint64_t rs = 99, ws;

	ck_assert_int_eq(moe_backend_create(&moe_backend_cpu_desc, &cp, &cpu), 0);
	be = fake_backend(NULL, 0);
	ws = be->desc->workspace_bytes(&sh);
	ck_assert_int_eq(be->ops->set_workspace(be, dalloc(ws), ws), 0);
	for (uint32_t i = 0; i < C * 2 * D; i++)
		k[i] = (float)tu_randn(&rs);
	for (size_t i = 0; i < MOE_ARRAY_SIZE(q); i++)
		q[i] = (float)(tu_randn(&rs) * 2);
	for (uint32_t i = 0; i < H; i++)
		sinks[i] = (float)tu_randn(&rs);
	for (uint32_t i = 0; i < C; i++)
		allpos[i] = (int32_t)i;
	for (size_t ti = 0; ti < MOE_ARRAY_SIZE(types); ti++)
		for (int variant = 0; variant < 3; variant++) {
			struct attn_in in = {
				.type = types[ti], .C = C, .H = H, .D = D, .variant = variant,
				.hkv = variant == 2 ? 1 : 2, .hv = variant == 2 ? 32 : D,
				.k = k, .q = q, .sinks = sinks, .pos = pos, .allpos = allpos,
			};
			float *want = attn_on(cpu, &in), *got = attn_on(be, &in);
			const char *tn = moe_type_name(types[ti]);

			for (size_t i = 0; i < (size_t)2 * H * in.hv; i++)
				ck_assert_msg(fabsf(want[i] - got[i]) < 2e-5f,
					      "%s variant %d [%zu]: %g vs %g", tn, variant, i,
					      want[i], got[i]);
			free(want);
			free(got);
		}
	free(k);
	moe_backend_destroy(be);
	moe_backend_destroy(cpu);
}
END_TEST

/* ------------------------------------------------------------ the engine on CUDA */

static void *fake_lib;

/* The fake driver behind libcuda_fake.so, which the backend loads as MOE_CUDA_LIBRARY names. */
static void fake_driver_lib_api(const struct simt_fake_config *cfg,
				const struct moe_cuda_api *over)
{
	static char path[4096];
	const char *build = getenv("MOE_BUILD");
	void (*bind)(const struct moe_cuda_api *);
	struct moe_cuda_api api;
	void *sym;

	snprintf(path, sizeof(path), "%s/tests/libcuda_fake.so", build ? build : "build");
	if (!fake_lib)
		fake_lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	ck_assert_msg(fake_lib != NULL, "%s", dlerror());
	sym = dlsym(fake_lib, "simt_libcuda_bind");
	ck_assert_ptr_nonnull(sym);
	memcpy(&bind, &sym, sizeof(bind));
	simt_fake_cuda_reset(cfg);
	simt_fake_cuda_api(&api);
	bind(over ? over : &api);
	setenv("MOE_CUDA_LIBRARY", path, 1);
}

static void fake_driver_lib(const struct simt_fake_config *cfg)
{
	fake_driver_lib_api(cfg, NULL);
}

/* A context on @backend within @vram, reading @n_staging experts at once (0: the default). */
static struct moe_ctx *ctx_on_staging(struct moe_model *m, const char *backend, uint64_t vram,
				      uint32_t n_staging)
{
	struct moe_ctx_params p;
	struct moe_ctx *ctx = NULL;

	moe_ctx_params_init(&p);
	p.n_threads = 2;
	p.n_ctx = 64;
	p.n_batch = 4;
	p.vram_bytes = vram;
	p.n_staging = n_staging;
	p.backend = backend;
	ck_assert_msg(moe_ctx_create(m, &p, &ctx) == 0, "%s (vram %llu): %s", backend,
		      (unsigned long long)vram, moe_errmsg());
	ck_assert_str_eq(moe_ctx_backend(ctx), backend);
	return ctx;
}

static struct moe_ctx *ctx_on(struct moe_model *m, const char *backend, uint64_t vram)
{
	return ctx_on_staging(m, backend, vram, 0);
}

/* The smallest budget the context takes on @backend, from the error a budget of 1 gives. */
static uint64_t least_vram(struct moe_model *m, const char *backend)
{
	struct moe_ctx_params p;
	struct moe_ctx *ctx = NULL;
	unsigned long long need = 0;
	const char *at;

	moe_ctx_params_init(&p);
	p.n_threads = 2;
	p.n_ctx = 64;
	p.n_batch = 4;
	p.vram_bytes = 1;
	p.backend = backend;
	ck_assert_int_eq(moe_ctx_create(m, &p, &ctx), -ENOMEM);
	at = strstr(moe_errmsg(), "needs at least");
	ck_assert_msg(at && (at = strchr(at, '(')) && sscanf(at, "(%llu bytes)", &need) == 1,
		      "%s", moe_errmsg());
	return need;
}

struct logits {
	float *buf;
	size_t n;
	uint32_t vocab;
};

static int keep(void *arg, const float *lg, uint32_t n_rows, int32_t next)
{
	struct logits *l = arg;

	(void)next;
	memcpy(l->buf + l->n * l->vocab, lg, sizeof(float) * n_rows * l->vocab);
	l->n += n_rows;
	return 0;
}

enum { E2E_PROMPT = 6, E2E_GEN = 3 };

static void run(struct moe_ctx *ctx, struct logits *l)
{
	int32_t tok[E2E_PROMPT];

	l->vocab = moe_ctx_n_vocab(ctx);
	for (int i = 0; i < E2E_PROMPT; i++)
		tok[i] = (int32_t)((i * 37 + 11) % l->vocab);
	l->n = 0;
	l->buf = calloc((size_t)(E2E_PROMPT + E2E_GEN) * l->vocab, sizeof(float));
	ck_assert_msg(moe_ctx_generate(ctx, tok, E2E_PROMPT, E2E_GEN, NULL, MOE_EVAL_ALL_LOGITS,
				       keep, l) == E2E_GEN, "%s", moe_errmsg());
}

struct e2e_arch {
	const char *arch, *extra;
};

static const struct e2e_arch e2e_archs[] = {
	{ "qwen3moe", "" }, { "gpt-oss", "--sliding-window 4" }, { "llama4", "--interleave 2" },
	{ "mixtral", "" }, { "gemma4", "--sliding-window 4" },
};

/*
 * A generated F32 model of @e through the engine on the CUDA backend gives
 * the CPU backend's logits; streaming its experts through a budget that
 * evicts every layer gives the resident run's logits exactly.  With @fake
 * the backend runs over the fake driver (kernels on the emulation), once
 * with queued work run lazily and once at random points; else on the GPU.
 */
static void engine_case(const struct e2e_arch *e, bool fake, const char *type)
{
	char *dir = tu_tmpdir(), path[512], cmd[1024], *out = NULL;
	struct logits cpu, res, str;
	struct moe_ctx_stats st;
	struct moe_model *m;
	struct moe_ctx *ctx;
	uint64_t vram;
	double mx = 0, err = 0;

	snprintf(path, sizeof(path), "%s/%s.gguf", dir, e->arch);
	snprintf(cmd, sizeof(cmd), "%s --arch %s --type %s -o %s -q --layers 2 --vocab 128 "
		 "--expert-ff 64 --embd 64 --experts 8 %s", tu_bin("moe-mkmodel"), e->arch, type,
		 path, e->extra);
	ck_assert_msg(tu_run(cmd, 1, &out) == 0, "%s: %s", cmd, out ? out : "");
	free(out);
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	ctx = ctx_on(m, "cpu", 0);
	run(ctx, &cpu);
	moe_ctx_destroy(ctx);

	if (fake)
		fake_driver_lib(NULL);
	ctx = ctx_on(m, "cuda", 0);
	run(ctx, &res);
	moe_ctx_destroy(ctx);
	ck_assert_uint_eq(res.n, cpu.n);
	for (size_t i = 0; i < res.n * res.vocab; i++) {
		mx = fmax(mx, fabs(cpu.buf[i]));
		err = fmax(err, fabs(cpu.buf[i] - res.buf[i]));
	}
	/*
	 * Quantized weights: the CPU rounds every product's activations to
	 * q8_0/q8_K, the GPU only for decode (to q8_1), so the logits differ by
	 * that rounding (about 0.3% of the largest here); a wrong kernel is off
	 * by the logits' own size.
	 */
	ck_assert_msg(err <= (strcmp(type, "f32") ? 1e-2 : 1e-4) * (1 + mx),
		      "%s %s: CUDA logits off the CPU's by %g (max %g)", e->arch, type, err, mx);

	for (int mode = SIMT_FAKE_LAZY; mode <= (fake ? SIMT_FAKE_RANDOM : SIMT_FAKE_LAZY);
	     mode++) {
		struct simt_fake_config cfg = { .mode = mode, .seed = 7 };

		if (fake)
			fake_driver_lib(&cfg);
		vram = least_vram(m, "cuda");
		ctx = ctx_on(m, "cuda", vram);
		run(ctx, &str);
		moe_ctx_get_stats(ctx, &st);
		ck_assert_uint_gt(st.expert_evictions, 0);
		ck_assert_uint_le(st.vram_used, st.vram_budget);
		ck_assert_str_eq(st.backend, "cuda");
		ck_assert_uint_eq(str.n, res.n);
		ck_assert_msg(!memcmp(str.buf, res.buf, sizeof(float) * res.n * res.vocab),
			      "%s mode %d: streamed logits differ from resident ones", e->arch,
			      mode);
		moe_ctx_destroy(ctx);
		free(str.buf);
	}
	if (fake)
		unsetenv("MOE_CUDA_LIBRARY");
	free(cpu.buf);
	free(res.buf);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}

/* Over the fake driver: the two architectures with the most distinct ops. */
START_TEST(cuda_engine_matches_cpu)
{
	engine_case(&e2e_archs[_i], true, "f32");
}
END_TEST

/*
 * Quantized weights over the fake driver: the matrix kernels of every type
 * the benchmark targets (decode on the q8_1 path, the prompt on the tiled
 * one), through the whole engine.
 */
START_TEST(cuda_engine_quantized_matches_cpu)
{
	static const struct { int arch; const char *type; } c[] = {
		{ 0, "q8_0" }, { 0, "q4_0" }, { 0, "mxfp4" }, { 1, "mxfp4" },
	};

	engine_case(&e2e_archs[c[_i].arch], true, c[_i].type);
}
END_TEST

/* On a real GPU (tests/gpu/check.sh): every architecture of the list. */
START_TEST(cuda_gpu_engine_matches_cpu)
{
	engine_case(&e2e_archs[_i], false, "f32");
}
END_TEST

/*
 * The pipeline as the driver sees it: a layer over the fake's entry points
 * that records the streams, the pinned ranges, every host-to-device copy,
 * event record and cross-stream wait, then forwards the call.
 */
enum { TR_OPS = 1 << 15, TR_PINNED = 256 };
enum tr_kind { TR_H2D, TR_D2H, TR_RECORD, TR_WAIT };

struct tr_op {
	enum tr_kind kind;
	CUstream s;
	CUevent e;
	const void *src;
	size_t bytes;
	bool pinned;            /* the copy's source lay in a pinned range */
	int range;              /* ... which one */
};

static struct {
	struct moe_cuda_api fake;
	CUstream stream[MOE_BE_QUEUES];
	unsigned n_streams;
	struct { const char *p; size_t n; } pin[TR_PINNED];
	unsigned n_pin;
	struct tr_op op[TR_OPS];
	unsigned n_op;
	bool on;
	bool tiled;             /* the prompt's attention looked up the tiled kernel */
} tr;

static int tr_range(const void *p, size_t n)
{
	for (unsigned i = 0; i < tr.n_pin; i++)
		if (tr.pin[i].p && (const char *)p >= tr.pin[i].p &&
		    (const char *)p + n <= tr.pin[i].p + tr.pin[i].n)
			return (int)i;
	return -1;
}

static void tr_add(const struct tr_op *o)
{
	if (tr.on && tr.n_op < TR_OPS)
		tr.op[tr.n_op++] = *o;
}

static void tr_pin(const void *p, size_t n)
{
	if (tr.n_pin < TR_PINNED) {
		tr.pin[tr.n_pin].p = p;
		tr.pin[tr.n_pin++].n = n;
	}
}

static void tr_unpin(const void *p)
{
	for (unsigned i = 0; i < tr.n_pin; i++)
		if (tr.pin[i].p == p)
			tr.pin[i].p = NULL;
}

static CUresult tr_stream_create(CUstream *s, unsigned int flags)
{
	CUresult r = tr.fake.cuStreamCreate(s, flags);

	if (r == CUDA_SUCCESS && tr.n_streams < MOE_BE_QUEUES)
		tr.stream[tr.n_streams++] = *s;     /* the backend makes compute, then copy */
	return r;
}

static CUresult tr_host_register(void *p, size_t n, unsigned int flags)
{
	CUresult r = tr.fake.cuMemHostRegister(p, n, flags);

	if (r == CUDA_SUCCESS)
		tr_pin(p, n);
	return r;
}

static CUresult tr_host_unregister(void *p)
{
	tr_unpin(p);
	return tr.fake.cuMemHostUnregister(p);
}

static CUresult tr_alloc_host(void **p, size_t n)
{
	CUresult r = tr.fake.cuMemAllocHost(p, n);

	if (r == CUDA_SUCCESS)
		tr_pin(*p, n);
	return r;
}

static CUresult tr_free_host(void *p)
{
	tr_unpin(p);
	return tr.fake.cuMemFreeHost(p);
}

static CUresult tr_h2d(CUdeviceptr d, const void *src, size_t n, CUstream s)
{
	int i = tr_range(src, n);

	tr_add(&(struct tr_op){ .kind = TR_H2D, .s = s, .src = src, .bytes = n,
				.pinned = i >= 0, .range = i });
	return tr.fake.cuMemcpyHtoDAsync(d, src, n, s);
}

static CUresult tr_d2h(void *dst, CUdeviceptr d, size_t n, CUstream s)
{
	int i = tr_range(dst, n);

	tr_add(&(struct tr_op){ .kind = TR_D2H, .s = s, .src = dst, .bytes = n,
				.pinned = i >= 0, .range = i });
	return tr.fake.cuMemcpyDtoHAsync(dst, d, n, s);
}

static CUresult tr_record(CUevent e, CUstream s)
{
	tr_add(&(struct tr_op){ .kind = TR_RECORD, .s = s, .e = e });
	return tr.fake.cuEventRecord(e, s);
}

static CUresult tr_wait(CUstream s, CUevent e, unsigned int flags)
{
	tr_add(&(struct tr_op){ .kind = TR_WAIT, .s = s, .e = e });
	return tr.fake.cuStreamWaitEvent(s, e, flags);
}

static CUresult tr_get_function(CUfunction *f, CUmodule m, const char *name)
{
	tr.tiled |= !strcmp(name, "moe_k_attention_tiled");
	return tr.fake.cuModuleGetFunction(f, m, name);
}

/* The fake driver behind MOE_CUDA_LIBRARY, every call of interest recorded once tr.on. */
static void trace_driver(const struct simt_fake_config *cfg)
{
	struct moe_cuda_api api;

	memset(&tr, 0, sizeof(tr));
	simt_fake_cuda_reset(cfg);
	simt_fake_cuda_api(&tr.fake);
	api = tr.fake;
	api.cuStreamCreate = tr_stream_create;
	api.cuMemHostRegister = tr_host_register;
	api.cuMemHostUnregister = tr_host_unregister;
	api.cuMemAllocHost = tr_alloc_host;
	api.cuMemFreeHost = tr_free_host;
	api.cuMemcpyHtoDAsync = tr_h2d;
	api.cuMemcpyDtoHAsync = tr_d2h;
	api.cuEventRecord = tr_record;
	api.cuStreamWaitEvent = tr_wait;
	api.cuModuleGetFunction = tr_get_function;
	fake_driver_lib_api(cfg, &api);
}

static struct moe_model *small_model(const char *dir, const char *type)
{
	char path[512], cmd[1024], *out = NULL;
	struct moe_model *m;

	snprintf(path, sizeof(path), "%s/m.gguf", dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --type %s -o %s -q --layers 2 --vocab 128 "
		 "--expert-ff 64 --embd 64 --experts 8", tu_bin("moe-mkmodel"), type, path);
	ck_assert_msg(tu_run(cmd, 1, &out) == 0, "%s: %s", cmd, out ? out : "");
	free(out);
	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	return m;
}

/*
 * The pipeline, checked on the driver's calls during a streamed
 * generation: expert uploads go on the copy stream from pinned memory, one per matrix of each miss (the
 * resident weights are not uploaded again), from staging buffers that are
 * reused (so recycled once their copy event completed) across more misses
 * than there are buffers; the compute stream waits only on events the copy
 * stream recorded, at most one per expert a layer uses; and the device
 * memory the driver reports taken is the budget's count.  The prompt's
 * attention runs on the tiled kernel.  Fully resident,
 * generation uploads nothing and waits on nothing.
 */
START_TEST(cuda_pipeline_calls)
{
	char *dir = tu_tmpdir();
	struct moe_model *m = small_model(dir, "f32");
	struct simt_fake_config cfg = { .granularity = 512 };
	unsigned copies = 0, waits = 0, refills, used[TR_PINNED] = { 0 }, n_used = 0, pageable;
	unsigned logit_rows;
	struct simt_fake_stats fs;
	struct moe_ctx_stats st;
	struct logits l;
	struct moe_ctx *ctx;
	uint64_t vram = 0;

	for (int pass = 0; pass < 2; pass++) {
		trace_driver(&cfg);
		if (!pass)
			vram = least_vram(m, "cuda");
		/* two staging buffers (the model's k): each miss past them reuses one */
		ctx = ctx_on_staging(m, "cuda", pass ? 0 : vram, 2);
		ck_assert_uint_eq(tr.n_streams, MOE_BE_QUEUES);
		tr.on = true;
		run(ctx, &l);
		tr.on = false;
		free(l.buf);
		ck_assert_int_eq(moe_ctx_get_stats(ctx, &st), 0);
		simt_fake_cuda_stats(&fs);
		ck_assert_str_eq(st.expert_io, "staging");
		ck_assert(tr.tiled);
		ck_assert_uint_eq(st.prefetches, 0);
		/* the driver's count of what the context took is the budget's, to its granularity */
		ck_assert_uint_eq(st.device_total, 256u << 20);
		ck_assert_uint_eq(st.device_free_before - st.device_free_after,
				  MOE_ALIGN_UP(st.vram_used, 512));
		ck_assert_uint_le(st.vram_peak, pass ? UINT64_MAX : vram);
		copies = waits = refills = n_used = pageable = logit_rows = 0;
		memset(used, 0, sizeof(used));
		for (unsigned i = 0; i < tr.n_op; i++) {
			const struct tr_op *o = &tr.op[i];

			if (o->kind == TR_D2H) {
				/* the logits (and the routing) land in pinned memory */
				ck_assert_msg(o->pinned, "download %u of %zu bytes into pageable "
					      "memory", i, o->bytes);
				logit_rows += o->bytes % (sizeof(float) * l.vocab) ? 0 :
					      o->bytes / (sizeof(float) * l.vocab);
			} else if (o->kind == TR_H2D && o->s != tr.stream[MOE_BE_COPY]) {
				/*
				 * the matrix ops' descriptors: a few hundred bytes the driver
				 * stages at the call, so their host buffer is free at once
				 */
				ck_assert_uint_lt(o->bytes, 64u << 10);
				pageable += !o->pinned;
			} else if (o->kind == TR_H2D) {
				ck_assert_msg(o->pinned, "upload %u of %zu bytes on the copy stream "
					      "from pageable memory", i, o->bytes);
				copies++;
				n_used += !used[o->range]++;
			} else if (o->kind == TR_WAIT) {
				bool copy = o->s == tr.stream[MOE_BE_COPY];
				unsigned j = i;

				while (j-- > 0)
					if (tr.op[j].kind == TR_RECORD && tr.op[j].e == o->e)
						break;
				ck_assert_msg(j < i, "a stream waits on an event never recorded");
				/*
				 * compute waits for uploads; copy waits, before refilling a
				 * slot, for the compute work that read it
				 */
				ck_assert_ptr_eq(tr.op[j].s, tr.stream[copy ? MOE_BE_COMPUTE :
								      MOE_BE_COPY]);
				refills += copy;
				waits += !copy;
			}
		}
		ck_assert_uint_eq(fs.pageable_copies, pageable);
		/* every logit row was downloaded (MOE_EVAL_ALL_LOGITS) */
		ck_assert_uint_ge(logit_rows, l.n);
		if (pass) {
			ck_assert_uint_eq(st.expert_misses, 0);
			ck_assert_uint_eq(copies, 0);
			ck_assert_uint_eq(waits, 0);
			ck_assert_uint_eq(refills, 0);
		} else {
			ck_assert_uint_gt(refills, 0);
			ck_assert_uint_le(refills, st.expert_misses);
			ck_assert_uint_gt(st.expert_evictions, 0);
			ck_assert_uint_eq(copies, 3 * st.expert_misses);
			ck_assert_uint_le(waits, st.expert_hits + st.expert_misses);
			ck_assert_uint_gt(waits, 0);
			ck_assert_uint_le(n_used, moe_ctx_plan(ctx)->n_staging);
			ck_assert_uint_gt(st.expert_misses, moe_ctx_plan(ctx)->n_staging);
		}
		moe_ctx_destroy(ctx);
		simt_fake_cuda_stats(&fs);
		ck_assert_uint_eq(fs.allocs, 0);
		ck_assert_uint_eq(fs.pinned, 0);
	}
	unsetenv("MOE_CUDA_LIBRARY");
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * Faults under the engine: the driver out of memory at creation, a launch
 * it refuses mid-generation, a kernel fault that loses the context.  Each
 * is an error naming the call, never a crash, and destroying the context
 * gives back every allocation and pinned range.
 */
START_TEST(cuda_engine_faults)
{
	char *dir = tu_tmpdir();
	struct moe_model *m = small_model(dir, "q8_0");
	struct simt_fake_config cfg = { .quiet = 1 };
	struct moe_ctx_params p;
	struct simt_fake_stats fs;
	struct moe_ctx *ctx = NULL;
	int32_t tok[4] = { 1, 2, 3, 4 };

	fake_driver_lib(&cfg);
	moe_ctx_params_init(&p);
	p.n_ctx = 64;
	p.n_batch = 4;
	p.backend = "cuda";
	ck_assert_int_eq(simt_fake_cuda_fail("cuMemAlloc", 1, CUDA_ERROR_OUT_OF_MEMORY), 0);
	ck_assert_int_eq(moe_ctx_create(m, &p, &ctx), -ENOMEM);
	ck_assert_ptr_null(ctx);
	HAS("cuMemAlloc");
	HAS("lower --vram");
	simt_fake_cuda_stats(&fs);
	ck_assert_uint_eq(fs.allocs, 0);
	ck_assert_uint_eq(fs.pinned, 0);

	/* refused launch: that step fails, the context still works */
	ctx = ctx_on(m, "cuda", 0);
	ck_assert_int_eq(simt_fake_cuda_fail("cuLaunchKernel", 3,
					     CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES), 0);
	ck_assert_int_lt(moe_ctx_eval(ctx, tok, 4, 0, 0), 0);
	HAS("cuLaunchKernel");
	HAS("kernel moe_");
	moe_ctx_destroy(ctx);
	ctx = ctx_on(m, "cuda", 0);
	ck_assert_msg(moe_ctx_eval(ctx, tok, 4, 0, 0) == 0, "%s", moe_errmsg());

	/* a kernel fault: lost for good, said so at once, and destroyed cleanly */
	ck_assert_int_eq(simt_fake_cuda_fail_kernel(2, CUDA_ERROR_ILLEGAL_ADDRESS), 0);
	ck_assert_int_lt(moe_ctx_eval(ctx, tok, 1, moe_ctx_n_past(ctx), 0), 0);
	HAS("context is lost");
	ck_assert_int_lt(moe_ctx_eval(ctx, tok, 1, moe_ctx_n_past(ctx), 0), 0);
	HAS("lost earlier");
	moe_ctx_destroy(ctx);
	simt_fake_cuda_stats(&fs);
	ck_assert_uint_eq(fs.allocs, 0);
	ck_assert_uint_eq(fs.pinned, 0);

	/* the same on a lost device (an ECC error between steps) */
	fake_driver_lib(&cfg);
	ctx = ctx_on(m, "cuda", 0);
	simt_fake_cuda_lose_context(CUDA_ERROR_ECC_UNCORRECTABLE);
	ck_assert_int_lt(moe_ctx_eval(ctx, tok, 1, moe_ctx_n_past(ctx), 0), 0);
	HAS("uncorrectable");
	moe_ctx_destroy(ctx);
	simt_fake_cuda_stats(&fs);
	ck_assert_uint_eq(fs.allocs, 0);
	ck_assert_uint_eq(fs.pinned, 0);
	unsetenv("MOE_CUDA_LIBRARY");
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * moe-bench gpu-h2d's measurement over the fake driver: both rates, the
 * data in the last slot, a failing copy reported; the tool without a
 * driver says so and exits 0.
 */
START_TEST(cuda_h2d_bench)
{
	struct moe_cuda_h2d_bench_cfg cfg = { .expert_bytes = 3 * (64u << 10), .n_experts = 10,
					      .n_slots = 3, .n_staging = 2, .rounds = 2 };
	struct moe_cuda_h2d_bench_res res;
	struct simt_fake_config fc = { .quiet = 1 };
	struct simt_fake_stats st;
	struct moe_cuda_api api;
	char dev[64], cmd[1024], *out = NULL;

	simt_fake_cuda_reset(&fc);
	simt_fake_cuda_api(&api);
	ck_assert_msg(moe_cuda_h2d_bench(&api, &cfg, &res, dev, sizeof(dev)) == 0, "%s",
		      moe_errmsg());
	ck_assert_int_eq(res.data_ok, 1);
	ck_assert_uint_eq(res.bytes, 10 * cfg.expert_bytes);
	ck_assert(res.pipeline_gbps > 0 && res.plain_gbps > 0 && res.ratio > 0);
	ck_assert_str_eq(dev, "SIMT emulated GPU");
	simt_fake_cuda_stats(&st);
	/* two rounds of each, and the check's download; every byte from pinned memory */
	ck_assert_uint_eq(st.h2d_bytes, 4 * res.bytes);
	ck_assert_uint_eq(st.pageable_copies, 1);
	ck_assert_uint_eq(st.allocs, 0);
	ck_assert_uint_eq(st.pinned, 0);
	ck_assert_int_eq(simt_fake_cuda_fail("cuMemcpyHtoDAsync", 7, CUDA_ERROR_INVALID_VALUE), 0);
	ck_assert_int_lt(moe_cuda_h2d_bench(&api, &cfg, &res, dev, sizeof(dev)), 0);
	HAS("cuMemcpyHtoDAsync");
	cfg.n_slots = 0;
	ck_assert_int_eq(moe_cuda_h2d_bench(&api, &cfg, &res, dev, sizeof(dev)), -EINVAL);
	snprintf(cmd, sizeof(cmd), "MOE_CUDA_LIBRARY=/nonexistent/libcuda.so %s gpu-h2d",
		 tu_bin("moe-bench"));
	ck_assert_int_eq(tu_run(cmd, 1, &out), 0);
	ck_assert_msg(out && strstr(out, "gpu-h2d: skipped: no CUDA driver"), "%s",
		      out ? out : "");
	free(out);
	snprintf(cmd, sizeof(cmd), "%s gpu-h2d --slots 65", tu_bin("moe-bench"));
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 2);
}
END_TEST


/*
 * tests/gpu/check.sh --quick over the simulated driver (libcuda_sim.so: the
 * fake with every kernel emulated, for other processes): every benchmark
 * step of the device check runs here, through the packed layout's paths,
 * and writes its line of the summary (the GPUDirect Storage run on the fake
 * libcufile), so the script cannot rot between GPU runs.
 */
START_TEST(cuda_gpu_check_script)
{
	const char *src = getenv("MOE_SRC"), *build = getenv("MOE_BUILD");
	char *dir = tu_tmpdir(), cmd[4096], path[512], *out = NULL, *sum = NULL;
	static const char *const want[] = {
		"gpu-matvec: q4_K", "gpu-matvec: q8_0", "gpu-matvec: mxfp4",
		"gpu-h2d: pipeline", "decode: 2 layers; resident", "(staging), bound",
		"decode: gds: --gds on (", "reads", "(gds)", "QUICK: every step ran",
	};
	size_t n = 0;
	FILE *f;

	snprintf(cmd, sizeof(cmd), "set -e; b=$(cd '%s' && pwd); mkdir -p '%s/g/lib'; "
		 "ln -s \"$b/tests/unit-tests\" '%s/g/unit-tests'; ln -s \"$b/bin\" '%s/g/bin'",
		 build ? build : "build", dir, dir, dir);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	snprintf(cmd, sizeof(cmd), "cd '%s' && b=$(cd '%s' && pwd) && MOE_GPU_DIR='%s/g' "
		 "OUT='%s/out' MOE_GPU_SCRATCH='%s' MOE_CUDA_LIBRARY=\"$b/tests/libcuda_sim.so\" "
		 "MOE_CUFILE_LIBRARY=\"$b/tests/libcufile_fake.so\" sh tests/gpu/check.sh --quick", src ? src : ".", build ? build : "build", dir,
		 dir, dir);
	ck_assert_msg(tu_run(cmd, 1, &out) == 0, "%s", out ? out : "");
	snprintf(path, sizeof(path), "%s/out/summary.txt", dir);
	f = fopen(path, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_gt(getdelim(&sum, &n, 0, f), 0);
	fclose(f);
	for (size_t i = 0; i < MOE_ARRAY_SIZE(want); i++)
		ck_assert_msg(strstr(sum, want[i]), "'%s' not in the summary:\n%s", want[i], sum);
	free(sum);
	free(out);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* Without a driver, moe-run --backend cuda says so; auto runs on the CPU. */
/* ------------------------------------------------------------ GPUDirect Storage */

static void *cufile_lib;
static char cufile_path[4096];

/* The fake libcufile, kept loaded here so that its counters outlive each context's dlclose. */
static void cufile_fake(void)
{
	const char *build = getenv("MOE_BUILD");

	snprintf(cufile_path, sizeof(cufile_path), "%s/tests/libcufile_fake.so",
		 build ? build : "build");
	if (!cufile_lib)
		cufile_lib = dlopen(cufile_path, RTLD_NOW | RTLD_LOCAL);
	ck_assert_msg(cufile_lib != NULL, "%s", dlerror());
	setenv("MOE_CUFILE_LIBRARY", cufile_path, 1);
	unsetenv("SIMT_CUFILE_FAIL");
}

static void cufile_stats(struct simt_cufile_stats *st)
{
	void (*get)(struct simt_cufile_stats *);
	void *sym = dlsym(cufile_lib, "simt_cufile_fake_stats");

	ck_assert_ptr_nonnull(sym);
	memcpy(&get, &sym, sizeof(get));
	get(st);
}

static uint64_t gds_host_cache;
static const char *gds_prefetch;

/*
 * A context on the fake CUDA driver within @vram with GPUDirect Storage @gds
 * (and gds_host_cache bytes of host tier): 0 or -errno.
 */
static int gds_ctx(struct moe_model *m, uint64_t vram, uint32_t gds, struct moe_ctx **ctx)
{
	struct moe_ctx_params p;

	moe_ctx_params_init(&p);
	p.host_cache_bytes = gds_host_cache;
	p.prefetch = gds_prefetch;
	p.n_threads = 2;
	p.n_ctx = 64;
	p.n_batch = 4;
	p.vram_bytes = vram;
	p.backend = "cuda";
	p.gds = gds;
	*ctx = NULL;
	return moe_ctx_create(m, &p, ctx);
}

/* Nothing of the fake libcufile or the fake driver is left registered or allocated. */
static void gds_all_released(void)
{
	struct simt_cufile_stats cs;
	struct simt_fake_stats fs;

	cufile_stats(&cs);
	ck_assert_int_eq(cs.driver_opens, 0);
	ck_assert_uint_eq(cs.handles, 0);
	ck_assert_uint_eq(cs.bufs, 0);
	simt_fake_cuda_stats(&fs);
	ck_assert_uint_eq(fs.allocs, 0);
	ck_assert_uint_eq(fs.pinned, 0);
}

/*
 * Decode with experts streamed through an evicting budget, through the fake
 * libcufile straight into the slots: the logits are the staging path's to
 * the bit, in the lazy mode (where a read that overtook queued work on its
 * slot would show) and the random one; expert_io says "gds", the bytes went
 * through cuFileRead, and everything is deregistered at the end; also with
 * a host tier and with speculative prefetches.  A short read is completed by
 * another; auto uses GDS where it works and stages
 * where the library is absent or its driver does not open.
 */
START_TEST(cuda_gds_matches_staging)
{
	char *dir = tu_tmpdir();
	struct moe_model *m = small_model(dir, "q8_0");
	struct simt_cufile_stats cs0, cs;
	struct moe_ctx_stats st;
	struct logits ref, l;
	struct moe_ctx *ctx;
	uint64_t vram, slot_bytes;

	fake_driver_lib(NULL);
	cufile_fake();
	vram = least_vram(m, "cuda");
	ck_assert_int_eq(gds_ctx(m, vram, MOE_GDS_OFF, &ctx), 0);
	run(ctx, &ref);
	moe_ctx_get_stats(ctx, &st);
	ck_assert_str_eq(st.expert_io, "staging");
	ck_assert_uint_gt(st.expert_evictions, 0);
	slot_bytes = st.slot_bytes;
	moe_ctx_destroy(ctx);

	for (int mode = SIMT_FAKE_LAZY; mode <= SIMT_FAKE_RANDOM; mode++) {
		struct simt_fake_config cfg = { .mode = mode, .seed = 11 };

		for (int v = 0; v < 5; v++) {
			static const uint32_t modes[] = { MOE_GDS_ON, MOE_GDS_AUTO, MOE_GDS_ON,
							  MOE_GDS_ON, MOE_GDS_ON };

			fake_driver_lib(&cfg);
			cufile_fake();
			if (v == 2)
				setenv("SIMT_CUFILE_FAIL", "cuFileRead:3:short", 1);
			/* case 3: a host tier (uploads into and downloads out of the slots) */
			gds_host_cache = v == 3 ? 1u << 20 : 0;
			/* case 4: speculative prefetches read ahead into evicted slots */
			gds_prefetch = v == 4 ? "spec" : NULL;
			cufile_stats(&cs0);
			ck_assert_msg(gds_ctx(m, vram + (v == 4 ? 3 * slot_bytes : 0), modes[v],
					      &ctx) == 0, "%s", moe_errmsg());
			gds_host_cache = 0;
			gds_prefetch = NULL;
			run(ctx, &l);
			moe_ctx_get_stats(ctx, &st);
			if (v == 3)
				ck_assert_uint_gt(st.expert_host_hits, 0);
			if (v == 4)
				ck_assert_uint_gt(st.prefetches, 0);
			{
				/* the reads are stall time, counted in the layer that waited */
				struct moe_ctx_layer_stats ls;
				double sum = 0;

				for (uint32_t il = 0; il < 2; il++) {
					ck_assert_int_eq(moe_ctx_layer_stats(ctx, il, &ls), 0);
					sum += ls.stall_s;
				}
				ck_assert(st.stall_s > 0);
				ck_assert_msg(fabs(sum - st.stall_s) <= 1e-6 + 1e-9 * st.stall_s,
					      "layers stalled %g s, in all %g s", sum, st.stall_s);
			}
			ck_assert_str_eq(st.expert_io, "gds");
			ck_assert_uint_gt(st.expert_evictions, 0);
			ck_assert_uint_le(st.vram_used, st.vram_budget);
			cufile_stats(&cs);
			ck_assert_uint_gt(cs.reads, cs0.reads);
			ck_assert_uint_gt(st.bytes_read, 0);
			ck_assert_uint_eq(l.n, ref.n);
			ck_assert_msg(!memcmp(l.buf, ref.buf, sizeof(float) * l.n * l.vocab),
				      "mode %d, case %d: logits through GDS differ from staging", mode,
				      v);
			free(l.buf);
			moe_ctx_destroy(ctx);
			gds_all_released();
		}
	}

	/* auto without the library, or with a driver that does not open: staging, same logits */
	for (int v = 0; v < 2; v++) {
		fake_driver_lib(NULL);
		cufile_fake();
		if (v)
			setenv("SIMT_CUFILE_FAIL", "cuFileDriverOpen:1:5007", 1);
		else
			setenv("MOE_CUFILE_LIBRARY", "/nonexistent/libcufile.so.0", 1);
		ck_assert_msg(gds_ctx(m, vram, MOE_GDS_AUTO, &ctx) == 0, "%s", moe_errmsg());
		run(ctx, &l);
		moe_ctx_get_stats(ctx, &st);
		ck_assert_str_eq(st.expert_io, "staging");
		ck_assert_msg(!memcmp(l.buf, ref.buf, sizeof(float) * l.n * l.vocab),
			      "auto fallback %d: logits differ", v);
		free(l.buf);
		moe_ctx_destroy(ctx);
		gds_all_released();
	}
	unsetenv("SIMT_CUFILE_FAIL");
	unsetenv("MOE_CUFILE_LIBRARY");
	unsetenv("MOE_CUDA_LIBRARY");
	free(ref.buf);
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/*
 * --gds on where GDS cannot run fails at creation naming why (the library,
 * the call and its status, the backend); a read that fails mid-generation
 * is an error naming cuFileRead, never logits; nothing stays registered.
 */
START_TEST(cuda_gds_errors)
{
	static const struct {
		const char *fail, *lib, *want, *want2;
	} create[] = {
		{ NULL, "/nonexistent/libcufile.so.0", "GPUDirect Storage library not found",
		  "gds on" },
		{ "cuFileDriverOpen:1:5007", NULL, "cuFileDriverOpen", "CU_FILE_PLATFORM_NOT_SUPPORTED" },
		{ "cuFileHandleRegister:1", NULL, "cuFileHandleRegister", "CU_FILE_INTERNAL_ERROR" },
		{ "cuFileBufRegister:1:5036", NULL, "cuFileBufRegister",
		  "CU_FILE_GPU_MEMORY_PINNING_FAILED" },
	};
	static const struct {
		const char *fail, *want;
	} reads[] = {
		{ "cuFileRead:4:eof", "the file ends early" },
		{ "cuFileRead:5:5044", "CU_FILE_IO_ERROR (5044)" },
		{ "cuFileRead:2:errno", "Input/output error" },
	};
	char *dir = tu_tmpdir();
	struct moe_model *m = small_model(dir, "f32");
	struct moe_ctx_params p;
	struct moe_ctx *ctx;
	uint64_t vram;

	fake_driver_lib(NULL);
	cufile_fake();
	vram = least_vram(m, "cuda");
	for (size_t i = 0; i < sizeof(create) / sizeof(create[0]); i++) {
		fake_driver_lib(NULL);
		cufile_fake();
		if (create[i].fail)
			setenv("SIMT_CUFILE_FAIL", create[i].fail, 1);
		if (create[i].lib)
			setenv("MOE_CUFILE_LIBRARY", create[i].lib, 1);
		ck_assert_int_lt(gds_ctx(m, vram, MOE_GDS_ON, &ctx), 0);
		ck_assert_ptr_null(ctx);
		HAS(create[i].want);
		HAS(create[i].want2);
		HAS("GPUDirect Storage was required");
		gds_all_released();
	}
	for (size_t i = 0; i < sizeof(reads) / sizeof(reads[0]); i++) {
		int32_t tok[4] = { 1, 2, 3, 4 };
		int ret = 0;

		fake_driver_lib(NULL);
		cufile_fake();
		setenv("SIMT_CUFILE_FAIL", reads[i].fail, 1);
		ck_assert_msg(gds_ctx(m, vram, MOE_GDS_ON, &ctx) == 0, "%s", moe_errmsg());
		for (int step = 0; step < 8 && !ret; step++)
			ret = moe_ctx_eval(ctx, tok + (step ? 3 : 0), step ? 1 : 4,
					   moe_ctx_n_past(ctx), 0);
		ck_assert_msg(ret < 0, "%s: the failed read went unnoticed", reads[i].fail);
		HAS("cuFileRead");
		HAS(reads[i].want);
		HAS("fetching expert");
		moe_ctx_destroy(ctx);
		gds_all_released();
	}
	unsetenv("SIMT_CUFILE_FAIL");

	/* the CPU backend has no direct path: on says so, auto stages */
	moe_ctx_params_init(&p);
	p.n_ctx = 64;
	p.n_batch = 4;
	p.n_threads = 2;
	p.backend = "cpu";
	p.vram_bytes = least_vram(m, "cpu");
	p.gds = MOE_GDS_ON;
	ck_assert_int_eq(moe_ctx_create(m, &p, &ctx), -EOPNOTSUPP);
	HAS("cpu backend has no direct path");
	p.gds = 7;
	ck_assert_int_eq(moe_ctx_create(m, &p, &ctx), -EINVAL);
	HAS("MOE_GDS_AUTO");
	unsetenv("MOE_CUFILE_LIBRARY");
	unsetenv("MOE_CUDA_LIBRARY");
	moe_model_destroy(m);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* moe-run --gds on the simulated driver and the fake libcufile: --stats says "gds". */
START_TEST(cuda_gds_moe_run)
{
	char *dir = tu_tmpdir(), path[512], cmd[2048], *out = NULL;
	const char *build = getenv("MOE_BUILD");
	const char *b = build ? build : "build";

	snprintf(path, sizeof(path), "%s/m.gguf", dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --type f32 -o %s -q --layers 1 --vocab 64 "
		 "--expert-ff 64 --embd 64 --experts 4", tu_bin("moe-mkmodel"), path);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	snprintf(cmd, sizeof(cmd), "MOE_CUDA_LIBRARY=%s/tests/libcuda_sim.so "
		 "MOE_CUFILE_LIBRARY=%s/tests/libcufile_fake.so %s -m %s --tokens 1,2 -n 2 "
		 "--backend cuda --no-state --vram 1 --gds on --stats --json", b, b,
		 tu_bin("moe-run"), path);
	/* --vram 1 is refused with the smallest budget: take that from the message */
	ck_assert_int_ne(tu_run(cmd, 1, &out), 0);
	{
		const char *at = out ? strstr(out, "needs at least") : NULL;
		unsigned long long need = 0;
		char *vp = strstr(cmd, "--vram 1 ");

		ck_assert_msg(at && (at = strchr(at, '(')) && sscanf(at, "(%llu bytes)", &need) == 1,
			      "%s", out ? out : "");
		free(out);
		snprintf(cmd + (vp - cmd), sizeof(cmd) - (size_t)(vp - cmd), "--vram %llu --gds on "
			 "--stats --json", need);
	}
	ck_assert_msg(tu_run(cmd, 0, &out) == 0, "%s: %s", cmd, out ? out : "");
	ck_assert_msg(out && strstr(out, "\"expert_io\": \"gds\""), "%s", out ? out : "");
	free(out);
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1 --backend cpu --gds maybe",
		 tu_bin("moe-run"), path);
	ck_assert_int_ne(tu_run(cmd, 1, &out), 0);
	ck_assert_msg(out && strstr(out, "--gds 'maybe': expected auto, on or off"), "%s",
		      out ? out : "");
	free(out);
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1 --backend cpu --gds on",
		 tu_bin("moe-run"), path);
	ck_assert_int_ne(tu_run(cmd, 1, &out), 0);
	ck_assert_msg(out && strstr(out, "no direct path"), "%s", out ? out : "");
	free(out);
	/* moe-bench decode takes the same values, and fails the same way without a CUDA driver */
	snprintf(cmd, sizeof(cmd), "%s decode %s --gds sometimes", tu_bin("moe-bench"), path);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 2);
	ck_assert_msg(out && strstr(out, "--gds 'sometimes': expected auto, on or off"), "%s",
		      out ? out : "");
	free(out);
	snprintf(cmd, sizeof(cmd), "MOE_CUDA_LIBRARY=%s/no-such-libcuda.so %s decode %s --resident "
		 "--tokens 1 --prompt 1 --gds on", dir, tu_bin("moe-bench"), path);
	ck_assert_int_eq(tu_run(cmd, 1, &out), 1);
	ck_assert_msg(out && strstr(out, "GPUDirect Storage was required"), "%s", out ? out : "");
	free(out);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(cuda_moe_run_backends)
{
	char *dir = tu_tmpdir(), path[512], cmd[1536], *out = NULL;

	snprintf(path, sizeof(path), "%s/m.gguf", dir);
	snprintf(cmd, sizeof(cmd), "%s --arch qwen3moe --type f32 -o %s -q --layers 1 --vocab 64 "
		 "--expert-ff 64 --embd 64 --experts 4", tu_bin("moe-mkmodel"), path);
	ck_assert_int_eq(tu_run(cmd, 1, NULL), 0);
	snprintf(cmd, sizeof(cmd), "MOE_CUDA_LIBRARY=%s/no-such-libcuda.so %s -m %s --tokens 1,2 "
		 "-n 1 --backend cuda", dir, tu_bin("moe-run"), path);
	ck_assert_int_ne(tu_run(cmd, 1, &out), 0);
	ck_assert_msg(out && strstr(out, "no CUDA driver found"), "%s", out ? out : "");
	free(out);
	snprintf(cmd, sizeof(cmd), "MOE_CUDA_LIBRARY=%s/no-such-libcuda.so %s -m %s --tokens 1,2 "
		 "-n 1 --backend auto --json --stats", dir, tu_bin("moe-run"), path);
	ck_assert_int_eq(tu_run(cmd, 0, &out), 0);
	ck_assert_msg(out && strstr(out, "\"backend\": \"cpu\""), "%s", out ? out : "");
	free(out);
	snprintf(cmd, sizeof(cmd), "%s -m %s --tokens 1 --backend tpu", tu_bin("moe-run"), path);
	ck_assert_int_ne(tu_run(cmd, 1, &out), 0);
	ck_assert_msg(out && strstr(out, "cpu, cuda"), "%s", out ? out : "");
	free(out);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

Suite *suite_cuda(void)
{
	Suite *s = suite_create("cuda");
	TCase *tc = tcase_create("host");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, cuda_create_errors);
	tcase_add_test(tc, cuda_oom);
	tcase_add_test(tc, cuda_budget_exact);
	tcase_add_test(tc, cuda_launch_faults);
	tcase_add_test(tc, cuda_cross_queue);
	tcase_add_test(tc, cuda_host_register);
	tcase_add_test(tc, cuda_attention_split);
	tcase_add_loop_test(tc, cuda_engine_matches_cpu, 0, 2);
	tcase_add_loop_test(tc, cuda_engine_quantized_matches_cpu, 0, 4);
	tcase_add_test(tc, cuda_pipeline_calls);
	tcase_add_test(tc, cuda_engine_faults);
	tcase_add_test(tc, cuda_h2d_bench);
	tcase_add_test(tc, cuda_gpu_check_script);
	tcase_add_test(tc, cuda_moe_run_backends);
	if (moe_backend_cuda_desc.probe() == 0) {
		TCase *gpu = tcase_create("gpu");

		tcase_set_timeout(gpu, 300);
		tcase_add_loop_test(gpu, cuda_gpu_engine_matches_cpu, 0,
				    (int)MOE_ARRAY_SIZE(e2e_archs));
		suite_add_tcase(s, gpu);
	} else {
		char why[512];

		snprintf(why, sizeof(why), "no GPU here (%s); tests/gpu/check.sh runs it on one",
			 moe_errmsg());
		tu_skip("cuda gpu_engine_matches_cpu", why);
	}
	suite_add_tcase(s, tc);
	tc = tcase_create("gds");
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, cuda_gds_matches_staging);
	tcase_add_test(tc, cuda_gds_errors);
	tcase_add_test(tc, cuda_gds_moe_run);
	suite_add_tcase(s, tc);
	return s;
}
