"""Settings: embedded defaults, env names deployments rely on, readable validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import AppConfig, load_config

ENV_NAMES = [
    "TELEGRAM_TOKEN",
    "TELEGRAM_API_BASE_URL",
    "TELEGRAM_FILE_BASE_URL",
    "TELEGRAM_ADMIN_IDS",
    "TELEGRAM_MODE",
    "TELEGRAM_WEBHOOK_URL",
    "TELEGRAM_WEBHOOK_SECRET",
    "DATABASE_URL",
    "BROKER_URL",
    "ENGINE_PROFILE",
    "ADMIN_TOKEN",
    "DATA_DIR",
    "STORAGE_BACKEND",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


class TestDefaults:
    def test_embedded_defaults_live_under_data_dir(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("DATA_DIR", str(tmp_path / "d"))
        config = AppConfig()
        assert config.database.url == f"sqlite:///{tmp_path / 'd' / 'facechain.db'}"
        assert config.broker.embedded
        assert config.broker.effective_url == f"sqla+sqlite:///{tmp_path / 'd' / 'broker.db'}"
        assert config.storage.blobs_path == tmp_path / "d" / "blobs"
        assert config.engine.profile == "real"
        assert config.telegram.token is None

    def test_names_deployments_rely_on(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TELEGRAM_TOKEN", "123:abc")
        monkeypatch.setenv("TELEGRAM_API_BASE_URL", "http://127.0.0.1:9/bot")
        monkeypatch.setenv("TELEGRAM_FILE_BASE_URL", "http://127.0.0.1:9/file/bot")
        monkeypatch.setenv("TELEGRAM_ADMIN_IDS", "1, 2;3")
        monkeypatch.setenv("DATABASE_URL", "postgres://u@h/db")
        monkeypatch.setenv("BROKER_URL", "redis://127.0.0.1:6379/0")
        monkeypatch.setenv("ENGINE_PROFILE", "tiny")
        monkeypatch.setenv("ADMIN_TOKEN", "a" * 32)
        config = load_config()
        assert config.telegram.token is not None
        assert config.telegram.token.get_secret_value() == "123:abc"
        assert "123:abc" not in repr(config)
        assert config.telegram.api_base_url == "http://127.0.0.1:9/bot"
        assert config.telegram.file_base_url == "http://127.0.0.1:9/file/bot"
        assert config.telegram.admin_ids == [1, 2, 3]
        assert config.database.url == "postgresql+psycopg://u@h/db"
        assert config.broker.effective_url == "redis://127.0.0.1:6379/0"
        assert not config.broker.embedded
        assert config.engine.profile == "tiny"


class TestValidation:
    @pytest.mark.parametrize(
        ("name", "value", "expected"),
        [
            ("TELEGRAM_TOKEN", "changeme", "TELEGRAM_TOKEN: TELEGRAM_TOKEN is a placeholder"),
            ("TELEGRAM_TOKEN", "nocolon", "TELEGRAM_TOKEN: does not look like a bot token"),
            ("TELEGRAM_ADMIN_IDS", "alice,bob", "TELEGRAM_ADMIN_IDS: must be comma-separated"),
            ("ENGINE_PROFILE", "huge", "ENGINE_PROFILE: Input should be 'real' or 'tiny'"),
            ("ADMIN_TOKEN", "short", "ADMIN_TOKEN: must be at least 16 characters"),
            (
                "TELEGRAM_WEBHOOK_SECRET",
                "abc",
                "TELEGRAM_WEBHOOK_SECRET: must be at least 16 characters",
            ),
            (
                "TELEGRAM_WEBHOOK_SECRET",
                "changeme",
                "TELEGRAM_WEBHOOK_SECRET: TELEGRAM_WEBHOOK_SECRET is a placeholder",
            ),
            (
                "TELEGRAM_WEBHOOK_SECRET",
                "sixteen chars or more!",
                "TELEGRAM_WEBHOOK_SECRET: Telegram takes 16 to 256 characters of A-Z",
            ),
            ("DATABASE_URL", "mysql://x/y", "DATABASE_URL: only sqlite:/// and postgresql://"),
        ],
    )
    def test_errors_name_the_variable(
        self, monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
    ) -> None:
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError) as info:
            load_config()
        assert expected in str(info.value)
        assert "Traceback" not in str(info.value)

    def test_webhook_mode_needs_url_and_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TELEGRAM_MODE", "webhook")
        with pytest.raises(ConfigError, match="TELEGRAM_WEBHOOK_URL and TELEGRAM_WEBHOOK_SECRET"):
            load_config()
