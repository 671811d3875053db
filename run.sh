#!/usr/bin/env bash
# Set up and run dmvpn on a fresh Debian 12 machine (as root).
#   ./run.sh demo   install, then build a phase 3 cloud in network namespaces and watch it work
#   ./run.sh test   install everything the tests need, then lint, type-check, test
set -euo pipefail
cd "$(dirname "$0")"
VENV=${DMVPN_VENV:-.venv}

apt_install() {
    # Install Debian packages only when a command is missing.
    # Each argument is COMMAND:PACKAGE[,PACKAGE...]; the packages are installed
    # when COMMAND is not found (a path is tested as a file).
    local missing=() pair cmd
    for pair in "$@"; do
        cmd=${pair%%:*}
        if [[ $cmd == /* ]]; then [ -x "$cmd" ] && continue; else command -v "$cmd" >/dev/null 2>&1 && continue; fi
        IFS=, read -r -a pkgs <<<"${pair#*:}"
        missing+=("${pkgs[@]}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture: answer no, unattended.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

python_env() {
    local extras=$1
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e ".${extras:+[$extras]}"
}

case "${1:-}" in
demo)
    apt_install ip:iproute2 ping:iputils-ping traceroute:traceroute
    python_env ""
    exec "$VENV/bin/dmvpn" lab demo
    ;;
test)
    apt_install tshark:tshark ip:iproute2 ping:iputils-ping traceroute:traceroute gcc:gcc \
        iperf3:iperf3 qemu-system-x86_64:qemu-system-x86 depmod:kmod vtysh:frr openssl:openssl \
        iptables:iptables debootstrap:debootstrap nft:nftables conntrack:conntrack \
        clang:clang bpftool:bpftool /usr/include/bpf:libbpf-dev \
        /usr/share/doc/busybox-static:busybox-static \
        /usr/lib/ipsec/charon:strongswan-charon,strongswan-swanctl,libcharon-extra-plugins,libstrongswan-extra-plugins,libstrongswan-standard-plugins
    python_env test
    "$VENV/bin/ruff" check src tests bench
    "$VENV/bin/ruff" format --check src tests bench
    "$VENV/bin/mypy"
    shift
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
*)
    echo "usage: $0 demo | test [pytest args]" >&2
    exit 2
    ;;
esac
