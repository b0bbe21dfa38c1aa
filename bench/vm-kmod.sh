#!/bin/sh
# SPDX-License-Identifier: MIT
#
# moe.ko against the userspace I/O path, in the test VM (QEMU TCG, emulated
# NVMe, ext4), on each kernel of make vm-check.
#
#   bench/vm-kmod.sh            (root, like make vm-check; build with make first)
#   env: ROUNDS=5 KERNELS="6.1 6.12" BUILD=build
#
# Per kernel, ROUNDS rounds of each, interleaved where there are two sides:
#   fetch, raw:    perf-driver-vs-userspace of tests/vm/moe-vmtest.c (96 x 1 MiB
#                  FETCHes into a BO against O_DIRECT io_uring reads, best of 5);
#   fetch, engine: moe-vmio --bench: every expert matrix of tiny.gguf through the
#                  I/O engine, backend io_uring (the file) against backend moe.ko;
#   decode:        moe-run on tiny.gguf with a 24 MiB budget (the experts stream),
#                  from the file and as moe:tiny through the driver.
# Prints every round's line and the medians of the ratios (targets: fetch
# moe.ko/io_uring >= 1.0, decode through the driver within 5 % of the file).
#
# A benchmark, not a test: nothing here fails on a figure.  Under TCG every
# byte is copied by the host CPU: run it on a quiet machine, and read the
# figures as the two paths compared on one emulated drive, not as NVMe speed.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-5}
KERNELS=${KERNELS:-6.1 6.12}
BUILD=${BUILD:-$SRC/build}
case $ROUNDS in '' | *[!0-9]* | 0) echo "vm-kmod: ROUNDS must be a positive number" >&2; exit 2 ;; esac
[ "$(id -u)" -eq 0 ] || { echo "vm-kmod: needs root (it boots the test VM): sudo $0" >&2; exit 2; }
[ -x "$BUILD/bin/moe-run" ] && [ -x "$BUILD/bin/moectl" ] ||
	{ echo "vm-kmod: no $BUILD/bin/moe-run or moectl: run make first" >&2; exit 2; }

# the median of the numbers on stdin, one a line ("-" for none)
median() {
	sort -n | awk '{ v[NR] = $1 }
		END { if (!NR) print "-"; else if (NR % 2) print v[(NR + 1) / 2];
		      else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

rc=0
for k in $KERNELS; do
	dir=$BUILD/vm-bench-$k
	log=$dir/bench.txt
	mkdir -p "$dir"
	echo "== kernel $k, $ROUNDS rounds"
	if ! MOE_VM_KERNEL=$k MOE_VM_BENCH=$ROUNDS MOE_BIN=$BUILD/bin \
		MOE_VM_TIMEOUT=$((300 + ROUNDS * 240)) sh "$SRC/tests/vm/run.sh" "$dir" >"$log" 2>&1; then
		cat "$log"
		echo "vm-kmod: the $k run failed (log: $log)"
		rc=1
		continue
	fi
	# the guest's own lines (run.sh's output repeats some of them)
	log=$dir/console.log.txt
	grep '^# bench' "$log" || true
	raw=$(sed -n 's/^# bench-perf .*driver\/userspace \([0-9.]*\).*/\1/p' "$log" | median)
	eng=$(sed -n 's/^# bench-fetch round .*(moe.ko\/io_uring \([0-9.]*\);.*/\1/p' "$log" | median)
	file=$(sed -n 's/^# bench-decode round [0-9]* \/mnt.*decode: [0-9]* tokens, \([0-9.]*\) tokens\/s.*/\1/p' \
		"$log" | median)
	drv=$(sed -n 's/^# bench-decode round [0-9]* moe:tiny.*decode: [0-9]* tokens, \([0-9.]*\) tokens\/s.*/\1/p' \
		"$log" | median)
	ratio=$(awk -v a="$drv" -v b="$file" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "-" }')
	echo "-- $k medians: raw fetch moe.ko/io_uring $raw, engine fetch moe.ko/io_uring $eng," \
		"decode tok/s file $file, moe:tiny $drv (ratio $ratio)"
done
exit $rc
