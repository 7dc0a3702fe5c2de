"""vhdtool's byte-level format core: raw, VHD, VHDX and qcow2 readers and the fixed-VHD footer.

Open:
  - :mod:`~vhdtool.formats.image` for the one interface every format offers (``DiskImage``:
    virtual size, the allocation map of ``Extent`` runs that drives ``read()``, problems found);
  - :mod:`~vhdtool.formats.probe` for ``open_image`` (format from magic bytes, backing chains
    and their loops) and :mod:`~vhdtool.formats.errors` for the errors (file, structure, offset);
  - the readers: :mod:`~vhdtool.formats.raw`, :mod:`~vhdtool.formats.vhd` (fixed, dynamic,
    differencing; the footer the converter writes), :mod:`~vhdtool.formats.vhdx`,
    :mod:`~vhdtool.formats.qcow2`;
  - the partition tables: :mod:`~vhdtool.formats.mbr`, :mod:`~vhdtool.formats.gpt`, and
    :mod:`~vhdtool.formats.partitions` (either, with its problems; the GPT backup relocation).

Installed as ``vhdtool.formats`` (the wheel maps this folder there), it imports only its own
modules, relatively: never the rest of ``vhdtool`` nor ``vhdtool.checks``.  docs/formats.md says
where readers in the wild disagree and which reading vhdtool takes.
"""

from .errors import (CorruptImage, DirtyImage, EncryptedImage, FormatError, MissingBackingFile,
                     TruncatedImage, UnknownFormat, UnsupportedFeature)
from .image import DiskImage, Extent, Kind, Problem
from .probe import open_image, probe

__all__ = [
    "CorruptImage", "DirtyImage", "DiskImage", "EncryptedImage", "Extent", "FormatError", "Kind",
    "MissingBackingFile", "Problem", "TruncatedImage", "UnknownFormat", "UnsupportedFeature",
    "open_image", "probe",
]
