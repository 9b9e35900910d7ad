"""What a scenario runs against: daemons started here (`--target local`) or an existing deployment (`--url`)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from dataclasses import dataclass, field
from typing import Literal

from exai.stress.processes import Managed, ProcessGroup, free_port

Storage = Literal["sqlite", "postgres", "postgres+redis"]
SIM_MODELS = "sim-fast,sim-smart,sim-large:1000000"
STRESS_SECRET = secrets.token_hex(32)
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def _inherited_env() -> dict[str, str]:
    """This process's environment without any EX-AI setting or provider key: daemons talk to the simulator only."""
    from exai.providers.specs import PROVIDER_SPECS

    dropped = {"CUSTOM_API_URL", "CUSTOM_BASE_URL", "CUSTOM_MODELS", "CUSTOM_CONTEXT_WINDOW"}
    for spec in PROVIDER_SPECS.values():
        dropped.update({*spec.key_env, spec.base_url_env, spec.allowed_env, spec.denied_env})
    return {k: v for k, v in os.environ.items() if not k.startswith("EXAI_") and k not in dropped}


@dataclass
class Daemon:
    """One `exai serve`; `managed` is None for a remote deployment (it cannot be restarted from here)."""

    url: str
    managed: Managed | None = None

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"

    def restart(self, sig: int = signal.SIGTERM) -> float:
        """Stop it with `sig`, start it again; the seconds from start to ready (`/readyz` 200)."""
        assert self.managed is not None, "only a local daemon can be restarted"
        self.managed.stop(sig)
        return self.managed.start("/readyz")


@dataclass
class Target:
    """The simulator and the daemons of one run."""

    sim_url: str
    storage: Storage
    group: ProcessGroup | None = None
    remote: Daemon | None = None
    token: str | None = None
    schemas: list[str] = field(default_factory=list)

    @property
    def local(self) -> bool:
        return self.group is not None

    def base_env(self, storage: Storage | None = None) -> dict[str, str]:
        """A daemon's environment: providers on the simulator, limits high enough for load, its own storage."""
        assert self.group is not None
        sim = self.sim_url
        env = {
            **_inherited_env(),
            "CUSTOM_API_URL": f"{sim}/v1",
            "CUSTOM_MODELS": SIM_MODELS,
            "KIMI_API_KEY": "sk-stress-kimi",
            "KIMI_BASE_URL": f"{sim}/v1",
            "EXAI_LOG_LEVEL": "WARNING",
            "EXAI_LOG_JSON": "true",
            "EXAI_RETRY_BASE_DELAY": "0.01",
            "EXAI_RETRY_MAX_DELAY": "0.05",
            "EXAI_MAX_SESSIONS_PER_TENANT": "2000",
            "EXAI_MAX_CONNECTIONS": "4096",  # the load scenario holds 1,024 calls (connections) at once
            "EXAI_RATE_LIMIT_RPM": "1000000",
            "EXAI_RATE_LIMIT_CONCURRENCY": "5000",
            "EXAI_RATE_LIMIT_TOKENS_PER_DAY": "1000000000",
            "EXAI_PROVIDER_CONCURRENCY": "2000",
            "EXAI_MAX_TURNS_PER_THREAD": "100000",
            "EXAI_DATA_DIR": str(self.group.workdir / f"data-{secrets.token_hex(4)}"),
        }
        storage = storage or self.storage
        if storage != "sqlite":
            schema = f"exai_stress_{secrets.token_hex(6)}"
            self.schemas.append(schema)
            env |= {"EXAI_DATABASE_URL": LOCAL_POSTGRES, "EXAI_DATABASE_SCHEMA": schema}
        if storage == "postgres+redis":
            env["EXAI_REDIS_URL"] = LOCAL_REDIS  # keys are per tenant; every tenant of a run has a random name
        return env

    def daemon(self, name: str, storage: Storage | None = None, **extra: str) -> Daemon:
        """A new local daemon (or the remote one), ready to serve."""
        if self.group is None:
            assert self.remote is not None
            return self.remote
        port = free_port()
        env = {**self.base_env(storage), **extra, "EXAI_PORT": str(port)}
        managed = self.group.exai(name, ["serve"], env, port)
        managed.start("/readyz")
        return Daemon(managed.url, managed)

    def stop_daemon(self, daemon: Daemon) -> None:
        if daemon.managed is not None:
            daemon.managed.stop()

    def close(self) -> None:
        if self.group is not None:
            self.group.close()
        if self.schemas:
            import psycopg

            with contextlib.suppress(psycopg.Error), psycopg.connect(LOCAL_POSTGRES, autocommit=True) as conn:
                for schema in self.schemas:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def local_target(storage: Storage) -> Target:
    group = ProcessGroup()
    port = free_port()
    try:
        group.exai("sim", ["sim", "--port", str(port)], _inherited_env(), port).start("/_sim/stats")
    except BaseException:
        group.close()
        raise
    return Target(f"http://127.0.0.1:{port}", storage, group=group)


def remote_target(url: str, sim_url: str, token: str | None) -> Target:
    return Target(sim_url.rstrip("/"), "sqlite", remote=Daemon(url.rstrip("/").removesuffix("/mcp")), token=token)
