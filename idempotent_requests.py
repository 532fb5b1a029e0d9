"""Idempotency-Key over HTTP: parse the header, replay a stored result, store a new one.

A route that accepts the header depends on `Idempotency` (JSON bodies: the key is claimed
before the route runs) or `UploadIdempotency` (uploads: claimed once the file's hash is known),
and ends with `return idempotency.respond(...)`, which stores the serialized 2xx answer in the
request's transaction. A replay is raised as an `EarlyResponse`: the transaction rolls back and
the route never runs, so nothing is done twice.
"""

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Response
from pydantic import TypeAdapter, WithJsonSchema
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from dependencies import CurrentUser, DbSession, SettingsDep
from exceptions import (
    EarlyResponse,
    IdempotencyInProgressError,
    IdempotencyKeyReusedError,
    InvalidIdempotencyKeyError,
    raises,
)
from responses import json_response
from services import idempotency as idempotency_service
from uploads import ReceivedUpload

MAX_KEY_LENGTH = 255
# Visible ASCII, unquoted.
_TOKEN_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# An RFC 8941 sf-string: printable ASCII in quotes, with only \" and \\ escaped.
_QUOTED_KEY = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_ESCAPE = re.compile(r'\\(["\\])')

# Unquoted keys cannot start with a quote: one that does is read as a quoted string.
IDEMPOTENCY_KEY_PATTERN = (
    r"^(?:[\x21\x23-\x7e][\x21-\x7e]{0,254}"
    r'|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\]){1,255}")$'
)
IdempotencyKeyHeader = Annotated[
    str | None,
    # Documented only: a key that breaks the pattern is a 400 `invalid_idempotency_key`.
    WithJsonSchema({"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN}),
    Header(
        alias="Idempotency-Key",
        description="Any unique value of 1-255 visible ASCII characters (a UUID, say), or the "
        "same as an RFC 8941 quoted string. Repeating the request with the same key and body "
        "within the retention time answers the stored result (`Idempotent-Replayed: true`) and "
        "does nothing again.",
    ),
]

SUCCESS_HEADERS: dict[str, Any] = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the stored result of an earlier request with the "
        "same `Idempotency-Key`; absent otherwise.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def parse_key(raw: str) -> str:
    """The key a header value names: `"k"` is the same key as `k`; 400 when malformed."""
    value = raw.strip(" \t")
    if value.startswith('"'):
        quoted = _QUOTED_KEY.fullmatch(value)
        key = _ESCAPE.sub(r"\1", quoted.group(1)) if quoted else ""
        if quoted and 1 <= len(key) <= MAX_KEY_LENGTH:
            return key
    elif _TOKEN_KEY.fullmatch(value):
        return value
    raise InvalidIdempotencyKeyError()


def replay_response(stored: idempotency_service.StoredResult) -> Response:
    """The stored answer to an earlier request with the same key, marked as a replay."""
    headers = {"Idempotent-Replayed": "true"}
    if stored.location:
        headers["Location"] = stored.location
    if stored.etag:
        headers["ETag"] = stored.etag
    return Response(
        stored.body.encode(),
        status_code=stored.status_code,
        headers=headers,
        media_type="application/json",
    )


@dataclass
class IdempotentRequest:
    """One request's Idempotency-Key (None without the header) and what it is bound to."""

    key: str | None
    owner_id: int
    method: str
    path: str
    session: Session
    ttl: timedelta
    fingerprint: str = field(default="", init=False)

    def claim(self, *body_parts: bytes) -> None:
        """Bind the key to this request; raises the stored answer if it has one."""
        if self.key is None:
            return
        self.fingerprint = idempotency_service.fingerprint(self.method, self.path, *body_parts)
        stored = idempotency_service.claim(
            self.session,
            owner_id=self.owner_id,
            key=self.key,
            fingerprint=self.fingerprint,
            ttl=self.ttl,
        )
        if stored is not None:
            raise EarlyResponse(replay_response(stored))

    def claim_upload(self, upload: ReceivedUpload) -> None:
        """An upload's identity is its file name and content hash, known once it is received."""
        self.claim(upload.original_filename.encode(), upload.sha256.encode())

    def respond(
        self, result: Any, *, adapter: TypeAdapter[Any], status_code: int, response: Response
    ) -> Response:
        """The route's answer, serialized in the route's own hop (`json_response`); with a
        key, also stored in this transaction."""
        answer = json_response(adapter, result, response.headers, status_code=status_code)
        if self.key is not None:
            idempotency_service.record(
                self.session,
                owner_id=self.owner_id,
                key=self.key,
                fingerprint=self.fingerprint,
                result=idempotency_service.StoredResult(
                    status_code=status_code,
                    body=bytes(answer.body).decode(),
                    location=response.headers.get("Location"),
                    etag=response.headers.get("ETag"),
                ),
            )
        return answer

    async def respond_async(
        self, result: Any, *, adapter: TypeAdapter[Any], status_code: int, response: Response
    ) -> Any:
        """`respond` for async routes: a thread-pool hop only when there is a key."""
        if self.key is None:
            return result
        return await run_in_threadpool(
            self.respond, result, adapter=adapter, status_code=status_code, response=response
        )


def _request_of(
    request: Request, user_id: int, session: Session, ttl_hours: float, raw_key: str | None
) -> IdempotentRequest:
    return IdempotentRequest(
        key=None if raw_key is None else parse_key(raw_key),
        owner_id=user_id,
        method=request.method,
        path=request.url.path,
        session=session,
        ttl=timedelta(hours=ttl_hours),
    )


@raises(InvalidIdempotencyKeyError, IdempotencyInProgressError, IdempotencyKeyReusedError)
async def idempotent_upload_request(
    request: Request,
    user: CurrentUser,
    session: DbSession,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> IdempotentRequest:
    """An upload's key, checked now and claimed by the route once the file is received."""
    return _request_of(request, user.id, session, settings.idempotency_ttl_hours, idempotency_key)


UploadIdempotency = Annotated[IdempotentRequest, Depends(idempotent_upload_request)]


@raises(InvalidIdempotencyKeyError, IdempotencyInProgressError, IdempotencyKeyReusedError)
async def idempotent_json_request(request: Request, keyed: UploadIdempotency) -> IdempotentRequest:
    """A JSON request's key, read as an upload's is and claimed before the route runs (async:
    no hop without a key)."""
    if keyed.key is not None:
        body = await request.body()
        await run_in_threadpool(keyed.claim, body)
    return keyed


Idempotency = Annotated[IdempotentRequest, Depends(idempotent_json_request)]
