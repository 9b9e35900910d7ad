"""The README's claims that can drift from the code: every tool and every argument is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mcp import Client

from exai.app import Services
from exai.config import load_settings
from exai.conversations.tokens import count_tokens
from exai.server.mcp import build_server
from exai.tools import enabled_tools

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_tool_and_argument_is_in_the_readme_tools_table() -> None:
    text = README.read_text()
    section = text[text.index("## Tools\n") : text.index("\n## ", text.index("## Tools\n") + 1)]
    rows = {
        name: line
        for line in section.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`(\w+)`", line.split("|")[1])
    }
    for tool in enabled_tools("full", []):
        assert tool.name in rows, f"README's Tools table does not list `{tool.name}`"
        row = rows[tool.name] + (rows["thinkdeep"] if tool.name == "precommit" else "")
        for argument in tool.input_model.model_json_schema().get("properties", {}):
            assert f"`{argument}`" in row, f"README's Tools table does not document `{tool.name}`'s `{argument}`"


@pytest.mark.anyio
@pytest.mark.parametrize("profile", ["lean", "standard", "full"])
async def test_tool_profile_sizes_in_the_readme_are_measured(profile: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stated = re.search(rf"`{profile}` ≈ ([\d,]+)", README.read_text())
    assert stated, f"README states no size for the {profile} profile"
    monkeypatch.setenv("EXAI_TOOL_PROFILE", profile)
    services = Services.build(load_settings())
    async with Client(build_server(services)) as client:
        listing = await client.list_tools()
    measured = count_tokens(
        json.dumps(listing.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":"))
    )
    claimed = int(stated.group(1).replace(",", ""))
    assert abs(measured - claimed) <= claimed * 0.05, f"{profile}: README says ≈ {claimed}, measured {measured}"
