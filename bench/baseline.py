"""An earlier revision of the API, served beside today's so that one run compares the two.

`BENCH_BASELINE=<git revision>` exports that revision's committed files into a folder of the
run, builds its schema with its own migrations in a database of its own, seeds it with the very
rows today's API gets (without the columns its schema lacks) and serves it with the same uvicorn
command and the same interpreter. Each compared scenario then runs against today's API and
the baseline back to back in every repeat, so both ratios share that repeat's ceiling.

A ratio measured on another day, machine or ceiling means nothing next to today's; this is
how "no scenario more than 5 % below its ratio before the change" is shown.
"""

import io
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from jose import jwt
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from config import Settings

from .options import PROJECT_DIR

BASELINE = "baseline"  # the server's name in the run
SUFFIX = "@" + BASELINE  # a compared scenario's twin: "list@baseline"
MIGRATION_TIMEOUT_S = 300


class BaselineError(RuntimeError):
    """The baseline revision could not be exported, migrated or served; says why in one line."""


@dataclass(frozen=True)
class Baseline:
    revision: str  # as the user gave it
    commit: str
    directory: Path
    database_url: str
    redis_url: str
    upload_dir: Path

    @property
    def label(self) -> str:
        return f"{self.revision} ({self.commit[:10]})"


def _git(*args: str) -> bytes:
    result = subprocess.run(  # noqa: S603 (git with our own arguments)
        ["git", "-C", str(PROJECT_DIR), *args],  # noqa: S607 (git from PATH, as make does)
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip().splitlines()
        raise BaselineError(
            f"git {' '.join(args[:2])} failed: {reason[-1] if reason else result.returncode}"
        )
    return result.stdout


def export(revision: str, into: Path) -> str:
    """Write the revision's committed files into `into`; its full commit id."""
    commit = _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").decode().strip()
    archive = _git("archive", "--format=tar", commit)
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return commit


def database_url_for(database_url: str) -> str:
    """The baseline's own database: today's bench database name + `_baseline`."""
    url = make_url(database_url)
    return url.set(database=f"{url.database}_{BASELINE}").render_as_string(hide_password=False)


def environment(overrides: dict[str, str]) -> dict[str, str]:
    """The baseline's process environment: none of today's settings, only `overrides`.

    The revision runs with its own defaults, as its `make serve` would; a developer's
    settings in the shell do not leak into it.
    """
    env = {
        key: value for key, value in os.environ.items() if key.lower() not in Settings.model_fields
    }
    env.update(overrides)
    return env


def server_settings(baseline: Baseline, secret_key: str) -> dict[str, str]:
    """What the bench sets for the baseline, as it does for today's API."""
    return {
        "DATABASE_URL": baseline.database_url,
        "REDIS_URL": baseline.redis_url,
        "SECRET_KEY": secret_key,
        "RATE_LIMIT_ENABLED": "false",
        "UPLOAD_DIR": str(baseline.upload_dir),
        "CORS_ORIGINS": "",
    }


def migrate(baseline: Baseline, engine: Engine, secret_key: str) -> None:
    """Drop the baseline database's schema and build it with the revision's own migrations."""
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    try:
        result = subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=baseline.directory,
            env=environment(server_settings(baseline, secret_key)),
            capture_output=True,
            text=True,
            timeout=MIGRATION_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BaselineError(f"the baseline's migrations ran over {MIGRATION_TIMEOUT_S} s") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise BaselineError(
            f"the baseline's migrations failed: {lines[-1] if lines else result.returncode}"
        )


def access_token(user_id: int, secret_key: str, lifetime: timedelta) -> str:
    """A token of the revisions before login sessions: the user id in `sub`, signed HS256."""
    now = datetime.now(UTC)
    claims = {"sub": str(user_id), "iat": now, "exp": now + lifetime}
    return str(jwt.encode(claims, secret_key, algorithm="HS256"))


def accepted(api_url: str, tokens: list[str]) -> bool:
    """Whether the served baseline authenticates every token (GET /auth/me answers 200)."""
    with httpx.Client(base_url=api_url, timeout=30) as client:
        return all(
            client.get("/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            for token in tokens
        )


def choose_tokens(api_url: str, candidates: dict[str, list[str]]) -> list[str]:
    """The first set of tokens (today's format, then older ones) the baseline accepts."""
    for tokens in candidates.values():
        if accepted(api_url, tokens):
            return tokens
    raise BaselineError("the baseline refused every bench token format: " + ", ".join(candidates))
