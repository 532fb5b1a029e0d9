"""Reusable FastAPI dependencies, exposed as `Annotated` aliases."""

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

import auth
from config import Settings
from db_config import get_db
from db_models import Task, User
from exceptions import AuthenticationError
from models import MAX_ID
from redis_config import Cache
from resources import Resources
from services import tasks as task_service
from services import users as user_service
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

# Declares the OAuth2 password flow in OpenAPI, so Swagger's Authorize button can log in.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/login", auto_error=False)


async def get_current_user(
    request: Request,
    session: DbSession,
    settings: SettingsDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> User:
    """The account the bearer token was issued for; 401 for a missing, bad or orphaned token."""
    if not token:
        raise AuthenticationError("Not authenticated: send Authorization: Bearer <token>")
    try:
        claims = auth.read_access_token(token, settings)
    except auth.InvalidTokenError:
        raise AuthenticationError("Invalid or expired token", code="invalid_token") from None
    recent = resources_of(request).recent_users
    user = recent.get(claims.user_id)
    if user is None or not claims.names(user.id, user.created_at):
        user = await run_in_threadpool(user_service.get_user, session, claims.user_id)
        if user is None:
            raise AuthenticationError("Invalid or expired token", code="invalid_token")
        recent.remember(user)
        # Issued for another account that had this id: never this one.
        if not claims.names(user.id, user.created_at):
            raise AuthenticationError("Invalid or expired token", code="invalid_token")
    request.state.user_id = user.id
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="Id of one of your tasks.")]


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
