"""The per-user change counter behind the weak ETags of GET /tasks and GET /tasks/stats.

The database raises it: triggers on `tasks` (migration 0007) raise the owner's counter within
every statement that inserts, updates or deletes their tasks, so it commits with the change and
a reader never sees a counter older than the rows it then reads. Tag writes always update their
task's row, so they raise it too. The counter is the last lock such a statement takes, after
its task rows, which keeps one lock order everywhere.
"""

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from db_models import UserChangeCounter

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
