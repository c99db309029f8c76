"""A throwaway certificate authority for TLS tests: a CA, a server certificate for
127.0.0.1/localhost, and client certificates (one signed by the CA, one self-signed)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    """A client certificate NOT signed by the CA."""
    rogue_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _cert(
    subject: str,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("imgclf test CA", _name("imgclf test CA"), ca_key, ca_key, ca=True)
    _write(folder / "ca.pem", ca, ca_key)
    paths = {}
    for role, kwargs in (("server", {"server": True}), ("client", {})):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"imgclf test {role}", ca.subject, ca_key, key, **kwargs)
        paths[role] = _write(folder / f"{role}.pem", cert, key)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = _cert("rogue client", _name("rogue client"), rogue_key, rogue_key)
    _write(folder / "rogue.pem", rogue, rogue_key)
    return Pki(
        ca=folder / "ca.pem",
        server_cert=paths["server"],
        server_key=paths["server"].with_suffix(".key"),
        client_cert=paths["client"],
        client_key=paths["client"].with_suffix(".key"),
        rogue_cert=folder / "rogue.pem",
        rogue_key=folder / "rogue.key",
    )
