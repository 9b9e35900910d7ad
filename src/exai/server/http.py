"""The daemon's HTTP app: MCP over Streamable HTTP at /mcp, plus /healthz and /readyz."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any
from urllib.parse import urlparse

import uvicorn
from mcp.server.auth.middleware.bearer_auth import RequireAuthMiddleware
from mcp.server.auth.routes import build_resource_metadata_url, cors_middleware
from mcp.server.auth.settings import AuthSettings
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Lifespan, Scope

from exai.app import Services
from exai.errors import AuthError, PermissionDeniedError
from exai.observability.logging import get_logger
from exai.observability.metrics import BREAKER_VALUES
from exai.security.auth import (
    ADMIN_SCOPE,
    COLLECT_TOOL,
    METRICS_SCOPE,
    TOOLS_SCOPE,
    request_access,
    request_tenant,
)
from exai.server.auth_errors import ExplainedRequireAuth, has_bearer, why_unauthenticated
from exai.server.cancellation import CallCancellations, StatelessCancellation
from exai.server.connection_guard import guarded_h11_protocol, raise_file_limit
from exai.server.correlation import RequestIdMiddleware
from exai.server.dashboard import DASHBOARD_HTML, dashboard_snapshot
from exai.server.draining import CUT_SECONDS, InFlightPosts, end_streams_when_idle
from exai.server.header_checks import AcceptCheck, FreshStreams, HostOriginCheck
from exai.server.internals import (
    forget_captured_signals,
    frame_messages_without_bodies,
    keep_streams_open_on_signal,
    serve_queued_connections,
)
from exai.server.mcp import build_server
from exai.server.refusals import INVALID_REQUEST, error_response
from exai.server.request_body import BodyBudget, BodyDeadline, CompleteBody
from exai.server.request_ids import InFlightIds, MessageCheck
from exai.server.sessions import SessionQuota
from exai.server.start_line import start_fields
from exai.server.stateless import PostOnly

log = get_logger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def on_any_port(host: str) -> str:
    """A Host pattern for `host` on any port: `name:*`, `[fd00::7]:*` for an IPv6 address (bracketed in a Host
    header, as `fd00::7:*` never was: a daemon on an IPv6 address refused its own URL with 421), or as given when it
    already names a port (`team-host:443`)."""
    if host.startswith("["):
        return host if "]:" in host else f"{host}:*"
    if host.count(":") > 1:  # an IPv6 address without brackets
        return f"[{host}]:*"
    return host if ":" in host else f"{host}:*"


def allowed_hosts_and_origins(host: str, extra_hosts: list[str]) -> tuple[list[str], list[str]]:
    """DNS-rebinding protection: our own Host names, and browser Origins on them."""
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *(on_any_port(h) for h in extra_hosts)]
    if not is_loopback(host) and host not in ("0.0.0.0", "::"):
        hosts.append(on_any_port(host))
    return hosts, [f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts]


def protected_resource_route(resource: str, authorization_server: str | None) -> Route:
    """RFC 9728 metadata for /mcp; it names an authorization server only when one is configured.

    The daemon verifies tokens but issues none, so naming itself would send OAuth clients to a server that
    does not exist.
    """
    metadata: dict[str, object] = {
        "resource": resource,
        "bearer_methods_supported": ["header"],
        "scopes_supported": [TOOLS_SCOPE, ADMIN_SCOPE, METRICS_SCOPE],
    }
    if authorization_server:
        metadata["authorization_servers"] = [authorization_server]

    def handle(request: Request) -> JSONResponse:
        return JSONResponse(metadata, headers={"Cache-Control": "public, max-age=3600"})

    path = urlparse(str(build_resource_metadata_url(AnyHttpUrl(resource)))).path
    return Route(path, endpoint=cors_middleware(handle, ["GET", "OPTIONS"]), methods=["GET", "OPTIONS"])


def build_http_app(services: Services) -> Starlette:
    settings = services.settings
    verifier = services.verifier
    frame_messages_without_bodies()

    async def admin_denied(request: Request, also: str | None = None) -> JSONResponse | None:
        """None when the caller may see operator data (admin scope, or the scope `also`; or no auth configured).

        The token was already verified (and a bad one counted) by the authentication middleware.
        """
        if verifier is None:
            return None
        access = request_access(request.scope)
        if access is None:
            error = AuthError(
                f"{why_unauthenticated(request.scope)}."
                if has_bearer(request.scope)
                else "A valid bearer token is required.",
                code="unauthenticated",
                remedy=f"Send Authorization: Bearer <token> with the exai:admin scope{f' or {also}' if also else ''}.",
            )
            return error_response(error, request.scope, www_authenticate='Bearer error="invalid_token"')
        if ADMIN_SCOPE not in access.scopes and (also is None or also not in access.scopes):
            needed = "the exai:admin scope" + (f" or {also}" if also else "")
            denied = PermissionDeniedError(
                f"This endpoint needs {needed}.", code="missing_scope", remedy=f"Use a token with {needed}."
            )
            return error_response(denied, request.scope)
        return None

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "uptime_seconds": round(services.stats.uptime(), 1)})

    async def readyz(request: Request) -> JSONResponse:
        if services.admission.draining:
            return JSONResponse(
                {
                    "ready": False,
                    "reason": "draining",
                    "remedy": "this replica is shutting down: send new calls to another one",
                },
                status_code=503,
            )
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
        if services.discovery.problem and not services.router.available_models():
            remedy = (
                "start the server at CUSTOM_API_URL (its models are used as soon as it answers), or set CUSTOM_MODELS"
            )
            return JSONResponse(
                {"ready": False, "reason": services.discovery.problem, "remedy": remedy}, status_code=503
            )
        ready: dict[str, object] = {"ready": True, "providers": providers, "storage": services.store.name}
        access = request_access(request.scope)
        if verifier is None or (access is not None and ADMIN_SCOPE in access.scopes):
            # Probes read the status alone; the tool list is for the operator: an anonymous caller, or a narrow
            # token, learns no tool it may not call from here (tools/list names those).
            ready["tools"] = [t.name for t in services.tools]
        return JSONResponse(ready)

    async def metrics(request: Request) -> Response:
        if denied := await admin_denied(request, also=METRICS_SCOPE):
            return denied
        # Breaker states change with time (open -> half-open), so they are read when scraped.
        for (provider, model), breaker in services.router.breakers().items():
            everyone = "closed" if breaker.open_for else breaker.state  # some tenants' own failures page no one
            services.metrics.breaker.labels(provider, model).set(BREAKER_VALUES[everyone])
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
    public = settings.public_url or f"http://{settings.host}:{settings.port}/mcp"
    if verifier is not None:
        # Our verifier checks the audience itself (EXAI_JWT_AUDIENCE); API keys carry no resource indicator.
        auth = AuthSettings(
            issuer_url=public, resource_server_url=public, required_scopes=[], validate_token_resource=False
        )
    server = build_server(services)
    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        # Host and Origin are checked for every endpoint by HostOriginCheck below.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host=settings.host,
        custom_starlette_routes=routes,
        auth=auth,
        token_verifier=verifier,
        stateless_http=settings.stateless_http,
        session_idle_timeout=settings.session_idle_seconds,
    )
    cancellations = CallCancellations(services.redis if settings.stateless_http else None)
    app.router.routes[:] = [
        guard_mcp(route, services, server.session_manager, cancellations)
        for route in app.router.routes
        if not (auth and route_path(route).startswith("/.well-known/oauth-protected-resource"))
    ]
    if auth:
        app.router.routes.append(protected_resource_route(public, settings.authorization_server_url))
    app.router.lifespan_context = with_cancellations(app.router.lifespan_context, cancellations)
    app.add_exception_handler(404, no_such_path)
    hosts, origins = allowed_hosts_and_origins(settings.host, settings.allowed_hosts)
    app.add_middleware(BodyDeadline, seconds=settings.http_body_timeout_seconds)
    app.add_middleware(HostOriginCheck, allowed_hosts=hosts, allowed_origins=origins)
    app.add_middleware(RequestIdMiddleware)
    return app


async def no_such_path(request: Request, exc: Exception) -> JSONResponse:
    """A path the daemon does not serve: say where MCP is (a client pointed at the bare host and port got only "Not
    Found"). In the JSON-RPC error form, which MCP clients show to their users (the SDK dropped any other body)."""
    path = ascii(request.url.path[:80])
    message = (
        f"Nothing is served at {path}. MCP clients connect to /mcp (e.g. {request.base_url}mcp); health at /healthz "
        "and /readyz, metrics at /metrics, the status page at /dashboard."
    )
    error = {"code": INVALID_REQUEST, "message": message, "data": {"category": "not_found", "code": "not_found"}}
    return JSONResponse({"jsonrpc": "2.0", "id": None, "error": error}, status_code=404)


def route_path(route: BaseRoute) -> str:
    return getattr(route, "path", "")


def with_cancellations(lifespan: Lifespan[Starlette], cancellations: CallCancellations) -> Lifespan[Starlette]:
    """The app's lifespan, listening for the other replicas' cancellations while the app runs."""

    @asynccontextmanager
    async def both(app: Starlette) -> AsyncIterator[Any]:
        async with lifespan(app) as state, cancellations.listening():
            yield state

    return both


def guard_mcp(
    route: BaseRoute, services: Services, manager: StreamableHTTPSessionManager, cancellations: CallCancellations
) -> BaseRoute:
    """Put the MCP endpoint behind its request checks: Accept, per-tenant sessions, unique request ids.

    Stateless mode opens no sessions, so it has no session quota; it takes POST only (see server/stateless.py), and
    cancels calls by request id itself (server/cancellation.py).
    The checks run after authentication (inside the SDK's RequireAuthMiddleware), so a request without a valid
    token is answered 401 before anything else, and every checked request has its tenant.
    """
    if not isinstance(route, Route) or route.path != "/mcp":
        return route
    settings = services.settings
    auth_enabled = services.verifier is not None

    def tenant(scope: Scope) -> str | None:
        return request_tenant(scope, auth_enabled)

    budget = BodyBudget(settings.body_bytes_per_tenant, settings.body_bytes_total)

    def checked(app: ASGIApp) -> ASGIApp:
        if settings.stateless_http:
            cancelling = StatelessCancellation(app, cancellations, tenant)
            return AcceptCheck(PostOnly(CompleteBody(MessageCheck(cancelling), budget, tenant)))
        quota = SessionQuota(
            CompleteBody(MessageCheck(InFlightIds(app, tenant)), budget, tenant),
            manager,
            services.limiter,
            tenant,
            settings.max_sessions_per_tenant,
            settings.session_idle_seconds,
        )
        if manager.event_store is not None:  # resuming would work then: FreshStreams must not hide it
            raise RuntimeError("an event store is configured: drop FreshStreams from the /mcp route")
        return AcceptCheck(FreshStreams(quota))

    if isinstance(route.app, RequireAuthMiddleware):
        required = route.app
        route.app = ExplainedRequireAuth(
            checked(required.app),
            required.required_scopes,
            required.resource_metadata_url,
            tools=[tool.name for tool in services.tools if tool.name != COLLECT_TOOL],
        )
    else:
        route.app = checked(route.app)
    return route


class _GracefulServer(uvicorn.Server):
    """uvicorn's server, except that a shutdown asked for with SIGTERM or SIGINT ends with exit code 0, first
    answers /readyz with 503 `draining` for the notice period while still serving, and then leaves the answer
    streams of calls in flight to finish (server/draining.py); calls still running when the grace period ends are
    cut with a typed `unavailable` error (server/admission.py), before uvicorn would cancel them bare.

    uvicorn re-raises the signal after its graceful shutdown, which makes the process die "by signal";
    for a daemon that finished every call in flight, that is a clean exit. A second signal skips the notice.
    """

    def __init__(self, config: uvicorn.Config, posts: InFlightPosts, services: Services) -> None:
        super().__init__(config)
        self.posts, self.admission = posts, services.admission
        self.grace_seconds = services.settings.shutdown_grace_seconds
        self.notice_seconds = services.settings.drain_notice_seconds
        self._notice_ends: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._notice_ends is None and self.notice_seconds > 0:
            self.admission.draining = True
            self._notice_ends = time.monotonic() + self.notice_seconds
            return
        self.admission.draining = True
        super().handle_exit(sig, frame)
        forget_captured_signals(self)

    async def on_tick(self, counter: int) -> bool:
        if self._notice_ends is not None and time.monotonic() >= self._notice_ends:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:  # the listeners close here, and the connections queued in them are served, not reset
            if taken := await serve_queued_connections(self):
                log.info("queued_connections_served", connections=taken)
        except Exception:  # e.g. no file descriptor left to accept with: uvicorn's shutdown closes them anyway
            log.exception("queued_connections_not_served")
        await asyncio.sleep(0)  # the handlers of those requests start, and count as in flight, before the drain looks
        # The drain starts once the listeners are closed, so no request that arrives later can find the streams
        # already told to end.
        drain = asyncio.create_task(end_streams_when_idle(self.posts, self.grace_seconds, self.admission.cut))
        try:
            await super().shutdown(sockets)
        finally:
            drain.cancel()


async def serve_http(services: Services, listener: socket.socket | None = None) -> None:
    """Serve until SIGTERM/SIGINT, then let calls in flight finish within the grace period.

    `listener` is a socket the caller has already bound (so a busy port is told before anything starts)."""
    settings = services.settings
    # every admitted connection, the storage pools, and the upstream connections (up to 1,000 per provider client)
    raise_file_limit(settings.max_connections + settings.database_pool_size + settings.redis_pool_size + 1024)
    keep_streams_open_on_signal()
    posts = InFlightPosts(build_http_app(services))
    config = uvicorn.Config(
        posts,
        host=settings.host,
        port=settings.port,
        log_config=None,
        http=guarded_h11_protocol(
            settings.http_header_timeout_seconds,
            settings.http_body_timeout_seconds,
            settings.max_connections,
            settings.max_connections_per_address,
        ),
        access_log=False,
        timeout_keep_alive=settings.http_keep_alive_seconds,  # longer than clients keep an idle connection
        # uvicorn cancels what is left (bare) only after our drain has cut the calls with a typed error
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds + CUT_SECONDS + 1),
        lifespan="on",
    )
    await services.start()
    log.info("serving", **start_fields(services))
    try:
        await _GracefulServer(config, posts, services).serve(sockets=[listener] if listener else None)
        stopped = time.monotonic()
        await services.calls.finish_running(settings.shutdown_grace_seconds)  # their answers go to the store
        log.info("detached_calls_drained", seconds=round(time.monotonic() - stopped, 1))
    finally:
        await services.close()
