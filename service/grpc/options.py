"""The gRPC server's channel options: connection keepalive and age, message size limits, and
how many calls gRPC core holds before the application picks them up. One list for `imgclf
serve` (imgclf.server) and the bare floor server of `imgclf bench --floor` (imgclf.grpc.floor),
so that the floor measures the same gRPC stack."""

from __future__ import annotations

from imgclf.settings import ServerSettings

KEEPALIVE_TIME_MS = 60_000
"""Ping every connection after this long without traffic, to find peers that vanished."""
KEEPALIVE_TIMEOUT_MS = 20_000
"""A connection whose ping is not answered within this is closed (its calls fail)."""
MAX_CONNECTION_AGE_MS = 3_600_000
"""A connection is asked to go away (GOAWAY) after an hour, so that clients reconnect and
load balancers can spread them again; new calls go to a new connection..."""
MAX_CONNECTION_AGE_GRACE_MS = 300_000
"""...and calls still open on the old one get this long to finish."""


def server_options(s: ServerSettings) -> list[tuple[str, int]]:
    """The gRPC server's channel options."""
    idle_ms = round(s.max_connection_idle_s * 1000)
    return [
        *([("grpc.max_connection_idle_ms", idle_ms)] if idle_ms else []),
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging idle long-lived streams
        ("grpc.max_receive_message_length", s.message_limit),
        ("grpc.max_send_message_length", s.message_limit),
        ("grpc.so_reuseport", 0),
        # gRPC core cancels calls the application has not picked up yet beyond these
        # (defaults 1000/3000): a burst should queue and meet our own admission control
        # (RESOURCE_EXHAUSTED with a retry hint), not vanish as CANCELLED.
        ("grpc.server.max_pending_requests", 10_000),
        ("grpc.server.max_pending_requests_hard_limit", 30_000),
    ]
