"""``iscsi-conformance fuzz ci``: the CI's fuzz campaigns, side by side, and their gate.

Theory of operation: one campaign per target (reference, tgt, LIO) and per initiator
(reference, libiscsi, open-iscsi) (``SLOTS``), each an ``iscsi-conformance fuzz``
process of its own with ``--seconds S --quiet --report DIR``, all started at once, so
that the whole lasts about S plus the slowest start-up (a micro-VM boot) instead of
six times S. Each process writes ``DIR/fuzz/PEER.json`` and its reproducers under
``DIR/fuzz/PEER/`` (the report's Fuzz section); its output goes to
``DIR/fuzz/PEER.log``. A process still running at S x 1.05 plus ``--start-limit`` is
interrupted, then killed: over its bound.

The gate (:func:`judge`) reads each campaign back:

- a campaign that did not run (an exit status other than 0 or 1, no campaign file,
  no case run) fails: a peer that cannot start is a failure, never a skip;
- a campaign whose time is over S by more than 5% fails (``--seconds`` is a bound);
- our reference peers: any failure, whatever its level, fails;
- a third-party peer: a failure recorded in the peer's manifest (a ``[[deviations]]``
  entry whose ``fuzz`` list covers "KIND at PLACE" at the peer's version) is known and
  passes; one below MUST is reported and passes (the grading of docs: a broken SHOULD
  is non-strict); any other is new: reported with its reproducer, to be recorded in the
  manifest, and it fails the gate only with ``--strict-peers``. A third-party peer that
  dies under fuzzing does so in ever new guises (tgt 1.0.85 by SIGSEGV, SIGABRT, SIGBUS,
  exit status 1, a wrong data digest, in successive 60 s runs): a CI of this suite is
  red for its own reference peers, not at random for another project's crashes.

The verdict of each campaign is printed and added to its file's ``notes`` (the report
shows them). Exit status: 0 when every campaign passes, 1 otherwise, 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from iscsi_conformance.errors import ConfigError
from iscsi_conformance.peers.manifest import Deviation, load_peer_manifest
from iscsi_conformance.report.fuzz import FuzzCampaign, FuzzFailure, campaign_path

__all__ = ["SLOTS", "Outcome", "Slot", "Verdict", "judge", "main", "run_slots"]

OVERRUN = 1.05  # --seconds is a hard bound, within 5%


@dataclasses.dataclass(frozen=True)
class Slot:
    """One CI campaign: its peer in the report folder, its role, the peer's manifest
    name and the arguments after ``fuzz``."""

    peer: str
    role: str
    name: str
    argv: tuple[str, ...]

    @property
    def ours(self) -> bool:
        return self.name == "reference"


SLOTS: tuple[Slot, ...] = (
    Slot("reference", "target", "reference", ("reference",)),
    Slot("tgt", "target", "tgt", ("tgt",)),
    Slot("lio", "target", "lio", ("lio",)),
    Slot("reference-initiator", "initiator", "reference", ("--initiator", "reference")),
    Slot("libiscsi-initiator", "initiator", "libiscsi", ("--initiator", "libiscsi")),
    Slot("open-iscsi-initiator", "initiator", "open-iscsi", ("--initiator", "open-iscsi")),
)


@dataclasses.dataclass
class Outcome:
    """How a campaign's process ended."""

    exit: int | None  # None: killed over its bound
    wall: float
    log: Path | None = None


@dataclasses.dataclass
class Verdict:
    slot: Slot
    ok: bool
    why: str  # one line: what the campaign did, or why it failed
    known: list[tuple[FuzzFailure, Deviation]] = dataclasses.field(default_factory=list)
    reported: list[FuzzFailure] = dataclasses.field(default_factory=list)
    new: list[FuzzFailure] = dataclasses.field(default_factory=list)
    new_fails: bool = True  # whether a new failure fails the campaign (see judge)

    def lines(self) -> list[str]:
        """The verdict, one line per failure seen."""
        out = [f"{'PASS' if self.ok else 'FAIL'} {self.slot.role} {self.slot.peer}: {self.why}"]
        for f, dev in self.known:
            out.append(
                f"  known: {f.kind} at {f.place} ({f.count}x): recorded deviation {dev.test}"
                f"{' (intermittent)' if dev.effect == 'intermittent' else ''}"
            )
        for f in self.reported:
            out.append(f"  reported ({f.level}, not a MUST): {f.kind} at {f.place} ({f.count}x)")
        for f in self.new:
            req = f", {f.requirement}" if f.requirement else ""
            label = "NEW" if self.new_fails else "NEW, not recorded yet"
            out.append(
                f"  {label}: {f.kind} at {f.place} ({f.count}x, {f.level}{req}): {f.detail}"
                + (f"; reproducer {f.reproducer}" if f.reproducer else "; no reproducer saved")
            )
        return out


def judge(
    slot: Slot,
    campaign: FuzzCampaign | None,
    outcome: Outcome,
    deviations: Sequence[Deviation],
    seconds: float,
    *,
    strict_peers: bool = False,
) -> Verdict:
    """The gate of one campaign (see the module doc); ``strict_peers``: a third-party
    failure its manifest does not record fails too."""
    log = f" (log: {outcome.log})" if outcome.log else ""
    if outcome.exit is None:
        return Verdict(slot, False, f"still running after {outcome.wall:.0f} s: killed{log}")
    if outcome.exit not in (0, 1) or campaign is None:
        what = "wrote no campaign" if campaign is None else "did not end normally"
        return Verdict(slot, False, f"did not run: exit status {outcome.exit}, {what}{log}")
    if campaign.cases == 0:
        return Verdict(
            slot, False, f"ran no case in {campaign.seconds:.1f} s: it proves nothing{log}"
        )
    rate = (
        f"{campaign.cases} cases, {campaign.pdus} PDUs in {campaign.seconds:.1f} s "
        f"({campaign.cases_per_second:.2f} cases/s, {campaign.pdus_per_second:.1f} PDUs/s), "
        f"{outcome.wall:.1f} s wall"
    )
    verdict = Verdict(slot, True, rate)
    if campaign.seconds > seconds * OVERRUN:
        verdict.ok = False
        verdict.why += f"; over its bound of {seconds:g} s (+5%)"
    for f in campaign.failures:
        dev = None if slot.ours else _covering(deviations, f, campaign.peer_version)
        if dev is not None:
            verdict.known.append((f, dev))
        elif not slot.ours and f.level != "MUST":
            verdict.reported.append(f)
        else:
            verdict.new.append(f)
    verdict.new_fails = slot.ours or strict_peers
    if verdict.new and verdict.new_fails:
        verdict.ok = False
    return verdict


def _covering(deviations: Sequence[Deviation], f: FuzzFailure, version: str) -> Deviation | None:
    for dev in deviations:
        if dev.covers_fuzz(f.kind, f.place, version or None):
            return dev
    return None


def deviations_of(slot: Slot) -> tuple[Deviation, ...]:
    """The deviations in the slot's peer manifest (none for our reference peers)."""
    if slot.ours:
        return ()
    return load_peer_manifest(slot.role, slot.name).parsed_deviations  # type: ignore[arg-type]


# ---------------------------------------------------------------- the processes


def command(slot: Slot, out: Path, seconds: float) -> list[str]:
    return [
        sys.executable, "-m", "iscsi_conformance.cli", "fuzz", *slot.argv,
        "--seconds", f"{seconds:g}", "--quiet", "--report", str(out),
    ]  # fmt: skip


def run_slots(
    slots: Sequence[Slot],
    out: Path,
    seconds: float,
    *,
    start_limit: float,
    say: Callable[[str], None] = print,
    make_command: Callable[[Slot, Path, float], list[str]] = command,
) -> dict[str, Outcome]:
    """Start every slot's campaign at once; wait for each within its bound."""
    limit = seconds * OVERRUN + start_limit
    procs: dict[str, tuple[subprocess.Popen[bytes], float, Path]] = {}
    outcomes: dict[str, Outcome] = {}
    try:
        for slot in slots:
            path = campaign_path(out, slot.peer)
            path.parent.mkdir(parents=True, exist_ok=True)
            # the last run's campaign and reproducers go: a stale file is no verdict
            path.unlink(missing_ok=True)
            shutil.rmtree(path.with_suffix(""), ignore_errors=True)
            log = path.with_suffix(".log")
            with log.open("wb") as sink:
                proc = subprocess.Popen(
                    make_command(slot, out, seconds), stdout=sink, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
            procs[slot.peer] = (proc, time.monotonic(), log)
            say(f"started {slot.role} {slot.peer}: pid {proc.pid}, log {log}")
        while procs:
            for peer, (proc, started, log) in list(procs.items()):
                wall = time.monotonic() - started
                code = proc.poll()
                if code is None and wall > limit:
                    say(
                        f"{peer}: still running after {wall:.0f} s (bound {limit:.0f} s): interrupted"
                    )
                    _stop(proc)
                    code = None
                elif code is None:
                    continue
                else:
                    say(f"{peer}: ended with status {code} after {wall:.1f} s")
                outcomes[peer] = Outcome(code, wall, log)
                del procs[peer]
            time.sleep(0.2)
    finally:
        for proc, _started, _log in procs.values():  # interrupted ourselves
            _stop(proc)
    return outcomes


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT first (the campaign stops its peer: container, micro-VM), then SIGKILL."""
    for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _load(out: Path, slot: Slot) -> FuzzCampaign | None:
    try:
        doc = json.loads(campaign_path(out, slot.peer).read_text("utf-8"))
        return FuzzCampaign.from_json(doc)
    except (OSError, ValueError):
        return None


def _annotate(out: Path, campaign: FuzzCampaign, verdict: Verdict) -> None:
    """Add the verdict to the campaign file's notes, which the report shows."""
    campaign.notes.extend(f"fuzz ci: {line.strip()}" for line in verdict.lines())
    path = campaign_path(out, campaign.peer)
    path.write_text(json.dumps(campaign.to_json(), indent=1) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="iscsi-conformance fuzz ci", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--report", type=Path, required=True, metavar="DIR",
                        help="the report folder: campaigns go to DIR/fuzz/")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="each campaign's budget (default 60)")  # fmt: skip
    parser.add_argument(
        "--start-limit", type=float, default=300.0, metavar="S",
        help="allowance past the budget for a peer's start-up (a micro-VM boot), saving "
        "reproducers and the stop (default 300)",
    )  # fmt: skip
    parser.add_argument(
        "--strict-peers", action="store_true",
        help="a third-party failure that the peer's manifest does not record fails the "
        "gate (default: reported with its reproducer)",
    )  # fmt: skip
    names = [s.peer for s in SLOTS]
    parser.add_argument("--only", action="append", choices=names, metavar="PEER",
                        help=f"run only these campaigns (repeatable; of {', '.join(names)})")  # fmt: skip
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.start_limit < 0:
        print("iscsi-conformance fuzz ci: --seconds must be positive", file=sys.stderr)
        return 2
    slots = [s for s in SLOTS if not args.only or s.peer in args.only]
    if not slots:
        print("iscsi-conformance fuzz ci: no campaign selected", file=sys.stderr)
        return 2
    try:
        devs = {s.peer: deviations_of(s) for s in slots}
    except ConfigError as exc:
        print(f"iscsi-conformance fuzz ci: {exc}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    outcomes = run_slots(slots, args.report, args.seconds, start_limit=args.start_limit,
                         say=lambda line: print(line, flush=True), make_command=command)  # fmt: skip
    wall = time.monotonic() - t0
    verdicts = []
    for slot in slots:
        campaign = _load(args.report, slot)
        verdict = judge(
            slot, campaign, outcomes[slot.peer], devs[slot.peer], args.seconds,
            strict_peers=args.strict_peers,
        )  # fmt: skip
        verdicts.append(verdict)
        if campaign is not None:
            _annotate(args.report, campaign, verdict)
    print(
        f"\nfuzz ci: {len(slots)} campaigns of {args.seconds:g} s side by side, {wall:.1f} s wall"
    )
    for verdict in verdicts:
        print("\n".join(verdict.lines()))
        if not verdict.ok and verdict.slot.peer in outcomes:
            log = outcomes[verdict.slot.peer].log
            if log is not None and log.exists():
                tail = log.read_text("utf-8", errors="replace").splitlines()[-15:]
                print("  | " + "\n  | ".join(tail))
    failed = [v.slot.peer for v in verdicts if not v.ok]
    print(f"fuzz ci: {'FAILED: ' + ', '.join(failed) if failed else 'every campaign passed'}")
    return 1 if failed else 0
