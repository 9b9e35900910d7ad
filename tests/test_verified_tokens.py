"""Verified JWTs are remembered until they expire: refused the moment they do, and when their key is revoked."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from exai.security.auth import LEEWAY_SECONDS, JWTVerifier, VerifiedTokens
from tests.conftest import Proc, SimControl
from tests.helpers import jwks_endpoint, wait_until

pytestmark = pytest.mark.anyio
SECRET = "a-test-secret-that-is-long-enough-0123456789"
Daemon = Callable[..., Proc]
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def _claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": "alice", "scope": "exai:tools", "iat": now, "nbf": now, "exp": now + 600, **extra}


async def test_a_verified_token_is_remembered_by_its_hash_and_refused_the_moment_it_expires() -> None:
    verifier = JWTVerifier(secret=SECRET)
    expires_at = int(time.time()) + 3 - LEEWAY_SECONDS  # valid, with the leeway, for about 3 s more
    token = jwt.encode(_claims(exp=expires_at), SECRET, algorithm="HS256")
    first = await verifier.verify_token(token)
    assert first is not None and len(verifier.verified) == 1
    assert await verifier.verify_token(token) is first, "the second request reuses the verification"
    assert token not in repr(verifier.verified._entries.keys()), "the cache is keyed by the token's hash"
    await wait_until(lambda: time.time() >= expires_at + LEEWAY_SECONDS, "the token expires")
    assert await verifier.verify_token(token) is None, "refused at its expiry, although its entry is recent"
    assert len(verifier.verified) == 0


def test_the_cache_is_bounded() -> None:
    cache = VerifiedTokens(size=2)
    entry = object()
    for n in range(5):
        cache.put(bytes([n]), entry)  # type: ignore[arg-type]  # any object: the cache only holds it
    assert len(cache) == 2


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, list[dict[str, object]], list[int]]]:
    with jwks_endpoint() as served:
        yield served


def _signing_key(kid: str) -> tuple[rsa.RSAPrivateKey, dict[str, object]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return key, {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


async def test_a_revoked_signing_key_ends_its_remembered_tokens_through_the_daemon(
    daemon: Daemon, sim: SimControl, jwks_server: tuple[str, list[dict[str, object]], list[int]]
) -> None:
    url, keys, fetches = jwks_server
    old, old_jwk = _signing_key("old")
    keys.append(old_jwk)
    proc = daemon(EXAI_JWT_JWKS_URL=url)

    def status(token: str) -> int:
        response = httpx2.post(f"{proc.url}/mcp", json=PING, headers={**HEADERS, "Authorization": f"Bearer {token}"})
        return response.status_code

    remembered = jwt.encode(_claims(), old, algorithm="RS256", headers={"kid": "old"})
    assert status(remembered) != 401  # authenticated (a ping outside a session is refused later, with 400)
    assert status(remembered) != 401 and len(fetches) == 1
    new, new_jwk = _signing_key("new")
    keys[:] = [new_jwk]  # the identity provider rotates: the old key is revoked
    assert status(jwt.encode(_claims(sub="bob"), new, algorithm="RS256", headers={"kid": "new"})) != 401
    assert len(fetches) == 2, "the new kid refetched the set"
    assert status(remembered) == 401, "a token of the revoked key is refused, remembered or not"
