"""Token counts from a real tokenizer (o200k_base, shipped inside the bpe-openai package: no download).

The package builds its tables in pure Python (about a second of CPU, holding the GIL), so loading them while the
server starts would slow its answer to `initialize`. `warm_up` loads them on a background thread a moment after
start; a count that comes first loads them on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

_OFFLOAD_CHARS = 100_000  # longer texts are counted off the event loop
_PIECE_CHARS = 500_000  # the tokenizer refuses a text of a million characters or more: count long ones in pieces
WARM_UP_DELAY_SECONDS = 1.0
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


def warm_up(delay: float = WARM_UP_DELAY_SECONDS) -> None:
    """Load the token tables on a background thread once start-up is over, before the first call needs them."""
    timer = threading.Timer(delay, _encoding)
    timer.name, timer.daemon = "exai-tokenizer-warm-up", True
    timer.start()


def count_tokens(text: str) -> int:
    """Tokens in `text`; a long text is counted in pieces cut at whitespace (at most a token off per piece)."""
    encoding, total, start = _encoding(), 0, 0
    while start < len(text):
        end = start + _PIECE_CHARS
        if end < len(text):
            cut = text.rfind(" ", start + _PIECE_CHARS // 2, end)
            end = cut if cut > start else end
        total += len(encoding.encode_ordinary(text[start:end]))
        start = end
    return total


async def count_tokens_async(text: str) -> int:
    if _loaded is None or len(text) > _OFFLOAD_CHARS:
        return await asyncio.to_thread(count_tokens, text)
    return count_tokens(text)
