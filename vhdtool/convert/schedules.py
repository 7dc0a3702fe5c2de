"""One pass over the virtual disk ``[0, size)`` of an image, on one :class:`Engine`: which bytes
are read, by whom, and in what order.  Two schedules share the engine's workers and buffers:

* **ordered, with digests** (a digest sees every byte in order): the main thread reads the
  windows of ``plan.windows`` BLOCK at a time, GPT patches applied in the buffer; each block is
  handed to a write task (its all-zero CHUNKs left as holes) and to one lane per digest, which
  hashes it after the blocks before it; holes are hashed as zeros, never read.  So the main
  thread reads block k+1 while a worker writes block k and another hashes it.
* **unordered, no whole-file digest**: nothing needs the bytes in order, so the data runs are
  shared out to the workers.  Those whose bytes lie as they are in a file
  (``DiskImage.file_range``: raw, VHD, VHDX and qcow2 data clusters alike) are handed out in
  COPY_STEP pieces that a worker reads and writes itself, COPY_BLOCK at a time, minus their
  all-zero CHUNKs; the rest (compressed clusters, log-patched pages) is read by the main thread
  and written by the workers.  The GPT patches are written once the data is, over it.

Either way the data runs are read with ``preadv`` (see ``sysio`` on ``copy_file_range``): a
source that shrinks while it is copied is a short read, :class:`TruncatedImage`, naming it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from typing import Any

from vhdtool.formats import DiskImage, Kind, TruncatedImage, open_image

from ..progress import Progress
from .engine import BLOCK, ZEROS, Engine, Held, Lane
from .plan import Patch, windows
from .result import ConvertError
from .sysio import Buffer

MiB = 1 << 20
#: without digests, data runs stored as file bytes are handed out COPY_STEP at a time and read
#: and written COPY_BLOCK at a time (2 MiB stays in the CPU caches between the read and the
#: write: 8 MiB took twice the system time here, 1 MiB 0.9 s per GiB instead of 0.2)
COPY_STEP = 32 * MiB
COPY_BLOCK = 2 * MiB


class Pass:
    """One pass of ``img`` into ``engine``: ordered when there are ``hashes`` to feed (hashlib
    objects), else unordered.  ``run`` copies the disk; ``append`` adds bytes after it (the
    footer), written and hashed last."""

    def __init__(self, img: DiskImage, size: int, engine: Engine, progress: Progress,
                 patches: Sequence[Patch] = (), hashes: Sequence[Any] = ()) -> None:
        self.img, self.size, self.engine, self.progress = img, size, engine, progress
        self.patches = patches
        self.lanes: list[tuple[Any, Lane]] = [(h, engine.lane()) for h in hashes]

    def run(self) -> None:
        if self.lanes:
            self._ordered()
        else:
            self._unordered()

    def append(self, data: bytes, off: int) -> None:
        with self.engine.buffer() as held:
            held.buf[:len(data)] = data
            self._emit(held, len(data), off)

    # -- ordered -----------------------------------------------------------------------------------
    def _ordered(self) -> None:
        pos = 0
        for w in windows(self.img, self.size, self.patches):
            self._hole(pos, w.start)
            for off in range(w.start, w.end, BLOCK):
                self._block(off, min(BLOCK, w.end - off), w.solid)
            pos = w.end
        self._hole(pos, self.size)

    def _hole(self, a: int, b: int) -> None:
        if b > a:
            for h, lane in self.lanes:
                lane.submit(functools.partial(self.engine.hash_zeros, h, b - a))
            self.progress.advance(b - a)

    def _block(self, off: int, n: int, solid: bool) -> None:
        with self.engine.buffer() as held:
            view = memoryview(held.buf)[:n]
            vs = self.img.virtual_size
            if not solid or off + n > vs:       # readinto fills only the DATA parts
                view[:] = memoryview(ZEROS)[:n]
            if off < vs:
                self.img.readinto(off, view[:min(n, vs - off)])
            for p_off, p_data in self.patches:
                lo, hi = max(off, p_off), min(off + n, p_off + len(p_data))
                if lo < hi:
                    view[lo - off:hi - off] = p_data[lo - p_off:hi - p_off]
            self._emit(held, n, off)
        self.progress.advance(n)

    def _emit(self, held: Held, n: int, off: int) -> None:
        """Hand ``held.buf[:n]``, output offset ``off``, to the write and to every digest."""
        view = memoryview(held.buf)[:n]
        if self.engine.out_fd is not None:
            self.engine.submit(functools.partial(self.engine.store_nonzero, view, off), held)
        for h, lane in self.lanes:
            lane.submit(functools.partial(h.update, view), held)

    # -- unordered ---------------------------------------------------------------------------------
    def _unordered(self) -> None:
        engine = self.engine
        for ext in self.img.extents():
            if ext.kind is not Kind.DATA:
                continue
            plain = self.img.file_range(ext)
            step = COPY_STEP if plain else BLOCK
            for off in range(ext.offset, ext.end, step):
                n = min(step, ext.end - off)
                with engine.buffer() as held:
                    if plain:
                        engine.submit(functools.partial(
                            self._copy_plain, off, n, plain[0], plain[1] + off - ext.offset,
                            held.buf), held)
                    else:               # a DATA run: readinto fills every byte
                        view = memoryview(held.buf)[:n]
                        self.img.readinto(off, view)
                        engine.submit(functools.partial(engine.store_nonzero, view, off), held)
                self.progress.advance(n)
        engine.drain()                  # the patches go over the data written
        self.progress.advance(self.size - self.progress.done)
        for off, data in self.patches:
            engine.store(data, off)

    def _copy_plain(self, guest: int, n: int, src: int, host: int, buf: Buffer) -> None:
        """Copy file ``src``'s ``[host, host + n)`` to the output at ``guest``, COPY_BLOCK at a
        time through ``buf``, minus its all-zero CHUNKs."""
        shift = guest - host           # output offset - source offset
        view = memoryview(buf)
        for a in range(host, host + n, COPY_BLOCK):
            if self.engine.stopped:
                return
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
            self.engine.store_nonzero(view[:k], a + shift)


def hash_file(path: str, names: Sequence[str], progress: bool | None = None) -> list[Any]:
    """Digests (hashlib objects, finished) of every byte of the file at ``path``, holes hashed
    as zeros, in one ordered pass."""
    hashes = [hashlib.new(n) for n in names]
    engine = Engine(None, Engine.threads_for(None, hashes))
    try:
        with open_image(path, "raw") as whole:
            bar = Progress(whole.virtual_size, "hash: ", enabled=progress)
            Pass(whole, whole.virtual_size, engine, bar, hashes=hashes).run()
            bar.finish()
        engine.finish()
    except BaseException:
        engine.abort()
        raise
    return hashes
