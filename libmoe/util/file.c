/* SPDX-License-Identifier: MIT */
/*
 * Opening the files libmoe reads and writes by name, without blocking on what
 * is not a file (a FIFO with no writer blocks open() for ever) and without
 * replacing what is not a file (a rename over /dev/null swaps a device node
 * for a regular file).  The rules for outputs are in moe.h (output files).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util.h"

const char *moe_file_kind(unsigned mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG: return "a regular file";
	case S_IFDIR: return "a directory";
	case S_IFCHR: return "a character device";
	case S_IFBLK: return "a block device";
	case S_IFIFO: return "a FIFO";
	case S_IFSOCK: return "a socket";
	case S_IFLNK: return "a symbolic link";
	default: return "not a file";
	}
}

static int clear_nonblock(int fd, const char *path)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
		return moe_err(errno, "%s: fcntl: %s", path, strerror(errno));
	return 0;
}

int moe_open_input(const char *path, int flags, const char *what)
{
	struct stat st;
	int fd, ret;

	/* O_NONBLOCK: a FIFO opens at once instead of waiting for a writer; it is refused below. */
	fd = open(path, flags | O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return moe_err(errno, "%s: cannot open: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0) {
		ret = moe_err(errno, "%s: stat: %s", path, strerror(errno));
		goto err;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		ret = moe_err(EINVAL, "%s is %s, not %s: give a regular file or a block device",
			      path, moe_file_kind(st.st_mode), what);
		goto err;
	}
	ret = clear_nonblock(fd, path);
	if (ret)
		goto err;
	return fd;
err:
	close(fd);
	return ret;
}

struct moe_outfile {
	char *path;             /* what the caller named, for messages */
	char *target;           /* the file written: @path, or what its symlink points to */
	char *tmp;              /* the temporary file renamed over @target; NULL: written through */
	uint64_t written;
	int fd;
	int err;
};

/*
 * The file a symlink at @path leads to, one link at a time so that a link to
 * a file not yet there names the file to create (realpath would fail).
 */
static int resolve_link(const char *path, char **target)
{
	char *cur = strdup(path), *next, link[PATH_MAX];

	for (int hops = 0; cur && hops < 40; hops++) {
		const char *slash;
		struct stat st;
		ssize_t n;

		if (lstat(cur, &st) < 0 || !S_ISLNK(st.st_mode)) {
			*target = cur;
			return 0;
		}
		n = readlink(cur, link, sizeof(link) - 1);
		if (n < 0) {
			int e = errno;

			free(cur);
			return moe_err(e, "%s: cannot read the symbolic link: %s", path,
				       strerror(e));
		}
		link[n] = 0;
		slash = strrchr(cur, '/');
		if (link[0] == '/' || !slash)
			next = strdup(link);
		else if (asprintf(&next, "%.*s/%s", (int)(slash - cur), cur, link) < 0)
			next = NULL;
		free(cur);
		cur = next;
	}
	if (!cur)
		return moe_err(ENOMEM, "%s: out of memory", path);
	free(cur);
	return moe_err(ELOOP, "%s: too many levels of symbolic links", path);
}

/* Character devices and FIFOs that a reader holds are written through, like cp does. */
static int open_through(struct moe_outfile *o, const struct stat *st)
{
	struct stat now;
	int ret;

	o->fd = open(o->target, O_WRONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (o->fd < 0 && errno == ENXIO && S_ISFIFO(st->st_mode))
		return moe_err(ENXIO, "%s is a FIFO that no process is reading: start the reader "
			       "first (writing to it would block)", o->path);
	if (o->fd < 0)
		return moe_err(errno, "%s: cannot open for writing: %s", o->path, strerror(errno));
	if (fstat(o->fd, &now) < 0)
		return moe_err(errno, "%s: stat: %s", o->path, strerror(errno));
	if ((now.st_mode & S_IFMT) != (st->st_mode & S_IFMT))
		return moe_err(EAGAIN, "%s changed from %s to %s while it was opened", o->path,
			       moe_file_kind(st->st_mode), moe_file_kind(now.st_mode));
	ret = clear_nonblock(o->fd, o->path);
	return ret;
}

static int open_temp(struct moe_outfile *o, const struct stat *old)
{
	static unsigned seq;

	if (asprintf(&o->tmp, "%s.tmp.%d.%u", o->target, (int)getpid(),
		     __atomic_fetch_add(&seq, 1, __ATOMIC_RELAXED)) < 0) {
		o->tmp = NULL;
		return moe_err(ENOMEM, "%s: out of memory", o->path);
	}
	o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
	if (o->fd < 0) {
		int e = errno;

		free(o->tmp);
		o->tmp = NULL;
		if (strcmp(o->path, o->target))
			return moe_err(e, "%s (a link to %s): cannot create a file beside %s to "
				       "write into: %s", o->path, o->target, o->target,
				       strerror(e));
		return moe_err(e, "%s: cannot create a file beside it to write into: %s", o->path,
			       strerror(e));
	}
	/* The replacement keeps the permissions of the file it replaces. */
	if (old && fchmod(o->fd, old->st_mode & 0777) < 0)
		return moe_err(errno, "%s: chmod: %s", o->tmp, strerror(errno));
	return 0;
}

int moe_outfile_open(const char *path, struct moe_outfile **out)
{
	struct moe_outfile *o;
	struct stat st;
	int ret;

	if (!path || !out)
		return moe_err(EINVAL, "moe_outfile_open: NULL argument");
	*out = NULL;
	if (!*path)
		return moe_err(EINVAL, "an empty output path");
	o = calloc(1, sizeof(*o));
	if (!o)
		return moe_err(ENOMEM, "%s: out of memory", path);
	o->fd = -1;
	o->path = strdup(path);
	if (!o->path) {
		ret = moe_err(ENOMEM, "%s: out of memory", path);
		goto err;
	}
	if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
		ret = resolve_link(path, &o->target);
	else
		ret = (o->target = strdup(path)) ? 0 : moe_err(ENOMEM, "%s: out of memory", path);
	if (ret)
		goto err;
	if (stat(o->target, &st) < 0) {
		if (errno != ENOENT) {
			ret = moe_err(errno, "%s: %s", path, strerror(errno));
			goto err;
		}
		ret = open_temp(o, NULL);
	} else if (S_ISREG(st.st_mode)) {
		ret = open_temp(o, &st);
	} else if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)) {
		ret = open_through(o, &st);
	} else {
		ret = moe_err(S_ISDIR(st.st_mode) ? EISDIR : EEXIST,
			      "%s is %s: refusing to replace it; name a regular file", path,
			      moe_file_kind(st.st_mode));
	}
	if (ret)
		goto err;
	*out = o;
	return 0;
err:
	moe_outfile_close(o, false);
	return ret;
}

int moe_outfile_fd(const struct moe_outfile *o)
{
	return o ? o->fd : -EINVAL;
}

const char *moe_outfile_path(const struct moe_outfile *o)
{
	return o ? o->path : NULL;
}

int moe_outfile_write(struct moe_outfile *o, const void *buf, size_t len)
{
	const char *p = buf;

	if (!o)
		return moe_err(EINVAL, "moe_outfile_write: NULL file");
	while (!o->err && len) {
		ssize_t n = write(o->fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;

			o->err = moe_err(e, "%s: write failed after %llu bytes: %s", o->path,
					 (unsigned long long)o->written,
					 n < 0 ? strerror(e) : "no progress");
			break;
		}
		p += n;
		len -= (size_t)n;
		o->written += (uint64_t)n;
	}
	return o->err;
}

int moe_outfile_close(struct moe_outfile *o, bool commit)
{
	int ret;

	if (!o)
		return 0;
	ret = o->err;
	if (o->fd >= 0 && close(o->fd) && !ret && commit)
		ret = moe_err(errno, "%s: close failed: %s", o->path, strerror(errno));
	if (o->tmp) {
		if (commit && !ret && rename(o->tmp, o->target))
			ret = moe_err(errno, "%s: cannot rename the finished file into place: %s",
				      o->path, strerror(errno));
		if (!commit || ret)
			unlink(o->tmp);
	}
	free(o->tmp);
	free(o->target);
	free(o->path);
	free(o);
	return ret;
}
