"""Authenticode signatures of PE/EFI images: the image digest, the signer, the Microsoft UEFI CA.

Trusted Launch VMs boot with Secure Boot and Microsoft's UEFI keys: the first-stage loader
(``\\EFI\\BOOT\\BOOTX64.EFI``, normally shim) must carry an Authenticode signature the firmware
accepts. :func:`verify` checks what the firmware checks, for each ``WIN_CERTIFICATE`` of the PE
security directory (data directory 4: file offset and size; entries u32 length, u16 revision, u16
type, 2 = PKCS#7 SignedData, 8-byte aligned):

1. the Authenticode digest of the image (:func:`image_digest`: the file hashed without the
   checksum field, the security directory entry and the certificate table; headers, then the
   sections in file order, then the data after them) equals the digest in the signature's
   SpcIndirectDataContent;
2. the signed attribute messageDigest equals the hash of that SpcIndirectDataContent, and the
   signer's signature over the signed attributes verifies with the signer certificate's key;
3. the signer certificate chains, through the certificates of the SignedData, to the
   "Microsoft Corporation UEFI CA 2011" or the "Microsoft UEFI CA 2023", each pinned by the
   SHA-256 of its certificate (the CA certificate must travel in the signature, as it does in
   Microsoft's; names alone prove nothing).

The DER of the SignedData is read by :mod:`checks.cms`; certificates and signatures by the
``cryptography`` package (Debian: python3-cryptography). Not checked: time validity (UEFI firmware
ignores it), dbx revocations, SBAT.

Pins: 2011: 48e99b99..., the CA certificate of OVMF's Microsoft db (Debian ovmf 2022.11,
``OVMF_VARS_4M.ms.fd``), which shim also embeds; 2023: f6124e34... (SHA-1 b5eeb4a6...), the
certificate Microsoft publishes at https://go.microsoft.com/fwlink/?linkid=2239872, as listed by
Secure Boot tooling; both equal the CA certificates in Debian's shim-signed 1.51~1+deb12u1.

References:
  - Microsoft PE Format specification ("The Attribute Certificate Table", "Optional Header Data
    Directories"); Windows Authenticode Portable Executable Signature Format ("Calculating the
    PE Image Hash", SpcIndirectDataContent).
  - RFC 5652 (CMS SignedData, SignerInfo, signed attributes); UEFI 2.10 section 32.5.
  - cryptography docs: ``pkcs7.load_der_pkcs7_certificates``, ``x509.Certificate``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from .cms import CMSError, SignedData, parse_signed_data

CA_2011 = "Microsoft Corporation UEFI CA 2011"
CA_2023 = "Microsoft UEFI CA 2023"
#: SHA-256 of the certificate DER -> CA name
TRUSTED_CAS = {
    "48e99b991f57fc52f76149599bff0a58c47154229b9f8d603ac40d3500248507": CA_2011,
    "f6124e34125bee3fe6d79a574eaa7b91c0e7bd9d929c1a321178efd611dad901": CA_2023,
}
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 2
MAX_CERTS = 64
MAX_CHAIN = 4


class PEError(ValueError):
    """Not a PE image, or a malformed header or security directory (message names the offset)."""


@dataclass(frozen=True)
class Signature:
    offset: int          #: file offset of the WIN_CERTIFICATE
    pkcs7: bytes


@dataclass(frozen=True)
class _Layout:
    checksum: int        #: file offset of the CheckSum field
    secdir: int          #: file offset of the security directory entry
    headers: int         #: SizeOfHeaders
    sections: tuple[tuple[int, int], ...]   #: (PointerToRawData, SizeOfRawData), file order
    cert_off: int        #: certificate table offset (0 when unsigned)
    cert_size: int


def _layout(data: bytes) -> _Layout:
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise PEError("no MZ header at offset 0")
    (pe,) = struct.unpack_from("<I", data, 0x3C)
    if pe + 24 + 2 > len(data) or data[pe:pe + 4] != b"PE\0\0":
        raise PEError(f"no PE signature at offset {pe:#x}")
    nsect, = struct.unpack_from("<H", data, pe + 6)
    opt_size, = struct.unpack_from("<H", data, pe + 20)
    opt = pe + 24
    (magic,) = struct.unpack_from("<H", data, opt)
    if magic not in (0x10B, 0x20B):
        raise PEError(f"unknown optional header magic {magic:#x} at offset {opt:#x}")
    count_at = opt + (108 if magic == 0x20B else 92)
    dirs = count_at + 4
    if dirs + 5 * 8 > len(data):
        raise PEError(f"optional header truncated at offset {dirs:#x}")
    (headers,) = struct.unpack_from("<I", data, opt + 60)
    (count,) = struct.unpack_from("<I", data, count_at)
    off, size = struct.unpack_from("<II", data, dirs + 4 * 8) if count >= 5 else (0, 0)
    if off and size and off + size > len(data):
        raise PEError(f"security directory {off:#x}+{size:#x} beyond the file ({len(data):#x})")
    table = opt + opt_size
    if table + 40 * nsect > len(data):
        raise PEError(f"section table at {table:#x} ({nsect} sections) beyond the file")
    sections = []
    for i in range(nsect):
        raw_size, raw_ptr = struct.unpack_from("<II", data, table + 40 * i + 16)
        if raw_size == 0:
            continue
        if raw_ptr + raw_size > len(data):
            raise PEError(f"section {i} data {raw_ptr:#x}+{raw_size:#x} beyond the file "
                          f"({len(data):#x})")
        sections.append((raw_ptr, raw_size))
    return _Layout(opt + 64, dirs + 4 * 8, headers, tuple(sorted(sections)),
                   off if size else 0, size if off else 0)


def signatures(data: bytes) -> list[Signature]:
    """The PKCS#7 SignedData blobs of the PE's security directory (empty when unsigned)."""
    lay = _layout(data)
    out = []
    pos, end = lay.cert_off, lay.cert_off + lay.cert_size
    while lay.cert_off and pos + 8 <= end and len(out) < MAX_CERTS:
        length, _rev, ctype = struct.unpack_from("<IHH", data, pos)
        if length < 8 or pos + length > end:
            raise PEError(f"WIN_CERTIFICATE at {pos:#x}: length {length} out of range")
        if ctype == WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            out.append(Signature(pos, data[pos + 8:pos + length]))
        pos += (length + 7) & ~7
    return out


def image_digest(data: bytes, algorithm: str = "sha256") -> bytes:
    """The Authenticode digest of the PE image ``data`` (hashlib ``algorithm``)."""
    lay = _layout(data)
    if lay.headers < lay.secdir + 8 or lay.headers > len(data):
        raise PEError(f"SizeOfHeaders {lay.headers:#x} does not cover the optional header "
                      f"(security directory entry at {lay.secdir:#x}) or exceeds the file")
    h = hashlib.new(algorithm)
    h.update(data[:lay.checksum])
    h.update(data[lay.checksum + 4:lay.secdir])
    h.update(data[lay.secdir + 8:lay.headers])
    done = lay.headers
    for ptr, size in lay.sections:
        h.update(data[ptr:ptr + size])
        done += size
    end = lay.cert_off or len(data)
    if lay.cert_off and lay.cert_off + lay.cert_size != len(data):
        raise PEError(f"{len(data) - lay.cert_off - lay.cert_size} bytes after the certificate "
                      f"table ({lay.cert_off:#x}+{lay.cert_size:#x}) are outside the signature")
    if done > end:
        raise PEError(f"headers and sections ({done:#x} bytes) overlap the certificate table "
                      f"at {end:#x}")
    h.update(data[done:end])
    return h.digest()


def _cn(cert: object) -> str:
    from cryptography.x509.oid import NameOID
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)  # type: ignore[attr-defined]
    return str(attrs[0].value) if attrs else cert.subject.rfc4514_string()  # type: ignore


def _verifies(cert: object, signature: bytes, data: bytes, hash_alg: object = None) -> bool:
    """Whether ``cert``'s key made ``signature`` over ``data`` (False on any unusable input)."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    try:
        key = cert.public_key()  # type: ignore[attr-defined]
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hash_alg)  # type: ignore[arg-type]
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hash_alg))  # type: ignore[arg-type]
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, TypeError, ValueError):
        return False
    return True


def _signed(cert: object, issuer: object) -> bool:
    """Whether ``issuer``'s key signed the certificate ``cert``."""
    from cryptography.exceptions import UnsupportedAlgorithm
    try:
        alg = cert.signature_hash_algorithm  # type: ignore[attr-defined]
    except UnsupportedAlgorithm:
        return False
    return _verifies(issuer, cert.signature, cert.tbs_certificate_bytes, alg)  # type: ignore


def _chain(signer: object, certs: list) -> tuple[str | None, str]:
    """(trusted CA name or None, explanation): walk issuers among ``certs`` to a pinned CA."""
    from cryptography.hazmat.primitives import hashes
    cur, path = signer, [_cn(signer)]
    for _ in range(MAX_CHAIN):
        ca = TRUSTED_CAS.get(cur.fingerprint(hashes.SHA256()).hex())  # type: ignore[attr-defined]
        if ca:
            return ca, " <- ".join(path) + " (pinned certificate)"
        issuers = [c for c in certs if c.subject == cur.issuer and c is not cur]  # type: ignore
        up = next((c for c in issuers if _signed(cur, c)), None)
        if up is None:
            named = cur.issuer.rfc4514_string()  # type: ignore[attr-defined]
            why = "no certificate in the signature whose key signed it" if issuers else \
                "its issuer's certificate is not in the signature"
            return None, (f"{' <- '.join(path)}: issued by {named!r}, but {why}; no pinned "
                          "Microsoft UEFI CA reached")
        cur = up
        path.append(_cn(up))
    return None, f"{' <- '.join(path)}: chain longer than {MAX_CHAIN} without a pinned CA"


def verify(data: bytes, sig: Signature) -> tuple[str | None, str]:
    """(accepted CA name or None, explanation) for one signature of the PE image ``data``.

    Raises :class:`PEError` when the image itself is malformed.
    """
    try:
        sd: SignedData = parse_signed_data(sig.pkcs7)
    except CMSError as e:
        return None, f"PKCS#7 SignedData cannot be parsed ({e})"
    digest = image_digest(data, sd.image_hash)
    if digest != sd.image_digest:
        return None, (f"Authenticode digest mismatch: the signature covers {sd.image_hash} "
                      f"{sd.image_digest.hex()}, the image hashes to {digest.hex()}")
    if hashlib.new(sd.attr_hash, sd.indirect_data).digest() != sd.message_digest:
        return None, "signed attribute messageDigest does not match the SpcIndirectDataContent"
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import pkcs7
    try:
        certs = pkcs7.load_der_pkcs7_certificates(sig.pkcs7)
    except ValueError as e:
        return None, f"certificates of the SignedData cannot be loaded ({e})"
    signer = next((c for c in certs if sd.signer_matches(c)), None)
    if signer is None:
        return None, "the signer's certificate is not in the signature"
    hash_alg = getattr(hashes, sd.attr_hash.upper())()
    if not _verifies(signer, sd.signature, sd.signed_attrs, hash_alg):
        return None, (f"the signature of {_cn(signer)!r} over the signed attributes does "
                      "not verify")
    return _chain(signer, certs)


__all__ = ["CA_2011", "CA_2023", "PEError", "Signature", "TRUSTED_CAS", "image_digest",
           "signatures", "verify"]
