/* SPDX-License-Identifier: MIT */
/*
 * A stand-in for libcufile.so.0 (GPUDirect Storage), built by the Makefile
 * as $(BUILD)/tests/libcufile_fake.so; MOE_CUFILE_LIBRARY names it.  With the
 * fake CUDA driver a device address is a host address (tests/simt/
 * fake_cuda.cc), so a read here is a pread of the registered file straight
 * into it, as cuFile's compatibility mode does through its bounce buffers:
 * an O_DIRECT descriptor is read in aligned blocks into a bounce buffer.
 *
 * Stricter than the real library, so that the caller's bookkeeping shows:
 * reads need the driver open, a registered handle, and a target inside a
 * buffer registered with cuFileBufRegister (base and offset as given).
 *
 * Faults: SIMT_CUFILE_FAIL, read at each cuFileDriverOpen, is a list of
 * CALL:NTH[:WHAT] separated by commas: the NTH call (1: the first) of CALL
 * from that open on fails.  CALL is cuFileDriverOpen, cuFileHandleRegister,
 * cuFileBufRegister or cuFileRead.  WHAT is a status code (default
 * CU_FILE_INTERNAL_ERROR; cuFileRead returns it negated), or for cuFileRead
 * "short" (half the bytes), "eof" (0 bytes) or "errno" (-1, errno EIO).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/cufile_api.h"
#include "cufile_fake.h"

#define API __attribute__((visibility("default")))
#define MAX_BUFS 64
#define MAX_HANDLES 16
#define BLOCK 4096u

enum { F_OPEN, F_HANDLE, F_BUF, F_READ, F_COUNT };
static const char *const fail_names[F_COUNT] = {
	"cuFileDriverOpen", "cuFileHandleRegister", "cuFileBufRegister", "cuFileRead",
};
enum { W_STATUS, W_SHORT, W_EOF, W_ERRNO };

struct fail {
	unsigned nth;            /* 0: none */
	int what;
	int status;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct fail fails[F_COUNT];
static unsigned calls[F_COUNT];
static struct {
	const char *base;
	size_t len;
} bufs[MAX_BUFS];
static struct {
	int fd;
	int used;
} handles[MAX_HANDLES];
static struct simt_cufile_stats st;

static CUfileError_t status(int err)
{
	CUfileError_t s = { (CUfileOpError)err, CUDA_SUCCESS };

	return s;
}

static void parse_fails(void)
{
	const char *env = getenv("SIMT_CUFILE_FAIL");
	char buf[512], *save = NULL;

	memset(fails, 0, sizeof(fails));
	memset(calls, 0, sizeof(calls));
	if (!env || !*env)
		return;
	strncpy(buf, env, sizeof(buf) - 1);
	buf[sizeof(buf) - 1] = 0;
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *nth = strchr(tok, ':'), *what;
		int i;

		if (!nth)
			continue;
		*nth++ = 0;
		what = strchr(nth, ':');
		if (what)
			*what++ = 0;
		for (i = 0; i < F_COUNT && strcmp(tok, fail_names[i]); i++)
			;
		if (i == F_COUNT)
			continue;
		fails[i].nth = (unsigned)strtoul(nth, NULL, 10);
		fails[i].what = W_STATUS;
		fails[i].status = CU_FILE_INTERNAL_ERROR;
		if (what && !strcmp(what, "short"))
			fails[i].what = W_SHORT;
		else if (what && !strcmp(what, "eof"))
			fails[i].what = W_EOF;
		else if (what && !strcmp(what, "errno"))
			fails[i].what = W_ERRNO;
		else if (what && *what)
			fails[i].status = (int)strtol(what, NULL, 10);
	}
}

/* The injected fault of this call of @i, or NULL. */
static const struct fail *injected(int i)
{
	calls[i]++;
	return fails[i].nth && calls[i] == fails[i].nth ? &fails[i] : NULL;
}

API CUfileError_t cuFileDriverOpen(void)
{
	const struct fail *f;

	pthread_mutex_lock(&mu);
	if (st.driver_opens == 0)
		parse_fails();
	f = injected(F_OPEN);
	if (!f)
		st.driver_opens++;
	pthread_mutex_unlock(&mu);
	return status(f ? f->status : CU_FILE_SUCCESS);
}

API CUfileError_t cuFileDriverClose_v2(void)
{
	int err = CU_FILE_SUCCESS;

	pthread_mutex_lock(&mu);
	if (st.driver_opens > 0)
		st.driver_opens--;
	else
		err = CU_FILE_DRIVER_NOT_INITIALIZED;
	pthread_mutex_unlock(&mu);
	return status(err);
}

API CUfileError_t cuFileDriverClose(void)
{
	return cuFileDriverClose_v2();
}

API CUfileError_t cuFileHandleRegister(CUfileHandle_t *fh, CUfileDescr_t *d)
{
	const struct fail *f;
	int err = CU_FILE_SUCCESS;

	pthread_mutex_lock(&mu);
	f = injected(F_HANDLE);
	if (st.driver_opens <= 0) {
		err = CU_FILE_DRIVER_NOT_INITIALIZED;
	} else if (f) {
		err = f->status;
	} else if (!fh || !d || d->type != CU_FILE_HANDLE_TYPE_OPAQUE_FD ||
		   fcntl(d->handle.fd, F_GETFL) < 0) {
		err = CU_FILE_INVALID_VALUE;
	} else {
		int i;

		for (i = 0; i < MAX_HANDLES && handles[i].used; i++)
			;
		if (i == MAX_HANDLES) {
			err = CU_FILE_NOMEM_ERROR;
		} else {
			handles[i].used = 1;
			handles[i].fd = d->handle.fd;
			*fh = &handles[i];
			st.handles++;
		}
	}
	pthread_mutex_unlock(&mu);
	return status(err);
}

API void cuFileHandleDeregister(CUfileHandle_t fh)
{
	pthread_mutex_lock(&mu);
	for (int i = 0; i < MAX_HANDLES; i++)
		if (fh == &handles[i] && handles[i].used) {
			handles[i].used = 0;
			st.handles--;
		}
	pthread_mutex_unlock(&mu);
}

API CUfileError_t cuFileBufRegister(const void *base, size_t len, int flags)
{
	const struct fail *f;
	int err = CU_FILE_SUCCESS, i;

	(void)flags;
	pthread_mutex_lock(&mu);
	f = injected(F_BUF);
	if (st.driver_opens <= 0) {
		err = CU_FILE_DRIVER_NOT_INITIALIZED;
	} else if (f) {
		err = f->status;
	} else if (!base || !len) {
		err = CU_FILE_INVALID_VALUE;
	} else {
		for (i = 0; i < MAX_BUFS; i++)
			if (bufs[i].base == base)
				err = CU_FILE_MEMORY_ALREADY_REGISTERED;
		for (i = 0; !err && i < MAX_BUFS && bufs[i].base; i++)
			;
		if (!err && i == MAX_BUFS)
			err = CU_FILE_NOMEM_ERROR;
		if (!err) {
			bufs[i].base = base;
			bufs[i].len = len;
			st.bufs++;
		}
	}
	pthread_mutex_unlock(&mu);
	return status(err);
}

API CUfileError_t cuFileBufDeregister(const void *base)
{
	int err = CU_FILE_MEMORY_NOT_REGISTERED;

	pthread_mutex_lock(&mu);
	for (int i = 0; i < MAX_BUFS; i++)
		if (base && bufs[i].base == base) {
			bufs[i].base = NULL;
			st.bufs--;
			err = CU_FILE_SUCCESS;
		}
	pthread_mutex_unlock(&mu);
	return status(err);
}

/* pread of [off, off + n) into @dst; an O_DIRECT descriptor through an aligned bounce buffer. */
static ssize_t read_at(int fd, char *dst, size_t n, off_t off)
{
	size_t done = 0;

	if (!(fcntl(fd, F_GETFL) & O_DIRECT)) {
		while (done < n) {
			ssize_t r = pread(fd, dst + done, n - done, off + (off_t)done);

			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				return -1;
			if (r == 0)
				break;
			done += (size_t)r;
		}
		return (ssize_t)done;
	}
	{
		off_t a = off / BLOCK * BLOCK;
		size_t span = ((size_t)(off - a) + n + BLOCK - 1) / BLOCK * BLOCK, got = 0;
		char *bounce = NULL;

		if (posix_memalign((void **)&bounce, BLOCK, span))
			return -1;
		while (got < span) {
			ssize_t r = pread(fd, bounce + got, span - got, a + (off_t)got);

			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0) {
				free(bounce);
				return -1;
			}
			if (r == 0)
				break;
			got += (size_t)r;
		}
		done = got > (size_t)(off - a) ? got - (size_t)(off - a) : 0;
		if (done > n)
			done = n;
		memcpy(dst, bounce + (off - a), done);
		free(bounce);
		return (ssize_t)done;
	}
}

API ssize_t cuFileRead(CUfileHandle_t fh, void *base, size_t size, off_t file_offset,
		       off_t buf_offset)
{
	const struct fail *f;
	size_t len = 0;
	int fd = -1, i;
	ssize_t r;

	pthread_mutex_lock(&mu);
	f = injected(F_READ);
	if (st.driver_opens <= 0) {
		pthread_mutex_unlock(&mu);
		return -CU_FILE_DRIVER_NOT_INITIALIZED;
	}
	for (i = 0; i < MAX_HANDLES; i++)
		if (fh == &handles[i] && handles[i].used)
			fd = handles[i].fd;
	for (i = 0; i < MAX_BUFS; i++)
		if (base && bufs[i].base == base)
			len = bufs[i].len;
	pthread_mutex_unlock(&mu);
	if (fd < 0)
		return -CU_FILE_HANDLE_NOT_REGISTERED;
	if (!len)
		return -CU_FILE_MEMORY_NOT_REGISTERED;
	if (buf_offset < 0 || file_offset < 0 || (size_t)buf_offset > len ||
	    size > len - (size_t)buf_offset)
		return -CU_FILE_CUDA_POINTER_RANGE_ERROR;
	if (f && f->what == W_STATUS)
		return -f->status;
	if (f && f->what == W_EOF)
		return 0;
	if (f && f->what == W_ERRNO) {
		errno = EIO;
		return -1;
	}
	if (f && f->what == W_SHORT && size > 1)
		size /= 2;
	r = read_at(fd, (char *)base + buf_offset, size, file_offset);
	if (r > 0) {
		pthread_mutex_lock(&mu);
		st.reads++;
		st.read_bytes += (uint64_t)r;
		pthread_mutex_unlock(&mu);
	}
	return r;
}

API void simt_cufile_fake_stats(struct simt_cufile_stats *out)
{
	pthread_mutex_lock(&mu);
	*out = st;
	pthread_mutex_unlock(&mu);
}
