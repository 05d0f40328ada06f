"""`facechain-bot health ROLE`: the compose healthcheck of every role.

It asks the role's own `/readyz` on 127.0.0.1 (web: its admin port; bot, worker, beat: the probe
port, PROBE_PORT) and exits 0 only for a 200 from a probe of that role. It reads the ports from
the environment and nothing else, so it stays quick and works with any configuration."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

ROLES = ("bot", "web", "worker", "beat")


def health_command(args: argparse.Namespace) -> int:
    """Exit status 0 when the role answers ready, 1 when not, 2 when misconfigured."""
    role: str = args.role
    port = args.port
    if port is None:
        name = "ADMIN_PORT" if role == "web" else "PROBE_PORT"
        value = os.environ.get(name) or ("8080" if role == "web" else "")
        if not value:
            sys.stderr.write(f"{name} is not set: the {role} has no probe port to ask\n")
            return 2
        port = int(value)
    url = f"http://{args.host}:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"{role}: {url} unreachable: {exc}\n")
        return 1
    text = body.decode(errors="replace")
    sys.stdout.write(text[:2000] + "\n")
    if status != 200:
        return 1
    if role != "web":
        try:
            reported = json.loads(text).get("role")
        except ValueError:
            reported = None
        if reported != role:
            sys.stderr.write(f"port {port} answers for {reported!r}, not {role!r}\n")
            return 1
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The `health` subcommand."""
    p = sub.add_parser(
        "health",
        help="exit 0 when a role is ready (the compose healthchecks)",
        description=health_command.__doc__,
    )
    p.add_argument("role", choices=ROLES, help="which role to ask")
    p.add_argument("--port", type=int, help="port to ask (default ADMIN_PORT / PROBE_PORT)")
    p.add_argument("--host", default="127.0.0.1", help="address to ask (default 127.0.0.1)")
    p.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    p.set_defaults(func=health_command)
