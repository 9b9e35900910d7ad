"""A hanging JWKS endpoint plus tokens with invented key ids cannot slow down a valid user's logins.

Found by attacking the daemon (issue 17): every refetch held a thread of the default executor for as long as the
endpoint trickled bytes, and verifying even a cached key needed a thread of that pool; after six such tokens every
JWT login timed out, also after the attacker stopped.
"""

from __future__ import annotations

import json
import secrets
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import Proc, SimControl
from tests.test_http_attacks import INITIALIZE, MCP_HEADERS

Daemon = Callable[..., Proc]
ATTACK_SECONDS = 62.0  # long enough for six refetches at the old ten-second pace: the old pool had six threads
ATTACK_TOKENS = 50


class IdentityProvider:
    """A JWKS endpoint on loopback that serves its key set until told to hang (it then trickles a byte a second)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.body = json.dumps({"keys": [{**jwk, "kid": "good", "alg": "RS256", "use": "sig"}]}).encode()
        self.hanging = threading.Event()
        self.huge = threading.Event()
        self.failing = threading.Event()
        self.sent_huge = 0
        self.stopped = threading.Event()
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                if provider.failing.is_set():
                    self.send_error(500)
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                if provider.huge.is_set():  # no length declared: the body ends when the connection does
                    self.end_headers()
                    try:
                        for _ in range(800):  # 50 MB
                            self.wfile.write(b" " * 65536)
                            provider.sent_huge += 65536
                    except OSError:
                        return
                    return
                if not provider.hanging.is_set():
                    self.send_header("content-length", str(len(provider.body)))
                    self.end_headers()
                    self.wfile.write(provider.body)
                    return
                self.send_header("content-length", "100000")
                self.end_headers()
                while not provider.stopped.wait(1.0):  # never done, never silent for long: per-read timeouts hold
                    try:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    except OSError:
                        return

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/jwks.json"

    def token(self, tenant: str) -> str:
        now = int(time.time())
        claims = {"sub": tenant, "scope": "exai:tools", "iat": now, "exp": now + 900}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "good"})

    def close(self) -> None:
        self.stopped.set()
        self.server.shutdown()


@pytest.fixture
def identity_provider() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.close()


def _invented_kid_token() -> str:
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"sub": "mallory", "scope": "exai:admin", "iat": now, "exp": now + 900}
    return jwt.encode(claims, forger, algorithm="RS256", headers={"kid": secrets.token_hex(8)})


def _login_seconds(proc: Proc, token: str, timeout: float = 30.0) -> float:
    """One initialize request with `token`: the time the daemon takes to verify it and answer."""
    started = time.perf_counter()
    try:
        answer = httpx2.post(
            f"{proc.url}/mcp",
            json=INITIALIZE,
            headers={**MCP_HEADERS, "authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    except httpx2.TimeoutException:
        return float("inf")
    assert answer.status_code == 200, answer.text
    return time.perf_counter() - started


@pytest.mark.timeout(300)
def test_a_hanging_jwks_and_invented_key_ids_leave_valid_logins_as_fast(
    daemon: Daemon, sim: SimControl, identity_provider: IdentityProvider
) -> None:
    proc = daemon(
        EXAI_JWT_JWKS_URL=identity_provider.url, EXAI_MAX_SESSIONS_PER_TENANT="100000", EXAI_RATE_LIMIT_RPM="100000"
    )
    alice = identity_provider.token("alice")
    _login_seconds(proc, alice)  # the key set is fetched and cached
    baseline = statistics.median(_login_seconds(proc, alice) for _ in range(7))

    identity_provider.hanging.set()
    refused: list[int] = []

    def attack_once() -> None:
        try:
            answer = httpx2.post(
                f"{proc.url}/mcp",
                json=INITIALIZE,
                headers={**MCP_HEADERS, "authorization": f"Bearer {_invented_kid_token()}"},
                timeout=ATTACK_SECONDS + 30,
            )
            refused.append(answer.status_code)
        except httpx2.HTTPError:
            refused.append(0)

    attackers: list[threading.Thread] = []
    during: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < ATTACK_SECONDS:
        if len(attackers) < ATTACK_TOKENS * (time.monotonic() - started) / ATTACK_SECONDS + 1:
            attackers.append(threading.Thread(target=attack_once, daemon=True))
            attackers[-1].start()
        during.append(_login_seconds(proc, alice))
        time.sleep(0.2)  # a user's pace, not a wait for a condition
    after = [_login_seconds(proc, alice) for _ in range(3)]
    for attacker in attackers:
        attacker.join(timeout=60)

    margin = max(10 * baseline, baseline + 2.0)
    slowest = max(during + after)
    assert slowest < margin, f"a valid login took {slowest:.2f} s under attack (baseline {baseline:.3f} s)"
    assert len(attackers) >= ATTACK_TOKENS and refused.count(401) == len(attackers), refused
    assert identity_provider.fetches <= 2 + ATTACK_SECONDS / 10 + 1, "unknown kids refetch once per interval"


@pytest.mark.anyio
async def test_a_huge_key_set_is_refused_after_the_size_cap(identity_provider: IdentityProvider) -> None:
    from exai.security.auth import JWTVerifier
    from exai.security.jwks import MAX_BYTES

    identity_provider.huge.set()
    verifier = JWTVerifier(jwks_url=identity_provider.url)
    assert await verifier.verify_token(identity_provider.token("alice")) is None
    assert identity_provider.sent_huge < 40 * MAX_BYTES, "the reader stopped soon after the cap"


@pytest.mark.anyio
async def test_a_failing_jwks_endpoint_is_not_asked_again_at_every_login(identity_provider: IdentityProvider) -> None:
    from exai.security.auth import JWTVerifier

    identity_provider.failing.set()
    verifier = JWTVerifier(jwks_url=identity_provider.url)
    for _ in range(20):
        assert await verifier.verify_token(identity_provider.token("alice")) is None
    assert identity_provider.fetches == 1, "one failed fetch, then a pause of an interval"
