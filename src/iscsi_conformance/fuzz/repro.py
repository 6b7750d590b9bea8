"""Reproducers: one Python file per distinct failure, replayable with
``iscsi-conformance fuzz replay FILE``.

Theory of operation: the file is Python a reader can open: a docstring with the
replay command, one ``FINDING = {...}`` literal (kind, place, requirement, phase, the
login keys, the PDUs in hex) and, as comments, each PDU decoded as its dataclass
repr (or "does not decode" for damaged ones). ``load()`` reads the literal with
``ast.literal_eval``: a reproducer is data and is never executed. The PDUs go out
as recorded, after a login with the recorded keys (CmdSN 0, so that a target that
starts its window at the login's CmdSN sees the same numbers again).

A finding of the state machine (``fuzz.machine``, phase ``program``) also holds its
``program`` (the rules and their arguments): ``fuzz replay`` runs the program again
(``machine.replay_program``), so that several connections (MC/S, a reinstatement)
and CHAP logins (a fresh challenge each time) replay; its ``pdus`` are every PDU
that program's recorded replay sent, on all its connections (``pdu_connections``
says which), and its pcapng holds every connection.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.errors import ProtocolError
from iscsi_conformance.fuzz.campaign import Failure
from iscsi_conformance.fuzz.capture import Tape

__all__ = ["describe", "load", "save"]


def describe(raw: bytes, *, digests: tuple[bool, bool] = (False, False)) -> str:
    """The dataclass repr of one PDU, or why it does not decode."""
    try:
        result = P.decode(raw, header_digest=digests[0], data_digest=digests[1])
    except (ProtocolError, ValueError) as exc:
        return f"does not decode ({type(exc).__name__}: {str(exc)[:120]})"
    if isinstance(result, P.NeedMore):
        return f"incomplete ({result.n} more bytes announced)"
    pdu, used = result
    tail = f" + {len(raw) - used} trailing bytes" if used < len(raw) else ""
    text = repr(pdu)
    return (text if len(text) <= 400 else text[:400] + "...") + tail


def _lit(v: Any) -> str:
    """A Python literal for ``v`` with double quotes (the house format)."""
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_lit(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_lit(k)}: {_lit(x)}" for k, x in v.items()) + "}"
    return repr(v)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "failure"


def save(
    f: Failure,
    directory: Path,
    *,
    target: str,
    url: str = "",
    seed: int | None = None,
    tape: Tape | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``f`` as a reproducer under ``directory``; returns its path. With ``tape``
    (the exchange of one replay, ``fuzz.capture.record``) the capture goes beside it as
    ``NAME.pcapng``, named in the file. ``extra`` goes into ``FINDING`` too (an
    initiator's reproducer, ``fuzz.hostile``: role, client, mutations)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{_slug(f.kind)}--{_slug(f.place)}.py"
    capture = path.with_suffix(".pcapng")
    capture.unlink(missing_ok=True)  # an older campaign's capture is not this exchange
    if tape is not None:
        written = tape.write_pcapng(
            capture,
            title=f"fuzz {f.kind} at {f.place}",
            message=f.detail.splitlines()[0] if f.detail else "",
        )
        if written is None:
            tape = None
    keys = dict(f.login_keys)
    digests = (keys.get("HeaderDigest") == "CRC32C", keys.get("DataDigest") == "CRC32C")
    finding: dict[str, Any] = {
        "kind": f.kind,
        "place": f.place,
        "requirement": f.requirement,
        "level": f.level,
        "target": target,
        "url": url,
        "seed": seed,
        "count": f.count,
        "shrunk": f.shrunk,
        "phase": f.phase,
        "login_keys": [list(kv) for kv in f.login_keys],
        "pdus": [p.hex() for p in f.pdus],
    }
    finding.update(extra or {})
    if tape is not None:
        finding["pcapng"] = capture.name
    initiator = finding.get("role") == "initiator"
    lines = [
        f'"""iscsi-conformance fuzz reproducer: {f.kind} at {f.place}.',
        "",
        f"Replay: iscsi-conformance fuzz replay {path.name}"
        + ("" if initiator else " [--url iscsi://HOST:PORT/IQN]"),
        "(the same initiator against a fresh hostile reference target applying MUTATIONS)."
        if initiator
        else "(without --url against a fresh reference target when the target was ours).",
        *(
            [
                f"Capture of one replay: {capture.name} "
                f"(tshark -r {capture.name} -d tcp.port=={tape.target_port},iscsi)",
                *([_replay_verdict(f, tape.seen)] if tape.seen is not None else []),
            ]
            if tape is not None
            else []
        ),
        "",
        "What was seen first:",
        *("    " + line for line in f.detail.splitlines()[-30:]),
        '"""',
        "",
        "FINDING = {",
    ]
    for k, v in finding.items():
        if k in ("pdus", "login_keys", "mutations", "program"):
            lines.append(f"    {_lit(k)}: [")
            lines.extend(f"        {_lit(h)}," for h in v)
            lines.append("    ],")
        else:
            lines.append(f"    {_lit(k)}: {_lit(v)},")
    lines.append("}")
    lines.append("")
    conns = finding.get("pdu_connections") or []
    if conns:
        lines.append("# The PDUs the program's recorded replay sent, decoded (by connection):")
    else:
        lines.append("# The PDUs as sent, decoded (after the login in phase ffp):")
    for i, raw in enumerate(f.pdus, 1):
        if conns:
            hd, dd = (finding.get("pdu_digests") or [])[i - 1]
            lines.append(f"# {i}. connection {conns[i - 1]}: {describe(raw, digests=(hd, dd))}")
            continue
        lines.append(
            f"# {i}. {describe(raw, digests=digests if f.phase == 'ffp' else (False, False))}"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _replay_verdict(f: Failure, seen: set[tuple[str, str]]) -> str:
    if f.identity in seen:
        return "That replay showed this failure again."
    others = ", ".join(f"{k} at {p}" for k, p in sorted(seen)) or "no failure"
    return f"That replay did NOT show it (it saw: {others}): the cause may lie before these PDUs."


def load(path: Path) -> dict[str, Any]:
    """The ``FINDING`` literal of a reproducer (never executed). Raises ValueError."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "FINDING"
        ):
            value = ast.literal_eval(node.value)
            if not isinstance(value, dict) or "pdus" not in value:
                break
            value["pdus"] = [bytes.fromhex(h) for h in value["pdus"]]
            value["login_keys"] = [tuple(kv) for kv in value.get("login_keys", [])]
            return value
    raise ValueError(f"{path}: no FINDING = {{...}} with 'pdus' in it")
