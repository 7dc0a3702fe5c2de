"""The check catalog: every check vhdtool runs, declared once. :func:`load` registers them all.

Open:
  - :mod:`checks.catalog` for the declaration model (:func:`~checks.catalog.check`, Check,
    Profile, Context, Finding, verdicts) and how a run applies the catalog;
  - :mod:`checks.sources` for the references every check cites (title and URL);
  - :mod:`checks.examples` for how a check's pass/fail examples become contexts (the guest
    baseline itself is the test suite's, tests/checks/fakeguest.py);
  - :mod:`checks.tables` for check families that differ only in data (one row per check);
  - :mod:`checks.disk` for the disk facts, :mod:`checks.disklib` for what the disk checks share,
    :mod:`checks.disk_checks` (the container and its sizes) and :mod:`checks.disk_layout` (the
    partition layout and what it boots) for the checks on them;
  - :mod:`checks.guest` (the read-only guest view and its facts) and :mod:`checks.guestlib`
    (shared derived facts: units, waagent.conf, command lines, modules),
    with :mod:`checks.shellvars` (the static reader of /etc/default/grub and its drop-ins) and
    :mod:`checks.cloudinit` (cloud-init's configuration merged as cloud-init merges it);
  - :mod:`checks.provisioning` for who provisions and the agents' versions;
  - :mod:`checks.netconfig` for the static network configuration of every stack (ifupdown,
    netplan, NetworkManager, systemd-networkd, ifcfg);
  - the guest checks by subject: :mod:`checks.guest_prov` (provisioner, sshd),
    :mod:`checks.guest_net` (DHCP on the first NIC, Accelerated Networking and NetworkManager),
    :mod:`checks.guest_system` (time sync, KVP daemon, sudo, Python, other clouds' agents,
    fstab nofail, SELinux relabel),
    :mod:`checks.guest_boot` (command line, drivers, EFI loader, fstab, swap),
    :mod:`checks.guest_deprov` (generalized state), :mod:`checks.guest_tl` (Trusted Launch,
    with :mod:`checks.authenticode` (Authenticode verification; :mod:`checks.cms` reads the
    SignedData) and :mod:`checks.initramfs` as readers);
  - :mod:`checks.gallery` for the gallery definition: declared, derived, and checked.

Installed as ``vhdtool.checks`` (the wheel maps this folder there), it imports only its own
modules, relatively: never the rest of ``vhdtool``, nor ``vhdtool.formats``, nor a libguestfs
handle.
"""

from __future__ import annotations

from importlib import import_module

from .catalog import CATALOG, Check, Context, Finding, Profile, Result, Severity, Verdict
from .disk import DiskFacts, supported_generations

#: the modules that declare checks (relative to this package), imported by load(); each adds its
#: checks to CATALOG
CHECK_MODULES: tuple[str, ...] = (".disk_checks", ".disk_layout", ".guest_prov", ".guest_boot",
                                  ".guest_deprov", ".guest_tl", ".guest_net",
                                  ".guest_system", ".gallery.rules")


def load() -> dict[str, Check]:
    for name in CHECK_MODULES:
        import_module(name, __package__)
    return CATALOG


__all__ = ["CATALOG", "Check", "Context", "DiskFacts", "Finding", "Profile", "Result", "Severity",
           "Verdict", "load", "supported_generations"]
