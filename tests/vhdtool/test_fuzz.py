"""Fuzzing the CLI with mutated images of every format (hypothesis, bounded time).

Each example takes a small image made by qemu-img, changes a few bytes where the format keeps its
structures (the first 320 KiB, where VHDX keeps its headers and region tables, and the last 4 KiB,
where a VHD keeps its footer), and runs ``info``, ``convert --digest none`` and ``check
--no-guest`` on it in-process.  Asserted, for every example:

* every exit code is 0, 1 or 3 (the documented ones for an image; ``convert``: 0, 3 or 5,
  a refused conversion) and nothing raised -- no traceback, no hang (an alarm ends an example
  after 30 s);
* whenever ``convert`` exits 0, its output reads exactly as qemu-img reads the source
  (``qemu-img compare``), or ``info`` reports a problem with the source -- vhdtool never
  silently disagrees with qemu-img on an image it blesses.  Outputs larger than 256 MiB (a mutated
  size field) are not compared byte by byte: there the virtual sizes must agree instead.

The examples are derandomized, so CI runs the same ones every time; VHDTOOL_FUZZ_EXAMPLES raises
their number for a longer hunt.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.oracle import needs_qemu, qemu_img, write_pattern
from vhdtool.cli import cli
from vhdtool.exitcodes import Exit

pytestmark = needs_qemu
MiB = 1 << 20
EXAMPLES = int(os.environ.get("VHDTOOL_FUZZ_EXAMPLES", "100"))
COMPARE_LIMIT = 256 * MiB
SEEDS: dict[str, tuple[str, list[str]]] = {
    "raw": ("raw", []),
    "vpc-fixed": ("vpc", ["-O", "vpc", "-o", "subformat=fixed,force_size"]),
    "vpc-dynamic": ("vpc", ["-O", "vpc", "-o", "subformat=dynamic,force_size"]),
    "vhdx": ("vhdx", ["-O", "vhdx", "-o", "subformat=dynamic"]),
    "qcow2": ("qcow2", ["-O", "qcow2"]),
    "qcow2-compressed": ("qcow2", ["-O", "qcow2", "-c"]),
}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("fuzz-seeds")
    raw = write_pattern(d / "p.raw", 4 * MiB, [(0, 4096), (MiB + 512, 300_000),
                                               (4 * MiB - 8192, 8192)])
    out = {}
    for name, (_, args) in SEEDS.items():
        img = raw if not args else d / f"{name}.img"
        if args:
            qemu_img("convert", "-f", "raw", *args, raw, img)
        out[name] = img.read_bytes()
    return out


class Hang(Exception):
    pass


def _alarm(_sig: int, _frame: object) -> None:
    raise Hang("an example ran for more than 30 s")


def invoke(args: list[str], codes: tuple[int, ...] = (0, 1, 3)):
    """``codes``: the exit codes allowed (convert: 5 = refused, e.g. an empty disk, never 1)."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(30)
    try:
        res = CliRunner().invoke(cli, args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"vhdtool {' '.join(args)} raised {res.exception!r}") \
            from res.exception
    assert res.exit_code in codes, (args, res.exit_code, res.output)
    return res


def mutations(size: int):
    head = st.integers(0, min(size, 320 * 1024) - 1)
    tail = st.integers(max(0, size - 4096), size - 1)
    return st.lists(st.tuples(st.one_of(head, tail), st.integers(0, 255)), min_size=1,
                    max_size=6)


@pytest.mark.parametrize("seed", list(SEEDS))
def test_fuzz_mutated_images(seed: str, seeds: dict[str, bytes], tmp_path: Path) -> None:
    original = seeds[seed]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(mutations(len(original)))
    def one(changes: list[tuple[int, int]]) -> None:
        data = bytearray(original)
        for off, val in changes:
            data[off] = val
        src, dst = tmp_path / f"src.{seed}", tmp_path / "out.vhd"
        src.write_bytes(bytes(data))
        dst.unlink(missing_ok=True)
        try:
            info = invoke(["info", "--json", str(src)])
            described = json.loads(info.output) if info.exit_code == 0 else None
            invoke(["check", "--no-guest", "--format", "json", str(src)])
            conv = invoke(["convert", "-q", "--digest", "none", str(src), str(dst)],
                          codes=(Exit.OK, Exit.BAD_IMAGE, Exit.CONVERT_FAILED))
            assert src.read_bytes() == bytes(data), "the source changed"
            if conv.exit_code != 0:
                assert not dst.exists()
                return
            assert described is not None, "convert blessed an image info could not read"
            # a broken magic makes the file another format (raw) for any prober: qemu-img is
            # asked to read it as the format vhdtool found
            agreed = _qemu_agrees(src, described["format"], dst)
            assert agreed or described["problems"], (
                f"{changes}: the converted output differs from qemu-img's reading of it as "
                f"{described['format']} and info reports no problem")
        finally:
            src.unlink(missing_ok=True)
            dst.unlink(missing_ok=True)

    one()


def _qemu_agrees(src: Path, fmt: str, dst: Path) -> bool:
    """qemu-img reads the source as the output holds it (the output's MiB padding as zeros)."""
    info = subprocess.run(["qemu-img", "info", "--output=json", "-f", fmt, str(src)],
                          capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        return False
    size = json.loads(info.stdout)["virtual-size"]
    out_size = dst.stat().st_size - 512
    if out_size > COMPARE_LIMIT:
        return out_size == -(-size // MiB) * MiB
    res = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "vpc", str(src), str(dst)],
                         capture_output=True, text=True, timeout=120)
    return res.returncode == 0
