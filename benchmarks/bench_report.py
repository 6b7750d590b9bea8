"""Benchmark the report folder of a full CI matrix: sizes and render times.

Writes the folder (``render_html.write_html``) of a merged results file, or of the
full-matrix-shaped synthetic run of tests/report/matrix_data.py when none is given, and
prints: the time to write it, the size of index.html, of each kind of file and of the
whole folder, and, in headless Chromium (``chromium --dump-dom``), the first render of
index.html and of the largest cell's page and the time that page takes to read its
evidence file and show a failing test's PDU trace. The render figures are what the
pages themselves measure (``performance.now()`` once laid out, and once the trace is
drawn); the goals of issue 17 are printed beside them.

    python benchmarks/bench_report.py [--results reports/out/all.json] [--out DIR] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iscsi_conformance.report import Results, write_html

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
GOALS = {"index": 3 * MIB, "folder": 30 * MIB, "render_ms": 1000}
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]


def _module(name: str, path: Path) -> object:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load(results: str | None) -> tuple[Results, Results, str]:
    """(results with a planted failure, baseline, source)."""
    sys.path.insert(0, str(ROOT / "tests" / "report"))
    data = _module("matrix_data", ROOT / "tests" / "report" / "matrix_data.py")
    if results:
        r, source = Results.load(results), results
    else:
        sample = _module("report_sample", ROOT / "tests" / "report" / "report_sample.py")
        r = data.build_matrix(sample.build_sample())  # type: ignore[attr-defined]
        source = "synthetic full-matrix shape (tests/report/matrix_data.py)"
    new, base, _, _ = data.plant_baseline(r)  # type: ignore[attr-defined]
    return new, base, source


def chromium_attrs(url: str, profile: Path) -> dict[str, int]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("bench_report: chromium is not installed (apt-get install chromium)")
    out = subprocess.run(
        [exe, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    return {k: int(v) for k, v in re.findall(r'data-(render-ms|evidence-ms)="(\d+)"', out)}


def sizes(folder: Path) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for f in folder.rglob("*"):
        if f.is_file():
            if f.name.endswith(".evidence.js"):
                kind = "cells/*.evidence.js"
            elif f.parent.name == "cells":
                kind = "cells/*.html"
            elif f.parent.name in ("captures", "assets"):
                kind = f"{f.parent.name}/"
            else:
                kind = f.name
            kinds[kind] = kinds.get(kind, 0) + f.stat().st_size
    return kinds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", help="a merged results file (default: synthetic)")
    ap.add_argument("--out", type=Path, help="folder to write (default: a temporary one)")
    ap.add_argument("--rounds", type=int, default=3, help="browser runs per page (median)")
    args = ap.parse_args(argv)
    new, base, source = load(args.results)
    tmp = Path(tempfile.mkdtemp(prefix="bench-report-"))
    out = args.out or tmp / "report"
    try:
        t0 = time.perf_counter()
        index = write_html(new, out, baseline=base)
        written = time.perf_counter() - t0
        kinds = sizes(out)
        total = sum(kinds.values())
        failing = next(t for t in new.tests if t.outcome in ("failed", "error"))
        m = re.search(
            rf'href="(cells/[^"#]+\.html)#(t-[^"]+)"><code>{re.escape(failing.id)}</code>',
            index.read_text(encoding="utf-8"),
        )
        assert m, "the failing test is not linked from index.html"
        cell = out / m.group(1)
        idx, cel, ev = [], [], []
        for k in range(max(1, args.rounds)):
            idx.append(chromium_attrs(index.as_uri(), tmp / f"p{k}")["render-ms"])
            a = chromium_attrs(f"{cell.as_uri()}#{m.group(2)}", tmp / f"q{k}")
            cel.append(a["render-ms"])
            ev.append(a.get("evidence-ms", -1))
        print(f"source: {source}")
        print(f"results: {len(new.tests)} tests, {len(new.pairings)} pairings")
        print(f"write_html: {written:.2f} s")
        for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"  {kind:24} {n / MIB:8.2f} MiB")
        ok = {True: "ok", False: "OVER"}
        print(
            f"index.html: {index.stat().st_size / MIB:.2f} MiB "
            f"(goal <= 3 MiB: {ok[index.stat().st_size <= GOALS['index']]})"
        )
        print(f"folder: {total / MIB:.2f} MiB (goal <= 30 MiB: {ok[total <= GOALS['folder']]})")
        med = statistics.median
        print(
            f"index.html first render: {med(idx):.0f} ms (median of {len(idx)}; goal < 1000 ms: "
            f"{ok[med(idx) < GOALS['render_ms']]})"
        )
        both = med(c + e for c, e in zip(cel, ev, strict=True))
        print(
            f"cell page {cell.name}: render {med(cel):.0f} ms + evidence and trace "
            f"{med(ev):.0f} ms = {both:.0f} ms (goal < 1000 ms: {ok[both < GOALS['render_ms']]})"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
