"""SQLAlchemy tables. Alembic migrations build exactly this schema (a test proves it)."""

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator
from typing_extensions import override

from enums import Priority

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    @override
    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column")
        return value.astimezone(UTC)

    @override
    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class PriorityType(TypeDecorator[Priority]):
    """Stored as its rank so that sorting by priority is a plain, indexable integer sort."""

    impl = SmallInteger()
    cache_ok = True

    @override
    def process_bind_param(self, value: Priority | str | None, dialect: Dialect) -> int | None:
        return None if value is None else Priority(value).rank

    @override
    def process_result_value(self, value: int | None, dialect: Dialect) -> Priority | None:
        return None if value is None else Priority.from_rank(value)


def exists_on(obj: object, dialect_name: str) -> bool:
    """Whether a schema object is built on this dialect (some indexes are PostgreSQL-only)."""
    info = getattr(obj, "info", None) or {}
    return not (info.get("postgresql_only") and dialect_name != "postgresql")


# An id is never given twice, even after the row with the highest one is deleted: a stale
# token, link or log line can never name a newer object. PostgreSQL's sequences never go back;
# SQLite needs AUTOINCREMENT for that (without it, a new row takes the highest id + 1).
NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    hashed_password: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    email_verified: Mapped[bool] = mapped_column(default=False, server_default=false())

    __table_args__ = (
        # Usernames are unique regardless of case; the index also serves the login lookup.
        Index("uq_users_username_lower", func.lower(username), unique=True),
        NEVER_REUSE_IDS,
    )


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    completed: Mapped[bool] = mapped_column(default=False)
    priority: Mapped[Priority] = mapped_column(PriorityType(), default=Priority.MEDIUM)
    due_date: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # Raised by every change to the task's fields or tags; the task's ETag derives from it.
    # ORM flushes raise it themselves (version_id_col); UPDATE statements must set it.
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))

    tag_rows: Mapped[list["TaskTag"]] = relationship(
        back_populates="task",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
        order_by="TaskTag.tag",
    )
    files: Mapped[list["TaskFile"]] = relationship(
        back_populates="task",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="raise_on_sql",
        order_by="TaskFile.id",
    )

    __table_args__ = (
        # Listing is always by owner; the second column serves each sort order.
        Index("ix_tasks_user_id_id", "user_id", "id"),
        Index("ix_tasks_user_id_priority", "user_id", "priority", "id"),
        Index("ix_tasks_user_id_due_date", "user_id", "due_date", "id"),
        Index("ix_tasks_user_id_created_at", "user_id", "created_at", "id"),
        Index("ix_tasks_user_id_completed", "user_id", "completed", "id"),
        # Substring search (ILIKE '%...%'): trigram indexes, on PostgreSQL only (migration 0002).
        Index(
            "ix_tasks_title_trgm",
            "title",
            postgresql_using="gin",
            postgresql_ops={"title": "gin_trgm_ops"},
            info={"postgresql_only": True},
        ),
        Index(
            "ix_tasks_description_trgm",
            "description",
            postgresql_using="gin",
            postgresql_ops={"description": "gin_trgm_ops"},
            info={"postgresql_only": True},
        ),
        NEVER_REUSE_IDS,
    )

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012 (SQLAlchemy's own attribute)

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]


class TaskTag(Base):
    """One tag of one task. The owner is repeated here so tag filters and counts use one index."""

    __tablename__ = "task_tags"

    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(50), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))

    task: Mapped[Task] = relationship(back_populates="tag_rows")

    __table_args__ = (Index("ix_task_tags_user_id_tag", "user_id", "tag", "task_id"),)


class TaskFile(Base):
    __tablename__ = "task_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    original_filename: Mapped[str] = mapped_column(String(255))
    stored_filename: Mapped[str] = mapped_column(String(64), unique=True)
    content_type: Mapped[str] = mapped_column(String(100))
    file_size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    task: Mapped[Task] = relationship(back_populates="files")

    __table_args__ = (NEVER_REUSE_IDS,)


class OutboxJob(Base):
    """Work a committed change still owes (a notice, removing bytes): the transactional outbox.

    Written in the transaction of the change that causes it, so it exists exactly when the
    change does; carried out after the commit, at least once, and marked done. See `outbox.py`.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Not run before this (a retry's backoff); the sweep picks up what is due and unclaimed.
    available_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # A run's lease: while it lasts, no other run starts this job.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(String(500))

    __table_args__ = (
        # The sweep reads only jobs not done yet: a partial index stays as small as they are.
        Index(
            "ix_outbox_pending",
            "available_at",
            postgresql_where=done_at.is_(None),
            sqlite_where=done_at.is_(None),
        ),
        Index("ix_outbox_done_at", "done_at"),
    )


class UserChangeCounter(Base):
    """How many times a user's tasks or tags have changed: the weak ETag of their lists.

    Raised by the database within every statement that writes the user's tasks (triggers on
    `tasks`, migration 0007), so a client revalidating a list costs one read of this row, not
    the list query.
    """

    __tablename__ = "user_change_counters"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    counter: Mapped[int] = mapped_column(BigInteger)


class IdempotencyKey(Base):
    """The stored 2xx result of a request sent with an Idempotency-Key, per user and key.

    Written in the same transaction as the work it records; rows older than
    IDEMPOTENCY_TTL_HOURS are forgotten and purged.
    """

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(SmallInteger)
    body: Mapped[str] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(String(255))
    etag: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("user_id", "key"),
        # The purge reads the oldest rows first.
        Index("ix_idempotency_keys_created_at", "created_at"),
    )


# --- accounts: sessions, refresh tokens, personal access tokens, e-mailed tokens ---------------
# Every secret is stored only as the SHA-256 hex digest of a random token of 256 bits or more.


class AuthSession(Base):
    """One login. Its access tokens name it (`sid`); its refresh tokens rotate within it."""

    __tablename__ = "auth_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # When the session last got tokens (login or refresh).
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The expiry of its newest refresh token: past it, nothing can renew the session.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    user_agent: Mapped[str | None] = mapped_column(String(255))

    # Ids are never reused (SQLite would otherwise reuse the highest after a delete), so an
    # access token of a deleted session can never name a new one.
    __table_args__ = ({"sqlite_autoincrement": True},)


class RefreshToken(Base):
    """A refresh token of a session: spent on first use; a spent one shown again is reuse."""

    __tablename__ = "refresh_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(
        ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class PersonalToken(Base):
    """A personal access token: scoped, expiring, for scripts and integrations."""

    __tablename__ = "personal_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    # Space-separated, as OAuth 2 writes scopes.
    scopes: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = ({"sqlite_autoincrement": True},)


class AccountToken(Base):
    """A single-use token sent by e-mail: to verify the address, or to reset the password."""

    __tablename__ = "account_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
