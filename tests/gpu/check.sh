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
#     against device-to-device copy bandwidth in the same run (target >= 0.7).
# Each has a time limit, about 7 minutes in all.  $OUT gets summary.txt and
# one log per suite (default: ./gpu-out).  The exit status is 0 when every
# suite passed with the GPU present, 2 when no CUDA driver or GPU was found
# (nothing ran on a GPU: that is a failure of the check, not a pass), 1 for
# any failing test.
set -u

G=build/gpu
out=${OUT:-./gpu-out}

die() {
	echo "tests/gpu/check.sh: $*" >&2
	exit 1
}

# ---- packing, on the build machine
if [ "${1:-}" = "--pack" ]; then
	make -j2 build/tests/unit-tests build/tests/libcuda_fake.so build/tests/libcuda_old.so \
		tools || die "the build failed"
	[ -f build/cuda/kernels.fatbin ] ||
		die "libmoe was built without CUDA kernels (no nvcc): nothing to check on a GPU"
	make build/cuda/selftest.fatbin || die "the self-test fatbin did not build"
	rm -rf "$G"
	mkdir -p "$G/bin" "$G/lib" "$G/tests" "$G/cuda" || die "cannot create $G"
	if ! { cp build/tests/unit-tests "$G/" &&
		cp build/bin/moe-run build/bin/moe-mkmodel build/bin/moectl build/bin/moe-bench \
			"$G/bin/" &&
		cp build/tests/libcuda_fake.so build/tests/libcuda_old.so "$G/tests/" &&
		cp build/cuda/selftest.fatbin "$G/cuda/"; }; then
		die "copying the binaries failed"
	fi
	for b in "$G/unit-tests" "$G"/bin/*; do
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
[ $# -eq 0 ] || die "usage: sh tests/gpu/check.sh [--pack]"

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
# suite, seconds
for s in "ops 200" "cuda 150" "simt 60"; do
	name=${s% *}
	limit=${s#* }
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
timeout -k 10 60 "$G/bin/moe-bench" gpu-matvec >"$log" 2>&1 || status=1
sed 's/^/gpu-matvec: /' "$log" >>"$summary"
# a GPU test skipped for want of a driver is no pass (every run lists the skips of all suites)
if grep -E '^SKIP: (ops \(cuda backend\)|cuda gpu_|simt gpu_)' "$out/ops.log" >>"$summary"; then
	[ $status -eq 0 ] && status=2
fi
case $status in
0) echo "PASS: every suite passed on the GPU" >>"$summary" ;;
2) echo "NO GPU: the CUDA tests were skipped (see the reasons above)" >>"$summary" ;;
*) echo "FAIL: see the logs in $out" >>"$summary" ;;
esac
cat "$summary"
exit $status
