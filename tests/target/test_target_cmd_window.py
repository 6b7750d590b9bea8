"""The reference target's per-target initial CmdSN window (target option ``cmd_window``):
0 grants no window from the login on (MaxCmdSN = ExpCmdSN - 1 in every Login Response),
a non-immediate command sent into it is ignored and an immediate one is not, and the
test API's ``set_cmd_window`` opens it with a NOP-In, after which the same CmdSN is
executed (RFC 7143 4.2.2.1, 11.4.11)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from target_helpers import RawInitiator

from iscsi_conformance.core import pdu as P
from iscsi_conformance.errors import ConfigError
from iscsi_conformance.target.config import parse_config
from iscsi_conformance.target.server import TargetServer

NAME = "iqn.2024-01.org.example:closed"
TUR = bytes(6)


def _config(tmp: Path, window: object = 0) -> dict:
    return {
        "server": {"state_dir": str(tmp / "state")},
        "portal_groups": [{"tag": 1, "portals": ["127.0.0.1:0"]}],
        "targets": [{"name": NAME, "luns": [{"lun": 0, "size": "1M"}], "cmd_window": window}],
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[TargetServer]:
    srv = TargetServer(parse_config(_config(tmp_path)))
    srv.start_in_thread()
    try:
        yield srv
    finally:
        srv.stop_thread()


def test_closed_from_login_then_opened(server: TargetServer) -> None:
    ini = RawInitiator(server.portal())
    try:
        rsp = ini.login(NAME)
        assert rsp.status == 0
        assert rsp.maxcmdsn == (rsp.expcmdsn - 1) & 0xFFFFFFFF  # closed (4.2.2.1)
        held = ini.command(TUR)
        with pytest.raises(socket.timeout):
            ini.recv(0.3)  # outside the window: silently ignored
        ping = P.NopOut(immediate=True, itt=0x77, ttt=0xFFFFFFFF, cmdsn=ini.cmdsn,
                        expstatsn=ini.expstatsn, data=b"x")  # fmt: skip
        ini.send(ping)
        pong = ini.recv()
        assert isinstance(pong, P.NopIn) and pong.itt == 0x77  # immediate: answered
        session = server.call(lambda: server.engine.sessions[rsp.tsih])
        server.set_cmd_window(session, 1)
        opened = ini.recv()
        assert isinstance(opened, P.NopIn) and opened.itt == 0xFFFFFFFF
        assert opened.maxcmdsn == opened.expcmdsn == held.cmdsn  # one command (11.4.11)
        ini.cmdsn = held.cmdsn
        again = ini.command(TUR)
        status = ini.recv()
        assert isinstance(status, P.ScsiResponse) and status.itt == again.itt
        assert status.maxcmdsn == status.expcmdsn == (held.cmdsn + 1) & 0xFFFFFFFF
    finally:
        ini.close()


@pytest.mark.parametrize("bad", [-1, 2**31, True, "8"])
def test_bad_window_is_one_config_error(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="cmd_window"):
        parse_config(_config(tmp_path, bad))
