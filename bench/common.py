"""Shared pieces of the benchmarks: test images made by qemu-img, timing, peak memory of children.

Benchmarks compare vhdtool with its peers on the same machine in the same run and report ratios;
absolute times mean nothing across machines.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
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


def bench_raw(d: Path, virtual: int, data: int) -> Path:
    """The benchmarks' source disk in folder ``d`` (made once, then reused)."""
    # ".v2": v1 wrote 23-byte lines in 22-byte slots (1.02 GiB of data, not 1 GiB)
    return make_raw(d / f"bench-{virtual // GiB}g-{data // GiB}g.v2.raw", virtual, data)


def make_raw(path: Path, virtual: int, data: int, seed: int = 7) -> Path:
    """A sparse raw file with exactly ``data`` bytes of data (half random, half text)."""
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
                    line = b"vhdtool bench %07d\n" % (done // 4096)     # 22 bytes
                    f.write(line * (n // len(line)) + b"\n" * (n % len(line)))
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
    """Best wall time of ``repeat`` runs (kept for the benchmarks that report one figure;
    ``interleaved`` gives medians and spreads of tool-vs-peer rounds)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@dataclass
class Runs:
    """Per-job lists of wall and CPU seconds (user + system, this process and its children)."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def interleaved(jobs: dict[str, Callable[[], object]], repeat: int = 3,
                after_round: Callable[[], object] | None = None,
                before_each: Callable[[str], object] | None = None) -> Runs:
    """Wall and CPU times of ``repeat`` rounds of every job, interleaved (A B A B ..., the order
    reversed every other round so neither tool always runs second), the page cache synced (dirty
    pages written, nothing dropped) before each run so one run's writeback does not land in the
    next.  The inputs stay in the page cache: both tools read them warm.  CPU time is less
    disturbed than wall time when other work shares the machine.  ``before_each(name)`` runs
    untimed before each job: removing the job's previous output there keeps both the freeing of
    its blocks and ext4's flush-on-close of a file truncated and rewritten (``auto_da_alloc``,
    which a tool opening its output with O_TRUNC would pay and qemu-img, which truncates through
    a first descriptor it closes before writing, does not) out of every measurement."""
    runs = Runs({k: [] for k in jobs}, {k: [] for k in jobs})
    names = list(jobs)
    for i in range(repeat):
        for name in names if i % 2 == 0 else reversed(names):
            if before_each is not None:
                before_each(name)
            os.sync()
            c0, t0 = _cpu_seconds(), time.perf_counter()
            jobs[name]()
            runs.wall[name].append(time.perf_counter() - t0)
            runs.cpu[name].append(_cpu_seconds() - c0)
        if after_round is not None:
            after_round()
    return runs


def median(ts: list[float]) -> float:
    return statistics.median(ts)


def spread(ts: list[float]) -> str:
    """``median [min-max]`` of a list of seconds."""
    return f"{median(ts):.3f} [{min(ts):.3f}-{max(ts):.3f}]"


def ratio_spread(a: list[float], b: list[float]) -> str:
    """Ratio of medians, and the range of the per-round ratios."""
    per_round = [x / y for x, y in zip(a, b)]
    return f"{median(a) / median(b):.2f} [{min(per_round):.2f}-{max(per_round):.2f}]"


def machine_load() -> str:
    one, five, fifteen = os.getloadavg()
    return (f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def as_installed() -> None:
    """Byte-compile the project's packages, so that every timed ``python -m vhdtool`` loads
    ``.pyc`` files as an installed vhdtool does (pip compiles a wheel's modules when it installs
    it).  The checkout is an editable install, and in an environment with
    PYTHONDONTWRITEBYTECODE set (as on the development VM) each run recompiled the dozen modules a
    conversion imports from source: ~20 ms of every vhdtool run, charged to vhdtool alone."""
    import compileall
    root = Path(__file__).resolve().parent.parent
    for pkg in ("vhdtool", "formats", "checks"):
        compileall.compile_dir(root / pkg, quiet=1)


def self_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def workdir(arg: str | None) -> Path:
    """The benchmark's folder; first, vhdtool's own modules are byte-compiled (see as_installed)."""
    as_installed()
    d = Path(arg or os.environ.get("VHDTOOL_BENCH_DIR", "/var/tmp/vhdtool-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d
