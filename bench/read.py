"""Benchmark: reading every format vs ``qemu-img convert -O raw``, and allocation maps of 1 TiB.

    .venv/bin/python -m bench.read [--dir DIR] [--virtual-gib 4] [--data-gib 1]

Part 1 — a 4 GiB disk with 1 GiB of data, stored as raw, fixed and dynamic VHD, VHDX, qcow2 and
zlib-compressed qcow2 (all made by qemu-img from the same raw file).  For each, the same job done
by both tools in the same run: read the whole virtual disk and write it as a sparse raw file.
qemu-img: ``qemu-img convert -f FMT -O raw``.  vhdtool: walk the allocation map, read the data
runs through ``DiskImage.readinto`` in 8 MiB blocks, skip all-zero blocks, ``pwrite`` the rest.
Each output is compared with the other (same bytes) so a fast wrong reader cannot win.

Part 2 — a 1 TiB sparse disk with 16 small written ranges, in each format: the time to build the
full allocation map (``list(img.extents())``) next to ``qemu-img map --output=json``.

Prints every figure and the ratio vhdtool/qemu-img (issue 2 asks for at most 1.5 for reading,
and under a second for a 1 TiB map).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import time
from pathlib import Path

from bench.common import (GiB, MiB, QEMU_FORMAT, children_peak_rss_mib, log, make_format,
                          make_raw, run, self_peak_rss_mib, timed, workdir)
from formats import Kind, open_image

BLOCK = 8 * MiB
ZEROS = bytes(BLOCK)


def vhdtool_to_raw(src: Path, fmt: str, out: Path) -> None:
    buf = bytearray(BLOCK)
    mv = memoryview(buf)
    with open_image(src, fmt) as img:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, img.virtual_size)
            for ext in img.extents():
                if ext.kind is not Kind.DATA:
                    continue
                for off in range(ext.offset, ext.end, BLOCK):
                    n = min(BLOCK, ext.end - off)
                    view = mv[:n]
                    view[:] = ZEROS[:n]
                    img.readinto(off, view)
                    if view != ZEROS[:n]:
                        os.pwrite(fd, view, off)
        finally:
            os.close(fd)


def qemu_to_raw(src: Path, fmt: str, out: Path) -> None:
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", src, out)


def part_read(d: Path, virtual: int, data: int, recipes: list[str]) -> list[tuple[str, float, float]]:
    raw = make_raw(d / f"bench-{virtual // GiB}g-{data // GiB}g.raw", virtual, data)
    rows = []
    for recipe in recipes:
        src = make_format(raw, recipe)
        fmt = QEMU_FORMAT[recipe]
        ours, theirs = d / "out.vhdtool.raw", d / "out.qemu.raw"
        log(f"read: {recipe} ...")
        t_q = timed(lambda: qemu_to_raw(src, fmt, theirs))
        t_v = timed(lambda: vhdtool_to_raw(src, fmt, ours))
        if not filecmp.cmp(ours, theirs, shallow=False):
            raise SystemExit(f"read: {recipe}: vhdtool and qemu-img disagree on the content")
        ours.unlink()
        theirs.unlink()
        rows.append((recipe, t_v, t_q))
    return rows


MAP_FORMATS = {"raw": None, "vpc": "subformat=dynamic", "vhdx": "subformat=dynamic",
               "qcow2": None}


def make_sparse_tib(d: Path, fmt: str) -> Path:
    path = d / f"sparse-1t.{fmt}"
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    opts = MAP_FORMATS[fmt]
    run("qemu-img", "create", "-q", "-f", fmt, *(["-o", opts] if opts else []), tmp, "1T")
    cmds = []
    for i in range(16):
        cmds += ["-c", f"write -P {i + 1} {i * 64 * GiB + 3 * MiB} 1M"]
    run("qemu-io", "-f", fmt, *cmds, tmp)
    os.replace(tmp, path)
    return path


def part_map(d: Path, formats: list[str]) -> list[tuple[str, float, float, int]]:
    rows = []
    for fmt in formats:
        path = make_sparse_tib(d, fmt)
        log(f"map: {fmt} ...")
        t_q = timed(lambda: subprocess.run(["qemu-img", "map", "--output=json", "-f", fmt,
                                            str(path)], check=True, stdout=subprocess.DEVNULL))
        with open_image(path, fmt) as img:
            n = 0

            def walk() -> None:
                nonlocal n
                n = sum(1 for e in img.extents() if e.kind is Kind.DATA)
            t_v = timed(walk)
        rows.append((fmt, t_v, t_q, n))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="work folder (default /var/tmp/vhdtool-bench)")
    ap.add_argument("--virtual-gib", type=int, default=4)
    ap.add_argument("--data-gib", type=int, default=1)
    ap.add_argument("--formats", default="raw,vpc-fixed,vpc-dynamic,vhdx,qcow2,qcow2-zlib")
    ap.add_argument("--map-formats", default=",".join(MAP_FORMATS))
    args = ap.parse_args()
    d = workdir(args.dir)
    t0 = time.perf_counter()
    reads = part_read(d, args.virtual_gib * GiB, args.data_gib * GiB, args.formats.split(","))
    maps = part_map(d, args.map_formats.split(","))
    print(f"# bench.read: {args.virtual_gib} GiB virtual, {args.data_gib} GiB data "
          f"(best of 3, same machine, same run)")
    print(f"{'format':<12} {'vhdtool s':>10} {'qemu-img s':>11} {'ratio':>7}  (limit 1.5)")
    for recipe, t_v, t_q in reads:
        print(f"{recipe:<12} {t_v:>10.3f} {t_q:>11.3f} {t_v / t_q:>7.2f}"
              f"{'' if t_v / t_q <= 1.5 else '  OVER'}")
    print("# allocation map of a 1 TiB sparse disk with 16 written MiB")
    print(f"{'format':<12} {'vhdtool s':>10} {'qemu-img map s':>15} {'data runs':>10}  (limit 1 s)")
    for fmt, t_v, t_q, n in maps:
        print(f"{fmt:<12} {t_v:>10.3f} {t_q:>15.3f} {n:>10}{'' if t_v < 1 else '  OVER'}")
    print(f"# peak RSS: vhdtool (this process) {self_peak_rss_mib():.0f} MiB, "
          f"qemu-img (largest child) {children_peak_rss_mib():.0f} MiB; "
          f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
