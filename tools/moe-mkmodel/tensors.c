/* SPDX-License-Identifier: MIT */
/*
 * The weights: every tensor draws from its own random stream, seeded from
 * --seed and the tensor's name, generated with integer arithmetic and basic
 * IEEE float operations (libm only computes a few constants: router
 * popularity, RoPE frequency factors), then converted by libmoe's
 * quantizers, so the same options give the same bytes.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkmodel.h"


static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The seed of one named stream: FNV-1a of the name, mixed with the model seed and a salt. */
static uint64_t stream_seed(uint64_t seed, const char *name, uint64_t salt)
{
	uint64_t h = 0xcbf29ce484222325ull, s;

	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 0x100000001b3ull;
	s = seed ^ h ^ (salt * 0xd6e8feb86659fd93ull);
	splitmix(&s);
	return s;
}

/*
 * Close to N(0, 1): the sum of four 16-bit uniforms (Irwin-Hall), centred
 * and scaled.  Tails stop at +-3.46, which weights do not miss, and unlike
 * Box-Muller it needs no libm call whose last bit could differ between
 * machines.
 */
static float gauss(uint64_t *s)
{
	uint64_t r = splitmix(s);
	uint32_t sum = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) +
		       (uint32_t)((r >> 32) & 0xffff) + (uint32_t)(r >> 48);

	return ((float)sum - 131070.0f) * (1.7320508f / 65536.0f);
}


/* ------------------------------------------------------------- conversion */

/*
 * Every type goes through moe_quantize (f32, f16 and bf16 included), which
 * answers a zero-length request with 0 exactly when it has a kernel.  q8_K
 * is the K-quants' activation type, which llama.cpp cannot use for weights.
 */
bool mk_type_supported(uint32_t type)
{
	return type != MOE_TYPE_Q8_K && moe_quantize(type, NULL, NULL, 0) == 0;
}

static int convert(uint32_t type, const float *src, void *dst, uint64_t n)
{
	int64_t ret = moe_quantize(type, src, dst, (int64_t)n);

	return ret < 0 ? (int)ret : 0;
}

/* Quantizing dominates the run time of quantized models: rows are split over the CPUs. */
struct convert_job {
	uint32_t type;
	const float *src;
	uint8_t *dst;
	uint64_t rows, ne0, row_bytes;
	int err;
};

static void convert_part(void *arg, int ith, int nth)
{
	struct convert_job *j = arg;
	uint64_t r0 = j->rows * (uint64_t)ith / (uint64_t)nth;
	uint64_t r1 = j->rows * (uint64_t)(ith + 1) / (uint64_t)nth;
	int ret;

	if (r0 == r1)
		return;
	/* whole rows, so every quant block lies inside one row */
	ret = convert(j->type, j->src + r0 * j->ne0, j->dst + r0 * j->row_bytes,
		      (r1 - r0) * j->ne0);
	if (ret)
		__atomic_store_n(&j->err, ret, __ATOMIC_RELAXED);
}


/* ------------------------------------------------------------------ tensors */

static uint32_t pick_type(struct model *m, enum tclass tc, uint32_t n_dims, uint64_t ne0,
			  const char *name)
{
	uint32_t want = tc == TC_EXPERT ? m->o->type : m->o->type_other;
	uint32_t got, layer;
	int used = 0;

	if (tc == TC_EXPERT && m->o->type_down &&
	    sscanf(name, "blk.%u.ffn_down_exps.weigh%n", &layer, &used) == 1 && used && layer % 3 == 0)
		want = m->o->type_down;

	if (tc == TC_F32 || n_dims < 2)
		return MOE_TYPE_F32;
	if (ne0 % moe_type_block_elems(want) == 0)
		return want;
	got = mk_type_supported(MOE_TYPE_Q8_0) && ne0 % moe_type_block_elems(MOE_TYPE_Q8_0) == 0 ?
		      MOE_TYPE_Q8_0 : MOE_TYPE_F16;
	/* at most two asked types and two fallbacks each: the table cannot overflow */
	for (size_t i = 0; i < ARRAY_LEN(m->fallback); i++) {
		struct fallback *fb = &m->fallback[i];

		if (!fb->count) {
			fb->from = want;
			fb->to = got;
			snprintf(fb->example, sizeof(fb->example), "%s", name);
		}
		if (fb->from == want && fb->to == got) {
			fb->count++;
			break;
		}
	}
	return got;
}

int mk_add(struct model *m, enum tclass tc, enum gen_kind kind, float scale, const float *table,
	   uint32_t n_dims, uint64_t ne0, uint64_t ne1, uint64_t ne2, const char *fmt, ...)
{
	struct gtensor *t;
	va_list ap;
	int n;

	if (m->n_t == m->cap_t) {
		size_t cap = m->cap_t ? m->cap_t * 2 : 256;
		struct gtensor *p = realloc(m->t, cap * sizeof(*p));

		if (!p) {
			fprintf(stderr, PROG ": out of memory\n");
			return -ENOMEM;
		}
		m->t = p;
		m->cap_t = cap;
	}
	t = &m->t[m->n_t];
	memset(t, 0, sizeof(*t));
	va_start(ap, fmt);
	n = vsnprintf(t->name, sizeof(t->name), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(t->name)) {
		fprintf(stderr, PROG ": tensor name too long\n");
		return -EINVAL;
	}
	t->n_dims = n_dims;
	t->ne[0] = ne0;
	t->ne[1] = ne1;
	t->ne[2] = ne2;
	t->kind = kind;
	t->scale = scale;
	t->table = table;
	t->seed = stream_seed(m->o->seed, t->name, 0);
	t->m = m;
	t->type = pick_type(m, tc, n_dims, ne0, t->name);
	m->n_t++;
	return 0;
}

float mk_w_in(uint64_t fan_in)
{
	return 1.0f / sqrtf((float)fan_in);
}

/*
 * Projections that write into the residual stream are scaled down by
 * sqrt(2 * layers) so the stream's variance stays bounded (as GPT-2's
 * initialisation does) and the embedding's direction survives to the
 * last layer, where the routers still see it.
 */
float mk_w_out(const struct model *m, uint64_t fan_in)
{
	return mk_w_in(fan_in) / sqrtf(2.0f * (float)m->o->layers);
}


/*
 * Routers.  Each MoE layer gets fresh Gaussian rows plus, with --router-skew,
 * a Zipf-like popularity: expert e of popularity rank r gets a logit bias of
 * about -s*ln(1 + r) for any hidden state, carried by the component along
 * the mean direction every token embedding shares.  With
 * --layer-correlation c, layer l's router is c * (layer l-1's) +
 * sqrt(1 - c^2) * (fresh), which keeps the logit variance of a fresh router
 * while adjacent layers pick related experts for the same hidden state.
 */
static int fresh_router(struct model *m, uint32_t l, float *r)
{
	const struct opts *o = m->o;
	uint32_t n = o->embd, e = o->experts;
	uint64_t s = stream_seed(o->seed, "router", l + 1);
	float std = mk_w_in(n);
	uint32_t *rank;
	double mean = 0;

	for (uint64_t i = 0; i < (uint64_t)n * e; i++)
		r[i] = gauss(&s) * std;
	if (o->router_skew <= 0)
		return 0;
	/*
	 * The noise must not see the mean direction, or it would add a random
	 * per-expert bias of its own; and it reads only the token-specific part
	 * of x, of RMS sqrt(1 - kappa^2), so it is scaled up to keep logits of
	 * unit variance.
	 */
	for (uint32_t i = 0; i < e; i++) {
		float *row = r + (uint64_t)i * n;
		double d = 0;

		for (uint32_t j = 0; j < n; j++)
			d += (double)row[j] * m->mu[j];
		for (uint32_t j = 0; j < n; j++)
			row[j] = (float)((row[j] - d / n * m->mu[j]) /
					 sqrt(1.0 - (double)m->kappa * m->kappa));
	}
	rank = malloc(e * sizeof(*rank));
	if (!rank)
		return -ENOMEM;
	for (uint32_t i = 0; i < e; i++)
		rank[i] = i;
	for (uint32_t i = e - 1; i > 0; i--) {
		uint32_t j = (uint32_t)(splitmix(&s) % (i + 1)), t = rank[i];

		rank[i] = rank[j];
		rank[j] = t;
	}
	for (uint32_t i = 0; i < e; i++)
		mean += log(1.0 + rank[i]);
	mean /= e;
	for (uint32_t i = 0; i < e; i++) {
		/* x . mu ~= kappa * n for x = RMSNorm(h), so this shifts the logit by `shift` */
		double shift = -o->router_skew * (log(1.0 + rank[i]) - mean);
		float a = (float)(shift / (m->kappa * n));

		for (uint32_t j = 0; j < n; j++)
			r[(uint64_t)i * n + j] += a * m->mu[j];
	}
	free(rank);
	return 0;
}

/*
 * Llama 3 style RoPE scaling, which real Llama 4 files carry as rope_freqs:
 * with an original context of 8192, wavelengths under 8192/4 keep their
 * frequency, those over 8192 are divided by the factor, and the band between
 * blends the two.
 */
static float *llama3_rope_freqs(const struct opts *o)
{
	const double orig = 8192, low = 1, high = 4, factor = o->rope_freqs_factor;
	uint32_t half = o->head_dim / 2;
	float *f = malloc(half * sizeof(float));

	for (uint32_t i = 0; f && i < half; i++) {
		double wavelen = 2 * M_PI * pow(o->rope_base, 2.0 * i / o->head_dim);
		double smooth = (orig / wavelen - low) / (high - low);

		if (wavelen < orig / high)
			f[i] = 1.0f;
		else if (wavelen > orig / low)
			f[i] = (float)factor;
		else
			f[i] = (float)(1.0 / ((1 - smooth) / factor + smooth));
	}
	return f;
}

int mk_make_structure(struct model *m)
{
	const struct opts *o = m->o;
	uint32_t n = o->embd;
	uint64_t s = stream_seed(o->seed, "mean-direction", 0);
	float c = (float)o->layer_corr, c2 = sqrtf(1.0f - c * c);
	const float *prev = NULL;
	double ss = 0;

	m->kappa = o->router_skew > 0 ? 0.5f : 0.0f;
	m->mu = malloc(n * sizeof(float));
	m->routers = calloc(o->layers, sizeof(*m->routers));
	if (!m->mu || !m->routers)
		return -ENOMEM;
	for (uint32_t j = 0; j < n; j++) {
		m->mu[j] = gauss(&s);
		ss += (double)m->mu[j] * m->mu[j];
	}
	for (uint32_t j = 0; j < n; j++)
		m->mu[j] = (float)(m->mu[j] / sqrt(ss / n));
	for (uint32_t l = 0; l < o->layers; l++) {
		float *r;
		int ret;

		if (!mk_is_moe_layer(o, l))
			continue;
		/* a sparse file has no weights, so no routers to correlate */
		if (o->sparse) {
			m->n_moe++;
			continue;
		}
		r = malloc((size_t)n * o->experts * sizeof(float));
		if (!r)
			return -ENOMEM;
		m->routers[l] = r;
		ret = fresh_router(m, l, r);
		if (ret)
			return ret;
		if (prev)
			for (uint64_t i = 0; i < (uint64_t)n * o->experts; i++)
				r[i] = c * prev[i] + c2 * r[i];
		prev = r;
		m->n_moe++;
	}
	if (is_arch(o, MOE_ARCH_GEMMA4)) {
		/* "proportional" partial RoPE: the first pairs rotate, the rest are frozen */
		uint32_t half = o->head_dim / 2, rot = (uint32_t)(o->partial_rotary * half);

		m->rope_freqs = malloc(half * sizeof(float));
		if (!m->rope_freqs)
			return -ENOMEM;
		for (uint32_t i = 0; i < half; i++)
			m->rope_freqs[i] = i < rot ? 1.0f : 1e30f;
	}
	if (is_arch(o, MOE_ARCH_LLAMA4) && o->rope_freqs_factor > 0) {
		m->rope_freqs = llama3_rope_freqs(o);
		if (!m->rope_freqs)
			return -ENOMEM;
	}
	return 0;
}

void mk_model_free(struct model *m)
{
	if (m->routers)
		for (uint32_t l = 0; l < m->o->layers; l++)
			free(m->routers[l]);
	free(m->routers);
	free(m->mu);
	free(m->rope_freqs);
	free(m->scratch);
	free(m->t);
	moe_threadpool_destroy(m->pool);
}

static void show_progress(struct model *m, uint64_t bytes)
{
	int pct;

	m->bytes_done += bytes;
	if (!m->progress || !m->bytes_total)
		return;
	pct = (int)(m->bytes_done * 100 / m->bytes_total);
	if (pct != m->last_pct) {
		m->last_pct = pct;
		fprintf(stderr, "\r" PROG ": writing %s: %3d%%", m->o->out, pct);
	}
}

int mk_fill(void *ctx, uint64_t row, uint64_t n_rows, void *dst)
{
	struct gtensor *t = ctx;
	struct model *m = t->m;
	uint64_t ne0 = t->ne[0], n = n_rows * ne0;
	float *f, a;
	int ret;

	if (n > m->scratch_cap) {
		f = realloc(m->scratch, n * sizeof(float));
		if (!f) {
			fprintf(stderr, PROG ": out of memory generating %s\n", t->name);
			return -ENOMEM;
		}
		m->scratch = f;
		m->scratch_cap = n;
	}
	f = m->scratch;
	if (row == 0)
		t->state = t->seed;
	switch (t->kind) {
	case GEN_NORMAL:
		for (uint64_t i = 0; i < n; i++)
			f[i] = gauss(&t->state) * t->scale;
		break;
	case GEN_CONST:
		for (uint64_t i = 0; i < n; i++)
			f[i] = t->scale;
		break;
	case GEN_TABLE:
		for (uint64_t i = 0; i < n; i++)
			f[i] = t->table[row * ne0 + i] * t->scale;
		break;
	case GEN_EMBD:
		a = sqrtf(1.0f - m->kappa * m->kappa);
		for (uint64_t i = 0; i < n; i++)
			f[i] = (a * gauss(&t->state) + m->kappa * m->mu[i % ne0]) * t->scale;
		break;
	}
	if (m->pool && moe_type_block_elems(t->type) > 1) {
		struct convert_job j = {
			.type = t->type, .src = f, .dst = dst, .rows = n_rows, .ne0 = ne0,
			.row_bytes = (uint64_t)moe_type_row_bytes(t->type, ne0),
		};

		moe_threadpool_run(m->pool, convert_part, &j);
		ret = j.err;
	} else {
		ret = convert(t->type, f, dst, n);
	}
	if (ret)
		return ret;
	show_progress(m, n * moe_type_block_bytes(t->type) / moe_type_block_elems(t->type));
	return 0;
}

