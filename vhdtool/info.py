"""``vhdtool info``: everything the format core knows about an image, as data and as text."""

from __future__ import annotations

from typing import Any

from vhdtool.formats import DiskImage, Kind
from vhdtool.formats.partitions import read_partition_table

INFO_SCHEMA_VERSION = 1


def describe(img: DiskImage) -> dict[str, Any]:
    counts = {k.value: 0 for k in Kind}
    for ext in img.extents():
        counts[ext.kind.value] += ext.length
    chain = []
    layer = img.backing
    while layer is not None:
        chain.append({"path": layer.path, "format": layer.format_name,
                      "subformat": layer.subformat, "virtual_size": layer.virtual_size})
        layer = layer.backing
    table = read_partition_table(img.read, img.virtual_size, img.logical_sector_size, img.path)
    return {
        "schema_version": INFO_SCHEMA_VERSION,
        "path": img.path,
        "format": img.format_name,
        "subformat": img.subformat,
        "virtual_size": img.virtual_size,
        "file_size": img.file_size,
        "logical_sector_size": img.logical_sector_size,
        "allocation": {"data_bytes": counts["data"], "zero_bytes": counts["zero"],
                       "unallocated_bytes": counts["unallocated"]},
        "details": img.info(),
        "backing_chain": chain,
        "partitions": table.as_dict(),
        "problems": [p.as_dict() for p in img.all_problems() + table.problems],
    }


def _size(n: int) -> str:
    for unit, div in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n:,} bytes ({n / div:.2f} {unit})"
    return f"{n:,} bytes"


def render_info(f: dict[str, Any]) -> str:
    lines = [
        f"image:          {f['path']}",
        f"format:         {f['format']}" + (f" ({f['subformat']})" if f["subformat"] else ""),
        f"virtual size:   {_size(f['virtual_size'])}",
        f"file size:      {_size(f['file_size'])}",
        f"data:           {_size(f['allocation']['data_bytes'])}",
    ]
    if f["logical_sector_size"] != 512:
        lines.append(f"logical sector: {f['logical_sector_size']}")
    for key, value in f["details"].items():
        if isinstance(value, (dict, list)):
            continue
        lines.append(f"{key.replace('_', ' ') + ':':<15} {value}")
    for layer in f["backing_chain"]:
        lines.append(f"backing file:   {layer['path']} ({layer['format']})")
    lines += _render_partitions(f["partitions"])
    if f["problems"]:
        lines.append("problems:")
        for p in f["problems"]:
            where = f" @ {p['offset']:#x}" if p["offset"] is not None else ""
            lines.append(f"  {p['severity']}: {p['structure']}{where}: {p['message']}")
    else:
        lines.append("problems:       none found")
    return "\n".join(lines)


def _render_partitions(t: dict[str, Any]) -> list[str]:
    lines = [f"partitions:     {t['scheme']}"
             + (f", {len(t['partitions'])} partition(s)" if t["partitions"] else "")]
    if t["partitions"]:
        lines.append(f"  {'#':>3}  {'start':>14}  {'size':>14}  {'type':<28}  {'aligned':<7}  name")
    for p in t["partitions"]:
        aligned = "yes" if p["aligned_1mib"] else "no"
        lines.append(f"  {p['index']:>3}  {p['start']:>14}  {p['size']:>14}  "
                     f"{p['type_name'][:28]:<28}  {aligned:<7}  {p['name']}".rstrip())
    return lines
