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
