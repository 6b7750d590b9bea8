"""Hand-made results for the report tests (imported by conftest and by tests)."""

from __future__ import annotations

from iscsi_conformance.report import (
    Evidence,
    PduEvent,
    Peer,
    Requirement,
    Results,
    Run,
    SpecRef,
    TestResult,
)

SECRET = "hunter2-chap-secret"


def make_small(*, with_secret: bool = True) -> Results:
    """2 initiators x 2 targets, one pairing not run, one third-party URL target."""
    r = Results(
        requirements=[
            Requirement(
                "R7143-13.12-1",
                "RFC 7143",
                "13.12",
                "MUST",
                "target",
                "MaxRecvDataSegmentLength is 512..2^24-1.",
            ),
            Requirement(
                "R7143-12.1.3-3",
                "RFC 7143",
                "12.1.3",
                "MUST",
                "target",
                "A wrong CHAP response fails the login.",
            ),
            Requirement(
                "R7143-6.2-1",
                "RFC 7143",
                "6.2",
                "MUST",
                "both",
                "Unknown keys are answered NotUnderstood.",
            ),
            Requirement("R7143-9.9-9", "RFC 7143", "9.9", "SHOULD", "initiator", "Never tested."),
        ]
    )
    r.add_run(
        Run(
            "run1",
            "2025-01-01T10:00:00.000+00:00",
            "2025-01-01T10:05:00.000+00:00",
            "host-a",
            "0.1.0",
            ["iscsi-conformance", "run"],
        )
    )
    r.add_peer(Peer("reference", "initiator", "0.1.0", "embedded"))
    r.add_peer(
        Peer(
            "open-iscsi",
            "initiator",
            "2.1.9",
            "container",
            capabilities={"chap": True, "admin_password": SECRET},
        )
    )
    r.add_peer(
        Peer(
            "tgt",
            "target",
            "1.0.87",
            "container",
            deviations=[{"test": "Login.Keys.X", "reason": "known"}],
        )
    )
    url = "iscsi://192.0.2.10:3260/iqn.2003-01.org.example:disk1/0"
    r.add_peer(Peer(url, "target", "unknown", "external"))
    for ini, tgt in (("reference", "tgt"), ("reference", url), ("open-iscsi", "tgt")):
        r.add_pairing(ini, tgt)
    ref = SpecRef("RFC 7143", "13.12", "MUST", "target")
    chap = SpecRef("RFC 7143", "12.1.3", "MUST", "target")
    add = r.add_test
    add(
        TestResult(
            "Login.Keys.MaxRecvDataSegmentLengthBelowMinimum",
            "reference×tgt",
            "xfailed",
            duration=0.01,
            spec=[ref],
            requirements=["R7143-13.12-1"],
            deviation="tgt accepts 256",
            start="2025-01-01T10:00:01.000+00:00",
            run="run1",
        )
    )
    add(
        TestResult(
            "Login.Keys.NotUnderstood",
            "reference×tgt",
            "passed",
            duration=0.02,
            spec=[SpecRef("RFC 7143", "6.2", "MUST", "target")],
            requirements=["R7143-6.2-1"],
            run="run1",
        )
    )
    add(
        TestResult(
            "CHAP.Refuse.WrongResponse",
            "reference×tgt",
            "failed",
            duration=0.2,
            spec=[chap],
            requirements=["R7143-12.1.3-3", "R-UNKNOWN-1"],
            message="target accepted a wrong CHAP_R=0xdeadbeef <b>bold</b>"
            + (f" secret={SECRET}" if with_secret else ""),
            evidence=Evidence(
                pdus=[
                    PduEvent.from_bytes(
                        "i->t",
                        "LoginRequest",
                        b"\x43"
                        + b"\x00" * 47
                        + b"CHAP_N=u\x00CHAP_R=0x0123456789\x00"
                        + (SECRET.encode() if with_secret else b""),
                        summary="CHAP_N=u CHAP_R=0x0123456789",
                        time=0.0,
                    ),
                    PduEvent(
                        "t->i",
                        "LoginResponse",
                        "status=0x0000 (expected 0x0201)",
                        "23" + "00" * 47,
                        0.003,
                    ),
                ],
                log=f"iscsiadm -n node.session.auth.password -v {SECRET}" if with_secret else "",
                capture="captures/chap.pcapng",
            ),
            start="2025-01-01T10:00:02.000+00:00",
            run="run1",
        )
    )
    add(
        TestResult(
            "Digests.Header.CRC32C", "reference×tgt", "skipped", skip_reason="no crc32c", run="run1"
        )
    )
    add(
        TestResult(
            "FullFeature.Io.ReadWrite16", f"reference×{url}", "passed", duration=1.5, run="run1"
        )
    )
    add(
        TestResult(
            "FullFeature.Io.Unmap",
            f"reference×{url}",
            "error",
            message="HarnessError: timeout",
            run="run1",
        )
    )
    add(TestResult("Discovery.SendTargets.All", "open-iscsi×tgt", "passed", run="run1"))
    add(
        TestResult(
            "libiscsi.SCSI.Read16.Simple",
            "open-iscsi×tgt",
            "xpassed",
            deviation="was broken in 1.0.86",
            run="run1",
        )
    )
    if with_secret:
        r.add_secret(SECRET)
    return r
