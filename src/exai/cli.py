"""The `exai` command: serve, stdio, sim, models, doctor."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from exai.app import Services, Transport
from exai.config import Settings, load_settings
from exai.observability.errors import ExaiError
from exai.observability.logging import configure_logging, get_logger
from exai.providers.specs import PROVIDER_SPECS

app = typer.Typer(help="EX-AI MCP Server: tools for AI coding agents, backed by other models.", no_args_is_help=True)
console = Console(stderr=True)
log = get_logger("exai.cli")


def _settings(**overrides: object) -> Settings:
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ExaiError as exc:
        console.print(f"[red]{exc.message}[/red]\n{exc.remedy}")
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, settings.log_json)
    return settings


def _services(settings: Settings, transport: Transport = "memory") -> Services:
    try:
        return Services.build(settings, transport)
    except ExaiError as exc:
        console.print(f"[red]{exc.message}[/red]\n{exc.remedy}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8765).")] = None,
) -> None:
    """Run the daemon: MCP over Streamable HTTP at /mcp, with /healthz and /readyz."""
    from exai.server.http import serve_http

    settings = _settings(host=host, port=port)
    services = _services(settings, "http")
    log.info("starting", host=settings.host, port=settings.port, providers=sorted(services.router.providers))
    if not services.router.providers:
        log.warning("no_provider_configured", remedy="set a provider key or CUSTOM_API_URL; see `exai doctor`")
    asyncio.run(serve_http(services))


@app.command()
def stdio(
    connect: Annotated[
        str | None, typer.Option(help="Forward to a daemon at this URL (e.g. http://host:8765/mcp) instead.")
    ] = None,
) -> None:
    """Run the MCP server over stdio, for one local client (or bridge it to a shared daemon)."""
    settings = _settings()
    if connect:
        from exai.server.bridge import serve_bridge

        token = settings.token.get_secret_value() if settings.token else None
        asyncio.run(
            serve_bridge(connect, token, settings.bridge_connect_timeout_seconds, settings.call_deadline_seconds + 30)
        )
        return
    from exai.server.stdio import serve_stdio

    asyncio.run(serve_stdio(_services(settings, "stdio")))


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8900,
    api_key: Annotated[str | None, typer.Option(help="Require this API key from clients.")] = None,
    latency_ms: Annotated[float, typer.Option(help="Fixed latency added to every answer.")] = 0.0,
) -> None:
    """Run the upstream simulator (OpenAI- and Anthropic-compatible) for tests and trials without a key."""
    import uvicorn

    from exai.testing.simulator import LatencyRule, SimState, Simulator

    state = SimState(api_key=api_key)
    if latency_ms:
        state.latency.append(LatencyRule(ms=latency_ms))
    console.print(f"upstream simulator on http://{host}:{port} (OpenAI: /v1, Anthropic: /)")
    uvicorn.run(Simulator(state).app, host=host, port=port, log_level="warning", access_log=False)


@app.command()
def models() -> None:
    """Show the configured providers and their models with capabilities."""
    services = _services(_settings())
    router = services.router
    table = Table(title="Models")
    for column in ("provider", "model", "aliases", "context", "max out", "images", "thinking", "$ in/out per M"):
        table.add_column(column)
    for m in sorted(router.available_models(), key=lambda m: (m.provider, -m.intelligence)):
        table.add_row(
            m.provider,
            m.name,
            ", ".join(m.aliases),
            f"{m.context_window:,}",
            f"{m.max_output_tokens:,}",
            "yes" if m.images else "",
            "yes" if m.thinking else "",
            f"{m.price_in:g} / {m.price_out:g}",
        )
    Console().print(table)
    missing = [s for n, s in PROVIDER_SPECS.items() if n not in router.providers]
    for spec in missing:
        need = " or ".join(spec.key_env) if spec.key_required else "CUSTOM_API_URL"
        console.print(f"[dim]{spec.title}: not configured (set {need})[/dim]")


@app.command()
def doctor(timeout: Annotated[float, typer.Option(help="Seconds to wait for each provider.")] = 5.0) -> None:
    """Check the configuration and reach every configured provider; exit non-zero when something is wrong."""
    settings = _settings()
    services = _services(settings)
    problems = asyncio.run(_doctor(services, timeout))
    raise typer.Exit(1 if problems else 0)


def _db_upgrade_and_report(services: Services) -> int:
    async def run() -> int:
        await services.store.open()
        try:
            return await services.store.migrate()
        finally:
            await services.store.close()

    return asyncio.run(run())


db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations (the daemon also does this at start)."""
    services = _services(_settings())
    version = _db_upgrade_and_report(services)
    Console().print(f"{services.store.name}: schema at version {version}")


async def _doctor(services: Services, timeout: float) -> int:
    out = Console()
    table = Table(title="Providers")
    for column in ("provider", "state", "detail", "remedy"):
        table.add_column(column)
    problems = 0
    for name, config in services.router.configs.items():
        spec = config.spec
        need = " or ".join(spec.key_env) if spec.key_required else "CUSTOM_API_URL"
        if name not in services.router.providers:
            table.add_row(name, "not configured", "", f"set {need} to enable")
            continue
        try:
            found = await services.router.providers[name].list_models(timeout)
            table.add_row(name, "[green]reachable[/green]", f"{config.base_url}: {len(found)} models listed", "")
        except Exception as exc:  # every failure becomes a row, never a crash
            problems += 1
            kind = getattr(exc, "kind", type(exc).__name__)
            remedy = f"check {need}" if kind == "auth" else f"check {spec.base_url_env} and the network"
            table.add_row(name, f"[red]{kind}[/red]", str(exc)[:120], remedy)
    if not services.router.providers:
        problems += 1
        out.print(
            "[red]No provider is configured.[/red] Set a provider key, or run `exai sim` and set "
            "CUSTOM_API_URL=http://127.0.0.1:8900/v1 CUSTOM_MODELS=sim-fast"
        )
    out.print(table)
    await services.close()
    return problems
