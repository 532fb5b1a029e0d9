"""Storage backends: keys, namespaces, presigned downloads, multipart uploads, outages.

The s3 backend runs against a real S3-compatible server that checks signatures and expiry.
"""

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from sqlalchemy import Connection

import storage
from config import Settings, get_settings
from routers.files import content_disposition
from tests.conftest import RESOURCES, TEST_BUCKET, AuthUser, s3_storage_for
from tests.s3_server import S3Server
from tests.task_helpers import create_task, stored_key, upload_file

PDF = b"%PDF-1.7\nstored\n"
NAMESPACED_KEY = r"^db-[0-9a-f]{16}/[0-9a-f]{32}$"


def make_task(client: TestClient, user: AuthUser) -> int:
    return int(create_task(client, user, title="Files")["id"])


def upload(
    client: TestClient, user: AuthUser, task_id: int, name: str, content: bytes = PDF
) -> int:
    return upload_file(client, user, task_id, name, content)


@pytest.fixture
def use_storage() -> Iterator[list[storage.Storage]]:
    """Put a storage of the test's own making in place: `use_storage.append(store)`."""
    original = RESOURCES.storage

    class Chosen(list[storage.Storage]):
        def append(self, store: storage.Storage) -> None:
            super().append(store)
            RESOURCES.storage = store

    chosen = Chosen()
    try:
        yield chosen
    finally:
        RESOURCES.storage = original


# --- keys ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("storage_backend")
class TestKeys:
    def test_keys_are_random_and_never_derived_from_the_client_name(
        self,
        client: TestClient,
        alice: AuthUser,
        db_connection: Connection,
        storage_backend: storage.Storage,
    ) -> None:
        task_id = make_task(client, alice)
        # A name that looks like a key, and one that tries to climb out of the namespace.
        lookalike = "0123456789abcdef0123456789abcdef.pdf"
        names = [lookalike, lookalike, "../../db-0000000000000000/x.pdf"]
        keys = [stored_key(db_connection, upload(client, alice, task_id, name)) for name in names]
        assert len(set(keys)) == 3
        for key in keys:
            assert storage.KEY.fullmatch(key)
            assert key.startswith(f"{storage_backend.namespace}/")
            assert "0123456789abcdef0123456789abcdef" not in key
            assert "x.pdf" not in key
            assert ".." not in key
        stored = {item.key for item in storage_backend.list_own()}
        assert set(keys) <= stored

    def test_keys_outside_the_pattern_are_refused(self, storage_backend: storage.Storage) -> None:
        for bad in ["../etc/passwd", "db-x/../../a", "DB-A/" + "0" * 32, "a/b/" + "0" * 32, ""]:
            with pytest.raises(ValueError, match="not a stored object key"):
                storage_backend.delete(bad)

    def test_deleting_a_missing_key_is_fine(self, storage_backend: storage.Storage) -> None:
        storage_backend.delete(storage_backend.new_key())


class TestNamespace:
    def test_the_default_comes_from_the_database(self) -> None:
        settings = get_settings()
        assert RESOURCES.storage.namespace == storage.database_namespace(settings.database_url)
        assert storage.NAMESPACE.fullmatch(RESOURCES.storage.namespace)

    @pytest.mark.parametrize(
        ("one", "other"),
        [
            ("postgresql://a:pw1@db:5432/app", "postgresql+psycopg2://b:pw2@DB/app"),
            ("sqlite:///relative.db", f"sqlite:///{Path('relative.db').resolve()}"),
        ],
    )
    def test_credentials_driver_and_spelling_do_not_count(self, one: str, other: str) -> None:
        assert storage.database_namespace(one) == storage.database_namespace(other)

    @pytest.mark.parametrize(
        ("one", "other"),
        [
            ("postgresql://db:5432/app", "postgresql://db:5432/app2"),
            ("postgresql://db1:5432/app", "postgresql://db2:5432/app"),
            ("postgresql://db:5432/app", "postgresql://db:5433/app"),
            ("sqlite:///one.db", "sqlite:///two.db"),
            ("sqlite:///app", "postgresql://localhost/app"),
        ],
    )
    def test_another_database_is_another_namespace(self, one: str, other: str) -> None:
        assert storage.database_namespace(one) != storage.database_namespace(other)

    def test_storage_namespace_overrides_it(self, tmp_path: Path) -> None:
        settings = Settings(storage_namespace="shop-eu", upload_dir=tmp_path)
        store = storage.build_storage(settings)
        assert store.namespace == "shop-eu"
        assert store.new_key().startswith("shop-eu/")

    @pytest.mark.parametrize("bad", ["../up", "a/b", "UPPER", "-lead", "x" * 32, "dot.ted"])
    def test_a_namespace_must_be_a_plain_name(self, bad: str) -> None:
        with pytest.raises(ValidationError):
            Settings(storage_namespace=bad)


class TestSettings:
    def test_s3_needs_a_bucket(self) -> None:
        with pytest.raises(ValidationError, match="S3_BUCKET"):
            Settings(storage_backend="s3")

    def test_the_endpoint_must_be_a_url(self) -> None:
        with pytest.raises(ValidationError, match="S3_ENDPOINT_URL"):
            Settings(storage_backend="s3", s3_bucket="b", s3_endpoint_url="minio:9000")

    def test_aws_credentials_come_in_pairs(self) -> None:
        with pytest.raises(ValidationError, match="AWS_SECRET_ACCESS_KEY"):
            Settings(aws_access_key_id="AKIDEXAMPLE")

    def test_the_default_is_the_local_disk(self) -> None:
        settings = Settings()
        assert settings.storage_backend == "local"
        assert isinstance(storage.build_storage(settings), storage.LocalStorage)

    def test_s3_settings_build_an_s3_storage(self, s3_server: S3Server, tmp_path: Path) -> None:
        env = s3_server.environment(TEST_BUCKET)
        settings = Settings(
            storage_backend="s3",
            s3_endpoint_url=env["S3_ENDPOINT_URL"],
            s3_bucket=TEST_BUCKET,
            s3_region=env["S3_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=SecretStr(env["AWS_SECRET_ACCESS_KEY"]),
            s3_presign_seconds=60,
            upload_dir=tmp_path,
        )
        store = storage.build_storage(settings)
        assert isinstance(store, storage.S3Storage)
        # With s3, the upload folder holds only temporary files.
        assert store.temp_dir == tmp_path / store.namespace
        key = store.new_key()
        path, handle = storage.create_temp_file(store.temp_dir)
        with handle:
            handle.write(PDF)
            store.store(
                key, handle, temp_path=path, content_type="application/pdf", content_disposition=""
            )
        path.unlink()
        found = store.open(key)
        assert isinstance(found, storage.StreamedObject)
        assert b"".join(found.chunks) == PDF
        assert list(tmp_path.rglob("*")) == [tmp_path / store.namespace]
        store.delete(key)

    def test_files_on_the_local_disk_are_private(
        self, client: TestClient, alice: AuthUser, db_connection: Connection
    ) -> None:
        file_id = upload(client, alice, make_task(client, alice), "private.pdf")
        path = get_settings().upload_dir / stored_key(db_connection, file_id)
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700


# --- S3: presigned downloads, multipart uploads, signatures -------------------------------


class TestPresignedDownload:
    @pytest.fixture
    def presigning(
        self, s3_server: S3Server, use_storage: list[storage.Storage]
    ) -> storage.S3Storage:
        store = s3_storage_for(s3_server, presign_seconds=300)
        use_storage.append(store)
        return store

    def test_answers_302_to_the_bytes_with_their_name_and_type(
        self, client: TestClient, alice: AuthUser, presigning: storage.S3Storage
    ) -> None:
        content = "Grüße\n".encode()
        file_id = upload(client, alice, make_task(client, alice), "résumé final.txt", content)

        response = client.get(f"/files/{file_id}", headers=alice.headers, follow_redirects=False)

        assert response.status_code == 302
        location = response.headers["location"]
        assert location.startswith(f"{presigning.client.meta.endpoint_url}/{TEST_BUCKET}/")
        assert "X-Amz-Expires=300" in location
        assert response.headers["cache-control"] == "no-store"
        # A plain client, without the API's token, follows it.
        fetched = httpx.get(location, timeout=30)
        assert fetched.status_code == 200
        assert fetched.content == content
        assert fetched.headers["content-type"] == "text/plain; charset=utf-8"
        assert fetched.headers["content-disposition"] == content_disposition("résumé final.txt")
        assert fetched.headers["content-disposition"] == (
            "attachment; filename=\"resume final.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20final.txt"
        )

    def test_another_users_file_is_still_404(
        self, client: TestClient, alice: AuthUser, bob: AuthUser, presigning: storage.S3Storage
    ) -> None:
        file_id = upload(client, alice, make_task(client, alice), "a.pdf")
        response = client.get(f"/files/{file_id}", headers=bob.headers, follow_redirects=False)
        assert response.status_code == 404
        assert response.json()["code"] == "file_not_found"

    def test_a_tampered_or_unsigned_url_is_refused_by_the_server(
        self, client: TestClient, alice: AuthUser, presigning: storage.S3Storage
    ) -> None:
        task_id = make_task(client, alice)
        mine, other = (upload(client, alice, task_id, n) for n in ("mine.pdf", "other.pdf"))
        location = client.get(
            f"/files/{mine}", headers=alice.headers, follow_redirects=False
        ).headers["location"]
        other_location = client.get(
            f"/files/{other}", headers=alice.headers, follow_redirects=False
        ).headers["location"]
        signature = location.rpartition("X-Amz-Signature=")[2]
        flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
        tampered = [
            location.replace(signature, flipped),
            # The signature of one object does not open another.
            other_location.split("?")[0] + "?" + location.split("?")[1],
            location.replace("X-Amz-Expires=300", "X-Amz-Expires=600"),
            # No signature at all: the bucket is not public.
            location.split("?")[0],
        ]
        for url in tampered:
            refused = httpx.get(url, timeout=30)
            assert refused.status_code == 403, url
            assert PDF not in refused.content

    def test_an_expired_url_is_refused(
        self,
        client: TestClient,
        alice: AuthUser,
        s3_server: S3Server,
        use_storage: list[storage.Storage],
    ) -> None:
        use_storage.append(s3_storage_for(s3_server, presign_seconds=1))
        file_id = upload(client, alice, make_task(client, alice), "short.pdf")
        location = client.get(
            f"/files/{file_id}", headers=alice.headers, follow_redirects=False
        ).headers["location"]
        time.sleep(2.5)  # past the one second the URL was valid
        refused = httpx.get(location, timeout=30)
        assert refused.status_code == 403
        assert PDF not in refused.content

    def test_without_presigning_s3_bytes_stream_through_the_api(
        self,
        client: TestClient,
        alice: AuthUser,
        s3_storage: storage.S3Storage,
        use_storage: list[storage.Storage],
    ) -> None:
        use_storage.append(s3_storage)
        file_id = upload(client, alice, make_task(client, alice), "streamed.pdf")
        response = client.get(f"/files/{file_id}", headers=alice.headers, follow_redirects=False)
        assert response.status_code == 200
        assert response.content == PDF
        assert response.headers["content-length"] == str(len(PDF))
        assert response.headers["content-type"] == "application/pdf"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["content-disposition"] == content_disposition("streamed.pdf")


class TestMultipartUpload:
    def test_a_large_file_goes_to_s3_in_parts(
        self,
        client: TestClient,
        alice: AuthUser,
        db_connection: Connection,
        s3_server: S3Server,
        use_storage: list[storage.Storage],
    ) -> None:
        store = s3_storage_for(s3_server)
        use_storage.append(store)
        content = b"%PDF-" + os.urandom(9 * 1024 * 1024)
        file_id = upload(client, alice, make_task(client, alice), "big.pdf", content)
        head = store.client.head_object(Bucket=TEST_BUCKET, Key=stored_key(db_connection, file_id))
        # An S3 ETag of a multipart object is "<md5 of the parts' md5s>-<number of parts>".
        assert head["ETag"].strip('"').endswith("-2")
        assert head["ContentLength"] == len(content)
        downloaded = client.get(f"/files/{file_id}", headers=alice.headers)
        assert hashlib.sha256(downloaded.content).hexdigest() == hashlib.sha256(content).hexdigest()

    def test_a_small_file_goes_in_one_request(
        self,
        client: TestClient,
        alice: AuthUser,
        db_connection: Connection,
        s3_storage: storage.S3Storage,
        use_storage: list[storage.Storage],
    ) -> None:
        use_storage.append(s3_storage)
        file_id = upload(client, alice, make_task(client, alice), "small.pdf")
        head = s3_storage.client.head_object(
            Bucket=TEST_BUCKET, Key=stored_key(db_connection, file_id)
        )
        assert head["ETag"].strip('"') == hashlib.md5(PDF, usedforsecurity=False).hexdigest()


class TestOutage:
    @pytest.fixture
    def unreachable(
        self, s3_server: S3Server, use_storage: list[storage.Storage]
    ) -> storage.S3Storage:
        """An s3 storage whose server is gone (a closed loopback port)."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        settings = get_settings().model_copy(
            update={
                "storage_backend": "s3",
                "s3_endpoint_url": f"http://127.0.0.1:{port}",
                "s3_bucket": TEST_BUCKET,
                "aws_access_key_id": s3_server.access_key,
                "aws_secret_access_key": SecretStr(s3_server.secret_key),
            }
        )
        store = storage.S3Storage(
            namespace=storage.database_namespace(settings.database_url),
            upload_dir=settings.upload_dir,
            bucket=TEST_BUCKET,
            client=storage.s3_client(settings),
        )
        use_storage.append(store)
        return store

    def test_an_upload_is_503_and_leaves_nothing(
        self,
        client: TestClient,
        alice: AuthUser,
        unreachable: storage.S3Storage,
    ) -> None:
        task_id = make_task(client, alice)
        response = client.post(
            f"/tasks/{task_id}/files", files={"file": ("a.pdf", PDF)}, headers=alice.headers
        )
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "service_unavailable"
        assert "retry-after" in response.headers
        assert client.get(f"/tasks/{task_id}/files", headers=alice.headers).json() == []
        assert list(unreachable.temp_files()) == []

    def test_a_download_is_503(
        self,
        client: TestClient,
        alice: AuthUser,
        s3_storage: storage.S3Storage,
        use_storage: list[storage.Storage],
        unreachable: storage.S3Storage,
    ) -> None:
        use_storage.append(s3_storage)
        file_id = upload(client, alice, make_task(client, alice), "a.pdf")
        use_storage.append(unreachable)
        response = client.get(f"/files/{file_id}", headers=alice.headers)
        assert response.status_code == 503
        assert response.json()["code"] == "service_unavailable"
