/* SPDX-License-Identifier: MIT */
/*
 * Live counters of running engines, for `moectl status`.  Each context maps
 * a small file of the runtime directory and writes its counters there under
 * a sequence lock: the writer makes the sequence odd, stores the fields and
 * makes it even again, and a reader retries until it read the same even
 * value before and after the fields.  The writer is the evaluating thread,
 * at most every PUB_INTERVAL seconds; stores into the shared mapping cost no
 * system call.  Readers read with pread(), never through a mapping, so a
 * file truncated under them gives a short read, not SIGBUS.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/publish.h"
#include "util/util.h"

#define PUB_INTERVAL 0.1
#define PUB_TRIES 200

struct moe_pub {
	struct moe_pub_file *f;
	uint64_t seq;
	double last;                 /* moe_now() of the last write */
	uint64_t last_tokens;
	char path[PATH_MAX];
};

_Static_assert(sizeof(struct moe_engine_info) % 8 == 0, "copied in 64-bit words");
_Static_assert(sizeof(struct moe_pub_file) % 8 == 0, "copied in 64-bit words");

static uint32_t next_id;

static uint64_t realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * Field 22 of /proc/PID/stat, the process's start time in clock ticks since
 * boot: with the pid it names one process, even after the pid is reused.
 * 0 when it cannot be read.
 */
static uint64_t proc_start(int pid)
{
	char path[64], buf[1024], *p;
	unsigned long long v = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	/* the command name (field 2) may hold spaces and parentheses: skip to the last ')' */
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d "
			 "%*d %*d %*d %*d %llu", &v) != 1)
		return 0;
	return v;
}

/* Whether @pid is the process that wrote a file stamped @start (0: unknown, any). */
static bool proc_alive(int pid, uint64_t start)
{
	uint64_t now;

	if (pid <= 0)
		return false;
	if (kill(pid, 0) < 0 && errno == ESRCH)
		return false;
	now = proc_start(pid);
	return !start || !now || now == start;
}

static int put_dir(char *buf, size_t len, const char *fmt, const char *a, unsigned u)
{
	int n = snprintf(buf, len, fmt, a, u);

	if (n < 0 || (size_t)n >= len)
		return moe_err(ENAMETOOLONG, "the runtime directory's name is longer than %zu "
			       "bytes", len);
	return 0;
}

int moe_runtime_dir(char *buf, size_t len)
{
	const char *env = getenv("MOE_RUNTIME_DIR"), *xdg = getenv("XDG_RUNTIME_DIR");

	if (!buf || !len)
		return moe_err(EINVAL, "moe_runtime_dir: no buffer");
	if (env && *env)
		return put_dir(buf, len, "%s", env, 0);
	if (access("/run/moe", W_OK) == 0 ||
	    (access("/run/moe", F_OK) < 0 && access("/run", W_OK) == 0))
		return put_dir(buf, len, "%s", "/run/moe", 0);
	if (xdg && *xdg == '/')
		return put_dir(buf, len, "%s/moe", xdg, 0);
	return put_dir(buf, len, "%s/moe-%u", "/tmp", (unsigned)geteuid());
}

/*
 * Make @dir (and, for $MOE_RUNTIME_DIR, its parents).  /run/moe is readable
 * by everyone, so that any user's moectl sees root's engines; the per-user
 * ones are the user's alone, and one in /tmp must be a directory of ours,
 * not a link or someone else's.
 */
static int make_dir(const char *dir, bool parents)
{
	bool shared = !strcmp(dir, "/run/moe");
	struct stat st;

	if (mkdir(dir, shared ? 0755 : 0700) < 0 && errno != EEXIST) {
		char up[PATH_MAX], *slash;

		if (errno != ENOENT || !parents || strlen(dir) >= sizeof(up))
			return moe_err(errno, "cannot make the runtime directory %s: %s", dir,
				       strerror(errno));
		snprintf(up, sizeof(up), "%s", dir);
		slash = strrchr(up, '/');
		if (!slash || slash == up)
			return moe_err(ENOENT, "cannot make the runtime directory %s", dir);
		*slash = 0;
		if (make_dir(up, true) < 0)
			return -ENOENT;
		if (mkdir(dir, 0700) < 0 && errno != EEXIST)
			return moe_err(errno, "cannot make the runtime directory %s: %s", dir,
				       strerror(errno));
	}
	if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
		return moe_err(ENOTDIR, "the runtime directory %s is not a directory", dir);
	if (!strncmp(dir, "/tmp/", 5) && (st.st_uid != geteuid() || (st.st_mode & 022)))
		return moe_err(EPERM, "the runtime directory %s belongs to another user or "
			       "others may write it: remove it or set MOE_RUNTIME_DIR", dir);
	return 0;
}

static void pub_fill(const struct moe_ctx *ctx, struct moe_engine_info *in, double now)
{
	const struct moe_pub *pub = ctx->pub;
	struct moe_ctx_stats s;
	double dt = now - pub->last;

	moe_ctx_get_stats(ctx, &s);
	in->update_ns = realtime_ns();
	in->n_slots = s.n_slots;
	in->tokens = ctx->clock;
	in->tokens_per_s = dt > 0 && ctx->clock >= pub->last_tokens ?
			   (double)(ctx->clock - pub->last_tokens) / dt : 0;
	in->prefill_tokens = s.prefill_tokens;
	in->decode_tokens = s.decode_tokens;
	in->decode_tps = s.decode_tps;
	in->hit_rate = s.hit_rate;
	in->expert_hits = s.expert_hits;
	in->expert_misses = s.expert_misses;
	in->bytes_read = s.bytes_read;
	in->read_gbps = s.read_gbps;
	in->bytes_copied = s.bytes_copied;
	in->prefetches = s.prefetches;
	in->prefetch_precision = s.prefetch_precision;
	in->stall_s = s.stall_s;
	in->vram_budget = s.vram_budget;
	in->vram_used = s.vram_used;
	in->vram_peak = s.vram_peak;
	in->host_budget = ctx->par.host_cache_bytes;
	in->host_used = s.staging_bytes + s.host_bytes + s.host_cache_bytes;
	snprintf(in->backend, sizeof(in->backend), "%s", s.backend);
}

/* Copy @src over the mapped @dst under the sequence lock, word by word. */
static void pub_store(struct moe_pub *pub, const struct moe_engine_info *src)
{
	uint64_t *dst = (uint64_t *)&pub->f->info;
	const uint64_t *w = (const uint64_t *)src;

	__atomic_store_n(&pub->f->seq, ++pub->seq, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	for (size_t i = 0; i < sizeof(*src) / 8; i++)
		__atomic_store_n(&dst[i], w[i], __ATOMIC_RELAXED);
	__atomic_store_n(&pub->f->seq, ++pub->seq, __ATOMIC_RELEASE);
}

static bool publish_off(const struct moe_ctx *ctx)
{
	const char *env = getenv("MOE_NO_PUBLISH");

	return (ctx->par.flags & MOE_CTX_NO_PUBLISH) || (env && !strcmp(env, "1"));
}

void moe_pub_open(struct moe_ctx *ctx)
{
	char dir[PATH_MAX - 64], tmp[PATH_MAX], real[PATH_MAX];
	struct moe_engine_info in = { 0 };
	struct moe_pub *pub;
	void *map;
	int fd, ret;
	uint32_t id;

	if (publish_off(ctx))
		return;
	ret = moe_runtime_dir(dir, sizeof(dir));
	if (!ret)
		ret = make_dir(dir, getenv("MOE_RUNTIME_DIR") != NULL);
	pub = ret ? NULL : calloc(1, sizeof(*pub));
	if (!pub) {
		moe_log(MOE_LOG_DEBUG, "live counters not published: %s",
			ret ? moe_errmsg() : "out of memory");
		return;
	}
	id = __atomic_fetch_add(&next_id, 1, __ATOMIC_RELAXED);
	snprintf(pub->path, sizeof(pub->path), "%s/engine-%d-%u.stat", dir, (int)getpid(), id);
	/* made under a name readers skip, then renamed: never seen half made */
	snprintf(tmp, sizeof(tmp), "%s/.engine-%d-%u.tmp", dir, (int)getpid(), id);
	fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0) {
		moe_log(MOE_LOG_DEBUG, "live counters not published: %s: %s", tmp,
			strerror(errno));
		free(pub);
		return;
	}
	map = MAP_FAILED;
	if (ftruncate(fd, sizeof(struct moe_pub_file)) == 0)
		map = mmap(NULL, sizeof(struct moe_pub_file), PROT_READ | PROT_WRITE, MAP_SHARED,
			   fd, 0);
	if (map == MAP_FAILED) {
		moe_log(MOE_LOG_DEBUG, "live counters not published: %s: %s", tmp,
			strerror(errno));
		close(fd);
		unlink(tmp);
		free(pub);
		return;
	}
	close(fd);
	pub->f = map;
	pub->f->magic = MOE_PUB_MAGIC;
	pub->f->version = MOE_PUB_VERSION;
	pub->f->size = sizeof(struct moe_pub_file);
	pub->f->proc_start = proc_start((int)getpid());
	pub->last = moe_now();
	ctx->pub = pub;
	in.pid = (int32_t)getpid();
	in.id = id;
	in.start_ns = realtime_ns();
	/* absolute, so that a reader in another directory knows which file */
	if (!realpath(moe_model_path(ctx->model), real))
		snprintf(real, sizeof(real), "%s", moe_model_path(ctx->model));
	/* a longer path is cut: the field is for people reading a table */
	memcpy(in.model, real, MOE_MIN(strlen(real), sizeof(in.model) - 1));
	pub_fill(ctx, &in, pub->last);
	pub_store(pub, &in);
	if (rename(tmp, pub->path) < 0) {
		moe_log(MOE_LOG_DEBUG, "live counters not published: %s: %s", pub->path,
			strerror(errno));
		unlink(tmp);
		munmap(map, sizeof(struct moe_pub_file));
		free(pub);
		ctx->pub = NULL;
	}
}

void moe_pub_update(struct moe_ctx *ctx, bool force)
{
	struct moe_pub *pub = ctx->pub;
	struct moe_engine_info in;
	double now;

	if (!pub)
		return;
	now = moe_now();
	if (!force && now - pub->last < PUB_INTERVAL)
		return;
	/* the writer is the only one to change the fields: its own copy is current */
	in = pub->f->info;
	pub_fill(ctx, &in, now);
	pub_store(pub, &in);
	pub->last = now;
	pub->last_tokens = ctx->clock;
}

void moe_pub_busy(struct moe_ctx *ctx, bool busy)
{
	struct moe_pub *pub = ctx->pub;

	if (!pub)
		return;
	/* an eval after a pause starts a fresh interval, so tokens/s is of this work */
	if (busy)
		moe_pub_update(ctx, false);
	__atomic_store_n(&pub->f->seq, ++pub->seq, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	__atomic_store_n(&pub->f->info.busy, busy ? 1u : 0u, __ATOMIC_RELAXED);
	__atomic_store_n(&pub->f->seq, ++pub->seq, __ATOMIC_RELEASE);
}

void moe_pub_close(struct moe_ctx *ctx)
{
	struct moe_pub *pub = ctx->pub;

	if (!pub)
		return;
	unlink(pub->path);
	munmap(pub->f, sizeof(struct moe_pub_file));
	free(pub);
	ctx->pub = NULL;
}

/* ------------------------------------------------------------ readers */

static bool finite_in(double v, double lo, double hi)
{
	return isfinite(v) && v >= lo && v <= hi;
}

int moe_pub_parse(const void *buf, size_t len, struct moe_engine_info *out,
		  uint64_t *start)
{
	struct moe_pub_file f;
	struct moe_engine_info *in = &f.info;

	if (len < offsetof(struct moe_pub_file, info))
		return moe_err(EINVAL, "%zu bytes: too short for an engine's header", len);
	memcpy(&f, buf, MOE_MIN(len, sizeof(f)));
	if (f.magic != MOE_PUB_MAGIC)
		return moe_err(EINVAL, "not an engine's counters (bad magic)");
	if (f.version != MOE_PUB_VERSION)
		return moe_err(EINVAL, "counters of version %u, this library reads version %u "
			       "(an engine of another libmoe)", f.version, MOE_PUB_VERSION);
	if (f.size != sizeof(f) || len < sizeof(f))
		return moe_err(EINVAL, "counters of %u bytes in %zu, version %u has %zu",
			       f.size, len, MOE_PUB_VERSION, sizeof(f));
	if (f.seq & 1)
		return moe_err(EAGAIN, "the engine is writing its counters");
	if (in->pid <= 0)
		return moe_err(EINVAL, "counters of pid %d", in->pid);
	if (in->busy > 1)
		return moe_err(EINVAL, "busy flag %u is neither 0 nor 1", in->busy);
	if (!memchr(in->model, 0, sizeof(in->model)) || !memchr(in->backend, 0,
								 sizeof(in->backend)))
		return moe_err(EINVAL, "unterminated model or backend name");
	if (!finite_in(in->hit_rate, 0, 1) || !finite_in(in->prefetch_precision, 0, 1) ||
	    !finite_in(in->tokens_per_s, 0, 1e12) || !finite_in(in->decode_tps, 0, 1e12) ||
	    !finite_in(in->read_gbps, 0, 1e9) || !finite_in(in->stall_s, 0, 1e12))
		return moe_err(EINVAL, "a rate or share out of range");
	*out = *in;
	if (start)
		*start = f.proc_start;
	return 0;
}

static int pread_all(int fd, void *buf, size_t len, off_t off)
{
	ssize_t n = pread(fd, buf, len, off);

	return n < 0 ? -errno : (int)n;
}

int moe_engine_read(const char *path, struct moe_engine_info *out)
{
	struct moe_pub_file f;
	uint64_t s1, s2, start = 0;
	const off_t seq_off = offsetof(struct moe_pub_file, seq);
	int fd, n = 0, ret = -EAGAIN;

	if (!path || !out)
		return moe_err(EINVAL, "moe_engine_read: NULL argument");
	fd = moe_open_input(path, 0, "an engine's counters");
	if (fd < 0)
		return fd;
	for (int t = 0; t < PUB_TRIES && ret == -EAGAIN; t++) {
		if (t)
			nanosleep(&(struct timespec){ .tv_nsec = 500000 }, NULL);
		if (pread_all(fd, &s1, 8, seq_off) != 8) {
			ret = moe_err(EINVAL, "%s: too short for an engine's counters", path);
			break;
		}
		if (s1 & 1)
			continue;
		n = pread_all(fd, &f, sizeof(f), 0);
		if (n < 0) {
			ret = moe_err(-n, "%s: %s", path, strerror(-n));
			break;
		}
		if (pread_all(fd, &s2, 8, seq_off) != 8 || s2 != s1 || f.seq != s1)
			continue;
		ret = moe_pub_parse(&f, (size_t)n, out, &start);
		if (ret < 0 && ret != -EAGAIN)
			ret = moe_err_prefix(ret, "%s", path);
	}
	close(fd);
	if (ret == -EAGAIN)
		return moe_err(EAGAIN, "%s: the engine was writing through %d tries", path,
			       PUB_TRIES);
	if (ret < 0)
		return ret;
	if (!proc_alive(out->pid, start))
		return moe_err(ESRCH, "%s: left by process %d, which has ended", path, out->pid);
	return 0;
}

static int cmp_info(const void *a, const void *b)
{
	const struct moe_engine_info *x = a, *y = b;

	if (x->pid != y->pid)
		return x->pid < y->pid ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static void scan_dir(const char *dir, struct moe_engine_info *out, uint32_t max, int *n)
{
	struct dirent *e;
	DIR *d = opendir(dir);

	if (!d)
		return;
	while ((e = readdir(d))) {
		struct moe_engine_info in;
		char path[PATH_MAX], end[8];
		unsigned id;
		int pid, ret;
		bool tmp;

		if (sscanf(e->d_name, "engine-%d-%u.%7s", &pid, &id, end) == 3 &&
		    !strcmp(end, "stat"))
			tmp = false;
		else if (sscanf(e->d_name, ".engine-%d-%u.%7s", &pid, &id, end) == 3 &&
			 !strcmp(end, "tmp"))
			tmp = true;
		else
			continue;
		if (snprintf(path, sizeof(path), "%s/%s", dir, e->d_name) >= (int)sizeof(path))
			continue;
		if (tmp) {
			/* one being made, or left by a process that died making it */
			if (!proc_alive(pid, 0))
				unlink(path);
			continue;
		}
		ret = moe_engine_read(path, &in);
		if (ret == -ESRCH || (ret == -EINVAL && !proc_alive(pid, 0))) {
			moe_log(MOE_LOG_DEBUG, "removing %s: process %d has ended", path, pid);
			unlink(path);
			continue;
		}
		if (ret < 0) {
			moe_log(MOE_LOG_DEBUG, "skipping %s", moe_errmsg());
			continue;
		}
		if ((uint32_t)*n < max)
			out[*n] = in;
		(*n)++;
	}
	closedir(d);
}

int moe_engine_list(struct moe_engine_info *out, uint32_t max)
{
	char dirs[4][PATH_MAX], real[4][PATH_MAX];
	const char *env = getenv("MOE_RUNTIME_DIR"), *xdg = getenv("XDG_RUNTIME_DIR");
	int nd = 0, n = 0;

	if (!out && max)
		return moe_err(EINVAL, "moe_engine_list: NULL argument");
	if (env && *env) {
		snprintf(dirs[nd++], PATH_MAX, "%s", env);
	} else {
		snprintf(dirs[nd++], PATH_MAX, "/run/moe");
		if (xdg && *xdg == '/')
			snprintf(dirs[nd++], PATH_MAX, "%.4000s/moe", xdg);
		snprintf(dirs[nd++], PATH_MAX, "/tmp/moe-%u", (unsigned)geteuid());
	}
	for (int i = 0; i < nd; i++) {
		bool seen = false;

		if (!realpath(dirs[i], real[i])) {
			real[i][0] = 0;
			continue;
		}
		for (int j = 0; j < i; j++)
			seen |= !strcmp(real[i], real[j]);
		if (!seen)
			scan_dir(real[i], out, max, &n);
	}
	if (n && max)
		qsort(out, MOE_MIN((uint32_t)n, max), sizeof(*out), cmp_info);
	return n;
}
