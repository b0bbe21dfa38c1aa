/* SPDX-License-Identifier: MIT */
/*
 * moe_plan(): its figures against ones computed here from the model's
 * tensor table and the rules of Documentation/design.rst (vectors as f32,
 * 64-byte aligned pieces on the CPU backend, rings for windowed layers,
 * slots per size class), and a context made with the same parameters
 * holding exactly the plan's device memory.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe/moe.h"
#include "testutil.h"

#define A64(x) (((x) + 63) / 64 * 64)

static char *make(const char *dir, const char *name, const char *args)
{
	char cmd[1024], *out = NULL, *path = malloc(512);
	int st;

	snprintf(path, 512, "%s/%s.gguf", dir, name);
	snprintf(cmd, sizeof(cmd), "%s -q -o %s %s", tu_bin("moe-mkmodel"), path, args);
	st = tu_run(cmd, 1, &out);
	ck_assert_msg(st == 0, "%s: %s", cmd, out ? out : "");
	free(out);
	return path;
}

static void params(struct moe_ctx_params *p, uint64_t vram, uint32_t n_ctx, uint32_t n_batch)
{
	moe_ctx_params_init(p);
	p->backend = "cpu";
	p->n_threads = 1;
	p->vram_bytes = vram;
	p->n_ctx = n_ctx;
	p->n_batch = n_batch;
}

/* Resident bytes as the plan's rules say: every non-expert tensor, 64-byte aligned. */
static uint64_t hand_resident(const struct moe_model *m)
{
	uint64_t b = 0;

	for (int i = 0; i < moe_model_tensor_count(m); i++) {
		struct moe_tensor_info ti;

		ck_assert_int_eq(moe_model_tensor(m, i, &ti), 0);
		if (ti.role == MOE_ROLE_OTHER)
			b += A64(ti.bytes);
	}
	return b;
}

static uint64_t hand_slot(const struct moe_model *m, uint32_t layer)
{
	struct moe_expert ex;
	uint64_t b = 0;

	ck_assert_int_eq(moe_model_expert(m, layer, 0, &ex), 0);
	for (uint32_t k = 0; k < ex.n_mats; k++)
		b += A64(ex.mats[k].bytes);
	return b;
}

START_TEST(plan_figures)
{
	char *dir = tu_tmpdir();
	char *path = make(dir, "q", "--arch qwen3moe --layers 3 --embd 128 --heads 4 --kv-heads 2 "
			  "--head-dim 32 --experts 8 --experts-used 2 --expert-ff 64 --vocab 300");
	struct moe_model *m;
	struct moe_hparams hp;
	struct moe_ctx_params p;
	struct moe_plan pl, all;
	uint64_t kv, slot, fixed;

	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(moe_model_hparams(m, &hp), 0);
	params(&p, 0, 100, 10);
	ck_assert_msg(moe_plan(m, &p, &all) == 0, "%s", moe_errmsg());
	ck_assert_str_eq(all.backend, "cpu");
	ck_assert_uint_eq(all.n_ctx, 100);
	ck_assert_uint_eq(all.n_batch, 10);
	ck_assert_uint_eq(all.resident_bytes, hand_resident(m));
	/* 3 layers of K and V, 100 cells of 2 heads x 32 f32 */
	kv = 3 * 2 * A64(100 * 64 * 4);
	ck_assert_uint_eq(all.kv_bytes, kv);
	ck_assert_uint_eq(all.kv_full_bytes, 3 * 2 * 100 * 64 * 4);
	slot = hand_slot(m, 0);
	ck_assert_uint_eq(all.n_classes, 1);
	ck_assert_uint_eq(all.classes[0].slot_bytes, slot);
	ck_assert_uint_eq(all.n_experts, 24);
	ck_assert_uint_eq(all.n_slots, 24);
	ck_assert(all.all_experts);
	ck_assert_uint_eq(all.slot_bytes, 24 * slot);
	ck_assert_uint_eq(all.device_bytes, all.resident_bytes + all.kv_bytes + all.scratch_bytes +
			  all.workspace_bytes + all.slot_bytes);
	ck_assert_ptr_nonnull(strstr(all.why, "every one of the 24 experts"));

	/* a budget for 10 and a half slots after the fixed part: 10 slots */
	fixed = all.device_bytes - all.slot_bytes;
	params(&p, fixed + 10 * slot + slot / 2, 100, 10);
	ck_assert_msg(moe_plan(m, &p, &pl) == 0, "%s", moe_errmsg());
	ck_assert_uint_eq(pl.n_slots, 10);
	ck_assert(!pl.all_experts);
	ck_assert_uint_eq(pl.device_bytes, fixed + 10 * slot);
	ck_assert_ptr_nonnull(strstr(pl.why, "leaves 10 slots for 24 experts"));
	/* the smallest budget: one token's experts (2) */
	params(&p, fixed + 2 * slot, 100, 10);
	ck_assert_int_eq(moe_plan(m, &p, &pl), 0);
	ck_assert_uint_eq(pl.n_slots, 2);
	params(&p, fixed + 2 * slot - 1, 100, 10);
	ck_assert_int_eq(moe_plan(m, &p, &pl), -ENOMEM);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "needs at least"));
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "raise --vram or lower --ctx"));
	/* staging: at least one token's experts in flight */
	ck_assert_uint_ge(all.n_staging, 2);
	ck_assert_uint_gt(all.staging_bytes, all.n_staging * slot);
	moe_model_destroy(m);
	free(path);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* Sliding-window layers keep a ring of window + batch - 1 cells; KV types shrink rows. */
START_TEST(plan_kv)
{
	char *dir = tu_tmpdir();
	char *path = make(dir, "oss", "--arch gpt-oss --layers 4 --embd 128 --heads 4 --kv-heads 2 "
			  "--head-dim 64 --experts 4 --experts-used 2 --expert-ff 64 --vocab 300 "
			  "--sliding-window 16");
	struct moe_model *m;
	struct moe_ctx_params p;
	struct moe_plan f32, f16, q8;
	uint64_t row = 2 * 64;       /* values per position */

	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	params(&p, 0, 1000, 8);
	ck_assert_int_eq(moe_plan(m, &p, &f32), 0);
	/* gpt-oss: even layers slide (16 + 8 - 1 cells), odd ones see all 1000 */
	ck_assert_uint_eq(f32.kv_bytes, 2 * 2 * A64(23 * row * 4) + 2 * 2 * A64(1000 * row * 4));
	ck_assert_uint_eq(f32.kv_full_bytes, 4 * 2 * 1000 * row * 4);
	p.kv_type = MOE_TYPE_F16;
	ck_assert_int_eq(moe_plan(m, &p, &f16), 0);
	ck_assert_uint_eq(f16.kv_bytes, 2 * 2 * A64(23 * row * 2) + 2 * 2 * A64(1000 * row * 2));
	p.kv_type = MOE_TYPE_Q8_0;
	ck_assert_int_eq(moe_plan(m, &p, &q8), 0);
	ck_assert_uint_eq(q8.kv_bytes, 2 * 2 * A64(23 * row / 32 * 34) +
			  2 * 2 * A64(1000 * row / 32 * 34));
	p.kv_type = MOE_TYPE_Q4_K;
	ck_assert_int_eq(moe_plan(m, &p, &q8), -EINVAL);
	/* several sequences: a KV cache each */
	p.kv_type = MOE_TYPE_F32;
	p.n_seq = 3;
	ck_assert_int_eq(moe_plan(m, &p, &q8), 0);
	ck_assert_uint_eq(q8.kv_bytes, 2 * 2 * A64(3 * 23 * row * 4) +
			  2 * 2 * A64(3 * 1000 * row * 4));
	moe_model_destroy(m);
	free(path);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* Layers whose experts differ in size get slot pools of their own, shared out fairly. */
START_TEST(plan_classes)
{
	char *dir = tu_tmpdir();
	char *path = make(dir, "mix", "--arch qwen3moe --layers 6 --embd 256 --experts 8 "
			  "--experts-used 2 --expert-ff 256 --vocab 300 --type q4_K --type-down q8_0");
	struct moe_model *m;
	struct moe_ctx_params p;
	struct moe_plan all, half;
	uint64_t big, small, fixed;
	int bi;

	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	big = hand_slot(m, 0);       /* layers 0 and 3: q8_0 down */
	small = hand_slot(m, 1);
	ck_assert_uint_gt(big, small);
	ck_assert_uint_eq(hand_slot(m, 3), big);
	params(&p, 0, 64, 8);
	ck_assert_int_eq(moe_plan(m, &p, &all), 0);
	ck_assert_uint_eq(all.n_classes, 2);
	bi = all.classes[0].slot_bytes == big ? 0 : 1;
	ck_assert_uint_eq(all.classes[bi].slot_bytes, big);
	ck_assert_uint_eq(all.classes[!bi].slot_bytes, small);
	ck_assert_uint_eq(all.classes[bi].n_experts, 16);
	ck_assert_uint_eq(all.classes[!bi].n_experts, 32);
	ck_assert_uint_eq(all.slot_bytes, 16 * big + 32 * small);
	/* half the expert bytes: about half of each class, never below one token's experts */
	fixed = all.device_bytes - all.slot_bytes;
	params(&p, fixed + all.slot_bytes / 2, 64, 8);
	ck_assert_int_eq(moe_plan(m, &p, &half), 0);
	ck_assert_uint_ge(half.classes[bi].n_slots, 7);
	ck_assert_uint_le(half.classes[bi].n_slots, 9);
	ck_assert_uint_ge(half.classes[!bi].n_slots, 15);
	ck_assert_uint_le(half.classes[!bi].n_slots, 17);
	ck_assert_uint_le(half.device_bytes, p.vram_bytes);
	/* what is left over is less than one more slot of either class */
	ck_assert_uint_lt(p.vram_bytes - half.device_bytes, big);
	moe_model_destroy(m);
	free(path);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

static uint64_t rss(void)
{
	unsigned long long size = 0, res = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (f) {
		if (fscanf(f, "%llu %llu", &size, &res) != 2)
			res = 0;
		fclose(f);
	}
	return res * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* A context uses exactly the plan's device memory, and the process no more than the plan. */
START_TEST(plan_matches_context)
{
	char *dir = tu_tmpdir();
	char *path = make(dir, "mix", "--arch qwen3moe --layers 6 --embd 256 --experts 8 "
			  "--experts-used 2 --expert-ff 256 --vocab 300 --type q4_K --type-down q8_0");
	struct moe_model *m;
	struct moe_ctx_params p;
	struct moe_plan all, pl;
	struct moe_ctx *ctx;
	struct moe_ctx_stats st;
	int32_t tok[12];
	uint64_t before, after, slack = 24ull << 20;

	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	params(&p, 0, 64, 8);
	ck_assert_int_eq(moe_plan(m, &p, &all), 0);
	params(&p, all.device_bytes - all.slot_bytes / 3, 64, 8);
	ck_assert_int_eq(moe_plan(m, &p, &pl), 0);
	before = rss();
	ck_assert_msg(moe_ctx_create(m, &p, &ctx) == 0, "%s", moe_errmsg());
	ck_assert_mem_eq(moe_ctx_plan(ctx), &pl, offsetof(struct moe_plan, why));
	for (int i = 0; i < 12; i++)
		tok[i] = (i * 31 + 7) % 300;
	ck_assert_int_eq(moe_ctx_generate(ctx, tok, 12, 10, NULL, 0, NULL, NULL), 10);
	after = rss();
	moe_ctx_get_stats(ctx, &st);
	ck_assert_uint_eq(st.vram_used, pl.device_bytes);
	ck_assert_uint_eq(st.vram_peak, pl.device_bytes);
	ck_assert_uint_eq(st.n_slots, pl.n_slots);
	ck_assert_uint_gt(st.expert_evictions, 0);
	ck_assert_str_eq(moe_ctx_backend(ctx), "cpu");
	ck_assert_msg(after - before <= pl.device_bytes + pl.staging_bytes + pl.host_bytes + slack,
		      "RSS grew by %llu; plan: device %llu + staging %llu + host %llu",
		      (unsigned long long)(after - before), (unsigned long long)pl.device_bytes,
		      (unsigned long long)pl.staging_bytes, (unsigned long long)pl.host_bytes);
	moe_ctx_destroy(ctx);
	moe_model_destroy(m);
	free(path);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

START_TEST(plan_errors)
{
	char *dir = tu_tmpdir();
	char *path = make(dir, "q", "--arch qwen3moe --layers 2 --embd 128 --heads 4 --kv-heads 2 "
			  "--head-dim 16 --experts 4 --experts-used 2 --expert-ff 64 --vocab 100");
	struct moe_model *m;
	struct moe_ctx_params p;
	struct moe_plan pl;

	ck_assert_msg(moe_model_open(path, &m) == 0, "%s", moe_errmsg());
	ck_assert_int_eq(moe_plan(NULL, NULL, &pl), -EINVAL);
	ck_assert_int_eq(moe_plan(m, NULL, &pl), 0);
	params(&p, 0, 64, 8);
	p.backend = "tpu";
	ck_assert_int_eq(moe_plan(m, &p, &pl), -ENOENT);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "unknown backend 'tpu'"));
	p.backend = NULL;
	/* head dim 16 cannot hold q8_0 blocks of 32 */
	p.kv_type = MOE_TYPE_Q8_0;
	ck_assert_int_eq(moe_plan(m, &p, &pl), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "q8_0"));
	p.kv_type = MOE_TYPE_F16;
	ck_assert_int_eq(moe_plan(m, &p, &pl), 0);
	p.n_ctx = 1u << 25;
	ck_assert_int_eq(moe_plan(m, &p, &pl), -EINVAL);
	moe_model_destroy(m);
	free(path);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

Suite *suite_plan(void)
{
	Suite *s = suite_create("plan");
	TCase *tc = tcase_create("plan");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, plan_figures);
	tcase_add_test(tc, plan_kv);
	tcase_add_test(tc, plan_classes);
	tcase_add_test(tc, plan_matches_context);
	tcase_add_test(tc, plan_errors);
	suite_add_tcase(s, tc);
	return s;
}
