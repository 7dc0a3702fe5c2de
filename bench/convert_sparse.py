"""Benchmark: the cost of ``vhdtool convert``'s default follows the data, not the virtual size.

    .venv/bin/python -m bench.convert_sparse [--dir DIR] [--virtual-gib 127] [--repeat 3]

Sources (made once by qemu-img): a dynamic VHD of ``--virtual-gib`` GiB holding no data, and a
30 GiB raw disk holding 620 MiB (the two cases issue 14 measured: 77 s and 19 s with the old
SHA-256 default).  For each, in the same run, interleaved rounds, medians:

* ``vhdtool convert SRC DST`` -- the default digest, a bmap (vhdtool.bmap: SHA-256 of the mapped
  ranges only);
* ``vhdtool convert --digest none``;
* ``qemu-img convert -f FMT -O vpc -o subformat=fixed,force_size`` (no digest at all), the peer;
* ``vhdtool convert --digest sha256`` -- every byte hashed, the old default -- once, for scale.

Issue 14 asks: the empty 127 GiB VHD converted with the default options in under 1 s, with
qemu-img's time beside it.  After each vhdtool default run ``bmaptool copy`` could verify the
map; the tests do that (tests/vhdtool/test_bmap.py), the benchmark only times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from .common import GiB, MiB, interleaved, log, machine_load, make_raw, median, ratio_spread, run
from .common import spread, workdir

VHDTOOL = [sys.executable, "-m", "vhdtool", "convert", "-q"]


def empty_vhd(d: Path, gib: int) -> Path:
    out = d / f"empty-{gib}g.dynamic.vhd"
    if not out.exists():
        run("qemu-img", "create", "-f", "vpc", "-o", "subformat=dynamic,force_size", out,
            f"{gib}G")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir")
    ap.add_argument("--virtual-gib", type=int, default=127)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    d = workdir(args.dir)
    log(machine_load())
    sources = [(empty_vhd(d, args.virtual_gib), "vpc", f"{args.virtual_gib} GiB VHD, no data"),
               (make_raw(d / "sparse-30g-620m.raw", 30 * GiB, 620 * MiB), "raw",
                "30 GiB raw, 620 MiB of data")]
    out = {name: d / f"out-{name}.vhd" for name in ("default", "none", "qemu", "sha256")}

    def vhdtool(src: Path, dst: Path, *extra: str) -> None:
        subprocess.run([*VHDTOOL, *extra, str(src), str(dst)], check=True)

    def remove(name: str) -> None:
        out[name].unlink(missing_ok=True)

    for src, fmt, what in sources:
        jobs = {
            "default": lambda s=src: vhdtool(s, out["default"]),
            "none": lambda s=src: vhdtool(s, out["none"], "--digest", "none"),
            "qemu": lambda s=src, f=fmt: run("qemu-img", "convert", "-f", f, "-O", "vpc", "-o",
                                             "subformat=fixed,force_size", s, out["qemu"]),
        }
        runs = interleaved(jobs, args.repeat, before_each=remove)
        remove("sha256")
        old = interleaved({"sha256": lambda s=src: vhdtool(s, out["sha256"], "--digest",
                                                           "sha256")}, 1, before_each=remove)
        print(f"{what} ({src.name}):")
        for name in jobs:
            print(f"  {name:8s} wall {spread(runs.wall[name])} s")
        print(f"  sha256   wall {median(old.wall['sha256']):.3f} s (every byte hashed, once)")
        print(f"  ratio default/qemu-img {ratio_spread(runs.wall['default'], runs.wall['qemu'])}"
              f", none/qemu-img {ratio_spread(runs.wall['none'], runs.wall['qemu'])}")
        for name in out:
            remove(name)
    log(machine_load())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
