"""The libguestfs engine's writable view (for ``vhdtool fix``): mounted read-write on libguestfs'
overlay, a written file reads back, and the source image is never written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vhdtool import guestfs_engine as ge

from .nativeimages import Dir, Part, make_disk

UUID = "5b0c8a34-7e0b-4a8e-9d5e-3f1c2b4a6d7e"


def test_a_read_only_session_has_no_writable_view() -> None:
    backend = ge.GuestfsBackend(g=None, guard=None, writable=False)
    with pytest.raises(ge.GuestEngineError, match="mounted read-only"):
        backend.writable_view()


@pytest.mark.slow
@pytest.mark.guestfs
def test_write_then_read_back_without_touching_the_image(tmp_path: Path) -> None:
    tree = {"etc/fstab": f"UUID={UUID} / ext4 defaults 0 1\n",
            "etc/os-release": "ID=debian\nVERSION_ID=12\n", "var/lib": Dir()}
    disk = make_disk(tmp_path / "small.raw", [Part("ext4", tree, uuid=UUID)])
    before = hashlib.sha256(disk.read_bytes()).hexdigest(), disk.stat().st_mtime_ns
    with ge.open_guest(str(disk), "raw", progress=False, writable=True) as s:
        view = s.backend.writable_view()
        view.make_dir("/var/lib/vhdtool")
        view.write_file("/var/lib/vhdtool/note", b"written by the test\n")
        assert s.guest.read_file("/var/lib/vhdtool/note") == b"written by the test\n"
        assert "note" in s.guest.list_dir("/var/lib/vhdtool")
        view.remove("/var/lib/vhdtool/note")
        assert not s.guest.exists("/var/lib/vhdtool/note")
        view.write_file("/etc/hostname", b"fixed\n")
        assert s.guest.read_text("/etc/hostname") == "fixed\n"
    assert (hashlib.sha256(disk.read_bytes()).hexdigest(), disk.stat().st_mtime_ns) == before
