"""Pydantic request and response schemas: the shapes of the HTTP API."""

import json
import re
from collections.abc import Iterable
from datetime import date, datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal, Self

from fastapi import Response, status
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    JsonValue,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from enums import Priority, Scope
from exceptions import EXAMPLE_REQUEST_ID, PROBLEM_MEDIA_TYPE, AppError

MAX_ID = 2**31 - 1
MAX_TAGS_PER_TASK = 20
MAX_TAG_LENGTH = 50

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{3,50}$")

# The rules below are checked in Python (after trimming and lower-casing); these patterns say
# the same in the schema, so that clients and generated tests know what the server accepts.
# Whitespace is spelled out as exactly what `str.strip()` trims: regex engines disagree on `\s`.
_SPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_TEXT = r"[^\x00]"
_WORD = rf"[^{_SPACE}\x00]"
TITLE_PATTERN = rf"^[{_SPACE}]*{_WORD}(?:{_TEXT}{{0,198}}{_WORD})?[{_SPACE}]*$"
DESCRIPTION_PATTERN = rf"^[{_SPACE}]*(?:{_WORD}(?:{_TEXT}{{0,998}}{_WORD})?)?[{_SPACE}]*$"
TAG_PATTERN = rf"^[{_SPACE}]*[^{_SPACE}/\x00](?:[^/\x00]{{0,48}}[^{_SPACE}/\x00])?[{_SPACE}]*$"
TOKEN_NAME_PATTERN = rf"^[{_SPACE}]*{_WORD}(?:{_TEXT}{{0,98}}{_WORD})?[{_SPACE}]*$"
NO_NUL_PATTERN = r"^[^\x00]*$"
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def is_storable(value: str) -> bool:
    """Whether every database can store and compare this text."""
    try:
        storable_text(value)
    except ValueError:
        return False
    return True


def storable_text(value: str) -> str:
    """Reject text no database can store: NUL bytes and unpaired surrogates."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _title(value: str) -> str:
    value = storable_text(value).strip()
    if not 1 <= len(value) <= 200:
        raise ValueError("must be 1 to 200 characters after trimming whitespace")
    return value


def _description(value: str | None) -> str | None:
    if value is None:
        return None
    value = storable_text(value).strip()
    if len(value) > 1000:
        raise ValueError("must be at most 1000 characters after trimming whitespace")
    return value or None


def normalize_tag(value: str) -> str:
    """Trim and lower-case a tag, enforcing the tag rules of the API."""
    value = storable_text(value).strip().lower()
    if not 1 <= len(value) <= MAX_TAG_LENGTH:
        raise ValueError(f"a tag must be 1 to {MAX_TAG_LENGTH} characters after trimming")
    if "/" in value:
        raise ValueError("a tag must not contain '/'")
    return value


def _unique_tags(values: list[str]) -> list[str]:
    unique = list(dict.fromkeys(values))
    if len(unique) > MAX_TAGS_PER_TASK:
        raise ValueError(f"a task has at most {MAX_TAGS_PER_TASK} tags")
    return unique


def _date_from_string(value: Any) -> Any:
    # JSON has no date type: a YYYY-MM-DD string (or a date from Python callers), never a
    # number or a timestamp ("0" would otherwise be 1970-01-01).
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and ISO_DATE.fullmatch(value):
        return value
    raise ValueError("must be a date string in YYYY-MM-DD form")


Title = Annotated[
    StrictStr, AfterValidator(_title), WithJsonSchema({"type": "string", "pattern": TITLE_PATTERN})
]
Description = Annotated[
    StrictStr | None,
    AfterValidator(_description),
    WithJsonSchema(
        {"anyOf": [{"type": "string", "pattern": DESCRIPTION_PATTERN}, {"type": "null"}]}
    ),
]
Tag = Annotated[
    StrictStr,
    AfterValidator(normalize_tag),
    WithJsonSchema({"type": "string", "pattern": TAG_PATTERN}),
]
# At most as many as a task may hold: so a schema-valid list is one the server accepts.
TagList = Annotated[list[Tag], Field(max_length=MAX_TAGS_PER_TASK), AfterValidator(_unique_tags)]
IsoDate = Annotated[date, BeforeValidator(_date_from_string)]
DueDate = Annotated[
    date | None, BeforeValidator(lambda v: v if v is None else _date_from_string(v))
]
ResourceId = Annotated[int, Field(ge=1, le=MAX_ID)]


def _whole_float_as_int(value: Any) -> Any:
    # JSON Schema's `integer` includes 30.0; a fraction, a string or a bool stays refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer as JSON Schema means it: `30` or `30.0`, never `"30"` or `30.5`.
WholeNumber = Annotated[StrictInt, BeforeValidator(_whole_float_as_int)]


class StrictBody(BaseModel):
    """Request bodies: unknown fields are errors, JSON types are not coerced."""

    model_config = ConfigDict(extra="forbid")


def _problem_schema(schema: dict[str, Any]) -> None:
    # The members below are absent unless they apply: a `default` would tell generated clients
    # (openapi-typescript) that every problem has them.
    for name in ("errors", "missing_ids", "conflicts"):
        schema["properties"][name].pop("default", None)


class Problem(BaseModel):
    """An RFC 9457 problem document: the body of every 4xx and 5xx response."""

    model_config = ConfigDict(json_schema_extra=_problem_schema)

    type: str = Field(default="about:blank", examples=["about:blank"])
    title: str = Field(examples=["Not Found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["Task 17 not found"])
    code: str = Field(examples=["task_not_found"])
    request_id: str = Field(examples=["3f1c2a9e6b7d4e0f8a1b2c3d4e5f6a7b"])
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Every validation error at once (422 only)."
    )
    missing_ids: list[int] | None = Field(
        default=None, description="Ids that do not exist or are not yours (bulk update only)."
    )
    conflicts: list[dict[str, Any]] | None = Field(
        default=None,
        description="Tasks whose `if_match` tag is not current, each with its current `etag` "
        "(bulk update 412 only).",
    )


# --- users and tokens ---------------------------------------------------------------------


class UserCreate(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "username": "alice",
                    "email": "alice@example.com",
                    "password": "correct horse battery",
                }
            ]
        }
    )

    username: StrictStr = Field(
        min_length=3,
        max_length=50,
        examples=["alice"],
        json_schema_extra={"pattern": USERNAME_PATTERN.pattern},
    )
    email: EmailStr = Field(max_length=320, examples=["alice@example.com"])
    password: StrictStr = Field(
        min_length=8,
        max_length=128,
        examples=["correct horse battery"],
        json_schema_extra={"pattern": NO_NUL_PATTERN},
    )

    @field_validator("username")
    @classmethod
    def _username_charset(cls, value: str) -> str:
        if not USERNAME_PATTERN.fullmatch(value):
            raise ValueError("must be 3 to 50 letters, digits, '_', '.' or '-'")
        return value

    @field_validator("email")
    @classmethod
    def _lower_email(cls, value: str) -> str:
        return storable_text(value).lower()

    @field_validator("password")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        return storable_text(value)


class LoginRequest(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"username": "alice", "password": "correct horse battery"}]}
    )

    # Deliberately unvalidated beyond type: any bad credential is a plain 401, never a 422.
    username: StrictStr = Field(max_length=1024, examples=["alice"])
    password: StrictStr = Field(max_length=1024, examples=["correct horse battery"])


class UserRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": 1,
                    "username": "alice",
                    "email": "alice@example.com",
                    "email_verified": False,
                    "created_at": "2026-01-15T09:30:00Z",
                }
            ]
        },
    )

    id: int
    username: str
    email: str
    email_verified: bool
    created_at: datetime


class Token(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
                    "token_type": "bearer",
                    "expires_in": 900,
                    "refresh_token": "tmrt_3q2-7wEvhT4bVn0mJ8kR1xYcZ5sLp9aQeDfGhUiOjNk",
                    "refresh_expires_in": 2592000,
                }
            ]
        }
    )

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the OAuth2 token type)
    expires_in: int = Field(description="Lifetime of the access token in seconds.")
    refresh_token: str = Field(
        description="Opaque; exchange it once at POST /auth/refresh for a new pair."
    )
    refresh_expires_in: int = Field(description="Lifetime of the refresh token in seconds.")


# --- accounts and sessions ---------------------------------------------------------------

# Presented secrets are looked up, never validated beyond type: a bad one is unknown, not a 422.
PresentedSecret = Annotated[StrictStr, Field(max_length=4096)]
NewPassword = Annotated[
    StrictStr,
    Field(min_length=8, max_length=128, examples=["a new passphrase"]),
    AfterValidator(storable_text),
]
CurrentPassword = Annotated[StrictStr, Field(max_length=1024, examples=["correct horse battery"])]


class Accepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"message": "A verification token is on its way to your e-mail address"}]
        }
    )

    message: str


class RefreshRequest(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"refresh_token": "tmrt_3q2-7wEvhT4bVn0mJ8kR1xYcZ5sLp9aQeDfGhUiOjNk"}]
        }
    )

    refresh_token: PresentedSecret


class SessionRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": 12,
                    "created_at": "2026-01-15T09:30:00Z",
                    "last_used_at": "2026-01-16T08:05:00Z",
                    "user_agent": "curl/8.5.0",
                    "current": True,
                }
            ]
        },
    )

    id: int
    created_at: datetime
    last_used_at: datetime = Field(description="When the session last got tokens.")
    user_agent: str | None
    current: bool = Field(description="Whether this is the session of the calling token.")


class PasswordChange(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"current_password": "correct horse battery", "new_password": "a new passphrase"}
            ]
        }
    )

    current_password: CurrentPassword
    new_password: NewPassword


class PasswordResetRequest(StrictBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"email": "alice@example.com"}]})

    email: EmailStr = Field(max_length=320)


class PasswordReset(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "token": "Yp0d2Xr7mQ1vK9sT4wZ8bN3cF6gH5jL2aE0uI7oR1yW",
                    "new_password": "a new passphrase",
                }
            ]
        }
    )

    token: PresentedSecret
    new_password: NewPassword


class EmailVerification(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"token": "Yp0d2Xr7mQ1vK9sT4wZ8bN3cF6gH5jL2aE0uI7oR1yW"}]}
    )

    token: PresentedSecret


class AccountDeletion(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"password": "correct horse battery"}]}
    )

    password: CurrentPassword


def _token_name(value: str) -> str:
    value = storable_text(value).strip()
    if not 1 <= len(value) <= 100:
        raise ValueError("must be 1 to 100 characters after trimming whitespace")
    return value


def _scope_list(value: Any) -> Any:
    # Stored space-separated; given and shown as a list.
    return value.split() if isinstance(value, str) else value


class PersonalTokenCreate(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "backup script", "scopes": ["tasks:read"], "expires_in_days": 90}]
        }
    )

    name: Annotated[
        StrictStr,
        AfterValidator(_token_name),
        WithJsonSchema({"type": "string", "pattern": TOKEN_NAME_PATTERN}),
    ] = Field(examples=["backup script"])
    scopes: list[Scope] = Field(min_length=1, max_length=len(Scope), examples=[["tasks:read"]])
    expires_in_days: WholeNumber = Field(ge=1, le=365, description="Days until it expires.")

    @field_validator("scopes")
    @classmethod
    def _dedupe(cls, scopes: list[Scope]) -> list[Scope]:
        return [scope for scope in Scope if scope in scopes]


# The example token of the schemas below: as listed, and as shown once when created.
_PERSONAL_TOKEN_EXAMPLE: dict[str, JsonValue] = {
    "id": 3,
    "name": "backup script",
    "scopes": ["tasks:read"],
    "created_at": "2026-01-15T09:30:00Z",
    "expires_at": "2026-04-15T09:30:00Z",
}


class PersonalTokenRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [{**_PERSONAL_TOKEN_EXAMPLE, "last_used_at": "2026-01-16T08:05:00Z"}]
        },
    )

    id: int
    name: str
    scopes: Annotated[list[Scope], BeforeValidator(_scope_list)]
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None


class PersonalTokenCreated(PersonalTokenRead):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_PERSONAL_TOKEN_EXAMPLE,
                    "token": "tmpat_Kx8vQ2nR5tW1yB4cD7fG0hJ3kL6mN9pS2uV5xZ8aE1i",
                }
            ]
        },
    )

    # Never used yet; a default keeps the schema's null-free example valid.
    last_used_at: datetime | None = None
    token: str = Field(description="The secret: shown only in this response, never again.")


# --- tasks --------------------------------------------------------------------------------


def _create_schema(schema: dict[str, Any]) -> None:
    # A field left out takes its default. The default is told in words: generated clients
    # (openapi-typescript) read a schema `default` as "always present", i.e. required to send.
    for field_schema in schema["properties"].values():
        if "default" in field_schema:
            default = json.dumps(field_schema.pop("default"))
            field_schema["description"] = f"Optional; the default is `{default}`."
    schema["examples"] = [
        {
            "title": "Write the quarterly report",
            "description": "Numbers from finance first",
            "priority": "high",
            "due_date": "2026-12-31",
            "tags": ["work", "reports"],
            "completed": False,
        }
    ]


class TaskCreate(StrictBody):
    model_config = ConfigDict(json_schema_extra=_create_schema)

    title: Title = Field(examples=["Write the quarterly report"])
    description: Description = Field(default=None, examples=["Numbers from finance first"])
    priority: Priority = Priority.MEDIUM
    due_date: DueDate = Field(default=None, examples=["2026-12-31"])
    tags: TagList = Field(
        default_factory=list, examples=[["work", "reports"]], json_schema_extra={"default": []}
    )
    completed: StrictBool = False


def _update_schema(schema: dict[str, Any]) -> None:
    # An absent field is unchanged (no default to fill in), and at least one must be sent.
    for field_schema in schema["properties"].values():
        field_schema.pop("default", None)
    schema["minProperties"] = 1
    schema["examples"] = [{"completed": True, "priority": "low"}]


class TaskUpdate(StrictBody):
    """Any subset of the create fields; only the fields sent are changed."""

    model_config = ConfigDict(json_schema_extra=_update_schema)

    # Only `description` and `due_date` may be null; the others are absent or a value.
    title: Title | SkipJsonSchema[None] = Field(default=None, examples=["Write the annual report"])
    description: Description = None
    priority: Priority | SkipJsonSchema[None] = None
    due_date: DueDate = None
    tags: TagList | SkipJsonSchema[None] = None
    completed: StrictBool | SkipJsonSchema[None] = Field(default=None, examples=[True])

    @field_validator("title", "priority", "tags", "completed", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Absent means "unchanged"; an explicit null is only meaningful for nullable fields.
        if value is None:
            raise ValueError("may not be null")
        return value

    def changes(self) -> dict[str, Any]:
        """The fields the client sent, with their validated values."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class BulkTaskUpdate(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"task_ids": [1, 2, 3], "updates": {"completed": True}}]}
    )

    task_ids: list[ResourceId] = Field(min_length=1, max_length=100, examples=[[1, 2, 3]])
    updates: TaskUpdate
    if_match: dict[ResourceId, Annotated[StrictStr, Field(max_length=255)]] | None = Field(
        default=None,
        max_length=100,
        description="Optional preconditions: task id -> the ETag you last saw, exactly as the "
        "`ETag` header sent it. Any task whose tag is no longer current makes the whole update "
        "a 412 listing `conflicts`; every key must be one of `task_ids`.",
        examples=[{"1": '"3f2a9c0d1e4b5a6978c1d2e3"'}],
    )

    @model_validator(mode="after")
    def _dedupe_ids(self) -> Self:
        self.task_ids = list(dict.fromkeys(self.task_ids))
        return self

    @field_validator("if_match")
    @classmethod
    def _keys_are_task_ids(
        cls, value: dict[int, str] | None, info: ValidationInfo
    ) -> dict[int, str] | None:
        task_ids = info.data.get("task_ids")
        if value is None or task_ids is None:
            return value
        strangers = [task_id for task_id in value if task_id not in task_ids]
        if strangers:
            raise ValueError(
                "every key must be one of task_ids; not in task_ids: "
                + ", ".join(map(str, strangers))
            )
        return value


class TaskRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": 17,
                    "title": "Write the quarterly report",
                    "description": "Numbers from finance first",
                    "completed": False,
                    "priority": "high",
                    "due_date": "2026-12-31",
                    "tags": ["reports", "work"],
                    "created_at": "2026-01-15T09:30:00Z",
                    "updated_at": "2026-01-15T09:30:00Z",
                    "user_id": 1,
                    "version": 1,
                }
            ]
        },
    )

    id: int
    title: str
    description: str | None
    completed: bool
    priority: Priority
    due_date: date | None
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    user_id: int
    version: int = Field(
        description="1 for a new task, raised by every change to its fields or tags; the "
        "task's `ETag` changes with it."
    )


class TaskStats(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "total": 8,
                    "completed": 3,
                    "incomplete": 5,
                    "completion_rate": 0.375,
                    "overdue": 1,
                    "by_priority": {"low": 2, "medium": 4, "high": 2},
                    "by_tag": {"work": 5, "home": 2},
                }
            ]
        }
    )

    total: int
    completed: int
    incomplete: int
    completion_rate: float = Field(description="completed / total, rounded to 4 places.")
    overdue: int
    by_priority: dict[Priority, int]
    by_tag: dict[str, int]


# --- listing ---------------------------------------------------------------------------

SortField = Literal["id", "title", "priority", "completed", "created_at", "updated_at", "due_date"]
SearchText = Annotated[str, StringConstraints(max_length=1000), AfterValidator(storable_text)]
QueryTags = Annotated[
    list[
        Annotated[
            str,
            AfterValidator(normalize_tag),
            WithJsonSchema({"type": "string", "pattern": TAG_PATTERN}),
        ]
    ],
    AfterValidator(lambda tags: list(dict.fromkeys(tags))),
]


class TaskListParams(BaseModel):
    """The query parameters of GET /tasks; every filter given must hold (AND)."""

    model_config = ConfigDict(extra="forbid")

    completed: bool | None = Field(default=None, description="Only completed (or open) tasks.")
    priority: Priority | None = Field(default=None, description="Only tasks of this priority.")
    tag: QueryTags = Field(
        default_factory=list,
        max_length=MAX_TAGS_PER_TASK,
        description="Only tasks with this tag; repeat for tasks with all of these tags.",
    )
    overdue: bool | None = Field(
        default=None,
        description="true: open tasks due before today (UTC); false: every other task.",
    )
    search: SearchText | None = Field(
        default=None,
        description="Case-insensitive substring of the title or description, taken literally.",
    )
    due_before: IsoDate | None = Field(default=None, description="Due on or before this day.")
    due_after: IsoDate | None = Field(default=None, description="Due on or after this day.")
    created_before: IsoDate | None = Field(
        default=None, description="Created on or before this day (UTC)."
    )
    created_after: IsoDate | None = Field(
        default=None, description="Created on or after this day (UTC)."
    )
    sort_by: SortField = Field(default="id", description="`priority` sorts by rank.")
    sort_order: Literal["asc", "desc"] = Field(
        default="asc", description="Ties are broken by id in the same direction."
    )
    skip: int = Field(default=0, ge=0, le=MAX_ID, description="Tasks to skip.")
    limit: int = Field(default=100, ge=1, le=100, description="Page size.")


# --- files --------------------------------------------------------------------------------


class FileRead(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": 5,
                    "task_id": 17,
                    "original_filename": "report.pdf",
                    "content_type": "application/pdf",
                    "file_size": 48213,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "uploaded_at": "2026-01-15T09:45:00Z",
                }
            ]
        },
    )

    id: int
    task_id: int
    original_filename: str
    content_type: str
    file_size: int
    sha256: str
    uploaded_at: datetime


# --- operations ---------------------------------------------------------------------------


class RootInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"message": "Task Manager API", "status": "running", "version": "1.0.0"}]
        }
    )

    message: str
    status: str
    version: str


class Liveness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = "ok"


class ReadinessChecks(BaseModel):
    database: Literal["ok", "error"]
    cache: Literal["ok", "error", "disabled"]


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "degraded", "checks": {"database": "ok", "cache": "error"}}]
        }
    )

    status: Literal["ok", "degraded", "unavailable"]
    checks: ReadinessChecks

    @classmethod
    def of(cls, checks: ReadinessChecks) -> Self:
        """Unavailable without the database; degraded (still serving) without Redis."""
        if checks.database == "error":
            return cls(status="unavailable", checks=checks)
        return cls(status="degraded" if checks.cache == "error" else "ok", checks=checks)


# --- documented errors --------------------------------------------------------------------

PROBLEM_REF = "#/components/schemas/Problem"


class ErrorResponse(dict[str, Any]):
    """One status's OpenAPI response for these errors; keeps the classes for the builder."""

    def __init__(self, errors: Iterable[type[AppError]]) -> None:
        self.errors = tuple(dict.fromkeys(errors))
        super().__init__(problem_response_doc(self.errors))


def problem_response_doc(errors: tuple[type[AppError], ...]) -> dict[str, Any]:
    """The OpenAPI response object for errors of one status: every code, an example of each."""
    (status,) = {error.status_code for error in errors}
    codes = list(dict.fromkeys(error.code for error in errors))
    headers: dict[str, Any] = {}
    for error in errors:
        headers.update(error.response_headers)
    examples = {
        error.example_key(): {
            "summary": error.example_key(),
            "value": error.example().problem(EXAMPLE_REQUEST_ID),
        }
        for error in errors
    }
    response: dict[str, Any] = {
        "description": f"{HTTPStatus(status).phrase}: " + ", ".join(f"`{c}`" for c in codes),
        "content": {
            PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}, "examples": examples},
        },
    }
    if headers:
        response["headers"] = headers
    return response


def by_status(errors: Iterable[type[AppError]]) -> dict[int, list[type[AppError]]]:
    """Errors grouped by HTTP status, in status order, each group in declaration order."""
    groups: dict[int, list[type[AppError]]] = {}
    for error in errors:
        if not (isinstance(error, type) and issubclass(error, AppError)):
            raise TypeError(f"declare error classes from exceptions.py, not {error!r}")
        group = groups.setdefault(error.status_code, [])
        if error not in group:
            group.append(error)
    return dict(sorted(groups.items()))


def error_responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: the errors its own code can raise, grouped by status.

    `responses=error_responses(TaskNotFoundError, EmptyUpdateError)`. Errors of the route's
    dependencies (`raises(...)`) and the shared ones (401, 413, 422, 429, 500, 503) are added
    by `openapi_schema.complete_openapi`; list only what the route's services raise.
    """
    return {status: ErrorResponse(group) for status, group in by_status(errors).items()}


def no_content(*errors: type[AppError]) -> dict[str, Any]:
    """The keywords of a route that answers 204 without a body, with the errors its own code
    can raise (as `error_responses`): `@router.delete("/x/{x_id}", **no_content(XNotFound))`."""
    return {
        "status_code": status.HTTP_204_NO_CONTENT,
        "response_class": Response,
        "responses": error_responses(*errors),
    }
