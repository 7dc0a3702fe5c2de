"""Recognise an image's format from its magic bytes, in a fixed order.

Order matters: qcow2 and VHDX have a signature at offset 0; a dynamic or differencing VHD has a
copy of its footer at offset 0; a fixed VHD has its footer only in the last 512 bytes (511 for
images older than Virtual PC 2004).  Only what carries none of these is raw.  A fixed VHD is never
read as raw (its footer would become guest data) and raw is never taken for a VHD unless its last
sector really is a VHD footer.
"""

from __future__ import annotations

import os
from importlib import import_module

from .errors import FormatError, UnknownFormat
from .image import DiskImage, open_file

#: format name -> (module relative to this package, class); modules are imported on first use.
FORMATS: dict[str, tuple[str, str]] = {
    "raw": (".raw", "RawImage"),
    "vpc": (".vhd", "VhdImage"),
    "vhdx": (".vhdx", "VhdxImage"),
    "qcow2": (".qcow2", "Qcow2Image"),
}
#: names users may also write
ALIASES = {"vhd": "vpc"}

QCOW2_MAGIC = b"QFI\xfb"
VHDX_MAGIC = b"vhdxfile"
VHD_COOKIE = b"conectix"


def probe(path: str | os.PathLike[str]) -> str:
    """The format name (qemu-img's spelling: raw, vpc, vhdx, qcow2) of the file at ``path``."""
    fd, size = open_file(path)
    try:
        head = os.pread(fd, 512, 0)
        tail = os.pread(fd, 512, size - 512) if size >= 512 else b""
    except OSError as e:
        raise type(e)(e.errno, e.strerror, os.fspath(path)) from e
    finally:
        os.close(fd)
    if head[:4] == QCOW2_MAGIC:
        return "qcow2"
    if head[:8] == VHDX_MAGIC:
        return "vhdx"
    if head[:8] == VHD_COOKIE:
        return "vpc"
    if tail[:8] == VHD_COOKIE or tail[1:9] == VHD_COOKIE:
        return "vpc"
    return "raw"


def open_image(path: str | os.PathLike[str], fmt: str | None = None,
               _chain: tuple[str, ...] = ()) -> DiskImage:
    """Open ``path`` read-only as ``fmt`` (probed when None).

    Backing and parent files are opened through this function too; ``_chain`` (the real paths
    already open above this one) stops loops and absurdly deep chains.
    """
    real = os.path.realpath(path)
    if real in _chain:
        raise FormatError(path, "backing chain", None,
                          "loop: " + " -> ".join(_chain + (real,)))
    if len(_chain) >= 64:
        raise FormatError(path, "backing chain", None, "chain deeper than 64 images")
    name = ALIASES.get(fmt, fmt) if fmt else probe(path)
    if name not in FORMATS:
        raise UnknownFormat(path, "format", None,
                            f"unknown format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
    module, cls = FORMATS[name]
    image_cls = getattr(import_module(module, __package__), cls)
    return image_cls(path, _chain=_chain + (real,)) if name != "raw" else image_cls(path)
