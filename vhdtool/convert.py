"""``vhdtool convert``: any supported image to a fixed, whole-MiB VHD that Azure accepts.

The copy is planned from the source's allocation map (``DiskImage.extents()``): unallocated and zero
runs become holes in a sparse output; data runs are read in large blocks and each 64 KiB piece that
is all zeros is skipped too.  With no digest to compute nothing needs the bytes in order: data runs
are shared out to two copy threads, and those whose bytes lie as they are in a file
(``DiskImage.file_range``: raw, VHD, VHDX and qcow2 data clusters alike) are read from the file by
the copy threads themselves, 2 MiB at a time, and written minus their all-zero 64 KiB pieces; the
rest (compressed clusters, log-patched pages) is read by the main thread and written by the copy
threads.  (``copy_file_range`` with the zero test done through an ``mmap`` of the source was
measured slower here than 2 MiB ``preadv``/``pwrite`` — 0.30 s against 0.23 s of copy for 1 GiB on
ext4, see bench/README.md — and a source truncated under the mapping killed the process with SIGBUS;
reads instead meet a short read, a clean error.)  Every buffer is page-aligned (``page_buffer``) and
every write's blocks are allocated just before it (``allocate``): with both, a conversion takes
0.45-0.8 of qemu-img's wall time here (bench/README.md).  With digests, the main thread reads while
a writer thread writes the previous block and one thread per digest hashes the one before (hashlib
and the I/O calls release the GIL), through a pool of four 8 MiB buffers: memory does not grow with
the image.  Digests cover every byte of the output file — the virtual disk with its holes and
padding, then the 512-byte footer — in the same pass.

The output is written to a temporary file in the destination's folder, its footer re-read and
verified, then renamed to the destination: an error, a full disk or Ctrl-C leaves no half-written
VHD under the final name and the source is never modified — except with ``in_place``, which only
grows a raw or fixed-VHD file to a whole MiB and (re)writes its footer without copying data, and
puts the file back as it was if that fails.  A full disk is found before the rename because the
blocks of every write are allocated first (``allocate``); where the file system cannot do that,
the file is fsynced before the rename so that a write error the kernel defers to writeback is seen
too.  ``sync=True`` makes the result durable as well (fsync, rename, fsync of the folder), for a
machine that may go down before the VHD is uploaded; like qemu-img and cp, the default leaves the
data to the kernel's writeback.

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
import functools
import hashlib
import heapq
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from formats import CorruptImage, DiskImage, FormatError, Kind, TruncatedImage, open_image

from . import bmap
from .atomicfile import create_partial, remove_stale, unlink_quietly, write_atomic_bytes
from .progress import Progress
from .signals import InterruptedAfterOutput, deferred_signals, exit_code

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
FOOTER_SIZE = 512
#: largest read/hash unit; NBUF of them are in flight at once (memory: NBUF * BLOCK)
BLOCK = 8 * MiB
NBUF = 4
#: granularity of zero detection inside data runs (and of output allocation)
CHUNK = 64 * 1024
#: without digests, data runs are copied by this many threads, in pieces of COPY_STEP handed
#: out by the main thread, read and written COPY_BLOCK at a time (2 MiB stays in the CPU caches
#: between the read and the write: 8 MiB took twice the system time here)
COPY_THREADS = 2
COPY_STEP = 32 * MiB
COPY_BLOCK = 2 * MiB
#: data runs closer than this are read as one window
GAP = 1 * MiB
#: Azure direct upload: UploadSizeBytes between 20 MiB + 512 and 32 TiB + 512 (UPL, MKT)
AZURE_MIN_SIZE = 20 * MiB
AZURE_MAX_SIZE = 32 * TiB
#: bmap: the default, in proportion to the data (vhdtool.bmap); sha256, md5: every byte of the file
DIGESTS = ("bmap", "sha256", "md5")
DEFAULT_DIGESTS = ("bmap",)

_ZEROS = bytes(BLOCK)
_ZERO_CHUNK = bytes(CHUNK)

Patch = tuple[int, bytes]
#: a copy buffer (see page_buffer)
Buffer = mmap.mmap


class ConvertError(Exception):
    """The conversion was refused or failed; the message names the file concerned."""


# -- sizes -----------------------------------------------------------------------------------------
def _refuse_empty(img: DiskImage) -> None:
    """A disk of 0 bytes is a failed build, not an image: refused rather than padded to 1 MiB."""
    if img.virtual_size == 0:
        raise ConvertError(f"{img.path}: the image is empty (virtual size 0 bytes): "
                           "nothing to convert")


def structure_errors(img: DiskImage, salvage: bool) -> list[str]:
    """The error-level structure problems of ``img`` and its chain (what ``vhdtool info`` lists as
    errors: overlapping blocks, a bad checksum, a missing footer, data shorter than the size).

    A damaged image is refused (CorruptImage, exit 3, naming the first problem's structure and
    offset): converting it would bless it, and what its damaged parts read as is a guess that
    other readers (qemu-img, Hyper-V) may not share.  With ``salvage`` it is copied as vhdtool
    reads it, best-effort, and the problems come back as warnings for the result."""
    errors = [p for p in img.all_problems() if p.severity == "error"]
    if not errors or salvage:
        return [f"salvaged despite {p.structure}"
                + (f" at offset {p.offset:#x}" if p.offset is not None else "")
                + f": {p.message}" for p in errors]
    first = errors[0]
    more = f"; and {len(errors) - 1} more (vhdtool info {img.path})" if len(errors) > 1 else ""
    raise CorruptImage(img.path, first.structure, first.offset,
                       f"{first.message}{more} -- the image is damaged, so it is not converted "
                       f"(re-export it from its source; --salvage copies it anyway, best-effort, "
                       f"as vhdtool reads it)")


def rounded_size(virtual_size: int) -> int:
    """``virtual_size`` rounded up to a whole MiB (never down, never 0)."""
    return max(MiB, -(-virtual_size // MiB) * MiB)


def size_warnings(size: int, sector_size: int = 512) -> list[str]:
    """Azure limits a size of ``size`` bytes meets (the hard 32 TiB limit is an error instead),
    and a source sector size a VHD cannot keep."""
    out = []
    if size < AZURE_MIN_SIZE:
        out.append(f"{size} bytes is below Azure's 20 MiB minimum upload size")
    if size > 4 * TiB:
        out.append("larger than 4 TiB: usable as a data disk only, not as an OS disk")
    elif size > 2 * TiB:
        out.append("larger than 2 TiB: as an OS disk it needs a Generation 2 VM")
    elif size > 1023 * GiB:
        out.append("larger than 1,023 GiB: the Marketplace and Azure's generic Linux guide cap "
                   "OS disk VHDs there")
    if size > 2040 * GiB:
        out.append("larger than 2040 GiB: qemu refuses to open VHDs this big (Azure accepts up "
                   "to 32 TiB)")
    if sector_size != 512:
        out.append(f"the source has {sector_size}-byte logical sectors; a VHD has 512-byte "
                   "sectors, so a partition table laid out for the source's sectors will not be "
                   "found at the same LBAs")
    return out


def check_size(size: int, dst: str) -> None:
    if size > AZURE_MAX_SIZE:
        raise ConvertError(f"{dst}: a {size}-byte disk exceeds Azure's upload limit of "
                           f"{AZURE_MAX_SIZE} bytes (32 TiB) for a VHD")


# -- the footer and the GPT (from the format core) -------------------------------------------------
def gpt_patches(img: DiskImage, size: int) -> tuple[list[Patch], list[str]]:
    """Writes that move a GPT's backup to the last LBA of a disk grown to ``size`` (as
    ``sgdisk -e``), and warnings: a damaged primary GPT is copied as it is, not relocated."""
    if size <= img.virtual_size:
        return [], []
    from formats.partitions import read_partition_table, relocate_gpt_backup  # only when growing

    ss = img.logical_sector_size
    table = read_partition_table(img.read, img.virtual_size, ss, img.path)
    if table.gpt is None or table.gpt.primary is None:
        return [], []
    try:
        return list(relocate_gpt_backup(img.read, img.virtual_size, size, ss)), []
    except FormatError as e:
        return [], [f"GPT backup not moved to the new last LBA ({e.structure}: {e.message}); "
                    f"repair the table with sgdisk -e"]


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
    if (footer.current_size != size or footer.disk_type_name != "fixed"
            or os.fstat(fd).st_size != size + FOOTER_SIZE):
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
            raise ConvertError(f"unknown digest {n!r}; known: {', '.join(DIGESTS)}, none")
        if n not in out:
            out.append(n)
    return tuple(out)


def whole_file(names: Sequence[str]) -> tuple[str, ...]:
    """The digests among ``names`` that hash every byte of the file (hashlib names)."""
    return tuple(n for n in names if n != "bmap")


def digest_report(hashes: Sequence[Any], file_size: int, bm: bmap.Bmap | None = None,
                  bmap_path: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if bm is not None:
        out["bmap"] = bm.summary(bmap_path)
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


class _Stage:
    """A worker thread applying ``work`` to queued items in order, then handing each to ``done``
    (the next stage); its first error is kept for the main thread and later items are only
    passed on, so buffers always go back to the pool."""

    def __init__(self, name: str, work: Callable[[Item], None], done: Callable[[Item], None],
                 stop: threading.Event):
        self.work, self.done, self.stop = work, done, stop
        self.error: BaseException | None = None
        self.q: queue.Queue[Item | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.q.get()) is not None:
            try:
                if self.error is None and not self.stop.is_set():
                    self.work(item)
            except BaseException as e:  # noqa: BLE001 — re-raised in the main thread
                self.error = e
            finally:
                self.done(item)

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()


def page_buffer(size: int) -> mmap.mmap:
    """A zeroed buffer of ``size`` bytes that starts on a page boundary, its pages faulted in only
    when first touched.  The kernel's copies between the page cache and a buffer (``rep movsb``)
    ran about twice as slow into a ``bytearray``, whose data starts 16 bytes past a page boundary:
    perf of a 1 GiB conversion here, 799 against 333 samples in ``_copy_to_iter``."""
    return mmap.mmap(-1, size)


class BufferPool:
    """Up to ``count`` buffers of ``size`` bytes, each made when first needed (a path that needs
    one buffer holds one); ``get`` waits for one to come back once all are made."""

    def __init__(self, count: int = NBUF, size: int = BLOCK) -> None:
        self._q: queue.Queue[Buffer] = queue.Queue()
        self._left = count
        self._size = size
        self._lock = threading.Lock()

    def get(self) -> Buffer:
        with self._lock:
            if self._left and self._q.empty():
                self._left -= 1
                return page_buffer(self._size)
        return self._q.get()

    def put(self, buf: Buffer) -> None:
        self._q.put(buf)


#: (buffer or None for a run of zeros, length, output offset, non-zero runs to write)
Item = tuple[Buffer | None, int, int, Sequence[tuple[int, int]]]


class Pipeline:
    """Ordered output of one pass: a writer thread ``pwrite``s the non-zero runs of each block
    while the main thread reads the next, then one thread per digest hashes every byte (zeros
    included) in order — a chain of stages working on different blocks at once.  Buffers come
    from a pool of ``NBUF`` (memory stays ``NBUF * BLOCK``)."""

    def __init__(self, out_fd: int | None, names: Sequence[str], writeback: bool = False,
                 block: int = BLOCK) -> None:
        self.out_fd = out_fd
        #: start writeback of each block once written, so the final fsync has little left to do
        self.writeback = writeback
        #: allocate the blocks of each write first (see ``allocate``), until the file system says no
        self._allocate = out_fd is not None
        self.hashes = [hashlib.new(n) for n in names]
        self.written = 0
        self._pool = BufferPool(NBUF, block)
        self._stop = threading.Event()
        self._stages: list[_Stage] = []
        forward: Callable[[Item], None] = self._release
        for h in reversed(self.hashes):
            self._stages.insert(0, _Stage(f"vhdtool-{h.name}", functools.partial(self._digest, h),
                                          forward, self._stop))
            forward = self._stages[0].q.put
        if out_fd is not None:
            self._stages.insert(0, _Stage("vhdtool-write", self._write_item, forward, self._stop))
            forward = self._stages[0].q.put
        self._entry = forward

    # -- main thread --
    def buffer(self) -> Buffer:
        self.check()
        return self._pool.get()

    def put(self, buf: Buffer | None, n: int, off: int,
            runs: Sequence[tuple[int, int]] = ()) -> None:
        """Queue ``buf[:n]`` (or ``n`` zeros when ``buf`` is None) at output offset ``off``;
        ``runs`` are the ranges of ``buf`` to write (the rest is left as a hole)."""
        self.check()
        self._entry((buf, n, off, runs))

    def give_back(self, buf: Buffer) -> None:
        self._pool.put(buf)

    def check(self) -> None:
        for stage in self._stages:
            if stage.error is not None:
                raise stage.error

    def finish(self) -> list[Any]:
        for stage in self._stages:
            stage.close()
        self.check()
        return self.hashes

    def abort(self) -> None:
        """Stop the threads and wait for them: none may touch ``out_fd`` once this returns."""
        self._stop.set()
        for stage in self._stages:
            stage.close()

    # -- writer thread --
    def _write_item(self, item: Item) -> None:
        buf, _, off, runs = item
        if buf is None:
            return
        for a, b in runs:
            self._write(memoryview(buf)[a:b], off + a)

    @property
    def allocated_ahead(self) -> bool:
        """Every write so far had its blocks allocated first (so none can fail at writeback for
        want of space)."""
        return self._allocate

    def _write(self, data: bytes | memoryview, off: int) -> None:
        self.store(data, off)
        self.written += len(data)

    def store(self, data: bytes | memoryview, off: int) -> None:
        """Write ``data`` at output offset ``off`` (its blocks allocated first where the file
        system can, writeback started if asked); any thread."""
        fd = self.out_fd
        assert fd is not None
        if self._allocate:
            self._allocate = allocate(fd, off, len(data))
        pwrite_all(fd, data, off)
        if self.writeback:
            _start_writeback(fd, off, len(data))

    # -- hash threads --
    def _digest(self, h: Any, item: Item) -> None:
        buf, n, _, _ = item
        if buf is not None:
            h.update(memoryview(buf)[:n])
            return
        zmv = memoryview(_ZEROS)
        while n > 0 and not self._stop.is_set():
            k = min(n, BLOCK)
            h.update(zmv[:k])
            n -= k

    def _release(self, item: Item) -> None:
        if item[0] is not None:
            self._pool.put(item[0])


def pwrite_all(fd: int, data: bytes | memoryview, off: int) -> None:
    mv = memoryview(data)
    done = 0
    while done < len(mv):
        done += os.pwrite(fd, mv[done:], off + done)


@functools.cache
def _libc(name: str) -> Callable[..., int] | None:
    """libc's ``sync_file_range`` or ``fallocate`` (calls Python's os module lacks), or None."""
    import ctypes

    i, i64 = ctypes.c_int, ctypes.c_int64
    argtypes = {"sync_file_range": [i, i64, i64, ctypes.c_uint], "fallocate": [i, i, i64, i64]}
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = argtypes[name]
    return fn


SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, off: int, n: int) -> None:
    """Start (not wait for) writeback of what was just written, so the final fsync is short."""
    fn = _libc("sync_file_range")
    if fn is not None:
        fn(fd, off, n, SYNC_FILE_RANGE_WRITE)


def allocate(fd: int, off: int, n: int) -> bool:
    """Allocate the blocks of ``[off, off + n)`` before writing them (``fallocate``, mode 0):
    ext4 then skips its delayed-allocation bookkeeping page by page (1 GiB written here in 2 MiB
    pieces: 0.19 s instead of 0.26 s), and a full disk fails here, before any data is written.
    Never emulated by writing zeros (as glibc's ``posix_fallocate`` would).  False when the file
    system cannot: the caller stops asking."""
    fn = _libc("fallocate")
    if fn is None:
        return False
    import ctypes

    while fn(fd, 0, off, n) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(err, os.strerror(err))
        if err != errno.EINTR:
            return False
    return True


# -- planning --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Window:
    """A range of the output to materialise; ``solid``: made only of DATA, read fills it all."""

    start: int
    end: int
    solid: bool


def windows(img: DiskImage, size: int, patches: Sequence[Patch], align: int = CHUNK,
            gap: int = GAP) -> Iterator[Window]:
    """Ranges of ``[0, size)`` to materialise (data runs and GPT patches), ``align``-aligned,
    merged when closer than ``gap``, ascending; everything between them is a hole.  Streams the
    map, so memory does not grow with the number of extents."""
    data = ((e.offset, e.end, True) for e in img.extents() if e.kind is Kind.DATA)
    spans = heapq.merge(data, sorted((o, o + len(b), False) for o, b in patches))
    cur: Window | None = None
    for a0, b0, is_data in spans:
        a, b = a0 // align * align, min(size, -(-b0 // align) * align)
        solid = is_data and (a, b) == (a0, b0)
        if cur is not None and a <= cur.end + gap:
            cur = Window(cur.start, max(cur.end, b), cur.solid and solid and a == cur.end)
            continue
        if cur is not None:
            yield cur
        cur = Window(a, b, solid)
    if cur is not None:
        yield cur


def _file_backed(img: DiskImage) -> bool:
    return img.format_name == "raw" or (img.format_name == "vpc" and img.subformat == "fixed")


# -- the pass over the virtual disk ----------------------------------------------------------------
@dataclass
class Copier:
    """One ordered pass over ``[0, size)`` of ``img`` into ``pipe``: holes skipped, data blocks
    read here and written/hashed by the pipeline's threads, GPT ``patches`` applied on the way."""

    img: DiskImage
    size: int
    pipe: Pipeline
    progress: Progress
    patches: Sequence[Patch] = ()
    #: no digest: copy in any order, from COPY_THREADS threads
    unordered: bool = False
    zero_skipped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        if self.unordered:
            self._run_unordered()
            return
        pos = 0
        for w in windows(self.img, self.size, self.patches):
            self._hole(pos, w.start)
            for off in range(w.start, w.end, BLOCK):
                self._block(off, min(BLOCK, w.end - off), w.solid)
            pos = w.end
        self._hole(pos, self.size)

    def _hole(self, a: int, b: int) -> None:
        if b > a:
            self.pipe.put(None, b - a, a)
            self.progress.advance(b - a)

    def _run_unordered(self) -> None:
        """No digest, so no order to keep: the data runs are shared out in pieces to
        COPY_THREADS threads.  Runs whose bytes lie as they are in a file
        (``DiskImage.file_range``: raw, VHD, VHDX and qcow2 data clusters) are handed out in
        COPY_STEP pieces that each thread reads and writes itself through its own COPY_BLOCK
        buffer, minus their all-zero CHUNKs; the others (compressed
        clusters, log-patched pages) are read here into one of NBUF buffers and written, minus
        their zero CHUNKs, by the same threads.  Then the GPT patches."""
        work: queue.Queue[tuple[int, int, int, int, Buffer | None] | None] = \
            queue.Queue(maxsize=4 * COPY_THREADS)
        pool = BufferPool()
        errors: list[BaseException] = []

        def worker() -> None:
            own = page_buffer(COPY_BLOCK)
            while (item := work.get()) is not None:
                guest, n, fd, host, buf = item
                try:
                    if errors:
                        continue
                    if buf is None:
                        self._copy_plain(guest, n, fd, host, own)
                    else:
                        self._write_buffer(guest, n, buf)
                except BaseException as e:  # noqa: BLE001 — re-raised in the main thread
                    errors.append(e)
                finally:
                    if buf is not None:
                        pool.put(buf)

        threads = [threading.Thread(target=worker, name="vhdtool-copy", daemon=True)
                   for _ in range(COPY_THREADS)]
        for t in threads:
            t.start()
        try:
            for ext in self.img.extents():
                if ext.kind is not Kind.DATA:
                    continue
                plain = self.img.file_range(ext)
                step = COPY_STEP if plain else BLOCK
                for off in range(ext.offset, ext.end, step):
                    if errors:
                        raise errors[0]
                    n = min(step, ext.end - off)
                    if plain:
                        work.put((off, n, plain[0], plain[1] + off - ext.offset, None))
                    else:
                        buf = pool.get()
                        try:        # a DATA run: readinto fills every byte
                            self.img.readinto(off, memoryview(buf)[:n])
                        except BaseException:
                            pool.put(buf)
                            raise
                        work.put((off, n, -1, 0, buf))
                    self.progress.advance(n)
        except BaseException:
            errors.append(ConvertError("stopped"))    # the workers skip what is left
            raise
        finally:
            for _ in threads:
                work.put(None)
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        self.progress.advance(self.size - self.progress.done)
        for off, data in self.patches:
            self.pipe._write(data, off)

    def _copy_plain(self, guest: int, n: int, src: int, host: int, buf: Buffer) -> None:
        """Copy file ``src``'s ``[host, host + n)`` to the output at ``guest``, COPY_BLOCK at a
        time through this thread's ``buf``, minus its all-zero CHUNKs."""
        shift = guest - host           # output offset - source offset
        view = memoryview(buf)
        for a in range(host, host + n, COPY_BLOCK):
            k = min(COPY_BLOCK, host + n - a)
            got = 0
            while got < k:
                try:
                    r = os.preadv(src, [view[got:k]], a + got)
                except OSError as e:
                    raise ConvertError(f"{self.img.path}: reading failed at file offset "
                                       f"{a + got:#x} ({e.strerror or e})") from e
                if r == 0:
                    raise TruncatedImage(self.img.path, "data", a + got,
                                         "the file ends here, inside a data run: it shrank while "
                                         "it was being copied")
                got += r
            runs, zeros = nonzero_runs(view, 0, k)
            for lo, hi in runs:
                self.pipe.store(view[lo:hi], a + lo + shift)
            self._count(k - zeros, zeros)

    def _write_buffer(self, guest: int, n: int, buf: Buffer) -> None:
        runs, zeros = nonzero_runs(memoryview(buf), 0, n)
        for lo, hi in runs:
            self.pipe.store(memoryview(buf)[lo:hi], guest + lo)
        self._count(sum(hi - lo for lo, hi in runs), zeros)

    def _count(self, written: int, zeros: int) -> None:
        with self._lock:
            self.pipe.written += written
            self.zero_skipped += zeros

    def _block(self, off: int, n: int, solid: bool) -> None:
        buf = self.pipe.buffer()
        try:
            view = memoryview(buf)[:n]
            vs = self.img.virtual_size
            if not solid or off + n > vs:       # readinto fills only the DATA parts
                view[:] = _ZEROS[:n]
            if off < vs:
                self.img.readinto(off, view[:min(n, vs - off)])
            for p_off, p_data in self.patches:
                lo, hi = max(off, p_off), min(off + n, p_off + len(p_data))
                if lo < hi:
                    view[lo - off:hi - off] = p_data[lo - p_off:hi - p_off]
            runs = self._nonzero_runs(buf, n) if self.pipe.out_fd is not None else ()
        except BaseException:
            self.pipe.give_back(buf)
            raise
        self.pipe.put(buf, n, off, runs)
        self.progress.advance(n)

    def _nonzero_runs(self, buf: Buffer, n: int) -> list[tuple[int, int]]:
        runs, zeros = nonzero_runs(memoryview(buf), 0, n)
        self.zero_skipped += zeros
        return runs


def nonzero_runs(view: memoryview, start: int, end: int) -> tuple[list[tuple[int, int]], int]:
    """Ranges of ``view[start:end]`` made of CHUNKs that are not all zeros (CHUNKs counted from
    ``start``), and the number of zero bytes left out.  Each test is one ``memcmp``
    (``bytes.startswith``) that stops at the first non-zero byte."""
    runs: list[tuple[int, int]] = []
    zeros = 0
    run_start = -1
    is_zero = _ZERO_CHUNK.startswith
    for i in range(start, end, CHUNK):
        k = min(CHUNK, end - i)
        if is_zero(view[i:i + k]):
            zeros += k
            if run_start >= 0:
                runs.append((run_start, i))
                run_start = -1
        elif run_start < 0:
            run_start = i
    if run_start >= 0:
        runs.append((run_start, end))
    return runs, zeros


# -- results ---------------------------------------------------------------------------------------
@dataclass
class ConvertResult:
    source: dict[str, Any]
    output: dict[str, Any]
    digests: dict[str, Any]
    timings: dict[str, float]
    warnings: list[str]
    gpt_relocated: bool
    in_place: bool = False
    #: converted despite structure errors (--salvage); the warnings name them
    salvaged: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "output": self.output, "digests": self.digests,
                "gpt_backup_relocated": self.gpt_relocated, "in_place": self.in_place,
                "salvaged": self.salvaged, "warnings": self.warnings, "timings": self.timings}


def _source_facts(img: DiskImage) -> dict[str, Any]:
    return {"path": img.path, "format": img.format_name, "subformat": img.subformat,
            "virtual_size": img.virtual_size}


def _output_facts(path: str, size: int, source_size: int, written: int,
                  zero_skipped: int, flushed: bool) -> dict[str, Any]:
    """``flushed``: the data was on the disk (fsync) before the file got its name."""
    st = os.stat(path)
    return {"path": path, "format": "vpc", "subformat": "fixed", "virtual_size": size,
            "file_size": st.st_size, "rounded_by": size - source_size,
            "allocated": st.st_blocks * 512, "data_written": written,
            "zero_bytes_skipped_in_data": zero_skipped, "flushed": flushed}


# -- convert ---------------------------------------------------------------------------------------
def _refuse(src: str, dst: str, force: bool) -> None:
    if os.path.lexists(dst):
        if os.path.exists(dst) and os.path.samefile(src, dst):
            raise ConvertError(f"{dst}: is the source itself; use --in-place to convert in place")
        if not force:
            raise ConvertError(f"{dst}: exists; use --force to replace it")
        if os.path.isdir(dst):
            raise ConvertError(f"{dst}: is a directory")


def convert(src: str, dst: str, *, fmt: str | None = None,
            digests: Iterable[str] = DEFAULT_DIGESTS, force: bool = False,
            progress: bool | None = None, sync: bool = False, salvage: bool = False,
            bmap_path: str | None = None) -> ConvertResult:
    """Convert ``src`` (any supported format) to a fixed VHD at ``dst``; see the module doc.

    ``sync``: make the data durable (fsync the file, then its folder after the rename) before
    returning; without it a crash of the machine soon after may leave DST with missing data.
    ``salvage``: convert an image with structure errors anyway (see ``structure_errors``).
    ``bmap_path``: also write the bmap there (bmaptool's format; implies the bmap digest)."""
    t0 = time.perf_counter()
    names = digest_names(digests)
    if bmap_path is not None and "bmap" not in names:
        names += ("bmap",)
    hashed = whole_file(names)
    _refuse(src, dst, force)
    with open_image(src, fmt) as img:
        salvaged = structure_errors(img, salvage)
        _refuse_empty(img)
        size = rounded_size(img.virtual_size)
        check_size(size, dst)
        patches, warnings = gpt_patches(img, size)
        sector_size = img.logical_sector_size
        t_plan = time.perf_counter()
        folder = os.path.dirname(os.path.abspath(dst))
        warnings[:0] = remove_stale(folder)
        try:
            fd, tmp = create_partial(dst)
        except OSError as e:
            raise ConvertError(f"{dst}: cannot create a file in {folder}: {e.strerror}") from e
        pipe: Pipeline | None = None
        published = map_written = False
        try:
            pipe = Pipeline(fd, hashed, writeback=sync)
            os.ftruncate(fd, size + FOOTER_SIZE)
            bar = Progress(size, "convert: ", enabled=progress)
            copier = Copier(img, size, pipe, bar, patches,
                            unordered=not hashed)
            copier.run()
            buf = pipe.buffer()
            buf[:FOOTER_SIZE] = make_footer(size)
            pipe.put(buf, FOOTER_SIZE, size, [(0, FOOTER_SIZE)])
            t_copy = time.perf_counter()
            hashes = pipe.finish()
            t_hash = time.perf_counter()
            flushed = sync or not pipe.allocated_ahead
            if flushed:
                os.fsync(fd)
            verify_footer(fd, tmp, size)
            bm = bmap.compute(fd) if "bmap" in names else None
            t_map = time.perf_counter()
            bar.finish()
            if bm is not None and bmap_path is not None:
                warnings += write_bmap(bmap_path, bm)
                map_written = True
            with deferred_signals():     # named, or not: never "interrupted" half-way
                _publish(tmp, dst, force)
                published = True
                if sync:
                    _fsync_dir(folder)
                t_end = time.perf_counter()
                result = ConvertResult(
                    source=_source_facts(img),
                    output=_output_facts(dst, size, img.virtual_size, pipe.written,
                                         copier.zero_skipped, flushed),
                    digests=digest_report(hashes, size + FOOTER_SIZE, bm, bmap_path),
                    warnings=salvaged + size_warnings(size, sector_size) + warnings,
                    gpt_relocated=bool(patches), salvaged=bool(salvaged),
                    timings={"plan": t_plan - t0, "copy": t_copy - t_plan,
                             "hash_wait": t_hash - t_copy, "bmap": t_map - t_hash,
                             "total": t_end - t0})
        except BaseException as e:
            if published and isinstance(e, KeyboardInterrupt):
                raise InterruptedAfterOutput(exit_code(e) - 128, dst) from e
            if pipe is not None:
                pipe.abort()
            unlink_quietly(tmp)
            if map_written and not published:      # it would describe a file that is not there
                unlink_quietly(bmap_path or "")
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ConvertError(f"{dst}: no space left on the device for the "
                                   f"{size + FOOTER_SIZE}-byte VHD; nothing was written under "
                                   f"that name") from e
            if isinstance(e, OSError) and not e.filename:   # pwrite/fsync on the output
                raise ConvertError(f"{dst}: writing failed ({e.strerror or e}); nothing was "
                                   f"written under that name") from e
            raise
        finally:
            os.close(fd)          # the lock goes with it: only now may the partial file look stale
    return result


def write_bmap(path: str, bm: bmap.Bmap) -> list[str]:
    """Write the bmap file atomically; the stale partial files removed on the way, in words."""
    try:
        return write_atomic_bytes(path, bm.xml().encode("utf-8"))
    except OSError as e:
        raise ConvertError(f"{path}: writing the bmap failed ({e.strerror or e})") from e


def _publish(tmp: str, dst: str, force: bool) -> None:
    """Give the finished file its name: atomically replacing DST with ``force``, else only if
    DST still does not exist (a hard link fails rather than overwrite what appeared meanwhile)."""
    if force:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)
    except FileExistsError:
        raise ConvertError(f"{dst}: appeared during the conversion; use --force to replace "
                           "it") from None
    except OSError:                 # no hard links on this file system: rename, re-checked
        if os.path.lexists(dst):
            raise ConvertError(f"{dst}: appeared during the conversion") from None
        os.replace(tmp, dst)
        return
    os.unlink(tmp)


def _fsync_dir(folder: str) -> None:
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# -- in place --------------------------------------------------------------------------------------
def convert_in_place(src: str, *, fmt: str | None = None,
                     digests: Iterable[str] = DEFAULT_DIGESTS, progress: bool | None = None,
                     bmap_path: str | None = None) -> ConvertResult:
    """Make a raw or fixed-VHD file an Azure fixed VHD without copying its data: grow it to a whole
    MiB (holes), move a GPT backup, (re)write the footer.  Digests, if asked, re-read the result."""
    t0 = time.perf_counter()
    names = digest_names(digests)
    with open_image(src, fmt) as img:
        structure_errors(img, salvage=False)     # an in-place repair is never a salvage
        if not _file_backed(img):
            raise ConvertError(f"{src}: --in-place needs a raw or fixed VHD source, not "
                               f"{img.format_name} {img.subformat}".rstrip())
        _refuse_empty(img)
        old_size = img.virtual_size
        size = rounded_size(old_size)
        check_size(size, src)
        patches, warnings = gpt_patches(img, size)
        sector_size = img.logical_sector_size
        unique_id = _old_unique_id(img)
        source = _source_facts(img)
    footer = make_footer(size, unique_id)
    fd = os.open(src, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    old_len = os.fstat(fd).st_size
    # what an error must put back: the bytes the GPT patches and the old footer cover
    saved = [(off, os.pread(fd, len(data), off)) for off, data in patches if off < old_len]
    if old_len > old_size:
        saved.append((old_size, os.pread(fd, old_len - old_size, old_size)))
    try:
        if old_len > old_size and size != old_size:
            os.ftruncate(fd, old_size)          # the old footer must not become guest data
        os.ftruncate(fd, size)
        for off, data in patches:
            pwrite_all(fd, data, off)
        pwrite_all(fd, footer, size)
        os.fsync(fd)
        verify_footer(fd, src, size)
    except BaseException as e:
        _restore(fd, old_len, saved)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ConvertError(f"{src}: no space left on the device to grow it in place; "
                               f"the file was restored as it was") from e
        raise
    finally:
        os.close(fd)
    t_write = time.perf_counter()
    if bmap_path is not None and "bmap" not in names:
        names += ("bmap",)
    hashes = hash_file(src, whole_file(names), progress) if whole_file(names) else []
    bm = None
    if "bmap" in names:
        rfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            bm = bmap.compute(rfd)
        finally:
            os.close(rfd)
        if bmap_path is not None:
            warnings += write_bmap(bmap_path, bm)
    t_end = time.perf_counter()
    return ConvertResult(
        source=source, output=_output_facts(src, size, old_size, 0, 0, True),
        digests=digest_report(hashes, size + FOOTER_SIZE, bm, bmap_path),
        warnings=size_warnings(size, sector_size) + warnings,
        gpt_relocated=bool(patches), in_place=True,
        timings={"write": t_write - t0, "hash": t_end - t_write, "total": t_end - t0})


def _restore(fd: int, length: int, saved: list[Patch]) -> None:
    """Undo an in-place conversion: the original length, then the original bytes."""
    os.ftruncate(fd, length)
    for off, data in saved:
        pwrite_all(fd, data, off)
    os.fsync(fd)


def _old_unique_id(img: DiskImage) -> bytes | None:
    """A fixed VHD converted in place keeps its identity."""
    footer = getattr(img, "footer", None)
    return getattr(footer, "unique_id", None)


def hash_file(path: str, names: Sequence[str], progress: bool | None = None) -> list[Any]:
    """Digests of every byte of the file at ``path``, holes hashed as zeros."""
    pipe = Pipeline(None, names)
    try:
        with open_image(path, "raw") as whole:
            bar = Progress(whole.virtual_size, "hash: ", enabled=progress)
            Copier(whole, whole.virtual_size, pipe, bar).run()
            bar.finish()
        return pipe.finish()
    except BaseException:
        pipe.abort()
        raise
