"""One opened disk per run: the image, its VHD footer, its partition table and its probed volumes.

:class:`Disk` is built once per ``check``/``manifest`` run (``vhdtool.pipeline``) and shared: the
disk facts the checks judge are a projection of it (:func:`vhdtool.facts.disk_facts`), and the
guest engine receives the same object -- the native engine reads the guest through
:attr:`Disk.image` and takes its partitions and their ``blkid`` probes from here, so the image is
opened, its table parsed and each partition probed once per run.

* the image is opened by the format core (``formats.open_image``, the whole backing chain): a
  :class:`~formats.FormatError` propagates (exit 3) so that no guest engine is ever handed an
  image vhdtool's own reader refuses; a reader missing from this build (ImportError) leaves
  :attr:`Disk.image` None and says why in :attr:`Disk.unreadable`;
* the footer is the one the VHD reader chose (``formats.vhd.VhdImage.footer``); a file read as
  raw whose last sector still looks like a (damaged) footer keeps that sector as its footer, so
  the checks can say what is wrong with it;
* every partition is probed by :func:`vhdtool.blkid.probe` (libblkid's TYPE names), once.

Every read goes through :meth:`Disk.read`, which counts calls and bytes (what the disk facts
cost: ``CheckRun.bytes_read``).

References: ``formats.vhd`` (the footer), ``formats.partitions`` (the table), util-linux
libblkid (the probes); Linux names partitions ``/dev/sdaN`` by their table index.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from vhdtool.checks.guest import Filesystem
from vhdtool.formats import DiskImage, open_image, probe as probe_format
from vhdtool.formats import vhd as vhdfmt
from vhdtool.formats.partitions import Partition, PartitionTable, read_partition_table

from .blkid import Probe, probe

SECTOR = 512
#: images opened by :class:`Disk` in this process (a run opens one: tests count them)
OPENS = 0


@dataclass(frozen=True)
class PartitionVolume:
    """One partition: its Linux device name, its table entry and what ``blkid`` says of it."""

    device: str
    partition: Partition
    probe: Probe | None

    @property
    def filesystem(self) -> Filesystem | None:
        """The guest-facts view (TYPE, UUID, LABEL, PARTUUID, PARTLABEL), None when unknown."""
        if self.probe is None:
            return None
        p = self.partition
        return Filesystem(self.device, self.probe.type, self.probe.uuid, self.probe.label,
                          p.uuid.lower() if p.uuid else None,
                          (p.name or None) if p.scheme == "gpt" else None)


def _looks_like_footer(f: vhdfmt.Footer) -> bool:
    """A footer with a damaged cookie still has the spec's version and a known disk type."""
    return f.cookie_ok or (f.version == 0x00010000 and f.disk_type in (2, 3, 4))


def trailing_footer(path: str, file_size: int) -> vhdfmt.Footer | None:
    """The last sector of a file not read as a VHD, when it looks like a VHD footer anyway."""
    if file_size < SECTOR:
        return None
    with open(path, "rb") as fh:
        tail = os.pread(fh.fileno(), SECTOR, file_size - SECTOR)
    f = vhdfmt.parse_footer(tail, path, file_size - SECTOR, verify=False)
    return f if _looks_like_footer(f) else None


class Disk:
    """An image opened once: footer, partition table and probed partitions, read lazily."""

    def __init__(self, path: str, fmt: str | None = None) -> None:
        global OPENS
        name = fmt or probe_format(path)
        self.path = path
        self.format = "vpc" if name == "vhd" else name
        self.file_size = os.stat(path).st_size
        self.calls = self.bytes_read = 0
        self.unreadable: str | None = None
        self.image: DiskImage | None = None
        self._tables: dict[int, PartitionTable] = {}
        self._volumes: dict[int, tuple[PartitionVolume, ...]] = {}
        self._facts: Any = None
        try:
            self.image = open_image(path, self.format)
            OPENS += 1
        except ImportError as e:
            self.unreadable = f"not readable by this build: {e}"
        if isinstance(self.image, vhdfmt.VhdImage):
            self.footer: vhdfmt.Footer | None = self.image.footer
        elif self.format in ("vpc", "raw"):
            self.footer = trailing_footer(path, self.file_size)
        else:
            self.footer = None

    # -- reading ---------------------------------------------------------------------------
    @property
    def virtual_size(self) -> int:
        return self.image.virtual_size if self.image is not None else 0

    @property
    def sector_size(self) -> int:
        return self.image.logical_sector_size if self.image is not None else SECTOR

    def read(self, offset: int, length: int) -> bytes:
        """Guest bytes (clamped to the virtual size), counted."""
        if self.image is None:
            raise OSError(f"{self.path}: {self.unreadable}")
        self.calls += 1
        self.bytes_read += length
        return self.image.read(offset, length)

    def table(self, sector_size: int | None = None) -> PartitionTable:
        """The partition table as seen with ``sector_size`` (the image's by default), parsed once.

        Linux (and so both guest engines) reads a disk with 512-byte sectors whatever the
        container says; the disk checks judge the layout with the image's own sector size.
        """
        ss = sector_size or self.sector_size
        if ss not in self._tables:
            self._tables[ss] = read_partition_table(self.read, self.virtual_size, ss, self.path)
        return self._tables[ss]

    def _slice(self, start: int, size: int) -> Any:
        def read(offset: int, length: int) -> bytes:
            return self.read(start + offset, max(0, min(length, size - offset)))
        return read

    def partitions(self, sector_size: int | None = None) -> tuple[PartitionVolume, ...]:
        """Every partition with bytes (table order), probed once; the device names Linux gives."""
        ss = sector_size or self.sector_size
        if ss not in self._volumes:
            self._volumes[ss] = tuple(
                PartitionVolume(f"/dev/sda{p.index}", p,
                                probe(self._slice(p.start, p.size), p.size))
                for p in self.table(ss).partitions if p.size > 0)
        return self._volumes[ss]

    @property
    def facts(self) -> Any:
        """The :class:`checks.disk.DiskFacts` of this disk (computed once)."""
        if self._facts is None:
            from .facts import disk_facts
            self._facts = disk_facts(self)
        return self._facts

    # -- life ------------------------------------------------------------------------------
    def close(self) -> None:
        if self.image is not None:
            self.image.close()

    def __enter__(self) -> Disk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Disk", "PartitionVolume", "trailing_footer", "OPENS"]
