"""`version`: what this server is and what it offers."""

from __future__ import annotations

import platform
from importlib.metadata import version as package_version

from pydantic import BaseModel

from exai import __version__
from exai.tools.base import Tool, ToolContext, ToolInput, ToolResult


class VersionInput(ToolInput):
    pass


class VersionOutput(BaseModel):
    name: str
    version: str
    mcp_sdk: str
    python: str
    transports: list[str]
    providers: list[str]
    tools: list[str]


class VersionTool(Tool[VersionInput, VersionOutput]):
    name = "version"
    title = "Server version"
    description = "Version, transports, configured providers and the tools this caller may use."
    input_model = VersionInput
    output_model = VersionOutput

    async def run(self, args: VersionInput, ctx: ToolContext) -> ToolResult[VersionOutput]:
        data = VersionOutput(
            name="exai-mcp-server",
            version=__version__,
            mcp_sdk=package_version("mcp"),
            python=platform.python_version(),
            transports=["stdio", "streamable-http"],
            providers=sorted(ctx.router.providers),
            tools=[t for t in ctx.tool_names if ctx.visible_tools is None or t in ctx.visible_tools],
        )
        text = (
            f"EX-AI MCP Server {data.version} (MCP SDK {data.mcp_sdk}, Python {data.python})\n"
            f"providers: {', '.join(data.providers) or 'none'}\ntools: {', '.join(data.tools)}"
        )
        return ToolResult(text=text, data=data)
