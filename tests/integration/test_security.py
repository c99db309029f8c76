"""TLS, mutual TLS and bearer-token auth on the real server, with real clients."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from imgclf.client import Client
from imgclf.client.bench.launcher import start_server
from tests.images import encode
from tests.pki import make_pki

RED = encode(np.full((20, 20, 3), (230, 10, 10), dtype=np.uint8), "PNG")


def health_cli(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgclf.cli", "health", "--server", target, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def http_classify(
    port: int, scheme: str = "http", ca: Path | None = None, cert: Path | None = None,
    key: Path | None = None, token: str | None = None, path: str = "/v1/models/tiny/classify",
) -> tuple[int, str]:  # fmt: skip
    """POST the red PNG to the HTTP port: (status, top-1 label or error message)."""
    context = None
    if scheme == "https":
        context = ssl.create_default_context(cafile=str(ca))
        if cert is not None and key is not None:
            context.load_cert_chain(cert, key)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{scheme}://localhost:{port}{path}", data=RED,
                                     headers=headers)  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            doc = json.loads(reply.read())
            return reply.status, doc["results"][0]["predictions"][0]["label"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["error"]


def test_tls_serves_tls_clients_and_refuses_plaintext(tiny_repo: Path, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = start_server(
        tiny_repo, tmp_path, "--tls-cert-file", str(pki.server_cert),
        "--tls-key-file", str(pki.server_key),
        tls_ca=pki.ca,
    )  # fmt: skip
    try:
        with Client(server.target, tls_ca=pki.ca) as client:
            assert client.classify([RED]).results[0].top[0].label == "red"
        with Client(server.target, timeout=5) as plain, pytest.raises(grpc.RpcError) as caught:
            plain.classify([RED])
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "TLS" in server.log()
        # the HTTP port speaks TLS with the same certificate
        assert http_classify(server.http_port, "https", pki.ca) == (200, "red")
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            http_classify(server.http_port, "http")
    finally:
        server.stop()


def test_mutual_tls_refuses_a_client_without_a_valid_certificate(
    tiny_repo: Path, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    server = start_server(
        tiny_repo, tmp_path, "--tls-cert-file", str(pki.server_cert),
        "--tls-key-file", str(pki.server_key), "--tls-client-ca-file", str(pki.ca),
        tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key,
    )  # fmt: skip
    try:
        with Client(server.target, tls_ca=pki.ca, tls_cert=pki.client_cert,
                    tls_key=pki.client_key) as client:  # fmt: skip
            assert client.classify([RED]).results[0].top[0].label == "red"
        for cert, key in ((None, None), (pki.rogue_cert, pki.rogue_key)):
            refused = Client(server.target, timeout=5, tls_ca=pki.ca, tls_cert=cert, tls_key=key)
            with refused, pytest.raises(grpc.RpcError) as caught:
                refused.classify([RED])
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert http_classify(server.http_port, "https", pki.ca, pki.client_cert,
                             pki.client_key) == (200, "red")  # fmt: skip
        for cert, key in ((None, None), (pki.rogue_cert, pki.rogue_key)):
            with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
                http_classify(server.http_port, "https", pki.ca, cert, key)
        ok = health_cli(server.target, "--tls-ca", str(pki.ca), "--tls-cert",
                        str(pki.client_cert), "--tls-key", str(pki.client_key))  # fmt: skip
        assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
    finally:
        server.stop()


def test_bearer_token_required_except_for_health(tiny_repo: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    server = start_server(tiny_repo, tmp_path, "--auth-token-file", str(token_file))
    try:
        with Client(server.target, token="s3cret-token") as client:
            assert client.classify([RED]).results[0].top[0].label == "red"
            assert [m.name for m in client.list_models().models] == ["tiny"]
        for token in (None, "wrong-token", "s3cret-token-but-longer"):
            with (
                Client(server.target, token=token) as client,
                pytest.raises(grpc.RpcError) as caught,
            ):
                client.classify([RED])
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert health_cli(server.target).returncode == 0  # probes need no token
        import tritonclient.grpc as triton
        from tritonclient.utils import InferenceServerException

        oip = triton.InferenceServerClient(server.target)
        with pytest.raises(InferenceServerException) as refused:
            oip.is_server_ready()
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert oip.is_server_ready(headers={"authorization": "Bearer s3cret-token"})
        # RFC 7235: the auth scheme is case-insensitive; another scheme is refused.
        for scheme in ("bearer", "BEARER", "bEaReR"):
            assert oip.is_server_ready(headers={"authorization": f"{scheme} s3cret-token"})
        for value in ("Basic s3cret-token", "Bearers3cret-token", "s3cret-token"):
            with pytest.raises(InferenceServerException) as refused:
                oip.is_server_ready(headers={"authorization": value})
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED", value
        oip.close()
        # HTTP: the same token; health needs none
        assert http_classify(server.http_port, token="s3cret-token") == (200, "red")
        for token in (None, "wrong-token", "s3cret-token-but-longer"):
            assert http_classify(server.http_port, token=token) == (
                401,
                "missing or invalid bearer token",
            )
        for probe in ("/v2/health/live", "/v2/health/ready"):
            url = f"http://127.0.0.1:{server.http_port}{probe}"
            with urllib.request.urlopen(url, timeout=10) as reply:
                assert reply.status == 200
    finally:
        server.stop()
