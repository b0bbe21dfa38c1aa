/* SPDX-License-Identifier: MIT */
/*
 * The fake CUDA driver (fake_cuda.h).  One global state behind one mutex;
 * every entry point takes it, so host code may call from several threads.
 *
 * Device memory is carved from one reserved address range: each allocation
 * starts on a page, is followed by an inaccessible page and is filled with
 * 0xff (NaN) as cuMemAlloc'd memory holds garbage; freed ranges become
 * inaccessible and are not reused until the next reset, so the emulated
 * kernels' accesses can be checked against live allocations (use after free
 * included) through simt_device_region().
 *
 * Work queued on a stream is an op; an op depends on its stream's previous
 * op, on the legacy default stream as CUDA defines it, and on an event's
 * record for cuStreamWaitEvent.  Ops run only when something waits for them,
 * so host code that reads a download before waiting for it reads stale data.
 */
#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <sys/mman.h>
#include <time.h>
#include <vector>

#include "fake_cuda.h"
#include "simt_api.h"

namespace {

enum op_kind { OP_H2D, OP_D2H, OP_D2D, OP_MEMSET, OP_LAUNCH, OP_RECORD, OP_WAIT };

struct fstream;
struct fevent;

struct op {
	uint64_t id = 0;
	op_kind kind = OP_WAIT;
	fstream *s = nullptr;
	std::vector<uint64_t> deps;
	uintptr_t dst = 0, src = 0;
	size_t bytes = 0;
	unsigned char value = 0;
	std::vector<unsigned char> data;   /* pageable upload snapshot, or kernel arguments */
	std::vector<size_t> arg_off;
	const simt_kernel *k = nullptr;
	unsigned g[3] = {1, 1, 1}, b[3] = {1, 1, 1}, shared = 0;
	CUresult fault = CUDA_SUCCESS;
	fevent *ev = nullptr;
};

struct fstream {
	unsigned flags = 0;
	std::deque<op *> q;
	int not_ready = 0;
};

struct fevent {
	unsigned flags = 0;
	uint64_t record = 0;        /* id of the last record op */
	bool recorded = false, done = false;
	double ms = 0;
	int not_ready = 0;
};

struct fmodule {
	int unused = 0;
};

struct ffunc {
	const simt_kernel *k = nullptr;
	fmodule *m = nullptr;
	int max_dyn = 49152;
};

struct falloc {
	size_t size, charged;
};

struct hostrange {
	size_t size;
	bool allocated;             /* cuMemAllocHost rather than cuMemHostRegister */
};

struct inject {
	unsigned left;
	CUresult r;
};

struct state {
	std::mutex mu;
	simt_fake_config cfg;
	bool inited = false;
	int refs = 0;
	unsigned gen = 0;           /* of the primary context; threads hold it current */
	bool alive = false;
	CUresult sticky = CUDA_SUCCESS;
	char *heap = nullptr;
	size_t heap_len = 0, heap_top = 0;
	std::map<uintptr_t, falloc> allocs;
	std::map<uintptr_t, size_t> freed;
	size_t used = 0, peak = 0;
	std::map<uintptr_t, hostrange> pinned;
	size_t pinned_bytes = 0;
	fstream null_stream;
	std::set<fstream *> streams;
	std::set<fevent *> events;
	std::set<fmodule *> modules;
	std::set<ffunc *> funcs;
	std::map<uint64_t, op *> pending;
	uint64_t next_id = 1;
	std::map<std::string, inject> fails;
	unsigned kfail_left = 0;
	CUresult kfail_r = CUDA_SUCCESS;
	uint64_t rng = 1;
	simt_fake_stats st = {};
	std::string fault;
};

/* never destroyed: what tests leave allocated stays reachable, not leaked, at exit */
state *const S = new state();
unsigned g_gen;                     /* generations over resets too */
char g_ctx_obj;                     /* what the CUcontext handle points at */
thread_local unsigned t_gen;        /* generation of the context current on this thread */
thread_local char t_msg[1024];

#define CTX ((CUcontext)(void *)&g_ctx_obj)
#define HEAP_RESERVE (16ull << 30)
#define PAGE 4096ull

size_t align_up(size_t v, size_t a)
{
	return (v + a - 1) / a * a;
}

CUresult err(CUresult r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
CUresult err(CUresult r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(t_msg, sizeof(t_msg), fmt, ap);
	va_end(ap);
	return r;
}

uint64_t rnd()
{
	uint64_t z = (S->rng += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

double now_ms()
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

bool is_sticky(CUresult r)
{
	switch (r) {
	case CUDA_ERROR_ILLEGAL_ADDRESS:
	case CUDA_ERROR_LAUNCH_FAILED:
	case CUDA_ERROR_ECC_UNCORRECTABLE:
	case CUDA_ERROR_HARDWARE_STACK_ERROR:
	case CUDA_ERROR_ILLEGAL_INSTRUCTION:
	case CUDA_ERROR_MISALIGNED_ADDRESS:
	case CUDA_ERROR_INVALID_ADDRESS_SPACE:
	case CUDA_ERROR_INVALID_PC:
	case CUDA_ERROR_ASSERT:
	case CUDA_ERROR_UNKNOWN:
		return true;
	default:
		return false;
	}
}

void drop_pending()
{
	for (auto &p : S->pending)
		delete p.second;
	S->pending.clear();
	S->null_stream.q.clear();
	for (fstream *s : S->streams)
		s->q.clear();
}

/* The context is broken: pending work is lost and every call reports @r. */
void lose(CUresult r, const std::string &why)
{
	if (S->sticky)
		return;
	S->sticky = r;
	S->fault = why;
	drop_pending();
	if (!S->cfg.quiet)
		fprintf(stderr, "fake CUDA: context lost (error %d): %s\n", (int)r, why.c_str());
}

/* ---- running queued work ---- */

void run_id(uint64_t id);

void execute(op *o)
{
	switch (o->kind) {
	case OP_H2D:
		memcpy((void *)o->dst, o->data.empty() ? (const void *)o->src : o->data.data(),
		       o->bytes);
		S->st.h2d_bytes += o->bytes;
		break;
	case OP_D2H:
		memcpy((void *)o->dst, (const void *)o->src, o->bytes);
		S->st.d2h_bytes += o->bytes;
		break;
	case OP_D2D:
		memmove((void *)o->dst, (const void *)o->src, o->bytes);
		S->st.d2d_bytes += o->bytes;
		break;
	case OP_MEMSET:
		memset((void *)o->dst, o->value, o->bytes);
		break;
	case OP_RECORD:
		if (S->events.count(o->ev) && o->ev->record == o->id) {
			o->ev->done = true;
			o->ev->ms = now_ms();
		}
		break;
	case OP_WAIT:
		break;
	case OP_LAUNCH: {
		std::vector<void *> params(o->arg_off.size());
		int st;

		S->st.launches++;
		if (o->fault) {
			lose(o->fault, std::string("kernel '") + simt_kernel_name(o->k) +
				       "' faulted (injected)");
			return;
		}
		for (size_t i = 0; i < params.size(); i++)
			params[i] = o->data.data() + o->arg_off[i];
		st = simt_launch(o->k, o->g[0], o->g[1], o->g[2], o->b[0], o->b[1], o->b[2],
				 o->shared, params.empty() ? nullptr : params.data());
		if (st == SIMT_ERR_ILLEGAL_ADDRESS || st == SIMT_ERR_SHARED_OOB)
			lose(CUDA_ERROR_ILLEGAL_ADDRESS, simt_errmsg());
		else if (st == SIMT_ERR_STACK)
			lose(CUDA_ERROR_HARDWARE_STACK_ERROR, simt_errmsg());
		else if (st)
			lose(CUDA_ERROR_LAUNCH_FAILED, simt_errmsg());
		break;
	}
	}
}

/* Run @s's ops up to and including @id, with what they depend on. */
void run_until(fstream *s, uint64_t id)
{
	while (!S->sticky && !s->q.empty() && s->q.front()->id <= id) {
		op *o = s->q.front();

		for (uint64_t d : o->deps)
			run_id(d);
		if (S->sticky)
			return;
		execute(o);
		if (S->sticky)
			return;
		s->q.pop_front();
		S->pending.erase(o->id);
		delete o;
	}
}

void run_id(uint64_t id)
{
	auto it = S->pending.find(id);

	if (it != S->pending.end())
		run_until(it->second->s, id);
}

void run_all()
{
	while (!S->sticky && !S->pending.empty())
		run_id(S->pending.begin()->first);
}

void run_stream(fstream *s)
{
	if (!s->q.empty())
		run_until(s, s->q.back()->id);
}

/* SIMT_FAKE_RANDOM: now and then, some queued work runs early. */
void random_progress()
{
	std::vector<fstream *> busy;

	if (S->cfg.mode != SIMT_FAKE_RANDOM || S->sticky || S->pending.empty() || rnd() % 4)
		return;
	if (!S->null_stream.q.empty())
		busy.push_back(&S->null_stream);
	for (fstream *s : S->streams)
		if (!s->q.empty())
			busy.push_back(s);
	if (!busy.empty()) {
		fstream *s = busy[rnd() % busy.size()];

		run_until(s, s->q.front()->id);
	}
}

op *enqueue(fstream *s, op *o)
{
	o->id = S->next_id++;
	o->s = s;
	if (s == &S->null_stream) {
		/* the legacy stream waits for every blocking stream's earlier work */
		for (fstream *b : S->streams)
			if (!(b->flags & CU_STREAM_NON_BLOCKING) && !b->q.empty())
				o->deps.push_back(b->q.back()->id);
	} else if (!(s->flags & CU_STREAM_NON_BLOCKING) && !S->null_stream.q.empty()) {
		o->deps.push_back(S->null_stream.q.back()->id);
	}
	s->q.push_back(o);
	S->pending[o->id] = o;
	s->not_ready = S->cfg.mode == SIMT_FAKE_RANDOM ? (int)(rnd() % 3) : 1;
	if (S->cfg.mode == SIMT_FAKE_EAGER)
		run_until(s, o->id);
	return o;
}

/* ---- checks every entry point makes ---- */

bool injected(const char *entry, CUresult *r)
{
	auto it = S->fails.find(entry);

	if (it == S->fails.end() || --it->second.left)
		return false;
	*r = it->second.r;
	S->fails.erase(it);
	if (is_sticky(*r))
		lose(*r, std::string("injected ") + entry + " failure");
	err(*r, "%s: injected failure", entry);
	return true;
}

CUresult need_init()
{
	return S->inited ? CUDA_SUCCESS : err(CUDA_ERROR_NOT_INITIALIZED, "cuInit was not called");
}

CUresult need_ctx()
{
	if (!S->inited)
		return err(CUDA_ERROR_NOT_INITIALIZED, "cuInit was not called");
	if (!t_gen || t_gen != S->gen || !S->alive)
		return err(CUDA_ERROR_INVALID_CONTEXT, "no current context on this thread "
			   "(cuDevicePrimaryCtxRetain and cuCtxSetCurrent on each thread that "
			   "calls)");
	if (S->sticky)
		return err(S->sticky, "the context was lost earlier: %s", S->fault.c_str());
	return CUDA_SUCCESS;
}

#define ENTER(entry)                                        \
	std::lock_guard<std::mutex> lock_(S->mu);           \
	do {                                                \
		CUresult inj_;                              \
		if (injected(entry, &inj_))                 \
			return inj_;                        \
	} while (0)

#define TRY(expr)                                           \
	do {                                                \
		CUresult r_ = (expr);                       \
		if (r_)                                     \
			return r_;                          \
	} while (0)

fstream *stream_of(CUstream h)
{
	if (!h || h == CU_STREAM_LEGACY)
		return &S->null_stream;
	return S->streams.count((fstream *)h) ? (fstream *)h : nullptr;
}

const falloc *alloc_of(uintptr_t p, size_t n, uintptr_t *base)
{
	auto it = S->allocs.upper_bound(p);

	if (it == S->allocs.begin())
		return nullptr;
	--it;
	if (p + n > it->first + it->second.size || p + n < p)
		return nullptr;
	*base = it->first;
	return &it->second;
}

CUresult check_dev(uintptr_t p, size_t n, const char *what)
{
	uintptr_t base;

	if (alloc_of(p, n, &base))
		return CUDA_SUCCESS;
	return err(CUDA_ERROR_INVALID_VALUE, "%s: device range 0x%llx + %zu is not inside one "
		   "live allocation", what, (unsigned long long)p, n);
}

bool is_pinned(const void *p, size_t n)
{
	auto it = S->pinned.upper_bound((uintptr_t)p);

	if (it == S->pinned.begin())
		return false;
	--it;
	return (uintptr_t)p + n <= it->first + it->second.size;
}

/* Called by the emulation, from the launching thread's workers, while it holds S->mu. */
int dev_check(void *ctx, uintptr_t a, size_t n, char *why, size_t len)
{
	state *s = (state *)ctx;
	auto it = s->allocs.upper_bound(a);

	if (it != s->allocs.begin()) {
		--it;
		if (a + n <= it->first + it->second.size)
			return 0;
		if (a < it->first + align_up(it->second.size, PAGE) + PAGE) {
			size_t past = a + n - it->first - it->second.size;

			snprintf(why, len, "it ends %zu bytes past the end of the %zu-byte "
				 "allocation at 0x%llx", past, it->second.size,
				 (unsigned long long)it->first);
			return -1;
		}
	}
	auto f = s->freed.upper_bound(a);

	if (f != s->freed.begin()) {
		--f;
		if (a < f->first + f->second) {
			snprintf(why, len, "inside the %zu-byte allocation at 0x%llx, which was "
				 "freed", f->second, (unsigned long long)f->first);
			return -1;
		}
	}
	snprintf(why, len, "outside every allocation");
	return -1;
}

void destroy_context()
{
	drop_pending();
	for (auto &a : S->allocs)
		mprotect((void *)a.first, align_up(a.second.size, PAGE), PROT_NONE);
	S->allocs.clear();
	S->freed.clear();
	S->used = 0;
	for (auto &h : S->pinned)
		if (h.second.allocated)
			free((void *)h.first);
	S->pinned.clear();
	S->pinned_bytes = 0;
	for (fstream *s : S->streams)
		delete s;
	S->streams.clear();
	for (fevent *e : S->events)
		delete e;
	S->events.clear();
	for (ffunc *f : S->funcs)
		delete f;
	S->funcs.clear();
	for (fmodule *m : S->modules)
		delete m;
	S->modules.clear();
	S->sticky = CUDA_SUCCESS;
	S->fault.clear();
	S->alive = false;
	S->refs = 0;
}

/* ---- entry points ---- */

/* cuGetErrorString's texts, in our words */
const struct {
	CUresult r;
	const char *text;
} result_texts[] = {
	{CUDA_SUCCESS, "success"},
	{CUDA_ERROR_INVALID_VALUE, "an argument is out of range"},
	{CUDA_ERROR_OUT_OF_MEMORY, "device or pinned memory exhausted"},
	{CUDA_ERROR_NOT_INITIALIZED, "cuInit has not been called"},
	{CUDA_ERROR_DEINITIALIZED, "the driver is shutting down"},
	{CUDA_ERROR_STUB_LIBRARY, "the driver library is a stub"},
	{CUDA_ERROR_DEVICE_UNAVAILABLE, "the device is busy or unavailable"},
	{CUDA_ERROR_NO_DEVICE, "no CUDA device found"},
	{CUDA_ERROR_INVALID_DEVICE, "no device with that ordinal"},
	{CUDA_ERROR_INVALID_IMAGE, "the module image is not valid"},
	{CUDA_ERROR_INVALID_CONTEXT, "no valid context is current"},
	{CUDA_ERROR_NO_BINARY_FOR_GPU, "the module has no code for this device"},
	{CUDA_ERROR_ECC_UNCORRECTABLE, "uncorrectable ECC error"},
	{CUDA_ERROR_INVALID_PTX, "PTX compilation failed"},
	{CUDA_ERROR_UNSUPPORTED_PTX_VERSION, "the PTX is newer than the driver"},
	{CUDA_ERROR_INVALID_SOURCE, "the kernel source is not valid"},
	{CUDA_ERROR_FILE_NOT_FOUND, "file not found"},
	{CUDA_ERROR_OPERATING_SYSTEM, "an operating system call failed"},
	{CUDA_ERROR_INVALID_HANDLE, "the handle is not valid"},
	{CUDA_ERROR_ILLEGAL_STATE, "not allowed in the current state"},
	{CUDA_ERROR_NOT_FOUND, "no symbol with that name"},
	{CUDA_ERROR_NOT_READY, "the work has not completed yet"},
	{CUDA_ERROR_ILLEGAL_ADDRESS, "a kernel accessed an illegal address"},
	{CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "the launch needs more resources than there are"},
	{CUDA_ERROR_LAUNCH_TIMEOUT, "the kernel ran too long and was stopped"},
	{CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE, "the primary context is active already"},
	{CUDA_ERROR_CONTEXT_IS_DESTROYED, "the context has been destroyed"},
	{CUDA_ERROR_ASSERT, "a device-side assertion failed"},
	{CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "host memory is registered already"},
	{CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, "host memory is not registered"},
	{CUDA_ERROR_HARDWARE_STACK_ERROR, "a kernel corrupted or overflowed its stack"},
	{CUDA_ERROR_ILLEGAL_INSTRUCTION, "a kernel executed an illegal instruction"},
	{CUDA_ERROR_MISALIGNED_ADDRESS, "a kernel accessed a misaligned address"},
	{CUDA_ERROR_INVALID_ADDRESS_SPACE, "an instruction used the wrong address space"},
	{CUDA_ERROR_INVALID_PC, "a kernel's program counter became invalid"},
	{CUDA_ERROR_LAUNCH_FAILED, "a kernel failed on the device"},
	{CUDA_ERROR_NOT_PERMITTED, "not permitted"},
	{CUDA_ERROR_NOT_SUPPORTED, "not supported"},
	{CUDA_ERROR_SYSTEM_NOT_READY, "the system is not initialized yet"},
	{CUDA_ERROR_SYSTEM_DRIVER_MISMATCH, "the kernel driver and the CUDA driver differ"},
	{CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE, "no forward compatibility here"},
	{CUDA_ERROR_UNKNOWN, "unknown error"},
};

/*
 * The value of an enum argument as an int: the caller (C) may pass a number
 * no enumerator has, which C++ may not load as the enum type.
 */
template <typename E> int enum_value(const E &e)
{
	int v;

	static_assert(sizeof(E) == sizeof(int), "an int-sized enum");
	memcpy(&v, &e, sizeof(v));
	return v;
}

const char *result_text(int r, bool name)
{
	switch (r) {
#define MOE_CUDA_NAME(n, v) \
	case n:             \
		if (name)   \
			return #n; \
		break;
		MOE_CUDA_RESULTS(MOE_CUDA_NAME)
#undef MOE_CUDA_NAME
	default:
		return nullptr;
	}
	for (const auto &t : result_texts)
		if ((int)t.r == r)
			return t.text;
	return nullptr;
}

CUresult f_cuGetErrorName(CUresult e, const char **str)
{
	if (!str)
		return CUDA_ERROR_INVALID_VALUE;
	*str = result_text(enum_value(e), true);
	return *str ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult f_cuGetErrorString(CUresult e, const char **str)
{
	if (!str)
		return CUDA_ERROR_INVALID_VALUE;
	*str = result_text(enum_value(e), false);
	return *str ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult f_cuInit(unsigned int flags)
{
	ENTER("cuInit");
	if (flags)
		return err(CUDA_ERROR_INVALID_VALUE, "cuInit: flags must be 0");
	if (S->cfg.no_device)
		return err(CUDA_ERROR_NO_DEVICE, "cuInit: the fake has no device (no_device)");
	S->inited = true;
	return CUDA_SUCCESS;
}

CUresult f_cuDriverGetVersion(int *v)
{
	ENTER("cuDriverGetVersion");
	if (!v)
		return CUDA_ERROR_INVALID_VALUE;
	*v = S->cfg.driver_version;
	return CUDA_SUCCESS;
}

CUresult f_cuDeviceGetCount(int *n)
{
	ENTER("cuDeviceGetCount");
	TRY(need_init());
	if (!n)
		return CUDA_ERROR_INVALID_VALUE;
	*n = 1;
	return CUDA_SUCCESS;
}

CUresult check_device(CUdevice d)
{
	TRY(need_init());
	return d == 0 ? CUDA_SUCCESS : err(CUDA_ERROR_INVALID_DEVICE, "device %d: the fake has "
					    "device 0 only", d);
}

CUresult f_cuDeviceGet(CUdevice *d, int ordinal)
{
	ENTER("cuDeviceGet");
	TRY(check_device(ordinal));
	if (!d)
		return CUDA_ERROR_INVALID_VALUE;
	*d = 0;
	return CUDA_SUCCESS;
}

CUresult f_cuDeviceGetName(char *name, int len, CUdevice d)
{
	ENTER("cuDeviceGetName");
	TRY(check_device(d));
	if (!name || len <= 0)
		return CUDA_ERROR_INVALID_VALUE;
	snprintf(name, (size_t)len, "%s", S->cfg.name);
	return CUDA_SUCCESS;
}

CUresult f_cuDeviceGetAttribute(int *v, CUdevice_attribute a, CUdevice d)
{
	int bus = 0;

	ENTER("cuDeviceGetAttribute");
	TRY(check_device(d));
	if (!v)
		return CUDA_ERROR_INVALID_VALUE;
	sscanf(S->cfg.pci_bus_id, "%*x:%x", &bus);
	switch (enum_value(a)) {
	case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *v = 1024; break;
	case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *v = 1024; break;
	case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *v = 1024; break;
	case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *v = 64; break;
	case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *v = 2147483647; break;
	case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *v = 65535; break;
	case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *v = 65535; break;
	case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *v = 49152; break;
	case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: *v = 65536; break;
	case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *v = 32; break;
	case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: *v = 65536; break;
	case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: *v = 1980000; break;
	case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *v = S->cfg.sm_count; break;
	case CU_DEVICE_ATTRIBUTE_INTEGRATED: *v = 0; break;
	case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: *v = 1; break;
	case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: *v = 1; break;
	case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: *v = bus; break;
	case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: *v = 0; break;
	case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: *v = 2619000; break;
	case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: *v = 6144; break;
	case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: *v = 50 << 20; break;
	case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *v = 2048; break;
	case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: *v = 2; break;
	case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *v = 1; break;
	case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: *v = 0; break;
	case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *v = S->cfg.cc_major; break;
	case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *v = S->cfg.cc_minor; break;
	case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: *v = 233472; break;
	case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: {
		struct simt_config c;

		simt_config_get(&c);
		*v = (int)c.shared_optin;
		break;
	}
	case CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED: *v = 1; break;
	case CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED: *v = 0; break;
	default:
		return err(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetAttribute: attribute %d is not "
			   "emulated", enum_value(a));
	}
	return CUDA_SUCCESS;
}

CUresult f_cuDeviceTotalMem(size_t *bytes, CUdevice d)
{
	ENTER("cuDeviceTotalMem");
	TRY(check_device(d));
	if (!bytes)
		return CUDA_ERROR_INVALID_VALUE;
	*bytes = S->cfg.total_mem;
	return CUDA_SUCCESS;
}

CUresult f_cuDeviceGetPCIBusId(char *id, int len, CUdevice d)
{
	ENTER("cuDeviceGetPCIBusId");
	TRY(check_device(d));
	if (!id || len < (int)strlen(S->cfg.pci_bus_id) + 1)
		return err(CUDA_ERROR_INVALID_VALUE, "cuDeviceGetPCIBusId: buffer of %d bytes",
			   len);
	snprintf(id, (size_t)len, "%s", S->cfg.pci_bus_id);
	return CUDA_SUCCESS;
}

CUresult f_cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice d)
{
	ENTER("cuDevicePrimaryCtxRetain");
	TRY(check_device(d));
	if (!ctx)
		return CUDA_ERROR_INVALID_VALUE;
	if (!S->alive) {
		S->alive = true;
		S->gen = ++g_gen;
	}
	S->refs++;
	*ctx = CTX;
	return CUDA_SUCCESS;
}

CUresult f_cuDevicePrimaryCtxRelease(CUdevice d)
{
	ENTER("cuDevicePrimaryCtxRelease");
	TRY(check_device(d));
	if (!S->alive)
		return err(CUDA_ERROR_INVALID_CONTEXT, "cuDevicePrimaryCtxRelease: not retained");
	if (!--S->refs)
		destroy_context();
	return CUDA_SUCCESS;
}

CUresult f_cuCtxSetCurrent(CUcontext ctx)
{
	ENTER("cuCtxSetCurrent");
	TRY(need_init());
	if (!ctx) {
		t_gen = 0;
		return CUDA_SUCCESS;
	}
	if (ctx != CTX || !S->alive)
		return err(CUDA_ERROR_INVALID_CONTEXT, "cuCtxSetCurrent: not a live context");
	t_gen = S->gen;
	return CUDA_SUCCESS;
}

CUresult f_cuCtxSynchronize(void)
{
	ENTER("cuCtxSynchronize");
	TRY(need_ctx());
	run_all();
	return S->sticky;
}

CUresult f_cuMemAlloc(CUdeviceptr *dptr, size_t bytes)
{
	size_t charged, pages;
	char *p;

	ENTER("cuMemAlloc");
	random_progress();
	TRY(need_ctx());
	if (!dptr || !bytes)
		return err(CUDA_ERROR_INVALID_VALUE, "cuMemAlloc: %s",
			   dptr ? "0 bytes" : "NULL dptr");
	charged = align_up(bytes, S->cfg.granularity);
	if (bytes > S->cfg.total_mem ||
	    charged > S->cfg.total_mem - S->cfg.reserved_mem - S->used)
		return err(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc: %zu bytes, %zu free", bytes,
			   S->cfg.total_mem - S->cfg.reserved_mem - S->used);
	pages = align_up(bytes, PAGE);
	if (S->heap_top + pages + PAGE > S->heap_len)
		return err(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc: the fake's %llu GiB of device "
			   "addresses are used up (reset it)", HEAP_RESERVE >> 30);
	p = S->heap + S->heap_top;
	if (mprotect(p, pages, PROT_READ | PROT_WRITE))
		return err(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc: mprotect: %s", strerror(errno));
	memset(p, 0xff, bytes);
	S->heap_top += pages + PAGE;
	S->allocs[(uintptr_t)p] = falloc{bytes, charged};
	S->used += charged;
	S->peak = std::max(S->peak, S->used);
	*dptr = (CUdeviceptr)(uintptr_t)p;
	return CUDA_SUCCESS;
}

CUresult f_cuMemFree(CUdeviceptr d)
{
	ENTER("cuMemFree");
	TRY(need_ctx());
	if (!d)
		return CUDA_SUCCESS;
	auto it = S->allocs.find((uintptr_t)d);

	if (it == S->allocs.end())
		return err(CUDA_ERROR_INVALID_VALUE, "cuMemFree: 0x%llx is not the start of a live "
			   "allocation", (unsigned long long)d);
	/* as cuMemFree, wait for the work that may still use it */
	run_all();
	TRY(S->sticky);
	mprotect((void *)it->first, align_up(it->second.size, PAGE), PROT_NONE);
	madvise((void *)it->first, align_up(it->second.size, PAGE), MADV_DONTNEED);
	S->used -= it->second.charged;
	S->freed[it->first] = it->second.size;
	S->allocs.erase(it);
	return CUDA_SUCCESS;
}

CUresult f_cuMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
	ENTER("cuMemGetInfo");
	TRY(need_ctx());
	if (!free_bytes || !total_bytes)
		return CUDA_ERROR_INVALID_VALUE;
	*free_bytes = S->cfg.total_mem - S->cfg.reserved_mem - S->used;
	*total_bytes = S->cfg.total_mem;
	return CUDA_SUCCESS;
}

CUresult pin(void *p, size_t bytes, bool allocated)
{
	auto next = S->pinned.lower_bound((uintptr_t)p);

	if (next != S->pinned.end() && next->first < (uintptr_t)p + bytes)
		return err(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "host range %p + %zu "
			   "overlaps the pinned range at 0x%llx", p, bytes,
			   (unsigned long long)next->first);
	if (next != S->pinned.begin()) {
		auto prev = std::prev(next);

		if (prev->first + prev->second.size > (uintptr_t)p)
			return err(CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED, "host range %p + %zu "
				   "overlaps the pinned range at 0x%llx", p, bytes,
				   (unsigned long long)prev->first);
	}
	if (S->cfg.pinned_limit && S->pinned_bytes + bytes > S->cfg.pinned_limit)
		return err(CUDA_ERROR_OUT_OF_MEMORY, "pinning %zu more bytes passes the limit "
			   "of %zu", bytes, S->cfg.pinned_limit);
	S->pinned[(uintptr_t)p] = hostrange{bytes, allocated};
	S->pinned_bytes += bytes;
	return CUDA_SUCCESS;
}

CUresult f_cuMemHostRegister(void *p, size_t bytes, unsigned int flags)
{
	ENTER("cuMemHostRegister");
	TRY(need_ctx());
	if (!p || !bytes || (flags & ~0xfu))
		return err(CUDA_ERROR_INVALID_VALUE, "cuMemHostRegister(%p, %zu, 0x%x)", p, bytes,
			   flags);
	return pin(p, bytes, false);
}

CUresult f_cuMemHostUnregister(void *p)
{
	ENTER("cuMemHostUnregister");
	TRY(need_ctx());
	auto it = S->pinned.find((uintptr_t)p);

	if (it == S->pinned.end() || it->second.allocated)
		return err(CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, "cuMemHostUnregister: %p does "
			   "not start a registered range", p);
	run_all();
	TRY(S->sticky);
	S->pinned_bytes -= it->second.size;
	S->pinned.erase(it);
	return CUDA_SUCCESS;
}

CUresult f_cuMemAllocHost(void **pp, size_t bytes)
{
	void *p;
	CUresult r;

	ENTER("cuMemAllocHost");
	TRY(need_ctx());
	if (!pp || !bytes)
		return CUDA_ERROR_INVALID_VALUE;
	p = aligned_alloc(PAGE, align_up(bytes, PAGE));
	if (!p)
		return err(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAllocHost: %zu bytes", bytes);
	r = pin(p, bytes, true);
	if (r) {
		free(p);
		return r;
	}
	*pp = p;
	return CUDA_SUCCESS;
}

CUresult f_cuMemFreeHost(void *p)
{
	ENTER("cuMemFreeHost");
	TRY(need_ctx());
	auto it = S->pinned.find((uintptr_t)p);

	if (it == S->pinned.end() || !it->second.allocated)
		return err(CUDA_ERROR_INVALID_VALUE, "cuMemFreeHost: %p is not from cuMemAllocHost",
			   p);
	run_all();
	TRY(S->sticky);
	S->pinned_bytes -= it->second.size;
	S->pinned.erase(it);
	free(p);
	return CUDA_SUCCESS;
}

CUresult copy_prologue(CUstream h, fstream **s)
{
	random_progress();
	TRY(need_ctx());
	*s = stream_of(h);
	if (!*s)
		return err(CUDA_ERROR_INVALID_HANDLE, "stream %p is not a live stream", (void *)h);
	return CUDA_SUCCESS;
}

CUresult f_cuMemcpyHtoDAsync(CUdeviceptr dst, const void *src, size_t bytes, CUstream h)
{
	fstream *s;
	op *o;

	ENTER("cuMemcpyHtoDAsync");
	TRY(copy_prologue(h, &s));
	if (!bytes)
		return CUDA_SUCCESS;
	if (!src)
		return CUDA_ERROR_INVALID_VALUE;
	TRY(check_dev((uintptr_t)dst, bytes, "cuMemcpyHtoDAsync"));
	o = new op();
	o->kind = OP_H2D;
	o->dst = (uintptr_t)dst;
	o->src = (uintptr_t)src;
	o->bytes = bytes;
	if (!is_pinned(src, bytes)) {
		/* the driver stages pageable memory at the call */
		o->data.assign((const unsigned char *)src, (const unsigned char *)src + bytes);
		S->st.pageable_copies++;
	}
	enqueue(s, o);
	return S->sticky;
}

CUresult f_cuMemcpyDtoHAsync(void *dst, CUdeviceptr src, size_t bytes, CUstream h)
{
	fstream *s;
	op *o;

	ENTER("cuMemcpyDtoHAsync");
	TRY(copy_prologue(h, &s));
	if (!bytes)
		return CUDA_SUCCESS;
	if (!dst)
		return CUDA_ERROR_INVALID_VALUE;
	TRY(check_dev((uintptr_t)src, bytes, "cuMemcpyDtoHAsync"));
	o = new op();
	o->kind = OP_D2H;
	o->dst = (uintptr_t)dst;
	o->src = (uintptr_t)src;
	o->bytes = bytes;
	enqueue(s, o);
	if (!is_pinned(dst, bytes)) {
		/* into pageable memory the copy is synchronous */
		S->st.pageable_copies++;
		run_until(s, o->id);
	}
	return S->sticky;
}

CUresult f_cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream h)
{
	fstream *s;
	op *o;

	ENTER("cuMemcpyDtoDAsync");
	TRY(copy_prologue(h, &s));
	if (!bytes)
		return CUDA_SUCCESS;
	TRY(check_dev((uintptr_t)src, bytes, "cuMemcpyDtoDAsync source"));
	TRY(check_dev((uintptr_t)dst, bytes, "cuMemcpyDtoDAsync destination"));
	o = new op();
	o->kind = OP_D2D;
	o->dst = (uintptr_t)dst;
	o->src = (uintptr_t)src;
	o->bytes = bytes;
	enqueue(s, o);
	return S->sticky;
}

CUresult f_cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t n, CUstream h)
{
	fstream *s;
	op *o;

	ENTER("cuMemsetD8Async");
	TRY(copy_prologue(h, &s));
	if (!n)
		return CUDA_SUCCESS;
	TRY(check_dev((uintptr_t)dst, n, "cuMemsetD8Async"));
	o = new op();
	o->kind = OP_MEMSET;
	o->dst = (uintptr_t)dst;
	o->bytes = n;
	o->value = value;
	enqueue(s, o);
	return S->sticky;
}

CUresult f_cuStreamCreate(CUstream *out, unsigned int flags)
{
	fstream *s;

	ENTER("cuStreamCreate");
	TRY(need_ctx());
	if (!out || (flags & ~(unsigned)CU_STREAM_NON_BLOCKING))
		return err(CUDA_ERROR_INVALID_VALUE, "cuStreamCreate: flags 0x%x", flags);
	s = new fstream();
	s->flags = flags;
	S->streams.insert(s);
	*out = (CUstream)(void *)s;
	return CUDA_SUCCESS;
}

CUresult f_cuStreamDestroy(CUstream h)
{
	fstream *s;

	ENTER("cuStreamDestroy");
	TRY(need_ctx());
	s = stream_of(h);
	if (!s || s == &S->null_stream)
		return err(CUDA_ERROR_INVALID_HANDLE, "cuStreamDestroy: %p is not a created stream",
			   (void *)h);
	/* its work still completes: run it now */
	run_stream(s);
	TRY(S->sticky);
	S->streams.erase(s);
	delete s;
	return CUDA_SUCCESS;
}

CUresult f_cuStreamSynchronize(CUstream h)
{
	fstream *s;

	ENTER("cuStreamSynchronize");
	TRY(need_ctx());
	s = stream_of(h);
	if (!s)
		return err(CUDA_ERROR_INVALID_HANDLE, "cuStreamSynchronize: %p", (void *)h);
	run_stream(s);
	return S->sticky;
}

CUresult f_cuStreamQuery(CUstream h)
{
	fstream *s;

	ENTER("cuStreamQuery");
	TRY(need_ctx());
	s = stream_of(h);
	if (!s)
		return err(CUDA_ERROR_INVALID_HANDLE, "cuStreamQuery: %p", (void *)h);
	if (s->q.empty())
		return CUDA_SUCCESS;
	if (s->not_ready > 0) {
		s->not_ready--;
		return CUDA_ERROR_NOT_READY;
	}
	run_stream(s);
	return S->sticky;
}

CUresult f_cuStreamWaitEvent(CUstream h, CUevent ev, unsigned int flags)
{
	fstream *s;
	fevent *e = (fevent *)ev;
	op *o;

	ENTER("cuStreamWaitEvent");
	random_progress();
	TRY(need_ctx());
	s = stream_of(h);
	if (!s || !S->events.count(e))
		return err(CUDA_ERROR_INVALID_HANDLE, "cuStreamWaitEvent: stream %p event %p",
			   (void *)h, (void *)ev);
	if (flags)
		return err(CUDA_ERROR_INVALID_VALUE, "cuStreamWaitEvent: flags must be 0");
	if (!e->recorded || e->done)
		return CUDA_SUCCESS;
	o = new op();
	o->kind = OP_WAIT;
	o->deps.push_back(e->record);
	enqueue(s, o);
	return S->sticky;
}

CUresult f_cuEventCreate(CUevent *out, unsigned int flags)
{
	fevent *e;

	ENTER("cuEventCreate");
	TRY(need_ctx());
	if (!out || (flags & ~(unsigned)(CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING)))
		return err(CUDA_ERROR_INVALID_VALUE, "cuEventCreate: flags 0x%x", flags);
	e = new fevent();
	e->flags = flags;
	S->events.insert(e);
	*out = (CUevent)(void *)e;
	return CUDA_SUCCESS;
}

CUresult f_cuEventRecord(CUevent ev, CUstream h)
{
	fstream *s;
	fevent *e = (fevent *)ev;
	op *o;

	ENTER("cuEventRecord");
	random_progress();
	TRY(need_ctx());
	s = stream_of(h);
	if (!s || !S->events.count(e))
		return err(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord: event %p stream %p",
			   (void *)ev, (void *)h);
	o = new op();
	o->kind = OP_RECORD;
	o->ev = e;
	e->recorded = true;
	e->done = false;
	/* the record op's id is known only once queued, and EAGER runs it at once */
	e->record = S->next_id;
	e->not_ready = S->cfg.mode == SIMT_FAKE_RANDOM ? (int)(rnd() % 3) : 1;
	enqueue(s, o);
	return S->sticky;
}

CUresult f_cuEventQuery(CUevent ev)
{
	fevent *e = (fevent *)ev;

	ENTER("cuEventQuery");
	TRY(need_ctx());
	if (!S->events.count(e))
		return err(CUDA_ERROR_INVALID_HANDLE, "cuEventQuery: %p", (void *)ev);
	if (!e->recorded || e->done)
		return CUDA_SUCCESS;
	if (e->not_ready > 0) {
		e->not_ready--;
		return CUDA_ERROR_NOT_READY;
	}
	run_id(e->record);
	return S->sticky;
}

CUresult f_cuEventSynchronize(CUevent ev)
{
	fevent *e = (fevent *)ev;

	ENTER("cuEventSynchronize");
	TRY(need_ctx());
	if (!S->events.count(e))
		return err(CUDA_ERROR_INVALID_HANDLE, "cuEventSynchronize: %p", (void *)ev);
	if (e->recorded)
		run_id(e->record);
	return S->sticky;
}

CUresult f_cuEventDestroy(CUevent ev)
{
	fevent *e = (fevent *)ev;

	ENTER("cuEventDestroy");
	TRY(need_ctx());
	if (!S->events.count(e))
		return err(CUDA_ERROR_INVALID_HANDLE, "cuEventDestroy: %p", (void *)ev);
	/* a pending record or wait refers to it: run them first */
	if (e->recorded)
		run_id(e->record);
	for (auto &p : S->pending)
		if (p.second->ev == e)
			p.second->ev = nullptr;
	S->events.erase(e);
	delete e;
	return S->sticky;
}

CUresult f_cuEventElapsedTime(float *ms, CUevent start, CUevent end)
{
	fevent *a = (fevent *)start, *b = (fevent *)end;

	ENTER("cuEventElapsedTime");
	TRY(need_ctx());
	if (!ms)
		return CUDA_ERROR_INVALID_VALUE;
	if (!S->events.count(a) || !S->events.count(b) || !a->recorded || !b->recorded ||
	    ((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING))
		return err(CUDA_ERROR_INVALID_HANDLE, "cuEventElapsedTime: events not recorded, or "
			   "created with CU_EVENT_DISABLE_TIMING");
	if (!a->done || !b->done)
		return CUDA_ERROR_NOT_READY;
	*ms = (float)(b->ms - a->ms);
	return CUDA_SUCCESS;
}

CUresult f_cuModuleLoadData(CUmodule *mod, const void *image)
{
	fmodule *m;

	ENTER("cuModuleLoadData");
	TRY(need_ctx());
	if (!mod || !image)
		return CUDA_ERROR_INVALID_VALUE;
	m = new fmodule();
	S->modules.insert(m);
	*mod = (CUmodule)(void *)m;
	return CUDA_SUCCESS;
}

CUresult f_cuModuleGetFunction(CUfunction *fn, CUmodule mod, const char *name)
{
	fmodule *m = (fmodule *)mod;
	const simt_kernel *k;
	ffunc *f;

	ENTER("cuModuleGetFunction");
	TRY(need_ctx());
	if (!S->modules.count(m))
		return err(CUDA_ERROR_INVALID_HANDLE, "cuModuleGetFunction: module %p",
			   (void *)mod);
	if (!fn || !name)
		return CUDA_ERROR_INVALID_VALUE;
	k = simt_kernel_find(name);
	if (!k)
		return err(CUDA_ERROR_NOT_FOUND, "cuModuleGetFunction: %s", simt_errmsg());
	f = new ffunc();
	f->k = k;
	f->m = m;
	S->funcs.insert(f);
	*fn = (CUfunction)(void *)f;
	return CUDA_SUCCESS;
}

CUresult f_cuModuleUnload(CUmodule mod)
{
	fmodule *m = (fmodule *)mod;

	ENTER("cuModuleUnload");
	TRY(need_ctx());
	if (!S->modules.count(m))
		return err(CUDA_ERROR_INVALID_HANDLE, "cuModuleUnload: module %p", (void *)mod);
	run_all();
	TRY(S->sticky);
	for (auto it = S->funcs.begin(); it != S->funcs.end();) {
		if ((*it)->m == m) {
			delete *it;
			it = S->funcs.erase(it);
		} else {
			++it;
		}
	}
	S->modules.erase(m);
	delete m;
	return CUDA_SUCCESS;
}

CUresult f_cuFuncSetAttribute(CUfunction fn, CUfunction_attribute a, int value)
{
	ffunc *f = (ffunc *)fn;
	struct simt_config c;

	ENTER("cuFuncSetAttribute");
	TRY(need_ctx());
	if (!S->funcs.count(f))
		return err(CUDA_ERROR_INVALID_HANDLE, "cuFuncSetAttribute: function %p",
			   (void *)fn);
	simt_config_get(&c);
	if (enum_value(a) == CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
		if (value < 0 || (unsigned)value > c.shared_optin)
			return err(CUDA_ERROR_INVALID_VALUE, "cuFuncSetAttribute: %d bytes of "
				   "dynamic shared memory, the device allows %u", value,
				   c.shared_optin);
		f->max_dyn = value;
		return CUDA_SUCCESS;
	}
	if (enum_value(a) == CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT && value >= -1 &&
	    value <= 100)
		return CUDA_SUCCESS;
	return err(CUDA_ERROR_INVALID_VALUE, "cuFuncSetAttribute: attribute %d value %d",
		   enum_value(a), value);
}

CUresult f_cuLaunchKernel(CUfunction fn, unsigned int gx, unsigned int gy, unsigned int gz,
			  unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared,
			  CUstream h, void **params, void **extra)
{
	ffunc *f = (ffunc *)fn;
	fstream *s;
	op *o;
	unsigned n;
	size_t off = 0;

	ENTER("cuLaunchKernel");
	random_progress();
	TRY(need_ctx());
	if (!S->funcs.count(f))
		return err(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel: function %p (unloaded?)",
			   (void *)fn);
	s = stream_of(h);
	if (!s)
		return err(CUDA_ERROR_INVALID_HANDLE, "cuLaunchKernel: stream %p", (void *)h);
	if (extra)
		return err(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: the fake takes kernelParams, "
			   "not extra");
	if (shared > (unsigned)f->max_dyn)
		return err(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel '%s': %u bytes of dynamic "
			   "shared memory, over the function's %d (raise it with "
			   "cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES))",
			   simt_kernel_name(f->k), shared, f->max_dyn);
	if (simt_launch_check(f->k, gx, gy, gz, bx, by, bz, shared, params))
		return err(CUDA_ERROR_INVALID_VALUE, "cuLaunchKernel: %s", simt_errmsg());
	o = new op();
	o->kind = OP_LAUNCH;
	o->k = f->k;
	o->g[0] = gx;
	o->g[1] = gy;
	o->g[2] = gz;
	o->b[0] = bx;
	o->b[1] = by;
	o->b[2] = bz;
	o->shared = shared;
	/* the arguments are copied at the call, as the driver does */
	n = simt_kernel_param_count(f->k);
	for (unsigned i = 0; i < n; i++) {
		o->arg_off.push_back(off);
		off = align_up(off + simt_kernel_param_size(f->k, i), 16);
	}
	o->data.resize(off ? off : 1);
	for (unsigned i = 0; i < n; i++)
		memcpy(o->data.data() + o->arg_off[i], params[i], simt_kernel_param_size(f->k, i));
	if (S->kfail_left && !--S->kfail_left)
		o->fault = S->kfail_r;
	enqueue(s, o);
	return S->sticky;
}

} /* namespace */

extern "C" {

void simt_fake_cuda_reset(const struct simt_fake_config *cfg)
{
	std::lock_guard<std::mutex> lock(S->mu);

	if (S->alive || S->refs)
		destroy_context();
	if (S->heap)
		munmap(S->heap, S->heap_len);
	S->cfg = cfg ? *cfg : simt_fake_config{};
	if (!S->cfg.total_mem)
		S->cfg.total_mem = 256ull << 20;
	if (!S->cfg.granularity)
		S->cfg.granularity = 512;
	if (S->cfg.reserved_mem > S->cfg.total_mem)
		S->cfg.reserved_mem = S->cfg.total_mem;
	if (!S->cfg.cc_major) {
		S->cfg.cc_major = 9;
		S->cfg.cc_minor = 0;
	}
	if (!S->cfg.sm_count)
		S->cfg.sm_count = 132;
	if (!S->cfg.driver_version)
		S->cfg.driver_version = 13000;
	if (!S->cfg.name)
		S->cfg.name = "SIMT emulated GPU";
	if (!S->cfg.pci_bus_id)
		S->cfg.pci_bus_id = "0000:17:00.0";
	S->heap_len = std::max<size_t>(HEAP_RESERVE, 4 * align_up(S->cfg.total_mem, PAGE));
	S->heap = (char *)mmap(NULL, S->heap_len, PROT_NONE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (S->heap == MAP_FAILED) {
		fprintf(stderr, "fake CUDA: cannot reserve %zu GiB of addresses: %s\n",
			S->heap_len >> 30, strerror(errno));
		abort();
	}
	S->heap_top = 0;
	S->inited = false;
	S->fails.clear();
	S->kfail_left = 0;
	S->rng = S->cfg.seed ? S->cfg.seed : 1;
	S->st = simt_fake_stats{};
	S->peak = 0;
	S->next_id = 1;
	S->gen = 0;
	t_gen = 0;
	simt_device_region((uintptr_t)S->heap, S->heap_len, dev_check, S);
}

void simt_fake_cuda_api(struct moe_cuda_api *api)
{
	memset(api, 0, sizeof(*api));
#define MOE_CUDA_FAKE(name, symbol, fallback, params, args) api->name = f_##name;
	MOE_CUDA_ENTRIES(MOE_CUDA_FAKE)
#undef MOE_CUDA_FAKE
}

int simt_fake_cuda_fail(const char *entry, unsigned nth, CUresult result)
{
	static const char *const names[] = {
#define MOE_CUDA_NAME(name, symbol, fallback, params, args) #name,
		MOE_CUDA_ENTRIES(MOE_CUDA_NAME)
#undef MOE_CUDA_NAME
	};
	std::lock_guard<std::mutex> lock(S->mu);

	if (!entry || !nth)
		return -1;
	for (const char *n : names) {
		if (!strcmp(n, entry)) {
			S->fails[entry] = inject{nth, result};
			return 0;
		}
	}
	return -1;
}

int simt_fake_cuda_fail_kernel(unsigned nth, CUresult result)
{
	std::lock_guard<std::mutex> lock(S->mu);

	if (!nth || !is_sticky(result))
		return -1;
	S->kfail_left = nth;
	S->kfail_r = result;
	return 0;
}

void simt_fake_cuda_lose_context(CUresult result)
{
	std::lock_guard<std::mutex> lock(S->mu);

	lose(result, "context lost (injected)");
}

const char *simt_fake_cuda_errmsg(void)
{
	std::lock_guard<std::mutex> lock(S->mu);

	if (S->sticky)
		snprintf(t_msg, sizeof(t_msg), "%s", S->fault.c_str());
	return t_msg;
}

void simt_fake_cuda_stats(struct simt_fake_stats *st)
{
	std::lock_guard<std::mutex> lock(S->mu);

	*st = S->st;
	st->mem_used = S->used;
	st->mem_peak = S->peak;
	st->allocs = (unsigned)S->allocs.size();
	st->pinned = S->pinned_bytes;
	st->ops_pending = S->pending.size();
}

} /* extern "C" */
