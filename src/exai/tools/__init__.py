"""The tools this server offers."""

from __future__ import annotations

from typing import Any

from exai.observability.errors import ValidationError
from exai.tools.base import Tool
from exai.tools.chat import ChatTool
from exai.tools.listmodels import ListModelsTool
from exai.tools.status import StatusTool
from exai.tools.version import VersionTool

ALL_TOOLS: tuple[type[Tool[Any, Any]], ...] = (ChatTool, ListModelsTool, VersionTool, StatusTool)


def enabled_tools(disabled: list[str]) -> list[Tool[Any, Any]]:
    """Instances of every tool not named in EXAI_DISABLED_TOOLS; an unknown name is a configuration error."""
    names = {tool.name for tool in ALL_TOOLS}
    unknown = sorted(set(disabled) - names)
    if unknown:
        raise ValidationError(
            f"EXAI_DISABLED_TOOLS names unknown tools: {', '.join(unknown)}.",
            code="config_invalid",
            remedy=f"Use names from: {', '.join(sorted(names))}.",
        )
    return [tool() for tool in ALL_TOOLS if tool.name not in disabled]
