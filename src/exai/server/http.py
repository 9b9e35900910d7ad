"""The daemon's HTTP app: MCP over Streamable HTTP at /mcp, plus /healthz and /readyz."""

from __future__ import annotations

import ipaddress
from types import FrameType

import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from exai.app import Services
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

    server = build_server(services)
    return server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=transport_security(settings.host, settings.allowed_hosts),
        host=settings.host,
        custom_starlette_routes=[Route("/healthz", healthz), Route("/readyz", readyz)],
    )


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
