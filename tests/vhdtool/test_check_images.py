"""Disk-level checks on real images: made by qemu-img (the oracle for 'what users upload'), by the
format core's fixed-VHD writer, and by sgdisk/mkfs for partition layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vhdtool.checks.catalog import V1, V2, Profile, Verdict
from tests.oracle import qemu_img
from tests.vhdtool.images import (MiB, chs_geometry, gpt_hybrid, patch_footer, raw_disk,
                                  sparse_fixed, wrap_fixed)
from tests.vhdtool.images import run as sh
from vhdtool.pipeline import NO_GUEST, run

GiB = 1 << 30


def verdicts(path: Path, profile: Profile = Profile(), **kw) -> dict[str, Verdict]:
    return {r.check.id: r.verdict for r in run(str(path), profile, **kw).results}


@pytest.fixture(scope="module")
def raw100(tmp_path_factory) -> Path:
    return raw_disk(tmp_path_factory.mktemp("img") / "d.raw", 100 * MiB)


def test_qemu_fixed_without_force_size_fails_mib(raw100: Path, tmp_path: Path) -> None:
    out = tmp_path / "nf.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed", raw100, out)
    size = int(json.loads(qemu_img("info", "-f", "vpc", "--output=json", out))["virtual-size"])
    assert size % MiB                         # qemu rounded to a CHS geometry
    v = verdicts(out)
    assert v["disk.size.mib"] is Verdict.FAIL
    assert v["disk.vhd.cookie"] is v["disk.vhd.fixed"] is v["disk.vhd.checksum"] is Verdict.PASS
    assert v["disk.convert.needed"] is Verdict.PASS


def test_qemu_force_size_and_core_writer_pass_container_checks(raw100: Path,
                                                               tmp_path: Path) -> None:
    forced = tmp_path / "fs.vhd"
    qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed,force_size", raw100,
             forced)
    ours = wrap_fixed(raw100, tmp_path / "ours.vhd")
    container = ("disk.vhd.cookie", "disk.vhd.checksum", "disk.vhd.version",
                 "disk.vhd.data-offset", "disk.vhd.fixed", "disk.size.current-vs-file",
                 "disk.size.mib", "disk.size.limit", "disk.vhd.stale-footer", "disk.vhd.chs-size",
                 "disk.convert.needed", "disk.sector-size")
    for img in (forced, ours):
        v = verdicts(img)
        assert {c: v[c] for c in container} == {c: Verdict.PASS for c in container}, img


def test_qcow2_vhdx_dynamic_need_conversion(raw100: Path, tmp_path: Path) -> None:
    for fmt, opts in (("qcow2", []), ("vhdx", []), ("vpc", ["-o", "subformat=dynamic"])):
        out = tmp_path / f"x.{fmt}"
        qemu_img("convert", "-f", "raw", "-O", fmt, *opts, raw100, out)
        res = {r.check.id: r for r in run(str(out), Profile()).results}
        assert res["disk.convert.needed"].verdict is Verdict.FAIL, fmt
        assert "vhdtool convert" in res["disk.convert.needed"].findings[0].fix
    assert verdicts(tmp_path / "x.vpc")["disk.vhd.fixed"] is Verdict.FAIL
    # no footer at all: one finding (disk.convert.needed) with the fix, the footer checks skip
    assert verdicts(tmp_path / "x.qcow2")["disk.vhd.cookie"] is Verdict.SKIP


def test_damaged_cookie_fails_raw_needs_conversion(raw100: Path, tmp_path: Path) -> None:
    res = {r.check.id: r for r in run(str(raw100), Profile()).results}
    assert res["disk.convert.needed"].verdict is Verdict.FAIL
    assert res["disk.vhd.cookie"].verdict is Verdict.SKIP
    assert "disk.convert.needed" in res["disk.vhd.cookie"].reason
    bad = wrap_fixed(raw100, tmp_path / "cookie.vhd")
    patch_footer(bad, 0, b"conectiv", fix_checksum=True)
    assert qemu_img_refuses(bad)            # the oracle does not take it for a VHD either
    res = {r.check.id: r for r in run(str(bad), Profile()).results}
    assert res["disk.vhd.cookie"].verdict is Verdict.FAIL
    f = res["disk.vhd.cookie"].findings[0]
    assert "b'conectiv'" in f.message and f.evidence == f"footer @ {100 * MiB:#x}"


def test_footer_field_failures(raw100: Path, tmp_path: Path) -> None:
    bad_sum = wrap_fixed(raw100, tmp_path / "sum.vhd")
    patch_footer(bad_sum, 40, b"\x00\x00\x00\x00\x06\x40\x00\x01", fix_checksum=False)
    assert qemu_img_refuses(bad_sum)          # the oracle agrees the checksum is wrong
    v = verdicts(bad_sum)                     # damage reported once, by disk.structure
    assert v["disk.structure"] is Verdict.FAIL and v["disk.vhd.checksum"] is Verdict.SKIP
    version = wrap_fixed(raw100, tmp_path / "ver.vhd")
    patch_footer(version, 12, b"\x00\x02\x00\x00", fix_checksum=True)
    assert verdicts(version)["disk.vhd.version"] is Verdict.FAIL
    offset = wrap_fixed(raw100, tmp_path / "off.vhd")
    patch_footer(offset, 16, (512).to_bytes(8, "big"), fix_checksum=True)
    assert verdicts(offset)["disk.vhd.data-offset"] is Verdict.FAIL


def qemu_img_refuses(path: Path) -> bool:
    import subprocess
    return subprocess.run(["qemu-img", "info", "-f", "vpc", str(path)],
                          capture_output=True).returncode != 0


def test_size_checks(tmp_path: Path) -> None:
    small = wrap_fixed(raw_disk(tmp_path / "s.raw", 10 * MiB), tmp_path / "s.vhd")
    assert verdicts(small)["disk.size.limit"] is Verdict.FAIL
    big = sparse_fixed(tmp_path / "b.vhd", 3 * (1 << 40))
    assert big.stat().st_blocks * 512 < 64 * MiB
    assert verdicts(big, Profile(generations=frozenset({V1})))["disk.size.limit"] is Verdict.FAIL
    assert verdicts(big, Profile(generations=frozenset({V2})))["disk.size.limit"] is Verdict.PASS
    assert verdicts(big, Profile(role="data"))["disk.size.limit"] is Verdict.PASS
    trailing = wrap_fixed(raw_disk(tmp_path / "t.raw", 32 * MiB), tmp_path / "t.vhd")
    patch_footer(trailing, 48, (31 * MiB).to_bytes(8, "big"), fix_checksum=True)
    assert verdicts(trailing)["disk.size.current-vs-file"] is Verdict.FAIL


def test_chs_disagreement_and_stale_footer(raw100: Path, tmp_path: Path) -> None:
    size = 100 * MiB
    exact = chs_geometry(size)                 # CHS that does not cover 100 MiB exactly
    chs = wrap_fixed(raw100, tmp_path / "chs.vhd", geometry=exact)
    qsize = int(json.loads(qemu_img("info", "-f", "vpc", "--output=json", chs))["virtual-size"])
    assert qsize != size                       # qemu 7.2 really reads another size
    assert verdicts(chs)["disk.vhd.chs-size"] is Verdict.FAIL
    inner = wrap_fixed(raw100, tmp_path / "inner.vhd")
    twice = wrap_fixed(inner, tmp_path / "twice.vhd")   # a fixed VHD wrapped again as raw
    assert verdicts(twice)["disk.vhd.stale-footer"] is Verdict.FAIL


# -- partition layouts (sgdisk, mkfs) --------------------------------------------------------------

@pytest.fixture(scope="module")
def hybrid(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hy")
    return wrap_fixed(gpt_hybrid(d / "h.raw"), d / "h.vhd")


def test_hybrid_layout_passes_and_boots_both(hybrid: Path) -> None:
    """Disk-only run (no guest engine): every disk check passes; every guest check is skipped,
    with the reason that the guest was not opened unless the profile already rules it out."""
    r = run(str(hybrid), Profile())
    assert r.supported == {V1, V2}
    # guest.opened reads the disk facts but belongs with the guest checks (skipped: not requested)
    disk = [x for x in r.results if x.check.needs == "disk" and x.check.id != "guest.opened"
            and x.check.applies.why_not(r.profile, r.generations) is None]   # gallery.* need a declaration
    bad = {x.check.id: x.findings for x in disk if x.verdict is not Verdict.PASS}
    assert disk and not bad, bad
    guest = [x for x in r.results if x.check.needs == "guest" or x.check.id == "guest.opened"]
    assert guest and all(x.verdict is Verdict.SKIP for x in guest)
    in_profile = [x for x in guest if x.check.applies.why_not(r.profile, r.generations) is None]
    assert in_profile and all(x.reason == NO_GUEST for x in in_profile)
    assert "--no-guest" in NO_GUEST
    esp = [p for p in r.facts.partitions if p.index == 2][0]
    assert esp.start == 2 * MiB and esp.fs == "fat"


def test_layout_failures_from_sgdisk(tmp_path: Path) -> None:
    raw = raw_disk(tmp_path / "m.raw", 64 * MiB)
    sh("sgdisk", "-a1", "-n1:34:+1M", "-t1:8200", "-n2:0:0", "-t2:8300", raw)
    v = verdicts(wrap_fixed(raw, tmp_path / "m.vhd"))
    assert v["disk.part.first-mib"] is Verdict.FAIL
    assert v["disk.part.swap"] is Verdict.FAIL
    assert v["disk.part.alignment"] is Verdict.FAIL
    assert v["boot.generation"] is Verdict.FAIL          # no boot code, no ESP
    grown = tmp_path / "g.raw"
    gpt_hybrid(grown, 32 * MiB)
    with open(grown, "r+b") as f:
        f.truncate(33 * MiB)                              # grown after partitioning
    v = verdicts(wrap_fixed(grown, tmp_path / "g.vhd"))
    assert v["disk.gpt.backup"] is Verdict.FAIL
    assert verdicts(wrap_fixed(raw_disk(tmp_path / "n.raw", 32 * MiB),
                               tmp_path / "n.vhd"))["disk.part.scheme"] is Verdict.FAIL


def test_reads_only_what_it_needs(tmp_path: Path) -> None:
    """A 30 GiB sparse fixed VHD: the facts need a few sectors, not the disk."""
    from vhdtool.facts import build_disk_facts
    disk = sparse_fixed(tmp_path / "big.vhd", 30 * GiB)
    facts, nbytes = build_disk_facts(str(disk))
    assert facts.virtual_size == 30 * GiB and facts.is_fixed_vhd()
    assert nbytes < 1 * MiB


CONTAINER = ("disk.vhd.cookie", "disk.vhd.checksum", "disk.vhd.version", "disk.vhd.data-offset",
             "disk.vhd.fixed", "disk.size.current-vs-file", "disk.size.mib", "disk.size.limit",
             "disk.vhd.stale-footer", "disk.vhd.chs-size", "disk.convert.needed",
             "disk.sector-size")


@pytest.mark.parametrize("src_fmt", ["vpc-no-force-size", "qcow2", "vhdx"])
def test_vhdtool_convert_output_passes(tmp_path: Path, src_fmt: str) -> None:
    """What fails before `vhdtool convert` (the fix the checks name) passes after it."""
    from vhdtool.convert import convert
    raw = gpt_hybrid(tmp_path / "d.raw", 100 * MiB)
    src = tmp_path / "src"
    if src_fmt == "vpc-no-force-size":
        qemu_img("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed", raw, src)
    else:
        qemu_img("convert", "-f", "raw", "-O", src_fmt, raw, src)
    before = verdicts(src)
    assert Verdict.FAIL in (before["disk.size.mib"], before["disk.convert.needed"])
    out = tmp_path / "out.vhd"
    convert(str(src), str(out), digests=(), progress=False, sync=False)
    after = verdicts(out)
    assert {c: after[c] for c in CONTAINER} == {c: Verdict.PASS for c in CONTAINER}
    if src_fmt == "vpc-no-force-size":       # grown to a whole MiB: the GPT backup moved too
        assert before["disk.gpt.backup"] is Verdict.FAIL
    assert after["disk.gpt.backup"] is after["boot.generation"] is Verdict.PASS


def _with_boot_code(path: Path) -> Path:
    with open(path, "r+b") as f:
        f.write(b"\xeb\x63\x90" + b"\x10" * 437)
    return path


def test_mbr_layouts_from_sfdisk(tmp_path: Path) -> None:
    import subprocess
    raw = raw_disk(tmp_path / "m.raw", 64 * MiB)
    subprocess.run(["sfdisk", "-q", str(raw)], check=True, text=True, capture_output=True,
                   input="label: dos\nstart=63, size=16384, type=82\n"
                         "start=18432, size=8192, type=8e\nstart=26624, type=83, bootable\n")
    v = verdicts(wrap_fixed(_with_boot_code(raw), tmp_path / "m.vhd"))
    assert v["disk.part.scheme"] is Verdict.PASS
    assert v["disk.part.swap"] is v["disk.part.lvm"] is Verdict.FAIL
    assert v["disk.part.first-mib"] is v["disk.part.alignment"] is Verdict.FAIL
    assert v["boot.g1.bios"] is v["boot.generation"] is Verdict.PASS   # BIOS-only, auto = Gen1
    assert v["boot.g2.esp"] is Verdict.SKIP and v["disk.gpt.backup"] is Verdict.SKIP
    as_gen2 = verdicts(tmp_path / "m.vhd", Profile(generations=frozenset({V2})))
    assert as_gen2["boot.generation"] is as_gen2["boot.g2.esp"] is Verdict.FAIL


def test_gpt_layout_failures(tmp_path: Path) -> None:
    raw = raw_disk(tmp_path / "e.raw", 64 * MiB)      # ESP never formatted, no BIOS boot part
    sh("sgdisk", "-n1:2048:+16M", "-t1:ef00", "-n2:0:0", "-t2:8e00", raw)
    v = verdicts(wrap_fixed(_with_boot_code(raw), tmp_path / "e.vhd"),
                 Profile(generations=frozenset({V1, V2})))
    assert v["boot.g2.esp"] is v["boot.g1.bios"] is v["boot.generation"] is Verdict.FAIL
    assert v["disk.part.lvm"] is Verdict.FAIL
    shrunk = gpt_hybrid(tmp_path / "s.raw", 64 * MiB)
    with open(shrunk, "r+b") as f:
        f.truncate(48 * MiB)                            # disk shrunk under its partitions
    v = verdicts(wrap_fixed(shrunk, tmp_path / "s.vhd"))
    assert v["disk.part.bounds"] is v["disk.gpt.backup"] is Verdict.FAIL


def test_damaged_gpt_is_a_finding_not_an_unreadable_image(tmp_path: Path) -> None:
    raw = gpt_hybrid(tmp_path / "c.raw", 32 * MiB)
    with open(raw, "r+b") as f:
        f.seek(512 + 80)                                 # GPT header: number of entries
        f.write(b"\xff\xff\xff\xff")
    res = {r.check.id: r for r in run(str(wrap_fixed(raw, tmp_path / "c.vhd")), Profile()).results}
    assert res["disk.part.scheme"].verdict is Verdict.FAIL
    text = " ".join(f.message for f in res["disk.part.scheme"].findings)
    assert "CRC32" in text and "entry array" in text


def test_real_hyperv_samples_need_conversion(sample) -> None:
    """Images written by Hyper-V itself (../shared/samples, facts from its README)."""
    vhd = sample("hyperv2012r2-dynamic.vhd",
                 "1340b8a51517ba5f0112c47694f3c8a4a2bb4f9933336a18cf0392f3490c6674")
    r = run(str(vhd), Profile())
    v = {x.check.id: x.verdict for x in r.results}
    assert r.facts.footer.current_size == r.facts.virtual_size == 136_365_211_648
    assert v["disk.convert.needed"] is v["disk.vhd.fixed"] is Verdict.FAIL
    assert v["disk.vhd.cookie"] is v["disk.vhd.checksum"] is Verdict.PASS
    assert v["disk.size.current-vs-file"] is Verdict.SKIP       # only meaningful when fixed
    vhdx = sample("iotest-dynamic-1G.vhdx",
                  "a4fb24fa51fb4852d5a6bdc2b390a91b0a4e19b47696edc5a00c816067257402")
    r = run(str(vhdx), Profile())
    v = {x.check.id: x.verdict for x in r.results}
    assert r.facts.virtual_size == 1 << 30 and r.facts.logical_sector_size == 512
    assert v["disk.convert.needed"] is Verdict.FAIL and v["disk.vhd.cookie"] is Verdict.SKIP
    assert v["disk.sector-size"] is Verdict.PASS
