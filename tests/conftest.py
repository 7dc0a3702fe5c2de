from __future__ import annotations

import bz2
import hashlib
import os
from pathlib import Path

import pytest


def _samples_dir() -> Path:
    """The real images made by Hyper-V and others: $VHDTOOL_SAMPLES, else ../shared/samples beside
    the clone, else /work/shared/samples (where this project's machines keep them)."""
    here = Path(__file__).resolve().parent.parent.parent / "shared" / "samples"
    for cand in (os.environ.get("VHDTOOL_SAMPLES"), here, "/work/shared/samples"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return here


SAMPLES = _samples_dir()


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
