"""What a call answered survives a crash of PostgreSQL: its thread's turns and its finished call record.

The database is crashed (immediate stop: its WAL buffers are thrown away, as when the server is killed) the moment
the answers arrive, and every turn and every finished call must be there when it comes back. A change that commits
a call's writes without waiting for the log flush, and lets nothing flush them before the answer goes out, fails
here (tried: it failed three runs of three).
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from tests.conftest import Proc
from tests.helpers import call_tool, text_of
from tests.services import PrivateCluster

pytestmark = pytest.mark.anyio


async def test_the_turns_of_answered_calls_survive_a_database_crash(
    private_postgres: PrivateCluster, daemon: Callable[..., Proc]
) -> None:
    proc = daemon(EXAI_DATABASE_URL=private_postgres.url)
    thread: str | None = None
    for prompt in ("first", "second", "third"):  # a new thread, then two versioned appends
        args = {"prompt": prompt, "model": "sim-fast", **({"continuation_id": thread} if thread else {})}
        result = await call_tool(proc.url, "chat", args)
        assert not result.is_error, text_of(result)
        assert (result.meta or {}).get("exai/thread_saved") is not False, text_of(result, -1)
        thread = result.structured_content["continuation_id"]
    private_postgres.crash()
    with psycopg.connect(private_postgres.url) as conn:
        turns = conn.execute("SELECT content FROM turns WHERE thread_id = %s ORDER BY seq", (thread,)).fetchall()
        calls = conn.execute("SELECT status, count(*) FROM calls GROUP BY status").fetchall()
    assert [content for (content,) in turns][::2] == ["first", "second", "third"], turns
    assert len(turns) == 6, turns
    assert calls == [("completed", 3)], calls
