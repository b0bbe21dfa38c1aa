/* SPDX-License-Identifier: MIT */
/*
 * Routing: one thread per token runs backend/cpu.c's route() step for step
 * (gating, bias, group limit, top-k with ties to the lower id, weights), so
 * the experts chosen are the CPU's.  The k and the group count are small and
 * a token's experts fit a thread's local memory; decode has one token anyway.
 */
#include "core.cuh"

#define KC_ROUTE_MAX_EXPERTS 1024
#define KC_ROUTE_MAX_GROUPS 256

/* Top-k of score[] by value, ties to the lower index. */
static __device__ void kc_top_k(const float *score, unsigned n, unsigned k, int *sel)
{
	for (unsigned j = 0; j < k; j++) {
		int best = -1;

		for (unsigned e = 0; e < n; e++) {
			bool taken = false;

			for (unsigned i = 0; i < j; i++)
				taken |= sel[i] == (int)e;
			if (!taken && (best < 0 || score[e] > score[best]))
				best = (int)e;
		}
		sel[j] = best;
	}
}

/* gating: 2 sigmoid, 3 softmax over the selected k, else softmax */
extern "C" __global__ void moe_k_route(const float *logits, int *sel, float *weights,
				       const float *bias, unsigned n_tok, unsigned ne, unsigned k,
				       unsigned stride, unsigned gating, unsigned n_group,
				       unsigned topk_group, unsigned norm, float scale)
{
	float prob[KC_ROUTE_MAX_EXPERTS], score[KC_ROUTE_MAX_EXPERTS];
	unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
	const float *lg = logits + (size_t)t * ne;
	int *s = sel + (size_t)t * stride;
	float *wt = weights + (size_t)t * stride;
	float mx = -INFINITY;
	double sum = 0;

	if (t >= n_tok || !ne)
		return;
	if (gating == 2) {
		for (unsigned e = 0; e < ne; e++)
			prob[e] = 1.0f / (1.0f + expf(-lg[e]));
	} else if (gating == 3) {
		for (unsigned e = 0; e < ne; e++)
			prob[e] = lg[e];
	} else {
		for (unsigned e = 0; e < ne; e++)
			mx = fmaxf(mx, lg[e]);
		for (unsigned e = 0; e < ne; e++) {
			prob[e] = expf(lg[e] - mx);
			sum += prob[e];
		}
		for (unsigned e = 0; e < ne; e++)
			prob[e] = (float)(prob[e] / sum);
	}
	for (unsigned e = 0; e < ne; e++)
		score[e] = prob[e] + (bias ? bias[e] : 0.0f);
	if (n_group > 1) {
		/* a group scores its two best; experts outside the topk_group best drop out */
		float gscore[KC_ROUTE_MAX_GROUPS];
		int keep[KC_ROUTE_MAX_GROUPS];
		unsigned gs = ne / n_group;

		for (unsigned g = 0; g < n_group; g++) {
			const float *sg = score + (size_t)g * gs;
			float b0 = -INFINITY, b1 = -INFINITY;

			for (unsigned e = 0; e < gs; e++) {
				if (sg[e] > b0) {
					b1 = b0;
					b0 = sg[e];
				} else if (sg[e] > b1) {
					b1 = sg[e];
				}
			}
			gscore[g] = gs > 1 ? b0 + b1 : b0;
		}
		kc_top_k(gscore, n_group, topk_group, keep);
		for (unsigned g = 0; g < n_group; g++) {
			bool kept = false;

			for (unsigned i = 0; i < topk_group; i++)
				kept |= keep[i] == (int)g;
			if (!kept)
				for (unsigned e = 0; e < gs; e++)
					score[(size_t)g * gs + e] = -INFINITY;
		}
	}
	kc_top_k(score, ne, k, s);
	if (gating == 3) {
		mx = -INFINITY;
		sum = 0;
		for (unsigned j = 0; j < k; j++)
			mx = fmaxf(mx, lg[s[j]]);
		for (unsigned j = 0; j < k; j++) {
			wt[j] = expf(lg[s[j]] - mx);
			sum += wt[j];
		}
		for (unsigned j = 0; j < k; j++)
			wt[j] = (float)(wt[j] / sum);
	} else {
		for (unsigned j = 0; j < k; j++)
			wt[j] = prob[s[j]];
	}
	if (norm && gating != 3) {
		float tot = 0;

		for (unsigned j = 0; j < k; j++)
			tot += wt[j];
		tot = fmaxf(tot, 6.103515625e-5f);
		for (unsigned j = 0; j < k; j++)
			wt[j] /= tot;
	}
	if (scale != 1.0f)
		for (unsigned j = 0; j < k; j++)
			wt[j] *= scale;
}
MOE_KERNEL(moe_k_route);
