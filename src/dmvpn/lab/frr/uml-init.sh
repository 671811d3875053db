#!/bin/sh
# Init of an frr lab node: a User-Mode Linux guest whose root is a hostfs
# (the host's / or a debootstrap root). The host directory DIR (kernel command
# line DIR=...) holds what dmvpn.lab.uml wrote: setup.sh (addresses, tunnel,
# routes), zebra.conf, nhrpd.conf. The guest writes console.log and, once
# nhrpd runs, "ready" there; then it runs each ctl/*.cmd the host drops in
# (output in .out, exit status in .rc) until ctl/halt appears.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
# The root is shared with the host (and other guests): private scratch space.
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var/tmp
mkdir -p /run/out /run/umlmods /run/modroot/lib/modules /run/frr
mount -t hostfs -o "$DIR" hostfs /run/out
exec >/run/out/console.log 2>&1
echo "=== guest up $(uname -r) $(date +%T)"
# The UML kernel's modules live on the host (user-mode-linux package).
V=$(uname -r)
mount -t hostfs -o /usr/lib/uml/modules hostfs /run/umlmods
ln -s /run/umlmods/"$V" /run/modroot/lib/modules/"$V"
modprobe -d /run/modroot -a ip_gre || echo "=== modprobe ip_gre failed"
. /run/out/setup.sh
cp /run/out/zebra.conf /run/out/nhrpd.conf /run/frr/
chown -R frr:frr /run/frr
/usr/lib/frr/zebra -d -f /run/frr/zebra.conf -i /run/frr/zebra.pid -z /run/frr/zserv.api \
    --vty_socket /run/frr -A 127.0.0.1
# nhrpd retries zebra only after 10 s: start it once zserv listens.
for i in $(seq 100); do [ -S /run/frr/zserv.api ] && break; sleep 0.1; done
# Also kept as a script, so the host can restart nhrpd (dmvpn.lab.uml).
cat >/run/frr/start-nhrpd <<'EOS'
rm -f /run/frr/nhrpd.vty
/usr/lib/frr/nhrpd -d -f /run/frr/nhrpd.conf -i /run/frr/nhrpd.pid -z /run/frr/zserv.api \
    --vty_socket /run/frr -A 127.0.0.1
for i in $(seq 100); do [ -S /run/frr/nhrpd.vty ] && break; sleep 0.1; done
EOS
sh /run/frr/start-nhrpd
echo "=== nhrpd $(cat /run/frr/nhrpd.pid) started $(date +%T)"
mkdir -p /run/out/ctl
touch /run/out/ready
while [ ! -e /run/out/ctl/halt ]; do
    for f in /run/out/ctl/*.cmd; do
        [ -e "$f" ] || continue
        b=${f%.cmd}
        mv "$f" "$b.run"
        (sh "$b.run" >"$b.out" 2>&1; echo $? >"$b.rc.tmp"; mv "$b.rc.tmp" "$b.rc") &
    done
    sleep 0.1
done
echo "=== halting $(date +%T)"
cp /run/frr/*.log /run/out/ 2>/dev/null
echo o >/proc/sysrq-trigger
