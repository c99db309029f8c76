"""How a client reaches the server: the channel (plaintext, TLS, or mutual TLS), its message
size limits, and the bearer token. The one place for these, shared by the Python client, the
CLI and the bench (whose processes get the PEM files as bytes)."""

from __future__ import annotations

from pathlib import Path

import grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def credentials(
    tls_ca: bytes | None = None, tls_cert: bytes | None = None, tls_key: bytes | None = None
) -> grpc.ChannelCredentials | None:
    """TLS credentials when a CA (or a client certificate, for mutual TLS) is given; None
    means plaintext."""
    if tls_ca is None and tls_cert is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=tls_ca, private_key=tls_key, certificate_chain=tls_cert
    )


def make_channel(target: str, creds: grpc.ChannelCredentials | None) -> grpc.Channel:
    if creds is None:
        return grpc.insecure_channel(target, options=OPTIONS)
    return grpc.secure_channel(target, creds, options=OPTIONS)


def make_aio_channel(
    target: str, creds: grpc.ChannelCredentials | None, own_connection: bool = False
) -> grpc.aio.Channel:
    """An asyncio channel; `own_connection` gives it an HTTP/2 connection of its own (a
    separate client) instead of sharing the process's connection to the same target."""
    options = [*OPTIONS, ("grpc.use_local_subchannel_pool", 1)] if own_connection else OPTIONS
    if creds is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, creds, options=options)


def open_channel(
    target: str,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> grpc.Channel:
    """A channel to the server from PEM files: TLS when a CA (or a client certificate) is
    given, with the client certificate for mutual TLS; plaintext otherwise."""

    def read(path: Path | None) -> bytes | None:
        return path.read_bytes() if path else None

    return make_channel(target, credentials(read(tls_ca), read(tls_cert), read(tls_key)))


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries a bearer token (none without one)."""
    return (("authorization", f"Bearer {token}"),) if token else ()
