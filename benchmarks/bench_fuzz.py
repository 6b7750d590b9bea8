"""Fuzz throughput: the same campaign against the reference target and tgt, side by side.

Starts, in the same run, the reference target in its own process (``ReferenceSubject``)
and tgt through its peer driver (``DriverSubject``, restarted after each death, the
deaths printed), then runs ``fuzz.campaign`` with the same seed for ``--seconds``
against each, ``--rounds`` times interleaved, and prints cases/s and PDUs/s of each and
the ratio reference/tgt (median of the rounds). The failures of each are printed: this
benchmark is also a short campaign against tgt, whose rate counts the time its restarts
take. Absolute rates drift with the machine's load; the ratio measured side by side is
what counts. Issue 14's goal: at least 2,000 PDUs/s against the reference target over
loopback on a 2-core machine.

    python benchmarks/bench_fuzz.py --seconds 10 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from iscsi_conformance.fuzz.campaign import Campaign
from iscsi_conformance.fuzz.peer import DriverSubject
from iscsi_conformance.fuzz.reference import ReferenceSubject

IQN = "iqn.2024-01.org.iscsi-conformance:bench-fuzz"


def campaign(name: str, subject: Any, seconds: float, seed: int, workers: int) -> dict[str, float]:
    report = Campaign(
        subject.host, subject.port, IQN, seconds=seconds, seed=seed, workers=workers,
        shrink=False, health=subject, strict=False,
    ).run()  # fmt: skip
    for f in report.failures.values():
        print(f"  {name}: FAILURE {f.kind} at {f.place} ({f.requirement or '-'}, {f.level}),"
              f" {f.count} time(s): {f.detail.splitlines()[0][:120]}")  # fmt: skip
    return {
        "cases_s": report.cases / max(report.seconds, 1e-9),
        "pdus_s": report.rate,
        "failures": len(report.failures),
        "restarts": subject.restarts,
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
        with ReferenceSubject(IQN) as ref:
            rows["reference"].append(
                campaign("reference", ref, args.seconds, args.seed + r, args.workers)
            )
        with DriverSubject("tgt", IQN) as tgt:
            rows["tgt"].append(campaign("tgt", tgt, args.seconds, args.seed + r, args.workers))
            if tgt.deaths:
                print(f"  tgt {tgt.version()} died: {'; '.join(sorted(set(tgt.deaths)))}")
    med = {
        name: {k: statistics.median(x[k] for x in runs) for k in runs[0]}
        for name, runs in rows.items()
    }
    ratio = {k: med["reference"][k] / max(med["tgt"][k], 1e-9) for k in ("cases_s", "pdus_s")}
    if args.json:
        print(json.dumps({"median": med, "ratio_reference_over_tgt": ratio}))
        return 0
    print(f"{'peer':<10} {'cases/s':>9} {'PDUs/s':>9} {'failures':>9} {'restarts':>9}"
          f"  (median of {args.rounds})")  # fmt: skip
    for name, m in med.items():
        print(f"{name:<10} {m['cases_s']:>9.0f} {m['pdus_s']:>9.0f} {m['failures']:>9.0f}"
              f" {m['restarts']:>9.0f}")  # fmt: skip
    print(f"ratio reference/tgt: cases/s {ratio['cases_s']:.2f}, PDUs/s {ratio['pdus_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
