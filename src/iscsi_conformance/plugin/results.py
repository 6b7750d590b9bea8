"""From the plugin's per-test records to the results document, and onto disk.

Kept apart from the hooks so the CLI (``certify``) can reuse the verdict logic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from iscsi_conformance.report import model


def _requirements_catalog() -> list[model.Requirement]:
    try:
        from iscsi_conformance.plugin.catalog import load_catalog
    except ImportError:
        return []
    return [model.Requirement(**r) for r in load_catalog()]


#: The Run field naming the iSNS server of the run's iSNS area (report.model.Run).
_ISNS_FIELD = "isns_server"


def build_results(run: Any) -> model.Results:
    results = model.Results()
    results.add_run(model.Run.collect(started=model.iso_from_epoch(run.started)))
    results.runs[-1].finished = model.utcnow()
    results.runs[-1].phases = run_phases(run.started)
    results.runs[-1].strict = bool(getattr(run, "strict", False))
    isns = getattr(run, "isns", None)  # the iSNS area's server (conformance/isns/conftest.py)
    if isns is not None and hasattr(model.Run, _ISNS_FIELD):
        setattr(results.runs[-1], _ISNS_FIELD, isns.describe())
    pool = run.pool
    if pool is not None:
        commands = pool.commands()
        for entries in (pool.targets, pool.initiators):
            for name, entry in entries.items():
                desc = dict(entry.description or {})
                peer = model.Peer(
                    name=_public(name),
                    role=entry.manifest.role,
                    version=str(desc.get("version", "")),
                    mode=str(
                        desc.get(
                            "mode", "external" if getattr(entry, "external", False) else "embedded"
                        )
                    ),
                    capabilities=dict(entry.manifest.capabilities),
                    deviations=list(entry.manifest.deviations),
                    commands=[model.Command.from_json(c) for c in commands.get(name, [])],
                )
                results.add_peer(peer)
    for rec in run.results:
        results.add_secret(*rec.get("secrets", []))
        results.add_pairing(rec["initiator"], rec["target"])
        results.add_test(
            model.TestResult(
                id=rec["id"],
                pairing=rec["pairing"],
                outcome=rec["outcome"],
                duration=float(rec.get("duration") or 0.0),
                run=results.runs[-1].id,
                nodeid=rec.get("nodeid", ""),
                spec=[model.SpecRef.coerce(s) for s in rec.get("spec", [])],
                requirements=list(rec.get("requirements", [])),
                message=rec.get("message", ""),
                details=rec.get("details", ""),
                evidence=model.Evidence(
                    pdus=[model.PduEvent.from_json(p) for p in rec.get("pdus", [])],
                    log="\n".join(rec.get("notes", [])),
                    extra=dict(rec.get("extra") or {}),
                ),
                deviation=rec.get("deviation"),
                skip_reason=rec.get("skip_reason"),
                grade=rec.get("grade"),
            )
        )
    results.requirements = _requirements_catalog()
    return results


def run_phases(started_epoch: float) -> dict[str, float]:
    """Seconds per phase of this process's run: images, startup, restarts, and the
    tests (the rest of the wall time since the run began), rounded to 0.1 s."""
    import time

    from iscsi_conformance.peers.phases import PHASES

    total = max(0.0, time.time() - started_epoch)
    phases = {k: v for k, v in PHASES.items() if v > 0}
    phases["tests"] = max(0.0, total - sum(phases.values()))
    phases["total"] = total
    return {k: round(v, 1) for k, v in phases.items()}


def _public(name: str) -> str:
    if name.startswith("iscsi://") and "@" in name:
        scheme, rest = name.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return name


def write_reports(results: model.Results, out_dir: Path) -> dict[str, Path]:
    from iscsi_conformance.report.render_html import write_html
    from iscsi_conformance.report.render_junit import write_junit

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"html": write_html(results, out_dir)}  # also writes results.json
    paths["results"] = out_dir / "results.json"
    paths["junit"] = write_junit(results, out_dir / "junit.xml")
    return {k: Path(os.fspath(v)) for k, v in paths.items()}
