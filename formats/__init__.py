"""vhdtool's byte-level format core: raw, VHD, VHDX and qcow2 readers and the fixed-VHD writer.

This package imports neither ``vhdtool`` nor ``checks``.
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
