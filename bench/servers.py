"""Start and stop uvicorn servers the way production runs the API."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from config import Settings

from .options import PROJECT_DIR

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class ServerError(RuntimeError):
    """A server did not start; the message says why in one line."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _env_value(value: Any) -> str | None:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float | Path):
        return str(value)
    return None


def server_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The process environment for a server: every setting pinned, nothing left to chance.

    A developer's .env or shell may change settings (pool size, log level, ...); each simple
    setting is set to its default here unless the bench sets it, so every run serves the
    API with the production defaults.
    """
    env = dict(os.environ)
    for name, info in Settings.model_fields.items():
        key = name.upper()
        if key in overrides:
            continue
        value = _env_value(info.get_default(call_default_factory=True))
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.update(overrides)
    return env


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


class Server:
    """One uvicorn process group serving `app` on a free port of 127.0.0.1."""

    def __init__(
        self,
        name: str,
        app: str,
        workers: int,
        env: dict[str, str],
        log_path: Path,
        directory: Path = PROJECT_DIR,
    ) -> None:
        self.name = name
        self.directory = directory  # the checkout it serves (a baseline's export)
        self.app = app
        self.workers = workers
        self.env = env
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            self.app,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
        ]

    def start(self, ready_path: str) -> None:
        """Start the server and wait until `ready_path` answers 200 (and every worker is up)."""
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            self.command(),
            cwd=self.directory,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C reaches the bench, which stops the whole group.
            start_new_session=True,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with code {self.process.returncode} while starting: "
                    f"{self._log_tail()}"
                )
            if self._answers(ready_path):
                break
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} did not answer {ready_path} within 60 s")
            time.sleep(0.2)
        if self.workers > 1:
            self._wait_for_workers(deadline)

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _children(self) -> int:
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return len(children.read_text().split())
        except OSError:
            return 0

    def _wait_for_workers(self, deadline: float) -> None:
        # The supervisor answers as soon as one worker does; give the others time to import.
        while self._children() < self.workers and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server's processes have used so far.

        Steadier than req/s on a shared machine: a CPU-bound worker's cost per request barely
        moves when another process takes turns on its core.
        """
        assert self.process is not None
        ticks = os.sysconf("SC_CLK_TCK")
        pending, total = [self.process.pid], 0.0
        while pending:
            pid = pending.pop()
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            # utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
            total += (int(fields[11]) + int(fields[12])) / ticks
            pending.extend(int(child) for child in children)
        return total

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=STOP_TIMEOUT_S)
            # Whatever is left of the group (a stuck worker) goes too.
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
