"""A TypeScript client generated from the served OpenAPI document works as generated: no casts.

openapi-typescript turns `/openapi.json` into `tests/ts_client/schema.ts` through its Node API
(`generate.mjs`, which types `format: binary` as `Blob`, not `string`); `tsc --strict` checks
`scenario.ts`, which calls the API through openapi-fetch with those types only (no `as`, no
`any`); node then runs the compiled scenario over real HTTP against the app served on a loopback
port (its writes are rolled back). The node packages are those of `package-lock.json`, installed
with `npm ci` into `tests/ts_client/node_modules` once per lock.
"""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

from tests.generated_clients import served_openapi_document

PROJECT = Path(__file__).parent / "ts_client"
# Written after a successful `npm ci` (which empties node_modules first): the lock it installed.
INSTALLED = PROJECT / "node_modules" / ".installed-from-lock"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; CI must run the TypeScript client test")
    pytest.skip(reason)


def _run(*command: str, timeout: float = 180) -> str:
    """Run a command in the TypeScript project; fail the test unless it exits 0. Its output."""
    result = subprocess.run(
        command, cwd=PROJECT, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{output}"
    return output


def _install(npm: str) -> None:
    """`npm ci` from the lock, unless node_modules already holds this very lock."""
    lock = hashlib.sha256(
        (PROJECT / "package.json").read_bytes() + (PROJECT / "package-lock.json").read_bytes()
    ).hexdigest()
    if INSTALLED.is_file() and INSTALLED.read_text() == lock:
        return
    _run(npm, "ci", "--no-audit", "--no-fund", timeout=300)
    INSTALLED.write_text(lock)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scenario compiled against types generated from the served document."""
    node, npm, npx = (shutil.which(tool) for tool in ("node", "npm", "npx"))
    if not (node and npm and npx):
        _unavailable("node and npm are not installed (needed for the TypeScript client)")
    _install(npm)
    document = tmp_path_factory.mktemp("ts-client") / "openapi.json"
    document.write_bytes(served_openapi_document())
    # openapi-typescript's Node API with its `transform` option: `format: binary` is a `Blob`.
    generated = _run(node, "generate.mjs", str(document), "schema.ts")
    # The generator reports every part of the document it could not turn into types.
    assert "warn" not in generated.lower(), generated
    assert "Blob" in (PROJECT / "schema.ts").read_text(), "format: binary not typed as Blob"
    # Strictly typed as generated: any error (a cast would be needed) fails the test.
    assert _run(npx, "--no-install", "tsc", "-p", ".", "--strict", "--noEmit") == ""
    _run(npx, "--no-install", "tsc", "-p", ".", "--noCheck")  # checked just above
    return PROJECT / "dist" / "scenario.js"


def test_a_generated_typescript_client_logs_in_manages_tasks_and_files(
    scenario: Path, live_server: str
) -> None:
    node = shutil.which("node") or "node"
    assert _run(node, str(scenario), live_server, timeout=60).strip() == "scenario: ok"
