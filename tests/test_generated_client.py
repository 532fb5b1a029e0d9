"""A Python client generated from the served OpenAPI document works as generated: no patches.

The generator runs offline on `/openapi.json` as the server serves it; the scenario then goes
over real HTTP to the app served on a loopback port (its writes are rolled back).
"""

import importlib
import io
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.generated_clients import served_openapi_document

PACKAGE = "task_manager_api_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    folder = tmp_path_factory.mktemp("generated-client")
    document = folder / "openapi.json"
    document.write_bytes(served_openapi_document())
    config = folder / "config.yaml"
    config.write_text("post_hooks: []\n")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "openapi_python_client", "generate"),
            *("--path", str(document), "--meta", "none", "--config", str(config)),
            *("--output-path", str(folder / PACKAGE)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    # The generator reports every part of the document it could not turn into code.
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def _module(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def test_every_operation_generates_an_importable_function(generated: ModuleType) -> None:
    root = Path(generated.__file__ or "").parent
    for path in sorted((root / "api").glob("*/*.py")):
        if path.name != "__init__.py":
            module = _module(generated, f"api.{path.parent.name}.{path.stem}")
            assert callable(module.sync_detailed), path


def test_a_generated_client_logs_in_manages_tasks_and_files(
    generated: ModuleType, live_server: str
) -> None:
    api = "api"
    models = _module(generated, "models")
    types = _module(generated, "types")
    name = f"gen{uuid.uuid4().hex[:8]}"
    anonymous = generated.Client(base_url=live_server)

    registered = _module(generated, f"{api}.auth.register").sync_detailed(
        client=anonymous,
        body=models.UserCreate(
            username=name, email=f"{name}@example.com", password="generated pw 1"
        ),
    )
    assert registered.status_code == 201
    assert registered.parsed.username == name

    login = _module(generated, f"{api}.auth.login").sync(
        client=anonymous, body=models.LoginLoginRequest(username=name, password="generated pw 1")
    )
    assert isinstance(login, models.Token)
    client = generated.AuthenticatedClient(base_url=live_server, token=login.access_token)

    tasks = f"{api}.tasks"
    created = _module(generated, f"{tasks}.create_task").sync_detailed(
        client=client,
        body=models.TaskCreate(title="Write the report", priority=models.Priority.HIGH),
    )
    assert created.status_code == 201
    task = created.parsed
    assert task.tags == []
    assert created.headers["Location"] == f"/tasks/{task.id}"

    updated = _module(generated, f"{tasks}.update_task").sync(
        task.id, client=client, body=models.TaskUpdate(completed=True, tags=["work"])
    )
    assert isinstance(updated, models.TaskRead)
    assert updated.completed is True
    assert updated.tags == ["work"]

    listed = _module(generated, f"{tasks}.list_tasks").sync_detailed(
        client=client, tag=["work"], limit=10
    )
    assert listed.status_code == 200
    assert [item.id for item in listed.parsed] == [task.id]
    assert listed.headers["X-Total-Count"] == "1"

    files = f"{api}.files"
    uploaded = _module(generated, f"{files}.upload_file").sync_detailed(
        task.id,
        client=client,
        body=models.UploadFileBody(
            file=types.File(payload=io.BytesIO(b"hello, world\n"), file_name="notes.txt")
        ),
    )
    assert uploaded.status_code == 201, uploaded.content
    file_id = uploaded.parsed.id
    downloaded = _module(generated, f"{files}.download_file").sync_detailed(file_id, client=client)
    assert downloaded.status_code == 200
    assert downloaded.parsed.payload.read() == b"hello, world\n"
    assert downloaded.headers["Content-Disposition"].startswith("attachment;")

    missing = _module(generated, f"{tasks}.get_task").sync_detailed(task.id + 1000, client=client)
    assert missing.status_code == 404
    assert isinstance(missing.parsed, models.Problem)
    assert missing.parsed.code == "task_not_found"

    deleted = _module(generated, f"{tasks}.delete_task").sync_detailed(task.id, client=client)
    assert deleted.status_code == 204
    gone = _module(generated, f"{tasks}.get_task").sync_detailed(task.id, client=client)
    assert gone.status_code == 404


def test_a_public_operation_works_with_an_anonymous_client(
    generated: ModuleType, live_server: str
) -> None:
    ready = _module(generated, "api.operations.readiness").sync_detailed(
        client=generated.Client(base_url=live_server)
    )
    assert ready.status_code == 200
    assert ready.parsed.status.value in ("ok", "degraded")
