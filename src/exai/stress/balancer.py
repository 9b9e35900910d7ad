"""nginx in front of daemon replicas, configured from the shipped deploy/nginx.conf (the replica tests use it too).

Only the listen address and the upstream servers are changed, and for a stress run the per-address limits: every
client of the run shares 127.0.0.1, so the limits meant for one user would turn the run's load into 429s.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

NGINX = Path("/usr/sbin/nginx")
DEPLOY_NGINX_CONF = Path(__file__).resolve().parents[3] / "deploy" / "nginx.conf"
STRESS_WORKER_CONNECTIONS = 8192  # past the knee the run may hold a thousand calls in flight: two connections each


def nginx_binary() -> str | None:
    """Debian's nginx (nginx-light), or one on PATH."""
    return str(NGINX) if NGINX.exists() else shutil.which("nginx")


def nginx_config(replica_ports: list[int], listen_port: int, *, per_address_limits: bool = True) -> str:
    """deploy/nginx.conf with the replicas' loopback ports as upstream servers and a loopback listen port; without
    `per_address_limits`, the `limit_conn` / `limit_req` lines of the server block are dropped and the worker may
    hold more connections (a load test from one address)."""
    if not DEPLOY_NGINX_CONF.exists():
        raise RuntimeError(f"{DEPLOY_NGINX_CONF} not found: replicas behind nginx need a source checkout")
    text = DEPLOY_NGINX_CONF.read_text()
    server_line = re.search(r"^\s*server exai-replica:8765 (.*);$", text, re.M)
    if not server_line:
        raise RuntimeError("deploy/nginx.conf lost its `server exai-replica:8765 ...;` upstream line")
    servers = "\n".join(f"        server 127.0.0.1:{port} {server_line.group(1)};" for port in replica_ports)
    text = text.replace(server_line.group(0), servers)
    if "listen 8080;" not in text:
        raise RuntimeError("deploy/nginx.conf lost its `listen 8080;` line")
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen_port};")
    if not per_address_limits:
        text = re.sub(r"^( {8})(limit_conn exai_conn_per_ip|limit_req zone=).*$\n", "", text, flags=re.M)
        text = re.sub(r"worker_connections \d+;", f"worker_connections {STRESS_WORKER_CONNECTIONS};", text)
        text = text.replace(
            "worker_processes 1;", f"worker_processes 1;\nworker_rlimit_nofile {4 * STRESS_WORKER_CONNECTIONS};"
        )
    return text


def nginx_args(binary: str, prefix: Path, conf: Path) -> list[str]:
    """In the foreground, with its pid file and error log under `prefix`."""
    globals_ = f"daemon off; pid {prefix}/nginx.pid; error_log {prefix}/logs/error.log warn;"
    return [binary, "-p", str(prefix), "-c", str(conf), "-g", globals_]
