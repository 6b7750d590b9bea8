"""IPsec.Negative.SaDeletedMidSession's kernel-session variant (open-iscsi) can fail.

``conformance/ipsec/test_ipsec.py`` is loaded by path; its variant runs against a
stand-in area and a stand-in open-iscsi whose session state, as the guest's sysfs shows
it, follows a script. A healthy initiator passes; one whose session stays logged in
with the SA gone, one that never logs in again, and one that loses an acknowledged
write each fail with the requirement and what happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from iscsi_conformance.plugin.spec import ConformanceViolation
from suite_modules import Notes, load_suite

suite = load_suite("ipsec/test_ipsec.py", "ipsec_suite_sa_proof")


@dataclasses.dataclass
class Text:
    text: str


@dataclasses.dataclass
class Wire:
    frames: int = 40
    cleartext: int = 0
    esp: int = 40

    def describe(self) -> str:
        return f"{self.frames} frames, {self.esp} ESP, {self.cleartext} cleartext"


class Kernel:
    """A stand-in open-iscsi: ``fails`` whether the session leaves LOGGED_IN once the SA
    goes, ``recovers`` whether it logs in again once the SA is back, ``loses`` whether a
    read returns zeros instead of what was written."""

    name = "open-iscsi"

    def __init__(self, *, fails: bool = True, recovers: bool = True, loses: bool = False):
        self.fails, self.recovers, self.loses = fails, recovers, loses
        self.phase = "up"
        self.disk: dict[int, bytes] = {}
        self.logged_out = False

    def login(self, endpoint: Any) -> Any:
        return type("Handle", (), {"ref": {"sid": 3}})()

    def guest(self, command: str) -> Text:
        assert command == "cat /sys/class/iscsi_session/session3/state"
        if self.phase == "sa-gone" and self.fails:
            return Text("FAILED\n")
        if self.phase == "sa-back" and self.fails and not self.recovers:
            return Text("FAILED\n")
        return Text("LOGGED_IN\n")

    def write(self, session: Any, lun: int, lba: int, data: bytes) -> None:
        self.disk[lba] = data

    def read(self, session: Any, lun: int, lba: int, blocks: int) -> bytes:
        return bytes(blocks * 512) if self.loses else self.disk[lba]

    def block_size(self, session: Any, lun: int) -> int:
        return 512

    def logout(self, session: Any) -> None:
        self.logged_out = True


class Area:
    portal = ("10.77.0.2", 3260)
    lun = 0
    open_target = "iqn.2024-01.org.example:open"

    def __init__(self, kernel: Kernel) -> None:
        self.initiator = type("Init", (), {"driver": kernel, "name": kernel.name})()
        self.kernel = kernel
        self.path = self

    def protect(self) -> None:
        pass

    def delete_child(self) -> None:
        self.kernel.phase = "sa-gone"

    def reinitiate(self) -> float:
        self.kernel.phase = "sa-back"
        return 0.1

    @contextlib.contextmanager
    def wire(self, evidence: Any, name: str) -> Iterator[list[Wire]]:
        yield [Wire()]


@pytest.fixture(autouse=True)
def _short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "_KERNEL_FAIL_WITHIN", 1.2)
    monkeypatch.setattr(suite, "_KERNEL_RECOVER_WITHIN", 1.2)


def test_a_session_that_fails_and_logs_in_again_passes() -> None:
    kernel, notes = Kernel(), Notes()
    suite._sa_deleted_under_a_kernel_session(Area(kernel), notes)
    assert kernel.logged_out
    assert any("'FAILED'" in n for n in notes.notes)
    assert "4 acknowledged writes read back through the same session" in notes.notes


@pytest.mark.parametrize(
    ("kernel", "said"),
    [
        (Kernel(fails=False), "stayed LOGGED_IN for 1.2 s with its child SA deleted"),
        (Kernel(recovers=False), "did not log in again within 1.2 s of the SA's return"),
        (Kernel(loses=True), "acknowledged write at LBA 1000 lost"),
    ],
    ids=["never-fails", "never-recovers", "loses-a-write"],
)
def test_a_broken_kernel_session_fails(kernel: Kernel, said: str) -> None:
    with pytest.raises(ConformanceViolation) as caught:
        suite._sa_deleted_under_a_kernel_session(Area(kernel), Notes())
    assert "R7146-2-1" in str(caught.value) and said in str(caught.value)
    assert kernel.logged_out  # the session is logged out whatever the verdict
