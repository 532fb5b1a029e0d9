"""The OpenAPI description and the docs pages that render it, without a browser."""

import re
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from fastapi import Body, Depends, FastAPI
from fastapi.security import OAuth2PasswordBearer
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from exceptions import InvalidTokenError, NotAuthenticatedError, TaskNotFoundError, raises
from main import VERSION
from models import error_responses
from openapi_docs import DOCS_CONTENT_SECURITY_POLICY
from openapi_schema import OPENAPI_TAGS, install_openapi, operation_id

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
TAG_ORDER = ["auth", "tasks", "tags", "files", "operations"]
PROBLEM_REF = "#/components/schemas/Problem"
# Paths anyone may call; everything else needs a bearer token.
PUBLIC_PATHS = {"/", "/auth/register", "/auth/login", "/health", "/health/ready"}


@pytest.fixture(scope="module")
def spec(_client: TestClient) -> dict[str, Any]:
    response = _client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, path_item in spec["paths"].items():
        for method, operation in path_item.items():
            if method in HTTP_METHODS:
                yield f"{method.upper()} {path}", operation


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def schema_validator(spec: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    # Wrap the schema in a document holding the components, so its `$ref`s resolve.
    return Draft202012Validator({**schema, "components": spec["components"]})


def is_binary_upload(spec: dict[str, Any], media_type: str, media: dict[str, Any]) -> bool:
    if resolve(spec, media.get("schema", {})).get("format") == "binary":
        return True  # raw bytes, e.g. a download
    if media_type != "multipart/form-data":
        return False
    properties = resolve(spec, media.get("schema", {})).get("properties", {}).values()
    return any(prop.get("format") == "binary" or "contentMediaType" in prop for prop in properties)


# --- the document as a whole ---------------------------------------------------------------


def test_openapi_is_a_valid_openapi_3_1_document(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    validate(spec)


def test_every_reference_resolves(spec: dict[str, Any]) -> None:
    prefix = "#/components/schemas/"
    schemas = spec["components"]["schemas"]
    dangling = {ref for ref in refs(spec) if ref.removeprefix(prefix) not in schemas}
    assert not dangling


def test_info_names_the_service_version_and_what_it_does(spec: dict[str, Any]) -> None:
    assert spec["info"]["title"] == "Task Manager API"
    assert spec["info"]["version"] == VERSION
    assert "problem" in spec["info"]["description"]


def test_tags_are_described_in_reading_order(spec: dict[str, Any]) -> None:
    assert [tag["name"] for tag in spec["tags"]] == TAG_ORDER
    assert all(tag["description"] for tag in spec["tags"])


def test_security_scheme_is_the_oauth2_password_flow_against_login(
    spec: dict[str, Any],
) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert len(schemes) == 1
    (scheme,) = schemes.values()
    assert scheme["type"] == "oauth2"
    assert scheme["flows"]["password"]["tokenUrl"] == "/auth/login"
    assert scheme["description"]


# --- every operation -----------------------------------------------------------------------


def test_every_operation_has_one_summary_line_a_description_and_a_known_tag(
    spec: dict[str, Any],
) -> None:
    for name, operation in operations(spec):
        assert operation["summary"].strip(), name
        assert "\n" not in operation["summary"], name
        assert operation["description"].strip(), name
        assert len(operation["tags"]) == 1, name
        assert operation["tags"][0] in TAG_ORDER, name


def test_routes_are_grouped_by_what_they_act_on(spec: dict[str, Any]) -> None:
    for name, operation in operations(spec):
        path = name.split(" ", 1)[1]
        segments = path.strip("/").split("/")
        if "tags" in segments:
            expected = "tags"
        elif "files" in segments:
            expected = "files"
        elif segments[0] in ("auth", "tasks"):
            expected = segments[0]
        else:
            expected = "operations"
        assert operation["tags"] == [expected], name


def test_operations_needing_a_token_declare_the_security_scheme(spec: dict[str, Any]) -> None:
    (scheme_name,) = spec["components"]["securitySchemes"]
    for name, operation in operations(spec):
        path = name.split(" ", 1)[1]
        if path in PUBLIC_PATHS:
            # Explicitly public: generated clients send no credentials.
            assert operation["security"] == [], name
        else:
            assert operation.get("security") == [{scheme_name: []}], name
            assert "401" in operation["responses"], name


def test_every_operation_documents_its_errors_as_problem_documents(
    spec: dict[str, Any],
) -> None:
    problem = spec["components"]["schemas"]["Problem"]
    for name, operation in operations(spec):
        errors = {
            status: response
            for status, response in operation["responses"].items()
            if int(status) >= 400
        }
        assert "500" in errors, name
        for status, response in errors.items():
            where = f"{name} {status}"
            assert "application/problem+json" in response["content"], where
            media = response["content"]["application/problem+json"]
            assert media["schema"] == {"$ref": PROBLEM_REF}, where
            assert media["examples"], where
            for key, example in media["examples"].items():
                code = example["value"]["code"]
                assert re.fullmatch(r"[a-z][a-z_]*", key), where
                assert re.fullmatch(r"[a-z][a-z_]*", code), where
                assert example["value"]["status"] == int(status), where
                schema_validator(spec, problem).validate(example["value"])
                assert f"`{code}`" in response["description"], where
                assert f"`{code}`" in operation["description"], where


def test_only_readiness_sends_an_error_status_in_another_shape(spec: dict[str, Any]) -> None:
    ready = spec["paths"]["/health/ready"]["get"]["responses"]["503"]["content"]
    assert ready["application/json"]["schema"] == {"$ref": "#/components/schemas/Readiness"}
    for name, operation in operations(spec):
        for status, response in operation["responses"].items():
            if int(status) >= 400 and (name, status) != ("GET /health/ready", "503"):
                assert list(response["content"]) == ["application/problem+json"], name


def test_error_codes_are_specific_to_the_operation(spec: dict[str, Any]) -> None:
    def codes(path: str, method: str, status: str) -> list[str]:
        response = spec["paths"][path][method]["responses"][status]
        return list(response["content"]["application/problem+json"]["examples"])

    assert codes("/auth/login", "post", "401") == ["invalid_credentials"]
    assert codes("/auth/register", "post", "409") == ["duplicate_username", "duplicate_email"]
    assert codes("/auth/me", "get", "401") == ["not_authenticated", "invalid_token"]
    assert codes("/tasks/{task_id}", "get", "404") == ["task_not_found"]
    assert codes("/tasks/{task_id}", "patch", "400") == ["empty_update"]
    assert codes("/tasks", "post", "422") == ["validation_error"]


def test_routes_added_later_are_completed_the_same_way() -> None:
    app = FastAPI(
        docs_url=None,
        redoc_url=None,
        openapi_tags=OPENAPI_TAGS,
        generate_unique_id_function=operation_id,
    )
    install_openapi(app)
    token = OAuth2PasswordBearer(tokenUrl="/auth/login")

    @raises(NotAuthenticatedError, InvalidTokenError)
    def current_user(token: Annotated[str, Depends(token)]) -> str:
        return token

    @raises(TaskNotFoundError)
    def owned(task_id: int, _: Annotated[str, Depends(current_user)]) -> int:
        return task_id

    @app.post(
        "/tasks/{task_id}/tags",
        tags=["tags"],
        summary="Add tags to a task",
        responses=error_responses(TaskNotFoundError),
    )
    def add_tags(
        task: Annotated[int, Depends(owned)],
        tags: Annotated[list[str], Body(examples=[["home"]])],
    ) -> list[str]:
        """Add tags to a task; tags it has already stay."""
        return tags

    @app.get("/health", tags=["operations"], summary="Health")
    def health() -> int:
        return 1

    spec = app.openapi()
    validate(spec)
    tags = spec["paths"]["/tasks/{task_id}/tags"]["post"]
    assert tags["operationId"] == "add_tags"
    assert tags["description"].startswith("Add tags to a task; tags it has already stay.")
    assert tags["requestBody"]["content"]["application/json"]["example"] == ["home"]
    assert list(tags["responses"]) == ["200", "401", "404", "413", "422", "429", "500"]
    codes = tags["responses"]["401"]["content"]["application/problem+json"]["examples"]
    assert list(codes) == ["not_authenticated", "invalid_token"]
    for status in ("401", "404", "422"):
        assert list(tags["responses"][status]["content"]) == ["application/problem+json"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    probe = spec["paths"]["/health"]["get"]
    assert probe["security"] == []
    assert probe["description"].startswith("Health\n\n**Errors**")
    assert list(probe["responses"]) == ["200", "413", "500"]


def test_a_route_documenting_an_error_status_without_its_class_is_refused() -> None:
    app = FastAPI()
    install_openapi(app)

    @app.get("/things", responses={404: {"description": "Not found"}})
    def things() -> int:
        return 1

    with pytest.raises(ValueError, match="without an error class"):
        app.openapi()


def test_error_responses_takes_error_classes_only() -> None:
    with pytest.raises(TypeError, match="error classes"):
        error_responses(404)  # type: ignore[arg-type]


def test_fastapi_validation_error_schema_is_gone(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "ValidationError" not in spec["components"]["schemas"]


def test_request_bodies_and_success_responses_have_valid_examples(
    spec: dict[str, Any],
) -> None:
    for name, operation in operations(spec):
        bodies = [("request", operation.get("requestBody", {}))]
        bodies += [
            (status, response)
            for status, response in operation["responses"].items()
            if int(status) < 400
        ]
        for label, body in bodies:
            for media_type, media in body.get("content", {}).items():
                where = f"{name} {label} {media_type}"
                if is_binary_upload(spec, media_type, media) or "schema" not in media:
                    continue  # an upload or raw bytes: an example would be noise
                assert "example" in media, where
                schema_validator(spec, media["schema"]).validate(media["example"])


def test_every_response_documents_the_request_id_header(spec: dict[str, Any]) -> None:
    for name, operation in operations(spec):
        for status, response in operation["responses"].items():
            assert "X-Request-ID" in response.get("headers", {}), f"{name} {status}"


# --- the docs pages ------------------------------------------------------------------------

ASSET_URL = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_service(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == DOCS_CONTENT_SECURITY_POLICY
    assets = ASSET_URL.findall(response.text)
    assert any(asset.endswith(".js") for asset in assets)
    assert "http://" not in response.text
    assert "https://" not in response.text
    for asset in assets:
        assert asset.startswith("/"), asset
        fetched = client.get(asset)
        assert fetched.status_code == 200, asset
        assert fetched.content


def test_docs_page_points_swagger_ui_at_the_document_and_the_redirect(
    client: TestClient,
) -> None:
    page = client.get("/docs").text
    assert "url: '/openapi.json'" in page
    assert '"validatorUrl": null' in page
    redirect = client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200
    assert "swaggerUIRedirectOauth2" in redirect.text


def test_docs_pages_are_not_operations(spec: dict[str, Any]) -> None:
    assert not any(path.startswith(("/docs", "/redoc")) for path in spec["paths"])


def test_content_security_policy_keeps_the_docs_on_this_service() -> None:
    directives = dict(
        directive.split(" ", 1) for directive in DOCS_CONTENT_SECURITY_POLICY.split("; ")
    )
    for name in ("default-src", "img-src", "connect-src", "font-src"):
        sources = directives[name].split()
        assert all(source in ("'self'", "data:") for source in sources), name
