"""Orchestrators get in: the daemon started with every value of the rendered Kubernetes ConfigMap answers kubelet's
probes and a Prometheus pod-IP scrape (Host: <pod ip>:<port>), while /mcp still refuses foreign names.

No real Kubernetes can be had on this machine: Debian ships only kubectl (kubernetes-client), k3s and kind are not
packaged on Debian, PyPI or npm (their installers download binaries from GitHub, and kind's node image comes from a
container registry), so the probes and the scrape are sent here, with the Host headers a cluster sends.
"""

from __future__ import annotations

import base64
import os
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx2
import yaml

from tests.conftest import Proc, SimControl
from tests.test_deploy_static import tool

ROOT = Path(__file__).parent.parent
POD_HOSTS = ("10.244.1.7", "[fd00:10:244:1::7]")
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


def rendered_configmap() -> dict[str, str]:
    done = subprocess.run(
        [tool("kubectl"), "kustomize", "deploy/kubernetes/base"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(done.stdout)}
    data: dict[str, str] = documents["ConfigMap"]["data"]
    return data


def metrics_key() -> tuple[str, str]:
    """The key (from the Secret the README's command makes, rendered with --dry-run) and the EXAI_API_KEYS entry."""
    readme = (ROOT / "README.md").read_text()
    command = next(
        block for block in re.findall(r"^```\w*\n(.*?)^```", readme, re.S | re.M) if "exai-metrics-token" in block
    )
    path = f"{Path(sys.executable).parent}:{Path(tool('kubectl')).parent}:{os.environ['PATH']}"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command.strip() + " --dry-run=client -o yaml"],
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    secret = yaml.safe_load(done.stdout)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "exai-metrics-token"
    entry = re.search(r"^entry: (\S+)$", done.stderr, re.M)
    assert entry, done.stderr
    return base64.b64decode(secret["data"]["token"]).decode(), entry.group(1)


def test_probes_and_a_pod_ip_scrape_pass_with_the_rendered_configmap(
    daemon: Callable[..., Proc], sim: SimControl, postgres_url: str, pg_schema: str, redis_url: str
) -> None:
    settings = rendered_configmap()
    assert settings["EXAI_ALLOWED_HOSTS"] == "exai", "the test starts from the shipped values"
    key, entry = metrics_key()
    redis_db = redis_url.rsplit("/", 1)[0] + f"/{random.randint(1, 15)}"
    proc = daemon(
        **settings,
        EXAI_API_KEYS=entry,
        EXAI_DATABASE_URL=postgres_url,
        EXAI_DATABASE_SCHEMA=pg_schema,
        EXAI_REDIS_URL=redis_db,
    )
    scrape = {"authorization": f"Bearer {key}"}
    for address in POD_HOSTS:
        host = {"host": f"{address}:{proc.port}"}
        assert httpx2.get(f"{proc.url}/healthz", headers=host).status_code == 200, host
        ready = httpx2.get(f"{proc.url}/readyz", headers=host)
        assert ready.status_code == 200 and ready.json()["storage"] == "postgresql+redis", ready.text
        scraped = httpx2.get(f"{proc.url}/metrics", headers={**host, **scrape})
        assert scraped.status_code == 200, scraped.text
        assert 'exai_errors_total{category="internal"} 0.0' in scraped.text
        assert httpx2.get(f"{proc.url}/metrics", headers=host).status_code == 401, "the scrape still needs its token"
        bare = httpx2.get(f"{proc.url}/healthz", headers={"host": address})
        assert bare.status_code == 200, "a probe without a port is answered too"
        # An address is no name for the MCP endpoint or the other operator pages.
        assert httpx2.post(f"{proc.url}/mcp", json=PING, headers={**host, **MCP_HEADERS}).status_code == 421
        assert httpx2.get(f"{proc.url}/alerts", headers={**host, **scrape}).status_code == 421
    for foreign in ("rebound.example", f"rebound.example:{proc.port}", f"10.244.1.7.rebound.example:{proc.port}"):
        refused = httpx2.post(f"{proc.url}/mcp", json=PING, headers={"host": foreign, **MCP_HEADERS})
        assert refused.status_code == 421 and refused.json()["error"]["code"] == "host_not_allowed", foreign
        assert httpx2.get(f"{proc.url}/healthz", headers={"host": foreign}).status_code == 421, foreign
    service_name = httpx2.post(f"{proc.url}/mcp", json=PING, headers={"host": f"exai:{proc.port}", **MCP_HEADERS})
    assert service_name.status_code == 401, "the Service name gets through the Host check to authentication"
    origin = {"host": f"10.244.1.7:{proc.port}", "origin": "http://rebound.example"}
    assert httpx2.get(f"{proc.url}/healthz", headers=origin).status_code == 403, "a foreign Origin stays refused"
