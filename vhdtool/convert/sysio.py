"""The system-call layer of the copy: page-aligned buffers, blocks allocated before each write,
writeback started as it goes, complete ``pwrite``s, and the zero test run on those buffers.

Each choice here was measured (bench/README.md, perf of one 1 GiB raw conversion on ext4):

* **page-aligned buffers** (:func:`page_buffer`).  The kernel's copy between the page cache and
  a ``bytearray`` -- whose data starts 16 bytes past a page boundary -- ran about twice as slow:
  799 samples in ``_copy_to_iter`` against 333 for an anonymous ``mmap``.
* **blocks allocated before each write** (:func:`allocate`).  ext4's delayed allocation does its
  bookkeeping page by page; ``fallocate`` of each non-zero run just before its ``pwrite`` skips it
  (1 GiB in 2 MiB writes: 0.19 s instead of 0.26 s), and a full disk fails there, before any data
  is written.  Only the runs written are allocated, so the output stays exactly as sparse.
* **no ``copy_file_range``.**  With the zero test done through an ``mmap`` of the source it was
  slower than 2 MiB ``preadv``/``pwrite`` -- 0.30 s against 0.23 s of copy for 1 GiB -- and a
  source truncated under the mapping killed the process with SIGBUS; a ``preadv`` meets a short
  read instead, a clean error.

References: fallocate(2) (mode 0 allocates; never emulated by writing zeros, as glibc's
``posix_fallocate`` would), sync_file_range(2), mmap(2).
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
import queue
import threading
from collections.abc import Callable

#: granularity of zero detection inside data runs (and of output allocation)
CHUNK = 64 * 1024
#: a copy buffer (see page_buffer)
Buffer = mmap.mmap

_ZERO_CHUNK = bytes(CHUNK)
SYNC_FILE_RANGE_WRITE = 2


def page_buffer(size: int) -> Buffer:
    """A zeroed buffer of ``size`` bytes that starts on a page boundary, its pages faulted in only
    when first touched (an anonymous ``mmap``: see the module doc for why)."""
    return mmap.mmap(-1, size)


class BufferPool:
    """Up to ``count`` buffers of ``size`` bytes, each made when first needed (a path that needs
    one buffer holds one); ``get`` waits for one to come back once all are made."""

    def __init__(self, count: int, size: int) -> None:
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


def start_writeback(fd: int, off: int, n: int) -> None:
    """Start (not wait for) writeback of what was just written, so the final fsync is short."""
    fn = _libc("sync_file_range")
    if fn is not None:
        fn(fd, off, n, SYNC_FILE_RANGE_WRITE)


def allocate(fd: int, off: int, n: int) -> bool:
    """Allocate the blocks of ``[off, off + n)`` before writing them (``fallocate``, mode 0; see
    the module doc); OSError ENOSPC/EDQUOT when the disk is full.  False when the file system
    cannot allocate ahead: the caller stops asking."""
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
