"""Processes the stress run starts itself (simulator, daemons, throwaway Redis and PostgreSQL), always stopped."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

START_CEILING_SECONDS = 300.0  # a start, not a judgement: at load average 26 the simulator took 70 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reachable(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds the listening socket of 127.0.0.1:`port`. On a shared machine another program
    may take a free port between our probe and the daemon's bind: a 200 from that port must be from ours."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    with contextlib.suppress(OSError):
        return any(os.readlink(fd) in inodes for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False


def live_children() -> dict[int, str]:
    """This process's living child processes (pid -> command), read from /proc: zombies are not alive."""
    found: dict[int, str] = {}
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            text = stat.read_text()
            name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
            if rest[1] == me and rest[0] != "Z":
                found[int(stat.parent.name)] = name
    return found


@dataclass
class Managed:
    """One child process on a loopback port, with its log file."""

    args: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # stopped on purpose (by `stop`), as opposed to having exited by itself
    stop_signal: int | None = None  # how the run stops it (default: SIGTERM for Python, SIGKILL for the others)
    own_group: bool = False  # it forks workers of its own (nginx): started in a group of its own, killed as a group

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, ready_path: str | None = "/healthz") -> float:
        """Start it and wait until `ready_path` answers 200; returns the seconds that took."""
        started = time.monotonic()
        self.stopped = False
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=self.own_group
            )
        while time.monotonic() - started < START_CEILING_SECONDS:
            if self.process.poll() is not None:
                raise RuntimeError(f"{' '.join(self.args[2:])} exited with {self.process.returncode}: {self.tail()}")
            if ready_path is None:
                if reachable(self.port) and listens_on(self.process.pid, self.port):
                    return time.monotonic() - started
            else:
                with contextlib.suppress(httpx2.TransportError):
                    ready = httpx2.get(self.url + ready_path, timeout=2).status_code == 200
                    if ready and listens_on(self.process.pid, self.port):
                        return time.monotonic() - started
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"{' '.join(self.args[2:])} was not ready within {START_CEILING_SECONDS:.0f} s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.stopped = True
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.own_group:  # a worker its master did not take down
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    @property
    def default_stop_signal(self) -> int:
        if self.stop_signal is not None:
            return self.stop_signal
        return signal.SIGTERM if self.args[0] == sys.executable else signal.SIGKILL

    def tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@dataclass
class ProcessGroup:
    """Everything started for one run; `close` stops all of it (also on Ctrl-C, via the runner's `finally`)."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="exai-stress-")))
    children: list[Managed] = field(default_factory=list)
    clusters: list[PostgresCluster] = field(default_factory=list)

    def exai(self, name: str, args: list[str], env: dict[str, str], port: int) -> Managed:
        managed = Managed([sys.executable, "-m", "exai", *args], env, port, self.workdir / f"{name}-{port}.log")
        self.children.append(managed)
        return managed

    def redis(self) -> Managed:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; the faults scenario starts a throwaway one")
        port = free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        managed = Managed(args, dict(os.environ), port, self.workdir / f"redis-{port}.log")
        self.children.append(managed)
        return managed

    def nginx(self, replica_ports: list[int]) -> Managed:
        """deploy/nginx.conf round-robining over `replica_ports`, without the per-address limits (every client of
        the run shares one address); not yet started. Stopped with SIGTERM: its master takes its worker down."""
        from exai.stress.balancer import nginx_args, nginx_binary, nginx_config

        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
        port = free_port()
        prefix = self.workdir / f"nginx-{port}"
        (prefix / "logs").mkdir(parents=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_config(replica_ports, port, per_address_limits=False))
        managed = Managed(nginx_args(binary, prefix, conf), dict(os.environ), port, prefix / "logs" / "stderr.log")
        managed.stop_signal, managed.own_group = signal.SIGTERM, True
        self.children.append(managed)
        return managed

    def postgres(self) -> PostgresCluster:
        cluster = PostgresCluster(self.workdir / f"pg-{len(self.clusters)}", free_port())
        self.clusters.append(cluster)
        cluster.create()
        return cluster

    def mark(self) -> tuple[int, int]:
        """Where the processes started from now on begin (see `stop_since`)."""
        return len(self.children), len(self.clusters)

    def exited_since(self, mark: tuple[int, int]) -> list[str]:
        """Processes started after `mark` that exited by themselves (not stopped by us), with their log's tail."""
        return [
            f"{' '.join(Path(a).name for a in c.args[:4])} on port {c.port} exited with {c.process.returncode}:\n"
            + c.tail(1500)
            for c in self.children[mark[0] :]
            if c.process is not None and c.process.poll() is not None and not c.stopped
        ]

    def stop_since(self, mark: tuple[int, int]) -> list[str]:
        """Stop every process and cluster started after `mark`; what is still running afterwards (should be none)."""
        children, clusters = self.children[mark[0] :], self.clusters[mark[1] :]
        for child in reversed(children):
            with contextlib.suppress(Exception):
                child.stop(child.default_stop_signal, timeout=15)
        alive = [f"PostgreSQL cluster {c.data}" for c in clusters if not _destroyed(c)]
        alive += [f"{' '.join(Path(a).name for a in c.args[:4])} on port {c.port}" for c in children if c.running]
        del self.children[mark[0] :], self.clusters[mark[1] :]
        return alive

    def close(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop(child.default_stop_signal, timeout=15)
        for cluster in self.clusters:
            with contextlib.suppress(Exception):
                cluster.destroy()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _destroyed(cluster: PostgresCluster) -> bool:
    try:
        return cluster.destroy()
    except Exception:  # pg_ctl missing or refusing: judged by whether its postmaster still runs
        return not cluster.running


def _pg_binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        raise RuntimeError(f"{name} is not installed; the faults scenario starts a throwaway PostgreSQL cluster")
    return str(found)


@dataclass
class PostgresCluster:
    """A throwaway cluster from initdb, started and stopped with pg_ctl (as `nobody` when run as root)."""

    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        """PostgreSQL refuses to run as root: then the cluster belongs to `nobody`."""
        ids = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        if ids is None:
            subprocess.run(args, check=True, capture_output=True, timeout=120)
        else:
            subprocess.run(
                args, check=True, capture_output=True, timeout=120, user=ids.pw_uid, group=ids.pw_gid, extra_groups=[]
            )

    def create(self) -> None:
        self.data.mkdir(parents=True)
        if os.geteuid() == 0:
            os.chmod(self.data.parent, 0o755)
            shutil.chown(self.data, "nobody", pwd.getpwnam("nobody").pw_gid)
        self._run(_pg_binary("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1"
        log = str(self.data / "server.log")  # the server writes here, not into our pipes (which would never close)
        self._run(_pg_binary("pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run(_pg_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    @property
    def running(self) -> bool:
        """Whether its postmaster is alive (its pid file names a living process)."""
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pid_file.read_text().split()[0]), 0)
            return True
        return False

    def destroy(self) -> bool:
        """Stop it (immediately) and delete its files; False when its postmaster is still running."""
        with contextlib.suppress(subprocess.SubprocessError):
            self._run(_pg_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        stopped = not self.running
        shutil.rmtree(self.data, ignore_errors=True)
        return stopped
