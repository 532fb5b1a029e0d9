"""Where the bytes of attachments live: the local disk or an S3-compatible bucket.

Every stored object has a key `<namespace>/<32 hex digits>`. The hex part is random (never
derived from a client's file name); the namespace is derived from the database the service
runs on (or set with STORAGE_NAMESPACE), so a deployment only ever sweeps objects it stored
itself: switching DATABASE_URL in one checkout, or two deployments sharing an upload folder or
a bucket, never makes one treat the other's bytes as orphans. Keys of the older flat layout (32
hex digits, no namespace) stay readable and deletable, and no sweep ever touches them.

Local disk: a key is the path under UPLOAD_DIR. S3: a key is the object key in S3_BUCKET, so
`UPLOAD_DIR` and the bucket have the same layout. Either way an upload is first spooled to a
temporary file in `UPLOAD_DIR/<namespace>/` (locked while its upload runs, so the sweep never
takes it away from a slow client), checked, and then stored under a fresh key.
"""

import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.engine import make_url

from config import Settings

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client
else:
    S3Client = Any

logger = logging.getLogger(__name__)

NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
KEY = re.compile(r"^(?:(?P<namespace>[a-z0-9][a-z0-9-]{0,30})/)?(?P<name>[0-9a-f]{32})$")
TEMP_PREFIX = ".upload-"
TEMP_SUFFIX = ".part"
# Above this size an upload to S3 goes in parts of this size (S3's smallest part is 5 MiB).
S3_MULTIPART_BYTES = 8 * 1024 * 1024
_CHUNK_BYTES = 64 * 1024


class StorageError(Exception):
    """The storage backend failed (unreachable, refused); the operation may be retried."""


class ObjectMissingError(Exception):
    """No bytes are stored under the key."""


def database_namespace(database_url: str) -> str:
    """The namespace of a database: `db-` and 16 hex digits of a hash of where it lives.

    Credentials and driver do not count (rotating a password keeps the namespace); the kind of
    database, host, port and database name (for SQLite: the file's absolute path) do.
    """
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        where = database if database in ("", ":memory:") else str(Path(database).resolve())
        identity = f"sqlite:{where}"
    else:
        host = (url.host or str(url.query.get("host", ""))).lower()
        port = url.port or (5432 if backend == "postgresql" else "")
        identity = f"{backend}://{host}:{port}/{url.database or ''}"
    return "db-" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def check_key(key: str) -> re.Match[str]:
    """The parts of a stored key; anything but a key this service generates is refused."""
    match = KEY.fullmatch(key)
    if match is None:
        raise ValueError("not a stored object key")
    return match


@dataclass(frozen=True)
class StoredObject:
    """One object found under this deployment's namespace."""

    key: str
    size: int
    modified: float  # seconds since the epoch


@dataclass(frozen=True)
class LocalObject:
    """Bytes on the local disk, served from their path."""

    path: Path
    stat: os.stat_result


@dataclass
class StreamedObject:
    """Bytes read from the backend as they are sent."""

    size: int
    chunks: Iterator[bytes]


class Storage(ABC):
    """The bytes of attachments under generated keys. Thread-safe; one per process."""

    kind: Literal["local", "s3"]

    def __init__(self, *, namespace: str, upload_dir: Path) -> None:
        if not NAMESPACE.fullmatch(namespace):
            raise ValueError(f"not a storage namespace: {namespace!r}")
        self.namespace = namespace
        # Uploads are spooled here; for the local backend it is also where they are stored.
        self.temp_dir = upload_dir / namespace
        self.upload_dir = upload_dir

    def new_key(self) -> str:
        """A fresh key in this deployment's namespace."""
        return f"{self.namespace}/{uuid.uuid4().hex}"

    def owns(self, key: str) -> bool:
        """True when the key is in this deployment's namespace (a sweep may consider it)."""
        match = KEY.fullmatch(key)
        return match is not None and match["namespace"] == self.namespace

    @abstractmethod
    def store(
        self,
        key: str,
        source: BinaryIO,
        *,
        temp_path: Path | None,
        content_type: str,
        content_disposition: str,
    ) -> None:
        """Store the whole of `source` (an open, seekable file) under `key`.

        `temp_path` names the spooled file `source` was opened from, if it still exists; the
        local backend moves it into place instead of copying. The content type and download
        name are kept with the object (S3 serves them on a presigned GET). Raises StorageError.
        """

    @abstractmethod
    def open(self, key: str) -> LocalObject | StreamedObject:
        """The bytes under `key`; raises ObjectMissingError, or StorageError."""

    def presigned_url(self, key: str) -> str | None:  # noqa: ARG002 - streamed by default
        """A URL a client may GET the bytes from directly, or None to stream them."""
        return None

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the bytes under `key`; a key already gone is fine. Raises StorageError."""

    @abstractmethod
    def list_own(self) -> Iterator[StoredObject]:
        """Every object in this deployment's namespace (never another's, never the flat layout)."""

    # --- temporary files, the same for every backend ------------------------------------

    def temp_files(self) -> Iterator[tuple[Path, os.stat_result]]:
        """The temporary files of uploads in this deployment's folder."""
        try:
            entries = list(os.scandir(self.temp_dir))
        except FileNotFoundError:
            return
        for entry in entries:
            if (
                entry.name.startswith(TEMP_PREFIX)
                and entry.name.endswith(TEMP_SUFFIX)
                and entry.is_file(follow_symlinks=False)
            ):
                try:
                    yield Path(entry.path), entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue


def create_temp_file(directory: Path) -> tuple[Path, BinaryIO]:
    """A new temporary file for an upload, open for writing and reading, and locked.

    The lock lasts until the file is closed; the sweep leaves locked files alone however old
    they are, so a stalled upload keeps its bytes.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=directory)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return Path(name), os.fdopen(fd, "w+b")


def remove_abandoned_temp(path: Path, *, dry_run: bool = False) -> bool:
    """Remove a temporary file unless an upload still holds it; True when it is (would be) gone."""
    try:
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            if not dry_run:
                path.unlink(missing_ok=True)
            return True
    except FileNotFoundError:
        return False
    except OSError:
        logger.warning("Could not remove temporary file %s", path.name, exc_info=True)
        return False


class LocalStorage(Storage):
    """Files under UPLOAD_DIR, mode 0600, moved into place by an atomic rename."""

    kind = "local"

    def path_of(self, key: str) -> Path:
        check_key(key)
        return self.upload_dir / key

    def store(
        self,
        key: str,
        source: BinaryIO,
        *,
        temp_path: Path | None,
        content_type: str,  # noqa: ARG002 - served from the row
        content_disposition: str,  # noqa: ARG002 - served from the row
    ) -> None:
        final = self.path_of(key)
        try:
            final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if temp_path is not None and same_file(temp_path, source):
                os.replace(temp_path, final)
            else:
                # The spooled file is gone from its folder (removed by hand, say): the open
                # handle still holds every byte, so copy them into place.
                self._copy_into_place(source, final)
            # Its age is its time in place, never the upload's: the sweep's grace period counts
            # from here.
            os.utime(final)
        except OSError as exc:
            raise StorageError(f"could not store {key}") from exc

    @staticmethod
    def _copy_into_place(source: BinaryIO, final: Path) -> None:
        fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as target:
                source.seek(0)
                shutil.copyfileobj(source, target, _CHUNK_BYTES)
                target.flush()
                os.fsync(target.fileno())
            os.replace(name, final)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise

    def open(self, key: str) -> LocalObject:
        path = self.path_of(key)
        try:
            return LocalObject(path=path, stat=path.stat())
        except FileNotFoundError:
            raise ObjectMissingError(key) from None
        except OSError as exc:
            raise StorageError(f"could not read {key}") from exc

    def delete(self, key: str) -> None:
        try:
            self.path_of(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"could not remove {key}") from exc

    def list_own(self) -> Iterator[StoredObject]:
        try:
            entries = list(os.scandir(self.upload_dir / self.namespace))
        except FileNotFoundError:
            return
        for entry in entries:
            key = f"{self.namespace}/{entry.name}"
            if not self.owns(key) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield StoredObject(key=key, size=stat.st_size, modified=stat.st_mtime)


def same_file(path: Path, handle: IO[bytes]) -> bool:
    try:
        on_disk, held = path.stat(), os.fstat(handle.fileno())
    except OSError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


class S3Storage(Storage):
    """Objects in an S3-compatible bucket; UPLOAD_DIR holds only temporary files."""

    kind = "s3"

    def __init__(
        self,
        *,
        namespace: str,
        upload_dir: Path,
        bucket: str,
        client: S3Client,
        presign_seconds: int | None = None,
        multipart_bytes: int = S3_MULTIPART_BYTES,
    ) -> None:
        super().__init__(namespace=namespace, upload_dir=upload_dir)
        self.bucket = bucket
        self.client = client
        self.presign_seconds = presign_seconds
        self.transfer = TransferConfig(
            multipart_threshold=multipart_bytes,
            multipart_chunksize=multipart_bytes,
            # The caller is already a worker thread; parts go one after another.
            use_threads=False,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, namespace: str) -> "S3Storage":
        if not settings.s3_bucket:
            raise ValueError("STORAGE_BACKEND=s3 needs S3_BUCKET")
        return cls(
            namespace=namespace,
            upload_dir=settings.upload_dir,
            bucket=settings.s3_bucket,
            client=s3_client(settings),
            presign_seconds=settings.s3_presign_seconds,
        )

    def store(
        self,
        key: str,
        source: BinaryIO,
        *,
        temp_path: Path | None,  # noqa: ARG002 - uploaded from the open file
        content_type: str,
        content_disposition: str,
    ) -> None:
        check_key(key)
        source.seek(0)
        # boto3 closes the file it is given: hand it a duplicate, so the caller's stays open
        # (and keeps the spooled file locked).
        duplicate = os.fdopen(os.dup(source.fileno()), "rb")
        try:
            self.client.upload_fileobj(
                duplicate,
                self.bucket,
                key,
                # Kept with the object: a presigned GET serves them as they are, also from
                # servers that ignore the response-override parameters.
                ExtraArgs={"ContentType": content_type, "ContentDisposition": content_disposition},
                Config=self.transfer,
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"could not store {key}: {_reason(exc)}") from exc
        finally:
            duplicate.close()

    def open(self, key: str) -> StreamedObject:
        check_key(key)
        try:
            found = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissingError(key) from None
            raise StorageError(f"could not read {key}: {_reason(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"could not read {key}: {_reason(exc)}") from exc
        body = found["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(_CHUNK_BYTES)
            finally:
                body.close()

        return StreamedObject(size=found["ContentLength"], chunks=chunks())

    def presigned_url(self, key: str) -> str | None:
        if not self.presign_seconds:
            return None
        check_key(key)
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=self.presign_seconds,
        )

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return
            raise StorageError(f"could not remove {key}: {_reason(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"could not remove {key}: {_reason(exc)}") from exc

    def list_own(self) -> Iterator[StoredObject]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.namespace}/"
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    key = item.get("Key", "")
                    if self.owns(key):
                        modified = item.get("LastModified")
                        yield StoredObject(
                            key=key,
                            size=item.get("Size", 0),
                            modified=modified.timestamp() if modified else time.time(),
                        )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"could not list the bucket: {_reason(exc)}") from exc


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return _error_code(exc) or type(exc).__name__
    return type(exc).__name__


def s3_client(settings: Settings) -> S3Client:
    """A boto3 S3 client for the configured endpoint, region and credentials."""
    config = BotoConfig(
        signature_version="s3v4",
        # Path-style requests work on every S3-compatible server; AWS itself keeps its default.
        s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
        connect_timeout=5,
        read_timeout=30,
        retries={"max_attempts": 3, "mode": "standard"},
        # Checksums only where S3 requires them: several S3-compatible servers reject the rest.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    secret = settings.aws_secret_access_key
    token = settings.aws_session_token
    # Unset credentials fall through to boto3's own chain (profiles, instance roles).
    client: S3Client = boto3.session.Session().client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        aws_session_token=token.get_secret_value() if token else None,
        config=config,
    )
    return client


def build_storage(settings: Settings) -> Storage:
    """The configured backend, in the namespace of the configured database."""
    namespace = settings.storage_namespace or database_namespace(settings.database_url)
    if settings.storage_backend == "s3":
        return S3Storage.from_settings(settings, namespace=namespace)
    return LocalStorage(namespace=namespace, upload_dir=settings.upload_dir)
