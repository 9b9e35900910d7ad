"""One bounded GET of a JSON document: a total deadline and a size cap, whatever the other side sends.

Model listings come from endpoints we do not control. A per-read timeout does not bound a listing that trickles a
byte a second, and reading a body whole does not bound one of 150 MB; both held a daemon once. Here the whole
exchange has one deadline, the body is read in chunks and abandoned past the cap, and a large document is parsed
on a worker thread so the event loop keeps answering.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import httpx2

from exai.observability.logging import redact

PARSE_ON_THREAD_BYTES = 256 * 1024


class FetchError(Exception):
    """The document could not be had within the bounds; the message says why, without the body, and redacted like
    an upstream error (it names the URL, and may quote the transport's error): it reaches `/readyz` and errors."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(redact(message))
        self.status = status


async def get_json_bounded(
    http: httpx2.AsyncClient,
    url: str,
    *,
    headers: Mapping[str, str],
    deadline: float,
    max_bytes: int,
    post_json: Any = None,
) -> Any:
    """GET `url` (POST `post_json` when given) and parse its JSON answer within `deadline` seconds in all and
    `max_bytes` of body."""
    method, body = ("GET", None) if post_json is None else ("POST", json.dumps(post_json).encode())
    try:
        async with asyncio.timeout(deadline):
            async with http.stream(method, url, headers=dict(headers), content=body, timeout=deadline) as response:
                if response.status_code != 200:
                    raise FetchError(f"{url} answered {response.status_code}", status=response.status_code)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError(f"{url} sent {int(declared):,} bytes, more than the cap of {max_bytes:,}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchError(f"{url} sent more than the cap of {max_bytes:,} bytes")
                    chunks.append(chunk)
    except TimeoutError:
        raise FetchError(f"{url} did not answer in full within {deadline:g} s") from None
    except httpx2.HTTPError as exc:
        raise FetchError(f"cannot reach {url}: {str(exc) or type(exc).__name__}") from None
    body = b"".join(chunks)
    try:
        if len(body) > PARSE_ON_THREAD_BYTES:
            return await asyncio.to_thread(json.loads, body)
        return json.loads(body)
    except ValueError:
        raise FetchError(f"{url} did not answer with JSON") from None
