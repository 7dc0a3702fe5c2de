"""Evaluation behind docs/engines.md: pure-Python ext4 readers on the good image's root, side by side.

    .venv/bin/python -m bench.fs_readers [--mutations 200] [--seed 1]

Candidates: ``dissect.extfs`` (Fox-IT, AGPL-3.0-or-later) and ``ext4`` (python-ext4, MIT).  The
workload is what the catalog reads: list /etc, /boot, /lib/modules/<v>; read /etc/fstab,
/etc/os-release, /etc/default/grub, /boot/grub/grub.cfg, modules.builtin, and follow the
/etc/os-release symlink.  Measured, same run: import seconds, open + workload seconds (best of 5),
and robustness: ``--mutations`` copies of the partition with used sectors damaged (in memory, the
image is never written), each read under a 10 s SIGALRM bound, outcomes counted as: read fine,
failed with an exception, ran out of time. The exception types are listed: a reader that raises
``struct.error``/``IndexError`` instead of its own error class is what the engine must wrap.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import random
import signal
import sys
import time
from typing import Any, Callable

from bench.common import log

FILES = ["etc/fstab", "etc/default/grub", "boot/grub/grub.cfg"]


class _Stream:
    """A seekable read-only file over ``read(offset, length)`` (with optional damage)."""

    def __init__(self, read: Callable[[int, int], bytes], size: int,
                 patch: dict[int, int] | None = None) -> None:
        self._read, self.size, self.pos, self.patch = read, size, 0, patch or {}

    def seek(self, off: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.size}[whence] + off
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        data = bytearray(self._read(self.pos, max(0, n)))
        for off, val in self.patch.items():
            if self.pos <= off < self.pos + len(data):
                data[off - self.pos] = val
        self.pos += len(data)
        return bytes(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def peek(self, n: int = 1) -> bytes:       # python-ext4 wants a PeekableStream
        pos = self.pos
        data = self.read(n)
        self.pos = pos
        return data


def workload_dissect(fh: Any, version: str) -> int:
    from dissect.extfs import ExtFS
    fs = ExtFS(fh)
    n = 0
    for d in ("etc", "boot", f"usr/lib/modules/{version}"):
        n += len(fs.get(d).listdir())
    for f in FILES + [f"usr/lib/modules/{version}/modules.builtin"]:
        n += len(fs.get(f).open().read())
    link = fs.get("etc/os-release")
    n += len(fs.get("usr/lib/os-release").open().read()) + len(link.link)
    return n


def workload_ext4(fh: Any, version: str) -> int:
    import ext4
    vol = ext4.Volume(fh)

    def get(path: str) -> Any:
        return vol.inode_at("/" + path)

    n = 0
    for d in ("etc", "boot", f"usr/lib/modules/{version}"):
        n += sum(1 for _ in get(d).opendir())
    for f in FILES + [f"usr/lib/modules/{version}/modules.builtin"]:
        n += len(get(f).open().read())
    n += len(get("usr/lib/os-release").open().read()) + len(get("etc/os-release").readlink())
    return n


CANDIDATES = {"dissect.extfs": workload_dissect, "ext4": workload_ext4}


def _bounded(fn: Callable[[], Any], seconds: float) -> Any:
    def fire(*_: Any) -> None:
        raise TimeoutError("bound")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def main() -> None:
    from fixtures import build
    from vhdtool.formats import open_image
    from vhdtool.formats.partitions import read_partition_table
    from vhdtool.native_engine import open_guest

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mutations", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    path = str(build.image("good", log=log))
    with open_guest(path, "raw") as s:
        version = s.guest.facts.kernels[0].version
    img = open_image(path, "raw")
    table = read_partition_table(img.read, img.virtual_size, 512, path)
    root = max(table.partitions, key=lambda p: p.size)

    def read(off: int, n: int) -> bytes:
        return img.read(root.start + off, max(0, min(n, root.size - off)))

    head = read(0, 16 << 20)
    used = [i for i in range(0, len(head), 512) if head[i:i + 512].strip(b"\0")]
    rng = random.Random(args.seed)
    damage = []
    for _ in range(args.mutations):
        patch = {}
        for _ in range(rng.randint(1, 32)):
            at = rng.choice(used) + rng.randrange(512)
            patch[at] = rng.randrange(256)
        damage.append(patch)
    for name, work in CANDIDATES.items():
        t0 = time.perf_counter()
        try:
            importlib.import_module(name)
        except ImportError:
            print(f"{name}: not installed")
            continue
        imp = time.perf_counter() - t0
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            size = work(_Stream(read, root.size), version)
            times.append(time.perf_counter() - t0)
        outcomes: collections.Counter[str] = collections.Counter()
        kinds: collections.Counter[str] = collections.Counter()
        slowest = 0.0
        for patch in damage:
            t0 = time.perf_counter()
            try:
                _bounded(lambda: work(_Stream(read, root.size, patch), version), 10.0)
                outcomes["read"] += 1
            except TimeoutError:
                outcomes["timeout"] += 1
            except RecursionError:
                outcomes["error"] += 1
                kinds["RecursionError"] += 1
            except Exception as e:  # noqa: BLE001 - counting what escapes is the point
                outcomes["error"] += 1
                kinds[f"{type(e).__module__}.{type(e).__name__}"] += 1
            slowest = max(slowest, time.perf_counter() - t0)
        print(f"{name}: import {imp:.3f} s; open + workload {min(times) * 1000:.1f} ms "
              f"({size} bytes/entries); {args.mutations} damaged copies: "
              f"{dict(outcomes)}, slowest {slowest:.2f} s")
        for kind, count in kinds.most_common():
            print(f"    {count:4} {kind}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
