"""Users: registration, credential checks and lookups."""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import auth
import db_config
from config import Settings
from db_models import User
from exceptions import DuplicateEmailError, DuplicateUsernameError, InvalidCredentialsError
from models import UserCreate, is_storable
from services import passwords


def _conflict(
    session: Session, data: UserCreate
) -> DuplicateUsernameError | DuplicateEmailError | None:
    """The duplicate error for this registration, if any; a username clash wins."""
    taken = session.execute(
        select(
            select(User.id).where(func.lower(User.username) == data.username.lower()).exists(),
            select(User.id).where(User.email == data.email).exists(),
        )
    ).one()
    if taken[0]:
        return DuplicateUsernameError()
    if taken[1]:
        return DuplicateEmailError()
    return None


def register_user(session: Session, *, data: UserCreate, settings: Settings) -> User:
    """Create a user; a weak password is a 422, a username or email in use (any case) a 409."""
    passwords.check_password(
        data.password, username=data.username, email=data.email, field="password"
    )
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
        raise _conflict(session, data) or DuplicateUsernameError() from None
    return user


def _find_by_username(session: Session, username: str) -> User | None:
    if not is_storable(username):
        return None
    return session.scalar(select(User).where(func.lower(User.username) == username.lower()))


def _checked(user: User | None, password: str, settings: Settings) -> User:
    hashed = user.hashed_password if user is not None else None
    if not auth.verify_password(password, hashed, settings) or user is None:
        raise InvalidCredentialsError()
    return user


def authenticate(session: Session, *, username: str, password: str, settings: Settings) -> User:
    """The user these credentials belong to; any mismatch is the same 401."""
    found = _find_by_username(session, username)
    # The read ends before bcrypt runs, so neither a pooled connection nor (on SQLite, where
    # POSTs begin as writers) the write lock waits on the hash; the session is written after.
    if found is not None:
        session.expunge(found)
    session.rollback()
    return _checked(found, password, settings)


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


# --- who a request acts as, remembered briefly by each worker --------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: a user, through a login session or a personal access token.

    An immutable snapshot, so a worker can hand the same one to many requests.
    """

    user_id: int
    username: str
    email: str
    email_verified: bool
    created_at: datetime
    session_id: int | None = None
    token_id: int | None = None
    # What a personal access token may do (write scopes include their read scope); None for a
    # login session, which may do everything.
    scopes: frozenset[str] | None = None
    # A personal token's expiry (epoch seconds): a remembered token still stops on time.
    expires_at: float | None = None

    @classmethod
    def of(cls, user: User, **details: Any) -> "Principal":
        return cls(
            user_id=user.id,
            username=user.username,
            email=user.email,
            email_verified=user.email_verified,
            created_at=user.created_at,
            **details,
        )

    @property
    def id(self) -> int:
        """The user's id (`user_id`), so a principal reads like the user it stands for."""
        return self.user_id

    def allows(self, scopes: Iterable[str]) -> bool:
        return self.scopes is None or all(scope in self.scopes for scope in scopes)


PrincipalKey = tuple[str, int | str]


def session_key(session_id: int) -> PrincipalKey:
    return ("session", session_id)


def personal_token_key(digest: str) -> PrincipalKey:
    return ("token", digest)


class RecentUsers:
    """Whom each bearer token stood for in the last few seconds, so most requests need no query.

    One per app (per worker process). A revoked session or token, a deleted user, a changed
    e-mail verification: this worker forgets them at once (`forget_after_commit`), every other
    worker within its `ttl_seconds` (USER_CACHE_SECONDS), when its entry expires and the next
    lookup finds nothing. Safe across threads: each operation is one dict operation.
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
        self._entries: dict[PrincipalKey, tuple[Principal, float]] = {}

    def get(self, key: PrincipalKey) -> Principal | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] < self._clock():
            return None
        principal = entry[0]
        if principal.expires_at is not None and principal.expires_at <= time.time():
            return None
        return principal

    def remember(self, key: PrincipalKey, principal: Principal) -> None:
        if self._ttl <= 0:
            return
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # crude but safe: a miss only costs one query
        self._entries[key] = (principal, self._clock() + self._ttl)

    def forget(self, *, user_id: int, keep_session_id: int | None = None) -> None:
        """Drop what this worker remembers of the user, except the one session named."""
        for key, (principal, _) in list(self._entries.items()):
            if principal.user_id == user_id and (
                keep_session_id is None or principal.session_id != keep_session_id
            ):
                self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


def forget_after_commit(
    session: Session, recent: RecentUsers, *, user_id: int, keep_session_id: int | None = None
) -> None:
    """Make this worker forget the user's remembered tokens once the transaction commits.

    After the commit, not before: a request in between would remember the old state again.
    """
    db_config.after_commit(
        session, lambda: recent.forget(user_id=user_id, keep_session_id=keep_session_id)
    )
