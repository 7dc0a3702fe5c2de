"""Read an initramfs in Python: which files, and so which kernel modules, it holds.

An initramfs is one or more cpio archives, each uncompressed or compressed, concatenated with NUL
padding between them. Distributions put an uncompressed early-microcode archive
(``kernel/x86/microcode/*.bin``) in front of the compressed main archive. Both the newc/crc
(``070701``/``070702``, hex fields) and the old portable odc (``070707``, octal fields) headers are
read. Compressions: gzip, xz, lzma, bzip2, zstd, lz4 (legacy kernel format and frame format).

The reader streams: decompressed data is consumed in bounded chunks and file contents are skipped,
so memory stays bounded whatever the archive claims; every header field is validated before use,
and a bad archive raises :class:`InitramfsError` naming the structure and offset.

References:
  - Linux ``Documentation/driver-api/early-userspace/buffer-format.rst`` (concatenation, padding,
    compression detection by magic) and ``init/initramfs.c``, ``lib/decompress.c`` (the magics:
    gzip 1F8B, bzip2 "BZh", lzma 5D00, xz FD"7zXZ", lz4 legacy 02214C18, zstd 28B52FFD).
  - cpio(5) (libarchive): newc 110-byte header with 8-hex-digit fields, name and data padded to 4;
    odc 76-byte header with octal fields, no padding.
  - lz4 legacy format: magic then chunks (u32 LE compressed size, block of at most 8 MiB), ended
    by end of data or another magic (lz4 ``doc/lz4_Frame_format.md``, "Legacy frame").
  - initramfs-tools ``mkinitramfs``/``unmkinitramfs`` and ``lsinitramfs`` (the oracle in tests).
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .guest import module_name

CHUNK = 1 << 20
MAX_UNPACKED = 2 << 30          #: total decompressed bytes we accept walking through
MAX_NAME = 4096
MAX_ENTRIES = 1_000_000
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
LZ4_LEGACY_BLOCK = 8 << 20
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class InitramfsError(ValueError):
    """The initramfs cannot be read; the message names the structure and the offset."""


@dataclass(frozen=True)
class Segment:
    offset: int          #: byte offset of the segment in the initramfs file
    compression: str     #: "none", "gzip", "xz", "lzma", "bzip2", "zstd", "lz4-legacy", "lz4"
    entries: int


@dataclass(frozen=True)
class Initramfs:
    names: tuple[str, ...]
    segments: tuple[Segment, ...]

    @property
    def modules(self) -> frozenset[str]:
        """Module names (``hv_vmbus``; dashes as underscores) of every ``.ko[.xz|.zst|.gz]``."""
        return frozenset(module_name(n) for n in self.names if n.endswith(MODULE_SUFFIXES))


# -- chunked reading of one decompressed stream ---------------------------------------------
class _Reader:
    """Bytes from a chunk iterator, read/skipped in order, with a bounded buffer."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buf = b""
        self.off = 0          # read position in buf
        self.pos = 0          # offset of the read position in the stream

    def _avail(self) -> int:
        return len(self.buf) - self.off

    def _fill(self, n: int) -> None:
        if self._avail() >= n:
            return
        parts = [self.buf[self.off:]]
        have = len(parts[0])
        while have < n:
            nxt = next(self.chunks, None)
            if nxt is None:
                break
            parts.append(nxt)
            have += len(nxt)
        self.buf, self.off = b"".join(parts), 0

    def read(self, n: int) -> bytes:
        self._fill(n)
        out = self.buf[self.off:self.off + n]
        self.off += len(out)
        self.pos += len(out)
        return out

    def skip(self, n: int) -> int:
        done = 0
        while done < n:
            if not self._avail():
                self._fill(1)
                if not self._avail():
                    break
            take = min(n - done, self._avail())
            self.off += take
            done += take
        self.pos += done
        return done

    def skip_zeros(self) -> bool:
        """Skip NUL padding; False at end of stream."""
        while True:
            self._fill(1)
            if not self._avail():
                return False
            view = self.buf[self.off:self.off + CHUNK]
            zeros = len(view) - len(view.lstrip(b"\0"))
            self.off += zeros
            self.pos += zeros
            if zeros < len(view):
                return True


# -- decompressors: each yields bounded chunks and records how much input it consumed ------
class _Stream:
    def __init__(self, data: memoryview, start: int) -> None:
        self.data, self.start = data, start
        self.consumed: int | None = None      # input bytes used; None = to the end
        self.total = 0

    def out(self, chunk: bytes) -> bytes:
        self.total += len(chunk)
        if self.total > MAX_UNPACKED:
            raise InitramfsError(f"initramfs segment at offset {self.start}: more than "
                                 f"{MAX_UNPACKED} bytes decompressed")
        return chunk


def _inputs(data: memoryview) -> Iterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield bytes(data[i:i + CHUNK])


def _zlib_like(s: _Stream, make: Callable[[], object]) -> Iterator[bytes]:
    """gzip/xz/lzma/bzip2 via their ``decompress(data, max_length)`` objects."""
    try:
        yield from _zlib_like_raw(s, make)
    except (zlib.error, lzma.LZMAError, OSError, EOFError) as e:
        raise InitramfsError(f"initramfs segment at offset {s.start}: {e}") from None


def _zlib_like_raw(s: _Stream, make: Callable[[], object]) -> Iterator[bytes]:
    d = make()
    fed = 0
    for piece in _inputs(s.data[s.start:]):
        fed += len(piece)
        while piece:
            yield s.out(d.decompress(piece, CHUNK))   # type: ignore[attr-defined]
            piece = _pending(d)
            if _finished(d):
                s.consumed = fed - len(d.unused_data)  # type: ignore[attr-defined]
                return
        while not _finished(d) and not _needs_input(d):
            chunk = d.decompress(b"", CHUNK)  # type: ignore[attr-defined]
            if not chunk:
                break
            yield s.out(chunk)
        if _finished(d):
            s.consumed = fed - len(d.unused_data)  # type: ignore[attr-defined]
            return
    raise InitramfsError(f"initramfs segment at offset {s.start}: compressed stream truncated")


def _pending(d: object) -> bytes:
    return getattr(d, "unconsumed_tail", b"")


def _finished(d: object) -> bool:
    return bool(getattr(d, "eof", False))


def _needs_input(d: object) -> bool:
    if hasattr(d, "needs_input"):
        return bool(d.needs_input)  # type: ignore[attr-defined]
    return not getattr(d, "unconsumed_tail", b"")


def _zstd(s: _Stream) -> Iterator[bytes]:
    import io

    import zstandard
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(s.data[s.start:]),
                                                         read_across_frames=False)
    try:
        while chunk := reader.read(CHUNK):
            yield s.out(chunk)
    except zstandard.ZstdError as e:
        raise InitramfsError(f"initramfs zstd segment at offset {s.start}: {e}") from None
    s.consumed = None   # the kernel tool writes one frame; anything after it is ignored here


def _lz4_frame(s: _Stream) -> Iterator[bytes]:
    import lz4.frame
    d = lz4.frame.LZ4FrameDecompressor()
    fed = 0
    try:
        for piece in _inputs(s.data[s.start:]):
            fed += len(piece)
            chunk = d.decompress(piece, CHUNK)
            while True:
                yield s.out(chunk)
                if d.eof or d.needs_input:
                    break
                chunk = d.decompress(b"", CHUNK)
            if d.eof:
                s.consumed = fed - len(d.unused_data or b"")
                return
    except RuntimeError as e:
        raise InitramfsError(f"initramfs lz4 segment at offset {s.start}: {e}") from None
    raise InitramfsError(f"initramfs lz4 segment at offset {s.start}: truncated")


def _lz4_legacy(s: _Stream) -> Iterator[bytes]:
    import lz4.block
    pos = s.start + 4
    data = s.data
    while pos + 4 <= len(data):
        if bytes(data[pos:pos + 4]) == LZ4_LEGACY_MAGIC:      # a new legacy stream continues
            pos += 4
            continue
        (size,) = struct.unpack_from("<I", data, pos)
        if size == 0 or size > LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK // 255 + 16 \
                or pos + 4 + size > len(data):
            break                                            # end of the lz4 data
        try:
            yield s.out(lz4.block.decompress(bytes(data[pos + 4:pos + 4 + size]),
                                             uncompressed_size=LZ4_LEGACY_BLOCK))
        except lz4.block.LZ4BlockError as e:
            raise InitramfsError(f"initramfs lz4 block at offset {pos}: {e}") from None
        pos += 4 + size
    s.consumed = pos - s.start


COMPRESSIONS: tuple[tuple[bytes, str, Callable[[_Stream], Iterator[bytes]]], ...] = (
    (b"\x1f\x8b", "gzip", lambda s: _zlib_like(s, lambda: zlib.decompressobj(wbits=31))),
    (b"\x1f\x9e", "gzip", lambda s: _zlib_like(s, lambda: zlib.decompressobj(wbits=31))),
    (b"\xfd7zXZ\x00", "xz", lambda s: _zlib_like(s, lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ))),
    (b"\x5d\x00\x00", "lzma",
     lambda s: _zlib_like(s, lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE))),
    (b"BZh", "bzip2", lambda s: _zlib_like(s, bz2.BZ2Decompressor)),
    (b"\x28\xb5\x2f\xfd", "zstd", _zstd),
    (LZ4_LEGACY_MAGIC, "lz4-legacy", _lz4_legacy),
    (b"\x04\x22\x4d\x18", "lz4", _lz4_frame),
)


# -- cpio --------------------------------------------------------------------------------------
NEWC_LEN, ODC_LEN = 110, 76
#: magic -> header length, alignment, (filesize offset, width), (namesize offset, width), base
CPIO_LAYOUTS = {
    b"070701": (NEWC_LEN, 4, (54, 8), (94, 8), 16),
    b"070702": (NEWC_LEN, 4, (54, 8), (94, 8), 16),
    b"070707": (ODC_LEN, 1, (65, 11), (59, 6), 8),
}


def _field(hdr: bytes, start: int, width: int, base: int, where: str) -> int:
    try:
        return int(hdr[start:start + width], base)
    except ValueError:
        raise InitramfsError(f"cpio header at {where}: field at +{start} is not a number") \
            from None


def _cpio_entries(r: _Reader, origin: str, names: list[str], one: bool = False) -> int:
    """Read cpio archives from ``r`` until its end (``one``: up to the first TRAILER); append
    names; return the entry count."""
    count = 0
    while r.skip_zeros():
        at = f"{origin}+{r.pos}"
        magic = r.read(6)
        layout = CPIO_LAYOUTS.get(magic)
        if layout is None:
            raise InitramfsError(f"cpio archive at {at}: bad magic {magic!r}")
        hdr_len, align, (fs_at, fs_w), (ns_at, ns_w), base = layout
        hdr = magic + r.read(hdr_len - 6)
        if len(hdr) < hdr_len:
            raise InitramfsError(f"cpio header at {at}: truncated")
        fsize = _field(hdr, fs_at, fs_w, base, at)
        nsize = _field(hdr, ns_at, ns_w, base, at)
        if not 1 <= nsize <= MAX_NAME:
            raise InitramfsError(f"cpio header at {at}: name size {nsize} out of range")
        name = r.read(nsize)
        if len(name) < nsize:
            raise InitramfsError(f"cpio header at {at}: name truncated")
        r.skip(-(hdr_len + nsize) % align)
        text = name.rstrip(b"\0").decode("utf-8", "replace")
        if text == "TRAILER!!!":
            if one:
                return count
            continue
        if r.skip(fsize) < fsize:
            raise InitramfsError(f"cpio entry {text!r} at {at}: data truncated ({fsize} bytes)")
        r.skip(-fsize % align)
        names.append(text[2:] if text.startswith("./") else text)
        count += 1
        if len(names) > MAX_ENTRIES:
            raise InitramfsError(f"cpio archive at {at}: more than {MAX_ENTRIES} entries")
    return count


def _skip_zeros(mv: memoryview, pos: int) -> int:
    while pos < len(mv):
        window = bytes(mv[pos:pos + CHUNK])
        stripped = window.lstrip(b"\0")
        pos += len(window) - len(stripped)
        if stripped:
            break
    return pos


def read_initramfs(data: bytes, name: str = "initramfs") -> Initramfs:
    """Every file name in the initramfs ``data`` (all concatenated archives)."""
    mv = memoryview(data)
    names: list[str] = []
    segments: list[Segment] = []
    pos = _skip_zeros(mv, 0)
    while pos < len(mv):
        head = bytes(mv[pos:pos + 6])
        if head.startswith(b"0707"):
            # uncompressed cpio (early microcode): up to its TRAILER, then what follows
            r = _Reader(_inputs(mv[pos:]))
            n = _cpio_entries(r, f"{name}@{pos}", names, one=True)
            segments.append(Segment(pos, "none", n))
            pos = _skip_zeros(mv, pos + r.pos)
            continue
        for magic, kind, fn in COMPRESSIONS:
            if head.startswith(magic):
                s = _Stream(mv, pos)
                n = _cpio_entries(_Reader(fn(s)), f"{name}@{pos}[{kind}]", names)
                segments.append(Segment(pos, kind, n))
                if s.consumed is None or s.consumed <= 0:
                    return Initramfs(tuple(names), tuple(segments))
                pos = _skip_zeros(mv, pos + s.consumed)
                break
        else:
            raise InitramfsError(f"{name}: unknown data at offset {pos} (magic {head.hex()})")
    return Initramfs(tuple(names), tuple(segments))


__all__ = ["read_initramfs", "Initramfs", "Segment", "InitramfsError", "MODULE_SUFFIXES"]
