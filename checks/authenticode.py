"""Authenticode signatures of PE/EFI images, and whether they chain to the Microsoft UEFI CA.

Trusted Launch VMs boot with Secure Boot and Microsoft's UEFI keys: the first-stage loader
(``\\EFI\\BOOT\\BOOTX64.EFI``, normally shim) must be signed by the "Microsoft Corporation UEFI CA
2011" or the "Microsoft UEFI CA 2023". This module reads the PE security directory (data directory
4: a file offset and size) holding ``WIN_CERTIFICATE`` entries (u32 length, u16 revision, u16 type;
type 2 = PKCS#7 SignedData; entries 8-byte aligned), loads the certificates of each SignedData with
the ``cryptography`` package (Debian: python3-cryptography), and looks for a certificate issued by
one of those CAs.

Trust: the 2011 CA is pinned by the SHA-256 of its SubjectPublicKeyInfo, taken from the
Microsoft db of OVMF's ``OVMF_VARS_4M.ms.fd`` (Debian ovmf 2022.11) and equal to the CA
certificate shim embeds; the signer certificate's signature is verified with that key. The 2023
CA is recognised by name only (no local copy of its certificate to pin). Not done: the Authenticode
digest of the image and the SignerInfo signature are not recomputed (a tampered but still
signed-looking file passes this check; the firmware would refuse it).

References:
  - Microsoft PE Format specification ("The Attribute Certificate Table", "Optional Header Data
    Directories"); Windows Authenticode Portable Executable Signature Format.
  - RFC 5652 (CMS SignedData); UEFI 2.10 section 32.5 (image verification, db).
  - cryptography docs: ``pkcs7.load_der_pkcs7_certificates``, ``x509.Certificate``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

CA_2011 = "Microsoft Corporation UEFI CA 2011"
CA_2023 = "Microsoft UEFI CA 2023"
#: SHA-256 of the SubjectPublicKeyInfo DER of "Microsoft Corporation UEFI CA 2011"
CA_2011_SPKI_SHA256 = "2c627ccbb690409550ad6e2d46a03eb10aa6d62d272a5dc3c86a8863ae19b2bb"
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 2
MAX_CERTS = 64


class PEError(ValueError):
    """Not a PE image, or a malformed security directory (message names the offset)."""


@dataclass(frozen=True)
class Signature:
    offset: int          #: file offset of the WIN_CERTIFICATE
    pkcs7: bytes


def signatures(data: bytes) -> list[Signature]:
    """The PKCS#7 SignedData blobs of the PE's security directory (empty when unsigned)."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise PEError("no MZ header at offset 0")
    (pe,) = struct.unpack_from("<I", data, 0x3C)
    if pe + 24 + 2 > len(data) or data[pe:pe + 4] != b"PE\0\0":
        raise PEError(f"no PE signature at offset {pe:#x}")
    opt = pe + 24
    (magic,) = struct.unpack_from("<H", data, opt)
    if magic not in (0x10B, 0x20B):
        raise PEError(f"unknown optional header magic {magic:#x} at offset {opt:#x}")
    count_at = opt + (108 if magic == 0x20B else 92)
    dirs = count_at + 4
    if dirs + 5 * 8 > len(data):
        raise PEError(f"optional header truncated at offset {dirs:#x}")
    (count,) = struct.unpack_from("<I", data, count_at)
    if count < 5:
        return []
    off, size = struct.unpack_from("<II", data, dirs + 4 * 8)
    if off == 0 or size == 0:
        return []
    if off + size > len(data):
        raise PEError(f"security directory {off:#x}+{size:#x} beyond the file ({len(data):#x})")
    out = []
    pos, end = off, off + size
    while pos + 8 <= end and len(out) < MAX_CERTS:
        length, _rev, ctype = struct.unpack_from("<IHH", data, pos)
        if length < 8 or pos + length > end:
            raise PEError(f"WIN_CERTIFICATE at {pos:#x}: length {length} out of range")
        if ctype == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            out.append(Signature(pos, data[pos + 8:pos + length]))
        pos += (length + 7) & ~7
    return out


def _cn(name: object) -> str:
    from cryptography.x509.oid import NameOID
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)  # type: ignore[attr-defined]
    return str(attrs[0].value) if attrs else ""


def _spki_sha256(cert: object) -> str:
    from cryptography.hazmat.primitives import serialization
    der = cert.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _signed_by(cert: object, ca: object) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import padding
    try:
        ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes,  # type: ignore
                               padding.PKCS1v15(), cert.signature_hash_algorithm)  # type: ignore
    except (InvalidSignature, TypeError, ValueError):
        return False
    return True


def microsoft_uefi_ca(pkcs7_der: bytes) -> tuple[str | None, str]:
    """(accepted CA name or None, explanation) for one SignedData."""
    from cryptography.hazmat.primitives.serialization import pkcs7
    try:
        certs = pkcs7.load_der_pkcs7_certificates(pkcs7_der)
    except ValueError as e:
        return None, f"PKCS#7 SignedData cannot be parsed ({e})"
    signers = ", ".join(_cn(c.subject) for c in certs) or "no certificates"
    for cert in certs:
        issuer = _cn(cert.issuer)
        if issuer == CA_2023:
            return CA_2023, f"{_cn(cert.subject)} issued by {CA_2023} (by name)"
        if issuer != CA_2011:
            continue
        cas = [c for c in certs if _spki_sha256(c) == CA_2011_SPKI_SHA256]
        if cas and _signed_by(cert, cas[0]):
            return CA_2011, f"{_cn(cert.subject)} issued by {CA_2011} (key verified)"
        return None, (f"{_cn(cert.subject)} names {CA_2011} as issuer but is not signed by its "
                      "key")
    return None, f"certificates: {signers}; none issued by a Microsoft UEFI CA"


__all__ = ["signatures", "microsoft_uefi_ca", "Signature", "PEError", "CA_2011", "CA_2023"]
