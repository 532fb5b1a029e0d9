"""Small vocabularies shared by the database models and the API schemas."""

from enum import StrEnum


class Priority(StrEnum):
    """Task priority; declaration order is the rank (low < medium < high)."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    @classmethod
    def from_rank(cls, rank: int) -> "Priority":
        return _BY_RANK[rank]


_RANKS = {priority: rank for rank, priority in enumerate(Priority, start=1)}
_BY_RANK = {rank: priority for priority, rank in _RANKS.items()}


class Scope(StrEnum):
    """What a personal access token may do; a write scope implies its read scope."""

    TASKS_READ = "tasks:read"
    TASKS_WRITE = "tasks:write"
    FILES_READ = "files:read"
    FILES_WRITE = "files:write"

    @property
    def implied(self) -> frozenset["Scope"]:
        """This scope and every scope it implies."""
        return _IMPLIED.get(self, frozenset({self}))


_IMPLIED = {
    Scope.TASKS_WRITE: frozenset({Scope.TASKS_WRITE, Scope.TASKS_READ}),
    Scope.FILES_WRITE: frozenset({Scope.FILES_WRITE, Scope.FILES_READ}),
}
