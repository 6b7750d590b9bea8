#!/usr/bin/env python3
"""Log in and do SCSI I/O through the real libiscsi (libiscsi.so.7), via ctypes.

libiscsi-bin ships no generic read/write tool, so the driver runs this small program
(on the host, or inside the libiscsi container) for what iscsi-inq/iscsi-ls cannot do.
Standard library only: it runs in a container with nothing but python3 and libiscsi7.

    libiscsi_io.py URL login
    libiscsi_io.py URL inquiry [--evpd N] [--page N] [--alloc N] --out FILE
    libiscsi_io.py URL read --lba N --blocks N --block-size N --out FILE
    libiscsi_io.py URL write --lba N --block-size N --data FILE

URL is libiscsi's ``iscsi://host[:port]/iqn/lun[?header_digest=crc32c|none]``.
CHAP comes from the environment, as libiscsi's own tools read it:
LIBISCSI_CHAP_USERNAME / LIBISCSI_CHAP_PASSWORD (one-way) and
LIBISCSI_CHAP_TARGET_USERNAME / LIBISCSI_CHAP_TARGET_PASSWORD (mutual).
``--initiator-name`` sets the InitiatorName. Prints one JSON object on stdout;
exit 0 on success, 2 when the login failed, 3 when a SCSI command failed.

The ``scsi_task`` layout below is libiscsi 1.19's (include/scsi-lowlevel.h).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import sys

SCSI_CDB_MAX_SIZE = 16
SCSI_STATUS_GOOD = 0
ISCSI_SESSION_NORMAL = 2
DEFAULT_INITIATOR = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-conformance"


class ScsiSense(ctypes.Structure):
    _fields_ = [
        ("error_type", ctypes.c_ubyte),
        ("key", ctypes.c_int),
        ("ascq", ctypes.c_int),  # libiscsi keeps ASC << 8 | ASCQ here
        # C declares these ``unsigned x:1``; GCC packs the next ``unsigned char`` into
        # the same word, which ctypes only reproduces with byte-wide bitfields.
        ("sense_specific", ctypes.c_ubyte, 1),
        ("ill_param_in_cdb", ctypes.c_ubyte, 1),
        ("bit_pointer_valid", ctypes.c_ubyte, 1),
        ("bit_pointer", ctypes.c_ubyte),
        ("field_pointer", ctypes.c_uint16),
    ]


assert ctypes.sizeof(ScsiSense) == 16, "struct scsi_sense layout of libiscsi 1.19"


class ScsiData(ctypes.Structure):
    _fields_ = [("size", ctypes.c_int), ("data", ctypes.POINTER(ctypes.c_ubyte))]


class ScsiTask(ctypes.Structure):
    _fields_ = [
        ("status", ctypes.c_int),
        ("cdb_size", ctypes.c_int),
        ("xfer_dir", ctypes.c_int),
        ("expxferlen", ctypes.c_int),
        ("cdb", ctypes.c_ubyte * SCSI_CDB_MAX_SIZE),
        ("residual_status", ctypes.c_int),
        ("residual", ctypes.c_size_t),
        ("sense", ScsiSense),
        ("datain", ScsiData),
        # further fields are not read here
    ]


class IscsiUrl(ctypes.Structure):
    # struct iscsi_url { char portal[MAX_STRING_SIZE+1]; char target[...]; char user[...];
    # char passwd[...]; char target_user[...]; char target_passwd[...]; int lun; ... }
    # Only ``portal`` and ``lun`` are read; MAX_STRING_SIZE is 255 in libiscsi 1.19.
    _fields_ = [
        ("portal", ctypes.c_char * 256),
        ("target", ctypes.c_char * 256),
        ("user", ctypes.c_char * 256),
        ("passwd", ctypes.c_char * 256),
        ("target_user", ctypes.c_char * 256),
        ("target_passwd", ctypes.c_char * 256),
        ("lun", ctypes.c_int),
    ]


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("iscsi") or "libiscsi.so.7"
    lib = ctypes.CDLL(name)
    vp, cp, i, u32, u64 = (
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
        ctypes.c_uint64,
    )
    task_p = ctypes.POINTER(ScsiTask)
    sig = {
        "iscsi_create_context": (vp, [cp]),
        "iscsi_destroy_context": (i, [vp]),
        "iscsi_parse_full_url": (ctypes.POINTER(IscsiUrl), [vp, cp]),
        "iscsi_destroy_url": (None, [ctypes.POINTER(IscsiUrl)]),
        "iscsi_set_targetname": (i, [vp, cp]),
        "iscsi_set_session_type": (i, [vp, i]),
        "iscsi_set_initiator_username_pwd": (i, [vp, cp, cp]),
        "iscsi_set_target_username_pwd": (i, [vp, cp, cp]),
        "iscsi_set_header_digest": (i, [vp, i]),
        "iscsi_full_connect_sync": (i, [vp, cp, i]),
        "iscsi_logout_sync": (i, [vp]),
        "iscsi_disconnect": (i, [vp]),
        "iscsi_get_error": (cp, [vp]),
        "iscsi_inquiry_sync": (task_p, [vp, i, i, i, i]),
        "iscsi_read16_sync": (task_p, [vp, i, u64, u32, i, i, i, i, i, i]),
        "iscsi_write16_sync": (task_p, [vp, i, u64, ctypes.c_char_p, u32, i, i, i, i, i, i]),
        "scsi_free_scsi_task": (None, [task_p]),
    }
    for fname, (restype, argtypes) in sig.items():
        fn = getattr(lib, fname)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def _emit(obj: dict, code: int) -> int:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    return code


def _task_result(lib, ctx, task) -> dict:
    if not task:
        return {"ok": False, "error": (lib.iscsi_get_error(ctx) or b"").decode(errors="replace")}
    t = task.contents
    out = {"ok": t.status == SCSI_STATUS_GOOD, "status": t.status, "residual": int(t.residual)}
    if t.status != SCSI_STATUS_GOOD:
        out.update(
            sense_key=int(t.sense.key),
            asc=(int(t.sense.ascq) >> 8) & 0xFF,
            ascq=int(t.sense.ascq) & 0xFF,
            error=(lib.iscsi_get_error(ctx) or b"").decode(errors="replace"),
        )
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("url")
    p.add_argument("action", choices=["login", "inquiry", "read", "write"])
    p.add_argument("--initiator-name", default=DEFAULT_INITIATOR)
    p.add_argument("--evpd", type=int, default=0)
    p.add_argument("--page", type=int, default=0)
    p.add_argument("--alloc", type=int, default=255)
    p.add_argument("--lba", type=int, default=0)
    p.add_argument("--blocks", type=int, default=1)
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--data")
    p.add_argument("--out")
    a = p.parse_args(argv)

    lib = _lib()
    ctx = lib.iscsi_create_context(a.initiator_name.encode())
    if not ctx:
        return _emit({"ok": False, "stage": "context", "error": "iscsi_create_context failed"}, 1)
    try:
        url = lib.iscsi_parse_full_url(ctx, a.url.encode())
        if not url:
            return _emit(
                {
                    "ok": False,
                    "stage": "url",
                    "error": lib.iscsi_get_error(ctx).decode(errors="replace"),
                },
                1,
            )
        lun = url.contents.lun
        portal = url.contents.portal
        lib.iscsi_destroy_url(url)
        # iscsi_parse_full_url already applied the target name, CHAP (URL or environment)
        # and the header digest; only the session type is left.
        lib.iscsi_set_session_type(ctx, ISCSI_SESSION_NORMAL)
        if lib.iscsi_full_connect_sync(ctx, portal, lun) != 0:
            err = (lib.iscsi_get_error(ctx) or b"").decode(errors="replace")
            return _emit({"ok": False, "stage": "login", "error": err}, 2)
        result: dict = {"ok": True, "stage": a.action, "lun": lun}
        code = 0
        if a.action == "inquiry":
            task = lib.iscsi_inquiry_sync(ctx, lun, a.evpd, a.page, a.alloc)
            result.update(_task_result(lib, ctx, task))
            if task and result["ok"]:
                t = task.contents
                data = ctypes.string_at(t.datain.data, t.datain.size) if t.datain.size > 0 else b""
                with open(a.out, "wb") as f:
                    f.write(data)
                result["length"] = len(data)
            if task:
                lib.scsi_free_scsi_task(task)
        elif a.action == "read":
            length = a.blocks * a.block_size
            task = lib.iscsi_read16_sync(ctx, lun, a.lba, length, a.block_size, 0, 0, 0, 0, 0)
            result.update(_task_result(lib, ctx, task))
            if task and result["ok"]:
                t = task.contents
                data = ctypes.string_at(t.datain.data, t.datain.size) if t.datain.size > 0 else b""
                with open(a.out, "wb") as f:
                    f.write(data)
                result["length"] = len(data)
            if task:
                lib.scsi_free_scsi_task(task)
        elif a.action == "write":
            with open(a.data, "rb") as f:
                data = f.read()
            task = lib.iscsi_write16_sync(
                ctx, lun, a.lba, data, len(data), a.block_size, 0, 0, 0, 0, 0
            )
            result.update(_task_result(lib, ctx, task))
            result["length"] = len(data)
            if task:
                lib.scsi_free_scsi_task(task)
        if not result.get("ok"):
            code = 3
        lib.iscsi_logout_sync(ctx)
        return _emit(result, code)
    finally:
        lib.iscsi_destroy_context(ctx)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
