"""Work done after the response: completion notices, removing bytes, the orphan sweep.

Each function takes ids or names (never ORM objects or the request's session) and opens its own
session. `jobs.py` runs them as outbox jobs after the commit; those that must be retried when
they fail raise (`send_completion_notices`), the others log and never raise. Completion notices
are capped per user and hour (`notifications`).

Command line: `python -m background_tasks sweep [--min-age-minutes N] [--dry-run]`.
"""

import argparse
import logging
import smtplib
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from typing import Protocol

from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

import metrics
import notifications
from config import Settings, get_settings
from db_models import Task, User
from logging_config import configure_logging
from resources import Resources
from services import files as file_service
from storage import Storage

logger = logging.getLogger(__name__)

# An upload renames its bytes into place just before its transaction commits; anything
# younger than this may still be in flight on another worker, so the sweep leaves it.
ORPHAN_MIN_AGE_SECONDS = 15 * 60
_SUBJECT_TITLE_CHARS = 100


# --- notifications ------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionNotice:
    task_id: int
    title: str
    user_id: int
    username: str
    email: str
    completed_at: datetime


class Notifier(Protocol):
    """Delivers completion notices. May raise: the caller logs and carries on."""

    def send(self, notices: Sequence[CompletionNotice]) -> None: ...


class LogNotifier:
    """The default: one structured log record per notice, with ids only (no address, no title)."""

    def __init__(self, events: metrics.EventCounters | None = None) -> None:
        self.events = events or metrics.MemoryEventCounters()

    def send(self, notices: Sequence[CompletionNotice]) -> None:
        for notice in notices:
            logger.info(
                "Task %s of user %s completed",
                notice.task_id,
                notice.user_id,
                extra={
                    "event": "task_completed",
                    "task_id": notice.task_id,
                    "user_id": notice.user_id,
                },
            )
            self.events.count("notices_sent")


class SmtpNotifier:
    """Emails each notice to the task's owner through one SMTP connection per batch."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        username: str | None = None,
        password: SecretStr | None = None,
        starttls: bool = True,
        timeout_seconds: float = 10.0,
        events: metrics.EventCounters | None = None,
    ) -> None:
        self.events = events or metrics.MemoryEventCounters()
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password
        self.starttls = starttls
        self.timeout_seconds = timeout_seconds

    @classmethod
    def from_settings(
        cls, settings: Settings, events: metrics.EventCounters | None = None
    ) -> "SmtpNotifier":
        if not (settings.smtp_host and settings.smtp_from):
            raise ValueError("the smtp notifier needs SMTP_HOST and SMTP_FROM")
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            sender=settings.smtp_from,
            username=settings.smtp_username,
            password=settings.smtp_password,
            starttls=settings.smtp_starttls,
            timeout_seconds=settings.smtp_timeout_seconds,
            events=events,
        )

    def message(self, notice: CompletionNotice) -> EmailMessage:
        # A title may hold line breaks; a header must not.
        title = " ".join(notice.title.split())
        short = (
            title if len(title) <= _SUBJECT_TITLE_CHARS else title[: _SUBJECT_TITLE_CHARS - 1] + "…"
        )
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = notice.email
        message["Subject"] = f"Task completed: {short}"
        message["Date"] = format_datetime(notice.completed_at)
        message["Message-ID"] = make_msgid(
            domain=parseaddr(self.sender)[1].rpartition("@")[2] or None
        )
        message.set_content(
            f"Hello {notice.username},\n\n"
            f'your task #{notice.task_id} "{title}" was marked as completed '
            f"at {notice.completed_at:%Y-%m-%d %H:%M} UTC.\n\n"
            "-- Task Manager\n"
        )
        return message

    def send(self, notices: Sequence[CompletionNotice]) -> None:
        # `timeout` bounds every socket operation, so a stalled server cannot hold a worker.
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout_seconds) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username and self.password:
                smtp.login(self.username, self.password.get_secret_value())
            for notice in notices:
                try:
                    smtp.send_message(self.message(notice))
                except (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException) as exc:
                    # One refused message must not cost the others theirs.
                    self.events.count("notices_dropped", reason="refused")
                    logger.warning(
                        "Mail server refused the notice for task %s: %s",
                        notice.task_id,
                        type(exc).__name__,
                        extra={"event": "notification_failed", "task_id": notice.task_id},
                    )
                else:
                    self.events.count("notices_sent")


def build_notifier(settings: Settings, events: metrics.EventCounters | None = None) -> Notifier:
    """The configured notifier: NOTIFIER, else smtp when a mail server is configured, else log.

    `events` counts what was sent and refused (a counter of its own when not given).
    """
    kind = settings.notifier or ("smtp" if settings.smtp_host and settings.smtp_from else "log")
    if kind == "smtp":
        return SmtpNotifier.from_settings(settings, events)
    return LogNotifier(events)


def _completion_notices(session: Session, task_ids: Sequence[int]) -> list[CompletionNotice]:
    # Still completed when the notice goes out: a task reopened meanwhile gets none. Only
    # verified addresses get notices: an address nobody confirmed may be anyone's.
    rows = session.execute(
        select(
            Task.id.label("task_id"),
            Task.title,
            Task.user_id,
            User.username,
            User.email,
            Task.updated_at.label("completed_at"),
        )
        .join(User, User.id == Task.user_id)
        .where(Task.id.in_(task_ids), Task.completed.is_(True), User.email_verified.is_(True))
        .order_by(Task.id)
    ).all()
    return [CompletionNotice(**row._mapping) for row in rows]


def send_completion_notices(resources: Resources, task_ids: Sequence[int]) -> int:
    """Send the notices of those tasks that are still completed, as far as each user's hourly
    budget allows (the rest are dropped and counted); raises when they cannot be sent.

    Returns how many notices were handed to the notifier.
    """
    if not task_ids:
        return 0
    with resources.sessions() as session:
        notices = _completion_notices(session, task_ids)
    settings = resources.settings
    allowed = notifications.allowed_notices(notices, settings)
    resources.events.count("notices_dropped", len(notices) - len(allowed), reason="capped")
    if allowed:
        build_notifier(settings, resources.events).send(allowed)
    return len(allowed)


# --- stored bytes -------------------------------------------------------------------------


def remove_stored_files(store: Storage, stored_filenames: list[str]) -> None:
    """Remove the bytes of files whose rows were deleted and committed.

    Removing what is already gone is no error; a storage failure raises, so the job is retried.
    """
    if not stored_filenames:
        return
    removed = file_service.remove_stored_files(store, stored_filenames)
    logger.debug("Removed %d of %d stored files", removed, len(stored_filenames))


def sweep_orphaned_files(
    resources: Resources,
    *,
    store: Storage | None = None,
    min_age_seconds: float = ORPHAN_MIN_AGE_SECONDS,
    dry_run: bool = False,
) -> file_service.SweepReport:
    """Remove this deployment's stored bytes that no row points to, and stale temporary files.

    `store` defaults to the resources' own storage.
    """
    store = store or resources.storage
    with resources.sessions() as session:
        report = file_service.sweep_orphans(
            session, storage=store, min_age_seconds=min_age_seconds, dry_run=dry_run
        )
    logger.info(
        "Orphan sweep%s (%s storage, namespace %s): %d orphaned and %d temporary files "
        "(%d bytes) removed, %d recent kept, %d temporary files in use",
        " (dry run)" if dry_run else "",
        store.kind,
        store.namespace,
        len(report.orphans_removed),
        len(report.temp_files_removed),
        report.bytes_freed,
        report.recent_orphans_kept,
        report.temp_files_in_use,
        extra={
            "event": "orphan_sweep",
            "orphans_removed": report.orphans_removed[:1000],
            "temp_files_removed": report.temp_files_removed[:1000],
        },
    )
    return report


def sweep_at_startup(resources: Resources) -> None:
    """The sweep run while the app starts; a failure is logged and the app starts anyway."""
    try:
        sweep_orphaned_files(resources)
    except Exception:
        logger.warning(
            "Orphan sweep at startup failed; run it later from the command line", exc_info=True
        )


# --- command line -------------------------------------------------------------------------


def _minutes(value: str) -> float:
    minutes = float(value)
    if not 0 <= minutes <= 60 * 24 * 365:
        raise argparse.ArgumentTypeError("must be between 0 and 525600")
    return minutes


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m background_tasks sweep`: remove orphaned uploads and print what went."""
    parser = argparse.ArgumentParser(prog="python -m background_tasks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser(
        "sweep", help="remove uploaded bytes that no database row points to"
    )
    sweep.add_argument(
        "--min-age-minutes",
        type=_minutes,
        default=ORPHAN_MIN_AGE_SECONDS / 60,
        help="leave files younger than this alone: their upload may still be committing "
        "(default: %(default)s)",
    )
    sweep.add_argument("--dry-run", action="store_true", help="report, but remove nothing")
    args = parser.parse_args(argv)

    settings = get_settings()
    configure_logging(settings)
    resources = Resources(settings)
    try:
        report = sweep_orphaned_files(
            resources, min_age_seconds=args.min_age_minutes * 60, dry_run=args.dry_run
        )
    finally:
        resources.close()
    verb = "would remove" if args.dry_run else "removed"
    out = sys.stdout
    for name in report.orphans_removed:
        out.write(f"{verb} orphan {name}\n")
    for name in report.temp_files_removed:
        out.write(f"{verb} temporary file {name}\n")
    in_use = (
        f"; {report.temp_files_in_use} temporary file(s) of uploads in progress"
        if report.temp_files_in_use
        else ""
    )
    out.write(
        f"{verb} {report.removed} file(s), {report.bytes_freed} bytes; "
        f"kept {report.recent_orphans_kept} recent unreferenced file(s){in_use}\n"
    )
    if report.failures:
        out.write(f"could not remove {report.failures} file(s); see the log\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
