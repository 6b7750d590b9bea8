"""Certify tgt as a vendor would: start tgtd natively, serve one target, run
``iscsi-conformance certify`` against its URL, stop tgtd.

This is the proof of issue 10's certify verdict (MUST failures, non-strict and
informational results counted apart; the exit status follows the MUSTs, or the SHOULDs
too with ``--strict``). It needs root and the tgt package (``python ci/provision.py
packages``). Usage::

    python ci/certify_tgt.py [--strict] [--report DIR]

The exit status is certify's. Nothing is written to the target's LUN unless
``--allow-dataloss`` is passed through (certify's own default is no writes).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from iscsi_conformance.peers.base import TargetSpec
from iscsi_conformance.peers.tgt import TgtTarget

IQN = "iqn.2026-12.org.iscsi-conformance:certify-tgt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="a SHOULD broken fails too")
    parser.add_argument("--report", default="reports/out/certify-tgt", help="report folder")
    parser.add_argument("--allow-dataloss", action="store_true", help="let certify write")
    args = parser.parse_args(argv)
    tgt = TgtTarget(mode="native")
    tgt.start()
    try:
        endpoint = tgt.configure(TargetSpec(iqn=IQN))
        cmd = [sys.executable, "-m", "iscsi_conformance.cli", "certify", endpoint.url(1)]
        cmd += ["--report", args.report]
        cmd += ["--strict"] if args.strict else []
        cmd += ["--allow-dataloss"] if args.allow_dataloss else []
        print("$", " ".join(cmd), flush=True)
        return subprocess.call(cmd)
    finally:
        tgt.stop()


if __name__ == "__main__":
    sys.exit(main())
