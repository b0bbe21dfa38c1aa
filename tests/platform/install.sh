#!/bin/sh
# SPDX-License-Identifier: MIT
# install.sh SRC BUILD: make install into a temporary DESTDIR, use what it
# installed, make uninstall, and check that nothing is left.
#
#  - the tree has the library (static, shared with soname links), headers,
#    libmoe.pc, the tools, a man page per API function, the udev rule and
#    the DKMS tree;
#  - the installed moe-mkmodel writes a model; the installed moe-run decodes
#    it with the installed libmoe.so.1 (its run path, $ORIGIN/../lib); the
#    installed moectl (static) runs;
#  - a program built with `pkg-config --cflags --libs libmoe` alone (the
#    installed .pc, sysroot-relative) runs against the installed shared
#    library and reads that model; the same program linked statically with
#    `pkg-config --static` does too;
#  - the bash completion for every tool, and the man pages of every tool and
#    moectl command (moectl-status.1, ...) where rst2man is installed (else
#    install says they were left out);
#  - make uninstall removes every file and link install made.
# Environment: CC (default cc), MAKE (default make), SAN_LDFLAGS (the
# sanitizer flags the library was built with, if any).  Exits 0 when all
# holds, else 1 after saying what did not.
set -u

[ $# -eq 2 ] || { echo "usage: install.sh SRC BUILD" >&2; exit 2; }
src=$1 build=$2
cc=${CC:-cc} mk=${MAKE:-make} san=${SAN_LDFLAGS:-}
prefix=/opt/moe-test
dest=$(mktemp -d "${TMPDIR:-/tmp}/moe-install.XXXXXX") || exit 2
trap 'rm -rf "$dest" "$dest".*.log' EXIT
fail() { echo "install.sh: $*"; exit 1; }

# SANITIZE=0 and the caller's BUILD: install what that build made.
run_make() {
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL "$mk" --no-print-directory -C "$src" \
		BUILD="$build" SANITIZE=0 PREFIX="$prefix" DESTDIR="$dest" "$@" \
		>"$dest.log" 2>&1 || { cat "$dest.log"; rm -f "$dest.log"; fail "make $* failed"; }
	mv "$dest.log" "$dest.$1.log"
}
run_make install
root=$dest$prefix

for f in lib/libmoe.a lib/libmoe.so.1 lib/libmoe.so include/moe/moe.h \
		include/moe/uapi/moe_drm.h lib/pkgconfig/libmoe.pc lib/udev/rules.d/60-moe.rules \
		bin/moectl bin/moe-mkmodel bin/moe-run bin/moe-bench; do
	[ -e "$root/$f" ] || fail "make install did not install $prefix/$f"
done
# a section-3 page for every MOE_API function of moe.h
want=$(grep -c '^MOE_API[[:space:]]' "$src/include/moe/moe.h")
have=$(ls "$root/share/man/man3" 2>/dev/null | grep -c '^moe_.*\.3$')
[ "$have" -eq "$want" ] || fail "$have section-3 man pages installed for $want MOE_API functions"
[ -s "$root/share/man/man3/moe_model_open.3" ] || fail "no man page moe_model_open(3)"
[ -L "$root/lib/libmoe.so" ] && [ -L "$root/lib/libmoe.so.1" ] ||
	fail "libmoe.so and libmoe.so.1 are not symbolic links"
soname=$(readelf -d "$root/lib/libmoe.so.1" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
[ "$soname" = libmoe.so.1 ] || fail "the installed library's soname is '$soname', not libmoe.so.1"
ls "$root"/src/moe-*/dkms.conf "$root"/src/moe-*/uapi/moe_drm.h >/dev/null 2>&1 ||
	fail "no DKMS tree (dkms.conf and uapi/moe_drm.h) under $prefix/src"
grep -q "^prefix=$prefix\$" "$root/lib/pkgconfig/libmoe.pc" ||
	fail "the installed libmoe.pc does not say prefix=$prefix"

# bash completion: one file, and a link named after every other tool
comp=$root/share/bash-completion/completions
cmp -s "$comp/moectl" "$src/completion/moectl" || fail "no bash completion $prefix/${comp#$root/}/moectl"
for t in moe-run moe-bench moe-mkmodel moe-server; do
	[ "$(readlink "$comp/$t" 2>/dev/null)" = moectl ] ||
		fail "$prefix/${comp#$root/}/$t is not a link to the moectl completion"
done
# man1: a page per tool and per moectl command, when rst2man could make them
if command -v rst2man >/dev/null 2>&1; then
	for t in moectl moe-run moe-bench moe-mkmodel moe-server; do
		[ -s "$root/share/man/man1/$t.1" ] || fail "no man page $t(1)"
	done
	for c in $(sh "$src/scripts/man.sh" --commands "$src/Documentation/tools/moectl.rst"); do
		grep -qF "moectl-$c \\- " "$root/share/man/man1/moectl-$c.1" 2>/dev/null ||
			fail "no man page moectl-$c(1)"
	done
	[ -s "$root/share/man/man1/moectl-status.1" ] || fail "no man page moectl-status(1)"
else
	grep -q "rst2man not found" "$dest.install.log" ||
		fail "make install neither installed the man1 pages nor said why"
fi

"$root/bin/moe-mkmodel" --arch qwen3moe --layers 2 --embd 64 --heads 2 --kv-heads 1 \
	--head-dim 32 --experts 4 --expert-ff 64 -q -o "$dest/m.gguf" ||
	fail "the installed moe-mkmodel failed"
# moe-run links the installed shared library, found through its run path
ldd "$root/bin/moe-run" | grep -q "libmoe.so.1 => $root/bin/../lib/libmoe.so.1" ||
	fail "the installed moe-run does not find the installed libmoe.so.1: $(ldd "$root/bin/moe-run")"
out=$(env -u LD_LIBRARY_PATH "$root/bin/moe-run" -m "$dest/m.gguf" --tokens 1,2,3 -n 2 \
	--no-state 2>&1) || fail "the installed moe-run failed: $out"
out=$(env -u LD_LIBRARY_PATH "$root/bin/moectl" version) && echo "$out" | grep -q "(libmoe.so.1)" ||
	fail "the installed moectl failed: $out"

# pkg-config reads the installed .pc, with its prefix moved to where DESTDIR put
# it (a copy: --define-variable would move libdrm's prefix too).
mkdir "$dest.pc" || exit 2
trap 'rm -rf "$dest" "$dest.pc" "$dest".*.log' EXIT
sed "s|^prefix=.*|prefix=$root|" "$root/lib/pkgconfig/libmoe.pc" >"$dest.pc/libmoe.pc"
export PKG_CONFIG_PATH="$dest.pc"
pc() { pkg-config "$@" libmoe; }
# Static: libmoe.a with its private requirements as shared libraries (their
# own static closures need -dev packages this machine may lack, e.g. udev's).
cflags=$(pc --cflags) && libs=$(pc --libs) && req=$(pc --print-requires-private) &&
	slibs="$(pkg-config --libs $req) -lm -ldl -pthread" ||
	fail "pkg-config does not know libmoe"
# shellcheck disable=SC2086
$cc -Wall -Wextra -o "$dest/prog" "$src/tests/platform/installed.c" $cflags $libs $san ||
	fail "cannot build a program with: $cflags $libs"
out=$(LD_LIBRARY_PATH="$root/lib" "$dest/prog" "$dest/m.gguf") ||
	fail "the program linked to the installed libmoe.so failed: $out"
echo "$out" | grep -q "^arch qwen3moe layers 2 q4_K q4_K\$" || fail "unexpected output: $out"
echo "$out" | grep -q "^library $root/lib/libmoe.so" ||
	fail "the program did not run with the installed library: $out"
# shellcheck disable=SC2086
$cc -Wall -Wextra -o "$dest/sprog" "$src/tests/platform/installed.c" $cflags \
	"$root/lib/libmoe.a" $slibs $san || fail "cannot link statically with: $slibs"
out=$("$dest/sprog" "$dest/m.gguf") || fail "the statically linked program failed: $out"
echo "$out" | grep -q "^arch qwen3moe layers 2" || fail "unexpected output: $out"
echo "$out" | grep -q "^library" && fail "the static program mapped a shared libmoe: $out"
rm -f "$dest/prog" "$dest/sprog" "$dest/m.gguf"

run_make uninstall
left=$(find "$dest" -mindepth 1 ! -type d)
[ -z "$left" ] || fail "make uninstall left: $left"
left=$(find "$root" -mindepth 1 2>/dev/null)
[ -z "$left" ] || fail "make uninstall left directories: $left"
echo "install.sh: install, pkg-config build (shared and static) and uninstall all good"
