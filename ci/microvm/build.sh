#!/usr/bin/env bash
# Build (or find in the cache) the micro-VM artefacts the kernel peers boot:
#   kernel + initramfs (Debian's linux-image-cloud-amd64, busybox-static, modules) and,
#   with --rootfs, the Debian guest rootfs (open-iscsi, sg3-utils) as an ext4 image.
# Each artefact sits under $ISCSI_CONFORMANCE_CACHE (default ~/.cache/iscsi-conformance)
# in microvm/<kind>-<hash of its recipe>/; an unchanged recipe is never rebuilt, so CI
# can run this first and cache that folder. Never writes into the git tree.
#
#   ci/microvm/build.sh            kernel + initramfs (about 5 s cold)
#   ci/microvm/build.sh --rootfs   also the rootfs (about 45-60 s cold: debootstrap)
#   ci/microvm/build.sh --force    rebuild even when cached
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in apt-get dpkg-deb cpio qemu-system-x86_64; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool missing (ci/setup_host.sh installs it)" >&2; exit 1; }
done
if [[ " $* " == *" --rootfs "* ]]; then
    for tool in debootstrap mke2fs; do
        command -v "$tool" >/dev/null || { echo "build.sh: $tool missing" >&2; exit 1; }
    done
fi
exec python3 -m iscsi_conformance.peers.microvm build "$@"
