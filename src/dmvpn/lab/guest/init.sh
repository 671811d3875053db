#!/bin/sh
# PID 1 of a lab guest once its root is mounted (dmvpn.lab.vm): run boot.sh,
# say "ready" (or "failed"), then serve the host through the agent. PID 1
# must never exit: the kernel would panic.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
exec >/run/out/console.log 2>&1 </dev/null
echo "=== $DMVPN_NODE up: kernel $(uname -r), $(cut -d' ' -f1 /proc/uptime) s after boot"
hostname "$DMVPN_NODE"
ip link set lo up
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
cp /run/out/agent.py /run/dmvpn-agent.py
(
    while :; do
        python3 -S /run/dmvpn-agent.py
        echo "=== agent exited with status $?"
        sleep 1
    done
) &
if sh -e /run/out/boot.sh; then
    echo "=== ready $(cut -d' ' -f1 /proc/uptime) s after boot"
    touch /run/out/ready
else
    rc=$?
    echo "=== boot.sh failed with status $rc"
    echo $rc >/run/out/failed
fi
while :; do
    wait  # reaps orphans
    sleep 3600
done
