"""Helpers for tests that run the service as real processes: an SMTP gate, process control."""

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession

from config import PROJECT_DIR
from tests.mail_helpers import Inbox, smtp_server
from tests.served_app import free_port, run_module, stop_process

WAIT_SECONDS = 90


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


class GatedInbox(Inbox):
    """An inbox that, while `hold` is set, keeps each sender waiting at RCPT TO."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.hold = threading.Event()
        self.held = threading.Event()

    async def handle_RCPT(
        self,
        _server: SMTP,
        _session: SmtpSession,
        envelope: Envelope,
        address: str,
        _rcpt_options: list[str],
    ) -> str:
        if self.hold.is_set():
            self.held.set()
            while self.hold.is_set():
                await asyncio.sleep(0.02)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def to(self, address: str) -> list[Any]:
        return [m for m in self.messages if m["To"] == address]


@contextmanager
def gated_inbox() -> Iterator[GatedInbox]:
    """A `GatedInbox` served on a free local port until the block ends, letting go of any
    sender it still holds then."""
    handler = GatedInbox(free_port())
    with smtp_server(handler, handler.port):
        try:
            yield handler
        finally:
            handler.hold.clear()


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """SIGKILL the process (and anything it started): no cleanup of any kind runs."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def spawn(name: str, args: list[str], *, env: dict[str, str], log_dir: Path) -> Process:
    """Start `python <args>` in the project folder, in a process group of its own."""
    log = log_dir / f"{name}-{len(list(log_dir.iterdir()))}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, *args],
            cwd=PROJECT_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Process(name, popen, log)


def serve_api(name: str, port: int, *, env: dict[str, str], log_dir: Path) -> Process:
    """One API instance (uvicorn, as `make run` starts it), once it answers /health."""
    args = ["-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)]
    process = spawn(name, [*args, "--no-access-log"], env=env, log_dir=log_dir)

    def up() -> bool:
        assert process.popen.poll() is None, process.log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, f"API {name} to start")
    return process


def alembic(database_url: str, *args: str) -> None:
    """Run alembic on a database (`upgrade head`, `downgrade base`, ...); fails unless it succeeds."""
    run_module("alembic", *args, env={**os.environ, "DATABASE_URL": database_url})


def migrate(database_url: str) -> None:
    """Build a database's schema with the migrations, as `make run` and `make serve` do."""
    alembic(database_url, "upgrade", "head")


# --- a Redis server of a test's own -------------------------------------------------------

REDIS_SERVER = shutil.which("redis-server")
needs_redis_server = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed")


class RedisServer:
    """A throwaway redis-server this test owns: start, stop, freeze and thaw it at will."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        # The binary found on PATH, with fixed arguments: nothing here comes from input.
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        with redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2) as probe:
            while True:
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.frozen:
            self.thaw()
        stop_process(self.process, timeout=5)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False
