/* SPDX-License-Identifier: MIT */
/*
 * A progress bar for long operations (moectl pack, load --warm, bench,
 * plan --measure).  It is drawn on standard error, and only when standard
 * error is a terminal and the tool is not printing JSON: a pipe, a log file
 * or a script reading --json output never sees it.  Redrawn at most ten
 * times a second; the line is cleared when the operation ends, so what the
 * tool prints afterwards starts on a clean line.
 */
#ifndef MOE_TOOL_PROGRESS_H
#define MOE_TOOL_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

struct progress {
	const char *what;           /* "pack", "verify", ... */
	uint64_t total, done;       /* in bytes, or items with @bytes false */
	bool bytes;
	bool on;                    /* drawing (a terminal, not --json) */
	double t0, drawn_at;
};

/*
 * Start a bar for @total units of @what; @quiet (--json) keeps it off.
 * MOE_PROGRESS=0 in the environment turns bars off everywhere,
 * MOE_PROGRESS=1 draws them even when standard error is not a terminal.
 */
void progress_start(struct progress *p, const char *what, uint64_t total, bool bytes,
		    bool quiet);
/* @done units of the total are finished. */
void progress_update(struct progress *p, uint64_t done);
/* Clear the bar's line. */
void progress_end(struct progress *p);

#endif
