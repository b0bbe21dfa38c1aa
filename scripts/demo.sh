#!/bin/sh
# The README's first command: generate a MoE model and generate text from it
# with a device-memory budget smaller than its experts, so that experts stream.
set -eu
BUILD=${1:-build}
BIN=$BUILD/bin
DIR=$BUILD/demo
MODEL=$DIR/qwen3moe-demo.gguf
mkdir -p "$DIR"

if [ ! -f "$MODEL" ]; then
	echo "== generating a Qwen3-MoE-style model (Q4_K experts) with moe-mkmodel"
	"$BIN/moe-mkmodel" --arch qwen3moe --layers 8 --embd 512 --heads 8 --kv-heads 4 \
		--head-dim 64 --experts 32 --experts-used 4 --expert-ff 512 --vocab 2048 \
		--type q4_K --type-other q8_0 --align 4096 --router-skew 1.0 \
		--layer-correlation 0.6 --seed 1 -o "$MODEL"
fi
echo "== moectl info"
"$BIN/moectl" info "$MODEL"

# A third of the expert bytes: most layers must evict and stream.
EXPERTS=$("$BIN/moectl" --json info "$MODEL" | sed -n 's/.*"expert_bytes_total": \([0-9]*\).*/\1/p')
RESIDENT=$("$BIN/moectl" --json info "$MODEL" | sed -n 's/.*"resident_bytes": \([0-9]*\).*/\1/p')
VRAM=$((RESIDENT + EXPERTS / 3 + 16 * 1024 * 1024))
echo "== moe-run with --vram $VRAM bytes (resident $RESIDENT + a third of $EXPERTS expert bytes + scratch)"
"$BIN/moe-run" -m "$MODEL" --tokens 1,2,3,4,5,6,7,8 -n 32 --vram "$VRAM" --stats
