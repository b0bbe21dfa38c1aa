#!/bin/busybox sh
# /init of the test VM: mount the model disk, load drm and moe.ko, run
# moe-vmtest, check that moe unloads, scan dmesg, power off.  Result lines are
# "ok NAME" / "not ok NAME: why" for tests/vm/run.sh to count.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmpfs /tmp

finish() {
	bad=$(dmesg | grep -E 'BUG|WARNING|Oops|general protection|possible circular locking|lockdep|INFO: task .* blocked|Call Trace' || true)
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
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 100 ]; do
	sleep 0.1
	i=$((i + 1))
done
mount -t ext4 /dev/nvme0n1 /mnt || { echo "not ok boot: cannot mount the NVMe disk"; finish; }
modprobe moe || { echo "not ok boot: modprobe moe failed"; finish; }
echo "ok boot-and-load"

# What the udev rule does on a real system: group moe (gid 1000 here), 0660.
for n in /dev/dri/renderD* /dev/accel/accel*; do
	[ -e "$n" ] && chgrp 1000 "$n" && chmod 0660 "$n"
done

/bin/moe-vmtest /mnt/models
echo "# moe-vmtest exit status $?"

if rmmod moe; then
	echo "ok rmmod-when-idle"
else
	echo "not ok rmmod-when-idle: rmmod moe failed after every file was closed"
fi
umount /mnt
finish
