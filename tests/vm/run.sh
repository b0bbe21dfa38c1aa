#!/bin/sh
# Boot Debian's 6.1 kernel under QEMU (TCG) with an emulated NVMe drive holding
# generated models, load drm and moe.ko, run moe-vmtest, and fail on any failed
# test or on BUG/WARNING/Oops/lockdep in the guest's dmesg.
#
# usage: tests/vm/run.sh [WORKDIR]        (root; installs what it needs with apt-get)
# env:   MOE_VM_KVER=6.1.0-NN-amd64 picks the kernel (default: newest generic 6.1),
#        MOE_VM_KERNEL=6.12 boots bookworm-backports' newest generic 6.12 instead
#        (image and headers fetched with apt lists of the run's own, unpacked
#        under WORKDIR: the machine's apt state and /usr/src stay untouched),
#        MOE_VM_REQUIRE=1 fails instead of skipping when not root,
#        MOE_VM_TIMEOUT=seconds for the guest (default 480), MOE_VM_VERBOSE=1 shows the console,
#        MOE_VM_BENCH=N runs no tests, only the benchmarks, N rounds (bench/vm-kmod.sh).
# Prints "N passed, N failed, N did not run (N of N expected ran)" last; exit
# status 0 only when every test that moe-vmtest and init.sh list passed.
set -eu

SRC=$(cd "$(dirname "$0")/../.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
	# Skipped, not passed: say so on the summary line.
	echo "vm: SKIPPED: needs root (it installs packages and boots a VM); run \`sudo make vm-check\`"
	echo "0 passed, 0 failed (vm-check skipped: not root)"
	[ "${MOE_VM_REQUIRE:-0}" = 1 ] && exit 1
	exit 0
fi

WORK=${1:-$SRC/build/vm}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
TIMEOUT=${MOE_VM_TIMEOUT:-480}
T0=$(date +%s)

say() { echo "vm: $*"; }
die() { echo "vm: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

apt_install() {
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -q --no-install-recommends "$@" >"$WORK/apt.log" 2>&1 && return 0
	apt-get update -q >>"$WORK/apt.log" 2>&1 || true
	apt-get install -y -q --no-install-recommends "$@" >>"$WORK/apt.log" 2>&1 ||
		die "apt-get install $* failed (see $WORK/apt.log)"
}

# Tools and static libraries: binary -> package.
need=""
command -v qemu-system-x86_64 >/dev/null || need="$need qemu-system-x86"
dpkg -s busybox-static >/dev/null 2>&1 || need="$need busybox-static"
command -v cpio >/dev/null || need="$need cpio"
command -v mke2fs >/dev/null || need="$need e2fsprogs"
command -v depmod >/dev/null || need="$need kmod"
command -v gcc >/dev/null || need="$need gcc libc6-dev"
command -v make >/dev/null || need="$need make"
[ -r /usr/lib/x86_64-linux-gnu/libdrm.a ] || need="$need libdrm-dev"
[ -r /usr/lib/x86_64-linux-gnu/liburing.a ] || need="$need liburing-dev"
# 6.12 builds BTF for modules (CONFIG_DEBUG_INFO_BTF_MODULES): pahole.
[ "${MOE_VM_KERNEL:-6.1}" = 6.12 ] && ! command -v pahole >/dev/null && need="$need dwarves"
command -v xz >/dev/null || need="$need xz-utils"
if [ -n "$need" ]; then
	say "installing$need"
	# shellcheck disable=SC2086 # one word per package
	apt_install $need
fi
/bin/busybox --list | grep -qx modprobe ||
	die "/bin/busybox has no modprobe: install busybox-static"

# The kernel: the one whose generic headers tests/vm/headers.sh picks (or installs).
IMAGE_DEB=""
if [ "${MOE_VM_KERNEL:-6.1}" = 6.12 ]; then
	# apt with its own sources list, state and cache under $WORK/apt.
	A=$WORK/apt
	mkdir -p "$A/etc" "$A/state/lists/partial" "$A/cache/archives/partial"
	echo "deb http://deb.debian.org/debian bookworm-backports main" >"$A/etc/sources.list"
	set -- -o Dir::Etc::SourceList="$A/etc/sources.list" -o Dir::Etc::SourceParts=/nonexistent \
		-o Dir::State="$A/state" -o Dir::Cache="$A/cache" \
		-o Dir::State::status=/var/lib/dpkg/status
	bp_newest() {
		apt-cache "$@" search --names-only '^linux-image-6\.12\.[0-9.]+\+deb12-amd64-unsigned$' \
			2>/dev/null | sed 's/^linux-image-\([^ ]*\)-unsigned .*/\1/' | sort -V | tail -n 1
	}
	KVER=$(bp_newest "$@")
	if [ -z "$KVER" ]; then
		apt-get "$@" update -q >"$WORK/apt.log" 2>&1 ||
			die "apt-get update of bookworm-backports failed (see $WORK/apt.log)"
		KVER=$(bp_newest "$@")
	fi
	[ -n "$KVER" ] || die "bookworm-backports offers no linux-image-6.12.*-amd64-unsigned"
	HROOT=$WORK/headers-$KVER
	KDIR=$HROOT/usr/src/linux-headers-$KVER
	if [ ! -r "$KDIR/.config" ] || [ ! -r "$WORK/deb/image-$KVER.deb" ]; then
		rm -rf "$WORK/deb" "$HROOT"
		mkdir -p "$WORK/deb" "$HROOT"
		abi=${KVER%-amd64}
		(cd "$WORK/deb" && apt-get "$@" download "linux-image-$KVER-unsigned" \
			"linux-headers-$KVER" "linux-headers-$abi-common" "linux-kbuild-$abi") \
			>>"$WORK/apt.log" 2>&1 || die "cannot download the $KVER packages (see $WORK/apt.log)"
		for deb in "$WORK"/deb/linux-headers-*.deb "$WORK"/deb/linux-kbuild-*.deb; do
			dpkg-deb -x "$deb" "$HROOT"
		done
		mv "$WORK"/deb/linux-image-*.deb "$WORK/deb/image-$KVER.deb"
		rm -f "$WORK"/deb/linux-*.deb
		# The flavour's Makefile names the common headers by absolute path.
		sed -i "s|^include /usr/src/|include $HROOT/usr/src/|" "$KDIR/Makefile"
	fi
	IMAGE_DEB=$WORK/deb/image-$KVER.deb
elif [ -n "${MOE_VM_KVER:-}" ]; then
	KDIR=/usr/src/linux-headers-$MOE_VM_KVER
	[ -d "$KDIR" ] || apt_install "linux-headers-$MOE_VM_KVER"
else
	KDIR=$(sh "$SRC/tests/vm/headers.sh") || die "no kernel headers"
fi
[ -n "${KVER:-}" ] || KVER=${KDIR##*/linux-headers-}

# The image package is unpacked, not installed: the host's boot stays alone.
KROOT=$WORK/kernel-$KVER
if [ ! -r "$KROOT/boot/vmlinuz-$KVER" ]; then
	rm -rf "$KROOT"
	[ -n "$IMAGE_DEB" ] || rm -rf "$WORK/deb"
	mkdir -p "$WORK/deb" && cd "$WORK/deb"
	[ -n "$IMAGE_DEB" ] || apt-get download "linux-image-$KVER-unsigned" >/dev/null 2>&1 ||
		apt-get download "linux-image-$KVER" >/dev/null 2>&1 || {
			apt-get update -q >/dev/null 2>&1 || true
			apt-get download "linux-image-$KVER-unsigned" >/dev/null 2>&1 ||
				die "cannot download linux-image-$KVER-unsigned"
		}
	if [ -n "$IMAGE_DEB" ]; then
		set -- "$IMAGE_DEB"
	else
		set -- "$WORK"/deb/linux-image-*.deb
	fi
	dpkg-deb -x "$1" "$KROOT"
	[ -n "$IMAGE_DEB" ] || rm -rf "$WORK/deb"
	depmod -b "$KROOT" -F "$KROOT/boot/System.map-$KVER" "$KVER"
	cd "$SRC"
fi

say "building moe.ko against $KVER"
# $MAKE (from the Makefile) shares its jobserver; only the compiler's and
# modpost's warnings count, not make's notes about jobs.
"${MAKE:-make}" -s -C "$SRC" kmod-build KDIR="$KDIR" KMOD_OUT="$WORK/kmod" \
	>"$WORK/kmod.log" 2>&1 ||
	{ cat "$WORK/kmod.log"; die "moe.ko does not build"; }
sh "$SRC/tests/vm/summary.sh" warnings "$WORK/kmod.log" >/dev/null &&
	{ cat "$WORK/kmod.log"; die "moe.ko builds with warnings"; }

say "building moe-vmtest (static)"
gcc -std=gnu11 -O2 -g -Wall -Wextra -Wno-missing-field-initializers -static \
	-I"$SRC/include" -I"$SRC/include/uapi/drm" -I/usr/include/libdrm \
	-o "$WORK/moe-vmtest" "$SRC/tests/vm/moe-vmtest.c" -ldrm -luring -lpthread ||
	die "moe-vmtest does not build"
# Every test that must report a result: moe-vmtest's and init.sh's own.
{ "$WORK/moe-vmtest" --list && grep -v '^#' "$SRC/tests/vm/init.tests"; } >"$WORK/expected" ||
	die "cannot list the VM tests"

# initramfs: busybox, the test, and the modules for drm, NVMe and ext4.
IR=$WORK/initramfs
rm -rf "$IR"
mkdir -p "$IR/bin" "$IR/dev" "$IR/proc" "$IR/sys" "$IR/mnt" "$IR/slow" "$IR/tmp" "$IR/etc"
cp /bin/busybox "$IR/bin/busybox"
cp "$SRC/tests/vm/init.sh" "$IR/init"
chmod 755 "$IR/init"
cp "$WORK/moe-vmtest" "$IR/bin/moe-vmtest"
echo "root:x:0:0:root:/:/bin/sh" >"$IR/etc/passwd"
echo "nobody:x:65534:65534:nobody:/:/bin/sh" >>"$IR/etc/passwd"
echo "moeuser:x:1001:1000:moeuser:/:/bin/sh" >>"$IR/etc/passwd"
printf "root:x:0:\nmoe:x:1000:moeuser\n" >"$IR/etc/group"
MD=lib/modules/$KVER
mkdir -p "$IR/$MD/extra"
cp "$KROOT/$MD/modules.builtin" "$KROOT/$MD/modules.builtin.modinfo" "$KROOT/$MD/modules.order" \
	"$IR/$MD/"
wanted="drm drm_shmem_helper nvme ext4 crc32c_generic"
for m in $wanted; do
	path=$(find "$KROOT/$MD/kernel" -name "$m.ko*" | head -n 1)
	[ -n "$path" ] || die "no $m module in linux-image-$KVER"
	rel=${path#"$KROOT/$MD/"}
	for f in $rel $(grep "^$rel:" "$KROOT/$MD/modules.dep" | cut -d: -f2); do
		mkdir -p "$IR/$MD/$(dirname "$f")"
		cp "$KROOT/$MD/$f" "$IR/$MD/$f"
	done
done
# 6.12's modules are xz-compressed; busybox's modprobe may not read that.
find "$IR/$MD" -name '*.ko.xz' -exec xz -d {} +
cp "$WORK/kmod/moe.ko" "$IR/$MD/extra/moe.ko"
# moectl, dynamically linked: its libraries and loader come along.
MOECTL=${MOE_BIN:-$SRC/build/bin}/moectl
if [ -x "$MOECTL" ]; then
	cp "$MOECTL" "$IR/bin/moectl"
	MOERUN=$(dirname "$MOECTL")/moe-run
	[ -x "$MOERUN" ] && cp "$MOERUN" "$IR/bin/moe-run"
	# The engine test links libmoe like moectl does.
	# shellcheck disable=SC2046,SC2086 # flag lists split into words
	gcc -std=gnu11 -O2 -Wall -Wextra -I"$SRC/include" -o "$IR/bin/moe-vmio" \
		"$SRC/tests/vm/moe-vmio.c" "$(dirname "$MOECTL")/../lib/libmoe.a" \
		$(pkg-config --libs liburing hwloc libdrm) -lm -ldl -pthread ${MOE_VM_LDFLAGS:-} ||
		die "moe-vmio does not build"
	# Both binaries' libraries: moectl may not need liburing, moe-vmio does.
	libs=$(ldd "$MOECTL" "$IR/bin/moe-vmio" $( [ -x "$MOERUN" ] && echo "$MOERUN") |
		awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)
	for lib in $libs; do
		dest=$lib
		# moectl finds libmoe through its run path, $ORIGIN/../lib
		case $lib in */libmoe.so.*) dest=/lib/${lib##*/} ;; esac
		mkdir -p "$IR$(dirname "$dest")"
		cp -L "$lib" "$IR$dest"
	done
else
	say "no $MOECTL: the moectl tests are skipped (build it with make first)"
fi
depmod -b "$IR" -F "$KROOT/boot/System.map-$KVER" "$KVER"
(cd "$IR" && find . | cpio -o -H newc --quiet | gzip -1) >"$WORK/initramfs.gz"

# The disk: an ext4 image with generated models.  Model files are root-only:
# the unprivileged test must reach them through the driver alone.
DISK=$WORK/disk
rm -rf "$DISK" "$WORK/disk.img"
mkdir -p "$DISK/models"
head -c $((96 * 1024 * 1024)) /dev/urandom >"$DISK/models/big.bin"
head -c $((1024 * 1024 + 1234)) /dev/urandom >"$DISK/models/tail.bin"
MKMODEL=${MOE_BIN:-$SRC/build/bin}/moe-mkmodel
if [ -x "$MKMODEL" ]; then
	"$MKMODEL" --arch qwen3moe --layers 2 --experts 8 --embd 512 --expert-ff 1024 \
		-o "$DISK/models/tiny.gguf" \
		>"$WORK/mkmodel.log" 2>&1 || { cat "$WORK/mkmodel.log"; die "moe-mkmodel failed"; }
fi
chmod 600 "$DISK/models/big.bin" "$DISK/models/tail.bin"
# root's and unreadable to the others: they reach it through the driver only
[ -e "$DISK/models/tiny.gguf" ] && chmod 600 "$DISK/models/tiny.gguf"
mke2fs -q -t ext4 -F -d "$DISK" -E root_owner=0:0 "$WORK/disk.img" 384M >/dev/null ||
	die "mke2fs -d failed (e2fsprogs >= 1.43 needed)"
rm -rf "$DISK"
# A second, slow drive (QEMU throttles it to 400 IOPS): reads there stay in
# flight long enough to kill a process under them.
mkdir -p "$DISK"
head -c $((16 * 1024 * 1024)) /dev/urandom >"$DISK/slow.bin"
mke2fs -q -t ext4 -F -d "$DISK" -E root_owner=0:0 "$WORK/slow.img" 32M >/dev/null ||
	die "mke2fs -d of the slow disk failed"
rm -rf "$DISK"

say "booting $KVER under QEMU (TCG)"
LOG=$WORK/console.log
set +e
timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu max -m 1G -smp 2 \
	-nographic -no-reboot -nic none \
	-kernel "$KROOT/boot/vmlinuz-$KVER" -initrd "$WORK/initramfs.gz" \
	-append "console=ttyS0 loglevel=3 panic=-1 edd=off rdinit=/init${MOE_VM_BENCH:+ moe_bench=$MOE_VM_BENCH}" \
	-drive file="$WORK/disk.img",if=none,id=nvm,format=raw,cache=none \
	-device nvme,serial=moevm0,drive=nvm \
	-drive file="$WORK/slow.img",if=none,id=slow,format=raw,cache=none,throttling.iops-total=400 \
	-device nvme,serial=moeslow,drive=slow >"$LOG" 2>&1 </dev/null
qrc=$?
set -e
tr -d '\r' <"$LOG" >"$LOG.txt"
[ "${MOE_VM_VERBOSE:-0}" = 1 ] && cat "$LOG.txt"
grep -E '^(ok|not ok|# )' "$LOG.txt" || true

# A benchmark run (bench/vm-kmod.sh) has figures, not results.
if [ -n "${MOE_VM_BENCH:-}" ]; then
	grep '^# bench' "$LOG.txt" || true
	grep -q '^VMTEST-DONE' "$LOG.txt" || die "the guest stopped before the end (see $LOG.txt)"
	grep '^not ok dmesg-clean' "$LOG.txt" && die "the kernel log was not clean (see $LOG.txt)"
	exit 0
fi
# The run's own verdicts join the guest's results as "not ok" lines.
RES=$WORK/results.txt
cp "$LOG.txt" "$RES"
# A result line mangled by console noise still shows in moe-vmtest's status.
if grep -q '^# moe-vmtest exit status' "$LOG.txt" &&
	! grep -q '^# moe-vmtest exit status 0$' "$LOG.txt" && ! grep -q '^not ok ' "$LOG.txt"; then
	echo "not ok moe-vmtest-status: it failed without a readable 'not ok' line" >>"$RES"
fi
if [ "$qrc" -eq 124 ]; then
	echo "not ok guest-finished: the guest did not finish within ${TIMEOUT}s" >>"$RES"
elif ! grep -q '^VMTEST-DONE' "$LOG.txt"; then
	say "the guest stopped before the end (qemu status $qrc; see $LOG.txt):"
	tail -n 30 "$LOG.txt"
	echo "not ok guest-finished: the guest stopped before the end (qemu status $qrc)" >>"$RES"
fi
grep '^not ok \(moe-vmtest-status\|guest-finished\):' "$RES" || true
say "$(($(date +%s) - T0)) s in all"
sh "$SRC/tests/vm/summary.sh" results "$RES" "$WORK/expected"
