#!/usr/bin/env bash
# Build the peers' base image and every peer image locally (no registry needed).
#
#   ci/build_base_image.sh          base image (if missing) + all peer images
#   ci/build_base_image.sh base     only iscsi-conformance/base:bookworm (always rebuilt)
#
# The base is `debootstrap --variant=minbase bookworm` from the Debian mirror this
# host's apt uses, imported with `docker import`; see
# src/iscsi_conformance/peers/images.py. Peer images are tagged by the hash of their
# inputs, so a second run with nothing changed builds nothing. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ "${1:-all}" = "base" ]; then
    exec "$PY" -m iscsi_conformance.peers.images base
fi
exec "$PY" -m iscsi_conformance.peers.images all
