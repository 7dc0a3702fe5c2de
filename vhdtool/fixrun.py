"""``vhdtool fix SRC DST.vhd``: every chosen fix applied offline, on a copy, proven by a re-check.

1. SRC is opened by the format core (:class:`vhdtool.disk.Disk`, as ``check`` does: an image it
   refuses is exit 3 before anything else) and a qcow2 *overlay* whose backing file is SRC is made
   in a temporary folder beside DST (``.DST.vhdtool-PID.RANDOM.fix``; ``qemu-img create``, the
   size vhdtool's reader gives SRC, the backing format named, never probed).
2. ONE libguestfs appliance launch with the overlay read-write (:class:`OverlayEngine`: TCG when
   KVM fails, the procguard and ``--guest-timeout`` as for ``check``), mounted by the mount core;
   the catalog runs on it (the *before* run, the profile and selection of ``check``).
3. The failing checks' fixes are planned (``checks.fixes.plan_fixes``: safe ones, ``--unsafe-fixes``
   for the unsafe class, ``--generalize`` for the deprovision set) on an in-memory overlay;
   ``--diff`` stops there (nothing is written, the temporary folder goes).  Otherwise they are
   committed through the appliance's writable view, which is synced, unmounted and shut down, every
   step's error checked.
4. The overlay (or SRC itself when no fix applied: mounting alone changes a filesystem's bytes) is
   converted by ``vhdtool.convert`` (sparse, 1 MiB-aligned fixed VHD; with ``--manifest`` the
   manifest's digests in the same pass, without it none: no report shows them)
   into the temporary folder, checked again (engine auto: the *after* run), and only then given
   DST's name (``atomicfile.publish``; ``--sync``: durable first).

Any failure or signal before that last step leaves no DST, and the temporary folder (overlay,
partial files) is removed whatever happens -- it is locked for as long as this process lives, so a
later run removes it if SIGKILL left it (``atomicfile.remove_stale``); a signal after it says DST
is complete (``InterruptedAfterOutput``).  SRC is only ever read (qemu opens a backing file
read-only): not even its mtime changes.  A fix that fails raises :class:`FixFailed` naming the
check and the file or program; a guest that cannot be opened raises :class:`GuestUnopenable`.

References: guestfs(3) (``disk_create`` -- which refuses a size with a backing file --,
``add_drive_opts``, ``sync``, ``shutdown``); qemu-img(1) (``create -b -F`` with a size; qcow2
backing files: unallocated clusters read through, zeros past the backing file's end).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from vhdtool.checks.catalog import Context, Profile
from vhdtool.checks.fixes import FixError, Plan, WritableGuestView, commit, plan_fixes
from vhdtool.checks.guest import Guest, Stat

from . import atomicfile, pipeline
from .convert import ConvertError, ConvertResult, convert
from .convert.run import refuse_destination
from .exitcodes import FixFailed, GuestUnopenable
from .guestfs_engine import (QEMU_FORMATS, GuestEngineError, GuestEngineUnavailable,
                             GuestfsEngine, open_guest)
from .procguard import Guard
from .session import Session, notice
from .signals import InterruptedAfterOutput, Terminated, deferred_signals, exit_code

OVERLAY = "overlay.qcow2"


def create_overlay(src: str, qemu_fmt: str, size: int, path: str, timeout: float) -> None:
    """A qcow2 at ``path`` whose backing file is ``src`` (absolute, format named), ``size`` bytes:
    vhdtool's (and Azure's) size of SRC, also where qemu reads a VHD's size from its CHS geometry
    (libguestfs' ``disk_create`` takes the backing file's size as qemu sees it only).  ``qemu-img``
    is bounded by ``timeout`` and marked by the procguard."""
    guard = Guard(limit=timeout)
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.abspath(src), "-F",
            qemu_fmt, path, str(size)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise GuestEngineUnavailable("qemu-img is not installed (Debian: qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise GuestEngineError(f"{src}: making the overlay timed out after {timeout:.0f} s") \
            from None
    finally:
        guard.close()
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise GuestEngineError(f"{src}: qemu-img cannot make an overlay of the image as "
                               f"{qemu_fmt} ({why})")


class OverlayEngine(GuestfsEngine):
    """The pipeline's guest engine for ``fix``: the image's qcow2 overlay in ``folder``, added
    read-write and mounted read-write.  The pipeline's ``close()`` keeps it open: :meth:`finish`
    (sync, unmount, shut down, errors raised) or :meth:`release` ends it."""

    def __init__(self, folder: str, progress: bool = True, timeout: float = 300.0) -> None:
        super().__init__(progress, timeout)
        self.folder = folder
        self.overlay: str | None = None

    def open(self, image: str, disk: Any) -> Session:
        fmt = getattr(disk, "format", None) or "raw"
        qfmt = QEMU_FORMATS.get(fmt)
        if qfmt is None or disk.image is None:
            raise GuestEngineError(f"{image}: libguestfs cannot open format {fmt!r}")
        path = os.path.join(self.folder, OVERLAY)
        create_overlay(image, qfmt, disk.image.virtual_size, path, self.timeout)
        self.overlay = path
        return open_guest(path, "qcow2", self.progress, self.timeout, writable=True,
                          drive_readonly=False)

    def close(self) -> None:
        """The pipeline's close: kept open for the fixes."""

    def view(self) -> WritableGuestView:
        assert self.session is not None
        return self.session.backend.writable_view()

    def finish(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.backend.finish()

    def release(self) -> None:
        super().close()


class _NoGuest:
    """The empty guest view fixes plan on when the run opened no guest."""

    def lstat(self, path: str) -> Stat | None:
        return None

    def readlink(self, path: str) -> str | None:
        return None

    def list_dir(self, path: str) -> list[str]:
        return []

    def read_raw(self, path: str, limit: int) -> bytes | None:
        return None


class _Attributing:
    """A writable view that remembers what it was doing, so a failure names the fix."""

    def __init__(self, view: WritableGuestView) -> None:
        self.view, self.doing = view, ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.view, name)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.doing = path
        self.view.write_file(path, data, mode)

    def remove(self, path: str) -> None:
        self.doing = path
        self.view.remove(path)

    def symlink(self, target: str, path: str) -> None:
        self.doing = path
        self.view.symlink(target, path)

    def make_dir(self, path: str) -> None:
        self.doing = path
        self.view.make_dir(path)

    def run(self, argv: Sequence[str], timeout: float) -> str:
        self.doing = " ".join(argv)
        return self.view.run(argv, timeout)


def owners(plan: Plan, doing: str) -> list[str]:
    """The checks whose fix wrote, deleted or ran ``doing`` (every applied fix when unknown)."""
    ids = []
    for a in plan.applied:
        for c in a.changes:
            key = " ".join(c.argv) if hasattr(c, "argv") else os.path.normpath(c.path)
            if key == doing or (not hasattr(c, "argv") and doing.startswith(key.rstrip("/") + "/")):
                ids.append(a.check_id)
                break
    return ids or [a.check_id for a in plan.applied]


def apply(plan: Plan, engine: OverlayEngine, progress: Callable[[str], None]) -> None:
    """Commit ``plan`` into the overlay and shut the appliance down; FixFailed naming the fix."""
    target = _Attributing(engine.view())
    try:
        commit(plan, target, progress)  # type: ignore[arg-type]
    except FixError as e:
        ids = owners(plan, target.doing)
        raise FixFailed(f"the fix of {', '.join(ids)} failed: {e}") from None
    try:
        engine.finish()
    except GuestEngineError as e:
        raise FixFailed(f"the fixes of {', '.join(a.check_id for a in plan.applied)} could not "
                        f"be written into the overlay: {e}") from None


@dataclass
class FixRun:
    """What ``vhdtool fix`` did: the before run, the plan, and (unless ``--diff``) the conversion
    and the after run (its ``image`` is DST)."""

    before: pipeline.CheckRun
    plan: Plan
    diff: str | None = None
    converted: ConvertResult | None = None
    after: pipeline.CheckRun | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FixOptions:
    profile: Profile
    fmt: str | None = None
    select: Sequence[str] = ()
    ignore: Sequence[str] = ()
    unsafe: bool = False
    generalize: bool = False
    diff: bool = False
    timeout: float = 300.0
    progress: bool | None = None
    sync: bool = False
    force: bool = False
    #: the digests of DST the manifest needs; ("none",) when no manifest is written
    digests: Sequence[str] = ("none",)
    #: the manifest's collect hook for the after run (None: no manifest)
    collect: Callable[[Context], Any] | None = None


def fix(src: str, dst: str, opts: FixOptions) -> FixRun:
    """See the module docstring."""
    refuse_destination(src, dst, opts.force, "fix writes a new image")
    parent = os.path.dirname(os.path.abspath(dst))
    for line in atomicfile.remove_stale(parent):
        notice(f"warning: {line}")
    try:
        lock, folder = atomicfile.create_work_folder(dst)
    except OSError as e:
        raise ConvertError(f"{dst}: cannot make a temporary folder in {parent}: "
                           f"{e.strerror}") from e
    state = _State()
    try:
        try:
            return _fix(src, dst, opts, folder, state)
        finally:
            with deferred_signals():
                atomicfile.remove_work_folder(lock, folder)
    except KeyboardInterrupt as e:
        if state.published and not isinstance(e, InterruptedAfterOutput):
            raise InterruptedAfterOutput(exit_code(e) - 128, dst) from e
        if not state.published and isinstance(e, InterruptedAfterOutput):
            # the conversion's output was complete -- in the temporary folder, now removed
            raise Terminated(e.signum) from e
        raise


@dataclass
class _State:
    published: bool = False
    #: seconds of each step, in order (``vhdtool -v fix`` prints them)
    timing: dict[str, float] = field(default_factory=dict)
    t: float = field(default_factory=time.perf_counter)

    def step(self, name: str) -> None:
        now = time.perf_counter()
        self.timing[name] = self.timing.get(name, 0.0) + now - self.t
        self.t = now


def _fix(src: str, dst: str, opts: FixOptions, folder: str, state: _State) -> FixRun:
    engine = OverlayEngine(folder, progress=opts.progress is not False, timeout=opts.timeout)
    seen: list[Context] = []
    try:
        before = pipeline.run(src, opts.profile, opts.fmt, opts.select, opts.ignore,
                              guest_engine=engine, collect=lambda ctx: seen.append(ctx) or {})
        state.step("before")
        ctx = seen[0]
        if ctx.guest_requested and ctx.guest is None:
            raise GuestUnopenable(f"{src}: the guest cannot be opened, so nothing can be fixed "
                                  f"({engine.skip_reason})")
        if ctx.guest is None:
            ctx = replace(ctx, guest=Guest(_NoGuest()))
        plan = plan_fixes(before.results, ctx, unsafe=opts.unsafe, generalize=opts.generalize)
        state.step("plan")
        if opts.diff:
            from vhdtool.checks.fixes import render_diff
            return FixRun(before, plan, diff=render_diff(plan), extra={"timing": state.timing})
        if plan.applied:
            apply(plan, engine, notice)
            state.step("commit")
    finally:
        engine.release()
    state.step("shutdown")
    changed = bool(plan.applied) and engine.overlay is not None
    source, fmt = (engine.overlay, "qcow2") if changed else (src, opts.fmt)
    tmp = os.path.join(folder, os.path.basename(dst))
    converted = convert(source, tmp, fmt=fmt, digests=opts.digests, progress=opts.progress,
                        sync=opts.sync)
    state.step("convert")
    after = pipeline.run(tmp, opts.profile, "vpc", opts.select, opts.ignore,
                         guest_engine=_recheck_engine(opts.timeout, opts.progress is not False),
                         collect=opts.collect)
    after = replace(after, image=dst)
    state.step("recheck")
    try:
        with deferred_signals():     # named, or not: never "interrupted" half-way
            atomicfile.publish(tmp, dst, opts.force)
            state.published = True
            if opts.sync:
                atomicfile.fsync_dir(os.path.dirname(os.path.abspath(dst)))
    except FileExistsError as e:
        raise ConvertError(f"{dst}: appeared during the fix; nothing was written under that "
                           "name") from e
    state.step("publish")
    return FixRun(before, plan, converted=converted, after=after,
                  extra={"timing": dict(state.timing)})


def _recheck_engine(timeout: float, progress: bool) -> Any:
    from .engines import AutoEngine
    return AutoEngine("auto", timeout=timeout, progress=progress)


__all__ = ["FixOptions", "FixRun", "OverlayEngine", "apply", "create_overlay", "fix", "owners"]
