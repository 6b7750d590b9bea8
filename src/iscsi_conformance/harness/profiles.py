"""Target profiles: the fixed set of targets every target peer is asked to serve.

Theory of operation: a test does not configure its target; it asks for a *profile*
("default", "chap-md5", "mutual-sha256", ...). At the start of a run each target peer is
configured once with every profile its manifest can serve, and the endpoints are
shared with all workers (xdist). A profile a peer cannot serve makes the tests that
need it skip with that reason; a third-party target given by URL serves only
"default", plus "chap"/"mutual" when the user passes credentials.

Secrets here are test secrets for the run, generated per run, never logged.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from iscsi_conformance.peers.base import ChapAccount, LunSpec, Manifest, TargetSpec

REFERENCE_INITIATOR_NAME = "iqn.2024-01.org.iscsi-conformance:reference-initiator"
OTHER_INITIATOR_NAME = "iqn.2024-01.org.iscsi-conformance:other-initiator"
IQN_PREFIX = "iqn.2024-01.org.iscsi-conformance"

CHAP_ALGORITHMS = {5: "md5", 6: "sha1", 7: "sha256", 8: "sha3-256"}

# Where the "redirect" profiles send initiators (RFC 7143 11.13.5, TargetAddress 13.8):
# a loopback address nothing listens on, so an initiator that follows the redirection
# reaches no other host. Tests read the answer; they never connect there.
REDIRECT_ADDRESS = "127.0.0.2:3260"


def _secret(tag: str) -> str:
    # 16 printable bytes of OS randomness per run: long enough for every policy (RFC 7143 12.1.3)
    return tag[:2] + os.urandom(8).hex()


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    build: Callable[[Credentials], TargetSpec]
    needs: tuple[str, ...] = ()  # manifest capabilities required to serve it
    doc: str = ""

    def servable_by(self, manifest: Manifest) -> tuple[bool, str]:
        for need in self.needs:
            if not capability_satisfied(manifest, need):
                return False, f"{manifest.name} lacks capability {need!r}"
        return True, ""


@dataclasses.dataclass(frozen=True)
class Credentials:
    """The run's CHAP credentials (generated once per run)."""

    initiator: ChapAccount
    target: ChapAccount  # for mutual CHAP; different secret (RFC 7143 12.1.3)

    @classmethod
    def generate(cls) -> Credentials:
        return cls(
            initiator=ChapAccount("conformance-initiator", _secret("in")),
            target=ChapAccount("conformance-target", _secret("tg")),
        )


def capability_satisfied(manifest: Manifest, need: str) -> bool:
    """``need`` is ``name`` (truthy capability) or ``name=value`` (value in a list cap)."""
    if "=" in need:
        key, value = need.split("=", 1)
        cap = manifest.capabilities.get(key)
        if isinstance(cap, list):
            return value in [str(v) for v in cap]
        return str(cap) == value
    return manifest.supports(need)


def _spec(name: str, **kw: object) -> TargetSpec:
    return TargetSpec(iqn=f"{IQN_PREFIX}:{name}", **kw)  # type: ignore[arg-type]


def _profiles() -> dict[str, Profile]:
    p: dict[str, Profile] = {}

    def add(
        name: str, build: Callable[[Credentials], TargetSpec], *needs: str, doc: str = ""
    ) -> None:
        p[name] = Profile(name, build, tuple(needs), doc)

    add(
        "default",
        lambda c: _spec("default", luns=(LunSpec(), LunSpec(16 * 1024 * 1024))),
        doc="no auth, LUN 0 64 MiB, LUN 1 16 MiB",
    )
    add(
        "chap",
        lambda c: _spec("chap", chap=c.initiator),
        "chap_algorithms",  # a non-empty list: the target does CHAP at all
        doc="one-way CHAP, any algorithm",
    )
    add(
        "mutual",
        lambda c: _spec("mutual", chap=c.initiator, mutual_chap=c.target),
        "mutual_chap",
        doc="mutual CHAP",
    )
    # RFC 7143 9.2.1: a secret that authenticates initiators must not authenticate a
    # target; a CHAP_R equal to the one the receiver would compute with its own secret
    # fails. Only a target that lets such a pairing be configured serves this profile.
    add(
        "same-secret",
        lambda c: _spec(
            "same-secret",
            chap=c.initiator,
            mutual_chap=ChapAccount(c.target.user, c.initiator.secret),
        ),
        "mutual_chap",
        "chap_same_secret",
        doc="mutual CHAP whose target secret is the initiator's secret (to be refused)",
    )
    # RFC 7143 11.5.1: TARGET COLD RESET ends every session of the target. Only a
    # target that can serve this one apart, so that the reset ends no other test's
    # sessions, serves this profile.
    add(
        "cold-reset",
        lambda c: _spec("cold-reset", luns=(LunSpec(1024 * 1024),)),
        "cold_reset_target",
        doc="a target of its own, for TARGET COLD RESET (ends only its own sessions)",
    )
    for alg, label in CHAP_ALGORITHMS.items():
        add(
            f"chap-{label}",
            lambda c, alg=alg, label=label: _spec(
                f"chap-{label}", chap=c.initiator, parameters=(("CHAP_A", str(alg)),)
            ),
            f"chap_algorithms={alg}",
            doc=f"one-way CHAP offering only CHAP_A={alg}",
        )
        add(
            f"mutual-{label}",
            lambda c, alg=alg, label=label: _spec(
                f"mutual-{label}",
                chap=c.initiator,
                mutual_chap=c.target,
                parameters=(("CHAP_A", str(alg)),),
            ),
            "mutual_chap",
            f"chap_algorithms={alg}",
            doc=f"mutual CHAP offering only CHAP_A={alg}",
        )
    for name, permanent in (("redirect", False), ("redirect-permanent", True)):
        add(
            name,
            lambda c, name=name, permanent=permanent: _spec(
                name, redirect=REDIRECT_ADDRESS, redirect_permanent=permanent
            ),
            "login_redirect",
            doc=f"every login is redirected ({'0102 permanent' if permanent else '0101 temporary'})"
            f" to TargetAddress={REDIRECT_ADDRESS}",
        )
    add(
        "acl",
        lambda c: _spec("acl", allowed_initiators=(OTHER_INITIATOR_NAME,)),
        "acl_by_initiator_name",
        doc="only OTHER_INITIATOR_NAME may log in or discover it",
    )
    add(
        "digest-required",
        lambda c: _spec("digest-required", header_digest=("CRC32C",), data_digest=("CRC32C",)),
        "header_digests=CRC32C",
        "data_digests=CRC32C",
        "digest_required",
        doc="target accepts only CRC32C digests",
    )
    # Small declared limits, so an initiator that ignores them shows it on the wire
    # (RFC 7143 13.12, 13.13, 13.14): FirstBurstLength below MaxRecvDataSegmentLength
    # makes the burst, not the segment size, bound immediate data.
    add(
        "small-bursts",
        lambda c: _spec(
            "small-bursts",
            parameters=(
                ("MaxRecvDataSegmentLength", "4096"),
                ("FirstBurstLength", "2048"),
                ("MaxBurstLength", "16384"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
            ),
        ),
        "immediate_data",
        "unsolicited_data",
        doc="MRDSL 4096, FirstBurstLength 2048, MaxBurstLength 16384, unsolicited data allowed",
    )
    add(
        "r2t-only",
        lambda c: _spec(
            "r2t-only",
            parameters=(
                ("MaxRecvDataSegmentLength", "4096"),
                ("MaxBurstLength", "16384"),
                ("InitialR2T", "Yes"),
                ("ImmediateData", "No"),
            ),
        ),
        "immediate_data",  # the target lets its ImmediateData be configured
        doc="InitialR2T=Yes, ImmediateData=No: every byte of a write waits for an R2T",
    )
    # RFC 7143 13.18: with DataPDUInOrder=No agreed a sequence's data PDUs may come in
    # any order. This target answers No, sends Data-In of 4096 bytes at most and each
    # 16 KiB sequence at decreasing offsets, so an initiator that offers No must place
    # every PDU by its Buffer Offset (11.7.6) to read the right data.
    add(
        "datain-reverse",
        lambda c: _spec(
            "datain-reverse",
            parameters=(("DataPDUInOrder", "No"), ("MaxBurstLength", "16384")),
            max_send_data_segment_length=4096,
            datain_order="reverse",
        ),
        "datain_out_of_order",
        doc="DataPDUInOrder=No; Data-In of 4 KiB, each 16 KiB sequence at decreasing offsets",
    )
    # RFC 7143 13.19: with DataSequenceInOrder=No agreed the data sequences may come in
    # any order. This target answers No and sends each READ's 16 KiB sequences last
    # first (each in offset order, 4 KiB Data-In), so an initiator that offers No must
    # place every PDU by its Buffer Offset (11.7.6).
    add(
        "dataseq-reverse",
        lambda c: _spec(
            "dataseq-reverse",
            parameters=(("DataSequenceInOrder", "No"), ("MaxBurstLength", "16384")),
            max_send_data_segment_length=4096,
            datain_order="reverse-sequences",
        ),
        "datain_out_of_order",
        doc="DataSequenceInOrder=No; Data-In of 4 KiB, the 16 KiB sequences last first",
    )
    # RFC 7143 7.2.2: connection recovery. This target agrees to ErrorRecoveryLevel 2
    # (a failed connection's tasks wait for TASK REASSIGN), lets a second connection
    # in, makes Time2Wait 1 s so that waiting it shows, and solicits every byte of a
    # write by R2T, so a WRITE is in flight when its connection is cut.
    add(
        "erl2",
        lambda c: _spec(
            "erl2",
            parameters=(
                ("ErrorRecoveryLevel", "2"),
                ("MaxConnections", "2"),
                ("DefaultTime2Wait", "1"),
                ("DefaultTime2Retain", "20"),
                ("InitialR2T", "Yes"),
                ("ImmediateData", "No"),
                ("MaxBurstLength", "16384"),
            ),
        ),
        "task_reassign",
        doc="ErrorRecoveryLevel 2, MaxConnections 2, Time2Wait 1 s, every write by R2T",
    )
    # RFC 7143 4.2.2.1: the target grants the window. This one grants none from the
    # login on (MaxCmdSN = ExpCmdSN - 1 in every Login Response) and ignores what an
    # initiator sends beyond it, until a test opens the window with a NOP-In (11.4.11).
    add(
        "window-closed",
        lambda c: _spec("window-closed", cmd_window=0),
        "cmd_window_initial",
        doc="CmdSN window closed from the login on, opened later through the test API",
    )
    # RFC 7144 4.1: its task management functions (6.3) need iSCSIProtocolLevel 2. This
    # target answers 1 (RFC 7143 alone, 13.24) whatever is offered, so the tests of
    # those functions are shown not negotiated here, and the level-1 behaviour is kept.
    add(
        "level1",
        lambda c: _spec("level1", parameters=(("iSCSIProtocolLevel", "1"),)),
        "protocol_level_configurable",
        doc="iSCSIProtocolLevel 1: RFC 7143 alone, no RFC 7144 functions",
    )
    return p


PROFILES: dict[str, Profile] = _profiles()
