"""Users: registration, credential checks and lookups."""

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import auth
from config import Settings
from db_models import User
from exceptions import AuthenticationError, ConflictError
from models import LoginRequest, Token, UserCreate, is_storable


def _conflict(session: Session, data: UserCreate) -> ConflictError | None:
    """The duplicate error for this registration, if any; a username clash wins."""
    taken = session.execute(
        select(
            select(User.id).where(func.lower(User.username) == data.username.lower()).exists(),
            select(User.id).where(User.email == data.email).exists(),
        )
    ).one()
    if taken[0]:
        return ConflictError("Username is already taken", code="duplicate_username")
    if taken[1]:
        return ConflictError("Email is already registered", code="duplicate_email")
    return None


def register_user(session: Session, *, data: UserCreate, settings: Settings) -> User:
    """Create a user; a username or email already in use (in any case) is a 409."""
    if conflict := _conflict(session, data):
        raise conflict
    user = User(
        username=data.username,
        email=data.email,
        hashed_password=auth.hash_password(data.password, settings),
    )
    try:
        # A concurrent registration can win between the check and the insert: the unique
        # indexes decide, and the savepoint keeps the request's transaction usable.
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        raise _conflict(session, data) or ConflictError(
            "Username or email is already registered", code="duplicate_username"
        ) from None
    return user


def authenticate(session: Session, *, username: str, password: str, settings: Settings) -> User:
    """The user these credentials belong to; any mismatch is the same 401."""
    user = None
    if is_storable(username):
        user = session.scalar(select(User).where(func.lower(User.username) == username.lower()))
    hashed = user.hashed_password if user is not None else None
    if not auth.verify_password(password, hashed, settings) or user is None:
        raise AuthenticationError("Incorrect username or password", code="invalid_credentials")
    return user


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def login(session: Session, *, credentials: LoginRequest, settings: Settings) -> Token:
    """A bearer token for valid credentials; any mismatch is the same 401."""
    user = authenticate(
        session, username=credentials.username, password=credentials.password, settings=settings
    )
    access_token, expires_in = auth.create_access_token(user.id, settings)
    return Token(access_token=access_token, expires_in=expires_in)
