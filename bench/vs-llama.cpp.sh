#!/bin/sh
# SPDX-License-Identifier: MIT
#
# The CPU backend against llama.cpp's CPU backend on the same GGUF files.
#
#   bench/vs-llama.cpp.sh [--build-only] [--no-budget]
#   env: ROUNDS=5 (0: only the budget case) TYPES="Q4_K_M Q8_0 MXFP4_MOE"
#        THREADS="1 $(nproc)" BUILD=build
#        CACHE=~/.cache/moe-llama.cpp NODE_LLAMA_CPP=3.22.1 NICE=10
#
# llama.cpp is built CPU-only (GGML_NATIVE, no CUDA, no curl) from the git
# bundle that the npm package node-llama-cpp ships, at a pinned version;
# package, source, build and model files live under $CACHE, never in the tree.
# The model is the qwen3moe shape of the comparison (n_embd 1024, 16 layers,
# 64 experts top-8, expert FFN 512, vocabulary 32768), written as F32 by
# moe-mkmodel and quantized by llama.cpp's own llama-quantize.
#
# Resident, warm page cache: for each round, each type and each thread count
# in turn, llama-bench -p 64 -n 32 (best of its 3 repetitions) and moe-bench
# decode --resident --prompt 64 --tokens 32 (best of its 3 runs); the table is
# the median over the rounds [min-max] and moe/llama.cpp of the medians.
#
# Memory budget (root only; --no-budget skips it): moe-bench decode with
# --vram at 50% and 25% of the expert bytes, against llama-bench -n 32 in a
# memory cgroup limited to the same bytes, the page cache dropped before each.
#
# A benchmark, not a test: nothing here fails on a figure.  On a shared
# machine run it when the machine is quiet, or read the spreads.
set -eu

ROUNDS=${ROUNDS:-5}
TYPES=${TYPES:-Q4_K_M Q8_0 MXFP4_MOE}
NCPU=$(nproc)
THREADS=${THREADS:-1 $NCPU}
BUILD=${BUILD:-build}
CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moe-llama.cpp}
VER=${NODE_LLAMA_CPP:-3.22.1}
NICE=${NICE:-10}
BIN=${MOE_BIN:-$BUILD/bin}
BUILD_ONLY=0
BUDGET=1

die() { echo "vs-llama.cpp: $*" >&2; exit 1; }
note() { echo "vs-llama.cpp: $*" >&2; }

for a in "$@"; do
	case $a in
	--build-only) BUILD_ONLY=1 ;;
	--no-budget) BUDGET=0 ;;
	-h|--help) sed -n '3,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument '$a' (use --build-only, --no-budget or --help)" ;;
	esac
done
case $ROUNDS in ''|*[!0-9]*) die "ROUNDS=$ROUNDS: use a count (0: only the memory-budget case)" ;; esac

for t in npm git cmake python3 c++; do
	command -v $t >/dev/null || die "$t is needed: install it (apt-get install npm git cmake python3 g++)"
done
mkdir -p "$CACHE" || die "cannot make $CACHE: set CACHE to a writable directory"

# --- llama.cpp, from the bundle inside node-llama-cpp ---------------------------
PKG=$CACHE/node-llama-cpp-$VER.tgz
SRC=$CACHE/src
LBUILD=$CACHE/build
LBENCH=$LBUILD/bin/llama-bench
LQUANT=$LBUILD/bin/llama-quantize
STAMP=$CACHE/built-from

build_llama() {
	[ "$(cat "$STAMP" 2>/dev/null)" = "node-llama-cpp@$VER" ] &&
		[ -x "$LBENCH" ] && [ -x "$LQUANT" ] && return 0
	rm -f "$STAMP"
	if [ ! -s "$PKG" ]; then
		note "fetching node-llama-cpp@$VER with npm pack"
		(cd "$CACHE" && npm pack --silent "node-llama-cpp@$VER" >/dev/null) ||
			die "npm pack node-llama-cpp@$VER failed: check the network or the npm registry setting"
	fi
	rm -rf "$CACHE/package" "$SRC" "$LBUILD"
	tar xzf "$PKG" -C "$CACHE" package/llama ||
		die "$PKG: no package/llama in it; delete it and rerun"
	bundle=$CACHE/package/llama/gitRelease.bundle
	[ -f "$bundle" ] || die "node-llama-cpp@$VER ships no llama/gitRelease.bundle: pin another version with NODE_LLAMA_CPP"
	git clone -q "$bundle" "$SRC" 2>/dev/null || die "git clone of $bundle failed"
	note "building llama-bench and llama-quantize in $LBUILD (CPU only, -march=native; slow on few cores)"
	nice -n "$NICE" cmake -S "$SRC" -B "$LBUILD" -DCMAKE_BUILD_TYPE=Release \
		-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF \
		>"$CACHE/cmake.log" 2>&1 || die "cmake configure failed: see $CACHE/cmake.log"
	nice -n "$NICE" cmake --build "$LBUILD" -j"$NCPU" --target llama-bench llama-quantize \
		>"$CACHE/build.log" 2>&1 || die "llama.cpp build failed: see $CACHE/build.log"
	echo "node-llama-cpp@$VER" > "$STAMP"
}
build_llama
[ "$BUILD_ONLY" = 1 ] && { echo "$LBENCH"; echo "$LQUANT"; exit 0; }

for t in moe-bench moe-mkmodel; do
	[ -x "$BIN/$t" ] || die "$BIN/$t not built: run \`make BUILD=$BUILD\` first"
done

# --- the model ------------------------------------------------------------------
MODELS=$CACHE/models
mkdir -p "$MODELS"
F32=$MODELS/qwen3moe-1.7b-f32.gguf
if [ ! -s "$F32" ]; then
	note "writing $F32 (about 7 GB) with moe-mkmodel"
	nice -n "$NICE" "$BIN/moe-mkmodel" --arch qwen3moe --embd 1024 --layers 16 --experts 64 \
		--experts-used 8 --expert-ff 512 --vocab 32768 --heads 16 --kv-heads 4 \
		--head-dim 64 --type f32 -o "$F32.tmp" >/dev/null || die "moe-mkmodel failed"
	mv "$F32.tmp" "$F32"
fi
for ty in $TYPES; do
	f=$MODELS/qwen3moe-1.7b-$ty.gguf
	[ -s "$f" ] && continue
	note "quantizing to $ty with llama-quantize"
	nice -n "$NICE" "$LQUANT" "$F32" "$f.tmp" "$ty" "$NCPU" >"$MODELS/quantize-$ty.log" 2>&1 ||
		die "llama-quantize $ty failed: see $MODELS/quantize-$ty.log"
	mv "$f.tmp" "$f"
done

OUT=$(mktemp -d "${TMPDIR:-/tmp}/vs-llama.XXXXXX")
trap 'rm -rf "$OUT"; [ -n "${CG:-}" ] && rmdir "$CG" 2>/dev/null; true' EXIT INT TERM
RES=$OUT/results.tsv

# llama-bench JSON -> "pp tg" (best sample of each test, tokens/s; - where absent)
llama_json() {
	python3 -c '
import json, sys
pp = tg = "-"
for t in json.load(sys.stdin):
    v = max(t.get("samples_ts") or [t["avg_ts"]])
    if t["n_prompt"] > 0 and t["n_gen"] == 0: pp = "%.3f" % v
    if t["n_gen"] > 0 and t["n_prompt"] == 0: tg = "%.3f" % v
print(pp, tg)'
}
# moe-bench decode JSON -> the values of the keys named (a.b for nested ones)
moe_json() {
	python3 -c '
import json, sys
o = json.load(sys.stdin)
out = []
for k in sys.argv[1:]:
    v = o
    for p in k.split("."): v = v[p]
    out.append("%.3f" % v if isinstance(v, float) else str(v))
print(*out)' "$@"
}

run_llama() { # file threads -> "pp tg"
	nice -n "$NICE" "$LBENCH" -m "$1" -t "$2" -p 64 -n 32 -r 3 -o json 2>"$OUT/llama.err" |
		llama_json || die "llama-bench on $1 failed: $(tail -3 "$OUT/llama.err")"
}
run_moe() { # file threads -> "pp tg"
	nice -n "$NICE" "$BIN/moe-bench" decode --json --resident --threads "$2" --prompt 64 \
		--tokens 32 "$1" 2>"$OUT/moe.err" | moe_json prefill_tps resident_tps ||
		die "moe-bench decode on $1 failed: $(tail -3 "$OUT/moe.err")"
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $NCPU CPUs," \
	"load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "llama.cpp: node-llama-cpp@$VER, $(git -C "$SRC" log -1 --format=%h 2>/dev/null)," \
	"$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tag"])' \
		"$CACHE/package/llama/llama.cpp.info.json" 2>/dev/null || echo '?')"
echo "moe: $(git describe --always --dirty 2>/dev/null || echo '?'), kernels" \
	"$("$BIN/moe-bench" quant --json --mib 1 --reps 1 --type q8_0 2>/dev/null | moe_json kernels 2>/dev/null || echo '?')"

r=1
while [ "$r" -le "$ROUNDS" ]; do
	for ty in $TYPES; do
		f=$MODELS/qwen3moe-1.7b-$ty.gguf
		for t in $THREADS; do
			# alternate which side goes first, so that neither always runs second
			if [ $((r % 2)) = 1 ]; then
				l=$(run_llama "$f" "$t"); m=$(run_moe "$f" "$t")
			else
				m=$(run_moe "$f" "$t"); l=$(run_llama "$f" "$t")
			fi
			printf '%s\t%s\t%s\t%s\t%s\n' "$ty" "$t" "$r" "$l" "$m" | tr ' ' '\t' >>"$RES"
		done
	done
	note "round $r of $ROUNDS done (load $(cut -d' ' -f1 /proc/loadavg))"
	r=$((r + 1))
done

[ "$ROUNDS" = 0 ] || python3 - "$RES" "$THREADS" <<'EOF'
import sys, statistics as st
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
threads = sys.argv[2].split()
def med(v):
    v = [float(x) for x in v if x != "-"]
    return (st.median(v), min(v), max(v)) if v else (float("nan"),) * 3
print()
print("resident, warm page cache: tokens/s, median of %d rounds [min-max]" %
      len({r[2] for r in rows}))
print("%-10s %3s  %-21s %-21s %5s  %-21s %-21s %5s" % ("type", "thr", "llama.cpp pp64",
      "moe pp64", "ratio", "llama.cpp tg32", "moe tg32", "ratio"))
tg = {}
for ty in dict.fromkeys(r[0] for r in rows):
    for t in threads:
        sel = [r for r in rows if r[0] == ty and r[1] == t]
        lp, lt, mp, mt = (med([r[i] for r in sel]) for i in (3, 4, 5, 6))
        tg[ty, t] = mt[0]
        f = lambda m: "%6.1f [%6.1f-%6.1f]" % m
        print("%-10s %3s  %s %s %5.2f  %s %s %5.2f" % (ty, t, f(lp), f(mp), mp[0] / lp[0],
              f(lt), f(mt), mt[0] / lt[0]))
if len(threads) > 1:
    print("moe decode, %s threads / %s thread: " % (threads[-1], threads[0]) +
          ", ".join("%s %.2f" % (ty, tg[ty, threads[-1]] / tg[ty, threads[0]])
                    for ty in dict.fromkeys(r[0] for r in rows)))
EOF

[ "$BUDGET" = 1 ] || exit 0
if [ "$(id -u)" != 0 ]; then
	note "memory-budget case skipped: it needs root for the memory cgroup and drop_caches" \
		"(run as root, or pass --no-budget)"
	exit 0
fi
# a memory cgroup: v2 where the memory controller is on, else v1
if grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
	CG=/sys/fs/cgroup/moe-vs-llama.$$ LIMIT=memory.max
	echo +memory > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
elif [ -d /sys/fs/cgroup/memory ]; then
	CG=/sys/fs/cgroup/memory/moe-vs-llama.$$ LIMIT=memory.limit_in_bytes
else
	note "memory-budget case skipped: no memory cgroup controller is mounted"
	exit 0
fi
mkdir "$CG" || die "cannot make the cgroup $CG"
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

T=$NCPU
echo
echo "memory budget, $T threads, page cache dropped before each run: decode tokens/s"
printf '%-10s %7s %12s %9s %10s %5s\n' type experts bytes moe llama.cpp ratio
for ty in $TYPES; do
	f=$MODELS/qwen3moe-1.7b-$ty.gguf
	drop
	o=$(nice -n "$NICE" "$BIN/moe-bench" decode --json --threads "$T" --prompt 64 --tokens 32 \
		"$f" 2>"$OUT/moe.err") || die "moe-bench decode on $f failed: $(tail -3 "$OUT/moe.err")"
	for pct in 50 25; do
		bytes=$(echo "$o" | moe_json "vram$pct.vram_bytes")
		mtps=$(echo "$o" | moe_json "vram$pct.tps")
		echo "$bytes" > "$CG/$LIMIT" || die "cannot set $CG/$LIMIT to $bytes"
		drop
		# shellcheck disable=SC2016 # $$ and $@ are the inner shell's
		# a run the cgroup's OOM killer ends is a result too: it does not fit
		if ! nice -n "$NICE" sh -c 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"' sh \
			"$CG" "$LBENCH" -m "$f" -t "$T" -p 0 -n 32 -r 1 -o json >"$OUT/llama.json" \
			2>"$OUT/llama.err"; then
			note "llama-bench in $bytes bytes failed: $(tail -2 "$OUT/llama.err")"
			ltps=0
		else
			ltps=$(llama_json <"$OUT/llama.json" | cut -d' ' -f2)
		fi
		python3 -c 'import sys; b, m, l, ty, pct = sys.argv[1:]
r = "%5.1f" % (float(m) / float(l)) if float(l) > 0 else " fail"
print("%-10s %6s%% %12s %9.2f %10.2f %s" % (ty, pct, b, float(m), float(l), r))' \
			"$bytes" "$mtps" "$ltps" "$ty" "$pct"
	done
done
