"""Which HTTP stack serves a binary POST with the least overhead (how service/http was chosen).

Two servers answer `POST /infer` with a fixed 4 KiB body after reading the whole request body:
aiohttp's low-level web server (C parser), and a minimal asyncio.Protocol that parses
Content-Length requests by hand (no chunked encoding, no TLS: the floor any stack can reach).
A client process keeps `--clients` keep-alive connections busy with one body size (default
150 KB, an Open Inference binary request of one 224x224 JPEG-ish size) for `--seconds`, A and B
alternating `--rounds` times; requests/s of each and the ratio are printed.

    python benchmarks/http_stack.py --rounds 3 --seconds 4
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import time

REPLY = b"x" * 4096


def serve_aiohttp(port: int, ready: multiprocessing.Event) -> None:
    from aiohttp import web

    async def infer(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=REPLY, content_type="application/octet-stream")

    async def main() -> None:
        server = web.Server(infer)
        await asyncio.get_running_loop().create_server(server, "127.0.0.1", port)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


class MinimalHttp(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: %d\r\n\r\n" % len(REPLY)
            )
            assert self.transport is not None
            self.transport.write(head + REPLY)


def serve_minimal(port: int, ready: multiprocessing.Event) -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_server(MinimalHttp, "127.0.0.1", port)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


async def load(port: int, clients: int, size: int, seconds: float) -> float:
    """Requests/s over `clients` keep-alive connections, each one request at a time."""
    body = b"\x00" * size
    request = (
        b"POST /infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    ) + body
    done = 0
    stop = time.monotonic() + seconds

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            done += 1
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(clients)))
    return done / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--size", type=int, default=150_000)
    args = parser.parse_args()
    from imgclf.client.bench.launcher import free_port

    servers = {}
    for name, target in (("aiohttp", serve_aiohttp), ("minimal", serve_minimal)):
        port, ready = free_port(), multiprocessing.Event()
        proc = multiprocessing.Process(target=target, args=(port, ready), daemon=True)
        proc.start()
        ready.wait(30)
        servers[name] = (port, proc)
    rates: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for _ in range(args.rounds):
            for name, (port, _proc) in servers.items():
                rate = asyncio.run(load(port, args.clients, args.size, args.seconds))
                rates[name].append(rate)
                print(f"{name:8s} {rate:9.0f} req/s")
    finally:
        for _port, proc in servers.values():
            proc.terminate()
    for name, values in rates.items():
        print(f"{name:8s} median {statistics.median(values):9.0f} req/s  runs {values}")
    ratio = statistics.median(rates["aiohttp"]) / statistics.median(rates["minimal"])
    print(f"aiohttp / minimal: {ratio:.2f}")


if __name__ == "__main__":
    main()
