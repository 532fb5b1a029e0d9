"""Idempotency keys: a keyed request's 2xx result, stored in the transaction of its work.

There is never a committed "in progress" row: the result is inserted by the transaction that
does the work, so either both are committed or neither is. While that transaction runs, a
second request with the same key must not start the work again:

- on PostgreSQL each request takes a transaction-level advisory lock on (user, key) without
  waiting (`pg_try_advisory_xact_lock`); a request that cannot take it answers 409 at once,
  and one that takes it sees every result committed before (the lock is released at commit);
- on SQLite the claim starts with a write (the purge of expired keys), which waits for the
  database's write lock and so for the other request's transaction to end; then it sees the
  stored result. Should two requests still collide, the later one is a 409.
"""

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
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


def _serialize(session: Session, *, owner_id: int, key: str, ttl: timedelta) -> None:
    """Make sure no other transaction is doing this key's work while this one decides."""
    if session.get_bind().dialect.name == "postgresql":
        taken = session.scalar(select(func.pg_try_advisory_xact_lock(_lock_key(owner_id, key))))
        if not taken:
            raise IdempotencyInProgressError(RETRY_AFTER_SECONDS)
        purge_expired(session, ttl=ttl)
        return
    # SQLite: the purge is a write, so it takes the database's write lock now, waiting (up to
    # the busy timeout) for a transaction doing this key's work to finish; the read below then
    # sees its result. A transaction that read before that commit cannot write any more.
    try:
        purge_expired(session, ttl=ttl)
    except OperationalError:
        raise IdempotencyInProgressError(RETRY_AFTER_SECONDS) from None


def claim(
    session: Session, *, owner_id: int, key: str, fingerprint: str, ttl: timedelta
) -> StoredResult | None:
    """Start a keyed request: its stored result to replay, or None to do the work now.

    Raises:
        IdempotencyInProgressError: another request with this key is still running.
        IdempotencyKeyReusedError: the key stands for a different request.
    """
    _serialize(session, owner_id=owner_id, key=key, ttl=ttl)
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
