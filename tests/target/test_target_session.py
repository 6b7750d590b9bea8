"""The reference target over a real loopback socket: login, auth, discovery, I/O,
R2T, task management, logout, async messages, malformed input, memory bounds."""

from __future__ import annotations

import os
import time

from target_helpers import (
    ACL,
    CHAP,
    DISK,
    INITIATOR_2,
    MOVED,
    MUTUAL,
    NONE_TAG,
    SMALL,
    read16,
    write16,
)

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core import text as T
from iscsi_conformance.core.codes import (
    AsyncEvent,
    LoginStatus,
    LogoutResponseCode,
    RejectReason,
    TmfFunction,
    TmfResponse,
)

# ---------------------------------------------------------------------------- login


def test_login_and_logout(connect):
    ini = connect()
    rsp = ini.login()
    assert rsp.status == 0 and rsp.transit and rsp.nsg == 3
    assert rsp.tsih != 0
    assert ini.negotiated["TargetPortalGroupTag"] == "1"
    assert "MaxRecvDataSegmentLength" in ini.negotiated  # declared by the target (13.12)
    out = ini.logout()
    assert isinstance(out, P.LogoutResponse) and out.response == LogoutResponseCode.SUCCESS
    assert ini.closed_by_target()


def test_unknown_target_is_not_found(connect):
    rsp = connect().login("iqn.2024-01.org.example:nope")
    assert rsp.status == LoginStatus.NOT_FOUND


def test_missing_initiator_name_is_missing_parameter(connect):
    ini = connect()
    ini.send(
        P.LoginRequest(
            transit=True, csg=1, nsg=3, isid=1, itt=1, data=T.format_pairs([("TargetName", DISK)])
        )
    )
    assert ini.recv().status == LoginStatus.MISSING_PARAMETER


def test_redirect_temporary(connect):
    rsp = connect().login(MOVED)
    assert rsp.status == LoginStatus.TARGET_MOVED_TEMPORARILY
    assert dict(T.parse_pairs(rsp.data))["TargetAddress"] == "127.0.0.1:3999"


def test_acl_refuses_other_initiators(connect):
    assert connect().login(ACL).status == 0
    assert (
        connect(name=INITIATOR_2, isid=0x400001000002).login(ACL).status
        == LoginStatus.AUTHORIZATION_FAILURE
    )


def test_chap_one_way(connect):
    assert connect().login(CHAP, chap=("alice", "alice-secret-123")).status == 0
    assert (
        connect().login(CHAP, chap=("alice", "wrong-secret-0000")).status
        == LoginStatus.AUTH_FAILURE
    )
    # No AuthMethod=CHAP at all: authentication failure.
    assert connect().login(CHAP).status == LoginStatus.AUTH_FAILURE


def test_chap_mutual(connect):
    rsp = connect().login(
        MUTUAL, chap=("bob", "bob-secret-12345"), mutual=("target", "target-secret-99")
    )
    assert rsp.status == 0


def test_session_reinstatement_closes_old_session(connect, server):
    first = connect()
    assert first.login().status == 0
    old_tsih = first.tsih
    second = connect()  # same ISID and InitiatorName, TSIH 0 (RFC 7143 6.3.5)
    assert second.login().status == 0
    assert second.tsih != old_tsih
    assert first.closed_by_target()
    assert len([s for s in server.sessions() if s.target_name == DISK]) == 1


def test_second_connection_joins_session(connect, server):
    a = connect()
    assert a.login(params=[("MaxConnections", "2")]).status == 0
    b = connect()
    rsp = b.login(tsih=a.tsih, cid=1)
    assert rsp.status == 0 and rsp.tsih == a.tsih
    (session,) = [s for s in server.sessions() if s.target_name == DISK]
    assert sorted(session.connections) == [0, 1]


def test_discovery_send_targets(connect, server):
    ini = connect()
    assert ini.login(None, session_type="Discovery").status == 0
    ini.send(
        P.TextRequest(
            final=True,
            itt=ini.next_itt(),
            ttt=NONE_TAG,
            cmdsn=ini.cmdsn,
            expstatsn=ini.expstatsn,
            data=T.format_pairs([("SendTargets", "All")]),
        )
    )
    rsp = ini.recv()
    assert isinstance(rsp, P.TextResponse) and rsp.final
    pairs = T.parse_pairs(rsp.data)
    names = [v for k, v in pairs if k == "TargetName"]
    assert DISK in names and CHAP in names
    assert ACL in names  # INITIATOR is in its ACL
    host, port = server.portal()
    assert ("TargetAddress", f"{host}:{port},1") in pairs


# ---------------------------------------------------------------------------- I/O


def test_read_write_roundtrip_immediate_and_r2t(connect):
    ini = connect()
    assert ini.login().status == 0
    ini.clear_ua()
    payload = os.urandom(300 * 1024)  # beyond FirstBurstLength: immediate + R2Ts
    status, _, seen = ini.scsi(write16(10, len(payload) // 512), write=payload)
    assert status.status == 0
    assert any(isinstance(p, P.R2T) for p in seen)
    status, data, _ = ini.scsi(read16(10, len(payload) // 512), read=len(payload))
    assert status.status == 0 and data == payload


def test_small_limits_split_data_in_and_r2t(connect):
    ini = connect()
    assert ini.login(SMALL, params=[("InitialR2T", "Yes"), ("ImmediateData", "No")]).status == 0
    assert int(ini.negotiated["MaxRecvDataSegmentLength"]) == 4096
    ini.clear_ua()
    payload = os.urandom(20 * 1024)
    status, _, seen = ini.scsi(write16(0, 40), write=payload, immediate_data=False)
    assert status.status == 0
    r2ts = [p for p in seen if isinstance(p, P.R2T)]
    assert all(r.desired_data_transfer_length <= 8192 for r in r2ts)  # MaxBurstLength
    assert [r.r2tsn for r in r2ts] == list(range(len(r2ts)))
    status, data, seen = ini.scsi(read16(0, 40), read=len(payload))
    assert data == payload
    datain = [p for p in seen if isinstance(p, P.ScsiDataIn)]
    assert all(len(p.data) <= 1024 for p in datain)  # our own send cap
    assert [p.datasn for p in datain] == list(range(len(datain)))
    assert datain[-1].status_present and datain[-1].final


def test_read_residuals(connect):
    ini = connect()
    assert ini.login().status == 0
    ini.clear_ua()
    status, data, _ = ini.scsi(read16(0, 1), read=200)
    assert status.overflow and status.residual_count == 312 and len(data) == 200
    status, data, _ = ini.scsi(read16(0, 1), read=10000)
    assert status.underflow and status.residual_count == 10000 - 512


def test_unknown_lun_and_report_luns(connect):
    ini = connect()
    assert ini.login().status == 0
    status, _, _ = ini.scsi(bytes(6), lun=7)
    assert status.status == 2
    sense = status.sense
    assert sense[2] & 0x0F == 0x05 and sense[12] == 0x25  # LOGICAL UNIT NOT SUPPORTED
    status, data, _ = ini.scsi(
        bytes([0xA0, 0, 0, 0, 0, 0]) + (4096).to_bytes(4, "big") + bytes(2), read=4096
    )
    assert status.status == 0 and int.from_bytes(data[:4], "big") == 16  # two LUNs


def test_cmdsn_out_of_order_is_queued_and_outside_window_ignored(connect):
    ini = connect()
    assert ini.login().status == 0
    ini.clear_ua()
    base = ini.cmdsn
    ini.cmdsn = base + 1
    late = ini.command(bytes(6))  # CmdSN base+1 arrives first: queued
    ini.cmdsn = base + 100000  # far outside the window: silently ignored (4.2.2.1)
    ini.command(bytes(6))
    ini.cmdsn = base
    first = ini.command(bytes(6))
    got = [ini.recv(), ini.recv()]
    assert [p.itt for p in got] == [first.itt, late.itt]
    assert got[-1].expcmdsn == base + 2
    ini.sock.settimeout(0.5)
    try:
        extra = ini.recv(timeout=0.5)
    except TimeoutError:
        extra = None
    assert extra is None


def test_nop_ping_reply(connect):
    ini = connect()
    assert ini.login().status == 0
    ini.send(
        P.NopOut(
            immediate=True,
            itt=ini.next_itt(),
            ttt=NONE_TAG,
            cmdsn=ini.cmdsn,
            expstatsn=ini.expstatsn,
            data=b"ping",
        )
    )
    rsp = ini.recv()
    assert isinstance(rsp, P.NopIn) and rsp.data == b"ping" and rsp.ttt == NONE_TAG


def test_target_nop_in_ping(connect, server):
    ini = connect()
    assert ini.login().status == 0
    (conn,) = [c for s in server.sessions() for c in s.connections.values()]
    server.ping(conn)
    ping = ini.recv()
    assert isinstance(ping, P.NopIn) and ping.itt == NONE_TAG and ping.ttt != NONE_TAG
    ini.send(
        P.NopOut(
            immediate=True, itt=NONE_TAG, ttt=ping.ttt, cmdsn=ini.cmdsn, expstatsn=ini.expstatsn
        )
    )
    time.sleep(0.2)
    assert server.call(lambda: conn._ping_ttt) is None


# ---------------------------------------------------------------------------- TMF


def _tmf(
    ini,
    function: int,
    *,
    lun: int = 0,
    ref: int = NONE_TAG,
    refcmdsn: int | None = None,
    strict: bool = True,
) -> P.PDU:
    ini.send(
        P.TaskManagementRequest(
            immediate=True,
            function=function,
            lun=P.lun_to_field(lun),
            itt=ini.next_itt(),
            referenced_task_tag=ref,
            cmdsn=ini.cmdsn,
            expstatsn=ini.expstatsn,
            refcmdsn=ini.cmdsn if refcmdsn is None else refcmdsn,
        ),
        strict=strict,
    )
    return ini.recv()


def test_task_management_responses(connect):
    ini = connect()
    assert ini.login(SMALL, params=[("InitialR2T", "Yes"), ("ImmediateData", "No")]).status == 0
    ini.clear_ua()
    # A write waiting for its R2T data is a task that ABORT TASK can find.
    cmd = ini.command(write16(0, 16), write=bytes(8192), immediate_data=False)
    assert isinstance(ini.recv(), P.R2T)
    assert _tmf(ini, TmfFunction.ABORT_TASK, ref=cmd.itt).response == TmfResponse.FUNCTION_COMPLETE
    # Unknown tag whose RefCmdSN was already received: the task does not exist.
    done = _tmf(ini, TmfFunction.ABORT_TASK, ref=0x7777, refcmdsn=ini.cmdsn - 1)
    assert done.response == TmfResponse.TASK_DOES_NOT_EXIST
    assert _tmf(ini, TmfFunction.ABORT_TASK_SET).response == TmfResponse.FUNCTION_COMPLETE
    assert _tmf(ini, TmfFunction.CLEAR_TASK_SET).response == TmfResponse.FUNCTION_COMPLETE
    assert _tmf(ini, TmfFunction.CLEAR_ACA).response == TmfResponse.FUNCTION_COMPLETE
    assert (
        _tmf(ini, TmfFunction.LOGICAL_UNIT_RESET, lun=5).response == TmfResponse.LUN_DOES_NOT_EXIST
    )
    assert (
        _tmf(ini, TmfFunction.TASK_REASSIGN).response
        == TmfResponse.TASK_ALLEGIANCE_REASSIGNMENT_NOT_SUPPORTED
    )
    assert _tmf(ini, 0x33, strict=False).response == TmfResponse.FUNCTION_REJECTED
    assert _tmf(ini, TmfFunction.LOGICAL_UNIT_RESET).response == TmfResponse.FUNCTION_COMPLETE
    status, _, _ = ini.scsi(bytes(6))
    assert status.status == 2 and status.sense[2] & 0x0F == 0x06  # UNIT ATTENTION after reset
    assert _tmf(ini, TmfFunction.TARGET_WARM_RESET).response == TmfResponse.FUNCTION_COMPLETE


def test_rfc7144_functions_at_level2(connect):
    """On a session that negotiated iSCSIProtocolLevel 2 (RFC 7144 4.1) the four new
    functions are carried out (6.3, 6.4.2)."""
    ini = connect()
    params = [("InitialR2T", "Yes"), ("ImmediateData", "No"), ("iSCSIProtocolLevel", "2")]
    assert ini.login(SMALL, params=params).status == 0
    assert ini.negotiated["iSCSIProtocolLevel"] == "2"
    # A fresh nexus has its power-on unit attention pending: QUERY ASYNCHRONOUS EVENT
    # says so and clears nothing; after it is reported, nothing is pending.
    assert _tmf(ini, TmfFunction.QUERY_ASYNCHRONOUS_EVENT).response == (
        TmfResponse.FUNCTION_SUCCEEDED
    )
    ini.clear_ua()
    assert _tmf(ini, TmfFunction.QUERY_ASYNCHRONOUS_EVENT).response == (
        TmfResponse.FUNCTION_COMPLETE
    )
    assert _tmf(ini, TmfFunction.QUERY_TASK_SET).response == TmfResponse.FUNCTION_COMPLETE
    cmd = ini.command(write16(0, 16), write=bytes(8192), immediate_data=False)
    assert isinstance(ini.recv(), P.R2T)
    held = _tmf(ini, TmfFunction.QUERY_TASK, ref=cmd.itt, refcmdsn=cmd.cmdsn)
    assert held.response == TmfResponse.FUNCTION_SUCCEEDED
    assert _tmf(ini, TmfFunction.QUERY_TASK, ref=0x7777).response == TmfResponse.FUNCTION_COMPLETE
    assert _tmf(ini, TmfFunction.QUERY_TASK_SET).response == TmfResponse.FUNCTION_SUCCEEDED
    # QUERY TASK of a task management request (here itself): Function rejected (6.3).
    itt = ini.itt + 1
    assert _tmf(ini, TmfFunction.QUERY_TASK, ref=itt).response == TmfResponse.FUNCTION_REJECTED
    assert _tmf(ini, TmfFunction.ABORT_TASK, ref=cmd.itt).response == TmfResponse.FUNCTION_COMPLETE
    gone = _tmf(ini, TmfFunction.QUERY_TASK, ref=cmd.itt, refcmdsn=cmd.cmdsn)
    assert gone.response == TmfResponse.FUNCTION_COMPLETE
    assert _tmf(ini, TmfFunction.QUERY_TASK_SET).response == TmfResponse.FUNCTION_COMPLETE


def test_query_task_of_a_queued_task_management_request_is_rejected(connect):
    """RFC 7144 6.3: QUERY TASK naming a task management request (one waiting for its
    CmdSN behind a gap) is answered Function rejected, and the request still runs."""
    ini = connect()
    assert ini.login(params=[("iSCSIProtocolLevel", "2")]).status == 0
    ini.clear_ua()
    queued = P.TaskManagementRequest(
        function=TmfFunction.QUERY_TASK_SET,
        lun=P.lun_to_field(0),
        itt=ini.next_itt(),
        cmdsn=ini.cmdsn + 1,  # CmdSN ini.cmdsn is missing: it waits
        expstatsn=ini.expstatsn,
    )
    ini.send(queued)
    ref = _tmf(ini, TmfFunction.QUERY_TASK, ref=queued.itt, refcmdsn=queued.cmdsn)
    assert ref.response == TmfResponse.FUNCTION_REJECTED
    ini.send(  # fills the gap: the queued request runs after it
        P.NopOut(itt=ini.next_itt(), cmdsn=ini.cmdsn, expstatsn=ini.expstatsn)
    )
    answers = [ini.recv(), ini.recv()]
    tmf = next(p for p in answers if isinstance(p, P.TaskManagementResponse))
    assert tmf.itt == queued.itt and tmf.response == TmfResponse.FUNCTION_COMPLETE


def test_rfc7144_functions_not_supported_at_level1(connect):
    """Without iSCSIProtocolLevel 2 (the initiator did not offer it) the functions of
    RFC 7144 6.3 are answered 'not supported'; the key's default is 1."""
    ini = connect()
    assert ini.login().status == 0
    for fn in (9, 10, 11, 12):
        assert _tmf(ini, fn).response == TmfResponse.FUNCTION_NOT_SUPPORTED
    assert _tmf(ini, TmfFunction.LOGICAL_UNIT_RESET).response == TmfResponse.FUNCTION_COMPLETE


def test_i_t_nexus_reset_drops_the_session(connect):
    """I_T NEXUS RESET (RFC 7144 6.3): answered, then every connection of the issuing
    session is dropped; another session goes on; the nexus, back, sees I_T NEXUS LOSS."""
    isid = 0x400001000011
    a, b = connect(isid=isid), connect(name=INITIATOR_2, isid=0x400001000012)
    assert a.login(params=[("iSCSIProtocolLevel", "2")]).status == 0 and b.login().status == 0
    a.clear_ua()
    b.clear_ua()
    assert _tmf(a, TmfFunction.I_T_NEXUS_RESET).response == TmfResponse.FUNCTION_COMPLETE
    assert a.closed_by_target()
    status, _, _ = b.scsi(bytes(6))
    assert status.status == 0
    again = connect(isid=isid)
    assert again.login().status == 0
    status, _, _ = again.scsi(bytes(6))
    assert status.status == 2 and status.sense[12:14] == b"\x29\x07"


def test_target_cold_reset_drops_connections(connect):
    a, b = connect(), connect(name=INITIATOR_2, isid=0x400001000002)
    assert a.login().status == 0 and b.login().status == 0
    assert _tmf(a, TmfFunction.TARGET_COLD_RESET).response == TmfResponse.FUNCTION_COMPLETE
    assert a.closed_by_target() and b.closed_by_target()


# ---------------------------------------------------------------------------- logout / async


def test_logout_reasons(connect):
    ini = connect()
    assert ini.login().status == 0
    assert ini.logout(reason=2).response == LogoutResponseCode.RECOVERY_NOT_SUPPORTED
    ini.send(
        P.LogoutRequest(
            immediate=True,
            reason=1,
            itt=ini.next_itt(),
            cid=9,
            cmdsn=ini.cmdsn,
            expstatsn=ini.expstatsn,
        )
    )
    assert ini.recv().response == LogoutResponseCode.CID_NOT_FOUND
    assert ini.logout(reason=1).response == LogoutResponseCode.SUCCESS
    assert ini.closed_by_target()


def test_async_logout_request_and_drop(connect, server):
    ini = connect()
    assert ini.login().status == 0
    session = server.find_session(ini.name, DISK)
    server.request_logout(session, time_to_logout=3)
    msg = ini.recv()
    assert isinstance(msg, P.AsyncMessage) and msg.async_event == AsyncEvent.LOGOUT_REQUESTED
    assert msg.parameter3 == 3
    server.drop_session(session)
    msg = ini.recv()
    assert isinstance(msg, P.AsyncMessage) and msg.async_event == AsyncEvent.SESSION_DROP
    assert ini.closed_by_target()


# ---------------------------------------------------------------------------- robustness


def test_malformed_pdus_do_not_hurt_other_connections(connect):
    good = connect()
    assert good.login().status == 0
    good.clear_ua()
    bad = connect(name=INITIATOR_2, isid=0x400001000002)
    assert bad.login().status == 0
    # Unknown opcode: Reject (command not supported), connection stays.
    bad.send(P.UnknownPDU(opcode=0x1C, bhs=bytes([0x1C]) + bytes(47)), strict=False)
    rej = bad.recv()
    assert isinstance(rej, P.Reject) and rej.reason == RejectReason.COMMAND_NOT_SUPPORTED
    # Garbage framing: a header claiming 16 MiB of data is refused without buffering it.
    bad.send(
        P.NopOut(immediate=True, itt=1, ttt=NONE_TAG),
        strict=False,
        tamper=P.Tamper(data_segment_length=0xFFFFFF),
    )
    rej = bad.recv()
    assert isinstance(rej, P.Reject) and rej.reason == RejectReason.PROTOCOL_ERROR
    assert bad.closed_by_target()
    status, _, _ = good.scsi(bytes(6))
    assert status.status == 0


def test_garbage_during_login_and_random_bytes(connect, server):
    for seed in range(5):
        ini = connect(isid=0x400001000100 + seed)
        ini.send_raw(os.urandom(200 + seed * 97))
        ini.closed_by_target(timeout=1.0)
    ok = connect()
    assert ok.login().status == 0


def test_memory_bound_declared_length(connect, server):
    ini = connect()
    assert ini.login(SMALL).status == 0
    # We declared 4096: a Data-Out header announcing 1 MiB is rejected at the header.
    ini.send(
        P.ScsiDataOut(final=True, itt=5, ttt=NONE_TAG, datasn=0),
        strict=False,
        tamper=P.Tamper(data_segment_length=1 << 20),
    )
    rej = ini.recv()
    assert isinstance(rej, P.Reject)
    assert ini.closed_by_target()
    conns = server.call(lambda: [c.decoder.buffered for c in server.engine.connections])
    assert all(b < 65536 for b in conns)


def test_malformed_initiator_name_and_repeated_key_refused(connect):
    bad = connect(name="iqn.2024-13.org.example:x")
    assert bad.login().status == LoginStatus.INITIATOR_ERROR
    ini = connect()
    ini.send(
        P.LoginRequest(
            transit=True,
            csg=1,
            nsg=3,
            isid=1,
            itt=1,
            data=T.format_pairs(
                [
                    ("InitiatorName", ini.name),
                    ("TargetName", DISK),
                    ("MaxBurstLength", "8192"),
                    ("MaxBurstLength", "8192"),
                ]
            ),
        )
    )
    assert ini.recv().status == LoginStatus.INITIATOR_ERROR


def test_out_of_range_offer_answered_reject(connect):
    ini = connect()
    rsp = ini.login(params=[("MaxBurstLength", "16777216")])
    assert rsp.status == 0 and ini.negotiated["MaxBurstLength"] == "Reject"


def test_unmapped_lun_inquiry_and_request_sense(connect):
    ini = connect()
    assert ini.login().status == 0
    status, data, _ = ini.scsi(bytes([0x12, 0, 0, 0, 96, 0]), lun=9, read=96)
    assert status.status == 0 and data[0] == 0x7F
    status, data, _ = ini.scsi(bytes([0x03, 0, 0, 0, 252, 0]), lun=9, read=252)
    assert status.status == 0 and data[2] & 0x0F == 0x05 and data[12] == 0x25


def test_text_continuation_and_ffp_mrdsl(connect):
    ini = connect()
    assert ini.login().status == 0
    ini.clear_ua()
    text = T.format_pairs([("MaxRecvDataSegmentLength", "512")])
    itt = ini.next_itt()
    ini.send(
        P.TextRequest(
            immediate=True,
            cont=True,
            itt=itt,
            ttt=NONE_TAG,
            cmdsn=ini.cmdsn,
            expstatsn=ini.expstatsn,
            data=text[:10],
        )
    )
    first = ini.recv()
    assert isinstance(first, P.TextResponse) and not first.final and not first.data
    assert first.ttt != NONE_TAG
    ini.send(
        P.TextRequest(
            immediate=True,
            final=True,
            itt=itt,
            ttt=first.ttt,
            cmdsn=ini.cmdsn,
            expstatsn=ini.expstatsn,
            data=text[10:],
        )
    )
    done = ini.recv()
    assert isinstance(done, P.TextResponse) and done.final
    _, data, seen = ini.scsi(read16(0, 8), read=4096)
    assert len(data) == 4096
    assert all(len(p.data) <= 512 for p in seen if isinstance(p, P.ScsiDataIn))
    ini.send(
        P.TextRequest(
            immediate=True,
            final=True,
            cont=True,
            itt=ini.next_itt(),
            ttt=NONE_TAG,
            cmdsn=ini.cmdsn,
            expstatsn=ini.expstatsn,
            data=b"A=1\0",
        ),
        strict=False,
    )
    assert isinstance(ini.recv(), P.Reject)
