#!/bin/sh
# SPDX-License-Identifier: MIT
#
# moe-server's batching: aggregate decode tokens/s of 1, 4 and 8 concurrent
# streams, with a --vram budget that holds 25% of the experts, against the
# same streams run one after another on the same server.  Concurrent streams
# decode in one batch, so each expert a layer fetches serves all of them;
# one after another, each stream fetches its own.  Rounds interleave the two
# ways; the medians and their ratio are printed (and the spread: min..max),
# with the expert bytes read from the file per generated token (/metrics).
#
#   bench/server.sh      env: BUILD=build ROUNDS=3 TOKENS=48 THREADS=(all) MODEL=(generated)
#                        EXPERTS=64 SKEW=0.5 (the generated model's experts, router skew)
#                        SERVER_ARGS= (more moe-server options, e.g. --policy stats)
set -eu

BUILD=${BUILD:-build}
ROUNDS=${ROUNDS:-3}
TOKENS=${TOKENS:-48}
BIN=${MOE_BIN:-$BUILD/bin}
WORK=$BUILD/tmp/bench-server
CTX=256
PAR=8

die() { echo "bench/server: $*" >&2; exit 1; }
for t in moe-server moe-mkmodel moectl; do
	[ -x "$BIN/$t" ] || die "$BIN/$t not built: run \`make BUILD=$BUILD\` first"
done
command -v curl >/dev/null || die "curl is not installed"
mkdir -p "$WORK"
EXPERTS=${EXPERTS:-64}
SKEW=${SKEW:-0.5}
MODEL=${MODEL:-$WORK/model-e$EXPERTS-s$SKEW.gguf}
if [ ! -e "$MODEL" ]; then
	# routed experts dominate the file, as in the real models (no vocabulary: token ids)
	"$BIN/moe-mkmodel" -q -o "$MODEL" --arch qwen3moe --type q8_0 --layers 8 --embd 512 \
		--vocab 512 --experts "$EXPERTS" --experts-used 4 --expert-ff 512 \
		--router-skew "$SKEW"
fi

# The budget: what the engine needs besides experts (the KV cache of every
# sequence counted), plus a quarter of the expert bytes.
num() { sed -n "s/.*\"$1\": \([0-9]*\).*/\1/p"; }
plan=$("$BIN/moectl" --json plan "$MODEL" --vram 64G --ctx $((CTX * PAR)) --no-stats)
info=$("$BIN/moectl" --json info "$MODEL")
fixed=$(( $(echo "$plan" | num resident_bytes) + $(echo "$plan" | num kv_bytes) + \
	 2 * $(echo "$plan" | num scratch_bytes) + $(echo "$plan" | num workspace_bytes) ))
experts=$(echo "$info" | num expert_bytes_total)
each=$(echo "$info" | num expert_bytes_each)
VRAM=$((fixed + experts / 4 + each))

PORT=0
LOG=$WORK/server.log
: >"$LOG"
"$BIN/moe-server" -m "$MODEL" --port 0 --ctx $CTX --parallel $PAR --queue 16 \
	--max-tokens $TOKENS --vram "$VRAM" --no-state ${THREADS:+--threads $THREADS} ${SERVER_ARGS:-} \
	2>"$LOG" &
SRV=$!
trap 'kill $SRV 2>/dev/null; wait $SRV 2>/dev/null || true' EXIT
i=0
while [ $i -lt 300 ]; do
	PORT=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\)\/.*/\1/p' "$LOG")
	[ -n "$PORT" ] && break
	kill -0 $SRV 2>/dev/null || die "moe-server did not start: $(cat "$LOG")"
	sleep 0.1
	i=$((i + 1))
done
[ -n "$PORT" ] || die "moe-server did not start in 30 s (see $LOG)"
slots=$(sed -n 's/.* \([0-9]*\) expert slots x .* for \([0-9]*\) experts.*/\1 \2/p' "$LOG")
echo "model $MODEL; --vram $VRAM: $slots (expert slots, experts); $TOKENS tokens a stream"

# One stream: a completion of TOKENS tokens from its own prompt; prints the tokens made.
stream() {
	curl -s --max-time 600 "http://127.0.0.1:$PORT/v1/completions" \
		-d "{\"prompt\":[$1,$(($1 * 7 % 500 + 1)),$(($1 * 13 % 500 + 2))],\"max_tokens\":$TOKENS,\"temperature\":0}" |
		sed -n 's/.*"completion_tokens":\([0-9]*\).*/\1/p'
	echo
}
now() { date +%s.%N; }

# A counter of /metrics.
metric() {
	curl -s --max-time 30 "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m { print $2 }'
}

# Aggregate tokens/s of N streams, together (mode c) or one after another (mode s);
# appends the expert bytes read per token to $WORK/bytes.MODE.N.
run() {
	n=$1 mode=$2 k=0 pids="" b0=$(metric moe_read_bytes_total) t0=$(now)
	rm -f "$WORK"/out.*
	while [ $k -lt "$n" ]; do
		if [ "$mode" = c ]; then
			stream $((k + 1)) >"$WORK/out.$k" &
			pids="$pids $!"
		else
			stream $((k + 1)) >"$WORK/out.$k"
		fi
		k=$((k + 1))
	done
	for p in $pids; do
		wait "$p"
	done
	t1=$(now)
	toks=$(cat "$WORK"/out.* | awk '{ s += $1 } END { print s + 0 }')
	[ "$toks" -eq $((n * TOKENS)) ] || die "$n streams ($mode) made $toks tokens, not $((n * TOKENS))"
	echo "$(metric moe_read_bytes_total) $b0 $toks" |
		awk '{ printf "%.3f\n", ($1 - $2) / $3 / 1048576 }' >>"$WORK/bytes.$mode.$n"
	echo "$toks $t0 $t1" | awk '{ printf "%.3f\n", $1 / ($3 - $2) }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f (%.2f..%.2f)", m, v[1], v[NR] }'; }

stream 99 >/dev/null        # warm up: the first fetches, the page cache
printf "%-8s %-22s %-22s %-6s %-20s %s\n" streams "together tok/s" "one by one tok/s" ratio \
	"together MiB/token" "one by one MiB/token"
for n in 1 4 8; do
	r=0
	: >"$WORK/c.$n"
	: >"$WORK/s.$n"
	: >"$WORK/bytes.c.$n"
	: >"$WORK/bytes.s.$n"
	while [ $r -lt "$ROUNDS" ]; do
		run "$n" c >>"$WORK/c.$n"
		run "$n" s >>"$WORK/s.$n"
		r=$((r + 1))
	done
	c=$(median <"$WORK/c.$n")
	s=$(median <"$WORK/s.$n")
	ratio=$(echo "${c%% *} ${s%% *}" | awk '{ printf "%.2f", $1 / $2 }')
	printf "%-8s %-22s %-22s %-6s %-20s %s\n" "$n" "$c" "$s" "$ratio" \
		"$(median <"$WORK/bytes.c.$n")" "$(median <"$WORK/bytes.s.$n")"
done
