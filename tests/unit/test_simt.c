/* SPDX-License-Identifier: MIT */
/*
 * The CUDA emulation (tests/simt/): the kernels of tests/simt/selftest.cu
 * against results computed here, every bug it must report, the fake
 * driver, the libcuda loader, the ABI of cuda_api.h against cuda.h and the
 * embedded fatbin.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend/cuda_api.h"
#include "fake_cuda.h"
#include "simt_api.h"
#include "testutil.h"
#include "util/util.h"

/* tests/unit/cuda_abi.c: >0 checks passed, 0 cuda.h absent (why in @msg), <0 a mismatch */
int moe_cuda_abi_check(char *msg, size_t len);

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif

static void set_cfg(unsigned threads, int check, uint64_t seed)
{
	struct simt_config c;

	simt_config_get(&c);
	c.threads = threads;
	c.check = check;
	c.seed = seed;
	ck_assert_int_eq(simt_config_set(&c), 0);
}

static const struct simt_kernel *kern(const char *name)
{
	const struct simt_kernel *k = simt_kernel_find(name);

	ck_assert_msg(k != NULL, "%s", simt_errmsg());
	return k;
}

#define LAUNCH(name, gx, gy, gz, bx, by, bz, shared, ...)                                      \
	({                                                                                     \
		void *p_[] = {__VA_ARGS__};                                                    \
		simt_launch(kern(name), gx, gy, gz, bx, by, bz, shared, p_);                   \
	})

#define LAUNCH_OK(name, gx, gy, gz, bx, by, bz, shared, ...)                                   \
	do {                                                                                   \
		int st_ = LAUNCH(name, gx, gy, gz, bx, by, bz, shared, __VA_ARGS__);           \
		ck_assert_msg(st_ == SIMT_OK, "%s: %s: %s", name, simt_status_name(st_),       \
			      simt_errmsg());                                                  \
	} while (0)

static uint32_t fbits(float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	return u;
}

static float bitsf(uint32_t u)
{
	float f;

	memcpy(&f, &u, 4);
	return f;
}

static void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n, size);

	ck_assert_ptr_nonnull(p);
	return p;
}

/* ---- results of the self-test kernels ---- */

static const unsigned shapes[][3] = {
	{1, 1, 1}, {7, 1, 1}, {31, 1, 1}, {32, 1, 1}, {33, 1, 1}, {48, 1, 1}, {100, 1, 1},
	{255, 1, 1}, {256, 1, 1}, {1000, 1, 1}, {1024, 1, 1}, {5, 3, 2}, {3, 5, 7},
	{8, 8, 4}, {16, 16, 4}, {1, 1, 64},
};

START_TEST(block_sum_shapes)
{
	const unsigned grid[3] = {3, 2, 2}, nb = 12;
	const int per = 301;
	float *in = xcalloc((size_t)nb * per, sizeof(float)), out[12];

	set_cfg(2, 1, 7);
	for (size_t i = 0; i < (size_t)nb * per; i++)
		in[i] = (float)((int)(i % 17) - 8);
	for (size_t s = 0; s < MOE_ARRAY_SIZE(shapes); s++) {
		int pr = per;

		memset(out, 0, sizeof(out));
		LAUNCH_OK("st_block_sum", grid[0], grid[1], grid[2], shapes[s][0], shapes[s][1],
			  shapes[s][2], 0, &in, &(float *){out}, &pr);
		for (unsigned b = 0; b < nb; b++) {
			float want = 0;

			for (int i = 0; i < per; i++)
				want += in[(size_t)b * per + i];
			ck_assert_msg(out[b] == want, "block (%u,%u,%u) of grid: %g, want %g",
				      shapes[s][0], shapes[s][1], shapes[s][2], out[b], want);
		}
	}
	free(in);
}
END_TEST

START_TEST(warp_sums)
{
	static const unsigned sizes[] = {1, 17, 32, 40, 64, 100, 256, 1023, 1024};
	float *in = xcalloc(2 * 1024, sizeof(float)), out[2];
	float *all = xcalloc(2 * 256, sizeof(float));

	set_cfg(2, 1, 3);
	for (size_t i = 0; i < 2 * 1024; i++)
		in[i] = (float)((int)(i * 7 % 11) - 5);
	for (size_t s = 0; s < MOE_ARRAY_SIZE(sizes); s++) {
		unsigned n = sizes[s];

		LAUNCH_OK("st_warp_sum", 2, 1, 1, n, 1, 1, 0, &in, &(float *){out});
		for (unsigned b = 0; b < 2; b++) {
			float want = 0;

			for (unsigned i = 0; i < n; i++)
				want += in[b * n + i];
			ck_assert_msg(out[b] == want, "%u threads: %g, want %g", n, out[b], want);
		}
	}
	LAUNCH_OK("st_warp_allsum", 2, 1, 1, 256, 1, 1, 0, &in, &all);
	for (unsigned i = 0; i < 512; i++) {
		float want = 0;

		for (unsigned l = 0; l < 32; l++)
			want += in[i / 32 * 32 + l];
		ck_assert_msg(all[i] == want, "lane %u: %g, want %g", i, all[i], want);
	}
	free(in);
	free(all);
}
END_TEST

/* The shuffle semantics of CUDA and PTX (only a lane argument's low five bits count). */
static int shfl_want(int op, unsigned mask, int width, const int *arg, unsigned t, int block)
{
	unsigned lane = t % 32, base = t - lane;
	unsigned sec = lane / (unsigned)width * (unsigned)width, top = sec + (unsigned)width - 1;
	long j = lane;

	switch (op) {
	case 0:
		j = sec + ((unsigned)arg[lane] & (unsigned)(width - 1));
		break;
	case 1:
		j = (long)lane - (long)((unsigned)arg[lane] & 31);
		if (j < (long)sec)
			j = lane;
		break;
	case 2:
		j = (long)lane + (long)((unsigned)arg[lane] & 31);
		if (j > (long)top)
			j = lane;
		break;
	case 3:
		j = lane ^ ((unsigned)arg[lane] & 31);
		if (j > (long)top)
			j = lane;
		break;
	}
	if (!(mask >> j & 1))
		return -1;              /* an inactive source lane: poisoned */
	return 1000 * block + (int)base + (int)j;
}

static void check_shuffle(int op, int width, unsigned mask)
{
	int arg[64], out[128];

	for (int t = 0; t < 64; t++)
		arg[t] = op == 0 ? (t * 7 + 3) % 40 - 4 : (t * 5 + op) % 34;
	LAUNCH_OK("st_shfl", 2, 1, 1, 64, 1, 1, 0, &(int *){arg}, &(int *){out}, &op, &width,
		  &mask);
	for (int i = 0; i < 128; i++) {
		unsigned t = (unsigned)i % 64, lane = t % 32;
		int want = -2;

		if (mask >> lane & 1)
			want = shfl_want(op, mask, width, arg + t / 32 * 32, t, i / 64);
		ck_assert_msg(out[i] == want, "op %d width %d mask 0x%x thread %d: %d, want %d",
			      op, width, mask, i, out[i], want);
	}
}

START_TEST(shuffles)
{
	static const int widths[] = {32, 16, 8, 4, 2, 1};
	static const unsigned masks[] = {0xffffffffu, 0x0000ffffu, 0x5555aaaau};
	int arg[64], out[128];

	set_cfg(1, 1, 5);
	for (int op = 0; op < 4; op++)
		for (size_t w = 0; w < MOE_ARRAY_SIZE(widths); w++)
			for (size_t m = 0; m < MOE_ARRAY_SIZE(masks); m++)
				check_shuffle(op, widths[w], masks[m]);
	/* a few by hand: down 1 keeps lane 31; xor 1 swaps pairs; idx 3 in width 16 */
	for (int t = 0; t < 64; t++)
		arg[t] = 1;
	LAUNCH_OK("st_shfl", 1, 1, 1, 64, 1, 1, 0, &(int *){arg}, &(int *){out}, &(int){2},
		  &(int){32}, &(unsigned){0xffffffffu});
	ck_assert_int_eq(out[0], 1);
	ck_assert_int_eq(out[31], 31);
	ck_assert_int_eq(out[32], 33);
	LAUNCH_OK("st_shfl", 1, 1, 1, 64, 1, 1, 0, &(int *){arg}, &(int *){out}, &(int){3},
		  &(int){32}, &(unsigned){0xffffffffu});
	ck_assert_int_eq(out[4], 5);
	ck_assert_int_eq(out[5], 4);
	for (int t = 0; t < 64; t++)
		arg[t] = 3;
	LAUNCH_OK("st_shfl", 1, 1, 1, 64, 1, 1, 0, &(int *){arg}, &(int *){out}, &(int){0},
		  &(int){16}, &(unsigned){0xffffffffu});
	ck_assert_int_eq(out[20], 19);
	ck_assert_int_eq(out[40], 35);
}
END_TEST

START_TEST(shuffle_types)
{
	double d[64];
	long long l[64];
	float f[64];
	unsigned u[64], h2[64];
	unsigned short h[64], b[64];

	LAUNCH_OK("st_shfl_types", 1, 1, 1, 64, 1, 1, 0, &(double *){d}, &(long long *){l},
		  &(float *){f}, &(unsigned *){u}, &(unsigned short *){h}, &(unsigned short *){b},
		  &(unsigned *){h2});
	for (unsigned t = 0; t < 64; t++) {
		unsigned s = t ^ 1;
		/* s as half: exact for small integers, exponent 15 + floor(log2 s) */
		unsigned short hs = 0;

		if (s) {
			int e = 31 - __builtin_clz(s);

			hs = (unsigned short)((15 + e) << 10 | ((s << (10 - e)) & 0x3ff));
		}
		ck_assert(d[t] == s + 0.25);
		ck_assert(l[t] == ((long long)s << 40 | s));
		ck_assert(f[t] == s * 0.5f);
		ck_assert_uint_eq(u[t], 0xabc00000u | s);
		ck_assert_uint_eq(h[t], hs);
		ck_assert_uint_eq(b[t], fbits((float)s) >> 16);
		ck_assert_uint_eq(h2[t], hs | (unsigned)(s ? hs | 0x8000 : 0x8000) << 16);
	}
}
END_TEST

START_TEST(votes)
{
	static const unsigned sizes[] = {40, 64, 1, 33};
	int pred[128];
	unsigned out[6 * 128];
	uint64_t r = 11;

	for (size_t s = 0; s < MOE_ARRAY_SIZE(sizes); s++) {
		unsigned n = sizes[s];

		for (unsigned i = 0; i < 2 * n; i++)
			pred[i] = tu_rand(&r) % 3 ? 0 : (int)(tu_rand(&r) % 5) + 1;
		LAUNCH_OK("st_vote", 2, 1, 1, n, 1, 1, 0, &(int *){pred}, &(unsigned *){out});
		for (unsigned i = 0; i < 2 * n; i++) {
			unsigned b = i / n, t = i % n, w = t / 32, lane = t % 32;
			unsigned nl = n - 32 * w >= 32 ? 32 : n - 32 * w;
			unsigned m = nl == 32 ? 0xffffffffu : (1u << nl) - 1, bal = 0, half, hb = 0;
			unsigned thirds = 0;

			for (unsigned l = 0; l < nl; l++) {
				int p = pred[b * n + 32 * w + l];

				bal |= (unsigned)(p != 0) << l;
				thirds |= (unsigned)((32 * w + l) % 3 == 0) << l;
			}
			half = m & (lane % 2 ? 0xaaaaaaaau : 0x55555555u);
			for (unsigned l = 0; l < nl; l++)
				if (half >> l & 1)
					hb |= (unsigned)(lane % 2 ? pred[b * n + 32 * w + l] != 0 :
							 pred[b * n + 32 * w + l] == 0) << l;
			ck_assert_uint_eq(out[6 * i + 0], bal);
			ck_assert_uint_eq(out[6 * i + 1], bal != 0);
			ck_assert_uint_eq(out[6 * i + 2], bal == m);
			ck_assert_uint_eq(out[6 * i + 3], m);
			ck_assert_uint_eq(out[6 * i + 4], hb);
			ck_assert_uint_eq(out[6 * i + 5], thirds);
		}
	}
}
END_TEST

/* The layout of struct st_counters in selftest.cu. */
struct counters {
	int add_i;
	unsigned add_u;
	unsigned long long add_ull;
	float add_f;
	double add_d;
	int max_i, min_i;
	unsigned max_u, min_u;
	int sub_i;
	unsigned sub_u;
	int exch_slot;
	int exch_sum;
	unsigned cas_sum;
	unsigned long long cas_ull;
	unsigned shared_total;
	float exch_f;
	unsigned exch_u;
	unsigned long long exch_ull;
};

static void check_atomics(unsigned threads)
{
	struct counters c = {0};
	const long long n = 10 * 7 * 3 * 33 * 2;

	set_cfg(threads, 1, threads);
	c.max_i = INT_MIN;
	c.min_i = INT_MAX;
	c.min_u = UINT_MAX;
	c.sub_u = 5 * (unsigned)n;
	LAUNCH_OK("st_atomics", 10, 7, 3, 33, 2, 1, 0, &(struct counters *){&c});
	ck_assert_int_eq(c.add_i, n);
	ck_assert_uint_eq(c.add_u, 2 * n);
	ck_assert_uint_eq(c.add_ull, (unsigned long long)n << 33);
	ck_assert(c.add_f == 0.5f * n);
	ck_assert(c.add_d == 0.25 * n);
	ck_assert_int_eq(c.max_i, n - 1 - 100);
	ck_assert_int_eq(c.min_i, -100);
	ck_assert_uint_eq(c.max_u, n - 1);
	ck_assert_uint_eq(c.min_u, 7);
	ck_assert_int_eq(c.sub_i, -3 * n);
	ck_assert_uint_eq(c.sub_u, 4 * n);
	ck_assert_int_eq((long long)c.exch_sum + c.exch_slot, n * (n + 1) / 2);
	ck_assert(c.exch_f == 1.5f);
	ck_assert_uint_eq(c.exch_u, 7);
	ck_assert_uint_eq(c.exch_ull, 1ull << 40);
	ck_assert_uint_eq(c.cas_sum, 3 * n);
	ck_assert_uint_eq(c.cas_ull, 5 * n);
	ck_assert_uint_eq(c.shared_total, n);
}

START_TEST(atomics_serial)
{
	check_atomics(1);
}
END_TEST

START_TEST(atomics_parallel)
{
	check_atomics(4);
}
END_TEST

START_TEST(dp4a)
{
	enum { N = 300 };
	int a[N], b[N], c[N], os[N], oc[N];
	unsigned ou[N], ouc[N];
	uint64_t r = 5;

	for (int i = 0; i < N; i++) {
		a[i] = (int)(uint32_t)tu_rand(&r);
		b[i] = (int)(uint32_t)tu_rand(&r);
		c[i] = (int)(uint32_t)tu_rand(&r);
	}
	a[0] = (int)0x80808080u;        /* -128 * -128 four times */
	b[0] = (int)0x80808080u;
	c[0] = INT_MAX;
	LAUNCH_OK("st_dp4a", 3, 1, 1, 128, 1, 1, 0, &(int *){a}, &(int *){b}, &(int *){c},
		  &(int *){os}, &(unsigned *){ou}, &(int *){oc}, &(unsigned *){ouc}, &(int){N});
	for (int i = 0; i < N; i++) {
		uint32_t ws = (uint32_t)c[i], wu = (uint32_t)c[i];

		for (int k = 0; k < 32; k += 8) {
			ws += (uint32_t)((int8_t)(a[i] >> k) * (int8_t)(b[i] >> k));
			wu += (((uint32_t)a[i] >> k) & 0xff) * (((uint32_t)b[i] >> k) & 0xff);
		}
		ck_assert_int_eq(os[i], (int)ws);
		ck_assert_int_eq(oc[i], (int)ws);
		ck_assert_uint_eq(ou[i], wu);
		ck_assert_uint_eq(ouc[i], wu);
	}
	ck_assert_int_eq(os[0], (int)(0x7fffffffu + 4 * 16384u));
}
END_TEST

/* float bits -> half, bfloat16 (round to nearest even, canonical NaN), from exact arithmetic */
static const uint32_t half_table[][3] = {
	{0x00000000, 0x0000, 0x0000}, {0x80000000, 0x8000, 0x8000}, {0x3f800000, 0x3c00, 0x3f80},
	{0xc0000000, 0xc000, 0xc000}, {0x477fe000, 0x7bff, 0x4780}, {0x477ff000, 0x7c00, 0x4780},
	{0x477fef00, 0x7bff, 0x4780}, {0x3dcccccd, 0x2e66, 0x3dcd}, {0x3eaaaaab, 0x3555, 0x3eab},
	{0x33800000, 0x0001, 0x3380}, {0x33000000, 0x0000, 0x3300}, {0x33400000, 0x0001, 0x3340},
	{0x38800000, 0x0400, 0x3880}, {0x387fe000, 0x0400, 0x3880}, {0x3f801000, 0x3c00, 0x3f80},
	{0x3f803000, 0x3c02, 0x3f80}, {0x3f808000, 0x3c04, 0x3f80}, {0x3f818000, 0x3c0c, 0x3f82},
	{0x7f800000, 0x7c00, 0x7f80}, {0xff800000, 0xfc00, 0xff80}, {0x7f7fffff, 0x7c00, 0x7f80},
	{0x2edbe6ff, 0x0000, 0x2edc}, {0xc77fe000, 0xfbff, 0xc780}, {0x40490fdb, 0x4248, 0x4049},
	{0x80000001, 0x8000, 0x8000}, {0x3c7fffff, 0x2400, 0x3c80}, {0x7fc00000, 0x7fff, 0x7fff},
	{0xffc00001, 0x7fff, 0x7fff}, {0x337fffff, 0x0001, 0x3380}, {0x33000001, 0x0001, 0x3300},
	{0xb3400000, 0x8001, 0xb340},
};

/* The exact value of half bits @h (an independent decoding, for the round trip). */
static float half_value(unsigned h)
{
	unsigned e = h >> 10 & 0x1f, m = h & 0x3ff;
	float v = e == 0x1f ? (m ? NAN : INFINITY) : e ? ldexpf(1.0f + m / 1024.0f, (int)e - 15) :
		  ldexpf((float)m, -24);

	return h & 0x8000 ? -v : v;
}

START_TEST(half_bf16)
{
	enum { N = MOE_ARRAY_SIZE(half_table) };
	float in[N], hf[N], bff[N], pairs[7 * N];
	unsigned short h[N], bf[N];

	for (int i = 0; i < N; i++)
		in[i] = bitsf(half_table[i][0]);
	LAUNCH_OK("st_half", 1, 1, 1, 64, 1, 1, 0, &(float *){in}, &(unsigned short *){h},
		  &(unsigned short *){bf}, &(float *){hf}, &(float *){bff}, &(float *){pairs},
		  &(int){N});
	for (int i = 0; i < N; i++) {
		float hv = half_value(half_table[i][1]);

		ck_assert_msg(h[i] == half_table[i][1], "half(0x%08x) = 0x%04x, want 0x%04x",
			      half_table[i][0], h[i], half_table[i][1]);
		ck_assert_msg(bf[i] == half_table[i][2], "bf16(0x%08x) = 0x%04x, want 0x%04x",
			      half_table[i][0], bf[i], half_table[i][2]);
		if (isnan(hv))
			ck_assert(isnan(hf[i]) && isnan(bff[i]));
		else
			ck_assert_msg(fbits(hf[i]) == fbits(hv), "half 0x%04x -> %a, want %a", h[i],
				      hf[i], hv);
		if (!isnan(hv))
			ck_assert_uint_eq(fbits(bff[i]), (uint32_t)half_table[i][2] << 16);
		if (isnan(hv))
			continue;
		ck_assert(fbits(pairs[7 * i + 0]) == fbits(hv));
		ck_assert(fbits(pairs[7 * i + 1]) == fbits(-hv));
		ck_assert(fbits(pairs[7 * i + 2]) == (uint32_t)half_table[i][2] << 16);
		ck_assert(fbits(pairs[7 * i + 4]) == fbits(hv));
		ck_assert(fbits(pairs[7 * i + 6]) == fbits(hv));
		ck_assert(pairs[7 * i + 3] == pairs[7 * i + 5]);
	}
}
END_TEST

START_TEST(dynamic_shared)
{
	float in[300], out[300];

	for (int i = 0; i < 300; i++)
		in[i] = (float)i;
	LAUNCH_OK("st_dyn_reverse", 3, 1, 1, 100, 1, 1, 100 * sizeof(float), &(float *){in},
		  &(float *){out});
	for (int i = 0; i < 300; i++)
		ck_assert(out[i] == (float)(i / 100 * 100 + 99 - i % 100));
	/* a 3-D block and more dynamic shared memory than it uses */
	LAUNCH_OK("st_dyn_reverse", 1, 2, 1, 5, 4, 3, 200 * 1024, &(float *){in}, &(float *){out});
	for (int i = 0; i < 120; i++)
		ck_assert(out[i] == (float)(i / 60 * 60 + 59 - i % 60));
}
END_TEST

START_TEST(indices)
{
	const unsigned g[3] = {3, 4, 2}, b[3] = {5, 3, 2}, n = 24 * 30;
	unsigned *out = xcalloc(8 * n, sizeof(unsigned));
	unsigned char *seen = xcalloc(n, 1);

	set_cfg(3, 1, 9);
	LAUNCH_OK("st_index", g[0], g[1], g[2], b[0], b[1], b[2], 0, &out);
	for (unsigned i = 0; i < n; i++) {
		const unsigned *o = out + 8 * i;
		unsigned blk = i / 30, t = i % 30;

		ck_assert_uint_eq(o[0], t % 5);
		ck_assert_uint_eq(o[1], t / 5 % 3);
		ck_assert_uint_eq(o[2], t / 15);
		ck_assert_uint_eq(o[3], blk % 3);
		ck_assert_uint_eq(o[4], blk / 3 % 4);
		ck_assert_uint_eq(o[5], blk / 12);
		ck_assert_uint_eq(o[6], 50302);
		ck_assert_uint_eq(o[7], 32000000 + 30402);
		seen[i]++;
	}
	for (unsigned i = 0; i < n; i++)
		ck_assert_uint_eq(seen[i], 1);
	free(out);
	free(seen);
}
END_TEST

static void run_order(uint64_t seed, int check, unsigned *out)
{
	set_cfg(1, check, seed);
	LAUNCH_OK("st_order", 1, 1, 1, 64, 1, 1, 0, &out);
}

START_TEST(fiber_order)
{
	unsigned a[64], b[64], c[64], d[64];
	unsigned char hit[64] = {0};
	int same_ab = 1, same_ac = 1, ident = 1;

	run_order(0, 0, d);
	for (unsigned i = 0; i < 64; i++)
		ck_assert_uint_eq(d[i], i);
	run_order(1, 1, a);
	run_order(1, 1, b);
	run_order(2, 1, c);
	for (unsigned i = 0; i < 64; i++) {
		same_ab &= a[i] == b[i];
		same_ac &= a[i] == c[i];
		ident &= a[i] == i;
		ck_assert_uint_lt(a[i], 64);
		hit[a[i]]++;
	}
	for (unsigned i = 0; i < 64; i++)
		ck_assert_uint_eq(hit[i], 1);
	ck_assert_msg(same_ab, "the same seed must give the same order");
	ck_assert_msg(!same_ac, "another seed must give another order");
	ck_assert_msg(!ident, "the checking mode must not run threads in index order");
}
END_TEST

START_TEST(intrinsics)
{
	float x[6] = {0.75f, 2.5f, 9.0f, 1.0f, 3.0f, 1.7f}, of[12];
	int oi[12];
	float v4[4 * 32], o4[4 * 32];
	int i4[4 * 32], oi4[4 * 32];

	for (int i = 0; i < 4 * 32; i++) {
		v4[i] = (float)i;
		i4[i] = i * 3;
	}
	LAUNCH_OK("st_misc", 1, 1, 1, 32, 1, 1, 0, &(float *){x}, &(float *){of}, &(int *){oi},
		  &(float *){v4}, &(float *){o4}, &(int *){i4}, &(int *){oi4});
	ck_assert(of[0] == expf(0.75f));
	ck_assert(of[1] == logf(2.5f));
	ck_assert(of[2] == 1.0f / 3.0f);
	ck_assert(of[3] == 1.0f / 3.0f);
	ck_assert(of[4] == fmaf(0.75f, 2.5f, 9.0f));
	ck_assert(of[5] == 0.75f && of[6] == 2.5f);
	ck_assert(of[7] == -0.75f);
	ck_assert(of[8] == 1.0f);
	ck_assert(of[9] == 2.5f);
	ck_assert(fabsf(of[10] - (sinf(0.75f) + 2 * cosf(0.75f))) < 1e-6f);
	ck_assert(fabsf(of[11] - powf(2.5f, 0.75f)) < 1e-6f);
	ck_assert_int_eq(oi[0], 9);
	ck_assert_int_eq(oi[1], 31);
	ck_assert_int_eq(oi[2], 32);
	ck_assert_int_eq(oi[3], 0);
	ck_assert_int_eq(oi[4], 9);
	ck_assert_int_eq(oi[5], INT_MIN);
	ck_assert_int_eq(oi[6], -3);
	ck_assert_int_eq(oi[7], 9);
	ck_assert_int_eq(oi[8], 8);
	ck_assert_int_eq(oi[9], 23);
	ck_assert_int_eq(oi[10], 51);
	ck_assert_int_eq(oi[11], 5 - 40 + 1200);
	for (int t = 0; t < 32; t++) {
		ck_assert(o4[4 * t + 0] == v4[4 * t + 3] && o4[4 * t + 1] == v4[4 * t + 2]);
		ck_assert(o4[4 * t + 2] == v4[4 * t + 1] && o4[4 * t + 3] == v4[4 * t + 0]);
		ck_assert(oi4[4 * t + 0] == i4[4 * t + 3] && oi4[4 * t + 1] == i4[4 * t + 2]);
		ck_assert(oi4[4 * t + 2] == i4[4 * t + 1] && oi4[4 * t + 3] == i4[4 * t]);
	}
}
END_TEST

START_TEST(ucontext_switch)
{
	struct simt_config c;
	float in[64 * 4], out[4];

	simt_config_get(&c);
	c.ucontext = 1;
	c.threads = 2;
	ck_assert_int_eq(simt_config_set(&c), 0);
	for (int i = 0; i < 256; i++)
		in[i] = (float)(i % 5);
	LAUNCH_OK("st_block_sum", 4, 1, 1, 64, 1, 1, 0, &(float *){in}, &(float *){out},
		  &(int){64});
	for (int b = 0; b < 4; b++) {
		float want = 0;

		for (int i = 0; i < 64; i++)
			want += in[b * 64 + i];
		ck_assert(out[b] == want);
	}
	/* a bug is still reported with ucontext fibers */
	ck_assert_int_eq(LAUNCH("st_bug_barrier_exit", 1, 1, 1, 32, 1, 1, 0,
				&(int *){(int[32]){0}}), SIMT_ERR_BARRIER);
}
END_TEST

/* Hundreds of small launches, as the conformance suite makes. */
START_TEST(many_launches)
{
	float *in = xcalloc(64 * 128, sizeof(float)), out[64];

	set_cfg(2, 1, 13);
	for (int i = 0; i < 64 * 128; i++)
		in[i] = (float)(i % 3);
	for (int rep = 0; rep < 200; rep++) {
		int per = 128;

		LAUNCH_OK("st_block_sum", 64, 1, 1, 128, 1, 1, 0, &in, &(float *){out}, &per);
		for (int b = 0; b < 64; b++) {
			float want = 0;

			for (int i = 0; i < 128; i++)
				want += in[b * 128 + i];
			ck_assert(out[b] == want);
		}
	}
	free(in);
}
END_TEST

START_TEST(registry_and_config)
{
	const struct simt_kernel *k = kern("st_shfl");
	struct simt_config c, bad;

	ck_assert_str_eq(simt_kernel_name(k), "st_shfl");
	ck_assert_uint_eq(simt_kernel_param_count(k), 5);
	ck_assert_uint_eq(simt_kernel_param_size(k, 0), sizeof(void *));
	ck_assert_uint_eq(simt_kernel_param_size(k, 2), sizeof(int));
	ck_assert_uint_eq(simt_kernel_param_size(k, 5), 0);
	ck_assert_ptr_null(simt_kernel_find("no_such_kernel"));
	ck_assert_ptr_nonnull(strstr(simt_errmsg(), "no kernel named 'no_such_kernel'"));
	ck_assert_str_eq(simt_status_name(SIMT_ERR_RACE), "SIMT_ERR_RACE");
	ck_assert_ptr_null(simt_status_name(SIMT_STATUS_COUNT));
	simt_config_get(&c);
	bad = c;
	bad.threads = 0;
	ck_assert_int_eq(simt_config_set(&bad), -EINVAL);
	ck_assert_ptr_nonnull(strstr(simt_errmsg(), "threads 0"));
	bad = c;
	bad.stack_bytes = 1024;
	ck_assert_int_eq(simt_config_set(&bad), -EINVAL);
	bad = c;
	bad.shared_optin = 1 << 20;
	ck_assert_int_eq(simt_config_set(&bad), -EINVAL);
}
END_TEST

static void expect_invalid(int st, const char *what)
{
	ck_assert_msg(st == SIMT_ERR_INVALID, "%s: %s", simt_status_name(st), simt_errmsg());
	ck_assert_msg(strstr(simt_errmsg(), what), "'%s' lacks '%s'", simt_errmsg(), what);
}

START_TEST(invalid_launches)
{
	const struct simt_kernel *k = kern("st_index");
	unsigned out[8];
	void *p[] = {&(unsigned *){out}}, *nullp[] = {NULL};

	expect_invalid(simt_launch(k, 1, 1, 1, 1025, 1, 1, 0, p), "over the limits");
	expect_invalid(simt_launch(k, 1, 1, 1, 32, 32, 2, 0, p), "1024 threads in all");
	expect_invalid(simt_launch(k, 1, 1, 1, 1, 1, 65, 0, p), "over the limits");
	expect_invalid(simt_launch(k, 0, 1, 1, 1, 1, 1, 0, p), "at least 1");
	expect_invalid(simt_launch(k, 1, 65536, 1, 1, 1, 1, 0, p), "grid (1,65536,1)");
	expect_invalid(simt_launch(k, 1, 1, 1, 1, 1, 1, 300000, p), "dynamic shared memory");
	expect_invalid(simt_launch(k, 1, 1, 1, 1, 1, 1, 0, NULL), "params is NULL");
	expect_invalid(simt_launch(k, 1, 1, 1, 1, 1, 1, 0, nullp), "params[0] is NULL");
	expect_invalid(simt_launch(NULL, 1, 1, 1, 1, 1, 1, 0, p), "NULL handle");
	ck_assert_int_eq(simt_launch_check(k, 1, 1, 1, 1, 1, 1, 0, p), SIMT_OK);
}
END_TEST

/* ---- the bugs the emulation reports ---- */

static void expect_bug(int st, int want, const char *kernel, const char *const *needles)
{
	const char *m = simt_errmsg();
	char pre[128];

	ck_assert_msg(st == want, "%s: got %s (%s), want %s", kernel, simt_status_name(st), m,
		      simt_status_name(want));
	snprintf(pre, sizeof(pre), "kernel '%s' block (", kernel);
	ck_assert_msg(strstr(m, pre), "'%s' does not name the kernel and block", m);
	for (; *needles; needles++)
		ck_assert_msg(strstr(m, *needles), "'%s' lacks '%s'", m, *needles);
}

#define BUG(want, kernel, bx, shared, needles, ...)                                             \
	expect_bug(LAUNCH(kernel, 1, 1, 1, bx, 1, 1, shared, __VA_ARGS__), want, kernel,         \
		   (const char *const[]){MOE_UNPAREN needles, NULL})
#define MOE_UNPAREN(...) __VA_ARGS__

START_TEST(bug_barriers)
{
	int out[64];

	BUG(SIMT_ERR_BARRIER, "st_bug_barrier_sites", 32, 0,
	    ("barrier divergence", "selftest.cu:", "thread ("), &(int *){out});
	BUG(SIMT_ERR_BARRIER, "st_bug_barrier_exit", 32, 0,
	    ("exited", "thread (5,0,0)", "__syncthreads"), &(int *){out});
}
END_TEST

START_TEST(bug_warps)
{
	int out[64];

	BUG(SIMT_ERR_WARP, "st_bug_warp_lanes", 48, 0,
	    ("__shfl_sync", "0xffff0000 that do not exist", "warp 1 has 16 threads"),
	    &(int *){out});
	BUG(SIMT_ERR_WARP, "st_bug_warp_sites", 32, 0,
	    ("__shfl_xor_sync", "the same call", "selftest.cu:"), &(int *){out});
	BUG(SIMT_ERR_WARP, "st_bug_warp_self", 32, 0,
	    ("thread (0,0,0)", "does not name the calling lane", "__ballot_sync"), &(int *){out});
	BUG(SIMT_ERR_WARP, "st_bug_warp_width", 32, 0, ("width 3", "power of two"),
	    &(int *){out}, &(int){3});
	BUG(SIMT_ERR_WARP, "st_bug_warp_exit", 32, 0, ("lane 3", "exited", "__syncwarp"),
	    &(int *){out});
	BUG(SIMT_ERR_DEADLOCK, "st_bug_deadlock", 32, 0,
	    ("deadlock", "16 at __syncthreads", "__shfl_xor_sync", "lanes 0xffff0000 never arrive"),
	    &(int *){out});
}
END_TEST

START_TEST(bug_stack)
{
	int out[4];

	BUG(SIMT_ERR_STACK, "st_bug_stack", 4, 0, ("overflowed its", "KiB stack", "SIMT_STACK"),
	    &(int *){out}, &(int){448 << 10});
	/* the abandoned fibers' stacks serve the next launch */
	ck_assert_int_eq(LAUNCH("st_order", 1, 1, 1, 4, 1, 1, 0, &(unsigned *){(unsigned *)out}),
			 SIMT_OK);
}
END_TEST

START_TEST(bug_races)
{
	float in[256] = {0}, out[256];

	set_cfg(1, 1, 21);
	BUG(SIMT_ERR_RACE, "st_bug_race_read", 64, 0,
	    ("shared-memory race", "'buf'[", "same barrier interval",
	     "__syncthreads at selftest.cu:"),
	    &(float *){in}, &(float *){out});
	BUG(SIMT_ERR_RACE, "st_bug_race_write", 64, 0,
	    ("writes 'slot'[0]", "after thread (", "wrote it", "since the block started"),
	    &(float *){out});
	BUG(SIMT_ERR_RACE, "st_bug_race_reduce", 64, 0, ("shared-memory race", "'buf'["),
	    &(float *){in}, &(float *){out});
	/* the same seeds find them whatever the order: try a few more */
	for (uint64_t seed = 100; seed < 110; seed++) {
		set_cfg(1, 1, seed);
		ck_assert_int_eq(LAUNCH("st_bug_race_read", 1, 1, 1, 64, 1, 1, 0, &(float *){in},
					&(float *){out}), SIMT_ERR_RACE);
		ck_assert_int_eq(LAUNCH("st_bug_race_reduce", 1, 1, 1, 64, 1, 1, 0, &(float *){in},
					&(float *){out}), SIMT_ERR_RACE);
	}
	/* without the checking mode the race goes unseen, as on a GPU */
	set_cfg(1, 0, 1);
	ck_assert_int_eq(LAUNCH("st_bug_race_write", 1, 1, 1, 64, 1, 1, 0, &(float *){out}),
			 SIMT_OK);
	ck_assert(out[0] == 63.0f);
}
END_TEST

START_TEST(bug_shared_memory)
{
	float out[64];

	BUG(SIMT_ERR_UNINIT, "st_bug_uninit", 64, 0,
	    ("'buf'[", "no thread of the block has written"), &(float *){out});
	BUG(SIMT_ERR_SHARED_OOB, "st_bug_shared_oob", 64, 0, ("outside every declaration"),
	    &(float *){out}, &(int){64});
	BUG(SIMT_ERR_SHARED_OOB, "st_bug_dyn_oob", 32, 128,
	    ("dynamic shared memory byte 128", "past the 128 bytes"), &(float *){out});
	BUG(SIMT_ERR_SHARED_LIMIT, "st_bug_static_limit", 32, 0, ("'big'", "48 KiB"),
	    &(float *){out});
	/* in bounds, the same kernels pass */
	LAUNCH_OK("st_bug_shared_oob", 1, 1, 1, 64, 1, 1, 0, &(float *){out}, &(int){63});
	LAUNCH_OK("st_bug_dyn_oob", 1, 1, 1, 31, 1, 1, 128, &(float *){out});
}
END_TEST

START_TEST(bug_illegal_address)
{
	BUG(SIMT_ERR_ILLEGAL_ADDRESS, "st_bug_illegal", 2, 0, ("illegal address 0x"),
	    &(int *){(int *)NULL});
	/* the process and the emulation carry on */
	LAUNCH_OK("st_order", 1, 1, 1, 2, 1, 1, 0, &(unsigned *){(unsigned[2]){0}});
}
END_TEST

/*
 * Under AddressSanitizer an emulated kernel's out-of-bounds access to host
 * memory is reported (and ends the process, so it runs in a child here).
 */
START_TEST(asan_global_oob)
{
	char *dir = tu_tmpdir(), path[4096], *report;
	int status, fd;
	pid_t pid;

	snprintf(path, sizeof(path), "%s/report", dir);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (!pid) {
		int *buf = malloc(16 * sizeof(int));

		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (fd < 0 || dup2(fd, 2) < 0)
			_exit(3);
		LAUNCH("st_bug_global_oob", 1, 1, 1, 32, 1, 1, 0, &buf, &(int){16});
		free(buf);
		_exit(0);
	}
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	report = tu_read_file(path, NULL);
	ck_assert_ptr_nonnull(report);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 1, "status %d: %s", status,
		      report);
	ck_assert_msg(strstr(report, "heap-buffer-overflow") && strstr(report, "st_bug_global_oob"),
		      "%s", report);
	free(report);
	tu_rmtree(dir);
	free(dir);
}
END_TEST

/* ---- the fake driver ---- */

static struct moe_cuda_api api;
static CUcontext ctx;

#define CU_EQ(call, want)                                                                      \
	do {                                                                                   \
		CUresult r_ = (call);                                                          \
		ck_assert_msg(r_ == (want), "%s = %d, want %d (%s)", #call, (int)r_,           \
			      (int)(want), simt_fake_cuda_errmsg());                            \
	} while (0)
#define CU(call) CU_EQ(call, CUDA_SUCCESS)

static void fake_up(const struct simt_fake_config *cfg)
{
	simt_fake_cuda_reset(cfg);
	simt_fake_cuda_api(&api);
	CU(api.cuInit(0));
	CU(api.cuDevicePrimaryCtxRetain(&ctx, 0));
	CU(api.cuCtxSetCurrent(ctx));
}

static CUfunction fake_kernel(CUmodule *mod, const char *name)
{
	CUfunction f;
	static const char image[] = "any image";

	CU(api.cuModuleLoadData(mod, image));
	CU(api.cuModuleGetFunction(&f, *mod, name));
	return f;
}

START_TEST(fake_device)
{
	struct simt_fake_config cfg = {.total_mem = 1 << 30, .sm_count = 8, .name = "test gpu"};
	char name[64], bus[32];
	int v, n;
	size_t total;
	const char *s;

	simt_fake_cuda_reset(&cfg);
	simt_fake_cuda_api(&api);
	ck_assert_ptr_null(api.lib);
	CU(api.cuDriverGetVersion(&v));
	ck_assert_int_eq(v, 13000);
	CU_EQ(api.cuDeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED);
	CU_EQ(api.cuInit(1), CUDA_ERROR_INVALID_VALUE);
	CU(api.cuInit(0));
	CU(api.cuDeviceGetCount(&n));
	ck_assert_int_eq(n, 1);
	CU(api.cuDeviceGet(&n, 0));
	CU_EQ(api.cuDeviceGet(&n, 1), CUDA_ERROR_INVALID_DEVICE);
	CU(api.cuDeviceGetName(name, sizeof(name), 0));
	ck_assert_str_eq(name, "test gpu");
	CU(api.cuDeviceTotalMem(&total, 0));
	ck_assert_uint_eq(total, 1 << 30);
	CU(api.cuDeviceGetPCIBusId(bus, sizeof(bus), 0));
	ck_assert_str_eq(bus, "0000:17:00.0");
	CU_EQ(api.cuDeviceGetPCIBusId(bus, 5, 0), CUDA_ERROR_INVALID_VALUE);
	CU(api.cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 0));
	ck_assert_int_eq(v, 9);
	CU(api.cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0));
	ck_assert_int_eq(v, 8);
	CU(api.cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_WARP_SIZE, 0));
	ck_assert_int_eq(v, 32);
	CU(api.cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, 0));
	ck_assert_int_eq(v, 0x17);
	CU(api.cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, 0));
	ck_assert_int_eq(v, 232448);
	CU_EQ(api.cuDeviceGetAttribute(&v, (CUdevice_attribute)9999, 0), CUDA_ERROR_INVALID_VALUE);
	CU(api.cuGetErrorName(CUDA_ERROR_OUT_OF_MEMORY, &s));
	ck_assert_str_eq(s, "CUDA_ERROR_OUT_OF_MEMORY");
	CU(api.cuGetErrorString(CUDA_ERROR_ILLEGAL_ADDRESS, &s));
	ck_assert(strlen(s) > 5);
	CU_EQ(api.cuGetErrorName((CUresult)12345, &s), CUDA_ERROR_INVALID_VALUE);
	ck_assert_ptr_null(s);
	cfg.no_device = 1;
	simt_fake_cuda_reset(&cfg);
	CU_EQ(api.cuInit(0), CUDA_ERROR_NO_DEVICE);
}
END_TEST

START_TEST(fake_memory)
{
	struct simt_fake_config cfg = {.total_mem = 64 << 20, .reserved_mem = 4 << 20};
	struct simt_fake_stats st;
	CUdeviceptr a, b, c;
	size_t fr, total;

	simt_fake_cuda_reset(&cfg);
	simt_fake_cuda_api(&api);
	CU(api.cuInit(0));
	CU_EQ(api.cuMemAlloc(&a, 100), CUDA_ERROR_INVALID_CONTEXT);
	CU(api.cuDevicePrimaryCtxRetain(&ctx, 0));
	CU(api.cuCtxSetCurrent(ctx));
	CU(api.cuMemGetInfo(&fr, &total));
	ck_assert_uint_eq(total, 64 << 20);
	ck_assert_uint_eq(fr, 60 << 20);
	CU(api.cuMemAlloc(&a, 1000));
	ck_assert_uint_eq(a % 256, 0);
	CU(api.cuMemGetInfo(&fr, &total));
	ck_assert_uint_eq(fr, (60 << 20) - 1024);
	CU(api.cuMemAlloc(&b, 10 << 20));
	CU(api.cuMemGetInfo(&fr, &total));
	ck_assert_uint_eq(fr, (50 << 20) - 1024);
	CU_EQ(api.cuMemAlloc(&c, 50 << 20), CUDA_ERROR_OUT_OF_MEMORY);
	CU_EQ(api.cuMemAlloc(&c, 0), CUDA_ERROR_INVALID_VALUE);
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.allocs, 2);
	ck_assert_uint_eq(st.mem_used, (10 << 20) + 1024);
	CU_EQ(api.cuMemFree(a + 4), CUDA_ERROR_INVALID_VALUE);
	CU(api.cuMemFree(a));
	CU_EQ(api.cuMemFree(a), CUDA_ERROR_INVALID_VALUE);
	CU(api.cuMemFree(0));
	CU(api.cuMemFree(b));
	CU(api.cuMemGetInfo(&fr, &total));
	ck_assert_uint_eq(fr, 60 << 20);
	CU(api.cuMemAlloc(&c, (60 << 20) - 512));
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.mem_peak, (60 << 20) - 512);
	CU(api.cuMemFree(c));
	/* releasing the last reference destroys the context and what it held */
	CU(api.cuMemAlloc(&c, 4096));
	CU(api.cuDevicePrimaryCtxRelease(0));
	CU_EQ(api.cuMemGetInfo(&fr, &total), CUDA_ERROR_INVALID_CONTEXT);
	CU_EQ(api.cuDevicePrimaryCtxRelease(0), CUDA_ERROR_INVALID_CONTEXT);
	CU(api.cuDevicePrimaryCtxRetain(&ctx, 0));
	CU(api.cuCtxSetCurrent(ctx));
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.allocs, 0);
}
END_TEST

START_TEST(fake_async_copies)
{
	struct simt_fake_stats st;
	CUstream s;
	CUdeviceptr d;
	unsigned char *src, *dst, page[256], page_out[256];

	fake_up(NULL);
	CU(api.cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
	CU(api.cuMemAlloc(&d, 256));
	CU(api.cuMemAllocHost((void **)&src, 256));
	CU(api.cuMemAllocHost((void **)&dst, 256));
	memset(src, 7, 256);
	memset(dst, 0, 256);
	CU(api.cuMemcpyHtoDAsync(d, src, 256, s));
	CU(api.cuMemcpyDtoHAsync(dst, d, 256, s));
	/* nothing ran yet: a host that reads now reads stale data */
	ck_assert_uint_eq(dst[0], 0);
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.ops_pending, 2);
	/* pinned memory is read when the copy runs, not when it is queued */
	memset(src, 9, 256);
	CU(api.cuStreamSynchronize(s));
	ck_assert_uint_eq(dst[0], 9);
	ck_assert_uint_eq(dst[255], 9);
	/* pageable memory is staged at the call, and a download into it is synchronous */
	memset(page, 3, sizeof(page));
	CU(api.cuMemcpyHtoDAsync(d, page, 256, s));
	memset(page, 4, sizeof(page));
	CU(api.cuMemcpyDtoHAsync(page_out, d, 256, s));
	ck_assert_uint_eq(page_out[100], 3);
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.pageable_copies, 2);
	ck_assert_uint_eq(st.ops_pending, 0);
	/* device to device and memset */
	CU(api.cuMemsetD8Async(d, 0x5a, 100, s));
	CU(api.cuMemcpyDtoHAsync(dst, d, 256, s));
	CU(api.cuStreamSynchronize(s));
	ck_assert_uint_eq(dst[99], 0x5a);
	ck_assert_uint_eq(dst[100], 3);
	/* fresh device memory holds garbage (0xff), not zeros */
	{
		CUdeviceptr e;

		CU(api.cuMemAlloc(&e, 64));
		CU(api.cuMemcpyDtoDAsync(d, e, 64, s));
		CU(api.cuMemcpyDtoHAsync(dst, d, 256, s));
		CU(api.cuStreamSynchronize(s));
		ck_assert_uint_eq(dst[0], 0xff);
		ck_assert_uint_eq(dst[63], 0xff);
		ck_assert_uint_eq(dst[64], 0x5a);
		CU(api.cuMemFree(e));
	}
	/* ranges outside an allocation, unknown streams */
	CU_EQ(api.cuMemcpyHtoDAsync(d + 200, src, 100, s), CUDA_ERROR_INVALID_VALUE);
	CU_EQ(api.cuMemcpyDtoHAsync(dst, d - 1, 8, s), CUDA_ERROR_INVALID_VALUE);
	CU_EQ(api.cuMemcpyHtoDAsync(d, src, 8, (CUstream)(void *)&st), CUDA_ERROR_INVALID_HANDLE);
	CU(api.cuMemcpyHtoDAsync(d, src, 0, s));
	CU(api.cuStreamDestroy(s));
	CU_EQ(api.cuStreamDestroy(s), CUDA_ERROR_INVALID_HANDLE);
	CU_EQ(api.cuStreamDestroy(NULL), CUDA_ERROR_INVALID_HANDLE);
	CU_EQ(api.cuStreamCreate(&s, 4), CUDA_ERROR_INVALID_VALUE);
	CU(api.cuMemFreeHost(src));
	CU(api.cuMemFreeHost(dst));
}
END_TEST

START_TEST(fake_streams_events)
{
	CUstream a, b, nb;
	CUevent e, t0, t1, nt;
	CUdeviceptr x, y;
	unsigned char *src, *dst;
	float ms = -1;

	fake_up(NULL);
	CU(api.cuStreamCreate(&a, CU_STREAM_NON_BLOCKING));
	CU(api.cuStreamCreate(&b, CU_STREAM_NON_BLOCKING));
	CU(api.cuEventCreate(&e, CU_EVENT_DISABLE_TIMING));
	CU(api.cuMemAlloc(&x, 64));
	CU(api.cuMemAlloc(&y, 64));
	CU(api.cuMemAllocHost((void **)&src, 64));
	CU(api.cuMemAllocHost((void **)&dst, 64));
	memset(src, 1, 64);
	memset(dst, 0, 64);
	/* b waits for a's upload: synchronizing b alone is enough */
	CU(api.cuMemcpyHtoDAsync(x, src, 64, a));
	CU(api.cuEventRecord(e, a));
	CU(api.cuStreamWaitEvent(b, e, 0));
	CU(api.cuMemcpyDtoDAsync(y, x, 64, b));
	CU(api.cuMemcpyDtoHAsync(dst, y, 64, b));
	CU(api.cuStreamSynchronize(b));
	ck_assert_uint_eq(dst[0], 1);
	/* without the wait, b copies what x held before a's upload ran */
	memset(src, 2, 64);
	CU(api.cuMemcpyHtoDAsync(x, src, 64, a));
	CU(api.cuMemcpyDtoDAsync(y, x, 64, b));
	CU(api.cuMemcpyDtoHAsync(dst, y, 64, b));
	CU(api.cuStreamSynchronize(b));
	ck_assert_uint_eq(dst[0], 1);
	CU(api.cuStreamSynchronize(a));
	/* queries: not ready at least once, then done */
	CU(api.cuMemcpyHtoDAsync(x, src, 64, a));
	CU(api.cuEventRecord(e, a));
	CU_EQ(api.cuEventQuery(e), CUDA_ERROR_NOT_READY);
	CU_EQ(api.cuStreamQuery(a), CUDA_ERROR_NOT_READY);
	CU(api.cuEventQuery(e));
	CU(api.cuStreamQuery(a));
	CU(api.cuEventCreate(&nt, 0));
	CU(api.cuEventQuery(nt));
	CU(api.cuEventSynchronize(nt));
	CU_EQ(api.cuStreamWaitEvent(a, e, 1), CUDA_ERROR_INVALID_VALUE);
	CU_EQ(api.cuEventCreate(&nt, 4), CUDA_ERROR_INVALID_VALUE);
	/* timing */
	CU(api.cuEventCreate(&t0, 0));
	CU(api.cuEventCreate(&t1, CU_EVENT_BLOCKING_SYNC));
	CU_EQ(api.cuEventElapsedTime(&ms, t0, t1), CUDA_ERROR_INVALID_HANDLE);
	CU(api.cuEventRecord(t0, a));
	CU(api.cuMemcpyHtoDAsync(x, src, 64, a));
	CU(api.cuEventRecord(t1, a));
	CU_EQ(api.cuEventElapsedTime(&ms, t0, t1), CUDA_ERROR_NOT_READY);
	CU(api.cuEventSynchronize(t1));
	CU(api.cuEventElapsedTime(&ms, t0, t1));
	ck_assert(ms >= 0.0f);
	CU_EQ(api.cuEventElapsedTime(&ms, t0, e), CUDA_ERROR_INVALID_HANDLE);
	/* the legacy default stream waits for blocking streams, not for non-blocking ones */
	CU(api.cuStreamCreate(&nb, 0));
	memset(src, 5, 64);
	CU(api.cuMemcpyHtoDAsync(x, src, 64, nb));
	CU(api.cuMemcpyDtoHAsync(dst, x, 64, NULL));
	CU(api.cuStreamSynchronize(NULL));
	ck_assert_uint_eq(dst[0], 5);
	memset(src, 6, 64);
	CU(api.cuMemcpyHtoDAsync(x, src, 64, a));
	CU(api.cuMemcpyDtoHAsync(dst, x, 64, CU_STREAM_LEGACY));
	CU(api.cuStreamSynchronize(CU_STREAM_LEGACY));
	ck_assert_uint_eq(dst[0], 5);
	CU(api.cuCtxSynchronize());
	CU(api.cuEventDestroy(e));
	CU_EQ(api.cuEventQuery(e), CUDA_ERROR_INVALID_HANDLE);
	CU(api.cuEventDestroy(t0));
	CU(api.cuEventDestroy(t1));
	CU(api.cuEventDestroy(nt));
}
END_TEST

START_TEST(fake_launches)
{
	CUmodule mod;
	CUfunction f, g;
	CUstream s;
	CUdeviceptr din, dout;
	float *hin, *hout;
	unsigned blocks = 2;

	fake_up(NULL);
	CU(api.cuStreamCreate(&s, 0));
	CU_EQ(api.cuModuleLoadData(&mod, NULL), CUDA_ERROR_INVALID_VALUE);
	f = fake_kernel(&mod, "st_dyn_reverse");
	CU_EQ(api.cuModuleGetFunction(&g, mod, "no_such_kernel"), CUDA_ERROR_NOT_FOUND);
	CU(api.cuMemAlloc(&din, 256 * sizeof(float)));
	CU(api.cuMemAlloc(&dout, 256 * sizeof(float)));
	CU(api.cuMemAllocHost((void **)&hin, 256 * sizeof(float)));
	CU(api.cuMemAllocHost((void **)&hout, 256 * sizeof(float)));
	for (int i = 0; i < 256; i++)
		hin[i] = (float)i;
	memset(hout, 0, 256 * sizeof(float));
	CU(api.cuMemcpyHtoDAsync(din, hin, 256 * sizeof(float), s));
	{
		void *p[] = {&din, &dout};

		CU(api.cuLaunchKernel(f, blocks, 1, 1, 128, 1, 1, 128 * sizeof(float), s, p, NULL));
		/* the arguments were copied at the call */
		din = 0;
	}
	CU(api.cuMemcpyDtoHAsync(hout, dout, 256 * sizeof(float), s));
	ck_assert(hout[0] != 127.0f);
	CU(api.cuStreamSynchronize(s));
	for (int i = 0; i < 256; i++)
		ck_assert(hout[i] == (float)(i / 128 * 128 + 127 - i % 128));
	/* over 48 KiB of dynamic shared memory needs the function attribute */
	{
		void *p[] = {&dout, &dout};

		CU_EQ(api.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 64 << 10, s, p, NULL),
		      CUDA_ERROR_INVALID_VALUE);
		CU(api.cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
					  64 << 10));
		CU(api.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 64 << 10, s, p, NULL));
		CU_EQ(api.cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
					     300 << 10), CUDA_ERROR_INVALID_VALUE);
		CU_EQ(api.cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, 1),
		      CUDA_ERROR_INVALID_VALUE);
		CU_EQ(api.cuLaunchKernel(f, 1, 1, 1, 2000, 1, 1, 0, s, p, NULL),
		      CUDA_ERROR_INVALID_VALUE);
		ck_assert_ptr_nonnull(strstr(simt_fake_cuda_errmsg(), "over the limits"));
		CU_EQ(api.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, p, p),
		      CUDA_ERROR_INVALID_VALUE);
		CU_EQ(api.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL),
		      CUDA_ERROR_INVALID_VALUE);
		CU(api.cuStreamSynchronize(s));
		CU(api.cuModuleUnload(mod));
		CU_EQ(api.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, p, NULL),
		      CUDA_ERROR_INVALID_HANDLE);
		CU_EQ(api.cuModuleUnload(mod), CUDA_ERROR_INVALID_HANDLE);
	}
	CU(api.cuMemFreeHost(hin));
	CU(api.cuMemFreeHost(hout));
}
END_TEST

/* A kernel of cuda/ (moe_k_scale), by name from the module of the embedded fatbin. */
START_TEST(fatbin_kernel)
{
	size_t size = 0;
	const unsigned char *fb = moe_cuda_fatbin(&size);
	CUmodule mod;
	CUfunction f;
	CUdeviceptr d;
	float v[3] = { 1.5f, -2.0f, 0.25f }, s = -4.0f;
	long long n = 3;

	if (MOE_TEST_FATBIN) {
		ck_assert_msg(fb != NULL, "%s", moe_errmsg());
		ck_assert_uint_gt(size, 64);
		ck_assert_uint_eq((uintptr_t)fb % 64, 0);
		/* a fatbin starts with its magic, 0xba55ed50 little-endian */
		ck_assert(fb[0] == 0x50 && fb[1] == 0xed && fb[2] == 0x55 && fb[3] == 0xba);
	} else {
		ck_assert_ptr_null(fb);
		ck_assert_uint_eq(size, 0);
		ck_assert_ptr_nonnull(strstr(moe_errmsg(), "built without CUDA kernels"));
		fb = (const unsigned char *)"no fatbin";
	}
	fake_up(NULL);
	CU(api.cuModuleLoadData(&mod, fb));
	CU(api.cuModuleGetFunction(&f, mod, "moe_k_scale"));
	CU(api.cuMemAlloc(&d, sizeof(v)));
	CU(api.cuMemcpyHtoDAsync(d, v, sizeof(v), NULL));
	{
		void *p[] = {&d, &s, &n};

		CU(api.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, NULL, p, NULL));
	}
	CU(api.cuMemcpyDtoHAsync(v, d, sizeof(v), NULL));
	ck_assert(v[0] == -6.0f && v[1] == 8.0f && v[2] == -1.0f);
}
END_TEST

START_TEST(fake_faults)
{
	struct simt_fake_config cfg = {.quiet = 1};
	CUdeviceptr a, b, c;
	CUmodule mod;
	CUfunction f;
	CUstream s;
	size_t fr, total;
	int n;
	unsigned out = 0;
	float sc = 2.0f;
	long long n_el = 16;   /* the 64 bytes of a */
	void *p[] = {&a, &sc, &n_el};

	fake_up(&cfg);
	ck_assert_int_eq(simt_fake_cuda_fail("cuNoSuchCall", 1, CUDA_ERROR_UNKNOWN), -1);
	ck_assert_int_eq(simt_fake_cuda_fail("cuMemAlloc", 0, CUDA_ERROR_UNKNOWN), -1);
	ck_assert_int_eq(simt_fake_cuda_fail_kernel(1, CUDA_ERROR_OUT_OF_MEMORY), -1);
	/* the 2nd allocation fails, the others do not */
	ck_assert_int_eq(simt_fake_cuda_fail("cuMemAlloc", 2, CUDA_ERROR_OUT_OF_MEMORY), 0);
	CU(api.cuMemAlloc(&a, 64));
	CU_EQ(api.cuMemAlloc(&b, 64), CUDA_ERROR_OUT_OF_MEMORY);
	CU(api.cuMemAlloc(&c, 64));
	/* a launch refused at the call: not sticky */
	f = fake_kernel(&mod, "moe_k_scale");
	CU(api.cuStreamCreate(&s, 0));
	ck_assert_int_eq(simt_fake_cuda_fail("cuLaunchKernel", 1,
					     CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES), 0);
	CU_EQ(api.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, p, NULL),
	      CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
	CU(api.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, p, NULL));
	CU(api.cuStreamSynchronize(s));
	/* a kernel that faults on the device: accepted, then sticky */
	ck_assert_int_eq(simt_fake_cuda_fail_kernel(2, CUDA_ERROR_ILLEGAL_ADDRESS), 0);
	CU(api.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, p, NULL));
	CU(api.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, p, NULL));
	/* a synchronous download behind it on the legacy stream reports the fault */
	CU_EQ(api.cuMemcpyDtoHAsync(&out, c, sizeof(out), NULL), CUDA_ERROR_ILLEGAL_ADDRESS);
	CU_EQ(api.cuStreamSynchronize(s), CUDA_ERROR_ILLEGAL_ADDRESS);
	ck_assert_ptr_nonnull(strstr(simt_fake_cuda_errmsg(), "moe_k_scale"));
	CU_EQ(api.cuMemAlloc(&b, 64), CUDA_ERROR_ILLEGAL_ADDRESS);
	CU_EQ(api.cuMemGetInfo(&fr, &total), CUDA_ERROR_ILLEGAL_ADDRESS);
	CU_EQ(api.cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
	CU_EQ(api.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, s, p, NULL), CUDA_ERROR_ILLEGAL_ADDRESS);
	/* queries that need no context still answer */
	CU(api.cuDeviceGetCount(&n));
	/* releasing the context to zero and retaining it again recovers */
	CU(api.cuDevicePrimaryCtxRelease(0));
	CU(api.cuDevicePrimaryCtxRetain(&ctx, 0));
	CU(api.cuCtxSetCurrent(ctx));
	CU(api.cuMemAlloc(&b, 64));
	/* the context lost at once */
	simt_fake_cuda_lose_context(CUDA_ERROR_ECC_UNCORRECTABLE);
	CU_EQ(api.cuMemFree(b), CUDA_ERROR_ECC_UNCORRECTABLE);
	CU_EQ(api.cuStreamCreate(&s, 0), CUDA_ERROR_ECC_UNCORRECTABLE);
	CU(api.cuDevicePrimaryCtxRelease(0));
	CU(api.cuDevicePrimaryCtxRetain(&ctx, 0));
	CU(api.cuCtxSetCurrent(ctx));
	/* a sticky result injected into any call loses the context from that call on */
	ck_assert_int_eq(simt_fake_cuda_fail("cuMemcpyHtoDAsync", 1, CUDA_ERROR_LAUNCH_FAILED), 0);
	CU(api.cuMemAlloc(&a, 64));
	CU_EQ(api.cuMemcpyHtoDAsync(a, &out, sizeof(out), NULL), CUDA_ERROR_LAUNCH_FAILED);
	CU_EQ(api.cuMemAlloc(&b, 64), CUDA_ERROR_LAUNCH_FAILED);
	/* and a non-sticky one into a call that needs none */
	ck_assert_int_eq(simt_fake_cuda_fail("cuDeviceGetCount", 1, CUDA_ERROR_NOT_PERMITTED), 0);
	CU_EQ(api.cuDeviceGetCount(&n), CUDA_ERROR_NOT_PERMITTED);
	CU(api.cuDeviceGetCount(&n));
}
END_TEST

/* Kernel bugs found by the emulation surface as the sticky errors a GPU reports. */
START_TEST(fake_kernel_bugs)
{
	struct simt_fake_config cfg = {.quiet = 1};
	CUmodule mod;
	CUfunction f;
	CUdeviceptr d;
	int n = 100;
	void *p[] = {&d, &n};

	fake_up(&cfg);
	f = fake_kernel(&mod, "st_bug_global_oob");
	CU(api.cuMemAlloc(&d, 100 * sizeof(int)));
	CU(api.cuLaunchKernel(f, 1, 1, 1, 128, 1, 1, 0, NULL, p, NULL));
	CU_EQ(api.cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
	ck_assert_ptr_nonnull(strstr(simt_fake_cuda_errmsg(), "thread (100,0,0)"));
	ck_assert_ptr_nonnull(strstr(simt_fake_cuda_errmsg(),
				     "ends 4 bytes past the end of the 400-byte allocation"));
	CU(api.cuDevicePrimaryCtxRelease(0));

	/* use after free */
	fake_up(&cfg);
	f = fake_kernel(&mod, "st_bug_global_oob");
	CU(api.cuMemAlloc(&d, 512 * sizeof(int)));
	CU(api.cuMemFree(d));
	CU(api.cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, NULL, p, NULL));
	CU_EQ(api.cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
	ck_assert_ptr_nonnull(strstr(simt_fake_cuda_errmsg(), "which was freed"));
	CU(api.cuDevicePrimaryCtxRelease(0));

	/* a race: a launch failure */
	fake_up(&cfg);
	f = fake_kernel(&mod, "st_bug_race_write");
	CU(api.cuMemAlloc(&d, 64 * sizeof(float)));
	CU(api.cuLaunchKernel(f, 1, 1, 1, 64, 1, 1, 0, NULL, p, NULL));
	CU_EQ(api.cuStreamSynchronize(NULL), CUDA_ERROR_LAUNCH_FAILED);
	ck_assert_ptr_nonnull(strstr(simt_fake_cuda_errmsg(), "shared-memory race"));
	CU(api.cuDevicePrimaryCtxRelease(0));

	/* a stack overflow */
	fake_up(&cfg);
	f = fake_kernel(&mod, "st_bug_stack");
	CU(api.cuMemAlloc(&d, 64 * sizeof(int)));
	n = 448 << 10;
	CU(api.cuLaunchKernel(f, 1, 1, 1, 2, 1, 1, 0, NULL, p, NULL));
	CU_EQ(api.cuStreamSynchronize(NULL), CUDA_ERROR_HARDWARE_STACK_ERROR);
}
END_TEST

START_TEST(fake_host_memory)
{
	struct simt_fake_config cfg = {.pinned_limit = 1 << 20};
	struct simt_fake_stats st;
	char *buf = aligned_alloc(4096, 2 << 20);
	void *h;

	ck_assert_ptr_nonnull(buf);
	fake_up(&cfg);
	CU(api.cuMemHostRegister(buf, 4096, 0));
	CU_EQ(api.cuMemHostRegister(buf + 100, 10, 0), CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED);
	CU_EQ(api.cuMemHostRegister(buf + 4096, 1 << 20, 0), CUDA_ERROR_OUT_OF_MEMORY);
	CU_EQ(api.cuMemHostRegister(buf + 8192, 0, 0), CUDA_ERROR_INVALID_VALUE);
	CU_EQ(api.cuMemHostRegister(buf + 8192, 64, 0x100), CUDA_ERROR_INVALID_VALUE);
	CU(api.cuMemHostRegister(buf + 8192, 4096, CU_MEMHOSTREGISTER_PORTABLE));
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.pinned, 8192);
	CU_EQ(api.cuMemHostUnregister(buf + 100), CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED);
	CU(api.cuMemHostUnregister(buf));
	CU_EQ(api.cuMemHostUnregister(buf), CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED);
	CU_EQ(api.cuMemFreeHost(buf + 8192), CUDA_ERROR_INVALID_VALUE);
	CU(api.cuMemAllocHost(&h, 1000));
	CU_EQ(api.cuMemHostUnregister(h), CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED);
	CU(api.cuMemFreeHost(h));
	CU_EQ(api.cuMemAllocHost(&h, 2 << 20), CUDA_ERROR_OUT_OF_MEMORY);
	CU(api.cuMemHostUnregister(buf + 8192));
	simt_fake_cuda_stats(&st);
	ck_assert_uint_eq(st.pinned, 0);
	free(buf);
}
END_TEST

static void *other_thread(void *arg)
{
	CUdeviceptr d;
	CUresult *r = arg;

	r[0] = api.cuMemAlloc(&d, 64);
	r[1] = api.cuCtxSetCurrent(ctx);
	r[2] = api.cuMemAlloc(&d, 64);
	return NULL;
}

START_TEST(fake_threads)
{
	pthread_t t;
	CUresult r[3];

	fake_up(NULL);
	ck_assert_int_eq(pthread_create(&t, NULL, other_thread, r), 0);
	pthread_join(t, NULL);
	ck_assert_int_eq(r[0], CUDA_ERROR_INVALID_CONTEXT);
	ck_assert_int_eq(r[1], CUDA_SUCCESS);
	ck_assert_int_eq(r[2], CUDA_SUCCESS);
}
END_TEST

/* Upload, wait for it on another stream, run, download: four rounds. */
static void run_pipeline(int mode, uint64_t seed)
{
	struct simt_fake_config cfg = {.mode = mode, .seed = seed};
	CUstream up, comp;
	CUevent ready;
	CUmodule mod;
	CUfunction f;
	CUdeviceptr din, dout;
	float *h;
	void *p[] = {&din, &dout};

	fake_up(&cfg);
	f = fake_kernel(&mod, "st_dyn_reverse");
	CU(api.cuStreamCreate(&up, CU_STREAM_NON_BLOCKING));
	CU(api.cuStreamCreate(&comp, CU_STREAM_NON_BLOCKING));
	CU(api.cuEventCreate(&ready, CU_EVENT_DISABLE_TIMING));
	CU(api.cuMemAlloc(&din, 64 * sizeof(float)));
	CU(api.cuMemAlloc(&dout, 64 * sizeof(float)));
	CU(api.cuMemAllocHost((void **)&h, 64 * sizeof(float)));
	for (int round = 0; round < 4; round++) {
		for (int i = 0; i < 64; i++)
			h[i] = (float)(i + round);
		CU(api.cuMemcpyHtoDAsync(din, h, 64 * sizeof(float), up));
		CU(api.cuEventRecord(ready, up));
		CU(api.cuStreamWaitEvent(comp, ready, 0));
		CU(api.cuLaunchKernel(f, 1, 1, 1, 64, 1, 1, 64 * sizeof(float), comp, p, NULL));
		CU(api.cuMemcpyDtoHAsync(h, dout, 64 * sizeof(float), comp));
		CU(api.cuStreamSynchronize(comp));
		for (int i = 0; i < 64; i++)
			ck_assert_msg(h[i] == (float)(63 - i + round), "mode %d seed %llu round "
				      "%d: h[%d] = %g", mode, (unsigned long long)seed, round, i,
				      h[i]);
	}
	CU(api.cuDevicePrimaryCtxRelease(0));
}

/* A correct pipeline gives the same results whenever the queued work runs. */
START_TEST(fake_modes)
{
	run_pipeline(SIMT_FAKE_LAZY, 0);
	run_pipeline(SIMT_FAKE_EAGER, 0);
	for (uint64_t seed = 1; seed <= 8; seed++)
		run_pipeline(SIMT_FAKE_RANDOM, seed);
}
END_TEST

/* ---- the libcuda loader and the ABI ---- */

START_TEST(loader_absent)
{
	struct moe_cuda_api a;
	int r = moe_cuda_api_load(&a, "/nonexistent/libcuda.so.1");

	ck_assert_int_eq(r, -ENOENT);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(),
				     "no CUDA driver found: /nonexistent/libcuda.so.1"));
	ck_assert_ptr_null(a.cuInit);
	/* the default name: a driver here or not, the answer is one of the two */
	r = moe_cuda_api_load(&a, NULL);
	if (r == 0) {
		ck_assert_ptr_nonnull(a.cuLaunchKernel);
		moe_cuda_api_unload(&a);
	} else {
		ck_assert_int_eq(r, -ENOENT);
		ck_assert_ptr_nonnull(strstr(moe_errmsg(), "no CUDA driver found: libcuda.so.1"));
	}
	ck_assert_int_eq(moe_cuda_api_load(&a, "libm.so.6"), -ENOSYS);
	ck_assert_ptr_nonnull(strstr(moe_errmsg(), "libm.so.6 has no cuGetErrorName"));
	ck_assert_ptr_null(a.lib);
}
END_TEST

static void *fnptr(const void *slot)
{
	void *p;

	memcpy(&p, slot, sizeof(p));
	return p;
}

static void load_fake_lib(const char *file, struct moe_cuda_api *a)
{
	char path[4096];
	const char *build = getenv("MOE_BUILD");
	void (*bind)(const struct moe_cuda_api *);
	void *sym;
	struct moe_cuda_api fake;

	snprintf(path, sizeof(path), "%s/tests/%s", build ? build : "build", file);
	ck_assert_msg(moe_cuda_api_load(a, path) == 0, "%s", moe_errmsg());
	ck_assert_ptr_nonnull(a->lib);
	sym = dlsym(a->lib, "simt_libcuda_bind");
	ck_assert_ptr_nonnull(sym);
	memcpy(&bind, &sym, sizeof(bind));
	simt_fake_cuda_api(&fake);
	bind(&fake);
}

START_TEST(loader_fake_driver)
{
	struct moe_cuda_api a;
	CUcontext c;
	CUdeviceptr d;
	size_t fr, total;
	float ms;
	CUevent e;

	simt_fake_cuda_reset(NULL);
	load_fake_lib("libcuda_fake.so", &a);
	/* every slot is the library's export under the versioned name */
	ck_assert_ptr_eq(fnptr(&a.cuMemAlloc), dlsym(a.lib, "cuMemAlloc_v2"));
	ck_assert_ptr_eq(fnptr(&a.cuEventElapsedTime), dlsym(a.lib, "cuEventElapsedTime_v2"));
	ck_assert_ptr_eq(fnptr(&a.cuLaunchKernel), dlsym(a.lib, "cuLaunchKernel"));
	ck_assert_int_eq(a.cuInit(0), CUDA_SUCCESS);
	ck_assert_int_eq(a.cuDevicePrimaryCtxRetain(&c, 0), CUDA_SUCCESS);
	ck_assert_int_eq(a.cuCtxSetCurrent(c), CUDA_SUCCESS);
	ck_assert_int_eq(a.cuMemAlloc(&d, 1 << 20), CUDA_SUCCESS);
	ck_assert_int_eq(a.cuMemGetInfo(&fr, &total), CUDA_SUCCESS);
	ck_assert_uint_eq(total - fr, 1 << 20);
	ck_assert_int_eq(a.cuEventCreate(&e, 0), CUDA_SUCCESS);
	ck_assert_int_eq(a.cuEventRecord(e, NULL), CUDA_SUCCESS);
	ck_assert_int_eq(a.cuEventSynchronize(e), CUDA_SUCCESS);
	ck_assert_int_eq(a.cuEventElapsedTime(&ms, e, e), CUDA_SUCCESS);
	ck_assert(ms == 0.0f);
	moe_cuda_api_unload(&a);
	ck_assert_ptr_null(a.lib);
	ck_assert_ptr_null(a.cuInit);

	/* a driver before CUDA 12.8 has the first cuEventElapsedTime only */
	load_fake_lib("libcuda_old.so", &a);
	ck_assert_ptr_null(dlsym(a.lib, "cuEventElapsedTime_v2"));
	ck_assert_ptr_eq(fnptr(&a.cuEventElapsedTime), dlsym(a.lib, "cuEventElapsedTime"));
	moe_cuda_api_unload(&a);
}
END_TEST

START_TEST(cuda_abi)
{
	char msg[512];
	int r = moe_cuda_abi_check(msg, sizeof(msg));

	ck_assert_msg(r > 0, "%s", msg);
}
END_TEST

/* ---- the same kernels on a GPU, where there is one ---- */

enum { G_IN, G_OUT, G_VAL };

struct gparam {
	int kind;
	size_t bytes;
	const void *data;       /* G_IN: the upload; G_VAL: the value */
};

struct glaunch {
	const char *kernel;
	unsigned g[3], b[3], shared;
	unsigned n;
	struct gparam p[8];
};

/* Run @l through @a (a current context, module @mod): the G_OUT buffers into out[]. */
static CUresult grun(const struct moe_cuda_api *a, CUmodule mod, const struct glaunch *l,
		     void **out)
{
	CUdeviceptr d[8] = {0};
	void *params[8];
	CUfunction f;
	CUresult r;

	r = a->cuModuleGetFunction(&f, mod, l->kernel);
	for (unsigned i = 0; i < l->n && !r; i++) {
		const struct gparam *p = &l->p[i];

		params[i] = (void *)p->data;
		if (p->kind == G_VAL)
			continue;
		r = a->cuMemAlloc(&d[i], p->bytes);
		if (!r && p->kind == G_IN)
			r = a->cuMemcpyHtoDAsync(d[i], p->data, p->bytes, NULL);
		if (!r && p->kind == G_OUT)
			r = a->cuMemsetD8Async(d[i], 0, p->bytes, NULL);
		params[i] = &d[i];
	}
	if (!r)
		r = a->cuLaunchKernel(f, l->g[0], l->g[1], l->g[2], l->b[0], l->b[1], l->b[2],
				      l->shared, NULL, params, NULL);
	if (!r)
		r = a->cuCtxSynchronize();
	for (unsigned i = 0; i < l->n && !r; i++) {
		if (l->p[i].kind == G_OUT) {
			out[i] = xcalloc(1, l->p[i].bytes);
			r = a->cuMemcpyDtoHAsync(out[i], d[i], l->p[i].bytes, NULL);
		}
	}
	if (!r)
		r = a->cuCtxSynchronize();
	for (unsigned i = 0; i < l->n; i++)
		if (d[i])
			a->cuMemFree(d[i]);
	return r;
}

/*
 * The self-test kernels whose results do not depend on the order threads run
 * in nor on fast-math approximations, with the same inputs on the GPU and on
 * the emulation: every output byte must match.  This is what checks the
 * emulation's shuffle, vote, dp4a and conversion semantics against hardware.
 */
START_TEST(gpu_matches_emulation)
{
	static float fin[4 * 1024];
	static int iin[3][1024];
	static float hin[MOE_ARRAY_SIZE(half_table)];
	static int zero, per = 256, n_dp = 1024, n_h = MOE_ARRAY_SIZE(half_table);
	static int op[4] = {0, 1, 2, 3}, width[3] = {32, 16, 4};
	static unsigned full = 0xffffffffu;
	static const float x6[6] = {0.75f, 2.5f, 9.0f, 1.0f, 3.0f, 1.7f};
	const struct glaunch launches[] = {
		{"st_block_sum", {4, 2, 1}, {100, 1, 1}, 0, 3,
		 {{G_IN, sizeof(fin), fin}, {G_OUT, 8 * 4, NULL}, {G_VAL, 4, &per}}},
		{"st_warp_sum", {2, 1, 1}, {1000, 1, 1}, 0, 2,
		 {{G_IN, sizeof(fin), fin}, {G_OUT, 2 * 4, NULL}}},
		{"st_shfl", {2, 1, 1}, {64, 1, 1}, 0, 5,
		 {{G_IN, 64 * 4, iin[0]}, {G_OUT, 128 * 4, NULL}, {G_VAL, 4, &op[0]},
		  {G_VAL, 4, &width[1]}, {G_VAL, 4, &full}}},
		{"st_shfl", {2, 1, 1}, {64, 1, 1}, 0, 5,
		 {{G_IN, 64 * 4, iin[1]}, {G_OUT, 128 * 4, NULL}, {G_VAL, 4, &op[1]},
		  {G_VAL, 4, &width[0]}, {G_VAL, 4, &full}}},
		{"st_shfl", {2, 1, 1}, {64, 1, 1}, 0, 5,
		 {{G_IN, 64 * 4, iin[1]}, {G_OUT, 128 * 4, NULL}, {G_VAL, 4, &op[2]},
		  {G_VAL, 4, &width[2]}, {G_VAL, 4, &full}}},
		{"st_shfl", {2, 1, 1}, {64, 1, 1}, 0, 5,
		 {{G_IN, 64 * 4, iin[2]}, {G_OUT, 128 * 4, NULL}, {G_VAL, 4, &op[3]},
		  {G_VAL, 4, &width[1]}, {G_VAL, 4, &full}}},
		{"st_shfl_types", {1, 1, 1}, {64, 1, 1}, 0, 7,
		 {{G_OUT, 64 * 8, NULL}, {G_OUT, 64 * 8, NULL}, {G_OUT, 64 * 4, NULL},
		  {G_OUT, 64 * 4, NULL}, {G_OUT, 64 * 2, NULL}, {G_OUT, 64 * 2, NULL},
		  {G_OUT, 64 * 4, NULL}}},
		{"st_vote", {2, 1, 1}, {40, 1, 1}, 0, 2,
		 {{G_IN, 80 * 4, iin[2]}, {G_OUT, 6 * 80 * 4, NULL}}},
		{"st_dp4a", {8, 1, 1}, {128, 1, 1}, 0, 8,
		 {{G_IN, 1024 * 4, iin[0]}, {G_IN, 1024 * 4, iin[1]}, {G_IN, 1024 * 4, iin[2]},
		  {G_OUT, 1024 * 4, NULL}, {G_OUT, 1024 * 4, NULL}, {G_OUT, 1024 * 4, NULL},
		  {G_OUT, 1024 * 4, NULL}, {G_VAL, 4, &n_dp}}},
		{"st_half", {1, 1, 1}, {64, 1, 1}, 0, 7,
		 {{G_IN, sizeof(hin), hin}, {G_OUT, sizeof(hin) / 2, NULL},
		  {G_OUT, sizeof(hin) / 2, NULL}, {G_OUT, sizeof(hin), NULL},
		  {G_OUT, sizeof(hin), NULL}, {G_OUT, 7 * sizeof(hin), NULL}, {G_VAL, 4, &n_h}}},
		{"st_dyn_reverse", {3, 1, 1}, {5, 4, 3}, 60 * 4, 2,
		 {{G_IN, sizeof(fin), fin}, {G_OUT, 180 * 4, NULL}}},
		{"st_index", {3, 4, 2}, {5, 3, 2}, 0, 1, {{G_OUT, 8 * 720 * 4, NULL}}},
		{"st_misc", {1, 1, 1}, {32, 1, 1}, 0, 7,
		 {{G_IN, sizeof(x6), x6}, {G_OUT, 12 * 4, NULL}, {G_OUT, 12 * 4, NULL},
		  {G_IN, 128 * 4, fin}, {G_OUT, 128 * 4, NULL}, {G_IN, 128 * 4, iin[0]},
		  {G_OUT, 128 * 4, NULL}}},
	};
	struct moe_cuda_api gpu, fake;
	char path[4096];
	const char *build = getenv("MOE_BUILD");
	size_t image_len;
	void *image;
	CUmodule gmod, fmod;
	CUcontext gctx;
	CUdevice dev;
	uint64_t r = 77;

	(void)zero;
	for (size_t i = 0; i < MOE_ARRAY_SIZE(fin); i++)
		fin[i] = (float)((int)(tu_rand(&r) % 19) - 9);
	for (int k = 0; k < 3; k++)
		for (int i = 0; i < 1024; i++)
			iin[k][i] = k == 1 ? (int)(tu_rand(&r) % 40) - 4 : (int)(uint32_t)tu_rand(&r);
	for (size_t i = 0; i < MOE_ARRAY_SIZE(half_table); i++)
		hin[i] = bitsf(half_table[i][0]);
	snprintf(path, sizeof(path), "%s/cuda/selftest.fatbin", build ? build : "build");
	image = tu_read_file(path, &image_len);
	ck_assert_msg(image != NULL, "%s: not built", path);
	ck_assert_msg(moe_cuda_api_load(&gpu, NULL) == 0, "%s", moe_errmsg());
	CU_EQ(gpu.cuInit(0), CUDA_SUCCESS);
	CU_EQ(gpu.cuDeviceGet(&dev, 0), CUDA_SUCCESS);
	CU_EQ(gpu.cuDevicePrimaryCtxRetain(&gctx, dev), CUDA_SUCCESS);
	CU_EQ(gpu.cuCtxSetCurrent(gctx), CUDA_SUCCESS);
	CU_EQ(gpu.cuModuleLoadData(&gmod, image), CUDA_SUCCESS);
	fake_up(NULL);
	fake = api;
	CU(fake.cuModuleLoadData(&fmod, image));
	for (size_t i = 0; i < MOE_ARRAY_SIZE(launches); i++) {
		const struct glaunch *l = &launches[i];
		void *go[8] = {0}, *fo[8] = {0};

		CU_EQ(grun(&gpu, gmod, l, go), CUDA_SUCCESS);
		CU(grun(&fake, fmod, l, fo));
		for (unsigned k = 0; k < l->n; k++) {
			if (l->p[k].kind != G_OUT)
				continue;
			/* st_misc's float results come from fast-math intrinsics: not compared */
			if (strcmp(l->kernel, "st_misc") || k != 1)
				ck_assert_msg(!memcmp(go[k], fo[k], l->p[k].bytes), "%s (launch %zu): "
					      "parameter %u differs between the GPU and the emulation",
					      l->kernel, i, k);
			free(go[k]);
			free(fo[k]);
		}
	}
	gpu.cuModuleUnload(gmod);
	gpu.cuDevicePrimaryCtxRelease(dev);
	moe_cuda_api_unload(&gpu);
	free(image);
}
END_TEST

/* A driver, a device and the self-test fatbin: why not in @why. */
static bool gpu_available(char *why, size_t len)
{
	struct moe_cuda_api a;
	char path[4096];
	const char *build = getenv("MOE_BUILD");
	int n = 0;

	snprintf(path, sizeof(path), "%s/cuda/selftest.fatbin", build ? build : "build");
	if (access(path, R_OK)) {
		snprintf(why, len, "no cuda/selftest.fatbin in the build directory (made when nvcc "
			 "is installed)");
		return false;
	}
	if (moe_cuda_api_load(&a, NULL)) {
		snprintf(why, len, "needs a GPU: %s", moe_errmsg());
		return false;
	}
	if (a.cuInit(0) || a.cuDeviceGetCount(&n) || !n) {
		snprintf(why, len, "needs a GPU: the CUDA driver sees no device");
		n = 0;
	}
	moe_cuda_api_unload(&a);
	return n > 0;
}

Suite *suite_simt(void)
{
	Suite *s = suite_create("simt");
	TCase *emu = tcase_create("emulation"), *bugs = tcase_create("bugs");
	TCase *fake = tcase_create("fake_driver"), *ld = tcase_create("loader"), *gpu;
	char msg[512];

	tcase_add_test(emu, block_sum_shapes);
	tcase_add_test(emu, warp_sums);
	tcase_add_test(emu, shuffles);
	tcase_add_test(emu, shuffle_types);
	tcase_add_test(emu, votes);
	tcase_add_test(emu, atomics_serial);
	tcase_add_test(emu, atomics_parallel);
	tcase_add_test(emu, dp4a);
	tcase_add_test(emu, half_bf16);
	tcase_add_test(emu, dynamic_shared);
	tcase_add_test(emu, indices);
	tcase_add_test(emu, fiber_order);
	tcase_add_test(emu, intrinsics);
	tcase_add_test(emu, ucontext_switch);
	tcase_add_test(emu, many_launches);
	tcase_add_test(emu, registry_and_config);
	tcase_add_test(emu, invalid_launches);
	tcase_set_timeout(emu, 240);
	suite_add_tcase(s, emu);

	tcase_add_test(bugs, bug_barriers);
	tcase_add_test(bugs, bug_warps);
	tcase_add_test(bugs, bug_stack);
	tcase_add_test(bugs, bug_races);
	tcase_add_test(bugs, bug_shared_memory);
	tcase_add_test(bugs, bug_illegal_address);
#ifdef TEST_ASAN
	tcase_add_test(bugs, asan_global_oob);
#else
	(void)asan_global_oob;
	tu_skip("simt asan_global_oob", "an emulated kernel's out-of-bounds read of host memory "
		"is reported by AddressSanitizer only: run make check SANITIZE=1");
#endif
	tcase_set_timeout(bugs, 120);
	suite_add_tcase(s, bugs);

	tcase_add_test(fake, fake_device);
	tcase_add_test(fake, fake_memory);
	tcase_add_test(fake, fake_async_copies);
	tcase_add_test(fake, fake_streams_events);
	tcase_add_test(fake, fake_launches);
	tcase_add_test(fake, fatbin_kernel);
	tcase_add_test(fake, fake_faults);
	tcase_add_test(fake, fake_kernel_bugs);
	tcase_add_test(fake, fake_host_memory);
	tcase_add_test(fake, fake_threads);
	tcase_add_test(fake, fake_modes);
	tcase_set_timeout(fake, 120);
	suite_add_tcase(s, fake);

	tcase_add_test(ld, loader_absent);
	tcase_add_test(ld, loader_fake_driver);
	if (moe_cuda_abi_check(msg, sizeof(msg)) == 0)
		tu_skip("simt cuda_abi", msg);
	else
		tcase_add_test(ld, cuda_abi);
	suite_add_tcase(s, ld);

	gpu = tcase_create("gpu");
	if (gpu_available(msg, sizeof(msg)))
		tcase_add_test(gpu, gpu_matches_emulation);
	else
		tu_skip("simt gpu_matches_emulation", msg);
	tcase_set_timeout(gpu, 120);
	suite_add_tcase(s, gpu);
	return s;
}
