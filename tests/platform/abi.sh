#!/bin/sh
# SPDX-License-Identifier: MIT
# abi.sh LIB MAP HEADER...: the symbols libmoe exports, three ways.
#
# The functions declared MOE_API in the public headers, the names the
# version script lists, and the dynamic symbols the shared library defines
# must be the same set, and every exported symbol must carry a version of
# the script.  Prints each difference with what to do about it and exits 1;
# exits 0 and prints a count when all agree.
set -u

[ $# -ge 3 ] || { echo "usage: abi.sh LIBMOE.SO LIBMOE.MAP HEADER..." >&2; exit 2; }
lib=$1 map=$2
shift 2
for f in "$lib" "$map" "$@"; do
	[ -r "$f" ] || { echo "abi.sh: cannot read $f" >&2; exit 2; }
done
command -v nm >/dev/null || { echo "abi.sh: nm (binutils) is needed" >&2; exit 2; }

tmp=$(mktemp -d) || exit 2
trap 'rm -rf "$tmp"' EXIT

# Every declaration starting with MOE_API names its function just before the
# first '(' of that line (the project writes the name on the MOE_API line).
cat "$@" | grep -E '^MOE_API[[:space:]]' |
	sed -E 's/\(.*//; s/.*[^A-Za-z0-9_]([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*$/\1/' |
	sort >"$tmp/header"

# The global names of every node: comments removed, then "name;" lines
# between "global:" and "local:" (or the node's end).
sed -e 's|/\*.*\*/||' "$map" | awk '
	/\/\*/ { c = 1 } c { if ($0 ~ /\*\//) c = 0; next }
	/global:/ { g = 1; next }
	/local:/ || /^}/ { g = 0; next }
	g { gsub(/[[:space:];]/, ""); if ($0 != "") print }' | sort >"$tmp/map"

# The map's version nodes, to check each exported symbol's version.
sed -n -E 's/^([A-Za-z_][A-Za-z0-9_.]*)[[:space:]]*\{.*/\1/p' "$map" | sort -u >"$tmp/nodes"

# Defined dynamic symbols with their versions ("name@@NODE"), the version
# nodes themselves (absolute symbols named like the node) left out.
nm -D --defined-only "$lib" | awk '{ print $NF }' | sort -u >"$tmp/dyn.v"
sed 's/@.*//' "$tmp/dyn.v" | grep -vxF -f "$tmp/nodes" | sort -u >"$tmp/lib"

bad=0
report() { # FILE MESSAGE
	if [ -s "$1" ]; then
		while read -r s; do echo "abi: $s: $2"; done <"$1"
		bad=1
	fi
}
dups() { uniq -d "$1" >"$tmp/d"; report "$tmp/d" "$2"; }

dups "$tmp/header" "declared MOE_API more than once in the headers"
dups "$tmp/map" "listed more than once in $map"
sort -u -o "$tmp/header" "$tmp/header"
sort -u -o "$tmp/map" "$tmp/map"
comm -23 "$tmp/header" "$tmp/map" >"$tmp/x"
report "$tmp/x" "declared MOE_API but not in $map (add it to the node of this release)"
comm -13 "$tmp/header" "$tmp/map" >"$tmp/x"
report "$tmp/x" "in $map but declared MOE_API in no public header (declare and document it, or drop it from the map)"
comm -23 "$tmp/map" "$tmp/lib" >"$tmp/x"
report "$tmp/x" "in $map but not defined by $lib (a public function without a definition, or not MOE_API where it is defined)"
comm -13 "$tmp/map" "$tmp/lib" >"$tmp/x"
report "$tmp/x" "exported by $lib but not in $map"
# Each exported function versioned by a node of the script.
grep -vE '@@?[A-Za-z_][A-Za-z0-9_.]*$' "$tmp/dyn.v" | grep -vxF -f "$tmp/nodes" >"$tmp/x" || :
report "$tmp/x" "exported by $lib without a symbol version (link with --version-script=$map)"
sed -n -E 's/.*@@?([A-Za-z_][A-Za-z0-9_.]*)$/\1/p' "$tmp/dyn.v" | sort -u |
	grep -vxF -f "$tmp/nodes" >"$tmp/x" || :
report "$tmp/x" "a symbol version of $lib that is no node of $map"

[ $bad -eq 0 ] || exit 1
echo "abi: $(wc -l <"$tmp/map") symbols agree between the headers, $map and $lib"
