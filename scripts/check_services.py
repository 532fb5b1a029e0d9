"""Probe the PostgreSQL and Redis servers used by the second test pass.

Used by scripts/test.sh. Reads TEST_DATABASE_URL and TEST_REDIS_URL (same
defaults as test.sh), prints one line per service and exits 0 when both answer,
1 when at least one is unreachable. Only psycopg2, redis and the standard
library are imported, so it runs from the project venv.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.exceptions import RedisError

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
PG_CONNECT_TIMEOUT_S = 3
REDIS_TIMEOUT_S = 2.0


def redact(url: str) -> str:
    """Return url with any password replaced by '***'."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def libpq_url(url: str) -> str:
    """Drop a SQLAlchemy driver suffix (postgresql+psycopg2 -> postgresql)."""
    scheme, sep, rest = url.partition("://")
    return scheme.split("+", 1)[0] + sep + rest


def first_line(exc: BaseException) -> str:
    """Return the first non-empty line of an exception message, or its type."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def check_postgresql(url: str) -> str | None:
    """Connect and run SELECT 1; return None on success, else the error."""
    # psycopg2 ships no type stubs; importing it through importlib keeps
    # `mypy --strict` quiet whether or not types-psycopg2 is installed.
    psycopg2 = importlib.import_module("psycopg2")
    try:
        dsn = libpq_url(url)
        conn = psycopg2.connect(dsn, connect_timeout=PG_CONNECT_TIMEOUT_S)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                row = cur.fetchone()
        finally:
            conn.close()
    except psycopg2.Error as exc:
        return first_line(exc)
    if row is None or row[0] != 1:
        return f"unexpected SELECT 1 result: {row!r}"
    return None


def check_redis(url: str) -> str | None:
    """PING the server; return None on success, else the error."""
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            socket_timeout=REDIS_TIMEOUT_S,
        )
        try:
            ok = client.ping()
        finally:
            client.close()
    except (RedisError, OSError, ValueError) as exc:
        return first_line(exc)
    if ok is not True:
        return f"unexpected PING reply: {ok!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    """Probe both services and report; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TEST_DATABASE_URL") or DEFAULT_DATABASE_URL,
        help="PostgreSQL URL (default: $TEST_DATABASE_URL or %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("TEST_REDIS_URL") or DEFAULT_REDIS_URL,
        help="Redis URL (default: $TEST_REDIS_URL or %(default)s)",
    )
    args = parser.parse_args(argv)
    database_url: str = args.database_url
    redis_url: str = args.redis_url

    failures = 0
    checks = (
        ("PostgreSQL", database_url, check_postgresql),
        ("Redis", redis_url, check_redis),
    )
    for name, url, check in checks:
        error = check(url)
        if error is None:
            sys.stdout.write(f"{name}: ok at {redact(url)}\n")
        else:
            failures += 1
            where = redact(url)
            sys.stdout.write(f"{name}: UNREACHABLE at {where} ({error})\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
