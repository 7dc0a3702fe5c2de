"""``vhdtool convert``: any supported image to a fixed, whole-MiB VHD that Azure accepts.

The copy is planned from the source's allocation map (``DiskImage.extents()``): unallocated and
zero runs become holes in a sparse output; data runs are read in large blocks and each 64 KiB piece
that is all zeros is skipped too.  For raw and fixed-VHD sources with no digest to compute, data
runs are copied by the kernel (``copy_file_range``).  Digests cover every byte of the output file
— the virtual disk with its holes and padding, then the 512-byte footer — and are computed in the
same pass by a worker thread (hashlib releases the GIL on large buffers), so hashing overlaps I/O.

The output is written to a temporary file in the destination's folder, its footer re-read and
verified, then renamed over the destination: an error, a full disk or Ctrl-C leaves no half-written
VHD under the final name and the source is never modified (except with ``in_place``, which only
grows a raw or fixed-VHD file to a whole MiB and (re)writes its footer, without copying data).

When the disk grows to reach a whole MiB and carries a GPT, the backup header and entries move to
the new last LBA (what ``sgdisk -e`` does), patched into the same single pass so digests match.

References:
- Microsoft Virtual Hard Disk Image Format Specification (fixed disk footer: the last 512 bytes).
- qemu block/vpc.c (``force_size``, the 2040 GiB limit) and qemu-img.c (``convert``: zero
  detection, sparse output) — for the behaviour this command improves on.
- Azure: learn.microsoft.com/azure/virtual-machines/linux/create-upload-generic (virtual size
  aligned to 1 MiB, fixed VHD only); .../disks-upload-vhd-to-managed-disk-cli (upload size between
  20 MiB + 512 and 32 TiB + 512 bytes) — /work/shared/reference/azure-requirements.md
  ``disk.size.*``.
- UEFI 2.10 §5.3 (GPT backup header at the last LBA), sgdisk(8) ``-e``.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import heapq
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from formats import DiskImage, Kind, open_image

from .progress import Progress

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
FOOTER_SIZE = 512
#: largest read/hash unit; NBUF of them are in flight at once (memory: NBUF * BLOCK)
BLOCK = 8 * MiB
NBUF = 4
#: granularity of zero detection inside data runs (and of output allocation)
CHUNK = 64 * 1024
#: data runs closer than this are read as one window
GAP = 1 * MiB
#: Azure direct upload: UploadSizeBytes between 20 MiB + 512 and 32 TiB + 512 (UPL, MKT)
AZURE_MIN_SIZE = 20 * MiB
AZURE_MAX_SIZE = 32 * TiB
DIGESTS = ("sha256", "md5")

_ZEROS = bytes(BLOCK)
_ZERO_CHUNK = bytes(CHUNK)

Patch = tuple[int, bytes]


class ConvertError(Exception):
    """The conversion was refused or failed; the message names the file concerned."""


# -- sizes ------------------------------------------------------------------------------------------
def rounded_size(virtual_size: int) -> int:
    """``virtual_size`` rounded up to a whole MiB (never down, never 0)."""
    return max(MiB, -(-virtual_size // MiB) * MiB)


def size_warnings(size: int) -> list[str]:
    """Azure limits a size of ``size`` bytes meets (the hard 32 TiB limit is an error instead)."""
    out = []
    if size < AZURE_MIN_SIZE:
        out.append(f"{size} bytes is below Azure's 20 MiB minimum upload size")
    if size > 4 * TiB:
        out.append("larger than 4 TiB: usable as a data disk only, not as an OS disk")
    elif size > 2 * TiB:
        out.append("larger than 2 TiB: as an OS disk it needs a Generation 2 VM")
    if size > 2040 * GiB:
        out.append("larger than 2040 GiB: qemu-img and Hyper-V's VHD tools refuse VHDs this big")
    return out


def check_size(size: int, dst: str) -> None:
    if size > AZURE_MAX_SIZE:
        raise ConvertError(f"{dst}: a {size}-byte disk exceeds Azure's upload limit of "
                           f"{AZURE_MAX_SIZE} bytes (32 TiB) for a VHD")


# -- the footer and the GPT (from the format core) --------------------------------------------------
def gpt_patches(img: DiskImage, size: int) -> list[Patch]:
    """Writes that move a GPT's backup to the last LBA of a disk grown to ``size`` (else none)."""
    if size <= img.virtual_size:
        return []
    from formats.partitions import relocate_gpt_backup

    return list(relocate_gpt_backup(img.read, img.virtual_size, size, img.logical_sector_size))


def make_footer(size: int, unique_id: bytes | None = None) -> bytes:
    from formats.vhd import build_fixed_footer

    footer = build_fixed_footer(size, unique_id=unique_id)
    if len(footer) != FOOTER_SIZE:
        raise AssertionError("build_fixed_footer must give 512 bytes")
    return footer


def verify_footer(fd: int, path: str, size: int) -> Any:
    """Re-read the footer just written at ``size`` and check that it reads back as ``size``."""
    from formats.vhd import parse_footer

    data = os.pread(fd, FOOTER_SIZE, size)
    footer = parse_footer(data, path, size, verify=True)
    if footer.current_size != size or os.fstat(fd).st_size != size + FOOTER_SIZE:
        raise ConvertError(f"{path}: the footer written reads back as {footer.current_size} "
                           f"bytes, not {size}")
    return footer


# -- digests --------------------------------------------------------------------------------------
def digest_names(names: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for n in names:
        if n == "none":
            return ()
        if n not in DIGESTS:
            raise ConvertError(f"unknown digest {n!r}; known: sha256, md5, none")
        if n not in out:
            out.append(n)
    return tuple(out)


def digest_report(hashes: Sequence[Any], file_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not hashes:
        return out
    out["covers"] = (f"every byte of the output file: {file_size} bytes = the virtual disk "
                     f"(holes and padding as zeros) followed by the 512-byte VHD footer; the "
                     f"same bytes Azure's page-blob Content-MD5 covers")
    for h in hashes:
        d = h.digest()
        out[h.name] = d.hex()
        if h.name == "md5":
            out["md5_base64"] = base64.b64encode(d).decode("ascii")
    return out


class Hasher:
    """Hashes a stream of buffers and zero runs in a worker thread, in order.

    Buffers come from a small pool: :meth:`buffer` hands one out (waiting while all are in use)
    and the worker returns it once hashed, which bounds memory to ``NBUF * BLOCK``.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.hashes = [hashlib.new(n) for n in names]
        self._pool: queue.Queue[bytearray] = queue.Queue()
        for _ in range(NBUF if self.hashes else 1):
            self._pool.put(bytearray(BLOCK))
        self._work: queue.Queue[tuple[bytearray | None, int] | None] = queue.Queue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vhdtool-hash", daemon=True)
        if self.hashes:
            self._thread.start()

    def buffer(self) -> bytearray:
        return self._pool.get()

    def data(self, buf: bytearray, n: int) -> None:
        """Hash ``buf[:n]`` next; ``buf`` goes back to the pool afterwards."""
        if self.hashes:
            self._work.put((buf, n))
        else:
            self._pool.put(buf)

    def zeros(self, n: int) -> None:
        if self.hashes and n > 0:
            self._work.put((None, n))

    def _run(self) -> None:
        zmv = memoryview(_ZEROS)
        while (item := self._work.get()) is not None:
            buf, n = item
            try:
                if self._stop.is_set() or self._error is not None:
                    continue
                if buf is not None:
                    view = memoryview(buf)[:n]
                    for h in self.hashes:
                        h.update(view)
                    continue
                while n > 0 and not self._stop.is_set():
                    k = min(n, BLOCK)
                    for h in self.hashes:
                        h.update(zmv[:k])
                    n -= k
            except BaseException as e:  # noqa: BLE001 — handed to the main thread in finish()
                self._error = e
            finally:
                if buf is not None:
                    self._pool.put(buf)

    def finish(self) -> list[Any]:
        if self.hashes:
            self._work.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self.hashes

    def abort(self) -> None:
        self._stop.set()
        if self.hashes:
            self._work.put(None)


# -- planning ---------------------------------------------------------------------------------------
def windows(img: DiskImage, size: int, patches: Sequence[Patch], align: int = CHUNK,
            gap: int = GAP) -> Iterator[tuple[int, int]]:
    """Ranges of ``[0, size)`` to materialise (data runs and GPT patches), ``align``-aligned,
    merged when closer than ``gap``, ascending; everything between them is a hole.  Streams the
    map, so memory does not grow with the number of extents."""
    data = ((e.offset, e.end) for e in img.extents() if e.kind is Kind.DATA)
    spans = heapq.merge(data, sorted((o, o + len(b)) for o, b in patches))
    cur: tuple[int, int] | None = None
    for a, b in spans:
        a, b = a // align * align, min(size, -(-b // align) * align)
        if cur is not None and a <= cur[1] + GAP:
            cur = (cur[0], max(cur[1], b))
            continue
        if cur is not None:
            yield cur
        cur = (a, b)
    if cur is not None:
        yield cur


def _kernel_copy_ok(img: DiskImage) -> bool:
    return img.format_name == "raw" or (img.format_name == "vpc" and img.subformat == "fixed")


# -- the pass over the virtual disk -----------------------------------------------------------------
@dataclass
class Copier:
    """One ordered pass over ``[0, size)`` of ``img``: holes skipped, data written to ``out_fd``
    (None: hash only), every byte fed to ``hasher``, GPT ``patches`` applied on the way."""

    img: DiskImage
    size: int
    out_fd: int | None
    hasher: Hasher
    progress: Progress
    patches: Sequence[Patch] = ()
    kernel_copy: bool = False
    stats: dict[str, int] = field(default_factory=lambda: {"written": 0, "zero_skipped": 0})

    def run(self) -> None:
        pos = 0
        # a kernel copy cannot skip zeros: copy the data runs exactly, so holes stay holes
        shape = {"align": 1, "gap": 0} if self.kernel_copy else {}
        for a, b in windows(self.img, self.size, [] if self.kernel_copy else self.patches,
                            **shape):
            self._hole(pos, a)
            if self.kernel_copy:
                self._kernel(a, b)
            else:
                for off in range(a, b, BLOCK):
                    self._block(off, min(BLOCK, b - off))
            pos = b
        self._hole(pos, self.size)
        if self.kernel_copy:
            for off, data in self.patches:
                self._write(data, off)

    def _hole(self, a: int, b: int) -> None:
        if b > a:
            self.hasher.zeros(b - a)
            self.progress.advance(b - a)

    def _kernel(self, a: int, b: int) -> None:
        assert self.out_fd is not None
        src = self.img.fileno()
        end = min(b, self.img.virtual_size)
        pos = a
        while pos < end:
            n = os.copy_file_range(src, self.out_fd, min(end - pos, 1 << 30), pos, pos)
            if n <= 0:
                raise ConvertError(f"{self.img.path}: short read at {pos:#x} while copying")
            pos += n
            self.progress.advance(n)
        self.stats["written"] += max(0, end - a)
        self.progress.advance(b - max(end, a))

    def _block(self, off: int, n: int) -> None:
        buf = self.hasher.buffer()
        try:
            view = memoryview(buf)[:n]
            view[:] = _ZEROS[:n]
            vs = self.img.virtual_size
            if off < vs:
                self.img.readinto(off, view[:min(n, vs - off)])
            for p_off, p_data in self.patches:
                lo, hi = max(off, p_off), min(off + n, p_off + len(p_data))
                if lo < hi:
                    view[lo - off:hi - off] = p_data[lo - p_off:hi - p_off]
            if self.out_fd is not None:
                self._write_nonzero(buf, n, off)
        except BaseException:
            self.hasher.data(buf, 0)
            raise
        self.hasher.data(buf, n)
        self.progress.advance(n)

    def _write_nonzero(self, buf: bytearray, n: int, off: int) -> None:
        """pwrite the runs of non-zero CHUNKs of ``buf[:n]`` (``off`` is CHUNK-aligned)."""
        run_start = -1
        for i in range(0, n, CHUNK):
            zero = buf.startswith(_ZERO_CHUNK[:min(CHUNK, n - i)], i)
            if not zero and run_start < 0:
                run_start = i
            elif zero and run_start >= 0:
                self._write(memoryview(buf)[run_start:i], off + run_start)
                run_start = -1
            if zero:
                self.stats["zero_skipped"] += min(CHUNK, n - i)
        if run_start >= 0:
            self._write(memoryview(buf)[run_start:n], off + run_start)

    def _write(self, data: bytes | memoryview, off: int) -> None:
        assert self.out_fd is not None
        mv = memoryview(data)
        done = 0
        while done < len(mv):
            done += os.pwrite(self.out_fd, mv[done:], off + done)
        self.stats["written"] += len(mv)


# -- results ----------------------------------------------------------------------------------------
@dataclass
class ConvertResult:
    source: dict[str, Any]
    output: dict[str, Any]
    digests: dict[str, Any]
    timings: dict[str, float]
    warnings: list[str]
    gpt_relocated: bool
    in_place: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "output": self.output, "digests": self.digests,
                "gpt_backup_relocated": self.gpt_relocated, "in_place": self.in_place,
                "warnings": self.warnings, "timings": self.timings}


def _source_facts(img: DiskImage) -> dict[str, Any]:
    return {"path": img.path, "format": img.format_name, "subformat": img.subformat,
            "virtual_size": img.virtual_size}


def _output_facts(path: str, size: int, source_size: int, stats: dict[str, int]) -> dict[str, Any]:
    st = os.stat(path)
    return {"path": path, "format": "vpc", "subformat": "fixed", "virtual_size": size,
            "file_size": st.st_size, "rounded_by": size - source_size,
            "allocated": st.st_blocks * 512, "data_written": stats.get("written", 0),
            "zero_bytes_skipped_in_data": stats.get("zero_skipped", 0)}


# -- convert ----------------------------------------------------------------------------------------
def _refuse(src: str, dst: str, force: bool) -> None:
    if os.path.lexists(dst):
        if os.path.exists(dst) and os.path.samefile(src, dst):
            raise ConvertError(f"{dst}: is the source itself; use --in-place to convert in place")
        if not force:
            raise ConvertError(f"{dst}: exists; use --force to replace it")
        if os.path.isdir(dst):
            raise ConvertError(f"{dst}: is a directory")


def convert(src: str, dst: str, *, fmt: str | None = None, digests: Iterable[str] = ("sha256",),
            force: bool = False, progress: bool | None = None) -> ConvertResult:
    """Convert ``src`` (any supported format) to a fixed VHD at ``dst``; see the module doc."""
    t0 = time.perf_counter()
    names = digest_names(digests)
    _refuse(src, dst, force)
    with open_image(src, fmt) as img:
        size = rounded_size(img.virtual_size)
        check_size(size, dst)
        patches = gpt_patches(img, size)
        t_plan = time.perf_counter()
        folder = os.path.dirname(os.path.abspath(dst))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(dst) + ".",
                                   suffix=".part")
        hasher = Hasher(names)
        try:
            os.fchmod(fd, 0o644 & ~_umask())
            os.ftruncate(fd, size + FOOTER_SIZE)
            bar = Progress(size, "convert: ", enabled=progress)
            copier = Copier(img, size, fd, hasher, bar, patches,
                            kernel_copy=not names and _kernel_copy_ok(img))
            copier.run()
            footer = make_footer(size)
            os.pwrite(fd, footer, size)
            t_copy = time.perf_counter()
            buf = hasher.buffer()
            buf[:FOOTER_SIZE] = footer
            hasher.data(buf, FOOTER_SIZE)
            hashes = hasher.finish()
            t_hash = time.perf_counter()
            os.fsync(fd)
            verify_footer(fd, tmp, size)
            bar.finish()
            os.close(fd)
            fd = -1
            os.replace(tmp, dst)
            _fsync_dir(folder)
        except BaseException as e:
            hasher.abort()
            if fd >= 0:
                os.close(fd)
            _unlink(tmp)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ConvertError(f"{dst}: no space left on the device for the "
                                   f"{size + FOOTER_SIZE}-byte VHD; nothing was written under "
                                   f"that name") from e
            raise
        source = _source_facts(img)
    t_end = time.perf_counter()
    return ConvertResult(
        source=source, output=_output_facts(dst, size, source["virtual_size"], copier.stats),
        digests=digest_report(hashes, size + FOOTER_SIZE), warnings=size_warnings(size),
        gpt_relocated=bool(patches),
        timings={"plan": t_plan - t0, "copy": t_copy - t_plan, "hash_wait": t_hash - t_copy,
                 "total": t_end - t0})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(folder: str) -> None:
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- in place ---------------------------------------------------------------------------------------
def convert_in_place(src: str, *, fmt: str | None = None, digests: Iterable[str] = ("sha256",),
                     progress: bool | None = None) -> ConvertResult:
    """Make a raw or fixed-VHD file an Azure fixed VHD without copying its data: grow it to a whole
    MiB (holes), move a GPT backup, (re)write the footer.  Digests, if asked, re-read the result."""
    t0 = time.perf_counter()
    names = digest_names(digests)
    with open_image(src, fmt) as img:
        if not _kernel_copy_ok(img):
            raise ConvertError(f"{src}: --in-place needs a raw or fixed VHD source, not "
                               f"{img.format_name} {img.subformat}".rstrip())
        old_size = img.virtual_size
        size = rounded_size(old_size)
        check_size(size, src)
        patches = gpt_patches(img, size)
        unique_id = _old_unique_id(img)
        source = _source_facts(img)
    footer = make_footer(size, unique_id)
    fd = os.open(src, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        if source["format"] == "vpc" and size != old_size:
            os.ftruncate(fd, old_size)          # the old footer must not become guest data
        os.ftruncate(fd, size)
        for off, data in patches:
            os.pwrite(fd, data, off)
        os.pwrite(fd, footer, size)
        os.fsync(fd)
        verify_footer(fd, src, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ConvertError(f"{src}: no space left on the device to grow it in place") from e
        raise
    finally:
        os.close(fd)
    t_write = time.perf_counter()
    hashes = hash_file(src, names, progress) if names else []
    t_end = time.perf_counter()
    return ConvertResult(
        source=source, output=_output_facts(src, size, old_size, {}),
        digests=digest_report(hashes, size + FOOTER_SIZE), warnings=size_warnings(size),
        gpt_relocated=bool(patches), in_place=True,
        timings={"write": t_write - t0, "hash": t_end - t_write, "total": t_end - t0})


def _old_unique_id(img: DiskImage) -> bytes | None:
    """A fixed VHD converted in place keeps its identity."""
    footer = getattr(img, "footer", None)
    return getattr(footer, "unique_id", None)


def hash_file(path: str, names: Sequence[str], progress: bool | None = None) -> list[Any]:
    """Digests of every byte of the file at ``path``, holes hashed as zeros."""
    hasher = Hasher(names)
    try:
        with open_image(path, "raw") as whole:
            bar = Progress(whole.virtual_size, "hash: ", enabled=progress)
            Copier(whole, whole.virtual_size, None, hasher, bar).run()
            bar.finish()
        return hasher.finish()
    except BaseException:
        hasher.abort()
        raise
