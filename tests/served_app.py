"""The API served by its own uvicorn process on a free loopback port, as `make run` serves it.

For tests that need real concurrency: many client threads against one server process that has
its own connection pool (the in-process `live_server` fixture shares the test's one connection).
What it commits is committed for real: tests clean up after themselves.
"""

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from config import PROJECT_DIR


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Terminate a process this test started; kill it if it is still there after `timeout`."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@contextmanager
def serving(config: uvicorn.Config, what: str = "server") -> Iterator[str]:
    """Serve on a free loopback port in this process; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            pytest.fail(f"the {what} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass(frozen=True)
class ServedApp:
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def app_environment(database_url: str, directory: Path, **extra: str) -> dict[str, str]:
    """Every setting a served test instance reads, so no developer's .env changes it."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": "",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "BCRYPT_ROUNDS": "4",
        "RATE_LIMIT_ENABLED": "false",
        "UPLOAD_DIR": str(directory / "uploads"),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "text",
        "LOG_FILE": "",
        "NOTIFIER": "log",
        "CORS_ORIGINS": "",
        **extra,
    }


def run_module(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` in the project folder, as the Makefile runs the service's commands;
    fails the test (with the command's stderr) unless it exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def migrate(env: dict[str, str]) -> None:
    """`alembic upgrade head` on the instance's database, as `make run` does before serving."""
    run_module("alembic", "upgrade", "head", env=env)


@contextmanager
def served_app(env: dict[str, str], directory: Path) -> Iterator[ServedApp]:
    """Start `uvicorn main:app` with these settings; yield once it answers, stop it after."""
    port = free_port()
    log_path = directory / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "uvicorn", "main:app",
                "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
            ],
            cwd=PROJECT_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    served = ServedApp(url=f"http://127.0.0.1:{port}", log_path=log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the server exited:\n{served.log()}"
            try:
                if httpx.get(f"{served.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the server did not start:\n{served.log()}"
            time.sleep(0.1)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
