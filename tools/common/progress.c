/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "progress.h"

#define BAR_WIDTH 30
#define REDRAW_S 0.1

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void progress_start(struct progress *p, const char *what, uint64_t total, bool bytes,
		    bool quiet)
{
	const char *env = getenv("MOE_PROGRESS");

	memset(p, 0, sizeof(*p));
	p->what = what;
	p->total = total;
	p->bytes = bytes;
	if (env && !strcmp(env, "0"))
		p->on = false;
	else if (env && !strcmp(env, "1"))
		p->on = !quiet;
	else
		p->on = !quiet && isatty(STDERR_FILENO);
	p->t0 = now_s();
	p->drawn_at = -1;
	progress_update(p, 0);
}

static void draw(const struct progress *p, double t)
{
	double frac = p->total ? (double)p->done / (double)p->total : 1;
	int fill = (int)(frac * BAR_WIDTH + 0.5);
	char bar[BAR_WIDTH + 1];

	if (frac > 1)
		frac = 1;
	if (fill > BAR_WIDTH)
		fill = BAR_WIDTH;
	memset(bar, '#', (size_t)fill);
	memset(bar + fill, '.', (size_t)(BAR_WIDTH - fill));
	bar[BAR_WIDTH] = 0;
	fprintf(stderr, "\r\033[K%s [%s] %3.0f%%", p->what, bar, frac * 100);
	if (p->bytes) {
		double el = t - p->t0;

		fprintf(stderr, "  %.2f / %.2f GiB", (double)p->done / (1 << 30),
			(double)p->total / (1 << 30));
		if (el > 0.2)
			fprintf(stderr, "  %.0f MB/s", (double)p->done / el / 1e6);
	} else {
		fprintf(stderr, "  %llu / %llu", (unsigned long long)p->done,
			(unsigned long long)p->total);
	}
	fflush(stderr);
}

void progress_update(struct progress *p, uint64_t done)
{
	double t;

	p->done = done;
	if (!p->on)
		return;
	t = now_s();
	if (p->drawn_at >= 0 && t - p->drawn_at < REDRAW_S && done < p->total)
		return;
	p->drawn_at = t;
	draw(p, t);
}

void progress_end(struct progress *p)
{
	if (p->on && p->drawn_at >= 0) {
		fprintf(stderr, "\r\033[K");
		fflush(stderr);
	}
	p->on = false;
}
