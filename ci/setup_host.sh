#!/usr/bin/env bash
# Prepare a Debian 12 host for the iscsi-conformance peers.
#
# Idempotent: installs the Debian packages the real peers need, then starts
# dockerd when no engine answers. Asks nothing. Run as root.
#
#   ci/setup_host.sh            install everything and start dockerd
#   ci/setup_host.sh --no-docker-start
set -euo pipefail

START_DOCKER=1
for arg in "$@"; do
    case "$arg" in
        --no-docker-start) START_DOCKER=0 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "setup_host.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "setup_host.sh: must run as root (apt-get, dockerd)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
    # containers and locally built base images
    docker.io debootstrap
    # userspace peers that run directly
    tgt libiscsi-bin
    # iSNS (RFC 4171)
    open-isns-server open-isns-utils
    # independent wire oracle
    tshark
    # IPsec transport (issue 11): charon (IKEv2) with kernel-libipsec (libcharon-extra-plugins),
    # its VICI plugin (strongswan-swanctl), AES-GCM (libstrongswan-standard-plugins); iptables
    # for the protected portal's drop policy
    strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins
    iptables
    # micro-VMs for kernel peers (LIO, open-iscsi)
    qemu-system-x86 busybox-static cpio e2fsprogs
    # report browser check
    chromium
    # misc tools the drivers call
    iproute2 procps ca-certificates
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup_host.sh: installing ${missing[*]}"
    # tshark asks whether non-root users may capture; answer once, non-interactively.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "setup_host.sh: all packages present"
fi

if [ "$START_DOCKER" -eq 1 ]; then
    if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
        echo "setup_host.sh: docker engine already answers"
    else
        log=/var/log/iscsi-conformance-dockerd.log
        echo "setup_host.sh: starting dockerd (log: $log)"
        nohup dockerd >"$log" 2>&1 &
        for _ in $(seq 1 60); do
            if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
                echo "setup_host.sh: docker engine up"
                exit 0
            fi
            sleep 1
        done
        echo "setup_host.sh: dockerd did not answer within 60 s; last lines of $log:" >&2
        tail -n 20 "$log" >&2 || true
        exit 1
    fi
fi
