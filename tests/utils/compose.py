"""docker-compose.yml read the way docker compose reads it: YAML, `${VAR}` interpolation (with
`:-`, `-`, `:?`, `?` and `$$`), merge keys, depends_on order and healthchecks.

Used by the structure tests and by the stack test that runs the compose services as local
processes, so a change to the compose file changes what those tests run."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"

_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A `${VAR:?message}` whose variable is unset (or empty)."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute variables in one string as docker compose does."""

    def one(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if unset else str(value)
        if op in (":?", "?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return str(value)
        return "" if value is None else value

    return _VAR.sub(one, text)


def _walk(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_walk(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _walk(value, env) for key, value in node.items()}
    return node


def load_raw(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The YAML document with merge keys resolved, nothing interpolated."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


@dataclass(frozen=True)
class Healthcheck:
    """A service's healthcheck: the argv to run (CMD, or CMD-SHELL through sh -c)."""

    argv: list[str]
    interval: str | None = None
    start_period: str | None = None


@dataclass
class Service:
    """One compose service after interpolation."""

    name: str
    spec: dict[str, Any]

    @property
    def command(self) -> list[str]:
        command = self.spec.get("command") or []
        return command.split() if isinstance(command, str) else [str(c) for c in command]

    @property
    def environment(self) -> dict[str, str]:
        env = self.spec.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        return {str(k): "" if v is None else str(v) for k, v in env.items()}

    @property
    def depends_on(self) -> dict[str, str]:
        deps = self.spec.get("depends_on") or {}
        if isinstance(deps, list):
            return {name: "service_started" for name in deps}
        return {
            name: (cond or {}).get("condition", "service_started") for name, cond in deps.items()
        }

    @property
    def healthcheck(self) -> Healthcheck | None:
        check = self.spec.get("healthcheck")
        if not check or check.get("disable"):
            return None
        test = check["test"]
        if isinstance(test, str):
            argv = ["sh", "-c", test]
        elif test[0] == "CMD":
            argv = [str(t) for t in test[1:]]
        elif test[0] == "CMD-SHELL":
            argv = ["sh", "-c", " ".join(str(t) for t in test[1:])]
        else:
            return None
        return Healthcheck(argv, check.get("interval"), check.get("start_period"))

    @property
    def profiles(self) -> list[str]:
        return list(self.spec.get("profiles") or [])

    @property
    def ports(self) -> list[str]:
        return [str(p) for p in self.spec.get("ports") or []]


@dataclass
class Compose:
    """The interpolated compose model."""

    services: dict[str, Service] = field(default_factory=dict)
    volumes: dict[str, Any] = field(default_factory=dict)

    def active(self, profiles: tuple[str, ...] = ()) -> list[Service]:
        """Services `docker compose up` starts with these profiles, in dependency order."""
        chosen = {
            name: s
            for name, s in self.services.items()
            if not s.profiles or set(s.profiles) & set(profiles)
        }
        order: list[Service] = []
        seen: set[str] = set()

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in seen:
                return
            assert name not in path, f"dependency cycle: {' -> '.join((*path, name))}"
            for dep in chosen[name].depends_on:
                assert dep in chosen, f"{name} depends on {dep}, which is not started"
                visit(dep, (*path, name))
            seen.add(name)
            order.append(chosen[name])

        for name in chosen:
            visit(name, ())
        return order


def load(env: Mapping[str, str], path: Path = COMPOSE_FILE) -> Compose:
    """Parse and interpolate the compose file with this environment."""
    raw = load_raw(path)
    services = {
        name: Service(name, _walk(spec, env)) for name, spec in (raw.get("services") or {}).items()
    }
    return Compose(services=services, volumes=dict(raw.get("volumes") or {}))
