"""One idempotent provisioning step, run by every tox environment that needs it first.

    python ci/provision.py packages     Debian packages (tshark, tgt, libiscsi, qemu, ...)
                                        and a running Docker engine (ci/setup_host.sh)
    python ci/provision.py peers        the same, then the base image, the isnsd image
                                        and the micro-VM kernel and root file system
                                        (all cached; the IPsec root file system too when
                                        ISCSI_CONFORMANCE_IPSEC_PAIRINGS is set)

Only as root: anywhere else it says what it did not do and exits 0, so a user's
machine is never changed behind their back (the tests then skip what has no peer,
except in CI, where a skip of a peer test is a failure). Every step is a no-op when
its result is already there, so running it before each environment costs seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _packages() -> None:
    subprocess.run(["bash", str(ROOT / "ci" / "setup_host.sh")], check=True, timeout=1800)


def _images() -> None:
    from iscsi_conformance.peers import images, microvm
    from iscsi_conformance.peers.base import CommandLog

    log = CommandLog()
    print(f"provision: base image {images.base_image(log=log)}", flush=True)
    from iscsi_conformance.harness.isns_run import isnsd_folder  # the matrix's iSNS server

    isnsd = images.build_peer_image("isns", "isnsd", log=log, folder=isnsd_folder())  # type: ignore[arg-type]
    print(f"provision: isnsd image {isnsd}", flush=True)
    kernel = microvm.build_kernel(log)
    print(f"provision: micro-VM kernel {kernel}", flush=True)
    print(f"provision: micro-VM root fs {microvm.build_rootfs(log)}", flush=True)
    if os.environ.get("ISCSI_CONFORMANCE_IPSEC_PAIRINGS"):
        # only runs that build IPsec cells on LIO boot it (tox -e ipsec); the default run's
        # IPsec cells are reference x tgt and libiscsi x reference, so a fresh CI machine
        # does not spend the 1.5 to 2 min of its build (the area builds it when first asked)
        ipsec_root = microvm.build_rootfs(log, packages=microvm.IPSEC_ROOTFS_PACKAGES)
        print(f"provision: micro-VM root fs with strongSwan (IPsec area) {ipsec_root}", flush=True)


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "packages"
    if what not in ("packages", "peers"):
        print(f"provision: unknown step {what!r} (packages | peers)", file=sys.stderr)
        return 2
    if os.environ.get("ISCSI_CONFORMANCE_NO_PROVISION"):
        print("provision: ISCSI_CONFORMANCE_NO_PROVISION is set; nothing done")
        return 0
    if os.geteuid() != 0:
        print("provision: not root; nothing installed (peer tests skip outside CI)")
        return 0
    started = time.monotonic()
    try:
        _packages()
        if what == "peers":
            _images()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 1
    print(f"provision: {what} ready in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
