"""Reusable FastAPI dependencies, exposed as `Annotated` aliases."""

from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Path, Request, Security
from fastapi.security import OAuth2PasswordBearer, SecurityScopes
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

import auth
import db_config
from config import Settings
from db_config import get_db
from db_models import Task
from enums import Scope
from exceptions import (
    DatabaseUnavailableError,
    InsufficientScopeError,
    InvalidTokenError,
    NotAuthenticatedError,
    TaskNotFoundError,
    raises,
)
from models import MAX_ID
from redis_config import Cache
from resources import Resources
from services import sessions as session_service
from services import tasks as task_service
from services import tokens as token_service
from services import users as user_service
from services.users import Principal, RecentUsers
from storage import Storage

# Every dependency here that does no I/O is async: a sync one costs a thread-pool hop each.


async def get_app_settings(request: Request) -> Settings:
    """The settings the application was built with."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def resources_of(request: Request) -> Resources:
    """What the app built from its settings in its lifespan (`resources.py`)."""
    resources: Resources = request.app.state.resources
    return resources


async def get_resources(request: Request) -> Resources:
    """The app's resources, as a dependency."""
    return resources_of(request)


ResourcesDep = Annotated[Resources, Depends(get_resources)]
# scope="function": commit before the response is sent, so a failed commit is never a 2xx.
DbSession = Annotated[Session, Depends(get_db, scope="function")]

# Scopes a bearer token may carry. A login session has them all; a personal access token only
# those it was created with, and never `account`.
ACCOUNT_SCOPE = "account"
SCOPES = {
    Scope.TASKS_READ: "Read your tasks and statistics (every GET under /tasks).",
    Scope.TASKS_WRITE: "Create, change and delete your tasks and tags; includes tasks:read.",
    Scope.FILES_READ: "List and download your files.",
    Scope.FILES_WRITE: "Upload and delete files; includes files:read.",
    ACCOUNT_SCOPE: "Manage your account, sessions and personal tokens. Login sessions only: "
    "a personal access token never has it.",
}


def _check_scopes(principal: Principal, needed: Sequence[str]) -> None:
    if needed and not principal.allows(needed):
        raise InsufficientScopeError(list(needed))


class ScopedBearer(OAuth2PasswordBearer):
    """The bearer token of the OAuth2 password flow. Declared on a route with scopes, it also
    refuses (403 `insufficient_scope`) a token that lacks one of them.

    Whichever runs second, this or the authentication, does the check, so a declaration needs
    no particular place among a route's dependencies. A login session has every scope.
    """

    async def __call__(  # type: ignore[override]
        self, request: Request, security_scopes: SecurityScopes
    ) -> str | None:
        token = await super().__call__(request)
        if security_scopes.scopes:
            principal: Principal | None = getattr(request.state, "principal", None)
            if principal is None:
                needed = getattr(request.state, "required_scopes", [])
                request.state.required_scopes = [*needed, *security_scopes.scopes]
            else:
                _check_scopes(principal, security_scopes.scopes)
        return token


# Declares the OAuth2 password flow in OpenAPI, so Swagger's Authorize button can log in.
oauth2_scheme = ScopedBearer(
    tokenUrl="/auth/login", scheme_name="OAuth2PasswordBearer", scopes=SCOPES, auto_error=False
)


async def get_recent_users(request: Request) -> RecentUsers:
    """This worker's memory of whom recent bearer tokens stood for."""
    recent: RecentUsers = resources_of(request).recent_users
    return recent


RecentUsersDep = Annotated[RecentUsers, Depends(get_recent_users)]


def _look_up_personal_token(sessions: sessionmaker[Session], token: str) -> Principal | None:
    # Its own short transaction: the use is recorded even when the request itself fails.
    with db_config.transaction(sessions) as session:
        return token_service.authenticate(session, token=token)


async def _personal_token_principal(request: Request, token: str) -> Principal | None:
    looked_up: tuple[str, Principal | None] | None = getattr(request.state, "personal_token", None)
    if looked_up is not None and looked_up[0] == token:
        return looked_up[1]
    recent: RecentUsers = resources_of(request).recent_users
    key = user_service.personal_token_key(auth.token_digest(token))
    principal = recent.get(key)
    if principal is None:
        principal = await run_in_threadpool(
            _look_up_personal_token, resources_of(request).sessions, token
        )
        if principal is not None:
            recent.remember(key, principal)
    request.state.personal_token = (token, principal)
    return principal


async def identify_personal_token(request: Request) -> None:
    """Before the rate limits count a request: the user its personal access token belongs to.

    An access token names its user in its signed claims; a personal token must be looked up
    (remembered like any token), so that its requests draw from its user's budgets.
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(auth.PERSONAL_TOKEN_PREFIX):
        return
    principal = await _personal_token_principal(request, token)
    if principal is not None:
        request.state.user_id = principal.user_id


def _look_up_session(
    sessions: sessionmaker[Session], claims: auth.AccessClaims
) -> Principal | None:
    # A session of its own: a request that needs no database (a remembered caller, cached
    # statistics) then opens none.
    with db_config.reading(sessions) as session:
        return session_service.principal_for(
            session, user_id=claims.user_id, session_id=claims.session_id
        )


async def authenticate(request: Request, settings: Settings, token: str | None) -> Principal:
    """Who the bearer token stands for (once per request); 401 for a missing or bad one."""
    principal: Principal | None = getattr(request.state, "principal", None)
    if principal is not None:
        return principal
    if not token:
        raise NotAuthenticatedError()
    if token.startswith(auth.PERSONAL_TOKEN_PREFIX):
        principal = await _personal_token_principal(request, token)
    else:
        try:
            claims = auth.decode_access_token(token, settings)
        except auth.InvalidTokenError:
            raise InvalidTokenError() from None
        recent: RecentUsers = resources_of(request).recent_users
        key = user_service.session_key(claims.session_id)
        principal = recent.get(key)
        if principal is None or principal.user_id != claims.user_id:
            principal = await run_in_threadpool(
                _look_up_session, resources_of(request).sessions, claims
            )
            if principal is not None:
                recent.remember(key, principal)
    if principal is None:
        raise InvalidTokenError()
    request.state.principal = principal
    request.state.user_id = principal.user_id
    # The route's scope declaration may have run first (it does on routes without an
    # authenticating router dependency): it left what it needs to be checked here.
    _check_scopes(principal, getattr(request.state, "required_scopes", ()))
    return principal


@raises(NotAuthenticatedError, InvalidTokenError, DatabaseUnavailableError)
async def get_current_user(
    request: Request,
    settings: SettingsDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> Principal:
    """Who the bearer token stands for; 401 for a missing, bad or revoked token, 403 for a
    personal access token without the scopes the route declares.

    The worker's immutable snapshot of the user (`Principal`), never an ORM `User`: a route
    that changes the account loads the row in its own session.
    """
    return await authenticate(request, settings, token)


CurrentUser = Annotated[Principal, Depends(get_current_user)]


async def get_current_principal(request: Request, user: CurrentUser) -> Principal:
    """The caller with the session or personal token it came with."""
    del user  # authenticated (and the principal recorded) by get_current_user
    principal: Principal = request.state.principal
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_current_principal)]

# The scope each route needs, declared with the route (`dependencies=[...]`), so it shows in
# OpenAPI. Only the scheme is declared with scopes, not the authentication: that then runs once
# per request whatever the scopes (FastAPI caches a dependency per set of scopes).
READ_TASKS = Security(oauth2_scheme, scopes=[Scope.TASKS_READ])
WRITE_TASKS = Security(oauth2_scheme, scopes=[Scope.TASKS_WRITE])
READ_FILES = Security(oauth2_scheme, scopes=[Scope.FILES_READ])
WRITE_FILES = Security(oauth2_scheme, scopes=[Scope.FILES_WRITE])
MANAGE_ACCOUNT = Security(oauth2_scheme, scopes=[ACCOUNT_SCOPE])

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="Id of one of your tasks.")]


@raises(TaskNotFoundError)
def get_owned_task(task_id: TaskId, user: CurrentUser, session: DbSession) -> Task:
    """The caller's task named in the path; 404 when missing or someone else's."""
    return task_service.get_owned_task(session, owner_id=user.id, task_id=task_id)


OwnedTask = Annotated[Task, Depends(get_owned_task)]


async def get_request_cache(request: Request) -> Cache:
    """The app's cache (async: a lookup needs no thread-pool hop)."""
    return resources_of(request).cache


CacheDep = Annotated[Cache, Depends(get_request_cache)]


async def get_file_storage(request: Request) -> Storage:
    """The app's storage for attachments (local disk or S3)."""
    return resources_of(request).storage


FileStorage = Annotated[Storage, Depends(get_file_storage)]
