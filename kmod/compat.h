/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel APIs moe.ko uses that moved between Debian's 6.1 and 6.12
 * (bookworm-backports), both built and tested by make vm-check.  Versions in
 * between are untested; the boundaries are the releases that made the
 * change upstream.
 */
#ifndef MOE_COMPAT_H
#define MOE_COMPAT_H

#include <linux/version.h>

/* 6.6: the command API left linux/io_uring.h, and ->cmd gave way to ->sqe. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
#include <linux/io_uring/cmd.h>
#define MOE_URING_CMD_BYTES(ucmd)	io_uring_sqe_cmd((ucmd)->sqe)
#else
#include <linux/io_uring.h>
#define MOE_URING_CMD_BYTES(ucmd)	((ucmd)->cmd)
#endif

/*
 * Completion with the issue flags: 6.1's stable branch and 6.12 both take
 * (cmd, ret, res2, issue_flags); the task-work callback is
 * void (*)(struct io_uring_cmd *, unsigned int) on both.
 */
#define moe_uring_cmd_done(ucmd, ret, issue_flags)	\
	io_uring_cmd_done(ucmd, ret, 0, issue_flags)

/*
 * 6.6: the core does PRIME fd<->handle and mmap of dma-bufs itself; the
 * drm_driver hooks are gone.
 */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 6, 0)
#define MOE_DRIVER_PRIME_HOOKS					\
	.prime_handle_to_fd = drm_gem_prime_handle_to_fd,	\
	.prime_fd_to_handle = drm_gem_prime_fd_to_handle,	\
	.gem_prime_mmap = drm_gem_prime_mmap,
#else
#define MOE_DRIVER_PRIME_HOOKS
#endif

/*
 * 6.3: debugfs files hang off the device (drm_debugfs_add_files), which
 * also puts them where an accel device's directory is; the per-minor
 * debugfs_init hook stays for 6.1.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
#define MOE_HAVE_DEBUGFS_ADD_FILES	1
#endif

/*
 * 6.7: a command marked IORING_URING_CMD_CANCELABLE gets ->uring_cmd again
 * with IO_URING_F_CANCEL when its ring goes away, so a queued one can end.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 7, 0)
#define MOE_HAVE_URING_CANCELABLE	1
#endif

/* 6.14 dropped drm_driver.date. */
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 14, 0)
#define MOE_DRIVER_DATE(d)	.date = (d),
#else
#define MOE_DRIVER_DATE(d)
#endif

/*
 * call_read_iter() went away in 6.10; calling ->read_iter directly is what
 * it did on every version.
 */
static inline ssize_t moe_read_iter(struct file *file, struct kiocb *kiocb, struct iov_iter *iter)
{
	return file->f_op->read_iter(kiocb, iter);
}

/* FMODE_CAN_ODIRECT (6.0+) says the file takes IOCB_DIRECT; before, a_ops->direct_IO did. */
#ifdef FMODE_CAN_ODIRECT
#define MOE_FILE_CAN_ODIRECT(f)	((f)->f_mode & FMODE_CAN_ODIRECT)
#else
#define MOE_FILE_CAN_ODIRECT(f)	((f)->f_mapping->a_ops->direct_IO != NULL)
#endif

#endif
