"""Registration, login and the current user."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from pydantic_core import from_json
from starlette.exceptions import HTTPException as StarletteHTTPException

import rate_limit_config as rate_limits
from dependencies import CurrentUser, DbSession, SettingsDep
from exceptions import (
    DuplicateEmailError,
    DuplicateUsernameError,
    InvalidCredentialsError,
    MalformedBodyError,
    WeakPasswordError,
    raises,
)
from models import LoginRequest, Token, UserCreate, UserRead, error_responses
from services import sessions as session_service
from services import users as user_service

router = APIRouter(prefix="/auth", tags=["auth"])

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

# Documented as JSON only: clients generated from the document send JSON. The OAuth2 password
# form (the tokenUrl of the security scheme, which Swagger's Authorize button posts) is accepted
# on the same route, and said so in the description.
_LOGIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        # Inline: the body is parsed by a dependency, so FastAPI never lists the model.
        "content": {"application/json": {"schema": LoginRequest.model_json_schema()}},
    }
}


# A login form holds two short fields (and OAuth2's optional grant_type, scope, client_id...).
_LOGIN_FORM_LIMITS = {"max_files": 0, "max_fields": 16, "max_part_size": 4 * 1024}


def _validate(fields: object) -> LoginRequest | RequestValidationError:
    try:
        return LoginRequest.model_validate(fields)
    except ValidationError as exc:
        return RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        )


async def read_login(request: Request) -> None:
    """Read and parse a login body (JSON or OAuth2 form) once; keep the result on the request.

    Runs before the rate limiter counts the attempt: the body is read whole first, within
    MAX_BODY_BYTES (a larger one is a 413 here, and costs no budget), then parsed, and the
    username, however the body is shaped, is recorded for the per-username budget. A body that
    cannot be parsed is kept as its error, for the route to answer after the counting.
    """
    if hasattr(request.state, "login"):
        return
    body = await request.body()
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    parsed: object
    result: LoginRequest | Exception
    if content_type in _FORM_TYPES:
        try:
            form = await request.form(**_LOGIN_FORM_LIMITS)
        except StarletteHTTPException as exc:
            # Starlette's 400 for a form it cannot parse (no boundary, too many fields, ...).
            parsed, result = None, MalformedBodyError(str(exc.detail))
        else:
            parsed = {key: form.get(key) for key in ("username", "password") if key in form}
            await form.close()
            result = _validate(parsed)
    else:
        try:
            # pydantic's parser, like a JSON body anywhere else: a lone surrogate is invalid.
            parsed = from_json(body)
        except ValueError as exc:
            parsed = None
            error = {"type": "json_invalid", "loc": ("body",), "msg": f"Invalid JSON: {exc}"}
            result = RequestValidationError([error])
        else:
            result = _validate(parsed)
    username = parsed.get("username") if isinstance(parsed, dict) else None
    request.state.login_username = username if isinstance(username, str) else None
    request.state.login = result


@raises(MalformedBodyError)
async def login_credentials(request: Request) -> LoginRequest:
    """The credentials of a JSON body or an OAuth2 password form, read once by `read_login`."""
    await read_login(request)
    result: LoginRequest | Exception = request.state.login
    if isinstance(result, Exception):
        raise result
    return result


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    responses=error_responses(DuplicateUsernameError, DuplicateEmailError, WeakPasswordError),
    summary="Create an account",
)
@rate_limits.rate_limited(rate_limits.REGISTER)
def register(data: UserCreate, session: DbSession, settings: SettingsDep) -> Any:
    """Create an account."""
    return user_service.register_user(session, data=data, settings=settings)


@router.post(
    "/login",
    response_model=Token,
    responses=error_responses(InvalidCredentialsError),
    openapi_extra=_LOGIN_BODY,
    summary="Log in",
)
@rate_limits.rate_limited(rate_limits.LOGIN, rate_limits.LOGIN_USERNAME, body_reader=read_login)
def login(
    credentials: Annotated[LoginRequest, Depends(login_credentials)],
    session: DbSession,
    settings: SettingsDep,
    request: Request,
) -> Token:
    """Log in: a new session, with an access token and a refresh token.

    The body is JSON; the OAuth2 password form (`application/x-www-form-urlencoded` with
    `username`, `password` and optionally `grant_type=password`), which **Authorize** in `/docs`
    sends, is accepted as well.
    """
    return session_service.login(
        session,
        credentials=credentials,
        user_agent=request.headers.get("user-agent"),
        settings=settings,
    )


@router.get("/me", response_model=UserRead, summary="Your account")
async def read_me(user: CurrentUser) -> Any:
    """The account the token belongs to (any token: a session's or a personal one)."""
    # Async: the caller is already known (no I/O), so no thread-pool hop.
    return user
