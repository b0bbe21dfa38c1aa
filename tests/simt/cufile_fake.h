/* SPDX-License-Identifier: MIT */
/*
 * What the fake libcufile (tests/simt/libcufile_fake.c) tells the tests
 * that load it: simt_cufile_fake_stats, found with dlsym.
 */
#ifndef SIMT_CUFILE_FAKE_H
#define SIMT_CUFILE_FAKE_H

#include <stdint.h>

struct simt_cufile_stats {
	int driver_opens;        /* cuFileDriverOpen minus cuFileDriverClose */
	unsigned handles;        /* file handles registered now */
	unsigned bufs;           /* buffers registered now */
	uint64_t reads, read_bytes;   /* successful cuFileRead calls, their bytes */
};

#endif
