/* SPDX-License-Identifier: MIT */
/*
 * moe.h - the public API of libmoe.
 *
 * Conventions: every name starts with moe_ or MOE_; handles are opaque; every
 * call returns 0 (or a count) on success and a negative errno on failure and
 * never sets errno.  moe_errmsg() gives a human-readable reason for the last
 * failure on the calling thread.  Public structs that may grow carry reserved
 * fields that callers zero.
 */
#ifndef MOE_MOE_H
#define MOE_MOE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MOE_API __attribute__((visibility("default")))
#else
#define MOE_API
#endif

#define MOE_VERSION_MAJOR 1
#define MOE_VERSION_MINOR 0

/* ---------------------------------------------------------------- errors */
/* (section: general) */

/*
 * Errors, the library's build facts, logging, sizes and tensor types.
 * Threads: every function of this section may be called from any thread at
 * any time; moe_errmsg() reports the calling thread's own last failure.
 * Ownership: the strings returned are static, except moe_errmsg()'s, which
 * belongs to the calling thread and stays valid until its next failing call;
 * never free them.
 */

/*
 * The reason for the last failure on this thread, e.g.
 * "model.gguf: tensor 'blk.3.ffn_up_exps.weight': data at 0x1000 ends past
 * the file size 0x800".  Never NULL; "" when nothing failed yet.
 */
MOE_API const char *moe_errmsg(void);

/* ---------------------------------------------------------------- build */
/*
 * What this library is and what it was built with.  The build facts do not
 * change while a process runs; any thread may call this at any time.
 */

/* What this libmoe is: for `moectl version` and bug reports. */
struct moe_build_info {
	int version_major, version_minor;       /* MOE_VERSION_* it was built as */
	const char *soname;                     /* "libmoe.so.1" */
	uint64_t cuda_kernel_bytes;             /* embedded fatbin; 0: no CUDA kernels */
	int kmod_uapi_major, kmod_uapi_minor;   /* the moe.ko uAPI it speaks */
};
/* Fill @out with this libmoe's version, soname and build features. */
MOE_API void moe_build_info(struct moe_build_info *out);

enum moe_log_level {
	MOE_LOG_ERROR = 0,
	MOE_LOG_WARN = 1,
	MOE_LOG_INFO = 2,
	MOE_LOG_DEBUG = 3,
};

/*
 * Messages at or below @level (enum moe_log_level) go to stderr (default
 * WARN; env MOE_LOG=0..3); a level past MOE_LOG_DEBUG is ignored.
 */
MOE_API void moe_set_log_level(uint32_t level);

/*
 * A byte count as users write budgets: "1500000000", "512K", "20M", "1.5G",
 * "2T", with an optional "iB" or "B" (powers of 1024).  -EINVAL for anything
 * else, a negative or zero value, or one past 2^64.
 */
MOE_API int moe_parse_size(const char *s, uint64_t *out);

/* ---------------------------------------------------------------- types */

/* GGML type ids; append-only, the numbers are the on-disk ids. */
enum moe_type {
	MOE_TYPE_F32 = 0,
	MOE_TYPE_F16 = 1,
	MOE_TYPE_Q4_0 = 2,
	MOE_TYPE_Q4_1 = 3,
	MOE_TYPE_Q5_0 = 6,
	MOE_TYPE_Q5_1 = 7,
	MOE_TYPE_Q8_0 = 8,
	MOE_TYPE_Q8_1 = 9,
	MOE_TYPE_Q2_K = 10,
	MOE_TYPE_Q3_K = 11,
	MOE_TYPE_Q4_K = 12,
	MOE_TYPE_Q5_K = 13,
	MOE_TYPE_Q6_K = 14,
	MOE_TYPE_Q8_K = 15,
	MOE_TYPE_IQ2_XXS = 16,
	MOE_TYPE_IQ2_XS = 17,
	MOE_TYPE_IQ3_XXS = 18,
	MOE_TYPE_IQ1_S = 19,
	MOE_TYPE_IQ4_NL = 20,
	MOE_TYPE_IQ3_S = 21,
	MOE_TYPE_IQ2_S = 22,
	MOE_TYPE_IQ4_XS = 23,
	MOE_TYPE_I8 = 24,
	MOE_TYPE_I16 = 25,
	MOE_TYPE_I32 = 26,
	MOE_TYPE_I64 = 27,
	MOE_TYPE_F64 = 28,
	MOE_TYPE_IQ1_M = 29,
	MOE_TYPE_BF16 = 30,
	MOE_TYPE_TQ1_0 = 34,
	MOE_TYPE_TQ2_0 = 35,
	MOE_TYPE_MXFP4 = 39,
	MOE_TYPE_COUNT = 40,
};

/* Name of a type ("q4_K"), or NULL for an unknown id. */
MOE_API const char *moe_type_name(uint32_t type);
/* Type id for a name (case-insensitive), or -EINVAL. */
MOE_API int moe_type_from_name(const char *name);
/* Elements per block and bytes per block; -EINVAL for an unknown id. */
MOE_API int moe_type_block_elems(uint32_t type);
MOE_API int moe_type_block_bytes(uint32_t type);
/* Bytes of a row of @n elements; -EINVAL if unknown or n is not a multiple of the block. */
MOE_API int64_t moe_type_row_bytes(uint32_t type, uint64_t n);

/* ---------------------------------------------------------------- models */
/* (section: models) */

/*
 * The GGUF reader: a model file's metadata, tensor table, hyperparameters,
 * layers and expert map, validated at open, without reading tensor data.
 * Threads: a model is read-only once open; any number of threads, contexts
 * and tokenizers may use one handle at once, and moe_model_destroy() comes
 * after the last of them.
 * Ownership: the handle is the caller's; keys, string values, tensor names
 * and the path returned point into the model and are valid until
 * moe_model_destroy().  Out-structs are filled by value.
 */

struct moe_model;

/*
 * Open a GGUF model file and validate all of it that can be validated
 * without reading tensor data: header, metadata, tensor infos, the
 * architecture's required keys and tensors, and the expert map.  A @path
 * of "moe:NAME" opens the model registered with moe.ko as NAME (moectl
 * load) without touching its file: the header comes through the driver,
 * and an inference context on it reads every tensor through the driver.
 */
MOE_API int moe_model_open(const char *path, struct moe_model **out);

enum moe_open_flags {
	/* Only the container and metadata: for vocab-only files (tokenizers). */
	MOE_OPEN_METADATA_ONLY = 1u << 0,
};
#define MOE_OPEN_FLAGS_ALL (MOE_OPEN_METADATA_ONLY)
/*
 * moe_model_open() with @flags (enum moe_open_flags); -EINVAL for unknown
 * flags.  The model is read-only once open: one handle may serve any number
 * of threads and contexts at once; close it after the last of them.
 */
MOE_API int moe_model_open_flags(const char *path, uint32_t flags, struct moe_model **out);
/* The path the model was opened from. */
MOE_API const char *moe_model_path(const struct moe_model *model);
/*
 * Close the file and free @model with every string and array it returned.
 * Contexts on it must be destroyed first; tokenizers loaded from it need
 * not be.  NULL is a no-op.
 */
MOE_API void moe_model_destroy(struct moe_model *model);

/* Metadata value types, as in GGUF. */
enum moe_meta_type {
	MOE_META_U8 = 0,
	MOE_META_I8 = 1,
	MOE_META_U16 = 2,
	MOE_META_I16 = 3,
	MOE_META_U32 = 4,
	MOE_META_I32 = 5,
	MOE_META_F32 = 6,
	MOE_META_BOOL = 7,
	MOE_META_STRING = 8,
	MOE_META_ARRAY = 9,
	MOE_META_U64 = 10,
	MOE_META_I64 = 11,
	MOE_META_F64 = 12,
};

/*
 * One metadata value.  Scalars are widened into u64/i64/f64 (bool: u64 0/1);
 * strings point into the model (valid until close, not NUL-terminated
 * beyond len, though a NUL does follow); arrays give the element type and
 * count, read elements with moe_meta_array_*.
 */
struct moe_meta {
	const char *key;
	uint32_t type;
	uint32_t elem_type;   /* arrays */
	uint64_t count;       /* arrays: elements; strings: bytes */
	union {
		uint64_t u64;
		int64_t i64;
		double f64;
		const char *str;
	} v;
	uint64_t reserved[2];
};

/* Number of metadata keys, and key @idx (0 .. count-1; -EINVAL outside) in file order. */
MOE_API int moe_meta_count(const struct moe_model *model);
MOE_API int moe_meta_at(const struct moe_model *model, int idx, struct moe_meta *out);
/* -ENOENT when the key is absent. */
MOE_API int moe_meta_get(const struct moe_model *model, const char *key, struct moe_meta *out);
/* Convenience: integer/float/string by key, with type conversion where lossless. */
MOE_API int moe_meta_get_u64(const struct moe_model *model, const char *key, uint64_t *out);
MOE_API int moe_meta_get_f64(const struct moe_model *model, const char *key, double *out);
MOE_API int moe_meta_get_str(const struct moe_model *model, const char *key, const char **out);
/* Array element i as integer / float / string. */
MOE_API int moe_meta_array_i64(const struct moe_meta *arr, uint64_t i, int64_t *out);
MOE_API int moe_meta_array_f64(const struct moe_meta *arr, uint64_t i, double *out);
MOE_API int moe_meta_array_str(const struct moe_meta *arr, uint64_t i, const char **s,
			       uint64_t *len);

struct moe_tensor_info {
	const char *name;
	uint32_t type;
	uint32_t n_dims;
	uint64_t ne[4];       /* ne[0] is the row length */
	uint64_t offset;      /* absolute file offset of the data */
	uint64_t bytes;
	uint32_t role;        /* enum moe_tensor_role */
	int32_t layer;        /* -1 for global tensors */
	uint64_t reserved[2];
};

enum moe_tensor_role {
	MOE_ROLE_OTHER = 0,        /* resident, no special meaning to the planner */
	MOE_ROLE_EXPERT_GATE = 1,  /* routed experts: streamed, never resident */
	MOE_ROLE_EXPERT_UP = 2,
	MOE_ROLE_EXPERT_DOWN = 3,
	MOE_ROLE_EXPERT_GATE_UP = 4,
	/*
	 * Not read by the forward pass: the NextN/MTP block of GLM-4.5 files,
	 * and Gemma 4's per-layer embedding table, whose rows are streamed.
	 */
	MOE_ROLE_UNUSED = 5,
	MOE_ROLE_STREAMED_ROWS = 6,
};

/* Number of tensors, and tensor @idx (0 .. count-1; -EINVAL outside) in file order. */
MOE_API int moe_model_tensor_count(const struct moe_model *model);
MOE_API int moe_model_tensor(const struct moe_model *model, int idx, struct moe_tensor_info *out);
/* Index of the tensor named @name, or -ENOENT. */
MOE_API int moe_model_find_tensor(const struct moe_model *model, const char *name,
				  struct moe_tensor_info *out);

enum moe_gating {
	MOE_GATING_SOFTMAX = 1,          /* softmax over all, top-k */
	MOE_GATING_SIGMOID = 2,          /* sigmoid of the logits */
	MOE_GATING_SOFTMAX_SELECTED = 3, /* top-k by logit, softmax over the k */
};

struct moe_hparams {
	char arch[32];
	uint32_t n_layer;
	uint32_t n_moe_layer;
	uint32_t n_embd;
	uint32_t n_head;
	uint32_t n_head_kv;     /* layer 0; see moe_model_layer for per-layer values */
	uint32_t head_dim_k;
	uint32_t head_dim_v;
	uint32_t n_ff;          /* dense FFN width (0 = none) */
	uint32_t n_expert;
	uint32_t n_expert_used;
	uint32_t n_expert_shared;
	uint32_t n_ff_exp;
	uint32_t n_ff_shexp;
	uint32_t n_vocab;
	uint32_t n_ctx_train;
	uint32_t gating;        /* enum moe_gating */
	uint32_t interleave_moe_step;
	uint32_t leading_dense;
	uint32_t sliding_window;
	uint32_t n_rot;
	float rms_eps;
	float rope_base;
	float expert_weights_scale;
	bool expert_weights_norm;
	bool tied_output;
	uint8_t pad[2];
	/* deepseek2's multi-head latent attention (0 elsewhere) */
	uint32_t q_lora_rank;     /* 0: q projected directly */
	uint32_t kv_lora_rank;    /* width of the cached latent; the cache adds n_rot */
	uint32_t head_dim_k_mla;  /* per-head q/k: nope + n_rot */
	uint32_t head_dim_v_mla;
	uint32_t n_group;         /* group-limited routing (0/1: none) */
	uint32_t topk_group;
	uint32_t n_embd_per_layer; /* Gemma 4 E2B/E4B per-layer embedding width, 0: none */
	uint32_t n_kv_shared;     /* trailing layers reading an earlier layer's KV cache */
	uint32_t n_nextn;         /* NextN/MTP blocks in the file after the trunk (skipped) */
	uint32_t pad2;
	uint64_t reserved[3];
};

/* The model's hyperparameters, as read and validated by moe_model_open(). */
MOE_API int moe_model_hparams(const struct moe_model *model, struct moe_hparams *out);

/* Per-layer facts, from moe_model_layer() (-EINVAL for a layer out of range). */
struct moe_layer_info {
	bool is_moe;
	bool sliding;           /* sliding-window attention */
	bool rope;              /* false: NoPE layer */
	uint8_t pad;
	uint32_t n_head_kv;
	uint32_t head_dim;
	uint32_t n_ff;          /* dense FFN width on this layer, 0 = none */
	uint32_t n_expert_used;
	int32_t kv_layer;       /* the layer whose KV cache this one reads (itself unless shared) */
	uint64_t expert_bytes;  /* bytes of all routed experts of the layer */
	bool mla;               /* multi-head latent attention over a latent cache */
	uint8_t pad3[7];
	uint64_t reserved[3];
};
/* The facts of @layer (0 .. n_layer-1; -EINVAL outside). */
MOE_API int moe_model_layer(const struct moe_model *model, uint32_t layer,
			    struct moe_layer_info *out);

/* One contiguous matrix of one expert in the file. */
struct moe_extent {
	uint64_t offset;        /* absolute file offset */
	uint64_t bytes;
	uint32_t type;
	uint32_t role;          /* enum moe_tensor_role */
	uint64_t rows;          /* output units (ne[1] of the tensor) */
	uint64_t cols;          /* row length (ne[0]) */
	uint64_t reserved[2];   /* zero */
};

#define MOE_EXPERT_MAX_MATS 3
/* The matrices of one routed expert: gate, up, down, or gate_up and down. */
struct moe_expert {
	uint32_t n_mats;
	uint32_t pad;
	struct moe_extent mats[MOE_EXPERT_MAX_MATS];
	uint64_t bytes;         /* sum over the matrices */
	uint64_t reserved[2];   /* zero */
};

/* -EINVAL for a layer that is not MoE or an expert out of range. */
MOE_API int moe_model_expert(const struct moe_model *model, uint32_t layer, uint32_t expert,
			     struct moe_expert *out);

/* Sizes the planner and `moectl info` need. */
struct moe_model_summary {
	uint64_t file_bytes;
	uint64_t tensor_bytes;
	uint64_t resident_bytes;           /* every tensor that is not a routed expert */
	uint64_t expert_bytes_total;
	uint64_t expert_bytes_each;        /* largest single expert */
	uint64_t routed_bytes_per_token;   /* sum over MoE layers of used x expert bytes */
	uint64_t type_bytes[MOE_TYPE_COUNT];
	uint32_t type_tensors[MOE_TYPE_COUNT];
	uint32_t alignment;                /* general.alignment */
	uint32_t extent_alignment;         /* largest power of two dividing every expert offset */
	uint64_t unused_bytes;             /* tensors the forward pass skips (NextN blocks) */
	uint64_t streamed_rows_bytes;      /* tables read by rows, never resident (Gemma 4 PLE) */
	uint64_t reserved[6];
};
/* Fill @out with the sizes above; 0. */
MOE_API int moe_model_summary(const struct moe_model *model, struct moe_model_summary *out);

/* ------------------------------------------------------- output files */
/* (section: output files) */

/*
 * A file written by name, the way moe_gguf_write and the tools write every
 * output (Documentation/tools/files.rst):
 *  - a path that does not exist, or a regular file: written into a temporary
 *    file beside it, renamed over it when closed with @commit, so a failure
 *    leaves the old file (or nothing) behind and never a truncated one; the
 *    replacement keeps the old file's permission bits;
 *  - a symbolic link: the file it points to (followed link by link), by these
 *    same rules, and the link stays; a link to a file not there creates it;
 *  - a character device (/dev/null, a terminal): written through, as cp does;
 *  - a FIFO: written through when a reader has it open, else refused (-ENXIO)
 *    instead of blocking;
 *  - a directory (-EISDIR), block device or socket (-EEXIST): refused.
 * Threads: a struct moe_outfile belongs to one thread at a time; files are
 * independent of each other.
 * Ownership: moe_outfile_close() frees it, whatever it returns.
 */
struct moe_outfile;

/*
 * Open @path for writing by the rules above into *out.  -EISDIR, -EEXIST or
 * -ENXIO as above; another negative errno (-EACCES, -ENOENT for a missing
 * directory, -ENOSPC) when the file or its temporary cannot be created, with
 * moe_errmsg() naming the path.
 */
MOE_API int moe_outfile_open(const char *path, struct moe_outfile **out);
/* The descriptor to write to (the temporary file while there is one). */
MOE_API int moe_outfile_fd(const struct moe_outfile *o);
/* The path as given to moe_outfile_open. */
MOE_API const char *moe_outfile_path(const struct moe_outfile *o);
/*
 * Write all of @buf.  The first failure ("PATH: write failed after N bytes:
 * No space left on device") sticks: later writes and the close return it.
 */
MOE_API int moe_outfile_write(struct moe_outfile *o, const void *buf, size_t len);
/*
 * Close and free @o.  With @commit and no failure so far, a temporary file is
 * renamed into place; otherwise it is removed.  Returns the first failure of
 * any write, the close or the rename, else 0.
 */
MOE_API int moe_outfile_close(struct moe_outfile *o, bool commit);

/* ------------------------------------------------------- GGUF writer */
/* (section: gguf writer) */

/*
 * Writes GGUF v3 (little-endian) files: metadata in the order it was set,
 * tensor infos in the order they were added, each tensor's data at a
 * multiple of the alignment, zero padding.  Keys and tensor names must be
 * unique; a tensor name is shorter than MOE_GGUF_NAME_MAX bytes.
 * Threads: a writer is used by one thread at a time; writers are
 * independent.
 * Ownership: the writer copies keys, string values, names and the data of
 * moe_gguf_add_tensor(); the @ctx of moe_gguf_add_tensor_fill() stays the
 * caller's.  moe_gguf_writer_destroy() frees the writer, not a file written.
 */
struct moe_gguf_writer;

#define MOE_GGUF_NAME_MAX 64
#define MOE_GGUF_DEFAULT_ALIGNMENT 32

/* @alignment: a power of two (32 is GGUF's default; general.alignment is written otherwise). */
MOE_API int moe_gguf_writer_create(uint32_t alignment, struct moe_gguf_writer **out);
/* Free @w and all it copied; NULL is a no-op. */
MOE_API void moe_gguf_writer_destroy(struct moe_gguf_writer *w);

/*
 * Set metadata @key to @val, the GGUF type being the function's (u32, i32,
 * u64, f32, bool, string).  -EINVAL for an empty or too long key, or
 * general.alignment (the writer's alignment writes it); -EEXIST for a key
 * already set; -ENOMEM.
 */
MOE_API int moe_gguf_set_u32(struct moe_gguf_writer *w, const char *key, uint32_t val);
MOE_API int moe_gguf_set_i32(struct moe_gguf_writer *w, const char *key, int32_t val);
MOE_API int moe_gguf_set_u64(struct moe_gguf_writer *w, const char *key, uint64_t val);
MOE_API int moe_gguf_set_f32(struct moe_gguf_writer *w, const char *key, float val);
MOE_API int moe_gguf_set_bool(struct moe_gguf_writer *w, const char *key, bool val);
MOE_API int moe_gguf_set_str(struct moe_gguf_writer *w, const char *key, const char *val);
/* An array of a fixed-size element type (enum moe_meta_type, not STRING or ARRAY). */
MOE_API int moe_gguf_set_arr(struct moe_gguf_writer *w, const char *key, uint32_t elem_type,
			     const void *data, uint64_t n);
MOE_API int moe_gguf_set_arr_str(struct moe_gguf_writer *w, const char *key,
				 const char *const *strs, uint64_t n);

/*
 * Add a tensor whose data (rows of ne[0] elements of @type, ne[1]*ne[2]*ne[3]
 * rows) is copied now.  -EINVAL for a bad name, type or shape, -EEXIST for a
 * duplicate name.
 */
MOE_API int moe_gguf_add_tensor(struct moe_gguf_writer *w, const char *name, uint32_t type,
				uint32_t n_dims, const uint64_t *ne, const void *data);

/*
 * Produce rows [row, row + n_rows) of a tensor into @dst (n_rows * row bytes),
 * in order, during moe_gguf_write.  Returns 0 or -errno (recorded with a reason).
 */
typedef int (*moe_gguf_fill_fn)(void *ctx, uint64_t row, uint64_t n_rows, void *dst);

/*
 * Add a tensor whose data is produced while the file is written, a few MiB
 * at a time, so that writing a large model needs no copy of it in memory.
 * @ctx must stay valid until moe_gguf_write returns.
 */
MOE_API int moe_gguf_add_tensor_fill(struct moe_gguf_writer *w, const char *name, uint32_t type,
				     uint32_t n_dims, const uint64_t *ne, moe_gguf_fill_fn fill,
				     void *ctx);

/* Where the data section starts and how large the file will be, for what was added so far. */
MOE_API int moe_gguf_layout(const struct moe_gguf_writer *w, uint64_t *data_offset,
			    uint64_t *file_bytes);

/*
 * Write the file: into a temporary file beside @path, renamed over @path
 * once complete, so a failure never leaves a truncated model behind.
 */
MOE_API int moe_gguf_write(struct moe_gguf_writer *w, const char *path);

/* ------------------------------------------------------- quantization */
/* (section: quant) */

/*
 * CPU kernels exist for f32 f16 bf16 q4_0 q4_1 q5_0 q5_1 q8_0 q4_K q5_K q6_K
 * q8_K mxfp4; other ids give -EOPNOTSUPP, unknown ids -EINVAL.  @n must be a
 * multiple of the type's block (-EINVAL otherwise).  SIMD kernels (AVX2,
 * AVX-512, AVX-512 VNNI) are chosen once at run time, the best the CPU has;
 * MOE_CPU_ISA=scalar|avx2|avx512|avx512vnni in the environment forces one the
 * CPU has, MOE_NO_SIMD=1 the scalar ones.
 * Threads: the kernels, moe_matmul() and moe_dequant_row() are reentrant
 * (buffers are the caller's).  A thread pool runs one moe_threadpool_run()
 * at a time (another, nested or concurrent, runs on its caller alone) and
 * is destroyed by one thread when no run is in progress.
 */
/* The kernels in use: "scalar", "avx2", "avx512" or "avx512vnni". */
MOE_API const char *moe_cpu_isa(void);
/* Convert @n elements of @type at @src into floats at @dst; 0, or the errors above. */
MOE_API int moe_dequantize(uint32_t type, const void *src, float *dst, int64_t n);
/* Quantize @n floats into @dst; returns the bytes written. */
MOE_API int64_t moe_quantize(uint32_t type, const float *src, void *dst, int64_t n);

/* A fork-join thread pool; the caller of moe_threadpool_run is thread 0. */
struct moe_threadpool;
/* @n_threads <= 0: one thread per CPU this process may run on. */
MOE_API int moe_threadpool_create(int n_threads, struct moe_threadpool **out);
/* Stop and join the pool's threads (no run may be in progress); NULL is a no-op. */
MOE_API void moe_threadpool_destroy(struct moe_threadpool *tp);
/* Threads including the caller; 1 for a NULL pool. */
MOE_API int moe_threadpool_size(const struct moe_threadpool *tp);
/*
 * Run fn(arg, ith, nth) once for every slice ith < nth and return when all
 * are done.  A slice runs on whichever pool thread takes it first: the caller
 * takes slice 0 and then any a worker has not started, so a worker the
 * scheduler keeps waiting does not hold the run up; fn must therefore never
 * wait for another slice.  A run issued while the pool is busy (nested, or
 * from another thread) runs on its caller alone, as fn(arg, 0, 1).
 */
MOE_API void moe_threadpool_run(struct moe_threadpool *tp,
				void (*fn)(void *arg, int ith, int nth), void *arg);

/*
 * y[t*rows + r] = dot(row r of W, x[t*cols ...]) for t < n_tok, W being @rows
 * contiguous rows of @cols elements of type @wtype.  Activations are quantized
 * to q8_0 (for q4_0 q4_1 q5_0 q5_1 q8_0 mxfp4) or q8_K (K-quants) first, as
 * llama.cpp's CPU backend does; float weights use f32 activations.
 * @pool may be NULL (single thread).
 */
MOE_API int moe_matmul(struct moe_threadpool *pool, uint32_t wtype, const void *w, int64_t rows,
		       int64_t cols, const float *x, int64_t n_tok, float *y);
/* Dequantize row @row of a matrix with @cols columns (embedding lookups). */
MOE_API int moe_dequant_row(uint32_t type, const void *w, int64_t cols, int64_t row,
			    float *dst);

/* ------------------------------------------------------- I/O engine */
/* (section: io) */

/*
 * Reads extents of one file into (pinned) host memory without the page
 * cache: io_uring with registered files and buffers on an O_DIRECT
 * descriptor, falling back at run time to pread worker threads when
 * io_uring is refused and to buffered reads when O_DIRECT is refused (each
 * fallback logged once and named by moe_io_describe()).
 * Threads: moe_io_read*(), moe_io_submit(), moe_io_cancel_low(),
 * moe_io_promote(), moe_io_poll(), moe_io_wait() and the stats calls may be
 * called from any thread; callbacks run on the thread that polls or waits
 * (or on an engine thread with MOE_IO_CB_ENGINE_THREAD).  moe_io_destroy()
 * is called once, by one thread, when no other thread calls in any more.
 * Ownership: destination buffers stay the caller's and must stay valid until
 * their callback ran; memory of moe_io_alloc() is the engine's, returned with
 * moe_io_free() and gone with moe_io_destroy().
 */
struct moe_io;

enum moe_io_backend {
	MOE_IO_AUTO = 0,        /* io_uring, else pread workers */
	MOE_IO_URING = 1,       /* io_uring or fail */
	MOE_IO_PREAD = 2,       /* pread worker threads */
	MOE_IO_KMOD = 3,        /* through the moe.ko driver */
};

enum moe_io_direct {
	MOE_IO_DIRECT_AUTO = 0, /* O_DIRECT, else buffered; buffered on tmpfs/ramfs */
	MOE_IO_DIRECT_ON = 1,   /* O_DIRECT or fail */
	MOE_IO_DIRECT_OFF = 2,  /* buffered reads through the page cache */
};

enum moe_io_flags {
	/*
	 * Run completion callbacks on an engine thread as soon as a read ends
	 * instead of from moe_io_poll()/moe_io_wait() on the caller's thread.
	 * Callbacks may then read and submit, but must not wait or close.
	 */
	MOE_IO_CB_ENGINE_THREAD = 1u << 0,
};
#define MOE_IO_FLAGS_ALL (MOE_IO_CB_ENGINE_THREAD)

struct moe_io_params {
	uint32_t backend;       /* enum moe_io_backend (a fixed width in the ABI, not an enum) */
	uint32_t direct;        /* enum moe_io_direct */
	uint32_t queue_depth;   /* reads in flight at once; 0 = 32 */
	uint64_t max_request;   /* reads are split at this size (multiple of the block); 0 = 1 MiB */
	uint64_t staging_bytes; /* pinned pool behind moe_io_alloc(); 0 = 64 MiB */
	int numa_node;          /* -1: the node of the file's disk, else of the GPU (hwloc) */
	uint32_t n_workers;     /* pread workers; 0 = queue depth, at most 16 */
	uint32_t flags;         /* enum moe_io_flags */
	uint32_t pad;
	uint64_t reserved[4];
};

/* Fill @opts with the defaults (numa_node -1; a zeroed struct means node 0). */
MOE_API void moe_io_params_init(struct moe_io_params *opts);

/* Open @path for reading; @opts NULL = defaults.  -EPERM/-EINVAL when a forced path is refused. */
MOE_API int moe_io_open(const char *path, const struct moe_io_params *opts, struct moe_io **out);
/*
 * Cancel reads not yet started, wait for those in flight, and call every
 * remaining callback (res -ECANCELED for cancelled ones) on the calling
 * thread before returning.  Safe with reads in flight; NULL is a no-op.
 */
MOE_API void moe_io_destroy(struct moe_io *io);
/* Alignment unit of offsets and destination buffers (the device's logical block size). */
MOE_API uint32_t moe_io_block(const struct moe_io *io);
/* Bytes a destination needs to read [offset, offset+len) as the block-aligned superset. */
MOE_API uint64_t moe_io_span(const struct moe_io *io, uint64_t offset, uint64_t len);
/*
 * Block-aligned destination memory of @bytes into *out: from the engine's
 * staging pool (locked, huge pages when available, on the engine's NUMA
 * node, registered with the ring) while it lasts, else a separate mapping.
 * -ENOMEM when out of memory, -EINVAL for 0 bytes; *out is NULL then.
 */
MOE_API int moe_io_alloc(struct moe_io *io, uint64_t bytes, void **out);
/* Give back memory of moe_io_alloc(); NULL is a no-op, other memory is logged and kept. */
MOE_API void moe_io_free(struct moe_io *io, void *p);

/*
 * Completion: res is len or -errno (-ENODATA: the file ended before the
 * extent, -ECANCELED: closed before it started); interior points at byte
 * `offset` inside dst.  moe_errmsg() names the extent when res < 0.
 */
typedef void (*moe_io_cb)(void *arg, int64_t res, void *interior);

/*
 * Queue a read of [offset, offset+len) into @dst (capacity >= moe_io_span(),
 * aligned to moe_io_block()).  It starts at the next moe_io_submit(),
 * moe_io_poll() or moe_io_wait(); reads longer than max_request are split.
 * Thread-safe.  -EINVAL for an extent past the end of the file, a short or
 * misaligned buffer; -ESHUTDOWN while closing.
 */
MOE_API int moe_io_read(struct moe_io *io, uint64_t offset, uint64_t len, void *dst,
			uint64_t dst_cap, moe_io_cb cb, void *arg);

enum moe_io_read_flags {
	/*
	 * Low priority (prefetch): queued demand reads always start first, and
	 * low-priority reads leave a quarter of the queue depth to demand.
	 */
	MOE_IO_READ_LOW = 1u << 0,
};
#define MOE_IO_READ_FLAGS_ALL (MOE_IO_READ_LOW)

/* moe_io_read() with flags (enum moe_io_read_flags); -EINVAL for unknown flags. */
MOE_API int moe_io_read_flags(struct moe_io *io, uint64_t offset, uint64_t len, void *dst,
			      uint64_t dst_cap, uint32_t flags, moe_io_cb cb, void *arg);
/*
 * Cancel queued low-priority reads that have not started: those with callback
 * @cb (NULL: any) and, when @args is given, an argument among args[0..n).
 * With @args, either all n are cancelled or, when one of them has started or
 * is not queued at low priority, none.  A read handed to a backend that
 * queues prefetches itself (moe.ko's low-priority queue) counts as queued and
 * is taken back from there, unless the device begins it first: then it is
 * read, and fewer than n may be cancelled.  Each cancelled read's callback
 * gets -ECANCELED where its completion would have been delivered.  Returns
 * the number cancelled.
 */
MOE_API int moe_io_cancel_low(struct moe_io *io, moe_io_cb cb, void *const *args, uint32_t n);
/*
 * Make the matching queued low-priority reads (as for moe_io_cancel_low)
 * demand reads: a prefetch that the forward pass now waits for.  Returns how
 * many were found.
 */
MOE_API int moe_io_promote(struct moe_io *io, moe_io_cb cb, void *const *args, uint32_t n);
/* Start queued reads (up to the queue depth; the rest start as others complete). */
MOE_API int moe_io_submit(struct moe_io *io);
/* Call the callbacks of completed reads without blocking; returns how many. */
MOE_API int moe_io_poll(struct moe_io *io);
/*
 * Block until at least @min_completions reads completed during the call or
 * none is left outstanding; returns how many completed.  Callbacks run here,
 * or on engine threads with MOE_IO_CB_ENGINE_THREAD (then this only waits).
 */
MOE_API int moe_io_wait(struct moe_io *io, uint32_t min_completions);
/* Read synchronously; *interior = byte `offset` in dst (may be NULL).  0 or -errno. */
MOE_API int moe_io_read_sync(struct moe_io *io, uint64_t offset, uint64_t len, void *dst,
			     uint64_t dst_cap, void **interior);

struct moe_io_stats {
	uint64_t bytes;         /* extent bytes delivered by successful reads */
	uint64_t requests;      /* reads completed, failed ones included */
	uint64_t errors;
	double busy_s;          /* time with at least one read in flight */
	/*
	 * Bytes the backend copied from its own buffer to the caller's after
	 * the read (moe.ko without BO_USERPTR, or a buffer it cannot pin); 0
	 * while every read lands in place.
	 */
	uint64_t bytes_copied;
	uint64_t reserved[3];   /* zero; room for later counters */
};
/* The counters since open into @out; busy_s includes a read in flight now. */
MOE_API void moe_io_get_stats(const struct moe_io *io, struct moe_io_stats *out);
/* "io_uring, O_DIRECT, qd 32, node 0, ..." with the fallbacks taken and why. */
MOE_API const char *moe_io_describe(const struct moe_io *io);

/* Topology (hwloc): NUMA nodes, and the block and GPU devices with their nodes. */
struct moe_topo_info {
	uint32_t n_numa;
	uint32_t n_packages;
	uint32_t n_cores;
	uint32_t n_pus;
	char hwloc_version[16];
	uint64_t reserved[4];
};
/* The machine's counts and hwloc's version; a negative errno when hwloc cannot load them. */
MOE_API int moe_topo_info(struct moe_topo_info *out);

struct moe_topo_node {
	int32_t node;            /* OS index */
	uint32_t n_pus;
	uint64_t mem_bytes;
	char cpus[64];           /* "0-15,32-47" */
	uint64_t reserved[2];
};
/* Fill up to @max nodes; returns the number of NUMA nodes. */
MOE_API int moe_topo_nodes(struct moe_topo_node *out, uint32_t max);

struct moe_topo_device {
	char name[32];           /* "nvme0n1", "vda", "card0", "cuda0" */
	char kind[16];           /* "nvme", "block", "gpu", "coproc" */
	char pci[16];            /* PCI bus id, "" when not on PCI */
	int32_t numa_node;       /* -1: unknown */
	uint32_t pad;
	uint64_t reserved[2];
};
/* Fill up to @max devices (NVMe and other disks, GPUs); returns the number found. */
MOE_API int moe_topo_devices(struct moe_topo_device *out, uint32_t max);
/* The block device holding @path (partitions and device-mapper resolved to the disk). */
MOE_API int moe_topo_path(const char *path, struct moe_topo_device *out);
/* NUMA node nearest @path's device, or -ENOENT when that is unknown. */
MOE_API int moe_topo_path_node(const char *path);

/* ------------------------------------------------------- driver (moe.ko) */
/* (section: kmod) */

/*
 * A client of the moe.ko driver (Documentation/driver.rst): register a
 * model's expert extents with it, list registered models and their
 * counters.  Reads through the driver go through the I/O engine with
 * backend MOE_IO_KMOD.
 * Threads: a handle is used by one thread at a time; several handles (in
 * one process or many) may be open at once.
 * Ownership: registrations belong to the driver, not the handle: they stay
 * after moe_kmod_destroy() until moe_kmod_unregister().
 */
struct moe_kmod;

#define MOE_KMOD_NAME_MAX 63
#define MOE_KMOD_LAT_BUCKETS 16

struct moe_kmod_model_info {
	uint32_t id;
	uint32_t n_extents;
	char name[MOE_KMOD_NAME_MAX + 1];
	uint64_t file_size;
	uint64_t bytes;         /* read by completed requests */
	uint64_t requests;      /* completed requests */
	uint64_t errors;
	uint64_t inflight;
	uint64_t lat_hist[MOE_KMOD_LAT_BUCKETS]; /* bucket i: [2^i, 2^(i+1)) microseconds */
	uint32_t n_meta;        /* metadata extents: non-zero when it opens as "moe:NAME" */
	uint32_t reserved32;
	uint64_t reserved[3];
};

/*
 * Open the driver's node (found by driver name "moe").  -ENODEV when the
 * driver is not loaded, -EACCES when the node is not accessible; moe_errmsg()
 * says what to do.
 */
MOE_API int moe_kmod_open(struct moe_kmod **out);
/* Close the driver's node and free @k (registrations stay); NULL is a no-op. */
MOE_API void moe_kmod_destroy(struct moe_kmod *k);
/*
 * Register @model under @name: its header and tensor table, every tensor
 * besides the routed experts, and every routed expert matrix, widened to
 * the driver's alignment; the driver keeps its own reference to the file.
 * Then moe_model_open("moe:NAME") and moe_io_open("moe:NAME") read the model
 * through the driver alone, for users who cannot read the file.  Needs
 * CAP_SYS_ADMIN (-EPERM).  *id may be NULL.
 */
MOE_API int moe_kmod_register(struct moe_kmod *k, const char *name,
			      const struct moe_model *model, uint32_t *id);
/* Unregister by name; -ENOENT when no model has it.  Reads in flight finish. */
MOE_API int moe_kmod_unregister(struct moe_kmod *k, const char *name);
/* The registered model named @name, or -ENOENT. */
MOE_API int moe_kmod_find(struct moe_kmod *k, const char *name, struct moe_kmod_model_info *out);
/* The registered model with the smallest id above @after (0: the first), or -ENOENT. */
MOE_API int moe_kmod_next(struct moe_kmod *k, uint32_t after, struct moe_kmod_model_info *out);
/*
 * Read every extent of the registered model @name once through the driver
 * (a check that all of it is readable, and a warm-up of the device path);
 * *bytes and *seconds may be NULL.
 */
MOE_API int moe_kmod_warm(struct moe_kmod *k, const char *name, uint64_t *bytes,
			  double *seconds);

/* ------------------------------------------------------- tokenizer */
/* (section: tokenizer) */

/*
 * A tokenizer built from a model's tokenizer.ggml.* metadata: SentencePiece
 * ("llama"), byte-level BPE ("gpt2", with the tokenizer.ggml.pre split) or
 * Gemma 4 ("gemma4").  Immutable once loaded: one may serve many threads.
 * Independent of the model handle after loading.
 * Threads: any number of threads may use one tokenizer at once; a struct
 * moe_detok_state belongs to one thread.  moe_tokenizer_destroy() comes after
 * the last use.
 * Ownership: output buffers are the caller's; moe_chat_render()'s *out is
 * malloc'ed for the caller to free().
 */
struct moe_tokenizer;

/* -ENOENT for models without a tokenizer, -EOPNOTSUPP for unknown kinds, -EINVAL for bad arrays. */
MOE_API int moe_tokenizer_load(const struct moe_model *model, struct moe_tokenizer **out);
/* Free @t; NULL is a no-op. */
MOE_API void moe_tokenizer_destroy(struct moe_tokenizer *t);

enum moe_tok_flags {
	MOE_TOK_ADD_BOS = 1u << 0,       /* put the BOS token first */
	MOE_TOK_PARSE_SPECIAL = 1u << 1, /* control tokens written in the text become tokens */
};
#define MOE_TOK_FLAGS_ALL (MOE_TOK_ADD_BOS | MOE_TOK_PARSE_SPECIAL)

/*
 * Tokenize @len bytes of UTF-8 @text into @ids.  Returns the number of ids;
 * with @ids NULL only counts them.  -ENOSPC when more than @max_ids are
 * needed (moe_errmsg() says how many), -EILSEQ for invalid UTF-8.
 * User-defined tokens are always matched whole; control tokens only with
 * MOE_TOK_PARSE_SPECIAL.
 */
MOE_API int moe_tokenize(const struct moe_tokenizer *t, const char *text, size_t len,
			 uint32_t flags, int32_t *ids, int max_ids);

/*
 * The bytes of one token (control tokens as their text), not
 * NUL-terminated.  Returns the length; -ENOSPC if @len is too small
 * (@buf NULL and @len 0 ask for the length).  A piece may be part of a UTF-8
 * sequence: use moe_detok_stream() to print tokens as they come.
 */
MOE_API int moe_token_to_piece(const struct moe_tokenizer *t, int32_t id, char *buf, int len);

enum moe_detok_flags {
	MOE_DETOK_SPECIAL = 1u << 0,  /* render control tokens (BOS, end of turn...) as text */
};
#define MOE_DETOK_FLAGS_ALL (MOE_DETOK_SPECIAL)

/*
 * Text of @n_ids tokens, not NUL-terminated; the space SentencePiece puts
 * before the text is removed.  Returns the length, -ENOSPC if @len is too
 * small (@buf NULL and @len 0 ask for the length), -EINVAL for a bad id.
 */
MOE_API int moe_detokenize(const struct moe_tokenizer *t, const int32_t *ids, int n_ids,
			   uint32_t flags, char *buf, int len);

/* State of a streaming detokenizer; zero it (flags: enum moe_detok_flags) before use. */
struct moe_detok_state {
	uint32_t flags;
	uint32_t n;           /* bytes pending */
	char pending[4];      /* the start of a UTF-8 sequence not complete yet */
	uint32_t started;
	uint64_t reserved[2];
};

/*
 * Feed one token; writes the bytes that are complete UTF-8 so far and
 * returns their count (holding back a sequence split across tokens).
 * @id -1 flushes what is pending at the end of the stream.  -ENOSPC if
 * @len is too small (the token is not consumed); 16 + the longest token
 * always suffices.
 */
MOE_API int moe_detok_stream(const struct moe_tokenizer *t, struct moe_detok_state *st,
			     int32_t id, char *buf, int len);

/* Tokens in the vocabulary (ids 0 .. size-1). */
MOE_API int moe_tokenizer_vocab_size(const struct moe_tokenizer *t);
/* BOS / EOS ids, -ENOENT when the vocabulary has none. */
MOE_API int moe_tokenizer_bos(const struct moe_tokenizer *t);
MOE_API int moe_tokenizer_eos(const struct moe_tokenizer *t);
/* Whether the model expects BOS first (tokenizer.ggml.add_bos_token or its default). */
MOE_API bool moe_tokenizer_add_bos(const struct moe_tokenizer *t);
/* End of generation: EOS, EOT/EOM, and the family's end-of-turn tokens. */
MOE_API bool moe_tokenizer_is_eog(const struct moe_tokenizer *t, int32_t id);
/* The id of the token whose text is exactly @text, or -ENOENT. */
MOE_API int moe_tokenizer_find(const struct moe_tokenizer *t, const char *text);

/* One chat message; role is "system", "user" or "assistant". */
struct moe_chat_msg {
	const char *role;
	const char *content;
	uint64_t reserved[2];
};

/*
 * Render a conversation in the model's prompt format (Llama 3/4, Qwen3
 * ChatML, gpt-oss harmony, Mistral/Mixtral [INST], Gemma 4, DeepSeek-V2 and
 * V3/R1, GLM-4.5, Kimi K2), chosen from tokenizer.chat_template and the
 * architecture.  The result starts with the
 * BOS text where the format writes it, so tokenize it with
 * MOE_TOK_PARSE_SPECIAL and without MOE_TOK_ADD_BOS.  With
 * @add_assistant_prefix the prompt ends where the assistant's reply starts.
 * *out is malloc'ed (free() it); returns its length.  -EOPNOTSUPP when the
 * format is unknown.
 */
MOE_API int moe_chat_render(const struct moe_tokenizer *t, const struct moe_chat_msg *msgs,
			    int n_msgs, bool add_assistant_prefix, char **out);
/* Name of the chosen format ("chatml", "llama3", "llama4", "harmony", "mistral", "gemma4",
 * "deepseek2", "deepseek3", "glm4", "kimi-k2"), or "none". */
MOE_API const char *moe_chat_format(const struct moe_tokenizer *t);

/* ------------------------------------------------------- grammar */
/* (section: grammar) */

/*
 * Grammars that constrain generated text (Documentation/structured-output.rst).
 * A grammar is written in GBNF, the notation of llama.cpp: rules
 * `name ::= alternatives`, "literals" with \n \t \" \xHH \uHHHH escapes,
 * [classes] with ranges and ^ negation, . for any character, ( groups ),
 * the repetitions * + ? {m} {m,} {m,n}, # comments; the document matches the
 * rule `root`.  Classes match code points of UTF-8 text.  A moe_grammar is a
 * compiled grammar together with the state of one document being matched:
 * one thread at a time; clone it for another sequence (the compiled rules
 * are shared, not copied).
 */
struct moe_grammar;

/*
 * Compile @len bytes of GBNF @text into a grammar at the start of a
 * document.  -EINVAL with moe_errmsg() "grammar:LINE:COL: problem" for a
 * syntax error, an undefined rule, a missing root, a left-recursive rule or
 * a repetition of something that can match nothing.
 */
MOE_API int moe_grammar_create(const char *text, size_t len, struct moe_grammar **out);
/*
 * The GBNF text of a built-in grammar: "json" (any JSON value) or
 * "json-object" (a JSON object, what response_format json_object asks for).
 * -ENOENT for another name.
 */
MOE_API int moe_grammar_builtin(const char *name, const char **text);
/* A grammar in the same state as @g, sharing its compiled rules. */
MOE_API int moe_grammar_clone(const struct moe_grammar *g, struct moe_grammar **out);
/* Back to the start of a document. */
MOE_API int moe_grammar_reset(struct moe_grammar *g);
MOE_API void moe_grammar_destroy(struct moe_grammar *g);
/*
 * Advance over @len bytes of text (any split: a UTF-8 character may span
 * calls).  -EILSEQ when the bytes cannot continue the document (the state is
 * then unchanged), -E2BIG when the grammar is too ambiguous for them (over
 * 2048 parses alive at once, or nesting over 1024 deep).
 */
MOE_API int moe_grammar_accept(struct moe_grammar *g, const char *bytes, size_t len);
/*
 * Whether moe_grammar_accept would take these bytes; the state does not
 * change (@g is not const: it keeps scratch memory).
 */
MOE_API bool moe_grammar_allows(struct moe_grammar *g, const char *bytes, size_t len);
/* Whether the text so far is a whole document of the grammar. */
MOE_API bool moe_grammar_is_complete(const struct moe_grammar *g);
/* Whether any further text can be accepted (false: the document can only end here). */
MOE_API bool moe_grammar_can_continue(const struct moe_grammar *g);

/* ------------------------------------------------------- inference engine */
/* (section: engine) */

/*
 * An inference context: the model's resident tensors read once into device
 * memory (the CPU backend's "device" is host memory with its own budget),
 * a KV cache of n_ctx cells, and routed experts streamed through an expert
 * cache of fixed slots that fills whatever of the budget is left.
 * Activations and the KV cache are F32; matmuls use the quant kernels
 * (moe_matmul), which round activations to the weight type's vec_dot type.
 * Threads: a context is used by one thread at a time (its getters too, while
 * an eval runs); different contexts run at the same time, also on one model
 * (see moe_ctx_create()).  The hooks run on the evaluating thread.  A
 * sampler belongs to one thread.
 * Ownership: the context owns its memory; what its getters return (logits,
 * the plan, strings, routing statistics) is valid until the next eval, or
 * moe_ctx_destroy() for the plan and strings.  Parameter structs and their
 * strings are copied at creation.
 */
struct moe_ctx;

enum moe_ctx_flags {
	/* read no expert at creation: not all when all fit, nor the popular ones of saved stats */
	MOE_CTX_LAZY_EXPERTS = 1u << 0,
	/* expert slots in one pool per layer instead of one per expert size */
	MOE_CTX_LAYER_POOLS = 1u << 1,
	/* publish no live counters for `moectl status` (see moe_engine_list) */
	MOE_CTX_NO_PUBLISH = 1u << 2,
};
#define MOE_CTX_FLAGS_ALL (MOE_CTX_LAZY_EXPERTS | MOE_CTX_LAYER_POOLS | MOE_CTX_NO_PUBLISH)

/* moe_ctx_params.gds: GPUDirect Storage for expert reads (CUDA backend). */
enum moe_gds {
	MOE_GDS_AUTO = 0,           /* where cuFile loads and its driver opens, else staging */
	MOE_GDS_ON = 1,             /* required: creating the context fails without it */
	MOE_GDS_OFF = 2,            /* never: reads go through pinned host staging */
};

struct moe_ctx_params {
	uint64_t vram_bytes;        /* device budget; 0 = no limit (every expert resident) */
	uint64_t host_cache_bytes;  /* tier 1: evicted experts kept in pinned host memory */
	int32_t n_threads;          /* <= 0: every CPU */
	uint32_t n_ctx;             /* KV cells (positions); 0 = min(training context, 4096) */
	uint32_t n_batch;           /* prompt tokens per forward step; 0 = 64 */
	uint32_t attn_chunk;        /* llama4 chunked-attention size; 0 = the model's (8192) */
	uint32_t n_staging;         /* experts fetched at once (pinned staging); 0 = about 64 MiB
				       of them, 4 to 32 and at least one token's experts */
	uint32_t flags;             /* enum moe_ctx_flags */
	const char *policy;         /* eviction policy, NULL = "stats": moe_policy_names(), options
				       after ':' ("lfu:decay=0.9") */
	struct moe_io_params io;    /* how experts and resident tensors are read */
	const char *backend;        /* "cpu", "auto" (NULL = "auto"): see moe_backend_list() */
	uint32_t kv_type;           /* KV cache element type: MOE_TYPE_F32 (0), F16 or Q8_0 */
	uint32_t n_seq;             /* sequences with a KV cache of their own; 0 = 1 */
	/*
	 * Fetching experts before the router asks: "none" (NULL), or a name of
	 * moe_prefetch_names() with options, e.g. "mix:depth=2,min=0.6,budget=4"
	 * (Documentation/design.rst).
	 */
	const char *prefetch;
	/*
	 * Routing statistics are loaded from this directory at creation (they
	 * warm the cache and the predictor) and saved back by moe_ctx_destroy();
	 * NULL: recorded, but neither loaded nor saved.  See moe_state_dir().
	 */
	const char *state_dir;
	uint32_t pin_hot;           /* device slots held for good by the most used experts */
	/*
	 * How missing experts reach device memory, enum moe_gds: GPUDirect
	 * Storage (cuFile) reads them from the file straight into the expert
	 * slots; MOE_GDS_AUTO (0) uses it where libcufile.so.0 (or
	 * $MOE_CUFILE_LIBRARY) loads and its driver opens, else pinned staging;
	 * MOE_GDS_ON makes moe_ctx_create() fail, naming why, where it cannot;
	 * MOE_GDS_OFF always stages.  moe_ctx_stats.expert_io says which ran.
	 */
	uint32_t gds;
	/*
	 * Gemma 4 E2B/E4B: host memory for per-layer embedding rows cached by
	 * token; 0 = 4096 rows (or the whole table when smaller).  It must hold
	 * one step's tokens (n_batch rows).
	 */
	uint64_t ple_cache_bytes;
	uint64_t reserved[2];
};

/* Defaults for every field (the I/O options from moe_io_params_init). */
MOE_API void moe_ctx_params_init(struct moe_ctx_params *p);

/* The backends built into this library, "cpu, cuda" style, for messages and --help. */
MOE_API const char *moe_backend_list(void);

/* A GPU as the CUDA driver describes it. */
struct moe_cuda_device {
	char name[128];             /* "NVIDIA H100 80GB HBM3" */
	char pci[16];               /* PCI address, "0000:3b:00.0" (lower case, as sysfs) */
	uint64_t total_mem;         /* device memory in bytes */
	int32_t cc_major, cc_minor; /* compute capability */
	int32_t sm_count;
	int32_t driver_version;     /* cuDriverGetVersion: 12040 for CUDA 12.4 */
	uint64_t reserved[4];
};
/*
 * The GPUs the CUDA driver sees (the library the CUDA backend loads:
 * libcuda.so.1, or $MOE_CUDA_LIBRARY), up to @max of them into @out; returns
 * how many there are.  -ENOENT without a CUDA driver, -ENODEV when it sees
 * no GPU, with moe_errmsg() saying why.  Creates no context.
 */
MOE_API int moe_cuda_devices(struct moe_cuda_device *out, uint32_t max);

/*
 * The memory plan of a context: every byte, decided before anything is
 * allocated.  moe_ctx_create() lays device memory out exactly so (one
 * allocation of device_bytes, less the resident tensors that CPU contexts of
 * one model share), so a plan made ahead, e.g. by `moectl plan`,
 * is what a run will use.
 */
#define MOE_PLAN_MAX_CLASSES 8

/* Expert slots of one size: experts whose matrices take the same bytes. */
struct moe_plan_class {
	uint64_t slot_bytes;        /* one expert's matrices, each aligned for the device */
	uint32_t n_experts;         /* routed experts of this size in the model */
	uint32_t n_slots;           /* device slots */
	uint32_t n_host_slots;      /* host-tier slots */
	uint32_t max_used;          /* most experts one token uses in a layer of this class */
	uint64_t reserved[2];
};

struct moe_plan {
	char backend[16];           /* the backend the plan is for */
	uint64_t vram_budget;       /* the budget asked for; 0 = unlimited */
	uint64_t device_bytes;      /* all device memory: the sum of the five parts below */
	uint64_t resident_bytes;    /* non-expert tensors in device memory (vectors as f32) */
	uint64_t kv_bytes;          /* KV cache, rings for windowed layers */
	uint64_t scratch_bytes;     /* activations of one forward step */
	uint64_t workspace_bytes;   /* the backend's own temporaries */
	uint64_t slot_bytes;        /* every expert slot */
	uint64_t resident_file_bytes;  /* the resident tensors as stored in the file */
	uint64_t kv_full_bytes;     /* the KV cache with n_ctx f32 cells on every layer */
	uint64_t expert_bytes;      /* every routed expert, as device slots would hold them */
	uint32_t n_ctx, n_batch, n_seq, kv_type;
	uint32_t n_experts, n_slots, n_host_slots, n_classes;
	struct moe_plan_class classes[MOE_PLAN_MAX_CLASSES];
	uint32_t n_staging;         /* experts read at once */
	uint32_t pad;
	uint64_t staging_bytes;     /* pinned host staging of the I/O engine, outside the budget */
	uint64_t host_cache_bytes;  /* the host tier, outside the budget */
	uint64_t host_bytes;        /* other host memory: logits, tables */
	bool all_experts;           /* every expert has a slot: nothing is ever evicted */
	uint8_t pad2[7];
	char why[320];              /* what was chosen and why, one line */
	/*
	 * Gemma 4 E2B/E4B: the per-layer embedding table stays in the file;
	 * each token's row (all layers) is read once and cached by token in
	 * host memory (outside the budget), a step's rows staged in scratch.
	 */
	uint64_t ple_row_bytes;     /* one token's row as stored */
	uint64_t ple_cache_bytes;   /* the host cache of rows */
	uint32_t ple_cache_rows;
	/*
	 * Dense FFNs (layers without a router) that the budget cannot keep
	 * resident stream like experts: each is a cache entry that every token
	 * uses, in a size class of its own, fetched one layer ahead.
	 */
	uint32_t n_dense_ffn;       /* layers with a dense FFN */
	uint32_t n_dense_streamed;  /* ... of them streamed, not resident */
	uint32_t pad3;
	uint64_t dense_streamed_bytes;  /* the streamed FFNs' matrices as slots hold them */
	uint64_t reserved[3];
};

/*
 * Plan a context for @model with @p (NULL: defaults) without allocating
 * anything.  -ENOMEM (moe_errmsg() has the breakdown and the smallest
 * budget that works) when the budget cannot hold the resident tensors, the
 * KV cache, scratch and one token's experts of every size class.
 */
MOE_API int moe_plan(const struct moe_model *model, const struct moe_ctx_params *p,
		     struct moe_plan *out);
/*
 * Plan the budget, read the resident tensors and (when they all fit) every
 * expert.  -ENOMEM with the bytes needed when the budget cannot hold the
 * resident tensors, the KV cache, scratch and one token's experts of a layer;
 * -EOPNOTSUPP for an architecture without a forward pass.  The model must stay
 * open while the context lives.
 *
 * Contexts on one model handle may be created, used and destroyed on
 * different threads at the same time.  On the CPU backend those whose plans
 * lay the resident tensors out alike (the same tensors resident; budgets
 * and n_ctx may differ) share one read-only copy of them, read by the first
 * and kept until the last is destroyed (moe_ctx_stats.resident_shared); each
 * budget still counts them.  A CUDA context holds its own copy on its device.
 */
MOE_API int moe_ctx_create(struct moe_model *model, const struct moe_ctx_params *p,
			   struct moe_ctx **out);
/* Free @ctx and all it holds (its share of the resident tensors last); NULL is a no-op. */
MOE_API void moe_ctx_destroy(struct moe_ctx *ctx);

enum moe_eval_flags {
	MOE_EVAL_ALL_LOGITS = 1u << 0,   /* keep the logits of every token, not just the last */
};

/*
 * Evaluate @n tokens at positions pos .. pos+n-1 (pos at most the number of
 * positions already evaluated: a smaller pos rewinds).  -EINVAL for a token
 * id outside the vocabulary, -ENOSPC past n_ctx.
 */
MOE_API int moe_ctx_eval(struct moe_ctx *ctx, const int32_t *tokens, uint32_t n, uint32_t pos,
			 uint32_t flags);
/*
 * Tokens of one or more sequences (each with a KV cache of its own: see
 * moe_ctx_params.n_seq) evaluated together, so each expert a layer needs is
 * fetched and run once for all of them.  Within a sequence, tokens come in
 * order at consecutive positions, the first at most moe_ctx_seq_pos() (a
 * smaller one rewinds that sequence).  Batches longer than n_batch run in
 * several steps.
 */
struct moe_batch {
	const int32_t *tokens;
	const int32_t *pos;         /* per token */
	const int32_t *seq;         /* per token, 0 .. n_seq-1; NULL: all sequence 0 */
	const uint8_t *logits;      /* per token, non-zero: keep its logits; NULL: the last token
				       of each sequence in the batch */
	uint32_t n;
	uint32_t pad;
	uint64_t reserved[4];
};

/* -EINVAL names the first bad token, sequence or position; -ENOSPC past n_ctx. */
MOE_API int moe_ctx_eval_batch(struct moe_ctx *ctx, const struct moe_batch *b);
/* Positions evaluated so far in sequence @seq; -EINVAL for a sequence >= n_seq. */
MOE_API int moe_ctx_seq_pos(const struct moe_ctx *ctx, uint32_t seq);

/*
 * Logits of kept row @i of the last eval: token i with ALL_LOGITS, else the
 * last token (i = 0); for a batch, the i-th kept token in batch order.
 */
MOE_API const float *moe_ctx_logits(const struct moe_ctx *ctx, uint32_t i);
/* The vocabulary size: the length of each logits row. */
MOE_API uint32_t moe_ctx_n_vocab(const struct moe_ctx *ctx);
/* KV cells (positions) per sequence. */
MOE_API uint32_t moe_ctx_n_ctx(const struct moe_ctx *ctx);
/* Positions evaluated so far (the next position to evaluate). */
MOE_API uint32_t moe_ctx_n_past(const struct moe_ctx *ctx);

struct moe_ctx_stats {
	uint64_t prefill_tokens;    /* tokens of evals with more than one token */
	uint64_t decode_tokens;     /* tokens of single-token evals */
	double prefill_s, decode_s;
	double prefill_tps, decode_tps;
	uint64_t expert_hits, expert_misses, expert_evictions;
	uint64_t expert_host_hits;  /* misses served from the host cache, without a read */
	double hit_rate;            /* device hits / (hits + misses); 1 when nothing was asked */
	uint64_t bytes_read;        /* bytes read from the model file since the last reset */
	double read_s;              /* time with a read in flight */
	double read_gbps;           /* bytes_read / read_s / 1e9 */
	double stall_s;             /* time the forward pass waited for experts */
	uint64_t vram_budget;       /* 0: unlimited */
	uint64_t vram_used;
	uint64_t vram_peak;         /* most device memory held at once */
	uint64_t resident_bytes;    /* non-expert tensors */
	uint64_t kv_bytes;
	uint64_t scratch_bytes;
	uint64_t slot_bytes;        /* one expert slot */
	uint32_t n_slots;
	uint32_t n_experts;         /* routed experts in the model */
	uint64_t staging_bytes;     /* pinned host staging, outside the budget */
	uint64_t host_bytes;        /* other host memory outside the budget (logits, tables) */
	uint64_t host_cache_bytes;  /* the host cache (tier 1), outside the budget */
	char backend[16];           /* the backend that ran ("cpu", "cuda") */
	uint64_t prefetches;        /* experts fetched ahead of their layer */
	uint64_t prefetch_used;     /* ... that a layer then used */
	uint64_t prefetch_cancelled;   /* ... withdrawn before their read started */
	uint64_t prefetch_bytes;    /* bytes read or uploaded for prefetches */
	uint64_t prefetch_unused_bytes;  /* ... of experts evicted without being used */
	double prefetch_precision;  /* used / (prefetches - cancelled); 0 without prefetches */
	double prefetch_recall;     /* used / (used + misses): the misses prefetching avoided */
	/* streamed dense FFNs (not in the expert counters above; prefetches include them) */
	uint64_t dense_hits, dense_misses;
	uint64_t dense_prefetch_used;   /* hits on dense FFNs fetched ahead of their layer */
	/* the device's own count (cuMemGetInfo); 0 where the device is host memory (cpu) */
	uint64_t device_total;
	uint64_t device_free_before;    /* free before the context allocated anything */
	uint64_t device_free_after;     /* free once the resident weights were loaded */
	char expert_io[16];             /* how misses reach the device: "staging", "gds" */
	/*
	 * Bytes of resident tensors held once for all the CPU contexts of the
	 * model (0: the context holds its own copy).  vram_used still counts
	 * them, as the plan does: each context's budget holds them.
	 */
	uint64_t resident_shared;
	/* bytes of bytes_read copied between host buffers on their way in (moe_io_stats) */
	uint64_t bytes_copied;
	uint64_t reserved[3];
};
/*
 * The counters since creation or the last moe_ctx_reset_stats(), and the
 * memory figures as they are now, into @out; 0.
 */
MOE_API int moe_ctx_get_stats(const struct moe_ctx *ctx, struct moe_ctx_stats *out);

/*
 * Live engines.  Every context publishes its counters in a small file of
 * the runtime directory, engine-PID-N.stat (N counts the contexts of the
 * process), for `moectl status`: a fixed layout with a magic, a version and
 * a sequence counter that is odd while the engine writes, so that a reader
 * never sees a torn update.  The engine writes it at most every 100 ms while
 * it evaluates and at the end of each generation (a memory store into a
 * shared mapping, no system call), and removes it in moe_ctx_destroy().
 * MOE_CTX_NO_PUBLISH or MOE_NO_PUBLISH=1 in the environment turns it off; a
 * directory that cannot be written only costs a debug-level message.
 */
struct moe_engine_info {
	int32_t pid;                /* the process */
	uint32_t id;                /* the context's number in the process */
	uint64_t start_ns;          /* CLOCK_REALTIME when the context was made */
	uint64_t update_ns;         /* ... and when the counters were last written */
	uint32_t busy;              /* 1 while an eval is running */
	uint32_t n_slots;           /* device expert slots */
	char model[512];            /* the model file, as the engine opened it */
	char backend[16];           /* "cpu", "cuda" */
	uint64_t tokens;            /* tokens evaluated since the context was made */
	double tokens_per_s;        /* ... per second between the last two writes */
	uint64_t prefill_tokens, decode_tokens;   /* since the last moe_ctx_reset_stats */
	double decode_tps;          /* ... and the decode rate over that time */
	/* the cache and I/O counters of moe_ctx_stats, since the last reset */
	double hit_rate;
	uint64_t expert_hits, expert_misses;
	uint64_t bytes_read;
	double read_gbps;
	uint64_t prefetches;
	double prefetch_precision;
	double stall_s;
	uint64_t vram_budget;       /* 0: unlimited */
	uint64_t vram_used, vram_peak;
	uint64_t host_budget;       /* the host cache asked for (tier 1) */
	uint64_t host_used;         /* host memory held: staging, host cache, logits */
	uint64_t bytes_copied;      /* moe_ctx_stats.bytes_copied: 0 while reads land in place */
	uint64_t reserved[7];
};
/*
 * The directory engines publish in: $MOE_RUNTIME_DIR, else /run/moe when
 * this process may write there, else $XDG_RUNTIME_DIR/moe, else
 * /tmp/moe-UID.  Only names it; -ENAMETOOLONG when @len is too short.
 */
MOE_API int moe_runtime_dir(char *buf, size_t len);
/*
 * Read one engine's file.  -EINVAL (moe_errmsg() says why) for a file that
 * is not one (magic, version, size, values out of range), -ESRCH for one
 * left by a process that has ended (or whose pid another process now has),
 * -EAGAIN when the engine was writing through every try, -errno of open.
 */
MOE_API int moe_engine_read(const char *path, struct moe_engine_info *out);
/*
 * The live engines of this machine, ordered by pid and id: those in
 * $MOE_RUNTIME_DIR when it is set, else in each of /run/moe,
 * $XDG_RUNTIME_DIR/moe and /tmp/moe-UID.  Files of ended processes are
 * removed where this process may; files that are not engines' are skipped.
 * Returns how many there are (up to @max are stored in @out).
 */
MOE_API int moe_engine_list(struct moe_engine_info *out, uint32_t max);

/* One layer's share of the counters. */
struct moe_ctx_layer_stats {
	uint64_t hits, misses;      /* demand uses of the layer's experts */
	uint64_t prefetch_used;     /* hits on experts prefetched for it */
	double stall_s;             /* time the layer waited for its experts */
	uint64_t reserved[4];
};
/* -EINVAL for a layer out of range; a dense layer has zeros. */
MOE_API int moe_ctx_layer_stats(const struct moe_ctx *ctx, uint32_t layer,
				struct moe_ctx_layer_stats *out);
/* Zero the counters (not the plan); e.g. between prefill and a timed decode. */
MOE_API void moe_ctx_reset_stats(struct moe_ctx *ctx);
/* One line: backend, budget split, slots, I/O path. */
MOE_API const char *moe_ctx_describe(const struct moe_ctx *ctx);
/* The plan the context was made with. */
MOE_API const struct moe_plan *moe_ctx_plan(const struct moe_ctx *ctx);
/* The backend that runs the context ("cpu", "cuda"). */
MOE_API const char *moe_ctx_backend(const struct moe_ctx *ctx);
/* The eviction policies of the live cache, "lru, lfu, stats", and the prefetchers. */
MOE_API const char *moe_policy_names(void);
MOE_API const char *moe_prefetch_names(void);

/*
 * Token sampling, in this order: repetition penalty, top-k, temperature,
 * top-p, min-p.  With a grammar, only tokens whose bytes continue the
 * document are drawn, and an end-of-generation token only where the document
 * is complete: a draw is checked against the grammar and redrawn without the
 * rejected token (the order above kept), and only when no kept candidate
 * fits are the whole vocabulary's tokens checked.  The sampler works on its
 * own clone of @grammar, taken in the state it has when the sampler is made
 * (a prefix already accepted stays accepted); @tokenizer gives the tokens'
 * bytes and must outlive the sampler.
 */
struct moe_sample_params {
	float temp;                 /* <= 0: greedy (argmax, ties to the lowest id) */
	int32_t top_k;              /* 0: off */
	float top_p;                /* 1: off */
	float min_p;                /* 0: off */
	float repeat_penalty;       /* 1: off */
	int32_t repeat_last_n;      /* 0: off */
	uint64_t seed;
	const struct moe_grammar *grammar;      /* NULL: unconstrained */
	const struct moe_tokenizer *tokenizer;  /* needed with a grammar */
	uint64_t reserved[2];
};
/* Greedy defaults: temp 0, top_k 0, top_p 1, min_p 0, no penalty, seed 0. */
MOE_API void moe_sample_params_init(struct moe_sample_params *p);

/*
 * A sampler of its own, for callers that run their own decode loop (one per
 * sequence of a batch).  Not thread-safe; one per sequence.  -EINVAL (with
 * moe_errmsg() naming the parameter) for parameters out of range.
 */
struct moe_sampler;
/*
 * A sampler over @n_vocab logits with @p into *out.  -EINVAL for a NULL @p
 * or @out, n_vocab past INT32_MAX or the parameters above; -ENOMEM.
 */
MOE_API int moe_sampler_new(const struct moe_sample_params *p, uint32_t n_vocab,
			    struct moe_sampler **out);
/*
 * A token id drawn from @logits [n_vocab] (not modified), or -EINVAL when no
 * logit is a finite number.  NaN and -inf logits are never chosen, so a
 * caller masks tokens out by setting their logits to -INFINITY.  With a
 * grammar the token drawn is also fed to the sampler's grammar; -EILSEQ
 * when no token of the vocabulary can continue the document (or end it).
 */
MOE_API int32_t moe_sampler_sample(struct moe_sampler *s, const float *logits);
/*
 * The sampler's grammar in its current state (NULL without one): whether
 * the document is complete or can go on, for a decode loop to stop when it
 * can only end.  It stays the sampler's; do not destroy it.
 */
MOE_API struct moe_grammar *moe_sampler_grammar(struct moe_sampler *s);
/* Record a token of the sequence (prompt and sampled) for the repetition penalty. */
MOE_API void moe_sampler_accept(struct moe_sampler *s, int32_t token);
/* Free @s; NULL is a no-op. */
MOE_API void moe_sampler_destroy(struct moe_sampler *s);

/*
 * Called after every eval of moe_ctx_generate: @logits holds @n_rows rows of
 * n_vocab (every prompt position with MOE_EVAL_ALL_LOGITS, else the last),
 * and @next is the token sampled from the last row.  Return non-zero to
 * stop (e.g. at an end-of-sequence token); that token is still counted.
 */
typedef int (*moe_gen_cb)(void *arg, const float *logits, uint32_t n_rows, int32_t next);

/*
 * Evaluate @prompt from position 0, then sample and feed back up to @n_gen
 * tokens (the last one sampled is not evaluated).  @flags: enum
 * moe_eval_flags for the prompt.  Returns the number of tokens generated.
 * With a grammar in @sp, generation also ends after an end-of-generation
 * token or once the document can only end; when @n_gen runs out first the
 * document is incomplete (a caller that must tell the two apart runs its own
 * loop with moe_sampler_new() and moe_sampler_grammar()).
 */
MOE_API int moe_ctx_generate(struct moe_ctx *ctx, const int32_t *prompt, uint32_t n_prompt,
			     uint32_t n_gen, const struct moe_sample_params *sp, uint32_t flags,
			     moe_gen_cb cb, void *arg);
/*
 * The same, keeping the first @pos positions already in the KV cache (a
 * conversation's earlier turns): @prompt is evaluated at pos .. pos+n_prompt-1.
 * -EINVAL when @pos is past the positions evaluated so far.
 */
MOE_API int moe_ctx_generate_at(struct moe_ctx *ctx, const int32_t *prompt, uint32_t n_prompt,
				uint32_t pos, uint32_t n_gen, const struct moe_sample_params *sp,
				uint32_t flags, moe_gen_cb cb, void *arg);

/* Why generation ended (moe_ctx_gen_end()). */
enum moe_gen_end {
	MOE_GEN_END_NONE = 0,   /* no generation ran on the context yet */
	MOE_GEN_END_EOG,        /* the last token is an end-of-generation token */
	MOE_GEN_END_GRAMMAR,    /* the grammar's document was complete and could only end */
	MOE_GEN_END_CALLBACK,   /* the callback returned non-zero */
	MOE_GEN_END_LENGTH,     /* n_gen tokens were generated */
	MOE_GEN_END_ERROR,      /* evaluation or sampling failed (the return value says how) */
};
/*
 * Why generation ended, for a caller's finish_reason: what the last
 * moe_ctx_generate or moe_ctx_generate_at on @ctx stopped at
 * (MOE_GEN_END_NONE before any).  When several hold for the last token, the
 * first of EOG, GRAMMAR, CALLBACK, LENGTH is reported (a callback that stops
 * at an end-of-generation token reads as EOG when the sampling parameters
 * have a tokenizer).
 */
MOE_API enum moe_gen_end moe_ctx_gen_end(const struct moe_ctx *ctx);
/*
 * The OpenAI API's finish_reason of @e: "stop" (EOG, GRAMMAR, CALLBACK),
 * "length" (LENGTH), "error" (ERROR), or NULL for NONE and values out of
 * range.
 */
MOE_API const char *moe_gen_end_reason(enum moe_gen_end e);

/*
 * The routing hook: called on the thread that evaluates, once per MoE layer
 * and forward step, after the router chose and before any expert of the
 * layer is looked up.  @layer is the layer index, @pos the position of each
 * of the @n_tok tokens, @logits their router logits (n_tok rows of
 * @n_expert, before any bias or gating function), @sel their choices: row t
 * is sel[t*k ...], of which the first moe_layer_info.n_expert_used entries
 * are the layer's (k is the largest count of any layer).  The hook may read
 * them (observe routing, feed a predictor of its own) and rewrite them with
 * ids in 0..n_expert-1 (override routing): the layer then runs the experts
 * written, each with the router's weight of its position in the row, and
 * the expert cache, its eviction policy, the routing statistics and a trace
 * being recorded all see the rewritten choices.  An id out of range fails
 * the eval with -EINVAL.  The buffers are the engine's, valid during the
 * call only.  The hook must not call into @ctx.
 */
typedef void (*moe_route_hook)(void *arg, uint32_t layer, const int32_t *pos, uint32_t n_tok,
			       const float *logits, uint32_t n_expert, int32_t *sel,
			       uint32_t k);
/*
 * Install @hook (NULL removes it) with @arg for the following evals of @ctx.
 * Not to be called while another thread evaluates on @ctx.  Without a hook
 * the router's logits stay in device memory: the hook costs one copy of
 * them per layer.
 */
MOE_API void moe_ctx_set_route_hook(struct moe_ctx *ctx, moe_route_hook hook, void *arg);

/* One expert to fetch ahead: expert @expert of MoE layer @layer. */
struct moe_prefetch_req {
	uint32_t layer;
	uint32_t expert;
};

/*
 * The prefetch hook: called on the thread that evaluates, once per MoE
 * layer and forward step, when every expert the layer uses holds a slot;
 * that is where the built-in prefetcher (moe_ctx_params.prefetch) picks the
 * experts of later layers to fetch ahead.  @layer, @pos, @n_tok, @sel and
 * @k are as for moe_route_hook, @sel holding the choices the layer ran
 * (after any route hook).  @req has room for @max requests (every expert of
 * every layer once); its first @n_req are the built-in prefetcher's picks,
 * most likely first, as many as its budget allows (none without a
 * prefetcher).  The hook returns how many requests of @req to fetch, having
 * kept, reordered, replaced or dropped them as it likes (return n_req to
 * accept the picks, 0 to fetch nothing): these are then fetched in that
 * order as low-priority reads into slots the eviction policy gives up,
 * experts already cached skipped, until staging runs out (the rest are
 * dropped, not queued).  Requests may name any MoE layer, including earlier
 * ones (for the next token).  A prefetched expert counts in
 * moe_ctx_stats.prefetches and the bytes read; one still queued when its
 * layer routes without it is withdrawn (prefetch_cancelled).  A return
 * below 0 or above @max, or a request naming a layer without routed experts
 * or an expert out of range, fails the eval with -EINVAL naming it.  The
 * buffers are the engine's, valid during the call only; the hook must not
 * call into @ctx.
 */
typedef int (*moe_prefetch_hook)(void *arg, uint32_t layer, const int32_t *pos, uint32_t n_tok,
				 const int32_t *sel, uint32_t k, struct moe_prefetch_req *req,
				 uint32_t n_req, uint32_t max);
/*
 * Install @hook (NULL removes it) with @arg for the following evals of @ctx,
 * which then fetches what the hook asks instead of what the built-in
 * prefetcher picks (that still ranks the picks it offers, and its
 * probabilities still guide the eviction policy).  Not to be called while
 * another thread evaluates on @ctx.  A dense model never calls it.
 */
MOE_API void moe_ctx_set_prefetch_hook(struct moe_ctx *ctx, moe_prefetch_hook hook, void *arg);

/* ------------------------------------------------------- routing */
/* (section: routing) */

/*
 * Routing statistics, traces and the trace simulator
 * (Documentation/design.rst, "Routing statistics and prefetch").
 * Threads: statistics and traces are read-only once loaded or built and may
 * be shared by threads; a context's statistics (moe_ctx_routestats()) change
 * with its evals and are read on its thread; moe_sim_run() is reentrant.
 * Ownership: each handle is freed by its _destroy function; the statistics
 * of a context belong to it.
 */

/* A model file's identity, whatever its path: its size and a hash of header and tensor table. */
MOE_API int moe_model_identity(const struct moe_model *model, uint64_t *bytes, uint64_t *hash);
/*
 * The default state directory: $MOE_STATE_DIR, else $XDG_STATE_HOME/moe,
 * else $HOME/.local/state/moe.  -ENOENT when none of them is set.
 */
MOE_API int moe_state_dir(char *buf, size_t len);

/* Per (layer, expert) use counts, transitions to the next routed layer, co-activation. */
struct moe_routestats;

/* The statistics file of @model in @dir: DIR/routes-<hash>-<bytes>.stats. */
MOE_API int moe_routestats_path(const struct moe_model *model, const char *dir, char *buf,
				size_t len);
/*
 * Load a statistics file.  -ENOENT when there is none; -EINVAL for a
 * truncated or corrupt file or another version (moe_errmsg() says which);
 * -ESTALE for the file of another model (checked when @model is given).
 */
MOE_API int moe_routestats_load(const char *path, const struct moe_model *model,
				struct moe_routestats **out);
/* Write the file whole, then rename it into place. */
MOE_API int moe_routestats_save(const struct moe_routestats *rs, const char *path);
/* Free @rs; NULL is a no-op. */
MOE_API void moe_routestats_destroy(struct moe_routestats *rs);

struct moe_routestats_info {
	uint32_t n_layer, n_expert;
	uint64_t tokens;            /* tokens observed */
	uint64_t model_bytes, model_hash;   /* 0 for statistics of a trace */
	uint64_t reserved[4];
};
/* The dimensions, tokens observed and model identity of @rs into @out; 0. */
MOE_API int moe_routestats_info(const struct moe_routestats *rs, struct moe_routestats_info *out);
/* Routings of @layer observed (tokens that passed it). */
MOE_API uint64_t moe_routestats_layer_tokens(const struct moe_routestats *rs, uint32_t layer);
/* Uses of expert @e of @layer. */
MOE_API uint64_t moe_routestats_count(const struct moe_routestats *rs, uint32_t layer,
				      uint32_t e);
/* The routed layer after @layer that transitions count into; -ENOENT for the last. */
MOE_API int moe_routestats_next_layer(const struct moe_routestats *rs, uint32_t layer);
/* Tokens that chose @e at @layer and @f at the next routed layer. */
MOE_API uint64_t moe_routestats_transition(const struct moe_routestats *rs, uint32_t layer,
					   uint32_t e, uint32_t f);
/* Tokens that chose both @e and @f at @layer. */
MOE_API uint64_t moe_routestats_coactivation(const struct moe_routestats *rs, uint32_t layer,
					     uint32_t e, uint32_t f);
/* The statistics the context has recorded (loaded ones included); NULL for a dense model. */
MOE_API const struct moe_routestats *moe_ctx_routestats(const struct moe_ctx *ctx);
/* Save them to the state directory now (moe_ctx_destroy does it too); -ENOENT without one. */
MOE_API int moe_ctx_save_routestats(struct moe_ctx *ctx);

/*
 * A routing trace: per token and layer, the experts chosen.  Read from the
 * format of the gpt-oss-20b traces (../shared/traces) or this project's own
 * (Documentation/file-format.rst); the latter may carry the speculative
 * predictions made for each layer.
 */
struct moe_trace;

/*
 * Read the trace at @path (either format) into *out.  -ENOENT when there is
 * none; -EINVAL for a malformed one, moe_errmsg() naming the line; -ENOMEM.
 */
MOE_API int moe_trace_open(const char *path, struct moe_trace **out);
/* Free @t; NULL is a no-op. */
MOE_API void moe_trace_destroy(struct moe_trace *t);

struct moe_trace_info {
	uint32_t n_layer;           /* layer fields per token */
	uint32_t n_routed;          /* layers that route */
	uint32_t n_expert;
	uint32_t max_k;             /* most experts a layer chooses */
	uint32_t depth;             /* layers ahead the predictions were made; 0: none */
	uint32_t n_seq;
	uint64_t n_tok;
	uint64_t reserved[4];
};
/* The dimensions of @t into @out; 0. */
MOE_API int moe_trace_info(const struct moe_trace *t, struct moe_trace_info *out);
/* Tokens [*first, *first + *n) of sequence @s. */
MOE_API int moe_trace_seq(const struct moe_trace *t, uint32_t s, uint64_t *first, uint64_t *n);
/* The experts token @tok chose at @layer, in router order; returns their number (0: not routed). */
MOE_API int moe_trace_get(const struct moe_trace *t, uint64_t tok, uint32_t layer, int32_t *ids,
			  uint32_t max);
/* The prediction for (tok, layer) made @depth (1..) routed layers before; returns its size. */
MOE_API int moe_trace_prediction(const struct moe_trace *t, uint64_t tok, uint32_t layer,
				 uint32_t depth, int32_t *ids, uint32_t max);
/* The statistics of sequences [seq_begin, seq_end) (seq_end 0: to the end). */
MOE_API int moe_routestats_from_trace(const struct moe_trace *t, uint32_t seq_begin,
				      uint32_t seq_end, struct moe_routestats **out);

enum moe_trace_flags {
	MOE_TRACE_PREDICTIONS = 1u << 0,    /* also the speculative predictions (needs a prefetcher
					       that computes them: spec or mix) */
};
#define MOE_TRACE_FLAGS_ALL (MOE_TRACE_PREDICTIONS)
/*
 * Record every token's routing into @path in the moe-trace format from now
 * on; each evaluation from position 0 starts a new sequence.
 */
MOE_API int moe_ctx_trace_start(struct moe_ctx *ctx, const char *path, uint32_t flags);
/* Stop recording and close the file (moe_ctx_destroy does it too). */
MOE_API int moe_ctx_trace_stop(struct moe_ctx *ctx);

enum moe_sim_flags {
	MOE_SIM_LAYER_POOLS = 1u << 0,      /* one slot pool per layer, slots split evenly */
};
#define MOE_SIM_FLAGS_ALL (MOE_SIM_LAYER_POOLS)

/*
 * Replaying a trace against the cache's own bookkeeping, policies and
 * predictors (the code the live engine runs), without a model file.
 */
struct moe_sim_params {
	uint32_t n_slots;           /* device slots, every layer together */
	uint32_t n_host_slots;      /* tier 1 slots; 0: none */
	const char *policy;         /* moe_sim_policy_names(); NULL: "lru" */
	const char *prefetch;       /* moe_prefetch_names(); NULL: "none" */
	uint64_t expert_bytes;      /* 0: 1, so the byte figures count experts */
	double read_gbps;           /* with layer_us: model time (tokens/s, prefetches in time) */
	double layer_us;            /* compute time of one routed layer */
	uint32_t seq_begin, seq_end;    /* the sequences replayed; seq_end 0: to the end */
	const struct moe_routestats *stats;  /* known at the start (a saved file), or NULL */
	uint32_t pin_hot;           /* slots held by hot experts */
	uint32_t flags;             /* enum moe_sim_flags */
	/* every demand use, in order (tests): replay token index, layer, expert, hit */
	void (*on_use)(void *arg, uint64_t tok, uint32_t layer, uint32_t e, bool hit);
	void *arg;
	uint64_t reserved[4];
};

struct moe_sim_result {
	uint64_t tokens, uses, hits, misses, evictions;
	uint64_t host_hits;         /* misses served by tier 1: an upload, no read */
	uint64_t prefetches;        /* experts brought in ahead */
	uint64_t prefetch_used;     /* ... used in time */
	uint64_t prefetch_late;     /* ... used before their read ended (counted as misses) */
	uint64_t prefetch_cancelled;    /* ... withdrawn before their read started */
	double hit_rate;
	double miss_bytes_per_token;    /* bytes a layer had to wait for */
	double fetched_bytes_per_token; /* bytes brought into device slots */
	double read_bytes_per_token;    /* ... of which read from the file */
	double prefetch_precision;  /* used / (prefetches - cancelled) */
	double prefetch_recall;     /* used / (used + misses) */
	double tokens_per_s;        /* what the stalls allow; 0 without read_gbps and layer_us */
	double stall_s;
	uint64_t reserved[4];
};

/*
 * The defaults: policy "lru", prefetch "none", every sequence, no host
 * tier, no pinned experts, no model time.  n_slots has no default: set it
 * (at least the most experts a layer chooses).
 */
MOE_API void moe_sim_params_init(struct moe_sim_params *p);
/*
 * Replay the sequences of @t that @p selects and fill @out.  -EINVAL (with
 * moe_errmsg() naming the field) for parameters the trace cannot satisfy.
 */
MOE_API int moe_sim_run(const struct moe_trace *t, const struct moe_sim_params *p,
			struct moe_sim_result *out);
/* "lru, lfu, stats, belady" */
MOE_API const char *moe_sim_policy_names(void);

#ifdef __cplusplus
}
#endif
#endif /* MOE_MOE_H */
