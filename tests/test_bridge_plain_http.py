"""The bridge never sends a token in clear text to another machine unless the user says so.

Found by attacking the daemon (issue 17): `exai stdio --connect http://host/mcp` sent EXAI_TOKEN over plain http
to any host without a word. The daemon here is reached through a name that is not loopback by its text (the
machine's own host name), as another machine's would be; the traffic itself stays on this machine.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable

import anyio
import pytest
from mcp import Client, StdioServerParameters

from exai.security.auth import issue_token
from exai.server.bridge import is_loopback_host
from tests.conftest import TEST_JWT_SECRET, Proc, SimControl

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]


def _other_name_for_this_machine() -> str:
    """A host name that resolves to 127.0.0.1 here but that the bridge cannot know to be loopback from its text."""
    for name in (socket.gethostname(), "localhost.localdomain", "ip6-localhost"):
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)}
        except OSError:
            continue
        if addresses == {"127.0.0.1"} and not is_loopback_host(name):
            return name
    raise AssertionError("no host name of this machine resolves to 127.0.0.1 (see /etc/hosts)")


def test_loopback_is_judged_by_the_urls_text() -> None:
    assert all(is_loopback_host(h) for h in ("localhost", "LOCALHOST.", "a.localhost", "127.0.0.1", "127.9.9.9", "::1"))
    assert not any(is_loopback_host(h) for h in ("example.com", "10.0.0.1", "localhost.evil.com", "0.0.0.0", ""))


async def test_a_token_is_not_sent_over_plain_http_to_another_host(daemon: Daemon, sim: SimControl) -> None:
    name = _other_name_for_this_machine()
    proc = daemon(EXAI_JWT_SECRET=TEST_JWT_SECRET, EXAI_ALLOWED_HOSTS=name)  # the daemon answers to that name
    token = issue_token(TEST_JWT_SECRET, "alice", ["exai:tools"], 600)
    url = f"http://{name}:{proc.port}/mcp"
    command = [sys.executable, "-m", "exai", "stdio", "--connect", url]

    with anyio.fail_after(60):
        refused = await anyio.run_process(command, input=b"", env={**os.environ, "EXAI_TOKEN": token}, check=False)
    stderr, stdout = refused.stderr.decode(), refused.stdout.decode()
    assert refused.returncode == 2, stderr
    assert "plain http://" in stderr and "EXAI_BRIDGE_ALLOW_PLAIN_HTTP=true" in stderr and "https://" in stderr
    assert token not in stderr + stdout

    allowed = StdioServerParameters(
        command=sys.executable,
        args=command[1:],
        env={**os.environ, "EXAI_TOKEN": token, "EXAI_BRIDGE_ALLOW_PLAIN_HTTP": "true"},
    )
    async with Client(allowed) as client:
        result = await client.call_tool("chat", {"prompt": "sent as the user asked", "model": "sim-fast"})
    assert not result.is_error, result
