"""The one logging set-up of the program: structlog over the standard library.

Logs go to stderr (stdout belongs to the MCP stdio transport). JSON when `json` is true,
coloured key/value lines for a terminal otherwise. Secrets are kept out at three depths: values of keys that
look like secrets are masked before rendering; tracebacks never show local variables; and every rendered record
(traceback included) has the configured secret values and any URL's password replaced before it is written.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

# structlog imports rich (and with it pygments and attrs, about a tenth of a second of CPU) only to offer rich
# tracebacks, which these logs never use (tracebacks are plain, see configure_logging); every stdio session paid for
# it before answering `initialize`. Unless something loaded rich already, structlog is imported with rich hidden, so
# it takes its no-rich path; rich itself stays importable for whoever needs it later (`exai models`, typer).
_HIDE_RICH = "rich" not in sys.modules and "structlog" not in sys.modules
if _HIDE_RICH:
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError while this is set
try:
    import structlog
finally:
    if _HIDE_RICH:
        del sys.modules["rich"]

_SECRET_KEY = re.compile(r"(api_?key|token|secret|password|authorization)", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/\-]{8,}=*")  # 8+: not `Bearer realm=...` of a challenge
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")
_KEY_SHAPED = re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}")  # OpenAI-style keys (sk-..., sk-proj-..., sk-ant-...)
_secret_values: set[str] = set()
MIN_SECRET_LENGTH = 6


def register_secret(value: str | None) -> None:
    """Never write `value` to a log (API keys, JWT secrets, database, Redis and webhook URLs)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        _secret_values.add(value)


def redact(text: str) -> str:
    """`text` with every registered secret, every URL password, every `Bearer` credential and every `sk-…`-shaped
    key replaced by ***. The logs use it on every rendered record; provider errors on every piece of upstream text
    they carry (an upstream may echo our key in its error body)."""
    for secret in sorted(_secret_values, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(r"\1***@", text)
    text = _BEARER.sub(r"\1***", text)
    return _KEY_SHAPED.sub("sk-***", text)


def _redacting(renderer: Any) -> Any:
    def render(logger: Any, name: str, event: dict[str, Any]) -> str:
        return redact(renderer(logger, name, event))

    return render


def _mask_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in list(event.items()):
        if _SECRET_KEY.search(key) and value:
            event[key] = "***"
        elif isinstance(value, str) and "Bearer" in value:
            event[key] = _BEARER.sub(r"\1***", value)
    return event


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    """Route structlog and stdlib logging through one processor chain to stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _mask_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    if json:
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _redacting(renderer)],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # DEBUG is for our own loggers: libraries log request and response bodies at debug level (sse_starlette every
    # event it streams, mcp every JSON-RPC message, database drivers their rows), so they stay at INFO at most.
    logging.getLogger("exai").setLevel(level.upper())
    root.setLevel(max(logging.INFO, logging.getLevelNamesMapping()[level.upper()]))
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "anthropic", "mcp", "sse_starlette", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Python warnings (a library's deprecation notice) become log records: with EXAI_LOG_JSON a raw warning on
    # stderr would break the JSON lines a log shipper reads.
    logging.captureWarnings(True)


def bind_to_logs(**values: Any) -> None:
    """Show these values on every log line of the current context (task or request)."""
    structlog.contextvars.bind_contextvars(**values)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)  # configured above to make stdlib loggers
    return logger
