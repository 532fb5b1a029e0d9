"""Login sessions: short access tokens that name their session, rotating refresh tokens.

Refresh tokens follow RFC 9700 section 4.14: opaque (256 random bits), stored as a hash, spent
on first use; a spent one presented again means it leaked, so the whole session is revoked.
A revoked session is deleted: its access tokens stop at the next lookup (see RecentUsers).
"""

from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

import auth
from config import Settings
from db_models import AuthSession, RefreshToken, User, utcnow
from exceptions import InvalidRefreshTokenError, RefreshTokenReusedError, SessionNotFoundError
from models import LoginRequest, SessionRead, Token, storable_text
from services import users as user_service
from services.users import Principal, RecentUsers

MAX_USER_AGENT_LENGTH = 255


def _invalid_refresh_token() -> InvalidRefreshTokenError:
    return InvalidRefreshTokenError()


def _clean_user_agent(user_agent: str | None) -> str | None:
    if not user_agent:
        return None
    try:
        storable_text(user_agent)
    except ValueError:
        return None
    return user_agent[:MAX_USER_AGENT_LENGTH]


def _issue_tokens(session: Session, auth_session: AuthSession, *, settings: Settings) -> Token:
    """A new access token and a new refresh token, valid until the session's expiry."""
    refresh_token = auth.new_secret(auth.REFRESH_TOKEN_PREFIX)
    session.add(
        RefreshToken(
            session_id=auth_session.id,
            token_hash=auth.token_digest(refresh_token),
            expires_at=auth_session.expires_at,
        )
    )
    access_token, expires_in = auth.create_access_token(
        auth_session.user_id, auth_session.id, settings
    )
    return Token(
        access_token=access_token,
        expires_in=expires_in,
        refresh_token=refresh_token,
        refresh_expires_in=int(_refresh_lifetime(settings).total_seconds()),
    )


def _refresh_lifetime(settings: Settings) -> timedelta:
    return timedelta(days=settings.refresh_token_expire_days)


def start_session(
    session: Session, *, user_id: int, user_agent: str | None, settings: Settings
) -> Token:
    """Open a session for the user and issue its first tokens."""
    now = utcnow()
    # Sessions nothing can renew any more are only clutter.
    session.execute(
        delete(AuthSession).where(AuthSession.user_id == user_id, AuthSession.expires_at <= now)
    )
    auth_session = AuthSession(
        user_id=user_id,
        created_at=now,
        last_used_at=now,
        expires_at=now + _refresh_lifetime(settings),
        user_agent=_clean_user_agent(user_agent),
    )
    session.add(auth_session)
    session.flush()
    return _issue_tokens(session, auth_session, settings=settings)


def login(
    session: Session, *, credentials: LoginRequest, user_agent: str | None, settings: Settings
) -> Token:
    """A new session for valid credentials; any mismatch is the same 401."""
    user = user_service.authenticate(
        session, username=credentials.username, password=credentials.password, settings=settings
    )
    return start_session(session, user_id=user.id, user_agent=user_agent, settings=settings)


def refresh(session: Session, *, token: str, settings: Settings, recent: RecentUsers) -> Token:
    """Spend a refresh token for a new pair; a spent one revokes its whole session.

    Raises:
        InvalidRefreshTokenError: 401 `invalid_token` for an unknown, expired or revoked token.
        RefreshTokenReusedError: 401 `refresh_token_reused`; the revocation is committed.
    """
    now = utcnow()
    found = session.execute(
        select(RefreshToken.id, RefreshToken.used_at, RefreshToken.expires_at, AuthSession)
        .join(AuthSession, AuthSession.id == RefreshToken.session_id)
        .where(RefreshToken.token_hash == auth.token_digest(token))
    ).one_or_none()
    if found is None:
        raise _invalid_refresh_token()
    auth_session: AuthSession = found.AuthSession
    if found.used_at is not None:
        _revoke_reused(session, auth_session, recent=recent)
    if found.expires_at <= now:
        raise _invalid_refresh_token()
    # Spent only if still unspent: of two concurrent uses, exactly one wins; the other is reuse.
    spent = session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == found.id, RefreshToken.used_at.is_(None))
        .values(used_at=now),
        execution_options={"synchronize_session": False},
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        _revoke_reused(session, auth_session, recent=recent)
    # Spent tokens are kept for reuse detection until they expire, no longer.
    session.execute(
        delete(RefreshToken).where(
            RefreshToken.session_id == auth_session.id, RefreshToken.expires_at <= now
        )
    )
    # The session lives on with its new refresh token.
    auth_session.last_used_at = now
    auth_session.expires_at = now + _refresh_lifetime(settings)
    return _issue_tokens(session, auth_session, settings=settings)


def _revoke_reused(session: Session, auth_session: AuthSession, *, recent: RecentUsers) -> None:
    session.execute(delete(AuthSession).where(AuthSession.id == auth_session.id))
    user_service.forget_after_commit(session, recent, user_id=auth_session.user_id)
    raise RefreshTokenReusedError()


def principal_for(session: Session, *, user_id: int, session_id: int) -> Principal | None:
    """Who an access token acts as, if its session is still alive (one query)."""
    user = session.scalars(
        select(User)
        .join(AuthSession, AuthSession.user_id == User.id)
        .where(
            AuthSession.id == session_id,
            AuthSession.user_id == user_id,
            AuthSession.expires_at > utcnow(),
        )
    ).one_or_none()
    return None if user is None else Principal.of(user, session_id=session_id)


def list_sessions(session: Session, *, owner: Principal) -> list[SessionRead]:
    """The owner's live sessions, oldest first, marking the caller's own."""
    rows = session.scalars(
        select(AuthSession)
        .where(AuthSession.user_id == owner.user_id, AuthSession.expires_at > utcnow())
        .order_by(AuthSession.id)
    ).all()
    return [
        SessionRead(
            id=row.id,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            user_agent=row.user_agent,
            current=row.id == owner.session_id,
        )
        for row in rows
    ]


def revoke_session(
    session: Session, *, owner_id: int, session_id: int, recent: RecentUsers
) -> None:
    """End one of the owner's sessions; another user's is a 404."""
    deleted = session.execute(
        delete(AuthSession).where(AuthSession.id == session_id, AuthSession.user_id == owner_id)
    )
    if deleted.rowcount != 1:  # type: ignore[attr-defined]
        raise SessionNotFoundError(session_id)
    user_service.forget_after_commit(session, recent, user_id=owner_id)


def revoke_sessions(
    session: Session, *, owner_id: int, recent: RecentUsers, keep_session_id: int | None = None
) -> None:
    """End every session of the owner, but the one to keep."""
    query = delete(AuthSession).where(AuthSession.user_id == owner_id)
    if keep_session_id is not None:
        query = query.where(AuthSession.id != keep_session_id)
    session.execute(query)
    user_service.forget_after_commit(
        session, recent, user_id=owner_id, keep_session_id=keep_session_id
    )
