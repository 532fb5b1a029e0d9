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
from models import TaskListParams, error_responses
from openapi_docs import DOCS_CONTENT_SECURITY_POLICY
from openapi_schema import OPENAPI_TAGS, install_openapi, operation_id

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
TAG_ORDER = ["auth", "tasks", "tags", "files", "operations"]
PROBLEM_REF = "#/components/schemas/Problem"
# Paths anyone may call; everything else needs a bearer token.
PUBLIC_PATHS = {
    "/",
    "/auth/register",
    "/auth/login",
    "/auth/refresh",
    "/auth/verify-email",
    "/auth/password-reset/request",
    "/auth/password-reset",
    "/health",
    "/health/ready",
}
PAT_SCOPES = {"tasks:read", "tasks:write", "files:read", "files:write"}


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


def test_security_schemes_are_the_password_flow_and_a_pasted_bearer_token(
    spec: dict[str, Any],
) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert set(schemes) == {"OAuth2PasswordBearer", "PersonalAccessToken"}
    password = schemes["OAuth2PasswordBearer"]
    assert password["type"] == "oauth2"
    assert password["flows"]["password"]["tokenUrl"] == "/auth/login"
    assert set(password["flows"]["password"]["scopes"]) == {*PAT_SCOPES, "account"}
    assert password["description"]
    pasted = schemes["PersonalAccessToken"]
    assert (pasted["type"], pasted["scheme"]) == ("http", "bearer")
    assert "tmpat_" in pasted["description"]


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
    for name, operation in operations(spec):
        path = name.split(" ", 1)[1]
        if path in PUBLIC_PATHS:
            # Explicitly public: generated clients send no credentials.
            assert operation["security"] == [], name
            continue
        security = operation.get("security")
        assert security, name
        assert "401" in operation["responses"], name
        (scopes,) = security[0].values()
        assert list(security[0]) == ["OAuth2PasswordBearer"], name
        if name == "GET /auth/me":
            assert scopes == [], name
        elif path.startswith("/auth/"):
            # Account operations: login sessions only, never a personal access token.
            assert security == [{"OAuth2PasswordBearer": ["account"]}], name
        else:
            assert len(scopes) == 1, name
            assert set(scopes) <= PAT_SCOPES, name
        if scopes:
            assert "403" in operation["responses"], name
        if "account" not in scopes:
            assert security[1:] == [{"PersonalAccessToken": scopes}], name


def test_each_route_needs_the_scope_of_what_it_touches(spec: dict[str, Any]) -> None:
    for name, operation in operations(spec):
        method, path = name.split(" ", 1)
        if not path.startswith(("/tasks", "/files")):
            continue
        kind = "files" if "/files" in path else "tasks"
        access = "read" if method == "GET" else "write"
        assert operation["security"][0] == {"OAuth2PasswordBearer": [f"{kind}:{access}"]}, name


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
    def codes(path: str, method: str, status: str) -> set[str]:
        return error_codes(spec["paths"][path][method], status)

    assert codes("/auth/login", "post", "401") == {"invalid_credentials"}
    assert codes("/auth/register", "post", "409") == {"duplicate_username", "duplicate_email"}
    assert codes("/auth/me", "get", "401") == {"not_authenticated", "invalid_token"}
    assert codes("/tasks/{task_id}", "get", "404") == {"task_not_found"}
    assert codes("/tasks/{task_id}", "patch", "400") == {"empty_update"}
    assert codes("/tasks", "post", "422") == {"validation_error", "idempotency_key_reused"}
    assert codes("/tasks", "post", "400") == {"invalid_idempotency_key"}
    assert codes("/tasks/{task_id}", "get", "422") == {"validation_error"}


def test_account_error_codes_are_documented_where_they_occur(spec: dict[str, Any]) -> None:
    def codes(path: str, method: str, status: str) -> set[str]:
        return error_codes(spec["paths"][path][method], status)

    assert codes("/auth/refresh", "post", "401") == {"invalid_token", "refresh_token_reused"}
    assert codes("/auth/password", "post", "400") == {"wrong_password"}
    assert codes("/auth/me", "delete", "400") == {"wrong_password"}
    for path in ("/auth/register", "/auth/password", "/auth/password-reset"):
        assert codes(path, "post", "422") == {"validation_error", "weak_password"}, path
    for path in ("/auth/verify-email", "/auth/password-reset"):
        assert codes(path, "post", "400") == {"invalid_or_expired_token"}, path
    assert codes("/auth/sessions/{session_id}", "delete", "404") == {"session_not_found"}
    assert codes("/auth/tokens/{token_id}", "delete", "404") == {"token_not_found"}
    assert codes("/tasks", "get", "403") == {"insufficient_scope"}
    assert codes("/auth/logout", "post", "403") == {"insufficient_scope"}
    assert "403" not in spec["paths"]["/auth/me"]["get"]["responses"]


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


# --- safe writes: conditional requests and Idempotency-Key ----------------------------------

IDEMPOTENT = [
    ("/tasks", "post"),
    ("/tasks/bulk", "patch"),
    ("/tasks/{task_id}/tags", "post"),
    ("/tasks/{task_id}/files", "post"),
]
IF_MATCH = [
    ("/tasks/{task_id}", "patch"),
    ("/tasks/{task_id}", "delete"),
    ("/tasks/{task_id}/tags", "post"),
    ("/tasks/{task_id}/tags/{tag}", "delete"),
]
IF_NONE_MATCH = [
    ("/tasks", "get"),
    ("/tasks/stats", "get"),
    ("/tasks/{task_id}", "get"),
    ("/files/{file_id}", "get"),
]


def header_parameters(operation: dict[str, Any]) -> set[str]:
    return {p["name"] for p in operation.get("parameters", []) if p["in"] == "header"}


def error_codes(operation: dict[str, Any], status: str) -> set[str]:
    """The codes documented for one status (an example per error; errors may share a code)."""
    examples = operation["responses"][status]["content"]["application/problem+json"]["examples"]
    return {example["value"]["code"] for example in examples.values()}


def test_idempotency_key_is_a_header_parameter_with_its_errors(spec: dict[str, Any]) -> None:
    for path, method in IDEMPOTENT:
        operation = spec["paths"][path][method]
        where = f"{method} {path}"
        assert "Idempotency-Key" in header_parameters(operation), where
        assert "invalid_idempotency_key" in error_codes(operation, "400"), where
        assert "idempotency_in_progress" in error_codes(operation, "409"), where
        assert "Retry-After" in operation["responses"]["409"]["headers"], where
        assert "idempotency_key_reused" in error_codes(operation, "422"), where
        success = next(s for s in operation["responses"] if s.startswith("2"))
        assert "Idempotent-Replayed" in operation["responses"][success]["headers"], where
    others = [
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if (path, method) not in IDEMPOTENT
    ]
    for path, method in others:
        operation = spec["paths"][path][method]
        assert "Idempotency-Key" not in header_parameters(operation), f"{method} {path}"
        for status in ("400", "409", "422"):
            if status in operation["responses"]:
                assert "idempotency_key_reused" not in error_codes(operation, status)


def test_if_match_is_a_header_parameter_with_412_and_428(spec: dict[str, Any]) -> None:
    for path, method in IF_MATCH:
        operation = spec["paths"][path][method]
        where = f"{method} {path}"
        assert "If-Match" in header_parameters(operation), where
        assert error_codes(operation, "412") == {"precondition_failed"}, where
        assert "ETag" in operation["responses"]["412"]["headers"], where
        assert error_codes(operation, "428") == {"precondition_required"}, where
    bulk = spec["paths"]["/tasks/bulk"]["patch"]
    assert error_codes(bulk, "412") == {"precondition_failed"}
    example = bulk["responses"]["412"]["content"]["application/problem+json"]["examples"]
    assert example["bulk_precondition_failed"]["value"]["conflicts"]
    bulk_body = resolve(spec, bulk["requestBody"]["content"]["application/json"]["schema"])
    assert "if_match" in bulk_body["properties"]


def test_conditional_reads_document_304_and_the_etag(spec: dict[str, Any]) -> None:
    for path, method in IF_NONE_MATCH:
        operation = spec["paths"][path][method]
        where = f"{method} {path}"
        assert "If-None-Match" in header_parameters(operation), where
        assert "ETag" in operation["responses"]["304"]["headers"], where
        assert "content" not in operation["responses"]["304"], where
        assert "ETag" in operation["responses"]["200"]["headers"], where
    for path, method in [("/tasks", "post"), *IF_MATCH]:
        operation = spec["paths"][path][method]
        success = next(s for s in operation["responses"] if s.startswith("2"))
        if success != "204":
            assert "ETag" in operation["responses"][success]["headers"], f"{method} {path}"


def test_task_schema_has_the_version(spec: dict[str, Any]) -> None:
    task = spec["components"]["schemas"]["TaskRead"]
    assert "version" in task["required"]
    assert task["properties"]["version"]["type"] == "integer"


def test_the_list_documents_every_filter_as_a_query_parameter(spec: dict[str, Any]) -> None:
    """The list validates its query string itself (query_models.py); its document still lists
    each field of the model as a query parameter, before the If-None-Match header."""
    parameters = spec["paths"]["/tasks"]["get"]["parameters"]
    assert [(p["name"], p["in"]) for p in parameters] == [
        *((name, "query") for name in TaskListParams.model_fields),
        ("If-None-Match", "header"),
    ]
    by_name = {p["name"]: p for p in parameters}
    assert by_name["tag"]["schema"]["type"] == "array"
    assert by_name["limit"]["schema"] == {
        "type": "integer",
        "maximum": 100,
        "minimum": 1,
        "default": 100,
        "description": "Page size.",
        "title": "Limit",
    }
    priority = resolve(spec, by_name["priority"]["schema"]["anyOf"][0])
    assert priority["enum"] == ["low", "medium", "high"]
