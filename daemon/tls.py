"""TLS for the API and for every client a node (or an operator command) uses towards its peers.

One place builds every SSLContext, so the server and its clients agree on what is checked:
- server: with TLS_CERT_FILE and TLS_KEY_FILE the API listens with TLS; with TLS_CA_FILE as
  well it requires a client certificate signed by that CA (mutual TLS).
- client: https:// peer URLs are verified against TLS_CA_FILE (else the system's CAs), host
  name included; with TLS_CERT_FILE and TLS_KEY_FILE the client presents that certificate, so
  one certificate per node serves both directions (it needs serverAuth and clientAuth usage).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

from replication.errors import HotstandbyError

CERT, KEY, CA = "TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"


class TLSError(HotstandbyError, ValueError):
    """A TLS file is missing, unreadable or does not load; the message names the variable.

    daemon/config.py turns it into a ConfigError (exit status 2), daemon/ctl.py into a UsageError."""


@dataclass(frozen=True)
class TLSFiles:
    cert: str = ""
    key: str = ""
    ca: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TLSFiles:
        """The three variables, checked: cert and key together, every named file readable."""
        files = cls(*(env.get(name, "").strip() for name in (CERT, KEY, CA)))
        files.check()
        return files

    @property
    def serves_tls(self) -> bool:
        return bool(self.cert)

    @property
    def mutual(self) -> bool:
        return bool(self.cert and self.ca)

    def check(self) -> None:
        """Cert and key together, every named file readable, and each loads (bad PEM is caught here)."""
        if bool(self.cert) != bool(self.key):
            given, missing = (CERT, KEY) if self.cert else (KEY, CERT)
            raise TLSError(f"{given} is set but {missing} is not: a certificate needs its private key")
        for name, path in ((CERT, self.cert), (KEY, self.key), (CA, self.ca)):
            if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
                raise TLSError(f"{name}={path!r} is not a readable file")
        if self.cert or self.ca:
            server_context(self)
            client_context(self)


def server_context(files: TLSFiles) -> ssl.SSLContext | None:
    """The API's context, or None for plain HTTP (no certificate configured)."""
    if not files.serves_tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, files)
    if files.ca:
        _load_ca(context, files.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """For https:// peers: verify them (TLS_CA_FILE only, else the system's CAs) and their host
    name, and present our certificate when we have one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.ca:
        _load_ca(context, files.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if files.serves_tls:
        _load_chain(context, files)
    return context


def _load_chain(context: ssl.SSLContext, files: TLSFiles) -> None:
    try:
        context.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as exc:
        raise TLSError(
            f"{CERT}={files.cert!r} and {KEY}={files.key!r} do not load as a certificate and its key: "
            f"{exc.strerror or exc}"
        ) from None


def _load_ca(context: ssl.SSLContext, path: str) -> None:
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError) as exc:
        raise TLSError(f"{CA}={path!r} does not load as PEM CA certificates: {exc.strerror or exc}") from None
