"""Model discovery that does not give up at start.

A local endpoint (Ollama, vLLM, LM Studio) is often started after the daemon or the stdio server. When its
listing cannot be had at start, it is asked again in the background with a bounded backoff until it answers or
the server stops; its models are routable from the moment they are found, without a restart. Meanwhile calls,
`/readyz` and the router's error say what is wrong and that it is being retried. Start-up never waits for it (the
daemon answers `/healthz` at once); only a call made while the first attempt is still under way waits for that
attempt, which has its own deadline (EXAI_MODEL_LISTING_TIMEOUT_SECONDS).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from exai.background import BackgroundLoop
from exai.config import Settings
from exai.observability.logging import get_logger
from exai.providers.discovery import discover_custom_models, wants_discovery
from exai.providers.router import Router

log = get_logger(__name__)
RETRY_DELAYS = (5.0, 10.0, 15.0)  # seconds before each new attempt; the last one repeats


class CustomModelDiscovery:
    """Finds the CUSTOM_API_URL endpoint's models once at start, then again in the background until it answers."""

    def __init__(
        self,
        settings: Settings,
        router: Router,
        on_found: Callable[[], None],
        delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self.settings = settings
        self.router = router
        self.on_found = on_found
        self.delays = delays
        self._attempts = 0
        self._loop = BackgroundLoop(
            "exai-model-discovery", self._attempt, self._next_delay, at_once=True, failed_event="discovery_failed"
        )
        self._first_attempt_done = asyncio.Event()

    async def start(self) -> None:
        """Begin discovery in the background and return at once; it keeps asking until the endpoint answers."""
        if not wants_discovery(self.settings, self.router):
            self._first_attempt_done.set()
            self.on_found()  # the models are known already: check what depends on them now
            return
        self._loop.start()

    async def settled(self) -> None:
        """Return once the first attempt is over (at once after that): a call made just after start needs its
        models."""
        await self._first_attempt_done.wait()

    async def close(self) -> None:
        await self._loop.close()

    @property
    def problem(self) -> str | None:
        """Why the endpoint's models are missing while they are asked for again; kept by the router, whose
        errors say it."""
        return self.router.models_pending

    async def _attempt(self) -> None:
        retry = self._attempts > 0
        self._attempts += 1
        try:
            problem = await discover_custom_models(self.settings, self.router, quiet=retry)
        finally:
            self._first_attempt_done.set()
        if problem is not None:
            self._pending(problem)
            return
        if retry:
            self.router.models_pending = None
            log.info("custom_models_discovered_after_retry", attempts=self._attempts - 1)
        self.on_found()

    def _next_delay(self) -> float | None:
        """Seconds before the next attempt (a bounded backoff); None once the models are found."""
        if self.problem is None or not wants_discovery(self.settings, self.router):
            return None
        return self.delays[min(self._attempts - 1, len(self.delays) - 1)]

    def _pending(self, problem: str) -> None:
        every = self.delays[-1]
        self.router.models_pending = f"{problem}; it is asked again in the background (every {every:g} s at most)"
