"""Authentication, scopes and tenant isolation: every JWT attack refused, over the real HTTP daemon too."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from mcp_types import CallToolResult

from exai.security.auth import JWTVerifier, issue_token, new_api_key, parse_api_keys, visible_tools
from tests.conftest import Proc, SimControl
from tests.helpers import jwks_endpoint, mcp_client, tool_error

pytestmark = pytest.mark.anyio
SECRET = "a-test-secret-that-is-long-enough-0123456789"
Daemon = Callable[..., Proc]


def _claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": "alice", "scope": "exai:tools", "iat": now, "nbf": now, "exp": now + 600, **extra}


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def test_hs256_accepts_good_tokens_and_refuses_every_attack() -> None:
    verifier = JWTVerifier(secret=SECRET, issuer="exai-test", audience="exai")
    good = jwt.encode(_claims(iss="exai-test", aud="exai"), SECRET, algorithm="HS256")
    access = await verifier.verify_token(good)
    assert access is not None and access.subject == "alice" and access.scopes == ["exai:tools"]
    now = int(time.time())
    attacks = {
        "expired": jwt.encode(_claims(iss="exai-test", aud="exai", exp=now - 120), SECRET, algorithm="HS256"),
        "not yet valid": jwt.encode(_claims(iss="exai-test", aud="exai", nbf=now + 600), SECRET, algorithm="HS256"),
        "issued in the future": jwt.encode(
            _claims(iss="exai-test", aud="exai", iat=now + 600), SECRET, algorithm="HS256"
        ),
        "wrong issuer": jwt.encode(_claims(iss="evil", aud="exai"), SECRET, algorithm="HS256"),
        "wrong audience": jwt.encode(_claims(iss="exai-test", aud="other"), SECRET, algorithm="HS256"),
        "wrong key": jwt.encode(_claims(iss="exai-test", aud="exai"), "x" * 40, algorithm="HS256"),
        # No key for "none": pyjwt takes "" as None (the same token), and its types refuse None.
        "alg none": jwt.encode(_claims(iss="exai-test", aud="exai"), "", algorithm="none"),
        "no exp": jwt.encode(
            {k: v for k, v in _claims(iss="exai-test", aud="exai").items() if k != "exp"}, SECRET, algorithm="HS256"
        ),
        "no subject": jwt.encode(
            {k: v for k, v in _claims(iss="exai-test", aud="exai").items() if k != "sub"}, SECRET, algorithm="HS256"
        ),
        "garbage": "not.a.jwt",
        "tampered": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
    }
    for name, token in attacks.items():
        assert await verifier.verify_token(token) is None, name
    assert verifier.failures == len(attacks)


async def test_algorithm_confusion_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = _pem(key)
    verifier = JWTVerifier(public_key=public_pem)
    assert await verifier.verify_token(jwt.encode(_claims(), key, algorithm="RS256")) is not None
    # An attacker signs HS256 with the (public) key as the HMAC secret.
    assert await verifier.verify_token(jwt.encode(_claims(), "", algorithm="none")) is None  # "": no key, as above

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(_claims()).encode())
    signature = b64(hmac.new(public_pem.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest())
    assert await verifier.verify_token(f"{header}.{body}.{signature}") is None
    ec_key = ec.generate_private_key(ec.SECP256R1())
    assert (
        await JWTVerifier(public_key=_pem(ec_key)).verify_token(jwt.encode(_claims(), ec_key, algorithm="ES256"))
        is not None
    )


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, list[dict[str, object]], list[int]]]:
    with jwks_endpoint() as served:
        yield served


async def test_jwks_is_cached_and_refreshed_on_an_unknown_kid(
    jwks_server: tuple[str, list[dict[str, object]], list[int]],
) -> None:
    url, keys, fetches = jwks_server

    def add_key(kid: str) -> rsa.RSAPrivateKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return key

    first = add_key("k1")
    verifier = JWTVerifier(jwks_url=url)
    token = jwt.encode(_claims(), first, algorithm="RS256", headers={"kid": "k1"})
    assert await verifier.verify_token(token) is not None
    assert await verifier.verify_token(token) is not None
    assert len(fetches) == 1, "the key set is cached"
    rotated = add_key("k2")
    token2 = jwt.encode(_claims(sub="bob"), rotated, algorithm="RS256", headers={"kid": "k2"})
    bob = await verifier.verify_token(token2)
    assert bob is not None and bob.subject == "bob"
    assert len(fetches) == 2, "an unknown kid refetches the set once"
    unknown = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for kid in ("k3", "k4", "k5", "k6"):
        assert (
            await verifier.verify_token(jwt.encode(_claims(), unknown, algorithm="RS256", headers={"kid": kid})) is None
        )
    assert len(fetches) == 2, "made-up kids do not refetch the set more than once every 10 s"


async def test_api_keys_are_hashed_and_revocable() -> None:
    key, entry = new_api_key("carol", ["exai:tools"])
    assert key not in entry
    verifier = JWTVerifier(api_keys=parse_api_keys([entry]))
    carol = await verifier.verify_token(key)
    assert carol is not None and carol.subject == "carol"
    assert await JWTVerifier(api_keys=[]).verify_token(key) is None, "removing the entry revokes the key"


def test_visible_tools_name_only_what_the_token_may_call() -> None:
    names = ["chat", "status", "threads", "precommit"]
    assert visible_tools(names, ["exai:tool:chat"]) == ["chat"]
    assert visible_tools([*names, "collect"], ["exai:tool:chat"]) == ["chat", "collect"]
    assert visible_tools([*names, "collect"], ["exai:metrics"]) == []
    assert visible_tools(names, ["exai:tools"]) == ["chat", "threads", "precommit"]
    assert visible_tools(names, ["exai:admin"]) == names
    assert visible_tools(names, []) == []
    assert visible_tools(names, None) == names, "without auth every tool is visible"


async def _client_call(url: str, token: str, tool: str, args: dict[str, Any]) -> tuple[set[str], CallToolResult]:
    async with mcp_client(url, token, timeout=120) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        return names, await client.call_tool(tool, args)


async def test_daemon_requires_tokens_enforces_scopes_and_isolates_tenants(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_JWT_SECRET=SECRET)
    alice = issue_token(SECRET, "alice", ["exai:tools"], 600)
    bob = issue_token(SECRET, "bob", ["exai:tools"], 600)
    admin = issue_token(SECRET, "ops", ["exai:admin"], 600)
    only_chat = issue_token(SECRET, "dave", ["exai:tool:chat"], 600)

    bare = httpx2.post(
        f"{proc.url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"accept": "application/json, text/event-stream"},
    )
    assert bare.status_code == 401 and "Bearer" in bare.headers["www-authenticate"]
    assert "resource_metadata" in bare.headers["www-authenticate"]
    metadata = httpx2.get(f"{proc.url}/.well-known/oauth-protected-resource/mcp")
    assert metadata.status_code == 200 and metadata.json()["resource"].endswith("/mcp")
    forged = jwt.encode(_claims(), "y" * 40, algorithm="HS256")
    assert httpx2.post(f"{proc.url}/mcp", json={}, headers={"Authorization": f"Bearer {forged}"}).status_code == 401

    names, started = await _client_call(proc.url, alice, "chat", {"prompt": "alice's secret plan", "model": "sim-fast"})
    assert "status" not in names and "chat" in names
    thread = started.structured_content["continuation_id"]
    _, stolen = await _client_call(proc.url, bob, "chat", {"prompt": "x", "continuation_id": thread})
    assert stolen.is_error and tool_error(stolen)["code"] == "thread_not_found"
    _, listing = await _client_call(proc.url, bob, "threads", {})
    assert listing.structured_content["threads"] == []
    _, shown = await _client_call(proc.url, alice, "threads", {"action": "show", "thread_id": thread})
    assert not shown.is_error
    _, denied = await _client_call(proc.url, alice, "status", {})
    assert denied.is_error and tool_error(denied)["category"] == "permission"
    names, allowed = await _client_call(proc.url, admin, "status", {})
    assert not allowed.is_error and "status" in names
    names, narrow = await _client_call(proc.url, only_chat, "threads", {})
    assert names == {"chat", "collect"} and tool_error(narrow)["code"] == "missing_scope"  # collect: its own answers
    assert httpx2.get(f"{proc.url}/metrics", headers={"Authorization": f"Bearer {alice}"}).status_code == 403
    assert httpx2.get(f"{proc.url}/metrics").status_code == 401
    assert httpx2.get(f"{proc.url}/metrics", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    logs = proc.logs()
    for secret in (SECRET, alice, bob, admin, "sk-test-kimi-secret", "sk-test-anthropic-secret"):
        assert secret not in logs


def test_refuses_a_public_bind_without_auth(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    refused = subprocess.run(
        [sys.executable, "-m", "exai", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,  # the refusal comes after the imports: slow on a busy machine
    )
    assert refused.returncode == 2 and "without authentication" in refused.stderr
    weak = subprocess.run(
        [sys.executable, "-m", "exai", "models"],
        env={**os.environ, "EXAI_JWT_SECRET": "short"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert weak.returncode == 2 and "EXAI_JWT_SECRET" in weak.stderr


async def test_the_expiry_leeway_holds_through_the_daemon(daemon: Daemon, sim: SimControl) -> None:
    proc = daemon(EXAI_JWT_SECRET=SECRET)
    just_expired = jwt.encode(_claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256")
    long_expired = jwt.encode(_claims(exp=int(time.time()) - 120), SECRET, algorithm="HS256")
    request = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}

    def status(token: str) -> int:
        response = httpx2.post(f"{proc.url}/mcp", json=request, headers={**headers, "Authorization": f"Bearer {token}"})
        return response.status_code

    assert status(long_expired) == 401
    assert status(just_expired) != 401, "a token expired within the 30 s leeway is accepted end to end"
