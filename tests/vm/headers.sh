#!/bin/sh
# Print the directory of the kernel headers moe.ko builds against: $KDIR when
# set, else the newest installed generic Debian 6.1 headers, else the newest
# that apt offers, installed here (root).  The cloud flavour has no DRM.
set -eu
if [ -n "${KDIR:-}" ]; then
	echo "$KDIR"
	exit 0
fi
newest_installed() {
	for d in /usr/src/linux-headers-6.1.0-*-amd64; do
		[ -d "$d" ] && echo "$d"
	done | sort -V | tail -n 1
}
newest_offered() {
	apt-cache search --names-only '^linux-headers-6\.1\.0-[0-9]+-amd64$' 2>/dev/null |
		sed 's/^\(linux-headers-[^ ]*\) .*/\1/' | sort -V | tail -n 1
}
dir=$(newest_installed)
if [ -z "$dir" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "kmod: no linux-headers-6.1.0-*-amd64 installed; as root run:" \
			"apt-get install linux-headers-amd64, or pass KDIR=" >&2
		exit 1
	fi
	pkg=$(newest_offered)
	if [ -z "$pkg" ]; then
		apt-get update -q >/dev/null 2>&1 || true
		pkg=$(newest_offered)
	fi
	[ -n "$pkg" ] || { echo "kmod: apt offers no linux-headers-6.1.0-*-amd64" >&2; exit 1; }
	echo "kmod: installing $pkg" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$pkg" \
		>/dev/null || { echo "kmod: apt-get install $pkg failed" >&2; exit 1; }
	dir=$(newest_installed)
fi
echo "$dir"
