"""Registration, login and the current user."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

import rate_limit_config as rate_limits
from dependencies import CurrentUser, DbSession, SettingsDep
from models import LoginRequest, Token, UserCreate, UserRead, error_responses
from services import sessions as session_service
from services import users as user_service

router = APIRouter(prefix="/auth", tags=["auth"])

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")

_LOGIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            # Inline: the body is parsed by a dependency, so FastAPI never lists the model.
            "application/json": {"schema": LoginRequest.model_json_schema()},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {
                        "username": {"type": "string"},
                        "password": {"type": "string", "format": "password"},
                        "grant_type": {"type": "string", "enum": ["password"]},
                    },
                },
                "example": {"username": "alice", "password": "correct horse battery"},
            },
        },
    }
}


async def login_credentials(request: Request) -> LoginRequest:
    """Read credentials from a JSON body or an OAuth2 password form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type in _FORM_TYPES:
            form = await request.form()
            fields = {key: form.get(key) for key in ("username", "password") if key in form}
            return LoginRequest.model_validate(fields)
        return LoginRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=UserRead,
    responses=error_responses(409, 422),
)
@rate_limits.rate_limited(rate_limits.REGISTER)
def register(data: UserCreate, session: DbSession, settings: SettingsDep) -> Any:
    """Create an account."""
    return user_service.register_user(session, data=data, settings=settings)


@router.post(
    "/login",
    response_model=Token,
    responses=error_responses(401, 422),
    openapi_extra=_LOGIN_BODY,
)
@rate_limits.rate_limited(rate_limits.LOGIN, rate_limits.LOGIN_USERNAME)
def login(
    credentials: Annotated[LoginRequest, Depends(login_credentials)],
    session: DbSession,
    settings: SettingsDep,
    request: Request,
) -> Token:
    """Log in: a new session, with an access token and a refresh token (JSON body or OAuth2 form)."""
    return session_service.login(
        session,
        credentials=credentials,
        user_agent=request.headers.get("user-agent"),
        settings=settings,
    )


@router.get("/me", response_model=UserRead, responses=error_responses(401))
def read_me(user: CurrentUser) -> Any:
    """The account the token belongs to (any token: a session's or a personal one)."""
    return user
