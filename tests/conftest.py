from __future__ import annotations

import bz2
import hashlib
import signal
from pathlib import Path

import pytest

from tests.shared import shared_path


def pytest_configure(config: pytest.Config) -> None:
    # A runner started in the background (`cmd &` in a script, nohup) passes SIGINT and SIGHUP on
    # to its children ignored, and vhdtool, like any program, keeps an inherited ignore: the tests
    # that send those signals to a vhdtool child need them delivered as from a terminal.
    for sig, handler in ((signal.SIGINT, signal.default_int_handler),
                         (signal.SIGHUP, signal.SIG_DFL)):
        if signal.getsignal(sig) is signal.SIG_IGN:
            signal.signal(sig, handler)

SAMPLES = shared_path("samples")


@pytest.fixture
def sample(tmp_path: Path):
    """Decompress one of ../shared/samples/*.bz2 into tmp_path (never next to the originals)."""

    def get(name: str, sha256: str | None = None) -> Path:
        src = SAMPLES / (name + ".bz2")
        if not src.exists():
            pytest.skip(f"sample {src} not present")
        out = tmp_path / name
        with bz2.open(src) as fin, open(out, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
        if sha256 is not None:
            assert hashlib.sha256(out.read_bytes()).hexdigest() == sha256
        return out

    return get


# --- fixture images (fixtures/; see fixtures/README.md) ---------------------------------------------


def _fixture_build_skip_reason() -> str | None:
    """Why real images cannot be built here (debootstrap, chroot and libguestfs need root)."""
    import os
    import shutil

    if os.geteuid() != 0:
        return "building fixture images needs root (debootstrap, chroot)"
    missing = [t for t in ("debootstrap", "tar", "chroot") if shutil.which(t) is None]
    if missing:
        return f"missing tools for fixture images: {missing}"
    try:
        import guestfs  # noqa: F401
    except ImportError:
        return "python3-guestfs not importable"
    return None


@pytest.fixture(scope="session")
def fixture_image():
    """fixture_image(name) -> Path of the read-only raw image of recipe `name` (built or reused)."""
    reason = _fixture_build_skip_reason()
    from fixtures.build import image

    def get(name: str) -> Path:
        if reason:
            pytest.skip(reason)
        return image(name)

    return get


@pytest.fixture(scope="session")
def fixture_info(fixture_image):
    """fixture_info(name) -> the image's JSON sidecar (recipe, flaws, partitions, UUIDs, fstab)."""
    import json

    def get(name: str) -> dict:
        return json.loads(fixture_image(name).with_suffix(".json").read_text())

    return get


@pytest.fixture
def fixture_image_rw(fixture_image, tmp_path: Path):
    """fixture_image_rw(name) -> Path of a private writable (reflinked or sparse) copy."""
    from fixtures.images import sparse_copy

    def get(name: str) -> Path:
        dst = tmp_path / f"{name}.raw"
        sparse_copy(fixture_image(name), dst)
        return dst

    return get


@pytest.fixture
def synthetic_image(tmp_path: Path):
    """synthetic_image(files, **kw) -> Path of a small raw disk whose ext4 root holds `files`.

    Seconds, no appliance: see fixtures/synthetic.py for the keyword arguments (table, esp_files…).
    """
    from fixtures.synthetic import synthetic_image as make

    count = 0

    def get(files, **kw) -> Path:
        nonlocal count
        count += 1
        return make(tmp_path / f"synthetic-{count}.raw", files, **kw)

    return get
