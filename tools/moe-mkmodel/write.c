/* SPDX-License-Identifier: MIT */
/*
 * Writing the model: the defaults and presets the options start from, the
 * checks that refuse a file before minutes are spent on it, and the write,
 * with the tensor data computed or, for a sparse file, left as holes.
 * moectl links this file (with arch.c, tensors.c and vocab.c) to plan from
 * a preset through the same file a --sparse model would be.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "gguf_write.h"
#include "mkmodel.h"
#include "preset.h"

void mk_opts_default(struct opts *o)
{
	*o = (struct opts){
		.layers = 4, .embd = 256, .heads = 4, .kv_heads = 2, .head_dim = 64, .vocab = 512,
		.experts = 8, .expert_ff = 256, .ff = 512, .ctx = 4096, .type = MOE_TYPE_F32,
		.type_other = MOE_TYPE_F32, .align = 32, .interleave = 1, .sliding_window = 128,
		.swa_pattern = 6, .rope_base_swa = 10000.0f, .partial_rotary = 0.25f,
		.yarn_factor = 32.0f, .rope_freqs_factor = 16.0f, .router_skew = 1.0,
		.layer_corr = 0.5, .seed = 1, .q_lora = 64, .kv_lora = 32, .rope_dim = 16,
		.groups = 4, .groups_used = 2,
	};
}

int mk_opts_preset(struct opts *o, const struct preset *p)
{
	const struct moe_arch *a = NULL;

	for (unsigned i = 0; moe_arch_at(i); i++)
		if (!strcmp(p->arch, moe_arch_at(i)->gen.name))
			a = moe_arch_at(i);
	if (!a)
		return -ENOENT;
	o->a = a;
	o->layers = p->layers;
	o->embd = p->embd;
	o->heads = p->heads;
	o->kv_heads = p->kv_heads;
	o->head_dim = p->head_dim;
	o->vocab = p->vocab;
	o->experts = p->experts;
	o->experts_used = p->experts_used;
	o->expert_ff = p->expert_ff;
	o->shared_ff = p->shared_ff;
	o->ff = p->ff;
	o->interleave = p->interleave ? p->interleave : 1;
	o->leading_dense = p->leading_dense;
	o->ctx = p->ctx;
	o->rope_base = p->rope_base;
	o->tied = p->tied;
	if (p->sliding_window)
		o->sliding_window = p->sliding_window;
	if (p->swa_pattern)
		o->swa_pattern = p->swa_pattern;
	o->head_dim_swa = p->head_dim_swa;
	if (p->kv_lora) {
		o->q_lora = p->q_lora;
		o->kv_lora = p->kv_lora;
		o->rope_dim = p->rope_dim;
		o->v_head_dim = p->v_head_dim;
		o->groups = p->groups;
		o->groups_used = p->groups_used;
	}
	return 0;
}

/*
 * The routers are held in memory while the file is written: refuse sizes the
 * machine cannot hold instead of paging until the OOM killer ends it.
 */
static int check_memory(const struct opts *o)
{
	uint64_t n = 0, bytes, ram = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)getpagesize();

	if (o->sparse)
		return 0;
	for (uint32_t l = 0; l < o->layers; l++)
		n += mk_is_moe_layer(o, l);
	bytes = n * o->embd * o->experts * sizeof(float);
	if (bytes <= ram / 2)
		return 0;
	fprintf(stderr, PROG ": the routers of %" PRIu64 " MoE layers (%u x %u each) need %"
		PRIu64 " bytes of memory while the model is written, more than half of this "
		"machine's %" PRIu64 ": lower --layers, --embd or --experts\n", n, o->embd,
		o->experts, bytes, ram);
	return 1;
}

/* The directory @out is written in ("." for a bare name), malloc'd. */
static char *out_dir(const char *out)
{
	const char *slash = strrchr(out, '/');

	if (!slash)
		return strdup(".");
	/* "/x" lives in "/" */
	return strndup(out, slash == out ? 1 : (size_t)(slash - out));
}

/* A file larger than the free space would fail at the end, after minutes of work. */
static int check_space(const char *out, uint64_t bytes, bool sparse)
{
	char *dir = out_dir(out);
	struct statvfs sv;
	struct stat st;
	uint64_t avail;
	int ret = 0;

	/* devices and FIFOs are written through: their filesystem says nothing */
	if (!dir || (stat(out, &st) == 0 && !S_ISREG(st.st_mode))) {
		free(dir);
		return 0;
	}
	if (statvfs(dir, &sv) == 0)
		avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	else
		avail = UINT64_MAX;
	if (bytes > avail) {
		fprintf(stderr, PROG ": %s: the model %s %" PRIu64 " bytes and its filesystem has %"
			PRIu64 " free: free some space or make a smaller model\n", out,
			sparse ? "needs its metadata written, " : "is", bytes, avail);
		ret = 1;
	}
	free(dir);
	return ret;
}

/*
 * A sparse file on a filesystem without holes (vfat, some network mounts)
 * would be written out in full: hundreds of GB of zeros.  Ask the
 * filesystem: a probe file extended by 64 MiB must take (almost) no blocks.
 */
#define PROBE_BYTES (64ull << 20)
static int check_sparse(const char *out)
{
	char *dir = out_dir(out), *path = NULL;
	struct stat st;
	int fd, ret = 0;

	if (!dir)
		return 0;
	if (stat(out, &st) == 0 && !S_ISREG(st.st_mode)) {
		fprintf(stderr, PROG ": %s is %s: --sparse writes a regular file (holes exist "
			"only in files); name a file\n", out, S_ISDIR(st.st_mode) ? "a directory" :
			"not a regular file");
		free(dir);
		return 1;
	}
	if (asprintf(&path, "%s/.moe-mkmodel-sparse.%d", dir, (int)getpid()) < 0) {
		free(dir);
		return 0;
	}
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		/* the write itself will say why the directory cannot be written */
		free(path);
		free(dir);
		return 0;
	}
	unlink(path);
	if (getenv("MOE_MKMODEL_NO_SPARSE") ||
	    (ftruncate(fd, PROBE_BYTES) == 0 && fstat(fd, &st) == 0 &&
	     (uint64_t)st.st_blocks * 512 >= PROBE_BYTES / 2)) {
		fprintf(stderr, PROG ": %s: this filesystem does not keep holes in files, so a "
			"--sparse model would be written out in full; write it to one that does "
			"(ext4, xfs, btrfs, tmpfs)\n", dir);
		ret = 1;
	}
	close(fd);
	free(path);
	free(dir);
	return ret;
}

int mk_write(const struct opts *o, struct mk_result *res)
{
	struct moe_gguf_writer *w = NULL;
	struct model m = { 0 };
	uint64_t bytes = 0, data_off = 0;
	int ret;

	memset(res, 0, sizeof(*res));
	m.o = o;
	m.last_pct = -1;
	if (check_memory(o))
		return 1;
	if (o->sparse && check_sparse(o->out))
		return 1;
	ret = mk_make_structure(&m);
	if (ret) {
		fprintf(stderr, PROG ": out of memory for the routers\n");
		goto out;
	}
	ret = mk_add_tensors(&m);
	if (ret)
		goto out;
	ret = moe_gguf_writer_create(o->align, &w);
	ret = ret ?: mk_add_metadata(w, o);
	for (size_t i = 0; !ret && i < m.n_t; i++) {
		struct gtensor *t = &m.t[i];

		if (o->sparse)
			ret = moe_gguf_add_tensor_hole(w, t->name, t->type, t->n_dims, t->ne);
		else
			ret = moe_gguf_add_tensor_fill(w, t->name, t->type, t->n_dims, t->ne,
						       mk_fill, t);
	}
	ret = ret ?: moe_gguf_layout(w, &data_off, &bytes);
	if (ret) {
		if (ret != -ERANGE)
			fprintf(stderr, PROG ": %s\n", *moe_errmsg() ? moe_errmsg() : strerror(-ret));
		goto out;
	}
	ret = check_space(o->out, o->sparse ? data_off : bytes, o->sparse);
	if (ret)
		goto out;
	for (size_t i = 0; i < ARRAY_LEN(m.fallback) && m.fallback[i].count && !o->quiet; i++)
		fprintf(stderr, PROG ": note: %u tensor(s) (e.g. %s) have rows not a multiple of "
			"the %s block and are written as %s\n", m.fallback[i].count,
			m.fallback[i].example, moe_type_name(m.fallback[i].from),
			moe_type_name(m.fallback[i].to));
	if (!o->sparse && (moe_type_block_elems(o->type) > 1 ||
			   moe_type_block_elems(o->type_other) > 1)) {
		ret = moe_threadpool_create(0, &m.pool);
		if (ret) {
			fprintf(stderr, PROG ": %s\n", moe_errmsg());
			goto out;
		}
	}
	m.progress = !o->quiet && !o->sparse && isatty(STDERR_FILENO);
	m.bytes_total = bytes;
	ret = moe_gguf_write(w, o->out);
	if (m.progress)
		fprintf(stderr, "\r\033[K");
	if (ret) {
		fprintf(stderr, PROG ": %s\n", moe_errmsg());
		goto out;
	}
	res->bytes = bytes;
	res->data_offset = data_off;
	res->n_tensors = m.n_t;
	res->n_moe = m.n_moe;
out:
	moe_gguf_writer_destroy(w);
	mk_model_free(&m);
	/* a --vocab the built-in BPE text cannot fill is a usage error */
	return ret == -ERANGE ? EXIT_USAGE : ret ? 1 : 0;
}
