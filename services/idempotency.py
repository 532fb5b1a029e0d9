"""Idempotency keys: a keyed request's 2xx result, stored in the transaction of its work.

There is never a committed "in progress" row: the result is inserted by the transaction that
does the work, so either both are committed or neither is. While that transaction runs, a
second request with the same key must not start the work again:

- on PostgreSQL each request takes a transaction-level advisory lock on (user, key) without
  waiting (`pg_try_advisory_xact_lock`); a request that cannot take it answers 409 at once,
  and one that takes it sees every result committed before (the lock is released at commit);
- on SQLite writes are serialized by the database itself; should two requests still collide
  on the row, the unique (user, key) constraint turns the later one into a 409.
"""

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db_models import IdempotencyKey, utcnow
from exceptions import IdempotencyInProgressError, IdempotencyKeyReusedError

# What a client told "still in progress" should wait before it asks again, in seconds.
RETRY_AFTER_SECONDS = 1
# Expired rows removed per stored result: more than are ever added, so the table never grows.
_PURGE_BATCH = 100


@dataclass(frozen=True)
class StoredResult:
    status_code: int
    body: str
    location: str | None
    etag: str | None


def fingerprint(method: str, path: str, *parts: bytes) -> str:
    """The request's identity: method, path and body (for an upload: file name and hash)."""
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), *parts):
        # Length-prefixed, so no two different requests run together into one byte string.
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _lock_key(owner_id: int, key: str) -> int:
    raw = hashlib.blake2b(f"idempotency\x1f{owner_id}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(raw, "big", signed=True)


def _take_lock(session: Session, *, owner_id: int, key: str) -> None:
    if session.get_bind().dialect.name != "postgresql":
        return
    taken = session.scalar(select(func.pg_try_advisory_xact_lock(_lock_key(owner_id, key))))
    if not taken:
        raise IdempotencyInProgressError(RETRY_AFTER_SECONDS)


def claim(
    session: Session, *, owner_id: int, key: str, fingerprint: str, ttl: timedelta
) -> StoredResult | None:
    """Start a keyed request: its stored result to replay, or None to do the work now.

    Raises:
        IdempotencyInProgressError: another request with this key is still running.
        IdempotencyKeyReusedError: the key stands for a different request.
    """
    _take_lock(session, owner_id=owner_id, key=key)
    row = session.scalar(
        select(IdempotencyKey).where(IdempotencyKey.user_id == owner_id, IdempotencyKey.key == key)
    )
    if row is None:
        return None
    if row.created_at < utcnow() - ttl:
        # Expired: forgotten, so the key is new again.
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == row.id))
        return None
    if row.fingerprint != fingerprint:
        raise IdempotencyKeyReusedError()
    return StoredResult(row.status_code, row.body, row.location, row.etag)


def record(
    session: Session,
    *,
    owner_id: int,
    key: str,
    fingerprint: str,
    result: StoredResult,
    ttl: timedelta,
) -> None:
    """Store a 2xx result with the work of its request (call it in the same transaction)."""
    try:
        session.execute(
            insert(IdempotencyKey).values(
                user_id=owner_id,
                key=key,
                fingerprint=fingerprint,
                status_code=result.status_code,
                body=result.body,
                location=result.location,
                etag=result.etag,
                created_at=utcnow(),
            )
        )
    except IntegrityError:
        # The whole transaction, work included, is rolled back with this answer.
        raise IdempotencyInProgressError(RETRY_AFTER_SECONDS) from None
    purge_expired(session, ttl=ttl)


def purge_expired(session: Session, *, ttl: timedelta, limit: int = _PURGE_BATCH) -> int:
    """Delete up to `limit` results older than the TTL; rows another transaction holds are skipped."""
    expired = (
        select(IdempotencyKey.id)
        .where(IdempotencyKey.created_at < utcnow() - ttl)
        .order_by(IdempotencyKey.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.id.in_(expired)))
    return int(getattr(result, "rowcount", 0) or 0)
