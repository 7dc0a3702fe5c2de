"""Recognise what a partition holds from its first bytes (a tiny blkid).

Pure function over bytes: the facts builder reads :data:`SNIFF_BYTES` from the start of each
partition and calls :func:`sniff_fs`.  Only the signatures the disk checks need are known.

References:
  util-linux ``libblkid/src/superblocks/{vfat,ext,xfs,swap,lvm,luks,btrfs,ntfs}.c`` (the magic
  offsets, facts only); Microsoft FAT specification (BS_FilSysType @54/@82, signature @510);
  ext4 disk layout (s_magic 0xEF53 at superblock offset 56, superblock at 1024);
  XFS ``sb_magicnum`` "XFSB" at 0; Linux ``mm/swapfile.c`` (SWAPSPACE2 at page end);
  LVM2 label ("LABELONE" in one of the first 4 sectors, "LVM2 001" at +24).
"""

from __future__ import annotations

#: enough for every signature below (btrfs's superblock is at 64 KiB)
SNIFF_BYTES = 64 * 1024 + 4096

_SWAP_MAGICS = (b"SWAPSPACE2", b"SWAP-SPACE")


def _at(head: bytes, offset: int, magic: bytes) -> bool:
    return head[offset:offset + len(magic)] == magic


def _is_fat(head: bytes) -> bool:
    if not _at(head, 510, b"\x55\xaa"):
        return False
    return _at(head, 54, b"FAT1") or _at(head, 82, b"FAT32") or _at(head, 54, b"FAT  ")


def _is_lvm2(head: bytes) -> bool:
    return any(_at(head, s * 512, b"LABELONE") and _at(head, s * 512 + 24, b"LVM2 001")
               for s in range(4))


def _is_swap(head: bytes) -> bool:
    return any(_at(head, page - 10, m) for page in (4096, 8192, 16384, 65536)
               for m in _SWAP_MAGICS)


def sniff_fs(head: bytes) -> str | None:
    """``fat``, ``ext``, ``xfs``, ``btrfs``, ``ntfs``, ``swap``, ``lvm2``, ``luks``, or None."""
    if _at(head, 0, b"XFSB"):
        return "xfs"
    if _at(head, 0, b"LUKS\xba\xbe"):
        return "luks"
    if _is_lvm2(head):
        return "lvm2"
    if _at(head, 3, b"NTFS    "):
        return "ntfs"
    if _is_fat(head):
        return "fat"
    if _at(head, 1024 + 56, b"\x53\xef"):
        return "ext"
    if _at(head, 0x10040, b"_BHRfS_M"):
        return "btrfs"
    if _is_swap(head):
        return "swap"
    return None
