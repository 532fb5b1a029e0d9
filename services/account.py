"""The account itself: password change and reset, e-mail verification, deletion.

Verification and reset tokens are single-use, expire (24 h and 1 h), and are stored only as
hashes; the caller sends the token by e-mail after the commit (see `account_mail`).
"""

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

import auth
from config import Settings
from db_models import AccountToken, PersonalToken, Task, User, utcnow
from exceptions import (
    InvalidOrExpiredTokenError,
    InvalidTokenError,
    WrongPasswordError,
)
from models import PasswordChange, PasswordReset
from redis_config import Cache
from services import changes as change_service
from services import files as file_service
from services import passwords
from services import sessions as session_service
from services import users as user_service
from services.users import Principal, RecentUsers


class Purpose(StrEnum):
    VERIFY_EMAIL = "verify_email"
    RESET_PASSWORD = "reset_password"  # noqa: S105 (a purpose, not a password)

    @property
    def lifetime(self) -> timedelta:
        return _LIFETIMES[self]


_LIFETIMES = {Purpose.VERIFY_EMAIL: timedelta(hours=24), Purpose.RESET_PASSWORD: timedelta(hours=1)}


@dataclass(frozen=True)
class AccountMessage:
    """A token to send to a user's address: the secret exists only here and in the e-mail."""

    purpose: Purpose
    user_id: int
    username: str
    email: str
    token: str
    valid_hours: int


def _locked_user(session: Session, user_id: int) -> User | None:
    # The token was valid a moment ago; the user may have been deleted since.
    return session.get(User, user_id, with_for_update=True)


def _load_user(session: Session, user_id: int) -> User:
    """The user an account token (verification, reset) was issued to."""
    user = _locked_user(session, user_id)
    if user is None:
        raise InvalidOrExpiredTokenError()
    return user


def _caller(session: Session, principal: Principal) -> User:
    """The caller; one deleted since is the same refusal as a bad bearer token."""
    user = _locked_user(session, principal.user_id)
    if user is None:
        raise InvalidTokenError()
    return user


def _issue(session: Session, user: User, purpose: Purpose) -> AccountMessage:
    now = utcnow()
    # Old tokens of the user are clutter once expired; the unexpired ones stay usable.
    session.execute(
        delete(AccountToken).where(AccountToken.user_id == user.id, AccountToken.expires_at <= now)
    )
    token = auth.new_secret()
    session.add(
        AccountToken(
            user_id=user.id,
            purpose=purpose,
            token_hash=auth.token_digest(token),
            created_at=now,
            expires_at=now + purpose.lifetime,
        )
    )
    return AccountMessage(
        purpose=purpose,
        user_id=user.id,
        username=user.username,
        email=user.email,
        token=token,
        valid_hours=int(purpose.lifetime.total_seconds() // 3600),
    )


def _spend(session: Session, *, token: str, purpose: Purpose) -> int:
    """Use a single-use token; returns its user's id.

    Raises:
        InvalidOrExpiredTokenError: unknown, used, expired, or of another purpose.
    """
    now = utcnow()
    user_id = session.execute(
        update(AccountToken)
        .where(
            AccountToken.token_hash == auth.token_digest(token),
            AccountToken.purpose == purpose,
            AccountToken.used_at.is_(None),
            AccountToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(AccountToken.user_id),
        execution_options={"synchronize_session": False},
    ).scalar_one_or_none()
    if user_id is None:
        raise InvalidOrExpiredTokenError()
    return user_id


# --- e-mail verification --------------------------------------------------------------------


def request_email_verification(session: Session, *, principal: Principal) -> AccountMessage:
    """A verification token for the caller's address, to be sent once this commits."""
    return _issue(session, _caller(session, principal), Purpose.VERIFY_EMAIL)


def verify_email(session: Session, *, token: str, recent: RecentUsers) -> User:
    """Mark the address a verification token was sent to as verified."""
    user = _load_user(session, _spend(session, token=token, purpose=Purpose.VERIFY_EMAIL))
    user.email_verified = True
    user_service.forget_after_commit(session, recent, user_id=user.id)
    return user


# --- passwords --------------------------------------------------------------------------------


def _check_current_password(user: User, password: str, settings: Settings) -> None:
    if not auth.verify_password(password, user.hashed_password, settings):
        raise WrongPasswordError()


def change_password(
    session: Session,
    *,
    principal: Principal,
    data: PasswordChange,
    settings: Settings,
    recent: RecentUsers,
) -> None:
    """Set a new password; every other session ends, the caller's and personal tokens stay."""
    user = _caller(session, principal)
    _check_current_password(user, data.current_password, settings)
    passwords.check_password(
        data.new_password, username=user.username, email=user.email, field="new_password"
    )
    user.hashed_password = auth.hash_password(data.new_password, settings)
    session_service.revoke_sessions(
        session, owner_id=user.id, recent=recent, keep_session_id=principal.session_id
    )


def request_password_reset(session: Session, *, email: str) -> AccountMessage | None:
    """A reset token for the account with this verified address; None for any other address."""
    user = session.scalar(
        select(User).where(User.email == email.lower(), User.email_verified.is_(True))
    )
    return None if user is None else _issue(session, user, Purpose.RESET_PASSWORD)


def reset_password(
    session: Session, *, data: PasswordReset, settings: Settings, recent: RecentUsers
) -> None:
    """Set a new password with a reset token; every session and personal token ends."""
    user = _load_user(session, _spend(session, token=data.token, purpose=Purpose.RESET_PASSWORD))
    passwords.check_password(
        data.new_password, username=user.username, email=user.email, field="new_password"
    )
    user.hashed_password = auth.hash_password(data.new_password, settings)
    # Any other reset link in the mailbox is void now.
    session.execute(
        delete(AccountToken).where(
            AccountToken.user_id == user.id, AccountToken.purpose == Purpose.RESET_PASSWORD
        )
    )
    session.execute(delete(PersonalToken).where(PersonalToken.user_id == user.id))
    session_service.revoke_sessions(session, owner_id=user.id, recent=recent)


# --- deletion ---------------------------------------------------------------------------------


def delete_account(
    session: Session,
    *,
    principal: Principal,
    password: str,
    settings: Settings,
    recent: RecentUsers,
    cache: Cache,
) -> None:
    """Delete the user with everything they own, by database cascade; their files' bytes are
    removed by an outbox job recorded in the same transaction."""
    user = _caller(session, principal)
    _check_current_password(user, password, settings)
    file_service.remove_files_of_tasks_after_commit(session, Task.user_id == user.id)
    session.execute(delete(User).where(User.id == user.id))
    session.expunge(user)
    # The id may come back (SQLite reuses the highest): nothing cached under it may survive.
    change_service.invalidate_after_commit(session, cache=cache, owner_id=user.id)
    user_service.forget_after_commit(session, recent, user_id=user.id)
