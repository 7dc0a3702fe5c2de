from __future__ import annotations

import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from vhdtool.checks.authenticode import (CA_2011, CA_2023, PEError, image_digest, signatures,
                                         verify)
from vhdtool.checks.cms import CMSError, parse_signed_data
from tests.checks.fakeguest import pe_image
from tests.checks.shimsig import SHIM_TEXT, attach, debian_shim, sign_pe, tampered_shim

#: the image digest Microsoft signed for Debian's shim 16.1 (inside both of its signatures)
SHIM_DIGEST = "80a66d53a945d2286fcadd780fae1c225aa732079cd67b5225dc78aaab4e2ff8"


def verdicts(data: bytes) -> list[tuple[str | None, str]]:
    return [verify(data, sig) for sig in signatures(data)]


def test_debian_shim_verifies_under_both_microsoft_cas() -> None:
    shim = debian_shim()
    assert image_digest(shim).hex() == SHIM_DIGEST
    for sig in signatures(shim):
        assert parse_signed_data(sig.pkcs7).image_digest.hex() == SHIM_DIGEST
    (ca1, why1), (ca2, why2) = verdicts(shim)
    assert (ca1, ca2) == (CA_2011, CA_2023)
    assert why1 == ("Microsoft Windows UEFI Driver Publisher <- Microsoft Corporation UEFI CA "
                    "2011 (pinned certificate)")
    assert why2 == "Microsoft UEFI CA 2023 signer <- Microsoft UEFI CA 2023 (pinned certificate)"


def test_one_code_byte_changed_is_a_digest_mismatch() -> None:
    for ca, why in verdicts(tampered_shim()):
        assert ca is None
        assert why.startswith(f"Authenticode digest mismatch: the signature covers sha256 "
                              f"{SHIM_DIGEST}, the image hashes to ")


@pytest.mark.parametrize("where", ["checksum", "trailing"])
def test_excluded_and_covered_bytes(where: str) -> None:
    """The checksum field is outside the digest (signers rewrite it); data after the sections is
    inside it."""
    shim = bytearray(debian_shim())
    pe = struct.unpack_from("<I", shim, 0x3C)[0]
    at = pe + 24 + 64 if where == "checksum" else signatures(bytes(shim))[0].offset - 1
    shim[at] ^= 0xFF
    ca = verdicts(bytes(shim))[0][0]
    assert (ca == CA_2011) == (where == "checksum")


def test_non_microsoft_signer_fails_on_the_chain_only() -> None:
    ca, why = verdicts(sign_pe(pe_image()))[0]
    assert ca is None
    assert why == ("Test Secure Boot Signer: issued by 'CN=Test UEFI CA', but its issuer's "
                   "certificate is not in the signature; no pinned Microsoft UEFI CA reached")


def test_a_name_is_not_a_key() -> None:
    ca, why = verdicts(sign_pe(pe_image(), issuer=CA_2011))[0]
    assert ca is None and "no pinned Microsoft UEFI CA reached" in why


def test_signed_code_changed_after_signing() -> None:
    signed = bytearray(sign_pe(pe_image()))
    signed[0x200] ^= 0x01                       # first byte of .text
    assert verdicts(bytes(signed))[0][1].startswith("Authenticode digest mismatch")


def test_signed_attributes_and_signature_are_checked() -> None:
    # SpcPeImageData flags changed: the image digest still matches, the messageDigest does not
    signed = sign_pe(pe_image())
    at = signed.index(bytes.fromhex("3009030100a004a2028000")) + 4
    bad = bytearray(signed)
    bad[at] = 0x01
    assert verdicts(bytes(bad))[0][1] == ("signed attribute messageDigest does not match the "
                                          "SpcIndirectDataContent")
    # one byte of Microsoft's RSA signature changed
    shim, sig = debian_shim(), signatures(debian_shim())[0]
    value = parse_signed_data(sig.pkcs7).signature
    at = sig.offset + 8 + sig.pkcs7.index(value) + 10
    bad = bytearray(shim)
    bad[at] ^= 0x01
    assert verdicts(bytes(bad))[0] == (None, "the signature of 'Microsoft Windows UEFI Driver "
                                             "Publisher' over the signed attributes does not "
                                             "verify")


def test_unsigned_and_malformed() -> None:
    assert signatures(pe_image(None)) == []
    with pytest.raises(PEError, match="MZ"):
        signatures(b"\x7fELF" + b"\0" * 100)
    bad = bytearray(sign_pe(pe_image()))
    struct.pack_into("<I", bad, 0x40 + 24 + 112 + 36, 1 << 30)   # security dir size too big
    with pytest.raises(PEError, match="beyond the file"):
        signatures(bytes(bad))
    with pytest.raises(PEError, match="bytes after the certificate table"):
        image_digest(debian_shim() + b"hidden")
    unparsable = attach(pe_image(), b"\x30\x82\x7f\xff" + bytes(60))
    assert verdicts(unparsable)[0][1] == ("PKCS#7 SignedData cannot be parsed (ContentInfo: "
                                          "length 32767 at offset 0 runs past its container)")


def test_truncated_and_garbage_data_never_crash() -> None:
    """Every prefix-truncation and random corruption is a PEError or a (None, reason)."""
    rng = random.Random(18)
    shim = debian_shim()
    samples = [shim[:n] for n in (0, 2, 0x40, 0x80, 0x100, 0x400, SHIM_TEXT + 5, len(shim) - 9)]
    small = sign_pe(pe_image())
    for _ in range(300):
        data = bytearray(small)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        samples.append(bytes(data))
    samples += [bytes(rng.randrange(256) for _ in range(300)), b"MZ" + bytes(rng.randbytes(500))]
    for data in samples:
        try:
            for ca, why in verdicts(data):
                assert ca is None and why
        except PEError as e:
            assert str(e)


def test_corrupted_signed_data_is_a_cms_error() -> None:
    rng = random.Random(15)
    blob = signatures(debian_shim())[0].pkcs7
    for _ in range(500):
        data = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[:rng.randrange(len(data))]
        try:
            parse_signed_data(bytes(data))
        except CMSError as e:
            assert str(e)


SBVERIFY = shutil.which("sbverify")


@pytest.mark.skipif(not SBVERIFY, reason="sbverify (Debian sbsigntool) not installed")
def test_sbverify_agrees(tmp_path: Path) -> None:
    """sbsigntool's verifier, an independent implementation, reaches the same verdicts."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs7
    shim = debian_shim()
    ca = next(c for c in pkcs7.load_der_pkcs7_certificates(signatures(shim)[0].pkcs7)
              if c.subject.rfc4514_string().startswith(f"CN={CA_2011}"))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def sbverify(data: bytes) -> bool:
        (tmp_path / "x.efi").write_bytes(data)
        return subprocess.run([SBVERIFY, "--cert", str(tmp_path / "ca.pem"),
                               str(tmp_path / "x.efi")], capture_output=True).returncode == 0

    assert sbverify(shim) and verdicts(shim)[0][0] == CA_2011
    assert not sbverify(tampered_shim()) and verdicts(tampered_shim())[0][0] is None
    # our test signer makes signatures sbverify accepts with its certificate: the same digest
    signed = sign_pe(pe_image())
    from tests.checks.shimsig import _cached_key
    cert = _cached_key("Test UEFI CA")[1]
    (tmp_path / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert sbverify(signed)
    bad = bytearray(signed)
    bad[0x200] ^= 1
    assert not sbverify(bytes(bad))
