"""Open a disk image's guest read-only through libguestfs and run the guest checks on it.

One appliance launch per image: the drive is added read-only with its format named explicitly
(never probed), KVM is tried first and TCG used when KVM is absent or the launch fails (KVM fails
at once on these machines: 0.07 s measured, then TCG launches in ~8-10 s). Every partition and
logical volume is probed with blkid; the mount core (:mod:`vhdtool.mountplan`, shared with the
native engine) finds the root holding ``/etc/fstab`` and mounts the fstab entries on it through
:class:`GuestfsBackend` (read-only, btrfs ``subvol=`` options kept) -- about 2 s, where
``inspect_os`` takes 9-18 s under TCG; when no root is found that way, libguestfs inspection
(``inspect_os``, ``inspect_get_mountpoints``) decides what to mount.  The views are in
:mod:`vhdtool.guestfs_view` (read-only for the checks; writable, into libguestfs' overlay, for
``vhdtool fix``: ``open_guest(..., writable=True)``); no guest program is run, except by a fix
through the writable view.  ``vhdtool fix`` adds its own qcow2 overlay of the image read-write
(``drive_readonly=False``): the image, its backing file, is still only read.  Every process
libguestfs starts (the overlay's ``qemu-img``, ``supermin``, the appliance) is marked by a
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
import threading
import time
from collections.abc import Sequence
from typing import Any

from vhdtool.checks.catalog import Context, Profile, Result, run_catalog
from vhdtool.checks.fixes import WritableGuestView
from vhdtool.checks.guest import Filesystem, GuestView

from . import mountplan
from .exitcodes import Exit
from .guestfs_view import GuestfsView, GuestfsWritableView
from .mountplan import MountError
from .procguard import Guard
from .session import Engine, Session, Timing, notice, warn

#: vhdtool format name -> libguestfs/qemu format name
QEMU_FORMATS = {"vhd": "vpc", "vpc": "vpc", "raw": "raw", "qcow2": "qcow2", "vhdx": "vhdx"}
DEFAULT_TIMEOUT = 300.0
#: launches performed by this process (tests assert one per image)
LAUNCHES = 0


class GuestEngineUnavailable(RuntimeError):
    """libguestfs, its appliance or a kernel to run it is missing (exit code 4)."""

    exit_code = Exit.MISSING_TOOL


class GuestEngineError(RuntimeError):
    """The guest could not be opened or inspected (no OS found, timeout)."""


class NoLinuxRoot(GuestEngineError):
    """The disk holds no Linux root filesystem: the guest checks have nothing to read."""


def _import_guestfs() -> Any:
    try:
        import guestfs
    except ImportError:
        raise GuestEngineUnavailable(
            "libguestfs Python bindings are not installed (Debian: apt-get install "
            "python3-guestfs libguestfs-tools); guest checks need them") from None
    return guestfs


class _Progress:
    """Says the elapsed time (:func:`vhdtool.session.notice`) while the appliance starts."""

    def __init__(self, label: str, enabled: bool, every: float = 3.0) -> None:
        self.label, self.enabled, self.every = label, enabled, every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(self.every):
            notice(f"{self.label}... {time.monotonic() - start:.0f} s")

    def __enter__(self) -> _Progress:
        if self.enabled:
            notice(self.label)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()


def _new_handle(guestfs: Any, path: str, fmt: str, tcg: bool, guard: Guard,
                readonly: bool = True) -> Any:
    g = guestfs.GuestFS(python_return_dict=True)
    if tcg:
        g.set_backend_settings(["force_tcg"])
    # the guard kills the appliance when vhdtool ends; libguestfs' own recovery process (a fork
    # that polls every 2 s) is kept only where the guard cannot work
    g.set_recovery_proc(not guard.active)
    try:
        g.add_drive_opts(path, readonly=readonly, format=fmt)  # readonly: qemu-img makes an overlay
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
           timeout: float = DEFAULT_TIMEOUT, readonly: bool = True) -> tuple[Any, Guard]:
    """A launched libguestfs handle with ``path`` attached read-only as ``fmt`` (read-write
    with ``readonly=False``: ``vhdtool fix``'s overlay), and the :class:`~vhdtool.procguard.Guard`
    of the processes it runs (close it after the handle).

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
                g = _new_handle(guestfs, path, qfmt, tcg, guard, readonly)
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


class GuestfsBackend:
    """:class:`vhdtool.mountplan.MountBackend` over a launched handle; ``close()`` shuts the
    appliance down and ends what it started (:class:`~vhdtool.procguard.Guard`)."""

    name = "guestfs"

    def __init__(self, g: Any, guard: Guard | None, writable: bool = False) -> None:
        self.g, self.guard, self.writable = g, guard, writable
        self._view: GuestfsView | None = None

    def readable(self, fstype: str) -> bool:
        return True          # whatever the appliance's kernel reads; a failed mount says why

    def mount(self, fs: Filesystem, mountpoint: str, options: Sequence[str]) -> None:
        opts = ([] if self.writable else ["ro"]) + list(options)
        try:
            self.g.mount_options(",".join(opts), fs.device, mountpoint)
        except RuntimeError as e:
            raise MountError(str(e).splitlines()[0]) from None

    def unmount_all(self) -> None:
        self.g.umount_all()

    def is_file(self, path: str) -> bool:
        return bool(self.g.is_file(path, followsymlinks=True))

    def is_dir(self, path: str) -> bool:
        return bool(self.g.is_dir(path, followsymlinks=True))

    def read_file(self, path: str, limit: int) -> bytes:
        return bytes(self.g.pread(path, limit, 0))

    def view(self) -> GuestView:
        if self._view is None:
            self._view = GuestfsWritableView(self.g) if self.writable else GuestfsView(self.g)
        return self._view

    def writable_view(self) -> WritableGuestView:
        if not self.writable:
            raise GuestEngineError("the guest was mounted read-only: open it with writable=True")
        view = self.view()
        assert isinstance(view, GuestfsWritableView)
        return view

    def finish(self) -> None:
        """Sync, unmount and shut the appliance down, saying what failed (``vhdtool fix``: the
        writes must be in the overlay before it is converted); then :meth:`close`."""
        step = "sync"
        try:
            self.g.sync()
            step = "unmount"
            self.g.umount_all()
            step = "shutdown"
            self.g.shutdown()        # qemu's exit status: a failed write to the overlay shows here
        except RuntimeError as e:
            raise GuestEngineError(f"libguestfs {step} failed: {str(e).splitlines()[0]}") from None
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.g.umount_all()
            self.g.shutdown()
        except RuntimeError:
            pass
        finally:
            self.g.close()
            if self.guard is not None:
                self.guard.close()


def mount_by_fstab(backend: GuestfsBackend, fss: Sequence[Filesystem],
                   path: str) -> dict[str, str] | None:
    """The root holding /etc/fstab and its fstab entries, mounted by the mount core.

    Several times faster than ``inspect_os`` under TCG (which probes every filesystem); None when
    no root is found this way (the caller then falls back to libguestfs inspection).
    """
    root = mountplan.find_root(backend, fss, warn, path)
    if root is None:
        return None
    return mountplan.mount_fstab(backend, root, fss, warn).where


def mount_guest(g: Any, path: str, writable: bool = False) -> tuple[str, dict[str, str]]:
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
            g.mount_options("" if writable else "ro", dev, mp)
            mounted[mp] = dev
        except RuntimeError as e:
            warn(f"cannot mount {dev} on {mp}: {str(e).splitlines()[0]}")
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


def open_guest(path: str, fmt: str, progress: bool = True, timeout: float = DEFAULT_TIMEOUT,
               writable: bool = False, drive_readonly: bool = True) -> Session:
    """Launch the appliance on ``path`` (read-only drive) and mount its guest.

    ``writable``: the filesystems are mounted read-write and ``session.backend.writable_view()``
    writes -- into libguestfs' temporary overlay, discarded on close; the image is never written.
    ``drive_readonly=False`` (with ``writable``): the drive itself is written (``vhdtool fix``
    passes its own qcow2 overlay of the image).
    """
    timing = Timing(backend="")
    g, guard = launch(path, fmt, timing, progress, timeout, readonly=drive_readonly)
    backend = GuestfsBackend(g, guard, writable)
    try:
        t = time.monotonic()
        fss = filesystems(g, {})
        mounted = mount_by_fstab(backend, fss, path)
        if mounted is None:
            _, mounted = mount_guest(g, path, writable)
        guest, fss = mountplan.open_view(backend.view(), fss, mounted)
        timing.inspect = time.monotonic() - t
    except BaseException:
        g.close()
        guard.close()
        raise
    return Session(path, fmt, guest, fss, timing, backend)


class GuestfsEngine(Engine):
    """The pipeline's guest engine: ``engine(image, disk)`` launches one appliance.

    Returns the :class:`checks.guest.Guest` the checks read, or None with ``skip_reason`` set
    when libguestfs finds no operating system; :class:`GuestEngineUnavailable` propagates (exit 4).
    ``close()`` shuts the appliance down; ``timing`` holds launch/inspection seconds.
    """

    name = "guestfs"
    skips = (GuestEngineError, RuntimeError)
    fatal = (GuestEngineUnavailable,)

    def __init__(self, progress: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.progress, self.timeout = progress, timeout

    def open(self, image: str, disk: Any) -> Session:
        fmt = getattr(disk, "format", None) or "raw"
        return open_guest(image, fmt, self.progress, self.timeout)

    def describe_failure(self, image: str, e: BaseException) -> str:
        if isinstance(e, GuestEngineError):
            return str(e)
        # libguestfs failed after the launch (appliance died...)
        return f"{image}: libguestfs failed: {str(e).splitlines()[0]}"


def run_guest_checks(image_path: str, fmt: str, profile: Profile, select: Sequence[str] = (),
                     ignore: Sequence[str] = (), progress: bool = True,
                     timeout: float = DEFAULT_TIMEOUT,
                     generations: frozenset[str] | None = None) -> tuple[list[Result], Timing]:
    """Every selected guest check of the catalog on the image's guest (one appliance launch)."""
    from vhdtool import checks
    catalog = {cid: c for cid, c in checks.load().items() if c.needs == "guest"}
    with open_guest(image_path, fmt, progress, timeout) as s:
        t = time.monotonic()
        ctx = Context(profile=profile, guest=s.guest,
                      generations=generations or profile.generations or frozenset({"V1", "V2"}))
        results = run_catalog(ctx, select, ignore, catalog=catalog)
        s.timing.checks = time.monotonic() - t
        return results, s.timing


__all__ = ["open_guest", "run_guest_checks", "GuestfsEngine", "GuestfsBackend", "GuestfsView",
           "Timing", "GuestEngineUnavailable", "GuestEngineError", "NoLinuxRoot", "LAUNCHES",
           "QEMU_FORMATS"]
