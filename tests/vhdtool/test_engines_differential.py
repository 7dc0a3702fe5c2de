"""Differential: the native and libguestfs engines give identical findings on every fixture image.

For each recipe (fixtures/recipes.py) the whole catalog runs twice, once per engine, on the same
image: every check's id, verdict, reason and findings (message, evidence, fix) must be equal, and
so must the guest facts both engines derive (filesystems with UUID/LABEL/PARTUUID/mountpoint,
kernels, bootloader files, fstab), and the checks that fail are exactly the recipe's declared
`fails` (plus disk.convert.needed: raw). libguestfs is the reference: it reads through the Linux
kernel.
"""

from __future__ import annotations

import pytest

from vhdtool.checks.catalog import Profile, Verdict
from fixtures.recipes import RECIPES
from vhdtool.guestfs_engine import GuestfsEngine

from .differential import differences, findings

pytestmark = [pytest.mark.slow, pytest.mark.guestfs]
pytest.importorskip("dissect.extfs")
from vhdtool.native_engine import NativeEngine  # noqa: E402


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_native_equals_guestfs(name: str, fixture_image, fixture_info) -> None:
    path = str(fixture_image(name))
    recipe = fixture_info(name).get("recipe", {})
    profile = Profile(os_state=recipe.get("os_state", "generalized"))
    native, native_facts = findings(path, NativeEngine(), profile)
    ref, ref_facts = findings(path, GuestfsEngine(progress=False), profile)
    assert ref_facts is not None, "libguestfs opened no guest"
    ran = [cid for cid, v in ref.items() if cid.startswith("guest.") and v[0] != "skip"]
    assert ran, "no guest check ran: nothing compared"
    assert not [cid for cid, v in native.items() if v[0] == Verdict.ERROR.value]
    assert differences(native, ref) == {}
    assert native_facts == ref_facts
    # exactly the recipe's declared failures, and no finding elsewhere (at any severity)
    declared = RECIPES[name].fails | {"disk.convert.needed"}
    assert {cid for cid, v in native.items() if v[0] == Verdict.FAIL.value} == declared
    assert {cid for cid, v in native.items() if v[2]} == declared


#: trees the catalog reads; every entry's lstat, link target and (small files) content compared
TREES = ("/etc", "/boot", "/root", "/var/lib", "/usr/lib/modules", "/usr/lib/systemd/system")


def _walk(view, top: str) -> dict:
    out, todo = {}, [top]
    while todo:
        d = todo.pop()
        for name in sorted(view.list_dir(d)):
            p = f"{d.rstrip('/')}/{name}"
            st = view.lstat(p)
            item = [st]
            if st is not None and st.is_link:
                item.append(view.readlink(p))
            elif st is not None and st.is_reg and st.size <= 256 * 1024:
                item.append(view.read_raw(p, 256 * 1024))
            elif st is not None and st.is_dir:
                todo.append(p)
            out[p] = item
    return out


@pytest.mark.parametrize("name", ["good", "lvm-xfs", "btrfs-subvol", "systemd-boot"])
def test_views_agree_entry_by_entry(name: str, fixture_image) -> None:
    """Below the checks: every entry of the trees the catalog reads, stat by stat, byte by byte."""
    from vhdtool import guestfs_engine as ge
    from vhdtool import native_engine as ne
    path = str(fixture_image(name))
    with ge.open_guest(path, "raw", progress=False) as g, ne.open_guest(path, "raw") as n:
        for top in TREES:
            ref, got = _walk(g.guest.view, top), _walk(n.guest.view, top)
            assert ref, f"{top} is empty in libguestfs's view"
            assert sorted(got) == sorted(ref), top
            assert [p for p in ref if ref[p] != got[p]] == [], top


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs"])
def test_views_agree_on_made_filesystems(fstype: str, tmp_path) -> None:
    """The small mkfs-made disks of the fast tests (FAT ESP with mixed-case names, links escaping
    upwards, loops, a /lib link): the kernel (libguestfs) and the native readers agree on every
    entry, and on the facts."""
    from vhdtool import guestfs_engine as ge
    from vhdtool import native_engine as ne

    from .test_native_engine import disk
    path = str(disk(tmp_path, fstype))
    with ge.open_guest(path, "raw", progress=False) as g, ne.open_guest(path, "raw") as n:
        assert n.guest.facts == g.guest.facts
        ref, got = _walk(g.guest.view, "/"), _walk(n.guest.view, "/")
        assert len(ref) > 20
        assert sorted(got) == sorted(ref)
        assert [p for p in ref if ref[p] != got[p]] == []
        for p in ("/etc/escape", "/etc/abs-escape", "/etc/to-esp", "/lib/modules",
                  "/boot/efi/efi/boot/bootx64.efi", "/etc/loop-a"):
            assert n.guest.stat(p) == g.guest.stat(p), p


def _btrfs_subvolume_disk(path, set_default: bool = True) -> None:
    """A GPT disk whose btrfs root lives in subvolume ``@`` (the default subvolume, as openSUSE
    sets it) with ``@home`` mounted by ``subvol=@home``: made in the libguestfs appliance, the only
    way here to create subvolumes without mounting on the host."""
    import guestfs
    with open(path, "wb") as f:
        f.truncate(200 << 20)
    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend_settings(["force_tcg"])
    g.add_drive_opts(str(path), format="raw", readonly=False)
    g.launch()
    try:
        g.part_disk("/dev/sda", "gpt")
        g.mkfs_btrfs(["/dev/sda1"], label="broot")
        uuid = g.vfs_uuid("/dev/sda1")
        g.mount("/dev/sda1", "/")
        for sub in ("/@", "/@home", "/@home/nested"):
            g.btrfs_subvolume_create(sub)
        ids = {s["btrfssubvolume_path"]: s["btrfssubvolume_id"] for s in g.btrfs_subvolume_list("/")}
        if set_default:
            g.btrfs_subvolume_set_default(ids["@"], "/")
        g.mkdir_p("/@/etc")
        g.mkdir_p("/@/home")
        g.write("/@/etc/fstab", f"UUID={uuid} / btrfs subvol=@ 0 0\n"
                                f"UUID={uuid} /home btrfs subvol=@home 0 0\n")
        g.write("/@/etc/os-release", "ID=opensuse-leap\nVERSION_ID=15.6\n")
        g.write("/@home/user.txt", "in @home\n")
        g.write("/@home/nested/deep.txt", "in a nested subvolume\n")
        g.ln_s("/home/user.txt", "/@/etc/to-home")
        g.write("/top-level-only.txt", "not in any mounted subvolume\n")
        g.umount_all()
        g.shutdown()
    finally:
        g.close()


def test_btrfs_default_and_named_subvolumes(tmp_path) -> None:
    from vhdtool import guestfs_engine as ge
    from vhdtool import native_engine as ne
    path = tmp_path / "btrfs-subvol.raw"
    _btrfs_subvolume_disk(path)
    with ge.open_guest(str(path), "raw", progress=False) as g, ne.open_guest(str(path), "raw") as n:
        assert n.guest.read_text("/home/user.txt") == "in @home\n"
        assert n.guest.read_text("/etc/to-home") == "in @home\n"
        assert n.guest.read_text("/home/nested/deep.txt") == "in a nested subvolume\n"
        assert n.guest.stat("/top-level-only.txt") is None
        assert n.guest.facts == g.guest.facts
        ref, got = _walk(g.guest.view, "/"), _walk(n.guest.view, "/")
        assert sorted(got) == sorted(ref)
        assert [p for p in ref if ref[p] != got[p]] == []


def test_btrfs_root_outside_the_default_subvolume_falls_back(tmp_path, monkeypatch) -> None:
    """Fedora's layout (root in a subvolume, the default one the top level): no /etc/fstab in the
    default subvolume, so the native engine finds no root and auto hands over to libguestfs
    (whose inspection mounts the subvolume), saying why."""
    from vhdtool import native_engine as ne
    from vhdtool.engines import AutoEngine
    path = tmp_path / "btrfs-fedora.raw"
    _btrfs_subvolume_disk(path, set_default=False)
    with pytest.raises(ne.NativeEngineError, match="holding /etc/fstab"):
        ne.open_guest(str(path), "raw")
    chosen: list[str] = []
    monkeypatch.setattr(AutoEngine, "_guestfs", lambda self, image, facts, why: chosen.append(why))
    AutoEngine("auto")(str(path), None)
    assert len(chosen) == 1 and "cannot open the guest" in chosen[0]
