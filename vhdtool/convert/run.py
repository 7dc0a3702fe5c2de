"""The two commands: :func:`convert` (a copy, published atomically) and
:func:`convert_in_place` (a raw or fixed-VHD file finished where it is).

The output is written to a partial file in the destination's folder (``vhdtool.atomicfile``), its
footer re-read and verified, then given its name (``atomicfile.publish``): an error, a full disk
or Ctrl-C leaves no half-written VHD under the final name and the source is never modified --
except with ``in_place``, which only grows a raw or fixed-VHD file to a whole MiB and (re)writes
its footer without copying data, and puts the file back as it was if that fails.  A full disk is
found before the rename because the blocks of every write are allocated first
(``sysio.allocate``); where the file system cannot do that, the file is fsynced before the rename
so that a write error the kernel defers to writeback is seen too.  ``sync=True`` makes the result
durable as well (fsync, rename, fsync of the folder), for a machine that may go down before the VHD
is uploaded; like qemu-img and cp, the default leaves the data to the kernel's writeback.

References: qemu-img.c (``convert``: zero detection, sparse output) -- the behaviour this command
improves on; rename(2), link(2), fsync(2).
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from collections.abc import Iterable

from vhdtool.formats import DiskImage, open_image

from .. import atomicfile, bmap
from ..progress import Progress
from ..signals import InterruptedAfterOutput, deferred_signals, exit_code
from . import sysio
from .engine import Engine
from .plan import (FOOTER_SIZE, Patch, check_size, file_backed, gpt_patches, make_footer,
                   refuse_empty, rounded_size, size_warnings, structure_errors, verify_footer)
from .result import (DEFAULT_DIGESTS, ConvertError, ConvertResult, CopyTimings, DigestReport,
                     InPlaceTimings, OutputFacts, SourceFacts, digest_names, whole_file)
from .schedules import Pass, hash_file


def refuse_destination(src: str, dst: str, force: bool,
                       same: str = "use --in-place to convert in place") -> None:
    """ConvertError when ``dst`` is ``src``, exists without ``force``, or is a folder."""
    if os.path.lexists(dst):
        if os.path.exists(dst) and os.path.samefile(src, dst):
            raise ConvertError(f"{dst}: is the source itself; {same}")
        if not force:
            raise ConvertError(f"{dst}: exists; use --force to replace it")
        if os.path.isdir(dst):
            raise ConvertError(f"{dst}: is a directory")


def _with_bmap(names: tuple[str, ...], bmap_path: str | None) -> tuple[str, ...]:
    """``--bmap FILE`` implies the bmap digest."""
    return names + ("bmap",) if bmap_path is not None and "bmap" not in names else names


def convert(src: str, dst: str, *, fmt: str | None = None,
            digests: Iterable[str] = DEFAULT_DIGESTS, force: bool = False,
            progress: bool | None = None, sync: bool = False, salvage: bool = False,
            bmap_path: str | None = None) -> ConvertResult:
    """Convert ``src`` (any supported format) to a fixed VHD at ``dst``; see the module doc.

    ``sync``: make the data durable (fsync the file, then its folder after the rename) before
    returning; without it a crash of the machine soon after may leave DST with missing data.
    ``salvage``: convert an image with structure errors anyway (``plan.structure_errors``).
    ``bmap_path``: also write the bmap there (bmaptool's format; implies the bmap digest)."""
    t0 = time.perf_counter()
    names = _with_bmap(digest_names(digests), bmap_path)
    refuse_destination(src, dst, force)
    with open_image(src, fmt) as img:
        salvaged = structure_errors(img, salvage)
        refuse_empty(img)
        size = rounded_size(img.virtual_size)
        check_size(size, dst)
        patches, warnings = gpt_patches(img, size)
        t_plan = time.perf_counter()
        folder = os.path.dirname(os.path.abspath(dst))
        warnings[:0] = atomicfile.remove_stale(folder)
        try:
            fd, tmp = atomicfile.create_partial(dst)
        except OSError as e:
            raise ConvertError(f"{dst}: cannot create a file in {folder}: {e.strerror}") from e
        engine: Engine | None = None
        published = map_written = False
        try:
            hashes = [hashlib.new(n) for n in whole_file(names)]
            engine = Engine(fd, Engine.threads_for(fd, hashes), writeback=sync)
            os.ftruncate(fd, size + FOOTER_SIZE)
            bar = Progress(size, "convert: ", enabled=progress)
            one = Pass(img, size, engine, bar, patches, hashes)
            one.run()
            one.append(make_footer(size), size)
            t_copy = time.perf_counter()
            engine.finish()
            t_hash = time.perf_counter()
            flushed = sync or not engine.allocated_ahead
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
                    atomicfile.fsync_dir(folder)
                t_end = time.perf_counter()
                result = ConvertResult(
                    source=SourceFacts.of(img),
                    output=OutputFacts.of_file(dst, size, img.virtual_size, engine.written,
                                               engine.zero_skipped, flushed),
                    digests=DigestReport.of(hashes, size + FOOTER_SIZE,
                                            bm.summary(bmap_path) if bm else None),
                    gpt_backup_relocated=bool(patches), in_place=False, salvaged=bool(salvaged),
                    warnings=salvaged + size_warnings(size, img.logical_sector_size) + warnings,
                    timings=CopyTimings(plan=t_plan - t0, copy=t_copy - t_plan,
                                        hash_wait=t_hash - t_copy, bmap=t_map - t_hash,
                                        total=t_end - t0))
        except BaseException as e:
            if published and isinstance(e, KeyboardInterrupt):
                raise InterruptedAfterOutput(exit_code(e) - 128, dst) from e
            if engine is not None:
                engine.abort()
            atomicfile.unlink_quietly(tmp)
            if map_written and not published:      # it would describe a file that is not there
                atomicfile.unlink_quietly(bmap_path or "")
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


def _publish(tmp: str, dst: str, force: bool) -> None:
    """Give the finished file its name (``atomicfile.publish``): replacing DST only with
    ``force``, never a DST that appeared during the conversion otherwise."""
    try:
        atomicfile.publish(tmp, dst, replace=force)
    except FileExistsError:
        raise ConvertError(f"{dst}: appeared during the conversion; use --force to replace "
                           "it") from None


def write_bmap(path: str, bm: bmap.Bmap) -> list[str]:
    """Write the bmap file atomically; the stale partial files removed on the way, in words."""
    try:
        return atomicfile.write_atomic_bytes(path, bm.xml().encode("utf-8"))
    except OSError as e:
        raise ConvertError(f"{path}: writing the bmap failed ({e.strerror or e})") from e


# -- in place --------------------------------------------------------------------------------------
def convert_in_place(src: str, *, fmt: str | None = None,
                     digests: Iterable[str] = DEFAULT_DIGESTS, progress: bool | None = None,
                     bmap_path: str | None = None) -> ConvertResult:
    """Make a raw or fixed-VHD file an Azure fixed VHD without copying its data: grow it to a whole
    MiB (holes), move a GPT backup, (re)write the footer.  Digests, if asked, re-read the result."""
    t0 = time.perf_counter()
    names = _with_bmap(digest_names(digests), bmap_path)
    with open_image(src, fmt) as img:
        structure_errors(img, salvage=False)     # an in-place repair is never a salvage
        if not file_backed(img):
            raise ConvertError(f"{src}: --in-place needs a raw or fixed VHD source, not "
                               f"{img.format_name} {img.subformat}".rstrip())
        refuse_empty(img)
        old_size = img.virtual_size
        size = rounded_size(old_size)
        check_size(size, src)
        patches, warnings = gpt_patches(img, size)
        sector_size = img.logical_sector_size
        unique_id = _old_unique_id(img)
        source = SourceFacts.of(img)
    _finish_in_place(src, old_size, size, patches, make_footer(size, unique_id))
    t_write = time.perf_counter()
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
        source=source, output=OutputFacts.of_file(src, size, old_size, 0, 0, True),
        digests=DigestReport.of(hashes, size + FOOTER_SIZE, bm.summary(bmap_path) if bm else None),
        gpt_backup_relocated=bool(patches), in_place=True, salvaged=False,
        warnings=size_warnings(size, sector_size) + warnings,
        timings=InPlaceTimings(write=t_write - t0, hash=t_end - t_write, total=t_end - t0))


def _finish_in_place(src: str, old_size: int, size: int, patches: list[Patch],
                     footer: bytes) -> None:
    """Grow ``src`` to ``size``, apply ``patches``, write ``footer``; durable when it returns, and
    the file as it was if it raises."""
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
            sysio.pwrite_all(fd, data, off)
        sysio.pwrite_all(fd, footer, size)
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


def _restore(fd: int, length: int, saved: list[Patch]) -> None:
    """Undo an in-place conversion: the original length, then the original bytes."""
    os.ftruncate(fd, length)
    for off, data in saved:
        sysio.pwrite_all(fd, data, off)
    os.fsync(fd)


def _old_unique_id(img: DiskImage) -> bytes | None:
    """A fixed VHD converted in place keeps its identity."""
    footer = getattr(img, "footer", None)
    return getattr(footer, "unique_id", None)
