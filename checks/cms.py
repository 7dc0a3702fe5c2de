"""The parts of a DER PKCS#7/CMS SignedData an Authenticode verifier needs.

``cryptography`` loads the certificates of a SignedData but not its content or SignerInfo, so this
module reads them from the DER: the encapsulated SpcIndirectDataContent (the image digest and its
hash algorithm), and the one SignerInfo (signer identity, digest algorithm, signed attributes with
their messageDigest, the signature). Errors name the structure and the byte offset in the blob.

References:
  - RFC 5652 sections 5.1-5.4 (SignedData, SignerInfo; the signature covers the DER of the signed
    attributes with a SET OF tag); ITU-T X.690 (DER).
  - Windows Authenticode PE Signature Format: SpcIndirectDataContent, whose messageDigest covers
    the content octets of its SEQUENCE (without tag and length).
"""

from __future__ import annotations

from dataclasses import dataclass

OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
#: digest algorithm OID -> hashlib name
HASHES = {"1.3.14.3.2.26": "sha1", "2.16.840.1.101.3.4.2.1": "sha256",
          "2.16.840.1.101.3.4.2.2": "sha384", "2.16.840.1.101.3.4.2.3": "sha512"}
SEQ, SET, OCTETS, OID, INT = 0x30, 0x31, 0x04, 0x06, 0x02


class CMSError(ValueError):
    """Malformed or unsupported SignedData (message names the structure and offset)."""


@dataclass(frozen=True)
class _Node:
    tag: int
    start: int           #: offset of the tag
    body: int            #: offset of the content
    end: int             #: offset after the content


def _node(buf: bytes, pos: int, end: int, what: str) -> _Node:
    if pos + 2 > end:
        raise CMSError(f"{what}: truncated at offset {pos}")
    tag, first = buf[pos], buf[pos + 1]
    if tag & 0x1F == 0x1F or first == 0x80:
        raise CMSError(f"{what}: unsupported tag or indefinite length at offset {pos}")
    body, length = pos + 2, first
    if first > 0x80:
        n = first & 0x7F
        if n > 4 or body + n > end:
            raise CMSError(f"{what}: bad length at offset {pos}")
        length = int.from_bytes(buf[body:body + n], "big")
        body += n
    if body + length > end:
        raise CMSError(f"{what}: length {length} at offset {pos} runs past its container")
    return _Node(tag, pos, body, body + length)


def _children(buf: bytes, node: _Node, what: str) -> list[_Node]:
    out, pos = [], node.body
    while pos < node.end:
        child = _node(buf, pos, node.end, what)
        out.append(child)
        pos = child.end
    return out


def _kids(buf: bytes, node: _Node, what: str, least: int) -> list[_Node]:
    """The children of ``node``, at least ``least`` of them."""
    out = _children(buf, node, what)
    if len(out) < least:
        raise CMSError(f"{what} at offset {node.start}: {len(out)} fields, expected >= {least}")
    return out


def _expect(node: _Node, tag: int, what: str) -> _Node:
    if node.tag != tag:
        raise CMSError(f"{what}: tag {node.tag:#x} at offset {node.start}, expected {tag:#x}")
    return node


def _oid(buf: bytes, node: _Node, what: str) -> str:
    raw = buf[_expect(node, OID, what).body:node.end]
    if not raw:
        raise CMSError(f"{what}: empty object identifier at offset {node.start}")
    arcs, value = [min(raw[0] // 40, 2), raw[0] - 40 * min(raw[0] // 40, 2)], 0
    for b in raw[1:]:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(map(str, arcs))


def _hash(buf: bytes, alg: _Node, what: str) -> str:
    oid = _oid(buf, _kids(buf, _expect(alg, SEQ, what), what, 1)[0], what)
    if oid not in HASHES:
        raise CMSError(f"{what}: unsupported digest algorithm {oid}")
    return HASHES[oid]


@dataclass(frozen=True)
class SignedData:
    image_hash: str          #: hashlib name of the image digest algorithm
    image_digest: bytes      #: the digest SpcIndirectDataContent carries
    indirect_data: bytes     #: content octets of SpcIndirectDataContent (what messageDigest covers)
    attr_hash: str           #: the SignerInfo's digest algorithm
    message_digest: bytes    #: the signed attribute messageDigest
    signed_attrs: bytes      #: DER of the signed attributes as signed (SET OF tag)
    signature: bytes
    issuer: bytes            #: signer's issuer Name DER (IssuerAndSerialNumber), or b""
    serial: int
    key_id: bytes            #: signer's subjectKeyIdentifier, or b""

    def signer_matches(self, cert: object) -> bool:
        """Whether the ``cryptography`` certificate ``cert`` is the one this SignerInfo names."""
        from cryptography import x509
        if self.issuer:
            return (cert.issuer.public_bytes() == self.issuer  # type: ignore[attr-defined]
                    and cert.serial_number == self.serial)  # type: ignore[attr-defined]
        try:
            ski = cert.extensions.get_extension_for_class(  # type: ignore[attr-defined]
                x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            return False
        return bool(ski == self.key_id)


def parse_signed_data(der: bytes) -> SignedData:
    """The Authenticode parts of the DER ContentInfo ``der`` (one SignerInfo, signed attrs)."""
    top = _expect(_node(der, 0, len(der), "ContentInfo"), SEQ, "ContentInfo")
    kids = _children(der, top, "ContentInfo")
    if len(kids) < 2 or _oid(der, kids[0], "ContentInfo") != OID_SIGNED_DATA:
        raise CMSError("ContentInfo: not a SignedData")
    sd = _expect(_kids(der, kids[1], "SignedData", 1)[0], SEQ, "SignedData")
    parts = _kids(der, sd, "SignedData", 4)
    encap = _children(der, _expect(parts[2], SEQ, "encapContentInfo"), "encapContentInfo")
    if len(encap) < 2 or _oid(der, encap[0], "encapContentInfo") != OID_SPC_INDIRECT_DATA:
        raise CMSError("encapContentInfo: content is not SpcIndirectDataContent")
    spc = _expect(_kids(der, encap[1], "content", 1)[0], SEQ, "SpcIndirectDataContent")
    spc_kids = _kids(der, spc, "SpcIndirectDataContent", 2)
    dinfo = _kids(der, _expect(spc_kids[1], SEQ, "DigestInfo"), "DigestInfo", 2)
    digest = _expect(dinfo[-1], OCTETS, "DigestInfo digest")
    infos = _children(der, _expect(parts[-1], SET, "signerInfos"), "signerInfos")
    if len(infos) != 1:
        raise CMSError(f"signerInfos at offset {parts[-1].start}: {len(infos)} signers, "
                       "Authenticode needs exactly 1")
    si = _children(der, _expect(infos[0], SEQ, "SignerInfo"), "SignerInfo")
    if len(si) < 6 or si[3].tag != 0xA0:
        raise CMSError(f"SignerInfo at offset {infos[0].start}: no signed attributes")
    issuer, serial, key_id = b"", 0, b""
    if si[1].tag == SEQ:
        name, num = _kids(der, si[1], "IssuerAndSerialNumber", 2)[:2]
        issuer = der[name.start:name.end]
        serial = int.from_bytes(der[_expect(num, INT, "serialNumber").body:num.end], "big",
                                signed=True)
    else:
        key_id = der[si[1].body:si[1].end]
    message_digest = None
    for attr in _children(der, si[3], "signedAttrs"):
        oid, values = _kids(der, _expect(attr, SEQ, "Attribute"), "Attribute", 2)[:2]
        if _oid(der, oid, "Attribute") == OID_MESSAGE_DIGEST:
            value = _expect(_kids(der, values, "messageDigest", 1)[0], OCTETS, "messageDigest")
            message_digest = der[value.body:value.end]
    if message_digest is None:
        raise CMSError(f"signed attributes at offset {si[3].start}: no messageDigest")
    sig = _expect(si[5], OCTETS, "SignerInfo signature")
    return SignedData(
        image_hash=_hash(der, dinfo[0], "DigestInfo digestAlgorithm"),
        image_digest=der[digest.body:digest.end], indirect_data=der[spc.body:spc.end],
        attr_hash=_hash(der, si[2], "SignerInfo digestAlgorithm"), message_digest=message_digest,
        signed_attrs=bytes([SET]) + der[si[3].start + 1:si[3].end],
        signature=der[sig.body:sig.end], issuer=issuer, serial=serial, key_id=key_id)


__all__ = ["CMSError", "SignedData", "parse_signed_data"]
