"""The shared PostgreSQL and Redis servers: reachability, the bench database, versions."""

import redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, create_engine, make_url, pool, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

CONNECT_TIMEOUT_S = 3


class ServiceUnavailable(RuntimeError):
    """PostgreSQL or Redis does not answer; the message is one line for the user."""


def first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def _db_error(exc: SQLAlchemyError) -> str:
    """The driver's own message (e.g. "connection refused"), not SQLAlchemy's wrapper text."""
    return first_line(getattr(exc, "orig", None) or exc)


def sqlalchemy_url(url: str) -> URL:
    """The URL with the driver the API uses (psycopg2), whatever scheme was given."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ServiceUnavailable(f"BENCH_DATABASE_URL must be a PostgreSQL URL, not {url!r}")
    return parsed.set(drivername="postgresql+psycopg2")


def shown(url: URL | str) -> str:
    """A URL for messages: any password hidden."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def _engine(url: URL) -> Engine:
    return create_engine(
        url,
        poolclass=pool.NullPool,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S, "application_name": "bench"},
    )


def ensure_database(url: URL) -> None:
    """Create the bench database when it is missing (connects to the server's `postgres` db)."""
    name = url.database
    if not name:
        raise ServiceUnavailable(f"BENCH_DATABASE_URL names no database: {shown(url)}")
    admin = _engine(url.set(database="postgres")).execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if not exists:
                quoted = connection.dialect.identifier_preparer.quote(name)
                connection.execute(text(f"CREATE DATABASE {quoted}"))
    except SQLAlchemyError as exc:
        raise ServiceUnavailable(
            f"PostgreSQL unreachable at {shown(url)}: {_db_error(exc)}"
        ) from None
    finally:
        admin.dispose()


def postgres_version(url: URL) -> str:
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            return str(connection.scalar(text("SHOW server_version")))
    except SQLAlchemyError as exc:
        raise ServiceUnavailable(
            f"PostgreSQL unreachable at {shown(url)}: {_db_error(exc)}"
        ) from None
    finally:
        engine.dispose()


def redis_client(url: str) -> "redis.Redis":
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=CONNECT_TIMEOUT_S
    )


def redis_version(url: str) -> str:
    """PING Redis and return its version."""
    try:
        client = redis_client(url)
        try:
            client.ping()
            info = client.info("server")
        finally:
            client.close()
    except (RedisError, OSError, ValueError) as exc:
        raise ServiceUnavailable(f"Redis unreachable at {shown(url)}: {first_line(exc)}") from None
    return str(info.get("redis_version", "?"))


def flush_redis(url: str) -> None:
    """Empty the bench's Redis database: cached stats of a previous run would be wrong now."""
    client = redis_client(url)
    try:
        client.flushdb()
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable(f"Redis unreachable at {shown(url)}: {first_line(exc)}") from None
    finally:
        client.close()
