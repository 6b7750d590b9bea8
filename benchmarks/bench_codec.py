#!/usr/bin/env python3
"""Throughput of the PDU codec: decode + encode, single core. A script, not a test.

Theory of operation: for each case we encode a PDU once, then time N rounds of
``decode(wire)`` followed by ``encode(pdu)`` with the same digest settings (strict
encoding, as a target or initiator sends), take the best of several repeats to damp
noise from other processes, and print PDUs/s and MB/s (wire bytes, decoded and encoded
each count once per round). Time is this process's CPU time (``time.process_time``),
so that other processes competing for the cores do not count against the codec.
``--profile`` runs cProfile over the header-only case.

Usage: python benchmarks/bench_codec.py [--seconds 1.0] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from iscsi_conformance.core.pdu import NopOut, ScsiCommand, ScsiDataIn, decode, encode

READ16 = bytes.fromhex("88000000000000000000000000080000")


def cases() -> list[tuple[str, object, bool]]:
    return [
        ("NOP-Out, header only", NopOut(immediate=True, itt=7, cmdsn=9, expstatsn=3), False),
        (
            "SCSI Command, header only",
            ScsiCommand(
                final=True,
                read=True,
                itt=1,
                cmdsn=2,
                expected_data_transfer_length=4096,
                cdb=READ16,
            ),
            False,
        ),
        (
            "SCSI Command, header digest",
            ScsiCommand(
                final=True,
                read=True,
                itt=1,
                cmdsn=2,
                expected_data_transfer_length=4096,
                cdb=READ16,
            ),
            True,
        ),
        (
            "Data-In 8 KiB, both digests",
            ScsiDataIn(final=True, itt=1, datasn=0, data=bytes(range(256)) * 32),
            True,
        ),
        (
            "Data-In 256 KiB, both digests",
            ScsiDataIn(final=True, itt=1, datasn=0, data=bytes(range(256)) * 1024),
            True,
        ),
    ]


def measure(pdu: object, digests: bool, seconds: float) -> tuple[float, int]:
    """Best rounds per second over 5 repeats of about ``seconds`` / 5 each."""
    wire = encode(pdu, header_digest=digests, data_digest=digests)  # type: ignore[arg-type]
    assert decode(wire, header_digest=digests, data_digest=digests)[0] == pdu  # type: ignore[index]
    n = 1
    while True:  # calibrate
        t = _run(wire, digests, n)
        if t > seconds / 20:
            break
        n *= 2
    n = max(1, int(n * (seconds / 5) / t))
    best = min(_run(wire, digests, n) for _ in range(5))
    return n / best, len(wire)


def _run(wire: bytes, digests: bool, n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        p = decode(wire, header_digest=digests, data_digest=digests)[0]  # type: ignore[index]
        encode(p, header_digest=digests, data_digest=digests)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per case")
    ap.add_argument("--profile", action="store_true", help="cProfile the header-only case")
    args = ap.parse_args()
    if args.profile:
        pdu = cases()[0][1]
        wire = encode(pdu)  # type: ignore[arg-type]
        prof = cProfile.Profile()
        prof.runcall(_run, wire, False, 200_000)
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
        return
    print(f"{'case':34} {'bytes':>8} {'decode+encode/s':>16} {'MB/s':>9}")
    for name, pdu, digests in cases():
        rate, size = measure(pdu, digests, args.seconds)
        print(f"{name:34} {size:8d} {rate:16,.0f} {rate * size * 2 / 1e6:9.1f}")


if __name__ == "__main__":
    main()
