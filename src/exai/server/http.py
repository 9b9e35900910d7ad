"""The daemon's HTTP app: MCP over Streamable HTTP at /mcp, plus /healthz and /readyz."""

from __future__ import annotations

import ipaddress
from types import FrameType

import uvicorn
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exai.app import Services
from exai.observability.context import new_correlation_id
from exai.observability.errors import AuthError, PermissionDeniedError
from exai.observability.metrics import BREAKER_VALUES
from exai.security.auth import ADMIN_SCOPE
from exai.server.dashboard import DASHBOARD_HTML, dashboard_snapshot
from exai.server.mcp import build_server


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def transport_security(host: str, extra_hosts: list[str]) -> TransportSecuritySettings:
    """DNS-rebinding protection: only our own Host names and browser Origins are accepted."""
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *(h if ":" in h else f"{h}:*" for h in extra_hosts)]
    if not is_loopback(host) and host not in ("0.0.0.0", "::"):
        hosts.append(f"{host}:*")
    origins = [f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


def build_http_app(services: Services) -> Starlette:
    settings = services.settings
    verifier = services.verifier

    async def admin_denied(request: Request) -> JSONResponse | None:
        """None when the caller may see operator data (admin scope; or no auth configured at all)."""
        if verifier is None:
            return None
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        access = await verifier.verify_token(token) if token else None
        if access is None:
            error = AuthError(
                "A valid bearer token is required.",
                code="unauthenticated",
                remedy="Send Authorization: Bearer <token> with the exai:admin scope.",
            )
            return JSONResponse(
                {"error": error.to_dict()},
                status_code=error.http_status,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if ADMIN_SCOPE not in access.scopes:
            error = PermissionDeniedError(
                "This endpoint needs the exai:admin scope.",
                code="missing_scope",
                remedy="Use a token with the exai:admin scope.",
            )
            return JSONResponse({"error": error.to_dict()}, status_code=error.http_status)
        return None

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "uptime_seconds": round(services.stats.uptime(), 1)})

    async def readyz(request: Request) -> JSONResponse:
        providers = sorted(services.router.providers)
        try:
            await services.store.ping()
        except Exception as exc:
            return JSONResponse(
                {
                    "ready": False,
                    "reason": f"storage ({services.store.name}) unreachable: {exc}",
                    "remedy": "check EXAI_DATABASE_URL and the database",
                },
                status_code=503,
            )
        if not providers:
            return JSONResponse(
                {
                    "ready": False,
                    "reason": "no model provider is configured",
                    "remedy": "set a provider API key or CUSTOM_API_URL (see `exai doctor`)",
                },
                status_code=503,
            )
        return JSONResponse(
            {
                "ready": True,
                "providers": providers,
                "storage": services.store.name,
                "tools": [t.name for t in services.tools],
            }
        )

    async def metrics(request: Request) -> Response:
        if denied := await admin_denied(request):
            return denied
        # Breaker states change with time (open -> half-open), so they are read when scraped.
        for (provider, model), state in services.router.breaker_states().items():
            services.metrics.breaker.labels(provider, model).set(BREAKER_VALUES[state])
        return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def alerts(request: Request) -> JSONResponse:
        if denied := await admin_denied(request):
            return denied
        return JSONResponse(services.alerts.snapshot())

    async def dashboard_page(request: Request) -> HTMLResponse:
        return HTMLResponse(DASHBOARD_HTML)

    async def dashboard_data(request: Request) -> JSONResponse:
        if denied := await admin_denied(request):
            return denied
        return JSONResponse(dashboard_snapshot(services))

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/alerts", alerts),
        Route("/dashboard", dashboard_page),
        Route("/dashboard/data", dashboard_data),
    ]
    auth = None
    if verifier is not None:
        public = settings.public_url or f"http://{settings.host}:{settings.port}/mcp"
        auth = AuthSettings(issuer_url=settings.jwt_issuer or public, resource_server_url=public, required_scopes=[])
    server = build_server(services)
    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=transport_security(settings.host, settings.allowed_hosts),
        host=settings.host,
        custom_starlette_routes=routes,
        auth=auth,
        token_verifier=verifier,
    )
    app.add_middleware(RequestIdMiddleware)
    return app


class RequestIdMiddleware:
    """Echo the request's correlation id (X-Request-ID, taken or made) on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode(errors="replace")[:64]
        request_id = (incoming or new_correlation_id()).encode()
        if not incoming:
            scope = {**scope, "headers": [*scope["headers"], (b"x-request-id", request_id)]}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id)]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a shutdown asked for with SIGTERM or SIGINT ends with exit code 0.

    uvicorn re-raises the signal after its graceful shutdown, which makes the process die "by signal";
    for a daemon that finished every call in flight, that is a clean exit.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


async def serve_http(services: Services) -> None:
    """Serve until SIGTERM/SIGINT, then let calls in flight finish within the grace period."""
    settings = services.settings
    config = uvicorn.Config(
        build_http_app(services),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        lifespan="on",
    )
    await services.start()
    try:
        await _GracefulServer(config).serve()
    finally:
        await services.close()
