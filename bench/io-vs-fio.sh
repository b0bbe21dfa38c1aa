#!/bin/sh
# SPDX-License-Identifier: MIT
#
# The I/O engine against fio on the same file, block size and queue depth:
# random reads, O_DIRECT, io_uring with registered files and buffers on both
# sides, each run from a cold cache.  Prints engine/fio (target >= 0.95) and
# the engine against buffered pread (target >= 1.5).
#
#   bench/io-vs-fio.sh [FILE]      env: BS=4M QD=32 TOTAL=1G RUNS=3 BUILD=build
#
# Without FILE a TOTAL-sized file of random bytes is made under $BUILD/tmp
# (on the disk, not tmpfs, so O_DIRECT means something).
set -eu

BS=${BS:-4M}
QD=${QD:-32}
TOTAL=${TOTAL:-1G}
RUNS=${RUNS:-3}
BUILD=${BUILD:-build}
BENCH=${MOE_BIN:-$BUILD/bin}/moe-bench

die() { echo "io-vs-fio: $*" >&2; exit 1; }

[ -x "$BENCH" ] || die "$BENCH not built: run \`make BUILD=$BUILD\` first"
command -v python3 >/dev/null || die "python3 is needed to read fio's JSON"
if ! command -v fio >/dev/null; then
	echo "io-vs-fio: fio is missing, installing it with apt-get" >&2
	if [ "$(id -u)" = 0 ]; then
		apt-get install -y fio >/dev/null 2>&1 ||
			{ apt-get update >/dev/null 2>&1 && apt-get install -y fio >/dev/null 2>&1; } ||
			die "apt-get install fio failed: install fio and rerun"
	else
		die "fio is not installed and this is not root: run \`sudo apt-get install fio\`"
	fi
fi

FILE=${1:-}
if [ -z "$FILE" ]; then
	mkdir -p "$BUILD/tmp"
	FILE=$BUILD/tmp/io-vs-fio.bin
	bytes=$(numfmt --from=iec "$TOTAL") || die "TOTAL=$TOTAL: use a size like 1G or 512M"
	if [ ! -f "$FILE" ] || [ "$(stat -c %s "$FILE")" -lt "$bytes" ]; then
		echo "io-vs-fio: writing $TOTAL of random bytes to $FILE" >&2
		head -c "$bytes" /dev/urandom > "$FILE"
		sync
	fi
fi
[ -r "$FILE" ] || die "$FILE: cannot read it"

drop() {
	sync
	if [ "$(id -u)" = 0 ]; then
		echo 1 > /proc/sys/vm/drop_caches
	fi
}

json_get() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

eng_sum=0 fio_sum=0 pread_sum=0
i=0
while [ "$i" -lt "$RUNS" ]; do
	i=$((i + 1))
	drop
	e=$("$BENCH" io --json --size "$BS" --max-request "$BS" --qd "$QD" --total "$TOTAL" \
		--seed "$i" "$FILE")
	eg=$(echo "$e" | json_get '["engine_gbps"]')
	pg=$(echo "$e" | json_get '["pread_gbps"]')
	drop
	f=$(fio --name=moe --filename="$FILE" --readonly --rw=randread --bs="$BS" \
		--iodepth="$QD" --ioengine=io_uring --direct=1 --fixedbufs=1 --registerfiles=1 \
		--io_size="$TOTAL" --invalidate=1 --randseed="$i" --output-format=json)
	fg=$(echo "$f" | json_get '["jobs"][0]["read"]["bw_bytes"]/1e9')
	echo "run $i: engine $eg GB/s, fio $fg GB/s, buffered pread $pg GB/s"
	eng_sum=$(python3 -c "print($eng_sum + $eg)")
	fio_sum=$(python3 -c "print($fio_sum + $fg)")
	pread_sum=$(python3 -c "print($pread_sum + $pg)")
done

python3 - "$eng_sum" "$fio_sum" "$pread_sum" "$RUNS" "$BS" "$QD" "$TOTAL" "$FILE" <<'PY'
import sys
e, f, p, n = (float(x) for x in sys.argv[1:5])
bs, qd, total, path = sys.argv[5:9]
e, f, p = e / n, f / n, p / n
print(f"file {path}, bs {bs}, qd {qd}, {total} per run, mean of {int(n)} runs")
print(f"engine {e:.3f} GB/s  fio {f:.3f} GB/s  buffered pread {p:.3f} GB/s")
print(f"engine/fio {e / f:.3f} (target >= 0.95)  engine/pread {e / p:.2f} (target >= 1.5)")
PY
