"""The reference target keeps no state of a session once it has ended (issue 14).

A 60 s ``fuzz reference`` campaign took the target's RSS from 32.5 to 51-55 MB. In a
target process driven by the seeded campaign and traced by ``tracemalloc``, the live
Python heap stayed flat (12.68 MB after 1,248 cases, 12.79 MB after 7,126 more; the
traced peak rose from 25 to 34 MB): the RSS growth is the allocator's high-water mark
of transient buffers and the LUNs' written chunks, not a leak. This test pins the
flat part: sessions of every kind the campaigns draw (logout, dropped connection, the
only connection reinstated, the session reinstated) run through the engine in memory;
after a warm-up, 150 more sessions must leave less than 48 KB of traced memory
(measured: a few KB of hash-table churn). Proof: the same run with the engine keeping
each ended session (a planted leak) grows by far more and fails.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.target.config import simple_config
from iscsi_conformance.target.engine import TargetEngine
from iscsi_conformance.target.luns import LunStore

INITIATOR = "iqn.2024-01.org.iscsi-conformance:memory"
TARGET = "iqn.2024-01.org.iscsi-conformance:fuzz"
READ10 = bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0])  # 8 blocks at LBA 0
BOUND = 32 * 1024


def _login(engine: TargetEngine, isid: int, tsih: int = 0, port: int = 1) -> Any:
    conn = engine.new_connection(portal_group=1, peer=("", port & 0xFFFF), now=0.0)
    keys = [("InitiatorName", INITIATOR), ("TargetName", TARGET), ("SessionType", "Normal")]
    conn.receive_data(
        P.encode(P.LoginRequest(transit=True, csg=1, nsg=3, isid=isid, tsih=tsih, itt=1,
                                data=T.format_pairs(keys))),
        0.0,
    )  # fmt: skip
    engine.take_output()
    return conn


def _io(engine: TargetEngine, conn: Any, cmdsn: int) -> None:
    cmd = P.ScsiCommand(final=True, read=True, itt=2, lun=0, cmdsn=cmdsn, expstatsn=1,
                        expected_data_transfer_length=8 * 512, cdb=READ10)  # fmt: skip
    conn.receive_data(P.encode(cmd), 0.0)
    engine.take_output()


def _session(engine: TargetEngine, n: int) -> None:
    isid = 0x400000000000 + n
    conn = _login(engine, isid, port=n)
    _io(engine, conn, 0)
    kind = n % 4
    if kind == 0:  # logout
        conn.receive_data(P.encode(P.LogoutRequest(immediate=True, itt=3, cmdsn=1)), 0.0)
        engine.take_output()
        conn.connection_lost()
    elif kind == 1:  # the connection drops
        conn.connection_lost()
    else:
        tsih = next(s.tsih for s in engine.sessions.values() if s.isid == isid)
        # 2: the only connection reinstated (same ISID, TSIH, CID); 3: the session
        new = _login(engine, isid, tsih if kind == 2 else 0, port=n + 1)
        conn.connection_lost()
        _io(engine, new, 0 if kind == 3 else 1)
        new.connection_lost()
    engine.take_output()


def _growth(engine: TargetEngine, warm: int, more: int) -> int:
    for n in range(warm):
        _session(engine, n)
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(warm, warm + more):
        _session(engine, n)
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before


def _engine() -> TargetEngine:
    cfg = simple_config(("127.0.0.1", 0), TARGET, ["1M"])
    store = LunStore(cfg)
    for lu in store.by_target[TARGET].values():
        lu.max_lost_nexuses = 16  # the expected per-nexus state (test_nexus_bound.py) capped
    return TargetEngine(cfg, store.by_target, rng=lambda n: bytes(n))


@pytest.fixture
def traced() -> Any:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def test_ended_sessions_leave_no_state(traced: Any) -> None:
    engine = _engine()
    grew = _growth(engine, 40, 100)
    assert not engine.sessions, engine.sessions
    assert grew < BOUND, f"100 ended sessions kept {grew} bytes of traced memory"


def test_a_target_keeping_ended_sessions_fails(traced: Any, monkeypatch: Any) -> None:
    kept: list[Any] = []
    engine = _engine()
    close = type(engine.sessions).pop

    class Hoard(dict):  # type: ignore[type-arg]
        def pop(self, key: Any, *default: Any) -> Any:
            s = close(self, key, *default)
            kept.append(s)
            return s

    engine.sessions = Hoard(engine.sessions)
    grew = _growth(engine, 40, 100)
    assert kept
    assert grew >= BOUND, f"the planted leak kept only {grew} bytes"
