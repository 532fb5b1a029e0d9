"""Facts about the machine and software a run measured, printed with its figures."""

import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from .options import PROJECT_DIR

PACKAGES = (
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "sqlalchemy",
    "psycopg2-binary",
    "pydantic",
    "redis",
    "bcrypt",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _command_output(*command: str) -> str:
    try:
        completed = subprocess.run(  # noqa: S603 (fixed tool names, no shell)
            command, capture_output=True, text=True, timeout=10, check=False, cwd=PROJECT_DIR
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return (completed.stdout or completed.stderr).strip()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def facts(*, postgres: str, redis: str) -> dict[str, str]:
    """Cores, memory, versions, date and load: what the figures depend on."""
    wrk = _command_output("wrk", "--version").splitlines()
    commit = _command_output("git", "rev-parse", "--short", "HEAD")
    if commit and _command_output("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " (with uncommitted changes)"
    load = os.getloadavg()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {_cpu_model()}",
        "memory": f"{_memory_gib():.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": postgres,
        "redis": redis,
        "wrk": wrk[0].split("[")[0].strip() if wrk else "-",
        "packages": ", ".join(f"{name} {_version(name)}" for name in PACKAGES),
        "commit": commit or "-",
        "load_at_start": " ".join(f"{value:.2f}" for value in load) + " (1, 5, 15 min)",
    }
