"""Benchmark: ``vhdtool check --guest`` wall time with each guest engine on the fixture images.

    .venv/bin/python -m bench.check_engines [NAME ...] [--repeat 5] [--formats qcow2,vhdx]
        [--guestfs-repeat 1] [--dir DIR]

For every fixture image (fixtures/; built on demand into the shared cache) the whole
``vhdtool check --guest --engine E IMAGE --format json:FILE`` command line runs as a child
process -- Python start-up, disk facts, opening the guest, every check, the report -- with
``--engine native`` (best of ``--repeat``) and ``--engine guestfs`` (libguestfs, the peer; its
appliance launch dominates, best of ``--guestfs-repeat``), in the same run. Reported per image:
wall seconds of each, the child CPU seconds (user+sys; the machine is shared, so CPU shows what
the native engine itself costs when wall time is inflated by other load), the ratio, and whether
both runs gave identical check results. ``--formats`` also converts the good image with qemu-img
and checks it natively in those formats (the engine reads VHD/VHDX/qcow2 without converting).
The issue's goal: native under 1 s wall for the good image. ``--native-only`` (issue 18: whole
``check`` of each fixture, the goal under 1 s each) skips libguestfs; ``--new`` names the fixture
guests of issue 18 (other layouts: grub.d, dracut, systemd-boot, btrfs, NetworkManager, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import FORMAT_RECIPES, log, make_format, workdir

VHDTOOL = [sys.executable, "-m", "vhdtool"]
#: the fixture guests of issue 18 (fixtures/recipes.py)
ISSUE18 = ("grub-d-netplan", "dracut-hv", "dracut-no-hv", "systemd-boot", "btrfs-subvol",
           "networkmanager", "networkmanager-an", "waagent-only", "cloudinit-split",
           "specialized-kept")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def check(image: Path, engine: str, report: Path, *extra: str) -> tuple[float, float, dict]:
    """(wall s, child CPU s, {id: (verdict, findings)}) of one ``vhdtool check`` command line."""
    cpu0, t0 = _cpu(), time.perf_counter()
    res = subprocess.run([*VHDTOOL, "check", "--guest", "--engine", engine, str(image),
                          "--format", f"json:{report}", *extra], capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    if res.returncode not in (0, 1):
        raise RuntimeError(f"vhdtool check --engine {engine} {image} exited {res.returncode}: "
                           f"{res.stderr}")
    data = json.loads(report.read_text())
    used = (data.get("guest_engine") or {}).get("name")
    if used != engine:
        raise RuntimeError(f"--engine {engine} used {used}: {res.stderr}")
    return wall, cpu, {r["id"]: (r["verdict"], r["findings"]) for r in data["results"]}


def best(image: Path, engine: str, report: Path, repeat: int,
         *extra: str) -> tuple[float, float, dict]:
    runs = [check(image, engine, report, *extra) for _ in range(max(1, repeat))]
    wall = min(r[0] for r in runs)
    cpu = min(r[1] for r in runs)
    return wall, cpu, runs[0][2]


def main() -> None:
    from fixtures import build
    from fixtures.recipes import RECIPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="fixture images (default: all)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--guestfs-repeat", type=int, default=1)
    ap.add_argument("--formats", default="", help="e.g. qcow2,vhdx,vpc-dynamic (good image)")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--native-only", action="store_true", help="time the native engine only")
    ap.add_argument("--new", action="store_true", help="the fixture guests of issue 18")
    args = ap.parse_args()
    work = workdir(args.dir)
    report = work / "check-engines-report.json"
    names = args.names or (list(ISSUE18) if args.new else sorted(RECIPES))
    rows = []
    if args.native_only:
        print(f"{'image':24} {'native s':>9} {'cpu s':>6}  <1 s  checks that failed")
    else:
        print(f"{'image':24} {'native s':>9} {'cpu s':>6} {'guestfs s':>10} {'cpu s':>6} "
              f"{'ratio':>6}  same results")
    for name in names:
        image = build.image(name, log=log)
        state = ("--os-state", RECIPES[name].os_state)  # as the image is meant to be uploaded
        n_wall, n_cpu, n_res = best(image, "native", report, args.repeat, *state)
        if args.native_only:
            failed = sorted(cid for cid, (verdict, _) in n_res.items() if verdict == "fail")
            rows.append({"image": name, "native_s": n_wall, "native_cpu_s": n_cpu,
                         "failed": failed})
            print(f"{name:24} {n_wall:9.2f} {n_cpu:6.2f}  {'OK' if n_wall < 1 else 'SLOW'}  "
                  f"failed: {', '.join(failed)}", flush=True)
            continue
        g_wall, g_cpu, g_res = best(image, "guestfs", report, args.guestfs_repeat, *state)
        same = n_res == g_res
        rows.append({"image": name, "native_s": n_wall, "native_cpu_s": n_cpu,
                     "guestfs_s": g_wall, "guestfs_cpu_s": g_cpu, "ratio": g_wall / n_wall,
                     "identical": same})
        print(f"{name:24} {n_wall:9.2f} {n_cpu:6.2f} {g_wall:10.2f} {g_cpu:6.2f} "
              f"{g_wall / n_wall:6.1f}x  {'yes' if same else 'NO'}", flush=True)
    for recipe in [f for f in args.formats.split(",") if f]:
        if recipe not in FORMAT_RECIPES:
            raise SystemExit(f"unknown format recipe {recipe!r}: {', '.join(FORMAT_RECIPES)}")
        raw = work / "good.raw"
        if not raw.exists():
            subprocess.run(["cp", "--sparse=always", str(build.image("good", log=log)), str(raw)],
                           check=True)
        img = make_format(raw, recipe)
        n_wall, n_cpu, _ = best(img, "native", report, args.repeat)
        rows.append({"image": f"good as {recipe}", "native_s": n_wall, "native_cpu_s": n_cpu})
        print(f"{'good as ' + recipe:24} {n_wall:9.2f} {n_cpu:6.2f}", flush=True)
    report.unlink(missing_ok=True)
    out = work / "check_engines.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    os.replace(tmp, out)
    log(f"results: {out}")


if __name__ == "__main__":
    main()
