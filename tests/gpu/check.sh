#!/bin/sh
# SPDX-License-Identifier: MIT
#
# The device check of the CUDA backend, in one call on a machine with an
# NVIDIA GPU and its driver but no compiler or package registry.
#
# On the build machine (repository root), after `make -j2`:
#
#     sh tests/gpu/check.sh --pack
#
# builds the unit tests, the fake driver libraries and the emulation's
# self-test fatbin, then copies into build/gpu/ (about 15 MiB): the test
# binary, the tools, those fatbins and libraries, and every shared library
# they link except the C library's own (libc, libm, ld.so, ...) and never a
# CUDA driver.  Carry build/gpu to the GPU machine with the working tree.
#
# On the GPU machine (repository root):
#
#     OUT=/some/dir sh tests/gpu/check.sh
#
# runs, with build/gpu/lib on LD_LIBRARY_PATH:
#   - the op conformance suite, whose "cuda" row runs every op on the GPU
#     against the float64 reference (and the emulated "cuda-sim" row);
#   - the "cuda" suite: engine logits on the GPU against the CPU backend for
#     every architecture of its list, resident and streamed;
#   - the "simt" suite: the emulation's self-test kernels on the GPU and the
#     emulation byte for byte (gpu_matches_emulation);
#   - moe-bench gpu-matvec: the decode kernel's GB/s for q4_K, q8_0 and mxfp4
#     against device-to-device copy bandwidth in the same run (target >= 0.7);
#   - moe-bench gpu-h2d: the expert pipeline's host-to-device GB/s against
#     plain copies from pinned memory in the same run (target >= 0.9);
#   - the streaming decode again with --gds on where a libcufile.so.0 is found
#     ($MOE_CUFILE_LIBRARY, else the CUDA toolkit's), its tokens/s and read rate;
#   - decode tokens/s of a Scout-shaped model (n_embd 5120, expert FFN 8192,
#     16 experts top-1, a shared expert, q4_K) fully resident and with --vram
#     holding 30% of the experts, the latter against the bound read GB/s /
#     bytes read per token of the same run (target >= 0.8).  The model is
#     written to $MOE_GPU_SCRATCH (default /tmp) and removed after; it has as
#     many layers as twice the file leaves room for on that disk, at most
#     MOE_GPU_LAYERS (default 2: moe-mkmodel writes about 1.2 GB of q4_K per
#     layer, which takes some 3.5 times as long as the 2.3 GB of q8_0, about
#     20 s, and bounds the time).
# Each has a time limit, under 8 minutes in all.  $OUT gets summary.txt and
# one log per step (default: ./gpu-out).  The exit status is 0 when every
# step passed with the GPU present, 2 when no CUDA driver or GPU was found
# (nothing ran on a GPU: that is a failure of the check, not a pass), 1 for
# any failing step.
#
# --quick runs the benchmarks only, on tiny shapes, from the build tree's
# layout ($MOE_GPU_DIR, default build/gpu): with MOE_CUDA_LIBRARY naming
# build/tests/libcuda_sim.so (the fake driver with the kernels emulated) it
# runs every step of the script without a GPU, which suite cuda does
# (cuda_gpu_check_script) so that the script cannot rot.  Its figures are the
# emulation's and mean nothing.
set -u

G=${MOE_GPU_DIR:-build/gpu}
out=${OUT:-./gpu-out}
quick=0

die() {
	echo "tests/gpu/check.sh: $*" >&2
	exit 1
}

# ---- packing, on the build machine
if [ "${1:-}" = "--pack" ]; then
	make -j2 build/tests/unit-tests build/tests/libcuda_fake.so build/tests/libcuda_old.so \
		build/tests/libcuda_sim.so build/tests/libcufile_fake.so tools ||
		die "the build failed"
	[ -f build/cuda/kernels.fatbin ] ||
		die "libmoe was built without CUDA kernels (no nvcc): nothing to check on a GPU"
	make build/cuda/selftest.fatbin || die "the self-test fatbin did not build"
	rm -rf "$G"
	mkdir -p "$G/bin" "$G/lib" "$G/tests" "$G/cuda" || die "cannot create $G"
	if ! { cp build/tests/unit-tests "$G/" &&
		cp build/bin/moe-run build/bin/moe-mkmodel build/bin/moectl build/bin/moe-bench \
			"$G/bin/" &&
		cp build/tests/libcuda_fake.so build/tests/libcuda_old.so build/tests/libcuda_sim.so \
			build/tests/libcufile_fake.so "$G/tests/" &&
		cp build/cuda/selftest.fatbin "$G/cuda/"; }; then
		die "copying the binaries failed"
	fi
	for b in "$G/unit-tests" "$G"/bin/* "$G/tests/libcuda_sim.so"; do
		ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
	done | sort -u | while read -r lib; do
		case "${lib##*/}" in
		libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux* | \
			libresolv.so* | libcuda.so*) ;;
		*) cp -L "$lib" "$G/lib/" || die "copying $lib failed" ;;
		esac
	done
	echo "packed $(du -sh "$G" | cut -f1) into $G: carry it with the tree and run" \
		"tests/gpu/check.sh on the GPU machine"
	exit 0
fi
if [ "${1:-}" = "--quick" ]; then
	quick=1
	shift
fi
[ $# -eq 0 ] || die "usage: sh tests/gpu/check.sh [--pack | --quick]"

# ---- the check, on the GPU machine
[ -x "$G/unit-tests" ] ||
	die "no $G/unit-tests: run 'sh tests/gpu/check.sh --pack' on the build machine and carry $G"
mkdir -p "$out/state" || die "cannot write $out"
summary=$out/summary.txt
{
	rev=$(git rev-parse --short HEAD 2>/dev/null || echo 'no git')
	echo "moe device check, $(date -u '+%Y-%m-%d %H:%M UTC'), $rev"
	if command -v nvidia-smi >/dev/null 2>&1; then
		nvidia-smi --format=csv,noheader \
			--query-gpu=name,driver_version,memory.total,pci.bus_id
	else
		echo "no nvidia-smi"
	fi
} >"$summary"

LD_LIBRARY_PATH=$G/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
MOE_BIN=$PWD/$G/bin
MOE_BUILD=$PWD/$G
MOE_SRC=$PWD
MOE_SHARED=${MOE_SHARED:-$PWD/../shared}
MOE_STATE_DIR=$out/state
export LD_LIBRARY_PATH MOE_BIN MOE_BUILD MOE_SRC MOE_SHARED MOE_STATE_DIR

status=0
# the value of "key" in a one-line JSON document (numbers and strings)
jget() {
	sed -n "s/.*\"$1\": \"\{0,1\}\([^,\"}]*\).*/\1/p" "$2" | head -n 1
}

# suite, seconds
suites="ops 150 cuda 110 simt 40"
[ $quick -eq 1 ] && suites=""
# shellcheck disable=SC2086
set -- $suites
while [ $# -ge 2 ]; do
	name=$1
	limit=$2
	shift 2
	log=$out/$name.log
	start=$(date +%s)
	CK_RUN_SUITE=$name timeout -k 10 "$limit" "$G/unit-tests" >"$log" 2>&1
	rc=$?
	took=$(($(date +%s) - start))
	result=$(grep -E '^[0-9]+%: Checks' "$log" | tail -n 1)
	[ $rc -eq 124 ] && result="timed out after ${limit}s"
	echo "$name: ${result:-no result (exit $rc)} (${took}s)" >>"$summary"
	grep -E '^[^:]+:[0-9]+:[EF]:' "$log" | head -n 20 >>"$summary"
	[ $rc -eq 0 ] || status=1
done

# the quantized matvec against copy bandwidth; without a driver it says so and exits 0
log=$out/gpu-matvec.log
if [ $quick -eq 1 ]; then
	mv_args="--rows 64 --cols 256 --reps 1"
	h2d_args="--mib 1 --experts 6 --slots 2 --staging 2 --rounds 1"
else
	mv_args=""
	h2d_args=""
fi
# shellcheck disable=SC2086
timeout -k 10 60 "$G/bin/moe-bench" gpu-matvec $mv_args >"$log" 2>&1 || status=1
sed 's/^/gpu-matvec: /' "$log" >>"$summary"
# the pipeline's uploads against plain pinned copies
log=$out/gpu-h2d.log
# shellcheck disable=SC2086
timeout -k 10 60 "$G/bin/moe-bench" gpu-h2d $h2d_args >"$log" 2>&1 || status=1
sed 's/^/gpu-h2d: /' "$log" >>"$summary"

# decode of a Scout-shaped model, resident and streaming 70% of its experts
scratch=${MOE_GPU_SCRATCH:-/tmp}/moe-gpu-check.$$
model=$scratch/scout.gguf
trap 'rm -rf "$scratch"' EXIT
decode() {
	if [ $quick -eq 1 ]; then
		dims="--embd 256 --heads 4 --kv-heads 2 --head-dim 64 --expert-ff 256 \
			--shared-expert-ff 256 --vocab 256"
		layers=${MOE_GPU_LAYERS:-2}
		per_layer=1
		n=4
	else
		dims="--embd 5120 --heads 40 --kv-heads 8 --head-dim 128 --expert-ff 8192 \
			--shared-expert-ff 8192 --vocab 8192"
		layers=${MOE_GPU_LAYERS:-2}
		per_layer=1250
		n=32
	fi
	# distinct prompt tokens; no saved routing statistics, so nothing warms the cache
	toks=11,22,33,44,55,66,77,88
	mkdir -p "$scratch" || { echo "decode: cannot create $scratch"; return 1; }
	# twice the file must fit: the model, and room for the run's own files
	avail=$(($(df -Pk "$scratch" | awk 'NR == 2 { print $4 }') / 1024))
	fit=$((avail / (2 * per_layer)))
	[ "$fit" -lt "$layers" ] && layers=$fit
	[ "$layers" -ge 1 ] || { echo "decode: $avail MiB free in $scratch: no room"; return 1; }
	# shellcheck disable=SC2086
	timeout -k 10 200 "$G/bin/moe-mkmodel" --arch llama4 -o "$model" -q --layers "$layers" \
		--experts 16 --experts-used 1 --router-skew 0 --type q4_K --type-other q4_K $dims ||
		{ echo "decode: moe-mkmodel failed"; return 1; }
	timeout -k 10 90 "$G/bin/moe-run" -m "$model" --tokens "$toks" -n $n --backend cuda --no-state \
		--stats --json >"$out/decode-resident.json" 2>"$out/decode-resident.err" ||
		{ echo "decode: the resident run failed (exit $?):" \
		       "$(tail -n 3 "$out/decode-resident.err")"; return 1; }
	used=$(jget vram_used "$out/decode-resident.json")
	slots=$(jget n_slots "$out/decode-resident.json")
	slot=$(jget slot_bytes "$out/decode-resident.json")
	if [ -z "$used" ] || [ -z "$slots" ] || [ -z "$slot" ]; then
		echo "decode: no budget figures in the resident run's JSON"
		return 1
	fi
	vram=$(awk -v u="$used" -v n="$slots" -v s="$slot" \
		'BEGIN { printf "%.0f", u - 0.7 * n * s }')
	timeout -k 10 90 "$G/bin/moe-run" -m "$model" --tokens "$toks" -n $n --backend cuda --no-state \
		--vram "$vram" --gds off --stats --json >"$out/decode-stream.json" \
		2>"$out/decode-stream.err" ||
		{ echo "decode: the streaming run (--vram $vram) failed (exit $?):" \
		       "$(tail -n 3 "$out/decode-stream.err")"; return 1; }
	stream_line "$vram" || return 1
	gds_run "$vram"
}

# The streaming run's figures: its tokens/s against the bound of its own reads.
stream_line() {
	awk -v L="$layers" -v V="$1" \
	    -v rt="$(jget decode_tps "$out/decode-resident.json")" \
	    -v st="$(jget decode_tps "$out/decode-stream.json")" \
	    -v gb="$(jget read_gbps "$out/decode-stream.json")" \
	    -v by="$(jget bytes_read "$out/decode-stream.json")" \
	    -v nt="$(jget decode_tokens "$out/decode-stream.json")" \
	    -v pt="$(jget prefill_tokens "$out/decode-stream.json")" \
	    -v io="$(jget expert_io "$out/decode-stream.json")" 'BEGIN {
		per = (nt + pt) > 0 ? by / (nt + pt) : 0
		bound = per > 0 ? gb * 1e9 / per : 0
		printf "%d layers; resident %.2f tokens/s; --vram %s: %.2f tokens/s, " \
		       "%.1f MB read per token at %.2f GB/s (%s), bound %.2f tokens/s, " \
		       "ratio %.3f\n", L, rt, V, st, per / 1e6, gb, io, bound,
		       (bound > 0 ? st / bound : 0)
	}'
}

# The streaming run again with GPUDirect Storage required, where a libcufile is found
# ($MOE_CUFILE_LIBRARY, else the CUDA toolkit's): informative unless MOE_CUFILE_LIBRARY
# was given, since a machine without the nvidia-fs driver may refuse it.
gds_run() {
	lib=${MOE_CUFILE_LIBRARY:-}
	if [ -z "$lib" ]; then
		for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib /usr/lib/*-linux-gnu; do
			[ -e "$d/libcufile.so.0" ] && { lib=$d/libcufile.so.0; break; }
		done
	fi
	if [ -z "$lib" ]; then
		echo "gds: no libcufile.so.0 here, not run"
		return 0
	fi
	if ! MOE_CUFILE_LIBRARY=$lib timeout -k 10 90 "$G/bin/moe-run" -m "$model" --tokens "$toks" \
		-n $n --backend cuda --no-state --vram "$1" --gds on --stats --json \
		>"$out/decode-gds.json" 2>"$out/decode-gds.err"; then
		echo "gds: --gds on with $lib failed: $(tail -n 1 "$out/decode-gds.err")"
		[ -n "${MOE_CUFILE_LIBRARY:-}" ] && return 1
		return 0
	fi
	awk -v st="$(jget decode_tps "$out/decode-gds.json")" \
	    -v gb="$(jget read_gbps "$out/decode-gds.json")" \
	    -v io="$(jget expert_io "$out/decode-gds.json")" -v lib="$lib" 'BEGIN {
		printf "gds: --gds on (%s): %.2f tokens/s, reads %.2f GB/s (%s)\n", lib, st, gb, io
	}'
}
decode >"$out/decode.log" 2>&1 || status=1
sed 's/^/decode: /' "$out/decode.log" >>"$summary"

# a GPU test skipped for want of a driver is no pass (every run lists the skips of all suites)
if [ $quick -eq 0 ] &&
	grep -E '^SKIP: (ops \(cuda backend\)|cuda gpu_|simt gpu_)' "$out/ops.log" >>"$summary"; then
	[ $status -eq 0 ] && status=2
fi
case $status in
0) if [ $quick -eq 1 ]; then
	echo "QUICK: every step ran (on ${MOE_CUDA_LIBRARY:-libcuda.so.1}; no suites)" >>"$summary"
   else
	echo "PASS: every suite passed on the GPU" >>"$summary"
   fi ;;
2) echo "NO GPU: the CUDA tests were skipped (see the reasons above)" >>"$summary" ;;
*) echo "FAIL: see the logs in $out" >>"$summary" ;;
esac
cat "$summary"
exit $status
