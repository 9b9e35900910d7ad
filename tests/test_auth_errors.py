"""A refused token says why: `invalid_token` with the reason (expired, bad signature, wrong audience or issuer,
unknown API key), apart from a missing token, as the official Python SDK v2 and TypeScript SDK show it."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from exai.security.auth import issue_token
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl
from tests.helpers import bearer, mcp_client
from tests.node_toolchain import NodeToolchain

pytestmark = pytest.mark.anyio
ISSUER, AUDIENCE = "https://id.example", "exai-test"
MISSING = "Authentication required: send Authorization: Bearer <token>"


def tokens() -> dict[str, tuple[str | None, str]]:
    """case -> (token, the description the client must show)."""

    def jwt(secret: str = TEST_JWT_SECRET, ttl: int = 600, issuer: str = ISSUER, audience: str = AUDIENCE) -> str:
        return issue_token(secret, "alice", ["exai:tools"], ttl, issuer, audience)

    return {
        "missing": (None, MISSING),
        "expired": (jwt(ttl=-120), "Invalid token: expired"),
        "bad signature": (jwt(secret="another-secret-that-is-long-enough-0123456789"), "Invalid token: bad signature"),
        "wrong audience": (jwt(audience="someone-else"), "Invalid token: wrong audience"),
        "wrong issuer": (jwt(issuer="https://other.example"), "Invalid token: wrong issuer"),
        "unknown api key": ("exai_not-a-key-of-this-server", "Invalid token: unknown or revoked API key"),
        "garbage": ("not-a-jwt", "Invalid token: not a well-formed JWT"),
    }


@pytest.fixture
def authed(daemon: Callable[..., Proc], sim: SimControl) -> Proc:
    return daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, EXAI_JWT_ISSUER=ISSUER, EXAI_JWT_AUDIENCE=AUDIENCE)


async def test_401_says_invalid_token_and_why_over_http_and_in_the_python_sdk(authed: Proc) -> None:
    for case, (token, description) in tokens().items():
        answer = httpx2.post(
            f"{authed.url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={**bearer(token), "accept": "application/json, text/event-stream"},
        )
        assert answer.status_code == 401, case
        challenge = answer.headers["www-authenticate"]
        assert 'error="invalid_token"' in challenge and f'error_description="{description}"' in challenge, challenge
        assert "resource_metadata=" in challenge, "OAuth clients still find the metadata"
        assert answer.json()["error"]["message"] == description, case
        with pytest.raises(BaseException) as raised:  # the SDK raises from its task group
            async with mcp_client(authed.url, token, timeout=30) as client:
                await client.list_tools()
        errors = raised.value.exceptions if isinstance(raised.value, BaseExceptionGroup) else [raised.value]
        flat = [e for group in errors for e in (group.exceptions if isinstance(group, BaseExceptionGroup) else [group])]
        assert any(isinstance(e, MCPError) and e.error.message == description for e in flat), (case, flat)
    valid = issue_token(TEST_JWT_SECRET, "alice", ["exai:tools"], 600, ISSUER, AUDIENCE)
    async with mcp_client(authed.url, valid, timeout=30) as client:
        assert (await client.list_tools()).tools


@pytest.mark.timeout(600)  # the first run installs Node and the SDK from npm (tests/node_toolchain.py)
def test_the_typescript_sdk_shows_why_the_token_was_refused(authed: Proc, node_toolchain: NodeToolchain) -> None:
    script = node_toolchain.script("auth.mjs")
    for case, (token, description) in tokens().items():
        env = {"EXAI_TEST_TOKEN": token} if token else {}
        # timeout: the default, named so that mypy knows **env does not fill it
        done = node_toolchain.run([script, f"{authed.url}/mcp"], timeout=120.0, **env)
        assert done.returncode == 0, done.stderr[-2000:]
        outcome = json.loads(done.stdout)
        assert "thrown" in outcome and description in outcome["thrown"], (case, outcome)
