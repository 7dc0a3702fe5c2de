"""What ``blkid`` says about a volume (TYPE, UUID, LABEL), from its first bytes: pure functions.

vhdtool's one filesystem prober, in libblkid's vocabulary: the disk model probes every partition
with it once (:mod:`vhdtool.disk`; the disk facts map its TYPE to their coarser names), the native
engine every logical volume.  The libguestfs engine asks the appliance's ``blkid``; the native
engine must report the same values for the checks to see the same facts, so this module
follows util-linux libblkid's probers for the types a Linux OS disk holds: ext2/3/4, XFS, btrfs,
vfat, swap, LVM2 physical volumes, LUKS, NTFS. ``probe(read)`` reads at most
:data:`PROBE_BYTES` (plus the FAT root directory, bounded) through ``read(offset, length)``.

References (util-linux 2.38, ``libblkid/src/superblocks/``):
  - ``ext.c``: s_magic 0xEF53 at 1024+56; s_uuid at +104, s_volume_name at +120; ext4 when an
    incompat/ro_compat feature outside ext3's set is on, ext3 with a journal (compat 0x4), else
    ext2;
    a journal device (incompat 0x8) is ``jbd``.
  - ``xfs.c``: "XFSB"; sb_uuid at 32, sb_fname[12] at 108.
  - ``btrfs.c``: "_BHRfS_M" at 64 KiB + 0x40; fsid at +0x20, label[256] at +0x12b.
  - ``vfat.c``: the root directory's volume-label entry wins over the boot sector's BS_VolLab;
    "NO NAME" is no label; UUID = BS_VolID as ``%02X%02X-%02X%02X`` (bytes 3,2,1,0); FAT32 fields
    at 64+3, FAT12/16 at 36+3.
  - ``swap.c``: "SWAPSPACE2" at page end; uuid at 1024+12, label at 1024+28.
  - ``lvm.c``: "LABELONE" in sectors 0-3, "LVM2 001" at +24; pv_uuid (32 chars) at the label's
    offset_xl, shown 6-4-4-4-4-4-6 with dashes.
  - ``luks.c`` (uuid at 168, 40 chars), ``ntfs.c`` (volume serial at 0x48, ``%016X``).
  - Values are right-trimmed of spaces and NULs (``blkid_probe_set_label``).
"""

from __future__ import annotations

import struct
import uuid as uuidmod
from collections.abc import Callable
from dataclasses import dataclass

Read = Callable[[int, int], bytes]

#: btrfs's superblock is the farthest: 64 KiB + 4 KiB
PROBE_BYTES = 64 * 1024 + 4096
#: bound on the FAT root directory scanned for a label (entries)
MAX_FAT_ROOT_ENTRIES = 65536

_EXT3_INCOMPAT = 0x0002 | 0x0004 | 0x0010      # FILETYPE | RECOVER | META_BG
_EXT3_RO_COMPAT = 0x0001 | 0x0002 | 0x0004     # SPARSE_SUPER | LARGE_FILE | BTREE_DIR


@dataclass(frozen=True)
class Probe:
    type: str
    uuid: str | None = None
    label: str | None = None


def _text(raw: bytes, encoding: str = "utf-8") -> str | None:
    s = raw.split(b"\0", 1)[0].decode(encoding, "replace").rstrip(" ")
    return s or None


def _uuid(raw: bytes) -> str | None:
    return None if not raw.strip(b"\0") else str(uuidmod.UUID(bytes=bytes(raw)))


def _at(head: bytes, offset: int, magic: bytes) -> bool:
    return head[offset:offset + len(magic)] == magic


def _ext(head: bytes) -> Probe:
    sb = head[1024:2048]
    compat, incompat, ro = struct.unpack_from("<III", sb, 92)
    if incompat & 0x0008:
        kind = "jbd"
    elif incompat & ~_EXT3_INCOMPAT & 0xFFFFFFFF or ro & ~_EXT3_RO_COMPAT & 0xFFFFFFFF:
        kind = "ext4"
    elif compat & 0x0004:
        kind = "ext3"
    else:
        kind = "ext2"
    return Probe(kind, _uuid(sb[104:120]), _text(sb[120:136]))


def _lvm(head: bytes) -> Probe | None:
    for sector in range(4):
        base = sector * 512
        if _at(head, base, b"LABELONE") and _at(head, base + 24, b"LVM2 001"):
            (offset_xl,) = struct.unpack_from("<I", head, base + 20)
            at = base + offset_xl
            raw = head[at:at + 32].decode("ascii", "replace") if offset_xl < 512 - 32 else ""
            if len(raw) != 32:
                return Probe("LVM2_member")
            parts = [raw[0:6], raw[6:10], raw[10:14], raw[14:18], raw[18:22], raw[22:26],
                     raw[26:32]]
            return Probe("LVM2_member", "-".join(parts))
    return None


def _swap(head: bytes) -> Probe | None:
    for page in (4096, 8192, 16384, 65536):
        magic = head[page - 10:page]
        if magic == b"SWAPSPACE2":
            return Probe("swap", _uuid(head[1036:1052]), _text(head[1052:1068]))
        if magic == b"SWAP-SPACE":
            return Probe("swap")
    return None


def _is_fat(head: bytes) -> bool:
    if not _at(head, 510, b"\x55\xaa"):
        return False
    return _at(head, 54, b"FAT1") or _at(head, 82, b"FAT32") or _at(head, 54, b"FAT  ") or \
        _at(head, 54, b"MSDOS")


def _fat(head: bytes, read: Read, size: int) -> Probe:
    bps, spc, reserved, nfats, root_entries, _tot16, _media, fatsz16 = struct.unpack_from(
        "<HBHBHHBH", head, 11)
    fat32 = fatsz16 == 0
    ext = 64 if fat32 else 36
    vol_id = head[ext + 3:ext + 7]
    boot_label = head[ext + 7:ext + 18]
    uuid = f"{vol_id[3]:02X}{vol_id[2]:02X}-{vol_id[1]:02X}{vol_id[0]:02X}"
    label = _fat_root_label(head, read, size, bps, spc, reserved, nfats, root_entries, fatsz16,
                            fat32)
    if label is None and boot_label != b"NO NAME    ":
        label = boot_label
    if label == b"NO NAME    ":
        label = None
    return Probe("vfat", uuid, _text(label, "cp437") if label else None)


def _fat_root_label(head: bytes, read: Read, size: int, bps: int, spc: int, reserved: int,
                    nfats: int, root_entries: int, fatsz16: int, fat32: bool) -> bytes | None:
    """The volume-label entry of the root directory (FAT32: following its cluster chain)."""
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or nfats == 0:
        return None
    fatsz = struct.unpack_from("<I", head, 36)[0] if fat32 else fatsz16
    first_data = reserved + nfats * fatsz + (root_entries * 32 + bps - 1) // bps
    cluster_bytes = bps * spc
    if fat32:
        cluster = struct.unpack_from("<I", head, 44)[0]
        runs = []
        seen = 0
        fat_off = reserved * bps
        while 2 <= cluster < 0x0FFFFFF7 and seen * cluster_bytes // 32 < MAX_FAT_ROOT_ENTRIES:
            runs.append((first_data * bps + (cluster - 2) * cluster_bytes, cluster_bytes))
            seen += 1
            nxt = read(fat_off + cluster * 4, 4) if fat_off + cluster * 4 + 4 <= size else b""
            if len(nxt) != 4:
                break
            cluster = struct.unpack("<I", nxt)[0] & 0x0FFFFFFF
    else:
        start = (reserved + nfats * fatsz) * bps
        runs = [(start, min(root_entries, MAX_FAT_ROOT_ENTRIES) * 32)]
    for off, length in runs:
        if off + length > size:
            return None
        data = read(off, length)
        for i in range(0, len(data) - 31, 32):
            ent = data[i:i + 32]
            if ent[0] == 0:
                return None
            if ent[0] == 0xE5:
                continue
            attr = ent[11]
            if attr & 0x0F == 0x0F:      # long-name entry
                continue
            if attr & 0x08 and not attr & 0x10:
                return ent[:11]
    return None


def probe(read: Read, size: int) -> Probe | None:
    """TYPE/UUID/LABEL of the volume of ``size`` bytes read through ``read``; None if unknown."""
    # zero-padded: a volume shorter than a superblock cannot make a prober read past its bytes
    head = read(0, min(PROBE_BYTES, size)).ljust(PROBE_BYTES, b"\0")
    if _at(head, 0, b"XFSB"):
        return Probe("xfs", _uuid(head[32:48]), _text(head[108:120]))
    if _at(head, 0, b"LUKS\xba\xbe"):
        return Probe("crypto_LUKS", _text(head[168:208]))
    lvm = _lvm(head)
    if lvm:
        return lvm
    if _at(head, 3, b"NTFS    "):
        return Probe("ntfs", head[0x48:0x50][::-1].hex().upper())
    if _is_fat(head):
        return _fat(head, read, size)
    if _at(head, 1024 + 56, b"\x53\xef"):
        return _ext(head)
    if _at(head, 0x10040, b"_BHRfS_M"):
        sb = head[0x10000:]
        return Probe("btrfs", _uuid(sb[0x20:0x30]), _text(sb[0x12B:0x12B + 256]))
    return _swap(head)


__all__ = ["Probe", "probe", "PROBE_BYTES"]
