/* SPDX-License-Identifier: MIT */
/*
 * A small fork-join pool: moe_threadpool_run() cuts one function into one
 * slice per thread, each taken by whichever thread asks first (the caller
 * runs slice 0 and any a worker has not started), and returns when all have
 * finished.  The
 * forward pass calls it hundreds of times per token, so workers spin for a
 * short while before sleeping on a futex, and a run costs one atomic store
 * and, only when somebody sleeps, one wake syscall.
 */
#ifndef MOE_THREADPOOL_H
#define MOE_THREADPOOL_H

#include "moe/moe.h"

/* The declarations live in moe.h's (section: quant) block; they are public. */

#endif
