"""Hostile input and unlucky operators (issue 14): damaged images are not blessed, signals end
vhdtool cleanly, no debris is left for ever, exit codes say what the docs say.

Every image is made by qemu-img and damaged with a few bytes of Python; qemu-img is the oracle
for what a salvaged copy must read as.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.oracle import needs_qemu, qemu_img, qemu_io
from vhdtool import atomicfile
from vhdtool import convert as conv
from vhdtool.cli import cli

pytestmark = needs_qemu

MiB = 1 << 20
VHDTOOL = [sys.executable, "-m", "vhdtool"]
ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VHDTOOL, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def dynamic_vhd(tmp: Path, name: str = "dyn.vhd", size: int = 8 * MiB) -> Path:
    raw = tmp / f"{name}.raw"
    qemu_img("create", "-f", "raw", raw, str(size))
    qemu_io(raw, "raw", "write -P 0x5a 0 3M", f"write -P 0xa5 {size - MiB} 1M")
    out = tmp / name
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size", raw, out)
    raw.unlink()
    return out


def _bat(data: bytes) -> int:
    header = struct.unpack(">Q", data[16:24])[0]          # the footer copy's data offset
    return struct.unpack(">Q", data[header + 16:header + 24])[0]


def damaged(tmp: Path, kind: str) -> Path:
    """A VHD with one error-level structure problem (what `vhdtool info` lists as an error)."""
    if kind == "fixed-short":
        raw = tmp / "short.raw"
        qemu_img("create", "-f", "raw", raw, str(4 * MiB))
        qemu_io(raw, "raw", "write -P 0x33 0 4M")
        fixed = tmp / "fixed.vhd"
        qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size", raw,
                 fixed)
        data = fixed.read_bytes()
        footer = data[-512:]
        out = tmp / "fixed-short.vhd"
        out.write_bytes(data[:3 * MiB] + footer)       # data cut short, the footer kept valid
        return out
    data = bytearray(dynamic_vhd(tmp).read_bytes())
    if kind == "overlap":
        bat = _bat(data)
        data[bat + 4:bat + 8] = data[bat:bat + 4]      # block 1 stored where block 0 is
    elif kind == "footer-checksum":
        data[-512 + 64] ^= 0xFF
    elif kind == "no-footer":
        data = data[:-512]
    else:
        raise ValueError(kind)
    out = tmp / f"{kind}.vhd"
    out.write_bytes(bytes(data))
    return out


def info_errors(path: Path) -> list[dict]:
    res = run("info", "--json", str(path))
    assert res.returncode == 0, res.stderr
    return [p for p in json.loads(res.stdout)["problems"] if p["severity"] == "error"]


# -- 2. convert does not bless a damaged image -------------------------------------------------
@pytest.mark.parametrize("kind", ["overlap", "footer-checksum", "no-footer", "fixed-short"])
def test_convert_refuses_a_damaged_image(tmp_path: Path, kind: str) -> None:
    src = damaged(tmp_path, kind)
    before = src.read_bytes()
    errors = info_errors(src)
    assert errors, f"info lists no error for {kind}"
    dst = tmp_path / "out.vhd"
    res = run("convert", str(src), str(dst))
    assert res.returncode == 3, res.stderr
    first = errors[0]
    assert f"{src}: {first['structure']}" in res.stderr
    if first["offset"] is not None:
        assert f"at offset {first['offset']:#x}" in res.stderr
    assert "--salvage" in res.stderr and "Traceback" not in res.stderr
    assert not dst.exists() and not list(tmp_path.glob(".*.part"))
    assert src.read_bytes() == before


@pytest.mark.parametrize("kind", ["overlap", "footer-checksum", "no-footer"])
def test_salvage_converts_as_qemu_reads(tmp_path: Path, kind: str) -> None:
    """qemu-img reads these three (it refuses a bad footer checksum only at the end, where a
    valid copy at offset 0 serves): the salvaged copy must read exactly as qemu-img reads the
    source; the JSON says it was salvaged and names each problem."""
    src = damaged(tmp_path, kind)
    dst = tmp_path / "out.vhd"
    res = run("convert", "--salvage", "--json", str(src), str(dst))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["salvaged"] is True
    assert any(w.startswith("salvaged despite") for w in doc["warnings"])
    ref = tmp_path / "ref.raw"
    qemu_ok = subprocess.run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", str(src),
                              str(ref)], capture_output=True).returncode == 0
    if qemu_ok:
        qemu_img("compare", "-f", "raw", "-F", "vpc", ref, dst)


def test_good_image_is_not_salvaged(tmp_path: Path) -> None:
    src = dynamic_vhd(tmp_path)
    res = run("convert", "--json", str(src), str(tmp_path / "out.vhd"))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["salvaged"] is False
    assert run("convert", "--salvage", "--in-place", str(src)).returncode == 2


def test_in_place_refuses_a_damaged_image(tmp_path: Path) -> None:
    src = damaged(tmp_path, "fixed-short")
    before = src.read_bytes()
    res = run("convert", "--in-place", str(src))
    assert res.returncode == 3 and "VHD footer" in res.stderr, res.stderr
    assert src.read_bytes() == before


# -- 6. exit codes as documented ------------------------------------------------------------------
@pytest.mark.parametrize("command", [["info"], ["check", "--no-guest"], ["convert"]])
def test_directory_and_unreadable_file_exit_3(tmp_path: Path, command: list[str]) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    extra = [str(tmp_path / "out.vhd")] if command == ["convert"] else []
    res = run(*command, str(folder), *extra)
    assert res.returncode == 3, res.stderr
    assert f"{folder}: file: a directory, not a disk image" in res.stderr

    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(MiB))
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    argv = [*VHDTOOL, *command, str(secret), *extra]
    if os.geteuid() == 0:       # root reads everything: be nobody
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    else:
        secret.chmod(0)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert res.returncode == 3, res.stderr
    assert f"{secret}: Permission denied" in res.stderr


@pytest.mark.parametrize("backing", ["fifo", "/dev/zero", "missing"])
def test_backing_file_that_is_not_an_image(tmp_path: Path, backing: str) -> None:
    if backing == "fifo":
        target = tmp_path / "fifo"
        os.mkfifo(target)
        want = "is a FIFO, not a disk image"
    elif backing == "missing":
        target = tmp_path / "gone.raw"
        want = "not found"
    else:
        target = Path(backing)
        want = "is a character device, not a disk image"
    img = tmp_path / "over.qcow2"
    qemu_img("create", "-f", "qcow2", "-u", "-b", target, "-F", "raw", img, "64M")
    for command in (["info"], ["check", "--no-guest"],
                    ["convert", str(img), str(tmp_path / "o.vhd")]):
        args = command if command[0] == "convert" else [*command, str(img)]
        res = run(*args, timeout=30)
        assert res.returncode == 3, res.stderr
        assert f"backing file '{target}' {want}" in res.stderr


# -- 4. signals and debris ------------------------------------------------------------------------
def slow_source(tmp: Path) -> Path:
    """A source whose default conversion takes seconds: 24 GiB, hashed in full (--digest sha256)."""
    src = tmp / "big.raw"
    with open(src, "wb") as f:
        f.truncate(24 << 30)
    return src


def _start_convert(src: Path, dst: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*VHDTOOL, "convert", "--digest", "sha256", str(src), str(dst)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 30
    while not list(dst.parent.glob(f".{dst.name}.vhdtool-{proc.pid}.*.part")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no partial file appeared"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                      (signal.SIGHUP, 129)])
def test_signal_mid_conversion_leaves_nothing(tmp_path: Path, sig: int, code: int) -> None:
    src = slow_source(tmp_path)
    dst = tmp_path / "out.vhd"
    proc = _start_convert(src, dst)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip() == f"vhdtool: interrupted ({signal.Signals(sig).name})"
    assert not dst.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.raw"]


def test_stale_partial_file_of_a_killed_run_is_removed(tmp_path: Path) -> None:
    src = slow_source(tmp_path)
    dst = tmp_path / "out.vhd"
    proc = _start_convert(src, dst)
    proc.kill()
    proc.wait()
    [stale] = tmp_path.glob(".out.vhd.vhdtool-*.part")
    st = stale.stat()
    # a live writer's partial file, locked as vhdtool locks its own: never touched
    fd, live = atomicfile.create_partial(str(tmp_path / "other.vhd"))
    try:
        small = tmp_path / "small.raw"
        small.write_bytes(bytes(MiB))
        res = run("convert", "--json", str(small), str(tmp_path / "small.vhd"))
        assert res.returncode == 0, res.stderr
        warnings = json.loads(res.stdout)["warnings"]
        assert [w for w in warnings if "partial file" in w] == [
            f"removed {stale}, a partial file of out.vhd left by vhdtool process {proc.pid}, "
            f"which is gone ({st.st_size} bytes, {st.st_blocks * 512} allocated)"]
        assert not stale.exists() and Path(live).exists()
    finally:
        os.close(fd)
        os.unlink(live)


def test_report_writes_remove_stale_partial_files_too(tmp_path: Path) -> None:
    stale = tmp_path / ".report.json.vhdtool-999999.abcdefgh.part"
    stale.write_bytes(b"half a report")
    allocated = stale.stat().st_blocks * 512
    assert atomicfile.write_atomic_bytes(str(tmp_path / "r.json"), b"{}") == [
        f"removed {stale}, a partial file of report.json left by vhdtool process 999999, which "
        f"is gone (13 bytes, {allocated} allocated)"]
    assert not stale.exists() and (tmp_path / "r.json").read_bytes() == b"{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


# -- 5. Ctrl-C at start-up and after the output is complete ---------------------------------------
def test_ctrl_c_while_starting_prints_no_traceback(tmp_path: Path) -> None:
    """SIGINT delivered while vhdtool imports click (the heaviest start-up import): one line and
    exit 130 (click used to print 'Aborted!' or Python a traceback)."""
    code = (
        "import builtins, os, signal, sys\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name == 'click':\n"
        "        builtins.__import__ = real\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "sys.argv = ['vhdtool', 'info', 'x']\n"
        "from vhdtool.entry import main\n"
        "main()\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert res.returncode == 130, res.stderr
    assert res.stderr == "vhdtool: interrupted (SIGINT)\n"


def test_ctrl_c_after_the_output_is_named_says_it_is_complete(tmp_path: Path,
                                                               monkeypatch) -> None:
    src = dynamic_vhd(tmp_path)
    dst = tmp_path / "out.vhd"
    real = conv.run._publish

    def publish_then_ctrl_c(*args: object) -> None:
        real(*args)
        os.kill(os.getpid(), signal.SIGINT)    # held back until the name is given

    monkeypatch.setattr(conv.run, "_publish", publish_then_ctrl_c)
    res = CliRunner().invoke(cli, ["convert", str(src), str(dst)])
    assert res.exit_code == 130
    assert (f"vhdtool: interrupted (SIGINT) after {dst} was complete: it is a finished, "
            f"verified file") in res.output
    qemu_img("compare", "-f", "vpc", "-F", "vpc", src, dst)
    assert not list(tmp_path.glob(".*.part"))
