"""Fixes declared beside the checks: what a fix changes, and how it is planned, shown and applied.

A check may declare a :class:`Fix` (``check(..., fix=Fix(...))``): a summary of what it changes (for
docs and ``vhdtool fix --diff``), a safety class as ruff has (:class:`Safety`: *safe* fixes cannot
stop the guest from booting or change what it runs; *unsafe* ones change how it boots or what runs),
whether it belongs to the deprovision set that ``--generalize`` applies, and a ``plan`` function.

``plan(ctx, result)`` reads the guest through ``ctx.guest`` (a read-only :class:`~checks.guest.Guest`)
and returns the :data:`Change` list that puts the failing ``result`` right: files to write (an
existing file keeps its owner and mode), paths to delete, symbolic links to make, and -- only for the
fixes that need one -- a program of the guest to run inside the appliance (:class:`RunProgram`,
never on the host).  Plans never write: :func:`plan_fixes` applies each fix's changes to an
:class:`OverlayView`, an in-memory layer over the guest, so each later fix (and the re-check of
``--diff``) sees the earlier ones, and two fixes editing one file compose.  :func:`commit` replays
the overlay's operations on a :class:`WritableGuestView` (the engine's, into its copy-on-write
overlay), then runs the programs; :func:`render_diff` shows them without writing.

This module never imports ``vhdtool`` nor a libguestfs handle.
"""

from __future__ import annotations

import difflib
import enum
import posixpath
import stat as statmod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from .guest import Guest, GuestView, Stat, collect_facts, realpath

if TYPE_CHECKING:
    from .catalog import Context, Result


class Safety(enum.Enum):
    SAFE = "safe"          #: cannot stop the guest from booting or change what it runs
    UNSAFE = "unsafe"      #: changes how the guest boots or what it runs (--unsafe-fixes)

    def __str__(self) -> str:
        return self.value


# -- the changes a fix plans ---------------------------------------------------------------------

@dataclass(frozen=True)
class WriteFile:
    """Write ``data`` to ``path``; an existing file keeps its owner and mode, a new one gets
    ``mode`` (owner root)."""

    path: str
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class Delete:
    """Delete ``path`` (a file, a link, or a directory and everything under it)."""

    path: str


@dataclass(frozen=True)
class Symlink:
    """Make ``path`` a symbolic link to ``target`` (replacing what is there)."""

    path: str
    target: str


@dataclass(frozen=True)
class RunProgram:
    """Run a program of the guest, chrooted into it inside the appliance, after every file change.

    ``argv[0]`` is a path or name in the guest; ``why`` says what it does (for ``--diff`` and
    errors); ``timeout`` bounds it in seconds.
    """

    argv: tuple[str, ...]
    why: str
    timeout: float = 600.0


Change = WriteFile | Delete | Symlink | RunProgram


class FixError(Exception):
    """A fix could not be planned or applied; the message names the fix and the file."""


class NotFixable(Exception):
    """Raised by a plan when this failure cannot be put right offline (e.g. a module the kernel
    package lacks, a unit that is not installed); the message says why and what to do.
    :func:`plan_fixes` records it as :class:`NotApplied` and goes on."""


class WritableGuestView(GuestView, Protocol):
    """A guest view that also writes (into an overlay: the source image is never written)."""

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Replace or create a regular file; an existing file keeps its owner and mode."""
    def remove(self, path: str) -> None:
        """Delete a file, a link or a directory tree; absent is not an error."""
    def symlink(self, target: str, path: str) -> None: ...
    def make_dir(self, path: str) -> None:
        """Make a directory and its parents (mode 0755)."""
    def run(self, argv: Sequence[str], timeout: float) -> str:
        """Run a guest program chrooted into the guest; its output. Raises :class:`FixError`
        naming the program when it exits non-zero or outlives ``timeout``."""


@dataclass(frozen=True)
class Fix:
    """What a check's fix changes and how; see the module docstring."""

    summary: str
    safety: Safety
    plan: Callable[[Context, Result], list[Change]] = field(repr=False, compare=False)
    #: part of what ``waagent -deprovision+user`` and ``cloud-init clean --logs --machine-id``
    #: remove: applied by ``--generalize`` whatever its safety class
    deprovision: bool = False
    #: for a SAFE fix whose change on some guests is unsafe: True when this failure's fix is
    #: (it is then applied only with --unsafe-fixes); ``unsafe_when`` says when, for the docs
    unsafe_if: Callable[[Context, Result], bool] | None = field(default=None, repr=False,
                                                                compare=False)
    unsafe_when: str = ""

    def describe(self) -> str:
        """The safety class and set in words (docs, ``checks show``)."""
        text = str(self.safety)
        if self.unsafe_when:
            text += f" (unsafe when {self.unsafe_when})"
        if self.deprovision:
            text += "; in the deprovision set (--generalize)"
        return text


# -- the in-memory layer the plans are applied to ------------------------------------------------

_DELETED = object()


@dataclass
class _Node:
    kind: str                       #: "file", "link" or "dir"
    data: bytes = b""
    target: str = ""
    mode: int = 0o644


class OverlayView:
    """A :class:`GuestView` of ``base`` with changes applied in memory; records the operations."""

    def __init__(self, base: GuestView) -> None:
        self.base = base
        self._nodes: dict[str, _Node | object] = {}
        #: operations in order (WriteFile/Delete/Symlink with resolved paths; make_dir as
        #: ("mkdir", path) is implied by WriteFile/Symlink parents)
        self.operations: list[WriteFile | Delete | Symlink] = []
        self.programs: list[RunProgram] = []

    # -- GuestView ------------------------------------------------------------------------
    def _hidden(self, path: str) -> bool:
        p = path
        while True:
            if self._nodes.get(p) is _DELETED:
                return True
            if p == "/":
                return False
            p = posixpath.dirname(p)

    def lstat(self, path: str) -> Stat | None:
        node = self._nodes.get(path)
        if isinstance(node, _Node):
            if node.kind == "dir":
                return Stat(statmod.S_IFDIR | 0o755, 4096)
            if node.kind == "link":
                return Stat(statmod.S_IFLNK | 0o777, len(node.target))
            old = None if self._hidden(path) else self.base.lstat(path)
            mode = statmod.S_IMODE(old.mode) if old and old.is_reg else node.mode
            uid, gid = (old.uid, old.gid) if old and old.is_reg else (0, 0)
            return Stat(statmod.S_IFREG | mode, len(node.data), uid, gid)
        if self._hidden(path):
            return None
        return self.base.lstat(path)

    def readlink(self, path: str) -> str | None:
        node = self._nodes.get(path)
        if isinstance(node, _Node):
            return node.target if node.kind == "link" else None
        return None if self._hidden(path) else self.base.readlink(path)

    def list_dir(self, path: str) -> list[str]:
        names: set[str] = set()
        st = self.lstat(path)
        if st is None or not st.is_dir:
            return []
        node = self._nodes.get(path)
        if not isinstance(node, _Node) and not self._hidden(path):
            names.update(self.base.list_dir(path))
        prefix = path.rstrip("/") + "/"
        for p, n in self._nodes.items():
            if p.startswith(prefix) and "/" not in p[len(prefix):]:
                (names.discard if n is _DELETED else names.add)(p[len(prefix):])
        return sorted(names)

    def read_raw(self, path: str, limit: int) -> bytes | None:
        node = self._nodes.get(path)
        if isinstance(node, _Node):
            return node.data[:limit] if node.kind == "file" else None
        return None if self._hidden(path) else self.base.read_raw(path, limit)

    # -- changes --------------------------------------------------------------------------
    def _resolve(self, path: str) -> str:
        """``path`` with its parent resolved in the guest (the last component is not followed)."""
        path = posixpath.normpath("/" + path.lstrip("/"))
        parent = realpath(self, posixpath.dirname(path))
        return posixpath.join(parent, posixpath.basename(path))

    def _make_parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        missing = []
        while self.lstat(parent) is None:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for d in reversed(missing):
            self._nodes[d] = _Node("dir")

    def apply(self, change: Change) -> None:
        if isinstance(change, RunProgram):
            self.programs.append(change)
            return
        path = self._resolve(change.path)
        if isinstance(change, Delete):
            if self.lstat(path) is None:
                return
            for p in [p for p in self._nodes if p.startswith(path.rstrip("/") + "/")]:
                del self._nodes[p]
            self._nodes[path] = _DELETED
            self.operations.append(Delete(path))
            return
        st = self.lstat(path)
        if st is not None and st.is_dir:
            raise FixError(f"{path} is a directory: a fix cannot replace it with a file or link")
        self._make_parents(path)
        if isinstance(change, WriteFile):
            self._nodes[path] = _Node("file", data=change.data, mode=change.mode)
            self.operations.append(replace(change, path=path))
        else:
            self._nodes[path] = _Node("link", target=change.target)
            self.operations.append(Symlink(path, change.target))

    @property
    def changed(self) -> bool:
        return bool(self.operations or self.programs)


# -- planning, committing, showing ----------------------------------------------------------------

@dataclass(frozen=True)
class Applied:
    """One fix planned for one failing check."""

    check_id: str
    fix: Fix
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class NotApplied:
    check_id: str
    reason: str       #: e.g. "no fix", "unsafe fix: pass --unsafe-fixes"


@dataclass
class Plan:
    overlay: OverlayView
    applied: list[Applied] = field(default_factory=list)
    not_applied: list[NotApplied] = field(default_factory=list)


def refreshed(old: Guest, view: GuestView) -> Guest:
    """A :class:`Guest` over ``view`` (e.g. an overlay of ``old``'s) with its facts read anew,
    keeping the filesystems the engine found (they come from the disk, not from the view)."""
    return Guest(view, collect_facts(Guest(view), old.facts.filesystems))


def chosen(fix: Fix, *, unsafe: bool, generalize: bool) -> str | None:
    """None when ``fix`` is to be applied under these options, else why not."""
    if fix.safety is Safety.SAFE or unsafe or (generalize and fix.deprovision):
        return None
    return "unsafe fix: pass --unsafe-fixes to apply it"


def plan_fixes(results: Sequence[Result], ctx: Context, *, unsafe: bool = False,
               generalize: bool = False) -> Plan:
    """Plan the fixes of the failing ``results`` over ``ctx.guest``'s view, in catalog order.

    Each fix plans on a fresh :class:`Guest` over the overlay holding the earlier fixes' changes
    (and a fresh ``ctx.memo``), so its reading of the guest is current.
    """
    from .catalog import Verdict

    overlay = OverlayView(ctx.guest.view)
    plan = Plan(overlay)
    for result in results:
        if result.verdict is not Verdict.FAIL:
            continue
        fix = result.check.fix
        if fix is None:
            plan.not_applied.append(NotApplied(result.check.id, "no fix: see its remediation"))
            continue
        why = chosen(fix, unsafe=unsafe, generalize=generalize)
        if why:
            plan.not_applied.append(NotApplied(result.check.id, why))
            continue
        fctx = replace(ctx, guest=refreshed(ctx.guest, overlay), memo={})
        if (fix.unsafe_if is not None and not unsafe and not (generalize and fix.deprovision)
                and fix.unsafe_if(fctx, result)):
            plan.not_applied.append(NotApplied(
                result.check.id, f"unsafe here ({fix.unsafe_when}): pass --unsafe-fixes"))
            continue
        try:
            changes = tuple(fix.plan(fctx, result))
        except NotFixable as e:
            plan.not_applied.append(NotApplied(result.check.id, f"not fixable offline: {e}"))
            continue
        except FixError as e:
            raise FixError(f"{result.check.id}: {e}") from None
        for change in changes:
            overlay.apply(change)
        plan.applied.append(Applied(result.check.id, fix, changes))
    return plan


def commit(plan: Plan, target: WritableGuestView,
           progress: Callable[[str], None] = lambda _msg: None) -> None:
    """Replay the plan's file operations on ``target``, then run its programs (in order)."""
    for op in plan.overlay.operations:
        if isinstance(op, Delete):
            target.remove(op.path)
            continue
        target.make_dir(posixpath.dirname(op.path))
        if isinstance(op, WriteFile):
            target.write_file(op.path, op.data, op.mode)
        else:
            target.remove(op.path)
            target.symlink(op.target, op.path)
    for prog in _unique(plan.overlay.programs):
        progress(f"running {' '.join(prog.argv)} in the guest ({prog.why})")
        target.run(prog.argv, prog.timeout)


def _unique(programs: Sequence[RunProgram]) -> list[RunProgram]:
    seen, out = set(), []
    for p in programs:
        if p.argv not in seen:
            seen.add(p.argv)
            out.append(p)
    return out


def render_diff(plan: Plan) -> str:
    """What committing ``plan`` would change: a unified diff per edited text file, the deleted
    paths, the links made and the programs that would run."""
    ov, out = plan.overlay, []
    final: dict[str, WriteFile | Delete | Symlink] = {}
    for op in ov.operations:
        final[op.path] = op
    for path, op in final.items():
        old_st = ov.base.lstat(path)
        if isinstance(op, Delete):
            out.append(f"delete {path}{'/' if old_st and old_st.is_dir else ''}\n")
        elif isinstance(op, Symlink):
            out.append(f"symlink {path} -> {op.target}\n")
        else:
            old = ov.base.read_raw(path, len(op.data) + (1 << 20)) if old_st else None
            out.append(_text_diff(path, old, op.data))
    for prog in _unique(ov.programs):
        out.append(f"run {' '.join(prog.argv)}  # {prog.why}\n")
    return "".join(out)


def _text_diff(path: str, old: bytes | None, new: bytes) -> str:
    try:
        a = [] if old is None else old.decode("utf-8").splitlines(keepends=True)
        b = new.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return f"write {path} (binary, {len(new)} bytes)\n"
    lines = list(difflib.unified_diff(a, b, "/dev/null" if old is None else f"a{path}",
                                      f"b{path}"))
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)


__all__ = ["Safety", "Fix", "FixError", "NotFixable", "WriteFile", "Delete", "Symlink",
           "RunProgram", "Change", "WritableGuestView", "OverlayView", "Plan", "Applied",
           "NotApplied", "plan_fixes", "commit", "render_diff", "chosen", "refreshed"]
