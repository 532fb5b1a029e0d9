"""Sessions: refresh a session's tokens, list and end sessions, log out."""

from typing import Annotated, Any

from fastapi import APIRouter, Path

from dependencies import (
    MANAGE_ACCOUNT,
    CurrentPrincipal,
    DbSession,
    RecentUsersDep,
    SettingsDep,
)
from exceptions import InvalidRefreshTokenError, RefreshTokenReusedError, SessionNotFoundError
from models import MAX_ID, RefreshRequest, SessionRead, Token, error_responses, no_content
from services import sessions as session_service

router = APIRouter(prefix="/auth", tags=["auth"])

SessionId = Annotated[int, Path(ge=1, le=MAX_ID, description="Id of one of your sessions.")]


@router.post(
    "/refresh",
    response_model=Token,
    responses=error_responses(InvalidRefreshTokenError, RefreshTokenReusedError),
)
def refresh(
    data: RefreshRequest, session: DbSession, settings: SettingsDep, recent: RecentUsersDep
) -> Token:
    """Exchange a refresh token for a new pair; the one sent is spent and never works again.

    Sending a spent refresh token again revokes its whole session (`refresh_token_reused`).
    Needs no bearer token.
    """
    return session_service.refresh(
        session, token=data.refresh_token, settings=settings, recent=recent
    )


@router.get(
    "/sessions",
    response_model=list[SessionRead],
    dependencies=[MANAGE_ACCOUNT],
)
def list_sessions(principal: CurrentPrincipal, session: DbSession) -> Any:
    """Your active sessions (one per login), oldest first; `current` marks this one."""
    return session_service.list_sessions(session, owner=principal)


@router.delete(
    "/sessions/{session_id}",
    **no_content(SessionNotFoundError),
    dependencies=[MANAGE_ACCOUNT],
)
def revoke_session(
    session_id: SessionId, principal: CurrentPrincipal, session: DbSession, recent: RecentUsersDep
) -> None:
    """End one of your sessions: its tokens stop working on every worker within seconds."""
    session_service.revoke_session(
        session, owner_id=principal.user_id, session_id=session_id, recent=recent
    )


@router.post(
    "/logout",
    # Ended meanwhile by another request (this worker may remember it a few seconds more).
    **no_content(SessionNotFoundError),
    dependencies=[MANAGE_ACCOUNT],
)
def logout(principal: CurrentPrincipal, session: DbSession, recent: RecentUsersDep) -> None:
    """End the current session: its access and refresh tokens stop working."""
    if principal.session_id is not None:
        session_service.revoke_session(
            session, owner_id=principal.user_id, session_id=principal.session_id, recent=recent
        )
