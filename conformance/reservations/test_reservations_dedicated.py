"""Persistent reservations that need a target of the test's own (SPC-4 5.13.5, 5.13.7):
a power cycle (APTPL), and a second target port (ALL_TG_PT). Each test runs on a
dedicated reference target instance (``target.dedicated()``, capability
``dedicated_instance``), which it restarts or gives two portal groups without touching
the run's shared target; the APTPL test also runs on a LIO target of its own when
ISCSI_CONFORMANCE_CLUSTER_HEAVY=1 (``target.power_cyclable()``); other targets skip,
their report saying which capability was missing."""

from __future__ import annotations

from typing import Any

import pytest

from iscsi_conformance.harness.probe import FullFeature, full_feature, random_isid
from iscsi_conformance.plugin import require, spec
from iscsi_conformance.scsi import cdb

GOOD, CONFLICT = 0x00, 0x18
REGISTER, RESERVE = 0, 1
READ_KEYS, READ_RESERVATION = 0, 1
WE = 1
KEY = 0xD0D0_0000_0000_0007


async def pr_out(ffp: FullFeature, sa: int, **kw: Any) -> Any:
    c, params = cdb.pr_out(sa, **kw)
    return await ffp.command(c, data_out=params, lun=0)


async def read_keys(ffp: FullFeature) -> tuple[list[int], Any]:
    out = await ffp.command(cdb.persistent_reserve_in(READ_KEYS, 1024), read_length=1024, lun=0)
    return (cdb.parse_pr_in_read_keys(out.data)[1] if out.status == GOOD else []), out


@spec(
    "Reservations.Persistent.AptplSurvivesPowerCycle",
    "SPC-4 5.13.5",
    requirements=["RSPC4-5.9-10"],
    needs=("persistent_reservations",),
)
async def test_aptpl_survives_power_cycle(target: Any) -> None:
    """A registration and a reservation made with APTPL=1 are there after the target is
    stopped and started again (a power cycle, its state directory kept): once the
    application client enables persist through power loss, the device server shall
    preserve them across any power cycle (SPC-4 5.13.5.1). On LIO (tox -e cluster) the
    power cycle is that of a logical unit of the test's own (``target.power_cyclable()``)."""
    isid = random_isid()
    with target.power_cyclable() as inst:
        async with full_feature(inst, isid=isid) as a:
            reg = await pr_out(a, REGISTER, sa_key=KEY, aptpl=True)
            if reg.status != GOOD:
                # PTPL_C is optional (SPC-4 6.16.3: APTPL unsupported is refused)
                pytest.skip(f"REGISTER with APTPL=1 refused (status {reg.status!r})")
            res = await pr_out(a, RESERVE, key=KEY, pr_type=WE)
            require(
                res.status == GOOD,
                "RSPC4-5.9-10",
                f"RESERVE by the registered nexus: status {res.status!r}",
                sent=res.sent,
                received=res.shown(),
            )
        inst.restart()
        async with full_feature(inst, isid=isid) as a:
            keys, rk = await read_keys(a)
            require(
                KEY in keys,
                "RSPC4-5.9-10",
                f"after a power cycle READ KEYS lists {list(map(hex, keys))}: the registration "
                "made with APTPL=1 is gone (SPC-4 5.13.5.1: with persist through power loss "
                "enabled the device server shall preserve every registration across any "
                "power cycle)",
                sent=rk.sent,
                received=rk.shown(),
            )
            rr = await a.command(
                cdb.persistent_reserve_in(READ_RESERVATION, 1024), read_length=1024, lun=0
            )
            held = cdb.parse_pr_in_read_reservation(rr.data) if rr.status == GOOD else None
            require(
                held is not None and held.key == KEY,
                "RSPC4-5.9-10",
                f"after a power cycle READ RESERVATION shows {held!r} (status {rr.status!r}): "
                "the reservation is not preserved (SPC-4 5.13.5.1)",
                sent=rr.sent,
                received=rr.shown(),
            )


@spec(
    "Reservations.Persistent.RegistrationPerTargetPort",
    "SPC-4 5.13.7",
    "SPC-4 5.13.5",
    requirements=["RSPC4-5.13.7-4"],
    needs=("persistent_reservations",),
)
async def test_registration_per_target_port(target: Any) -> None:
    """A REGISTER with ALL_TG_PT=0 registers the I_T nexus it came on, target port
    included (SPC-4 5.13.7 table 69): the same initiator port (name and ISID) through
    another target port (a second portal group) is unregistered, so its PERSISTENT
    RESERVE OUT RESERVE is completed with RESERVATION CONFLICT."""
    isid = random_isid()
    with target.power_cyclable(portal_groups=2) as inst:
        async with (
            full_feature(inst, isid=isid) as a,
            full_feature(inst, "port-2", isid=isid) as b,
        ):
            reg = await pr_out(a, REGISTER, sa_key=KEY, all_tg_pt=False)
            require(
                reg.status == GOOD,
                "RSPC4-5.13.7-4",
                f"REGISTER (ALL_TG_PT=0): status {reg.status!r}",
                sent=reg.sent,
                received=reg.shown(),
            )
            out = await pr_out(b, RESERVE, key=KEY, pr_type=WE)
            require(
                out.status == CONFLICT,
                "RSPC4-5.13.7-4",
                f"RESERVE through target port 2 with the key registered through port 1 with "
                f"ALL_TG_PT=0: status {out.status!r}, not RESERVATION CONFLICT (SPC-4 5.13.7: "
                "the registration applies to the I_T nexus it was received on; any PERSISTENT "
                "RESERVE OUT but REGISTER from an unregistered I_T nexus shall be completed "
                "with RESERVATION CONFLICT)",
                sent=out.sent,
                received=out.shown(),
            )
