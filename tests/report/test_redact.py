"""Secrets never reach a report: JSON, HTML, JUnit."""

from __future__ import annotations

from pathlib import Path

import pytest
from report_data import SECRET

from iscsi_conformance.report import Redactor, Results, junit_xml, redact, render_html, validate
from iscsi_conformance.report.writer import dumps_results


def outputs(r: Results, tmp_path: Path, secrets: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        "json": dumps_results(r, secrets=secrets),
        "html": render_html(r, secrets=secrets),
        "junit": junit_xml(r, secrets=secrets),
    }


def test_registered_secret_never_written(small: Results, tmp_path: Path) -> None:
    for kind, text in outputs(small, tmp_path).items():
        assert SECRET not in text, kind
        assert SECRET.encode().hex() not in text, kind  # not even inside a hex dump
        assert "0123456789" not in text and "deadbeef" not in text, kind  # CHAP_R values
        assert "hunter2" not in text, kind


def test_secret_given_at_write_time(tmp_path: Path) -> None:
    from report_data import make_small

    r = make_small()
    r.secrets.clear()
    for kind, text in outputs(r, tmp_path, (SECRET,)).items():
        assert SECRET not in text, kind


def test_key_based_rules_without_known_secrets(sample: Results, tmp_path: Path) -> None:
    sample.secrets.clear()  # only the built-in rules now
    for kind, text in outputs(sample, tmp_path).items():
        assert "Zx9-chap-secret-4711" not in text, kind  # --password / -v / password= forms
        assert "mutual-secret-0815" not in text, kind  # secret=... in a log
        assert "8d1f0c5e9a6b7c2d4e3f10a1b2c3d4e5" not in text, kind  # CHAP_R in summary and hex


def test_redaction_keeps_shape_and_lengths(small: Results) -> None:
    red = redact(small)
    assert validate(red.to_json()) == []
    before = [p.hex for t in small.tests for p in t.evidence.pdus]
    after = [p.hex for t in red.tests for p in t.evidence.pdus]
    assert [len(h) for h in before] == [len(h) for h in after]
    assert before != after
    assert small.tests[2].evidence.log.endswith(SECRET)  # the original is untouched


@pytest.mark.parametrize(
    "text, expected",
    [
        ("CHAP_R=0xabc CHAP_C=0x01", "CHAP_R=*** CHAP_C=***"),
        ('{"CHAP_R": "0xabc"}', '{"CHAP_R": "***"}'),
        ("password=foo user=bar", "password=*** user=bar"),
        ("--mutual-secret foo", "--mutual-secret ***"),
        ("-n node.session.auth.password_in -v foo", "-n node.session.auth.password_in -v ***"),
        ("the CHAP secret was wrong", "the CHAP secret was wrong"),
        ("Login.CHAP.SecretTooShort", "Login.CHAP.SecretTooShort"),
        ("iscsi://user%s3cret@10.0.0.1:3260/iqn.x/0", "iscsi://user%***@10.0.0.1:3260/iqn.x/0"),
        (
            "iscsi://10.0.0.1:3260/iqn.2003-01.org.x:disk/0",
            "iscsi://10.0.0.1:3260/iqn.2003-01.org.x:disk/0",
        ),
    ],
)
def test_text_rules(text: str, expected: str) -> None:
    assert Redactor().text(text) == expected


def test_argv_and_bytes() -> None:
    r = Redactor(["0x00112233"])
    assert r.argv(["tgtadm", "--password", "x", "--user", "u"]) == [
        "tgtadm",
        "--password",
        "***",
        "--user",
        "u",
    ]
    assert r.data(b"CHAP_R=0xff\x00A") == b"CHAP_R=****\x00A"
    masked = r.data(b"x\x00\x11\x22\x33y")
    assert masked == b"x****y"
    assert r.tree({"Password": "p", "chap_secret_len": 12, "enabled": True}) == {
        "Password": "***",
        "chap_secret_len": "***",
        "enabled": True,
    }


def test_redact_text_for_attachments() -> None:
    from iscsi_conformance.report.redact import redact_text

    assert (
        redact_text('[{"summary": "CHAP_R=0x12 k=s3cr3t"}]', {"s3cr3t"})
        == '[{"summary": "CHAP_R=*** k=***"}]'
    )
