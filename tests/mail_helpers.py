"""A real SMTP server for tests: the handler that keeps what it receives, and the settings
that send through it."""

import email
import email.policy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession

from config import Settings
from tests.served_app import free_port

SENDER = "Task Manager <noreply@taskmanager.invalid>"


class Inbox:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, _server: SMTP, _session: SmtpSession, envelope: Envelope) -> str:
        content = envelope.content
        assert isinstance(content, bytes)
        self.messages.append(email.message_from_bytes(content, policy=email.policy.default))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


def smtp_settings(port: int, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_from": SENDER,
        "smtp_starttls": False,
        "smtp_timeout_seconds": 5,
        **changes,
    }
    return Settings(**values)


@pytest.fixture
def use_settings(monkeypatch: pytest.MonkeyPatch) -> Callable[[Settings], None]:
    """Make background work and jobs read these settings, as a process started with them would."""
    from tests.conftest import RESOURCES

    def apply(settings: Settings) -> None:
        monkeypatch.setattr(RESOURCES, "settings", settings)

    return apply


@contextmanager
def smtp_server(handler: object, port: int | None = None) -> Iterator[int]:
    """Serve `handler` (an aiosmtpd handler) as a real SMTP server on a local port until the
    block ends: on `port`, or on a free one. The port."""
    port = free_port() if port is None else port
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@pytest.fixture
def inbox(use_settings: Callable[[Settings], None]) -> Iterator[Inbox]:
    """A real SMTP server on a local port, with the app configured to send through it."""
    handler = Inbox()
    with smtp_server(handler) as port:
        use_settings(smtp_settings(port))
        yield handler
