"""What a conversion gives back: a :class:`ConvertResult` (typed dataclasses; ``as_dict`` is the
JSON of ``vhdtool convert --json``, its keys part of the interface: ``vhdtool manifest
--digests-from`` and pipelines read them) or a :class:`ConvertError`; and the digests asked for.

Digests cover every byte of the output file -- the virtual disk with its holes and padding, then
the 512-byte footer -- except ``bmap`` (``vhdtool.bmap``), whose cost follows the data.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: bmap: the default, in proportion to the data (vhdtool.bmap); sha256, md5: every byte of the file
DIGESTS = ("bmap", "sha256", "md5")
DEFAULT_DIGESTS = ("bmap",)


class ConvertError(Exception):
    """The conversion was refused or failed; the message names the file concerned."""


# -- digests ---------------------------------------------------------------------------------------
def digest_names(names: Iterable[str]) -> tuple[str, ...]:
    """The digests asked for, checked, each once; ``none`` alone means none."""
    out: list[str] = []
    for n in names:
        if n == "none":
            return ()
        if n not in DIGESTS:
            raise ConvertError(f"unknown digest {n!r}; known: {', '.join(DIGESTS)}, none")
        if n not in out:
            out.append(n)
    return tuple(out)


def whole_file(names: Sequence[str]) -> tuple[str, ...]:
    """The digests among ``names`` that hash every byte of the file (hashlib names)."""
    return tuple(n for n in names if n != "bmap")


@dataclass(frozen=True)
class DigestReport:
    """``digests`` of the result; the fields not computed are left out of the JSON."""

    bmap: Mapping[str, object] | None = None
    covers: str | None = None
    sha256: str | None = None
    md5: str | None = None
    #: the MD5 as Azure's page-blob Content-MD5 shows it
    md5_base64: str | None = None
    #: the whole-file digests in the order asked for (their order in the JSON and the summary)
    order: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    @classmethod
    def of(cls, hashes: Sequence[Any], file_size: int, bmap_summary: Mapping[str, object] | None
           = None) -> DigestReport:
        """From finished hashlib objects of the whole file and a bmap summary."""
        values: dict[str, Any] = {"bmap": bmap_summary, "order": tuple(h.name for h in hashes)}
        if hashes:
            values["covers"] = (f"every byte of the output file: {file_size} bytes = the virtual "
                                f"disk (holes and padding as zeros) followed by the 512-byte VHD "
                                f"footer; the same bytes Azure's page-blob Content-MD5 covers")
        for h in hashes:
            d = h.digest()
            values[h.name] = d.hex()
            if h.name == "md5":
                values["md5_base64"] = base64.b64encode(d).decode("ascii")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        keys = ["bmap", "covers"]
        for name in self.order:
            keys += [name, "md5_base64"] if name == "md5" else [name]
        return {k: values[k] for k in keys if values[k] is not None}


def digest_report(hashes: Sequence[Any], file_size: int, bmap_summary: Mapping[str, object]
                  | None = None) -> dict[str, Any]:
    """The ``digests`` JSON object (``vhdtool manifest`` computes its own so)."""
    return DigestReport.of(hashes, file_size, bmap_summary).as_dict()


# -- the facts -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceFacts:
    path: str
    format: str
    subformat: str | None
    virtual_size: int

    @classmethod
    def of(cls, img: Any) -> SourceFacts:
        return cls(img.path, img.format_name, img.subformat, img.virtual_size)


@dataclass(frozen=True)
class OutputFacts:
    path: str
    format: str
    subformat: str
    virtual_size: int
    file_size: int
    #: bytes added to reach a whole MiB
    rounded_by: int
    allocated: int
    data_written: int
    zero_bytes_skipped_in_data: int
    #: the data was on the disk (fsync) before the file got its name
    flushed: bool

    @classmethod
    def of_file(cls, path: str, size: int, source_size: int, written: int, zero_skipped: int,
                flushed: bool) -> OutputFacts:
        st = os.stat(path)
        return cls(path, "vpc", "fixed", size, st.st_size, size - source_size,
                   st.st_blocks * 512, written, zero_skipped, flushed)


@dataclass(frozen=True)
class CopyTimings:
    """Seconds: planning, the copy, waiting for the digests, the bmap, the whole command."""

    plan: float
    copy: float
    hash_wait: float
    bmap: float
    total: float


@dataclass(frozen=True)
class InPlaceTimings:
    write: float
    hash: float
    total: float


@dataclass(frozen=True)
class ConvertResult:
    """One conversion; the fields in the order of the JSON."""

    source: SourceFacts
    output: OutputFacts
    digests: DigestReport
    gpt_backup_relocated: bool
    #: converted by --in-place (no copy)
    in_place: bool
    #: converted despite structure errors (--salvage); the warnings name them
    salvaged: bool
    warnings: list[str]
    timings: CopyTimings | InPlaceTimings

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["digests"] = self.digests.as_dict()
        return out
