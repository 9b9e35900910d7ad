"""`exai doctor`: check the store, Redis, the JWKS and the file roots (doctor_checks.py), reach every configured
provider, and say what to do about each problem.

With `--live` it also makes one tiny real call per configured provider (it costs a few tokens, hence opt-in) and
reports the model that answered, the latency and the usage the vendor reported.
"""

from __future__ import annotations

import asyncio
import time

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from exai.app import Services
from exai.cli_output import console, print_table
from exai.config import ProviderConfig
from exai.doctor_checks import Check, run_checks
from exai.errors import ExaiError
from exai.providers.base import CallOptions
from exai.providers.catalogue import custom_model
from exai.providers.discovery import discover_custom_models
from exai.providers.types import GenerateRequest, Message

LIVE_PROMPT = "Reply with the single word OK."
LIVE_MAX_OUTPUT = 16


async def run_doctor(services: Services, timeout: float, live: bool = False) -> int:
    """Print a line per check, a table of providers (and with `live`, of one real call each); return the number
    of problems found."""
    checks, _ = await asyncio.gather(
        run_checks(services, timeout), discover_custom_models(services.settings, services.router)
    )
    await services.listings.refresh()
    out = console()
    for check in checks:
        out.print(check_line(check))
    rows: list[tuple[str, str, str, str]] = []  # rich markup; data inside is escaped
    problems = sum(not check.ok for check in checks)
    for name, config in services.router.configs.items():
        spec = config.spec
        need = " or ".join(spec.key_env) if spec.key_required else spec.base_url_env
        if name not in services.router.providers:
            rows.append((name, "not configured", "", f"set {need} to enable"))
            continue
        try:
            found = await services.router.providers[name].list_models(timeout)
        except Exception as exc:  # every failure becomes a row, never a crash
            problems += 1
            kind = getattr(exc, "kind", type(exc).__name__)
            remedy = f"check {need}" if kind == "auth" else f"check {spec.base_url_env} and the network"
            rows.append((name, f"[red]{kind}[/red]", escape(str(exc)[:120]), remedy))
            continue
        problem = _custom_models_problem(services, config, found) if name == "custom" else None
        if problem is not None:
            problems += 1
            rows.append((name, "[red]models[/red]", escape(problem[0]), problem[1]))
        else:
            if name == "custom":  # ids the catalogue knows under another provider are not Custom's models
                found = [m for m in found if (known := services.catalogue.get(m)) is None or known.provider == name]
            detail = f"{config.base_url}: {len(found)} models listed"
            unlisted = [m.name for m in services.catalogue.models.values() if services.router.vendor_lists(m) is False]
            unlisted = [m for m in unlisted if services.catalogue.models[m].provider == name]
            if unlisted:
                detail += f"; not listed, so not used: {', '.join(unlisted)}"
            rows.append((name, "[green]reachable[/green]", escape(detail), ""))
    problems += _default_model_problem(services, out)
    if not services.router.providers:
        problems += 1
        out.print(
            "[red]No provider is configured.[/red] Set a provider key, or run `exai sim` and set "
            "CUSTOM_API_URL=http://127.0.0.1:8900/v1"
        )
    print_table(
        "Providers", ("provider", "state", "detail", "remedy"), [[Text.from_markup(c) for c in r] for r in rows]
    )
    if live:
        problems += await _live_calls(services, timeout)
    await services.close()
    return problems


def check_line(check: Check) -> Text:
    """`ok    store: ...` or `FAIL  redis: ... (fix: ...)`, never markup (the details hold what servers answered)."""
    line = Text("ok    " if check.ok else "FAIL  ", style="green" if check.ok else "red")
    line.append(f"{check.name}: {check.detail}")
    if check.fix:
        line.append(f" (fix: {check.fix})")
    return line


async def _live_calls(services: Services, timeout: float) -> int:
    """One tiny real call per configured provider, to its strongest usable model; the number that failed."""
    router = services.router
    rows: list[list[str]] = []
    failures = 0
    for name, provider in router.providers.items():
        usable = sorted((m for m in router.available_models() if m.provider == name), key=lambda m: -m.intelligence)
        if not usable:
            failures += 1
            rows.append([name, "", "", "", "no usable model"])
            continue
        model = usable[0]
        request = GenerateRequest(
            messages=[Message(role="user", content=LIVE_PROMPT)], max_output_tokens=LIVE_MAX_OUTPUT
        )
        started = time.perf_counter()
        try:
            answer = await provider.generate(request, model, CallOptions(timeout=max(timeout, 30.0), headers={}))
        except Exception as exc:  # every failure becomes a row, never a crash
            failures += 1
            kind = getattr(exc, "kind", None) or getattr(exc, "code", None) or type(exc).__name__
            rows.append(
                [name, model.name, f"{(time.perf_counter() - started) * 1000:.0f} ms", "", f"{kind}: {exc}"[:160]]
            )
            continue
        usage = answer.usage
        rows.append(
            [
                name,
                model.name,
                f"{(time.perf_counter() - started) * 1000:.0f} ms",
                f"{usage.input_tokens} in / {usage.output_tokens} out"
                + (f" ({usage.reasoning_tokens} reasoning)" if usage.reasoning_tokens else ""),
                f"ok, finish {answer.finish_reason or '?'}: {answer.text.strip()[:40]!r}",
            ]
        )
    print_table("Live calls", ("provider", "model", "latency", "usage", "result"), rows)
    return failures


def _default_model_problem(services: Services, out: Console) -> int:
    """1 when EXAI_DEFAULT_MODEL names a model that no configured provider serves."""
    name = services.settings.default_model
    if name.lower() == "auto" or not services.router.providers:
        return 0
    try:
        services.router.resolve(name)
    except ExaiError as exc:
        out.print(f"[red]EXAI_DEFAULT_MODEL:[/red] {escape(exc.message)}")
        out.print("  fix: name a model that `exai models` lists, or auto")
        return 1
    return 0


def _custom_models_problem(services: Services, config: ProviderConfig, listed: list[str]) -> tuple[str, str] | None:
    """(detail, remedy) when CUSTOM_MODELS names a model the endpoint does not serve, or it serves none."""
    declared = [custom_model(entry).name for entry in services.settings.custom_models]
    if not declared:
        if listed:
            return None
        return f"{config.base_url} lists no models", "load or pull a model on the server at CUSTOM_API_URL"
    served = set(listed) | {name.removesuffix(":latest") for name in listed}
    missing = [name for name in declared if name not in served]
    if not missing:
        return None
    shown = ", ".join(listed[:8]) + (", ..." if len(listed) > 8 else "") or "none"
    return (
        f"CUSTOM_MODELS names {', '.join(missing)}, which {config.base_url} does not list (it lists: {shown})",
        "correct CUSTOM_MODELS, or unset it to use every model CUSTOM_API_URL lists",
    )
