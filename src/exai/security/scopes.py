"""The scopes a token may carry, so `exai token issue` and `exai token apikey` refuse a misspelt one (`exai:tool`
without a name, `exai:tool:chatt`) instead of minting a token that can call nothing."""

from __future__ import annotations

from exai.security.auth import ADMIN_SCOPE, METRICS_SCOPE, TOOLS_SCOPE
from exai.tools import ALL_TOOLS

TOOL_SCOPE_PREFIX = "exai:tool:"


def known_scopes() -> list[str]:
    return [TOOLS_SCOPE, ADMIN_SCOPE, METRICS_SCOPE, *(f"{TOOL_SCOPE_PREFIX}{tool.name}" for tool in ALL_TOOLS)]


def unknown_scopes(scopes: list[str]) -> list[str]:
    known = set(known_scopes())
    return [scope for scope in scopes if scope not in known]
