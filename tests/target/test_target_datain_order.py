"""The reference target's Data-In order under DataPDUInOrder=No (target option
``datain_order = "reverse"``): each sequence's PDUs at decreasing Buffer Offsets,
DataSN counting in sending order, F on the PDU sent last in each sequence, the status on
the last one sent; in offset order whenever the session agreed to Yes (RFC 7143 13.18,
11.7.1, 11.7.5)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from target_helpers import RawInitiator, read16, write16

from iscsi_conformance.core import pdu as P
from iscsi_conformance.errors import ConfigError
from iscsi_conformance.target.config import parse_config
from iscsi_conformance.target.server import TargetServer
from iscsi_conformance.target.task import _datain_pieces

NAME = "iqn.2024-01.org.example:reverse"
SEG, BURST, TOTAL = 1024, 4096, 10240  # 3 sequences: 4 + 4 + 2 PDUs


def _config(tmp: Path, order: str = "reverse") -> dict:
    return {
        "server": {"state_dir": str(tmp / "state")},
        "portal_groups": [{"tag": 1, "portals": ["127.0.0.1:0"]}],
        "targets": [
            {
                "name": NAME,
                "luns": [{"lun": 0, "size": "1M"}],
                "parameters": {"DataPDUInOrder": False, "MaxBurstLength": BURST},
                "max_send_data_segment_length": SEG,
                "datain_order": order,
            }
        ],
    }


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[tuple[str, int]]:
    srv = TargetServer(parse_config(_config(tmp_path)))
    srv.start_in_thread()
    try:
        yield srv.portal()
    finally:
        srv.stop_thread()


def _read_back(portal: tuple[str, int], in_order: str) -> tuple[list[P.ScsiDataIn], bytes, bytes]:
    ini = RawInitiator(portal)
    try:
        keys = [("DataPDUInOrder", in_order), ("MaxBurstLength", str(BURST)),
                ("InitialR2T", "Yes"), ("ImmediateData", "No")]  # fmt: skip
        rsp = ini.login(NAME, params=keys)
        assert rsp.status == 0 and ini.negotiated.get("DataPDUInOrder") == in_order
        ini.clear_ua()
        payload = bytes((i * 7) % 256 for i in range(TOTAL))
        status, _, _ = ini.scsi(write16(8, TOTAL // 512), write=payload, immediate_data=False)
        assert status.status == 0
        last, _, seen = ini.scsi(read16(8, TOTAL // 512), read=TOTAL)
        assert isinstance(last, P.ScsiDataIn) and last.status_present and last.status == 0
        pdus = [p for p in seen if isinstance(p, P.ScsiDataIn)]
        # Placed by Buffer Offset here: RawInitiator.collect grows its buffer in arrival order.
        data = bytearray(TOTAL)
        for p in pdus:
            data[p.buffer_offset : p.buffer_offset + len(p.data)] = p.data
        return pdus, bytes(data), payload
    finally:
        ini.close()


def test_reverse_order_when_data_pdu_in_order_no(portal: tuple[str, int]) -> None:
    pdus, data, payload = _read_back(portal, "No")
    assert data == payload
    assert [p.buffer_offset for p in pdus] == [3072, 2048, 1024, 0, 7168, 6144, 5120, 4096,
                                               9216, 8192]  # fmt: skip
    assert [p.datasn for p in pdus] == list(range(10))
    assert [i for i, p in enumerate(pdus) if p.final] == [3, 7, 9]
    assert [i for i, p in enumerate(pdus) if p.status_present] == [9]


def test_offset_order_when_the_session_agreed_yes(portal: tuple[str, int]) -> None:
    pdus, data, payload = _read_back(portal, "Yes")
    assert data == payload
    assert [p.buffer_offset for p in pdus] == list(range(0, TOTAL, SEG))
    assert [i for i, p in enumerate(pdus) if p.final] == [3, 7, 9]


def test_pieces_cover_the_data_once_in_both_orders() -> None:
    for reverse in (False, True):
        pieces = list(_datain_pieces(0, 10000, 1000, 4096, reverse))
        covered = sorted((o, o + n) for o, n, _, _ in pieces)
        assert covered[0][0] == 0 and covered[-1][1] == 10000
        assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
        assert [last for *_, last in pieces] == [False] * (len(pieces) - 1) + [True]
    # A resumed transfer (ERL 2) starts mid-buffer on the same MaxBurstLength grid.
    assert [o for o, *_ in _datain_pieces(5000, 9000, 1000, 4096, False)][:4] == [5000, 6000,
                                                                                  7000, 8000]  # fmt: skip


def test_unknown_datain_order_is_one_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="datain_order"):
        parse_config(_config(tmp_path, "random"))


def test_sequences_last_first_when_data_sequence_in_order_no(tmp_path: Path) -> None:
    """``datain_order = "reverse-sequences"`` under DataSequenceInOrder=No (RFC 7143
    13.19): the MaxBurstLength sequences go out last first, each in offset order, DataSN
    in sending order, F closing each sequence and the status on the PDU sent last; with
    Yes agreed the same target sends offset order."""
    cfg = _config(tmp_path, "reverse-sequences")
    cfg["targets"][0]["parameters"] = {"DataSequenceInOrder": False, "MaxBurstLength": BURST}
    srv = TargetServer(parse_config(cfg))
    srv.start_in_thread()
    try:
        for agreed, offsets in (
            ("No", [8192, 9216, 4096, 5120, 6144, 7168, 0, 1024, 2048, 3072]),
            ("Yes", list(range(0, TOTAL, SEG))),
        ):
            ini = RawInitiator(srv.portal())
            try:
                keys = [("DataSequenceInOrder", agreed), ("MaxBurstLength", str(BURST)),
                        ("InitialR2T", "Yes"), ("ImmediateData", "No")]  # fmt: skip
                assert ini.login(NAME, params=keys).status == 0
                assert ini.negotiated.get("DataSequenceInOrder") == agreed
                ini.clear_ua()
                payload = bytes((i * 11) % 256 for i in range(TOTAL))
                status, _, _ = ini.scsi(
                    write16(8, TOTAL // 512), write=payload, immediate_data=False
                )
                assert status.status == 0
                last, _, seen = ini.scsi(read16(8, TOTAL // 512), read=TOTAL)
                assert isinstance(last, P.ScsiDataIn) and last.status_present
                pdus = [p for p in seen if isinstance(p, P.ScsiDataIn)]
                data = bytearray(TOTAL)
                for p in pdus:
                    data[p.buffer_offset : p.buffer_offset + len(p.data)] = p.data
                assert bytes(data) == payload
                assert [p.buffer_offset for p in pdus] == offsets
                assert [p.datasn for p in pdus] == list(range(10))
                finals = [3, 7, 9] if agreed == "Yes" else [1, 5, 9]
                assert [i for i, p in enumerate(pdus) if p.final] == finals
                assert [i for i, p in enumerate(pdus) if p.status_present] == [9]
            finally:
                ini.close()
    finally:
        srv.stop_thread()


def test_backwards_pieces_cover_the_data_once() -> None:
    pieces = list(_datain_pieces(0, 10000, 1000, 4096, False, True))
    covered = sorted((o, o + n) for o, n, _, _ in pieces)
    assert covered[0][0] == 0 and covered[-1][1] == 10000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    assert [o for o, *_ in pieces][:2] == [8192, 9192]  # the last sequence first
    assert [last for *_, last in pieces] == [False] * (len(pieces) - 1) + [True]
