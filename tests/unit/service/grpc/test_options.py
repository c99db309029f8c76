"""imgclf.grpc.options: the gRPC server's channel options follow the settings."""

from __future__ import annotations

from imgclf.grpc.options import KEEPALIVE_TIME_MS, server_options
from imgclf.settings import ServerSettings


def test_message_limits_and_idle_follow_the_settings() -> None:
    options = dict(server_options(ServerSettings(max_message_bytes=4096, max_connection_idle_s=2)))
    assert options["grpc.max_receive_message_length"] == 4096
    assert options["grpc.max_send_message_length"] == 4096
    assert options["grpc.max_connection_idle_ms"] == 2000
    assert options["grpc.keepalive_time_ms"] == KEEPALIVE_TIME_MS


def test_no_idle_limit_when_it_is_off() -> None:
    options = dict(server_options(ServerSettings(max_connection_idle_s=0)))
    assert "grpc.max_connection_idle_ms" not in options
    assert options["grpc.server.max_pending_requests"] == 10_000


def test_unset_message_limit_follows_the_memory_budget() -> None:
    settings = ServerSettings(max_message_bytes=0)
    options = dict(server_options(settings))
    assert options["grpc.max_receive_message_length"] == settings.message_limit > 0
