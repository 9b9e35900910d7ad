"""The correlation id of the request being served, carried in a context variable."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from contextvars import ContextVar

from exai.observability.logging import bind_to_logs

_correlation_id: ContextVar[str | None] = ContextVar("exai_correlation_id", default=None)


def new_correlation_id() -> str:
    return uuid.uuid4().hex[:16]


def current_correlation_id() -> str:
    """The id of the current request; a fresh one when called outside any request."""
    value = _correlation_id.get()
    return value if value is not None else new_correlation_id()


SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def caller_correlation_id(headers: Mapping[str, str]) -> str | None:
    """The caller's id for a request: X-Request-ID, else the W3C traceparent's trace id, if it is a safe one."""
    trace = headers.get("traceparent", "").split("-")
    for candidate in (headers.get("x-request-id"), trace[1] if len(trace) == 4 else None):
        if candidate is not None and SAFE_ID.fullmatch(candidate):
            return candidate
    return None


def bind_correlation_id(value: str | None) -> str:
    """Make `value` the current correlation id, also for every log line.

    A caller's id is kept only when it is 1-64 characters of a safe set (letters, digits, `._:-`): it is sent
    upstream as a header and shown in logs and terminals. Anything else is replaced by a new id, never echoed.
    """
    cid = value if value is not None and SAFE_ID.fullmatch(value) else new_correlation_id()
    _correlation_id.set(cid)
    bind_to_logs(correlation_id=cid)
    return cid
