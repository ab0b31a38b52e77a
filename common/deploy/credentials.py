"""Test TLS certificates for the server and key pairs that identify sites.

Written with `cryptography` (already a Flower dependency) instead of shelling out to openssl,
so the commands work wherever Python does.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import ConfigError
from common.storage import write_atomically

CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"


@dataclass(frozen=True)
class ServerCerts:
    """The three files `fedtl server` needs (and the CA file sites need)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_folder(cls, folder: Path) -> ServerCerts:
        folder = Path(folder)
        certs = cls(ca=folder / CA_CERT, cert=folder / SERVER_CERT, key=folder / SERVER_KEY)
        missing = [str(p) for p in (certs.ca, certs.cert, certs.key) if not p.is_file()]
        if missing:
            raise ConfigError(f"certificate folder {folder} lacks {missing}; create test ones "
                              f"with `fedtl certs --out {folder}` or copy your own there")
        return certs


def _write_private(path: Path, data: bytes) -> None:
    write_atomically(path, lambda handle: handle.write(data), mode=0o600)


def _write_public(path: Path, data: bytes) -> None:
    write_atomically(path, lambda handle: handle.write(data), mode=0o644)


def _refuse_overwrite(paths: list[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise ConfigError(f"{existing} already exist; remove them first or choose another "
                          "--out (fedtl never overwrites keys)")


def make_test_certs(out: Path, hosts: list[str], days: int = 365) -> ServerCerts:
    """A private CA and a server certificate for ``hosts`` (names or IP addresses), for tests.

    Real deployments use certificates from their own CA; these only make TLS testable.
    """
    out = Path(out)
    certs = ServerCerts(ca=out / CA_CERT, cert=out / SERVER_CERT, key=out / SERVER_KEY)
    _refuse_overwrite([certs.ca, certs.cert, certs.key])
    if not hosts:
        raise ConfigError("give at least one --host the server certificate is for")
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedtl test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_public(certs.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_public(certs.cert, server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(certs.key, server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    # The CA's private key is not kept: nobody can issue more certificates from this test CA.
    return certs


@dataclass(frozen=True)
class SiteKeys:
    """A site's key pair: the private key stays at the site, the public one goes to the server."""

    private: Path
    public: Path


def make_site_keys(out: Path, name: str) -> SiteKeys:
    """An EC P-384 key pair (the curve Flower's SuperNode authentication expects)."""
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"site name {name!r} must be a plain file name")
    out = Path(out)
    keys = SiteKeys(private=out / f"{name}.key", public=out / f"{name}.pub")
    _refuse_overwrite([keys.private, keys.public])
    key = ec.generate_private_key(ec.SECP384R1())
    # OpenSSH formats: what Flower's SuperNode and `flwr supernode register` read.
    _write_private(keys.private, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    _write_public(keys.public, key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return keys


def key_fingerprint(public_key: bytes) -> str:
    """``SHA256:...`` of a public key (OpenSSH or PEM), as `ssh-keygen -l` prints it."""
    text = public_key.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
        else:
            key = serialization.load_ssh_public_key(text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a public key ({exc})") from exc
    blob = base64.b64decode(key.public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
