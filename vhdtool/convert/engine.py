"""The copy engine: one pool of worker threads and one pool of page-aligned buffers, shared by
both schedules of ``vhdtool.convert.schedules`` (hashlib and the I/O calls release the GIL).

Work is handed to the workers as *tasks*, each holding the buffer it works on; a buffer goes back
to the pool when the last task holding it is done (or skipped), so memory stays ``NBUF * BLOCK``
whatever the image.  A task runs on any free worker, in any order -- writes to the output do not
need an order -- except on a :class:`Lane`: the tasks of one lane run one at a time, in the order
they were given, which is how each digest sees every byte in order while the write of the same
block goes on beside it.  The first error of any task is kept and raised in the main thread; the
tasks after it are skipped (their buffers still go back), and :meth:`Engine.abort` returns only
once no worker can touch the output any more.
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from . import sysio
from .sysio import Buffer, BufferPool

MiB = 1 << 20
#: largest read/hash unit; NBUF of them are in flight at once (memory: NBUF * BLOCK)
BLOCK = 8 * MiB
NBUF = 4
#: the workers: at least this many (without digests they share the data runs out), else one
#: writer and one per digest
COPY_THREADS = 2

#: BLOCK zero bytes, to clear a buffer or hash a hole from
ZEROS = bytes(BLOCK)


class Held:
    """A buffer shared by the tasks that work on it; back to the pool after the last."""

    __slots__ = ("buf", "_users", "_pool", "_lock")

    def __init__(self, buf: Buffer, pool: BufferPool) -> None:
        self.buf, self._pool, self._users, self._lock = buf, pool, 0, threading.Lock()

    def take(self) -> None:
        with self._lock:
            self._users += 1

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self._pool.put(self.buf)


class Lane:
    """Tasks run one at a time, in order, on whichever worker is free (never two at once)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._items: collections.deque[tuple[Callable[[], None], Held | None]] = \
            collections.deque()
        self._busy = False
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None], held: Held | None = None) -> None:
        self._engine._enter(held)
        with self._lock:
            self._items.append((fn, held))
            start, self._busy = not self._busy, True
        if start:
            self._engine._queue.put(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    self._busy = False
                    return
                fn, held = self._items.popleft()
            self._engine._run(fn, held)


class Engine:
    """Workers and buffers for one pass; ``out_fd`` the output (None: digests only)."""

    def __init__(self, out_fd: int | None, threads: int, *, writeback: bool = False,
                 nbuf: int = NBUF, block: int = BLOCK) -> None:
        self.out_fd = out_fd
        #: start writeback of each write, so the final fsync has little left to do
        self.writeback = writeback
        #: allocate the blocks of each write first (sysio.allocate), until the file system says no
        self._allocate = out_fd is not None
        self.written = 0
        self.zero_skipped = 0
        self.error: BaseException | None = None
        self._stopped = False
        self._pool = BufferPool(nbuf, block)
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._cv = threading.Condition()
        self._pending = 0                   # tasks submitted and not yet done
        self._closed = False
        self._count_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name="vhdtool-copy", daemon=True)
                         for _ in range(threads)]
        for t in self._threads:
            t.start()

    @staticmethod
    def threads_for(out_fd: int | None, hashes: Sequence[Any]) -> int:
        return max(COPY_THREADS, len(hashes) + (out_fd is not None))

    # -- the main thread ---------------------------------------------------------------------------
    def buffer(self) -> Held:
        """A buffer from the pool (waits for one to come back), held by the caller (``with``)
        while it fills it and hands it to the tasks that use it."""
        self.check()
        held = Held(self._pool.get(), self._pool)
        held.take()
        return held

    def submit(self, fn: Callable[[], None], held: Held | None = None) -> None:
        """Run ``fn`` on a free worker, in no particular order."""
        self.check()
        self._enter(held)
        self._queue.put(functools.partial(self._run, fn, held))

    def lane(self) -> Lane:
        return Lane(self)

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        """Wait until every task given so far is done; raise the first error."""
        with self._cv:
            self._cv.wait_for(lambda: self._pending == 0)
        self.check()

    def finish(self) -> None:
        """Wait for every task, end the workers; raise the first error."""
        try:
            self.drain()
        finally:
            self._close()

    def abort(self) -> None:
        """Skip what is left and end the workers: none may touch ``out_fd`` once this returns."""
        self._stopped = True
        with self._cv:
            self._cv.wait_for(lambda: self._pending == 0)
        self._close()

    @property
    def stopped(self) -> bool:
        return self._stopped or self.error is not None

    @property
    def allocated_ahead(self) -> bool:
        """Every write so far had its blocks allocated first (so none can fail at writeback for
        want of space)."""
        return self._allocate

    # -- any thread --------------------------------------------------------------------------------
    def store(self, data: bytes | memoryview, off: int) -> None:
        """Write ``data`` at output offset ``off``: its blocks allocated first where the file
        system can, writeback started if asked."""
        fd = self.out_fd
        assert fd is not None
        if self._allocate:
            self._allocate = sysio.allocate(fd, off, len(data))
        sysio.pwrite_all(fd, data, off)
        if self.writeback:
            sysio.start_writeback(fd, off, len(data))
        self.count(len(data), 0)

    def store_nonzero(self, view: memoryview, off: int) -> None:
        """Write the CHUNKs of ``view`` that are not all zeros at ``off``; the rest stays a hole."""
        runs, zeros = sysio.nonzero_runs(view, 0, len(view))
        for lo, hi in runs:
            self.store(view[lo:hi], off + lo)
        self.count(0, zeros)

    def count(self, written: int, zeros: int) -> None:
        with self._count_lock:
            self.written += written
            self.zero_skipped += zeros

    def hash_zeros(self, h: Any, n: int) -> None:
        """Feed ``n`` zero bytes to ``h`` (a hole), stopping early if the pass stops."""
        zmv = memoryview(ZEROS)
        while n > 0 and not self.stopped:
            k = min(n, BLOCK)
            h.update(zmv[:k])
            n -= k

    # -- the workers -------------------------------------------------------------------------------
    def _enter(self, held: Held | None) -> None:
        if held is not None:
            held.take()
        with self._cv:
            self._pending += 1

    def _run(self, fn: Callable[[], None], held: Held | None) -> None:
        try:
            if not self.stopped:
                fn()
        except BaseException as e:  # noqa: BLE001 — re-raised in the main thread
            if self.error is None:
                self.error = e
        finally:
            if held is not None:
                held.release()
            with self._cv:
                self._pending -= 1
                if self._pending == 0:
                    self._cv.notify_all()

    def _work(self) -> None:
        while (task := self._queue.get()) is not None:
            task()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
