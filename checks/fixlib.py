"""Edits the fixes share: lines of config files, kernel command lines, systemd enablement links,
cloud-init drop-ins and the guest's initramfs generator.

Every helper reads the guest through a read-only :class:`checks.guest.Guest` and returns
:data:`checks.fixes.Change` values (it never writes); :class:`checks.fixes.NotFixable` says why a
guest cannot be put right offline.

References:
  - systemctl(1) ``enable``: the links the unit's ``[Install]`` section names (``WantedBy=`` and
    ``RequiredBy=`` in ``/etc/systemd/system/<target>.wants|.requires/``, ``Alias=``), pointing
    at the unit file; a unit without ``[Install]`` is not enabled; a masked unit is refused.
  - GRUB manual (``GRUB_CMDLINE_LINUX``, the ``linux`` command); grub-mkconfig's composition of
    ``/etc/default/grub`` and ``grub.d/*.cfg``: :func:`checks.guestlib.grub_defaults`; Boot Loader
    Specification (``options``); kernel-install(8) (``/etc/kernel/cmdline``); grub-editenv(1)
    (grubenv: a 1024-byte block padded with ``#``).
  - initramfs-tools(7) (``/etc/initramfs-tools/modules``, ``update-initramfs -u|-c -k``),
    dracut.conf(5) (``add_drivers+=" ... "`` in ``/etc/dracut.conf.d/*.conf``), dracut(8)
    (``--force --regenerate-all``); both copy ``modprobe.d`` into the image.
  - cloud-init's drop-in order: :mod:`checks.cloudinit`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .catalog import Context, Finding, NotApplicable, Result
from .cloudinit import CLOUD_CFG_D
from .fixes import Change, Fix, NotFixable, RunProgram, Safety, Symlink, WriteFile
from .guest import BLS_ENTRY_DIRS, Guest
from .guestlib import CMDLINE_VARS, DEFAULT_GRUB, grub_defaults

# -- lines of text files --------------------------------------------------------------------------

def text_of(g: Guest, path: str) -> str:
    text = g.read_text(path)
    if text is None:
        raise NotFixable(f"{path} is not a readable file")
    return text


def edit_file(g: Guest, path: str, edit: Callable[[list[str]], list[str]]) -> list[Change]:
    """A WriteFile of ``path`` with ``edit`` applied to its lines (kept ends); none if unchanged."""
    old = text_of(g, path)
    lines = edit(old.splitlines(keepends=True))
    new = "".join(lines)
    return [] if new == old else [WriteFile(g.realpath(path), new.encode())]


def _eol(line: str) -> str:
    return line[len(line.rstrip("\r\n")):] or "\n"


def comment_out(linenos: Iterable[int], note: str) -> Callable[[list[str]], list[str]]:
    """An edit that comments out the given (1-based) lines, saying why."""
    wanted = set(linenos)

    def edit(lines: list[str]) -> list[str]:
        return [f"# {note}: {ln.rstrip(chr(13) + chr(10))}{_eol(ln)}" if i in wanted else ln
                for i, ln in enumerate(lines, 1)]
    return edit


def set_key(key: str, value: str, sep: str = "=") -> Callable[[list[str]], list[str]]:
    """An edit that sets ``key`` to ``value`` in a ``key=value`` file (waagent.conf): every
    uncommented assignment of it is rewritten, or one is appended."""
    rx = re.compile(rf"^(\s*){re.escape(key)}\s*{re.escape(sep)}")

    def edit(lines: list[str]) -> list[str]:
        out, found = [], False
        for ln in lines:
            m = rx.match(ln)
            if m:
                found = True
                ln = f"{m.group(1)}{key}{sep}{value}{_eol(ln)}"
            out.append(ln)
        if not found:
            if out and not out[-1].endswith("\n"):
                out[-1] += "\n"
            out.append(f"{key}{sep}{value}\n")
        return out
    return edit


def line_no(evidence: str | None) -> tuple[str, int] | None:
    """``path:line`` evidence split; None when it names no line."""
    if not evidence:
        return None
    path, sep, no = evidence.rpartition(":")
    return (path, int(no)) if sep and no.isdigit() else None


# -- kernel command lines -------------------------------------------------------------------------

Arg = tuple[str, str | None]


def _fmt(arg: Arg) -> str:
    return arg[0] if arg[1] is None else f"{arg[0]}={arg[1]}"


def edit_args(words: Sequence[str], add: Sequence[Arg], remove: Sequence[str]) -> list[str]:
    """``words`` with every ``name[=...]`` of ``remove`` dropped and ``add`` appended; an added
    argument replaces other values of its name, except ``console`` (several are meant)."""
    def has(name: str, value: str | None) -> bool:
        return any(w.partition("=")[0] == name and (value is None or
                                                   w.partition("=")[2].startswith(value))
                   for w in words)
    add = [a for a in add if not has(*a)]
    drop = set(remove) | {n for n, _ in add if n != "console"}
    return [w for w in words if w.partition("=")[0] not in drop] + [_fmt(a) for a in add]


def _closing_quote(s: str, i: int) -> int:
    """Index of the quote closing the one at ``s[i]`` on this line, or -1."""
    q, j = s[i], i + 1
    while j < len(s):
        if q == '"' and s[j] == "\\":
            j += 2
            continue
        if s[j] == q:
            return j
        j += 1
    return -1


def edit_assignment(line: str, var: str, add: Sequence[Arg], remove: Sequence[str]) -> str:
    """A shell line assigning ``var`` with its value's arguments edited (quotes kept)."""
    m = re.search(rf"(?:^|[\s;])(?:export\s+)?{var}=", line)
    if not m:
        raise NotFixable(f"no assignment of {var} on the line {line.strip()!r}")
    start = m.end()
    body = line.rstrip("\r\n")
    if start < len(body) and body[start] in "\"'":
        end = _closing_quote(body, start)
        if end < 0:
            raise NotFixable(f"{var} spans several lines: edit it by hand")
        inner = body[start + 1:end]
        if "$(" in inner or "`" in inner:
            raise NotFixable(f"{var} is computed by a command: edit it by hand")
        new = " ".join(edit_args(inner.split(), add, remove))
        return body[:start + 1] + new + body[end:] + _eol(line)
    m2 = re.match(r"[^\s;]*", body[start:])
    inner = m2.group(0) if m2 else ""
    new = " ".join(edit_args(inner.split(), add, remove))
    return body[:start] + f'"{new}"' + body[start + len(inner):] + _eol(line)


GRUB_CFGS = ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg")
GRUBENVS = ("/boot/grub/grubenv", "/boot/grub2/grubenv")
KERNEL_CMDLINE = "/etc/kernel/cmdline"
LINUX = re.compile(r"^(\s*(?:linux|linuxefi|linux16)\s+\S+)(.*?)(\s*)$")


def _edit_prefixed(rx: re.Pattern[str], add: Sequence[Arg], remove: Sequence[str]
                   ) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        out = []
        for ln in lines:
            m = rx.match(ln.rstrip("\r\n"))
            if m and not ln.lstrip().startswith("#"):
                args = " ".join(edit_args(m.group(2).split(), add, remove))
                ln = f"{m.group(1)}{' ' if args and m.group(1) else ''}{args}{_eol(ln)}"
            out.append(ln)
        return out
    return edit


def _grubenv(g: Guest, path: str, add: Sequence[Arg], remove: Sequence[str]) -> list[Change]:
    old = g.read_file(path, 4096) or b""
    new_lines = []
    for ln in old.decode("utf-8", "replace").rstrip("#").splitlines(keepends=True):
        if ln.startswith("kernelopts="):
            args = " ".join(edit_args(ln[len("kernelopts="):].split(), add, remove))
            ln = f"kernelopts={args}\n"
        new_lines.append(ln)
    text = "".join(new_lines).encode()
    if len(text) > len(old):
        raise NotFixable(f"{path}: kernelopts no longer fits the {len(old)}-byte block")
    new = text + b"#" * (len(old) - len(text))
    return [] if new == old else [WriteFile(g.realpath(path), new)]


def cmdline_changes(g: Guest, add: Sequence[Arg] = (), remove: Sequence[str] = ()) -> list[Change]:
    """Changes that put ``add`` on (and ``remove`` off) every kernel command line the guest
    keeps: the ``GRUB_CMDLINE_LINUX`` assignment that wins in grub-mkconfig's composition (one is
    appended to /etc/default/grub when none is made), every ``linux`` line of grub.cfg, BLS
    ``options``, grubenv ``kernelopts`` and /etc/kernel/cmdline, so the arguments hold before
    and after the next regeneration of grub.cfg."""
    out: list[Change] = []
    env = grub_defaults(g)
    main = env.get("GRUB_CMDLINE_LINUX")
    if main is not None:
        if main.text is None:
            raise NotFixable(f"GRUB_CMDLINE_LINUX is not evaluated ({main.evidence}: {main.why})")
        out += edit_file(g, main.path, lambda ls: [
            edit_assignment(ln, "GRUB_CMDLINE_LINUX", add, remove) if i == main.line else ln
            for i, ln in enumerate(ls, 1)])
    elif add and g.is_file(DEFAULT_GRUB):
        out += edit_file(g, DEFAULT_GRUB, lambda ls: (
            ls[:-1] + [ls[-1] if ls[-1].endswith("\n") else ls[-1] + "\n"] if ls else [])
            + [f'GRUB_CMDLINE_LINUX="{" ".join(map(_fmt, add))}"\n'])
    # _DEFAULT comes last on the default entries' line: other values of an added name go
    drop = tuple(remove) + tuple(n for n, _ in add if n != "console")
    deflt = env.get("GRUB_CMDLINE_LINUX_DEFAULT")
    if drop and deflt is not None and deflt.text is not None:
        out += _merge_edit(g, out, deflt.path, lambda ls: [
            edit_assignment(ln, CMDLINE_VARS[1], (), drop) if i == deflt.line else ln
            for i, ln in enumerate(ls, 1)])
    for path in GRUB_CFGS:
        if g.is_file(path):
            out += edit_file(g, path, _edit_prefixed(LINUX, add, remove))
    bls = re.compile(r"^(\s*options)(.*?)(\s*)$")
    for path in (p for d in BLS_ENTRY_DIRS for p in g.glob(d, r".+\.conf")):
        out += edit_file(g, path, _edit_prefixed(bls, add, remove))
    for path in GRUBENVS:
        if g.is_file(path) and any(ln.startswith("kernelopts=") for _, ln in g.lines(path)):
            out += _grubenv(g, path, add, remove)
    if g.is_file(KERNEL_CMDLINE):
        out += edit_file(g, KERNEL_CMDLINE, _edit_prefixed(re.compile(r"^()(.*?)(\s*)$"),
                                                            add, remove))
    return out


def _merge_edit(g: Guest, done: list[Change], path: str,
                edit: Callable[[list[str]], list[str]]) -> list[Change]:
    """``edit`` of ``path`` over what ``done`` already writes to it (one WriteFile per file)."""
    real = g.realpath(path)
    prev = next((c for c in done if isinstance(c, WriteFile) and c.path == real), None)
    if prev is None:
        return edit_file(g, path, edit)
    lines = edit(prev.data.decode().splitlines(keepends=True))
    done.remove(prev)
    return [WriteFile(real, "".join(lines).encode())]


# -- systemd --------------------------------------------------------------------------------------

UNIT_PATHS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")


def unit_file(g: Guest, unit: str) -> str | None:
    """Where systemd finds ``unit`` (its unit file path in the guest), or None."""
    for d in UNIT_PATHS:
        p = f"{d}/{unit}"
        if g.is_file(p):
            return p
    return None


def _install_section(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("["):
            section = s
        elif section == "[Install]" and "=" in s and not s.startswith(("#", ";")):
            k, v = s.split("=", 1)
            out.setdefault(k.strip(), []).extend(v.split())
    return out


def enable_unit(g: Guest, unit: str) -> list[Change]:
    """The links ``systemctl enable UNIT`` makes, from the unit's ``[Install]`` section."""
    if g.readlink(f"/etc/systemd/system/{unit}") == "/dev/null":
        raise NotFixable(f"{unit} is masked (/etc/systemd/system/{unit} -> /dev/null)")
    path = unit_file(g, unit)
    if path is None:
        raise NotFixable(f"{unit} is not installed")
    install = _install_section(text_of(g, path))
    target = g.realpath(path) if path.startswith("/etc/") else path   # as systemctl links it
    out: list[Change] = []
    for key, kind in (("WantedBy", "wants"), ("RequiredBy", "requires")):
        for by in install.get(key, []):
            link = f"/etc/systemd/system/{by}.{kind}/{unit}"
            if g.readlink(link) is None:
                out.append(Symlink(link, target))
    for alias in install.get("Alias", []):
        if g.lstat(f"/etc/systemd/system/{alias}") is None:
            out.append(Symlink(f"/etc/systemd/system/{alias}", target))
    if not install.get("WantedBy") and not install.get("RequiredBy"):
        raise NotFixable(f"{path} has no [Install] WantedBy=/RequiredBy=: systemctl would not "
                         "enable it")
    return out


# -- cloud-init drop-ins --------------------------------------------------------------------------

DROPIN_NAMES = ("90-azure.cfg", "99_vhdtool-azure.cfg", "zz_vhdtool-azure.cfg")


def cloudcfg_dropin(g: Guest, after: str | None) -> str:
    """A new cloud.cfg.d file name that sorts after ``after`` (the file whose value it must
    override) and after every existing drop-in, so its keys win cloud-init's merge."""
    names = [posixpath.basename(p) for p in g.glob(CLOUD_CFG_D, r".+\.cfg")]
    floor = max(names + ([posixpath.basename(after)] if after and after.startswith(
        CLOUD_CFG_D + "/") else []), default="")
    for name in DROPIN_NAMES:
        if name > floor and name not in names:
            return f"{CLOUD_CFG_D}/{name}"
    raise NotFixable(f"no drop-in name sorts after {CLOUD_CFG_D}/{floor}")


# -- initramfs ------------------------------------------------------------------------------------

INITRAMFS_TOOLS_MODULES = "/etc/initramfs-tools/modules"
DRACUT_CONF_D = "/etc/dracut.conf.d"


def initramfs_generator(g: Guest) -> str | None:
    """``initramfs-tools`` or ``dracut`` (the one the guest has), or None."""
    if g.exists("/usr/sbin/update-initramfs"):
        return "initramfs-tools"
    if g.exists("/usr/bin/dracut") or g.exists("/usr/sbin/dracut"):
        return "dracut"
    return None


#: seconds one initramfs generator run may take inside the appliance. Measured: Debian 12's
#: ``update-initramfs -u -k all`` (one cloud kernel, MODULES=most, zstd) took 589 s under TCG on
#: the shared 2-core machine at load ~10 (~3.3 min of CPU: thousands of short-lived processes,
#: each slow to start under TCG); seconds under KVM.
REBUILD_TIMEOUT = 1800.0


def rebuild_initramfs(g: Guest, why: str) -> list[Change]:
    """The guest programs that rebuild every kernel's initramfs (creating missing ones), each
    bounded by :data:`REBUILD_TIMEOUT`."""
    gen = initramfs_generator(g)
    if gen is None:
        raise NotFixable("the guest has neither update-initramfs nor dracut to rebuild its "
                         "initramfs")
    if gen == "dracut":
        return [RunProgram(("dracut", "--force", "--regenerate-all"), why, REBUILD_TIMEOUT)]
    kernels = g.facts.kernels
    out: list[Change] = []
    if any(k.initramfs for k in kernels):
        out.append(RunProgram(("update-initramfs", "-u", "-k", "all"), why, REBUILD_TIMEOUT))
    out += [RunProgram(("update-initramfs", "-c", "-k", k.version), why, REBUILD_TIMEOUT)
            for k in kernels if not k.initramfs]
    return out


def add_initramfs_modules(g: Guest, modules: Sequence[str], name: str) -> list[Change]:
    """Config that makes the guest's generator put ``modules`` into every initramfs."""
    gen = initramfs_generator(g)
    if gen == "dracut":
        path = f"{DRACUT_CONF_D}/90-vhdtool-{name}.conf"
        return [WriteFile(path, f'add_drivers+=" {" ".join(modules)} "\n'.encode())]
    if gen is None:
        raise NotFixable("the guest has neither update-initramfs nor dracut")
    old = g.read_text(INITRAMFS_TOOLS_MODULES)
    have = {ln.split()[0] for ln in (old or "").splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")}
    missing = [m for m in modules if m not in have]
    if not missing:
        return []
    text = (old or "") + ("\n" if old and not old.endswith("\n") else "")
    return [WriteFile(INITRAMFS_TOOLS_MODULES, (text + "".join(f"{m}\n" for m in missing))
                      .encode())]


# -- the failure as the fix sees it ---------------------------------------------------------------

def current_findings(ctx: Context, result: Result) -> list[Finding]:
    """The check's findings on ``ctx`` (the guest with the earlier fixes applied), so line
    numbers and paths are those of the files as this fix finds them."""
    try:
        return list(result.check.func(ctx))
    except NotApplicable:
        return []


def drop_lines(pred: Callable[[str], bool]) -> Callable[[list[str]], list[str]]:
    """An edit that removes the lines ``pred`` selects."""
    return lambda lines: [ln for ln in lines if not pred(ln)]


def by_file(findings: Iterable[Finding]) -> dict[str, list[int]]:
    """{path: [line numbers]} of the findings whose evidence is ``path:line``."""
    out: dict[str, list[int]] = {}
    for f in findings:
        loc = line_no(f.evidence)
        if loc:
            out.setdefault(loc[0], []).append(loc[1])
    return out


def fix(summary: str, safety: Safety, plan: Callable[[Context, Result], list[Change]],
        **kw: Any) -> Fix:
    """A :class:`Fix` whose plan changes nothing where the check passes (on the guest as the
    earlier fixes left it)."""
    def failing_only(ctx: Context, result: Result) -> list[Change]:
        return plan(ctx, result) if current_findings(ctx, result) else []
    return Fix(summary, safety, failing_only, **kw)
