"""File attachments: upload, list, download, delete, and the stored bytes behind them.

Every test here runs on each storage backend: the local disk and a real S3-compatible server.
"""

import hashlib
import io
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, event, select
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

import storage
from config import Settings, get_settings
from db_models import TaskFile
from dependencies import get_app_settings
from exceptions import AppError, FileTooLargeError
from services import files as file_service
from tests.conftest import RESOURCES, AuthUser
from tests.problem_helpers import assert_problem
from tests.task_helpers import create_task
from uploads import DOCX_CONTENT_TYPE, ReceivedUpload, receive_upload, safe_filename

pytestmark = pytest.mark.usefixtures("storage_backend")

BOUNDARY = b"test-boundary-7f3a9c"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"


def _zip(*names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, "<xml/>")
    return buffer.getvalue()


DOCX_BYTES = _zip("[Content_Types].xml", "word/document.xml")
SAMPLES: dict[str, tuple[bytes, str]] = {
    "photo.jpg": (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x01" * 64, "image/jpeg"),
    "photo.jpeg": (b"\xff\xd8\xff\xdb" + b"\x02" * 64, "image/jpeg"),
    "image.png": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 32, "image/png"),
    "anim.gif": (b"GIF89a\x01\x00\x01\x00" + b"\x00" * 16, "image/gif"),
    "old.gif": (b"GIF87a\x01\x00\x01\x00" + b"\x00" * 16, "image/gif"),
    "report.pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "application/pdf"),
    "letter.doc": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, "application/msword"),
    "letter.docx": (DOCX_BYTES, DOCX_CONTENT_TYPE),
    "bundle.zip": (_zip("a.txt", "b/c.txt"), "application/zip"),
    "notes.txt": ("Grüße, 世界!\nline two\n".encode(), "text/plain; charset=utf-8"),
}
PDF = SAMPLES["report.pdf"][0]


# --- helpers ------------------------------------------------------------------------------


def upload_dir() -> Path:
    return get_settings().upload_dir


def temp_files() -> list[Path]:
    """Temporary files of uploads, wherever the storage spools them."""
    return sorted(path for path, _stat in RESOURCES.storage.temp_files())


def stored_files() -> set[str]:
    """The keys of every object stored in this run's namespace."""
    return {item.key for item in RESOURCES.storage.list_own()}


def read_stored(key: str) -> bytes | None:
    """The bytes stored under a key, read straight from the backend; None when absent."""
    try:
        found = RESOURCES.storage.open(key)
    except storage.ObjectMissingError:
        return None
    if isinstance(found, storage.LocalObject):
        return found.path.read_bytes()
    return b"".join(found.chunks)


def is_stored(key: str) -> bool:
    return read_stored(key) is not None


def stored_name(db_connection: Connection, file_id: int) -> str:
    name = db_connection.scalar(select(TaskFile.stored_filename).where(TaskFile.id == file_id))
    assert name is not None
    return name


def make_task(client: TestClient, user: AuthUser, title: str = "With files") -> int:
    return int(create_task(client, user, title=title)["id"])


def upload(
    client: TestClient,
    user: AuthUser,
    task_id: int,
    filename: str,
    content: bytes,
    content_type: str = "application/octet-stream",
) -> Any:
    return client.post(
        f"/tasks/{task_id}/files",
        files={"file": (filename, content, content_type)},
        headers=user.headers,
    )


def multipart_body(
    content: bytes, *, filename: bytes | None = b"file.pdf", name: bytes = b"file"
) -> bytes:
    disposition = b'form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return (
        b"--" + BOUNDARY + b"\r\n"
        b"Content-Disposition: " + disposition + b"\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
        b"--" + BOUNDARY + b"--\r\n"
    )


@pytest.fixture
def task_id(client: TestClient, alice: AuthUser) -> int:
    return make_task(client, alice)


@pytest.fixture
def limits(app: FastAPI) -> Callable[..., Settings]:
    """Run the app with some settings changed, e.g. `limits(max_upload_bytes=1000)`."""

    def apply(**changes: Any) -> Settings:
        settings = get_settings().model_copy(update=changes)
        app.dependency_overrides[get_app_settings] = lambda: settings
        return settings

    return apply


@pytest.fixture
def server_errors_client(app: FastAPI) -> TestClient:
    """A client that shows a 500 as the client sees it instead of raising in the test."""
    return TestClient(app, raise_server_exceptions=False)


# --- POST /tasks/{task_id}/files ----------------------------------------------------------


class TestUpload:
    def test_requires_a_token(self, client: TestClient, task_id: int) -> None:
        response = client.post(f"/tasks/{task_id}/files", files={"file": ("a.pdf", PDF)})
        assert_problem(response, 401, "not_authenticated")
        assert response.headers["www-authenticate"] == "Bearer"

    def test_another_users_task_is_404_and_nothing_is_stored(
        self, client: TestClient, bob: AuthUser, task_id: int
    ) -> None:
        before = stored_files()
        response = upload(client, bob, task_id, "a.pdf", PDF)
        assert_problem(response, 404, "task_not_found")
        assert stored_files() == before
        assert temp_files() == []

    def test_missing_task_is_404(self, client: TestClient, alice: AuthUser) -> None:
        assert_problem(upload(client, alice, 2**31 - 1, "a.pdf", PDF), 404, "task_not_found")

    @pytest.mark.parametrize("bad_id", ["0", "-1", str(2**31), "abc"])
    def test_task_id_outside_range_is_422(
        self, client: TestClient, alice: AuthUser, bad_id: str
    ) -> None:
        response = client.post(
            f"/tasks/{bad_id}/files", files={"file": ("a.pdf", PDF)}, headers=alice.headers
        )
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["path", "task_id"]

    @pytest.mark.parametrize("filename", sorted(SAMPLES))
    def test_each_allowed_type_is_stored_with_its_checked_content_type(
        self,
        client: TestClient,
        alice: AuthUser,
        task_id: int,
        db_connection: Connection,
        filename: str,
    ) -> None:
        content, content_type = SAMPLES[filename]
        # The client's claimed type is ignored: the stored type comes from the content check.
        response = upload(client, alice, task_id, filename, content, "text/html")
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["content_type"] == content_type
        assert body["original_filename"] == filename
        assert body["file_size"] == len(content)
        assert body["sha256"] == hashlib.sha256(content).hexdigest()
        assert body["task_id"] == task_id
        assert body["uploaded_at"].endswith("Z")
        assert response.headers["location"] == f"/files/{body['id']}"
        assert read_stored(stored_name(db_connection, body["id"])) == content
        assert temp_files() == []

    def test_extension_is_case_insensitive(
        self, client: TestClient, alice: AuthUser, task_id: int
    ) -> None:
        content, _ = SAMPLES["photo.jpg"]
        response = upload(client, alice, task_id, "HOLIDAY.JPG", content)
        assert response.status_code == 201, response.text
        assert response.json()["content_type"] == "image/jpeg"

    def test_a_png_holding_html_is_refused(
        self, client: TestClient, alice: AuthUser, task_id: int
    ) -> None:
        before = stored_files()
        html = b"<!DOCTYPE html><html><script>alert(1)</script></html>"
        response = upload(client, alice, task_id, "cute-cat.png", html, "image/png")
        assert_problem(response, 415, "unsupported_file_type")
        assert client.get(f"/tasks/{task_id}/files", headers=alice.headers).json() == []
        assert stored_files() == before
        assert temp_files() == []

    @pytest.mark.parametrize(
        ("filename", "content"),
        [
            pytest.param("scan.pdf", SAMPLES["photo.jpg"][0], id="jpeg-bytes-as-pdf"),
            pytest.param("photo.jpg", PDF, id="pdf-bytes-as-jpg"),
            pytest.param("anim.gif", b"GIF", id="too-short-for-its-magic"),
            pytest.param("letter.docx", _zip("xl/workbook.xml"), id="zip-without-word"),
            pytest.param("letter.docx", b"PK\x03\x04garbage" * 8, id="docx-not-a-zip"),
            pytest.param("letter.doc", DOCX_BYTES, id="docx-bytes-as-doc"),
            pytest.param("bundle.zip", PDF, id="pdf-bytes-as-zip"),
            pytest.param("notes.txt", b"caf\xe9 latin-1", id="txt-not-utf8"),
            pytest.param("notes.txt", b"text\x00with a NUL", id="txt-with-nul"),
            pytest.param("notes.txt", "truncated é".encode()[:-1], id="txt-truncated-utf8"),
            pytest.param("notes.txt", b"\xff\xd8\xff\xe0binary", id="binary-as-txt"),
        ],
    )
    def test_content_must_match_the_extension(
        self, client: TestClient, alice: AuthUser, task_id: int, filename: str, content: bytes
    ) -> None:
        before = stored_files()
        assert_problem(
            upload(client, alice, task_id, filename, content), 415, "unsupported_file_type"
        )
        assert stored_files() == before
        assert temp_files() == []

    @pytest.mark.parametrize(
        "filename", ["page.html", "image.svg", "run.exe", "script.js", "archive.tar.gz", "README"]
    )
    def test_extensions_outside_the_allow_list_are_refused(
        self, client: TestClient, alice: AuthUser, task_id: int, filename: str
    ) -> None:
        body = assert_problem(
            upload(client, alice, task_id, filename, b"plain text"), 415, "unsupported_file_type"
        )
        assert ".pdf" in body["detail"]
        assert temp_files() == []

    def test_an_empty_file_is_422(self, client: TestClient, alice: AuthUser, task_id: int) -> None:
        body = assert_problem(
            upload(client, alice, task_id, "empty.txt", b""), 422, "validation_error"
        )
        assert body["errors"][0]["loc"] == ["body", "file"]
        assert temp_files() == []

    @pytest.mark.parametrize(
        ("body", "content_type"),
        [
            pytest.param(multipart_body(PDF, name=b"attachment"), MULTIPART, id="no-file-part"),
            pytest.param(
                multipart_body(b"just text", filename=None), MULTIPART, id="field-not-file"
            ),
            pytest.param(
                multipart_body(PDF).replace(b"--" + BOUNDARY + b"--\r\n", b""),
                MULTIPART,
                id="body-cut-short",
            ),
            pytest.param(
                multipart_body(PDF)[: -len(BOUNDARY) - 6] + multipart_body(PDF, filename=b"b.pdf"),
                MULTIPART,
                id="two-file-parts",
            ),
            pytest.param(b'{"file": "a.pdf"}', "application/json", id="json"),
            pytest.param(PDF, "multipart/form-data", id="no-boundary"),
        ],
    )
    def test_a_malformed_request_is_422(
        self, client: TestClient, alice: AuthUser, task_id: int, body: bytes, content_type: str
    ) -> None:
        response = client.post(
            f"/tasks/{task_id}/files",
            content=body,
            headers={**alice.headers, "Content-Type": content_type},
        )
        problem = assert_problem(response, 422, "validation_error")
        assert problem["errors"][0]["loc"] == ["body", "file"]
        assert client.get(f"/tasks/{task_id}/files", headers=alice.headers).json() == []
        assert temp_files() == []

    def test_other_form_fields_are_ignored(
        self, client: TestClient, alice: AuthUser, task_id: int
    ) -> None:
        response = client.post(
            f"/tasks/{task_id}/files",
            data={"comment": "the signed copy"},
            files={"file": ("signed.pdf", PDF)},
            headers=alice.headers,
        )
        assert response.status_code == 201, response.text
        assert response.json()["original_filename"] == "signed.pdf"


class TestUploadSize:
    def test_a_file_of_exactly_the_default_limit_is_accepted(
        self, client: TestClient, alice: AuthUser, task_id: int
    ) -> None:
        limit = Settings.model_fields["max_upload_bytes"].default
        assert get_settings().max_upload_bytes == limit == 10 * 1024 * 1024
        content = b"%PDF-" + b"x" * (limit - 5)
        response = upload(client, alice, task_id, "big.pdf", content)
        assert response.status_code == 201, response.text
        assert response.json()["file_size"] == limit
        assert response.json()["sha256"] == hashlib.sha256(content).hexdigest()

    def test_the_limit_is_inclusive(
        self, client: TestClient, alice: AuthUser, task_id: int, limits: Callable[..., Settings]
    ) -> None:
        limits(max_upload_bytes=1000)
        exact = b"%PDF-" + b"x" * 995
        assert upload(client, alice, task_id, "exact.pdf", exact).status_code == 201
        response = upload(client, alice, task_id, "over.pdf", exact + b"x")
        body = assert_problem(response, 413, "file_too_large")
        assert "1000 bytes" in body["detail"]
        assert len(client.get(f"/tasks/{task_id}/files", headers=alice.headers).json()) == 1
        assert temp_files() == []

    def test_oversize_with_content_length_is_refused_before_the_body_is_read(
        self, client: TestClient, alice: AuthUser, task_id: int, limits: Callable[..., Settings]
    ) -> None:
        limits(max_upload_bytes=1000)
        body = multipart_body(b"%PDF-" + b"x" * (200 * 1024))
        chunks_read = 0

        def stream() -> Iterator[bytes]:
            nonlocal chunks_read
            for start in range(0, len(body), 4096):
                chunks_read += 1
                yield body[start : start + 4096]

        response = client.post(
            f"/tasks/{task_id}/files",
            content=stream(),
            headers={
                **alice.headers,
                "Content-Type": MULTIPART,
                "Content-Length": str(len(body)),
            },
        )
        assert_problem(response, 413, "file_too_large")
        assert chunks_read == 0
        assert temp_files() == []

    def test_oversize_without_content_length_is_refused_while_streaming(
        self, client: TestClient, alice: AuthUser, task_id: int, limits: Callable[..., Settings]
    ) -> None:
        limits(max_upload_bytes=1000)
        before = stored_files()
        body = multipart_body(b"%PDF-" + b"x" * 5000)

        def stream() -> Iterator[bytes]:
            for start in range(0, len(body), 512):
                yield body[start : start + 512]

        response = client.post(
            f"/tasks/{task_id}/files",
            content=stream(),
            headers={**alice.headers, "Content-Type": MULTIPART},
        )
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert_problem(response, 413, "file_too_large")
        assert client.get(f"/tasks/{task_id}/files", headers=alice.headers).json() == []
        assert stored_files() == before
        assert temp_files() == []

    def test_a_chunked_upload_within_the_limit_is_accepted(
        self, client: TestClient, alice: AuthUser, task_id: int, limits: Callable[..., Settings]
    ) -> None:
        limits(max_upload_bytes=1000)
        content = b"%PDF-" + b"y" * 900
        body = multipart_body(content, filename=b"chunked.pdf")
        response = client.post(
            f"/tasks/{task_id}/files",
            content=iter([body[:100], body[100:700], body[700:]]),
            headers={**alice.headers, "Content-Type": MULTIPART},
        )
        assert response.status_code == 201, response.text
        assert response.json()["sha256"] == hashlib.sha256(content).hexdigest()

    def test_reading_stops_at_the_limit(self, tmp_path: Path) -> None:
        """The body is consumed only up to the limit, never buffered whole."""
        chunk = b"x" * 64 * 1024
        total_chunks = 64  # 4 MiB offered against a 256 KiB limit
        head = multipart_body(b"%PDF-", filename=b"a.pdf").split(b"\r\n--" + BOUNDARY + b"--")[0]
        consumed = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal consumed
            consumed += 1
            yield head
            for _ in range(total_chunks):
                consumed += 1
                yield chunk

        async def receive() -> None:
            async with receive_upload(
                headers={"content-type": MULTIPART},
                body=body(),
                upload_dir=tmp_path,
                limit=256 * 1024,
            ):
                pass

        with pytest.raises(FileTooLargeError):
            anyio.run(receive)
        assert consumed < total_chunks // 4
        assert list(tmp_path.iterdir()) == []

    def test_an_interrupted_upload_leaves_nothing(self, tmp_path: Path) -> None:
        async def body() -> AsyncIterator[bytes]:
            yield multipart_body(b"%PDF-" + b"x" * 1000)[:600]
            raise ClientDisconnect()

        async def receive() -> None:
            async with receive_upload(
                headers={"content-type": MULTIPART}, body=body(), upload_dir=tmp_path, limit=10_000
            ):
                pass

        with pytest.raises(AppError) as raised:
            anyio.run(receive)
        assert raised.value.status_code == 400
        assert list(tmp_path.iterdir()) == []


class TestUploadLimits:
    def test_one_file_beyond_the_per_task_limit_is_409(
        self, client: TestClient, alice: AuthUser, task_id: int, limits: Callable[..., Settings]
    ) -> None:
        limits(max_files_per_task=2)
        for name in ("one.pdf", "two.pdf"):
            assert upload(client, alice, task_id, name, PDF).status_code == 201
        before = stored_files()
        body = assert_problem(
            upload(client, alice, task_id, "three.pdf", PDF), 409, "too_many_files"
        )
        assert "2 files" in body["detail"]
        assert stored_files() == before
        assert temp_files() == []
        # The limit is per task: another task still takes files.
        other = make_task(client, alice, "Another")
        assert upload(client, alice, other, "three.pdf", PDF).status_code == 201

    def test_the_default_limit_is_20(self) -> None:
        assert Settings.model_fields["max_files_per_task"].default == 20
        assert get_settings().max_files_per_task == 20

    def test_deleting_a_file_makes_room(
        self, client: TestClient, alice: AuthUser, task_id: int, limits: Callable[..., Settings]
    ) -> None:
        limits(max_files_per_task=1)
        first = upload(client, alice, task_id, "one.pdf", PDF).json()["id"]
        assert upload(client, alice, task_id, "two.pdf", PDF).status_code == 409
        assert client.delete(f"/files/{first}", headers=alice.headers).status_code == 204
        assert upload(client, alice, task_id, "two.pdf", PDF).status_code == 201


class TestFilenames:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("../../etc/passwd", "passwd"),
            ("..\\..\\windows\\system.ini", "system.ini"),
            ("C:\\Users\\me\\report.pdf", "report.pdf"),
            ("résumé final.pdf", "résumé final.pdf"),
            ("re\u0301sume\u0301.pdf", "résumé.pdf"),
            ("tab\there\r\nnew.txt", "tab here new.txt"),
            ("bell\x07\x00nul.txt", "bellnul.txt"),
            ("evil\u202egnp.pdf", "evilgnp.pdf"),
            ("  spaced  out .pdf  ", "spaced out.pdf"),
            ("trailing dots.pdf...", "trailing dots.pdf"),
            ("..", "file"),
            ("../../", "file"),
            ("", "file"),
            (".pdf", "file.pdf"),
            ("\x00\x01.txt", "file.txt"),
            ("报告.txt", "报告.txt"),
        ],
    )
    def test_safe_filename(self, raw: str, expected: str) -> None:
        assert safe_filename(raw) == expected

    def test_long_names_are_capped_keeping_the_extension(self) -> None:
        name = safe_filename("é" * 400 + ".docx")
        assert len(name) == 255
        assert name.endswith("é.docx")

    def test_a_path_in_the_name_is_reduced_to_its_base_name(
        self,
        client: TestClient,
        alice: AuthUser,
        task_id: int,
        db_connection: Connection,
    ) -> None:
        response = upload(client, alice, task_id, "../../etc/passwd.txt", b"root:x:0:0\n")
        assert response.status_code == 201, response.text
        assert response.json()["original_filename"] == "passwd.txt"
        stored = stored_name(db_connection, response.json()["id"])
        assert storage.KEY.fullmatch(stored)
        assert "passwd" not in stored
        assert read_stored(stored) == b"root:x:0:0\n"
        assert not (upload_dir().parent / "etc").exists()

    def test_a_name_without_an_allowed_extension_after_cleaning_is_415(
        self, client: TestClient, alice: AuthUser, task_id: int
    ) -> None:
        response = upload(client, alice, task_id, "../../etc/passwd", b"root:x:0:0\n")
        assert_problem(response, 415, "unsupported_file_type")

    def test_unicode_names_survive_the_round_trip(
        self, client: TestClient, alice: AuthUser, task_id: int
    ) -> None:
        response = upload(client, alice, task_id, "résumé final.pdf", PDF)
        assert response.status_code == 201, response.text
        assert response.json()["original_filename"] == "résumé final.pdf"
        listed = client.get(f"/tasks/{task_id}/files", headers=alice.headers).json()
        assert [f["original_filename"] for f in listed] == ["résumé final.pdf"]

    def test_control_characters_sent_raw_are_stripped(
        self, client: TestClient, alice: AuthUser, task_id: int
    ) -> None:
        body = multipart_body(PDF, filename=b"in\x01voice\x1b[31m.pdf")
        response = client.post(
            f"/tasks/{task_id}/files",
            content=body,
            headers={**alice.headers, "Content-Type": MULTIPART},
        )
        assert response.status_code == 201, response.text
        assert response.json()["original_filename"] == "invoice[31m.pdf"


# --- GET /tasks/{task_id}/files -----------------------------------------------------------


class TestList:
    def test_requires_a_token(self, client: TestClient, task_id: int) -> None:
        assert_problem(client.get(f"/tasks/{task_id}/files"), 401, "not_authenticated")

    def test_another_users_task_is_404(
        self, client: TestClient, alice: AuthUser, bob: AuthUser, task_id: int
    ) -> None:
        upload(client, alice, task_id, "a.pdf", PDF)
        assert_problem(
            client.get(f"/tasks/{task_id}/files", headers=bob.headers), 404, "task_not_found"
        )

    @pytest.mark.parametrize("bad_id", ["0", str(2**31), "x"])
    def test_task_id_outside_range_is_422(
        self, client: TestClient, alice: AuthUser, bad_id: str
    ) -> None:
        response = client.get(f"/tasks/{bad_id}/files", headers=alice.headers)
        assert_problem(response, 422, "validation_error")

    def test_lists_the_tasks_files_oldest_first(
        self, client: TestClient, alice: AuthUser, task_id: int
    ) -> None:
        assert client.get(f"/tasks/{task_id}/files", headers=alice.headers).json() == []
        ids = [upload(client, alice, task_id, n, PDF).json()["id"] for n in ("b.pdf", "a.pdf")]
        other_task = make_task(client, alice, "Other")
        upload(client, alice, other_task, "elsewhere.pdf", PDF)
        response = client.get(f"/tasks/{task_id}/files", headers=alice.headers)
        assert response.status_code == 200
        files = response.json()
        assert [f["id"] for f in files] == ids
        assert [f["original_filename"] for f in files] == ["b.pdf", "a.pdf"]
        assert set(files[0]) == {
            "id",
            "task_id",
            "original_filename",
            "content_type",
            "file_size",
            "sha256",
            "uploaded_at",
        }


# --- GET /files/{file_id} -----------------------------------------------------------------


class TestDownload:
    @pytest.fixture
    def file_id(self, client: TestClient, alice: AuthUser, task_id: int) -> int:
        response = upload(client, alice, task_id, "résumé final.pdf", PDF)
        assert response.status_code == 201, response.text
        file_id: int = response.json()["id"]
        return file_id

    def test_requires_a_token(self, client: TestClient, file_id: int) -> None:
        assert_problem(client.get(f"/files/{file_id}"), 401, "not_authenticated")

    def test_another_users_file_is_404(
        self, client: TestClient, bob: AuthUser, file_id: int
    ) -> None:
        body = assert_problem(
            client.get(f"/files/{file_id}", headers=bob.headers), 404, "file_not_found"
        )
        assert body["detail"] == f"File {file_id} not found"

    def test_a_missing_file_is_404(self, client: TestClient, alice: AuthUser) -> None:
        assert_problem(
            client.get(f"/files/{2**31 - 1}", headers=alice.headers), 404, "file_not_found"
        )

    @pytest.mark.parametrize("bad_id", ["0", "-5", str(2**31), "1.5"])
    def test_file_id_outside_range_is_422(
        self, client: TestClient, alice: AuthUser, bad_id: str
    ) -> None:
        body = assert_problem(
            client.get(f"/files/{bad_id}", headers=alice.headers), 422, "validation_error"
        )
        assert body["errors"][0]["loc"] == ["path", "file_id"]

    def test_bytes_and_headers(self, client: TestClient, alice: AuthUser, file_id: int) -> None:
        response = client.get(f"/files/{file_id}", headers=alice.headers)
        assert response.status_code == 200
        assert response.content == PDF
        assert response.headers["content-type"] == "application/pdf"
        assert response.headers["content-length"] == str(len(PDF))
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-disposition"] == (
            "attachment; filename=\"resume final.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.pdf"
        )
        assert response.headers["x-request-id"]

    @pytest.mark.parametrize("filename", sorted(SAMPLES))
    def test_every_type_comes_back_identical_in_its_stored_type(
        self, client: TestClient, alice: AuthUser, task_id: int, filename: str
    ) -> None:
        content, content_type = SAMPLES[filename]
        file_id = upload(client, alice, task_id, filename, content).json()["id"]
        response = client.get(f"/files/{file_id}", headers=alice.headers)
        assert response.status_code == 200
        assert response.content == content
        assert response.headers["content-type"] == content_type
        assert hashlib.sha256(response.content).hexdigest() == hashlib.sha256(content).hexdigest()

    @pytest.mark.parametrize(
        ("filename", "fallback", "encoded"),
        [
            ("plain.pdf", "plain.pdf", "plain.pdf"),
            ("报告.pdf", "file.pdf", "%E6%8A%A5%E5%91%8A.pdf"),
            ('say "hi".pdf', "say _hi_.pdf", "say%20%22hi%22.pdf"),
            ("back\\slash.pdf", "slash.pdf", "slash.pdf"),
            ("50% off;.pdf", "50% off;.pdf", "50%25%20off%3B.pdf"),
        ],
    )
    def test_content_disposition_for_awkward_names(
        self, filename: str, fallback: str, encoded: str
    ) -> None:
        from routers.files import content_disposition

        stored = safe_filename(filename)
        assert content_disposition(stored) == (
            f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
        )

    def test_bytes_missing_from_storage_is_404_not_500(
        self, client: TestClient, alice: AuthUser, file_id: int, db_connection: Connection
    ) -> None:
        RESOURCES.storage.delete(stored_name(db_connection, file_id))
        assert_problem(
            client.get(f"/files/{file_id}", headers=alice.headers), 404, "file_not_found"
        )


# --- DELETE /files/{file_id} --------------------------------------------------------------


class TestDelete:
    @pytest.fixture
    def file_id(self, client: TestClient, alice: AuthUser, task_id: int) -> int:
        file_id: int = upload(client, alice, task_id, "a.pdf", PDF).json()["id"]
        return file_id

    def test_requires_a_token(self, client: TestClient, file_id: int) -> None:
        assert_problem(client.delete(f"/files/{file_id}"), 401, "not_authenticated")

    def test_another_users_file_is_404_and_stays(
        self,
        client: TestClient,
        alice: AuthUser,
        bob: AuthUser,
        file_id: int,
        db_connection: Connection,
    ) -> None:
        key = stored_name(db_connection, file_id)
        assert_problem(
            client.delete(f"/files/{file_id}", headers=bob.headers), 404, "file_not_found"
        )
        assert is_stored(key)
        assert client.get(f"/files/{file_id}", headers=alice.headers).content == PDF

    @pytest.mark.parametrize("bad_id", ["0", str(2**31), "x"])
    def test_file_id_outside_range_is_422(
        self, client: TestClient, alice: AuthUser, bad_id: str
    ) -> None:
        assert_problem(
            client.delete(f"/files/{bad_id}", headers=alice.headers), 422, "validation_error"
        )

    def test_deletes_the_row_and_then_the_bytes(
        self,
        client: TestClient,
        alice: AuthUser,
        task_id: int,
        file_id: int,
        db_connection: Connection,
    ) -> None:
        key = stored_name(db_connection, file_id)
        assert is_stored(key)
        response = client.delete(f"/files/{file_id}", headers=alice.headers)
        assert response.status_code == 204
        assert response.content == b""
        assert not is_stored(key)
        assert_problem(
            client.get(f"/files/{file_id}", headers=alice.headers), 404, "file_not_found"
        )
        assert client.get(f"/tasks/{task_id}/files", headers=alice.headers).json() == []
        assert_problem(
            client.delete(f"/files/{file_id}", headers=alice.headers), 404, "file_not_found"
        )


# --- disk and database stay consistent ----------------------------------------------------


class TestConsistency:
    def test_a_failing_commit_leaves_no_uploaded_bytes(
        self,
        server_errors_client: TestClient,
        alice: AuthUser,
        task_id: int,
        failing_commit: Callable[..., None],
    ) -> None:
        before = stored_files()
        failing_commit()
        response = upload(server_errors_client, alice, task_id, "a.pdf", PDF)
        assert_problem(response, 503, "service_unavailable")
        assert stored_files() == before
        assert temp_files() == []

    def test_a_failing_commit_keeps_a_deleted_files_bytes(
        self,
        server_errors_client: TestClient,
        client: TestClient,
        alice: AuthUser,
        task_id: int,
        db_connection: Connection,
        failing_commit: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        file_id = upload(client, alice, task_id, "a.pdf", PDF).json()["id"]
        key = stored_name(db_connection, file_id)
        failing_commit()
        response = server_errors_client.delete(f"/files/{file_id}", headers=alice.headers)
        assert_problem(response, 503, "service_unavailable")
        assert read_stored(key) == PDF
        monkeypatch.undo()
        assert client.get(f"/files/{file_id}", headers=alice.headers).content == PDF

    def test_a_failing_commit_keeps_a_deleted_tasks_bytes(
        self,
        server_errors_client: TestClient,
        client: TestClient,
        alice: AuthUser,
        task_id: int,
        db_connection: Connection,
        failing_commit: Callable[..., None],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        file_id = upload(client, alice, task_id, "a.pdf", PDF).json()["id"]
        key = stored_name(db_connection, file_id)
        failing_commit()
        response = server_errors_client.delete(f"/tasks/{task_id}", headers=alice.headers)
        assert_problem(response, 503, "service_unavailable")
        assert is_stored(key)
        monkeypatch.undo()
        assert client.get(f"/files/{file_id}", headers=alice.headers).content == PDF

    def test_bytes_go_with_a_rolled_back_transaction_and_stay_with_a_committed_one(
        self, alice: AuthUser, task_id: int
    ) -> None:
        store = RESOURCES.storage
        before = stored_files()

        def received(name: str) -> ReceivedUpload:
            temp, handle = storage.create_temp_file(store.temp_dir)
            handle.write(PDF)
            return ReceivedUpload(
                temp_path=temp,
                original_filename=f"{name}.pdf",
                content_type="application/pdf",
                file_size=len(PDF),
                sha256=hashlib.sha256(PDF).hexdigest(),
                file=handle,
            )

        def attach(session: Session, name: str) -> str:
            upload = received(name)
            try:
                row = file_service.attach_file(
                    session,
                    owner_id=alice.id,
                    task_id=task_id,
                    upload=upload,
                    storage=store,
                    max_files=20,
                )
            finally:
                upload.discard()
            assert read_stored(row.stored_filename) == PDF
            return row.stored_filename

        with RESOURCES.sessions() as session:
            rolled_back = attach(session, "rolled-back")
            session.rollback()
        assert not is_stored(rolled_back)

        with RESOURCES.sessions() as session:
            abandoned = attach(session, "abandoned")
        assert not is_stored(abandoned)

        with RESOURCES.sessions() as session:
            committed = attach(session, "committed")
            session.commit()
        assert is_stored(committed)
        assert stored_files() - before == {committed}
        assert temp_files() == []

    def test_bytes_stored_for_a_task_deleted_meanwhile_are_removed(
        self, client: TestClient, alice: AuthUser, task_id: int
    ) -> None:
        store = RESOURCES.storage
        before = stored_files()
        temp, handle = storage.create_temp_file(store.temp_dir)
        handle.write(PDF)
        upload = ReceivedUpload(
            temp_path=temp,
            original_filename="late.pdf",
            content_type="application/pdf",
            file_size=len(PDF),
            sha256=hashlib.sha256(PDF).hexdigest(),
            file=handle,
        )
        assert client.delete(f"/tasks/{task_id}", headers=alice.headers).status_code == 204
        with RESOURCES.sessions() as session, pytest.raises(AppError) as raised:
            file_service.attach_file(
                session,
                owner_id=alice.id,
                task_id=task_id,
                upload=upload,
                storage=store,
                max_files=20,
            )
        upload.discard()
        assert raised.value.code == "task_not_found"
        assert stored_files() == before
        assert temp_files() == []


# --- DELETE /tasks/{task_id} with files ---------------------------------------------------


class TestTaskDeletion:
    def test_removes_rows_by_cascade_and_bytes_after_the_response(
        self, client: TestClient, alice: AuthUser, task_id: int, db_connection: Connection
    ) -> None:
        ids = [upload(client, alice, task_id, f"{n}.pdf", PDF).json()["id"] for n in range(3)]
        keys = [stored_name(db_connection, i) for i in ids]
        assert all(is_stored(key) for key in keys)
        keep = make_task(client, alice, "Keep")
        kept_id = upload(client, alice, keep, "kept.pdf", PDF).json()["id"]

        statements: list[str] = []

        def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            statements.append(statement)

        event.listen(RESOURCES.engine, "before_cursor_execute", record)
        try:
            response = client.delete(f"/tasks/{task_id}", headers=alice.headers)
        finally:
            event.remove(RESOURCES.engine, "before_cursor_execute", record)
        assert response.status_code == 204

        # The database cascade removed the rows: no DELETE per file row was sent.
        assert not [
            s for s in statements if s.lstrip().upper().startswith("DELETE FROM TASK_FILES")
        ]
        remaining = db_connection.scalars(
            select(TaskFile.id).where(TaskFile.id.in_([*ids, kept_id]))
        ).all()
        assert remaining == [kept_id]
        assert not any(is_stored(key) for key in keys)
        for file_id in ids:
            assert_problem(
                client.get(f"/files/{file_id}", headers=alice.headers), 404, "file_not_found"
            )
        assert client.get(f"/files/{kept_id}", headers=alice.headers).content == PDF

    def test_another_users_task_keeps_its_files(
        self,
        client: TestClient,
        alice: AuthUser,
        bob: AuthUser,
        task_id: int,
        db_connection: Connection,
    ) -> None:
        file_id = upload(client, alice, task_id, "a.pdf", PDF).json()["id"]
        assert_problem(
            client.delete(f"/tasks/{task_id}", headers=bob.headers), 404, "task_not_found"
        )
        assert is_stored(stored_name(db_connection, file_id))

    def test_a_task_without_files_deletes_as_before(
        self, client: TestClient, alice: AuthUser, task_id: int
    ) -> None:
        assert client.delete(f"/tasks/{task_id}", headers=alice.headers).status_code == 204
        assert_problem(
            client.get(f"/tasks/{task_id}", headers=alice.headers), 404, "task_not_found"
        )
