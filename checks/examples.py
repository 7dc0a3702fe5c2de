"""Turn a check's :class:`~checks.catalog.Example` into a :class:`~checks.catalog.Context`, and the
vocabulary examples are written in.

Examples are deltas on known-good baselines. Each subject registers its baseline builder here:
``disk`` (checks.disk: DiskFacts of a correct fixed VHD) and ``guest`` (the test suite's
``tests/checks/fakeguest.py``: an in-memory guest of a well-prepared generalized Debian 12 image,
registered when the tests import it). The test suite proves that every check passes on the
baselines and on its ``passes`` examples, and fails on its ``fails`` examples.

The installed package holds only what a declaration names at import time: the baseline guest's
kernel version and module lists (so an example can delete a module), the markers of a symbolic
link and a directory, and :class:`Made` -- file content (a PE loader, an initramfs) described by a
recipe that only the test suite builds, when it runs the example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .catalog import V1, V2, Context, Example, Profile

#: subject -> builder(overrides) -> facts; registered by the module that defines the subject
BASELINES: dict[str, Callable[[Mapping[str, Any] | None], Any]] = {}


def register_baseline(subject: str, builder: Callable[[Mapping[str, Any] | None], Any]) -> None:
    BASELINES[subject] = builder


def context_for(example: Example | None = None) -> Context:
    """The baseline context with ``example``'s deltas applied."""
    ex = example or Example("baseline")
    profile = Profile()
    if ex.profile:
        profile = replace(profile, **ex.profile)
    disk = BASELINES["disk"](ex.disk) if "disk" in BASELINES else None
    guest = BASELINES["guest"](ex.files) if "guest" in BASELINES else None
    gens = profile.generations or frozenset({V1, V2})
    ctx = Context(profile=profile, disk=disk, guest=guest, generations=gens,
                  guest_requested=guest is not None)
    if ex.unopened is not None:
        ctx.guest, ctx.guest_skip_reason = None, ex.unopened
    return ctx


# -- the vocabulary of guest examples ---------------------------------------------------------

LINK = "\0symlink:"
DIR = "\0dir"


def symlink(target: str) -> str:
    """A value of an example's files mapping that makes a symbolic link to ``target``."""
    return LINK + target


@dataclass(frozen=True)
class Made:
    """File content an example writes, built by the guest baseline when the example runs.

    ``recipe`` names the builder, ``args`` its arguments: ``pe`` (a PE32+ image; args: the
    signature, None, ``"debian-shim"``, ``"tampered"`` (that shim, one code byte changed) or
    ``"forged"`` (signed by a self-made key)), ``initrd`` (a gzip newc initramfs; args:
    the module paths under ``kernel/``), ``elf`` (an ELF header; args: class, e_machine).
    """

    recipe: str
    args: tuple[Any, ...] = ()


def pe(signature: str | None) -> Made:
    return Made("pe", (signature,))


def initrd(modules: tuple[str, ...]) -> Made:
    return Made("initrd", (tuple(modules),))


def elf(elf_class: int, machine: int) -> Made:
    return Made("elf", (elf_class, machine))


#: the baseline guest's kernel and the modules it has (files, and those its initramfs holds)
KVER = "6.1.0-56-cloud-amd64"
MODS = f"/lib/modules/{KVER}/kernel"
INITRD = f"/boot/initrd.img-{KVER}"
INITRD_MODULES = ("drivers/hv/hv_vmbus.ko", "drivers/scsi/hv_storvsc.ko",
                  "drivers/net/hyperv/hv_netvsc.ko", "drivers/pci/controller/pci-hyperv.ko")
DISK_MODULES = INITRD_MODULES + (
    "fs/udf/udf.ko", "fs/fat/vfat.ko", "drivers/scsi/sr_mod.ko", "drivers/cdrom/cdrom.ko",
    "drivers/net/ethernet/microsoft/mana/mana.ko",
    "drivers/net/ethernet/mellanox/mlx4/mlx4_en.ko",
    "drivers/net/ethernet/mellanox/mlx4/mlx4_core.ko",
    "drivers/net/ethernet/mellanox/mlx5/core/mlx5_core.ko")


def modules_dep(without: str, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Files that leave the baseline kernel without the modules whose path contains ``without``
    (and with the ``extra`` module paths under ``kernel/``)."""
    return {f"/lib/modules/{KVER}/modules.dep":
            "".join(f"kernel/{m}:\n" for m in DISK_MODULES + extra if without not in m)}


__all__ = ["BASELINES", "DIR", "DISK_MODULES", "INITRD", "INITRD_MODULES", "KVER", "LINK", "MODS",
           "Made", "context_for", "elf", "initrd", "modules_dep", "pe", "register_baseline",
           "symlink"]
