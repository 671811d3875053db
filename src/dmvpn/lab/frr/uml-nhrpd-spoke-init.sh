#!/bin/sh
# UML init for an FRR nhrpd spoke (hostfs root = host /). DIR (kernel command
# line DIR=...) holds nhrpd-spoke.conf as nhrpd.conf and zebra.conf; output goes to DIR/guest.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmpfs /run
mkdir -p /run/out /run/frr-conf
mount --bind ${DIR:-/tmp/interop} /run/out          # keep a window to the host dir
cp ${DIR:-/tmp/interop}/*.conf /run/frr-conf/
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
OUT=/run/out/guest
mkdir -p $OUT
exec > $OUT/console.log 2>&1
echo "=== guest up $(uname -r) ADDR=$ADDR"
V=$(uname -r)
mkdir -p /run/modroot/lib/modules
ln -s /usr/lib/uml/modules/$V /run/modroot/lib/modules/$V
modprobe -d /run/modroot -a ip_gre || echo "modprobe failed"
ip -batch - <<EOB
link set lo up
addr add ${ADDR:-172.30.0.21}/24 dev vec0
link set vec0 up
tunnel add mgre0 mode gre key 42 ttl 64 dev vec0
addr add ${TUN:-10.0.0.21}/32 dev mgre0
link set mgre0 up
EOB
ip -d link show mgre0; ip addr
ping -c1 -W2 172.30.0.1
mkdir -p /run/frr; chown frr:frr /run/frr /run/frr-conf; chmod 644 /run/frr-conf/*
/usr/lib/frr/zebra -d -f /run/frr-conf/zebra.conf -i /run/frr/zebra.pid -z /run/frr/zserv.api --vty_socket /run/frr -A 127.0.0.1
for i in $(seq 50); do [ -S /run/frr/zserv.api ] && break; sleep 0.1; done
/usr/lib/frr/nhrpd -d -f /run/frr-conf/nhrpd.conf -i /run/frr/nhrpd.pid -z /run/frr/zserv.api --vty_socket /run/frr -A 127.0.0.1
echo "=== daemons started $(date +%T)"
for i in $(seq ${ROUNDS:-6}); do
  sleep 4
  echo "=== round $i $(date +%T)"
  vtysh --vty_socket /run/frr -c 'show ip nhrp nhs' -c 'show ip nhrp cache' -c 'show dmvpn'
done
vtysh --vty_socket /run/frr -c 'show ip nhrp nhs json' -c 'show ip nhrp cache json'
ip neigh show dev mgre0; ip route
cp /run/frr/*.log $OUT/ 2>/dev/null
echo "=== halting"
sync
python3 -c "import ctypes;ctypes.CDLL(None).sync();ctypes.CDLL(None).reboot(0x4321fedc)"
