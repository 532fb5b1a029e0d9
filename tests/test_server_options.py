"""The uvicorn command lines of `make run` and `make serve`: proxy headers trusted only when
FORWARDED_ALLOW_IPS names the proxies, keep-alive and connection limits from the settings.

Each script runs for real in a copy of the project (so it reads that copy's .env and never
touches the checkout's) with DRY_RUN=1, which prints the uvicorn command line instead of
migrating and serving. That command line is parsed by uvicorn's own command-line interface, and
the app is then served with exactly the resulting options to check what a client sees.
"""

import importlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from config import PROJECT_DIR, Settings
from main import create_app
from rate_limit_config import RateLimiter
from tests.conftest import RESOURCES
from tests.served_app import serving

# The module: the package's `uvicorn.main` attribute is the command itself.
uvicorn_main = importlib.import_module("uvicorn.main")
BASH = shutil.which("bash") or "/bin/bash"

# Options of a served process that a server in a test thread must choose for itself.
LOCK_FILES = ("requirements.lock", "requirements-dev.lock")
_PROCESS_OPTIONS = {
    *("app", "app_dir", "host", "port", "uds", "fd", "workers", "env_file", "log_config"),
    *("reload", "reload_dirs", "reload_includes", "reload_excludes", "reload_delay", "loop"),
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what the scripts need, with its own (absent) .env; the venv is shared."""
    shutil.copytree(PROJECT_DIR / "scripts", tmp_path / "scripts")
    for name in ("config.py", "requirements.txt", "requirements-dev.txt", *LOCK_FILES):
        shutil.copy2(PROJECT_DIR / name, tmp_path / name)
    return tmp_path


def run_script(project: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run scripts/<script> in the copy with DRY_RUN=1 and only the given settings set."""
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(project),
        "VENV": sys.prefix,
        "DRY_RUN": "1",
        **env,
    }
    return subprocess.run(
        [BASH, f"scripts/{script}"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def dry_run(project: Path, script: str, **env: str) -> list[str]:
    """The uvicorn arguments the script would run, read from its DRY_RUN=1 output."""
    result = run_script(project, script, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    argv = shlex.split(result.stdout.strip().splitlines()[-1])
    assert argv[0] == f"{sys.prefix}/bin/uvicorn"
    assert argv[1] == "main:app"
    return argv[1:]


def uvicorn_config(args: list[str], app: FastAPI) -> uvicorn.Config:
    """The configuration uvicorn builds from these command-line arguments, serving `app`."""
    captured: dict[str, Any] = {}

    def run(app_name: str, **options: Any) -> None:
        captured.update(options, app=app_name)

    with mock.patch.object(uvicorn_main, "run", run):
        uvicorn_main.main.main(args=args, standalone_mode=False)
    assert captured["app"] == "main:app"
    options = {name: value for name, value in captured.items() if name not in _PROCESS_OPTIONS}
    return uvicorn.Config(app, log_config=None, loop="asyncio", **options)


def login_limited_app() -> FastAPI:
    """One login per minute per client address."""
    settings = Settings(rate_limit_enabled=True, rate_limit_login="1/minute")
    app = create_app(settings, resources=RESOURCES)
    app.state.limiter = RateLimiter(settings, key_prefix=f"test-{uuid.uuid4().hex}")
    return app


def login_status(base_url: str, forwarded_for: str) -> int:
    with httpx.Client(base_url=base_url) as client:
        response = client.post(
            "/auth/login",
            json={"username": "nobody", "password": "wrong password!"},
            headers={"X-Forwarded-For": forwarded_for},
        )
    return response.status_code


SCRIPTS = pytest.mark.parametrize("script", ["run.sh", "serve.sh"])
SECRET = {"SECRET_KEY": "k" + uuid.uuid4().hex + uuid.uuid4().hex}


# --- item: proxy headers --------------------------------------------------------------------


@SCRIPTS
def test_no_proxy_header_is_trusted_by_default(project: Path, script: str) -> None:
    # `make run` writes its own .env with a fresh key; `make serve` needs the key given.
    args = dry_run(project, script, **({} if script == "run.sh" else SECRET))
    if script == "run.sh":
        assert (project / ".env").read_text().count("SECRET_KEY=") == 1
    assert "--no-proxy-headers" in args
    assert "--forwarded-allow-ips" not in args
    config = uvicorn_config(args, login_limited_app())
    assert config.proxy_headers is False
    with serving(config) as base_url:
        assert login_status(base_url, "203.0.113.1") == 401
        # A local client naming another address is still the same client: no fresh budget.
        assert login_status(base_url, "203.0.113.2") == 429


@pytest.mark.parametrize(("script", "where"), [("run.sh", ".env"), ("serve.sh", "environment")])
def test_forwarded_allow_ips_is_honoured(project: Path, script: str, where: str) -> None:
    if where == ".env":
        (project / ".env").write_text(
            f"SECRET_KEY={SECRET['SECRET_KEY']}\nFORWARDED_ALLOW_IPS=127.0.0.1\n"
        )
        args = dry_run(project, script)
    else:
        args = dry_run(project, script, **SECRET, FORWARDED_ALLOW_IPS="127.0.0.1")
    config = uvicorn_config(args, login_limited_app())
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == "127.0.0.1"
    with serving(config) as base_url:
        # Behind the trusted proxy, each forwarded client has its own budget.
        assert login_status(base_url, "203.0.113.1") == 401
        assert login_status(base_url, "203.0.113.2") == 401
        assert login_status(base_url, "203.0.113.1") == 429


# --- item: connection limits ----------------------------------------------------------------


@SCRIPTS
def test_keep_alive_and_concurrency_limits_have_defaults(project: Path, script: str) -> None:
    config = uvicorn_config(dry_run(project, script, **SECRET), create_app(resources=RESOURCES))
    assert config.timeout_keep_alive == 5
    assert config.limit_concurrency == 1000


def _get(sock: socket.socket, extra_headers: bytes = b"") -> bytes:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n" + extra_headers + b"\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_make_serve_applies_the_configured_connection_limits(project: Path) -> None:
    args = dry_run(
        project, "serve.sh", **SECRET, KEEP_ALIVE_SECONDS="1", MAX_CONNECTIONS_PER_WORKER="3"
    )
    assert args[args.index("--timeout-keep-alive") + 1] == "1"
    assert args[args.index("--limit-concurrency") + 1] == "3"
    config = uvicorn_config(args, create_app(resources=RESOURCES))
    with serving(config) as base_url:
        address = ("127.0.0.1", int(base_url.rsplit(":", 1)[1]))
        with socket.create_connection(address, timeout=30) as sock:
            assert _get(sock).startswith(b"HTTP/1.1 200 ")
            # An idle kept-alive connection is closed by the server, not held open.
            assert sock.recv(1) == b""
        with (
            socket.create_connection(address, timeout=30) as first,
            socket.create_connection(address, timeout=30) as second,
        ):
            # Two connections that never finish their request, then a third client.
            for blocker in (first, second):
                blocker.sendall(b"GET /health HTTP/1.1\r\n")
            with socket.create_connection(address, timeout=30) as third:
                assert _get(third).startswith(b"HTTP/1.1 503 ")


def test_make_run_applies_the_same_connection_limits(project: Path) -> None:
    args = dry_run(project, "run.sh", KEEP_ALIVE_SECONDS="7", MAX_CONNECTIONS_PER_WORKER="50")
    config = uvicorn_config(args, create_app(resources=RESOURCES))
    assert config.timeout_keep_alive == 7
    assert config.limit_concurrency == 50


def test_invalid_settings_stop_the_script_with_the_reason(project: Path) -> None:
    result = run_script(project, "serve.sh", **SECRET, MAX_CONNECTIONS_PER_WORKER="none")
    assert result.returncode != 0
    assert "max_connections_per_worker" in result.stderr
    assert "settings are invalid" in result.stderr
