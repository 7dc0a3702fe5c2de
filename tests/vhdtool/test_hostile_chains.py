"""Issue 14: an image vhdtool's own reader refuses (a qcow2 backing chain that loops on itself or
through another file, a backing file that is a FIFO; all made by qemu-img) is exit 3 within
seconds under every engine, for ``check`` and ``manifest``, before any engine runs: libguestfs'
``qemu-img create -b`` spins on such a loop and blocks on the FIFO. Nothing is left running.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from vhdtool import procguard

from .test_procguard import TAG, gone, hostile, start

pytestmark = pytest.mark.skipif(not procguard.supported(), reason="needs a readable /proc")

HOSTILE = ("self-loop", "a-b-a", "fifo")
EXPECTED = {"self-loop": "backing chain: loop", "a-b-a": "backing chain: loop",
            "fifo": "qcow2 backing file name at offset 0x"}


@pytest.mark.parametrize("command", ["check", "manifest"])
@pytest.mark.parametrize("engine", ["auto", "native", "guestfs"])
@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_backing_chain_is_exit_3_at_once(kind: str, engine: str, command: str,
                                                 tmp_path: Path) -> None:
    img = hostile(kind, tmp_path)
    tag = uuid.uuid4().hex
    t0 = time.monotonic()
    p = start([sys.executable, "-m", "vhdtool", command, "--engine", engine, str(img)], tag,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = p.communicate(timeout=60)
        elapsed = time.monotonic() - t0
        left = gone(tag)
    finally:
        procguard.kill_marked(tag, TAG)     # had it hung (the bug), leave nothing running
    assert p.returncode == 3, err
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert f"vhdtool: error: {img}: " in err and EXPECTED[kind] in err, err
    assert "Traceback" not in err and "guest engine:" not in err, err
    assert left == {}, "processes left behind"
