"""The orphan sweep: bytes no row points to are removed at startup and from the command line.

A sweep only ever looks at its own deployment's namespace: bytes of another database, and of
the older flat layout, are never touched. It runs on both storage backends.
"""

import hashlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, create_engine, update

import background_tasks
import main
import storage
from alembic import command
from config import PROJECT_DIR, get_settings
from db_models import TaskFile
from services import files as file_service
from tests.conftest import RESOURCES, TEST_BUCKET, AuthUser, alembic_config, s3_storage_for
from tests.s3_server import S3Server
from tests.served_app import run_module
from tests.task_helpers import stored_key, upload_file

PDF = b"%PDF-1.7\nswept?\n"
AN_HOUR_AGO = time.time() - 3600
BOUNDARY = b"sweep-boundary-1b2c"


def upload_dir() -> Path:
    return get_settings().upload_dir


def make_file(directory: Path, name: str, *, old: bool, content: bytes = b"bytes") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(content)
    if old:
        os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    return path


def orphan_name() -> str:
    return uuid.uuid4().hex


def temp_name() -> str:
    return f"{storage.TEMP_PREFIX}{uuid.uuid4().hex[:8]}{storage.TEMP_SUFFIX}"


def put(store: storage.Storage, key: str, content: bytes = PDF) -> str:
    """Store bytes under a key directly, as a crash between storing and committing leaves them."""
    path, handle = storage.create_temp_file(store.temp_dir)
    with handle:
        handle.write(content)
        store.store(
            key,
            handle,
            temp_path=path,
            content_type="application/pdf",
            content_disposition='attachment; filename="x.pdf"',
        )
    path.unlink(missing_ok=True)
    return key


def is_stored(store: storage.Storage, key: str) -> bool:
    try:
        found = store.open(key)
    except storage.ObjectMissingError:
        return False
    if isinstance(found, storage.StreamedObject):
        b"".join(found.chunks)
    return True


def upload_through_api(client: TestClient, user: AuthUser, content: bytes = PDF) -> int:
    task = client.post("/tasks", json={"title": "Has a file"}, headers=user.headers).json()
    return upload_file(client, user, task["id"], "kept.pdf", content)


@pytest.fixture
def uploaded(client: TestClient, alice: AuthUser, db_connection: Connection) -> tuple[int, Path]:
    """A file uploaded to the local disk, its bytes made old enough to be swept if orphaned."""
    file_id = upload_through_api(client, alice)
    path = upload_dir() / stored_key(db_connection, file_id)
    os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    return file_id, path


def local_dir() -> Path:
    """This deployment's folder on the local disk: its stored files and temporary files."""
    return RESOURCES.storage.temp_dir


class TestSweep:
    def test_removes_old_orphans_and_temp_files_and_nothing_else(
        self, client: TestClient, alice: AuthUser, uploaded: tuple[int, Path]
    ) -> None:
        file_id, referenced = uploaded
        directory = local_dir()
        old_orphan = make_file(directory, orphan_name(), old=True, content=b"12345")
        old_temp = make_file(directory, temp_name(), old=True, content=b"123")
        fresh_orphan = make_file(directory, orphan_name(), old=False)
        fresh_temp = make_file(directory, temp_name(), old=False)
        # Names the service never generates are never touched, however old.
        foreign = make_file(directory, "README.md", old=True)
        (directory / "subdir").mkdir(exist_ok=True)

        report = background_tasks.sweep_orphaned_files(RESOURCES)

        namespace = RESOURCES.storage.namespace
        assert f"{namespace}/{old_orphan.name}" in report.orphans_removed
        assert old_temp.name in report.temp_files_removed
        assert report.bytes_freed >= 8
        assert not old_orphan.exists()
        assert not old_temp.exists()
        for kept in (referenced, fresh_orphan, fresh_temp, foreign):
            assert kept.exists(), kept.name
        assert f"{namespace}/{referenced.name}" not in report.orphans_removed
        assert report.recent_orphans_kept >= 1
        assert client.get(f"/files/{file_id}", headers=alice.headers).content == PDF

    def test_a_dry_run_reports_but_removes_nothing(self, uploaded: tuple[int, Path]) -> None:
        orphan = make_file(local_dir(), orphan_name(), old=True)
        report = background_tasks.sweep_orphaned_files(RESOURCES, dry_run=True)
        assert f"{RESOURCES.storage.namespace}/{orphan.name}" in report.orphans_removed
        assert orphan.exists()
        assert all(not key.endswith(uploaded[1].name) for key in report.orphans_removed)

    def test_the_age_threshold_is_adjustable(self, uploaded: tuple[int, Path]) -> None:
        fresh = make_file(local_dir(), orphan_name(), old=False)
        report = background_tasks.sweep_orphaned_files(RESOURCES, min_age_seconds=0)
        assert f"{RESOURCES.storage.namespace}/{fresh.name}" in report.orphans_removed
        assert not fresh.exists()
        assert uploaded[1].exists()

    def test_the_report_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        orphan = make_file(local_dir(), orphan_name(), old=True)
        caplog.set_level(logging.INFO, logger="background_tasks")
        background_tasks.sweep_orphaned_files(RESOURCES)
        [record] = [r for r in caplog.records if getattr(r, "event", None) == "orphan_sweep"]
        removed = f"{RESOURCES.storage.namespace}/{orphan.name}"
        assert removed in record.orphans_removed  # type: ignore[attr-defined]

    def test_a_missing_upload_dir_is_an_empty_sweep(self, tmp_path: Path) -> None:
        store = storage.LocalStorage(namespace="db-test", upload_dir=tmp_path / "not-yet")
        report = background_tasks.sweep_orphaned_files(RESOURCES, store=store)
        assert report.removed == 0


@pytest.mark.usefixtures("storage_backend")
class TestSweepOnEachBackend:
    def test_orphans_go_and_referenced_bytes_stay(
        self,
        client: TestClient,
        alice: AuthUser,
        db_connection: Connection,
        storage_backend: storage.Storage,
    ) -> None:
        file_id = upload_through_api(client, alice)
        referenced = stored_key(db_connection, file_id)
        orphan = put(storage_backend, storage_backend.new_key())

        # Younger than the grace period: an upload may still be committing it.
        report = background_tasks.sweep_orphaned_files(RESOURCES)
        assert orphan not in report.orphans_removed
        assert report.recent_orphans_kept >= 1
        assert is_stored(storage_backend, orphan)

        report = background_tasks.sweep_orphaned_files(RESOURCES, min_age_seconds=0)
        assert orphan in report.orphans_removed
        assert referenced not in report.orphans_removed
        assert not is_stored(storage_backend, orphan)
        assert is_stored(storage_backend, referenced)
        assert client.get(f"/files/{file_id}", headers=alice.headers).content == PDF

    def test_another_namespace_is_never_touched(self, storage_backend: storage.Storage) -> None:
        other = (
            storage.LocalStorage(namespace="db-0123456789abcdef", upload_dir=upload_dir())
            if storage_backend.kind == "local"
            else storage.S3Storage(
                namespace="db-0123456789abcdef",
                upload_dir=upload_dir(),
                bucket=TEST_BUCKET,
                client=storage_backend.client,  # type: ignore[attr-defined]
            )
        )
        theirs = put(other, other.new_key())
        report = background_tasks.sweep_orphaned_files(RESOURCES, min_age_seconds=0)
        assert theirs not in report.orphans_removed
        assert is_stored(other, theirs)
        other.delete(theirs)

    def test_a_stalled_upload_keeps_its_temporary_file_and_succeeds(
        self, live_server: str, alice: AuthUser
    ) -> None:
        """Issue: a sweep removed the temp file of an upload stalled > 15 min; it ended in 500."""
        content = b"%PDF-" + b"s" * (400 * 1024)
        reports: list[file_service.SweepReport] = []

        def while_quiet(temp: Path) -> None:
            # The client has gone quiet for an hour, as far as the file's age tells.
            os.utime(temp, (AN_HOUR_AGO, AN_HOUR_AGO))
            reports.append(background_tasks.sweep_orphaned_files(RESOURCES))
            assert temp.exists()

        response = _upload_with_a_pause(live_server, alice, content, while_quiet)
        assert response.status_code == 201, response.text
        assert reports[0].temp_files_in_use == 1
        assert reports[0].temp_files_removed == []
        assert response.json()["sha256"] == hashlib.sha256(content).hexdigest()
        downloaded = httpx.get(
            f"{live_server}/files/{response.json()['id']}", headers=alice.headers, timeout=30
        )
        assert downloaded.content == content
        assert list(RESOURCES.storage.temp_files()) == []

    def test_an_upload_whose_temporary_file_vanished_still_succeeds(
        self, live_server: str, alice: AuthUser
    ) -> None:
        content = b"%PDF-" + b"v" * (400 * 1024)
        # Removed by hand (or by an older version's sweep) while the client is quiet.
        response = _upload_with_a_pause(live_server, alice, content, Path.unlink)
        assert response.status_code == 201, response.text
        downloaded = httpx.get(
            f"{live_server}/files/{response.json()['id']}", headers=alice.headers, timeout=30
        )
        assert downloaded.content == content


def _upload_with_a_pause(
    base_url: str, user: AuthUser, content: bytes, during_pause: Callable[[Path], None]
) -> httpx.Response:
    """Upload through a served app, calling `during_pause` once the upload is spooling."""
    task = httpx.post(f"{base_url}/tasks", json={"title": "Slow"}, headers=user.headers).json()
    body = _multipart(content, b"slow.pdf")
    split = 300 * 1024

    def stream() -> Iterator[bytes]:
        yield body[:split]
        deadline = time.monotonic() + 30
        temps: list[Path] = []
        while not temps and time.monotonic() < deadline:
            temps = [path for path, _ in RESOURCES.storage.temp_files()]
            time.sleep(0.02)
        assert len(temps) == 1, "the upload never started spooling"
        during_pause(temps[0])
        yield body[split:]

    return httpx.post(
        f"{base_url}/tasks/{task['id']}/files",
        content=stream(),
        headers={**user.headers, "Content-Type": _MULTIPART},
        timeout=60,
    )


_MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"


def _multipart(content: bytes, filename: bytes) -> bytes:
    return (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
        b"--" + BOUNDARY + b"--\r\n"
    )


class TestFlatLayout:
    """Files stored before namespaces (directly in UPLOAD_DIR) keep working and are never swept."""

    def test_an_old_file_stays_readable_deletable_and_unswept(
        self, client: TestClient, alice: AuthUser, db_connection: Connection
    ) -> None:
        file_id = upload_through_api(client, alice)
        key = stored_key(db_connection, file_id)
        flat_name = key.rpartition("/")[2]
        # As the older layout stored it: the bare name, straight in UPLOAD_DIR.
        os.replace(upload_dir() / key, upload_dir() / flat_name)
        db_connection.execute(
            update(TaskFile).where(TaskFile.id == file_id).values(stored_filename=flat_name)
        )
        flat_orphan = make_file(upload_dir(), orphan_name(), old=True)
        flat_temp = make_file(upload_dir(), temp_name(), old=True)

        assert client.get(f"/files/{file_id}", headers=alice.headers).content == PDF
        report = background_tasks.sweep_orphaned_files(RESOURCES, min_age_seconds=0)
        # Whose they are cannot be known: another database may still point at them.
        assert flat_orphan.exists()
        assert flat_temp.exists()
        assert (upload_dir() / flat_name).exists()
        assert all(flat_orphan.name not in key for key in report.orphans_removed)

        assert client.delete(f"/files/{file_id}", headers=alice.headers).status_code == 204
        assert not (upload_dir() / flat_name).exists()
        flat_orphan.unlink()
        flat_temp.unlink()


def _migrated_sqlite(path: Path) -> str:
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
    finally:
        engine.dispose()
    return url


@pytest.mark.usefixtures("storage_backend")
class TestSwitchingDatabases:
    def test_a_sweep_on_another_database_removes_only_its_own_orphans(
        self,
        request: pytest.FixtureRequest,
        client: TestClient,
        alice: AuthUser,
        db_connection: Connection,
        storage_backend: storage.Storage,
        tmp_path: Path,
    ) -> None:
        """Issue: switching DATABASE_URL made the startup sweep delete the other one's files."""
        file_id = upload_through_api(client, alice)
        ours = stored_key(db_connection, file_id)
        other_url = _migrated_sqlite(tmp_path / "other.db")
        other_namespace = storage.database_namespace(other_url)
        assert other_namespace != storage_backend.namespace
        env = {
            **os.environ,
            "DATABASE_URL": other_url,
            "UPLOAD_DIR": str(upload_dir()),
            "LOG_LEVEL": "WARNING",
        }
        if storage_backend.kind == "s3":
            server: S3Server = request.getfixturevalue("s3_server")
            env.update(server.environment(TEST_BUCKET))
            theirs_store: storage.Storage = s3_storage_for(server, namespace=other_namespace)
        else:
            theirs_store = storage.LocalStorage(namespace=other_namespace, upload_dir=upload_dir())
        # An orphan of the other database, e.g. left by a crash while it was in use.
        theirs = put(theirs_store, theirs_store.new_key())

        result = run_module("background_tasks", "sweep", "--min-age-minutes", "0", env=env)

        assert f"removed orphan {theirs}" in result.stdout
        assert ours not in result.stdout
        assert not is_stored(theirs_store, theirs)
        assert is_stored(storage_backend, ours)
        assert client.get(f"/files/{file_id}", headers=alice.headers).content == PDF


class TestStartupSweep:
    def test_runs_when_the_app_starts(self, app: FastAPI, uploaded: tuple[int, Path]) -> None:
        orphan = make_file(local_dir(), orphan_name(), old=True)

        async def start_and_stop() -> None:
            async with main.lifespan(app):
                pass

        anyio.run(start_and_stop)
        assert not orphan.exists()
        assert uploaded[1].exists()

    def test_a_failing_sweep_does_not_stop_the_app(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(*_args: Any, **_kwargs: Any) -> None:
            raise OSError("upload dir not readable")

        monkeypatch.setattr(file_service, "sweep_orphans", broken)
        background_tasks.sweep_at_startup(RESOURCES)
        assert "Orphan sweep at startup failed" in caplog.text


class TestCommandLine:
    def run(
        self, directory: Path, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "background_tasks", "sweep", *args],
            cwd=PROJECT_DIR,
            env={
                **os.environ,
                "UPLOAD_DIR": str(directory),
                "LOG_LEVEL": "WARNING",
                **(env or {}),
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def namespace_dir(self, directory: Path) -> Path:
        return directory / storage.database_namespace(get_settings().database_url)

    def test_sweep_removes_orphans_and_prints_them(self, tmp_path: Path) -> None:
        own = self.namespace_dir(tmp_path)
        orphan = make_file(own, orphan_name(), old=True, content=b"1234")
        temp = make_file(own, temp_name(), old=True, content=b"12")
        fresh = make_file(own, orphan_name(), old=False)
        foreign = make_file(own, "keep-me.txt", old=True)
        flat = make_file(tmp_path, orphan_name(), old=True)
        result = self.run(tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"removed orphan {own.name}/{orphan.name}" in result.stdout
        assert f"removed temporary file {temp.name}" in result.stdout
        assert "removed 2 file(s), 6 bytes; kept 1 recent unreferenced file(s)" in result.stdout
        assert not orphan.exists()
        assert not temp.exists()
        assert fresh.exists()
        assert foreign.exists()
        assert flat.exists()

    def test_dry_run_and_min_age(self, tmp_path: Path) -> None:
        fresh = make_file(self.namespace_dir(tmp_path), orphan_name(), old=False)
        result = self.run(tmp_path, "--dry-run", "--min-age-minutes", "0")
        assert result.returncode == 0, result.stderr
        assert f"would remove orphan {fresh.parent.name}/{fresh.name}" in result.stdout
        assert fresh.exists()

    def test_bad_arguments_are_refused(self, tmp_path: Path) -> None:
        result = self.run(tmp_path, "--min-age-minutes", "-1")
        assert result.returncode == 2
        assert "min-age-minutes" in result.stderr

    def test_sweeps_the_bucket_with_the_s3_backend(
        self, tmp_path: Path, s3_server: S3Server
    ) -> None:
        namespace = "cli-" + uuid.uuid4().hex[:8]
        store = s3_storage_for(s3_server, namespace=namespace)
        orphan = put(store, store.new_key(), b"123456")
        env = {**s3_server.environment(TEST_BUCKET), "STORAGE_NAMESPACE": namespace}
        result = self.run(tmp_path, "--min-age-minutes", "0", env=env)
        assert result.returncode == 0, result.stderr
        assert f"removed orphan {orphan}" in result.stdout
        assert "removed 1 file(s), 6 bytes" in result.stdout
        assert not is_stored(store, orphan)
