"""What a bench run does, read from the environment (the Makefile passes its variables on)."""

import os
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
LUA_DIR = BENCH_DIR / "lua"
RESULTS_DIR = BENCH_DIR / "results"

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/taskmanager_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
DEFAULT_BASELINE_REDIS_URL = "redis://127.0.0.1:6379/13"

FULL_SCALE_SIZES = (1_000, 10_000, 100_000)
QUICK_SCALE_SIZES = (1_000, 10_000)


class OptionsError(ValueError):
    """A bench variable has a value the bench cannot use."""


def _int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise OptionsError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise OptionsError(f"{name}={value} is outside {low}..{high}")
    return value


def _sizes(default: tuple[int, ...]) -> tuple[int, ...]:
    raw = os.environ.get("BENCH_SCALE", "").strip()
    if not raw:
        return default
    try:
        sizes = tuple(sorted({int(part) for part in raw.split(",") if part.strip()}))
    except ValueError:
        raise OptionsError(f"BENCH_SCALE={raw!r} is not a comma-separated list of sizes") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > 1_000_000:
        raise OptionsError(f"BENCH_SCALE={raw!r}: sizes must be 1..1000000")
    return sizes


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Options:
    quick: bool
    database_url: str
    redis_url: str
    duration_s: int
    repeats: int
    warmup_s: int
    scale_sizes: tuple[int, ...]
    only: frozenset[str]
    # A git revision served beside today's API (BENCH_BASELINE), and the Redis db it uses.
    baseline: str | None = None
    baseline_redis_url: str = DEFAULT_BASELINE_REDIS_URL
    threads: int = 2
    connections: int = 16
    # bcrypt-bound routes: ~10 req/s on two cores; 16 connections would only queue.
    bcrypt_connections: int = 4
    timeout_s: int = 10
    main_users: int = 16
    tasks_per_user: int = 250

    def wants(self, scenario: str) -> bool:
        """Whether BENCH_ONLY (empty: everything) selects this scenario."""
        return not self.only or scenario in self.only or scenario.split("@")[0] in self.only


def from_environment() -> Options:
    """Read QUICK and the BENCH_* variables."""
    quick = _truthy("QUICK")
    only = frozenset(
        part.strip() for part in os.environ.get("BENCH_ONLY", "").split(",") if part.strip()
    )
    return Options(
        quick=quick,
        database_url=os.environ.get("BENCH_DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL,
        redis_url=os.environ.get("BENCH_REDIS_URL", "").strip() or DEFAULT_REDIS_URL,
        duration_s=_int("BENCH_DURATION", 2 if quick else 10, 1, 600),
        repeats=_int("BENCH_REPEATS", 2 if quick else 3, 1, 50),
        warmup_s=_int("BENCH_WARMUP", 1 if quick else 2, 0, 60),
        scale_sizes=_sizes(QUICK_SCALE_SIZES if quick else FULL_SCALE_SIZES),
        only=only,
        baseline=os.environ.get("BENCH_BASELINE", "").strip() or None,
        baseline_redis_url=os.environ.get("BENCH_BASELINE_REDIS_URL", "").strip()
        or DEFAULT_BASELINE_REDIS_URL,
    )
