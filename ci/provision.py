"""One idempotent provisioning step, run by every tox environment that needs it first.

    python ci/provision.py packages     Debian packages (tshark, tgt, libiscsi, qemu, ...)
                                        and a running Docker engine (ci/setup_host.sh)
    python ci/provision.py peers        the same, then the base image, the isnsd image
                                        and the micro-VM kernel and root file system
                                        (all cached; the IPsec root file system too when
                                        ISCSI_CONFORMANCE_IPSEC_PAIRINGS is set)
    python ci/provision.py packages --peers-in-background
                                        packages, then (in CI only) `peers` in a detached process
                                        (log: .../provision-background.log) while the
                                        caller goes on: the unit env's tests overlap the
                                        image builds of a fresh machine

Runs take one lock (/run/lock/iscsi-conformance-provision.lock): a `peers` step that
starts while the background one works waits for it, then finds everything there.

Only as root: anywhere else it says what it did not do and exits 0, so a user's
machine is never changed behind their back (the tests then skip what has no peer,
except in CI, where a skip of a peer test is a failure). Every step is a no-op when
its result is already there, so running it before each environment costs seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = Path("/run/lock/iscsi-conformance-provision.lock")
BACKGROUND_LOG = ROOT / "reports" / "out" / "provision-background.log"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One provisioning at a time on this machine (a second waits for the first)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as fh:
        waited = time.monotonic()
        fcntl.flock(fh, fcntl.LOCK_EX)
        if time.monotonic() - waited > 1:
            print(f"provision: waited {time.monotonic() - waited:.0f} s for another run")
        yield


def _background_peers() -> None:
    """Start `peers` detached, and return once it holds the lock (so that a later
    `peers` step waits for it instead of building the same images beside it)."""
    BACKGROUND_LOG.parent.mkdir(parents=True, exist_ok=True)
    ready = BACKGROUND_LOG.with_suffix(".locked")
    ready.unlink(missing_ok=True)
    with BACKGROUND_LOG.open("w") as log:
        subprocess.Popen(
            [sys.executable, __file__, "peers", "--signal-locked", str(ready)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # not stopped with the caller's process group
        )
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    print(f"provision: peers provisioning in the background (log {BACKGROUND_LOG})")


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
    # the default run's IPsec cells include reference x LIO and libiscsi x LIO, whose
    # target host is a LIO guest with strongSwan: built here (1.5 to 2 min uncached, in
    # CI behind the unit tests), not by the first matrix cell that asks for it
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
        with _locked():
            if "--signal-locked" in argv:
                Path(argv[argv.index("--signal-locked") + 1]).touch()
            _packages()
            if what == "peers":
                _images()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 1
    print(f"provision: {what} ready in {time.monotonic() - started:.1f} s", flush=True)
    if what == "packages" and "--peers-in-background" in argv:
        if os.environ.get("CI"):
            _background_peers()
        else:  # a developer's `tox -e unit` as root builds no images behind their back
            print("provision: --peers-in-background acts in CI only (CI is not set)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
