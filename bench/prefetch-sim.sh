#!/bin/sh
# SPDX-License-Identifier: MIT
#
# The cache's policies and prefetchers against Belady's optimum, simulated
# on routing traces: the gpt-oss-20b trace of ../shared/traces, and traces
# recorded by moe-run (with the speculative predictions of its prefetcher)
# from generated models whose routers prefer some experts and agree across
# layers.  moe-bench prefetch tunes on the first half of each trace's
# sequences and reports the second half at 10, 25 and 50% of all experts.
# The figures are counts, not timings: any machine gives the same.
#
#   bench/prefetch-sim.sh            env: BUILD=build SHARED=../shared SEQS=8 TOKENS=160
set -eu

BUILD=${BUILD:-build}
SHARED=${SHARED:-../shared}
SEQS=${SEQS:-8}
TOKENS=${TOKENS:-160}
BIN=${MOE_BIN:-$BUILD/bin}
WORK=$BUILD/tmp/prefetch-sim

die() { echo "prefetch-sim: $*" >&2; exit 1; }

for t in moe-bench moe-run moe-mkmodel; do
	[ -x "$BIN/$t" ] || die "$BIN/$t not built: run \`make BUILD=$BUILD\` first"
done
mkdir -p "$WORK"
TRACES=""
GPTOSS=$SHARED/traces/gpt-oss-20b/gptoss20b_decode_routes.txt
if [ -r "$GPTOSS" ]; then
	TRACES=$GPTOSS
else
	echo "prefetch-sim: no $GPTOSS: the generated models only" >&2
fi

# name, then moe-mkmodel options
for spec in "skew1-corr08:--router-skew 1.0 --layer-correlation 0.8" \
	    "skew2-corr09:--router-skew 2.0 --layer-correlation 0.9"; do
	name=${spec%%:*}
	opts=${spec#*:}
	model=$WORK/$name.gguf
	trace=$WORK/$name.trace
	# shellcheck disable=SC2086
	"$BIN/moe-mkmodel" -q -o "$model" --arch qwen3moe --type q8_0 --layers 12 --embd 256 \
		--vocab 512 --experts 32 --experts-used 4 --expert-ff 256 $opts
	: >"$trace"
	s=0
	while [ $s -lt "$SEQS" ]; do
		# every sequence its own prompt and sampling seed
		"$BIN/moe-run" -m "$model" --tokens "$((s * 7 + 1)),$((s * 13 + 2)),$((s + 3))" \
			-n "$TOKENS" --temp 0.8 --seed "$s" --threads 2 --no-state \
			--prefetch spec:depth=2 --trace-out "$WORK/seq.trace" --trace-predictions \
			>/dev/null
		cat "$WORK/seq.trace" >>"$trace"
		s=$((s + 1))
	done
	TRACES="$TRACES $trace"
done
# shellcheck disable=SC2086
"$BIN/moe-bench" prefetch $TRACES
