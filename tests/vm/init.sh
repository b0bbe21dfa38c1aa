#!/bin/busybox sh
# /init of the test VM: mount the model disk, load drm and moe.ko, run
# moe-vmtest, check that moe unloads, scan dmesg, power off.  Result lines are
# "ok NAME" / "not ok NAME: why" for tests/vm/run.sh to count; every NAME
# this script reports is listed in tests/vm/init.tests, and one that never
# reports counts as failed.
/bin/busybox --install -s /bin
# The firmware leaves the console mid-line: results start on a fresh one.
echo
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp

# Kernel log lines that mean trouble; checked after every test and at the end.
pat='BUG|WARNING|Oops|general protection|possible circular locking|lockdep'
pat="$pat|INFO: task .* blocked|Call Trace"
n_bad() { dmesg | grep -cE "$pat"; }
finish() {
	bad=$(dmesg | grep -E "$pat" || true)
	if [ -n "$bad" ]; then
		echo "not ok dmesg-clean: the kernel log has:"
		dmesg | sed 's/^/# /' | tail -n 80
	else
		echo "ok dmesg-clean"
	fi
	echo VMTEST-DONE
	sync
	poweroff -f
}

for m in drm drm_shmem_helper crc32c_generic nvme ext4; do
	modprobe "$m" || { echo "not ok boot: modprobe $m failed"; finish; }
done
# Two controllers, told apart by serial: the models and the slow drive.
disk_of() {
	for c in /sys/class/nvme/nvme*; do
		# The serial is space-padded to 20 bytes: read strips that.
		read -r serial <"$c/serial" 2>/dev/null || continue
		[ "$serial" = "$1" ] && [ -b "/dev/${c##*/}n1" ] && echo "/dev/${c##*/}n1"
	done
}
i=0
while { [ -z "$(disk_of moevm0)" ] || [ -z "$(disk_of moeslow)" ]; } && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
mount -t ext4 "$(disk_of moevm0)" /mnt || { echo "not ok boot: cannot mount the NVMe disk"; finish; }
mount -t ext4 "$(disk_of moeslow)" /slow ||
	{ echo "not ok boot: cannot mount the slow NVMe disk"; finish; }
modprobe moe || { echo "not ok boot: modprobe moe failed"; finish; }
echo "ok boot-and-load"

# What the udev rule does on a real system: group moe (gid 1000 here), 0660.
for n in /dev/dri/renderD* /dev/accel/accel*; do
	[ -e "$n" ] && chgrp 1000 "$n" && chmod 0660 "$n"
done

# moe_bench=N on the kernel command line (bench/vm-kmod.sh): no tests, only
# the benchmarks, N rounds each (below).
bench=$(sed -n 's/.*moe_bench=\([0-9]*\).*/\1/p' /proc/cmdline)

if [ -z "$bench" ]; then
	/bin/moe-vmtest /mnt/models
	echo "# moe-vmtest exit status $?"
fi

# moectl against the driver: root loads, a member of group moe (gid 1000)
# lists, cannot load, root unloads.
check() {
	name=$1
	want=$2
	shift 2
	b0=$(n_bad)
	out=$("$@" 2>&1)
	rc=$?
	if [ "$(n_bad)" != "$b0" ]; then
		echo "not ok $name: the kernel log gained: $(dmesg | grep -E "$pat" | tail -n 1)"
	elif [ $rc -eq 0 ] && echo "$out" | grep -q -- "$want"; then
		echo "ok $name"
	else
		echo "not ok $name: status $rc, output: $(echo "$out" | tr '\n' ' ')"
	fi
}
check_fail() {
	name=$1
	want=$2
	shift 2
	b0=$(n_bad)
	out=$("$@" 2>&1)
	rc=$?
	if [ "$(n_bad)" != "$b0" ]; then
		echo "not ok $name: the kernel log gained: $(dmesg | grep -E "$pat" | tail -n 1)"
	elif [ $rc -eq 1 ] && echo "$out" | grep -q -- "$want"; then
		echo "ok $name"
	else
		echo "not ok $name: status $rc, output: $(echo "$out" | tr '\n' ' ')"
	fi
}
# Open by name: tiny.gguf is root's, mode 0600.  Root runs it from the file;
# a member of group moe cannot read the file, yet runs "moe:tiny" through the
# driver with the same logits and the same generated tokens.
by_name_tests() {
	[ -x /bin/moe-run ] || { echo "# /bin/moe-run is missing from the VM image"; return; }
	set -- --tokens 1,5,9,2,7 -n 3 --no-state --threads 1
	b0=$(n_bad)
	out=$(moe-vmtest --as 1001 1000 /bin/moe-run -m /mnt/models/tiny.gguf "$@" 2>&1)
	rc=$?
	if [ $rc -ne 0 ] && echo "$out" | grep -q "Permission denied" &&
		! moe-vmtest --as 1001 1000 /bin/cat /mnt/models/tiny.gguf >/dev/null 2>&1; then
		echo "ok model-file-unreadable-by-user"
	else
		echo "not ok model-file-unreadable-by-user: status $rc, $(echo "$out" | tr '\n' ' ')"
	fi
	moe-run -m /mnt/models/tiny.gguf "$@" --logits-out /tmp/direct.f32 \
		>/tmp/direct.txt 2>/tmp/direct.err
	rc0=$?
	moe-vmtest --as 1001 1000 /bin/moe-run -m moe:tiny "$@" --logits-out /tmp/byname.f32 \
		>/tmp/byname.txt 2>/tmp/byname.err
	rc=$?
	if [ "$(n_bad)" != "$b0" ]; then
		echo "not ok moe-run-by-name-as-user: the kernel log gained:" \
			"$(dmesg | grep -E "$pat" | tail -n 1)"
	elif [ $rc0 -ne 0 ] || [ $rc -ne 0 ]; then
		echo "not ok moe-run-by-name-as-user: status $rc0 (root, file) and $rc (user," \
			"moe:tiny): $(tr '\n' ' ' </tmp/direct.err) / $(tr '\n' ' ' </tmp/byname.err)"
	elif [ ! -s /tmp/direct.f32 ] || ! cmp -s /tmp/direct.f32 /tmp/byname.f32 ||
		! cmp -s /tmp/direct.txt /tmp/byname.txt; then
		echo "not ok moe-run-by-name-as-user: logits or tokens differ" \
			"($(wc -c </tmp/direct.f32) and $(wc -c </tmp/byname.f32) bytes of logits)"
	else
		echo "ok moe-run-by-name-as-user"
	fi
	# Experts streamed (a 24 MiB budget holds 2 of them) through the driver: every
	# byte read lands in the engine's staging, none is copied; the logits stay the same.
	moe-vmtest --as 1001 1000 /bin/moe-run -m moe:tiny "$@" --vram 24M --stats \
		--logits-out /tmp/stream.f32 >/tmp/stream.txt 2>/tmp/stream.err
	rc=$?
	if [ $rc -ne 0 ]; then
		echo "not ok decode-by-name-zero-copy: status $rc: $(tr '\n' ' ' </tmp/stream.err)"
	elif ! grep -q '^read: [1-9][0-9]* bytes, .*, 0 bytes copied$' /tmp/stream.err; then
		echo "not ok decode-by-name-zero-copy: $(grep '^read:' /tmp/stream.err)"
	elif ! cmp -s /tmp/direct.f32 /tmp/stream.f32; then
		echo "not ok decode-by-name-zero-copy: the logits differ from the direct run's"
	else
		echo "ok decode-by-name-zero-copy"
	fi
	rm -f /tmp/direct.* /tmp/byname.* /tmp/stream.*
}

# Not a test: decode with the experts streamed (a 24 MiB budget holds 2 of
# them), from the file (io_uring, O_DIRECT) and through the driver
# (moe:tiny), rounds interleaved (3, or moe_bench=N's N); "# bench-decode"
# lines for Documentation/performance.rst.
bench_decode() {
	[ -x /bin/moe-run ] || return
	set -- --tokens 1,5,9,2,7 -n 48 --no-state --stats --vram 24M --threads 2
	for r in $(seq 1 "${bench:-3}"); do
		for m in /mnt/models/tiny.gguf moe:tiny; do
			echo 3 >/proc/sys/vm/drop_caches
			moe-run -m "$m" "$@" >/dev/null 2>/tmp/bench.err
			echo "# bench-decode round $r $m: $(grep -E '^(decode|read):' /tmp/bench.err |
				tr '\n' ' ')"
		done
	done
	rm -f /tmp/bench.err
}

if [ -n "$bench" ]; then
	for r in $(seq 1 "$bench"); do
		MOE_VMTEST_ONLY=perf-driver-vs-userspace /bin/moe-vmtest /mnt/models |
			sed "s/^# perf:/# bench-perf round $r:/" | grep '^# bench'
	done
	if moectl load tiny /mnt/models/tiny.gguf >/dev/null; then
		moe-vmio --bench "$bench" /mnt/models/tiny.gguf
		bench_decode
		moectl unload tiny >/dev/null
	else
		echo "# bench: moectl load failed"
	fi
	# moe-vmtest leaves big.bin registered: the module lets the disk go
	rmmod moe
	umount /mnt
	finish
fi

if [ -x /bin/moectl ] && [ -e /mnt/models/tiny.gguf ]; then
	check moectl-load-warm "registered 'tiny'" moectl load --warm tiny /mnt/models/tiny.gguf
	check moectl-status-json "\"meta_extents\": [1-9]" moectl status --json
	moe-vmio /mnt/models/tiny.gguf
	by_name_tests
	bench_decode
	check moectl-status-as-group-moe "tiny" moe-vmtest --as 1001 1000 /bin/moectl status
	check_fail moectl-status-without-group "join group moe" \
		moe-vmtest --as 1001 1001 /bin/moectl status
	# a copy the user can read: the refusal must be the driver's, not the file's mode
	cp /mnt/models/tiny.gguf /tmp/tiny-copy.gguf && chmod 644 /tmp/tiny-copy.gguf
	check_fail moectl-load-unprivileged "CAP_SYS_ADMIN" \
		moe-vmtest --as 1001 1000 /bin/moectl load evil /tmp/tiny-copy.gguf
	rm -f /tmp/tiny-copy.gguf
	check moectl-unload "unregistered 'tiny'" moectl unload tiny
	check_fail moectl-unload-unknown "no model named 'tiny'" moectl unload tiny
else
	# their input is missing from the image: they fail (run.sh: "did not run")
	echo "# /bin/moectl or /mnt/models/tiny.gguf is missing from the VM image"
fi

if [ -x /bin/moectl ]; then
	rmmod moe
	check_fail moectl-without-driver "modprobe moe" moectl status
	modprobe moe
fi
if rmmod moe; then
	echo "ok rmmod-when-idle"
else
	echo "not ok rmmod-when-idle: rmmod moe failed after every file was closed"
fi
umount /mnt
finish
