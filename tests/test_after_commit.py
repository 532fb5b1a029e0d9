"""`db_config.after_commit` / `after_rollback`: work tied to how the outermost transaction ends."""

import hashlib
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

import db_config
import storage
from db_models import Task, User
from services import files as file_service
from tests.conftest import RESOURCES
from uploads import ReceivedUpload


def add_user(session: Session, name: str) -> None:
    session.add(User(username=name, email=f"{name}@example.com", hashed_password="x"))
    session.flush()


def _commit_noted(session: Session, name: str, calls: list[str]) -> None:
    """Add a user; note `name` in `calls` once that addition commits."""
    add_user(session, name)
    db_config.after_commit(session, partial(calls.append, name))


def user_exists(name: str) -> bool:
    with RESOURCES.sessions() as other:
        return other.scalar(select(User.id).where(User.username == name)) is not None


class TestAfterCommit:
    def test_runs_once_after_the_commit_and_not_before(self) -> None:
        calls: list[bool] = []
        with RESOURCES.sessions() as session:
            add_user(session, "committed")
            db_config.after_commit(session, lambda: calls.append(user_exists("committed")))
            session.flush()
            assert calls == []
            session.commit()
            assert calls == [True]
            session.commit()
        assert calls == [True]

    def test_never_runs_after_a_rollback(self) -> None:
        calls: list[str] = []
        with RESOURCES.sessions() as session:
            _commit_noted(session, "rolled", calls)
            session.rollback()
            add_user(session, "next")
            session.commit()
        assert calls == []

    def test_never_runs_when_the_session_closes_without_committing(self) -> None:
        calls: list[str] = []
        with RESOURCES.sessions() as session:
            _commit_noted(session, "abandoned", calls)
        assert calls == []

    @pytest.mark.parametrize(
        ("register", "at_savepoint_rollback", "at_the_end"),
        [
            pytest.param(db_config.after_commit, [], ["outer"], id="after_commit"),
            pytest.param(db_config.after_rollback, ["inner"], ["inner"], id="after_rollback"),
        ],
    )
    def test_a_rolled_back_savepoint_settles_only_its_own(
        self,
        register: Callable[[Session, Callable[[], object]], None],
        at_savepoint_rollback: list[str],
        at_the_end: list[str],
    ) -> None:
        calls: list[str] = []
        with RESOURCES.sessions() as session:
            add_user(session, "outer")
            register(session, lambda: calls.append("outer"))
            savepoint = session.begin_nested()
            add_user(session, "inner")
            register(session, lambda: calls.append("inner"))
            savepoint.rollback()
            assert calls == at_savepoint_rollback
            session.commit()
        assert calls == at_the_end

    def test_a_released_savepoint_waits_for_the_outermost_commit(self) -> None:
        calls: list[str] = []
        with RESOURCES.sessions() as session:
            with session.begin_nested():
                _commit_noted(session, "inner", calls)
            assert calls == []
            session.commit()
        assert calls == ["inner"]

    def test_a_released_savepoint_is_dropped_when_the_outer_transaction_rolls_back(
        self,
    ) -> None:
        calls: list[str] = []
        with RESOURCES.sessions() as session:
            add_user(session, "outer")
            with session.begin_nested():
                with session.begin_nested():
                    _commit_noted(session, "deepest", calls)
                db_config.after_commit(session, lambda: calls.append("middle"))
            session.rollback()
            session.commit()
        assert calls == []

    def test_order_is_kept_and_a_failing_callback_costs_no_other(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        calls: list[str] = []

        def broken() -> None:
            raise RuntimeError("boom")

        with RESOURCES.sessions() as session:
            add_user(session, "ordered")
            db_config.after_commit(session, lambda: calls.append("first"))
            db_config.after_commit(session, broken)
            with session.begin_nested():
                db_config.after_commit(session, lambda: calls.append("nested"))
            db_config.after_commit(session, lambda: calls.append("last"))
            session.commit()
        assert calls == ["first", "nested", "last"]
        assert user_exists("ordered")
        [record] = [r for r in caplog.records if r.name == "db_config"]
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None

    def test_each_transaction_of_a_session_has_its_own(self) -> None:
        calls: list[str] = []
        with RESOURCES.sessions() as session:
            _commit_noted(session, "first", calls)
            session.commit()
            _commit_noted(session, "second", calls)
            session.rollback()
            session.commit()
        assert calls == ["first"]


def _undo_noted(session: Session, name: str, calls: list[str]) -> None:
    """Add a user; note `name` in `calls` if that addition never commits."""
    add_user(session, name)
    db_config.after_rollback(session, partial(calls.append, name))


class TestAfterRollback:
    def test_runs_once_the_work_is_undone_and_never_after_a_commit(self) -> None:
        calls: list[str] = []
        with RESOURCES.sessions() as committed:
            _undo_noted(committed, "committed", calls)
            committed.commit()
        # Undone by a rollback, then by a close without a commit.
        for ending in ("rollback", "close"):
            with RESOURCES.sessions() as session:
                _undo_noted(session, ending, calls)
                if ending == "rollback":
                    session.rollback()
                    assert calls == ["rollback"]
        assert calls == ["rollback", "close"]

    def test_a_released_savepoint_runs_when_the_outer_transaction_rolls_back(self) -> None:
        calls: list[str] = []
        with RESOURCES.sessions() as session:
            add_user(session, "outer")
            with session.begin_nested():
                _undo_noted(session, "inner", calls)
            assert calls == []
            session.rollback()
        assert calls == ["inner"]


def _received(tmp_path: Path, data: bytes) -> ReceivedUpload:
    temp = tmp_path / "received.txt"
    temp.write_bytes(data)
    return ReceivedUpload(
        temp_path=temp,
        original_filename="notes.txt",
        content_type="text/plain",
        file_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


class TestUploadedBytes:
    """The bytes of an upload follow its row: they stay exactly when the row commits."""

    def _attach_in_released_savepoint(self, session: Session, store: storage.Storage) -> str:
        user = User(username="uploader", email="uploader@example.com", hashed_password="x")
        session.add(user)
        session.flush()
        task = Task(user_id=user.id, title="with a file")
        session.add(task)
        session.flush()
        upload = _received(store.temp_dir, b"some notes")
        with session.begin_nested():
            row = file_service.attach_file(
                session,
                owner_id=user.id,
                task_id=task.id,
                upload=upload,
                storage=store,
                max_files=5,
            )
        upload.discard()
        return row.stored_filename

    def test_a_released_savepoint_then_a_rollback_leaves_no_bytes(self, tmp_path: Path) -> None:
        store = storage.LocalStorage(namespace="probe", upload_dir=tmp_path)
        store.temp_dir.mkdir(parents=True, exist_ok=True)
        with RESOURCES.sessions() as session:
            key = self._attach_in_released_savepoint(session, store)
            assert store.path_of(key).exists()
            session.rollback()
        assert not store.path_of(key).exists()
        assert list(store.list_own()) == []

    def test_a_commit_keeps_the_bytes(self, tmp_path: Path) -> None:
        store = storage.LocalStorage(namespace="probe", upload_dir=tmp_path)
        store.temp_dir.mkdir(parents=True, exist_ok=True)
        with RESOURCES.sessions() as session:
            key = self._attach_in_released_savepoint(session, store)
            session.commit()
        assert store.path_of(key).read_bytes() == b"some notes"
