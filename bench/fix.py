"""Benchmark: ``vhdtool fix --generalize`` against the peer chain a user runs today.

    .venv/bin/python -m bench.fix [--image NAME] [--repeat 3] [--dir DIR]

Both sides start from the same flawed fixture image (``not-deprovisioned`` by default, from the
fixture cache: SSH host keys, a machine-id, root's bash history, waagent state and a cloud-init
instance) and end with a generalized fixed VHD, the source untouched; both run the libguestfs
appliance under TCG (``LIBGUESTFS_BACKEND_SETTINGS=force_tcg``: this VM has no usable KVM, and
vhdtool would otherwise spend a failed KVM attempt first):

* vhdtool: ``vhdtool fix SRC OUT.vhd --generalize`` -- makes a qcow2 overlay of SRC, ONE appliance
  launch that checks the guest, plans and writes the fixes, then converts the overlay (only its
  data is read: holes stay holes) and checks OUT.vhd again with the native engine (no second
  launch) -- more than the peer chain does (no digest is computed: without ``--manifest`` no
  report shows one);
* peer: ``qemu-img create -f qcow2 -b SRC`` (virt-sysprep edits its input in place, so a user
  works on an overlay or a copy; the overlay is the cheap one), ``virt-sysprep`` with the
  operations that remove what ``--generalize`` removes, then ``qemu-img convert -O vpc -o
  subformat=fixed,force_size``.  It checks nothing, before or after.

What ``--generalize`` removes is the deprovision set of the catalog (``checks/fixes_deprov.py``:
host keys, machine-id emptied, shell histories, authorized keys, DHCP leases, the provisioning
logs, waagent and cloud-init state, leftover users, usable root password).  The peer's
equivalent: the operations ``bash-history``, ``dhcp-client-state``, ``machine-id``,
``ssh-hostkeys``, ``ssh-userdir``, ``user-account``, and ``customize`` for ``--delete`` of the
waagent and cloud-init state and of the provisioning logs.  The differences, checked on the
outputs (the benchmark re-checks both with ``vhdtool check --select guest.deprovision``, and
``virt-diff`` of the two outputs of one run (2026-12-06) listed no file whose content, size or
mode differs, and one entry present on one side only: the empty folder ``/root/.ssh``, see
``ssh-userdir`` below):

* virt-sysprep's ``customize`` writes a *random* /etc/machine-id when the file is empty (its
  "Setting the machine ID" step) -- the opposite of deprovisioning -- so the peer also passes
  ``--truncate /etc/machine-id``, which runs after it;
* ``logfiles`` is not used: it deletes every log of the guest (/var/log/*.log, journal, apt,
  ...), far more than ``cloud-init clean --logs`` and waagent remove; the provisioning logs are
  ``--delete``-d instead;
* ``ssh-userdir`` deletes whole ~/.ssh folders, vhdtool the keys in them (here root's ~/.ssh is
  empty: the peer deletes it, vhdtool leaves it); ``user-account`` removes the same users (none on this image) but reads every
  account through Augeas, its slowest step here (its seconds are reported); the root password is
  not touched by the peer (``--root-password disabled`` would write /etc/shadow whatever it holds;
  vhdtool locks only a usable password, and this image has none).

Reported: median wall times of interleaved rounds and their ratio (the issue's target: <= 1.0),
the split of each side (vhdtool's steps from ``vhdtool -v fix``; the peer's virt-sysprep steps
from its own progress lines), and the peak resident memory of vhdtool's own process (VmHWM,
sampled; target < 300 MiB: the appliance's qemu is a separate process, the same one virt-sysprep
starts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import interleaved, log, machine_load, median, ratio_spread, spread, workdir

SYSPREP_OPERATIONS = ("bash-history,dhcp-client-state,machine-id,ssh-hostkeys,ssh-userdir,"
                      "user-account,customize")
SYSPREP_DELETES = ("/var/lib/waagent/*", "/var/lib/cloud/instances", "/var/lib/cloud/instance",
                   "/var/lib/cloud/data", "/var/lib/cloud/sem", "/var/lib/cloud/seed/azure",
                   "/var/log/waagent.log", "/var/log/cloud-init*.log", "/var/log/azure")
ENV = {**os.environ, "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
#: ``[  55.7] Performing "user-account" ...``: virt-sysprep's progress lines
STEP = re.compile(r"^\[\s*(?P<t>[\d.]+)\] (?P<what>.*)$")
#: ``vhdtool: timing: before 30.1 s, plan 0.01 s, ...`` (``vhdtool -v fix``)
TIMING = re.compile(r"timing: (?P<steps>.*); whole run")


def fixture(name: str) -> Path:
    from fixtures.build import cache_dir, paths
    from fixtures.recipes import RECIPES
    raw, _meta = paths(RECIPES[name], cache_dir())
    if not raw.exists():
        sys.exit(f"{name}: not in the fixture cache (python -m fixtures.build {name})")
    return raw


def peak_rss_mib(argv: list[str]) -> tuple[int, float]:
    """Run ``argv``; its exit code and the highest VmHWM of its own process seen (MiB)."""
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = [0]

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.05)

    t = threading.Thread(target=sample)
    t.start()
    rc = proc.wait()
    t.join()
    return rc, peak[0] / 1024


def sysprep_steps(progress: str) -> dict[str, float]:
    """Seconds of each step of virt-sysprep's progress lines (all but the last: ``--truncate``)."""
    marks = [(float(m["t"]), m["what"]) for m in map(STEP.match, progress.splitlines()) if m]
    out: dict[str, float] = {}
    for (t, what), (t_next, _) in zip(marks, marks[1:]):
        key = ("deletes" if what.startswith("Deleting") else
               what.split(" ...")[0].removeprefix("Performing ").strip('"'))
        out[key] = out.get(key, 0.0) + t_next - t
    return out


def vhdtool_steps(stderr: str) -> dict[str, float]:
    m = TIMING.search(stderr)
    if m is None:
        return {}
    parts = [s.rsplit(" ", 2) for s in m["steps"].split(", ")]     # NAME SECONDS s
    return {name: float(value) for name, value, _unit in parts}


def deprovision_verdicts(image: Path) -> dict[str, str]:
    """``vhdtool check --select guest.deprovision`` of ``image``: each check's verdict."""
    out = subprocess.run([sys.executable, "-m", "vhdtool", "check", str(image), "--select",
                          "guest.deprovision", "--format", "json"], env=ENV,
                         capture_output=True, text=True)
    if out.returncode not in (0, 1):
        raise SystemExit(f"vhdtool check {image} exited {out.returncode}: {out.stderr[-2000:]}")
    doc = json.loads(out.stdout)
    return {r["id"]: r["verdict"] for r in doc["results"]}


def medians(splits: list[dict[str, float]]) -> str:
    keys = list(dict.fromkeys(k for s in splits for k in s))
    return ", ".join(f"{k} {median([s.get(k, 0.0) for s in splits]):.1f}" for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="not-deprovisioned")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir")
    args = ap.parse_args()
    d = workdir(args.dir)
    src = fixture(args.image)
    ours, theirs, overlay = d / "fix-vhdtool.vhd", d / "fix-peer.vhd", d / "fix-peer.qcow2"
    vhdtool = [sys.executable, "-m", "vhdtool", "fix", str(src), str(ours), "--generalize",
               "--format", "json", "--no-progress"]
    ours_split: list[dict[str, float]] = []
    peer_split: list[dict[str, float]] = []

    def run_vhdtool() -> None:
        # exit 0 or 1 (findings without a fix may remain); 2+ is a failure of the run
        done = subprocess.run([*vhdtool[:3], "-v", *vhdtool[3:]], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode not in (0, 1):
            raise SystemExit(f"vhdtool fix exited {done.returncode}: {done.stderr[-2000:]}")
        ours_split.append(vhdtool_steps(done.stderr))

    def run_peer() -> None:
        t0 = time.perf_counter()
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(src), "-F", "raw",
                        str(overlay)], check=True)
        deletes = [a for p in SYSPREP_DELETES for a in ("--delete", p)]
        t1 = time.perf_counter()
        done = subprocess.run(["virt-sysprep", "--format", "qcow2", "-a", str(overlay),
                               "--operations", SYSPREP_OPERATIONS, *deletes,
                               "--truncate", "/etc/machine-id"], env=ENV, check=True,
                              capture_output=True, text=True)
        t2 = time.perf_counter()
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "vpc", "-o",
                        "subformat=fixed,force_size", str(overlay), str(theirs)], check=True)
        t3 = time.perf_counter()
        peer_split.append({"overlay": t1 - t0, "virt-sysprep": t2 - t1, "convert": t3 - t2,
                           **{f"  {k}": v for k, v in sysprep_steps(done.stdout).items()}})

    def clean(name: str) -> None:
        """Remove the outputs of job ``name`` (all of them for "")."""
        for p in {"vhdtool": (ours,), "peer": (theirs, overlay)}.get(name, (ours, theirs, overlay)):
            p.unlink(missing_ok=True)

    log(f"bench.fix on {src.name} ({src.stat().st_size >> 20} MiB virtual); {machine_load()}")
    clean("")
    runs = interleaved({"vhdtool": run_vhdtool, "peer": run_peer}, args.repeat,
                       before_each=clean)
    load_end = machine_load()
    ours_v, theirs_v = deprovision_verdicts(ours), deprovision_verdicts(theirs)
    clean("")
    rc, peak = peak_rss_mib(vhdtool)
    clean("")
    log(f"end: {load_end}")
    print(f"vhdtool fix --generalize   {spread(runs.wall['vhdtool'])} s  "
          f"(CPU of vhdtool and its children {spread(runs.cpu['vhdtool'])} s)")
    print(f"  steps (medians, s): {medians(ours_split)}")
    print(f"virt-sysprep + qemu-img    {spread(runs.wall['peer'])} s  "
          f"(CPU {spread(runs.cpu['peer'])} s)")
    print(f"  steps (medians, s): {medians(peer_split)}")
    print(f"ratio vhdtool/peer         {ratio_spread(runs.wall['vhdtool'], runs.wall['peer'])}"
          f"  (target <= 1.0; medians {median(runs.wall['vhdtool']):.1f} / "
          f"{median(runs.wall['peer']):.1f} s)")
    print(f"vhdtool peak RSS           {peak:.0f} MiB (exit {rc}; target < 300 MiB)")
    same = ours_v == theirs_v
    print(f"outputs' deprovision checks {'agree' if same else 'DIFFER'}: "
          f"{sum(v == 'pass' for v in ours_v.values())}/{len(ours_v)} pass on vhdtool's, "
          f"{sum(v == 'pass' for v in theirs_v.values())}/{len(theirs_v)} on the peer's")
    if not same:
        for k in sorted(set(ours_v) | set(theirs_v)):
            if ours_v.get(k) != theirs_v.get(k):
                print(f"  {k}: vhdtool {ours_v.get(k)}, peer {theirs_v.get(k)}")


if __name__ == "__main__":
    main()
