"""Password hashing and access tokens: pure functions, no web framework."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from jose import JWTError, jwt
from passlib.context import CryptContext

from config import Settings

ALGORITHM = "HS256"
MAX_PASSWORD_LENGTH = 128
# The claim naming the account beyond its id: the account's creation time, in microseconds.
ACCOUNT_CLAIM = "acct"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


def account_stamp(created_at: datetime) -> int:
    """What a token says of its account besides the id: its creation time in microseconds.

    Ids are never given twice, and this holds even where one was (an account deleted and its
    id reused by an older SQLite schema): a token never authenticates an account created
    after it was issued for another.
    """
    return (created_at - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class AccessToken:
    """What a valid access token says: whose it is."""

    user_id: int
    account: int

    def names(self, user_id: int, created_at: datetime) -> bool:
        """Whether the token was issued for this very account."""
        return self.user_id == user_id and self.account == account_stamp(created_at)


def create_access_token(
    user_id: int, settings: Settings, *, created_at: datetime
) -> tuple[str, int]:
    """A signed JWT for the account with this id and creation time, and its lifetime in seconds."""
    lifetime = timedelta(minutes=settings.access_token_expire_minutes)
    now = datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        ACCOUNT_CLAIM: account_stamp(created_at),
        "iat": now,
        "exp": now + lifetime,
    }
    token = jwt.encode(claims, settings.secret_key.get_secret_value(), algorithm=ALGORITHM)
    return token, int(lifetime.total_seconds())


def read_access_token(token: str, settings: Settings) -> AccessToken:
    """The account a valid token names.

    Raises:
        InvalidTokenError: for any token that is not one we issued and still valid.
    """
    claims, expires_at = _verified(token, settings.secret_key.get_secret_value())
    if expires_at <= datetime.now(UTC).timestamp():
        raise InvalidTokenError("expired")
    return claims


def decode_access_token(token: str, settings: Settings) -> int:
    """The user id a valid token names.

    Raises:
        InvalidTokenError: for any token that is not one we issued and still valid.
    """
    return read_access_token(token, settings).user_id


@lru_cache(maxsize=8192)
def _verified(token: str, key: str) -> tuple[AccessToken, float]:
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
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject.isdigit() or not 0 < int(subject) < 2**31:
        raise InvalidTokenError("bad subject")
    account = claims.get(ACCOUNT_CLAIM)
    if not isinstance(account, int) or isinstance(account, bool):
        # Tokens issued before they named the account, too: they are refused.
        raise InvalidTokenError("bad account")
    expires_at = claims.get("exp")
    if not isinstance(expires_at, int | float):
        raise InvalidTokenError("bad expiry")
    return AccessToken(user_id=int(subject), account=account), float(expires_at)
