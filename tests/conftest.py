from __future__ import annotations

import bz2
import hashlib
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples"


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
