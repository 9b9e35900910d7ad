"""An upstream (or a proxy in front of it) that echoes our API key in its error body: the key reaches neither the
caller's error, nor the call record in the store, nor the daemon's log."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.conftest import Proc, SimControl
from tests.helpers import call_tool, serve_on_loopback, tool_error

pytestmark = pytest.mark.anyio
Daemon = Callable[..., Proc]
KEY = "custom-key-SECRETVALUE-9f8e7d6c5b"  # configured, not `sk-` shaped: redacted because it is configured
OTHER_KEY = "sk-proj-ANOTHERSECRET-1234567890abcdef"  # not configured: redacted by its shape
OTHER_BEARER = "eyJhbGciOiJIUzI1NiJ9.PROXYTOKEN.signature"
STATUS = {"echo-401": 401, "echo-400": 400, "echo-500": 500}


@pytest.fixture
def echoing_upstream() -> Iterator[str]:
    """An OpenAI-compatible endpoint whose every error body repeats the credentials it was sent, and more."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, {"object": "list", "data": [{"id": name, "object": "model"} for name in STATUS]})

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            auth = self.headers.get("authorization", "")
            message = (
                f"Incorrect API key provided: {auth.removeprefix('Bearer ')} (header was {auth}); "
                f"the proxy also holds {OTHER_KEY} and sends Authorization: Bearer {OTHER_BEARER}"
            )
            self._send(STATUS.get(request.get("model"), 400), {"error": {"message": message, "type": "api_error"}})

        def log_message(self, *args: object) -> None:
            return None

    with serve_on_loopback(Handler) as port:
        yield f"http://127.0.0.1:{port}/v1"


def leaks(text: str) -> list[str]:
    return [marker for marker in ("SECRETVALUE", "ANOTHERSECRET", "PROXYTOKEN") if marker in text]


async def test_an_upstream_that_echoes_the_key_in_its_error_body_never_passes_it_on(
    daemon: Daemon, sim: SimControl, echoing_upstream: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "secret-echo-data"
    proc = daemon(
        CUSTOM_API_URL=echoing_upstream,
        CUSTOM_API_KEY=KEY,
        CUSTOM_MODELS=",".join(STATUS),
        EXAI_MAX_RETRIES="0",
        EXAI_DATA_DIR=str(data_dir),
    )
    for model, status in STATUS.items():
        result = await call_tool(proc.url, "chat", {"prompt": "hi", "model": model})
        error = tool_error(result)
        assert error["category"] == "provider" and error["details"]["upstream_status"] == status, error
        assert "Incorrect API key provided: ***" in error["message"], error  # the rest of the body is still there
        everything = json.dumps(result.model_dump(mode="json", by_alias=True))
        assert leaks(everything) == [], (model, everything)
    assert proc.stop() == 0  # SIGTERM: the audit rows are flushed before the store closes
    stored = b"".join(path.read_bytes() for path in data_dir.rglob("*") if path.is_file()).decode(errors="replace")
    assert "Incorrect API key provided: ***" in stored, "the call records keep the (redacted) upstream message"
    assert leaks(stored) == []
    assert leaks(proc.logs()) == []


def test_a_listing_failure_names_the_url_without_its_credentials() -> None:
    from exai.providers.bounded import FetchError

    failure = FetchError(f"cannot reach http://user:{KEY}@proxy.example/v1/models: Bearer {OTHER_BEARER}")
    assert leaks(str(failure)) == [] and "proxy.example" in str(failure), str(failure)
