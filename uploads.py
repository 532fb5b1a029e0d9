"""Receiving an upload: a multipart request body streamed into a checked temporary file.

This is transport, not business: no database and no final storage key. The body is parsed as
it arrives, the file part is spooled to a temporary file that stays locked against the orphan
sweep while it is open, and its size, type and sha256 are worked out on the way, so a refused
upload is refused before it is all read and nothing is ever held whole in memory. What happens
to the checked file (stored under a key, given its row) is `services/files.py`'s job.
"""

import codecs
import hashlib
import logging
import os
import re
import unicodedata
import zipfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

import storage as storage_backends
from exceptions import (
    FileTooLargeError,
    UnsupportedFileTypeError,
    UploadIncompleteError,
    UploadInvalidError,
)

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


# --- the temporary file -----------------------------------------------------------------


def _unlink_quietly(path: Path) -> bool:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        logger.warning("Could not remove %s", path.name, exc_info=True)
        return False
    return True


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
        elif self.temp_path.name.startswith(storage_backends.TEMP_PREFIX):
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

    def finish(self, last_chunks: list[bytes]) -> ReceivedUpload:
        """Feed the last chunks and check what was received (one thread-pool hop for both)."""
        self.feed(last_chunks)
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


@asynccontextmanager
async def receive_upload(
    *, headers: Mapping[str, str], body: AsyncIterator[bytes], upload_dir: Path, limit: int
) -> AsyncIterator[ReceivedUpload]:
    """Stream a multipart upload into a checked temporary file, never holding it in memory.

    Yields the received upload; on exit its temporary file is closed and removed (gone already
    if storing it moved it into place), whatever happened inside, so it never lingers.
    """
    upload = await _receive(headers=headers, body=body, upload_dir=upload_dir, limit=limit)
    try:
        yield upload
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(upload.discard)


async def _receive(
    *, headers: Mapping[str, str], body: AsyncIterator[bytes], upload_dir: Path, limit: int
) -> ReceivedUpload:
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
        return await anyio.to_thread.run_sync(receiver.finish, pending)
    except ClientDisconnect:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(receiver.discard)
        raise UploadIncompleteError() from None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(receiver.discard)
        raise
