"""One error hierarchy for the whole server.

Every failure that reaches a client is an `ExaiError`: it carries a category, a stable code, a
message that says what to do, whether retrying can help, and the correlation id of the request.
The MCP surface turns it into a tool error (`isError`) or a JSON-RPC error; HTTP endpoints use
`http_status`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

from exai.observability.context import current_correlation_id


class Category(StrEnum):
    VALIDATION = "validation"
    AUTH = "auth"
    PERMISSION = "permission"
    RATE_LIMIT = "rate_limit"
    NOT_FOUND = "not_found"
    TIMEOUT = "timeout"
    PROVIDER = "provider"
    NETWORK = "network"
    STORAGE = "storage"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    TOOL = "tool"
    INTERNAL = "internal"


class ExaiError(Exception):
    """Base of every error the server reports to a client."""

    category: ClassVar[Category] = Category.INTERNAL
    http_status: ClassVar[int] = 500
    default_retryable: ClassVar[bool] = False
    severity: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        remedy: str | None = None,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.category.value
        self.remedy = remedy
        self.retryable = self.default_retryable if retryable is None else retryable
        self.details = details or {}
        self.correlation_id = current_correlation_id()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "category": self.category.value,
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
            "severity": self.severity,
            "correlation_id": self.correlation_id,
        }
        if self.remedy:
            data["remedy"] = self.remedy
        if self.details:
            data["details"] = self.details
        return data

    def render(self) -> str:
        text = f"[{self.category.value}/{self.code}] {self.message}"
        if self.remedy:
            text += f" Fix: {self.remedy}"
        return f"{text} (correlation id: {self.correlation_id})"


class InvalidInput(ExaiError):
    """The caller's input (arguments, paths, configuration) is wrong; the message says how to fix it."""

    category = Category.VALIDATION
    http_status = 400
    severity = "warning"


class AuthError(ExaiError):
    category = Category.AUTH
    http_status = 401
    severity = "warning"


class PermissionDeniedError(ExaiError):
    category = Category.PERMISSION
    http_status = 403
    severity = "warning"


class RateLimitError(ExaiError):
    category = Category.RATE_LIMIT
    http_status = 429
    default_retryable = True
    severity = "warning"


class NotFoundError(ExaiError):
    category = Category.NOT_FOUND
    http_status = 404
    severity = "warning"


class DeadlineError(ExaiError):
    category = Category.TIMEOUT
    http_status = 504
    default_retryable = True


class ProviderError(ExaiError):
    category = Category.PROVIDER
    http_status = 502
    default_retryable = True


class NetworkError(ExaiError):
    category = Category.NETWORK
    http_status = 502
    default_retryable = True


class StorageError(ExaiError):
    """The conversation store failed or could not be reached in time; nothing of the call was recorded."""

    category = Category.STORAGE
    http_status = 503
    default_retryable = True


class OverloadedError(ExaiError):
    """This replica holds as many calls as it admits: refused before any work, to be retried shortly."""

    category = Category.OVERLOADED
    http_status = 503
    default_retryable = True
    severity = "warning"


class UnavailableError(ExaiError):
    """This replica is shutting down and cut the call: another replica (or this one, restarted) can take it."""

    category = Category.UNAVAILABLE
    http_status = 503
    default_retryable = True
    severity = "warning"


class ToolFailure(ExaiError):
    category = Category.TOOL
    http_status = 500


class InternalError(ExaiError):
    category = Category.INTERNAL
    http_status = 500
    severity = "critical"


class CallLostError(ExaiError):
    """The replica that ran a durable call died before the answer arrived; the work is not run again."""

    category = Category.TOOL
    http_status = 503
    default_retryable = True


class CallCancelledError(ExaiError):
    """A durable call was cancelled (by its client, possibly through another replica) before it finished."""

    category = Category.TOOL
    http_status = 409
    severity = "warning"
