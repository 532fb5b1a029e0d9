"""The per-user change counter behind the weak ETags of GET /tasks and GET /tasks/stats.

Every write that changes a user's tasks or tags raises the counter in its own transaction, so
the counter a reader sees is never older than the rows it then reads. The row is written last
in each transaction (after the task rows are locked), which keeps one lock order everywhere.
"""

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db_models import UserChangeCounter


def record_change(session: Session, *, owner_id: int) -> None:
    """Raise the owner's change counter (creating it at 1) in the current transaction."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(UserChangeCounter).values(user_id=owner_id, counter=1)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[UserChangeCounter.user_id],
            set_={"counter": UserChangeCounter.counter + 1},
        )
    )


# Read through the table's columns: a Core statement, without the ORM's compile steps.
_COUNTER = UserChangeCounter.__table__.c


def current_counter(session: Session, *, owner_id: int) -> int:
    """The owner's change counter: 0 before their first change."""
    counter = session.scalar(select(_COUNTER.counter).where(_COUNTER.user_id == owner_id))
    return counter or 0


def counter_column(owner_id: int) -> ColumnElement[int]:
    """The owner's change counter as a column, to read it with another query's round trip."""
    counter = select(_COUNTER.counter).where(_COUNTER.user_id == owner_id).scalar_subquery()
    return func.coalesce(counter, 0)
