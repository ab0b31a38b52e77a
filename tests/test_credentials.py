"""Test certificates and site keys: valid, private where they must be, never overwritten."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.deploy.credentials import ServerCerts, key_fingerprint, make_site_keys, make_test_certs
from common.errors import ConfigError


def test_server_certificate_is_signed_by_the_ca_and_names_every_host(tmp_path: Path) -> None:
    certs = make_test_certs(tmp_path, ["localhost", "127.0.0.1"])
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    server = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature does not check out
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert stat.S_IMODE(certs.key.stat().st_mode) == 0o600
    assert ServerCerts.in_folder(tmp_path) == certs


def test_a_certificate_folder_missing_a_file_names_it(tmp_path: Path) -> None:
    make_test_certs(tmp_path, ["localhost"]).key.unlink()
    with pytest.raises(ConfigError, match="server.key"):
        ServerCerts.in_folder(tmp_path)


def test_existing_keys_or_certificates_are_never_overwritten(tmp_path: Path) -> None:
    make_site_keys(tmp_path, "clinic")
    before = (tmp_path / "clinic.key").read_bytes()
    with pytest.raises(ConfigError, match="already exist"):
        make_site_keys(tmp_path, "clinic")
    assert (tmp_path / "clinic.key").read_bytes() == before
    make_test_certs(tmp_path / "c", ["localhost"])
    with pytest.raises(ConfigError, match="already exist"):
        make_test_certs(tmp_path / "c", ["localhost"])


def test_site_keys_are_p384_in_the_openssh_format_flower_reads(tmp_path: Path) -> None:
    keys = make_site_keys(tmp_path, "clinic")
    private = serialization.load_ssh_private_key(keys.private.read_bytes(), password=None)
    assert private.curve.name == "secp384r1"
    assert keys.public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE(keys.private.stat().st_mode) == 0o600


def test_key_fingerprint_matches_ssh_keygen_and_pem_form(tmp_path: Path) -> None:
    keys = make_site_keys(tmp_path, "clinic")
    ours = key_fingerprint(keys.public.read_bytes())
    private = serialization.load_ssh_private_key(keys.private.read_bytes(), password=None)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key_fingerprint(pem) == ours
    try:
        listed = subprocess.run(["ssh-keygen", "-lf", str(keys.public)], capture_output=True,
                                text=True, check=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError):
        pytest.skip("ssh-keygen is not installed here")
    assert ours in listed


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a/b"])
def test_a_site_name_that_is_not_a_plain_file_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="plain file name"):
        make_site_keys(tmp_path, name)
