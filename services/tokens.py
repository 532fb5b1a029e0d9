"""Personal access tokens: scoped, expiring credentials for scripts, shown once, kept as hashes."""

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

import auth
from db_models import PersonalToken, User, utcnow
from enums import Scope
from exceptions import PersonalTokenNotFoundError
from models import PersonalTokenCreate, PersonalTokenCreated
from services import users as user_service
from services.users import Principal, RecentUsers


def granted_scopes(scopes: str) -> frozenset[str]:
    """Everything a token's stored scopes allow, implied read scopes included."""
    return frozenset(str(implied) for scope in scopes.split() for implied in Scope(scope).implied)


def create_token(
    session: Session, *, owner_id: int, data: PersonalTokenCreate
) -> PersonalTokenCreated:
    """Create a token for the owner; its secret is in this answer and nowhere else."""
    secret = auth.new_secret(auth.PERSONAL_TOKEN_PREFIX)
    now = utcnow()
    row = PersonalToken(
        user_id=owner_id,
        name=data.name,
        scopes=" ".join(data.scopes),
        token_hash=auth.token_digest(secret),
        created_at=now,
        expires_at=now + timedelta(days=data.expires_in_days),
    )
    session.add(row)
    session.flush()
    return PersonalTokenCreated.model_validate({**_fields(row), "token": secret})


def _fields(row: PersonalToken) -> dict[str, object]:
    return {
        "id": row.id,
        "name": row.name,
        "scopes": row.scopes,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "last_used_at": row.last_used_at,
    }


def list_tokens(session: Session, *, owner_id: int) -> Sequence[PersonalToken]:
    """The owner's tokens, oldest first, expired ones included (they show when they ended)."""
    return session.scalars(
        select(PersonalToken).where(PersonalToken.user_id == owner_id).order_by(PersonalToken.id)
    ).all()


def delete_token(session: Session, *, owner_id: int, token_id: int, recent: RecentUsers) -> None:
    """Delete one of the owner's tokens; another user's is a 404."""
    deleted = session.execute(
        delete(PersonalToken).where(PersonalToken.id == token_id, PersonalToken.user_id == owner_id)
    )
    if deleted.rowcount != 1:  # type: ignore[attr-defined]
        raise PersonalTokenNotFoundError(token_id)
    user_service.forget_after_commit(session, recent, user_id=owner_id)


def authenticate(session: Session, *, token: str) -> Principal | None:
    """Who a personal access token acts as while it is valid; records that it was used."""
    found = session.execute(
        select(PersonalToken, User)
        .join(User, User.id == PersonalToken.user_id)
        .where(PersonalToken.token_hash == auth.token_digest(token))
    ).one_or_none()
    now = utcnow()
    if found is None or found.PersonalToken.expires_at <= now:
        return None
    row: PersonalToken = found.PersonalToken
    # Each worker looks a token up at most once per USER_CACHE_SECONDS: that is how fresh this is.
    row.last_used_at = now
    return Principal.of(
        found.User,
        token_id=row.id,
        scopes=granted_scopes(row.scopes),
        expires_at=row.expires_at.timestamp(),
    )
