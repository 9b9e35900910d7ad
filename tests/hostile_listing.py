"""A model-listing endpoint that misbehaves on purpose, served from a thread of the test process (loopback only).

Modes: `trickle` sends headers, then one byte of a listing every half second for as long as the client stays;
`huge` sends a listing of about `huge_bytes` as fast as the client reads; `ids` answers a small listing with the
ids given. Every request is counted.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class HostileListing:
    mode: str
    ids: list[str] = field(default_factory=list)
    huge_bytes: int = 150_000_000
    requests: int = 0
    sent_bytes: int = 0
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answer(self, out: socket.socket) -> None:
        if self.mode == "ids":
            body = json.dumps({"object": "list", "data": [{"id": i, "object": "model"} for i in self.ids]}).encode()
            out.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
            out.sendall(body)
            return
        out.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        if self.mode == "trickle":
            for byte in b'{"object": "list", "data": [' + b" " * 100_000:
                out.sendall(bytes([byte]))
                self.sent_bytes += 1
                time.sleep(0.5)
            return
        out.sendall(b'{"object": "list", "data": [')
        entry = b'{"id": "model-padding-padding-padding-padding-padding", "object": "model"},' * 1000
        while self.sent_bytes < self.huge_bytes:
            out.sendall(entry)
            self.sent_bytes += len(entry)
        out.sendall(b'{"id": "last"}]}')


@contextmanager
def hostile_listing(mode: str, **options: Any) -> Iterator[HostileListing]:
    state = HostileListing(mode, **options)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = self.request.recv(4096)
                if not chunk:
                    return
                request += chunk
            state.requests += 1
            with contextlib.suppress(OSError):  # the client gave up: what a bounded reader should do
                state.answer(self.request)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
