/* SPDX-License-Identifier: MIT */
/*
 * Routing statistics: recording, the model identity they are keyed by, and
 * the versioned file they are saved in (format in routestats.h).  A file
 * that is truncated, corrupt, of another version or of another model is
 * refused with a reason; the engine then starts without it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/routestats.h"
#include "model.h"
#include "util/util.h"

#define FNV_BASIS 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull
#define HEADER_BYTES (8 + 4 * 4 + 3 * 8)
#define SATURATE (1u << 31)

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * FNV_PRIME;
	return h;
}

int moe_model_identity(const struct moe_model *m, uint64_t *bytes, uint64_t *hash)
{
	uint64_t h = FNV_BASIS, end, off = 0;
	uint8_t *buf;

	if (!m || !m->gguf)
		return moe_err(EINVAL, "moe_model_identity: no model");
	end = m->gguf->data_offset;
	if (m->fd < 0) {
		/* opened through moe.ko: the header is in memory */
		if (m->head_len < end)
			return moe_err(EINVAL, "%s: the header is not all in memory", m->path);
		h = fnv(h, m->head, (size_t)end);
		end = 0;
	}
	buf = malloc(1 << 20);
	if (!buf)
		return moe_err(ENOMEM, "out of memory");
	/* the header, metadata and tensor table: what tells one model file from another */
	while (off < end) {
		size_t n = (size_t)MOE_MIN(end - off, (uint64_t)(1 << 20));
		ssize_t r = pread(m->fd, buf, n, (off_t)off);

		if (r <= 0) {
			int e = r < 0 ? errno : EIO;

			free(buf);
			return moe_err(e, "%s: reading the header: %s", m->path, strerror(e));
		}
		h = fnv(h, buf, (size_t)r);
		off += (uint64_t)r;
	}
	free(buf);
	if (bytes)
		*bytes = m->gguf->file_size;
	if (hash)
		*hash = h;
	return 0;
}

int moe_state_dir(char *buf, size_t len)
{
	const char *v = getenv("MOE_STATE_DIR"), *home;
	int n;

	if (v && *v)
		n = snprintf(buf, len, "%s", v);
	else if ((v = getenv("XDG_STATE_HOME")) && *v)
		n = snprintf(buf, len, "%s/moe", v);
	else if ((home = getenv("HOME")) && *home)
		n = snprintf(buf, len, "%s/.local/state/moe", home);
	else
		return moe_err(ENOENT, "no state directory: set MOE_STATE_DIR, XDG_STATE_HOME or HOME");
	if (n < 0 || (size_t)n >= len)
		return moe_err(ENAMETOOLONG, "the state directory's path is too long");
	return 0;
}

int moe_routestats_path(const struct moe_model *m, const char *dir, char *buf, size_t len)
{
	uint64_t bytes, hash;
	int ret = moe_model_identity(m, &bytes, &hash), n;

	if (ret < 0)
		return ret;
	n = snprintf(buf, len, "%s/routes-%016llx-%llx.stats", dir, (unsigned long long)hash,
		     (unsigned long long)bytes);
	if (n < 0 || (size_t)n >= len)
		return moe_err(ENAMETOOLONG, "%s: path too long", dir);
	return 0;
}

int moe_routestats_create(uint32_t n_layer, uint32_t n_expert, const bool *routed,
			  struct moe_routestats **out)
{
	uint64_t nk = (uint64_t)n_layer * n_expert;
	struct moe_routestats *rs;

	*out = NULL;
	if (!n_layer || !n_expert || n_expert > 65536 || nk * n_expert > (1ull << 31))
		return moe_err(EINVAL, "routing statistics of %u layers x %u experts: too large or "
			       "empty", n_layer, n_expert);
	rs = calloc(1, sizeof(*rs));
	if (!rs)
		return moe_err(ENOMEM, "out of memory");
	rs->n_layer = n_layer;
	rs->n_expert = n_expert;
	rs->next = malloc(sizeof(*rs->next) * n_layer);
	rs->layer_tokens = calloc(n_layer, sizeof(*rs->layer_tokens));
	rs->count = calloc(nk, sizeof(*rs->count));
	rs->trans = calloc(nk * n_expert, sizeof(*rs->trans));
	rs->coact = calloc(nk * n_expert, sizeof(*rs->coact));
	if (!rs->next || !rs->layer_tokens || !rs->count || !rs->trans || !rs->coact) {
		moe_routestats_destroy(rs);
		return moe_err(ENOMEM, "out of memory for routing statistics");
	}
	for (uint32_t l = 0; l < n_layer; l++) {
		rs->next[l] = -1;
		for (uint32_t m = l + 1; m < n_layer; m++)
			if (!routed || routed[m]) {
				rs->next[l] = (int32_t)m;
				break;
			}
		if (routed && !routed[l])
			rs->next[l] = -1;
	}
	*out = rs;
	return 0;
}

void moe_routestats_destroy(struct moe_routestats *rs)
{
	if (!rs)
		return;
	free(rs->next);
	free(rs->layer_tokens);
	free(rs->count);
	free(rs->trans);
	free(rs->coact);
	free(rs);
}

int moe_routestats_clone(const struct moe_routestats *src, struct moe_routestats **out)
{
	uint64_t nk = (uint64_t)src->n_layer * src->n_expert;
	struct moe_routestats *rs;
	int ret = moe_routestats_create(src->n_layer, src->n_expert, NULL, &rs);

	*out = NULL;
	if (ret < 0)
		return ret;
	rs->model_bytes = src->model_bytes;
	rs->model_hash = src->model_hash;
	rs->tokens = src->tokens;
	memcpy(rs->next, src->next, sizeof(*rs->next) * src->n_layer);
	memcpy(rs->layer_tokens, src->layer_tokens, sizeof(*rs->layer_tokens) * src->n_layer);
	memcpy(rs->count, src->count, sizeof(*rs->count) * nk);
	memcpy(rs->trans, src->trans, sizeof(*rs->trans) * nk * src->n_expert);
	memcpy(rs->coact, src->coact, sizeof(*rs->coact) * nk * src->n_expert);
	*out = rs;
	return 0;
}

static double share(const struct moe_routestats *rs, uint32_t key)
{
	uint64_t n = rs->layer_tokens[key / rs->n_expert];

	return n ? (double)rs->count[key] / n : 0;
}

static int by_share(const void *a, const void *b, void *arg)
{
	const struct moe_routestats *rs = arg;
	uint32_t ka = *(const uint32_t *)a, kb = *(const uint32_t *)b;
	double x = share(rs, ka), y = share(rs, kb);

	if (x != y)
		return x > y ? -1 : 1;
	return ka < kb ? -1 : 1;
}

uint32_t moe_routestats_rank(const struct moe_routestats *rs, uint32_t *keys, uint32_t max)
{
	uint32_t n = 0;

	for (uint32_t l = 0; l < rs->n_layer; l++)
		for (uint32_t e = 0; rs->layer_tokens[l] && e < rs->n_expert; e++)
			if (rs->count[(uint64_t)l * rs->n_expert + e])
				keys[n++] = l * rs->n_expert + e;
	qsort_r(keys, n, sizeof(*keys), by_share, (void *)rs);
	return MOE_MIN(n, max);
}

/* Halve every pair count: one of them was about to pass 2^31. */
static void halve(struct moe_routestats *rs)
{
	uint64_t n = (uint64_t)rs->n_layer * rs->n_expert * rs->n_expert;

	for (uint64_t i = 0; i < n; i++) {
		rs->trans[i] >>= 1;
		rs->coact[i] >>= 1;
	}
}

static void bump(struct moe_routestats *rs, uint32_t *c)
{
	if (*c + 1 >= SATURATE)
		halve(rs);
	(*c)++;
}

void moe_routestats_add(struct moe_routestats *rs, uint32_t layer, const int32_t *prev,
			uint32_t k_prev, const int32_t *ids, uint32_t k)
{
	uint32_t E = rs->n_expert;
	uint64_t base = (uint64_t)layer * E;
	int32_t pl = -1;

	if (layer >= rs->n_layer)
		return;
	rs->layer_tokens[layer]++;
	for (uint32_t j = 0; j < k; j++) {
		if (ids[j] < 0 || (uint32_t)ids[j] >= E)
			continue;
		rs->count[base + ids[j]]++;
		for (uint32_t i = 0; i < k; i++)
			if (i != j && ids[i] >= 0 && (uint32_t)ids[i] < E)
				bump(rs, &rs->coact[(base + ids[j]) * E + ids[i]]);
	}
	if (!prev)
		return;
	for (uint32_t l = 0; l < layer; l++)
		if (rs->next[l] == (int32_t)layer)
			pl = (int32_t)l;
	if (pl < 0)
		return;
	for (uint32_t i = 0; i < k_prev; i++) {
		uint64_t pk;

		if (prev[i] < 0 || (uint32_t)prev[i] >= E)
			continue;
		pk = (uint64_t)pl * E + prev[i];
		for (uint32_t j = 0; j < k; j++)
			if (ids[j] >= 0 && (uint32_t)ids[j] < E)
				bump(rs, &rs->trans[pk * E + ids[j]]);
	}
}

void moe_routestats_token(struct moe_routestats *rs)
{
	rs->tokens++;
}

/* ------------------------------------------------------------ the file */

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 0; i < 4; i++)
		v |= (uint32_t)p[i] << (8 * i);
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static uint64_t file_bytes(uint32_t L, uint32_t E)
{
	uint64_t nk = (uint64_t)L * E;

	return HEADER_BYTES + 8 * L + 8 * nk + 2 * 4 * nk * E + 8;
}

static uint8_t *serialize(const struct moe_routestats *rs, uint64_t *len)
{
	uint64_t nk = (uint64_t)rs->n_layer * rs->n_expert, np = nk * rs->n_expert;
	uint8_t *buf, *p;

	*len = file_bytes(rs->n_layer, rs->n_expert);
	buf = malloc(*len);
	if (!buf)
		return NULL;
	memcpy(buf, MOE_RSTATS_MAGIC, 8);
	put32(buf + 8, MOE_RSTATS_VERSION);
	put32(buf + 12, rs->n_layer);
	put32(buf + 16, rs->n_expert);
	put32(buf + 20, 0);
	put64(buf + 24, rs->model_bytes);
	put64(buf + 32, rs->model_hash);
	put64(buf + 40, rs->tokens);
	p = buf + HEADER_BYTES;
	for (uint32_t l = 0; l < rs->n_layer; l++, p += 8)
		put64(p, rs->layer_tokens[l]);
	for (uint64_t i = 0; i < nk; i++, p += 8)
		put64(p, rs->count[i]);
	for (uint64_t i = 0; i < np; i++, p += 4)
		put32(p, rs->trans[i]);
	for (uint64_t i = 0; i < np; i++, p += 4)
		put32(p, rs->coact[i]);
	put64(p, fnv(FNV_BASIS, buf, (size_t)(p - buf)));
	return buf;
}

int moe_routestats_save(const struct moe_routestats *rs, const char *path)
{
	char tmp[4096];
	uint64_t len;
	uint8_t *buf;
	FILE *f;
	int ok;

	if (!rs || !path)
		return moe_err(EINVAL, "moe_routestats_save: NULL argument");
	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp))
		return moe_err(ENAMETOOLONG, "%s: path too long", path);
	buf = serialize(rs, &len);
	if (!buf)
		return moe_err(ENOMEM, "out of memory");
	f = fopen(tmp, "wb");
	if (!f) {
		int e = errno;

		free(buf);
		return moe_err(e, "%s: cannot write routing statistics: %s", tmp, strerror(e));
	}
	ok = fwrite(buf, 1, len, f) == len;
	ok = (fclose(f) == 0) && ok;
	free(buf);
	/* written whole, then renamed: a crash never leaves half a file behind */
	if (!ok || rename(tmp, path) < 0) {
		int e = errno ? errno : EIO;

		unlink(tmp);
		return moe_err(e, "%s: cannot write routing statistics: %s", path, strerror(e));
	}
	return 0;
}

/* mkdir -p for the state directory */
int moe_mkdirs(const char *dir)
{
	char p[4096];
	size_t n = strlen(dir);

	if (n >= sizeof(p))
		return moe_err(ENAMETOOLONG, "%s: path too long", dir);
	memcpy(p, dir, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (p[i] != '/' && p[i])
			continue;
		p[i] = 0;
		if (mkdir(p, 0755) < 0 && errno != EEXIST)
			return moe_err(errno, "%s: cannot create: %s", p, strerror(errno));
		p[i] = i < n ? '/' : 0;
	}
	return 0;
}

int moe_routestats_load(const char *path, const struct moe_model *model,
			struct moe_routestats **out)
{
	uint64_t len = 0, bytes = 0, hash = 0, nk, np;
	struct moe_routestats *rs;
	const uint8_t *p;
	uint8_t *buf = NULL;
	uint32_t L, E, ver;
	struct stat st;
	FILE *f;
	int ret;

	if (!path || !out)
		return moe_err(EINVAL, "moe_routestats_load: NULL argument");
	*out = NULL;
	f = fopen(path, "rb");
	if (!f)
		return moe_err(errno, "%s: %s", path, strerror(errno));
	if (fstat(fileno(f), &st) == 0 && st.st_size > 0 && st.st_size < (1ll << 34)) {
		len = (uint64_t)st.st_size;
		buf = malloc(len);
		if (buf && fread(buf, 1, len, f) != len) {
			free(buf);
			buf = NULL;
		}
	}
	fclose(f);
	if (!buf)
		return moe_err(EINVAL, "%s: empty or unreadable routing statistics", path);
	ret = -EINVAL;
	if (len < HEADER_BYTES || memcmp(buf, MOE_RSTATS_MAGIC, 8)) {
		moe_err(EINVAL, "%s: not a routing statistics file", path);
		goto fail;
	}
	ver = get32(buf + 8);
	if (ver != MOE_RSTATS_VERSION) {
		moe_err(EINVAL, "%s: routing statistics of version %u; this library reads version %u",
			path, ver, MOE_RSTATS_VERSION);
		goto fail;
	}
	L = get32(buf + 12);
	E = get32(buf + 16);
	if (!L || !E || L > 4096 || E > 65536 || (uint64_t)L * E * E > (1ull << 31) ||
	    len != file_bytes(L, E)) {
		moe_err(EINVAL, "%s: truncated or corrupt routing statistics (%llu bytes for %u "
			"layers x %u experts)", path, (unsigned long long)len, L, E);
		goto fail;
	}
	if (get64(buf + len - 8) != fnv(FNV_BASIS, buf, (size_t)(len - 8))) {
		moe_err(EINVAL, "%s: corrupt routing statistics (checksum mismatch)", path);
		goto fail;
	}
	if (model) {
		ret = moe_model_identity(model, &bytes, &hash);
		if (ret < 0)
			goto fail;
		if (get64(buf + 24) != bytes || get64(buf + 32) != hash ||
		    L != model->hp.n_layer || E != model->hp.n_expert) {
			ret = moe_err(ESTALE, "%s: routing statistics of another model file", path);
			goto fail;
		}
	}
	{
		bool routed[4096];

		for (uint32_t l = 0; l < L; l++)
			routed[l] = !model || !model->layers || model->layers[l].info.is_moe;
		ret = moe_routestats_create(L, E, routed, &rs);
	}
	if (ret < 0)
		goto fail;
	nk = (uint64_t)L * E;
	np = nk * E;
	rs->model_bytes = get64(buf + 24);
	rs->model_hash = get64(buf + 32);
	rs->tokens = get64(buf + 40);
	p = buf + HEADER_BYTES;
	for (uint32_t l = 0; l < L; l++, p += 8)
		rs->layer_tokens[l] = get64(p);
	for (uint64_t i = 0; i < nk; i++, p += 8)
		rs->count[i] = get64(p);
	for (uint64_t i = 0; i < np; i++, p += 4)
		rs->trans[i] = get32(p);
	for (uint64_t i = 0; i < np; i++, p += 4)
		rs->coact[i] = get32(p);
	if (!model) {
		/* without the model, the routed layers are those that saw tokens */
		for (uint32_t l = 0; l < L; l++) {
			rs->next[l] = -1;
			for (uint32_t m = l + 1; m < L && rs->layer_tokens[l]; m++)
				if (rs->layer_tokens[m]) {
					rs->next[l] = (int32_t)m;
					break;
				}
		}
	}
	free(buf);
	*out = rs;
	return 0;
fail:
	free(buf);
	return ret;
}

int moe_routestats_info(const struct moe_routestats *rs, struct moe_routestats_info *out)
{
	if (!rs || !out)
		return moe_err(EINVAL, "moe_routestats_info: NULL argument");
	memset(out, 0, sizeof(*out));
	out->n_layer = rs->n_layer;
	out->n_expert = rs->n_expert;
	out->tokens = rs->tokens;
	out->model_bytes = rs->model_bytes;
	out->model_hash = rs->model_hash;
	return 0;
}

uint64_t moe_routestats_layer_tokens(const struct moe_routestats *rs, uint32_t layer)
{
	return rs && layer < rs->n_layer ? rs->layer_tokens[layer] : 0;
}

uint64_t moe_routestats_count(const struct moe_routestats *rs, uint32_t layer, uint32_t e)
{
	if (!rs || layer >= rs->n_layer || e >= rs->n_expert)
		return 0;
	return rs->count[(uint64_t)layer * rs->n_expert + e];
}

int moe_routestats_next_layer(const struct moe_routestats *rs, uint32_t layer)
{
	if (!rs || layer >= rs->n_layer)
		return -EINVAL;
	return rs->next[layer] < 0 ? -ENOENT : rs->next[layer];
}

uint64_t moe_routestats_transition(const struct moe_routestats *rs, uint32_t layer, uint32_t e,
				   uint32_t f)
{
	if (!rs || layer >= rs->n_layer || e >= rs->n_expert || f >= rs->n_expert)
		return 0;
	return rs->trans[((uint64_t)layer * rs->n_expert + e) * rs->n_expert + f];
}

uint64_t moe_routestats_coactivation(const struct moe_routestats *rs, uint32_t layer,
				     uint32_t e, uint32_t f)
{
	if (!rs || layer >= rs->n_layer || e >= rs->n_expert || f >= rs->n_expert)
		return 0;
	return rs->coact[((uint64_t)layer * rs->n_expert + e) * rs->n_expert + f];
}
