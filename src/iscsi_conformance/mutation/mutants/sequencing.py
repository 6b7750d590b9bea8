"""Sequence numbers: StatSN, ExpCmdSN, MaxCmdSN and the CmdSN window (RFC 7143 4.2.2)."""

from __future__ import annotations

from typing import Any

from iscsi_conformance.core import pdu as P
from iscsi_conformance.core.login.target import TargetLogin
from iscsi_conformance.core.serial import add_mod, le, lt
from iscsi_conformance.mutation.mutants._helpers import fields, full_feature
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant
from iscsi_conformance.target.connection import Connection
from iscsi_conformance.target.task import TaskIO

_STATUS = (P.ScsiResponse, P.NopIn, P.TextResponse, P.LogoutResponse, P.TaskManagementResponse)


@mutant(
    "Sequencing.StatSN.NotIncremented",
    "sequencing",
    "StatSN is not advanced after a status: every response carries the same StatSN (4.2.2.2)",
    catches=["FullFeature.Sequencing.StatSNIncrements"],
)
def statsn_frozen(p: Patcher) -> None:
    p.wrap(Connection, "next_statsn", lambda old: lambda self: self.statsn)


@mutant(
    "Sequencing.StatSN.SkipsOne",
    "sequencing",
    "StatSN advances by two for each status (4.2.2.2: by one)",
    # the Wire option variant proves that its aggregate of the bridge's rules can fail
    catches=[
        "FullFeature.Sequencing.StatSNIncrements",
        "Login.Wire.OptionErrorRecoveryLevel1.Target",
    ],
)
def statsn_skips(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def next_statsn(self: Connection) -> int:
            sn = old(self)
            self.statsn = add_mod(self.statsn, 1)
            return int(sn)

        return next_statsn

    p.wrap(Connection, "next_statsn", make)


@mutant(
    "Sequencing.StatSN.SessionWide",
    "sequencing",
    "StatSN is counted per session, shared by its connections (4.2.2.2: per connection)",
    catches=["Login.Connections.StatSNPerConnection"],
)
def statsn_session(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def next_statsn(self: Connection) -> int:
            s = self.session
            if s is None:
                return int(old(self))
            sn = getattr(s, "_mutant_statsn", self.statsn)
            s._mutant_statsn = add_mod(sn, 1)  # type: ignore[attr-defined]
            self.statsn = s._mutant_statsn  # type: ignore[attr-defined]
            return int(sn)

        return next_statsn

    p.wrap(Connection, "next_statsn", make)


@mutant(
    "Sequencing.StatSN.FirstNotAfterLogin",
    "sequencing",
    "the first full-feature StatSN is not the final Login Response's plus one (4.2.2.2, 11.13.4)",
    catches=["FullFeature.Sequencing.StatSNIncrements", "FullFeature.Nop.PingEchoed"],
)
def statsn_first(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def enter(self: Connection, session: Any, params: Any, statsn: int) -> None:
            old(self, session, params, add_mod(statsn, 7))

        return enter

    p.wrap(Connection, "enter_full_feature", make)


@mutant(
    "Sequencing.StatSN.LoginNotIncremented",
    "sequencing",
    "the Login Responses of one login all carry the same StatSN (11.13.4)",
    catches=["Login.Session"],
)
def login_statsn(p: Patcher) -> None:
    def post(self: TargetLogin, *args: Any, **kwargs: Any) -> None:
        self.statsn = add_mod(self.statsn, -1)

    p.after(TargetLogin, "_respond", post)


@mutant(
    "Sequencing.StatSN.R2TAdvances",
    "sequencing",
    "an R2T advances StatSN although it carries no status (11.8.3: StatSN not advanced)",
    catches=["FullFeature.Sequencing.StatSNIncrements", "FullFeature.DataOut.R2TSequencing"],
    suites=("FullFeature.DataOut",),
)
def r2t_statsn(p: Patcher) -> None:
    def post(self: TaskIO, *args: Any) -> None:
        self.next_statsn()

    p.after(TaskIO, "_send_r2t", post)


@mutant(
    "Sequencing.ExpCmdSN.LagsInScsiResponse",
    "sequencing",
    "SCSI Responses report an ExpCmdSN one below the session's (4.2.2.1)",
    catches=["FullFeature.Sequencing.ExpCmdSNAdvances"],
)
def expcmdsn_lags(p: Patcher) -> None:
    fields(p, P.ScsiResponse, expcmdsn=lambda pdu: add_mod(pdu.expcmdsn, -1))


@mutant(
    "Sequencing.ExpCmdSN.AheadInNopIn",
    "sequencing",
    "NOP-In PDUs report an ExpCmdSN one above the session's (4.2.2.1)",
    catches=["FullFeature.Nop.PingEchoed", "FullFeature.Sequencing.ExpCmdSNAdvances"],
)
def expcmdsn_nop(p: Patcher) -> None:
    fields(p, P.NopIn, expcmdsn=lambda pdu: add_mod(pdu.expcmdsn, 1))


@mutant(
    "Sequencing.ExpCmdSN.ImmediateAdvances",
    "sequencing",
    "an immediate command advances ExpCmdSN (3.2.2.1: immediate commands do not)",
    catches=["FullFeature.Sequencing.ExpCmdSNAdvances"],
)
def immediate_advances(p: Patcher) -> None:
    def post(self: TaskIO, pdu: P.ScsiCommand, now: float) -> None:
        s = self.session
        if s is not None and pdu.immediate and s.session_type.value == "Normal":
            s.expcmdsn = add_mod(s.expcmdsn, 1)

    p.after(TaskIO, "on_scsi_command", post)


@mutant(
    "Sequencing.MaxCmdSN.WindowClosed",
    "sequencing",
    "responses announce MaxCmdSN = ExpCmdSN - 2, a window that never opens (4.2.2.1)",
    catches=["FullFeature.Sequencing", "FullFeature.Scsi"],
)
def window_closed(p: Patcher) -> None:
    for cls in _STATUS:
        fields(p, cls, maxcmdsn=lambda pdu: add_mod(pdu.expcmdsn, -2))


@mutant(
    "Sequencing.MaxCmdSN.LoginWindowClosed",
    "sequencing",
    "the final Login Response announces MaxCmdSN = ExpCmdSN - 1 (a zero window) (4.2.2.1)",
    catches=["Login.Session", "FullFeature.Sequencing"],
)
def login_window(p: Patcher) -> None:
    fields(
        p,
        P.LoginResponse,
        lambda pdu: pdu.transit and pdu.nsg == 3,
        maxcmdsn=lambda pdu: add_mod(pdu.expcmdsn, -1),
    )


@mutant(
    "Sequencing.Window.OutsideExecuted",
    "sequencing",
    "a command with a CmdSN outside [ExpCmdSN, MaxCmdSN] is executed (4.2.2.1: ignored)",
    catches=["FullFeature.Sequencing.OutOfWindowIgnored"],
)
def outside_executed(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def order(self: Connection, pdu: Any, run: Any) -> None:
            s = self.session
            if s is not None and not pdu.immediate:
                sn = pdu.cmdsn
                if sn != s.expcmdsn and not (lt(s.expcmdsn, sn) and le(sn, s.maxcmdsn)):
                    run(pdu)
                    return
            old(self, pdu, run)

        return order

    p.wrap(Connection, "_order", make)


@mutant(
    "Sequencing.Window.ClosedRunsScsiCommand",
    "sequencing",
    "a SCSI command at ExpCmdSN runs although the window is closed (MaxCmdSN = ExpCmdSN "
    "- 1; 4.2.2.1: ignored), the reference target's bug before issue 16",
    catches=["FullFeature.Sequencing.WindowClosedThenReopened"],
)
def closed_runs_scsi(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def on_scsi_command(self: TaskIO, pdu: P.ScsiCommand, now: float) -> None:
            s = self.session
            if (
                s is not None
                and s.target is not None
                and not pdu.immediate
                and pdu.cmdsn == s.expcmdsn
                and not le(pdu.cmdsn, s.maxcmdsn)
            ):
                s.expcmdsn = add_mod(pdu.cmdsn, 1)
                self._create_task(pdu, deliver=True)
                return
            old(self, pdu, now)

        return on_scsi_command

    p.wrap(TaskIO, "on_scsi_command", make)


@mutant(
    "Sequencing.Window.AheadExecutedAtOnce",
    "sequencing",
    "a command ahead of ExpCmdSN runs at once instead of in CmdSN order (3.2.2.1)",
    catches=["FullFeature.Sequencing.DeliveredInCmdSNOrder"],
)
def ahead_executed(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def order(self: Connection, pdu: Any, run: Any) -> None:
            s = self.session
            if s is not None and not pdu.immediate:
                sn = pdu.cmdsn
                if lt(s.expcmdsn, sn) and le(sn, s.maxcmdsn):
                    if isinstance(pdu, P.ScsiCommand):
                        self._create_task(pdu, deliver=True)
                    else:
                        run(pdu)
                    return
            old(self, pdu, run)

        return order

    p.wrap(Connection, "_order", make)


@mutant(
    "Sequencing.CmdSN.PerConnection",
    "sequencing",
    "each connection keeps its own ExpCmdSN instead of the session's one numbering (3.2.2.1)",
    catches=["Login.Connections.CmdSNSessionWide"],
)
def cmdsn_per_connection(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def enter(self: Connection, session: Any, params: Any, statsn: int) -> None:
            old(self, session, params, statsn)
            if len(session.connections) > 1:
                session.expcmdsn = add_mod(session.expcmdsn, 5)

        return enter

    p.wrap(Connection, "enter_full_feature", make)


@mutant(
    "Sequencing.Reject.StatSNNotAdvanced",
    "sequencing",
    "a Reject carries the StatSN of the next status without consuming it (11.17: StatSN advances)",
    catches=["FullFeature.Reject", "FullFeature.Sequencing"],
    suites=("FullFeature.Reject",),
)
def reject_statsn(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def reject(self: Connection, reason: int, header: bytes, **kw: Any) -> None:
            sn = self.statsn
            old(self, reason, header, **kw)
            self.statsn = sn

        return reject

    p.wrap(Connection, "reject", make)


@mutant(
    "Sequencing.ExpCmdSN.StaleInTextResponse",
    "sequencing",
    "Text Responses report ExpCmdSN one below the session's (4.2.2.1)",
    catches=["FullFeature.Text", "FullFeature.Sequencing"],
    suites=("FullFeature.Text", "Discovery"),
)
def text_expcmdsn(p: Patcher) -> None:
    fields(p, P.TextResponse, full_feature, expcmdsn=lambda pdu: add_mod(pdu.expcmdsn, -1))


@mutant(
    "Sequencing.CmdSN.NoWraparound",
    "sequencing",
    "ExpCmdSN is advanced without the modulo 2**32 of serial arithmetic: after CmdSN "
    "0xffffffff the window never reaches CmdSN 0 (4.2.2.1)",
    catches=["FullFeature.Sequencing.CmdSNWraparound"],
)
def cmdsn_no_wrap(p: Patcher) -> None:
    from iscsi_conformance.target import connection as C

    p.setattr(C, "sn_add", lambda s, n: s + n)


@mutant(
    "Sequencing.CmdSN.WindowWithoutSerialArithmetic",
    "sequencing",
    "the CmdSN window is checked with plain integer comparison instead of serial "
    "arithmetic: across the wrap at 2**32 a command sent ahead is ignored (4.2.2.1)",
    catches=["FullFeature.Sequencing.DeliveredInCmdSNOrderAcrossWrap"],
)
def cmdsn_window_plain(p: Patcher) -> None:
    from iscsi_conformance.target import connection as C

    p.setattr(C, "sn_lt", lambda a, b: a < b)
    p.setattr(C, "sn_le", lambda a, b: a <= b)


@mutant(
    "Sequencing.Window.ClosedWindowNotAnnounced",
    "sequencing",
    "a CmdSN window closed or opened mid-session is not announced: no NOP-In carries "
    "the new MaxCmdSN (11.4.11)",
    catches=["FullFeature.Sequencing.WindowClosedThenReopened"],
)
def window_not_announced(p: Patcher) -> None:
    p.noop(Connection, "announce_window")


@mutant(
    "Sequencing.Window.ClosedWindowRunsExpCmdSN",
    "sequencing",
    "a command whose CmdSN equals ExpCmdSN runs even when the window is closed "
    "(MaxCmdSN = ExpCmdSN - 1): the window is checked only ahead of ExpCmdSN (4.2.2.1)",
    catches=["FullFeature.Sequencing.WindowClosedThenReopened"],
)
def closed_window_runs(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def order(self: Connection, pdu: Any, run: Any) -> None:
            s = self.session
            if s is None or pdu.immediate or pdu.cmdsn != s.expcmdsn or s.window > 0:
                old(self, pdu, run)
                return
            s.window = 1  # the check the mutant leaves out: as if the window were open
            try:
                old(self, pdu, run)
            finally:
                s.window = 0

        return order

    p.wrap(Connection, "_order", make)
