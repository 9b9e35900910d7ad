"""The signing keys of a JWKS URL, fetched on the event loop with a total deadline and a size cap.

A verification with a cached key never waits for the network: a key set older than its lifespan is refreshed in
the background while the cached keys keep verifying (and are kept when the refresh fails). A token with an unknown
`kid` waits for one refetch, but a refetch for unknown kids starts at most once per interval, whoever asks, and
after a failed fetch none starts for an interval:
tokens with made-up kids cannot turn the daemon into a load generator against the identity provider, and an
identity provider that hangs or trickles bytes costs each fetch at most its deadline, never a thread.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx2

from exai.observability.logging import get_logger

log = get_logger(__name__)
FETCH_DEADLINE_SECONDS = 5.0
MAX_BYTES = 256_000
REFETCH_INTERVAL_SECONDS = 10.0
LIFESPAN_SECONDS = 300.0


class UnknownSigningKey(Exception):
    """No key of the set has the token's `kid` (after a refetch, or while refetching is paused)."""


class JwksTooLarge(Exception):
    """The endpoint sent (or announced) more than MAX_BYTES."""


class JwksKeys:
    def __init__(self, url: str) -> None:
        self.url = url
        self._keys: dict[str | None, Any] = {}
        self._fetched_at = -math.inf  # when the cached set was fetched (monotonic)
        self._refetched_for_unknown_at = -math.inf
        self._failed_at = -math.inf  # after a failed fetch, none for an interval: a failing endpoint is not hammered
        self._fetching: asyncio.Task[None] | None = None

    async def key(self, kid: str | None) -> Any:
        """The public key for `kid`."""
        now = time.monotonic()
        may_fetch = self._fetching is not None or now - self._failed_at >= REFETCH_INTERVAL_SECONDS
        if self._keys and now - self._fetched_at > LIFESPAN_SECONDS and may_fetch:
            self._fetch_in_background()
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._keys and self._fetching is None:  # a key set is cached: an unknown kid refetches once per interval
            may_fetch = may_fetch and now - self._refetched_for_unknown_at >= REFETCH_INTERVAL_SECONDS
            if may_fetch:
                self._refetched_for_unknown_at = now
        if not may_fetch:
            raise UnknownSigningKey(f"no signing key with kid {str(kid)[:40]!r}")
        await asyncio.shield(self._fetch_in_background())  # a caller that gives up does not stop the fetch
        key = self._keys.get(kid)
        if key is None:
            raise UnknownSigningKey(f"no signing key with kid {str(kid)[:40]!r}")
        return key

    def _fetch_in_background(self) -> asyncio.Task[None]:
        """The fetch under way, or a new one: never two at once."""
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.create_task(self._fetch(), name="exai-jwks-fetch")
        return self._fetching

    async def _fetch(self) -> None:
        import jwt

        try:
            async with asyncio.timeout(FETCH_DEADLINE_SECONDS):
                body = await _read_capped(self.url)
            keys = jwt.PyJWKSet.from_json(body.decode())
        except TimeoutError:
            self._failed_at = time.monotonic()
            log.warning("jwks_fetch_failed", reason=f"no complete answer within {FETCH_DEADLINE_SECONDS:.0f} s")
        except Exception as exc:  # whatever the endpoint does, the cached keys stay in use
            self._failed_at = time.monotonic()
            log.warning("jwks_fetch_failed", reason=f"{type(exc).__name__}: {str(exc)[:200]}")
        else:
            self._keys = {k.key_id: k.key for k in keys.keys}
            self._fetched_at = time.monotonic()
        finally:
            self._fetching = None


async def _read_capped(url: str) -> bytes:
    """The body of a GET, refused as soon as it passes MAX_BYTES (declared or sent)."""
    async with (
        httpx2.AsyncClient(timeout=FETCH_DEADLINE_SECONDS) as http,
        http.stream("GET", url, headers={"accept": "application/json"}) as response,
    ):
        response.raise_for_status()
        if int(response.headers.get("content-length") or 0) > MAX_BYTES:
            raise JwksTooLarge(f"the key set declares more than {MAX_BYTES} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_BYTES:
                raise JwksTooLarge(f"the key set is larger than {MAX_BYTES} bytes")
        return bytes(body)
