"""Vendor contract fixtures: request answers in the shapes each vendor documents, plain, streamed and errors.

Each file under `fixtures/` holds one vendor's fixtures; each fixture names its sources (API references, official
SDK test data) and the date they were read, the answer as it comes over the wire (`json`, or `sse` for a stream)
and what the wire code must make of it (`expect`). `tests/test_vendor_contracts.py` replays every one through the
simulator (`POST /_sim/faults {"kind": "replay", "fixture": "zai/chat_thinking"}`) into the real wire code.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

VENDORS = ("moonshot", "zai", "openai", "anthropic", "openrouter")


@cache
def all_fixtures() -> dict[str, dict[str, Any]]:
    """Every fixture by its name, `vendor/name`."""
    found: dict[str, dict[str, Any]] = {}
    for vendor in VENDORS:
        text = resources.files("exai.testing").joinpath("fixtures", f"{vendor}.json").read_text(encoding="utf-8")
        for fixture in json.loads(text)["fixtures"]:
            found[f"{vendor}/{fixture['name']}"] = {**fixture, "vendor": vendor}
    return found


def fixture(name: str) -> dict[str, Any] | None:
    return all_fixtures().get(name)
