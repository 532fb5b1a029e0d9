"""Personal access tokens: create (shown once), list, delete."""

from typing import Annotated, Any

from fastapi import APIRouter, Path, status

from dependencies import MANAGE_ACCOUNT, CurrentPrincipal, DbSession, RecentUsersDep
from exceptions import PersonalTokenNotFoundError
from models import (
    MAX_ID,
    PersonalTokenCreate,
    PersonalTokenCreated,
    PersonalTokenRead,
    no_content,
)
from services import tokens as token_service

router = APIRouter(prefix="/auth/tokens", tags=["auth"])

TokenId = Annotated[
    int, Path(ge=1, le=MAX_ID, description="Id of one of your personal access tokens.")
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=PersonalTokenCreated,
    dependencies=[MANAGE_ACCOUNT],
)
def create_token(data: PersonalTokenCreate, principal: CurrentPrincipal, session: DbSession) -> Any:
    """Create a personal access token; its secret (`tmpat_…`) is shown in this answer only.

    Send it as `Authorization: Bearer tmpat_…`. It can do what its scopes allow until it
    expires; it can never manage tokens, sessions or the password.
    """
    return token_service.create_token(session, owner_id=principal.user_id, data=data)


@router.get(
    "",
    response_model=list[PersonalTokenRead],
    dependencies=[MANAGE_ACCOUNT],
)
def list_tokens(principal: CurrentPrincipal, session: DbSession) -> Any:
    """Your personal access tokens, without their secrets, oldest first."""
    return token_service.list_tokens(session, owner_id=principal.user_id)


@router.delete(
    "/{token_id}",
    **no_content(PersonalTokenNotFoundError),
    dependencies=[MANAGE_ACCOUNT],
)
def delete_token(
    token_id: TokenId, principal: CurrentPrincipal, session: DbSession, recent: RecentUsersDep
) -> None:
    """Delete one of your personal access tokens: it stops working within seconds."""
    token_service.delete_token(
        session, owner_id=principal.user_id, token_id=token_id, recent=recent
    )
