"""Settings: one pydantic-settings class per concern, composed into `AppConfig`.

Everything comes from environment variables (and an optional `.env`). Defaults are the
embedded ones: a SQLite file, the SQLite broker transport and a local blob folder, all
under `DATA_DIR`, so `facechain-bot run` works on a fresh machine with only a token.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Values people paste from examples; refusing them at startup beats a confusing 401 later.
PLACEHOLDER_SECRETS = {
    "changeme",
    "change-me",
    "changethis",
    "secret",
    "token",
    "xxx",
    "your-token",
}

# What Telegram accepts as a webhook's secret_token (setWebhook).
_WEBHOOK_SECRET_CHARS = re.compile(r"[A-Za-z0-9_-]+")

# An empty variable counts as unset: compose passes `${VAR:-}` as "" for every optional one.
_ENV = SettingsConfigDict(
    env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
)


def _data_dir() -> Path:
    return Path(os.environ.get("DATA_DIR", "data")).resolve()


def _reject_placeholder(value: SecretStr | None, name: str) -> SecretStr | None:
    if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
        raise ValueError(f"{name} is a placeholder value; set a real secret")
    return value


class TelegramSettings(BaseSettings):
    """Bot token, Bot API endpoints, admins and update mode."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="TELEGRAM_")

    token: SecretStr | None = None
    api_base_url: str = "https://api.telegram.org/bot"
    file_base_url: str = "https://api.telegram.org/file/bot"
    admin_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    admin_chat_id: int | None = None
    mode: Literal["polling", "webhook"] = "polling"
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    # Users allowed to train styles besides admins.
    trainer_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    # Messages the bot starts itself (broadcasts, scheduled notices) per second, in all chats.
    bulk_messages_per_second: float = Field(default=30.0, gt=0)

    @field_validator("admin_ids", "trainer_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, int):
            return [value]
        if isinstance(value, str):
            parts = [p.strip() for p in value.replace(";", ",").split(",") if p.strip()]
            try:
                return [int(p) for p in parts]
            except ValueError as exc:
                raise ValueError(
                    "must be comma-separated numeric Telegram user ids, e.g. 12345,67890"
                ) from exc
        return value

    @field_validator("token")
    @classmethod
    def _token_shape(cls, value: SecretStr | None) -> SecretStr | None:
        _reject_placeholder(value, "TELEGRAM_TOKEN")
        if value is not None and ":" not in value.get_secret_value():
            raise ValueError(
                "does not look like a bot token (expected '123456:ABC...' from @BotFather)"
            )
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        # The one guard of the public webhook route (and the key of the relay's signatures,
        # `service.relay_auth`): long enough not to be guessed, in Telegram's own alphabet.
        _reject_placeholder(value, "TELEGRAM_WEBHOOK_SECRET")
        if value is not None:
            secret = value.get_secret_value()
            if len(secret) < 16:
                raise ValueError("must be at least 16 characters (try: openssl rand -hex 24)")
            if len(secret) > 256 or not _WEBHOOK_SECRET_CHARS.fullmatch(secret):
                raise ValueError(
                    "Telegram takes 16 to 256 characters of A-Z, a-z, 0-9, _ and - only "
                    "(try: openssl rand -hex 24)"
                )
        return value

    @model_validator(mode="after")
    def _webhook_needs_url(self) -> TelegramSettings:
        if self.mode == "webhook" and not (self.webhook_url and self.webhook_secret):
            raise ValueError(
                "TELEGRAM_MODE=webhook needs TELEGRAM_WEBHOOK_URL and TELEGRAM_WEBHOOK_SECRET"
            )
        return self


class DatabaseSettings(BaseSettings):
    """SQL database URL (SQLAlchemy form); SQLite under DATA_DIR by default."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="DATABASE_")

    url: str = Field(default_factory=lambda: f"sqlite:///{_data_dir() / 'facechain.db'}")
    pool_size: int = 10
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _normalise(cls, value: str) -> str:
        # Accept the URLs people copy from hosting panels; we use psycopg 3 for PostgreSQL.
        if value.startswith("postgres://"):
            value = "postgresql://" + value[len("postgres://") :]
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value[len("postgresql://") :]
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("only sqlite:/// and postgresql:// URLs are supported")
        return value


class BrokerSettings(BaseSettings):
    """Celery broker; the embedded SQLite transport when BROKER_URL is unset."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="BROKER_")

    url: str | None = None
    # Seconds a gpu task may run before Celery kills it (soft limit raises inside the task).
    gpu_time_limit: int = 900
    # Style trainings (thousands of steps at FaceChain's defaults) get their own limit.
    train_time_limit: int = 6 * 3600
    io_time_limit: int = 120
    # A job queued this long without reaching the broker is re-sent by the sweep.
    outbox_grace_seconds: int = 30
    # How often beat runs the sweep (outbox, expired job leases, time limits, lost deliveries).
    sweep_interval_seconds: int = Field(default=30, ge=1)
    # A running job's lease: its worker renews it every third of this (heartbeat); once it has
    # expired the next sweep re-queues the job for any worker. A worker that dies (SIGKILL, a
    # lost machine, a redeploy) has its job taken over within lease + sweep interval (90 s).
    job_lease_seconds: int = Field(default=60, ge=3)
    # The lease of a delivery (an io task sending a job's outcome), renewed every third of it:
    # an outcome whose io worker died is sent again within lease + sweep interval (60 s).
    delivery_lease_seconds: int = Field(default=30, ge=3)

    @cached_property
    def effective_url(self) -> str:
        """The broker URL Celery gets: explicit, or the SQLite transport under DATA_DIR."""
        return self.url or f"sqla+sqlite:///{_data_dir() / 'broker.db'}"

    @property
    def embedded(self) -> bool:
        return self.url is None


class StorageSettings(BaseSettings):
    """Where blobs (selfies, results, LoRAs) and models live."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="STORAGE_")

    data_dir: Path = Field(default_factory=_data_dir, validation_alias="DATA_DIR")
    backend: Literal["local", "s3"] = "local"
    blob_dir: Path | None = None
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str | None = None

    @property
    def blobs_path(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"

    @model_validator(mode="after")
    def _s3_complete(self) -> StorageSettings:
        if self.backend == "s3" and not (
            self.s3_bucket and self.s3_access_key and self.s3_secret_key
        ):
            raise ValueError(
                "STORAGE_BACKEND=s3 needs STORAGE_S3_BUCKET, _ACCESS_KEY and _SECRET_KEY"
            )
        return self


class EngineSettings(BaseSettings):
    """Which weights the engine builds and where they are cached."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="ENGINE_")

    profile: Literal["real", "tiny"] = "real"
    models_dir: Path = Field(default_factory=lambda: _data_dir() / "models")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_images: int = Field(default=4, ge=1, le=8)
    num_candidates: int = Field(default=6, ge=1, le=16)
    steps: int | None = Field(default=None, ge=1, le=150)
    similarity_floor: float = Field(default=0.2, ge=-1.0, le=1.0)
    # GPU fast paths (`facechain/fastpath.py`), off until `bench/gpu.py` measured them on the
    # operator's GPU: faster and within fp16 tolerance of eager (bench/README.md).
    channels_last: bool = False
    fuse_qkv: bool = False
    compile_unet: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] | None = None
    vae_nan_guard: bool = False


class AdminSettings(BaseSettings):
    """Admin web API: bearer token and bind address."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="ADMIN_")

    token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Public metrics are convenient behind a private network; off means bearer auth.
    public_metrics: bool = True
    # When set, /metrics answers only `Authorization: Bearer <this>` (or the admin token):
    # Prometheus gets its own secret, not the admin one.
    metrics_token: SecretStr | None = None
    # Reverse proxies (addresses or networks, comma-separated) whose X-Forwarded-For names the
    # client: the admin lockout then counts failures per client, not per proxy.
    trusted_proxies: str = ""

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        for item in value.split(","):
            if item.strip():
                try:
                    ipaddress.ip_network(item.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"{item.strip()!r} is not an address or network") from None
        return value

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        _reject_placeholder(value, "ADMIN_METRICS_TOKEN")
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (try: openssl rand -hex 24)")
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        _reject_placeholder(value, "ADMIN_TOKEN")
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (try: openssl rand -hex 24)")
        return value


class LimitsSettings(BaseSettings):
    """Per-user limits and input bounds."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="LIMITS_")

    daily_quota: int = Field(default=20, ge=0)
    active_jobs_per_user: int = Field(default=1, ge=1)
    updates_per_minute: int = Field(default=30, ge=1)
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=40_000_000, ge=10_000)
    min_face_px: int = Field(default=64, ge=8)
    selfie_retention_days: int = Field(default=30, ge=1)
    # Portraits and HD files are deleted this many days after their job finished (the job row
    # stays, so "Show again" and HD say the images expired).
    result_retention_days: int = Field(default=30, ge=1)
    max_selfies: int = Field(default=5, ge=1, le=20)
    # A user's own template photos kept (/template, "My own photo"): storing one more deletes
    # the oldest (and its bytes) that no active job uses.
    max_template_photos: int = Field(default=10, ge=1, le=100)
    # Bytes of photos one user may store per UTC day (selfies, template, pose and training
    # photos, as stored); one over it is refused and nothing of it kept.
    upload_bytes_per_day: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    training_min_images: int = Field(default=5, ge=1)
    training_max_images: int = Field(default=50, ge=1)
    max_lora_bytes: int = Field(default=400 * 1024 * 1024, ge=1024)
    # Pictures one process decodes at once (each holds the decoded picture and its RGB copy, up
    # to 8 bytes a pixel: 320 MB for a 40 MP upload); the others wait their turn.
    decode_concurrency: int = Field(default=2, ge=1, le=64)


class PaymentsSettings(BaseSettings):
    """Paid generations in Telegram Stars (off by default: then only the free daily quota).

    Beyond the free daily quota a portrait or template job spends `price_*` credits; credits
    come in packs bought with Stars (`/buy`). An HD upscale is outside the free quota and costs
    `price_upscale` credits (0: free, as without payments). The terms and support texts answer
    `/terms` and `/paysupport` (Telegram requires both of a bot that sells digital goods)."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="PAYMENTS_")

    enabled: bool = False
    price_portrait: int = Field(default=1, ge=1, le=1000)
    price_template: int = Field(default=1, ge=1, le=1000)
    price_upscale: int = Field(default=0, ge=0, le=1000)
    # One text per language; an unset ru/zh text falls back to the English one, an unset
    # English one to the bot's built-in wording.
    terms_text: str | None = None
    terms_text_ru: str | None = None
    terms_text_zh: str | None = None
    paysupport_text: str | None = None
    paysupport_text_ru: str | None = None
    paysupport_text_zh: str | None = None
    # /forget deletes the user's payments too, unless bookkeeping law makes the operator keep
    # them: then the payment rows (charge id, Stars, pack, dates, refund) stay.
    forget_keeps_payment_records: bool = False
    # How often beat reconciles with Telegram (getStarTransactions): a payment whose
    # successful_payment update was lost is credited within this many seconds. 0: only an
    # admin's /reconcile or POST /api/v1/payments/reconcile.
    reconcile_interval_seconds: int = Field(default=3600, ge=0)
    # How long an invoice the bot sent can be paid; the checkout of an older one is refused
    # (the user taps /buy for a fresh one). A payment accepted at checkout is always credited.
    invoice_ttl_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)

    @field_validator("reconcile_interval_seconds")
    @classmethod
    def _interval(cls, value: int) -> int:
        if 0 < value < 60:
            raise ValueError("must be 0 (off) or at least 60 seconds")
        return value

    def price(self, kind: str) -> int:
        """Credits a job of this kind costs beyond the free quota (training: free)."""
        return {
            "portrait": self.price_portrait,
            "template": self.price_template,
            "upscale": self.price_upscale,
        }.get(kind, 0)

    def text(self, which: Literal["terms", "paysupport"], language: str) -> str | None:
        """The configured /terms or /paysupport text in a language (None: use the built-in)."""
        own: str | None = getattr(self, f"{which}_text_{language}", None)
        return own or getattr(self, f"{which}_text")


class WebhooksSettings(BaseSettings):
    """Outgoing webhooks (registered through the admin API)."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="WEBHOOKS_")

    # Off: an endpoint whose host is or resolves to a loopback, link-local, private, unique-local
    # or otherwise non-public address is refused at registration and again at each delivery
    # (internal services and cloud metadata are out of an admin token's reach). On: a receiver
    # on the same host or private network is allowed.
    allow_private: bool = False


class MiniAppSettings(BaseSettings):
    """The Telegram Mini App (`/miniapp/` on the admin web): its public URL, and how long the
    init data Telegram signs at launch is accepted."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="MINIAPP_")

    # The public https URL of `/miniapp/` (behind the reverse proxy); unset: no menu button,
    # no "Open gallery" button (the page is still served).
    url: str | None = None
    # Seconds after `auth_date` that init data is still accepted (Telegram signs it at launch).
    init_data_max_age: int = Field(default=86400, ge=60, le=30 * 86400)

    @field_validator("url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("https://"):
            raise ValueError("must be the public https:// URL of /miniapp/ (Telegram needs https)")
        return value


class ProbeSettings(BaseSettings):
    """The probe port of bot, workers and beat: /healthz, /readyz, /metrics (off when unset)."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="PROBE_")

    # All interfaces: Prometheus scrapes it over the compose network (it is never published).
    host: str = "0.0.0.0"
    port: int | None = Field(default=None, ge=0, le=65535)


class SafetySettings(BaseSettings):
    """The image safety checker: what it checks, how strictly, and whether it must be there."""

    model_config = SettingsConfigDict(**_ENV, env_prefix="SAFETY_")

    # block: a flagged portrait is dropped (the set is filled from spare candidates); off: none
    # is checked.
    outputs: Literal["block", "off"] = "block"
    # block: a flagged selfie, pose, template or training image is refused and not kept.
    inputs: Literal["block", "off"] = "block"
    # Margin over each concept's own threshold: 0 = diffusers' decision, below 0 flags more.
    threshold: float = Field(default=0.0, ge=-1.0, le=1.0)
    # true: a gpu worker without the checker's weights builds no engine and takes no job.
    required: bool = True
    # The admin chat is told when one user has this many flagged pictures in 24 hours.
    alert_after: int = Field(default=3, ge=1)


class AppConfig(BaseSettings):
    """Every concern's settings, built once in the entry point and passed down."""

    model_config = SettingsConfigDict(**_ENV)

    telegram: TelegramSettings = Field(default_factory=TelegramSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    payments: PaymentsSettings = Field(default_factory=PaymentsSettings)
    webhooks: WebhooksSettings = Field(default_factory=WebhooksSettings)
    miniapp: MiniAppSettings = Field(default_factory=MiniAppSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    log_level: str = "INFO"


def load_config() -> AppConfig:
    """Build the configuration from the environment; raises ConfigError with readable lines."""
    from pydantic import ValidationError

    from core.errors import ConfigError

    try:
        return AppConfig()
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def format_validation_error(exc: Exception) -> str:
    """Turn a pydantic ValidationError into 'ENV_NAME: reason' lines."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    prefix = {
        "TelegramSettings": "TELEGRAM_",
        "DatabaseSettings": "DATABASE_",
        "BrokerSettings": "BROKER_",
        "StorageSettings": "STORAGE_",
        "EngineSettings": "ENGINE_",
        "AdminSettings": "ADMIN_",
        "LimitsSettings": "LIMITS_",
        "ProbeSettings": "PROBE_",
        "PaymentsSettings": "PAYMENTS_",
        "WebhooksSettings": "WEBHOOKS_",
        "MiniAppSettings": "MINIAPP_",
    }.get(exc.title, "")
    lines = []
    for err in exc.errors():
        loc = "_".join(str(p) for p in err["loc"] if not isinstance(p, int)).upper()
        name = f"{prefix}{loc}" if loc else prefix.rstrip("_") or exc.title
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
