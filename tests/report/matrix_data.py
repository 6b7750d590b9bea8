"""A report shaped like the full CI matrix, for the browser test and the benchmark.

The shape of a real merged CI run (main bdd1f6d: 9 cells, 1,902 results, 30,556 PDUs,
on average 16 PDUs of 520 bytes per test, the Data-In and SCSI Command PDUs cut at
1 KiB): the sample's tests (tests/report/report_sample.py, with its failures, deviations
and their traces) plus passed tests that each carry a trace of that size, built from
the sample's PDUs and one 1 KiB Data-In. ``ISCSI_CONFORMANCE_MATRIX_RESULTS`` names a
real merged results file to use instead (CI's ``reports/out/all.json``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from iscsi_conformance.report import PduEvent, Results, TestResult

#: results per cell in the CI matrix of main bdd1f6d (reference, libiscsi, open-iscsi
#: initiators x reference, tgt, LIO targets)
CELL_SIZES = {
    "reference×reference": 384,
    "reference×tgt": 339,
    "reference×LIO": 339,
    "libiscsi×reference": 285,
    "libiscsi×tgt": 240,
    "libiscsi×LIO": 240,
    "open-iscsi×reference": 55,
    "open-iscsi×tgt": 10,
    "open-iscsi×LIO": 10,
}
PDUS_PER_TEST = 16


def _data_in(seq: int) -> PduEvent:
    """A SCSI Data-In (RFC 7143 11.7) with the first KiB of a 4 KiB data segment."""
    bhs = bytearray(48)
    bhs[0], bhs[1] = 0x25, 0x80
    bhs[5:8] = (4096).to_bytes(3, "big")
    bhs[16:20] = (0x1000 + seq).to_bytes(4, "big")
    data = bytes((seq + i) % 251 for i in range(1024 - 48))
    return PduEvent(
        "t->i",
        "ScsiDataIn",
        f"itt={0x1000 + seq}, datasn=0 | 4144 bytes, first 1024 kept",
        (bytes(bhs) + data).hex(),
    )


def build_matrix(sample: Results) -> Results:
    """The sample, each cell filled with passed tests up to its CI size."""
    out = copy.deepcopy(sample)
    templates = [p for t in sample.tests for p in t.evidence.pdus]
    have: dict[str, int] = {}
    for t in out.tests:
        have[t.pairing] = have.get(t.pairing, 0) + 1
    k = 0
    for pid, size in CELL_SIZES.items():
        for n in range(size - have.get(pid, 0)):
            area = ("Login", "FullFeature", "Digests", "Discovery", "CHAP")[n % 5]
            pdus = []
            for j in range(PDUS_PER_TEST):
                if j % 4 == 3:
                    pdus.append(_data_in(k + j))
                else:
                    p = copy.copy(templates[(k + j) % len(templates)])
                    p.time = round(0.0004 * j, 6)
                    p.note = ""
                    pdus.append(p)
            t = TestResult(f"{area}.Filler.Case{n:03d}", pid, "passed", duration=0.02)
            t.evidence.pdus = pdus
            out.add_test(t)
            k += 1
    return out


def matrix_results(sample: Results) -> tuple[Results, str]:
    """The real merged results when named by the environment, else the synthetic ones;
    and where they came from."""
    path = os.environ.get("ISCSI_CONFORMANCE_MATRIX_RESULTS", "")
    if path and Path(path).is_file():
        return Results.load(path), path
    return build_matrix(sample), "synthetic (tests/report/matrix_data.py)"


def plant_baseline(results: Results) -> tuple[Results, Results, str, str]:
    """``(new, baseline, regressed, fixed)``: a baseline for ``results`` with one planted
    regression (a test that fails now passed in the baseline) and one planted fix (a
    test that passes now failed in it); keys are ``pairing/id``. Results without a
    failure with a trace (a clean CI run) get one planted, on a test with a trace."""
    new = copy.deepcopy(results)
    # a failure whose drill-down shows a PDU trace (an IPsec failure's evidence is its
    # link capture alone)
    failing = next(
        (t for t in new.tests if t.outcome in ("failed", "error") and t.evidence.pdus), None
    )
    if failing is None:
        failing = next(t for t in new.tests if t.outcome == "passed" and t.evidence.pdus)
        failing.outcome = "failed"
        failing.message = "planted: the last answer broke a MUST"
    base = copy.deepcopy(new)
    key = failing.key
    was = next(t for t in base.tests if t.key == key)
    was.outcome, was.message = "passed", ""
    fixed = next(t for t in base.tests if t.outcome == "passed" and t.key != key)
    fixed.outcome, fixed.message = "failed", "planted: this failed in the baseline"
    return new, base, f"{failing.pairing}/{failing.id}", f"{fixed.pairing}/{fixed.id}"
