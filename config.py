"""Application settings: the one place that reads the environment."""

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Self

from limits import parse_many
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

PROJECT_DIR = Path(__file__).resolve().parent

# Values people paste from tutorials; a key like these is public knowledge.
_PLACEHOLDER_MARKERS = (
    "changeme",
    "change-me",
    "change_me",
    "your-secret",
    "your_secret",
    "yoursecret",
    "secret-key",
    "secret_key",
    "secretkey",
    "placeholder",
    "example",
    "insecure",
)
_DEFAULT_DATABASE_URL = f"sqlite:///{PROJECT_DIR / 'taskmanager.db'}"
_HOW_TO_MAKE_A_KEY = (
    "SECRET_KEY must be a random string of at least 32 characters. Generate one with: "
    "python3 -c 'import secrets; print(secrets.token_urlsafe(48))' "
    "and put it in the environment or in .env (`make run` writes one for you)."
)
# Characters a Redis key prefix may hold: none that a SCAN pattern or an ACL key pattern reads.
_REDIS_KEY_PREFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")


def derived_redis_key_prefix(database_url: str) -> str:
    """The default REDIS_KEY_PREFIX: a short hash of the database URL without its password.

    Two deployments on different databases never share keys; changing the password of the
    same database keeps the prefix (and so the cached entries and counters).
    """
    try:
        url = make_url(database_url)
        identity = URL.create(
            url.drivername,
            username=url.username,
            host=url.host,
            port=url.port,
            database=url.database,
            query=url.query,
        ).render_as_string(hide_password=False)
    except ArgumentError:
        identity = database_url
    return "tm-" + hashlib.sha256(identity.encode()).hexdigest()[:12]


class Settings(BaseSettings):
    """Every setting of the service; `.env.example` documents each one."""

    model_config = SettingsConfigDict(
        env_file=PROJECT_DIR / ".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    database_url: str = _DEFAULT_DATABASE_URL
    db_pool_size: int = Field(default=20, ge=1, le=200)
    db_max_overflow: int = Field(default=0, ge=0, le=200)
    db_connect_timeout_seconds: int = Field(default=5, ge=1, le=60)
    # Off: a connection that died while pooled fails one request (503), which makes the pool
    # replace every connection as old as it. On: one extra round trip on every checkout, for
    # networks that silently drop idle connections.
    db_pool_pre_ping: bool = False
    # Connections older than this are replaced when next checked out (0: never).
    db_pool_recycle_seconds: int = Field(default=1800, ge=0, le=86_400)
    db_statement_timeout_ms: int = Field(default=10_000, ge=0, le=600_000)
    # PostgreSQL: the busiest reads (a task, a list, the statistics) and a create without an
    # Idempotency-Key run on the async driver, on the event loop, with no thread-pool hop;
    # off: every request goes through psycopg2.
    db_async_reads: bool = True

    redis_url: str | None = None
    redis_socket_timeout_ms: int = Field(default=50, ge=1, le=10_000)
    stats_cache_ttl_seconds: int = Field(default=300, ge=1, le=86_400)
    # Every Redis key starts with "<prefix>:"; empty derives it from DATABASE_URL.
    redis_key_prefix: str = ""

    secret_key: SecretStr = Field(default=SecretStr(""), validate_default=True)
    user_cache_seconds: float = Field(default=10.0, ge=0, le=300)
    access_token_expire_minutes: int = Field(default=15, ge=1, le=60 * 24 * 30)
    refresh_token_expire_days: int = Field(default=30, ge=1, le=365)
    bcrypt_rounds: int = Field(default=12, ge=4, le=31)

    rate_limit_enabled: bool = True
    rate_limit_register: str = "10/hour"
    rate_limit_login: str = "5/minute"
    rate_limit_login_username: str = "10/minute"
    rate_limit_create_task: str = "100/hour"
    rate_limit_upload: str = "20/hour"
    rate_limit_default: str = "300/minute"
    rate_limit_account_email: str = "10/hour"

    # Request bodies other than uploads; larger ones are refused (413) before they are parsed.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1, le=1024 * 1024 * 1024)

    # Read by scripts/run.sh and scripts/serve.sh for uvicorn's options, so .env can hold them too.
    # Empty: no proxy header is trusted (uvicorn alone would trust them from 127.0.0.1).
    forwarded_allow_ips: str = ""
    keep_alive_seconds: int = Field(default=5, ge=1, le=600)
    max_connections_per_worker: int = Field(default=1000, ge=1, le=1_000_000)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    log_file: Path | None = None
    log_file_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, le=1024**3)
    log_file_backup_count: int = Field(default=5, ge=0, le=100)

    upload_dir: Path = PROJECT_DIR / "uploads"
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1, le=1024 * 1024 * 1024)
    max_files_per_task: int = Field(default=20, ge=1, le=10_000)

    storage_backend: Literal["local", "s3"] = "local"
    storage_namespace: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_region: str = "us-east-1"
    s3_presign_seconds: int | None = Field(default=None, ge=1, le=7 * 24 * 3600)
    # The standard AWS variables, read here too so that .env can hold them; unset ones fall
    # through to boto3's own credential chain (profiles, instance roles).
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None

    notifier: Literal["log", "smtp"] | None = None
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_from: str | None = None
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    smtp_timeout_seconds: float = Field(default=10, gt=0, le=120)
    notice_limit_per_hour: int = Field(default=30, ge=0, le=100_000)

    # Work after a commit (notices, removing stored bytes), recorded in the outbox table.
    job_timeout_seconds: int = Field(default=120, ge=1, le=3600)
    job_max_attempts: int = Field(default=8, ge=1, le=100)
    outbox_sweep_seconds: float = Field(default=30, gt=0, le=3600)

    metrics_token: SecretStr | None = None

    cors_origins: Annotated[list[str], NoDecode] = []

    # Writes to one task without If-Match answer 428 (clients must prove what they saw).
    require_if_match: bool = False
    # How long a stored Idempotency-Key result is replayed; after that the key is new again.
    idempotency_ttl_hours: float = Field(default=24, gt=0, le=24 * 365)

    @field_validator("database_url")
    @classmethod
    def _use_psycopg2(cls, url: str) -> str:
        # SQLAlchemy 2.1 maps a bare postgresql:// URL to psycopg 3; we ship psycopg2.
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg2://" + url.removeprefix(prefix)
        return url

    @field_validator("database_url", mode="before")
    @classmethod
    def _blank_database_is_default(cls, value: object) -> object:
        return _DEFAULT_DATABASE_URL if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "rate_limit_register",
        "rate_limit_login",
        "rate_limit_login_username",
        "rate_limit_create_task",
        "rate_limit_upload",
        "rate_limit_default",
        "rate_limit_account_email",
    )
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        # A typo must stop the service at start, not silently disable the limit.
        try:
            parse_many(value)
        except ValueError:
            raise ValueError(
                f"not a rate limit like '10/hour' or '5 per minute': {value!r}"
            ) from None
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _strip_forwarded_allow_ips(cls, value: str) -> str:
        return value.strip()

    @field_validator("log_file", mode="before")
    @classmethod
    def _blank_log_file_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_file")
    @classmethod
    def _log_file_in_project(cls, value: Path | None) -> Path | None:
        return value if value is None or value.is_absolute() else PROJECT_DIR / value

    @field_validator("upload_dir")
    @classmethod
    def _upload_dir_in_project(cls, value: Path) -> Path:
        return value if value.is_absolute() else PROJECT_DIR / value

    @field_validator(
        "notifier",
        "smtp_host",
        "smtp_from",
        "smtp_username",
        "smtp_password",
        "storage_namespace",
        "s3_endpoint_url",
        "s3_bucket",
        "s3_presign_seconds",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _blank_metrics_token_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_token")
    @classmethod
    def _long_metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("METRICS_TOKEN must be at least 16 characters (or empty: no /metrics)")
        return value

    @model_validator(mode="after")
    def _smtp_needs_a_server(self) -> Self:
        if self.notifier == "smtp" and not (self.smtp_host and self.smtp_from):
            raise ValueError("NOTIFIER=smtp needs SMTP_HOST and SMTP_FROM")
        return self

    @field_validator("redis_key_prefix")
    @classmethod
    def _redis_key_prefix_is_plain(cls, value: str) -> str:
        value = value.strip().rstrip(":")
        if value and not _REDIS_KEY_PREFIX.fullmatch(value):
            raise ValueError(
                "REDIS_KEY_PREFIX: 1-64 letters, digits, '.', '_' or '-' (or empty to derive it)"
            )
        return value

    @model_validator(mode="after")
    def _derive_redis_key_prefix(self) -> Self:
        if not self.redis_key_prefix:
            self.redis_key_prefix = derived_redis_key_prefix(self.database_url)
        return self

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Self:
        if self.storage_backend == "s3" and not self.s3_bucket:
            raise ValueError("STORAGE_BACKEND=s3 needs S3_BUCKET")
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
        return self

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("S3_ENDPOINT_URL must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @field_validator("storage_backend", mode="before")
    @classmethod
    def _lower_backend(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _blank_redis_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _normalize_case(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        levels = {"debug", "info", "warning", "error", "critical"}
        return value.upper() if value.lower() in levels else value.lower()

    @field_validator("secret_key")
    @classmethod
    def _strong_secret(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value()
        looks_made_up = len(set(key)) < 10 or any(m in key.lower() for m in _PLACEHOLDER_MARKERS)
        if len(key) < 32 or looks_made_up:
            raise ValueError(_HOW_TO_MAKE_A_KEY)
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
