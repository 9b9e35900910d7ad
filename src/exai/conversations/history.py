"""Rebuilding a thread into a prompt that fits the target model.

The budget is the model's context window minus room for the answer, the system prompt and the new request.
Files referenced anywhere in the thread are embedded once, in their current version: this call's files first
(they may use the whole budget), then those of earlier turns, newest reference first (up to `FILE_SHARE` of it).
All of them together stay under the per-call byte cap (EXAI_MAX_FILE_BYTES_PER_CALL); of earlier turns' files, a
call reads a bounded number (see `_embed_files`). A file is either embedded or listed in `files_skipped` with the
reason; this call's files must be readable. Turns are taken newest first until the budget is spent and then
presented in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from exai.conversations.tokens import count_tokens_async
from exai.errors import ExaiError
from exai.providers.catalogue import ModelInfo
from exai.providers.quirks import max_output_for
from exai.providers.types import Message
from exai.security.files import FileAccess
from exai.storage.base import TurnRecord

SAFETY_MARGIN = 0.05
FILE_SHARE = 0.6  # files of earlier turns get at most this part of the budget; turns get the rest
EARLIER_FILES_READ = 50
"""Earlier turns' files a call reads at most, newest first (a thread may name 10,000: 50 turns of 200)."""
WEIGHED_SHARE = 2
"""A call tokenizes at most this many times EXAI_MAX_FILE_BYTES_PER_CALL of files (what it embeds is at most once)."""
UNREAD_LISTED = 20
"""Earlier turns' files left unread that `files_skipped` names one by one; the last says how many more there were."""


class SkippedFile(BaseModel):
    path: str
    reason: str


@dataclass
class Prompt:
    messages: list[Message]
    turns_included: int
    files_included: list[str] = field(default_factory=list)
    files_skipped: list[SkippedFile] = field(default_factory=list)
    input_tokens: int = 0
    """Everything sent (system prompt, request, files and earlier turns), as counted before sending."""


async def build_prompt(
    *,
    model: ModelInfo,
    system: str,
    request: str,
    turns: list[TurnRecord],
    files: list[str],
    file_access: FileAccess,
    max_output_tokens: int | None = None,
) -> Prompt:
    """The messages to send: earlier turns (as many as fit) and the new request with its files embedded."""
    fixed = await count_tokens_async(system) + await count_tokens_async(request)
    budget = int(model.context_window * (1 - SAFETY_MARGIN)) - max_output_for(model, max_output_tokens) - fixed
    budget = max(budget, 0)

    blocks, included, skipped, spent = await _embed_files(files, turns, budget, model.name, file_access)

    # Turns: newest first while they fit, then back in order.
    kept: list[TurnRecord] = []
    for turn in reversed(turns):
        cost = (turn.tokens if turn.tokens is not None else await count_tokens_async(turn.content)) + 8
        if spent + cost > budget:
            break
        kept.append(turn)
        spent += cost
    kept.reverse()

    messages = _alternate(
        [Message(role="assistant" if t.role == "assistant" else "user", content=t.content) for t in kept]
    )
    final = request if not blocks else request + "\n\n" + "\n\n".join(blocks)
    if messages and messages[-1].role == "user":
        messages[-1] = Message(role="user", content=messages[-1].content + "\n\n" + final)
    else:
        messages.append(Message(role="user", content=final))
    return Prompt(messages, len(kept), included, skipped, spent + fixed)


async def _embed_files(
    files: list[str], turns: list[TurnRecord], budget: int, model: str, file_access: FileAccess
) -> tuple[list[str], list[str], list[SkippedFile], int]:
    """The file blocks to send, the files they hold, those left out (with why) and the tokens they take.

    This call's files first (all read: they must be readable), then those earlier turns named, newest first, each
    once; of those, at most `EARLIER_FILES_READ` are read, and none once their share of the budget or the per-call
    bytes are spent. A file read under several names is weighed once, and files are tokenized for at most
    `WEIGHED_SHARE` times the per-call bytes: a thread may name thousands of files, or one large file by thousands
    of links, and every continued call would read and tokenize them all again."""
    cap, share = file_access.max_total_bytes, int(budget * FILE_SHARE)
    named_now = set(files)
    blocks: list[str] = []
    included: list[str] = []
    skipped: list[SkippedFile] = []
    seen: dict[str, str] = {}  # resolved paths read, embedded or not, and the name each was first read by
    spent = size = weighed = earlier_read = 0
    unread: list[str] = []
    unread_reason = ""
    for path in dict.fromkeys([*files, *(p for turn in reversed(turns) for p in turn.files)]):
        named = path in named_now
        if not named and (earlier_read >= EARLIER_FILES_READ or spent >= share or size >= cap):
            unread_reason = unread_reason or (
                f"not read: a call reads at most {EARLIER_FILES_READ} of its earlier turns' files, newest first"
                if earlier_read >= EARLIER_FILES_READ
                else f"not read: earlier turns' files get {share:,} tokens of {model}'s context and {cap:,} bytes, "
                f"and {spent:,} tokens and {size:,} bytes were used"
            )
            unread.append(path)
            continue
        earlier_read += not named
        try:
            (item,) = await file_access.read([path])
        except ExaiError as exc:
            if named:  # this call's files must be readable: the caller gets the reason
                raise
            skipped.append(SkippedFile(path=path, reason=f"no longer readable: {exc.message}"))
            continue
        if item.path in seen:
            if named and item.path not in included:  # left out under its first name: this one says so
                reason = f"the same file as {seen[item.path][:120]}, left out above"
                skipped.append(SkippedFile(path=path, reason=reason))
            continue
        seen[item.path] = path
        if size + item.size > cap:
            reason = (
                f"{item.size:,} bytes more would take this call's files past {cap:,} bytes "
                "(EXAI_MAX_FILE_BYTES_PER_CALL); pass fewer files or raise the limit"
            )
            skipped.append(SkippedFile(path=path, reason=reason))
            continue
        if weighed + item.size > WEIGHED_SHARE * cap:
            reason = (
                f"not weighed: this call already weighed {weighed:,} bytes of files, and weighs at most "
                f"{WEIGHED_SHARE * cap:,} (twice EXAI_MAX_FILE_BYTES_PER_CALL); name fewer or smaller files"
            )
            skipped.append(SkippedFile(path=path, reason=reason))
            continue
        weighed += item.size
        block = item.numbered()
        cost = await count_tokens_async(block)
        room = (budget if named else share) - spent
        if cost > room:
            reason = (
                f"needs {cost:,} tokens; {max(room, 0):,} were left for files in {model}'s context window; "
                "pass a smaller part of it or use a model with a larger context"
            )
            skipped.append(SkippedFile(path=path, reason=reason))
            continue
        blocks.append(block)
        included.append(item.path)
        spent += cost
        size += item.size
    listed = unread[:UNREAD_LISTED]
    skipped += [SkippedFile(path=path, reason=unread_reason) for path in listed]
    if len(unread) > len(listed):
        more = f"{unread_reason}; {len(unread) - len(listed):,} more earlier files after this one were not read either"
        skipped[-1] = SkippedFile(path=listed[-1], reason=more)
    return blocks, included, skipped, spent


def _alternate(messages: list[Message]) -> list[Message]:
    """Merge neighbours with the same role and start with the user, as every vendor requires."""
    merged: list[Message] = []
    for message in messages:
        if merged and merged[-1].role == message.role:
            merged[-1] = Message(role=message.role, content=merged[-1].content + "\n\n" + message.content)
        else:
            merged.append(message)
    if merged and merged[0].role == "assistant":
        merged.insert(0, Message(role="user", content="(Earlier parts of this conversation were omitted.)"))
    return merged
