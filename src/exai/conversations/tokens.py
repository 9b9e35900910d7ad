"""Token counts from a real tokenizer (o200k_base, shipped inside the bpe-openai package: no download)."""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Any

import bpe_openai

_OFFLOAD_CHARS = 100_000  # longer texts are counted off the event loop


@lru_cache(maxsize=1)
def _encoding() -> Any:
    return bpe_openai.get_encoding("o200k_base")


def warm_up() -> None:
    """Load the token tables (about half a second) before the first request needs them."""
    _encoding()


def count_tokens(text: str) -> int:
    return len(_encoding().encode_ordinary(text)) if text else 0


async def count_tokens_async(text: str) -> int:
    if len(text) > _OFFLOAD_CHARS:
        return await asyncio.to_thread(count_tokens, text)
    return count_tokens(text)
