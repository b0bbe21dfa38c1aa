/* SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include "engine_opts.h"
#include "tool.h"

enum {
	O_VRAM = ENGINE_OPT_BASE, O_HOST_CACHE, O_PLE_CACHE, O_POLICY, O_PREFETCH, O_PIN_HOT,
	O_POOLS, O_STATE_DIR, O_NO_STATE, O_THREADS, O_BACKEND, O_KVTYPE, O_IO, O_NODIRECT,
	O_BATCH, O_GDS,
};

static const struct option engine_lo[] = {
	{ "vram", required_argument, 0, O_VRAM },
	{ "host-cache", required_argument, 0, O_HOST_CACHE },
	{ "ple-cache", required_argument, 0, O_PLE_CACHE },
	{ "policy", required_argument, 0, O_POLICY },
	{ "prefetch", required_argument, 0, O_PREFETCH },
	{ "pin-hot", required_argument, 0, O_PIN_HOT },
	{ "layer-pools", no_argument, 0, O_POOLS },
	{ "state-dir", required_argument, 0, O_STATE_DIR },
	{ "no-state", no_argument, 0, O_NO_STATE },
	{ "threads", required_argument, 0, O_THREADS },
	{ "backend", required_argument, 0, O_BACKEND },
	{ "kv-type", required_argument, 0, O_KVTYPE },
	{ "io", required_argument, 0, O_IO },
	{ "no-direct", no_argument, 0, O_NODIRECT },
	{ "batch", required_argument, 0, O_BATCH },
	{ "gds", required_argument, 0, O_GDS },
};

#define N_ENGINE (sizeof(engine_lo) / sizeof(engine_lo[0]))

void engine_opts_init(struct engine_opts *e)
{
	memset(e, 0, sizeof(*e));
	moe_io_params_init(&e->io);
}

const struct option *engine_opts_join(const struct option *own)
{
	static struct option all[128];
	size_t n = 0;

	while (own[n].name && n < sizeof(all) / sizeof(all[0]) - N_ENGINE - 1) {
		all[n] = own[n];
		n++;
	}
	memcpy(all + n, engine_lo, sizeof(engine_lo));
	memset(all + n + N_ENGINE, 0, sizeof(all[0]));
	return all;
}

void engine_opts_usage(FILE *f)
{
	fprintf(f,
		"      --vram SIZE        device memory budget, e.g. 20G, 512M (default: no limit)\n"
		"      --host-cache SIZE  keep experts evicted from the budget in host memory\n"
		"      --ple-cache SIZE   Gemma 4 E2B/E4B: host memory for per-layer embedding\n"
		"                         rows cached by token (4096 rows)\n"
		"      --policy NAME      expert eviction policy: lru, lfu, stats, with options\n"
		"                         after ':' (lfu:decay=0.9) (stats)\n"
		"      --prefetch NAME    fetch experts before the router asks: none, pop, trans,\n"
		"                         spec, mix, with options (mix:depth=2,min=0.6) (none)\n"
		"      --pin-hot N        keep the N most used experts in device memory for good\n"
		"      --layer-pools      one pool of expert slots per layer\n"
		"      --state-dir DIR    load and save routing statistics here (default\n"
		"                         $MOE_STATE_DIR, $XDG_STATE_HOME/moe, ~/.local/state/moe)\n"
		"      --no-state         neither load nor save routing statistics\n"
		"      --threads N        compute threads (all CPUs)\n"
		"      --backend NAME     where the model runs: auto, or one of those built in\n"
		"      --kv-type T        KV cache elements: f32, f16 or q8_0 (f32)\n"
		"      --batch N          prompt tokens per forward step (64)\n"
		"      --io auto|uring|pread   how the file is read (auto)\n"
		"      --no-direct        read through the page cache instead of O_DIRECT\n"
		"      --gds auto|on|off  read missing experts straight into GPU memory with\n"
		"                         GPUDirect Storage (auto: where libcufile works) (auto)\n");
}

static int bad(const char *fmt, const char *arg)
{
	fprintf(stderr, "%s: ", tool_name);
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n");
	return EXIT_USAGE;
}

int engine_parse_gds(const char *arg, uint32_t *out)
{
	if (!strcmp(arg, "auto"))
		*out = MOE_GDS_AUTO;
	else if (!strcmp(arg, "on"))
		*out = MOE_GDS_ON;
	else if (!strcmp(arg, "off"))
		*out = MOE_GDS_OFF;
	else
		return bad("--gds '%s': expected auto, on or off", arg);
	return 0;
}

/* Whether @s is a size of zero with a valid unit ("0", "0G", "0.0MiB"). */
static bool size_is_zero(const char *s)
{
	char one[32];
	uint64_t v;
	char *end;

	if (*s < '0' || *s > '9' || strtod(s, &end) != 0 || strlen(end) > 8)
		return false;
	snprintf(one, sizeof(one), "1%s", end);
	return moe_parse_size(one, &v) == 0;
}

/* A budget; @zero (when not NULL) says whether 0 was written, which moe_parse_size refuses. */
static int parse_size(const char *s, const char *what, uint64_t *out, bool *zero)
{
	bool z = size_is_zero(s);

	if (zero)
		*zero = z;
	if (z) {
		*out = 0;
		return 0;
	}
	if (moe_parse_size(s, out) < 0) {
		fprintf(stderr, "%s: %s %s\n", tool_name, what, moe_errmsg());
		return EXIT_USAGE;
	}
	return 0;
}

int engine_opts_parse(struct engine_opts *e, int c, const char *arg)
{
	int t;

	switch (c) {
	case O_VRAM: return parse_size(arg, "--vram", &e->vram, &e->vram_zero);
	case O_HOST_CACHE: return parse_size(arg, "--host-cache", &e->host_cache, NULL);
	case O_PLE_CACHE:
		if (size_is_zero(arg))
			return bad("--ple-cache %s: must be above 0 (leave it out for the default)",
				   arg);
		return parse_size(arg, "--ple-cache", &e->ple_cache, NULL);
	case O_POLICY: e->policy = arg; return 0;
	case O_PREFETCH: e->prefetch = arg; return 0;
	case O_PIN_HOT: return tool_parse_u32("--pin-hot", arg, 0, 1u << 24, &e->pin_hot);
	case O_POOLS: e->layer_pools = true; return 0;
	case O_STATE_DIR:
		if (!*arg)
			return bad("--state-dir '%s': name a directory (or give --no-state)", arg);
		e->state_dir = arg;
		return 0;
	case O_NO_STATE: e->no_state = true; return 0;
	case O_THREADS: return tool_parse_threads("--threads", arg, &e->threads);
	case O_BACKEND:
		e->backend = arg;
		if (!*arg)
			return bad("--backend '': name one: auto, or one built in (%s)",
				   moe_backend_list());
		return 0;
	case O_KVTYPE:
		t = moe_type_from_name(arg);
		if (t != MOE_TYPE_F32 && t != MOE_TYPE_F16 && t != MOE_TYPE_Q8_0)
			return bad("--kv-type '%s': expected f32, f16 or q8_0", arg);
		e->kv_type = (uint32_t)t;
		return 0;
	case O_IO:
		if (!strcmp(arg, "auto"))
			e->io.backend = MOE_IO_AUTO;
		else if (!strcmp(arg, "uring"))
			e->io.backend = MOE_IO_URING;
		else if (!strcmp(arg, "pread"))
			e->io.backend = MOE_IO_PREAD;
		else
			return bad("--io '%s': expected auto, uring or pread", arg);
		return 0;
	case O_NODIRECT: e->io.direct = MOE_IO_DIRECT_OFF; return 0;
	case O_BATCH: return tool_parse_u32("--batch", arg, 0, 1u << 24, &e->n_batch);
	case O_GDS: return engine_parse_gds(arg, &e->gds) ? EXIT_USAGE : 0;
	default: return 1;
	}
}

int engine_opts_check(const struct engine_opts *e)
{
	if (e->no_state && e->state_dir)
		return bad("%s", "--state-dir and --no-state contradict each other");
	return 0;
}

void engine_opts_apply(struct engine_opts *e, struct moe_ctx_params *cp)
{
	/* The library reads a zero budget as "no limit": one byte asks for the smallest. */
	cp->vram_bytes = e->vram_zero ? 1 : e->vram;
	cp->host_cache_bytes = e->host_cache;
	cp->ple_cache_bytes = e->ple_cache;
	cp->n_threads = e->threads;
	cp->n_batch = e->n_batch;
	cp->io = e->io;
	cp->backend = e->backend;
	cp->kv_type = e->kv_type;
	cp->policy = e->policy;
	cp->prefetch = e->prefetch;
	cp->pin_hot = e->pin_hot;
	cp->gds = e->gds;
	if (e->layer_pools)
		cp->flags |= MOE_CTX_LAYER_POOLS;
	if (e->state_dir)
		cp->state_dir = e->state_dir;
	else if (!e->no_state && moe_state_dir(e->state_buf, sizeof(e->state_buf)) == 0)
		/* without a state directory to be found, the run just does not remember */
		cp->state_dir = e->state_buf;
}
