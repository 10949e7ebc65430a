"""A development PKI: one CA, server certificates per service, agent and operator identities.

Identity lives in a SAN URI ``spiffe://edgebot/<kind>/<name>`` (and the CN), where kind is
``service``, ``agent`` or ``operator``. Production sites bring their own CA; these files
only have to follow the same naming.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.identity import SPIFFE_TRUST_DOMAIN

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=825)
DEFAULT_SERVICE_HOSTS = ("localhost", "127.0.0.1", "::1")


def identity_uri(kind: str, name: str) -> str:
    return f"spiffe://{SPIFFE_TRUST_DOMAIN}/{kind}/{name}"


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path


class DevCA:
    """A CA on disk (``ca.crt``/``ca.key``) that issues leaf certificates next to itself."""

    def __init__(self, directory: Path, common_name: str = "EdgeBot dev CA") -> None:
        self.directory = directory
        self.cert_path = directory / "ca.crt"
        self.key_path = directory / "ca.key"
        if self.cert_path.exists() and self.key_path.exists():
            self._cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            self._key = key
        else:
            directory.mkdir(parents=True, exist_ok=True)
            self._key = ec.generate_private_key(ec.SECP256R1())
            self._cert = _build_ca(self._key, common_name)
            _write_pair(self.cert_path, self.key_path, self._cert, self._key)

    def issue(
        self,
        kind: str,
        name: str,
        hosts: tuple[str, ...] = (),
        *,
        file_stem: str | None = None,
        not_before: dt.datetime | None = None,
        validity: dt.timedelta = LEAF_VALIDITY,
        overwrite: bool = False,
    ) -> CertPaths:
        """Issue (or keep, if present) a certificate naming ``kind``/``name``."""
        stem = file_stem or f"{kind}-{name}"
        paths = CertPaths(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        if paths.cert.exists() and paths.key.exists() and not overwrite:
            return paths
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + validity)
            .add_extension(_san(kind, name, hosts), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        _write_pair(paths.cert, paths.key, cert, key)
        return paths


def ensure_dev_pki(
    directory: Path,
    services: Mapping[str, tuple[str, ...]],
    agents: tuple[str, ...] = (),
    operators: tuple[str, ...] = ("admin",),
) -> DevCA:
    """Create whatever is missing: the CA, one cert per service, agent and operator certs.

    ``services`` maps a service name to its extra DNS names (e.g. its Kubernetes name).
    """
    ca = DevCA(directory)
    for service, extra_hosts in services.items():
        ca.issue("service", service, DEFAULT_SERVICE_HOSTS + extra_hosts, file_stem=service)
    # Agents serve health on their own mTLS port too, so their certificates name local hosts.
    for agent in agents:
        ca.issue("agent", agent, DEFAULT_SERVICE_HOSTS)
    for operator in operators:
        ca.issue("operator", operator)
    return ca


def _build_ca(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def _san(kind: str, name: str, hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(kind, name))]
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Write the key first, then the cert: a reader that sees a new cert also sees its key.
    _atomic_write(key_path, key_bytes, mode=0o600)
    _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
