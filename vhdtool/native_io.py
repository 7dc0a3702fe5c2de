"""The native engine's bounded access to the image, and its readers (imported on first use).

* :class:`Budget`: a deadline shared by every read of one guest session; a SIGALRM timer (main
  thread) also stops a reader spinning without reading.
* :class:`Source`: the image's ``read(offset, length)`` with a block cache and the session's
  bounds (a single read is at most :data:`MAX_SINGLE_READ`).
* :class:`Window`: a seekable file object over a byte range (what the dissect readers read).
* :class:`Readers`: the ``dissect.*`` reader classes (``pip install 'vhdtool[native]'``).

References: signal(7)/setitimer(2) (ITIMER_REAL, SIGALRM); docs/engines.md (why dissect).
"""

from __future__ import annotations

import io
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: largest single read a filesystem reader may ask for
MAX_SINGLE_READ = 64 << 20
_BLOCK = 64 << 10
_CACHE_BLOCKS = 512          # 32 MiB of cached image blocks at most


class NativeEngineUnavailable(RuntimeError):
    """The pure-Python filesystem readers (dissect.*) are not installed."""



class Timeout(Exception):
    """The session's time budget is spent (raised inside reads and by the SIGALRM timer)."""


_READER_MODULES = {"ext": ("dissect.extfs", "ExtFS"), "xfs": ("dissect.xfs", "XFS"),
                   "btrfs": ("dissect.btrfs", "Btrfs"), "vfat": ("dissect.fat", "FATFS"),
                   "lvm": ("dissect.volume.lvm", "LVM2"),
                   "pv": ("dissect.volume.lvm.physical", "LVM2Device")}


class Readers:
    """The dissect reader classes, each imported on first use (dissect.xfs alone costs ~1 s)."""

    def __init__(self) -> None:
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        if key not in self._loaded:
            import importlib
            module, name = _READER_MODULES[key]
            try:
                self._loaded[key] = getattr(importlib.import_module(module), name)
            except ImportError as e:
                raise NativeEngineUnavailable(
                    f"the native guest engine needs the dissect filesystem readers ({e.name} is "
                    "missing): pip install 'vhdtool[native]'") from None
        return self._loaded[key]


#: the distributions the readers come from (checked without importing them)
_DISTRIBUTIONS = ("dissect.extfs", "dissect.xfs", "dissect.btrfs", "dissect.fat", "dissect.volume")


def available() -> str | None:
    """None when the readers are installed, else why not (without importing them)."""
    from importlib.metadata import PackageNotFoundError, version
    missing = []
    for dist in _DISTRIBUTIONS:
        try:
            version(dist)
        except PackageNotFoundError:
            missing.append(dist)
    if missing:
        return f"{', '.join(missing)} not installed (pip install 'vhdtool[native]')"
    return None


def import_readers() -> Readers:
    reason = available()
    if reason is not None:
        raise NativeEngineUnavailable(f"the native guest engine needs the dissect filesystem "
                                      f"readers: {reason}")
    return Readers()


class Budget:
    """A deadline shared by every read of one session; SIGALRM stops CPU-bound loops too."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self._depth = 0

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise Timeout()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Raise :class:`Timeout` inside the block once the deadline passes (main thread only)."""
        self.check()
        if self._depth or threading.current_thread() is not threading.main_thread():
            yield
            return

        def fire(signum: int, frame: Any) -> None:
            raise Timeout()

        old = signal.signal(signal.SIGALRM, fire)
        start = time.monotonic()
        outer = signal.setitimer(signal.ITIMER_REAL, max(0.001, self.deadline - start))
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            if outer[0] > 0:        # the caller's own timer goes on where it was
                left = outer[0] - (time.monotonic() - start)
                signal.setitimer(signal.ITIMER_REAL, max(0.001, left), outer[1])


class Source:
    """The image's ``read(offset, length)`` with a block cache and the session's bounds."""

    def __init__(self, read: Callable[[int, int], bytes], size: int, budget: Budget) -> None:
        self._read, self.size, self.budget = read, size, budget
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def _block(self, n: int) -> bytes:
        data = self._cache.get(n)
        if data is None:
            self.budget.check()
            start = n * _BLOCK
            data = self._read(start, min(_BLOCK, self.size - start))
            self._cache[n] = data
            if len(self._cache) > _CACHE_BLOCKS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(n)
        return data

    def read(self, offset: int, length: int) -> bytes:
        if length > MAX_SINGLE_READ:
            raise OSError(f"a read of {length} bytes at {offset} exceeds the "
                          f"{MAX_SINGLE_READ >> 20} MiB bound")
        end = min(offset + length, self.size)
        if offset >= end or offset < 0:
            return b""
        if end - offset > 4 * _BLOCK:       # large reads bypass the cache
            self.budget.check()
            return self._read(offset, end - offset)
        first, last = offset // _BLOCK, (end - 1) // _BLOCK
        out = b"".join(self._block(n) for n in range(first, last + 1))
        skip = offset - first * _BLOCK
        return out[skip:skip + end - offset]


class Window(io.RawIOBase):
    """A seekable file object over ``[start, start + size)`` of a source (what dissect reads)."""

    def __init__(self, read: Callable[[int, int], bytes], start: int, size: int) -> None:
        super().__init__()
        self._r, self.start, self.size, self.pos = read, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = max(0, min(n, self.size - self.pos))
        data = self._r(self.start + self.pos, n) if n else b""
        self.pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def pread(self, offset: int, n: int) -> bytes:
        return self._r(self.start + offset, max(0, min(n, self.size - offset)))


__all__ = ["Budget", "Source", "Window", "Readers", "Timeout", "NativeEngineUnavailable",
           "available", "import_readers", "MAX_SINGLE_READ"]
