from __future__ import annotations

import struct

import pytest

from vhdtool.checks.authenticode import CA_2011, PEError, microsoft_uefi_ca, signatures
from tests.checks.fakeguest import forged_pkcs7, pe_image
from tests.checks.shimsig import DEBIAN_SHIM_PKCS7


def test_debian_shim_chains_to_the_2011_ca_by_key() -> None:
    (sig,) = signatures(pe_image(DEBIAN_SHIM_PKCS7))
    ca, why = microsoft_uefi_ca(sig.pkcs7)
    assert ca == CA_2011 and "key verified" in why


def test_name_alone_is_not_trusted() -> None:
    (sig,) = signatures(pe_image(forged_pkcs7()))
    ca, why = microsoft_uefi_ca(sig.pkcs7)
    assert ca is None and "not signed by its key" in why


def test_unsigned_and_malformed() -> None:
    assert signatures(pe_image(None)) == []
    with pytest.raises(PEError, match="MZ"):
        signatures(b"\x7fELF" + b"\0" * 100)
    bad = bytearray(pe_image(DEBIAN_SHIM_PKCS7))
    struct.pack_into("<I", bad, 0x40 + 24 + 112 + 36, 1 << 30)   # security dir size too big
    with pytest.raises(PEError, match="beyond the file"):
        signatures(bytes(bad))
    assert microsoft_uefi_ca(b"\x30\x03\x02\x01\x00")[0] is None
