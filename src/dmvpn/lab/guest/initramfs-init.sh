#!/bin/sh
# PID 1 of a lab guest's initramfs (dmvpn.lab.vm): load the modules that reach
# the root, mount it read-only over virtio-9p under a tmpfs overlay, mount the
# guest's work directory on /run/out, name the NICs, switch root to init.sh.
# The kernel command line gives DMVPN_NICS (mac/name,...) as environment.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m" || echo "initramfs: insmod $m failed"
done
fail() {
    echo "initramfs: $*"
    echo o >/proc/sysrq-trigger  # QEMU exits; the host reports the console
    sleep 10
}
# The root and the modules are the host's and do not change while the guest
# runs: cache them (cache=loose) - that alone saves seconds of boot.
P9="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$P9,ro,cache=loose" root /lower || fail "cannot mount the root"
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/data /upper/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work /newroot \
    || fail "cannot mount the overlay"
for d in run tmp var/tmp; do mount -t tmpfs -o mode=1777 tmpfs "/newroot/$d"; done
chmod 0755 /newroot/run
mkdir -p /newroot/run/out "/newroot/lib/modules/$(uname -r)"
mount -t 9p -o "$P9" out /newroot/run/out || fail "cannot mount the work directory"
mount -t 9p -o "$P9,ro,cache=loose" modules "/newroot/lib/modules/$(uname -r)" \
    || fail "cannot mount the modules"
for tag in $(echo "$DMVPN_SHARES" | tr , ' '); do
    mkdir -p "/newroot/run/share/$tag"
    mount -t 9p -o "$P9,ro" "$tag" "/newroot/run/share/$tag" || fail "cannot mount $tag"
done
for pair in $(echo "$DMVPN_NICS" | tr , ' '); do
    mac=${pair%/*} name=${pair#*/}
    for dev in /sys/class/net/*; do
        [ "$(cat "$dev/address")" = "$mac" ] && ip link set "${dev##*/}" name "$name"
    done
done
for d in dev proc sys; do mount --move "/$d" "/newroot/$d"; done
exec switch_root /newroot /bin/sh /run/out/init.sh
