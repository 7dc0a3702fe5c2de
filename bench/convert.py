"""Benchmark: ``vhdtool convert`` vs ``qemu-img convert -O vpc -o subformat=fixed,force_size``.

    .venv/bin/python -m bench.convert [--dir DIR] [--virtual-gib 4] [--data-gib 1]
                                      [--formats raw,qcow2,qcow2-zlib,vhdx] [--repeat 3]

A 4 GiB disk with 1 GiB of data (bench.common.make_raw), stored as raw, qcow2, zlib-compressed
qcow2 and VHDX, all made by qemu-img from the same raw file.  For each source, in the same run,
both tools as the user runs them (separate processes, best wall time of ``--repeat``):

* qemu-img: ``qemu-img convert -f FMT -O vpc -o subformat=fixed,force_size SRC OUT``;
* vhdtool ``--digest none`` and vhdtool with SHA-256 (the default): ``python -m vhdtool convert``.

Also timed: SHA-256 of the whole output file on its own (hashlib, 8 MiB reads) — the cost a
digest adds if it is not overlapped with the I/O.  Peak RSS of each command comes from
``wait4()``.  The outputs are checked with ``qemu-img compare`` (same guest content) before any
figure is printed, so a fast wrong converter cannot win.

Issue 3 asks: ratio vhdtool/qemu-img (``--digest none``) at most 1.0 for raw, qcow2 and VHDX
(reported for compressed qcow2); the SHA-256 run's extra time no more than hashing alone; peak
memory under 200 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import GiB, MiB, QEMU_FORMAT, log, make_format, make_raw, workdir

RSS_LIMIT_MIB = 200


def run_measured(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one command run to completion."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"bench.convert: {' '.join(argv)} failed with {p.returncode}")
    return wall, usage.ru_maxrss / 1024


def best(argv: list[str], out: Path, repeat: int) -> tuple[float, float]:
    """Best wall time and largest peak RSS over ``repeat`` runs, each into a fresh ``out``."""
    times, peak = [], 0.0
    for _ in range(repeat):
        out.unlink(missing_ok=True)
        wall, rss = run_measured(argv)
        times.append(wall)
        peak = max(peak, rss)
    return min(times), peak


def hash_alone(path: Path, repeat: int) -> float:
    buf = bytearray(8 * MiB)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                h.update(memoryview(buf)[:n])
        times.append(time.perf_counter() - t0)
    return min(times)


def same_disk(a: Path, b: Path) -> None:
    res = subprocess.run(["qemu-img", "compare", "-f", "vpc", "-F", "vpc", str(a), str(b)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"bench.convert: outputs differ: {res.stdout} {res.stderr}")


def bench_one(d: Path, raw: Path, recipe: str, repeat: int) -> dict[str, float]:
    src = make_format(raw, recipe)
    fmt = QEMU_FORMAT[recipe]
    ours, theirs = d / "out.vhdtool.vhd", d / "out.qemu.vhd"
    vhdtool = [sys.executable, "-m", "vhdtool", "convert", "-q", "--force", "-f", fmt,
               str(src), str(ours)]
    log(f"convert: {recipe} ...")
    t_q, rss_q = best(["qemu-img", "convert", "-f", fmt, "-O", "vpc", "-o",
                       "subformat=fixed,force_size", str(src), str(theirs)], theirs, repeat)
    t_n, rss_n = best(vhdtool + ["--digest", "none"], ours, repeat)
    same_disk(ours, theirs)
    t_s, rss_s = best(vhdtool + ["--digest", "sha256"], ours, repeat)
    same_disk(ours, theirs)
    t_h = hash_alone(ours, repeat)
    row = {"qemu": t_q, "none": t_n, "sha256": t_s, "hash_alone": t_h,
           "rss_qemu": rss_q, "rss_none": rss_n, "rss_sha256": rss_s,
           "alloc_ours": os.stat(ours).st_blocks * 512 / MiB,
           "alloc_qemu": os.stat(theirs).st_blocks * 512 / MiB}
    ours.unlink()
    theirs.unlink()
    return row


def report(rows: dict[str, dict[str, float]], virtual_gib: int, data_gib: int, repeat: int) -> bool:
    print(f"# bench.convert: {virtual_gib} GiB virtual, {data_gib} GiB data, best of {repeat}, "
          f"same machine, same run; times in seconds")
    print(f"{'source':<11} {'qemu-img':>9} {'vht none':>9} {'ratio':>6} {'vht sha256':>11} "
          f"{'extra':>7} {'sha alone':>10} {'RSS MiB q/none/sha':>20} {'alloc MiB q/v':>15}")
    ok = True
    for recipe, r in rows.items():
        ratio = r["none"] / r["qemu"]
        extra = r["sha256"] - r["none"]
        flags = []
        if recipe != "qcow2-zlib" and ratio > 1.0:
            flags.append("RATIO>1")
        if extra > r["hash_alone"]:
            flags.append("EXTRA>HASH")
        if max(r["rss_none"], r["rss_sha256"]) >= RSS_LIMIT_MIB:
            flags.append("RSS")
        ok = ok and not flags
        print(f"{recipe:<11} {r['qemu']:>9.3f} {r['none']:>9.3f} {ratio:>6.2f} {r['sha256']:>11.3f} "
              f"{extra:>7.3f} {r['hash_alone']:>10.3f} "
              f"{r['rss_qemu']:>6.0f}/{r['rss_none']:>4.0f}/{r['rss_sha256']:>4.0f}       "
              f"{r['alloc_qemu']:>7.0f}/{r['alloc_ours']:<7.0f} {' '.join(flags)}")
    print("# limits: ratio <= 1.0 (raw, qcow2, vhdx; compressed qcow2 reported), "
          f"extra (sha256 - none) <= sha alone, peak RSS < {RSS_LIMIT_MIB} MiB")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="work folder (default /var/tmp/vhdtool-bench)")
    ap.add_argument("--virtual-gib", type=int, default=4)
    ap.add_argument("--data-gib", type=int, default=1)
    ap.add_argument("--formats", default="raw,qcow2,qcow2-zlib,vhdx")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    d = workdir(args.dir)
    raw = make_raw(d / f"bench-{args.virtual_gib}g-{args.data_gib}g.raw", args.virtual_gib * GiB,
                   args.data_gib * GiB)
    rows = {}
    for recipe in args.formats.split(","):
        try:
            rows[recipe] = bench_one(d, raw, recipe, args.repeat)
        except SystemExit as e:
            log(f"convert: {recipe}: {e}")
    ok = report(rows, args.virtual_gib, args.data_gib, args.repeat)
    sys.exit(0 if ok and len(rows) == len(args.formats.split(",")) else 1)


if __name__ == "__main__":
    main()
