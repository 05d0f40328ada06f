"""Run docker-compose.yml's own services as local processes.

What each process runs is read from the compose file: the image's ENTRYPOINT (from the
service's Dockerfile) plus the service's `command`, its `environment` after `${VAR}`
interpolation, the `depends_on` order and conditions, and its `healthcheck` command. Only what a
container would give differently is mapped: the `postgres` hostname becomes the local server
(the test's own database), named volumes become temp folders, each container's probe port
becomes a free local port (containers have a network namespace each, local processes share one),
and a published port is served on the host port compose would publish. PostgreSQL already runs on
127.0.0.1; only its healthcheck runs here. Redis is started from the compose service's own
command (its password included) on a free local port: the `redis` hostname in every URL becomes
that port, and so does its healthcheck's `-p 6379`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tests.utils.compose import ROOT, Compose, Service

# Running on this machine already: their healthchecks are run, they are not started.
LOCAL_SERVERS = {"postgres"}
# Third-party servers started here from their compose command (the program installed locally).
LOCAL_PROGRAMS = {"redis"}
REDIS_PORT = 6379
# Third-party images that are not this project's processes.
EXTERNAL = {"flower"}
# What every local process gets besides its compose environment (a container has its own).
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def entrypoint(service: Service) -> list[str]:
    """The ENTRYPOINT of the service's Dockerfile, with its program found in this venv."""
    dockerfile = (service.spec.get("build") or {}).get("dockerfile")
    assert dockerfile, f"{service.name} has no build: it is not one of this project's images"
    match = re.search(r"^ENTRYPOINT (\[.*\])$", (ROOT / dockerfile).read_text(), re.MULTILINE)
    assert match, f"{dockerfile} has no exec-form ENTRYPOINT"
    argv: list[str] = json.loads(match.group(1))
    return [program(argv[0]), *argv[1:]]


def program(name: str) -> str:
    """A command of the image, as installed on this machine (the venv's console scripts)."""
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return str(local)
    found = shutil.which(name)
    assert found, f"{name} is not installed here"
    return found


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on (from /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class Localised:
    """One service, mapped onto this machine."""

    service: Service
    argv: list[str]
    env: dict[str, str]
    health: list[str] | None
    host_ports: dict[int, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    ready_at: float | None = None

    @property
    def name(self) -> str:
        return self.service.name

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""


@dataclass
class LocalStack:
    """The compose services as processes, started in depends_on order."""

    compose: Compose
    workdir: Path
    database_url: str
    extra_env: Mapping[str, str] = field(default_factory=dict)
    redis_port: int = field(default_factory=lambda: free_port())
    services: dict[str, Localised] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)

    def localise(self, service: Service) -> Localised:
        """Map one service's command, environment and healthcheck onto this machine."""
        env = dict(service.environment)
        if "DATABASE_URL" in env:
            host = urlsplit(env["DATABASE_URL"]).hostname
            assert host in LOCAL_SERVERS, f"{service.name}: DATABASE_URL points at {host}"
            env["DATABASE_URL"] = self.database_url
        for key, value in env.items():
            if value.startswith("redis://"):
                env[key] = self.redis_url(value)
        for volume in service.spec.get("volumes") or []:
            source, target = str(volume).split(":")[:2]
            if source.startswith((".", "/")):
                continue
            local_dir = self.workdir / "volumes" / source
            local_dir.mkdir(parents=True, exist_ok=True)
            for key, value in env.items():
                if value == target or value.startswith(target + "/"):
                    env[key] = str(local_dir) + value[len(target) :]
        if "PROBE_PORT" in env:
            env["PROBE_PORT"] = str(free_port())
        host_ports: dict[int, int] = {}
        for mapping in service.ports:
            *_, host_port, container_port = mapping.split(":")
            host_ports[int(container_port)] = int(host_port)
        argv = [*entrypoint(service), *service.command] if service.spec.get("build") else []
        if service.name in LOCAL_PROGRAMS:
            host_ports[REDIS_PORT] = self.redis_port
            data = self.workdir / "volumes" / "redisdata"
            data.mkdir(parents=True, exist_ok=True)
            argv = [program(service.command[0]), *service.command[1:]]
            argv += ["--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--dir", str(data)]
        check = service.healthcheck
        health = list(check.argv) if check else None
        if health and health[0] != "sh":
            health[0] = program(health[0])
        argv = [self._host_port(a, host_ports) for a in argv]
        if health:
            health = [self._host_port(a, host_ports) for a in health]
        base = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
        return Localised(service, argv, {**base, **self.extra_env, **env}, health, host_ports)

    def redis_url(self, url: str) -> str:
        """A compose `redis://` URL, pointed at the local Redis (password and database kept)."""
        parts = urlsplit(url)
        assert parts.hostname == "redis", f"{url} points at {parts.hostname}"
        auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return parts._replace(netloc=f"{auth}127.0.0.1:{self.redis_port}").geturl()

    @staticmethod
    def _host_port(arg: str, host_ports: Mapping[int, int]) -> str:
        # A container binds all its interfaces; here the published port on loopback stands in.
        if arg == "0.0.0.0":
            return "127.0.0.1"
        if arg.isdigit() and int(arg) in host_ports:
            return str(host_ports[int(arg)])
        return arg

    # running --------------------------------------------------------------------------------

    def healthy(self, name: str) -> bool:
        """Run the service's healthcheck once: exit status 0."""
        local = self.services[name]
        assert local.health, f"{name} has no healthcheck"
        result = subprocess.run(
            local.health, env=local.env, capture_output=True, timeout=20, cwd=self.workdir
        )
        return result.returncode == 0

    async def wait_condition(self, name: str, condition: str, seconds: float) -> None:
        """Until `name` meets a depends_on condition (healthy, completed, started)."""
        deadline = time.monotonic() + seconds
        local = self.services[name]
        while True:
            if condition == "service_started" and (name in LOCAL_SERVERS or local.proc):
                return
            if condition == "service_healthy" and await asyncio.to_thread(self.healthy, name):
                local.ready_at = local.ready_at or time.monotonic()
                return
            if condition == "service_completed_successfully" and local.proc is not None:
                code = local.proc.poll()
                if code is not None:
                    assert code == 0, f"{name} exited {code}:\n{local.log()[-4000:]}"
                    return
            self.check_alive(exclude={name} if condition.endswith("successfully") else set())
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{name} not {condition} after {seconds:g} s:\n{local.log()[-4000:]}"
                )
            await asyncio.sleep(0.3)

    def check_alive(self, exclude: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        """Fail at once, with its log, if a long-running service exited."""
        for name, local in self.services.items():
            if name in exclude or local.proc is None or name == "migrate":
                continue
            if local.proc.poll() is not None:
                raise AssertionError(
                    f"{name} exited {local.proc.returncode}:\n{local.log()[-4000:]}"
                )

    def start(self, name: str) -> None:
        """Start one service's process, logging to a file."""
        local = self.services[name]
        local.log_path = self.workdir / "logs" / f"{name}.log"
        local.log_path.parent.mkdir(parents=True, exist_ok=True)
        with local.log_path.open("ab") as log:
            local.proc = subprocess.Popen(
                local.argv,
                env=local.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(name)

    async def up(self, seconds: float) -> list[str]:
        """`docker compose up`: every active service in order; returns the start order."""
        order = self.compose.active()
        for service in order:
            if service.name in EXTERNAL:
                continue
            self.services[service.name] = self.localise(service)
        for service in order:
            if service.name in EXTERNAL or service.name in LOCAL_SERVERS:
                continue
            for dep, condition in service.depends_on.items():
                await self.wait_condition(dep, condition, seconds)
            self.start(service.name)
        return self.started

    async def wait_healthy(self, names: list[str], seconds: float) -> None:
        """Until every named service's healthcheck passes."""
        await asyncio.gather(*(self.wait_condition(n, "service_healthy", seconds) for n in names))

    def down(self, timeout: float = 30) -> dict[str, int | None]:
        """SIGTERM every process group (Docker's stop), SIGKILL stragglers; exit codes."""
        for name in reversed(self.started):
            proc = self.services[name].proc
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for name in self.started:
            proc = self.services[name].proc
            assert proc is not None
            try:
                codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
                codes[name] = None
        return codes
