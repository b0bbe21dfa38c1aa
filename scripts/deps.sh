#!/bin/sh
# Make sure the Debian packages the build needs are present.  Run as root it
# installs what is missing with apt-get; otherwise it names the packages.
# Arguments: pkg-config module names to check.
set -u
PKG_CONFIG=${PKG_CONFIG:-pkg-config}

deb_for() {
	case "$1" in
	liburing) echo liburing-dev ;;
	hwloc) echo libhwloc-dev ;;
	libdrm) echo libdrm-dev ;;
	check) echo check ;;
	libmicrohttpd) echo libmicrohttpd-dev ;;
	jansson) echo libjansson-dev ;;
	*) echo "$1" ;;
	esac
}

missing=""
command -v "$PKG_CONFIG" >/dev/null 2>&1 || missing="pkg-config"
for m in "$@"; do
	if ! command -v "$PKG_CONFIG" >/dev/null 2>&1 || ! "$PKG_CONFIG" --exists "$m"; then
		missing="$missing $(deb_for "$m")"
	fi
done
# The tokenizer's Unicode tables and the fuzz targets need these too.
[ -r /usr/share/unicode/UnicodeData.txt ] || missing="$missing unicode-data"
command -v clang >/dev/null 2>&1 || missing="$missing clang"
# the unit tests' CUDA emulation is C++
command -v g++ >/dev/null 2>&1 || missing="$missing g++"
[ -n "$(ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a 2>/dev/null)" ] ||
	missing="$missing libclang-rt-14-dev"

[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
	echo "deps: missing Debian packages:$missing" >&2
	echo "deps: install them as root: apt-get install$missing" >&2
	exit 1
fi
echo "deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q $missing >/dev/null; then
	apt-get update -q >/dev/null && apt-get install -y -q $missing >/dev/null || {
		echo "deps: apt-get install$missing failed; install them and run make again" >&2
		exit 1
	}
fi
