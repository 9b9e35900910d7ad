"""Token counts from a real tokenizer (o200k_base, from the bpe-openai package's Rust tokenizer: no download).

Only the Rust tokenizer is loaded, by its extension module's file. Importing the package itself runs its
tiktoken-compatible layer, which builds the merge tables of three encodings in pure Python at import (1.3-2.7 s of
CPU holding the GIL, and about 80 MB of a daemon's memory) although counting never reads them: the count is the Rust
tokenizer's, on the text as the package's own `encode_ordinary` passes it (special tokens counted as text, lone
surrogates replaced). `warm_up` loads it on a background thread a moment after start (about 0.1 s); a count that
comes first loads it on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path
from typing import Any

from exai.providers.types import storable

ENCODING = "o200k_base"
_OFFLOAD_CHARS = 100_000  # longer texts are counted off the event loop
WARM_UP_DELAY_SECONDS = 1.0
_lock = threading.Lock()
_loaded: Any = None


def _rust_tokenizer() -> Any:
    """The package's `_bindings` extension, loaded from its file without running the package's `__init__`."""
    spec = importlib.util.find_spec("bpe_openai")  # finds the package; does not import it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("bpe-openai is not installed (pip install bpe-openai)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    library = next(folder.glob("_bindings*.so"), None) or next(folder.glob("_bindings*.pyd"))
    loader = importlib.machinery.ExtensionFileLoader("bpe_openai._bindings", str(library))
    module_spec = importlib.util.spec_from_file_location(loader.name, library, loader=loader)
    assert module_spec is not None
    module = importlib.util.module_from_spec(module_spec)
    loader.exec_module(module)
    sys.modules.setdefault(loader.name, module)  # an import of the package later finds it: never initialised twice
    return module.tokenizer_for_encoding(ENCODING)


def _encoding() -> Any:
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                _loaded = _rust_tokenizer()
    return _loaded


def warm_up(delay: float = WARM_UP_DELAY_SECONDS) -> None:
    """Load the tokenizer on a background thread once start-up is over, before the first call needs it."""
    timer = threading.Timer(delay, _encoding)
    timer.name, timer.daemon = "exai-tokenizer-warm-up", True
    timer.start()


def count_tokens(text: str) -> int:
    """Tokens in `text`, as `encode_ordinary` of o200k_base counts them."""
    try:
        return int(_encoding().count(text))
    except UnicodeEncodeError:  # lone surrogates (valid in JSON, not in UTF-8): replaced, as the package does
        return int(_encoding().count(storable(text)))


async def count_tokens_async(text: str) -> int:
    if _loaded is None or len(text) > _OFFLOAD_CHARS:
        return await asyncio.to_thread(count_tokens, text)
    return count_tokens(text)
