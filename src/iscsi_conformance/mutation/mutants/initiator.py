"""The reference initiator broken on purpose, for the Wire area's option tests
(``*.Wire.Option*``, issue 15): each is killed by the bridge judging, on the wire, the
initiator configured for one option (a digest alone, a CHAP algorithm, two sessions).

Unlike the other mutants these patch the reference initiator (``iscsi_conformance.
initiator``), which runs in the suite's process like the embedded target. They set
attributes of the initiator's own modules only (``Patcher.setattr``, never
``replace``: ``core.pdu.encode`` is the target's too), so the target stays correct
and every breach the bridge finds is the initiator's.
"""

from __future__ import annotations

from typing import Any

from iscsi_conformance.core import chap, text
from iscsi_conformance.core import pdu as P
from iscsi_conformance.initiator import client
from iscsi_conformance.initiator.engine import InitiatorConnection, SessionSequencer
from iscsi_conformance.mutation.patching import Patcher
from iscsi_conformance.mutation.registry import mutant

_OPTIONS = "Wire.Option"


@mutant(
    "Initiator.Digests.DataDigestWrong",
    "initiator",
    "with DataDigest=CRC32C agreed, the reference initiator sends every data segment "
    "with a wrong data digest (RFC 7143 13.1, 11.1: CRC32C over the data and padding)",
    catches=["Digests.Wire.OptionDataDigestOnly.Initiator"],
)
def data_digest_wrong(p: Patcher) -> None:
    encode = P.encode  # what client.encode is

    def wrong(pdu: P.PDU, *a: Any, data_digest: bool = False, **kw: Any) -> bytes:
        raw = encode(pdu, *a, data_digest=data_digest, **kw)
        if data_digest and pdu.data:
            return raw[:-4] + bytes([raw[-4] ^ 0x01]) + raw[-3:]
        return raw

    p.setattr(client, "encode", wrong)


@mutant(
    "Initiator.Digests.HeaderDigestOmitted",
    "initiator",
    "with HeaderDigest=CRC32C agreed, the reference initiator sends its full feature "
    "PDUs without the header digest (RFC 7143 13.1: the digest follows the header of "
    "every PDU from the first after the login)",
    catches=["Digests.Wire.OptionHeaderDigestOnly.Initiator"],
)
def header_digest_omitted(p: Patcher) -> None:
    encode = P.encode  # what client.encode is

    def without(pdu: P.PDU, *a: Any, header_digest: bool = False, **kw: Any) -> bytes:
        return encode(pdu, *a, header_digest=False, **kw)

    p.setattr(client, "encode", without)


@mutant(
    "Initiator.Sequencing.CmdSnSharedAcrossSessions",
    "initiator",
    "the reference initiator numbers the commands of all its sessions from one CmdSN "
    "counter, so a second session's commands continue the first's numbering instead of "
    "its own (RFC 7143 4.2.2.1: CmdSN is per session)",
    catches=["FullFeature.Wire.OptionTwoSessions.Initiator"],
)
def cmdsn_shared_across_sessions(p: Patcher) -> None:
    shared: list[int] = []

    def take_cmdsn(self: SessionSequencer, immediate: bool) -> int:
        if not shared:
            shared.append(self.cmdsn)
        sn = shared[0]
        if not immediate:
            shared[0] = self.cmdsn = (sn + 1) & 0xFFFFFFFF
        return sn

    p.setattr(SessionSequencer, "take_cmdsn", take_cmdsn)


@mutant(
    "Initiator.Chap.ResponseAlwaysMd5",
    "initiator",
    "the reference initiator computes its CHAP_R with MD5 whatever algorithm the target "
    "chose in CHAP_A (RFC 7143 12.1.3 with RFC 1994 4.1: the response is the chosen "
    "algorithm's hash)",
    catches=[
        "CHAP.Wire.OptionChapSha256.Initiator",
        "CHAP.Wire.OptionChapSha1.Initiator",
        "CHAP.Wire.OptionChapSha3.Initiator",
    ],
)
def chap_response_always_md5(p: Patcher) -> None:
    def make(old: Any) -> Any:
        def respond(self: chap.ChapClient, pairs: Any) -> list[tuple[str, str]]:
            out: list[tuple[str, str]] = old(self, pairs)
            ident = chap._parse_ident(pairs["CHAP_I"])
            challenge = chap._parse_challenge(pairs["CHAP_C"], self.policy)
            md5 = chap.chap_response(
                chap.ChapAlgorithm.MD5, ident, self.credentials.secret, challenge
            )
            value = text.format_binary(md5, self.policy.encoding)
            return [(k, value if k == "CHAP_R" else v) for k, v in out]

        return respond

    p.setattr(chap.ChapClient, "_respond", make(chap.ChapClient._respond))


@mutant(
    "Initiator.Recovery.DataAckIgnored",
    "initiator",
    "at ErrorRecoveryLevel 1 the reference initiator ignores the A bit of a Data-In and "
    "never sends a DataACK, leaving the status acknowledgment to free the data (RFC 7143 "
    "11.16.2, 11.7.2: MUST issue a SNACK of type DataACK)",
    catches=["Initiator.Recovery.Erl1.DataAck"],
    suites=("Initiator.Recovery.Erl1",),
)
def data_ack_ignored(p: Patcher) -> None:
    def ignore(self: InitiatorConnection, pdu: P.ScsiDataIn) -> None:
        return None

    p.setattr(InitiatorConnection, "_data_ack", ignore)
