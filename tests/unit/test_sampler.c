// SPDX-License-Identifier: MIT
#include <errno.h>
#include <math.h>
#include <string.h>

#include "engine/sampler.h"
#include "moe/moe.h"
#include "testutil.h"

#define DRAWS 100000

/* The test distribution: logits whose softmax at temperature 1 is exactly this. */
static const double base_p[6] = { 0.40, 0.25, 0.15, 0.10, 0.06, 0.04 };

static struct moe_sampler_params params(float temp)
{
	struct moe_sampler_params p = {
		.temp = temp, .top_p = 1, .repeat_penalty = 1, .seed = 1234,
	};

	return p;
}

static struct moe_sampler *make(const struct moe_sampler_params *p, int n_vocab)
{
	struct moe_sampler *s = NULL;

	ck_assert_int_eq(moe_sampler_create(p, n_vocab, &s), 0);
	ck_assert_ptr_nonnull(s);
	return s;
}

/* Draw DRAWS tokens and compare the frequencies with @want (which sums to 1). */
static void check_distribution(const struct moe_sampler_params *p, const float *logits,
			       const double *want, int n)
{
	struct moe_sampler *s = make(p, n);
	int count[16] = { 0 };

	for (int i = 0; i < DRAWS; i++) {
		int32_t t = moe_sampler_sample(s, logits);

		ck_assert_int_ge(t, 0);
		ck_assert_int_lt(t, n);
		count[t]++;
	}
	for (int i = 0; i < n; i++) {
		double f = (double)count[i] / DRAWS;

		if (want[i] == 0)
			ck_assert_msg(count[i] == 0, "token %d was removed but drawn %d times", i,
				      count[i]);
		else
			/* ~6 standard deviations at p = 0.5 over 1e5 draws */
			ck_assert_msg(fabs(f - want[i]) < 0.01, "token %d: frequency %.4f, "
				      "expected %.4f", i, f, want[i]);
	}
	moe_sampler_destroy(s);
}

static void base_logits(float *l)
{
	for (int i = 0; i < 6; i++)
		l[i] = (float)log(base_p[i]) + 3.0f;
}

START_TEST(sampler_greedy_argmax)
{
	struct moe_sampler_params p = params(0);
	float l[5] = { 1, 5, 3, 5, -2 };
	float nan_l[3] = { NAN, -1, NAN };
	float none[3] = { NAN, -INFINITY, NAN };
	struct moe_sampler *s = make(&p, 5), *s3;

	ck_assert_int_eq(moe_sampler_sample(s, l), 1);
	l[1] = 4;
	ck_assert_int_eq(moe_sampler_sample(s, l), 3);
	moe_sampler_destroy(s);
	s3 = make(&p, 3);
	ck_assert_int_eq(moe_sampler_sample(s3, nan_l), 1);
	ck_assert_int_eq(moe_sampler_sample(s3, none), -EINVAL);
	moe_sampler_destroy(s3);
}
END_TEST

START_TEST(sampler_seeded_reproducible)
{
	struct moe_sampler_params p = params(1.0f);
	struct moe_sampler *a, *b, *c;
	uint64_t st = 99;
	float l[64];
	int same_c = 0;

	for (int i = 0; i < 64; i++)
		l[i] = (float)tu_randn(&st);
	a = make(&p, 64);
	b = make(&p, 64);
	p.seed = 1235;
	c = make(&p, 64);
	for (int i = 0; i < 500; i++) {
		int32_t ta = moe_sampler_sample(a, l);

		ck_assert_int_eq(ta, moe_sampler_sample(b, l));
		same_c += ta == moe_sampler_sample(c, l);
	}
	ck_assert_msg(same_c < 100, "another seed gave the same token %d of 500 times", same_c);
	moe_sampler_destroy(a);
	moe_sampler_destroy(b);
	moe_sampler_destroy(c);
}
END_TEST

START_TEST(sampler_top_k1_is_greedy)
{
	struct moe_sampler_params p = params(1.5f), g = params(0);
	struct moe_sampler *s, *gs;
	uint64_t st = 7;
	float l[100];
	int lo;

	p.top_k = 1;
	s = make(&p, 100);
	gs = make(&g, 100);
	for (int round = 0; round < 200; round++) {
		for (int i = 0; i < 100; i++)
			l[i] = (float)tu_randn(&st);
		l[round % 100] = l[(round * 7 + 3) % 100] = 9;  /* a tie */
		ck_assert_int_eq(moe_sampler_sample(s, l), moe_sampler_sample(gs, l));
		lo = round % 100 < (round * 7 + 3) % 100 ? round % 100 : (round * 7 + 3) % 100;
		ck_assert_int_eq(moe_sampler_sample(s, l), lo);
	}
	moe_sampler_destroy(s);
	moe_sampler_destroy(gs);
}
END_TEST

START_TEST(sampler_plain_and_temperature)
{
	struct moe_sampler_params p = params(1.0f);
	double want[6], sum = 0;
	float l[6];

	base_logits(l);
	check_distribution(&p, l, base_p, 6);
	/* temperature 2: p ~ sqrt(base_p) */
	p.temp = 2.0f;
	for (int i = 0; i < 6; i++)
		sum += want[i] = sqrt(base_p[i]);
	for (int i = 0; i < 6; i++)
		want[i] /= sum;
	check_distribution(&p, l, want, 6);
}
END_TEST

START_TEST(sampler_top_k_top_p_min_p)
{
	struct moe_sampler_params p = params(1.0f);
	float l[6];
	/* top-k 2 keeps 0.40 and 0.25 */
	const double want_k[6] = { 0.40 / 0.65, 0.25 / 0.65, 0, 0, 0, 0 };
	/* top-p 0.75: 0.40 + 0.25 = 0.65 < 0.75, + 0.15 reaches it */
	const double want_p[6] = { 0.40 / 0.80, 0.25 / 0.80, 0.15 / 0.80, 0, 0, 0 };
	/* min-p 0.2: keeps p >= 0.08 */
	const double want_m[6] = { 0.40 / 0.90, 0.25 / 0.90, 0.15 / 0.90, 0.10 / 0.90, 0, 0 };
	const double want_0[6] = { 1, 0, 0, 0, 0, 0 };

	base_logits(l);
	p.top_k = 2;
	check_distribution(&p, l, want_k, 6);
	p.top_k = 0;
	p.top_p = 0.75f;
	check_distribution(&p, l, want_p, 6);
	p.top_p = 1;
	p.min_p = 0.2f;
	check_distribution(&p, l, want_m, 6);
	/* top-p 0 still keeps the best token */
	p.min_p = 0;
	p.top_p = 0;
	check_distribution(&p, l, want_0, 6);
	/* together: top-p 0.95 keeps 5, then min-p 0.3 keeps p >= 0.12 */
	p.top_p = 0.95f;
	p.min_p = 0.3f;
	check_distribution(&p, l, want_p, 6);
}
END_TEST

START_TEST(sampler_repeat_penalty)
{
	struct moe_sampler_params p = params(0);
	float pos[3] = { 2, 1.5f, 0 }, neg[3] = { -1, -1.5f, -3 };
	struct moe_sampler *s;

	p.repeat_penalty = 2;
	p.repeat_last_n = 2;
	s = make(&p, 3);
	ck_assert_int_eq(moe_sampler_sample(s, pos), 0);
	moe_sampler_accept(s, 0);
	moe_sampler_accept(s, 0);
	/* 2 / 2 = 1 < 1.5, and a twice-seen token is penalised once */
	ck_assert_int_eq(moe_sampler_sample(s, pos), 1);
	/* -1 * 2 = -2 < -1.5 */
	ck_assert_int_eq(moe_sampler_sample(s, neg), 1);
	/* two later tokens push token 0 out of the window */
	moe_sampler_accept(s, 2);
	moe_sampler_accept(s, 2);
	ck_assert_int_eq(moe_sampler_sample(s, pos), 0);
	moe_sampler_accept(s, 0);
	moe_sampler_reset(s);
	ck_assert_int_eq(moe_sampler_sample(s, pos), 0);
	/* out-of-range tokens are ignored, not stored */
	moe_sampler_accept(s, 3);
	moe_sampler_accept(s, -1);
	ck_assert_int_eq(moe_sampler_sample(s, pos), 0);
	moe_sampler_destroy(s);
}
END_TEST

START_TEST(sampler_bad_params)
{
	struct moe_sampler_params ok = params(1.0f), p;
	struct moe_sampler *s = (struct moe_sampler *)&ok;

	ck_assert_int_eq(moe_sampler_create(&ok, 0, &s), -EINVAL);
	ck_assert_ptr_null(s);
	ck_assert_int_eq(moe_sampler_create(NULL, 10, &s), -EINVAL);
	ck_assert_int_eq(moe_sampler_create(&ok, 10, NULL), -EINVAL);
	p = ok;
	p.temp = NAN;
	ck_assert_int_eq(moe_sampler_create(&p, 10, &s), -EINVAL);
	p = ok;
	p.top_k = -1;
	ck_assert_int_eq(moe_sampler_create(&p, 10, &s), -EINVAL);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "top_k"));
	p = ok;
	p.top_p = 1.5f;
	ck_assert_int_eq(moe_sampler_create(&p, 10, &s), -EINVAL);
	p.top_p = NAN;
	ck_assert_int_eq(moe_sampler_create(&p, 10, &s), -EINVAL);
	p = ok;
	p.min_p = -0.1f;
	ck_assert_int_eq(moe_sampler_create(&p, 10, &s), -EINVAL);
	p = ok;
	p.repeat_penalty = 0;
	ck_assert_int_eq(moe_sampler_create(&p, 10, &s), -EINVAL);
	p.repeat_penalty = INFINITY;
	ck_assert_int_eq(moe_sampler_create(&p, 10, &s), -EINVAL);
	p = ok;
	p.repeat_last_n = -1;
	ck_assert_int_eq(moe_sampler_create(&p, 10, &s), -EINVAL);
	ck_assert_int_eq(moe_sampler_sample(NULL, NULL), -EINVAL);
	moe_sampler_accept(NULL, 1);
	moe_sampler_destroy(NULL);
}
END_TEST

/* The public sampler: the API's parameters, masking by -inf, parameter errors. */
START_TEST(sampler_public_api)
{
	struct moe_sample_params p;
	struct moe_sampler *s;
	float logits[6] = { 0.5f, 3.0f, -1.0f, 2.0f, 0.0f, 1.0f };

	moe_sample_params_init(&p);
	ck_assert_int_eq(moe_sampler_new(&p, 6, &s), 0);
	ck_assert_int_eq(moe_sampler_sample(s, logits), 1);
	logits[1] = -INFINITY;
	ck_assert_int_eq(moe_sampler_sample(s, logits), 3);
	moe_sampler_accept(s, 3);
	moe_sampler_destroy(s);
	/* a masked token is never drawn, however hot the temperature */
	p.temp = 50.0f;
	p.seed = 11;
	ck_assert_int_eq(moe_sampler_new(&p, 6, &s), 0);
	for (int i = 0; i < 200; i++)
		ck_assert_int_ne(moe_sampler_sample(s, logits), 1);
	moe_sampler_destroy(s);
	p.top_p = 2.0f;
	ck_assert_int_eq(moe_sampler_new(&p, 6, &s), -EINVAL);
	ck_assert_msg(strstr(moe_errmsg(), "top_p"), "%s", moe_errmsg());
	ck_assert_int_eq(moe_sampler_new(NULL, 6, &s), -EINVAL);
}
END_TEST

Suite *suite_sampler(void)
{
	Suite *s = suite_create("sampler");
	TCase *tc = tcase_create("sampler");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, sampler_greedy_argmax);
	tcase_add_test(tc, sampler_seeded_reproducible);
	tcase_add_test(tc, sampler_top_k1_is_greedy);
	tcase_add_test(tc, sampler_plain_and_temperature);
	tcase_add_test(tc, sampler_top_k_top_p_min_p);
	tcase_add_test(tc, sampler_repeat_penalty);
	tcase_add_test(tc, sampler_bad_params);
	tcase_add_test(tc, sampler_public_api);
	suite_add_tcase(s, tc);
	return s;
}
