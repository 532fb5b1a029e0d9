"""Password hashing and access tokens: pure functions, no web framework."""

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple

from jose import JWTError, jwt
from passlib.context import CryptContext

from config import Settings

ALGORITHM = "HS256"
MAX_PASSWORD_LENGTH = 128
# Prefixes make a leaked secret recognizable (secret scanners, logs) and tell token kinds apart.
PERSONAL_TOKEN_PREFIX = "tmpat_"  # noqa: S105 (a prefix, not a secret)
REFRESH_TOKEN_PREFIX = "tmrt_"  # noqa: S105 (a prefix, not a secret)
_SECRET_BYTES = 32  # 256 random bits


class InvalidTokenError(Exception):
    """The token is malformed, forged, expired, or lacks a required claim."""


@lru_cache(maxsize=4)
def _password_context(rounds: int) -> CryptContext:
    # bcrypt_sha256 pre-hashes, so the whole password counts (bcrypt alone stops at 72 bytes).
    return CryptContext(schemes=["bcrypt_sha256"], bcrypt_sha256__rounds=rounds)


@lru_cache(maxsize=4)
def _dummy_hash(rounds: int) -> str:
    return _password_context(rounds).hash("timing-equalizer-password")


def hash_password(password: str, settings: Settings) -> str:
    return _password_context(settings.bcrypt_rounds).hash(password)


def verify_password(password: str, hashed_password: str | None, settings: Settings) -> bool:
    """Check a password. Without a usable hash or password, spend the same time and fail."""
    context = _password_context(settings.bcrypt_rounds)
    acceptable = len(password) <= MAX_PASSWORD_LENGTH and "\x00" not in password
    if hashed_password is None or not acceptable:
        # No timing oracle: an unknown user costs a full verify like a wrong password does.
        context.verify("timing-equalizer-guess", _dummy_hash(settings.bcrypt_rounds))
        return False
    try:
        return context.verify(password, hashed_password)
    except ValueError:
        return False


class AccessClaims(NamedTuple):
    """What a valid access token says: whose it is and which session it belongs to."""

    user_id: int
    session_id: int


def create_access_token(user_id: int, session_id: int, settings: Settings) -> tuple[str, int]:
    """A signed JWT for this user's session and its lifetime in seconds."""
    lifetime = timedelta(minutes=settings.access_token_expire_minutes)
    now = datetime.now(UTC)
    claims = {"sub": str(user_id), "sid": str(session_id), "iat": now, "exp": now + lifetime}
    token = jwt.encode(claims, settings.secret_key.get_secret_value(), algorithm=ALGORITHM)
    return token, int(lifetime.total_seconds())


def decode_access_token(token: str, settings: Settings) -> AccessClaims:
    """The user and session a valid token names.

    Raises:
        InvalidTokenError: for any token that is not one we issued and still valid.
    """
    claims, expires_at = _verified(token, settings.secret_key.get_secret_value())
    if expires_at <= datetime.now(UTC).timestamp():
        raise InvalidTokenError("expired")
    return claims


def _positive_id(value: object) -> int:
    if not isinstance(value, str) or not value.isdigit() or not 0 < int(value) < 2**31:
        raise InvalidTokenError("bad id claim")
    return int(value)


@lru_cache(maxsize=8192)
def _verified(token: str, key: str) -> tuple[AccessClaims, float]:
    # Clients send the same token on every request: verify its signature once, then only its
    # expiry. Only tokens that verified are remembered (an exception is never cached).
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            options={"require_exp": True, "require_sub": True, "require_iat": True},
        )
    except (JWTError, ValueError, TypeError) as exc:
        raise InvalidTokenError(str(exc)) from None
    user_id = _positive_id(claims.get("sub"))
    session_id = _positive_id(claims.get("sid"))
    expires_at = claims.get("exp")
    if not isinstance(expires_at, int | float):
        raise InvalidTokenError("bad expiry")
    return AccessClaims(user_id, session_id), float(expires_at)


def new_secret(prefix: str = "") -> str:
    """An opaque random token of 256 bits, URL-safe, with an optional recognizable prefix."""
    return prefix + secrets.token_urlsafe(_SECRET_BYTES)


def token_digest(token: str) -> str:
    """How a token is stored: SHA-256 hex (its 256 random bits need no slow hash)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
