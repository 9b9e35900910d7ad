"""A model request leaves in one write: httpcore's HTTP/1.1 connections over `CoalescingBackend`, against a real
HTTP server on loopback, with the writes that reach the socket counted."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpcore2
import pytest

from exai.providers.base import CallOptions
from exai.providers.catalogue import custom_model_info
from exai.providers.coalescing import LARGE_WRITE, CoalescingBackend
from exai.providers.openai_compatible import OpenAICompatibleProvider
from exai.providers.types import GenerateRequest, Message
from tests.helpers import serve_on_loopback

pytestmark = pytest.mark.anyio


class Counted(httpcore2.AsyncNetworkStream):
    def __init__(self, inner: httpcore2.AsyncNetworkStream, writes: list[int]) -> None:
        self._inner, self._writes = inner, writes

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._writes.append(len(buffer))
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class Counting(httpcore2.AsyncNetworkBackend):
    """The socket's side: every write the coalescing stream makes, by its size."""

    def __init__(self) -> None:
        self.inner = httpcore2.AnyIOBackend()
        self.writes: list[int] = []

    async def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore2.AsyncNetworkStream:
        return Counted(await self.inner.connect_tcp(host, port, *args, **kwargs), self.writes)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class Echo(BaseHTTPRequestHandler):
    """Answers with the size of the body it received and its first 9 bytes."""

    protocol_version = "HTTP/1.1"  # keeps the connection open between requests

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        answer = f"{len(body)} {body[:9].decode()}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


async def test_a_request_leaves_in_one_write_and_a_large_body_in_its_own() -> None:
    counting = Counting()
    with serve_on_loopback(Echo) as port:
        async with httpcore2.AsyncConnectionPool(network_backend=CoalescingBackend(counting)) as pool:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            for n in range(3):  # one connection, kept open: each request still one write
                answer = await pool.request("POST", url, content=f"request {n}".encode())
                assert answer.status == 200 and answer.content == f"9 request {n}".encode(), answer.content
            assert len(counting.writes) == 3, f"writes of three small requests: {counting.writes}"
            large = b"p" * (4 * LARGE_WRITE)
            answer = await pool.request("POST", url, content=large)
            assert answer.status == 200 and answer.content == f"{len(large)} ppppppppp".encode(), answer.content
    assert counting.writes[3:] == [counting.writes[3], len(large)], "the headers first, then the body as it is"
    assert counting.writes[3] < 1_000, "only the headers were held before the large body"


class Proxy(BaseHTTPRequestHandler):
    """A forward proxy on loopback that answers for the upstream itself: it records the URL each request asked
    for (an absolute URL, as a client speaks to a proxy) and answers a chat completion."""

    seen: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        Proxy.seen.append(self.path)
        answer = json.dumps(
            {"choices": [{"message": {"content": "via the proxy"}, "finish_reason": "stop"}], "usage": {}}
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


async def test_model_requests_still_go_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Passing the client a transport of its own (the first version) turned off HTTP_PROXY: every model request
    of a deployment that can only get out through a proxy went straight to the vendor, and failed."""
    with serve_on_loopback(Proxy) as port:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        provider = OpenAICompatibleProvider("custom", "http://upstream.invalid/v1", None)
        try:
            request = GenerateRequest(messages=[Message(role="user", content="hello")])
            answer = await provider.generate(request, custom_model_info("m", 8192), CallOptions(10, {}))
        finally:
            await provider.close()
    assert answer.text == "via the proxy"
    assert Proxy.seen == ["http://upstream.invalid/v1/chat/completions"], Proxy.seen
