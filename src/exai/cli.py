"""The `exai` command: serve, stdio, sim, models, doctor, stress."""

from __future__ import annotations

import json
import socket
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:  # each command imports what it needs when it runs: `exai --help` loads no server stack
    from collections.abc import Coroutine

    from mcp.server.auth.provider import AccessToken
    from rich.console import Console

    from exai.app import Services, Transport
    from exai.config import Settings
    from exai.errors import ExaiError

app = typer.Typer(
    help="EX-AI MCP Server: tools for AI coding agents, backed by other models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # a crash's locals hold settings, and settings hold secrets
)


T = TypeVar("T")
GC_YOUNG_THRESHOLD = 10_000
"""Allocations between two collections of the garbage collector's youngest generation in a server process (Python's
default is 700). A `chat` call allocates hundreds of tracked objects (pydantic models, JSON, frames), so at 700
the collector ran about every other call, and walked the older generations every 10th and 100th time. At 10,000 the
daemon's CPU per `chat` call with every feature on went from 4.30 to 4.06 ms (1 client), 4.04 to 3.73 ms (4) and
4.54 to 4.16 ms (32): interleaved A/B, medians of 8 rounds of 400 calls."""


def _tune_gc() -> None:
    """A long-running server collects garbage less often (see GC_YOUNG_THRESHOLD); the older generations keep
    their ratios, so a full collection still follows every 100 young ones."""
    import gc

    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _run(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; asyncio is loaded here, by the commands that run one, not by `exai --help`."""
    import asyncio

    return asyncio.run(main)


@cache
def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, soft_wrap=True)  # no 80-column wrap


def _fail(exc: ExaiError) -> NoReturn:
    """A configuration problem: its own short lines on stderr (no traceback, no markup), exit code 2."""
    print(exc.message if exc.remedy is None else f"{exc.message}\n  fix: {exc.remedy}", file=sys.stderr)
    raise typer.Exit(2)


def _settings(*, server: bool = False, checks_tokens: bool = False, **overrides: object) -> Settings:
    """The validated settings, logging configured. Commands other than the servers (`serve`, `stdio`) log
    warnings and errors only, unless EXAI_LOG_LEVEL says otherwise: their output is the answer, not a log."""
    from exai.config import load_settings
    from exai.config_checks import setting_warnings
    from exai.errors import ExaiError
    from exai.observability.logging import configure_logging, get_logger
    from exai.observability.tracing import configure_tracing

    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ExaiError as exc:
        _fail(exc)
    quiet = not server and "log_level" not in settings.model_fields_set
    configure_logging("WARNING" if quiet else settings.log_level, settings.log_json)
    configure_tracing(settings.otel_exporter)
    for warning in setting_warnings(settings, checks_tokens):
        if settings.log_json:  # JSON logs stay JSON
            get_logger("exai.config").warning("configuration_warning", detail=warning.removeprefix("warning: "))
        else:
            print(warning, file=sys.stderr)
    return settings


def _listen(command: str, host: str, port: int, port_option: str) -> socket.socket:
    """The bound, listening socket for host:port; a busy or forbidden address is one line and exit code 2.

    The socket says it is TCP: asyncio turns Nagle's algorithm off only on such sockets, and
    `socket.create_server` leaves the protocol number 0, which made every answer wait ~40 ms for a delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family)
        return socket.socket(fileno=listener.detach())  # the protocol is read back from the descriptor
    except OSError as exc:
        print(
            f"exai {command}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
            f"stop what uses it or choose another port with {port_option}.",
            file=sys.stderr,
        )
        raise typer.Exit(2) from None


def _services(settings: Settings, transport: Transport = "memory") -> Services:
    from exai.app import Services
    from exai.errors import ExaiError

    try:
        return Services.build(settings, transport)
    except ExaiError as exc:
        _fail(exc)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8765).")] = None,
    insecure: Annotated[bool, typer.Option(help="Allow a non-loopback address without authentication.")] = False,
) -> None:
    """Run the daemon: MCP over Streamable HTTP at /mcp, with /healthz, /readyz, /metrics and /dashboard."""
    settings = _settings(server=True, checks_tokens=True, host=host, port=port)
    from exai.errors import ExaiError
    from exai.observability.logging import get_logger
    from exai.server.http import is_loopback, serve_http

    log = get_logger("exai.cli")
    if not is_loopback(settings.host) and not settings.auth_enabled:
        if not insecure:
            _stderr().print(
                f"[red]Refusing to serve on {settings.host} without authentication.[/red]\n"
                "Set EXAI_JWT_SECRET (or EXAI_JWT_PUBLIC_KEY, EXAI_JWT_JWKS_URL, EXAI_API_KEYS), bind 127.0.0.1, "
                "or pass --insecure if something in front of the daemon authenticates callers."
            )
            raise typer.Exit(2)
        log.warning("insecure_bind", host=settings.host, detail="anyone who can reach this port can use the server")
    listener = _listen("serve", settings.host, settings.port, "--port or EXAI_PORT")
    services = _services(settings, "http")
    if not services.router.providers:
        log.warning("no_provider_configured", remedy="set a provider key or CUSTOM_API_URL; see `exai doctor`")
    _tune_gc()
    try:
        _run(serve_http(services, listener))
    except ExaiError as exc:  # the store could not be opened: one line and the fix, not a traceback
        _fail(exc)


@app.command()
def stdio(
    connect: Annotated[
        str | None, typer.Option(help="Forward to a daemon at this URL (e.g. http://host:8765/mcp) instead.")
    ] = None,
) -> None:
    """Run the MCP server over stdio, for one local client (or bridge it to a shared daemon)."""
    settings = _settings(server=True)
    if connect:
        from exai.config import load_bridge_settings, secret
        from exai.errors import ExaiError
        from exai.server.bridge import check_daemon_url, check_token_transport, serve_bridge

        try:
            check_daemon_url(connect)
            bridge = load_bridge_settings()
            token = secret(bridge.token) or None  # an empty EXAI_TOKEN is no token
            check_token_transport(connect, token, bridge.bridge_allow_plain_http)
        except ExaiError as exc:
            _fail(exc)
        _run(serve_bridge(connect, token, bridge.bridge_connect_timeout_seconds, settings.call_deadline_seconds + 30))
        return
    from exai.errors import ExaiError
    from exai.server.stdio import serve_stdio

    _tune_gc()
    try:
        _run(serve_stdio(_services(settings, "stdio")))
    except ExaiError as exc:  # the store could not be opened
        _fail(exc)


@app.command()
def sim(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8900,
    api_key: Annotated[str | None, typer.Option(help="Require this API key from clients.")] = None,
    latency_ms: Annotated[float, typer.Option(help="Fixed latency added to every answer.")] = 0.0,
) -> None:
    """Run the upstream simulator (OpenAI- and Anthropic-compatible) for tests and trials without a key.

    Models: sim-fast, sim-smart and sim-large (sim-large states a context window of 1,000,000 in /v1/models and
    Ollama-style /api/show; any other model name is answered too). Point a provider at it, e.g.
    CUSTOM_API_URL=http://127.0.0.1:8900/v1 or ANTHROPIC_BASE_URL=http://127.0.0.1:8900. Answers echo the
    prompt, so tests can check what arrived.

    Control API: POST /_sim/faults {"kind": "429|500|503|401|hang|reset|malformed|truncate|context_length|
    content_filter|length|error_in_200|413|replay|think|no_usage", "model": "*", "rate": 1.0, "count": N (N >= 1),
    "retry_after": s, "retry_after_ms": ms, "think_seconds": s, "silent": true, "stall_seconds": s (with think:
    reason this long, one delta a second or, silent, none; then stall this long without a word), "prompt_contains":
    "text", "fixture": "zai/chat_thinking" (with replay: a vendor fixture)} (model "/v1/models": the listing);
    DELETE /_sim/faults clears them; POST /_sim/models {"vendor_models": [...]} sets which catalogued models the
    listing names (null: all); POST /_sim/latency {"ms": 200, "jitter_ms": 50, "model": "*"}; GET /_sim/stats
    (counters); GET /_sim/requests?limit=50 (recent requests with headers); POST /_sim/reset (faults, latency,
    counters).
    """
    import uvicorn

    from exai.testing.simulator import LatencyRule, SimState, Simulator

    listener = _listen("sim", host, port, "--port")
    state = SimState(api_key=api_key)
    if latency_ms:
        state.latency.append(LatencyRule(ms=latency_ms))
    _stderr().print(f"upstream simulator on http://{host}:{port} (OpenAI: /v1, Anthropic: /)")
    # Idle connections are kept longer than clients keep theirs (httpx: 5 s), as vendors' APIs do: a server that
    # closes one at the moment a client reuses it fails that request with a connection error.
    config = uvicorn.Config(Simulator(state).app, log_level="warning", access_log=False, timeout_keep_alive=75)
    uvicorn.Server(config).run(sockets=[listener])


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document, for scripts.")] = False,
) -> None:
    """Show the configured providers and their models with capabilities, and whether each vendor lists each model
    (asked now, bounded by EXAI_MODEL_LISTING_TIMEOUT_SECONDS); a plain layout when piped."""
    from rich.markup import escape

    from exai.cli_output import print_table
    from exai.provider_specs import PROVIDER_SPECS
    from exai.providers.discovery import discover_custom_models
    from exai.providers.listings import VendorListings

    settings = _settings()
    services = _services(settings)
    router = services.router
    listings = VendorListings(settings, router)

    async def ask() -> None:
        import asyncio

        await asyncio.gather(discover_custom_models(settings, router), listings.refresh())

    _run(ask())
    shown = [
        m
        for m in router.catalogue.models.values()
        if m.provider in router.providers and router.configs[m.provider].allows(m.name, *m.aliases)
    ]
    shown.sort(key=lambda m: (m.provider, -m.intelligence, m.name))
    if as_json:
        print(
            json.dumps(
                [
                    {"provider": m.provider, "name": m.name, "listed_by_vendor": router.vendor_lists(m)}
                    | m.capabilities()
                    for m in shown
                ]
            )
        )
        return
    listed_text = {True: "yes", False: "NO (not used)", None: "not read"}
    rows = [
        [
            m.provider,
            m.name,
            ", ".join(m.aliases),
            f"{m.context_window:,}",
            f"{m.max_output_tokens:,}",
            "yes" if m.images else "",
            "yes" if m.thinking else "",
            f"{m.price_in:g} / {m.price_out:g}"
            + (f" / {m.price_cache_read:g}" if m.price_cache_read is not None else ""),
            listed_text[router.vendor_lists(m)],
        ]
        for m in shown
    ]
    header = [
        "provider",
        "model",
        "aliases",
        "context",
        "max out",
        "images",
        "thinking",
        "$ in/out/cache read per M",
        "vendor lists",
    ]
    print_table("Models", header, rows)
    _stderr().print(
        "[dim]vendor lists: whether the provider's own model listing names the model; 'not read' when that listing "
        "was not read (the Custom endpoint's models are the ones it lists, filtered by CUSTOM_MODELS)[/dim]"
    )
    for name, problem in sorted(listings.problems.items()):
        _stderr().print(f"[yellow]{name}: its model listing could not be read ({escape(problem)})[/yellow]")
    missing = [s for n, s in PROVIDER_SPECS.items() if n not in router.providers]
    for spec in missing:
        need = " or ".join(spec.key_env) if spec.key_required else spec.base_url_env
        _stderr().print(f"[dim]{spec.title}: not configured (set {need})[/dim]")


@app.command()
def doctor(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each provider.")] = 5.0,
    live: Annotated[
        bool, typer.Option("--live", help="Also make one tiny real call per provider (costs a few tokens).")
    ] = False,
) -> None:
    """Check the configuration and reach every configured provider; exit non-zero when something is wrong."""
    from exai.doctor import run_doctor

    problems = _run(run_doctor(_services(_settings()), timeout, live))
    raise typer.Exit(1 if problems else 0)


def _db_upgrade_and_report(services: Services) -> int:
    from exai.errors import ExaiError
    from exai.storage.opening import open_store

    settings = services.settings
    database_url = settings.database_url.get_secret_value() if settings.database_url else None

    async def run() -> int:
        try:
            return await open_store(services.store, database_url, str(settings.data_dir))
        finally:
            await services.store.close()

    try:
        return _run(run())
    except ExaiError as exc:
        _fail(exc)


token_app = typer.Typer(help="Tokens for the HTTP daemon.", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _scopes(text: str) -> list[str]:
    """The scopes in `text` (space- or comma-separated); an unknown one is two lines naming the known ones, exit 2."""
    from exai.security.scopes import known_scopes, unknown_scopes

    scopes = text.replace(",", " ").split()
    if unknown := unknown_scopes(scopes):
        print(
            f"Unknown scope {', '.join(repr(s[:60]) for s in unknown)}: the daemon grants nothing for it."
            f"\n  fix: use {', '.join(known_scopes())}",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    if not scopes:
        print("No scope given.\n  fix: pass --scopes exai:tools (or exai:admin, exai:tool:<name>)", file=sys.stderr)
        raise typer.Exit(2)
    return scopes


@token_app.command("issue")
def token_issue(
    sub: Annotated[str, typer.Option(help="Subject: the tenant the token acts for.")],
    scopes: Annotated[str, typer.Option(help="Space- or comma-separated scopes.")] = "exai:tools",
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 3600, 30m, 12h, 7d.")] = "24h",
) -> None:
    """Issue an HS256 token signed with EXAI_JWT_SECRET."""
    from exai.security.auth import issue_token

    settings = _settings()
    if settings.jwt_secret is None:
        _stderr().print("[red]EXAI_JWT_SECRET is not set.[/red] Set it to the daemon's shared secret.")
        raise typer.Exit(2)
    seconds = _duration(ttl)
    token = issue_token(
        settings.jwt_secret.get_secret_value(),
        sub,
        _scopes(scopes),
        seconds,
        settings.jwt_issuer,
        settings.jwt_audience,
    )
    print(token)


@token_app.command("verify")
def token_verify(token: Annotated[str, typer.Argument(help="The token to check.")]) -> None:
    """Check a token the way the daemon would; print its tenant and scopes."""
    from exai.app import build_verifier
    from exai.security.auth import LEEWAY_SECONDS

    verifier = build_verifier(_settings())
    if verifier is None:
        _stderr().print("[red]No authentication is configured[/red] (EXAI_JWT_SECRET, EXAI_JWT_PUBLIC_KEY, ...).")
        raise typer.Exit(2)
    from exai.security import token_rejections

    async def verified() -> tuple[AccessToken | None, str | None]:
        access = await verifier.verify_token(token)
        return access, token_rejections.last()  # the reason is noted in the verifying task's context

    access, reason = _run(verified())
    if access is None:
        _stderr().print(f"[red]invalid[/red]: {reason or 'not accepted by this configuration'}")
        raise typer.Exit(1)
    # The token's own `exp` (the verifier's expiry adds the clock-skew leeway, for the checks of every request).
    expiry = "never" if access.expires_at is None else str(access.expires_at - LEEWAY_SECONDS)
    print(f"valid: tenant={access.subject} scopes={' '.join(access.scopes)} expires_at={expiry}")


@token_app.command("apikey")
def token_apikey(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    scopes: Annotated[str, typer.Option(help="Space- or comma-separated scopes.")] = "exai:tools",
) -> None:
    """Make an opaque API key; add the printed entry to EXAI_API_KEYS (only its hash is stored)."""
    from exai.security.auth import new_api_key

    key, entry = new_api_key(tenant, _scopes(scopes))
    print(f"key:   {key}\nentry: {entry}")


@app.command()
def stress(
    scenarios: Annotated[
        list[str] | None,
        typer.Argument(help="all, or some of: load recovery failover storage faults security soak long."),
    ] = None,
    quick: Annotated[bool, typer.Option(help="Scale every scenario down (all: about 6 min on 2 quiet cores).")] = False,
    target: Annotated[str, typer.Option(help="local: start the simulator and daemons here.")] = "local",
    url: Annotated[
        str | None, typer.Option(help="An existing daemon instead (loopback), e.g. http://127.0.0.1:8765.")
    ] = None,
    sim_url: Annotated[str | None, typer.Option(help="The simulator that deployment talks to (with --url).")] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="EXAI_TOKEN",
            show_envvar=True,
            help="An admin token for the deployment at --url; prefer EXAI_TOKEN (a command line is visible in ps).",
        ),
    ] = None,
    storage: Annotated[
        str, typer.Option(help="Local daemons' storage: sqlite, postgres or postgres+redis.")
    ] = "sqlite",
    duration: Annotated[str, typer.Option(help="How long the soak runs, e.g. 600, 30m, 4h.")] = "10m",
    out: Annotated[Path, typer.Option(help="Where stress.json and stress.html are written.")] = Path("stress-report"),
    redis_db: Annotated[
        int | None, typer.Option(help="Redis database for local daemons (default: random 1-15; 0 only if asked).")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant the run's calls are made as (default: random).")] = None,
) -> None:
    """Run the production-readiness scenarios and write JSON and HTML reports; exit 1 when one fails."""
    from exai.stress.command import run_command

    code = run_command(
        scenarios or ["all"],
        quick=quick,
        target=target,
        url=url,
        sim_url=sim_url,
        token=token,
        storage=storage,
        soak_seconds=_duration(duration),
        out=out,
        redis_db=redis_db,
        tenant=tenant,
    )
    raise typer.Exit(code)


def _duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return int(text) if text.isdigit() else int(float(text[:-1]) * units[text[-1]])
    except (KeyError, ValueError):
        _stderr().print(f"[red]Cannot read duration '{text}'.[/red] Use seconds or 30m, 12h, 7d.")
        raise typer.Exit(2) from None


@app.command()
def audit(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    tool: Annotated[str | None, typer.Option(help="Only this tool.")] = None,
    since: Annotated[str | None, typer.Option(help="Only this recent, e.g. 30m, 24h, 7d.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many records.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """List audit records (every tool call: tenant, tool, model, tokens, cost, latency, outcome, correlation id)."""
    import time

    from rich.text import Text

    from exai.cli_output import print_table
    from exai.errors import ExaiError

    services = _services(_settings())
    cutoff = time.time() - _duration(since) if since else None

    async def fetch() -> list[Any]:
        from exai.storage.opening import open_store

        settings = services.settings
        database_url = settings.database_url.get_secret_value() if settings.database_url else None
        try:
            await open_store(services.store, database_url, str(settings.data_dir))
            return await services.store.list_audit(tenant=tenant, tool=tool, since=cutoff, limit=limit)
        finally:
            await services.store.close()

    try:
        records = _run(fetch())
    except ExaiError as exc:
        _fail(exc)
    if as_json:
        for record in records:
            print(json.dumps(record.model_dump()))
        return
    header = ("time", "tenant", "tool", "model", "tokens in/out", "cost $", "ms", "outcome", "correlation id")
    rows = [
        [
            Text(printable(cell))  # never markup, never a terminal escape
            for cell in (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.time)),
                r.tenant,
                r.tool,
                r.model or "",
                f"{r.input_tokens}/{r.output_tokens}",
                f"{r.cost_usd:.5f}",
                f"{r.latency_ms:.0f}",
                r.outcome + (f" ({r.error_category})" if r.error_category else ""),
                r.correlation_id,
            )
        ]
        for r in records
    ]
    print_table(f"Audit ({len(records)} records)", header, rows)


def printable(value: str) -> str:
    """`value` with every non-printable character (ESC, CR, ...) shown as its escape, e.g. `\\x1b`."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in value)


def _local_daemon_url() -> str:
    from exai.installer import local_url

    settings = _settings()
    return local_url(settings.host, settings.port)


@app.command()
def install(
    client: Annotated[str, typer.Argument(help="claude-code, codex, cursor, vscode or gemini.")],
    stdio: Annotated[bool, typer.Option(help="Let the client start `exai stdio` itself.")] = False,
    url: Annotated[
        str | None,
        typer.Option(
            help="A shared daemon's MCP URL (default: the local daemon at EXAI_HOST and EXAI_PORT, "
            "http://127.0.0.1:8765/mcp unless set)."
        ),
    ] = None,
    token_env: Annotated[
        str | None, typer.Option(help="The environment variable that holds the token (e.g. EXAI_TOKEN).")
    ] = None,
    name: Annotated[str, typer.Option(help="The server's name in the client's configuration.")] = "exai",
    print_only: Annotated[bool, typer.Option("--print", help="Show the entry and the file; write nothing.")] = False,
) -> None:
    """Write a client's MCP configuration for this server (the local daemon, stdio, or a shared daemon)."""
    from exai.errors import ExaiError
    from exai.installer import CLIENTS, config_path, connection, entry, plan, write

    if client not in CLIENTS:
        print(f"Unknown client {client[:40]!r}.\n  fix: use one of {', '.join(CLIENTS)}", file=sys.stderr)
        raise typer.Exit(2)
    try:
        local = "" if stdio or url else _local_daemon_url()  # the settings are read only when they are used
        conn = connection(stdio=stdio, url=url, token_env=token_env, local=local)
        if print_only:  # the file is not read: a file this command cannot rewrite still gets its entry shown
            print(f"# {config_path(client)}\n{entry(client, name, conn)}")
            return
        planned = plan(client, name, conn)
    except ExaiError as exc:
        _fail(exc)
    write(planned)
    print(f"{client}: wrote '{name}' to {planned.path}")


db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations (the daemon also does this at start)."""
    from rich.console import Console

    services = _services(_settings())
    version = _db_upgrade_and_report(services)
    Console().print(f"{services.store.name}: schema at version {version}")
