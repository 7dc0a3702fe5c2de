"""Open a disk image's guest read-only through libguestfs and run the guest checks on it.

One appliance launch per image: the drive is added read-only with its format named explicitly
(never probed), KVM is tried first and TCG used when KVM is absent or the launch fails (KVM fails
at once on these machines: 0.07 s measured, then TCG launches in ~8-10 s). Every partition and
logical volume is probed with blkid; the root is the filesystem holding ``/etc/fstab`` and the
fstab entries are mounted read-only on it (btrfs ``subvol=`` options kept) -- about 2 s, where
``inspect_os`` takes 9-18 s under TCG; when no root is found that way, libguestfs inspection
(``inspect_os``, ``inspect_get_mountpoints``) decides what to mount. :class:`GuestfsView` implements
:class:`checks.guest.GuestView` over the handle with caching (the image cannot change under a
read-only handle) and bounded reads; no guest program is ever run. Every process libguestfs
starts (the overlay's ``qemu-img``, ``supermin``, the appliance) is marked by a
:class:`vhdtool.procguard.Guard`: the launch timeout kills all of them, and none outlives vhdtool,
even one killed with SIGKILL.

References:
  - guestfs(3): ``add_drive_opts`` (readonly, format), ``set_backend_settings`` (``force_tcg``),
    ``inspect_os``/``inspect_get_mountpoints``, ``mount_ro``, ``lstatns``/``lstatnslist``,
    ``readlinklist``, ``ls``, ``pread``, ``list_partitions``, ``lvs``, ``blkid``;
    guestfs-internals(1) (the appliance); guestfs-security(1) (read-only use).
  - PARTUUID of an MBR partition: disk signature (MBR offset 440, little-endian u32) as 8 hex digits,
    '-', the partition number as 2 hex digits (util-linux libblkid ``partitions/dos.c``).
"""

from __future__ import annotations

import os
import stat as statmod
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from checks.catalog import Context, Profile, Result, run_catalog
from checks.guest import Filesystem, Guest, Stat, collect_facts, parse_fstab

from .exitcodes import Exit
from .procguard import Guard

#: vhdtool format name -> libguestfs/qemu format name
QEMU_FORMATS = {"vhd": "vpc", "vpc": "vpc", "raw": "raw", "qcow2": "qcow2", "vhdx": "vhdx"}
DEFAULT_TIMEOUT = 300.0
#: bytes per pread message (libguestfs' protocol carries up to ~4 MB per message)
READ_CHUNK = 2 << 20
#: launches performed by this process (tests assert one per image)
LAUNCHES = 0


class GuestEngineUnavailable(RuntimeError):
    """libguestfs, its appliance or a kernel to run it is missing (exit code 4)."""

    exit_code = Exit.MISSING_TOOL


class GuestEngineError(RuntimeError):
    """The guest could not be opened or inspected (no OS found, timeout)."""


class NoLinuxRoot(GuestEngineError):
    """The disk holds no Linux root filesystem: the guest checks have nothing to read."""


@dataclass
class Timing:
    launch: float = 0.0
    inspect: float = 0.0
    checks: float = 0.0
    backend: str = ""
    attempts: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"appliance launch {self.launch:.1f} s ({self.backend}), inspection and mounts "
                f"{self.inspect:.1f} s, checks {self.checks:.2f} s")


def _import_guestfs() -> Any:
    try:
        import guestfs
    except ImportError:
        raise GuestEngineUnavailable(
            "libguestfs Python bindings are not installed (Debian: apt-get install "
            "python3-guestfs libguestfs-tools); guest checks need them") from None
    return guestfs


class _Progress:
    """Prints elapsed time on stderr while the appliance starts (every ``every`` seconds)."""

    def __init__(self, label: str, enabled: bool, every: float = 3.0) -> None:
        self.label, self.enabled, self.every = label, enabled, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(self.every):
            print(f"vhdtool: {self.label}... {time.monotonic() - start:.0f} s", file=sys.stderr,
                  flush=True)

    def __enter__(self) -> _Progress:
        if self.enabled:
            print(f"vhdtool: {self.label}", file=sys.stderr, flush=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def _new_handle(guestfs: Any, path: str, fmt: str, tcg: bool, guard: Guard) -> Any:
    g = guestfs.GuestFS(python_return_dict=True)
    if tcg:
        g.set_backend_settings(["force_tcg"])
    # the guard kills the appliance when vhdtool ends; libguestfs' own recovery process (a fork
    # that polls every 2 s) is kept only where the guard cannot work
    g.set_recovery_proc(not guard.active)
    try:
        g.add_drive_opts(path, readonly=True, format=fmt)   # qemu-img makes the overlay here
    except RuntimeError as e:
        g.close()
        raise GuestEngineError(f"{path}: qemu cannot open the image as {fmt} for libguestfs "
                               f"({str(e).splitlines()[0]})") from None
    return g


def _kvm_usable() -> bool:
    if "force_tcg" in os.environ.get("LIBGUESTFS_BACKEND_SETTINGS", ""):
        return False
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def launch(path: str, fmt: str, timing: Timing, progress: bool = True,
           timeout: float = DEFAULT_TIMEOUT) -> tuple[Any, Guard]:
    """A launched libguestfs handle with ``path`` attached read-only as ``fmt``, and the
    :class:`~vhdtool.procguard.Guard` of the processes it runs (close it after the handle).

    ``timeout`` bounds everything libguestfs runs until the appliance is up, the overlay's
    ``qemu-img`` included."""
    global LAUNCHES
    guestfs = _import_guestfs()
    qfmt = QEMU_FORMATS.get(fmt)
    if qfmt is None:
        raise GuestEngineError(f"{path}: libguestfs cannot open format {fmt!r}")
    if not os.path.exists(path):
        raise GuestEngineError(f"{path}: no such file")
    start = time.monotonic()
    guard = Guard(limit=timeout)
    errors = []
    timed_out = GuestEngineError(f"{path}: appliance launch timed out after {timeout:.0f} s")
    try:
        for tcg in ([False, True] if _kvm_usable() else [True]):
            backend = "TCG" if tcg else "KVM"
            timing.attempts.append(backend)
            try:
                g = _new_handle(guestfs, path, qfmt, tcg, guard)
            except GuestEngineError:
                if guard.fired():
                    raise timed_out from None
                raise
            try:
                with _Progress(f"starting the libguestfs appliance ({backend})", progress):
                    g.launch()
            except RuntimeError as e:
                g.close()
                if guard.fired():
                    raise timed_out from None
                errors.append(f"{backend}: {str(e).splitlines()[0]}")
                continue
            guard.disarm()
            if guard.fired():       # the limit passed as the launch returned: qemu was killed
                g.close()
                raise timed_out
            LAUNCHES += 1
            timing.launch = time.monotonic() - start
            timing.backend = backend
            return g, guard
        raise GuestEngineUnavailable(
            "the libguestfs appliance could not start (" + "; ".join(errors) + "). Check "
            "libguestfs-test-tool; a readable /boot/vmlinuz-* kernel and supermin are needed")
    except BaseException:
        guard.close()
        raise


ROOT_FSTYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs")


def _resolve_spec(g: Any, spec: str, fss: Sequence[Filesystem]) -> str | None:
    """The appliance device of an fstab spec (UUID=, LABEL=, PARTUUID=, PARTLABEL=, /dev/...)."""
    key, sep, val = spec.partition("=")
    val = val.strip('"')
    attr = {"UUID": "uuid", "LABEL": "label", "PARTUUID": "partuuid", "PARTLABEL": "partlabel"}
    if sep and key in attr:
        want = val.lower() if key.endswith("UUID") else val
        for fs in fss:
            have = getattr(fs, attr[key])
            if have and (have.lower() if key.endswith("UUID") else have) == want:
                return fs.device
        return None
    if spec.startswith("/dev/disk/by-"):
        kind, _, val = spec[len("/dev/disk/by-"):].partition("/")
        key = {"uuid": "UUID", "label": "LABEL", "partuuid": "PARTUUID",
               "partlabel": "PARTLABEL"}.get(kind)
        return _resolve_spec(g, f"{key}={val}", fss) if key else None
    if any(fs.device == spec for fs in fss):
        return spec
    try:
        return str(g.lvm_canonical_lv_name(spec))
    except RuntimeError:
        return None


def mount_by_fstab(g: Any, fss: Sequence[Filesystem]) -> dict[str, str] | None:
    """Find the root (the filesystem holding /etc/fstab), mount it and its fstab entries read-only.

    Several times faster than ``inspect_os`` under TCG (which probes every filesystem); None when
    no root is found this way (the caller then falls back to libguestfs inspection).
    """
    for fs in fss:
        if fs.fstype not in ROOT_FSTYPES:
            continue
        try:
            g.mount_ro(fs.device, "/")
        except RuntimeError:
            continue
        if g.is_file("/etc/fstab", followsymlinks=True):
            return _mount_fstab(g, fs.device, fss)
        g.umount_all()
    return None


def _mount_fstab(g: Any, root: str, fss: Sequence[Filesystem]) -> dict[str, str]:
    mounted = {"/": root}
    text = bytes(g.pread("/etc/fstab", 1 << 20, 0)).decode("utf-8", "replace")
    for e in sorted(parse_fstab(text), key=lambda e: e.mountpoint.count("/")):
        if not e.mountpoint.startswith("/") or e.mountpoint == "/" or e.fstype in ("swap", "none"):
            continue
        dev = _resolve_spec(g, e.spec, fss)
        if dev is None or not g.is_dir(e.mountpoint, followsymlinks=True):
            continue
        subvol = [o for o in e.options.split(",") if o.startswith(("subvol=", "subvolid="))]
        try:
            g.mount_options(",".join(["ro"] + subvol), dev, e.mountpoint)
            mounted[e.mountpoint] = dev
        except RuntimeError as err:
            print(f"vhdtool: warning: cannot mount {dev} on {e.mountpoint}: "
                  f"{str(err).splitlines()[0]}", file=sys.stderr)
    return mounted


def mount_guest(g: Any, path: str) -> tuple[str, dict[str, str]]:
    """Inspect and mount every filesystem of the (first) OS read-only; (root, mountpoints)."""
    roots = g.inspect_os()
    linux = [r for r in sorted(roots) if g.inspect_get_type(r) == "linux"]
    if not linux:
        found = ", ".join(f"{g.inspect_get_type(r)} on {r}" for r in sorted(roots))
        raise NoLinuxRoot(f"{path}: no Linux root filesystem found on the disk (no filesystem "
                          "holds /etc/fstab; libguestfs inspection found "
                          f"{found or 'no operating system'})")
    root = linux[0]
    mps = g.inspect_get_mountpoints(root)
    mounted = {}
    for mp, dev in sorted(mps.items(), key=lambda kv: (kv[0].count("/"), len(kv[0]))):
        try:
            g.mount_ro(dev, mp)
            mounted[mp] = dev
        except RuntimeError as e:
            print(f"vhdtool: warning: cannot mount {dev} on {mp}: {str(e).splitlines()[0]}",
                  file=sys.stderr)
    return root, mounted


def filesystems(g: Any, mounted: dict[str, str]) -> tuple[Filesystem, ...]:
    """UUID/LABEL/PARTUUID of every partition and logical volume, one blkid probe each.

    (``list_filesystems`` plus ``vfs_uuid``/``vfs_label`` cost ~11 s under TCG on a 3-partition
    disk; ``blkid`` is ~0.2 s per device and also gives PART_ENTRY_UUID/NAME.)
    """
    where = {dev: mp for mp, dev in mounted.items()}
    out = []
    parts = list(g.list_partitions())
    probed = [(dev, _blkid(g, dev)) for dev in parts]
    # the LVM scan is the appliance's slowest call under TCG (~0.6 s): only where a physical
    # volume was seen, or on a disk without partitions (a PV on the whole disk)
    if not parts or any(b.get("TYPE") == "LVM2_member" for _, b in probed):
        probed += [(dev, _blkid(g, dev)) for dev in g.lvs()]
    for dev, b in probed:
        if not b.get("TYPE"):
            continue
        out.append(Filesystem(dev, b["TYPE"], b.get("UUID"), b.get("LABEL"),
                              (b.get("PART_ENTRY_UUID") or "").lower() or None,
                              b.get("PART_ENTRY_NAME"), where.get(dev)))
    return tuple(out)


def _blkid(g: Any, dev: str) -> dict[str, str]:
    try:
        return dict(g.blkid(dev))
    except RuntimeError:
        return {}


class GuestfsView:
    """:class:`checks.guest.GuestView` over a mounted libguestfs handle (cached, read-only)."""

    def __init__(self, g: Any) -> None:
        self.g = g
        self._stat: dict[str, Stat | None] = {}
        self._links: dict[str, str | None] = {}
        self._dirs: dict[str, list[str]] = {}
        self.calls = 0

    def _call(self, name: str, *args: Any) -> Any:
        self.calls += 1
        return getattr(self.g, name)(*args)

    @staticmethod
    def _to_stat(st: dict[str, int]) -> Stat:
        return Stat(st["st_mode"], st["st_size"], st["st_uid"], st["st_gid"])

    def lstat(self, path: str) -> Stat | None:
        if path not in self._stat:
            try:
                self._stat[path] = self._to_stat(self._call("lstatns", path))
            except RuntimeError:
                self._stat[path] = None
        return self._stat[path]

    def readlink(self, path: str) -> str | None:
        if path not in self._links:
            try:
                self._links[path] = self._call("readlink", path)
            except RuntimeError:
                self._links[path] = None
        return self._links[path]

    def list_dir(self, path: str) -> list[str]:
        if path not in self._dirs:
            try:
                names = list(self._call("ls", path))
            except RuntimeError:
                names = []
            self._dirs[path] = names
            self._prefetch(path, names)
        return self._dirs[path]

    def _prefetch(self, path: str, names: list[str]) -> None:
        """Stat (and readlink) every entry in one call each, so walks cost few round trips."""
        if not names:
            return
        base = path.rstrip("/")
        try:
            stats = self._call("lstatnslist", path, names)
        except RuntimeError:
            return
        links = []
        for name, st in zip(names, stats):
            full = f"{base}/{name}"
            self._stat[full] = self._to_stat(st)
            if statmod.S_ISLNK(st["st_mode"]):
                links.append(name)
        if links:
            try:
                targets = self._call("readlinklist", path, links)
            except RuntimeError:
                return
            for name, target in zip(links, targets):
                self._links[f"{base}/{name}"] = target or None

    def read_raw(self, path: str, limit: int) -> bytes | None:
        """Up to ``limit`` bytes of a regular file, in ``pread`` pieces of :data:`READ_CHUNK`.

        (A 16 MB initramfs: ~0.35 s this way under TCG, ~1.5 s through ``download`` and a
        temporary file.)
        """
        st = self.lstat(path)
        if st is None:
            return None
        size = min(st.size, limit)
        parts, done = [], 0
        while done < size:
            piece = bytes(self._call("pread", path, min(READ_CHUNK, size - done), done))
            if not piece:
                break          # the file is shorter than its stat said
            parts.append(piece)
            done += len(piece)
        return b"".join(parts)


@dataclass
class GuestSession:
    """An opened guest: the handle, the checks' view, and timings."""

    path: str
    fmt: str
    handle: Any
    guest: Guest
    timing: Timing
    #: ends whatever the handle started that is still running, once the handle is closed
    guard: Guard | None = None

    def close(self) -> None:
        try:
            self.handle.umount_all()
            self.handle.shutdown()
        except RuntimeError:
            pass
        finally:
            self.handle.close()
            if self.guard is not None:
                self.guard.close()

    def __enter__(self) -> GuestSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_guest(path: str, fmt: str, progress: bool = True,
               timeout: float = DEFAULT_TIMEOUT) -> GuestSession:
    timing = Timing()
    g, guard = launch(path, fmt, timing, progress, timeout)
    try:
        t = time.monotonic()
        fss = filesystems(g, {})
        mounted = mount_by_fstab(g, fss)
        if mounted is None:
            _, mounted = mount_guest(g, path)
        where = {dev: mp for mp, dev in mounted.items()}
        fss = tuple(replace(fs, mountpoint=where.get(fs.device)) for fs in fss)
        view = GuestfsView(g)
        guest = Guest(view)
        guest._facts = collect_facts(guest, fss)
        timing.inspect = time.monotonic() - t
    except BaseException:
        g.close()
        guard.close()
        raise
    return GuestSession(path, fmt, g, guest, timing, guard)


class GuestfsEngine:
    """The pipeline's guest engine: ``engine(image, disk_facts)`` opens the guest once.

    Returns the :class:`checks.guest.Guest` the checks read, or None with ``skip_reason`` set
    when libguestfs finds no operating system; :class:`GuestEngineUnavailable` propagates (exit 4).
    ``close()`` shuts the appliance down; ``timing`` holds launch/inspection seconds.
    """

    def __init__(self, progress: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.progress, self.timeout = progress, timeout
        self.session: GuestSession | None = None
        self.timing: Timing | None = None
        self.skip_reason: str | None = None

    def __call__(self, image: str, facts: Any) -> Guest | None:
        fmt = getattr(facts, "format", None) or "raw"
        try:
            self.session = open_guest(image, fmt, self.progress, self.timeout)
        except GuestEngineUnavailable:
            raise
        except GuestEngineError as e:
            self.skip_reason = str(e)
            return None
        except RuntimeError as e:     # libguestfs failed after the launch (appliance died...)
            self.skip_reason = f"{image}: libguestfs failed: {str(e).splitlines()[0]}"
            return None
        self.timing = self.session.timing
        return self.session.guest

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None


def run_guest_checks(image_path: str, fmt: str, profile: Profile, select: Sequence[str] = (),
                     ignore: Sequence[str] = (), progress: bool = True,
                     timeout: float = DEFAULT_TIMEOUT,
                     generations: frozenset[str] | None = None) -> tuple[list[Result], Timing]:
    """Every selected guest check of the catalog on the image's guest (one appliance launch)."""
    import checks
    catalog = {cid: c for cid, c in checks.load().items() if c.needs == "guest"}
    with open_guest(image_path, fmt, progress, timeout) as s:
        t = time.monotonic()
        ctx = Context(profile=profile, guest=s.guest,
                      generations=generations or profile.generations or frozenset({"V1", "V2"}))
        results = run_catalog(ctx, select, ignore, catalog=catalog)
        s.timing.checks = time.monotonic() - t
        return results, s.timing


__all__ = ["open_guest", "run_guest_checks", "GuestfsEngine", "GuestSession", "GuestfsView",
           "Timing", "GuestEngineUnavailable", "GuestEngineError", "NoLinuxRoot", "LAUNCHES",
           "QEMU_FORMATS"]
