"""Seeded random JSON-RPC messages and tool arguments: the same seed gives the same cases."""

from __future__ import annotations

import random
from typing import Any

METHODS = ("initialize", "tools/list", "tools/call", "ping", "resources/list", "prompts/get", "x/unknown", "")
TOOLS = ("chat", "debug", "consensus", "threads", "planner", "listmodels", "no-such-tool")
FIELDS = ("prompt", "model", "continuation_id", "files", "step", "step_number", "total_steps", "models", "action")


def value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value: wrong types, huge and negative numbers, odd strings, nesting."""
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 2**63, -(2**70), 3.5e308, 1e-300])
    if choice == 3:
        return "".join(rng.choice("aé\x00\u202e'\"{}<>/\\..%$") for _ in range(rng.randrange(0, 40)))
    if choice == 4:
        return rng.choice(["", "auto", "../../etc/passwd", "/etc/shadow", "sim-fast", "x" * 5000])
    if choice == 5:
        return rng.random()
    if choice == 6:
        return [value(rng, depth + 1) for _ in range(rng.randrange(0, 5))]
    return {rng.choice(FIELDS): value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}


def tool_arguments(rng: random.Random) -> tuple[str, dict[str, Any]]:
    return rng.choice(TOOLS), {rng.choice(FIELDS): value(rng) for _ in range(rng.randrange(0, 6))}


def message(rng: random.Random) -> Any:
    """A JSON-RPC-shaped body (or not quite): bad ids, missing fields, batches, wrong types."""
    body: dict[str, Any] = {"jsonrpc": rng.choice(["2.0", "2.0", "1.0", None]), "method": rng.choice(METHODS)}
    if rng.random() < 0.8:
        body["id"] = rng.choice([1, "x", None, -5, 2**64, [], {}])
    if rng.random() < 0.7:
        body["params"] = value(rng)
    if rng.random() < 0.1:
        return [body, value(rng)]
    return body if rng.random() < 0.9 else value(rng)
