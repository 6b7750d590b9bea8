"""``run --baseline`` and ``certify --baseline``: a run compared with an earlier one.

Theory of operation: the baseline is read before anything starts (a file that cannot
be read is one usage error, and no peer is started for nothing). Once the run has
written its report folder, its ``results.json`` is read back, the folder is written
again with the baseline (``index.html`` gains the Changes section) and the diff's
verdict and new failures are printed. What the exit status makes of it is the
command's business: ``run`` fails on a regression only (a test that did not fail in
the baseline and fails now, :attr:`.diff.Diff.regressed`); ``certify`` fails on a
regression or on a MUST failure, as it does without a baseline.
"""

from __future__ import annotations

from pathlib import Path

from iscsi_conformance.errors import ConfigError

from .diff import Diff, diff
from .model import Results, ResultsFormatError

__all__ = ["compare_report", "load_baseline", "summary_lines"]


def load_baseline(path: str | Path) -> Results:
    """The baseline's results: a results file, or a report folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    try:
        return Results.load(p)
    except ResultsFormatError as exc:
        raise ConfigError(f"--baseline: {exc}") from None


def compare_report(report: Path, baseline: Results, *, label: str) -> Diff:
    """Rewrite the report folder ``report`` with ``baseline``'s Changes section and
    return the diff (baseline -> this run)."""
    from .render_html import write_html

    new = Results.load(report / "results.json")
    write_html(new, report, baseline=baseline)
    return diff(baseline, new, old_label=label, new_label="this run")


def summary_lines(d: Diff, *, limit: int = 20) -> list[str]:
    """The verdict and the new failures (at most ``limit``) for the terminal; the rest
    is in the report's Changes section."""
    head = (
        f"against the baseline {d.old_label}: "
        + (
            f"REGRESSED, {d.count('new_failures')} new failure(s)"
            if d.regressed
            else "no regression"
        )
        + f"; {d.count('fixed')} fixed, {d.count('deviations_new')} new deviation(s), "
        f"{d.count('deviations_gone')} gone, {d.count('added')} test(s) added, "
        f"{d.count('removed')} removed"
    )
    lines = [head]
    shown = 0
    for cell in d.cells:
        for ch in cell.new_failures:
            if shown == limit:
                lines.append(f"  ... {d.count('new_failures') - limit} more in the report")
                return lines
            lines.append(f"  new failure {cell.pairing}  {ch.id}  {ch.old} -> {ch.new}")
            shown += 1
    return lines
