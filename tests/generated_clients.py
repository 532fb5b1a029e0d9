"""Shared by the tests of clients generated from the OpenAPI document (Python and TypeScript)."""

from fastapi.testclient import TestClient


def served_openapi_document() -> bytes:
    """`/openapi.json` as the app under test serves it, for a generator to read offline."""
    from main import create_app
    from tests.conftest import RESOURCES

    with TestClient(create_app(resources=RESOURCES)) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    document: bytes = response.content
    return document
