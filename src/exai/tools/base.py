"""What every tool is: metadata, an input model, an output model, and one stateless `run`.

Tool objects hold no per-call state: everything a call needs arrives in its `ToolContext`.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, TypeVar, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, JsonValue, model_validator

from exai.config import DEFAULT_MAX_PROMPT_CHARS
from exai.conversations.tokens import count_tokens_async
from exai.errors import ExaiError
from exai.observability.events import ModelCall
from exai.observability.logging import get_logger
from exai.providers.router import CUT
from exai.security.call_tokens import CallTokens
from exai.uncancelled import to_the_end

if TYPE_CHECKING:
    from mcp_types import CallToolResult

    from exai.conversations.state import StateChange
    from exai.conversations.threads import Conversations, Thread
    from exai.observability.health import Health
    from exai.observability.stats import Stats
    from exai.providers.router import Attempt, Category, RoutePlan, Router, RouteResult
    from exai.providers.types import GenerateRequest, Usage
    from exai.security.files import FileAccess
    from exai.security.limits import RateLimiter
    from exai.server.call_records import CallRunner
    from exai.storage.base import ThreadRecord, TurnRecord

InputT = TypeVar("InputT", bound=BaseModel)
OutputT = TypeVar("OutputT", bound=BaseModel)
log = get_logger(__name__)


TEXT_LIMIT = DEFAULT_MAX_PROMPT_CHARS
"""Characters in one text field, unless the field sets its own limit (prompts follow EXAI_MAX_PROMPT_CHARS)."""
PROMPT_LIMIT: dict[str, JsonValue] = {"x-exai-limit": "prompt"}
"""Marks a field limited by EXAI_MAX_PROMPT_CHARS: checked by the tool, advertised in the listing's schema."""
PROMPT_CEILING = 10_000_000
"""What a prompt field accepts at most whatever the setting says (a request body is capped far below anyway)."""
LIST_LIMIT = 200
"""Items in one list argument."""


def _distinct_paths(paths: list[str]) -> list[str]:
    """Each path once, an absolute one in its normal form (`/r/./a/../f` is `/r/f`), in the order given: what is read
    and what a thread keeps. A relative path is left as sent, for the file check to refuse with its own message."""
    return list(dict.fromkeys(os.path.normpath(p) if os.path.isabs(p) else p for p in paths))


FilePaths = Annotated[list[str], AfterValidator(_distinct_paths)]
"""A list of file paths, as `_distinct_paths` leaves it (a thread kept 200 spellings of one file per turn)."""
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class ToolInput(BaseModel):
    """Base of tool inputs: unknown fields are refused, so a typo gets an error instead of being ignored.

    Every text field has a length limit and every list a size limit; NUL and other control characters (tabs and
    newlines aside) are refused anywhere in the arguments: they are never what a caller meant to send, and they
    break storage and terminals downstream. A number field refuses `true` and `false` (the schema says number;
    Python's lax rules would read them as 1 and 0: `max_output_tokens: true` paid for a one-token answer).
    """

    model_config = ConfigDict(extra="forbid", str_max_length=TEXT_LIMIT)

    @model_validator(mode="before")
    @classmethod
    def _plain_text_and_bounded_lists(cls, data: Any) -> Any:
        _check_arguments(data, "")
        if isinstance(data, dict):
            for name in _number_fields(cls):
                if isinstance(data.get(name), bool):
                    raise ArgumentError(name, f"{str(data[name]).lower()} is not a number; send a number")
        return data


@cache
def _number_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of `model` that take a number and not a boolean (their names as sent)."""

    def kinds(annotation: Any) -> set[Any]:
        return {annotation, *(kind for arg in get_args(annotation) for kind in kinds(arg))}

    return tuple(
        field.alias or name
        for name, field in model.model_fields.items()
        if kinds(field.annotation) & {int, float} and bool not in kinds(field.annotation)
    )


class ArgumentError(ValueError):
    """A bad value somewhere in a tool's arguments, with the path of the field it was found in."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path or "(arguments)"


def _check_arguments(value: Any, path: str, depth: int = 0) -> None:
    """Refuse control characters anywhere, lists over LIST_LIMIT, and nested text over TEXT_LIMIT.

    Top-level text fields are limited by their own schema (so a prompt can follow EXAI_MAX_PROMPT_CHARS); text
    inside lists and objects (a workflow issue's description, a consensus stance prompt) is limited here.
    """
    if isinstance(value, str):
        if depth > 1 and len(value) > TEXT_LIMIT:
            raise ArgumentError(path, f"{len(value):,} characters; at most {TEXT_LIMIT:,} are accepted")
        if found := _CONTROL.search(value):
            raise ArgumentError(
                path,
                f"contains the control character U+{ord(found.group()):04X} at position {found.start()}; "
                "send plain text (tabs, newlines and carriage returns are fine)",
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_arguments(item, f"{path}.{key}" if path else str(key), depth + 1)
    elif isinstance(value, list):
        if len(value) > LIST_LIMIT:
            raise ArgumentError(path, f"{len(value)} items; at most {LIST_LIMIT} are accepted")
        for index, item in enumerate(value):
            _check_arguments(item, f"{path}.{index}", depth + 1)


# A model call's tokens in a tool's output, as the upstream reported them. No docstring: it would be a description
# in the output schema of every tool that returns usage, paid for in each client's context.
class UsageOut(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool | None = None
    """True when the upstream reported no usage: the tokens are what the call is charged, counted by the server."""

    @classmethod
    def of(cls, usage: Usage) -> UsageOut:
        return cls(
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, estimated=usage.estimated or None
        )


@dataclass(frozen=True)
class ToolSettings:
    """The settings tools read: their own limits, nothing else of the configuration."""

    max_prompt_chars: int
    max_file_bytes_per_call: int
    client_wait_seconds: float


@dataclass(frozen=True)
class ToolServices:
    """What tools may use, built once by the composition root (`app.py`). A tool reaches it only through its
    `ToolContext`, whose methods say what it may do with each part."""

    router: Router
    conversations: Conversations
    files: FileAccess
    limiter: RateLimiter | None
    calls: CallRunner
    stats: Stats
    health: Health
    tool_names: tuple[str, ...]
    settings: ToolSettings


class ToolContext:
    """One call's view of the server: what the tool may use, as methods, and what the call did (model calls, token
    reservations, upstream time, thread) for the pipeline to account for once the tool returns."""

    def __init__(
        self,
        services: ToolServices,
        correlation_id: str,
        progress: Callable[[float, float | None, str | None], Awaitable[None]],
        log: Callable[[str, str], Awaitable[None]],
        wants_progress: bool = False,
        tenant: str = "local",
        visible_tools: list[str] | None = None,
    ) -> None:
        self._services = services
        self.correlation_id = correlation_id
        self.progress = progress
        self.log = log
        self.wants_progress = wants_progress
        self.tenant = tenant
        self.visible_tools = visible_tools
        """The tools the caller may call; None: every enabled tool."""
        self.model_calls: list[ModelCall] = []
        self.thread_id: str | None = None
        self.tokens: CallTokens | None = None
        """The call's slot and token reservations (set when it is admitted; None without limits)."""
        self.unsaved_thread: str | None = None
        """The thread whose new turns could not be written although a model had answered (see `record_turns`)."""
        self.unsaved_because: ExaiError | None = None
        """Why they could not: the store failed, the thread filled up, kept changing, or was deleted meanwhile."""
        self._asking = 0
        self._answers = 0
        self._settling: asyncio.Task[None] | None = None
        """The settlement sent while an answer's turns are written (see `record_turns`), kept until it ends."""
        self.upstream_seconds = 0.0
        """Time this call's model requests spent upstream (every attempt, failed ones too): the gateway-overhead
        metric is the call's time minus this."""

    # ----- what a tool may read ---------------------------------------------------------------------------------
    @property
    def settings(self) -> ToolSettings:
        return self._services.settings

    @property
    def files(self) -> FileAccess:
        """The file roots this server may read, with their limits."""
        return self._services.files

    @property
    def router(self) -> Router:
        """The models that can be routed to, for listings; a call asks them through `plan` and `generate`."""
        return self._services.router

    @property
    def calls(self) -> CallRunner:
        """The durable call records (long calls, pending answers)."""
        return self._services.calls

    @property
    def stats(self) -> Stats:
        return self._services.stats

    @property
    def health(self) -> Health:
        return self._services.health

    @property
    def tool_names(self) -> tuple[str, ...]:
        """Every enabled tool, whether or not the caller may call it (see `visible_tools`)."""
        return self._services.tool_names

    # ----- conversations ----------------------------------------------------------------------------------------
    async def open_thread(self, continuation_id: str | None, title: str, adding: int = 1) -> Thread:
        """The caller's thread to continue (with room for `adding` turns) or a new one; audited against it."""
        thread = await self._services.conversations.open_or_start(continuation_id, self.tenant, title, adding)
        self.thread_id = thread.id
        return thread

    async def read_thread(self, thread_id: str) -> Thread:
        """One of the caller's threads, to show (a full thread too)."""
        return await self._services.conversations.read(thread_id, self.tenant)

    async def list_threads(self, limit: int) -> list[ThreadRecord]:
        return await self._services.conversations.list(self.tenant, limit)

    def check_room(self, thread: Thread, adding: int) -> None:
        """Refuse before anything is spent when the thread has no room for `adding` more turns."""
        self._services.conversations.check_room(thread, adding)

    async def record_turns(
        self, thread: Thread, turns: list[TurnRecord], tool: str, change: StateChange | None = None
    ) -> None:
        """Commit the turns (and the state change) to the thread before the answer goes out.

        Once a model has answered, nothing that stops the write costs the caller the answer it paid for: a store
        that fails, a thread that other calls filled up, kept changing or deleted while the model worked. The call
        returns the answer marked as not saved to the thread (`unsaved_thread`, `unsaved_because`); with nothing
        paid, the error is raised (a refusal before anything was spent).

        The characters the write adds count against the tenant's stored text of the day as the write goes out, and
        no longer once the store refused it (a call cancelled meanwhile keeps them counted: its write may have
        landed). When the call's models have answered and none is being asked (`answered`: the turns hold a paid
        answer, not a workflow step that an expert call follows), the call's slot goes back and its tokens and text
        are settled (with Redis, one round trip) while the turns are written: the answer waits for the longer of
        the two, not for both one after the other (its text then stays counted whatever the write's outcome, as
        does that of a write after the settlement). A model asked after that is refused (`CallTokens.reserve`)."""
        writing = 0

        def about_to_write(chars: int) -> None:
            nonlocal writing
            if self.tokens is None:
                return
            self.tokens.add_stored_text(chars)
            writing = chars
            if self.answered and not self.tokens.closed:
                self._settling = asyncio.create_task(self.tokens.close())

        try:
            await self._services.conversations.record(thread, turns, tool, change, before_write=about_to_write)
        except ExaiError as exc:
            if self.tokens is not None and writing and not self.tokens.closed:
                self.tokens.add_stored_text(-writing)  # refused: nothing of it was kept
            if not self.paid:
                raise
            log.warning("answer_not_saved_to_thread", thread_id=thread.id, code=exc.code, tool=tool)
            self.unsaved_thread, self.unsaved_because = thread.id, exc
        finally:
            if self._settling is not None:
                await to_the_end(self._settling)  # a cancelled call still waits for it: never torn by a shutdown

    @property
    def paid(self) -> bool:
        """Whether a model has answered this call (its answer is paid for, whatever happens next)."""
        return self._answers > 0

    @property
    def answered(self) -> bool:
        """A model has answered and none is being asked: the call is finishing with an answer it paid for, so a
        cancellation from now on would only throw that answer away (the call runner lets it finish instead)."""
        return self._asking == 0 and self.paid

    @contextmanager
    def asking_models(self) -> Iterator[None]:
        """While open, the call is still asking models (`consensus` holds it over all its members): a cancellation
        cuts it, and `answered` is False."""
        self._asking += 1
        try:
            yield
        finally:
            self._asking -= 1

    # ----- models -----------------------------------------------------------------------------------------------
    def plan(
        self, requested: str, category: Category = "balanced", needs_images: bool = False, **options: Any
    ) -> RoutePlan:
        """The models this call may use, in order, selected once (see `Router.plan`)."""
        return self._services.router.plan(requested, category, needs_images, tenant=self.tenant, **options)

    def _upstream_attempts(self, attempts: list[Attempt]) -> None:
        self.upstream_seconds += sum(a.latency_ms for a in attempts if a.outcome != "breaker_open") / 1000

    async def generate(
        self, request: GenerateRequest, plan: RoutePlan, input_tokens: int, **options: Any
    ) -> RouteResult:
        """Ask the models of `plan` (selected once, by `plan`); every model call is kept for accounting.

        The prompt's `input_tokens` are counted against the tenant's daily budget before the model is asked, so
        concurrent or many-model calls cannot overspend it by more than their answers; once the call is done the
        reservation is settled with exactly the usage the upstream reported. Only what it did not report is
        estimated: the prompt from `input_tokens`, the answer by counting its text (a stream without usage).
        An attempt that reached the upstream and was then cut on our side (its time limit, or a cancellation of the
        call) is charged what the vendor bills for it: the prompt (`input_tokens`) and whatever had streamed back
        during it. Nothing else of a failed call is charged (an upstream error, a request never sent), and a
        failed or cancelled call is still kept (one audit row per model call).
        """
        services = self._services
        claim = await self.tokens.reserve(input_tokens) if self.tokens is not None else None
        attempts: list[Attempt] = []

        def seen(made: list[Attempt]) -> None:
            attempts.extend(made)
            self._upstream_attempts(made)

        try:
            with self.asking_models():
                result = await services.router.generate(
                    request, plan=plan, tenant=self.tenant, on_attempts=seen, **options
                )
            self._answers += 1  # paid for from here on, before anything else is awaited (see `answered`)
        except BaseException as exc:  # failed, or cancelled: charged what its cut attempts cost
            if isinstance(exc, ExaiError) or any(a.billed for a in attempts):  # the status page and audit show it
                failure = _failure_of(exc)

                async def charge() -> None:
                    unanswered = await unanswered_model_call(plan, attempts, input_tokens, failure, services.router)
                    self.model_calls.append(unanswered)
                    if claim is not None:
                        claim.used = unanswered.tokens

                await to_the_end(charge())  # a cancellation that cut the call must not cut its counting too
            raise
        response = result.response
        info = services.router.catalogue.get(response.model)
        usage = response.usage
        charged_in = usage.input_tokens or input_tokens
        charged_out = usage.output_tokens or await count_tokens_async(response.text + (response.reasoning or ""))
        if (charged_in, charged_out) != (usage.input_tokens, usage.output_tokens):  # the caller sees its charge
            response.usage = usage.model_copy(
                update={"input_tokens": charged_in, "output_tokens": charged_out, "estimated": True}
            )
        cut = await cut_attempts(attempts, input_tokens, services.router)
        if claim is not None:
            claim.used = charged_in + charged_out + cut.input_tokens + cut.output_tokens
        self.model_calls.append(
            ModelCall(
                requested=plan.requested,
                provider=response.provider,
                model=response.model,
                input_tokens=charged_in + cut.input_tokens,
                output_tokens=charged_out + cut.output_tokens,
                cost_usd=round((info.cost(charged_in, charged_out) if info else 0.0) + cut.cost_usd, 8),
                latency_ms=round(response.upstream_latency_ms, 2),
                fallbacks=tuple(result.fallbacks),
                retries=result.retries,
            )
        )
        return result


def _failure_of(error: BaseException) -> str:
    """What an unanswered model call records as its failure: the error's category, or "cancelled"."""
    if isinstance(error, ExaiError):
        return error.category.value
    return CUT if isinstance(error, asyncio.CancelledError) else "internal"


@dataclass
class CutCost:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


async def cut_attempts(attempts: list[Attempt], input_tokens: int, router: Router) -> CutCost:
    """What the attempts cut on our side after their request reached the upstream cost, as the vendor bills them:
    each its prompt as we counted it and what it had streamed back."""
    cost = CutCost()
    for attempt in attempts:
        if not attempt.billed:
            continue
        output_tokens = await count_tokens_async(attempt.streamed) if attempt.streamed else 0
        info = router.catalogue.get(attempt.model)
        cost.input_tokens += input_tokens
        cost.output_tokens += output_tokens
        cost.cost_usd += info.cost(input_tokens, output_tokens) if info else 0.0
    return cost


async def unanswered_model_call(
    plan: RoutePlan, attempts: list[Attempt], input_tokens: int, failure: str, router: Router
) -> ModelCall:
    """The model call a failure or a cancellation (`failure` "cancelled") stands for: the last model tried, its
    fallbacks and retries (as for an answered call: every attempt after the first), or the model asked when none
    was tried; charged only what its cut attempts cost (`cut_attempts`)."""
    tried = [a for a in attempts if a.outcome != "breaker_open"]
    if not tried:
        first = plan.first
        return ModelCall(plan.requested, first.provider, first.name, 0, 0, 0.0, 0.0, failure=failure)
    cut = await cut_attempts(tried, input_tokens, router)
    models = list(dict.fromkeys(a.model for a in tried))
    last = tried[-1]
    return ModelCall(
        requested=plan.requested,
        provider=last.provider,
        model=last.model,
        input_tokens=cut.input_tokens,
        output_tokens=cut.output_tokens,
        cost_usd=round(cut.cost_usd, 8),
        latency_ms=round(sum(a.latency_ms for a in tried), 2),
        fallbacks=tuple(models[1:]),
        retries=len(tried) - 1,
        failure=failure,
    )


@dataclass
class ToolResult(Generic[OutputT]):
    text: str
    data: OutputT


class Tool(Generic[InputT, OutputT]):
    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    input_model: ClassVar[type[BaseModel]]
    output_model: ClassVar[type[BaseModel] | None]
    """None: the tool returns whole results (`collect` returns another call's), and declares no output schema."""
    read_only: ClassVar[bool] = True
    calls_model: ClassVar[bool] = False
    writes_threads: ClassVar[bool] = False
    """Whether a call of this tool adds to a thread (refused once the tenant's stored text of the day is spent)."""
    holds_slot: ClassVar[bool] = True
    """Whether a call of this tool takes a slot of the tenant's limits (not `collect`: the call it waits for has)."""

    async def run(self, args: InputT, ctx: ToolContext) -> ToolResult[OutputT] | CallToolResult:
        raise NotImplementedError


def input_schema(model: type[BaseModel], prompt_chars: int) -> dict[str, Any]:
    """A tool's input schema, compact and truthful: every limit enforced is stated.

    Lists get `maxItems` (LIST_LIMIT), text inside lists and objects `maxLength` (TEXT_LIMIT), and prompt fields
    the configured EXAI_MAX_PROMPT_CHARS, as validation and the tools enforce them.
    """

    def limit(node: Any) -> Any:  # a JSON value: object, array or scalar
        if isinstance(node, list):
            return [limit(v) for v in node]
        if not isinstance(node, dict):
            return node
        node = {k: limit(v) for k, v in node.items()}
        if node.pop("x-exai-limit", None) == "prompt":
            node["maxLength"] = prompt_chars
        elif node.get("type") == "string" and not {"maxLength", "enum", "const"} & node.keys():
            node["maxLength"] = TEXT_LIMIT
        if node.get("type") == "array" and "maxItems" not in node:
            node["maxItems"] = LIST_LIMIT
        return node

    schema: dict[str, Any] = limit(compact_schema(model))
    return schema


def compact_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema without what costs a client's context and says nothing.

    Auto-generated titles go, `anyOf: [X, null]` becomes plain X (the field is optional because it is not
    required), and empty defaults (null, []) go. The best-known peer's tool listing cost about 15,000 tokens.
    """

    def strip(node: Any) -> Any:  # a JSON value: object, array or scalar
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

    schema: dict[str, Any] = strip(model.model_json_schema())
    return schema
