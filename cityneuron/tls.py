"""A development certificate authority for the broker's TLS listeners.

``cityneuron broker certs`` creates a CA, a server certificate for the broker and, on request,
client certificates for devices (common name = device id, which the client-certificate listener
takes as the MQTT username). For production, use certificates from the city's own PKI.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cityneuron.contract import is_device_id
from cityneuron.errors import ConfigError

log = logging.getLogger("cityneuron.tls")

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
CLIENTS_DIR = "clients"
# Names the server certificate covers by default: local clients and the compose service name.
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "broker")

_CA_DAYS = 3650
# CA/Browser Forum Baseline Requirements 6.3.2: TLS server certificates live at most 398 days.
_LEAF_DAYS = 397
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a development PKI folder."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.directory / CA_KEY

    @property
    def server_cert(self) -> Path:
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.directory / SERVER_KEY

    def client_cert(self, device_id: str) -> Path:
        return self.directory / CLIENTS_DIR / f"{device_id}.crt"

    def client_key(self, device_id: str) -> Path:
        return self.directory / CLIENTS_DIR / f"{device_id}.key"


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to generate and to handshake; supported by every TLS 1.2/1.3 client.
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CityNeuron development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_pem(path: Path, data: bytes, *, private: bool, owner: tuple[int, int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    if owner is not None:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _load_ca(files: TlsFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the development CA from {files.directory}: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{files.ca_key} is not an EC key")
    return cert, key


def create_ca(files: TlsFiles) -> None:
    """A self-signed CA that may only sign end-entity certificates."""
    key = _new_key()
    name = _name("CityNeuron development CA")
    cert = (
        _builder(name, name, key.public_key(), _CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_pem(files.ca_key, _key_pem(key), private=True)
    _write_pem(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM), private=False)


def _issue(
    files: TlsFiles,
    common_name: str,
    usage: x509.ObjectIdentifier,
    alt_names: Sequence[x509.GeneralName],
) -> tuple[bytes, bytes]:
    ca_cert, ca_key = _load_ca(files)
    key = _new_key()
    builder = (
        _builder(_name(common_name), ca_cert.subject, key.public_key(), _LEAF_DAYS)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(alt_names)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _alt_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def create_server_cert(files: TlsFiles, names: Sequence[str] = DEFAULT_SERVER_NAMES) -> None:
    """The broker's certificate, valid for every host name and IP address in ``names``."""
    if not names:
        raise ConfigError("the server certificate needs at least one host name or IP address")
    cert, key = _issue(files, names[0], ExtendedKeyUsageOID.SERVER_AUTH, [_alt_name(n) for n in names])
    _write_pem(files.server_key, key, private=True)
    _write_pem(files.server_cert, cert, private=False)


def create_client_cert(files: TlsFiles, device_id: str, *, owner: tuple[int, int] | None = None) -> None:
    """A device certificate; its common name is the device id (the broker's MQTT username)."""
    if not is_device_id(device_id):
        raise ConfigError(f"device id {device_id!r} does not match the contract's device id pattern")
    cert, key = _issue(files, device_id, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    _write_pem(files.client_key(device_id), key, private=True, owner=owner)
    _write_pem(files.client_cert(device_id), cert, private=False, owner=owner)


def ensure_dev_pki(directory: Path, names: Sequence[str] = DEFAULT_SERVER_NAMES) -> TlsFiles:
    """The CA and server certificate in ``directory``, created when missing (kept otherwise).

    The folder holds the CA key: keep it away from the broker and the clients.
    """
    files = TlsFiles(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    if not (files.ca_cert.exists() and files.ca_key.exists()):
        create_ca(files)
        log.info("created a development CA in %s", directory)
    if not (files.server_cert.exists() and files.server_key.exists()):
        create_server_cert(files, names)
        log.info("created the broker certificate for %s", ", ".join(names))
    return files


def install_broker_tls(
    files: TlsFiles, broker_dir: Path, *, owner: tuple[int, int] | None = None
) -> TlsFiles:
    """Copy the server certificate and key, and the CA certificate (to check device certificates),
    into the broker's folder, owned by the broker's user; the CA key stays behind."""
    target = TlsFiles(broker_dir)
    _write_pem(target.ca_cert, files.ca_cert.read_bytes(), private=False, owner=owner)
    _write_pem(target.server_cert, files.server_cert.read_bytes(), private=False, owner=owner)
    _write_pem(target.server_key, files.server_key.read_bytes(), private=True, owner=owner)
    return target
