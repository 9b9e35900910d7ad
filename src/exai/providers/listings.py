"""Ask each configured vendor which models it serves, in the background, at start and then periodically.

A catalogued model the vendor's own listing does not name is one it no longer serves (or this key may not use):
the router never picks it for `auto` or a fallback, and naming it gets `not_found` with what the vendor does list.
Until a vendor's first listing arrives, or when asking fails, nothing is filtered: an unknown listing is no reason
to refuse a call. Every request is bounded in time and size (`bounded.py`) and none is on the start-up path.
The Custom endpoint's listing is read by `discovery.py`, which adds its models instead.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx2

from exai.background import BackgroundLoop
from exai.config import ProviderConfig, Settings
from exai.observability.logging import get_logger
from exai.providers.bounded import FetchError, get_json_bounded
from exai.providers.model_ids import acceptable_ids
from exai.providers.router import Listing, Router

log = get_logger(__name__)
ANTHROPIC_VERSION = "2023-06-01"
MAX_PAGES = 10
RETRY_AFTER_FAILURE_SECONDS = 60.0


def _request(config: ProviderConfig) -> tuple[str, dict[str, str]]:
    base = (config.base_url or "").rstrip("/")
    if config.spec.wire == "anthropic":
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if config.api_key:
            headers["x-api-key"] = config.api_key
        return f"{base}/v1/models", headers
    return f"{base}/models", {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}


def _ids(document: Any) -> list[object]:
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list):
        raise FetchError("the answer is not a model listing (no `data` list)")
    return [entry.get("id") if isinstance(entry, dict) else None for entry in data]


async def fetch_listing(
    http: httpx2.AsyncClient, config: ProviderConfig, deadline: float, max_bytes: int
) -> tuple[list[str], int]:
    """The model ids a vendor lists (Anthropic's pages followed, at most MAX_PAGES), and how many ids were refused
    as unprintable. `deadline` bounds the whole listing, all pages together; `max_bytes` each page."""
    base, headers = _request(config)
    params = {"limit": "1000"} if config.spec.wire == "anthropic" else {}
    ends = time.monotonic() + deadline
    ids: list[object] = []
    for _ in range(MAX_PAGES):
        remaining = ends - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"the listing did not arrive in full within {deadline:g} s")
        url = str(httpx2.URL(base, params=params))
        document = await get_json_bounded(http, url, headers=headers, deadline=remaining, max_bytes=max_bytes)
        ids.extend(_ids(document))
        last = document.get("last_id")
        if config.spec.wire != "anthropic" or not document.get("has_more") or not isinstance(last, str):
            break
        params["after_id"] = last
    return acceptable_ids(ids)


class VendorListings:
    """Keeps each configured vendor's listing fresh and tells the router."""

    def __init__(self, settings: Settings, router: Router, transport: httpx2.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.router = router
        self._transport = transport
        self.problems: dict[str, str] = {}
        self._loop = BackgroundLoop(
            "exai-vendor-listings", self.refresh, self._wait, at_once=True, failed_event="vendor_listings_failed"
        )

    @property
    def providers(self) -> list[str]:
        return [name for name in self.router.providers if name != "custom" and self.router.configs[name].base_url]

    def start(self) -> None:
        """Begin asking in the background; returns at once."""
        if self.providers:
            self._loop.start()

    async def close(self) -> None:
        await self._loop.close()

    async def refresh(self) -> None:
        """Ask every configured vendor once, all at the same time."""
        async with httpx2.AsyncClient(transport=self._transport, follow_redirects=False) as http:
            await asyncio.gather(*(self._refresh_one(http, name) for name in self.providers))

    def _wait(self) -> float:
        """Seconds until the next round: sooner while a vendor's listing could not be had."""
        wait = self.settings.model_listing_interval_seconds
        return min(wait, RETRY_AFTER_FAILURE_SECONDS) if self.problems else wait

    async def _refresh_one(self, http: httpx2.AsyncClient, name: str) -> None:
        config = self.router.configs[name]
        try:
            ids, refused = await fetch_listing(
                http, config, self.settings.model_listing_timeout_seconds, self.settings.model_listing_max_bytes
            )
        except FetchError as exc:
            self.problems[name] = str(exc)
            log.warning("vendor_listing_failed", provider=name, error=str(exc)[:300], effect="models not filtered")
            return
        self.problems.pop(name, None)
        if refused:
            log.warning("vendor_listing_ids_refused", provider=name, refused=refused, reason="control characters")
        self.router.set_listing(name, Listing(frozenset(ids), time.time(), refused))
        unlisted = [m.name for m in self.router.catalogue.models.values() if m.provider == name and m.name not in ids]
        log.info("vendor_listing", provider=name, listed=len(ids), catalogued_not_listed=unlisted[:20])
