#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Regenerate data/: run llama.cpp on the tiny models of models.txt and keep
# what the engine tests compare with (README.md).  Needs network access to
# the npm registry the first time, cmake and a C++ compiler; make check
# never runs this, it reads the files it wrote.
#
#   tests/llamacpp/make-reference.sh [BUILD]    (BUILD: moe's build dir, default build)
#
# llama.cpp comes from the source the npm package node-llama-cpp bundles as a
# git bundle; it is built CPU-only, once, under $MOE_LLAMACPP_CACHE
# (default /root/.cache/moe-llama.cpp), never inside this tree.
set -eu

VERSION=3.22.1
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
build=$(cd "$src" && mkdir -p "${1:-build}" && cd "${1:-build}" && pwd)
cache=${MOE_LLAMACPP_CACHE:-/root/.cache/moe-llama.cpp}
lib=$cache/llama.cpp/build/bin
n_prompt=16
n_greedy=8

if [ ! -e "$lib/libllama.so" ]; then
	mkdir -p "$cache"
	cd "$cache"
	[ -f "node-llama-cpp-$VERSION.tgz" ] || npm pack "node-llama-cpp@$VERSION" >/dev/null
	[ -d package ] || tar xzf "node-llama-cpp-$VERSION.tgz"
	bundle=$(find package -name '*.bundle' | head -n 1)
	[ -n "$bundle" ] || { echo "$0: no git bundle in node-llama-cpp $VERSION" >&2; exit 1; }
	[ -d llama.cpp ] || git clone -q "$bundle" llama.cpp
	cmake -S llama.cpp -B llama.cpp/build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
		-DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=ON >/dev/null
	cmake --build llama.cpp/build -j2 --target llama >/dev/null
fi
inc=$cache/llama.cpp
dump=$cache/moe-llama-dump
cc -O2 -Wall -Wextra -I"$inc/include" -I"$inc/ggml/include" "$here/llama-dump.c" \
	-L"$lib" -lllama -lggml -lggml-base -Wl,-rpath,"$lib" -o "$dump"
make -C "$src" -j2 BUILD="$build" "$build/bin/moe-mkmodel" >/dev/null

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$here/data"
grep -v '^#' "$here/models.txt" | while read -r name tol args; do
	[ -n "$name" ] || continue
	# shellcheck disable=SC2086 # the arguments are words
	"$build/bin/moe-mkmodel" $args -q -o "$tmp/$name.gguf"
	"$dump" "$tmp/$name.gguf" "$here/tokens.txt" "$n_prompt" "$n_greedy" "$here/data/$name"
done
