"""Users: registration, credential checks and lookups."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import auth
from config import Settings
from db_models import User
from exceptions import AuthenticationError, ConflictError
from models import LoginRequest, Token, UserCreate, is_storable


def _conflict(session: Session, data: UserCreate) -> ConflictError | None:
    """The duplicate error for this registration, if any; a username clash wins."""
    taken = session.execute(
        select(
            select(User.id).where(func.lower(User.username) == data.username.lower()).exists(),
            select(User.id).where(User.email == data.email).exists(),
        )
    ).one()
    if taken[0]:
        return ConflictError("Username is already taken", code="duplicate_username")
    if taken[1]:
        return ConflictError("Email is already registered", code="duplicate_email")
    return None


def register_user(session: Session, *, data: UserCreate, settings: Settings) -> User:
    """Create a user; a username or email already in use (in any case) is a 409."""
    # Hashed before the first query, so the transaction (on SQLite, the write lock every
    # writer waits for) is never held through bcrypt.
    hashed_password = auth.hash_password(data.password, settings)
    if conflict := _conflict(session, data):
        raise conflict
    user = User(username=data.username, email=data.email, hashed_password=hashed_password)
    try:
        # A concurrent registration can win between the check and the insert: the unique
        # indexes decide, and the savepoint keeps the request's transaction usable.
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        raise _conflict(session, data) or ConflictError(
            "Username or email is already registered", code="duplicate_username"
        ) from None
    return user


def _find_by_username(session: Session, username: str) -> User | None:
    if not is_storable(username):
        return None
    return session.scalar(select(User).where(func.lower(User.username) == username.lower()))


def _checked(user: User | None, password: str, settings: Settings) -> User:
    hashed = user.hashed_password if user is not None else None
    if not auth.verify_password(password, hashed, settings) or user is None:
        raise AuthenticationError("Incorrect username or password", code="invalid_credentials")
    return user


def authenticate(session: Session, *, username: str, password: str, settings: Settings) -> User:
    """The user these credentials belong to; any mismatch is the same 401."""
    return _checked(_find_by_username(session, username), password, settings)


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


@dataclass(frozen=True, slots=True)
class _Remembered:
    username: str
    email: str
    created_at: datetime
    expires_at: float


class RecentUsers:
    """Users this worker looked up in the last few seconds, so most requests need no query.

    Entries are immutable snapshots handed out as fresh, session-less `User` objects, so no
    request can change another's. Safe across threads: each operation is one dict operation.
    """

    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[int, _Remembered] = {}

    def get(self, user_id: int) -> User | None:
        entry = self._entries.get(user_id)
        if entry is None or entry.expires_at < self._clock():
            return None
        return User(
            id=user_id, username=entry.username, email=entry.email, created_at=entry.created_at
        )

    def remember(self, user: User) -> None:
        if self._ttl <= 0:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # crude but safe: a miss only costs one query
        self._entries[user.id] = _Remembered(
            user.username, user.email, user.created_at, self._clock() + self._ttl
        )

    def clear(self) -> None:
        self._entries.clear()


def login(session: Session, *, credentials: LoginRequest, settings: Settings) -> Token:
    """A bearer token for valid credentials; any mismatch is the same 401."""
    found = _find_by_username(session, credentials.username)
    # A login writes nothing: its read ends before bcrypt runs, so neither a pooled connection
    # nor (on SQLite, where POSTs begin as writers) the write lock waits on the hash.
    if found is not None:
        session.expunge(found)
    session.rollback()
    user = _checked(found, credentials.password, settings)
    access_token, expires_in = auth.create_access_token(
        user.id, settings, created_at=user.created_at
    )
    return Token(access_token=access_token, expires_in=expires_in)
