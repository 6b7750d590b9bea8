"""Fuzz throughput: the same campaign against the reference target and tgt, side by side.

Starts, in the same run, the reference target in its own process and tgt (``tgtd -f``
on a free loopback port; both from ``bench_target``), then runs ``fuzz.campaign`` with
the same seed for ``--seconds`` against each, ``--rounds`` times interleaved, and
prints cases/s and PDUs/s of each and the ratio reference/tgt (median of the rounds).
A campaign ends early when its target dies (liveness), and its failures are printed:
this benchmark is also a short campaign against tgt. Absolute rates drift with the
machine's load; the ratio measured side by side is what counts. Issue 14's goal: at
least 2,000 PDUs/s against the reference target over loopback on a 2-core machine.

    python benchmarks/bench_fuzz.py --seconds 10 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_target import IQN_REF, IQN_TGT, reference_target, tgt_target

from iscsi_conformance.fuzz.campaign import Campaign


def campaign(url: str, iqn: str, seconds: float, seed: int, workers: int) -> dict[str, float]:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    report = Campaign(
        host, int(port), iqn, seconds=seconds, seed=seed, workers=workers, shrink=False
    ).run()
    for f in report.failures.values():
        print(f"  {iqn}: FAILURE {f.kind} at {f.place} ({f.requirement or '-'}, {f.level}),"
              f" {f.count} time(s): {f.detail.splitlines()[0][:120]}")  # fmt: skip
    return {
        "cases_s": report.cases / max(report.seconds, 1e-9),
        "pdus_s": report.rate,
        "seconds": report.seconds,
        "failures": len(report.failures),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows: dict[str, list[dict[str, float]]] = {"reference": [], "tgt": []}
    for r in range(args.rounds):
        with reference_target("8M") as (url, _pid):
            rows["reference"].append(
                campaign(url, IQN_REF, args.seconds, args.seed + r, args.workers)
            )
        with tgt_target(8 << 20) as (url, _pid):
            rows["tgt"].append(campaign(url, IQN_TGT, args.seconds, args.seed + r, args.workers))
    med = {
        name: {k: statistics.median(x[k] for x in runs) for k in runs[0]}
        for name, runs in rows.items()
    }
    ratio = {k: med["reference"][k] / max(med["tgt"][k], 1e-9) for k in ("cases_s", "pdus_s")}
    if args.json:
        print(json.dumps({"median": med, "ratio_reference_over_tgt": ratio}))
        return 0
    print(f"{'peer':<10} {'cases/s':>9} {'PDUs/s':>9} {'failures':>9}  (median of {args.rounds})")
    for name, m in med.items():
        print(f"{name:<10} {m['cases_s']:>9.0f} {m['pdus_s']:>9.0f} {m['failures']:>9.0f}")
    print(f"ratio reference/tgt: cases/s {ratio['cases_s']:.2f}, PDUs/s {ratio['pdus_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
