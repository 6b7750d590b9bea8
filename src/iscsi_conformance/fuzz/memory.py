"""An in-memory campaign against the reference target's engine: no sockets, no threads.

Theory of operation: the cases of ``fuzz.gen`` go straight into ``TargetEngine``
connections (``receive_data``), and what the engine queues (``take_output``) is decoded
with the digests the login negotiated and checked by ``AnswerChecker``, as a TCP
campaign would, at about ten times its rate. A session is a one-step login (the
operational stage, with the generator's operational keys: CRC32C digests a third of
the time, any ErrorRecoveryLevel, bursts, R2T settings) followed by batches of cases
until the engine closes the connection; a login case is a fresh connection fed the
drawn Login-phase PDUs. The engine's timers run on a clock that the campaign moves
forward by 50 ms a batch. An ERROR record of the ``iscsi_conformance.target`` logger
during a case is an internal error; the failing case's PDUs (with the login keys) are
kept, first one of each kind and place, for a reproducer.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.errors import ProtocolError
from iscsi_conformance.fuzz.campaign import CampaignReport, Failure, _label_opcode
from iscsi_conformance.fuzz.gen import Gen, Session
from iscsi_conformance.fuzz.oracles import AnswerChecker
from iscsi_conformance.target.config import simple_config
from iscsi_conformance.target.engine import ConnState, TargetEngine
from iscsi_conformance.target.luns import LunStore

__all__ = ["engine_campaign"]

INITIATOR = "iqn.2024-01.org.iscsi-conformance:fuzzer"
TARGET = "iqn.2024-01.org.iscsi-conformance:fuzz"


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.places: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        place, detail = msg.split(" from ")[0][:80], msg
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "?"
            place = f"{type(exc).__name__} at {where}"
            detail = msg + "\n" + "".join(traceback.format_exception(exc))[-4000:]
        self.places.append((place, detail))


def engine_campaign(
    seed: int,
    *,
    cases: int = 10_000,
    seconds: float = 60.0,
    mrdsl: int = 8192,
    digests: bool = True,
) -> CampaignReport:
    """Run at most ``cases`` cases for at most ``seconds``; see the module doc."""
    cfg = simple_config(("127.0.0.1", 0), TARGET, ["8M", "1M"])
    engine = TargetEngine(cfg, LunStore(cfg).by_target, rng=lambda n: bytes(n))
    gen = Gen(seed, initiator=INITIATOR, target=TARGET, mrdsl=mrdsl, digests=digests)
    report = CampaignReport(target="reference engine (in memory)")
    errors = _Errors()
    log = logging.getLogger("iscsi_conformance.target")
    log.addHandler(errors)
    start = time.monotonic()
    deadline = start + seconds
    clock = 0.0
    isid = 0

    def fail(kind: str, place: str, detail: str, phase: str, keys: list[tuple[str, str]],
             pdus: list[bytes], requirement: str = "", level: str = "MUST") -> None:  # fmt: skip
        old = report.failures.get((kind, place))
        if old is not None:
            old.count += 1
            return
        report.failures[(kind, place)] = Failure(
            kind, place, detail, requirement, level, phase, list(keys), list(pdus)
        )

    def drain(hd: bool, dd: bool) -> tuple[list[P.PDU], bool, str]:
        dec = P.PDUDecoder(max_data_segment_length=None, header_digest=hd, data_digest=dd)
        closed = False
        for _, bufs, close in engine.take_output():
            for b in bufs:
                dec.feed(bytes(b))
            closed = closed or close
        try:
            return list(dec), closed, ""
        except ProtocolError as exc:
            return [], True, f"{type(exc).__name__}: {exc}"

    try:
        while report.cases < cases and time.monotonic() < deadline:
            isid += 1
            conn = engine.new_connection(portal_group=1, peer=("", isid & 0xFFFF), now=clock)
            if gen.rng.random() < 0.1:
                case = gen.case(None)
                for raw in case.pdus:
                    conn.receive_data(raw, clock)
                report.cases += 1
                report.pdus += len(case.pdus)
                for raw in case.pdus:
                    report.coverage.add((_label_opcode(raw), "login"))
                _, _, bad = drain(False, False)
                if bad:
                    fail("undecodable", bad.split(":")[0], bad, "login", [], list(case.pdus))
                for place, detail in errors.places:
                    fail("internal-error", place, detail, "login", [], list(case.pdus))
                errors.places.clear()
                conn.connection_lost()
                continue
            keys = [("InitiatorName", INITIATOR), ("TargetName", TARGET),
                    ("SessionType", "Normal"), *gen.operational_keys()]  # fmt: skip
            req = P.LoginRequest(transit=True, csg=1, nsg=3, isid=0x80_0000_0000 | isid,
                                 itt=1, data=T.format_pairs(keys))  # fmt: skip
            conn.receive_data(P.encode(req), clock)
            answers, _, _ = drain(False, False)
            rsp = answers[-1] if answers else None
            if (
                not isinstance(rsp, P.LoginResponse)
                or rsp.status_class
                or conn.state is not ConnState.FULL_FEATURE
            ):
                fail("login", "refused", f"a correct login was answered {rsp!r}", "ffp", keys, [])
                conn.connection_lost()
                continue
            report.sessions += 1
            answered = dict(T.parse_pairs(rsp.data))
            s = Session(cmdsn=rsp.expcmdsn, expstatsn=(rsp.statsn + 1) & 0xFFFFFFFF)
            s.hd = answered.get("HeaderDigest") == "CRC32C"
            s.dd = answered.get("DataDigest") == "CRC32C"
            report.digest_sessions += s.hd or s.dd
            erl_text = answered.get("ErrorRecoveryLevel", "0")
            checker = AnswerChecker(
                rsp.statsn, rsp.expcmdsn, mrdsl, erl=int(erl_text) if erl_text.isdigit() else 0
            )
            hostile = gen.rng.random() < 0.3
            transcript: list[bytes] = []
            while report.cases < cases and time.monotonic() < deadline:
                case = gen.case(s, hostile=hostile)
                transcript.extend(case.pdus)
                del transcript[:-64]
                for raw in case.pdus:
                    conn.receive_data(raw, clock)
                report.cases += 1
                report.pdus += len(case.pdus)
                for raw in case.pdus:
                    report.coverage.add((_label_opcode(raw), "ffp"))
                clock += 0.05
                engine.handle_timer(clock)
                answers, closed, bad = drain(s.hd, s.dd)
                if bad:
                    fail("undecodable", bad.split(":")[0], bad, "ffp", keys, transcript,
                         "R7143-11.2", "MUST")  # fmt: skip
                report.answers += len(answers)
                for pdu in answers:
                    s.saw(pdu)
                    exp = getattr(pdu, "expcmdsn", None)
                    if exp is not None and not isinstance(pdu, P.ScsiDataIn):
                        s.cmdsn = exp
                    for v in checker.check(pdu):
                        fail(v.kind, v.place, v.detail, "ffp", keys, transcript, v.requirement,
                             v.level)  # fmt: skip
                for place, detail in errors.places:
                    fail("internal-error", place, detail, "ffp", keys, transcript)
                errors.places.clear()
                if closed or conn.closed or conn.close_requested:
                    report.closed_by_target += 1
                    break
            conn.connection_lost()
    finally:
        log.removeHandler(errors)
    report.seconds = time.monotonic() - start
    return report
