"""The tools this server offers, and the profiles that choose among them."""

from __future__ import annotations

from typing import Any

from exai.errors import InvalidInput
from exai.tools.base import Tool
from exai.tools.challenge import ChallengeTool
from exai.tools.chat import ChatTool
from exai.tools.collect import CollectTool
from exai.tools.consensus import ConsensusTool
from exai.tools.listmodels import ListModelsTool
from exai.tools.precommit import PrecommitTool
from exai.tools.status import StatusTool
from exai.tools.threads import ThreadsTool
from exai.tools.version import VersionTool
from exai.tools.workflow_tools import (
    AnalyzeTool,
    CodeReviewTool,
    DebugTool,
    DocGenTool,
    PlannerTool,
    RefactorTool,
    SecAuditTool,
    TestGenTool,
    ThinkDeepTool,
    TracerTool,
)

ALL_TOOLS: tuple[type[Tool[Any, Any]], ...] = (
    ChatTool,
    ThinkDeepTool,
    DebugTool,
    AnalyzeTool,
    CodeReviewTool,
    PrecommitTool,
    ConsensusTool,
    PlannerTool,
    ChallengeTool,
    RefactorTool,
    SecAuditTool,
    TestGenTool,
    DocGenTool,
    TracerTool,
    ThreadsTool,
    ListModelsTool,
    VersionTool,
    StatusTool,
    CollectTool,
)
PROFILES: dict[str, frozenset[str]] = {
    "lean": frozenset({"chat", "thinkdeep", "codereview", "threads", "listmodels", "collect"}),
    "standard": frozenset(
        {
            "chat",
            "thinkdeep",
            "debug",
            "analyze",
            "codereview",
            "precommit",
            "consensus",
            "planner",
            "challenge",
            "threads",
            "listmodels",
            "version",
            "status",
            "collect",
        }
    ),
    "full": frozenset(tool.name for tool in ALL_TOOLS),
}


def enabled_tools(profile: str, disabled: list[str]) -> list[Tool[Any, Any]]:
    """The profile's tools minus EXAI_DISABLED_TOOLS; an unknown name is a configuration error."""
    names = {tool.name for tool in ALL_TOOLS}
    unknown = sorted(set(disabled) - names)
    if unknown:
        raise InvalidInput(
            f"EXAI_DISABLED_TOOLS names unknown tools: {', '.join(unknown)}.",
            code="config_invalid",
            remedy=f"Use names from: {', '.join(sorted(names))}.",
        )
    chosen = PROFILES[profile]
    return [tool() for tool in ALL_TOOLS if tool.name in chosen and tool.name not in disabled]
