"""Damaged partition tables and footers: the check run never crashes, and a damaged image is
either checked (findings) or refused with a FormatError (exit 3) -- never another exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhdtool.checks.catalog import Profile, Verdict
from vhdtool.formats import FormatError
from tests.vhdtool.images import MiB, gpt_hybrid, wrap_fixed
from vhdtool.pipeline import run

HEAD = 34 * 512          # protective MBR, GPT header, entry array


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> bytes:
    d = tmp_path_factory.mktemp("robust")
    return wrap_fixed(gpt_hybrid(d / "r.raw", 24 * MiB), d / "r.vhd") \
        .read_bytes()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.one_of(st.integers(0, HEAD - 1),
                                          st.integers(-1024, -1)),
                                st.integers(0, 255)), min_size=1, max_size=24))
def test_mutated_tables_and_footer(pristine: bytes, tmp_path: Path, edits) -> None:
    data = bytearray(pristine)
    for off, val in edits:
        data[off] = val
    img = tmp_path / "m.vhd"
    img.write_bytes(bytes(data))
    try:
        result = run(str(img), Profile())
    except FormatError:
        return
    crashed = [(r.check.id, r.reason) for r in result.results if r.verdict is Verdict.ERROR]
    assert not crashed
