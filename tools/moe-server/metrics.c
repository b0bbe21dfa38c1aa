// SPDX-License-Identifier: MIT
/* /metrics: the server's counters and the engine's, in the Prometheus text format. */
#include <stdio.h>
#include <stdlib.h>

#include "server.h"


static void metric(FILE *f, const char *name, const char *type, const char *help, double v)
{
	fprintf(f, "# HELP moe_%s %s\n# TYPE moe_%s %s\nmoe_%s %.17g\n", name, help, name, type,
		name, v);
}

char *metrics_text(struct server *s)
{
	static const char *const codes[] = { "2xx", "400", "401", "404_405", "413", "503" };
	struct metrics m;
	uint32_t queued, running;
	char *p = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&p, &len);
	double up;

	if (!f)
		return NULL;
	pthread_mutex_lock(&s->lock);
	m = s->m;
	queued = s->queued;
	running = s->running;
	pthread_mutex_unlock(&s->lock);
	up = now_s() - m.started;
	fprintf(f, "# HELP moe_requests_total Requests answered, by status.\n"
		"# TYPE moe_requests_total counter\n");
	for (int i = 0; i < 6; i++)
		fprintf(f, "moe_requests_total{status=\"%s\"} %llu\n", codes[i],
			(unsigned long long)m.requests[i]);
	metric(f, "rejected_busy_total", "counter", "Requests refused with 503 for a full queue.",
	       (double)m.rejected_busy);
	metric(f, "cancelled_total", "counter", "Requests whose client went away before the end.",
	       (double)m.cancelled);
	metric(f, "queue_depth", "gauge", "Requests waiting for a sequence.", queued);
	metric(f, "sequences_running", "gauge", "Requests decoding or prefilling.", running);
	metric(f, "sequences_max", "gauge", "Sequences decoded together (--parallel).",
	       s->o.parallel);
	metric(f, "prompt_tokens_total", "counter", "Prompt tokens of admitted requests.",
	       (double)m.prompt_tokens);
	metric(f, "completion_tokens_total", "counter", "Tokens generated.",
	       (double)m.completion_tokens);
	metric(f, "tokens_per_second", "gauge", "Tokens generated per second since the start.",
	       up > 0 ? (double)m.completion_tokens / up : 0);
	metric(f, "batches_total", "counter", "Forward steps (one batch of all sequences each).",
	       (double)m.batches);
	metric(f, "batch_tokens_total", "counter", "Tokens evaluated in those steps.",
	       (double)m.batch_tokens);
	metric(f, "prefill_shared_batches_total", "counter", "Steps that evaluated the prompts "
	       "of several requests together.", (double)m.prefill_shared_batches);
	metric(f, "prefill_sequences_max", "gauge", "The most requests whose prompt tokens one "
	       "step evaluated.", m.prefill_seqs_max);
	metric(f, "decode_tokens_per_second", "gauge", "The engine's decode rate.",
	       m.ctx.decode_tps);
	metric(f, "prefill_tokens_per_second", "gauge", "The engine's prefill rate.",
	       m.ctx.prefill_tps);
	metric(f, "expert_hit_rate", "gauge", "Expert uses served from device memory.",
	       m.ctx.hit_rate);
	metric(f, "expert_hits_total", "counter", "Expert uses found in device memory.",
	       (double)m.ctx.expert_hits);
	metric(f, "expert_misses_total", "counter", "Expert uses that had to be fetched.",
	       (double)m.ctx.expert_misses);
	metric(f, "read_bytes_total", "counter", "Bytes read from the model file.",
	       (double)m.ctx.bytes_read);
	metric(f, "read_copied_bytes_total", "counter",
	       "Bytes read that were copied between host buffers (moe.ko without zero-copy).",
	       (double)m.ctx.bytes_copied);
	metric(f, "read_gigabytes_per_second", "gauge", "Read bandwidth while reads were in flight.",
	       m.ctx.read_gbps);
	metric(f, "prefetch_precision", "gauge", "Prefetched experts that a layer then used.",
	       m.ctx.prefetch_precision);
	metric(f, "vram_used_bytes", "gauge", "Device memory held.", (double)m.ctx.vram_used);
	if (fclose(f)) {
		free(p);
		return NULL;
	}
	return p;
}
