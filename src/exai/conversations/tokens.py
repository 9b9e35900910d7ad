"""Token counts from a real tokenizer (o200k_base, shipped inside the bpe-openai package: no download).

The tables take about half a second to load, so `warm_up` loads them on a background thread at start:
start-up does not wait for them, and the first count waits only for what is left.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

_OFFLOAD_CHARS = 100_000  # longer texts are counted off the event loop
_lock = threading.Lock()
_loaded: Any = None


def _encoding() -> Any:
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                import bpe_openai

                _loaded = bpe_openai.get_encoding("o200k_base")
    return _loaded


def warm_up() -> None:
    """Start loading the token tables on a background thread, before the first request needs them."""
    threading.Thread(target=_encoding, name="exai-tokenizer-warm-up", daemon=True).start()


def count_tokens(text: str) -> int:
    return len(_encoding().encode_ordinary(text)) if text else 0


async def count_tokens_async(text: str) -> int:
    if len(text) > _OFFLOAD_CHARS:
        return await asyncio.to_thread(count_tokens, text)
    return count_tokens(text)
