"""Who provisions the guest on first boot, and which provisioner versions are installed.

One place for the provisioning facts the guest checks (:mod:`checks.guest_prov`,
:mod:`checks.guest_deprov`), the gallery derivation and the upload manifest (``vhdtool manifest``
imports :func:`provisioners`) all rely on.

Rules:
  - waagent provisions when it is installed (``/etc/waagent.conf``) and enabled, and
    ``Provisioning.Agent`` is ``waagent``, or ``auto`` (the default) while cloud-init is not
    enabled (WALinuxAgent ``azurelinuxagent/pa/provision/factory.py``).
  - cloud-init provisions when it is enabled and its merged ``datasource_list`` is absent (the
    default list includes Azure) or contains ``Azure`` (cloud-init DataSourceAzure docs).
  - The waagent version is ``AGENT_VERSION`` in ``azurelinuxagent/common/version.py`` under the
    Python ``dist-packages`` (Debian, Ubuntu) or ``site-packages`` (RHEL, SUSE) directories; the
    dpkg status file (``/var/lib/dpkg/status``, deb822 stanzas) names the package version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .catalog import Context
from .cloudinit import cloud_config, cloudinit_enabled
from .guestlib import guest, provisioning_agent, waagent_conf, waagent_enabled

DPKG_STATUS = "/var/lib/dpkg/status"
WAAGENT_PACKAGES = ("waagent", "walinuxagent", "WALinuxAgent")
AGENT_VERSION_FILES = ("/usr/lib/python3/dist-packages/azurelinuxagent/common/version.py",
                       "/usr/lib/python3/site-packages/azurelinuxagent/common/version.py")
AGENT_VERSION_RE = r"^AGENT_VERSION\s*=\s*['\"]([^'\"]+)"
CLOUDINIT_VERSION_FILES = ("/usr/lib/python3/dist-packages/cloudinit/version.py",)
CLOUDINIT_VERSION_RE = r"^__VERSION__\s*=\s*['\"]([^'\"]+)"


def waagent_provisions(ctx: Context) -> bool:
    """waagent is installed, enabled and will provision (see the module's rules)."""
    agent = provisioning_agent(ctx)
    value = agent.value if agent else "auto"
    if waagent_conf(ctx) is None or not waagent_enabled(ctx):
        return False
    return value == "waagent" or (value == "auto" and not cloudinit_enabled(ctx))


def cloudinit_provisions(ctx: Context) -> bool:
    """cloud-init is enabled and its datasource list allows Azure."""
    cfg = cloud_config(ctx)
    if not cloudinit_enabled(ctx) or cfg is None:
        return False
    ds = cfg.merged.get("datasource_list")
    return ds is None or (isinstance(ds, list) and "Azure" in ds)


@dataclass(frozen=True)
class VersionLine:
    """A version read from a Python source file of the guest, with where it was read."""

    version: str
    path: str
    line: int

    @property
    def evidence(self) -> str:
        return f"{self.path}:{self.line}"


def _version_line(ctx: Context, paths: Iterable[str], pattern: str) -> VersionLine | None:
    g = guest(ctx)
    rx = re.compile(pattern)
    for path in paths:
        for no, line in g.lines(path):
            m = rx.match(line)
            if m:
                return VersionLine(m.group(1), path, no)
    return None


def agent_version(ctx: Context) -> VersionLine | None:
    """``AGENT_VERSION`` of the installed waagent, from its ``version.py``."""
    paths = list(AGENT_VERSION_FILES)
    for lib in guest(ctx).glob("/usr/lib", r"python3.*"):
        paths.append(f"{lib}/site-packages/azurelinuxagent/common/version.py")
    return _version_line(ctx, paths, AGENT_VERSION_RE)


def dpkg_versions(text: str, names: Iterable[str]) -> dict[str, str]:
    """{package: version} of installed ``names`` in a dpkg status file (deb822 stanzas)."""
    wanted, out = set(names), {}
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): *(.*)$", stanza, re.M))
        if fields.get("Package") in wanted and "installed" in fields.get("Status", "").split():
            out[fields["Package"]] = fields.get("Version", "")
    return out


@dataclass(frozen=True)
class Provisioner:
    name: str                  #: cloud-init or waagent
    version: str | None
    version_from: str | None   #: where the version was read
    enabled: bool              #: its units are enabled
    provisions: bool           #: it handles provisioning on first boot

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "version_from": self.version_from,
                "enabled": self.enabled, "provisions": self.provisions}


def _installed_version(pkgs: dict[str, str], names: Iterable[str],
                       found: VersionLine | None) -> tuple[str | None, str | None]:
    """(version, where) from the package DB first, else from the version file."""
    pkg = next((p for p in names if p in pkgs), None)
    if pkg is not None:
        return pkgs[pkg], f"{DPKG_STATUS} ({pkg})"
    return (found.version, found.path) if found else (None, None)


def provisioners(ctx: Context) -> list[Provisioner]:
    """cloud-init and waagent as installed on the guest, with versions (package DB first)."""
    status = guest(ctx).read_text(DPKG_STATUS, 64 * 1024 * 1024) or ""
    pkgs = dpkg_versions(status, ("cloud-init", *WAAGENT_PACKAGES))
    out = []
    if cloud_config(ctx) is not None:
        ver = _installed_version(pkgs, ("cloud-init",), _version_line(
            ctx, CLOUDINIT_VERSION_FILES, CLOUDINIT_VERSION_RE))
        out.append(Provisioner("cloud-init", *ver, cloudinit_enabled(ctx),
                               cloudinit_provisions(ctx)))
    if waagent_conf(ctx) is not None:
        ver = _installed_version(pkgs, WAAGENT_PACKAGES, agent_version(ctx))
        out.append(Provisioner("waagent", *ver, waagent_enabled(ctx) is not None,
                               waagent_provisions(ctx)))
    return out


__all__ = ["Provisioner", "VersionLine", "agent_version", "cloudinit_provisions", "dpkg_versions",
           "provisioners", "waagent_provisions"]
