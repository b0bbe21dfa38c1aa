/* SPDX-License-Identifier: MIT */
/*
 * moe-bench gpu-matvec's measurement (backend/cuda_mm_bench.h).  The matrix
 * is 64 distinct quantized rows repeated to the full height: quantizing
 * hundreds of MiB on the host would take longer than the measurement, and
 * the bytes the kernel streams are the same.  The product of those 64 rows
 * is checked against the CPU's moe_matmul, so a fast wrong kernel cannot
 * pass for a fast one.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "../../cuda/mm_args.h"
#include "backend/cuda_mm_bench.h"
#include "moe/moe.h"
#include "util/util.h"

#define BENCH_DISTINCT 64

struct bench {
	const struct moe_cuda_api *api;
	CUcontext ctx;
	CUdevice dev;
	CUmodule mod;
	CUstream st;
	CUevent ev[2];
	CUfunction quant, mv_q8, mv_f32;
};

static int bench_cu(const struct bench *b, CUresult r, const char *call)
{
	const char *s = NULL;

	if (r == CUDA_SUCCESS)
		return 0;
	if (b->api->cuGetErrorString(r, &s) != CUDA_SUCCESS || !s)
		s = "unknown error";
	return moe_err(EIO, "gpu-matvec: %s failed: %s (%d)", call, s, (int)r);
}

#define CU(b, call) bench_cu(b, (b)->api->call, #call)

/* Milliseconds of the work queued between the two events. */
static int bench_elapsed(struct bench *b, double *ms)
{
	float f = 0;
	int ret = CU(b, cuEventSynchronize(b->ev[1]));

	if (!ret)
		ret = CU(b, cuEventElapsedTime(&f, b->ev[0], b->ev[1]));
	*ms = f;
	return ret;
}

/*
 * @reps decode steps between the events: the q8_1 rounding of x and the
 * __dp4a matvec, as the backend runs decode, or the f32 matvec alone.
 */
static int bench_matvec(struct bench *b, const struct moe_cuda_mm_bench_cfg *cfg, void **params,
			uint32_t reps, bool f32, double *ms)
{
	unsigned gx = (cfg->rows + 3) / 4;
	int ret = CU(b, cuEventRecord(b->ev[0], b->st));

	for (uint32_t i = 0; !ret && i < reps; i++) {
		if (f32) {
			ret = CU(b, cuLaunchKernel(b->mv_f32, gx, 1, 1, 128, 1, 1, 0, b->st, params,
						   NULL));
			continue;
		}
		ret = CU(b, cuLaunchKernel(b->quant, (cfg->cols / 32 + 3) / 4, 1, 1, 128, 1, 1, 0,
					   b->st, params, NULL));
		if (!ret)
			ret = CU(b, cuLaunchKernel(b->mv_q8, gx, 1, 1, 128, 1, 1, 0, b->st, params,
						   NULL));
	}
	if (!ret)
		ret = CU(b, cuEventRecord(b->ev[1], b->st));
	return ret ? ret : bench_elapsed(b, ms);
}

static int bench_type(struct bench *b, const struct moe_cuda_mm_bench_cfg *cfg, uint32_t type,
		      struct moe_cuda_mm_bench_res *res)
{
	int64_t rb = moe_type_row_bytes(type, cfg->cols);
	uint64_t bytes = (uint64_t)rb * cfg->rows;
	size_t nd = MOE_MIN(cfg->rows, BENCH_DISTINCT);
	float *xf = malloc(sizeof(float) * cfg->cols), *wf = malloc(sizeof(float) * cfg->cols);
	float *y = malloc(sizeof(float) * cfg->rows), *yc = malloc(sizeof(float) * nd);
	uint8_t *q = malloc((size_t)rb * nd);
	CUdeviceptr w = 0, w2 = 0, x = 0, yd = 0, pd = 0, qa = 0;
	struct moe_mm_prob p;
	uint64_t s = 0x9e3779b97f4a7c15ull;
	uint32_t one = 1, units = cfg->cols / 32;
	double ms, err = 0, mag = 0;
	void *params[] = { &pd, &qa, &one, &units };
	int ret = 0;

	if (rb <= 0 || !xf || !wf || !y || !yc || !q) {
		ret = rb <= 0 ? moe_err(EINVAL, "gpu-matvec: %u columns of %s", cfg->cols,
					moe_type_name(type)) :
			moe_err(ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t c = 0; c < cfg->cols; c++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		xf[c] = (float)((double)(s >> 11) / 9007199254740992.0 * 2 - 1);
	}
	for (size_t r = 0; r < nd; r++) {
		for (uint32_t c = 0; c < cfg->cols; c++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			wf[c] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
		}
		if (moe_quantize(type, wf, q + r * rb, cfg->cols) != rb) {
			ret = moe_err(EINVAL, "gpu-matvec: cannot quantize to %s", moe_type_name(type));
			goto out;
		}
	}
	ret = moe_matmul(NULL, type, q, (int64_t)nd, cfg->cols, xf, 1, yc);
	if (ret)
		goto out;
	ret = CU(b, cuMemAlloc(&w, bytes));
	if (!ret)
		ret = CU(b, cuMemAlloc(&w2, bytes));
	if (!ret)
		ret = CU(b, cuMemAlloc(&x, sizeof(float) * cfg->cols));
	if (!ret)
		ret = CU(b, cuMemAlloc(&yd, sizeof(float) * cfg->rows));
	if (!ret)
		ret = CU(b, cuMemAlloc(&pd, sizeof(p)));
	if (!ret)
		ret = CU(b, cuMemAlloc(&qa, (size_t)40 * units));
	for (uint64_t off = 0; !ret && off < bytes; off += (uint64_t)rb * nd)
		ret = CU(b, cuMemcpyHtoDAsync(w + off, q, MOE_MIN((uint64_t)rb * nd, bytes - off),
					      b->st));
	p = (struct moe_mm_prob){ .w = w, .row_bytes = (uint64_t)rb, .x = x, .y = yd, .type = type,
				  .rows = cfg->rows, .cols = cfg->cols, .n_tok = 1,
				  .x_stride = cfg->cols, .y_stride = cfg->rows, .x_div = 1 };
	if (!ret)
		ret = CU(b, cuMemcpyHtoDAsync(x, xf, sizeof(float) * cfg->cols, b->st));
	if (!ret)
		ret = CU(b, cuMemcpyHtoDAsync(pd, &p, sizeof(p), b->st));
	/* one untimed pass: module loading and clocks settle */
	if (!ret)
		ret = bench_matvec(b, cfg, params, 1, false, &ms);
	if (!ret)
		ret = bench_matvec(b, cfg, params, cfg->reps, true, &res->f32_ms);
	if (!ret)
		ret = bench_matvec(b, cfg, params, cfg->reps, false, &ms);
	if (ret)
		goto out;
	res->type = type;
	res->bytes = bytes;
	res->ms = ms / cfg->reps;
	res->matvec_gbps = res->ms > 0 ? (double)bytes / (res->ms * 1e6) : 0;
	res->f32_ms /= cfg->reps;
	res->f32_gbps = res->f32_ms > 0 ? (double)bytes / (res->f32_ms * 1e6) : 0;
	ret = CU(b, cuMemcpyDtoHAsync(y, yd, sizeof(float) * cfg->rows, b->st));
	if (!ret)
		ret = CU(b, cuStreamSynchronize(b->st));
	if (ret)
		goto out;
	for (uint32_t r = 0; r < cfg->rows; r++) {
		err += (y[r] - yc[r % nd]) * (double)(y[r] - yc[r % nd]);
		mag += (double)yc[r % nd] * yc[r % nd];
	}
	res->rel_err = sqrt(err / fmax(mag, 1e-30));

	ret = CU(b, cuEventRecord(b->ev[0], b->st));
	for (uint32_t i = 0; !ret && i < cfg->reps; i++)
		ret = CU(b, cuMemcpyDtoDAsync(w2, w, bytes, b->st));
	if (!ret)
		ret = CU(b, cuEventRecord(b->ev[1], b->st));
	if (!ret)
		ret = bench_elapsed(b, &ms);
	if (!ret)
		res->copy_gbps = ms > 0 ? 2.0 * (double)bytes * cfg->reps / (ms * 1e6) : 0;
out:
	b->api->cuStreamSynchronize(b->st);
	for (CUdeviceptr *d = (CUdeviceptr[]){ w, w2, x, yd, pd, qa }, *e = d + 6; d < e; d++)
		if (*d)
			b->api->cuMemFree(*d);
	free(xf);
	free(wf);
	free(y);
	free(yc);
	free(q);
	return ret;
}

int moe_cuda_mm_bench(const struct moe_cuda_api *api, const struct moe_cuda_mm_bench_cfg *cfg,
		      const uint32_t *types, uint32_t n, struct moe_cuda_mm_bench_res *res,
		      char *dev_name, size_t dev_name_len)
{
	struct bench b = { .api = api };
	const void *image;
	size_t image_bytes;
	int ret;

	if (!cfg->rows || !cfg->cols || cfg->cols % 256 || !cfg->reps)
		return moe_err(EINVAL, "gpu-matvec: %u x %u, %u repetitions (rows and repetitions "
			       "at least 1, columns a multiple of 256)", cfg->rows, cfg->cols,
			       cfg->reps);
	image = moe_cuda_fatbin(&image_bytes);
	if (!image)
		return -ENOENT;
	ret = CU(&b, cuInit(0));
	if (!ret)
		ret = CU(&b, cuDeviceGet(&b.dev, 0));
	if (!ret && dev_name_len)
		ret = CU(&b, cuDeviceGetName(dev_name, (int)dev_name_len, b.dev));
	if (!ret)
		ret = CU(&b, cuDevicePrimaryCtxRetain(&b.ctx, b.dev));
	if (ret)
		return ret;
	ret = CU(&b, cuCtxSetCurrent(b.ctx));
	if (!ret)
		ret = CU(&b, cuModuleLoadData(&b.mod, image));
	if (!ret)
		ret = CU(&b, cuModuleGetFunction(&b.quant, b.mod, "moe_mm_quant_q8_1"));
	if (!ret)
		ret = CU(&b, cuModuleGetFunction(&b.mv_q8, b.mod, "moe_mm_matvec_q8"));
	if (!ret)
		ret = CU(&b, cuModuleGetFunction(&b.mv_f32, b.mod, "moe_mm_matvec"));
	if (!ret)
		ret = CU(&b, cuStreamCreate(&b.st, CU_STREAM_NON_BLOCKING));
	if (!ret)
		ret = CU(&b, cuEventCreate(&b.ev[0], CU_EVENT_DEFAULT));
	if (!ret)
		ret = CU(&b, cuEventCreate(&b.ev[1], CU_EVENT_DEFAULT));
	for (uint32_t i = 0; !ret && i < n; i++)
		ret = bench_type(&b, cfg, types[i], &res[i]);
	for (int i = 0; i < 2; i++)
		if (b.ev[i])
			api->cuEventDestroy(b.ev[i]);
	if (b.st)
		api->cuStreamDestroy(b.st);
	if (b.mod)
		api->cuModuleUnload(b.mod);
	api->cuDevicePrimaryCtxRelease(b.dev);
	return ret;
}
