"""Files: the rules for stored uploads, owner-scoped queries, and the life of the bytes.

The bytes of a file live in the configured storage (`storage.py`: the local disk or an
S3-compatible bucket) under a generated key; its row in `task_files` is the only thing that
makes them reachable. An upload arrives checked in a temporary file (`uploads.py`, the
transport), is stored under a fresh key, and only then given its row; if that transaction does
not commit, the stored bytes are removed again (`db_config.after_rollback`).
"""

import logging
import os
import re
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import quote

import anyio
from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

import outbox
import storage as storage_backends
from db_config import after_rollback
from db_models import Task, TaskFile
from exceptions import (
    StorageUnavailableError,
    StoredFileNotFoundError,
    TaskNotFoundError,
    TooManyFilesError,
)
from storage import LocalObject, ObjectMissingError, Storage, StorageError, StreamedObject
from uploads import DEFAULT_FILENAME, ReceivedUpload

logger = logging.getLogger(__name__)


# --- names --------------------------------------------------------------------------------

_UNSAFE_IN_QUOTES = re.compile(r'[^\x20-\x7e]|["\\]')


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact name in RFC 6266 `filename*`."""
    stem, extension = os.path.splitext(filename)
    ascii_stem, ascii_extension = (
        _UNSAFE_IN_QUOTES.sub(
            "_", unicodedata.normalize("NFKD", part).encode("ascii", "ignore").decode()
        )
        for part in (stem, extension)
    )
    if not ascii_stem.strip("._ "):
        ascii_stem = DEFAULT_FILENAME
    fallback = ascii_stem + ascii_extension
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


# --- storage and transaction --------------------------------------------------------------


def _delete_quietly(store: Storage, key: str) -> bool:
    try:
        store.delete(key)
    except (StorageError, ValueError):
        logger.warning("Could not remove stored object %s", key, exc_info=True)
        return False
    return True


def remove_stored_files(store: Storage, keys: list[str]) -> int:
    """Remove the bytes of deleted files; returns how many were removed.

    A key that is already gone counts as removed; a storage failure raises `StorageError`
    once the other keys were tried, so the job that called this is retried.
    """
    removed = 0
    failed: list[str] = []
    for key in keys:
        if storage_backends.KEY.fullmatch(key) is None:
            logger.warning("Refusing to remove %r: not a stored object key", key)
            continue
        if _delete_quietly(store, key):
            removed += 1
        else:
            failed.append(key)
    if failed:
        raise StorageError(f"could not remove {len(failed)} stored object(s)")
    return removed


# --- queries ------------------------------------------------------------------------------


def _count_files(session: Session, task_id: int) -> int:
    return session.scalar(select(func.count()).where(TaskFile.task_id == task_id)) or 0


@dataclass(frozen=True)
class UploadTarget:
    """The task an upload goes to, read before its session hands back the connection."""

    owner_id: int
    task_id: int


async def check_room_for_file(
    session: Session, *, owner_id: int, task_id: int, max_files: int
) -> UploadTarget:
    """404 for a task that is not the caller's, 409 when it already holds its limit of files:
    both before the body is read, in one statement and one thread-pool hop."""
    files = select(func.count()).where(TaskFile.task_id == Task.id).scalar_subquery()

    def check() -> None:
        found = session.execute(
            select(files).where(Task.id == task_id, Task.user_id == owner_id)
        ).one_or_none()
        if found is None:
            raise TaskNotFoundError(task_id)
        if found[0] >= max_files:
            raise TooManyFilesError(max_files)
        # Hand the pooled connection back while the client sends the body, however slowly:
        # nothing has been written, and `attach_file` re-checks everything under a lock.
        session.rollback()

    await anyio.to_thread.run_sync(check)
    return UploadTarget(owner_id=owner_id, task_id=task_id)


def store_upload(store: Storage, upload: ReceivedUpload) -> str:
    """Store a received upload under a fresh key (no row names it yet); returns the key."""
    key = store.new_key()
    try:
        store.store(
            key,
            upload.reader(),
            temp_path=upload.temp_path,
            content_type=upload.content_type,
            content_disposition=content_disposition(upload.original_filename),
        )
    except StorageError:
        logger.exception("Could not store an upload")
        raise StorageUnavailableError() from None
    return key


def attach_file(
    session: Session,
    *,
    owner_id: int,
    task_id: int,
    upload: ReceivedUpload,
    storage: Storage,
    max_files: int,
) -> TaskFile:
    """Store a received upload and add its row; the bytes go again unless the row commits."""
    key = store_upload(storage, upload)
    try:
        # The row lock serializes uploads to one task (the count stays exact) and orders them
        # against a concurrent delete of the task (which collects file keys under the same lock).
        locked = session.scalar(
            select(Task.id).where(Task.id == task_id, Task.user_id == owner_id).with_for_update()
        )
        if locked is None:
            raise TaskNotFoundError(task_id)
        if _count_files(session, task_id) >= max_files:
            raise TooManyFilesError(max_files)
        row = TaskFile(
            task_id=task_id,
            user_id=owner_id,
            original_filename=upload.original_filename,
            stored_filename=key,
            content_type=upload.content_type,
            file_size=upload.file_size,
            sha256=upload.sha256,
        )
        session.add(row)
        session.flush()
    except BaseException:
        _delete_quietly(storage, key)
        raise
    after_rollback(session, partial(_delete_quietly, storage, key))
    return row


async def attach_upload(
    session: Session,
    *,
    target: UploadTarget,
    upload: ReceivedUpload,
    storage: Storage,
    max_files: int,
    before_attach: Callable[[ReceivedUpload], None] | None = None,
) -> TaskFile:
    """Attach a received upload to the caller's task (`check_room_for_file`'s target).

    `before_attach` runs in the attaching transaction once the file is received and checked
    (the Idempotency-Key claim); whatever it raises leaves nothing behind.
    """

    def attach() -> TaskFile:
        if before_attach is not None:
            before_attach(upload)
        return attach_file(
            session,
            owner_id=target.owner_id,
            task_id=target.task_id,
            upload=upload,
            storage=storage,
            max_files=max_files,
        )

    return await anyio.to_thread.run_sync(attach)


def remove_files_of_tasks_after_commit(session: Session, *tasks: ColumnElement[bool]) -> None:
    """Record, in this transaction, the removal of the stored bytes of the tasks matching
    `tasks`, whose rows the caller is deleting: an outbox job removes them after the commit.

    The task rows are locked as an upload locks its task, so no file is attached after this
    read (tasks without files are locked too).
    """
    names = session.scalars(
        select(TaskFile.stored_filename)
        .select_from(Task)
        .outerjoin(TaskFile, TaskFile.task_id == Task.id)
        .where(*tasks)
        .with_for_update(of=Task)
    ).all()
    outbox.stored_files_deleted(
        session, stored_filenames=[name for name in names if name is not None]
    )


def list_files(session: Session, *, task: Task) -> list[TaskFile]:
    """The files of one of the caller's tasks, oldest first."""
    query = select(TaskFile).where(TaskFile.task_id == task.id, TaskFile.user_id == task.user_id)
    return list(session.scalars(query.order_by(TaskFile.id)).all())


@dataclass(frozen=True)
class Redirect:
    """The bytes are at this (presigned) URL."""

    url: str


@dataclass(frozen=True)
class Download:
    """What to answer for a download: the bytes (a local file or a stream) or a redirect."""

    content_type: str
    filename: str
    sha256: str
    body: LocalObject | StreamedObject | Redirect


def prepare_download(
    session: Session, *, owner_id: int, file_id: int, storage: Storage
) -> Download:
    """The caller's file, checked to be stored; another user's file is a 404."""
    row = session.scalar(
        select(TaskFile).where(TaskFile.id == file_id, TaskFile.user_id == owner_id)
    )
    if row is None:
        raise StoredFileNotFoundError(file_id)
    redirect_url = storage.presigned_url(row.stored_filename)
    if redirect_url is not None:
        return Download(row.content_type, row.original_filename, row.sha256, Redirect(redirect_url))
    try:
        body = storage.open(row.stored_filename)
    except ObjectMissingError:
        logger.error("File %s has a row but no stored bytes (%s)", file_id, row.stored_filename)
        raise StoredFileNotFoundError(file_id) from None
    except StorageError:
        logger.exception("Could not read the bytes of file %s", file_id)
        raise StorageUnavailableError() from None
    return Download(row.content_type, row.original_filename, row.sha256, body)


def delete_file(session: Session, *, owner_id: int, file_id: int) -> None:
    """Delete the caller's file row; its bytes are removed after the commit."""
    stored: str | None = session.scalar(
        delete(TaskFile)
        .where(TaskFile.id == file_id, TaskFile.user_id == owner_id)
        .returning(TaskFile.stored_filename)
    )
    if stored is None:
        raise StoredFileNotFoundError(file_id)
    outbox.stored_files_deleted(session, stored_filenames=[stored])


# --- the orphan sweep ---------------------------------------------------------------------


@dataclass
class SweepReport:
    """What a sweep found and removed from this deployment's storage namespace."""

    orphans_removed: list[str] = field(default_factory=list)
    temp_files_removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    recent_orphans_kept: int = 0
    temp_files_in_use: int = 0
    failures: int = 0

    @property
    def removed(self) -> int:
        return len(self.orphans_removed) + len(self.temp_files_removed)


def _unreferenced(session: Session, keys: list[str]) -> Iterator[str]:
    for start in range(0, len(keys), 500):
        batch = keys[start : start + 500]
        known = set(
            session.scalars(
                select(TaskFile.stored_filename).where(TaskFile.stored_filename.in_(batch))
            )
        )
        yield from (key for key in batch if key not in known)


def sweep_orphans(
    session: Session, *, storage: Storage, min_age_seconds: float, dry_run: bool = False
) -> SweepReport:
    """Remove stored objects no row points to, and abandoned temporary files.

    Only this deployment's namespace is looked at: objects of another database (another
    namespace) and of the older flat layout are never touched. Objects younger than
    `min_age_seconds` are kept (their upload may not have committed yet), and so is every
    temporary file an upload still holds open, however old.
    """
    report = SweepReport()
    cutoff = time.time() - min_age_seconds
    for path, stat in storage.temp_files():
        if stat.st_mtime >= cutoff:
            continue
        if storage_backends.remove_abandoned_temp(path, dry_run=dry_run):
            report.temp_files_removed.append(path.name)
            report.bytes_freed += stat.st_size
        else:
            report.temp_files_in_use += 1
    objects = {item.key: item for item in storage.list_own()}
    for key in _unreferenced(session, sorted(objects)):
        item = objects[key]
        if item.modified >= cutoff:
            report.recent_orphans_kept += 1
        elif dry_run or _delete_quietly(storage, key):
            report.orphans_removed.append(key)
            report.bytes_freed += item.size
        else:
            report.failures += 1
    return report
