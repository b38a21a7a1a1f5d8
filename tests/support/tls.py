"""Throwaway certificate authorities and certificates for TLS tests, and nodes that serve https.

Each CA is generated in memory (the `cryptography` package) and written under the test's tmp_path;
a node certificate names 127.0.0.1-3, ::1 and localhost and may serve and authenticate as a client.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.cluster import SERVER_KEY, Node

_KEY_PEM = serialization.PrivateFormat.PKCS8


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))


@dataclass
class Issued:
    """A certificate and its key as PEM files."""

    cert: Path
    key: Path

    def combined(self) -> Path:
        """Certificate and key in one PEM, as HAProxy's `crt` wants them."""
        path = self.cert.with_suffix(".combined.pem")
        path.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        path.chmod(0o600)
        return path

    def env(self, ca: Path | None) -> dict[str, str]:
        env = {"TLS_CERT_FILE": str(self.cert), "TLS_KEY_FILE": str(self.key)}
        if ca is not None:
            env["TLS_CA_FILE"] = str(ca)
        return env


@dataclass
class CertificateAuthority:
    name: str
    folder: Path
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        builder = (
            _validity(x509.CertificateBuilder())
            .subject_name(_name(self.name))
            .issuer_name(_name(self.name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
        )
        self.certificate = builder.sign(self.key, hashes.SHA256())
        self.cert_file = self.folder / f"{self.name}-ca.pem"
        self.cert_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str) -> Issued:
        """A certificate for a node on loopback: server and client usage, SANs 127.0.0.1-3, ::1, localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _validity(x509.CertificateBuilder())
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        *(x509.IPAddress(ipaddress.ip_address(f"127.0.0.{n}")) for n in (1, 2, 3)),
                        x509.IPAddress(ipaddress.ip_address("::1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.folder / f"{common_name}.pem", self.folder / f"{common_name}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, _KEY_PEM, serialization.NoEncryption())
        )
        issued.key.chmod(0o600)
        return issued

    def client_context(self, client: Issued | None = None) -> ssl.SSLContext:
        """What a test client uses: trusts this CA only, presents `client` when given."""
        context = ssl.create_default_context(cafile=str(self.cert_file))
        if client is not None:
            context.load_cert_chain(str(client.cert), str(client.key))
        return context


@dataclass
class TLSNode(Node):
    """A Node that serves https; its checks and calls go through `context`."""

    context: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def is_up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return https("GET", f"{self.url}/health", self.context, timeout=1)[0] == 200
        except OSError:
            return False

    def call(
        self, method: str, path: str, payload: Any = None, *, auth: bool = True, timeout: float = 30.0
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {SERVER_KEY}"} if auth else {}
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        status, _h, raw = https(method, f"{self.url}{path}", self.context, body=body, headers=headers)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")


def https(
    method: str,
    url: str,
    context: ssl.SSLContext | None,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """cluster.http with an SSL context."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
