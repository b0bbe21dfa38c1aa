/* SPDX-License-Identifier: MIT */
/*
 * The KV cache store and attention.  Attention runs one block per (query
 * head, token), keys in chunks of the block's threads: each thread scores
 * one key of the chunk, then the block folds the chunk into a running
 * softmax (maximum, sum, weighted values) as backend/cpu.c does key by key.
 * With n_split > 1 (decode over a long cache) blockIdx.z takes one part of
 * the visible keys and writes its partial softmax to the workspace, and
 * moe_k_attention_combine merges the parts and the sink.  Prompts (more
 * than one token) take moe_k_attention_tiled, which shares each tile of
 * keys and values among a block of queries.
 */
#include "core.cuh"

/* values per thread: the widest value row over the block's threads */
#define KC_ATTN_MAX_DIM 1024
#define KC_ATTN_THREADS 128
#define KC_ATTN_ACC (KC_ATTN_MAX_DIM / KC_ATTN_THREADS)

/* F32/F16/Q8_0 rows of kv_dim values; k and v [n_tok][kv_dim] F32; blockIdx.y 0 keys, 1 values. */
extern "C" __global__ void moe_k_kv_store(unsigned char *kc, unsigned char *vc, unsigned type,
					  unsigned n_cells, unsigned kv_dim, const float *k,
					  const float *v, const int *pos, const int *seq)
{
	unsigned t = blockIdx.x;
	const float *src = (blockIdx.y ? v : k) + (size_t)t * kv_dim;
	unsigned long long row = type == 0 ? 4ull * kv_dim : type == 1 ? 2ull * kv_dim :
				 kv_dim / 32 * 34ull;
	unsigned long long cell = (unsigned long long)(seq ? seq[t] : 0) * n_cells +
				  (unsigned long long)(long long)pos[t] % n_cells;
	unsigned char *dst = (blockIdx.y ? vc : kc) + cell * row;

	if (type == 0) {
		for (unsigned i = threadIdx.x; i < kv_dim; i += blockDim.x)
			reinterpret_cast<float *>(dst)[i] = src[i];
	} else if (type == 1) {
		for (unsigned i = threadIdx.x; i < kv_dim; i += blockDim.x)
			reinterpret_cast<unsigned short *>(dst)[i] =
				__half_as_ushort(__float2half_rn(src[i]));
	} else {
		/* a warp per block of 32, rounded as moe_q8_0_from_float rounds */
		unsigned lane = threadIdx.x % 32, n_warp = blockDim.x / 32;

		for (unsigned b = threadIdx.x / 32; b < kv_dim / 32; b += n_warp) {
			float x = src[b * 32 + lane], amax = fabsf(x), d, id;
			int q;

			for (int off = 16; off > 0; off /= 2)
				amax = fmaxf(amax, __shfl_xor_sync(KC_FULL_MASK, amax, off));
			d = amax / 127;
			id = d != 0.0f ? 1 / d : 0;
			q = (int)roundf(x * id);
			q = q < -127 ? -127 : q > 127 ? 127 : q;
			dst[b * 34 + 2 + lane] = (unsigned char)(signed char)q;
			if (!lane)
				*reinterpret_cast<unsigned short *>(dst + b * 34) =
					__half_as_ushort(__float2half_rn(d));
		}
	}
}
MOE_KERNEL(moe_k_kv_store);

/* The host's struct attn_k (backend/cuda.c). */
struct kc_attn {
	unsigned long long q, out, pos, seq, sinks, k, v, part;
	unsigned kv_type, n_cells, kv_dim, row_bytes;
	unsigned n_tok, n_head, n_head_kv, head_dim, head_dim_v;
	unsigned mask, window, n_split;     /* mask: 0 causal, 1 sliding, 2 chunked */
	float scale, softcap;
	unsigned bq, bk;                    /* moe_k_attention_tiled: queries, keys per tile */
};

static __device__ long long kc_attn_lo(const struct kc_attn &a, long long p)
{
	if (a.mask == 1 && a.window)
		return p - (long long)a.window + 1 > 0 ? p - (long long)a.window + 1 : 0;
	if (a.mask == 2 && a.window)
		return p / a.window * a.window;
	return 0;
}

/* grid (n_head, n_tok, n_split), KC_ATTN_THREADS threads, (head_dim + threads) floats dynamic */
extern "C" __global__ void moe_k_attention(struct kc_attn a)
{
	MOE_DYN_SHARED(float, sh);
	MOE_SHARED(float, red, 32);
	float *qs = sh, *sc = sh + a.head_dim;
	unsigned h = blockIdx.x, t = blockIdx.y, s = blockIdx.z, tid = threadIdx.x;
	unsigned kvh = h / (a.n_head / a.n_head_kv), hd = a.head_dim, hdv = a.head_dim_v;
	unsigned koff = kvh * hd, voff = a.v ? kvh * hdv : kvh * hd;
	const float *q = reinterpret_cast<const float *>(a.q) + ((size_t)t * a.n_head + h) * hd;
	const unsigned char *kb = reinterpret_cast<const unsigned char *>(a.k);
	const unsigned char *vb = a.v ? reinterpret_cast<const unsigned char *>(a.v) : kb;
	const int *seq = reinterpret_cast<const int *>(a.seq);
	long long p = reinterpret_cast<const int *>(a.pos)[t], lo = kc_attn_lo(a, p);
	long long len = (p - lo + a.n_split) / a.n_split, j0 = lo + s * len;
	long long j1 = j0 + len < p + 1 ? j0 + len : p + 1;
	unsigned long long sq = (unsigned long long)(seq ? seq[t] : 0) * a.n_cells;
	float acc[KC_ATTN_ACC], m = -INFINITY, sum = 0;

	for (int r = 0; r < KC_ATTN_ACC; r++)
		acc[r] = 0;
	for (unsigned i = tid; i < hd; i += blockDim.x)
		qs[i] = q[i];
	__syncthreads();
	for (long long c0 = j0; c0 < j1; c0 += blockDim.x) {
		long long j = c0 + tid, cnt = j1 - c0 < blockDim.x ? j1 - c0 : blockDim.x;
		float d = -INFINITY, mn, r;

		if (j < j1) {
			const unsigned char *kr = kb + (sq + (unsigned long long)j % a.n_cells) *
						       a.row_bytes;

			d = 0;
			for (unsigned i = 0; i < hd; i++)
				d += qs[i] * kc_kv_elem(kr, a.kv_type, koff + i);
			d *= a.scale;
			if (a.softcap > 0)
				d = a.softcap * tanhf(d / a.softcap);
		}
		sc[tid] = d;
		/* the barriers of the maximum also publish sc */
		mn = fmaxf(m, kc_block_max(d, red));
		r = expf(m - mn);
		for (int k = 0; k < KC_ATTN_ACC; k++)
			acc[k] *= r;
		sum *= r;
		for (long long jj = 0; jj < cnt; jj++) {
			unsigned long long cell = sq + (unsigned long long)(c0 + jj) % a.n_cells;
			const unsigned char *vr = vb + cell * a.row_bytes;
			float e = expf(sc[jj] - mn);

			sum += e;
			for (unsigned i = tid, k = 0; i < hdv; i += blockDim.x, k++)
				acc[k] += e * kc_kv_elem(vr, a.kv_type, voff + i);
		}
		m = mn;
		/* sc is rewritten by the next chunk */
		__syncthreads();
	}
	if (a.n_split > 1) {
		float *part = reinterpret_cast<float *>(a.part) +
			      (((size_t)t * a.n_head + h) * a.n_split + s) * (hdv + 2);

		if (!tid) {
			part[0] = m;
			part[1] = sum;
		}
		for (unsigned i = tid, k = 0; i < hdv; i += blockDim.x, k++)
			part[2 + i] = acc[k];
		return;
	}
	if (a.sinks) {
		float sk = reinterpret_cast<const float *>(a.sinks)[h];

		if (sk > m) {
			float r = expf(m - sk);

			for (int k = 0; k < KC_ATTN_ACC; k++)
				acc[k] *= r;
			sum *= r;
			m = sk;
		}
		sum += expf(sk - m);
	}
	{
		float *o = reinterpret_cast<float *>(a.out) + ((size_t)t * a.n_head + h) * hdv;
		float inv = sum > 0 ? 1.0f / sum : 1.0f;

		for (unsigned i = tid, k = 0; i < hdv; i += blockDim.x, k++)
			o[i] = acc[k] * inv;
	}
}
MOE_KERNEL(moe_k_attention);

/* grid (n_head, n_tok): the n_split partial softmaxes of each (head, token), and the sink. */
extern "C" __global__ void moe_k_attention_combine(struct kc_attn a)
{
	unsigned h = blockIdx.x, t = blockIdx.y, hdv = a.head_dim_v, ns = a.n_split;
	const float *part = reinterpret_cast<const float *>(a.part) +
			    ((size_t)t * a.n_head + h) * ns * (hdv + 2);
	float *o = reinterpret_cast<float *>(a.out) + ((size_t)t * a.n_head + h) * hdv;
	float mx = -INFINITY, sum = 0;

	for (unsigned s = 0; s < ns; s++)
		mx = fmaxf(mx, part[s * (hdv + 2)]);
	if (a.sinks)
		mx = fmaxf(mx, reinterpret_cast<const float *>(a.sinks)[h]);
	for (unsigned s = 0; s < ns; s++)
		if (part[s * (hdv + 2)] != -INFINITY)
			sum += part[s * (hdv + 2) + 1] * expf(part[s * (hdv + 2)] - mx);
	if (a.sinks)
		sum += expf(reinterpret_cast<const float *>(a.sinks)[h] - mx);
	for (unsigned i = threadIdx.x; i < hdv; i += blockDim.x) {
		float v = 0;

		for (unsigned s = 0; s < ns; s++)
			if (part[s * (hdv + 2)] != -INFINITY)
				v += part[s * (hdv + 2) + 2 + i] * expf(part[s * (hdv + 2)] - mx);
		o[i] = sum > 0 ? v * (1.0f / sum) : v;
	}
}
MOE_KERNEL(moe_k_attention_combine);

/*
 * Prefill: grid (n_head, ceil(n_tok / bq)), KC_ATTN_THREADS threads.  A
 * block takes bq consecutive tokens of one query head and walks the union
 * of the positions they see in tiles of bk keys: a tile's keys and values
 * are decoded into shared memory once for all bq queries, the bq x bk
 * scores (masked, scaled, soft-capped) go to a shared tile, and each query
 * row folds its part into its running softmax: maximum, sum and head_dim_v
 * accumulators in shared memory, rescaled when the maximum grows, as the
 * per-row kernel does chunk by chunk.  A batch may interleave sequences:
 * the block walks the keys of each sequence among its tokens in turn, the
 * rows of the others masked for that walk.
 *
 * Dynamic shared memory (floats): qs [bq][hd], kt [bk][hd | 1] (rows of odd
 * stride: the score loop reads a column), vt [bk][hdv], st [bq][bk], o
 * [bq][hdv], then per row its maximum, sum and rescale; then per row its
 * position, first visible position and sequence (ints).
 */
extern "C" __global__ void moe_k_attention_tiled(struct kc_attn a)
{
	MOE_DYN_SHARED(float, sh);
	unsigned bq = a.bq, bk = a.bk, hd = a.head_dim, hdv = a.head_dim_v, ks = hd | 1;
	unsigned h = blockIdx.x, t0 = blockIdx.y * bq, tid = threadIdx.x, nt = blockDim.x;
	unsigned kvh = h / (a.n_head / a.n_head_kv);
	unsigned koff = kvh * hd, voff = a.v ? kvh * hdv : kvh * hd;
	float *qs = sh, *kt = qs + bq * hd, *vt = kt + bk * ks, *st = vt + bk * hdv;
	float *o = st + bq * bk, *rm = o + bq * hdv, *rl = rm + bq, *rr = rl + bq;
	int *rp = reinterpret_cast<int *>(rr + bq), *rlo = rp + bq, *rs = rlo + bq;
	const unsigned char *kb = reinterpret_cast<const unsigned char *>(a.k);
	const unsigned char *vb = a.v ? reinterpret_cast<const unsigned char *>(a.v) : kb;
	const int *pos = reinterpret_cast<const int *>(a.pos);
	const int *seq = reinterpret_cast<const int *>(a.seq);
	unsigned rows = a.n_tok - t0 < bq ? a.n_tok - t0 : bq;
	long long cur = -1;

	for (unsigned i = tid; i < bq * hd; i += nt) {
		unsigned q = i / hd;

		qs[i] = q < rows ? reinterpret_cast<const float *>(a.q)[((size_t)(t0 + q) *
			a.n_head + h) * hd + i % hd] : 0.0f;
	}
	for (unsigned i = tid; i < bq * hdv; i += nt)
		o[i] = 0;
	for (unsigned q = tid; q < bq; q += nt) {
		rm[q] = -INFINITY;
		rl[q] = 0;
		rr[q] = 1;
		rp[q] = q < rows ? pos[t0 + q] : -1;
		rlo[q] = q < rows ? (int)kc_attn_lo(a, pos[t0 + q]) : 0;
		rs[q] = q < rows ? (seq ? seq[t0 + q] : 0) : -1;
	}
	__syncthreads();
	for (;;) {
		long long next = -1, jlo = 0, jhi = -1;
		unsigned long long base;

		/* the next sequence among the rows, and the positions its rows see */
		for (unsigned q = 0; q < rows; q++)
			if (rs[q] > cur && (next < 0 || rs[q] < next))
				next = rs[q];
		if (next < 0)
			break;
		cur = next;
		for (unsigned q = 0, first = 1; q < rows; q++) {
			if (rs[q] != cur)
				continue;
			jlo = first || rlo[q] < jlo ? rlo[q] : jlo;
			jhi = first || rp[q] > jhi ? rp[q] : jhi;
			first = 0;
		}
		base = (unsigned long long)cur * a.n_cells;
		for (long long c0 = jlo; c0 <= jhi; c0 += bk) {
			unsigned cnt = jhi - c0 + 1 < bk ? (unsigned)(jhi - c0 + 1) : bk;

			for (unsigned i = tid; i < cnt * hd; i += nt) {
				unsigned j = i / hd;
				unsigned long long cell = base + (unsigned long long)(c0 + j) %
							  a.n_cells;

				kt[j * ks + i % hd] = kc_kv_elem(kb + cell * a.row_bytes, a.kv_type,
								 koff + i % hd);
			}
			for (unsigned i = tid; i < cnt * hdv; i += nt) {
				unsigned j = i / hdv;
				unsigned long long cell = base + (unsigned long long)(c0 + j) %
							  a.n_cells;

				vt[i] = kc_kv_elem(vb + cell * a.row_bytes, a.kv_type, voff + i % hdv);
			}
			__syncthreads();
			for (unsigned i = tid; i < bq * bk; i += nt) {
				unsigned q = i / bk, j = i % bk;
				long long pj = c0 + j;
				float d = -INFINITY;

				if (j < cnt && q < rows && rs[q] == cur && pj >= rlo[q] && pj <= rp[q]) {
					d = 0;
					for (unsigned k = 0; k < hd; k++)
						d += qs[q * hd + k] * kt[j * ks + k];
					d *= a.scale;
					if (a.softcap > 0)
						d = a.softcap * tanhf(d / a.softcap);
				}
				st[i] = d;
			}
			__syncthreads();
			for (unsigned q = tid; q < bq; q += nt) {
				float mx = rm[q], sum = 0, r;

				for (unsigned j = 0; j < cnt; j++)
					mx = fmaxf(mx, st[q * bk + j]);
				r = mx == -INFINITY ? 1.0f : expf(rm[q] - mx);
				for (unsigned j = 0; j < bk; j++) {
					float d = st[q * bk + j];
					float e = j < cnt && d != -INFINITY ? expf(d - mx) : 0.0f;

					st[q * bk + j] = e;
					sum += e;
				}
				rl[q] = rl[q] * r + sum;
				rm[q] = mx;
				rr[q] = r;
			}
			__syncthreads();
			for (unsigned i = tid; i < bq * hdv; i += nt) {
				unsigned q = i / hdv, c = i % hdv;
				float acc = o[i] * rr[q];

				for (unsigned j = 0; j < cnt; j++)
					acc += st[q * bk + j] * vt[j * hdv + c];
				o[i] = acc;
			}
			/* the next tile rewrites kt, vt and st */
			__syncthreads();
		}
	}
	for (unsigned i = tid; i < rows * hdv; i += nt) {
		unsigned q = i / hdv;
		float m = rm[q], sum = rl[q], acc = o[i];

		if (a.sinks) {
			float sk = reinterpret_cast<const float *>(a.sinks)[h];

			if (sk > m) {
				float r = expf(m - sk);

				acc *= r;
				sum *= r;
				m = sk;
			}
			sum += expf(sk - m);
		}
		reinterpret_cast<float *>(a.out)[((size_t)(t0 + q) * a.n_head + h) * hdv + i % hdv] =
			acc * (sum > 0 ? 1.0f / sum : 1.0f);
	}
}
MOE_KERNEL(moe_k_attention_tiled);
