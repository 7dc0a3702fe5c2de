"""Facts the guest checks share, derived from a :class:`checks.guest.Guest` and memoised per run.

Enabled systemd units, ``waagent.conf``, the kernel command lines the bootloader passes, the
modules available to each kernel (files, ``modules.builtin``, the initramfs) and the modprobe rules
that disable some. The merged cloud-init configuration is :mod:`checks.cloudinit`'s.

References:
  - systemd.unit(5): enablement is a symlink in ``/etc/systemd/system/<target>.wants/``; a unit
    linked to ``/dev/null`` in ``/etc/systemd/system`` is masked.
  - WALinuxAgent ``waagent.conf`` (``key=value``, ``#`` comments; README "Configuration").
  - GRUB manual (``GRUB_CMDLINE_LINUX``, ``GRUB_CMDLINE_LINUX_DEFAULT``, ``linux`` command in
    grub.cfg); grub-mkconfig sources ``/etc/default/grub`` then ``/etc/default/grub.d/*.cfg``
    (Debian/Ubuntu; read with :mod:`checks.shellvars`), and ``10_linux`` gives the default
    entries ``GRUB_CMDLINE_LINUX GRUB_CMDLINE_LINUX_DEFAULT``, the recovery entries only
    ``GRUB_CMDLINE_LINUX``; Boot Loader Specification (``options`` lines, concatenated, in
    ``$BOOT/loader/entries/*.conf``, $BOOT at /boot, /boot/efi or /efi), grubenv
    ``kernelopts`` (RHEL 8), kernel-install(8) ``/etc/kernel/cmdline``.
  - modprobe.d(5): ``blacklist <mod>``, ``install <mod> /bin/true|/bin/false``; directories
    ``/etc/modprobe.d``, ``/lib/modprobe.d``, ``/usr/lib/modprobe.d``, ``/run/modprobe.d``.
  - depmod(8): ``modules.dep`` lists every module file of a kernel.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from .catalog import Context, Finding, NotApplicable
from .guest import BLS_ENTRY_DIRS, Guest, Kernel, module_name
from .initramfs import InitramfsError, read_initramfs
from .shellvars import ShellVars

T = TypeVar("T")
MAX_INITRAMFS = 512 * 1024 * 1024


def guest(ctx: Context) -> Guest:
    return ctx.guest


def memo(ctx: Context, key: str, fn: Callable[[Guest], T]) -> T:
    return ctx.once(key, lambda: fn(ctx.guest))


def where(path: str, line: int | None = None) -> str:
    return f"{path}:{line}" if line else path


# -- configuration files -------------------------------------------------------------------------
def dir_files(g: Guest, dirs: Iterable[str], pattern: str) -> list[str]:
    """Entries of ``dirs`` whose names match the regex ``pattern``, each directory read once
    (``/lib/x`` and ``/usr/lib/x`` are one directory on a merged-/usr guest)."""
    out: list[str] = []
    seen: set[str] = set()
    for d in dirs:
        real = g.realpath(d)
        if real not in seen:
            seen.add(real)
            out += g.glob(d, pattern)
    return out


def glob_files(g: Guest, pattern: str) -> list[str]:
    """Regular files matching a shell ``pattern`` whose wildcards are in the last component
    (``/etc/network/interfaces.d/*``), sorted as the shell sorts them."""
    d, base = posixpath.split(pattern)
    return sorted(p for p in (posixpath.join(d, n) for n in g.list_dir(d)
                              if fnmatch.fnmatchcase(n, base)) if g.is_file(p))


Line = tuple[str, int, str]


def with_includes(first: str, read: Callable[[str], Iterable[tuple[int, str]]],
                  included: Callable[[str], list[str]], most: int = 256) -> list[Line]:
    """(path, line number, line) of ``first`` and of the files its lines include, breadth-first,
    each file read once (at most ``most`` files): ``included(line)`` names the files a line
    pulls in (chrony ``confdir``, ifupdown ``source``, sudoers ``@includedir``)."""
    out: list[Line] = []
    todo, seen = [first], set()
    while todo and len(seen) < most:
        path = todo.pop(0)
        if path in seen:
            continue
        seen.add(path)
        for no, line in read(path):
            out.append((path, no, line))
            todo += included(line)
    return out


# -- systemd --------------------------------------------------------------------------------------
UNIT_DIRS = ("/etc/systemd/system",)


def enabled_units(g: Guest) -> dict[str, str]:
    """{unit name: evidence path} for units enabled through a ``.wants``/``.requires`` link."""
    out: dict[str, str] = {}
    for d in UNIT_DIRS:
        for sub in g.list_dir(d):
            if sub.endswith((".wants", ".requires")):
                for unit in g.list_dir(f"{d}/{sub}"):
                    out.setdefault(unit, f"{d}/{sub}/{unit}")
    for unit in list(out):
        if g.readlink(f"/etc/systemd/system/{unit}") == "/dev/null":
            del out[unit]      # masked
    return out


def units(ctx: Context) -> dict[str, str]:
    return memo(ctx, "guest.units", enabled_units)


# -- waagent ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    value: str
    line: int
    path: str

    @property
    def evidence(self) -> str:
        return where(self.path, self.line)


WAAGENT_CONF = "/etc/waagent.conf"
WAAGENT_UNITS = ("walinuxagent.service", "waagent.service")


def parse_keyvalue(g: Guest, path: str, sep: str = "=") -> dict[str, Setting]:
    out: dict[str, Setting] = {}
    for no, line in g.lines(path):
        if sep in line:
            k, v = line.split(sep, 1)
            out[k.strip()] = Setting(v.split("#", 1)[0].strip(), no, path)
    return out


def waagent_conf(ctx: Context) -> dict[str, Setting] | None:
    """Parsed waagent.conf, or None when the agent is not installed."""
    return memo(ctx, "guest.waagent", lambda g: parse_keyvalue(g, WAAGENT_CONF)
                if g.is_file(WAAGENT_CONF) else None)


def waagent_enabled(ctx: Context) -> str | None:
    u = units(ctx)
    return next((u[n] for n in WAAGENT_UNITS if n in u), None)


def provisioning_agent(ctx: Context) -> Setting | None:
    conf = waagent_conf(ctx) or {}
    return conf.get("Provisioning.Agent")


def line_of(g: Guest, path: str, pattern: str) -> int | None:
    rx = re.compile(pattern)
    for no, line in g.lines(path):
        if rx.search(line):
            return no
    return None


# -- kernel command lines ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Cmdline:
    path: str
    line: int
    args: tuple[str, ...]
    what: str            #: "grub.cfg linux", "GRUB_CMDLINE_LINUX[_DEFAULT]", "BLS options", ...
    #: a grub.cfg recovery entry (10_linux gives it GRUB_CMDLINE_LINUX without the _DEFAULT part)
    recovery: bool = False
    also: tuple[str, ...] = ()     #: further evidence (the other assignment it was composed from)

    @property
    def evidence(self) -> str:
        return ", ".join((where(self.path, self.line),) + self.also)


def _split(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError:
        return tuple(text.split())


RECOVERY = re.compile(r"\(recovery mode\)|-recovery-")


def _grub_cfg_lines(g: Guest, path: str) -> list[Cmdline]:
    out, recovery = [], False
    for no, line in g.lines(path):
        parts = line.split(None, 2)
        if parts[0] == "menuentry":
            recovery = bool(RECOVERY.search(line))
        elif parts[0] in ("linux", "linuxefi", "linux16") and len(parts) >= 2:
            what = "grub.cfg linux (recovery entry)" if recovery else "grub.cfg linux"
            out.append(Cmdline(path, no, _split(parts[2] if len(parts) > 2 else ""), what,
                               recovery))
    return out


DEFAULT_GRUB = "/etc/default/grub"
DEFAULT_GRUB_D = "/etc/default/grub.d"
CMDLINE_VARS = ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT")


def grub_defaults(g: Guest) -> ShellVars:
    """The variables grub-mkconfig sees: ``/etc/default/grub`` then ``grub.d/*.cfg``.

    grub-mkconfig (``util/grub-mkconfig.in``) sources ``/etc/default/grub`` if it is a file, then
    each existing ``/etc/default/grub.d/*.cfg`` in the order ``/bin/sh`` expands the glob
    (byte order; ``*`` does not match a leading dot).
    """
    env = ShellVars()
    paths = [DEFAULT_GRUB] if g.is_file(DEFAULT_GRUB) else []
    paths += sorted(g.glob(DEFAULT_GRUB_D, r"[^.].*\.cfg"))
    for path in paths:
        text = g.read_text(path)
        if text is not None:
            env.source(text, path)
    return env


def _default_grub(g: Guest) -> tuple[list[Cmdline], list[str]]:
    """The command line 10_linux composes for the default entries (``GRUB_CMDLINE_LINUX``, then
    ``GRUB_CMDLINE_LINUX_DEFAULT``), or why it could not be evaluated."""
    env = grub_defaults(g)
    vals = {k: v for k in CMDLINE_VARS if (v := env.values.get(k)) is not None}
    unknown = [f"{k} ({v.evidence}: {v.why})" for k in CMDLINE_VARS
               if (v := env.get(k)) is not None and v.text is None]
    if unknown:
        return [], [f"{' and '.join(unknown)} not evaluated"]
    if not vals:
        return [], []
    # the place to edit: the last assignment of GRUB_CMDLINE_LINUX (else of _DEFAULT)
    main = vals.get("GRUB_CMDLINE_LINUX") or vals["GRUB_CMDLINE_LINUX_DEFAULT"]
    also = tuple(v.evidence for v in vals.values() if v is not main)
    args = _split(" ".join(v.text or "" for v in vals.values()))
    return [Cmdline(main.path, main.line, args, "GRUB_CMDLINE_LINUX[_DEFAULT]", also=also)], []


@dataclass(frozen=True)
class Cmdlines:
    found: list[Cmdline]
    unevaluated: list[str]       #: sources that could not be read statically, and why


def bls_cmdlines(g: Guest) -> list[Cmdline]:
    """One command line per BLS type-1 entry: its ``options`` lines, concatenated (the spec allows
    several), in every place $BOOT may be mounted (:data:`checks.guest.BLS_ENTRY_DIRS`)."""
    out = []
    for d in BLS_ENTRY_DIRS:
        for path in g.glob(d, r".+\.conf"):
            opts = [(no, (line.split(None, 1) + [""])[1])
                    for no, line in g.lines(path) if line.split(None, 1)[0] == "options"]
            if opts:
                args = _split(" ".join(text for _, text in opts))
                out.append(Cmdline(path, opts[0][0], args, "BLS options"))
    return out


def _all_cmdlines(g: Guest) -> Cmdlines:
    out: list[Cmdline] = []
    for path in ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"):
        out += _grub_cfg_lines(g, path)
    defaults, unevaluated = _default_grub(g)
    out += defaults
    out += bls_cmdlines(g)
    for path in ("/boot/grub2/grubenv", "/boot/grub/grubenv"):
        for no, line in g.lines(path):
            if line.startswith("kernelopts="):
                out.append(Cmdline(path, no, _split(line.split("=", 1)[1]), "grubenv kernelopts"))
    for no, line in g.lines("/etc/kernel/cmdline"):
        out.append(Cmdline("/etc/kernel/cmdline", no, _split(line), "kernel-install cmdline"))
    return Cmdlines(out, unevaluated)


def cmdlines(ctx: Context) -> list[Cmdline]:
    """Every kernel command line the bootloader configuration holds (evaluated ones)."""
    return memo(ctx, "guest.cmdlines", _all_cmdlines).found


def require_cmdlines(ctx: Context) -> list[Cmdline]:
    """The command lines the default boot entries use: recovery entries left out."""
    both = memo(ctx, "guest.cmdlines", _all_cmdlines)
    found = [c for c in both.found if not c.recovery]
    if not found:
        why = "; ".join(both.unevaluated)
        raise NotApplicable("no bootloader configuration with a kernel command line found"
                            + (f" ({why})" if why else ""))
    return found


def has_arg(args: tuple[str, ...], name: str, value_prefix: str | None = None) -> bool:
    for a in args:
        k, _, v = a.partition("=")
        if k == name and (value_prefix is None or v.startswith(value_prefix)):
            return True
    return False


# -- kernel modules -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelModules:
    kernel: Kernel
    files: frozenset[str]         #: modules present as files under /lib/modules/<v>
    initramfs: frozenset[str] | None   #: modules in the initramfs (None: no initramfs)
    initramfs_error: str | None = None


def _module_files(g: Guest, k: Kernel) -> frozenset[str]:
    if not k.modules_dir:
        return frozenset()
    dep = g.read_text(f"{k.modules_dir}/modules.dep") or ""
    return frozenset(module_name(line.split(":", 1)[0]) for line in dep.splitlines() if ":" in line)


def _kernel_modules(g: Guest) -> list[KernelModules]:
    out = []
    for k in g.facts.kernels:
        mods, err = None, None
        if k.initramfs:
            data = g.read_file(k.initramfs, MAX_INITRAMFS)
            try:
                mods = read_initramfs(data or b"", k.initramfs).modules
            except InitramfsError as e:
                err = str(e)
        out.append(KernelModules(k, _module_files(g, k), mods, err))
    return out


def kernel_modules(ctx: Context) -> list[KernelModules]:
    found = memo(ctx, "guest.kmods", _kernel_modules)
    if not found:
        raise NotApplicable("no kernel found in /boot")
    return found


def missing_at_boot(km: KernelModules, wanted: tuple[str, ...]) -> Finding | None:
    """A finding when a module of ``wanted`` is neither built in nor in the initramfs."""
    k = km.kernel
    if km.initramfs_error:
        return Finding(f"kernel {k.version}: initramfs unreadable ({km.initramfs_error})",
                       k.initramfs)
    have = k.builtin | (km.initramfs or frozenset())
    missing = [m for m in wanted if m not in have]
    if not missing:
        return None
    if km.initramfs is None:
        return Finding(f"kernel {k.version} has no initramfs and does not build in "
                       f"{', '.join(missing)}", k.image)
    return Finding(f"kernel {k.version}: {', '.join(missing)} neither built in "
                   f"({k.modules_dir or '/lib/modules/' + k.version}/modules.builtin) nor in the "
                   "initramfs", k.initramfs)


def missing_installed(km: KernelModules, wanted: tuple[str, ...]) -> Finding | None:
    """A finding when a module of ``wanted`` is neither built in nor installed as a file."""
    k = km.kernel
    have = k.builtin | km.files | (km.initramfs or frozenset())
    missing = [m for m in wanted if m not in have]
    if not missing:
        return None
    return Finding(f"kernel {k.version}: {', '.join(missing)} neither built in nor installed",
                   f"{k.modules_dir or '/lib/modules/' + k.version}/modules.dep")


# -- modprobe.d -----------------------------------------------------------------------------------------
MODPROBE_DIRS = ("/etc/modprobe.d", "/lib/modprobe.d", "/usr/lib/modprobe.d", "/run/modprobe.d")
DISABLING = re.compile(r"^(?:blacklist\s+(\S+)|install\s+(\S+)\s+(?:/usr)?/bin/(?:true|false)\b)")


@dataclass(frozen=True)
class Disabled:
    module: str
    path: str
    line: int
    text: str


def _disabled_modules(g: Guest) -> list[Disabled]:
    out = []
    for path in dir_files(g, MODPROBE_DIRS, r".+\.conf"):
        for no, line in g.lines(path):
            m = DISABLING.match(line)
            if m:
                out.append(Disabled((m.group(1) or m.group(2)).replace("-", "_"), path, no, line))
    return out


def disabled_modules(ctx: Context) -> list[Disabled]:
    return memo(ctx, "guest.modprobe", _disabled_modules)


def disabled_findings(ctx: Context, pred: Callable[[str], bool]) -> list[Finding]:
    return [Finding(f"module {d.module} is disabled: '{d.text}'", where(d.path, d.line),
                    fix=f"remove line {d.line} of {d.path}")
            for d in disabled_modules(ctx) if pred(d.module)]


def home_dirs(g: Guest) -> list[str]:
    return ["/root"] + [posixpath.join("/home", n) for n in g.list_dir("/home")]
