"""The native engine on damaged copies of the real fixture images (slow: needs the fixtures).

Each copy is a qcow2 overlay over the read-only fixture (``qemu-img create -b``) into which
``qemu-io`` writes random bytes over sectors in use at the start of every partition (GPT entries,
FAT boot sector and FATs, ext4/XFS superblocks and inode tables, LVM2 label and metadata text):
the fixture is never written, and the engine reads the overlay through the format core's qcow2
reader (backing file included). Every run of the whole catalog must end with results -- checks
that could not read the guest reported as errors naming the image -- or the guest skipped with a
NativeEngineError: never an exception out of ``pipeline.run``, never past the time bound.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest

from vhdtool.checks.catalog import Profile, Verdict
from vhdtool.formats import open_image
from vhdtool.formats.partitions import read_partition_table
from vhdtool.pipeline import run

pytestmark = pytest.mark.slow
pytest.importorskip("dissect.extfs")
from vhdtool.native_engine import NativeEngine  # noqa: E402

COPIES = 16


def _used_sectors(path: str) -> list[int]:
    with open_image(path, "raw") as img:
        table = read_partition_table(img.read, img.virtual_size, 512, path)
        used = [i * 512 for i in range(1, 34)]                    # GPT header + entries
        for p in table.partitions:
            head = img.read(p.start, min(p.size, 8 << 20))
            used += [p.start + i for i in range(0, len(head), 512) if head[i:i + 512].strip(b"\0")]
    return used


@pytest.mark.parametrize("name", ["good", "lvm-xfs", "gen1-mbr"])
def test_damaged_fixture_copies(name: str, fixture_image, tmp_path: Path) -> None:
    base = str(fixture_image(name))
    used = _used_sectors(base)
    rng = random.Random(f"hostile-{name}")
    outcomes = {"checked": 0, "skipped": 0, "read-errors": 0}
    for n in range(COPIES):
        overlay = tmp_path / f"damaged-{n}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw",
                        str(overlay)], check=True)
        cmds = []
        for _ in range(rng.randint(4, 48)):
            at = rng.choice(used) + rng.randrange(512)
            cmds += ["-c", f"write -P {rng.randrange(256)} {at} {rng.choice((1, 2, 4, 8, 64))}"]
        subprocess.run(["qemu-io", "-f", "qcow2", *cmds, str(overlay)], check=True,
                       capture_output=True)
        engine = NativeEngine(timeout=30, warn=lambda m: None)
        t0 = time.monotonic()
        result = run(str(overlay), Profile(), "qcow2", guest_engine=engine)
        assert time.monotonic() - t0 < 60
        guest = [r for r in result.results if r.check.id.startswith("guest.")]
        if engine.skip_reason:
            assert str(overlay) in engine.skip_reason
            outcomes["skipped"] += 1
            continue
        outcomes["checked"] += 1
        crashed = [r for r in guest if r.verdict is Verdict.ERROR]
        for r in crashed:
            assert "GuestReadError" in r.reason and str(overlay) in r.reason, r.reason
        outcomes["read-errors"] += bool(crashed)
        overlay.unlink()
    print(name, outcomes)
    assert sum(outcomes.values()) >= COPIES
