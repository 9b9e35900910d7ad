"""Model ids from an upstream's listing are data from outside: only printable ones are taken in.

An id with a control character (an ANSI escape, a newline, a bidi override) would reach clients raw in
`listmodels`, `exai models`, errors and logs; such ids are refused where listings are read, so nothing shows them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import TypeGuard

MAX_MODEL_ID = 200


def acceptable_model_id(value: object) -> TypeGuard[str]:
    """True for a string a client can be shown as it is: printable, no control or format characters, not huge."""
    if not isinstance(value, str) or not value or len(value) > MAX_MODEL_ID:
        return False
    return all(unicodedata.category(ch)[0] not in ("C", "Z") or ch == " " for ch in value) and value.strip() == value


def acceptable_ids(values: Iterable[object]) -> tuple[list[str], int]:
    """The acceptable ids, in order and without repeats, and how many were refused."""
    kept: list[str] = []
    seen: set[str] = set()
    refused = 0
    for value in values:
        if not acceptable_model_id(value):
            refused += 1
        elif value not in seen:
            seen.add(value)
            kept.append(value)
    return kept, refused
