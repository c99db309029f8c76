"""HTTP transport security: the TLS context (mutual TLS with a client CA) and the bearer token.

The same settings as the gRPC port (service/grpc/auth.py): the same certificate, the same
client CA, the same token, compared in constant time; health checks are exempt, and so are
the page's static files when it is served (service/http/page.py).
"""

from __future__ import annotations

import hmac
import ssl
from pathlib import Path

EXEMPT_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


def server_ssl_context(
    cert_file: Path, key_file: Path, client_ca_file: Path | None
) -> ssl.SSLContext:
    """TLS with the server's certificate; with a client CA, a client certificate it signed
    is required (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class BearerToken:
    """Checks `Authorization: Bearer <token>` in constant time."""

    def __init__(self, token: str, exempt: frozenset[str] = EXEMPT_PATHS) -> None:
        self._expected = f"Bearer {token}".encode()
        self._exempt = exempt

    def allows(self, path: str, authorization: str | None) -> bool:
        if path in self._exempt:
            return True
        if authorization is None:
            return False
        return hmac.compare_digest(authorization.encode(errors="replace"), self._expected)
