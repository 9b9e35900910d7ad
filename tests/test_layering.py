"""The package's layering, read from the source: lower layers import no domain package.

`exai.errors` is raised by every layer and `exai.observability` is used by every layer, so neither may import the
packages that use them (an import cycle waiting to happen, and a reason nobody can test them alone); the settings
are read before any provider is built, so `exai.config` imports no provider code. Imports inside functions count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "exai"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def exai_imports(path: Path) -> set[str]:
    """Every `exai...` module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "exai" or name.startswith("exai.")}


def imports_of(package: str) -> dict[str, set[str]]:
    root = SRC.joinpath(*package.split(".")[1:])
    files = [root.with_suffix(".py")] if root.with_suffix(".py").exists() else sorted(root.rglob("*.py"))
    assert files, f"{package} has no source files"
    return {module_name(path): exai_imports(path) for path in files}


def within(name: str, allowed: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        # Logging, metrics, alerts, health: told what happened (events, callables, protocols), never asking.
        ("exai.observability", ("exai.observability", "exai.errors", "exai.background")),
        ("exai.errors", ("exai.observability.context",)),
        ("exai.provider_specs", ()),
        ("exai.background", ("exai.observability.logging",)),  # a utility: runs a loop, logs what failed
        ("exai.config_problems", ("exai.errors",)),
    ],
)
def test_a_lower_layer_imports_no_domain_package(package: str, allowed: tuple[str, ...]) -> None:
    found = {
        module: sorted(name for name in names if not within(name, (package, *allowed)))
        for module, names in imports_of(package).items()
    }
    assert not {module: names for module, names in found.items() if names}, (
        f"{package} may import only {allowed or 'nothing of exai'}"
    )


def test_configuration_imports_no_provider_code() -> None:
    for module, names in imports_of("exai.config").items():
        assert not [name for name in names if within(name, ("exai.providers",))], module


def test_the_error_taxonomy_shadows_no_library_name() -> None:
    import pydantic

    import exai.errors

    defined = {
        name
        for name, value in vars(exai.errors).items()
        if isinstance(value, type) and value.__module__ == exai.errors.__name__
    }
    shadowed = defined & set(dir(pydantic))
    assert not shadowed, f"exai.errors defines {sorted(shadowed)}, names pydantic also exports"
