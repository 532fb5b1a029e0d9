"""Run wrk with one of the Lua scripts and read the line its done() hook prints."""

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .options import LUA_DIR

RESULT_PREFIX = "BENCH_RESULT "


class WrkError(RuntimeError):
    """wrk is missing or printed no result line."""


@dataclass
class RunResult:
    """One wrk run. Latencies in milliseconds."""

    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    cache: dict[str, int] = field(default_factory=dict)
    output: str = ""
    # The status every answer should have; None: any 2xx.
    expected_status: str | None = None
    # CPU seconds the server used during the run (bench/servers.py), when measured.
    server_cpu_s: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU microseconds per request (0 when not measured)."""
        if not self.server_cpu_s or not self.requests:
            return 0.0
        return self.server_cpu_s * 1e6 / self.requests

    @property
    def unexpected(self) -> dict[str, int]:
        """Responses by status that are not what the scenario expects (2xx unless it says)."""
        if self.expected_status is not None:
            return {code: n for code, n in self.statuses.items() if code != self.expected_status}
        return {code: n for code, n in self.statuses.items() if not code.startswith("2")}

    @property
    def errors(self) -> int:
        """Unexpected responses plus connect/read/write errors and timeouts."""
        return sum(self.unexpected.values()) + sum(
            n for kind, n in self.socket_errors.items() if kind != "status"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "statuses": self.statuses,
            "socket_errors": self.socket_errors,
            "errors": self.errors,
            "cache": self.cache,
            "server_cpu_s": self.server_cpu_s,
            "cpu_us_per_request": round(self.cpu_us_per_request, 1),
        }


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkError("wrk is not installed (Debian package wrk; `make bench` installs it)")
    return path


def parse(output: str) -> RunResult:
    """The result line of our done() hook, from wrk's stdout."""
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            raw = json.loads(line.removeprefix(RESULT_PREFIX))
            latency = raw["latency_us"]
            return RunResult(
                requests=int(raw["requests"]),
                duration_s=raw["duration_us"] / 1e6,
                p50_ms=latency["p50"] / 1000,
                p90_ms=latency["p90"] / 1000,
                p99_ms=latency["p99"] / 1000,
                max_ms=latency["max"] / 1000,
                statuses={str(k): int(v) for k, v in raw["statuses"].items()},
                socket_errors={str(k): int(v) for k, v in raw["errors"].items()},
                cache={str(k): int(v) for k, v in raw["cache"].items()},
                output=output,
            )
    raise WrkError("wrk printed no BENCH_RESULT line: " + " | ".join(output.splitlines()[-3:]))


def run(
    url: str,
    script: str,
    args: list[str],
    *,
    duration_s: int,
    threads: int,
    connections: int,
    timeout_s: int,
    expected_status: str | None = None,
) -> RunResult:
    """Drive `url` with bench/lua/<script> for duration_s seconds."""
    command = [
        wrk_path(),
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={duration_s}s",
        f"--timeout={timeout_s}s",
        f"--script={Path(LUA_DIR, script)}",
        url,
        "--",
        *args,
    ]
    completed = subprocess.run(  # noqa: S603 (wrk from PATH with our own arguments)
        command,
        capture_output=True,
        text=True,
        timeout=duration_s + timeout_s + 60,
        check=False,
    )
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        raise WrkError(f"wrk exited with code {completed.returncode}: {output.strip()[-300:]}")
    result = parse(output)
    result.expected_status = expected_status
    return result
