"""Asynchronous Messages the reference target sends of its own accord (RFC 7143 11.9,
11.9.1, 11.9.3, 11.9.4), asked of a dedicated instance through its test API."""

from __future__ import annotations

import dataclasses
from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.serial import add_mod as sn_add
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.target.connection import Connection
from iscsi_conformance.target.engine import TargetEngine


@mutant(
    "Control.Async.LogoutRequestOnEveryConnection",
    "control",
    "a logout request for one connection goes out on every connection of the session "
    "(11.9.1: it MUST be sent on the connection to be logged out)",
    catches=["FullFeature.Async.LogoutRequest"],
)
def logout_everywhere(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def request_logout(self: TargetEngine, session: Any, **kw: Any) -> None:
            kw.pop("cid", None)
            old(self, session, **kw)

        return request_logout

    p.wrap(TargetEngine, "request_logout", make)


@mutant(
    "Control.Async.ScsiEventLunReserved",
    "control",
    "a SCSI asynchronous event leaves its LUN field 0 (11.9.3: the LUN MUST be valid "
    "for AsyncEvent 0)",
    catches=["FullFeature.Async.ScsiEvent"],
)
def scsi_event_without_lun(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def send_async(self: Connection, event: int, **kw: Any) -> None:
            if event == 0:
                kw["lun"] = 0
            old(self, event, **kw)

        return send_async

    p.wrap(Connection, "send_async", make)


@mutant(
    "Control.Async.StatSNNotCounted",
    "control",
    "an Async Message repeats the StatSN of the PDU before it instead of counting one "
    "(11.9: StatSN counts it as an acknowledgeable event; no keyword, observed only)",
    catches=["FullFeature.Async.VendorEvent", "FullFeature.Async.Drop"],
)
def statsn_not_counted(p: Patcher) -> None:
    def fn(conn: Any, pdu: P.PDU, stream: Any) -> Any:
        if isinstance(pdu, P.AsyncMessage):
            return dataclasses.replace(pdu, statsn=sn_add(pdu.statsn, -1))
        return pdu

    p.rewrite_output(fn)


@mutant(
    "Control.Async.DropNamesWrongCid",
    "control",
    "a connection drop (AsyncEvent 2) names another CID in Parameter1 than the one dropped "
    "(11.9.1 defines the field; no keyword, observed only)",
    catches=["FullFeature.Async.Drop[connection]"],
)
def drop_without_cid(p: Patcher) -> None:
    def fn(conn: Any, pdu: P.PDU, stream: Any) -> Any:
        if isinstance(pdu, P.AsyncMessage) and pdu.async_event == 2:
            return dataclasses.replace(pdu, parameter1=(pdu.parameter1 + 1) & 0xFFFF)
        return pdu

    p.rewrite_output(fn)
