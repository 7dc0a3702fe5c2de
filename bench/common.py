"""Shared pieces of the benchmarks: test images made by qemu-img, timing, peak memory of children.

Benchmarks compare vhdtool with its peers on the same machine in the same run and report ratios;
absolute times mean nothing across machines.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

GiB = 1 << 30
MiB = 1 << 20

#: the peer conversions that turn a raw file into each benchmarked format
FORMAT_RECIPES: dict[str, list[str]] = {
    "raw": [],
    "vpc-fixed": ["-O", "vpc", "-o", "subformat=fixed,force_size"],
    "vpc-dynamic": ["-O", "vpc", "-o", "subformat=dynamic,force_size"],
    "vhdx": ["-O", "vhdx", "-o", "subformat=dynamic"],
    "qcow2": ["-O", "qcow2"],
    "qcow2-zlib": ["-O", "qcow2", "-c", "-o", "compression_type=zlib"],
}

#: the qemu-img format name of each recipe
QEMU_FORMAT = {"raw": "raw", "vpc-fixed": "vpc", "vpc-dynamic": "vpc", "vhdx": "vhdx",
               "qcow2": "qcow2", "qcow2-zlib": "qcow2"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(*argv: str | os.PathLike[str]) -> None:
    subprocess.run([str(a) for a in argv], check=True, stdout=subprocess.DEVNULL)


def data_runs(virtual: int, data: int, pieces: int = 64) -> list[tuple[int, int]]:
    """``pieces`` equal runs totalling ``data`` bytes, spread evenly over ``virtual`` bytes."""
    step = virtual // pieces
    size = data // pieces
    return [(i * step + (step - size) // 2 // MiB * MiB, size) for i in range(pieces)]


def make_raw(path: Path, virtual: int, data: int, seed: int = 7) -> Path:
    """A sparse raw file with ``data`` bytes of incompressible-ish data (half random, half text)."""
    if path.exists() and path.stat().st_size == virtual:
        return path
    import random

    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.truncate(virtual)
        for i, (off, length) in enumerate(data_runs(virtual, data)):
            f.seek(off)
            for done in range(0, length, 4 * MiB):
                n = min(4 * MiB, length - done)
                if i % 2:
                    f.write(rng.randbytes(n))
                else:  # compressible: what real file systems mostly hold
                    f.write((b"vhdtool bench %08d\n" % (done // 4096)) * (n // 22) + b"\n" * (n % 22))
    os.replace(tmp, path)
    return path


def make_format(raw: Path, recipe: str) -> Path:
    if recipe == "raw":
        return raw
    out = raw.with_name(f"{raw.stem}.{recipe}.img")
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        run("qemu-img", "convert", "-f", "raw", *FORMAT_RECIPES[recipe], raw, tmp)
        os.replace(tmp, out)
    return out


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of ``repeat`` runs (the least disturbed by the other work on the machine)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def children_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def self_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def workdir(arg: str | None) -> Path:
    d = Path(arg or os.environ.get("VHDTOOL_BENCH_DIR", "/var/tmp/vhdtool-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d
