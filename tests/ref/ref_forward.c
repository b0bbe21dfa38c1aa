// SPDX-License-Identifier: MIT
/*
 * The naive float64 reference forward pass (see ref_forward.h).
 *
 * Everything is computed in double, layer by layer over the whole sequence,
 * with weights read by pread and widened to double as each layer needs
 * them (F32/F16/BF16 here, quantized blocks through moe_dequantize).
 * Shapes are taken from the tensors themselves; metadata supplies only
 * what shapes cannot (head counts, eps, RoPE, windows).  Nothing here
 * is fast, and nothing is meant to be: the code follows the formulas in
 * FORMATS.md §3-4, §7 and GEMMA4.md line by line so that it can be read
 * against them.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe/moe.h"
#include "util/util.h"

#include "ref_forward.h"

enum arch_id { ARCH_LLAMA, ARCH_QWEN3MOE, ARCH_LLAMA4, ARCH_GPTOSS, ARCH_GEMMA4, ARCH_DEEPSEEK2,
	       ARCH_GLM4MOE };
enum act { ACT_SILU, ACT_SWIGLU_OAI, ACT_GELU, ACT_GELU_F16 };
enum mask { MASK_CAUSAL, MASK_SLIDING, MASK_CHUNKED };

/* What differs between the architectures before any per-file key is read. */
struct arch_desc {
	const char *name;
	enum arch_id id;
	bool rope_neox;         /* pairs (i, i + n_rot/2) instead of (2i, 2i+1) */
	int gating;             /* enum moe_gating */
	bool norm_w;            /* renormalise the chosen weights */
	bool weight_before_ffn; /* the routing weight scales the expert input */
	enum act act;
};

static const struct arch_desc arch_table[] = {
	{ "llama", ARCH_LLAMA, false, MOE_GATING_SOFTMAX, true, false, ACT_SILU },
	{ "qwen3moe", ARCH_QWEN3MOE, true, MOE_GATING_SOFTMAX, true, false, ACT_SILU },
	{ "llama4", ARCH_LLAMA4, false, MOE_GATING_SIGMOID, false, true, ACT_SILU },
	{ "gpt-oss", ARCH_GPTOSS, true, MOE_GATING_SOFTMAX_SELECTED, false, false,
	  ACT_SWIGLU_OAI },
	{ "gemma4", ARCH_GEMMA4, true, MOE_GATING_SOFTMAX, true, false, ACT_GELU },
	/* DeepSeek-V2 files lack expert_gating_func: softmax, without renormalising */
	{ "deepseek2", ARCH_DEEPSEEK2, false, MOE_GATING_SOFTMAX, false, false, ACT_SILU },
	{ "glm4moe", ARCH_GLM4MOE, true, MOE_GATING_SIGMOID, true, false, ACT_SILU },
};

/* A weight widened to double: rows output units of cols inputs each. */
struct mat {
	double *w;
	uint64_t rows, cols;
};

#define REF_MAX_OWNED 64
#define MOE_ROUTE_REF_GROUPS 64

struct ref {
	const char *path;
	struct moe_model *m;
	int fd;
	const struct arch_desc *a;
	const struct ref_opts *o;
	int n_layer, n_embd, n_head, n_vocab, n_expert, n_used_max;
	int n_block;            /* block_count: n_layer plus the NextN blocks that are skipped */
	/*
	 * gemma4 E2B/E4B: layers from kv_start on reuse the K/V of the last
	 * sliding (kept[0]) or full (kept[1]) layer before them; ple holds the
	 * per-layer embedding inputs [n][n_layer][n_pl].
	 */
	int kv_start, n_pl;
	double *kept_k[2], *kept_v[2];
	double *ple;
	double eps;
	/* weights loaded for the current layer, freed when it is done */
	double *owned[REF_MAX_OWNED];
	int n_owned;
};

/* ------------------------------------------------------------ metadata */

static int meta_scalar(const struct moe_meta *mv, double *out)
{
	switch (mv->type) {
	case MOE_META_U8: case MOE_META_U16: case MOE_META_U32: case MOE_META_U64:
	case MOE_META_BOOL:
		*out = (double)mv->v.u64;
		return 0;
	case MOE_META_I8: case MOE_META_I16: case MOE_META_I32: case MOE_META_I64:
		*out = (double)mv->v.i64;
		return 0;
	case MOE_META_F32: case MOE_META_F64:
		*out = mv->v.f64;
		return 0;
	}
	return moe_err(EINVAL, "key '%s' is not a number (type %u)", mv->key, mv->type);
}

/*
 * "{arch}.@suffix" as a number; a per-layer array gives entry @layer (entry
 * 0 for layer -1).  Absent keys give @def.  With @pad_zero an array shorter
 * than the layer count reads 0 past its end (gemma4's SWA pattern).
 */
static int meta_num_ex(struct ref *r, const char *suffix, int layer, double def, bool pad_zero,
		       double *out)
{
	struct moe_meta mv;
	char key[160];
	uint64_t i = layer < 0 ? 0 : (uint64_t)layer;
	int64_t iv;
	int ret;

	snprintf(key, sizeof(key), "%s.%s", r->a->name, suffix);
	ret = moe_meta_get(r->m, key, &mv);
	if (ret == -ENOENT) {
		*out = def;
		return 0;
	}
	if (ret < 0)
		return ret;
	if (mv.type != MOE_META_ARRAY)
		return meta_scalar(&mv, out);
	if (i >= mv.count) {
		if (pad_zero) {
			*out = 0;
			return 0;
		}
		return moe_err(EINVAL, "key '%s' has %llu entries but layer %llu needs one: write "
			       "one entry per block", key, (unsigned long long)mv.count,
			       (unsigned long long)i);
	}
	if (mv.elem_type == MOE_META_F32 || mv.elem_type == MOE_META_F64)
		return moe_meta_array_f64(&mv, i, out);
	ret = moe_meta_array_i64(&mv, i, &iv);
	if (ret < 0)
		return ret;
	*out = (double)iv;
	return 0;
}

static int meta_num(struct ref *r, const char *suffix, int layer, double def, double *out)
{
	return meta_num_ex(r, suffix, layer, def, false, out);
}

static int meta_int(struct ref *r, const char *suffix, int layer, int def, int *out)
{
	double v;
	int ret = meta_num(r, suffix, layer, def, &v);

	if (ret < 0)
		return ret;
	if (v < 0 || v > 1e9 || v != floor(v))
		return moe_err(EINVAL, "key '%s.%s' = %g is not a count", r->a->name, suffix, v);
	*out = (int)v;
	return 0;
}

/* ------------------------------------------------------------ tensors */

static double half_to_double(uint16_t h)
{
	int e = (h >> 10) & 31;
	int f = h & 1023;
	double v;

	if (e == 0)
		v = ldexp(f, -24);
	else if (e == 31)
		v = f ? NAN : INFINITY;
	else
		v = ldexp(1024 + f, e - 25);
	return (h & 0x8000) ? -v : v;
}

static int widen(const struct ref *r, const struct moe_tensor_info *ti, const uint8_t *src,
		 uint64_t n, double *dst)
{
	uint64_t i;

	switch (ti->type) {
	case MOE_TYPE_F32:
		for (i = 0; i < n; i++) {
			float f;

			memcpy(&f, src + 4 * i, 4);
			dst[i] = f;
		}
		return 0;
	case MOE_TYPE_F16:
		for (i = 0; i < n; i++) {
			uint16_t h;

			memcpy(&h, src + 2 * i, 2);
			dst[i] = half_to_double(h);
		}
		return 0;
	case MOE_TYPE_BF16:
		for (i = 0; i < n; i++) {
			uint16_t b;
			uint32_t u;
			float f;

			memcpy(&b, src + 2 * i, 2);
			u = (uint32_t)b << 16;
			memcpy(&f, &u, 4);
			dst[i] = f;
		}
		return 0;
	}
	/* quantized blocks: libmoe's dequantizers are the one piece shared with the engine */
	{
		float *f = malloc(sizeof(float) * (n ? n : 1));
		int ret;

		if (!f)
			return moe_err(ENOMEM, "reference: %llu floats", (unsigned long long)n);
		ret = moe_dequantize(ti->type, src, f, (int64_t)n);
		for (i = 0; !ret && i < n; i++)
			dst[i] = f[i];
		free(f);
		if (ret < 0)
			return moe_err_prefix(ret, "%s: tensor '%s'", r->path, ti->name);
		return 0;
	}
}

static uint64_t tensor_rows(const struct moe_tensor_info *ti)
{
	uint64_t rows = 1;

	for (uint32_t d = 1; d < ti->n_dims; d++)
		rows *= ti->ne[d];
	return rows;
}

/* Rows [row0, row0 + n_rows) of a tensor, viewed as a 2-D matrix of ne[0] columns. */
static int read_rows(struct ref *r, const struct moe_tensor_info *ti, uint64_t row0,
		     uint64_t n_rows, double *dst)
{
	int64_t rb = moe_type_row_bytes(ti->type, ti->ne[0]);
	uint64_t bytes, off, done = 0;
	uint8_t *buf;
	int ret;

	if (rb <= 0)
		return moe_err(EINVAL, "%s: tensor '%s': bad row of %llu elements of type %u",
			       r->path, ti->name, (unsigned long long)ti->ne[0], ti->type);
	if (row0 + n_rows > tensor_rows(ti))
		return moe_err(EINVAL, "%s: tensor '%s': rows %llu..%llu past its %llu rows",
			       r->path, ti->name, (unsigned long long)row0,
			       (unsigned long long)(row0 + n_rows),
			       (unsigned long long)tensor_rows(ti));
	bytes = n_rows * (uint64_t)rb;
	off = ti->offset + row0 * (uint64_t)rb;
	buf = malloc(bytes ? bytes : 1);
	if (!buf)
		return moe_err(ENOMEM, "%s: %llu bytes for tensor '%s'", r->path,
			       (unsigned long long)bytes, ti->name);
	while (done < bytes) {
		ssize_t got = pread(r->fd, buf + done, bytes - done, (off_t)(off + done));

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			ret = got < 0 ? -errno : -EIO;
			free(buf);
			return moe_err(-ret, "%s: reading tensor '%s' at %llu: %s", r->path,
				       ti->name, (unsigned long long)(off + done),
				       got < 0 ? strerror(-ret) : "file too short");
		}
		done += (uint64_t)got;
	}
	ret = widen(r, ti, buf, n_rows * ti->ne[0], dst);
	free(buf);
	return ret;
}

static int find(struct ref *r, int layer, const char *name, struct moe_tensor_info *ti)
{
	char full[128];

	if (layer >= 0)
		snprintf(full, sizeof(full), "blk.%d.%s", layer, name);
	else
		snprintf(full, sizeof(full), "%s", name);
	return moe_model_find_tensor(r->m, full, ti) < 0 ? -ENOENT : 0;
}

static bool has(struct ref *r, int layer, const char *name)
{
	struct moe_tensor_info ti;

	return find(r, layer, name, &ti) == 0;
}

static int own(struct ref *r, double *p)
{
	if (r->n_owned == REF_MAX_OWNED) {
		free(p);
		return moe_err(ENOSPC, "reference: more than %d weights in one layer",
			       REF_MAX_OWNED);
	}
	r->owned[r->n_owned++] = p;
	return 0;
}

static void release(struct ref *r)
{
	while (r->n_owned)
		free(r->owned[--r->n_owned]);
}

/*
 * Load a tensor (or, with @slice >= 0, the slice @slice along its last
 * dimension: one expert) as a matrix.  A missing optional tensor leaves
 * m->w NULL; @cols / @rows > 0 are the shape the formulas need.
 */
static int load(struct ref *r, int layer, const char *name, int slice, bool required,
		int64_t cols, int64_t rows, struct mat *m)
{
	struct moe_tensor_info ti;
	uint64_t row0 = 0, n_rows;
	double *w;
	int ret;

	memset(m, 0, sizeof(*m));
	if (find(r, layer, name, &ti) < 0) {
		if (!required)
			return 0;
		if (layer >= 0)
			return moe_err(ENOENT, "%s: tensor 'blk.%d.%s' is missing; the %s "
				       "architecture needs it", r->path, layer, name, r->a->name);
		return moe_err(ENOENT, "%s: tensor '%s' is missing; the %s architecture "
			       "needs it", r->path, name, r->a->name);
	}
	n_rows = tensor_rows(&ti);
	if (slice >= 0) {
		uint64_t n_slices = ti.n_dims > 1 ? ti.ne[ti.n_dims - 1] : 1;

		if ((uint64_t)slice >= n_slices)
			return moe_err(EINVAL, "%s: tensor '%s' has %llu experts, expert %d "
				       "asked for", r->path, ti.name,
				       (unsigned long long)n_slices, slice);
		n_rows /= n_slices;
		row0 = (uint64_t)slice * n_rows;
	}
	if ((cols > 0 && ti.ne[0] != (uint64_t)cols) || (rows > 0 && n_rows != (uint64_t)rows))
		return moe_err(EINVAL, "%s: tensor '%s' is %llu x %llu, the model's "
			       "hyperparameters need %lld x %lld", r->path, ti.name,
			       (unsigned long long)ti.ne[0], (unsigned long long)n_rows,
			       (long long)cols, (long long)rows);
	w = malloc(n_rows * ti.ne[0] * sizeof(double) + 1);
	if (!w)
		return moe_err(ENOMEM, "%s: tensor '%s' in double", r->path, ti.name);
	ret = read_rows(r, &ti, row0, n_rows, w);
	if (ret < 0) {
		free(w);
		return ret;
	}
	ret = own(r, w);
	if (ret < 0)
		return ret;
	m->w = w;
	m->rows = n_rows;
	m->cols = ti.ne[0];
	return 0;
}

/* ------------------------------------------------------------ maths */

/* y = W x (+ b) */
static void matvec(const struct mat *W, const double *x, const struct mat *b, double *y)
{
	for (uint64_t i = 0; i < W->rows; i++) {
		const double *row = W->w + i * W->cols;
		double s = 0;

		for (uint64_t j = 0; j < W->cols; j++)
			s += row[j] * x[j];
		y[i] = s + (b && b->w ? b->w[i] : 0);
	}
}

/* out = x / sqrt(mean(x^2) + eps) (* w); out may be x. */
static void rmsnorm(const double *x, int n, const struct mat *w, double eps, double *out)
{
	double ss = 0, s;

	for (int i = 0; i < n; i++)
		ss += x[i] * x[i];
	s = 1.0 / sqrt(ss / n + eps);
	for (int i = 0; i < n; i++)
		out[i] = x[i] * s * (w && w->w ? w->w[i] : 1.0);
}

static double silu(double x)
{
	return x / (1.0 + exp(-x));
}

static double sigmoid(double x)
{
	return 1.0 / (1.0 + exp(-x));
}

static double gelu(double x)
{
	return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

/* The nearest fp16 value (ties to even); |x| stays far below the fp16 maximum here. */
static double round_f16(double x)
{
	double q;
	int e;

	if (x == 0)
		return x;
	frexp(x, &e);
	/* 11 significant bits; subnormals share the quantum 2^-24 */
	q = ldexp(1.0, MOE_MAX(e - 1, -14) - 10);
	return nearbyint(x / q) * q;
}

/* ggml's CPU GELU: a table of fp16 results indexed by the fp16-rounded input. */
static double gelu_f16(double x)
{
	if (x <= -10)
		return 0;
	if (x >= 10)
		return x;
	return round_f16(gelu(round_f16((float)x)));
}

static void softmax(double *x, int n)
{
	double mx = -INFINITY, sum = 0;

	for (int i = 0; i < n; i++)
		mx = fmax(mx, x[i]);
	for (int i = 0; i < n; i++) {
		x[i] = exp(x[i] - mx);
		sum += x[i];
	}
	for (int i = 0; i < n; i++)
		x[i] /= sum;
}

/* -------------------------------------------------------------- RoPE */

struct rope {
	int n_rot;
	bool neox;
	double base;
	double freq_scale;      /* 1/factor of linear or YaRN scaling */
	double ext_factor;      /* YaRN: 1, else 0 */
	double attn_factor;
	double corr[2];         /* YaRN correction dims */
	const double *freqs;    /* rope_freqs: divides theta_i; NULL = none */
};

static void rope_apply(const struct rope *rp, double *x, int pos)
{
	int half = rp->n_rot / 2;

	for (int i = 0; i < half; i++) {
		double extrap = pos * pow(rp->base, -2.0 * i / rp->n_rot);
		double interp, theta, mscale = rp->attn_factor, c, s, x0, x1;
		int a = rp->neox ? i : 2 * i;
		int b = rp->neox ? i + half : 2 * i + 1;

		if (rp->freqs)
			extrap /= rp->freqs[i];
		interp = rp->freq_scale * extrap;
		theta = interp;
		if (rp->ext_factor != 0) {
			double y = (i - rp->corr[0]) / fmax(0.001, rp->corr[1] - rp->corr[0]);
			double mix = (1.0 - fmin(1.0, fmax(0.0, y))) * rp->ext_factor;

			theta = interp * (1 - mix) + extrap * mix;
			mscale *= 1.0 + 0.1 * log(1.0 / rp->freq_scale);
		}
		c = cos(theta) * mscale;
		s = sin(theta) * mscale;
		x0 = x[a];
		x1 = x[b];
		x[a] = x0 * c - x1 * s;
		x[b] = x0 * s + x1 * c;
	}
}

static double yarn_corr_dim(int n_dims, double n_orig, double beta, double base)
{
	return n_dims * log(n_orig / (beta * 2 * M_PI)) / (2 * log(base));
}

/* RoPE of the llama-family archs: base, optional linear/YaRN scaling, rope_freqs. */
static int rope_std(struct ref *r, int hd, const struct mat *freqs, struct rope *rp)
{
	const char *type = "none";
	char key[160];
	double factor, n_orig, beta_fast, beta_slow;
	int ret;

	memset(rp, 0, sizeof(*rp));
	rp->neox = r->a->rope_neox;
	rp->freq_scale = 1;
	rp->attn_factor = 1;
	ret = meta_int(r, "rope.dimension_count", -1, hd, &rp->n_rot);
	if (!ret)
		ret = meta_num(r, "rope.freq_base", -1, 10000.0, &rp->base);
	if (!ret)
		ret = meta_num(r, "rope.scaling.factor", -1, 0, &factor);
	if (!ret && factor == 0)
		ret = meta_num(r, "rope.scale_linear", -1, 0, &factor);
	if (ret < 0)
		return ret;
	if (rp->n_rot <= 0 || rp->n_rot > hd || rp->n_rot % 2)
		return moe_err(EINVAL, "%s: rope.dimension_count %d does not fit head dim %d",
			       r->path, rp->n_rot, hd);
	snprintf(key, sizeof(key), "%s.rope.scaling.type", r->a->name);
	if (moe_meta_get_str(r->m, key, &type) < 0)
		type = factor > 0 ? "linear" : "none";
	if (factor > 0 && strcmp(type, "none") != 0)
		rp->freq_scale = 1.0 / factor;
	if (strcmp(type, "yarn") == 0) {
		int n_ctx;

		ret = meta_int(r, "context_length", -1, 0, &n_ctx);
		if (!ret)
			ret = meta_num(r, "rope.scaling.original_context_length", -1, n_ctx,
				       &n_orig);
		if (!ret)
			ret = meta_num(r, "rope.scaling.yarn_beta_fast", -1, 32.0, &beta_fast);
		if (!ret)
			ret = meta_num(r, "rope.scaling.yarn_beta_slow", -1, 1.0, &beta_slow);
		if (ret < 0)
			return ret;
		rp->ext_factor = 1;
		rp->corr[0] = fmax(0, floor(yarn_corr_dim(rp->n_rot, n_orig, beta_fast, rp->base)));
		rp->corr[1] = fmin(rp->n_rot - 1,
				   ceil(yarn_corr_dim(rp->n_rot, n_orig, beta_slow, rp->base)));
	} else if (strcmp(type, "none") != 0 && strcmp(type, "linear") != 0) {
		return moe_err(EOPNOTSUPP, "%s: rope scaling '%s' is not supported by the "
			       "reference (none, linear, yarn)", r->path, type);
	}
	if (freqs && freqs->w) {
		if ((int)(freqs->rows * freqs->cols) != rp->n_rot / 2)
			return moe_err(EINVAL, "%s: rope_freqs has %llu entries, n_rot/2 = %d",
				       r->path, (unsigned long long)(freqs->rows * freqs->cols),
				       rp->n_rot / 2);
		rp->freqs = freqs->w;
	}
	return 0;
}

/* --------------------------------------------------------- attention */

struct attn_cfg {
	int n_head, n_kv, hd, hdv;
	bool rope_on;
	struct rope rope;
	bool kq_norm_plain;     /* llama4: weightless RMS norm of q and k after RoPE */
	int temp_floor;         /* llama4 NoPE layers: q scaled by position; 0 = off */
	bool v_norm;            /* gemma4: weightless RMS norm of v */
	int kv_from;            /* gemma4: K/V from r->kept_*[kv_from] (-1: computed here) */
	int kv_keep;            /* gemma4: keep this layer's K/V as r->kept_*[kv_keep], or -1 */
	enum mask mask;
	int window;             /* sliding window or chunk */
	double scale;
};

static bool visible(const struct attn_cfg *c, int qp, int kp)
{
	if (kp > qp)
		return false;
	switch (c->mask) {
	case MASK_SLIDING:
		return qp - kp < c->window;
	case MASK_CHUNKED:
		return kp >= (qp / c->window) * c->window;
	case MASK_CAUSAL:
		break;
	}
	return true;
}

/*
 * The attention block of layer @il for every position: O[t] = Wo att(t) + bo
 * from the normed input X[t].
 */
static int attention(struct ref *r, int il, const struct attn_cfg *c, const double *X, int n,
		     double *O)
{
	const int E = r->n_embd, qd = c->n_head * c->hd, kd = c->n_kv * c->hd;
	const int vd = c->n_kv * c->hdv;
	struct mat wq, wk, wv, wo, wqkv, bq, bk, bv, bo, qn, kn, sinks;
	double *Q = NULL, *K = NULL, *V = NULL, *att = NULL, *p = NULL, *tmp = NULL;
	int ret, grp = c->n_head / c->n_kv;

	bool own = c->kv_from < 0;

	memset(&wk, 0, sizeof(wk));
	memset(&wv, 0, sizeof(wv));
	memset(&kn, 0, sizeof(kn));
	ret = load(r, il, "attn_qkv.weight", -1, false, E, qd + kd + vd, &wqkv);
	if (!ret && !wqkv.w) {
		ret = load(r, il, "attn_q.weight", -1, true, E, qd, &wq);
		if (!ret && own)
			ret = load(r, il, "attn_k.weight", -1, true, E, kd, &wk);
		if (!ret && own)
			ret = load(r, il, "attn_v.weight", -1, r->a->id != ARCH_GEMMA4, E, vd, &wv);
	}
	if (!ret)
		ret = load(r, il, "attn_output.weight", -1, true, c->n_head * c->hdv, E, &wo);
	if (!ret)
		ret = load(r, il, "attn_q.bias", -1, false, qd, 1, &bq);
	if (!ret)
		ret = load(r, il, "attn_k.bias", -1, false, kd, 1, &bk);
	if (!ret)
		ret = load(r, il, "attn_v.bias", -1, false, vd, 1, &bv);
	if (!ret)
		ret = load(r, il, "attn_output.bias", -1, false, E, 1, &bo);
	if (!ret)
		ret = load(r, il, "attn_q_norm.weight", -1, r->a->id == ARCH_GEMMA4, c->hd, 1, &qn);
	if (!ret && own)
		ret = load(r, il, "attn_k_norm.weight", -1, r->a->id == ARCH_GEMMA4, c->hd, 1, &kn);
	if (!ret)
		ret = load(r, il, "attn_sinks.weight", -1, false, c->n_head, 1, &sinks);
	if (ret < 0)
		return ret;
	if (own && !wqkv.w && !wv.w && c->hdv != c->hd)
		return moe_err(EINVAL, "%s: layer %d has no attn_v and V head dim %d != K head "
			       "dim %d", r->path, il, c->hdv, c->hd);

	Q = calloc((size_t)n * qd, sizeof(double));
	K = calloc((size_t)n * kd, sizeof(double));
	V = calloc((size_t)n * vd, sizeof(double));
	att = calloc((size_t)c->n_head * c->hdv, sizeof(double));
	p = calloc((size_t)n, sizeof(double));
	tmp = calloc((size_t)qd + kd + vd, sizeof(double));
	if (!Q || !K || !V || !att || !p || !tmp) {
		ret = moe_err(ENOMEM, "reference: attention buffers for %d positions", n);
		goto out;
	}

	for (int t = 0; t < n; t++) {
		double *q = Q + (size_t)t * qd, *k = K + (size_t)t * kd, *v = V + (size_t)t * vd;

		if (wqkv.w) {
			matvec(&wqkv, X + (size_t)t * E, NULL, tmp);
			memcpy(q, tmp, qd * sizeof(double));
			memcpy(k, tmp + qd, kd * sizeof(double));
			memcpy(v, tmp + qd + kd, vd * sizeof(double));
		} else {
			matvec(&wq, X + (size_t)t * E, &bq, q);
			/* a shared layer's keys and values are an earlier layer's */
			if (!own) {
				memcpy(k, r->kept_k[c->kv_from] + (size_t)t * kd, kd * sizeof(double));
				memcpy(v, r->kept_v[c->kv_from] + (size_t)t * vd, vd * sizeof(double));
			} else {
				matvec(&wk, X + (size_t)t * E, &bk, k);
			}
			/* gemma4 without attn_v: V is the raw K projection */
			if (own && wv.w)
				matvec(&wv, X + (size_t)t * E, &bv, v);
			else if (own)
				memcpy(v, k, kd * sizeof(double));
		}
		for (int h = 0; h < c->n_head; h++) {
			double *qh = q + h * c->hd;

			if (qn.w)
				rmsnorm(qh, c->hd, &qn, r->eps, qh);
			if (c->rope_on)
				rope_apply(&c->rope, qh, t);
			if (c->kq_norm_plain)
				rmsnorm(qh, c->hd, NULL, r->eps, qh);
			if (c->temp_floor) {
				double f = log(floor((t + 1.0) / c->temp_floor) + 1.0) * 0.1 + 1.0;

				for (int d = 0; d < c->hd; d++)
					qh[d] *= f;
			}
		}
		for (int h = 0; own && h < c->n_kv; h++) {
			double *kh = k + h * c->hd;

			if (kn.w)
				rmsnorm(kh, c->hd, &kn, r->eps, kh);
			if (c->rope_on)
				rope_apply(&c->rope, kh, t);
			if (c->kq_norm_plain)
				rmsnorm(kh, c->hd, NULL, r->eps, kh);
			if (c->v_norm)
				rmsnorm(v + h * c->hdv, c->hdv, NULL, r->eps, v + h * c->hdv);
		}
	}

	for (int t = 0; t < n; t++) {
		for (int h = 0; h < c->n_head; h++) {
			const double *qh = Q + (size_t)t * qd + h * c->hd;
			int kvh = h / grp;
			double mx = sinks.w ? sinks.w[h] : -INFINITY, sum = 0;
			double *oh = att + h * c->hdv;

			for (int s = 0; s <= t; s++) {
				const double *kh = K + (size_t)s * kd + kvh * c->hd;
				double dot = 0;

				if (!visible(c, t, s)) {
					p[s] = -INFINITY;
					continue;
				}
				for (int d = 0; d < c->hd; d++)
					dot += qh[d] * kh[d];
				p[s] = dot * c->scale;
				mx = fmax(mx, p[s]);
			}
			/* a sink joins the max and the denominator, never the values */
			if (sinks.w)
				sum += exp(sinks.w[h] - mx);
			for (int s = 0; s <= t; s++) {
				p[s] = p[s] == -INFINITY ? 0 : exp(p[s] - mx);
				sum += p[s];
			}
			memset(oh, 0, c->hdv * sizeof(double));
			for (int s = 0; s <= t; s++) {
				const double *vh = V + (size_t)s * vd + kvh * c->hdv;

				for (int d = 0; d < c->hdv; d++)
					oh[d] += p[s] / sum * vh[d];
			}
		}
		matvec(&wo, att, &bo, O + (size_t)t * E);
	}
	ret = 0;
	if (c->kv_keep >= 0) {
		free(r->kept_k[c->kv_keep]);
		free(r->kept_v[c->kv_keep]);
		r->kept_k[c->kv_keep] = K;
		r->kept_v[c->kv_keep] = V;
		K = V = NULL;
	}
out:
	free(Q);
	free(K);
	free(V);
	free(att);
	free(p);
	free(tmp);
	return ret;
}

/* ---------------------------------------------------------------- FFN */

static void activate(enum act act, const double *g, const double *u, int n, double *h)
{
	for (int i = 0; i < n; i++) {
		switch (act) {
		case ACT_SILU:
			h[i] = silu(g[i]) * u[i];
			break;
		case ACT_GELU:
			h[i] = gelu(g[i]) * u[i];
			break;
		case ACT_GELU_F16:
			h[i] = gelu_f16(g[i]) * u[i];
			break;
		case ACT_SWIGLU_OAI: {
			double gc = fmin(g[i], 7.0), uc = fmax(-7.0, fmin(u[i], 7.0));

			h[i] = gc * sigmoid(1.702 * gc) * (uc + 1.0);
			break;
		}
		}
	}
}

/* down(act(gate x) * up x) for a dense or shared-expert FFN named by @sfx ("" or "_shexp"). */
static int dense_ffn(struct ref *r, int il, const char *sfx, enum act act, const double *x,
		     int n, double *y)
{
	char name[64];
	struct mat wg, wu, wd;
	double *g, *u;
	int ret;

	snprintf(name, sizeof(name), "ffn_gate%s.weight", sfx);
	ret = load(r, il, name, -1, true, r->n_embd, 0, &wg);
	snprintf(name, sizeof(name), "ffn_up%s.weight", sfx);
	if (!ret)
		ret = load(r, il, name, -1, true, r->n_embd, wg.rows, &wu);
	snprintf(name, sizeof(name), "ffn_down%s.weight", sfx);
	if (!ret)
		ret = load(r, il, name, -1, true, wg.rows, r->n_embd, &wd);
	if (ret < 0)
		return ret;
	g = calloc(wg.rows, sizeof(double));
	u = calloc(wg.rows, sizeof(double));
	if (!g || !u) {
		free(g);
		free(u);
		return moe_err(ENOMEM, "reference: FFN buffers");
	}
	for (int t = 0; t < n; t++) {
		matvec(&wg, x + (size_t)t * r->n_embd, NULL, g);
		matvec(&wu, x + (size_t)t * r->n_embd, NULL, u);
		activate(act, g, u, (int)wg.rows, g);
		matvec(&wd, g, NULL, y + (size_t)t * r->n_embd);
	}
	free(g);
	free(u);
	return 0;
}

struct moe_cfg {
	int n_group, topk_group;   /* group-limited routing, n_group <= 1: none */
	int gating;
	bool norm_w;
	double w_scale;         /* 0 = none */
	bool weight_before_ffn;
	enum act act;
	int k;
};

/* The weights of one routed expert, loaded the first time a token picks it. */
struct expert {
	struct mat g, u, gu, d, bg, bu, bd;
	bool loaded;
};

static int load_expert(struct ref *r, int il, int e, struct expert *x)
{
	int E = r->n_embd, ret;

	ret = load(r, il, "ffn_gate_up_exps.weight", e, false, E, 0, &x->gu);
	if (!ret && !x->gu.w) {
		ret = load(r, il, "ffn_gate_exps.weight", e, true, E, 0, &x->g);
		if (!ret)
			ret = load(r, il, "ffn_up_exps.weight", e, true, E, x->g.rows, &x->u);
	} else if (!ret && x->gu.rows % 2) {
		ret = moe_err(EINVAL, "%s: blk.%d.ffn_gate_up_exps has an odd row count %llu",
			      r->path, il, (unsigned long long)x->gu.rows);
	}
	if (ret < 0)
		return ret;
	{
		int64_t ff = x->gu.w ? (int64_t)x->gu.rows / 2 : (int64_t)x->g.rows;

		ret = load(r, il, "ffn_down_exps.weight", e, true, ff, E, &x->d);
		if (!ret)
			ret = load(r, il, "ffn_gate_exps.bias", e, false, ff, 1, &x->bg);
		if (!ret)
			ret = load(r, il, "ffn_up_exps.bias", e, false, ff, 1, &x->bu);
		if (!ret)
			ret = load(r, il, "ffn_down_exps.bias", e, false, E, 1, &x->bd);
	}
	x->loaded = ret == 0;
	return ret;
}

/*
 * DeepSeek's group-limited routing (DEEPSEEK2-GLM4MOE.md): a group scores
 * the sum of its two largest selection scores, the topk_group best groups
 * stay (ties to the lower group), the others' experts cannot be chosen.
 */
static void limit_groups(const struct moe_cfg *c, int ne, double *sel)
{
	int gs = ne / c->n_group;
	bool kept[MOE_ROUTE_REF_GROUPS] = { false };
	double gscore[MOE_ROUTE_REF_GROUPS];

	for (int g = 0; g < c->n_group && g < MOE_ROUTE_REF_GROUPS; g++) {
		double best[2] = { -INFINITY, -INFINITY };

		for (int e = g * gs; e < (g + 1) * gs; e++) {
			if (sel[e] > best[0]) {
				best[1] = best[0];
				best[0] = sel[e];
			} else if (sel[e] > best[1]) {
				best[1] = sel[e];
			}
		}
		gscore[g] = gs > 1 ? best[0] + best[1] : best[0];
	}
	for (int i = 0; i < c->topk_group; i++) {
		int bg = -1;

		for (int g = 0; g < c->n_group && g < MOE_ROUTE_REF_GROUPS; g++)
			if (!kept[g] && (bg < 0 || gscore[g] > gscore[bg]))
				bg = g;
		if (bg >= 0)
			kept[bg] = true;
	}
	for (int e = 0; e < ne; e++)
		if (e / gs >= MOE_ROUTE_REF_GROUPS || !kept[e / gs])
			sel[e] = -INFINITY;
}

/*
 * The routed experts (plus any shared expert) of layer @il for every
 * position: the router reads XR, the experts XE (the same array except in
 * gemma4).  Adds nothing to Y: writes it.
 */
static int moe_ffn(struct ref *r, int il, const struct moe_cfg *c, const double *XR,
		   const double *XE, int n, double *Y, int32_t *topk, double *router)
{
	const int E = r->n_embd, ne = r->n_expert;
	struct mat wr, br, pb, dscale, shg;
	struct expert *ex;
	double *logits, *probs, *sel, *w, *xin, *g = NULL, *u, *y;
	int *chosen, ret, ff_max = 0;

	ret = load(r, il, "ffn_gate_inp.weight", -1, true, E, ne, &wr);
	if (!ret)
		ret = load(r, il, "ffn_gate_inp.bias", -1, false, ne, 1, &br);
	if (!ret)
		ret = load(r, il, "exp_probs_b.bias", -1, false, ne, 1, &pb);
	if (!ret)
		ret = load(r, il, "ffn_down_exps.scale", -1, false, ne, 1, &dscale);
	if (!ret)
		ret = load(r, il, "ffn_gate_inp_shexp.weight", -1, false, E, 1, &shg);
	if (ret < 0)
		return ret;
	if (c->k <= 0 || c->k > ne)
		return moe_err(EINVAL, "%s: layer %d uses %d of %d experts", r->path, il, c->k, ne);

	ex = calloc(ne, sizeof(*ex));
	logits = calloc(ne * 3 + c->k, sizeof(double));
	chosen = calloc(c->k, sizeof(int));
	xin = calloc(E * 2, sizeof(double));
	if (!ex || !logits || !chosen || !xin) {
		ret = moe_err(ENOMEM, "reference: router buffers");
		goto out_early;
	}
	probs = logits + ne;
	sel = probs + ne;
	w = sel + ne;
	y = xin + E;

	for (int t = 0; t < n; t++) {
		const double *xr = XR + (size_t)t * E, *xe = XE + (size_t)t * E;
		double *yt = Y + (size_t)t * E, wsum = 0;

		matvec(&wr, xr, &br, logits);
		memcpy(probs, logits, ne * sizeof(double));
		if (c->gating == MOE_GATING_SOFTMAX)
			softmax(probs, ne);
		else if (c->gating == MOE_GATING_SIGMOID)
			for (int i = 0; i < ne; i++)
				probs[i] = sigmoid(probs[i]);
		for (int i = 0; i < ne; i++)
			sel[i] = probs[i] + (pb.w ? pb.w[i] : 0);
		if (c->n_group > 1)
			limit_groups(c, ne, sel);
		if (router)
			memcpy(router + ((size_t)il * n + t) * ne, logits, ne * sizeof(double));

		/* top-k by selection score, ties to the lower id */
		for (int j = 0; j < c->k; j++) {
			int best = -1;

			for (int i = 0; i < ne; i++) {
				bool taken = false;

				for (int q = 0; q < j; q++)
					taken |= chosen[q] == i;
				if (!taken && (best < 0 || sel[i] > sel[best]))
					best = i;
			}
			chosen[j] = best;
			w[j] = c->gating == MOE_GATING_SOFTMAX_SELECTED ? logits[best] :
			       probs[best];
		}
		if (c->gating == MOE_GATING_SOFTMAX_SELECTED)
			softmax(w, c->k);
		for (int j = 0; j < c->k; j++)
			wsum += w[j];
		for (int j = 0; j < c->k; j++) {
			if (c->norm_w)
				w[j] /= fmax(wsum, 6.103515625e-5);
			if (c->w_scale != 0)
				w[j] *= c->w_scale;
		}
		if (topk)
			for (int j = 0; j < r->n_used_max; j++)
				topk[((size_t)il * n + t) * r->n_used_max + j] =
					j < c->k ? chosen[j] : -1;

		memset(yt, 0, E * sizeof(double));
		for (int j = 0; j < c->k; j++) {
			struct expert *x = &ex[chosen[j]];
			int ff;

			if (!x->loaded) {
				ret = load_expert(r, il, chosen[j], x);
				if (ret < 0)
					goto out;
			}
			ff = x->gu.w ? (int)x->gu.rows / 2 : (int)x->g.rows;
			if (ff > ff_max) {
				free(g);
				g = calloc((size_t)ff * 2, sizeof(double));
				if (!g) {
					ret = moe_err(ENOMEM, "reference: expert buffers");
					goto out;
				}
				ff_max = ff;
			}
			u = g + ff;
			for (int i = 0; i < E; i++)
				xin[i] = c->weight_before_ffn ? xe[i] * w[j] : xe[i];
			if (x->gu.w) {
				/* fused: rows 0..ff-1 are the gate, ff..2ff-1 the up projection */
				matvec(&x->gu, xin, NULL, g);
			} else {
				matvec(&x->g, xin, &x->bg, g);
				matvec(&x->u, xin, &x->bu, u);
			}
			activate(c->act, g, u, ff, g);
			matvec(&x->d, g, &x->bd, y);
			for (int i = 0; i < E; i++) {
				double v = y[i] * (dscale.w ? dscale.w[chosen[j]] : 1.0);

				yt[i] += c->weight_before_ffn ? v : w[j] * v;
			}
		}
	}

	if (has(r, il, "ffn_up_shexp.weight")) {
		double *sh = calloc((size_t)n * E, sizeof(double));

		if (!sh) {
			ret = moe_err(ENOMEM, "reference: shared expert buffers");
			goto out;
		}
		ret = dense_ffn(r, il, "_shexp", ACT_SILU, XE, n, sh);
		for (int t = 0; !ret && t < n; t++) {
			double gate = 1.0;

			if (shg.w) {
				double d = 0;

				for (int i = 0; i < E; i++)
					d += shg.w[i] * XE[(size_t)t * E + i];
				gate = sigmoid(d);
			}
			for (int i = 0; i < E; i++)
				Y[(size_t)t * E + i] += gate * sh[(size_t)t * E + i];
		}
		free(sh);
		if (ret < 0)
			goto out;
	}
	ret = 0;
out:
	free(g);
out_early:
	free(ex);
	free(logits);
	free(chosen);
	free(xin);
	return ret;
}

static int moe_cfg_for(struct ref *r, int il, struct moe_cfg *c)
{
	double gating, norm, scale;
	int ret;

	c->act = r->a->act == ACT_GELU && r->o && r->o->gelu_f16 ? ACT_GELU_F16 : r->a->act;
	c->weight_before_ffn = r->a->weight_before_ffn;
	ret = meta_num(r, "expert_gating_func", -1, r->a->gating, &gating);
	if (!ret)
		ret = meta_num(r, "expert_weights_norm", -1, r->a->norm_w, &norm);
	if (!ret)
		ret = meta_num(r, "expert_weights_scale", -1, 0, &scale);
	if (!ret)
		ret = meta_int(r, "expert_used_count", il, 0, &c->k);
	if (!ret)
		ret = meta_int(r, "expert_group_count", -1, 0, &c->n_group);
	if (!ret)
		ret = meta_int(r, "expert_group_used_count", -1, 0, &c->topk_group);
	if (ret < 0)
		return ret;
	if (c->n_group > 1 && (c->n_group > MOE_ROUTE_REF_GROUPS || r->n_expert % c->n_group ||
			       c->topk_group < 1 ||
			       c->topk_group > c->n_group))
		return moe_err(EINVAL, "%s: %d experts cannot form %d groups keeping %d", r->path,
			       r->n_expert, c->n_group, c->topk_group);
	if (gating < MOE_GATING_SOFTMAX || gating > MOE_GATING_SOFTMAX_SELECTED)
		return moe_err(EINVAL, "%s: expert_gating_func %g is unknown (1 softmax, "
			       "2 sigmoid, 3 softmax over the selected)", r->path, gating);
	c->gating = (int)gating;
	c->norm_w = norm != 0;
	c->w_scale = scale == 1.0 ? 0 : scale;
	return 0;
}

/* ------------------------------------------------------------ layers */

/*
 * deepseek2's multi-head latent attention in its original, decompressed
 * form (DEEPSEEK2-GLM4MOE.md): every head's k_nope and v are rebuilt from
 * the cached latent c by attn_k_b / attn_v_b, then plain causal attention.
 * The engine runs the absorbed form; the two agree only if both are right.
 */
static int attention_mla(struct ref *r, int il, const double *X, int n, double *O)
{
	const int E = r->n_embd;
	struct mat qa, qan, qb, wq, kva, kvan, kb, vb, wo;
	struct rope rp;
	double factor = 0, log_mul = 0, mscale = 1, scale;
	double *Q = NULL, *C = NULL, *KPE = NULL, *KN = NULL, *V = NULL, *att = NULL, *p = NULL;
	double *tmp = NULL;
	int H, rank, q_rank, hk, hv, rot, nope, ret;
	char key[160];
	const char *type = "none";

	ret = meta_int(r, "attention.head_count", il, r->n_head, &H);
	if (!ret)
		ret = meta_int(r, "attention.kv_lora_rank", -1, 0, &rank);
	if (!ret)
		ret = meta_int(r, "attention.q_lora_rank", -1, 0, &q_rank);
	if (!ret)
		ret = meta_int(r, "attention.key_length_mla", -1, 0, &hk);
	if (!ret)
		ret = meta_int(r, "attention.value_length_mla", -1, 0, &hv);
	if (!ret)
		ret = rope_std(r, r->n_embd, NULL, &rp);
	if (ret < 0)
		return ret;
	rot = rp.n_rot;
	nope = hk - rot;
	if (rank <= 0 || hk <= rot || hv <= 0 || H <= 0)
		return moe_err(EINVAL, "%s: MLA dimensions (kv_lora_rank %d, key_length_mla %d, "
			       "value_length_mla %d, rope %d) do not fit", r->path, rank, hk, hv,
			       rot);
	snprintf(key, sizeof(key), "%s.rope.scaling.type", r->a->name);
	moe_meta_get_str(r->m, key, &type);
	if (strcmp(type, "yarn") == 0) {
		ret = meta_num(r, "rope.scaling.factor", -1, 1, &factor);
		if (!ret)
			ret = meta_num(r, "rope.scaling.yarn_log_multiplier", -1, 0, &log_mul);
		if (ret < 0)
			return ret;
		/* the rotation is not scaled; the scores take mscale^2 */
		rp.attn_factor = 1.0 / (1.0 + 0.1 * log(factor));
		mscale = 1.0 + log_mul * log(factor);
	}
	scale = mscale * mscale / sqrt(hk);
	if (q_rank) {
		ret = load(r, il, "attn_q_a.weight", -1, true, E, q_rank, &qa);
		if (!ret)
			ret = load(r, il, "attn_q_a_norm.weight", -1, true, q_rank, 1, &qan);
		if (!ret)
			ret = load(r, il, "attn_q_b.weight", -1, true, q_rank, (int64_t)H * hk, &qb);
	} else {
		ret = load(r, il, "attn_q.weight", -1, true, E, (int64_t)H * hk, &wq);
	}
	if (!ret)
		ret = load(r, il, "attn_kv_a_mqa.weight", -1, true, E, rank + rot, &kva);
	if (!ret)
		ret = load(r, il, "attn_kv_a_norm.weight", -1, true, rank, 1, &kvan);
	if (!ret)
		ret = load(r, il, "attn_k_b.weight", -1, true, nope, (int64_t)rank * H, &kb);
	if (!ret)
		ret = load(r, il, "attn_v_b.weight", -1, true, rank, (int64_t)hv * H, &vb);
	if (!ret)
		ret = load(r, il, "attn_output.weight", -1, true, (int64_t)H * hv, E, &wo);
	if (ret < 0)
		return ret;

	Q = calloc((size_t)n * H * hk, sizeof(double));
	C = calloc((size_t)n * rank, sizeof(double));
	KPE = calloc((size_t)n * rot, sizeof(double));
	KN = calloc((size_t)n * H * nope, sizeof(double));
	V = calloc((size_t)n * H * hv, sizeof(double));
	att = calloc((size_t)H * hv, sizeof(double));
	p = calloc((size_t)n, sizeof(double));
	tmp = calloc((size_t)(q_rank + rank + rot + 1), sizeof(double));
	if (!Q || !C || !KPE || !KN || !V || !att || !p || !tmp) {
		ret = moe_err(ENOMEM, "reference: MLA buffers for %d positions", n);
		goto out;
	}
	for (int t = 0; t < n; t++) {
		const double *x = X + (size_t)t * E;
		double *q = Q + (size_t)t * H * hk, *c = C + (size_t)t * rank;

		if (q_rank) {
			matvec(&qa, x, NULL, tmp);
			rmsnorm(tmp, q_rank, &qan, r->eps, tmp);
			matvec(&qb, tmp, NULL, q);
		} else {
			matvec(&wq, x, NULL, q);
		}
		for (int h = 0; h < H; h++)
			rope_apply(&rp, q + (size_t)h * hk + nope, t);
		matvec(&kva, x, NULL, tmp);
		rmsnorm(tmp, rank, &kvan, r->eps, c);
		memcpy(KPE + (size_t)t * rot, tmp + rank, rot * sizeof(double));
		rope_apply(&rp, KPE + (size_t)t * rot, t);
		/* decompress: k_nope_h = Kb_h^T c, v_h = Vb_h c */
		for (int h = 0; h < H; h++) {
			const double *kbh = kb.w + (size_t)h * rank * nope;
			const double *vbh = vb.w + (size_t)h * hv * rank;
			double *kn = KN + ((size_t)t * H + h) * nope, *v = V + ((size_t)t * H + h) * hv;

			for (int i = 0; i < nope; i++) {
				double s = 0;

				for (int j = 0; j < rank; j++)
					s += kbh[(size_t)j * nope + i] * c[j];
				kn[i] = s;
			}
			for (int d = 0; d < hv; d++) {
				double s = 0;

				for (int j = 0; j < rank; j++)
					s += vbh[(size_t)d * rank + j] * c[j];
				v[d] = s;
			}
		}
	}
	for (int t = 0; t < n; t++) {
		for (int h = 0; h < H; h++) {
			const double *qh = Q + ((size_t)t * H + h) * hk;
			double mx = -INFINITY, sum = 0, *oh = att + (size_t)h * hv;

			for (int s = 0; s <= t; s++) {
				const double *kn = KN + ((size_t)s * H + h) * nope;
				const double *kp = KPE + (size_t)s * rot;
				double dot = 0;

				for (int i = 0; i < nope; i++)
					dot += qh[i] * kn[i];
				for (int i = 0; i < rot; i++)
					dot += qh[nope + i] * kp[i];
				p[s] = dot * scale;
				mx = fmax(mx, p[s]);
			}
			for (int s = 0; s <= t; s++) {
				p[s] = exp(p[s] - mx);
				sum += p[s];
			}
			memset(oh, 0, hv * sizeof(double));
			for (int s = 0; s <= t; s++)
				for (int d = 0; d < hv; d++)
					oh[d] += p[s] / sum * V[((size_t)s * H + h) * hv + d];
		}
		matvec(&wo, att, NULL, O + (size_t)t * E);
	}
	ret = 0;
out:
	free(Q);
	free(C);
	free(KPE);
	free(KN);
	free(V);
	free(att);
	free(p);
	free(tmp);
	return ret;
}

/* The llama-family layer: qwen3moe, llama (Mixtral), llama4, gpt-oss. */
static int layer_std(struct ref *r, int il, double *H, int n, int32_t *topk, double *router)
{
	const int E = r->n_embd;
	struct attn_cfg c = { .kv_from = -1, .kv_keep = -1 };
	struct mat an, fn, freqs;
	double *X, *O;
	int ret;

	ret = meta_int(r, "attention.head_count", il, r->n_head, &c.n_head);
	if (!ret)
		ret = meta_int(r, "attention.head_count_kv", il, c.n_head, &c.n_kv);
	if (!ret)
		ret = meta_int(r, "attention.key_length", -1, E / r->n_head, &c.hd);
	if (!ret)
		ret = meta_int(r, "attention.value_length", -1, c.hd, &c.hdv);
	if (!ret)
		ret = meta_num(r, "attention.scale", -1, 0, &c.scale);
	if (!ret)
		ret = load(r, il, "attn_norm.weight", -1, true, E, 1, &an);
	if (!ret)
		ret = load(r, il, r->a->id == ARCH_GPTOSS || r->a->id == ARCH_GLM4MOE ?
			   "post_attention_norm.weight" : "ffn_norm.weight", -1, true, E, 1, &fn);
	if (!ret)
		ret = load(r, -1, "rope_freqs.weight", -1, false, 0, 1, &freqs);
	if (!ret)
		ret = rope_std(r, c.hd, &freqs, &c.rope);
	if (ret < 0)
		return ret;
	if (c.n_head <= 0 || c.n_kv <= 0 || c.n_head % c.n_kv)
		return moe_err(EINVAL, "%s: layer %d: %d heads cannot share %d KV heads", r->path,
			       il, c.n_head, c.n_kv);
	c.rope_on = true;
	c.mask = MASK_CAUSAL;
	if (c.scale == 0)
		c.scale = 1.0 / sqrt(c.hd);

	if (r->a->id == ARCH_LLAMA4) {
		double swa;

		/* an explicit sliding_window of 0 turns chunking and NoPE off */
		ret = meta_num(r, "attention.sliding_window", -1, -1, &swa);
		if (ret < 0)
			return ret;
		if (swa != 0 && (il + 1) % 4 == 0) {
			c.rope_on = false;
			c.temp_floor = r->o && r->o->llama4_temp_floor > 0 ?
				       r->o->llama4_temp_floor : 8192;
		} else if (swa != 0) {
			c.mask = MASK_CHUNKED;
			c.window = r->o && r->o->llama4_chunk > 0 ? r->o->llama4_chunk : 8192;
		}
		c.kq_norm_plain = c.rope_on && r->n_expert != 128;
	} else if (r->a->id == ARCH_GPTOSS) {
		ret = meta_int(r, "attention.sliding_window", -1, 0, &c.window);
		if (ret < 0)
			return ret;
		if (il % 2 == 0 && c.window > 0)
			c.mask = MASK_SLIDING;
	}

	X = calloc((size_t)n * E, sizeof(double));
	O = calloc((size_t)n * E, sizeof(double));
	if (!X || !O) {
		ret = moe_err(ENOMEM, "reference: layer buffers");
		goto out;
	}
	for (int t = 0; t < n; t++)
		rmsnorm(H + (size_t)t * E, E, &an, r->eps, X + (size_t)t * E);
	if (r->a->id == ARCH_DEEPSEEK2)
		ret = attention_mla(r, il, X, n, O);
	else
		ret = attention(r, il, &c, X, n, O);
	if (ret < 0)
		goto out;
	for (size_t i = 0; i < (size_t)n * E; i++)
		H[i] += O[i];

	for (int t = 0; t < n; t++)
		rmsnorm(H + (size_t)t * E, E, &fn, r->eps, X + (size_t)t * E);
	if (has(r, il, "ffn_gate_inp.weight")) {
		struct moe_cfg mc;

		ret = moe_cfg_for(r, il, &mc);
		if (!ret)
			ret = moe_ffn(r, il, &mc, X, X, n, O, topk, router);
	} else {
		ret = dense_ffn(r, il, "", r->a->act, X, n, O);
	}
	if (ret < 0)
		goto out;
	for (size_t i = 0; i < (size_t)n * E; i++)
		H[i] += O[i];
out:
	free(X);
	free(O);
	return ret;
}

/* gemma4 (GEMMA4.md §4): extra norms, parallel dense MLP and experts, layer scale. */
static int layer_gemma4(struct ref *r, int il, double *H, int n, int32_t *topk, double *router)
{
	const int E = r->n_embd;
	struct attn_cfg c = { .kv_from = -1, .kv_keep = -1 };
	struct mat an, pan, fn, pfn, pf1, pf2, pre2, rsc, los, freqs, pg, pp, ppn;
	double swa, *X, *O, *M = NULL, *XR = NULL, *XE = NULL;
	bool moe = has(r, il, "ffn_gate_inp.weight");
	int ret;

	ret = meta_num_ex(r, "attention.sliding_window_pattern", il, 0, true, &swa);
	if (!ret)
		ret = meta_int(r, "attention.head_count", il, r->n_head, &c.n_head);
	if (!ret)
		ret = meta_int(r, "attention.head_count_kv", il, c.n_head, &c.n_kv);
	if (!ret)
		ret = meta_int(r, swa ? "attention.key_length_swa" : "attention.key_length", -1,
			       E / r->n_head, &c.hd);
	if (!ret)
		ret = meta_int(r, swa ? "attention.value_length_swa" : "attention.value_length",
			       -1, c.hd, &c.hdv);
	if (ret < 0)
		return ret;
	memset(&c.rope, 0, sizeof(c.rope));
	c.rope.neox = true;
	c.rope.freq_scale = 1;
	c.rope.attn_factor = 1;
	if (swa) {
		int hd_full, n_rot_full;

		c.mask = MASK_SLIDING;
		ret = meta_int(r, "attention.sliding_window", -1, 0, &c.window);
		if (!ret)
			ret = meta_int(r, "attention.key_length", -1, E / r->n_head, &hd_full);
		/* the SWA default is the full layers' n_rot, not the SWA head dim */
		if (!ret)
			ret = meta_int(r, "rope.dimension_count", -1, hd_full, &n_rot_full);
		if (!ret)
			ret = meta_int(r, "rope.dimension_count_swa", -1, n_rot_full,
				       &c.rope.n_rot);
		if (!ret)
			ret = meta_num(r, "rope.freq_base_swa", -1, 10000.0, &c.rope.base);
		if (!ret && c.window <= 0)
			ret = moe_err(EINVAL, "%s: gemma4 sliding layer %d needs "
				      "attention.sliding_window > 0", r->path, il);
	} else {
		c.mask = MASK_CAUSAL;
		ret = meta_int(r, "rope.dimension_count", -1, c.hd, &c.rope.n_rot);
		if (!ret)
			ret = meta_num(r, "rope.freq_base", -1, 10000.0, &c.rope.base);
		if (!ret)
			ret = load(r, -1, "rope_freqs.weight", -1, true, c.rope.n_rot / 2, 1,
				   &freqs);
		if (!ret)
			c.rope.freqs = freqs.w;
	}
	if (ret < 0)
		return ret;
	if (c.rope.n_rot <= 0 || c.rope.n_rot > c.hd || c.rope.n_rot % 2 || c.hd != c.hdv ||
	    c.n_head <= 0 || c.n_kv <= 0 || c.n_head % c.n_kv)
		return moe_err(EINVAL, "%s: gemma4 layer %d: head dim %d/%d, n_rot %d, %d KV heads "
			       "do not fit together", r->path, il, c.hd, c.hdv, c.rope.n_rot,
			       c.n_kv);
	c.rope_on = true;
	c.v_norm = true;
	c.scale = 1.0;
	/* GEMMA4.md §5: the sliding layers share kv_start - 2's cache, the full kv_start - 1's */
	if (il >= r->kv_start)
		c.kv_from = swa ? 0 : 1;
	else if (il == r->kv_start - 2 || il == r->kv_start - 1)
		c.kv_keep = swa ? 0 : 1;
	if (c.kv_from >= 0 && !r->kept_k[c.kv_from])
		return moe_err(EINVAL, "%s: gemma4 layer %d shares the KV of a %s layer that does not "
			       "come before it", r->path, il, swa ? "sliding" : "full");

	ret = load(r, il, "attn_norm.weight", -1, true, E, 1, &an);
	if (!ret)
		ret = load(r, il, "post_attention_norm.weight", -1, true, E, 1, &pan);
	if (!ret)
		ret = load(r, il, "ffn_norm.weight", -1, true, E, 1, &fn);
	if (!ret)
		ret = load(r, il, "post_ffw_norm.weight", -1, true, E, 1, &pfn);
	if (!ret)
		ret = load(r, il, "layer_output_scale.weight", -1, false, 1, 1, &los);
	if (!ret && r->n_pl) {
		ret = load(r, il, "inp_gate.weight", -1, true, E, r->n_pl, &pg);
		if (!ret)
			ret = load(r, il, "proj.weight", -1, true, r->n_pl, E, &pp);
		if (!ret)
			ret = load(r, il, "post_norm.weight", -1, true, E, 1, &ppn);
	}
	if (!ret && moe) {
		ret = load(r, il, "post_ffw_norm_1.weight", -1, true, E, 1, &pf1);
		if (!ret)
			ret = load(r, il, "post_ffw_norm_2.weight", -1, true, E, 1, &pf2);
		if (!ret)
			ret = load(r, il, "pre_ffw_norm_2.weight", -1, true, E, 1, &pre2);
		if (!ret)
			ret = load(r, il, "ffn_gate_inp.scale", -1, true, E, 1, &rsc);
	}
	if (ret < 0)
		return ret;

	X = calloc((size_t)n * E, sizeof(double));
	O = calloc((size_t)n * E, sizeof(double));
	M = calloc((size_t)n * E, sizeof(double));
	if (moe) {
		XR = calloc((size_t)n * E, sizeof(double));
		XE = calloc((size_t)n * E, sizeof(double));
	}
	if (!X || !O || !M || (moe && (!XR || !XE))) {
		ret = moe_err(ENOMEM, "reference: layer buffers");
		goto out;
	}
	for (int t = 0; t < n; t++)
		rmsnorm(H + (size_t)t * E, E, &an, r->eps, X + (size_t)t * E);
	ret = attention(r, il, &c, X, n, O);
	if (ret < 0)
		goto out;
	for (int t = 0; t < n; t++) {
		double *h = H + (size_t)t * E, *o = O + (size_t)t * E;

		rmsnorm(o, E, &pan, r->eps, o);
		for (int i = 0; i < E; i++)
			h[i] += o[i];
		rmsnorm(h, E, &fn, r->eps, X + (size_t)t * E);
	}
	ret = dense_ffn(r, il, "", r->o && r->o->gelu_f16 ? ACT_GELU_F16 : ACT_GELU, X, n, M);
	if (ret < 0)
		goto out;
	if (moe) {
		struct moe_cfg mc;

		for (int t = 0; t < n; t++) {
			double *h = H + (size_t)t * E, *xr = XR + (size_t)t * E;

			rmsnorm(M + (size_t)t * E, E, &pf1, r->eps, M + (size_t)t * E);
			/* the router reads the attention residual, not the FFN input */
			rmsnorm(h, E, NULL, r->eps, xr);
			for (int i = 0; i < E; i++)
				xr[i] *= rsc.w[i] / sqrt(E);
			rmsnorm(h, E, &pre2, r->eps, XE + (size_t)t * E);
		}
		ret = moe_cfg_for(r, il, &mc);
		if (!ret)
			ret = moe_ffn(r, il, &mc, XR, XE, n, O, topk, router);
		if (ret < 0)
			goto out;
		for (int t = 0; t < n; t++) {
			double *o = O + (size_t)t * E, *m = M + (size_t)t * E;

			rmsnorm(o, E, &pf2, r->eps, o);
			for (int i = 0; i < E; i++)
				m[i] += o[i];
		}
	}
	for (int t = 0; t < n; t++) {
		double *h = H + (size_t)t * E, *m = M + (size_t)t * E;

		rmsnorm(m, E, &pfn, r->eps, m);
		for (int i = 0; i < E; i++)
			h[i] += m[i];
		if (r->n_pl) {
			/* h += RMSNorm(proj (gelu(inp_gate h) * ple[il]))·post_norm */
			double *g = O + (size_t)t * E, *y = M + (size_t)t * E;
			const double *pl = r->ple + ((size_t)t * r->n_layer + il) * r->n_pl;

			matvec(&pg, h, NULL, g);
			for (int i = 0; i < r->n_pl; i++)
				g[i] = (r->o && r->o->gelu_f16 ? gelu_f16(g[i]) : gelu(g[i])) * pl[i];
			matvec(&pp, g, NULL, y);
			rmsnorm(y, E, &ppn, r->eps, y);
			for (int i = 0; i < E; i++)
				h[i] += y[i];
		}
		/* scales the whole residual stream, skip path included */
		for (int i = 0; los.w && i < E; i++)
			h[i] *= los.w[0];
	}
out:
	free(X);
	free(O);
	free(M);
	free(XR);
	free(XE);
	return ret;
}

/* ------------------------------------------------------------ model */

static int ref_open(struct ref *r, const char *path, const struct ref_opts *o)
{
	struct moe_tensor_info te;
	const char *arch;
	int ret, n_used_layer;
	double eps;

	memset(r, 0, sizeof(*r));
	r->path = path;
	r->o = o;
	r->fd = -1;
	ret = moe_model_open(path, &r->m);
	if (ret < 0)
		return ret;
	ret = moe_meta_get_str(r->m, "general.architecture", &arch);
	if (ret < 0)
		return moe_err(-ret, "%s: no general.architecture", path);
	for (size_t i = 0; i < MOE_ARRAY_SIZE(arch_table); i++)
		if (strcmp(arch, arch_table[i].name) == 0)
			r->a = &arch_table[i];
	if (!r->a)
		return moe_err(EOPNOTSUPP, "%s: architecture '%s' is not one the reference knows "
			       "(llama, qwen3moe, llama4, gpt-oss, gemma4, deepseek2, glm4moe)",
			       path, arch);
	r->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (r->fd < 0)
		return moe_err(errno, "%s: %s", path, strerror(errno));

	ret = meta_int(r, "block_count", -1, 0, &r->n_block);
	if (!ret)
		ret = meta_int(r, "nextn_predict_layers", -1, 0, &r->n_layer);
	/* GLM-4.5's NextN/MTP blocks follow the trunk and take no part in it */
	r->n_layer = r->n_block - r->n_layer;
	if (!ret)
		ret = meta_int(r, "embedding_length", -1, 0, &r->n_embd);
	if (!ret)
		ret = meta_int(r, "attention.head_count", -1, 0, &r->n_head);
	if (!ret)
		ret = meta_int(r, "expert_count", -1, 0, &r->n_expert);
	if (!ret)
		ret = meta_num(r, "attention.layer_norm_rms_epsilon", -1, 1e-5, &eps);
	if (ret < 0)
		return ret;
	/* the file stores eps as f32; llama.cpp uses that float, so do we */
	r->eps = eps;
	if (r->n_layer <= 0 || r->n_embd <= 0 || r->n_head <= 0)
		return moe_err(EINVAL, "%s: block_count, embedding_length and "
			       "attention.head_count must be set and positive", path);
	for (int il = 0; il < r->n_layer; il++) {
		ret = meta_int(r, "expert_used_count", il, 0, &n_used_layer);
		if (ret < 0)
			return ret;
		r->n_used_max = MOE_MAX(r->n_used_max, n_used_layer);
	}
	if (r->a->id == ARCH_GEMMA4) {
		int ple, shared;

		ret = meta_int(r, "embedding_length_per_layer_input", -1, 0, &ple);
		if (!ret)
			ret = meta_int(r, "attention.shared_kv_layers", -1, 0, &shared);
		if (ret < 0)
			return ret;
		if (shared >= r->n_layer || ple < 0)
			return moe_err(EINVAL, "%s: gemma4 attention.shared_kv_layers %d of %d layers",
				       path, shared, r->n_layer);
		r->n_pl = ple;
		r->kv_start = r->n_layer - shared;
	}
	if (find(r, -1, "output.weight", &te) < 0 && find(r, -1, "token_embd.weight", &te) < 0)
		return moe_err(ENOENT, "%s: neither output.weight nor token_embd.weight", path);
	r->n_vocab = (int)tensor_rows(&te);
	return 0;
}

static void ref_close(struct ref *r)
{
	release(r);
	for (int i = 0; i < 2; i++) {
		free(r->kept_k[i]);
		free(r->kept_v[i]);
	}
	free(r->ple);
	if (r->fd >= 0)
		close(r->fd);
	if (r->m)
		moe_model_destroy(r->m);
}

int ref_model_info(const char *path, struct ref_info *out)
{
	struct ref r;
	int ret = ref_open(&r, path, NULL);

	if (!ret) {
		memset(out, 0, sizeof(*out));
		snprintf(out->arch, sizeof(out->arch), "%s", r.a->name);
		out->n_layer = r.n_layer;
		out->n_embd = r.n_embd;
		out->n_vocab = r.n_vocab;
		out->n_expert = r.n_expert;
		out->n_expert_used = r.n_used_max;
	}
	ref_close(&r);
	return ret;
}

/*
 * gemma4's per-layer inputs (GEMMA4.md §4): ple = (RMSNorm(reshape(
 * per_layer_model_proj h / sqrt(n_embd)))·per_layer_proj_norm +
 * per_layer_token_embd[tok] · sqrt(n_pl)) / sqrt(2), per layer slice.
 */
static int embed_per_layer(struct ref *r, const int32_t *tokens, int n, const double *H)
{
	const int E = r->n_embd, pl = r->n_pl, all = pl * r->n_layer;
	struct moe_tensor_info ti;
	struct mat proj, pn;
	double *row;
	int ret;

	ret = load(r, -1, "per_layer_model_proj.weight", -1, true, E, all, &proj);
	if (!ret)
		ret = load(r, -1, "per_layer_proj_norm.weight", -1, true, pl, 1, &pn);
	if (!ret && find(r, -1, "per_layer_token_embd.weight", &ti) < 0)
		ret = moe_err(ENOENT, "%s: tensor 'per_layer_token_embd.weight' is missing",
			      r->path);
	if (!ret && ti.ne[0] != (uint64_t)all)
		ret = moe_err(EINVAL, "%s: per_layer_token_embd rows are %llu long, not %d", r->path,
			      (unsigned long long)ti.ne[0], all);
	if (ret < 0)
		return ret;
	r->ple = calloc((size_t)n * all, sizeof(double));
	row = calloc(all, sizeof(double));
	if (!r->ple || !row) {
		free(row);
		return moe_err(ENOMEM, "reference: per-layer inputs");
	}
	for (int t = 0; t < n && !ret; t++) {
		double *p = r->ple + (size_t)t * all;

		matvec(&proj, H + (size_t)t * E, NULL, p);
		for (int l = 0; l < r->n_layer; l++) {
			for (int i = 0; i < pl; i++)
				p[l * pl + i] /= sqrt(E);
			rmsnorm(p + l * pl, pl, &pn, r->eps, p + l * pl);
		}
		ret = read_rows(r, &ti, (uint64_t)tokens[t], 1, row);
		for (int i = 0; !ret && i < all; i++)
			p[i] = (p[i] + row[i] * sqrt(pl)) / sqrt(2.0);
	}
	free(row);
	release(r);
	return ret;
}

static int embed(struct ref *r, const int32_t *tokens, int n, double *H)
{
	struct moe_tensor_info ti;
	int ret;

	if (find(r, -1, "token_embd.weight", &ti) < 0)
		return moe_err(ENOENT, "%s: tensor 'token_embd.weight' is missing", r->path);
	if (ti.ne[0] != (uint64_t)r->n_embd)
		return moe_err(EINVAL, "%s: token_embd rows are %llu long, embedding_length is %d",
			       r->path, (unsigned long long)ti.ne[0], r->n_embd);
	for (int t = 0; t < n; t++) {
		if (tokens[t] < 0 || (uint64_t)tokens[t] >= tensor_rows(&ti))
			return moe_err(EINVAL, "token %d at position %d is outside the vocabulary "
				       "of %llu", tokens[t], t,
				       (unsigned long long)tensor_rows(&ti));
		ret = read_rows(r, &ti, (uint64_t)tokens[t], 1, H + (size_t)t * r->n_embd);
		if (ret < 0)
			return ret;
		if (r->a->id == ARCH_GEMMA4)
			for (int i = 0; i < r->n_embd; i++)
				H[(size_t)t * r->n_embd + i] *= sqrt(r->n_embd);
	}
	return r->n_pl ? embed_per_layer(r, tokens, n, H) : 0;
}

/* Output norm and the vocabulary projection, a block of rows at a time. */
static int head(struct ref *r, double *H, int n, double *logits)
{
	enum { ROWS = 256 };
	struct moe_tensor_info ti;
	struct mat on, blk;
	double cap = 0;
	int ret;

	ret = load(r, -1, "output_norm.weight", -1, true, r->n_embd, 1, &on);
	if (!ret && r->a->id == ARCH_GEMMA4)
		ret = meta_num(r, "final_logit_softcapping", -1, 30.0, &cap);
	if (ret < 0)
		return ret;
	if (find(r, -1, "output.weight", &ti) < 0)
		find(r, -1, "token_embd.weight", &ti);
	if (ti.ne[0] != (uint64_t)r->n_embd)
		return moe_err(EINVAL, "%s: output rows are %llu long, embedding_length is %d",
			       r->path, (unsigned long long)ti.ne[0], r->n_embd);
	for (int t = 0; t < n; t++)
		rmsnorm(H + (size_t)t * r->n_embd, r->n_embd, &on, r->eps,
			H + (size_t)t * r->n_embd);
	blk.cols = ti.ne[0];
	blk.w = malloc(sizeof(double) * ROWS * blk.cols);
	if (!blk.w)
		return moe_err(ENOMEM, "reference: output block");
	for (int v0 = 0; v0 < r->n_vocab; v0 += ROWS) {
		blk.rows = MOE_MIN(ROWS, r->n_vocab - v0);
		ret = read_rows(r, &ti, v0, blk.rows, blk.w);
		if (ret < 0)
			break;
		for (int t = 0; t < n; t++) {
			double *lt = logits + (size_t)t * r->n_vocab + v0;

			matvec(&blk, H + (size_t)t * r->n_embd, NULL, lt);
			if (cap != 0)
				for (uint64_t v = 0; v < blk.rows; v++)
					lt[v] = cap * tanh(lt[v] / cap);
		}
	}
	free(blk.w);
	return ret;
}

int ref_forward(const char *path, const int32_t *tokens, int n_tokens, const struct ref_opts *o,
		double *logits, int32_t *topk, double *router)
{
	struct ref r;
	double *H = NULL;
	int ret;

	if (!path || !tokens || n_tokens <= 0 || !logits)
		return moe_err(EINVAL, "ref_forward: needs a path, at least one token and a "
			       "logits array");
	ret = ref_open(&r, path, o);
	if (ret < 0)
		goto out;
	if (topk)
		for (size_t i = 0; i < (size_t)r.n_layer * n_tokens * r.n_used_max; i++)
			topk[i] = -1;
	if (router)
		memset(router, 0, sizeof(double) * r.n_layer * n_tokens * r.n_expert);
	H = calloc((size_t)n_tokens * r.n_embd, sizeof(double));
	if (!H) {
		ret = moe_err(ENOMEM, "reference: %d positions", n_tokens);
		goto out;
	}
	ret = embed(&r, tokens, n_tokens, H);
	for (int il = 0; !ret && il < r.n_layer; il++) {
		if (r.a->id == ARCH_GEMMA4)
			ret = layer_gemma4(&r, il, H, n_tokens, topk, router);
		else
			ret = layer_std(&r, il, H, n_tokens, topk, router);
		release(&r);
	}
	if (!ret)
		ret = head(&r, H, n_tokens, logits);
out:
	free(H);
	ref_close(&r);
	return ret;
}
