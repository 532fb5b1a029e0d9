"""The account: change or reset the password, verify the e-mail address, delete the account."""

from typing import Any

from fastapi import APIRouter, BackgroundTasks, status

import account_mail
import rate_limit_config as rate_limits
from dependencies import (
    MANAGE_ACCOUNT,
    CacheDep,
    CurrentPrincipal,
    DbSession,
    RecentUsersDep,
    ResourcesDep,
    SettingsDep,
)
from exceptions import InvalidOrExpiredTokenError, WeakPasswordError, WrongPasswordError
from models import (
    Accepted,
    AccountDeletion,
    EmailVerification,
    PasswordChange,
    PasswordReset,
    PasswordResetRequest,
    UserRead,
    error_responses,
    no_content,
)
from services import account as account_service

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/password",
    **no_content(WrongPasswordError, WeakPasswordError),
    dependencies=[MANAGE_ACCOUNT],
)
def change_password(
    data: PasswordChange,
    principal: CurrentPrincipal,
    session: DbSession,
    settings: SettingsDep,
    recent: RecentUsersDep,
) -> None:
    """Change your password; every other session ends, this one and personal tokens stay."""
    account_service.change_password(
        session, principal=principal, data=data, settings=settings, recent=recent
    )


@router.post(
    "/verify-email/request",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    dependencies=[MANAGE_ACCOUNT],
)
@rate_limits.rate_limited(rate_limits.ACCOUNT_EMAIL)
def request_email_verification(
    principal: CurrentPrincipal, session: DbSession, background: BackgroundTasks
) -> Accepted:
    """Send a verification token (valid 24 hours, single use) to your e-mail address."""
    message = account_service.request_email_verification(session, principal=principal)
    # Background tasks run only after a successful response, so only after the commit.
    background.add_task(account_mail.deliver, message)
    return Accepted(message="A verification token is on its way to your e-mail address")


@router.post(
    "/verify-email", response_model=UserRead, responses=error_responses(InvalidOrExpiredTokenError)
)
def verify_email(data: EmailVerification, session: DbSession, recent: RecentUsersDep) -> Any:
    """Confirm your e-mail address with the token sent to it. Needs no bearer token."""
    return account_service.verify_email(session, token=data.token, recent=recent)


@router.post(
    "/password-reset/request",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
)
@rate_limits.rate_limited(rate_limits.ACCOUNT_EMAIL)
async def request_password_reset(
    data: PasswordResetRequest, background: BackgroundTasks, resources: ResourcesDep
) -> Accepted:
    """Send a reset token (valid 1 hour, single use) if the address is a verified account's.

    The answer is the same, and as fast, for any address. Needs no bearer token.
    """
    # Even the lookup happens after the response: nothing in it depends on the address.
    background.add_task(account_mail.deliver_password_reset, resources, data.email)
    return Accepted(message="If the address belongs to a verified account, a token is on its way")


@router.post(
    "/password-reset",
    **no_content(InvalidOrExpiredTokenError, WeakPasswordError),
)
def reset_password(
    data: PasswordReset, session: DbSession, settings: SettingsDep, recent: RecentUsersDep
) -> None:
    """Choose a new password with a reset token; every session and personal token ends.

    Needs no bearer token.
    """
    account_service.reset_password(session, data=data, settings=settings, recent=recent)


@router.delete(
    "/me",
    **no_content(WrongPasswordError),
    dependencies=[MANAGE_ACCOUNT],
)
def delete_account(
    data: AccountDeletion,
    principal: CurrentPrincipal,
    session: DbSession,
    settings: SettingsDep,
    recent: RecentUsersDep,
    cache: CacheDep,
) -> None:
    """Delete your account with all its tasks, tags, files, sessions and tokens (password needed)."""
    account_service.delete_account(
        session,
        principal=principal,
        password=data.password,
        settings=settings,
        recent=recent,
        cache=cache,
    )
