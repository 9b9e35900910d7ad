"""What every tool is: metadata, an input model, an output model, and one stateless `run`.

Tool objects hold no per-call state: everything a call needs arrives in its `ToolContext`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from exai.observability.events import ModelCall

if TYPE_CHECKING:
    from exai.app import Services
    from exai.conversations.threads import Thread
    from exai.providers.router import RouteResult
    from exai.providers.types import GenerateRequest

InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT", bound=BaseModel)


class ToolInput(BaseModel):
    """Base of tool inputs: unknown fields are refused, so a typo gets an error instead of being ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class ToolContext:
    services: Services
    correlation_id: str
    progress: Callable[[float, float | None, str | None], Awaitable[None]]
    log: Callable[[str, str], Awaitable[None]]
    wants_progress: bool = False
    tenant: str = "local"
    model_calls: list[ModelCall] = field(default_factory=list)
    thread_id: str | None = None

    async def open_thread(self, continuation_id: str | None, title: str) -> Thread:
        """The caller's thread to continue, or a new one; the call is audited against it."""
        thread = await self.services.conversations.open_or_start(continuation_id, self.tenant, title)
        self.thread_id = thread.id
        return thread

    async def generate(self, request: GenerateRequest, **options: Any) -> RouteResult:
        """Ask a model through the router; every answered call is kept for accounting (tokens, cost, audit)."""
        result = await self.services.router.generate(request, **options)
        response = result.response
        info = self.services.catalogue.get(response.model)
        usage = response.usage
        self.model_calls.append(
            ModelCall(
                requested=options.get("model", "auto"),
                provider=response.provider,
                model=response.model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost_usd=round(info.cost(usage.input_tokens, usage.output_tokens), 8) if info else 0.0,
                latency_ms=round(response.upstream_latency_ms, 2),
                fallbacks=tuple(result.fallbacks),
                retries=result.retries,
            )
        )
        return result


@dataclass
class ToolResult(Generic[OutputT]):
    text: str
    data: OutputT


class Tool(Generic[InputT, OutputT]):
    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    input_model: ClassVar[type[BaseModel]]
    output_model: ClassVar[type[BaseModel]]
    read_only: ClassVar[bool] = True
    calls_model: ClassVar[bool] = False

    async def run(self, args: InputT, ctx: ToolContext) -> ToolResult[OutputT]:
        raise NotImplementedError


def compact_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema without what costs a client's context and says nothing.

    Auto-generated titles go, `anyOf: [X, null]` becomes plain X (the field is optional because it is not
    required), and empty defaults (null, []) go. The best-known peer's tool listing cost about 15,000 tokens.
    """

    def strip(node: Any) -> Any:
        if isinstance(node, list):
            return [strip(v) for v in node]
        if not isinstance(node, dict):
            return node
        node = {k: strip(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
        options = node.get("anyOf")
        if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
            kept = next(o for o in options if o != {"type": "null"})
            node = {**{k: v for k, v in node.items() if k != "anyOf"}, **kept}
        if node.get("default", 0) is None or node.get("default", 0) == []:
            del node["default"]
        return node

    return strip(model.model_json_schema())
