"""One call's tokens and slot, from admission to settlement, in one object.

`CallTokens.admit` takes the tenant's slot and, in the same round trip, prepays about what the tenant's previous
call of the tool reserved in all (when that fits today's budget; otherwise nothing is prepaid and nothing else
changes). Before each model call the tool draws its prompt's tokens (`reserve`): from the prepayment when it covers
them (no round trip), else as a reservation of their own, checked against the budget as before. Once the model
answers, the claim learns what it used; an attempt cut on our side (a cancellation, its time limit) after its
request was sent used its prompt and whatever had streamed back (the vendor bills a request it started), one cut
before it was sent used nothing. `close` runs once, whatever the outcome (answered, failed, cancelled): it gives
the slot back and replaces every reservation by what its model calls used, in one round trip with Redis. The day's
counter ends at exactly what the upstream reported; a prepayment no model call drew on is given back whole. The
characters the call stored (`add_stored_text`: its thread writes, its kept result) go in that same round trip, or,
stored after it, with the tenant's next ones (`RateLimiter.count_stored_later`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exai.security.limits import Correction, Lease, RateLimiter, TokenReservation
from exai.uncancelled import to_the_end

PREPAY_MARGIN = 1.125
"""How much more than the tool's last call the prepayment covers: prompts of one tool differ a little in length."""


PREPAY_SIZES_KEPT = 10_000
"""(tenant, tool) pairs whose last reservation is remembered; the least recently updated go first."""


def remember_prepay(sizes: dict[tuple[str, str], int], key: tuple[str, str], tokens: int) -> None:
    """What a tenant's call of a tool reserved in all: that tenant's next call of it prepays about as much (one
    tenant's large prompts never hold back another tenant's budget)."""
    sizes.pop(key, None)
    sizes[key] = tokens
    if len(sizes) > PREPAY_SIZES_KEPT:
        del sizes[next(iter(sizes))]


@dataclass
class TokenClaim:
    """One model call's prompt tokens, reserved before it is asked, and what it turned out to use (0 if it failed
    or was cut before its request was sent; the prompt and the streamed output for each attempt sent and then cut
    on our side, by a cancellation or the attempt's time limit)."""

    reservation: TokenReservation
    tokens: int
    used: int = 0


@dataclass
class CallTokens:
    limiter: RateLimiter
    tenant: str
    tool: str
    lease: Lease | None = None
    claims: list[TokenClaim] = field(default_factory=list)
    unclaimed: int = 0
    """Tokens prepaid with the slot that no model call has claimed yet."""
    stored_chars: int = 0
    """Characters the call stored: counted against today's stored text when it closes."""
    _closed: bool = False

    @classmethod
    async def admit(
        cls, limiter: RateLimiter, tenant: str, tool: str, holds_slot: bool, asks_model: bool, writes_threads: bool
    ) -> CallTokens:
        """The call's slot (unless the tool holds none) with a prepayment when the tool asks a model; only such a
        call is refused for a spent budget, and only one that writes threads for the day's stored text spent."""
        call = cls(limiter, tenant, tool)
        if holds_slot:
            last = limiter.prepay_sizes.get((tenant, tool), 0) if asks_model else 0
            call.lease = await limiter.acquire(
                tenant, prepay=int(last * PREPAY_MARGIN), spends_tokens=asks_model, writes_threads=writes_threads
            )
            if call.lease.prepaid is not None:
                call.unclaimed = call.lease.prepaid.tokens
        else:  # it waits for a call that holds the slot (`collect`): a poll, counted like `tasks/get`
            await limiter.task_request(tenant)
        return call

    async def reserve(self, tokens: int) -> TokenClaim:
        """Count a model call's prompt against the day's budget before it is asked, or raise `RateLimitError`."""
        if self._closed:  # a reservation after the settlement would never be settled: the day's count would drift
            raise RuntimeError(f"'{self.tool}' asked a model after its call's tokens were settled")
        prepaid = self.lease.prepaid if self.lease is not None else None
        if prepaid is not None and tokens <= self.unclaimed:
            self.unclaimed -= tokens
            claim = TokenClaim(prepaid, tokens)
        else:
            return await to_the_end(self._reserve_recorded(tokens))
        self.claims.append(claim)
        return claim

    async def _reserve_recorded(self, tokens: int) -> TokenClaim:
        """A reservation of its own, recorded as soon as it is made (so it is always settled)."""
        claim = TokenClaim(await self.limiter.reserve_tokens(self.tenant, tokens), tokens)
        self.claims.append(claim)
        return claim

    @property
    def closed(self) -> bool:
        """Whether the call's slot went back and its tokens and text were settled (see `close`)."""
        return self._closed

    def add_stored_text(self, chars: int) -> None:
        """Count characters the call stored: with the settlement, or after it (an answer's kept result, stored once
        the call settled while its turns were written) gathered with the tenant's next ones."""
        if self._closed:
            self.limiter.count_stored_later(self.tenant, chars)
            return
        self.stored_chars += chars

    def corrections(self) -> list[Correction]:
        """Every reservation whose count differs from what its model calls used, with what they used."""
        used: dict[int, list[int]] = {}
        reservations: dict[int, TokenReservation] = {}
        if self.lease is not None and self.lease.prepaid is not None:
            reservations[id(self.lease.prepaid)] = self.lease.prepaid
            used[id(self.lease.prepaid)] = []
        for claim in self.claims:
            reservations[id(claim.reservation)] = claim.reservation
            used.setdefault(id(claim.reservation), []).append(claim.used)
        return [(r, sum(used[key])) for key, r in reservations.items() if sum(used[key]) != r.tokens]

    async def close(self) -> None:
        """Give the slot back and settle every reservation, once, even when the caller is cancelled."""
        if self._closed:
            return
        self._closed = True
        if self.claims:
            remember_prepay(self.limiter.prepay_sizes, (self.tenant, self.tool), sum(c.tokens for c in self.claims))
        corrections = self.corrections()
        if self.lease is not None:
            await self.limiter.release(self.lease, corrections, self.stored_chars)  # finishes whatever cancels it
        else:
            await to_the_end(self._settle(corrections))

    async def _settle(self, corrections: list[Correction]) -> None:
        for reservation, used in corrections:
            await self.limiter.settle(reservation, used)
