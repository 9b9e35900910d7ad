"""Every workflow tool end to end, failure and resume, isolation, consensus, precommit, profiles."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from exai.conversations.tokens import count_tokens
from exai.server.mcp import build_server
from exai.tools import ALL_TOOLS, PROFILES
from exai.tools.workflow_base import WorkflowTool
from tests.conftest import MakeServices, Proc, SimControl
from tests.helpers import text_of, tool_error

pytestmark = pytest.mark.anyio
EXPERT_TOOLS = ["thinkdeep", "debug", "analyze", "codereview", "refactor", "secaudit", "testgen", "docgen", "tracer"]


def _step(number: int, total: int, final: bool, **extra: Any) -> dict[str, Any]:
    return {
        "step": f"step {number}",
        "step_number": number,
        "total_steps": total,
        "next_step_required": not final,
        "findings": f"finding {number}",
        "model": "sim-smart",
        **extra,
    }


@pytest.mark.parametrize("limits", [{}, {"EXAI_RATE_LIMIT_CONCURRENCY": "2"}], ids=["no limits", "limits"])
@pytest.mark.parametrize("tool", [*EXPERT_TOOLS, "precommit", "planner"])
async def test_workflow_end_to_end(
    sim: SimControl, tmp_path: Path, tool: str, limits: dict[str, str], make_services: MakeServices
) -> None:
    """Every workflow tool, with and without per-tenant limits: with them, the step is recorded before the expert
    is asked (holding the call's slot), and the expert's answer settles the call's tokens."""
    code = tmp_path / "app.py"
    code.write_text("def handler(x):\n    return eval(x)\n")
    services = await make_services(EXAI_TOOL_PROFILE="full", EXAI_FILE_ROOTS=str(tmp_path), **limits)
    assert (services.limiter is not None) == bool(limits)
    extra = {"diff": "diff --git a/app.py b/app.py\n+    return eval(x)"} if tool == "precommit" else {}
    async with Client(build_server(services)) as client:
        first = await client.call_tool(
            tool,
            _step(1, 2, False, relevant_files=[str(code)], issues_found=[{"severity": "high", "description": "eval"}]),
        )
        assert not first.is_error, text_of(first)
        data = first.structured_content
        assert data["status"] == "in_progress" and data["required_actions"] and data["steps_recorded"] == [1]
        final = await client.call_tool(
            tool, _step(2, 2, True, continuation_id=data["continuation_id"], confidence="high", **extra)
        )
    assert not final.is_error, text_of(final)
    result = final.structured_content
    assert result["continuation_id"] == data["continuation_id"] and result["steps_recorded"] == [1, 2]
    assert result["issues_found"] == [{"severity": "high", "description": "eval"}]
    if tool == "planner":
        assert result["status"] == "complete_without_expert" and sim.count("requests") == 0
        return
    assert result["status"] == "complete" and result["model"] == "sim-smart"
    assert result["files_included"] == [str(code)]
    sent = sim.requests(1)[0]["body"]
    user = sent["messages"][-1]["content"]
    assert "Step 1: step 1" in user and "finding 2" in user and "return eval(x)" in user
    workflow = next(t for t in ALL_TOOLS if t.name == tool)
    assert issubclass(workflow, WorkflowTool), workflow
    expert_role = workflow.spec.expert_role
    assert sent["messages"][0] == {"role": "system", "content": expert_role}


async def test_expert_failure_keeps_the_steps_and_resumes(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(CUSTOM_ALLOWED_MODELS="sim-smart", KIMI_API_KEY="", ANTHROPIC_API_KEY="")
    async with Client(build_server(services)) as client:
        first = await client.call_tool("debug", _step(1, 2, False, hypothesis="race in cache"))
        thread = first.structured_content["continuation_id"]
        sim.fault("503")
        failed = await client.call_tool("debug", _step(2, 2, True, continuation_id=thread))
        assert failed.is_error
        error = tool_error(failed)
        assert error["category"] == "provider" and error["details"]["continuation_id"] == thread
        assert error["details"]["steps_kept"] == [1, 2] and "continuation_id" in error["details"]["resume"]
        sim.clear_faults()
        requests_before = sim.count("requests")
        resumed = await client.call_tool("debug", _step(2, 2, True, continuation_id=thread))
        shown = await client.call_tool("threads", {"action": "show", "thread_id": thread})
    assert not resumed.is_error and resumed.structured_content["status"] == "complete"
    assert sim.count("requests") == requests_before + 1, "only the expert call is redone"
    turns = shown.structured_content["turns"]
    assert [(t["role"], t["content"].splitlines()[0]) for t in turns][:2] == [
        ("user", "[debug step 1/2] step 1"),
        ("user", "[debug step 2/2] step 2"),
    ]
    assert len(turns) == 3, "the resent step is not stored twice"


async def test_two_concurrent_workflows_never_see_each_other(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services()
    sim.latency(100)

    async def run(client: Client, secret: str) -> str:
        first = await client.call_tool("debug", {**_step(1, 2, False), "findings": secret})
        thread: str = first.structured_content["continuation_id"]
        await client.call_tool("debug", {**_step(2, 2, True, continuation_id=thread), "findings": secret + "-2"})
        return thread

    async with Client(build_server(services)) as client:
        threads = await asyncio.gather(run(client, "ALPHA-SECRET"), run(client, "BETA-SECRET"))
    assert threads[0] != threads[1]
    expert_calls = [r["body"] for r in sim.requests(10)]
    assert len(expert_calls) == 2
    for body in expert_calls:
        text = json.dumps(body)
        assert ("ALPHA-SECRET" in text) != ("BETA-SECRET" in text), "each expert sees only its own workflow"


@pytest.mark.parametrize("limits", [{}, {"EXAI_RATE_LIMIT_CONCURRENCY": "2"}], ids=["no limits", "limits"])
async def test_consensus_is_concurrent_blind_and_survives_a_failure(
    sim: SimControl, limits: dict[str, str], make_services: MakeServices
) -> None:
    services = await make_services(**limits)
    sim.latency(300, model="sim-fast")
    sim.latency(600, model="sim-smart")
    sim.fault("500", model="sim-large")
    args = {
        "prompt": "Should we adopt PostgreSQL?",
        "models": [
            {"model": "sim-fast", "stance": "for"},
            {"model": "sim-smart", "stance": "against"},
            {"model": "sim-large", "stance": "neutral"},
        ],
    }
    async with Client(build_server(services)) as client:
        result = await client.call_tool("consensus", args)
    data = result.structured_content
    assert not result.is_error and data["succeeded"] == 2 and data["failed"] == 1
    failed = next(o for o in data["opinions"] if not o["ok"])
    assert failed["model"] == "sim-large" and failed["error"]["category"] == "provider"
    assert sim.stats()["max_in_flight"] >= 2, "the models are asked at the same time, not one after another"
    systems = {r["model"]: r["body"]["messages"][0]["content"] for r in sim.requests(20)}
    assert "in favour" in systems["sim-fast"] and "against" in systems["sim-smart"]
    assert sim.count("requests:sim-large") == 3, "a failing model is retried but not replaced by a fallback"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


async def test_precommit_reads_the_diff_inside_roots(
    sim: SimControl, tmp_path: Path, make_services: MakeServices
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "init")
    (repo / "service.py").write_text("PASSWORD = 'hunter2'\n")
    _git(repo, "add", "service.py")
    (repo / "notes.md").write_text("unstaged\n")
    services = await make_services(EXAI_FILE_ROOTS=str(tmp_path))
    async with Client(build_server(services)) as client:
        result = await client.call_tool("precommit", _step(1, 1, True, path=str(repo)))
        outside = await client.call_tool("precommit", _step(1, 1, True, path="/etc"))
    assert not result.is_error, text_of(result)
    sent = json.dumps(sim.requests(1)[0]["body"])
    assert "diff --git a/service.py b/service.py" in sent and "hunter2" in sent
    error = tool_error(outside)
    assert error["code"] == "diff_required" and "git diff" in error["remedy"]


async def test_step_two_without_thread_and_oversized_prompt(sim: SimControl, make_services: MakeServices) -> None:
    services = await make_services(EXAI_MAX_PROMPT_CHARS="100")
    async with Client(build_server(services)) as client:
        orphan = await client.call_tool("analyze", _step(2, 3, False))
        big = await client.call_tool("chat", {"prompt": "x" * 200})
    assert tool_error(orphan)["code"] == "missing_continuation_id"
    assert "files" in tool_error(big)["remedy"]


async def test_tool_profiles_keep_the_listing_small(sim: SimControl, make_services: MakeServices) -> None:
    sizes = {}
    for profile in ("lean", "standard", "full"):
        services = await make_services(EXAI_TOOL_PROFILE=profile)
        async with Client(build_server(services)) as client:
            tools = (await client.list_tools()).tools
        assert {t.name for t in tools} == set(PROFILES[profile])
        listing = json.dumps(
            [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools], separators=(",", ":")
        )  # as it goes over the wire
        sizes[profile] = count_tokens(listing)
    print(f"tools/list tokens per profile: {sizes}")
    assert sizes["lean"] < sizes["standard"] < sizes["full"]
    # 8,000 until every tool also declared task support and pending output; 8,200 until the workflows' step bounds
    assert sizes["standard"] < 8300, sizes


async def test_a_named_file_is_embedded_or_reported_skipped_with_the_reason(
    daemon: Callable[..., Proc], sim: SimControl, tmp_path: Path
) -> None:
    small, huge = tmp_path / "small.py", tmp_path / "huge.py"
    small.write_text("X = 1\n")
    huge.write_text("".join(f"value_{i} = {i} * {i}  # a long enough line of code\n" for i in range(1500)))
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    for path in (first, second):
        path.write_text("Y = 2\n" * 10_000)  # 60,000 bytes each, 120,000 together
    proc = daemon(
        EXAI_FILE_ROOTS=str(tmp_path),
        EXAI_MAX_FILE_BYTES_PER_CALL="100000",
        CUSTOM_MODELS="sim-tiny:20000,sim-large:1000000",
    )

    async def workflow(client: Client, model: str, files: tuple[Path, Path]) -> dict[str, Any]:
        step = await client.call_tool("analyze", _step(1, 2, False, relevant_files=[str(files[0])], model=model))
        thread = step.structured_content["continuation_id"]
        final = await client.call_tool(
            "analyze", _step(2, 2, True, relevant_files=[str(files[1])], model=model, continuation_id=thread)
        )
        assert not final.is_error, text_of(final)
        answer: dict[str, Any] = final.structured_content
        return answer

    async with Client(f"{proc.url}/mcp") as client:
        too_many_tokens = await workflow(client, "sim-tiny", (small, huge))
        too_many_bytes = await workflow(client, "sim-large", (first, second))
    assert too_many_tokens["files_included"] == [str(small)]
    [skipped] = too_many_tokens["files_skipped"]
    assert skipped["path"] == str(huge) and "tokens" in skipped["reason"] and "sim-tiny" in skipped["reason"]
    assert too_many_bytes["files_included"] == [str(first)]
    [skipped] = too_many_bytes["files_skipped"]
    assert skipped["path"] == str(second) and "EXAI_MAX_FILE_BYTES_PER_CALL" in skipped["reason"]
