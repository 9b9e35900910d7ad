"""The README's claims that can drift from the code: every tool and every argument is documented."""

from __future__ import annotations

import re
from pathlib import Path

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
