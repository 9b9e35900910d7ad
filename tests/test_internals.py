"""The libraries under the server: its shims into their internals are pinned, and every import is declared.

server/internals.py is the one module that reaches into a library's private internals. A different installed
version of such a library fails here, naming the shims to re-check, before it can break one at run time; the
shims' assumptions are checked against the installed libraries too. Every distribution the code imports (outside
an optional `try: ... except ImportError`) must be a declared dependency, so an install never depends on what
another package happens to pull in.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.metadata as metadata
import importlib.util
import inspect
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest

from exai.server import internals

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "exai"
SHIM_MODULE = SRC / "server" / "internals.py"


def test_the_shims_were_written_for_the_installed_versions() -> None:
    stale = []
    for shim, distributions in internals.SHIMS.items():
        for distribution in distributions:
            installed = metadata.version(distribution)
            written_for = internals.WRITTEN_FOR[distribution]
            if ".".join(installed.split(".")[:2]) not in written_for:
                checked = ", ".join(f"{series}.x" for series in written_for)
                stale.append(f"{shim}: checked against {distribution} {checked}, {installed} is installed")
    assert not stale, (
        "Re-check these shims in src/exai/server/internals.py against the installed versions (each docstring says "
        "what it relies on), then add the series to WRITTEN_FOR and widen the pin in pyproject.toml:\n"
        + "\n".join(stale)
    )


def test_every_shim_is_listed_and_says_why() -> None:
    defined = {
        name
        for name, value in vars(internals).items()
        if callable(value) and getattr(value, "__module__", None) == internals.__name__
    }
    assert defined == set(internals.SHIMS), "every function and class of internals.py is a shim listed in SHIMS"
    for name in defined:
        doc = getattr(internals, name).__doc__ or ""
        assert "Relies on" in doc, f"{name}'s docstring does not say what it relies on"
    assert set(internals.WRITTEN_FOR) == {d for names in internals.SHIMS.values() for d in names}


def test_the_shims_assumptions_hold_for_the_installed_libraries() -> None:
    import uvicorn
    from mcp.server.lowlevel import Server
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from sse_starlette.sse import AppStatus
    from uvicorn.protocols.http.h11_impl import H11Protocol

    config = uvicorn.Config(app=None)  # type: ignore[arg-type]  # no app: only the server is probed
    server = uvicorn.Server(config)
    assert isinstance(server._captured_signals, list)
    assert server.server_state.connections == set() and server.force_exit is False
    startup = inspect.getsource(uvicorn.Server.startup)  # what serve_queued_connections takes from a started server
    assert "self.servers" in startup and "app_state=self.lifespan.state" in startup, "uvicorn's startup changed"
    config.load()
    protocol = inspect.signature(config.http_protocol_class)
    assert {"config", "server_state", "app_state"} <= set(protocol.parameters), protocol
    manager = StreamableHTTPSessionManager(app=Server("probe"))
    assert isinstance(manager._server_instances, dict)
    for hook in ("connection_made", "data_received", "on_response_complete", "connection_lost"):
        assert callable(getattr(H11Protocol, hook))
    assert callable(AppStatus.disable_automatic_graceful_drain)
    assert isinstance(AppStatus.should_exit, bool)
    from mcp.server.streamable_http import StreamableHTTPServerTransport
    from starlette.requests import Request

    source = inspect.getsource(StreamableHTTPServerTransport)  # messages are framed in the one method the shim wraps
    assert source.count("ServerMessageMetadata(") == 1, "the SDK frames messages somewhere else too"
    internals.frame_messages_without_bodies()
    transport = StreamableHTTPServerTransport(mcp_session_id=None)
    request = Request({"type": "http", "method": "POST", "headers": [(b"x-probe", b"1")]})
    request._body = b"x" * 1000
    framed = transport._message_metadata(request).request_context
    assert isinstance(framed, Request) and framed.headers["x-probe"] == "1" and not hasattr(framed, "_body")
    import httpcore2
    import httpx2

    from exai.providers.coalescing import CoalescingBackend

    proxied = httpx2.AsyncClient(proxy="http://127.0.0.1:9", mounts={"http://direct": httpx2.AsyncHTTPTransport()})
    internals.send_requests_whole(proxied)
    pools = [t._pool for t in (proxied._transport, *proxied._mounts.values()) if t is not None]  # type: ignore[attr-defined]
    assert len(pools) == 3 and all(isinstance(pool, httpcore2.AsyncConnectionPool) for pool in pools), pools
    assert all(isinstance(p._network_backend, CoalescingBackend) for p in pools), (
        "the pools keep their backend elsewhere"
    )
    opens = inspect.getsource(httpcore2.AsyncConnectionPool.create_connection)
    assert "network_backend=self._network_backend" in opens, "the pool takes its backend from elsewhere"


def test_no_module_but_internals_reaches_into_a_library() -> None:
    """Private names of third-party objects (`x._name`, `getattr(x, "_name")`) and their private modules."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SHIM_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = None
            if isinstance(node, ast.Attribute) and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                name = node.attr
            elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr"):
                arg = node.args[1] if len(node.args) > 1 else None
                name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                name = next((part for part in node.module.split(".") if part.startswith("_")), None)
            # `_replace` / `_asdict` are namedtuple's public API; our own privates are read with `self.`.
            if name and re.fullmatch(r"_(?!_)\w+", name) and name not in ("_replace", "_asdict"):
                found.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: {name}")
    assert not found, "move these into src/exai/server/internals.py, with a pinned version:\n" + "\n".join(found)


def _optional(tree: ast.Module) -> set[int]:
    """Lines of imports inside `try: ... except ImportError` (an optional extra, reported when missing)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers
        ):
            lines.update(n.lineno for stmt in node.body for n in ast.walk(stmt) if isinstance(n, ast.stmt))
    return lines


def _names(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement imports: `from package import module` imports the module (which, in a
    namespace package such as `opentelemetry`, tells which distribution it comes from)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert node.module is not None
    spec = _spec(node.module)
    package = spec is not None and spec.submodule_search_locations is not None
    return [
        f"{node.module}.{alias.name}" if package and _is_module(f"{node.module}.{alias.name}") else node.module
        for alias in node.names
    ]


def imported_modules() -> dict[str, str]:
    """Every third-party module the package imports, with one place that imports it."""
    modules: dict[str, str] = {}
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        optional = _optional(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or (isinstance(node, ast.ImportFrom) and node.level):
                continue
            top = (node.names[0].name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
            if top in sys.stdlib_module_names or top in ("exai", "__future__") or node.lineno in optional:
                continue
            for name in _names(node):
                modules.setdefault(name, f"{path.relative_to(ROOT)}:{node.lineno}")
    return modules


def _spec(name: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):  # ValueError: a module some library replaced in sys.modules
        return None


def _is_module(name: str) -> bool:
    return _spec(name) is not None


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _providing_distribution(module: str, tops: Mapping[str, list[str]]) -> str:
    """The distribution that installs `module` (for a namespace package such as `opentelemetry`, the one whose
    files hold the module's code)."""
    candidates = sorted(set(tops.get(module.split(".")[0], [])))
    assert candidates, f"no installed distribution provides {module}"
    if len(candidates) == 1:
        return _normalized(candidates[0])
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} is not a module"
    origin = Path(spec.origin).resolve()
    for name in candidates:
        for file in metadata.distribution(name).files or ():
            if Path(str(file)).name == origin.name and Path(str(file.locate())).resolve() == origin:
                return _normalized(name)
    raise AssertionError(f"none of {candidates} holds {module} ({origin})")


def test_every_imported_distribution_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_normalized(re.split(r"[\s\[<>=!~;]", requirement)[0]) for requirement in project["dependencies"]}
    undeclared: dict[str, str] = {}
    tops = metadata.packages_distributions()
    for module, where in imported_modules().items():
        distribution = _providing_distribution(module, tops)
        if distribution not in declared:
            undeclared.setdefault(distribution, where)
    assert not undeclared, f"imported but not declared in pyproject.toml's dependencies: {undeclared}"


@pytest.mark.parametrize("module", ["mcp_types", "sse_starlette", "h11", "anyio", "dotenv"])
def test_the_declared_check_sees_the_distributions_it_must(module: str) -> None:
    """The distributions the dependency check must see (they came with other packages and were missed once)."""
    assert module in {name.split(".")[0] for name in imported_modules()}
