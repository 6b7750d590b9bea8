"""``iscsi-conformance initiator ...``: one-line errors, exit statuses, real output."""

from __future__ import annotations

import pytest
from initiator_helpers import CHAP, TgtTargets

from iscsi_conformance.cli import main as top_main
from iscsi_conformance.initiator.cli import main
from iscsi_conformance.netutil import free_tcp_port


def test_bad_url_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inquiry", "iscsi://127.0.0.1:99999/iqn.2024-01.x:y/0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of range" in err


def test_bad_url_through_top_level_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert top_main(["initiator", "inquiry", "http://nope/iqn.2024-01.x:y/0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an iscsi:// URL" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["inquiry"]) == 2
    assert main(["frobnicate", "iscsi://h/iqn.2024-01.x:y/0"]) == 2
    assert main(["inquiry", "iscsi://h/iqn.2024-01.x:y/0", "--key", "novalue"]) == 2


def test_unreachable_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_tcp_port()
    assert main(["inquiry", f"iscsi://127.0.0.1:{port}/iqn.2024-01.x:y/0", "--timeout", "3"]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"iscsi-conformance initiator: cannot connect to 127.0.0.1:{port}: connection refused\n"
    )


@pytest.mark.peer
def test_inquiry_against_tgt(tgt: TgtTargets, capsys: pytest.CaptureFixture[str]) -> None:
    assert top_main(["initiator", "inquiry", tgt.plain.url(1)]) == 0
    out = capsys.readouterr().out
    assert "vendor: IET" in out and "product: VIRTUAL-DISK" in out


@pytest.mark.peer
def test_commands_against_tgt(
    tgt: TgtTargets, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    assert main(["discover", f"iscsi://{tgt.host}:{tgt.port}"]) == 0
    out = capsys.readouterr().out
    assert f"Target: {tgt.plain.iqn}" in out and f"Portal: {tgt.host}:{tgt.port},1" in out

    assert main(["readcapacity", tgt.plain.url(1)]) == 0
    assert "Total size: 16777216" in capsys.readouterr().out

    assert (
        main(["write", tgt.plain.url(1), "--lba", "7", "--pattern", "0x5a", "--blocks", "2"]) == 0
    )
    capsys.readouterr()
    dest = tmp_path / "out.bin"
    assert main(["read", tgt.plain.url(1), "--lba", "7", "--blocks", "2", "-o", str(dest)]) == 0
    assert dest.read_bytes() == b"\x5a" * 1024

    assert main(["login", tgt.plain.url(1), "--header-digest", "crc32c", "--json"]) == 0
    assert '"HeaderDigest": "CRC32C"' in capsys.readouterr().out

    assert main(["reportluns", tgt.plain.url(0)]) == 0
    assert "LUN 1" in capsys.readouterr().out
    assert main(["nop", tgt.plain.url(0), "--data", "hi"]) == 0
    assert "data 2 bytes" in capsys.readouterr().out


@pytest.mark.peer
def test_chap_url_and_auth_failure(tgt: TgtTargets, capsys: pytest.CaptureFixture[str]) -> None:
    host = f"{tgt.host}:{tgt.port}"
    good = f"iscsi://{CHAP.user}%{CHAP.secret}@{host}/{tgt.chap.iqn}/1"
    assert main(["tur", good, "--trace"]) == 0
    captured = capsys.readouterr()
    assert CHAP.secret not in captured.out + captured.err
    assert "CHAP_N=alice" in captured.err  # the trace went to stderr, masked

    bad = f"iscsi://{CHAP.user}%wrong-secret-00@{host}/{tgt.chap.iqn}/1"
    assert main(["tur", bad]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "login failed: status 0x02" in err
    assert "wrong-secret-00" not in err
