"""An upstream whose answer carries what JSON allows and no UTF-8 store keeps (NUL, a lone surrogate): the paid
answer is kept, in the thread and in the call's record, on a real PostgreSQL, through a real daemon."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

import psycopg
import pytest
from mcp import Client

from tests.conftest import Proc, SimControl
from tests.helpers import serve_on_loopback, text_of

pytestmark = pytest.mark.anyio
ANSWER = "before\u0000after, half a pair: \ud83d."
"""As the upstream's JSON carries it: `\\u0000` and `\\ud83d` escapes, valid JSON."""


@contextmanager
def answering_upstream(model: str) -> Iterator[str]:
    """An OpenAI-compatible endpoint on loopback: a listing of `model`, and ANSWER to every chat request."""
    listing = json.dumps({"object": "list", "data": [{"id": model, "object": "model"}]}).encode()
    chat = json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }
    ).encode()  # json.dumps escapes both as \\uXXXX, as an upstream would send them

    class Handler(BaseHTTPRequestHandler):
        def _send(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(listing)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self._send(chat)

        def log_message(self, *args: object) -> None:
            return None

    with serve_on_loopback(Handler) as port:
        yield f"http://127.0.0.1:{port}/v1"


async def test_an_answer_with_nul_and_a_lone_surrogate_is_kept_in_the_thread_and_the_record(
    daemon: Callable[..., Proc], sim: SimControl, postgres_url: str, pg_schema: str
) -> None:
    with answering_upstream("odd-model") as url:
        proc = daemon(
            CUSTOM_API_URL=url,
            CUSTOM_MODELS="odd-model",
            EXAI_DATABASE_URL=postgres_url,
            EXAI_DATABASE_SCHEMA=pg_schema,
        )
        async with Client(f"{proc.url}/mcp") as client:
            result = await client.call_tool("chat", {"prompt": "say something odd", "model": "odd-model"})
    assert not result.is_error, text_of(result)
    assert (result.meta or {}).get("exai/thread_saved") is not False, text_of(result)
    assert "before\ufffdafter, half a pair: \ufffd." in text_of(result)
    thread = result.structured_content["continuation_id"]
    with psycopg.connect(postgres_url) as conn:
        turns = conn.execute(
            f'SELECT content FROM "{pg_schema}".turns WHERE thread_id = %s ORDER BY seq', (thread,)
        ).fetchall()
        calls = conn.execute(f'SELECT status FROM "{pg_schema}".calls').fetchall()
    assert [t[0] for t in turns] == ["say something odd", "before\ufffdafter, half a pair: \ufffd."]
    assert [c[0] for c in calls] == ["completed"]


def test_a_streamed_emoji_split_between_chunks_is_joined_and_upstream_errors_are_storable() -> None:
    from exai.providers.base import upstream_text
    from exai.providers.types import GenerateResponse

    pieces = ["smile \ud83d", "\ude00!"]  # each chunk's JSON decoded alone: half a pair in each
    joined = GenerateResponse(text="".join(pieces), model="m", provider="p")
    assert joined.text == "smile \U0001f600!"
    assert upstream_text("bad\u0000request \udc00") == "bad\ufffdrequest \ufffd"
