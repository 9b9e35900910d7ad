"""The deployment files hold against the attacks of issue 17: no password on a command line, hardened exai
containers, Grafana's password from a secret, connection and request limits in nginx (with a TLS example that
nginx accepts), and a NetworkPolicy in the Kustomize base.

Redis and nginx run here for real (Debian's binaries), started the way the deployment files say.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exai.stress.balancer import DEPLOY_NGINX_CONF, NGINX, nginx_config
from tests.conftest import Proc, free_port, popen_owned
from tests.container_engine import unavailable
from tests.helpers import wait_until
from tests.test_deploy_static import PROFILES, compose_config, run, tool

Daemon = Callable[..., Proc]
EXAI_SERVICES = ("exai", "exai-stdio", "exai-replica")
HELD = 256  # deploy/nginx.conf: limit_conn exai_conn_per_ip 256
MARKER = "leaked-" + secrets.token_hex(8)


def rendered(profile: str) -> dict[str, Any]:
    done = compose_config(profile, REDIS_PASSWORD=MARKER)
    assert done.returncode == 0, done.stderr
    assert MARKER not in done.stdout, "a password from the environment reached the compose configuration"
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p or "default")
def test_every_exai_container_is_hardened_and_every_password_is_a_secret(profile: str) -> None:
    config = rendered(profile)
    services = config["services"]
    for name in set(EXAI_SERVICES) & set(services):
        service = services[name]
        assert service["read_only"] is True and "/tmp" in service["tmpfs"], name
        assert service["cap_drop"] == ["ALL"] and "no-new-privileges:true" in service["security_opt"], name
        assert 0 < int(service["deploy"]["resources"]["limits"]["pids"]) <= 512, name
    redis = services["redis"]
    assert "requirepass" not in " ".join(redis.get("command") or []), "the password is never a command-line argument"
    assert {s["source"] for s in redis["secrets"]} == {"redis_password"}
    assert {s["source"] for s in services["exai"]["secrets"]} == {"postgres_password", "redis_password"}
    assert not any("redis://:" in str(v) for v in (services["exai"].get("environment") or {}).values())
    if profile == "monitoring":
        grafana = services["grafana"]
        assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
        assert {s["source"] for s in grafana["secrets"]} == {"grafana_admin_password"}
        assert {s["source"] for s in services["prometheus"]["secrets"]} == {"metrics_token"}


def test_redis_started_as_compose_starts_it_keeps_its_password_off_every_command_line(tmp_path: Path) -> None:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        unavailable("redis-server is not installed")
    redis = rendered("")["services"]["redis"]
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    password = secrets.token_hex(24)
    (secret_dir / "redis_password").write_text(password + "\n")
    port = free_port()
    # Compose's `$$` is a literal `$`; the secret's mount point and the port are this test's own.
    argv = [part.replace("$$", "$").replace("/run/secrets", str(secret_dir)) for part in redis["entrypoint"]]
    options = [("127.0.0.1" if part == "0.0.0.0" else part) for part in redis["command"]]
    options = [str(port) if part == "6379" else part for part in options] + [
        "--bind",
        "127.0.0.1",
        "--dir",
        str(tmp_path),
    ]
    process = popen_owned(
        argv + options, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        cli = ["redis-cli", "-p", str(port), "ping"]
        deadline = time.monotonic() + 60
        while "NOAUTH" not in (answer := subprocess.run(cli, capture_output=True, text=True).stdout):
            assert time.monotonic() < deadline and process.poll() is None, f"redis did not start: {answer}"
            time.sleep(0.1)
        authed = subprocess.run(cli, capture_output=True, text=True, env={**os.environ, "REDISCLI_AUTH": password})
        assert authed.stdout.strip() == "PONG", "the password from the secret file is the one Redis requires"
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                assert password not in cmdline.read_bytes().decode(errors="replace"), f"password in {cmdline}"
            except OSError:
                continue
    finally:
        process.terminate()
        process.wait(20)
        with socket.socket() as probe:  # the signal reached redis-server itself (behind a pipe, sh alone got it)
            outlived = probe.connect_ex(("127.0.0.1", port)) == 0
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever the entrypoint left, the test does not
    assert not outlived, "redis-server outlived its container's first process"


@pytest.fixture
def nginx_prefix(tmp_path: Path) -> Iterator[Path]:
    if not NGINX.exists():
        unavailable("nginx is not installed (Debian's nginx-light)")
    yield tmp_path / "nginx"


def _self_signed(directory: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "exai.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "privkey.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def test_the_tls_example_is_a_configuration_nginx_accepts(nginx_prefix: Path) -> None:
    text = DEPLOY_NGINX_CONF.read_text()
    example = re.search(r"^    # server \{\n(?:    #.*\n)*?    # \}\n", text, re.M)
    assert example, "deploy/nginx.conf has a commented TLS server block"
    (nginx_prefix / "logs").mkdir(parents=True)
    (nginx_prefix / "tls").mkdir()
    _self_signed(nginx_prefix / "tls")
    block = re.sub(r"^    # ?", "    ", example.group(0), flags=re.M).replace(
        "/etc/nginx/tls", str(nginx_prefix / "tls")
    )
    block = block.replace("listen 8443 ssl;", f"listen 127.0.0.1:{free_port()} ssl;")
    config = text.replace(example.group(0), block).replace("server exai-replica:8765", "server 127.0.0.1:9")
    config = config.replace("listen 8080;", f"listen 127.0.0.1:{free_port()};")
    (nginx_prefix / "nginx.conf").write_text(config)
    globals_ = f"pid {nginx_prefix}/nginx.pid; error_log {nginx_prefix}/logs/error.log warn;"
    checked = run(str(NGINX), "-t", "-p", str(nginx_prefix), "-c", str(nginx_prefix / "nginx.conf"), "-g", globals_)
    assert checked.returncode == 0, checked.stderr
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in block and "limit_req zone=" in block


@dataclass
class _Started:
    process: subprocess.Popen[bytes]
    port: int

    def terminate(self) -> None:
        self.process.terminate()

    def wait(self, timeout: float) -> None:
        self.process.wait(timeout)


def _nginx_before(upstream_ports: list[int], prefix: Path) -> _Started:
    """deploy/nginx.conf in front of `upstream_ports`, ready once its port accepts connections."""
    port = free_port()
    (prefix / "logs").mkdir(parents=True)
    (prefix / "nginx.conf").write_text(nginx_config(upstream_ports, port))
    globals_ = f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log warn;"
    command = [str(NGINX), "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", globals_]
    process = popen_owned(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return _Started(process, port)
            assert process.poll() is None and time.monotonic() < deadline, (prefix / "logs" / "error.log").read_text()
            time.sleep(0.1)
    except BaseException:  # a failed start, or Ctrl-C while waiting
        process.kill()
        process.wait(10)
        raise


@pytest.mark.anyio
async def test_one_address_cannot_hold_every_connection_of_the_balancer(nginx_prefix: Path) -> None:
    """Requests held open (here by an upstream that never answers, as a slow call would) are capped per address:
    past the cap nginx answers 429 at once instead of queueing another connection to the replicas."""
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(1024)  # connections complete in the kernel's backlog and are never answered
    nginx = _nginx_before([black_hole.getsockname()[1]], nginx_prefix)
    statuses: list[int] = []
    limits = httpx2.Limits(max_connections=HELD + 100, max_keepalive_connections=0)

    async def hold(http: httpx2.AsyncClient) -> None:
        statuses.append((await http.get(f"http://127.0.0.1:{nginx.port}/mcp")).status_code)

    try:
        async with httpx2.AsyncClient(timeout=120, limits=limits) as http, anyio.create_task_group() as group:
            for _ in range(HELD + 40):
                group.start_soon(hold, http)
            await wait_until(lambda: len(statuses) >= 40, "the connections past the cap were refused")
            group.cancel_scope.cancel()
    finally:
        nginx.terminate()
        nginx.wait(20)
        black_hole.close()
    assert set(statuses) == {429}, statuses


@pytest.mark.parametrize("path", ["deploy/kubernetes/base", "deploy/kubernetes/overlays/production"])
def test_the_kustomize_base_isolates_the_pods_on_the_network(path: str) -> None:
    done = run(tool("kubectl"), "kustomize", path)
    assert done.returncode == 0, done.stderr
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(done.stdout)}
    policy = documents["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "exai"}
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [8765]
    assert {p["port"] for rule in policy["egress"] for p in rule["ports"]} == {53, 5432, 6379, 443}
    if "overlays" in path:
        monitor = documents["ServiceMonitor"]["spec"]["endpoints"][0]
        assert monitor["path"] == "/metrics" and monitor["authorization"]["credentials"]["name"] == "exai-metrics-token"
