"""Settings: every setting documented, secrets enforced, URLs normalized."""

import os
import re
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from config import PROJECT_DIR, Settings, derived_redis_key_prefix

GOOD_KEY = "k3J9vQ2mX7pL5wZ8nB4cR6tY1uH0sD2fG9aE7iO3"


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_env_example_documents_every_setting() -> None:
    text = (PROJECT_DIR / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    declared = {name.upper() for name in Settings.model_fields}
    assert declared - documented == set(), "settings missing from .env.example"
    assert documented - declared == set(), ".env.example names unknown settings"


@pytest.mark.parametrize(
    "key",
    [
        "",
        "too-short-but-random-Zx81",
        "change-me-change-me-change-me-change-me",
        "your-secret-key-goes-here-0123456789abcdef",
        "a" * 64,
    ],
    ids=["missing", "short", "placeholder", "tutorial", "repetitive"],
)
def test_weak_secret_key_is_refused_with_advice(key: str) -> None:
    with pytest.raises(ValidationError, match="token_urlsafe"):
        _settings(secret_key=key)


def test_service_refuses_to_start_without_a_secret_key() -> None:
    env = {**os.environ, "SECRET_KEY": ""}
    result = subprocess.run(
        [sys.executable, "-c", "import main"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "SECRET_KEY must be a random string of at least 32 characters" in result.stderr


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/app", "postgresql+psycopg2://u:p@db:5432/app"),
        ("postgres://u@db/app", "postgresql+psycopg2://u@db/app"),
        ("postgresql+psycopg2://u@db/app", "postgresql+psycopg2://u@db/app"),
        ("sqlite:////var/data/app.db", "sqlite:////var/data/app.db"),
    ],
)
def test_postgres_urls_use_psycopg2(given: str, expected: str) -> None:
    assert _settings(secret_key=GOOD_KEY, database_url=given).database_url == expected


def test_defaults_are_the_embedded_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = _settings(secret_key=GOOD_KEY)
    assert settings.database_url == f"sqlite:///{PROJECT_DIR / 'taskmanager.db'}"
    assert settings.redis_url is None
    assert settings.access_token_expire_minutes == 15
    assert settings.refresh_token_expire_days == 30
    assert settings.max_upload_bytes == 10 * 1024 * 1024
    assert settings.cors_origins == []
    assert settings.notice_limit_per_hour == 30
    assert settings.redis_key_prefix == derived_redis_key_prefix(settings.database_url)


def test_the_default_prefix_is_derived_from_the_database_and_not_its_password() -> None:
    def prefix(**values: Any) -> str:
        return _settings(secret_key=GOOD_KEY, **values).redis_key_prefix

    production = "postgresql://app:s3cret@db.internal:5432/taskmanager"
    assert prefix(database_url=production) == prefix(
        database_url=production.replace("s3cret", "rotated")
    )
    assert prefix(database_url=production) != prefix(
        database_url=production.replace("/taskmanager", "/staging")
    )
    assert prefix(database_url=production) != prefix(
        database_url=production.replace("db.internal", "db2.internal")
    )
    assert "s3cret" not in prefix(database_url=production)
    assert prefix(database_url=production, redis_key_prefix="shop-prod") == "shop-prod"
    assert prefix(redis_key_prefix="  shop-prod: ") == "shop-prod"


@pytest.mark.parametrize("bad", ["has space", "star*", "a" * 65, "brace{x}"])
def test_a_prefix_that_a_key_pattern_would_misread_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError, match="REDIS_KEY_PREFIX"):
        _settings(secret_key=GOOD_KEY, redis_key_prefix=bad)


def test_list_and_blank_values_from_the_environment() -> None:
    settings = _settings(
        secret_key=GOOD_KEY,
        cors_origins="https://a.example, https://b.example",
        redis_url="  ",
        log_format="JSON",
        log_level="debug",
    )
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.redis_url is None
    assert settings.log_format == "json"
    assert settings.log_level == "DEBUG"
