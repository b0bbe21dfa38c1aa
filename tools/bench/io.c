/* SPDX-License-Identifier: MIT */
/*
 * moe-bench io: expert-sized extents in random order, each method from a
 * cold cache: the engine (io_uring, O_DIRECT by default), buffered pread on
 * one thread, and mmap with one touch per page.  The extents come from the
 * GGUF's expert map, or are --size chunks of any file.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "moe/moe.h"

struct extent {
	uint64_t off, len;
};

struct run {
	const char *path;
	struct extent *ext;
	size_t n;
	uint64_t bytes, max_len;
	bool dropped_all;        /* /proc/sys/vm/drop_caches as well as fadvise */
	bool fadvise_only;       /* --no-drop-caches: leave other files' pages alone */
};

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Evict the file's pages so every method starts from the disk. */
static void cold_cache(struct run *r)
{
	int fd = open(r->path, O_RDONLY);
	FILE *f;

	if (fd >= 0) {
		fdatasync(fd);
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
	r->dropped_all = false;
	if (geteuid() == 0 && !r->fadvise_only) {
		sync();
		f = fopen("/proc/sys/vm/drop_caches", "w");
		if (f) {
			r->dropped_all = fputs("1\n", f) >= 0;
			r->dropped_all &= fclose(f) == 0;
		}
	}
}

static int add_extent(struct run *r, size_t *cap, uint64_t off, uint64_t len)
{
	if (r->n == *cap) {
		size_t nc = *cap ? *cap * 2 : 1024;
		struct extent *e = realloc(r->ext, nc * sizeof(*e));

		if (!e)
			return -ENOMEM;
		r->ext = e;
		*cap = nc;
	}
	r->ext[r->n++] = (struct extent){ off, len };
	r->bytes += len;
	r->max_len = len > r->max_len ? len : r->max_len;
	return 0;
}

/* Every matrix of every routed expert; 0 when the file is not a MoE GGUF. */
static int extents_from_model(struct run *r, uint64_t limit)
{
	struct moe_model *m;
	struct moe_hparams hp;
	size_t cap = 0;

	if (moe_model_open(r->path, &m) < 0)
		return 0;
	if (moe_model_hparams(m, &hp) < 0 || !hp.n_expert) {
		moe_model_destroy(m);
		return 0;
	}
	for (uint32_t l = 0; l < hp.n_layer && r->bytes < limit; l++) {
		for (uint32_t e = 0; e < hp.n_expert && r->bytes < limit; e++) {
			struct moe_expert ex;

			if (moe_model_expert(m, l, e, &ex) < 0)
				break;
			for (uint32_t k = 0; k < ex.n_mats; k++)
				if (add_extent(r, &cap, ex.mats[k].offset, ex.mats[k].bytes) < 0) {
					moe_model_destroy(m);
					return -ENOMEM;
				}
		}
	}
	moe_model_destroy(m);
	return r->n ? 1 : 0;
}

static int extents_by_size(struct run *r, uint64_t file_bytes, uint64_t size, uint64_t limit)
{
	size_t cap = 0;

	for (uint64_t off = 0; off + size <= file_bytes && r->bytes < limit; off += size)
		if (add_extent(r, &cap, off, size) < 0)
			return -ENOMEM;
	return 0;
}

static void shuffle(struct extent *e, size_t n, uint64_t seed)
{
	for (size_t i = n; i > 1; i--) {
		size_t j = rnd(&seed) % i;
		struct extent t = e[i - 1];

		e[i - 1] = e[j];
		e[j] = t;
	}
}

struct slot {
	void *buf;
	uint64_t cap;
	int64_t res;
	bool busy;
	int *failed;
};

static void slot_done(void *arg, int64_t res, void *interior)
{
	struct slot *s = arg;

	(void)interior;
	s->busy = false;
	s->res = res;
	if (res < 0 && !*s->failed) {
		*s->failed = 1;
		fprintf(stderr, "moe-bench io: %s\n", moe_errmsg());
	}
}

static double run_engine(struct run *r, struct moe_io_params *o, char *desc, size_t dlen)
{
	struct moe_io *io;
	struct slot *slots;
	/*
	 * Twice the queue depth in buffers: the engine refills the ring from its
	 * pending list on the completion thread, while callbacks wait their turn.
	 */
	uint32_t n_slots = 2 * (o->queue_depth ? o->queue_depth : 32);
	size_t next = 0, done = 0;
	int failed = 0;
	double t0, t;

	/* Room for every slot in the registered pool. */
	if (!o->staging_bytes)
		o->staging_bytes = n_slots * (r->max_len + (128u << 10));
	if (moe_io_open(r->path, o, &io) < 0) {
		fprintf(stderr, "moe-bench io: %s\n", moe_errmsg());
		return -1;
	}
	slots = calloc(n_slots, sizeof(*slots));
	for (uint32_t i = 0; slots && i < n_slots; i++) {
		slots[i].cap = moe_io_span(io, moe_io_block(io) - 1, r->max_len);
		slots[i].failed = &failed;
		if (moe_io_alloc(io, slots[i].cap, &slots[i].buf) < 0) {
			fprintf(stderr, "moe-bench io: %s\n", moe_errmsg());
			failed = 1;
			break;
		}
		/* Fault the destination in now: page faults are not what is measured. */
		memset(slots[i].buf, 0, slots[i].cap);
	}
	cold_cache(r);
	t0 = bench_now();
	while (!failed && done < r->n) {
		for (uint32_t i = 0; i < n_slots && next < r->n; i++) {
			if (slots[i].busy)
				continue;
			slots[i].busy = true;
			if (moe_io_read(io, r->ext[next].off, r->ext[next].len, slots[i].buf,
					slots[i].cap, slot_done, &slots[i]) < 0) {
				fprintf(stderr, "moe-bench io: %s\n", moe_errmsg());
				failed = 1;
				break;
			}
			next++;
		}
		moe_io_submit(io);
		done += (size_t)moe_io_wait(io, 1);
	}
	t = bench_now() - t0;
	snprintf(desc, dlen, "%s", moe_io_describe(io));
	for (uint32_t i = 0; slots && i < n_slots; i++)
		moe_io_free(io, slots[i].buf);
	moe_io_destroy(io);
	free(slots);
	return failed ? -1 : t;
}

static double run_pread(struct run *r)
{
	int fd = open(r->path, O_RDONLY);
	uint8_t *buf = malloc(r->max_len);
	double t0, t = -1;

	if (fd < 0 || !buf)
		goto out;
	memset(buf, 0, r->max_len);
	cold_cache(r);
	t0 = bench_now();
	for (size_t i = 0; i < r->n; i++) {
		uint64_t got = 0;

		while (got < r->ext[i].len) {
			ssize_t k = pread(fd, buf + got, r->ext[i].len - got,
					  (off_t)(r->ext[i].off + got));

			if (k <= 0) {
				fprintf(stderr, "moe-bench io: pread: %s\n",
					k < 0 ? strerror(errno) : "end of file");
				goto out;
			}
			got += (uint64_t)k;
		}
	}
	t = bench_now() - t0;
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return t;
}

/* Keeps the page touches from being optimized away. */
static volatile uint64_t touch_sink;

static double run_mmap(struct run *r, uint64_t file_bytes)
{
	int fd = open(r->path, O_RDONLY);
	const uint8_t *m;
	double t0, t;
	long page = sysconf(_SC_PAGESIZE);

	if (fd < 0)
		return -1;
	m = mmap(NULL, file_bytes, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return -1;
	cold_cache(r);
	t0 = bench_now();
	for (size_t i = 0; i < r->n; i++) {
		uint64_t s = 0;

		for (uint64_t o = r->ext[i].off; o < r->ext[i].off + r->ext[i].len;
		     o = (o / page + 1) * page)
			s += m[o];
		touch_sink += s;
	}
	t = bench_now() - t0;
	munmap((void *)m, file_bytes);
	return t;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: moe-bench io [--json] [--size BYTES] [--total BYTES] [--qd N]\n"
		"                    [--max-request BYTES] [--backend auto|uring|pread]\n"
		"                    [--direct auto|on|off] [--seed N] [--no-drop-caches] FILE\n"
		"Reads expert extents of a GGUF (or --size chunks of any file) in random order\n"
		"through the engine, buffered pread and mmap, each from a cold cache.\n");
}

int bench_io(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "size", required_argument, NULL, 's' },
		{ "total", required_argument, NULL, 't' },
		{ "qd", required_argument, NULL, 'q' },
		{ "max-request", required_argument, NULL, 'm' },
		{ "backend", required_argument, NULL, 'b' },
		{ "direct", required_argument, NULL, 'd' },
		{ "seed", required_argument, NULL, 'S' },
		{ "no-drop-caches", no_argument, NULL, 'N' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	uint64_t size = 0, total = 1ull << 30, seed = 1;
	struct moe_io_params o;
	struct run r = { 0 };
	struct moe_topo_device dev;
	struct stat st;
	bool json = false, from_model = false;
	char desc[400], where[128];
	double te, tp, tm, ge, gp, gm;
	int c, node;

	moe_io_params_init(&o);
	optind = 1;
	while ((c = getopt_long(argc, argv, "js:t:q:m:b:d:S:h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 's':
		case 't':
		case 'm':
			if (moe_parse_size(optarg, c == 's' ? &size : c == 't' ? &total :
					   &o.max_request) < 0) {
				fprintf(stderr, "moe-bench io: %s\n", moe_errmsg());
				return 2;
			}
			break;
		case 'q':
			if (tool_parse_u32("--qd", optarg, 1, 4096, &o.queue_depth))
				return EXIT_USAGE;
			break;
		case 'b':
			if (!strcmp(optarg, "auto"))
				o.backend = MOE_IO_AUTO;
			else if (!strcmp(optarg, "uring"))
				o.backend = MOE_IO_URING;
			else if (!strcmp(optarg, "pread"))
				o.backend = MOE_IO_PREAD;
			else {
				fprintf(stderr, "moe-bench io: backend is auto, uring or pread\n");
				return 2;
			}
			break;
		case 'd':
			if (!strcmp(optarg, "auto"))
				o.direct = MOE_IO_DIRECT_AUTO;
			else if (!strcmp(optarg, "on"))
				o.direct = MOE_IO_DIRECT_ON;
			else if (!strcmp(optarg, "off"))
				o.direct = MOE_IO_DIRECT_OFF;
			else {
				fprintf(stderr, "moe-bench io: direct is auto, on or off\n");
				return 2;
			}
			break;
		case 'S':
			if (tool_parse_u64("--seed", optarg, 0, UINT64_MAX, &seed))
				return EXIT_USAGE;
			break;
		case 'N':
			r.fadvise_only = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	r.path = argv[optind];
	if (stat(r.path, &st) < 0 || !S_ISREG(st.st_mode)) {
		fprintf(stderr, "moe-bench io: %s: not a readable regular file\n", r.path);
		return 1;
	}
	if (!size) {
		int ret = extents_from_model(&r, total);

		if (ret < 0) {
			fprintf(stderr, "moe-bench io: out of memory\n");
			return 1;
		}
		from_model = ret > 0;
		if (!from_model)
			size = 4ull << 20;
	}
	if (!from_model && extents_by_size(&r, (uint64_t)st.st_size, size, total) < 0) {
		fprintf(stderr, "moe-bench io: out of memory\n");
		return 1;
	}
	if (!r.n) {
		fprintf(stderr, "moe-bench io: %s: no extents (file of %lld bytes, size %llu); "
			"give a smaller --size\n", r.path, (long long)st.st_size,
			(unsigned long long)size);
		free(r.ext);
		return 1;
	}
	shuffle(r.ext, r.n, seed);

	te = run_engine(&r, &o, desc, sizeof(desc));
	tp = run_pread(&r);
	tm = run_mmap(&r, (uint64_t)st.st_size);
	if (te <= 0 || tp <= 0 || tm <= 0) {
		fprintf(stderr, "moe-bench io: a method failed (see above)\n");
		free(r.ext);
		return 1;
	}
	ge = r.bytes / te / 1e9;
	gp = r.bytes / tp / 1e9;
	gm = r.bytes / tm / 1e9;
	for (char *q = desc; *q; q++)
		if (*q == '"' || *q == '\\')
			*q = '\'';
	node = moe_topo_path_node(r.path);
	if (moe_topo_path(r.path, &dev) == 0)
		snprintf(where, sizeof(where), "%s (%s%s%s), node %s%d", dev.name, dev.kind,
			 dev.pci[0] ? ", " : "", dev.pci, node >= 0 ? "" : "?",
			 node >= 0 ? node : 0);
	else
		snprintf(where, sizeof(where), "no block device (tmpfs?)");

	if (json) {
		json_t *o = json_object();

		tj_set(o, "engine_gbps", tj_real(ge));
		tj_set(o, "pread_gbps", tj_real(gp));
		tj_set(o, "mmap_gbps", tj_real(gm));
		tj_set(o, "engine_vs_pread", tj_real(ge / gp));
		tj_set(o, "engine_vs_mmap", tj_real(ge / gm));
		tj_set(o, "bytes", tj_u64(r.bytes));
		tj_set(o, "extents", tj_u64(r.n));
		tj_set(o, "extent_bytes_max", tj_u64(r.max_len));
		tj_set(o, "from_model", tj_bool(from_model));
		tj_set(o, "drop_caches", tj_bool(r.dropped_all));
		tj_set(o, "engine", tj_str(desc));
		if (tj_print(o)) {
			free(r.ext);
			return 1;
		}
	} else {
		printf("moe-bench io: %s: %zu extents, %.1f MiB in all, largest %.2f MiB (%s), "
		       "random order\n", r.path, r.n, r.bytes / 1048576.0, r.max_len / 1048576.0,
		       from_model ? "experts from the GGUF" : "--size chunks");
		printf("cold cache: posix_fadvise DONTNEED%s\n",
		       r.dropped_all ? " + /proc/sys/vm/drop_caches" :
		       r.fadvise_only ? " only (--no-drop-caches)" : " only (not root)");
		printf("topology: file on %s\n", where);
		printf("engine: %s\n", desc);
		printf("  engine  %8.3f GB/s  %7.3f s\n", ge, te);
		printf("  pread   %8.3f GB/s  %7.3f s  (buffered, one thread)\n", gp, tp);
		printf("  mmap    %8.3f GB/s  %7.3f s  (one touch per page)\n", gm, tm);
		printf("  engine/pread %.2fx, engine/mmap %.2fx\n", ge / gp, ge / gm);
	}
	free(r.ext);
	return 0;
}

double bench_engine_gbps(const char *path, uint64_t limit, char *desc, size_t dlen)
{
	struct moe_io_params o;
	struct run r = { .path = path, .fadvise_only = true };
	double t;
	int ret;

	moe_io_params_init(&o);
	ret = extents_from_model(&r, limit);
	if (ret <= 0) {
		free(r.ext);
		snprintf(desc, dlen, "%s: %s", path, ret < 0 ? "out of memory" :
			 "no routed experts to read");
		return -1;
	}
	shuffle(r.ext, r.n, 1);
	t = run_engine(&r, &o, desc, dlen);
	free(r.ext);
	if (t <= 0) {
		snprintf(desc, dlen, "%s: the I/O engine's reads failed (see above)", path);
		return -1;
	}
	return (double)r.bytes / t / 1e9;
}
