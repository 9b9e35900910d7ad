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
LOCAL_REDIS_HOST = "redis://127.0.0.1:6379"
AUDIENCE = "exai-stress"
TOKEN_TTL_SECONDS = 7 * 86400  # longer than any run


@dataclass(frozen=True)
class Isolation:
    """What keeps one run's data apart from everyone else's on a shared PostgreSQL and Redis: a Redis database
    (never 0 unless asked), a tenant name every call of the run is made as, and a random PostgreSQL schema."""

    redis_db: int
    tenant: str

    @classmethod
    def chosen(cls, redis_db: int | None, tenant: str | None) -> Isolation:
        run = secrets.token_hex(4)
        return cls(redis_db if redis_db is not None else 1 + secrets.randbelow(15), tenant or f"stress-{run}")

    @property
    def redis_url(self) -> str:
        return f"{LOCAL_REDIS_HOST}/{self.redis_db}"


def run_token(tenant: str, admin: bool = True) -> str:
    """A token the local daemons accept (they share the run's secret): the run's tenant, with the admin scope so
    the run may read /metrics and the status page."""
    from exai.security.auth import issue_token

    scopes = ["exai:tools", "exai:admin"] if admin else ["exai:tools"]
    return issue_token(STRESS_SECRET, tenant, scopes, TOKEN_TTL_SECONDS, audience=AUDIENCE)


def _inherited_env() -> dict[str, str]:
    """This process's environment without any EX-AI setting or provider key: daemons talk to the simulator only."""
    from exai.provider_specs import PROVIDER_SPECS

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
class Replicas:
    """Daemon replicas in stateless mode on one PostgreSQL schema and one Redis database, behind nginx."""

    daemons: list[Daemon]
    balancer: Managed

    @property
    def url(self) -> str:
        return self.balancer.url

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/mcp"


@dataclass
class Target:
    """The simulator and the daemons of one run."""

    sim_url: str
    storage: Storage
    group: ProcessGroup | None = None
    remote: Daemon | None = None
    token: str | None = None
    schemas: list[str] = field(default_factory=list)
    isolation: Isolation = field(default_factory=lambda: Isolation.chosen(None, None))

    @property
    def local(self) -> bool:
        return self.group is not None

    @property
    def sim_pid(self) -> int | None:
        """The local simulator's process id (it is the group's first process)."""
        if self.group is None or not self.group.children or self.group.children[0].process is None:
            return None
        return self.group.children[0].process.pid

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
            "EXAI_RETRY_BASE_DELAY_SECONDS": "0.01",
            "EXAI_RETRY_MAX_DELAY_SECONDS": "0.05",
            "EXAI_MAX_SESSIONS_PER_TENANT": "2000",
            "EXAI_MAX_CONNECTIONS": "4096",  # the load scenario holds 1,024 calls (connections) at once
            "EXAI_RATE_LIMIT_RPM": "1000000",
            "EXAI_RATE_LIMIT_CONCURRENCY": "5000",
            "EXAI_RATE_LIMIT_TOKENS_PER_DAY": "1000000000",
            "EXAI_RATE_LIMIT_STORED_CHARS_PER_DAY": "1000000000000",  # a 4-hour soak's turns, and far more
            "EXAI_PROVIDER_CONCURRENCY": "2000",
            "EXAI_MAX_TURNS_PER_THREAD": "100000",
            "EXAI_DATA_DIR": str(self.group.workdir / f"data-{secrets.token_hex(4)}"),
            "EXAI_JWT_SECRET": STRESS_SECRET,  # every call is made as the run's own tenant, never `local`
            "EXAI_JWT_AUDIENCE": AUDIENCE,
        }
        storage = storage or self.storage
        if storage != "sqlite":
            schema = f"exai_stress_{secrets.token_hex(6)}"
            self.schemas.append(schema)
            env |= {"EXAI_DATABASE_URL": LOCAL_POSTGRES, "EXAI_DATABASE_SCHEMA": schema}
        if storage == "postgres+redis":
            env["EXAI_REDIS_URL"] = self.isolation.redis_url  # the run's own database; keys are per (random) tenant
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

    def replicas(self, name: str, count: int) -> Replicas:
        """`count` local daemons sharing PostgreSQL (one schema) and Redis (the run's database), stateless so any
        replica answers any request, behind nginx configured from deploy/nginx.conf."""
        assert self.group is not None, "replicas are started locally"
        shared = {**self.base_env("postgres+redis"), "EXAI_STATELESS_HTTP": "true"}
        daemons = []
        for index in range(count):
            port = free_port()
            env = {**shared, "EXAI_PORT": str(port), "EXAI_DATA_DIR": f"{shared['EXAI_DATA_DIR']}-r{index}"}
            managed = self.group.exai(f"{name}-r{index}", ["serve"], env, port)
            managed.start("/readyz")
            daemons.append(Daemon(managed.url, managed))
        balancer = self.group.nginx([d.managed.port for d in daemons if d.managed is not None])
        balancer.start("/healthz")
        return Replicas(daemons, balancer)

    def stop_replicas(self, replicas: Replicas) -> None:
        replicas.balancer.stop(signal.SIGTERM)
        for daemon in replicas.daemons:
            self.stop_daemon(daemon)

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


def local_target(storage: Storage, isolation: Isolation) -> Target:
    group = ProcessGroup()
    port = free_port()
    try:
        group.exai("sim", ["sim", "--port", str(port)], _inherited_env(), port).start("/_sim/stats")
    except BaseException:
        group.close()
        raise
    token = run_token(isolation.tenant)
    return Target(f"http://127.0.0.1:{port}", storage, group=group, token=token, isolation=isolation)


def remote_target(url: str, sim_url: str, token: str | None, isolation: Isolation) -> Target:
    daemon = Daemon(url.rstrip("/").removesuffix("/mcp"))
    return Target(sim_url.rstrip("/"), "sqlite", remote=daemon, token=token, isolation=isolation)
