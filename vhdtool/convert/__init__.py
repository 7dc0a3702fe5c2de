"""``vhdtool convert``: any supported image to a fixed, whole-MiB VHD that Azure accepts.

The copy is planned from the source's allocation map (``DiskImage.extents()``): unallocated and
zero runs become holes in a sparse output; data runs are read in large blocks and each 64 KiB piece
that is all zeros is left a hole too.  Digests cover every byte of the output file -- the virtual
disk with its holes and padding, then the 512-byte footer -- in the same pass; the default digest,
a bmap (``vhdtool.bmap``), costs in proportion to the data instead.  Every buffer is page-aligned
and every write's blocks are allocated just before it: with both, a conversion takes 0.45-0.8 of
qemu-img's wall time here (bench/README.md).

Which module holds what, from the top:

* ``run`` -- the two commands, :func:`convert` (a copy into a partial file, footer verified, then
  published atomically through ``vhdtool.atomicfile``; what a failure leaves: nothing) and
  :func:`convert_in_place` (a raw or fixed VHD grown and footed where it is, restored on failure).
* ``plan`` -- policy before any byte is copied: refusals (empty, damaged, past 32 TiB), the
  rounded size and Azure's limits as warnings, the footer, the GPT backup moved to the new end,
  the windows of the output to read (everything else is a hole).
* ``schedules`` -- one pass over the disk: the *ordered* schedule (digests see every byte in
  order) and the *unordered* one (no whole-file digest: data runs shared out to the workers,
  file-backed runs read by the workers themselves); and :func:`hash_file`.
* ``engine`` -- the one copy engine both schedules run on: a pool of worker threads, a pool of
  page-aligned buffers, ordered *lanes* for the digests, the first error raised in the main thread.
* ``sysio`` -- the system calls and why each was chosen (measured): page-aligned buffers,
  ``fallocate`` before each write, writeback, complete ``pwrite``; no ``copy_file_range``.
* ``result`` -- :class:`ConvertResult` and its parts as dataclasses (``as_dict`` is the JSON of
  ``vhdtool convert --json``), :class:`ConvertError`, the digest names and report.

A failed conversion raises :class:`ConvertError` (the command exits ``Exit.CONVERT_FAILED``, 5);
an image that cannot be read or is damaged raises ``formats.FormatError`` (exit 3).
"""

from __future__ import annotations

from .plan import AZURE_MAX_SIZE, make_footer
from .result import (DEFAULT_DIGESTS, DIGESTS, ConvertError, ConvertResult, DigestReport,
                     digest_report)
from .run import convert, convert_in_place
from .schedules import hash_file

__all__ = ["AZURE_MAX_SIZE", "DEFAULT_DIGESTS", "DIGESTS", "ConvertError", "ConvertResult",
           "DigestReport", "convert", "convert_in_place", "digest_report", "hash_file",
           "make_footer"]
