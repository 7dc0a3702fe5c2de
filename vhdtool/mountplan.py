"""The mount core: which filesystem is the root, what fstab mounts where -- once, for both engines.

Backend-free: the guest engines (``vhdtool.native_engine``, ``vhdtool.guestfs_engine``) implement
:class:`MountBackend` (open a volume and mount it, a few uncached lookups while mounting, the
checks' read-only view, and a writable view for ``vhdtool fix``); everything they must agree on
is decided here:

* :func:`resolve_spec`: the device of an fstab spec (``UUID=``, ``LABEL=``, ``PARTUUID=``,
  ``PARTLABEL=``, ``/dev/disk/by-*``, a device name, an LVM name ``/dev/VG/LV`` or
  ``/dev/mapper/VG-LV`` with ``-`` doubled inside names), from the probed filesystems alone;
* :func:`find_root`: the first ext2/3/4, XFS or btrfs filesystem holding ``/etc/fstab``;
* :func:`fstab_plan` / :func:`mount_fstab`: the fstab entries mounted shallowest first (swap,
  ``none`` and relative mountpoints skipped, btrfs ``subvol=``/``subvolid=`` kept, an entry whose
  mountpoint is not a directory skipped), and the reasons a filesystem could not be mounted;
* :func:`open_view`: the checks' :class:`checks.guest.Guest` with its facts and the filesystems
  annotated with their mountpoints.

References: fstab(5); lvm(8) (``/dev/VG/LV``, ``/dev/mapper/VG-LV``); libblkid's tag names
(``UUID``, ``LABEL``, ``PARTUUID``, ``PARTLABEL``); udev's ``/dev/disk/by-*`` links.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from vhdtool.checks.fixes import WritableGuestView
from vhdtool.checks.guest import Filesystem, Guest, GuestView, collect_facts, parse_fstab

#: filesystems a Linux root may be (blkid TYPE), tried in the volumes' order
ROOT_FSTYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs")
#: the bytes of /etc/fstab read at most
FSTAB_LIMIT = 1 << 20

Warn = Callable[[str], None]


class MountError(OSError):
    """A volume could not be opened or mounted (the message says why; the run goes on)."""


class MountBackend(Protocol):
    """What a guest engine implements; :func:`find_root` and :func:`mount_fstab` drive it."""

    #: "native" or "guestfs" (said in messages)
    name: str

    def readable(self, fstype: str) -> bool:
        """Whether this backend can read a filesystem of this blkid TYPE at all."""
    def mount(self, fs: Filesystem, mountpoint: str, options: Sequence[str]) -> None:
        """Open the volume of ``fs`` and mount it on ``mountpoint``; MountError when it cannot."""
    def unmount_all(self) -> None: ...
    def is_file(self, path: str) -> bool:
        """Uncached, links followed (may raise MountError when the filesystem is damaged)."""
    def is_dir(self, path: str) -> bool: ...
    def read_file(self, path: str, limit: int) -> bytes: ...
    def view(self) -> GuestView:
        """The checks' read-only view of what is mounted."""
    def writable_view(self) -> WritableGuestView:
        """A view that writes into a throw-away overlay (``vhdtool fix``)."""
    def close(self) -> None: ...


# -- specs ----------------------------------------------------------------------------------
_TAGS = {"UUID": "uuid", "LABEL": "label", "PARTUUID": "partuuid", "PARTLABEL": "partlabel"}
_BY = {"uuid": "UUID", "label": "LABEL", "partuuid": "PARTUUID", "partlabel": "PARTLABEL"}


def _lvm_escape(name: str) -> str:
    return name.replace("-", "--")


def lv_names(fss: Sequence[Filesystem]) -> dict[str, str]:
    """``/dev/mapper/VG-LV`` and ``/dev/VG/LV`` -> ``/dev/VG/LV`` for the logical volumes."""
    names: dict[str, str] = {}
    for fs in fss:
        parts = fs.device.split("/")
        if len(parts) == 4:                       # /dev/VG/LV (partitions: /dev/sdaN)
            vg, lv = parts[2], parts[3]
            names[f"/dev/mapper/{_lvm_escape(vg)}-{_lvm_escape(lv)}"] = fs.device
            names[fs.device] = fs.device
    return names


def resolve_spec(spec: str, fss: Sequence[Filesystem]) -> str | None:
    """The device of an fstab spec among the probed filesystems; None when none matches."""
    key, sep, val = spec.partition("=")
    val = val.strip('"')
    if sep and key in _TAGS:
        fold = key.endswith("UUID")
        want = val.lower() if fold else val
        for fs in fss:
            have = getattr(fs, _TAGS[key])
            if have and (have.lower() if fold else have) == want:
                return fs.device
        return None
    if spec.startswith("/dev/disk/by-"):
        kind, _, val = spec[len("/dev/disk/by-"):].partition("/")
        tag = _BY.get(kind)
        return resolve_spec(f"{tag}={val}", fss) if tag else None
    if any(fs.device == spec for fs in fss):
        return spec
    return lv_names(fss).get(spec)


# -- the root and fstab ---------------------------------------------------------------------
def find_root(backend: MountBackend, fss: Sequence[Filesystem], warn: Warn,
              image: str) -> Filesystem | None:
    """Mount each root candidate on / until one holds /etc/fstab; it stays mounted."""
    for fs in fss:
        if fs.fstype not in ROOT_FSTYPES:
            continue
        try:
            backend.mount(fs, "/", ())
            if backend.is_file("/etc/fstab"):
                return fs
        except MountError as e:
            warn(f"{image}: cannot read {fs.device} ({fs.fstype}): {e} (so it is not taken as "
                 "the root)")
        backend.unmount_all()
    return None


@dataclass(frozen=True)
class Step:
    """One fstab entry to mount: where, which device (resolved), its TYPE, its subvolume."""

    mountpoint: str
    device: str
    fstype: str
    options: tuple[str, ...] = ()


def fstab_plan(text: str, fss: Sequence[Filesystem]) -> list[Step]:
    """The fstab entries that name a device found on the disk, shallowest mountpoint first."""
    types = {fs.device: fs.fstype for fs in fss}
    steps = []
    for e in sorted(parse_fstab(text), key=lambda e: e.mountpoint.count("/")):
        if not e.mountpoint.startswith("/") or e.mountpoint == "/" or e.fstype in ("swap", "none"):
            continue
        dev = resolve_spec(e.spec, fss)
        if dev is None:
            continue
        subvol = tuple(o for o in e.options.split(",") if o.startswith(("subvol=", "subvolid=")))
        steps.append(Step(e.mountpoint, dev, types.get(dev, "unknown"), subvol))
    return steps


@dataclass
class Mounted:
    """What was mounted ({mountpoint: device}) and why some fstab entries could not be."""

    root: Filesystem
    where: dict[str, str]
    unreadable: list[str] = field(default_factory=list)


def mount_fstab(backend: MountBackend, root: Filesystem, fss: Sequence[Filesystem],
                warn: Warn) -> Mounted:
    """Mount the root's fstab entries (the root already mounted on /)."""
    by_dev = {fs.device: fs for fs in fss}
    done = Mounted(root, {"/": root.device})
    text = backend.read_file("/etc/fstab", FSTAB_LIMIT).decode("utf-8", "replace")
    for step in fstab_plan(text, fss):
        mp, dev, kind = step.mountpoint, step.device, step.fstype
        if dev not in by_dev or not backend.is_dir(mp):
            continue
        if not backend.readable(kind):
            done.unreadable.append(f"{mp} is {kind} ({dev})")
            warn(f"cannot mount {dev} on {mp}: the {backend.name} engine cannot read {kind}")
            continue
        try:
            backend.mount(by_dev[dev], mp, step.options)
            done.where[mp] = dev
        except MountError as err:
            done.unreadable.append(f"{mp} ({dev}, {kind}): {err}")
            warn(f"cannot mount {dev} on {mp}: {err}")
    return done


def open_view(view: GuestView, fss: Sequence[Filesystem],
              where: dict[str, str]) -> tuple[Guest, tuple[Filesystem, ...]]:
    """The checks' guest over ``view`` with its facts, and the filesystems with mountpoints."""
    mounted_on = {dev: mp for mp, dev in where.items()}
    annotated = tuple(replace(fs, mountpoint=mounted_on.get(fs.device)) for fs in fss)
    guest = Guest(view)
    guest._facts = collect_facts(guest, annotated)
    return guest, annotated


__all__ = ["MountBackend", "MountError", "Mounted", "Step", "ROOT_FSTYPES",
           "resolve_spec", "lv_names", "find_root", "fstab_plan", "mount_fstab", "open_view"]
