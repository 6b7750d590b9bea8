"""The reference target's per-I_T-nexus state stays bounded when every session comes
with a new ISID (issue 14: a fuzz campaign of 46,806 sessions grew its RSS by 64 MiB).

Each session logs in to the engine in memory, sends one TEST UNIT READY to each LUN
(so that both logical units know the nexus) and drops its connection (ErrorRecoveryLevel
0: the session ends, an I_T nexus loss). The logical units remember only the most
recently lost nexuses (``scsi.device.MAX_LOST_NEXUSES``): once past that cap, 120
more sessions keep 7 KB (traced: hash-table churn), an unbounded unit 78 KB.
A lost nexus still remembered sees I_T NEXUS LOSS OCCURRED when it returns; one
forgotten sees POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
"""

from __future__ import annotations

import gc
import tracemalloc

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.scsi.codes import Asc
from iscsi_conformance.scsi.device import LogicalUnit
from iscsi_conformance.scsi.nexus import Nexus
from iscsi_conformance.target.config import simple_config
from iscsi_conformance.target.engine import TargetEngine
from iscsi_conformance.target.luns import LunStore

INITIATOR = "iqn.2024-01.org.iscsi-conformance:nexus-bound"
TARGET = "iqn.2024-01.org.iscsi-conformance:fuzz"
TUR = bytes(6)


def _engine(cap: int) -> tuple[TargetEngine, list[LogicalUnit]]:
    cfg = simple_config(("127.0.0.1", 0), TARGET, ["1M", "1M"])
    store = LunStore(cfg)
    lus = list(store.by_target[TARGET].values())
    for lu in lus:
        lu.max_lost_nexuses = cap
    return TargetEngine(cfg, store.by_target, rng=lambda n: bytes(n)), lus


def _session(engine: TargetEngine, isid: int) -> None:
    conn = engine.new_connection(portal_group=1, peer=("", isid & 0xFFFF), now=0.0)
    keys = [("InitiatorName", INITIATOR), ("TargetName", TARGET), ("SessionType", "Normal")]
    conn.receive_data(
        P.encode(P.LoginRequest(transit=True, csg=1, nsg=3, isid=isid, itt=1,
                                data=T.format_pairs(keys))),
        0.0,
    )  # fmt: skip
    for i, lun in enumerate((0, 1)):
        cmd = P.ScsiCommand(final=True, itt=2 + i, lun=P.lun_to_field(lun), cmdsn=i,
                            expstatsn=1 + i, cdb=TUR)  # fmt: skip
        conn.receive_data(P.encode(cmd), 0.0)
    engine.take_output()
    conn.connection_lost()
    engine.take_output()


def test_lost_nexus_state_is_bounded_over_many_isids() -> None:
    cap, n = 16, 40
    engine, lus = _engine(cap)
    for isid in range(1, n + 1):  # past the cap, not traced (fast)
        _session(engine, 0x80_0000_0000 | isid)
    gc.collect()
    tracemalloc.start()
    try:
        for isid in range(n + 1, n + 11):  # what tracing itself settles on
            _session(engine, 0x80_0000_0000 | isid)
        gc.collect()
        settled = tracemalloc.get_traced_memory()[0]
        for isid in range(n + 11, 4 * n + 11):
            _session(engine, 0x80_0000_0000 | isid)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - settled
    finally:
        tracemalloc.stop()
    # unbounded (cap 10**9), 120 more nexuses keep 78 KB here; bounded, what the
    # churn of the cap's dict and set tables leaves (7 KB)
    assert grown < 32 * 1024, grown
    for lu in lus:
        assert len(lu._known) == cap and len(lu._ua) == cap and len(lu._lost) == cap
        assert len(lu._iscsi_level) == cap  # RFC 7144 4.2's per-nexus level, same bound


def test_a_nexus_that_sent_no_command_leaves_nothing_behind() -> None:
    """A session that logs in and goes without a command leaves no per-nexus state in
    its logical units (the iSCSIProtocolLevel each session tells them, RFC 7144 4.2)."""
    engine, lus = _engine(4)
    keys = [("InitiatorName", INITIATOR), ("TargetName", TARGET), ("SessionType", "Normal")]
    for isid in range(1, 21):
        conn = engine.new_connection(portal_group=1, peer=("", isid), now=0.0)
        login = P.LoginRequest(transit=True, csg=1, nsg=3, isid=0x80_0000_0000 | isid, itt=1,
                               data=T.format_pairs(keys))  # fmt: skip
        conn.receive_data(P.encode(login), 0.0)
        engine.take_output()
        conn.connection_lost()
        engine.take_output()
    for lu in lus:
        assert lu._iscsi_level == {} and lu._known == set()


def test_remembered_and_forgotten_nexuses_still_see_a_unit_attention() -> None:
    lu = _engine(2)[1][0]
    nexuses = [Nexus.iscsi(INITIATOR, 0x80_0000_0000 | i, TARGET) for i in range(3)]
    for nx in nexuses:
        lu.execute(nx, TUR)  # POWER ON, RESET... (a new nexus)
        assert lu.execute(nx, TUR).good
        lu.nexus_lost(nx)
    forgotten, remembered = nexuses[0], nexuses[2]
    assert forgotten not in lu._known and len(lu._known) == 2
    assert lu.pending_unit_attentions(remembered) == [Asc.I_T_NEXUS_LOSS_OCCURRED]
    # back again: a remembered nexus is live, no longer a candidate to forget
    assert not lu.execute(remembered, TUR).good
    assert remembered not in lu._lost and lu.execute(remembered, TUR).good
    assert not lu.execute(forgotten, TUR).good
    assert lu.pending_unit_attentions(forgotten) == []
