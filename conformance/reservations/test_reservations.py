"""Reservations: SCSI-2 and persistent reservations as a cluster uses them (SPC-4 5.9,
6.15, 6.16; SPC-2 5.5). Two nodes are two I_T nexuses: the same reference initiator
with two ISIDs, or two initiator names. Every test clears what it registered."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from iscsi_conformance.core import pdu as P
from iscsi_conformance.harness.probe import FullFeature, full_feature, random_isid
from iscsi_conformance.harness.profiles import OTHER_INITIATOR_NAME, capability_satisfied
from iscsi_conformance.plugin import require, spec
from iscsi_conformance.scsi import cdb

BLOCK = 512
CONFLICT = 0x18
REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT = 0, 1, 2, 3, 4
READ_KEYS, READ_RESERVATION = 0, 1
WE, EA, WE_RO, EA_RO = 1, 3, 5, 6
PR_NEEDS = ("persistent_reservations",)


async def pr_out(
    ffp: FullFeature, lun: int, sa: int, *, key: int = 0, sa_key: int = 0, pr_type: int = 0
) -> Any:
    c, params = cdb.pr_out(sa, key=key, sa_key=sa_key, pr_type=pr_type)
    return await ffp.command(c, data_out=params, lun=lun)


async def read_keys(ffp: FullFeature, lun: int) -> tuple[int, list[int], Any]:
    out = await ffp.command(cdb.persistent_reserve_in(READ_KEYS, 1024), read_length=1024, lun=lun)
    gen, keys = cdb.parse_pr_in_read_keys(out.data) if out.status == 0 else (-1, [])
    return gen, keys, out


async def read_reservation(ffp: FullFeature, lun: int) -> tuple[Any, Any]:
    out = await ffp.command(
        cdb.persistent_reserve_in(READ_RESERVATION, 1024), read_length=1024, lun=lun
    )
    return (cdb.parse_pr_in_read_reservation(out.data) if out.status == 0 else None), out


@contextlib.asynccontextmanager
async def two_nodes(
    target: Any, *, other_name: bool = False, a_keys: Any = ()
) -> AsyncIterator[tuple[FullFeature, FullFeature]]:
    """Node A and node B: two sessions, two ISIDs (two I_T nexuses), or with ``other_name``
    two initiator names; ``a_keys`` are login keys for A. Clears PR state on exit.

    Where the target offers one (``dedicated_instance``: the reference target) the nodes
    log in to a target instance of this test alone, so that tests run side by side
    (``run -n 2``) never share a logical unit's reservations; its LUN is the one the
    tests address (``target.lun``)."""
    b_kw: dict[str, Any] = {"initiator_name": OTHER_INITIATOR_NAME} if other_name else {}
    with contextlib.ExitStack() as stack:
        if not target.external and capability_satisfied(target.manifest, "dedicated_instance"):
            lu = stack.enter_context(target.dedicated())
            assert lu.lun == target.lun, "the tests address target.lun"
        else:
            lu = target
        async with _logged_in(lu, b_kw, a_keys) as (a, b):
            yield a, b


@contextlib.asynccontextmanager
async def _logged_in(
    target: Any, b_kw: dict[str, Any], a_keys: Any
) -> AsyncIterator[tuple[FullFeature, FullFeature]]:
    async with (
        full_feature(target, isid=random_isid(), keys=a_keys) as a,
        full_feature(target, isid=random_isid(), **b_kw) as b,
    ):
        for node in (a, b):  # swallow the power-on unit attention of each nexus
            await node.command(cdb.test_unit_ready(), lun=target.lun)
        try:
            yield a, b
        finally:
            for node, key in ((a, KEY_A), (b, KEY_B)):
                await pr_out(node, target.lun, REGISTER, key=0, sa_key=key)  # ignore: may conflict
                out = await pr_out(node, target.lun, CLEAR, key=key)
                if out.status == 0:
                    break


KEY_A = 0xA0A0_0000_0000_0001
KEY_B = 0xB0B0_0000_0000_0002


async def registered(
    a: FullFeature, lun: int, pr_type: int | None = None, *, b: FullFeature | None = None
) -> None:
    """The two-node set-up most tests share: A registers KEY_A, B (if given) KEY_B, and
    A reserves ``pr_type`` if given. Statuses are not checked here: a test that depends
    on them reads the state back."""
    await pr_out(a, lun, REGISTER, sa_key=KEY_A)
    if b is not None:
        await pr_out(b, lun, REGISTER, sa_key=KEY_B)
    if pr_type is not None:
        await pr_out(a, lun, RESERVE, key=KEY_A, pr_type=pr_type)


@spec(
    "Reservations.Persistent.RegisterBumpsGeneration",
    "SPC-4 5.13.7",
    requirements=["RSPC4-5.9-1"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_register(target: Any) -> None:
    """REGISTER from an unregistered nexus adds its key and increments PRgeneration."""
    async with two_nodes(target) as (a, _b):
        gen0, _keys0, _ = await read_keys(a, target.lun)
        out = await pr_out(a, target.lun, REGISTER, sa_key=KEY_A)
        require(
            out.status == 0,
            "RSPC4-5.9-1",
            f"REGISTER status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        gen1, keys1, rk = await read_keys(a, target.lun)
        require(
            KEY_A in keys1,
            "RSPC4-5.9-1",
            f"READ KEYS {list(map(hex, keys1))} lacks the registered key",
            sent=rk.sent,
            received=rk.shown(),
        )
        require(
            gen1 == (gen0 + 1) & 0xFFFFFFFF,
            "RSPC4-5.9-1",
            f"PRgeneration {gen0} -> {gen1}",
            sent=rk.sent,
            received=rk.shown(),
        )


@spec(
    "Reservations.Persistent.RegisterWrongKey",
    "SPC-4 5.13.7",
    requirements=["RSPC4-5.9-2"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_register_wrong_key(target: Any) -> None:
    """Re-registering with a RESERVATION KEY that is not ours ends in RESERVATION CONFLICT."""
    async with two_nodes(target) as (a, _b):
        await pr_out(a, target.lun, REGISTER, sa_key=KEY_A)
        out = await pr_out(a, target.lun, REGISTER, key=KEY_A ^ 0xFF, sa_key=KEY_A + 1)
        require(
            out.status == CONFLICT,
            "RSPC4-5.9-2",
            f"REGISTER with a wrong key: status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )


@spec(
    "Reservations.Persistent.ReserveAndRead",
    "SPC-4 5.13.9",
    "SPC-4 6.15.3",
    requirements=["RSPC4-5.9-3"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_reserve_read_reservation(target: Any) -> None:
    """RESERVE (Write Exclusive) by a registrant shows in READ RESERVATION with key, scope and type."""
    async with two_nodes(target) as (a, _b):
        await pr_out(a, target.lun, REGISTER, sa_key=KEY_A)
        out = await pr_out(a, target.lun, RESERVE, key=KEY_A, pr_type=WE)
        require(
            out.status == 0,
            "RSPC4-5.9-3",
            f"RESERVE status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        info, rr = await read_reservation(a, target.lun)
        require(
            info is not None and info.key == KEY_A and info.pr_type == WE and info.scope == 0,
            "RSPC4-5.9-3",
            f"READ RESERVATION says {info!r}",
            sent=rr.sent,
            received=rr.shown(),
        )


@spec(
    "Reservations.Persistent.WriteExclusive",
    "SPC-4 5.13.1",
    requirements=["RSPC4-5.9-4"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_write_exclusive(target: Any) -> None:
    """Under Write Exclusive held by A, B's WRITE conflicts and B's READ succeeds."""
    async with two_nodes(target) as (a, b):
        await registered(a, target.lun, WE)
        w = await b.command(cdb.write10(100, 1), data_out=os.urandom(BLOCK), lun=target.lun)
        require(
            w.status == CONFLICT,
            "RSPC4-5.9-4",
            f"B's WRITE under A's Write Exclusive: status {w.status!r}",
            sent=w.sent,
            received=w.shown(),
        )
        r = await b.command(cdb.read10(100, 1), read_length=BLOCK, lun=target.lun)
        require(
            r.status == 0,
            "RSPC4-5.9-4",
            f"B's READ under Write Exclusive: status {r.status!r}",
            sent=r.sent,
            received=r.shown(),
            level="SHOULD",  # SPC-4 5.13.1: an allowed command should complete normally
        )


@spec(
    "Reservations.Persistent.ExclusiveAccess",
    "SPC-4 5.13.1",
    requirements=["RSPC4-5.9-5"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_exclusive_access(target: Any) -> None:
    """Under Exclusive Access held by A, B's READ conflicts; A's READ succeeds."""
    async with two_nodes(target) as (a, b):
        await registered(a, target.lun, EA)
        r = await b.command(cdb.read10(100, 1), read_length=BLOCK, lun=target.lun)
        require(
            r.status == CONFLICT,
            "RSPC4-5.9-5",
            f"B's READ under Exclusive Access: status {r.status!r}",
            sent=r.sent,
            received=r.shown(),
        )
        mine = await a.command(cdb.read10(100, 1), read_length=BLOCK, lun=target.lun)
        require(
            mine.status == 0,
            "RSPC4-5.9-5",
            f"the holder's READ: status {mine.status!r}",
            sent=mine.sent,
            received=mine.shown(),
            level="SHOULD",  # SPC-4 5.13.1: an allowed command should complete normally
        )


@spec(
    "Reservations.Persistent.RegistrantsOnly",
    "SPC-4 5.13.1",
    requirements=["RSPC4-5.9-6"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_registrants_only(target: Any) -> None:
    """Under Write Exclusive - Registrants Only, a registered B may write; unregistered it may not."""
    async with two_nodes(target) as (a, b):
        await registered(a, target.lun, WE_RO)
        w = await b.command(cdb.write10(101, 1), data_out=os.urandom(BLOCK), lun=target.lun)
        require(
            w.status == CONFLICT,
            "RSPC4-5.9-6",
            f"unregistered B's WRITE under WE-RO: {w.status!r}",
            sent=w.sent,
            received=w.shown(),
        )
        await pr_out(b, target.lun, REGISTER, sa_key=KEY_B)
        w2 = await b.command(cdb.write10(101, 1), data_out=os.urandom(BLOCK), lun=target.lun)
        require(
            w2.status == 0,
            "RSPC4-5.9-6",
            f"registered B's WRITE under WE-RO: {w2.status!r}",
            sent=w2.sent,
            received=w2.shown(),
            level="SHOULD",  # SPC-4 5.13.1: an allowed command should complete normally
        )


@spec(
    "Reservations.Persistent.PreemptFailover",
    "SPC-4 5.13.11.2.4",
    requirements=["RSPC4-5.9-7"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_preempt_failover(target: Any) -> None:
    """Cluster failover: B preempts A's key; the reservation moves to B and A's writes conflict."""
    async with two_nodes(target) as (a, b):
        await registered(a, target.lun, WE_RO, b=b)
        out = await pr_out(b, target.lun, PREEMPT, key=KEY_B, sa_key=KEY_A, pr_type=WE_RO)
        require(
            out.status == 0,
            "RSPC4-5.9-7",
            f"PREEMPT status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        info, rr = await read_reservation(b, target.lun)
        require(
            info is not None and info.key == KEY_B,
            "RSPC4-5.9-7",
            f"after PREEMPT the holder is {info!r}",
            sent=rr.sent,
            received=rr.shown(),
        )
        _gen, keys, rk = await read_keys(b, target.lun)
        require(
            KEY_A not in keys,
            "RSPC4-5.9-7",
            "the preempted key is still registered",
            sent=rk.sent,
            received=rk.shown(),
        )
        w = await a.command(cdb.write10(102, 1), data_out=os.urandom(BLOCK), lun=target.lun)
        if (
            w.status == 0x02 and w.sense_key == 0x06
        ):  # the preempted nexus first sees its unit attention
            w = await a.command(cdb.write10(102, 1), data_out=os.urandom(BLOCK), lun=target.lun)
        require(
            w.status == CONFLICT,
            "RSPC4-5.9-7",
            f"the preempted node's WRITE: {w.status!r}",
            sent=w.sent,
            received=w.shown(),
        )


@spec(
    "Reservations.Persistent.Release",
    "SPC-4 5.13.11.2.2",
    requirements=["RSPC4-5.9-8"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_release(target: Any) -> None:
    """RELEASE by the holder ends the reservation but keeps its registration."""
    async with two_nodes(target) as (a, _b):
        await registered(a, target.lun, WE)
        out = await pr_out(a, target.lun, RELEASE, key=KEY_A, pr_type=WE)
        require(
            out.status == 0,
            "RSPC4-5.9-8",
            f"RELEASE status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        info, rr = await read_reservation(a, target.lun)
        require(
            info is not None and info.pr_type is None,
            "RSPC4-5.9-8",
            f"still reserved: {info!r}",
            sent=rr.sent,
            received=rr.shown(),
        )
        _g, keys, rk = await read_keys(a, target.lun)
        require(
            KEY_A in keys,
            "RSPC4-5.9-8",
            "RELEASE removed the registration",
            sent=rk.sent,
            received=rk.shown(),
        )


@spec(
    "Reservations.Persistent.Clear",
    "SPC-4 5.13.11.2.7",
    requirements=["RSPC4-5.9-9"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_clear(target: Any) -> None:
    """CLEAR removes every registration and the reservation."""
    async with two_nodes(target) as (a, b):
        await registered(a, target.lun, EA_RO, b=b)
        out = await pr_out(a, target.lun, CLEAR, key=KEY_A)
        require(
            out.status == 0,
            "RSPC4-5.9-9",
            f"CLEAR status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        await a.command(cdb.test_unit_ready(), lun=target.lun)
        _g, keys, rk = await read_keys(a, target.lun)
        require(
            not keys,
            "RSPC4-5.9-9",
            f"keys left after CLEAR: {list(map(hex, keys))}",
            sent=rk.sent,
            received=rk.shown(),
        )
        info, rr = await read_reservation(a, target.lun)
        require(
            info is not None and info.pr_type is None,
            "RSPC4-5.9-9",
            f"a reservation left after CLEAR: {info!r}",
            sent=rr.sent,
            received=rr.shown(),
        )


@spec(
    "Reservations.Persistent.NexusIsPerIsid",
    "SPC-4 5.13.1",
    "RFC 7143 4.4",
    requirements=["RSPC4-5.9-11"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_nexus_per_isid(target: Any) -> None:
    """Two sessions of one initiator name with different ISIDs are different nexuses: only the registered one is."""
    async with two_nodes(target) as (a, b):
        await registered(a, target.lun, EA_RO)
        r = await b.command(cdb.read10(0, 1), read_length=BLOCK, lun=target.lun)
        require(
            r.status == CONFLICT,
            "RSPC4-5.9-11",
            f"the same initiator with another ISID was treated as registered (status {r.status!r})",
            sent=r.sent,
            received=r.shown(),
        )


@spec(
    "Reservations.Scsi2.ReserveRelease",
    "SPC-2 5.5.1",
    requirements=["RSPC2-5.5.1-1"],
    needs=("reservations_scsi2",),
    dataloss=True,
)
async def test_scsi2_reserve_release(target: Any) -> None:
    """SCSI-2 RESERVE(6) by A makes B's READ conflict; after RELEASE(6) B's READ succeeds."""
    async with two_nodes(target, other_name=True) as (a, b):
        res = await a.command(cdb.reserve6(), lun=target.lun)
        require(
            res.status == 0,
            "RSPC2-5.5.1-1",
            f"RESERVE(6) status {res.status!r}",
            sent=res.sent,
            received=res.shown(),
        )
        try:
            r = await b.command(cdb.read10(0, 1), read_length=BLOCK, lun=target.lun)
            require(
                r.status == CONFLICT,
                "RSPC2-5.5.1-1",
                f"another nexus read a reserved LU (status {r.status!r})",
                sent=r.sent,
                received=r.shown(),
            )
        finally:
            rel = await a.command(cdb.release6(), lun=target.lun)
        require(
            rel.status == 0,
            "RSPC2-5.5.1-1",
            f"RELEASE(6) status {rel.status!r}",
            sent=rel.sent,
            received=rel.shown(),
        )
        r2 = await b.command(cdb.read10(0, 1), read_length=BLOCK, lun=target.lun)
        require(
            r2.status == 0,
            "RSPC2-5.5.1-1",
            f"READ after RELEASE: {r2.status!r}",
            sent=r2.sent,
            received=r2.shown(),
        )


@spec(
    "Reservations.Scsi2.ReleaseByOther",
    "SPC-2 5.5.1",
    requirements=["RSPC2-5.5.1-3"],
    needs=("reservations_scsi2",),
    dataloss=True,
)
async def test_scsi2_release_by_other(target: Any) -> None:
    """A holds RESERVE(6); B's RELEASE(6) is no error: GOOD, and A's reservation stays (B's
    READ still conflicts). Only A's RELEASE frees the logical unit."""
    async with two_nodes(target, other_name=True) as (a, b):
        res = await a.command(cdb.reserve6(), lun=target.lun)
        require(
            res.status == 0,
            "RSPC2-5.5.1-1",
            f"A's RESERVE(6) status {res.status!r}",
            sent=res.sent,
            received=res.shown(),
        )
        try:
            rel = await b.command(cdb.release6(), lun=target.lun)
            require(
                rel.status == 0,
                "RSPC2-5.5.1-3",
                f"non-holder B's RELEASE(6) answered status {rel.status!r}, not GOOD",
                sent=rel.sent,
                received=rel.shown(),
            )
            r = await b.command(cdb.read10(0, 1), read_length=BLOCK, lun=target.lun)
            require(
                r.status == CONFLICT,
                "RSPC2-5.5.1-3",
                f"after non-holder B's RELEASE(6), B's READ got status {r.status!r}, not "
                "RESERVATION CONFLICT: B's RELEASE released A's reservation",
                sent=r.sent,
                received=r.shown(),
            )
        finally:
            await a.command(cdb.release6(), lun=target.lun)


@spec(
    "Reservations.Scsi2.ReserveWhileRegistered",
    "SPC-2 5.5.1",
    "SPC-4 5.13.3",
    requirements=["RSPC2-5.5.1-2"],
    needs=("reservations_scsi2", *PR_NEEDS),
    dataloss=True,
)
async def test_scsi2_reserve_while_registered(target: Any) -> None:
    """While nexus A is registered (no persistent reservation), RESERVE(6) from the unregistered
    nexus B ends in RESERVATION CONFLICT: SPC-4 5.13.3 excepts only the holder and registrants
    under a registrants-only or all-registrants type, and SPC-2 5.5.1 has every other RESERVE
    conflict while a registration exists."""
    async with two_nodes(target) as (a, b):
        await pr_out(a, target.lun, REGISTER, sa_key=KEY_A)
        res = await b.command(cdb.reserve6(), lun=target.lun)
        if res.status == 0:  # undo a wrongly granted reservation before two_nodes cleans up
            await pr_out(a, target.lun, CLEAR, key=KEY_A)
            await b.command(cdb.release6(), lun=target.lun)
        require(
            res.status == CONFLICT,
            "RSPC2-5.5.1-2",
            f"RESERVE(6) from an unregistered nexus while another is registered: status {res.status!r}",
            sent=res.sent,
            received=res.shown(),
        )


REGISTER_IGNORE = 6  # REGISTER AND IGNORE EXISTING KEY (SPC-4 6.16.2)
WE_AR, EA_AR = 7, 8  # the All Registrants types (SPC-4 6.15.3.4)


async def unregister(ffp: FullFeature, lun: int) -> None:
    """Drop whatever registration this nexus holds: REGISTER AND IGNORE EXISTING KEY with a
    zero service action key unregisters without naming the old key (SPC-4 5.13.7 table 68)."""
    await pr_out(ffp, lun, REGISTER_IGNORE, sa_key=0)


@spec(
    "Reservations.Persistent.RegisterUnregisteredWithKey",
    "SPC-4 5.13.7",
    requirements=["RSPC4-5.13.7-1"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_register_unregistered_with_key(target: Any) -> None:
    """REGISTER from an unregistered nexus with a non-zero RESERVATION KEY conflicts and registers nothing."""
    async with two_nodes(target) as (a, _b):
        out = await pr_out(a, target.lun, REGISTER, key=KEY_A, sa_key=KEY_A)
        try:
            require(
                out.status == CONFLICT,
                "RSPC4-5.13.7-1",
                f"REGISTER from an unregistered nexus with a non-zero key: status {out.status!r}",
                sent=out.sent,
                received=out.shown(),
            )
            _g, keys, rk = await read_keys(a, target.lun)
            require(
                KEY_A not in keys,
                "RSPC4-5.13.7-1",
                "the refused REGISTER registered the key",
                sent=rk.sent,
                received=rk.shown(),
            )
        finally:
            await unregister(a, target.lun)


@spec(
    "Reservations.Persistent.Unregister",
    "SPC-4 5.13.7",
    requirements=["RSPC4-5.13.7-2"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_unregister(target: Any) -> None:
    """REGISTER with the nexus's own key and a zero SERVICE ACTION RESERVATION KEY unregisters it."""
    async with two_nodes(target) as (a, _b):
        await pr_out(a, target.lun, REGISTER, sa_key=KEY_A)
        out = await pr_out(a, target.lun, REGISTER, key=KEY_A, sa_key=0)
        require(
            out.status == 0,
            "RSPC4-5.13.7-2",
            f"REGISTER with a zero service action key: status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        _g, keys, rk = await read_keys(a, target.lun)
        require(
            KEY_A not in keys,
            "RSPC4-5.13.7-2",
            f"the key is still registered after unregistering: {list(map(hex, keys))}",
            sent=rk.sent,
            received=rk.shown(),
        )


@spec(
    "Reservations.Persistent.RegisterIgnoreExistingKey",
    "SPC-4 5.13.7",
    requirements=["RSPC4-5.13.7-3"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_register_ignore_existing_key(target: Any) -> None:
    """REGISTER AND IGNORE EXISTING KEY replaces a registered nexus's key whatever RESERVATION KEY it carries."""
    async with two_nodes(target) as (a, _b):
        await pr_out(a, target.lun, REGISTER, sa_key=KEY_A)
        try:
            out = await pr_out(a, target.lun, REGISTER_IGNORE, key=KEY_A ^ 0xFF, sa_key=KEY_A + 1)
            require(
                out.status == 0,
                "RSPC4-5.13.7-3",
                f"REGISTER AND IGNORE EXISTING KEY with a stale key: status {out.status!r}",
                sent=out.sent,
                received=out.shown(),
            )
            _g, keys, rk = await read_keys(a, target.lun)
            require(
                KEY_A + 1 in keys and KEY_A not in keys,
                "RSPC4-5.13.7-3",
                f"keys after REGISTER AND IGNORE EXISTING KEY: {list(map(hex, keys))}",
                sent=rk.sent,
                received=rk.shown(),
            )
        finally:
            await unregister(a, target.lun)


async def _reserve_all_registrants(a: FullFeature, lun: int, pr_type: int) -> None:
    """A registers and reserves with an All Registrants type (7 or 8); a target that
    refuses the type with ILLEGAL REQUEST skips the test (the types are optional)."""
    await pr_out(a, lun, REGISTER, sa_key=KEY_A)
    res = await pr_out(a, lun, RESERVE, key=KEY_A, pr_type=pr_type)
    if res.status == 0x02 and res.sense_key == 0x05:
        pytest.skip(f"the target does not support reservation type {pr_type}: {res.asc!r}")
    require(
        res.status == 0,
        "RSPC4-5.13.1-1",
        f"RESERVE type {pr_type}: status {res.status!r}",
        sent=res.sent,
        received=res.shown(),
    )


@spec(
    "Reservations.Persistent.WriteExclusiveAllRegistrants",
    "SPC-4 5.13.1",
    requirements=["RSPC4-5.13.1-1"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_write_exclusive_all_registrants(target: Any) -> None:
    """Under Write Exclusive - All Registrants, an unregistered nexus's WRITE conflicts."""
    async with two_nodes(target) as (a, b):
        await _reserve_all_registrants(a, target.lun, WE_AR)
        w = await b.command(cdb.write10(103, 1), data_out=os.urandom(BLOCK), lun=target.lun)
        require(
            w.status == CONFLICT,
            "RSPC4-5.13.1-1",
            f"unregistered B's WRITE under Write Exclusive - All Registrants: {w.status!r}",
            sent=w.sent,
            received=w.shown(),
        )


@spec(
    "Reservations.Persistent.ExclusiveAccessAllRegistrants",
    "SPC-4 5.13.1",
    requirements=["RSPC4-5.13.1-1"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_exclusive_access_all_registrants(target: Any) -> None:
    """Under Exclusive Access - All Registrants, an unregistered nexus's READ conflicts."""
    async with two_nodes(target) as (a, b):
        await _reserve_all_registrants(a, target.lun, EA_AR)
        r = await b.command(cdb.read10(103, 1), read_length=BLOCK, lun=target.lun)
        require(
            r.status == CONFLICT,
            "RSPC4-5.13.1-1",
            f"unregistered B's READ under Exclusive Access - All Registrants: {r.status!r}",
            sent=r.sent,
            received=r.shown(),
        )


async def unit_attentions(ffp: FullFeature, lun: int, tries: int = 4) -> tuple[list[Any], Any]:
    """TEST UNIT READY until no UNIT ATTENTION: the (ASC, ASCQ) pairs reported, and the last answer."""
    seen: list[Any] = []
    out = None
    for _ in range(tries):
        out = await ffp.command(cdb.test_unit_ready(), lun=lun)
        if not (out.status == 0x02 and out.sense_key == 0x06):
            break
        seen.append(out.asc)
    return seen, out


RESERVATIONS_RELEASED = (0x2A, 0x04)
REGISTRATIONS_PREEMPTED = (0x2A, 0x05)


@spec(
    "Reservations.Persistent.ReserveWhileHeld",
    "SPC-4 5.13.9",
    requirements=["RSPC4-5.13.9-1"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_reserve_while_held(target: Any) -> None:
    """A registered B's RESERVE while A holds the reservation conflicts; A stays the holder."""
    async with two_nodes(target) as (a, b):
        await registered(a, target.lun, WE, b=b)
        out = await pr_out(b, target.lun, RESERVE, key=KEY_B, pr_type=WE)
        require(
            out.status == CONFLICT,
            "RSPC4-5.13.9-1",
            f"B's RESERVE while A holds the reservation: status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        info, rr = await read_reservation(a, target.lun)
        require(
            info is not None and info.key == KEY_A,
            "RSPC4-5.13.9-1",
            f"after B's refused RESERVE the reservation is {info!r}",
            sent=rr.sent,
            received=rr.shown(),
        )


@spec(
    "Reservations.Persistent.ReleaseWrongType",
    "SPC-4 5.13.11.2.2",
    requirements=["RSPC4-5.13.11.2.2-1"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_release_wrong_type(target: Any) -> None:
    """The holder's RELEASE naming another type ends in INVALID RELEASE OF PERSISTENT RESERVATION; the reservation stays."""
    async with two_nodes(target) as (a, _b):
        await registered(a, target.lun, WE)
        out = await pr_out(a, target.lun, RELEASE, key=KEY_A, pr_type=EA)
        require(
            out.status == 0x02 and out.sense_key == 0x05 and out.asc == (0x26, 0x04),
            "RSPC4-5.13.11.2.2-1",
            f"RELEASE with the wrong type: status {out.status!r}, sense key {out.sense_key!r}, "
            f"ASC/ASCQ {out.asc!r} (expected CHECK CONDITION, ILLEGAL REQUEST, 26h/04h)",
            sent=out.sent,
            received=out.shown(),
        )
        info, rr = await read_reservation(a, target.lun)
        require(
            info is not None and info.key == KEY_A and info.pr_type == WE,
            "RSPC4-5.13.11.2.2-1",
            f"after the refused RELEASE the reservation is {info!r}",
            sent=rr.sent,
            received=rr.shown(),
        )


@spec(
    "Reservations.Persistent.ReleaseUnitAttention",
    "SPC-4 5.13.11.2.2",
    requirements=["RSPC4-5.13.11.2.2-2"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_release_unit_attention(target: Any) -> None:
    """Releasing a Registrants Only reservation gives the other registered nexus RESERVATIONS RELEASED."""
    async with two_nodes(target) as (a, b):
        await registered(a, target.lun, WE_RO, b=b)
        out = await pr_out(a, target.lun, RELEASE, key=KEY_A, pr_type=WE_RO)
        require(
            out.status == 0,
            "RSPC4-5.13.11.2.2-2",
            f"RELEASE of the WE-RO reservation: status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        seen, last = await unit_attentions(b, target.lun)
        require(
            RESERVATIONS_RELEASED in seen,
            "RSPC4-5.13.11.2.2-2",
            f"B's unit attentions after the release: {seen!r} (expected 2Ah/04h)",
            sent=last.sent,
            received=last.shown(),
        )


@spec(
    "Reservations.Persistent.PreemptUnitAttention",
    "SPC-4 5.13.11.2.4",
    requirements=["RSPC4-5.9-7"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_preempt_unit_attention(target: Any) -> None:
    """The nexus whose registration is preempted sees REGISTRATIONS PREEMPTED."""
    async with two_nodes(target, other_name=True) as (a, b):
        await registered(a, target.lun, WE_RO, b=b)
        out = await pr_out(b, target.lun, PREEMPT, key=KEY_B, sa_key=KEY_A, pr_type=WE_RO)
        require(
            out.status == 0,
            "RSPC4-5.9-7",
            f"PREEMPT status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        seen, last = await unit_attentions(a, target.lun)
        require(
            REGISTRATIONS_PREEMPTED in seen,
            "RSPC4-5.9-7",
            f"the preempted nexus's unit attentions: {seen!r} (expected 2Ah/05h)",
            sent=last.sent,
            received=last.shown(),
        )


READ_FULL_STATUS = 3


@spec(
    "Reservations.Persistent.GenerationAgrees",
    "SPC-4 5.13.6.2",
    "SPC-4 5.13.6.3",
    requirements=["RSPC4-5.13.6-1"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_generation_agrees(target: Any) -> None:
    """READ KEYS and READ RESERVATION, with no PERSISTENT RESERVE OUT between them, report the same PRgeneration."""
    async with two_nodes(target) as (a, b):
        await registered(a, target.lun, b=b)
        gen_keys, _keys, rk = await read_keys(a, target.lun)
        info, rr = await read_reservation(a, target.lun)
        require(
            info is not None and gen_keys == info.generation,
            "RSPC4-5.13.6-1",
            f"READ KEYS reports PRgeneration {gen_keys}, READ RESERVATION "
            f"{info.generation if info is not None else None}",
            sent=rk.sent + rr.sent,
            received=rk.shown() + rr.shown(),
        )


@spec(
    "Reservations.Persistent.ReadFullStatusHolder",
    "SPC-4 5.13.6.4",
    requirements=["RSPC4-5.13.6-2"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_read_full_status_holder(target: Any) -> None:
    """READ FULL STATUS marks the holder's registration R_HOLDER with the reservation's type, and not the other registrant's."""
    async with two_nodes(target) as (a, b):
        await registered(a, target.lun, WE, b=b)
        out = await a.command(
            cdb.persistent_reserve_in(READ_FULL_STATUS, 4096), read_length=4096, lun=target.lun
        )
        if out.status == 0x02 and out.sense_key == 0x05:
            pytest.skip(f"the target does not support READ FULL STATUS: {out.asc!r}")
        require(
            out.status == 0 and len(out.data) >= 8,
            "RSPC4-5.13.6-2",
            f"READ FULL STATUS: status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        _gen, descs = cdb.parse_read_full_status(out.data)
        holder = [d for d in descs if d.key == KEY_A]
        other = [d for d in descs if d.key == KEY_B]
        require(
            bool(holder)
            and all(d.r_holder and d.pr_type == WE for d in holder)
            and bool(other)
            and not any(d.r_holder for d in other),
            "RSPC4-5.13.6-2",
            f"READ FULL STATUS descriptors: {descs!r} (A {KEY_A:#x} holds Write Exclusive)",
            sent=out.sent,
            received=out.shown(),
        )


REGISTER_AND_MOVE = 7  # SPC-4 6.16.2


async def relative_target_port(ffp: FullFeature, lun: int) -> int | None:
    """The RELATIVE TARGET PORT IDENTIFIER of this nexus's target port: the relative
    target port designator (type 4h, association 01b) of VPD page 83h."""
    out = await ffp.command(cdb.inquiry(evpd=True, page=0x83), read_length=255, lun=lun)
    if out.status != 0:
        return None
    for d in cdb.parse_vpd_83(out.data):
        if d.designator_type == 4 and d.association == 1 and len(d.designator) >= 4:
            return int.from_bytes(d.designator[2:4], "big")
    return None


@spec(
    "Reservations.Persistent.RegisterAndMove",
    "SPC-4 5.13.8",
    requirements=["RSPC4-5.13.8-1"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_register_and_move(target: Any) -> None:
    """A holds a Write Exclusive reservation and sends REGISTER AND MOVE naming B's
    initiator port (iSCSI TransportID with B's ISID) and the target port: B becomes
    the holder under B's new key, same type. Skipped where the service action is
    refused with ILLEGAL REQUEST or no relative target port designator is reported."""
    async with two_nodes(target) as (a, b):
        rtp = await relative_target_port(a, target.lun)
        if rtp is None:
            pytest.skip("VPD page 83h reports no relative target port designator")
        await registered(a, target.lun, WE)
        port = f"{b.probe.initiator_name},i,0x{b.probe.isid:012x}"
        params = cdb.register_and_move_parameters(KEY_A, KEY_B, rtp, port)
        c = cdb.persistent_reserve_out(REGISTER_AND_MOVE, 0, WE, len(params))
        out = await a.command(c, data_out=params, lun=target.lun)
        if out.status == 0x02 and out.sense_key == 0x05:
            pytest.skip(f"the target refuses REGISTER AND MOVE: {out.asc!r}")
        require(
            out.status == 0,
            "RSPC4-5.13.8-1",
            f"REGISTER AND MOVE by the holder: status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        info, rr = await read_reservation(b, target.lun)
        require(
            info is not None and info.key == KEY_B and info.pr_type == WE,
            "RSPC4-5.13.8-1",
            f"after REGISTER AND MOVE to B the reservation is {info!r}, expected B's key "
            f"{KEY_B:#x} with type {WE}",
            sent=out.sent + rr.sent,
            received=out.shown() + rr.shown(),
        )


PREEMPT_AND_ABORT = 5
TASK_ABORTED = 0x40
HELD_LBA = 2040  # read first and written back unchanged, whether or not the WRITE runs;
# inside the 1 MiB LU of a dedicated instance
HELD_KEYS = [("ImmediateData", "No"), ("InitialR2T", "Yes")]


@spec(
    "Reservations.Persistent.PreemptAndAbortAbortsTasks",
    "SPC-4 5.13.11.2.6",
    "SPC-4 5.13.11.2.4",
    requirements=["RSPC4-5.13.11.2.6-1"],
    needs=PR_NEEDS,
    dataloss=True,
)
async def test_preempt_and_abort_aborts_tasks(target: Any) -> None:
    """Holder A's one-block WRITE waits for its Data-Out after the R2T when B's PREEMPT AND
    ABORT takes A's key; A then sends the Data-Out the R2T asked for (the block's own
    contents). The WRITE was aborted: it ends with no status (TAS zero) or TASK ABORTED
    (TAS one), never with a completion status such as GOOD or RESERVATION CONFLICT."""
    lun = target.lun
    async with two_nodes(target, other_name=True, a_keys=HELD_KEYS) as (a, b):
        before = await a.command(cdb.read10(HELD_LBA, 1), read_length=BLOCK, lun=lun)
        block = before.data if before.status == 0 and len(before.data) == BLOCK else None
        require(
            block is not None,
            "RSPC4-5.13.11.2.6-1",
            f"READ(10) of LBA {HELD_LBA}: status {before.status!r}, {len(before.data)} bytes",
            sent=before.sent,
            received=before.shown(),
        )
        assert block is not None
        for node, key, what in ((a, KEY_A, "A's REGISTER"), (b, KEY_B, "B's REGISTER")):
            reg = await pr_out(node, lun, REGISTER, sa_key=key)
            require(
                reg.status == 0,
                "RSPC4-5.13.11.2.6-1",
                f"{what}: status {reg.status!r}",
                sent=reg.sent,
                received=reg.shown(),
            )
        res = await pr_out(a, lun, RESERVE, key=KEY_A, pr_type=WE)
        require(
            res.status == 0,
            "RSPC4-5.13.11.2.6-1",
            f"A's RESERVE (Write Exclusive): status {res.status!r}",
            sent=res.sent,
            received=res.shown(),
        )
        cmd, r2t, got = await a.hold_write(lun, cdb.write10(HELD_LBA, 1), BLOCK)
        if r2t is None:
            pytest.skip(
                "a one-block WRITE with ImmediateData=No and InitialR2T=Yes got no R2T: "
                "no task is held open to preempt"
            )
        # B's PREEMPT AND ABORT runs beside A's connection: a target that waits for the
        # aborted WRITE's Data-Out before completing it gets that Data-Out meanwhile.
        preempt = asyncio.create_task(
            pr_out(b, lun, PREEMPT_AND_ABORT, key=KEY_B, sa_key=KEY_A, pr_type=WE)
        )
        await asyncio.wait({preempt}, timeout=0.5)
        data_out = await a.answer_r2t(cmd, r2t, block)
        out = await preempt
        if out.status == 0x02 and out.sense_key == 0x05:
            await a.drain(1.0)  # the WRITE goes on: take its answer off A's connection
            pytest.skip(
                f"PREEMPT AND ABORT refused with ILLEGAL REQUEST {out.asc!r}: the service "
                "action is not supported (SPC-4 6.16.2 does not make it mandatory)"
            )
        require(
            out.status == 0,
            "RSPC4-5.13.11.2.6-1",
            f"PREEMPT AND ABORT of the holder's key: status {out.status!r}",
            sent=out.sent,
            received=out.shown(),
        )
        later = await a.drain(1.5)
        statuses = [
            p.status
            for p in later
            if getattr(p, "itt", None) == cmd.itt
            and (
                isinstance(p, P.ScsiResponse) or (isinstance(p, P.ScsiDataIn) and p.status_present)
            )
        ]
        require(
            all(st == TASK_ABORTED for st in statuses),
            "RSPC4-5.13.11.2.6-1",
            f"the preempted nexus's WRITE, held open when PREEMPT AND ABORT arrived, then "
            f"completed with status {statuses[0] if statuses else None!r}: it was not aborted "
            "(only no status, or TASK ABORTED 40h with TAS one, may follow)",
            sent=[cmd, *data_out],
            received=[*got, *later],
        )
