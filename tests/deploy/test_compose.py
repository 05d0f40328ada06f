"""docker-compose.yml: valid YAML, every role healthy-checked with commands that exist, secrets
required, only web published, Flower protected, workers per queue with graceful stops."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.utils.compose import ROOT, Compose, MissingVariable, interpolate, load, load_raw

SECRETS = {
    "TELEGRAM_TOKEN": "123456:TEST-token",
    "POSTGRES_PASSWORD": "0123456789abcdef",
    "REDIS_PASSWORD": "fedcba9876543210",
    "ADMIN_TOKEN": "0123456789abcdef0123",
    "FLOWER_BASIC_AUTH": "ops:0123456789abcdef",
    "GRAFANA_ADMIN_PASSWORD": "0123456789abcdef",
}
APP_ROLES = {
    "bot": "bot",
    "web": "web",
    "worker-gpu": "worker",
    "worker-train": "worker",
    "worker-io": "worker",
    "beat": "beat",
}


@pytest.fixture(scope="module")
def compose() -> Compose:
    return load(SECRETS)


def _seconds(text: str) -> float:
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def test_the_file_is_yaml_that_docker_compose_accepts() -> None:
    raw = load_raw()
    assert set(raw) <= {"name", "services", "volumes", "networks", "secrets", "configs"} | {
        k for k in raw if k.startswith("x-")
    }
    assert raw["name"] == "facechain-bot"


def test_interpolation_rules() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $$x", env) == "v d  d $x"
    with pytest.raises(MissingVariable, match="how to"):
        interpolate("${EMPTY:?how to}", env)


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_each_secret_is_required(secret: str) -> None:
    env = {k: v for k, v in SECRETS.items() if k != secret}
    with pytest.raises(MissingVariable, match=secret):
        load(env)


def test_roles_and_their_commands_exist(compose: Compose) -> None:
    from service.cli import build_parser

    parser = build_parser()
    for name, command in APP_ROLES.items():
        service = compose.services[name]
        assert service.command[0] == command, name
        parser.parse_args(service.command)
    # The one-shot step migrates and imports the catalog; every app role waits for it.
    migrate = compose.services["migrate"]
    assert migrate.command == ["migrate", "--import-styles"]
    parser.parse_args(migrate.command)
    for name in APP_ROLES:
        assert compose.services[name].depends_on["migrate"] == "service_completed_successfully"


def test_a_worker_per_queue(compose: Compose) -> None:
    queues = {}
    for name in ("worker-gpu", "worker-train", "worker-io"):
        command = compose.services[name].command
        queues[name] = command[command.index("--queues") + 1]
    assert queues == {"worker-gpu": "gpu", "worker-train": "train", "worker-io": "io"}
    for name in ("worker-gpu", "worker-train"):
        spec = compose.services[name].spec
        assert spec["build"]["dockerfile"] == "Dockerfile.gpu"
        assert "models:/models" in spec["volumes"]
        [device] = spec["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia"
        assert device["capabilities"] == ["gpu"]
    for name in ("bot", "web", "worker-io", "beat", "migrate"):
        assert compose.services[name].spec["build"]["dockerfile"] == "Dockerfile"


def test_every_role_has_a_healthcheck_that_exists(compose: Compose) -> None:
    from service.cli import build_parser

    parser = build_parser()
    for name, service in compose.services.items():
        if name == "migrate":
            continue
        check = service.healthcheck
        assert check is not None, f"{name} has no healthcheck"
        if name in APP_ROLES:
            assert check.argv[:2] == ["facechain-bot", "health"], name
            args = parser.parse_args(check.argv[1:])
            assert args.role == APP_ROLES[name], name


def test_graceful_stops(compose: Compose) -> None:
    """Docker waits for Celery's warm shutdown: the job in hand finishes before the stop."""
    from core.settings import BrokerSettings

    assert _seconds(compose.services["worker-gpu"].spec["stop_grace_period"]) >= 300
    # io tasks run in threads: each is bounded by the io time limit, which the grace outlasts.
    io_grace = _seconds(compose.services["worker-io"].spec["stop_grace_period"])
    assert io_grace >= BrokerSettings().io_time_limit + 20
    for name in APP_ROLES:
        assert "stop_grace_period" in compose.services[name].spec, name


def test_only_web_is_published_and_bot_serves_no_admin_api(compose: Compose) -> None:
    published = {name for name, s in compose.services.items() if s.ports and not s.profiles}
    assert published == {"web", "flower"}
    [web_port] = compose.services["web"].ports
    assert web_port == "127.0.0.1:8080:8080"
    assert load({**SECRETS, "WEB_BIND": "0.0.0.0"}).services["web"].ports == ["0.0.0.0:8080:8080"]
    bot = compose.services["bot"]
    assert "ADMIN_HOST" not in bot.environment
    assert bot.command == ["bot"]


def test_flower_needs_a_password_and_stays_on_localhost(compose: Compose) -> None:
    flower = compose.services["flower"]
    assert flower.environment["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]
    assert all(port.startswith("127.0.0.1:") for port in flower.ports)


def test_monitoring_profile(compose: Compose) -> None:
    names = {s.name for s in compose.active(("monitoring",))} - {s.name for s in compose.active()}
    assert names == {"prometheus", "grafana"}
    for name in names:
        for volume in compose.services[name].spec["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_startup_order(compose: Compose) -> None:
    order = [s.name for s in compose.active()]
    assert order.index("postgres") < order.index("migrate") < order.index("bot")
    assert order.index("redis") < order.index("worker-io")


def test_redis_requires_its_password_everywhere(compose: Compose) -> None:
    """Redis carries jobs and (webhook mode) Telegram's updates: it takes a password, every
    client's URL has it, and the healthcheck fails without it."""
    password = SECRETS["REDIS_PASSWORD"]
    redis = compose.services["redis"]
    command = redis.command
    assert command[command.index("--requirepass") + 1] == password
    assert redis.environment["REDISCLI_AUTH"] == password
    check = redis.healthcheck
    assert check is not None
    assert check.argv[0] == "redis-cli"
    # -e: an error reply (NOAUTH) is a failed check, not exit status 0.
    assert "-e" in check.argv
    raw = (ROOT / "docker-compose.yml").read_text()
    urls = re.findall(r"redis://[^\s\"]*", raw)
    assert urls
    for url in urls:
        assert url.startswith("redis://:${REDIS_PASSWORD:?"), url
    for name, service in compose.services.items():
        for key, value in service.environment.items():
            if value.startswith("redis://"):
                assert f":{password}@" in value, (name, key)


def test_env_example_names_every_required_secret() -> None:
    example = (ROOT / ".env.example").read_text()
    for name in SECRETS:
        assert re.search(rf"^{name}=", example, re.MULTILINE), name


def test_s3_settings_reach_every_app_role(compose: Compose) -> None:
    for name in (*APP_ROLES, "migrate"):
        env = compose.services[name].environment
        for key in ("STORAGE_BACKEND", "STORAGE_S3_BUCKET", "STORAGE_S3_ENDPOINT_URL"):
            assert key in env, (name, key)


def test_docs_describe_every_healthcheck() -> None:
    deploy = (Path(ROOT) / "docs" / "DEPLOY.md").read_text()
    for role in ("bot", "web", "worker-gpu", "worker-train", "worker-io", "beat"):
        assert f"`{role}`" in deploy, role
