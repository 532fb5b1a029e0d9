"""On SQLite, writers take turns from their BEGIN and readers never wait for them."""

import threading
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

import db_config
from config import Settings


def test_writers_take_turns_and_readers_never_wait(tmp_path: Path) -> None:
    engine = db_config.build_engine(Settings(database_url=f"sqlite:///{tmp_path / 'w.db'}"))
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE counter (n INTEGER)"))
        sessions = sessionmaker(bind=engine)
        events: list[object] = []
        errors: list[BaseException] = []

        first = db_config.for_writing(sessions())
        first.execute(text("SELECT count(*) FROM counter"))  # its transaction has begun

        def second_writer() -> None:
            try:
                with db_config.for_writing(sessions()) as second:
                    # Reads, then writes: what failed with SQLITE_BUSY_SNAPSHOT once another
                    # connection had committed in between.
                    seen = second.execute(text("SELECT count(*) FROM counter")).scalar()
                    events.append(("second saw", seen))
                    second.execute(text("INSERT INTO counter VALUES (2)"))
                    second.commit()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=second_writer)
        thread.start()
        with sessions() as reader:
            assert reader.execute(text("SELECT count(*) FROM counter")).scalar() == 0
        events.append("reader done while the first writer holds its turn")
        first.execute(text("INSERT INTO counter VALUES (1)"))
        events.append("first commits")
        first.commit()
        first.close()
        thread.join(timeout=60)

        assert errors == []
        assert events == [
            "reader done while the first writer holds its turn",
            "first commits",
            ("second saw", 1),
        ]
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM counter")).scalar() == 2
    finally:
        engine.dispose()
