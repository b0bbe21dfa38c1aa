/* SPDX-License-Identifier: MIT */
/*
 * moectl pack IN OUT [--align N]: rewrite a GGUF file so that every tensor
 * (and so every expert extent of a routed tensor whose experts are a whole
 * number of pages) starts at a multiple of N: 4096 for O_DIRECT reads, 65536
 * for 64 KiB GPU pages.  Every metadata entry is copied byte for byte, in
 * order, except general.alignment, which is set to N (added at the end when
 * the file had none); tensor infos keep their order, data are copied with
 * copy_file_range where the kernel can, and the result is read back and
 * compared with IN before it takes OUT's name.
 *
 * OUT appears complete or not at all: the new file is written unnamed
 * (O_TMPFILE) in OUT's directory and linked in at the end, so even SIGKILL
 * leaves nothing; where the filesystem has no O_TMPFILE a named temporary
 * file is used and SIGINT, SIGTERM and SIGHUP remove it.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "gguf.h"
#include "moe/moe.h"
#include "moectl.h"
#include "progress.h"
#include "util/util.h"

#define PACK_DEFAULT_ALIGN 4096u
#define PACK_MIN_ALIGN 32u
#define PACK_MAX_ALIGN (1u << 30)
/* copy_file_range and the read-back compare work in pieces of this size */
#define CHUNK_BYTES (8u << 20)

static const char ALIGN_KEY[] = "general.alignment";

struct pack {
	const char *in, *out;
	uint32_t align;
	int in_fd, out_fd;
	struct stat in_st;
	struct gguf_file *g;
	char *target;           /* the path OUT's data end up at (a symlink's target) */
	char *dir;              /* its directory */
	uint8_t *hdr;           /* the new header, padded to the alignment */
	size_t hdr_len;
	uint64_t *rel;          /* per tensor: its offset in the new data section */
	uint64_t out_bytes;
	bool added_key;         /* general.alignment was absent and is appended */
	bool named_tmp;         /* a named temporary file (no O_TMPFILE) */
	struct progress bar;
	uint64_t moved;         /* bytes copied or compared so far, for the bar */
	uint64_t work;
};

/* The named temporary file, for the signal handler (only async-signal-safe use). */
static char tmp_path[PATH_MAX];
static volatile sig_atomic_t tmp_armed;

static void on_signal(int sig)
{
	if (tmp_armed)
		unlink(tmp_path);
	signal(sig, SIG_DFL);
	raise(sig);
}

static void pack_usage(FILE *f)
{
	fprintf(f,
		"usage: moectl pack IN OUT [--align 4096|65536]\n"
		"Rewrite the GGUF file IN as OUT with every tensor's data at a multiple of the\n"
		"alignment (4096 by default: direct reads; 65536: 64 KiB GPU pages), keeping every\n"
		"metadata key (general.alignment becomes the new value).  OUT is read back and\n"
		"compared with IN before it is given its name; IN is never written.\n");
}

/* ------------------------------------------------------------- the header */

struct buf {
	uint8_t *p;
	size_t len, cap;
	bool oom;
};

static void put(struct buf *b, const void *src, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		uint8_t *p;

		while (cap < b->len + n)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	if (src)
		memcpy(b->p + b->len, src, n);
	else
		memset(b->p + b->len, 0, n);
	b->len += n;
}

static void put_u32(struct buf *b, uint32_t v)
{
	put(b, &v, 4);
}

static void put_u64(struct buf *b, uint64_t v)
{
	put(b, &v, 8);
}

static void put_str(struct buf *b, const char *s)
{
	put_u64(b, strlen(s));
	put(b, s, strlen(s));
}

static int pread_all(int fd, void *dst, size_t n, uint64_t off, const char *name)
{
	uint8_t *p = dst;

	while (n) {
		ssize_t r = pread(fd, p, n, (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return fail("%s: read failed at offset %" PRIu64 ": %s", name, off,
				    r < 0 ? strerror(errno) : "the file is shorter than its header "
				    "says (truncated while packing?)");
		p += r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

static int pwrite_all(int fd, const void *src, size_t n, uint64_t off, const char *name)
{
	const uint8_t *p = src;

	while (n) {
		ssize_t r = pwrite(fd, p, n, (off_t)off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return fail("%s: write failed at offset %" PRIu64 ": %s%s", name, off,
				    r < 0 ? strerror(errno) : "no progress",
				    r < 0 && (errno == ENOSPC || errno == EDQUOT) ?
				    " (free some space or write OUT elsewhere)" : "");
		p += r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

/* Where metadata entry @i of IN ends: the next entry, or the first tensor info. */
static uint64_t kv_end(const struct gguf_file *g, uint64_t i)
{
	return i + 1 < g->n_kv ? g->kv[i + 1].file_off : g->tensors[0].info_off;
}

/*
 * The new header: IN's entries copied as they are but general.alignment,
 * the tensor infos with their new offsets, zero padding to the alignment.
 */
static int build_header(struct pack *p)
{
	const struct gguf_file *g = p->g;
	uint64_t kv_start = g->n_kv ? g->kv[0].file_off : g->tensors[0].info_off;
	uint64_t kv_len = g->tensors[0].info_off - kv_start, pos = 0;
	uint8_t *raw = malloc(kv_len ? kv_len : 1);
	struct buf b = { 0 };
	int ret;

	if (!raw)
		return fail("out of memory for %s's metadata (%" PRIu64 " bytes)", p->in, kv_len);
	ret = pread_all(p->in_fd, raw, kv_len, kv_start, p->in);
	if (ret) {
		free(raw);
		return ret;
	}
	p->added_key = !gguf_find_kv(g, ALIGN_KEY);
	put_u32(&b, GGUF_MAGIC);
	put_u32(&b, g->version);
	put_u64(&b, g->n_tensors);
	put_u64(&b, g->n_kv + p->added_key);
	for (uint64_t i = 0; i < g->n_kv; i++) {
		if (!strcmp(g->kv[i].key, ALIGN_KEY)) {
			put_str(&b, ALIGN_KEY);
			put_u32(&b, MOE_META_U32);
			put_u32(&b, p->align);
		} else {
			put(&b, raw + (g->kv[i].file_off - kv_start), kv_end(g, i) - g->kv[i].file_off);
		}
	}
	free(raw);
	if (p->added_key) {
		put_str(&b, ALIGN_KEY);
		put_u32(&b, MOE_META_U32);
		put_u32(&b, p->align);
	}
	p->rel = calloc(g->n_tensors, sizeof(*p->rel));
	if (!p->rel) {
		free(b.p);
		return fail("out of memory for %" PRIu64 " tensors", g->n_tensors);
	}
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct gguf_tensor *t = &g->tensors[i];

		put_str(&b, t->name);
		put_u32(&b, t->n_dims);
		for (uint32_t d = 0; d < t->n_dims; d++)
			put_u64(&b, t->ne[d]);
		put_u32(&b, t->type);
		put_u64(&b, pos);
		p->rel[i] = pos;
		pos = MOE_ALIGN_UP(pos + t->bytes, (uint64_t)p->align);
	}
	put(&b, NULL, MOE_ALIGN_UP(b.len, (size_t)p->align) - b.len);
	if (b.oom) {
		free(b.p);
		return fail("out of memory for the new header of %s", p->out);
	}
	p->hdr = b.p;
	p->hdr_len = b.len;
	p->out_bytes = b.len + pos;
	return 0;
}

/* ------------------------------------------------------- where OUT goes */

/* OUT must not be IN under another name: the same inode, by a hard or symbolic link. */
static int resolve_out(struct pack *p)
{
	struct stat st;
	char *slash;

	if (stat(p->out, &st) == 0) {
		if (st.st_dev == p->in_st.st_dev && st.st_ino == p->in_st.st_ino)
			return usage_error("pack: %s is %s itself (the same file, inode %llu): pack "
					   "never overwrites its input; name a new OUT",
					   p->out, p->in, (unsigned long long)st.st_ino);
		if (!S_ISREG(st.st_mode))
			return usage_error("pack: %s is %s: OUT must be a regular file or a new name",
					   p->out, moe_file_kind(st.st_mode));
		/* a symlink's target is replaced, the link stays */
		p->target = realpath(p->out, NULL);
	} else if (errno == ENOENT) {
		p->target = strdup(p->out);
	} else {
		return fail("pack: %s: %s", p->out, strerror(errno));
	}
	if (!p->target)
		return fail("pack: %s: %s", p->out, strerror(errno ? errno : ENOMEM));
	slash = strrchr(p->target, '/');
	if (!slash)
		p->dir = strdup(".");
	else        /* "/x" lives in "/" */
		p->dir = strndup(p->target, slash == p->target ? 1 : (size_t)(slash - p->target));
	if (!p->dir)
		return fail("out of memory");
	return 0;
}

/*
 * The free space is checked before anything is written: a pack of hundreds
 * of GB that fails at the end wastes the time.  MOECTL_PACK_AVAIL=BYTES
 * stands in for the filesystem's answer (the tests' full disk).
 */
static int check_space(const struct pack *p)
{
	const char *fake = getenv("MOECTL_PACK_AVAIL");
	struct statvfs sv;
	uint64_t avail;

	if (fake)
		avail = strtoull(fake, NULL, 10);
	else if (statvfs(p->dir, &sv) == 0)
		avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	else
		return 0;
	if (p->out_bytes <= avail)
		return 0;
	return fail("pack: %s needs %" PRIu64 " bytes and %s has %" PRIu64 " free: free some "
		    "space or give an OUT on another filesystem", p->out, p->out_bytes, p->dir,
		    avail);
}

static int open_out(struct pack *p)
{
	static unsigned seq;
	struct stat st;

	if (!getenv("MOECTL_PACK_NO_TMPFILE")) {
		p->out_fd = open(p->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0666);
		if (p->out_fd >= 0)
			goto opened;
		if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL && errno != ENOENT)
			return fail("pack: cannot create a file in %s for %s: %s", p->dir, p->out,
				    strerror(errno));
	}
	snprintf(tmp_path, sizeof(tmp_path), "%s.pack-tmp.%d.%u", p->target, (int)getpid(),
		 seq++);
	p->named_tmp = true;
	tmp_armed = 1;
	p->out_fd = open(tmp_path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
	if (p->out_fd < 0) {
		tmp_armed = 0;
		return fail("pack: cannot create %s to write into: %s", tmp_path, strerror(errno));
	}
opened:
	/* a replaced OUT keeps its permission bits */
	if (stat(p->target, &st) == 0)
		fchmod(p->out_fd, st.st_mode & 0777);
	return 0;
}

/* Give the finished file OUT's name. */
static int commit_out(struct pack *p)
{
	char proc[64], link[PATH_MAX];

	if (fsync(p->out_fd) < 0)
		return fail("pack: %s: fsync failed: %s", p->out, strerror(errno));
	if (p->named_tmp) {
		if (rename(tmp_path, p->target) < 0)
			return fail("pack: cannot rename %s to %s: %s", tmp_path, p->target,
				    strerror(errno));
		tmp_armed = 0;
		return 0;
	}
	/* linkat cannot replace a name, so link beside OUT and rename over it */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", p->out_fd);
	snprintf(link, sizeof(link), "%s.pack-tmp.%d", p->target, (int)getpid());
	snprintf(tmp_path, sizeof(tmp_path), "%s", link);
	tmp_armed = 1;
	if (linkat(AT_FDCWD, proc, AT_FDCWD, link, AT_SYMLINK_FOLLOW) < 0) {
		tmp_armed = 0;
		return fail("pack: cannot give the packed file a name in %s: %s", p->dir,
			    strerror(errno));
	}
	if (rename(link, p->target) < 0) {
		int e = errno;

		unlink(link);
		tmp_armed = 0;
		return fail("pack: cannot rename the packed file to %s: %s", p->target,
			    strerror(e));
	}
	tmp_armed = 0;
	return 0;
}

/* ---------------------------------------------------------- the data */

static int copy_range(struct pack *p, uint64_t in_off, uint64_t out_off, uint64_t n,
		      uint8_t *buf, bool *use_cfr)
{
	while (n) {
		size_t k = n < CHUNK_BYTES ? (size_t)n : CHUNK_BYTES;
		int ret;

		if (*use_cfr) {
			loff_t i = (loff_t)in_off, o = (loff_t)out_off;
			ssize_t r = copy_file_range(p->in_fd, &i, p->out_fd, &o, k, 0);

			if (r > 0) {
				in_off += (uint64_t)r;
				out_off += (uint64_t)r;
				n -= (uint64_t)r;
				p->moved += (uint64_t)r;
				progress_update(&p->bar, p->moved);
				continue;
			}
			if (r == 0)
				return fail("pack: %s ended at offset %" PRIu64 ", before the data "
					    "its header describes (truncated while packing?)",
					    p->in, in_off);
			if (errno == EINTR)
				continue;
			if (errno != EXDEV && errno != EINVAL && errno != ENOSYS &&
			    errno != EOPNOTSUPP && errno != EBADF && errno != EPERM)
				return fail("pack: copying %s to %s failed at offset %" PRIu64 ": %s%s",
					    p->in, p->out, in_off, strerror(errno),
					    errno == ENOSPC || errno == EDQUOT || errno == EFBIG ?
					    " (free some space or write OUT elsewhere)" : "");
			/* not between these two files: read and write instead */
			*use_cfr = false;
		}
		ret = pread_all(p->in_fd, buf, k, in_off, p->in);
		ret = ret ?: pwrite_all(p->out_fd, buf, k, out_off, p->out);
		if (ret)
			return ret;
		in_off += k;
		out_off += k;
		n -= k;
		p->moved += k;
		progress_update(&p->bar, p->moved);
	}
	return 0;
}

static int copy_data(struct pack *p)
{
	uint8_t *buf = malloc(CHUNK_BYTES);
	bool use_cfr = true;
	int ret = 0;

	if (!buf)
		return fail("out of memory");
	ret = pwrite_all(p->out_fd, p->hdr, p->hdr_len, 0, p->out);
	if (!ret && getenv("MOECTL_PACK_PAUSE")) {
		/* the tests' interrupted pack: stopped here until a signal ends it */
		fprintf(stderr, "moectl: pack: paused (MOECTL_PACK_PAUSE)\n");
		for (int i = 0; i < 300; i++)
			usleep(100000);
	}
	for (uint64_t i = 0; !ret && i < p->g->n_tensors; i++) {
		const struct gguf_tensor *t = &p->g->tensors[i];

		ret = copy_range(p, t->offset, p->hdr_len + p->rel[i], t->bytes, buf, &use_cfr);
	}
	free(buf);
	/* the padding after the last tensor is a hole; the length comes from here */
	if (!ret && ftruncate(p->out_fd, (off_t)p->out_bytes) < 0)
		ret = fail("pack: %s: cannot set the length to %" PRIu64 ": %s", p->out,
			   p->out_bytes, strerror(errno));
	return ret;
}

/* ------------------------------------------------------- reading back */

static int verify(struct pack *p)
{
	const struct gguf_file *g = p->g;
	struct gguf_file *h = NULL;
	uint8_t *a = malloc(CHUNK_BYTES), *b = malloc(CHUNK_BYTES);
	int ret;

	if (!a || !b) {
		free(a);
		free(b);
		return fail("out of memory");
	}
	ret = gguf_parse_fd(p->out_fd, p->out, &h);
	if (ret) {
		ret = fail("pack: the packed file does not read back: %s", moe_errmsg());
		goto out;
	}
	if (h->n_tensors != g->n_tensors || h->n_kv != g->n_kv + p->added_key ||
	    h->alignment != p->align || h->version != g->version) {
		ret = fail("pack: the packed file reads back with %" PRIu64 " tensors, %" PRIu64
			   " keys, alignment %u (expected %" PRIu64 ", %" PRIu64 ", %u)",
			   h->n_tensors, h->n_kv, h->alignment, g->n_tensors,
			   g->n_kv + p->added_key, p->align);
		goto out;
	}
	/* every entry but the alignment: the same bytes */
	for (uint64_t i = 0; i < g->n_kv; i++) {
		uint64_t la = kv_end(g, i) - g->kv[i].file_off, lb = kv_end(h, i) - h->kv[i].file_off;
		bool al = !strcmp(g->kv[i].key, ALIGN_KEY);

		if (strcmp(g->kv[i].key, h->kv[i].key) || (!al && la != lb)) {
			ret = fail("pack: key %" PRIu64 " reads back as '%s' (%" PRIu64 " bytes), "
				   "not '%s' (%" PRIu64 " bytes)", i, h->kv[i].key, lb,
				   g->kv[i].key, la);
			goto out;
		}
		if (al)
			continue;
		for (uint64_t off = 0; off < la; off += CHUNK_BYTES) {
			size_t k = la - off < CHUNK_BYTES ? (size_t)(la - off) : CHUNK_BYTES;

			ret = pread_all(p->in_fd, a, k, g->kv[i].file_off + off, p->in);
			ret = ret ?: pread_all(p->out_fd, b, k, h->kv[i].file_off + off, p->out);
			if (ret)
				goto out;
			if (memcmp(a, b, k)) {
				ret = fail("pack: key '%s' differs when read back", g->kv[i].key);
				goto out;
			}
		}
	}
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		const struct gguf_tensor *s = &g->tensors[i], *d = &h->tensors[i];

		if (strcmp(s->name, d->name) || s->type != d->type || s->n_dims != d->n_dims ||
		    memcmp(s->ne, d->ne, sizeof(s->ne)) || d->offset % p->align) {
			ret = fail("pack: tensor %" PRIu64 " ('%s') reads back as '%s' at offset %"
				   PRIu64 " with another type or shape, or unaligned", i, s->name,
				   d->name, d->offset);
			goto out;
		}
		for (uint64_t off = 0; off < s->bytes; off += CHUNK_BYTES) {
			size_t k = s->bytes - off < CHUNK_BYTES ? (size_t)(s->bytes - off) :
				   CHUNK_BYTES;

			ret = pread_all(p->in_fd, a, k, s->offset + off, p->in);
			ret = ret ?: pread_all(p->out_fd, b, k, d->offset + off, p->out);
			if (ret)
				goto out;
			if (memcmp(a, b, k)) {
				ret = fail("pack: tensor '%s' differs at byte %" PRIu64 " when read "
					   "back (a failing drive or a file changed while packing)",
					   s->name, off);
				goto out;
			}
			p->moved += k;
			progress_update(&p->bar, p->moved);
		}
	}
out:
	gguf_free(h);
	free(a);
	free(b);
	return ret;
}

static int report(const struct pack *p)
{
	char b1[32], b2[32];

	if (json_output) {
		json_t *o = json_object();

		tj_set(o, "in", tj_str(p->in));
		tj_set(o, "out", tj_str(p->out));
		tj_set(o, "alignment_in", tj_u64(p->g->alignment));
		tj_set(o, "alignment", tj_u64(p->align));
		tj_set(o, "n_tensors", tj_u64(p->g->n_tensors));
		tj_set(o, "n_kv", tj_u64(p->g->n_kv + p->added_key));
		tj_set(o, "bytes_in", tj_u64((uint64_t)p->in_st.st_size));
		tj_set(o, "bytes", tj_u64(p->out_bytes));
		tj_set(o, "verified", tj_bool(true));
		return tj_print(o);
	}
	printf("packed %s -> %s: %" PRIu64 " tensors aligned to %u (was %u), %" PRIu64
	       " keys%s, %s (was %s), verified\n", p->in, p->out, p->g->n_tensors, p->align,
	       p->g->alignment, p->g->n_kv + p->added_key,
	       p->added_key ? " (general.alignment added)" : "",
	       human_bytes(p->out_bytes, b1, sizeof(b1)),
	       human_bytes((uint64_t)p->in_st.st_size, b2, sizeof(b2)));
	return 0;
}

int do_pack(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "align", required_argument, NULL, 'a' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct pack p = { .align = PACK_DEFAULT_ALIGN, .in_fd = -1, .out_fd = -1 };
	struct sigaction sa = { .sa_handler = on_signal };
	int c, ret;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'a':
			ret = tool_parse_u32("--align", optarg, PACK_MIN_ALIGN, PACK_MAX_ALIGN,
					     &p.align);
			if (ret)
				return ret;
			if (p.align & (p.align - 1))
				return usage_error("pack: --align %u is not a power of two (4096 for "
						   "direct reads, 65536 for 64 KiB GPU pages)", p.align);
			break;
		case 'h':
			pack_usage(stdout);
			return 0;
		default:
			pack_usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind + 2 != argc)
		return usage_error("pack: give IN and OUT; see `moectl pack --help`");
	p.in = argv[optind];
	p.out = argv[optind + 1];
	if (!*p.in || !*p.out)
		return usage_error("pack: an empty file name; give IN and OUT");
	/* O_NONBLOCK: a FIFO named as IN must be refused, not waited on */
	p.in_fd = open(p.in, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
	if (p.in_fd < 0)
		return fail("pack: %s: %s", p.in, strerror(errno));
	ret = fstat(p.in_fd, &p.in_st) < 0 ? fail("pack: %s: %s", p.in, strerror(errno)) : 0;
	if (!ret && !S_ISREG(p.in_st.st_mode))
		ret = usage_error("pack: %s is %s: IN must be a GGUF file", p.in,
				  moe_file_kind(p.in_st.st_mode));
	ret = ret ?: resolve_out(&p);
	if (!ret && gguf_parse_fd(p.in_fd, p.in, &p.g))
		ret = fail("pack: %s", moe_errmsg());
	if (!ret && !p.g->n_tensors)
		ret = fail("pack: %s has no tensors: there is nothing to align", p.in);
	ret = ret ?: build_header(&p);
	ret = ret ?: check_space(&p);
	if (ret)
		goto out;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	ret = open_out(&p);
	if (ret)
		goto out;
	for (uint64_t i = 0; i < p.g->n_tensors; i++)
		p.work += 2 * p.g->tensors[i].bytes;     /* copied, then compared */
	progress_start(&p.bar, "pack", p.work, true, json_output);
	ret = copy_data(&p);
	ret = ret ?: verify(&p);
	progress_end(&p.bar);
	ret = ret ?: commit_out(&p);
	ret = ret ?: report(&p);
out:
	if (p.out_fd >= 0)
		close(p.out_fd);
	if (tmp_armed) {
		unlink(tmp_path);
		tmp_armed = 0;
	}
	close(p.in_fd);
	gguf_free(p.g);
	free(p.hdr);
	free(p.rel);
	free(p.target);
	free(p.dir);
	return ret;
}
