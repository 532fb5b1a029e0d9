"""The orphan sweep: bytes no row points to are removed at startup and from the command line."""

import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, select

import background_tasks
import main
from config import PROJECT_DIR, get_settings
from db_models import TaskFile
from services import files as file_service
from tests.conftest import AuthUser

PDF = b"%PDF-1.7\nswept?\n"
AN_HOUR_AGO = time.time() - 3600


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
    return f"{file_service.TEMP_PREFIX}{uuid.uuid4().hex[:8]}{file_service.TEMP_SUFFIX}"


@pytest.fixture
def uploaded(client: TestClient, alice: AuthUser, db_connection: Connection) -> tuple[int, Path]:
    """A file uploaded through the API, its bytes made old enough to be swept if orphaned."""
    task = client.post("/tasks", json={"title": "Has a file"}, headers=alice.headers).json()
    response = client.post(
        f"/tasks/{task['id']}/files", files={"file": ("kept.pdf", PDF)}, headers=alice.headers
    )
    assert response.status_code == 201, response.text
    file_id: int = response.json()["id"]
    stored = db_connection.scalar(select(TaskFile.stored_filename).where(TaskFile.id == file_id))
    assert stored is not None
    path = upload_dir() / stored
    os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    return file_id, path


class TestSweep:
    def test_removes_old_orphans_and_temp_files_and_nothing_else(
        self, client: TestClient, alice: AuthUser, uploaded: tuple[int, Path]
    ) -> None:
        file_id, referenced = uploaded
        directory = upload_dir()
        old_orphan = make_file(directory, orphan_name(), old=True, content=b"12345")
        old_temp = make_file(directory, temp_name(), old=True, content=b"123")
        fresh_orphan = make_file(directory, orphan_name(), old=False)
        fresh_temp = make_file(directory, temp_name(), old=False)
        # Names the service never generates are never touched, however old.
        foreign = make_file(directory, "README.md", old=True)
        (directory / "subdir").mkdir(exist_ok=True)

        report = background_tasks.sweep_orphaned_files()

        assert old_orphan.name in report.orphans_removed
        assert old_temp.name in report.temp_files_removed
        assert report.bytes_freed >= 8
        assert not old_orphan.exists()
        assert not old_temp.exists()
        for kept in (referenced, fresh_orphan, fresh_temp, foreign):
            assert kept.exists(), kept.name
        assert referenced.name not in report.orphans_removed
        assert report.recent_orphans_kept >= 1
        assert client.get(f"/files/{file_id}", headers=alice.headers).content == PDF

    def test_a_dry_run_reports_but_removes_nothing(self, uploaded: tuple[int, Path]) -> None:
        orphan = make_file(upload_dir(), orphan_name(), old=True)
        report = background_tasks.sweep_orphaned_files(dry_run=True)
        assert orphan.name in report.orphans_removed
        assert orphan.exists()
        assert uploaded[1].name not in report.orphans_removed

    def test_the_age_threshold_is_adjustable(self, uploaded: tuple[int, Path]) -> None:
        fresh = make_file(upload_dir(), orphan_name(), old=False)
        report = background_tasks.sweep_orphaned_files(min_age_seconds=0)
        assert fresh.name in report.orphans_removed
        assert not fresh.exists()
        assert uploaded[1].exists()

    def test_the_report_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        orphan = make_file(upload_dir(), orphan_name(), old=True)
        caplog.set_level(logging.INFO, logger="background_tasks")
        background_tasks.sweep_orphaned_files()
        [record] = [r for r in caplog.records if getattr(r, "event", None) == "orphan_sweep"]
        assert orphan.name in record.orphans_removed  # type: ignore[attr-defined]

    def test_a_missing_upload_dir_is_created(self, tmp_path: Path) -> None:
        directory = tmp_path / "not-yet"
        report = background_tasks.sweep_orphaned_files(upload_dir=directory)
        assert report.removed == 0
        assert directory.is_dir()


class TestStartupSweep:
    def test_runs_when_the_app_starts(self, app: FastAPI, uploaded: tuple[int, Path]) -> None:
        orphan = make_file(upload_dir(), orphan_name(), old=True)

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
        background_tasks.sweep_at_startup(upload_dir())
        assert "Orphan sweep at startup failed" in caplog.text


class TestCommandLine:
    def run(self, directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "UPLOAD_DIR": str(directory), "LOG_LEVEL": "WARNING"}
        return subprocess.run(
            [sys.executable, "-m", "background_tasks", "sweep", *args],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_sweep_removes_orphans_and_prints_them(self, tmp_path: Path) -> None:
        orphan = make_file(tmp_path, orphan_name(), old=True, content=b"1234")
        temp = make_file(tmp_path, temp_name(), old=True, content=b"12")
        fresh = make_file(tmp_path, orphan_name(), old=False)
        foreign = make_file(tmp_path, "keep-me.txt", old=True)
        result = self.run(tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"removed orphan {orphan.name}" in result.stdout
        assert f"removed temporary file {temp.name}" in result.stdout
        assert "removed 2 file(s), 6 bytes; kept 1 recent unreferenced file(s)" in result.stdout
        assert not orphan.exists()
        assert not temp.exists()
        assert fresh.exists()
        assert foreign.exists()

    def test_dry_run_and_min_age(self, tmp_path: Path) -> None:
        fresh = make_file(tmp_path, orphan_name(), old=False)
        result = self.run(tmp_path, "--dry-run", "--min-age-minutes", "0")
        assert result.returncode == 0, result.stderr
        assert f"would remove orphan {fresh.name}" in result.stdout
        assert fresh.exists()

    def test_bad_arguments_are_refused(self, tmp_path: Path) -> None:
        result = self.run(tmp_path, "--min-age-minutes", "-1")
        assert result.returncode == 2
        assert "min-age-minutes" in result.stderr
