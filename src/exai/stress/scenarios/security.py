"""security: bad tokens, limits across two replicas, tenant isolation, path traversal and fuzzing, under load."""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from pathlib import Path

import httpx2
import jwt

from exai.stress import fuzz
from exai.stress.context import Context
from exai.stress.driver import call, session
from exai.stress.results import ScenarioResult
from exai.stress.target import AUDIENCE, STRESS_SECRET, Daemon, run_token
from exai.stress.workload import LoadPlan, run_plan

NAME = "security"
SUMMARY = (
    "While a background load runs on two replicas sharing Redis: forged, expired, alg:none and wrong-audience tokens; "
    "one tenant's per-minute limit hit from both replicas; one tenant reaching for another's thread; path "
    "traversal in `files`; seeded random JSON-RPC bodies and tool arguments."
)
CRITERION = (
    "100% of bad tokens refused; the limit exact across 2 replicas; no tenant reads another's thread; traversal "
    "refused; fuzzing gives no crash, no 5xx, no hang."
)
LIMIT = 10
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "stress", "version": "1"}},
}


def _token(tenant: str) -> str:
    return run_token(tenant, admin=False)


def _bad_tokens(rng: random.Random) -> dict[str, str]:
    now = int(time.time())
    good = {"sub": f"t{rng.random()}", "scope": "exai:tools", "iat": now, "exp": now + 600, "aud": AUDIENCE}
    return {
        "forged": jwt.encode(good, secrets.token_hex(32), algorithm="HS256"),
        "expired": jwt.encode({**good, "iat": now - 900, "exp": now - 300}, STRESS_SECRET, algorithm="HS256"),
        "alg none": jwt.encode(good, "", algorithm="none"),  # PyJWT ignores the key of an unsigned token
        "wrong audience": jwt.encode({**good, "aud": "someone-else"}, STRESS_SECRET, algorithm="HS256"),
    }


async def _bad_token_probes(ctx: Context, result: ScenarioResult, daemons: list[Daemon], rounds: int) -> None:
    rng = random.Random(12)
    refused = sent = 0
    async with httpx2.AsyncClient(timeout=30) as http:
        for n in range(rounds):
            for token in _bad_tokens(rng).values():
                url = daemons[n % 2].mcp_url
                response = await http.post(
                    url, json=INITIALIZE, headers={**HEADERS, "Authorization": f"Bearer {token}"}
                )
                sent += 1
                refused += response.status_code == 401
    result.check("bad tokens refused", "100%", f"{refused}/{sent}", refused == sent)


async def _limits_across_replicas(ctx: Context, result: ScenarioResult, daemons: list[Daemon], tenant: str) -> None:
    token = _token(tenant)

    async def burst(daemon: Daemon) -> list[str]:
        async with session(daemon.mcp_url, token) as client:
            args = {"prompt": "limit", "model": "sim-fast"}
            outcomes = await asyncio.gather(*(call(client, "chat", args, ctx.epoch) for _ in range(LIMIT + 2)))
        return [o.sample.category for o in outcomes]

    categories = [c for batch in await asyncio.gather(*(burst(d) for d in daemons)) for c in batch]
    admitted, limited = categories.count(""), categories.count("rate_limit")
    exact = admitted == LIMIT and limited == len(categories) - LIMIT
    result.check("per-tenant limit across 2 replicas", f"{LIMIT} admitted", f"{admitted} ok, {limited} limited", exact)


async def _isolation(ctx: Context, result: ScenarioResult, daemons: list[Daemon], prefix: str) -> None:
    alice, bob = _token(f"{prefix}-alice"), _token(f"{prefix}-bob")
    async with session(daemons[0].mcp_url, alice) as client:
        started = await call(client, "chat", {"prompt": "alice's secret plan", "model": "sim-fast"}, ctx.epoch)
    thread = started.data.get("continuation_id", "")
    async with session(daemons[1].mcp_url, bob) as client:
        cont = await call(client, "chat", {"prompt": "tell me", "continuation_id": thread}, ctx.epoch)
        shown = await call(client, "threads", {"action": "show", "thread_id": thread}, ctx.epoch)
        listed = await call(client, "threads", {}, ctx.epoch)
    leaked = cont.sample.ok or shown.sample.ok or thread in json.dumps(listed.data)
    result.check(
        "no tenant reads another's thread", "0 reads", "read!" if leaked else "0 reads", bool(thread) and not leaked
    )


async def _traversal(ctx: Context, result: ScenarioResult, daemon: Daemon, root: Path, tenant: str) -> None:
    paths = [
        f"{root}/../../etc/passwd",
        "/etc/passwd",
        f"{root}/a/../../../etc/hostname",
        "etc/passwd",
        f"{root}/\x00x",
    ]
    async with session(daemon.mcp_url, _token(tenant)) as client:
        outcomes = [
            await call(client, "chat", {"prompt": "read", "model": "sim-fast", "files": [p]}, ctx.epoch) for p in paths
        ]
    sent = json.dumps(await ctx.sim.requests(200))
    refused = sum(not o.sample.ok and o.sample.category in ("permission", "validation") for o in outcomes)
    passed = refused == len(paths) and "root:x:0" not in sent
    result.check("path traversal refused", f"{len(paths)}/{len(paths)}", f"{refused}/{len(paths)}", passed)


async def _fuzz(ctx: Context, result: ScenarioResult, daemon: Daemon, tenant: str, cases: int) -> None:
    rng = random.Random(2024)
    token = _token(tenant)
    server_errors = hangs = 0
    async with httpx2.AsyncClient(timeout=60, headers={**HEADERS, "Authorization": f"Bearer {token}"}) as http:
        for _ in range(cases):
            body = json.dumps(fuzz.message(rng))
            try:
                response = await http.post(daemon.mcp_url, content=body)
            except httpx2.TimeoutException:
                hangs += 1
                result.notes.append(f"fuzz: no answer in 60 s to {body[:300]}")
                continue
            if response.status_code >= 500:
                server_errors += 1
                result.notes.append(f"fuzz: HTTP {response.status_code} for {body[:300]}")
    async with session(daemon.mcp_url, token) as client:
        for _ in range(cases):
            tool, args = fuzz.tool_arguments(rng)
            outcome = await call(client, tool, args, ctx.epoch, ceiling=60, marked=False)
            category = outcome.sample.category  # a JSON-RPC error (client:MCPError, e.g. unknown tool) is a refusal
            if category in ("hang", "internal") or (category.startswith("client:") and category != "client:MCPError"):
                hangs += category == "hang"
                server_errors += category != "hang"
                result.notes.append(f"fuzz: {category} for {tool} {json.dumps(args)[:300]}: {outcome.data}"[:600])
    result.figures["fuzz cases"] = 2 * cases
    result.check(
        "fuzzing: no 5xx, no internal error, no hang",
        "0",
        f"{server_errors} errors, {hangs} hangs",
        not (server_errors or hangs),
    )


async def run(ctx: Context, result: ScenarioResult) -> None:
    if not ctx.target.local:
        result.skipped = "forges tokens with the daemons' secret and configures limits: needs --target local"
        return
    assert ctx.target.group is not None
    prefix = f"{ctx.target.isolation.tenant}-sec"
    root = ctx.target.group.workdir / "files"
    root.mkdir(exist_ok=True)
    (root / "ok.txt").write_text("fine\n")
    env = {
        "EXAI_JWT_SECRET": STRESS_SECRET,
        "EXAI_JWT_AUDIENCE": AUDIENCE,
        "EXAI_REDIS_URL": ctx.target.isolation.redis_url,
        "EXAI_TENANT_LIMITS": json.dumps({f"{prefix}-limited": {"requests_per_minute": LIMIT}}),
        "EXAI_FILE_ROOTS": str(root),
        "EXAI_CALL_DEADLINE_SECONDS": "30",
    }
    await ctx.sim.reset()
    await ctx.sim.latency(20)
    daemons = [ctx.target.daemon("security-a", "sqlite", **env), ctx.target.daemon("security-b", "sqlite", **env)]
    load = LoadPlan(daemons[0].mcp_url, 4, 4, 10_000, until=time.time() + 3600, token=_token(f"{prefix}-load"))
    background = asyncio.create_task(run_plan(load, result.samples.append, ctx.epoch))
    try:
        steps = [
            ("bad tokens", _bad_token_probes(ctx, result, daemons, ctx.scale(250, 10))),
            ("limits", _limits_across_replicas(ctx, result, daemons, f"{prefix}-limited")),
            ("isolation", _isolation(ctx, result, daemons, prefix)),
            ("traversal", _traversal(ctx, result, daemons[1], root, f"{prefix}-files")),
            ("fuzzing", _fuzz(ctx, result, daemons[1], f"{prefix}-fuzz", ctx.scale(500, 40))),
        ]
        for number, (label, step) in enumerate(steps):
            ctx.progress(number, len(steps), label)
            await step
    finally:
        stopped = time.monotonic() - ctx.epoch  # calls cut off by stopping the load below are not its errors
        background.cancel()
        await asyncio.gather(background, return_exceptions=True)
    alive = all([await _healthy(d) for d in daemons])
    background_errors = sum(not s.ok for s in result.samples if s.t < stopped)
    result.figures["background calls"] = len(result.samples)
    result.check("daemons alive afterwards", "/healthz 200", str(alive), alive)
    result.check("background load errors", "0", str(background_errors), background_errors == 0)
    for daemon in daemons:
        ctx.target.stop_daemon(daemon)


async def _healthy(daemon: Daemon) -> bool:
    async with httpx2.AsyncClient() as http:
        try:
            return (await http.get(f"{daemon.url}/healthz", timeout=10)).status_code == 200
        except httpx2.HTTPError:
            return False
