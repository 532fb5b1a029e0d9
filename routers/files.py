"""File attachments: upload, list, download and delete, always the caller's own."""

import sys
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import TypeAdapter

import etags
import rate_limit_config as rate_limits
import uploads
from conditional import ETAG_HEADER, NOT_MODIFIED, IfNoneMatchHeader, not_modified
from dependencies import (
    READ_FILES,
    WRITE_FILES,
    CurrentUser,
    DbSession,
    FileStorage,
    OwnedTask,
    SettingsDep,
    TaskId,
)
from exceptions import (
    FileTooLargeError,
    StorageUnavailableError,
    StoredFileNotFoundError,
    TaskNotFoundError,
    TooManyFilesError,
    UnsupportedFileTypeError,
    UploadIncompleteError,
    UploadInvalidError,
)
from idempotent_requests import SUCCESS_HEADERS, UploadIdempotency
from models import MAX_ID, FileRead, error_responses, no_content
from services import files as file_service
from storage import LocalObject

router = APIRouter(tags=["files"])

FileId = Annotated[int, Path(ge=1, le=MAX_ID, description="Id of one of your files.")]

# The body is read as a stream, so FastAPI cannot describe it; this keeps Swagger's form.
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "contentMediaType": "application/octet-stream",
                            "description": "The file; its name's extension decides its type.",
                        }
                    },
                }
            }
        },
    }
}
_BINARY = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
_UPLOAD_RESPONSE: dict[int | str, dict[str, Any]] = {
    201: {
        "headers": {
            "Location": {
                "description": "The URL to download the file from.",
                "schema": {"type": "string", "examples": ["/files/5"]},
            },
            **SUCCESS_HEADERS,
        }
    }
}
# One binary media type: the bytes are sent with the type checked at upload (one of
# `uploads.CONTENT_TYPES`), and clients read them as bytes whatever it is.
_DOWNLOAD_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file's bytes, as an attachment, with the content type checked at "
        "upload: " + ", ".join(f"`{t}`" for t in uploads.CONTENT_TYPES) + ".",
        "content": {
            "application/octet-stream": {"schema": _BINARY},
            # The same bytes under their own type: read them as binary whatever it is.
            "*/*": {"schema": _BINARY},
        },
        "headers": {
            "Content-Disposition": {
                "description": "`attachment` with the file's name, as `filename` (ASCII) and "
                "`filename*` (RFC 6266).",
                "schema": {"type": "string"},
            },
            "Content-Length": {"description": "The size in bytes.", "schema": {"type": "integer"}},
            **ETAG_HEADER,
        },
    },
    302: {
        "description": "With `S3_PRESIGN_SECONDS` set: the bytes are at the presigned URL in "
        "`Location`, valid that long, served with the same type and download name.",
        "headers": {
            "Location": {"description": "The presigned URL.", "schema": {"type": "string"}}
        },
    },
    **NOT_MODIFIED,
}
_FILE = TypeAdapter(FileRead)
# Built with the file's row; kept importable here, where it is sent.
content_disposition = file_service.content_disposition
# An upload is counted while it streams to disk and refused past MAX_UPLOAD_BYTES (413
# file_too_large, declared or streamed): the general MAX_BODY_BYTES cap is lifted for it.
_UPLOAD_BOUNDS_ITSELF = sys.maxsize


@router.post(
    "/tasks/{task_id}/files",
    status_code=status.HTTP_201_CREATED,
    response_model=FileRead,
    responses={
        **_UPLOAD_RESPONSE,
        **error_responses(
            TaskNotFoundError,
            UploadIncompleteError,
            TooManyFilesError,
            FileTooLargeError,
            UnsupportedFileTypeError,
            UploadInvalidError,
            StorageUnavailableError,
        ),
    },
    openapi_extra=_UPLOAD_BODY,
    summary="Upload a file",
    max_body_size=_UPLOAD_BOUNDS_ITSELF,
    dependencies=[WRITE_FILES],
)
@rate_limits.rate_limited(rate_limits.UPLOAD)
async def upload_file(
    request: Request,
    idempotency: UploadIdempotency,
    task_id: TaskId,
    user: CurrentUser,
    session: DbSession,
    settings: SettingsDep,
    storage: FileStorage,
    response: Response,
) -> Any:
    """Attach a file to one of your tasks: multipart/form-data with one part named `file`."""
    max_files = settings.max_files_per_task
    target = await file_service.check_room_for_file(
        session, owner_id=user.id, task_id=task_id, max_files=max_files
    )
    async with uploads.receive_upload(
        headers=request.headers,
        body=request.stream(),
        upload_dir=storage.temp_dir,
        limit=settings.max_upload_bytes,
    ) as upload:
        row = await file_service.attach_upload(
            session,
            target=target,
            upload=upload,
            storage=storage,
            max_files=max_files,
            before_attach=idempotency.claim_upload,
        )
    response.headers["Location"] = f"/files/{row.id}"
    return await idempotency.respond_async(row, adapter=_FILE, status_code=201, response=response)


@router.get(
    "/tasks/{task_id}/files",
    response_model=list[FileRead],
    summary="List a task's files",
    dependencies=[READ_FILES],
)
def list_files(task: OwnedTask, session: DbSession) -> Any:
    """The files attached to one of your tasks, oldest first."""
    return file_service.list_files(session, task=task)


@router.get(
    "/files/{file_id}",
    response_class=FileResponse,
    responses={
        **_DOWNLOAD_RESPONSE,
        **error_responses(StoredFileNotFoundError, StorageUnavailableError),
    },
    summary="Download a file",
    dependencies=[READ_FILES],
)
def download_file(
    file_id: FileId,
    user: CurrentUser,
    session: DbSession,
    storage: FileStorage,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    """Download one of your files (or a redirect to it); its `ETag` is its sha256."""
    found = file_service.prepare_download(
        session, owner_id=user.id, file_id=file_id, storage=storage
    )
    etag = etags.file_etag(found.sha256)
    if (unchanged := not_modified(etag, if_none_match)) is not None:
        return unchanged
    if isinstance(found.body, file_service.Redirect):
        # The URL is a credential for a while: no cache keeps it.
        return RedirectResponse(
            found.body.url, status_code=302, headers={"Cache-Control": "no-store"}
        )
    headers = {
        "Content-Disposition": content_disposition(found.filename),
        # The stored type was checked at upload; never let a browser guess another.
        "X-Content-Type-Options": "nosniff",
        "ETag": etag,
    }
    if isinstance(found.body, LocalObject):
        return FileResponse(
            found.body.path,
            media_type=found.content_type,
            stat_result=found.body.stat,
            headers=headers,
        )
    return StreamingResponse(
        found.body.chunks,
        media_type=found.content_type,
        headers={**headers, "Content-Length": str(found.body.size)},
    )


@router.delete(
    "/files/{file_id}",
    **no_content(StoredFileNotFoundError),
    summary="Delete a file",
    dependencies=[WRITE_FILES],
)
def delete_file(file_id: FileId, user: CurrentUser, session: DbSession) -> None:
    """Delete one of your files; its bytes are removed after the response."""
    file_service.delete_file(session, owner_id=user.id, file_id=file_id)
