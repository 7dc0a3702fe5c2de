"""Authenticode test material: Debian's real signed shim, and a signer for PE images.

``data/shimx64.efi.signed.xz`` is ``/usr/lib/shim/shimx64.efi.signed`` of Debian's ``shim-signed``
1.51~1+deb12u1+16.1-2~deb12u1 (amd64; .deb sha256 c2acf5e5...b8cc0369df513b3b), xz-compressed:
shim 16.1 signed by Microsoft twice, "Microsoft Windows UEFI Driver Publisher" under the UEFI CA
2011 and "Microsoft UEFI CA 2023 signer" under the UEFI CA 2023, each CA certificate included.
Public data (shim is BSD-licensed). Its .text section starts at file offset 0x21000.

:func:`sign_pe` signs a PE the way signtool/sbsign do (SpcIndirectDataContent with the image's
Authenticode digest, contentType and messageDigest signed attributes), with a self-made key and
certificate: the verifier's digest and signer checks pass on it, and only the chain can fail.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import lzma
import struct
from pathlib import Path

from vhdtool.checks.authenticode import image_digest

SHIM_SHA256 = "0fc347af103ec1dfac6e3f184c0a5241a2ce756a0932b359c404d39c45423806"
SHIM_TEXT = 0x21000          #: file offset of the shim's .text section


@functools.lru_cache(maxsize=None)
def debian_shim() -> bytes:
    data = lzma.decompress((Path(__file__).parent / "data/shimx64.efi.signed.xz").read_bytes())
    assert hashlib.sha256(data).hexdigest() == SHIM_SHA256
    return data


def tampered_shim() -> bytes:
    """Debian's shim with one byte of its code changed (the signature left as it was)."""
    data = bytearray(debian_shim())
    data[SHIM_TEXT + 0x100] ^= 0x01
    return bytes(data)


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    size = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + \
        n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + size + body


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


def _seq(*parts: bytes) -> bytes:
    return _der(0x30, b"".join(parts))


SHA256 = _seq(_oid("2.16.840.1.101.3.4.2.1"), b"\x05\x00")
SPC_INDIRECT = "1.3.6.1.4.1.311.2.1.4"
#: SpcAttributeTypeAndOptionalValue of a PE image (SpcPeImageData, as Debian's shim carries it)
SPC_PE_IMAGE = bytes.fromhex("3017060a2b0601040182370201 0f3009030100a004a2028000".replace(" ", ""))


def self_made_cert(issuer: str, subject: str = "Test Secure Boot Signer") -> tuple:
    """An EC key and a certificate for it naming ``issuer`` (self-signed with that same key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime(2024, 1, 1)
    cert = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
            .public_key(key.public_key()).serial_number(7).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
    return key, cert


def sign_pe(image: bytes, issuer: str = "Test UEFI CA") -> bytes:
    """``image`` (unsigned, 8-byte aligned) with an Authenticode signature by a self-made key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key, cert = _cached_key(issuer)
    spc = SPC_PE_IMAGE + _seq(SHA256, _der(0x04, image_digest(image)))
    attrs = sorted([_seq(_oid("1.2.840.113549.1.9.3"), _der(0x31, _oid(SPC_INDIRECT))),
                    _seq(_oid("1.2.840.113549.1.9.4"),
                         _der(0x31, _der(0x04, hashlib.sha256(spc).digest())))])
    signature = key.sign(_der(0x31, b"".join(attrs)), ec.ECDSA(hashes.SHA256()))
    issuer_and_serial = _seq(cert.issuer.public_bytes(), _der(0x02, b"\x07"))
    signer = _seq(_der(0x02, b"\x01"), issuer_and_serial, SHA256, _der(0xA0, b"".join(attrs)),
                  _seq(_oid("1.2.840.10045.4.3.2")), _der(0x04, signature))
    signed_data = _seq(_der(0x02, b"\x01"), _der(0x31, SHA256),
                       _seq(_oid(SPC_INDIRECT), _der(0xA0, _der(0x30, spc))),
                       _der(0xA0, cert.public_bytes(serialization.Encoding.DER)),
                       _der(0x31, signer))
    pkcs7 = _seq(_oid("1.2.840.113549.1.7.2"), _der(0xA0, signed_data))
    return attach(image, pkcs7)


@functools.lru_cache(maxsize=None)
def _cached_key(issuer: str) -> tuple:
    return self_made_cert(issuer)


def attach(image: bytes, pkcs7: bytes, lfanew: int = 0x40) -> bytes:
    """``image`` with a security directory holding one WIN_CERTIFICATE of ``pkcs7``."""
    cert = struct.pack("<IHH", 8 + len(pkcs7), 0x200, 2) + pkcs7
    cert += b"\0" * (-len(cert) % 8)
    out = bytearray(image + cert)
    struct.pack_into("<II", out, lfanew + 24 + 112 + 4 * 8, len(image), len(cert))
    return bytes(out)


__all__ = ["SHIM_TEXT", "attach", "debian_shim", "sign_pe", "tampered_shim", "self_made_cert"]
