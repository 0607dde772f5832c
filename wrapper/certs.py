"""`prism-wrapper gen-certs`: a development CA, a server certificate and
client certificates for mutual TLS between the wrapper and its drivers.

For development and tests only: production deployments use their own PKI
(see SECURITY.md). Keys are EC P-256, written with mode 600; certificates
are valid for a year. A client certificate's identity is its CN (also put
in a SAN URI prism:<name>), which [[tenants]].client_identities maps to a
tenant.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from prism.wrapper.errors import ConfigError

_VALID = dt.timedelta(days=365)


@dataclass(frozen=True)
class CertPaths:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    clients: dict[str, tuple[Path, Path]]  # name -> (cert, key)


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        os.write(fd, data)
    finally:
        os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    sans: list[x509.GeneralName],
    usage: list[x509.ObjectIdentifier] | None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def generate(
    out_dir: str | os.PathLike[str],
    hosts: list[str] | None = None,
    clients: list[str] | None = None,
    force: bool = False,
) -> CertPaths:
    """Write ca.pem/ca.key, server.pem/server.key (for ``hosts``) and
    client-<name>.pem/.key for each client name into ``out_dir``.

    An existing CA is never replaced silently: every certificate it issued
    (the drivers' client certificates, and the CA the drivers trust) would
    stop working. Without ``force`` that is a ConfigError naming the file."""
    out = Path(out_dir)
    hosts = hosts or ["localhost", "127.0.0.1"]
    for name in clients or []:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"gen-certs: {name!r} is not a usable client name")
    existing = [p for p in (out / "ca.pem", out / "ca.key") if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"gen-certs: {existing[0]} exists. Replacing the CA breaks every certificate it "
            "issued and every driver that trusts it; choose another directory, or pass --force "
            "to replace it anyway"
        )
    out.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("prism development CA", ca_key, None, ca_key, [], None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        hosts[0],
        server_key,
        ca,
        ca_key,
        [_san(h) for h in hosts],
        [ExtendedKeyUsageOID.SERVER_AUTH],
    )
    paths = CertPaths(
        out / "ca.pem", out / "ca.key", out / "server.pem", out / "server.key", clients={}
    )
    _write(paths.ca_cert, ca.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths.ca_key, _key_pem(ca_key), private=True)
    _write(paths.server_cert, server.public_bytes(serialization.Encoding.PEM), private=False)
    _write(paths.server_key, _key_pem(server_key), private=True)
    for name in clients or []:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(
            name,
            key,
            ca,
            ca_key,
            [x509.UniformResourceIdentifier(f"prism:{name}")],
            [ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        cp, kp = out / f"client-{name}.pem", out / f"client-{name}.key"
        _write(cp, cert.public_bytes(serialization.Encoding.PEM), private=False)
        _write(kp, _key_pem(key), private=True)
        paths.clients[name] = (cp, kp)
    return paths
