"""Verification and password-reset messages, sent after the response through the notifier.

They go the way completion notices go (`background_tasks.build_notifier`): by e-mail when a
mail server is configured, else into the log, which is how the embedded default hands a
developer the token. They are not notices: no notice cap applies to them. Each function opens
its own session when it needs one and never raises: the client already has its answer.
"""

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

import background_tasks
import db_config
from config import Settings, get_settings
from db_models import utcnow
from resources import Resources
from services import account as account_service
from services.account import AccountMessage, Purpose

logger = logging.getLogger(__name__)

_SUBJECTS = {
    Purpose.VERIFY_EMAIL: "Verify your e-mail address for Task Manager",
    Purpose.RESET_PASSWORD: "Reset your Task Manager password",
}
_HOW_TO_USE = {
    Purpose.VERIFY_EMAIL: (
        "to confirm that {email} is your address, send this token to the service:\n\n"
        '    POST /auth/verify-email  {{"token": "{token}"}}\n'
    ),
    Purpose.RESET_PASSWORD: (
        "someone (we hope you) asked to reset the password of your account. To choose a new "
        "one, send this token to the service:\n\n"
        '    POST /auth/password-reset  {{"token": "{token}", "new_password": "..."}}\n\n'
        "Every session and personal access token of the account ends when you do.\n"
    ),
}


def compose(message: AccountMessage, sender: str) -> EmailMessage:
    """The e-mail carrying an account token."""
    email = EmailMessage()
    email["From"] = sender
    email["To"] = message.email
    email["Subject"] = _SUBJECTS[message.purpose]
    email["Date"] = format_datetime(utcnow())
    email["Message-ID"] = make_msgid(domain=parseaddr(sender)[1].rpartition("@")[2] or None)
    hours = "1 hour" if message.valid_hours == 1 else f"{message.valid_hours} hours"
    email.set_content(
        f"Hello {message.username},\n\n"
        + _HOW_TO_USE[message.purpose].format(email=message.email, token=message.token)
        + f"\nThe token works once, within {hours}. If you did not ask for it, ignore this "
        "message.\n\n-- Task Manager\n"
    )
    return email


def send(message: AccountMessage, settings: Settings) -> None:
    """Deliver one message by e-mail or into the log, as the notifier is configured.

    Raises:
        Exception: whatever the mail server raised; the callers below log it.
    """
    notifier = background_tasks.build_notifier(settings)
    if not isinstance(notifier, background_tasks.SmtpNotifier):
        # The embedded default: the log is the mailbox, so the record carries the token.
        logger.info(
            "%s token for user %s (valid %d h): %s",
            message.purpose,
            message.user_id,
            message.valid_hours,
            message.token,
            extra={"event": "account_token", "purpose": str(message.purpose)},
        )
        return
    with smtplib.SMTP(notifier.host, notifier.port, timeout=notifier.timeout_seconds) as smtp:
        if notifier.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if notifier.username and notifier.password:
            smtp.login(notifier.username, notifier.password.get_secret_value())
        smtp.send_message(compose(message, notifier.sender))
    logger.info(
        "Sent the %s message to user %s",
        message.purpose,
        message.user_id,
        extra={"event": "account_mail_sent", "purpose": str(message.purpose)},
    )


def deliver(message: AccountMessage) -> None:
    """Send a token issued by a committed request; never raises."""
    try:
        send(message, get_settings())
    except Exception:
        logger.exception(
            "Could not send the %s message to user %s",
            message.purpose,
            message.user_id,
            extra={"event": "account_mail_failed"},
        )


def deliver_password_reset(resources: Resources, email: str) -> None:
    """Issue and send a reset token if the address is a verified account's; never raises.

    All of it runs after the response, so the answer takes the same time whether or not the
    address belongs to anyone.
    """
    try:
        with db_config.transaction(resources.sessions) as session:
            message = account_service.request_password_reset(session, email=email)
        if message is not None:
            send(message, get_settings())
    except Exception:
        logger.exception(
            "Could not send a password reset message", extra={"event": "account_mail_failed"}
        )
