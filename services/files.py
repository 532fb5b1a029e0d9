"""Files: uploads streamed through the API, owner-scoped queries, and the life of the bytes.

The bytes of a file live in the configured storage (`storage.py`: the local disk or an
S3-compatible bucket) under a generated key; its row in `task_files` is the only thing that
makes them reachable. An upload is spooled to a locked temporary file, checked, stored under a
fresh key, and only then given its row; if that transaction does not commit, the stored bytes
are removed again (`db_config.after_rollback`).
"""

import codecs
import hashlib
import logging
import os
import re
import time
import unicodedata
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

import outbox
import storage as storage_backends
from db_config import after_rollback
from db_models import Task, TaskFile
from exceptions import (
    FileTooLargeError,
    StorageUnavailableError,
    StoredFileNotFoundError,
    TaskNotFoundError,
    TooManyFilesError,
    UnsupportedFileTypeError,
    UploadIncompleteError,
    UploadInvalidError,
)
from storage import LocalObject, ObjectMissingError, Storage, StorageError, StreamedObject

logger = logging.getLogger(__name__)

DOCX_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
# Extension -> the content type stored and served for it, and the leading bytes it must have.
_TYPES: dict[str, tuple[str, tuple[bytes, ...]]] = {
    ".jpg": ("image/jpeg", (b"\xff\xd8\xff",)),
    ".jpeg": ("image/jpeg", (b"\xff\xd8\xff",)),
    ".png": ("image/png", (b"\x89PNG\r\n\x1a\n",)),
    ".gif": ("image/gif", (b"GIF87a", b"GIF89a")),
    ".pdf": ("application/pdf", (b"%PDF-",)),
    ".doc": ("application/msword", (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",)),
    ".docx": (DOCX_CONTENT_TYPE, (b"PK\x03\x04",)),
    # An empty archive is only an end-of-directory record.
    ".zip": ("application/zip", (b"PK\x03\x04", b"PK\x05\x06")),
    ".txt": ("text/plain; charset=utf-8", ()),
}
ALLOWED_EXTENSIONS = tuple(_TYPES)
CONTENT_TYPES = tuple(dict.fromkeys(content_type for content_type, _ in _TYPES.values()))
_SNIFF_BYTES = 8

MAX_FILENAME_LENGTH = 255
DEFAULT_FILENAME = "file"
# Room for the multipart framing around the file: boundaries, part headers, a long file name.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# Request bytes gathered before handing them to a worker thread: fewer thread hops, bounded memory.
_FEED_BYTES = 256 * 1024

TEMP_PREFIX = storage_backends.TEMP_PREFIX
TEMP_SUFFIX = storage_backends.TEMP_SUFFIX


# --- names --------------------------------------------------------------------------------


def safe_filename(raw: str) -> str:
    """Reduce a client's file name to a base name that is safe to store and show."""
    name = unicodedata.normalize("NFC", raw)
    name = re.split(r"[/\\]", name)[-1]
    # Control, format (e.g. right-to-left override) and unassigned characters go; a run of
    # whitespace (tabs, line breaks) becomes one plain space.
    name = "".join(char for char in name if char.isspace() or unicodedata.category(char)[0] != "C")
    name = " ".join(name.split()).rstrip(" .")
    stem, dot, extension = name.rpartition(".")
    if not dot or len(extension) > 16 or " " in extension:
        stem, extension = name, ""
    else:
        extension = "." + extension
    stem = stem.strip(" .") or DEFAULT_FILENAME
    return stem[: MAX_FILENAME_LENGTH - len(extension)].rstrip(" .") + extension


def extension_of(filename: str) -> str:
    return os.path.splitext(filename)[1].lower()


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


def _unlink_quietly(path: Path) -> bool:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        logger.warning("Could not remove %s", path.name, exc_info=True)
        return False
    return True


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


# --- receiving an upload ------------------------------------------------------------------


@dataclass
class ReceivedUpload:
    """A complete, checked upload in a temporary file, waiting to be stored with its row.

    `file` is the spooled file, still open (and so still locked against the sweep); the bytes
    are read from it, never from the path, which may be gone.
    """

    temp_path: Path
    original_filename: str
    content_type: str
    file_size: int
    sha256: str
    file: BinaryIO | None = None

    def reader(self) -> BinaryIO:
        if self.file is None:
            self.file = open(self.temp_path, "rb")  # noqa: SIM115 - closed by discard()
        self.file.seek(0)
        return self.file

    def discard(self) -> None:
        """Close the spooled file and remove it, unless it was moved into place."""
        if self.file is not None:
            if storage_backends.same_file(self.temp_path, self.file):
                _unlink_quietly(self.temp_path)
            self.file.close()
            self.file = None
        elif self.temp_path.name.startswith(TEMP_PREFIX):
            _unlink_quietly(self.temp_path)


@dataclass
class _FileSink:
    """The bytes of the file part: written to a temporary file, hashed, sized and sniffed."""

    extension: str
    limit: int
    temp_path: Path
    stream: BinaryIO
    size: int = 0
    head: bytes = b""
    digest: Any = field(default_factory=hashlib.sha256)
    text: codecs.IncrementalDecoder | None = None

    @classmethod
    def open(cls, upload_dir: Path, extension: str, limit: int) -> "_FileSink":
        # Locked while open; for the local backend in the folder of the final name, so putting
        # it in place is an atomic rename.
        path, stream = storage_backends.create_temp_file(upload_dir)
        text = codecs.getincrementaldecoder("utf-8")() if extension == ".txt" else None
        return cls(extension, limit, path, stream, text=text)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise FileTooLargeError(self.limit)
        if len(self.head) < _SNIFF_BYTES:
            self.head += data[: _SNIFF_BYTES - len(self.head)]
            if len(self.head) == _SNIFF_BYTES:
                self._check_magic()
        if self.text is not None:
            self._check_text(self.text, data, final=False)
        self.digest.update(data)
        self.stream.write(data)

    def _check_magic(self) -> None:
        content_type, signatures = _TYPES[self.extension]
        if signatures and not self.head.startswith(signatures):
            raise UnsupportedFileTypeError(
                f"The content is not a valid {self.extension} file ({content_type})"
            )

    @staticmethod
    def _check_text(decoder: codecs.IncrementalDecoder, data: bytes, *, final: bool) -> None:
        try:
            decoder.decode(data, final=final)
        except UnicodeDecodeError:
            raise UnsupportedFileTypeError("A .txt file must be UTF-8 text") from None
        if b"\x00" in data:
            raise UnsupportedFileTypeError("A .txt file must not contain NUL bytes")

    def finish(self, original_filename: str) -> ReceivedUpload:
        if self.size == 0:
            raise UploadInvalidError("The file is empty", "empty_file")
        self._check_magic()
        if self.text is not None:
            self._check_text(self.text, b"", final=True)
        self.stream.flush()
        # Durable before its row can commit: a crash must not leave a row with no bytes.
        os.fsync(self.stream.fileno())
        if self.extension == ".docx" and not _is_docx(self.stream):
            raise UnsupportedFileTypeError("The content is not a valid .docx document")
        return ReceivedUpload(
            temp_path=self.temp_path,
            original_filename=original_filename,
            content_type=_TYPES[self.extension][0],
            file_size=self.size,
            sha256=self.digest.hexdigest(),
            file=self.stream,
        )

    def discard(self) -> None:
        self.stream.close()
        _unlink_quietly(self.temp_path)


def _is_docx(stream: BinaryIO) -> bool:
    # Reads only the central directory, never decompresses: safe against zip bombs.
    try:
        stream.seek(0)
        with zipfile.ZipFile(stream) as archive:  # leaves the stream open
            return any(name.startswith("word/") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


class _MultipartReceiver:
    """Feeds request bytes through a streaming multipart parser into one `_FileSink`.

    Runs in a worker thread: parsing, hashing and writing are all blocking work.
    """

    def __init__(self, boundary: bytes, upload_dir: Path, limit: int) -> None:
        self.upload_dir = upload_dir
        self.limit = limit
        self.sink: _FileSink | None = None
        self.original_filename = ""
        self.file_parts = 0
        self.finished_file = False
        self.ended = False
        self._in_file_part = False
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        try:
            self.parser = MultipartParser(
                boundary,
                callbacks={
                    "on_part_begin": self._on_part_begin,
                    "on_header_field": self._on_header_field,
                    "on_header_value": self._on_header_value,
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": self._on_headers_finished,
                    "on_part_data": self._on_part_data,
                    "on_part_end": self._on_part_end,
                    "on_end": self._on_end,
                },
            )
        except FormParserError:
            raise UploadInvalidError("The multipart boundary is invalid") from None

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._in_file_part = False

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_name).strip().lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or options.get(b"name") != b"file":
            return
        self.file_parts += 1
        if self.file_parts > 1:
            raise UploadInvalidError("Send exactly one part named 'file'")
        raw_name = options.get(b"filename")
        if raw_name is None:
            raise UploadInvalidError("The 'file' part must be a file upload")
        self.original_filename = safe_filename(_decode_header(raw_name))
        extension = extension_of(self.original_filename)
        if extension not in _TYPES:
            raise UnsupportedFileTypeError(
                f"File type not allowed; allowed: {', '.join(ALLOWED_EXTENSIONS)}"
            )
        self.sink = _FileSink.open(self.upload_dir, extension, self.limit)
        self._in_file_part = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file_part and self.sink is not None:
            self.sink.write(data[start:end])

    def _on_part_end(self) -> None:
        if self._in_file_part:
            self.finished_file = True
            self._in_file_part = False

    def _on_end(self) -> None:
        self.ended = True

    def feed(self, chunks: list[bytes]) -> None:
        try:
            for chunk in chunks:
                self.parser.write(chunk)
        except FormParserError:
            raise UploadInvalidError("The multipart body is malformed") from None

    def finish(self) -> ReceivedUpload:
        if not self.ended:
            raise UploadInvalidError("The multipart body ended early")
        if self.sink is None or not self.finished_file:
            raise UploadInvalidError("Field required", "missing")
        return self.sink.finish(self.original_filename)

    def discard(self) -> None:
        if self.sink is not None:
            self.sink.discard()


def _decode_header(value: bytes) -> str:
    # Browsers send file names as raw UTF-8; anything else is taken as Latin-1.
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _boundary(content_type: str | None) -> bytes:
    media_type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise UploadInvalidError("Send the file as multipart/form-data in a part named 'file'")
    return boundary


def _declared_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


async def receive_upload(
    *, headers: Mapping[str, str], body: AsyncIterator[bytes], upload_dir: Path, limit: int
) -> ReceivedUpload:
    """Stream a multipart upload into a checked temporary file, never holding it in memory."""
    max_body = limit + MULTIPART_OVERHEAD_BYTES
    declared = _declared_length(headers)
    if declared is not None and declared > max_body:
        # Refused before a byte of the body is read.
        raise FileTooLargeError(limit)
    receiver = _MultipartReceiver(_boundary(headers.get("content-type")), upload_dir, limit)
    try:
        received = 0
        pending: list[bytes] = []
        pending_size = 0
        async for chunk in body:
            received += len(chunk)
            if received > max_body:
                raise FileTooLargeError(limit)
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= _FEED_BYTES:
                await anyio.to_thread.run_sync(receiver.feed, pending)
                pending, pending_size = [], 0
        await anyio.to_thread.run_sync(receiver.feed, pending)
        return await anyio.to_thread.run_sync(receiver.finish)
    except ClientDisconnect:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(receiver.discard)
        raise UploadIncompleteError() from None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(receiver.discard)
        raise


# --- queries ------------------------------------------------------------------------------


def _count_files(session: Session, task_id: int) -> int:
    return session.scalar(select(func.count()).where(TaskFile.task_id == task_id)) or 0


def check_room_for_file(session: Session, *, task: Task, max_files: int) -> None:
    """409 before the body is read when the task already holds its limit of files."""
    if _count_files(session, task.id) >= max_files:
        raise TooManyFilesError(max_files)
    # Hand the pooled connection back while the client sends the body, however slowly:
    # nothing has been written, and `attach_file` re-checks everything under a lock.
    session.rollback()


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


async def upload_file(
    session: Session,
    *,
    task: Task,
    headers: Mapping[str, str],
    body: AsyncIterator[bytes],
    storage: Storage,
    max_bytes: int,
    max_files: int,
    before_attach: Callable[[ReceivedUpload], None] | None = None,
) -> TaskFile:
    """Receive one file for the caller's task and attach it to the task.

    `before_attach` runs in the attaching transaction once the file is received and checked
    (the Idempotency-Key claim); whatever it raises leaves nothing behind.
    """
    owner_id, task_id = task.user_id, task.id
    await anyio.to_thread.run_sync(
        partial(check_room_for_file, session, task=task, max_files=max_files)
    )
    upload = await receive_upload(
        headers=headers, body=body, upload_dir=storage.temp_dir, limit=max_bytes
    )

    def attach() -> TaskFile:
        if before_attach is not None:
            before_attach(upload)
        return attach_file(
            session,
            owner_id=owner_id,
            task_id=task_id,
            upload=upload,
            storage=storage,
            max_files=max_files,
        )

    try:
        return await anyio.to_thread.run_sync(attach)
    finally:
        # Gone already once moved into place; otherwise it must not linger.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(upload.discard)


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
