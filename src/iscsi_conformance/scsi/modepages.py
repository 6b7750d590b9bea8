"""Mode pages of the logical unit (SPC-4 7.5, SBC-3 6.4), declared as data.

Theory of operation: each page is a ``PageDef`` with its default bytes and a
changeable-bits mask of the same length.  ``ModePageSet`` holds the current values
(shared by all I_T nexuses), answers MODE SENSE for any page control (current,
changeable, default; saved is refused with SAVING PARAMETERS NOT SUPPORTED,
SPC-4 6.11.2) and applies MODE SELECT pages after checking that only changeable
bits differ (SPC-4 6.9: anything else is INVALID FIELD IN PARAMETER LIST).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SCSIError
from .codes import Asc, ModePage, PageControl, SenseKey
from .sense import check_condition, invalid_field_in_parameter_list, parameter_list_length_error


@dataclass(frozen=True)
class PageDef:
    code: int
    default: bytes  # whole page, including the 2-byte header (page code, length)
    changeable: bytes  # mask, same length; header bytes are 0
    name: str


def _page(code: int, body: bytes, mask: bytes, name: str) -> PageDef:
    assert len(body) == len(mask)
    return PageDef(code, bytes([code, len(body)]) + body, b"\0\0" + mask, name)


# Read-Write Error Recovery (SBC-3 6.4.7): AWRE and ARRE set, nothing changeable.
RW_ERROR_RECOVERY = _page(
    ModePage.READ_WRITE_ERROR_RECOVERY,
    bytes([0xC0] + [0] * 9),
    bytes(10),
    "read-write error recovery",
)

# Caching (SBC-3 6.4.5): WCE=1 by default and changeable (byte 2 bit 2).
CACHING = _page(ModePage.CACHING, bytes([0x04] + [0] * 17), bytes([0x04] + [0] * 17), "caching")

# Control (SPC-4 7.5.8): TST=000b, QERR=00b, D_SENSE (byte 2 bit 2) and SWP
# (byte 4 bit 3) changeable, BUSY TIMEOUT PERIOD unlimited (FFFFh).
CONTROL = _page(
    ModePage.CONTROL,
    bytes([0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00]),
    bytes([0x04, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]),
    "control",
)

# Informational Exceptions Control (SPC-4 7.5.11): DEXCPT=1 (disabled), MRIE=0;
# DEXCPT and MRIE changeable.
INFORMATIONAL_EXCEPTIONS = _page(
    ModePage.INFORMATIONAL_EXCEPTIONS_CONTROL,
    bytes([0x08, 0x00] + [0] * 8),
    bytes([0x08, 0x0F] + [0] * 8),
    "informational exceptions control",
)

PAGES: tuple[PageDef, ...] = (RW_ERROR_RECOVERY, CACHING, CONTROL, INFORMATIONAL_EXCEPTIONS)

_MRIE_VALID = {0, 1, 2, 3, 4, 5, 6}


class ModePageSet:
    """Current mode parameters of one logical unit."""

    def __init__(self, pages: tuple[PageDef, ...] = PAGES) -> None:
        self.defs = {p.code: p for p in pages}
        self.current: dict[int, bytearray] = {p.code: bytearray(p.default) for p in pages}

    # ---- typed accessors for the bits the device logic obeys
    @property
    def d_sense(self) -> bool:
        return bool(self.current[ModePage.CONTROL][2] & 0x04)

    @property
    def swp(self) -> bool:
        return bool(self.current[ModePage.CONTROL][4] & 0x08)

    @property
    def wce(self) -> bool:
        return bool(self.current[ModePage.CACHING][2] & 0x04)

    def set_bit(self, code: int, byte: int, mask: int, on: bool) -> None:
        page = self.current[code]
        page[byte] = (page[byte] | mask) if on else (page[byte] & ~mask)

    def restore_defaults(self) -> None:
        for code, d in self.defs.items():
            self.current[code] = bytearray(d.default)

    def sense(self, page_code: int, pc: int) -> bytes:
        """The page(s) for MODE SENSE; 3Fh returns all, in page-code order."""
        if pc == PageControl.SAVED:
            raise check_condition(
                SenseKey.ILLEGAL_REQUEST,
                Asc.SAVING_PARAMETERS_NOT_SUPPORTED,
                "saved values not supported",
                section="SPC-4 6.11.2",
            )
        codes = sorted(self.defs) if page_code == ModePage.ALL_PAGES else [page_code]
        out = bytearray()
        for code in codes:
            d = self.defs[code]
            if pc == PageControl.CURRENT:
                out += self.current[code]
            elif pc == PageControl.CHANGEABLE:
                out += d.default[:2] + d.changeable[2:]
            else:
                out += d.default
        return bytes(out)

    def select(self, pages: bytes, base_offset: int) -> bool:
        """Apply MODE SELECT pages; returns True if any value changed.

        Every page is checked before any is applied, so a bad page leaves all
        parameters as they were.  ``base_offset`` is where ``pages`` starts within the
        parameter list, for the sense field pointer.
        """
        staged: dict[int, bytearray] = {}
        pos = 0
        while pos < len(pages):
            if pos + 2 > len(pages):
                raise parameter_list_length_error("truncated mode page header", section="SPC-4 6.9")
            code = pages[pos] & 0x3F
            if pages[pos] & 0x40:
                raise invalid_field_in_parameter_list(
                    base_offset + pos, "sub-page format not supported", bit=6, section="SPC-4 7.5.7"
                )
            d = self.defs.get(code)
            if d is None:
                raise invalid_field_in_parameter_list(
                    base_offset + pos, f"mode page {code:#04x} not supported", section="SPC-4 6.9"
                )
            length = pages[pos + 1]
            if length != len(d.default) - 2:
                raise invalid_field_in_parameter_list(
                    base_offset + pos + 1, "wrong mode page length", section="SPC-4 6.9"
                )
            if pos + 2 + length > len(pages):
                raise parameter_list_length_error(
                    "mode page runs past the parameter list", section="SPC-4 6.9"
                )
            new = bytearray(pages[pos : pos + 2 + length])
            new[0] &= 0x3F  # PS is reserved in MODE SELECT (SPC-4 7.5.7)
            cur = staged.get(code, self.current[code])
            for i in range(2, len(new)):
                if (new[i] ^ cur[i]) & ~d.changeable[i] & 0xFF:
                    raise invalid_field_in_parameter_list(
                        base_offset + pos + i,
                        f"unchangeable field in {d.name} page",
                        section="SPC-4 6.9",
                    )
            if (
                code == ModePage.INFORMATIONAL_EXCEPTIONS_CONTROL
                and new[3] & 0x0F not in _MRIE_VALID
            ):
                raise invalid_field_in_parameter_list(
                    base_offset + pos + 3, "MRIE value not supported", section="SPC-4 7.5.11"
                )
            staged[code] = new
            pos += 2 + length
        changed = False
        for code, new in staged.items():
            if new != self.current[code]:
                self.current[code] = new
                changed = True
        return changed


__all__ = ["PAGES", "ModePageSet", "PageDef", "SCSIError"]
