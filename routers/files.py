"""File attachments: upload, list, download and delete, always the caller's own."""

import os
import re
import unicodedata
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, BackgroundTasks, Path, Request, Response, status
from fastapi.responses import FileResponse

import background_tasks
import rate_limit_config as rate_limits
from dependencies import READ_FILES, WRITE_FILES, CurrentUser, DbSession, OwnedTask, SettingsDep
from models import MAX_ID, FileRead, error_responses
from services import files as file_service

router = APIRouter(tags=["files"], responses=error_responses(401))

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
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}
_DOWNLOAD_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file's bytes, as an attachment, in the type checked at upload.",
        "content": {
            content_type: {"schema": {"type": "string", "format": "binary"}}
            for content_type in file_service.CONTENT_TYPES
        },
    }
}
_UNSAFE_IN_QUOTES = re.compile(r'[^\x20-\x7e]|["\\]')


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact name in RFC 6266 `filename*`."""
    stem, extension = os.path.splitext(filename)
    ascii_stem, ascii_extension = (
        _UNSAFE_IN_QUOTES.sub(
            "_", unicodedata.normalize("NFKD", part).encode("ascii", "ignore").decode()
        )
        for part in (stem, extension)
    )
    if not ascii_stem.strip("._ "):
        ascii_stem = file_service.DEFAULT_FILENAME
    fallback = ascii_stem + ascii_extension
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@router.post(
    "/tasks/{task_id}/files",
    status_code=status.HTTP_201_CREATED,
    response_model=FileRead,
    responses=error_responses(404, 409, 413, 415, 422),
    openapi_extra=_UPLOAD_BODY,
    dependencies=[WRITE_FILES],
)
@rate_limits.rate_limited(rate_limits.UPLOAD)
async def upload_file(
    request: Request, task: OwnedTask, session: DbSession, settings: SettingsDep, response: Response
) -> Any:
    """Attach a file to one of your tasks: multipart/form-data with one part named `file`."""
    row = await file_service.upload_file(
        session,
        task=task,
        headers=request.headers,
        body=request.stream(),
        upload_dir=settings.upload_dir,
        max_bytes=settings.max_upload_bytes,
        max_files=settings.max_files_per_task,
    )
    response.headers["Location"] = f"/files/{row.id}"
    return row


@router.get(
    "/tasks/{task_id}/files",
    response_model=list[FileRead],
    responses=error_responses(404, 422),
    dependencies=[READ_FILES],
)
def list_files(task: OwnedTask, session: DbSession) -> Any:
    """The files attached to one of your tasks, oldest first."""
    return file_service.list_files(session, task=task)


@router.get(
    "/files/{file_id}",
    response_class=FileResponse,
    responses={**_DOWNLOAD_RESPONSE, **error_responses(404, 422)},
    dependencies=[READ_FILES],
)
def download_file(
    file_id: FileId, user: CurrentUser, session: DbSession, settings: SettingsDep
) -> FileResponse:
    """Download one of your files, streamed from disk."""
    found = file_service.prepare_download(
        session, owner_id=user.id, file_id=file_id, upload_dir=settings.upload_dir
    )
    return FileResponse(
        found.path,
        media_type=found.content_type,
        stat_result=found.stat,
        headers={
            "Content-Disposition": content_disposition(found.filename),
            # The stored type was checked at upload; never let a browser guess another.
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.delete(
    "/files/{file_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404, 422),
    dependencies=[WRITE_FILES],
)
def delete_file(
    file_id: FileId, user: CurrentUser, session: DbSession, background: BackgroundTasks
) -> None:
    """Delete one of your files; its bytes are removed after the response."""
    stored = file_service.delete_file(session, owner_id=user.id, file_id=file_id)
    # Background tasks run only after a successful response, so only after the commit.
    background.add_task(background_tasks.remove_stored_files, [stored])
