"""Benchmark: the digests of ``vhdtool manifest --md5`` against coreutils on the same file.

    .venv/bin/python -m bench.manifest [--dir DIR] [--virtual-gib 4] [--data-gib 1] [--repeat 3]

The disk: a sparse raw file with ``--data-gib`` of data (bench.common.make_raw) wrapped as a fixed
VHD. In the same run, each command as a user runs it (a separate process), ``--repeat`` times
interleaved, best wall time:

* A: ``vhdtool manifest --no-guest --md5 -o FILE`` — the whole disk-level run: disk facts, every
  disk check, SHA-256 and MD5 of every byte in one read (two hash threads), the manifest;
* B: ``sha256sum FILE; md5sum FILE`` — the peer: what a pipeline does to pin an upload;
* C: ``sha256sum FILE & md5sum FILE; wait`` — the peer in parallel (two reads of the file).

The manifest's digests are compared with the peers' output every round, so a fast wrong answer
cannot win. Reported: the ratios A/B and A/C (below 1: vhdtool is faster).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.common import GiB, log, make_raw, timed, workdir
from vhdtool.formats.vhd import build_fixed_footer


def make_vhd(raw: Path) -> Path:
    vhd = raw.with_suffix(".vhd")
    if not vhd.exists():
        tmp = vhd.with_suffix(".tmp")
        subprocess.run(["cp", "--sparse=always", str(raw), str(tmp)], check=True)
        size = raw.stat().st_size
        with open(tmp, "ab") as f:
            f.write(build_fixed_footer(size))
        tmp.rename(vhd)
    return vhd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir")
    ap.add_argument("--virtual-gib", type=float, default=4)
    ap.add_argument("--data-gib", type=float, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    d = workdir(args.dir)
    raw = make_raw(d / f"manifest-{args.virtual_gib:g}g.raw", int(args.virtual_gib * GiB),
                   int(args.data_gib * GiB))
    vhd = make_vhd(raw)
    out = d / "manifest.json"
    vhdtool = [sys.executable, "-m", "vhdtool", "manifest", str(vhd), "--no-guest", "--md5",
               "-o", str(out)]

    def ours() -> None:
        subprocess.run(vhdtool, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    peer: dict[str, str] = {}

    def sequential() -> None:
        for tool in ("sha256sum", "md5sum"):
            peer[tool] = subprocess.run([tool, str(vhd)], capture_output=True, text=True,
                                        check=True).stdout.split()[0]

    def parallel() -> None:
        procs = [subprocess.Popen([t, str(vhd)], stdout=subprocess.PIPE, text=True)
                 for t in ("sha256sum", "md5sum")]
        for p in procs:
            p.communicate()

    times = {"vhdtool manifest --no-guest --md5": 0.0, "sha256sum; md5sum": 0.0,
             "sha256sum & md5sum": 0.0}
    best = {k: float("inf") for k in times}
    for _ in range(args.repeat):
        for name, fn in zip(times, (ours, sequential, parallel)):
            best[name] = min(best[name], timed(fn, 1))
        doc = json.loads(out.read_text())
        assert doc["file"]["sha256"] == peer["sha256sum"] and doc["file"]["md5"] == peer["md5sum"]
    log(f"file {vhd.stat().st_size / GiB:.2f} GiB ({args.data_gib:g} GiB data), best of "
        f"{args.repeat}:")
    for name, t in best.items():
        log(f"  {name:36s} {t:7.2f} s")
    a = best["vhdtool manifest --no-guest --md5"]
    log(f"  ratio vhdtool / sequential peers: {a / best['sha256sum; md5sum']:.2f}")
    log(f"  ratio vhdtool / parallel peers:   {a / best['sha256sum & md5sum']:.2f}")


if __name__ == "__main__":
    main()
