"""Per-tenant limits: exact across two daemons sharing Redis, the outage setting, and slots always released."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from mcp_types import CallToolResult

from exai.config import Limits
from exai.errors import RateLimitError
from exai.security.auth import issue_token
from exai.security.limits import LocalLimiter, RedisLimiter, tenant_keys
from tests.conftest import Proc, SimControl
from tests.helpers import hold_writes, mcp_client, redis_int, tool_error, wait_until

pytestmark = pytest.mark.anyio
SECRET = "a-test-secret-that-is-long-enough-0123456789"
Daemon = Callable[..., Proc]


async def test_local_limits() -> None:
    limiter = LocalLimiter(
        Limits(requests_per_minute=3, concurrent=2, tokens_per_day=100),
        {"vip": Limits(requests_per_minute=100, concurrent=50, tokens_per_day=10**9)},
    )
    first, second = await limiter.acquire("t"), await limiter.acquire("t")
    with pytest.raises(RateLimitError) as caught:
        await limiter.acquire("t")
    assert caught.value.code == "rate_limited_concurrency"
    await limiter.release(first)
    third = await limiter.acquire("t")
    with pytest.raises(RateLimitError) as caught:
        await limiter.acquire("t")
    assert caught.value.code == "rate_limited_rpm" and 0 < caught.value.details["retry_after_seconds"] <= 60
    for lease in (second, third):
        await limiter.release(lease)
    other = LocalLimiter(Limits(tokens_per_day=100), {})
    await other.settle(await other.reserve_tokens("t", 50), 150)  # a call that used more than it reserved
    with pytest.raises(RateLimitError, match="tokens per day"):
        await other.acquire("t")
    assert (await limiter.acquire("vip")).tenant == "vip", "an override applies to its own tenant"


async def test_redis_outage_follows_the_setting() -> None:
    broken = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    fail_open = RedisLimiter(broken, Limits(concurrent=1), {}, "open", 60)
    lease = await fail_open.acquire("t")
    assert lease.local and fail_open.degraded and fail_open.failures == 1
    with pytest.raises(RateLimitError) as caught:
        await fail_open.acquire("t")
    assert caught.value.code == "rate_limited_concurrency", "open means degraded (limited per replica), not unlimited"
    await fail_open.release(lease)
    assert (await fail_open.acquire("t")).local
    fail_closed = RedisLimiter(broken, Limits(), {}, "closed", 60)
    with pytest.raises(RateLimitError) as caught:
        await fail_closed.acquire("t")
    assert caught.value.code == "rate_limited_unavailable"


async def _call(url: str, token: str, args: dict[str, Any], tool: str = "chat") -> CallToolResult:
    return (await _calls(url, token, [args], tool))[0]


async def _calls(url: str, token: str, many: list[dict[str, Any]], tool: str = "chat") -> list[CallToolResult]:
    """Run the calls at once in one MCP session."""
    async with mcp_client(url, token) as client:
        await client.list_tools()
        return list(await asyncio.gather(*(client.call_tool(tool, args) for args in many)))


async def test_requests_per_minute_are_exact_across_two_daemons(
    daemon: Daemon, sim: SimControl, redis_url: str
) -> None:
    env = {
        "EXAI_JWT_SECRET": SECRET,
        "EXAI_REDIS_URL": redis_url,
        "EXAI_RATE_LIMIT_RPM": "10",
        "EXAI_RATE_LIMIT_CONCURRENCY": "100",
    }
    a, b = daemon(**env), daemon(**env)
    token = issue_token(SECRET, f"tenant-{uuid.uuid4().hex[:8]}", ["exai:tools"], 600)
    batches = await asyncio.gather(
        *(
            _calls(proc.url, token, [{"prompt": f"{n}{i}", "model": "sim-fast"} for i in range(12)])
            for n, proc in ((0, a), (1, b))
        )
    )
    results = [result for batch in batches for result in batch]
    ok = [r for r in results if not r.is_error]
    limited = [tool_error(r) for r in results if r.is_error]
    assert len(ok) == 10, f"{len(ok)} admitted; two replicas must admit the limit, not twice it"
    assert len(limited) == 14 and all(e["category"] == "rate_limit" for e in limited)
    assert all(e["details"]["retry_after_seconds"] > 0 for e in limited)
    assert sim.count("requests") == 10


async def test_slots_come_back_after_timeouts_and_cancellations(
    daemon: Daemon, sim: SimControl, redis_url: str
) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    proc = daemon(
        EXAI_JWT_SECRET=SECRET,
        EXAI_REDIS_URL=redis_url,
        EXAI_RATE_LIMIT_CONCURRENCY="2",
        EXAI_CALL_DEADLINE_SECONDS="1",
        CUSTOM_ALLOWED_MODELS="sim-fast",
        KIMI_API_KEY="",
        ANTHROPIC_API_KEY="",
    )
    token = issue_token(SECRET, tenant, ["exai:tools"], 600)
    sim.fault("hang", model="sim-fast")
    timed_out = await asyncio.gather(*(_call(proc.url, token, {"prompt": "t", "model": "sim-fast"}) for _ in range(2)))
    assert all(tool_error(r)["category"] == "timeout" for r in timed_out)
    for _ in range(2):
        with anyio.move_on_after(0.5):
            await _call(proc.url, token, {"prompt": "c", "model": "sim-fast"})
    sim.clear_faults()
    redis = aioredis.from_url(redis_url)
    try:

        async def slots_free() -> bool:
            return await redis.zcard(f"{tenant_keys(tenant)}:slots") == 0

        await wait_until(slots_free, "every slot was given back")
    finally:
        await redis.aclose()
    again = await asyncio.gather(*(_call(proc.url, token, {"prompt": "ok", "model": "sim-fast"}) for _ in range(2)))
    assert not any(r.is_error for r in again)


async def test_a_call_gives_its_slot_back_while_its_turns_are_written(
    daemon: Daemon, sim: SimControl, redis_url: str, postgres_url: str, pg_schema: str
) -> None:
    """Once the model has answered, the tenant's slot goes back and its tokens are settled while the thread is
    written, not after: with every write of a thread row held up (a trigger waits for a lock this test holds), the
    call's slot is already free in Redis; once the lock goes, the answer arrives with its turns saved."""
    import psycopg

    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    proc = daemon(
        EXAI_JWT_SECRET=SECRET,
        EXAI_REDIS_URL=redis_url,
        EXAI_RATE_LIMIT_CONCURRENCY="1",
        EXAI_CLIENT_WAIT_SECONDS="0",  # the answer, however long the held write takes: never "still working"
        EXAI_DATABASE_URL=postgres_url,
        EXAI_DATABASE_SCHEMA=pg_schema,
    )
    token = issue_token(SECRET, tenant, ["exai:tools"], 600)
    redis = aioredis.from_url(redis_url)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as db:
        key = await hold_writes(db, pg_schema, "threads", "INSERT OR UPDATE")
        answers: list[CallToolResult] = []
        try:
            async with anyio.create_task_group() as group:

                async def call() -> None:
                    answers.append(await _call(proc.url, token, {"prompt": "held write", "model": "sim-fast"}))

                group.start_soon(call)

                async def writing() -> bool:  # the call's thread write waits for the lock
                    row = await (
                        await db.execute(
                            "SELECT count(*) FROM pg_locks "
                            "WHERE locktype = 'advisory' AND NOT granted AND objid::bigint = %s",
                            (key,),
                        )
                    ).fetchone()
                    return row is not None and row[0] == 1

                await wait_until(writing, "the call's thread write waits for the lock")

                async def slot_free() -> bool:
                    return await redis.zcard(f"{tenant_keys(tenant)}:slots") == 0

                await wait_until(slot_free, "the slot is back while the turns are still being written")
                assert not answers
                await db.execute("SELECT pg_advisory_unlock(%s)", (key,))
        finally:
            await redis.aclose()
    assert len(answers) == 1 and not answers[0].is_error, answers
    assert (answers[0].meta or {}).get("exai/thread_saved") is not False, answers[0]
    assert sim.count("requests:sim-fast") == 1


@pytest.mark.parametrize("shared", [False, True], ids=["local", "redis"])
async def test_a_tenant_past_its_token_budget_still_uses_the_tools_that_ask_no_model(
    daemon: Daemon, sim: SimControl, redis_url: str, shared: bool
) -> None:
    """Every tool was refused `rate_limited_tokens` once the day's budget was spent, `threads` too: the call that
    spent it, whose answer a client that hung up gets back through `threads`, could not be read until the next day
    (an attack round's finding). Only a call that asks a model is refused for the budget now; the refusal of a
    forbidden tool names its own reason, not the budget."""
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    proc = daemon(
        EXAI_JWT_SECRET=SECRET,
        EXAI_RATE_LIMIT_TOKENS_PER_DAY="60",  # the prompt fits; prompt and answer together do not
        **({"EXAI_REDIS_URL": redis_url} if shared else {}),
    )
    token = issue_token(SECRET, tenant, ["exai:tools"], 600)
    async with mcp_client(proc.url, token) as client:
        spent = await client.call_tool("chat", {"prompt": "spend the day's budget", "model": "sim-fast"})
        assert not spent.is_error, spent.content
        thread = (spent.structured_content or {})["continuation_id"]
        refused = await client.call_tool("chat", {"prompt": "one more", "model": "sim-fast"})
        assert tool_error(refused)["code"] == "rate_limited_tokens"
        shown = await client.call_tool("threads", {"action": "show", "thread_id": thread})
        version = await client.call_tool("version", {})
        forbidden = await client.call_tool("status", {})
    assert not shown.is_error and "spend the day's budget" in str(shown.content), shown.content
    assert not version.is_error, version.content
    assert tool_error(forbidden)["code"] == "missing_scope"
    assert sim.count("requests") == 1, "a model was asked past the budget"


@pytest.mark.parametrize("shared", [False, True], ids=["local", "redis"])
async def test_a_tenant_stops_adding_to_threads_once_its_day_of_stored_text_is_spent(
    daemon: Daemon, redis_url: str, shared: bool
) -> None:
    """A workflow step asks no model and costs no tokens, so nothing bounded what a tenant kept in the store but its
    calls per minute: a `planner` step 1 at the text limits kept about 0.8 MB in a new thread, 120 a minute (an
    attack round's finding). The characters a tenant's calls add to threads (turns, and steps kept in a thread's
    state) now count against a day's allowance; once it is spent, only tools that write no thread still answer."""
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    proc = daemon(
        EXAI_JWT_SECRET=SECRET,
        EXAI_RATE_LIMIT_STORED_CHARS_PER_DAY="5000",
        **({"EXAI_REDIS_URL": redis_url} if shared else {}),
    )
    token = issue_token(SECRET, tenant, ["exai:tools", "exai:admin"], 600)
    step = {"step": "x" * 1500, "step_number": 1, "total_steps": 2, "next_step_required": True}
    async with mcp_client(proc.url, token) as client:
        first = await client.call_tool("planner", step)
        second = await client.call_tool("planner", step)  # admitted: 3,000 and more counted, under 5,000
        refused = await client.call_tool("planner", step)
        chat = await client.call_tool("chat", {"prompt": "hello", "model": "sim-fast"})
        listed = await client.call_tool("threads", {"action": "list"})
        status = await client.call_tool("status", {})
    assert not first.is_error and not second.is_error, (first.content, second.content)
    error = tool_error(refused)
    assert error["code"] == "rate_limited_stored_text", error
    assert "5,000 characters stored per day" in error["message"], error
    assert 0 < error["details"]["retry_after_seconds"] <= 86400, error
    assert tool_error(chat)["code"] == "rate_limited_stored_text", "a chat adds to a thread too"
    assert not listed.is_error and not status.is_error, (listed.content, status.content)
    assert len((listed.structured_content or {})["threads"]) == 2, listed.structured_content
    if shared:  # one count for every replica: the step's text twice (the turn and the workflow state) per call
        redis = aioredis.from_url(redis_url)
        try:
            keys = await redis.keys(f"{tenant_keys(tenant)}:stored_text:*")
            assert len(keys) == 1, keys
            count = await redis.get(keys[0])
            assert count is not None and 2 * 2 * 1500 <= int(count) < 2 * 2 * 1500 + 1000, count
        finally:
            await redis.aclose()


def _on_postgres(daemon: Daemon, redis_url: str, postgres_url: str, schema: str, stored_chars: int) -> tuple[Proc, str]:
    """A daemon on PostgreSQL and Redis with the day's stored text at `stored_chars`, and a new tenant's token."""
    proc = daemon(
        EXAI_JWT_SECRET=SECRET,
        EXAI_REDIS_URL=redis_url,
        EXAI_RATE_LIMIT_STORED_CHARS_PER_DAY=str(stored_chars),
        EXAI_DATABASE_URL=postgres_url,
        EXAI_DATABASE_SCHEMA=schema,
    )
    return proc, issue_token(SECRET, f"tenant-{uuid.uuid4().hex[:8]}", ["exai:tools"], 600)


async def test_a_write_the_store_refused_costs_no_stored_text(
    daemon: Daemon, redis_url: str, postgres_url: str, pg_schema: str
) -> None:
    """The characters of a workflow step were counted before its write, so steps the store refused (a database
    failing, a thread that kept changing) spent the day's allowance with nothing kept: a minute of retries during an
    outage could spend the day (a cold review's finding). A step is counted once its turns are written."""
    import psycopg

    proc, token = _on_postgres(daemon, redis_url, postgres_url, pg_schema, stored_chars=5000)
    step = {"step": "x" * 1500, "step_number": 1, "total_steps": 2, "next_step_required": True}
    async with (
        mcp_client(proc.url, token) as client,
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as db,
    ):
        await db.execute(
            f'CREATE FUNCTION "{pg_schema}".refused() RETURNS trigger LANGUAGE plpgsql AS '
            "$$ BEGIN RAISE EXCEPTION 'this store takes no threads now'; END $$"
        )
        await db.execute(
            f'CREATE TRIGGER refused BEFORE INSERT ON "{pg_schema}".threads '
            f'FOR EACH ROW EXECUTE FUNCTION "{pg_schema}".refused()'
        )
        failed = [await client.call_tool("planner", step) for _ in range(3)]
        await db.execute(f'DROP TRIGGER refused ON "{pg_schema}".threads')
        kept = [await client.call_tool("planner", step) for _ in range(2)]
        refused = await client.call_tool("planner", step)
    assert all(r.is_error for r in failed), [r.content for r in failed]
    assert all(not r.is_error for r in kept), [r.content for r in kept]
    assert tool_error(refused)["code"] == "rate_limited_stored_text", "what was kept counts"


async def test_a_workflow_step_sent_again_counts_the_result_its_call_keeps(daemon: Daemon, redis_url: str) -> None:
    """A workflow step sent again unchanged adds nothing to its thread, but its call's record keeps the result for a
    day, and the result echoes the run's issues: 100 resends of a step with one 90,000-character issue kept 9 MB in
    the store with nothing counted (an attack round's finding). A recorded call's result counts too."""
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    proc = daemon(EXAI_JWT_SECRET=SECRET, EXAI_REDIS_URL=redis_url, EXAI_RATE_LIMIT_STORED_CHARS_PER_DAY="12000")
    token = issue_token(SECRET, tenant, ["exai:tools"], 600)
    issue = {"severity": "high", "description": "y" * 3000}
    step = {"step": "look", "step_number": 1, "total_steps": 2, "next_step_required": True, "issues_found": [issue]}
    async with mcp_client(proc.url, token) as client:
        first = await client.call_tool("thinkdeep", step)  # the issue as a turn, in the state and in the result
        assert not first.is_error, first.content
        again = {**step, "continuation_id": (first.structured_content or {})["continuation_id"]}
        results = [await client.call_tool("thinkdeep", again) for _ in range(4)]
    codes = [tool_error(r)["code"] if r.is_error else "ok" for r in results]
    assert codes[0] == "ok" and "rate_limited_stored_text" in codes, codes


async def test_a_thread_keeps_each_file_once_and_its_paths_count(daemon: Daemon, tmp_path: Path) -> None:
    """`files` were kept with the turn as sent: 200 spellings of one 4,000-character path (`/r/./././f`) stored
    820,000 characters a call, none of them counted, and every later call of the thread sorted them with list
    lookups on the event loop (an attack round's finding: another tenant's call waited seconds). A path is kept
    in its normal form, once, and the stored text counts it."""
    (tmp_path / "f.txt").write_text("hello\n")
    spellings = [f"{tmp_path}/{'./' * n}f.txt" for n in range(200)]
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    proc = daemon(
        EXAI_JWT_SECRET=SECRET, EXAI_FILE_ROOTS=str(tmp_path), EXAI_RATE_LIMIT_STORED_CHARS_PER_DAY="50000"
    )  # the 200 spellings take about 53,000 characters
    token = issue_token(SECRET, tenant, ["exai:tools"], 600)
    async with mcp_client(proc.url, token) as client:
        answer = await client.call_tool("chat", {"prompt": "x", "model": "sim-fast", "files": spellings})
        assert not answer.is_error, answer.content
        thread = (answer.structured_content or {})["continuation_id"]
        shown = await client.call_tool("threads", {"action": "show", "thread_id": thread})
        admitted = await client.call_tool("chat", {"prompt": "y", "model": "sim-fast"})
    assert (shown.structured_content or {})["turns"][0]["files"] == [f"{tmp_path}/f.txt"], shown.structured_content
    assert (answer.structured_content or {})["files_included"] == [f"{tmp_path}/f.txt"]
    assert not admitted.is_error, "one path counted, not 200 spellings of it"


async def test_a_workflow_step_counts_what_its_issues_take_in_the_thread(daemon: Daemon) -> None:
    """Only the text of a step's issues counted, while each issue takes its JSON too: 200 issues with empty
    descriptions grew a thread's state by 12,743 characters and counted 2,653 (an attack round's finding)."""
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    proc = daemon(EXAI_JWT_SECRET=SECRET, EXAI_RATE_LIMIT_STORED_CHARS_PER_DAY="20000")
    token = issue_token(SECRET, tenant, ["exai:tools"], 600)
    issues = [{"severity": "low", "description": ""}] * 200
    step = {"step": "s", "step_number": 1, "total_steps": 2, "next_step_required": True, "issues_found": issues}
    async with mcp_client(proc.url, token) as client:
        results = [await client.call_tool("planner", step) for _ in range(3)]
    assert [r.is_error for r in results] == [False, False, True], [r.content for r in results]
    assert tool_error(results[2])["code"] == "rate_limited_stored_text"


async def test_a_chats_turns_count_exactly_its_prompt_answer_and_paths(
    daemon: Daemon, redis_url: str, tmp_path: Path
) -> None:
    """What a chat adds to its thread counts with its settlement, exactly: its prompt, its answer and the paths of
    its files (its kept result waits to be sent with the tenant's next call)."""
    deep = tmp_path.joinpath(*["d" * 200] * 12)  # a path of about 2,500 characters
    deep.mkdir(parents=True)
    path = str(deep / "f.txt")
    (deep / "f.txt").write_text("hello\n")
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    proc = daemon(
        EXAI_JWT_SECRET=SECRET,
        EXAI_REDIS_URL=redis_url,
        EXAI_FILE_ROOTS=str(tmp_path),
        EXAI_RATE_LIMIT_STORED_CHARS_PER_DAY="5000",
    )
    token = issue_token(SECRET, tenant, ["exai:tools"], 600)
    redis = aioredis.from_url(redis_url)
    try:
        async with mcp_client(proc.url, token) as client:
            first = await client.call_tool("chat", {"prompt": "p" * 1000, "model": "sim-fast", "files": [path]})
            assert not first.is_error, first.content
            count = await redis.get(f"{tenant_keys(tenant)}:stored_text:{int(time.time() // 86400)}")
            second = await client.call_tool("chat", {"prompt": "p", "model": "sim-fast"})  # under 5,000: admitted
            refused = await client.call_tool("chat", {"prompt": "p", "model": "sim-fast"})
    finally:
        await redis.aclose()
    answer = len((first.structured_content or {})["answer"])
    assert count is not None and int(count) == 1000 + answer + len(path), (count, answer, len(path))
    assert not second.is_error, "its release carried the first call's kept result"
    assert tool_error(refused)["code"] == "rate_limited_stored_text"


async def test_a_step_cancelled_while_its_write_lands_still_counts(
    daemon: Daemon, redis_url: str, postgres_url: str, pg_schema: str
) -> None:
    """A workflow step's characters were counted after its write returned, so a client that cancelled 10-20 ms after
    sending left the write to land and the count at 0 (an attack round: 40 M characters stored on PostgreSQL, the
    count still 0). They count as the write goes out, and stop counting only when the store refuses it."""
    import psycopg

    proc, token = _on_postgres(daemon, redis_url, postgres_url, pg_schema, stored_chars=5000)
    step = {"step": "x" * 3000, "step_number": 1, "total_steps": 2, "next_step_required": True}
    async with (
        mcp_client(proc.url, token) as client,
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as db,
    ):
        key = await hold_writes(db, pg_schema, "threads", "INSERT OR UPDATE")

        async def held() -> bool:  # the step's write waits for the lock
            row = await (
                await db.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid::bigint = %s",
                    (key,),
                )
            ).fetchone()
            return row is not None and row[0] == 1

        async with anyio.create_task_group() as group:
            group.start_soon(client.call_tool, "planner", step)
            await wait_until(held, "the step's write waits for the lock")
            group.cancel_scope.cancel()  # the client gives up while the write is on its way
        await db.execute("SELECT pg_advisory_unlock(%s)", (key,))

        async def landed() -> bool:
            row = await (await db.execute(f'SELECT count(*) FROM "{pg_schema}".threads')).fetchone()
            return row is not None and row[0] == 1

        await wait_until(landed, "the cancelled step's write to land")
        refused = await client.call_tool("planner", step)
    assert tool_error(refused)["code"] == "rate_limited_stored_text", "the landed step counted"


async def test_an_answers_kept_result_counts_too(daemon: Daemon, redis_url: str) -> None:
    """An answer settles its call while its turns are written, so the result its call's record keeps (for
    `collect`) was never counted, though it holds more than the turns: the answer again, and every file the
    thread names that the call left out (an attack round: 23 continued chats kept 4.7 M characters, counting 16 K).
    It is counted after the settlement, gathered per tenant and sent to Redis once 65,536 characters wait."""
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    proc = daemon(EXAI_JWT_SECRET=SECRET, EXAI_REDIS_URL=redis_url)
    token = issue_token(SECRET, tenant, ["exai:tools"], 600)
    async with mcp_client(proc.url, token) as client:
        answers = [await client.call_tool("chat", {"prompt": "p" * 500, "model": "sim-fast"}) for _ in range(50)]
    turns = sum(500 + len((a.structured_content or {})["answer"]) for a in answers)  # kept: about 2,000 a call
    redis = aioredis.from_url(redis_url)
    try:
        key = f"{tenant_keys(tenant)}:stored_text:{int(time.time() // 86400)}"

        async def results_counted() -> bool:
            count = await redis.get(key)
            return count is not None and int(count) >= turns + 65_536

        await wait_until(results_counted, "the kept results to be counted beside the turns")
    finally:
        await redis.aclose()


async def test_a_daemon_that_stops_sends_the_stored_text_still_waiting(daemon: Daemon, redis_url: str) -> None:
    """An answer's kept result waits to be counted with the tenant's next release; a daemon stopping (SIGTERM) sends
    what waits instead of dropping it (a cold review's finding: nothing sent it but the next call)."""
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    proc = daemon(EXAI_JWT_SECRET=SECRET, EXAI_REDIS_URL=redis_url)
    async with mcp_client(proc.url, issue_token(SECRET, tenant, ["exai:tools"], 600)) as client:
        answer = await client.call_tool("chat", {"prompt": "p" * 300, "model": "sim-fast"})
    turns = 300 + len((answer.structured_content or {})["answer"])
    redis = aioredis.from_url(redis_url)
    key = f"{tenant_keys(tenant)}:stored_text:{int(time.time() // 86400)}"
    try:
        assert await redis_int(redis, key) == turns, "the kept result waits"
        assert proc.stop() == 0
        assert await redis_int(redis, key) > turns + 300, "the kept result (the answer twice) was sent at the stop"
    finally:
        await redis.aclose()
