"""ErrorRecoveryLevel 2 in the sans-IO target engine: a session that lost its last
connection is kept for Time2Wait + Time2Retain (RFC 7143 6.3.4, 13.19, 13.20) and then
ended; at ERL 1 it ends with the connection."""

from __future__ import annotations

import dataclasses

from target_helpers import write16

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.target import engine as E
from iscsi_conformance.target.config import simple_config
from iscsi_conformance.target.luns import LunStore

IQN = "iqn.2024-01.org.example:erl2"


def _session(erl: str) -> tuple[E.TargetEngine, E.Connection, int]:
    cfg = simple_config(("127.0.0.1", 0), IQN, ["4M"])
    tc = dataclasses.replace(
        cfg.targets[0],
        parameters={"ErrorRecoveryLevel": "2", "DefaultTime2Wait": "1", "DefaultTime2Retain": "3"},
    )
    cfg = dataclasses.replace(cfg, targets=(tc,))
    engine = E.TargetEngine(cfg, LunStore(cfg).by_target, rng=lambda n: bytes(n))
    conn = engine.new_connection(portal_group=1)
    keys = [
        ("InitiatorName", "iqn.2024-01.org.example:ini"),
        ("TargetName", IQN),
        ("ErrorRecoveryLevel", erl),
        ("DefaultTime2Wait", "1"),
        ("DefaultTime2Retain", "3"),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
    ]
    login = P.LoginRequest(
        transit=True, csg=1, nsg=3, isid=1, itt=1, cmdsn=1, data=T.format_pairs(keys)
    )
    conn.receive_data(P.encode(login))
    engine.take_output()
    assert conn.erl == int(erl)
    # A WRITE left waiting on its R2T: a task with allegiance to the connection.
    cmd = P.ScsiCommand(
        final=True,
        write=True,
        itt=7,
        cmdsn=1,
        cdb=write16(0, 8),
        expected_data_transfer_length=4096,
    )
    conn.receive_data(P.encode(cmd))
    engine.take_output()
    (tsih,) = engine.sessions
    return engine, conn, tsih


def test_erl2_session_kept_for_time2wait_plus_time2retain() -> None:
    engine, conn, tsih = _session("2")
    conn.connection_lost()
    session = engine.sessions[tsih]
    assert 7 in session.tasks and not session.closed  # kept for TASK REASSIGN
    assert engine.get_timer() == 0.0  # the retention clock starts at the next timer
    engine.handle_timer(10.0)
    assert engine.get_timer() == 14.0  # Time2Wait 1 + Time2Retain 3
    engine.handle_timer(13.9)
    assert tsih in engine.sessions
    engine.handle_timer(14.0)
    assert tsih not in engine.sessions and session.closed and not session.tasks
    assert engine.get_timer() is None


def test_erl1_session_ends_with_its_last_connection() -> None:
    engine, conn, tsih = _session("1")
    conn.connection_lost()
    assert tsih not in engine.sessions
    assert engine.get_timer() is None
